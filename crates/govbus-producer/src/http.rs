//! HTTP ingest: `POST /v1/datasets/{dataset}/changes` with a JSON change.
//!
//! ```json
//! {"op": "upsert", "data": { ...the entity... }}
//! {"op": "delete", "key": "052090000001"}
//! ```
//! `POST /v1/datasets/{dataset}/changes/batch` takes `{"changes": [...]}`:
//! every change is validated, then all are stored in one transaction or none.
//!
//! 202 once the change is durable; 400 for JSON that does not parse; 422
//! naming every bad field; 404 for an unknown dataset or entity; 503 when the
//! store is down. Nothing is stored unless the answer is 202.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use govbus_http::body::{self as http_body, BodyLimit};
use govbus_schema::FieldError;
use serde_json::{json, Value};

use crate::publisher::{ChangeRequest, Publisher, SubmitError};

/// The largest request body ingest takes (a batch of changes).
pub const MAX_BODY: usize = 2 << 20;

/// The ingest routes, open to anyone.
pub fn router(publisher: Arc<Publisher>) -> Router {
    router_with(publisher, None)
}

/// The ingest routes; with `credentials`, every `/v1` call must carry a
/// known token (401 otherwise, with the reason); `/healthz` stays open.
pub fn router_with(
    publisher: Arc<Publisher>,
    credentials: Option<Arc<govbus_http::Credentials>>,
) -> Router {
    // The body is read only once the caller is known: authentication is
    // the outer layer.
    let v1 = Router::new()
        .route("/v1/datasets/{dataset}/changes", post(ingest))
        .route("/v1/datasets/{dataset}/changes/batch", post(ingest_batch))
        .route("/v1/datasets", get(datasets))
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            BodyLimit::new(MAX_BODY),
            http_body::limit,
        ));
    // The API's description, open like /healthz: it holds no data.
    let specs: Vec<&govbus_core::catalog::DatasetSpec> = publisher.dataset_specs().iter().collect();
    let described = match crate::openapi::document(&specs, credentials.is_some()) {
        Ok(doc) => (StatusCode::OK, Json(doc)),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": e.to_string(), "errors": []})),
        ),
    };
    let v1 = match credentials {
        Some(c) => v1.layer(axum::middleware::from_fn_with_state(
            c,
            govbus_http::authenticate,
        )),
        None => v1,
    };
    v1.route(
        "/healthz",
        get(|| async { Json(json!({"status": "alive"})) }),
    )
    .route(
        "/openapi.json",
        get(move || {
            let d = described.clone();
            async move { d }
        }),
    )
    .fallback(|| async { StatusCode::NOT_FOUND })
    .layer(axum::middleware::map_response(json_errors))
    .with_state(publisher)
}

/// Gives every error the ingest's JSON shape (`{"error": …, "errors": []}`):
/// axum's own answers (an unknown path, a wrong method, a body over the
/// limit) are plain text or empty.
async fn json_errors(r: Response) -> Response {
    let (status, text) = match govbus_http::answer::plain_error(r).await {
        Err(r) => return r,
        Ok(plain) => plain,
    };
    let error = match (text, status) {
        (None, StatusCode::NOT_FOUND) => {
            "no such endpoint: POST /v1/datasets/<owner>.<name>/changes[/batch], GET /v1/datasets (GET /openapi.json describes them)"
                .to_string()
        }
        (None, StatusCode::METHOD_NOT_ALLOWED) => "method not allowed on this path".to_string(),
        (None, _) => govbus_http::answer::status_line(status),
        (Some(text), _) => text,
    };
    (status, Json(json!({"error": error, "errors": []}))).into_response()
}

/// Serves the ingest API on `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    publisher: Arc<Publisher>,
) -> std::io::Result<()> {
    govbus_http::serve(listener, router(publisher), None).await
}

/// A 404 for a dataset this ingest does not publish, counted under
/// `dataset="unknown"` (a label value per invented path would grow the
/// metrics without bound).
fn unknown_dataset(p: &Publisher, dataset: &str) -> Option<Response> {
    (!p.publishes(dataset)).then(|| {
        reject(
            StatusCode::NOT_FOUND,
            "unknown",
            "unknown_dataset",
            format!(
                "dataset {dataset:?} is not published here (GET /v1/datasets lists those that are)"
            ),
            vec![],
        )
    })
}

async fn datasets(State(p): State<Arc<Publisher>>) -> Response {
    let lookups: Vec<Value> = p
        .lookups()
        .into_iter()
        .map(|(dataset, rows)| json!({"dataset": dataset, "rows": rows}))
        .collect();
    Json(json!({ "datasets": p.datasets(), "lookups": lookups })).into_response()
}

fn reject(
    status: StatusCode,
    dataset: &str,
    reason: &'static str,
    error: String,
    errors: Vec<FieldError>,
) -> Response {
    govbus_core::InternalEvent::emit(crate::events::IngestRejected {
        dataset,
        reason,
        error: &error,
    });
    (status, Json(json!({"error": error, "errors": errors}))).into_response()
}

