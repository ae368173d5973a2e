//! The ACLs the bus needs, derived from the catalog: a pure function,
//! tested without Kafka; [`super::AclAdmin`] compares and applies them.

use super::{Acl, Operation, Pattern, Resource};
use govbus_core::{Catalog, Topics};

/// Who the platform's own agents and operators are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principals {
    /// The router's user name.
    pub router: String,
    /// The registry's user name.
    pub registry: String,
    /// Operators' user names (`govbus subscriptions apply`, DLQ replay,
    /// status and lag).
    pub operators: Vec<String>,
    /// The router's consumer group (its transactional ids derive from it).
    pub router_group: String,
}

impl Principals {
    /// The names `govbus up` and the tests give the platform's users:
    /// `router`, `registry` and one operator, `ops`; the router in `router_group`.
    pub fn standard(router_group: &str) -> Self {
        Self {
            router: "router".into(),
            registry: "registry".into(),
            operators: vec!["ops".into()],
            router_group: router_group.into(),
        }
    }
}

fn user(name: &str) -> String {
    format!("User:{name}")
}

/// Collects ACLs for one principal.
struct Grants<'a> {
    out: &'a mut Vec<Acl>,
    principal: String,
}

impl Grants<'_> {
    fn add(&mut self, resource: Resource, pattern: Pattern, name: &str, ops: &[Operation]) {
        for op in ops {
            self.out.push(Acl {
                principal: self.principal.clone(),
                resource,
                pattern,
                name: name.to_string(),
                operation: *op,
            });
        }
    }
    fn topic(&mut self, pattern: Pattern, name: &str, ops: &[Operation]) {
        self.add(Resource::Topic, pattern, name, ops);
    }
    fn group(&mut self, pattern: Pattern, name: &str) {
        self.add(
            Resource::Group,
            pattern,
            name,
            &[Operation::Read, Operation::Describe],
        );
    }
    /// An idempotent producer.
    fn idempotent(&mut self) {
        self.add(
            Resource::Cluster,
            Pattern::Literal,
            "kafka-cluster",
            &[Operation::IdempotentWrite],
        );
    }
    /// A reader that assigns partitions itself under a random group name
    /// starting with `prefix` (librdkafka still looks the group up).
    fn scratch_group(&mut self, prefix: &str) {
        self.group(Pattern::Prefixed, prefix);
    }
}

use Operation::{AlterConfigs, Create, Describe, DescribeConfigs, Read, Write};
/// A topic an agent writes and creates, setting its configs, and does not
/// read back (DLQs, receipts: operators and ministries read those).
const SEND: &[Operation] = &[Write, Create, Describe, DescribeConfigs, AlterConfigs];
/// A topic an agent keeps: it writes, creates and reads it.
const OWN: &[Operation] = &[Write, Create, Read, Describe, DescribeConfigs, AlterConfigs];
/// A topic an agent reads.
const READ: &[Operation] = &[Read, Describe];

