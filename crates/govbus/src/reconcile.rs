//! `govbus reconcile`: compares what a subscription should hold with what
//! the province's table holds, and with `--repair` re-sends exactly the
//! keys that differ through the view, as the router's backfill does.
//!
//! The expected side is the ministry's current state (the dataset's
//! central topic, the latest change of each entity), filtered and projected
//! by the subscription in force (the control topic) with the administrative
//! map the router uses. The actual side is the table. Counts and digests
//! over 1,024 buckets of (key, sequence, row hash) are compared first, then
//! the rows of the differing buckets only: PostgreSQL computes its digests
//! itself, so a million rows do not cross the network to find three.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use govbus_consumer::reconcile::{
    bucket_of, compare_live, differing, digests, row_hash, Entry, Findings, BUCKETS,
};
use govbus_consumer::table::{table_def, value_at, TableDef};
use govbus_core::catalog::SubscriptionSpec;
use govbus_core::{DatasetId, Topics};
use govbus_router::route::{backfill, view_entity, Scope};
use govbus_router::views::View;
use govbus_schema::envelope::decode;
use govbus_schema::{Change, Op, RegistryClient, Schema, SchemaCache, Source};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::Message;

use crate::config::GovbusConfig;

/// What `govbus reconcile` was asked.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The province consumer's configuration (`[consumer]`: its sink, the
    /// cluster, the registry).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The subscriber (must be the configuration's, when given).
    #[arg(long)]
    subscriber: Option<String>,
    /// The dataset (`owner.name`).
    #[arg(long)]
    dataset: String,
    /// Re-send the keys that differ through the view (snapshots for the
    /// missing and stale, deletes for the extra), once.
    #[arg(long)]
    repair: bool,
    /// On a live bus, how long the keys that differ are read again from
    /// the table (each second) before they count: changes in flight arrive.
    #[arg(long, default_value_t = 10)]
    settle: u64,
    /// Also write the result as Prometheus metrics to this file (for
    /// node_exporter's textfile collector).
    #[arg(long)]
    metrics_file: Option<PathBuf>,
}

/// The expected side: per key, its entry, and the changes that gave them.
struct Expected {
    rows: BTreeMap<String, Entry>,
    /// The source time of the newest change read (ms).
    horizon_ms: i64,
    records: usize,
    filter_errors: Vec<String>,
}

