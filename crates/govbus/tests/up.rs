//! `govbus up`, the first of README's two commands, on a running cluster:
//! the whole stack starts (each agent waited on through its `/readyz`),
//! changes flow to both provinces, and a variable meant for one agent's
//! section reaches that agent only (found as a new user would:
//! `GOVBUS__ROUTER__KAFKA__OPTIONS__DEBUG` used to stop every agent).

use std::process::{Command, Stdio};

use std::time::Duration;

use govbus_e2e::{poll_until, Broker};
use rdkafka::message::{Headers, Message};

/// `N codes normalised` of a live line (the demo sends some pre-reform codes).
fn normalised(line: &str) -> Option<u64> {
    let at = line.find(" codes normalised")?;
    line[..at].rsplit([' ', ',']).next()?.parse().ok()
}

/// `p52 applied N` and `p92 applied N` of a live line.
fn applied(line: &str, province: &str) -> Option<u64> {
    let at = line.find(&format!("{province} applied"))?;
    line[at..].split_whitespace().nth(2)?.parse().ok()
}

/// Runs `govbus up` as `cmd` says until its live line shows both
/// provinces applying (and, with `normalising`, a code normalised), for at
/// most 240 s; the process, its lines so far, and whether that happened.
fn run_until_both_apply(
    mut cmd: Command,
    normalising: bool,
) -> (std::process::Child, Vec<String>, Option<()>) {
    let (mut child, lines) = govbus_e2e::spawn_lines(cmd.stderr(Stdio::piped()));
    let mut seen = Vec::new();
    let flowing = poll_until(Duration::from_secs(240), || {
        while let Ok(l) = lines.try_recv() {
            seen.push(l);
        }
        if let Ok(Some(status)) = child.try_wait() {
            // Its last lines (the error it exited with) until its pipes close.
            while let Ok(l) = lines.recv_timeout(Duration::from_secs(5)) {
                seen.push(l);
            }
            panic!("govbus up exited ({status}):\n{}", seen.join("\n"));
        }
        let last = seen.iter().rev().find(|l| l.contains("p52 applied"))?;
        let normalised_ok = !normalising || normalised(last)? > 0;
        (applied(last, "p52")? > 0 && applied(last, "p92")? > 0 && normalised_ok).then_some(())
    });
    (child, seen, flowing)
}

#[test]
fn up_runs_the_stack_and_a_router_only_variable_reaches_the_router_only() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_govbus"));
    cmd.args(["up", "--rate", "50", "--stall-secs", "30", "--broker"])
        .arg(&broker.bootstrap)
        .arg("--dir")
        .arg(dir.path().join("up"))
        .env("GOVBUS__ROUTER__KAFKA__OPTIONS__DEBUG", "cgrp")
        .env("GOVBUS__ROUTER__TXN_HEADER", "true");
    let (mut child, seen, flowing) = run_until_both_apply(cmd, true);
    let logs = dir.path().join("up/logs");
    let read =
        |name: &str| std::fs::read_to_string(logs.join(format!("{name}.log"))).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        flowing.is_some(),
        "no change reached both provinces with a code normalised in 240 s:\n{}\n--- router:\n{}",
        seen.join("\n"),
        read("router")
    );
    // The router took its variables: its view records carry the
    // transaction header that `txn_header = true` asks for.
    let views = govbus_e2e::read_all(
        &govbus_kafka_client::KafkaConfig::new(&broker.bootstrap),
        "sub.p52.bca.residents.v1",
    );
    assert!(!views.is_empty());
    assert!(
        views.iter().all(|m| m
            .headers()
            .is_some_and(|h| h.iter().any(|h| h.key == "govbus.txn"))),
        "a view record without govbus.txn"
    );
}

