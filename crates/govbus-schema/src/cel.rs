//! CEL expressions over an entity's fields (subscription filters, data-quality
//! rules), checked against the dataset's schema when they are loaded.
//!
//! One file because compiling an expression, checking its fields against the
//! schema and converting values for it share one private context (the
//! functions govbus adds and their argument checks); a quarter is tests.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::names::Names;
use crate::project::record_of;
use crate::AvroValue;
use apache_avro::Schema;
use cel_interpreter::objects::{Key, Map};
use cel_interpreter::{Context, Program, Value as Cel};

/// A CEL value (what [`Vars`] hold).
pub use cel_interpreter::Value as CelValue;
/// The functions an expression may call (see [`base_context`]).
pub type BaseContext = Context<'static>;
use cel_parser::ast::{Expr, IdedExpr};

/// A compiled filter.
#[derive(Debug)]
pub struct Filter {
    source: String,
    program: Program,
    /// `path == "literal"`, `in_unit(path, "unit")` or `province_of(path)
    /// == "code"`: checked without the interpreter (the common shapes of a
    /// provincial filter; 34 of them run on every change).
    fast: Option<FastEq>,
    /// It asks hierarchy questions (`in_unit`, `province_of`).
    hierarchy: bool,
    /// The filter is the literal `true` or `false` (a view of every row,
    /// or of none): known without reading the entity.
    constant: Option<bool>,
}

/// `first.rest...` tested by `test`, with the map keys of `rest` built once.
#[derive(Debug)]
struct FastEq {
    first: String,
    rest: Vec<Key>,
    test: Shape,
}

/// The shape of a filter the router checks without CEL.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    Eq(String),
    InUnit(String),
    ProvinceIs(String),
}

/// What a simple filter tests its field for (see [`Filter::test`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Test<'a> {
    /// `path == "literal"`.
    Eq(&'a str),
    /// `in_unit(path, "unit")`: the code lies in the unit.
    InUnit(&'a str),
    /// `province_of(path) == "code"`.
    ProvinceIs(&'a str),
}

/// The administrative map a filter's hierarchy questions are asked of, and
/// the date of the change they are asked for (a code means the unit valid
/// on that date, followed to the map's day).
#[derive(Debug, Clone, Copy)]
pub struct At<'a> {
    /// The map (None: not loaded; every hierarchy question is answered no).
    pub hierarchy: Option<&'a govbus_core::admin_map::Hierarchy>,
    /// The change's date.
    pub day: chrono::NaiveDate,
}

/// The variable that carries the change's date (days from the common era)
/// to the hierarchy functions.
const DAY_VAR: &str = "__govbus_day";

/// [`base_context`] with the hierarchy functions over `hierarchy`:
/// `in_unit(code, unit)` (the code lies in the unit) and
/// `province_of(code)` (its province's code, or null), a code meaning the
/// unit valid on the change's date, followed to the map's day.
pub fn hierarchy_context(hierarchy: Arc<govbus_core::admin_map::Hierarchy>) -> Context<'static> {
    use cel_interpreter::FunctionContext;
    let mut ctx = base_context();
    let day = |ftx: &FunctionContext| -> Option<chrono::NaiveDate> {
        match ftx.ptx.get_variable(DAY_VAR) {
            Ok(Cel::Int(d)) => chrono::NaiveDate::from_num_days_from_ce_opt(d as i32),
            _ => None,
        }
    };
    let h = hierarchy.clone();
    ctx.add_function(
        "in_unit",
        move |ftx: &FunctionContext, code: Arc<String>, unit: Arc<String>| -> bool {
            day(ftx).is_some_and(|d| h.in_unit(&code, &unit, d))
        },
    );
    let h = hierarchy;
    ctx.add_function(
        "province_of",
        move |ftx: &FunctionContext,
              code: Arc<String>|
              -> Result<Cel, cel_interpreter::ExecutionError> {
            Ok(day(ftx)
                .and_then(|d| h.province_of(&code, d))
                .map_or(Cel::Null, |p| Cel::String(Arc::new(p.to_string()))))
        },
    );
    ctx
}

/// The filter could not be evaluated on an entity.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// CEL raised an error.
    #[error("filter `{filter}` failed: {reason}")]
    Eval {
        /// The expression.
        filter: String,
        /// CEL's message.
        reason: String,
    },
    /// The filter gave something other than a boolean.
    #[error("filter `{filter}` gave {got}, not a boolean")]
    NotBool {
        /// The expression.
        filter: String,
        /// What it gave.
        got: String,
    },
}

/// The root context every filter and rule is evaluated in: CEL's standard
/// functions, except that `matches` keeps its compiled regular expressions.
/// cel-interpreter's own `matches` compiles the pattern on every call —
/// measured at ≈ 75 % of the ingest's CPU with the residents' contract
/// rules (four `matches` per change; docs/BENCHMARKS.md).
pub fn base_context() -> Context<'static> {
    let mut ctx = Context::default();
    ctx.add_function("matches", cached_matches);
    ctx
}

/// How many distinct patterns a thread keeps compiled; past it the cache
/// starts again (patterns normally come from a handful of rules, but an
/// expression may build them from data).
const REGEX_CACHE: usize = 256;

thread_local! {
    static REGEXES: std::cell::RefCell<HashMap<Arc<String>, regex::Regex>> =
        std::cell::RefCell::new(HashMap::new());
}

