//! HTTP ingest refuses bad input with a 4xx naming the problem, and nothing
//! of it reaches the broker.

use std::sync::Arc;
use std::time::Duration;

use govbus_core::{Catalog, Topics};
use govbus_e2e::{
    init_logs, read_all, runtime, seed_admin_units, start_registry, unique, wait_until, Broker,
    Worker,
};
use govbus_producer::{open_store, Publisher, Relay};
use govbus_schema::{envelope, RegistryClient, SchemaCache};
use rdkafka::Message;
use serde_json::{json, Value};

fn post(url: &str, body: &str) -> (u16, Value) {
    match ureq::post(url).send_string(body) {
        Ok(r) => (r.status(), r.into_json().unwrap()),
        Err(ureq::Error::Status(s, r)) => (s, r.into_json().unwrap()),
        Err(e) => panic!("{e}"),
    }
}

fn resident(id: &str) -> Value {
    json!({
        "citizen_id": id, "full_name": "Trần Thị Lan", "date_of_birth": "1988-02-29",
        "sex": "FEMALE", "ethnicity": "Kinh",
        "permanent_address": {"province_code": "52", "commune_code": "21553", "street": null},
        "updated_at": 1_764_230_400_000i64
    })
}

#[test]
fn bad_changes_get_4xx_naming_the_problem_and_nothing_is_produced() {
    init_logs();
    let broker = Broker::start();
    let kafka = broker.kafka();
    let rt = runtime();
    let topics = Topics::new(format!("{}.", unique("t")));
    let (registry, _r) = start_registry(&rt, &kafka, &topics.schemas());
    let dir = tempfile::tempdir().unwrap();
    seed_admin_units(&kafka, &topics, &registry, dir.path());
    let store = open_store(dir.path().join("s.db").to_str().unwrap(), "").unwrap();
    let publisher = Arc::new(
        Publisher::new(
            &Catalog::builtin(),
            "bca",
            "t",
            &topics,
            &kafka,
            &RegistryClient::new(&registry),
            store.clone(),
        )
        .unwrap(),
    );
    govbus_producer::ensure_topics(&kafka, &publisher, 4).unwrap();
    let relay = Relay::new(&kafka, publisher.store(), publisher.wakeup()).unwrap();
    let _relay = Worker::spawn("relay", move |stop| relay.run(stop));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let base = format!("http://{}/v1/datasets", listener.local_addr().unwrap());
    rt.spawn(govbus_producer::http::serve(listener, publisher.clone()));
    let url = format!("{base}/bca.residents/changes");

    // Malformed JSON: 400 saying where.
    let (status, body) = post(&url, r#"{"op": "upsert", "data": {"citizen_id": "0520"#);
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("malformed JSON"),
        "{body}"
    );

    // Schema violations: 422 naming every bad field.
    let mut bad = resident("052088000001");
    bad["sex"] = json!("F");
    bad["date_of_birth"] = json!("29/02/1988");
    bad["permanent_address"]
        .as_object_mut()
        .unwrap()
        .remove("commune_code");
    bad["nickname"] = json!("Lan");
    let (status, body) = post(&url, &json!({"op": "upsert", "data": bad}).to_string());
    assert_eq!(status, 422, "{body}");
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    for f in [
        "sex",
        "date_of_birth",
        "permanent_address.commune_code",
        "nickname",
    ] {
        assert!(fields.contains(&f), "{f} not named in {body}");
    }

    // The contract's data-quality rules: 422 naming every failed rule and its field.
    let mut bad = resident("05208800000");
    bad["date_of_birth"] = json!("2999-01-01");
    bad["full_name"] = json!("   ");
    bad["permanent_address"]["commune_code"] = json!("2155");
    let (status, body) = post(&url, &json!({"op": "upsert", "data": bad}).to_string());
    assert_eq!(status, 422, "{body}");
    let errors = body["errors"].as_array().unwrap();
    for (field, rule) in [
        ("citizen_id", "citizen_id_is_12_digits"),
        ("date_of_birth", "date_of_birth_in_range"),
        ("full_name", "full_name_not_blank"),
        ("permanent_address.commune_code", "codes_are_well_formed"),
    ] {
        assert!(
            errors
                .iter()
                .any(|e| e["field"] == field
                    && e["problem"].as_str().is_some_and(|p| p.contains(rule))),
            "{rule} on {field} not named in {body}"
        );
    }

    // Unknown op, unknown dataset, delete of an unknown entity.
    let (status, body) = post(&url, r#"{"op": "replace", "data": {}}"#);
    assert_eq!(
        (status, body["errors"][0]["field"].as_str()),
        (422, Some("op")),
        "{body}"
    );
    let (status, _) = post(
        &format!("{base}/bca.nothing/changes"),
        r#"{"op":"delete","key":"1"}"#,
    );
    assert_eq!(status, 404);
    let (status, body) = post(&url, r#"{"op":"delete","key":"099000000000"}"#);
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("099000000000"),
        "{body}"
    );

    // One good change: it is the only record that ever reaches the topic.
    let (status, body) = post(
        &url,
        &json!({"op": "upsert", "data": resident("052088000002")}).to_string(),
    );
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        (body["seq"].as_i64(), body["op"].as_str()),
        (Some(1), Some("CREATE"))
    );

    // A batch is validated whole: one bad change refuses all of them.
    let batch_url = format!("{url}/batch");
    let mut bad = resident("052088000003");
    bad["sex"] = json!("X");
    let batch = json!({"changes": [
        {"op": "upsert", "data": resident("052088000004")},
        {"op": "upsert", "data": bad},
    ]});
    let (status, body) = post(&batch_url, &batch.to_string());
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["field"], "changes[1].data.sex", "{body}");
    // A good batch is stored in order, in one transaction: same key twice → seq 1, 2.
    let mut later = resident("052088000005");
    later["full_name"] = json!("Trần Thị Lan Anh");
    let batch = json!({"changes": [
        {"op": "upsert", "data": resident("052088000005")},
        {"op": "upsert", "data": later},
    ]});
    let (status, body) = post(&batch_url, &batch.to_string());
    assert_eq!(status, 202, "{body}");
    let seqs: Vec<i64> = body["accepted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2]);

    // axum's own refusals are JSON too: an unknown path, a wrong method, a
    // body over the limit.
    let root = base.trim_end_matches("/v1/datasets").to_string();
    let (status, body) = post(&format!("{root}/v2/nothing"), "{}");
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("/v1/datasets"),
        "{body}"
    );
    let (status, body) = match ureq::get(&url).call() {
        Err(ureq::Error::Status(s, r)) => (s, r.into_json::<Value>().unwrap()),
        other => panic!("{other:?}"),
    };
    assert_eq!(status, 405, "{body}");
    assert!(body["error"].is_string(), "{body}");
    // 16 MiB: more than the sockets buffer, so the client is still writing
    // when the answer is ready; it must read the 413, not a broken pipe.
    let huge = format!(
        "{{\"op\":\"upsert\",\"data\":\"{}\"}}",
        "x".repeat(16 << 20)
    );
    let (status, body) = post(&url, &huge);
    assert_eq!(status, 413, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("length limit"),
        "{body}"
    );

    // Everything on the central topic: exactly the three accepted changes, in order per key.
    let topic = format!("{}gov.bca.residents.v1", topics.prefix());
    let resolver = SchemaCache::new(RegistryClient::new(&registry));
    let mut seen = Vec::new();
    wait_until(
        Duration::from_secs(30),
        "the relay to empty the outbox",
        || (store.backlog().ok()? == 0).then_some(()),
    );
    for m in read_all(&kafka, &topic) {
        let (_, change) = envelope::decode(m.payload().unwrap(), &resolver).unwrap();
        seen.push((
            String::from_utf8(m.key().unwrap().to_vec()).unwrap(),
            change.source.seq,
        ));
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            ("052088000002".to_string(), 1),
            ("052088000005".to_string(), 1),
            ("052088000005".to_string(), 2)
        ],
        "only the accepted changes were produced"
    );
}
