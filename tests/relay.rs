//! The relay publishes each change once even when it dies between the
//! broker's acknowledgement and marking the change as sent: started again on
//! a store that still holds those changes as pending, it finds them on the
//! broker (by the `govbus.outbox` header) and marks them instead of
//! publishing them twice.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;

use govbus_e2e::{read_all, Bus};
use govbus_producer::demo::DemoWorld;
use govbus_producer::relay::OUTBOX_HEADER;
use govbus_producer::{open_store, Publisher, Relay};
use rdkafka::message::{Headers, Message};

#[test]
fn a_relay_restarted_on_a_stale_store_publishes_nothing_twice() {
    let bus = Bus::start();
    bus.seeded.get_or_init(|| {
        govbus_e2e::seed_admin_units(&bus.kafka, &bus.topics, &bus.registry, bus.dir.path())
    });
    let path = bus.dir.path().join("bca-stale.db");
    let publisher = {
        let store = open_store(path.to_str().unwrap(), "").unwrap();
        Publisher::new(
            &bus.catalog,
            "bca",
            "stale",
            &bus.topics,
            &bus.kafka,
            &govbus_schema::RegistryClient::new(&bus.registry),
            store,
        )
        .unwrap()
    };
    govbus_producer::ensure_topics(&bus.kafka, &publisher, 4).unwrap();
    let topic = publisher.topics().into_iter().next().unwrap();
    let stop = AtomicBool::new(false);
    let mut world = DemoWorld::new(11);
    let mut changes = |n: usize| {
        let reqs = (0..n).map(|_| world.next_change()).collect();
        publisher.submit_batch("bca.residents", reqs).unwrap();
    };

    // One change relayed: the relay's id and offsets are in the store.
    changes(1);
    let mut relay = Relay::new(&bus.kafka, publisher.store(), publisher.wakeup()).unwrap();
    while relay.step(&stop).unwrap() > 0 {}
    // 60 more, and a copy of the store as it is now (all 60 pending).
    changes(60);
    rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    let stale = bus.dir.path().join("bca-copy.db");
    std::fs::copy(&path, &stale).unwrap();
    // The relay publishes them and marks them as sent...
    while relay.step(&stop).unwrap() > 0 {}
    assert_eq!(publisher.store().backlog().unwrap(), 0);
    drop(relay);
    // ...but the copy says they are pending, as after a kill -9 between
    // the acknowledgement and the trim.
    let copy = open_store(stale.to_str().unwrap(), "").unwrap();
    assert_eq!(copy.backlog().unwrap(), 60);
    let mut again = Relay::new(&bus.kafka, copy.clone(), publisher.wakeup()).unwrap();
    assert_eq!(again.step(&stop).unwrap(), 0, "nothing is sent again");
    assert_eq!(copy.backlog().unwrap(), 0, "all 60 found on the broker");

    // On the topic: 61 changes, each once, every one tagged.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for m in read_all(&bus.kafka, &topic) {
        let Some(tag) = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == OUTBOX_HEADER))
            .and_then(|h| h.value)
        else {
            continue; // read_all's fences
        };
        *seen
            .entry(String::from_utf8_lossy(tag).into_owned())
            .or_default() += 1;
    }
    assert_eq!(seen.len(), 61, "{seen:?}");
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
}
