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

/// The image's last stage: the binary, `deploy/` and `schemas/`, and a
/// user that is not root, who owns the directory the agents write in.
#[test]
fn the_image_runs_as_an_unprivileged_user_with_the_binary_and_the_files() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let docker = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let last = docker
        .rsplit_once("\nFROM ")
        .map(|(_, stage)| stage)
        .expect("a build stage and a runtime stage");
    let user = last
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the runtime stage names its USER");
    let name = user.split(':').next().unwrap_or("").trim();
    assert!(
        !name.is_empty() && name != "root" && name != "0",
        "the image runs as {user}"
    );
    for copied in [
        "COPY --from=build /src/target/release/govbus /usr/local/bin/govbus",
        "COPY deploy /etc/govbus/deploy",
        "COPY schemas /etc/govbus/schemas",
    ] {
        assert!(last.contains(copied), "the image lacks `{copied}`");
    }
    let workdir = last
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("WORKDIR "))
        .expect("a WORKDIR");
    assert!(
        last.contains(&format!("chown govbus:govbus {workdir}"))
            && last.contains("--uid 10001")
            && name == "10001",
        "{workdir} is not the user's: {last}"
    );
}
