//! HTTPS for govbus's HTTP APIs (the registry, ingest) and their clients:
//! TLS from OpenSSL (the library librdkafka uses too), and agencies'
//! credentials as tokens, sent as HTTP Basic (`user:token`, what
//! Confluent's schema-registry clients send) or as a Bearer token (what
//! REST integrators send). Every govbus HTTP server is served here
//! ([`serve_with`]: timeouts and a connection cap), and request bodies are
//! read within a limit ([`body`]).

pub mod answer;
pub mod body;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use openssl::ssl::{SslAcceptor, SslFiletype, SslMethod};
use serde::{Deserialize, Serialize};

use govbus_core::secret::Secret;

/// What can go wrong setting HTTPS up.
#[derive(Debug, thiserror::Error)]
pub enum HttpsError {
    /// A certificate, key or CA file is unusable.
    #[error("TLS: {what} {path}: {reason}")]
    Tls {
        /// What the file is.
        what: &'static str,
        /// The file.
        path: String,
        /// OpenSSL's words.
        reason: String,
    },
    /// The credentials file is unreadable or malformed.
    #[error("credentials file {path}: {reason}")]
    Credentials {
        /// The file.
        path: String,
        /// What is wrong (line numbers, never a secret).
        reason: String,
    },
}

fn tls_err(
    what: &'static str,
    path: &Path,
) -> impl FnOnce(openssl::error::ErrorStack) -> HttpsError {
    let path = path.display().to_string();
    move |e| HttpsError::Tls {
        what,
        path,
        reason: e.to_string(),
    }
}

/// `[…tls]` of a server: its certificate chain and key (PEM).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// The certificate (and its chain), PEM.
    pub certificate: PathBuf,
    /// Its private key, PEM, unencrypted (readable by the agent only).
    pub key: PathBuf,
}

impl ServerTls {
    /// An acceptor (Mozilla's intermediate profile: TLS 1.2 and 1.3).
    pub fn acceptor(&self) -> Result<Arc<SslAcceptor>, HttpsError> {
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls())
            .map_err(tls_err("setting up", &self.certificate))?;
        b.set_certificate_chain_file(&self.certificate)
            .map_err(tls_err("certificate", &self.certificate))?;
        b.set_private_key_file(&self.key, SslFiletype::PEM)
            .map_err(tls_err("key", &self.key))?;
        b.check_private_key()
            .map_err(tls_err("key (does not match the certificate)", &self.key))?;
        Ok(Arc::new(b.build()))
    }
}

/// What one client may hold of a server: every govbus HTTP server
/// (ingest, registry, dashboard, metrics) is served with these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// Connections served at once; past that, new ones wait in the
    /// listener's backlog.
    pub max_connections: usize,
    /// Time to finish the TLS handshake.
    pub handshake: std::time::Duration,
    /// Time to send a request's headers (and the wait for the next
    /// request on a kept-alive connection).
    pub header_read: std::time::Duration,
    /// Time for a whole request, its body read and its answer written
    /// (408 past it).
    pub request: std::time::Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            handshake: std::time::Duration::from_secs(10),
            header_read: std::time::Duration::from_secs(10),
            request: std::time::Duration::from_secs(60),
        }
    }
}

/// Serves `app` on `listener` with the default [`ServeLimits`]: plain
/// HTTP, or HTTPS with `tls`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    tls: Option<Arc<SslAcceptor>>,
) -> std::io::Result<()> {
    serve_with(listener, app, tls, ServeLimits::default()).await
}

