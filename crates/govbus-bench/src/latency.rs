//! End-to-end latency at a steady rate — HTTP ingest (batch endpoint) →
//! SQLite outbox → relay → router (its own `govbus route` process) → p52's
//! PostgreSQL row — and the router process's resident memory and CPU.
//!
//! Every change creates a new resident of province 52, so each one is one
//! INSERT in p52's table; the table gets a column `applied_at DEFAULT
//! clock_timestamp()`, and a change's latency is `applied_at` − the moment
//! its request was sent (same machine, same clock).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use govbus_core::{Catalog, Topics};
use govbus_e2e::{consumer_config, pg_url, runtime, start_registry, unique, Broker};
use govbus_producer::Relay;

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1e3)
        .unwrap_or(0.0)
}

/// (resident KiB, CPU seconds) of process `pid`.
fn proc_stats(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (rss, (ticks(11) + ticks(12)) / 100.0)
}

/// The router process, killed however the bench ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub(crate) fn run(
    rate: usize,
    seconds: u64,
    per_request: usize,
    fetch_wait_ms: Option<u32>,
    broker_pid: Option<u32>,
) -> anyhow::Result<()> {
    let govbus = std::env::current_exe()?
        .parent()
        .context("bench directory")?
        .join("govbus");
    if !govbus.exists() {
        bail!(
            "{} is missing: cargo build --release -p govbus first",
            govbus.display()
        );
    }
    // A node of its own (not the shared one): its CPU is reported.
    let mut broker = Broker::own(1);
    let kafka = broker.kafka();
    let rt = runtime();
    let prefix = format!("{}.", unique("lat"));
    let topics = Topics::new(&prefix);
    let (registry, _r) = start_registry(&rt, &kafka, &topics.schemas());
    let catalog = Arc::new(Catalog::builtin());
    let dir = tempfile::tempdir()?;
    let publisher = Arc::new(crate::bca_publisher(
        &catalog,
        &topics,
        &kafka,
        &registry,
        dir.path(),
    )?);
    let stop = Arc::new(AtomicBool::new(false));
    let relay = Relay::new(&kafka, publisher.store(), publisher.wakeup())?;
    let s = stop.clone();
    let _relay = std::thread::spawn(move || relay.run(s));
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let url = format!(
        "http://{}/v1/datasets/bca.residents/changes/batch",
        listener.local_addr()?
    );
    rt.spawn(govbus_producer::http::serve(listener, publisher.clone()));

    // The router: its own process, as an operator runs it.
    govbus_router::control::apply(&kafka, &topics, &catalog, false, false)?;
    let cfg = dir.path().join("router.toml");
    std::fs::write(
        &cfg,
        format!(
            "[router]\nregistry = \"{registry}\"\ngroup = \"{}\"\ntopic_prefix = \"{prefix}\"\n\n[router.kafka]\nbootstrap = \"{}\"\n{}",
            unique("router-"),
            kafka.bootstrap,
            fetch_wait_ms.map_or(String::new(), |ms| format!("fetch_wait_ms = {ms}\n"))
        ),
    )?;
    let router = KillOnDrop(
        std::process::Command::new(&govbus)
            .args(["route", "--config"])
            .arg(&cfg)
            // GOVBUS_BENCH_ROUTER_LOG=govbus_router::router=trace shows
            // each batch's poll/route/commit times.
            .env(
                "RUST_LOG",
                std::env::var("GOVBUS_BENCH_ROUTER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .spawn()?,
    );
    let pid = router.0.id();

    // p52 into PostgreSQL.
    let schema = unique("lat_p52_");
    let mut c = consumer_config(&kafka, &registry, &prefix, "p52", &pg_url(), &schema);
    if let Some(ms) = fetch_wait_ms {
        c.kafka.fetch_wait_ms = ms;
    }
    let (s, cat) = (stop.clone(), catalog.clone());
    let p52 = std::thread::spawn(move || govbus_consumer::run(&c, &cat, s));
    let mut pg = postgres::Client::connect(&pg_url(), postgres::NoTls)?;
    let table = format!("\"{schema}\".bca_residents");
    let resident = |n: usize| {
        serde_json::json!({"op": "upsert", "data": {
            "citizen_id": format!("052{n:09}"), "full_name": "Nguyễn Văn An",
            "date_of_birth": "1990-05-01", "sex": "MALE", "ethnicity": "Kinh",
            "permanent_address": {"province_code": "52", "commune_code": "21553", "street": null},
            "updated_at": 1764230400000i64}})
    };
    let agent = ureq::AgentBuilder::new().build();
    let post = |from: usize, n: usize| -> anyhow::Result<f64> {
        let body =
            serde_json::json!({"changes": (from..from + n).map(resident).collect::<Vec<_>>()});
        let sent = now_ms();
        let res = agent.post(&url).send_json(body)?;
        if res.status() != 202 && res.status() != 200 {
            bail!("ingest answered {}", res.status());
        }
        Ok(sent)
    };

    // Warm up until the router routes (its group join), then run at `rate`.
    let mut next = 0usize;
    let warm = Instant::now();
    loop {
        post(next, 1)?;
        next += 1;
        // The table appears with the first change.
        let n: i64 = pg
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .map(|r| r.get(0))
            .unwrap_or(0);
        if n > 0 {
            break;
        }
        if warm.elapsed() > Duration::from_secs(90) {
            bail!("nothing reached p52");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    pg.batch_execute(&format!(
        "ALTER TABLE {table} ADD COLUMN applied_at timestamptz DEFAULT clock_timestamp()"
    ))?;
    println!(
        "latency: {rate} changes/s for {seconds} s, {per_request} per request to {url}; router pid {pid}"
    );
    let first = next;
    let (rss0, cpu0) = proc_stats(pid);
    let mut rss_samples = vec![rss0];
    let start = Instant::now();
    let start_ms = now_ms();
    // (seconds into the run, the broker's CPU seconds so far).
    let mut broker_cpu: Vec<(f64, f64)> = Vec::new();
    // Several senders, each at rate / SENDERS: a request waits for the
    // store's fsync, so one sender alone cannot offer 5,000 changes/s.
    const SENDERS: usize = 4;
    let per_sender = (seconds as f64 * rate as f64 / SENDERS as f64 / per_request as f64) as usize;
    let interval = Duration::from_secs_f64((per_request * SENDERS) as f64 / rate as f64);
    let sent: Vec<(usize, f64)> = std::thread::scope(|scope| -> anyhow::Result<_> {
        let handles: Vec<_> = (0..SENDERS)
            .map(|k| {
                let post = &post;
                scope.spawn(move || -> anyhow::Result<Vec<(usize, f64)>> {
                    let mut out = Vec::new();
                    let mut tick = Instant::now() + interval.mul_f64(k as f64 / SENDERS as f64);
                    for i in 0..per_sender {
                        if let Some(d) = tick.checked_duration_since(Instant::now()) {
                            std::thread::sleep(d);
                        }
                        let from = first + (i * SENDERS + k) * per_request;
                        out.push((from, post(from, per_request)?));
                        tick += interval;
                    }
                    Ok(out)
                })
            })
            .collect();
        while handles.iter().any(|h| !h.is_finished()) {
            rss_samples.push(proc_stats(pid).0);
            if let Some(b) = broker.pid().or(broker_pid) {
                broker_cpu.push((start.elapsed().as_secs_f64(), proc_stats(b).1));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let mut all = Vec::new();
        for h in handles {
            all.extend(
                h.join()
                    .map_err(|_| anyhow::anyhow!("a sender panicked"))??,
            );
        }
        Ok(all)
    })?;
    next = first + per_sender * SENDERS * per_request;
    let offered = (next - first) as f64 / start.elapsed().as_secs_f64();
    let total = next - first;
    let t = Instant::now();
    loop {
        let n: i64 = pg
            .query_one(
                &format!("SELECT count(*) FROM {table} WHERE citizen_id >= $1"),
                &[&format!("052{first:09}")],
            )?
            .get(0);
        if n as usize >= total {
            break;
        }
        if t.elapsed() > Duration::from_secs(120) {
            bail!("only {n} of {total} changes reached p52");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (rss1, cpu1) = proc_stats(pid);
    rss_samples.push(rss1);
    let applied: std::collections::HashMap<String, f64> = pg
        .query(
            &format!(
                "SELECT citizen_id, (extract(epoch from applied_at) * 1000)::float8 FROM {table} WHERE citizen_id >= $1"
            ),
            &[&format!("052{first:09}")],
        )?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut lat: Vec<f64> = Vec::with_capacity(total);
    // The same per 5 s of the run (by send time): a run's latency need not
    // be stationary (a broker whose fetches slow down as its partitions
    // fill, docs/BROKERS.md, shows it here).
    const WINDOW_S: f64 = 5.0;
    let mut windows: Vec<Vec<f64>> = Vec::new();
    for (from, at) in &sent {
        for n in *from..*from + per_request {
            if let Some(done) = applied.get(&format!("052{n:09}")) {
                lat.push(done - at);
                let w = (((at - start_ms) / 1e3 / WINDOW_S).max(0.0)) as usize;
                if windows.len() <= w {
                    windows.resize(w + 1, Vec::new());
                }
                windows[w].push(done - at);
            }
        }
    }
    lat.sort_by(f64::total_cmp);
    // Per hop, from the records' own timestamps (CreateTime: when the relay
    // and the router produced them).
    let stamps = |topic: &str| -> anyhow::Result<std::collections::HashMap<Vec<u8>, f64>> {
        let probe: rdkafka::consumer::BaseConsumer = kafka.consumer(&unique("probe-")).create()?;
        let bounds: Vec<(i32, Option<i64>)> = govbus_kafka_client::partitions_of(&probe, topic)?
            .into_iter()
            .map(|p| (p, None))
            .collect();
        let mut out = std::collections::HashMap::new();
        govbus_kafka_client::read_partitions(
            &kafka,
            topic,
            &bounds,
            Duration::from_secs(60),
            |m| {
                use rdkafka::Message;
                if let (Some(k), Some(ts)) = (m.key(), m.timestamp().to_millis()) {
                    out.insert(k.to_vec(), ts as f64);
                }
            },
        )?;
        Ok(out)
    };
    let central = stamps(&topics.central(&govbus_core::DatasetId::new("bca", "residents"), 1))?;
    let view = stamps(&topics.view("p52", &govbus_core::DatasetId::new("bca", "residents"), 1))?;
    let (mut hop1, mut hop2, mut hop3) = (Vec::new(), Vec::new(), Vec::new());
    for (from, at) in &sent {
        for n in *from..*from + per_request {
            let key = format!("052{n:09}");
            let (Some(c), Some(v), Some(a)) = (
                central.get(key.as_bytes()),
                view.get(key.as_bytes()),
                applied.get(&key),
            ) else {
                continue;
            };
            hop1.push(c - at);
            hop2.push(v - c);
            hop3.push(a - v);
        }
    }
    for h in [&mut hop1, &mut hop2, &mut hop3] {
        h.sort_by(f64::total_cmp);
    }
    stop.store(true, Ordering::Relaxed);
    drop(router);
    // Leave no 100,000-row table behind: autovacuum working through the
    // tables of earlier runs disturbed the next run's PostgreSQL.
    match p52.join() {
        Ok(Ok(())) => pg.batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))?,
        // Its schema is kept for a look at what it applied.
        Ok(Err(e)) => eprintln!("p52's consumer failed: {e:#} (schema {schema} kept)"),
        Err(_) => eprintln!("p52's consumer panicked (schema {schema} kept)"),
    }
    println!(
        "  offered          : {offered:.0} changes/s ({total} changes, {} requests)",
        sent.len()
    );
    println!(
        "  HTTP → p52 row   : p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} changes)",
        percentile(&lat, 0.50),
        percentile(&lat, 0.90),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN),
        lat.len()
    );
    for (name, h) in [
        ("request → relayed", &hop1),
        ("relayed → routed", &hop2),
        ("routed → row", &hop3),
    ] {
        println!(
            "    {name:<18}: p50 {:.1} ms, p99 {:.1} ms",
            percentile(h, 0.50),
            percentile(h, 0.99)
        );
    }
    for (i, w) in windows.iter_mut().enumerate() {
        w.sort_by(f64::total_cmp);
        let (t0, t1) = (i as f64 * WINDOW_S, (i + 1) as f64 * WINDOW_S);
        // The broker's share of a core over the window.
        let at = |t: f64| broker_cpu.iter().find(|(s, _)| *s >= t).copied();
        let busy = match (at(t0), at(t1).or(broker_cpu.last().copied())) {
            (Some((s0, c0)), Some((s1, c1))) if s1 > s0 => {
                format!("; broker {:.0} % of a core", (c1 - c0) / (s1 - s0) * 100.0)
            }
            _ => String::new(),
        };
        println!(
            "    {:>3}–{:<3} s      : p50 {:.1} ms, p99 {:.1} ms ({} changes){busy}",
            t0,
            t1,
            percentile(w, 0.50),
            percentile(w, 0.99),
            w.len()
        );
    }
    let max_rss = rss_samples.iter().max().copied().unwrap_or(0);
    println!(
        "  router process   : RSS {:.1} MB at the start, {:.1} MB max, {:.1} MB at the end; CPU {:.1} µs per change ({:.2} s)",
        rss0 as f64 / 1024.0,
        max_rss as f64 / 1024.0,
        rss1 as f64 / 1024.0,
        (cpu1 - cpu0) * 1e6 / total as f64,
        cpu1 - cpu0
    );
    Ok(())
}
