//! Views: an entity schema and value with some fields removed.

use apache_avro::types::Value;
use apache_avro::Schema;
use serde_json::Value as Json;

use crate::names::Names;
use crate::SchemaError;

/// The schema of `path` (dotted) inside `schema`, following records and
/// nullable unions; `None` if there is no such field.
pub fn field_schema<'a>(schema: &'a Schema, names: &'a Names, path: &str) -> Option<&'a Schema> {
    let mut cur = names.resolve(schema);
    for part in path.split('.') {
        let rec = record_of(cur, names)?;
        let f = rec.fields.get(*rec.lookup.get(part)?)?;
        cur = names.resolve(&f.schema);
    }
    Some(cur)
}

/// The record inside `s` (itself, or the single record branch of a union).
pub fn record_of<'a>(
    s: &'a Schema,
    names: &'a Names,
) -> Option<&'a apache_avro::schema::RecordSchema> {
    match names.resolve(s) {
        Schema::Record(r) => Some(r),
        Schema::Union(u) => u.variants().iter().find_map(|v| match names.resolve(v) {
            Schema::Record(r) => Some(r),
            _ => None,
        }),
        _ => None,
    }
}

/// Removes the dotted `drop` paths from an entity schema (JSON text).
/// Every path must name a field, and a view keeps at least its `key`.
pub fn project_schema(entity: &str, drop: &[String], key: &str) -> Result<String, SchemaError> {
    let mut json: Json = serde_json::from_str(entity).map_err(|e| SchemaError(e.to_string()))?;
    for path in drop {
        if path == key {
            return Err(SchemaError(format!(
                "`{path}` is the key and cannot be dropped"
            )));
        }
        let parts: Vec<&str> = path.split('.').collect();
        if !remove(&mut json, &parts) {
            return Err(SchemaError(format!(
                "`{path}` is not a field of the schema"
            )));
        }
    }
    Ok(json.to_string())
}

fn remove(schema: &mut Json, parts: &[&str]) -> bool {
    let Some(fields) = schema.get_mut("fields").and_then(Json::as_array_mut) else {
        // A union holding a record: look inside its branches.
        if let Some(branches) = schema.as_array_mut() {
            return branches.iter_mut().any(|b| remove(b, parts));
        }
        return false;
    };
    let Some((first, rest)) = parts.split_first() else {
        return false;
    };
    let Some(pos) = fields
        .iter()
        .position(|f| f.get("name").and_then(Json::as_str) == Some(first))
    else {
        return false;
    };
    if rest.is_empty() {
        fields.remove(pos);
        true
    } else {
        fields
            .get_mut(pos)
            .and_then(|f| f.get_mut("type"))
            .is_some_and(|t| remove(t, rest))
    }
}

/// A compiled projection: which fields (by dotted path) to remove from values.
#[derive(Debug, Clone, Default)]
pub struct Projection {
    drop: Vec<Vec<String>>,
}

impl Projection {
    /// A projection removing `drop` (dotted paths).
    pub fn new(drop: &[String]) -> Self {
        Self {
            drop: drop
                .iter()
                .map(|p| p.split('.').map(str::to_string).collect())
                .collect(),
        }
    }

    /// Whether the projection removes nothing.
    pub fn is_identity(&self) -> bool {
        self.drop.is_empty()
    }

    /// `value` without the dropped fields.
    pub fn apply(&self, mut value: Value) -> Value {
        for path in &self.drop {
            strip(&mut value, path);
        }
        value
    }
}

fn strip(v: &mut Value, path: &[String]) {
    match v {
        Value::Union(_, inner) => strip(inner, path),
        Value::Record(fields) => {
            let Some((first, rest)) = path.split_first() else {
                return;
            };
            if let Some(pos) = fields.iter().position(|(n, _)| n == first) {
                if rest.is_empty() {
                    fields.remove(pos);
                } else if let Some((_, inner)) = fields.get_mut(pos) {
                    strip(inner, rest);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RES: &str = include_str!("../../../schemas/bca/residents.v1.avsc");

    #[test]
    fn dropping_fields_removes_them_from_schema_and_value() {
        let drop = vec![
            "ethnicity".to_string(),
            "permanent_address.street".to_string(),
        ];
        let projected = project_schema(RES, &drop, "citizen_id").unwrap();
        let s = Schema::parse_str(&projected).unwrap();
        let names = Names::of(&s);
        assert!(field_schema(&s, &names, "ethnicity").is_none());
        assert!(field_schema(&s, &names, "permanent_address.street").is_none());
        assert!(field_schema(&s, &names, "permanent_address.province_code").is_some());

        let v = Value::Record(vec![
            ("citizen_id".into(), Value::String("1".into())),
            ("ethnicity".into(), Value::String("Kinh".into())),
            (
                "permanent_address".into(),
                Value::Record(vec![
                    ("province_code".into(), Value::String("52".into())),
                    ("street".into(), Value::Union(0, Box::new(Value::Null))),
                ]),
            ),
        ]);
        let out = Projection::new(&drop).apply(v);
        assert_eq!(
            out,
            Value::Record(vec![
                ("citizen_id".into(), Value::String("1".into())),
                (
                    "permanent_address".into(),
                    Value::Record(vec![("province_code".into(), Value::String("52".into()))])
                ),
            ])
        );
    }

    #[test]
    fn unknown_or_key_fields_cannot_be_dropped() {
        assert!(project_schema(RES, &["nope".into()], "citizen_id").is_err());
        assert!(project_schema(RES, &["permanent_address.nope".into()], "citizen_id").is_err());
        assert!(project_schema(RES, &["citizen_id".into()], "citizen_id").is_err());
    }
}
