//! `govbus-bench quiet`: what the bus costs at the loads a register really
//! carries. For each rate, `govbus up --rate R` (the release binary: broker,
//! registry, moha, bca with its demo source, router, p52, p92, dashboard)
//! runs until changes flow; then, over a window, the CPU each process used
//! (utime + stime from `/proc/PID/stat`) and the changes bca's relay
//! published in it (`govbus_relay_published_total`). Rate 0 is an idle bus:
//! the demo source is paused (SIGSTOP) before the window.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The release govbus binary next to this one.
fn govbus_exe() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let exe = me.with_file_name("govbus");
    if !exe.exists() {
        bail!(
            "{} is missing: cargo build --release -p govbus first",
            exe.display()
        );
    }
    Ok(exe)
}

/// Clock ticks a process has run (user + system).
fn ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command may hold spaces: fields are counted after its ')'.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Every process of the stack under `dir`, by a short name: the broker's
/// JVM, and each agent by its command and config.
fn processes(dir: &Path, up: u32) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    out.insert("up (live line)".to_string(), up);
    let dir = dir.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == up {
            continue;
        }
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let line = args.join(" ");
        let ours = line.contains(&dir);
        let demo = line.contains("govbus demo") && line.contains("--ingest");
        if !(ours || demo) {
            continue;
        }
        let name = if line.contains("kafka.Kafka") && args[0].ends_with("java") {
            "Kafka broker".to_string()
        } else if args.first().is_some_and(|a| a.ends_with("govbus")) {
            let role = args.get(1).cloned().unwrap_or_default();
            let cfg = args
                .iter()
                .skip_while(|a| *a != "--config")
                .nth(1)
                .and_then(|c| Path::new(c).file_stem())
                .map(|s| s.to_string_lossy().into_owned());
            match (role.as_str(), cfg) {
                ("demo", _) => "demo source (load)".to_string(),
                ("dashboard", _) => "dashboard".to_string(),
                (r, Some(c)) => format!("{r} {c}"),
                (r, None) => r.to_string(),
            }
        } else {
            continue;
        };
        out.insert(name, pid);
    }
    out
}

/// The sum of `metric`'s samples on `port`'s /metrics.
fn metric(port: u16, name: &str) -> f64 {
    let Ok(r) = ureq::get(&format!("http://127.0.0.1:{port}/metrics"))
        .timeout(Duration::from_secs(2))
        .call()
    else {
        return 0.0;
    };
    r.into_string()
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// One rate's figures.
struct Measured {
    rate: u32,
    window: f64,
    changes: f64,
    cpu: BTreeMap<String, f64>,
    /// Requests the broker served in the window, by API (Kafka's own
    /// `kafka.network:type=RequestMetrics,name=RequestsPerSec` counts).
    requests: BTreeMap<String, f64>,
}

/// The broker's request counts by API, read through its JMX with Kafka's
/// JmxTool (empty, with a warning, when they cannot be read).
fn requests(port: u16) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let dist = match govbus_kafka::Dist::at(govbus_kafka::Dist::default_home()) {
        Some(d) => d,
        None => {
            eprintln!("quiet: no Kafka distribution to read the broker's request metrics with");
            return out;
        }
    };
    let url = format!("service:jmx:rmi:///jndi/rmi://127.0.0.1:{port}/jmxrmi");
    let text = match dist.tool_text(
        "org.apache.kafka.tools.JmxTool",
        &[
            "--jmx-url",
            &url,
            "--object-name",
            "kafka.network:type=RequestMetrics,name=RequestsPerSec,*",
            "--attributes",
            "Count",
            "--one-time",
            "true",
            "--report-format",
            "tsv",
        ],
    ) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("quiet: cannot read the broker's request metrics: {e}");
            return out;
        }
    };
    // `kafka.network:type=…,request=Produce,version=10:Count<TAB>4731`.
    for line in text.lines() {
        let Some((name, count)) = line.split_once('\t') else {
            continue;
        };
        let Some(api) = name.split(',').find_map(|kv| kv.strip_prefix("request=")) else {
            continue;
        };
        // `Fetch` counts consumers' and followers' fetches together with
        // `FetchConsumer`; the verification requests are the broker's own.
        *out.entry(api.to_string()).or_default() += count.trim().parse::<f64>().unwrap_or(0.0);
    }
    out
}

