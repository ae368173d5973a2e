//! Kafka ACLs: what the broker's authorizer allows each principal, read,
//! created and deleted through librdkafka's admin API (rust-rdkafka has no
//! binding for it, so this is a small safe wrapper over rdkafka-sys).

use std::ffi::{CStr, CString};
use std::fmt;
use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka_sys as sys;
use rdkafka_sys::bindings::{
    rd_kafka_AclOperation_t as Op, rd_kafka_AclPermissionType_t as Perm,
    rd_kafka_ResourcePatternType_t as Pat, rd_kafka_ResourceType_t as Res,
};

use crate::KafkaConfig;

mod plan;
mod scram;
pub use plan::{managed, plan, Principals};

/// The kind of resource an ACL is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    /// A topic.
    Topic,
    /// A consumer group.
    Group,
    /// The cluster (name `kafka-cluster`).
    Cluster,
    /// A transactional id.
    TransactionalId,
}

/// Whether the resource name is the name itself or a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Pattern {
    /// Exactly this name.
    Literal,
    /// Every name starting with it.
    Prefixed,
}

/// What the ACL allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    /// Read (consume, join a group, commit).
    Read,
    /// Write (produce, a transactional id's use).
    Write,
    /// Create topics.
    Create,
    /// Describe (metadata, offsets, a group's or a transaction's state).
    Describe,
    /// Read a topic's configs.
    DescribeConfigs,
    /// Change a topic's configs.
    AlterConfigs,
    /// Delete (records, topics).
    Delete,
    /// An idempotent producer (cluster).
    IdempotentWrite,
    /// Everything.
    All,
}

/// One ALLOW ACL, from any host.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Acl {
    /// `User:<name>`.
    pub principal: String,
    /// The resource's kind.
    pub resource: Resource,
    /// Literal or prefixed.
    pub pattern: Pattern,
    /// The resource's name or prefix.
    pub name: String,
    /// What is allowed.
    pub operation: Operation,
}

impl fmt::Display for Acl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let res = match self.resource {
            Resource::Topic => "topic",
            Resource::Group => "group",
            Resource::Cluster => "cluster",
            Resource::TransactionalId => "transactional-id",
        };
        let star = if self.pattern == Pattern::Prefixed {
            "*"
        } else {
            ""
        };
        write!(
            f,
            "{} {:?} {res} {}{star}",
            self.principal, self.operation, self.name
        )
    }
}

/// The ACL admin calls failed.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    /// The client could not be made.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The broker answered with an error (e.g. no authorizer, not a super user).
    #[error("{call}: {reason}")]
    Broker {
        /// Which call.
        call: &'static str,
        /// librdkafka's or the broker's words.
        reason: String,
    },
    /// No answer in time.
    #[error("{0}: no answer within 30 s")]
    Timeout(&'static str),
    /// A name holds a NUL byte.
    #[error("an ACL's name or principal holds a NUL byte: {0:?}")]
    Nul(String),
    /// The broker holds an ACL govbus does not model, on a principal it manages.
    #[error("the broker holds an ACL govbus cannot express on a principal it manages: {0}; remove it with kafka-acls --remove, or manage that principal outside govbus")]
    Unknown(String),
}

/// An ACL on the broker that govbus does not model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Foreign {
    /// Its principal.
    pub principal: String,
    /// The whole binding, as text.
    pub shown: String,
}

/// The ACL admin client: a librdkafka admin handle and a queue of its own.
pub struct AclAdmin {
    admin: AdminClient<DefaultClientContext>,
}

impl fmt::Debug for AclAdmin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AclAdmin")
    }
}

const TIMEOUT: Duration = Duration::from_secs(30);

/// Each resource kind and its librdkafka value.
const RESOURCES: [(Resource, Res); 4] = [
    (Resource::Topic, Res::RD_KAFKA_RESOURCE_TOPIC),
    (Resource::Group, Res::RD_KAFKA_RESOURCE_GROUP),
    (Resource::Cluster, Res::RD_KAFKA_RESOURCE_BROKER),
    (
        Resource::TransactionalId,
        Res::RD_KAFKA_RESOURCE_TRANSACTIONAL_ID,
    ),
];

/// Each pattern type and its librdkafka value.
const PATTERNS: [(Pattern, Pat); 2] = [
    (Pattern::Literal, Pat::RD_KAFKA_RESOURCE_PATTERN_LITERAL),
    (Pattern::Prefixed, Pat::RD_KAFKA_RESOURCE_PATTERN_PREFIXED),
];

