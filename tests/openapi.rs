//! The ingest API's OpenAPI document says what ingest does: real requests
//! to a producer, and its real answers, checked against the document it
//! serves at `/openapi.json` by a stock validator (Python's openapi-core).
//! What ingest accepts, the document accepts; what ingest refuses for its
//! schema, the document refuses; every answer, 202 or error, has the shape
//! the document gives.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;

use govbus_core::{Catalog, Topics};
use govbus_e2e::{ensure_python_client, runtime, seed_admin_units, start_registry, unique, Broker};
use govbus_producer::{open_store, Publisher};
use govbus_schema::RegistryClient;
use serde_json::{json, Value};

/// One request and the producer's answer.
struct Exchange {
    method: &'static str,
    path: String,
    body: Option<String>,
    status: u16,
    answer: Value,
}

fn call(base: &str, method: &'static str, path: &str, body: Option<String>) -> Exchange {
    let url = format!("{base}{path}");
    let res = match &body {
        Some(b) => ureq::request(method, &url).send_string(b),
        None => ureq::request(method, &url).call(),
    };
    let (status, answer) = match res {
        Ok(r) => (r.status(), r.into_json().unwrap()),
        Err(ureq::Error::Status(s, r)) => (s, r.into_json().unwrap()),
        Err(e) => panic!("{method} {path}: {e}"),
    };
    Exchange {
        method,
        path: path.to_string(),
        body,
        status,
        answer,
    }
}

fn resident(id: &str) -> Value {
    json!({
        "citizen_id": id, "full_name": "Trần Thị Lan", "date_of_birth": "1988-02-29",
        "sex": "FEMALE", "ethnicity": "Kinh",
        "permanent_address": {"province_code": "52", "commune_code": "21553", "street": null},
        "updated_at": 1_764_230_400_000i64
    })
}

#[test]
fn real_requests_and_answers_validate_against_the_served_openapi_document() {
    let broker = Broker::start();
    let kafka = broker.kafka();
    let rt = runtime();
    let topics = Topics::new(format!("{}.", unique("oa")));
    let (registry, _r) = start_registry(&rt, &kafka, &topics.schemas());
    let dir = tempfile::tempdir().unwrap();
    seed_admin_units(&kafka, &topics, &registry, dir.path());
    let store = open_store(dir.path().join("s.db").to_str().unwrap(), "").unwrap();
    let publisher = Arc::new(
        Publisher::new(
            &Catalog::builtin(),
            "bca",
            "t",
            &topics,
            &kafka,
            &RegistryClient::new(&registry),
            store,
        )
        .unwrap(),
    );
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    rt.spawn(govbus_producer::http::serve(listener, publisher));

    let spec: Value = ureq::get(&format!("{base}/openapi.json"))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(spec["openapi"], "3.1.0");
    let one = "/v1/datasets/bca.residents/changes";
    let batch = "/v1/datasets/bca.residents/changes/batch";
    let up = |data: &Value| Some(json!({"op": "upsert", "data": data}).to_string());

    // (exchange, whether the document should accept the request).
    let mut x: Vec<(Exchange, bool)> = Vec::new();
    // Accepted: an upsert; dates and timestamps in each written form; a
    // nullable field null, given, or left out; a delete; a batch.
    x.push((
        call(&base, "POST", one, up(&resident("052088000001"))),
        true,
    ));
    let mut r = resident("052088000002");
    r["updated_at"] = json!("2025-11-27T08:00:00+07:00");
    r["date_of_birth"] = json!(6_999);
    r["permanent_address"]["street"] = json!("12 Lê Lợi");
    x.push((call(&base, "POST", one, up(&r)), true));
    let mut r = resident("052088000003");
    r["permanent_address"]
        .as_object_mut()
        .unwrap()
        .remove("street");
    x.push((call(&base, "POST", one, up(&r)), true));
    x.push((
        call(
            &base,
            "POST",
            one,
            Some(json!({"op": "delete", "key": "052088000001"}).to_string()),
        ),
        true,
    ));
    x.push((
        call(
            &base,
            "POST",
            batch,
            Some(
                json!({"changes": [
                    {"op": "upsert", "data": resident("052088000004")},
                    {"op": "delete", "key": "052088000002"},
                ]})
                .to_string(),
            ),
        ),
        true,
    ));
    for (e, _) in &x {
        assert_eq!(e.status, 202, "{} {}: {}", e.method, e.path, e.answer);
    }
    // Refused by the schema: a symbol not in the enum, a field not in it.
    let mut bad = resident("052088000005");
    bad["sex"] = json!("F");
    bad["nickname"] = json!("Lan");
    let schema = call(&base, "POST", one, up(&bad));
    assert_eq!(schema.status, 422, "{}", schema.answer);
    assert_eq!(schema.answer["error"], "refused by the dataset's schema");
    x.push((schema, false));
    // Refused by a rule, and by a code check: valid for the schema.
    let mut bad = resident("05208800000");
    bad["full_name"] = json!("  ");
    let rule = call(&base, "POST", one, up(&bad));
    assert_eq!(rule.status, 422, "{}", rule.answer);
    assert_eq!(
        rule.answer["error"],
        "refused by the rules citizen_id_is_12_digits, full_name_not_blank"
    );
    x.push((rule, true));
    let mut bad = resident("052088000006");
    bad["permanent_address"]["commune_code"] = json!("99999");
    let codes = call(&base, "POST", one, up(&bad));
    assert_eq!(codes.status, 422, "{}", codes.answer);
    assert_eq!(
        codes.answer["error"],
        "refused by the code check of permanent_address.commune_code"
    );
    x.push((codes, true));
    // An unknown entity (404), and a body that is not JSON (400).
    let gone = call(
        &base,
        "POST",
        one,
        Some(json!({"op": "delete", "key": "099000000000"}).to_string()),
    );
    assert_eq!(gone.status, 404, "{}", gone.answer);
    x.push((gone, true));
    let broken = call(&base, "POST", one, Some("{\"op\": \"upsert\"".into()));
    assert_eq!(broken.status, 400, "{}", broken.answer);
    x.push((broken, false));
    let listed = call(&base, "GET", "/v1/datasets", None);
    assert_eq!(listed.status, 200);
    x.push((listed, true));

    let input = json!({
        "spec": spec,
        "exchanges": x.iter().map(|(e, _)| json!({
            "method": e.method, "path": e.path, "body": e.body,
            "status": e.status, "answer": e.answer,
        })).collect::<Vec<_>>(),
    });
    let mut child = Command::new(ensure_python_client())
        .arg(format!(
            "{}/python/openapi_check.py",
            env!("CARGO_MANIFEST_DIR")
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verdicts: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(verdicts.len(), x.len());
    for ((e, valid), v) in x.iter().zip(&verdicts) {
        let what = format!(
            "{} {} {:?} → {} {}",
            e.method, e.path, e.body, e.status, e.answer
        );
        assert_eq!(v["answer"], "ok", "the answer to {what}: {}", v["answer"]);
        if *valid {
            assert_eq!(v["request"], "ok", "the request {what}: {}", v["request"]);
        } else {
            assert_ne!(v["request"], "ok", "the document accepts {what}");
        }
    }
}
