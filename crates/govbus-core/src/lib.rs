//! Shared vocabulary of govbus: agencies, datasets, subscriptions (as files),
//! topic names, the administrative map, report specifications, dead
//! letters' shape, secrets as configuration values, readiness and the
//! internal-event habit.
//!
//! Nothing here talks to the network or a database (its Cargo.toml names no
//! such crate): Kafka is `govbus-kafka-client`'s, HTTP `govbus-http`'s,
//! PostgreSQL `govbus-pg`'s. Every other crate builds on these words.

pub mod admin_map;
pub mod catalog;
pub mod codes;
pub mod dead;
pub mod event;
pub mod files;
pub mod fuzz;
pub mod health;
pub mod report;
pub mod secret;
pub mod stall;
pub mod topics;

pub use catalog::{
    Catalog, CatalogError, DatasetId, DatasetSpec, SubscriptionFile, SubscriptionSpec,
};
pub use event::InternalEvent;
pub use topics::Topics;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
