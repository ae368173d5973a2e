//! The Confluent Schema Registry REST API (Avro).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use govbus_http::body::{self as http_body, BodyLimit};
use govbus_schema::Compatibility;
use serde::Deserialize;
use serde_json::{json, Value as Json};

pub use crate::error::CONTENT_TYPE;
use crate::error::{ApiError, StoreFailure};
use crate::state::{
    check_subject, Contract, LogRecord, Mode, Outcome, Plan, Reference, Registration,
};
use crate::store::KafkaStore;

/// The default largest request body: 4 MiB, a schema with its references
/// and contract (a schema itself over 1 MiB gets 42209).
pub const MAX_BODY: usize = 4 << 20;

type Shared = State<Arc<KafkaStore>>;

fn ok(body: Json) -> Response {
    ([("content-type", CONTENT_TYPE)], body.to_string()).into_response()
}

/// The API's routes over `store`, open to anyone.
pub fn router(store: Arc<KafkaStore>) -> Router {
    router_with(store, None)
}

/// The API's routes over `store`; with `access`, each request must
/// authenticate, and a change to a subject must come from its owner.
pub fn router_with(store: Arc<KafkaStore>, access: Option<crate::access::Access>) -> Router {
    routes(
        store,
        access,
        Limits {
            import: false,
            max_body: MAX_BODY,
        },
    )
}

/// What the API allows beyond its routes.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Without `[auth]`: whether anyone may use IMPORT mode.
    pub import: bool,
    /// The largest request body.
    pub max_body: usize,
}

/// The API's routes over `store`, with `access` and `limits`.
pub fn routes(
    store: Arc<KafkaStore>,
    access: Option<crate::access::Access>,
    limits: Limits,
) -> Router {
    let routes = Router::new()
        .route("/", get(|| async { ok(json!({})) }))
        .route("/schemas/types", get(|| async { ok(json!(["AVRO"])) }))
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/schema", get(raw_schema_by_id))
        .route("/schemas/ids/{id}/versions", get(id_versions))
        .route("/schemas/ids/{id}/subjects", get(id_subjects))
        .route("/subjects", get(subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route("/subjects/{subject}/versions", get(versions).post(register))
        .route(
            "/subjects/{subject}/versions/{version}",
            get(version).delete(delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(version_schema),
        )
        .route(
            "/subjects/{subject}/versions/{version}/referencedby",
            get(referenced_by),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(compat_version),
        )
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(compat_all),
        )
        .route(
            "/config",
            get(get_global).put(put_global).delete(delete_global),
        )
        .route(
            "/config/{subject}",
            get(get_subject_config)
                .put(put_subject_config)
                .delete(delete_subject_config),
        )
        .route("/mode", get(get_global_mode).put(put_global_mode))
        .route(
            "/mode/{subject}",
            get(get_subject_mode)
                .put(put_subject_mode)
                .delete(delete_subject_mode),
        )
        .fallback(|| async { axum::http::StatusCode::NOT_FOUND })
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            BodyLimit::new(limits.max_body),
            http_body::limit,
        ));
    // Authentication runs first, then the owner check (outer layers run
    // first), and their refusals get Confluent's error shape too.
    let routes = match access {
        Some(a) => routes
            .layer(axum::middleware::from_fn_with_state(
                a.clone(),
                crate::access::authorize,
            ))
            .layer(axum::middleware::from_fn_with_state(
                a.credentials.clone(),
                govbus_http::authenticate,
            )),
        None => routes.layer(axum::middleware::from_fn(
            move |mut req: axum::extract::Request, next: axum::middleware::Next| {
                req.extensions_mut()
                    .insert(crate::access::Operator(limits.import));
                next.run(req)
            },
        )),
    };
    routes
        .layer(axum::middleware::map_response(confluent_errors))
        .with_state(store)
}

/// Gives every error Confluent's JSON shape (`error_code`, `message`):
/// axum's own answers (an unknown path, a wrong method, a body over the
/// limit, a query or path it cannot parse) are plain text or empty; the
/// text becomes the message and the HTTP status the error code, as
/// Confluent's registry answers its generic errors.
async fn confluent_errors(r: Response) -> Response {
    match govbus_http::answer::plain_error(r).await {
        Err(r) => r,
        Ok((status, text)) => (
            status,
            [("content-type", CONTENT_TYPE)],
            json!({
                "error_code": status.as_u16(),
                "message": text.unwrap_or_else(|| govbus_http::answer::status_line(status)),
            })
            .to_string(),
        )
            .into_response(),
    }
}

