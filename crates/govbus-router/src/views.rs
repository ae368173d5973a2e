//! Subscriptions compiled into views: filter, projection, output topic and
//! the view's own schema.

use apache_avro::Schema;
use govbus_core::catalog::line_of;
use govbus_core::topics::value_subject;
use govbus_core::{Catalog, CatalogError, DatasetId, SubscriptionSpec, Topics};
use govbus_schema::envelope::envelope_schema;
use govbus_schema::project::{project_schema, Projection};
use govbus_schema::{EnvelopeCodec, RegistryClient, RegistryError};

use crate::filter::Filter;

/// One subscription, ready to route.
#[derive(Debug)]
pub struct View {
    /// `subscriber/dataset`.
    pub name: String,
    /// The subscribing agency.
    pub subscriber: String,
    /// The dataset.
    pub dataset: DatasetId,
    /// The dataset's entity schema as this router knows it: changes written
    /// with a later (compatible) version are resolved to it before routing.
    pub entity: std::sync::Arc<Schema>,
    /// Which entities belong.
    pub filter: Filter,
    /// Which fields are removed.
    pub projection: Projection,
    /// The dotted paths of those fields, as the subscription lists them.
    pub drop: Vec<String>,
    /// Where the view is written.
    pub topic: String,
    /// The view's envelope schema (Avro JSON).
    pub schema: String,
    /// Set once the schema is registered.
    pub codec: Option<EnvelopeCodec>,
    /// Delivery stops at this instant (ms since the epoch), if set.
    pub expires_ms: Option<i64>,
    /// What its rows do when the unit its filter follows ceases to exist.
    pub unit_ended: govbus_core::catalog::UnitEnded,
    /// Whether the expiry has been logged (once per view).
    pub expiry_reported: std::sync::atomic::AtomicBool,
    /// The view's metric handles (registered once, not per change).
    pub counters: ViewCounters,
}

/// A view's counters: `govbus_router_routed_total` per decision,
/// `govbus_router_filtered_total`, `govbus_router_expired_total`.
#[derive(Debug)]
pub struct ViewCounters {
    /// Routed, by decision: enter, update, leave, snapshot.
    pub routed: [metrics::Counter; 4],
    /// Changes outside the view.
    pub filtered: metrics::Counter,
    /// Changes withheld after the expiry.
    pub expired: metrics::Counter,
}

impl ViewCounters {
    fn new(subscriber: &str, dataset: &DatasetId) -> Self {
        let (s, d) = (subscriber.to_string(), dataset.to_string());
        let routed = |decision: &'static str| metrics::counter!("govbus_router_routed_total", "subscriber" => s.clone(), "dataset" => d.clone(), "decision" => decision);
        Self {
            routed: [
                routed("enter"),
                routed("update"),
                routed("leave"),
                routed("snapshot"),
            ],
            filtered: metrics::counter!("govbus_router_filtered_total", "subscriber" => s.clone(), "dataset" => d.clone()),
            expired: metrics::counter!("govbus_router_expired_total", "subscriber" => s, "dataset" => d),
        }
    }

    /// The routed counter of `decision` (None for Nothing).
    pub fn routed(&self, decision: crate::Decision) -> Option<&metrics::Counter> {
        use crate::Decision as D;
        match decision {
            D::Create => Some(&self.routed[0]),
            D::Update => Some(&self.routed[1]),
            D::Delete => Some(&self.routed[2]),
            D::Snapshot => Some(&self.routed[3]),
            D::Nothing => None,
        }
    }
}

impl View {
    /// `change` in the view's wire format (its registered envelope schema).
    pub fn encode(
        &self,
        change: &govbus_schema::Change,
    ) -> Result<Vec<u8>, govbus_schema::EnvelopeError> {
        let codec = self.codec.as_ref().ok_or_else(|| {
            govbus_schema::EnvelopeError::Encode(format!(
                "view {} has no registered schema",
                self.name
            ))
        })?;
        codec.encode(change)
    }

    /// Whether the subscription has ended at `now_ms`; says so once in the log.
    pub fn expired(&self, now_ms: i64) -> bool {
        let ended = self.expires_ms.is_some_and(|e| now_ms >= e);
        if ended
            && !self
                .expiry_reported
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(
                view = self.name,
                "subscription expired: no longer delivering"
            );
            metrics::gauge!("govbus_subscription_active", "subscriber" => self.subscriber.clone(), "dataset" => self.dataset.to_string()).set(0.0);
        }
        ended
    }
}

/// Compiles every subscription of `catalog`; the first problem stops it,
/// naming the file, the line when known, and what is wrong.
pub fn compile(catalog: &Catalog, topics: &Topics) -> Result<Vec<View>, CatalogError> {
    catalog.check_subscriptions()?;
    catalog
        .subscriptions
        .iter()
        .map(|s| compile_spec(catalog, topics, s))
        .collect()
}

