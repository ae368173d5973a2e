//! A legacy table changed by plain SQL reaches the province: the trigger of
//! deploy/sql/outbox.sql captures each change, the outbox relay publishes it,
//! and a row that cannot become a change goes to the DLQ with its reason.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use govbus_e2e::{
    consumer_config, pg_url, read_all, router_config, unique, wait_until, Bus, Worker,
};
use govbus_producer::deadletter::DeadLetters;
use govbus_producer::outbox::PgOutbox;
use govbus_producer::Relay;
use rdkafka::message::Headers;
use rdkafka::Message;

#[test]
fn plain_sql_on_a_legacy_table_reaches_the_province() {
    let bus = Bus::start();
    let (kafka, prefix, topics, registry, catalog) = (
        &bus.kafka,
        &bus.prefix,
        &bus.topics,
        &bus.registry,
        &bus.catalog,
    );

    // The agency's own database: a legacy table, the outbox, the trigger.
    let src = unique("legacy_");
    let mut db = postgres::Client::connect(&pg_url(), postgres::NoTls).unwrap();
    let sql = include_str!("../deploy/sql/outbox.sql").replace("govbus.", &format!("{src}."));
    db.batch_execute(&format!(
        "CREATE SCHEMA {src};
         CREATE TABLE {src}.residents (
             citizen_id TEXT PRIMARY KEY, full_name TEXT NOT NULL, date_of_birth DATE NOT NULL,
             sex TEXT NOT NULL, ethnicity TEXT NOT NULL,
             permanent_address_province_code TEXT NOT NULL, permanent_address_commune_code TEXT NOT NULL,
             permanent_address_street TEXT, updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
             internal_note TEXT);
         {sql}
         CREATE TRIGGER residents_govbus AFTER INSERT OR UPDATE OR DELETE ON {src}.residents
             FOR EACH ROW EXECUTE FUNCTION {src}.capture('bca.residents', 'citizen_id');"
    ))
    .unwrap();

    // The ministry agent: store, relay, outbox relay.
    let publisher = Arc::new(bus.publisher("legacy"));
    let relay = Relay::new(kafka, publisher.store(), publisher.wakeup()).unwrap();
    let _relay = Worker::spawn("relay", move |stop| relay.run(stop));
    let dlq = topics.dlq("ingest", "bca");
    let dead = DeadLetters::new(kafka, &dlq).unwrap();
    let (p, s) = (publisher.clone(), src.clone());
    let outbox = Worker::spawn("outbox", move |stop| {
        let mut o = PgOutbox::connect(&pg_url(), &s).unwrap();
        o.run(&p, &dead, &stop).unwrap();
    });

    let router = govbus_e2e::router(router_config(kafka, registry, prefix), catalog);
    let _router = Worker::spawn("router", move |stop| router.run(stop).unwrap());
    let p52_schema = unique("p52_");
    let cfg = consumer_config(kafka, registry, prefix, "p52", &pg_url(), &p52_schema);
    let c = catalog.clone();
    let _p52 = Worker::spawn("p52", move |stop| {
        govbus_consumer::run(&cfg, &c, stop).unwrap()
    });

    // Plain SQL, as the legacy application does it.
    db.batch_execute(&format!(
        "INSERT INTO {src}.residents (citizen_id, full_name, date_of_birth, sex, ethnicity,
             permanent_address_province_code, permanent_address_commune_code, permanent_address_street, internal_note)
         VALUES ('052090000001', 'Lê Văn Bình', '1990-01-02', 'MALE', 'Kinh', '52', '21553', '1 Lê Lợi', 'x'),
                ('052090000002', 'Phạm Thị Hà', '1991-03-04', 'FEMALE', 'Kinh', '52', '21553', NULL, 'y'),
                ('094090000003', 'Thạch Sơn', '1985-07-08', 'MALE', 'Khmer', '94', '31507', NULL, 'z');
         UPDATE {src}.residents SET full_name = 'Lê Văn Bình An' WHERE citizen_id = '052090000001';
         UPDATE {src}.residents SET permanent_address_province_code = '52', permanent_address_commune_code = '21583'
             WHERE citizen_id = '094090000003';
         DELETE FROM {src}.residents WHERE citizen_id = '052090000002';
         BEGIN;
         UPDATE {src}.residents SET internal_note = 'only an internal column' WHERE citizen_id = '052090000001';
         COMMIT;
         -- A row the contract refuses (born in the future): DLQ, reason `contract`.
         INSERT INTO {src}.residents (citizen_id, full_name, date_of_birth, sex, ethnicity,
             permanent_address_province_code, permanent_address_commune_code, permanent_address_street, internal_note)
         VALUES ('052090000009', 'Đỗ Văn Tương Lai', '2999-01-01', 'MALE', 'Kinh', '52', '21553', NULL, 'w');
         -- A row the relay cannot turn into a change: it must reach the DLQ, not vanish.
         INSERT INTO {src}.outbox (dataset, op, key, after) VALUES ('bca.residents', 'INSERT', '1', '{{\"citizen_id\": 1}}');
         -- An after image that is JSON but not a row (a hand-edited outbox).
         INSERT INTO {src}.outbox (dataset, op, key, after) VALUES ('bca.residents', 'UPDATE', '2', '\"broken\"');"
    ))
    .unwrap();

    let mut pg = postgres::Client::connect(&pg_url(), postgres::NoTls).unwrap();
    let want: BTreeMap<String, (String, String)> = [
        (
            "052090000001".to_string(),
            ("Lê Văn Bình An".to_string(), "21553".to_string()),
        ),
        (
            "094090000003".to_string(),
            ("Thạch Sơn".to_string(), "21583".to_string()),
        ),
    ]
    .into();
    wait_until(
        Duration::from_secs(90),
        "p52 to hold the legacy table's residents of 52",
        || {
            assert!(!outbox.finished(), "the outbox relay stopped");
            let rows = pg
            .query(
                &format!("SELECT citizen_id, full_name, permanent_address_commune_code FROM \"{p52_schema}\".bca_residents"),
                &[],
            )
            .ok()?;
            let got: BTreeMap<String, (String, String)> = rows
                .iter()
                .map(|r| (r.get(0), (r.get(1), r.get(2))))
                .collect();
            (got == want).then_some(())
        },
    );

    // The outbox is emptied, and the broken row is in the DLQ with its reason.
    wait_until(Duration::from_secs(30), "the outbox to be emptied", || {
        let n: i64 = db
            .query_one(&format!("SELECT count(*) FROM {src}.outbox"), &[])
            .ok()?
            .get(0);
        (n == 0).then_some(())
    });
    let dead = read_all(kafka, &dlq);
    assert_eq!(
        dead.len(),
        3,
        "exactly the three refused rows are dead-lettered"
    );
    let reason_of = |m: &rdkafka::message::OwnedMessage| {
        let h = m.headers().unwrap();
        let v = h
            .iter()
            .find(|h| h.key == "govbus.reason")
            .and_then(|h| h.value)
            .unwrap();
        String::from_utf8_lossy(v).into_owned()
    };
    let mut reasons: Vec<String> = dead.iter().map(reason_of).collect();
    reasons.sort();
    assert_eq!(reasons, ["contract", "malformed", "schema"]);
    let refused = dead.iter().find(|m| reason_of(m) == "contract").unwrap();
    let rule = refused
        .headers()
        .unwrap()
        .iter()
        .find(|h| h.key == "govbus.rule")
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned());
    assert_eq!(rule.as_deref(), Some("date_of_birth_in_range"));
    assert!(
        String::from_utf8_lossy(refused.payload().unwrap()).contains("052090000009"),
        "the DLQ record carries the original row"
    );
    let dead: Vec<_> = dead
        .into_iter()
        .filter(|m| reason_of(m) == "schema")
        .collect();
    let headers = dead[0].headers().unwrap();
    let reason = headers
        .iter()
        .find(|h| h.key == "govbus.reason")
        .and_then(|h| h.value)
        .unwrap();
    assert_eq!(reason, b"schema");
    let error = headers
        .iter()
        .find(|h| h.key == "govbus.error")
        .and_then(|h| h.value)
        .unwrap();
    assert!(
        String::from_utf8_lossy(error).contains("citizen_id"),
        "{}",
        String::from_utf8_lossy(error)
    );
    assert!(String::from_utf8_lossy(dead[0].payload().unwrap()).contains("\"citizen_id\": 1"));
}
