//! The jars of one pinned Kafka version, in a cache outside the clone.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::KafkaError;

/// The Apache Kafka version govbus runs (the same as `deploy/kafka/pom.xml`).
pub const VERSION: &str = "4.1.1";

/// The Maven project that lists the jars (`deploy/kafka/pom.xml`).
const POM: &str = include_str!("../../../deploy/kafka/pom.xml");
/// The broker's log4j2 configuration.
const SERVER_LOG4J: &str = include_str!("../../../deploy/kafka/log4j2.properties");
/// The CLI tools' log4j2 configuration (warnings on standard error).
const TOOLS_LOG4J: &str = include_str!("../../../deploy/kafka/tools-log4j2.properties");

/// Kafka's CLI tools, by the main class its `bin/*.sh` script runs.
pub mod tools {
    /// `kafka-topics`.
    pub const TOPICS: &str = "org.apache.kafka.tools.TopicCommand";
    /// `kafka-console-consumer`.
    pub const CONSOLE_CONSUMER: &str = "org.apache.kafka.tools.consumer.ConsoleConsumer";
    /// `kafka-console-producer`.
    pub const CONSOLE_PRODUCER: &str = "org.apache.kafka.tools.ConsoleProducer";
    /// `kafka-consumer-groups`.
    pub const CONSUMER_GROUPS: &str = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand";
    /// `kafka-transactions`.
    pub const TRANSACTIONS: &str = "org.apache.kafka.tools.TransactionsCommand";
    /// `kafka-get-offsets`.
    pub const GET_OFFSETS: &str = "org.apache.kafka.tools.GetOffsetShell";
    /// `kafka-metadata-quorum`.
    pub const METADATA_QUORUM: &str = "org.apache.kafka.tools.MetadataQuorumCommand";
    /// `kafka-configs`.
    pub const CONFIGS: &str = "kafka.admin.ConfigCommand";
    /// `kafka-acls`.
    pub const ACLS: &str = "org.apache.kafka.tools.AclCommand";
    /// `kafka-storage`.
    pub const STORAGE: &str = "kafka.tools.StorageTool";
    /// `kafka-server-start`.
    pub const SERVER: &str = "kafka.Kafka";
}

/// Why Kafka cannot run here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    /// No `java`, or one older than 17.
    Java(String),
    /// No `mvn` (and the jars are not cached yet).
    Maven(String),
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Java(why) => write!(f, "Kafka {VERSION} needs Java 17 or later: {why}"),
            Self::Maven(why) => write!(
                f,
                "installing Kafka {VERSION}'s jars needs Maven (mvn): {why}"
            ),
        }
    }
}

/// Whether an install shows Maven's output (downloads as they happen).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Maven's output on this process's terminal.
    Shown,
    /// Maven's output in `install.log` in the cache.
    Quiet,
}

/// The `java` to run: `$GOVBUS_JAVA`, else `$JAVA_HOME/bin/java`, else `java`.
pub(crate) fn java() -> PathBuf {
    if let Some(j) = std::env::var_os("GOVBUS_JAVA") {
        return j.into();
    }
    if let Some(home) = std::env::var_os("JAVA_HOME") {
        let j = Path::new(&home).join("bin/java");
        if j.exists() {
            return j;
        }
    }
    "java".into()
}

