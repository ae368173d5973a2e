//! Router throughput against a raw pass-through on the same broker: 34
//! provincial subscriptions to bca.residents, exactly once (transactions),
//! against an rdkafka consume → produce loop that does not decode.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use govbus_core::catalog::parse_subscription;
use govbus_core::{Catalog, Topics};
use govbus_e2e::{router_config, runtime, start_registry, unique};
use govbus_kafka_client::{ensure_topics, TopicSpec};
use govbus_producer::demo::PROVINCES;
use govbus_producer::Relay;
use govbus_router::Router;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{Message, Offset, TopicPartitionList};

/// Process CPU time (user + system), from /proc/self/stat, in seconds.
pub(crate) fn cpu_seconds() -> f64 {
    cpu_seconds_of("self")
}

/// CPU time (user + system) of the process `pid` (`self` for this one),
/// from /proc, in seconds.
pub(crate) fn cpu_seconds_of(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which ends with ')').
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    (ticks(11) + ticks(12)) / 100.0
}

/// The router's default batch (its config's default).
fn default_batch() -> usize {
    let d: govbus_router::RouterConfig = serde_json::from_value(serde_json::json!({
        "kafka": {"bootstrap": ""}, "registry": ""
    }))
    .expect("defaults");
    d.batch
}

/// The subscriptions: with `hierarchy`, per province of today's map one by
/// `in_unit(commune, province)` dropping ethnicity, then (when `total` is
/// above 34) its communes' offices by `in_unit(commune, "<commune>")`,
/// dropping ethnicity and the date of birth, cycling over the province's
/// communes of today until it has `total / 34`; otherwise the five demo
/// provinces and 29 other codes by `province_code == code`.
pub(crate) fn catalog(hierarchy: bool, total: usize) -> anyhow::Result<Catalog> {
    let mut c = Catalog::builtin();
    if !total.is_multiple_of(34) || total == 0 {
        bail!("--subscribers {total}: a multiple of 34 (each province as many)");
    }
    let map = govbus_core::admin_map::reference();
    let today = govbus_core::admin_map::day_of_ms(govbus_core::now_ms());
    let current = |level: govbus_core::admin_map::Level| {
        map.iter()
            .filter(move |(_, vs)| vs.iter().any(|v| v.valid_on(today) && v.level == level))
            .map(|(c, _)| c.to_string())
    };
    let codes: Vec<String> = if hierarchy {
        current(govbus_core::admin_map::Level::Province).collect()
    } else {
        let mut codes: Vec<String> = PROVINCES.iter().map(|(p, _)| p.to_string()).collect();
        let mut n = 1;
        while codes.len() < 34 {
            let code = format!("{n:02}");
            if !codes.contains(&code) {
                codes.push(code);
            }
            n += 1;
        }
        codes
    };
    if codes.len() != 34 {
        bail!("{} provinces, not 34", codes.len());
    }
    // Today's communes of each province.
    let hier = govbus_core::admin_map::Hierarchy::new(map, today);
    let mut communes: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for code in current(govbus_core::admin_map::Level::Commune) {
        if let Some(p) = hier.place(&code, today).and_then(|p| p.province.clone()) {
            communes.entry(p).or_default().push(code);
        }
    }
    let subscription = |who: &str, filter: &str, drop: &str| {
        parse_subscription(
            &format!("{who}.toml"),
            &format!(
                "subscriber = \"{who}\"\ndataset = \"bca.residents\"\nfilter = '{filter}'\ndrop = [{drop}]\nlegal_basis = \"bench\"\nlegal_reference = \"bench\"\n"
            ),
        )
    };
    let mut subs = Vec::with_capacity(total);
    for code in &codes {
        let filter = if hierarchy {
            format!("in_unit(permanent_address.commune_code, \"{code}\")")
        } else {
            format!("permanent_address.province_code == \"{code}\"")
        };
        subs.push(subscription(&format!("p{code}"), &filter, "\"ethnicity\"")?);
        let of_province = communes.get(code).map(Vec::as_slice).unwrap_or_default();
        for k in 1..total / 34 {
            let commune = of_province
                .get((k - 1) % of_province.len().max(1))
                .with_context(|| format!("no commune of {code} today"))?;
            subs.push(subscription(
                &format!("p{code}_c{commune}_{k}"),
                &format!("in_unit(permanent_address.commune_code, \"{commune}\")"),
                "\"ethnicity\", \"date_of_birth\"",
            )?);
        }
    }
    c.subscriptions = subs;
    Ok(c)
}

