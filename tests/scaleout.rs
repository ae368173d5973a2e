//! Two router instances in one consumer group share the central topic's
//! partitions (seen in the group's own description); when one stops, the
//! other takes its partitions over, and the provinces end with exactly their
//! views — nothing lost, nothing twice. (The chaos test kills both with
//! SIGKILL at random; this one shows the sharing itself.)

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use govbus_e2e::{
    consumer_config, expected_rows, pg_rows, pg_url, router_config, unique, wait_until, Bus, Worker,
};
use govbus_producer::demo::DemoWorld;
use govbus_producer::Relay;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Message;

/// Partitions of a member's assignment (Kafka's ConsumerProtocol
/// Assignment: version, [topic, [partition]], user data).
fn assigned(bytes: &[u8]) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    let mut at = 2; // version
    let i32_at = |b: &[u8], at: usize| -> Option<i32> {
        Some(i32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    let Some(topics) = i32_at(bytes, at) else {
        return out;
    };
    at += 4;
    for _ in 0..topics {
        let Some(len) = bytes.get(at..at + 2) else {
            return out;
        };
        let len = u16::from_be_bytes([len[0], len[1]]) as usize;
        at += 2;
        let Some(name) = bytes.get(at..at + len) else {
            return out;
        };
        let name = String::from_utf8_lossy(name).into_owned();
        at += len;
        let Some(n) = i32_at(bytes, at) else {
            return out;
        };
        at += 4;
        for _ in 0..n {
            let Some(p) = i32_at(bytes, at) else {
                return out;
            };
            at += 4;
            out.push((name.clone(), p));
        }
    }
    out
}

/// The group's members (by client id) and the partitions each holds.
fn members(probe: &BaseConsumer, group: &str) -> HashMap<String, BTreeSet<(String, i32)>> {
    let Ok(list) = probe.fetch_group_list(Some(group), Duration::from_secs(5)) else {
        return HashMap::new();
    };
    list.groups()
        .iter()
        .filter(|g| g.name() == group && g.state() == "Stable")
        .flat_map(|g| g.members())
        .map(|m| {
            (
                m.id().to_string(),
                m.assignment()
                    .map(assigned)
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn two_routers_share_partitions_and_one_takes_over_when_the_other_stops() {
    let bus = Bus::start();
    let (kafka, prefix, registry, catalog) = (&bus.kafka, &bus.prefix, &bus.registry, &bus.catalog);
    let publisher = bus.publisher("t");
    let relay = Relay::new(kafka, publisher.store(), publisher.wakeup()).unwrap();
    let _relay = Worker::spawn("relay", move |stop| relay.run(stop));
    let cfg = router_config(kafka, registry, prefix);
    let group = cfg.group.clone();
    let a = govbus_e2e::router(cfg.clone(), catalog);
    let b = govbus_router::Router::new(
        govbus_router::RouterConfig {
            instance: "1".into(),
            ..cfg
        },
        catalog,
    )
    .unwrap();
    let a = Worker::spawn("router-a", move |stop| a.run(stop).unwrap());
    let b = Worker::spawn("router-b", move |stop| b.run(stop).unwrap());
    let schema = unique("p52_");
    let c = consumer_config(kafka, registry, prefix, "p52", &pg_url(), &schema);
    let cat = catalog.clone();
    let p52 = Worker::spawn("p52", move |stop| {
        govbus_consumer::run(&c, &cat, stop).unwrap()
    });

    // Both routers hold partitions of the central topic at once.
    let probe: BaseConsumer = kafka.consumer(&unique("probe-")).create().unwrap();
    let central = format!("{prefix}gov.bca.residents.v1");
    let shared = wait_until(
        Duration::from_secs(60),
        "two routers sharing the partitions",
        || {
            let m = members(&probe, &group);
            let holding: Vec<usize> = m
                .values()
                .map(|ps| ps.iter().filter(|(t, _)| *t == central).count())
                .filter(|n| *n > 0)
                .collect();
            (holding.len() == 2).then_some(holding)
        },
    );
    assert_eq!(shared.iter().sum::<usize>(), 4, "{shared:?}");

    let mut world = DemoWorld::new(7);
    let post = |world: &mut DemoWorld, n: usize| {
        for _ in 0..n {
            let (req, _) = world.next_with_before();
            publisher.submit("bca.residents", req).unwrap();
        }
    };
    let mut pg = postgres::Client::connect(&pg_url(), postgres::NoTls).unwrap();
    post(&mut world, 300);
    wait_until(
        Duration::from_secs(90),
        "p52's rows with two routers",
        || {
            assert!(!a.finished() && !b.finished() && !p52.finished());
            (pg_rows(&mut pg, &schema).unwrap_or_default() == expected_rows(&world, "52"))
                .then_some(())
        },
    );

    // One stops: the other takes all four partitions and goes on.
    drop(a);
    wait_until(
        Duration::from_secs(60),
        "one router holding every partition",
        || {
            let m = members(&probe, &group);
            (m.len() == 1 && m.values().all(|ps| ps.len() == 4)).then_some(())
        },
    );
    post(&mut world, 300);
    wait_until(
        Duration::from_secs(90),
        "p52's rows after the takeover",
        || {
            assert!(!b.finished() && !p52.finished());
            (pg_rows(&mut pg, &schema).unwrap_or_default() == expected_rows(&world, "52"))
                .then_some(())
        },
    );
    // Each record of p52's view once: rising sequences per entity.
    let view = format!("{prefix}sub.p52.bca.residents.v1");
    let resolver =
        govbus_schema::SchemaCache::new(govbus_schema::RegistryClient::new(registry.as_str()));
    let mut last: HashMap<Vec<u8>, i64> = HashMap::new();
    let probe_parts = govbus_core::kafka::partitions_of(&probe, &view).unwrap();
    let bounds: Vec<(i32, Option<i64>)> = probe_parts.into_iter().map(|p| (p, None)).collect();
    let mut n = 0;
    govbus_core::kafka::read_partitions(kafka, &view, &bounds, Duration::from_secs(60), |m| {
        let (_, c) =
            govbus_schema::envelope::decode(m.payload().unwrap_or_default(), &resolver).unwrap();
        let key = m.key().unwrap_or_default().to_vec();
        let prev = last.insert(key, c.source.seq);
        assert!(
            prev.is_none_or(|p| p < c.source.seq),
            "an event twice or out of order"
        );
        n += 1;
    })
    .unwrap();
    assert!(n > 0);
}
