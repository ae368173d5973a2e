//! A real browser for tests of web pages: Debian's chromium, headless,
//! driven over the DevTools protocol (a page's websocket): open a page,
//! evaluate JavaScript in it, click, and take a screenshot.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

/// A headless chromium, killed when dropped.
#[derive(Debug)]
pub struct Browser {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

/// One page (tab) of the browser.
#[derive(Debug)]
pub struct Page {
    ws: WebSocket<TcpStream>,
    next_id: u64,
}

/// The browser to run: `GOVBUS_CHROMIUM`, else `chromium` on the path.
fn chromium() -> String {
    std::env::var("GOVBUS_CHROMIUM").unwrap_or_else(|_| "chromium".into())
}

impl Browser {
    /// Starts chromium headless with a fresh profile; panics, saying how to
    /// install it, when it cannot.
    pub fn start() -> Self {
        let profile = tempfile::tempdir().expect("profile dir");
        let mut child = Command::new(chromium())
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-port=0",
                "--window-size=1280,900",
                "about:blank",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {}: {e} (install Debian's chromium: apt-get install chromium; .ci/run does)", chromium())
            });
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("DevTools listening on ws://127.0.0.1:").nth(1) {
                    let port: u16 = rest
                        .split('/')
                        .next()
                        .and_then(|p| p.parse().ok())
                        .unwrap_or(0);
                    let _ = tx.send(port);
                }
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("chromium printed its DevTools address");
        Self {
            child,
            port,
            _profile: profile,
        }
    }

    /// Opens `url` in a new tab.
    pub fn open(&self, url: &str) -> Page {
        let target: Value = ureq::put(&format!("http://127.0.0.1:{}/json/new?{url}", self.port))
            .call()
            .expect("DevTools /json/new")
            .into_json()
            .expect("a target");
        let ws_url = target["webSocketDebuggerUrl"]
            .as_str()
            .expect("the page's websocket")
            .to_string();
        let stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connecting to chromium");
        let (ws, _) = tungstenite::client(ws_url.as_str(), stream).expect("the page's websocket");
        let mut page = Page { ws, next_id: 0 };
        page.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": false}),
        );
        page
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Page {
    /// Sends a DevTools command and waits for its answer (events that
    /// arrive meanwhile are dropped).
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.ws
            .send(Message::text(
                json!({"id": id, "method": method, "params": params}).to_string(),
            ))
            .expect("sending to the page");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "{method}: no answer in 30 s");
            let msg = self.ws.read().expect("reading from the page");
            let Message::Text(text) = msg else { continue };
            let v: Value = serde_json::from_str(&text).expect("DevTools JSON");
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {}", v["error"]);
                return v["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression in the page (JSON; null for
    /// undefined).
    pub fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(
            r.get("exceptionDetails").is_none(),
            "`{expression}` threw: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    /// Writes a PNG of the page as it is shown to `path`.
    pub fn screenshot(&mut self, path: &Path) {
        use base64::Engine;
        let r = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("image data"))
            .expect("base64");
        std::fs::write(path, png).expect("writing the screenshot");
    }
}
