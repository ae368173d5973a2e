//! The live subscription set: the compacted control topic
//! `_govbus.subscriptions`, what `govbus subscriptions apply` writes to it,
//! and the follower every router instance runs on it.
//!
//! Records are keyed by the subscription's name (`<subscriber>/<dataset>`);
//! the value is JSON: `{"state":"active","subscription":{...}}` with the
//! subscription file's fields, or `{"state":"removed","empty_view":bool}`.
//! A removal is a record, not a tombstone, so that a router that starts later
//! still knows to empty the view; a tombstone is read as a removal that
//! leaves the view as it is.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use govbus_core::{SubscriptionFile, SubscriptionSpec};
use govbus_kafka_client::tail::{Tail, Tailed};
use govbus_kafka_client::KafkaConfig;
use govbus_kafka_client::{ensure_topics, partitions_of, KafkaSetupError, TopicSpec};
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::Message;
use serde::{Deserialize, Serialize};

/// One subscription's record on the control topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ControlValue {
    /// The subscription is in force.
    Active {
        /// What its file says.
        subscription: Box<SubscriptionFile>,
        /// The file it was applied from.
        #[serde(default)]
        origin: String,
        /// Who applied it (user@host).
        #[serde(default)]
        applied_by: String,
        /// When (ms since the epoch).
        #[serde(default)]
        applied_at_ms: i64,
    },
    /// The subscription was removed.
    Removed {
        /// Whether its view is emptied with deletes.
        empty_view: bool,
        /// Who removed it.
        #[serde(default)]
        applied_by: String,
        /// When (ms since the epoch).
        #[serde(default)]
        applied_at_ms: i64,
    },
}

impl ControlValue {
    /// The subscription, if in force.
    pub fn active(&self) -> Option<&SubscriptionFile> {
        match self {
            ControlValue::Active { subscription, .. } => Some(subscription.as_ref()),
            ControlValue::Removed { .. } => None,
        }
    }
}

/// The control topic's content: subscription name → its last record.
pub type ControlSet = BTreeMap<String, ControlValue>;

