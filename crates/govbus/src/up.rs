//! `govbus up`: the whole bus on one machine, on embedded defaults — broker
//! (Apache Kafka from its jars, or nisshi, or a cluster you name), registry,
//! router, the demo ministries and two provinces — with a live line each
//! second showing the backlog at each hop. Ctrl-C stops every child process.
//!
//! One file because it is one procedure, read top to bottom: start each
//! service in turn (with what the next one needs), then supervise them and
//! print the live line; its pieces are not used elsewhere.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::nisshi;

struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    /// How to start it again (None: nothing restarts it, its exit is fatal).
    cmd: Option<Command>,
    /// Times restarted so far.
    restarts: u32,
    /// When it exited and is to be started again.
    due: Option<Instant>,
}

/// `N` distinct free ports below the ephemeral range, as
/// [`govbus_kafka::free_ports`].
fn free_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    let list = govbus_kafka::free_ports(N)?;
    let mut ports = [0u16; N];
    ports.copy_from_slice(&list);
    Ok(ports)
}

/// Starts `cmd` with its output appended to `log`.
fn start_logged(cmd: &mut Command, log: &Path) -> std::io::Result<Child> {
    let f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log)?;
    cmd.stdout(Stdio::from(f.try_clone()?))
        .stderr(Stdio::from(f))
        .spawn()
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
    fn spawn(&mut self, name: &str, mut cmd: Command, dir: &Path) -> anyhow::Result<()> {
        let log = dir.join("logs").join(format!("{name}.log"));
        std::fs::File::create(&log)?;
        cmd.env("GOVBUS_EXIT_WITH_PARENT", "1")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null());
        let child = start_logged(&mut cmd, &log).with_context(|| format!("starting {name}"))?;
        self.procs.push(Proc {
            name: name.to_string(),
            child,
            log,
            cmd: Some(cmd),
            restarts: 0,
            due: None,
        });
        Ok(())
    }

    fn push(&mut self, name: &str, child: Child, log: PathBuf) {
        self.procs.push(Proc {
            name: name.to_string(),
            child,
            log,
            cmd: None,
            restarts: 0,
            due: None,
        });
    }

    /// Supervises as systemd or Kubernetes would: an agent that exited is
    /// started again after a back-off (1 s, doubling to 30 s), its log
    /// appended to. Answers what to show on the live line (agents
    /// restarted, or waiting to be), or an error for a process nothing
    /// restarts (the broker).
    fn supervise(&mut self) -> Result<String, String> {
        let now = Instant::now();
        let mut shown = Vec::new();
        for p in &mut self.procs {
            if p.due.is_none() {
                if let Ok(Some(status)) = p.child.try_wait() {
                    if p.cmd.is_none() {
                        return Err(format!(
                            "{} exited ({status}); last lines of {}:\n{}",
                            p.name,
                            p.log.display(),
                            log_tail(&p.log)
                        ));
                    }
                    let wait =
                        Duration::from_secs(1 << p.restarts.min(5)).min(Duration::from_secs(30));
                    println!(
                        "govbus up: {} exited ({status}); starting it again in {} s. Last lines of {}:\n{}",
                        p.name,
                        wait.as_secs(),
                        p.log.display(),
                        log_tail(&p.log)
                    );
                    p.due = Some(now + wait);
                }
            }
            if let (Some(due), Some(cmd)) = (p.due, p.cmd.as_mut()) {
                if due <= now {
                    match start_logged(cmd, &p.log) {
                        Ok(child) => {
                            p.child = child;
                            p.due = None;
                            p.restarts += 1;
                        }
                        Err(e) => {
                            println!("govbus up: {} does not start: {e}", p.name);
                            p.due = Some(now + Duration::from_secs(30));
                        }
                    }
                }
            }
            match (p.due, p.restarts) {
                (Some(_), _) => shown.push(format!("{} DOWN", p.name)),
                (None, 0) => {}
                (None, n) => shown.push(format!("{} restarted ×{n}", p.name)),
            }
        }
        Ok(shown.join(", "))
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

/// Whether the agent whose operations endpoint is on `port` answers
/// `/readyz` with 200.
fn readyz(port: u16) -> bool {
    http_ok(&format!("http://127.0.0.1:{port}/readyz"), None)
}

/// Whether `url` answers 2xx (with `token` as a Bearer token, if given).
fn http_ok(url: &str, token: Option<&str>) -> bool {
    let req = ureq::get(url).timeout(Duration::from_secs(1));
    match token {
        Some(t) => req.set("authorization", &format!("Bearer {t}")),
        None => req,
    }
    .call()
    .is_ok()
}

/// Sums of the samples of `metric` by the value of `label` (or "" for all).
fn scrape(port: u16, metric: &str, label: &str) -> BTreeMap<String, f64> {
    samples(&metrics_of(port).unwrap_or_default(), metric, label)
}

/// An agent's `/metrics` page (None: it did not answer).
fn metrics_of(port: u16) -> Option<String> {
    ureq::get(&format!("http://127.0.0.1:{port}/metrics"))
        .timeout(Duration::from_millis(500))
        .call()
        .ok()?
        .into_string()
        .ok()
}

/// Sums of the samples of `metric` in a `/metrics` page by the value of
/// `label` (or "" for all).
fn samples(body: &str, metric: &str, label: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
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

/// The sum of every sample of `metric` in a `/metrics` page.
fn total(body: &str, metric: &str) -> u64 {
    samples(body, metric, "").values().sum::<f64>().max(0.0) as u64
}

/// What an agent is: its subcommand and its config section.
#[derive(Debug, Clone, Copy)]
enum Role {
    Registry,
    Producer,
    Router,
    Consumer,
}

impl Role {
    fn command(self) -> &'static str {
        match self {
            Role::Registry => "registry",
            Role::Producer => "produce",
            Role::Router => "route",
            Role::Consumer => "consume",
        }
    }

    fn section(self) -> &'static str {
        match self {
            Role::Registry => "registry",
            Role::Producer => "producer",
            Role::Router => "router",
            Role::Consumer => "consumer",
        }
    }
}

