//! The PostgreSQL client as a [`Conn`]: statements prepared once per SQL
//! text, rows streamed, the connection opened again when it was lost.

use std::collections::HashMap;

use postgres::fallible_iterator::FallibleIterator;
use postgres::types::{to_sql_checked, IsNull, ToSql, Type};

use super::{Conn, DbError, Fetched, Got, Param};

/// Prepared statements kept at most (then forgotten at once).
const STATEMENTS: usize = 512;

pub(super) struct PgConn {
    client: postgres::Client,
    url: String,
    statements: HashMap<String, postgres::Statement>,
}

impl PgConn {
    pub(super) fn connect(url: &str) -> Result<Self, DbError> {
        Ok(Self {
            client: govbus_pg::connect(url)?,
            url: url.to_string(),
            statements: HashMap::new(),
        })
    }

    fn statement(&mut self, sql: &str) -> Result<postgres::Statement, DbError> {
        if let Some(st) = self.statements.get(sql) {
            return Ok(st.clone());
        }
        if self.statements.len() >= STATEMENTS {
            self.statements.clear();
        }
        let st = self.client.prepare(sql)?;
        self.statements.insert(sql.to_string(), st.clone());
        Ok(st)
    }
}

impl Conn for PgConn {
    fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        self.client.batch_execute(sql)?;
        Ok(())
    }

    fn execute(&mut self, sql: &str, params: &[Param]) -> Result<u64, DbError> {
        let st = self.statement(sql)?;
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        Ok(self.client.execute(&st, &refs)?)
    }

    fn copy_in(&mut self, sql: &str, data: &[u8]) -> Result<u64, DbError> {
        use std::io::Write;
        let mut w = self.client.copy_in(sql)?;
        w.write_all(data)?;
        Ok(w.finish()?)
    }

    fn query(
        &mut self,
        sql: &str,
        params: &[Param],
        each: &mut dyn FnMut(&dyn Fetched) -> Result<(), DbError>,
    ) -> Result<(), DbError> {
        let st = self.statement(sql)?;
        let mut rows = self.client.query_raw(&st, params.iter())?;
        while let Some(r) = rows.next()? {
            each(&r)?;
        }
        Ok(())
    }

    // A lost connection (the server restarted, the network broke) is
    // opened again before the next transaction; the failed one was rolled
    // back by the server.
    fn ready(&mut self) -> Result<(), DbError> {
        if self.client.is_closed() {
            tracing::warn!("PostgreSQL connection lost; reconnecting");
            self.client = govbus_pg::connect(&self.url)?;
            self.statements.clear();
        }
        Ok(())
    }

    fn forget(&mut self) {
        self.statements.clear();
    }
}

impl Fetched for postgres::Row {
    fn get(&self, i: usize) -> Result<Got, DbError> {
        let ty = self
            .columns()
            .get(i)
            .map(|c| c.type_().clone())
            .ok_or(DbError::Column {
                column: i,
                expected: "a column",
            })?;
        Ok(match ty {
            Type::INT8 => self.try_get::<_, Option<i64>>(i)?.map(Got::Int),
            Type::INT4 => self
                .try_get::<_, Option<i32>>(i)?
                .map(|n| Got::Int(n.into())),
            Type::INT2 => self
                .try_get::<_, Option<i16>>(i)?
                .map(|n| Got::Int(n.into())),
            Type::FLOAT8 => self.try_get::<_, Option<f64>>(i)?.map(Got::Float),
            Type::FLOAT4 => self
                .try_get::<_, Option<f32>>(i)?
                .map(|f| Got::Float(f.into())),
            Type::BOOL => self.try_get::<_, Option<bool>>(i)?.map(Got::Bool),
            _ => self.try_get::<_, Option<String>>(i)?.map(Got::Text),
        }
        .unwrap_or(Got::Null))
    }
}

impl ToSql for Param {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut postgres::types::private::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Param::Null => Ok(IsNull::Yes),
            Param::Text(s) | Param::Date(s) => s.to_sql_checked(ty, out),
            Param::Int(n) | Param::Timestamp(n) => match *ty {
                Type::INT4 => i32::try_from(*n)?.to_sql_checked(ty, out),
                Type::INT2 => i16::try_from(*n)?.to_sql_checked(ty, out),
                _ => n.to_sql_checked(ty, out),
            },
            Param::Float(f) => f.to_sql_checked(ty, out),
            Param::Bool(b) => b.to_sql_checked(ty, out),
            Param::Texts(v) => v.to_sql_checked(ty, out),
            Param::Ints(v) => match *ty {
                Type::INT4_ARRAY => v
                    .iter()
                    .map(|n| i32::try_from(*n))
                    .collect::<Result<Vec<i32>, _>>()?
                    .to_sql_checked(ty, out),
                _ => v.to_sql_checked(ty, out),
            },
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    to_sql_checked!();
}
