//! Bringing views in step: when the router takes a partition, every view
//! whose recorded spec (in `_govbus.views`) differs from the one in force
//! receives, from the partition's records before the committed offset, the
//! entities that now enter, those that now leave and, when its projection
//! changed, the others again; a removed view is emptied when asked.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use govbus_core::admin_map::Hierarchy;

use cel_interpreter::Context;
use govbus_core::{DatasetId, SubscriptionFile, SubscriptionSpec, Topics};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::committer::{commit, send, with_txn, RouterContext, Txn};
use super::live::Live;
use super::{Router, RouterError};
use crate::events::BackfillSkipped;
use crate::fast::{FastBackfill, FastOutputs, Fill};
use crate::route::{self, RouteError, Scope};
use crate::views::{self, View};
use govbus_core::InternalEvent;
use govbus_schema::client::SchemaResolver;

/// The spec a view holds on one input partition, as recorded in
/// `_govbus.views`: what its province has received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The filter.
    pub filter: String,
    /// The dropped fields.
    pub drop: Vec<String>,
    /// For a filter that asks the administrative map: the map's epoch it
    /// was evaluated with (`YYYY-MM-DD`, or `none` before there was a map).
    /// A new epoch brings the view in step like a changed filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StateValue {
    /// None: the view receives nothing from this partition.
    applied: Option<Applied>,
    at_ms: i64,
}

fn state_key(view: &str, topic: &str, partition: i32) -> String {
    format!("{view}|{topic}|{partition}")
}

/// One view to bring in step on one partition.
struct Work<'a> {
    key: String,
    view: String,
    old: Option<View>,
    /// The map the old spec was evaluated with, for a filter that asks it.
    old_map: Option<(Context<'static>, Arc<Hierarchy>)>,
    /// The map's rows changed since the view was brought in step: what it
    /// holds cannot be told from the map as it is now, so every entity
    /// that belongs is sent again (a snapshot each; a province skips those
    /// it has).
    resend: bool,
    new: Option<&'a View>,
    /// Write `old`'s leaves when there is no `new`.
    empty: bool,
    target: Option<Applied>,
}

impl Router {
    /// Reads `_govbus.views`: view|topic|partition → what it holds.
    fn read_state(&self) -> Result<HashMap<String, Option<Applied>>, RouterError> {
        let topic = self.topics.view_state();
        let mut state = HashMap::new();
        let mut bad = None;
        govbus_kafka_client::read_partitions(
            &self.cfg.kafka,
            &topic,
            &[(0, None)],
            Duration::from_secs(60),
            |m| {
                let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                match m.payload().map(serde_json::from_slice::<StateValue>) {
                    Some(Ok(v)) => {
                        state.insert(key, v.applied);
                    }
                    None => {
                        state.remove(&key);
                    }
                    Some(Err(e)) => bad = Some((key, e)),
                }
            },
        )?;
        if let Some((key, source)) = bad {
            return Err(RouterError::State { key, source });
        }
        Ok(state)
    }

