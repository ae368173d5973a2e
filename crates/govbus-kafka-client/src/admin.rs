//! Topics created if missing and their settings corrected, and the first
//! connection an agent makes (a wrong password or address stops it at once).

use crate::{KafkaConfig, KafkaSetupError};

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

/// The most metadata records one CreateTopics request makes the
/// controller write. A KRaft controller refuses a request that would write
/// more than 10,000 (`POLICY_VIOLATION`, "excessively large batch
/// operation"): thousands of subscriptions' views at once, four partitions
/// each, are more than that.
const MAX_RECORDS_PER_REQUEST: usize = 5_000;

/// `specs` cut into consecutive requests of at most `max` records each by
/// the controller's count (a record per topic, per partition and per
/// setting); a topic larger than `max` goes alone.
fn requests(specs: &[TopicSpec], max: usize) -> Vec<&[TopicSpec]> {
    let mut out = Vec::new();
    let (mut start, mut records) = (0, 0);
    for (i, s) in specs.iter().enumerate() {
        let n = 1 + usize::try_from(s.partitions).unwrap_or(0) + s.configs.len();
        if records + n > max && i > start {
            out.push(&specs[start..i]);
            (start, records) = (i, 0);
        }
        records += n;
    }
    if start < specs.len() {
        out.push(&specs[start..]);
    }
    out
}

/// Creates the topics that do not exist yet, and corrects the settings of
/// those that do where they differ from their spec, logging each change
/// (blocking).
/// Thousands of topics at once go in several requests.
pub fn ensure_topics(kafka: &KafkaConfig, specs: &[TopicSpec]) -> Result<(), KafkaSetupError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;
    if specs.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = kafka.client().create()?;
    let opts = AdminOptions::new().operation_timeout(Some(std::time::Duration::from_secs(10)));
    let mut res = Vec::with_capacity(specs.len());
    for request in requests(specs, MAX_RECORDS_PER_REQUEST) {
        let topics: Vec<NewTopic<'_>> = request
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
        res.extend(futures_executor::block_on(
            admin.create_topics(topics.iter(), &opts),
        )?);
    }
    let mut existing = Vec::new();
    let mut missing = None;
    let mut created = Vec::new();
    for r in res {
        match r {
            Ok(topic) => created.push(topic),
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
    wait_for_leaders(&admin, &created, LEADERS_WITHIN)?;
    let existing: Vec<&TopicSpec> = specs
        .iter()
        .filter(|s| !s.configs.is_empty() && existing.contains(&s.name))
        .collect();
    correct_settings(&admin, &opts, &existing)
}

/// How long [`ensure_topics`] waits for the partitions it created to have
/// leaders.
const LEADERS_WITHIN: std::time::Duration = std::time::Duration::from_secs(120);

/// Waits (at most `within`) until every partition of `created` has a
/// leader in the cluster's metadata. The controller answers CreateTopics
/// once the topics are in its log; the brokers take their partitions on a
/// moment later, and thousands at once (a router starting with thousands
/// of subscriptions) take long enough that a first transaction writing to
/// them would time out. Past `within` it logs and goes on: the writes wait
/// for the leaders themselves.
fn wait_for_leaders(
    admin: &rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>,
    created: &[String],
    within: std::time::Duration,
) -> Result<(), KafkaSetupError> {
    if created.is_empty() {
        return Ok(());
    }
    let start = std::time::Instant::now();
    let mut waiting = created.len();
    while start.elapsed() < within {
        // One topic: ask for it alone; more: one request for them all.
        let only = match created {
            [one] => Some(one.as_str()),
            _ => None,
        };
        let md = admin
            .inner()
            .fetch_metadata(only, std::time::Duration::from_secs(10))?;
        let ready: std::collections::HashSet<&str> = md
            .topics()
            .iter()
            .filter(|t| {
                t.error().is_none()
                    && !t.partitions().is_empty()
                    && t.partitions().iter().all(|p| p.leader() >= 0)
            })
            .map(|t| t.name())
            .collect();
        waiting = created
            .iter()
            .filter(|t| !ready.contains(t.as_str()))
            .count();
        if waiting == 0 {
            if created.len() > 1 {
                tracing::info!(
                    topics = created.len(),
                    secs = start.elapsed().as_secs_f64(),
                    "created topics have their leaders"
                );
            }
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    tracing::warn!(
        waiting,
        created = created.len(),
        secs = within.as_secs(),
        "created topics still have partitions without a leader; going on"
    );
    Ok(())
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

#[cfg(test)]
mod request_tests {
    use super::*;

    #[test]
    fn thousands_of_views_go_in_requests_the_controller_takes() {
        let specs: Vec<TopicSpec> = (0..3_400)
            .map(|i| TopicSpec::compacted(format!("v{i}"), 4))
            .collect();
        let reqs = requests(&specs, MAX_RECORDS_PER_REQUEST);
        assert!(reqs.len() > 1);
        // Every spec once, in order.
        let names: Vec<&str> = reqs
            .iter()
            .flat_map(|r| r.iter())
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(
            names,
            specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>()
        );
        for r in &reqs {
            let records: usize = r
                .iter()
                .map(|s| 1 + s.partitions as usize + s.configs.len())
                .sum();
            assert!(records <= MAX_RECORDS_PER_REQUEST, "{records}");
        }
        // A topic over the bound goes alone; few topics go in one request.
        let big = [
            TopicSpec::compacted("a", 1),
            TopicSpec::compacted("b", 6_000),
            TopicSpec::compacted("c", 1),
        ];
        assert_eq!(
            requests(&big, MAX_RECORDS_PER_REQUEST)
                .iter()
                .map(|r| r.len())
                .collect::<Vec<_>>(),
            [1, 1, 1]
        );
        assert_eq!(requests(&specs[..10], MAX_RECORDS_PER_REQUEST).len(), 1);
    }
}
