//! Subscriptions live in the control topic `_govbus.subscriptions`: adding
//! one backfills the current state and goes on live, with no gap and no
//! duplicate where the two meet; changing a filter sends the entities that
//! leave (and those that enter); removing one stops delivery and, when
//! asked, empties the view — all while the router runs, with no restart.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use govbus_core::catalog::parse_subscription;
use govbus_core::{Catalog, SubscriptionSpec};
use govbus_e2e::{
    apply_subscriptions, consumer_config, expected_rows, pg_rows, pg_url, router_config, unique,
    wait_until, Bus, Worker,
};
use govbus_producer::demo::DemoWorld;
use govbus_producer::Relay;
use govbus_router::control::Step;
use rdkafka::Message;

fn spec(subscriber: &str, filter: &str) -> SubscriptionSpec {
    parse_subscription(
        &format!("{subscriber}.bca.residents.toml"),
        &format!(
            "subscriber = \"{subscriber}\"\ndataset = \"bca.residents\"\nfilter = '{filter}'\ndrop = [\"ethnicity\"]\n\
             legal_basis = \"test\"\nlegal_reference = \"test\"\nrequested_by = \"test\"\n"
        ),
    )
    .unwrap()
}

fn with(catalog: &Catalog, subs: Vec<SubscriptionSpec>) -> Catalog {
    let mut c = catalog.clone();
    c.subscriptions = subs;
    c
}

/// `topic`'s records (read_committed) to the end of each partition.
/// (Not `read_all`: its fence records would reach the running consumers.)
fn records(
    kafka: &govbus_kafka_client::KafkaConfig,
    topic: &str,
) -> Vec<rdkafka::message::OwnedMessage> {
    let probe: rdkafka::consumer::BaseConsumer =
        kafka.consumer(&unique("probe-")).create().unwrap();
    let bounds: Vec<(i32, Option<i64>)> = govbus_kafka_client::partitions_of(&probe, topic)
        .unwrap()
        .into_iter()
        .map(|p| (p, None))
        .collect();
    let mut out = Vec::new();
    govbus_kafka_client::read_partitions(kafka, topic, &bounds, Duration::from_secs(60), |m| {
        out.push(m.detach())
    })
    .unwrap();
    out
}

/// Per entity, the sequences of `topic`'s records in order (read_committed).
fn sequences(bus: &Bus, topic: &str) -> HashMap<Vec<u8>, Vec<(i64, String)>> {
    let resolver =
        govbus_schema::SchemaCache::new(govbus_schema::RegistryClient::new(bus.registry.as_str()));
    let mut out: HashMap<Vec<u8>, Vec<(i64, String)>> = HashMap::new();
    for m in records(&bus.kafka, topic) {
        let (_, c) =
            govbus_schema::envelope::decode(m.payload().unwrap_or_default(), &resolver).unwrap();
        out.entry(m.key().unwrap_or_default().to_vec())
            .or_default()
            .push((c.source.seq, format!("{:?}", c.op)));
    }
    out
}

