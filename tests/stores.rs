//! The producer's durable store and the province sinks, one scenario run
//! against each backend (SQLite and a real PostgreSQL).

use std::io::Write;
use std::sync::Arc;

use govbus_consumer::report::{Cell, Report};
use govbus_consumer::sink::{Row, Sink};
use govbus_consumer::table::{ColType, Column, SqlValue, TableDef};
use govbus_consumer::SqlSink;
use govbus_e2e::{pg_url, unique};
use govbus_producer::store::{Entity, NewChange, State};
use govbus_producer::{OutboxStore, PostgresStore, SqliteStore};
use serde_json::Value;

fn store_scenario(store: &dyn OutboxStore) {
    // One acceptance per change: the entity as the transaction saw it,
    // then the change stored with the next sequence.
    let accept = |key: &str, state: Option<&[u8]>| {
        let mut tx = store.begin().unwrap();
        let prev = tx.entity("bca.residents", key).unwrap();
        let seq = prev.as_ref().map_or(1, |e| e.seq + 1);
        tx.put(&NewChange {
            dataset: "bca.residents",
            key,
            seq,
            state,
            topic: "t",
            value: format!("{key}#{seq}").as_bytes(),
        })
        .unwrap();
        tx.commit().unwrap();
        prev
    };
    let entity = |seq, state: Option<&[u8]>| {
        Some(Entity {
            seq,
            state: state.map(|s| State::Avro(s.to_vec())),
        })
    };
    assert_eq!(accept("a", Some(b"v1")), None);
    assert_eq!(accept("a", Some(b"v2")), entity(1, Some(b"v1")));
    assert_eq!(accept("b", Some(b"v9")), None);
    assert_eq!(accept("a", None), entity(2, Some(b"v2")));
    // After a delete the sequence goes on: a re-created entity never reuses one.
    assert_eq!(accept("a", Some(b"v4")), entity(3, None));
    // A transaction dropped without a commit stores nothing and uses no
    // sequence; one change may see another of the same transaction.
    {
        let mut tx = store.begin().unwrap();
        let change = NewChange {
            dataset: "bca.residents",
            key: "a",
            seq: 5,
            state: Some(b"lost"),
            topic: "t",
            value: b"lost",
        };
        tx.put(&change).unwrap();
        assert_eq!(
            tx.entity("bca.residents", "a").unwrap(),
            entity(5, Some(b"lost"))
        );
    }
    assert_eq!(accept("a", Some(b"v5")), entity(4, Some(b"v4")));

    let pending = store.pending(100).unwrap();
    let values: Vec<&[u8]> = pending.iter().map(|r| r.value).collect();
    assert_eq!(
        values,
        [&b"a#1"[..], b"a#2", b"b#1", b"a#3", b"a#4", b"a#5"],
        "outbox keeps commit order"
    );
    let ids: Vec<i64> = pending.iter().map(|r| r.id).collect();
    store.mark_sent(&ids[..2]).unwrap();
    assert_eq!(store.backlog().unwrap(), 4);
    assert_eq!(store.pending(1).unwrap().last_id(), Some(ids[2]));
}

#[test]
fn producer_store_sequences_and_before_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    store_scenario(&SqliteStore::open(dir.path().join("s.db").to_str().unwrap()).unwrap());
}

#[test]
fn producer_store_sequences_and_before_on_postgres() {
    store_scenario(&PostgresStore::open(&pg_url(), &unique("store_")).unwrap());
}

/// A column read from the entity's field of the same name.
fn col(name: &str, ty: ColType) -> Column {
    Column {
        name: name.into(),
        path: vec![name.into()],
        ty,
    }
}

fn table() -> Arc<TableDef> {
    Arc::new(TableDef {
        name: "bca_residents".into(),
        key: "citizen_id".into(),
        columns: vec![
            col("citizen_id", ColType::Text),
            col("full_name", ColType::Text),
            col("date_of_birth", ColType::Date),
            col("updated_at", ColType::Timestamp),
        ],
    })
}

