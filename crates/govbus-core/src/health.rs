//! Readiness, as an agent reports it to `/readyz`: ready, or not with the
//! reason in words. Shared between the agent's work and its HTTP server.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// How far behind its inputs an agent may be and still be ready: records
/// not yet consumed, summed over its input partitions.
pub const CAUGHT_UP: i64 = 10_000;

/// Ready when the backlog is known and at most [`CAUGHT_UP`].
pub fn caught_up(backlog: Option<i64>) -> Result<(), String> {
    match backlog {
        None => Err("lag not measured yet".into()),
        Some(n) if n > CAUGHT_UP => Err(format!(
            "catching up: {n} records behind (ready at {CAUGHT_UP} or fewer)"
        )),
        Some(_) => Ok(()),
    }
}

/// Whether an agent is ready to do its work, and why not.
#[derive(Debug)]
pub struct Readiness(Mutex<Result<(), String>>);

impl Default for Readiness {
    fn default() -> Self {
        Self(Mutex::new(Err("starting".into())))
    }
}

impl Readiness {
    /// Not ready yet: starting.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ready.
    pub fn ready(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Ok(());
    }

    /// Not ready, because of `reason`.
    pub fn not_ready(&self, reason: impl Into<String>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Err(reason.into());
    }

    /// Sets ready when `check` holds, else not ready with its reason.
    pub fn set(&self, check: Result<(), String>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = check;
    }

    /// Ready, or the reason it is not. A thread of the process that failed
    /// ([`spawn_watched`]) makes every readiness of the process not ready,
    /// naming it.
    pub fn get(&self) -> Result<(), String> {
        if let Some((thread, reason)) = failures().into_iter().next() {
            return Err(format!("thread {thread} failed: {reason}"));
        }
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The threads of this process that failed: (name, why).
static FAILED: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// Records that the thread `name` failed: logged at ERROR, counted in
/// `govbus_thread_failures_total{thread}`, and every readiness of the
/// process answers not ready from now on.
pub fn thread_failed(name: &str, reason: &str) {
    tracing::error!(
        thread = name,
        reason,
        "a thread of this agent failed: the agent is not ready and stops"
    );
    metrics::counter!("govbus_thread_failures_total", "thread" => name.to_string()).increment(1);
    FAILED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((name.to_string(), reason.to_string()));
}

/// The threads that failed so far.
pub fn failures() -> Vec<(String, String)> {
    FAILED.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Runs `f` on a thread named `name`, watched: a panic, or a return while
/// `stop` is unset (a follower that must run until told to stop), is a
/// [`thread_failed`], never a thread that died while the rest runs on
/// stale state.
pub fn spawn_watched(
    name: &str,
    stop: Option<Arc<AtomicBool>>,
    f: impl FnOnce() + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let thread = name.to_string();
    std::thread::Builder::new()
        .name(thread.clone())
        .spawn(
            move || match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                Err(p) => {
                    let why = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "panicked".into());
                    thread_failed(&thread, &format!("panicked: {why}"));
                }
                Ok(()) => {
                    if stop.is_some_and(|s| !s.load(Ordering::Relaxed)) {
                        thread_failed(&thread, "stopped before it was asked to");
                    }
                }
            },
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_that_panics_makes_the_agent_not_ready_naming_it() {
        let ready = Readiness::new();
        ready.ready();
        assert!(ready.get().is_ok());
        let stop = Arc::new(AtomicBool::new(false));
        let h = spawn_watched("follower-test", Some(stop), || {
            let v: Vec<u8> = Vec::new();
            // An out-of-bounds index, as input might once have caused.
            let _ = v[usize::from(v.is_empty())];
        })
        .unwrap();
        h.join().unwrap();
        let why = ready.get().unwrap_err();
        assert!(
            why.contains("follower-test") && why.contains("panicked"),
            "{why}"
        );
    }
}
