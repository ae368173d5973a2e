//! The periodic report, produced by the bus: a report's figures frozen at a
//! date, with their totals, the view offsets they reflect and a digest
//! over all of it; exported as CSV or as a printable page laid out like
//! the report a department used to send.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::db::DbError;
use crate::report::{Cell, Report};
use crate::sink::{SinkError, SqlSink};
use crate::store::{Store, StoredSnapshot};

/// A report's figures frozen at a date.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// `subscriber.name`.
    pub report: String,
    /// The date it is the report of (the last day of its period).
    pub at: NaiveDate,
    /// When it was frozen (ms since the epoch).
    pub taken_ms: i64,
    /// The figures as shown on `at` (age bands counted for `at`'s year).
    pub figures: Vec<(Cell, i64)>,
    /// Their sum.
    pub total: i64,
    /// Per view topic and partition, the next offset: the changes the
    /// figures reflect.
    pub offsets: BTreeMap<String, BTreeMap<i32, i64>>,
    /// SHA-256 (hex) over the report, date, figures, total and offsets.
    pub digest: String,
}

/// What a stored snapshot's digest says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// The digest matches the content.
    Intact,
    /// The content was changed after it was frozen.
    Altered {
        /// The digest stored.
        stored: String,
        /// The digest of the content as it is.
        computed: String,
    },
}

impl Snapshot {
    /// Freezes `cells` (stored cells, as the sink keeps them) of `report` at
    /// `at`, reflecting `offsets`.
    pub fn freeze(
        report: &Report,
        at: NaiveDate,
        taken_ms: i64,
        cells: &[(Cell, i64)],
        offsets: BTreeMap<String, BTreeMap<i32, i64>>,
    ) -> Self {
        let figures: Vec<(Cell, i64)> = report.figures(cells, at).into_iter().collect();
        let total = figures.iter().map(|(_, n)| n).sum();
        let mut s = Self {
            report: report.id(),
            at,
            taken_ms,
            figures,
            total,
            offsets,
            digest: String::new(),
        };
        s.digest = s.compute_digest();
        s
    }

    /// The digest of the content (everything but `taken_ms` and the
    /// digest itself), over a canonical JSON text.
    pub fn compute_digest(&self) -> String {
        let canonical = serde_json::json!([
            self.report,
            self.at.to_string(),
            self.figures,
            self.total,
            self.offsets,
        ]);
        hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
    }

    /// The snapshot as the database stores it.
    pub fn stored(&self) -> StoredSnapshot {
        StoredSnapshot {
            report: self.report.clone(),
            at: self.at.to_string(),
            taken_ms: self.taken_ms,
            total: self.total,
            digest: self.digest.clone(),
            body: serde_json::to_string(self).unwrap_or_default(),
        }
    }

    /// A stored snapshot, with its digest as stored (so that
    /// [`Snapshot::verify`] finds a change); None: its content does not
    /// read as a snapshot.
    pub fn from_stored(s: &StoredSnapshot) -> Option<Self> {
        let mut out: Snapshot = serde_json::from_str(&s.body).ok()?;
        out.digest = s.digest.clone();
        Some(out)
    }

    /// Whether the content still matches its digest.
    pub fn verify(&self) -> Verified {
        let computed = self.compute_digest();
        if computed == self.digest {
            Verified::Intact
        } else {
            Verified::Altered {
                stored: self.digest.clone(),
                computed,
            }
        }
    }

    /// The snapshot as CSV: one row per figure (dimension labels, count),
    /// headings in `en`glish or Vietnamese, and a total row.
    pub fn to_csv(&self, report: &Report, en: bool) -> String {
        let mut w = csv::Writer::from_writer(Vec::new());
        let _ = w.write_record(report.headings(en));
        for (c, n) in &self.figures {
            let mut r = c.clone();
            r.push(n.to_string());
            let _ = w.write_record(&r);
        }
        let mut total = vec![String::new(); report.file.dimensions.len()];
        if let Some(first) = total.first_mut() {
            *first = crate::report::total_label(en).to_string();
        }
        total.push(self.total.to_string());
        let _ = w.write_record(&total);
        String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
    }

