//! Schema changes against the subscriptions that depend on them: a new
//! version of a dataset's schema must not remove or rename a field a filter
//! reads, nor change the type of a field a view keeps. Used by the registry
//! (it refuses such a registration) and by `govbus schema check`.

use std::collections::BTreeMap;

use apache_avro::schema::RecordSchema;
use apache_avro::Schema;
use govbus_core::catalog::SubscriptionFile;
use govbus_core::{Catalog, DatasetId, Topics};
use govbus_schema::names::Names;

use crate::filter::Filter;

/// One way a new schema breaks one subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    /// `subscriber/dataset` (the subscription's name).
    pub subscription: String,
    /// The dotted field path.
    pub field: String,
    /// What happens to it.
    pub why: String,
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "subscription {}: field {} {}",
            self.subscription, self.field, self.why
        )
    }
}

/// Leaf fields of a record schema, by dotted path, with their type as
/// canonical JSON (named types resolved by their definitions).
fn leaves(schema: &Schema) -> BTreeMap<String, String> {
    let names = Names::of(schema);
    let mut out = BTreeMap::new();
    if let Schema::Record(r) = schema {
        walk(r, "", &names, &mut out, 0);
    }
    out
}

fn walk(
    r: &RecordSchema,
    prefix: &str,
    names: &Names,
    out: &mut BTreeMap<String, String>,
    depth: usize,
) {
    for f in &r.fields {
        let path = if prefix.is_empty() {
            f.name.clone()
        } else {
            format!("{prefix}.{}", f.name)
        };
        let resolved = match &f.schema {
            Schema::Ref { name } => names.get(name).unwrap_or(&f.schema),
            s => s,
        };
        match resolved {
            Schema::Record(inner) if depth < 16 => {
                out.insert(path.clone(), "record".into());
                walk(inner, &path, names, out, depth + 1);
            }
            s => {
                out.insert(path, govbus_schema::canonical(s));
            }
        }
    }
}

/// How replacing `old` by `new` (entity schemas of `dataset`) breaks the
/// subscriptions of `catalog` to it.
pub fn breaks(catalog: &Catalog, dataset: &DatasetId, old: &Schema, new: &Schema) -> Vec<Break> {
    let subs: Vec<&SubscriptionFile> = catalog.subscriptions.iter().map(|s| &s.file).collect();
    breaks_of(&subs, dataset, old, new)
}

/// How replacing `old` by `new` breaks `subs` (those to `dataset`).
pub fn breaks_of(
    subs: &[&SubscriptionFile],
    dataset: &DatasetId,
    old: &Schema,
    new: &Schema,
) -> Vec<Break> {
    let (was, now) = (leaves(old), leaves(new));
    let mut out = Vec::new();
    for s in subs.iter().filter(|s| &s.dataset == dataset) {
        let name = format!("{}/{}", s.subscriber, s.dataset);
        for path in Filter::paths(&s.filter) {
            let field = path.join(".");
            if was.contains_key(&field) && !now.contains_key(&field) {
                out.push(Break {
                    subscription: name.clone(),
                    field: field.clone(),
                    why: format!(
                        "is read by its filter `{}` and the new schema removes or renames it",
                        s.filter
                    ),
                });
            }
        }
        for (field, ty) in &was {
            if !s.keeps(field) {
                continue;
            }
            if let Some(new_ty) = now.get(field) {
                if new_ty != ty {
                    out.push(Break {
                        subscription: name.clone(),
                        field: field.clone(),
                        why: format!("is kept by its view and changes type from {ty} to {new_ty}"),
                    });
                }
            }
        }
    }
    out
}

/// Everything wrong with `new` as the next version of `dataset`'s entity
/// schema after `old`: the compatibility level's rules (with the field
/// path that breaks them) and the subscriptions it would break.
pub fn review(
    catalog: &Catalog,
    dataset: &DatasetId,
    level: govbus_schema::Compatibility,
    old: &Schema,
    new: &Schema,
) -> Vec<String> {
    let mut out: Vec<String> = level
        .check(new, std::slice::from_ref(old))
        .into_iter()
        .map(|r| {
            format!(
                "breaks {}: {r}",
                serde_json::to_string(&level)
                    .unwrap_or_default()
                    .trim_matches('"')
            )
        })
        .collect();
    out.extend(
        breaks(catalog, dataset, old, new)
            .iter()
            .map(ToString::to_string),
    );
    out
}

/// The entity schema inside a change envelope (the `before` branch).
pub fn entity_of_envelope(envelope: &Schema) -> Option<Schema> {
    let Schema::Record(r) = envelope else {
        return None;
    };
    let before = r.fields.iter().find(|f| f.name == "before")?;
    match &before.schema {
        Schema::Union(u) => u
            .variants()
            .iter()
            .find(|v| matches!(v, Schema::Record(_)))
            .cloned(),
        _ => None,
    }
}

