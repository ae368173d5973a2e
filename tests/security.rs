//! Agencies as principals on Apache Kafka with TLS, SCRAM and the
//! authorizer on.

use std::time::Duration;

use govbus_e2e::Broker;
use rdkafka::consumer::{BaseConsumer, Consumer};

#[test]
fn experiment() {
    let broker = Broker::secured(&["p52"]);
    let admin = broker.kafka();
    let c: BaseConsumer = admin.consumer("x").create().unwrap();
    let md = c.fetch_metadata(None, Duration::from_secs(10));
    eprintln!("admin: {:?}", md.map(|m| m.brokers().len()));
    let mut bad = broker.kafka_as("p52");
    bad.security.as_mut().unwrap().password = Some(govbus_core::secret::Secret::literal("wrong"));
    let c: BaseConsumer = bad.consumer("x").create().unwrap();
    let md = c.fetch_metadata(None, Duration::from_secs(10));
    eprintln!("bad: {:?}", md.map(|m| m.brokers().len()));
}
