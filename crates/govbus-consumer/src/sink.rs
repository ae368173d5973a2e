//! Sinks: apply a batch of view changes and the consumed offsets in one
//! transaction, skipping any change whose entity sequence is not newer
//! than the one already applied.
//!
//! [`Sink`] is what every sink must do, and only that. A sink is a config
//! that builds it: `[consumer.sink] type = "postgres" | "sqlite" |
//! "jsonl" | "webhook"` with the type's own options ([`SinkConfig`]).
//! PostgreSQL and SQLite are one [`SqlSink`] over a dialect
//! ([`crate::db`]); the SQL sink alone keeps reports, receipts and
//! snapshots beside the rows. Adding a sink is one file here and one
//! variant in [`SinkConfig`].

mod jsonl;
mod ledger;
mod sql;
mod webhook;

pub use jsonl::{JsonLinesSink, JsonlConfig};
pub use sql::{PostgresConfig, SqlSink, SqliteConfig};
pub use webhook::{signature, WebhookConfig, WebhookSink};

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

pub use crate::change::{Applied, Dead, Row};
use crate::db::{Db, DbError};
use crate::store::Store;
use crate::table::TableDef;

/// A sink failure. The consumer stops (or retries); it never skips.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The database (the sink's, or a ledger's) failed.
    #[error(transparent)]
    Db(#[from] DbError),
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
            SinkError::Db(e) => e.refusal(),
            // A receiver that refuses the content (4xx, except "too soon"
            // and "too many") will refuse it again.
            SinkError::Webhook {
                status: Some(s), ..
            } if (400..500).contains(s) && *s != 408 && *s != 429 => Some("refused"),
            _ => None,
        }
    }
}

/// Where a province's copy goes: what every sink must do.
pub trait Sink: Send {
    /// The sink's kind in words (`postgres`, `sqlite`, …).
    fn kind(&self) -> &'static str;
    /// Makes ready to hold `t`'s rows (creates the table or adds missing
    /// columns; nothing for a sink without tables).
    fn ensure_table(&mut self, t: &TableDef) -> Result<(), SinkError>;
    /// The next offset to read per partition of `topic`, as stored.
    fn offsets(&mut self, topic: &str) -> Result<HashMap<i32, i64>, SinkError>;
    /// Applies `rows` and stores `offsets` (topic, partition, next offset)
    /// atomically.
    fn apply(&mut self, rows: &[Row], offsets: &[(String, i32, i64)])
        -> Result<Applied, SinkError>;
    /// Records dead-lettered records (idempotent: one per topic, partition
    /// and offset).
    fn record_dead(&mut self, dead: &[Dead]) -> Result<(), SinkError>;
    /// How many entities of `topic` (or its replay topic) are stale: a
    /// record of theirs was dead-lettered and no newer change of them has
    /// been applied since.
    fn dead(&mut self, topic: &str) -> Result<i64, SinkError>;
}

/// A sink as the consumer opens it: the SQL sink, with its bookkeeping
/// beside the rows, or another.
#[derive(Debug)]
pub enum Opened {
    /// PostgreSQL or SQLite.
    Sql(Box<SqlSink>),
    /// A sink without a database of rows (JSON lines, webhook).
    Other(Box<dyn Sink>),
}

impl std::fmt::Debug for dyn Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} sink", self.kind())
    }
}

impl Opened {
    /// The sink.
    pub fn sink(&mut self) -> &mut dyn Sink {
        match self {
            Opened::Sql(s) => s.as_mut(),
            Opened::Other(s) => s.as_mut(),
        }
    }

    /// The SQL sink, when it is one.
    pub fn sql(&mut self) -> Option<&mut SqlSink> {
        match self {
            Opened::Sql(s) => Some(s),
            Opened::Other(_) => None,
        }
    }
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
        Ok(match self.open()? {
            Opened::Sql(s) => s,
            Opened::Other(s) => s,
        })
    }

    /// Opens the sink, the SQL one as such.
    pub fn open(&self) -> Result<Opened, SinkError> {
        Ok(match self {
            SinkConfig::Postgres(c) => Opened::Sql(Box::new(c.build()?)),
            SinkConfig::Sqlite(c) => Opened::Sql(Box::new(c.build()?)),
            SinkConfig::Jsonl(c) => Opened::Other(Box::new(c.build()?)),
            SinkConfig::Webhook(c) => Opened::Other(Box::new(c.build()?)),
        })
    }

    /// What the sink's database holds, to read: the SQL database, or the
    /// ledger of a sink without one (its offsets and dead letters; no
    /// rows, reports or receipts).
    pub fn store(&self) -> Result<Store, SinkError> {
        Ok(Store::new(match self {
            SinkConfig::Postgres(c) => Db::postgres(&c.url, &c.schema)?,
            SinkConfig::Sqlite(c) => Db::sqlite(&c.path)?,
            SinkConfig::Jsonl(c) => Db::sqlite(&c.ledger())?,
            SinkConfig::Webhook(c) => Db::sqlite(&c.ledger())?,
        }))
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