/// Reading or writing the control topic failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Kafka failed.
    #[error("control topic {topic}: kafka: {source}")]
    Kafka {
        /// The topic.
        topic: String,
        /// Why.
        source: KafkaError,
    },
    /// The topic could not be created.
    #[error(transparent)]
    Setup(#[from] KafkaSetupError),
    /// The topic cannot be followed.
    #[error(transparent)]
    Tail(#[from] govbus_kafka_client::tail::TailError),
    /// Two files declare one subscription.
    #[error("{first} and {second} both declare subscription {name}")]
    Duplicate {
        /// The name.
        name: String,
        /// One file.
        first: String,
        /// The other.
        second: String,
    },
    /// A subscription file is wrong.
    #[error(transparent)]
    Invalid(#[from] govbus_core::CatalogError),
    /// The follower did not read the topic to its end in time.
    #[error("control topic {topic}: not read to its end after {secs} s")]
    NotCaughtUp {
        /// The topic.
        topic: String,
        /// How long it waited.
        secs: u64,
    },
}

/// Decodes one record; a value that is not a control record is logged and
/// skipped (None), a tombstone is a removal that keeps the view.
pub fn decode(key: &[u8], value: Option<&[u8]>) -> Option<(String, ControlValue)> {
    let name = String::from_utf8_lossy(key).into_owned();
    let Some(value) = value else {
        return Some((
            name,
            ControlValue::Removed {
                empty_view: false,
                applied_by: String::new(),
                applied_at_ms: 0,
            },
        ));
    };
    match serde_json::from_slice::<ControlValue>(value) {
        Ok(v) => Some((name, v)),
        Err(e) => {
            govbus_core::InternalEvent::emit(crate::events::ControlSkipped {
                subscription: &name,
                error: &e,
            });
            None
        }
    }
}

/// Creates the control topic if missing (compacted, one partition: the
/// whole set in one order).
pub fn ensure(kafka: &KafkaConfig, topic: &str) -> Result<(), KafkaSetupError> {
    ensure_topics(kafka, &[TopicSpec::compacted(topic, 1)])
}

/// Reads the whole control topic.
pub fn read(kafka: &KafkaConfig, topic: &str) -> Result<ControlSet, ControlError> {
    let err = |source| ControlError::Kafka {
        topic: topic.to_string(),
        source,
    };
    let probe: BaseConsumer = kafka
        .consumer("govbus-control-probe")
        .create()
        .map_err(err)?;
    let parts = partitions_of(&probe, topic).map_err(err)?;
    let bounds: Vec<(i32, Option<i64>)> = parts.iter().map(|p| (*p, None)).collect();
    let mut set = ControlSet::new();
    govbus_kafka_client::read_partitions(kafka, topic, &bounds, Duration::from_secs(60), |m| {
        if let Some((k, v)) = decode(m.key().unwrap_or_default(), m.payload()) {
            set.insert(k, v);
        }
    })
    .map_err(err)?;
    Ok(set)
}

/// What `apply` does to one subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A new subscription (or one removed earlier and declared again).
    Add(SubscriptionSpec),
    /// A subscription whose file changed; `what` lists the changed fields.
    Change {
        /// The new declaration.
        to: SubscriptionSpec,
        /// `field: old → new` lines.
        what: Vec<String>,
    },
    /// A subscription no file declares any more.
    Remove {
        /// Its name.
        name: String,
        /// Whether its view is emptied.
        empty_view: bool,
    },
}

impl Step {
    /// The subscription's name.
    pub fn name(&self) -> String {
        match self {
            Step::Add(s) | Step::Change { to: s, .. } => s.name(),
            Step::Remove { name, .. } => name.clone(),
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Add(s) => write!(f, "+ {} ({}): filter {}", s.name(), s.origin, s.file.filter),
            Step::Change { to, what } => {
                write!(f, "~ {} ({})", to.name(), to.origin)?;
                for w in what {
                    write!(f, "\n    {w}")?;
                }
                Ok(())
            }
            Step::Remove { name, empty_view } => write!(
                f,
                "- {name}{}",
                if *empty_view {
                    " (its view is emptied with deletes)"
                } else {
                    " (delivery stops; the view keeps its rows)"
                }
            ),
        }
    }
}

fn changed_fields(a: &SubscriptionFile, b: &SubscriptionFile) -> Vec<String> {
    let a = serde_json::to_value(a).unwrap_or_default();
    let b = serde_json::to_value(b).unwrap_or_default();
    let keys: std::collections::BTreeSet<&String> = a
        .as_object()
        .into_iter()
        .chain(b.as_object())
        .flat_map(|o| o.keys())
        .collect();
    keys.into_iter()
        .filter(|k| a.get(k.as_str()) != b.get(k.as_str()))
        .map(|k| {
            let show = |v: Option<&serde_json::Value>| {
                v.filter(|v| !v.is_null())
                    .map_or("(none)".to_string(), |v| v.to_string())
            };
            format!(
                "{k}: {} → {}",
                show(a.get(k.as_str())),
                show(b.get(k.as_str()))
            )
        })
        .collect()
}

/// The steps that bring `current` to `desired`; subscriptions no file
/// declares are removed (their views emptied when `empty_removed`).
/// Which subscriptions on the control topic a set of files speaks for:
/// those it may change, and remove when `--prune` says so. Others are never
/// touched, so one team's files cannot remove another team's
/// subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// The subscribers the files name (a province's team owns its own).
    #[default]
    Subscribers,
    /// The datasets the files name (a ministry's team owns who reads them).
    Datasets,
    /// Every subscription: the files are the bus's whole set.
    All,
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "subscribers" => Ok(Self::Subscribers),
            "datasets" => Ok(Self::Datasets),
            "all" => Ok(Self::All),
            other => Err(format!(
                "{other:?} is not a scope: say subscribers, datasets or all"
            )),
        }
    }
}

