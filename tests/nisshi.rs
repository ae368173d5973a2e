//! The development broker still carries the bus: on nisshi (memory storage,
//! as `govbus up --broker nisshi` runs it), resident changes go through the
//! producer, relay, router and a province's consumer, and the province's
//! table equals its view of the source. The rest of the suite runs on Apache
//! Kafka; this is nisshi's smoke test.

use std::time::Duration;

use govbus_e2e::{consumer_config, expected_rows, router_config, wait_until, Broker, Bus, Worker};
use govbus_producer::demo::DemoWorld;
use govbus_producer::Relay;

#[test]
fn changes_reach_a_province_on_nisshi() {
    let bus = Bus::on(Broker::nisshi());
    assert!(bus.broker.is_nisshi());
    let mut kafka = bus.kafka.clone();
    // nisshi holds a fetch for its whole wait (docs/BROKERS.md).
    kafka.fetch_wait_ms = 10;
    kafka.follow_wait_ms = 10;
    let publisher = bus.publisher("smoke");
    let relay = Relay::new(&kafka, publisher.store(), publisher.wakeup()).unwrap();
    let _relay = Worker::spawn("relay", move |stop| relay.run(stop));
    let router = govbus_e2e::router(
        router_config(&kafka, &bus.registry, &bus.prefix),
        &bus.catalog,
    );
    let _router = Worker::spawn("router", move |stop| router.run(stop).unwrap());
    let db = bus.dir.path().join("p92.db");
    let cfg = consumer_config(
        &kafka,
        &bus.registry,
        &bus.prefix,
        "p92",
        db.to_str().unwrap(),
        "",
    );
    let catalog = bus.catalog.clone();
    let status_cfg = cfg.clone();
    let _p92 = Worker::spawn("p92", move |stop| {
        govbus_consumer::run(&cfg, &catalog, stop).unwrap()
    });

    let mut world = DemoWorld::new(94);
    let changes: Vec<_> = (0..200).map(|_| world.next_change()).collect();
    publisher.submit_batch("bca.residents", changes).unwrap();
    let want: Vec<(String, String)> = expected_rows(&world, "92")
        .into_iter()
        .map(|(k, v)| (k, v[4].clone()))
        .collect();
    assert!(!want.is_empty());
    wait_until(
        Duration::from_secs(120),
        "p92's table to equal its view on nisshi",
        || {
            let conn = rusqlite::Connection::open(&db).ok()?;
            let mut st = conn
            .prepare("SELECT citizen_id, permanent_address_commune_code FROM bca_residents ORDER BY citizen_id")
            .ok()?;
            let got: Vec<(String, String)> = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .ok()?
                .collect::<Result<_, _>>()
                .ok()?;
            (got == want).then_some(())
        },
    );
    // Applied in full, its view reads no lag: the router's transaction
    // markers past the last change are not records to apply.
    wait_until(
        Duration::from_secs(30),
        "govbus status to show no lag on the applied view on nisshi",
        || {
            let st = govbus_consumer::status(&status_cfg, &bus.catalog).ok()?;
            (st.len() == 1 && st[0].lag == Some(0)).then_some(())
        },
    );
}
