//! `govbus-bench`: the agents' speed, each measured in the same run as the
//! baseline it is compared with, on Apache Kafka (started from its jars, or
//! `GOVBUS_KAFKA_BOOTSTRAP`) and PostgreSQL. Figures go to docs/BENCHMARKS.md.
//!
//! ```sh
//! cargo run --release -p govbus-bench -- relay --changes 200000
//! cargo run --release -p govbus-bench -- route --changes 300000
//! cargo run --release -p govbus-bench -- route --changes 300000 --hierarchy
//! cargo run --release -p govbus-bench -- route --changes 200000 --subscribers 340
//! cargo run --release -p govbus-bench -- index
//! cargo run --release -p govbus-bench -- backfill --residents 1000000
//! cargo run --release -p govbus-bench -- sink --rows 100000
//! cargo run --release -p govbus-bench -- ingest --seconds 10      # needs wrk
//! cargo build --release -p govbus && cargo run --release -p govbus-bench -- latency --rate 5000
//! ```

mod backfill;
mod costs;
mod index;
mod latency;
mod quiet;
mod route;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use govbus_consumer::sink::{Row, Sink};
use govbus_consumer::table::{ColType, Column, SqlValue, TableDef};
use govbus_consumer::SqlSink;
use govbus_core::{Catalog, Topics};
use govbus_e2e::{pg_url, runtime, start_registry, unique, Broker};
use govbus_producer::demo::DemoWorld;
use govbus_producer::{open_store, ChangeRequest, Publisher, Relay};
use govbus_schema::{Op, RegistryClient};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Relay (outbox → Kafka) against a raw rdkafka produce of the same bytes.
    Relay {
        #[arg(long, default_value_t = 200_000)]
        changes: usize,
        /// Timed rounds after the warm-up (each side first in turn; the
        /// medians are compared).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// On a node of its own that speaks only SASL_SSL (SCRAM-SHA-512)
        /// with the authorizer on, as a user its ACLs allow everything.
        #[arg(long)]
        secure: bool,
    },
    /// The routing step alone (no Kafka) at 34, 340 and 3,400
    /// subscriptions, with the subscription index and without it.
    Index {
        #[arg(long, default_value_t = 200_000)]
        changes: usize,
        /// Subscription counts, multiples of 34.
        #[arg(long, value_delimiter = ',', default_value = "34,340,3400")]
        subscribers: Vec<usize>,
    },
    /// Router (34 subscriptions, exactly once) against a raw pass-through.
    Route {
        #[arg(long, default_value_t = 100_000)]
        changes: usize,
        /// Most changes per router transaction (default: the router's).
        #[arg(long)]
        batch: Option<usize>,
        /// Subscriptions ask the administrative map (`in_unit(commune,
        /// province)` for the 34 provinces of today's map, the whole real
        /// map loaded) instead of comparing the province code.
        #[arg(long)]
        hierarchy: bool,
        /// As for `relay --secure`.
        #[arg(long)]
        secure: bool,
        /// Subscriptions on bca.residents, a multiple of 34 (implies
        /// `--hierarchy` above 34): per province, the province itself
        /// and then its communes' offices (`in_unit(commune, "<commune>")`,
        /// each dropping ethnicity and the date of birth), cycling
        /// over the province's communes of today.
        #[arg(long, default_value_t = 34)]
        subscribers: usize,
    },
    /// Backfill of a new subscription over N residents, to its topic and
    /// to the province's table, against a plain read of the same records.
    Backfill {
        #[arg(long, default_value_t = 1_000_000)]
        residents: usize,
    },
    /// PostgreSQL sink: a first load (every row new) against a plain
    /// COPY of the same rows, then creates and updates; row by row too
    /// with `--row-by-row` (slow).
    Sink {
        #[arg(long, default_value_t = 100_000)]
        rows: usize,
        /// The consumer's default for a database.
        #[arg(long, default_value_t = 5000)]
        batch: usize,
        #[arg(long)]
        row_by_row: bool,
    },
    /// What reports and receipts cost per applied change: the PostgreSQL
    /// sink alone, with p52's population report, with receipts, and with
    /// both (runs alternated, medians).
    Costs {
        #[arg(long, default_value_t = 100_000)]
        rows: usize,
        #[arg(long, default_value_t = 500)]
        batch: usize,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// HTTP ingest under wrk (keep-alive): the single and the batch endpoint.
    Ingest {
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        #[arg(long, default_value_t = 8)]
        connections: u32,
    },
    /// What the whole bus costs at quiet loads: `govbus up` at each rate,
    /// the CPU of the broker and of every agent over a window, per second
    /// and per change (rate 0: idle, the demo source paused). Needs
    /// `cargo build --release -p govbus` first.
    Quiet {
        /// Changes per second, comma-separated (0: idle).
        #[arg(long, value_delimiter = ',', default_values_t = [0u32, 20, 200, 2000])]
        rates: Vec<u32>,
        /// Seconds of load before the window.
        #[arg(long, default_value_t = 40)]
        warmup: u64,
        /// The window, in seconds.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// End-to-end latency (HTTP ingest → province row) at a steady rate,
    /// with the router as its own process (RSS, CPU). Needs
    /// `cargo build --release -p govbus` first.
    Latency {
        #[arg(long, default_value_t = 5000)]
        rate: usize,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Changes per request (the batch endpoint).
        #[arg(long, default_value_t = 50)]
        per_request: usize,
        /// `fetch_wait_ms` of the router's and the consumer's Kafka config
        /// (unset: the default, 100).
        #[arg(long)]
        fetch_wait_ms: Option<u32>,
        /// The process of an external broker (`GOVBUS_KAFKA_BOOTSTRAP`), to
        /// report its CPU per 5 s as for the node the bench starts.
        #[arg(long)]
        broker_pid: Option<u32>,
    },
}

fn main() -> anyhow::Result<()> {
    govbus_e2e::init_logs();
    match Cli::parse().cmd {
        Cmd::Relay {
            changes,
            rounds,
            secure,
        } => relay(changes, rounds, secure),
        Cmd::Index {
            changes,
            subscribers,
        } => index::run(changes, &subscribers),
        Cmd::Route {
            changes,
            batch,
            hierarchy,
            secure,
            subscribers,
        } => route::run(
            changes,
            batch,
            hierarchy || subscribers > 34,
            secure,
            subscribers,
        ),
        Cmd::Sink {
            rows,
            batch,
            row_by_row,
        } => sink(rows, batch, row_by_row),
        Cmd::Costs {
            rows,
            batch,
            rounds,
        } => costs::run(rows, batch, rounds),
        Cmd::Backfill { residents } => backfill::run(residents),
        Cmd::Ingest {
            seconds,
            connections,
        } => ingest(seconds, connections),
        Cmd::Latency {
            rate,
            seconds,
            per_request,
            fetch_wait_ms,
            broker_pid,
        } => latency::run(rate, seconds, per_request, fetch_wait_ms, broker_pid),
        Cmd::Quiet {
            rates,
            warmup,
            seconds,
        } => quiet::run(&rates, warmup, seconds),
    }
}

struct Count(std::sync::atomic::AtomicUsize);
impl ClientContext for Count {}
impl ProducerContext for Count {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        if r.is_ok() {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// The bca publisher on a SQLite store in `dir`, after the demo's admin
/// units are published (its contract looks codes up in them).
pub(crate) fn bca_publisher(
    catalog: &Catalog,
    topics: &Topics,
    kafka: &govbus_kafka_client::KafkaConfig,
    registry: &str,
    dir: &std::path::Path,
) -> anyhow::Result<Publisher> {
    let registry = RegistryClient::new(registry);
    govbus_producer::demo::seed_admin_units(
        catalog,
        topics,
        kafka,
        &registry,
        dir.join("moha.db").to_str().context("path")?,
    )?;
    let store = open_store(dir.join("bca.db").to_str().context("path")?, "")?;
    let publisher = Publisher::new(catalog, "bca", "bench", topics, kafka, &registry, store)?;
    govbus_producer::ensure_topics(kafka, &publisher, 4)?;
    Ok(publisher)
}

/// Submits `n` demo changes (world `seed`) in batches of 1,000 (not measured).
pub(crate) fn fill(publisher: &Publisher, seed: u64, n: usize) -> anyhow::Result<()> {
    let mut world = DemoWorld::new(seed);
    let mut left = n;
    while left > 0 {
        let k = left.min(1000);
        let reqs: Vec<ChangeRequest> = (0..k).map(|_| world.next_change()).collect();
        publisher.submit_batch("bca.residents", reqs)?;
        left -= k;
    }
    Ok(())
}

/// The broker a benchmark runs on and how it connects: the shared
/// plaintext node, or (`secure`) a node of its own with TLS, SCRAM and the
/// authorizer on, as user `bench`, whom ACLs allow every topic, group and
/// transactional id (so the authorizer evaluates ACLs: a super user would
/// skip them).
pub(crate) fn broker(secure: bool) -> anyhow::Result<(Broker, govbus_kafka_client::KafkaConfig)> {
    use govbus_kafka_client::acl::{Acl, AclAdmin, Operation, Pattern, Resource};
    if !secure {
        let b = Broker::start();
        let k = b.kafka();
        return Ok((b, k));
    }
    let b = Broker::secured(&["bench"]);
    let acl = |resource, name: &str, operation| Acl {
        principal: "User:bench".into(),
        resource,
        pattern: Pattern::Literal,
        name: name.into(),
        operation,
    };
    AclAdmin::new(&b.kafka())?.create(&[
        acl(Resource::Topic, "*", Operation::All),
        acl(Resource::Group, "*", Operation::All),
        acl(Resource::TransactionalId, "*", Operation::All),
        acl(
            Resource::Cluster,
            "kafka-cluster",
            Operation::IdempotentWrite,
        ),
    ])?;
    let k = b.kafka_as("bench");
    println!("broker: SASL_SSL, SCRAM-SHA-512, StandardAuthorizer; as User:bench");
    Ok((b, k))
}

fn relay(n: usize, rounds: usize, secure: bool) -> anyhow::Result<()> {
    let (_broker, kafka) = broker(secure)?;
    let rt = runtime();
    let topics = Topics::new(format!("{}.", unique("bench")));
    let (registry, _r) = start_registry(&rt, &kafka, &topics.schemas());
    let dir = tempfile::tempdir()?;
    let publisher = bca_publisher(&Catalog::builtin(), &topics, &kafka, &registry, dir.path())?;
    let rounds = rounds.max(1);
    // The raw runs' topics are created with the central one, so that all
    // have the same settings and age when written; each run writes to a
    // fresh topic.
    let raw: Vec<String> = (0..=rounds)
        .map(|i| format!("{}raw{i}", topics.prefix()))
        .collect();
    let specs: Vec<_> = raw
        .iter()
        .map(|t| govbus_kafka_client::TopicSpec::compacted(t, 4))
        .collect();
    govbus_kafka_client::ensure_topics(&kafka, &specs)?;
    let mut sent = 0;
    // Warm-up, untimed: the same load both ways once, so that neither side
    // pays for the broker's JIT, its first transaction (which creates
    // `__transaction_state`) or the central topic's first segment.
    let rows = outbox(&publisher, dir.path(), 0, n)?;
    println!(
        "relay: {n} changes, {} bytes each on average, broker {}; {rounds} rounds after a warm-up",
        rows.iter().map(|r| r.value.len()).sum::<usize>() / n.max(1),
        kafka.bootstrap
    );
    raw_produce(&kafka, &raw[0], &rows)?;
    relay_once(&kafka, &publisher)?;
    sent += n;
    let (mut raws, mut relays) = (Vec::new(), Vec::new());
    for (round, raw_topic) in raw.iter().enumerate().skip(1) {
        let rows = outbox(&publisher, dir.path(), round as u64, n)?;
        // Each side first in turn, so that a broker slowing down as it
        // fills is seen by both.
        let (r, l) = if round % 2 == 1 {
            let r = raw_produce(&kafka, raw_topic, &rows)?;
            (r, relay_once(&kafka, &publisher)?)
        } else {
            let l = relay_once(&kafka, &publisher)?;
            (raw_produce(&kafka, raw_topic, &rows)?, l)
        };
        sent += n;
        let rate = |s: f64| n as f64 / s;
        println!(
            "  round {round}: raw {:>8.0} msg/s ({r:.2} s), relay {:>8.0} msg/s ({l:.2} s): {:.0} %",
            rate(r),
            rate(l),
            100.0 * r / l
        );
        raws.push(r);
        relays.push(l);
    }
    // Every change is on the central topic, once (untimed check).
    let central = publisher
        .topics()
        .into_iter()
        .next()
        .context("a central topic")?;
    let mut ids = std::collections::HashSet::new();
    for m in govbus_e2e::read_all(&kafka, &central) {
        use rdkafka::message::{Headers, Message};
        if let Some(tag) = m
            .headers()
            .and_then(|h| {
                h.iter()
                    .find(|h| h.key == govbus_producer::relay::OUTBOX_HEADER)
            })
            .and_then(|h| h.value)
        {
            ids.insert(tag.to_vec());
        }
    }
    if ids.len() != sent {
        bail!(
            "the relay published {} distinct changes of {sent}",
            ids.len()
        );
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (r, l) = (median(&mut raws), median(&mut relays));
    println!(
        "  median: raw rdkafka produce {:>8.0} msg/s, govbus relay {:>8.0} msg/s: relay / raw {:.0} %",
        n as f64 / r,
        n as f64 / l,
        100.0 * r / l
    );
    Ok(())
}

/// Fills the outbox with `n` changes (DemoWorld seed `seed`, not timed),
/// checkpoints its write-ahead log so that its cost lands on neither side,
/// and returns them as the relay will read them.
fn outbox(
    publisher: &Publisher,
    dir: &std::path::Path,
    seed: u64,
    n: usize,
) -> anyhow::Result<govbus_producer::store::PendingBatch> {
    fill(publisher, seed, n)?;
    rusqlite::Connection::open(dir.join("bca.db"))?.query_row(
        "PRAGMA wal_checkpoint(TRUNCATE)",
        [],
        |_| Ok(()),
    )?;
    Ok(publisher.store().pending(n)?)
}

/// The relay as an agent runs it (read the outbox, produce in
/// transactions, trim it as they commit), timed from after its
/// transactions are initialised and its recovery ran (once per start)
/// until the outbox is empty. The seconds it took.
fn relay_once(
    kafka: &govbus_kafka_client::KafkaConfig,
    publisher: &Publisher,
) -> anyhow::Result<f64> {
    let mut relay = Relay::new(kafka, publisher.store(), publisher.wakeup())?;
    let stop = Arc::new(AtomicBool::new(false));
    relay.initialise(&stop);
    let s = stop.clone();
    let t = Instant::now();
    let handle = std::thread::spawn(move || relay.run(s));
    while !publisher.store().pending(1)?.is_empty() {
        std::thread::sleep(Duration::from_millis(2));
    }
    let secs = t.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = handle.join();
    Ok(secs)
}

/// Produces `rows`' keys and values to `topic` from memory, as fast as
/// librdkafka takes them, with the relay's producer settings: the records
/// (key, value, `govbus.outbox` tag) are prepared before the clock starts,
/// a full queue is waited out by serving delivery reports (no sleep), and
/// the time runs to the last acknowledgement. The seconds it took.
fn raw_produce(
    kafka: &govbus_kafka_client::KafkaConfig,
    topic: &str,
    rows: &govbus_producer::store::PendingBatch,
) -> anyhow::Result<f64> {
    use rdkafka::producer::BaseProducer;
    govbus_kafka_client::ensure_topics(
        kafka,
        &[govbus_kafka_client::TopicSpec::compacted(topic, 4)],
    )?;
    let mut pc = kafka.producer();
    pc.set("partitioner", "murmur2_random");
    kafka.set_default(&mut pc, "linger.ms", "1");
    let raw: BaseProducer<Count> = pc.create_with_context(Count(Default::default()))?;
    // The same bytes as the relay sends: its `govbus.outbox` header too.
    let tags: Vec<String> = rows
        .iter()
        .map(|r| format!("{:016x}:{}", 0x5eed_u64, r.id))
        .collect();
    let t = Instant::now();
    for (i, (r, tag)) in rows.iter().zip(&tags).enumerate() {
        let mut rec = BaseRecord::to(topic).key(r.key).payload(r.value).headers(
            rdkafka::message::OwnedHeaders::new_with_capacity(1).insert(rdkafka::message::Header {
                key: govbus_producer::relay::OUTBOX_HEADER,
                value: Some(tag.as_bytes()),
            }),
        );
        loop {
            match raw.send(rec) {
                Ok(()) => break,
                Err((_, back)) => {
                    rec = back;
                    // Queue full: wait for a delivery report, then go on.
                    raw.poll(Duration::from_millis(10));
                }
            }
        }
        if i % 1024 == 0 {
            raw.poll(Duration::ZERO);
        }
    }
    raw.flush(Duration::from_secs(120))?;
    let secs = t.elapsed().as_secs_f64();
    let delivered = raw.context().0.load(std::sync::atomic::Ordering::Relaxed);
    if delivered != rows.len() {
        bail!("raw produce delivered {delivered} of {}", rows.len());
    }
    Ok(secs)
}

pub(crate) fn table() -> Arc<TableDef> {
    let col = |n: &str, ty| Column {
        name: n.into(),
        path: vec![n.into()],
        ty,
    };
    Arc::new(TableDef {
        name: "bca_residents".into(),
        key: "citizen_id".into(),
        columns: vec![
            col("citizen_id", ColType::Text),
            col("full_name", ColType::Text),
            col("date_of_birth", ColType::Date),
            col("sex", ColType::Text),
            col("permanent_address_province_code", ColType::Text),
            col("permanent_address_commune_code", ColType::Text),
            col("permanent_address_street", ColType::Text),
            col("updated_at", ColType::Timestamp),
        ],
    })
}

/// `n` changes over n/2 residents: creates, then updates.
pub(crate) fn rows(t: &Arc<TableDef>, n: usize) -> Vec<Row> {
    (0..n)
        .map(|i| {
            let id = format!("0520900{:05}", i % (n / 2).max(1));
            let seq = (i / (n / 2).max(1)) as i64 + 1;
            Row {
                table: t.clone(),
                key: id.clone(),
                seq,
                source_ts: 1_764_230_400_000 + i as i64,
                values: Some(vec![
                    SqlValue::Text(id),
                    SqlValue::Text(format!("Nguyễn Văn {i}")),
                    SqlValue::Date("1990-05-01".into()),
                    SqlValue::Text("MALE".into()),
                    SqlValue::Text("52".into()),
                    // Each update moves the resident to another commune.
                    SqlValue::Text(["21553", "21583", "21592", "21589"][i % 4].into()),
                    SqlValue::Text(format!("{} Lê Lợi", i % 400)),
                    SqlValue::Timestamp(1_764_230_400_000 + i as i64),
                ]),
                event_id: format!("e{i}"),
                op: if seq == 1 { Op::Create } else { Op::Update },
                after: None,
                record: Some((Arc::from("sub.p52.bca.residents.v1"), 0, i as i64)),
            }
        })
        .collect()
}

/// The rows `sink` holds of `schema`'s bca_residents, and the schema
/// dropped.
fn held_and_drop(schema: &str) -> anyhow::Result<usize> {
    let mut c = postgres::Client::connect(&pg_url(), postgres::NoTls)?;
    let held: i64 = c
        .query_one(
            &format!("SELECT count(*) FROM \"{schema}\".bca_residents"),
            &[],
        )?
        .get(0);
    c.batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))?;
    Ok(held as usize)
}

/// `rows` through the PostgreSQL sink in batches of `batch`; seconds.
fn through_sink(rows: &[Row], batch: usize, row_by_row: bool) -> anyhow::Result<(f64, usize)> {
    let schema = unique("bench_");
    let mut sink = SqlSink::postgres(&pg_url(), &schema)?;
    sink.set_row_by_row(row_by_row);
    sink.ensure_table(&rows[0].table)?;
    let start = Instant::now();
    for (i, chunk) in rows.chunks(batch).enumerate() {
        sink.apply(chunk, &[("bench".into(), 0, ((i + 1) * batch) as i64)])?;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok((secs, held_and_drop(&schema)?))
}

/// The baseline of a first load: the same rows with a plain `COPY` into
/// a table of the same shape and key, a transaction per batch; seconds.
fn plain_copy(rows: &[Row], batch: usize) -> anyhow::Result<f64> {
    use std::io::Write;
    let schema = unique("bench_");
    let mut c = postgres::Client::connect(&pg_url(), postgres::NoTls)?;
    c.batch_execute(&format!(
        "CREATE SCHEMA \"{schema}\"; CREATE TABLE \"{schema}\".bca_residents (citizen_id TEXT PRIMARY KEY, \
         full_name TEXT, date_of_birth DATE, sex TEXT, permanent_address_province_code TEXT, \
         permanent_address_commune_code TEXT, permanent_address_street TEXT, updated_at TIMESTAMPTZ, \
         _govbus_seq BIGINT NOT NULL, _govbus_source_ts BIGINT NOT NULL)"
    ))?;
    let start = Instant::now();
    for chunk in rows.chunks(batch) {
        let mut text = String::new();
        for r in chunk {
            for v in r.values.iter().flatten() {
                match v {
                    SqlValue::Text(s) | SqlValue::Date(s) => text.push_str(s),
                    SqlValue::Timestamp(ms) => text.push_str(
                        &chrono::DateTime::from_timestamp_millis(*ms)
                            .context("timestamp")?
                            .format("%Y-%m-%d %H:%M:%S%.3f+00")
                            .to_string(),
                    ),
                    other => bail!("not in the bench's rows: {other:?}"),
                }
                text.push('\t');
            }
            text.push_str(&format!("{}\t{}\n", r.seq, r.source_ts));
        }
        let mut tx = c.transaction()?;
        let mut w = tx.copy_in(&format!("COPY \"{schema}\".bca_residents FROM STDIN"))?;
        w.write_all(text.as_bytes())?;
        w.finish()?;
        tx.commit()?;
    }
    let secs = start.elapsed().as_secs_f64();
    if held_and_drop(&schema)? != rows.len() {
        bail!("plain COPY did not load every row");
    }
    Ok(secs)
}

fn sink(n: usize, batch: usize, row_by_row: bool) -> anyhow::Result<()> {
    let t = table();
    println!("PostgreSQL sink, batches of {batch}, {}", pg_url());
    // A first load: every row new (the creates of `rows(2n)`).
    let first: Vec<Row> = rows(&t, 2 * n).into_iter().take(n).collect();
    let (sink_s, held) = through_sink(&first, batch, false)?;
    if held != n {
        bail!("expected {n} rows, found {held}");
    }
    let copy_s = plain_copy(&first, batch)?;
    println!(
        "  first load, {n} new rows, the sink : {:>9.0} rows/s ({sink_s:.2} s), {:.0} % of plain COPY",
        n as f64 / sink_s,
        100.0 * copy_s / sink_s
    );
    println!(
        "  first load, plain COPY (baseline)  : {:>9.0} rows/s ({copy_s:.2} s)",
        n as f64 / copy_s
    );
    let data = rows(&t, n);
    let mut modes = vec![false];
    if row_by_row {
        modes.push(true);
    }
    for rbr in modes {
        let (secs, held) = through_sink(&data, batch, rbr)?;
        if held != n / 2 {
            bail!("expected {} rows, found {held}", n / 2);
        }
        let name = if rbr { "row by row" } else { "batched" };
        println!(
            "  {n} changes ({} creates, then an update of each), {name:<10}: {:>9.0} rows/s ({secs:.2} s)",
            n / 2,
            n as f64 / secs
        );
    }
    Ok(())
}

fn ingest(seconds: u32, connections: u32) -> anyhow::Result<()> {
    let wrk = std::process::Command::new("wrk").arg("--version").output();
    if wrk.is_err() {
        bail!("wrk is not installed (Debian: apt-get install wrk)");
    }
    let broker = Broker::start();
    let kafka = broker.kafka();
    let rt = runtime();
    let topics = Topics::new(format!("{}.", unique("bench")));
    let (registry, _r) = start_registry(&rt, &kafka, &topics.schemas());
    let dir = tempfile::tempdir()?;
    let publisher = Arc::new(bca_publisher(
        &Catalog::builtin(),
        &topics,
        &kafka,
        &registry,
        dir.path(),
    )?);
    let relay = Relay::new(&kafka, publisher.store(), publisher.wakeup())?;
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let relay = std::thread::spawn(move || relay.run(s));
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let base = format!(
        "http://{}/v1/datasets/bca.residents/changes",
        listener.local_addr()?
    );
    rt.spawn(govbus_producer::http::serve(listener, publisher.clone()));

    let resident = r#"{"citizen_id": ID, "full_name": "Nguyễn Văn An", "date_of_birth": "1990-05-01", "sex": "MALE", "ethnicity": "Kinh", "permanent_address": {"province_code": "52", "commune_code": "21553", "street": null}, "updated_at": 1764230400000}"#;
    let single = format!(
        "counter = 0\nrequest = function()\n  counter = counter + 1\n  local id = string.format('\"052%09d\"', counter)\n  local body = '{{\"op\": \"upsert\", \"data\": ' .. string.gsub('{}', 'ID', id) .. '}}'\n  return wrk.format('POST', nil, {{['Content-Type'] = 'application/json'}}, body)\nend\n",
        resident.replace('\'', "\\'")
    );
    let batch = format!(
        "counter = 0\nrequest = function()\n  local items = {{}}\n  for i = 1, 100 do\n    counter = counter + 1\n    local id = string.format('\"094%09d\"', counter)\n    items[i] = '{{\"op\": \"upsert\", \"data\": ' .. string.gsub('{}', 'ID', id) .. '}}'\n  end\n  local body = '{{\"changes\": [' .. table.concat(items, ',') .. ']}}'\n  return wrk.format('POST', nil, {{['Content-Type'] = 'application/json'}}, body)\nend\n",
        resident.replace('\'', "\\'")
    );
    println!("HTTP ingest: wrk -t2 -c{connections} -d{seconds}s --latency, keep-alive, SQLite store (synchronous=FULL), relay running");
    for (name, script, url, per) in [
        ("single", single, base.clone(), 1),
        ("batch of 100", batch, format!("{base}/batch"), 100),
    ] {
        let path = dir.path().join(format!("{}.lua", name.replace(' ', "_")));
        std::fs::write(&path, script)?;
        let out = std::process::Command::new("wrk")
            .args([
                "-t2",
                &format!("-c{connections}"),
                &format!("-d{seconds}s"),
                "--latency",
                "-s",
            ])
            .arg(&path)
            .arg(&url)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let rps = text
            .lines()
            .find(|l| l.starts_with("Requests/sec"))
            .unwrap_or("Requests/sec: ?")
            .to_string();
        let p50 = text
            .lines()
            .find(|l| l.trim_start().starts_with("50%"))
            .unwrap_or("")
            .trim()
            .to_string();
        let p99 = text
            .lines()
            .find(|l| l.trim_start().starts_with("99%"))
            .unwrap_or("")
            .trim()
            .to_string();
        let non2xx = text
            .lines()
            .find(|l| l.contains("Non-2xx"))
            .unwrap_or("")
            .trim()
            .to_string();
        let reqs: f64 = rps
            .split(':')
            .nth(1)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0);
        println!(
            "  {name:<13}: {rps} ({:.0} changes/s) | latency {p50} {p99} {non2xx}",
            reqs * per as f64
        );
        if !non2xx.is_empty() {
            println!("{text}");
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = relay.join();
    Ok(())
}
