//! Backfill: a new subscription over N residents already on the central
//! topic (the router has committed past them), timed to its view topic
//! with no province reading it, then (a second subscription) to the
//! province's PostgreSQL table as the province applies it. The baselines
//! are the same N records read from the central topic by a plain
//! read_committed consumer, and the same rows written with a plain COPY.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use govbus_core::catalog::parse_subscription;
use govbus_core::{Catalog, Topics};
use govbus_e2e::{consumer_config, pg_url, router_config, runtime, start_registry, unique, Broker};
use govbus_producer::demo::DemoWorld;
use govbus_producer::{ChangeRequest, Relay};
use govbus_router::Router;
use rdkafka::consumer::Consumer;

fn subscription(name: &str, filter: &str) -> anyhow::Result<govbus_core::SubscriptionSpec> {
    Ok(parse_subscription(
        &format!("{name}.toml"),
        &format!(
            "subscriber = \"{name}\"\ndataset = \"bca.residents\"\nfilter = '{filter}'\ndrop = [\"ethnicity\"]\nlegal_basis = \"bench\"\nlegal_reference = \"bench\"\n"
        ),
    )?)
}

/// Records on `topic` (read_committed) counted as they arrive, until
/// `want`; the seconds from `t` when the last arrived.
fn count_until(
    kafka: &govbus_kafka_client::KafkaConfig,
    topic: &str,
    want: usize,
    t: Instant,
    limit: Duration,
) -> anyhow::Result<f64> {
    let mut n = 0usize;
    let mut last = t;
    let c: rdkafka::consumer::BaseConsumer = kafka.consumer(&unique("count-")).create()?;
    let parts = loop {
        let parts = govbus_kafka_client::partitions_of(&c, topic)?;
        if !parts.is_empty() {
            break parts;
        }
        if t.elapsed() > limit {
            bail!("{topic} does not exist after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in parts {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    while n < want {
        if t.elapsed() > limit {
            bail!("{topic}: {n} of {want} records after {limit:?}");
        }
        if let Some(Ok(_)) = c.poll(Duration::from_millis(100)) {
            n += 1;
            last = Instant::now();
        }
    }
    Ok(last.duration_since(t).as_secs_f64())
}

/// `govbus reconcile` over the backfilled table: once as it is, once with
/// three differences (a row deleted, a value changed, a stranger added).
fn reconcile(
    kafka: &govbus_kafka_client::KafkaConfig,
    registry: &str,
    prefix: &str,
    schema: &str,
    pg: &mut postgres::Client,
    residents: usize,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?.with_file_name("govbus");
    if !exe.exists() {
        println!(
            "  reconcile: skipped ({} missing: cargo build --release -p govbus)",
            exe.display()
        );
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("pall.toml");
    std::fs::write(
        &cfg,
        format!(
            "[consumer]\nsubscriber = \"pall\"\nregistry = \"{registry}\"\ntopic_prefix = \"{prefix}\"\n\
             [consumer.sink]\ntype = \"postgres\"\nurl = \"{}\"\nschema = \"{schema}\"\n\
             [consumer.kafka]\nbootstrap = \"{}\"\n",
            pg_url(),
            kafka.bootstrap
        ),
    )?;
    let run = || -> anyhow::Result<(f64, bool, String)> {
        let t = Instant::now();
        let out = std::process::Command::new(&exe)
            .args(["reconcile", "-c"])
            .arg(&cfg)
            .args(["--dataset", "bca.residents", "--settle", "0"])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        Ok((t.elapsed().as_secs_f64(), out.status.success(), text))
    };
    let (clean_s, ok, out) = run()?;
    if !ok {
        bail!("reconcile found differences in a table just backfilled:\n{out}");
    }
    let keys: Vec<String> = pg
        .query(
            &format!(
                "SELECT citizen_id FROM \"{schema}\".bca_residents ORDER BY citizen_id LIMIT 3"
            ),
            &[],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    pg.batch_execute(&format!(
        "DELETE FROM \"{schema}\".bca_residents WHERE citizen_id = '{}';
         UPDATE \"{schema}\".bca_residents SET full_name = 'X' WHERE citizen_id = '{}';
         CREATE TEMP TABLE x AS SELECT * FROM \"{schema}\".bca_residents WHERE citizen_id = '{}';
         UPDATE x SET citizen_id = '099999999999';
         INSERT INTO \"{schema}\".bca_residents SELECT * FROM x; DROP TABLE x;",
        keys[0], keys[1], keys[2]
    ))?;
    let (diff_s, ok, out) = run()?;
    if ok || !out.contains("1 missing, 1 extra, 1 stale") {
        bail!("reconcile did not find the three differences:\n{out}");
    }
    let compared = out
        .lines()
        .next()
        .and_then(|l| l.split(" rows compared").next())
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or("?")
        .to_string();
    println!("  govbus reconcile, {residents} rows, clean           : {clean_s:>7.1} s");
    println!(
        "  govbus reconcile, {residents} rows, 3 differences   : {diff_s:>7.1} s (found all three; {compared} rows compared)"
    );
    Ok(())
}

/// The baseline of a first load: the rows `schema`'s table holds, read
/// out (not timed), then written with one plain `COPY` into an empty
/// table of the same shape; its seconds.
fn plain_copy(pg: &mut postgres::Client, schema: &str) -> anyhow::Result<f64> {
    use std::io::{Read, Write};
    let mut data = Vec::new();
    pg.copy_out(&format!("COPY \"{schema}\".bca_residents TO STDOUT"))?
        .read_to_end(&mut data)?;
    pg.batch_execute(&format!(
        "CREATE TABLE \"{schema}\".plain (LIKE \"{schema}\".bca_residents INCLUDING ALL)"
    ))?;
    let t = Instant::now();
    let mut tx = pg.transaction()?;
    let mut w = tx.copy_in(&format!("COPY \"{schema}\".plain FROM STDIN"))?;
    w.write_all(&data)?;
    w.finish()?;
    tx.commit()?;
    Ok(t.elapsed().as_secs_f64())
}

pub(crate) fn run(residents: usize) -> anyhow::Result<()> {
    let broker = Broker::start();
    let kafka = broker.kafka();
    let rt = runtime();
    let prefix = format!("{}.", unique("backfill"));
    let topics = Topics::new(&prefix);
    let (registry, _r) = start_registry(&rt, &kafka, &topics.schemas());
    let dir = tempfile::tempdir()?;
    let mut catalog = Catalog::builtin();
    catalog.subscriptions = vec![subscription("pidle", "false")?];
    let publisher = crate::bca_publisher(&catalog, &topics, &kafka, &registry, dir.path())?;
    println!(
        "backfill: {residents} residents, broker {}",
        kafka.bootstrap
    );

    // N distinct residents on the central topic (not timed).
    let t = Instant::now();
    let mut world = DemoWorld::new(3);
    let mut left = residents;
    while left > 0 {
        let k = left.min(5000);
        let reqs: Vec<ChangeRequest> = (0..k)
            .map(|_| ChangeRequest::Upsert(world.new_resident()))
            .collect();
        publisher.submit_batch("bca.residents", reqs)?;
        left -= k;
    }
    let relay = Relay::new(&kafka, publisher.store(), publisher.wakeup())?;
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let relay = std::thread::spawn(move || relay.run(s));
    while publisher.store().backlog()? > 0 {
        std::thread::sleep(Duration::from_millis(50));
    }
    let central = topics.central(&govbus_core::DatasetId::new("bca", "residents"), 1);
    println!(
        "  loaded and relayed in {:.1} s (not timed)",
        t.elapsed().as_secs_f64()
    );

    // The baseline: a plain consumer reads the N records.
    let read_s = count_until(
        &kafka,
        &central,
        residents,
        Instant::now(),
        Duration::from_secs(600),
    )?;

    // A router whose only view takes nothing commits past every record.
    let cfg = router_config(&kafka, &registry, &prefix);
    let group = cfg.group.clone();
    govbus_router::control::apply(&kafka, &topics, &catalog, false, false)?;
    let router = Router::new(cfg, &catalog)?;
    let rstop = Arc::new(AtomicBool::new(false));
    let rs = rstop.clone();
    let router = std::thread::Builder::new()
        .name("router".into())
        .spawn(move || router.run(rs))?;
    let watcher: rdkafka::consumer::BaseConsumer = kafka.consumer(&group).create()?;
    let mut parts = rdkafka::TopicPartitionList::new();
    let mut ends = 0;
    for p in 0..4 {
        parts.add_partition(&central, p);
        ends += watcher
            .fetch_watermarks(&central, p, Duration::from_secs(10))?
            .1;
    }
    let t = Instant::now();
    loop {
        let committed = watcher.committed_offsets(parts.clone(), Duration::from_secs(5))?;
        let sum: i64 = committed
            .elements()
            .iter()
            .map(|e| match e.offset() {
                rdkafka::Offset::Offset(o) => o,
                _ => 0,
            })
            .sum();
        if sum >= ends {
            break;
        }
        if t.elapsed() > Duration::from_secs(600) {
            bail!("the router did not commit past the load");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "  the router committed past them in {:.1} s (not timed)",
        t.elapsed().as_secs_f64()
    );

    // The router alone: a subscription to every resident (filter true),
    // no province reading it.
    catalog.subscriptions.push(subscription("palone", "true")?);
    let view = topics.view(
        "palone",
        &govbus_core::DatasetId::new("bca", "residents"),
        1,
    );
    let t = Instant::now();
    govbus_router::control::apply(&kafka, &topics, &catalog, false, false)?;
    let alone_s = count_until(&kafka, &view, residents, t, Duration::from_secs(900))?;

    // The same subscription for a province applying it to PostgreSQL as
    // it arrives: from the subscription applied to the last row committed.
    catalog.subscriptions.push(subscription("pall", "true")?);
    let view = topics.view("pall", &govbus_core::DatasetId::new("bca", "residents"), 1);
    let t = Instant::now();
    govbus_router::control::apply(&kafka, &topics, &catalog, false, false)?;
    let schema = unique("pall_");
    let ccfg = consumer_config(&kafka, &registry, &prefix, "pall", &pg_url(), &schema);
    let cstop = Arc::new(AtomicBool::new(false));
    let cs = cstop.clone();
    let ccat = catalog.clone();
    let consumer = std::thread::spawn(move || govbus_consumer::run(&ccfg, &ccat, cs));
    let counted = Arc::new(AtomicUsize::new(0));
    let topic_s = {
        let (kafka, view, counted) = (kafka.clone(), view.clone(), counted.clone());
        std::thread::spawn(move || {
            let r = count_until(&kafka, &view, residents, t, Duration::from_secs(900));
            counted.store(1, Ordering::Relaxed);
            r
        })
    };
    let mut pg = postgres::Client::connect(&pg_url(), postgres::NoTls).context("postgres")?;
    let table_s = loop {
        let n: i64 = pg
            .query_one(
                &format!("SELECT count(*) FROM \"{schema}\".bca_residents"),
                &[],
            )
            .map(|r| r.get(0))
            .unwrap_or(0);
        if n as usize >= residents {
            break t.elapsed().as_secs_f64();
        }
        if consumer.is_finished() {
            bail!("the province's consumer stopped: {:?}", consumer.join());
        }
        if t.elapsed() > Duration::from_secs(900) {
            bail!("the province's table has {n} of {residents} rows after 900 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let topic_s = topic_s
        .join()
        .map_err(|_| anyhow::anyhow!("counter panicked"))??;
    let copy_s = plain_copy(&mut pg, &schema)?;
    let rate = |s: f64| residents as f64 / s;
    println!(
        "  plain consumer reads the central topic : {read_s:>7.1} s {:>9.0} records/s",
        rate(read_s)
    );
    println!(
        "  backfill to the view topic, router alone: {alone_s:>6.1} s {:>9.0} rows/s",
        rate(alone_s)
    );
    println!(
        "  backfill to the view topic, province on : {topic_s:>6.1} s {:>9.0} rows/s",
        rate(topic_s)
    );
    println!(
        "  backfill to the province's table       : {table_s:>7.1} s {:>9.0} rows/s",
        rate(table_s)
    );
    println!(
        "  plain COPY of the same rows (baseline) : {copy_s:>7.1} s {:>9.0} rows/s",
        rate(copy_s)
    );
    reconcile(&kafka, &registry, &prefix, &schema, &mut pg, residents)?;
    let _ = pg.batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"));
    for s in [&stop, &rstop, &cstop] {
        s.store(true, Ordering::Relaxed);
    }
    let _ = relay.join();
    let _ = router.join();
    let _ = consumer.join();
    Ok(())
}
