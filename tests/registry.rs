//! The schema registry on a real broker: ids are stable, survive a restart,
//! and incompatible schemas are refused with Confluent's codes.

use govbus_e2e::{init_logs, runtime, start_registry, unique, Broker};
use govbus_schema::{RegistryClient, RegistryError};

const V1: &str =
    r#"{"type":"record","name":"Unit","namespace":"t","fields":[{"name":"code","type":"string"}]}"#;
const V2_OPTIONAL: &str = r#"{"type":"record","name":"Unit","namespace":"t","fields":[{"name":"code","type":"string"},{"name":"name","type":["null","string"],"default":null}]}"#;
const V2_REQUIRED: &str = r#"{"type":"record","name":"Unit","namespace":"t","fields":[{"name":"code","type":"string"},{"name":"level","type":"int"}]}"#;

#[test]
fn ids_are_stable_survive_restart_and_incompatible_is_409() {
    init_logs();
    let broker = Broker::start();
    let rt = runtime();
    let topic = unique("schemas_");
    let subject = format!("{}-value", unique("gov.t."));
    let (url, task) = start_registry(&rt, &broker.kafka(), &topic);
    let c = RegistryClient::new(&url);

    let id1 = c.register(&subject, V1).unwrap();
    assert_eq!(
        c.register(&subject, V1).unwrap(),
        id1,
        "same schema, same id"
    );
    let id2 = c.register(&subject, V2_OPTIONAL).unwrap();
    assert_ne!(id1, id2);

    match c.register(&subject, V2_REQUIRED) {
        Err(RegistryError::Api {
            status: 409,
            error_code: 409,
            message,
        }) => {
            assert!(message.contains("incompatible"), "{message}")
        }
        other => panic!("expected 409, got {other:?}"),
    }
    match c.latest("no-such-subject") {
        Err(RegistryError::Api {
            status: 404,
            error_code: 40401,
            ..
        }) => {}
        other => panic!("expected 40401, got {other:?}"),
    }
    match c.register(&subject, "{\"type\": \"nosuchtype\"}") {
        Err(RegistryError::Api {
            status: 422,
            error_code: 42201,
            ..
        }) => {}
        other => panic!("expected 42201, got {other:?}"),
    }

    // Restart: a new instance reads everything back from the topic.
    task.abort();
    let _ = rt.block_on(task);
    let (url2, _task2) = start_registry(&rt, &broker.kafka(), &topic);
    assert_ne!(url, url2);
    let c2 = RegistryClient::new(&url2);
    assert_eq!(
        c2.register(&subject, V1).unwrap(),
        id1,
        "id kept across restart"
    );
    assert_eq!(c2.register(&subject, V2_OPTIONAL).unwrap(), id2);
    let latest = c2.latest(&subject).unwrap();
    assert_eq!((latest.version, latest.id), (2, id2));
    assert!(c2.schema_text(id1).unwrap().contains("\"code\""));
    // A new schema after the restart gets a fresh id, not a reused one.
    let other = format!("{}-value", unique("gov.t."));
    let id3 = c2
        .register(
            &other,
            r#"{"type":"record","name":"X","fields":[{"name":"a","type":"long"}]}"#,
        )
        .unwrap();
    assert!(id3 > id2, "{id3} > {id2}");
}

