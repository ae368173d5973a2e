//! The embedded development broker: nisshi 0.6.0, installed with cargo into
//! a cache outside the repository the first time it is needed.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context};

/// The pinned version (later ones need a newer rustc than this project's).
pub(crate) const VERSION: &str = "0.6.0";
const FEATURES: &str = "dynostore,postgres,libsql";

/// Where the cached binary lives (`$GOVBUS_NISSHI` overrides).
pub(crate) fn path() -> PathBuf {
    if let Ok(p) = std::env::var("GOVBUS_NISSHI") {
        return p.into();
    }
    cache_root().join(format!("nisshi-{VERSION}/bin/nisshi"))
}

fn cache_root() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/govbus")
}

/// The binary, installing it first if missing (shows cargo's progress).
pub(crate) fn ensure() -> anyhow::Result<PathBuf> {
    let bin = path();
    if bin.exists() {
        return Ok(bin);
    }
    eprintln!(
        "govbus: the development broker (nisshi {VERSION}) is not installed; installing it with cargo into {}.\n\
         govbus: this happens once and takes about 15 minutes on 2 cores; cargo's progress follows.",
        cache_root().display()
    );
    let root = cache_root().join(format!("nisshi-{VERSION}"));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "install",
            &format!("nisshi@{VERSION}"),
            "--locked",
            "--features",
            FEATURES,
        ])
        .arg("--root")
        .arg(&root)
        .arg("--target-dir")
        .arg(cache_root().join("nisshi-build"))
        .status()
        .context("running cargo install nisshi")?;
    if !status.success() || !bin.exists() {
        bail!("installing nisshi {VERSION} failed ({status}); see cargo's output above");
    }
    eprintln!("govbus: nisshi installed at {}", bin.display());
    Ok(bin)
}

/// Starts nisshi under `govbus guard`, which stops it when `govbus up` dies
/// (nisshi itself does not watch its parent).
pub(crate) fn start_guarded(
    exe: &std::path::Path,
    port: u16,
    storage: &str,
    dir: &std::path::Path,
    log: std::fs::File,
) -> anyhow::Result<Child> {
    let url = format!("tcp://127.0.0.1:{port}");
    Command::new(exe)
        .arg("guard")
        .arg("--")
        .arg(ensure()?)
        .arg("broker")
        .args(["--listener-url", &url, "--advertised-listener-url", &url])
        .args(["--storage-engine", storage])
        .env("GOVBUS_EXIT_WITH_PARENT", "1")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()
        .context("starting nisshi")
}

/// `govbus guard -- CMD...`: runs CMD and kills it when this process is told
/// to stop or its parent dies.
pub(crate) async fn guard(cmd: Vec<String>) -> anyhow::Result<()> {
    let (prog, args) = cmd.split_first().context("guard needs a command")?;
    let mut child = tokio::process::Command::new(prog)
        .args(args)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {prog}"))?;
    tokio::select! {
        status = child.wait() => {
            let status = status?;
            if !status.success() {
                bail!("{prog} exited ({status})");
            }
        }
        _ = crate::agents::shutdown_signal() => {
            let _ = child.kill().await;
        }
    }
    Ok(())
}
