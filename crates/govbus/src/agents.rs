//! The long-running agents: thin wrappers that load configuration and call
//! the libraries.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use govbus_core::health::Readiness;

use crate::config::{Agent, GovbusConfig};

/// Serves `/metrics`, `/healthz` and `/readyz` if configured; the
/// readiness the agent reports to.
pub(crate) async fn ops(cfg: &GovbusConfig) -> anyhow::Result<Arc<Readiness>> {
    // Before anything decodes: what one record may ask a decoder for.
    let limit = govbus_schema::limits::set_max_allocation_bytes(
        cfg.max_allocation_bytes
            .unwrap_or(govbus_schema::limits::DEFAULT_MAX_ALLOCATION_BYTES),
    );
    tracing::info!(max_allocation_bytes = limit, "bounded decoding");
    let ready = Arc::new(Readiness::new());
    // A thread that failed makes the agent not ready at once (/readyz
    // names it) and then stops it with a clear error, for its supervisor
    // (`govbus up`, systemd, Kubernetes) to restart: never an agent that
    // runs on with a follower dead and its state frozen. (Readiness reads
    // the failures itself; this watch only times the exit, and wakes once
    // a second, as every idle timer of an agent does.)
    tokio::spawn(async {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            if let Some((thread, reason)) = govbus_core::health::failures().into_iter().next() {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                eprintln!("govbus: thread {thread} failed ({reason}); stopping so that the agent restarts");
                std::process::exit(70);
            }
        }
    });
    crate::ops::serve(cfg.metrics_listen, ready.clone()).await?;
    Ok(ready)
}

/// A flag set on Ctrl-C / SIGTERM (or when the parent `govbus up` dies).
pub(crate) fn stop_flag() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        s.store(true, Ordering::Relaxed);
    });
    stop
}

/// Resolves on Ctrl-C, SIGTERM, or the death of a `govbus up` parent.
pub(crate) async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let parent_gone = async {
        if std::env::var_os("GOVBUS_EXIT_WITH_PARENT").is_none() {
            return std::future::pending::<()>().await;
        }
        let parent = std::os::unix::process::parent_id();
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            if std::os::unix::process::parent_id() != parent {
                return;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        _ = parent_gone => {}
    }
}

/// Runs a blocking agent; once `stop` is set it gets a grace period, then
/// the process exits anyway (an agent blocked on a dead broker must not
/// keep `govbus up` or an operator waiting; uncommitted work is redone).
pub(crate) async fn run_until_stopped<F>(stop: Arc<AtomicBool>, f: F) -> anyhow::Result<()>
where
    F: FnOnce() -> anyhow::Result<()> + Send + 'static,
{
    let task = tokio::task::spawn_blocking(f);
    let grace = async {
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    };
    tokio::select! {
        res = task => res?,
        _ = grace => {
            tracing::warn!("did not stop within 5 s of the request; exiting anyway");
            Ok(())
        }
    }
}

/// The first steps of every long-running agent: its configuration (the
/// file, and the variables for its section), its operations endpoint and
/// readiness, its own section, and a first connection to Kafka, which
/// stops it at once if the cluster cannot be reached as configured.
async fn start<T: Clone>(
    file: Option<&Path>,
    agent: Agent,
    section: impl Fn(&GovbusConfig) -> &Option<T>,
    kafka: impl Fn(&T) -> &govbus_kafka_client::KafkaConfig,
) -> anyhow::Result<(GovbusConfig, Arc<Readiness>, T)> {
    let cfg = GovbusConfig::load(file, Some(agent))?;
    let ready = ops(&cfg).await?;
    let own = GovbusConfig::section(section(&cfg), agent.section(), file)?.clone();
    connect(kafka(&own)).await?;
    Ok((cfg, ready, own))
}

/// `govbus registry`.
pub(crate) async fn registry(file: Option<&Path>) -> anyhow::Result<()> {
    let (cfg, ready, mut r) = start(file, Agent::Registry, |c| &c.registry, |r| &r.kafka).await?;
    r.kafka = r.kafka.named("govbus-registry");
    let r = &r;
    // New versions of a dataset's schema must not break the subscriptions
    // in force: those on the control topic, which the registry follows.
    let topics = govbus_core::Topics::new(&r.topic_prefix);
    let (kafka, control) = (r.kafka.clone(), topics.subscriptions());
    let follower = tokio::task::spawn_blocking(move || {
        govbus_router::control::Follower::start(
            &kafka,
            &control,
            std::time::Duration::from_secs(60),
        )
    })
    .await??;
    let catalog = std::sync::Arc::new(cfg.catalog()?);
    // Under `[registry.auth]`, an agency changes only its own subjects.
    let policy: std::sync::Arc<dyn govbus_registry::access::SubjectPolicy> = std::sync::Arc::new(
        crate::acl::WritersOwnSubjects::new(&catalog, &topics, &crate::acl::principals(&cfg)),
    );
    let guard = govbus_router::guard::SubscriptionGuard::live(catalog, topics, follower);
    let running =
        govbus_registry::start_with_policy(r, Some(std::sync::Arc::new(guard)), Some(policy))
            .await?;
    let scheme = if r.tls.is_some() { "https" } else { "http" };
    println!("registry listening on {scheme}://{}", running.addr);
    ready.ready();
    tokio::select! {
        res = running.task => { res??; }
        _ = shutdown_signal() => {}
    }
    Ok(())
}

