//! Kafka client settings shared by every agent.

use std::collections::{BTreeMap, HashMap};

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
    pub password: Option<crate::secret::Secret>,
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
        password: crate::secret::Secret,
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
    100
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
            security: None,
            options: BTreeMap::new(),
        }
    }

    /// This config, connecting with `security`.
    pub fn with_security(mut self, security: KafkaSecurity) -> Self {
        self.security = Some(security);
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

/// How long a central change topic keeps every change before compaction
/// may drop older changes of an entity: 7 days.
pub const CHANGES_MIN_COMPACTION_LAG_MS: u64 = 7 * 24 * 3600 * 1000;

/// A replication factor of -1: the broker's `default.replication.factor`.
pub const BROKER_DEFAULT: i32 = -1;

/// A topic to create if missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Name.
    pub name: String,
    /// Partition count.
    pub partitions: i32,
    /// Replication factor; -1 (what govbus's agents use) takes the
    /// broker's `default.replication.factor`, so that one setting on the
    /// cluster decides it for every topic.
    pub replication: i32,
    /// Topic configs (`cleanup.policy`, `retention.ms`, ...).
    pub configs: Vec<(String, String)>,
}

impl TopicSpec {
    /// A compacted topic (central topics, views, control topics).
    pub fn compacted(name: impl Into<String>, partitions: i32) -> Self {
        Self {
            name: name.into(),
            partitions,
            replication: BROKER_DEFAULT,
            configs: vec![("cleanup.policy".into(), "compact".into())],
        }
    }

    /// A dataset's central change topic: compacted, but no record is
    /// compacted away before it is [`CHANGES_MIN_COMPACTION_LAG_MS`] old.
    /// The router derives a view's leaves from each change's before and
    /// after images, so a change it has not read yet must not vanish under
    /// a newer change of the same entity (a move out of a province followed
    /// by an update would lose the leave). A router that lags by more than
    /// this is an incident (`govbus_router_lag_events`). `retention_ms` is
    /// the dataset file's (-1: kept for ever).
    pub fn changes(name: impl Into<String>, partitions: i32, retention_ms: i64) -> Self {
        let mut spec = Self::compacted(name, partitions);
        spec.configs
            .push(("retention.ms".into(), retention_ms.to_string()));
        spec.configs.push((
            "min.compaction.lag.ms".into(),
            CHANGES_MIN_COMPACTION_LAG_MS.to_string(),
        ));
        spec
    }

    /// A retained (delete-policy) topic, e.g. a DLQ.
    pub fn retained(name: impl Into<String>, partitions: i32) -> Self {
        Self {
            name: name.into(),
            partitions,
            replication: BROKER_DEFAULT,
            configs: vec![("cleanup.policy".into(), "delete".into())],
        }
    }
}

/// Creates the topics that do not exist yet, and corrects the settings of
/// those that do where they differ from their spec, logging each change
/// (blocking).
pub fn ensure_topics(kafka: &KafkaConfig, specs: &[TopicSpec]) -> Result<(), KafkaSetupError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;
    if specs.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = kafka.client().create()?;
    let topics: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|s| {
            let mut t = NewTopic::new(
                &s.name,
                s.partitions,
                TopicReplication::Fixed(s.replication),
            );
            for (k, v) in &s.configs {
                t = t.set(k, v);
            }
            t
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(std::time::Duration::from_secs(10)));
    let res = futures_executor::block_on(admin.create_topics(topics.iter(), &opts))?;
    let mut existing = Vec::new();
    let mut missing = None;
    for r in res {
        match r {
            Ok(_) => {}
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => existing.push(topic),
            // Under ACLs an agent may create only the topics it owns; one
            // it reads (a view, another ministry's dataset) is created by
            // its owner, and only its existence matters here. A topic it
            // may not even see is an error at once; one not created yet
            // is reported after every other.
            Err((topic, RDKafkaErrorCode::TopicAuthorizationFailed)) => {
                match topic_exists(&admin, &topic)? {
                    Some(true) => {}
                    Some(false) => missing = missing.or(Some(topic)),
                    None => return Err(KafkaSetupError::NotAuthorized { topic }),
                }
            }
            Err((topic, e)) => {
                return Err(KafkaSetupError::CreateTopic {
                    topic,
                    reason: e.to_string(),
                })
            }
        }
    }
    if let Some(topic) = missing {
        return Err(KafkaSetupError::NotAllowed { topic });
    }
    let existing: Vec<&TopicSpec> = specs
        .iter()
        .filter(|s| !s.configs.is_empty() && existing.contains(&s.name))
        .collect();
    correct_settings(&admin, &opts, &existing)
}

