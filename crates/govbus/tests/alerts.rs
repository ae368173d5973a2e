//! deploy/prometheus and deploy/grafana against a running bus: every alert
//! expression parses and behaves as its unit tests say (promtool); every
//! metric and label the alerts and dashboards name is exported by an agent
//! of `govbus up`; and in a bus made to fail (a province whose database is
//! locked, dead letters on a view and a central topic), Prometheus itself,
//! scraping the agents, finds the alerts' expressions true.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use govbus_e2e::{free_port, pg_url, poll_until, unique, wait_until, Broker};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn promtool() -> &'static str {
    assert!(
        Command::new("promtool").arg("--version").output().is_ok(),
        "promtool is not installed: apt-get install prometheus (.ci/run does)"
    );
    "promtool"
}

/// Kills a child on drop.
struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Metric name → label names, as an agent's `/metrics` exports them.
fn exported(port: u16) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let Ok(r) = ureq::get(&format!("http://127.0.0.1:{port}/metrics")).call() else {
        return out;
    };
    for line in r.into_string().unwrap_or_default().lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let series = line.rsplit_once(' ').map_or(line, |(s, _)| s);
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        let names = labels
            .split(',')
            .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.to_string()));
        out.entry(name.to_string()).or_default().extend(names);
    }
    out
}

/// The metric names in `expr` and the labels it groups, joins or
/// formats by (Prometheus' own `instance` and `job` left out).
fn named(expr: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut metrics = BTreeSet::new();
    let mut labels = BTreeSet::new();
    let word = |s: &str| -> Vec<String> {
        s.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect()
    };
    for w in word(expr) {
        if w.starts_with("govbus_") {
            metrics.insert(w);
        }
    }
    for (kw, ends) in [
        ("by (", &[')'][..]),
        ("on (", &[')'][..]),
        ("$labels.", &['}', ' '][..]),
        ("{{", &['}', ' '][..]),
    ] {
        let mut rest = expr;
        while let Some(at) = rest.find(kw) {
            rest = &rest[at + kw.len()..];
            let end = rest.find(ends).unwrap_or(rest.len());
            for l in word(&rest[..end]) {
                labels.insert(l);
            }
        }
    }
    // Selector labels: `metric{label=~"..."}`.
    let mut rest = expr;
    while let Some(at) = rest.find("{") {
        rest = &rest[at + 1..];
        let end = rest.find('}').unwrap_or(rest.len());
        for kv in rest[..end].split(',') {
            if let Some((k, _)) = kv.split_once(['=', '!']) {
                let k = k.trim().trim_end_matches(['~', '!']);
                if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    labels.insert(k.to_string());
                }
            }
        }
    }
    labels.remove("instance");
    labels.remove("job");
    (metrics, labels)
}

/// Every expression of the alert rules (with its annotations' labels) and
/// of the dashboards' targets.
fn expressions() -> Vec<(String, String)> {
    let rules: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(deploy().join("prometheus/govbus-alerts.yml")).unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    for g in rules["groups"].as_sequence().unwrap() {
        for r in g["rules"].as_sequence().unwrap() {
            let name = r["alert"].as_str().unwrap().to_string();
            let mut text = r["expr"].as_str().unwrap().to_string();
            text.push_str(&format!(
                " {}",
                r["annotations"]["summary"].as_str().unwrap()
            ));
            out.push((name, text));
        }
    }
    for f in std::fs::read_dir(deploy().join("grafana")).unwrap() {
        let f = f.unwrap().path();
        let d: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().unwrap() {
                out.push((
                    format!(
                        "{} / {}",
                        f.file_name().unwrap().to_string_lossy(),
                        p["title"]
                    ),
                    format!(
                        "{} {}",
                        t["expr"].as_str().unwrap(),
                        t["legendFormat"].as_str().unwrap_or("")
                    ),
                ));
            }
        }
    }
    out
}

