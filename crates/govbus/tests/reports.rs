//! A province's report (deploy/reports/p52.population.toml) is kept by its
//! consumer from the view's changes, exactly once, in the same transaction
//! as the rows: it equals a count of the table after moves, leaves and
//! deletes, and after the router re-sends every row as a snapshot; it is
//! published on `report.p52.population` (compacted, Avro, registered); and
//! figures that were tampered with or never built are built again from the
//! table when the consumer starts. `govbus report` shows the figures,
//! checks them against the table, freezes a dated snapshot, lists and
//! verifies the snapshots, and exports one as CSV and as a printable page.

use std::collections::BTreeMap;
use std::time::Duration;

use govbus_consumer::build::{compare, count_table, view_table};
use govbus_consumer::report::{cell_of, Cell, Report};
use govbus_consumer::{Sink, SqlSink};
use govbus_core::catalog::parse_subscription;
use govbus_e2e::{
    apply_subscriptions, consumer_config, expected_rows, pg_url, read_all, unique, wait_until, Bus,
    Worker,
};
use govbus_producer::demo::DemoWorld;
use govbus_schema::{RegistryClient, Schema};
use rdkafka::Message;

/// The figures a count of the expected rows gives, as shown today.
fn expected(report: &Report, rows: &BTreeMap<String, Vec<String>>) -> BTreeMap<Cell, i64> {
    // expected_rows: name, dob, sex, province, commune, street, updated_at.
    let cells: Vec<(Cell, i64)> = rows
        .values()
        .map(|r| (vec![r[4].clone(), r[2].clone(), r[1][..4].to_string()], 1))
        .collect();
    report.figures(&cells, today())
}

fn today() -> chrono::NaiveDate {
    govbus_core::admin_map::day_of_ms(govbus_core::now_ms())
}

