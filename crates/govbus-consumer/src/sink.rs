//! Sinks: apply a batch of view changes and the consumed offsets in one
//! database transaction, skipping any change whose entity sequence is not
//! newer than the one already applied.
//!
//! A sink is a config that builds it: `[consumer.sink] type = "postgres" |
//! "sqlite" | "jsonl" | "webhook"` with the type's own options
//! ([`SinkConfig`]). Adding a sink is one file here and one variant there.

mod jsonl;
mod ledger;
mod postgres;
mod sqlite;
mod webhook;

pub use jsonl::{JsonLinesSink, JsonlConfig};
pub use postgres::{PostgresConfig, PostgresSink};
pub use sqlite::{SqliteConfig, SqliteSink};
pub use webhook::{signature, WebhookConfig, WebhookSink};

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::report::{Cell, Report, TableRow};
use crate::snapshot::Snapshot;
use crate::table::{SqlValue, TableDef};
use govbus_core::InternalEvent;

/// A sink failure. The consumer stops (or retries); it never skips.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// PostgreSQL failed.
    #[error("postgres: {0}")]
    Postgres(#[from] ::postgres::Error),
    /// PostgreSQL could not be reached as the URL says (TLS, sslmode).
    #[error("postgres: {0}")]
    Connect(#[from] govbus_pg::PgError),
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A file could not be written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A report was declared for a sink that holds no rows.
    #[error("report {report}: a {sink} sink holds no rows to count; reports need a postgres or sqlite sink")]
    NoReports {
        /// The report.
        report: String,
        /// The sink's kind.
        sink: &'static str,
    },
    /// The webhook did not accept the delivery.
    #[error("webhook {url}: {reason}")]
    Webhook {
        /// The endpoint.
        url: String,
        /// The HTTP status, when it answered.
        status: Option<u16>,
        /// Status or transport error.
        reason: String,
    },
}

impl SinkError {
    /// Why the sink refuses a change for good, when retrying cannot fix it
    /// (a bounded reason: the change is dead-lettered); None for a failure
    /// that may pass (the database or endpoint is away: retried, never
    /// dead-lettered).
    pub fn refusal(&self) -> Option<&'static str> {
        match self {
            SinkError::Postgres(e) => {
                let code = e.as_db_error()?.code().code();
                if code.starts_with("23") {
                    Some("constraint")
                } else if code.starts_with("22") {
                    Some("value")
                } else {
                    None
                }
            }
            SinkError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => match e.code {
                rusqlite::ErrorCode::ConstraintViolation => Some("constraint"),
                rusqlite::ErrorCode::TypeMismatch => Some("value"),
                _ => None,
            },
            // A receiver that refuses the content (4xx, except "too soon"
            // and "too many") will refuse it again.
            SinkError::Webhook {
                status: Some(s), ..
            } if (400..500).contains(s) && *s != 408 && *s != 429 => Some("refused"),
            _ => None,
        }
    }
}

/// A record of a view that was dead-lettered (`dlq.consume.<subscriber>`):
/// kept in the sink so that its entity shows as stale in the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dead {
    /// The view topic.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// The entity key (empty when the record had none).
    pub key: String,
    /// The table the view fills.
    pub table: String,
    /// A bounded reason.
    pub reason: &'static str,
    /// The error in words.
    pub error: String,
}

/// One change to apply.
#[derive(Debug, Clone)]
pub struct Row {
    /// The table.
    pub table: Arc<TableDef>,
    /// The entity key.
    pub key: String,
    /// The entity's sequence.
    pub seq: i64,
    /// When the source changed (ms).
    pub source_ts: i64,
    /// Column values (in `table.columns` order), or None for a delete.
    pub values: Option<Vec<SqlValue>>,
    /// The change's id (idempotency key for webhook receivers).
    pub event_id: String,
    /// The view's op.
    pub op: govbus_schema::Op,
    /// The entity after the change, as the view holds it (None for a delete).
    pub after: Option<govbus_schema::AvroValue>,
    /// The record it was read from (topic, partition, offset), for its
    /// receipt.
    pub record: Option<(Arc<str>, i32, i64)>,
}