/// The dataset whose central topic's subject is `subject`, if any.
pub fn dataset_of_subject(catalog: &Catalog, topics: &Topics, subject: &str) -> Option<DatasetId> {
    catalog.datasets.values().find_map(|ds| {
        (govbus_core::topics::value_subject(&topics.central(&ds.id, ds.file.major)) == subject)
            .then(|| ds.id.clone())
    })
}

/// The registry's guard: refuses a new version of a dataset's central
/// schema that breaks a subscription in force: those of the control topic
/// it follows (the live truth, what `govbus subscriptions apply` wrote),
/// or the catalog's files when it follows none.
#[derive(Debug)]
pub struct SubscriptionGuard {
    catalog: std::sync::Arc<Catalog>,
    topics: Topics,
    live: Option<std::sync::Arc<crate::control::Follower>>,
}

impl SubscriptionGuard {
    /// A guard over `catalog`'s subscriptions, topics named with `topics`.
    pub fn new(catalog: std::sync::Arc<Catalog>, topics: Topics) -> Self {
        Self {
            catalog,
            topics,
            live: None,
        }
    }

    /// A guard over the subscriptions in force on the control topic that
    /// `follower` follows (the catalog gives the datasets).
    pub fn live(
        catalog: std::sync::Arc<Catalog>,
        topics: Topics,
        follower: std::sync::Arc<crate::control::Follower>,
    ) -> Self {
        Self {
            catalog,
            topics,
            live: Some(follower),
        }
    }
}

impl govbus_schema::Guard for SubscriptionGuard {
    fn check(&self, subject: &str, latest: &Schema, new: &Schema) -> Vec<String> {
        let Some(ds) = dataset_of_subject(&self.catalog, &self.topics, subject) else {
            return vec![];
        };
        let (Some(old), Some(new)) = (entity_of_envelope(latest), entity_of_envelope(new)) else {
            return vec![];
        };
        let found = match &self.live {
            Some(f) => {
                let (_, set) = f.snapshot();
                let subs: Vec<&SubscriptionFile> =
                    set.values().filter_map(|v| v.active()).collect();
                breaks_of(&subs, &ds, &old, &new)
            }
            None => breaks(&self.catalog, &ds, &old, &new),
        };
        found.iter().map(ToString::to_string).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn residents() -> Schema {
        Schema::parse_str(include_str!("../../../schemas/bca/residents.v2.avsc")).unwrap()
    }

    fn edit(f: impl FnOnce(&mut serde_json::Value)) -> Schema {
        let mut j: serde_json::Value =
            serde_json::from_str(include_str!("../../../schemas/bca/residents.v2.avsc")).unwrap();
        f(&mut j);
        Schema::parse_str(&j.to_string()).unwrap()
    }

    #[test]
    fn review_names_the_level_rule_and_the_field() {
        let c = Catalog::builtin();
        let ds: DatasetId = "bca.residents".parse().unwrap();
        let v2 = edit(|j| {
            j["fields"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({"name": "phone", "type": "string"}))
        });
        let r = review(
            &c,
            &ds,
            govbus_schema::Compatibility::Backward,
            &residents(),
            &v2,
        );
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(
            r[0].starts_with("breaks BACKWARD") && r[0].contains("field phone"),
            "{r:?}"
        );
    }

    #[test]
    fn an_added_optional_field_breaks_nothing() {
        let c = Catalog::builtin();
        let v2 = edit(|j| {
            j["fields"].as_array_mut().unwrap().push(serde_json::json!(
                {"name": "phone", "type": ["null", "string"], "default": null}
            ))
        });
        let ds: DatasetId = "bca.residents".parse().unwrap();
        assert_eq!(breaks(&c, &ds, &residents(), &v2), vec![]);
    }

    #[test]
    fn a_renamed_filter_field_and_a_retyped_kept_field_name_the_subscription() {
        let c = Catalog::builtin();
        let ds: DatasetId = "bca.residents".parse().unwrap();
        let v2 = edit(|j| {
            let addr = &mut j["fields"][5]["type"]["fields"];
            addr[1]["name"] = "commune".into();
            j["fields"][1]["type"] = serde_json::json!(["null", "string"]);
        });
        let b = breaks(&c, &ds, &residents(), &v2);
        let text: Vec<String> = b.iter().map(ToString::to_string).collect();
        assert!(
            text.iter().any(|t| t.contains("p52/bca.residents")
                && t.contains("permanent_address.commune_code")
                && t.contains("filter")),
            "{text:#?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains("full_name") && t.contains("changes type")),
            "{text:#?}"
        );
    }
}