/// Every ACL the catalog and `p` imply, at `now_ms` (an expired
/// subscription grants nothing), sorted and without duplicates.
pub fn plan(catalog: &Catalog, topics: &Topics, p: &Principals, now_ms: i64) -> Vec<Acl> {
    let mut out = Vec::new();
    let prefix = topics.prefix();
    // Ministries: their own central topics and ingest DLQ, the datasets
    // their rules look codes up in.
    for d in catalog.datasets.values() {
        let mut g = Grants {
            out: &mut out,
            principal: user(&d.id.owner),
        };
        g.topic(
            Pattern::Prefixed,
            &format!("{prefix}gov.{}.", d.id.owner),
            OWN,
        );
        g.topic(Pattern::Literal, &topics.dlq("ingest", &d.id.owner), SEND);
        // Its relay writes in transactions under ids of its own.
        g.add(
            Resource::TransactionalId,
            Pattern::Prefixed,
            &format!("govbus-relay-{}-", d.id.owner),
            &[Write, Describe],
        );
        g.idempotent();
        for prefix in ["govbus-lookup-", "govbus-relay-recover-", "govbus-reader-"] {
            g.scratch_group(prefix);
        }
        for l in d.file.lookups.values() {
            if let Some(ld) = catalog.dataset(l) {
                g.topic(
                    Pattern::Literal,
                    &topics.central(&ld.id, ld.file.major),
                    READ,
                );
            }
        }
    }
    // The router: every central topic in, every view and route DLQ out,
    // its group and transactional ids, the control and view-state topics.
    {
        let mut g = Grants {
            out: &mut out,
            principal: user(&p.router),
        };
        g.topic(Pattern::Prefixed, &format!("{prefix}gov."), READ);
        // A central topic's replay topic (`govbus dlq replay` of a route
        // DLQ) is read like the topic, and created by the router.
        for d in catalog.datasets.values() {
            let central = topics.central(&d.id, d.file.major);
            g.topic(Pattern::Literal, &Topics::replay(&central), OWN);
        }
        g.topic(Pattern::Prefixed, &format!("{prefix}sub."), SEND);
        g.topic(Pattern::Prefixed, &format!("{prefix}dlq.route."), SEND);
        g.topic(Pattern::Literal, &topics.view_state(), OWN);
        g.topic(
            Pattern::Literal,
            &topics.subscriptions(),
            &[Read, Describe, Create, DescribeConfigs, AlterConfigs],
        );
        g.group(Pattern::Literal, &p.router_group);
        g.add(
            Resource::TransactionalId,
            Pattern::Prefixed,
            &format!("govbus-router-{}-", p.router_group),
            &[Write, Describe],
        );
        g.idempotent();
        for prefix in ["govbus-map-", "govbus-control-", "govbus-reader-"] {
            g.scratch_group(prefix);
        }
    }
    // The registry: its log.
    {
        let mut g = Grants {
            out: &mut out,
            principal: user(&p.registry),
        };
        g.topic(Pattern::Literal, &topics.schemas(), OWN);
        g.idempotent();
        g.scratch_group("govbus-registry-reader-");
        // Its guard follows the subscriptions in force.
        g.topic(
            Pattern::Literal,
            &topics.subscriptions(),
            &[Read, Describe, Create, DescribeConfigs, AlterConfigs],
        );
        g.scratch_group("govbus-control-");
    }
    // Provinces: each live subscription's view, their own group, reports
    // and DLQ, and its own receipts topic.
    let mut subscribers: Vec<&str> = Vec::new();
    for s in &catalog.subscriptions {
        let sub = s.file.subscriber.as_str();
        if !subscribers.contains(&sub) {
            subscribers.push(sub);
        }
        let expired = matches!(s.file.expires_ms(), Ok(Some(ms)) if ms <= now_ms);
        let Some(d) = catalog.dataset(&s.file.dataset) else {
            continue;
        };
        if expired {
            continue;
        }
        let view = topics.view(sub, &d.id, d.file.major);
        let mut g = Grants {
            out: &mut out,
            principal: user(sub),
        };
        g.topic(Pattern::Literal, &view, READ);
        // `govbus dlq replay` writes a view's repaired records beside it;
        // the province applies them like the view's own, and creates the
        // topic so that it exists before any replay.
        g.topic(
            Pattern::Literal,
            &Topics::replay(&view),
            &[Read, Describe, Create, DescribeConfigs, AlterConfigs],
        );
        for op in &p.operators {
            Grants {
                out: &mut out,
                principal: user(op),
            }
            .topic(Pattern::Literal, &Topics::replay(&view), SEND);
        }
    }
    for sub in subscribers {
        let mut g = Grants {
            out: &mut out,
            principal: user(sub),
        };
        g.group(Pattern::Literal, &format!("govbus-consumer-{sub}"));
        g.group(Pattern::Literal, "govbus-status");
        g.topic(Pattern::Literal, &topics.dlq("consume", sub), SEND);
        g.topic(Pattern::Literal, &topics.receipts(sub), SEND);
        if catalog.reports_of(sub).next().is_some() {
            g.topic(Pattern::Prefixed, &format!("{prefix}report.{sub}."), OWN);
        }
        g.idempotent();
        g.scratch_group("govbus-reader-");
    }
    // Operators: the control topic, DLQ replay, and describing everything.
    for op in &p.operators {
        let mut g = Grants {
            out: &mut out,
            principal: user(op),
        };
        g.topic(Pattern::Literal, &topics.subscriptions(), OWN);
        g.topic(
            Pattern::Prefixed,
            &format!("{prefix}dlq."),
            &[Read, Write, Describe],
        );
        g.topic(Pattern::Literal, &topics.dlq_state(), OWN);
        // Every subscriber's receipts (`govbus receipts EVENT`).
        g.topic(Pattern::Prefixed, &topics.receipts_prefix(), READ);
        for d in catalog.datasets.values() {
            let central = topics.central(&d.id, d.file.major);
            g.topic(Pattern::Literal, &Topics::replay(&central), SEND);
        }
        // Kafka refuses an empty prefix: every name is the literal `*`.
        if prefix.is_empty() {
            g.topic(Pattern::Literal, "*", &[Describe, DescribeConfigs]);
        } else {
            g.topic(Pattern::Prefixed, prefix, &[Describe, DescribeConfigs]);
        }
        g.add(Resource::Group, Pattern::Literal, "*", &[Describe]);
        g.add(
            Resource::TransactionalId,
            Pattern::Prefixed,
            "govbus-dlq-",
            &[Write, Describe],
        );
        g.idempotent();
        g.scratch_group("govbus-control-");
        g.scratch_group("govbus-reader-");
    }
    out.sort();
    out.dedup();
    out
}

