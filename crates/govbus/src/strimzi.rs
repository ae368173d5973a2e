//! What `govbus topics` and `govbus acl plan` derive from `deploy/`, as
//! Strimzi resources (`KafkaTopic`, `KafkaUser` with simple authorization),
//! for a cluster run by the Strimzi operator on Kubernetes: the operator
//! creates the topics and grants from files kept in git.
//!
//! Pure: specs and ACLs in, YAML documents out. The field names and their
//! types are Strimzi's CRDs' (`install/cluster-operator/043-Crd-kafkatopic.yaml`
//! and `044-Crd-kafkauser.yaml` of strimzi/strimzi-kafka-operator); a test
//! checks every document against those schemas.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use govbus_kafka_client::acl::{Acl, Operation, Pattern, Resource};
use govbus_kafka_client::TopicSpec;
use serde_json::{json, Map, Value};

/// The CRDs' API versions govbus writes: `v1beta2` (Strimzi 0.22 to 0.49)
/// or `v1` (0.49 and later; 1.0 serves only it). Same fields in both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Api {
    /// `kafka.strimzi.io/v1beta2`.
    V1beta2,
    /// `kafka.strimzi.io/v1`.
    V1,
}

impl Api {
    fn api_version(self) -> &'static str {
        match self {
            Api::V1beta2 => "kafka.strimzi.io/v1beta2",
            Api::V1 => "kafka.strimzi.io/v1",
        }
    }
}

/// A name Kubernetes refuses, and why.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StrimziError {
    /// A Kafka user name that is not a Kubernetes resource name.
    #[error("user {0:?} cannot be a KafkaUser's name (Kubernetes wants lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253): rename it in deploy/ or the [acl] section")]
    UserName(String),
    /// A document could not be written as YAML.
    #[error("writing YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
    /// A cluster name that is not a label value.
    #[error("cluster {0:?} is not a Kubernetes label value (letters, digits, '-', '_', '.', at most 63)")]
    Cluster(String),
}

/// Whether `s` is a Kubernetes resource name (an RFC 1123 subdomain).
fn k8s_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// A KafkaTopic's name for `topic`: the topic's own when Kubernetes takes
/// it, else its lowercase letters and digits joined by '-' with a short
/// hash of the real name (which `spec.topicName` then carries), so that
/// two topics never share a resource.
fn topic_resource_name(topic: &str) -> String {
    if k8s_name(topic) {
        return topic.to_string();
    }
    let mut base = String::new();
    for c in topic.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' {
            base.push(c);
        } else if !base.ends_with('-') {
            base.push('-');
        }
    }
    let base = base.trim_matches(|c| c == '-' || c == '.');
    let hash = fnv1a(topic.as_bytes());
    let base: String = base.chars().take(200).collect();
    if base.is_empty() {
        format!("topic-{hash:016x}")
    } else {
        format!("{base}-{hash:08x}", hash = hash as u32)
    }
}

/// FNV-1a, 64 bits: a stable short hash (std's is not stable).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn metadata(name: &str, cluster: &str) -> Value {
    json!({ "name": name, "labels": { "strimzi.io/cluster": cluster } })
}

fn check_cluster(cluster: &str) -> Result<(), StrimziError> {
    let ok = !cluster.is_empty()
        && cluster.len() <= 63
        && cluster
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && cluster.starts_with(|c: char| c.is_ascii_alphanumeric())
        && cluster.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(StrimziError::Cluster(cluster.to_string()))
    }
}

/// A topic config's value as YAML: numbers as numbers, the rest as text.
fn config_value(v: &str) -> Value {
    v.parse::<i64>()
        .map(Value::from)
        .unwrap_or_else(|_| Value::from(v))
}

/// One `KafkaTopic` per spec, for the Strimzi cluster named `cluster`.
pub(crate) fn topics(
    specs: &[TopicSpec],
    cluster: &str,
    api: Api,
) -> Result<Vec<Value>, StrimziError> {
    check_cluster(cluster)?;
    Ok(specs
        .iter()
        .map(|s| {
            let name = topic_resource_name(&s.name);
            let mut spec = Map::new();
            if name != s.name {
                spec.insert("topicName".into(), Value::from(s.name.clone()));
            }
            spec.insert("partitions".into(), Value::from(s.partitions));
            // -1: the broker's default.replication.factor, which is what
            // Strimzi does when `replicas` is absent.
            if s.replication > 0 {
                spec.insert("replicas".into(), Value::from(s.replication));
            }
            let config: Map<String, Value> = s
                .configs
                .iter()
                .map(|(k, v)| (k.clone(), config_value(v)))
                .collect();
            if !config.is_empty() {
                spec.insert("config".into(), Value::Object(config));
            }
            json!({
                "apiVersion": api.api_version(),
                "kind": "KafkaTopic",
                "metadata": metadata(&name, cluster),
                "spec": spec,
            })
        })
        .collect())
}

fn resource_type(r: Resource) -> &'static str {
    match r {
        Resource::Topic => "topic",
        Resource::Group => "group",
        Resource::Cluster => "cluster",
        Resource::TransactionalId => "transactionalId",
    }
}

fn operation(o: Operation) -> &'static str {
    match o {
        Operation::Read => "Read",
        Operation::Write => "Write",
        Operation::Create => "Create",
        Operation::Describe => "Describe",
        Operation::DescribeConfigs => "DescribeConfigs",
        Operation::AlterConfigs => "AlterConfigs",
        Operation::Delete => "Delete",
        Operation::IdempotentWrite => "IdempotentWrite",
        Operation::All => "All",
    }
}

