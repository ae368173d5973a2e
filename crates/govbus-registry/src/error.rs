//! Registry errors with Confluent's HTTP status and `error_code`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An error the registry answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 404 / 40401.
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    /// 404 / 40402.
    #[error("Version {0} not found.")]
    VersionNotFound(String),
    /// 404 / 40403.
    #[error("Schema {0} not found")]
    SchemaNotFound(String),
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
    /// 400 / 400: body is not the expected JSON.
    #[error("Unrecognized request body: {0}")]
    BadRequest(String),
    /// 500 / 50001: the Kafka store failed.
    #[error("Error while registering schema in the backend Kafka store: {0}")]
    Store(String),
    /// 500 / 50002: timed out waiting for the Kafka store.
    #[error("Timed out waiting for the backend Kafka store: {0}")]
    Timeout(String),
}

impl ApiError {
    /// (HTTP status, Confluent error code).
    pub fn codes(&self) -> (StatusCode, u32) {
        match self {
            ApiError::SubjectNotFound(_) => (StatusCode::NOT_FOUND, 40401),
            ApiError::VersionNotFound(_) => (StatusCode::NOT_FOUND, 40402),
            ApiError::SchemaNotFound(_) => (StatusCode::NOT_FOUND, 40403),
            ApiError::Incompatible { .. } => (StatusCode::CONFLICT, 409),
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
        (
            status,
            [("content-type", crate::http::CONTENT_TYPE)],
            body.to_string(),
        )
            .into_response()
    }
}
