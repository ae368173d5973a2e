//! KRaft nodes on loopback, each a JVM started from the cached jars.

use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::dist::{tools, Dist};
use crate::{tail, KafkaError};

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// How many combined (broker + controller) nodes: 1, or 3 for
    /// failover (replication factor 3, `min.insync.replicas` 2).
    pub nodes: usize,
    /// Where the nodes keep their configuration, data and logs.
    pub dir: PathBuf,
    /// Each JVM's heap, in MB.
    pub heap_mb: u32,
    /// Broker settings set after govbus's (`key`, `value`).
    pub overrides: Vec<(String, String)>,
    /// How long a node may take to start.
    pub start_timeout: Duration,
    /// TLS, SCRAM and the authorizer (none: plaintext, anonymous, no ACLs).
    pub secured: Option<Secured>,
    /// Remove `dir` when the process that started the nodes ends, however
    /// it ends (its nodes are killed then in any case). For a cluster that
    /// lives as long as its process and whose owner is never dropped (a
    /// test binary's shared broker, held in a static): each left ~400 MB
    /// of data behind.
    pub remove_with_parent: bool,
}

/// A cluster whose clients must connect with SASL_SSL: SCRAM-SHA-512 users
/// created when the nodes are formatted, an authorizer that denies what no
/// ACL allows, and `admin` as the only super user. The brokers talk to one
/// another as `admin` over SASL_SSL; the controller listener stays
/// plaintext on loopback (SCRAM is not supported between controllers), and
/// its principal, `User:ANONYMOUS`, must be a super user too (as in
/// Kafka's own authorizer tests).
#[derive(Clone)]
pub struct Secured {
    /// The brokers' key and certificate in one PEM file.
    pub keystore: PathBuf,
    /// The CA that signed it (the brokers' truststore, for mutual TLS).
    pub ca: PathBuf,
    /// The super user's password (user `admin`).
    pub admin_password: String,
    /// Further SCRAM users: (name, password).
    pub users: Vec<(String, String)>,
}