/// A query flag as Confluent's registry reads it (Java's
/// `Boolean.valueOf`): `true` in any case is true, anything else false —
/// so Python clients' `normalize=False` and `verbose=True` work.
fn flag<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let text = String::deserialize(d)?;
    Ok(text.eq_ignore_ascii_case("true"))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaBody {
    schema: String,
    #[serde(default)]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<Reference>,
    #[serde(default)]
    id: Option<u32>,
    #[serde(default)]
    version: Option<u32>,
    #[serde(default)]
    metadata: Option<Json>,
    #[serde(default)]
    rule_set: Option<Json>,
}

pub(crate) fn schema_body(body: &[u8]) -> Result<Registration, ApiError> {
    let b: SchemaBody =
        serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    match b.schema_type.as_deref() {
        None | Some("AVRO") => Ok(Registration {
            schema: b.schema,
            references: b.references,
            contract: Contract {
                metadata: b.metadata,
                rule_set: b.rule_set,
            },
            id: b.id,
            version: b.version,
        }),
        Some(other) => Err(ApiError::InvalidSchema(format!(
            "schema type {other} is not supported (only AVRO)"
        ))),
    }
}

/// Query flags Confluent's API takes.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Flags {
    #[serde(default, deserialize_with = "flag")]
    deleted: bool,
    #[serde(default, deserialize_with = "flag")]
    permanent: bool,
    #[serde(default, deserialize_with = "flag")]
    verbose: bool,
    /// govbus always stores schemas normalized; accepted for clients that ask.
    #[serde(default, deserialize_with = "flag")]
    #[allow(dead_code)]
    normalize: bool,
    #[serde(default)]
    subject_prefix: Option<String>,
    #[serde(default, deserialize_with = "flag")]
    default_to_global: bool,
    #[serde(default, deserialize_with = "flag")]
    force: bool,
    #[serde(default)]
    subject: Option<String>,
}

fn parse_id(id: &str) -> Result<u32, ApiError> {
    id.parse()
        .map_err(|_| ApiError::SchemaNotFound(id.to_string()))
}

type Doc = (String, Vec<Reference>, Contract);

fn stored(s: &KafkaStore, id: &str) -> Result<Doc, ApiError> {
    let n = parse_id(id)?;
    s.read(|st| {
        st.schema(n)
            .map(|x| (x.text.clone(), x.references.clone(), x.contract.clone()))
    })
    .ok_or_else(|| ApiError::SchemaNotFound(id.to_string()))
}

/// Adds references, metadata and rule set to a response, when there are any.
fn decorate(body: &mut Json, refs: &[Reference], contract: &Contract) {
    if !refs.is_empty() {
        body["references"] = json!(refs);
    }
    if let Some(m) = &contract.metadata {
        body["metadata"] = m.clone();
    }
    if let Some(r) = &contract.rule_set {
        body["ruleSet"] = r.clone();
    }
}

async fn schema_by_id(
    State(s): Shared,
    Path(id): Path<String>,
    Query(q): Query<Flags>,
) -> Result<Response, ApiError> {
    let (text, refs, contract) = stored(&s, &id)?;
    if let Some(subject) = q.subject {
        let n = parse_id(&id)?;
        if !s.read(|st| st.id_versions(n, true).iter().any(|(x, _)| *x == subject)) {
            return Err(ApiError::SchemaNotFound(id));
        }
    }
    let mut body = json!({ "schema": text });
    decorate(&mut body, &refs, &contract);
    Ok(ok(body))
}

async fn raw_schema_by_id(State(s): Shared, Path(id): Path<String>) -> Result<Response, ApiError> {
    let (text, _, _) = stored(&s, &id)?;
    Ok(ok(serde_json::from_str(&text).unwrap_or(Json::Null)))
}

async fn id_versions(
    State(s): Shared,
    Path(id): Path<String>,
    Query(q): Query<Flags>,
) -> Result<Response, ApiError> {
    stored(&s, &id)?;
    let n = parse_id(&id)?;
    let v = s.read(|st| st.id_versions(n, q.deleted));
    Ok(ok(json!(v
        .iter()
        .map(|(subject, version)| json!({"subject": subject, "version": version}))
        .collect::<Vec<_>>())))
}

