//! Byte-level routing, the fast path: for a change written with the router's
//! own version of the dataset schema, and a dataset whose subscriptions all
//! filter with a simple shape (`field.path == "literal"`, `in_unit`,
//! `province_of`, or the constant `true` or `false`), the change is routed
//! without building Avro values; a new view's backfill takes the same path
//! ([`FastBackfill`]). The envelope's bytes are walked once (spans of
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
    /// The index: which views a value read at a path may put a change in.
    index: Index,
    /// Whether the index is used (else every view is decided for every
    /// change: [`FastRoute::without_index`]).
    indexed: bool,
}

/// Per filtered path, the views (by their place in the input's list) each
/// value may satisfy: a change is decided only for the views its `before`
/// or `after` image satisfies (every other view's decision is
/// [`Decision::Nothing`]), so routing costs what a change concerns, not
/// the number of subscriptions on its dataset.
#[derive(Debug, Default)]
struct Index {
    /// Per path, per literal number: the views testing equality with it.
    literal: Vec<Vec<Vec<usize>>>,
    /// Per path: unit code → the views testing `in_unit` with it.
    unit: Vec<HashMap<String, Vec<usize>>>,
    /// Per path: province code → the views testing `province_of` with it.
    province: Vec<HashMap<String, Vec<usize>>>,
    /// The views whose filter is `true`: every change concerns them.
    always: Vec<usize>,
}

impl Index {
    fn new(paths: usize, tests: &[(usize, Check)]) -> Self {
        let mut ix = Index {
            literal: vec![Vec::new(); paths],
            unit: vec![HashMap::new(); paths],
            province: vec![HashMap::new(); paths],
            always: Vec::new(),
        };
        for (nth, (path, check)) in tests.iter().enumerate() {
            match check {
                Check::Eq(n) => {
                    if let Some(of_path) = ix.literal.get_mut(*path) {
                        let n = *n as usize;
                        if of_path.len() <= n {
                            of_path.resize(n + 1, Vec::new());
                        }
                        if let Some(views) = of_path.get_mut(n) {
                            views.push(nth);
                        }
                    }
                }
                Check::InUnit(u) => {
                    if let Some(m) = ix.unit.get_mut(*path) {
                        m.entry(u.clone()).or_default().push(nth);
                    }
                }
                Check::Province(c) => {
                    if let Some(m) = ix.province.get_mut(*path) {
                        m.entry(c.clone()).or_default().push(nth);
                    }
                }
                Check::Always(true) => ix.always.push(nth),
                // No change ever concerns a view of nothing.
                Check::Always(false) => {}
            }
        }
        ix
    }

    /// Adds to `out` the views the values `found` (one per path) may
    /// satisfy.
    fn candidates(&self, found: &[Found<'_>], out: &mut Vec<usize>) {
        out.extend_from_slice(&self.always);
        for (path, f) in found.iter().enumerate().take(self.literal.len()) {
            if let Some(views) = f
                .literal
                .and_then(|n| self.literal.get(path)?.get(n as usize))
            {
                out.extend_from_slice(views);
            }
            let Some(place) = f.place else {
                continue;
            };
            if let Some(units) = self.unit.get(path).filter(|m| !m.is_empty()) {
                for w in &place.within {
                    if let Some(views) = units.get(w) {
                        out.extend_from_slice(views);
                    }
                }
            }
            if let Some(views) = place
                .province
                .as_ref()
                .and_then(|c| self.province.get(path)?.get(c))
            {
                out.extend_from_slice(views);
            }
        }
    }
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
    /// Nothing: the filter is the constant `true` or `false`.
    Always(bool),
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
    /// Its label for metrics (a backfill tells an entry from a resend,
    /// both snapshots).
    pub label: &'static str,
    /// The encoded record (wire format).
    pub value: &'a [u8],
}

/// The records one change routes to, in buffers reused from one change to
/// the next (one allocation per batch, not one per record).
#[derive(Debug, Default)]
pub struct FastOutputs {
    buf: Vec<u8>,
    /// (nth, decision, label, end of its value in `buf`).
    items: Vec<(usize, Decision, &'static str, usize)>,
    /// The views the change may concern ([`Index::candidates`]).
    candidates: Vec<usize>,
}

impl FastOutputs {
    /// The records, in the input's view order.
    pub fn iter(&self) -> impl Iterator<Item = FastOutput<'_>> {
        let mut start = 0;
        self.items.iter().map(move |&(nth, decision, label, end)| {
            let value = self.buf.get(start..end).unwrap_or_default();
            start = end;
            FastOutput {
                nth,
                decision,
                label,
                value,
            }
        })
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.items.clear();
    }
}

/// What the fast path routed since the last [`Tally::flush`], from which
/// each view's changes filtered out and withheld after expiry are counted
/// once per batch: per input, the changes routed, and per view, the
/// records it got. The fast path never visits a view a change does not
/// concern, so the rest of a view's changes are the ones filtered out (or,
/// once it has expired, withheld).
#[derive(Debug, Default)]
pub struct Tally {
    /// Per input: its views (indexes into all views) and the changes
    /// routed.
    seen: Vec<(Vec<usize>, u64)>,
    /// Per view (index into all views): records it got.
    hits: Vec<u64>,
}

impl Tally {
    /// Adds the counts to `views`' counters and starts again from zero.
    pub fn flush(&mut self, views: &[View], now_ms: i64) {
        for (i, filtered, expired) in self.take(views, now_ms) {
            if let Some(v) = views.get(i) {
                if filtered > 0 {
                    v.counters.filtered.increment(filtered);
                }
                if expired > 0 {
                    v.counters.expired.increment(expired);
                }
            }
        }
    }