/// Reaches the cluster as `kafka` says, or stops the agent saying why
/// (a wrong password, an untrusted certificate, a wrong address).
pub(crate) async fn connect(kafka: &govbus_kafka_client::KafkaConfig) -> anyhow::Result<()> {
    let k = kafka.clone();
    tokio::task::spawn_blocking(move || {
        govbus_kafka_client::connect(&k, std::time::Duration::from_secs(15))
    })
    .await??;
    Ok(())
}

/// `govbus route`.
pub(crate) async fn route(file: Option<&Path>) -> anyhow::Result<()> {
    let (cfg, ready, r) = start(file, Agent::Router, |c| &c.router, |r| &r.kafka).await?;
    crate::ops::watch_registry(&r.registry, r.registry_access.as_ref())?;
    let catalog = cfg.catalog()?;
    let stop = stop_flag();
    let s = stop.clone();
    run_until_stopped(stop, move || {
        let mut router = govbus_router::Router::new(r, &catalog)?.reporting_to(ready);
        // A dataset added to the files after the router started is read
        // when a subscription names it.
        if cfg.deploy.is_some() {
            let files = cfg.clone();
            router = router.reloading(govbus_router::Reload::new(move || {
                files.catalog().map_err(|e| format!("{e:#}"))
            }));
        }
        router.run(s)?;
        Ok(())
    })
    .await
}

/// `govbus produce`.
pub(crate) async fn produce(file: Option<&Path>) -> anyhow::Result<()> {
    let (cfg, ready, mut p) = start(file, Agent::Producer, |c| &c.producer, |p| &p.kafka).await?;
    p.kafka = p.kafka.named(&format!("govbus-{}", p.agency));
    crate::ops::watch_registry(&p.registry, p.registry_access.as_ref())?;
    let catalog = cfg.catalog()?;
    govbus_producer::run_agent(p, catalog, shutdown_signal(), ready).await?;
    Ok(())
}

/// `govbus publish --outbox`: the publisher's store and relay, fed by the
/// agency's PostgreSQL outbox instead of HTTP.
pub(crate) async fn publish_outbox(
    file: Option<&Path>,
    outbox: String,
    outbox_schema: String,
) -> anyhow::Result<()> {
    let cfg = GovbusConfig::load(file, Some(Agent::Producer))?;
    let ready = ops(&cfg).await?;
    let p = GovbusConfig::section(&cfg.producer, "producer", file)?.clone();
    let catalog = cfg.catalog()?;
    let stop = stop_flag();
    let s = stop.clone();
    run_until_stopped(stop, move || {
        let publisher = govbus_producer::open_publisher(&p, &catalog)?;
        let topics = govbus_core::Topics::new(&p.topic_prefix);
        let relay = govbus_producer::Relay::for_agency(
            &p.kafka,
            publisher.store(),
            publisher.wakeup(),
            &p.agency,
        )?
        .stall_after(std::time::Duration::from_secs(p.stall_secs));
        let rs = s.clone();
        let relay = std::thread::spawn(move || relay.run(rs));
        let dead = govbus_producer::deadletter::DeadLetters::new(
            &p.kafka,
            &topics.dlq("ingest", &p.agency),
        )?;
        let mut o = govbus_producer::outbox::PgOutbox::connect(&outbox, &outbox_schema)?;
        ready.ready();
        tracing::info!(
            agency = p.agency,
            schema = outbox_schema,
            "relaying the outbox"
        );
        let res = o.run(&publisher, &dead, &s);
        s.store(true, Ordering::Relaxed);
        let _ = relay.join();
        Ok(res?)
    })
    .await
}

