//! The province consumer's internal events: each logs and counts together
//! ([`InternalEvent`]). Metric names and labels do not change: dashboards
//! depend on them.

use govbus_core::InternalEvent;

use crate::change::{Applied, Dead};

/// A batch applied with its offsets, in one transaction.
#[derive(Debug)]
pub struct BatchApplied<'a> {
    /// The subscriber.
    pub subscriber: &'a str,
    /// Changes in the batch.
    pub changes: usize,
    /// What the sink did.
    pub done: Applied,
    /// Source time (ms) of the batch's last change.
    pub last_source_ms: Option<i64>,
    /// Milliseconds spent polling, decoding and applying.
    pub poll_ms: f64,
    /// Decoding.
    pub decode_ms: f64,
    /// Applying.
    pub apply_ms: f64,
}

impl InternalEvent for BatchApplied<'_> {
    fn emit(self) {
        tracing::debug!(
            changes = self.changes,
            upserts = self.done.upserts,
            deletes = self.done.deletes,
            stale = self.done.stale,
            poll_ms = self.poll_ms,
            decode_ms = self.decode_ms,
            apply_ms = self.apply_ms,
            "batch applied"
        );
        let sub = self.subscriber.to_string();
        metrics::counter!("govbus_consumer_applied_total", "subscriber" => sub.clone(), "op" => "upsert")
            .increment(self.done.upserts);
        metrics::counter!("govbus_consumer_applied_total", "subscriber" => sub.clone(), "op" => "delete")
            .increment(self.done.deletes);
        metrics::counter!("govbus_consumer_stale_total", "subscriber" => sub.clone())
            .increment(self.done.stale);
        if let Some(ts) = self.last_source_ms {
            let age = (govbus_core::now_ms() - ts).max(0) as f64 / 1000.0;
            metrics::gauge!("govbus_consumer_freshness_seconds", "subscriber" => sub).set(age);
        }
    }
}

/// A batch the sink could not apply; it is retried, nothing is skipped.
#[derive(Debug)]
pub struct ApplyFailed<'a> {
    /// The subscriber.
    pub subscriber: &'a str,
    /// Attempts so far.
    pub attempt: u32,
    /// Why.
    pub error: &'a dyn std::error::Error,
}

impl InternalEvent for ApplyFailed<'_> {
    fn emit(self) {
        tracing::error!(error = %self.error, attempt = self.attempt, "cannot apply batch; retrying (nothing is skipped)");
        metrics::counter!("govbus_consumer_apply_errors_total", "subscriber" => self.subscriber.to_string())
            .increment(1);
    }
}

/// The consumer held a backlog and applied nothing for too long; a new
/// session starts from the stored offsets with a longer fetch wait.
#[derive(Debug)]
pub struct Stalled<'a> {
    /// The subscriber.
    pub subscriber: &'a str,
    /// Why (idle time and backlog).
    pub error: &'a dyn std::error::Error,
    /// The fetch wait before.
    pub was_ms: u32,
    /// The fetch wait of the next session.
    pub now_ms: u32,
}

impl InternalEvent for Stalled<'_> {
    fn emit(self) {
        tracing::warn!(subscriber = self.subscriber, error = %self.error, was_ms = self.was_ms, now_ms = self.now_ms, "consumer stalled; starting a new session from the stored offsets, letting the broker hold a fetch longer");
        metrics::counter!("govbus_consumer_stalls_total", "subscriber" => self.subscriber.to_string())
            .increment(1);
    }
}

/// A record of a view went to `dlq.consume.<subscriber>`; the consumer goes
/// on.
#[derive(Debug)]
pub struct DeadLettered<'a> {
    /// The subscriber.
    pub subscriber: &'a str,
    /// The record and why.
    pub dead: &'a Dead,
}

