//! An agent's operations endpoint (`metrics_listen`): `/metrics`
//! (Prometheus), `/healthz` (the process is alive) and `/readyz` (ready to
//! do its work, or 503 with the reason). Every error is a JSON body.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use govbus_core::health::Readiness;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

/// Installs the metrics recorder and, when `addr` is set, serves the
/// endpoint there, answering `/readyz` from `ready`.
pub(crate) async fn serve(addr: Option<SocketAddr>, ready: Arc<Readiness>) -> anyhow::Result<()> {
    let Some(addr) = addr else {
        return Ok(());
    };
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("serving metrics and health on {addr}"))?;
    let app = router(handle, ready);
    tokio::spawn(async move {
        if let Err(e) = govbus_http::serve(listener, app, None).await {
            tracing::error!(error = %e, "the metrics and health endpoint stopped");
        }
    });
    tracing::info!(%addr, "metrics on /metrics, health on /healthz and /readyz");
    Ok(())
}

/// Probes the schema registry an agent depends on every 5 s:
/// `govbus_registry_reachable` is 1 while `GET /subjects` answers 200 and
/// 0 otherwise (alerted on in deploy/prometheus).
pub(crate) fn watch_registry(
    url: &str,
    access: Option<&govbus_http::ClientAccess>,
) -> anyhow::Result<()> {
    let probe = format!("{}/subjects", url.trim_end_matches('/'));
    let builder = ureq::AgentBuilder::new().timeout(std::time::Duration::from_secs(3));
    let agent = match access {
        Some(a) => a.agent(builder)?,
        None => builder.build(),
    };
    let authorization = access.and_then(|a| a.authorization());
    let spawned = std::thread::Builder::new()
        .name("registry-probe".into())
        .spawn(move || {
            let mut was = None;
            loop {
                let mut req = agent.get(&probe);
                if let Some(a) = &authorization {
                    req = req.set("Authorization", a);
                }
                let answer = match req.call() {
                    Ok(r) if r.status() == 200 => Ok(()),
                    Ok(r) => Err(format!("answered {}", r.status())),
                    Err(ureq::Error::Status(code, _)) => Err(format!("answered {code}")),
                    Err(ureq::Error::Transport(t)) => Err(no_answer(&t)),
                };
                let up = answer.is_ok();
                metrics::gauge!("govbus_registry_reachable").set(if up { 1.0 } else { 0.0 });
                if was != Some(up) {
                    match &answer {
                        Ok(()) => tracing::info!(url = probe, "schema registry reachable"),
                        Err(e) => {
                            tracing::warn!(url = probe, error = %e, "schema registry unreachable")
                        }
                    }
                    was = Some(up);
                }
                std::thread::sleep(std::time::Duration::from_secs(5));
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the registry probe");
    }
    Ok(())
}

fn router(handle: PrometheusHandle, ready: Arc<Readiness>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(move || std::future::ready(handle.render())))
        .route(
            "/healthz",
            get(|| async { Json(json!({"status": "alive"})) }),
        )
        .route(
            "/readyz",
            get(move || {
                let r = ready.get();
                async move { readyz(r) }
            }),
        )
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such endpoint: /metrics, /healthz or /readyz",
            )
        })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed: use GET",
            )
        })
}

fn readyz(r: Result<(), String>) -> Response {
    match r {
        Ok(()) => Json(json!({"ready": true})).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": reason})),
        )
            .into_response(),
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

/// `govbus health URL`: exits 0 when `URL` answers 2xx, else prints the
/// answer and fails (a healthcheck that needs no curl in the image).
/// Why an HTTP endpoint gave no answer, once (ureq's own message repeats
/// the URL and the kind).
fn no_answer(t: &ureq::Transport) -> String {
    let why = t
        .message()
        .map(str::to_string)
        .or_else(|| std::error::Error::source(t).map(|e| e.to_string()))
        .unwrap_or_else(|| t.kind().to_string());
    format!("no answer ({why})")
}

pub(crate) fn probe(url: &str) -> anyhow::Result<()> {
    match ureq::get(url)
        .timeout(std::time::Duration::from_secs(3))
        .call()
    {
        Ok(r) => {
            println!("{}", r.into_string().unwrap_or_default());
            Ok(())
        }
        Err(ureq::Error::Status(code, r)) => {
            anyhow::bail!(
                "{url} answered {code}: {}",
                r.into_string().unwrap_or_default()
            )
        }
        Err(ureq::Error::Transport(t)) => anyhow::bail!("{url}: {}", no_answer(&t)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn readyz_says_why_not_and_every_error_is_json() {
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
            .build_recorder()
            .handle();
        let ready = Arc::new(Readiness::new());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(handle, ready.clone());
        tokio::spawn(async move { govbus_http::serve(listener, app, None).await });
        let get = move |path: &'static str| {
            tokio::task::spawn_blocking(move || {
                match ureq::get(&format!("http://{addr}{path}")).call() {
                    Ok(r) => (r.status(), r.into_string().unwrap()),
                    Err(ureq::Error::Status(c, r)) => (c, r.into_string().unwrap()),
                    Err(e) => panic!("{e}"),
                }
            })
        };
        assert_eq!(get("/healthz").await.unwrap().0, 200);
        let (code, body) = get("/readyz").await.unwrap();
        assert_eq!(
            (code, body.as_str()),
            (503, r#"{"ready":false,"reason":"starting"}"#)
        );
        ready.not_ready("catching up: 20000 records behind");
        assert!(get("/readyz").await.unwrap().1.contains("catching up"));
        ready.ready();
        assert_eq!(
            get("/readyz").await.unwrap(),
            (200, r#"{"ready":true}"#.into())
        );
        let (code, body) = get("/nope").await.unwrap();
        assert_eq!(code, 404);
        assert!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"].is_string());
    }
}