/// One HTTP call: (status, JSON body).
fn call(method: &str, url: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let req =
        ureq::request(method, url).set("content-type", "application/vnd.schemaregistry.v1+json");
    let res = match body {
        Some(b) => req.send_string(b),
        None => req.call(),
    };
    let resp = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let status = resp.status();
    let text = resp.into_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

fn schema_body(schema: &str) -> String {
    serde_json::json!({ "schema": schema }).to_string()
}

fn expect_error(got: (u16, serde_json::Value), status: u16, code: u64, what: &str) {
    assert_eq!(got.0, status, "{what}: {:?}", got.1);
    assert_eq!(got.1["error_code"], code, "{what}: {:?}", got.1);
    assert!(
        got.1["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: a readable message: {:?}",
        got.1
    );
}

/// Bad input gets Confluent's status, error_code and a message, and the
/// registry keeps serving; deletes, modes and references behave as
/// Confluent's do.
#[test]
fn bad_input_deletes_modes_and_references_over_http() {
    init_logs();
    let broker = Broker::start();
    let rt = runtime();
    let (url, _task) = start_registry(&rt, &broker.kafka(), &unique("schemas_"));
    let subject = unique("gov.t.http-");
    let versions = format!("{url}/subjects/{subject}/versions");

    let bad_schemas = [
        ("{not json", "a schema that isn't JSON"),
        (r#"{"type":"nosuchtype"}"#, "an unknown type"),
        (
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int","default":"one"}]}"#,
            "a default that does not match its type",
        ),
        (
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"},{"name":"a","type":"long"}]}"#,
            "a duplicate field",
        ),
    ];
    for (schema, what) in bad_schemas {
        expect_error(
            call("POST", &versions, Some(&schema_body(schema))),
            422,
            42201,
            what,
        );
    }
    expect_error(
        call(
            "POST",
            &format!("{url}/subjects/bad%01subject/versions"),
            Some(&schema_body(V1)),
        ),
        422,
        42208,
        "a subject with control characters",
    );
    let big = |bytes: usize| {
        format!(
            r#"{{"type":"record","name":"Big","doc":"{}","fields":[]}}"#,
            "x".repeat(bytes)
        )
    };
    expect_error(
        call("POST", &versions, Some(&schema_body(&big(2 << 20)))),
        422,
        42209,
        "a 2 MB schema",
    );
    // Past the body limit (4 MiB unless `max_body_bytes` says otherwise),
    // refused before it is parsed.
    expect_error(
        call("POST", &versions, Some(&schema_body(&big(10 << 20)))),
        413,
        413,
        "a 10 MB body, over the 4 MiB limit",
    );
    // axum's own answers take Confluent's shape too: status as error code.
    expect_error(
        call("GET", &format!("{url}/no/such/path"), None),
        404,
        404,
        "an unknown path",
    );
    expect_error(
        call("PATCH", &versions, Some(&schema_body(V1))),
        405,
        405,
        "a method the path does not take",
    );

    // Booleans as Confluent reads them: Python's `False` is false.
    let (status, _) = call(
        "GET",
        &format!("{url}/subjects?deleted=False&subjectPrefix=x"),
        None,
    );
    assert_eq!(status, 200, "deleted=False is a boolean");
    let with_missing_ref = serde_json::json!({
        "schema": r#"{"type":"record","name":"P","fields":[{"name":"home","type":"gov.Address"}]}"#,
        "references": [{"name": "gov.Address", "subject": "no-such-subject", "version": 1}],
    });
    expect_error(
        call("POST", &versions, Some(&with_missing_ref.to_string())),
        422,
        42201,
        "a reference to a missing schema",
    );
    expect_error(
        call(
            "PUT",
            &format!("{url}/config/{subject}"),
            Some(r#"{"compatibility":"SIDEWAYS"}"#),
        ),
        422,
        42203,
        "a compatibility level that doesn't exist",
    );
    expect_error(
        call(
            "PUT",
            &format!("{url}/mode/{subject}"),
            Some(r#"{"mode":"WRITEONLY"}"#),
        ),
        422,
        42204,
        "a mode that doesn't exist",
    );
    expect_error(
        call("POST", &versions, Some("[1,2")),
        400,
        400,
        "a body that isn't JSON",
    );
    // Still serving.
    assert_eq!(call("GET", &format!("{url}/subjects"), None).0, 200);

    // Register v1, v2; ids know their versions.
    let (s, b) = call("POST", &versions, Some(&schema_body(V1)));
    assert_eq!(s, 200, "{b}");
    let id1 = b["id"].as_u64().unwrap();
    let (_, b) = call("POST", &versions, Some(&schema_body(V2_OPTIONAL)));
    let id2 = b["id"].as_u64().unwrap();
    let (_, b) = call("GET", &format!("{url}/schemas/ids/{id1}/versions"), None);
    assert_eq!(b, serde_json::json!([{"subject": subject, "version": 1}]));
    let (_, b) = call("GET", &format!("{url}/schemas/ids/{id2}/subjects"), None);
    assert_eq!(b, serde_json::json!([subject]));
    assert_eq!(
        call("GET", &format!("{url}/schemas/types"), None).1,
        serde_json::json!(["AVRO"])
    );

    // References: a schema using Unit from this subject's version 2.
    let user = unique("gov.t.user-");
    let with_ref = serde_json::json!({
        "schema": r#"{"type":"record","name":"Office","namespace":"t","fields":[{"name":"unit","type":"t.Unit"}]}"#,
        "references": [{"name": "t.Unit", "subject": subject, "version": 2}],
    });
    let (s, b) = call(
        "POST",
        &format!("{url}/subjects/{user}/versions"),
        Some(&with_ref.to_string()),
    );
    assert_eq!(s, 200, "{b}");
    let office = b["id"].as_u64().unwrap();
    let (_, b) = call("GET", &format!("{versions}/2/referencedby"), None);
    assert_eq!(b, serde_json::json!([office]));
    let (_, b) = call("GET", &format!("{url}/schemas/ids/{office}"), None);
    assert_eq!(b["references"][0]["subject"], subject.as_str());
    expect_error(
        call("DELETE", &format!("{versions}/2"), None),
        422,
        42206,
        "deleting a referenced version",
    );

    // Read-only mode refuses writes.
    assert_eq!(
        call(
            "PUT",
            &format!("{url}/mode/{subject}"),
            Some(r#"{"mode":"READONLY"}"#)
        )
        .0,
        200
    );
    expect_error(
        call("POST", &versions, Some(&schema_body(V2_REQUIRED))),
        422,
        42205,
        "read-only",
    );
    assert_eq!(
        call("DELETE", &format!("{url}/mode/{subject}"), None).0,
        200
    );

    // Deletes: soft first, then permanent.
    expect_error(
        call("DELETE", &format!("{versions}/1?permanent=true"), None),
        404,
        40407,
        "permanent before soft",
    );
    assert_eq!(
        call("DELETE", &format!("{versions}/1"), None),
        (200, serde_json::json!(1))
    );
    expect_error(
        call("DELETE", &format!("{versions}/1"), None),
        404,
        40406,
        "soft twice",
    );
    assert_eq!(call("GET", &versions, None).1, serde_json::json!([2]));
    assert_eq!(
        call("GET", &format!("{versions}?deleted=true"), None).1,
        serde_json::json!([1, 2])
    );
    assert_eq!(
        call("GET", &format!("{versions}/1?deleted=true"), None).0,
        200
    );
    assert_eq!(
        call("DELETE", &format!("{versions}/1?permanent=true"), None).0,
        200
    );
    expect_error(
        call("GET", &format!("{versions}/1?deleted=true"), None),
        404,
        40402,
        "gone",
    );
    // The subject: its user first, then it.
    assert_eq!(
        call("DELETE", &format!("{url}/subjects/{user}"), None).0,
        200
    );
    let (s, b) = call("DELETE", &format!("{url}/subjects/{subject}"), None);
    assert_eq!((s, b), (200, serde_json::json!([2])));
    let (_, listed) = call("GET", &format!("{url}/subjects"), None);
    assert!(!listed
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s == subject.as_str()));
    let (_, listed) = call("GET", &format!("{url}/subjects?deleted=true"), None);
    assert!(listed
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s == subject.as_str()));
    expect_error(
        call("DELETE", &format!("{url}/subjects/{subject}"), None),
        404,
        40404,
        "soft-deleting twice",
    );
    assert_eq!(
        call(
            "DELETE",
            &format!("{url}/subjects/{subject}?permanent=true"),
            None
        )
        .0,
        200
    );
    expect_error(
        call("GET", &versions, None),
        404,
        40401,
        "permanently deleted",
    );
}

/// Two instances on one log, written at once: no two different schemas
/// ever share an id, and each serves what the other registered.
#[test]
fn two_instances_never_share_an_id() {
    init_logs();
    let broker = Broker::start();
    let rt = runtime();
    let topic = unique("schemas_");
    let (a, _ta) = start_registry(&rt, &broker.kafka(), &topic);
    let (b, _tb) = start_registry(&rt, &broker.kafka(), &topic);
    // NONE, so that unrelated schemas can follow each other in one subject.
    assert_eq!(
        call(
            "PUT",
            &format!("{a}/config"),
            Some(r#"{"compatibility":"NONE"}"#)
        )
        .0,
        200
    );
    govbus_e2e::wait_until(
        std::time::Duration::from_secs(10),
        "b sees the level",
        || {
            (call("GET", &format!("{b}/config"), None).1["compatibilityLevel"] == "NONE")
                .then_some(())
        },
    );
    let shared = unique("gov.t.shared-");
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let url = if w % 2 == 0 { a.clone() } else { b.clone() };
            let own = unique("gov.t.own-");
            let shared = shared.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                for i in 0..12 {
                    let field = format!("w{w}_{i}");
                    let schema = format!(
                        r#"{{"type":"record","name":"S","fields":[{{"name":"{field}","type":"string"}}]}}"#
                    );
                    // Half into a subject every writer uses (same versions
                    // claimed at once), half into the writer's own.
                    let subject = if i % 2 == 0 { &shared } else { &own };
                    let (s, body) = call(
                        "POST",
                        &format!("{url}/subjects/{subject}/versions"),
                        Some(&schema_body(&schema)),
                    );
                    assert_eq!(s, 200, "{body}");
                    got.push((field, body["id"].as_u64().unwrap()));
                }
                got
            })
        })
        .collect();
    let all: Vec<(String, u64)> = writers
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let mut ids: Vec<u64> = all.iter().map(|(_, id)| *id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(
        ids.len(),
        all.len(),
        "48 different schemas, 48 different ids"
    );
    // Both instances serve every id with the schema it was given for.
    let mut lags = Vec::new();
    for (field, id) in &all {
        for url in [&a, &b] {
            let t = std::time::Instant::now();
            let mut text = String::new();
            govbus_e2e::wait_until(
                std::time::Duration::from_secs(10),
                "the id is served",
                || {
                    let (s, body) = call("GET", &format!("{url}/schemas/ids/{id}"), None);
                    text = body["schema"].as_str().unwrap_or_default().to_string();
                    (s == 200).then_some(())
                },
            );
            lags.push(t.elapsed());
            assert!(
                text.contains(&format!("\"{field}\"")),
                "id {id} on {url}: {text}"
            );
        }
    }
    // Every version of the shared subject holds a distinct id on both.
    let va = call("GET", &format!("{a}/subjects/{shared}/versions"), None).1;
    let vb = call("GET", &format!("{b}/subjects/{shared}/versions"), None).1;
    assert_eq!(va, vb);
    assert_eq!(va.as_array().unwrap().len(), 24, "{va}");
    lags.sort();
    println!("served by both instances: slowest after {:?}", lags.last());
}

/// A schema registered on one instance is served by the other within a second.
#[test]
fn a_registration_is_served_by_the_other_instance_within_a_second() {
    init_logs();
    let broker = Broker::start();
    let rt = runtime();
    let topic = unique("schemas_");
    let (a, _ta) = start_registry(&rt, &broker.kafka(), &topic);
    let (b, _tb) = start_registry(&rt, &broker.kafka(), &topic);
    let mut slowest = std::time::Duration::ZERO;
    for i in 0..10 {
        let subject = unique("gov.t.seen-");
        let schema =
            format!(r#"{{"type":"record","name":"S","fields":[{{"name":"f{i}","type":"int"}}]}}"#);
        let (s, body) = call(
            "POST",
            &format!("{a}/subjects/{subject}/versions"),
            Some(&schema_body(&schema)),
        );
        assert_eq!(s, 200, "{body}");
        let id = body["id"].as_u64().unwrap();
        let t = std::time::Instant::now();
        while call("GET", &format!("{b}/schemas/ids/{id}"), None).0 != 200 {
            assert!(
                t.elapsed() < std::time::Duration::from_secs(1),
                "id {id} not on the other instance after 1 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        slowest = slowest.max(t.elapsed());
    }
    println!("slowest propagation: {slowest:?}");
}

/// A registry running with govbus's subscription guard refuses a new
/// version of a dataset's schema that breaks a subscription in force (on
/// the control topic, not merely in the files), naming it and the field,
/// and accepts one that adds an optional field.
#[test]
fn a_version_that_breaks_a_subscription_is_refused_naming_it() {
    init_logs();
    let broker = Broker::start();
    let rt = runtime();
    let prefix = format!("{}.", unique("t"));
    let topics = govbus_core::Topics::new(&prefix);
    let catalog = std::sync::Arc::new(govbus_core::Catalog::builtin());
    let cfg = govbus_registry::RegistryConfig {
        kafka: broker.kafka(),
        topic: topics.schemas(),
        replication: 1,
        listen: "127.0.0.1:0".parse().unwrap(),
        topic_prefix: prefix.clone(),
        tls: None,
        auth: None,
        import: false,
        max_body_bytes: None,
    };
    // Only p52's subscription is in force: p92's is in the files alone.
    let mut in_force = govbus_core::Catalog::builtin();
    in_force
        .subscriptions
        .retain(|s| s.file.subscriber == "p52");
    govbus_e2e::apply_subscriptions(&broker.kafka(), &prefix, &in_force, false);
    let follower = govbus_router::control::Follower::start(
        &broker.kafka(),
        &topics.subscriptions(),
        std::time::Duration::from_secs(60),
    )
    .unwrap();
    let guard =
        govbus_router::guard::SubscriptionGuard::live(catalog.clone(), topics.clone(), follower);
    let running = rt
        .block_on(govbus_registry::start_with(
            &cfg,
            Some(std::sync::Arc::new(guard)),
        ))
        .unwrap();
    let url = format!("http://{}", running.addr);
    let ds: govbus_core::DatasetId = "bca.residents".parse().unwrap();
    let subject = govbus_core::topics::value_subject(&topics.central(&ds, 1));
    let entity = catalog.dataset(&ds).unwrap().entity_schema.clone();
    let envelope = |entity: &serde_json::Value| {
        govbus_schema::envelope::envelope_schema(&entity.to_string()).unwrap()
    };
    let v1: serde_json::Value = serde_json::from_str(&entity).unwrap();
    let versions = format!("{url}/subjects/{subject}/versions");
    assert_eq!(
        call("POST", &versions, Some(&schema_body(&envelope(&v1)))).0,
        200
    );

    // Renaming the commune code (with a default, so Avro alone would allow
    // it) breaks p52's filter; p92's subscription is not in force.
    let mut renamed = v1.clone();
    renamed["fields"][5]["type"]["fields"][1] =
        serde_json::json!({"name": "commune", "type": "string", "default": ""});
    let (s, b) = call("POST", &versions, Some(&schema_body(&envelope(&renamed))));
    assert_eq!((s, b["error_code"].as_u64()), (409, Some(409)), "{b}");
    let msg = b["message"].as_str().unwrap();
    for needle in ["p52/bca.residents", "permanent_address.commune_code"] {
        assert!(msg.contains(needle), "{needle} not in {msg}");
    }
    assert!(!msg.contains("p92/bca.residents"), "{msg}");
    // An optional field is fine.
    let mut v2 = v1.clone();
    v2["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "phone", "type": ["null", "string"], "default": null}));
    let (s, b) = call("POST", &versions, Some(&schema_body(&envelope(&v2))));
    assert_eq!(s, 200, "{b}");
}

/// A dataset's contract travels with its schema: the publisher registers
/// Confluent `metadata` (owner, key, tags) and a `ruleSet` of CEL domain
/// rules, which any Confluent-aware tool reads from the registry; a client
/// registering the same schema without them gets the same version.
#[test]
fn contracts_are_registered_with_the_schema() {
    let bus = govbus_e2e::Bus::start();
    let publisher = bus.publisher("contracts");
    let topic = publisher
        .topics()
        .into_iter()
        .find(|t| t.contains("residents"))
        .unwrap();
    let subject = govbus_core::topics::value_subject(&topic);
    let (s, latest) = call(
        "GET",
        &format!("{}/subjects/{subject}/versions/latest", bus.registry),
        None,
    );
    assert_eq!(s, 200, "{latest}");
    assert_eq!(latest["metadata"]["properties"]["owner"], "bca");
    assert_eq!(latest["metadata"]["tags"]["ethnicity"][0], "SENSITIVE");
    assert_eq!(
        latest["metadata"]["properties"]["lookup.admin_units"],
        "moha.admin_units"
    );
    let names: Vec<&str> = latest["ruleSet"]["domainRules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    for rule in [
        "citizen_id_is_12_digits",
        "date_of_birth_in_range",
        "full_name_not_blank",
        "codes_are_well_formed",
    ] {
        assert!(names.contains(&rule), "{rule} not in {names:?}");
    }
    assert_eq!(latest["ruleSet"]["domainRules"][0]["type"], "CEL");
    // The same schema without a contract (what a plain client sends) is the
    // same version, not a new one.
    let id = latest["id"].as_u64().unwrap();
    let text = latest["schema"].as_str().unwrap();
    let (s, b) = call(
        "POST",
        &format!("{}/subjects/{subject}/versions", bus.registry),
        Some(&schema_body(text)),
    );
    assert_eq!((s, b["id"].as_u64()), (200, Some(id)), "{b}");
    let (_, versions) = call(
        "GET",
        &format!("{}/subjects/{subject}/versions", bus.registry),
        None,
    );
    assert_eq!(versions, serde_json::json!([1]));
}