/// `govbus up --secure`: its own Kafka speaks only SASL_SSL with the
/// authorizer on, up applies the ACL plan before any agent starts, and the
/// stack runs with every agent on its own user.
#[test]
fn up_secure_applies_the_acls_and_runs_every_agent_on_its_own_principal() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_govbus"));
    cmd.args(["up", "--secure", "--rate", "50", "--stall-secs", "30"])
        .arg("--dir")
        .arg(dir.path().join("up"));
    let (child, seen, flowing) = run_until_both_apply(cmd, false);
    // Stopped when the test ends, whatever it asserts first.
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _up = Stop(child);
    let text = seen.join("\n");
    assert!(
        flowing.is_some(),
        "no change reached both provinces in 240 s:\n{text}"
    );
    assert!(
        text.contains("SASL_SSL only, SCRAM-SHA-512, ACLs enforced"),
        "{text}"
    );
    assert!(text.contains(" applied (govbus acl plan's"), "{text}");
    // Each agent's config names its own user, and no password.
    let p52 = std::fs::read_to_string(dir.path().join("up/p52.toml")).unwrap();
    assert!(
        p52.contains("username = \"p52\"") && p52.contains("password = { file = "),
        "{p52}"
    );

    // Secure end to end: the registry and every ingest speak HTTPS only
    // and refuse a request without credentials; the dashboard wants its
    // token. (Changes flowed above: the demo, the router and the
    // provinces used theirs.)
    let https = govbus_http::ClientAccess {
        ca: Some(dir.path().join("up/tls/ca.pem")),
        user: None,
        token: None,
    }
    .agent(ureq::AgentBuilder::new().timeout(Duration::from_secs(10)))
    .unwrap();
    let status = |res: Result<ureq::Response, ureq::Error>| match res {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    };
    let after = |prefix: &str| -> Vec<String> {
        seen.iter()
            .filter_map(|l| l.trim_start().strip_prefix(prefix))
            .filter_map(|rest| rest.split_whitespace().find(|w| w.contains("://")))
            .map(str::to_string)
            .collect()
    };
    let registry = after("registry").pop().expect("a registry line");
    assert!(registry.starts_with("https://"), "{registry}");
    let (s, body) = status(https.get(&format!("{registry}/subjects")).call());
    assert_eq!(s, 401, "the registry without credentials: {body}");
    let plain = registry.replacen("https://", "http://", 1);
    let (s, body) = status(ureq::get(&format!("{plain}/subjects")).call());
    assert_eq!(s, 0, "the registry answered plain HTTP: {body}");
    let ingests: Vec<String> = seen
        .iter()
        .filter(|l| l.contains(" ingest on "))
        .filter_map(|l| l.split_whitespace().last().map(str::to_string))
        .collect();
    assert!(ingests.len() >= 2, "{text}");
    for url in &ingests {
        assert!(url.starts_with("https://"), "{url}");
        let (s, body) = status(
            https
                .post(url)
                .set("content-type", "application/json")
                .send_string(r#"{"op": "delete", "key": "052090000001"}"#),
        );
        assert_eq!(s, 401, "{url} without credentials: {body}");
    }
    let dashboard = after("dashboard").pop().expect("a dashboard line");
    let (s, body) = status(ureq::get(&format!("{dashboard}state")).call());
    assert_eq!(s, 401, "the dashboard without its token: {body}");
    let token = std::fs::read_to_string(dir.path().join("up/secrets/dashboard-token")).unwrap();
    let (s, body) = status(
        ureq::get(&format!("{dashboard}state"))
            .set("authorization", &format!("Bearer {}", token.trim()))
            .call(),
    );
    assert_eq!(s, 200, "the dashboard with its token: {body}");
}

