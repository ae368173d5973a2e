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
    let (mut child, seen, flowing) = run_until_both_apply(cmd, false);
    let _ = child.kill();
    let _ = child.wait();
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
}