#[test]
fn alert_rules_parse_and_pass_their_unit_tests() {
    let rules = deploy().join("prometheus/govbus-alerts.yml");
    let out = Command::new(promtool())
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = Command::new(promtool())
        .args(["test", "rules", "govbus-alerts.test.yml"])
        .current_dir(deploy().join("prometheus"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A dashboard's expressions are checked by Prometheus in the test below;
    // here, that each file is a dashboard with targets.
    assert!(expressions().len() > 20);
}

#[test]
fn a_failing_bus_fires_the_alerts_and_every_named_metric_is_exported() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let up_dir = dir.path().join("up");
    let (child, lines) = govbus_e2e::spawn_lines(
        Command::new(env!("CARGO_BIN_EXE_govbus"))
            .args(["up", "--rate", "200", "--stall-secs", "30", "--broker"])
            .arg(&broker.bootstrap)
            .arg("--dir")
            .arg(&up_dir)
            .stderr(Stdio::null()),
    );
    let _up = Killed(child);
    let mut seen: Vec<String> = Vec::new();
    let ports: BTreeMap<String, u16> = wait_until(
        Duration::from_secs(240),
        "govbus up's metrics ports",
        || {
            while let Ok(l) = lines.try_recv() {
                seen.push(l);
            }
            let line = seen
                .iter()
                .find(|l| l.trim_start().starts_with("metrics"))?;
            Some(
                line.split_whitespace()
                    .collect::<Vec<_>>()
                    .windows(2)
                    .filter_map(|w| Some((w[0].to_string(), w[1].strip_prefix(':')?.parse().ok()?)))
                    .collect(),
            )
        },
    );
    let ingest = seen
        .iter()
        .find_map(|l| l.split("bca ingest on ").nth(1).map(str::to_string))
        .expect("the ingest URL");
    wait_until(Duration::from_secs(120), "changes applied at p92", || {
        let a = ureq::get(&format!("http://127.0.0.1:{}/metrics", ports["p92"]))
            .call()
            .ok()?;
        let text = a.into_string().ok()?;
        text.lines()
            .any(|l| l.starts_with("govbus_consumer_applied_total") && !l.ends_with(" 0"))
            .then_some(())
    });

    // An outbox relay beside bca's producer, and one row it refuses.
    let src = unique("legacy_");
    let mut db = postgres::Client::connect(&pg_url(), postgres::NoTls).unwrap();
    let sql = include_str!("../../../deploy/sql/outbox.sql").replace("govbus.", &format!("{src}."));
    db.batch_execute(&format!("CREATE SCHEMA {src}; {sql}"))
        .unwrap();
    let m_outbox = free_port();
    let bca = std::fs::read_to_string(up_dir.join("bca.toml")).unwrap();
    let legacy: String = bca
        .lines()
        .map(|l| {
            if l.starts_with("metrics_listen") {
                format!("metrics_listen = \"127.0.0.1:{m_outbox}\"")
            } else if l.starts_with("store") {
                format!(
                    "store = \"sqlite://{}\"",
                    up_dir.join("legacy.db").display()
                )
            } else if l.starts_with("system") {
                "system = \"legacy\"".into()
            } else if l.starts_with("listen") {
                format!("listen = \"127.0.0.1:{}\"", free_port())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let legacy_cfg = up_dir.join("legacy.toml");
    std::fs::write(&legacy_cfg, legacy).unwrap();
    let _outbox = Killed(
        Command::new(env!("CARGO_BIN_EXE_govbus"))
            .args([
                "publish",
                "--outbox",
                &pg_url(),
                "--outbox-schema",
                &src,
                "--config",
            ])
            .arg(&legacy_cfg)
            .env("GOVBUS_EXIT_WITH_PARENT", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(up_dir.join("logs/legacy.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    db.batch_execute(&format!(
        "INSERT INTO {src}.outbox (dataset, op, key, after) VALUES ('bca.residents', 'INSERT', '1', '\"broken\"')"
    ))
    .unwrap();
    // A change bca's contract refuses over HTTP, and garbage on a central
    // topic and on p52's view.
    let r = ureq::post(&ingest).send_string(
        r#"{"op": "upsert", "data": {"citizen_id": "052090000999", "full_name": "Tương Lai",
            "date_of_birth": "2999-01-01", "sex": "MALE", "ethnicity": "Kinh",
            "permanent_address": {"province_code": "52", "commune_code": "21553"}, "updated_at": 1764230400000}}"#,
    );
    assert!(
        matches!(r, Err(ureq::Error::Status(422, _))),
        "the contract refuses a resident born in 2999: {r:?}"
    );
    let raw: BaseProducer = govbus_kafka_client::KafkaConfig::new(&broker.bootstrap)
        .producer()
        .create()
        .unwrap();
    for topic in ["gov.bca.residents.v1", "sub.p52.bca.residents.v1"] {
        raw.send(
            BaseRecord::to(topic)
                .key("052090000666")
                .payload(&b"garbage"[..]),
        )
        .unwrap();
    }
    raw.flush(Duration::from_secs(10)).unwrap();

    // Every metric and label named is exported by some agent.
    let mut agents: Vec<u16> = ports.values().copied().collect();
    agents.push(m_outbox);
    let mut last_missing = Vec::new();
    let found = poll_until(Duration::from_secs(60), || {
        let mut all: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for p in &agents {
            for (m, ls) in exported(*p) {
                all.entry(m).or_default().extend(ls);
            }
        }
        let mut missing = Vec::new();
        for (what, expr) in expressions() {
            let (metrics, labels) = named(&expr);
            for m in &metrics {
                match all.get(m) {
                    None => missing.push(format!("{what}: {m} is not exported")),
                    Some(have) => {
                        let any = metrics
                            .iter()
                            .filter_map(|m| all.get(m))
                            .flatten()
                            .collect::<BTreeSet<_>>();
                        for l in &labels {
                            if !have.contains(l) && !any.contains(l) {
                                missing.push(format!("{what}: no metric it names has label {l}"));
                            }
                        }
                    }
                }
            }
        }
        missing.sort();
        missing.dedup();
        let done = missing.is_empty();
        last_missing = missing;
        done.then_some(())
    });
    assert!(
        found.is_some(),
        "named but not exported:\n{}\n--- the outbox relay's log:\n{}",
        last_missing.join("\n"),
        std::fs::read_to_string(up_dir.join("logs/legacy.log")).unwrap_or_default()
    );

    // p92's database is locked: it applies nothing while changes wait.
    let lock = rusqlite::Connection::open(up_dir.join("p92.db")).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let applied = |p: u16| -> Option<f64> {
        let t = ureq::get(&format!("http://127.0.0.1:{p}/metrics"))
            .call()
            .ok()?
            .into_string()
            .ok()?;
        Some(
            t.lines()
                .filter(|l| l.starts_with("govbus_consumer_applied_total"))
                .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
                .sum(),
        )
    };
    let mut last = (applied(ports["p92"]), std::time::Instant::now());
    wait_until(Duration::from_secs(60), "p92 to stop applying", || {
        let now = applied(ports["p92"]);
        if now != last.0 {
            last = (now, std::time::Instant::now());
            return None;
        }
        (last.1.elapsed() > Duration::from_secs(3)).then_some(())
    });

    // Prometheus, scraping every agent each second with the rule file.
    let prom_dir = dir.path().join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let targets: Vec<String> = agents.iter().map(|p| format!("'127.0.0.1:{p}'")).collect();
    std::fs::write(
        prom_dir.join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: ['{}']\nscrape_configs:\n  - job_name: govbus\n    static_configs:\n      - targets: [{}]\n",
            deploy().join("prometheus/govbus-alerts.yml").display(),
            targets.join(", ")
        ),
    )
    .unwrap();
    let prom_port = free_port();
    let _prometheus = Killed(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                prom_dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                prom_dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus is installed (apt-get install prometheus; .ci/run does)"),
    );
    let active = |name: &str, label: (&str, &str)| -> bool {
        let Ok(r) = ureq::get(&format!("http://127.0.0.1:{prom_port}/api/v1/alerts")).call() else {
            return false;
        };
        let v: serde_json::Value = r.into_json().unwrap_or_default();
        v["data"]["alerts"].as_array().is_some_and(|a| {
            a.iter()
                .any(|x| x["labels"]["alertname"] == name && x["labels"][label.0] == label.1)
        })
    };
    let want = [
        ("GovbusConsumerStalled", ("subscriber", "p92")),
        ("GovbusConsumerLagGrowing", ("subscriber", "p92")),
        ("GovbusDeadLettersGrowing", ("subscriber", "p52")),
        ("GovbusDeadLettersGrowing", ("dataset", "bca.residents")),
    ];
    let fired = poll_until(Duration::from_secs(180), || {
        want.iter().all(|(n, l)| active(n, *l)).then_some(())
    });
    let state: Vec<String> = want
        .iter()
        .map(|(n, l)| format!("{n}{{{}={}}}: {}", l.0, l.1, active(n, *l)))
        .collect();
    assert!(
        fired.is_some(),
        "alerts not active after 180 s:\n{}",
        state.join("\n")
    );
    // The healthy province is not alerted on.
    assert!(!active("GovbusConsumerStalled", ("subscriber", "p52")));
    assert!(!active("GovbusRegistryUnreachable", ("job", "govbus")));
    assert!(!active("GovbusSubscriptionExpiring", ("subscriber", "p52")));
    drop(lock);
    // The lock only delayed p92: its consumer is still running, and it
    // applies the changes that waited.
    let stalled_at = last.0;
    wait_until(Duration::from_secs(60), "p92 to apply again", || {
        (applied(ports["p92"]) > stalled_at).then_some(())
    });

    // p52's subscription is renewed to end in 10 days.
    let subs = dir.path().join("subscriptions");
    std::fs::create_dir_all(&subs).unwrap();
    let ends = (chrono::Utc::now() + chrono::Duration::days(10)).format("%Y-%m-%d");
    for f in ["p52.bca.residents.toml", "p92.bca.residents.toml"] {
        let mut text = std::fs::read_to_string(deploy().join("subscriptions").join(f)).unwrap();
        if f.starts_with("p52") {
            text.push_str(&format!("expires = \"{ends}\"\n"));
        }
        std::fs::write(subs.join(f), text).unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_govbus"))
        .args(["subscriptions", "apply"])
        .arg(&subs)
        .arg("--config")
        .arg(up_dir.join("router.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    poll_until(Duration::from_secs(120), || {
        active("GovbusSubscriptionExpiring", ("subscriber", "p52")).then_some(())
    })
    .expect("GovbusSubscriptionExpiring for p52 within 120 s");
    assert!(!active("GovbusSubscriptionExpiring", ("subscriber", "p92")));

    // The registry stops answering (frozen: `govbus up` would stop the
    // whole stack if it died).
    let registry = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .find_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd);
            (cmd.contains("\0registry\0") && cmd.contains(&*up_dir.to_string_lossy()))
                .then_some(pid)
        })
        .expect("the registry's process");
    let signal = |sig: &str| {
        Command::new("kill")
            .args([sig, &registry.to_string()])
            .status()
            .unwrap()
    };
    assert!(signal("-STOP").success());
    let unreachable = poll_until(Duration::from_secs(90), || {
        active("GovbusRegistryUnreachable", ("job", "govbus")).then_some(())
    });
    assert!(signal("-CONT").success());
    assert!(
        unreachable.is_some(),
        "GovbusRegistryUnreachable not active 90 s after the registry froze"
    );
}