async fn id_subjects(
    State(s): Shared,
    Path(id): Path<String>,
    Query(q): Query<Flags>,
) -> Result<Response, ApiError> {
    stored(&s, &id)?;
    let n = parse_id(&id)?;
    let mut v: Vec<String> = s
        .read(|st| st.id_versions(n, q.deleted))
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    v.dedup();
    Ok(ok(json!(v)))
}

async fn subjects(State(s): Shared, Query(q): Query<Flags>) -> Response {
    let prefix = q.subject_prefix.unwrap_or_default();
    ok(json!(s.read(|st| st.subjects(q.deleted, &prefix))))
}

async fn versions(
    State(s): Shared,
    Path(subject): Path<String>,
    Query(q): Query<Flags>,
) -> Result<Response, ApiError> {
    let v = s.read(|st| st.versions_with(&subject, q.deleted))?;
    Ok(ok(json!(v.iter().map(|(v, _)| *v).collect::<Vec<_>>())))
}

fn version_json(
    s: &KafkaStore,
    subject: &str,
    version: &str,
    deleted: bool,
) -> Result<Json, ApiError> {
    s.read(|st| {
        let (v, id) = st.version_with(subject, version, deleted)?;
        let (text, refs, contract) = st
            .schema(id)
            .map(|x| (x.text.clone(), x.references.clone(), x.contract.clone()))
            .unwrap_or_default();
        let mut body = json!({"subject": subject, "version": v, "id": id, "schema": text});
        decorate(&mut body, &refs, &contract);
        Ok(body)
    })
}

async fn version(
    State(s): Shared,
    Path((subject, version)): Path<(String, String)>,
    Query(q): Query<Flags>,
) -> Result<Response, ApiError> {
    Ok(ok(version_json(&s, &subject, &version, q.deleted)?))
}

async fn version_schema(
    State(s): Shared,
    Path((subject, version)): Path<(String, String)>,
    Query(q): Query<Flags>,
) -> Result<Response, ApiError> {
    let v = version_json(&s, &subject, &version, q.deleted)?;
    Ok(ok(serde_json::from_str(
        v.get("schema").and_then(Json::as_str).unwrap_or("null"),
    )
    .unwrap_or(Json::Null)))
}

