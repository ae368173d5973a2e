//! Routing one change to every view of its dataset: decode → filter
//! `before` and `after` → decide → project → encode. No Kafka here.

use cel_interpreter::Context;
use govbus_schema::envelope::decode_in;
use govbus_schema::{Change, EnvelopeError, SchemaResolver};

use crate::decide::{decide, Decision};
use crate::filter::{At, FilterError, Vars};
use crate::views::View;
use govbus_core::admin_map::Hierarchy;

/// What filters are evaluated in: CEL's functions (with the hierarchy
/// functions over the same map, [`crate::filter::hierarchy_context`]) and
/// the administrative map as of the router's day (None: no filter asks it).
#[derive(Clone, Copy)]
pub struct Scope<'a> {
    /// CEL's functions.
    pub base: &'a Context<'a>,
    /// The map.
    pub hierarchy: Option<&'a Hierarchy>,
}

impl std::fmt::Debug for Scope<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scope")
            .field("map_as_of", &self.hierarchy.and_then(|h| h.as_of()))
            .finish_non_exhaustive()
    }
}

impl<'a> Scope<'a> {
    /// CEL's functions and no map.
    pub fn plain(base: &'a Context<'a>) -> Self {
        Self {
            base,
            hierarchy: None,
        }
    }

    fn at(&self, ts_ms: i64) -> At<'a> {
        At {
            hierarchy: self.hierarchy,
            day: crate::map::day_of_ms(ts_ms),
        }
    }
}

/// A record for a view topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Index of the view.
    pub view: usize,
    /// The decision taken.
    pub decision: Decision,
    /// Encoded change (wire format).
    pub value: Vec<u8>,
}

/// A change that cannot be routed: it goes to the DLQ with this reason.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The record is not a decodable change envelope.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// A filter failed on this entity.
    #[error("subscription {view}: {source}")]
    Filter {
        /// The view.
        view: String,
        /// Why.
        source: FilterError,
    },
}

impl RouteError {
    /// A bounded reason label for metrics and the DLQ header.
    pub fn reason(&self) -> &'static str {
        match self {
            RouteError::Envelope(e) => e.reason(),
            RouteError::Filter { .. } => "filter_error",
        }
    }
}

/// Decodes `payload` (its writer schema registered under `subject`) and
/// routes it to `views` (indices into `all`).
pub fn route(
    payload: &[u8],
    resolver: &dyn SchemaResolver,
    subject: &str,
    scope: Scope<'_>,
    all: &[View],
    views: &[usize],
    now_ms: i64,
) -> Result<Vec<Output>, RouteError> {
    let (_, change) = decode_in(payload, resolver, subject)?;
    route_change(&change, scope, all, views, now_ms)
}

/// Whether `v` has exactly the record fields of `schema` (recursively), so
/// that it needs no resolution. (apache_avro's `validate` would do, but it
/// logs every mismatch at ERROR level.)
fn same_fields(v: &govbus_schema::AvroValue, schema: &apache_avro::Schema) -> bool {
    match (v, schema) {
        (govbus_schema::AvroValue::Record(fields), apache_avro::Schema::Record(r)) => {
            fields.len() == r.fields.len()
                && fields
                    .iter()
                    .zip(&r.fields)
                    .all(|((name, value), f)| *name == f.name && same_fields(value, &f.schema))
        }
        (govbus_schema::AvroValue::Record(_), _) => false,
        _ => true,
    }
}

/// `x` read as `reader` (the router's version of the dataset schema).
fn as_reader(
    x: &Option<govbus_schema::AvroValue>,
    reader: Option<&apache_avro::Schema>,
) -> Result<Option<govbus_schema::AvroValue>, RouteError> {
    match (x, reader) {
        (Some(v), Some(schema)) if !same_fields(v, schema) => {
            v.clone().resolve(schema).map(Some).map_err(|e| {
                RouteError::Envelope(EnvelopeError::Shape(format!(
                    "the entity does not resolve to the dataset's schema: {e}"
                )))
            })
        }
        _ => Ok(x.clone()),
    }
}