#[test]
fn subscriptions_are_added_changed_and_removed_live() {
    let bus = Bus::start();
    let (kafka, prefix, registry, catalog) = (&bus.kafka, &bus.prefix, &bus.registry, &bus.catalog);
    let publisher = bus.publisher("t");
    let relay = bus.relay(&publisher);

    // Only p52 at first.
    let p52 = spec("p52", r#"permanent_address.province_code == "52""#);
    let p92 = spec("p92", r#"permanent_address.province_code == "92""#);
    let router = govbus_e2e::router(
        router_config(kafka, registry, prefix),
        &with(catalog, vec![p52.clone()]),
    );
    let router = Worker::spawn("router", move |stop| router.run(stop).unwrap());
    let schemas = [unique("p52_"), unique("p92_")];
    let consumers: Vec<Worker> = ["p52", "p92"]
        .iter()
        .zip(&schemas)
        .map(|(p, schema)| {
            let cfg = consumer_config(kafka, registry, prefix, p, &pg_url(), schema);
            let catalog = catalog.clone();
            Worker::spawn(p, move |stop| {
                govbus_consumer::run(&cfg, &catalog, stop).unwrap()
            })
        })
        .collect();
    let alive = || {
        for w in consumers.iter().chain([&router, &relay]) {
            assert!(!w.finished(), "{} stopped", w.name());
        }
    };
    let mut world = DemoWorld::new(4);
    let post = |world: &mut DemoWorld, n: usize| {
        for _ in 0..n {
            let (req, _) = world.next_with_before();
            publisher.submit("bca.residents", req).unwrap();
        }
    };
    let mut pg = postgres::Client::connect(&pg_url(), postgres::NoTls).unwrap();
    let mut wait_rows = |schema: &str, want: &BTreeMap<String, Vec<String>>, what: &str| {
        wait_until(Duration::from_secs(90), what, || {
            alive();
            let got = pg_rows(&mut pg, schema).unwrap_or_default();
            (&got == want).then_some(())
        });
    };

    post(&mut world, 400);
    wait_rows(&schemas[0], &expected_rows(&world, "52"), "p52's rows");
    let want92 = expected_rows(&world, "92");
    assert!(want92.len() > 20, "p92 has rows to backfill");

    // A dry run shows the diff and writes nothing.
    let both = with(catalog, vec![p52.clone(), p92.clone()]);
    let dry = govbus_router::control::apply(kafka, &bus.topics, &both, false, true).unwrap();
    assert!(
        matches!(&dry[..], [Step::Add(s)] if s.name() == "p92/bca.residents"),
        "{dry:?}"
    );
    assert!(
        dry[0].to_string().starts_with("+ p92/bca.residents"),
        "{}",
        dry[0]
    );
    let on_topic = govbus_router::control::read(kafka, &bus.topics.subscriptions()).unwrap();
    assert_eq!(on_topic.keys().collect::<Vec<_>>(), ["p52/bca.residents"]);

    // p92 is added while the router runs: its current rows are backfilled,
    // and changes made meanwhile arrive live.
    let steps = apply_subscriptions(
        kafka,
        prefix,
        &with(catalog, vec![p52.clone(), p92.clone()]),
        false,
    );
    assert!(
        matches!(&steps[..], [Step::Add(s)] if s.name() == "p92/bca.residents"),
        "{steps:?}"
    );
    post(&mut world, 200);
    wait_rows(
        &schemas[1],
        &expected_rows(&world, "92"),
        "p92 backfilled, then live",
    );
    wait_rows(&schemas[0], &expected_rows(&world, "52"), "p52 still right");
    // Where backfill and live meet: every entity's sequences rise strictly
    // on p92's topic — nothing missing (the table equals the view) and
    // nothing twice.
    let view94 = format!("{prefix}sub.p92.bca.residents.v1");
    let seqs = sequences(&bus, &view94);
    let snapshots = seqs
        .values()
        .flatten()
        .filter(|(_, op)| op == "Snapshot")
        .count();
    assert!(
        snapshots >= want92.len() / 2,
        "backfilled as snapshots: {snapshots}"
    );
    for (k, s) in &seqs {
        assert!(
            s.windows(2).all(|w| w[0].0 < w[1].0),
            "entity {} twice or out of order on p92's topic: {s:?}",
            String::from_utf8_lossy(k)
        );
    }

    // p52's filter narrows: residents of one commune leave its view.
    let rows52 = expected_rows(&world, "52");
    let mut communes: BTreeMap<&str, usize> = BTreeMap::new();
    for r in rows52.values() {
        *communes.entry(r[4].as_str()).or_default() += 1;
    }
    let (gone, n) = communes
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(c, n)| (c.to_string(), *n))
        .unwrap();
    assert!(
        n > 5 && n < rows52.len(),
        "a commune with rows to leave ({n} of {})",
        rows52.len()
    );
    let narrower = spec(
        "p52",
        &format!(
            r#"permanent_address.province_code == "52" && permanent_address.commune_code != "{gone}""#
        ),
    );
    let steps = apply_subscriptions(
        kafka,
        prefix,
        &with(catalog, vec![narrower, p92.clone()]),
        false,
    );
    assert!(
        matches!(&steps[..], [Step::Change { what, .. }] if what[0].starts_with("filter")),
        "{steps:?}"
    );
    post(&mut world, 100);
    let only = |rows: BTreeMap<String, Vec<String>>| -> BTreeMap<String, Vec<String>> {
        rows.into_iter().filter(|(_, r)| r[4] != gone).collect()
    };
    wait_rows(
        &schemas[0],
        &only(expected_rows(&world, "52")),
        "p52 without the commune",
    );

    // p92 is removed and its view emptied; later changes do not reach it.
    let p52_now = spec(
        "p52",
        &format!(
            r#"permanent_address.province_code == "52" && permanent_address.commune_code != "{gone}""#
        ),
    );
    let steps = apply_subscriptions(kafka, prefix, &with(catalog, vec![p52_now]), true);
    assert!(
        matches!(
            &steps[..],
            [Step::Remove {
                empty_view: true,
                ..
            }]
        ),
        "{steps:?}"
    );
    wait_rows(&schemas[1], &BTreeMap::new(), "p92's view emptied");
    let before = records(kafka, &view94).len();
    post(&mut world, 100);
    wait_rows(
        &schemas[0],
        &only(expected_rows(&world, "52")),
        "p52 goes on",
    );
    assert_eq!(
        records(kafka, &view94).len(),
        before,
        "nothing more for p92"
    );
}

/// A dataset added to the files after the router started: the router knew
/// only the map when it started; a subscription to residents is applied,
/// the router reads its files again (`Router::reloading`) instead of leaving
/// the subscription out until a restart, and the view fills.
#[test]
fn a_subscription_to_a_dataset_added_after_the_router_started_is_routed() {
    let bus = Bus::start();
    let publisher = bus.publisher("later");
    let relay = Relay::new(&bus.kafka, publisher.store(), publisher.wakeup()).unwrap();
    let _relay = Worker::spawn("relay", move |stop| relay.run(stop));
    let mut world = DemoWorld::new(7);
    let changes: Vec<_> = (0..100).map(|_| world.next_change()).collect();
    publisher.submit_batch("bca.residents", changes).unwrap();

    // The router starts knowing only moha.admin_units.
    let mut at_start = with(&bus.catalog, vec![]);
    at_start
        .datasets
        .retain(|id, _| id.to_string() == "moha.admin_units");
    let full: Catalog = (*bus.catalog).clone();
    let router = govbus_router::Router::new(bus.router_config(), &at_start)
        .unwrap()
        .reloading(govbus_router::Reload::new(move || Ok(full.clone())));
    let _router = Worker::spawn("router", move |stop| router.run(stop).unwrap());

    let p92 = spec("p92", r#"in_unit(permanent_address.commune_code, "92")"#);
    apply_subscriptions(
        &bus.kafka,
        &bus.prefix,
        &with(&bus.catalog, vec![p92]),
        false,
    );
    let want = expected_rows(&world, "92");
    assert!(!want.is_empty());
    let view = format!("{}sub.p92.bca.residents.v1", bus.prefix);
    wait_until(Duration::from_secs(60), "p92's view to fill", || {
        let keys: std::collections::BTreeSet<String> = records(&bus.kafka, &view)
            .iter()
            .filter_map(|m| m.key().map(|k| String::from_utf8_lossy(k).into_owned()))
            .collect();
        want.keys().all(|k| keys.contains(k)).then_some(())
    });
}