    /// A printable page (HTML, no outside resources) laid out as a
    /// department's periodic report: the issuing body and the national
    /// motto, the title and period, a table with the first dimension as
    /// rows and the others as columns with totals, and the digest and
    /// offsets it can be checked against.
    pub fn to_html(&self, report: &Report, en: bool) -> String {
        let f = &report.file;
        let t = |vi: &str, en_: &str| if en { en_.to_string() } else { vi.to_string() };
        let (rows, cols, grid) = pivot(&self.figures);
        // Values as their names: a commune code as its name in the map of
        // the report's date, others as the report file names them.
        let named = |dim: usize, v: &str| -> String {
            if let Some(t) = f.dimensions.get(dim).and_then(|d| d.labels.get(v)) {
                return if en { t.en.clone() } else { t.vi.clone() };
            }
            if dim == 0 {
                if let Some(u) = govbus_core::admin_map::reference().at(v, self.at) {
                    return format!("{} ({v})", u.name);
                }
            }
            if v.is_empty() {
                "-".into()
            } else {
                v.to_string()
            }
        };
        let mut col_totals: BTreeMap<&Cell, i64> = BTreeMap::new();
        let mut body = String::new();
        for (i, r) in rows.iter().enumerate() {
            let mut line = format!("<tr><td>{}</td><td>{}</td>", i + 1, esc(&named(0, r)));
            let mut sum = 0;
            for c in &cols {
                let n = grid.get(&(r.clone(), c.clone())).copied().unwrap_or(0);
                sum += n;
                *col_totals.entry(c).or_default() += n;
                line.push_str(&format!("<td class=n>{}</td>", number(n)));
            }
            line.push_str(&format!("<td class=n><b>{}</b></td></tr>\n", number(sum)));
            body.push_str(&line);
        }
        let head_cols: String = cols
            .iter()
            .map(|c| {
                let parts: Vec<String> =
                    c.iter().enumerate().map(|(i, v)| named(i + 1, v)).collect();
                format!("<th>{}</th>", esc(&parts.join(" · ")))
            })
            .collect();
        let foot_cols: String = cols
            .iter()
            .map(|c| {
                format!(
                    "<td class=n><b>{}</b></td>",
                    number(col_totals.get(c).copied().unwrap_or(0))
                )
            })
            .collect();
        let dims = report.dimension_titles(en);
        let offsets: Vec<String> = self
            .offsets
            .iter()
            .map(|(topic, ps)| {
                let parts: Vec<String> = ps.iter().map(|(p, o)| format!("{p}:{o}")).collect();
                format!("{topic} [{}]", parts.join(", "))
            })
            .collect();
        let issuer = f
            .issuer
            .as_ref()
            .map(|i| if en { i.en.clone() } else { i.vi.clone() })
            .unwrap_or_else(|| f.subscriber.to_uppercase());
        let taken = chrono::DateTime::from_timestamp_millis(self.taken_ms + 7 * 3_600_000)
            .map(|d| d.format("%H:%M %d/%m/%Y").to_string())
            .unwrap_or_default();
        format!(
            r#"<!doctype html>
<html lang="{lang}"><head><meta charset="utf-8"><title>{title} — {at}</title>
<style>
body {{ font-family: "Times New Roman", "DejaVu Serif", serif; margin: 2cm; color: #000; }}
.top {{ display: flex; justify-content: space-between; text-align: center; }}
.top div {{ width: 48%; }} .top b {{ display: block; }}
h1 {{ text-align: center; font-size: 16pt; margin: 1.2em 0 0.2em; text-transform: uppercase; }}
.period {{ text-align: center; font-style: italic; margin-bottom: 1em; }}
table {{ border-collapse: collapse; width: 100%; font-size: 11pt; }}
th, td {{ border: 1px solid #000; padding: 3px 6px; }} th {{ background: #eee; }}
td.n {{ text-align: right; font-variant-numeric: tabular-nums; }}
.proof {{ font-size: 8pt; margin-top: 1.5em; word-break: break-all; color: #333; }}
.sign {{ display: flex; justify-content: space-between; margin-top: 2em; text-align: center; }}
.sign div {{ width: 40%; }}
@media print {{ body {{ margin: 1cm; }} }}
</style></head><body>
<div class="top"><div><b>{issuer}</b><span>{govbus}</span></div>
<div><b>{nation}</b><b><u>{motto}</u></b><i>{place_date}</i></div></div>
<h1>{title}</h1>
<div class="period">{period_label} {at_vn} · {report_id}</div>
<table><thead><tr><th>{stt}</th><th>{row_head}</th>{head_cols}<th>{total_label}</th></tr>
<tr><th></th><th></th><th colspan="{ncols}">{col_head}</th><th></th></tr></thead>
<tbody>
{body}</tbody>
<tfoot><tr><td></td><td><b>{total_label}</b></td>{foot_cols}<td class=n><b>{total}</b></td></tr></tfoot></table>
<div class="proof">{frozen_label} {taken}. {offsets_label} {offsets}. SHA-256: {digest}</div>
<div class="sign"><div><b>{maker}</b><br><i>{sign_hint}</i></div><div><b>{head}</b><br><i>{sign_hint}</i></div></div>
</body></html>
"#,
            lang = if en { "en" } else { "vi" },
            title = esc_s(if en { &f.title.en } else { &f.title.vi }),
            at = self.at,
            issuer = esc_s(&issuer),
            govbus = t(
                "Báo cáo do hệ thống govbus lập",
                "Report produced by govbus"
            ),
            nation = t(
                "CỘNG HÒA XÃ HỘI CHỦ NGHĨA VIỆT NAM",
                "SOCIALIST REPUBLIC OF VIET NAM"
            ),
            motto = t(
                "Độc lập - Tự do - Hạnh phúc",
                "Independence - Freedom - Happiness"
            ),
            place_date = if en {
                format!("{}", self.at.format("%d %B %Y"))
            } else {
                format!(
                    "Ngày {} tháng {} năm {}",
                    self.at.format("%d"),
                    self.at.format("%m"),
                    self.at.format("%Y")
                )
            },
            period_label = t("Số liệu tính đến hết ngày", "Figures as of the end of"),
            at_vn = self.at.format("%d/%m/%Y"),
            report_id = esc_s(&self.report),
            stt = t("STT", "No."),
            row_head = esc_s(dims.first().map_or("", String::as_str)),
            col_head = esc_s(&dims[1.min(dims.len())..].join(" · ")),
            ncols = cols.len().max(1),
            head_cols = head_cols,
            total_label = crate::report::total_label(en),
            foot_cols = foot_cols,
            total = number(self.total),
            body = body,
            frozen_label = t("Chốt số liệu lúc", "Frozen at"),
            taken = taken,
            offsets_label = t(
                "Phản ánh các thay đổi đến vị trí",
                "Reflects the changes up to offsets"
            ),
            offsets = esc_s(&offsets.join("; ")),
            digest = self.digest,
            maker = t("NGƯỜI LẬP BIỂU", "PREPARED BY"),
            head = t("THỦ TRƯỞNG ĐƠN VỊ", "HEAD OF THE AGENCY"),
            sign_hint = t("(Ký, ghi rõ họ tên)", "(Signature, full name)"),
        )
    }
}

/// The topics whose offsets a report's snapshot records: its view and the
/// view's replay topic.
pub fn view_topics(
    report: &Report,
    catalog: &govbus_core::Catalog,
    topics: &govbus_core::Topics,
) -> Vec<String> {
    catalog
        .dataset(&report.file.dataset)
        .map(|ds| {
            let view = topics.view(&report.file.subscriber, &ds.id, ds.file.major);
            vec![govbus_core::Topics::replay(&view), view]
        })
        .unwrap_or_default()
}

/// A report's stored snapshots, oldest first (those whose content does
/// not read are left out).
pub fn stored(store: &mut Store, report: &str) -> Result<Vec<Snapshot>, DbError> {
    Ok(store
        .snapshots(report)?
        .iter()
        .filter_map(Snapshot::from_stored)
        .collect())
}

/// Freezes `report` at `at` from what the sink holds now (figures and
/// offsets read in one snapshot) and stores it, unless one of that date is
/// stored already: the stored one wins, and it is returned.
pub fn freeze_now(
    report: &Report,
    at: NaiveDate,
    view_topics: &[String],
    sink: &mut SqlSink,
) -> Result<(Snapshot, bool), SinkError> {
    let (cells, offsets) = sink
        .store()
        .figures_and_offsets(&report.id(), view_topics)?;
    let snap = Snapshot::freeze(report, at, govbus_core::now_ms(), &cells, offsets);
    if sink.save_snapshot(&snap.stored())? {
        return Ok((snap, true));
    }
    let stored = stored(sink.store(), &report.id())?
        .into_iter()
        .find(|s| s.at == at)
        .unwrap_or(snap);
    Ok((stored, false))
}

/// Freezes each scheduled report when its period ends (checked at most
/// every 30 s, in the schedule's time zone): a consumer that was down at
/// the end freezes it when it is back, from the figures it then holds.
#[derive(Debug)]
pub struct Freezer {
    reports: Vec<(std::sync::Arc<Report>, Vec<String>, Option<NaiveDate>)>,
    next_check: std::time::Instant,
}

impl Freezer {
    /// The scheduled reports among `reports`, with their newest snapshots.
    /// A report with none starts at the next period end: its figures were
    /// not kept at the end of a period that passed before it existed.
    pub fn new(
        reports: &[std::sync::Arc<Report>],
        catalog: &govbus_core::Catalog,
        topics: &govbus_core::Topics,
        sink: Option<&mut SqlSink>,
    ) -> Result<Self, SinkError> {
        let mut out = Vec::new();
        let Some(sink) = sink else {
            return Ok(Self {
                reports: out,
                next_check: std::time::Instant::now(),
            });
        };
        for r in reports.iter().filter(|r| r.file.schedule.is_some()) {
            let newest = stored(sink.store(), &r.id())?
                .last()
                .map(|s| s.at)
                .or_else(|| {
                    r.file
                        .schedule
                        .as_ref()
                        .and_then(|s| s.due(None, govbus_core::now_ms()))
                });
            out.push((r.clone(), view_topics(r, catalog, topics), newest));
        }
        Ok(Self {
            reports: out,
            next_check: std::time::Instant::now(),
        })
    }

    /// Freezes what is due at `now_ms`. A snapshot that cannot be stored
    /// now (the database unavailable for a moment) is logged and tried
    /// again at the next check; it never stops the consumer.
    pub fn tick(&mut self, sink: &mut SqlSink, now_ms: i64) {
        let now = std::time::Instant::now();
        if now < self.next_check {
            return;
        }
        self.next_check = now + std::time::Duration::from_secs(30);
        for (r, topics, newest) in &mut self.reports {
            let Some(due) = r
                .file
                .schedule
                .as_ref()
                .and_then(|s| s.due(*newest, now_ms))
            else {
                continue;
            };
            match freeze_now(r, due, topics, sink) {
                Ok((snap, stored)) => {
                    *newest = Some(due);
                    govbus_core::InternalEvent::emit(crate::events::SnapshotFrozen {
                        report: &snap.report,
                        at: snap.at,
                        total: snap.total,
                        digest: &snap.digest,
                        stored,
                    });
                }
                Err(error) => {
                    self.next_check = now + std::time::Duration::from_secs(5);
                    govbus_core::InternalEvent::emit(crate::events::SnapshotDeferred {
                        report: &r.id(),
                        at: due,
                        error: &error,
                    });
                }
            }
        }
    }
}

/// Figures as a table: the first label of each cell names its row, the
/// others its column.
#[allow(clippy::type_complexity)]
fn pivot(figures: &[(Cell, i64)]) -> (Vec<String>, Vec<Cell>, BTreeMap<(String, Cell), i64>) {
    let mut grid: BTreeMap<(String, Cell), i64> = BTreeMap::new();
    for (c, n) in figures {
        let row = c.first().cloned().unwrap_or_default();
        let col = c.get(1..).map(<[String]>::to_vec).unwrap_or_default();
        *grid.entry((row, col)).or_default() += n;
    }
    let mut rows: Vec<String> = grid.keys().map(|(r, _)| r.clone()).collect();
    rows.dedup();
    let mut cols: Vec<Cell> = grid.keys().map(|(_, c)| c.clone()).collect();
    cols.sort_by_key(natural);
    cols.dedup();
    (rows, cols, grid)
}

/// A column's sort key: age bands in the order of their ages.
fn natural(c: &Cell) -> Vec<(i64, String)> {
    c.iter()
        .map(|l| {
            let digits: String = l.chars().take_while(char::is_ascii_digit).collect();
            (digits.parse().unwrap_or(-1), l.clone())
        })
        .collect()
}

/// `12345` as `12.345` (the Vietnamese thousands separator).
fn number(n: i64) -> String {
    let s = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push('.');
        }
        out.push(ch);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

fn esc(s: &str) -> String {
    esc_s(if s.is_empty() { "-" } else { s })
}

fn esc_s(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let catalog = govbus_core::Catalog::builtin();
        let spec = catalog.reports_of("p52").next().unwrap();
        Report::compile(spec, &catalog).unwrap()
    }

    fn day(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    fn cells() -> Vec<(Cell, i64)> {
        vec![
            (vec!["21553".into(), "FEMALE".into(), "1990".into()], 2),
            (vec!["21553".into(), "MALE".into(), "2020".into()], 1),
            (vec!["21583".into(), "FEMALE".into(), "1991".into()], 1200),
        ]
    }

    fn offsets() -> BTreeMap<String, BTreeMap<i32, i64>> {
        [(
            "sub.p52.bca.residents.v1".to_string(),
            [(0, 10), (1, 7)].into_iter().collect(),
        )]
        .into_iter()
        .collect()
    }

    #[test]
    fn a_snapshot_holds_figures_totals_offsets_and_a_digest_that_detects_a_change() {
        let r = report();
        let s = Snapshot::freeze(&r, day("2026-11-30"), 1, &cells(), offsets());
        assert_eq!(s.total, 1203);
        assert_eq!(s.figures.len(), 3);
        assert_eq!(s.figures[0].0, ["21553", "FEMALE", "15-59"]);
        assert_eq!(s.verify(), Verified::Intact);
        let same = Snapshot::freeze(&r, day("2026-11-30"), 99, &cells(), offsets());
        assert_eq!(same.digest, s.digest, "when it was frozen is not content");
        let mut altered = s.clone();
        altered.figures[0].1 += 1;
        assert!(matches!(altered.verify(), Verified::Altered { .. }));
        let mut moved = s.clone();
        moved.offsets.values_mut().next().unwrap().insert(0, 11);
        assert!(matches!(moved.verify(), Verified::Altered { .. }));
    }

    #[test]
    fn csv_and_the_printable_page_carry_the_figures_and_the_total() {
        let r = report();
        let s = Snapshot::freeze(&r, day("2026-11-30"), 1, &cells(), offsets());
        let csv = s.to_csv(&r, false);
        assert_eq!(
            csv.lines().collect::<Vec<_>>(),
            [
                "\"Xã, phường\",Giới tính,Nhóm tuổi,Số lượng",
                "21553,FEMALE,15-59,2",
                "21553,MALE,6-14,1",
                "21583,FEMALE,15-59,1200",
                "Tổng cộng,,,1203"
            ]
        );
        let html = s.to_html(&r, false);
        assert!(
            html.contains("CỘNG HÒA XÃ HỘI CHỦ NGHĨA VIỆT NAM"),
            "{html}"
        );
        assert!(html.contains("Ngày 30 tháng 11 năm 2026"));
        assert!(html.contains("<td class=n><b>1.203</b></td>"), "{html}");
        assert!(html.contains(&s.digest));
        assert!(html.contains("sub.p52.bca.residents.v1 [0:10, 1:7]"));
        assert!(!html.contains("http"), "no outside resources");
        let en = s.to_html(&r, true);
        assert!(en.contains("SOCIALIST REPUBLIC OF VIET NAM") && en.contains("1.203"));
    }

    #[test]
    fn numbers_use_the_vietnamese_separator() {
        assert_eq!(number(0), "0");
        assert_eq!(number(999), "999");
        assert_eq!(number(1000), "1.000");
        assert_eq!(number(-1_234_567), "-1.234.567");
    }
}