async fn referenced_by(
    State(s): Shared,
    Path((subject, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let ids = s.read(|st| {
        let (v, _) = st.version_with(&subject, &version, true)?;
        Ok::<_, ApiError>(st.referenced_by(&subject, v))
    })?;
    Ok(ok(json!(ids)))
}

/// Appends `recs` (in order) and waits until this instance applied them.
async fn commit_all(s: &KafkaStore, recs: &[LogRecord]) -> Result<(), ApiError> {
    for r in recs {
        s.commit(r).await?;
    }
    Ok(())
}

/// Whether the request's caller is the operator.
fn operator(op: Option<axum::Extension<crate::access::Operator>>) -> bool {
    op.is_some_and(|axum::Extension(o)| o.0)
}

async fn register(
    State(s): Shared,
    Path(subject): Path<String>,
    op: Option<axum::Extension<crate::access::Operator>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let reg = schema_body(&body)?;
    if (reg.id.is_some() || reg.version.is_some()) && !operator(op) {
        return Err(ApiError::Forbidden(
            "only the registry's operator may choose a schema's id or version (IMPORT)".into(),
        ));
    }
    let _guard = s.lock().await;
    // Another instance may claim the same id or version at the same time;
    // the log's order decides, and the loser plans again after a short,
    // growing and uneven pause, so that two instances retrying in step do
    // not collide every time (two writers on a loaded machine did, ten
    // times in a row).
    for attempt in 0..REGISTER_ATTEMPTS {
        match s.read(|st| st.plan_register(&subject, &reg))? {
            Plan::Existing(id) => return Ok(ok(json!({ "id": id }))),
            Plan::Write(rec) => {
                let LogRecord::Schema { id, version, .. } = &rec else {
                    return Err(ApiError::Store(StoreFailure::Misplanned));
                };
                let (id, version) = (*id, *version);
                if let Some(g) = s.guard() {
                    let reasons = s.read(|st| st.guard_reasons(&subject, &reg, g.as_ref()))?;
                    if !reasons.is_empty() {
                        return Err(ApiError::Incompatible { subject, reasons });
                    }
                }
                s.commit(&rec).await?;
                match s.read(|st| st.outcome(&rec)) {
                    Outcome::Applied => {
                        tracing::info!(subject, id, version, "registered schema");
                        return Ok(ok(json!({ "id": id })));
                    }
                    Outcome::Lost { repair } => {
                        govbus_core::InternalEvent::emit(WriteConflict {
                            subject: &subject,
                            id,
                            version,
                        });
                        if let Some(r) = repair {
                            s.commit(&r).await?;
                            if let LogRecord::SchemaTombstone { subject, version } = &r {
                                let again =
                                    s.read(|st| st.rewrite_after_tombstone(subject, *version));
                                if let Some(w) = again {
                                    s.commit(&w).await?;
                                }
                            }
                        }
                        tokio::time::sleep(retry_pause(attempt)).await;
                    }
                }
            }
        }
    }
    Err(ApiError::Store(StoreFailure::Contended(REGISTER_ATTEMPTS)))
}

/// How many times a registration is planned again after losing to another
/// instance before the client is told to retry (500).
const REGISTER_ATTEMPTS: u32 = 30;

/// The pause before planning again after the `attempt`th loss: up to
/// 5 ms × (attempt + 1), spread by the clock's nanoseconds.
fn retry_pause(attempt: u32) -> std::time::Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let cap = 5_000 * (u64::from(attempt.min(20)) + 1);
    std::time::Duration::from_micros(u64::from(nanos) % cap)
}

async fn lookup(
    State(s): Shared,
    Path(subject): Path<String>,
    Query(q): Query<Flags>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let reg = schema_body(&body)?;
    let (v, id) = s.read(|st| st.lookup(&subject, &reg.schema, &reg.references, q.deleted))?;
    let mut body = version_json(&s, &subject, &v.to_string(), true)?;
    if let Some(o) = body.as_object_mut() {
        o.insert("id".into(), json!(id));
    }
    Ok(ok(body))
}

async fn delete_subject(
    State(s): Shared,
    Path(subject): Path<String>,
    Query(q): Query<Flags>,
) -> Result<Response, ApiError> {
    let _guard = s.lock().await;
    let (recs, versions) = s.read(|st| st.plan_delete_subject(&subject, q.permanent))?;
    commit_all(&s, &recs).await?;
    tracing::info!(
        subject,
        permanent = q.permanent,
        ?versions,
        "deleted subject"
    );
    Ok(ok(json!(versions)))
}

async fn delete_version(
    State(s): Shared,
    Path((subject, version)): Path<(String, String)>,
    Query(q): Query<Flags>,
) -> Result<Response, ApiError> {
    let _guard = s.lock().await;
    let (rec, v) = s.read(|st| st.plan_delete_version(&subject, &version, q.permanent))?;
    s.commit(&rec).await?;
    tracing::info!(
        subject,
        version = v,
        permanent = q.permanent,
        "deleted version"
    );
    Ok(ok(json!(v)))
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
    Query(q): Query<Flags>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let reg = schema_body(&body)?;
    let reasons = s.read(|st| {
        let parsed = st.parse_request(&reg.schema, &reg.references)?;
        st.compatibility(&subject, Some(&version), &parsed)
    })?;
    Ok(compat_answer(reasons, q.verbose))
}

async fn compat_all(
    State(s): Shared,
    Path(subject): Path<String>,
    Query(q): Query<Flags>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let reg = schema_body(&body)?;
    let reasons = s.read(|st| {
        let parsed = st.parse_request(&reg.schema, &reg.references)?;
        st.compatibility(&subject, None, &parsed)
    })?;
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

async fn delete_global(State(s): Shared) -> Result<Response, ApiError> {
    let _guard = s.lock().await;
    let before = s.read(|st| st.global_level());
    s.commit(&LogRecord::Config {
        subject: None,
        level: None,
    })
    .await?;
    Ok(ok(json!({ "compatibilityLevel": before })))
}

async fn get_subject_config(
    State(s): Shared,
    Path(subject): Path<String>,
    Query(q): Query<Flags>,
) -> Result<Response, ApiError> {
    match s.read(|st| st.subject_level(&subject)) {
        Some(l) => Ok(ok(json!({ "compatibilityLevel": l }))),
        None if q.default_to_global => Ok(ok(
            json!({"compatibilityLevel": s.read(|st| st.global_level())}),
        )),
        None => Err(ApiError::SubjectConfigNotFound(subject)),
    }
}

async fn put_subject_config(
    State(s): Shared,
    Path(subject): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_subject(&subject)?;
    let l = level(&body)?;
    let _guard = s.lock().await;
    s.commit(&LogRecord::Config {
        subject: Some(subject),
        level: Some(l),
    })
    .await?;
    Ok(ok(json!({ "compatibility": l })))
}

async fn delete_subject_config(
    State(s): Shared,
    Path(subject): Path<String>,
) -> Result<Response, ApiError> {
    let _guard = s.lock().await;
    let before = s
        .read(|st| st.subject_level(&subject))
        .ok_or_else(|| ApiError::SubjectConfigNotFound(subject.clone()))?;
    s.commit(&LogRecord::Config {
        subject: Some(subject),
        level: None,
    })
    .await?;
    Ok(ok(json!({ "compatibilityLevel": before })))
}

#[derive(Deserialize)]
struct ModeBody {
    mode: String,
}

fn mode(body: &[u8]) -> Result<Mode, ApiError> {
    let b: ModeBody =
        serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    b.mode.parse().map_err(|_| ApiError::InvalidMode(b.mode))
}

async fn get_global_mode(State(s): Shared) -> Response {
    ok(json!({"mode": s.read(|st| st.global_mode())}))
}

async fn put_global_mode(
    State(s): Shared,
    Query(q): Query<Flags>,
    op: Option<axum::Extension<crate::access::Operator>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    put_mode(&s, None, q.force, operator(op), &body).await
}

async fn put_mode(
    s: &KafkaStore,
    subject: Option<String>,
    force: bool,
    operator: bool,
    body: &[u8],
) -> Result<Response, ApiError> {
    let m = mode(body)?;
    if m == Mode::Import && !operator {
        return Err(ApiError::Forbidden(
            "only the registry's operator may set IMPORT mode (an admin, or `[registry] import = true` without auth)".into(),
        ));
    }
    let _guard = s.lock().await;
    let has_data = s.read(|st| match &subject {
        None => !st.is_empty(),
        Some(x) => st.versions_with(x, true).is_ok(),
    });
    if m == Mode::Import && has_data && !force {
        return Err(ApiError::NotPermitted(
            "Cannot import since found existing subjects".into(),
        ));
    }
    s.commit(&LogRecord::Mode {
        subject,
        mode: Some(m),
    })
    .await?;
    Ok(ok(json!({ "mode": m })))
}

async fn get_subject_mode(
    State(s): Shared,
    Path(subject): Path<String>,
    Query(q): Query<Flags>,
) -> Result<Response, ApiError> {
    match s.read(|st| st.subject_mode(&subject)) {
        Some(m) => Ok(ok(json!({ "mode": m }))),
        None if q.default_to_global => Ok(ok(json!({"mode": s.read(|st| st.global_mode())}))),
        None => Err(ApiError::SubjectModeNotFound(subject)),
    }
}

async fn put_subject_mode(
    State(s): Shared,
    Path(subject): Path<String>,
    Query(q): Query<Flags>,
    op: Option<axum::Extension<crate::access::Operator>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_subject(&subject)?;
    put_mode(&s, Some(subject), q.force, operator(op), &body).await
}

async fn delete_subject_mode(
    State(s): Shared,
    Path(subject): Path<String>,
) -> Result<Response, ApiError> {
    let _guard = s.lock().await;
    let before = s
        .read(|st| st.subject_mode(&subject))
        .ok_or_else(|| ApiError::SubjectModeNotFound(subject.clone()))?;
    s.commit(&LogRecord::Mode {
        subject: Some(subject),
        mode: None,
    })
    .await?;
    Ok(ok(json!({ "mode": before })))
}

/// Another registry instance claimed an id or version first; the write is
/// retried (an internal event: it logs and counts together).
#[derive(Debug)]
struct WriteConflict<'a> {
    subject: &'a str,
    id: u32,
    version: u32,
}

impl govbus_core::InternalEvent for WriteConflict<'_> {
    fn emit(self) {
        tracing::warn!(
            subject = self.subject,
            id = self.id,
            version = self.version,
            "another registry instance claimed this id or version first; retrying"
        );
        metrics::counter!("govbus_registry_write_conflicts_total").increment(1);
    }
}