    /// Brings every view in step on `parts` (just assigned to this
    /// instance): a view whose recorded spec differs from the one in force
    /// receives, from the partition's records before the group's committed
    /// offset, the entities that now enter (snapshots), those that now leave
    /// (deletes) and, when its projection changed, the others again; a
    /// removed view is emptied when asked. A partition's records, its new
    /// state and its (unchanged) offset go in one transaction, so live
    /// routing from that offset continues with no gap and no duplicate.
    pub(super) fn in_step(
        &self,
        live: &Live,
        consumer: &BaseConsumer<RouterContext>,
        producer: &Txn<'_>,
        base: &Context<'_>,
        parts: &[(String, i32)],
    ) -> Result<(), RouterError> {
        let t = std::time::Instant::now();
        let state = self.read_state()?;
        tracing::debug!(
            ms = t.elapsed().as_secs_f64() * 1e3,
            records = state.len(),
            "view state read"
        );
        let now = govbus_core::now_ms();
        let mut todo: Vec<((String, i32), Vec<Work<'_>>)> = Vec::new();
        // The map as of each recorded epoch, built once per call (every view
        // on every partition names one when the epoch moves).
        let mut maps: HashMap<String, Arc<Hierarchy>> = HashMap::new();
        for (topic, p) in parts {
            if Topics::is_replay(topic) {
                continue; // replayed records are routed as they come, never backfilled
            }
            let Some((_, idx)) = live.inputs.get(topic) else {
                continue;
            };
            let mut work = Vec::new();
            let held = |name: &str| -> Option<Applied> {
                state.get(&state_key(name, topic, *p)).cloned().flatten()
            };
            for &i in idx {
                let v = &live.views[i];
                let target = (!v.expired(now)).then(|| Applied {
                    filter: v.filter.source().to_string(),
                    drop: v.drop.clone(),
                    map: live.map_tag(v),
                });
                let old = held(&v.name);
                if old != target {
                    // Same epoch, other rows (a unit added with a past date,
                    // a map still loading when the view was last in step).
                    let day = |a: &str| a.split('/').next().map(str::to_string);
                    let resend = matches!(
                        (old.as_ref().and_then(|a| a.map.as_deref()), target.as_ref().and_then(|a| a.map.as_deref())),
                        (Some(a), Some(b)) if a != "none" && a != b && day(a) == day(b)
                    );
                    work.push(Work {
                        resend,
                        key: state_key(&v.name, topic, *p),
                        view: v.name.clone(),
                        old_map: match old.as_ref() {
                            Some(a) => self.applied_map(a, &mut maps)?,
                            None => None,
                        },
                        old: old.and_then(|a| self.compile_applied(&v.subscriber, &v.dataset, &a)),
                        new: target.is_some().then_some(v),
                        // An expired view keeps its rows (delivery stops).
                        empty: target.is_some(),
                        target,
                    });
                }
            }
            for r in live.removed.iter().filter(|r| &r.input == topic) {
                let Some(applied) = held(&r.name) else {
                    continue;
                };
                let old_map = self.applied_map(&applied, &mut maps)?;
                let mut old = self.compile_applied(&r.subscriber, &r.dataset, &applied);
                if r.empty_view {
                    if let Some(v) = old.as_mut() {
                        views::register_one(v, &self.registry)?;
                    }
                }
                work.push(Work {
                    resend: false,
                    key: state_key(&r.name, topic, *p),
                    view: r.name.clone(),
                    old_map,
                    old,
                    new: None,
                    empty: r.empty_view,
                    target: None,
                });
            }
            if !work.is_empty() {
                todo.push(((topic.clone(), *p), work));
            }
        }
        if todo.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for ((t, p), _) in &todo {
            tpl.add_partition(t, *p);
        }
        let committed = consumer.committed_offsets(tpl, Duration::from_secs(30))?;
        let until = |t: &str, p: i32| -> i64 {
            committed
                .find_partition(t, p)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                })
                .unwrap_or(0)
        };
        // A transaction per partition: a view's state is recorded per
        // partition, so each partition's records, state and offset stand
        // on their own, and its province starts applying the first while
        // the router still reads the next (read_committed sees nothing of
        // a transaction before it commits).
        for ((topic, p), work) in &todo {
            let p = *p;
            let until = until(topic, p);
            producer.begin_transaction()?;
            let res = (|| {
                self.backfill(topic, p, until, work, producer, live.scope(base))?;
                for w in work {
                    let value = serde_json::to_vec(&StateValue {
                        applied: w.target.clone(),
                        at_ms: now,
                    })
                    .unwrap_or_default();
                    send(
                        producer,
                        BaseRecord::to(&self.topics.view_state())
                            .key(w.key.as_bytes())
                            .payload(&value),
                    )?;
                    tracing::info!(view = w.view, topic, partition = p, until, from = ?w.old.as_ref().map(|v| v.filter.source()), to = ?w.target.as_ref().map(|a| &a.filter), "view brought in step");
                }
                let mut offsets = TopicPartitionList::new();
                offsets.add_partition_offset(topic, p, Offset::Offset(until))?;
                let meta = consumer
                    .group_metadata()
                    .ok_or_else(|| KafkaError::Subscription("no group metadata".into()))?;
                commit(producer, &offsets, &meta)
            })();
            if let Err(e) = res {
                let _ = producer.abort_transaction(Duration::from_secs(30));
                return Err(e);
            }
        }
        tracing::debug!(
            ms = t.elapsed().as_secs_f64() * 1e3,
            partitions = todo.len(),
            "views brought in step"
        );
        Ok(())
    }

    /// The map a recorded spec was evaluated with (None when its filter does
    /// not ask the map): as of its recorded epoch, or empty for `none`; an
    /// epoch already built in this call (`maps`) is not built again.
    fn applied_map(
        &self,
        a: &Applied,
        maps: &mut HashMap<String, Arc<Hierarchy>>,
    ) -> Result<Option<(Context<'static>, Arc<Hierarchy>)>, RouterError> {
        let Some(tag) = a.map.as_deref() else {
            return Ok(None);
        };
        let day = tag.split('/').next().unwrap_or_default().to_string();
        let h = match maps.get(&day) {
            Some(h) => h.clone(),
            None => {
                let h = Arc::new(
                    match (day.parse::<chrono::NaiveDate>(), self.map_watch()?) {
                        (Ok(d), Some(w)) => w.hierarchy(Some(d)),
                        // `none`: the view was brought in step before there was a map.
                        _ => Hierarchy::empty(),
                    },
                );
                maps.insert(day, h.clone());
                h
            }
        };
        Ok(Some((govbus_schema::cel::hierarchy_context(h.clone()), h)))
    }

    /// A view of `subscriber` compiled from a recorded spec (None when it
    /// no longer compiles: its leaves cannot be computed, which is logged).
    fn compile_applied(&self, subscriber: &str, dataset: &DatasetId, a: &Applied) -> Option<View> {
        let spec = SubscriptionSpec {
            file: SubscriptionFile {
                subscriber: subscriber.to_string(),
                dataset: dataset.clone(),
                filter: a.filter.clone(),
                drop: a.drop.clone(),
                legal_basis: String::new(),
                legal_reference: String::new(),
                requested_by: String::new(),
                sensitive: Vec::new(),
                expires: None,
                unit_ended: Default::default(),
            },
            origin: self.topics.view_state(),
            filter_line: None,
        };
        views::compile_spec(&self.catalog(), &self.topics, &spec)
            .map_err(|e| tracing::error!(subscriber, %dataset, error = %e, "a view's recorded spec no longer compiles; its leaves are not sent"))
            .ok()
    }

    /// Sends `work`'s records for the current state of `topic` `p` below
    /// `until` (each entity's last change).
    fn backfill(
        &self,
        topic: &str,
        p: i32,
        until: i64,
        work: &[Work<'_>],
        producer: &Txn<'_>,
        scope: Scope<'_>,
    ) -> Result<(), RouterError> {
        let sends = work
            .iter()
            .any(|w| w.new.is_some() || (w.empty && w.old.is_some()));
        if !sends || until == 0 {
            return Ok(());
        }
        let mut current: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        govbus_kafka_client::read_partitions(
            &self.cfg.kafka,
            topic,
            &[(p, Some(until))],
            Duration::from_secs(300),
            |m| {
                let key = m.key().unwrap_or_default().to_vec();
                match m.payload() {
                    Some(v) => {
                        current.insert(key, v.to_vec());
                    }
                    None => {
                        current.remove(&key);
                    }
                }
            },
        )?;
        let dataset = &work
            .iter()
            .find_map(|w| {
                w.new
                    .map(|v| v.dataset.to_string())
                    .or(w.old.as_ref().map(|v| v.dataset.to_string()))
            })
            .unwrap_or_default();
        let subject = govbus_core::topics::value_subject(topic);
        // The views that get records, each with its work.
        let fills: Vec<(&Work<'_>, Fill<'_>)> = work
            .iter()
            .filter_map(|w| {
                let out = w.new.or(w.old.as_ref().filter(|_| w.empty))?;
                let old_map = w.old_map.as_ref().map(|(_, h)| h.as_ref());
                Some((
                    w,
                    Fill {
                        old: w.old.as_ref().map(|v| (v, old_map.or(scope.hierarchy))),
                        new: w.new.map(|v| (v, scope.hierarchy)),
                        out,
                        resend: w.resend,
                    },
                ))
            })
            .collect();
        let fast = FastBackfill::new(&fills.iter().map(|(_, f)| *f).collect::<Vec<_>>());
        // Writer schema ids the fast path takes, learnt once each.
        let mut fast_ids: HashMap<u32, bool> = HashMap::new();
        let mut outs = FastOutputs::default();
        // Records per fill and label, counted once at the end.
        let mut sent: HashMap<(usize, &'static str), u64> = HashMap::new();
        for (key, payload) in &current {
            if let Some(fast) = &fast {
                let accepted = match payload.get(1..5) {
                    Some(&[a, b, c, d]) => {
                        let id = u32::from_be_bytes([a, b, c, d]);
                        *fast_ids.entry(id).or_insert_with(|| {
                            self.resolver
                                .resolve_in(&subject, id)
                                .is_ok_and(|w| fast.accepts(&w))
                        })
                    }
                    _ => false,
                };
                if accepted && fast.fill(payload, &mut outs) {
                    for o in outs.iter() {
                        let Some((_, f)) = fills.get(o.nth) else {
                            continue;
                        };
                        send(
                            producer,
                            with_txn(
                                BaseRecord::to(&f.out.topic)
                                    .key(key.as_slice())
                                    .payload(o.value),
                                producer.label,
                            ),
                        )?;
                        *sent.entry((o.nth, o.label)).or_default() += 1;
                    }
                    continue;
                }
            }
            let change = match govbus_schema::envelope::decode_in(payload, &self.resolver, &subject)
            {
                Ok((_, c)) => c,
                Err(e) if e.is_transient() => return Err(RouterError::RegistryUnavailable(e)),
                // Dead-lettered when it was routed live; counted here too.
                Err(e) => {
                    BackfillSkipped {
                        topic,
                        partition: p,
                        dataset,
                        view: None,
                        reason: RouteError::Envelope(e).reason(),
                    }
                    .emit();
                    continue;
                }
            };
            for (nth, (w, f)) in fills.iter().enumerate() {
                let old = f.old.map(|(v, _)| {
                    let s = match &w.old_map {
                        Some((base, h)) => Scope {
                            base,
                            hierarchy: Some(h),
                        },
                        None => scope,
                    };
                    (v, s)
                });
                match route::backfill(&change, old, w.new.map(|v| (v, scope)), f.out, w.resend) {
                    Ok(Some((label, value))) => {
                        send(
                            producer,
                            with_txn(
                                BaseRecord::to(&f.out.topic)
                                    .key(key.as_slice())
                                    .payload(value.as_slice()),
                                producer.label,
                            ),
                        )?;
                        *sent.entry((nth, label)).or_default() += 1;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        BackfillSkipped {
                            topic,
                            partition: p,
                            dataset,
                            view: Some(&f.out.name),
                            reason: e.reason(),
                        }
                        .emit();
                    }
                }
            }
        }
        for ((nth, label), n) in sent {
            if let Some((_, f)) = fills.get(nth) {
                metrics::counter!("govbus_router_backfill_total", "subscriber" => f.out.subscriber.clone(), "dataset" => dataset.clone(), "decision" => label).increment(n);
            }
        }
        Ok(())
    }
}
