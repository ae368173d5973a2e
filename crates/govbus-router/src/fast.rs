//! Byte-level routing, the fast path: for a change written with the router's
//! own version of the dataset schema, and a dataset whose subscriptions all
//! filter with `field.path == "literal"`, the change is routed without
//! building Avro values. The envelope's bytes are walked once (spans of
//! `before`, `after` and the rest), the filtered field is read in place, and
//! each view's record is assembled from the input's bytes with the dropped
//! fields left out. Anything else — another writer version, a field type
//! the walk does not read, malformed bytes — returns `None` and takes the
//! general path (`route::route`), which decides and dead-letters exactly as
//! before. `tests` check byte for byte that both paths agree.

// Bytes from outside are walked here: no unwrap, expect, panic or
// unchecked indexing outside tests (the general path decides what this
// cannot).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

use std::collections::HashMap;
use std::sync::Arc;

use apache_avro::schema::Schema;
use govbus_core::admin_map::{Hierarchy, Place};
use govbus_schema::bytes::{field_str, project, write_long, Reader};
use govbus_schema::cel::Test;
use govbus_schema::names::Names;
use govbus_schema::Op;

use crate::decide::{decide, Decision};
use crate::views::View;

/// The most distinct filtered fields an input's fast path reads (more take
/// the general path).
const MAX_PATHS: usize = 8;

/// What the fast path needs of one input topic's views.
#[derive(Debug)]
pub struct FastRoute {
    entity: Schema,
    names: Names,
    /// The entity schema's canonical form.
    canonical: String,
    /// Distinct filtered paths.
    paths: Vec<Vec<String>>,
    /// Per path: each literal a view tests it against → a small number.
    literals: Vec<HashMap<String, u32>>,
    /// Per view (in the input's view order): its path index and test.
    tests: Vec<(usize, Check)>,
    /// Per path: whether a view asks the hierarchy about it.
    asks_map: Vec<bool>,
    /// The administrative map as of the router's day.
    hierarchy: Arc<Hierarchy>,
    /// Per view: dropped paths.
    drops: Vec<Vec<Vec<String>>>,
}

/// What a view tests its path's value for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Check {
    /// Equal to the literal of this number.
    Eq(u32),
    /// The code lies in the unit.
    InUnit(String),
    /// The code's province.
    Province(String),
}

/// What the walk read at one path of an image.
#[derive(Debug, Clone, Copy, Default)]
struct Found<'h> {
    /// The number of the literal the value equals.
    literal: Option<u32>,
    /// Where the value, as a code, lies.
    place: Option<&'h Place>,
}

/// One record for a view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastOutput<'a> {
    /// Position in the input's view list (`idx`).
    pub nth: usize,
    /// The decision taken.
    pub decision: Decision,
    /// The encoded record (wire format).
    pub value: &'a [u8],
}

/// The records one change routes to, in buffers reused from one change to
/// the next (one allocation per batch, not one per record).
#[derive(Debug, Default)]
pub struct FastOutputs {
    buf: Vec<u8>,
    /// (nth, decision, end of its value in `buf`).
    items: Vec<(usize, Decision, usize)>,
}

impl FastOutputs {
    /// The records, in the input's view order.
    pub fn iter(&self) -> impl Iterator<Item = FastOutput<'_>> {
        let mut start = 0;
        self.items.iter().map(move |&(nth, decision, end)| {
            let value = self.buf.get(start..end).unwrap_or_default();
            start = end;
            FastOutput {
                nth,
                decision,
                value,
            }
        })
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.items.clear();
    }
}

/// Per view (index into all views): changes filtered out and changes
/// withheld after expiry, counted in a batch and added to the views'
/// counters once per batch ([`Tally::flush`]) rather than one atomic
/// increment per view per change.
#[derive(Debug, Default)]
pub struct Tally {
    filtered: Vec<u64>,
    expired: Vec<u64>,
}

