//! `govbus up`: the whole bus on one machine, on embedded defaults — broker,
//! registry, router, a demo ministry and two provinces — with a live line
//! each second. Ctrl-C stops every child process.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::nisshi;

struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

/// `N` distinct free ports: the listeners are held until all are picked,
/// so the system cannot hand the same port out twice.
fn free_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    let mut ports = [0u16; N];
    for (port, l) in ports.iter_mut().zip(&listeners) {
        *port = l.local_addr()?.port();
    }
    Ok(ports)
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

struct Stack {
    procs: Vec<Proc>,
}

impl Stack {
    fn spawn(&mut self, name: &'static str, mut cmd: Command, dir: &Path) -> anyhow::Result<()> {
        let log = dir.join("logs").join(format!("{name}.log"));
        let f = std::fs::File::create(&log)?;
        let child = cmd
            .env("GOVBUS_EXIT_WITH_PARENT", "1")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::from(f.try_clone()?))
            .stderr(Stdio::from(f))
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        self.procs.push(Proc { name, child, log });
        Ok(())
    }

    fn push(&mut self, name: &'static str, child: Child, log: PathBuf) {
        self.procs.push(Proc { name, child, log });
    }

    /// The first child that has exited, with its status and log tail.
    fn dead(&mut self) -> Option<String> {
        for p in &mut self.procs {
            if let Ok(Some(status)) = p.child.try_wait() {
                return Some(format!(
                    "{} exited ({status}); last lines of {}:\n{}",
                    p.name,
                    p.log.display(),
                    log_tail(&p.log)
                ));
            }
        }
        None
    }

    fn wait_ready(&mut self, what: &str, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
        let start = Instant::now();
        while !ready() {
            if let Some(d) = self.dead() {
                bail!("{d}");
            }
            if start.elapsed() > Duration::from_secs(90) {
                bail!("{what} not ready after 90 s (logs in .govbus/logs)");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// SIGTERM to all (newest first), then SIGKILL whatever is left after 5 s.
    fn stop(&mut self) {
        for p in self.procs.iter().rev() {
            let _ = kill(Pid::from_raw(p.child.id() as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for p in self.procs.iter_mut().rev() {
            loop {
                match p.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = p.child.kill();
                        let _ = p.child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        self.procs.clear();
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop();
    }
}

fn http_ok(url: &str) -> bool {
    ureq::get(url)
        .timeout(Duration::from_secs(1))
        .call()
        .is_ok()
}

/// Sums of the samples of `metric` by the value of `label` (or "" for all).
fn scrape(port: u16, metric: &str, label: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(r) = ureq::get(&format!("http://127.0.0.1:{port}/metrics"))
        .timeout(Duration::from_millis(500))
        .call()
    else {
        return out;
    };
    let body = r.into_string().unwrap_or_default();
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = series.split('{').next().unwrap_or("");
        if name != metric {
            continue;
        }
        let key = if label.is_empty() {
            String::new()
        } else {
            let pat = format!("{label}=\"");
            match series.find(&pat) {
                Some(i) => series[i + pat.len()..]
                    .split('"')
                    .next()
                    .unwrap_or("")
                    .to_string(),
                None => continue,
            }
        };
        *out.entry(key).or_default() += value.parse::<f64>().unwrap_or(0.0);
    }
    out
}

fn write_config(path: &Path, text: &str) -> anyhow::Result<PathBuf> {
    std::fs::write(path, text)?;
    Ok(path.to_path_buf())
}

/// Runs the stack until Ctrl-C.
pub(crate) async fn run(dir: PathBuf, rate: u32) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || run_blocking(dir, rate)).await?
}

fn run_blocking(dir: PathBuf, rate: u32) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the govbus binary")?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir.join("logs"))?;
    let dir = dir.canonicalize()?;
    nisshi::ensure()?;

    let [broker_port, registry_port, ingest_port, moha_port, m_router, m_producer, m_p52, m_p94, m_registry, m_moha] =
        free_ports()?;
    let bootstrap = format!("127.0.0.1:{broker_port}");
    let registry = format!("http://127.0.0.1:{registry_port}");
    let mut stack = Stack { procs: Vec::new() };
    let stopped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let s = stopped.clone();
        let rt = tokio::runtime::Handle::current();
        rt.spawn(async move {
            crate::agents::shutdown_signal().await;
            s.store(true, std::sync::atomic::Ordering::Relaxed);
        });
    }

    println!("govbus up: working directory {}", dir.display());
    let log = dir.join("logs/broker.log");
    let child = nisshi::start_guarded(
        &exe,
        broker_port,
        "memory://nisshi/",
        &dir,
        std::fs::File::create(&log)?,
    )?;
    stack.push("broker", child, log);
    let addr: SocketAddr = bootstrap.parse()?;
    stack.wait_ready("broker", || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    })?;
    println!(
        "  broker    nisshi {} on {bootstrap} (memory storage)",
        nisshi::VERSION
    );

    // nisshi holds a fetch that finds nothing for the whole wait instead
    // of answering when data arrives (Kafka answers at once), so the
    // embedded stack waits 10 ms instead of 100: p99 ingest → province row
    // 71–92 ms instead of 356 ms at 2,000/s, for ≈ 8 % of a core
    // (docs/BENCHMARKS.md).
    let kafka = format!("[{{section}}.kafka]\nbootstrap = \"{bootstrap}\"\nfetch_wait_ms = 10\n");
    let section = |name: &str, body: String, metrics: u16| {
        format!(
            "metrics_listen = \"127.0.0.1:{metrics}\"\n\n[{name}]\n{body}\n{}",
            kafka.replace("{section}", name)
        )
    };
    let cfg = write_config(
        &dir.join("registry.toml"),
        &section(
            "registry",
            format!("listen = \"127.0.0.1:{registry_port}\"\n"),
            m_registry,
        ),
    )?;
    let mut cmd = Command::new(&exe);
    cmd.arg("registry").arg("--config").arg(&cfg);
    stack.spawn("registry", cmd, &dir)?;
    stack.wait_ready("registry", || http_ok(&format!("{registry}/subjects")))?;
    println!("  registry  {registry}");

    // A ministry's producer (ingest + relay) on `port`; its ingest URL once up.
    let producer = |stack: &mut Stack,
                    name: &'static str,
                    port: u16,
                    metrics: u16|
     -> anyhow::Result<String> {
        let cfg = write_config(
            &dir.join(format!("{name}.toml")),
            &section(
                "producer",
                format!(
                    "agency = \"{name}\"\nsystem = \"demo\"\nregistry = \"{registry}\"\nlisten = \"127.0.0.1:{port}\"\nstore = \"sqlite://{}\"\n",
                    dir.join(format!("{name}-outbox.db")).display()
                ),
                metrics,
            ),
        )?;
        let mut cmd = Command::new(&exe);
        cmd.arg("produce").arg("--config").arg(&cfg);
        stack.spawn(name, cmd, &dir)?;
        let url = format!("http://127.0.0.1:{port}");
        stack.wait_ready(name, || http_ok(&format!("{url}/healthz")))?;
        Ok(url)
    };

    // moha first: bca's contract looks province and commune codes up in
    // moha.admin_units, so the catalog is on the bus before bca starts.
    let moha = producer(&mut stack, "moha", moha_port, m_moha)?;
    let units = crate::demo::post_admin_units(&moha)?;
    stack.wait_ready("moha relay", || {
        scrape(m_moha, "govbus_relay_published_total", "")
            .values()
            .sum::<f64>()
            >= units as f64
    })?;
    println!("  ministry  moha published {units} administrative units (moha.admin_units)");
    let ingest = producer(&mut stack, "bca", ingest_port, m_producer)?;
    println!("  ministry  bca ingest on {ingest}/v1/datasets/bca.residents/changes");

    // The subscriptions (p52, p94), as `govbus subscriptions apply` writes them.
    let steps = tokio::task::block_in_place(|| {
        govbus_router::control::apply(
            &govbus_core::KafkaConfig::new(&bootstrap),
            &govbus_core::Topics::default(),
            &govbus_core::Catalog::builtin(),
            false,
            false,
        )
    })?;
    println!(
        "  subscriptions {} applied to _govbus.subscriptions",
        steps.len()
    );
    let cfg = write_config(
        &dir.join("router.toml"),
        &section("router", format!("registry = \"{registry}\"\n"), m_router),
    )?;
    let mut cmd = Command::new(&exe);
    cmd.arg("route").arg("--config").arg(&cfg);
    stack.spawn("router", cmd, &dir)?;

    for (name, p, port) in [("p52", "p52", m_p52), ("p94", "p94", m_p94)] {
        let cfg = write_config(
            &dir.join(format!("{p}.toml")),
            &section(
                "consumer",
                format!(
                    "subscriber = \"{p}\"\nregistry = \"{registry}\"\nsink = \"sqlite://{}\"\n",
                    dir.join(format!("{p}.db")).display()
                ),
                port,
            ),
        )?;
        let mut cmd = Command::new(&exe);
        cmd.arg("consume").arg("--config").arg(&cfg);
        stack.spawn(if name == "p52" { "p52" } else { "p94" }, cmd, &dir)?;
        println!(
            "  province  {p} → {}",
            dir.join(format!("{p}.db")).display()
        );
    }

    let mut cmd = Command::new(&exe);
    cmd.args(["demo", "--ingest", &ingest, "--rate", &rate.to_string()]);
    stack.spawn("demo", cmd, &dir)?;
    println!("  demo      resident changes at {} per second across 5 provinces (moves and deletes included)", if rate == 0 { "max".to_string() } else { rate.to_string() });
    println!("  metrics   router :{m_router}  producer :{m_producer}  moha :{m_moha}  p52 :{m_p52}  p94 :{m_p94}  registry :{m_registry}");
    println!(
        "  Ctrl-C stops everything. Logs: {}",
        dir.join("logs").display()
    );

    let start = Instant::now();
    let mut last_published = 0u64;
    let mut last_tick = Instant::now();
    while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(1000).saturating_sub(last_tick.elapsed()));
        if let Some(d) = stack.dead() {
            // A Ctrl-C in a terminal reaches every child at once: a child
            // that exits then is stopping, not failing.
            std::thread::sleep(Duration::from_millis(300));
            if stopped.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            stack.stop();
            bail!("{d}");
        }
        let dt = last_tick.elapsed().as_secs_f64();
        last_tick = Instant::now();
        let total = |m: BTreeMap<String, f64>| m.values().map(|v| *v as u64).sum::<u64>();
        let published = total(scrape(m_producer, "govbus_relay_published_total", ""));
        let routed = scrape(m_router, "govbus_router_routed_total", "subscriber");
        let applied = |port| total(scrape(port, "govbus_consumer_applied_total", ""));
        let (a52, a94) = (applied(m_p52), applied(m_p94));
        let (r52, r94) = (
            routed.get("p52").map_or(0, |v| *v as u64),
            routed.get("p94").map_or(0, |v| *v as u64),
        );
        println!(
            "[{:>5}s] published {:>8} ({:>5.0}/s) │ routed p52 {:>7} p94 {:>7} │ applied p52 {:>7} p94 {:>7} │ lag p52 {:>5} p94 {:>5}",
            start.elapsed().as_secs(),
            published,
            published.saturating_sub(last_published) as f64 / dt.max(0.001),
            r52,
            r94,
            a52,
            a94,
            r52.saturating_sub(a52),
            r94.saturating_sub(a94),
        );
        last_published = published;
    }
    println!("govbus up: stopping every process…");
    stack.stop();
    println!("govbus up: stopped.");
    Ok(())
}
