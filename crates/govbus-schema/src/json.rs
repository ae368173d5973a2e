//! JSON ↔ Avro values, guided by the schema, with field-level errors.
//!
//! JSON input follows the entity's shape: a record is an object, a nullable
//! field may be `null` or absent, an enum is its symbol, a `date` is
//! `"YYYY-MM-DD"` (or days since the epoch), a `timestamp-millis` is
//! milliseconds or an RFC 3339 string.

use apache_avro::types::Value;
use apache_avro::Schema;
use chrono::{DateTime, NaiveDate};
use serde::Serialize;
use serde_json::Value as Json;

use crate::names::Names;

/// One problem with one field of the input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Dotted path of the field (`permanent_address.province_code`), or `$` for the whole document.
    pub field: String,
    /// What is wrong, readable by the person who sent it.
    pub problem: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

/// 1970-01-01 (`NaiveDate`'s default).
fn epoch() -> NaiveDate {
    NaiveDate::default()
}

/// Converts `json` to an Avro value of `schema`, collecting every problem.
pub fn to_avro(schema: &Schema, json: &Json) -> Result<Value, Vec<FieldError>> {
    let names = Names::of(schema);
    let mut errors = Vec::new();
    let v = convert(schema, &names, json, "", &mut errors);
    match v {
        Some(v) if errors.is_empty() => Ok(v),
        _ => Err(errors),
    }
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

fn here(path: &str) -> String {
    if path.is_empty() {
        "$".into()
    } else {
        path.to_string()
    }
}

fn kind(j: &Json) -> &'static str {
    match j {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

fn convert(
    schema: &Schema,
    names: &Names,
    json: &Json,
    path: &str,
    errors: &mut Vec<FieldError>,
) -> Option<Value> {
    let mut fail = |problem: String| {
        errors.push(FieldError {
            field: here(path),
            problem,
        });
        None
    };
    match (names.resolve(schema), json) {
        (Schema::Null, Json::Null) => Some(Value::Null),
        (Schema::Boolean, Json::Bool(b)) => Some(Value::Boolean(*b)),
        (Schema::Int, Json::Number(n)) => match n.as_i64().and_then(|i| i32::try_from(i).ok()) {
            Some(i) => Some(Value::Int(i)),
            None => fail(format!("expected a 32-bit integer, got {n}")),
        },
        (Schema::Long, Json::Number(n)) => match n.as_i64() {
            Some(i) => Some(Value::Long(i)),
            None => fail(format!("expected a 64-bit integer, got {n}")),
        },
        (Schema::Float, Json::Number(n)) => n.as_f64().map(|f| Value::Float(f as f32)),
        (Schema::Double, Json::Number(n)) => n.as_f64().map(Value::Double),
        (Schema::String, Json::String(s)) => Some(Value::String(s.clone())),
        (Schema::Bytes, Json::String(s)) => Some(Value::Bytes(s.as_bytes().to_vec())),
        (Schema::Uuid, Json::String(s)) => match s.parse() {
            Ok(u) => Some(Value::Uuid(u)),
            Err(_) => fail(format!("`{s}` is not a UUID")),
        },
        (Schema::Date, Json::String(s)) => match NaiveDate::parse_from_str(s, "%Y-%m-%d") {
            Ok(d) => date((d - epoch()).num_days(), fail),
            Err(_) => fail(format!("`{s}` is not a date (YYYY-MM-DD)")),
        },
        (Schema::Date, Json::Number(n)) => match n.as_i64() {
            Some(d) => date(d, fail),
            None => fail(format!("expected days since 1970-01-01, got {n}")),
        },
        (Schema::TimestampMillis, Json::Number(n)) => match n.as_i64() {
            Some(ms) => timestamp(ms, fail),
            None => fail(format!("expected milliseconds since the epoch, got {n}")),
        },
        (Schema::TimestampMillis, Json::String(s)) => match DateTime::parse_from_rfc3339(s) {
            Ok(t) => timestamp(t.timestamp_millis(), fail),
            Err(_) => fail(format!("`{s}` is not an RFC 3339 timestamp")),
        },
        (Schema::Enum(e), Json::String(s)) => match e.symbols.iter().position(|x| x == s) {
            Some(i) => Some(Value::Enum(i as u32, s.clone())),
            None => fail(format!("`{s}` is not one of {}", e.symbols.join(", "))),
        },
        (Schema::Array(a), Json::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                out.push(convert(
                    &a.items,
                    names,
                    item,
                    &format!("{path}[{i}]"),
                    errors,
                )?);
            }
            Some(Value::Array(out))
        }
        (Schema::Map(m), Json::Object(obj)) => {
            let mut out = std::collections::HashMap::new();
            for (k, v) in obj {
                out.insert(
                    k.clone(),
                    convert(&m.types, names, v, &join(path, k), errors)?,
                );
            }
            Some(Value::Map(out))
        }
        (Schema::Union(u), j) => {
            let variants = u.variants();
            if j.is_null() {
                return match variants.iter().position(|v| matches!(v, Schema::Null)) {
                    Some(i) => Some(Value::Union(i as u32, Box::new(Value::Null))),
                    None => fail("must not be null".into()),
                };
            }
            // The first non-null branch that accepts the value.
            let mut last_errors = Vec::new();
            for (i, v) in variants.iter().enumerate() {
                if matches!(v, Schema::Null) {
                    continue;
                }
                let mut errs = Vec::new();
                if let Some(val) = convert(v, names, j, path, &mut errs) {
                    if errs.is_empty() {
                        return Some(Value::Union(i as u32, Box::new(val)));
                    }
                }
                last_errors = errs;
            }
            errors.extend(last_errors);
            None
        }
        (Schema::Record(r), Json::Object(obj)) => {
            let mut fields = Vec::with_capacity(r.fields.len());
            let mut ok = true;
            for f in &r.fields {
                let fpath = join(path, &f.name);
                match obj.get(&f.name) {
                    Some(v) => match convert(&f.schema, names, v, &fpath, errors) {
                        Some(v) => fields.push((f.name.clone(), v)),
                        None => ok = false,
                    },
                    None => match (&f.default, names.resolve(&f.schema)) {
                        (Some(d), s) => match convert(s, names, d, &fpath, errors) {
                            Some(v) => fields.push((f.name.clone(), v)),
                            None => ok = false,
                        },
                        (None, _) => {
                            errors.push(FieldError {
                                field: fpath,
                                problem: "is required".into(),
                            });
                            ok = false;
                        }
                    },
                }
            }
            for k in obj.keys() {
                if !r.lookup.contains_key(k) {
                    errors.push(FieldError {
                        field: join(path, k),
                        problem: format!("is not a field of {}", r.name.name),
                    });
                    ok = false;
                }
            }
            ok.then_some(Value::Record(fields))
        }
        (s, j) => fail(format!("expected {}, got {}", describe(s), kind(j))),
    }
}

/// A date of `days` since 1970-01-01, if in range (years 1 to 9999).
fn date(days: i64, fail: impl FnOnce(String) -> Option<Value>) -> Option<Value> {
    match crate::limits::date_problem(days) {
        None => i32::try_from(days).ok().map(Value::Date),
        Some(p) => fail(p),
    }
}

/// A timestamp of `ms` since the epoch, if in range (years 1 to 9999).
fn timestamp(ms: i64, fail: impl FnOnce(String) -> Option<Value>) -> Option<Value> {
    match crate::limits::timestamp_problem(ms) {
        None => Some(Value::TimestampMillis(ms)),
        Some(p) => fail(p),
    }
}

fn describe(s: &Schema) -> String {
    match s {
        Schema::Record(r) => format!("an object ({})", r.name.name),
        Schema::Enum(e) => format!("one of {}", e.symbols.join(", ")),
        Schema::Date => "a date (YYYY-MM-DD)".into(),
        Schema::TimestampMillis => "a timestamp (RFC 3339 or milliseconds)".into(),
        Schema::String => "a string".into(),
        Schema::Int | Schema::Long => "an integer".into(),
        Schema::Float | Schema::Double => "a number".into(),
        Schema::Boolean => "a boolean".into(),
        Schema::Null => "null".into(),
        Schema::Array(_) => "an array".into(),
        Schema::Map(_) => "an object".into(),
        other => format!("{other:?}"),
    }
}

/// Converts an Avro value to JSON (the inverse of [`to_avro`] for the types it reads).
pub fn to_json(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Boolean(b) => Json::Bool(*b),
        Value::Int(i) => Json::from(*i),
        Value::Long(i) => Json::from(*i),
        Value::Float(f) => Json::from(*f as f64),
        Value::Double(f) => Json::from(*f),
        Value::String(s) => Json::String(s.clone()),
        Value::Bytes(b) | Value::Fixed(_, b) => Json::String(String::from_utf8_lossy(b).into()),
        Value::Enum(_, s) => Json::String(s.clone()),
        Value::Union(_, b) => to_json(b),
        Value::Array(items) => Json::Array(items.iter().map(to_json).collect()),
        Value::Map(m) => Json::Object(m.iter().map(|(k, v)| (k.clone(), to_json(v))).collect()),
        Value::Record(fields) => Json::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), to_json(v)))
                .collect(),
        ),
        Value::Date(d) => Json::String(date_string(*d)),
        Value::TimestampMillis(ms) => Json::from(*ms),
        Value::Uuid(u) => Json::String(u.to_string()),
        other => Json::String(format!("{other:?}")),
    }
}