/// CEL's `string.matches(regex)`, with the compiled pattern cached per thread.
fn cached_matches(
    ftx: &cel_interpreter::FunctionContext,
    cel_interpreter::extractors::This(this): cel_interpreter::extractors::This<Arc<String>>,
    pattern: Arc<String>,
) -> Result<bool, cel_interpreter::ExecutionError> {
    REGEXES.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some(re) = cache.get(&pattern) {
            return Ok(re.is_match(&this));
        }
        let re = regex::Regex::new(&pattern)
            .map_err(|err| ftx.error(format!("'{pattern}' not a valid regex:\n{err}")))?;
        let hit = re.is_match(&this);
        if cache.len() >= REGEX_CACHE {
            cache.clear();
        }
        cache.insert(pattern, re);
        Ok(hit)
    })
}

impl Filter {
    /// Parses `source` and checks that every field it reads exists in `entity`.
    pub fn compile(source: &str, entity: &Schema) -> Result<Self, String> {
        Self::compile_with(source, entity, &[])
    }

    /// [`Self::compile`], where `given` names variables the caller provides
    /// besides the entity's fields (e.g. `today`).
    pub fn compile_with(source: &str, entity: &Schema, given: &[&str]) -> Result<Self, String> {
        Self::compile_rule(source, entity, given, &[])
    }

    /// [`Self::compile_with`], where `lookups` are map variables from a key
    /// to a row of the given schema (`admin_units[code].level`): the fields
    /// read from their rows are checked against those schemas too.
    pub fn compile_rule(
        source: &str,
        entity: &Schema,
        given: &[&str],
        lookups: &[(&str, &Schema)],
    ) -> Result<Self, String> {
        // cel-parser 0.10 panics on some malformed input (an ANTLR visitor
        // hitting `unreachable!`); a subscription file is input, so turn that
        // into an error instead of taking the router down.
        let parsed = crate::contained::run(|| cel_parser::Parser::default().parse(source))
            .map_err(|_| {
                format!("CEL syntax error in `{source}`: the expression is incomplete or malformed")
            })?;
        let ast = parsed.map_err(|errs| {
            let parts: Vec<String> = errs
                .errors
                .iter()
                .map(|e| format!("column {}: {}", e.pos.1 + 1, e.msg))
                .collect();
            format!("CEL syntax error in `{source}`: {}", parts.join("; "))
        })?;
        let names = Names::of(entity);
        let mut paths = Vec::new();
        collect_paths(&ast, &mut HashSet::new(), &mut paths);
        for path in paths {
            if path
                .first()
                .is_some_and(|root| given.contains(&root.as_str()))
            {
                continue;
            }
            if lookups
                .iter()
                .any(|(n, _)| path.first().is_some_and(|p| p == n))
            {
                continue;
            }
            check_path(entity, &names, &path)?;
        }
        let mut wrong = Vec::new();
        visit(&ast, &mut |e| {
            if let Some(w) = literal_mismatch(e, entity, &names, given, lookups) {
                wrong.push(w);
            }
        });
        if !wrong.is_empty() {
            return Err(format!("in `{source}`: {}", wrong.join("; ")));
        }
        for (name, schema) in lookups {
            let names = Names::of(schema);
            let mut rows = Vec::new();
            row_paths(&ast, name, &mut rows);
            for path in rows {
                check_path(schema, &names, &path).map_err(|e| format!("{name}[...]: {e}"))?;
            }
        }
        let program = crate::contained::run(|| Program::compile(source))
            .map_err(|_| format!("CEL syntax error in `{source}`"))?
            .map_err(|e| format!("CEL syntax error in `{source}`: {e}"))?;
        Ok(Self {
            source: source.to_string(),
            program,
            fast: shape(&ast).and_then(|(path, test)| {
                let (first, rest) = path.split_first()?;
                Some(FastEq {
                    first: first.clone(),
                    rest: rest
                        .iter()
                        .map(|p| Key::String(Arc::new(p.clone())))
                        .collect(),
                    test,
                })
            }),
            hierarchy: calls_hierarchy(&ast),
            constant: match &ast.expr {
                Expr::Literal(cel_parser::reference::Val::Boolean(b)) => Some(*b),
                _ => None,
            },
        })
    }

    /// The field paths `source` reads (empty when it does not parse).
    pub fn paths(source: &str) -> Vec<Vec<String>> {
        let Ok(Ok(ast)) = crate::contained::run(|| cel_parser::Parser::default().parse(source))
        else {
            return vec![];
        };
        let mut paths = Vec::new();
        collect_paths(&ast, &mut HashSet::new(), &mut paths);
        paths.sort();
        paths.dedup();
        paths
    }

    /// The expression.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// For a filter of the form `a.b.c == "literal"`: the field path and the
    /// literal (a string field equal to it matches, null does not, anything
    /// else is left to CEL).
    pub fn equality(&self) -> Option<(Vec<String>, &str)> {
        match self.test()? {
            (path, Test::Eq(want)) => Some((path, want)),
            _ => None,
        }
    }