impl Tally {
    /// Adds the counts to `views`' counters and starts again from zero.
    pub fn flush(&mut self, views: &[View]) {
        for (i, v) in views.iter().enumerate() {
            if let Some(n) = self.filtered.get_mut(i).filter(|n| **n > 0) {
                v.counters.filtered.increment(std::mem::take(n));
            }
            if let Some(n) = self.expired.get_mut(i).filter(|n| **n > 0) {
                v.counters.expired.increment(std::mem::take(n));
            }
        }
    }

    fn add(counts: &mut Vec<u64>, i: usize) {
        if counts.len() <= i {
            counts.resize(i + 1, 0);
        }
        if let Some(n) = counts.get_mut(i) {
            *n += 1;
        }
    }
}

impl FastRoute {
    /// The fast path for `views` (one input's, in order), with
    /// `hierarchy` for the filters that ask the administrative map, or None
    /// when a filter is not of a simple shape ([`Test`]) or they test more
    /// than eight distinct fields (those take the general path).
    pub fn new(views: &[&View], hierarchy: Arc<Hierarchy>) -> Option<Self> {
        let first = views.first()?;
        let entity = (*first.entity).clone();
        let canonical = entity.canonical_form();
        let mut paths: Vec<Vec<String>> = Vec::new();
        let mut literals: Vec<HashMap<String, u32>> = Vec::new();
        let mut asks_map: Vec<bool> = Vec::new();
        let mut tests = Vec::new();
        let mut drops = Vec::new();
        for v in views {
            let (path, test) = v.filter.test()?;
            let i = paths.iter().position(|p| *p == path).unwrap_or_else(|| {
                paths.push(path);
                literals.push(HashMap::new());
                asks_map.push(false);
                paths.len() - 1
            });
            let check = match test {
                Test::Eq(literal) => {
                    let of_path = literals.get_mut(i)?;
                    let known = of_path.len() as u32;
                    Check::Eq(*of_path.entry(literal.to_string()).or_insert(known))
                }
                Test::InUnit(u) => Check::InUnit(u.to_string()),
                Test::ProvinceIs(p) => Check::Province(p.to_string()),
            };
            *asks_map.get_mut(i)? |= !matches!(check, Check::Eq(_));
            tests.push((i, check));
            drops.push(
                v.drop
                    .iter()
                    .map(|d| d.split('.').map(str::to_string).collect())
                    .collect(),
            );
        }
        if paths.len() > MAX_PATHS {
            return None;
        }
        let names = Names::of(&entity);
        Some(Self {
            entity,
            names,
            canonical,
            paths,
            literals,
            tests,
            asks_map,
            hierarchy,
            drops,
        })
    }

    /// Whether changes written with `writer` can take the fast path: the
    /// change envelope around the very entity schema the views know.
    pub fn accepts(&self, writer: &Schema) -> bool {
        let Schema::Record(env) = writer else {
            return false;
        };
        let shape: Vec<&str> = env.fields.iter().map(|f| f.name.as_str()).collect();
        if shape != ["event_id", "op", "before", "after", "source", "ts_ms"] {
            return false;
        }
        let [event_id, op, before, after, source, ts_ms] = env.fields.as_slice() else {
            return false;
        };
        let entity_ok = match &before.schema {
            Schema::Union(u) => match u.variants() {
                [Schema::Null, e] => e.canonical_form() == self.canonical,
                _ => false,
            },
            _ => false,
        };
        let op_ok = matches!(&op.schema, Schema::Enum(e) if e.symbols == Op::SYMBOLS);
        let source_ok = matches!(&source.schema, Schema::Record(r)
            if r.fields.iter().map(|f| (f.name.as_str(), &f.schema)).eq(
                [("agency", &Schema::String), ("system", &Schema::String), ("seq", &Schema::Long)]));
        entity_ok
            && op_ok
            && source_ok
            && event_id.schema == Schema::String
            && matches!(&after.schema, Schema::Union(u) if matches!(u.variants(), [Schema::Null, _]))
            && ts_ms.schema == Schema::Long
    }

