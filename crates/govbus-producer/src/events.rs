//! The ministry agent's internal events: each logs and counts together
//! ([`InternalEvent`]). Metric names and labels do not change: dashboards
//! depend on them.

use govbus_core::InternalEvent;

/// A change refused at ingest (HTTP 4xx, its body says why).
#[derive(Debug)]
pub struct IngestRejected<'a> {
    /// The dataset.
    pub dataset: &'a str,
    /// A bounded reason.
    pub reason: &'static str,
    /// The error in words.
    pub error: &'a str,
}

impl InternalEvent for IngestRejected<'_> {
    fn emit(self) {
        tracing::info!(
            dataset = self.dataset,
            reason = self.reason,
            error = self.error,
            "change rejected"
        );
        metrics::counter!("govbus_ingest_rejected_total", "dataset" => self.dataset.to_string(), "reason" => self.reason)
            .increment(1);
    }
}

/// A data-quality rule did not hold for a change (rejected or flagged, as
/// the rule says).
#[derive(Debug)]
pub struct ContractViolated<'a> {
    /// The dataset.
    pub dataset: &'a str,
    /// The rule's name.
    pub rule: &'a str,
    /// What the rule does about it.
    pub action: govbus_core::catalog::RuleAction,
    /// The evaluation error, when the rule could not be evaluated.
    pub error: Option<&'a str>,
}

impl InternalEvent for ContractViolated<'_> {
    fn emit(self) {
        match self.action {
            // The refusal is logged with the change's rejection.
            govbus_core::catalog::RuleAction::Reject => tracing::debug!(
                dataset = self.dataset,
                rule = self.rule,
                error = self.error,
                "data-quality rule violated; the change is refused"
            ),
            govbus_core::catalog::RuleAction::Warn => tracing::warn!(
                dataset = self.dataset,
                rule = self.rule,
                error = self.error,
                "change accepted despite a failed warn rule"
            ),
        }
        metrics::counter!("govbus_contract_violations_total", "dataset" => self.dataset.to_string(), "rule" => self.rule.to_string())
            .increment(1);
    }
}

/// An outbox row that cannot become a change went to the ingest DLQ.
#[derive(Debug)]
pub struct OutboxRejected<'a> {
    /// The row's id.
    pub id: i64,
    /// The dataset.
    pub dataset: &'a str,
    /// A bounded reason.
    pub reason: &'static str,
    /// The error in words.
    pub error: &'a str,
}

impl InternalEvent for OutboxRejected<'_> {
    fn emit(self) {
        tracing::warn!(
            id = self.id,
            dataset = self.dataset,
            reason = self.reason,
            error = self.error,
            "outbox row sent to the DLQ"
        );
        metrics::counter!("govbus_outbox_rejected_total", "dataset" => self.dataset.to_string(), "reason" => self.reason)
            .increment(1);
    }
}

/// A backfill line written to the rejects file.
#[derive(Debug)]
pub struct BackfillRejected {
    /// The line number.
    pub line: u64,
    /// A bounded reason.
    pub reason: &'static str,
}

impl InternalEvent for BackfillRejected {
    fn emit(self) {
        tracing::debug!(
            line = self.line,
            reason = self.reason,
            "backfill line rejected"
        );
        metrics::counter!("govbus_backfill_rejected_total", "reason" => self.reason).increment(1);
    }
}

/// A lookup record that cannot be read was left out of the lookup.
#[derive(Debug)]
pub struct LookupSkipped<'a> {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// A bounded reason.
    pub reason: &'static str,
    /// Details.
    pub detail: &'a str,
}

impl InternalEvent for LookupSkipped<'_> {
    fn emit(self) {
        // The record stays in the topic (the router dead-letters it for
        // its subscribers); a rule that needs it fails and says so.
        tracing::warn!(
            partition = self.partition,
            offset = self.offset,
            reason = self.reason,
            detail = self.detail,
            "lookup record skipped"
        );
        metrics::counter!("govbus_lookup_skipped_total", "reason" => self.reason).increment(1);
    }
}

/// The relay held changes and none was acknowledged for too long.
#[derive(Debug)]
pub struct RelayStalled {
    /// Seconds without an acknowledgement.
    pub idle_secs: u64,
    /// Changes waiting in the outbox.
    pub backlog: i64,
    /// Changes sent and not acknowledged.
    pub in_flight: usize,
}

impl InternalEvent for RelayStalled {
    fn emit(self) {
        tracing::warn!(
            idle_s = self.idle_secs,
            backlog = self.backlog,
            in_flight = self.in_flight,
            "relay stalled: changes wait in the outbox and none was acknowledged; starting over from the lowest pending change"
        );
        metrics::counter!("govbus_relay_stalls_total").increment(1);
    }
}
