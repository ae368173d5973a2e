//! One dataset's trouble stays in that dataset. One router routes two
//! datasets (bca.residents and moha.admin_units) to p52. Poison on bca's
//! central topic — a record claiming 2^29 items of an unbounded schema, a
//! record naming another dataset's schema, garbage — is dead-lettered with
//! its reason; a bca change whose writer schema cannot be fetched (the
//! registry cut off from the router) holds bca's partition, and moha's
//! changes go on reaching p52 meanwhile; once the registry is back the
//! held change is routed, not lost.

use std::time::Duration;

use govbus_core::catalog::parse_subscription;
use govbus_e2e::{read_all, wait_until, Bus, TcpProxy, Worker};
use govbus_producer::{ChangeRequest, Relay};
use govbus_schema::{Change, EnvelopeCodec, Op, RegistryClient, Source};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::json;

fn keys(kafka: &govbus_kafka_client::KafkaConfig, topic: &str) -> Vec<String> {
    read_all(kafka, topic)
        .iter()
        .filter_map(|m| m.key().map(|k| String::from_utf8_lossy(k).into_owned()))
        .collect()
}

fn unit(code: &str, name: &str) -> ChangeRequest {
    ChangeRequest::Upsert(json!({
        "code": code, "name": name, "level": "COMMUNE", "parent_code": "52",
        "valid_from": "2025-07-01", "valid_to": null, "successors": [], "history": []
    }))
}