    /// Routes `payload` (written with an accepted schema) to the views
    /// `idx` of `all` (those this was built for) at `now_ms`, into `out`;
    /// false: take the general path (then `out` and `tally` are as they
    /// were: nothing is counted twice).
    pub fn route(
        &self,
        payload: &[u8],
        all: &[View],
        idx: &[usize],
        now_ms: i64,
        out: &mut FastOutputs,
        tally: &mut Tally,
    ) -> bool {
        out.clear();
        let routed = self.route_into(payload, all, idx, now_ms, out).is_some();
        if !routed {
            out.clear();
            return false;
        }
        // Counted only once the change is routed here.
        let mut outputs = out.items.iter().map(|o| o.0).peekable();
        for (nth, &i) in idx.iter().enumerate() {
            if outputs.next_if_eq(&nth).is_some() {
                continue;
            }
            if all.get(i).is_some_and(|v| v.expired(now_ms)) {
                Tally::add(&mut tally.expired, i);
            } else {
                Tally::add(&mut tally.filtered, i);
            }
        }
        true
    }

    fn route_into(
        &self,
        payload: &[u8],
        all: &[View],
        idx: &[usize],
        now_ms: i64,
        out: &mut FastOutputs,
    ) -> Option<()> {
        let mut r = Reader::new(payload, 5);
        if payload.len() < 5 || payload.first() != Some(&0) {
            return None;
        }
        let event_id = r.span(|r| r.skip_bytes())?;
        let op = match r.long()? {
            0 => Op::Create,
            1 => Op::Update,
            2 => Op::Delete,
            3 => Op::Snapshot,
            _ => return None,
        };
        let image = |r: &mut Reader<'_>| -> Option<Option<(usize, usize)>> {
            match r.long()? {
                0 => Some(None),
                1 => Some(Some(r.span(|r| r.skip(&self.entity, &self.names))?)),
                _ => None,
            }
        };
        let before = image(&mut r)?;
        let after = image(&mut r)?;
        let tail_start = r.pos();
        r.skip_bytes()?; // source.agency
        r.skip_bytes()?; // source.system
        r.long()?; // source.seq
        let ts_ms = r.long()?;
        if r.pos() != payload.len() {
            return None;
        }
        let tail = payload.get(tail_start..)?;
        let day = crate::map::day_of_ms(ts_ms);
        // Per path, the number of the literal the image's field equals
        // (None: no view's literal, or null), and where it lies as a code
        // when a view asks.
        let read = |img: Option<(usize, usize)>| -> Option<Option<[Found<'_>; MAX_PATHS]>> {
            let Some((a, b)) = img else {
                return Some(None);
            };
            let mut found = [Found::default(); MAX_PATHS];
            for (i, p) in self.paths.iter().enumerate() {
                let Some(s) = field_str(&self.entity, &self.names, payload.get(a..b)?, p)? else {
                    continue;
                };
                *found.get_mut(i)? = Found {
                    literal: self.literals.get(i)?.get(s).copied(),
                    place: if *self.asks_map.get(i)? {
                        self.hierarchy.place(s, day)
                    } else {
                        None
                    },
                };
            }
            Some(Some(found))
        };
        let (vb, va) = (read(before)?, read(after)?);
        for (nth, &i) in idx.iter().enumerate() {
            let v = all.get(i)?;
            let (path, check) = self.tests.get(nth)?;
            let m = |vals: &Option<[Found<'_>; MAX_PATHS]>| {
                vals.as_ref().map(|x| {
                    let f = x.get(*path).copied().unwrap_or_default();
                    match check {
                        Check::Eq(n) => f.literal == Some(*n),
                        Check::InUnit(u) => {
                            f.place.is_some_and(|p| p.within.iter().any(|w| w == u))
                        }
                        Check::Province(c) => f
                            .place
                            .is_some_and(|p| p.province.as_deref() == Some(c.as_str())),
                    }
                })
            };
            let decision = decide(op, m(&vb), m(&va));
            let Some(new_op) = decision.op() else {
                continue;
            };
            if v.expired(now_ms) {
                continue;
            }
            let codec = v.codec.as_ref()?;
            let w = &mut out.buf;
            w.push(0);
            w.extend_from_slice(&codec.id.to_be_bytes());
            w.extend_from_slice(payload.get(event_id.0..event_id.1)?);
            write_long(w, op_index(new_op));
            let image = |w: &mut Vec<u8>, img: Option<(usize, usize)>, keep: bool| -> Option<()> {
                match img.filter(|_| keep) {
                    Some((a, b)) => {
                        w.push(2); // union branch 1
                        project(
                            &self.entity,
                            &self.names,
                            payload.get(a..b)?,
                            self.drops.get(nth)?,
                            w,
                        )
                    }
                    None => {
                        w.push(0);
                        Some(())
                    }
                }
            };
            let images = decision.images();
            image(w, before, images.before)?;
            image(w, after, images.after)?;
            w.extend_from_slice(tail);
            out.items.push((nth, decision, w.len()));
        }
        Some(())
    }
}