/// A second ministry's dataset (mof.businesses: its own schema, rules and
/// `[[codes]]`) and a third province (Hà Nội, p01, subscribing to active
/// businesses headquartered in the city, without the owner's citizen id)
/// join purely by files (`tests/joining/`, laid over a copy of the
/// repository's `deploy/` and `schemas/`): `govbus check` passes them,
/// `govbus up --deploy --schemas` starts a producer for mof and a province
/// for p01 beside the others, mof's ingest describes itself at
/// `/openapi.json`, p01's table holds exactly what its rule says, `govbus
/// status` shows no lag once it is applied, and a team applying a directory
/// of its own new file touches no other team's subscriptions.
#[test]
fn a_new_ministry_and_a_new_province_join_by_files_alone_through_up_deploy() {
    // A node of its own: `up` names its topics, group and control topic
    // without a prefix, as the other `up` test on the shared node does.
    let broker = Broker::own(1);
    let dir = tempfile::tempdir().unwrap();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let (deploy, schemas) = (dir.path().join("deploy"), dir.path().join("schemas"));
    govbus_e2e::copy_dir(&repo.join("deploy"), &deploy);
    govbus_e2e::copy_dir(&repo.join("schemas"), &schemas);
    govbus_e2e::copy_dir(&repo.join("tests/joining"), dir.path());
    let govbus = |args: &[&std::ffi::OsStr]| {
        let out = Command::new(env!("CARGO_BIN_EXE_govbus"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, out) = govbus(&[
        "check".as_ref(),
        deploy.as_os_str(),
        "--schemas".as_ref(),
        schemas.as_os_str(),
    ]);
    assert!(ok && out.contains("3 datasets"), "{out}");

    let up_dir = dir.path().join("up");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_govbus"));
    cmd.args(["up", "--rate", "20", "--broker", &broker.bootstrap])
        .arg("--deploy")
        .arg(&deploy)
        .arg("--schemas")
        .arg(&schemas)
        .arg("--dir")
        .arg(&up_dir);
    let (mut child, lines) = govbus_e2e::spawn_lines(cmd.stderr(Stdio::piped()));
    let mut seen: Vec<String> = Vec::new();
    let read = |seen: &mut Vec<String>| {
        while let Ok(l) = lines.try_recv() {
            seen.push(l);
        }
    };
    // The stack runs with p01 on its live line, and the demo reaches p52.
    let started = poll_until(Duration::from_secs(240), || {
        read(&mut seen);
        if let Ok(Some(status)) = child.try_wait() {
            // Its last lines (the error it exited with) until its pipes close.
            while let Ok(l) = lines.recv_timeout(Duration::from_secs(5)) {
                seen.push(l);
            }
            panic!("govbus up exited ({status}):\n{}", seen.join("\n"));
        }
        let last = seen.iter().rev().find(|l| l.contains("p01 applied"))?;
        (applied(last, "p52")? > 0).then_some(())
    });
    let text = seen.join("\n");
    assert!(
        started.is_some(),
        "the stack did not start with p01:\n{text}"
    );
    assert!(text.contains("3 datasets, 3 subscriptions"), "{text}");
    let ingest = text
        .lines()
        .find_map(|l| {
            l.split("mof ingest on ")
                .nth(1)?
                .split("/v1/datasets/mof.businesses/changes")
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no mof ingest line:\n{text}"));

    // mof's ingest describes its API.
    let spec: serde_json::Value = ureq::get(&format!("{ingest}/openapi.json"))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert!(
        spec["paths"]["/v1/datasets/mof.businesses/changes"]["post"].is_object(),
        "{spec}"
    );

    // Businesses: in Hà Nội today (one sent with the code of a ward merged
    // whole into Ba Đình before the reform), elsewhere, one suspended, one
    // moved out of the city, one deleted; and one the contract refuses.
    let business = |code: &str, status: &str, province: &str, commune: &str| {
        serde_json::json!({"op": "upsert", "data": {
            "enterprise_code": code, "name": format!("Công ty {code}"), "status": status,
            "owner_citizen_id": "001088000001",
            "head_office": {"province_code": province, "commune_code": commune, "street": "1 Tràng Tiền"},
            "registered_on": "2020-05-04", "updated_at": "2026-12-01T09:00:00+07:00",
        }})
    };
    let batch = serde_json::json!({"changes": [
        business("0100000001", "ACTIVE", "01", "00004"),
        business("0100000002", "ACTIVE", "01", "00013"),
        business("0100000003", "SUSPENDED", "01", "00004"),
        business("0100000004", "ACTIVE", "01", "00004"),
        business("0100000005", "ACTIVE", "92", "31507"),
        business("0100000006", "ACTIVE", "01", "00004"),
        business("0100000004", "ACTIVE", "52", "21553"),
        {"op": "delete", "key": "0100000006"},
    ]});
    let res = ureq::post(&format!(
        "{ingest}/v1/datasets/mof.businesses/changes/batch"
    ))
    .send_string(&batch.to_string())
    .unwrap();
    assert_eq!(res.status(), 202);
    let refused = ureq::post(&format!("{ingest}/v1/datasets/mof.businesses/changes"))
        .send_string(&business("01", "ACTIVE", "01", "00004").to_string());
    match refused {
        Err(ureq::Error::Status(422, r)) => {
            let body: serde_json::Value = r.into_json().unwrap();
            assert_eq!(
                body["error"], "refused by the rule enterprise_code_is_10_digits",
                "{body}"
            );
        }
        other => panic!("a 2-digit enterprise code: {other:?}"),
    }

    // p01's table holds exactly the active businesses in Hà Nội today, the
    // pre-reform ward normalised, and no owner's citizen id.
    let db = up_dir.join("p01.db");
    let rows = || -> Option<Vec<(String, String, Option<String>)>> {
        let conn = rusqlite::Connection::open(&db).ok()?;
        let mut st = conn
            .prepare("SELECT enterprise_code, head_office_commune_code, head_office_commune_code_as_sent FROM mof_businesses ORDER BY enterprise_code")
            .ok()?;
        let got = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .ok()?
            .collect::<Result<Vec<_>, _>>()
            .ok()?;
        Some(got)
    };
    let want = vec![
        ("0100000001".to_string(), "00004".to_string(), None),
        (
            "0100000002".to_string(),
            "00004".to_string(),
            Some("00013".to_string()),
        ),
    ];
    let got = poll_until(Duration::from_secs(60), || rows().filter(|r| *r == want));
    assert_eq!(got.as_ref(), Some(&want), "p01 holds {:?}", rows());
    let conn = rusqlite::Connection::open(&db).unwrap();
    let columns: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('mof_businesses')")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(!columns.iter().any(|c| c.contains("owner")), "{columns:?}");

    // Applied in full, p01's view reads no lag.
    let p01 = up_dir.join("p01.toml");
    let status = poll_until(Duration::from_secs(30), || {
        let (ok, out) = govbus(&["status".as_ref(), "-c".as_ref(), p01.as_os_str()]);
        (ok && out.lines().any(|l| {
            l.contains("p01/mof.businesses") && l.split_whitespace().rev().nth(1) == Some("0")
        }))
        .then_some(out)
    });
    assert!(
        status.is_some(),
        "{}",
        govbus(&["status".as_ref(), "-c".as_ref(), p01.as_os_str()]).1
    );

    // Hà Nội's team applies a directory holding only its new file: it is
    // added; p01's other subscription stays (listed), no other team's is
    // touched.
    let team = dir.path().join("p01-team");
    std::fs::create_dir_all(&team).unwrap();
    std::fs::write(
        team.join("p01.bca.residents.toml"),
        "subscriber = \"p01\"\ndataset = \"bca.residents\"\nfilter = 'in_unit(permanent_address.commune_code, \"01\")'\ndrop = [\"ethnicity\"]\nlegal_basis = \"t\"\nlegal_reference = \"r\"\n",
    )
    .unwrap();
    let router = up_dir.join("router.toml");
    let (ok, out) = govbus(&[
        "subscriptions".as_ref(),
        "apply".as_ref(),
        team.as_os_str(),
        "-c".as_ref(),
        router.as_os_str(),
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("+ p01/bca.residents"), "{out}");
    assert!(out.contains("= p01/mof.businesses (in force"), "{out}");
    assert!(!out.lines().any(|l| l.starts_with("- ")), "{out}");
    let in_force = govbus_router::control::read(
        &govbus_kafka_client::KafkaConfig::new(&broker.bootstrap),
        "_govbus.subscriptions",
    )
    .unwrap();
    let mut names: Vec<&String> = in_force
        .iter()
        .filter(|(_, v)| v.active().is_some())
        .map(|(k, _)| k)
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "p01/bca.residents",
            "p01/mof.businesses",
            "p52/bca.residents",
            "p92/bca.residents"
        ]
    );
    let _ = child.kill();
    let _ = child.wait();
}