    /// Per view: (index, changes filtered out, changes withheld after
    /// expiry) since the last call; starts again from zero.
    fn take(&mut self, views: &[View], now_ms: i64) -> Vec<(usize, u64, u64)> {
        let mut counts = Vec::new();
        for (idx, n) in self.seen.drain(..) {
            for i in idx {
                let got = self.hits.get_mut(i).map(std::mem::take).unwrap_or(0);
                let rest = n.saturating_sub(got);
                let expired = views.get(i).is_some_and(|v| v.expired(now_ms));
                counts.push(if expired { (i, 0, rest) } else { (i, rest, 0) });
            }
        }
        counts
    }

    fn routed(&mut self, idx: &[usize]) {
        // Inputs share no view: the first one and the length tell them
        // apart without comparing whole lists.
        match self
            .seen
            .iter_mut()
            .find(|(s, _)| s.first() == idx.first() && s.len() == idx.len())
        {
            Some((_, n)) => *n += 1,
            None => self.seen.push((idx.to_vec(), 1)),
        }
    }

    fn hit(&mut self, i: usize) {
        if self.hits.len() <= i {
            self.hits.resize(i + 1, 0);
        }
        if let Some(n) = self.hits.get_mut(i) {
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
            if let Some(b) = v.filter.constant() {
                // No path read: the path index is not used.
                tests.push((usize::MAX, Check::Always(b)));
            } else {
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
            }
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
        let index = Index::new(paths.len(), &tests);
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
            index,
            indexed: true,
        })
    }

    /// The same routes with every view decided for every change, as before
    /// the index: the baseline `govbus-bench index` measures it against.
    pub fn without_index(mut self) -> Self {
        self.indexed = false;
        self
    }