/// A user's operations on each resource (kind, pattern, name).
type Grants = BTreeMap<(Resource, Pattern, String), Vec<Operation>>;

/// One `KafkaUser` per user in `users` (SCRAM-SHA-512; the User Operator
/// keeps its password in a Secret of the same name), with the ACLs of
/// `acls` that are its, grouped by resource. A user with none gets an empty
/// list, so that the operator takes away what it had.
pub(crate) fn users(
    acls: &[Acl],
    users: &[String],
    cluster: &str,
    api: Api,
) -> Result<Vec<Value>, StrimziError> {
    check_cluster(cluster)?;
    let mut by_user: BTreeMap<String, Grants> = users
        .iter()
        .map(|u| {
            let name = u.strip_prefix("User:").unwrap_or(u).to_string();
            (name, BTreeMap::new())
        })
        .collect();
    for a in acls {
        let name = a.principal.strip_prefix("User:").unwrap_or(&a.principal);
        let ops = by_user
            .entry(name.to_string())
            .or_default()
            .entry((a.resource, a.pattern, a.name.clone()))
            .or_default();
        if !ops.contains(&a.operation) {
            ops.push(a.operation);
        }
    }
    by_user
        .into_iter()
        .map(|(user, grants)| {
            if !k8s_name(&user) {
                return Err(StrimziError::UserName(user));
            }
            let acls: Vec<Value> = grants
                .into_iter()
                .map(|((resource, pattern, name), mut ops)| {
                    ops.sort();
                    let mut r = Map::new();
                    r.insert("type".into(), Value::from(resource_type(resource)));
                    if resource != Resource::Cluster {
                        r.insert("name".into(), Value::from(name));
                        r.insert(
                            "patternType".into(),
                            Value::from(match pattern {
                                Pattern::Literal => "literal",
                                Pattern::Prefixed => "prefix",
                            }),
                        );
                    }
                    json!({
                        "type": "allow",
                        "resource": r,
                        "operations": ops.into_iter().map(operation).collect::<Vec<_>>(),
                    })
                })
                .collect();
            Ok(json!({
                "apiVersion": api.api_version(),
                "kind": "KafkaUser",
                "metadata": metadata(&user, cluster),
                "spec": {
                    "authentication": { "type": "scram-sha-512" },
                    "authorization": { "type": "simple", "acls": acls },
                },
            }))
        })
        .collect()
}

/// `docs` as one YAML stream (`---` before each), under a comment saying
/// where they come from.
pub(crate) fn yaml(header: &str, docs: &[Value]) -> Result<String, StrimziError> {
    let mut out = String::new();
    for l in header.lines() {
        let _ = writeln!(out, "# {l}");
    }
    for d in docs {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(d)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_name_kubernetes_refuses_keeps_its_name_in_topic_name() {
        assert_eq!(
            topic_resource_name("gov.bca.residents.v1"),
            "gov.bca.residents.v1"
        );
        let n = topic_resource_name("_govbus.subscriptions");
        assert!(
            n.starts_with("govbus.subscriptions-") && k8s_name(&n),
            "{n}"
        );
        assert_ne!(n, topic_resource_name("-govbus.subscriptions"));
        let docs = topics(
            &[TopicSpec::compacted("_govbus.subscriptions", 1)],
            "my-cluster",
            Api::V1beta2,
        )
        .unwrap();
        assert_eq!(docs[0]["spec"]["topicName"], "_govbus.subscriptions");
        assert_eq!(docs[0]["spec"]["config"]["cleanup.policy"], "compact");
        assert!(docs[0]["spec"].get("replicas").is_none());
        assert_eq!(
            docs[0]["metadata"]["labels"]["strimzi.io/cluster"],
            "my-cluster"
        );
    }

    #[test]
    fn a_user_gets_its_acls_grouped_by_resource_and_one_without_any_an_empty_list() {
        let acl = |p: &str, r, n: &str, o| Acl {
            principal: format!("User:{p}"),
            resource: r,
            pattern: Pattern::Literal,
            name: n.into(),
            operation: o,
        };
        let docs = users(
            &[
                acl("p52", Resource::Topic, "sub.p52.x", Operation::Read),
                acl("p52", Resource::Topic, "sub.p52.x", Operation::Describe),
                acl(
                    "bca",
                    Resource::Cluster,
                    "kafka-cluster",
                    Operation::IdempotentWrite,
                ),
            ],
            &["User:p52".into(), "User:p01".into()],
            "c",
            Api::V1,
        )
        .unwrap();
        let names: Vec<_> = docs.iter().map(|d| d["metadata"]["name"].clone()).collect();
        assert_eq!(names, ["bca", "p01", "p52"]);
        assert_eq!(
            docs[0]["spec"]["authorization"]["acls"][0]["resource"],
            json!({"type": "cluster"})
        );
        assert_eq!(docs[1]["spec"]["authorization"]["acls"], json!([]));
        assert_eq!(
            docs[2]["spec"]["authorization"]["acls"][0]["operations"],
            json!(["Read", "Describe"])
        );
        assert_eq!(docs[2]["apiVersion"], "kafka.strimzi.io/v1");
    }

    #[test]
    fn names_kubernetes_refuses_are_refused_with_a_reason() {
        let err = users(&[], &["User:Bad_Name".into()], "c", Api::V1).unwrap_err();
        assert!(err.to_string().contains("Bad_Name"), "{err}");
        assert!(topics(&[], "no spaces", Api::V1).is_err());
    }
}
