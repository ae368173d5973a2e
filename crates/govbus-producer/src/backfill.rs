//! Backfill from files: JSON lines (one entity, or one change with `op`, per
//! line) or CSV (a header row of flattened column names, `parent_child`).
//!
//! Each line is checked on its own; a bad line goes to the reject file
//! (`<file>.rejects.jsonl`: line number, reason, field errors, the text) and
//! the rest goes on. Good lines are stored in batches, each with the number of
//! its last line recorded in the same transaction, so an interrupted run
//! resumes after the last stored line without duplicates.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use apache_avro::Schema;
use govbus_schema::names::Names;
use govbus_schema::project::record_of;
use govbus_schema::FieldError;
use serde_json::{json, Map, Value as Json};

use crate::publisher::{ChangeRequest, Publisher, SubmitError};

/// Lines longer than this are rejected without being held in memory.
pub const MAX_LINE: usize = 1 << 20;

/// A backfill that could not go on (a bad *line* never stops it).
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    /// The file (or the reject file) could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// Which file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The format is not known.
    #[error("{0}: unknown format (use .jsonl, .ndjson or .csv)")]
    Format(String),
    /// The CSV header is unusable.
    #[error("{path}: CSV header: {reason}")]
    Header {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The store refused (down, or the dataset is not published here).
    #[error(transparent)]
    Submit(#[from] SubmitError),
}

/// Progress of a run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Lines read in this run (after the resume point).
    pub lines: u64,
    /// Changes stored.
    pub stored: u64,
    /// Lines rejected.
    pub rejected: u64,
    /// Lines skipped because an earlier run stored them.
    pub resumed_after: u64,
    /// Bytes of the file consumed.
    pub bytes: u64,
    /// The file's size.
    pub total_bytes: u64,
}

/// One line's fate.
enum Line {
    Blank,
    Ok(ChangeRequest),
    Bad {
        reason: &'static str,
        errors: Vec<FieldError>,
        text: String,
    },
}