type Problem = (StatusCode, String, Vec<FieldError>);

fn parse_json(body: &[u8]) -> Result<Value, Problem> {
    serde_json::from_slice(body).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            format!("malformed JSON: {e}"),
            vec![],
        )
    })
}

fn unprocessable(errors: Vec<FieldError>) -> Problem {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        "the change is not valid".to_string(),
        errors,
    )
}

/// Reads one change object; field paths start with `prefix`.
pub fn parse_change(v: &Value, prefix: &str) -> Result<ChangeRequest, Vec<FieldError>> {
    let field = |f: &str, p: &str| FieldError {
        field: format!("{prefix}{f}"),
        problem: p.into(),
    };
    let Some(obj) = v.as_object() else {
        let here = if prefix.is_empty() {
            "$".to_string()
        } else {
            prefix.trim_end_matches('.').to_string()
        };
        return Err(vec![FieldError {
            field: here,
            problem: "expected an object".into(),
        }]);
    };
    let mut errors: Vec<FieldError> = obj
        .keys()
        .filter(|k| !["op", "data", "key"].contains(&k.as_str()))
        .map(|k| field(k, "is not a field of a change (op, data, key)"))
        .collect();
    let req = match obj.get("op").and_then(Value::as_str) {
        Some("upsert") => match obj.get("data") {
            Some(d) => Some(ChangeRequest::Upsert(d.clone())),
            None => {
                errors.push(field("data", "is required for an upsert"));
                None
            }
        },
        Some("delete") => match obj.get("key").and_then(Value::as_str) {
            Some(k) if !k.is_empty() => Some(ChangeRequest::Delete { key: k.to_string() }),
            _ => {
                errors.push(field("key", "a non-empty string is required for a delete"));
                None
            }
        },
        _ => {
            errors.push(field("op", "must be \"upsert\" or \"delete\""));
            None
        }
    };
    match req {
        Some(r) if errors.is_empty() => Ok(r),
        _ => Err(errors),
    }
}

/// Reads the request body into a change, naming every problem.
pub fn parse_request(body: &[u8]) -> Result<ChangeRequest, Problem> {
    parse_change(&parse_json(body)?, "").map_err(unprocessable)
}

