//! File backfill: bad lines (malformed JSON or CSV, schema violations, text
//! that is not UTF-8, a 50 MB line) go to the reject file with their line
//! number and reason; good lines are stored; an interrupted run resumes
//! without duplicates.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use govbus_core::{Catalog, Topics};
use govbus_e2e::{init_logs, runtime, seed_admin_units, start_registry, unique, Broker};
use govbus_producer::backfill::{self, reject_path};
use govbus_producer::{open_store, OutboxStore, Publisher};
use govbus_schema::RegistryClient;
use serde_json::{json, Value};

fn resident(id: &str, province: &str) -> Value {
    // A commune of that province in the demo's admin units (the contract checks).
    let commune = if province == "92" { "31507" } else { "21553" };
    json!({
        "citizen_id": id, "full_name": "Đỗ Minh Quân", "date_of_birth": "1979-09-02",
        "sex": "MALE", "ethnicity": "Kinh",
        "permanent_address": {"province_code": province, "commune_code": commune, "street": null},
        "updated_at": 1_764_230_400_000i64
    })
}

fn rejects(path: &Path) -> Vec<(u64, String)> {
    std::fs::read_to_string(reject_path(path))
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["line"].as_u64().unwrap(),
                v["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn publisher(
    dir: &Path,
) -> (
    Broker,
    tokio::runtime::Runtime,
    Publisher,
    Arc<dyn OutboxStore>,
) {
    let broker = Broker::start();
    let rt = runtime();
    let topics = Topics::new(format!("{}.", unique("t")));
    let (registry, _detached) = start_registry(&rt, &broker.kafka(), &topics.schemas());
    seed_admin_units(&broker.kafka(), &topics, &registry, dir);
    let store = open_store(dir.join("bca.db").to_str().unwrap(), "").unwrap();
    let p = Publisher::new(
        &Catalog::builtin(),
        "bca",
        "backfill",
        &topics,
        &broker.kafka(),
        &RegistryClient::new(&registry),
        store.clone(),
    )
    .unwrap();
    (broker, rt, p, store)
}

#[test]
fn jsonl_backfill_rejects_bad_lines_and_resumes_without_duplicates() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let (_b, _rt, publisher, store) = publisher(dir.path());
    let path = dir.path().join("residents.jsonl");
    let mut f = std::fs::File::create(&path).unwrap();
    let mut bad = resident("052079000009", "52");
    bad["sex"] = json!("?");
    writeln!(f, "{}", resident("052079000001", "52")).unwrap(); // 1
    writeln!(f, "{{\"citizen_id\": ").unwrap(); // 2 malformed JSON
    writeln!(f, "{}", resident("052079000002", "52")).unwrap(); // 3
    writeln!(f, "{bad}").unwrap(); // 4 schema violation
    f.write_all(b"{\"citizen_id\": \"\xff\xfe\"}\n").unwrap(); // 5 not UTF-8
    writeln!(f, "{}", resident("094079000003", "92")).unwrap(); // 6
    writeln!(f, "{{\"full_name\": \"{}\"}}", "x".repeat(50 << 20)).unwrap(); // 7: 50 MB
    writeln!(f).unwrap(); // 8 blank: ignored
    writeln!(f, "{}", json!({"op": "delete", "key": "052079000001"})).unwrap(); // 9
    writeln!(f, "{}", resident("052079000004", "52")).unwrap(); // 10
    drop(f);

    // Interrupted after the first stored batch (batch of 2 good lines)...
    let first = backfill::run(&publisher, "bca.residents", &path, 2, |_| false).unwrap();
    assert_eq!(first.stored, 2);
    assert_eq!(store.backlog().unwrap(), 2);
    // ...then resumed: the rest, and nothing twice.
    let second = backfill::run(&publisher, "bca.residents", &path, 2, |_| true).unwrap();
    assert_eq!(second.resumed_after, 3);
    assert_eq!(first.stored + second.stored, 5, "5 good changes in all");
    assert_eq!(store.backlog().unwrap(), 5);
    let reasons = rejects(&path);
    assert_eq!(
        reasons,
        [
            (2, "malformed".to_string()),
            (4, "schema".to_string()),
            (5, "not_utf8".to_string()),
            (7, "too_long".to_string())
        ]
    );
    // The delete found the entity created on line 1: sequence 2.
    let pending = store.pending(10).unwrap();
    assert_eq!(
        pending.iter().filter(|r| r.key == b"052079000001").count(),
        2
    );
    // A third run finds nothing left to do.
    let third = backfill::run(&publisher, "bca.residents", &path, 2, |_| true).unwrap();
    assert_eq!((third.stored, third.rejected), (0, 0));
    assert_eq!(store.backlog().unwrap(), 5);
    assert_eq!(rejects(&path).len(), 4, "rejects are not written twice");
}

#[test]
fn csv_backfill_types_cells_and_rejects_malformed_rows() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let (_b, _rt, publisher, store) = publisher(dir.path());
    let path = dir.path().join("residents.csv");
    let mut f = std::fs::File::create(&path).unwrap();
    writeln!(f, "citizen_id,full_name,date_of_birth,sex,ethnicity,permanent_address_province_code,permanent_address_commune_code,permanent_address_street,updated_at").unwrap();
    writeln!(
        f,
        "052079000001,Võ Thị Mai,1979-09-02,FEMALE,Kinh,52,21553,,1764230400000"
    )
    .unwrap(); // 2
    writeln!(f, "052079000002,\"Hồ, Văn Nam\",1980-01-01,MALE,Kinh,52,21553,\"3 Quang Trung\",2026-11-27T08:00:00+07:00").unwrap(); // 3
    writeln!(f, "052079000003,too,few").unwrap(); // 4 malformed (field count)
    writeln!(f, "052079000004,Lý Văn,1980-13-45,MALE,Kinh,52,21553,,1").unwrap(); // 5 bad date
    f.write_all(b"052079000005,\xc3\x28,1980-01-01,MALE,Kinh,52,21553,,1\n")
        .unwrap(); // 6 not UTF-8
                   // 7: a commune code that never existed: the contract's codes refuse it.
    writeln!(
        f,
        "052079000006,Lý Văn Tư,1980-01-01,MALE,Kinh,52,99999,,1764230400000"
    )
    .unwrap();
    drop(f);
    let p = backfill::run(&publisher, "bca.residents", &path, 100, |_| true).unwrap();
    assert_eq!((p.stored, p.rejected), (2, 4));
    assert_eq!(store.backlog().unwrap(), 2);
    assert_eq!(
        rejects(&path),
        [
            (4, "malformed".to_string()),
            (5, "schema".to_string()),
            (6, "not_utf8".to_string()),
            (7, "contract".to_string())
        ]
    );
    let text = std::fs::read_to_string(govbus_producer::backfill::reject_path(&path)).unwrap();
    assert!(
        text.contains("code 99999 is not a unit of the administrative map"),
        "{text}"
    );
}