    /// For a filter of one of the simple shapes ([`Test`]): the field path
    /// and what it is tested for.
    pub fn test(&self) -> Option<(Vec<String>, Test<'_>)> {
        let f = self.fast.as_ref()?;
        let mut path = vec![f.first.clone()];
        for k in &f.rest {
            match k {
                Key::String(s) => path.push(s.to_string()),
                _ => return None,
            }
        }
        let test = match &f.test {
            Shape::Eq(w) => Test::Eq(w),
            Shape::InUnit(u) => Test::InUnit(u),
            Shape::ProvinceIs(p) => Test::ProvinceIs(p),
        };
        Some((path, test))
    }

    /// For the filter `true` or `false`: its answer for every entity.
    pub fn constant(&self) -> Option<bool> {
        self.constant
    }

    /// Whether the filter asks hierarchy questions (`in_unit`,
    /// `province_of`): its view follows the administrative map.
    pub fn uses_hierarchy(&self) -> bool {
        self.hierarchy
    }

    /// Whether `entity` matches, with `base` holding CEL's functions (no
    /// administrative map: hierarchy questions are answered no).
    pub fn matches(&self, base: &Context<'_>, entity: &Vars) -> Result<bool, FilterError> {
        let at = At {
            hierarchy: None,
            day: chrono::NaiveDate::MIN,
        };
        self.matches_at(base, entity, at)
    }

    /// Whether `entity`, of a change on `at.day`, matches; `base` holds
    /// CEL's functions ([`hierarchy_context`] over `at.hierarchy` for a
    /// filter that asks hierarchy questions).
    pub fn matches_at(
        &self,
        base: &Context<'_>,
        entity: &Vars,
        at: At<'_>,
    ) -> Result<bool, FilterError> {
        if let Some(b) = self.constant {
            return Ok(b);
        }
        if let Some(f) = &self.fast {
            match (lookup(entity, f), &f.test) {
                (Some(Cel::Null), _) => return Ok(false),
                (Some(Cel::String(s)), Shape::Eq(want)) => return Ok(s.as_str() == want),
                (Some(Cel::String(s)), Shape::InUnit(unit)) => {
                    return Ok(at.hierarchy.is_some_and(|h| h.in_unit(s, unit, at.day)))
                }
                (Some(Cel::String(s)), Shape::ProvinceIs(p)) => {
                    return Ok(at
                        .hierarchy
                        .and_then(|h| h.province_of(s, at.day))
                        .is_some_and(|q| q == p))
                }
                _ => {} // anything else: as CEL says
            }
        }
        let mut ctx = base.new_inner_scope();
        for (k, v) in entity.0.iter() {
            ctx.add_variable_from_value(k.clone(), v.clone());
        }
        if self.hierarchy {
            ctx.add_variable_from_value(
                DAY_VAR,
                i64::from(chrono::Datelike::num_days_from_ce(&at.day)),
            );
        }
        match self.program.execute(&ctx) {
            Ok(Cel::Bool(b)) => Ok(b),
            Ok(other) => Err(FilterError::NotBool {
                filter: self.source.clone(),
                got: format!("{other:?}"),
            }),
            Err(e) => Err(FilterError::Eval {
                filter: self.source.clone(),
                reason: e.to_string(),
            }),
        }
    }
}

/// An entity's top-level fields as CEL values (built once per event, shared
/// by every subscription's filter).
#[derive(Debug, Clone, Default)]
pub struct Vars(Arc<Vec<(String, Cel)>>);

impl Vars {
    /// The fields of an entity record.
    pub fn of(entity: &AvroValue) -> Self {
        match entity {
            AvroValue::Record(fields) => Vars(Arc::new(
                fields.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect(),
            )),
            AvroValue::Union(_, inner) => Self::of(inner),
            _ => Vars::default(),
        }
    }
}

impl Vars {
    /// An entity from its fields' values by path (a table's columns):
    /// `["permanent_address", "commune_code"]` becomes a field of the
    /// `permanent_address` map.
    pub fn from_paths<'a>(fields: impl IntoIterator<Item = (&'a [String], Cel)>) -> Self {
        #[derive(Default)]
        struct Node(Vec<(String, Result<Cel, Node>)>);
        fn put(node: &mut Node, path: &[String], v: Cel) {
            let Some((first, rest)) = path.split_first() else {
                return;
            };
            let at = match node.0.iter().position(|(k, _)| k == first) {
                Some(i) => i,
                None => {
                    let slot = if rest.is_empty() {
                        Ok(Cel::Null)
                    } else {
                        Err(Node::default())
                    };
                    node.0.push((first.clone(), slot));
                    node.0.len() - 1
                }
            };
            let Some((_, slot)) = node.0.get_mut(at) else {
                return;
            };
            match (slot, rest.is_empty()) {
                (slot, true) => *slot = Ok(v),
                (Err(inner), false) => put(inner, rest, v),
                (slot @ Ok(_), false) => {
                    let mut inner = Node::default();
                    put(&mut inner, rest, v);
                    *slot = Err(inner);
                }
            }
        }
        fn cel(n: Node) -> Cel {
            map(n.0.into_iter().map(|(k, v)| (k, v.unwrap_or_else(cel))))
        }
        let mut root = Node::default();
        for (path, v) in fields {
            put(&mut root, path, v);
        }
        Vars(Arc::new(
            root.0
                .into_iter()
                .map(|(k, v)| (k, v.unwrap_or_else(cel)))
                .collect(),
        ))
    }
}