/// What a backfill sends a view for one entity's current state, when the
/// view's subscription goes from `old` to `new` (None: not delivering):
/// the entity enters (a snapshot), leaves (a delete), is re-sent with the
/// new projection (a snapshot), or nothing. `out` is the view written
/// (`new`, or `old` when the view is being emptied). The records carry the
/// entity's own sequence, so a province applies them exactly once. Each
/// side's filter is evaluated in its own scope: a view that follows the
/// administrative map held what the map of its recorded day gave. With
/// `resend`, an entity in both is sent again (the map's rows changed, so
/// what the view holds is not known for sure).
pub fn backfill(
    current: &Change,
    old: Option<(&View, Scope<'_>)>,
    new: Option<(&View, Scope<'_>)>,
    out: &View,
    resend: bool,
) -> Result<Option<(&'static str, Vec<u8>)>, RouteError> {
    let after = as_reader(&current.after, Some(&out.entity))?;
    let Some(after) = after else {
        return Ok(None);
    };
    let vars = Vars::of(&after);
    let matches = |v: Option<(&View, Scope<'_>)>| -> Result<bool, RouteError> {
        v.map(|(v, scope)| {
            v.filter
                .matches_at(scope.base, &vars, scope.at(current.ts_ms))
                .map_err(|source| RouteError::Filter {
                    view: v.name.clone(),
                    source,
                })
        })
        .transpose()
        .map(|m| m.unwrap_or(false))
    };
    let (was, is) = (matches(old)?, matches(new)?);
    let (old, new) = (old.map(|o| o.0), new.map(|n| n.0));
    let reprojected = resend || old.zip(new).is_some_and(|(o, n)| o.drop != n.drop);
    let (label, decision) = match (was, is) {
        (false, true) => ("enter", Decision::Snapshot),
        (true, false) => ("leave", Decision::Delete),
        (true, true) if reprojected => ("resend", Decision::Snapshot),
        _ => return Ok(None),
    };
    let (Some(op), images) = (decision.op(), decision.images()) else {
        return Ok(None);
    };
    let projected = out.projection.apply(after);
    let routed = Change {
        event_id: current.event_id.clone(),
        op,
        before: images.before.then(|| projected.clone()),
        after: images.after.then_some(projected),
        source: current.source.clone(),
        ts_ms: current.ts_ms,
    };
    Ok(Some((label, out.encode(&routed)?)))
}

/// The entity `view` holds for `current` (an entity's current state): its
/// projection when the view's filter takes it in `scope` on the change's
/// day, None when it does not (or the entity was deleted).
pub fn view_entity(
    current: &Change,
    view: &View,
    scope: Scope<'_>,
) -> Result<Option<govbus_schema::AvroValue>, RouteError> {
    let Some(after) = as_reader(&current.after, Some(&view.entity))? else {
        return Ok(None);
    };
    let vars = Vars::of(&after);
    let keep = view
        .filter
        .matches_at(scope.base, &vars, scope.at(current.ts_ms))
        .map_err(|source| RouteError::Filter {
            view: view.name.clone(),
            source,
        })?;
    Ok(keep.then(|| view.projection.apply(after)))
}

/// Routes a decoded change at `now_ms` (expired subscriptions get nothing).
pub fn route_change(
    change: &Change,
    scope: Scope<'_>,
    all: &[View],
    views: &[usize],
    now_ms: i64,
) -> Result<Vec<Output>, RouteError> {
    // A change written with another (compatible) version of the dataset's
    // schema — a producer already on v2 — is read as this router's version:
    // fields it does not know are left out, missing ones take their defaults.
    let reader = views.first().map(|&i| all[i].entity.clone());
    let change = &Change {
        before: as_reader(&change.before, reader.as_deref())?,
        after: as_reader(&change.after, reader.as_deref())?,
        ..change.clone()
    };
    let before = change.before.as_ref().map(Vars::of);
    let after = change.after.as_ref().map(Vars::of);
    let at = scope.at(change.ts_ms);
    let mut out = Vec::new();
    for &i in views {
        let v = &all[i];
        if v.expired(now_ms) {
            v.counters.expired.increment(1);
            continue;
        }
        let eval = |vars: &Option<Vars>| -> Result<Option<bool>, RouteError> {
            vars.as_ref()
                .map(|x| v.filter.matches_at(scope.base, x, at))
                .transpose()
                .map_err(|source| RouteError::Filter {
                    view: v.name.clone(),
                    source,
                })
        };
        let decision = decide(change.op, eval(&before)?, eval(&after)?);
        let Some(op) = decision.op() else {
            v.counters.filtered.increment(1);
            continue;
        };
        let images = decision.images();
        let project = |keep: bool, x: &Option<govbus_schema::AvroValue>| {
            x.clone().filter(|_| keep).map(|e| v.projection.apply(e))
        };
        let routed = Change {
            event_id: change.event_id.clone(),
            op,
            before: project(images.before, &change.before),
            after: project(images.after, &change.after),
            source: change.source.clone(),
            ts_ms: change.ts_ms,
        };
        out.push(Output {
            view: i,
            decision,
            value: v.encode(&routed)?,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use govbus_core::catalog::parse_subscription;
    use govbus_core::{Catalog, Topics};
    use govbus_schema::{Op, Source};

    fn views_with(extra: &str) -> Vec<View> {
        let mut c = Catalog::builtin();
        let text = format!(
            "subscriber = \"p52\"\ndataset = \"bca.residents\"\nfilter = 'permanent_address.province_code == \"52\"'\ndrop = [\"ethnicity\"]\n{extra}"
        );
        c.subscriptions = vec![parse_subscription("s.toml", &text).unwrap()];
        let mut v = crate::views::compile(&c, &Topics::default()).unwrap();
        let schema = apache_avro::Schema::parse_str(&v[0].schema).unwrap();
        v[0].codec = Some(govbus_schema::EnvelopeCodec::new(schema, 1));
        v
    }

    fn create_in_52() -> Change {
        let entity =
            apache_avro::Schema::parse_str(include_str!("../../../schemas/bca/residents.v1.avsc"))
                .unwrap();
        let after = govbus_schema::json::to_avro(
            &entity,
            &serde_json::json!({"citizen_id": "052090000001", "full_name": "A", "date_of_birth": "1990-01-01",
                "sex": "MALE", "ethnicity": "Kinh",
                "permanent_address": {"province_code": "52", "commune_code": "1"}, "updated_at": 1}),
        )
        .unwrap();
        Change {
            event_id: "e".into(),
            op: Op::Create,
            before: None,
            after: Some(after),
            source: Source {
                agency: "bca".into(),
                system: "t".into(),
                seq: 1,
            },
            ts_ms: 1,
        }
    }

    #[test]
    fn a_change_written_with_a_later_version_is_routed_as_the_routers_version() {
        let mut v2: serde_json::Value =
            serde_json::from_str(include_str!("../../../schemas/bca/residents.v1.avsc")).unwrap();
        v2["fields"].as_array_mut().unwrap().push(
            serde_json::json!({"name": "phone", "type": ["null", "string"], "default": null}),
        );
        let v2 = apache_avro::Schema::parse_str(&v2.to_string()).unwrap();
        let after = govbus_schema::json::to_avro(
            &v2,
            &serde_json::json!({"citizen_id": "052090000001", "full_name": "A", "date_of_birth": "1990-01-01",
                "sex": "MALE", "ethnicity": "Kinh", "phone": "0900000000",
                "permanent_address": {"province_code": "52", "commune_code": "1"}, "updated_at": 1}),
        )
        .unwrap();
        let change = Change {
            after: Some(after),
            ..create_in_52()
        };
        let views = views_with("");
        let out =
            route_change(&change, Scope::plain(&Context::default()), &views, &[0], 0).unwrap();
        assert_eq!(out.len(), 1, "routed, not refused");
        let codec = views[0].codec.as_ref().unwrap();
        let resolver = govbus_schema::client::FixedResolver::new([(1, codec.schema.clone())]);
        let (_, routed) = govbus_schema::envelope::decode(&out[0].value, &resolver).unwrap();
        let j = govbus_schema::json::to_json(routed.after.as_ref().unwrap());
        assert_eq!(j["citizen_id"], "052090000001");
        assert!(
            j.get("phone").is_none() && j.get("ethnicity").is_none(),
            "{j}"
        );
    }

    fn view(filter: &str, drop: &str) -> View {
        let mut c = Catalog::builtin();
        let text = format!(
            "subscriber = \"p52\"\ndataset = \"bca.residents\"\nfilter = '{filter}'\ndrop = [{drop}]\n"
        );
        c.subscriptions = vec![parse_subscription("s.toml", &text).unwrap()];
        let mut v = crate::views::compile(&c, &Topics::default()).unwrap();
        let schema = apache_avro::Schema::parse_str(&v[0].schema).unwrap();
        v[0].codec = Some(govbus_schema::EnvelopeCodec::new(schema, 1));
        v.remove(0)
    }

    fn op_of(out: &View, value: &[u8]) -> Op {
        let codec = out.codec.as_ref().unwrap();
        let resolver = govbus_schema::client::FixedResolver::new([(1, codec.schema.clone())]);
        govbus_schema::envelope::decode(value, &resolver)
            .unwrap()
            .1
            .op
    }

    #[test]
    fn a_changed_subscription_sends_what_enters_leaves_or_is_reprojected() {
        let base = Context::default();
        let current = create_in_52(); // commune 1 of province 52
        let all52 = view(
            r#"permanent_address.province_code == "52""#,
            "\"ethnicity\"",
        );
        let not1 = view(
            r#"permanent_address.province_code == "52" && permanent_address.commune_code != "1""#,
            "\"ethnicity\"",
        );
        let all52_full = view(r#"permanent_address.province_code == "52""#, "");
        type Case<'a> = (
            Option<&'a View>,
            Option<&'a View>,
            &'a View,
            Option<(&'a str, Op)>,
        );
        let cases: [Case<'_>; 6] = [
            (None, Some(&all52), &all52, Some(("enter", Op::Snapshot))),
            (
                Some(&all52),
                Some(&not1),
                &not1,
                Some(("leave", Op::Delete)),
            ),
            (
                Some(&not1),
                Some(&all52),
                &all52,
                Some(("enter", Op::Snapshot)),
            ),
            (
                Some(&all52),
                Some(&all52_full),
                &all52_full,
                Some(("resend", Op::Snapshot)),
            ),
            (Some(&all52), Some(&all52), &all52, None),
            (Some(&all52), None, &all52, Some(("leave", Op::Delete))),
        ];
        for (i, (old, new, out, want)) in cases.into_iter().enumerate() {
            let got = backfill(
                &current,
                old.map(|v| (v, Scope::plain(&base))),
                new.map(|v| (v, Scope::plain(&base))),
                out,
                false,
            )
            .unwrap();
            assert_eq!(
                got.as_ref().map(|(l, v)| (*l, op_of(out, v))),
                want,
                "case {i}"
            );
        }
        // An entity deleted at the source is in no view.
        let deleted = Change {
            after: None,
            ..create_in_52()
        };
        assert!(backfill(
            &deleted,
            None,
            Some((&all52, Scope::plain(&base))),
            &all52,
            false
        )
        .unwrap()
        .is_none());
        // The map's rows changed: an entity in the view before and after
        // is sent again.
        let scoped = Some((&all52, Scope::plain(&base)));
        let got = backfill(&current, scoped, scoped, &all52, true).unwrap();
        assert_eq!(
            got.map(|(l, v)| (l, op_of(&all52, &v))),
            Some(("resend", Op::Snapshot))
        );
        assert!(backfill(&current, scoped, scoped, &all52, false)
            .unwrap()
            .is_none());
    }

    #[test]
    fn an_expired_subscription_receives_nothing() {
        let base = Context::default();
        let change = create_in_52();
        let live = views_with("expires = \"2026-12-31\"\n");
        let before_end = 1_798_761_599_999; // 2026-12-31T23:59:59.999Z
        assert_eq!(
            route_change(&change, Scope::plain(&base), &live, &[0], before_end)
                .unwrap()
                .len(),
            1
        );
        assert!(
            route_change(&change, Scope::plain(&base), &live, &[0], before_end + 1)
                .unwrap()
                .is_empty()
        );
        let forever = views_with("");
        assert_eq!(
            route_change(&change, Scope::plain(&base), &forever, &[0], i64::MAX)
                .unwrap()
                .len(),
            1
        );
    }
}