impl std::fmt::Debug for Secured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Passwords are never shown.
        f.debug_struct("Secured")
            .field("keystore", &self.keystore)
            .field("ca", &self.ca)
            .field(
                "users",
                &self
                    .users
                    .iter()
                    .map(|(u, _)| u.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Secured {
    /// Issues the brokers' certificate (for 127.0.0.1 and localhost) from
    /// `ca`; SCRAM users `admin` and `users`.
    pub fn new(
        ca: &crate::tls::Authority,
        admin_password: &str,
        users: Vec<(String, String)>,
    ) -> Result<Self, KafkaError> {
        let broker = ca.issue("broker", &["127.0.0.1", "localhost"])?;
        Ok(Self {
            keystore: broker.bundle,
            ca: ca.ca(),
            admin_password: admin_password.into(),
            users,
        })
    }

    fn properties(&self) -> Vec<(String, String)> {
        let jaas = format!(
            "org.apache.kafka.common.security.scram.ScramLoginModule required username=\"admin\" password=\"{}\";",
            self.admin_password
        );
        [
            ("sasl.enabled.mechanisms", "SCRAM-SHA-512".to_string()),
            (
                "sasl.mechanism.inter.broker.protocol",
                "SCRAM-SHA-512".into(),
            ),
            (
                "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config",
                jaas,
            ),
            ("ssl.keystore.type", "PEM".into()),
            ("ssl.keystore.location", self.keystore.display().to_string()),
            ("ssl.truststore.type", "PEM".into()),
            ("ssl.truststore.location", self.ca.display().to_string()),
            (
                "authorizer.class.name",
                "org.apache.kafka.metadata.authorizer.StandardAuthorizer".into(),
            ),
            ("super.users", "User:admin;User:ANONYMOUS".into()),
            ("allow.everyone.if.no.acl.found", "false".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// `--add-scram` arguments for the storage tool: every user.
    fn scram_args(&self) -> Vec<String> {
        std::iter::once(("admin", self.admin_password.as_str()))
            .chain(self.users.iter().map(|(u, p)| (u.as_str(), p.as_str())))
            .flat_map(|(u, p)| {
                [
                    "--add-scram".to_string(),
                    format!("SCRAM-SHA-512=[name={u},password={p}]"),
                ]
            })
            .collect()
    }
}

impl ClusterConfig {
    /// `nodes` nodes in `dir` with a 512 MB heap each.
    pub fn new(nodes: usize, dir: impl Into<PathBuf>) -> Self {
        Self {
            nodes,
            dir: dir.into(),
            heap_mb: 512,
            overrides: Vec::new(),
            start_timeout: Duration::from_secs(90),
            secured: None,
            remove_with_parent: false,
        }
    }

    /// `dir` is removed when the process that started the nodes ends.
    pub fn remove_with_parent(mut self) -> Self {
        self.remove_with_parent = true;
        self
    }

    /// Clients must connect as `secured` says.
    pub fn secured(mut self, secured: Secured) -> Self {
        self.secured = Some(secured);
        self
    }

    /// Adds a broker setting.
    pub fn set(mut self, key: &str, value: impl ToString) -> Self {
        self.overrides.push((key.into(), value.to_string()));
        self
    }
}

#[derive(Debug)]
struct Node {
    id: u32,
    port: u16,
    controller_port: u16,
    dir: PathBuf,
    /// The wrapper shell (its exit status is the JVM's).
    child: Option<Child>,
    /// The JVM's process id.
    pid: Option<u32>,
}

impl Node {
    fn log(&self) -> PathBuf {
        self.dir.join("server.log")
    }
    fn properties(&self) -> PathBuf {
        self.dir.join("server.properties")
    }
}

/// Running KRaft nodes; every JVM is killed when this is dropped (and when
/// the process that started them dies).
#[derive(Debug)]
pub struct Cluster {
    dist: Dist,
    cfg: ClusterConfig,
    nodes: Vec<Node>,
}

/// The first port of the system's ephemeral range, where the kernel picks
/// the local port of every outgoing connection.
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// `n` distinct free loopback ports, picked at random below the ephemeral
/// range. A port is chosen before the process that will listen on it starts;
/// in the ephemeral range any outgoing connection (a Kafka client's, another
/// test's) may take it meanwhile, and the listener then fails with "address
/// in use". Each port is held until all are picked, so none is handed out
/// twice (a node's listener and controller on one port fail to start).
pub fn free_ports(n: usize) -> Result<Vec<u16>, KafkaError> {
    use rand::Rng;
    let high = ephemeral_low();
    let low = (high / 2).max(1024);
    let mut rng = rand::thread_rng();
    let mut held: Vec<TcpListener> = Vec::with_capacity(n);
    for _ in 0..n * 200 {
        if held.len() == n || low >= high {
            break;
        }
        if let Ok(l) = TcpListener::bind(("127.0.0.1", rng.gen_range(low..high))) {
            held.push(l);
        }
    }
    // A system whose ephemeral range leaves no room below it: any free port.
    while held.len() < n {
        held.push(
            TcpListener::bind("127.0.0.1:0")
                .map_err(KafkaError::io("finding a free loopback port"))?,
        );
    }
    held.iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()
        .map_err(KafkaError::io("finding a free loopback port"))
}

impl Cluster {
    /// Formats and starts `cfg.nodes` nodes, and returns once each has
    /// logged that it started.
    pub fn start(dist: &Dist, cfg: ClusterConfig) -> Result<Self, KafkaError> {
        let mut nodes = Vec::with_capacity(cfg.nodes);
        let ports = free_ports(2 * cfg.nodes)?;
        for (i, pair) in ports.chunks_exact(2).enumerate() {
            let id = i as u32 + 1;
            nodes.push(Node {
                id,
                port: pair[0],
                controller_port: pair[1],
                dir: cfg.dir.join(format!("node-{id}")),
                child: None,
                pid: None,
            });
        }
        let mut cluster = Self {
            dist: dist.clone(),
            cfg,
            nodes,
        };
        let cluster_id = uuid::Uuid::new_v4();
        let cluster_id = base64_url(cluster_id.as_bytes());
        for i in 0..cluster.nodes.len() {
            cluster.write_properties(i)?;
            let node = &cluster.nodes[i];
            let props = node.properties();
            let args = [
                "format".to_string(),
                "-c".into(),
                props.display().to_string(),
                // `=`: an id may start with `-`, which would read as an option.
                format!("--cluster-id={cluster_id}"),
                "--ignore-formatted".into(),
            ];
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            match &cluster.cfg.secured {
                // The users' passwords go in an argument file only its
                // owner reads, never on a command line others can list.
                Some(sec) => {
                    let secret = sec.scram_args();
                    let secret: Vec<&str> = secret.iter().map(String::as_str).collect();
                    cluster.dist.tool_with_secrets(
                        tools::STORAGE,
                        &args,
                        &secret,
                        &node.dir.join("format.args"),
                    )?;
                }
                None => {
                    cluster.dist.tool(tools::STORAGE, &args)?;
                }
            }
        }
        for i in 0..cluster.nodes.len() {
            cluster.spawn(i)?;
        }
        for i in 0..cluster.nodes.len() {
            cluster.wait_started(i, 0)?;
        }
        Ok(cluster)
    }

    fn write_properties(&self, i: usize) -> Result<(), KafkaError> {
        let n = &self.nodes[i];
        std::fs::create_dir_all(n.dir.join("data"))
            .map_err(KafkaError::io(format!("creating {}", n.dir.display())))?;
        let voters: Vec<String> = self
            .nodes
            .iter()
            .map(|v| format!("{}@127.0.0.1:{}", v.id, v.controller_port))
            .collect();
        let replicas = self.nodes.len().min(3);
        let min_isr = if replicas >= 3 { 2 } else { 1 };
        let mut props: Vec<(String, String)> = [
            ("process.roles", "broker,controller".to_string()),
            ("node.id", n.id.to_string()),
            ("controller.quorum.voters", voters.join(",")),
            (
                "listeners",
                format!(
                    "PLAINTEXT://127.0.0.1:{},CONTROLLER://127.0.0.1:{}",
                    n.port, n.controller_port
                ),
            ),
            (
                "advertised.listeners",
                format!("PLAINTEXT://127.0.0.1:{}", n.port),
            ),
            ("controller.listener.names", "CONTROLLER".into()),
            (
                "listener.security.protocol.map",
                "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT".into(),
            ),
            ("inter.broker.listener.name", "PLAINTEXT".into()),
            ("log.dirs", n.dir.join("data").display().to_string()),
            ("default.replication.factor", replicas.to_string()),
            ("min.insync.replicas", min_isr.to_string()),
            ("offsets.topic.replication.factor", replicas.to_string()),
            (
                "transaction.state.log.replication.factor",
                replicas.to_string(),
            ),
            ("transaction.state.log.min.isr", min_isr.to_string()),
            (
                "share.coordinator.state.topic.replication.factor",
                replicas.to_string(),
            ),
            ("share.coordinator.state.topic.min.isr", min_isr.to_string()),
            ("group.initial.rebalance.delay.ms", "0".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if let Some(sec) = &self.cfg.secured {
            let client = [
                (
                    "listeners",
                    format!(
                        "SASL_SSL://127.0.0.1:{},CONTROLLER://127.0.0.1:{}",
                        n.port, n.controller_port
                    ),
                ),
                (
                    "advertised.listeners",
                    format!("SASL_SSL://127.0.0.1:{}", n.port),
                ),
                (
                    "listener.security.protocol.map",
                    "CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL".into(),
                ),
                ("inter.broker.listener.name", "SASL_SSL".into()),
            ];
            for (k, v) in client
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .chain(sec.properties())
            {
                props.retain(|(pk, _)| *pk != k);
                props.push((k, v));
            }
        }
        for (k, v) in &self.cfg.overrides {
            props.retain(|(pk, _)| pk != k);
            props.push((k.clone(), v.clone()));
        }
        let text: String = props.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        // It may hold the inter-broker password: its owner's alone.
        crate::tls::write_private(&n.properties(), text.as_bytes())
    }

    /// Starts node `i`'s JVM under a shell that kills it when this process
    /// is gone (checked every second), and records the JVM's pid.
    fn spawn(&mut self, i: usize) -> Result<(), KafkaError> {
        let heap = format!("-Xmx{}m", self.cfg.heap_mb);
        let log4j = format!(
            "-Dlog4j2.configurationFile={}",
            self.dist.server_log4j().display()
        );
        let cp = self.dist.classpath();
        let java = crate::dist::java();
        let node = &mut self.nodes[i];
        let pidfile = node.dir.join("jvm.pid");
        let _ = std::fs::remove_file(&pidfile);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.log())
            .map_err(KafkaError::io(format!("opening {}", node.log().display())))?;
        let log2 = log
            .try_clone()
            .map_err(KafkaError::io(format!("opening {}", node.log().display())))?;
        // $1 the parent to watch, $2 the pid file, $3 a directory to
        // remove once the parent is gone (empty: none), then the JVM's
        // command.
        const WRAPPER: &str = r#"parent=$1; pidfile=$2; remove=$3; shift 3
"$@" </dev/null &
jvm=$!
echo "$jvm" > "$pidfile"
( while kill -0 "$parent" 2>/dev/null && kill -0 "$jvm" 2>/dev/null; do sleep 1; done
  kill -9 "$jvm" 2>/dev/null
  if [ -n "$remove" ] && ! kill -0 "$parent" 2>/dev/null; then
    while kill -0 "$jvm" 2>/dev/null; do sleep 1; done
    rm -rf "$remove"
  fi ) >/dev/null 2>&1 &
wait "$jvm""#;
        let remove = if self.cfg.remove_with_parent {
            self.cfg.dir.clone()
        } else {
            PathBuf::new()
        };
        let child = Command::new("sh")
            .arg("-c")
            .arg(WRAPPER)
            .arg("sh")
            .arg(std::process::id().to_string())
            .arg(&pidfile)
            .arg(&remove)
            .arg(java)
            .arg(&heap)
            .args([
                "-server",
                "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20",
                "-XX:InitiatingHeapOccupancyPercent=35",
                "-Djava.awt.headless=true",
            ])
            .args(jmx(i))
            .arg(&log4j)
            .arg("-cp")
            .arg(&cp)
            .arg(tools::SERVER)
            .arg(node.properties())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .map_err(KafkaError::io(format!("starting kafka node {}", node.id)))?;
        node.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        // Without the JVM's pid the node could be neither stopped nor
        // killed: a start that does not report it is a failed start.
        loop {
            if let Some(pid) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                node.pid = Some(pid);
                return Ok(());
            }
            if Instant::now() > deadline {
                if let Some(mut c) = node.child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return Err(KafkaError::StartTimeout {
                    node: node.id,
                    secs: 10,
                    log: node.log().display().to_string(),
                    tail: format!(
                        "the wrapper did not write the JVM's pid to {}",
                        pidfile.display()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until node `i` logs that it started, after byte `from` of its log.
    fn wait_started(&mut self, i: usize, from: u64) -> Result<(), KafkaError> {
        let limit = self.cfg.start_timeout;
        let deadline = Instant::now() + limit;
        let node = &mut self.nodes[i];
        let mut pause = Duration::from_millis(20);
        loop {
            if log_has(&node.log(), from, "Kafka Server started") {
                return Ok(());
            }
            if let Some(child) = node.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    node.child = None;
                    node.pid = None;
                    return Err(KafkaError::Exited {
                        node: node.id,
                        status: status.to_string(),
                        log: node.log().display().to_string(),
                        tail: tail(&node.log(), 30),
                    });
                }
            }
            if Instant::now() > deadline {
                return Err(KafkaError::StartTimeout {
                    node: node.id,
                    secs: limit.as_secs(),
                    log: node.log().display().to_string(),
                    tail: tail(&node.log(), 30),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// `host:port` of every node, comma-separated.
    pub fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The jars the nodes run from (for Kafka's CLI tools).
    pub fn dist(&self) -> &Dist {
        &self.dist
    }

    /// How many nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i`'s Kafka node id (`i + 1`).
    pub fn node_id(&self, i: usize) -> u32 {
        self.nodes[i].id
    }

    /// The index of the node with Kafka node id `id`.
    pub fn index_of(&self, id: u32) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    /// Node `i`'s client port.
    pub fn port(&self, i: usize) -> u16 {
        self.nodes[i].port
    }

    /// Node `i`'s log file.
    pub fn log(&self, i: usize) -> PathBuf {
        self.nodes[i].log()
    }

    /// Node `i`'s JVM process id, while it runs.
    pub fn pid(&mut self, i: usize) -> Option<u32> {
        self.running(i).then(|| self.nodes[i].pid).flatten()
    }

    /// Whether node `i`'s JVM is running.
    pub fn running(&mut self, i: usize) -> bool {
        let node = &mut self.nodes[i];
        match node.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                node.child = None;
                node.pid = None;
                false
            }
            None => false,
        }
    }

    /// Kills node `i`'s JVM with SIGKILL and waits for it to be gone.
    pub fn kill(&mut self, i: usize) {
        self.signal_and_wait(
            i,
            nix::sys::signal::Signal::SIGKILL,
            Duration::from_secs(30),
        );
    }

    /// Stops node `i` with SIGTERM (a controlled shutdown), waits up to
    /// `grace`, then kills it.
    pub fn stop(&mut self, i: usize, grace: Duration) {
        self.signal_and_wait(i, nix::sys::signal::Signal::SIGTERM, grace);
        if self.running(i) {
            self.kill(i);
        }
    }

    fn signal_and_wait(&mut self, i: usize, sig: nix::sys::signal::Signal, limit: Duration) {
        let node = &mut self.nodes[i];
        if let Some(pid) = node.pid {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
        }
        let deadline = Instant::now() + limit;
        while let Some(c) = node.child.as_mut() {
            match c.try_wait() {
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => return,
                _ => {
                    node.child = None;
                    node.pid = None;
                }
            }
        }
    }

    /// Starts node `i` again on its ports and data (after [`Cluster::kill`]
    /// or [`Cluster::stop`]); returns once it logged that it started.
    pub fn restart(&mut self, i: usize) -> Result<(), KafkaError> {
        if self.running(i) {
            self.stop(i, Duration::from_secs(30));
        }
        let from = std::fs::metadata(self.nodes[i].log())
            .map(|m| m.len())
            .unwrap_or(0);
        self.spawn(i)?;
        self.wait_started(i, from)
    }

    /// The node id of the active controller, from `kafka-metadata-quorum
    /// describe --status` (its `LeaderId`).
    pub fn active_controller(&self) -> Result<u32, KafkaError> {
        let out = self.dist.tool_text(
            tools::METADATA_QUORUM,
            &[
                "--bootstrap-server",
                &self.bootstrap(),
                "describe",
                "--status",
            ],
        )?;
        out.lines()
            .find_map(|l| l.strip_prefix("LeaderId:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| KafkaError::Tool {
                tool: "MetadataQuorumCommand".into(),
                status: "exit status: 0".into(),
                stderr: format!("no LeaderId in its output: {out}"),
            })
    }

    /// The configuration directory.
    pub fn dir(&self) -> &Path {
        &self.cfg.dir
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// Whether the file at `path` holds `needle` after byte `from`.
fn log_has(path: &Path, from: u64, needle: &str) -> bool {
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    if f.seek(SeekFrom::Start(from)).is_err() {
        return false;
    }
    let mut text = String::new();
    let _ = f.read_to_string(&mut text);
    text.contains(needle)
}

/// Kafka's cluster id form: 16 bytes, URL-safe base64 without padding.
fn base64_url(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for k in 0..chars {
            out.push(ABC[((n >> (18 - 6 * k)) & 63) as usize] as char);
        }
    }
    out
}

/// The JVM options that open node `i`'s JMX on 127.0.0.1, at
/// `GOVBUS_KAFKA_JMX_PORT` + `i`, when that variable is set (for
/// `govbus-bench quiet`, which reads Kafka's own request metrics through
/// it); none otherwise.
fn jmx(i: usize) -> Vec<String> {
    let Some(port) = std::env::var("GOVBUS_KAFKA_JMX_PORT")
        .ok()
        .and_then(|p| p.parse::<u16>().ok())
        .and_then(|p| p.checked_add(u16::try_from(i).ok()?))
    else {
        return Vec::new();
    };
    [
        "-Dcom.sun.management.jmxremote".to_string(),
        format!("-Dcom.sun.management.jmxremote.port={port}"),
        format!("-Dcom.sun.management.jmxremote.rmi.port={port}"),
        "-Dcom.sun.management.jmxremote.host=127.0.0.1".to_string(),
        "-Djava.rmi.server.hostname=127.0.0.1".to_string(),
        "-Dcom.sun.management.jmxremote.authenticate=false".to_string(),
        "-Dcom.sun.management.jmxremote.ssl=false".to_string(),
    ]
    .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let ports = free_ports(16).unwrap();
        let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), 16, "{ports:?}");
        let high = ephemeral_low();
        if high / 2 > 1024 {
            assert!(
                ports.iter().all(|p| *p < high),
                "{ports:?} not below {high}"
            );
        }
        for p in ports {
            TcpListener::bind(("127.0.0.1", p)).unwrap();
        }
    }

    #[test]
    fn cluster_ids_are_22_url_safe_characters() {
        let id = base64_url(&[0xff; 16]);
        assert_eq!(id.len(), 22);
        assert_eq!(id, "_____________________w");
        assert_eq!(base64_url(b"Man"), "TWFu");
    }

    #[test]
    fn a_started_line_before_a_restart_does_not_count() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("server.log");
        std::fs::write(&p, "x Kafka Server started\n").unwrap();
        let len = std::fs::metadata(&p).unwrap().len();
        assert!(log_has(&p, 0, "Kafka Server started"));
        assert!(!log_has(&p, len, "Kafka Server started"));
    }
}