impl Row {
    /// Whether the change is already applied, given the entity's last
    /// applied sequence: a change not newer is, except a snapshot or a
    /// delete of the same sequence — what a router sends when a
    /// subscription changes (the entity re-sent with a new projection,
    /// entering again, or leaving), which applies again harmlessly.
    pub fn is_stale(&self, prev: Option<i64>) -> bool {
        use govbus_schema::Op;
        prev.is_some_and(|p| {
            p > self.seq || (p == self.seq && !matches!(self.op, Op::Snapshot | Op::Delete))
        })
    }
}

/// What one batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Rows upserted.
    pub upserts: u64,
    /// Rows deleted.
    pub deletes: u64,
    /// Changes skipped as not newer than what the table holds.
    pub stale: u64,
}

/// A database that holds a province's copy.
pub trait Sink: Send {
    /// Creates the table (and govbus's bookkeeping tables) or adds missing columns.
    fn ensure_table(&mut self, t: &TableDef) -> Result<(), SinkError>;
    /// The next offset to read per partition of `topic`, as stored.
    fn offsets(&mut self, topic: &str) -> Result<HashMap<i32, i64>, SinkError>;
    /// Applies `rows` and stores `offsets` (topic, partition, next offset) atomically.
    fn apply(&mut self, rows: &[Row], offsets: &[(String, i32, i64)])
        -> Result<Applied, SinkError>;

    /// Records dead-lettered records (idempotent: one per topic, partition
    /// and offset).
    fn record_dead(&mut self, dead: &[Dead]) -> Result<(), SinkError>;

    /// How many entities of `topic` (or its replay topic) are stale: a
    /// record of theirs was dead-lettered and no newer change of them has
    /// been applied since (by a replay, or by the source's next change).
    fn dead(&mut self, topic: &str) -> Result<i64, SinkError>;

    /// Keeps `reports` beside the rows from now on, in the same
    /// transactions. A sink that holds no rows refuses any report.
    fn set_reports(&mut self, reports: Vec<Arc<Report>>) -> Result<(), SinkError> {
        match reports.first() {
            None => Ok(()),
            Some(r) => Err(SinkError::NoReports {
                report: r.id(),
                sink: self.kind(),
            }),
        }
    }

    /// A report's stored cells and their counts.
    fn report_cells(&mut self, _report: &str) -> Result<Vec<(Cell, i64)>, SinkError> {
        Ok(Vec::new())
    }

    /// What the last applied batch changed in the reports (report id,
    /// cell, change of its count), once: the next call gives the next
    /// batch's.
    fn take_touched(&mut self) -> Vec<(String, Cell, i64)> {
        Vec::new()
    }

    /// Every row `table` holds, as values in `table.columns` order, and
    /// the cells of `report` (when given), read in one snapshot. None: the
    /// sink holds no rows, or no such table.
    fn scan(
        &mut self,
        _table: &TableDef,
        _report: Option<&str>,
        _each: &mut dyn FnMut(&[SqlValue]),
    ) -> Result<Option<Vec<(Cell, i64)>>, SinkError> {
        Ok(None)
    }

    /// What the report's figures were built for (its definition as text),
    /// if they were.
    fn report_definition(&mut self, _report: &str) -> Result<Option<String>, SinkError> {
        Ok(None)
    }

    /// Replaces a report's counts with `cells`, built for `definition`,
    /// in one transaction.
    fn replace_report(
        &mut self,
        report: &str,
        _definition: &str,
        _cells: &[(Cell, i64)],
    ) -> Result<(), SinkError> {
        Err(SinkError::NoReports {
            report: report.to_string(),
            sink: self.kind(),
        })
    }

    /// A report's stored cells and the next offsets of `topics`, read in
    /// one snapshot: what a dated snapshot freezes (None: the sink keeps
    /// no reports).
    #[allow(clippy::type_complexity)]
    fn figures_and_offsets(
        &mut self,
        _report: &str,
        _topics: &[String],
    ) -> Result<Option<(Vec<(Cell, i64)>, BTreeMap<String, BTreeMap<i32, i64>>)>, SinkError> {
        Ok(None)
    }

    /// Stores a dated snapshot unless one of that report and date is
    /// stored already (true: stored now).
    fn save_snapshot(&mut self, s: &Snapshot) -> Result<bool, SinkError> {
        Err(SinkError::NoReports {
            report: s.report.clone(),
            sink: self.kind(),
        })
    }

    /// A report's dated snapshots, oldest first, as stored (their digests
    /// as stored, so that [`Snapshot::verify`] finds a change).
    fn snapshots(&mut self, _report: &str) -> Result<Vec<Snapshot>, SinkError> {
        Ok(Vec::new())
    }

