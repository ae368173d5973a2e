//! A province consumer never wedges on one record: a record of its view
//! that does not decode, and a row its database refuses for good (a
//! constraint), go to `dlq.consume.<subscriber>` with their reason and
//! origin; the records after them are applied; the entities show as stale
//! (dead) in the status.

use std::time::Duration;

use govbus_e2e::{consumer_config, pg_url, read_all, unique, wait_until, Bus, Worker};
use govbus_producer::ChangeRequest;
use rdkafka::message::Headers;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::Message;
use serde_json::json;

fn resident(id: &str, name: &str) -> ChangeRequest {
    ChangeRequest::Upsert(json!({
        "citizen_id": id, "full_name": name, "date_of_birth": "1990-01-01",
        "sex": "FEMALE", "ethnicity": "Kinh",
        "permanent_address": {"province_code": "52", "commune_code": "21553"},
        "updated_at": 1_764_230_400_000i64
    }))
}

fn header(m: &rdkafka::message::OwnedMessage, key: &str) -> String {
    m.headers()
        .and_then(|h| h.iter().find(|x| x.key == key).and_then(|x| x.value))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

#[test]
fn a_bad_record_goes_to_the_provinces_dlq_and_the_records_after_it_are_applied() {
    let bus = Bus::start();
    let (kafka, prefix, registry) = (&bus.kafka, &bus.prefix, &bus.registry);
    let publisher = bus.publisher("t");
    let _router = bus.router();
    let _relay = bus.relay(&publisher);
    let schema = unique("p52_");
    let cfg = consumer_config(kafka, registry, prefix, "p52", &pg_url(), &schema);
    let (c, catalog) = (cfg.clone(), bus.catalog.clone());
    let p52 = Worker::spawn("p52", move |stop| {
        govbus_consumer::run(&c, &catalog, stop).unwrap()
    });
    let mut pg = postgres::Client::connect(&pg_url(), postgres::NoTls).unwrap();
    let rows = |pg: &mut postgres::Client| -> i64 {
        pg.query_one(
            &format!("SELECT count(*) FROM \"{schema}\".bca_residents"),
            &[],
        )
        .map(|r| r.get(0))
        .unwrap_or(-1)
    };
    for i in 0..5 {
        publisher
            .submit("bca.residents", resident(&format!("05209000010{i}"), "A"))
            .unwrap();
    }
    wait_until(Duration::from_secs(60), "5 rows in p52", || {
        assert!(!p52.finished(), "the consumer stopped");
        (rows(&mut pg) == 5).then_some(())
    });

    // Bytes that are no change envelope, written on the view topic by a
    // client that is not govbus; and a constraint the next row breaks.
    let view = format!("{prefix}sub.p52.bca.residents.v1");
    let raw: BaseProducer = kafka.producer().create().unwrap();
    raw.send(
        BaseRecord::to(&view)
            .key("052090000666")
            .payload(&b"garbage"[..]),
    )
    .unwrap();
    raw.flush(Duration::from_secs(10)).unwrap();
    pg.batch_execute(&format!(
        "ALTER TABLE \"{schema}\".bca_residents ADD CONSTRAINT no_refused CHECK (full_name <> 'REFUSED')"
    ))
    .unwrap();
    publisher
        .submit("bca.residents", resident("052090000200", "REFUSED"))
        .unwrap();
    for i in 0..5 {
        publisher
            .submit("bca.residents", resident(&format!("05209000030{i}"), "B"))
            .unwrap();
    }
    wait_until(Duration::from_secs(60), "the 5 rows after them", || {
        assert!(!p52.finished(), "the consumer stopped");
        (rows(&mut pg) == 10).then_some(())
    });
    let refused: i64 = pg
        .query_one(
            &format!(
                "SELECT count(*) FROM \"{schema}\".bca_residents WHERE citizen_id = '052090000200'"
            ),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(refused, 0);

    let dlq = format!("{prefix}dlq.consume.p52");
    let dead = wait_until(Duration::from_secs(30), "both dead letters", || {
        let d = read_all(kafka, &dlq);
        (d.len() >= 2).then_some(d)
    });
    assert_eq!(dead.len(), 2, "each bad record dead-lettered once");
    let reasons: Vec<(String, String)> = dead
        .iter()
        .map(|m| {
            assert_eq!(header(m, "govbus.source.topic"), view);
            assert!(header(m, "govbus.source.offset").parse::<i64>().is_ok());
            assert!(!header(m, "govbus.error").is_empty());
            (
                String::from_utf8_lossy(m.key().unwrap()).into_owned(),
                header(m, "govbus.reason"),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        [
            ("052090000666".to_string(), "not_wire_format".to_string()),
            ("052090000200".to_string(), "constraint".to_string())
        ]
    );
    assert_eq!(dead[0].payload().unwrap(), b"garbage", "the bytes are kept");

    // The status says two records of the view are dead (their entities stale).
    let status = govbus_consumer::status(&cfg, &bus.catalog).unwrap();
    assert_eq!(status[0].dead, 2, "{status:?}");
    assert!(!p52.finished());
}

/// A backlog is decoded in two halves at once: a province that starts
/// behind (a first load) takes its records in large batches. A bad record
/// in the middle of one is still dead-lettered as itself (its key and
/// offset), and every record around it is applied.
#[test]
fn a_bad_record_in_a_large_backlog_is_dead_lettered_as_itself() {
    let bus = Bus::start();
    let (kafka, prefix, registry) = (&bus.kafka, &bus.prefix, &bus.registry);
    let publisher = bus.publisher("t");
    let _router = bus.router();
    let _relay = bus.relay(&publisher);
    let view = format!("{prefix}sub.p52.bca.residents.v1");
    let on_view = |n: usize| {
        wait_until(Duration::from_secs(60), "the view's records", || {
            (read_all(kafka, &view).len() >= n).then_some(())
        })
    };
    let submit = |from: usize| {
        let reqs = (from..from + 600)
            .map(|i| resident(&format!("052{i:09}"), "A"))
            .collect();
        publisher.submit_batch("bca.residents", reqs).unwrap();
    };
    submit(0);
    on_view(600);
    let raw: BaseProducer = kafka.producer().create().unwrap();
    raw.send(
        BaseRecord::to(&view)
            .key("052999999999")
            .payload(&b"garbage"[..]),
    )
    .unwrap();
    raw.flush(Duration::from_secs(10)).unwrap();
    submit(600);
    on_view(1201);
    let garbage = read_all(kafka, &view)
        .into_iter()
        .find(|m| m.payload() == Some(&b"garbage"[..]))
        .expect("the bad record is on the view");

    // The province starts now, 1,201 records behind.
    let schema = unique("p52_");
    let cfg = consumer_config(kafka, registry, prefix, "p52", &pg_url(), &schema);
    let (c, catalog) = (cfg.clone(), bus.catalog.clone());
    let p52 = Worker::spawn("p52", move |stop| {
        govbus_consumer::run(&c, &catalog, stop).unwrap()
    });
    let mut pg = postgres::Client::connect(&pg_url(), postgres::NoTls).unwrap();
    wait_until(Duration::from_secs(120), "1,200 rows in p52", || {
        assert!(!p52.finished(), "the consumer stopped");
        pg.query_one(
            &format!("SELECT count(*) FROM \"{schema}\".bca_residents"),
            &[],
        )
        .ok()
        .map(|r| r.get::<_, i64>(0))
        .filter(|n| *n == 1200)
    });
    let dlq = format!("{prefix}dlq.consume.p52");
    let dead = wait_until(Duration::from_secs(30), "the dead letter", || {
        let d = read_all(kafka, &dlq);
        (!d.is_empty()).then_some(d)
    });
    assert_eq!(dead.len(), 1, "only the bad record is dead-lettered");
    assert_eq!(dead[0].key(), Some(&b"052999999999"[..]));
    assert_eq!(dead[0].payload(), Some(&b"garbage"[..]));
    assert_eq!(header(&dead[0], "govbus.reason"), "not_wire_format");
    assert_eq!(
        header(&dead[0], "govbus.source.offset"),
        garbage.offset().to_string()
    );
    assert_eq!(
        header(&dead[0], "govbus.source.partition"),
        garbage.partition().to_string()
    );
}