impl Scope {
    /// Whether the subscription named `name` (`subscriber/owner.dataset`)
    /// is in the scope of `desired`.
    fn covers(self, name: &str, desired: &[SubscriptionSpec]) -> bool {
        let (subscriber, dataset) = name.split_once('/').unwrap_or((name, ""));
        match self {
            Scope::All => true,
            Scope::Subscribers => desired.iter().any(|s| s.file.subscriber == subscriber),
            Scope::Datasets => desired
                .iter()
                .any(|s| s.file.dataset.to_string() == dataset),
        }
    }
}

/// What applying a set of files does: its steps, and the subscriptions in
/// its scope that no file declares but that stay in force without
/// `--prune`.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Adds, changes and (with prune) removals.
    pub steps: Vec<Step>,
    /// In scope, declared by no file, kept (prune would remove them).
    pub kept: Vec<String>,
}

/// The steps that put `desired` in force within `scope`; subscriptions in
/// scope that no file declares are removed with `prune`, else kept and
/// listed.
pub fn plan_scoped(
    current: &ControlSet,
    desired: &[SubscriptionSpec],
    scope: Scope,
    prune: bool,
    empty_removed: bool,
) -> Result<Plan, ControlError> {
    let all = plan(current, desired, empty_removed)?;
    let mut out = Plan::default();
    for step in all {
        match step {
            Step::Remove { ref name, .. } if !scope.covers(name, desired) => {}
            Step::Remove { name, .. } if !prune => out.kept.push(name),
            other => out.steps.push(other),
        }
    }
    Ok(out)
}

/// The steps that make the control topic hold exactly `desired` (every
/// subscription no file declares is removed).
pub fn plan(
    current: &ControlSet,
    desired: &[SubscriptionSpec],
    empty_removed: bool,
) -> Result<Vec<Step>, ControlError> {
    let mut by_name: BTreeMap<String, &SubscriptionSpec> = BTreeMap::new();
    for s in desired {
        if let Some(first) = by_name.insert(s.name(), s) {
            return Err(ControlError::Duplicate {
                name: s.name(),
                first: first.origin.clone(),
                second: s.origin.clone(),
            });
        }
    }
    let mut steps = Vec::new();
    for (name, s) in &by_name {
        match current.get(name).and_then(ControlValue::active) {
            None => steps.push(Step::Add((*s).clone())),
            Some(old) if *old != s.file => steps.push(Step::Change {
                to: (*s).clone(),
                what: changed_fields(old, &s.file),
            }),
            Some(_) => {}
        }
    }
    for (name, v) in current {
        if v.active().is_some() && !by_name.contains_key(name) {
            steps.push(Step::Remove {
                name: name.clone(),
                empty_view: empty_removed,
            });
        }
    }
    Ok(steps)
}

/// `govbus subscriptions apply`: validates `catalog.subscriptions` as a
/// router compiles them, plans the steps from the control topic's content
/// and, unless `dry_run`, writes them. Returns the steps.
pub fn apply(
    kafka: &KafkaConfig,
    topics: &govbus_core::Topics,
    catalog: &govbus_core::Catalog,
    empty_removed: bool,
    dry_run: bool,
) -> Result<Vec<Step>, ControlError> {
    crate::views::compile(catalog, topics)?;
    // Tags are policy: nothing is put in force that keeps a PII field
    // without its legal basis, or a SENSITIVE one unnamed.
    catalog.check_policy()?;
    let topic = topics.subscriptions();
    ensure(kafka, &topic)?;
    let current = read(kafka, &topic)?;
    let steps = plan(&current, &catalog.subscriptions, empty_removed)?;
    if !dry_run && !steps.is_empty() {
        write(kafka, &topic, &steps)?;
    }
    Ok(steps)
}

