//! `govbus dlq replay|discard`: dead letters sent back through the stage
//! they failed, or marked handled; `_govbus.dlq.state` records which and
//! by whom. Nothing is deleted from a DLQ topic.
//!
//! Exactly once: an operation first takes the DLQ topic's transactional id
//! (fencing any other operation on it), then reads the state, and writes
//! each replayed record together with its state record in one Kafka
//! transaction. A letter the state names is never taken again. An ingest
//! letter is put back into the agency's outbox, recorded there in the same
//! database transaction, and its state is written after.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use govbus_core::Topics;
use govbus_kafka_client::KafkaConfig;
use govbus_kafka_client::{ensure_topics, TopicSpec};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use super::select::{pick, resend, Action, Handled, Resend, Selection, SelectionError};
use super::{cluster, read, Letter};

/// Who acts, and how.
#[derive(Debug, Clone)]
pub(crate) struct Operator {
    /// Recorded as `by`.
    pub(crate) by: String,
    /// Recorded as `why`.
    pub(crate) why: Option<String>,
    /// Print what would be done; change nothing.
    pub(crate) dry_run: bool,
    /// Take every letter (no selection).
    pub(crate) all: bool,
}

/// Records per transaction.
const CHUNK: usize = 1_000;

/// What `_govbus.dlq.state` says of each letter.
fn read_state(kafka: &KafkaConfig, topic: &str) -> anyhow::Result<HashMap<String, Handled>> {
    let mut state = HashMap::new();
    let c: rdkafka::consumer::BaseConsumer = kafka.client().create()?;
    let parts: Vec<(i32, Option<i64>)> = govbus_kafka_client::partitions_of(&c, topic)?
        .into_iter()
        .map(|p| (p, None))
        .collect();
    let mut bad = 0usize;
    govbus_kafka_client::read_partitions(kafka, topic, &parts, Duration::from_secs(60), |m| {
        let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
            bad += 1;
            return;
        };
        match m.payload().map(serde_json::from_slice::<Handled>) {
            Some(Ok(h)) => {
                state.insert(key.to_string(), h);
            }
            None => {
                state.remove(key);
            }
            Some(Err(_)) => bad += 1,
        }
    })
    .with_context(|| format!("reading {topic}"))?;
    if bad > 0 {
        tracing::warn!(
            topic,
            records = bad,
            "state records that do not parse (no text key, or not a recorded action) were left out"
        );
    }
    Ok(state)
}

/// What each letter of `topic` became, for `list` and `show`.
pub(crate) fn state_of(
    kafka: &KafkaConfig,
    prefix: &str,
) -> anyhow::Result<HashMap<String, Handled>> {
    read_state(kafka, &Topics::new(prefix).dlq_state())
}

/// An operation in progress on one DLQ topic: its letters, the state, and
/// (unless a dry run) its transactional producer.
struct Operation {
    kafka: KafkaConfig,
    state_topic: String,
    letters: Vec<Letter>,
    state: HashMap<String, Handled>,
    producer: Option<ThreadedProducer<DefaultProducerContext>>,
}

impl Operation {
    fn open(
        file: Option<&Path>,
        topic: &str,
        sel: &Selection,
        op: &Operator,
    ) -> anyhow::Result<Self> {
        if !sel.is_bounded() && !op.all {
            return Err(SelectionError::Unbounded.into());
        }
        let (kafka, prefix, _) = cluster(file)?;
        if !topic.starts_with(&format!("{prefix}dlq.")) {
            anyhow::bail!("{topic} is not a DLQ topic (`govbus dlq list` names them)");
        }
        let state_topic = Topics::new(&prefix).dlq_state();
        let producer = if op.dry_run {
            None
        } else {
            ensure_topics(&kafka, &[TopicSpec::compacted(state_topic.clone(), 1)])?;
            let mut pc = kafka.producer();
            pc.set("transactional.id", format!("govbus-dlq-{topic}"));
            let p: ThreadedProducer<DefaultProducerContext> = pc.create()?;
            // Fences any other operation on this topic before the state is read.
            p.init_transactions(Duration::from_secs(30))
                .context("taking the DLQ topic's transactional id")?;
            Some(p)
        };
        let letters = read(&kafka, topic)?;
        let state = read_state(&kafka, &state_topic)?;
        Ok(Self {
            kafka,
            state_topic,
            letters,
            state,
            producer,
        })
    }

    /// Writes `records` (topic, partition, key, value, headers) and the
    /// state of `handled` in one transaction per chunk.
    fn commit(&self, writes: Vec<(Option<Resend>, String, Handled)>) -> anyhow::Result<()> {
        let Some(p) = &self.producer else {
            return Ok(());
        };
        for chunk in writes.chunks(CHUNK) {
            p.begin_transaction()?;
            for (record, letter, handled) in chunk {
                if let Some(r) = record {
                    let headers = r.headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
                        h.insert(Header {
                            key: k,
                            value: Some(v.as_slice()),
                        })
                    });
                    let mut rec: BaseRecord<'_, [u8], [u8]> =
                        BaseRecord::to(&r.topic).partition(0).headers(headers);
                    if let Some(k) = &r.key {
                        rec = rec.key(k.as_slice());
                    }
                    if let Some(v) = &r.payload {
                        rec = rec.payload(v.as_slice());
                    }
                    p.send(rec).map_err(|(e, _)| e)?;
                }
                let value = serde_json::to_vec(handled)?;
                p.send(
                    BaseRecord::to(&self.state_topic)
                        .key(letter.as_str())
                        .payload(&value),
                )
                .map_err(|(e, _)| e)?;
            }
            p.commit_transaction(Duration::from_secs(60))
                .context("committing the replay")?;
        }
        Ok(())
    }
}

