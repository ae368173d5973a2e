//! The ministry side of govbus: validate a change, make it durable in the
//! producer's own store with its per-entity sequence and `before`, and relay
//! it in order, idempotently, to the dataset's central topic.
//!
//! ```no_run
//! # fn demo(publisher: &govbus_producer::Publisher) -> Result<(), govbus_producer::SubmitError> {
//! use govbus_producer::ChangeRequest;
//! let accepted = publisher.submit(
//!     "bca.residents",
//!     ChangeRequest::Delete { key: "052090000001".into() },
//! )?;
//! println!("stored as sequence {}", accepted.seq);
//! # Ok(()) }
//! ```

pub mod demo;
pub mod http;
pub mod publisher;
pub mod relay;
pub mod store;

pub use publisher::{Accepted, ChangeRequest, Publisher, SetupError, SubmitError};
pub use relay::Relay;
pub use store::{OutboxStore, PostgresStore, SqliteStore, StoreError};

use std::sync::Arc;

/// Opens the store named by `url`: `sqlite://<path>` (or a bare path) or
/// `postgres://...` (tables in `pg_schema`).
pub fn open_store(url: &str, pg_schema: &str) -> Result<Arc<dyn OutboxStore>, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PostgresStore::open(url, pg_schema)?))
    } else {
        let path = url.strip_prefix("sqlite://").unwrap_or(url);
        Ok(Arc::new(SqliteStore::open(path)?))
    }
}

/// Creates the publisher's central topics if missing (compacted, `partitions`).
pub fn ensure_topics(
    kafka: &govbus_core::KafkaConfig,
    publisher: &Publisher,
    partitions: i32,
) -> Result<(), govbus_core::kafka::KafkaSetupError> {
    let specs: Vec<govbus_core::kafka::TopicSpec> = publisher
        .topics()
        .into_iter()
        .map(|t| govbus_core::kafka::TopicSpec::compacted(t, partitions))
        .collect();
    govbus_core::kafka::ensure_topics(kafka, &specs)
}
