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

pub mod backfill;
pub mod codes;
pub mod deadletter;
pub mod demo;
pub mod events;
pub mod http;
pub mod lookup;
pub mod openapi;
pub mod outbox;
pub mod publisher;
pub mod relay;
pub mod store;

pub use publisher::{Accepted, ChangeRequest, Publisher, SetupError, SubmitError};
pub use relay::{Relay, RelayError};
pub use store::{OutboxStore, PendingBatch, PostgresStore, SqliteStore, StoreError};

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

/// Creates the publisher's central topics if missing (compacted,
/// `partitions`, the dataset's `retention_ms`).
pub fn ensure_topics(
    kafka: &govbus_kafka_client::KafkaConfig,
    publisher: &Publisher,
    partitions: i32,
) -> Result<(), govbus_kafka_client::KafkaSetupError> {
    let specs: Vec<govbus_kafka_client::TopicSpec> = publisher
        .topic_retention()
        .into_iter()
        .map(|(t, retention_ms)| {
            govbus_kafka_client::TopicSpec::changes(t, partitions, retention_ms)
        })
        .collect();
    govbus_kafka_client::ensure_topics(kafka, &specs)
}

/// The ministry agent's settings (`[producer]` in an agency's config file).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProducerConfig {
    /// The cluster.
    pub kafka: govbus_kafka_client::KafkaConfig,
    /// Schema registry URL.
    pub registry: String,
    /// How to reach an HTTPS registry that requires credentials: its CA,
    /// this agency's name and token (none: plain HTTP, anonymous).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_access: Option<govbus_http::ClientAccess>,
    /// The publishing agency (`bca`): it publishes the datasets it owns.
    pub agency: String,
    /// Name of the source system, written in every change's `source.system`.
    #[serde(default = "default_system")]
    pub system: String,
    /// Where the HTTP ingest listens.
    pub listen: std::net::SocketAddr,
    /// HTTPS for the ingest: its certificate and key (none: plain HTTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<govbus_http::ServerTls>,
    /// Who may post changes (none: anyone): the source systems' tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<govbus_http::HttpAuth>,
    /// The durable store: `sqlite://<path>` or `postgres://...`.
    pub store: String,
    /// PostgreSQL schema of the store's tables.
    #[serde(default = "default_pg_schema")]
    pub pg_schema: String,
    /// Prefix of every topic name (empty in production).
    #[serde(default)]
    pub topic_prefix: String,
    /// Partitions of the central topics, if the producer creates them.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Seconds the outbox may hold changes with none acknowledged before
    /// the relay logs why and starts over from the lowest pending change.
    #[serde(default = "default_stall_secs")]
    pub stall_secs: u64,
}

fn default_stall_secs() -> u64 {
    60
}

fn default_system() -> String {
    "govbus".into()
}
fn default_pg_schema() -> String {
    "govbus".into()
}
fn default_partitions() -> i32 {
    4
}

