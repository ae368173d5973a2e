//! No participant can stop the bus. `govbus up` runs on Apache Kafka while
//! every class of hostile or broken input arrives, each from where a real
//! participant could send it: out-of-range dates and deep JSON at the
//! ingest, a 10-byte record claiming 2^29 items, a foreign schema id,
//! garbage, an unknown id and a huge length on a ministry's own central
//! topic, an out-of-range date on moha's topic (the map every router and
//! producer follows), a broken control record, registry abuse (IMPORT,
//! a chosen id of 2^32 - 1), a half-sent request, many idle connections and
//! invented dataset paths. Then every agent is alive and ready, no log
//! holds a panic, each bad record is a dead letter with its reason, and
//! both provinces keep applying.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use govbus_e2e::{poll_until, read_all, wait_until, Broker};
use govbus_kafka_client::KafkaConfig;
use govbus_schema::{AvroValue, Change, EnvelopeCodec, Op, RegistryClient, Source};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::{json, Value};

/// `p52 applied N` of a live line.
fn applied(line: &str, province: &str) -> Option<u64> {
    let at = line.find(&format!("{province} applied"))?;
    line[at..].split_whitespace().nth(2)?.parse().ok()
}

/// The value of `key = "…"` in a TOML text.
fn toml_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
    })
}