pub(crate) fn run(
    n: usize,
    batch: Option<usize>,
    hierarchy: bool,
    secure: bool,
    subscribers: usize,
) -> anyhow::Result<()> {
    let (_broker, kafka) = crate::broker(secure)?;
    let rt = runtime();
    let prefix = format!("{}.", unique("bench"));
    let topics = Topics::new(&prefix);
    let (registry, _r) = start_registry(&rt, &kafka, &topics.schemas());
    let catalog = Arc::new(catalog(hierarchy, subscribers)?);
    let dir = tempfile::tempdir()?;
    if hierarchy {
        // The whole real map, as `govbus admin-units load` publishes it.
        let units = govbus_producer::demo::seed_units(
            &catalog,
            &topics,
            &kafka,
            &govbus_schema::RegistryClient::new(&registry),
            dir.path().join("moha-map.db").to_str().context("path")?,
            govbus_core::admin_map::reference().rows().collect(),
        )?;
        println!("route: the administrative map loaded ({units} units)");
    }
    let publisher = crate::bca_publisher(&catalog, &topics, &kafka, &registry, dir.path())?;
    let central = publisher
        .topics()
        .into_iter()
        .find(|t| t.contains("residents"))
        .context("residents topic")?;

    // Fill the central topic (not measured).
    crate::fill(&publisher, 3, n)?;
    let avg = publisher
        .store()
        .pending(1000)?
        .iter()
        .map(|r| r.value.len())
        .sum::<usize>()
        / 1000;
    let relay = Relay::new(&kafka, publisher.store(), publisher.wakeup())?;
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let h = std::thread::spawn(move || relay.run(s));
    while publisher.store().backlog()? > 0 {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = h.join();
    println!(
        "route: {n} changes of {avg} bytes on average, {} subscriptions ({}), broker {}",
        catalog.subscriptions.len(),
        if hierarchy {
            "in_unit over the administrative map"
        } else {
            "province code equality"
        },
        kafka.bootstrap
    );

    // Raw pass-through: consume every record, produce it unchanged.
    let out = format!("{prefix}raw-out");
    ensure_topics(&kafka, &[TopicSpec::compacted(&out, 4)])?;
    // The raw pipe does what the router's transactions do, without
    // decoding: batches of the router's size, each in one transaction with
    // its input offsets.
    let raw_batch = batch.unwrap_or_else(default_batch);
    let consumer: BaseConsumer = kafka.consumer(&unique("raw-")).create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..4 {
        tpl.add_partition_offset(&central, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut pc = kafka.producer();
    pc.set("transactional.id", unique("raw-pipe-"))
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5");
    let producer: ThreadedProducer<rdkafka::producer::DefaultProducerContext> = pc.create()?;
    producer.init_transactions(Duration::from_secs(30))?;
    let meta = consumer
        .group_metadata()
        .context("the raw pipe's group metadata")?;
    let cpu = cpu_seconds();
    let t = Instant::now();
    let mut seen = 0;
    // Steady state: from the first record on (the assignment's first
    // offset lookup and fetch are start-up, as the router's are).
    let mut first: Option<(Instant, f64)> = None;
    let mut records = Vec::with_capacity(raw_batch);
    while seen < n {
        if t.elapsed() > Duration::from_secs(300) {
            bail!("raw pass-through read {seen} of {n}");
        }
        govbus_kafka_client::poll_batch(
            &consumer,
            &mut records,
            raw_batch,
            Duration::from_millis(100),
        );
        if records.is_empty() {
            continue;
        }
        if first.is_none() {
            first = Some((Instant::now(), cpu_seconds()));
        }
        producer.begin_transaction()?;
        let mut next: std::collections::BTreeMap<i32, i64> = std::collections::BTreeMap::new();
        for m in &records {
            let mut rec = BaseRecord::to(&out).payload(m.payload().unwrap_or_default());
            if let Some(k) = m.key() {
                rec = rec.key(k);
            }
            loop {
                match producer.send(rec) {
                    Ok(()) => break,
                    Err((_, back)) => {
                        rec = back;
                        std::thread::yield_now();
                    }
                }
            }
            next.insert(m.partition(), m.offset() + 1);
        }
        let mut offsets = TopicPartitionList::new();
        for (p, o) in &next {
            offsets.add_partition_offset(&central, *p, Offset::Offset(*o))?;
        }
        producer.send_offsets_to_transaction(&offsets, &meta, Duration::from_secs(30))?;
        producer.commit_transaction(Duration::from_secs(60))?;
        seen += records.len();
        records.clear();
    }
    let (raw_s, raw_cpu) = (t.elapsed().as_secs_f64(), cpu_seconds() - cpu);
    let raw_steady = first.filter(|_| n > 1).map(|(t1, c1)| Steady {
        changes: n - 1,
        secs: t1.elapsed().as_secs_f64(),
        cpu: cpu_seconds() - c1,
    });
    drop(consumer);

    // The router: read_committed, decode, 34 filters, project, encode, and
    // every batch in one transaction with its input offsets.
    let mut cfg = router_config(&kafka, &registry, &prefix);
    cfg.batch = raw_batch;
    let group = cfg.group.clone();
    let batch_used = cfg.batch;
    govbus_router::control::apply(
        &cfg.kafka,
        &govbus_core::Topics::new(&prefix),
        &catalog,
        false,
        false,
    )?;
    // Done when the group's committed offsets cover every record.
    let watcher: BaseConsumer = kafka.consumer(&group).create()?;
    let mut parts = TopicPartitionList::new();
    for p in 0..4 {
        parts.add_partition(&central, p);
    }
    let mut ends = 0i64;
    for p in 0..4 {
        // The central topic's records are all committed by the relay (no
        // transactions), so the last offset read by the raw loop is the end.
        ends += kafka_end(&kafka, &central, p)?;
    }
    let router = Router::new(cfg, &catalog)?;
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let held = router.assignment();
    // Named, so that a profile (perf record) tells its samples apart.
    let h = std::thread::Builder::new()
        .name("router".into())
        .spawn(move || router.run(s))?;
    // Timed from the moment the router holds its partitions (joining the
    // group is a one-time cost, not throughput).
    let joined = Instant::now();
    while held.lock().map(|h| h.len()).unwrap_or(0) < 4 {
        if joined.elapsed() > Duration::from_secs(60) {
            bail!("the router did not get its partitions");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let cpu = cpu_seconds();
    let t = Instant::now();
    // Steady state: from the first committed transaction on (before it the
    // router reads its view state and brings its 34 views in step, a cost
    // per session, not per change).
    let mut first: Option<(i64, Instant, f64)> = None;
    loop {
        if t.elapsed() > Duration::from_secs(600) {
            bail!("the router did not finish");
        }
        let committed = watcher.committed_offsets(parts.clone(), Duration::from_secs(5))?;
        let sum: i64 = committed
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            })
            .sum();
        if first.is_none() && sum > 0 {
            first = Some((sum, Instant::now(), cpu_seconds()));
        }
        if sum >= ends {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (route_s, route_cpu) = (t.elapsed().as_secs_f64(), cpu_seconds() - cpu);
    // None when the first commit already covered everything (a batch as
    // large as the run): there is no steady state to report.
    let route_steady = first
        .and_then(|(done, t1, c1)| {
            let changes = usize::try_from(ends - done).ok().filter(|&c| c > 0)?;
            Some((changes, t1, c1))
        })
        .map(|(changes, t1, c1)| Steady {
            changes,
            secs: t1.elapsed().as_secs_f64(),
            cpu: cpu_seconds() - c1,
        });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = h.join();
    let rate = |s: f64| n as f64 / s;
    println!(
        "  raw pass-through : {:>9.0} changes/s ({raw_s:.2} s, {:.2} µs CPU per change)",
        rate(raw_s),
        raw_cpu * 1e6 / n as f64
    );
    println!(
        "  govbus router    : {:>9.0} changes/s ({route_s:.2} s, {:.2} µs CPU per change, whole process)",
        rate(route_s),
        route_cpu * 1e6 / n as f64
    );
    println!("  router / raw     : {:>9.0} %", 100.0 * raw_s / route_s);
    if let (Some(raw), Some(route)) = (raw_steady, route_steady) {
        println!("  steady state (raw from its first record, router from its first commit):");
        println!("    raw pass-through : {}", raw.line());
        println!("    govbus router    : {}", route.line());
        println!(
            "    router / raw     : {:>9.0} %",
            100.0 * route.rate() / raw.rate()
        );
    }
    println!(
        "  (router: batches of up to {} changes per transaction)",
        batch_used
    );
    Ok(())
}

/// A phase measured from its first record or commit to its end (never
/// built with zero changes).
#[derive(Clone, Copy)]
struct Steady {
    changes: usize,
    secs: f64,
    cpu: f64,
}

impl Steady {
    fn rate(&self) -> f64 {
        self.changes as f64 / self.secs
    }

    fn line(&self) -> String {
        format!(
            "{:>9.0} changes/s ({} changes in {:.2} s, {:.2} µs CPU per change)",
            self.rate(),
            self.changes,
            self.secs,
            self.cpu * 1e6 / self.changes as f64
        )
    }
}

/// The offset after the last record of a partition: its high watermark.
fn kafka_end(kafka: &govbus_kafka_client::KafkaConfig, topic: &str, p: i32) -> anyhow::Result<i64> {
    let c: BaseConsumer = kafka.consumer(&unique("end-")).create()?;
    Ok(c.fetch_watermarks(topic, p, Duration::from_secs(10))?.1)
}
