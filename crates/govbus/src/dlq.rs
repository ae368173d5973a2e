//! `govbus dlq list|show|replay|discard`: what the dead-letter topics hold
//! and why, and what was done with them —
//! `dlq.ingest.<agency>` (outbox rows a producer could not accept),
//! `dlq.route.<dataset>` (central records the router could not route) and
//! `dlq.consume.<subscriber>` (view records a province could not apply).
//! Nothing is ever deleted from a DLQ topic: `_govbus.dlq.state` records
//! what was replayed or discarded, by whom, when and why.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use govbus_kafka_client::KafkaConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::{Headers, Message};

use crate::config::{Agent, GovbusConfig};

mod replay;
mod select;

pub(crate) use replay::{discard, replay, Operator};
use select::Handled;
pub(crate) use select::{Selection, SelectionError};

/// A time (ms) as UTC RFC 3339.
pub(crate) fn when(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// One dead letter as read.
#[derive(Debug, Clone)]
pub(crate) struct Letter {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) timestamp_ms: Option<i64>,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) payload: Option<Vec<u8>>,
    pub(crate) headers: Vec<(String, Vec<u8>)>,
}

impl Letter {
    /// The first header `key`, when it is text.
    pub(crate) fn header(&self, key: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// `topic:partition:offset`, as `show` takes it and the state keeps it.
    pub(crate) fn id(&self) -> String {
        format!("{}:{}:{}", self.topic, self.partition, self.offset)
    }
}

/// The DLQ topics under `prefix`.
fn dlq_topics(kafka: &KafkaConfig, prefix: &str) -> anyhow::Result<Vec<String>> {
    use rdkafka::consumer::Consumer;
    let c: BaseConsumer = kafka.client().create()?;
    let md = c.fetch_metadata(None, Duration::from_secs(10))?;
    let mut topics: Vec<String> = md
        .topics()
        .iter()
        .map(|t| t.name().to_string())
        .filter(|t| t.starts_with(&format!("{prefix}dlq.")))
        .collect();
    topics.sort();
    Ok(topics)
}

/// Every record of `topic`, to its end.
pub(crate) fn read(kafka: &KafkaConfig, topic: &str) -> anyhow::Result<Vec<Letter>> {
    let c: BaseConsumer = kafka.client().create()?;
    let parts: Vec<(i32, Option<i64>)> = govbus_kafka_client::partitions_of(&c, topic)?
        .into_iter()
        .map(|p| (p, None))
        .collect();
    let mut out = Vec::new();
    govbus_kafka_client::read_partitions(kafka, topic, &parts, Duration::from_secs(60), |m| {
        out.push(Letter {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers: m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|x| (x.key.to_string(), x.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default(),
        });
    })
    .with_context(|| format!("reading {topic}"))?;
    Ok(out)
}

/// The counts `govbus dlq list` prints for one topic's letters, at `now_ms`.
pub(crate) fn summary(
    topic: &str,
    letters: &[Letter],
    state: &HashMap<String, Handled>,
    now_ms: i64,
) -> String {
    let mut by_reason: BTreeMap<&str, usize> = BTreeMap::new();
    let mut by_source: BTreeMap<&str, usize> = BTreeMap::new();
    let mut by_age: BTreeMap<usize, usize> = BTreeMap::new();
    const AGES: [(i64, &str); 4] = [
        (3_600_000, "< 1 h"),
        (86_400_000, "< 1 day"),
        (7 * 86_400_000, "< 7 days"),
        (i64::MAX, "older"),
    ];
    for l in letters {
        *by_reason
            .entry(l.header("govbus.reason").unwrap_or("(none)"))
            .or_default() += 1;
        let source = l
            .header("govbus.source.topic")
            .or(l.header("govbus.source"))
            .unwrap_or("(none)");
        *by_source.entry(source).or_default() += 1;
        let age = now_ms - l.timestamp_ms.unwrap_or(now_ms);
        let bucket = AGES.iter().position(|(max, _)| age < *max).unwrap_or(3);
        *by_age.entry(bucket).or_default() += 1;
    }
    if letters.is_empty() {
        return format!("{topic}  0 records\n");
    }
    let join = |m: Vec<(String, usize)>| {
        m.into_iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (mut replayed, mut discarded) = (0usize, 0usize);
    for l in letters {
        match state.get(&l.id()).map(|h| h.action) {
            Some(select::Action::Replayed) => replayed += 1,
            Some(select::Action::Discarded) => discarded += 1,
            None => {}
        }
    }
    format!(
        "{topic}  {} records, {} open\n  handled:   replayed {replayed}, discarded {discarded}\n  by reason: {}\n  by source: {}\n  by age:    {}\n",
        letters.len(),
        letters.len() - replayed - discarded,
        join(
            by_reason
                .into_iter()
                .map(|(k, n)| (k.to_string(), n))
                .collect()
        ),
        join(
            by_source
                .into_iter()
                .map(|(k, n)| (k.to_string(), n))
                .collect()
        ),
        join(
            by_age
                .into_iter()
                .map(|(b, n)| (AGES[b].1.to_string(), n))
                .collect()
        ),
    )
}

/// `govbus dlq list`: counts per reason, source and age for every DLQ
/// topic; with `follow`, again every 5 s until stopped.
pub(crate) fn list(file: Option<&Path>, follow: bool) -> anyhow::Result<()> {
    let (kafka, prefix, _) = cluster(file)?;
    loop {
        let topics = dlq_topics(&kafka, &prefix)?;
        if topics.is_empty() {
            println!("no dead-letter topics");
        }
        let now = govbus_core::now_ms();
        let state = replay::state_of(&kafka, &prefix)?;
        for t in topics {
            print!("{}", summary(&t, &read(&kafka, &t)?, &state, now));
        }
        if !follow {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(5));
        println!();
    }
}

/// `govbus dlq show TOPIC:PARTITION:OFFSET`: one record with its headers,
/// key and value (a change envelope decoded to JSON where it decodes).
pub(crate) fn show(file: Option<&Path>, at: &str) -> anyhow::Result<()> {
    let (kafka, prefix, registry) = cluster(file)?;
    let (rest, offset) = at.rsplit_once(':').context("give TOPIC:PARTITION:OFFSET")?;
    let (topic, partition) = rest
        .rsplit_once(':')
        .context("give TOPIC:PARTITION:OFFSET")?;
    let (partition, offset): (i32, i64) = (partition.parse()?, offset.parse()?);
    let letter = read(&kafka, topic)?
        .into_iter()
        .find(|l| l.partition == partition && l.offset == offset)
        .with_context(|| {
            format!("{topic} has no record at partition {partition}, offset {offset}")
        })?;
    let resolver = govbus_schema::SchemaCache::new(registry);
    print!("{}", describe(&letter, &resolver));
    match replay::state_of(&kafka, &prefix)?.get(&letter.id()) {
        Some(h) => println!(
            "  handled: {} by {} at {}{}{}",
            h.action.as_str(),
            h.by,
            when(h.at_ms),
            h.to.as_ref()
                .map(|t| format!(" to {t}"))
                .unwrap_or_default(),
            h.why.as_ref().map(|w| format!(": {w}")).unwrap_or_default()
        ),
        None => println!("  handled: not yet (replay or discard it)"),
    }
    Ok(())
}

/// A letter in words: where, its headers, key and value.
pub(crate) fn describe(l: &Letter, resolver: &dyn govbus_schema::SchemaResolver) -> String {
    let mut out = format!("{}:{}:{}\n", l.topic, l.partition, l.offset);
    for (k, v) in &l.headers {
        out.push_str(&format!("  {k}: {}\n", String::from_utf8_lossy(v)));
    }
    let text = |b: &Option<Vec<u8>>| match b {
        None => "(none)".to_string(),
        Some(b) => match std::str::from_utf8(b) {
            Ok(s) => s.to_string(),
            Err(_) => format!(
                "0x{}",
                b.iter().map(|x| format!("{x:02x}")).collect::<String>()
            ),
        },
    };
    out.push_str(&format!("  key: {}\n", text(&l.key)));
    let value = match l
        .payload
        .as_deref()
        .map(|p| govbus_schema::envelope::decode(p, resolver))
    {
        Some(Ok((id, change))) => format!(
            "change envelope, schema {id}: {}",
            serde_json::json!({
                "event_id": change.event_id,
                "op": change.op.as_str(),
                "before": change.before.as_ref().map(govbus_schema::json::to_json),
                "after": change.after.as_ref().map(govbus_schema::json::to_json),
                "source": {"agency": change.source.agency, "system": change.source.system, "seq": change.source.seq},
                "ts_ms": change.ts_ms,
            })
        ),
        Some(Err(e)) => format!("{} (does not decode: {e})", text(&l.payload)),
        None => "(none)".into(),
    };
    out.push_str(&format!("  value: {value}\n"));
    out
}

/// The cluster, topic prefix and registry of `[router]` (the platform's
/// file).
pub(crate) fn cluster(
    file: Option<&Path>,
) -> anyhow::Result<(KafkaConfig, String, govbus_schema::RegistryClient)> {
    let cfg = GovbusConfig::load(file, Some(Agent::Router))?;
    let r = GovbusConfig::section(&cfg.router, "router", file)?;
    let registry =
        govbus_schema::RegistryClient::with_access(&r.registry, r.registry_access.as_ref())?;
    Ok((r.kafka.clone(), r.topic_prefix.clone(), registry))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(reason: &str, source: &str, age_ms: i64) -> Letter {
        Letter {
            topic: "dlq.route.bca.residents".into(),
            partition: 0,
            offset: 0,
            timestamp_ms: Some(1_000_000_000 - age_ms),
            key: Some(b"k".to_vec()),
            payload: Some(vec![0xff]),
            headers: vec![
                ("govbus.reason".into(), reason.as_bytes().to_vec()),
                ("govbus.source.topic".into(), source.as_bytes().to_vec()),
            ],
        }
    }

    #[test]
    fn a_summary_counts_by_reason_source_and_age() {
        let letters = [
            letter("avro_decode", "gov.bca.residents.v1", 60_000),
            letter("avro_decode", "gov.bca.residents.v1", 2 * 86_400_000),
            letter("unknown_schema", "gov.bca.residents.v1", 30 * 86_400_000),
        ];
        let mut letters = letters;
        letters[1].offset = 1;
        letters[2].offset = 2;
        let state = HashMap::from([(
            "dlq.route.bca.residents:0:2".to_string(),
            Handled {
                action: select::Action::Discarded,
                by: "ops".into(),
                at_ms: 0,
                why: Some("garbage".into()),
                to: None,
            },
        )]);
        let s = summary("dlq.route.bca.residents", &letters, &state, 1_000_000_000);
        assert_eq!(
            s,
            "dlq.route.bca.residents  3 records, 2 open\n  handled:   replayed 0, discarded 1\n  by reason: avro_decode 2, unknown_schema 1\n  by source: gov.bca.residents.v1 3\n  by age:    < 1 h 1, < 7 days 1, older 1\n"
        );
        let d = describe(&letters[0], &govbus_schema::client::FixedResolver::new([]));
        assert!(
            d.contains("govbus.reason: avro_decode") && d.contains("value: 0xff"),
            "{d}"
        );
    }
}
