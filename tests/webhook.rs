//! The webhook sink against a real HTTP endpoint on loopback: signed
//! deliveries, and while the endpoint fails or hangs nothing advances.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use govbus_consumer::sink::{signature, Row, Sink, WebhookConfig};
use govbus_consumer::table::{ColType, Column, TableDef};
use govbus_schema::{AvroValue, Op};
use serde_json::Value;

/// A connection, plain or TLS.
trait ReadWrite: Read + Write + Send {}
impl<T: Read + Write + Send> ReadWrite for T {}

/// (signature header, body) of one request.
type Delivery = (Option<String>, Vec<u8>);

/// An HTTP endpoint: answers every request with `status` (0 = never
/// answers), and records (signature header, body) of each request.
struct Endpoint {
    url: String,
    status: Arc<AtomicU16>,
    seen: Arc<Mutex<Vec<Delivery>>>,
}

fn endpoint() -> Endpoint {
    endpoint_with(None)
}

/// The endpoint over HTTPS, with a certificate for 127.0.0.1 from `ca`.
fn https_endpoint(ca: &govbus_kafka::tls::Authority) -> Endpoint {
    let issued = ca.issue("hook", &["127.0.0.1"]).unwrap();
    let mut b =
        openssl::ssl::SslAcceptor::mozilla_intermediate_v5(openssl::ssl::SslMethod::tls()).unwrap();
    b.set_certificate_chain_file(&issued.cert).unwrap();
    b.set_private_key_file(&issued.key, openssl::ssl::SslFiletype::PEM)
        .unwrap();
    endpoint_with(Some(Arc::new(b.build())))
}

fn endpoint_with(tls: Option<Arc<openssl::ssl::SslAcceptor>>) -> Endpoint {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}/hook", listener.local_addr().unwrap());
    let status = Arc::new(AtomicU16::new(200));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (st, sn) = (status.clone(), seen.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let (st, sn, tls) = (st.clone(), sn.clone(), tls.clone());
            std::thread::spawn(move || {
                let stream: Box<dyn ReadWrite> = match tls {
                    // A client that refuses the certificate ends here.
                    Some(a) => match a.accept(stream) {
                        Ok(s) => Box::new(s),
                        Err(_) => return,
                    },
                    None => Box::new(stream),
                };
                let mut reader = BufReader::new(stream);
                let (mut len, mut sig) = (0usize, None);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    if lower.starts_with("x-govbus-signature:") {
                        sig = Some(line["x-govbus-signature:".len()..].trim().to_string());
                    }
                }
                let mut body = vec![0; len];
                let _ = reader.read_exact(&mut body);
                sn.lock().unwrap().push((sig, body));
                match st.load(Ordering::SeqCst) {
                    0 => std::thread::sleep(Duration::from_secs(5)), // never answers in time
                    code => {
                        let _ = write!(
                            reader.get_mut(),
                            "HTTP/1.1 {code} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        );
                    }
                }
            });
        }
    });
    Endpoint { url, status, seen }
}

fn rows(n: i64) -> Vec<Row> {
    let t = Arc::new(TableDef {
        name: "bca_residents".into(),
        key: "citizen_id".into(),
        columns: vec![Column {
            name: "citizen_id".into(),
            path: vec!["citizen_id".into()],
            ty: ColType::Text,
        }],
    });
    (1..=n)
        .map(|seq| Row {
            table: t.clone(),
            key: "052090000001".into(),
            seq,
            source_ts: seq,
            values: None,
            event_id: format!("e{seq}"),
            op: Op::Update,
            after: Some(AvroValue::Record(vec![(
                "citizen_id".into(),
                AvroValue::String("052090000001".into()),
            )])),
            record: None,
        })
        .collect()
}

#[test]
fn webhook_signs_and_never_advances_while_the_endpoint_fails() {
    let ep = endpoint();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("hook.db");
    let mut sink = WebhookConfig {
        state: Some(state.to_str().unwrap().into()),
        secret: Some(govbus_core::secret::Secret::literal("s3cret")),
        timeout_ms: 500,
        ..WebhookConfig::new(&ep.url)
    }
    .build()
    .unwrap();
    let offsets = [("sub.p52.bca.residents.v1".to_string(), 0, 2)];

    // The endpoint answers 500: the batch fails, nothing advances.
    ep.status.store(500, Ordering::SeqCst);
    let e = sink.apply(&rows(2), &offsets).unwrap_err().to_string();
    assert!(e.contains("500"), "{e}");
    assert!(sink.offsets("sub.p52.bca.residents.v1").unwrap().is_empty());

    // The endpoint hangs: a timeout, still nothing advances.
    ep.status.store(0, Ordering::SeqCst);
    assert!(sink.apply(&rows(2), &offsets).is_err());
    assert!(sink.offsets("sub.p52.bca.residents.v1").unwrap().is_empty());

    // Back up: the same batch is delivered, signed, and the offsets advance.
    ep.status.store(200, Ordering::SeqCst);
    let done = sink.apply(&rows(2), &offsets).unwrap();
    assert_eq!(done.upserts, 2);
    assert_eq!(sink.offsets("sub.p52.bca.residents.v1").unwrap()[&0], 2);
    let seen = ep.seen.lock().unwrap();
    let (sig, body) = seen.last().unwrap();
    assert_eq!(
        sig.as_deref(),
        Some(format!("sha256={}", signature(b"s3cret", body)).as_str())
    );
    let doc: Value = serde_json::from_slice(body).unwrap();
    let seqs: Vec<i64> = doc["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2]);
    assert_eq!(doc["changes"][0]["event_id"], "e1");
    drop(seen);

    // A replay of delivered changes is not posted again.
    let before = ep.seen.lock().unwrap().len();
    let again = sink.apply(&rows(2), &offsets).unwrap();
    assert_eq!(again.stale, 2);
    assert_eq!(ep.seen.lock().unwrap().len(), before);
}

#[test]
fn a_webhook_over_https_verifies_the_endpoints_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = govbus_kafka::tls::Authority::create(dir.path().join("ca")).unwrap();
    let ep = https_endpoint(&ca);
    let offsets = [("sub.p52.bca.residents.v1".to_string(), 0, 1)];
    // Trusting the endpoint's CA: delivered.
    let mut sink = WebhookConfig {
        state: Some(dir.path().join("ok.db").to_str().unwrap().into()),
        ca: Some(ca.ca()),
        timeout_ms: 5_000,
        ..WebhookConfig::new(&ep.url)
    }
    .build()
    .unwrap();
    sink.apply(&rows(1), &offsets).unwrap();
    assert_eq!(ep.seen.lock().unwrap().len(), 1);
    // Trusting only the system's roots: the certificate is refused, the
    // batch fails saying why, and nothing is delivered.
    let mut sink = WebhookConfig {
        state: Some(dir.path().join("no.db").to_str().unwrap().into()),
        timeout_ms: 5_000,
        ..WebhookConfig::new(&ep.url)
    }
    .build()
    .unwrap();
    let e = sink.apply(&rows(1), &offsets).unwrap_err().to_string();
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    assert_eq!(
        ep.seen.lock().unwrap().len(),
        1,
        "nothing reached the endpoint"
    );
}
