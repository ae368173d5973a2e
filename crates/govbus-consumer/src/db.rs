//! A province's SQL database, written once: a connection ([`Conn`], one
//! per database client) and a dialect ([`dialect::Dialect`]) that states
//! only what differs between PostgreSQL and SQLite — placeholders, types,
//! list parameters, index lookups — as Confluent's JDBC sink connector
//! has one generic dialect that PostgreSQL's and SQLite's override.
//!
//! Each bookkeeping concern keeps its tables and statements in its own
//! module: [`seen`] (the last sequence per entity), [`offsets`], [`dead`]
//! letters, [`cells`] of reports, [`receipts`], applied [`days`],
//! [`snapshots`] and the ledger's [`meta`]; [`rows`] holds the
//! province's own tables. The concerns that move with every batch
//! (report cells, receipts, the day's count) are [`Hook`]s, run inside
//! the batch's transaction so that they stay atomic with the rows.

pub(crate) mod cells;
pub(crate) mod days;
pub(crate) mod dead;
pub(crate) mod dialect;
pub(crate) mod digests;
mod lite;
pub(crate) mod meta;
pub(crate) mod offsets;
mod pg;
pub(crate) mod receipts;
pub(crate) mod rows;
pub(crate) mod seen;
pub(crate) mod snapshots;

use crate::change::{Applied, Row};
use crate::table::{ColType, SqlValue};
use dialect::Dialect;

/// A database failure.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// PostgreSQL failed.
    #[error("postgres: {0}")]
    Postgres(#[from] ::postgres::Error),
    /// PostgreSQL could not be reached as the URL says (TLS, sslmode).
    #[error("postgres: {0}")]
    Connect(#[from] govbus_pg::PgError),
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Rows could not be streamed to PostgreSQL's COPY (the connection
    /// broke).
    #[error("postgres COPY: {0}")]
    Copy(#[from] std::io::Error),
    /// The database has no such operation (a dialect's caller's mistake).
    #[error("{0} is not supported by this database")]
    Unsupported(&'static str),
    /// A column did not hold what its statement reads: a table was
    /// changed by other hands than govbus's.
    #[error("a stored value does not read as govbus wrote it (result column {column}: expected {expected}); was a govbus table changed by hand?")]
    Column {
        /// The column's position.
        column: usize,
        /// What was expected.
        expected: &'static str,
    },
}

impl DbError {
    /// Why the database refuses a change for good, when retrying cannot
    /// fix it (a bounded reason); None for a failure that may pass.
    pub fn refusal(&self) -> Option<&'static str> {
        match self {
            DbError::Postgres(e) => {
                let code = e.as_db_error()?.code().code();
                if code.starts_with("23") {
                    Some("constraint")
                } else if code.starts_with("22") {
                    Some("value")
                } else {
                    None
                }
            }
            DbError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => match e.code {
                rusqlite::ErrorCode::ConstraintViolation => Some("constraint"),
                rusqlite::ErrorCode::TypeMismatch => Some("value"),
                _ => None,
            },
            _ => None,
        }
    }
}

/// A statement's parameter.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Param {
    /// NULL, whatever the parameter's type.
    Null,
    /// Text.
    Text(String),
    /// An integer (bound as the parameter's width).
    Int(i64),
    /// A double.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A date, `YYYY-MM-DD` (the dialect's `date_param` types it).
    Date(String),
    /// An instant, ms since the epoch (the dialect's `typed_param` types it).
    Timestamp(i64),
    /// A list of texts (the dialect's `lists` reads it as a table).
    Texts(Vec<String>),
    /// A list of integers.
    Ints(Vec<i64>),
}

impl Param {
    /// A column's value as its column's type binds it.
    pub(crate) fn of(v: &SqlValue, ty: ColType) -> Param {
        match (ty, v) {
            (ColType::Int, SqlValue::Int(i) | SqlValue::Timestamp(i)) => Param::Int(*i),
            (ColType::Timestamp, SqlValue::Int(i) | SqlValue::Timestamp(i)) => Param::Timestamp(*i),
            (ColType::Int | ColType::Timestamp, _) => Param::Null,
            (ColType::Float, SqlValue::Float(f)) => Param::Float(*f),
            (ColType::Bool, SqlValue::Bool(b)) => Param::Bool(*b),
            (ColType::Float | ColType::Bool, _) => Param::Null,
            (_, SqlValue::Null) => Param::Null,
            (ColType::Date, SqlValue::Text(s) | SqlValue::Date(s)) => Param::Date(s.clone()),
            (_, SqlValue::Text(s) | SqlValue::Date(s)) => Param::Text(s.clone()),
            (_, other) => Param::Text(format!("{other:?}")),
        }
    }
}

impl From<&str> for Param {
    fn from(s: &str) -> Self {
        Param::Text(s.to_string())
    }
}

impl From<&String> for Param {
    fn from(s: &String) -> Self {
        Param::Text(s.clone())
    }
}

impl From<String> for Param {
    fn from(s: String) -> Self {
        Param::Text(s)
    }
}

impl From<i64> for Param {
    fn from(i: i64) -> Self {
        Param::Int(i)
    }
}

impl From<i32> for Param {
    fn from(i: i32) -> Self {
        Param::Int(i64::from(i))
    }
}

/// A value read from a result row, as the database typed it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Got {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
    Bool(bool),
}

