//! The live set: the control topic's subscriptions compiled into views,
//! grouped by input topic, with each input's DLQ, fast path and counters,
//! and the topics they need created.

use std::collections::HashMap;
use std::sync::Arc;

use govbus_core::admin_map::Hierarchy;
use govbus_core::{DatasetId, SubscriptionSpec, Topics};
use govbus_kafka_client::{ensure_topics, TopicSpec};

use super::{Router, RouterError};
use crate::control::ControlValue;
use crate::events::{Refusal, SubscriptionRefused};
use crate::fast::FastRoute;
use crate::route::Scope;
use crate::views::{self, View};
use govbus_core::InternalEvent;
use govbus_schema::cel::Test;

/// A removed subscription whose view may still need emptying.
#[derive(Debug)]
pub(super) struct Removed {
    pub(super) name: String,
    pub(super) subscriber: String,
    pub(super) dataset: DatasetId,
    pub(super) input: String,
    pub(super) empty_view: bool,
}

/// The views in force for one generation of the control topic.
#[derive(Debug, Default)]
pub(crate) struct Live {
    pub(crate) generation: u64,
    pub(crate) views: Vec<View>,
    /// Input topic → (dataset label, view indices).
    pub(crate) inputs: HashMap<String, (String, Vec<usize>)>,
    pub(crate) dlq: HashMap<String, String>,
    pub(crate) removed: Vec<Removed>,
    /// Input topic → the byte-level path, when its filters allow it.
    pub(crate) fast: HashMap<String, FastRoute>,
    /// Input topic → `govbus_router_consumed_total{dataset}`.
    pub(crate) consumed: HashMap<String, metrics::Counter>,
    /// Whether a view's filter asks the administrative map.
    pub(crate) uses_map: bool,
    /// The map's epoch the views are routed with (None: no map).
    pub(crate) map_epoch: Option<chrono::NaiveDate>,
    /// The map's rebuild and rows' digest the views are routed with.
    pub(crate) map_generation: u64,
    pub(crate) map_digest: String,
    /// The map as of that epoch.
    pub(crate) hierarchy: Arc<Hierarchy>,
}

impl Live {
    /// The value subject an input's writer schemas must be registered
    /// under: its central topic's (a replay topic carries its central
    /// topic's records).
    pub(crate) fn subject(&self, input: &str) -> String {
        let suffix = govbus_core::Topics::replay("");
        let central = input.strip_suffix(suffix.as_str()).unwrap_or(input);
        govbus_core::topics::value_subject(central)
    }

    /// The CEL functions filters are evaluated with: the standard ones,
    /// and the hierarchy functions over this set's map when a filter asks it.
    pub(crate) fn base(&self) -> cel_interpreter::Context<'static> {
        if self.uses_map {
            govbus_schema::cel::hierarchy_context(self.hierarchy.clone())
        } else {
            govbus_schema::cel::base_context()
        }
    }

    /// What the views' filters are evaluated in, with `base` from [`Live::base`].
    pub(crate) fn scope<'a>(&'a self, base: &'a cel_interpreter::Context<'a>) -> Scope<'a> {
        Scope {
            base,
            hierarchy: Some(&self.hierarchy),
        }
    }

    /// The map epoch recorded with a view's spec (`_govbus.views`): None
    /// when its filter does not ask the map, `none` when there is no map.
    pub(crate) fn map_tag(&self, view: &View) -> Option<String> {
        view.filter.uses_hierarchy().then(|| match self.map_epoch {
            None => "none".into(),
            Some(d) => format!("{d}/{}", self.map_digest),
        })
    }
}