fn row(t: &Arc<TableDef>, key: &str, seq: i64, name: Option<&str>) -> Row {
    Row {
        table: t.clone(),
        key: key.into(),
        seq,
        source_ts: 1,
        values: name.map(|n| {
            vec![
                SqlValue::Text(key.into()),
                SqlValue::Text(n.into()),
                SqlValue::Date("1990-01-31".into()),
                SqlValue::Timestamp(1_764_230_400_123),
            ]
        }),
        event_id: format!("e-{key}-{seq}"),
        record: None,
        op: if name.is_some() {
            govbus_schema::Op::Update
        } else {
            govbus_schema::Op::Delete
        },
        after: name.map(|n| {
            govbus_schema::AvroValue::Record(vec![
                (
                    "citizen_id".into(),
                    govbus_schema::AvroValue::String(key.into()),
                ),
                (
                    "full_name".into(),
                    govbus_schema::AvroValue::String(n.into()),
                ),
            ])
        }),
    }
}

fn sink_scenario(sink: &mut dyn Sink) {
    let t = table();
    sink.ensure_table(&t).unwrap();
    sink.ensure_table(&t).unwrap(); // idempotent
    let topic = unique("sub.");
    let done = sink
        .apply(
            &[
                row(&t, "1", 1, Some("A")),
                row(&t, "2", 1, Some("B")),
                row(&t, "1", 2, Some("A2")),
            ],
            &[(topic.clone(), 0, 3)],
        )
        .unwrap();
    assert_eq!((done.upserts, done.stale), (3, 0));
    // A replay of the same batch changes nothing.
    let again = sink
        .apply(
            &[row(&t, "1", 1, Some("A")), row(&t, "1", 2, Some("A2"))],
            &[(topic.clone(), 0, 3)],
        )
        .unwrap();
    assert_eq!((again.upserts, again.stale), (0, 2));
    // Delete, then a stale upsert: the row stays deleted.
    let d = sink
        .apply(
            &[row(&t, "2", 2, None), row(&t, "2", 1, Some("B"))],
            &[(topic.clone(), 1, 7)],
        )
        .unwrap();
    assert_eq!((d.deletes, d.stale), (1, 1));
    let offsets = sink.offsets(&topic).unwrap();
    assert_eq!((offsets[&0], offsets[&1]), (3, 7));
}

#[test]
fn sink_applies_in_sequence_to_json_lines_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.jsonl");
    let state = dir.path().join("p.state.db");
    let open = || {
        govbus_consumer::sink::JsonlConfig {
            path: path.to_str().unwrap().into(),
            state: Some(state.to_str().unwrap().into()),
        }
        .build()
        .unwrap()
    };
    sink_scenario(&mut open());
    let lines: Vec<Value> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ops: Vec<(&str, i64, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["key"].as_str().unwrap(),
                l["seq"].as_i64().unwrap(),
                l["op"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ops,
        [
            ("1", 1, "UPDATE"),
            ("2", 1, "UPDATE"),
            ("1", 2, "UPDATE"),
            ("2", 2, "DELETE")
        ]
    );
    assert_eq!(lines[2]["data"]["full_name"], "A2");
    // A crash between writing and committing leaves a tail: it is cut on open.
    let committed = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"{\"partial\":")
        .unwrap();
    drop(open());
    assert_eq!(std::fs::metadata(&path).unwrap().len(), committed);
}