fn handled(action: Action, op: &Operator, to: Option<String>) -> Handled {
    Handled {
        action,
        by: op.by.clone(),
        at_ms: govbus_core::now_ms(),
        why: op.why.clone(),
        to,
    }
}

fn key_text(l: &Letter) -> String {
    l.key
        .as_deref()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .unwrap_or_else(|| "(none)".into())
}

fn print_skipped(done: &[(&Letter, Handled)]) {
    for (l, h) in done {
        println!(
            "skip {}: {} by {} at {}",
            l.id(),
            h.action.as_str(),
            h.by,
            crate::dlq::when(h.at_ms)
        );
    }
}

/// `govbus dlq replay TOPIC`: the selected letters back through the stage
/// they failed. Route and consume letters go to the replay topic of the
/// topic they were read from (the router and the province read it beside
/// the topic itself); ingest letters go back into the agency's outbox
/// (`outbox`: its URL and schema).
pub(crate) fn replay(
    file: Option<&Path>,
    topic: &str,
    sel: &Selection,
    op: &Operator,
    outbox: Option<(&str, &str)>,
) -> anyhow::Result<()> {
    let o = Operation::open(file, topic, sel, op)?;
    let (todo, done) = pick(&o.letters, sel, &o.state);
    print_skipped(&done);
    let verb = if op.dry_run { "would replay" } else { "replay" };
    let mut refused = 0usize;
    let mut writes = Vec::new();
    let ingest = topic.contains("dlq.ingest.");
    if ingest {
        let Some((url, schema)) = outbox else {
            anyhow::bail!(
                "{topic} holds outbox rows: give --outbox URL (and --outbox-schema when it is not `govbus`), the agency database they came from"
            );
        };
        let ids: Vec<String> = todo.iter().map(|l| l.id()).collect();
        let mut rows = Vec::new();
        for (l, id) in todo.iter().zip(&ids) {
            let row = govbus_producer::outbox::ReplayRow::of(
                id,
                l.payload.as_deref().unwrap_or_default(),
                super::select::history_after(l),
                l.header("govbus.entity.seq").and_then(|s| s.parse().ok()),
            );
            match row {
                Ok(r) => {
                    println!(
                        "{verb} {id} -> outbox {schema} ({}, {} {} {})",
                        l.header("govbus.reason").unwrap_or("(none)"),
                        r.op,
                        r.dataset,
                        r.key
                    );
                    rows.push(r);
                }
                Err(e) => {
                    println!("cannot replay {e}; discard it instead");
                    refused += 1;
                }
            }
        }
        if !op.dry_run && !rows.is_empty() {
            let mut ob = govbus_producer::outbox::PgOutbox::connect(url, schema)?;
            let fresh = ob.put_back(&rows)?;
            for (r, f) in rows.iter().zip(fresh) {
                if !f {
                    println!("{} was put back before; recording it", r.letter);
                }
                writes.push((
                    None,
                    r.letter.to_string(),
                    handled(Action::Replayed, op, Some(format!("outbox {schema}"))),
                ));
            }
        }
    } else {
        let mut targets: Vec<TopicSpec> = Vec::new();
        for l in &todo {
            match resend(l) {
                Ok(r) => {
                    println!(
                        "{verb} {} -> {} ({}, key {})",
                        l.id(),
                        r.topic,
                        l.header("govbus.reason").unwrap_or("(none)"),
                        key_text(l)
                    );
                    targets.push(TopicSpec::retained(r.topic.clone(), 1));
                    let to = Some(r.topic.clone());
                    writes.push((Some(r), l.id(), handled(Action::Replayed, op, to)));
                }
                Err(e) => {
                    println!("cannot replay: {e}");
                    refused += 1;
                }
            }
        }
        if !op.dry_run && !targets.is_empty() {
            targets.sort_by(|a, b| a.name.cmp(&b.name));
            targets.dedup_by(|a, b| a.name == b.name);
            ensure_topics(&o.kafka, &targets)?;
        }
    }
    let n = writes.len();
    o.commit(writes)?;
    println!(
        "{} {}, {} handled before, {} cannot be replayed{}",
        if op.dry_run {
            "would replay"
        } else {
            "replayed"
        },
        if op.dry_run { todo.len() - refused } else { n },
        done.len(),
        refused,
        if op.dry_run {
            " (dry run: nothing changed)"
        } else {
            ""
        }
    );
    Ok(())
}

/// `govbus dlq discard TOPIC --why TEXT`: the selected letters marked
/// handled, with who, when and why; nothing is sent on.
pub(crate) fn discard(
    file: Option<&Path>,
    topic: &str,
    sel: &Selection,
    op: &Operator,
) -> anyhow::Result<()> {
    if op.why.as_deref().is_none_or(|w| w.trim().is_empty()) {
        anyhow::bail!("say why with --why: the state keeps it for the audit");
    }
    let o = Operation::open(file, topic, sel, op)?;
    let (todo, done) = pick(&o.letters, sel, &o.state);
    print_skipped(&done);
    let verb = if op.dry_run {
        "would discard"
    } else {
        "discard"
    };
    let mut writes = Vec::new();
    for l in &todo {
        println!(
            "{verb} {} ({}, key {})",
            l.id(),
            l.header("govbus.reason").unwrap_or("(none)"),
            key_text(l)
        );
        writes.push((None, l.id(), handled(Action::Discarded, op, None)));
    }
    o.commit(writes)?;
    println!(
        "{} {}, {} handled before{}",
        if op.dry_run {
            "would discard"
        } else {
            "discarded"
        },
        todo.len(),
        done.len(),
        if op.dry_run {
            " (dry run: nothing changed)"
        } else {
            ""
        }
    );
    Ok(())
}
