//! A client for the Confluent Schema Registry REST API (govbus's own
//! registry, Confluent's, or any compatible one), and schema caches.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use apache_avro::Schema;
use serde::Deserialize;
use serde_json::json;

/// A registry call that failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry answered with an error (Confluent `error_code`).
    #[error("registry answered {status} (error_code {error_code}): {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Confluent error code, e.g. 40401.
        error_code: u32,
        /// The registry's message.
        message: String,
    },
    /// The registry could not be reached.
    #[error("registry unreachable at {url}: {reason}")]
    Transport {
        /// What was called.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// The answer or the schema could not be read.
    #[error("unreadable registry answer: {0}")]
    Decode(String),
    /// The client's TLS settings are unusable.
    #[error("registry client: {0}")]
    Setup(String),
    /// The schema exists but may not be used here (another subject's, or
    /// unbounded).
    #[error("schema id {id} refused: {reason}")]
    Refused {
        /// The schema id.
        id: u32,
        /// Why.
        reason: String,
    },
    /// No schema is registered with this id (kept as a refusal for a while).
    #[error("schema id {id} is not registered")]
    Unknown {
        /// The schema id.
        id: u32,
    },
    /// Too many unknown ids asked about at once: asked again later.
    #[error("schema id {id}: too many unknown schema ids asked about; asking again later")]
    Throttled {
        /// The schema id.
        id: u32,
    },
}

impl RegistryError {
    /// True when retrying later may help (the registry is down or busy).
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Transport { .. } | RegistryError::Throttled { .. } => true,
            RegistryError::Api { status, .. } => *status >= 500,
            RegistryError::Decode(_)
            | RegistryError::Setup(_)
            | RegistryError::Refused { .. }
            | RegistryError::Unknown { .. } => false,
        }
    }
}

/// Looks up writer schemas by id.
pub trait SchemaResolver: Send + Sync + std::fmt::Debug {
    /// The schema registered as `id`.
    fn resolve(&self, id: u32) -> Result<Arc<Schema>, RegistryError>;

    /// The schema registered as `id` under `subject`: a refusal when `id`
    /// is registered, but not under `subject`. Resolvers that know no
    /// subjects (fixed sets) answer [`SchemaResolver::resolve`].
    fn resolve_in(&self, subject: &str, id: u32) -> Result<Arc<Schema>, RegistryError> {
        let _ = subject;
        self.resolve(id)
    }
}

/// One version of a subject.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct SubjectVersion {
    /// The subject.
    pub subject: String,
    /// Its version number.
    pub version: u32,
    /// The global schema id.
    pub id: u32,
    /// The schema text.
    pub schema: String,
}

/// A blocking registry client.
#[derive(Clone)]
pub struct RegistryClient {
    base: String,
    agent: ureq::Agent,
    /// The `Authorization` header sent with every call.
    authorization: Option<String>,
}

const CT: &str = "application/vnd.schemaregistry.v1+json";

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The credentials are never shown.
        f.debug_struct("RegistryClient")
            .field("base", &self.base)
            .field("authenticated", &self.authorization.is_some())
            .finish()
    }
}

impl RegistryClient {
    /// A client for the registry at `base` (`http://host:port`).
    pub fn new(base: impl Into<String>) -> Self {
        Self {
            base: base.into().trim_end_matches('/').to_string(),
            agent: Self::agent_builder().build(),
            authorization: None,
        }
    }

    /// A client for the registry at `base` (`https://…`), verifying its
    /// certificate against `access.ca` and sending `access`'s credentials;
    /// [`RegistryClient::new`] when `access` is None.
    pub fn with_access(
        base: impl Into<String>,
        access: Option<&govbus_http::ClientAccess>,
    ) -> Result<Self, RegistryError> {
        let mut client = Self::new(base);
        if let Some(access) = access {
            client.agent = access
                .agent(Self::agent_builder())
                .map_err(|e| RegistryError::Setup(e.to_string()))?;
            client.authorization = access.authorization();
        }
        Ok(client)
    }

