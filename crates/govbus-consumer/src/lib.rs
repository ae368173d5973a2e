//! The province side of govbus: apply a subscriber's views to its own
//! database (PostgreSQL, or SQLite by default), exactly once and in order per
//! entity: offsets live in the same database transaction as the rows, and a
//! change whose entity sequence is not newer than the stored one is skipped.

pub mod build;
pub mod change;
pub mod consumer;
pub mod db;
mod deadletter;
pub mod events;
pub mod publish;
pub mod receipt;
pub mod reconcile;
pub mod report;
pub mod sink;
pub mod snapshot;
pub mod store;
pub mod table;

pub use consumer::{run, run_reporting, status, ConsumerConfig, ConsumerError, Status};
pub use sink::{Opened, Sink, SinkConfig, SinkError, SqlSink};
pub use store::Store;
