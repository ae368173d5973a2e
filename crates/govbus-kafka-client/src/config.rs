//! Kafka client settings shared by every agent, the options they refuse,
//! and what can go wrong setting up.

use std::collections::BTreeMap;

use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

/// How to reach the cluster, plus raw librdkafka options passed through.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port]`.
    pub bootstrap: String,
    /// How long the broker may hold a consumer's fetch that finds no new
    /// data (`fetch.wait.max.ms`). Kafka answers as soon as data arrives,
    /// so the default costs nothing there; nisshi, the development broker,
    /// holds a fetch for the whole wait (docs/BROKERS.md), so `govbus up`
    /// sets 10 on nisshi.
    #[serde(default = "default_fetch_wait_ms")]
    pub fetch_wait_ms: u32,
    /// The same for a follower of a topic that rarely changes (the
    /// subscriptions' control topic, the administrative map, a lookup
    /// dataset, the registry's schema log) once it has read the topic to
    /// its end: an idle bus's fetches are mostly theirs, and on Kafka a
    /// record still reaches them at once. `govbus up` sets 10 on nisshi.
    #[serde(default = "default_follow_wait_ms")]
    pub follow_wait_ms: u32,
    /// TLS and SASL: how this agent encrypts its connections and proves
    /// who it is (`[*.kafka.security]`; none: plaintext, anonymous).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<KafkaSecurity>,
    /// Raw librdkafka properties, applied last. Secrets are refused here:
    /// they belong in `[kafka.security]`, read from a file or the
    /// environment.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// How an agent connects: TLS to the brokers, verified against `ca`, and
/// SASL/SCRAM as `username`.
///
/// ```toml
/// [consumer.kafka.security]
/// protocol = "sasl_ssl"
/// ca = "/etc/govbus/ca.pem"
/// username = "p52"
/// password = { file = "/run/secrets/p52.kafka" }   # or { env = "GOVBUS_KAFKA_PASSWORD" }
/// ```
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KafkaSecurity {
    /// `ssl`, `sasl_ssl` or `sasl_plaintext`.
    pub protocol: Protocol,
    /// PEM file of the authority that signed the brokers' certificates
    /// (none: the system's trust store). Brokers' host names are verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<std::path::PathBuf>,
    /// The SCRAM mechanism.
    #[serde(default)]
    pub mechanism: ScramMechanism,
    /// The SASL user: the agent's principal (`User:<username>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The SASL password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<govbus_core::secret::Secret>,
    /// A client certificate (PEM) for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM, unencrypted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<std::path::PathBuf>,
}

/// `security.protocol` other than plaintext.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// TLS, no SASL (mutual TLS, or anonymous).
    Ssl,
    /// SASL over TLS: what govbus deploys.
    SaslSsl,
    /// SASL without TLS: test clusters only.
    SaslPlaintext,
}

impl Protocol {
    fn librdkafka(self) -> &'static str {
        match self {
            Self::Ssl => "ssl",
            Self::SaslSsl => "sasl_ssl",
            Self::SaslPlaintext => "sasl_plaintext",
        }
    }
    fn sasl(self) -> bool {
        !matches!(self, Self::Ssl)
    }
}

/// The SCRAM mechanism (Kafka supports both; govbus deploys SHA-512).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum ScramMechanism {
    /// SCRAM-SHA-512.
    #[default]
    #[serde(rename = "SCRAM-SHA-512")]
    Sha512,
    /// SCRAM-SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    Sha256,
}

impl ScramMechanism {
    /// Kafka's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha512 => "SCRAM-SHA-512",
            Self::Sha256 => "SCRAM-SHA-256",
        }
    }
}

impl KafkaSecurity {
    /// SASL/SCRAM over TLS as `username`, verifying brokers against `ca`.
    pub fn scram(
        ca: impl Into<std::path::PathBuf>,
        username: impl Into<String>,
        password: govbus_core::secret::Secret,
    ) -> Self {
        Self {
            protocol: Protocol::SaslSsl,
            ca: Some(ca.into()),
            mechanism: ScramMechanism::Sha512,
            username: Some(username.into()),
            password: Some(password),
            certificate: None,
            key: None,
        }
    }

