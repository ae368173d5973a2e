//! A request body limit that still lets the client read its answer.
//!
//! axum's `DefaultBodyLimit` answers 413 as soon as it sees a body over the
//! limit, without reading the rest, and hyper then closes the connection
//! with unread bytes in it. A client that writes the whole body before it
//! reads (curl without `Expect`, ureq, most scripts) gets a broken pipe or a
//! reset instead of the 413 and its reason. [`limit`] reads the body up to
//! the limit, and past it reads and drops the rest (up to a drain cap)
//! before it answers, so the client sees the refusal.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;

/// How much a body may hold, and how much of a larger one is read and
/// dropped before the refusal (past that, the connection is closed unread).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit {
    /// The largest body a handler receives.
    pub max: usize,
    /// The most bytes read in all from a body over `max`.
    pub drain: usize,
}

impl BodyLimit {
    /// A limit of `max` bytes that drains up to four times as much, and
    /// at least 64 MiB.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            drain: max.saturating_mul(4).max(64 << 20),
        }
    }
}

/// The outcome of reading a body against a limit.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// The whole body, within the limit.
    Whole(Bytes),
    /// Over the limit; `drained` bytes were read in all.
    TooLarge { drained: usize },
    /// The client's body failed (it went away, or sent a broken chunk).
    Broken(String),
}

/// Reads `body` against `limit`.
pub async fn read(body: Body, limit: BodyLimit) -> Read {
    let mut body = body;
    let mut kept: Vec<u8> = Vec::new();
    let mut total = 0usize;
    loop {
        match body.frame().await {
            None => break,
            Some(Err(e)) => return Read::Broken(e.to_string()),
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue; // trailers
                };
                total = total.saturating_add(data.len());
                if total <= limit.max {
                    kept.extend_from_slice(&data);
                } else {
                    kept = Vec::new();
                    if total >= limit.drain {
                        break;
                    }
                }
            }
        }
    }
    if total > limit.max {
        Read::TooLarge { drained: total }
    } else {
        Read::Whole(Bytes::from(kept))
    }
}

/// Middleware (`axum::middleware::from_fn_with_state(limit, limit)`): hands
/// the handler the whole body when it fits, and answers 413 with a reason
/// after draining it when it does not.
pub async fn limit(State(limit): State<BodyLimit>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match read(body, limit).await {
        Read::Whole(bytes) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Read::TooLarge { drained } => {
            let size = declared.map_or_else(
                || format!("more than {drained} bytes"),
                |n| format!("{n} bytes"),
            );
            tracing::warn!(path = %parts.uri.path(), size = %size, max = limit.max, "a request body over the limit was refused");
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "length limit exceeded: the body is {size}, the limit is {} bytes",
                    limit.max
                ),
            )
                .into_response()
        }
        Read::Broken(e) => (
            StatusCode::BAD_REQUEST,
            format!("the request body could not be read: {e}"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<F: std::future::Future>(f: F) -> F::Output {
        futures_executor::block_on(f)
    }

    #[test]
    fn a_body_within_the_limit_is_kept_whole() {
        let got = run(read(Body::from("hello"), BodyLimit::new(5)));
        assert_eq!(got, Read::Whole(Bytes::from("hello")));
    }

    #[test]
    fn a_body_over_the_limit_is_read_to_its_end_and_refused() {
        let got = run(read(Body::from("x".repeat(12)), BodyLimit::new(5)));
        assert_eq!(got, Read::TooLarge { drained: 12 });
    }

    #[test]
    fn draining_stops_at_the_cap() {
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            (0..100).map(|_| Ok(Bytes::from("0123456789"))).collect();
        let body = Body::from_stream(futures_util::stream::iter(chunks));
        let got = run(read(body, BodyLimit { max: 5, drain: 35 }));
        assert_eq!(got, Read::TooLarge { drained: 40 });
    }
}
