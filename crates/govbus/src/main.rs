//! `govbus`: one binary for every part of the bus.

mod acl;
mod admin_units;
mod agents;
mod check;
mod config;
mod dashboard;
mod demo;
mod dlq;
mod nisshi;
mod ops;
mod receipts;
mod reconcile;
mod report;
mod schema_check;
mod secrets;
mod strimzi;
mod up;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// govbus — an event-streaming data-sharing bus between ministries and provinces.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the whole bus locally: broker, registry, router, a demo ministry and two provinces.
    Up {
        /// Working directory (cleared at start): databases, configs, logs.
        #[arg(long, default_value = ".govbus")]
        dir: PathBuf,
        /// Demo changes per second (0 = as fast as ingest takes them).
        #[arg(long, default_value_t = 200)]
        rate: u32,
        /// The broker: `kafka` (Apache Kafka from its jars, installed on
        /// first use; needs Java 17+ and Maven), `nisshi` (the development
        /// broker, installed with cargo on first use), or `HOST:PORT` of a
        /// running cluster. Default: kafka where Java and Maven are present,
        /// else nisshi.
        #[arg(long)]
        broker: Option<up::BrokerChoice>,
        /// Seconds a hop may hold a backlog while consuming nothing before
        /// its agent restarts its session (router, relay, provinces).
        #[arg(long, default_value_t = 30)]
        stall_secs: u64,
        /// Apache Kafka that speaks only TLS with SASL/SCRAM and enforces
        /// ACLs: each agent connects as its own user, and the ACLs `govbus
        /// acl apply` derives are applied before any agent starts.
        #[arg(long)]
        secure: bool,
        /// With `--broker HOST:PORT` of a secured cluster: a file whose
        /// `[kafka.security]` connects as a super user (SASL_SSL; `ca`,
        /// `username`, `password = { file = … }`). up creates a SCRAM user
        /// per agent, applies the ACLs, and runs the stack secured as
        /// `--secure` does.
        #[arg(long, requires = "broker")]
        kafka_security: Option<PathBuf>,
        /// A deploy directory (`datasets/`, `subscriptions/`, `reports/`)
        /// to run instead of the repository's: a producer for every agency
        /// that owns a dataset, a province for every subscriber.
        #[arg(long)]
        deploy: Option<PathBuf>,
        /// The schemas its datasets name (default: `<deploy>/../schemas`).
        #[arg(long, requires = "deploy")]
        schemas: Option<PathBuf>,
    },
    /// Serve the Confluent-compatible schema registry (`[registry]`).
    Registry {
        /// Configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run the router (`[router]`).
    Route {
        /// Configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run a ministry's ingest endpoint and relay (`[producer]`).
    Produce {
        /// Configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Publish from an agency's own sources (`[producer]`): relay its
    /// PostgreSQL outbox, or backfill a JSON-lines / CSV file.
    #[command(group(clap::ArgGroup::new("from").required(true).args(["outbox", "file"])))]
    Publish {
        /// Configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// PostgreSQL URL of the agency database holding the outbox (deploy/sql/outbox.sql).
        #[arg(long)]
        outbox: Option<String>,
        /// A `.jsonl` or `.csv` file to backfill (resumable; bad lines go to `<file>.rejects.jsonl`).
        #[arg(long, requires = "dataset")]
        file: Option<PathBuf>,
        /// The dataset the file holds (`bca.residents`).
        #[arg(long)]
        dataset: Option<String>,
        /// Schema of the outbox table.
        #[arg(long, default_value = "govbus")]
        outbox_schema: String,
    },
    /// The real administrative map with its history, as `moha.admin_units`
    /// rows (from the reference data in `data/vn-admin-units/`).
    AdminUnits {
        #[command(subcommand)]
        command: AdminUnitsCmd,
    },
    /// Run a province's consumer (`[consumer]`).
    Consume {
        /// Configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print each subscription's state: rows held, last change applied, its age, lag.
    Status {
        /// Consumer configuration files (`[consumer]`), one per province agent.
        #[arg(long, short, required = true)]
        config: Vec<PathBuf>,
    },
    /// Post demo resident changes to an ingest endpoint.
    Demo {
        /// Base URL of the ingest endpoint.
        #[arg(long)]
        ingest: String,
        /// Changes per second (0 = as fast as possible).
        #[arg(long, default_value_t = 200)]
        rate: u32,
        /// Stop after this many changes (0 = never).
        #[arg(long, default_value_t = 0)]
        count: u64,
        /// Seed of the demo world.
        #[arg(long, default_value_t = 52)]
        seed: u64,
        /// Post the whole real administrative map with its history
        /// (moha.admin_units, 10,825 codes) to `--ingest` (moha's)
        /// instead, once, and exit.
        #[arg(long)]
        admin_units: bool,
        /// PEM file of the CA that signed an HTTPS ingest's certificate.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// File holding the source system's token for the ingest.
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Create every topic the files in `deploy/` imply, with their settings:
    /// each dataset's central topic and route DLQ, each subscription's view,
    /// the control and view-state topics (`[router]`'s cluster and prefix,
    /// as `[acl.kafka]`'s user where the file has one).
    Topics {
        /// Configuration file (its `[router]` section).
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[command(flatten)]
        strimzi: StrimziArgs,
    },
    /// Exit 0 when URL (an agent's `/healthz` or `/readyz`) answers 2xx;
    /// else print its answer and fail. For container healthchecks.
    Health {
        /// The URL.
        url: String,
    },
    /// Run a command, and kill it when this process stops or its parent dies.
    #[command(hide = true)]
    Guard {
        /// The command.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Secret files for docker-compose.yml.
    Secrets {
        #[command(subcommand)]
        command: SecretsCmd,
    },
    /// Tokens for the registry's and ingest's HTTPS APIs.
    Token {
        #[command(subcommand)]
        command: TokenCmd,
    },
    /// Kafka ACLs derived from the files: who may read and write what.
    Acl {
        #[command(subcommand)]
        command: AclCmd,
    },
    /// Subscription files.
    Subscriptions {
        #[command(subcommand)]
        command: SubCmd,
    },
    /// Dataset schemas.
    Schema {
        #[command(subcommand)]
        command: SchemaCmd,
    },
    /// Validate everything in DEPLOY in one pass — datasets against their
    /// schemas, contract rules, lookups, subscriptions, agency files — and
    /// print every problem with its file and line.
    Check {
        /// The deploy directory.
        #[arg(default_value = "deploy")]
        deploy: PathBuf,
        /// The schemas directory.
        #[arg(long, default_value = "schemas")]
        schemas: PathBuf,
    },
    /// Dead letters: what the DLQ topics hold and why; replay or discard them.
    Dlq {
        #[command(subcommand)]
        command: DlqCmd,
    },
    /// Agent configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCmd,
    },
    /// Serve the operations board: each province's reports, freshness,
    /// backlog per hop, last changes and dated snapshots, live.
    Dashboard {
        /// Province consumer configurations (`[consumer]`), one per province.
        #[arg(long, short, required = true)]
        config: Vec<PathBuf>,
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: String,
        /// The router's consumer group (its backlog on the central topics).
        #[arg(long, default_value = "govbus-router")]
        router_group: String,
        /// A file holding the token a browser must present (`?token=` once,
        /// then a cookie; or `Authorization: Bearer`). Without it the
        /// dashboard serves only this machine: a loopback address, and a
        /// `Host` of 127.0.0.1 or localhost.
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Compare what a subscription should hold with the province's table
    /// (counts, bucket digests, then only the differing buckets' rows);
    /// exits 1 naming the missing, extra and stale keys. `--repair`
    /// re-sends exactly those keys through the view.
    Reconcile {
        #[command(flatten)]
        args: reconcile::Args,
    },
    /// Which subscribers applied an event, and when (each subscriber's
    /// `_govbus.receipts.<subscriber>`);
    /// `verify` checks a province's chain of receipts.
    #[command(args_conflicts_with_subcommands = true)]
    Receipts {
        #[command(subcommand)]
        command: Option<ReceiptsCmd>,
        /// The event id (a change's `event_id`).
        event_id: Option<String>,
        /// A configuration naming the cluster (`[router]` or `[consumer]`).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// A province's reports (`deploy/reports/*.toml`): their figures, and
    /// a check against the table.
    Report {
        #[command(subcommand)]
        command: ReportCmd,
    },
}

#[derive(Debug, Subcommand)]
enum ReceiptsCmd {
    /// Check a province's chain of receipts in its database: every hash,
    /// every link; exits 1 naming the receipt where it breaks.
    Verify {
        #[command(flatten)]
        args: receipts::VerifyArgs,
    },
}

#[derive(Debug, Subcommand)]
enum ReportCmd {
    /// The figures of a report, as the consumer keeps them now, or as a
    /// dated snapshot froze them (`--at`).
    Show {
        #[command(flatten)]
        pick: report::Which,
        /// The date of a snapshot (`YYYY-MM-DD`).
        #[arg(long)]
        at: Option<String>,
        /// Headings in `vi` (Vietnamese) or `en` (English).
        #[arg(long, default_value = "vi")]
        lang: String,
        /// Print CSV instead of a table.
        #[arg(long)]
        csv: bool,
    },
    /// Freeze the figures now as the snapshot of a date (the end of a
    /// period the schedule missed, or one it does not have); a snapshot of
    /// that date that exists is kept.
    Freeze {
        #[command(flatten)]
        pick: report::Which,
        /// The date (`YYYY-MM-DD`).
        #[arg(long)]
        at: String,
    },
    /// A report's dated snapshots: date, when frozen, total, digest, and
    /// whether the content still matches the digest (exits 1 if not).
    Snapshots {
        #[command(flatten)]
        pick: report::Which,
    },
    /// Write a dated snapshot as CSV or as a printable page (HTML).
    Export {
        #[command(flatten)]
        pick: report::Which,
        /// The date of the snapshot (`YYYY-MM-DD`).
        #[arg(long)]
        at: String,
        /// `csv` or `html`.
        #[arg(long, default_value = "csv")]
        format: String,
        /// Headings in `vi` or `en`.
        #[arg(long, default_value = "vi")]
        lang: String,
        /// The file to write (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Count the table's rows again and compare with the maintained
    /// figures; exits 1 naming each cell that differs.
    Check {
        #[command(flatten)]
        pick: report::Which,
    },
}

#[derive(Debug, Subcommand)]
enum DlqCmd {
    /// Every DLQ topic with its records counted per reason, per source and
    /// per age (`[router]`: the cluster and topic prefix).
    List {
        /// Configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print again every 5 s until stopped.
        #[arg(long)]
        follow: bool,
    },
    /// One dead letter: its headers (reason, error, origin), key and value,
    /// decoded where it decodes.
    Show {
        /// `TOPIC:PARTITION:OFFSET`.
        at: String,
        /// Configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Send the selected letters back through the stage they failed, once:
    /// a route or consume letter to its input's replay topic, an ingest
    /// letter into the agency's outbox. One that fails again returns to the
    /// DLQ with its history.
    Replay {
        #[command(flatten)]
        pick: Pick,
        /// The agency database an ingest letter's row came from.
        #[arg(long)]
        outbox: Option<String>,
        /// Its outbox schema.
        #[arg(long, default_value = "govbus")]
        outbox_schema: String,
        /// Recorded with the replay.
        #[arg(long)]
        why: Option<String>,
    },
    /// Mark the selected letters handled without sending them on, with who,
    /// when and why.
    Discard {
        #[command(flatten)]
        pick: Pick,
        /// Why (required; kept for the audit).
        #[arg(long)]
        why: String,
    },
}

#[derive(Debug, Subcommand)]
enum AdminUnitsCmd {
    /// Write every code's row (its latest meaning and its history) as JSON
    /// lines, and a summary of the map to standard error.
    Export {
        /// A directory with the two reference files (default: the copy in
        /// this binary).
        #[arg(long)]
        data: Option<PathBuf>,
        /// The file to write (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Publish every row as the moha producer (`[producer]`): resumable,
    /// exactly once, with progress.
    Load {
        /// Configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// A directory with the two reference files (default: the copy in
        /// this binary).
        #[arg(long)]
        data: Option<PathBuf>,
    },
}

/// Which dead letters of a DLQ topic an operation takes.
#[derive(Debug, clap::Args)]
struct Pick {
    /// The DLQ topic (`govbus dlq list` names them).
    topic: String,
    /// Only letters with this `govbus.reason`.
    #[arg(long)]
    reason: Option<String>,
    /// Only these offsets: N or FROM-TO (inclusive).
    #[arg(long)]
    offsets: Option<String>,
    /// Only letters of this key.
    #[arg(long)]
    key: Option<String>,
    /// Only letters written since: RFC 3339, or an age (30m, 2h, 7d).
    #[arg(long)]
    since: Option<String>,
    /// Only letters written before: RFC 3339, or an age.
    #[arg(long)]
    until: Option<String>,
    /// Every letter of the topic not handled before.
    #[arg(long)]
    all: bool,
    /// Recorded as who did it (default: $USER).
    #[arg(long)]
    by: Option<String>,
    /// Print what would be done; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Configuration file.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

impl Pick {
    fn selection(&self) -> Result<dlq::Selection, dlq::SelectionError> {
        let now = govbus_core::now_ms();
        let time = |t: &Option<String>| {
            t.as_deref()
                .map(|t| dlq::Selection::parse_time(t, now))
                .transpose()
        };
        Ok(dlq::Selection {
            reason: self.reason.clone(),
            partition: None,
            offsets: self
                .offsets
                .as_deref()
                .map(dlq::Selection::parse_offsets)
                .transpose()?,
            key: self.key.clone(),
            since_ms: time(&self.since)?,
            until_ms: time(&self.until)?,
        })
    }

    fn operator(&self, why: Option<String>) -> dlq::Operator {
        dlq::Operator {
            by: self
                .by
                .clone()
                .or_else(|| std::env::var("USER").ok())
                .unwrap_or_else(|| "unknown".into()),
            why,
            dry_run: self.dry_run,
            all: self.all,
        }
    }
}

#[derive(Debug, Subcommand)]
enum ConfigCmd {
    /// Print the effective configuration, each value with its source (the
    /// file and line, the environment variable, or the default); secrets
    /// masked.
    Show {
        /// Configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Show what this agent reads: its section (and the variables for
        /// it); other agents' sections and variables are left out.
        #[arg(long, value_enum)]
        agent: Option<config::Agent>,
    },
}

#[derive(Debug, Subcommand)]
enum SchemaCmd {
    /// Compare every dataset schema with the registry (or a git revision);
    /// fail, explaining which change breaks which rule or subscription.
    #[command(group(clap::ArgGroup::new("against").required(true).args(["registry", "git"])))]
    Check {
        /// The registry's URL.
        #[arg(long)]
        registry: Option<String>,
        /// A git revision holding the previous schemas (e.g. `origin/main`).
        #[arg(long)]
        git: Option<String>,
        /// The deploy directory (datasets and subscriptions).
        #[arg(long, default_value = "deploy")]
        deploy: PathBuf,
        /// The schemas directory.
        #[arg(long, default_value = "schemas")]
        schemas: PathBuf,
        /// Prefix of the bus's topic names.
        #[arg(long, default_value = "")]
        topic_prefix: String,
        /// A configuration with `[router]` (its cluster and topic prefix):
        /// the subscriptions checked are those in force on the control
        /// topic, not the files under `--deploy`.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Write the ingest API as an OpenAPI 3.1 document, generated from the
    /// datasets' schemas and contracts (what each producer serves at
    /// `/openapi.json` for its own datasets).
    Openapi {
        /// The deploy directory.
        #[arg(long, default_value = "deploy")]
        deploy: PathBuf,
        /// The schemas directory.
        #[arg(long, default_value = "schemas")]
        schemas: PathBuf,
        /// Only the datasets this agency owns (default: every dataset).
        #[arg(long)]
        agency: Option<String>,
        /// Describe the bearer tokens a producer with `[producer.auth]` asks for.
        #[arg(long)]
        bearer: bool,
        /// The file to write (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCmd {
    /// Print a new random token for NAME (an agency or source system) and
    /// the line that lets it in, for a `[registry.auth]` or
    /// `[producer.auth]` credentials file (which stores only its hash).
    New {
        /// The principal: `bca`, `moha`, a source system's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum AclCmd {
    /// Print how the broker's ACLs differ from what DEPLOY and the
    /// platform's config imply (`+` to create, `-` to delete).
    Plan {
        /// The deploy directory (default: the config's `deploy`).
        deploy: Option<PathBuf>,
        /// The platform's configuration (`[router]`, `[registry]`, `[acl]`).
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[command(flatten)]
        strimzi: StrimziArgs,
    },
    /// Create every user the plan names on the cluster (SCRAM-SHA-512), or
    /// reset its password, from a directory of password files (one per
    /// user, named after it), as `[acl.kafka]`'s super user.
    Users {
        /// The directory of password files.
        #[arg(long)]
        passwords: PathBuf,
        /// The deploy directory (default: the config's `deploy`).
        deploy: Option<PathBuf>,
        /// The platform's configuration (`[router]`, `[registry]`, `[acl]`).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Make the broker's ACLs match the plan.
    Apply {
        /// The deploy directory (default: the config's `deploy`).
        deploy: Option<PathBuf>,
        /// The platform's configuration (`[router]`, `[registry]`, `[acl]`).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum SecretsCmd {
    /// Write the secret files docker-compose.yml mounts into DIR (default
    /// `secrets`, next to the compose file): a CA and the brokers'
    /// certificate, a password per Kafka user the files in deploy/ imply
    /// and `admin`, PostgreSQL's password. Existing files are kept.
    Generate {
        /// The directory.
        #[arg(default_value = "secrets")]
        dir: PathBuf,
        /// A deploy directory to take the users from (default: the
        /// repository's, built in).
        #[arg(long)]
        deploy: Option<PathBuf>,
        /// The schemas its datasets name (default: `<deploy>/../schemas`).
        #[arg(long, requires = "deploy")]
        schemas: Option<PathBuf>,
    },
}

/// Print Strimzi resources instead of talking to a broker.
#[derive(Debug, clap::Args)]
struct StrimziArgs {
    /// Print what is derived as Strimzi resources (KafkaTopic, or KafkaUser
    /// with simple authorization) for the Strimzi Kafka cluster named
    /// CLUSTER, for `kubectl apply -f -` or a GitOps repository; no broker
    /// is contacted.
    #[arg(long, value_name = "CLUSTER")]
    strimzi: Option<String>,
    /// The resources' API version: v1beta2 (Strimzi 0.22 to 0.49) or v1
    /// (Strimzi 0.49 and later).
    #[arg(long, value_enum, default_value = "v1beta2", requires = "strimzi")]
    strimzi_api: strimzi::Api,
}

#[derive(Debug, Subcommand)]
enum SubCmd {
    /// Validate the subscription files in DIR and write them to the control
    /// topic `_govbus.subscriptions` (every router follows it): new ones are
    /// backfilled, changed ones send what enters and leaves. Only
    /// subscriptions in the files' scope are touched (by default those of
    /// the subscribers the files name); one in scope that no file declares
    /// stays in force unless `--prune`. Prints the diff.
    Apply {
        /// The directory of subscription files.
        #[arg(default_value = "deploy/subscriptions")]
        dir: PathBuf,
        /// Configuration file (`[router]`: the cluster and topic prefix;
        /// `deploy`/`schemas`: the datasets).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// What the files speak for: `subscribers` (the subscribers they
        /// name: a province's team), `datasets` (the datasets they name: a
        /// ministry's team) or `all` (the files are the bus's whole set).
        #[arg(long, default_value = "subscribers")]
        scope: govbus_router::control::Scope,
        /// Remove the subscriptions in scope that no file declares.
        #[arg(long)]
        prune: bool,
        /// Print the diff (and what --prune would remove) only.
        #[arg(long)]
        dry_run: bool,
        /// Empty the views of removed subscriptions with deletes.
        #[arg(long, requires = "prune")]
        empty_removed: bool,
    },
    /// Validate DEPLOY (the same as `govbus check DEPLOY`).
    Check {
        /// The deploy directory.
        #[arg(default_value = "deploy")]
        deploy: PathBuf,
        /// The schemas directory.
        #[arg(long, default_value = "schemas")]
        schemas: PathBuf,
    },
}

impl Cmd {
    /// The log level when `RUST_LOG` says none: INFO for the agents (the
    /// runbooks quote their INFO lines), WARN for one-shot commands, whose
    /// answer is what they print.
    fn default_log_level(&self) -> &'static str {
        match self {
            Cmd::Registry { .. }
            | Cmd::Route { .. }
            | Cmd::Produce { .. }
            | Cmd::Consume { .. }
            | Cmd::Publish { .. }
            | Cmd::Dashboard { .. }
            | Cmd::AdminUnits {
                command: AdminUnitsCmd::Load { .. },
            } => "info,postgres=warn",
            _ => "warn",
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| cli.command.default_log_level().into()),
        )
        .with_writer(std::io::stderr)
        // Colours for a terminal only: a log file or journal gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // A third-party parser's panic that govbus catches (and turns into a
    // refusal) is not a crash: it is not printed as one.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if govbus_schema::contained::is_contained() {
            tracing::debug!(panic = %info, "a parser's panic, caught and refused");
        } else {
            default_hook(info);
        }
    }));
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("govbus: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(async move {
        match cli.command {
            Cmd::Up {
                dir,
                rate,
                broker,
                stall_secs,
                secure,
                kafka_security,
                deploy,
                schemas,
            } => {
                up::run(up::UpArgs {
                    dir,
                    rate,
                    broker,
                    stall_secs,
                    secure,
                    kafka_security,
                    deploy,
                    schemas,
                })
                .await
            }
            Cmd::Registry { config } => agents::registry(config.as_deref()).await,
            Cmd::Route { config } => agents::route(config.as_deref()).await,
            Cmd::Produce { config } => agents::produce(config.as_deref()).await,
            Cmd::Consume { config } => agents::consume(config.as_deref()).await,
            Cmd::AdminUnits {
                command: AdminUnitsCmd::Export { data, out },
            } => admin_units::export(data.as_deref(), out.as_deref()),
            Cmd::AdminUnits {
                command: AdminUnitsCmd::Load { config, data },
            } => admin_units::load(config.as_deref(), data.as_deref()).await,
            Cmd::Publish {
                config,
                outbox,
                outbox_schema,
                file,
                dataset,
            } => match (outbox, file) {
                (Some(outbox), _) => {
                    agents::publish_outbox(config.as_deref(), outbox, outbox_schema).await
                }
                (None, Some(file)) => {
                    agents::publish_file(config.as_deref(), file, dataset.unwrap_or_default()).await
                }
                (None, None) => Err(anyhow::anyhow!("give --outbox or --file")),
            },
            Cmd::Demo {
                ingest,
                rate,
                count,
                seed,
                admin_units,
                ca,
                token_file,
            } => {
                let access = demo::Access::new(ca, token_file)?;
                if admin_units {
                    let n = tokio::task::spawn_blocking(move || {
                        demo::post_admin_units(&ingest, &access)
                    })
                    .await??;
                    println!("posted {n} administrative units");
                    Ok(())
                } else {
                    demo::run(ingest, rate, count, seed, access).await
                }
            }
            Cmd::Topics { config, strimzi } => {
                tokio::task::spawn_blocking(move || match strimzi.strimzi {
                    Some(cluster) => {
                        agents::strimzi_topics(config.as_deref(), &cluster, strimzi.strimzi_api)
                    }
                    None => agents::create_topics(config.as_deref()),
                })
                .await?
            }
            Cmd::Status { config } => agents::status(config).await,
            Cmd::Dashboard {
                config,
                listen,
                router_group,
                token_file,
            } => dashboard::run(config, listen, router_group, token_file).await,
            Cmd::Reconcile { args } => {
                tokio::task::spawn_blocking(move || reconcile::run(&args)).await?
            }
            Cmd::Receipts {
                command,
                event_id,
                config,
            } => {
                tokio::task::spawn_blocking(move || match (command, event_id) {
                    (Some(ReceiptsCmd::Verify { args }), _) => receipts::verify(&args),
                    (None, Some(id)) => receipts::find(&id, config.as_deref()),
                    (None, None) => Err(anyhow::anyhow!(
                        "give an event id (govbus receipts EVENT_ID -c FILE) or `verify`"
                    )),
                })
                .await?
            }
            Cmd::Report { command } => {
                tokio::task::spawn_blocking(move || match command {
                    ReportCmd::Show {
                        pick,
                        at,
                        lang,
                        csv,
                    } => report::show(&pick, at.as_deref(), &lang, csv),
                    ReportCmd::Freeze { pick, at } => report::freeze(&pick, &at),
                    ReportCmd::Snapshots { pick } => report::snapshots(&pick),
                    ReportCmd::Export {
                        pick,
                        at,
                        format,
                        lang,
                        out,
                    } => report::export(&pick, &at, &format, &lang, out.as_deref()),
                    ReportCmd::Check { pick } => report::check(&pick),
                })
                .await?
            }
            Cmd::Guard { cmd } => nisshi::guard(cmd).await,
            Cmd::Health { url } => tokio::task::spawn_blocking(move || ops::probe(&url)).await?,
            Cmd::Secrets {
                command:
                    SecretsCmd::Generate {
                        dir,
                        deploy,
                        schemas,
                    },
            } => {
                let catalog = match deploy {
                    Some(d) => {
                        let s = schemas.unwrap_or_else(|| d.join("..").join("schemas"));
                        govbus_core::Catalog::load(&d, &s)?
                    }
                    None => govbus_core::Catalog::builtin(),
                };
                secrets::generate(&dir, &catalog)
            }
            Cmd::Token {
                command: TokenCmd::New { name },
            } => {
                let token = govbus_http::new_token()?;
                println!("token for {name} (hand it over; it is stored nowhere):\n  {token}");
                println!(
                    "line for the credentials file:\n  {}",
                    govbus_http::credential_line(&name, &token)
                );
                Ok(())
            }
            Cmd::Acl { command } => {
                tokio::task::spawn_blocking(move || match command {
                    AclCmd::Plan {
                        deploy,
                        config,
                        strimzi:
                            StrimziArgs {
                                strimzi: Some(cluster),
                                strimzi_api,
                            },
                    } => acl::strimzi(config.as_deref(), deploy.as_deref(), &cluster, strimzi_api),
                    AclCmd::Plan { deploy, config, .. } => {
                        acl::run(config.as_deref(), deploy.as_deref(), false)
                    }
                    AclCmd::Users {
                        passwords,
                        deploy,
                        config,
                    } => acl::users(config.as_deref(), deploy.as_deref(), &passwords),
                    AclCmd::Apply { deploy, config } => {
                        acl::run(config.as_deref(), deploy.as_deref(), true)
                    }
                })
                .await?
            }
            Cmd::Subscriptions {
                command: SubCmd::Check { deploy, schemas },
            } => check::run(&deploy, &schemas),
            Cmd::Check { deploy, schemas } => check::run(&deploy, &schemas),
            Cmd::Subscriptions {
                command:
                    SubCmd::Apply {
                        dir,
                        config,
                        scope,
                        prune,
                        dry_run,
                        empty_removed,
                    },
            } => agents::apply_subscriptions(
                &dir,
                config.as_deref(),
                agents::Applying {
                    scope,
                    prune,
                    dry_run,
                    empty_removed,
                },
            ),
            Cmd::Dlq {
                command: DlqCmd::List { config, follow },
            } => tokio::task::spawn_blocking(move || dlq::list(config.as_deref(), follow)).await?,
            Cmd::Dlq {
                command: DlqCmd::Show { at, config },
            } => tokio::task::spawn_blocking(move || dlq::show(config.as_deref(), &at)).await?,
            Cmd::Dlq {
                command:
                    DlqCmd::Replay {
                        pick,
                        outbox,
                        outbox_schema,
                        why,
                    },
            } => {
                let sel = pick.selection()?;
                let op = pick.operator(why);
                tokio::task::spawn_blocking(move || {
                    dlq::replay(
                        pick.config.as_deref(),
                        &pick.topic,
                        &sel,
                        &op,
                        outbox.as_deref().map(|u| (u, outbox_schema.as_str())),
                    )
                })
                .await?
            }
            Cmd::Dlq {
                command: DlqCmd::Discard { pick, why },
            } => {
                let sel = pick.selection()?;
                let op = pick.operator(Some(why));
                tokio::task::spawn_blocking(move || {
                    dlq::discard(pick.config.as_deref(), &pick.topic, &sel, &op)
                })
                .await?
            }
            Cmd::Config {
                command: ConfigCmd::Show { config, agent },
            } => {
                print!(
                    "{}",
                    config::show(config.as_deref(), agent, &config::environment())?
                );
                Ok(())
            }
            Cmd::Schema {
                command:
                    SchemaCmd::Openapi {
                        deploy,
                        schemas,
                        agency,
                        bearer,
                        out,
                    },
            } => {
                schema_check::openapi(&deploy, &schemas, agency.as_deref(), bearer, out.as_deref())
            }
            Cmd::Schema {
                command:
                    SchemaCmd::Check {
                        registry,
                        git,
                        deploy,
                        schemas,
                        topic_prefix,
                        config,
                    },
            } => {
                let against = match (registry, git) {
                    (Some(url), _) => schema_check::Against::Registry(url),
                    (None, Some(rev)) => schema_check::Against::Git(rev),
                    (None, None) => anyhow::bail!("give --registry or --git"),
                };
                tokio::task::spawn_blocking(move || {
                    schema_check::run(
                        &deploy,
                        &schemas,
                        &topic_prefix,
                        &against,
                        config.as_deref(),
                    )
                })
                .await?
            }
        }
    });
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("govbus: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