    /// Changes applied per day (Vietnam's), oldest first, over the last
    /// `days` days.
    fn applied_days(&mut self, _days: u32) -> Result<Vec<(String, i64)>, SinkError> {
        Ok(Vec::new())
    }

    /// The `n` rows of `table` changed last: key (read from `key_column`)
    /// and the source time of the change (ms), newest first.
    fn recent(
        &mut self,
        _table: &str,
        _key_column: &str,
        _n: u32,
    ) -> Result<Vec<(String, i64)>, SinkError> {
        Ok(Vec::new())
    }

    /// Bucket digests of `table`'s rows ([`crate::reconcile`]), computed
    /// where the rows are (None: the sink holds no rows, or no such table).
    fn bucket_digests(
        &mut self,
        _table: &TableDef,
        _buckets: u32,
    ) -> Result<Option<BTreeMap<u32, crate::reconcile::Digest>>, SinkError> {
        Ok(None)
    }

    /// The rows of `table` in the buckets `which`.
    fn bucket_rows(
        &mut self,
        _table: &TableDef,
        _buckets: u32,
        _which: &[u32],
    ) -> Result<BTreeMap<String, crate::reconcile::Held>, SinkError> {
        Ok(BTreeMap::new())
    }

    /// The sequence last applied for each of `keys` of `table` (deleted
    /// entities included).
    fn seen_seqs(
        &mut self,
        _table: &str,
        _keys: &[String],
    ) -> Result<BTreeMap<String, i64>, SinkError> {
        Ok(BTreeMap::new())
    }

    /// Writes a receipt of each applied batch for `subscriber` from now on
    /// ([`crate::receipt`]), in the batch's transaction. A sink that keeps
    /// no database (jsonl, webhook) keeps none.
    fn set_receipts(&mut self, _subscriber: &str) -> Result<(), SinkError> {
        Ok(())
    }

    /// The receipts written since the last call, once committed.
    fn take_receipts(&mut self) -> Vec<crate::receipt::Receipt> {
        Vec::new()
    }

    /// The stored receipts numbered `from` and after, in order (at most
    /// `limit`).
    fn receipts(
        &mut self,
        _from: i64,
        _limit: i64,
    ) -> Result<Vec<crate::receipt::Receipt>, SinkError> {
        Ok(Vec::new())
    }

    /// The number of the last receipt known to be on `_govbus.receipts`.
    fn receipts_published(&mut self) -> Result<i64, SinkError> {
        Ok(0)
    }

    /// Records that receipts up to `seq` are on `_govbus.receipts`.
    fn mark_receipts_published(&mut self, _seq: i64) -> Result<(), SinkError> {
        Ok(())
    }

    /// The sink's kind in words (`postgres`, `sqlite`, …).
    fn kind(&self) -> &'static str;

    /// Rows held in `table` and the source time (ms) of the newest change
    /// applied, when the sink can tell (None: no such table yet, or a sink
    /// that holds no rows, like a webhook).
    fn table_status(&mut self, _table: &str) -> Result<Option<(i64, Option<i64>)>, SinkError> {
        Ok(None)
    }
}

/// A key as text, from its column's value (as the view's record key
/// gives it).
pub(crate) fn key_text(v: &SqlValue) -> String {
    match v {
        SqlValue::Text(s) | SqlValue::Date(s) => s.clone(),
        SqlValue::Int(i) | SqlValue::Timestamp(i) => i.to_string(),
        other => format!("{other:?}"),
    }
}

/// Rows as a batch found them before it wrote, by table and key, with
/// the definition they were read by (None: there was no row).
#[derive(Debug, Default)]
pub(crate) struct Before(HashMap<String, HashMap<String, Option<Found>>>);

/// A row read, with the definition it was read by.
type Found = (Arc<TableDef>, Vec<SqlValue>);

impl Before {
    /// Whether the row of `key` in `table` was read already.
    pub(crate) fn has(&self, table: &str, key: &str) -> bool {
        self.0.get(table).is_some_and(|m| m.contains_key(key))
    }

    /// The row of `key` in `table` as the batch found it (`values` None:
    /// there was none).
    pub(crate) fn found(
        &mut self,
        table: &Arc<TableDef>,
        key: &str,
        values: Option<Vec<SqlValue>>,
    ) {
        let rows = match self.0.get_mut(&table.name) {
            Some(m) => m,
            None => self.0.entry(table.name.clone()).or_default(),
        };
        rows.insert(key.to_string(), values.map(|v| (table.clone(), v)));
    }