    /// Every client's timeouts.
    fn agent_builder() -> ureq::AgentBuilder {
        ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
    }

    /// The registry's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, RegistryError> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.agent.request(method, &url).set("Accept", CT);
        if let Some(a) = &self.authorization {
            req = req.set("Authorization", a);
        }
        let res = match body {
            Some(b) => req.set("Content-Type", CT).send_string(&b.to_string()),
            None => req.call(),
        };
        match res {
            Ok(r) => r
                .into_json()
                .map_err(|e| RegistryError::Decode(e.to_string())),
            Err(ureq::Error::Status(status, r)) => {
                let body: serde_json::Value = r.into_json().unwrap_or_default();
                Err(RegistryError::Api {
                    status,
                    error_code: body
                        .get("error_code")
                        .and_then(serde_json::Value::as_u64)
                        .and_then(|c| u32::try_from(c).ok())
                        .unwrap_or(u32::from(status) * 100),
                    message: body
                        .get("message")
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                })
            }
            Err(e) => Err(RegistryError::Transport {
                url,
                reason: e.to_string(),
            }),
        }
    }

    /// Registers `schema` under `subject` (idempotent: the same schema gets the same id).
    pub fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        self.register_with(subject, schema, None, None)
    }

    /// Registers `schema` with its data contract: Confluent's `metadata`
    /// and `ruleSet`, so that other tools see the contract with the schema.
    pub fn register_with(
        &self,
        subject: &str,
        schema: &str,
        metadata: Option<&serde_json::Value>,
        rule_set: Option<&serde_json::Value>,
    ) -> Result<u32, RegistryError> {
        let mut body = serde_json::Map::new();
        body.insert("schema".into(), schema.into());
        if let Some(m) = metadata {
            body.insert("metadata".into(), m.clone());
        }
        if let Some(r) = rule_set {
            body.insert("ruleSet".into(), r.clone());
        }
        let body = serde_json::Value::Object(body);
        let v = self.call(
            "POST",
            &format!("/subjects/{}/versions", path_escape(subject)),
            Some(body),
        )?;
        v.get("id")
            .and_then(serde_json::Value::as_u64)
            .and_then(|id| u32::try_from(id).ok())
            .ok_or_else(|| RegistryError::Decode(format!("no id in {v}")))
    }

    /// The schema text registered as `id`.
    pub fn schema_text(&self, id: u32) -> Result<String, RegistryError> {
        let v = self.call("GET", &format!("/schemas/ids/{id}"), None)?;
        v.get("schema")
            .and_then(serde_json::Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| RegistryError::Decode(format!("no schema in {v}")))
    }

    /// The latest version of `subject`.
    pub fn latest(&self, subject: &str) -> Result<SubjectVersion, RegistryError> {
        let v = self.call(
            "GET",
            &format!("/subjects/{}/versions/latest", path_escape(subject)),
            None,
        )?;
        serde_json::from_value(v).map_err(|e| RegistryError::Decode(e.to_string()))
    }

    /// The compatibility level in force for `subject` (its own, or the global one).
    pub fn level(&self, subject: &str) -> Result<crate::Compatibility, RegistryError> {
        let v = self.call(
            "GET",
            &format!("/config/{}?defaultToGlobal=true", path_escape(subject)),
            None,
        )?;
        serde_json::from_value(v.get("compatibilityLevel").cloned().unwrap_or_default())
            .map_err(|e| RegistryError::Decode(e.to_string()))
    }

    /// Whether `schema` could be registered under `subject` (against its latest version).
    pub fn is_compatible(&self, subject: &str, schema: &str) -> Result<bool, RegistryError> {
        let v = self.call(
            "POST",
            &format!(
                "/compatibility/subjects/{}/versions/latest",
                path_escape(subject)
            ),
            Some(json!({ "schema": schema })),
        )?;
        Ok(v.get("is_compatible")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false))
    }

    /// The subjects `id` is registered under.
    pub fn id_subjects(&self, id: u32) -> Result<Vec<String>, RegistryError> {
        #[derive(Deserialize)]
        struct SubjectOf {
            subject: String,
        }
        let v = self.call("GET", &format!("/schemas/ids/{id}/versions"), None)?;
        let list: Vec<SubjectOf> =
            serde_json::from_value(v).map_err(|e| RegistryError::Decode(e.to_string()))?;
        Ok(list.into_iter().map(|s| s.subject).collect())
    }

    /// All subjects.
    pub fn subjects(&self) -> Result<Vec<String>, RegistryError> {
        let v = self.call("GET", "/subjects", None)?;
        serde_json::from_value(v).map_err(|e| RegistryError::Decode(e.to_string()))
    }
}

