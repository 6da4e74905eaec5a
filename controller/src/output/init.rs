//! What `deployctl init` says once it wrote deploy.toml (README, "deployctl init"), and how it
//! reads.

use std::path::PathBuf;

use serde::Serialize;

/// The summary of `init`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InitSummary {
    /// The file written.
    pub path: PathBuf,
    /// The compose file its services came from.
    pub from: Option<PathBuf>,
    pub env: String,
    pub services: Vec<String>,
    /// Compose services left out: no image to deploy.
    pub skipped: Vec<String>,
    /// The env's hosts are a placeholder to edit.
    pub placeholder_hosts: bool,
}

impl InitSummary {
    pub fn lines(&self) -> Vec<String> {
        let from = self
            .from
            .as_ref()
            .map(|f| format!(" from {}", f.display()))
            .unwrap_or_default();
        let mut lines = vec![format!(
            "wrote {}: services {}{from}",
            self.path.display(),
            self.services.join(", ")
        )];
        if !self.skipped.is_empty() {
            lines.push(format!(
                "left out (no image to deploy): {}",
                self.skipped.join(", ")
            ));
        }
        let hosts = match self.placeholder_hosts {
            true => format!("set the hosts of [env.{}], ", self.env),
            false => String::new(),
        };
        lines.push(format!(
            "next: read it through (EDIT and compose notes), {hosts}then `deployctl push <REF> --env {}`",
            self.env
        ));
        lines
    }
}