/// Whether `topic` exists, as this client's principal may see it (None:
/// the principal may not even describe it).
fn topic_exists(
    admin: &rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>,
    topic: &str,
) -> Result<Option<bool>, KafkaSetupError> {
    use rdkafka::types::RDKafkaRespErr;
    let md = admin
        .inner()
        .fetch_metadata(Some(topic), std::time::Duration::from_secs(10))?;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        return Ok(Some(false));
    };
    Ok(match t.error() {
        Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED) => None,
        Some(_) => Some(false),
        None => Some(!t.partitions().is_empty()),
    })
}

/// Sets the configs of `specs` (existing topics) that differ from what the
/// cluster holds. The alter request replaces a topic's whole dynamic
/// config, so the topic's other dynamic settings are sent back unchanged.
fn correct_settings(
    admin: &rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>,
    opts: &rdkafka::admin::AdminOptions,
    specs: &[&TopicSpec],
) -> Result<(), KafkaSetupError> {
    use rdkafka::admin::{AlterConfig, ConfigSource, ResourceSpecifier};
    if specs.is_empty() {
        return Ok(());
    }
    let which: Vec<ResourceSpecifier<'_>> = specs
        .iter()
        .map(|s| ResourceSpecifier::Topic(&s.name))
        .collect();
    let described = futures_executor::block_on(admin.describe_configs(which.iter(), opts))?;
    for (spec, res) in specs.iter().zip(described) {
        let resource = res.map_err(|e| KafkaSetupError::CreateTopic {
            topic: spec.name.clone(),
            reason: format!("cannot read its settings: {e}"),
        })?;
        let changes: Vec<(&str, Option<&str>, &str)> = spec
            .configs
            .iter()
            .filter_map(|(k, v)| {
                let now = resource.get(k).and_then(|e| e.value.as_deref());
                (now != Some(v.as_str())).then_some((k.as_str(), now, v.as_str()))
            })
            .collect();
        if changes.is_empty() {
            continue;
        }
        let mut alter = AlterConfig::new(ResourceSpecifier::Topic(&spec.name));
        for e in resource
            .entries
            .iter()
            .filter(|e| e.source == ConfigSource::DynamicTopic)
        {
            if let Some(v) = &e.value {
                alter = alter.set(&e.name, v);
            }
        }
        for (k, _, v) in &changes {
            alter = alter.set(k, v);
        }
        let res = futures_executor::block_on(admin.alter_configs([&alter], opts))?;
        for r in res {
            r.map_err(|(_, e)| KafkaSetupError::CreateTopic {
                topic: spec.name.clone(),
                reason: format!("cannot correct its settings: {e}"),
            })?;
        }
        for (key, was, now) in changes {
            tracing::info!(
                topic = spec.name,
                key,
                was = was.unwrap_or("(unset)"),
                now,
                "topic setting corrected to what deploy/ says"
            );
        }
    }
    Ok(())
}

/// Connects to the cluster as `kafka` says and asks for its metadata: an
/// agent's first step, so that a wrong password, an untrusted certificate
/// or a wrong address stops it at once with librdkafka's own words instead
/// of retrying in the background for ever.
pub fn connect(kafka: &KafkaConfig, limit: std::time::Duration) -> Result<(), KafkaSetupError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let probe: BaseConsumer<Probe> = kafka.client().create_with_context(Probe::default())?;
    let res = probe.fetch_metadata(None, limit);
    if res.is_err() {
        // The errors librdkafka logged arrive as events: serve them.
        for _ in 0..10 {
            let _ = probe.poll(std::time::Duration::from_millis(50));
            if probe
                .context()
                .decisive
                .load(std::sync::atomic::Ordering::Relaxed)
            {
                break;
            }
        }
    }
    let heard = probe
        .context()
        .first
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    match res {
        Ok(_) => Ok(()),
        Err(e) => Err(KafkaSetupError::Connect {
            bootstrap: kafka.bootstrap.clone(),
            principal: kafka
                .security
                .as_ref()
                .and_then(|s| s.principal())
                .unwrap_or_else(|| "an anonymous client".into()),
            reason: heard.unwrap_or_else(|| e.to_string()),
        }),
    }
}