fn path_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Schemas by id, fetched once from a registry and kept, with what was
/// refused: an id the registry does not know, a schema that is not
/// bounded ([`crate::limits::check_bounded`]), an id not registered under
/// the subject asked for. Refusals are kept too (up to
/// [`SchemaCache::MAX_REFUSALS`]), and the registry is asked about at most
/// [`SchemaCache::UNKNOWN_PER_SEC`] new ids a second: a flood of records
/// naming random ids costs no flood of registry calls (past that rate an
/// id is [`RegistryError::Throttled`], asked about again later).
#[derive(Debug)]
pub struct SchemaCache {
    client: RegistryClient,
    by_id: RwLock<HashMap<u32, Arc<Schema>>>,
    /// (subject, id) → whether `id` is registered under `subject` (when
    /// not, since when: asked again after [`SchemaCache::FORGET`]).
    members: RwLock<HashMap<(String, u32), Result<(), std::time::Instant>>>,
    /// id → why it is refused (None: not registered), since when.
    refused: RwLock<HashMap<u32, (Option<String>, std::time::Instant)>>,
    budget: std::sync::Mutex<Bucket>,
}

/// A token bucket for registry look-ups of unknown ids.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: std::time::Instant,
}

impl Bucket {
    fn take(&mut self, per_sec: f64, burst: f64) -> bool {
        let now = std::time::Instant::now();
        let earned = now.duration_since(self.at).as_secs_f64() * per_sec;
        self.tokens = (self.tokens + earned).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl SchemaCache {
    /// The most refusals kept (past that, they are forgotten and asked again).
    pub const MAX_REFUSALS: usize = 100_000;
    /// New ids asked about a second, at most (with a burst of 10 times).
    pub const UNKNOWN_PER_SEC: f64 = 20.0;
    /// How long a refusal is kept before the registry is asked again (an
    /// id registered since then is then found).
    pub const FORGET: std::time::Duration = std::time::Duration::from_secs(60);

    /// A cache in front of `client`.
    pub fn new(client: RegistryClient) -> Self {
        Self {
            client,
            by_id: RwLock::new(HashMap::new()),
            members: RwLock::new(HashMap::new()),
            refused: RwLock::new(HashMap::new()),
            budget: std::sync::Mutex::new(Bucket {
                tokens: Self::UNKNOWN_PER_SEC * 10.0,
                at: std::time::Instant::now(),
            }),
        }
    }

    /// The client behind the cache.
    pub fn client(&self) -> &RegistryClient {
        &self.client
    }

    fn ask(&self, id: u32) -> Result<(), RegistryError> {
        let mut b = self.budget.lock().unwrap_or_else(|p| p.into_inner());
        if b.take(Self::UNKNOWN_PER_SEC, Self::UNKNOWN_PER_SEC * 10.0) {
            Ok(())
        } else {
            Err(RegistryError::Throttled { id })
        }
    }

    /// Keeps the refusal of `id` (None: not registered) and answers it.
    fn refuse(&self, id: u32, reason: Option<String>) -> RegistryError {
        if let Ok(mut r) = self.refused.write() {
            if r.len() >= Self::MAX_REFUSALS {
                r.clear();
            }
            r.insert(id, (reason.clone(), std::time::Instant::now()));
        }
        refusal(id, reason)
    }

    fn refused(&self, id: u32) -> Option<RegistryError> {
        let r = self.refused.read().ok()?;
        let (reason, at) = r.get(&id)?;
        (at.elapsed() < Self::FORGET).then(|| refusal(id, reason.clone()))
    }

    fn fetch(&self, id: u32) -> Result<Arc<Schema>, RegistryError> {
        self.ask(id)?;
        let text = match self.client.schema_text(id) {
            Err(RegistryError::Api { status: 404, .. }) => return Err(self.refuse(id, None)),
            other => other?,
        };
        let schema = match crate::parse(&text) {
            Ok(s) => s,
            Err(e) => return Err(self.refuse(id, Some(e.to_string()))),
        };
        if let Err(e) = crate::limits::check_bounded(&schema) {
            return Err(self.refuse(id, Some(e.to_string())));
        }
        let schema = Arc::new(schema);
        if let Ok(mut m) = self.by_id.write() {
            m.insert(id, schema.clone());
        }
        Ok(schema)
    }
}

fn refusal(id: u32, reason: Option<String>) -> RegistryError {
    match reason {
        Some(reason) => RegistryError::Refused { id, reason },
        None => RegistryError::Unknown { id },
    }
}

impl SchemaResolver for SchemaCache {
    fn resolve(&self, id: u32) -> Result<Arc<Schema>, RegistryError> {
        if let Some(s) = self.by_id.read().ok().and_then(|m| m.get(&id).cloned()) {
            return Ok(s);
        }
        if let Some(e) = self.refused(id) {
            return Err(e);
        }
        self.fetch(id)
    }

    fn resolve_in(&self, subject: &str, id: u32) -> Result<Arc<Schema>, RegistryError> {
        let key = (subject.to_string(), id);
        let known = self.members.read().ok().and_then(|m| m.get(&key).copied());
        let member = match known {
            Some(Ok(())) => true,
            Some(Err(at)) if at.elapsed() < Self::FORGET => false,
            _ => {
                if let Some(e) = self.refused(id) {
                    return Err(e);
                }
                self.ask(id)?;
                let subjects = match self.client.id_subjects(id) {
                    Err(RegistryError::Api { status: 404, .. }) => {
                        return Err(self.refuse(id, None))
                    }
                    other => other?,
                };
                let member = subjects.iter().any(|s| s == subject);
                if let Ok(mut m) = self.members.write() {
                    if m.len() >= Self::MAX_REFUSALS {
                        m.retain(|_, ok| ok.is_ok());
                    }
                    m.insert(
                        key,
                        if member {
                            Ok(())
                        } else {
                            Err(std::time::Instant::now())
                        },
                    );
                }
                member
            }
        };
        if !member {
            return Err(RegistryError::Refused {
                id,
                reason: format!("not registered under {subject}"),
            });
        }
        self.resolve(id)
    }
}

/// A fixed set of schemas (for tests and tools that know their schemas).
#[derive(Debug, Default)]
pub struct FixedResolver(HashMap<u32, Arc<Schema>>);

impl FixedResolver {
    /// Resolves exactly these ids.
    pub fn new(schemas: impl IntoIterator<Item = (u32, Schema)>) -> Self {
        Self(
            schemas
                .into_iter()
                .map(|(id, s)| (id, Arc::new(s)))
                .collect(),
        )
    }
}

impl SchemaResolver for FixedResolver {
    fn resolve(&self, id: u32) -> Result<Arc<Schema>, RegistryError> {
        self.0.get(&id).cloned().ok_or(RegistryError::Api {
            status: 404,
            error_code: 40403,
            message: format!("Schema {id} not found"),
        })
    }
}
