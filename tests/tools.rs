//! Kafka's own CLI tools, run from the same jars as the broker, against a
//! live bus: what an operator sees with the tools they already use.
//!
//! - `kafka-topics --describe`: partitions, replication, compaction and
//!   retention as govbus creates them from `deploy/` (dataset files);
//! - `kafka-console-consumer --isolation-level read_committed` on a `sub.*`
//!   topic: readable keys;
//! - `kafka-consumer-groups --describe` on the router's group: its lag,
//!   exact, and the same as govbus's `govbus_router_lag_events`;
//! - `kafka-consumer-groups --describe` on each province's group: its
//!   positions, committed beside its database, its lag 0 once applied, as
//!   its own gauge and `govbus status` say; the router's member named
//!   `govbus-router`;
//! - `kafka-console-consumer` on a report, a receipt and a dead letter
//!   (with its headers);
//! - `kafka-transactions list`: the router's transactional id;
//! - `kafka-get-offsets`: each partition's end.
//!
//! Its own test binary: the Prometheus recorder is process-wide.
//! `--nocapture` prints each tool's output (docs/OPERATIONS.md shows them).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use govbus_e2e::{consumer_config, kafka_dist, read_all, wait_until, Bus, Worker};
use govbus_kafka::tools;
use govbus_producer::demo::DemoWorld;
use govbus_producer::Relay;
use rdkafka::Message;

fn tool(class: &str, args: &[&str]) -> String {
    let out = kafka_dist()
        .tool_text(class, args)
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "$ {} {}\n{out}",
        class.rsplit('.').next().unwrap_or(class),
        args.join(" ")
    );
    out
}

/// One row of a tool's table, by column name.
type Row = BTreeMap<String, String>;

/// The columns of `kafka-consumer-groups --describe`, by header name, one
/// map per row.
fn table(text: &str) -> Vec<Row> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let Some(header) = lines.find(|l| l.starts_with("GROUP")) else {
        return vec![];
    };
    let names: Vec<&str> = header.split_whitespace().collect();
    lines
        .map(|l| {
            names
                .iter()
                .zip(l.split_whitespace())
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse().ok())
        .next()
}