impl InternalEvent for DeadLettered<'_> {
    fn emit(self) {
        let d = self.dead;
        tracing::warn!(
            subscriber = self.subscriber,
            topic = d.topic,
            partition = d.partition,
            offset = d.offset,
            key = d.key,
            reason = d.reason,
            error = d.error,
            "record sent to the DLQ; the entity is marked stale"
        );
        metrics::counter!("govbus_consumer_dlq_total", "subscriber" => self.subscriber.to_string(), "reason" => d.reason)
            .increment(1);
    }
}

/// A row a report's filter failed on: it is left out of the report (a
/// rebuild leaves it out too).
#[derive(Debug)]
pub struct Uncounted<'a> {
    /// The report.
    pub report: &'a crate::report::Report,
    /// The row's key.
    pub key: &'a str,
    /// Why.
    pub error: &'a crate::report::ReportError,
}

impl InternalEvent for Uncounted<'_> {
    fn emit(self) {
        tracing::warn!(report = %self.report.id(), key = self.key, error = %self.error, "a row could not be counted; it is left out of the report");
        metrics::counter!("govbus_report_uncounted_total", "report" => self.report.id())
            .increment(1);
    }
}

/// Report figures published on `report.<subscriber>.<name>`.
#[derive(Debug)]
pub struct ReportPublished<'a> {
    /// The report.
    pub report: &'a str,
    /// Figures (records) published.
    pub figures: usize,
    /// Whether every figure was sent (at start) or only those a batch changed.
    pub all: bool,
}

impl InternalEvent for ReportPublished<'_> {
    fn emit(self) {
        if self.all {
            tracing::info!(
                report = self.report,
                figures = self.figures,
                "report published in full"
            );
        } else {
            tracing::debug!(
                report = self.report,
                figures = self.figures,
                "report figures published"
            );
        }
        metrics::counter!("govbus_report_published_total", "report" => self.report.to_string())
            .increment(self.figures as u64);
    }
}

/// A report's snapshot was due but could not be stored yet; it is tried
/// again in a few seconds.
#[derive(Debug)]
pub struct SnapshotDeferred<'a> {
    /// The report.
    pub report: &'a str,
    /// The period end it freezes.
    pub at: chrono::NaiveDate,
    /// Why.
    pub error: &'a dyn std::error::Error,
}

impl InternalEvent for SnapshotDeferred<'_> {
    fn emit(self) {
        tracing::warn!(report = self.report, at = %self.at, error = %self.error, "snapshot not stored yet; trying again in 5 s");
        metrics::counter!("govbus_report_snapshot_failures_total", "report" => self.report.to_string())
            .increment(1);
    }
}

/// Receipts committed with their rows could not be published yet (the
/// cluster or the database failed for a moment); the next batch sends
/// them from the last acknowledged one.
#[derive(Debug)]
pub struct ReceiptsDeferred<'a> {
    /// The subscriber.
    pub subscriber: &'a str,
    /// Why.
    pub error: &'a dyn std::error::Error,
}

impl InternalEvent for ReceiptsDeferred<'_> {
    fn emit(self) {
        tracing::warn!(subscriber = self.subscriber, error = %self.error, "receipts not published yet; the next batch sends them again");
        metrics::counter!("govbus_consumer_receipts_deferred_total", "subscriber" => self.subscriber.to_string())
            .increment(1);
    }
}

/// A report frozen at the end of its period.
#[derive(Debug)]
pub struct SnapshotFrozen<'a> {
    /// The report.
    pub report: &'a str,
    /// The date it is the report of.
    pub at: chrono::NaiveDate,
    /// The figures' sum.
    pub total: i64,
    /// Its digest.
    pub digest: &'a str,
    /// Whether it was stored now (false: one of that date was stored).
    pub stored: bool,
}

impl InternalEvent for SnapshotFrozen<'_> {
    fn emit(self) {
        tracing::info!(report = self.report, at = %self.at, total = self.total, digest = self.digest, stored = self.stored, "report frozen at the end of its period");
        if self.stored {
            metrics::counter!("govbus_report_snapshots_total", "report" => self.report.to_string())
                .increment(1);
        }
    }
}