/// Each operation and its librdkafka value.
const OPERATIONS: [(Operation, Op); 9] = [
    (Operation::Read, Op::RD_KAFKA_ACL_OPERATION_READ),
    (Operation::Write, Op::RD_KAFKA_ACL_OPERATION_WRITE),
    (Operation::Create, Op::RD_KAFKA_ACL_OPERATION_CREATE),
    (Operation::Describe, Op::RD_KAFKA_ACL_OPERATION_DESCRIBE),
    (
        Operation::DescribeConfigs,
        Op::RD_KAFKA_ACL_OPERATION_DESCRIBE_CONFIGS,
    ),
    (
        Operation::AlterConfigs,
        Op::RD_KAFKA_ACL_OPERATION_ALTER_CONFIGS,
    ),
    (Operation::Delete, Op::RD_KAFKA_ACL_OPERATION_DELETE),
    (
        Operation::IdempotentWrite,
        Op::RD_KAFKA_ACL_OPERATION_IDEMPOTENT_WRITE,
    ),
    (Operation::All, Op::RD_KAFKA_ACL_OPERATION_ALL),
];

/// `a`'s librdkafka value in `table`.
fn to_sys<A: PartialEq + Copy, B: Copy>(table: &[(A, B)], a: A) -> B {
    table
        .iter()
        .find(|(x, _)| *x == a)
        .map(|(_, b)| *b)
        .expect("every variant is in its table")
}

/// The variant librdkafka's value `b` stands for, if govbus models it.
fn from_sys_value<A: Copy, B: PartialEq + Copy>(table: &[(A, B)], b: B) -> Option<A> {
    table.iter().find(|(_, y)| *y == b).map(|(a, _)| *a)
}

