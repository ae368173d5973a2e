//! The ingest API as an OpenAPI 3.1 document, generated from each dataset's
//! Avro schema and contract (its rules and `[[codes]]`): what a ministry's
//! integrator reads, and what a stock validator checks requests and
//! answers against. Served by each producer at `/openapi.json` (its own
//! datasets) and written by `govbus schema openapi`.
//!
//! The entity's JSON is what [`govbus_schema::json::to_avro`] accepts: a
//! `date` is `YYYY-MM-DD` (or days since 1970-01-01), a `timestamp-millis`
//! an RFC 3339 text or milliseconds since the epoch, an enum one of its
//! symbols, a nullable field `null` or its value (or left out when it has a
//! default), and no field the schema does not name.

use std::collections::HashMap;

use apache_avro::schema::{Name, Schema};
use govbus_core::catalog::{CodeAction, DatasetSpec, RuleAction};
use serde_json::{json, Map, Value as Json};

/// A dataset whose schema does not parse (the catalog's loader checks
/// this; a document is never made from an unchecked file).
#[derive(Debug, thiserror::Error)]
#[error("{dataset}: its schema does not parse: {why}")]
pub struct OpenApiError {
    /// `owner.name`.
    pub dataset: String,
    /// The parser's reason.
    pub why: String,
}