#[test]
fn sink_applies_in_sequence_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    sink_scenario(&mut SqlSink::sqlite(path.to_str().unwrap()).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    let (name, dob, ts): (String, String, String) = conn
        .query_row(
            "SELECT full_name, date_of_birth, updated_at FROM bca_residents",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(
        (name.as_str(), dob.as_str(), ts.as_str()),
        ("A2", "1990-01-31", "2025-11-27T08:00:00.123Z")
    );
}

#[test]
fn sink_applies_in_sequence_on_postgres_row_by_row() {
    let mut sink = SqlSink::postgres(&pg_url(), &unique("sink_")).unwrap();
    sink.set_row_by_row(true);
    sink_scenario(&mut sink);
}

#[test]
fn sink_applies_in_sequence_on_postgres() {
    let schema = unique("sink_");
    sink_scenario(&mut SqlSink::postgres(&pg_url(), &schema).unwrap());
    let mut c = postgres::Client::connect(&pg_url(), postgres::NoTls).unwrap();
    let r = c
        .query_one(
            &format!("SELECT full_name, date_of_birth::text, (extract(epoch from updated_at)*1000)::bigint FROM \"{schema}\".bca_residents"),
            &[],
        )
        .unwrap();
    assert_eq!(
        (
            r.get::<_, String>(0),
            r.get::<_, String>(1),
            r.get::<_, i64>(2)
        ),
        (
            "A2".to_string(),
            "1990-01-31".to_string(),
            1_764_230_400_123
        )
    );
}

#[test]
fn postgres_sink_survives_the_database_going_away_and_coming_back() {
    let target = pg_url();
    let proxy = govbus_e2e::TcpProxy::start("127.0.0.1:5432".parse().unwrap());
    let via = target.replace("127.0.0.1:5432", &proxy.addr.to_string());
    assert_ne!(
        via, target,
        "GOVBUS_TEST_POSTGRES must name 127.0.0.1:5432 for this test"
    );
    let schema = unique("gone_");
    let mut sink = SqlSink::postgres(&via, &schema).unwrap();
    let t = table();
    sink.ensure_table(&t).unwrap();
    let topic = unique("sub.");
    sink.apply(&[row(&t, "1", 1, Some("A"))], &[(topic.clone(), 0, 1)])
        .unwrap();

    proxy.cut();
    let e = sink
        .apply(&[row(&t, "1", 2, Some("B"))], &[(topic.clone(), 0, 2)])
        .unwrap_err();
    assert!(e.to_string().contains("postgres"), "{e}");
    // While it is gone, every attempt fails the same way; nothing is half-applied.
    assert!(sink
        .apply(&[row(&t, "1", 2, Some("B"))], &[(topic.clone(), 0, 2)])
        .is_err());

    proxy.restore();
    let done = sink
        .apply(&[row(&t, "1", 2, Some("B"))], &[(topic.clone(), 0, 2)])
        .unwrap();
    assert_eq!(done.upserts, 1);
    assert_eq!(sink.offsets(&topic).unwrap()[&0], 2);
    let mut c = postgres::Client::connect(&target, postgres::NoTls).unwrap();
    let name: String = c
        .query_one(
            &format!("SELECT full_name FROM \"{schema}\".bca_residents"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(name, "B");
}

#[test]
fn a_new_optional_field_adds_a_column() {
    for backend in ["sqlite", "postgres"] {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = match backend {
            "sqlite" => SqlSink::sqlite(dir.path().join("p.db").to_str().unwrap()).unwrap(),
            _ => SqlSink::postgres(&pg_url(), &unique("grow_")).unwrap(),
        };
        let t1 = table();
        sink.ensure_table(&t1).unwrap();
        sink.apply(&[row(&t1, "1", 1, Some("A"))], &[]).unwrap();
        let mut t2 = (*t1).clone();
        t2.columns.push(Column {
            name: "phone".into(),
            path: vec!["phone".into()],
            ty: ColType::Text,
        });
        let t2 = Arc::new(t2);
        sink.ensure_table(&t2).unwrap();
        let mut r = row(&t2, "2", 1, Some("B"));
        r.values
            .as_mut()
            .unwrap()
            .push(SqlValue::Text("0901234567".into()));
        let old = row(&t1, "3", 1, Some("C")); // a v1 change after the upgrade still applies
        let done = sink.apply(&[r, old], &[]).unwrap();
        assert_eq!(done.upserts, 2, "{backend}");
        assert_eq!(
            sink.store()
                .table_status("bca_residents")
                .unwrap()
                .unwrap()
                .0,
            3,
            "{backend}"
        );
    }
}

#[test]
fn a_store_written_before_datums_reads_its_json_states_and_replaces_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        // The entity table as an earlier govbus created it.
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE govbus_entities (
                 dataset TEXT NOT NULL, key TEXT NOT NULL, seq INTEGER NOT NULL, state TEXT,
                 PRIMARY KEY (dataset, key));
             INSERT INTO govbus_entities VALUES ('bca.residents', 'a', 7, '{\"v\":1}');",
        )
        .unwrap();
    }
    let store = SqliteStore::open(path.to_str().unwrap()).unwrap();
    let mut tx = store.begin().unwrap();
    assert_eq!(
        tx.entity("bca.residents", "a").unwrap(),
        Some(Entity {
            seq: 7,
            state: Some(State::Json("{\"v\":1}".into()))
        })
    );
    tx.put(&NewChange {
        dataset: "bca.residents",
        key: "a",
        seq: 8,
        state: Some(b"datum"),
        topic: "t",
        value: b"a#8",
    })
    .unwrap();
    tx.commit().unwrap();
    let mut tx = store.begin().unwrap();
    assert_eq!(
        tx.entity("bca.residents", "a").unwrap(),
        Some(Entity {
            seq: 8,
            state: Some(State::Avro(b"datum".to_vec()))
        })
    );
}