    fn row(&self, table: &str, key: &str) -> Option<(&TableDef, &[SqlValue])> {
        let (t, v) = self.0.get(table)?.get(key)?.as_ref()?;
        Some((t, v))
    }
}

/// Whether a report counts the rows of `table` (a sink then reads the
/// rows a batch replaces, before it writes them).
pub(crate) fn reported(reports: &[Arc<Report>], table: &str) -> bool {
    reports.iter().any(|r| r.table == table)
}

/// Per report over a table of `applied` (changes applied in a batch), the
/// change of count per cell: each applied key leaves the cell its row had
/// before the batch (`before`) and enters the cell of its last change
/// (none for a delete, or a row the filter leaves out). A row's cell is a
/// function of its values, and the figures move in the rows'
/// transaction, so the row before the batch is what was counted. A new
/// row the filter fails on is not counted, with a warning and
/// `govbus_report_uncounted_total` (a rebuild decides the same).
pub(crate) fn report_deltas<'a>(
    reports: &'a [Arc<Report>],
    applied: &[&Row],
    before: &Before,
) -> Vec<(&'a Arc<Report>, BTreeMap<Cell, i64>)> {
    reports
        .iter()
        .filter_map(|rep| {
            let rows: Vec<(String, Option<Cell>)> = applied
                .iter()
                .filter(|r| r.table.name == rep.table)
                .map(|r| {
                    let cell = r.values.as_ref().and_then(|values| {
                        let row = TableRow {
                            table: &r.table,
                            values,
                        };
                        rep.cell(&row).unwrap_or_else(|e| {
                            crate::events::Uncounted {
                                report: rep,
                                key: &r.key,
                                error: &e,
                            }
                            .emit();
                            None
                        })
                    });
                    (r.key.clone(), cell)
                })
                .collect();
            if rows.is_empty() {
                return None;
            }
            let old: HashMap<String, Cell> = rows
                .iter()
                .filter_map(|(k, _)| {
                    let (table, values) = before.row(&rep.table, k)?;
                    // Warned of when it was applied.
                    let cell = rep.cell(&TableRow { table, values }).ok()??;
                    Some((k.clone(), cell))
                })
                .collect();
            Some((rep, crate::report::plan(&rows, &old)))
        })
        .collect()
}

/// A stored snapshot from its columns: the content as JSON, the digest
/// as stored (None: the content does not read as a snapshot).
pub(crate) fn stored_snapshot(body: &str, digest: String) -> Option<Snapshot> {
    let mut s: Snapshot = serde_json::from_str(body).ok()?;
    s.digest = digest;
    Some(s)
}

/// What a sink keeps to write receipts: whose, and the last one written
/// (loaded from the store on first use).
#[derive(Debug, Default)]
pub(crate) struct ReceiptState {
    pub(crate) subscriber: Option<String>,
    pub(crate) last: Option<Option<(i64, String)>>,
    pub(crate) out: Vec<crate::receipt::Receipt>,
}

impl ReceiptState {
    /// The receipt of `applied` (None: receipts are off, or nothing was
    /// applied), given the last receipt written.
    pub(crate) fn next(
        &self,
        last: Option<(i64, String)>,
        applied: &[&Row],
    ) -> Option<crate::receipt::Receipt> {
        let sub = self.subscriber.as_deref()?;
        let events: Vec<crate::receipt::Applied> = applied
            .iter()
            .map(|r| {
                let (topic, partition, offset) =
                    r.record.clone().unwrap_or_else(|| (Arc::from(""), -1, -1));
                crate::receipt::Applied {
                    event_id: r.event_id.clone(),
                    topic: topic.to_string(),
                    partition,
                    offset,
                }
            })
            .collect();
        if events.is_empty() {
            return None;
        }
        Some(crate::receipt::Receipt::next(
            sub,
            last,
            events,
            govbus_core::now_ms(),
        ))
    }

    /// After the commit: the receipt is the last, and goes out.
    pub(crate) fn committed(&mut self, r: Option<crate::receipt::Receipt>) {
        if let Some(r) = r {
            self.last = Some(Some((r.seq, r.hash.clone())));
            self.out.push(r);
        }
    }
}

