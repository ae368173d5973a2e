//! Publish one resident change from Rust.
//!
//! With a registry and broker running (e.g. from `govbus up`, whose first
//! lines print both addresses):
//!
//! ```sh
//! cargo run -p govbus-producer --example publish -- http://127.0.0.1:8081 127.0.0.1:9092
//! ```
//!
//! The change is durable in `example-outbox.db` when `submit` returns; the
//! relay then publishes it to `gov.bca.residents.v1`. The contract checks the
//! resident's province and commune against `moha.admin_units`, which the
//! publisher follows from the bus (`govbus up` publishes it first).

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use govbus_core::{Catalog, Topics};
use govbus_kafka_client::KafkaConfig;
use govbus_producer::{open_store, ChangeRequest, Publisher, Relay};
use govbus_schema::RegistryClient;
use serde_json::json;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let registry = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8081".into());
    let kafka = KafkaConfig::new(args.next().unwrap_or_else(|| "127.0.0.1:9092".into()));

    // 1. A publisher for the datasets bca owns, writing to a local SQLite store.
    let store = open_store("sqlite://example-outbox.db", "")?;
    let publisher = Publisher::new(
        &Catalog::builtin(),
        "bca",
        "example",
        &Topics::default(),
        &kafka,
        &RegistryClient::new(&registry),
        store,
    )?;
    govbus_producer::ensure_topics(&kafka, &publisher, 4)?;

    // 2. Submit a change: validated against the schema, sequenced, stored.
    let accepted = publisher.submit(
        "bca.residents",
        ChangeRequest::Upsert(json!({
            "citizen_id": "052090001234",
            "full_name": "Nguyễn Văn An",
            "date_of_birth": "1990-05-01",
            "sex": "MALE",
            "ethnicity": "Kinh",
            "permanent_address": {"province_code": "52", "commune_code": "21553", "street": "12 Lê Lợi"},
            "updated_at": govbus_core::now_ms()
        })),
    )?;
    println!(
        "stored: {} {} seq {}",
        accepted.op, accepted.key, accepted.seq
    );

    // 3. Relay it to Kafka (an agent runs the relay for ever; here one pass).
    let mut relay = Relay::new(&kafka, publisher.store(), publisher.wakeup())?;
    let stop = AtomicBool::new(false);
    let mut published = 0;
    for _ in 0..50 {
        published += relay.step(&stop)?;
        if publisher.store().backlog()? == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("published {published} change(s)");
    Ok(())
}
