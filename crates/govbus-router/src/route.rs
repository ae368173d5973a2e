//! Routing one change to every view of its dataset: decode → filter
//! `before` and `after` → decide → project → encode. No Kafka here.

use cel_interpreter::Context;
use govbus_schema::envelope::decode;
use govbus_schema::{Change, EnvelopeError, SchemaResolver};

use crate::decide::{decide, Decision};
use crate::filter::{FilterError, Vars};
use crate::views::View;

/// A record for a view topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Index of the view.
    pub view: usize,
    /// The decision taken.
    pub decision: &'static str,
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
            RouteError::Envelope(EnvelopeError::Wire(_)) => "not_wire_format",
            RouteError::Envelope(EnvelopeError::UnknownSchema { .. }) => "unknown_schema",
            RouteError::Envelope(EnvelopeError::Decode { .. }) => "avro_decode",
            RouteError::Envelope(EnvelopeError::Shape(_)) => "not_an_envelope",
            RouteError::Envelope(EnvelopeError::Encode(_)) => "encode",
            RouteError::Filter { .. } => "filter_error",
        }
    }
}

/// Decodes `payload` and routes it to `views` (indices into `all`).
pub fn route(
    payload: &[u8],
    resolver: &dyn SchemaResolver,
    base: &Context<'_>,
    all: &[View],
    views: &[usize],
) -> Result<Vec<Output>, RouteError> {
    let (_, change) = decode(payload, resolver)?;
    route_change(&change, base, all, views)
}

/// Routes a decoded change.
pub fn route_change(
    change: &Change,
    base: &Context<'_>,
    all: &[View],
    views: &[usize],
) -> Result<Vec<Output>, RouteError> {
    let before = change.before.as_ref().map(Vars::of);
    let after = change.after.as_ref().map(Vars::of);
    let mut out = Vec::new();
    for &i in views {
        let v = &all[i];
        let eval = |vars: &Option<Vars>| -> Result<Option<bool>, RouteError> {
            vars.as_ref()
                .map(|x| v.filter.matches(base, x))
                .transpose()
                .map_err(|source| RouteError::Filter {
                    view: v.name.clone(),
                    source,
                })
        };
        let decision = decide(change.op, eval(&before)?, eval(&after)?);
        let Some(op) = decision.op() else {
            metrics::counter!("govbus_router_filtered_total", "subscriber" => v.subscriber.clone(), "dataset" => v.dataset.to_string()).increment(1);
            continue;
        };
        let project =
            |x: &Option<govbus_schema::AvroValue>| x.clone().map(|e| v.projection.apply(e));
        let routed = Change {
            event_id: change.event_id.clone(),
            op,
            before: match decision {
                Decision::Update | Decision::Delete => project(&change.before),
                _ => None,
            },
            after: match decision {
                Decision::Delete => None,
                _ => project(&change.after),
            },
            source: change.source.clone(),
            ts_ms: change.ts_ms,
        };
        let codec = v.codec.as_ref().ok_or_else(|| {
            RouteError::Envelope(EnvelopeError::Encode(format!(
                "view {} has no registered schema",
                v.name
            )))
        })?;
        out.push(Output {
            view: i,
            decision: decision.label(),
            value: codec.encode(&routed)?,
        });
    }
    Ok(out)
}
