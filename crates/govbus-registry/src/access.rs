//! Who may call the registry: every request needs an authenticated
//! principal (when `[registry.auth]` is set), and a change to a subject
//! (a new version, a deletion, its compatibility level or mode) is allowed
//! only to the agency that writes the subject's topic, or to an admin.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use govbus_http::{Credentials, Principal};

/// Who may change which subject.
pub trait SubjectPolicy: Send + Sync + std::fmt::Debug {
    /// Whether `principal` may change `subject`.
    fn may_write(&self, principal: &str, subject: &str) -> bool;
}

/// The registry's credentials and subject policy.
#[derive(Debug, Clone)]
pub struct Access {
    /// Known tokens and admins.
    pub credentials: Arc<Credentials>,
    /// Who may change which subject (none: any authenticated principal).
    pub policy: Option<Arc<dyn SubjectPolicy>>,
}

/// Whether the caller is the registry's operator: an admin under
/// `[auth]`; without it, whoever calls when `[registry] import` is set.
/// Only the operator may set IMPORT mode or choose a schema's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operator(pub bool);

/// The subject a request changes (`Some(None)`: a global setting), or
/// None for a read. A lookup (`POST /subjects/{s}`) and a compatibility
/// test (`POST /compatibility/…`) read.
pub fn changes(method: &Method, path: &str) -> Option<Option<String>> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let subject = |s: &str| Some(Some(govbus_http::percent_decode(s)));
    match (method.as_str(), parts.as_slice()) {
        ("POST", ["subjects", s, "versions"]) => subject(s),
        ("DELETE", ["subjects", s, ..]) => subject(s),
        ("PUT" | "DELETE", ["config" | "mode", s]) => subject(s),
        ("PUT" | "DELETE", ["config" | "mode"]) => Some(None),
        _ => None,
    }
}

/// Middleware (after authentication): refuses, with 403 and a reason, a
/// change to a subject the principal does not own.
pub async fn authorize(State(access): State<Access>, mut req: Request, next: Next) -> Response {
    let admin = req
        .extensions()
        .get::<Principal>()
        .is_some_and(|p| access.credentials.is_admin(&p.0));
    req.extensions_mut().insert(Operator(admin));
    let Some(target) = changes(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    let who = req
        .extensions()
        .get::<Principal>()
        .map(|p| p.0.clone())
        .unwrap_or_default();
    if access.credentials.is_admin(&who) {
        return next.run(req).await;
    }
    let allowed = match (&target, &access.policy) {
        (_, None) => true,
        (Some(subject), Some(p)) => p.may_write(&who, subject),
        (None, Some(_)) => false,
    };
    if allowed {
        return next.run(req).await;
    }
    let what = match &target {
        Some(s) => format!(
            "subject {s}: only the agency that writes its topic may change it (`govbus acl plan` lists who writes what), or an admin"
        ),
        None => "the registry's global settings: only an admin may".to_string(),
    };
    tracing::warn!(principal = who, path = %req.uri().path(), "registry change refused: not the subject's owner");
    (
        StatusCode::FORBIDDEN,
        format!("{who} may not change {what}"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_told_from_reads() {
        let post = Method::POST;
        assert_eq!(
            changes(&post, "/subjects/gov.bca.residents.v1-value/versions"),
            Some(Some("gov.bca.residents.v1-value".into()))
        );
        assert_eq!(changes(&post, "/subjects/x-value"), None, "a lookup reads");
        assert_eq!(
            changes(&post, "/compatibility/subjects/x/versions/latest"),
            None
        );
        assert_eq!(changes(&Method::GET, "/subjects/x/versions"), None);
        assert_eq!(
            changes(&Method::DELETE, "/subjects/a%2Eb/versions/1"),
            Some(Some("a.b".into()))
        );
        assert_eq!(changes(&Method::PUT, "/config"), Some(None));
        assert_eq!(changes(&Method::PUT, "/mode/x"), Some(Some("x".into())));
    }
}
