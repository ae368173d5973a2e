//! The JSON-lines sink: one document per change appended to a file,
//! exactly once (the ledger keeps the file's committed length with the
//! offsets and sequences).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;

use serde::{Deserialize, Serialize};

use super::ledger::{change_doc, counts, Ledger};
use super::{Applied, Row, Sink, SinkError};
use crate::table::TableDef;

/// `[consumer.sink] type = "jsonl"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlConfig {
    /// The file the documents are appended to.
    pub path: String,
    /// The SQLite ledger (default: `<path>.state.db`).
    #[serde(default)]
    pub state: Option<String>,
}

impl JsonlConfig {
    /// Opens the file and its ledger.
    pub fn build(&self) -> Result<JsonLinesSink, SinkError> {
        JsonLinesSink::open(&self.path, &self.ledger())
    }

    /// Where its ledger is.
    pub fn ledger(&self) -> String {
        self.state
            .clone()
            .unwrap_or_else(|| format!("{}.state.db", self.path))
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
        let mut ledger = Ledger::open(state)?;
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
    fn kind(&self) -> &'static str {
        "jsonl"
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
