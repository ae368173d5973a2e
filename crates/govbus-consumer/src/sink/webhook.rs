//! The webhook sink: changes POSTed as JSON (one request per batch, or per
//! change), signed with HMAC-SHA256 when a secret is set. At least once: an
//! endpoint cannot join a transaction, so receivers de-duplicate on
//! `event_id`; the ledger keeps offsets and sequences.

use std::collections::HashMap;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};
use sha2::Sha256;

use super::ledger::{change_doc, counts, Ledger};
use super::{Applied, Row, Sink, SinkError};
use crate::table::TableDef;

/// `[consumer.sink] type = "webhook"`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The endpoint (`http://` or `https://`).
    pub url: String,
    /// The SQLite ledger of offsets and sequences (default:
    /// `webhook.state.db`).
    #[serde(default)]
    pub state: Option<String>,
    /// HMAC-SHA256 key, from a file or the environment (`{ file = "…" }`,
    /// `{ env = "…" }`); the body's signature is sent as
    /// `X-Govbus-Signature: sha256=<hex>`.
    #[serde(default)]
    pub secret: Option<govbus_core::secret::Secret>,
    /// PEM file of the CA that signed an `https://` endpoint's certificate
    /// (none: the system's roots). The certificate and the host name are
    /// always verified.
    #[serde(default)]
    pub ca: Option<std::path::PathBuf>,
    /// One POST per change instead of one per batch.
    #[serde(default)]
    pub per_change: bool,
    /// Request timeout (ms); a timeout is retried like any failure.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    10_000
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("state", &self.state)
            .field("secret", &self.secret)
            .field("ca", &self.ca)
            .field("per_change", &self.per_change)
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

impl WebhookConfig {
    /// A webhook to `url` with the defaults.
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_string(),
            state: None,
            secret: None,
            ca: None,
            per_change: false,
            timeout_ms: default_timeout_ms(),
        }
    }

    /// Where its ledger is.
    pub fn ledger(&self) -> String {
        self.state
            .clone()
            .unwrap_or_else(|| "webhook.state.db".to_string())
    }

    /// Opens the ledger; the endpoint is reached on the first batch.
    pub fn build(&self) -> Result<WebhookSink, SinkError> {
        WebhookSink::open(self)
    }
}

/// POSTs changes as JSON to an HTTP endpoint, signed with HMAC-SHA256.
/// A non-2xx answer or a timeout fails the batch: the consumer retries it
/// with back-off and does not advance (at-least-once delivery; receivers
/// de-duplicate on `event_id`).
#[derive(Debug)]
pub struct WebhookSink {
    url: String,
    agent: ureq::Agent,
    secret: Option<Vec<u8>>,
    per_change: bool,
    ledger: Ledger,
}

impl WebhookSink {
    /// A webhook sink as `cfg` says.
    pub fn open(cfg: &WebhookConfig) -> Result<Self, SinkError> {
        let timeout = match cfg.timeout_ms {
            0 => Duration::from_secs(10),
            ms => Duration::from_millis(ms),
        };
        let access = govbus_http::ClientAccess {
            ca: cfg.ca.clone(),
            user: None,
            token: None,
        };
        let agent = access
            .agent(ureq::AgentBuilder::new().timeout(timeout))
            .map_err(|e| SinkError::Webhook {
                url: cfg.url.clone(),
                status: None,
                reason: e.to_string(),
            })?;
        Ok(Self {
            url: cfg.url.clone(),
            agent,
            secret: cfg.secret.as_ref().map(|s| s.expose().as_bytes().to_vec()),
            per_change: cfg.per_change,
            ledger: Ledger::open(&cfg.ledger())?,
        })
    }

    fn post(&self, body: &[u8]) -> Result<(), SinkError> {
        let mut req = self
            .agent
            .post(&self.url)
            .set("Content-Type", "application/json");
        let sig;
        if let Some(secret) = &self.secret {
            sig = format!("sha256={}", signature(secret, body));
            req = req.set("X-Govbus-Signature", &sig);
        }
        match req.send_bytes(body) {
            Ok(_) => Ok(()),
            Err(ureq::Error::Status(code, r)) => Err(SinkError::Webhook {
                url: self.url.clone(),
                status: Some(code),
                reason: format!(
                    "answered {code}: {}",
                    r.into_string()
                        .unwrap_or_default()
                        .chars()
                        .take(200)
                        .collect::<String>()
                ),
            }),
            Err(e) => Err(SinkError::Webhook {
                url: self.url.clone(),
                status: None,
                reason: e.to_string(),
            }),
        }
    }
}

/// Hex HMAC-SHA256 of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

impl Sink for WebhookSink {
    fn kind(&self) -> &'static str {
        "webhook"
    }

    fn record_dead(&mut self, dead: &[super::Dead]) -> Result<(), SinkError> {
        self.ledger.record_dead(dead)
    }

    fn dead(&mut self, topic: &str) -> Result<i64, SinkError> {
        self.ledger.dead(topic)
    }

    fn ensure_table(&mut self, _t: &TableDef) -> Result<(), SinkError> {
        Ok(())
    }

    fn offsets(&mut self, topic: &str) -> Result<HashMap<i32, i64>, SinkError> {
        self.ledger.offsets(topic)
    }

    fn apply(
        &mut self,
        rows: &[Row],
        offsets: &[(String, i32, i64)],
    ) -> Result<Applied, SinkError> {
        let (fresh, stale) = self.ledger.fresh(rows)?;
        let docs: Vec<Json> = fresh.iter().map(|r| change_doc(r)).collect();
        if self.per_change {
            for d in &docs {
                self.post(d.to_string().as_bytes())?;
            }
        } else if !docs.is_empty() {
            self.post(json!({ "changes": docs }).to_string().as_bytes())?;
        }
        self.ledger.commit(&fresh, offsets, &[])?;
        Ok(counts(&fresh, stale))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_rfc4231_hmac_sha256() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