/// The Rust form of a binding the broker returned, or, for one govbus does
/// not model (DENY, a host other than `*`, other operations), its
/// principal and the whole binding as text.
fn from_sys(b: *const sys::bindings::rd_kafka_AclBinding_t) -> Result<Acl, Foreign> {
    // SAFETY: `b` comes from a result that is alive for this call; the
    // getters return pointers into it, copied here before it is freed.
    unsafe {
        let text = |p: *const std::os::raw::c_char| {
            if p.is_null() {
                String::new()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        let principal = text(sys::rd_kafka_AclBinding_principal(b));
        let name = text(sys::rd_kafka_AclBinding_name(b));
        let host = text(sys::rd_kafka_AclBinding_host(b));
        let restype = sys::rd_kafka_AclBinding_restype(b);
        let pattern = sys::rd_kafka_AclBinding_resource_pattern_type(b);
        let op = sys::rd_kafka_AclBinding_operation(b);
        let perm = sys::rd_kafka_AclBinding_permission_type(b);
        let modeled = (
            from_sys_value(&RESOURCES, restype),
            from_sys_value(&PATTERNS, pattern),
            from_sys_value(&OPERATIONS, op),
        );
        match modeled {
            (Some(resource), Some(pattern), Some(operation))
                if perm == Perm::RD_KAFKA_ACL_PERMISSION_TYPE_ALLOW && host == "*" =>
            {
                Ok(Acl {
                    principal,
                    resource,
                    pattern,
                    name,
                    operation,
                })
            }
            _ => Err(Foreign {
                shown: format!(
                    "{principal} {perm:?} {op:?} {restype:?} {pattern:?} {name} host {host}"
                ),
                principal,
            }),
        }
    }
}

/// A binding (or an exact filter) for `acl`, owned until dropped.
struct Binding(*mut sys::bindings::rd_kafka_AclBinding_t);

impl Binding {
    fn new(acl: &Acl, filter: bool) -> Result<Self, AclError> {
        let cstr = |s: &str| CString::new(s).map_err(|_| AclError::Nul(s.to_string()));
        let name = cstr(&acl.name)?;
        let principal = cstr(&acl.principal)?;
        let host = cstr("*")?;
        let mut err = [0 as std::os::raw::c_char; 512];
        // SAFETY: every pointer is a live NUL-terminated string or buffer;
        // librdkafka copies the strings.
        let b = unsafe {
            let f = if filter {
                sys::rd_kafka_AclBindingFilter_new
            } else {
                sys::rd_kafka_AclBinding_new
            };
            f(
                to_sys(&RESOURCES, acl.resource),
                name.as_ptr(),
                to_sys(&PATTERNS, acl.pattern),
                principal.as_ptr(),
                host.as_ptr(),
                to_sys(&OPERATIONS, acl.operation),
                Perm::RD_KAFKA_ACL_PERMISSION_TYPE_ALLOW,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        if b.is_null() {
            // SAFETY: librdkafka wrote a NUL-terminated message into `err`.
            let why = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy();
            return Err(AclError::Broker {
                call: "building an ACL",
                reason: format!("{acl}: {why}"),
            });
        }
        Ok(Self(b))
    }
}

impl Drop for Binding {
    fn drop(&mut self) {
        // SAFETY: created by rd_kafka_AclBinding(Filter)_new, not handed over.
        unsafe { sys::rd_kafka_AclBinding_destroy(self.0) }
    }
}

/// An admin request's result event and the queue it arrived on, freed on drop.
struct Reply {
    queue: *mut sys::bindings::rd_kafka_queue_t,
    event: *mut sys::bindings::rd_kafka_event_t,
}

impl Drop for Reply {
    fn drop(&mut self) {
        // SAFETY: both were returned by librdkafka and are freed once here.
        unsafe {
            if !self.event.is_null() {
                sys::rd_kafka_event_destroy(self.event);
            }
            sys::rd_kafka_queue_destroy(self.queue);
        }
    }
}

fn error_text(e: *const sys::bindings::rd_kafka_error_t) -> Option<String> {
    if e.is_null() {
        return None;
    }
    // SAFETY: a live error object owned by its result.
    Some(
        unsafe { CStr::from_ptr(sys::rd_kafka_error_string(e)) }
            .to_string_lossy()
            .into_owned(),
    )
}

impl AclAdmin {
    /// An admin client on `kafka` (its principal must be allowed to alter
    /// and describe the cluster's ACLs: a super user).
    pub fn new(kafka: &KafkaConfig) -> Result<Self, AclError> {
        Ok(Self {
            admin: kafka.client().create()?,
        })
    }

    fn rk(&self) -> *mut sys::bindings::rd_kafka_t {
        self.admin.inner().native_ptr()
    }

    /// Sends a request with `send(rk, options, queue)` and waits for its reply.
    fn call(
        &self,
        call: &'static str,
        op: sys::bindings::rd_kafka_admin_op_t,
        send: impl FnOnce(
            *mut sys::bindings::rd_kafka_t,
            *const sys::bindings::rd_kafka_AdminOptions_t,
            *mut sys::bindings::rd_kafka_queue_t,
        ),
    ) -> Result<Reply, AclError> {
        let rk = self.rk();
        // SAFETY: rk is alive as long as self; the options are freed after
        // the request is sent (librdkafka copies them), the queue and event
        // by `Reply`.
        unsafe {
            let queue = sys::rd_kafka_queue_new(rk);
            let mut reply = Reply {
                queue,
                event: std::ptr::null_mut(),
            };
            let opts = sys::rd_kafka_AdminOptions_new(rk, op);
            let mut err = [0 as std::os::raw::c_char; 256];
            sys::rd_kafka_AdminOptions_set_request_timeout(
                opts,
                TIMEOUT.as_millis() as i32,
                err.as_mut_ptr(),
                err.len(),
            );
            send(rk, opts, queue);
            sys::rd_kafka_AdminOptions_destroy(opts);
            reply.event = sys::rd_kafka_queue_poll(queue, TIMEOUT.as_millis() as i32 + 5_000);
            if reply.event.is_null() {
                return Err(AclError::Timeout(call));
            }
            let code = sys::rd_kafka_event_error(reply.event);
            if code != sys::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                let why = CStr::from_ptr(sys::rd_kafka_event_error_string(reply.event))
                    .to_string_lossy()
                    .into_owned();
                return Err(AclError::Broker { call, reason: why });
            }
            Ok(reply)
        }
    }

    /// Every ACL on the broker: those govbus models, sorted, and apart
    /// from them those it does not (DENY, a host other than `*`).
    pub fn describe(&self) -> Result<(Vec<Acl>, Vec<Foreign>), AclError> {
        let mut err = [0 as std::os::raw::c_char; 512];
        // SAFETY: a filter matching everything (NULL names match any).
        let filter = unsafe {
            sys::rd_kafka_AclBindingFilter_new(
                Res::RD_KAFKA_RESOURCE_ANY,
                std::ptr::null(),
                Pat::RD_KAFKA_RESOURCE_PATTERN_ANY,
                std::ptr::null(),
                std::ptr::null(),
                Op::RD_KAFKA_ACL_OPERATION_ANY,
                Perm::RD_KAFKA_ACL_PERMISSION_TYPE_ANY,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        if filter.is_null() {
            return Err(AclError::Broker {
                call: "describe ACLs",
                reason: "cannot build the match-all filter".into(),
            });
        }
        let filter = Binding(filter);
        let reply = self.call(
            "describe ACLs",
            sys::bindings::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBEACLS,
            // SAFETY: the filter outlives the call (librdkafka copies it).
            |rk, opts, q| unsafe { sys::rd_kafka_DescribeAcls(rk, filter.0, opts, q) },
        )?;
        let (mut out, mut foreign) = (Vec::new(), Vec::new());
        // SAFETY: the result and its array live as long as `reply`.
        unsafe {
            let res = sys::rd_kafka_event_DescribeAcls_result(reply.event);
            let mut n = 0usize;
            let acls = sys::rd_kafka_DescribeAcls_result_acls(res, &mut n);
            for i in 0..n {
                match from_sys(*acls.add(i)) {
                    Ok(a) => out.push(a),
                    Err(f) => foreign.push(f),
                }
            }
        }
        out.sort();
        Ok((out, foreign))
    }

    /// What makes the broker's ACLs `wanted`, for the principals in
    /// `managed` (others' ACLs are left alone). An ACL govbus cannot
    /// express on a principal it manages (a DENY, a host) is an error
    /// naming it: applying the plan beside it would not give the plan.
    pub fn compare(&self, wanted: &[Acl], managed: &[String]) -> Result<AclDiff, AclError> {
        let (current, foreign) = self.describe()?;
        AclDiff::beside(wanted, &current, &foreign, managed)
    }

    /// Creates and deletes what `diff` says.
    pub fn apply(&self, diff: &AclDiff) -> Result<(), AclError> {
        self.create(&diff.create)?;
        self.delete(&diff.delete)
    }

    /// Creates `acls` (existing ones are left as they are).
    pub fn create(&self, acls: &[Acl]) -> Result<(), AclError> {
        if acls.is_empty() {
            return Ok(());
        }
        let bindings = acls
            .iter()
            .map(|a| Binding::new(a, false))
            .collect::<Result<Vec<_>, _>>()?;
        let mut ptrs: Vec<_> = bindings.iter().map(|b| b.0).collect();
        let reply = self.call(
            "create ACLs",
            sys::bindings::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_CREATEACLS,
            // SAFETY: the bindings outlive the call (librdkafka copies them).
            |rk, opts, q| unsafe {
                sys::rd_kafka_CreateAcls(rk, ptrs.as_mut_ptr(), ptrs.len(), opts, q)
            },
        )?;
        // SAFETY: the result lives as long as `reply`.
        unsafe {
            let res = sys::rd_kafka_event_CreateAcls_result(reply.event);
            let mut n = 0usize;
            let results = sys::rd_kafka_CreateAcls_result_acls(res, &mut n);
            for i in 0..n {
                if let Some(why) = error_text(sys::rd_kafka_acl_result_error(*results.add(i))) {
                    return Err(AclError::Broker {
                        call: "create ACLs",
                        reason: format!(
                            "{}: {why}",
                            acls.get(i).map(|a| a.to_string()).unwrap_or_default()
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Deletes exactly `acls`.
    pub fn delete(&self, acls: &[Acl]) -> Result<(), AclError> {
        if acls.is_empty() {
            return Ok(());
        }
        let filters = acls
            .iter()
            .map(|a| Binding::new(a, true))
            .collect::<Result<Vec<_>, _>>()?;
        let mut ptrs: Vec<_> = filters.iter().map(|b| b.0).collect();
        let reply = self.call(
            "delete ACLs",
            sys::bindings::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DELETEACLS,
            // SAFETY: the filters outlive the call (librdkafka copies them).
            |rk, opts, q| unsafe {
                sys::rd_kafka_DeleteAcls(rk, ptrs.as_mut_ptr(), ptrs.len(), opts, q)
            },
        )?;
        // SAFETY: the result lives as long as `reply`.
        unsafe {
            let res = sys::rd_kafka_event_DeleteAcls_result(reply.event);
            let mut n = 0usize;
            let responses = sys::rd_kafka_DeleteAcls_result_responses(res, &mut n);
            for i in 0..n {
                let e = sys::rd_kafka_DeleteAcls_result_response_error(*responses.add(i));
                if let Some(why) = error_text(e) {
                    return Err(AclError::Broker {
                        call: "delete ACLs",
                        reason: format!(
                            "{}: {why}",
                            acls.get(i).map(|a| a.to_string()).unwrap_or_default()
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}

/// What a principal may do on a topic, as the broker says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorized {
    /// These operations (perhaps none).
    Allowed(Vec<Operation>),
    /// The topic does not exist (yet).
    Missing,
    /// The broker would not say: its words.
    Refused(String),
}

impl AclAdmin {
    /// What this client's principal may do on each of `topics`, as the
    /// broker's authorizer says (DescribeTopics with authorized
    /// operations).
    pub fn authorized(&self, topics: &[String]) -> Result<Vec<(String, Authorized)>, AclError> {
        if topics.is_empty() {
            return Ok(Vec::new());
        }
        let names = topics
            .iter()
            .map(|t| CString::new(t.as_str()).map_err(|_| AclError::Nul(t.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        let mut ptrs: Vec<*const std::os::raw::c_char> = names.iter().map(|n| n.as_ptr()).collect();
        // SAFETY: librdkafka copies the names; the collection is freed
        // below, after the request is sent.
        let collection =
            unsafe { sys::rd_kafka_TopicCollection_of_topic_names(ptrs.as_mut_ptr(), ptrs.len()) };
        let reply = self.call(
            "describe topics",
            sys::bindings::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS,
            // SAFETY: options and collection are alive during the call.
            |rk, opts, q| unsafe {
                sys::rd_kafka_AdminOptions_set_include_authorized_operations(opts.cast_mut(), 1);
                sys::rd_kafka_DescribeTopics(rk, collection, opts, q);
            },
        );
        // SAFETY: created above, no longer used by librdkafka.
        unsafe { sys::rd_kafka_TopicCollection_destroy(collection) };
        let reply = reply?;
        let mut out = Vec::new();
        // SAFETY: the result and its arrays live as long as `reply`.
        unsafe {
            let res = sys::rd_kafka_event_DescribeTopics_result(reply.event);
            let mut n = 0usize;
            let descs = sys::rd_kafka_DescribeTopics_result_topics(res, &mut n);
            for i in 0..n {
                let d = *descs.add(i);
                let name = CStr::from_ptr(sys::rd_kafka_TopicDescription_name(d))
                    .to_string_lossy()
                    .into_owned();
                let e = sys::rd_kafka_TopicDescription_error(d);
                if let Some(why) = error_text(e) {
                    use sys::bindings::rd_kafka_resp_err_t as E;
                    let missing = matches!(
                        sys::rd_kafka_error_code(e),
                        E::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART
                            | E::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_ID
                    );
                    out.push((
                        name,
                        if missing {
                            Authorized::Missing
                        } else {
                            Authorized::Refused(why)
                        },
                    ));
                    continue;
                }
                let mut k = 0usize;
                let ops = sys::rd_kafka_TopicDescription_authorized_operations(d, &mut k);
                let list = (0..k)
                    .filter_map(|j| from_sys_value(&OPERATIONS, *ops.add(j)))
                    .collect();
                out.push((name, Authorized::Allowed(list)));
            }
        }
        Ok(out)
    }
}

/// This agent may not do what it must on a topic.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// The ACL admin call failed.
    #[error(transparent)]
    Acl(#[from] AclError),
    /// The authorizer does not allow it.
    #[error("{principal} may not {operation:?} topic {topic} ({allowed}); its grants come from `govbus acl apply` (see `govbus acl plan`)")]
    Denied {
        /// Who.
        principal: String,
        /// What it needs.
        operation: Operation,
        /// Where.
        topic: String,
        /// What it may do there, or why the broker said nothing.
        allowed: String,
    },
}

/// Checks, on a cluster where `kafka` names a principal, that it may do
/// `operation` on each of `topics` (topics that do not exist yet pass: the
/// agent's creating them is checked by the broker). Without
/// `[kafka.security]` there is nothing to check.
pub fn require(
    kafka: &KafkaConfig,
    operation: Operation,
    topics: &[String],
) -> Result<(), AccessError> {
    let Some(principal) = kafka.security.as_ref().and_then(|s| s.principal()) else {
        return Ok(());
    };
    let admin = AclAdmin::new(kafka)?;
    for (topic, ops) in admin.authorized(topics)? {
        let allowed = match ops {
            Authorized::Allowed(ops) if ops.contains(&operation) => continue,
            Authorized::Allowed(ops) if ops.is_empty() => "it may do nothing there".to_string(),
            Authorized::Allowed(ops) => format!(
                "it may: {}",
                ops.iter()
                    .map(|o| format!("{o:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Authorized::Missing => continue,
            Authorized::Refused(why) => format!("the broker says: {why}"),
        };
        return Err(AccessError::Denied {
            principal,
            operation,
            topic,
            allowed,
        });
    }
    Ok(())
}

/// Whether `acls` let `principal` (`User:…`) do `op` on topic `topic`, as
/// the authorizer decides: a literal name (or `*`) or a prefix.
pub fn allows(acls: &[Acl], principal: &str, op: Operation, topic: &str) -> bool {
    acls.iter().any(|a| {
        a.principal == principal
            && a.resource == Resource::Topic
            && (a.operation == op || a.operation == Operation::All)
            && match a.pattern {
                Pattern::Literal => a.name == topic || a.name == "*",
                Pattern::Prefixed => topic.starts_with(&a.name),
            }
    })
}

/// What `apply` would change: ACLs to create and to delete.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AclDiff {
    /// Wanted, not on the broker.
    pub create: Vec<Acl>,
    /// On the broker, not wanted (only for principals the plan manages).
    pub delete: Vec<Acl>,
}

impl AclDiff {
    /// The difference between `wanted` and `current`; ACLs of principals
    /// not in `managed` (an operator's own, super users') are left alone.
    pub fn between(wanted: &[Acl], current: &[Acl], managed: &[String]) -> Self {
        let want: std::collections::BTreeSet<&Acl> = wanted.iter().collect();
        let have: std::collections::BTreeSet<&Acl> = current.iter().collect();
        Self {
            create: want.difference(&have).map(|a| (*a).clone()).collect(),
            delete: have
                .difference(&want)
                .filter(|a| managed.contains(&a.principal))
                .map(|a| (*a).clone())
                .collect(),
        }
    }

    /// As [`Self::between`], the broker also holding `foreign` ACLs:
    /// refused if one is on a managed principal.
    pub fn beside(
        wanted: &[Acl],
        current: &[Acl],
        foreign: &[Foreign],
        managed: &[String],
    ) -> Result<Self, AclError> {
        if let Some(f) = foreign.iter().find(|f| managed.contains(&f.principal)) {
            return Err(AclError::Unknown(f.shown.clone()));
        }
        Ok(Self::between(wanted, current, managed))
    }

    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.delete.is_empty()
    }
}

impl fmt::Display for AclDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for a in &self.create {
            writeln!(f, "+ {a}")?;
        }
        for a in &self.delete {
            writeln!(f, "- {a}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_variant_has_one_librdkafka_value_and_back() {
        for (a, b) in OPERATIONS {
            assert_eq!(to_sys(&OPERATIONS, a), b);
            assert_eq!(from_sys_value(&OPERATIONS, b), Some(a));
        }
        for (a, b) in RESOURCES {
            assert_eq!(from_sys_value(&RESOURCES, b), Some(a));
        }
        for (a, b) in PATTERNS {
            assert_eq!(from_sys_value(&PATTERNS, b), Some(a));
        }
        assert_eq!(
            from_sys_value(&OPERATIONS, Op::RD_KAFKA_ACL_OPERATION_ALTER),
            None
        );
    }

    #[test]
    fn acls_govbus_cannot_express_stop_it_only_on_principals_it_manages() {
        let deny = Foreign {
            principal: "User:p52".into(),
            shown: "User:p52 DENY READ topic sub.p52. host *".into(),
        };
        let managed = vec!["User:p52".to_string()];
        let err = AclDiff::beside(&[], &[], std::slice::from_ref(&deny), &managed).unwrap_err();
        assert!(err.to_string().contains("DENY READ"), "{err}");
        let theirs = Foreign {
            principal: "User:auditor".into(),
            ..deny
        };
        assert!(AclDiff::beside(&[], &[], &[theirs], &managed)
            .unwrap()
            .is_empty());
    }
}