/// p52's population report over its residents' table.
fn residents() -> (Arc<TableDef>, Arc<Report>) {
    let catalog = govbus_core::Catalog::builtin();
    let entity = govbus_schema::project::project_schema(
        include_str!("../schemas/bca/residents.v2.avsc"),
        &["ethnicity".into()],
        "citizen_id",
    )
    .unwrap();
    let env = govbus_schema::Schema::parse_str(
        &govbus_schema::envelope::envelope_schema(&entity).unwrap(),
    )
    .unwrap();
    let t = govbus_consumer::table::table_def("bca_residents", "citizen_id", &env).unwrap();
    let spec = catalog.reports_of("p52").next().unwrap();
    let r = Report::compile(spec, &catalog).unwrap();
    (Arc::new(t), Arc::new(r))
}

fn resident(t: &Arc<TableDef>, key: &str, seq: i64, at: Option<(&str, &str)>) -> Row {
    let values = at.map(|(commune, born)| {
        t.columns
            .iter()
            .map(|c| match c.name.as_str() {
                "citizen_id" => SqlValue::Text(key.into()),
                "full_name" => SqlValue::Text("Lê Thị Hoa".into()),
                "sex" => SqlValue::Text("FEMALE".into()),
                "date_of_birth" => SqlValue::Date(born.into()),
                "permanent_address_commune_code" => SqlValue::Text(commune.into()),
                _ => SqlValue::Null,
            })
            .collect()
    });
    Row {
        table: t.clone(),
        key: key.into(),
        seq,
        source_ts: 0,
        op: if values.is_some() {
            govbus_schema::Op::Update
        } else {
            govbus_schema::Op::Delete
        },
        values,
        event_id: format!("{key}-{seq}"),
        after: None,
        record: None,
    }
}

