//! Delivery receipts: each province's consumer writes a receipt per
//! applied batch, chained by hash, in the batch's transaction, and
//! publishes it on its own `_govbus.receipts.<subscriber>`. `govbus
//! receipts EVENT` names every subscriber that applied an event (a move
//! between provinces reaches both: one applies its leave, the other its
//! arrival), and believes no receipt that names another subscriber than
//! its topic's; `govbus receipts verify` checks a chain, and names the
//! receipt altered in a province's database.

use std::time::Duration;

use govbus_e2e::{consumer_config, pg_url, unique, wait_until, Bus, Worker};
use govbus_producer::ChangeRequest;
use serde_json::json;

fn govbus(args: &[&str]) -> (bool, String) {
    govbus_e2e::run(env!("CARGO_BIN_EXE_govbus"), args)
}

fn resident(id: &str, province: &str, commune: &str) -> ChangeRequest {
    ChangeRequest::Upsert(json!({
        "citizen_id": id, "full_name": "Lê Văn An", "date_of_birth": "1979-09-02",
        "sex": "MALE", "ethnicity": "Kinh",
        "permanent_address": {"province_code": province, "commune_code": commune},
        "updated_at": govbus_core::now_ms()
    }))
}

#[test]
fn an_events_receipts_come_from_every_province_that_applied_it_and_a_changed_receipt_breaks_the_chain(
) {
    let bus = Bus::start();
    let (kafka, prefix, registry) = (&bus.kafka, &bus.prefix, &bus.registry);
    let publisher = bus.publisher("t");
    let _router = bus.router();
    let _relay = bus.relay(&publisher);
    let mut files = Vec::new();
    let mut schemas = Vec::new();
    let mut consumers = Vec::new();
    for p in ["p52", "p92"] {
        let schema = unique(&format!("{p}_"));
        let cfg = consumer_config(kafka, registry, prefix, p, &pg_url(), &schema);
        let file = bus.dir.path().join(format!("{p}.toml"));
        std::fs::write(
            &file,
            format!(
                "[consumer]\nsubscriber = \"{p}\"\nregistry = \"{registry}\"\ntopic_prefix = \"{prefix}\"\n\
                 [consumer.sink]\ntype = \"postgres\"\nurl = \"{}\"\nschema = \"{schema}\"\n\
                 [consumer.kafka]\nbootstrap = \"{}\"\n",
                pg_url(),
                kafka.bootstrap
            ),
        )
        .unwrap();
        files.push(file.to_str().unwrap().to_string());
        schemas.push(schema);
        let catalog = bus.catalog.clone();
        consumers.push(Worker::spawn(p, move |stop| {
            govbus_consumer::run(&cfg, &catalog, stop).unwrap()
        }));
    }
    let mut pg = postgres::Client::connect(&pg_url(), postgres::NoTls).unwrap();
    let has = |pg: &mut postgres::Client, schema: &str, key: &str| -> bool {
        pg.query_one(
            &format!("SELECT count(*) FROM \"{schema}\".bca_residents WHERE citizen_id = $1"),
            &[&key],
        )
        .map(|r| r.get::<_, i64>(0) == 1)
        .unwrap_or(false)
    };
    let key = "052991000777";
    publisher
        .submit("bca.residents", resident(key, "52", "21553"))
        .unwrap();
    for i in 0..5 {
        publisher
            .submit(
                "bca.residents",
                resident(&format!("05299100080{i}"), "52", "21583"),
            )
            .unwrap();
    }
    wait_until(Duration::from_secs(60), "the resident in p52", || {
        (has(&mut pg, &schemas[0], key)).then_some(())
    });
    // The resident moves to Cần Thơ: p52 applies the leave, p92 the arrival.
    let moved = publisher
        .submit("bca.residents", resident(key, "92", "31507"))
        .unwrap();
    wait_until(Duration::from_secs(60), "the move applied by both", || {
        for c in &consumers {
            assert!(!c.finished(), "{} stopped", c.name());
        }
        (!has(&mut pg, &schemas[0], key) && has(&mut pg, &schemas[1], key)).then_some(())
    });
    let (ok, out) = wait_until(
        Duration::from_secs(30),
        "both receipts, each on its subscriber's topic",
        || {
            let (ok, out) = govbus(&["receipts", &moved.event_id, "-c", &files[0]]);

            (ok && out.contains("\np52 ") && out.contains("\np92 ")).then_some((ok, out))
        },
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("sub.p52.bca.residents.v1:") && out.contains("sub.p92.bca.residents.v1:"),
        "{out}"
    );
    let (ok, out) = govbus(&["receipts", "no-such-event", "-c", &files[0]]);
    assert!(
        !ok && out.contains("no subscriber has applied event no-such-event"),
        "{out}"
    );
    // p92 forges a receipt in p52's name on the only topic it may write:
    // it is not believed.
    let p92_topic = bus.topics.receipts("p92");
    let mut forged: serde_json::Value = govbus_e2e::read_all(kafka, &p92_topic)
        .iter()
        .find_map(|m| serde_json::from_slice(rdkafka::Message::payload(m)?).ok())
        .expect("a receipt of p92's");
    forged["subscriber"] = json!("p52");
    forged["events"][0]["event_id"] = json!("forged-event");
    let raw: rdkafka::producer::BaseProducer = kafka.producer().create().unwrap();
    raw.send(
        rdkafka::producer::BaseRecord::to(&p92_topic)
            .key("p52")
            .payload(&forged.to_string()),
    )
    .unwrap();
    rdkafka::producer::Producer::flush(&raw, Duration::from_secs(10)).unwrap();
    let (ok, out) = govbus(&["receipts", "forged-event", "-c", &files[0]]);
    assert!(
        !ok && out.contains("no subscriber has applied event forged-event")
            && out.contains("1 receipts name another subscriber than the topic they are on"),
        "{out}"
    );

    for f in &files {
        let (ok, out) = govbus(&["receipts", "verify", "-c", f]);
        assert!(ok && out.contains("the chain is intact"), "{out}");
    }
    let (ok, out) = govbus(&["receipts", "verify", "-c", &files[0], "--subscriber", "p52"]);
    assert!(ok, "{out}");

    // A receipt changed in p52's database: the chain breaks there.
    let n: i64 = pg
        .query_one(
            &format!("SELECT max(seq) FROM \"{}\"._govbus_receipts", schemas[0]),
            &[],
        )
        .unwrap()
        .get(0);
    assert!(n >= 2, "p52 applied several batches: {n}");
    pg.batch_execute(&format!(
        "UPDATE \"{}\"._govbus_receipts SET applied_at_ms = applied_at_ms + 1 WHERE seq = 1",
        schemas[0]
    ))
    .unwrap();
    let (ok, out) = govbus(&["receipts", "verify", "-c", &files[0]]);
    assert!(!ok && out.contains("receipt 1 was changed"), "{out}");
    let (ok, out) = govbus(&["receipts", "verify", "-c", &files[1]]);
    assert!(ok, "p92's chain is its own: {out}");
}
