//! `govbus up`, the first of README's two commands, on a running cluster:
//! the whole stack starts (each agent waited on through its `/readyz`),
//! changes flow to both provinces, and a variable meant for one agent's
//! section reaches that agent only (found as a new user would:
//! `GOVBUS__ROUTER__KAFKA__OPTIONS__DEBUG` used to stop every agent).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
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

#[test]
fn up_runs_the_stack_and_a_router_only_variable_reaches_the_router_only() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_govbus"))
        .args(["up", "--rate", "50", "--stall-secs", "30", "--broker"])
        .arg(&broker.bootstrap)
        .arg("--dir")
        .arg(dir.path().join("up"))
        .env("GOVBUS__ROUTER__KAFKA__OPTIONS__DEBUG", "cgrp")
        .env("GOVBUS__ROUTER__TXN_HEADER", "true")
        .env("GOVBUS_EXIT_WITH_PARENT", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel::<String>();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let flowing = poll_until(Duration::from_secs(240), || {
        while let Ok(l) = lines.try_recv() {
            seen.push(l);
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("govbus up exited ({status}):\n{}", seen.join("\n"));
        }
        let last = seen.iter().rev().find(|l| l.contains("p52 applied"))?;
        (applied(last, "p52")? > 0 && applied(last, "p92")? > 0 && normalised(last)? > 0)
            .then_some(())
    });
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
        &govbus_core::KafkaConfig::new(&broker.bootstrap),
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
