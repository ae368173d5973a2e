//! What differs between the databases, and nothing else. The trait's
//! defaults are standard SQL; [`Postgres`] and [`Sqlite`] override only
//! where their SQL differs (as the JDBC sink connector's
//! `GenericDatabaseDialect` and its subclasses).

use crate::table::ColType;

/// How one database writes what govbus needs.
pub(crate) trait Dialect: Sync {
    /// The database's kind in words.
    fn name(&self) -> &'static str;

    /// Parameter `n` (from 1).
    fn param(&self, n: usize) -> String;

    /// Parameter `n` as a value of a column of type `ty`.
    fn typed_param(&self, _ty: ColType, n: usize) -> String {
        self.param(n)
    }

    /// Parameter `n` as a date.
    fn date_param(&self, n: usize) -> String {
        self.param(n)
    }

    /// The type of a column of the province's tables.
    fn column_type(&self, ty: ColType) -> &'static str;

    /// The types of govbus's own tables.
    fn bigint(&self) -> &'static str {
        "BIGINT"
    }
    fn int(&self) -> &'static str {
        "INT"
    }
    fn date(&self) -> &'static str {
        "DATE"
    }

    /// A column read back so that `Fetched::value` makes its value.
    fn select_column(&self, column: &str, _ty: ColType) -> String {
        column.to_string()
    }

    /// A NULL in place of a column of type `ty`.
    fn null_of(&self, _ty: ColType) -> String {
        "NULL".into()
    }

    /// An expression as text.
    fn as_text(&self, expr: &str) -> String {
        format!("CAST({expr} AS TEXT)")
    }

    /// A key column as it compares with a key's text (and still uses
    /// the table's index).
    fn key_text(&self, column: &str) -> String {
        column.to_string()
    }

    /// Parameters `first`, `first + 1`, … (lists of the given element
    /// types, of equal length) as a table `l` with columns `v0`, `v1`, …
    fn lists(&self, first: usize, types: &[ColType]) -> String;

    /// Whether `expr` is one of the values (of type `ty`) of list
    /// parameter `n`.
    fn in_list(&self, expr: &str, n: usize, ty: ColType) -> String {
        format!("{expr} IN (SELECT v0 FROM {})", self.lists(n, &[ty]))
    }

    /// For each `l.v0` of `list`, the row of `table` (as `r`) that
    /// `matches` it, selecting `l.v0` and `cols`: one index lookup per
    /// value, whatever the planner believes about the table.
    fn lookup(&self, list: &str, table: &str, cols: &str, matches: &str) -> String {
        format!("SELECT l.v0, {cols} FROM {list} JOIN {table} AS r ON {matches}")
    }

    /// Starts a read-only transaction that sees one snapshot.
    fn begin_read(&self) -> &'static str {
        "BEGIN"
    }

    /// A query of how many tables named parameter 2 the schema named
    /// parameter 1 holds.
    fn table_exists(&self) -> &'static str;

    /// A query of the column names of the table named parameter 2 in the
    /// schema named parameter 1.
    fn columns_of(&self) -> &'static str;

    /// Adds a column to a table.
    fn add_column(&self, table: &str, column: &str, ty: &str) -> String {
        format!("ALTER TABLE {table} ADD COLUMN {column} {ty};")
    }

    /// DDL that keeps `column` of `table` uncompressed, when the database
    /// compresses by default.
    fn store_uncompressed(&self, _table: &str, _column: &str) -> Option<String> {
        None
    }

    /// `WITH r AS (…)`: per row of a table, key `k`, sequence `s`, hash
    /// `h`, source time `ts`, bucket `b` (modulo parameter 1) and digest
    /// entry `e`, as `crate::reconcile` computes them in Rust — when the
    /// database can compute them where the rows are (None: read and
    /// computed in Rust).
    fn digests(&self, _table: &str, _columns: &[(String, ColType)]) -> Option<String> {
        None
    }

    /// Whether the database loads rows with `COPY … FROM STDIN`.
    fn copies(&self) -> bool {
        false
    }

    /// Statements that make an empty staging table shaped like `table`,
    /// dropped at the transaction's end, and its name — when the database
    /// loads rows with `COPY … FROM STDIN` (None: it has no COPY).
    fn stage(&self, _table: &str) -> Option<(String, &'static str)> {
        None
    }
}

/// PostgreSQL.
pub(crate) struct Postgres;

fn pg_elem(ty: ColType) -> &'static str {
    match ty {
        ColType::Int | ColType::Timestamp => "int8",
        ColType::Float => "float8",
        ColType::Bool => "bool",
        ColType::Text | ColType::Date => "text",
    }
}