/// `govbus subscriptions apply` for one team's files: validates them as a
/// router compiles them, plans within `scope` (removing what is absent only
/// with `prune`) and, unless `dry_run`, writes the steps.
pub fn apply_scoped(
    kafka: &KafkaConfig,
    topics: &govbus_core::Topics,
    catalog: &govbus_core::Catalog,
    scope: Scope,
    prune: bool,
    empty_removed: bool,
    dry_run: bool,
) -> Result<Plan, ControlError> {
    crate::views::compile(catalog, topics)?;
    catalog.check_policy()?;
    let topic = topics.subscriptions();
    ensure(kafka, &topic)?;
    let current = read(kafka, &topic)?;
    let p = plan_scoped(
        &current,
        &catalog.subscriptions,
        scope,
        prune,
        empty_removed,
    )?;
    if !dry_run && !p.steps.is_empty() {
        write(kafka, &topic, &p.steps)?;
    }
    Ok(p)
}

/// Who is applying: `$USER@$HOSTNAME`, for the record.
pub fn applier() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    format!("{user}@{host}")
}

/// Writes `steps` to the control topic (creating it if missing) and waits
/// for the broker's acknowledgement.
pub fn write(kafka: &KafkaConfig, topic: &str, steps: &[Step]) -> Result<(), ControlError> {
    let err = |source| ControlError::Kafka {
        topic: topic.to_string(),
        source,
    };
    ensure(kafka, topic)?;
    let producer: BaseProducer<Acks> = kafka
        .producer()
        .create_with_context(Acks::default())
        .map_err(err)?;
    let by = applier();
    let at = govbus_core::now_ms();
    for step in steps {
        let value = match step {
            Step::Add(s) | Step::Change { to: s, .. } => ControlValue::Active {
                subscription: Box::new(s.file.clone()),
                origin: s.origin.clone(),
                applied_by: by.clone(),
                applied_at_ms: at,
            },
            Step::Remove { empty_view, .. } => ControlValue::Removed {
                empty_view: *empty_view,
                applied_by: by.clone(),
                applied_at_ms: at,
            },
        };
        let name = step.name();
        let body = serde_json::to_vec(&value).unwrap_or_default();
        let mut record = BaseRecord::to(topic).key(name.as_bytes()).payload(&body);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, r)) if e.rdkafka_error_code().is_some() => {
                    record = r;
                    producer.poll(Duration::from_millis(50));
                }
                Err((e, _)) => return Err(err(e)),
            }
        }
    }
    producer.flush(Duration::from_secs(30)).map_err(err)?;
    // The broker refused a record (no Write grant, the topic gone): said,
    // not reported as applied.
    let refused = producer
        .context()
        .refused
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    match refused {
        Some(e) => Err(err(e)),
        None => Ok(()),
    }
}

/// The first delivery the broker refused, if any.
#[derive(Default)]
struct Acks {
    refused: Mutex<Option<KafkaError>>,
}

impl rdkafka::ClientContext for Acks {}

impl rdkafka::producer::ProducerContext for Acks {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &rdkafka::producer::DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
            if refused.is_none() {
                *refused = Some(e.clone());
            }
        }
    }
}

/// Follows the control topic in the background: the current set and a
/// generation that changes whenever the set does.
#[derive(Debug)]
pub struct Follower {
    set: Mutex<ControlSet>,
    generation: AtomicU64,
    ready: AtomicBool,
    stop: Arc<AtomicBool>,
}