#[test]
fn poison_and_an_unreachable_schema_of_one_dataset_do_not_stop_another() {
    let bus = Bus::start();
    let (kafka, prefix) = (&bus.kafka, &bus.prefix);
    let bca = bus.publisher("t");
    let (moha, _moha_relay) = bus.moha("isolation");
    let relay = Relay::new(kafka, bca.store(), bca.wakeup()).unwrap();
    let _relay = Worker::spawn("relay", move |stop| relay.run(stop));

    // p52 also subscribes to moha's units.
    let mut catalog = (*bus.catalog).clone();
    catalog.subscriptions.push(
        parse_subscription(
            "p52.moha.admin_units.toml",
            "subscriber = \"p52\"\ndataset = \"moha.admin_units\"\nfilter = 'parent_code == \"52\"'\n",
        )
        .unwrap(),
    );
    govbus_e2e::apply_subscriptions(kafka, prefix, &catalog, false);
    let registry_addr = bus.registry.trim_start_matches("http://").parse().unwrap();
    let proxy = TcpProxy::start(registry_addr);
    let mut cfg = bus.router_config();
    cfg.registry = format!("http://{}", proxy.addr);
    let router = govbus_router::Router::new(cfg, &catalog).unwrap();
    let router = Worker::spawn("router", move |stop| router.run(stop).unwrap());

    let residents = format!("{prefix}sub.p52.bca.residents.v1");
    let units = format!("{prefix}sub.p52.moha.admin_units.v1");
    let resident = |id: &str, name: &str| {
        json!({
            "citizen_id": id, "full_name": name, "date_of_birth": "1990-01-01",
            "sex": "FEMALE", "ethnicity": "Kinh",
            "permanent_address": {"province_code": "52", "commune_code": "21553"},
            "updated_at": 1_764_230_400_000i64
        })
    };
    // Both datasets flow (the router has met both writer schemas).
    bca.submit(
        "bca.residents",
        ChangeRequest::Upsert(resident("052090000701", "Một")),
    )
    .unwrap();
    moha.submit("moha.admin_units", unit("99901", "Xã Một"))
        .unwrap();
    wait_until(
        Duration::from_secs(90),
        "both datasets in p52's views",
        || {
            assert!(!router.finished(), "the router stopped");
            (keys(kafka, &residents).contains(&"052090000701".to_string())
                && keys(kafka, &units).contains(&"99901".to_string()))
            .then_some(())
        },
    );

    // Poison on bca's central topic.
    let central = format!("{prefix}gov.bca.residents.v1");
    let client = RegistryClient::new(bus.registry.as_str());
    let unbounded = client
        .register(
            &format!("{prefix}gov.bca.x-value"),
            r#"{"type":"array","items":"null"}"#,
        )
        .unwrap();
    let moha_subject = format!("{prefix}gov.moha.admin_units.v1-value");
    let moha_change = read_all(kafka, &format!("{prefix}gov.moha.admin_units.v1"))
        .into_iter()
        .find_map(|m| m.payload().map(<[u8]>::to_vec))
        .expect("a moha change");
    let header = |id: u32| {
        let mut v = vec![0];
        v.extend_from_slice(&id.to_be_bytes());
        v
    };
    let poison: Vec<(&str, &str, Vec<u8>)> = vec![
        ("poison-items", "schema_refused", {
            let mut v = header(unbounded);
            govbus_schema::bytes::write_long(&mut v, 1 << 29);
            v
        }),
        ("poison-foreign", "schema_refused", moha_change),
        ("poison-garbage", "not_wire_format", b"\x01garbage".to_vec()),
    ];
    let raw: BaseProducer = kafka.producer().create().unwrap();
    for (key, _, bytes) in &poison {
        raw.send(BaseRecord::to(&central).key(*key).payload(bytes))
            .unwrap();
    }
    raw.flush(Duration::from_secs(10)).unwrap();
    let dlq = format!("{prefix}dlq.route.bca.residents");
    let reasons = wait_until(Duration::from_secs(60), "the poison dead-lettered", || {
        let letters: Vec<(String, String)> = read_all(kafka, &dlq)
            .iter()
            .filter_map(|m| {
                let reason = m
                    .headers()?
                    .iter()
                    .find(|h| h.key == "govbus.reason")?
                    .value?;
                Some((
                    String::from_utf8_lossy(m.key()?).into_owned(),
                    String::from_utf8_lossy(reason).into_owned(),
                ))
            })
            .collect();
        (letters.len() >= poison.len()).then_some(letters)
    });
    for (key, reason, _) in &poison {
        assert!(
            reasons.contains(&(key.to_string(), reason.to_string())),
            "{key}: {reasons:?}"
        );
    }
    assert!(
        !client
            .id_subjects(unbounded)
            .unwrap()
            .contains(&moha_subject),
        "the unbounded schema is not moha's"
    );

    // The registry cut off from the router; a bca change written with a
    // writer schema the router has not met (a new version: a doc added).
    proxy.cut();
    let entity = include_str!("../schemas/bca/residents.v2.avsc");
    let mut env: serde_json::Value =
        serde_json::from_str(&govbus_schema::envelope::envelope_schema(entity).unwrap()).unwrap();
    env["doc"] = json!("A change of one resident (isolation test).");
    let env = env.to_string();
    let id = client.register(&format!("{central}-value"), &env).unwrap();
    let entity_schema = govbus_schema::parse(entity).unwrap();
    let after =
        govbus_schema::json::to_avro(&entity_schema, &resident("052090000702", "Hai")).unwrap();
    let held = EnvelopeCodec::new(govbus_schema::parse(&env).unwrap(), id)
        .encode(&Change {
            event_id: "held-1".into(),
            op: Op::Create,
            before: None,
            after: Some(after),
            source: Source {
                agency: "bca".into(),
                system: "isolation".into(),
                seq: 1,
            },
            ts_ms: 1_764_230_400_000,
        })
        .unwrap();
    raw.send(BaseRecord::to(&central).key("052090000702").payload(&held))
        .unwrap();
    raw.flush(Duration::from_secs(10)).unwrap();
    // moha's changes go on reaching p52 while bca waits for its schema.
    moha.submit("moha.admin_units", unit("99902", "Xã Hai"))
        .unwrap();
    wait_until(
        Duration::from_secs(60),
        "moha's change routed while bca's partition is held",
        || {
            assert!(!router.finished(), "the router stopped");
            keys(kafka, &units)
                .contains(&"99902".to_string())
                .then_some(())
        },
    );
    assert!(
        !keys(kafka, &residents).contains(&"052090000702".to_string()),
        "routed without its schema?"
    );
    assert!(
        !keys(kafka, &dlq).contains(&"052090000702".to_string()),
        "a change whose schema could not be fetched was dead-lettered"
    );

    // The registry back: the held change is routed, not lost.
    proxy.restore();
    wait_until(Duration::from_secs(90), "the held change routed", || {
        assert!(!router.finished(), "the router stopped");
        keys(kafka, &residents)
            .contains(&"052090000702".to_string())
            .then_some(())
    });
    assert!(!keys(kafka, &dlq).contains(&"052090000702".to_string()));
}
