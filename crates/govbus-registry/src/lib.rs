//! govbus's schema registry: the Confluent Schema Registry REST API for Avro,
//! stateless, with the compacted `_schemas` Kafka topic as its only storage
//! (Confluent's record layout, so a cluster can move between the two).

// Requests and log records come from outside: no unwrap, expect, panic or
// unchecked indexing outside tests.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod access;
pub mod error;
pub mod http;
pub mod log;
pub mod state;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;

use govbus_kafka_client::KafkaConfig;
use serde::{Deserialize, Serialize};

pub use error::ApiError;
pub use store::{KafkaStore, StoreError};

/// Registry settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// The cluster holding the log.
    pub kafka: KafkaConfig,
    /// The log topic (Confluent's `kafkastore.topic`).
    #[serde(default = "default_topic")]
    pub topic: String,
    /// Replication factor of the log topic when it is created (-1, the
    /// default: the broker's `default.replication.factor`).
    #[serde(default = "broker_default")]
    pub replication: i32,
    /// Where to listen, e.g. `127.0.0.1:8081`.
    pub listen: SocketAddr,
    /// Prefix of the bus's topic names (to know which subject is which
    /// dataset's, for the subscription guard).
    #[serde(default)]
    pub topic_prefix: String,
    /// HTTPS: the registry's certificate and key (none: plain HTTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<govbus_http::ServerTls>,
    /// Who may call it (none: anyone). Reads need any known principal; a
    /// change to a subject needs the agency that writes its topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<govbus_http::HttpAuth>,
    /// IMPORT mode, and registrations that choose their own id or version,
    /// are the operator's: under `[auth]` only admins may; without it, only
    /// when this is true (a migration from another registry).
    #[serde(default)]
    pub import: bool,
    /// The largest request body, in bytes (a schema with its references
    /// and contract); default 4 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<usize>,
}

pub use govbus_schema::Guard;

fn default_topic() -> String {
    "_schemas".into()
}

fn broker_default() -> i32 {
    -1
}

/// A running registry.
#[derive(Debug)]
pub struct RunningRegistry {
    /// The bound address (useful when the config asked for port 0).
    pub addr: SocketAddr,
    /// The server task.
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Opens the store, binds, and serves in a background task.
pub async fn start(cfg: &RegistryConfig) -> Result<RunningRegistry, StartError> {
    start_with(cfg, None).await
}

/// [`start`], with a guard every new version must also pass.
pub async fn start_with(
    cfg: &RegistryConfig,
    guard: Option<Arc<dyn Guard>>,
) -> Result<RunningRegistry, StartError> {
    start_with_policy(cfg, guard, None).await
}

/// [`start_with`], with who may change which subject (under `[auth]`).
pub async fn start_with_policy(
    cfg: &RegistryConfig,
    guard: Option<Arc<dyn Guard>>,
    policy: Option<Arc<dyn access::SubjectPolicy>>,
) -> Result<RunningRegistry, StartError> {
    let tls = cfg.tls.as_ref().map(|t| t.acceptor()).transpose()?;
    let access = match &cfg.auth {
        Some(a) => Some(access::Access {
            credentials: Arc::new(govbus_http::Credentials::load(a)?),
            policy,
        }),
        None => None,
    };
    let store = Arc::new(KafkaStore::open(&cfg.kafka, &cfg.topic, cfg.replication).await?);
    if let Some(g) = guard {
        store.set_guard(g);
    }
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| StartError::Bind(cfg.listen, e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| StartError::Bind(cfg.listen, e))?;
    tracing::info!(%addr, topic = cfg.topic, https = tls.is_some(), auth = access.is_some(), "schema registry listening");
    let app = http::routes(
        store,
        access,
        http::Limits {
            import: cfg.import,
            max_body: cfg.max_body_bytes.unwrap_or(http::MAX_BODY),
        },
    );
    let task = tokio::spawn(govbus_http::serve(listener, app, tls));
    Ok(RunningRegistry { addr, task })
}

/// The registry could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The port could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// TLS or the credentials are unusable.
    #[error(transparent)]
    Https(#[from] govbus_http::HttpsError),
}
