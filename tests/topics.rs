//! Topic settings in deploy/ are applied when a topic is created and
//! corrected when an existing topic differs, with the topic's other
//! settings left as they were.

use std::time::Duration;

use govbus_e2e::{unique, wait_until, Broker};
use govbus_kafka_client::{ensure_topics, TopicSpec};
use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;

fn settings(kafka: &govbus_kafka_client::KafkaConfig, topic: &str) -> Vec<(String, String)> {
    let admin: AdminClient<DefaultClientContext> = kafka.client().create().unwrap();
    let res = futures_executor::block_on(admin.describe_configs(
        [&ResourceSpecifier::Topic(topic)],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
    ))
    .unwrap();
    let resource = res.into_iter().next().unwrap().unwrap();
    resource
        .entries
        .into_iter()
        .filter(|e| !e.is_default)
        .filter_map(|e| e.value.map(|v| (e.name, v)))
        .collect()
}

fn get(s: &[(String, String)], key: &str) -> Option<String> {
    s.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

#[test]
fn a_central_topics_retention_is_applied_and_corrected() {
    let broker = Broker::start();
    let kafka = broker.kafka();
    let topic = unique("gov.test.retention.");
    ensure_topics(&kafka, &[TopicSpec::changes(&topic, 2, 86_400_000)]).unwrap();
    let s = settings(&kafka, &topic);
    assert_eq!(
        get(&s, "retention.ms").as_deref(),
        Some("86400000"),
        "{s:?}"
    );
    assert_eq!(
        get(&s, "cleanup.policy").as_deref(),
        Some("compact"),
        "{s:?}"
    );

    // An operator's own setting, which the correction must keep.
    let admin: AdminClient<DefaultClientContext> = kafka.client().create().unwrap();
    let mut alter = AlterConfig::new(ResourceSpecifier::Topic(&topic));
    for (k, v) in &s {
        alter = alter.set(k, v);
    }
    alter = alter.set("max.message.bytes", "2000000");
    futures_executor::block_on(admin.alter_configs(
        [&alter],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
    ))
    .unwrap()
    .into_iter()
    .for_each(|r| {
        r.unwrap();
    });

    // The dataset file now says seven days.
    ensure_topics(&kafka, &[TopicSpec::changes(&topic, 2, 604_800_000)]).unwrap();
    let s = wait_until(Duration::from_secs(30), "the corrected retention", || {
        let s = settings(&kafka, &topic);
        (get(&s, "retention.ms").as_deref() == Some("604800000")).then_some(s)
    });
    assert_eq!(
        get(&s, "max.message.bytes").as_deref(),
        Some("2000000"),
        "{s:?}"
    );
    assert_eq!(
        get(&s, "cleanup.policy").as_deref(),
        Some("compact"),
        "{s:?}"
    );
}
