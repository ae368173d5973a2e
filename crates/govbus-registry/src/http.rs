//! The Confluent Schema Registry REST API.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use govbus_schema::Compatibility;
use serde::Deserialize;
use serde_json::{json, Value as Json};

use crate::error::ApiError;
use crate::state::{parse_schema, LogRecord, Plan};
use crate::store::KafkaStore;

/// Confluent's content type.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

type Shared = State<Arc<KafkaStore>>;

fn ok(body: Json) -> Response {
    ([("content-type", CONTENT_TYPE)], body.to_string()).into_response()
}

/// The API's routes over `store`.
pub fn router(store: Arc<KafkaStore>) -> Router {
    Router::new()
        .route("/", get(|| async { ok(json!({})) }))
        .route("/schemas/types", get(|| async { ok(json!(["AVRO"])) }))
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/subjects", get(subjects))
        .route("/subjects/{subject}", post(lookup))
        .route("/subjects/{subject}/versions", get(versions).post(register))
        .route("/subjects/{subject}/versions/{version}", get(version))
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(version_schema),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(compat_version),
        )
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(compat_all),
        )
        .route("/config", get(get_global).put(put_global))
        .route(
            "/config/{subject}",
            get(get_subject_config).put(put_subject_config),
        )
        .with_state(store)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaBody {
    schema: String,
    #[serde(default)]
    schema_type: Option<String>,
}

fn schema_body(body: &[u8]) -> Result<SchemaBody, ApiError> {
    let b: SchemaBody =
        serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    match b.schema_type.as_deref() {
        None | Some("AVRO") => Ok(b),
        Some(other) => Err(ApiError::InvalidSchema(format!(
            "schema type {other} is not supported (only AVRO)"
        ))),
    }
}

async fn schema_by_id(State(s): Shared, Path(id): Path<String>) -> Result<Response, ApiError> {
    let n: u32 = id
        .parse()
        .map_err(|_| ApiError::SchemaNotFound(id.clone()))?;
    s.read(|st| st.schema(n).map(|x| x.text.clone()))
        .map(|schema| ok(json!({ "schema": schema })))
        .ok_or(ApiError::SchemaNotFound(id))
}

async fn subjects(State(s): Shared) -> Response {
    ok(json!(s.read(|st| st.subjects())))
}

async fn versions(State(s): Shared, Path(subject): Path<String>) -> Result<Response, ApiError> {
    let v = s.read(|st| st.versions(&subject))?;
    Ok(ok(json!(v.iter().map(|(v, _)| *v).collect::<Vec<_>>())))
}

fn version_json(s: &KafkaStore, subject: &str, version: &str) -> Result<Json, ApiError> {
    s.read(|st| {
        let (v, id) = st.version(subject, version)?;
        let text = st.schema(id).map(|x| x.text.clone()).unwrap_or_default();
        Ok(json!({"subject": subject, "version": v, "id": id, "schema": text}))
    })
}

async fn version(
    State(s): Shared,
    Path((subject, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    Ok(ok(version_json(&s, &subject, &version)?))
}

async fn version_schema(
    State(s): Shared,
    Path((subject, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let v = version_json(&s, &subject, &version)?;
    Ok(ok(serde_json::from_str(
        v["schema"].as_str().unwrap_or("null"),
    )
    .unwrap_or(Json::Null)))
}

async fn register(
    State(s): Shared,
    Path(subject): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let b = schema_body(&body)?;
    let _guard = s.lock().await;
    match s.read(|st| st.plan_register(&subject, &b.schema))? {
        Plan::Existing(id) => Ok(ok(json!({ "id": id }))),
        Plan::Write(rec) => {
            let LogRecord::Schema { id, version, .. } = &rec else {
                return Err(ApiError::Store("planned a non-schema record".into()));
            };
            let (id, version) = (*id, *version);
            s.commit(&rec).await?;
            tracing::info!(subject, id, version, "registered schema");
            Ok(ok(json!({ "id": id })))
        }
    }
}

async fn lookup(
    State(s): Shared,
    Path(subject): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let b = schema_body(&body)?;
    let (v, id) = s.read(|st| st.lookup(&subject, &b.schema))?;
    let text = s.read(|st| st.schema(id).map(|x| x.text.clone()).unwrap_or_default());
    Ok(ok(
        json!({"subject": subject, "version": v, "id": id, "schema": text}),
    ))
}

#[derive(Deserialize)]
struct Verbose {
    #[serde(default)]
    verbose: bool,
}

fn compat_answer(reasons: Vec<String>, verbose: bool) -> Response {
    if verbose {
        ok(json!({"is_compatible": reasons.is_empty(), "messages": reasons}))
    } else {
        ok(json!({"is_compatible": reasons.is_empty()}))
    }
}

async fn compat_version(
    State(s): Shared,
    Path((subject, version)): Path<(String, String)>,
    Query(q): Query<Verbose>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let b = schema_body(&body)?;
    let (_, parsed) = parse_schema(&b.schema)?;
    let reasons = s.read(|st| st.compatibility(&subject, Some(&version), &parsed))?;
    Ok(compat_answer(reasons, q.verbose))
}

async fn compat_all(
    State(s): Shared,
    Path(subject): Path<String>,
    Query(q): Query<Verbose>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let b = schema_body(&body)?;
    let (_, parsed) = parse_schema(&b.schema)?;
    let reasons = s.read(|st| st.compatibility(&subject, None, &parsed))?;
    Ok(compat_answer(reasons, q.verbose))
}

#[derive(Deserialize)]
struct ConfigBody {
    compatibility: String,
}

fn level(body: &[u8]) -> Result<Compatibility, ApiError> {
    let b: ConfigBody =
        serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    b.compatibility
        .to_ascii_uppercase()
        .parse()
        .map_err(|_| ApiError::InvalidCompatibility(b.compatibility))
}

async fn get_global(State(s): Shared) -> Response {
    ok(json!({"compatibilityLevel": s.read(|st| st.global_level())}))
}

async fn put_global(State(s): Shared, body: Bytes) -> Result<Response, ApiError> {
    let l = level(&body)?;
    let _guard = s.lock().await;
    s.commit(&LogRecord::Config {
        subject: None,
        level: Some(l),
    })
    .await?;
    Ok(ok(json!({ "compatibility": l })))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DefaultToGlobal {
    #[serde(default)]
    default_to_global: bool,
}

async fn get_subject_config(
    State(s): Shared,
    Path(subject): Path<String>,
    Query(q): Query<DefaultToGlobal>,
) -> Result<Response, ApiError> {
    match s.read(|st| st.subject_level(&subject)) {
        Some(l) => Ok(ok(json!({ "compatibilityLevel": l }))),
        None if q.default_to_global => Ok(ok(
            json!({"compatibilityLevel": s.read(|st| st.global_level())}),
        )),
        None => Err(ApiError::SubjectNotFound(subject)),
    }
}

async fn put_subject_config(
    State(s): Shared,
    Path(subject): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let l = level(&body)?;
    let _guard = s.lock().await;
    s.commit(&LogRecord::Config {
        subject: Some(subject),
        level: Some(l),
    })
    .await?;
    Ok(ok(json!({ "compatibility": l })))
}