/// An Avro value as a CEL value: records are maps, enums their symbol, dates
/// `YYYY-MM-DD` strings, timestamps CEL timestamps.
pub fn to_cel(v: &AvroValue) -> Cel {
    match v {
        AvroValue::Null => Cel::Null,
        AvroValue::Boolean(b) => Cel::Bool(*b),
        AvroValue::Int(i) => Cel::Int(*i as i64),
        AvroValue::Long(i) => Cel::Int(*i),
        AvroValue::Float(f) => Cel::Float(*f as f64),
        AvroValue::Double(f) => Cel::Float(*f),
        AvroValue::String(s) | AvroValue::Enum(_, s) => Cel::String(Arc::new(s.clone())),
        AvroValue::Bytes(b) | AvroValue::Fixed(_, b) => Cel::Bytes(Arc::new(b.clone())),
        AvroValue::Union(_, b) => to_cel(b),
        AvroValue::Array(items) => Cel::List(Arc::new(items.iter().map(to_cel).collect())),
        AvroValue::Map(m) => map(m.iter().map(|(k, v)| (k.clone(), to_cel(v)))),
        AvroValue::Record(fields) => map(fields.iter().map(|(k, v)| (k.clone(), to_cel(v)))),
        AvroValue::Date(d) => Cel::String(Arc::new(crate::json::date_string(*d))),
        AvroValue::TimestampMillis(ms) => chrono::DateTime::from_timestamp_millis(*ms)
            .map(|t| Cel::Timestamp(t.fixed_offset()))
            .unwrap_or(Cel::Null),
        AvroValue::Uuid(u) => Cel::String(Arc::new(u.to_string())),
        other => Cel::String(Arc::new(format!("{other:?}"))),
    }
}

fn map(entries: impl Iterator<Item = (String, Cel)>) -> Cel {
    let m: HashMap<Key, Cel> = entries.map(|(k, v)| (Key::from(k), v)).collect();
    Cel::Map(Map { map: Arc::new(m) })
}

/// `a.b.c`, as its path.
fn chain(e: &IdedExpr) -> Option<Vec<String>> {
    match &e.expr {
        Expr::Ident(n) => Some(vec![n.clone()]),
        Expr::Select(s) if !s.test => {
            let mut v = chain(&s.operand)?;
            v.push(s.field.clone());
            Some(v)
        }
        _ => None,
    }
}

/// A string literal.
fn literal(e: &IdedExpr) -> Option<String> {
    match &e.expr {
        Expr::Literal(cel_parser::reference::Val::String(s)) => Some(s.to_string()),
        _ => None,
    }
}

/// `f(a.b.c, …)` with no target: the call's arguments.
fn call<'e>(e: &'e IdedExpr, name: &str, arity: usize) -> Option<&'e [IdedExpr]> {
    match &e.expr {
        Expr::Call(c) if c.func_name == name && c.target.is_none() && c.args.len() == arity => {
            Some(&c.args)
        }
        _ => None,
    }
}

/// `a.b.c == "literal"` (either side), `in_unit(a.b.c, "unit")` or
/// `province_of(a.b.c) == "code"` (either side), as (path, shape).
fn shape(e: &IdedExpr) -> Option<(Vec<String>, Shape)> {
    if let Some([code, unit]) = call(e, "in_unit", 2) {
        return chain(code).zip(literal(unit).map(Shape::InUnit));
    }
    let [a, b] = call(e, "_==_", 2)? else {
        return None;
    };
    let province = |e: &IdedExpr| match call(e, "province_of", 1) {
        Some([code]) => chain(code),
        _ => None,
    };
    chain(a)
        .zip(literal(b).map(Shape::Eq))
        .or_else(|| chain(b).zip(literal(a).map(Shape::Eq)))
        .or_else(|| province(a).zip(literal(b).map(Shape::ProvinceIs)))
        .or_else(|| province(b).zip(literal(a).map(Shape::ProvinceIs)))
}

/// Whether the expression calls `in_unit` or `province_of`.
fn calls_hierarchy(e: &IdedExpr) -> bool {
    let mut found = false;
    visit(e, &mut |x| {
        if let Expr::Call(c) = &x.expr {
            found |= c.func_name == "in_unit" || c.func_name == "province_of";
        }
    });
    found
}

/// Calls `f` on `e` and every expression under it.
fn visit(e: &IdedExpr, f: &mut dyn FnMut(&IdedExpr)) {
    f(e);
    match &e.expr {
        Expr::Call(c) => {
            if let Some(t) = &c.target {
                visit(t, f);
            }
            c.args.iter().for_each(|a| visit(a, f));
        }
        Expr::Select(s) => visit(&s.operand, f),
        Expr::List(l) => l.elements.iter().for_each(|a| visit(a, f)),
        Expr::Map(m) => m.entries.iter().for_each(|en| match &en.expr {
            cel_parser::ast::EntryExpr::MapEntry(me) => {
                visit(&me.key, f);
                visit(&me.value, f);
            }
            cel_parser::ast::EntryExpr::StructField(sf) => visit(&sf.value, f),
        }),
        Expr::Struct(st) => st.entries.iter().for_each(|en| match &en.expr {
            cel_parser::ast::EntryExpr::MapEntry(me) => {
                visit(&me.key, f);
                visit(&me.value, f);
            }
            cel_parser::ast::EntryExpr::StructField(sf) => visit(&sf.value, f),
        }),
        Expr::Comprehension(c) => {
            for x in [
                &c.iter_range,
                &c.accu_init,
                &c.loop_cond,
                &c.loop_step,
                &c.result,
            ] {
                visit(x, f);
            }
        }
        _ => {}
    }
}