/// One row of a result.
pub(crate) trait Fetched {
    /// The value of column `i`.
    fn get(&self, i: usize) -> Result<Got, DbError>;
}

impl dyn Fetched + '_ {
    pub(crate) fn opt_int(&self, i: usize) -> Result<Option<i64>, DbError> {
        match self.get(i)? {
            Got::Null => Ok(None),
            Got::Int(n) => Ok(Some(n)),
            Got::Text(s) => s.parse().map(Some).map_err(|_| DbError::Column {
                column: i,
                expected: "an integer",
            }),
            _ => Err(DbError::Column {
                column: i,
                expected: "an integer",
            }),
        }
    }

    pub(crate) fn int(&self, i: usize) -> Result<i64, DbError> {
        self.opt_int(i)?.ok_or(DbError::Column {
            column: i,
            expected: "an integer, not NULL",
        })
    }

    pub(crate) fn opt_text(&self, i: usize) -> Result<Option<String>, DbError> {
        match self.get(i)? {
            Got::Null => Ok(None),
            Got::Text(s) => Ok(Some(s)),
            Got::Int(n) => Ok(Some(n.to_string())),
            Got::Float(f) => Ok(Some(f.to_string())),
            Got::Bool(b) => Ok(Some(b.to_string())),
        }
    }

    pub(crate) fn text(&self, i: usize) -> Result<String, DbError> {
        self.opt_text(i)?.ok_or(DbError::Column {
            column: i,
            expected: "a text, not NULL",
        })
    }

    /// Column `i` as a value of a column of type `ty` (as the dialect's
    /// `select_column` reads it).
    pub(crate) fn value(&self, i: usize, ty: ColType) -> Result<SqlValue, DbError> {
        Ok(match (self.get(i)?, ty) {
            (Got::Null, _) => SqlValue::Null,
            (Got::Int(n), ColType::Bool) => SqlValue::Bool(n != 0),
            (Got::Int(n), ColType::Timestamp) => SqlValue::Timestamp(n),
            (Got::Int(n), _) => SqlValue::Int(n),
            (Got::Bool(b), _) => SqlValue::Bool(b),
            (Got::Float(f), _) => SqlValue::Float(f),
            (Got::Text(s), ColType::Timestamp) => chrono::DateTime::parse_from_rfc3339(&s)
                .map_or(SqlValue::Null, |d| {
                    SqlValue::Timestamp(d.timestamp_millis())
                }),
            (Got::Text(s), ColType::Date) => SqlValue::Date(s),
            (Got::Text(s), _) => SqlValue::Text(s),
        })
    }
}