/// `govbus publish --file`: backfill a file with a progress bar, then wait
/// until the relay has published everything.
pub(crate) async fn publish_file(
    file: Option<&Path>,
    path: std::path::PathBuf,
    dataset: String,
) -> anyhow::Result<()> {
    let cfg = GovbusConfig::load(file, Some(Agent::Producer))?;
    let p = GovbusConfig::section(&cfg.producer, "producer", file)?.clone();
    let catalog = cfg.catalog()?;
    let stop = stop_flag();
    let s = stop.clone();
    run_until_stopped(stop, move || {
        let publisher = govbus_producer::open_publisher(&p, &catalog)?;
        let relay = govbus_producer::Relay::for_agency(
            &p.kafka,
            publisher.store(),
            publisher.wakeup(),
            &p.agency,
        )?
        .stall_after(std::time::Duration::from_secs(p.stall_secs));
        let relay_stop = Arc::new(AtomicBool::new(false));
        let rs = relay_stop.clone();
        let relay = std::thread::spawn(move || relay.run(rs));
        let bar = indicatif::ProgressBar::new(std::fs::metadata(&path)?.len());
        bar.set_style(indicatif::ProgressStyle::with_template(
            "{bar:30} {bytes}/{total_bytes} {msg} [{elapsed_precise}, ETA {eta}]",
        )?);
        let started = std::time::Instant::now();
        let result = govbus_producer::backfill::run(&publisher, &dataset, &path, 1000, |pr| {
            bar.set_position(pr.bytes);
            let rate = pr.lines as f64 / started.elapsed().as_secs_f64().max(0.001);
            bar.set_message(format!(
                "rows {} stored {} rejected {} ({rate:.0} rows/s)",
                pr.lines, pr.stored, pr.rejected
            ));
            !s.load(Ordering::Relaxed)
        });
        bar.finish();
        let outcome = result?;
        if outcome.resumed_after > 0 {
            println!("resumed after line {}", outcome.resumed_after);
        }
        println!(
            "{} rows read, {} stored, {} rejected{}",
            outcome.lines,
            outcome.stored,
            outcome.rejected,
            if outcome.rejected > 0 {
                format!(
                    " (see {})",
                    govbus_producer::backfill::reject_path(&path).display()
                )
            } else {
                String::new()
            }
        );
        // Hand over to the relay: wait until every stored change is published.
        while publisher.store().backlog()? > 0 && !s.load(Ordering::Relaxed) {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        relay_stop.store(true, Ordering::Relaxed);
        let _ = relay.join();
        println!("published");
        Ok(())
    })
    .await
}

/// `govbus status`: one line per subscription of each consumer config.
pub(crate) async fn status(files: Vec<std::path::PathBuf>) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        println!(
            "{:<24} {:>10}  {:<24} {:>10} {:>8} {:>6}",
            "SUBSCRIPTION", "ROWS", "LAST CHANGE APPLIED", "AGE", "LAG", "DEAD"
        );
        for f in files {
            let cfg = GovbusConfig::load(Some(&f), Some(Agent::Consumer))?;
            let c = GovbusConfig::section(&cfg.consumer, "consumer", Some(&f))?;
            let catalog = cfg.catalog()?;
            for s in govbus_consumer::status(c, &catalog)? {
                let (when, age) = match s
                    .last_change_ms
                    .and_then(chrono::DateTime::from_timestamp_millis)
                {
                    Some(t) => {
                        let secs =
                            (chrono::Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0;
                        (
                            t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                            format!("{secs:.1} s"),
                        )
                    }
                    None => ("-".into(), "-".into()),
                };
                println!(
                    "{:<24} {:>10}  {:<24} {:>10} {:>8} {:>6}",
                    s.subscription,
                    s.rows.map_or("-".into(), |n| n.to_string()),
                    when,
                    age,
                    s.lag.map_or("-".into(), |n| n.to_string()),
                    s.dead,
                );
            }
        }
        Ok(())
    })
    .await?
}

/// `govbus consume`.
pub(crate) async fn consume(file: Option<&Path>) -> anyhow::Result<()> {
    let (cfg, ready, c) = start(file, Agent::Consumer, |c| &c.consumer, |c| &c.kafka).await?;
    crate::ops::watch_registry(&c.registry, c.registry_access.as_ref())?;
    let catalog = cfg.catalog()?;
    let stop = stop_flag();
    let s = stop.clone();
    run_until_stopped(stop, move || {
        Ok(govbus_consumer::run_reporting(&c, &catalog, s, &ready)?)
    })
    .await
}

/// How `govbus subscriptions apply` puts files in force.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Applying {
    /// What the files speak for.
    pub(crate) scope: govbus_router::control::Scope,
    /// Remove what is in scope and declared by no file.
    pub(crate) prune: bool,
    /// Print only.
    pub(crate) dry_run: bool,
    /// Empty removed views with deletes.
    pub(crate) empty_removed: bool,
}

