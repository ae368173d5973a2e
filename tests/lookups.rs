//! Codes checked against `moha.admin_units` (the dataset's `[[codes]]`):
//! the bca producer follows that dataset live from the bus; an unknown or
//! retired commune, or a commune outside the province given, is refused
//! with the reason; a unit moha publishes later is accepted once it is on
//! the bus; a producer started afterwards has the whole catalog before it
//! accepts anything.

use std::time::Duration;

use govbus_e2e::{wait_until, Bus};
use govbus_producer::{ChangeRequest, Publisher, SubmitError};
use serde_json::{json, Value};

fn resident(id: &str, province: &str, commune: &str) -> ChangeRequest {
    ChangeRequest::Upsert(json!({
        "citizen_id": id, "full_name": "Lê Văn Nam", "date_of_birth": "1979-05-13",
        "sex": "MALE", "ethnicity": "Kinh",
        "permanent_address": {"province_code": province, "commune_code": commune, "street": null},
        "updated_at": 1_764_230_400_000i64
    }))
}

/// What a refused change was told, one line per field.
fn problems(p: &Publisher, req: ChangeRequest) -> Vec<String> {
    match p.submit("bca.residents", req) {
        Err(SubmitError::Invalid(errs)) => errs
            .iter()
            .map(|e| format!("{}: {}", e.field, e.problem))
            .collect(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The rules a refused change failed, as `field: rule` pairs.
fn refused(p: &Publisher, req: ChangeRequest) -> Vec<String> {
    match p.submit("bca.residents", req) {
        Err(SubmitError::Invalid(errs)) => {
            let mut v: Vec<String> = errs
                .iter()
                .map(|e| {
                    let rule = govbus_producer::publisher::rule_of(e).unwrap_or("?");
                    format!("{}: {rule}", e.field)
                })
                .collect();
            v.sort();
            v
        }
        other => panic!("expected a contract refusal, got {other:?}"),
    }
}

fn rows(p: &Publisher) -> usize {
    p.lookups()
        .iter()
        .find(|(d, _)| d == "moha.admin_units")
        .map_or(0, |(_, n)| *n)
}

#[test]
fn admin_unit_rules_follow_the_catalog_live() {
    let bus = Bus::start();
    let bca = bus.publisher("lookups"); // seeds the demo's admin units first
    let seeded = *bus.seeded.get().expect("seeded");
    assert_eq!(
        rows(&bca),
        seeded,
        "the producer held the whole catalog when it started"
    );

    // A current commune of Gia Lai (52): accepted.
    bca.submit("bca.residents", resident("052079000001", "52", "21553"))
        .expect("a resident of a known commune is accepted");
    // A commune of Cần Thơ (92) given with province 52.
    let why = problems(&bca, resident("052079000002", "52", "31507"));
    assert!(
        why[0].contains("lies in 92 (Thành phố Cần Thơ)") && why[0].contains("not in 52"),
        "{why:?}"
    );
    // Codes that never existed.
    let why = problems(&bca, resident("052079000003", "53", "99999"));
    assert_eq!(why.len(), 2, "{why:?}");
    assert!(
        why.iter()
            .all(|w| w.contains("is not a unit of the administrative map")),
        "{why:?}"
    );
    // A commune code used as a province.
    assert_eq!(
        refused(&bca, resident("052079000004", "21553", "21553")),
        [
            "permanent_address.commune_code: codes_are_well_formed",
            "permanent_address.province_code: codes",
        ]
    );

    // moha publishes a new commune of 52 and retires 21553.
    let (moha, _relay) = bus.moha("danh-muc");
    let unit = |code: &str, valid_to: Value| {
        ChangeRequest::Upsert(json!({
            "code": code, "name": "Xã Mới", "level": "COMMUNE", "parent_code": "52",
            "valid_from": "2025-07-01", "valid_to": valid_to, "successors": [], "history": []
        }))
    };
    moha.submit_batch(
        "moha.admin_units",
        vec![
            unit("21600", Value::Null),
            unit("21589", json!("2025-07-01")),
        ],
    )
    .unwrap();
    wait_until(
        Duration::from_secs(30),
        "the new commune to reach bca",
        || (rows(&bca) == seeded + 1).then_some(()),
    );
    bca.submit("bca.residents", resident("052079000005", "52", "21600"))
        .expect("the commune moha just published is accepted");
    wait_until(
        Duration::from_secs(30),
        "the retired commune to be refused",
        || {
            match bca.submit("bca.residents", resident("052079000006", "52", "21589")) {
                Err(SubmitError::Invalid(e)) => Some(e),
                Ok(_) => None, // not seen yet: the catalog update is in flight
                Err(e) => panic!("{e}"),
            }
        },
    );
    let why = problems(&bca, resident("052079000007", "52", "21589"));
    assert!(
        why[0].contains("retired on 2025-07-01 with no successor"),
        "{why:?}"
    );

    // A producer started now catches up before it accepts anything.
    let late = bus.publisher("late");
    assert_eq!(rows(&late), seeded + 1);
    late.submit("bca.residents", resident("052079000008", "52", "21600"))
        .expect("the new commune is known at start");
}