/// A database client: statements with parameters, rows streamed to a
/// callback. Prepared statements are kept per SQL text.
pub(crate) trait Conn: Send {
    /// Runs statements without parameters (DDL, `BEGIN`, `COMMIT`).
    fn batch(&mut self, sql: &str) -> Result<(), DbError>;
    /// Runs a statement; the rows it changed.
    fn execute(&mut self, sql: &str, params: &[Param]) -> Result<u64, DbError>;
    /// Runs a query, each row to `each` as it arrives.
    fn query(
        &mut self,
        sql: &str,
        params: &[Param],
        each: &mut dyn FnMut(&dyn Fetched) -> Result<(), DbError>,
    ) -> Result<(), DbError>;
    /// Loads `data`, rows in COPY's text format, with `sql` (`COPY … FROM
    /// STDIN`); the rows loaded. Only where the dialect stages.
    fn copy_in(&mut self, _sql: &str, _data: &[u8]) -> Result<u64, DbError> {
        Err(DbError::Unsupported("COPY"))
    }
    /// Opens the connection again if it was lost (between transactions).
    fn ready(&mut self) -> Result<(), DbError> {
        Ok(())
    }
    /// Forgets prepared statements (after the tables changed shape).
    fn forget(&mut self) {}
}

/// A province's database: a connection, its dialect, and where govbus's
/// tables are (a PostgreSQL schema; SQLite's main database).
pub struct Db {
    conn: Box<dyn Conn>,
    pub(crate) d: &'static dyn Dialect,
    /// `"schema".`, or empty.
    prefix: String,
    /// The schema's name as the catalog holds it.
    pub(crate) schema: String,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("kind", &self.d.name())
            .field("schema", &self.schema)
            .finish()
    }
}