    /// The principal the broker will see (`User:<name>`), when SASL names it.
    pub fn principal(&self) -> Option<String> {
        self.username.as_ref().map(|u| format!("User:{u}"))
    }

    fn apply(&self, c: &mut ClientConfig) {
        c.set("security.protocol", self.protocol.librdkafka());
        if let Some(ca) = &self.ca {
            c.set("ssl.ca.location", ca.display().to_string());
        }
        if let (Some(cert), Some(key)) = (&self.certificate, &self.key) {
            c.set("ssl.certificate.location", cert.display().to_string())
                .set("ssl.key.location", key.display().to_string());
        }
        if self.protocol.sasl() {
            c.set("sasl.mechanisms", self.mechanism.name());
            if let Some(u) = &self.username {
                c.set("sasl.username", u);
            }
            if let Some(p) = &self.password {
                c.set("sasl.password", p.expose());
            }
        }
    }

    fn check(&self) -> Result<(), OptionError> {
        let bad = |why: &str| {
            Err(OptionError::Security {
                why: why.to_string(),
            })
        };
        if self.protocol.sasl() && (self.username.is_none() || self.password.is_none()) {
            return bad("a SASL protocol needs `username` and `password`");
        }
        if self.certificate.is_some() != self.key.is_some() {
            return bad("mutual TLS needs both `certificate` and `key`");
        }
        for path in [&self.ca, &self.certificate, &self.key]
            .into_iter()
            .flatten()
        {
            if let Err(e) = std::fs::metadata(path) {
                return bad(&format!("cannot read {}: {e}", path.display()));
            }
        }
        Ok(())
    }
}

/// librdkafka options that carry a secret: refused in `[kafka.options]`,
/// where the value would sit in the config file and in its error messages.
pub const SECRET_OPTIONS: &[&str] = &[
    "sasl.password",
    "ssl.key.password",
    "ssl.keystore.password",
    "ssl.key.pem",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.config",
];

fn default_fetch_wait_ms() -> u32 {
    500
}

fn default_follow_wait_ms() -> u32 {
    5000
}

/// Client settings `[kafka.options]` cannot change: delivery guarantees,
/// offsets and key placement depend on them.
pub const PINNED: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.idempotence",
    "acks",
    "transactional.id",
    "isolation.level",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "partitioner",
];

impl KafkaConfig {
    /// A config for `bootstrap` with no extra options.
    pub fn new(bootstrap: impl Into<String>) -> Self {
        Self {
            bootstrap: bootstrap.into(),
            fetch_wait_ms: default_fetch_wait_ms(),
            follow_wait_ms: default_follow_wait_ms(),
            security: None,
            options: BTreeMap::new(),
        }
    }

    /// This config, connecting with `security`.
    pub fn with_security(mut self, security: KafkaSecurity) -> Self {
        self.security = Some(security);
        self
    }

    /// This agent's `client.id` (`govbus-router`, `govbus-p52`), which
    /// Kafka's tools show in their CLIENT-ID column and brokers in their
    /// logs and quotas; one set in `[kafka.options]` wins.
    pub fn named(mut self, id: &str) -> Self {
        self.options
            .entry("client.id".into())
            .or_insert_with(|| id.to_string());
        self
    }

    /// Base client config: bootstrap servers and the pass-through options.
    pub fn client(&self) -> ClientConfig {
        let mut c = self.base();
        self.apply_options(&mut c);
        c
    }

    /// Bootstrap servers and govbus's client-wide settings, no options yet
    /// (each kind of client adds its own settings, then the options once).
    fn base(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        // Keepalive: a connection through a NAT or firewall that drops idle
        // flows is noticed (consumers' own timeouts are set in `consumer`).
        c.set("socket.keepalive.enable", "true");
        if let Some(sec) = &self.security {
            sec.apply(&mut c);
        }
        c
    }