/// Reads a batch body `{"changes": [...]}`, naming every problem.
pub fn parse_batch(body: &[u8]) -> Result<Vec<ChangeRequest>, Problem> {
    let v = parse_json(body)?;
    let Some(items) = v.get("changes").and_then(Value::as_array) else {
        return Err(unprocessable(vec![FieldError {
            field: "changes".into(),
            problem: "an array of changes is required".into(),
        }]));
    };
    let mut out = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match parse_change(item, &format!("changes[{i}].")) {
            Ok(r) => out.push(r),
            Err(e) => errors.extend(e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(unprocessable(errors))
    }
}

async fn ingest(
    State(p): State<Arc<Publisher>>,
    Path(dataset): Path<String>,
    body: Bytes,
) -> Response {
    if let Some(r) = unknown_dataset(&p, &dataset) {
        return r;
    }
    match parse_request(&body) {
        Ok(req) => store(p, dataset, vec![req], false).await,
        Err(problem) => refuse(&dataset, problem),
    }
}

async fn ingest_batch(
    State(p): State<Arc<Publisher>>,
    Path(dataset): Path<String>,
    body: Bytes,
) -> Response {
    if let Some(r) = unknown_dataset(&p, &dataset) {
        return r;
    }
    match parse_batch(&body) {
        Ok(reqs) => store(p, dataset, reqs, true).await,
        Err(problem) => refuse(&dataset, problem),
    }
}

fn refuse(dataset: &str, (status, error, errors): Problem) -> Response {
    let reason = if status == StatusCode::BAD_REQUEST {
        "malformed"
    } else {
        "invalid"
    };
    reject(status, dataset, reason, error, errors)
}

/// What refused a change, in one line: the dataset's schema, the
/// contract's rules by name, the code checks by field (`rule codes`), in
/// that order; each named once.
pub fn headline(errors: &[FieldError]) -> String {
    let (mut schema, mut rules, mut codes) = (false, Vec::new(), Vec::new());
    for e in errors {
        match crate::publisher::rule_of(e) {
            Some("codes") => {
                // `changes[3].data.permanent_address.commune_code` → the field.
                let field = e
                    .field
                    .rsplit_once(".data.")
                    .map_or(e.field.as_str(), |(_, f)| f);
                if !codes.contains(&field) {
                    codes.push(field);
                }
            }
            Some(rule) => {
                if !rules.contains(&rule) {
                    rules.push(rule);
                }
            }
            None => schema = true,
        }
    }
    let mut by = Vec::new();
    if schema {
        by.push("the dataset's schema".to_string());
    }
    match rules.as_slice() {
        [] => {}
        [one] => by.push(format!("the rule {one}")),
        many => by.push(format!("the rules {}", many.join(", "))),
    }
    match codes.as_slice() {
        [] => {}
        [one] => by.push(format!("the code check of {one}")),
        many => by.push(format!("the code checks of {}", many.join(", "))),
    }
    if by.is_empty() {
        return "the change is not valid".into();
    }
    format!("refused by {}", by.join(" and "))
}

async fn store(
    p: Arc<Publisher>,
    dataset: String,
    reqs: Vec<ChangeRequest>,
    batch: bool,
) -> Response {
    let ds = dataset.clone();
    let n = reqs.len() as u64;
    let res = tokio::task::spawn_blocking(move || {
        if batch {
            p.submit_batch(&ds, reqs).map(|v| json!({ "accepted": v }))
        } else {
            match reqs.into_iter().next() {
                Some(req) => p.submit(&ds, req).map(|a| json!(a)),
                None => Err(SubmitError::Invalid(vec![FieldError {
                    field: "$".into(),
                    problem: "no change in the request".into(),
                }])),
            }
        }
    })
    .await;
    match res {
        Ok(Ok(body)) => {
            metrics::counter!("govbus_ingest_accepted_total", "dataset" => dataset).increment(n);
            (StatusCode::ACCEPTED, Json(body)).into_response()
        }
        Ok(Err(e)) => {
            let msg = e.to_string();
            match e {
                SubmitError::Invalid(errors) => reject(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &dataset,
                    "schema",
                    headline(&errors),
                    errors,
                ),
                SubmitError::UnknownDataset(_) => reject(
                    StatusCode::NOT_FOUND,
                    "unknown",
                    "unknown_dataset",
                    msg,
                    vec![],
                ),
                SubmitError::UnknownEntity { .. } => reject(
                    StatusCode::NOT_FOUND,
                    &dataset,
                    "unknown_entity",
                    msg,
                    vec![],
                ),
                SubmitError::Superseded { .. } => {
                    reject(StatusCode::CONFLICT, &dataset, "superseded", msg, vec![])
                }
                SubmitError::Store(_) => {
                    tracing::error!(error = %msg, "store unavailable");
                    reject(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &dataset,
                        "store",
                        msg,
                        vec![],
                    )
                }
                SubmitError::Encode(_) | SubmitError::StoredState { .. } => {
                    tracing::error!(error = %msg, "cannot encode");
                    reject(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &dataset,
                        "encode",
                        msg,
                        vec![],
                    )
                }
            }
        }
        Err(e) => reject(
            StatusCode::INTERNAL_SERVER_ERROR,
            &dataset,
            "internal",
            format!("ingest task failed: {e}"),
            vec![],
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_json_is_400_and_says_where() {
        let (s, msg, _) = parse_request(b"{\"op\": ").unwrap_err();
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(msg.contains("line 1"), "{msg}");
    }

    #[test]
    fn every_envelope_problem_is_named() {
        let (s, _, errs) = parse_request(br#"{"op":"merge","extra":1}"#).unwrap_err();
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["extra", "op"]);
        let (_, _, errs) =
            parse_batch(br#"{"changes":[{"op":"delete","key":"1"},{"op":"x"}]}"#).unwrap_err();
        assert_eq!(errs[0].field, "changes[1].op");
        let (_, _, errs) = parse_request(br#"{"op":"delete"}"#).unwrap_err();
        assert_eq!(errs[0].field, "key");
    }

    #[test]
    fn the_headline_says_what_refused_the_change() {
        let e = |field: &str, problem: &str| FieldError {
            field: field.into(),
            problem: problem.into(),
        };
        assert_eq!(
            headline(&[e("status", "\"ACTIV\" is not a symbol of the enum")]),
            "refused by the dataset's schema"
        );
        assert_eq!(
            headline(&[
                e(
                    "citizen_id",
                    "rule citizen_id_is_12_digits: a citizen id is 12 digits"
                ),
                e(
                    "full_name",
                    "rule full_name_not_blank: the full name is not blank"
                ),
            ]),
            "refused by the rules citizen_id_is_12_digits, full_name_not_blank"
        );
        assert_eq!(
            headline(&[
                e("changes[0].data.permanent_address.commune_code", "rule codes: code 99999 is not a unit"),
                e("changes[1].data.permanent_address.commune_code", "rule codes: code 99998 is not a unit"),
                e("changes[1].data.full_name", "rule full_name_not_blank: blank"),
            ]),
            "refused by the rule full_name_not_blank and the code check of permanent_address.commune_code"
        );
    }

    #[test]
    fn good_requests_parse() {
        assert_eq!(
            parse_request(br#"{"op":"delete","key":"1"}"#).unwrap(),
            ChangeRequest::Delete { key: "1".into() }
        );
        assert!(matches!(
            parse_request(br#"{"op":"upsert","data":{}}"#).unwrap(),
            ChangeRequest::Upsert(_)
        ));
    }
}