fn measure(exe: &Path, rate: u32, warmup: u64, seconds: u64) -> anyhow::Result<Measured> {
    let dir = tempfile::Builder::new().prefix("govbus-quiet-").tempdir()?;
    let up_dir = dir.path().join("up");
    let jmx = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child: Child = Command::new(exe)
        .env("GOVBUS_KAFKA_JMX_PORT", jmx.to_string())
        .args(["up", "--stall-secs", "30", "--rate"])
        // Idle: the demo runs at 200/s until it is paused.
        .arg(if rate == 0 { 200 } else { rate }.to_string())
        .arg("--dir")
        .arg(&up_dir)
        .env("GOVBUS_EXIT_WITH_PARENT", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting govbus up")?;
    let stop = Guard(&mut child);
    let out = stop.0.stdout.take().context("up's output")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    // Its metrics ports, from its `metrics` line.
    let start = Instant::now();
    let mut ports: BTreeMap<String, u16> = BTreeMap::new();
    while ports.is_empty() {
        if start.elapsed() > Duration::from_secs(240) {
            bail!("govbus up printed no metrics line in 240 s");
        }
        let Ok(l) = rx.recv_timeout(Duration::from_secs(1)) else {
            continue;
        };
        if let Some(rest) = l.trim_start().strip_prefix("metrics") {
            let words: Vec<&str> = rest.split_whitespace().collect();
            for w in words.chunks(2) {
                if let [name, port] = w {
                    if let Ok(p) = port.trim_start_matches(':').parse() {
                        ports.insert(name.to_string(), p);
                    }
                }
            }
        }
    }
    std::thread::spawn(move || while rx.recv().is_ok() {});
    let bca = *ports.get("bca").context("bca's metrics port")?;
    // A first read of the broker's JMX makes its JVM compile the code that
    // serves it (seconds of CPU in the following seconds): paid during the
    // warm-up, twice, not in the window.
    for _ in 0..2 {
        requests(jmx);
        std::thread::sleep(Duration::from_secs(warmup / 2));
    }
    if rate == 0 {
        let paused = Command::new("pkill")
            .args(["-STOP", "-f", "govbus demo --ingest"])
            .status()?;
        if !paused.success() {
            bail!("no demo source to pause: the idle window would not be idle");
        }
        // Idle once the relay has published nothing for 10 s (what was
        // accepted before the pause is on its way until then).
        let deadline = Instant::now() + Duration::from_secs(120);
        let (mut last, mut still) = (metric(bca, "govbus_relay_published_total"), Instant::now());
        while still.elapsed() < Duration::from_secs(10) {
            if Instant::now() > deadline {
                bail!("the relay kept publishing for 120 s after the demo source was paused");
            }
            std::thread::sleep(Duration::from_secs(1));
            let now = metric(bca, "govbus_relay_published_total");
            if now != last {
                (last, still) = (now, Instant::now());
            }
        }
    }
    // The broker's request counts are read with a JmxTool run (a JVM
    // attaching to the broker's JMX), which costs the broker CPU itself:
    // the CPU window lies between the two reads, and the counts are scaled
    // to it from the time between the reads' starts.
    let procs = processes(&up_dir, stop.0.id());
    let read_at = Instant::now();
    let served = requests(jmx);
    let before: BTreeMap<&String, u64> = procs
        .iter()
        .filter_map(|(n, p)| Some((n, ticks(*p)?)))
        .collect();
    let published = metric(bca, "govbus_relay_published_total");
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let hz = 100.0; // USER_HZ on Linux
    let cpu = procs
        .iter()
        .filter_map(|(n, p)| Some((n.clone(), (ticks(*p)? - before.get(n)?) as f64 / hz)))
        .collect();
    let window = t.elapsed().as_secs_f64();
    let changes = metric(bca, "govbus_relay_published_total") - published;
    if rate == 0 && changes != 0.0 {
        bail!("{changes} changes were published in the idle window (an agent restarted, or the demo source was resumed): measure again");
    }
    let between_reads = read_at.elapsed().as_secs_f64();
    let requests: BTreeMap<String, f64> = requests(jmx)
        .into_iter()
        .map(|(api, n)| {
            let before = served.get(&api).copied().unwrap_or(0.0);
            (api, (n - before) * window / between_reads)
        })
        .filter(|(_, n)| *n > 0.0)
        .collect();
    if rate == 0 {
        let _ = Command::new("pkill")
            .args(["-CONT", "-f", "govbus demo --ingest"])
            .status();
    }
    drop(stop);
    Ok(Measured {
        rate,
        window,
        changes,
        cpu,
        requests,
    })
}

/// Kills `up` (and so its stack) when dropped.
struct Guard<'a>(&'a mut Child);

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A table's header: `title`, then a column per rate measured.
fn header(title: &str, all: &[Measured]) {
    print!("| {title} |");
    for m in all {
        print!(" {}/s |", m.rate);
    }
    println!();
    println!("|---|{}", "---|".repeat(all.len()));
}