    /// Whether changes written with `writer` can take the fast path: the
    /// change envelope around the very entity schema the views know.
    pub fn accepts(&self, writer: &Schema) -> bool {
        accepts(&self.canonical, writer)
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
        tally.routed(idx);
        for &(nth, ..) in &out.items {
            if let Some(&i) = idx.get(nth) {
                tally.hit(i);
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
        let Spans {
            event_id,
            op,
            before,
            after,
            tail,
            ts_ms,
        } = walk(&self.entity, &self.names, payload)?;
        let tail = payload.get(tail.0..tail.1)?;
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
        // Only the views an image may satisfy: for any other, neither
        // image matches and the decision is Nothing.
        let mut candidates = std::mem::take(&mut out.candidates);
        candidates.clear();
        if self.indexed {
            for found in [&vb, &va].into_iter().flatten() {
                self.index.candidates(found, &mut candidates);
            }
        } else {
            candidates.extend(0..self.tests.len());
        }
        candidates.sort_unstable();
        candidates.dedup();
        let change = Walked {
            payload,
            event_id,
            op,
            before,
            after,
            tail,
            found: (vb, va),
        };
        let routed = self.write(&change, all, idx, now_ms, &candidates, out);
        out.candidates = candidates;
        routed
    }

    /// Writes the records of the views `candidates` (in order) into `out`.
    fn write(
        &self,
        change: &Walked<'_, '_>,
        all: &[View],
        idx: &[usize],
        now_ms: i64,
        candidates: &[usize],
        out: &mut FastOutputs,
    ) -> Option<()> {
        let Walked {
            payload,
            event_id,
            op,
            before,
            after,
            tail,
            found: (vb, va),
        } = change;
        let (op, before, after) = (*op, *before, *after);
        for &nth in candidates {
            let i = *idx.get(nth)?;
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
                        Check::Always(b) => *b,
                    }
                })
            };
            let decision = decide(op, m(vb), m(va));
            let Some(new_op) = decision.op() else {
                continue;
            };
            if v.expired(now_ms) {
                continue;
            }
            let codec = v.codec.as_ref()?;
            let images = decision.images();
            let record = Record {
                schema_id: codec.id,
                event_id: *event_id,
                op: new_op,
                before: before.filter(|_| images.before),
                after: after.filter(|_| images.after),
                drops: self.drops.get(nth)?,
            };
            record.write(&self.entity, &self.names, payload, tail, &mut out.buf)?;
            out.items
                .push((nth, decision, decision.label(), out.buf.len()));
        }
        Some(())
    }
}

/// A change as the fast path walked it: spans of its payload and, per
/// image, what was read at each filtered path.
struct Walked<'p, 'h> {
    payload: &'p [u8],
    event_id: (usize, usize),
    op: Op,
    before: Option<(usize, usize)>,
    after: Option<(usize, usize)>,
    tail: &'p [u8],
    found: (
        Option<[Found<'h>; MAX_PATHS]>,
        Option<[Found<'h>; MAX_PATHS]>,
    ),
}

/// One view a backfill brings in step, for [`FastBackfill`]: as it was
/// (`old`, with the map its filter was evaluated with) and as it is to be
/// (`new`), the view whose topic gets the records (`out`), and whether
/// rows in both are sent again (`resend`).
#[derive(Debug, Clone, Copy)]
pub struct Fill<'a> {
    pub old: Option<(&'a View, Option<&'a Hierarchy>)>,
    pub new: Option<(&'a View, Option<&'a Hierarchy>)>,
    pub out: &'a View,
    pub resend: bool,
}

/// A filter the backfill's byte-level path evaluates on an image.
#[derive(Debug)]
enum Pred<'a> {
    /// `true` or `false`.
    Always(bool),
    /// A simple shape ([`Test`]) at `path`, with the map it asks.
    Test {
        path: Vec<String>,
        want: Want,
        hierarchy: Option<&'a Hierarchy>,
    },
}

/// What a [`Pred::Test`] tests its string for.
#[derive(Debug)]
enum Want {
    Eq(String),
    InUnit(String),
    Province(String),
}

impl<'a> Pred<'a> {
    fn of(view: &View, hierarchy: Option<&'a Hierarchy>) -> Option<Self> {
        if let Some(b) = view.filter.constant() {
            return Some(Pred::Always(b));
        }
        let (path, test) = view.filter.test()?;
        let want = match test {
            Test::Eq(l) => Want::Eq(l.to_string()),
            Test::InUnit(u) => Want::InUnit(u.to_string()),
            Test::ProvinceIs(p) => Want::Province(p.to_string()),
        };
        Some(Pred::Test {
            path,
            want,
            hierarchy,
        })
    }

    /// Whether `image` (an entity's bytes) of a change of `day` satisfies
    /// the filter, as [`govbus_schema::cel::Filter::matches_at`] decides
    /// it; None when the walk cannot tell.
    fn holds(
        &self,
        entity: &Schema,
        names: &Names,
        image: &[u8],
        day: chrono::NaiveDate,
    ) -> Option<bool> {
        let (path, want, hierarchy) = match self {
            Pred::Always(b) => return Some(*b),
            Pred::Test {
                path,
                want,
                hierarchy,
            } => (path, want, hierarchy),
        };
        let Some(s) = field_str(entity, names, image, path)? else {
            return Some(false); // null
        };
        Some(match want {
            Want::Eq(l) => s == l,
            Want::InUnit(u) => hierarchy.is_some_and(|h| h.in_unit(s, u, day)),
            Want::Province(c) => hierarchy
                .and_then(|h| h.province_of(s, day))
                .is_some_and(|q| q == c),
        })
    }
}

