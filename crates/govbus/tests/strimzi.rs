//! `govbus topics --strimzi` and `govbus acl plan --strimzi`: every
//! document they print follows Strimzi's CRDs (copied in `strimzi/`, see
//! its PROVENANCE.md) for the API version it names, and the topics are the
//! ones `govbus topics` makes a real broker hold, with the same partitions
//! and settings. (That the users' ACLs are those `govbus acl apply` leaves
//! on a secured broker is asserted in security.rs.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use govbus_e2e::{unique, Broker};
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs govbus; its stdout, or a panic with its stderr.
fn govbus(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_govbus"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("govbus runs");
    assert!(
        out.status.success(),
        "govbus {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Every document of a YAML stream, as JSON values.
fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde::Deserialize::deserialize(d).expect("a YAML document"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// The openAPIV3Schema of `version` in the CRD file `file`.
fn schema(file: &str, version: &str) -> Value {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/strimzi")
            .join(file),
    )
    .unwrap();
    let crd: Value = serde_yaml::from_str(&text).unwrap();
    crd["spec"]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == version)
        .unwrap_or_else(|| panic!("{file} serves {version}"))["schema"]["openAPIV3Schema"]
        .clone()
}

/// Every way `v` departs from `schema` (types, known properties, enums,
/// bounds, required fields), each with its path.
fn violations(v: &Value, schema: &Value, path: &str, out: &mut Vec<String>) {
    let ty = schema["type"].as_str().unwrap_or("");
    let type_ok = match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        _ => true,
    };
    if !type_ok {
        out.push(format!("{path}: {v} is not a {ty}"));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(v) {
            out.push(format!("{path}: {v} is not one of {allowed:?}"));
        }
    }
    if let (Some(min), Some(n)) = (schema["minimum"].as_f64(), v.as_f64()) {
        if n < min {
            out.push(format!("{path}: {n} < minimum {min}"));
        }
    }
    if let (Some(max), Some(n)) = (schema["maximum"].as_f64(), v.as_f64()) {
        if n > max {
            out.push(format!("{path}: {n} > maximum {max}"));
        }
    }
    if let Some(items) = v.as_array() {
        for (i, item) in items.iter().enumerate() {
            violations(item, &schema["items"], &format!("{path}[{i}]"), out);
        }
    }
    if let Some(fields) = v.as_object() {
        for r in schema["required"].as_array().into_iter().flatten() {
            if !fields.contains_key(r.as_str().unwrap_or("")) {
                out.push(format!("{path}: required {r} missing"));
            }
        }
        let open = schema["x-kubernetes-preserve-unknown-fields"] == true;
        for (k, field) in fields {
            let at = format!("{path}.{k}");
            if let Some(s) = schema["properties"].get(k) {
                violations(field, s, &at, out);
            } else if schema["additionalProperties"].is_object() {
                violations(field, &schema["additionalProperties"], &at, out);
            } else if !open && schema.get("properties").is_some() {
                out.push(format!("{at}: not a field of the schema"));
            }
        }
    }
}

/// A Kubernetes resource name (RFC 1123 subdomain).
fn k8s_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn check_all(docs: &[Value], kind: &str, crd: &str, api: &str) {
    assert!(!docs.is_empty());
    let schema = schema(crd, api);
    for d in docs {
        assert_eq!(d["apiVersion"], format!("kafka.strimzi.io/{api}"), "{d}");
        assert_eq!(d["kind"], kind, "{d}");
        let name = d["metadata"]["name"].as_str().unwrap_or("");
        assert!(k8s_name(name), "{name:?} is not a Kubernetes name");
        assert_eq!(d["metadata"]["labels"]["strimzi.io/cluster"], "my-cluster");
        let mut out = Vec::new();
        violations(d, &schema, "", &mut out);
        assert!(out.is_empty(), "{name} departs from {crd} {api}: {out:#?}");
    }
}

#[test]
fn every_document_follows_strimzis_crds_in_both_api_versions() {
    let platform = "deploy/agencies/platform.toml";
    for api in ["v1beta2", "v1"] {
        let flags = ["--strimzi", "my-cluster", "--strimzi-api", api];
        let topics = documents(&govbus(
            &[&["topics", "-c", platform][..], &flags[..]].concat(),
        ));
        check_all(&topics, "KafkaTopic", "043-Crd-kafkatopic.yaml", api);
        // A name Kubernetes refuses is kept in topicName.
        let control = topics
            .iter()
            .find(|d| d["spec"]["topicName"] == "_govbus.subscriptions")
            .expect("the control topic, by its topicName");
        assert_ne!(control["metadata"]["name"], "_govbus.subscriptions");

        let users = documents(&govbus(
            &[&["acl", "plan", "-c", platform][..], &flags[..]].concat(),
        ));
        check_all(&users, "KafkaUser", "044-Crd-kafkauser.yaml", api);
        let names: BTreeSet<&str> = users
            .iter()
            .filter_map(|d| d["metadata"]["name"].as_str())
            .collect();
        for who in ["bca", "moha", "p52", "p92", "router", "registry"] {
            assert!(names.contains(who), "no KafkaUser {who}: {names:?}");
        }
        for u in &users {
            assert_eq!(u["spec"]["authentication"]["type"], "scram-sha-512");
            assert_eq!(u["spec"]["authorization"]["type"], "simple");
        }
    }
}

