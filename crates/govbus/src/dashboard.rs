//! `govbus dashboard`: a web page for a provincial operations centre, in
//! Vietnamese with English available. Per province it shows each report's
//! figures and charts, freshness, the backlog at each hop, the rows changed
//! last, changes per day, and the dated snapshots to download. The page
//! updates itself over server-sent events and needs nothing from outside
//! (no CDN: its script, styles and charts are in the one page).
//!
//! While a page is open (or `/state` was asked for in the last 10 s), the
//! state is read every second from each province's database (the sink),
//! its consumer's metrics endpoint (its lag, as the agent measures it) and
//! the cluster (the router's backlog on the central topic); unwatched, the
//! board reads nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use govbus_consumer::report::Report;
use govbus_consumer::Store;
use govbus_core::Topics;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::{json, Value};

use crate::config::{Agent, GovbusConfig};

const PAGE: &str = include_str!("dashboard.html");

/// Days of the changes-per-day chart.
const DAYS: u32 = 14;

/// One province the dashboard follows.
struct Province {
    subscriber: String,
    issuer: Option<govbus_core::report::Text>,
    store: Store,
    reports: Vec<Arc<Report>>,
    /// Per subscription: table, key column, central topic, view topic.
    views: Vec<(String, String, String, String)>,
    /// The consumer agent's `/metrics`, when its configuration names one.
    metrics: Option<String>,
}

/// What the page needs, gathered from every province.
struct Gatherer {
    provinces: Vec<Province>,
    client: BaseConsumer,
    router: BaseConsumer,
}

fn names() -> &'static govbus_core::admin_map::AdminMap {
    govbus_core::admin_map::reference()
}

fn today() -> chrono::NaiveDate {
    govbus_core::admin_map::day_of_ms(govbus_core::now_ms())
}

/// A unit's name today, when the code is one.
fn unit_name(code: &str) -> Option<String> {
    names().at(code, today()).map(|v| v.name.clone())
}

impl Gatherer {
    fn open(files: &[PathBuf], router_group: &str) -> anyhow::Result<Self> {
        let mut provinces = Vec::new();
        let mut kafka = None;
        for f in files {
            let cfg = GovbusConfig::load(Some(f), Some(Agent::Consumer))?;
            let c = GovbusConfig::section(&cfg.consumer, "consumer", Some(f))?.clone();
            let catalog = cfg.catalog()?;
            let topics = Topics::new(&c.topic_prefix);
            let store = c.sink.store()?;
            let reports: Vec<Arc<Report>> = catalog
                .reports_of(&c.subscriber)
                .map(|r| Report::compile(r, &catalog).map(Arc::new))
                .collect::<Result<_, _>>()?;
            let issuer = catalog
                .reports_of(&c.subscriber)
                .find_map(|r| r.file.issuer.clone());
            let views = catalog
                .subscriptions
                .iter()
                .filter(|s| s.file.subscriber == c.subscriber)
                .filter_map(|s| catalog.dataset(&s.file.dataset))
                .map(|ds| {
                    (
                        format!("{}_{}", ds.id.owner, ds.id.name),
                        ds.file.key.clone(),
                        topics.central(&ds.id, ds.file.major),
                        topics.view(&c.subscriber, &ds.id, ds.file.major),
                    )
                })
                .collect();
            kafka.get_or_insert_with(|| c.kafka.clone());
            provinces.push(Province {
                subscriber: c.subscriber.clone(),
                issuer,
                store,
                reports,
                views,
                metrics: cfg.metrics_listen.map(|a| format!("http://{a}/metrics")),
            });
        }
        let kafka = kafka.context("give at least one province consumer's configuration (-c)")?;
        Ok(Self {
            provinces,
            client: kafka.client().create()?,
            router: kafka.consumer(router_group).create()?,
        })
    }

    /// The router's backlog on `central`: records past its group's
    /// committed offsets (None: not readable).
    fn router_backlog(&self, central: &str) -> Option<i64> {
        let t = Duration::from_secs(2);
        let parts = govbus_kafka_client::partitions_of(&self.client, central).ok()?;
        let mut tpl = rdkafka::TopicPartitionList::new();
        let mut high = 0;
        for p in &parts {
            high += self.client.fetch_watermarks(central, *p, t).ok()?.1;
            tpl.add_partition(central, *p);
        }
        let committed = self.router.committed_offsets(tpl, t).ok()?;
        let offsets: Vec<i64> = committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                rdkafka::Offset::Offset(o) => Some(o),
                _ => None,
            })
            .collect();
        // A group that committed nothing is not the router (or it has not
        // started): unknown, not "everything behind".
        if offsets.is_empty() {
            return None;
        }
        Some((high - offsets.iter().sum::<i64>()).max(0))
    }

    fn gather(&mut self) -> Value {
        let now = govbus_core::now_ms();
        let day = today();
        let mut out = Vec::new();
        let backlogs: Vec<Vec<Option<i64>>> = self
            .provinces
            .iter()
            .map(|p| p.views.iter().map(|v| self.router_backlog(&v.2)).collect())
            .collect();
        for (p, backlog) in self.provinces.iter_mut().zip(backlogs) {
            out.push(province_state(p, backlog, now, day));
        }
        json!({ "now_ms": now, "today": day.to_string(), "provinces": out })
    }
}

