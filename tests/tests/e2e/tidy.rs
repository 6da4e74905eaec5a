//! Tidy: the layout rules ARCHITECTURE.md states, checked on every run so they stay true —
//! each source file says what it owns, each crate root forbids `unsafe`, bollard and russh stay
//! behind their one module each, `proto` stays free of IO crates, and no source file grows past
//! 800 lines of non-test code (a sign that a decision hides inside IO).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, ensure};

/// Longest a source file may be, not counting its `#[cfg(test)]` module.
const MAX_LINES: usize = 800;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Every Rust source file of the workspace's crates (build output and fuzz corpora excluded).
fn sources() -> anyhow::Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if path.is_dir() {
                if !matches!(name, "target" | "corpus" | "artifacts") && !name.starts_with('.') {
                    walk(&path, out)?;
                }
            } else if name.ends_with(".rs") {
                out.push(path);
            }
        }
        Ok(())
    }
    let root = workspace();
    let mut out = Vec::new();
    for krate in [
        "proto",
        "deploy",
        "agent",
        "controller",
        "demoapp",
        "demokit",
        "tests",
        "bench",
        "frame-io",
        "registry-auth",
    ] {
        walk(&root.join(krate), &mut out).with_context(|| format!("reading {krate}/"))?;
    }
    ensure!(out.len() > 50, "found only {} source files", out.len());
    Ok(out)
}

fn rel(path: &Path) -> String {
    path.strip_prefix(workspace())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The file's lines that are code, not comments (good enough for `use` and path checks).
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
        .map(|(i, l)| (i + 1, l))
}

#[test]
fn every_source_file_says_what_it_owns() -> anyhow::Result<()> {
    let mut bad = Vec::new();
    for path in sources()? {
        let text = std::fs::read_to_string(&path)?;
        let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        if !first.starts_with("//!") {
            bad.push(rel(&path));
        }
    }
    ensure!(bad.is_empty(), "files without a leading //! line: {bad:#?}");
    Ok(())
}

#[test]
fn every_crate_root_forbids_unsafe_code() -> anyhow::Result<()> {
    let mut bad = Vec::new();
    for path in sources()? {
        let name = rel(&path);
        let is_root = name.ends_with("src/lib.rs")
            || name.ends_with("src/main.rs")
            || name.contains("src/bin/");
        if is_root && !std::fs::read_to_string(&path)?.contains("#![forbid(unsafe_code)]") {
            bad.push(name);
        }
    }
    ensure!(
        bad.is_empty(),
        "crate roots without #![forbid(unsafe_code)]: {bad:#?}"
    );
    Ok(())
}

/// `crate_name` may be named in code only under `allowed` (a file or a directory).
fn confined(crate_name: &str, allowed: &[&str]) -> anyhow::Result<()> {
    let mut bad = Vec::new();
    for path in sources()? {
        let name = rel(&path);
        if allowed
            .iter()
            .any(|a| name == *a || name.starts_with(&format!("{a}/")))
        {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        for (n, line) in code_lines(&text) {
            if line.contains(&format!("{crate_name}::"))
                || line.contains(&format!("use {crate_name}"))
            {
                bad.push(format!("{name}:{n}: {}", line.trim()));
            }
        }
    }
    ensure!(
        bad.is_empty(),
        "{crate_name} is used outside {allowed:?}: {bad:#?}"
    );
    Ok(())
}

#[test]
fn bollard_stays_in_the_docker_module() -> anyhow::Result<()> {
    confined("bollard", &["deploy/src/docker.rs"])
}

#[test]
fn russh_stays_in_the_controllers_transport() -> anyhow::Result<()> {
    confined(
        "russh",
        &["controller/src/transport.rs", "controller/src/transport"],
    )
}

/// Caddy's admin API is spoken to by `deploy::caddy` alone, with paths `deploy::route` builds:
/// no other code may name one of its endpoints (the harness under `tests/` aside).
#[test]
fn caddys_admin_api_stays_in_the_engines_caddy_modules() -> anyhow::Result<()> {
    let allowed = ["deploy/src/caddy.rs", "deploy/src/route.rs"];
    let mut bad = Vec::new();
    for path in sources()? {
        let name = rel(&path);
        if allowed.contains(&name.as_str())
            || name.starts_with("tests/")
            || name.starts_with("bench/")
        {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        for (n, line) in code_lines(&text) {
            if ["\"/config/", "/reverse_proxy/", "\"/id/", "\"/load\""]
                .iter()
                .any(|endpoint| line.contains(endpoint))
            {
                bad.push(format!("{name}:{n}: {}", line.trim()));
            }
        }
    }
    ensure!(
        bad.is_empty(),
        "Caddy's admin API outside {allowed:?}: {bad:#?}"
    );
    Ok(())
}

#[test]
fn no_source_file_passes_800_lines_of_non_test_code() -> anyhow::Result<()> {
    let mut bad = Vec::new();
    for path in sources()? {
        let name = rel(&path);
        // Test binaries and the harness are test code throughout.
        if !name.contains("/src/") || name.starts_with("tests/") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        let lines = text
            .lines()
            .take_while(|l| l.trim() != "#[cfg(test)]")
            .count();
        if lines > MAX_LINES {
            bad.push(format!("{name}: {lines} lines"));
        }
    }
    ensure!(
        bad.is_empty(),
        "source files over {MAX_LINES} lines: {bad:#?}"
    );
    Ok(())
}

/// `proto` is the wire contract and nothing else: it can be fuzzed and reasoned about alone, so
/// nothing that does IO may be in its dependency closure.
#[test]
fn proto_depends_on_neither_tokio_nor_russh() -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "-p",
            "proto",
            "-e",
            "normal,build,dev",
            "--prefix",
            "none",
            "--locked",
        ])
        .current_dir(workspace())
        .output()
        .context("running cargo tree")?;
    ensure!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for banned in ["tokio", "russh", "mio", "reqwest", "hyper", "frame-io"] {
        ensure!(
            !crates.contains(&banned),
            "proto depends on {banned}:\n{tree}"
        );
    }
    Ok(())
}