/// The value at `f`'s path in an entity's fields.
fn lookup<'a>(entity: &'a Vars, f: &FastEq) -> Option<&'a Cel> {
    let mut cur = entity
        .0
        .iter()
        .find(|(k, _)| *k == f.first)
        .map(|(_, v)| v)?;
    for key in &f.rest {
        let Cel::Map(m) = cur else {
            return None;
        };
        cur = m.map.get(key)?;
    }
    Some(cur)
}

/// Field paths read by the expression (`a.b.c` chains rooted at an identifier
/// that is not a comprehension variable).
fn collect_paths(e: &IdedExpr, locals: &mut HashSet<String>, out: &mut Vec<Vec<String>>) {
    match &e.expr {
        Expr::Ident(name) => {
            if !locals.contains(name) {
                out.push(vec![name.clone()]);
            }
        }
        Expr::Select(sel) => {
            let mut chain = vec![sel.field.clone()];
            let mut cur = &sel.operand;
            loop {
                match &cur.expr {
                    Expr::Select(inner) => {
                        chain.push(inner.field.clone());
                        cur = &inner.operand;
                    }
                    Expr::Ident(root) => {
                        if !locals.contains(root) {
                            chain.push(root.clone());
                            chain.reverse();
                            out.push(chain);
                        }
                        return;
                    }
                    _ => {
                        collect_paths(cur, locals, out);
                        return;
                    }
                }
            }
        }
        Expr::Call(c) => {
            if let Some(t) = &c.target {
                collect_paths(t, locals, out);
            }
            for a in &c.args {
                collect_paths(a, locals, out);
            }
        }
        Expr::List(l) => l
            .elements
            .iter()
            .for_each(|x| collect_paths(x, locals, out)),
        Expr::Map(m) => {
            for entry in &m.entries {
                if let cel_parser::ast::EntryExpr::MapEntry(me) = &entry.expr {
                    collect_paths(&me.key, locals, out);
                    collect_paths(&me.value, locals, out);
                }
            }
        }
        Expr::Struct(s) => {
            for entry in &s.entries {
                if let cel_parser::ast::EntryExpr::StructField(f) = &entry.expr {
                    collect_paths(&f.value, locals, out);
                }
            }
        }
        Expr::Comprehension(c) => {
            collect_paths(&c.iter_range, locals, out);
            let mut inner = locals.clone();
            inner.insert(c.iter_var.clone());
            if let Some(v2) = &c.iter_var2 {
                inner.insert(v2.clone());
            }
            inner.insert(c.accu_var.clone());
            for x in [&c.accu_init, &c.loop_cond, &c.loop_step, &c.result] {
                collect_paths(x, &mut inner, out);
            }
        }
        Expr::Literal(_) | Expr::Unspecified => {}
    }
}

/// Field paths read from rows of the map variable `var` (`var[k].a.b`).
fn row_paths(e: &IdedExpr, var: &str, out: &mut Vec<Vec<String>>) {
    let indexes_var = |x: &IdedExpr| match &x.expr {
        Expr::Call(c) if c.func_name == "_[_]" && c.args.len() == 2 => {
            matches!(c.args.first().map(|a| &a.expr), Some(Expr::Ident(n)) if n == var)
        }
        _ => false,
    };
    // Every `var[k].a.b` chain (and, visited on the way, its prefixes,
    // which exist whenever it does).
    visit(e, &mut |x| {
        let Expr::Select(sel) = &x.expr else {
            return;
        };
        let mut chain = vec![sel.field.clone()];
        let mut cur = &sel.operand;
        while let Expr::Select(inner) = &cur.expr {
            chain.push(inner.field.clone());
            cur = &inner.operand;
        }
        if indexes_var(cur) {
            chain.reverse();
            out.push(chain);
        }
    });
}

/// The schema of the field at `path` (a nullable field's value branch),
/// when every step is a record's field.
fn schema_at<'a>(entity: &'a Schema, names: &'a Names, path: &[String]) -> Option<&'a Schema> {
    let mut cur = names.resolve(entity);
    for part in path {
        let rec = record_of(cur, names)?;
        cur = names.resolve(&rec.fields.get(*rec.lookup.get(part)?)?.schema);
    }
    match cur {
        Schema::Union(u) => {
            let mut values = u.variants().iter().filter(|v| !matches!(v, Schema::Null));
            match (values.next(), values.next()) {
                (Some(one), None) => Some(names.resolve(one)),
                _ => None,
            }
        }
        other => Some(other),
    }
}

