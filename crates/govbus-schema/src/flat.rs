//! The flat-name rule, written once: a nested record's leaf field is the
//! column `parent_child` (`permanent_address_commune_code`). A province's
//! table is laid out by it ([`leaves`]), and an outbox row or a CSV line is
//! read back into the entity's shape by it ([`nest`]).

use apache_avro::schema::RecordSchema;
use apache_avro::Schema;
use serde_json::{Map, Value as Json};

use crate::names::Names;
use crate::project::record_of;

/// A leaf field of a record, nested records flattened.
#[derive(Debug, Clone)]
pub struct Leaf<'s> {
    /// The column: the path joined by `_`.
    pub column: String,
    /// The field names from the record down.
    pub path: Vec<String>,
    /// Its schema, resolved.
    pub schema: &'s Schema,
}

/// Every leaf of `rec`, in field order.
pub fn leaves<'s>(rec: &'s RecordSchema, names: &'s Names) -> Vec<Leaf<'s>> {
    fn walk<'s>(
        rec: &'s RecordSchema,
        names: &'s Names,
        path: &mut Vec<String>,
        out: &mut Vec<Leaf<'s>>,
    ) {
        for f in &rec.fields {
            path.push(f.name.clone());
            let s = names.resolve(&f.schema);
            match record_of(s, names) {
                Some(inner) => walk(inner, names, path, out),
                None => out.push(Leaf {
                    column: path.join("_"),
                    path: path.clone(),
                    schema: s,
                }),
            }
            path.pop();
        }
    }
    let mut out = Vec::new();
    walk(rec, names, &mut Vec::new(), &mut out);
    out
}

/// A flat `row` (columns by the rule) in the shape of `rec`: each nested
/// record an object (present even when none of its columns is), each leaf
/// whose column the row has converted by `leaf` (None: left out).
pub fn nest(
    rec: &RecordSchema,
    names: &Names,
    row: &Map<String, Json>,
    leaf: &dyn Fn(&Schema, &Json) -> Option<Json>,
) -> Json {
    fn walk(
        rec: &RecordSchema,
        names: &Names,
        row: &Map<String, Json>,
        prefix: &str,
        leaf: &dyn Fn(&Schema, &Json) -> Option<Json>,
    ) -> Json {
        let mut out = Map::new();
        for f in &rec.fields {
            let col = format!("{prefix}{}", f.name);
            let fs = names.resolve(&f.schema);
            match record_of(fs, names) {
                Some(inner) => {
                    out.insert(
                        f.name.clone(),
                        walk(inner, names, row, &format!("{col}_"), leaf),
                    );
                }
                None => {
                    if let Some(v) = row.get(&col).and_then(|v| leaf(fs, v)) {
                        out.insert(f.name.clone(), v);
                    }
                }
            }
        }
        Json::Object(out)
    }
    walk(rec, names, row, "", leaf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_and_rows_follow_one_rule() {
        let s = crate::parse(include_str!("../../../schemas/bca/residents.v2.avsc")).unwrap();
        let names = Names::of(&s);
        let rec = record_of(&s, &names).unwrap();
        let cols: Vec<String> = leaves(rec, &names).into_iter().map(|l| l.column).collect();
        assert!(cols.contains(&"permanent_address_commune_code".to_string()));
        let mut row = Map::new();
        for c in &cols {
            row.insert(c.clone(), Json::String(format!("v-{c}")));
        }
        let nested = nest(rec, &names, &row, &|_, v| Some(v.clone()));
        assert_eq!(
            nested["permanent_address"]["commune_code"],
            "v-permanent_address_commune_code"
        );
        // A nested record is an object even when the row has none of it.
        let empty = nest(rec, &names, &Map::new(), &|_, v| Some(v.clone()));
        assert!(empty["permanent_address"].is_object());
    }
}