/// The document for `datasets` (those one producer publishes, or every
/// dataset of a deployment); with `bearer`, every `/v1` call needs a token.
pub fn document(datasets: &[&DatasetSpec], bearer: bool) -> Result<Json, OpenApiError> {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for ds in datasets {
        let id = ds.id.to_string();
        let schema = Schema::parse_str(&ds.entity_schema).map_err(|e| OpenApiError {
            dataset: id.clone(),
            why: e.to_string(),
        })?;
        let prefix = component_prefix(&id);
        let mut entity = json_schema(&schema, &names_of(&schema), 0);
        describe_contract(&mut entity, ds);
        let entity_ref = format!("#/components/schemas/{prefix}");
        schemas.insert(prefix.clone(), entity);
        schemas.insert(
            format!("{prefix}.Upsert"),
            json!({
                "type": "object",
                "description": format!("Create or replace one {id} entity (keyed by `{}`).", ds.file.key),
                "required": ["op", "data"],
                "properties": {
                    "op": {"const": "upsert"},
                    "data": {"$ref": entity_ref},
                },
                "additionalProperties": false,
            }),
        );
        schemas.insert(
            format!("{prefix}.Delete"),
            json!({
                "type": "object",
                "description": format!("Delete the {id} entity whose `{}` is `key` (404 when this producer never published it).", ds.file.key),
                "required": ["op", "key"],
                "properties": {
                    "op": {"const": "delete"},
                    "key": {"type": "string", "minLength": 1},
                },
                "additionalProperties": false,
            }),
        );
        schemas.insert(
            format!("{prefix}.Change"),
            json!({"oneOf": [
                {"$ref": format!("#/components/schemas/{prefix}.Upsert")},
                {"$ref": format!("#/components/schemas/{prefix}.Delete")},
            ]}),
        );
        let change = format!("#/components/schemas/{prefix}.Change");
        paths.insert(
            format!("/v1/datasets/{id}/changes"),
            json!({"post": {
                "operationId": format!("{prefix}.change"),
                "summary": format!("Submit one change of {id}"),
                "description": "Validated against the schema, the codes cleaned by the change's date, the contract's rules checked; 202 once the change is durable in the producer's outbox (it reaches Kafka exactly once, in order per entity). Nothing is stored unless the answer is 202.",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": change}}}},
                "responses": answers(json!({"$ref": "#/components/schemas/Accepted"}), bearer),
            }}),
        );
        paths.insert(
            format!("/v1/datasets/{id}/changes/batch"),
            json!({"post": {
                "operationId": format!("{prefix}.batch"),
                "summary": format!("Submit changes of {id}, all or none"),
                "description": format!("Every change is validated; then all are stored in one transaction, or none (422 naming each bad field as `changes[i].…`). The body is at most {} bytes.", crate::http::MAX_BODY),
                "requestBody": {"required": true, "content": {"application/json": {"schema": {
                    "type": "object",
                    "required": ["changes"],
                    "properties": {"changes": {"type": "array", "items": {"$ref": change}}},
                }}}},
                "responses": answers(json!({
                    "type": "object",
                    "required": ["accepted"],
                    "properties": {"accepted": {"type": "array", "items": {"$ref": "#/components/schemas/Accepted"}}},
                }), bearer),
            }}),
        );
    }
    paths.insert(
        "/v1/datasets".into(),
        json!({"get": {
            "operationId": "datasets",
            "summary": "The datasets this producer publishes, and the catalogs its contracts look codes up in (rows held)",
            "responses": {
                "200": {"description": "The datasets.", "content": {"application/json": {"schema": {
                    "type": "object",
                    "required": ["datasets", "lookups"],
                    "properties": {
                        "datasets": {"type": "array", "items": {"type": "string"}},
                        "lookups": {"type": "array", "items": {
                            "type": "object",
                            "required": ["dataset", "rows"],
                            "properties": {"dataset": {"type": "string"}, "rows": {"type": "integer", "minimum": 0}},
                        }},
                    },
                }}}},
                "401": error_answer("No token, or an unknown one."),
            },
        }}),
    );
    paths.insert(
        "/healthz".into(),
        json!({"get": {
            "operationId": "healthz",
            "summary": "Alive",
            "security": [],
            "responses": {"200": {"description": "Alive.", "content": {"application/json": {"schema": {
                "type": "object", "required": ["status"], "properties": {"status": {"const": "alive"}},
            }}}}},
        }}),
    );
    paths.insert(
        "/openapi.json".into(),
        json!({"get": {
            "operationId": "openapi",
            "summary": "This document",
            "security": [],
            "responses": {"200": {"description": "The OpenAPI document.", "content": {"application/json": {"schema": {"type": "object"}}}}},
        }}),
    );
    schemas.insert(
        "Accepted".into(),
        json!({
            "type": "object",
            "description": "A change the producer's store holds durably.",
            "required": ["event_id", "seq", "op", "key"],
            "properties": {
                "event_id": {"type": "string", "description": "The change's id (its receipts are found by it)."},
                "seq": {"type": "integer", "minimum": 1, "description": "The entity's sequence number given to this change."},
                "op": {"enum": ["CREATE", "UPDATE", "DELETE"]},
                "key": {"type": "string"},
            },
            "additionalProperties": false,
        }),
    );
    schemas.insert(
        "Error".into(),
        json!({
            "type": "object",
            "description": "Why nothing was stored: `error` says what refused the change (`refused by the dataset's schema`, `refused by the rule NAME`, `refused by the code check of FIELD`, or the reason for a 4xx/5xx); `errors` names every bad field.",
            "required": ["error", "errors"],
            "properties": {
                "error": {"type": "string"},
                "errors": {"type": "array", "items": {
                    "type": "object",
                    "required": ["field", "problem"],
                    "properties": {
                        "field": {"type": "string", "description": "Dotted path of the field (`permanent_address.commune_code`; in a batch `changes[3].data.…`), or `$` for the whole document."},
                        "problem": {"type": "string", "description": "What is wrong; `rule NAME: message` for a contract rule, `rule codes: …` for a code check."},
                    },
                    "additionalProperties": false,
                }},
            },
            "additionalProperties": false,
        }),
    );
    let mut components = json!({ "schemas": schemas });
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "govbus ingest",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "A ministry's changes onto the bus. Each dataset's entity is the JSON form of its Avro schema: dates as YYYY-MM-DD (or days since 1970-01-01), timestamps as RFC 3339 (or milliseconds since the epoch), enums as one of their symbols, nullable fields as null or their value (left out: their default), no field the schema does not name.",
        },
        "paths": paths,
    });
    if bearer {
        components["securitySchemes"] = json!({"token": {
            "type": "http",
            "scheme": "bearer",
            "description": "A token from `govbus token new NAME`, whose hash is in the producer's credentials file.",
        }});
        doc["security"] = json!([{"token": []}]);
    }
    doc["components"] = components;
    Ok(doc)
}