/// `govbus subscriptions apply DIR`: the files in DIR put in force within
/// their scope; prints each step, and what stays in force undeclared.
pub(crate) fn apply_subscriptions(
    dir: &Path,
    file: Option<&Path>,
    how: Applying,
) -> anyhow::Result<()> {
    let cfg = GovbusConfig::load(file, Some(Agent::Router))?;
    let r = GovbusConfig::section(&cfg.router, "router", file)?;
    let mut catalog = cfg.catalog()?;
    catalog.subscriptions = govbus_core::catalog::load_subscriptions(dir)?;
    // Refused before anything is written: an unknown dataset (and, in
    // `control::apply_scoped`, a view that keeps a PII field without a
    // legal basis, or a SENSITIVE one unnamed).
    catalog.check_subscriptions()?;
    let topics = govbus_core::Topics::new(&r.topic_prefix);
    let plan = govbus_router::control::apply_scoped(
        &cfg.operator_kafka(r),
        &topics,
        &catalog,
        how.scope,
        how.prune,
        how.empty_removed,
        how.dry_run,
    )?;
    for s in &plan.steps {
        println!("{s}");
    }
    for name in &plan.kept {
        println!(
            "= {name} (in force, declared by no file in {}; --prune removes it)",
            dir.display()
        );
    }
    let verb = if how.dry_run {
        "would change"
    } else {
        "changed"
    };
    let changed = plan
        .steps
        .iter()
        .filter(|s| !matches!(s, govbus_router::control::Step::Remove { .. }))
        .count();
    println!(
        "{} {verb}, {} unchanged, {} kept undeclared ({})",
        plan.steps.len(),
        catalog.subscriptions.len() - changed,
        plan.kept.len(),
        topics.subscriptions()
    );
    Ok(())
}

/// `govbus topics`: creates every topic the catalog implies (those that
/// exist are left as they are) and prints each with its settings.
pub(crate) fn create_topics(file: Option<&Path>) -> anyhow::Result<()> {
    let (kafka, specs) = topic_specs(file)?;
    govbus_kafka_client::ensure_topics(&kafka, &specs)?;
    for s in &specs {
        let configs: Vec<String> = s.configs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "ok  {:<40} partitions {:<3} {}",
            s.name,
            s.partitions,
            configs.join(" ")
        );
    }
    Ok(())
}

/// `govbus topics --strimzi CLUSTER`: the same topics as KafkaTopic
/// resources, printed; no broker is contacted.
pub(crate) fn strimzi_topics(
    file: Option<&Path>,
    cluster: &str,
    api: crate::strimzi::Api,
) -> anyhow::Result<()> {
    let (_, specs) = topic_specs(file)?;
    let docs = crate::strimzi::topics(&specs, cluster, api)?;
    print!(
        "{}",
        crate::strimzi::yaml(
            &format!(
                "The topics the files in deploy/ imply (govbus topics --strimzi {cluster}),\n\
                 for the Strimzi Topic Operator; {} KafkaTopic resources.",
                docs.len()
            ),
            &docs
        )?
    );
    Ok(())
}

/// Every topic the files imply, as the router's section places them, and
/// the cluster to create them on: as `[acl.kafka]`'s user (the operator's,
/// who may create any topic) where the file has one, else as the router.
fn topic_specs(
    file: Option<&Path>,
) -> anyhow::Result<(
    govbus_kafka_client::KafkaConfig,
    Vec<govbus_kafka_client::TopicSpec>,
)> {
    use govbus_kafka_client::TopicSpec;
    let cfg = GovbusConfig::load(file, Some(Agent::Router))?;
    let r = GovbusConfig::section(&cfg.router, "router", file)?;
    let catalog = cfg.catalog()?;
    let topics = govbus_core::Topics::new(&r.topic_prefix);
    let mut specs = vec![
        TopicSpec::compacted(topics.subscriptions(), 1),
        TopicSpec::compacted(topics.view_state(), 1),
    ];
    for d in catalog.datasets.values() {
        specs.push(TopicSpec::changes(
            topics.central(&d.id, d.file.major),
            r.partitions,
            d.file.retention_ms,
        ));
        specs.push(TopicSpec::retained(
            topics.dlq("route", &d.id.to_string()),
            1,
        ));
    }
    for s in &catalog.subscriptions {
        if let Some(d) = catalog.dataset(&s.file.dataset) {
            specs.push(TopicSpec::compacted(
                topics.view(&s.file.subscriber, &d.id, d.file.major),
                r.partitions,
            ));
        }
    }
    Ok((cfg.operator_kafka(r), specs))
}
