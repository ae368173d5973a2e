//! `govbus-bench costs`: what a province's report and its delivery
//! receipts cost per applied change, against the PostgreSQL sink without
//! them: the same changes (creates, then an update of each that moves the
//! resident to another commune) applied in batches, four ways, the runs
//! alternated; rows/s, and CPU per change of this process and of its
//! PostgreSQL backend together.

use std::sync::Arc;
use std::time::Instant;

use anyhow::bail;
use govbus_consumer::report::Report;
use govbus_consumer::sink::Sink;
use govbus_consumer::SqlSink;
use govbus_core::Catalog;
use govbus_e2e::{pg_url, unique};

use crate::route::{cpu_seconds, cpu_seconds_of};

/// One way of applying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    Plain,
    Report,
    Receipts,
    Both,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::Plain => "sink alone",
            Way::Report => "with the population report",
            Way::Receipts => "with receipts",
            Way::Both => "with report and receipts",
        }
    }
}

/// Rows/s and CPU µs per change of one run.
fn once(way: Way, n: usize, batch: usize, report: &Arc<Report>) -> anyhow::Result<(f64, f64)> {
    let t = crate::table();
    let data = crate::rows(&t, n);
    let schema = unique("bench_");
    let mut sink = SqlSink::postgres(&pg_url(), &schema)?;
    sink.ensure_table(&t)?;
    if matches!(way, Way::Report | Way::Both) {
        sink.set_reports(vec![report.clone()]);
    }
    if matches!(way, Way::Receipts | Way::Both) {
        sink.set_receipts("p52");
    }
    let mut c = postgres::Client::connect(&pg_url(), postgres::NoTls)?;
    // The sink's backend: the newest connection of this database's user
    // that is not this one.
    let backend: i32 = c
        .query_one(
            "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND datname = current_database() \
             ORDER BY backend_start DESC LIMIT 1",
            &[],
        )?
        .get(0);
    let (cpu0, pg0) = (cpu_seconds(), cpu_seconds_of(&backend.to_string()));
    let start = Instant::now();
    for (i, chunk) in data.chunks(batch).enumerate() {
        sink.apply(chunk, &[("bench".into(), 0, ((i + 1) * batch) as i64)])?;
        sink.take_touched();
        sink.take_receipts();
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0 + cpu_seconds_of(&backend.to_string()) - pg0;
    let held: i64 = c
        .query_one(
            &format!("SELECT count(*) FROM \"{schema}\".bca_residents"),
            &[],
        )?
        .get(0);
    if held as usize != n / 2 {
        bail!("expected {} rows, found {held}", n / 2);
    }
    if matches!(way, Way::Report | Way::Both) {
        let counted: i64 = c
            .query_one(
                &format!("SELECT coalesce(sum(n), 0)::int8 FROM \"{schema}\"._govbus_report_cells"),
                &[],
            )?
            .get(0);
        if counted != held {
            bail!("the report counts {counted} residents, the table holds {held}");
        }
    }
    c.batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))?;
    Ok((n as f64 / secs, cpu * 1e6 / n as f64))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs every way `rounds` times, alternated (each way first in turn),
/// and prints the medians.
pub(crate) fn run(n: usize, batch: usize, rounds: usize) -> anyhow::Result<()> {
    let catalog = Catalog::builtin();
    let spec = catalog
        .reports_of("p52")
        .next()
        .ok_or_else(|| anyhow::anyhow!("p52 has no report"))?;
    let report = Arc::new(Report::compile(spec, &catalog)?);
    println!(
        "PostgreSQL sink: {n} changes ({} residents, then a move of each), batches of {batch}, {rounds} rounds, {}",
        n / 2,
        pg_url()
    );
    let ways = [Way::Plain, Way::Report, Way::Receipts, Way::Both];
    let mut got: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); ways.len()];
    for round in 0..rounds {
        // Each way takes each place in the order in turn: a run after
        // others meets their checkpoints and dirty pages.
        for k in 0..ways.len() {
            let i = (k + round) % ways.len();
            let w = &ways[i];
            let (rate, us) = once(*w, n, batch, &report)?;
            got[i].0.push(rate);
            got[i].1.push(us);
        }
    }
    let base = median(got[0].0.clone());
    let base_us = median(got[0].1.clone());
    for (w, (rates, us)) in ways.iter().zip(got) {
        let (r, u) = (median(rates.clone()), median(us));
        let lo = rates.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = rates.iter().copied().fold(0.0, f64::max);
        println!(
            "  {:<28}: {r:>7.0} rows/s ({lo:.0}–{hi:.0}), {u:>6.1} µs CPU per change; {:>+6.1} % rows/s, {:>+6.1} µs",
            w.name(),
            (r / base - 1.0) * 100.0,
            u - base_us
        );
    }
    Ok(())
}
