//! `govbus dlq replay` and `discard` on Apache Kafka: an outbox row refused
//! by a contract rule is replayed after the rule is relaxed and arrives
//! once; replayed while the rule still holds, it returns to the DLQ with its
//! history; one whose resident changed after it was refused returns as
//! `superseded`; a discard is recorded with who, when and why; `--dry-run`
//! changes nothing.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use govbus_e2e::{
    consumer_config, pg_url, read_all, router_config, unique, wait_until, Bus, Worker,
};
use govbus_producer::deadletter::DeadLetters;
use govbus_producer::outbox::PgOutbox;
use govbus_producer::{Publisher, Relay};
use rdkafka::message::Headers;
use rdkafka::Message;

fn govbus(args: &[&str]) -> String {
    let text = govbus_e2e::run_ok(env!("CARGO_BIN_EXE_govbus"), args);
    // Shown with --nocapture: docs/OPERATIONS.md quotes this output.
    println!("$ govbus {}\n{text}", args.join(" "));
    text
}

fn header(m: &rdkafka::message::OwnedMessage, key: &str) -> Option<String> {
    m.headers()?
        .iter()
        .find(|x| x.key == key)
        .and_then(|x| x.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// The platform's file, as `govbus dlq` reads it.
fn platform_file(dir: &Path, bus: &Bus) -> String {
    let cfg = dir.join("platform.toml");
    std::fs::write(
        &cfg,
        format!(
            "[router]\nregistry = \"{}\"\ntopic_prefix = \"{}\"\n[router.kafka]\nbootstrap = \"{}\"\n",
            bus.registry, bus.prefix, bus.broker.bootstrap
        ),
    )
    .unwrap();
    cfg.to_str().unwrap().to_string()
}

/// The outbox relay of `publisher` (with its broker relay), until dropped.
fn outbox_agent(bus: &Bus, publisher: Publisher, schema: &str) -> (Worker, Worker) {
    let publisher = Arc::new(publisher);
    let relay = Relay::new(&bus.kafka, publisher.store(), publisher.wakeup()).unwrap();
    let relay = Worker::spawn("relay", move |stop| relay.run(stop));
    let dead = DeadLetters::new(&bus.kafka, &bus.topics.dlq("ingest", "bca")).unwrap();
    let s = schema.to_string();
    let outbox = Worker::spawn("outbox", move |stop| {
        let mut o = PgOutbox::connect(&pg_url(), &s).unwrap();
        o.run(&publisher, &dead, &stop).unwrap();
    });
    (relay, outbox)
}

#[test]
fn a_row_refused_by_a_rule_is_replayed_once_the_rule_is_relaxed_and_arrives_once() {
    let bus = Bus::start();
    let (kafka, topics) = (&bus.kafka, &bus.topics);
    let dir = tempfile::tempdir().unwrap();
    let cfg = platform_file(dir.path(), &bus);

    let src = unique("legacy_");
    let mut db = postgres::Client::connect(&pg_url(), postgres::NoTls).unwrap();
    let sql = include_str!("../../../deploy/sql/outbox.sql").replace("govbus.", &format!("{src}."));
    db.batch_execute(&format!("CREATE SCHEMA {src}; {sql}"))
        .unwrap();

    let router = govbus_e2e::router(
        router_config(kafka, &bus.registry, &bus.prefix),
        &bus.catalog,
    );
    let _router = Worker::spawn("router", move |stop| router.run(stop).unwrap());
    let p52_schema = unique("p52_");
    let c = consumer_config(
        kafka,
        &bus.registry,
        &bus.prefix,
        "p52",
        &pg_url(),
        &p52_schema,
    );
    let catalog = bus.catalog.clone();
    let _p52 = Worker::spawn("p52", move |stop| {
        govbus_consumer::run(&c, &catalog, stop).unwrap()
    });
    let agent = outbox_agent(&bus, bus.publisher("strict"), &src);

    // A resident born in 2999: the contract's date_of_birth_in_range refuses it.
    let row = |id: &str, name: &str, dob: &str| {
        format!(
            "INSERT INTO {src}.outbox (dataset, op, key, after) VALUES ('bca.residents', 'INSERT', '{id}',
             '{{\"citizen_id\": \"{id}\", \"full_name\": \"{name}\", \"date_of_birth\": \"{dob}\", \"sex\": \"MALE\",
               \"ethnicity\": \"Kinh\", \"permanent_address_province_code\": \"52\",
               \"permanent_address_commune_code\": \"21553\", \"updated_at\": 1764230400000}}')"
        )
    };
    db.batch_execute(&row("052090000009", "Đỗ Văn Tương Lai", "2999-01-01"))
        .unwrap();
    let dlq = topics.dlq("ingest", "bca");
    let letters = |n: usize| {
        wait_until(
            Duration::from_secs(60),
            &format!("{n} dead letters"),
            || {
                let d = read_all(kafka, &dlq);
                (d.len() >= n).then_some(d)
            },
        )
    };
    letters(1);
    let url = pg_url();
    let replay_ingest = |extra: &[&str]| {
        let mut args = vec!["dlq", "replay", dlq.as_str()];
        args.extend_from_slice(extra);
        args.extend(["--outbox", &url, "--outbox-schema", &src, "-c", &cfg]);
        govbus(&args)
    };

    // Replayed while the rule still holds: it fails again, and its new
    // letter carries the first one in its history.
    let dry = replay_ingest(&["--reason", "contract", "--dry-run"]);
    assert!(
        dry.contains(&format!("would replay {dlq}:0:0 -> outbox {src}")),
        "{dry}"
    );
    assert!(dry.contains("(dry run: nothing changed)"), "{dry}");
    let n: i64 = db
        .query_one(&format!("SELECT count(*) FROM {src}.outbox"), &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "a dry run puts nothing back");
    let out = replay_ingest(&["--offsets", "0", "--by", "ops"]);
    assert!(out.contains("replayed 1, 0 handled before"), "{out}");
    let again = letters(2);
    assert_eq!(again.len(), 2, "one new letter");
    assert_eq!(
        header(&again[1], "govbus.reason").as_deref(),
        Some("contract")
    );
    assert_eq!(
        header(&again[1], "govbus.rule").as_deref(),
        Some("date_of_birth_in_range")
    );
    let history: serde_json::Value =
        serde_json::from_str(&header(&again[1], "govbus.history").expect("a history")).unwrap();
    assert_eq!(history[0]["letter"], format!("{dlq}:0:0"));
    assert_eq!(history[0]["reason"], "contract");
    assert_eq!(history.as_array().unwrap().len(), 1);

    // Another refused row, then a good change of the same resident: the
    // refused row is superseded.
    db.batch_execute(&row("052090000011", "Sai", "2999-01-01"))
        .unwrap();
    letters(3);
    db.batch_execute(&row("052090000011", "Đúng", "1990-01-01"))
        .unwrap();
    let mut pg = postgres::Client::connect(&pg_url(), postgres::NoTls).unwrap();
    let mut name_in_p52 = |id: &str| -> Option<String> {
        pg.query_one(
            &format!("SELECT full_name FROM \"{p52_schema}\".bca_residents WHERE citizen_id = $1"),
            &[&id],
        )
        .ok()
        .map(|r| r.get(0))
    };
    wait_until(Duration::from_secs(60), "the good change in p52", || {
        name_in_p52("052090000011")
    });

    // The rule is relaxed (a producer restarted with the new contract).
    drop(agent);
    let mut relaxed = (*bus.catalog).clone();
    let ds = relaxed
        .datasets
        .get_mut(&"bca.residents".parse().unwrap())
        .unwrap();
    ds.file.rules.retain(|r| r.name != "date_of_birth_in_range");
    let relaxed = Arc::new(relaxed);
    let store = bus.dir.path().join("bca-strict.db");
    let p = Publisher::new(
        &relaxed,
        "bca",
        "strict",
        topics,
        kafka,
        &govbus_schema::RegistryClient::new(&bus.registry),
        govbus_producer::open_store(store.to_str().unwrap(), "").unwrap(),
    )
    .unwrap();
    let _agent = outbox_agent(&bus, p, &src);

    // Every contract letter: the first was replayed before; the second is
    // accepted; the third is refused as superseded (its resident changed
    // after it was refused) and returns with its history.
    let out = replay_ingest(&[
        "--reason",
        "contract",
        "--by",
        "ops",
        "--why",
        "rule relaxed",
    ]);
    assert!(
        out.contains(&format!("skip {dlq}:0:0: replayed by ops")),
        "{out}"
    );
    assert!(out.contains("replayed 2, 1 handled before"), "{out}");
    let view = format!("{}sub.p52.bca.residents.v1", bus.prefix);
    wait_until(
        Duration::from_secs(60),
        "the replayed resident in p52",
        || name_in_p52("052090000009"),
    );
    let all = letters(4);
    assert_eq!(
        header(&all[3], "govbus.reason").as_deref(),
        Some("superseded")
    );
    let history: serde_json::Value =
        serde_json::from_str(&header(&all[3], "govbus.history").unwrap()).unwrap();
    assert_eq!(history[0]["letter"], format!("{dlq}:0:2"));
    assert_eq!(name_in_p52("052090000011").as_deref(), Some("Đúng"));
    // Replayed again: nothing is sent, and the change is on the bus once.
    let out = replay_ingest(&["--reason", "contract"]);
    assert!(out.contains("replayed 0, 3 handled before"), "{out}");
    let central = format!("{}gov.bca.residents.v1", bus.prefix);
    let on_bus = |topic: &str| {
        read_all(kafka, topic)
            .iter()
            .filter(|m| m.key() == Some(&b"052090000009"[..]))
            .count()
    };
    assert_eq!(on_bus(&central), 1, "the replayed change is published once");
    assert_eq!(on_bus(&view), 1, "and routed to p52 once");

    // A blank name is garbage: discarded, with who, when and why.
    db.batch_execute(&row("052090000010", " ", "1990-01-01"))
        .unwrap();
    letters(5);
    let discard = |extra: &[&str]| {
        let mut args = vec!["dlq", "discard", dlq.as_str(), "--offsets", "4"];
        args.extend(["--why", "blank name", "--by", "ops", "-c", &cfg]);
        args.extend_from_slice(extra);
        govbus(&args)
    };
    let dry = discard(&["--dry-run"]);
    assert!(
        dry.contains(&format!(
            "would discard {dlq}:0:4 (contract, key 052090000010)"
        )),
        "{dry}"
    );
    let out = discard(&[]);
    assert!(out.contains("discarded 1, 0 handled before"), "{out}");
    let state = read_all(kafka, &topics.dlq_state());
    let discard = state
        .iter()
        .find(|m| m.key() == Some(format!("{dlq}:0:4").as_bytes()))
        .expect("the discard is recorded");
    let v: serde_json::Value = serde_json::from_slice(discard.payload().unwrap()).unwrap();
    assert_eq!(v["action"], "discarded");
    assert_eq!(v["by"], "ops");
    assert_eq!(v["why"], "blank name");
    assert!(v["at_ms"].as_i64().unwrap() > 0);
    let shown = govbus(&["dlq", "show", &format!("{dlq}:0:4"), "-c", &cfg]);
    assert!(shown.contains("handled: discarded by ops at "), "{shown}");
    assert!(shown.contains(": blank name"), "{shown}");
    let list = govbus(&["dlq", "list", "-c", &cfg]);
    assert!(
        list.contains(&format!(
            "{dlq}  5 records, 1 open\n  handled:   replayed 3, discarded 1\n"
        )),
        "{list}"
    );
    // Nothing was deleted from the DLQ topic.
    assert_eq!(read_all(kafka, &dlq).len(), 5);
    // An operation that changes state needs a selection.
    let out = Command::new(env!("CARGO_BIN_EXE_govbus"))
        .args(["dlq", "discard", &dlq, "--why", "x", "-c", &cfg])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("select the records"));
}

fn resident(id: &str, name: &str) -> govbus_producer::ChangeRequest {
    govbus_producer::ChangeRequest::Upsert(serde_json::json!({
        "citizen_id": id, "full_name": name, "date_of_birth": "1990-01-01",
        "sex": "FEMALE", "ethnicity": "Kinh",
        "permanent_address": {"province_code": "52", "commune_code": "21553"},
        "updated_at": 1_764_230_400_000i64
    }))
}

#[test]
fn province_and_route_letters_go_back_through_their_stage_once_the_cause_is_fixed() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    let bus = Bus::start();
    let (kafka, prefix, topics) = (&bus.kafka, &bus.prefix, &bus.topics);
    let dir = tempfile::tempdir().unwrap();
    let cfg = platform_file(dir.path(), &bus);
    let publisher = bus.publisher("t");
    let _router = bus.router();
    let _relay = bus.relay(&publisher);
    let schema = unique("p52_");
    let c = consumer_config(kafka, &bus.registry, prefix, "p52", &pg_url(), &schema);
    let p52_cfg = c.clone();
    let catalog = bus.catalog.clone();
    let p52 = Worker::spawn("p52", move |stop| {
        govbus_consumer::run(&c, &catalog, stop).unwrap()
    });
    let mut pg = postgres::Client::connect(&pg_url(), postgres::NoTls).unwrap();
    let mut has = |id: &str| -> bool {
        pg.query_one(
            &format!("SELECT count(*) FROM \"{schema}\".bca_residents WHERE citizen_id = $1"),
            &[&id],
        )
        .is_ok_and(|r| r.get::<_, i64>(0) == 1)
    };
    publisher
        .submit("bca.residents", resident("052090000100", "A"))
        .unwrap();
    wait_until(Duration::from_secs(60), "the first row in p52", || {
        assert!(!p52.finished(), "the consumer stopped");
        has("052090000100").then_some(())
    });

    // A constraint refuses one row; garbage lands on the view.
    let mut admin = postgres::Client::connect(&pg_url(), postgres::NoTls).unwrap();
    admin
        .batch_execute(&format!(
            "ALTER TABLE \"{schema}\".bca_residents ADD CONSTRAINT no_refused CHECK (full_name <> 'REFUSED')"
        ))
        .unwrap();
    publisher
        .submit("bca.residents", resident("052090000200", "REFUSED"))
        .unwrap();
    let view = format!("{prefix}sub.p52.bca.residents.v1");
    let raw: BaseProducer = kafka.producer().create().unwrap();
    raw.send(
        BaseRecord::to(&view)
            .key("052090000666")
            .payload(&b"garbage"[..]),
    )
    .unwrap();
    raw.flush(Duration::from_secs(10)).unwrap();
    let dlq = topics.dlq("consume", "p52");
    let letters = |n: usize| {
        wait_until(
            Duration::from_secs(60),
            &format!("{n} letters in {dlq}"),
            || {
                let d = read_all(kafka, &dlq);
                (d.len() >= n).then_some(d)
            },
        )
    };
    let first = letters(2);
    let garbage = first
        .iter()
        .find(|m| m.key() == Some(&b"052090000666"[..]))
        .expect("the garbage's letter")
        .offset();
    assert!(!has("052090000200"));

    // The cause is fixed; the refused row is replayed and applied.
    admin
        .batch_execute(&format!(
            "ALTER TABLE \"{schema}\".bca_residents DROP CONSTRAINT no_refused"
        ))
        .unwrap();
    let out = govbus(&["dlq", "replay", &dlq, "--reason", "constraint", "-c", &cfg]);
    assert!(
        out.contains(&format!("-> {view}.replay (constraint, key 052090000200)")),
        "{out}"
    );
    wait_until(Duration::from_secs(60), "the replayed row in p52", || {
        has("052090000200").then_some(())
    });
    // Only the garbage's entity is still stale.
    let status = govbus_consumer::status(&p52_cfg, &bus.catalog).unwrap();
    assert_eq!(status[0].dead, 1, "{status:?}");

    // Garbage replayed is garbage still: back in the DLQ with its history,
    // read from the replay topic.
    let out = govbus(&[
        "dlq",
        "replay",
        &dlq,
        "--reason",
        "not_wire_format",
        "-c",
        &cfg,
    ]);
    assert!(out.contains("replayed 1, 0 handled before"), "{out}");
    let all = letters(3);
    let back = &all[2];
    assert_eq!(
        header(back, "govbus.reason").as_deref(),
        Some("not_wire_format")
    );
    assert_eq!(
        header(back, "govbus.source.topic"),
        Some(format!("{view}.replay"))
    );
    let history: serde_json::Value =
        serde_json::from_str(&header(back, "govbus.history").unwrap()).unwrap();
    assert_eq!(history[0]["letter"], format!("{dlq}:0:{garbage}"));
    assert_eq!(back.payload(), Some(&b"garbage"[..]));
    // Replayed twice, sent once.
    let out = govbus(&["dlq", "replay", &dlq, "--offsets", "0-1", "-c", &cfg]);
    assert!(out.contains("replayed 0, 2 handled before"), "{out}");
    assert_eq!(read_all(kafka, &format!("{view}.replay")).len(), 2);

    // A route letter: a change the router could not route (as it would
    // dead-letter one whose schema it could not fetch), replayed through
    // the router once the registry knows it.
    let spare = bus.publisher("spare");
    spare
        .submit("bca.residents", resident("052090000777", "C"))
        .unwrap();
    let db = rusqlite::Connection::open(bus.dir.path().join("bca-spare.db")).unwrap();
    let value: Vec<u8> = db
        .query_row(
            "SELECT value FROM govbus_outbox WHERE key = '052090000777'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let central = format!("{prefix}gov.bca.residents.v1");
    let route_dlq = topics.dlq("route", "bca.residents");
    raw.send(
        BaseRecord::to(&route_dlq)
            .key("052090000777")
            .payload(&value)
            .headers(
                OwnedHeaders::new()
                    .insert(Header {
                        key: "govbus.reason",
                        value: Some("unknown_schema"),
                    })
                    .insert(Header {
                        key: "govbus.error",
                        value: Some("registry timed out"),
                    })
                    .insert(Header {
                        key: "govbus.source.topic",
                        value: Some(central.as_str()),
                    })
                    .insert(Header {
                        key: "govbus.source.partition",
                        value: Some("0"),
                    })
                    .insert(Header {
                        key: "govbus.source.offset",
                        value: Some("99"),
                    }),
            ),
    )
    .unwrap();
    raw.flush(Duration::from_secs(10)).unwrap();
    let out = govbus(&[
        "dlq",
        "replay",
        &route_dlq,
        "--key",
        "052090000777",
        "-c",
        &cfg,
    ]);
    assert!(
        out.contains(&format!(
            "-> {central}.replay (unknown_schema, key 052090000777)"
        )),
        "{out}"
    );
    wait_until(
        Duration::from_secs(60),
        "the routed resident in p52",
        || has("052090000777").then_some(()),
    );
    let routed = read_all(kafka, &view)
        .iter()
        .filter(|m| m.key() == Some(&b"052090000777"[..]))
        .count();
    assert_eq!(routed, 1, "routed once");
    assert!(!p52.finished());
}