/// A report kept beside the rows: each change moves its row from the cell
/// it was counted in to its new one, in the rows' transaction; a stale
/// change and a re-sent row move nothing; a rebuild from the table gives
/// the same figures.
fn report_scenario(s: &mut SqlSink) {
    let (t, r) = residents();
    let cell =
        |commune: &str, year: &str| -> Cell { vec![commune.into(), "FEMALE".into(), year.into()] };
    let figures = |s: &mut SqlSink| {
        let mut cells = s.store().report_cells(&r.id()).unwrap();
        cells.sort();
        cells
    };
    s.ensure_table(&t).unwrap();
    s.set_reports(vec![r.clone()]);
    s.apply(
        &[
            resident(&t, "a", 1, Some(("21553", "1990-01-01"))),
            resident(&t, "b", 1, Some(("21553", "1990-05-05"))),
            resident(&t, "c", 1, Some(("21583", "1950-01-01"))),
            // Created and moved in the same batch: counted once, where it ends.
            resident(&t, "d", 1, Some(("21553", "2001-01-01"))),
            resident(&t, "d", 2, Some(("21592", "2001-01-01"))),
        ],
        &[],
    )
    .unwrap();
    assert_eq!(
        figures(s),
        [
            (cell("21553", "1990"), 2),
            (cell("21583", "1950"), 1),
            (cell("21592", "2001"), 1)
        ]
    );
    assert_eq!(s.take_touched().len(), 3);
    // A move, a delete, a stale change, a snapshot of what is counted, and
    // a change that leaves the cell as it was.
    let mut again = resident(&t, "b", 1, Some(("21553", "1990-05-05")));
    again.op = govbus_schema::Op::Snapshot;
    s.apply(
        &[
            resident(&t, "a", 2, Some(("21583", "1990-01-01"))),
            resident(&t, "c", 2, None),
            resident(&t, "c", 1, Some(("21592", "1950-01-01"))),
            again,
            resident(&t, "d", 3, Some(("21592", "2001-12-31"))),
        ],
        &[],
    )
    .unwrap();
    assert_eq!(
        figures(s),
        [
            (cell("21553", "1990"), 1),
            (cell("21583", "1990"), 1),
            (cell("21592", "2001"), 1)
        ]
    );
    let mut touched = s.take_touched();
    touched.sort();
    assert_eq!(
        touched,
        [
            (r.id(), cell("21553", "1990"), -1),
            (r.id(), cell("21583", "1950"), -1),
            (r.id(), cell("21583", "1990"), 1),
        ]
    );
    // A deleted row that comes back is counted again.
    s.apply(&[resident(&t, "c", 3, Some(("21553", "1950-01-01")))], &[])
        .unwrap();
    assert_eq!(figures(s)[0], (cell("21553", "1950"), 1));
    // Built from the table: the same figures.
    let (members, kept) = govbus_consumer::build::count_table(&r, &t, s.store())
        .unwrap()
        .unwrap();
    assert!(govbus_consumer::build::compare(&kept, &members)
        .differences
        .is_empty());
    let expected = figures(s);
    s.replace_report(&r.id(), "an earlier definition", &[])
        .unwrap();
    assert!(figures(s).is_empty());
    assert!(govbus_consumer::build::build_if_changed(&r, Some(&t), s).unwrap());
    assert!(!govbus_consumer::build::build_if_changed(&r, Some(&t), s).unwrap());
    assert_eq!(figures(s), expected);
}

#[test]
fn a_report_follows_its_rows_on_sqlite() {
    report_scenario(&mut SqlSink::sqlite(":memory:").unwrap());
}

#[test]
fn a_report_follows_its_rows_on_postgres() {
    report_scenario(&mut SqlSink::postgres(&pg_url(), &unique("report_")).unwrap());
}

#[test]
fn a_report_follows_its_rows_on_postgres_row_by_row() {
    let mut sink = SqlSink::postgres(&pg_url(), &unique("report_")).unwrap();
    sink.set_row_by_row(true);
    report_scenario(&mut sink);
}

/// A table with a column of every type, and a change whose values are
/// the hard ones for COPY's text format: every escape, NULLs, floats
/// without a decimal text, instants at the ends of the years PostgreSQL
/// reads.
fn odd_table() -> Arc<TableDef> {
    Arc::new(TableDef {
        name: "odd".into(),
        key: "id".into(),
        columns: vec![
            col("id", ColType::Text),
            col("note", ColType::Text),
            col("n", ColType::Int),
            col("x", ColType::Float),
            col("ok", ColType::Bool),
            col("born", ColType::Date),
            col("at", ColType::Timestamp),
        ],
    })
}

fn odd_row(t: &Arc<TableDef>, key: &str, seq: i64, i: usize) -> Row {
    const NOTES: [&str; 10] = [
        "tab\there",
        "new\nline",
        "cr\rx",
        "back\\slash",
        "\\.",
        "\\N",
        "",
        "Nguyễn ♥",
        "end\\",
        "a\\tb",
    ];
    const XS: [f64; 7] = [
        0.1,
        -0.0,
        1e300,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        5e-324,
    ];
    const ATS: [i64; 4] = [1_764_230_400_123, -1, 0, 253_402_300_799_999];
    let v = |present: bool, v: SqlValue| if present { v } else { SqlValue::Null };
    let mut r = row(t, key, seq, Some("x"));
    r.values = Some(vec![
        SqlValue::Text(key.into()),
        v(
            !i.is_multiple_of(11),
            SqlValue::Text(NOTES[(i + seq as usize) % NOTES.len()].into()),
        ),
        v(
            !i.is_multiple_of(13),
            SqlValue::Int([i64::MIN, -1, 0, i64::MAX][i % 4].saturating_add(seq)),
        ),
        v(!i.is_multiple_of(17), SqlValue::Float(XS[i % XS.len()])),
        v(!i.is_multiple_of(19), SqlValue::Bool(i.is_multiple_of(2))),
        v(
            !i.is_multiple_of(23),
            SqlValue::Date(["1990-01-31", "0001-01-01", "9999-12-31"][i % 3].into()),
        ),
        v(
            !i.is_multiple_of(29),
            SqlValue::Timestamp(ATS[(i + seq as usize) % ATS.len()]),
        ),
    ]);
    r
}