/// Runs a backfill of `path` into `dataset`, calling `progress` after each
/// stored batch; the run stops early (resumable) when `progress` says false.
pub fn run(
    publisher: &Publisher,
    dataset: &str,
    path: &Path,
    batch: usize,
    mut progress: impl FnMut(&Progress) -> bool,
) -> Result<Progress, BackfillError> {
    let io = |source| BackfillError::Io {
        path: path.display().to_string(),
        source,
    };
    let schema = publisher
        .entity_schema(dataset)
        .ok_or_else(|| SubmitError::UnknownDataset(dataset.to_string()))?
        .clone();
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let total_bytes = std::fs::metadata(path).map_err(io)?.len();
    let canonical = path.canonicalize().map_err(io)?;
    let source = format!("file:{}:{total_bytes}", canonical.display());
    let done = publisher.checkpoint(&source)?.unwrap_or(0) as u64;
    let rejects_path = reject_path(path);
    let mut rejects = open_rejects(&rejects_path, done)?;
    let mut p = Progress {
        total_bytes,
        resumed_after: done,
        ..Default::default()
    };

    let mut pending: Vec<ChangeRequest> = Vec::with_capacity(batch);
    let mut last_line = done;
    let flush = |pending: &mut Vec<ChangeRequest>,
                 last: u64,
                 p: &mut Progress,
                 rejects: &mut File|
     -> Result<(), BackfillError> {
        let reqs = std::mem::take(pending);
        let n = reqs.len() as u64;
        match publisher.submit_from(dataset, reqs.clone(), &source, last as i64) {
            Ok(_) => p.stored += n,
            Err(SubmitError::UnknownEntity { .. } | SubmitError::Invalid(_)) => {
                // A delete of an unknown entity, or a line the contract
                // refuses, in this batch: store line by line, each refused
                // line to the reject file with its reasons.
                for (i, r) in reqs.into_iter().enumerate() {
                    let line = last + 1 - n + i as u64;
                    let text = match &r {
                        ChangeRequest::Upsert(j) => j.to_string(),
                        ChangeRequest::Delete { key } => format!("delete {key}"),
                    };
                    let (reason, errors, text) =
                        match publisher.submit_from(dataset, vec![r], &source, line as i64) {
                            Ok(_) => {
                                p.stored += 1;
                                continue;
                            }
                            Err(e @ SubmitError::UnknownEntity { .. }) => {
                                ("unknown_entity", vec![], e.to_string())
                            }
                            Err(SubmitError::Invalid(errors)) => {
                                let named = errors
                                    .iter()
                                    .all(|e| crate::publisher::rule_of(e).is_some());
                                (if named { "contract" } else { "schema" }, errors, text)
                            }
                            Err(e) => return Err(e.into()),
                        };
                    write_reject(rejects, &rejects_path, line, reason, &errors, &text)?;
                    govbus_core::InternalEvent::emit(crate::events::BackfillRejected {
                        line,
                        reason,
                    });
                    publisher.record_checkpoint(&source, line as i64)?;
                    p.rejected += 1;
                }
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
    };

    match ext.as_str() {
        "jsonl" | "ndjson" | "json" => {
            let mut reader = BufReader::new(File::open(path).map_err(io)?);
            let mut buf = Vec::new();
            let mut n = 0u64;
            loop {
                let (read, complete) =
                    read_line_limited(&mut reader, &mut buf, MAX_LINE).map_err(io)?;
                if read == 0 {
                    break;
                }
                n += 1;
                p.bytes += read as u64;
                if n <= done {
                    continue;
                }
                p.lines += 1;
                let line = if !complete {
                    Line::Bad {
                        reason: "too_long",
                        errors: vec![],
                        text: format!("line longer than {MAX_LINE} bytes ({read} bytes); not read"),
                    }
                } else {
                    parse_json_line(&schema, &buf)
                };
                handle(line, n, &mut pending, &mut p, &mut rejects, &rejects_path)?;
                last_line = n;
                if pending.len() >= batch {
                    flush(&mut pending, last_line, &mut p, &mut rejects)?;
                    if !progress(&p) {
                        return Ok(p);
                    }
                }
            }
        }
        "csv" => {
            let file = File::open(path).map_err(io)?;
            let mut rdr = csv::ReaderBuilder::new()
                .has_headers(true)
                .flexible(false)
                .from_reader(file);
            let headers = rdr
                .byte_headers()
                .map_err(|e| BackfillError::Header {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?
                .clone();
            let headers: Vec<String> = headers
                .iter()
                .map(|h| String::from_utf8_lossy(h).trim().to_string())
                .collect();
            let mut record = csv::ByteRecord::new();
            loop {
                let line = rdr.position().line();
                let res = rdr.read_byte_record(&mut record);
                p.bytes = rdr.position().byte();
                let outcome = match res {
                    Ok(false) => break,
                    Ok(true) => {
                        if line <= done {
                            continue;
                        }
                        csv_line(&schema, &headers, &record)
                    }
                    Err(e) => {
                        if line <= done {
                            continue;
                        }
                        Line::Bad {
                            reason: "malformed",
                            errors: vec![],
                            text: format!("malformed CSV: {e}"),
                        }
                    }
                };
                p.lines += 1;
                handle(
                    outcome,
                    line,
                    &mut pending,
                    &mut p,
                    &mut rejects,
                    &rejects_path,
                )?;
                last_line = line;
                if pending.len() >= batch {
                    flush(&mut pending, last_line, &mut p, &mut rejects)?;
                    if !progress(&p) {
                        return Ok(p);
                    }
                }
            }
        }
        _ => return Err(BackfillError::Format(path.display().to_string())),
    }
    if last_line > done {
        flush(&mut pending, last_line, &mut p, &mut rejects)?;
    }
    p.bytes = total_bytes;
    progress(&p);
    Ok(p)
}

fn handle(
    line: Line,
    n: u64,
    pending: &mut Vec<ChangeRequest>,
    p: &mut Progress,
    rejects: &mut File,
    rejects_path: &Path,
) -> Result<(), BackfillError> {
    match line {
        Line::Blank => {}
        Line::Ok(r) => pending.push(r),
        Line::Bad {
            reason,
            errors,
            text,
        } => {
            write_reject(rejects, rejects_path, n, reason, &errors, &text)?;
            govbus_core::InternalEvent::emit(crate::events::BackfillRejected { line: n, reason });
            p.rejected += 1;
        }
    }
    Ok(())
}

/// The reject file next to `path`.
pub fn reject_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".rejects.jsonl");
    PathBuf::from(s)
}

/// Opens the reject file, dropping entries after line `done` (a run that
/// stopped after writing a reject but before storing its batch redoes them).
fn open_rejects(path: &Path, done: u64) -> Result<File, BackfillError> {
    let io = |source| BackfillError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(false)
        .open(path)
        .map_err(io)?;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(io)?;
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<Json>(l)
                .ok()
                .and_then(|v| v["line"].as_u64())
                .is_some_and(|n| n <= done)
        })
        .collect();
    file.set_len(0).map_err(io)?;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    for l in kept {
        writeln!(file, "{l}").map_err(io)?;
    }
    Ok(file)
}

