//! Running the external programs the harness drives (docker, ssh-keygen, cargo…) with their
//! output captured, so a failure carries the program's own words. The runner is [`demokit`]'s,
//! shared with the demo images and registry.

pub(crate) use demokit::command::{await_server, stop_child};
pub use demokit::command::{describe, output_with_timeout, run, run_with_timeout};

/// A binary of this workspace, as a user would run it: `$<env_var>` if set, else the one cargo
/// built next to the test executable (test executables live in `target/<profile>/deps`, other
/// binaries in `target/<profile>`). `scripts/test` builds them before the tests run.
pub fn workspace_binary(name: &str, env_var: &str) -> crate::error::Result<std::path::PathBuf> {
    use crate::error::{Error, IoContext};
    if let Some(path) = std::env::var_os(env_var) {
        return Ok(path.into());
    }
    let exe = std::env::current_exe().ctx(|| "locating the test executable".into())?;
    let candidates: Vec<std::path::PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(name))
        .collect();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| Error::Prereq {
            what: format!(
                "the {name} binary (looked for {})",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            fix: "cargo build --workspace --bins --features deployctl/demo   (scripts/test does this)"
                .into(),
        })
}
