//! Registry errors with Confluent's HTTP status and `error_code`.

use axum::http::StatusCode;

use axum::response::{IntoResponse, Response};

/// Confluent's content type, on every answer.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// An error the registry answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 403 / 40301: only the operator may.
    #[error("{0}")]
    Forbidden(String),
    /// 404 / 40401.
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    /// 404 / 40402.
    #[error("Version {0} not found.")]
    VersionNotFound(String),
    /// 404 / 40403.
    #[error("Schema {0} not found")]
    SchemaNotFound(String),
    /// 404 / 40404.
    #[error("Subject '{0}' was soft deleted.Set permanent=true to delete permanently")]
    SubjectSoftDeleted(String),
    /// 404 / 40405.
    #[error("Subject '{0}' was not deleted first before being permanently deleted")]
    SubjectNotSoftDeleted(String),
    /// 404 / 40406.
    #[error("Subject '{0}' Version {1} was soft deleted.Set permanent=true to delete permanently")]
    VersionSoftDeleted(String, u32),
    /// 404 / 40407.
    #[error("Subject '{0}' Version {1} was not deleted first before being permanently deleted")]
    VersionNotSoftDeleted(String, u32),
    /// 404 / 40408.
    #[error("Subject '{0}' does not have subject-level compatibility configured")]
    SubjectConfigNotFound(String),
    /// 404 / 40409.
    #[error("Subject '{0}' does not have subject-level mode configured")]
    SubjectModeNotFound(String),
    /// 409 / 409.
    #[error("Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: [{}]", reasons.join("; "))]
    Incompatible {
        /// The subject.
        subject: String,
        /// Why.
        reasons: Vec<String>,
    },
    /// 422 / 42201.
    #[error("Invalid schema: {0}")]
    InvalidSchema(String),
    /// 422 / 42202.
    #[error("The specified version '{0}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\"")]
    InvalidVersion(String),
    /// 422 / 42203.
    #[error("Invalid compatibility level. Valid values are none, backward, forward, full, backward_transitive, forward_transitive, and full_transitive: {0}")]
    InvalidCompatibility(String),
    /// 422 / 42204.
    #[error("Invalid mode. Valid values are READWRITE, READONLY, IMPORT: {0}")]
    InvalidMode(String),
    /// 422 / 42205.
    #[error("{0}")]
    NotPermitted(String),
    /// 422 / 42206.
    #[error("One or more references exist to the schema {{subject={0}, version={1}}}")]
    ReferenceExists(String, u32),
    /// 422 / 42207.
    #[error("{0}")]
    IdMismatch(String),
    /// 422 / 42208.
    #[error("The specified subject '{0}' is not a valid: {1}")]
    InvalidSubject(String, &'static str),
    /// 422 / 42209.
    #[error("Schema too large: {0} bytes, at most {1}")]
    TooLarge(usize, usize),
    /// 400 / 400: body is not the expected JSON.
    #[error("Unrecognized request body: {0}")]
    BadRequest(String),
    /// 500 / 50001: the Kafka store failed.
    #[error("Error while registering schema in the backend Kafka store: {0}")]
    Store(#[source] StoreFailure),
    /// 500 / 50002: timed out waiting for the Kafka store.
    #[error("Timed out waiting for the backend Kafka store: {0}")]
    Timeout(String),
}

/// Why the Kafka store could not take a write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreFailure {
    /// Kafka refused or could not be reached.
    #[error("{0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Other instances kept claiming the same id or version first.
    #[error("gave up after {0} conflicting concurrent registrations")]
    Contended(u32),
    /// A registration was planned as something else (a bug).
    #[error("planned a non-schema record")]
    Misplanned,
}

impl ApiError {
    /// (HTTP status, Confluent error code).
    pub fn codes(&self) -> (StatusCode, u32) {
        match self {
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, 40301),
            ApiError::SubjectNotFound(_) => (StatusCode::NOT_FOUND, 40401),
            ApiError::VersionNotFound(_) => (StatusCode::NOT_FOUND, 40402),
            ApiError::SchemaNotFound(_) => (StatusCode::NOT_FOUND, 40403),
            ApiError::SubjectSoftDeleted(_) => (StatusCode::NOT_FOUND, 40404),
            ApiError::SubjectNotSoftDeleted(_) => (StatusCode::NOT_FOUND, 40405),
            ApiError::VersionSoftDeleted(..) => (StatusCode::NOT_FOUND, 40406),
            ApiError::VersionNotSoftDeleted(..) => (StatusCode::NOT_FOUND, 40407),
            ApiError::SubjectConfigNotFound(_) => (StatusCode::NOT_FOUND, 40408),
            ApiError::SubjectModeNotFound(_) => (StatusCode::NOT_FOUND, 40409),
            ApiError::Incompatible { .. } => (StatusCode::CONFLICT, 409),
            ApiError::InvalidMode(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42204),
            ApiError::NotPermitted(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42205),
            ApiError::ReferenceExists(..) => (StatusCode::UNPROCESSABLE_ENTITY, 42206),
            ApiError::IdMismatch(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42207),
            ApiError::InvalidSubject(..) => (StatusCode::UNPROCESSABLE_ENTITY, 42208),
            ApiError::TooLarge(..) => (StatusCode::UNPROCESSABLE_ENTITY, 42209),
            ApiError::InvalidSchema(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42201),
            ApiError::InvalidVersion(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42202),
            ApiError::InvalidCompatibility(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42203),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, 400),
            ApiError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, 50001),
            ApiError::Timeout(_) => (StatusCode::INTERNAL_SERVER_ERROR, 50002),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.codes();
        let body = serde_json::json!({"error_code": code, "message": self.to_string()});
        (status, [("content-type", CONTENT_TYPE)], body.to_string()).into_response()
    }
}
