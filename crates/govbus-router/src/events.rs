//! The router's internal events: each logs and counts together
//! ([`InternalEvent`]). Metric names and labels are part of the dashboards'
//! contract (docs/OPERATIONS.md) and do not change.

use govbus_core::InternalEvent;

use govbus_core::dead::DeadLetter;

/// A change that could not be routed went to its input's DLQ.
#[derive(Debug)]
pub struct DeadLettered<'a> {
    /// The input's dataset.
    pub dataset: &'a str,
    /// Why, and where from.
    pub dead: &'a DeadLetter,
}

impl InternalEvent for DeadLettered<'_> {
    fn emit(self) {
        let d = self.dead;
        tracing::warn!(
            topic = d.topic,
            partition = d.partition,
            offset = d.offset,
            reason = d.reason,
            error = d.error,
            "change sent to the DLQ"
        );
        metrics::counter!("govbus_router_dlq_total", "dataset" => self.dataset.to_string(), "reason" => d.reason)
            .increment(1);
    }
}

/// An input partition held at a record whose writer schema cannot be
/// fetched now; read again from there after a back-off, while the other
/// partitions and datasets go on.
#[derive(Debug)]
pub struct Held<'a> {
    /// The input's dataset.
    pub dataset: &'a str,
    /// The input topic.
    pub topic: &'a str,
    /// Its partition.
    pub partition: i32,
    /// The record held at.
    pub offset: i64,
    /// Why.
    pub error: &'a govbus_schema::EnvelopeError,
}

impl InternalEvent for Held<'_> {
    fn emit(self) {
        tracing::warn!(
            dataset = self.dataset,
            topic = self.topic,
            partition = self.partition,
            offset = self.offset,
            error = %self.error,
            "writer schema unavailable; holding this partition and routing the others"
        );
        metrics::counter!("govbus_router_held_total", "dataset" => self.dataset.to_string())
            .increment(1);
    }
}

/// Why a subscription of the control topic is not routed.
#[derive(Debug, Clone, Copy)]
pub enum Refusal {
    /// It does not compile against the catalog.
    Invalid,
    /// The registry refused its view schema.
    ViewSchema,
}

/// A subscription left out of the live set; the others are routed.
#[derive(Debug)]
pub struct SubscriptionRefused<'a> {
    /// `subscriber/dataset`.
    pub subscription: &'a str,
    /// Why.
    pub refusal: Refusal,
    /// The error in words.
    pub error: &'a dyn std::error::Error,
}

impl InternalEvent for SubscriptionRefused<'_> {
    fn emit(self) {
        let (reason, why) = match self.refusal {
            Refusal::Invalid => ("invalid", "it does not compile"),
            Refusal::ViewSchema => ("view_schema", "the registry refused its view schema"),
        };
        tracing::error!(subscription = self.subscription, error = %self.error, "subscription left out: {why}");
        metrics::counter!("govbus_subscription_refused_total", "reason" => reason).increment(1);
    }
}

/// An entity left out of a backfill (its last change does not decode, or
/// does not route); it was dead-lettered when it was routed live.
#[derive(Debug)]
pub struct BackfillSkipped<'a> {
    /// The input topic.
    pub topic: &'a str,
    /// Its partition.
    pub partition: i32,
    /// The input's dataset.
    pub dataset: &'a str,
    /// The view, when the change decoded.
    pub view: Option<&'a str>,
    /// A bounded reason.
    pub reason: &'static str,
}

impl InternalEvent for BackfillSkipped<'_> {
    fn emit(self) {
        tracing::warn!(
            topic = self.topic,
            partition = self.partition,
            view = self.view,
            reason = self.reason,
            "entity left out of a backfill"
        );
        metrics::counter!("govbus_router_backfill_skipped_total", "dataset" => self.dataset.to_string(), "reason" => self.reason)
            .increment(1);
    }
}

/// How a transaction ended.
#[derive(Debug)]
pub enum TransactionEnded<'a> {
    /// Committed, with how many input changes and how long it was open.
    Committed {
        /// Input changes of the batch.
        changes: usize,
        /// Milliseconds from begin to commit.
        commit_ms: f64,
    },
    /// Aborted: the routing thread stopped before the batch's last chunk.
    Abandoned,
    /// Aborted because it failed.
    Aborted {
        /// Why.
        error: &'a dyn std::error::Error,
    },
}

impl InternalEvent for TransactionEnded<'_> {
    fn emit(self) {
        let result = match self {
            TransactionEnded::Committed { changes, commit_ms } => {
                tracing::debug!(changes, commit_ms, "batch committed");
                "committed"
            }
            TransactionEnded::Abandoned => {
                tracing::info!("aborting the transaction of a batch routed in part");
                "aborted"
            }
            TransactionEnded::Aborted { error } => {
                tracing::warn!(%error, "transaction failed; aborting it");
                "aborted"
            }
        };
        metrics::counter!("govbus_router_transactions_total", "result" => result).increment(1);
    }
}

/// The router held a backlog and consumed nothing for too long.
#[derive(Debug)]
pub struct Stalled {
    /// Seconds without a record.
    pub idle_secs: u64,
    /// Records past the position.
    pub backlog: i64,
}

impl InternalEvent for Stalled {
    fn emit(self) {
        tracing::warn!(
            idle_secs = self.idle_secs,
            backlog = self.backlog,
            "router stalled: consumed nothing while records waited; starting a new session"
        );
        metrics::counter!("govbus_router_stalls_total").increment(1);
    }
}

/// The broker returned records already routed in this session (Kafka never
/// does); they were not routed again.
#[derive(Debug)]
pub struct Refetched<'a> {
    /// The first such record's topic.
    pub topic: &'a str,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// The partition's floor.
    pub next: i64,
    /// How many in the batch.
    pub count: u64,
}

impl InternalEvent for Refetched<'_> {
    fn emit(self) {
        tracing::warn!(
            topic = self.topic,
            partition = self.partition,
            offset = self.offset,
            next = self.next,
            count = self.count,
            "the broker returned records already routed; not routing them again"
        );
        metrics::counter!("govbus_router_refetched_total").increment(self.count);
    }
}

/// A control-topic record that does not decode was skipped.
#[derive(Debug)]
pub struct ControlSkipped<'a> {
    /// The record's key.
    pub subscription: &'a str,
    /// Why.
    pub error: &'a dyn std::error::Error,
}

impl InternalEvent for ControlSkipped<'_> {
    fn emit(self) {
        tracing::warn!(subscription = self.subscription, error = %self.error, "skipping a control record that does not decode");
        metrics::counter!("govbus_control_skipped_total").increment(1);
    }
}

/// The input partitions this instance holds changed.
#[derive(Debug)]
pub struct AssignmentChanged<'a> {
    /// Input topic → (dataset, views).
    pub inputs: &'a std::collections::HashMap<String, (String, Vec<usize>)>,
    /// The partitions held now.
    pub held: &'a std::collections::BTreeSet<(String, i32)>,
}

impl InternalEvent for AssignmentChanged<'_> {
    fn emit(self) {
        tracing::info!(partitions = ?self.held, "assignment changed");
        for (topic, (dataset, _)) in self.inputs {
            if govbus_core::Topics::is_replay(topic) {
                continue;
            }
            let n = self.held.iter().filter(|(t, _)| t == topic).count();
            metrics::gauge!("govbus_router_partitions", "dataset" => dataset.clone()).set(n as f64);
        }
    }
}