/// A name quoted as an SQL identifier.
pub(crate) fn q(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl Db {
    /// PostgreSQL at `url`, govbus's tables in `schema` (created).
    pub fn postgres(url: &str, schema: &str) -> Result<Self, DbError> {
        let conn = pg::PgConn::connect(url)?;
        let mut db = Db {
            conn: Box::new(conn),
            d: &dialect::Postgres,
            prefix: format!("{}.", q(schema)),
            schema: schema.to_string(),
        };
        db.create(&format!("CREATE SCHEMA IF NOT EXISTS {};", q(schema)))?;
        Ok(db)
    }

    /// The SQLite file at `path` (created; `:memory:` for none).
    pub fn sqlite(path: &str) -> Result<Self, DbError> {
        let conn = lite::LiteConn::open(path)?;
        let mut db = Db {
            conn: Box::new(conn),
            d: &dialect::Sqlite,
            prefix: String::new(),
            schema: "main".into(),
        };
        db.create("")?;
        Ok(db)
    }

    /// Creates the bookkeeping tables every concern keeps, after `first`.
    /// `CREATE … IF NOT EXISTS` is not safe against itself in PostgreSQL:
    /// a second agent creating the same schema or table at the same
    /// moment gets a unique violation. The other one created it; again.
    fn create(&mut self, first: &str) -> Result<(), DbError> {
        let mut ddl = first.to_string();
        for part in [
            seen::DDL,
            offsets::DDL,
            dead::DDL,
            cells::DDL,
            receipts::DDL,
            days::DDL,
            snapshots::DDL,
            meta::DDL,
        ] {
            ddl.push_str(&self.ddl(part));
        }
        if let Some(more) = self
            .d
            .store_uncompressed(&self.table("_govbus_receipts"), "events")
        {
            ddl.push_str(&more);
        }
        let mut attempt = 0;
        while let Err(e) = self.conn.batch(&ddl) {
            attempt += 1;
            let again = matches!(&e, DbError::Postgres(p)
                if p.code().is_some_and(|c| c.code() == "23505" || c.code() == "42P07"));
            if attempt >= 5 || !again {
                return Err(e);
            }
            tracing::debug!(schema = self.schema, error = %e, "created at the same moment by another agent; again");
        }
        dead::upgrade(self)
    }

    /// The database's kind in words (`postgres`, `sqlite`).
    pub fn kind(&self) -> &'static str {
        self.d.name()
    }

    /// A table of govbus's schema, qualified and quoted.
    pub(crate) fn table(&self, name: &str) -> String {
        format!("{}{}", self.prefix, q(name))
    }

    /// Parameter `n` (from 1) as the dialect writes it.
    pub(crate) fn p(&self, n: usize) -> String {
        self.d.param(n)
    }

    /// `template` with `{p}` the schema prefix and `{bigint}`, `{int}`,
    /// `{date}` the dialect's types.
    pub(crate) fn ddl(&self, template: &str) -> String {
        template
            .replace("{p}", &self.prefix)
            .replace("{bigint}", self.d.bigint())
            .replace("{int}", self.d.int())
            .replace("{date}", self.d.date())
    }

    pub(crate) fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        self.conn.batch(sql)
    }

    pub(crate) fn execute(&mut self, sql: &str, params: &[Param]) -> Result<u64, DbError> {
        self.conn.execute(sql, params)
    }

    pub(crate) fn copy_in(&mut self, sql: &str, data: &[u8]) -> Result<u64, DbError> {
        self.conn.copy_in(sql, data)
    }

    pub(crate) fn query(
        &mut self,
        sql: &str,
        params: &[Param],
        each: &mut dyn FnMut(&dyn Fetched) -> Result<(), DbError>,
    ) -> Result<(), DbError> {
        self.conn.query(sql, params, each)
    }

    /// Every row of a query, each made by `f`.
    pub(crate) fn rows<T>(
        &mut self,
        sql: &str,
        params: &[Param],
        mut f: impl FnMut(&dyn Fetched) -> Result<T, DbError>,
    ) -> Result<Vec<T>, DbError> {
        let mut out = Vec::new();
        self.conn.query(sql, params, &mut |r| {
            out.push(f(r)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// The first row of a query, made by `f` (None: no row).
    pub(crate) fn first<T>(
        &mut self,
        sql: &str,
        params: &[Param],
        mut f: impl FnMut(&dyn Fetched) -> Result<T, DbError>,
    ) -> Result<Option<T>, DbError> {
        let mut out = None;
        self.conn.query(sql, params, &mut |r| {
            if out.is_none() {
                out = Some(f(r)?);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Runs `f` in a transaction (`begin` opens it): committed when it
    /// succeeds, rolled back when it fails.
    pub(crate) fn within<T>(
        &mut self,
        begin: &str,
        f: impl FnOnce(&mut Db) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        self.conn.ready()?;
        self.conn.batch(begin)?;
        match f(self) {
            Ok(v) => {
                self.conn.batch("COMMIT")?;
                Ok(v)
            }
            Err(e) => {
                if let Err(r) = self.conn.batch("ROLLBACK") {
                    tracing::debug!(error = %r, "rollback after a failed transaction");
                }
                Err(e)
            }
        }
    }

    /// A write transaction.
    pub(crate) fn write<T>(
        &mut self,
        f: impl FnOnce(&mut Db) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        self.within("BEGIN", f)
    }

    /// A read-only transaction that sees one snapshot.
    pub(crate) fn read<T>(
        &mut self,
        f: impl FnOnce(&mut Db) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let begin = self.d.begin_read();
        self.within(begin, f)
    }

    /// Opens the connection again if it was lost.
    pub(crate) fn ready(&mut self) -> Result<(), DbError> {
        self.conn.ready()
    }

    /// Forgets prepared statements (after a table changed shape).
    pub(crate) fn forget(&mut self) {
        self.conn.forget()
    }
}

/// What a batch did, as the bookkeeping hooks see it inside the batch's
/// transaction.
pub(crate) struct Batch<'a> {
    /// The changes applied, in order (not the stale ones).
    pub(crate) applied: &'a [&'a Row],
    /// The rows the batch replaced, as it found them (read for reports).
    pub(crate) before: &'a rows::Before,
    /// The counts.
    pub(crate) done: Applied,
}

/// A bookkeeping concern that moves with every batch, in its
/// transaction.
pub(crate) trait Hook {
    /// The columns of `t` this concern needs as its rows stood before
    /// the batch (None: none; the rows are not read).
    fn reads_before(&self, _t: &crate::table::TableDef) -> Option<Vec<bool>> {
        None
    }
    /// Writes what `batch` means for this concern, in its transaction.
    fn write(&mut self, db: &mut Db, batch: &Batch<'_>) -> Result<(), DbError>;
    /// The transaction committed.
    fn committed(&mut self) {}
    /// The transaction rolled back: forget what `write` prepared.
    fn abandoned(&mut self) {}
}
