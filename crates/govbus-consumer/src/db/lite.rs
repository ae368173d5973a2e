//! The SQLite client as a [`Conn`]: a local file in WAL mode, statements
//! cached per SQL text, list parameters bound as JSON arrays.

use rusqlite::types::{ToSqlOutput, Value, ValueRef};

use super::{Conn, DbError, Fetched, Got, Param};

pub(super) struct LiteConn {
    conn: rusqlite::Connection,
}

impl LiteConn {
    pub(super) fn open(path: &str) -> Result<Self, DbError> {
        let conn = rusqlite::Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=5000;",
        )?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(Self { conn })
    }
}

impl Conn for LiteConn {
    fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        self.conn.execute_batch(sql)?;
        Ok(())
    }

    fn execute(&mut self, sql: &str, params: &[Param]) -> Result<u64, DbError> {
        let mut st = self.conn.prepare_cached(sql)?;
        Ok(st.execute(rusqlite::params_from_iter(params.iter()))? as u64)
    }

    fn query(
        &mut self,
        sql: &str,
        params: &[Param],
        each: &mut dyn FnMut(&dyn Fetched) -> Result<(), DbError>,
    ) -> Result<(), DbError> {
        let mut st = self.conn.prepare_cached(sql)?;
        let mut rows = st.query(rusqlite::params_from_iter(params.iter()))?;
        while let Some(r) = rows.next()? {
            each(r)?;
        }
        Ok(())
    }

    fn forget(&mut self) {
        self.conn.flush_prepared_statement_cache();
    }
}

impl Fetched for rusqlite::Row<'_> {
    fn get(&self, i: usize) -> Result<Got, DbError> {
        Ok(match self.get_ref(i)? {
            ValueRef::Null => Got::Null,
            ValueRef::Integer(n) => Got::Int(n),
            ValueRef::Real(f) => Got::Float(f),
            ValueRef::Text(s) | ValueRef::Blob(s) => {
                Got::Text(String::from_utf8_lossy(s).into_owned())
            }
        })
    }
}

impl rusqlite::ToSql for Param {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Param::Null => ToSqlOutput::Owned(Value::Null),
            Param::Text(s) | Param::Date(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Param::Int(n) => ToSqlOutput::Owned(Value::Integer(*n)),
            Param::Float(f) => ToSqlOutput::Owned(Value::Real(*f)),
            Param::Bool(b) => ToSqlOutput::Owned(Value::Integer(i64::from(*b))),
            // Instants as RFC 3339 text, as SQLite's date functions read them.
            Param::Timestamp(ms) => match chrono::DateTime::from_timestamp_millis(*ms) {
                Some(t) => ToSqlOutput::Owned(Value::Text(
                    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                )),
                None => ToSqlOutput::Owned(Value::Integer(*ms)),
            },
            Param::Texts(v) => ToSqlOutput::Owned(Value::Text(
                serde_json::to_string(v)
                    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))?,
            )),
            Param::Ints(v) => ToSqlOutput::Owned(Value::Text(
                serde_json::to_string(v)
                    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))?,
            )),
        })
    }
}