/// The principals the plan manages: ACLs of others on the broker are left
/// alone.
pub fn managed(wanted: &[Acl], catalog: &Catalog, p: &Principals) -> Vec<String> {
    let mut m: Vec<String> = wanted.iter().map(|a| a.principal.clone()).collect();
    // A subscriber whose every subscription expired has no ACL left in the
    // plan, but its old ones must still go.
    m.extend(
        catalog
            .subscriptions
            .iter()
            .map(|s| user(&s.file.subscriber)),
    );
    m.extend(catalog.datasets.keys().map(|d| user(&d.owner)));
    m.extend([user(&p.router), user(&p.registry)]);
    m.extend(p.operators.iter().map(|o| user(o)));
    m.sort();
    m.dedup();
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::AclDiff;

    fn principals() -> Principals {
        Principals::standard("govbus-router")
    }

    fn has(acls: &[Acl], principal: &str, op: Operation, pattern: Pattern, name: &str) -> bool {
        acls.iter().any(|a| {
            a.principal == principal
                && a.operation == op
                && a.pattern == pattern
                && a.name == name
                && a.resource == Resource::Topic
        })
    }

    fn allowed(acls: &[Acl], principal: &str, op: Operation, topic: &str) -> bool {
        crate::acl::allows(acls, principal, op, topic)
    }

    #[test]
    fn each_agency_gets_its_own_topics_and_nothing_else() {
        let catalog = Catalog::builtin();
        let topics = Topics::new("");
        let acls = plan(&catalog, &topics, &principals(), 0);
        // Owners write their own datasets only.
        assert!(allowed(&acls, "User:bca", Write, "gov.bca.residents.v1"));
        assert!(!allowed(
            &acls,
            "User:bca",
            Write,
            "gov.moha.admin_units.v1"
        ));
        assert!(allowed(
            &acls,
            "User:moha",
            Write,
            "gov.moha.admin_units.v1"
        ));
        // bca's rules look codes up in moha's dataset: it reads it.
        assert!(allowed(&acls, "User:bca", Read, "gov.moha.admin_units.v1"));
        assert!(!allowed(&acls, "User:moha", Read, "gov.bca.residents.v1"));
        // The router reads every central topic, writes every view.
        assert!(allowed(&acls, "User:router", Read, "gov.bca.residents.v1"));
        assert!(allowed(
            &acls,
            "User:router",
            Write,
            "sub.p52.bca.residents.v1"
        ));
        assert!(!allowed(
            &acls,
            "User:router",
            Write,
            "gov.bca.residents.v1"
        ));
        // A province reads its own views only, and writes no data topic.
        assert!(allowed(&acls, "User:p52", Read, "sub.p52.bca.residents.v1"));
        assert!(!allowed(
            &acls,
            "User:p52",
            Read,
            "sub.p92.bca.residents.v1"
        ));
        for t in [
            "gov.bca.residents.v1",
            "sub.p52.bca.residents.v1",
            "_schemas",
        ] {
            assert!(!allowed(&acls, "User:p52", Write, t), "{t}");
        }
        assert!(allowed(&acls, "User:registry", Write, "_schemas"));
        assert!(has(&acls, "User:router", Read, Pattern::Prefixed, "gov."));
    }

    #[test]
    fn an_expired_subscription_grants_no_read() {
        let mut catalog = Catalog::builtin();
        for s in &mut catalog.subscriptions {
            if s.file.subscriber == "p52" {
                s.file.expires = Some("2026-01-31".into());
            }
        }
        let topics = Topics::new("t1.");
        let before = plan(&catalog, &topics, &principals(), 0);
        assert!(allowed(
            &before,
            "User:p52",
            Read,
            "t1.sub.p52.bca.residents.v1"
        ));
        let after_expiry = chrono::NaiveDate::from_ymd_opt(2026, 2, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|d| d.and_utc().timestamp_millis())
            .unwrap_or_default();
        let after = plan(&catalog, &topics, &principals(), after_expiry);
        assert!(!allowed(
            &after,
            "User:p52",
            Read,
            "t1.sub.p52.bca.residents.v1"
        ));
        assert!(allowed(
            &after,
            "User:p92",
            Read,
            "t1.sub.p92.bca.residents.v1"
        ));
        // The diff deletes it: p52 is still a managed principal.
        let diff = AclDiff::between(&after, &before, &managed(&after, &catalog, &principals()));
        assert!(diff.create.is_empty(), "{diff}");
        assert!(
            diff.delete.iter().any(|a| a.principal == "User:p52"
                && a.operation == Read
                && a.name == "t1.sub.p52.bca.residents.v1"),
            "{diff}"
        );
    }

    #[test]
    fn acls_of_principals_the_plan_does_not_manage_are_left_alone() {
        let catalog = Catalog::builtin();
        let wanted = plan(&catalog, &Topics::new(""), &principals(), 0);
        let mut current = wanted.clone();
        let foreign = Acl {
            principal: "User:auditor".into(),
            resource: Resource::Topic,
            pattern: Pattern::Prefixed,
            name: "gov.".into(),
            operation: Describe,
        };
        current.push(foreign);
        let diff = AclDiff::between(
            &wanted,
            &current,
            &managed(&wanted, &catalog, &principals()),
        );
        assert!(diff.is_empty(), "{diff}");
    }
}