    /// Refuses an option this binary cannot honour, saying why: one that
    /// govbus sets itself ([`PINNED`]), or one that needs a librdkafka
    /// feature this build lacks (TLS, SASL: `builtin.features`), instead
    /// of accepting it and connecting without it.
    pub fn check(&self) -> Result<(), OptionError> {
        let features = builtin_features();
        let mut wanted: Vec<(String, String)> = self
            .options
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(sec) = &self.security {
            sec.check()?;
            wanted.push(("security.protocol".into(), sec.protocol.librdkafka().into()));
            if sec.protocol.sasl() {
                wanted.push(("sasl.mechanisms".into(), sec.mechanism.name().into()));
            }
        }
        for k in self.options.keys() {
            if PINNED.contains(&k.as_str()) {
                return Err(OptionError::Pinned { key: k.clone() });
            }
            if SECRET_OPTIONS.contains(&k.as_str()) {
                return Err(OptionError::SecretInOptions { key: k.clone() });
            }
            if self.security.is_some()
                && (k == "security.protocol" || k.starts_with("sasl.") || k == "ssl.ca.location")
            {
                return Err(OptionError::Twice { key: k.clone() });
            }
        }
        for (k, v) in &wanted {
            let needs: Vec<&str> = match (k.as_str(), v.to_ascii_lowercase().as_str()) {
                ("security.protocol", "ssl") => vec!["ssl"],
                ("security.protocol", "sasl_ssl") => vec!["ssl", "sasl"],
                ("security.protocol", "sasl_plaintext") => vec!["sasl"],
                ("sasl.mechanism" | "sasl.mechanisms", m) if m.starts_with("scram") => {
                    vec!["sasl_scram"]
                }
                (k, _) if k.starts_with("ssl.") => vec!["ssl"],
                (k, _) if k.starts_with("sasl.") => vec!["sasl"],
                _ => vec![],
            };
            if let Some(missing) = needs.iter().find(|f| !features.iter().any(|h| h == *f)) {
                return Err(OptionError::Unsupported {
                    key: k.clone(),
                    value: v.clone(),
                    feature: missing.to_string(),
                    features: features.join(","),
                });
            }
        }
        Ok(())
    }

    /// Sets `[kafka.options]` on `c`, except the settings exactly once
    /// depends on ([`PINNED`]): those are refused with a log line naming
    /// them, and govbus's values stay.
    fn apply_options(&self, c: &mut ClientConfig) {
        for (k, v) in &self.options {
            if PINNED.contains(&k.as_str()) {
                tracing::warn!(
                    option = k,
                    value = v,
                    "kafka option ignored: govbus sets it itself (exactly once depends on it)"
                );
            } else {
                c.set(k, v);
            }
        }
    }

    /// An idempotent producer (acks=all): the relay and DLQ writers.
    pub fn producer(&self) -> ClientConfig {
        let mut c = self.base();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("compression.type", "none");
        self.apply_options(&mut c);
        c
    }

    /// Sets `key` to `value` on `c` unless `[kafka.options]` names `key`:
    /// an agent's own default that the operator can still override.
    pub fn set_default(&self, c: &mut ClientConfig, key: &str, value: &str) {
        if !self.options.contains_key(key) || PINNED.contains(&key) {
            c.set(key, value);
        }
    }

    /// A consumer in `group`: read_committed, manual commits, short session
    /// timeouts so that a killed router's partitions move to another in
    /// seconds (Kafka's default session timeout is 45 s).
    pub fn consumer(&self, group: &str) -> ClientConfig {
        let mut c = self.base();
        c.set("group.id", group)
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500")
            .set("max.poll.interval.ms", "30000")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", self.fetch_wait_ms.to_string())
            // When the prefetch queue is full (64 MB: a backlog being
            // caught up), librdkafka waits this long before fetching again;
            // its default, 1 s, is longer than a router takes to drain the
            // queue, so catching up stalled for up to a second at a time
            // (measured: docs/BENCHMARKS.md).
            .set("fetch.queue.backoff.ms", "10");
        self.apply_options(&mut c);
        c
    }
}

