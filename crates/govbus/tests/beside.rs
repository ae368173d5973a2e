//! `govbus up --broker HOST:PORT --kafka-security FILE` beside a secured
//! cluster it did not start: three Apache Kafka nodes that speak only
//! SASL_SSL with SCRAM-SHA-512 and the authorizer on, where only `admin`
//! exists. up creates a user per agent, applies the ACL plan, and the
//! demo's changes reach both provinces, each agent on its own user.

use std::process::{Command, Stdio};
use std::time::Duration;

use govbus_e2e::{poll_until, Broker};

#[test]
fn up_runs_the_demo_beside_a_secured_three_node_cluster_it_did_not_start() {
    let broker = Broker::secured_nodes(3, &[]);
    let sec = broker.secure().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let security = dir.path().join("admin.toml");
    std::fs::write(
        &security,
        format!(
            "[kafka.security]\nprotocol = \"sasl_ssl\"\nca = \"{}\"\nusername = \"admin\"\npassword = {{ file = \"{}\" }}\n",
            sec.ca.display(),
            sec.passwords["admin"].display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_govbus"));
    cmd.args(["up", "--rate", "50", "--stall-secs", "30", "--broker"])
        .arg(&broker.bootstrap)
        .arg("--kafka-security")
        .arg(&security)
        .arg("--dir")
        .arg(dir.path().join("up"))
        .stderr(Stdio::piped());
    let (mut child, lines) = govbus_e2e::spawn_lines(&mut cmd);
    struct Stop<'a>(&'a mut std::process::Child);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut seen: Vec<String> = Vec::new();
    let flowing = {
        let up = Stop(&mut child);
        let applied = |l: &str, p: &str| -> Option<u64> {
            let at = l.find(&format!("{p} applied"))?;
            l[at..].split_whitespace().nth(2)?.parse().ok()
        };
        let flowing = poll_until(Duration::from_secs(300), || {
            while let Ok(l) = lines.try_recv() {
                seen.push(l);
            }
            if let Ok(Some(status)) = up.0.try_wait() {
                while let Ok(l) = lines.recv_timeout(Duration::from_secs(5)) {
                    seen.push(l);
                }
                panic!("govbus up exited ({status}):\n{}", seen.join("\n"));
            }
            let last = seen.iter().rev().find(|l| l.contains("p52 applied"))?;
            (applied(last, "p52")? > 0 && applied(last, "p92")? > 0).then_some(())
        });
        // The users and grants it made, while the stack still runs.
        let (acls, _) = govbus_kafka_client::acl::AclAdmin::new(&broker.kafka_as("admin"))
            .unwrap()
            .describe()
            .unwrap();
        (flowing, acls)
    };
    let text = seen.join("\n");
    let (flowing, acls) = flowing;
    assert!(
        flowing.is_some(),
        "no change reached both provinces in 300 s:\n{text}"
    );
    assert!(
        text.contains("SASL_SSL as admin") && text.contains("SCRAM-SHA-512 users created"),
        "{text}"
    );
    assert!(text.contains(" applied (govbus acl plan's"), "{text}");
    assert!(text.contains("registry  https://"), "{text}");
    for user in [
        "User:p52",
        "User:p92",
        "User:bca",
        "User:moha",
        "User:router",
    ] {
        assert!(
            acls.iter().any(|a| a.principal == user),
            "no ACL for {user} on the cluster"
        );
    }
    // Each agent's file names its own user and the cluster's CA, and
    // holds no password.
    let p52 = std::fs::read_to_string(dir.path().join("up/p52.toml")).unwrap();
    assert!(
        p52.contains("username = \"p52\"")
            && p52.contains(&format!("ca = \"{}\"", sec.ca.display()))
            && p52.contains("password = { file = "),
        "{p52}"
    );
    // What an operator reads in docs/OPERATIONS.md.
    println!("{text}");
}