/// One agent `up` runs: its name, role, config file's text and health
/// port.
struct Service {
    name: String,
    role: Role,
    config: String,
    metrics: u16,
}

impl Service {
    /// Writes its config to `<dir>/<name>.toml`, starts it under the
    /// stack's supervision and waits until it says it is ready.
    fn start(&self, stack: &mut Stack, exe: &Path, dir: &Path) -> anyhow::Result<()> {
        let cfg = dir.join(format!("{}.toml", self.name));
        std::fs::write(&cfg, &self.config)?;
        let mut cmd = Command::new(exe);
        cmd.arg(self.role.command()).arg("--config").arg(&cfg);
        stack.spawn(&self.name, cmd, dir)?;
        let port = self.metrics;
        stack.wait_ready(&self.name, || readyz(port))
    }
}

/// Which broker `govbus up` runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BrokerChoice {
    /// Apache Kafka from its jars (one KRaft node).
    Kafka,
    /// nisshi, the development broker.
    Nisshi,
    /// A running cluster at `host:port[,host:port]`.
    At(String),
}

impl std::str::FromStr for BrokerChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kafka" => Ok(Self::Kafka),
            "nisshi" => Ok(Self::Nisshi),
            other
                if other.split(',').all(|a| {
                    a.rsplit_once(':')
                        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
                }) =>
            {
                Ok(Self::At(other.to_string()))
            }
            other => Err(format!(
                "{other:?} is not a broker: say kafka, nisshi, or HOST:PORT of a running cluster"
            )),
        }
    }
}

/// The broker `up` runs on, kept alive for as long as the stack runs.
enum Running {
    Kafka(Box<govbus_kafka::Cluster>),
    Nisshi,
    External,
}

/// Starts (or names) the broker; returns its bootstrap and a line saying
/// what it is.
fn start_broker(
    choice: Option<BrokerChoice>,
    exe: &Path,
    dir: &Path,
    stack: &mut Stack,
    secure: Option<&[String]>,
    security: Option<govbus_kafka_client::KafkaSecurity>,
) -> anyhow::Result<(String, Running, String, Option<Credentials>)> {
    let choice = match choice {
        Some(c) => c,
        None => match govbus_kafka::Dist::available() {
            Ok(()) => BrokerChoice::Kafka,
            Err(missing) => {
                println!("govbus up: {missing}; running on nisshi, the development broker, instead (--broker kafka|nisshi|HOST:PORT chooses)");
                BrokerChoice::Nisshi
            }
        },
    };
    match choice {
        BrokerChoice::Kafka => {
            if govbus_kafka::Dist::at(govbus_kafka::Dist::default_home()).is_none() {
                println!(
                    "govbus up: installing Apache Kafka {}'s jars from Maven Central into {} (once; Maven's progress follows)",
                    govbus_kafka::VERSION,
                    govbus_kafka::Dist::default_home().display()
                );
            }
            let dist = govbus_kafka::Dist::ensure(govbus_kafka::Progress::Shown)?;
            let t = Instant::now();
            let mut cfg = govbus_kafka::ClusterConfig::new(1, dir.join("kafka"))
                .set("auto.create.topics.enable", "false");
            let creds = if let Some(names) = secure {
                // A CA of its own, and a random password per user, in files
                // only this user may read.
                let ca = govbus_kafka::tls::Authority::create(dir.join("tls"))?;
                let secrets = dir.join("secrets");
                std::fs::create_dir_all(&secrets)?;
                let mut users = Vec::new();
                for u in names.iter().map(String::as_str).chain(["admin"]) {
                    let pw = govbus_http::new_token()?;
                    let f = secrets.join(u);
                    govbus_core::secret::write_private(&f, pw.as_bytes())?;
                    users.push((u.to_string(), pw));
                }
                let (_, admin) = users.pop().expect("admin, pushed last");
                cfg = cfg.secured(govbus_kafka::Secured::new(&ca, &admin, users)?);
                let server = ca.issue("govbus-up", &["127.0.0.1", "localhost"])?;
                let creds = Credentials {
                    kafka_ca: Some(ca.ca()),
                    http_ca: ca.ca(),
                    admin: govbus_kafka_client::KafkaSecurity::scram(
                        ca.ca(),
                        "admin",
                        govbus_core::secret::Secret::load(
                            govbus_core::secret::SecretSource::File(secrets.join("admin")),
                        )?,
                    ),
                    secrets,
                    server,
                };
                creds.write_tokens(names)?;
                Some(creds)
            } else {
                None
            };
            let cluster = govbus_kafka::Cluster::start(&dist, cfg)?;
            let bootstrap = cluster.bootstrap();
            let line = format!(
                "Apache Kafka {} on {bootstrap} (one KRaft node{}, started in {:.1} s; log {})",
                govbus_kafka::VERSION,
                if secure.is_some() {
                    ": SASL_SSL only, SCRAM-SHA-512, ACLs enforced"
                } else {
                    ""
                },
                t.elapsed().as_secs_f64(),
                cluster.log(0).display()
            );
            Ok((bootstrap, Running::Kafka(Box::new(cluster)), line, creds))
        }
        BrokerChoice::Nisshi => {
            nisshi::ensure()?;
            let [port] = free_ports()?;
            let log = dir.join("logs/broker.log");
            let child = nisshi::start_guarded(
                exe,
                port,
                "memory://nisshi/",
                dir,
                std::fs::File::create(&log)?,
            )?;
            stack.push("broker", child, log);
            let bootstrap = format!("127.0.0.1:{port}");
            let addr: SocketAddr = bootstrap.parse()?;
            stack.wait_ready("broker", || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            })?;
            let line = format!(
                "nisshi {} on {bootstrap} (memory storage; the development broker)",
                nisshi::VERSION
            );
            Ok((bootstrap, Running::Nisshi, line, None))
        }
        BrokerChoice::At(bootstrap) => match (security, secure) {
            (Some(admin), Some(names)) => {
                let creds = Credentials::beside(&bootstrap, admin, names, dir)?;
                let line = format!(
                    "the cluster at {bootstrap} (SASL_SSL as {}; {} SCRAM-SHA-512 users created or reset, one per agent, passwords in {})",
                    creds.admin.username.as_deref().unwrap_or("?"),
                    names.len(),
                    creds.secrets.display()
                );
                Ok((bootstrap, Running::External, line, Some(creds)))
            }
            _ => {
                let line = format!("the cluster at {bootstrap}");
                Ok((bootstrap, Running::External, line, None))
            }
        },
    }
}

