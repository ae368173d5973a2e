//! Readiness, as an agent reports it to `/readyz`: ready, or not with the
//! reason in words. Shared between the agent's work and its HTTP server.

use std::sync::Mutex;

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

    /// Ready, or the reason it is not.
    pub fn get(&self) -> Result<(), String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