impl Dialect for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn param(&self, n: usize) -> String {
        format!("${n}")
    }

    fn typed_param(&self, ty: ColType, n: usize) -> String {
        match ty {
            ColType::Date => format!("${n}::text::date"),
            ColType::Timestamp => format!("to_timestamp(${n}::int8 / 1000.0)"),
            other => format!("${n}::{}", pg_elem(other)),
        }
    }

    fn date_param(&self, n: usize) -> String {
        format!("${n}::text::date")
    }

    fn column_type(&self, ty: ColType) -> &'static str {
        match ty {
            ColType::Text => "TEXT",
            ColType::Int => "BIGINT",
            ColType::Float => "DOUBLE PRECISION",
            ColType::Bool => "BOOLEAN",
            ColType::Date => "DATE",
            ColType::Timestamp => "TIMESTAMPTZ",
        }
    }

    fn select_column(&self, column: &str, ty: ColType) -> String {
        match ty {
            ColType::Date => format!("{column}::text"),
            ColType::Timestamp => format!("(extract(epoch FROM {column}) * 1000)::int8"),
            _ => column.to_string(),
        }
    }

    fn null_of(&self, ty: ColType) -> String {
        format!("NULL::{}", pg_elem(ty))
    }

    fn as_text(&self, expr: &str) -> String {
        format!("{expr}::text")
    }

    fn key_text(&self, column: &str) -> String {
        format!("{column}::text")
    }

    fn lists(&self, first: usize, types: &[ColType]) -> String {
        let arrays: Vec<String> = types
            .iter()
            .enumerate()
            .map(|(i, t)| format!("${}::{}[]", first + i, pg_elem(*t)))
            .collect();
        let names: Vec<String> = (0..types.len()).map(|i| format!("v{i}")).collect();
        format!("unnest({}) AS l({})", arrays.join(", "), names.join(", "))
    }

    fn in_list(&self, expr: &str, n: usize, ty: ColType) -> String {
        format!("{expr} = ANY(${n}::{}[])", pg_elem(ty))
    }

    // `tbl = $1 AND key = ANY($2)` was planned, while a table had no
    // statistics (a new or fast-growing one), as a scan of every row with
    // `key` as a filter — 43 million rows fetched for 100,000 changes,
    // half a core of PostgreSQL at 5,000 changes/s (docs/BENCHMARKS.md).
    fn lookup(&self, list: &str, table: &str, cols: &str, matches: &str) -> String {
        format!(
            "SELECT l.v0, x.* FROM {list} CROSS JOIN LATERAL \
             (SELECT {cols} FROM {table} AS r WHERE {matches} LIMIT 1) AS x"
        )
    }

    fn begin_read(&self) -> &'static str {
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
    }

    fn table_exists(&self) -> &'static str {
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1 AND table_name = $2"
    }

    fn columns_of(&self) -> &'static str {
        "SELECT column_name::text FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2"
    }

    // Two agents of one schema may add the same column at once.
    fn add_column(&self, table: &str, column: &str, ty: &str) -> String {
        format!("ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {ty};")
    }

    // A receipt's events (about 100 bytes per applied change) are stored
    // uncompressed: compressing them cost PostgreSQL 1 µs of CPU per
    // change, twice the rest of the receipt (docs/BENCHMARKS.md).
    fn store_uncompressed(&self, table: &str, column: &str) -> Option<String> {
        let lit = table.replace('\'', "''");
        Some(format!(
            "DO $$ BEGIN
                 IF (SELECT attstorage FROM pg_attribute
                     WHERE attrelid = '{lit}'::regclass AND attname = '{column}') <> 'e' THEN
                     ALTER TABLE {table} ALTER COLUMN {column} SET STORAGE EXTERNAL;
                 END IF;
             END $$;"
        ))
    }

    // Computed where the rows are: only the digests cross the network.
    fn copies(&self) -> bool {
        true
    }

    fn stage(&self, table: &str) -> Option<(String, &'static str)> {
        const STAGE: &str = "pg_temp._govbus_stage";
        Some((
            format!(
                "DROP TABLE IF EXISTS {STAGE}; CREATE TEMP TABLE _govbus_stage (LIKE {table}) ON COMMIT DROP;"
            ),
            STAGE,
        ))
    }

    fn digests(&self, table: &str, columns: &[(String, ColType)]) -> Option<String> {
        let cols: Vec<String> = columns
            .iter()
            .map(|(n, ty)| {
                let text = match ty {
                    ColType::Timestamp => format!("((extract(epoch FROM {n}) * 1000)::int8)::text"),
                    _ => format!("{n}::text"),
                };
                format!("coalesce({text}, '\\N')")
            })
            .collect();
        let key = &columns.first()?.0;
        let sha = |x: &str| format!("encode(sha256(convert_to({x}, 'UTF8')), 'hex')");
        Some(format!(
            "WITH t AS (SELECT {key}::text AS k, _govbus_seq AS s, _govbus_source_ts AS ts, {h} AS h FROM {table}), \
             r AS (SELECT k, s, h, ts, \
                   (('x' || substr({kb}, 1, 8))::bit(32)::bigint % $1) AS b, \
                   ('x' || substr({eb}, 1, 15))::bit(60)::bigint AS e FROM t)",
            h = sha(&format!("concat_ws(chr(31), {})", cols.join(", "))),
            kb = sha("k"),
            eb = sha("k || chr(31) || s::text || chr(31) || h"),
        ))
    }
}

/// SQLite (list parameters are JSON arrays, read by `json_each`).
pub(crate) struct Sqlite;

impl Dialect for Sqlite {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn param(&self, n: usize) -> String {
        format!("?{n}")
    }

    fn column_type(&self, ty: ColType) -> &'static str {
        match ty {
            ColType::Int | ColType::Bool => "INTEGER",
            ColType::Float => "REAL",
            _ => "TEXT",
        }
    }

    fn bigint(&self) -> &'static str {
        "INTEGER"
    }

    fn int(&self) -> &'static str {
        "INTEGER"
    }

    fn date(&self) -> &'static str {
        "TEXT"
    }

    fn lists(&self, first: usize, types: &[ColType]) -> String {
        let mut cols = Vec::new();
        let mut from = String::new();
        for i in 0..types.len() {
            cols.push(format!("a{i}.value AS v{i}"));
            if i == 0 {
                from.push_str(&format!("json_each(?{first}) AS a0"));
            } else {
                from.push_str(&format!(
                    " JOIN json_each(?{}) AS a{i} ON a{i}.key = a0.key",
                    first + i
                ));
            }
        }
        format!("(SELECT {} FROM {from}) AS l", cols.join(", "))
    }

    fn table_exists(&self) -> &'static str {
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?2 AND ?1 IS NOT NULL"
    }

    fn columns_of(&self) -> &'static str {
        "SELECT name FROM pragma_table_info(?2) WHERE ?1 IS NOT NULL"
    }
}