#[test]
fn operators_see_the_bus_with_kafkas_own_tools() {
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("the only recorder of this test binary");
    let bus = Bus::start();
    let b = bus.broker.bootstrap.as_str();
    let publisher = bus.publisher("tools");
    let central = format!("{}gov.bca.residents.v1", bus.prefix);
    let view = format!("{}sub.p52.bca.residents.v1", bus.prefix);
    let dlq = format!("{}dlq.route.bca.residents", bus.prefix);
    let relay = Relay::new(&bus.kafka, publisher.store(), publisher.wakeup()).unwrap();
    let _relay = Worker::spawn("relay", move |stop| relay.run(stop));
    let cfg = govbus_e2e::router_config(&bus.kafka, &bus.registry, &bus.prefix);
    let (group, tid) = (
        cfg.group.clone(),
        format!("govbus-router-{}-{}", cfg.group, cfg.instance),
    );
    let router = govbus_e2e::router(cfg, &bus.catalog);
    let router = Worker::spawn("router", move |stop| router.run(stop).unwrap());
    let sink = format!("sqlite://{}", bus.dir.path().join("p52.db").display());
    let c52 = consumer_config(&bus.kafka, &bus.registry, &bus.prefix, "p52", &sink, "");
    let catalog = bus.catalog.clone();
    let _p52 = Worker::spawn("p52", move |stop| {
        govbus_consumer::run(&c52, &catalog, stop).unwrap()
    });
    let sink = format!("sqlite://{}", bus.dir.path().join("p92.db").display());
    let c92 = consumer_config(&bus.kafka, &bus.registry, &bus.prefix, "p92", &sink, "");
    let catalog = bus.catalog.clone();
    let _p92 = Worker::spawn("p92", move |stop| {
        govbus_consumer::run(&c92, &catalog, stop).unwrap()
    });

    let mut world = DemoWorld::new(17);
    let first: Vec<_> = (0..300).map(|_| world.next_change()).collect();
    publisher.submit_batch("bca.residents", first).unwrap();
    let store = publisher.store();
    wait_until(Duration::from_secs(60), "the relay publishes", || {
        (store.backlog().ok()? == 0).then_some(())
    });
    let central_records = read_all(&bus.kafka, &central);
    assert_eq!(central_records.len(), 300);

    // kafka-topics: as govbus creates them from the dataset file.
    let described = tool(
        tools::TOPICS,
        &["--bootstrap-server", b, "--describe", "--topic", &central],
    );
    assert!(described.contains("PartitionCount: 4"), "{described}");
    for config in [
        "cleanup.policy=compact",
        "min.compaction.lag.ms=604800000",
        // deploy/datasets/bca.residents.toml: retention_ms = -1
        "retention.ms=-1",
    ] {
        assert!(described.contains(config), "{config} in {described}");
    }
    let replication = described
        .split("ReplicationFactor: ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("a replication factor");
    let partitions: Vec<&str> = described
        .lines()
        .filter(|l| l.contains("Leader:"))
        .collect();
    assert_eq!(partitions.len(), 4, "{described}");
    for p in &partitions {
        let replicas = p
            .split("Replicas: ")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap();
        assert_eq!(
            replicas.split(',').count().to_string(),
            replication,
            "every partition has the broker's default replication factor: {p}"
        );
    }
    let view_described = tool(
        tools::TOPICS,
        &["--bootstrap-server", b, "--describe", "--topic", &view],
    );
    assert!(
        view_described.contains("cleanup.policy=compact"),
        "{view_described}"
    );
    let dlq_described = tool(
        tools::TOPICS,
        &["--bootstrap-server", b, "--describe", "--topic", &dlq],
    );
    assert!(
        dlq_described.contains("cleanup.policy=delete"),
        "{dlq_described}"
    );

    // Everything routed: the router's committed offsets are the ends.
    let ends = |topic: &str| -> BTreeMap<i32, i64> {
        let out = tool(
            tools::GET_OFFSETS,
            &["--bootstrap-server", b, "--topic", topic],
        );
        out.lines()
            .filter_map(|l| {
                let mut parts = l.rsplitn(3, ':');
                let offset = parts.next()?.parse().ok()?;
                let partition = parts.next()?.parse().ok()?;
                (parts.next()? == topic).then_some((partition, offset))
            })
            .collect()
    };
    let central_ends = ends(&central);
    assert_eq!(
        central_ends.len(),
        4,
        "kafka-get-offsets names each partition"
    );
    // The relay writes in transactions: after each partition's last
    // record comes the commit marker of its transaction, so each end is
    // the last record's offset + 2.
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    for m in &central_records {
        let e = last.entry(m.partition()).or_insert(m.offset());
        *e = (*e).max(m.offset());
    }
    assert_eq!(
        central_ends,
        last.iter().map(|(p, o)| (*p, o + 2)).collect(),
        "each partition ends with its last record's commit marker"
    );
    // `live`: a router is in the group, so it also holds the central
    // topic's replay topic (`govbus dlq replay`), one partition with no
    // committed offset (nothing replayed); once it left, only committed
    // offsets are listed.
    let groups = |live: bool, want: &dyn Fn(&[Row]) -> bool| {
        wait_until(Duration::from_secs(60), "the router group's lag", || {
            let all = table(&tool(
                tools::CONSUMER_GROUPS,
                &["--bootstrap-server", b, "--describe", "--group", &group],
            ));
            let replay = format!("{central}.replay");
            let replays = all
                .iter()
                .filter(|r| r.get("TOPIC") == Some(&replay))
                .count();
            let rows: Vec<Row> = all
                .into_iter()
                .filter(|r| r.get("TOPIC") == Some(&central))
                .collect();
            (replays == usize::from(live) && want(&rows)).then_some(rows)
        })
    };
    let rows = groups(true, &|rows| {
        rows.len() == 4
            && rows
                .iter()
                .all(|r| r.get("LAG").map(String::as_str) == Some("0"))
    });
    for r in &rows {
        let p: i32 = r["PARTITION"].parse().unwrap();
        assert_eq!(r["TOPIC"], central);
        assert_eq!(r["CURRENT-OFFSET"], central_ends[&p].to_string(), "{r:?}");
        assert_eq!(r["LOG-END-OFFSET"], central_ends[&p].to_string(), "{r:?}");
    }
    // govbus's own figure agrees: no lag.
    wait_until(
        Duration::from_secs(30),
        "govbus_router_lag_events 0",
        || (gauge(&prometheus.render(), "govbus_router_lag_events") == Some(0.0)).then_some(()),
    );

    // The view, with the console consumer: read_committed, keys readable.
    let view_records = read_all(&bus.kafka, &view);
    assert!(!view_records.is_empty());
    let consumed = tool(
        tools::CONSOLE_CONSUMER,
        &[
            "--bootstrap-server",
            b,
            "--topic",
            &view,
            "--from-beginning",
            "--isolation-level",
            "read_committed",
            "--property",
            "print.key=true",
            "--property",
            "print.value=false",
            "--max-messages",
            &view_records.len().to_string(),
            "--timeout-ms",
            "30000",
        ],
    );
    let mut keys: Vec<&str> = consumed.lines().filter(|l| !l.is_empty()).collect();
    let mut want: Vec<String> = view_records
        .iter()
        .map(|m| String::from_utf8(m.key().unwrap().to_vec()).unwrap())
        .collect();
    keys.sort();
    want.sort();
    assert_eq!(keys, want, "the console consumer prints each record's key");
    assert!(keys
        .iter()
        .all(|k| k.len() == 12 && k.bytes().all(|c| c.is_ascii_digit())));

    // Every agent by name: the router's member is `govbus-router`.
    let router_rows = table(&tool(
        tools::CONSUMER_GROUPS,
        &["--bootstrap-server", b, "--describe", "--group", &group],
    ));
    assert!(
        router_rows
            .iter()
            .all(|r| r.get("CLIENT-ID").map(String::as_str) == Some("govbus-router")),
        "{router_rows:?}"
    );

    // Each province's group: its positions, committed beside its database,
    // so the tools show its lag — 0 once applied, as govbus's own gauge
    // and `govbus status` say.
    for sub in ["p52", "p92"] {
        let view = format!("{}sub.{sub}.bca.residents.v1", bus.prefix);
        let group = govbus_consumer::consumer::group_of(sub);
        let rows = wait_until(
            Duration::from_secs(60),
            &format!("{group}'s lag on {view} to be 0"),
            || {
                let rows: Vec<Row> = table(&tool(
                    tools::CONSUMER_GROUPS,
                    &["--bootstrap-server", b, "--describe", "--group", &group],
                ))
                .into_iter()
                .filter(|r| r.get("TOPIC") == Some(&view))
                .collect();
                (rows.len() == 4
                    && rows
                        .iter()
                        .all(|r| r.get("LAG").map(String::as_str) == Some("0")))
                .then_some(rows)
            },
        );
        let ends = ends(&view);
        for r in &rows {
            let p: i32 = r["PARTITION"].parse().unwrap();
            assert_eq!(r["CURRENT-OFFSET"], ends[&p].to_string(), "{r:?}");
        }
        let own_lag = |text: &str| {
            text.lines()
                .filter(|l| l.starts_with("govbus_consumer_lag_events{"))
                .filter(|l| {
                    l.contains(&format!("subscriber=\"{sub}\""))
                        && l.contains("dataset=\"bca.residents\"")
                })
                .find_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        };
        wait_until(
            Duration::from_secs(30),
            &format!("{sub}'s own lag gauge 0"),
            || (own_lag(&prometheus.render()) == Some(0.0)).then_some(()),
        );
        let cfg = consumer_config(
            &bus.kafka,
            &bus.registry,
            &bus.prefix,
            sub,
            &format!(
                "sqlite://{}",
                bus.dir.path().join(format!("{sub}.db")).display()
            ),
            "",
        );
        let status = govbus_consumer::status(&cfg, &bus.catalog).unwrap();
        assert_eq!(status[0].lag, Some(0), "{status:?}");
    }

    // A report, a receipt and a dead letter, with the console consumer.
    let console = |topic: &str, n: usize, headers: bool| {
        tool(
            tools::CONSOLE_CONSUMER,
            &[
                "--bootstrap-server",
                b,
                "--topic",
                topic,
                "--from-beginning",
                "--isolation-level",
                "read_committed",
                "--property",
                "print.key=true",
                "--property",
                &format!("print.headers={headers}"),
                "--max-messages",
                &n.to_string(),
                "--timeout-ms",
                "30000",
            ],
        )
    };
    let report = console(&bus.topics.report("p52", "population"), 1, false);
    // Keyed by the cell's labels, a JSON array (commune, sex, age band).
    assert!(report.lines().any(|l| l.starts_with("[\"")), "{report}");
    let receipt = console(&bus.topics.receipts("p52"), 1, false);
    assert!(receipt.contains("event_id"), "{receipt}");
    let raw: rdkafka::producer::BaseProducer = bus.kafka.producer().create().unwrap();
    raw.send(
        rdkafka::producer::BaseRecord::to(&central)
            .key("052090000001")
            .payload(&[0u8, 0, 0, 0, 1, 2, 3, 4, 5, 6][..])
            .partition(0),
    )
    .map_err(|(e, _)| e)
    .unwrap();
    rdkafka::producer::Producer::flush(&raw, Duration::from_secs(10)).unwrap();
    wait_until(Duration::from_secs(60), "the router's dead letter", || {
        (!read_all(&bus.kafka, &dlq).is_empty()).then_some(())
    });
    let letter = console(&dlq, 1, true);
    assert!(letter.contains("govbus.reason:"), "{letter}");
    // The router went past it: its group's lag is 0 at the central
    // topic's new ends.
    groups(true, &|rows| {
        rows.len() == 4
            && rows
                .iter()
                .all(|r| r.get("LAG").map(String::as_str) == Some("0"))
    });
    let central_ends = ends(&central);

    // kafka-transactions: the router's transactional id.
    let txns = tool(tools::TRANSACTIONS, &["--bootstrap-server", b, "list"]);
    assert!(
        txns.lines()
            .any(|l| l.split_whitespace().next() == Some(tid.as_str())),
        "{tid} in {txns}"
    );

    // The router stops; 40 more changes, in one transaction of the
    // relay: the group's lag is exactly those 40 and the commit marker
    // of each partition they went to.
    drop(router);
    let more: Vec<_> = (0..40).map(|_| world.next_change()).collect();
    publisher.submit_batch("bca.residents", more).unwrap();
    wait_until(Duration::from_secs(60), "the relay publishes", || {
        (store.backlog().ok()? == 0).then_some(())
    });
    let new: Vec<_> = read_all(&bus.kafka, &central)
        .into_iter()
        .filter(|m| m.offset() >= central_ends[&m.partition()])
        .collect();
    assert_eq!(new.len(), 40);
    let touched: HashSet<i32> = new.iter().map(|m| m.partition()).collect();
    let rows = groups(false, &|rows| {
        rows.iter()
            .map(|r| {
                r.get("LAG")
                    .and_then(|l| l.parse::<i64>().ok())
                    .unwrap_or(0)
            })
            .sum::<i64>()
            == 40 + touched.len() as i64
    });
    let after = ends(&central);
    for r in &rows {
        let p: i32 = r["PARTITION"].parse().unwrap();
        let lag: i64 = r["LAG"].parse().unwrap();
        assert_eq!(lag, after[&p] - central_ends[&p], "{r:?}");
    }
}