fn op_index(op: Op) -> i64 {
    match op {
        Op::Create => 0,
        Op::Update => 1,
        Op::Delete => 2,
        Op::Snapshot => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cel_interpreter::Context;
    use govbus_core::catalog::parse_subscription;
    use govbus_core::{Catalog, Topics};
    use govbus_producer::demo::DemoWorld;
    use govbus_producer::ChangeRequest;
    use govbus_schema::client::FixedResolver;
    use govbus_schema::envelope::envelope_schema;
    use govbus_schema::{Change, EnvelopeCodec, Source};

    const RESIDENTS: &str = include_str!("../../../schemas/bca/residents.v2.avsc");

    fn views(subs: &[(&str, &str, &str)]) -> Vec<View> {
        let mut c = Catalog::builtin();
        c.subscriptions = subs
            .iter()
            .map(|(p, filter, drop)| {
                parse_subscription(
                    "s.toml",
                    &format!(
                        "subscriber = \"{p}\"\ndataset = \"bca.residents\"\nfilter = '{filter}'\ndrop = [{drop}]\n"
                    ),
                )
                .unwrap()
            })
            .collect();
        let mut v = crate::views::compile(&c, &Topics::default()).unwrap();
        for (i, v) in v.iter_mut().enumerate() {
            let schema = Schema::parse_str(&v.schema).unwrap();
            v.codec = Some(EnvelopeCodec::new(schema, 100 + i as u32));
        }
        v
    }

    /// Demo changes (creates, updates, moves, deletes) as wire-format envelopes.
    fn changes(n: usize) -> Vec<Vec<u8>> {
        let entity = Schema::parse_str(RESIDENTS).unwrap();
        let codec = EnvelopeCodec::new(
            Schema::parse_str(&envelope_schema(RESIDENTS).unwrap()).unwrap(),
            7,
        );
        let mut world = DemoWorld::new(11);
        (0..n)
            .map(|i| {
                let (req, before) = world.next_with_before();
                let avro =
                    |j: &serde_json::Value| govbus_schema::json::to_avro(&entity, j).unwrap();
                let (op, after) = match &req {
                    ChangeRequest::Upsert(r) if before.is_none() => (Op::Create, Some(avro(r))),
                    ChangeRequest::Upsert(r) if i % 17 == 0 => (Op::Snapshot, Some(avro(r))),
                    ChangeRequest::Upsert(r) => (Op::Update, Some(avro(r))),
                    ChangeRequest::Delete { .. } => (Op::Delete, None),
                };
                codec
                    .encode(&Change {
                        event_id: format!("e{i}"),
                        op,
                        before: before.as_ref().map(avro),
                        after,
                        source: Source {
                            agency: "bca".into(),
                            system: "t".into(),
                            seq: i as i64 + 1,
                        },
                        ts_ms: 1_700_000_000_000 + i as i64,
                    })
                    .unwrap()
            })
            .collect()
    }

    /// Routes `payload` to every view of `all` both ways, asserts that the
    /// records are the same, and returns them as (view, decision).
    fn agree(
        fast: &FastRoute,
        payload: &[u8],
        resolver: &FixedResolver,
        scope: crate::route::Scope<'_>,
        all: &[View],
        out: &mut FastOutputs,
        tally: &mut Tally,
    ) -> Vec<(usize, Decision)> {
        let idx: Vec<usize> = (0..all.len()).collect();
        let general =
            crate::route::route(payload, resolver, "s-value", scope, all, &idx, 0).unwrap();
        assert!(fast.route(payload, all, &idx, 0, out, tally));
        let g: Vec<_> = general
            .iter()
            .map(|o| (o.view, o.decision, o.value.as_slice()))
            .collect();
        let q: Vec<_> = out.iter().map(|o| (o.nth, o.decision, o.value)).collect();
        assert_eq!(g, q);
        q.into_iter().map(|(v, d, _)| (v, d)).collect()
    }

    #[test]
    fn the_fast_path_writes_the_same_bytes_as_the_general_path() {
        let all = views(&[
            (
                "p52",
                r#"permanent_address.province_code == "52""#,
                "\"ethnicity\"",
            ),
            ("p92", r#"permanent_address.province_code == "94""#, ""),
            (
                "p01",
                r#"permanent_address.province_code == "01""#,
                "\"ethnicity\", \"permanent_address.street\"",
            ),
            ("pm", r#"sex == "MALE""#, "\"full_name\""),
        ]);
        let refs: Vec<&View> = all.iter().collect();
        let fast =
            FastRoute::new(&refs, Default::default()).expect("equality filters take the fast path");
        let writer = Schema::parse_str(&envelope_schema(RESIDENTS).unwrap()).unwrap();
        assert!(
            fast.accepts(&writer),
            "{}\n{}",
            fast.canonical,
            writer.canonical_form()
        );
        let resolver = FixedResolver::new([(7, writer)]);
        let base = Context::default();
        let (mut routed, mut moves) = (0, 0);
        let (mut out, mut tally) = (FastOutputs::default(), Tally::default());
        for payload in changes(600) {
            let scope = crate::route::Scope::plain(&base);
            let q = agree(
                &fast, &payload, &resolver, scope, &all, &mut out, &mut tally,
            );
            routed += q.len();
            moves += q.iter().filter(|o| o.1 == Decision::Delete).count();
        }
        assert!(routed > 600 && moves > 20, "{routed} {moves}");
        // Every change counted once per view: routed there or filtered out.
        let filtered: u64 = tally.filtered.iter().sum();
        assert_eq!(filtered as usize + routed, 600 * all.len());
        assert_eq!(tally.expired.iter().sum::<u64>(), 0);
    }

    #[test]
    fn an_expired_view_gets_nothing_and_is_counted_as_expired() {
        let mut all = views(&[
            ("p52", r#"permanent_address.province_code == "52""#, ""),
            ("p92", r#"permanent_address.province_code == "94""#, ""),
        ]);
        all[0].expires_ms = Some(10);
        let refs: Vec<&View> = all.iter().collect();
        let fast = FastRoute::new(&refs, Default::default()).unwrap();
        let (mut out, mut tally) = (FastOutputs::default(), Tally::default());
        let (mut to_p92, n) = (0, 200);
        for payload in changes(n) {
            assert!(fast.route(&payload, &all, &[0, 1], 11, &mut out, &mut tally));
            assert!(out.iter().all(|o| o.nth == 1));
            to_p92 += out.iter().count();
        }
        assert_eq!(tally.expired, vec![n as u64]);
        assert_eq!(
            tally.filtered.get(1).copied().unwrap_or(0) as usize + to_p92,
            n
        );
    }

    #[test]
    fn what_the_fast_path_cannot_read_goes_the_general_way() {
        let all = views(&[("p52", r#"permanent_address.province_code == "52""#, "")]);
        let refs: Vec<&View> = all.iter().collect();
        let fast = FastRoute::new(&refs, Default::default()).unwrap();
        let payload = &changes(1)[0];
        let (mut out, mut tally) = (FastOutputs::default(), Tally::default());
        let mut route = |p: &[u8]| fast.route(p, &all, &[0], 0, &mut out, &mut tally);
        // Truncated, trailing bytes, not the wire format.
        assert!(!route(&payload[..payload.len() - 3]));
        let mut longer = payload.clone();
        longer.push(0);
        assert!(!route(&longer));
        assert!(!route(b"{}"));
        // Nothing counted for what the general path will count.
        assert!(out.iter().next().is_none());
        assert!(tally.filtered.iter().chain(&tally.expired).all(|n| *n == 0));
        // Another writer version is not accepted.
        let mut v2: serde_json::Value = serde_json::from_str(RESIDENTS).unwrap();
        v2["fields"].as_array_mut().unwrap().push(
            serde_json::json!({"name": "phone", "type": ["null", "string"], "default": null}),
        );
        let v2 = Schema::parse_str(&envelope_schema(&v2.to_string()).unwrap()).unwrap();
        assert!(!fast.accepts(&v2));
        // A filter that is not an equality: no fast path for the input.
        let other = views(&[("p52", r#"permanent_address.province_code in ["52"]"#, "")]);
        let refs: Vec<&View> = other.iter().collect();
        assert!(FastRoute::new(&refs, Default::default()).is_none());
    }

    /// Hierarchy filters on the fast path: the same records as the general
    /// path (CEL with the hierarchy functions), with the demo's map, whose
    /// changes carry codes from before the reform too.
    #[test]
    fn hierarchy_filters_take_the_fast_path_and_agree_with_the_general_path() {
        use govbus_core::admin_map::{AdminMap, Hierarchy};
        let all = views(&[
            (
                "p52",
                r#"in_unit(permanent_address.commune_code, "52")"#,
                "\"ethnicity\"",
            ),
            (
                "p92",
                r#"in_unit(permanent_address.commune_code, "92")"#,
                "",
            ),
            (
                "p01",
                r#"province_of(permanent_address.commune_code) == "01""#,
                "",
            ),
            ("p79", r#"permanent_address.province_code == "79""#, ""),
        ]);
        let (map, skipped) = AdminMap::from_rows(&govbus_producer::demo::admin_units());
        assert!(skipped.is_empty(), "{skipped:?}");
        let h = std::sync::Arc::new(Hierarchy::new(&map, "2026-11-30".parse().unwrap()));
        let idx: Vec<usize> = (0..all.len()).collect();
        let refs: Vec<&View> = all.iter().collect();
        let fast = FastRoute::new(&refs, h.clone()).expect("hierarchy filters take the fast path");
        let writer = Schema::parse_str(&envelope_schema(RESIDENTS).unwrap()).unwrap();
        let resolver = FixedResolver::new([(7, writer)]);
        let base = govbus_schema::cel::hierarchy_context(h.clone());
        let scope = crate::route::Scope {
            base: &base,
            hierarchy: Some(&h),
        };
        let (mut out, mut tally) = (FastOutputs::default(), Tally::default());
        let mut per_view = [0usize; 4];
        for payload in changes(600) {
            let q = agree(
                &fast, &payload, &resolver, scope, &all, &mut out, &mut tally,
            );
            for o in &q {
                per_view[o.0] += 1;
            }
        }
        assert!(per_view.iter().all(|n| *n > 20), "{per_view:?}");
        // No map: nothing lies anywhere. Of the changes the map sends to
        // a hierarchy view, none reaches one without it.
        let blind = FastRoute::new(&refs, Default::default()).unwrap();
        let mut seen = 0;
        for payload in changes(100) {
            assert!(fast.route(&payload, &all, &idx, 0, &mut out, &mut tally));
            if out.iter().all(|o| o.nth == 3) {
                continue;
            }
            seen += 1;
            assert!(blind.route(&payload, &all, &idx, 0, &mut out, &mut tally));
            assert!(out.iter().all(|o| o.nth == 3));
        }
        assert!(seen > 10, "{seen}");
    }
}