/// A literal as written, and whether a field of `schema` can ever equal it
/// (None: it can, or the schema is not one this checks).
fn never_equal(schema: &Schema, lit: &cel_parser::reference::Val) -> Option<String> {
    use cel_parser::reference::Val;
    let shown = match lit {
        Val::String(s) => format!("{s:?}"),
        Val::Boolean(b) => b.to_string(),
        Val::Int(i) => i.to_string(),
        Val::UInt(u) => u.to_string(),
        Val::Double(d) => d.to_string(),
        Val::Null => "null".into(),
        Val::Bytes(_) => return None,
    };
    let number = matches!(lit, Val::Int(_) | Val::UInt(_) | Val::Double(_));
    match (schema, lit) {
        (_, Val::Null) => None,
        (Schema::Enum(e), Val::String(s)) if !e.symbols.contains(s) => Some(format!(
            "{shown} (not a symbol of {}: {})",
            e.name.name,
            e.symbols.join(", ")
        )),
        (Schema::Enum(_) | Schema::String | Schema::Uuid, _)
            if number || matches!(lit, Val::Boolean(_)) =>
        {
            Some(format!("{shown} (the field holds text)"))
        }
        (
            Schema::Int | Schema::Long | Schema::Float | Schema::Double,
            Val::String(_) | Val::Boolean(_),
        ) => Some(format!("{shown} (the field holds numbers)")),
        (Schema::Boolean, Val::String(_)) => {
            Some(format!("{shown} (the field holds true or false)"))
        }
        (Schema::Boolean, _) if number => Some(format!("{shown} (the field holds true or false)")),
        _ => None,
    }
}

/// `field == literal`, `field != literal` (either side) or `field in
/// [literals]`, where no value of the field can ever equal a literal: a
/// string not among an enum's symbols, a number compared with text. Such a
/// filter matches nothing (or everything), silently; the message says
/// which field and literal.
fn literal_mismatch(
    e: &IdedExpr,
    entity: &Schema,
    names: &Names,
    given: &[&str],
    lookups: &[(&str, &Schema)],
) -> Option<String> {
    let Expr::Call(c) = &e.expr else {
        return None;
    };
    let (None, [a, b]) = (&c.target, c.args.as_slice()) else {
        return None;
    };
    let lit = |x: &IdedExpr| match &x.expr {
        Expr::Literal(v) => Some(v.clone()),
        _ => None,
    };
    let (path, literals) = match c.func_name.as_str() {
        "_==_" | "_!=_" => chain(a)
            .zip(lit(b))
            .or_else(|| chain(b).zip(lit(a)))
            .map(|(p, l)| (p, vec![l]))?,
        "@in" => match &b.expr {
            Expr::List(l) => (chain(a)?, l.elements.iter().filter_map(lit).collect()),
            _ => return None,
        },
        _ => return None,
    };
    let root = path.first()?;
    if given.contains(&root.as_str()) || lookups.iter().any(|(n, _)| n == root) {
        return None;
    }
    let schema = schema_at(entity, names, &path)?;
    let problems: Vec<String> = literals
        .iter()
        .filter_map(|l| never_equal(schema, l))
        .collect();
    (!problems.is_empty()).then(|| {
        format!(
            "`{}` can never equal {}",
            path.join("."),
            problems.join(", ")
        )
    })
}

/// Checks that the field `path` exists in `entity` (the message names what
/// is missing).
pub fn check_field(entity: &Schema, names: &Names, path: &[String]) -> Result<(), String> {
    check_path(entity, names, path)
}