impl Router {
    /// Compiles the control topic's current set. A subscription that does
    /// not compile or whose view schema the registry refuses is left out,
    /// loudly; the others are routed.
    pub(super) fn live(&self) -> Result<Live, RouterError> {
        let (generation, set) = self.control.snapshot();
        self.know(
            &set.values()
                .filter_map(|v| v.active().map(|s| s.dataset.clone()))
                .collect::<Vec<_>>(),
        );
        let catalog = self.catalog();
        let mut live = Live {
            generation,
            ..Live::default()
        };
        let mut specs = vec![TopicSpec::compacted(self.topics.view_state(), 1)];
        let mut view_specs = Vec::new();
        let mut input_of = |ds: &DatasetId, live: &mut Live| -> Option<String> {
            let d = catalog.dataset(ds)?;
            let input = self.topics.central(&d.id, d.file.major);
            let dlq = self.topics.dlq("route", &d.id.to_string());
            live.dlq.insert(input.clone(), dlq.clone());
            live.inputs
                .entry(input.clone())
                .or_insert_with(|| (d.id.to_string(), vec![]));
            specs.push(TopicSpec::changes(
                input.clone(),
                self.cfg.partitions,
                d.file.retention_ms,
            ));
            specs.push(TopicSpec::retained(dlq, 1));
            Some(input)
        };
        for (name, value) in &set {
            match value {
                ControlValue::Active {
                    subscription,
                    origin,
                    ..
                } => {
                    let spec = SubscriptionSpec {
                        file: (**subscription).clone(),
                        origin: format!("{} ({origin})", self.topics.subscriptions()),
                        filter_line: None,
                    };
                    let mut view = match views::compile_spec(&catalog, &self.topics, &spec) {
                        Ok(v) => v,
                        Err(e) => {
                            SubscriptionRefused {
                                subscription: name,
                                refusal: Refusal::Invalid,
                                error: &e,
                            }
                            .emit();
                            continue;
                        }
                    };
                    match views::register_one(&mut view, &self.registry) {
                        Ok(()) => {}
                        Err(e) if e.is_transient() => return Err(e.into()),
                        Err(e) => {
                            SubscriptionRefused {
                                subscription: name,
                                refusal: Refusal::ViewSchema,
                                error: &e,
                            }
                            .emit();
                            continue;
                        }
                    }
                    let Some(input) = input_of(&view.dataset, &mut live) else {
                        continue;
                    };
                    view_specs.push(TopicSpec::compacted(
                        view.topic.clone(),
                        self.cfg.partitions,
                    ));
                    live.inputs
                        .get_mut(&input)
                        .expect("input_of adds the input")
                        .1
                        .push(live.views.len());
                    live.views.push(view);
                }
                ControlValue::Removed { empty_view, .. } => {
                    let Some((subscriber, dataset)) = name.split_once('/') else {
                        continue;
                    };
                    let Ok(dataset) = dataset.parse::<DatasetId>() else {
                        continue;
                    };
                    let Some(input) = input_of(&dataset, &mut live) else {
                        continue;
                    };
                    live.removed.push(Removed {
                        name: name.clone(),
                        subscriber: subscriber.to_string(),
                        dataset,
                        input,
                        empty_view: *empty_view,
                    });
                }
            }
        }
        // Each input's replay topic (`govbus dlq replay`) is routed through
        // the same views, dead-letters to the same DLQ, and is never
        // brought in step from its beginning.
        let replays: Vec<(String, (String, Vec<usize>), String)> = live
            .inputs
            .iter()
            .map(|(t, v)| (Topics::replay(t), v.clone(), live.dlq[t].clone()))
            .collect();
        for (topic, input, dlq) in replays {
            specs.push(TopicSpec::retained(topic.clone(), 1));
            live.dlq.insert(topic.clone(), dlq);
            live.inputs.insert(topic, input);
        }
        live.uses_map = live.views.iter().any(|v| v.filter.uses_hierarchy());
        if live.uses_map {
            if let Some(w) = self.map_watch()? {
                let m = w.view(crate::map::today());
                live.map_epoch = m.epoch;
                live.map_generation = m.generation;
                live.map_digest = m.digest;
                live.hierarchy = Arc::new(m.hierarchy);
                // A view that keeps its rows when its unit ceases to exist
                // stops on that day, as if it had expired then.
                for v in live.views.iter_mut() {
                    if v.unit_ended != govbus_core::catalog::UnitEnded::Keep {
                        continue;
                    }
                    let unit = match v.filter.test() {
                        Some((_, Test::InUnit(u) | Test::ProvinceIs(u))) => u.to_string(),
                        _ => continue,
                    };
                    if let Some(end) = live.map_epoch.and_then(|e| w.ended(&unit, e)) {
                        let end_ms = end
                            .and_hms_opt(0, 0, 0)
                            .map_or(i64::MAX, |t| t.and_utc().timestamp_millis())
                            - 7 * 3_600_000;
                        v.expires_ms = Some(v.expires_ms.map_or(end_ms, |e| e.min(end_ms)));
                        tracing::info!(view = v.name, unit, %end, "the unit this view follows has ceased to exist; its rows are kept and delivery stops");
                    }
                }
                tracing::info!(epoch = ?live.map_epoch, units = w.rows(), "views follow the administrative map");
            }
        }
        for (topic, (dataset, idx)) in &live.inputs {
            live.consumed.insert(
                topic.clone(),
                metrics::counter!("govbus_router_consumed_total", "dataset" => dataset.clone()),
            );
            let views: Vec<&View> = idx.iter().map(|&i| &live.views[i]).collect();
            if let Some(f) = FastRoute::new(&views, live.hierarchy.clone()) {
                live.fast.insert(topic.clone(), f);
            }
        }
        specs.extend(view_specs);
        specs.sort_by(|a, b| a.name.cmp(&b.name));
        specs.dedup_by(|a, b| a.name == b.name);
        ensure_topics(&self.cfg.kafka, &specs)?;
        for v in &live.views {
            tracing::info!(view = v.name, topic = v.topic, filter = v.filter.source(), expires_ms = ?v.expires_ms, "subscription active");
            metrics::gauge!("govbus_subscription_active", "subscriber" => v.subscriber.clone(), "dataset" => v.dataset.to_string()).set(1.0);
            // Alerted on 30 days ahead (deploy/prometheus); 0 = no end.
            metrics::gauge!("govbus_subscription_expires_timestamp_seconds", "subscriber" => v.subscriber.clone(), "dataset" => v.dataset.to_string())
                .set(v.expires_ms.map_or(0.0, |ms| ms as f64 / 1e3));
        }
        for r in &live.removed {
            metrics::gauge!("govbus_subscription_active", "subscriber" => r.subscriber.clone(), "dataset" => r.dataset.to_string()).set(0.0);
        }
        Ok(live)
    }
}

#[cfg(test)]
impl Live {
    /// A live set of `views`, all of one input topic with its DLQ, and the
    /// fast path when their filters allow it.
    pub(crate) fn of(views: Vec<View>, input: &str, dlq: &str) -> Self {
        let mut live = Live {
            inputs: HashMap::from([(
                input.to_string(),
                (
                    views
                        .first()
                        .map(|v| v.dataset.to_string())
                        .unwrap_or_default(),
                    (0..views.len()).collect(),
                ),
            )]),
            dlq: HashMap::from([(input.to_string(), dlq.to_string())]),
            views,
            ..Live::default()
        };
        let refs: Vec<&View> = live.views.iter().collect();
        if let Some(f) = FastRoute::new(&refs, live.hierarchy.clone()) {
            live.fast.insert(input.to_string(), f);
        }
        live
    }
}
