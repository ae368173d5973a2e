//! axum's own error answers (an unknown path, a wrong method, a body over
//! the limit, a query it cannot parse) are plain text or empty; each API
//! gives them its own JSON shape through [`plain_error`].

use axum::http::StatusCode;
use axum::response::Response;

/// A plain-text error answer's status and text (None when empty), or the
/// answer itself, untouched, when it is a success or already JSON.
pub async fn plain_error(r: Response) -> Result<(StatusCode, Option<String>), Response> {
    let status = r.status();
    let is_json = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return Err(r);
    }
    let text = axum::body::to_bytes(r.into_body(), 64 << 10)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    Ok((status, (!text.is_empty()).then_some(text)))
}

/// `HTTP 404 Not Found`: the words for an answer that had none.
pub fn status_line(status: StatusCode) -> String {
    format!(
        "HTTP {} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
}