/// One [`Fill`] as the byte-level path evaluates it.
#[derive(Debug)]
struct FillItem<'a> {
    was: Option<Pred<'a>>,
    is: Option<Pred<'a>>,
    reprojected: bool,
    drops: Vec<Vec<String>>,
    schema_id: u32,
}

/// The byte-level path of a backfill: each entity's current change, written
/// with the views' own version of the dataset schema, decided for each
/// [`Fill`] as [`crate::route::backfill`] decides it (enter, leave or
/// resend, on the `after` image), its record assembled from the input's
/// bytes. For views whose filters are `true`, `false` or a simple shape
/// ([`Test`]); anything else, and any change the walk cannot read, takes
/// the general path.
#[derive(Debug)]
pub struct FastBackfill<'a> {
    entity: Schema,
    names: Names,
    canonical: String,
    items: Vec<FillItem<'a>>,
}

impl<'a> FastBackfill<'a> {
    /// None when a view's filter is not of a fast shape, a view has no
    /// codec yet, or the views do not share one entity schema.
    pub fn new(fills: &[Fill<'a>]) -> Option<Self> {
        let first = fills.first()?;
        let entity = (*first.out.entity).clone();
        let canonical = entity.canonical_form();
        let mut items = Vec::with_capacity(fills.len());
        for f in fills {
            let same = |v: &View| v.entity.canonical_form() == canonical;
            if !same(f.out)
                || f.old.is_some_and(|(v, _)| !same(v))
                || f.new.is_some_and(|(v, _)| !same(v))
            {
                return None;
            }
            let pred = |v: Option<(&View, Option<&'a Hierarchy>)>| -> Option<Option<Pred<'a>>> {
                match v {
                    Some((v, h)) => Some(Some(Pred::of(v, h)?)),
                    None => Some(None),
                }
            };
            items.push(FillItem {
                was: pred(f.old)?,
                is: pred(f.new)?,
                reprojected: f.resend
                    || f.old
                        .zip(f.new)
                        .is_some_and(|((o, _), (n, _))| o.drop != n.drop),
                drops: f
                    .out
                    .drop
                    .iter()
                    .map(|d| d.split('.').map(str::to_string).collect())
                    .collect(),
                schema_id: f.out.codec.as_ref()?.id,
            });
        }
        let names = Names::of(&entity);
        Some(Self {
            entity,
            names,
            canonical,
            items,
        })
    }

    /// Whether changes written with `writer` can take this path.
    pub fn accepts(&self, writer: &Schema) -> bool {
        accepts(&self.canonical, writer)
    }

    /// The records of `payload` (an entity's current change, written with
    /// an accepted schema) for each fill, in order (`nth` is the fill's
    /// place); false: take the general path (`out` is then empty).
    pub fn fill(&self, payload: &[u8], out: &mut FastOutputs) -> bool {
        out.clear();
        let filled = self.fill_into(payload, out).is_some();
        if !filled {
            out.clear();
        }
        filled
    }

    fn fill_into(&self, payload: &[u8], out: &mut FastOutputs) -> Option<()> {
        let spans = walk(&self.entity, &self.names, payload)?;
        let Some((a, b)) = spans.after else {
            return Some(()); // deleted: in no view
        };
        let image = payload.get(a..b)?;
        let tail = payload.get(spans.tail.0..spans.tail.1)?;
        let day = crate::map::day_of_ms(spans.ts_ms);
        let holds = |p: &Option<Pred<'_>>| -> Option<bool> {
            match p {
                Some(p) => p.holds(&self.entity, &self.names, image, day),
                None => Some(false),
            }
        };
        for (nth, item) in self.items.iter().enumerate() {
            let (was, is) = (holds(&item.was)?, holds(&item.is)?);
            let (label, decision) = match (was, is) {
                (false, true) => ("enter", Decision::Snapshot),
                (true, false) => ("leave", Decision::Delete),
                (true, true) if item.reprojected => ("resend", Decision::Snapshot),
                _ => continue,
            };
            let (Some(op), images) = (decision.op(), decision.images()) else {
                continue;
            };
            let record = Record {
                schema_id: item.schema_id,
                event_id: spans.event_id,
                op,
                before: images.before.then_some((a, b)),
                after: images.after.then_some((a, b)),
                drops: &item.drops,
            };
            record.write(&self.entity, &self.names, payload, tail, &mut out.buf)?;
            out.items.push((nth, decision, label, out.buf.len()));
        }
        Some(())
    }
}

/// Whether `writer` is the change envelope around the entity schema of
/// canonical form `canonical` (and nothing else).
fn accepts(canonical: &str, writer: &Schema) -> bool {
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
            [Schema::Null, e] => e.canonical_form() == canonical,
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

/// The parts of a change envelope written with an accepted schema, as
/// spans of its payload.
struct Spans {
    event_id: (usize, usize),
    op: Op,
    before: Option<(usize, usize)>,
    after: Option<(usize, usize)>,
    /// `source` and `ts_ms`, copied as they are.
    tail: (usize, usize),
    ts_ms: i64,
}

/// Walks `payload` (wire format: the envelope around `entity`) once; None
/// when its bytes are not exactly that.
fn walk(entity: &Schema, names: &Names, payload: &[u8]) -> Option<Spans> {
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
            1 => Some(Some(r.span(|r| r.skip(entity, names))?)),
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
    Some(Spans {
        event_id,
        op,
        before,
        after,
        tail: (tail_start, payload.len()),
        ts_ms,
    })
}

/// One view's record, assembled from an input's bytes.
struct Record<'d> {
    /// The view's schema id.
    schema_id: u32,
    event_id: (usize, usize),
    op: Op,
    /// The images it carries (spans of entities in the input).
    before: Option<(usize, usize)>,
    after: Option<(usize, usize)>,
    /// The view's dropped paths.
    drops: &'d [Vec<String>],
}

impl Record<'_> {
    /// Appends the record (wire format) to `w`.
    fn write(
        &self,
        entity: &Schema,
        names: &Names,
        payload: &[u8],
        tail: &[u8],
        w: &mut Vec<u8>,
    ) -> Option<()> {
        w.push(0);
        w.extend_from_slice(&self.schema_id.to_be_bytes());
        w.extend_from_slice(payload.get(self.event_id.0..self.event_id.1)?);
        write_long(w, op_index(self.op));
        for img in [self.before, self.after] {
            match img {
                Some((a, b)) => {
                    w.push(2); // union branch 1
                    project(entity, names, payload.get(a..b)?, self.drops, w)?;
                }
                None => w.push(0),
            }
        }
        w.extend_from_slice(tail);
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
    use govbus_schema::client::FixedResolver;
    use govbus_schema::envelope::envelope_schema;
    use govbus_schema::EnvelopeCodec;

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
        let v = govbus_producer::demo::envelopes(n, 11, 7, 1_700_000_000_000);
        assert_eq!(v.len(), n);
        v
    }