/// Every row a sink's table `t` holds, in key order, as text.
fn held_rows(s: &mut SqlSink, t: &TableDef) -> Vec<String> {
    let mut out = Vec::new();
    s.store()
        .scan(t, None, &mut |v| out.push(format!("{v:?}")))
        .unwrap();
    out.sort();
    out
}

#[test]
fn a_large_batch_on_postgres_is_copied_and_merged_as_values_would_write_it() {
    let t = odd_table();
    // The same changes: in batches of 300 (COPY of new rows, then a
    // staging table merged), and change by change (VALUES).
    let mut copied = SqlSink::postgres(&pg_url(), &unique("copy_")).unwrap();
    let mut one_by_one = SqlSink::postgres(&pg_url(), &unique("values_")).unwrap();
    one_by_one.set_row_by_row(true);
    for s in [&mut copied, &mut one_by_one] {
        s.ensure_table(&t).unwrap();
    }
    let keys: Vec<String> = (0..300).map(|i| format!("k{i:03}")).collect();
    let creates: Vec<Row> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| odd_row(&t, k, 1, i))
        .collect();
    let mut updates: Vec<Row> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| odd_row(&t, k, 2, i + 1))
        .collect();
    updates[7].values = None; // a delete among them
    for batch in [&creates, &updates] {
        for s in [&mut copied, &mut one_by_one] {
            let done = s.apply(batch, &[]).unwrap();
            assert_eq!(done.upserts + done.deletes, 300);
        }
        let held = held_rows(&mut copied, &t);
        assert_eq!(held, held_rows(&mut one_by_one, &t));
        assert!(held.len() >= 299, "{}", held.len());
    }
    // The copied sequences are known: the creates again are all stale.
    assert_eq!(copied.apply(&creates, &[]).unwrap().stale, 300);
    assert!(held_rows(&mut copied, &t)
        .iter()
        .any(|r| r.contains("tab\\there") && r.contains("NaN")));
}

#[test]
fn a_row_put_in_by_hand_under_a_new_key_is_replaced_change_by_change_on_postgres() {
    let t = odd_table();
    let schema = unique("hand_");
    let mut s = SqlSink::postgres(&pg_url(), &schema).unwrap();
    s.ensure_table(&t).unwrap();
    let mut c = postgres::Client::connect(&pg_url(), postgres::NoTls).unwrap();
    c.batch_execute(&format!(
        "INSERT INTO \"{schema}\".odd (id, note, _govbus_seq, _govbus_source_ts) VALUES ('k005', 'by hand', 0, 0)"
    ))
    .unwrap();
    let batch: Vec<Row> = (0..300)
        .map(|i| odd_row(&t, &format!("k{i:03}"), 1, i))
        .collect();
    // The batch's COPY meets the key: refused as a constraint, nothing applied.
    let e = s.apply(&batch, &[]).unwrap_err();
    assert_eq!(e.refusal(), Some("constraint"), "{e}");
    assert_eq!(held_rows(&mut s, &t).len(), 1);
    // Change by change (as the consumer then applies it), the row is replaced.
    for r in &batch {
        s.apply(std::slice::from_ref(r), &[]).unwrap();
    }
    let note: Option<String> = c
        .query_one(
            &format!("SELECT note FROM \"{schema}\".odd WHERE id = 'k005'"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_ne!(note.as_deref(), Some("by hand"));
    assert_eq!(held_rows(&mut s, &t).len(), 300);
}
