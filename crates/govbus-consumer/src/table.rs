//! A view's entity schema as a flat table: nested records become
//! `parent_child` columns; values are read by path.

use apache_avro::schema::RecordSchema;
use apache_avro::Schema;
use govbus_schema::names::Names;
use govbus_schema::project::{field_schema, record_of};
use govbus_schema::AvroValue;

/// A column's type, mapped to each database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColType {
    /// Text (strings, enums, bytes as text).
    Text,
    /// 64-bit integer.
    Int,
    /// Double.
    Float,
    /// Boolean.
    Bool,
    /// Calendar date.
    Date,
    /// Instant (ms precision).
    Timestamp,
}

/// One column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Column name (`permanent_address_province_code`).
    pub name: String,
    /// Field path in the entity.
    pub path: Vec<String>,
    /// Type.
    pub ty: ColType,
}

/// A value bound to a column.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    /// NULL.
    Null,
    /// Text.
    Text(String),
    /// Integer.
    Int(i64),
    /// Double.
    Float(f64),
    /// Boolean.
    Bool(bool),
    /// Date as `YYYY-MM-DD`.
    Date(String),
    /// Milliseconds since the epoch.
    Timestamp(i64),
}

/// A key as text, from its column's value (as the view's record key
/// gives it).
pub fn value_key(v: &SqlValue) -> String {
    match v {
        SqlValue::Text(s) | SqlValue::Date(s) => s.clone(),
        SqlValue::Int(i) | SqlValue::Timestamp(i) => i.to_string(),
        other => format!("{other:?}"),
    }
}

/// The table a view lands in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDef {
    /// Table name (`bca_residents`).
    pub name: String,
    /// The key column.
    pub key: String,
    /// Columns, key first.
    pub columns: Vec<Column>,
}

/// The entity record inside a change-envelope schema.
pub fn entity_of(envelope: &Schema) -> Option<(RecordSchema, Names)> {
    let names = Names::of(envelope);
    let after = field_schema(envelope, &names, "after")?;
    let rec = record_of(after, &names)?.clone();
    Some((rec, names))
}

/// The table for `envelope`'s entity, keyed by `key`.
pub fn table_def(name: &str, key: &str, envelope: &Schema) -> Option<TableDef> {
    let (rec, names) = entity_of(envelope)?;
    let mut columns = Vec::new();
    columns.extend(
        govbus_schema::flat::leaves(&rec, &names)
            .into_iter()
            .map(|l| Column {
                ty: col_type(l.schema, &names),
                name: l.column,
                path: l.path,
            }),
    );
    let pos = columns.iter().position(|c| c.name == key)?;
    let k = columns.remove(pos);
    columns.insert(0, k);
    Some(TableDef {
        name: name.to_string(),
        key: key.to_string(),
        columns,
    })
}

fn col_type(s: &Schema, names: &Names) -> ColType {
    match names.resolve(s) {
        Schema::Int | Schema::Long => ColType::Int,
        Schema::Float | Schema::Double => ColType::Float,
        Schema::Boolean => ColType::Bool,
        Schema::Date => ColType::Date,
        Schema::TimestampMillis | Schema::TimestampMicros => ColType::Timestamp,
        Schema::Union(u) => u
            .variants()
            .iter()
            .find(|v| !matches!(v, Schema::Null))
            .map(|v| col_type(v, names))
            .unwrap_or(ColType::Text),
        _ => ColType::Text,
    }
}

/// The value at `path` in an entity, as SQL.
pub fn value_at(entity: &AvroValue, path: &[String]) -> SqlValue {
    let mut cur = entity;
    for p in path {
        cur = match unwrap(cur) {
            AvroValue::Record(fields) => match fields.iter().find(|(n, _)| n == p) {
                Some((_, v)) => v,
                None => return SqlValue::Null,
            },
            _ => return SqlValue::Null,
        };
    }
    match unwrap(cur) {
        AvroValue::Null => SqlValue::Null,
        AvroValue::String(s) | AvroValue::Enum(_, s) => SqlValue::Text(s.clone()),
        AvroValue::Int(i) => SqlValue::Int(*i as i64),
        AvroValue::Long(i) => SqlValue::Int(*i),
        AvroValue::Float(f) => SqlValue::Float(*f as f64),
        AvroValue::Double(f) => SqlValue::Float(*f),
        AvroValue::Boolean(b) => SqlValue::Bool(*b),
        AvroValue::Date(d) => SqlValue::Date(govbus_schema::json::date_string(*d)),
        AvroValue::TimestampMillis(ms) => SqlValue::Timestamp(*ms),
        AvroValue::TimestampMicros(us) => SqlValue::Timestamp(*us / 1000),
        other => SqlValue::Text(govbus_schema::json::to_json(other).to_string()),
    }
}

fn unwrap(v: &AvroValue) -> &AvroValue {
    match v {
        AvroValue::Union(_, b) => unwrap(b),
        other => other,
    }
}

/// The key of an entity as text.
pub fn key_text(entity: &AvroValue, key: &str) -> Option<String> {
    match value_at(entity, &[key.to_string()]) {
        SqlValue::Text(s) => Some(s),
        SqlValue::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn residents_flatten_without_dropped_fields() {
        let entity = govbus_schema::project::project_schema(
            include_str!("../../../schemas/bca/residents.v1.avsc"),
            &["ethnicity".into()],
            "citizen_id",
        )
        .unwrap();
        let env =
            Schema::parse_str(&govbus_schema::envelope::envelope_schema(&entity).unwrap()).unwrap();
        let t = table_def("bca_residents", "citizen_id", &env).unwrap();
        let names: Vec<&str> = t.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "citizen_id",
                "full_name",
                "date_of_birth",
                "sex",
                "permanent_address_province_code",
                "permanent_address_commune_code",
                "permanent_address_street",
                "updated_at"
            ]
        );
        assert_eq!(t.columns[2].ty, ColType::Date);
        assert_eq!(t.columns[7].ty, ColType::Timestamp);
    }
}