/// The lag the consumer agent reports (`govbus_consumer_lag_events`),
/// summed over its datasets; None when its endpoint does not answer.
fn consumer_lag(url: &str, subscriber: &str) -> Option<i64> {
    let text = ureq::get(url)
        .timeout(Duration::from_secs(1))
        .call()
        .ok()?
        .into_string()
        .ok()?;
    let want = format!("subscriber=\"{subscriber}\"");
    let mut seen = false;
    let mut sum = 0.0;
    for l in text.lines() {
        if l.starts_with("govbus_consumer_lag_events{") && l.contains(&want) {
            seen = true;
            sum += l.rsplit(' ').next()?.parse::<f64>().ok()?;
        }
    }
    seen.then_some(sum as i64)
}

fn province_state(
    p: &mut Province,
    backlog: Vec<Option<i64>>,
    now: i64,
    day: chrono::NaiveDate,
) -> Value {
    let mut errors: Vec<String> = Vec::new();
    let mut rows = 0i64;
    let mut newest: Option<i64> = None;
    let mut recent = Vec::new();
    let mut dead = 0;
    for (table, key, _, view) in &p.views {
        match p.store.dead(view) {
            Ok(n) => dead += n,
            Err(e) => errors.push(e.to_string()),
        }
        match p.store.table_status(table) {
            Ok(Some((n, ts))) => {
                rows += n;
                newest = newest.max(ts);
            }
            Ok(None) => {}
            Err(e) => errors.push(e.to_string()),
        }
        match p.store.recent(table, key, 8) {
            Ok(r) => recent.extend(r.into_iter().map(|(k, at)| json!({"key": k, "at_ms": at}))),
            Err(e) => errors.push(e.to_string()),
        }
    }
    let days = p.store.applied_days(DAYS).unwrap_or_else(|e| {
        errors.push(e.to_string());
        Vec::new()
    });
    let mut reports = Vec::new();
    let mut snapshots = Vec::new();
    for r in &p.reports {
        let cells = p.store.report_cells(&r.id()).unwrap_or_else(|e| {
            errors.push(e.to_string());
            Vec::new()
        });
        let figures = r.figures(&cells, day);
        let mut by_first: BTreeMap<String, i64> = BTreeMap::new();
        for (c, n) in &figures {
            *by_first
                .entry(c.first().cloned().unwrap_or_default())
                .or_default() += n;
        }
        let labels: BTreeMap<String, String> = by_first
            .keys()
            .filter_map(|k| unit_name(k).map(|n| (k.clone(), n)))
            .collect();
        reports.push(json!({
            "id": r.id(),
            "name": r.file.name,
            "title": r.file.title,
            "dimensions": r.file.dimensions.iter().map(|d| json!({"name": d.name, "title": d.title, "labels": d.labels})).collect::<Vec<_>>(),
            "total": figures.values().sum::<i64>(),
            "figures": figures.iter().map(|(c, n)| json!([c, n])).collect::<Vec<_>>(),
            "by_first": by_first.iter().map(|(k, n)| json!([k, n])).collect::<Vec<_>>(),
            "labels": labels,
        }));
        for s in govbus_consumer::snapshot::stored(&mut p.store, &r.id())
            .unwrap_or_default()
            .iter()
            .rev()
        {
            snapshots.push(json!({
                "report": r.file.name,
                "at": s.at.to_string(),
                "total": s.total,
                "digest": s.digest,
                "intact": s.verify() == govbus_consumer::snapshot::Verified::Intact,
            }));
        }
    }
    let consumer = p
        .metrics
        .as_deref()
        .and_then(|m| consumer_lag(m, &p.subscriber));
    let router: Option<i64> = backlog.iter().copied().sum();
    json!({
        "subscriber": p.subscriber,
        "issuer": p.issuer,
        "rows": rows,
        "last_change_ms": newest,
        "freshness_s": newest.map(|t| (now - t).max(0) as f64 / 1000.0),
        "lag": {"router": router, "consumer": consumer},
        "dead": dead,
        "reports": reports,
        "days": days,
        "recent": recent,
        "snapshots": snapshots,
        "errors": errors,
    })
}

type Shared = Arc<Served>;

struct Served {
    state: tokio::sync::watch::Receiver<String>,
    /// When `/state` was last asked for (ms since the epoch).
    asked_ms: Arc<std::sync::atomic::AtomicI64>,
    /// Per province: what its snapshots are read with, opened once.
    snapshots: Vec<Snapshots>,
}

