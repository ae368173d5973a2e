//! `govbus receipts`: which subscribers applied an event, and when (from
//! each subscriber's `_govbus.receipts.<subscriber>`, which only that
//! subscriber may write); `govbus receipts verify` checks a province's
//! chain of receipts in its database, naming where it breaks.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use govbus_consumer::receipt::{verify as verify_chain, Receipt};
use govbus_core::Topics;
use rdkafka::consumer::Consumer;
use rdkafka::Message;

use crate::config::GovbusConfig;

/// `govbus receipts verify`.
#[derive(Debug, clap::Args)]
pub(crate) struct VerifyArgs {
    /// The province consumer's configuration (`[consumer]`).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The subscriber (must be the configuration's, when given).
    #[arg(long)]
    subscriber: Option<String>,
}

fn when(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms + 7 * 3_600_000)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
        .unwrap_or_default()
}

/// `govbus receipts EVENT_ID`: every receipt on the
/// `_govbus.receipts.<subscriber>` topics that holds the event, believed
/// only on its own subscriber's topic (the cluster and prefix from `[router]` or
/// `[consumer]`).
pub(crate) fn find(event_id: &str, config: Option<&std::path::Path>) -> anyhow::Result<()> {
    let cfg = GovbusConfig::load(config, None)?;
    let (kafka, prefix) = match (&cfg.router, &cfg.consumer) {
        (Some(r), _) => (r.kafka.clone(), r.topic_prefix.clone()),
        (None, Some(c)) => (c.kafka.clone(), c.topic_prefix.clone()),
        _ => bail!("the configuration has neither [router] nor [consumer]: give one that names the cluster"),
    };
    let topics = Topics::new(&prefix);
    let probe: rdkafka::consumer::BaseConsumer = kafka.client().create()?;
    let metadata = probe
        .fetch_metadata(None, Duration::from_secs(30))
        .context("listing the receipts topics")?;
    let mut receipt_topics: Vec<(String, String)> = metadata
        .topics()
        .iter()
        .filter_map(|t| {
            topics
                .receipts_of(t.name())
                .map(|s| (t.name().to_string(), s.to_string()))
        })
        .collect();
    receipt_topics.sort();
    if receipt_topics.is_empty() {
        bail!(
            "no {}<subscriber> topic exists: no consumer has published a receipt yet",
            topics.receipts_prefix()
        );
    }
    let mut read = 0usize;
    let mut forged = 0usize;
    let mut found: BTreeMap<(String, i64), (Receipt, usize)> = BTreeMap::new();
    for (topic, subscriber) in &receipt_topics {
        let bounds: Vec<(i32, Option<i64>)> = govbus_kafka_client::partitions_of(&probe, topic)?
            .into_iter()
            .map(|p| (p, None))
            .collect();
        govbus_kafka_client::read_partitions(
            &kafka,
            topic,
            &bounds,
            Duration::from_secs(600),
            |m| {
                read += 1;
                let Some(r) = m
                    .payload()
                    .and_then(|p| serde_json::from_slice::<Receipt>(p).ok())
                else {
                    return;
                };
                // Only the subscriber may write its topic: a receipt there
                // that names another is not that other's, and is not believed.
                if r.subscriber != *subscriber {
                    forged += 1;
                    return;
                }
                if let Some(i) = r.events.iter().position(|e| e.event_id == event_id) {
                    found.insert((r.subscriber.clone(), r.seq), (r, i));
                }
            },
        )?;
    }
    if forged > 0 {
        eprintln!(
            "govbus receipts: {forged} receipts name another subscriber than the topic they are on; not believed"
        );
    }
    let topic = format!("{}*", topics.receipts_prefix());
    if found.is_empty() {
        bail!("no subscriber has applied event {event_id} ({read} receipts read from {topic})");
    }
    println!(
        "{:<10} {:<25} {:>8}  RECORD",
        "SUBSCRIBER", "APPLIED AT (UTC+7)", "RECEIPT"
    );
    for ((sub, seq), (r, i)) in &found {
        let e = &r.events[*i];
        println!(
            "{sub:<10} {:<25} {seq:>8}  {}:{}:{}",
            when(r.applied_at_ms),
            e.topic,
            e.partition,
            e.offset
        );
    }
    Ok(())
}

/// `govbus receipts verify`.
pub(crate) fn verify(a: &VerifyArgs) -> anyhow::Result<()> {
    let (_, c) = GovbusConfig::consumer_for(a.config.as_deref(), a.subscriber.as_deref())?;
    let mut sink = c.sink.store()?;
    let mut chain: Vec<Receipt> = Vec::new();
    let mut from = 1;
    loop {
        let page: Vec<Receipt> = sink
            .receipts(from, 10_000)
            .context("reading the receipts")?
            .into_iter()
            .filter(|r| r.subscriber == c.subscriber)
            .collect();
        let Some(last) = page.last() else { break };
        from = last.seq + 1;
        chain.extend(page);
    }
    if chain.is_empty() {
        bail!("{} has no receipts in {}", c.subscriber, c.sink.describe());
    }
    match verify_chain(&chain) {
        Ok((n, events)) => {
            let last = chain.last().expect("not empty");
            println!(
                "{}: {n} receipts, {events} events, the chain is intact (last: receipt {}, {}, {})",
                c.subscriber,
                last.seq,
                when(last.applied_at_ms),
                last.hash
            );
            Ok(())
        }
        Err(e) => bail!("{}: the chain of receipts breaks: {e}", c.subscriber),
    }
}