/// What `govbus up` runs.
pub(crate) struct UpArgs {
    /// Working directory (cleared at start).
    pub(crate) dir: PathBuf,
    /// Demo changes per second.
    pub(crate) rate: u32,
    /// The broker.
    pub(crate) broker: Option<BrokerChoice>,
    /// Seconds a hop may hold a backlog without moving.
    pub(crate) stall_secs: u64,
    /// TLS, SCRAM and ACLs.
    pub(crate) secure: bool,
    /// A secured cluster's `[kafka.security]` for a super user (with
    /// `--broker HOST:PORT`).
    pub(crate) kafka_security: Option<PathBuf>,
    /// A deploy directory (datasets, subscriptions, reports); none: the
    /// repository's, compiled in.
    pub(crate) deploy: Option<PathBuf>,
    /// The schemas directory (default: `<deploy>/../schemas`).
    pub(crate) schemas: Option<PathBuf>,
}

/// Runs the stack until Ctrl-C.
pub(crate) async fn run(args: UpArgs) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || run_blocking(args)).await?
}

/// The files `up` runs: the catalog, and the directories its agents are
/// told (none: the catalog compiled in).
struct Files {
    catalog: govbus_core::Catalog,
    dirs: Option<(PathBuf, PathBuf)>,
}

impl Files {
    fn load(deploy: Option<PathBuf>, schemas: Option<PathBuf>) -> anyhow::Result<Self> {
        let Some(deploy) = deploy else {
            if schemas.is_some() {
                bail!("--schemas goes with --deploy");
            }
            return Ok(Self {
                catalog: govbus_core::Catalog::builtin(),
                dirs: None,
            });
        };
        let schemas = schemas.unwrap_or_else(|| deploy.join("..").join("schemas"));
        let canon = |p: &Path| {
            p.canonicalize()
                .with_context(|| format!("{} is not a directory here", p.display()))
        };
        let (deploy, schemas) = (canon(&deploy)?, canon(&schemas)?);
        let catalog = govbus_core::Catalog::load(&deploy, &schemas).with_context(|| {
            format!(
                "loading {} (`govbus check {} --schemas {}` lists every problem)",
                deploy.display(),
                deploy.display(),
                schemas.display()
            )
        })?;
        Ok(Self {
            catalog,
            dirs: Some((deploy, schemas)),
        })
    }

    /// The lines that point an agent's config at these files.
    fn config_lines(&self) -> String {
        match &self.dirs {
            Some((d, s)) => format!(
                "deploy = {}\nschemas = {}\n",
                toml_string(&d.display().to_string()),
                toml_string(&s.display().to_string())
            ),
            None => String::new(),
        }
    }

    /// The agencies that own a dataset, those whose datasets others look
    /// codes up in first (moha before bca: bca's producer reads
    /// moha.admin_units to its end before it accepts a change).
    fn producers(&self) -> Vec<String> {
        let looked_up: std::collections::BTreeSet<&str> = self
            .catalog
            .datasets
            .values()
            .flat_map(|d| d.file.lookups.values().map(|id| id.owner.as_str()))
            .collect();
        let mut owners: Vec<String> = self
            .catalog
            .datasets
            .keys()
            .map(|id| id.owner.clone())
            .collect();
        owners.dedup();
        owners.sort_by_key(|o| (!looked_up.contains(o.as_str()), o.clone()));
        owners
    }

    /// Every subscriber, once, in name order.
    fn provinces(&self) -> Vec<String> {
        let mut s: Vec<String> = self
            .catalog
            .subscriptions
            .iter()
            .map(|s| s.file.subscriber.clone())
            .collect();
        s.sort();
        s.dedup();
        s
    }

    /// Whether the catalog declares `owner.name`.
    fn has(&self, owner: &str, name: &str) -> bool {
        self.catalog
            .datasets
            .contains_key(&govbus_core::DatasetId::new(owner, name))
    }
}

/// `text` as a TOML basic string (JSON's string escapes are TOML's).
fn toml_string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// A path as a TOML basic string.
fn toml_path(p: &Path) -> String {
    toml_string(&p.display().to_string())
}