/// `YYYY-MM-DD` for days since the epoch; a date chrono cannot hold
/// (refused where dates enter, see [`crate::limits`]) is written as its
/// number of days rather than a panic.
pub fn date_string(days: i32) -> String {
    chrono::TimeDelta::try_days(i64::from(days))
        .and_then(|d| epoch().checked_add_signed(d))
        .map_or_else(|| days.to_string(), |d| d.format("%Y-%m-%d").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn residents() -> Schema {
        Schema::parse_str(include_str!("../../../schemas/bca/residents.v1.avsc")).unwrap()
    }

    fn good() -> Json {
        json!({
            "citizen_id": "052090000001", "full_name": "Nguyễn Văn A",
            "date_of_birth": "1990-05-01", "sex": "MALE", "ethnicity": "Kinh",
            "permanent_address": {"province_code": "52", "commune_code": "21550"},
            "updated_at": "2026-11-27T08:00:00+07:00"
        })
    }

    #[test]
    fn a_good_resident_converts_and_round_trips() {
        let s = residents();
        let v = to_avro(&s, &good()).unwrap();
        let bytes = apache_avro::to_avro_datum(&s, v.clone()).unwrap();
        let back = apache_avro::from_avro_datum(&s, &mut &bytes[..], None).unwrap();
        assert_eq!(back, v);
        let j = to_json(&back);
        assert_eq!(j["date_of_birth"], "1990-05-01");
        assert_eq!(j["permanent_address"]["street"], Json::Null);
    }

    #[test]
    fn every_bad_field_is_named() {
        let mut j = good();
        j["sex"] = json!("M");
        j["date_of_birth"] = json!("01/05/1990");
        j["permanent_address"]
            .as_object_mut()
            .unwrap()
            .remove("province_code");
        j["nickname"] = json!("x");
        j["full_name"] = json!(12);
        let errs = to_avro(&residents(), &j).unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        for f in [
            "sex",
            "date_of_birth",
            "permanent_address.province_code",
            "nickname",
            "full_name",
        ] {
            assert!(fields.contains(&f), "{f} missing from {errs:?}");
        }
    }

    #[test]
    fn dates_and_timestamps_out_of_range_are_named_not_panics() {
        for (field, value) in [
            ("date_of_birth", json!(2_000_000_000)),
            ("date_of_birth", json!(-2_000_000_000)),
            ("date_of_birth", json!(i64::MAX)),
            ("date_of_birth", json!("+12345-01-01")),
            ("updated_at", json!(i64::MAX)),
            ("updated_at", json!(i64::MIN)),
        ] {
            let mut j = good();
            j[field] = value.clone();
            match to_avro(&residents(), &j) {
                Err(errs) => assert_eq!(errs[0].field, field, "{value}: {errs:?}"),
                Ok(_) => panic!("{field} = {value} accepted"),
            }
        }
        assert_eq!(date_string(i32::MAX), i32::MAX.to_string());
        assert_eq!(date_string(0), "1970-01-01");
    }

    #[test]
    fn not_an_object_is_an_error() {
        let errs = to_avro(&residents(), &json!([1, 2])).unwrap_err();
        assert_eq!(errs[0].field, "$");
    }
}
