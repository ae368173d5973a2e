//! Shared vocabulary of govbus: agencies, datasets, subscriptions (as files),
//! topic names and Kafka client settings.
//!
//! Nothing here talks to the network; every other crate builds on these types.

pub mod admin_map;
pub mod catalog;
pub mod codes;
pub mod dead;
pub mod event;
pub mod health;
pub mod http_body;
// The one module that calls C: librdkafka's ACL admin API (see its docs).
#[allow(unsafe_code)]
pub mod acl;
pub mod fuzz;
pub mod https;
pub mod kafka;
pub mod pg;
pub mod report;
pub mod secret;
pub mod stall;
pub mod tail;
pub mod topics;

pub use catalog::{
    Catalog, CatalogError, DatasetId, DatasetSpec, SubscriptionFile, SubscriptionSpec,
};
pub use event::InternalEvent;
pub use kafka::KafkaConfig;
pub use topics::Topics;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