/// `govbus-bench quiet`.
pub(crate) fn run(rates: &[u32], warmup: u64, seconds: u64) -> anyhow::Result<()> {
    let exe = govbus_exe()?;
    let mut all = Vec::new();
    for &rate in rates {
        eprintln!("quiet: rate {rate}/s: warm-up {warmup} s, then {seconds} s measured");
        let m = measure(&exe, rate, warmup, seconds)?;
        eprintln!(
            "quiet: rate {rate}/s: {:.0} changes published in {:.1} s",
            m.changes, m.window
        );
        all.push(m);
    }
    // One table: a row per process, a column per rate (% of a core, and
    // CPU per published change where changes flowed).
    let names: std::collections::BTreeSet<&String> =
        all.iter().flat_map(|m| m.cpu.keys()).collect();
    header("process", &all);
    let cell = |m: &Measured, cpu: f64| {
        let pct = 100.0 * cpu / m.window;
        if m.changes > 0.0 && m.rate > 0 {
            format!(" {pct:.1} % ({:.0} µs/change) |", 1e6 * cpu / m.changes)
        } else {
            format!(" {pct:.1} % |")
        }
    };
    for n in &names {
        print!("| {n} |");
        for m in &all {
            match m.cpu.get(*n) {
                Some(c) => print!("{}", cell(m, *c)),
                None => print!(" — |"),
            }
        }
        println!();
    }
    let agents = |m: &Measured| -> f64 {
        m.cpu
            .iter()
            .filter(|(n, _)| *n != "Kafka broker" && *n != "demo source (load)")
            .map(|(_, c)| c)
            .sum()
    };
    print!("| **all agents** (not the broker, not the load) |");
    for m in &all {
        print!("{}", cell(m, agents(m)));
    }
    println!();
    print!("| changes published in the window |");
    for m in &all {
        print!(" {:.0} in {:.0} s |", m.changes, m.window);
    }
    println!();
    // The broker's requests per second by API, the same windows (EndTxn:
    // one per transaction committed or aborted).
    println!();
    header("broker requests/s by API", &all);
    let apis: std::collections::BTreeSet<&String> =
        all.iter().flat_map(|m| m.requests.keys()).collect();
    let total = |m: &Measured| m.requests.values().sum::<f64>() / m.window;
    for api in apis {
        print!("| {api} |");
        for m in &all {
            let n = m.requests.get(api).copied().unwrap_or(0.0) / m.window;
            print!(" {n:.1} |");
        }
        println!();
    }
    print!("| **all requests** |");
    for m in &all {
        print!(" {:.1} |", total(m));
    }
    println!();
    Ok(())
}