    /// Per view of `all`: changes filtered out and withheld after expiry
    /// since the last call.
    fn counts(tally: &mut Tally, all: &[View], now_ms: i64) -> (Vec<u64>, Vec<u64>) {
        let (mut filtered, mut expired) = (vec![0; all.len()], vec![0; all.len()]);
        for (i, f, e) in tally.take(all, now_ms) {
            filtered[i] += f;
            expired[i] += e;
        }
        (filtered, expired)
    }

    /// The demo's administrative map as of 2026-11-30, the fast path over
    /// `all` with it, and what the general path routes with.
    struct OnTheMap {
        hierarchy: std::sync::Arc<govbus_core::admin_map::Hierarchy>,
        fast: FastRoute,
        resolver: FixedResolver,
        base: Context<'static>,
    }

    impl OnTheMap {
        fn new(all: &[View]) -> Self {
            use govbus_core::admin_map::{AdminMap, Hierarchy};
            let (map, skipped) = AdminMap::from_rows(&govbus_producer::demo::admin_units());
            assert!(skipped.is_empty(), "{skipped:?}");
            let hierarchy =
                std::sync::Arc::new(Hierarchy::new(&map, "2026-11-30".parse().unwrap()));
            let refs: Vec<&View> = all.iter().collect();
            let fast =
                FastRoute::new(&refs, hierarchy.clone()).expect("these filters take the fast path");
            let writer = Schema::parse_str(&envelope_schema(RESIDENTS).unwrap()).unwrap();
            Self {
                base: govbus_schema::cel::hierarchy_context(hierarchy.clone()),
                resolver: FixedResolver::new([(7, writer)]),
                hierarchy,
                fast,
            }
        }