/// The ministry agent could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The store.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Schemas and registry.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// Kafka.
    #[error(transparent)]
    Kafka(#[from] govbus_kafka_client::KafkaSetupError),
    /// Kafka client creation.
    #[error("kafka: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    /// The relay could not be made.
    #[error("relay: {0}")]
    Relay(#[from] RelayError),
    /// The registry client's settings are unusable.
    #[error("registry: {0}")]
    Registry(#[from] govbus_schema::RegistryError),
    /// HTTPS or the credentials file is unusable.
    #[error(transparent)]
    Https(#[from] govbus_http::HttpsError),
    /// The broker's ACLs do not let this agent write its topics.
    #[error(transparent)]
    Access(#[from] govbus_kafka_client::acl::AccessError),
    /// A change was refused.
    #[error(transparent)]
    Submit(#[from] SubmitError),
    /// Seeding demo data did not finish in time.
    #[error("seeding: {what} not relayed within {secs} s")]
    Seed {
        /// What was being seeded.
        what: &'static str,
        /// The time allowed.
        secs: u64,
    },
    /// The HTTP listener could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Listen(std::net::SocketAddr, #[source] std::io::Error),
    /// Serving HTTP failed.
    #[error("serving on {0}: {1}")]
    Serve(std::net::SocketAddr, #[source] std::io::Error),
    /// A thread or task could not be started, or ended abnormally.
    #[error("the {what} {how}")]
    Task {
        /// Which thread or task.
        what: &'static str,
        /// What went wrong.
        how: String,
    },
}

/// The publisher an agent configuration describes: its store opened, its
/// envelope schemas registered, its central topics created. Blocking.
pub fn open_publisher(
    cfg: &ProducerConfig,
    catalog: &govbus_core::Catalog,
) -> Result<Publisher, AgentError> {
    let store = open_store(&cfg.store, &cfg.pg_schema)?;
    let topics = govbus_core::Topics::new(&cfg.topic_prefix);
    let registry =
        govbus_schema::RegistryClient::with_access(&cfg.registry, cfg.registry_access.as_ref())?;
    let p = Publisher::new(
        catalog,
        &cfg.agency,
        &cfg.system,
        &topics,
        &cfg.kafka,
        &registry,
        store,
    )?;
    ensure_topics(&cfg.kafka, &p, cfg.partitions)?;
    // Refused at start, not change by change after ingest has accepted them.
    let own: Vec<String> = p.topic_retention().into_iter().map(|(t, _)| t).collect();
    govbus_kafka_client::acl::require(
        &cfg.kafka,
        govbus_kafka_client::acl::Operation::Write,
        &own,
    )?;
    Ok(p)
}

/// Runs the ministry agent (HTTP ingest + relay) until `shutdown` resolves;
/// `ready` turns ready once it accepts changes.
pub async fn run_agent(
    cfg: ProducerConfig,
    catalog: govbus_core::Catalog,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ready: Arc<govbus_core::health::Readiness>,
) -> Result<(), AgentError> {
    let c = cfg.clone();
    let publisher = tokio::task::spawn_blocking(move || open_publisher(&c, &catalog).map(Arc::new))
        .await
        .map_err(|e| AgentError::Task {
            what: "publisher setup task",
            how: format!("ended abnormally: {e}"),
        })??;
    // Reading the relay id is the store's blocking I/O: off the runtime.
    let (k, store, wakeup, agency) = (
        cfg.kafka.clone(),
        publisher.store(),
        publisher.wakeup(),
        cfg.agency.clone(),
    );
    let relay = tokio::task::spawn_blocking(move || Relay::for_agency(&k, store, wakeup, &agency))
        .await
        .map_err(|e| AgentError::Task {
            what: "relay setup task",
            how: format!("ended abnormally: {e}"),
        })??
        .stall_after(std::time::Duration::from_secs(cfg.stall_secs));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stop.clone();
    let relay_thread = std::thread::Builder::new()
        .name("relay".into())
        .spawn(move || relay.run(s))
        .map_err(|e| AgentError::Task {
            what: "relay thread",
            how: format!("could not start: {e}"),
        })?;
    let tls = cfg.tls.as_ref().map(|t| t.acceptor()).transpose()?;
    let credentials = cfg
        .auth
        .as_ref()
        .map(govbus_http::Credentials::load)
        .transpose()?
        .map(Arc::new);
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| AgentError::Listen(cfg.listen, e))?;
    tracing::info!(listen = %cfg.listen, agency = cfg.agency, datasets = ?publisher.datasets(), https = tls.is_some(), auth = credentials.is_some(), "ingest listening");
    ready.ready();
    let app = http::router_with(publisher, credentials);
    let served = tokio::select! {
        r = govbus_http::serve(listener, app, tls) => r,
        () = shutdown => Ok(()),
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = relay_thread.join();
    served.map_err(|e| AgentError::Serve(cfg.listen, e))
}
