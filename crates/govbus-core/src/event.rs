//! Internal events: each observable thing an agent does (a change
//! dead-lettered, a transaction aborted, a stall) is one type whose
//! [`InternalEvent::emit`] writes its log line and moves its metric
//! together, so logs and metrics never disagree. The types live beside the
//! code that raises them (each crate's `events` module); metric names end
//! in `_total` for counters and their labels are bounded (agency, dataset,
//! subscriber, stage, reason): never an error string or an entity id.

/// An observable event: logs and counts once, when emitted.
pub trait InternalEvent {
    /// Writes the log line and moves the metric.
    fn emit(self);
}
