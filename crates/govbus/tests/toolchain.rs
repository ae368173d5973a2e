//! The toolchain the project says it needs is the one it needs: the
//! workspace's `rust-version` is at least every locked dependency's
//! (`cargo metadata` reads them from the lockfile, without a network), and
//! the Dockerfile builds with that very Rust.

use std::process::Command;

/// `1.89` as (1, 89, 0).
fn version(v: &str) -> (u32, u32, u32) {
    let mut p = v.split('.').map(|p| p.parse().unwrap_or(0));
    (
        p.next().unwrap_or(0),
        p.next().unwrap_or(0),
        p.next().unwrap_or(0),
    )
}

#[test]
fn rust_version_the_lockfile_and_the_dockerfile_agree() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let host = String::from_utf8(
        Command::new("rustc")
            .arg("-vV")
            .output()
            .expect("rustc runs")
            .stdout,
    )
    .unwrap()
    .lines()
    .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
    .expect("rustc names its host");
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline"])
        .args(["--filter-platform", &host])
        .current_dir(&root)
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = meta["packages"].as_array().unwrap();
    let ours = packages
        .iter()
        .find(|p| p["name"] == "govbus")
        .and_then(|p| p["rust_version"].as_str())
        .expect("the workspace states a rust-version");
    let needs: Vec<(String, String)> = packages
        .iter()
        .filter_map(|p| {
            let v = p["rust_version"].as_str()?;
            (version(v) > version(ours))
                .then(|| (p["name"].as_str().unwrap_or("").to_string(), v.to_string()))
        })
        .collect();
    assert!(
        needs.is_empty(),
        "rust-version = {ours}, but the lockfile's packages need more: {needs:?}"
    );
    let docker = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let image = docker
        .lines()
        .find_map(|l| l.strip_prefix("FROM rust:"))
        .and_then(|l| l.split('-').next())
        .expect("the Dockerfile builds FROM rust:<version>-…");
    assert_eq!(
        version(image),
        version(ours),
        "the Dockerfile builds with Rust {image}, the workspace says {ours}"
    );
}