/// The report's figures on its compacted topic: the latest value per key.
fn on_topic(bus: &Bus, topic: &str) -> BTreeMap<Cell, i64> {
    let registry = RegistryClient::new(bus.registry.as_str());
    let mut latest: BTreeMap<Cell, i64> = BTreeMap::new();
    for m in read_all(&bus.kafka, topic) {
        let cell = cell_of(std::str::from_utf8(m.key().unwrap()).unwrap()).unwrap();
        let Some(v) = m.payload() else {
            latest.remove(&cell);
            continue;
        };
        let (id, body) = govbus_schema::wire::decode(v).unwrap();
        let schema = Schema::parse_str(&registry.schema_text(id).unwrap()).unwrap();
        let value = apache_avro::from_avro_datum(&schema, &mut &body[..], None).unwrap();
        let apache_avro::types::Value::Record(fields) = value else {
            panic!("not a record: {value:?}")
        };
        let labels: Cell = fields[..3]
            .iter()
            .map(|(_, v)| match v {
                apache_avro::types::Value::String(s) => s.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(labels, cell, "the key is the record's labels");
        let apache_avro::types::Value::Long(n) = fields[3].1 else {
            panic!("count: {:?}", fields[3])
        };
        latest.insert(cell, n);
    }
    latest
}

#[test]
fn a_report_follows_its_view_exactly_once_and_equals_a_count_of_the_table() {
    let bus = Bus::start();
    let (kafka, prefix, registry) = (&bus.kafka, &bus.prefix, &bus.registry);
    let catalog = bus.catalog.clone();
    let publisher = bus.publisher("t");
    let _router = bus.router();
    let _relay = bus.relay(&publisher);
    let schema = unique("p52_");
    let cfg = consumer_config(kafka, registry, prefix, "p52", &pg_url(), &schema);
    let spawn = || {
        let (c, catalog) = (cfg.clone(), catalog.clone());
        Worker::spawn("p52", move |stop| {
            govbus_consumer::run(&c, &catalog, stop).unwrap()
        })
    };
    let p52 = spawn();
    let spec = catalog.reports_of("p52").next().unwrap().clone();
    let report = Report::compile(&spec, &catalog).unwrap();
    let topic = format!("{prefix}report.p52.population");
    let mut sink = SqlSink::postgres(&pg_url(), &schema).unwrap();
    let mut pg = postgres::Client::connect(&pg_url(), postgres::NoTls).unwrap();

    // Residents arrive, move within and out of the province, and leave,
    // in waves: each wave is applied before the next is sent, so a move
    // takes a row from the cell an earlier batch counted it in.
    let mut world = DemoWorld::new(52);
    let mut want = BTreeMap::new();
    for _ in 0..8 {
        want = wave(&publisher, &mut world, 50, &report, &mut sink, &p52);
    }
    let want_rows = expected_rows(&world, "52");
    assert!(want.len() > 10, "the world fills several cells: {want:?}");
    let rows = govbus_e2e::pg_rows(&mut pg, &schema).unwrap();
    assert_eq!(rows, want_rows, "the table holds the view");
    let table = view_table(
        &report,
        &catalog,
        &bus.topics,
        &RegistryClient::new(registry.as_str()),
    )
    .unwrap()
    .expect("the view has a schema");
    let (members, maintained) = count_table(&report, &table, sink.store()).unwrap().unwrap();
    let check = compare(&maintained, &members);
    assert_eq!(check.rows, want_rows.len());
    assert!(check.differences.is_empty(), "{check:?}");
    wait_until(
        Duration::from_secs(60),
        "the figures on the report topic",
        || (on_topic(&bus, &topic) == want).then_some(()),
    );

    // The subscription changes its projection: the router re-sends every
    // row of the view as a snapshot. Each row is counted once still.
    let view = format!("{prefix}sub.p52.bca.residents.v1");
    let before = end_offsets(&bus, &view);
    let mut changed = (*catalog).clone();
    let text = "subscriber = \"p52\"\ndataset = \"bca.residents\"\n\
                filter = 'in_unit(permanent_address.commune_code, \"52\")'\n\
                drop = [\"ethnicity\", \"full_name\"]\nlegal_basis = \"test\"\nlegal_reference = \"test\"\nrequested_by = \"test\"\n";
    changed.subscriptions = vec![
        parse_subscription("p52.bca.residents.toml", text).unwrap(),
        catalog.subscriptions[1].clone(),
    ];
    apply_subscriptions(kafka, prefix, &changed, false);
    wait_until(
        Duration::from_secs(90),
        "the view re-sent and applied",
        || {
            assert!(!p52.finished(), "the consumer stopped");
            let (sent, next) = records_since(&bus, &view, &before);
            let applied = sink.offsets(&view).ok()?;
            let caught_up = next
                .iter()
                .all(|(p, n)| applied.get(p).is_some_and(|a| a >= n));
            (sent >= want_rows.len() && caught_up).then_some(())
        },
    );
    let cells = sink.store().report_cells("p52.population").unwrap();
    assert_eq!(
        report.figures(&cells, today()),
        want,
        "a snapshot adds nothing twice"
    );

    // Tampered figures: the check names the cell; a consumer whose
    // figures were built for no definition builds them again at start.
    drop(p52);
    pg.batch_execute(&format!(
        "UPDATE \"{schema}\"._govbus_report_cells SET n = n + 5 WHERE cell = (SELECT min(cell) FROM \"{schema}\"._govbus_report_cells);
         DELETE FROM \"{schema}\"._govbus_reports;"
    ))
    .unwrap();
    let (members, maintained) = count_table(&report, &table, sink.store()).unwrap().unwrap();
    let check = compare(&maintained, &members);
    assert_eq!(check.differences.len(), 1, "{check:?}");
    assert_eq!(check.differences[0].1 - check.differences[0].2, 5);
    let p52 = spawn();
    wait_until(Duration::from_secs(60), "the figures built again", || {
        assert!(!p52.finished(), "the consumer stopped");
        let cells = sink.store().report_cells("p52.population").ok()?;
        (report.figures(&cells, today()) == want).then_some(())
    });
    for _ in 0..3 {
        want = wave(&publisher, &mut world, 30, &report, &mut sink, &p52);
    }
    cli(&bus, &cfg, &schema, &mut pg, &report, &want);
    wait_until(
        Duration::from_secs(60),
        "the report topic after more changes",
        || (on_topic(&bus, &topic) == want).then_some(()),
    );
}

fn govbus(args: &[&str]) -> (bool, String) {
    govbus_e2e::run(env!("CARGO_BIN_EXE_govbus"), args)
}

/// The figures of CSV printed by `govbus report show --csv` or `export`.
fn from_csv(text: &str) -> BTreeMap<Cell, i64> {
    text.lines()
        .skip(1)
        .filter(|l| !l.starts_with("Tổng cộng") && !l.starts_with("Total"))
        .map(|l| {
            let mut f: Vec<String> = l.split(',').map(str::to_string).collect();
            let n = f.pop().unwrap().parse().unwrap();
            (f, n)
        })
        .collect()
}

/// `govbus report …` on p52's consumer configuration.
fn cli(
    bus: &Bus,
    cfg: &govbus_consumer::ConsumerConfig,
    schema: &str,
    pg: &mut postgres::Client,
    report: &Report,
    want: &BTreeMap<Cell, i64>,
) {
    let file = bus.dir.path().join("p52.toml");
    std::fs::write(
        &file,
        format!(
            "[consumer]\nsubscriber = \"p52\"\nregistry = \"{}\"\ntopic_prefix = \"{}\"\n\
             [consumer.sink]\ntype = \"postgres\"\nurl = \"{}\"\nschema = \"{schema}\"\n\
             [consumer.kafka]\nbootstrap = \"{}\"\n",
            cfg.registry,
            cfg.topic_prefix,
            pg_url(),
            cfg.kafka.bootstrap
        ),
    )
    .unwrap();
    let c = file.to_str().unwrap();
    let (ok, out) = govbus(&["report", "show", "-c", c, "--csv"]);
    assert!(ok, "{out}");
    assert_eq!(&from_csv(&out), want, "{out}");
    let (ok, out) = govbus(&["report", "show", "-c", c, "--subscriber", "p52"]);
    assert!(
        ok && out.contains("Dân số theo xã") && out.contains("Tổng cộng: "),
        "{out}"
    );
    let (ok, out) = govbus(&["report", "show", "-c", c, "--subscriber", "p92"]);
    assert!(!ok && out.contains("p52's consumer, not p92's"), "{out}");
    let (ok, out) = govbus(&["report", "check", "-c", c]);
    assert!(
        ok && out.contains("the figures equal a count of bca_residents"),
        "{out}"
    );

    // A snapshot frozen at a date: once; shown and exported as frozen.
    let (ok, out) = govbus(&["report", "freeze", "-c", c, "--at", "2026-11-30"]);
    assert!(ok && out.contains("frozen now"), "{out}");
    let (ok, out) = govbus(&["report", "freeze", "-c", c, "--at", "2026-11-30"]);
    assert!(ok && out.contains("already frozen; kept"), "{out}");
    let at = chrono::NaiveDate::from_ymd_opt(2026, 11, 30).unwrap();
    let cells: Vec<(Cell, i64)> = want.iter().map(|(c, n)| (c.clone(), *n)).collect();
    let frozen_want = report.figures(&cells, at);
    let (ok, out) = govbus(&["report", "show", "-c", c, "--at", "2026-11-30", "--csv"]);
    assert!(ok, "{out}");
    assert_eq!(from_csv(&out), frozen_want, "{out}");
    let html = bus.dir.path().join("p52-2026-11.html");
    let (ok, out) = govbus(&[
        "report",
        "export",
        "-c",
        c,
        "--at",
        "2026-11-30",
        "--format",
        "html",
        "--out",
        html.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let page = std::fs::read_to_string(&html).unwrap();
    let total: i64 = want.values().sum();
    assert!(page.contains("ỦY BAN NHÂN DÂN TỈNH GIA LAI"), "{page}");
    // The grand total, with the Vietnamese thousands separator.
    let digits = total.to_string();
    let shown: String = digits
        .chars()
        .enumerate()
        .flat_map(|(i, ch)| {
            let dot = i > 0 && (digits.len() - i).is_multiple_of(3);
            dot.then_some('.').into_iter().chain([ch])
        })
        .collect();
    assert!(
        page.contains(&format!("<td class=n><b>{shown}</b></td></tr></tfoot>")),
        "{page}"
    );
    let (ok, out) = govbus(&["report", "export", "-c", c, "--at", "2026-10-31"]);
    assert!(
        !ok && out.contains("no snapshot of 2026-10-31 (it has: 2026-11-30)"),
        "{out}"
    );
    let (ok, out) = govbus(&["report", "snapshots", "-c", c]);
    assert!(
        ok && out.contains("2026-11-30") && out.contains("intact"),
        "{out}"
    );

    // A snapshot changed in the database is named, and not shown.
    pg.batch_execute(&format!(
        "UPDATE \"{schema}\"._govbus_report_snapshots SET body = replace(body, '\"total\":{total}', '\"total\":{}')",
        total + 1
    ))
    .unwrap();
    let (ok, out) = govbus(&["report", "snapshots", "-c", c]);
    assert!(
        !ok && out.contains("ALTERED")
            && out.contains("changed after they were frozen: 2026-11-30"),
        "{out}"
    );
    let (ok, out) = govbus(&["report", "show", "-c", c, "--at", "2026-11-30"]);
    assert!(
        !ok && out.contains("was changed after it was frozen"),
        "{out}"
    );

    // Figures that drift from the table: `check` names the cell and fails.
    pg.batch_execute(&format!(
        "UPDATE \"{schema}\"._govbus_report_cells SET n = n + 2 WHERE cell = (SELECT max(cell) FROM \"{schema}\"._govbus_report_cells)"
    ))
    .unwrap();
    let (ok, out) = govbus(&["report", "check", "-c", c]);
    assert!(
        !ok && out.contains("1 cells differ") && out.contains("differ from the table in 1 cells"),
        "{out}"
    );
    pg.batch_execute(&format!(
        "UPDATE \"{schema}\"._govbus_report_cells SET n = n - 2 WHERE cell = (SELECT max(cell) FROM \"{schema}\"._govbus_report_cells)"
    ))
    .unwrap();
}

/// Sends `n` changes of `world` and waits until p52's figures are those of
/// the world's residents in Gia Lai; returns them.
fn wave(
    publisher: &govbus_producer::Publisher,
    world: &mut DemoWorld,
    n: usize,
    report: &Report,
    sink: &mut SqlSink,
    p52: &Worker,
) -> BTreeMap<Cell, i64> {
    for _ in 0..n {
        publisher
            .submit("bca.residents", world.next_change())
            .unwrap();
    }
    let want = expected(report, &expected_rows(world, "52"));
    wait_until(Duration::from_secs(90), "p52's figures", || {
        assert!(!p52.finished(), "the consumer stopped");
        let cells = sink.store().report_cells("p52.population").ok()?;
        (report.figures(&cells, today()) == want).then_some(())
    });
    want
}

/// Committed records of `topic` at or past `from` (per partition), and
/// per partition the offset after its last committed record.
fn records_since(bus: &Bus, topic: &str, from: &BTreeMap<i32, i64>) -> (usize, BTreeMap<i32, i64>) {
    let bounds: Vec<(i32, Option<i64>)> = from.keys().map(|p| (*p, None)).collect();
    let (mut n, mut next) = (0, BTreeMap::new());
    govbus_kafka_client::read_partitions(
        &bus.kafka,
        topic,
        &bounds,
        Duration::from_secs(60),
        |m| {
            if m.offset() >= from.get(&m.partition()).copied().unwrap_or(0) {
                n += 1;
            }
            next.insert(m.partition(), m.offset() + 1);
        },
    )
    .unwrap();
    (n, next)
}

fn end_offsets(bus: &Bus, topic: &str) -> BTreeMap<i32, i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = bus.kafka.consumer(&unique("probe-")).create().unwrap();
    govbus_kafka_client::partitions_of(&c, topic)
        .unwrap()
        .into_iter()
        .map(|p| {
            let (_, high) = c
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap();
            (p, high)
        })
        .collect()
}