/// Keeps the first error librdkafka reports, preferring an authentication
/// or TLS failure over the connection errors that follow it.
#[derive(Default)]
struct Probe {
    first: std::sync::Mutex<Option<String>>,
    decisive: std::sync::atomic::AtomicBool,
}

impl rdkafka::ClientContext for Probe {
    fn log(&self, _level: rdkafka::config::RDKafkaLogLevel, _fac: &str, _log_message: &str) {}

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        use rdkafka::types::RDKafkaErrorCode as C;
        let decisive = matches!(
            error.rdkafka_error_code(),
            Some(C::Authentication | C::SaslAuthenticationFailed | C::SSL)
        ) || reason.contains("SASL authentication")
            || reason.contains("SSL handshake");
        let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
        let first_decisive = decisive
            && !self
                .decisive
                .swap(true, std::sync::atomic::Ordering::Relaxed);
        if first_decisive || first.is_none() {
            *first = Some(reason.to_string());
        }
    }
}

impl rdkafka::consumer::ConsumerContext for Probe {}

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

/// Fills `batch` (cleared first) with up to `max` records: waits at most
/// `linger` for the first, then takes what the client has already fetched
/// (no further waiting), so a batch is large under load and a lone change
/// is not held back. Consumer errors are logged and skipped (librdkafka
/// retries them itself).
///
/// The records stay librdkafka's (borrowed, not copied): detaching each
/// one (key, payload, headers and topic name copied, then freed) was 40 %
/// of the router thread's time in a profile (docs/BENCHMARKS.md).
pub fn poll_batch<'c, C: rdkafka::consumer::ConsumerContext>(
    consumer: &'c rdkafka::consumer::BaseConsumer<C>,
    batch: &mut Vec<rdkafka::message::BorrowedMessage<'c>>,
    max: usize,
    linger: std::time::Duration,
) {
    poll_batch_fenced(consumer, batch, max, linger, &|| 0);
}

/// [`poll_batch`] for a consumer in a group: `rebalances` counts the
/// group's rebalances (bumped by the consumer's context, whose callbacks
/// run inside `poll`). The records taken before a rebalance are dropped
/// from the batch: their partitions were revoked, and whoever holds them
/// now (this consumer again, or another) starts from the committed offset
/// and reads them again. Routing them too, with offsets committed under
/// the new generation, delivered them twice.
pub fn poll_batch_fenced<'c, C: rdkafka::consumer::ConsumerContext>(
    consumer: &'c rdkafka::consumer::BaseConsumer<C>,
    batch: &mut Vec<rdkafka::message::BorrowedMessage<'c>>,
    max: usize,
    linger: std::time::Duration,
    rebalances: &dyn Fn() -> u64,
) {
    batch.clear();
    let deadline = std::time::Instant::now() + linger;
    let mut seen = rebalances();
    while batch.len() < max {
        let wait = if batch.is_empty() {
            deadline.saturating_duration_since(std::time::Instant::now())
        } else {
            std::time::Duration::ZERO
        };
        let polled = consumer.poll(wait);
        let now = rebalances();
        if now != seen {
            seen = now;
            if !batch.is_empty() {
                tracing::info!(
                    dropped = batch.len(),
                    "a rebalance came while polling; the records taken before it are read again by their new owner"
                );
                batch.clear();
            }
        }
        match polled {
            Some(Ok(m)) => batch.push(m),
            Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
            None => break,
        }
        if batch.is_empty() && std::time::Instant::now() >= deadline {
            break;
        }
    }
}

/// Consumer lag, measured off the consuming thread and off the consumer's
/// connection: the agent hands over its positions (a local call) with
/// [`LagWatch::update`], and a thread of the watch asks for the high
/// watermarks on a client of its own, then reports, per topic, the records
/// not yet consumed (high watermark − position). Until a consumer has
/// consumed a record of a partition, the client knows no position for it:
/// the partition counts from where the consumer started on it (its
/// committed or stored offset, handed over with [`LagWatch::starts_at`]),
/// or else from its low watermark. Counted from the low watermark, a router
/// restarted at the end of a quiet topic read as a backlog of the whole
/// topic that it never consumed, a stall every `stall_secs`.
///
/// Why not ask on the consumer itself: its ListOffsets requests queue behind
/// its fetch on the same connection, and a timed-out request makes
/// librdkafka close that connection (`socket.max.fails`), fetch included.
/// With a broker slow to answer a fetch (nisshi's SQLite storage after a
/// restart takes seconds), a short-timeout lag query every 2 s stopped a
/// router from ever receiving a record (docs/BROKERS.md). The same holds for
/// any broker slow to answer a fetch.
pub struct LagWatch {
    positions: std::sync::Arc<std::sync::Mutex<Vec<(String, i32, rdkafka::Offset)>>>,
    /// Where the consumer started on each partition, for those it has
    /// consumed nothing from yet.
    starts: std::sync::Mutex<HashMap<(String, i32), i64>>,
    /// The last complete measurement: when, and the records past the
    /// positions over every topic.
    total: std::sync::Arc<std::sync::Mutex<Option<(std::time::Instant, i64)>>>,
    every: std::time::Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for LagWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LagWatch").finish_non_exhaustive()
    }
}