/// `govbus reconcile`.
pub(crate) fn run(a: &Args) -> anyhow::Result<()> {
    let (cfg, c) = GovbusConfig::consumer_for(a.config.as_deref(), a.subscriber.as_deref())?;
    let catalog = cfg.catalog()?;
    let id: DatasetId = a
        .dataset
        .parse()
        .map_err(|e| anyhow::anyhow!("--dataset {}: {e}", a.dataset))?;
    let ds = catalog
        .dataset(&id)
        .with_context(|| format!("unknown dataset {id}"))?;
    let topics = Topics::new(&c.topic_prefix);
    let registry = RegistryClient::with_access(&c.registry, c.registry_access.as_ref())?;
    let name = format!("{}/{id}", c.subscriber);

    // The subscription in force, as the router reads it.
    let control = govbus_router::control::read(&c.kafka, &topics.subscriptions())?;
    let file = control
        .get(&name)
        .and_then(|v| v.active())
        .cloned()
        .with_context(|| {
            format!(
                "{name} is not an active subscription on {}",
                topics.subscriptions()
            )
        })?;
    let spec = SubscriptionSpec {
        file,
        origin: topics.subscriptions(),
        filter_line: None,
    };
    let mut view = govbus_router::views::compile_spec(&catalog, &topics, &spec)?;
    let view_schema = Schema::parse_str(&view.schema)?;
    let table = table_def(
        &format!("{}_{}", id.owner, id.name),
        &ds.file.key,
        &view_schema,
    )
    .context("the view's schema has no entity table")?;

    // The map, when the filter asks it.
    let map = if view.filter.uses_hierarchy() {
        let map_ds: DatasetId = "moha.admin_units"
            .parse()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let major = catalog.dataset(&map_ds).map_or(1, |d| d.file.major);
        let watch = govbus_router::map::MapWatch::follow(
            &c.kafka,
            &registry,
            &topics.central(&map_ds, major),
            Duration::from_secs(60),
        )?;
        let v = watch.view(govbus_router::map::today());
        watch.stop();
        Some(Arc::new(v.hierarchy))
    } else {
        None
    };
    let base = match &map {
        Some(h) => govbus_schema::cel::hierarchy_context(h.clone()),
        None => govbus_schema::cel::base_context(),
    };
    let scope = Scope {
        base: &base,
        hierarchy: map.as_deref(),
    };

    let started = Instant::now();
    let central = topics.central(&id, ds.file.major);
    let resolver = SchemaCache::new(registry.clone());
    let expected = expected_side(&c.kafka, &central, &resolver, &view, scope, &table)?;
    let mut sink = c.sink.store()?;
    let actual_digests = sink.bucket_digests(&table, BUCKETS)?.unwrap_or_default();
    let expected_digests = digests(&expected.rows, BUCKETS);
    let buckets = differing(&expected_digests, &actual_digests);
    let held: i64 = actual_digests.values().map(|d| d.count).sum();
    let wanted: BTreeMap<String, Entry> = expected
        .rows
        .iter()
        .filter(|(k, _)| buckets.contains(&bucket_of(k, BUCKETS)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // The table keeps applying while the central topic is read: what it
    // applied after the read is newer, not a difference (compare_live).
    // What it has not applied yet (the province's lag) is read again from
    // the table each second, for up to `--settle` seconds.
    let judge = |sink: &mut govbus_consumer::Store,
                 which: &[u32],
                 only: Option<&BTreeSet<String>>|
     -> anyhow::Result<(Findings, usize, usize)> {
        let actual = sink.bucket_rows(&table, BUCKETS, which)?;
        let keep = |k: &String| only.is_none_or(|o| o.contains(k));
        let wanted: BTreeMap<String, Entry> = wanted
            .iter()
            .filter(|(k, _)| keep(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let actual: BTreeMap<_, _> = actual.into_iter().filter(|(k, _)| keep(k)).collect();
        let keys: Vec<String> = wanted.keys().chain(actual.keys()).cloned().collect();
        let seen = sink.seen_seqs(&table.name, &keys)?;
        let (f, newer) = compare_live(&wanted, &actual, &seen, expected.horizon_ms);
        Ok((f, newer, wanted.len() + actual.len()))
    };
    let (mut f, newer, compared) = judge(&mut sink, &buckets, None)?;
    let first = f.missing.len() + f.extra.len() + f.stale.len();
    let settle = Instant::now();
    while !f.is_clean() && settle.elapsed() < Duration::from_secs(a.settle) {
        std::thread::sleep(Duration::from_secs(1));
        let keys: BTreeSet<String> = f
            .missing
            .iter()
            .chain(&f.extra)
            .chain(&f.stale)
            .cloned()
            .collect();
        let mut which: Vec<u32> = keys.iter().map(|k| bucket_of(k, BUCKETS)).collect();
        which.sort_unstable();
        which.dedup();
        f = judge(&mut sink, &which, Some(&keys))?.0;
    }
    let settled = first - (f.missing.len() + f.extra.len() + f.stale.len());
    println!(
        "{name}: the subscription holds {} rows ({} changes read from {central}), the table {held}; \
         {} of {BUCKETS} buckets differ, {compared} rows compared; {:.1} s",
        expected.rows.len(),
        expected.records,
        buckets.len(),
        started.elapsed().as_secs_f64()
    );
    if newer > 0 {
        println!("  {newer} keys were changed again after the read: the table holds newer rows");
    }
    if settled > 0 {
        println!("  {settled} keys were in flight and arrived while they were read again");
    }
    for e in &expected.filter_errors {
        println!("  filter error: {e}");
    }
    for (kind, keys) in [
        ("missing", &f.missing),
        ("extra", &f.extra),
        ("stale", &f.stale),
    ] {
        if !keys.is_empty() {
            let shown: Vec<&str> = keys.iter().take(50).map(String::as_str).collect();
            println!(
                "  {kind:<7} {}: {}{}",
                keys.len(),
                shown.join(", "),
                if keys.len() > 50 { ", …" } else { "" }
            );
        }
    }
    if let Some(path) = &a.metrics_file {
        write_metrics(path, &c.subscriber, &id.to_string(), &f)?;
    }
    if f.is_clean() {
        println!("  clean: the table equals the subscription");
        return Ok(());
    }
    if a.repair {
        views_register(&mut view, &registry)?;
        let mut which: Vec<u32> = f.extra.iter().map(|k| bucket_of(k, BUCKETS)).collect();
        which.sort_unstable();
        which.dedup();
        let actual = sink.bucket_rows(&table, BUCKETS, &which)?;
        let sent = repair(&c.kafka, &central, &resolver, &view, scope, &f, &actual)?;
        println!(
            "  repaired: {} snapshots and {} deletes sent on {} in one transaction; the consumer applies them once",
            sent.0, sent.1, view.topic
        );
        return Ok(());
    }
    bail!(
        "{name}: {} missing, {} extra, {} stale (re-send them with --repair)",
        f.missing.len(),
        f.extra.len(),
        f.stale.len()
    )
}

fn views_register(view: &mut View, registry: &RegistryClient) -> anyhow::Result<()> {
    govbus_router::views::register_one(view, registry)?;
    Ok(())
}

/// Reads every change of `central` to its end; `f` gets each (key, change).
fn read_changes(
    kafka: &govbus_kafka_client::KafkaConfig,
    central: &str,
    resolver: &SchemaCache,
    mut f: impl FnMut(String, Option<Change>),
) -> anyhow::Result<usize> {
    let probe: rdkafka::consumer::BaseConsumer = kafka.client().create()?;
    let bounds: Vec<(i32, Option<i64>)> = govbus_kafka_client::partitions_of(&probe, central)?
        .into_iter()
        .map(|p| (p, None))
        .collect();
    let mut n = 0;
    let mut undecodable = 0;
    govbus_kafka_client::read_partitions(kafka, central, &bounds, Duration::from_secs(600), |m| {
        n += 1;
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        match m.payload() {
            None => f(key, None),
            Some(p) => match decode(p, resolver) {
                Ok((_, change)) => f(key, Some(change)),
                Err(e) => {
                    undecodable += 1;
                    tracing::warn!(key, error = %e, "a change of the central topic does not decode; left out");
                }
            },
        }
    })?;
    if undecodable > 0 {
        println!("  {undecodable} changes of {central} do not decode and were left out (the router dead-letters them too)");
    }
    Ok(n)
}

fn expected_side(
    kafka: &govbus_kafka_client::KafkaConfig,
    central: &str,
    resolver: &SchemaCache,
    view: &View,
    scope: Scope<'_>,
    table: &TableDef,
) -> anyhow::Result<Expected> {
    let mut rows: BTreeMap<String, Entry> = BTreeMap::new();
    let mut filter_errors = Vec::new();
    let mut horizon_ms = 0;
    let records = read_changes(kafka, central, resolver, |key, change| {
        if let Some(c) = &change {
            horizon_ms = horizon_ms.max(c.ts_ms);
        }
        let Some(change) = change.filter(|c| c.op != Op::Delete) else {
            rows.remove(&key);
            return;
        };
        match view_entity(&change, view, scope) {
            Ok(Some(entity)) => {
                let values: Vec<_> = table
                    .columns
                    .iter()
                    .map(|c| value_at(&entity, &c.path))
                    .collect();
                rows.insert(key, (change.source.seq, row_hash(&values)));
            }
            Ok(None) => {
                rows.remove(&key);
            }
            Err(e) => {
                rows.remove(&key);
                if filter_errors.len() < 20 {
                    filter_errors.push(format!("{key}: {e}"));
                }
            }
        }
    })?;
    Ok(Expected {
        rows,
        horizon_ms,
        records,
        filter_errors,
    })
}

/// Sends a snapshot of each missing or stale key's current state and a
/// delete of each extra key on the view, in one transaction.
fn repair(
    kafka: &govbus_kafka_client::KafkaConfig,
    central: &str,
    resolver: &SchemaCache,
    view: &View,
    scope: Scope<'_>,
    f: &Findings,
    actual: &BTreeMap<String, govbus_consumer::reconcile::Held>,
) -> anyhow::Result<(usize, usize)> {
    let resend: BTreeSet<&String> = f.missing.iter().chain(&f.stale).collect();
    let mut latest: BTreeMap<String, Change> = BTreeMap::new();
    read_changes(kafka, central, resolver, |key, change| {
        if resend.contains(&key) {
            match change {
                Some(c) => {
                    latest.insert(key, c);
                }
                None => {
                    latest.remove(&key);
                }
            }
        }
    })?;
    let mut records: Vec<(String, Vec<u8>)> = Vec::new();
    for (key, change) in &latest {
        if let Some((_, bytes)) = backfill(change, None, Some((view, scope)), view, true)? {
            records.push((key.clone(), bytes));
        }
    }
    let snapshots = records.len();
    for key in &f.extra {
        let seq = actual.get(key).map_or(0, |e| e.seq);
        let delete = Change {
            event_id: uuid::Uuid::new_v4().to_string(),
            op: Op::Delete,
            before: None,
            after: None,
            source: Source {
                agency: view.dataset.owner.clone(),
                system: "govbus-reconcile".into(),
                seq,
            },
            ts_ms: govbus_core::now_ms(),
        };
        records.push((key.clone(), view.encode(&delete)?));
    }
    let mut pc = kafka.producer();
    pc.set(
        "transactional.id",
        format!("govbus-reconcile-{}-{}", view.subscriber, view.dataset),
    );
    let producer: ThreadedProducer<_> = pc.create()?;
    let t = Duration::from_secs(30);
    producer.init_transactions(t)?;
    producer.begin_transaction()?;
    for (key, value) in &records {
        producer
            .send(
                BaseRecord::to(&view.topic)
                    .key(key.as_bytes())
                    .payload(value),
            )
            .map_err(|(e, _)| e)?;
    }
    producer.commit_transaction(t)?;
    Ok((snapshots, records.len() - snapshots))
}

fn write_metrics(path: &Path, subscriber: &str, dataset: &str, f: &Findings) -> anyhow::Result<()> {
    let mut text = String::from(
        "# HELP govbus_reconcile_keys Keys on which a province's table and its subscription disagree, at the last reconciliation.\n\
         # TYPE govbus_reconcile_keys gauge\n",
    );
    for (kind, n) in [
        ("missing", f.missing.len()),
        ("extra", f.extra.len()),
        ("stale", f.stale.len()),
    ] {
        text.push_str(&format!(
            "govbus_reconcile_keys{{subscriber=\"{subscriber}\",dataset=\"{dataset}\",kind=\"{kind}\"}} {n}\n"
        ));
    }
    text.push_str(&format!(
        "# HELP govbus_reconcile_last_run_timestamp_seconds When the last reconciliation ran.\n\
         # TYPE govbus_reconcile_last_run_timestamp_seconds gauge\n\
         govbus_reconcile_last_run_timestamp_seconds{{subscriber=\"{subscriber}\",dataset=\"{dataset}\"}} {}\n",
        govbus_core::now_ms() / 1000
    ));
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
