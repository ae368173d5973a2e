//! Apache Kafka from Maven Central's jars, run natively with `java`.
//!
//! - [`Dist`]: the jars of one pinned Kafka version ([`VERSION`]), resolved by
//!   Maven from `deploy/kafka/pom.xml` into a cache outside the clone
//!   (`~/.cache/govbus/kafka-<version>`), and Kafka's own CLI tools run from
//!   them ([`Dist::tool`]).
//! - [`Cluster`]: KRaft nodes on loopback (one combined node for most uses,
//!   three for failover), each formatted with `kafka.tools.StorageTool` and
//!   started with `kafka.Kafka`; a node can be stopped, killed with SIGKILL
//!   and started again on the same ports and data.
//! - [`Secured`]: a cluster that only speaks SASL_SSL (SCRAM-SHA-512) to
//!   clients, with KRaft's `StandardAuthorizer` enforcing ACLs; its
//!   certificates come from a [`tls::Authority`] of the caller's own.
//!
//! Every JVM this crate starts dies with the process that started it: a
//! small shell wrapper watches the parent and kills the JVM when it is
//! gone, so a test binary that aborts leaves no broker behind.

mod cluster;
mod dist;
pub mod tls;

pub use cluster::{free_ports, Cluster, ClusterConfig, Secured};
pub use dist::{java_major, tools, Dist, Missing, Progress, VERSION};

/// What can go wrong installing or running Kafka.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// Java or Maven is missing or too old.
    #[error("cannot run Apache Kafka here: {0}")]
    Unavailable(Missing),
    /// Maven could not resolve the jars.
    #[error("installing Apache Kafka {VERSION} with Maven failed ({status}); its output: {log}")]
    Install {
        /// Maven's exit status.
        status: String,
        /// Where Maven's output is.
        log: String,
    },
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A node did not log that it started in time.
    #[error(
        "kafka node {node} did not start within {secs} s; the end of its log ({log}):\n{tail}"
    )]
    StartTimeout {
        /// The node id.
        node: u32,
        /// The limit.
        secs: u64,
        /// The node's log file.
        log: String,
        /// The log's last lines.
        tail: String,
    },
    /// A node's JVM exited while it was starting.
    #[error(
        "kafka node {node} exited while starting ({status}); the end of its log ({log}):\n{tail}"
    )]
    Exited {
        /// The node id.
        node: u32,
        /// Its exit status.
        status: String,
        /// The node's log file.
        log: String,
        /// The log's last lines.
        tail: String,
    },
    /// A CLI tool failed.
    #[error("{tool} failed ({status}): {stderr}")]
    Tool {
        /// The tool's name.
        tool: String,
        /// Its exit status.
        status: String,
        /// What it printed on standard error.
        stderr: String,
    },
}

impl KafkaError {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}

/// The first ERROR or FATAL lines of the file at `path` (each with the
/// lines of its exception), then its last `n` lines: why a node stopped is
/// logged before the many lines of its shutdown (empty if unreadable).
pub(crate) fn tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let mut errors: Vec<&str> = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if errors.len() >= 12 {
            break;
        }
        if l.contains(" ERROR ") || l.contains(" FATAL ") {
            errors.push(l);
            errors.extend(
                lines[i + 1..]
                    .iter()
                    .take(3)
                    .take_while(|x| !x.starts_with('[')),
            );
        }
    }
    let last = lines[lines.len().saturating_sub(n)..].join("\n");
    if errors.is_empty() {
        last
    } else {
        format!("{}\n...\n{last}", errors.join("\n"))
    }
}