/// The users of `govbus up --secure`: each agency's and subscriber's, the
/// router's, the registry's and the operator's.
fn users(files: &Files) -> Vec<String> {
    let mut u: Vec<String> = ["router", "registry", "ops"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    u.extend(files.producers());
    u.extend(files.provinces());
    u
}

/// What `--secure` hands out: a CA of its own, each user's Kafka password
/// file, the certificate the registry and every ingest serve HTTPS with,
/// and the tokens: each user's for the registry, the demo source system's
/// for the ingests, the dashboard's.
struct Credentials {
    /// The CA that signed the brokers' certificates (none: the system's).
    kafka_ca: Option<PathBuf>,
    /// The CA that signed the registry's and the ingests' certificate.
    http_ca: PathBuf,
    /// Who creates the users and applies the ACLs (a super user).
    admin: govbus_kafka_client::KafkaSecurity,
    secrets: PathBuf,
    server: govbus_kafka::tls::Issued,
}

/// The source system's name at every ingest (the demo's).
const SOURCE_SYSTEM: &str = "demo";

impl Credentials {
    /// Beside a secured cluster up did not start: as `admin` (its
    /// `[kafka.security]`), a SCRAM-SHA-512 user per agent with a random
    /// password (created, or its password reset), and a CA of up's own
    /// for HTTPS.
    fn beside(
        bootstrap: &str,
        admin: govbus_kafka_client::KafkaSecurity,
        names: &[String],
        dir: &Path,
    ) -> anyhow::Result<Self> {
        if admin.protocol != govbus_kafka_client::Protocol::SaslSsl || admin.username.is_none() {
            bail!("--kafka-security: up creates a SCRAM user per agent, so it needs protocol = \"sasl_ssl\" and a username (a super user's, such as admin)");
        }
        let as_admin =
            govbus_kafka_client::KafkaConfig::new(bootstrap).with_security(admin.clone());
        govbus_kafka_client::connect(&as_admin, Duration::from_secs(30))
            .with_context(|| format!("connecting to {bootstrap} as the --kafka-security user"))?;
        let http = govbus_kafka::tls::Authority::create(dir.join("tls"))?;
        let secrets = dir.join("secrets");
        std::fs::create_dir_all(&secrets)?;
        let mut users = Vec::new();
        for u in names {
            let pw = govbus_http::new_token()?;
            govbus_core::secret::write_private(&secrets.join(u), pw.as_bytes())?;
            users.push((u.clone(), pw));
        }
        govbus_kafka_client::acl::AclAdmin::new(&as_admin)?
            .upsert_scram_users(&users)
            .context(
                "creating the agents' SCRAM users (the --kafka-security user must be a super user)",
            )?;
        let creds = Self {
            kafka_ca: admin.ca.clone(),
            http_ca: http.ca(),
            admin,
            server: http.issue("govbus-up", &["127.0.0.1", "localhost"])?,
            secrets,
        };
        // Every broker learns a new user from the metadata log: wait
        // until the last one authenticates.
        if let Some(last) = names.last() {
            let deadline = Instant::now() + Duration::from_secs(60);
            while govbus_kafka_client::connect(
                &creds.kafka(bootstrap, last)?,
                Duration::from_secs(5),
            )
            .is_err()
            {
                if Instant::now() > deadline {
                    bail!("the SCRAM user {last} cannot authenticate to {bootstrap} 60 s after it was created");
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        creds.write_tokens(names)?;
        Ok(creds)
    }

    /// Kafka settings for the admin.
    fn as_admin(&self, bootstrap: &str) -> govbus_kafka_client::KafkaConfig {
        govbus_kafka_client::KafkaConfig::new(bootstrap).with_security(self.admin.clone())
    }

    /// A random token per registry user (`<user>.registry-token`), the
    /// registry's credentials file (`registry.credentials`, hashes only),
    /// the demo's ingest token and the ingests' credentials file, the
    /// dashboard's token.
    fn write_tokens(&self, users: &[String]) -> anyhow::Result<()> {
        use govbus_core::secret::write_private;
        let mut lines = String::new();
        // Every user that calls the registry (the registry itself does not).
        for u in users.iter().filter(|u| *u != "registry") {
            let token = govbus_http::new_token()?;
            write_private(&self.registry_token(u), format!("{token}\n").as_bytes())?;
            lines.push_str(&govbus_http::credential_line(u, &token));
            lines.push('\n');
        }
        write_private(&self.secrets.join("registry.credentials"), lines.as_bytes())?;
        let token = govbus_http::new_token()?;
        write_private(&self.ingest_token(), format!("{token}\n").as_bytes())?;
        write_private(
            &self.secrets.join("ingest.credentials"),
            format!("{}\n", govbus_http::credential_line(SOURCE_SYSTEM, &token)).as_bytes(),
        )?;
        write_private(
            &self.dashboard_token(),
            format!("{}\n", govbus_http::new_token()?).as_bytes(),
        )?;
        Ok(())
    }

    fn registry_token(&self, user: &str) -> PathBuf {
        self.secrets.join(format!("{user}.registry-token"))
    }

    /// The demo source system's token for every ingest.
    fn ingest_token(&self) -> PathBuf {
        self.secrets.join(format!("{SOURCE_SYSTEM}.ingest-token"))
    }

    /// The dashboard's token.
    fn dashboard_token(&self) -> PathBuf {
        self.secrets.join("dashboard-token")
    }

    /// The HTTP side of `name`'s config: HTTPS and credentials where it
    /// serves (the registry, an ingest), its token where it calls the
    /// registry.
    fn http_sections(&self, role: Role, name: &str) -> String {
        let section = role.section();
        let tls = format!(
            "[{section}.tls]\ncertificate = {}\nkey = {}\n",
            toml_path(&self.server.cert),
            toml_path(&self.server.key)
        );
        let access = format!(
            "[{section}.registry_access]\nca = {}\nuser = \"{name}\"\ntoken = {{ file = {} }}\n",
            toml_path(&self.http_ca),
            toml_path(&self.registry_token(name))
        );
        match role {
            Role::Registry => format!(
                "{tls}[registry.auth]\ncredentials = {}\nadmins = [\"ops\"]\n",
                toml_path(&self.secrets.join("registry.credentials"))
            ),
            Role::Producer => format!(
                "{access}{tls}[producer.auth]\ncredentials = {}\n",
                toml_path(&self.secrets.join("ingest.credentials"))
            ),
            Role::Router | Role::Consumer => access,
        }
    }

    /// How the demo reaches an ingest.
    fn demo_access(&self) -> anyhow::Result<crate::demo::Access> {
        crate::demo::Access::new(Some(self.http_ca.clone()), Some(self.ingest_token()))
    }

    /// `[<section>.kafka.security]` for `user`.
    fn section(&self, section: &str, user: &str) -> String {
        format!(
            "[{section}.kafka.security]\nprotocol = \"sasl_ssl\"\n{}username = \"{user}\"\npassword = {{ file = {} }}\n",
            self.kafka_ca
                .as_deref()
                .map(|ca| format!("ca = {}\n", toml_path(ca)))
                .unwrap_or_default(),
            toml_path(&self.secrets.join(user))
        )
    }

    /// Kafka settings for `user`.
    fn kafka(
        &self,
        bootstrap: &str,
        user: &str,
    ) -> anyhow::Result<govbus_kafka_client::KafkaConfig> {
        let password = govbus_core::secret::Secret::load(govbus_core::secret::SecretSource::File(
            self.secrets.join(user),
        ))?;
        let mut security = govbus_kafka_client::KafkaSecurity::scram(Path::new(""), user, password);
        security.ca = self.kafka_ca.clone();
        Ok(govbus_kafka_client::KafkaConfig::new(bootstrap).with_security(security))
    }
}

/// Makes a secured node's ACLs what the catalog implies, as `govbus acl
/// apply` does; returns how many were created.
fn apply_acls(
    kafka: &govbus_kafka_client::KafkaConfig,
    catalog: &govbus_core::Catalog,
) -> anyhow::Result<usize> {
    use govbus_kafka_client::acl::{managed, plan, AclAdmin, Principals};
    let p = Principals::standard(ROUTER_GROUP);
    let wanted = plan(
        catalog,
        &govbus_core::Topics::default(),
        &p,
        chrono::Utc::now().timestamp_millis(),
    );
    let admin = AclAdmin::new(kafka)?;
    admin.apply(&admin.compare(&wanted, &managed(&wanted, catalog, &p))?)?;
    Ok(wanted.len())
}

/// `--kafka-security FILE`: its `[kafka.security]`.
fn read_kafka_security(file: &Path) -> anyhow::Result<govbus_kafka_client::KafkaSecurity> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct SecurityFile {
        kafka: KafkaPart,
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct KafkaPart {
        security: govbus_kafka_client::KafkaSecurity,
    }
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let parsed: SecurityFile = toml::from_str(&text).with_context(|| {
        format!(
            "{}: expected [kafka.security] only (protocol, ca, username, password)",
            file.display()
        )
    })?;
    Ok(parsed.kafka.security)
}

fn run_blocking(args: UpArgs) -> anyhow::Result<()> {
    let UpArgs {
        dir,
        rate,
        broker,
        stall_secs,
        secure,
        kafka_security,
        deploy,
        schemas,
    } = args;
    let security = kafka_security
        .map(|f| read_kafka_security(&f))
        .transpose()?;
    match (&broker, security.is_some()) {
        (Some(BrokerChoice::At(_)), false) if secure => anyhow::bail!("--secure with --broker HOST:PORT needs --kafka-security FILE: its [kafka.security] connects as a super user, who creates the agents' users and ACLs"),
        (Some(BrokerChoice::Nisshi), _) if secure => anyhow::bail!("--secure runs Apache Kafka (TLS, SCRAM, ACLs): leave out --broker, or say --broker kafka"),
        (Some(BrokerChoice::At(_)), true) | (_, false) => {}
        (_, true) => anyhow::bail!("--kafka-security goes with --broker HOST:PORT of a cluster up did not start"),
    }
    let secure = secure || security.is_some();
    let files = Files::load(deploy, schemas)?;
    let producers = files.producers();
    let provinces = files.provinces();
    let exe = std::env::current_exe().context("locating the govbus binary")?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir.join("logs"))?;
    let dir = dir.canonicalize()?;

    let [registry_port, m_router, m_registry, dashboard_port] = free_ports()?;
    // Per agency: its ingest and its health port; per province: its health port.
    let ports = govbus_kafka::free_ports(2 * producers.len() + provinces.len())?;
    let (ingest_ports, rest) = ports.split_at(producers.len());
    let (producer_metrics, province_metrics) = rest.split_at(producers.len());
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
    match &files.dirs {
        Some((d, s)) => println!(
            "  files     {} ({} datasets, {} subscriptions, {} reports; schemas {})",
            d.display(),
            files.catalog.datasets.len(),
            files.catalog.subscriptions.len(),
            files.catalog.reports.len(),
            s.display()
        ),
        None => println!("  files     the repository's deploy/ and schemas/, built in (--deploy DIR --schemas DIR runs yours)"),
    }
    let users = users(&files);
    let (bootstrap, mut running, line, creds) = start_broker(
        broker,
        &exe,
        &dir,
        &mut stack,
        secure.then_some(users.as_slice()),
        security,
    )?;
    println!("  broker    {line}");
    // --secure: the registry and every ingest speak HTTPS only, and ask
    // for a token.
    let scheme = if creds.is_some() { "https" } else { "http" };
    let registry = format!("{scheme}://127.0.0.1:{registry_port}");
    if let Some(c) = &creds {
        let n = apply_acls(&c.as_admin(&bootstrap), &files.catalog)?;
        println!("  acls      {n} applied (govbus acl plan's, for these files); each agent connects as its own user");
    }

    // nisshi holds a fetch that finds nothing for the whole wait instead
    // of answering when data arrives (Kafka answers at once), so on nisshi
    // consumers wait 10 ms instead of 500, and followers instead of 5,000
    // (docs/BROKERS.md).
    let fetch_wait = if matches!(running, Running::Nisshi) {
        "fetch_wait_ms = 10\nfollow_wait_ms = 10\n"
    } else {
        ""
    };
    let kafka = format!("[{{section}}.kafka]\nbootstrap = \"{bootstrap}\"\n{fetch_wait}");
    let file_lines = files.config_lines();
    // Every agent up runs: its config (on a secured broker it connects as
    // its own user), its command, and its health port.
    let service = |name: &str, role: Role, body: String, metrics: u16| Service {
        name: name.to_string(),
        role,
        config: format!(
            "{file_lines}metrics_listen = \"127.0.0.1:{metrics}\"\n\n[{section}]\n{body}\n{}{}{}",
            kafka.replace("{section}", role.section()),
            creds
                .as_ref()
                .map(|c| c.section(role.section(), name))
                .unwrap_or_default(),
            creds
                .as_ref()
                .map(|c| c.http_sections(role, name))
                .unwrap_or_default(),
            section = role.section(),
        ),
        metrics,
    };
    let producer = |name: &str, port: u16, metrics: u16| {
        service(
            name,
            Role::Producer,
            format!(
                "agency = \"{name}\"\nsystem = \"demo\"\nregistry = \"{registry}\"\nlisten = \"127.0.0.1:{port}\"\nstore = \"sqlite://{}\"\nstall_secs = {stall_secs}\n",
                dir.join(format!("{name}-outbox.db")).display()
            ),
            metrics,
        )
    };
    let province = |p: &str, metrics: u16| {
        service(
            p,
            Role::Consumer,
            format!(
                "subscriber = \"{p}\"\nregistry = \"{registry}\"\nstall_secs = {stall_secs}\nsink = {{ type = \"sqlite\", path = \"{}\" }}\n",
                dir.join(format!("{p}.db")).display()
            ),
            metrics,
        )
    };

    service(
        "registry",
        Role::Registry,
        format!("listen = \"127.0.0.1:{registry_port}\"\n"),
        m_registry,
    )
    .start(&mut stack, &exe, &dir)?;
    println!("  registry  {registry}");

    // Every agency that owns a dataset, those whose datasets others look
    // codes up in first: bca's contract looks province and commune codes up
    // in moha.admin_units, so the map is on the bus before bca starts.
    let mut ingest_of = BTreeMap::new();
    for ((agency, &port), &metrics) in producers.iter().zip(ingest_ports).zip(producer_metrics) {
        producer(agency, port, metrics).start(&mut stack, &exe, &dir)?;
        let ingest = format!("{scheme}://127.0.0.1:{port}");
        if agency == "moha" && files.has("moha", "admin_units") {
            let t = Instant::now();
            let access = match &creds {
                Some(c) => c.demo_access()?,
                None => crate::demo::Access::default(),
            };
            let units = crate::demo::post_admin_units(&ingest, &access)?;
            stack.wait_ready("moha relay", || {
                scrape(metrics, "govbus_relay_published_total", "")
                    .values()
                    .sum::<f64>()
                    >= units as f64
            })?;
            println!(
                "  ministry  moha published the real map: {units} administrative units with their history, in {:.1} s (moha.admin_units)",
                t.elapsed().as_secs_f64()
            );
        }
        println!("  ministry  {agency} API described at {ingest}/openapi.json");
        for id in files.catalog.datasets.keys().filter(|d| &d.owner == agency) {
            println!("  ministry  {agency} ingest on {ingest}/v1/datasets/{id}/changes");
        }
        ingest_of.insert(agency.clone(), (ingest, metrics));
    }

    // The subscriptions, as `govbus subscriptions apply` writes them;
    // they are applied, and the live line reads the cluster, as the
    // operator would.
    let as_operator = match &creds {
        Some(c) => c.kafka(&bootstrap, "ops")?,
        None => govbus_kafka_client::KafkaConfig::new(&bootstrap),
    };
    let steps = tokio::task::block_in_place(|| {
        govbus_router::control::apply(
            &as_operator,
            &govbus_core::Topics::default(),
            &files.catalog,
            false,
            false,
        )
    })?;
    println!(
        "  subscriptions {} applied to _govbus.subscriptions",
        steps.len()
    );
    service(
        "router",
        Role::Router,
        format!(
            "registry = \"{registry}\"\ngroup = \"{ROUTER_GROUP}\"\nstall_secs = {stall_secs}\n"
        ),
        m_router,
    )
    .start(&mut stack, &exe, &dir)?;

    for (p, &port) in provinces.iter().zip(province_metrics) {
        province(p, port).start(&mut stack, &exe, &dir)?;
        println!(
            "  province  {p} → {}",
            dir.join(format!("{p}.db")).display()
        );
    }

    if !provinces.is_empty() {
        let mut cmd = Command::new(&exe);
        let dashboard = format!("127.0.0.1:{dashboard_port}");
        cmd.args([
            "dashboard",
            "--listen",
            &dashboard,
            "--router-group",
            ROUTER_GROUP,
        ]);
        for p in &provinces {
            cmd.arg("--config").arg(dir.join(format!("{p}.toml")));
        }
        // --secure: behind a token (it shows citizens' recent changes).
        let token = match &creds {
            Some(c) => {
                cmd.arg("--token-file").arg(c.dashboard_token());
                Some(
                    std::fs::read_to_string(c.dashboard_token())?
                        .trim()
                        .to_string(),
                )
            }
            None => None,
        };
        stack.spawn("dashboard", cmd, &dir)?;
        stack.wait_ready("dashboard", || {
            http_ok(&format!("http://{dashboard}/state"), token.as_deref())
        })?;
        println!(
            "  dashboard http://{dashboard}/  ({}, live; ?lang=en for English{})",
            provinces.join(", "),
            creds
                .as_ref()
                .map(|c| format!(
                    "; its token is in {}: open ?token=… once",
                    c.dashboard_token().display()
                ))
                .unwrap_or_default()
        );
    }

    // The demo ministry's source system, when the files declare its dataset.
    let bca = ingest_of
        .get("bca")
        .filter(|_| files.has("bca", "residents"));
    if let Some((ingest, _)) = bca {
        let mut cmd = Command::new(&exe);
        cmd.args(["demo", "--ingest", ingest, "--rate", &rate.to_string()]);
        if let Some(c) = &creds {
            cmd.arg("--ca")
                .arg(&c.http_ca)
                .arg("--token-file")
                .arg(c.ingest_token());
        }
        stack.spawn("demo", cmd, &dir)?;
        println!("  demo      resident changes at {} per second across 5 provinces (moves and deletes included)", if rate == 0 { "max".to_string() } else { rate.to_string() });
    }
    println!(
        "  metrics   router :{m_router}  registry :{m_registry}  {}  {}",
        ingest_of
            .iter()
            .map(|(a, (_, m))| format!("{a} :{m}"))
            .collect::<Vec<_>>()
            .join("  "),
        provinces
            .iter()
            .zip(province_metrics)
            .map(|(p, m)| format!("{p} :{m}"))
            .collect::<Vec<_>>()
            .join("  ")
    );
    println!(
        "  Ctrl-C stops everything. Logs: {}",
        dir.join("logs").display()
    );

    let hops = Hops::new(stall_secs);
    let start = Instant::now();
    let mut last_tick = Instant::now();
    let mut last_look = Instant::now();
    let mut last_published = 0u64;
    // Whether the last look found the bus quiet: then the agents' metrics
    // are read every `QUIET_LOOK`, not every second (each read wakes five
    // agents; an idle bus should cost nothing).
    let mut quiet = false;
    while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(1000).saturating_sub(last_tick.elapsed()));
        if stopped.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        let broker_gone = match &mut running {
            Running::Kafka(c) => !c.running(0),
            _ => false,
        };
        let (dead, supervised) = if broker_gone {
            (
                Some(format!(
                    "the Kafka broker exited; last lines of its log:\n{}",
                    log_tail(&dir.join("kafka/node-1/server.log"))
                )),
                String::new(),
            )
        } else {
            match stack.supervise() {
                Ok(shown) => (None, shown),
                Err(d) => (Some(d), String::new()),
            }
        };
        if let Some(d) = dead {
            // A Ctrl-C in a terminal reaches every child at once: a child
            // that exits then is stopping, not failing.
            std::thread::sleep(Duration::from_millis(300));
            if stopped.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            stack.stop();
            bail!("{d}");
        }
        last_tick = Instant::now();
        if quiet && supervised.is_empty() && last_look.elapsed() < QUIET_LOOK {
            continue;
        }
        let dt = last_look.elapsed().as_secs_f64();
        last_look = Instant::now();
        // One look at each agent's own metrics a second (every
        // `QUIET_LOOK` when quiet): the live line costs the broker nothing.
        let producers_now: Vec<String> = ingest_of
            .values()
            .map(|(_, m)| metrics_of(*m).unwrap_or_default())
            .collect();
        let router_now = metrics_of(m_router);
        let mut now = hops.read(
            producers_now
                .iter()
                .map(|b| total(b, "govbus_relay_published_total"))
                .sum(),
            router_now.as_deref().map(|b| {
                (
                    total(b, "govbus_router_consumed_total"),
                    total(b, "govbus_router_lag_events"),
                )
            }),
            provinces
                .iter()
                .zip(province_metrics)
                .map(|(p, &m)| {
                    let b = metrics_of(m).unwrap_or_default();
                    (
                        p.clone(),
                        total(&b, "govbus_consumer_applied_total"),
                        total(&b, "govbus_consumer_lag_events"),
                    )
                })
                .collect(),
        );
        now.normalised = producers_now
            .iter()
            .map(|b| total(b, "govbus_codes_normalised_total"))
            .sum();
        let rate = now.published.saturating_sub(last_published) as f64 / dt.max(0.001);
        quiet = now.published == last_published && now.quiet();
        last_published = now.published;
        if supervised.is_empty() {
            println!("[{:>5}s] {}", start.elapsed().as_secs(), now.line(rate));
        } else {
            println!(
                "[{:>5}s] {} | {supervised}",
                start.elapsed().as_secs(),
                now.line(rate)
            );
        }
    }
    println!("govbus up: stopping every process…");
    drop(hops);
    stack.stop();
    drop(running);
    println!("govbus up: stopped.");
    Ok(())
}

/// How often the live line looks at the agents while the bus is quiet
/// (nothing published, nothing waiting at any hop).
const QUIET_LOOK: Duration = Duration::from_secs(5);

/// The backlog at each hop, from offsets: the central topics' ends
/// (published), the router group's committed offsets on them (consumed), and
/// each province's applied count and lag (its position against its view
/// topics' ends, which the province agent measures).
struct Hops {
    stall: Duration,
    /// Per hop: the last count, and since when it has not moved while its
    /// lag was above zero.
    progress: std::cell::RefCell<BTreeMap<String, (u64, Option<Instant>)>>,
}

/// One reading of [`Hops`].
struct HopsNow {
    published: u64,
    /// Codes the producers normalised (pre-reform codes the demo still sends).
    normalised: u64,
    routed: Option<(u64, u64)>,
    /// Per province: applied, lag.
    provinces: Vec<(String, u64, u64)>,
    stalled: Vec<(String, u64)>,
}

impl HopsNow {
    /// Nothing waits at any hop (the router and every province caught up).
    fn quiet(&self) -> bool {
        self.routed.is_some_and(|(_, lag)| lag == 0)
            && self.provinces.iter().all(|(_, _, lag)| *lag == 0)
            && self.stalled.is_empty()
    }

    fn line(&self, rate: f64) -> String {
        let router = match self.routed {
            Some((consumed, lag)) => format!("router consumed {consumed:>8} lag {lag:>6}"),
            None => "router consumed        ? lag      ?".to_string(),
        };
        let mut line = format!(
            "published {:>8} ({rate:>5.0}/s, {:>6} codes normalised) │ {router}",
            self.published, self.normalised,
        );
        for (p, applied, lag) in &self.provinces {
            line.push_str(&format!(" │ {p} applied {applied:>7} lag {lag:>6}"));
        }
        for (hop, secs) in &self.stalled {
            line.push_str(&format!(" │ STALLED {hop} {secs}s"));
        }
        line
    }
}

impl Hops {
    fn new(stall_secs: u64) -> Self {
        Self {
            stall: Duration::from_secs(stall_secs.max(1)) / 2,
            progress: Default::default(),
        }
    }

    /// A reading from the agents' own figures: the changes the producers'
    /// relays published, the router's (consumed, lag) when it answered,
    /// and per province (applied, lag).
    fn read(
        &self,
        published: u64,
        routed: Option<(u64, u64)>,
        provinces: Vec<(String, u64, u64)>,
    ) -> HopsNow {
        let mut stalled = Vec::new();
        let mut progress = self.progress.borrow_mut();
        let mut watch = |hop: &str, count: u64, lag: u64| {
            let e = progress.entry(hop.to_string()).or_insert((count, None));
            if count != e.0 || lag == 0 {
                *e = (count, None);
            } else {
                let since = *e.1.get_or_insert_with(Instant::now);
                if since.elapsed() >= self.stall {
                    stalled.push((hop.to_string(), since.elapsed().as_secs()));
                }
            }
        };
        if let Some((consumed, lag)) = routed {
            watch("router", consumed, lag);
        }
        for (p, applied, lag) in &provinces {
            watch(p, *applied, *lag);
        }
        HopsNow {
            published,
            normalised: 0,
            routed,
            provinces,
            stalled,
        }
    }
}

/// The router's consumer group in the stack `up` runs.
const ROUTER_GROUP: &str = "govbus-router";

#[cfg(test)]
mod tests {
    use super::*;

    /// The live line slows to one look every `QUIET_LOOK` only when
    /// nothing waits anywhere; a router that does not answer is not quiet.
    #[test]
    fn the_bus_is_quiet_only_when_every_hop_has_caught_up() {
        let now = |routed: Option<(u64, u64)>, lags: [u64; 2], stalled: bool| HopsNow {
            published: 10,
            normalised: 0,
            routed,
            provinces: vec![("p52".into(), 5, lags[0]), ("p92".into(), 5, lags[1])],
            stalled: if stalled {
                vec![("p92".into(), 40)]
            } else {
                vec![]
            },
        };
        assert!(now(Some((10, 0)), [0, 0], false).quiet());
        assert!(!now(Some((9, 1)), [0, 0], false).quiet());
        assert!(!now(None, [0, 0], false).quiet());
        assert!(!now(Some((10, 0)), [0, 3], false).quiet());
        assert!(!now(Some((10, 0)), [0, 0], true).quiet());
    }

    /// An agent that exits is started again after its back-off and shown
    /// on the live line; a process nothing restarts (the broker) is fatal.
    #[test]
    fn an_exited_agent_is_restarted_with_back_off_and_the_broker_is_fatal() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        let mut stack = Stack { procs: vec![] };
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo started; exit 3"]);
        stack.spawn("router", cmd, dir.path()).unwrap();
        let shown = poll(Duration::from_secs(10), || {
            stack
                .supervise()
                .ok()
                .filter(|s| s.contains("restarted ×1"))
        });
        assert_eq!(shown.as_deref(), Some("router restarted ×1"));
        // Its log keeps both runs.
        let log = dir.path().join("logs/router.log");
        let both = poll(Duration::from_secs(10), || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            (text.matches("started").count() == 2).then_some(())
        });
        assert!(both.is_some(), "{:?}", std::fs::read_to_string(&log));
        // The second exit waits 2 s, shown as DOWN meanwhile.
        let down = poll(Duration::from_secs(10), || {
            stack.supervise().ok().filter(|s| s.contains("DOWN"))
        });
        assert_eq!(down.as_deref(), Some("router DOWN"));
        let broker = Command::new("sh").args(["-c", "exit 1"]).spawn().unwrap();
        stack.push("broker", broker, dir.path().join("logs/broker.log"));
        let fatal = poll(Duration::from_secs(10), || stack.supervise().err());
        assert!(fatal.is_some_and(|e| e.starts_with("broker exited")));
        stack.procs.clear();
    }

    /// Polls `f` every 50 ms until it answers, for at most `limit`.
    fn poll<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(v) = f() {
                return Some(v);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}