        fn scope(&self) -> crate::route::Scope<'_> {
            crate::route::Scope {
                base: &self.base,
                hierarchy: Some(&self.hierarchy),
            }
        }
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
        let (filtered, expired) = counts(&mut tally, &all, 0);
        assert_eq!(
            filtered.iter().sum::<u64>() as usize + routed,
            600 * all.len()
        );
        assert_eq!(expired.iter().sum::<u64>(), 0);
        assert_eq!(counts(&mut tally, &all, 0), (vec![0; 4], vec![0; 4]));
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
        let (filtered, expired) = counts(&mut tally, &all, 11);
        assert_eq!(expired, vec![n as u64, 0]);
        assert_eq!(filtered[0], 0);
        assert_eq!(filtered[1] as usize + to_p92, n);
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
        assert_eq!(counts(&mut tally, &all, 0), (vec![0], vec![0]));
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
        let idx: Vec<usize> = (0..all.len()).collect();
        let refs: Vec<&View> = all.iter().collect();
        let m = OnTheMap::new(&all);
        let fast = &m.fast;
        let scope = m.scope();
        let resolver = &m.resolver;
        let (mut out, mut tally) = (FastOutputs::default(), Tally::default());
        let mut per_view = [0usize; 4];
        for payload in changes(600) {
            let q = agree(fast, &payload, resolver, scope, &all, &mut out, &mut tally);
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

    /// Hundreds of subscriptions on one dataset: provinces and their
    /// communes by `in_unit`, `province_of` and the province code, each
    /// several times (departments with their own drops). The records are
    /// the general path's, and each change is decided only for the views
    /// it enters, stays in or leaves: the index proposes no other.
    #[test]
    fn the_index_proposes_exactly_the_views_a_change_concerns() {
        let mut subs: Vec<(String, String, String)> = Vec::new();
        for dept in 0..6 {
            let drop = ["", "\"ethnicity\"", "\"full_name\""][dept % 3];
            for (p, communes) in govbus_producer::demo::PROVINCES {
                let who = format!("p{p}_d{dept}");
                let f = [
                    "in_unit(permanent_address.commune_code, \"{c}\")",
                    "province_of(permanent_address.commune_code) == \"{c}\"",
                    "permanent_address.province_code == \"{c}\"",
                ];
                subs.push((who.clone(), f[dept % 3].replace("{c}", p), drop.into()));
                for c in communes.iter() {
                    let commune = format!("{who}_c{c}");
                    subs.push((commune, f[0].replace("{c}", c), drop.into()));
                }
            }
        }
        let refs: Vec<(&str, &str, &str)> = subs
            .iter()
            .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()))
            .collect();
        let all = views(&refs);
        assert!(all.len() > 60, "{}", all.len());
        let m = OnTheMap::new(&all);
        let (fast, scope, resolver) = (&m.fast, m.scope(), &m.resolver);
        let (mut out, mut tally) = (FastOutputs::default(), Tally::default());
        let mut routed = 0;
        for payload in changes(300) {
            let q = agree(fast, &payload, resolver, scope, &all, &mut out, &mut tally);
            let concerned: Vec<usize> = q.iter().map(|o| o.0).collect();
            assert_eq!(out.candidates, concerned);
            routed += q.len();
        }
        assert!(routed > 300, "{routed}");
        let (filtered, _) = counts(&mut tally, &all, 0);
        assert_eq!(
            filtered.iter().sum::<u64>() as usize + routed,
            300 * all.len()
        );
    }

    /// `true` and `false` filters (a view of every row, of none) take the
    /// fast path with the others and route as the general path does.
    #[test]
    fn constant_filters_take_the_fast_path_and_agree_with_the_general_path() {
        let all = views(&[
            ("pall", "true", "\"ethnicity\""),
            ("pnone", "false", ""),
            ("p52", r#"permanent_address.province_code == "52""#, ""),
        ]);
        let refs: Vec<&View> = all.iter().collect();
        let fast = FastRoute::new(&refs, Default::default()).expect("constants take the fast path");
        let m = OnTheMap::new(&all[2..]);
        let base = Context::default();
        let (mut out, mut tally) = (FastOutputs::default(), Tally::default());
        let mut per_view = [0usize; 3];
        for payload in changes(300) {
            let scope = crate::route::Scope::plain(&base);
            for o in agree(
                &fast,
                &payload,
                &m.resolver,
                scope,
                &all,
                &mut out,
                &mut tally,
            ) {
                per_view[o.0] += 1;
            }
        }
        assert_eq!(
            per_view[0], 300,
            "every change reaches the view of every row"
        );
        assert_eq!(per_view[1], 0);
        assert!(per_view[2] > 10, "{per_view:?}");
    }

    /// A backfill on the byte path: for every entity's current change and
    /// every kind of fill (a new view, a filter changed to another shape,
    /// the map's filters, drops changed, a resend, a removed view emptied),
    /// the same records and labels as `route::backfill`.
    #[test]
    fn a_backfill_on_the_byte_path_writes_what_the_general_path_writes() {
        let all = views(&[
            ("a", "true", "\"ethnicity\""),
            ("b_old", r#"permanent_address.province_code == "92""#, ""),
            ("b", r#"in_unit(permanent_address.commune_code, "52")"#, ""),
            ("c_old", "true", ""),
            ("c", "true", "\"full_name\""),
            (
                "d_old",
                r#"in_unit(permanent_address.commune_code, "92")"#,
                "",
            ),
            (
                "e",
                r#"province_of(permanent_address.commune_code) == "01""#,
                "",
            ),
            ("f_old", "false", ""),
            ("f", r#"sex == "MALE""#, "\"ethnicity\""),
        ]);
        let m = OnTheMap::new(&all[1..3]);
        let h = Some(m.hierarchy.as_ref());
        // (old view, new view, the view written to, resend), by place in `all`.
        let fill = |old: Option<usize>, new: Option<usize>, out: usize, resend: bool| Fill {
            old: old.map(|i| (&all[i], h)),
            new: new.map(|i| (&all[i], h)),
            out: &all[out],
            resend,
        };
        let fills = [
            fill(None, Some(0), 0, false),
            fill(Some(1), Some(2), 2, false),
            fill(Some(3), Some(4), 4, false),
            fill(Some(5), None, 5, false),
            fill(Some(6), Some(6), 6, true),
            fill(Some(7), Some(8), 8, false),
        ];
        let fast = FastBackfill::new(&fills).expect("these filters take the byte path");
        let writer = Schema::parse_str(&envelope_schema(RESIDENTS).unwrap()).unwrap();
        assert!(fast.accepts(&writer));
        let scope = m.scope();
        let mut out = FastOutputs::default();
        let mut labels: HashMap<(usize, &str), usize> = HashMap::new();
        for payload in changes(600) {
            let (_, change) =
                govbus_schema::envelope::decode_in(&payload, &m.resolver, "s-value").unwrap();
            let mut general = Vec::new();
            for (nth, f) in fills.iter().enumerate() {
                let old = f.old.map(|(v, _)| (v, scope));
                let new = f.new.map(|(v, _)| (v, scope));
                if let Some((label, value)) =
                    crate::route::backfill(&change, old, new, f.out, f.resend).unwrap()
                {
                    general.push((nth, label, value));
                }
            }
            assert!(fast.fill(&payload, &mut out));
            let q: Vec<_> = out
                .iter()
                .map(|o| (o.nth, o.label, o.value.to_vec()))
                .collect();
            assert_eq!(general, q);
            for (nth, label, _) in q {
                *labels.entry((nth, label)).or_default() += 1;
            }
        }
        // Each kind of record was written.
        for want in [
            (0, "enter"),
            (1, "enter"),
            (1, "leave"),
            (2, "resend"),
            (3, "leave"),
            (4, "resend"),
            (5, "enter"),
        ] {
            assert!(
                labels.get(&want).is_some_and(|n| *n > 5),
                "{want:?}: {labels:?}"
            );
        }
        // What the byte path cannot read is left to the general one.
        let payload = &changes(1)[0];
        assert!(!fast.fill(&payload[..payload.len() - 2], &mut out));
        assert!(out.iter().next().is_none());
        // A filter of another shape: no byte path for the fills.
        let other = views(&[("x", r#"permanent_address.province_code in ["52"]"#, "")]);
        let x = [Fill {
            old: None,
            new: Some((&other[0], None)),
            out: &other[0],
            resend: false,
        }];
        assert!(FastBackfill::new(&x).is_none());
    }
}
