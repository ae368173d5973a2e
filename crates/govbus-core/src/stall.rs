//! Telling a stalled hop from an idle or busy one.
//!
//! A hop (the relay, the router, a province's consumer) is stalled when its
//! input holds records past its position and it consumes nothing for a
//! while. Idle (no backlog) and busy (consuming) are both fine. Whatever the
//! broker or the client does, a stalled agent logs why, counts it and starts
//! a new session; nothing stops silently.

use std::time::{Duration, Instant};

/// Watches one hop; the agent calls [`StallWatch::observe`] once per poll.
#[derive(Debug, Clone)]
pub struct StallWatch {
    limit: Duration,
    since: Option<Instant>,
}

/// What [`StallWatch::observe`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stalled {
    /// How long the hop has consumed nothing.
    pub idle: Duration,
    /// The records waiting past its position.
    pub backlog: i64,
}

impl StallWatch {
    /// A watch that reports after `limit` with a backlog and no progress.
    pub fn new(limit: Duration) -> Self {
        Self { limit, since: None }
    }

    /// The limit.
    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// Notes work that is not consuming (a backfill that brings views in
    /// step, however long it takes): the hop was busy, not stalled, so the
    /// idle time starts again at the next poll.
    pub fn busy(&mut self) {
        self.since = None;
    }

    /// Notes one poll at `now` that consumed `consumed` records while the
    /// backlog was `backlog` (None: not known). Reports a stall once the
    /// hop has held a backlog and consumed nothing for the limit; the watch
    /// then starts over.
    pub fn observe(
        &mut self,
        now: Instant,
        consumed: usize,
        backlog: Option<i64>,
    ) -> Option<Stalled> {
        let backlog = match backlog {
            Some(b) if b > 0 && consumed == 0 => b,
            _ => {
                self.since = None;
                return None;
            }
        };
        let since = *self.since.get_or_insert(now);
        let idle = now.saturating_duration_since(since);
        if idle >= self.limit {
            self.since = None;
            return Some(Stalled { idle, backlog });
        }
        None
    }
}

/// The fetch wait (`fetch.wait.max.ms`) a hop's next session uses after a
/// stall: four times longer, at most 5 s. A broker may answer a fetch that
/// takes it longer than the wait with no records at all, every time (nisshi's
/// memory storage once a partition holds many batches; docs/BROKERS.md): a
/// new session with the same wait would stall again.
pub fn longer_fetch_wait(ms: u32) -> u32 {
    ms.max(10).saturating_mul(4).min(5000)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn work_between_polls_is_not_idle_time() {
        let t0 = Instant::now();
        let mut w = StallWatch::new(S);
        assert_eq!(w.observe(t0, 0, Some(10)), None);
        // A backfill of 5 s between two polls that consume nothing.
        w.busy();
        assert_eq!(w.observe(t0 + 5 * S, 0, Some(10)), None);
        assert_eq!(w.observe(t0 + 5 * S + S / 2, 0, Some(10)), None);
        assert!(w.observe(t0 + 6 * S, 0, Some(10)).is_some());
    }

    #[test]
    fn a_backlog_with_no_progress_for_the_limit_is_a_stall() {
        let mut w = StallWatch::new(10 * S);
        let t = Instant::now();
        assert_eq!(w.observe(t, 0, Some(5)), None);
        assert_eq!(w.observe(t + 9 * S, 0, Some(5)), None);
        assert_eq!(
            w.observe(t + 10 * S, 0, Some(7)),
            Some(Stalled {
                idle: 10 * S,
                backlog: 7
            })
        );
        // Reported once, then watched afresh.
        assert_eq!(w.observe(t + 11 * S, 0, Some(7)), None);
        assert!(w.observe(t + 21 * S, 0, Some(7)).is_some());
    }

    #[test]
    fn each_stall_waits_longer_up_to_five_seconds() {
        assert_eq!(longer_fetch_wait(10), 40);
        assert_eq!(longer_fetch_wait(100), 400);
        assert_eq!(longer_fetch_wait(2000), 5000);
        assert_eq!(longer_fetch_wait(5000), 5000);
        assert_eq!(longer_fetch_wait(0), 40);
    }

    #[test]
    fn idle_or_busy_is_not_a_stall() {
        let mut w = StallWatch::new(10 * S);
        let t = Instant::now();
        assert_eq!(w.observe(t, 0, Some(5)), None);
        // Progress resets the clock.
        assert_eq!(w.observe(t + 9 * S, 3, Some(5)), None);
        assert_eq!(w.observe(t + 18 * S, 0, Some(5)), None);
        // No backlog, or an unknown one, resets it too.
        assert_eq!(w.observe(t + 25 * S, 0, Some(0)), None);
        assert_eq!(w.observe(t + 40 * S, 0, None), None);
        assert_eq!(w.observe(t + 60 * S, 0, Some(0)), None);
    }
}