/// librdkafka's compiled-in features (`builtin.features`: `ssl`, `sasl`,
/// `sasl_scram`, `zstd`, …).
pub fn builtin_features() -> Vec<String> {
    ClientConfig::new()
        .create_native_config()
        .and_then(|c| c.get("builtin.features"))
        .map(|f| f.split(',').map(|s| s.trim().to_string()).collect())
        .unwrap_or_default()
}

/// A `[kafka.options]` entry this binary refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    /// govbus sets it itself: exactly once depends on it.
    #[error(
        "kafka option `{key}` is set by govbus itself (exactly once depends on it); remove it"
    )]
    Pinned {
        /// The option.
        key: String,
    },
    /// It carries a secret.
    #[error("kafka option `{key}` carries a secret, which does not belong in a config file: set `[kafka.security] password = {{ file = \"…\" }}` (or `{{ env = \"…\" }}`) instead")]
    SecretInOptions {
        /// The option.
        key: String,
    },
    /// `[kafka.security]` sets it already.
    #[error("kafka option `{key}` is set by `[kafka.security]`; remove it from `[kafka.options]`")]
    Twice {
        /// The option.
        key: String,
    },
    /// `[kafka.security]` is incomplete or names a missing file.
    #[error("kafka security: {why}")]
    Security {
        /// What is wrong.
        why: String,
    },
    /// It needs a librdkafka feature this binary was built without.
    #[error("kafka option `{key} = {value}` needs librdkafka's `{feature}` feature, which this govbus binary was built without (it has: {features}); remove it, or use a build with TLS and SASL")]
    Unsupported {
        /// The option.
        key: String,
        /// Its value.
        value: String,
        /// The missing feature.
        feature: String,
        /// What the build has.
        features: String,
    },
}

/// Setting up Kafka resources failed.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    /// The client failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The cluster could not be reached, or refused this client.
    #[error("cannot connect to Kafka at {bootstrap} as {principal}: {reason}")]
    Connect {
        /// Where.
        bootstrap: String,
        /// As whom.
        principal: String,
        /// librdkafka's words.
        reason: String,
    },
    /// The agent may not even see the topic.
    #[error("not authorized to describe topic {topic} (TopicAuthorizationFailed): this agent's principal has no grant on it (`govbus acl plan` shows the grants)")]
    NotAuthorized {
        /// The topic.
        topic: String,
    },
    /// The topic does not exist, and this agent may not create it.
    #[error("topic {topic} does not exist, and this agent's principal may not create it (TopicAuthorizationFailed): its owner creates it, or an operator with `govbus topics`")]
    NotAllowed {
        /// The topic.
        topic: String,
    },
    /// The broker refused a topic.
    #[error("cannot create topic {topic}: {reason}")]
    CreateTopic {
        /// The topic.
        topic: String,
        /// The broker's answer.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_override_defaults_but_not_the_guarantees() {
        let mut k = KafkaConfig::new("127.0.0.1:9092");
        k.fetch_wait_ms = 10;
        k.options.insert("linger.ms".into(), "20".into());
        k.options
            .insert("isolation.level".into(), "read_uncommitted".into());
        k.options.insert("acks".into(), "1".into());
        k.options.insert("security.protocol".into(), "ssl".into());
        let c = k.consumer("g");
        assert_eq!(c.get("isolation.level"), Some("read_committed"));
        assert_eq!(c.get("fetch.wait.max.ms"), Some("10"));
        assert_eq!(c.get("security.protocol"), Some("ssl"));
        let p = k.producer();
        assert_eq!(p.get("acks"), Some("all"));
        assert_eq!(p.get("linger.ms"), Some("20"));
        let mut own = k.producer();
        k.set_default(&mut own, "linger.ms", "0");
        k.set_default(&mut own, "acks", "all");
        assert_eq!(own.get("linger.ms"), Some("20"));
        assert_eq!(own.get("acks"), Some("all"));
    }
}
