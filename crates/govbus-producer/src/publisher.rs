//! The Rust API of a ministry: submit a change; it is acknowledged once it is
//! durable in the producer's own store, with its sequence and `before`.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use apache_avro::Schema;
use govbus_core::{topics::value_subject, Catalog, DatasetId, Topics};
use govbus_schema::envelope::envelope_schema;
use govbus_schema::json::to_avro;
use govbus_schema::{
    AvroValue, EncodedChange, EnvelopeCodec, FieldError, Op, RegistryClient, Source,
};
use serde_json::Value as Json;

use crate::lookup::{Lookup, LookupError, Lookups};
use crate::store::{NewChange, OutboxStore, State, StoreError};

/// A change as a source system states it.
#[derive(Debug, Clone, PartialEq)]
pub enum ChangeRequest {
    /// The entity's complete new state (create or update).
    Upsert(Json),
    /// The entity is gone.
    Delete {
        /// Its key.
        key: String,
    },
}

/// A change the store holds durably.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Accepted {
    /// The change's id.
    pub event_id: String,
    /// The entity's sequence number given to this change.
    pub seq: i64,
    /// CREATE, UPDATE or DELETE.
    pub op: &'static str,
    /// The entity key.
    pub key: String,
}

/// Why a change was refused (nothing was stored).
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The dataset is not declared, or not owned by this agency.
    #[error("dataset `{0}` is not published by this producer")]
    UnknownDataset(String),
    /// The change does not match the dataset's schema.
    #[error("the change does not match the schema: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
    /// Delete of an entity this producer never published (or already deleted).
    #[error("{dataset} has no entity with key `{key}`")]
    UnknownEntity {
        /// Dataset.
        dataset: String,
        /// Key.
        key: String,
    },
    /// A replayed change whose entity changed after it was refused: sending
    /// it would take the entity back to an older state.
    #[error("{dataset} `{key}` changed after this change was refused (now at sequence {now}, then {then}); replaying it would take the entity back")]
    Superseded {
        /// Dataset.
        dataset: String,
        /// Key.
        key: String,
        /// The entity's sequence when the change was refused (0: none).
        then: i64,
        /// Its sequence now.
        now: i64,
    },
    /// The store failed: retry later.
    #[error("store unavailable: {0}")]
    Store(#[from] StoreError),
    /// The change could not be encoded (a bug).
    #[error("cannot encode the change: {0}")]
    Encode(#[source] Box<apache_avro::Error>),
    /// An entity's state stored as JSON by an earlier govbus no longer
    /// reads as the entity.
    #[error("cannot encode the change: stored state of {key}: {why}")]
    StoredState {
        /// The entity.
        key: String,
        /// What is wrong with it.
        why: StoredStateError,
    },
}

/// Why a state stored as JSON does not read as the entity.
#[derive(Debug, thiserror::Error)]
pub enum StoredStateError {
    /// Not JSON.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    /// Not of the entity's schema.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Schema(Vec<FieldError>),
    /// Not encodable.
    #[error("{0}")]
    Avro(Box<apache_avro::Error>),
}

/// Setting the publisher up failed.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A schema is invalid.
    #[error("{dataset}: {reason}")]
    Schema {
        /// Dataset.
        dataset: DatasetId,
        /// Why.
        reason: String,
    },
    /// The registry refused or could not be reached.
    #[error("registering {subject}: {source}")]
    Registry {
        /// Subject.
        subject: String,
        /// Why.
        source: govbus_schema::RegistryError,
    },
    /// A catalog the rules look values up in could not be followed.
    #[error(transparent)]
    Lookup(#[from] LookupError),
}

/// How long the producer waits at start for its lookups to catch up.
const LOOKUP_CATCH_UP: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Writer {
    topic: String,
    /// The dataset file's `retention_ms`, set on the topic it creates.
    retention_ms: i64,
    key_field: String,
    entity: Schema,
    codec: EnvelopeCodec,
    rules: Vec<Rule>,
    /// The catalogs the rules look values up in, by CEL variable name.
    lookups: Vec<(String, Arc<Lookup>)>,
    /// The `[[codes]]` rules, each with the lookup holding its map.
    codes: Vec<(govbus_core::catalog::CodeRule, Arc<Lookup>)>,
}

/// `ds`'s entity schema and its contract's rules, each compiled against it
/// and the lookups it names (each rule's own result, so that `govbus
/// check` reports every bad rule).
pub fn compile_rules(
    catalog: &Catalog,
    ds: &govbus_core::catalog::DatasetSpec,
) -> (Result<Schema, SetupError>, Vec<Result<Rule, SetupError>>) {
    let bad = |reason: String| SetupError::Schema {
        dataset: ds.id.clone(),
        reason,
    };
    let entity = match Schema::parse_str(&ds.entity_schema) {
        Ok(e) => e,
        Err(e) => return (Err(bad(e.to_string())), vec![]),
    };
    let mut lookup_schemas = Vec::new();
    let mut problems = Vec::new();
    for (name, target) in &ds.file.lookups {
        let Some(spec) = catalog.dataset(target) else {
            problems.push(Err(bad(format!("lookup {name}: unknown dataset {target}"))));
            continue;
        };
        match Schema::parse_str(&spec.entity_schema) {
            Ok(schema) => lookup_schemas.push((name.as_str(), schema)),
            Err(e) => problems.push(Err(bad(format!("lookup {name}: {e}")))),
        }
    }
    problems.extend(
        crate::codes::check(&ds.file, &entity)
            .into_iter()
            .map(|p| Err(bad(p))),
    );
    let lookup_refs: Vec<(&str, &Schema)> = lookup_schemas.iter().map(|(n, s)| (*n, s)).collect();
    let rules = ds
        .file
        .rules
        .iter()
        .map(|r| {
            govbus_schema::cel::Filter::compile_rule(&r.expr, &entity, &["today"], &lookup_refs)
                .map(|expr| Rule {
                    spec: r.clone(),
                    expr,
                })
                .map_err(|e| bad(format!("rule {}: {e}", r.name)))
        })
        .chain(problems)
        .collect();
    (Ok(entity), rules)
}

/// A dataset's contract in Confluent's terms: `metadata` (owner, key,
/// field tags such as PII) and a `ruleSet` of CEL domain
/// rules over the change's `after` image (what the producer enforces).
fn contract_of(ds: &govbus_core::catalog::DatasetSpec) -> (Json, Json) {
    let mut properties = serde_json::json!({
        "owner": ds.file.owner,
        "key": ds.file.key,
    });
    // `lookup.<name>`: the dataset a rule's map variable holds (keyed by its key).
    for (name, target) in &ds.file.lookups {
        properties[format!("lookup.{name}")] = Json::String(target.to_string());
    }
    let metadata = serde_json::json!({
        "properties": properties,
        "tags": ds.file.tags,
    });
    let rules: Vec<Json> = ds
        .file
        .rules
        .iter()
        .map(|r| {
            serde_json::json!({
                "name": r.name,
                "kind": "CONDITION",
                "mode": "WRITE",
                "type": "CEL",
                "expr": r.expr,
                "doc": r.message,
                "params": {"field": r.field, "scope": "after"},
                "onFailure": match r.action {
                    govbus_core::catalog::RuleAction::Reject => "ERROR",
                    govbus_core::catalog::RuleAction::Warn => "NONE",
                },
            })
        })
        .collect();
    (metadata, serde_json::json!({ "domainRules": rules }))
}

/// The contract rule a field error reports, if it is one (`rule NAME: ...`).
pub fn rule_of(e: &FieldError) -> Option<&str> {
    e.problem
        .strip_prefix("rule ")?
        .split([' ', ':'])
        .next()
        .filter(|n| !n.is_empty())
}

/// A data-quality rule of a dataset's contract, compiled against its
/// schema.
#[derive(Debug)]
pub struct Rule {
    spec: govbus_core::catalog::RuleSpec,
    expr: govbus_schema::cel::Filter,
}

impl Rule {
    /// The rule as its dataset file declares it.
    pub fn spec(&self) -> &govbus_core::catalog::RuleSpec {
        &self.spec
    }
}

impl Writer {
    /// The contract's rules that `entity` fails (a rule that cannot be
    /// evaluated fails, with CEL's reason). `warn` rules are counted and
    /// logged, not returned.
    fn violations(
        &self,
        dataset: &str,
        ctx: &cel_interpreter::Context<'_>,
        entity: &AvroValue,
    ) -> Vec<(&Rule, Option<String>)> {
        if self.rules.is_empty() {
            return vec![];
        }
        let vars = govbus_schema::cel::Vars::of(entity);
        let mut out = Vec::new();
        for r in &self.rules {
            let failed = match r.expr.matches(ctx, &vars) {
                Ok(true) => continue,
                Ok(false) => None,
                Err(e) => Some(e.to_string()),
            };
            govbus_core::InternalEvent::emit(crate::events::ContractViolated {
                dataset,
                rule: &r.spec.name,
                action: r.spec.action,
                error: failed.as_deref(),
            });
            if r.spec.action == govbus_core::catalog::RuleAction::Reject {
                out.push((r, failed));
            }
        }
        out
    }
}

/// Wakes the relay when a change is stored.
#[derive(Debug, Default)]
pub struct Wakeup {
    pending: Mutex<bool>,
    cv: Condvar,
}

impl Wakeup {
    /// Signals new work.
    pub fn notify(&self) {
        *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.cv.notify_all();
    }

    /// Waits for new work, at most `timeout`.
    pub fn wait(&self, timeout: Duration) {
        let guard = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let (mut g, _) = self
            .cv
            .wait_timeout_while(guard, timeout, |p| !*p)
            .unwrap_or_else(|p| p.into_inner());
        *g = false;
    }
}

/// Submits changes of the datasets one agency owns.
#[derive(Debug)]
pub struct Publisher {
    agency: String,
    system: String,
    writers: HashMap<String, Writer>,
    store: Arc<dyn OutboxStore>,
    wakeup: Arc<Wakeup>,
    /// Followers of the catalogs the contracts look values up in (stopped
    /// when the publisher is dropped).
    lookups: Lookups,
    /// The datasets it publishes, as declared (its API is described from them).
    specs: Vec<govbus_core::catalog::DatasetSpec>,
}

impl Publisher {
    /// Registers the envelope schema of every dataset `agency` owns and
    /// returns a publisher writing to `store`. When a dataset's contract
    /// looks values up in another dataset (`[lookups]`), that dataset's
    /// central topic is followed from `kafka`, and this waits until it has
    /// been read to its end.
    pub fn new(
        catalog: &Catalog,
        agency: &str,
        system: &str,
        topics: &Topics,
        kafka: &govbus_kafka_client::KafkaConfig,
        registry: &RegistryClient,
        store: Arc<dyn OutboxStore>,
    ) -> Result<Self, SetupError> {
        let mut writers = HashMap::new();
        let mut followers = Lookups::default();
        // The catalogs some `[[codes]]` read as a map: their one follower
        // keeps the map for every dataset of the agency.
        let as_maps: std::collections::HashSet<&DatasetId> = catalog
            .datasets
            .values()
            .filter(|d| d.id.owner == agency)
            .flat_map(|d| {
                d.file
                    .codes
                    .iter()
                    .filter_map(|c| d.file.lookups.get(&c.catalog))
            })
            .collect();
        for ds in catalog.datasets.values().filter(|d| d.id.owner == agency) {
            let bad = |reason: String| SetupError::Schema {
                dataset: ds.id.clone(),
                reason,
            };
            let (entity, rules) = compile_rules(catalog, ds);
            let entity = entity?;
            let rules = rules.into_iter().collect::<Result<Vec<_>, _>>()?;
            let env_text = envelope_schema(&ds.entity_schema).map_err(|e| bad(e.to_string()))?;
            let env = Schema::parse_str(&env_text).map_err(|e| bad(e.to_string()))?;
            let topic = topics.central(&ds.id, ds.file.major);
            let subject = value_subject(&topic);
            let (metadata, rule_set) = contract_of(ds);
            let id = registry
                .register_with(&subject, &env_text, Some(&metadata), Some(&rule_set))
                .map_err(|source| SetupError::Registry { subject, source })?;
            let mut lookups = Vec::new();
            for (name, target) in &ds.file.lookups {
                let major = catalog.dataset(target).map_or(1, |t| t.file.major);
                let as_map = as_maps.contains(target);
                let l = followers.get_or_follow(
                    kafka,
                    registry,
                    target,
                    topics.central(target, major),
                    LOOKUP_CATCH_UP,
                    as_map,
                )?;
                lookups.push((name.clone(), l));
            }
            let codes = ds
                .file
                .codes
                .iter()
                .filter_map(|c| {
                    let l = lookups.iter().find(|(n, _)| *n == c.catalog)?;
                    Some((c.clone(), l.1.clone()))
                })
                .collect();
            writers.insert(
                ds.id.to_string(),
                Writer {
                    topic,
                    retention_ms: ds.file.retention_ms,
                    key_field: ds.file.key.clone(),
                    entity,
                    codec: EnvelopeCodec::new(env, id),
                    rules,
                    lookups,
                    codes,
                },
            );
        }
        Ok(Self {
            agency: agency.to_string(),
            system: system.to_string(),
            writers,
            store,
            wakeup: Arc::new(Wakeup::default()),
            lookups: followers,
            specs: catalog
                .datasets
                .values()
                .filter(|d| d.id.owner == agency)
                .cloned()
                .collect(),
        })
    }

    /// The datasets it publishes, as declared.
    pub fn dataset_specs(&self) -> &[govbus_core::catalog::DatasetSpec] {
        &self.specs
    }

    /// The catalogs the contracts look values up in: (dataset, rows held).
    pub fn lookups(&self) -> Vec<(String, usize)> {
        let mut v: Vec<(String, usize)> = self
            .lookups
            .all()
            .map(|l| (l.dataset().to_string(), l.rows()))
            .collect();
        v.sort();
        v
    }

    /// The store behind this publisher (the relay reads it).
    pub fn store(&self) -> Arc<dyn OutboxStore> {
        self.store.clone()
    }

    /// Signalled whenever a change is stored.
    pub fn wakeup(&self) -> Arc<Wakeup> {
        self.wakeup.clone()
    }

    /// The entity schema of a dataset this publisher accepts.
    pub fn entity_schema(&self, dataset: &str) -> Option<&Schema> {
        self.writers.get(dataset).map(|w| &w.entity)
    }

    /// The central topics this publisher writes.
    pub fn topics(&self) -> Vec<String> {
        let mut v: Vec<String> = self.writers.values().map(|w| w.topic.clone()).collect();
        v.sort();
        v
    }

    /// Each central topic with its dataset's `retention_ms`.
    pub fn topic_retention(&self) -> Vec<(String, i64)> {
        let mut v: Vec<(String, i64)> = self
            .writers
            .values()
            .map(|w| (w.topic.clone(), w.retention_ms))
            .collect();
        v.sort();
        v
    }

    /// The datasets this publisher accepts.
    pub fn datasets(&self) -> Vec<String> {
        let mut v: Vec<String> = self.writers.keys().cloned().collect();
        v.sort();
        v
    }

    /// Whether this publisher publishes `dataset`.
    pub fn publishes(&self, dataset: &str) -> bool {
        self.writers.contains_key(dataset)
    }

    /// Validates, sequences and stores one change. Blocking (database I/O).
    pub fn submit(&self, dataset: &str, req: ChangeRequest) -> Result<Accepted, SubmitError> {
        let mut v = self.submit_all(dataset, vec![req], false, None, None)?;
        Ok(v.remove(0))
    }

    /// Validates every change, then stores all of them in one transaction (or
    /// none). Field paths in errors start with `changes[i].`.
    pub fn submit_batch(
        &self,
        dataset: &str,
        reqs: Vec<ChangeRequest>,
    ) -> Result<Vec<Accepted>, SubmitError> {
        self.submit_all(dataset, reqs, true, None, None)
    }

    /// Like [`Publisher::submit_batch`], recording `source`'s `position` in
    /// the same transaction (see [`Publisher::checkpoint`]).
    pub fn submit_from(
        &self,
        dataset: &str,
        reqs: Vec<ChangeRequest>,
        source: &str,
        position: i64,
    ) -> Result<Vec<Accepted>, SubmitError> {
        self.submit_all(dataset, reqs, true, Some((source, position)), None)
    }

    /// Like [`Publisher::submit_from`] for a change `govbus dlq replay` put
    /// back: accepted only while its entity is still at sequence `then` (0:
    /// no entity), as it was when the change was refused; otherwise
    /// [`SubmitError::Superseded`].
    pub fn submit_replayed(
        &self,
        dataset: &str,
        req: ChangeRequest,
        source: &str,
        position: i64,
        then: i64,
    ) -> Result<Vec<Accepted>, SubmitError> {
        self.submit_all(
            dataset,
            vec![req],
            true,
            Some((source, position)),
            Some(then),
        )
    }

    /// The sequence of `key`'s last accepted change (0: none).
    pub fn entity_seq(&self, dataset: &str, key: &str) -> Result<i64, SubmitError> {
        let mut tx = self.store.begin()?;
        Ok(tx.entity(dataset, key)?.map_or(0, |e| e.seq))
    }

    /// Records `source`'s position without a change (its input was rejected).
    pub fn record_checkpoint(&self, source: &str, position: i64) -> Result<(), SubmitError> {
        let mut tx = self.store.begin()?;
        tx.checkpoint(source, position)?;
        Ok(tx.commit()?)
    }

    /// Forgets recorded positions (their input is gone for good).
    pub fn forget_checkpoints(&self, sources: &[String]) -> Result<(), SubmitError> {
        Ok(self.store.forget_checkpoints(sources)?)
    }

    /// The last position recorded for `source` by [`Publisher::submit_from`].
    pub fn checkpoint(&self, source: &str) -> Result<Option<i64>, SubmitError> {
        Ok(self.store.checkpoint(source)?)
    }

    fn submit_all(
        &self,
        dataset: &str,
        reqs: Vec<ChangeRequest>,
        indexed: bool,
        checkpoint: Option<(&str, i64)>,
        expect_seq: Option<i64>,
    ) -> Result<Vec<Accepted>, SubmitError> {
        let w = self
            .writers
            .get(dataset)
            .ok_or_else(|| SubmitError::UnknownDataset(dataset.to_string()))?;
        let mut keys = Vec::with_capacity(reqs.len());
        let mut afters = Vec::with_capacity(reqs.len());
        let mut errors = Vec::new();
        // The day codes are read on when a change gives no date of its own.
        let received = govbus_core::admin_map::day_of_ms(govbus_core::now_ms());
        // The contract rules' context (functions, `today`): once per submission.
        let mut rule_ctx = govbus_schema::cel::base_context();
        if !w.rules.is_empty() {
            rule_ctx.add_variable_from_value(
                "today",
                chrono::Utc::now()
                    .date_naive()
                    .format("%Y-%m-%d")
                    .to_string(),
            );
            for (name, l) in &w.lookups {
                rule_ctx.add_variable_from_value(name.clone(), l.value());
            }
        }
        for (i, req) in reqs.iter().enumerate() {
            let prefix = |f: &str| {
                if indexed {
                    format!("changes[{i}].{f}")
                } else {
                    f.to_string()
                }
            };
            match req {
                ChangeRequest::Upsert(json) => match to_avro(&w.entity, json) {
                    Ok(mut v) => match key_of(&v, &w.key_field) {
                        Some(k) => {
                            let refused = crate::codes::clean(&w.codes, &mut v, received);
                            let broken = w.violations(dataset, &rule_ctx, &v);
                            if broken.is_empty() && refused.is_empty() {
                                keys.push(k);
                                afters.push(Some(v));
                            }
                            errors.extend(refused.into_iter().map(|e| FieldError {
                                field: if indexed {
                                    format!("changes[{i}].data.{}", e.field)
                                } else {
                                    e.field
                                },
                                problem: e.problem,
                            }));
                            errors.extend(broken.into_iter().map(|(r, eval)| FieldError {
                                field: if indexed {
                                    format!("changes[{i}].data.{}", r.spec.field)
                                } else {
                                    r.spec.field.clone()
                                },
                                problem: match eval {
                                    None => format!("rule {}: {}", r.spec.name, r.spec.message),
                                    Some(e) => format!(
                                        "rule {} could not be checked ({e}): {}",
                                        r.spec.name, r.spec.message
                                    ),
                                },
                            }));
                        }
                        None => errors.push(FieldError {
                            field: prefix(&w.key_field),
                            problem: "the key must be a non-empty string or number".into(),
                        }),
                    },
                    Err(errs) => errors.extend(errs.into_iter().map(|e| FieldError {
                        field: if indexed {
                            format!("changes[{i}].data.{}", e.field)
                        } else {
                            e.field
                        },
                        problem: e.problem,
                    })),
                },
                ChangeRequest::Delete { key } => {
                    keys.push(key.clone());
                    afters.push(None);
                }
            }
        }
        if !errors.is_empty() {
            return Err(SubmitError::Invalid(errors));
        }
        // Each new state as the datum it is stored as: encoded once, it is
        // this change's `after` and the next change's `before`.
        let datums = afters
            .into_iter()
            .map(|a| {
                a.map(|v| {
                    apache_avro::to_avro_datum(&w.entity, v)
                        .map_err(|e| SubmitError::Encode(Box::new(e)))
                })
                .transpose()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let now = govbus_core::now_ms();
        let mut accepted = Vec::with_capacity(keys.len());
        let mut tx = self.store.begin()?;
        for (key, after) in keys.into_iter().zip(&datums) {
            let prev = tx.entity(dataset, &key)?;
            let last = prev.as_ref().map_or(0, |e| e.seq);
            if let Some(then) = expect_seq.filter(|t| *t != last) {
                return Err(SubmitError::Superseded {
                    dataset: dataset.to_string(),
                    key,
                    then,
                    now: last,
                });
            }
            let seq = last + 1;
            let before = match prev.and_then(|e| e.state) {
                Some(State::Avro(datum)) => Some(datum),
                Some(State::Json(text)) => Some(w.legacy_datum(&key, &text)?),
                None => None,
            };
            let op = match (&before, after) {
                (None, None) => {
                    return Err(SubmitError::UnknownEntity {
                        dataset: dataset.to_string(),
                        key,
                    })
                }
                (None, Some(_)) => Op::Create,
                (Some(_), Some(_)) => Op::Update,
                (Some(_), None) => Op::Delete,
            };
            let event_id = uuid::Uuid::new_v4().to_string();
            let source = Source {
                agency: self.agency.clone(),
                system: self.system.clone(),
                seq,
            };
            let value = w.codec.encode_datums(&EncodedChange {
                event_id: &event_id,
                op,
                before: before.as_deref(),
                after: after.as_deref(),
                source: &source,
                ts_ms: now,
            });
            tx.put(&NewChange {
                dataset,
                key: &key,
                seq,
                state: after.as_deref(),
                topic: &w.topic,
                value: &value,
            })?;
            accepted.push(Accepted {
                event_id,
                seq,
                op: op.as_str(),
                key,
            });
        }
        if let Some((source, position)) = checkpoint {
            tx.checkpoint(source, position)?;
        }
        tx.commit()?;
        self.wakeup.notify();
        Ok(accepted)
    }
}

impl Writer {
    /// The datum of a state stored as JSON by an earlier govbus.
    fn legacy_datum(&self, key: &str, text: &str) -> Result<Vec<u8>, SubmitError> {
        let bad = |why: StoredStateError| SubmitError::StoredState {
            key: key.to_string(),
            why,
        };
        let json: Json = serde_json::from_str(text).map_err(|e| bad(e.into()))?;
        let value = to_avro(&self.entity, &json).map_err(|e| bad(StoredStateError::Schema(e)))?;
        apache_avro::to_avro_datum(&self.entity, value)
            .map_err(|e| bad(StoredStateError::Avro(Box::new(e))))
    }
}

fn key_of(v: &AvroValue, field: &str) -> Option<String> {
    let AvroValue::Record(fields) = v else {
        return None;
    };
    match fields.iter().find(|(n, _)| n == field).map(|(_, v)| v)? {
        AvroValue::String(s) if !s.is_empty() => Some(s.clone()),
        AvroValue::Int(i) => Some(i.to_string()),
        AvroValue::Long(i) => Some(i.to_string()),
        _ => None,
    }
}