/// The major version of [`java`] (`17` for "17.0.15", `8` for "1.8.0"),
/// or why it cannot be told.
pub fn java_major() -> Result<u32, Missing> {
    let out = Command::new(java())
        .arg("-version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Missing::Java(format!("cannot run {}: {e}", java().display())))?;
    let text = String::from_utf8_lossy(&out.stderr);
    parse_java_major(&text)
        .ok_or_else(|| Missing::Java(format!("cannot read its version from {text:?}")))
}

fn parse_java_major(text: &str) -> Option<u32> {
    let quoted = text.split('"').nth(1)?;
    let mut parts = quoted.split(['.', '-', '+']);
    let first: u32 = parts.next()?.parse().ok()?;
    if first == 1 {
        parts.next()?.parse().ok()
    } else {
        Some(first)
    }
}

/// The jars of Kafka [`VERSION`] in a directory (`libs/`), with the log4j2
/// configurations beside them.
#[derive(Debug, Clone)]
pub struct Dist {
    home: PathBuf,
}

impl Dist {
    /// Where the cache lives: `$GOVBUS_KAFKA_HOME`, else
    /// `~/.cache/govbus/kafka-<VERSION>`.
    pub fn default_home() -> PathBuf {
        if let Some(h) = std::env::var_os("GOVBUS_KAFKA_HOME") {
            return h.into();
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
        Path::new(&home)
            .join(".cache/govbus")
            .join(format!("kafka-{VERSION}"))
    }

    /// The installation at `home`, if it is complete.
    pub fn at(home: impl Into<PathBuf>) -> Option<Self> {
        let d = Self { home: home.into() };
        d.home.join("libs/.complete").exists().then_some(d)
    }

    /// The cached installation if there is one, else installs it (Java 17+
    /// and Maven needed). One installer at a time per cache directory.
    pub fn ensure(progress: Progress) -> Result<Self, KafkaError> {
        Self::ensure_at(Self::default_home(), progress)
    }

    /// [`Dist::ensure`] into `home`.
    pub fn ensure_at(home: PathBuf, progress: Progress) -> Result<Self, KafkaError> {
        static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = ONE.lock().unwrap_or_else(|p| p.into_inner());
        let major = java_major().map_err(KafkaError::Unavailable)?;
        if major < 17 {
            return Err(KafkaError::Unavailable(Missing::Java(format!(
                "{} is Java {major}",
                java().display()
            ))));
        }
        if let Some(d) = Self::at(&home) {
            return Ok(d);
        }
        Self::install(home, progress)
    }

    /// Whether Kafka could run here: Java 17 or later, and either the jars
    /// cached or Maven to fetch them.
    pub fn available() -> Result<(), Missing> {
        let major = java_major()?;
        if major < 17 {
            return Err(Missing::Java(format!(
                "{} is Java {major}",
                java().display()
            )));
        }
        if Self::at(Self::default_home()).is_some() {
            return Ok(());
        }
        match Command::new("mvn")
            .arg("-v")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
        {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(Missing::Maven(format!("mvn -v exited ({s})"))),
            Err(e) => Err(Missing::Maven(format!("cannot run mvn: {e}"))),
        }
    }

    fn install(home: PathBuf, progress: Progress) -> Result<Self, KafkaError> {
        std::fs::create_dir_all(&home)
            .map_err(KafkaError::io(format!("creating {}", home.display())))?;
        let pom = home.join("pom.xml");
        std::fs::write(&pom, POM).map_err(KafkaError::io(format!("writing {}", pom.display())))?;
        let partial = home.join("libs.partial");
        let _ = std::fs::remove_dir_all(&partial);
        let log = home.join("install.log");
        let mut cmd = Command::new("mvn");
        cmd.arg("-B")
            .arg("-f")
            .arg(&pom)
            .arg("dependency:copy-dependencies")
            .arg("-DincludeScope=runtime")
            .arg(format!("-DoutputDirectory={}", partial.display()))
            .stdin(Stdio::null());
        if progress == Progress::Quiet {
            let f = std::fs::File::create(&log)
                .map_err(KafkaError::io(format!("creating {}", log.display())))?;
            let f2 = f
                .try_clone()
                .map_err(KafkaError::io(format!("opening {}", log.display())))?;
            cmd.stdout(f).stderr(f2);
        }
        let status = cmd
            .status()
            .map_err(|e| KafkaError::Unavailable(Missing::Maven(format!("cannot run mvn: {e}"))))?;
        if !status.success() {
            return Err(KafkaError::Install {
                status: status.to_string(),
                log: if progress == Progress::Quiet {
                    log.display().to_string()
                } else {
                    "above".into()
                },
            });
        }
        for (name, text) in [
            ("log4j2.properties", SERVER_LOG4J),
            ("tools-log4j2.properties", TOOLS_LOG4J),
        ] {
            let p = partial.join(name);
            std::fs::write(&p, text).map_err(KafkaError::io(format!("writing {}", p.display())))?;
        }
        let marker = partial.join(".complete");
        std::fs::write(&marker, format!("kafka {VERSION}\n"))
            .map_err(KafkaError::io(format!("writing {}", marker.display())))?;
        let libs = home.join("libs");
        let _ = std::fs::remove_dir_all(&libs);
        std::fs::rename(&partial, &libs).map_err(KafkaError::io(format!(
            "moving {} to {}",
            partial.display(),
            libs.display()
        )))?;
        Ok(Self { home })
    }

    /// The cache directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The `-cp` argument: every jar in `libs/`.
    pub fn classpath(&self) -> String {
        format!("{}/*", self.home.join("libs").display())
    }

    /// The broker's log4j2 configuration file.
    pub fn server_log4j(&self) -> PathBuf {
        self.home.join("libs/log4j2.properties")
    }

    /// A `java` command for `class` with Kafka's classpath, and the tools'
    /// logging (warnings on standard error); arguments are the caller's.
    pub fn java(&self, class: &str) -> Command {
        let mut c = Command::new(java());
        c.arg("-Xmx256m")
            .arg("-XX:+UseSerialGC")
            .arg("-XX:TieredStopAtLevel=1")
            .arg("-Djava.awt.headless=true")
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                self.home.join("libs/tools-log4j2.properties").display()
            ))
            .arg("-cp")
            .arg(self.classpath())
            .arg(class)
            .stdin(Stdio::null());
        c
    }

    /// Runs Kafka's CLI tool `class` (see [`tools`]) with `args`; its
    /// output, or an error with what it printed on standard error.
    pub fn tool(&self, class: &str, args: &[&str]) -> Result<Output, KafkaError> {
        let name = class.rsplit('.').next().unwrap_or(class).to_string();
        let out = self
            .java(class)
            .args(args)
            .output()
            .map_err(KafkaError::io(format!("running {name}")))?;
        if !out.status.success() {
            return Err(KafkaError::Tool {
                tool: name,
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(out)
    }

    /// [`Dist::tool`] with `secret` arguments after `args` that must not
    /// appear on a command line (where any user of the machine can list
    /// them): the class and every argument go in a Java argument file,
    /// created readable by its owner only at `argfile` and removed after.
    pub fn tool_with_secrets(
        &self,
        class: &str,
        args: &[&str],
        secret: &[&str],
        argfile: &Path,
    ) -> Result<Output, KafkaError> {
        let name = class.rsplit('.').next().unwrap_or(class).to_string();
        // Java's argument-file syntax: each argument double-quoted, with
        // backslashes and quotes escaped.
        let quote = |a: &str| format!("\"{}\"\n", a.replace('\\', "\\\\").replace('"', "\\\""));
        let text: String = std::iter::once(class)
            .chain(args.iter().copied())
            .chain(secret.iter().copied())
            .map(quote)
            .collect();
        crate::tls::write_private(argfile, text.as_bytes())?;
        let mut c = self.java(class);
        // `java(class)` ends with the class: rebuild without it, the class
        // coming from the argument file.
        let jvm: Vec<std::ffi::OsString> = c.get_args().map(|a| a.to_os_string()).collect();
        let mut cmd = Command::new(c.get_program());
        cmd.args(jvm.iter().take(jvm.len().saturating_sub(1)))
            .arg(format!("@{}", argfile.display()))
            .stdin(Stdio::null());
        c = cmd;
        let out = c.output();
        let _ = std::fs::remove_file(argfile);
        let out = out.map_err(KafkaError::io(format!("running {name}")))?;
        if !out.status.success() {
            return Err(KafkaError::Tool {
                tool: name,
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(out)
    }

    /// [`Dist::tool`]'s standard output as text.
    pub fn tool_text(&self, class: &str, args: &[&str]) -> Result<String, KafkaError> {
        Ok(String::from_utf8_lossy(&self.tool(class, args)?.stdout).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_versions_are_read_both_ways() {
        assert_eq!(
            parse_java_major("openjdk version \"17.0.15\" 2025-04-15"),
            Some(17)
        );
        assert_eq!(parse_java_major("java version \"1.8.0_401\""), Some(8));
        assert_eq!(
            parse_java_major("openjdk version \"25\" 2025-09-16"),
            Some(25)
        );
        assert_eq!(parse_java_major("no version here"), None);
    }

    #[test]
    fn the_pinned_version_is_the_poms() {
        assert!(
            POM.contains(&format!("<kafka.version>{VERSION}</kafka.version>")),
            "deploy/kafka/pom.xml pins another Kafka than VERSION ({VERSION})"
        );
    }
}