/// The broker's settings of `topic` that are not its defaults.
fn settings(admin: &AdminClient<DefaultClientContext>, topic: &str) -> BTreeMap<String, String> {
    let res = futures_executor::block_on(admin.describe_configs(
        [&ResourceSpecifier::Topic(topic)],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
    ))
    .unwrap();
    res.into_iter()
        .next()
        .unwrap()
        .unwrap()
        .entries
        .into_iter()
        .filter(|e| !e.is_default)
        .filter_map(|e| Some((e.name, e.value?)))
        .collect()
}

#[test]
fn the_kafka_topics_are_those_govbus_topics_makes_the_broker_hold() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("{}.", unique("s"));
    let cfg = dir.path().join("platform.toml");
    std::fs::write(
        &cfg,
        format!(
            "deploy = \"{}\"\nschemas = \"{}\"\n[router]\nregistry = \"http://127.0.0.1:1\"\n\
             topic_prefix = \"{prefix}\"\n[router.kafka]\nbootstrap = \"{}\"\n",
            root().join("deploy").display(),
            root().join("schemas").display(),
            broker.bootstrap
        ),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    let docs = documents(&govbus(&["topics", "-c", cfg, "--strimzi", "my-cluster"]));
    govbus(&["topics", "-c", cfg]);

    let kafka = govbus_kafka_client::KafkaConfig::new(&broker.bootstrap);
    let probe: rdkafka::consumer::BaseConsumer =
        kafka.consumer(&unique("probe-")).create().unwrap();
    let metadata =
        rdkafka::consumer::Consumer::fetch_metadata(&probe, None, Duration::from_secs(10)).unwrap();
    let held: BTreeMap<String, usize> = metadata
        .topics()
        .iter()
        .filter(|t| t.name().starts_with(&prefix))
        .map(|t| (t.name().to_string(), t.partitions().len()))
        .collect();
    let admin: AdminClient<DefaultClientContext> = kafka.client().create().unwrap();
    let mut described = BTreeMap::new();
    for d in &docs {
        let spec = &d["spec"];
        let name = spec["topicName"]
            .as_str()
            .or(d["metadata"]["name"].as_str())
            .unwrap()
            .to_string();
        let config: BTreeMap<String, String> = spec["config"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| {
                let v = v
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string());
                (k.clone(), v)
            })
            .collect();
        let on_broker = settings(&admin, &name);
        for (k, v) in &config {
            assert_eq!(on_broker.get(k), Some(v), "{name}'s {k}: {on_broker:?}");
        }
        described.insert(name, spec["partitions"].as_u64().unwrap() as usize);
    }
    assert_eq!(described, held, "the KafkaTopics and the broker's topics");
}

/// The schema check itself catches what Strimzi would refuse: an unknown
/// field, a value outside an enum, a missing required field.
#[test]
fn the_schema_check_catches_what_strimzi_would_refuse() {
    let schema = schema("044-Crd-kafkauser.yaml", "v1beta2");
    let bad: Value = serde_json::json!({
        "apiVersion": "kafka.strimzi.io/v1beta2",
        "kind": "KafkaUser",
        "metadata": {"name": "x"},
        "spec": {
            "authentication": {"type": "scram-sha-256"},
            "authorization": {"type": "simple", "acls": [
                {"resource": {"type": "topic", "name": "t", "patternType": "prefixed"},
                 "operations": ["Read"], "colour": "red"}
            ]},
        },
    });
    let mut out = Vec::new();
    violations(&bad, &schema, "", &mut out);
    let text = out.join("\n");
    assert!(text.contains(".spec.authentication.type"), "{text}");
    assert!(text.contains("patternType"), "{text}");
    assert!(text.contains("colour: not a field"), "{text}");
    let mut out = Vec::new();
    violations(
        &serde_json::json!({"spec": {"authorization": {"type": "simple"}}}),
        &schema,
        "",
        &mut out,
    );
    assert!(
        out.iter().any(|v| v.contains("required \"acls\"")),
        "{out:?}"
    );
}