impl LagWatch {
    /// Starts the watch: every `every`, `report(topic, lag)` for each topic
    /// of the last positions handed over.
    pub fn start(
        kafka: &KafkaConfig,
        every: std::time::Duration,
        report: impl Fn(&str, i64) + Send + 'static,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use std::sync::atomic::Ordering;
        let client: BaseConsumer = kafka.client().create()?;
        let positions = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let total = std::sync::Arc::new(std::sync::Mutex::new(None));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p, s, tot) = (positions.clone(), stop.clone(), total.clone());
        let handle = std::thread::Builder::new()
            .name("govbus-lag".into())
            .spawn(move || {
                let mut next = std::time::Instant::now() + every;
                while !s.load(Ordering::Relaxed) {
                    if std::time::Instant::now() < next {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        continue;
                    }
                    next = std::time::Instant::now() + every;
                    let now: Vec<(String, i32, rdkafka::Offset)> =
                        p.lock().map(|v| v.clone()).unwrap_or_default();
                    // A topic with a partition whose watermarks could not be
                    // read is not reported this round (a partial sum would
                    // read as a lag lower than the real one); the gauge keeps
                    // its last value and the log says why.
                    let mut lag: BTreeMap<&str, Option<i64>> = BTreeMap::new();
                    for (topic, partition, offset) in &now {
                        let sum = lag.entry(topic).or_insert(Some(0));
                        match client.fetch_watermarks(
                            topic,
                            *partition,
                            std::time::Duration::from_secs(5),
                        ) {
                            Ok((low, high)) => {
                                let pos = match offset {
                                    rdkafka::Offset::Offset(o) => *o,
                                    _ => low,
                                };
                                if let Some(n) = sum.as_mut() {
                                    *n += (high - pos).max(0);
                                }
                            }
                            Err(e) => {
                                tracing::warn!(topic, partition, error = %e, "consumer lag not measured: cannot read the partition's watermarks");
                                *sum = None;
                            }
                        }
                    }
                    let all: Option<i64> = lag.values().copied().sum();
                    for (topic, n) in lag {
                        if let Some(n) = n {
                            report(topic, n);
                        }
                    }
                    if let (Some(all), Ok(mut t)) = (all, tot.lock()) {
                        *t = Some((std::time::Instant::now(), all));
                    }
                }
            })
            .map_err(|e| rdkafka::error::KafkaError::ClientCreation(e.to_string()))?;
        Ok(Self {
            positions,
            starts: std::sync::Mutex::new(HashMap::new()),
            total,
            every,
            stop,
            handle: Some(handle),
        })
    }

    /// The records past the positions handed over, over every topic, as
    /// last measured; None when no measurement is recent (three periods).
    pub fn backlog(&self) -> Option<i64> {
        let t = self.total.lock().ok()?;
        let (at, n) = (*t)?;
        (at.elapsed() <= self.every * 3).then_some(n)
    }

    /// Notes where a consumer starts on partitions (their committed or
    /// stored offsets; other offsets in `tpl` are left out): the position
    /// of a partition it has consumed nothing from yet.
    pub fn starts_at(&self, tpl: &rdkafka::TopicPartitionList) {
        if let Ok(mut s) = self.starts.lock() {
            for e in tpl.elements() {
                if let rdkafka::Offset::Offset(o) = e.offset() {
                    s.insert((e.topic().to_string(), e.partition()), o);
                }
            }
        }
    }

    /// Hands over `consumer`'s current positions (no request to the broker).
    pub fn update<C: rdkafka::consumer::ConsumerContext>(
        &self,
        consumer: &rdkafka::consumer::BaseConsumer<C>,
    ) {
        use rdkafka::consumer::Consumer;
        let Ok(tpl) = consumer.position() else {
            return;
        };
        let starts = self.starts.lock().map(|s| s.clone()).unwrap_or_default();
        let now = tpl
            .elements()
            .iter()
            .map(|e| {
                let (t, p) = (e.topic().to_string(), e.partition());
                let offset = match e.offset() {
                    rdkafka::Offset::Offset(o) => rdkafka::Offset::Offset(o),
                    other => starts
                        .get(&(t.clone(), p))
                        .map_or(other, |o| rdkafka::Offset::Offset(*o)),
                };
                (t, p, offset)
            })
            .collect();
        if let Ok(mut p) = self.positions.lock() {
            *p = now;
        }
    }
}