/// Serves `app` on `listener`: plain HTTP, or HTTPS with `tls`, holding
/// `limits`. A client that fails or stalls the TLS handshake, or sends its
/// headers too slowly, is logged and dropped; a request that takes longer
/// than its limit is answered 408; others are served.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    tls: Option<Arc<SslAcceptor>>,
    limits: ServeLimits,
) -> std::io::Result<()> {
    let request_limit = limits.request;
    let app = app.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| async move {
            match tokio::time::timeout(request_limit, next.run(req)).await {
                Ok(r) => r,
                Err(_) => (
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the request took longer than {} s (its body sent too slowly?)",
                        request_limit.as_secs()
                    ),
                )
                    .into_response(),
            }
        },
    ));
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return Ok(());
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        if permits.available_permits() == 0 {
            tracing::warn!(
                max = limits.max_connections,
                "connection cap reached: new connections wait"
            );
        }
        let acceptor = tls.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match acceptor {
                None => serve_connection(tcp, peer, app, limits).await,
                Some(acceptor) => {
                    let ssl = match openssl::ssl::Ssl::new(acceptor.context()) {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(error = %e, "TLS session setup failed");
                            return;
                        }
                    };
                    let mut stream = match tokio_openssl::SslStream::new(ssl, tcp) {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(error = %e, "TLS session setup failed");
                            return;
                        }
                    };
                    let handshake = std::pin::Pin::new(&mut stream).accept();
                    match tokio::time::timeout(limits.handshake, handshake).await {
                        Ok(Ok(())) => serve_connection(stream, peer, app, limits).await,
                        Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::info!(
                            %peer,
                            secs = limits.handshake.as_secs(),
                            "TLS handshake not finished in time; connection dropped"
                        ),
                    }
                }
            }
        });
    }
}

/// Serves HTTP/1.1 on one connection, dropping it when a request's
/// headers take longer than `limits.header_read`.
async fn serve_connection<S>(
    stream: S,
    peer: std::net::SocketAddr,
    app: axum::Router,
    limits: ServeLimits,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(app);
    // HTTP/1.1 only: its header timer runs from the moment the connection
    // is served, so a connection that sends nothing is dropped as well.
    let mut conn = hyper::server::conn::http1::Builder::new();
    conn.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read);
    if let Err(e) = conn
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .with_upgrades()
        .await
    {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// `s` with its `%XX` escapes decoded (a URL's path segment or query
/// value); a malformed escape is kept as it is.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `[…auth]` of a server: who may call it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HttpAuth {
    /// A file of `<principal> sha256:<hex>` lines, one per token (`#`
    /// comments); `govbus token new NAME` prints a token and its line.
    /// Only hashes are stored: the file reveals no token.
    pub credentials: PathBuf,
    /// Principals allowed everything (operators).
    #[serde(default)]
    pub admins: Vec<String>,
}

/// The principal a request authenticated as (a request extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal(pub String);

/// Known tokens, by their SHA-256.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    by_hash: HashMap<[u8; 32], String>,
    admins: Vec<String>,
}

/// The line a credentials file holds for `principal`'s `token`.
pub fn credential_line(principal: &str, token: &str) -> String {
    format!(
        "{principal} sha256:{}",
        hex(&openssl::sha::sha256(token.as_bytes()))
    )
}

