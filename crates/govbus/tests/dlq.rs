//! `govbus dlq list` and `show` on a live cluster: every DLQ topic under the
//! platform's prefix, counted per reason, source and age; one letter with
//! its headers, key and value.

use std::process::Command;
use std::time::Duration;

use govbus_e2e::{unique, Broker};
use govbus_kafka_client::{ensure_topics, TopicSpec};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

fn govbus(args: &[&str]) -> (bool, String) {
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
}

#[test]
fn dlq_list_counts_the_letters_and_show_prints_one() {
    let broker = Broker::start();
    let kafka = broker.kafka();
    let prefix = unique("t") + ".";
    let dlq = format!("{prefix}dlq.consume.p52");
    ensure_topics(&kafka, &[TopicSpec::retained(&dlq, 1)]).unwrap();
    let raw: BaseProducer = kafka.producer().create().unwrap();
    for (i, reason) in ["constraint", "not_wire_format", "not_wire_format"]
        .iter()
        .enumerate()
    {
        let offset = i.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "govbus.reason",
                value: Some(*reason),
            })
            .insert(Header {
                key: "govbus.error",
                value: Some("refused"),
            })
            .insert(Header {
                key: "govbus.source.topic",
                value: Some("sub.p52.bca.residents.v1"),
            })
            .insert(Header {
                key: "govbus.source.offset",
                value: Some(offset.as_str()),
            });
        raw.send(
            BaseRecord::to(&dlq)
                .key(&format!("05209000000{i}"))
                .payload(&b"garbage"[..])
                .headers(headers),
        )
        .unwrap();
    }
    raw.flush(Duration::from_secs(10)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("platform.toml");
    std::fs::write(
        &cfg,
        format!(
            "[router]\nregistry = \"http://127.0.0.1:1\"\ntopic_prefix = \"{prefix}\"\n[router.kafka]\nbootstrap = \"{}\"\n",
            broker.bootstrap
        ),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();

    let (ok, out) = govbus(&["dlq", "list", "-c", cfg]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "{dlq}  3 records, 3 open\n  handled:   replayed 0, discarded 0\n  by reason: constraint 1, not_wire_format 2\n  by source: sub.p52.bca.residents.v1 3\n  by age:    < 1 h 3\n"
        )),
        "{out}"
    );

    let (ok, out) = govbus(&["dlq", "show", &format!("{dlq}:0:1"), "-c", cfg]);
    assert!(ok, "{out}");
    for line in [
        "govbus.reason: not_wire_format",
        "govbus.source.offset: 1",
        "key: 052090000001",
        "value: garbage (does not decode",
    ] {
        assert!(out.contains(line), "{line} missing:\n{out}");
    }
    let (ok, out) = govbus(&["dlq", "show", &format!("{dlq}:0:9"), "-c", cfg]);
    assert!(
        !ok && out.contains("no record at partition 0, offset 9"),
        "{out}"
    );
}
