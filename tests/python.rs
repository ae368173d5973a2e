//! Conformance with a client nobody here wrote: Confluent's Python client
//! (SchemaRegistryClient, AvroSerializer, AvroDeserializer) against govbus's
//! registry and broker, in both directions.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use govbus_e2e::{ensure_python_client, read_all, unique, wait_until, Bus, Worker};
use govbus_producer::demo::DemoWorld;
use govbus_producer::Relay;
use govbus_schema::{envelope, json::to_json, RegistryClient, SchemaCache};
use rdkafka::Message;
use serde_json::Value;

/// The bca publisher (its schema registered) and the residents' subject.
fn residents_subject(bus: &Bus) -> (govbus_producer::Publisher, String) {
    let publisher = bus.publisher("conformance");
    let central = publisher
        .topics()
        .into_iter()
        .find(|t| t.contains("residents"))
        .expect("the residents topic");
    (publisher, govbus_core::topics::value_subject(&central))
}

fn script() -> String {
    format!("{}/python/conformance.py", env!("CARGO_MANIFEST_DIR"))
}

fn run_python(args: &[&str]) -> Vec<Value> {
    let python = ensure_python_client();
    let mut child = Command::new(&python)
        .arg(script())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python starts");
    let _ = child.stdin.take().map(|mut s| s.flush());
    let out = child.wait_with_output().expect("python runs");
    assert!(
        out.status.success(),
        "python {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// govbus publishes (publisher + relay); Python's AvroDeserializer reads
/// every change with the writer schema from govbus's registry and gets the
/// same values govbus's own decoder gets.
#[test]
fn govbus_produces_python_consumes() {
    let bus = Bus::start();
    let publisher = bus.publisher("conformance");
    let mut world = DemoWorld::new(7);
    let reqs: Vec<_> = (0..40).map(|_| world.next_change()).collect();
    let accepted = publisher.submit_batch("bca.residents", reqs).unwrap();
    let relay = Relay::new(&bus.kafka, publisher.store(), publisher.wakeup()).unwrap();
    let _relay = Worker::spawn("relay", move |stop| relay.run(stop));
    let store = publisher.store();
    wait_until(Duration::from_secs(30), "the relay publishes", || {
        (store.backlog().ok()? == 0).then_some(())
    });
    let topic = publisher
        .topics()
        .into_iter()
        .find(|t| t.contains("residents"))
        .expect("the residents topic");

    let got = run_python(&[
        "consume",
        &bus.broker.bootstrap,
        &bus.registry,
        &topic,
        "40",
    ]);
    assert_eq!(got.len(), accepted.len());

    // The reference: govbus's own decoder on the same records.
    let cache = SchemaCache::new(RegistryClient::new(&bus.registry));
    let ours: Vec<(String, i64, Value)> = read_all(&bus.kafka, &topic)
        .iter()
        .map(|m| {
            let (_, c) = envelope::decode(m.payload().unwrap(), &cache).unwrap();
            let after = c.after.as_ref().map(to_json).unwrap_or(Value::Null);
            (c.event_id, c.source.seq, after)
        })
        .collect();
    for py in &got {
        let v = &py["value"];
        let event = v["event_id"].as_str().unwrap();
        let (_, seq, after) = ours
            .iter()
            .find(|(e, _, _)| e == event)
            .unwrap_or_else(|| panic!("python read an event govbus did not publish: {py}"));
        assert_eq!(v["source"]["seq"].as_i64(), Some(*seq), "{py}");
        assert!(accepted
            .iter()
            .any(|a| a.event_id == event && a.key == py["key"]));
        if !after.is_null() {
            for f in ["citizen_id", "full_name", "ethnicity", "sex"] {
                assert_eq!(v["after"][f], after[f], "{f} of {py}");
            }
            assert_eq!(
                v["after"]["permanent_address"]["province_code"],
                after["permanent_address"]["province_code"]
            );
            // Python's date and govbus's ISO date agree.
            assert_eq!(v["after"]["date_of_birth"], after["date_of_birth"], "{py}");
        }
    }
}

/// Python's AvroSerializer publishes change envelopes under the dataset's
/// registered schema; govbus decodes every one, byte for byte the values
/// Python sent (Vietnamese text, dates, enums, nested records, nulls).
#[test]
fn python_produces_govbus_consumes() {
    let bus = Bus::start();
    let (_publisher, subject) = residents_subject(&bus);
    // A topic of Python's own, created like every govbus topic.
    let topic = format!("{}{}", bus.prefix, unique("python"));
    govbus_kafka_client::ensure_topics(
        &bus.kafka,
        &[govbus_kafka_client::TopicSpec::compacted(&topic, 4)],
    )
    .unwrap();

    let sent = run_python(&[
        "produce",
        &bus.broker.bootstrap,
        &bus.registry,
        &topic,
        &subject,
        "25",
    ]);
    assert_eq!(sent.len(), 25);

    let cache = SchemaCache::new(RegistryClient::new(&bus.registry));
    let records = read_all(&bus.kafka, &topic);
    assert_eq!(records.len(), 25, "every record python produced, once");
    // Python registered the dataset's schema under its own topic's subject
    // (TopicNameStrategy): the same schema text as govbus's, without the
    // contract govbus registers with it (so possibly another id).
    let client = RegistryClient::new(&bus.registry);
    let registered = client.latest(&subject).unwrap();
    for m in &records {
        let (id, c) = envelope::decode(m.payload().unwrap(), &cache)
            .unwrap_or_else(|e| panic!("govbus cannot decode python's record: {e}"));
        assert_eq!(
            client.schema_text(id).unwrap(),
            registered.schema,
            "python's id holds the dataset's registered schema"
        );
        let py = sent
            .iter()
            .find(|s| s["event_id"] == c.event_id.as_str())
            .expect("an event python sent");
        let after = to_json(c.after.as_ref().expect("after"));
        assert_eq!(after["citizen_id"], py["after"]["citizen_id"]);
        assert_eq!(
            std::str::from_utf8(m.key().unwrap()).unwrap(),
            py["after"]["citizen_id"]
        );
        assert_eq!(after["full_name"], py["after"]["full_name"]);
        assert_eq!(after["sex"], "MALE");
        assert_eq!(after["permanent_address"]["street"], Value::Null);
        assert_eq!(after["date_of_birth"], py["after"]["date_of_birth"], "{py}");
        assert_eq!(c.source.system, "python");
        assert!(c.before.is_none());
    }
}

/// Confluent's SchemaRegistryClient calls that send query flags as Python
/// writes booleans (`normalize=False`, `deleted=False`): lookup_schema finds
/// the registered version, test_compatibility says yes to the same schema
/// and no to an incompatible one, and a missing subject's error arrives in
/// Confluent's JSON shape (status 404, error code 40401).
#[test]
fn python_registry_client_looks_up_and_tests_compatibility() {
    let bus = Bus::start();
    let (_publisher, subject) = residents_subject(&bus);
    let got = run_python(&["registry", &bus.registry, &subject]);
    let call = |name: &str| {
        got.iter()
            .filter(|v| v["call"] == name)
            .cloned()
            .collect::<Vec<_>>()
    };
    let lookup = &call("lookup_schema")[0];
    assert_eq!(lookup["id"], lookup["latest"][0], "{lookup}");
    assert_eq!(lookup["version"], lookup["latest"][1], "{lookup}");
    let compat = call("test_compatibility");
    assert_eq!(compat[0]["same"], true, "{compat:?}");
    assert_eq!(compat[1]["renamed"], false, "{compat:?}");
    let missing = &call("get_latest_version")[0];
    assert_eq!(missing["http_status"], 404, "{missing}");
    assert_eq!(missing["error_code"], 40401, "{missing}");
}
