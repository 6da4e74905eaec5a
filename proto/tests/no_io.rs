//! `proto` does no IO, and its dependency closure shows it: neither tokio nor russh (nor their
//! families) may come back in through a dependency, a build dependency or a dev-dependency.

use std::collections::BTreeSet;
use std::process::Command;

/// Package names in `cargo tree -p proto` over every edge kind (dev-dependencies of proto
/// itself included; cargo follows only normal and build edges below it, as a build does).
fn proto_dependency_closure() -> BTreeSet<String> {
    let out = Command::new(env!("CARGO"))
        .args(["tree", "--offline", "--locked", "--manifest-path"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .args(["-p", "proto", "-e", "normal,build,dev", "--prefix", "none"])
        .args(["--format", "{p}"])
        .output()
        .expect("cannot run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn proto_depends_on_neither_tokio_nor_russh() {
    let closure = proto_dependency_closure();
    // The tree was really read: SSHSIG comes from ssh-key, directly.
    assert!(
        closure.contains("proto") && closure.contains("ssh-key"),
        "{closure:?}"
    );
    let banned: Vec<&String> = closure
        .iter()
        .filter(|name| {
            ["tokio", "russh", "mio"]
                .iter()
                .any(|b| name.as_str() == *b || name.starts_with(&format!("{b}-")))
        })
        .collect();
    assert!(
        banned.is_empty(),
        "proto must do no IO, but its dependency closure holds {banned:?}"
    );
}
