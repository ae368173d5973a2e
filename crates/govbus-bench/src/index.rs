//! The router's routing step alone, in this process, without Kafka: the
//! CPU per change of the fast path at 34, 340 and 3,400 subscriptions on
//! bca.residents (the route benchmark's: per province, the province and
//! its communes' offices), with the subscription index and without it
//! (every view decided for every change, as before the index), over the
//! whole real map.

use std::sync::Arc;

use anyhow::{bail, Context};
use apache_avro::Schema;
use govbus_core::Topics;
use govbus_router::fast::{FastOutputs, FastRoute, Tally};
use govbus_schema::envelope::envelope_schema;
use govbus_schema::EnvelopeCodec;

const RESIDENTS: &str = include_str!("../../../schemas/bca/residents.v2.avsc");

pub(crate) fn run(changes: usize, counts: &[usize]) -> anyhow::Result<()> {
    let map = govbus_core::admin_map::reference();
    let now = govbus_core::now_ms();
    let today = govbus_core::admin_map::day_of_ms(now);
    let hierarchy = Arc::new(govbus_core::admin_map::Hierarchy::new(map, today));
    let envelopes = govbus_producer::demo::envelopes(changes, 11, 7, now);
    if envelopes.len() != changes {
        bail!("{} of {changes} demo changes encoded", envelopes.len());
    }
    let writer = Schema::parse_str(&envelope_schema(RESIDENTS)?)?;
    println!(
        "index: {changes} demo changes routed on the fast path, one thread, the real map ({} units)",
        map.iter().count()
    );
    println!("| subscriptions | records per change | indexed: µs per change | every view decided: µs per change |");
    println!("|---|---|---|---|");
    for &n in counts {
        let catalog = crate::route::catalog(true, n)?;
        let mut views = govbus_router::views::compile(&catalog, &Topics::default())?;
        for (i, v) in views.iter_mut().enumerate() {
            let schema = Schema::parse_str(&v.schema)?;
            v.codec = Some(EnvelopeCodec::new(schema, 100 + i as u32));
        }
        let refs: Vec<_> = views.iter().collect();
        let idx: Vec<usize> = (0..views.len()).collect();
        let time = |fast: &FastRoute| -> anyhow::Result<(f64, f64)> {
            if !fast.accepts(&writer) {
                bail!("the fast path refuses the demo's writer schema");
            }
            let (mut out, mut tally) = (FastOutputs::default(), Tally::default());
            let mut records = 0usize;
            // Best of three passes (the first warms the caches).
            let mut best = f64::MAX;
            for _ in 0..3 {
                records = 0;
                let cpu = crate::route::cpu_seconds();
                for e in &envelopes {
                    if !fast.route(e, &views, &idx, now, &mut out, &mut tally) {
                        bail!("a demo change left the fast path");
                    }
                    records += out.iter().count();
                }
                let spent = crate::route::cpu_seconds() - cpu;
                best = best.min(spent);
                tally.flush(&views, now);
            }
            Ok((best * 1e6 / changes as f64, records as f64 / changes as f64))
        };
        let fast = FastRoute::new(&refs, hierarchy.clone()).context("no fast path")?;
        let (indexed, per) = time(&fast)?;
        let (all, per_all) = time(&fast.without_index())?;
        if (per - per_all).abs() > f64::EPSILON {
            bail!("the index changed what is routed: {per} against {per_all} records per change");
        }
        println!("| {n} | {per:.2} | {indexed:.2} | {all:.2} |");
    }
    Ok(())
}