/// `bca.residents` → `bca.residents` (component names allow dots).
fn component_prefix(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn error_answer(description: &str) -> Json {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

/// Every answer of a change endpoint: `accepted` on 202, the error shape
/// otherwise.
fn answers(accepted: Json, bearer: bool) -> Json {
    let mut a = json!({
        "202": {"description": "Stored durably; it will reach the central topic exactly once.", "content": {"application/json": {"schema": accepted}}},
        "400": error_answer("The body is not JSON."),
        "404": error_answer("The dataset is not published here, or a delete names an entity this producer never published."),
        "409": error_answer("A replayed change whose entity changed after it was refused."),
        "413": error_answer("The body is larger than the limit."),
        "422": error_answer("Refused by the schema, a contract rule or a code check; every bad field is named."),
        "500": error_answer("The change could not be encoded (a bug; nothing was stored)."),
        "503": error_answer("The producer's store is unavailable: retry later."),
    });
    if bearer {
        a["401"] = error_answer("No token, or an unknown one.");
    }
    a
}

/// Named types by full name, for references.
fn names_of(schema: &Schema) -> HashMap<Name, Schema> {
    let mut out = HashMap::new();
    fn walk(s: &Schema, out: &mut HashMap<Name, Schema>) {
        match s {
            Schema::Record(r) => {
                out.insert(r.name.clone(), s.clone());
                for f in &r.fields {
                    walk(&f.schema, out);
                }
            }
            Schema::Enum(e) => {
                out.insert(e.name.clone(), s.clone());
            }
            Schema::Fixed(f) => {
                out.insert(f.name.clone(), s.clone());
            }
            Schema::Array(a) => walk(&a.items, out),
            Schema::Map(m) => walk(&m.types, out),
            Schema::Union(u) => u.variants().iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(schema, &mut out);
    out
}

/// The JSON Schema (2020-12, OpenAPI 3.1's) of the JSON ingest takes for
/// `schema`.
fn json_schema(schema: &Schema, names: &HashMap<Name, Schema>, depth: usize) -> Json {
    // A recursive type is described to a depth, then as any value.
    if depth > 32 {
        return json!({});
    }
    let at = |s: &Schema| json_schema(s, names, depth + 1);
    match schema {
        Schema::Null => json!({"type": "null"}),
        Schema::Boolean => json!({"type": "boolean"}),
        Schema::Int => {
            json!({"type": "integer", "format": "int32", "minimum": i32::MIN, "maximum": i32::MAX})
        }
        Schema::Long => json!({"type": "integer", "format": "int64"}),
        Schema::Float | Schema::Double => json!({"type": "number"}),
        Schema::String => json!({"type": "string"}),
        Schema::Bytes | Schema::Fixed(_) => {
            json!({"type": "string", "description": "bytes, as text"})
        }
        Schema::Uuid => json!({"type": "string", "format": "uuid"}),
        Schema::Date => json!({"anyOf": [
            {"type": "string", "format": "date", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$", "description": "YYYY-MM-DD (years 1 to 9999)"},
            {"type": "integer", "description": "days since 1970-01-01"},
        ]}),
        Schema::TimestampMillis => json!({"anyOf": [
            {"type": "string", "format": "date-time", "description": "RFC 3339"},
            {"type": "integer", "format": "int64", "description": "milliseconds since 1970-01-01T00:00:00Z"},
        ]}),
        Schema::Enum(e) => {
            let mut j = json!({"type": "string", "enum": e.symbols});
            if let Some(d) = &e.doc {
                j["description"] = json!(d);
            }
            j
        }
        Schema::Array(a) => json!({"type": "array", "items": at(&a.items)}),
        Schema::Map(m) => json!({"type": "object", "additionalProperties": at(&m.types)}),
        Schema::Union(u) => json!({"anyOf": u.variants().iter().map(at).collect::<Vec<_>>()}),
        Schema::Record(r) => {
            let mut props = Map::new();
            let mut required = Vec::new();
            for f in &r.fields {
                let mut p = at(&f.schema);
                if let Some(d) = &f.doc {
                    p = with_description(p, d);
                }
                if f.default.is_none() {
                    required.push(json!(f.name));
                }
                props.insert(f.name.clone(), p);
            }
            let mut j = json!({
                "type": "object",
                "title": r.name.name,
                "properties": props,
                "required": required,
                "additionalProperties": false,
            });
            if let Some(d) = &r.doc {
                j["description"] = json!(d);
            }
            j
        }
        Schema::Ref { name } => match names.get(name) {
            Some(s) => at(s),
            None => json!({}),
        },
        // A logical type ingest has no JSON form for (decimal, durations,
        // local timestamps): any value, which the producer then checks.
        _ => json!({}),
    }
}

/// `j` with `text` as its description (kept beside a `$ref` or `anyOf`).
fn with_description(mut j: Json, text: &str) -> Json {
    if let Some(o) = j.as_object_mut() {
        let d = match o.get("description").and_then(Json::as_str) {
            Some(old) => format!("{text} ({old})"),
            None => text.to_string(),
        };
        o.insert("description".into(), json!(d));
    }
    j
}

/// The field at `path` in the record schema `j`, if there.
fn field_mut<'a>(j: &'a mut Json, path: &str) -> Option<&'a mut Json> {
    let mut pointer = String::new();
    for part in path.split('.') {
        pointer.push_str("/properties/");
        pointer.push_str(&part.replace('~', "~0").replace('/', "~1"));
        let at = j.pointer(&pointer)?;
        // A nullable record: its object branch.
        if at.get("properties").is_none() {
            if let Some(i) = at
                .get("anyOf")
                .and_then(Json::as_array)
                .and_then(|b| b.iter().position(|b| b.get("properties").is_some()))
            {
                pointer.push_str(&format!("/anyOf/{i}"));
            }
        }
    }
    j.pointer_mut(&pointer)
}

/// Says on the entity what the contract does beyond the schema: each rule
/// (`x-govbus-rules`, and on its field), each code check (on its field), and
/// the fields the producer sets itself.
fn describe_contract(entity: &mut Json, ds: &DatasetSpec) {
    let rules: Vec<Json> = ds
        .file
        .rules
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "field": r.field,
                "expr": r.expr,
                "message": r.message,
                "action": match r.action { RuleAction::Reject => "reject", RuleAction::Warn => "warn" },
            })
        })
        .collect();
    for r in &ds.file.rules {
        let what = match r.action {
            RuleAction::Reject => "refused (422)",
            RuleAction::Warn => "accepted and counted",
        };
        if let Some(f) = field_mut(entity, &r.field) {
            *f = with_description(
                f.take(),
                &format!(
                    "Rule {}: {} (CEL `{}`; otherwise {what}).",
                    r.name, r.message, r.expr
                ),
            );
        }
    }
    let action = |a: CodeAction| match a {
        CodeAction::Normalise => "normalised to its successor",
        CodeAction::Refuse => "refused (422)",
        CodeAction::Keep => "kept",
    };
    for c in &ds.file.codes {
        let lookup = ds
            .file
            .lookups
            .get(&c.catalog)
            .map_or(c.catalog.clone(), |d| d.to_string());
        let text = format!(
            "Code check: a{} code of {lookup} valid on {}{}; one retired and merged whole is {}, merged in part into several {}, unknown {}.",
            c.level.as_deref().map(|l| format!(" {l}")).unwrap_or_default(),
            c.date
                .as_deref()
                .map(|d| format!("the change's `{d}` (Vietnam's time)"))
                .unwrap_or_else(|| "the day it is received".into()),
            c.within
                .as_deref()
                .map(|w| format!(", inside the unit in `{w}`"))
                .unwrap_or_default(),
            action(c.merged),
            action(c.split),
            action(c.unknown),
        );
        if let Some(f) = field_mut(entity, &c.field) {
            *f = with_description(f.take(), &text);
        }
        if let Some(kept) = &c.as_sent {
            if let Some(f) = field_mut(entity, kept) {
                *f = with_description(
                    f.take(),
                    &format!("Set by the producer: `{}` as sent, when it normalised it (send null or leave it out).", c.field),
                );
            }
        }
    }
    if !rules.is_empty() {
        entity["x-govbus-rules"] = json!(rules);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_residents_document_describes_every_field_rule_and_code_check() {
        let catalog = govbus_core::Catalog::builtin();
        let ds: Vec<&DatasetSpec> = catalog.datasets.values().collect();
        let doc = document(&ds, false).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let r = &doc["components"]["schemas"]["bca.residents"];
        assert_eq!(
            r["properties"]["sex"]["enum"],
            json!(["MALE", "FEMALE", "OTHER"])
        );
        assert_eq!(
            r["properties"]["date_of_birth"]["anyOf"][0]["format"],
            "date"
        );
        let commune = r["properties"]["permanent_address"]["properties"]["commune_code"]
            ["description"]
            .as_str()
            .unwrap();
        assert!(
            commune.contains("Code check: a COMMUNE code of moha.admin_units"),
            "{commune}"
        );
        assert!(commune.contains("Rule codes_are_well_formed"), "{commune}");
        assert_eq!(r["x-govbus-rules"].as_array().unwrap().len(), 4);
        assert!(doc["paths"]["/v1/datasets/moha.admin_units/changes/batch"]["post"].is_object());
        assert!(doc.get("security").is_none());
        let secured = document(&ds, true).unwrap();
        assert_eq!(secured["security"], json!([{"token": []}]));
        assert!(
            secured["paths"]["/v1/datasets/bca.residents/changes"]["post"]["responses"]["401"]
                .is_object()
        );
    }
}
