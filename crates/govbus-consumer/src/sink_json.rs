//! Sinks without a database of their own: a JSON-lines file and a webhook.
//! Both keep offsets and per-entity sequences in a small SQLite ledger.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::time::Duration;

use hmac::{Hmac, Mac};
use rusqlite::OptionalExtension;
use serde_json::{json, Value as Json};
use sha2::Sha256;

use crate::sink::{Applied, Row, Sink, SinkError, SinkOptions};
use crate::table::TableDef;

/// Offsets, sequences and (for files) the committed length, in SQLite.
#[derive(Debug)]
struct Ledger {
    conn: rusqlite::Connection,
}

impl Ledger {
    fn open(path: &str) -> Result<Self, SinkError> {
        let conn = rusqlite::Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS _govbus_seen (
                 tbl TEXT NOT NULL, key TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (tbl, key));
             CREATE TABLE IF NOT EXISTS _govbus_offsets (
                 topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
                 PRIMARY KEY (topic, partition));
             CREATE TABLE IF NOT EXISTS _govbus_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);",
        )?;
        Ok(Self { conn })
    }

    fn offsets(&self, topic: &str) -> Result<HashMap<i32, i64>, SinkError> {
        let mut st = self
            .conn
            .prepare("SELECT partition, next_offset FROM _govbus_offsets WHERE topic = ?1")?;
        let rows = st.query_map([topic], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn meta(&self, name: &str) -> Result<Option<i64>, SinkError> {
        Ok(self
            .conn
            .query_row(
                "SELECT value FROM _govbus_meta WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// The rows newer than what was delivered (the last of each key wins
    /// within the batch), in order.
    fn fresh<'a>(&self, rows: &'a [Row]) -> Result<(Vec<&'a Row>, u64), SinkError> {
        let mut latest: HashMap<(&str, &str), i64> = HashMap::new();
        let mut out = Vec::new();
        let mut stale = 0;
        for r in rows {
            let k = (r.table.name.as_str(), r.key.as_str());
            let known = match latest.get(&k) {
                Some(s) => Some(*s),
                None => self
                    .conn
                    .prepare_cached("SELECT seq FROM _govbus_seen WHERE tbl = ?1 AND key = ?2")?
                    .query_row(k, |row| row.get(0))
                    .optional()?,
            };
            if r.is_stale(known) {
                stale += 1;
                continue;
            }
            latest.insert(k, r.seq);
            out.push(r);
        }
        Ok((out, stale))
    }

    /// Records delivered rows, offsets and meta values in one transaction.
    fn commit(
        &mut self,
        rows: &[&Row],
        offsets: &[(String, i32, i64)],
        meta: &[(&str, i64)],
    ) -> Result<(), SinkError> {
        let tx = self.conn.transaction()?;
        for r in rows {
            tx.prepare_cached(
                "INSERT INTO _govbus_seen (tbl, key, seq) VALUES (?1, ?2, ?3)
                 ON CONFLICT (tbl, key) DO UPDATE SET seq = excluded.seq",
            )?
            .execute((&r.table.name, &r.key, r.seq))?;
        }
        for (topic, partition, next) in offsets {
            tx.prepare_cached(
                "INSERT INTO _govbus_offsets (topic, partition, next_offset) VALUES (?1, ?2, ?3)
                 ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
            )?
            .execute((topic, partition, next))?;
        }
        for (name, value) in meta {
            tx.prepare_cached(
                "INSERT INTO _govbus_meta (name, value) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            )?
            .execute((name, value))?;
        }
        tx.commit()?;
        Ok(())
    }
}

/// The JSON document of one change, as files and webhooks receive it.
pub fn change_doc(r: &Row) -> Json {
    json!({
        "event_id": r.event_id,
        "table": r.table.name,
        "op": r.op.as_str(),
        "key": r.key,
        "seq": r.seq,
        "source_ts_ms": r.source_ts,
        "data": r.after.as_ref().map(govbus_schema::json::to_json),
    })
}

fn counts(rows: &[&Row], stale: u64) -> Applied {
    let deletes = rows.iter().filter(|r| r.after.is_none()).count() as u64;
    Applied {
        upserts: rows.len() as u64 - deletes,
        deletes,
        stale,
    }
}

/// Appends one JSON document per change to a file. Exactly once: the file's
/// committed length is kept in the ledger with the offsets, and anything
/// written past it (a crash between write and commit) is cut at start.
#[derive(Debug)]
pub struct JsonLinesSink {
    path: String,
    file: File,
    len: u64,
    ledger: Ledger,
}

impl JsonLinesSink {
    /// Opens (creating) `path`, with its ledger at `state`.
    pub fn open(path: &str, state: &str) -> Result<Self, SinkError> {
        let io = |source| SinkError::File {
            path: path.to_string(),
            source,
        };
        let ledger = Ledger::open(state)?;
        let len = ledger.meta("file_len")?.unwrap_or(0).max(0) as u64;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        let actual = file.metadata().map_err(io)?.len();
        if actual < len {
            return Err(io(std::io::Error::other(format!(
                "file is {actual} bytes but {len} were committed: it was truncated or replaced; \
                 move it aside (and its ledger {state}) to start over"
            ))));
        }
        if actual > len {
            tracing::warn!(
                path,
                committed = len,
                actual,
                "cutting uncommitted tail of the file"
            );
            file.set_len(len).map_err(io)?;
        }
        Ok(Self {
            path: path.to_string(),
            file,
            len,
            ledger,
        })
    }
}

impl Sink for JsonLinesSink {
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
        let mut buf = Vec::with_capacity(fresh.len() * 256);
        for r in &fresh {
            serde_json::to_writer(&mut buf, &change_doc(r)).map_err(|e| SinkError::File {
                path: self.path.clone(),
                source: e.into(),
            })?;
            buf.push(b'\n');
        }
        let io = |source| SinkError::File {
            path: self.path.clone(),
            source,
        };
        self.file.write_all(&buf).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        let len = self.len + buf.len() as u64;
        if let Err(e) = self
            .ledger
            .commit(&fresh, offsets, &[("file_len", len as i64)])
        {
            // Undo the write so a retry does not duplicate it.
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.len = len;
        Ok(counts(&fresh, stale))
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
    /// A webhook sink posting to `url`, with its ledger at `state`.
    pub fn open(url: &str, state: &str, opts: &SinkOptions) -> Result<Self, SinkError> {
        let timeout = if opts.webhook_timeout.is_zero() {
            Duration::from_secs(10)
        } else {
            opts.webhook_timeout
        };
        Ok(Self {
            url: url.to_string(),
            agent: ureq::AgentBuilder::new().timeout(timeout).build(),
            secret: opts.webhook_secret.as_ref().map(|s| s.as_bytes().to_vec()),
            per_change: opts.webhook_per_change,
            ledger: Ledger::open(state)?,
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