impl Follower {
    /// Starts following `topic` (created if missing) and waits until it
    /// was read to its end once, at most `catch_up`.
    pub fn start(
        kafka: &KafkaConfig,
        topic: &str,
        catch_up: Duration,
    ) -> Result<Arc<Self>, ControlError> {
        ensure(kafka, topic)?;
        let deadline = Instant::now() + catch_up;
        let tail = Tail::open(
            kafka.consumer(&format!("govbus-control-{}", uuid::Uuid::new_v4())),
            topic,
            catch_up,
        )?
        .settle_at(kafka.follow_wait_ms);
        let me = Arc::new(Self {
            set: Mutex::new(ControlSet::new()),
            generation: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            stop: Arc::new(AtomicBool::new(false)),
        });
        let f = me.clone();
        tail.spawn(
            "govbus-control",
            me.stop.clone(),
            Duration::from_millis(200),
            move |t| match t {
                Tailed::Record(m) => {
                    if let Some((k, v)) = decode(m.key().unwrap_or_default(), m.payload()) {
                        let mut set = f.set.lock().unwrap_or_else(|p| p.into_inner());
                        if set.get(&k) != Some(&v) {
                            tracing::info!(subscription = k, record = ?v, "subscription record read");
                            set.insert(k, v);
                            f.generation.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
                Tailed::CaughtUp => f.ready.store(true, Ordering::SeqCst),
                Tailed::Idle => {}
            },
        )?;
        while !me.ready.load(Ordering::SeqCst) {
            if Instant::now() > deadline {
                me.stop();
                return Err(ControlError::NotCaughtUp {
                    topic: topic.to_string(),
                    secs: catch_up.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(me)
    }

    /// The generation: changes whenever the set does.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The set and its generation.
    pub fn snapshot(&self) -> (u64, ControlSet) {
        let set = self.set.lock().unwrap_or_else(|p| p.into_inner());
        (self.generation(), set.clone())
    }

    /// Stops following.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use govbus_core::catalog::parse_subscription;

    fn spec(file: &str, filter: &str) -> SubscriptionSpec {
        let sub = file.split('.').next().unwrap();
        parse_subscription(
            file,
            &format!("subscriber = \"{sub}\"\ndataset = \"bca.residents\"\nfilter = '{filter}'\n"),
        )
        .unwrap()
    }

    fn active(s: &SubscriptionSpec) -> ControlValue {
        ControlValue::Active {
            subscription: Box::new(s.file.clone()),
            origin: s.origin.clone(),
            applied_by: "t".into(),
            applied_at_ms: 1,
        }
    }

    #[test]
    fn a_teams_files_change_only_their_scope_and_remove_only_with_prune() {
        let sub = |who: &str, ds: &str| {
            parse_subscription(
                &format!("{who}.toml"),
                &format!("subscriber = \"{who}\"\ndataset = \"{ds}\"\nfilter = 'true'\n"),
            )
            .unwrap()
        };
        let active = |s: &SubscriptionSpec| ControlValue::Active {
            subscription: Box::new(s.file.clone()),
            origin: s.origin.clone(),
            applied_by: "t".into(),
            applied_at_ms: 0,
        };
        let mut current = ControlSet::new();
        for s in [
            sub("p52", "bca.residents"),
            sub("p52", "mof.businesses"),
            sub("p92", "bca.residents"),
        ] {
            current.insert(s.name(), active(&s));
        }
        // p52's team applies a directory holding only its new file.
        let mine = [sub("p52", "moha.admin_units")];
        let p = plan_scoped(&current, &mine, Scope::Subscribers, false, false).unwrap();
        assert!(matches!(&p.steps[..], [Step::Add(s)] if s.name() == "p52/moha.admin_units"));
        assert_eq!(p.kept, ["p52/bca.residents", "p52/mof.businesses"]);
        // With --prune, p52's others go; p92's is never touched.
        let p = plan_scoped(&current, &mine, Scope::Subscribers, true, false).unwrap();
        let names: Vec<String> = p.steps.iter().map(|s| s.to_string()).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(names.iter().all(|n| !n.contains("p92")), "{names:?}");
        // A ministry's team scoped to its dataset.
        let theirs = [sub("p92", "mof.businesses")];
        let p = plan_scoped(&current, &theirs, Scope::Datasets, true, false).unwrap();
        let names: Vec<String> = p.steps.iter().map(Step::name).collect();
        assert_eq!(names, ["p92/mof.businesses", "p52/mof.businesses"]);
        // The whole set: as before.
        let p = plan_scoped(&current, &theirs, Scope::All, true, false).unwrap();
        assert_eq!(p.steps.len(), 4);
    }

    #[test]
    fn plan_adds_changes_and_removes() {
        let a = spec("p1.toml", "true");
        let b = spec("p2.toml", "true");
        let c = spec("p3.toml", "true");
        let mut current = ControlSet::new();
        current.insert(a.name(), active(&a));
        current.insert(b.name(), active(&b));
        current.insert(
            "p9/bca.residents".into(),
            ControlValue::Removed {
                empty_view: true,
                applied_by: "t".into(),
                applied_at_ms: 1,
            },
        );
        let b2 = spec("p2.toml", "false");
        let steps = plan(&current, &[b2.clone(), c.clone()], true).unwrap();
        assert_eq!(steps.len(), 3, "{steps:?}");
        assert_eq!(steps[1], Step::Add(c));
        let Step::Change { what, .. } = &steps[0] else {
            panic!("{steps:?}")
        };
        assert_eq!(what, &vec!["filter: \"true\" → \"false\"".to_string()]);
        assert_eq!(
            steps[2],
            Step::Remove {
                name: "p1/bca.residents".into(),
                empty_view: true
            }
        );
        assert!(steps[2].to_string().contains("emptied"));
        // Applying the same files again changes nothing.
        let mut now = ControlSet::new();
        now.insert(b2.name(), active(&b2));
        assert!(plan(&now, &[b2], false).unwrap().is_empty());
    }

    #[test]
    fn two_files_for_one_subscription_are_refused() {
        let a = spec("p1.toml", "true");
        let mut b = spec("p1.toml", "false");
        b.origin = "other.toml".into();
        let e = plan(&ControlSet::new(), &[a, b], false).unwrap_err();
        assert!(e.to_string().contains("other.toml"), "{e}");
    }

    #[test]
    fn records_round_trip_and_bad_ones_are_skipped() {
        let a = spec("p1.toml", "true");
        let v = active(&a);
        let bytes = serde_json::to_vec(&v).unwrap();
        assert_eq!(decode(b"p1/bca.residents", Some(&bytes)).unwrap().1, v);
        assert!(decode(b"x", Some(b"{not json")).is_none());
        assert!(matches!(
            decode(b"x", None).unwrap().1,
            ControlValue::Removed {
                empty_view: false,
                ..
            }
        ));
    }

    /// Arbitrary control records (key and value split at 0xfe) are decoded
    /// or skipped, and a decoded one compiles into a view or is refused:
    /// never a panic.
    #[test]
    fn fuzz_control_records_never_panic() {
        let a = spec("p1.toml", "permanent_address.province_code == \"52\"");
        let mut seed = b"p1/bca.residents".to_vec();
        seed.push(0xfe);
        seed.extend(serde_json::to_vec(&active(&a)).unwrap());
        let catalog = govbus_core::Catalog::builtin();
        govbus_core::fuzz::run("control", &[seed], 20_000, |d| {
            let (k, v) = match d.iter().position(|b| *b == 0xfe) {
                Some(i) => (&d[..i], Some(&d[i + 1..])),
                None => (d, None),
            };
            if let Some((_, ControlValue::Active { subscription, .. })) = decode(k, v) {
                let spec = govbus_core::SubscriptionSpec {
                    file: *subscription,
                    origin: "fuzz".into(),
                    filter_line: None,
                };
                let _ =
                    crate::views::compile_spec(&catalog, &govbus_core::Topics::default(), &spec);
            }
        });
    }
}
