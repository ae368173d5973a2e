//! Two router instances in one consumer group share the central topic's
//! partitions (each reports what it holds); when one stops, the other takes
//! its partitions over, and the province ends with exactly its view —
//! nothing lost, nothing twice. (The chaos test kills both with SIGKILL at
//! random; this one shows the sharing itself.)

use std::collections::HashMap;
use std::time::Duration;

use govbus_e2e::{
    consumer_config, expected_rows, pg_rows, pg_url, router_config, unique, wait_until, Bus, Worker,
};
use govbus_producer::demo::DemoWorld;
use rdkafka::consumer::BaseConsumer;
use rdkafka::Message;

#[test]
fn two_routers_share_partitions_and_one_takes_over_when_the_other_stops() {
    let bus = Bus::start();
    let (kafka, prefix, registry, catalog) = (&bus.kafka, &bus.prefix, &bus.registry, &bus.catalog);
    let publisher = bus.publisher("t");
    let _relay = bus.relay(&publisher);
    let cfg = router_config(kafka, registry, prefix);
    let central = format!("{prefix}gov.bca.residents.v1");
    let a = govbus_e2e::router(cfg.clone(), catalog);
    let b = govbus_router::Router::new(
        govbus_router::RouterConfig {
            instance: "1".into(),
            ..cfg
        },
        catalog,
    )
    .unwrap();
    let (held_a, held_b) = (a.assignment(), b.assignment());
    let held = |h: &govbus_router::router::Assignment| {
        h.lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t == central)
            .count()
    };
    let a = Worker::spawn("router-a", move |stop| a.run(stop).unwrap());
    let b = Worker::spawn("router-b", move |stop| b.run(stop).unwrap());
    let schema = unique("p52_");
    let c = consumer_config(kafka, registry, prefix, "p52", &pg_url(), &schema);
    let cat = catalog.clone();
    let p52 = Worker::spawn("p52", move |stop| {
        govbus_consumer::run(&c, &cat, stop).unwrap()
    });

    // Both routers hold partitions of the central topic at once.
    let shared = wait_until(
        Duration::from_secs(60),
        "two routers sharing the partitions",
        || {
            let (na, nb) = (held(&held_a), held(&held_b));
            (na > 0 && nb > 0 && na + nb == 4).then_some((na, nb))
        },
    );
    eprintln!("partitions held by the two routers: {shared:?}");

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
        "the other router holding every partition",
        || (held(&held_b) == 4).then_some(()),
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
    let probe: BaseConsumer = kafka.consumer(&unique("probe-")).create().unwrap();
    let bounds: Vec<(i32, Option<i64>)> = govbus_kafka_client::partitions_of(&probe, &view)
        .unwrap()
        .into_iter()
        .map(|p| (p, None))
        .collect();
    let mut last: HashMap<Vec<u8>, i64> = HashMap::new();
    let mut n = 0;
    govbus_kafka_client::read_partitions(kafka, &view, &bounds, Duration::from_secs(60), |m| {
        let (_, c) =
            govbus_schema::envelope::decode(m.payload().unwrap_or_default(), &resolver).unwrap();
        let prev = last.insert(m.key().unwrap_or_default().to_vec(), c.source.seq);
        assert!(
            prev.is_none_or(|p| p < c.source.seq),
            "an event twice or out of order"
        );
        n += 1;
    })
    .unwrap();
    assert!(n > 0);
}
