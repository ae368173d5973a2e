//! `govbus report show|check`: a province's report figures, read from its
//! database, and a count of its table compared with them.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use govbus_consumer::build::{compare, count_table, view_table};
use govbus_consumer::report::{Cell, Report};
use govbus_consumer::snapshot::{freeze_now, view_topics, Snapshot, Verified};
use govbus_core::Topics;
use govbus_schema::RegistryClient;

use crate::config::GovbusConfig;

/// Which report: the consumer's configuration, and the report's name.
#[derive(Debug, clap::Args)]
pub(crate) struct Which {
    /// The province consumer's configuration file (`[consumer]`).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The subscriber (must be the configuration's, when given).
    #[arg(long)]
    subscriber: Option<String>,
    /// The report's name (needed when the subscriber has several).
    #[arg(long)]
    name: Option<String>,
}

struct Opened {
    report: Arc<Report>,
    sink: govbus_consumer::SqlSink,
    catalog: govbus_core::Catalog,
    consumer: govbus_consumer::ConsumerConfig,
}

fn open(w: &Which) -> anyhow::Result<Opened> {
    let (cfg, c) = GovbusConfig::consumer_for(w.config.as_deref(), w.subscriber.as_deref())?;
    let catalog = cfg.catalog()?;
    let mine: Vec<_> = catalog.reports_of(&c.subscriber).collect();
    let spec = match (&w.name, mine.as_slice()) {
        (Some(n), _) => mine.iter().find(|r| r.file.name == *n).with_context(|| {
            format!(
                "{} has no report `{n}` (declared: {})",
                c.subscriber,
                names(&mine)
            )
        })?,
        (None, [one]) => one,
        (None, []) => bail!(
            "{} has no report: declare one in deploy/reports/",
            c.subscriber
        ),
        (None, _) => bail!(
            "{} has several reports; pick one with --name ({})",
            c.subscriber,
            names(&mine)
        ),
    };
    let report = Arc::new(Report::compile(spec, &catalog)?);
    let sink = match c.sink.open()? {
        govbus_consumer::Opened::Sql(s) => *s,
        govbus_consumer::Opened::Other(s) => bail!(
            "{}: a {} sink holds no rows to count; reports need a postgres or sqlite sink",
            report.id(),
            s.kind()
        ),
    };
    Ok(Opened {
        report,
        sink,
        catalog,
        consumer: c,
    })
}