/// POSTs `body` as JSON; the status and the answer.
fn post(url: &str, body: &str) -> (u16, Value) {
    match ureq::post(url)
        .set("content-type", "application/json")
        .timeout(Duration::from_secs(30))
        .send_string(body)
    {
        Ok(r) => (r.status(), r.into_json().unwrap_or(Value::Null)),
        Err(ureq::Error::Status(s, r)) => (s, r.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("{url}: {e}"),
    }
}

fn put(url: &str, body: &str) -> (u16, Value) {
    match ureq::put(url)
        .set("content-type", "application/json")
        .send_string(body)
    {
        Ok(r) => (r.status(), r.into_json().unwrap_or(Value::Null)),
        Err(ureq::Error::Status(s, r)) => (s, r.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("{url}: {e}"),
    }
}

/// The zig-zag varint of `n`.
fn zigzag(n: i64) -> Vec<u8> {
    let mut out = Vec::new();
    govbus_schema::bytes::write_long(&mut out, n);
    out
}

/// Sets the record field `name` (at any depth of records) to `to`.
fn set_field(v: &mut AvroValue, name: &str, to: &AvroValue) {
    if let AvroValue::Record(fields) = v {
        for (k, x) in fields.iter_mut() {
            if k == name {
                *x = to.clone();
            } else {
                set_field(x, name, to);
            }
        }
    }
}

#[test]
fn no_participant_can_stop_the_bus() {
    let broker = Broker::start();
    let kafka = KafkaConfig::new(&broker.bootstrap);
    let dir = tempfile::tempdir().unwrap();
    let up = dir.path().join("up");
    let (mut child, lines) = govbus_e2e::spawn_lines(
        Command::new(env!("CARGO_BIN_EXE_govbus"))
            .args(["up", "--rate", "20", "--stall-secs", "30", "--broker"])
            .arg(&broker.bootstrap)
            .arg("--dir")
            .arg(&up)
            .stderr(Stdio::inherit()),
    );
    let mut seen: Vec<String> = Vec::new();
    let both_applied = |seen: &mut Vec<String>, child: &mut std::process::Child| {
        while let Ok(l) = lines.try_recv() {
            seen.push(l);
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("govbus up exited ({status}):\n{}", seen.join("\n"));
        }
        let last = seen.iter().rev().find(|l| l.contains("p52 applied"))?;
        Some((applied(last, "p52")?, applied(last, "p92")?))
    };
    let (p52_before, p92_before) =
        wait_until(Duration::from_secs(240), "both provinces applying", || {
            both_applied(&mut seen, &mut child).filter(|(a, b)| *a > 0 && *b > 0)
        });
    let config = |name: &str| std::fs::read_to_string(up.join(format!("{name}.toml"))).unwrap();
    let registry = seen
        .iter()
        .find_map(|l| {
            l.trim()
                .strip_prefix("registry")
                .map(|r| r.trim().to_string())
        })
        .expect("up prints the registry");
    let bca = format!(
        "http://{}",
        toml_value(&config("bca"), "listen").expect("bca listens")
    );
    let moha = format!(
        "http://{}",
        toml_value(&config("moha"), "listen").expect("moha listens")
    );
    let client = RegistryClient::new(registry.as_str());
    let raw: BaseProducer = kafka.producer().create().unwrap();
    let send = |topic: &str, key: &str, payload: &[u8]| {
        raw.send(BaseRecord::to(topic).key(key).payload(payload))
            .unwrap();
    };

    // 1. Out-of-range dates at both ingests: 422 naming the field, not a 500.
    let resident = json!({
        "citizen_id": "052090000999", "full_name": "Thử Ngày", "date_of_birth": 2_000_000_000,
        "sex": "MALE", "ethnicity": "Kinh",
        "permanent_address": {"province_code": "52", "commune_code": "21550"},
        "updated_at": "2026-12-01T08:00:00+07:00"
    });
    let (status, body) = post(
        &format!("{bca}/v1/datasets/bca.residents/changes"),
        &json!({"op": "upsert", "data": resident}).to_string(),
    );
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["field"], "date_of_birth", "{body}");
    assert!(body["errors"][0]["problem"]
        .as_str()
        .unwrap()
        .contains("out of range"));
    let unit = json!({"code": "99998", "name": "Xã Thử", "level": "COMMUNE", "parent_code": "92",
        "valid_from": 2_000_000_000, "valid_to": null, "successors": [], "history": []});
    let (status, body) = post(
        &format!("{moha}/v1/datasets/moha.admin_units/changes"),
        &json!({"op": "upsert", "data": unit}).to_string(),
    );
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["field"], "valid_from", "{body}");
    // Deep JSON: refused as malformed, nothing overflows a stack.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let (status, body) = post(&format!("{bca}/v1/datasets/bca.residents/changes"), &deep);
    assert_eq!(status, 400, "{body}");

    // 2. An out-of-range date written straight to moha's central topic,
    //    which the router's map and bca's lookup follow.
    let central_moha = "gov.moha.admin_units.v1";
    let entity_text = include_str!("../../../schemas/moha/admin_units.v2.avsc");
    let env_text = govbus_schema::envelope::envelope_schema(entity_text).unwrap();
    let moha_id = client
        .register(&format!("{central_moha}-value"), &env_text)
        .unwrap();
    let entity = govbus_schema::parse(entity_text).unwrap();
    let mut good_unit = unit.clone();
    good_unit["valid_from"] = json!("2025-07-01");
    let mut after = govbus_schema::json::to_avro(&entity, &good_unit).unwrap();
    set_field(&mut after, "valid_from", &AvroValue::Date(i32::MAX));
    let moha_codec = EnvelopeCodec::new(govbus_schema::parse(&env_text).unwrap(), moha_id);
    let bad_unit = moha_codec
        .encode(&Change {
            event_id: "hostile-date".into(),
            op: Op::Create,
            before: None,
            after: Some(after),
            source: Source {
                agency: "moha".into(),
                system: "hostile".into(),
                seq: 1,
            },
            ts_ms: 1_764_230_400_000,
        })
        .unwrap();
    send(central_moha, "99998", &bad_unit);

    // 3. Poison on bca's own central topic.
    let central = "gov.bca.residents.v1";
    let array_of_null = client
        .register("gov.bca.x-value", r#"{"type":"array","items":"null"}"#)
        .unwrap();
    let bca_id = client.latest(&format!("{central}-value")).unwrap().id;
    let header = |id: u32| {
        let mut v = vec![0];
        v.extend_from_slice(&id.to_be_bytes());
        v
    };
    let poison: Vec<(&str, &str, Vec<u8>)> = vec![
        // 10 bytes that claimed 2^29 items of nothing.
        ("poison-items", "schema_refused", {
            let mut v = header(array_of_null);
            v.extend(zigzag(1 << 29));
            v
        }),
        // A well-formed change of another dataset's schema.
        ("poison-foreign", "schema_refused", bad_unit.clone()),
        ("poison-garbage", "not_wire_format", b"\x00\x01".to_vec()),
        ("poison-unknown", "unknown_schema", header(0x7fff_fff0)),
        // bca's own schema, an event id claiming 2^40 bytes.
        ("poison-length", "avro_decode", {
            let mut v = header(bca_id);
            v.extend(zigzag(1 << 40));
            v
        }),
    ];
    for (key, _, bytes) in &poison {
        send(central, key, bytes);
    }

    // 4. A broken record on the control topic every router follows.
    send(
        "_govbus.subscriptions",
        "hostile/bca.residents",
        b"{not json",
    );
    raw.flush(Duration::from_secs(10)).unwrap();

    // 5. Registry abuse: IMPORT and chosen ids are the operator's; ids go on.
    let (status, body) = put(
        &format!("{registry}/mode/gov.bca.imported-value"),
        r#"{"mode":"IMPORT"}"#,
    );
    assert_eq!(status, 403, "{body}");
    let (status, body) = post(
        &format!("{registry}/subjects/gov.bca.imported-value/versions"),
        &json!({"schema": "\"string\"", "id": 4_294_967_295u32}).to_string(),
    );
    assert_eq!(status, 403, "{body}");
    let a = client
        .register(
            "gov.bca.after-abuse-value",
            r#"{"type":"fixed","name":"A","size":3}"#,
        )
        .unwrap();
    let b = client
        .register(
            "gov.bca.after-abuse-value",
            r#"{"type":"fixed","name":"A","size":3,"doc":"b"}"#,
        )
        .unwrap();
    assert!(a > 0 && b > a, "ids after the abuse: {a}, {b}");

    // 6. A request sent in part, then silence, is dropped; many idle
    //    connections do not stop anyone else being served.
    let ingest_addr = bca.trim_start_matches("http://").to_string();
    let mut slow = TcpStream::connect(&ingest_addr).unwrap();
    slow.write_all(b"POST /v1/datasets/bca.residents/changes HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let sent_at = Instant::now();
    let idle: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(&ingest_addr).unwrap())
        .collect();
    let (status, _) = post(
        &format!("{bca}/v1/datasets/bca.residents/changes"),
        &json!({"op": "upsert", "data": resident}).to_string(),
    );
    assert_eq!(status, 422, "served beside 200 idle connections");
    // A connection that sends nothing at all is dropped too.
    let mut silent = TcpStream::connect(&ingest_addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let closed = poll_until(Duration::from_secs(60), || {
        let mut buf = [0u8; 512];
        match slow.read(&mut buf) {
            Ok(0) => Some(()),
            Ok(_) => Some(()), // an error answer, then the close
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Some(()),
            Err(_) => None,
        }
    });
    assert!(
        closed.is_some(),
        "a half-sent request still held its connection after {:?}",
        sent_at.elapsed()
    );
    let closed = poll_until(Duration::from_secs(60), || {
        let mut buf = [0u8; 16];
        match silent.read(&mut buf) {
            Ok(_) => Some(()),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Some(()),
            Err(_) => None,
        }
    });
    assert!(
        closed.is_some(),
        "a silent connection was held for a minute"
    );
    drop(idle);

    // 7. Invented dataset paths add no label values.
    for i in 0..50 {
        let (status, _) = post(&format!("{bca}/v1/datasets/invented-{i}/changes"), "{");
        assert_eq!(status, 404);
    }
    let producer_metrics = toml_value(&config("bca"), "metrics_listen").unwrap();
    let metrics = ureq::get(&format!("http://{producer_metrics}/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let labels: BTreeSet<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("govbus_ingest_rejected_total{"))
        .filter_map(|l| l.split("dataset=\"").nth(1)?.split('"').next())
        .collect();
    assert!(
        labels.contains("unknown")
            && labels
                .iter()
                .all(|d| ["bca.residents", "unknown"].contains(d)),
        "label values: {labels:?}"
    );

    // Each poison record is a dead letter with its reason.
    let dead: BTreeMap<String, String> = wait_until(
        Duration::from_secs(90),
        "every poison record in dlq.route.bca.residents",
        || {
            let letters: BTreeMap<String, String> = read_all(&kafka, "dlq.route.bca.residents")
                .iter()
                .filter_map(|m| {
                    let key = String::from_utf8_lossy(m.key()?).into_owned();
                    let reason = m
                        .headers()?
                        .iter()
                        .find(|h| h.key == "govbus.reason")
                        .and_then(|h| h.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())?;
                    Some((key, reason))
                })
                .collect();
            poison
                .iter()
                .all(|(k, ..)| letters.contains_key(*k))
                .then_some(letters)
        },
    );
    for (key, reason, _) in &poison {
        assert_eq!(dead[*key], *reason, "{key}");
    }

    // Both provinces keep applying.
    wait_until(
        Duration::from_secs(120),
        "both provinces applying after the hostile input",
        || {
            both_applied(&mut seen, &mut child)
                .filter(|(a, b)| *a > p52_before + 10 && *b > p92_before + 5)
        },
    );
    // Every agent is ready.
    let agents: Vec<(String, String)> = std::fs::read_dir(&up)
        .unwrap()
        .filter_map(|e| {
            let p = e.ok()?.path();
            (p.extension()? == "toml").then_some(())?;
            let m = toml_value(&std::fs::read_to_string(&p).ok()?, "metrics_listen")?;
            Some((p.file_stem()?.to_string_lossy().into_owned(), m))
        })
        .collect();
    assert!(agents.len() >= 5, "agents: {agents:?}");
    for (name, addr) in &agents {
        wait_until(Duration::from_secs(60), &format!("{name} ready"), || {
            ureq::get(&format!("http://{addr}/readyz"))
                .timeout(Duration::from_secs(2))
                .call()
                .ok()
                .map(|_| ())
        });
    }
    // Nothing exited, and no log holds a panic.
    while let Ok(l) = lines.try_recv() {
        seen.push(l);
    }
    assert!(child.try_wait().unwrap().is_none(), "govbus up exited");
    assert!(
        !seen.iter().any(|l| l.contains("exited")),
        "an agent exited:\n{}",
        seen.join("\n")
    );
    let logs = up.join("logs");
    for e in std::fs::read_dir(&logs).unwrap() {
        let p = e.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        assert!(
            !text.contains("panicked") && !text.contains("a thread of this agent failed"),
            "{}: {}",
            p.display(),
            text.lines()
                .filter(|l| l.contains("panicked"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    assert!(
        log_count(&logs, "router", "administrative map record left out") > 0,
        "the router's map did not meet the out-of-range unit"
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// How many lines of `name`'s log contain `what`.
fn log_count(logs: &Path, name: &str, what: &str) -> usize {
    std::fs::read_to_string(logs.join(format!("{name}.log")))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(what))
        .count()
}