/// A stored receipt from its columns (None: the events do not read).
pub(crate) fn stored_receipt(
    subscriber: String,
    seq: i64,
    applied_at_ms: i64,
    prev: String,
    hash: String,
    events: &str,
) -> Option<crate::receipt::Receipt> {
    Some(crate::receipt::Receipt {
        subscriber,
        seq,
        events: serde_json::from_str(events).ok()?,
        applied_at_ms,
        prev,
        hash,
    })
}

/// The day (Vietnam's, `YYYY-MM-DD`) a batch applied now counts in.
pub(crate) fn applied_day() -> String {
    govbus_core::admin_map::day_of_ms(govbus_core::now_ms()).to_string()
}

/// The first day of the last `days` days, as text.
pub(crate) fn first_day(days: u32) -> String {
    (govbus_core::admin_map::day_of_ms(govbus_core::now_ms())
        - chrono::Duration::days(i64::from(days.saturating_sub(1))))
    .to_string()
}

fn q(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Where a province's copy lives: `[consumer.sink]`, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SinkConfig {
    /// PostgreSQL tables.
    Postgres(PostgresConfig),
    /// A local SQLite file.
    Sqlite(SqliteConfig),
    /// A JSON-lines file.
    Jsonl(JsonlConfig),
    /// An HTTP endpoint.
    Webhook(WebhookConfig),
}

impl SinkConfig {
    /// Opens the sink.
    pub fn build(&self) -> Result<Box<dyn Sink>, SinkError> {
        Ok(match self {
            SinkConfig::Postgres(c) => Box::new(c.build()?),
            SinkConfig::Sqlite(c) => Box::new(c.build()?),
            SinkConfig::Jsonl(c) => Box::new(c.build()?),
            SinkConfig::Webhook(c) => Box::new(c.build()?),
        })
    }

    /// The sink for a URL as the consumer's old `sink = "…"` string named
    /// it (`postgres://`, `jsonl://`, `http(s)://`, else SQLite), tables
    /// in `pg_schema`.
    pub fn from_url(url: &str, pg_schema: &str) -> Self {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            SinkConfig::Postgres(PostgresConfig {
                url: url.to_string(),
                schema: pg_schema.to_string(),
            })
        } else if let Some(path) = url.strip_prefix("jsonl://") {
            SinkConfig::Jsonl(JsonlConfig {
                path: path.to_string(),
                state: None,
            })
        } else if url.starts_with("http://") || url.starts_with("https://") {
            SinkConfig::Webhook(WebhookConfig::new(url))
        } else {
            SinkConfig::Sqlite(SqliteConfig {
                path: url.strip_prefix("sqlite://").unwrap_or(url).to_string(),
            })
        }
    }

    /// The sink for logs: its type and where, passwords masked.
    pub fn describe(&self) -> String {
        match self {
            SinkConfig::Postgres(c) => format!("postgres {} schema {}", redact(&c.url), c.schema),
            SinkConfig::Sqlite(c) => format!("sqlite {}", c.path),
            SinkConfig::Jsonl(c) => format!("jsonl {}", c.path),
            SinkConfig::Webhook(c) => format!("webhook {}", redact(&c.url)),
        }
    }

    /// The `[consumer.sink]` section that says what `self` does.
    fn section(&self) -> String {
        let q = |v: &str| serde_json::Value::from(v).to_string();
        let body = match self {
            SinkConfig::Postgres(c) => format!(
                "type = \"postgres\"\nurl = {}\nschema = {}\n",
                q(&c.url),
                q(&c.schema)
            ),
            SinkConfig::Sqlite(c) => format!("type = \"sqlite\"\npath = {}\n", q(&c.path)),
            SinkConfig::Jsonl(c) => format!("type = \"jsonl\"\npath = {}\n", q(&c.path)),
            SinkConfig::Webhook(c) => format!("type = \"webhook\"\nurl = {}\n", q(&c.url)),
        };
        format!("[consumer.sink]\n{body}")
    }
}

/// `url` with its secrets masked (user info, secret query parameters,
/// key=value passwords): [`govbus_core::secret::redact`].
pub fn redact(url: &str) -> String {
    govbus_core::secret::redact(url)
}