fn names(r: &[&govbus_core::report::ReportSpec]) -> String {
    r.iter()
        .map(|r| r.file.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn today() -> chrono::NaiveDate {
    govbus_core::admin_map::day_of_ms(govbus_core::now_ms())
}

fn english(lang: &str) -> anyhow::Result<bool> {
    match lang {
        "en" => Ok(true),
        "vi" => Ok(false),
        other => bail!("--lang {other}: give vi or en"),
    }
}

fn date(at: &str) -> anyhow::Result<chrono::NaiveDate> {
    chrono::NaiveDate::parse_from_str(at, "%Y-%m-%d")
        .with_context(|| format!("--at {at}: give a date as YYYY-MM-DD"))
}

/// The stored snapshot of `at`, refused if its content no longer matches
/// its digest.
fn stored(o: &mut Opened, at: &str) -> anyhow::Result<Snapshot> {
    let day = date(at)?;
    let all = govbus_consumer::snapshot::stored(o.sink.store(), &o.report.id())?;
    let dates: Vec<String> = all.iter().map(|s| s.at.to_string()).collect();
    let snap = all.into_iter().find(|s| s.at == day).with_context(|| {
        format!(
            "{} has no snapshot of {at} (it has: {})",
            o.report.id(),
            if dates.is_empty() {
                "none".to_string()
            } else {
                dates.join(", ")
            }
        )
    })?;
    if let Verified::Altered { stored, computed } = snap.verify() {
        bail!(
            "the snapshot {} of {at} was changed after it was frozen: its digest is {stored}, its content gives {computed}",
            o.report.id()
        );
    }
    Ok(snap)
}

/// `govbus report show`.
pub(crate) fn show(w: &Which, at: Option<&str>, lang: &str, csv: bool) -> anyhow::Result<()> {
    let mut o = open(w)?;
    let en = english(lang)?;
    let (day, figures, frozen) = match at {
        None => {
            let day = today();
            let cells = o.sink.store().report_cells(&o.report.id())?;
            (day, o.report.figures(&cells, day), None)
        }
        Some(at) => {
            let snap = stored(&mut o, at)?;
            let f = snap.figures.iter().cloned().collect();
            (snap.at, f, Some(snap))
        }
    };
    let f = &o.report.file;
    let heads = o.report.headings(en);
    let total: i64 = figures.values().sum();
    let rows: Vec<(Cell, i64)> = figures.into_iter().collect();
    if csv {
        let mut out = csv::Writer::from_writer(std::io::stdout());
        out.write_record(&heads)?;
        for (c, n) in &rows {
            let mut r = c.clone();
            r.push(n.to_string());
            out.write_record(&r)?;
        }
        out.flush()?;
        return Ok(());
    }
    println!(
        "{} ({}) — {} {day}",
        if en { &f.title.en } else { &f.title.vi },
        o.report.id(),
        if en { "as of" } else { "tính đến ngày" }
    );
    let widths: Vec<usize> = (0..heads.len())
        .map(|i| {
            rows.iter()
                .map(|(c, n)| c.get(i).map_or(n.to_string().len(), |l| l.chars().count()))
                .chain([heads[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cols: &[String]| {
        cols.iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
    };
    println!("{}", line(&heads));
    for (c, n) in &rows {
        let mut r: Vec<String> = c
            .iter()
            .map(|l| if l.is_empty() { "-".into() } else { l.clone() })
            .collect();
        r.push(n.to_string());
        println!("{}", line(&r));
    }
    println!("{}: {total}", govbus_consumer::report::total_label(en));
    if let Some(s) = frozen {
        println!(
            "SHA-256 {} ({})",
            s.digest,
            if en { "intact" } else { "nguyên vẹn" }
        );
    }
    Ok(())
}

/// `govbus report freeze`.
pub(crate) fn freeze(w: &Which, at: &str) -> anyhow::Result<()> {
    let mut o = open(w)?;
    let day = date(at)?;
    let topics = view_topics(
        &o.report,
        &o.catalog,
        &Topics::new(&o.consumer.topic_prefix),
    );
    let (snap, now) = freeze_now(&o.report, day, &topics, &mut o.sink)?;
    println!(
        "{} {at}: {} (total {}, {} figures, SHA-256 {})",
        o.report.id(),
        if now {
            "frozen now"
        } else {
            "already frozen; kept"
        },
        snap.total,
        snap.figures.len(),
        snap.digest
    );
    Ok(())
}

/// `govbus report snapshots`.
pub(crate) fn snapshots(w: &Which) -> anyhow::Result<()> {
    let mut o = open(w)?;
    let all = govbus_consumer::snapshot::stored(o.sink.store(), &o.report.id())?;
    println!(
        "{:<12} {:<20} {:>10}  {:<64}  CHECK",
        "DATE", "FROZEN AT (UTC+7)", "TOTAL", "SHA-256"
    );
    let mut altered = Vec::new();
    for s in &all {
        let taken = chrono::DateTime::from_timestamp_millis(s.taken_ms + 7 * 3_600_000)
            .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        let check = match s.verify() {
            Verified::Intact => "intact".to_string(),
            Verified::Altered { computed, .. } => {
                altered.push(s.at.to_string());
                format!("ALTERED (content gives {computed})")
            }
        };
        println!(
            "{:<12} {:<20} {:>10}  {:<64}  {check}",
            s.at.to_string(),
            taken,
            s.total,
            s.digest
        );
    }
    if !altered.is_empty() {
        bail!(
            "{}: snapshots changed after they were frozen: {}",
            o.report.id(),
            altered.join(", ")
        );
    }
    Ok(())
}

/// `govbus report export`.
pub(crate) fn export(
    w: &Which,
    at: &str,
    format: &str,
    lang: &str,
    out: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let mut o = open(w)?;
    let en = english(lang)?;
    let snap = stored(&mut o, at)?;
    let text = match format {
        "csv" => snap.to_csv(&o.report, en),
        "html" => snap.to_html(&o.report, en),
        other => bail!("--format {other}: give csv or html"),
    };
    match out {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("{} {at} written to {}", o.report.id(), path.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}

/// `govbus report check`.
pub(crate) fn check(w: &Which) -> anyhow::Result<()> {
    let mut o = open(w)?;
    let topics = Topics::new(&o.consumer.topic_prefix);
    let registry =
        RegistryClient::with_access(&o.consumer.registry, o.consumer.registry_access.as_ref())?;
    let Some(table) = view_table(&o.report, &o.catalog, &topics, &registry)? else {
        println!(
            "{}: the view has no schema yet; nothing to count",
            o.report.id()
        );
        return Ok(());
    };
    let Some((members, maintained)) = count_table(&o.report, &table, o.sink.store())? else {
        println!(
            "{}: no table {} yet; nothing to count",
            o.report.id(),
            table.name
        );
        return Ok(());
    };
    let c = compare(&maintained, &members);
    if c.differences.is_empty() {
        println!(
            "{}: the figures equal a count of {} ({} rows counted, {} cells)",
            o.report.id(),
            table.name,
            c.rows,
            maintained.len()
        );
        return Ok(());
    }
    println!(
        "{}: {} cells differ from a count of {} ({} rows counted):",
        o.report.id(),
        c.differences.len(),
        table.name,
        c.rows
    );
    println!("{:<40} {:>12} {:>12}", "CELL", "MAINTAINED", "COUNTED");
    for (cell, kept, counted) in &c.differences {
        println!("{:<40} {kept:>12} {counted:>12}", cell.join(" / "));
    }
    bail!(
        "{}: the maintained figures differ from the table in {} cells",
        o.report.id(),
        c.differences.len()
    )
}