/// A new random token: 32 random bytes, as 64 hex digits.
pub fn new_token() -> Result<String, HttpsError> {
    let mut buf = [0u8; 32];
    openssl::rand::rand_bytes(&mut buf).map_err(|e| HttpsError::Tls {
        what: "random bytes",
        path: String::new(),
        reason: e.to_string(),
    })?;
    Ok(hex(&buf))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization` header.
    Missing,
    /// A header govbus cannot read.
    Malformed(&'static str),
    /// An unknown token, or a Basic user that is not the token's.
    Unknown,
}

impl std::fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing => f.write_str(
                "authentication required: send `Authorization: Bearer <token>` or HTTP Basic `<agency>:<token>`",
            ),
            Self::Malformed(why) => write!(f, "unreadable Authorization header: {why}"),
            Self::Unknown => f.write_str("unknown credentials"),
        }
    }
}

impl Credentials {
    /// Reads `auth.credentials`.
    pub fn load(auth: &HttpAuth) -> Result<Self, HttpsError> {
        let path = auth.credentials.display().to_string();
        let text =
            std::fs::read_to_string(&auth.credentials).map_err(|e| HttpsError::Credentials {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let mut by_hash = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parsed = line
                .split_once(char::is_whitespace)
                .and_then(|(who, h)| Some((who, unhex(h.trim().strip_prefix("sha256:")?)?)));
            let Some((who, hash)) = parsed else {
                return Err(HttpsError::Credentials {
                    path,
                    reason: format!(
                        "line {}: expected `<principal> sha256:<64 hex digits>`",
                        n + 1
                    ),
                });
            };
            by_hash.insert(hash, who.to_string());
        }
        Ok(Self {
            by_hash,
            admins: auth.admins.clone(),
        })
    }

    /// Whether `principal` is an admin.
    pub fn is_admin(&self, principal: &str) -> bool {
        self.admins.iter().any(|a| a == principal)
    }

    /// The principal `headers` authenticate as.
    pub fn principal(&self, headers: &HeaderMap) -> Result<String, AuthFailure> {
        use base64::Engine;
        let Some(v) = headers.get("authorization") else {
            return Err(AuthFailure::Missing);
        };
        let v = v
            .to_str()
            .map_err(|_| AuthFailure::Malformed("not ASCII"))?;
        let (scheme, rest) = v
            .split_once(' ')
            .ok_or(AuthFailure::Malformed("no scheme"))?;
        let (user, token) = if scheme.eq_ignore_ascii_case("bearer") {
            (None, rest.trim().to_string())
        } else if scheme.eq_ignore_ascii_case("basic") {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(rest.trim())
                .map_err(|_| AuthFailure::Malformed("Basic credentials are not base64"))?;
            let text = String::from_utf8(raw).map_err(|_| AuthFailure::Malformed("not UTF-8"))?;
            let (u, t) = text.split_once(':').ok_or(AuthFailure::Malformed(
                "Basic credentials are not user:token",
            ))?;
            (Some(u.to_string()), t.to_string())
        } else {
            return Err(AuthFailure::Malformed(
                "the scheme is neither Bearer nor Basic",
            ));
        };
        let who = self
            .by_hash
            .get(&openssl::sha::sha256(token.as_bytes()))
            .ok_or(AuthFailure::Unknown)?;
        if user.as_ref().is_some_and(|u| u != who) {
            return Err(AuthFailure::Unknown);
        }
        Ok(who.clone())
    }
}

/// Middleware: lets through a request whose credentials are known (the
/// principal added as a [`Principal`] extension), refuses others with 401
/// and a plain-text reason (each API's error layer gives it its shape).
pub async fn authenticate(
    State(creds): State<Arc<Credentials>>,
    mut req: Request,
    next: Next,
) -> Response {
    match creds.principal(req.headers()) {
        Ok(p) => {
            req.extensions_mut().insert(Principal(p));
            next.run(req).await
        }
        Err(why) => {
            tracing::info!(path = %req.uri().path(), reason = %why, "request refused: not authenticated");
            (
                StatusCode::UNAUTHORIZED,
                [(
                    "www-authenticate",
                    "Bearer realm=\"govbus\", Basic realm=\"govbus\"",
                )],
                why.to_string(),
            )
                .into_response()
        }
    }
}

/// `[…registry_access]` or a webhook's: how a client reaches an HTTPS
/// server and proves who it is.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClientAccess {
    /// PEM file of the CA that signed the server's certificate (none: the
    /// system's roots). The server's host name is always verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// The agency's name, sent with its token as HTTP Basic (none: the
    /// token is sent as a Bearer token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
}

impl ClientAccess {
    /// A ureq agent verifying servers against `ca` (or the system's roots).
    pub fn agent(&self, b: ureq::AgentBuilder) -> Result<ureq::Agent, HttpsError> {
        let mut tls = native_tls::TlsConnector::builder();
        if let Some(ca) = &self.ca {
            let pem = std::fs::read(ca).map_err(|e| HttpsError::Tls {
                what: "CA",
                path: ca.display().to_string(),
                reason: e.to_string(),
            })?;
            let cert = native_tls::Certificate::from_pem(&pem).map_err(|e| HttpsError::Tls {
                what: "CA",
                path: ca.display().to_string(),
                reason: e.to_string(),
            })?;
            tls.add_root_certificate(cert);
        }
        let tls = tls.build().map_err(|e| HttpsError::Tls {
            what: "client",
            path: String::new(),
            reason: e.to_string(),
        })?;
        Ok(b.tls_connector(Arc::new(tls)).build())
    }

    /// The `Authorization` header's value, if there is a token.
    pub fn authorization(&self) -> Option<String> {
        use base64::Engine;
        let token = self.token.as_ref()?.expose();
        Some(match &self.user {
            Some(u) => format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{token}"))
            ),
            None => format!("Bearer {token}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(lines: &str) -> Credentials {
        let dir = std::env::temp_dir().join(format!("govbus-creds-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c");
        std::fs::write(&f, lines).unwrap();
        let c = Credentials::load(&HttpAuth {
            credentials: f,
            admins: vec![],
        });
        std::fs::remove_dir_all(&dir).unwrap();
        c.unwrap()
    }

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", v.parse().unwrap());
        h
    }

    #[test]
    fn tokens_authenticate_as_bearer_or_basic_and_nothing_else_does() {
        use base64::Engine;
        let c = creds(&format!(
            "# ministries\n{}\n",
            credential_line("bca", "tok-bca")
        ));
        assert_eq!(c.principal(&headers("Bearer tok-bca")), Ok("bca".into()));
        let basic = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        assert_eq!(
            c.principal(&headers(&basic("bca:tok-bca"))),
            Ok("bca".into())
        );
        // Another agency's name with bca's token, a wrong token, nothing.
        assert_eq!(
            c.principal(&headers(&basic("moha:tok-bca"))),
            Err(AuthFailure::Unknown)
        );
        assert_eq!(
            c.principal(&headers("Bearer nope")),
            Err(AuthFailure::Unknown)
        );
        assert_eq!(c.principal(&HeaderMap::new()), Err(AuthFailure::Missing));
        assert!(matches!(
            c.principal(&headers("Digest x")),
            Err(AuthFailure::Malformed(_))
        ));
    }

    #[test]
    fn a_malformed_credentials_line_is_named_without_its_content() {
        let dir = std::env::temp_dir().join(format!("govbus-creds-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c");
        std::fs::write(&f, "bca plaintext-secret\n").unwrap();
        let e = Credentials::load(&HttpAuth {
            credentials: f,
            admins: vec![],
        })
        .unwrap_err()
        .to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            e.contains("line 1") && !e.contains("plaintext-secret"),
            "{e}"
        );
    }
}

#[cfg(test)]
mod fuzz_tests {
    #[test]
    fn fuzz_percent_decoding_never_panics() {
        let seeds = vec![
            b"a%2Eb".to_vec(),
            b"%".to_vec(),
            "%e1%BA%A1%zz%4".as_bytes().to_vec(),
        ];
        govbus_core::fuzz::run("percent_decode", &seeds, 50_000, |d| {
            let s = String::from_utf8_lossy(d);
            let _ = crate::percent_decode(&s);
        });
    }

    #[test]
    fn fuzz_authorization_headers_never_panic() {
        let file = std::env::temp_dir().join(format!("govbus-fuzz-creds-{}", std::process::id()));
        std::fs::write(&file, crate::credential_line("p52", "s3cr3t-token-of-p52")).unwrap();
        let creds = crate::Credentials::load(&crate::HttpAuth {
            credentials: file.clone(),
            admins: vec![],
        })
        .unwrap();
        let _ = std::fs::remove_file(&file);
        let seeds = vec![
            b"Bearer s3cr3t-token-of-p52".to_vec(),
            b"Basic cDUyOnMzY3IzdC10b2tlbi1vZi1wNTI=".to_vec(),
            b"Basic ===".to_vec(),
            b"Bearer".to_vec(),
        ];
        govbus_core::fuzz::run("authorization", &seeds, 50_000, |d| {
            let mut h = axum::http::HeaderMap::new();
            if let Ok(v) = axum::http::HeaderValue::from_bytes(d) {
                h.insert(axum::http::header::AUTHORIZATION, v);
            }
            let _ = creds.principal(&h);
        });
    }
}