impl<'de> Deserialize<'de> for SinkConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
        enum Tagged {
            Postgres(PostgresConfig),
            Sqlite(SqliteConfig),
            Jsonl(JsonlConfig),
            Webhook(WebhookConfig),
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Url(String),
            Table(serde_json::Value),
        }
        match Either::deserialize(d)? {
            Either::Url(url) => Err(serde::de::Error::custom(format!(
                "`sink = \"…\"` is the old form: write the sink as its own section instead, for this one:\n{}(and move `pg_schema`, `state` and `webhook_*` into it as `schema`, `state`, `secret`, `per_change`, `timeout_ms`)",
                SinkConfig::from_url(&url, "public").section()
            ))),
            Either::Table(v) => {
                let tagged: Tagged = serde_json::from_value(v).map_err(|e| {
                    serde::de::Error::custom(format!(
                        "[consumer.sink]: {e} (type is one of \"postgres\", \"sqlite\", \"jsonl\", \"webhook\")"
                    ))
                })?;
                Ok(match tagged {
                    Tagged::Postgres(c) => SinkConfig::Postgres(c),
                    Tagged::Sqlite(c) => SinkConfig::Sqlite(c),
                    Tagged::Jsonl(c) => SinkConfig::Jsonl(c),
                    Tagged::Webhook(c) => SinkConfig::Webhook(c),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<SinkConfig, String> {
        #[derive(Deserialize)]
        struct Holder {
            sink: SinkConfig,
        }
        config::Config::builder()
            .add_source(config::File::from_str(toml_text, config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize::<Holder>())
            .map(|h| h.sink)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn each_sink_type_reads_its_own_options() {
        assert_eq!(
            parse("[sink]\ntype = \"postgres\"\nurl = \"postgres://u:p@h/db\"\nschema = \"p52\"\n"),
            Ok(SinkConfig::Postgres(PostgresConfig {
                url: "postgres://u:p@h/db".into(),
                schema: "p52".into()
            }))
        );
        assert_eq!(
            parse("[sink]\ntype = \"sqlite\"\npath = \"p92.db\"\n"),
            Ok(SinkConfig::Sqlite(SqliteConfig {
                path: "p92.db".into()
            }))
        );
        std::env::set_var("GOVBUS_TEST_WEBHOOK_SECRET_K", "k-secret");
        let w = parse("[sink]\ntype = \"webhook\"\nurl = \"https://x/h\"\nsecret = { env = \"GOVBUS_TEST_WEBHOOK_SECRET_K\" }\nper_change = true\n").unwrap();
        let SinkConfig::Webhook(w) = w else {
            panic!("{w:?}")
        };
        assert!(
            w.per_change
                && w.secret.as_ref().map(|s| s.expose()) == Some("k-secret")
                && w.timeout_ms == 10_000
        );
        assert!(
            !format!("{w:?}").contains("k-secret"),
            "the secret is masked"
        );
        // A secret written in the file itself is refused, and not repeated.
        let e = parse("[sink]\ntype = \"webhook\"\nurl = \"https://x/h\"\nsecret = \"inline-k\"\n")
            .unwrap_err();
        assert!(
            e.contains("not written in a config file") && !e.contains("inline-k"),
            "{e}"
        );
    }

    #[test]
    fn a_wrong_option_or_type_is_refused_with_what_is_allowed() {
        let e = parse("[sink]\ntype = \"sqlite\"\nurl = \"x\"\n").unwrap_err();
        assert!(
            e.contains("unknown field `url`") && e.contains("path"),
            "{e}"
        );
        let e = parse("[sink]\ntype = \"kafka\"\n").unwrap_err();
        assert!(
            e.contains("\"postgres\", \"sqlite\", \"jsonl\", \"webhook\""),
            "{e}"
        );
    }

    #[test]
    fn the_old_url_form_is_refused_with_the_section_to_write_instead() {
        let e = parse("sink = \"postgres://govbus:secret@127.0.0.1:5432/test\"\n").unwrap_err();
        assert!(
            e.contains("[consumer.sink]\ntype = \"postgres\"\nurl = \"postgres://govbus:secret@127.0.0.1:5432/test\"\nschema = \"public\"\n"),
            "{e}"
        );
        let e = parse("sink = \"sqlite://p92.db\"\n").unwrap_err();
        assert!(e.contains("type = \"sqlite\"\npath = \"p92.db\"\n"), "{e}");
    }

    #[test]
    fn passwords_are_masked_in_descriptions() {
        let s = SinkConfig::from_url("postgres://govbus:secret@127.0.0.1/test", "p52");
        assert_eq!(
            s.describe(),
            "postgres postgres://govbus:***@127.0.0.1/test schema p52"
        );
    }
}