impl Drop for LagWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A consumer context for readers that ask for partition-EOF events (to
/// know where a partition ends): librdkafka also reports each one as a
/// global error, which this does not log.
#[derive(Debug, Clone, Copy, Default)]
pub struct EofQuiet;

impl rdkafka::ClientContext for EofQuiet {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        use rdkafka::error::{KafkaError, RDKafkaErrorCode};
        if !matches!(error, KafkaError::Global(RDKafkaErrorCode::PartitionEOF)) {
            tracing::error!("librdkafka: {error}: {reason}");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for EofQuiet {}

/// A consumer that reports partition EOF, quietly (see [`EofQuiet`]).
pub type EofConsumer = rdkafka::consumer::BaseConsumer<EofQuiet>;

/// Creates an [`EofConsumer`] from `cfg` (partition EOF switched on).
pub fn eof_consumer(mut cfg: ClientConfig) -> Result<EofConsumer, rdkafka::error::KafkaError> {
    cfg.set("enable.partition.eof", "true");
    cfg.create_with_context(EofQuiet)
}

/// The partition ids of `topic` (empty if it does not exist).
pub fn partitions_of<C: rdkafka::consumer::ConsumerContext>(
    consumer: &rdkafka::consumer::BaseConsumer<C>,
    topic: &str,
) -> Result<Vec<i32>, rdkafka::error::KafkaError> {
    use rdkafka::consumer::Consumer;
    use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
    let md = consumer.fetch_metadata(Some(topic), std::time::Duration::from_secs(10))?;
    // A topic this principal may not describe is not a missing topic: no
    // wait will make it appear.
    if md.topics().iter().any(|t| {
        t.name() == topic
            && t.error() == Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED)
    }) {
        return Err(rdkafka::error::KafkaError::MetadataFetch(
            RDKafkaErrorCode::TopicAuthorizationFailed,
        ));
    }
    Ok(md
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect())
}

/// Reads partitions of `topic` from their beginning, read_committed, with
/// no consumer group commits, handing each record to `f`: each partition up
/// to its `until` offset (exclusive), or to its current end when `until` is
/// None. Fails after `limit` without reaching every end.
pub fn read_partitions(
    kafka: &KafkaConfig,
    topic: &str,
    bounds: &[(i32, Option<i64>)],
    limit: std::time::Duration,
    mut f: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> Result<(), rdkafka::error::KafkaError> {
    use rdkafka::consumer::Consumer;
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    use rdkafka::Message;
    let mut left: std::collections::HashMap<i32, Option<i64>> = bounds
        .iter()
        .filter(|(_, u)| u.is_none_or(|u| u > 0))
        .copied()
        .collect();
    if left.is_empty() {
        return Ok(());
    }
    let mut cfg = kafka.consumer(&format!("govbus-reader-{}", uuid::Uuid::new_v4()));
    // Short fetch waits: a reader stops at the end, it does not wait there.
    cfg.set("fetch.wait.max.ms", "10");
    let consumer = eof_consumer(cfg)?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in left.keys() {
        tpl.add_partition_offset(topic, *p, rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let deadline = std::time::Instant::now() + limit;
    while !left.is_empty() {
        if std::time::Instant::now() > deadline {
            return Err(KafkaError::MessageConsumption(
                RDKafkaErrorCode::OperationTimedOut,
            ));
        }
        match consumer.poll(std::time::Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let p = m.partition();
                let Some(until) = left.get(&p).copied() else {
                    continue;
                };
                if until.is_none_or(|u| m.offset() < u) {
                    f(&m);
                }
                if until.is_some_and(|u| m.offset() + 1 >= u) {
                    left.remove(&p);
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                left.remove(&p);
            }
            Some(Err(e)) => tracing::warn!(topic, error = %e, "reading a topic"),
            None => {}
        }
    }
    Ok(())
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
