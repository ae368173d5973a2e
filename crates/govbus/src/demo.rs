//! `govbus demo`: a demo ministry posting resident changes to an ingest endpoint.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use govbus_producer::demo::DemoWorld;
use govbus_producer::ChangeRequest;
use serde_json::json;

/// How the demo reaches an ingest: over HTTPS verified against a CA of
/// its own (`--ca`), with the source system's token (`--token-file`, sent
/// as a Bearer token), as a real source system does.
#[derive(Debug, Default, Clone)]
pub(crate) struct Access {
    client: govbus_http::ClientAccess,
}

impl Access {
    /// From `--ca` and `--token-file`.
    pub(crate) fn new(
        ca: Option<std::path::PathBuf>,
        token_file: Option<std::path::PathBuf>,
    ) -> anyhow::Result<Self> {
        let token = token_file
            .map(|f| govbus_core::secret::Secret::load(govbus_core::secret::SecretSource::File(f)))
            .transpose()?;
        Ok(Self {
            client: govbus_http::ClientAccess {
                ca,
                user: None,
                token,
            },
        })
    }

    fn agent(&self, timeout: Duration) -> anyhow::Result<ureq::Agent> {
        Ok(self
            .client
            .agent(ureq::AgentBuilder::new().timeout(timeout))?)
    }

    fn post(&self, agent: &ureq::Agent, url: &str) -> ureq::Request {
        let req = agent.post(url).set("content-type", "application/json");
        match self.client.authorization() {
            Some(a) => req.set("authorization", &a),
            None => req,
        }
    }
}

/// Posts the whole real administrative map with its history (10,825
/// codes: every province, district and commune before the reform and
/// today's 34 provinces and 3,321 communes, as `govbus admin-units load`
/// publishes them) to moha's ingest endpoint, in batches of 1,000 (each
/// stored whole or not at all); returns how many rows.
pub(crate) fn post_admin_units(ingest: &str, access: &Access) -> anyhow::Result<usize> {
    let url = format!(
        "{}/v1/datasets/moha.admin_units/changes/batch",
        ingest.trim_end_matches('/')
    );
    let rows: Vec<_> = govbus_core::admin_map::reference().rows().collect();
    let agent = access.agent(Duration::from_secs(60))?;
    for chunk in rows.chunks(1000) {
        let changes: Vec<_> = chunk
            .iter()
            .map(|u| json!({"op": "upsert", "data": u}))
            .collect();
        let body = json!({ "changes": changes }).to_string();
        let mut tries = 0;
        loop {
            match access.post(&agent, &url).send_string(&body) {
                Ok(_) => break,
                Err(ureq::Error::Status(s, r)) if s < 500 => bail!(
                    "moha ingest refused the administrative units ({s}): {}",
                    r.into_string().unwrap_or_default()
                ),
                Err(e) if tries < 50 => {
                    tries += 1;
                    tracing::warn!(error = %e, "moha ingest unavailable; retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e).context("posting admin units to moha's ingest"),
            }
        }
    }
    Ok(rows.len())
}

/// Posts changes at `rate` per second (0 = as fast as possible), `count` in all (0 = forever).
pub(crate) async fn run(
    ingest: String,
    rate: u32,
    count: u64,
    seed: u64,
    access: Access,
) -> anyhow::Result<()> {
    let url = format!(
        "{}/v1/datasets/bca.residents/changes",
        ingest.trim_end_matches('/')
    );
    let stop = crate::agents::stop_flag();
    let s = stop.clone();
    crate::agents::run_until_stopped(s, move || -> anyhow::Result<()> {
        let agent = access.agent(Duration::from_secs(30))?;
        let mut world = DemoWorld::new(seed);
        let start = Instant::now();
        let mut sent = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) && (count == 0 || sent < count) {
            let body = match world.next_change() {
                ChangeRequest::Upsert(r) => json!({"op": "upsert", "data": r}),
                ChangeRequest::Delete { key } => json!({"op": "delete", "key": key}),
            };
            let mut tries = 0;
            loop {
                match access.post(&agent, &url).send_string(&body.to_string()) {
                    Ok(_) => break,
                    Err(ureq::Error::Status(s, r)) if s < 500 => {
                        bail!(
                            "ingest refused a demo change ({s}): {}",
                            r.into_string().unwrap_or_default()
                        )
                    }
                    Err(e) if tries < 50 && !stop.load(std::sync::atomic::Ordering::Relaxed) => {
                        tries += 1;
                        tracing::warn!(error = %e, "ingest unavailable; retrying");
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    Err(e) => return Err(e).context("posting to the ingest endpoint"),
                }
            }
            sent += 1;
            if rate > 0 {
                let due = start + Duration::from_secs_f64(sent as f64 / rate as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        }
        Ok(())
    })
    .await
}