fn check_path(entity: &Schema, names: &Names, path: &[String]) -> Result<(), String> {
    let mut cur = names.resolve(entity);
    for (i, part) in path.iter().enumerate() {
        let Some(rec) = record_of(cur, names) else {
            // Not a record (a map, a string...): CEL decides at run time.
            return Ok(());
        };
        match rec.lookup.get(part).and_then(|&i| rec.fields.get(i)) {
            Some(f) => cur = names.resolve(&f.schema),
            None => {
                let known: Vec<&str> = rec.fields.iter().map(|f| f.name.as_str()).collect();
                return Err(format!(
                    "unknown field `{}` ({} has: {})",
                    path.get(..=i).unwrap_or(path).join("."),
                    rec.name.name,
                    known.join(", ")
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn residents() -> Schema {
        Schema::parse_str(include_str!("../../../schemas/bca/residents.v1.avsc")).unwrap()
    }

    #[test]
    fn unknown_fields_and_syntax_errors_are_refused() {
        let s = residents();
        let e = Filter::compile(r#"permanent_address.provnce_code == "52""#, &s).unwrap_err();
        assert!(e.contains("permanent_address.provnce_code"), "{e}");
        let e = Filter::compile(r#"address.province_code == "52""#, &s).unwrap_err();
        assert!(e.contains("unknown field `address`"), "{e}");
        let e = Filter::compile(r#"permanent_address.province_code == "#, &s).unwrap_err();
        assert!(e.contains("syntax"), "{e}");
        Filter::compile(
            r#"permanent_address.province_code in ["52", "94"] && [1,2].exists(x, x > 1)"#,
            &s,
        )
        .unwrap();
    }

    #[test]
    fn only_the_literals_true_and_false_are_constant_filters() {
        let s = residents();
        let vars = Vars(Default::default());
        for (src, want) in [("true", Some(true)), ("false", Some(false))] {
            let f = Filter::compile(src, &s).unwrap();
            assert_eq!(f.constant(), want, "{src}");
            assert_eq!(
                f.matches(&Context::default(), &vars).unwrap(),
                want.unwrap()
            );
        }
        for src in ["true == true", "!false", r#"sex == "MALE""#] {
            assert_eq!(Filter::compile(src, &s).unwrap().constant(), None, "{src}");
        }
    }

    #[test]
    fn a_literal_no_value_of_its_field_can_equal_is_refused() {
        let s = residents();
        let e = Filter::compile(r#"sex == "F""#, &s).unwrap_err();
        assert!(
            e.contains(r#"`sex` can never equal "F" (not a symbol of Sex: MALE, FEMALE, OTHER)"#),
            "{e}"
        );
        let e = Filter::compile(r#"sex in ["MALE", "WOMAN"] || "M" != sex"#, &s).unwrap_err();
        assert!(
            e.contains(r#""WOMAN" (not a symbol"#) && e.contains(r#""M" (not"#),
            "{e}"
        );
        let e = Filter::compile("permanent_address.province_code == 52", &s).unwrap_err();
        assert!(e.contains("52 (the field holds text)"), "{e}");
        let e = Filter::compile(r#"permanent_address.street == 1.5"#, &s).unwrap_err();
        assert!(e.contains("1.5 (the field holds text)"), "{e}");
        Filter::compile(
            r#"sex == "FEMALE" && permanent_address.street != null && permanent_address.province_code in ["52", "92"]"#,
            &s,
        )
        .unwrap();
    }

    #[test]
    fn filters_evaluate_on_entities() {
        let s = residents();
        let f = Filter::compile(r#"permanent_address.province_code == "52""#, &s).unwrap();
        let base = Context::default();
        let entity = AvroValue::Record(vec![(
            "permanent_address".into(),
            AvroValue::Record(vec![(
                "province_code".into(),
                AvroValue::String("52".into()),
            )]),
        )]);
        assert!(f.matches(&base, &Vars::of(&entity)).unwrap());
        let other = AvroValue::Record(vec![(
            "permanent_address".into(),
            AvroValue::Record(vec![(
                "province_code".into(),
                AvroValue::String("94".into()),
            )]),
        )]);
        assert!(!f.matches(&base, &Vars::of(&other)).unwrap());
        let g = Filter::compile("full_name", &s).unwrap();
        let e = AvroValue::Record(vec![("full_name".into(), AvroValue::String("x".into()))]);
        assert!(matches!(
            g.matches(&base, &Vars::of(&e)),
            Err(FilterError::NotBool { .. })
        ));
    }

    /// Rules that look rows up in a catalog: fields of its rows are checked
    /// against the catalog's schema; `in` and indexing work on the map.
    #[test]
    fn lookups_are_checked_and_evaluated() {
        let s = residents();
        let units =
            Schema::parse_str(include_str!("../../../schemas/moha/admin_units.v1.avsc")).unwrap();
        let lookups = [("admin_units", &units)];
        let src = "permanent_address.commune_code in admin_units \
                   && admin_units[permanent_address.commune_code].parent_code \
                      == permanent_address.province_code";
        let f = Filter::compile_rule(src, &s, &[], &lookups).unwrap();
        let e = Filter::compile_rule(
            "admin_units[permanent_address.commune_code].parent == '52'",
            &s,
            &[],
            &lookups,
        )
        .unwrap_err();
        assert!(
            e.contains("admin_units[...]: unknown field `parent`"),
            "{e}"
        );
        let e = Filter::compile_with(src, &s, &[]).unwrap_err();
        assert!(e.contains("unknown field `admin_units`"), "{e}");

        let row = |parent: &str| {
            map([(
                "parent_code".to_string(),
                Cel::String(Arc::new(parent.to_string())),
            )]
            .into_iter())
        };
        let mut base = Context::default();
        base.add_variable_from_value(
            "admin_units",
            map([("21550".to_string(), row("52"))].into_iter()),
        );
        let entity = |p: &str, c: &str| {
            Vars::of(&AvroValue::Record(vec![(
                "permanent_address".into(),
                AvroValue::Record(vec![
                    ("province_code".into(), AvroValue::String(p.into())),
                    ("commune_code".into(), AvroValue::String(c.into())),
                ]),
            )]))
        };
        assert!(f.matches(&base, &entity("52", "21550")).unwrap());
        assert!(!f.matches(&base, &entity("94", "21550")).unwrap());
        assert!(!f.matches(&base, &entity("52", "99999")).unwrap());
    }

    /// The interpreter-free path for `path == "literal"` agrees with CEL.
    #[test]
    fn equality_filters_take_the_fast_path_and_agree_with_cel() {
        let s = residents();
        let base = Context::default();
        let entity = |code: AvroValue| {
            AvroValue::Record(vec![(
                "permanent_address".into(),
                AvroValue::Record(vec![("province_code".into(), code)]),
            )])
        };
        for src in [
            r#"permanent_address.province_code == "52""#,
            r#""52" == permanent_address.province_code"#,
        ] {
            let fast = Filter::compile(src, &s).unwrap();
            assert!(fast.fast.is_some(), "{src}");
            let mut slow = Filter::compile(src, &s).unwrap();
            slow.fast = None;
            for code in [
                AvroValue::String("52".into()),
                AvroValue::String("94".into()),
                AvroValue::String(String::new()),
                AvroValue::Null,
            ] {
                let vars = Vars::of(&entity(code.clone()));
                assert_eq!(
                    fast.matches(&base, &vars).unwrap(),
                    slow.matches(&base, &vars).unwrap(),
                    "{src} on {code:?}"
                );
            }
        }
        let other = Filter::compile(r#"permanent_address.province_code != "52""#, &s).unwrap();
        assert!(other.fast.is_none());
    }

    /// `matches` in the base context: same answers as CEL's own (a hit, a
    /// miss, the same pattern again from the cache, a bad pattern as an
    /// evaluation error naming it), and the cache stays bounded.
    #[test]
    fn matches_keeps_compiled_patterns_and_agrees_with_cel() {
        let s = residents();
        let f = Filter::compile("full_name.matches('^[0-9]{12}$')", &s).unwrap();
        let bad = Filter::compile("full_name.matches('[0-9')", &s).unwrap();
        let name =
            |n: &str| AvroValue::Record(vec![("full_name".into(), AvroValue::String(n.into()))]);
        for base in [base_context(), Context::default()] {
            assert!(f.matches(&base, &Vars::of(&name("001234567890"))).unwrap());
            assert!(!f.matches(&base, &Vars::of(&name("00123456789"))).unwrap());
            assert!(f.matches(&base, &Vars::of(&name("999999999999"))).unwrap());
            let e = bad.matches(&base, &Vars::of(&name("1"))).unwrap_err();
            assert!(e.to_string().contains("'[0-9' not a valid regex"), "{e}");
        }
        // The base context's `matches` is the caching one.
        REGEXES.with(|c| assert!(c.borrow().contains_key(&"^[0-9]{12}$".to_string())));
        let base = base_context();
        for n in 0..REGEX_CACHE + 10 {
            let g = Filter::compile(&format!("full_name.matches('^{n}$')"), &s).unwrap();
            assert!(g.matches(&base, &Vars::of(&name(&n.to_string()))).unwrap());
        }
        REGEXES.with(|c| assert!(c.borrow().len() <= REGEX_CACHE));
    }

    /// Hierarchy questions over the real map: the fast shapes and CEL agree,
    /// and a former Sóc Trăng code lies in Cần Thơ.
    #[test]
    fn hierarchy_filters_agree_with_cel_on_the_real_map() {
        use govbus_core::admin_map::{AdminMap, Hierarchy};
        let (map, _) = AdminMap::from_reference(
            include_str!("../../../data/vn-admin-units/conversion-2025-07-01.csv"),
            include_str!("../../../data/vn-admin-units/communes-before-2025-07-01.csv"),
        )
        .unwrap();
        let today: chrono::NaiveDate = "2026-11-30".parse().unwrap();
        let h = Arc::new(Hierarchy::new(&map, today));
        let base = hierarchy_context(h.clone());
        let s = residents();
        let entity = |c: &str| {
            Vars::of(&AvroValue::Record(vec![(
                "permanent_address".into(),
                AvroValue::Record(vec![("commune_code".into(), AvroValue::String(c.into()))]),
            )]))
        };
        // Commune codes: one of Sóc Trăng before the reform, one of Quy
        // Nhơn (Bình Định, now Gia Lai), and one that never existed.
        let soc_trang = map
            .iter()
            .find(|(c, vs)| {
                vs.len() == 1
                    && map
                        .province_of(c, "2024-01-01".parse().unwrap())
                        .is_some_and(|p| p.code == "94")
                    && vs[0].level == govbus_core::admin_map::Level::Commune
            })
            .map(|(c, _)| c.to_string())
            .unwrap();
        let at = |d: &str| At {
            hierarchy: Some(&h),
            day: d.parse().unwrap(),
        };
        for (src, code, day, want) in [
            (
                r#"in_unit(permanent_address.commune_code, "92")"#,
                soc_trang.as_str(),
                "2024-01-01",
                true,
            ),
            (
                r#"in_unit(permanent_address.commune_code, "92")"#,
                soc_trang.as_str(),
                "2026-01-01",
                true,
            ),
            (
                r#"province_of(permanent_address.commune_code) == "92""#,
                soc_trang.as_str(),
                "2026-01-01",
                true,
            ),
            (
                r#""52" == province_of(permanent_address.commune_code)"#,
                soc_trang.as_str(),
                "2026-01-01",
                false,
            ),
            (
                r#"in_unit(permanent_address.commune_code, "92")"#,
                "99999",
                "2026-01-01",
                false,
            ),
        ] {
            let fast = Filter::compile(src, &s).unwrap();
            assert!(fast.fast.is_some() && fast.uses_hierarchy(), "{src}");
            let mut slow = Filter::compile(src, &s).unwrap();
            slow.fast = None;
            let e = entity(code);
            assert_eq!(
                fast.matches_at(&base, &e, at(day)).unwrap(),
                want,
                "{src} {code} {day}"
            );
            assert_eq!(
                slow.matches_at(&base, &e, at(day)).unwrap(),
                want,
                "CEL: {src} {code} {day}"
            );
            // With no map, nothing lies anywhere.
            assert!(!fast.matches(&base, &e).unwrap());
        }
        let both = Filter::compile(
            r#"in_unit(permanent_address.commune_code, "92") || province_of(permanent_address.commune_code) == "52""#,
            &s,
        )
        .unwrap();
        assert!(both.fast.is_none() && both.uses_hierarchy());
        assert!(both
            .matches_at(&base, &entity(&soc_trang), at("2026-01-01"))
            .unwrap());
        assert!(
            !Filter::compile(r#"permanent_address.commune_code == "1""#, &s)
                .unwrap()
                .uses_hierarchy()
        );
    }
}