fn write_reject(
    file: &mut File,
    path: &Path,
    line: u64,
    reason: &str,
    errors: &[FieldError],
    text: &str,
) -> Result<(), BackfillError> {
    let doc = json!({"line": line, "reason": reason, "errors": errors, "text": text});
    writeln!(file, "{doc}").map_err(|source| BackfillError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Reads one line (without its newline) into `buf`, at most `max` bytes kept.
/// Returns (bytes consumed, whether the whole line fit).
fn read_line_limited(
    r: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<(usize, bool)> {
    buf.clear();
    let mut consumed = 0;
    let mut fits = true;
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            return Ok((consumed, fits));
        }
        let (take, done) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        let data = &chunk[..if done { take - 1 } else { take }];
        if fits && buf.len() + data.len() <= max {
            buf.extend_from_slice(data);
        } else {
            fits = false;
            buf.clear();
        }
        r.consume(take);
        consumed += take;
        if done {
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok((consumed, fits));
        }
    }
}

fn parse_json_line(schema: &Schema, buf: &[u8]) -> Line {
    let text = match std::str::from_utf8(buf) {
        Ok(t) => t,
        Err(e) => {
            return Line::Bad {
                reason: "not_utf8",
                errors: vec![],
                text: format!(
                    "not UTF-8 (invalid byte at offset {}): {}",
                    e.valid_up_to(),
                    String::from_utf8_lossy(buf)
                ),
            }
        }
    };
    if text.trim().is_empty() {
        return Line::Blank;
    }
    let v: Json = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return Line::Bad {
                reason: "malformed",
                errors: vec![],
                text: format!("malformed JSON ({e}): {text}"),
            }
        }
    };
    let req = if v.get("op").is_some() {
        match crate::http::parse_change(&v, "") {
            Ok(r) => r,
            Err(errors) => {
                return Line::Bad {
                    reason: "invalid",
                    errors,
                    text: text.to_string(),
                }
            }
        }
    } else {
        ChangeRequest::Upsert(v)
    };
    check(schema, req, text)
}

fn check(schema: &Schema, req: ChangeRequest, text: &str) -> Line {
    if let ChangeRequest::Upsert(data) = &req {
        if let Err(errors) = govbus_schema::json::to_avro(schema, data) {
            return Line::Bad {
                reason: "schema",
                errors,
                text: text.to_string(),
            };
        }
    }
    Line::Ok(req)
}

fn csv_line(schema: &Schema, headers: &[String], record: &csv::ByteRecord) -> Line {
    let mut row = Map::new();
    let mut errors = Vec::new();
    for (h, raw) in headers.iter().zip(record.iter()) {
        match std::str::from_utf8(raw) {
            Ok(s) => {
                row.insert(h.clone(), Json::String(s.to_string()));
            }
            Err(e) => errors.push(FieldError {
                field: h.clone(),
                problem: format!("not UTF-8 (invalid byte at offset {})", e.valid_up_to()),
            }),
        }
    }
    let text = record
        .iter()
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect::<Vec<_>>()
        .join(",");
    if !errors.is_empty() {
        return Line::Bad {
            reason: "not_utf8",
            errors,
            text,
        };
    }
    let names = Names::of(schema);
    let Some(rec) = record_of(schema, &names) else {
        return Line::Bad {
            reason: "schema",
            errors: vec![],
            text,
        };
    };
    let entity = govbus_schema::flat::nest(rec, &names, &row, &typed);
    check(schema, ChangeRequest::Upsert(entity), &text)
}

/// A CSV cell (a string) as the JSON its field's schema takes: an empty
/// cell of a nullable field is null, numbers and booleans are parsed, and
/// anything else stays a string (the schema then says what is wrong).
fn typed(fs: &Schema, cell: &Json) -> Option<Json> {
    let Json::String(cell) = cell else {
        return None;
    };
    let base = match fs {
        Schema::Union(u) => u
            .variants()
            .iter()
            .find(|v| !matches!(v, Schema::Null))
            .unwrap_or(fs),
        other => other,
    };
    Some(if cell.is_empty() && matches!(fs, Schema::Union(_)) {
        Json::Null
    } else {
        match base {
            Schema::Int | Schema::Long | Schema::TimestampMillis if cell.parse::<i64>().is_ok() => {
                json!(cell.parse::<i64>().unwrap_or_default())
            }
            Schema::Float | Schema::Double => {
                cell.parse::<f64>().map(|f| json!(f)).unwrap_or(json!(cell))
            }
            Schema::Boolean => match cell.as_str() {
                "true" | "1" => json!(true),
                "false" | "0" => json!(false),
                _ => json!(cell),
            },
            _ => json!(cell),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_cut_without_holding_them() {
        let data = format!("{}\nshort\n", "x".repeat(100));
        let mut r = BufReader::with_capacity(16, data.as_bytes());
        let mut buf = Vec::new();
        assert_eq!(
            read_line_limited(&mut r, &mut buf, 50).unwrap(),
            (101, false)
        );
        assert!(buf.is_empty());
        assert_eq!(read_line_limited(&mut r, &mut buf, 50).unwrap(), (6, true));
        assert_eq!(buf, b"short");
        assert_eq!(read_line_limited(&mut r, &mut buf, 50).unwrap(), (0, true));
    }
}