/// A province's reports and the store its snapshots are read from.
struct Snapshots {
    subscriber: String,
    catalog: govbus_core::Catalog,
    store: std::sync::Mutex<Store>,
}

impl Snapshots {
    /// Opens the store of each consumer configuration in `files`.
    fn open(files: &[PathBuf]) -> anyhow::Result<Vec<Self>> {
        let mut out = Vec::new();
        for f in files {
            let cfg = GovbusConfig::load(Some(f), Some(Agent::Consumer))?;
            let Some(c) = cfg.consumer.as_ref() else {
                continue;
            };
            out.push(Snapshots {
                subscriber: c.subscriber.clone(),
                catalog: cfg.catalog()?,
                store: std::sync::Mutex::new(c.sink.store()?),
            });
        }
        Ok(out)
    }
}

/// Who may read the dashboard (it shows citizens' recent changes): with a
/// token, whoever sends it (`Authorization: Bearer`, or `?token=` once,
/// kept in a cookie); without one, only this machine (a loopback address,
/// and a `Host` naming it, so that no other site can rebind a name to it).
#[derive(Clone)]
struct Gate {
    /// SHA-256 of the token.
    token: Option<[u8; 32]>,
}

const COOKIE: &str = "govbus_dashboard";

impl Gate {
    fn allows(&self, req: &axum::extract::Request) -> Result<(), (StatusCode, &'static str)> {
        let Some(want) = self.token else {
            let host = req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default();
            let name = match host.rsplit_once(':') {
                Some((n, port)) if port.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => host,
            };
            return if matches!(name, "127.0.0.1" | "localhost" | "[::1]") {
                Ok(())
            } else {
                Err((
                    StatusCode::FORBIDDEN,
                    "this dashboard answers only to 127.0.0.1 or localhost (start it with --token-file to serve others)",
                ))
            };
        };
        let sent = |t: &str| openssl::sha::sha256(t.as_bytes()) == want;
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .is_some_and(sent);
        let cookie = req
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|h| h.to_str().ok())
            .flat_map(|h| h.split(';'))
            .filter_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
            .any(sent);
        if bearer || cookie || query_token(req).is_some_and(|t| sent(&t)) {
            Ok(())
        } else {
            Err((
                StatusCode::UNAUTHORIZED,
                "this dashboard needs its token: open it once with ?token=…",
            ))
        }
    }
}

fn query_token(req: &axum::extract::Request) -> Option<String> {
    req.uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("token=").map(govbus_http::percent_decode))
}

