//! Polling a batch of records, fenced against rebalances.

/// How long an agent's loop waits for a first record before it does its
/// periodic chores (lag, readiness, stall watch) and polls again. A poll
/// returns as soon as a record is there, so the wait costs no latency;
/// it is what an idle agent wakes up for, so it is not short (100 ms was
/// ten wake-ups a second per loop with nothing to do).
pub const IDLE_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// Fills `batch` (cleared first) with up to `max` records: waits at most
/// `linger` for the first, then takes what the client has already fetched
/// (no further waiting), so a batch is large under load and a lone change
/// is not held back. Consumer errors are logged and skipped (librdkafka
/// retries them itself).
///
/// The records stay librdkafka's (borrowed, not copied): detaching each
/// one (key, payload, headers and topic name copied, then freed) was 40 %
/// of the router thread's time in a profile (docs/BENCHMARKS.md).
pub fn poll_batch<'c, C: rdkafka::consumer::ConsumerContext>(
    consumer: &'c rdkafka::consumer::BaseConsumer<C>,
    batch: &mut Vec<rdkafka::message::BorrowedMessage<'c>>,
    max: usize,
    linger: std::time::Duration,
) {
    poll_batch_fenced(consumer, batch, max, linger, &|| 0);
}

/// [`poll_batch`] for a consumer in a group: `rebalances` counts the
/// group's rebalances (bumped by the consumer's context, whose callbacks
/// run inside `poll`). The records taken before a rebalance are dropped
/// from the batch: their partitions were revoked, and whoever holds them
/// now (this consumer again, or another) starts from the committed offset
/// and reads them again. Routing them too, with offsets committed under
/// the new generation, delivered them twice.
pub fn poll_batch_fenced<'c, C: rdkafka::consumer::ConsumerContext>(
    consumer: &'c rdkafka::consumer::BaseConsumer<C>,
    batch: &mut Vec<rdkafka::message::BorrowedMessage<'c>>,
    max: usize,
    linger: std::time::Duration,
    rebalances: &dyn Fn() -> u64,
) {
    batch.clear();
    let deadline = std::time::Instant::now() + linger;
    let mut seen = rebalances();
    while batch.len() < max {
        let wait = if batch.is_empty() {
            deadline.saturating_duration_since(std::time::Instant::now())
        } else {
            std::time::Duration::ZERO
        };
        let polled = consumer.poll(wait);
        let now = rebalances();
        if now != seen {
            seen = now;
            if !batch.is_empty() {
                tracing::info!(
                    dropped = batch.len(),
                    "a rebalance came while polling; the records taken before it are read again by their new owner"
                );
                batch.clear();
            }
        }
        match polled {
            Some(Ok(m)) => batch.push(m),
            Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
            None => break,
        }
        if batch.is_empty() && std::time::Instant::now() >= deadline {
            break;
        }
    }
}