/// Compiles one subscription.
pub fn compile_spec(
    catalog: &Catalog,
    topics: &Topics,
    s: &SubscriptionSpec,
) -> Result<View, CatalogError> {
    let ds = catalog
        .dataset(&s.file.dataset)
        .ok_or_else(|| s.invalid(format!("unknown dataset `{}`", s.file.dataset)))?;
    let entity = Schema::parse_str(&ds.entity_schema)
        .map_err(|e| s.invalid(format!("dataset schema: {e}")))?;
    let filter = Filter::compile(&s.file.filter, &entity).map_err(|m| s.invalid(m))?;
    let projected = project_schema(&ds.entity_schema, &s.file.drop, &ds.file.key).map_err(|e| {
        CatalogError::Invalid {
            file: s.origin.clone(),
            line: std::fs::read_to_string(&s.origin)
                .ok()
                .and_then(|t| line_of(&t, "drop")),
            message: format!("drop: {}", e.0),
        }
    })?;
    let schema = envelope_schema(&projected).map_err(|e| s.invalid(e.0))?;
    Schema::parse_str(&schema).map_err(|e| s.invalid(format!("view schema: {e}")))?;
    Ok(View {
        name: s.name(),
        subscriber: s.file.subscriber.clone(),
        dataset: ds.id.clone(),
        entity: std::sync::Arc::new(entity),
        filter,
        projection: Projection::new(&s.file.drop),
        drop: s.file.drop.clone(),
        topic: topics.view(&s.file.subscriber, &ds.id, ds.file.major),
        schema,
        codec: None,
        expires_ms: s.file.expires_ms().map_err(|e| s.invalid(e.to_string()))?,
        unit_ended: s.file.unit_ended,
        expiry_reported: std::sync::atomic::AtomicBool::new(false),
        counters: ViewCounters::new(&s.file.subscriber, &ds.id),
    })
}

/// Every problem of a subscription against its dataset, each on its own
/// (a filter that fails does not hide a wrong `drop`), for `govbus check`.
pub fn spec_problems(catalog: &Catalog, s: &SubscriptionSpec) -> Vec<CatalogError> {
    let Some(ds) = catalog.dataset(&s.file.dataset) else {
        return vec![s.invalid(format!("unknown dataset `{}`", s.file.dataset))];
    };
    let entity = match Schema::parse_str(&ds.entity_schema) {
        Ok(e) => e,
        Err(e) => return vec![s.invalid(format!("dataset schema: {e}"))],
    };
    let mut out = Vec::new();
    if let Err(m) = Filter::compile(&s.file.filter, &entity) {
        out.push(s.invalid(m));
    }
    match project_schema(&ds.entity_schema, &s.file.drop, &ds.file.key) {
        Err(e) => out.push(CatalogError::Invalid {
            file: s.origin.clone(),
            line: std::fs::read_to_string(&s.origin)
                .ok()
                .and_then(|t| line_of(&t, "drop")),
            message: format!("drop: {}", e.0),
        }),
        Ok(projected) => match envelope_schema(&projected) {
            Err(e) => out.push(s.invalid(e.0)),
            Ok(schema) => {
                if let Err(e) = Schema::parse_str(&schema) {
                    out.push(s.invalid(format!("view schema: {e}")));
                }
            }
        },
    }
    if let Err(e) = s.file.expires_ms() {
        out.push(CatalogError::Invalid {
            file: s.origin.clone(),
            line: std::fs::read_to_string(&s.origin)
                .ok()
                .and_then(|t| line_of(&t, "expires")),
            message: e.to_string(),
        });
    }
    out
}

/// Registers each view's schema under `<view topic>-value`.
pub fn register(views: &mut [View], registry: &RegistryClient) -> Result<(), RegistryError> {
    for v in views {
        register_one(v, registry)?;
    }
    Ok(())
}

/// Registers one view's schema under `<view topic>-value`.
pub fn register_one(v: &mut View, registry: &RegistryClient) -> Result<(), RegistryError> {
    let id = registry.register(&value_subject(&v.topic), &v.schema)?;
    let schema = Schema::parse_str(&v.schema).map_err(|e| RegistryError::Decode(e.to_string()))?;
    v.codec = Some(EnvelopeCodec::new(schema, id));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use govbus_core::catalog::parse_subscription;

    #[test]
    fn shipped_subscriptions_compile() {
        let views = compile(&Catalog::builtin(), &Topics::default()).unwrap();
        assert_eq!(views.len(), 2);
        assert_eq!(views[0].topic, "sub.p52.bca.residents.v1");
        assert!(!views[0].schema.contains("ethnicity"));
    }

    #[test]
    fn bad_files_name_file_line_and_problem() {
        let cases = [
            ("subscriber = \"p1\"\ndataset = \"bca.residents\"\nfilter = 'permanent_address.province == \"1\"'\n", "3", "unknown field `permanent_address.province`"),
            ("subscriber = \"p1\"\ndataset = \"bca.residents\"\n\nfilter = 'permanent_address.province_code == '\n", "4", "syntax"),
            ("subscriber = \"p1\"\ndataset = \"bca.nope\"\nfilter = 'true'\n", "bad.toml", "unknown dataset"),
            ("subscriber = \"p1\"\ndataset = \"bca.residents\"\nfilter = 'true'\ndrop = [\"nope\"]\n", "bad.toml", "`nope` is not a field"),
        ];
        for (text, line, problem) in cases {
            let mut c = Catalog::builtin();
            c.subscriptions = vec![parse_subscription("bad.toml", text).unwrap()];
            let e = compile(&c, &Topics::default()).unwrap_err().to_string();
            assert!(e.starts_with("bad.toml"), "{e}");
            assert!(e.contains(line), "{e}");
            assert!(e.contains(problem), "{e}");
        }
    }
}