async fn gate(
    State(g): State<Gate>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Err((status, why)) = g.allows(&req) {
        tracing::info!(path = %req.uri().path(), reason = why, "dashboard request refused");
        return (status, why).into_response();
    }
    // A token given in the address is kept in a cookie for the page's own
    // requests (its events and downloads).
    let set = query_token(&req).map(|t| {
        format!(
            "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
            govbus_http::percent_decode(&t)
        )
    });
    let mut r = next.run(req).await;
    if let Some(c) = set.and_then(|c| header::HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    r
}

/// Serves the dashboard on `listen` for the consumers of `files` until
/// stopped.
pub(crate) async fn run(
    files: Vec<PathBuf>,
    listen: String,
    router_group: String,
    token_file: Option<PathBuf>,
) -> anyhow::Result<()> {
    let token = match &token_file {
        Some(f) => {
            let t = std::fs::read_to_string(f)
                .with_context(|| format!("reading the dashboard's token from {}", f.display()))?;
            let t = t.trim();
            anyhow::ensure!(
                t.len() >= 16,
                "the token in {} is shorter than 16 characters",
                f.display()
            );
            Some(openssl::sha::sha256(t.as_bytes()))
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    anyhow::ensure!(
        token.is_some() || addr.ip().is_loopback(),
        "the dashboard shows citizens' recent changes: on {addr}, a non-loopback address, it needs --token-file"
    );
    let (tx, rx) = tokio::sync::watch::channel(String::new());
    let f = files.clone();
    // The first state before the first page is served.
    let (mut gatherer, first) = tokio::task::spawn_blocking(move || {
        Gatherer::open(&f, &router_group).map(|mut g| {
            let first = g.gather().to_string();
            (g, first)
        })
    })
    .await??;
    tx.send_replace(first);
    let f = files.clone();
    let snapshots = tokio::task::spawn_blocking(move || Snapshots::open(&f)).await??;
    let asked_ms = Arc::new(std::sync::atomic::AtomicI64::new(govbus_core::now_ms()));
    let asked = asked_ms.clone();
    std::thread::Builder::new()
        .name("govbus-dashboard".into())
        .spawn(move || loop {
            let started = std::time::Instant::now();
            if tx.is_closed() {
                return;
            }
            // Gathered only while someone looks: a page open (its event
            // stream holds a receiver beside the server's own) or `/state`
            // asked for in the last 10 s. Unwatched, the board reads
            // neither the databases nor the broker.
            let watched = tx.receiver_count() > 1
                || govbus_core::now_ms() - asked.load(std::sync::atomic::Ordering::Relaxed)
                    < WATCHED_MS;
            if !watched {
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            let next = gatherer.gather().to_string();
            tx.send_if_modified(|cur| {
                if *cur == next {
                    false
                } else {
                    *cur = next;
                    true
                }
            });
            std::thread::sleep(Duration::from_secs(1).saturating_sub(started.elapsed()));
        })?;
    let app = axum::Router::new()
        .route("/", get(page))
        .route("/state", get(state))
        .route("/events", get(events))
        .route(
            "/snapshots/{subscriber}/{report}/{file}",
            get(snapshot_file),
        )
        .with_state(Arc::new(Served {
            state: rx,
            asked_ms,
            snapshots,
        }))
        .layer(axum::middleware::from_fn_with_state(Gate { token }, gate));
    println!("govbus dashboard: http://{addr}/");
    tracing::info!(%addr, token = token.is_some(), "dashboard serving");
    tokio::select! {
        r = govbus_http::serve(listener, app, None) => r?,
        () = crate::agents::shutdown_signal() => {}
    }
    Ok(())
}

async fn page() -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Html(PAGE)).into_response()
}

/// How long after a `/state` request the board keeps gathering.
const WATCHED_MS: i64 = 10_000;

async fn state(State(s): State<Shared>) -> Response {
    s.asked_ms
        .store(govbus_core::now_ms(), std::sync::atomic::Ordering::Relaxed);
    let body = s.state.borrow().clone();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn events(
    State(s): State<Shared>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, std::convert::Infallible>>> {
    let mut rx = s.state.clone();
    rx.mark_changed();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        let data = rx.borrow_and_update().clone();
        Some((Ok(Event::default().event("state").data(data)), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// `/snapshots/p52/population/2026-11-30.csv` (or `.html`, `.en.html`,
/// `.en.csv`): a dated snapshot, refused if it was changed after it was
/// frozen.
async fn snapshot_file(
    State(s): State<Shared>,
    Path((subscriber, report, file)): Path<(String, String, String)>,
) -> Response {
    let found = tokio::task::spawn_blocking(move || {
        snapshot_text(&s.snapshots, &subscriber, &report, &file)
    })
    .await;
    match found {
        Ok(Ok((ctype, body))) => ([(header::CONTENT_TYPE, ctype)], body).into_response(),
        Ok(Err((status, why))) => (status, why).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn snapshot_text(
    provinces: &[Snapshots],
    subscriber: &str,
    report: &str,
    file: &str,
) -> Result<(&'static str, String), (StatusCode, String)> {
    let (stem, kind) = file.rsplit_once('.').ok_or((
        StatusCode::NOT_FOUND,
        format!("{file}: give DATE.csv or DATE.html"),
    ))?;
    let (at, en) = match stem.strip_suffix(".en") {
        Some(d) => (d, true),
        None => (stem, false),
    };
    let internal = |e: String| (StatusCode::INTERNAL_SERVER_ERROR, e);
    let p = provinces
        .iter()
        .find(|p| p.subscriber == subscriber)
        .ok_or((
            StatusCode::NOT_FOUND,
            format!("no province {subscriber} here"),
        ))?;
    let spec = p
        .catalog
        .reports_of(subscriber)
        .find(|r| r.file.name == report)
        .ok_or((
            StatusCode::NOT_FOUND,
            format!("{subscriber} has no report {report}"),
        ))?;
    let r = Report::compile(spec, &p.catalog).map_err(|e| internal(e.to_string()))?;
    let snap = govbus_consumer::snapshot::stored(
        &mut p.store.lock().unwrap_or_else(|e| e.into_inner()),
        &r.id(),
    )
    .map_err(|e| internal(e.to_string()))?
    .into_iter()
    .find(|s| s.at.to_string() == at)
    .ok_or((
        StatusCode::NOT_FOUND,
        format!("{} has no snapshot of {at}", r.id()),
    ))?;
    if snap.verify() != govbus_consumer::snapshot::Verified::Intact {
        return Err((
            StatusCode::CONFLICT,
            format!(
                "the snapshot {} of {at} was changed after it was frozen",
                r.id()
            ),
        ));
    }
    match kind {
        "csv" => Ok(("text/csv; charset=utf-8", snap.to_csv(&r, en))),
        "html" => Ok(("text/html; charset=utf-8", snap.to_html(&r, en))),
        other => Err((StatusCode::NOT_FOUND, format!("{other}: give csv or html"))),
    }
}
