//! What `setup` and `doctor` say (README, "deployctl setup", "deployctl doctor"): a line per
//! step or check of a host, and their summaries.

use serde::Serialize;

use crate::ExitClass;

/// Where one setup step of one host stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepState {
    /// Dry run: what would be done.
    Planned,
    Done,
    Failed,
}

/// How setup ended on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SetupHost {
    pub host: String,
    pub result: SetupResult,
    /// Steps taken (or, in a dry run, planned).
    pub steps: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `deploy-agent --version` answering after setup.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SetupResult {
    Unchanged,
    Changed,
    /// `--dry-run`: nothing was changed.
    Planned,
    /// Nothing was changed (no systemd, no Docker, another binary without --upgrade, SSH).
    Refused,
    /// A step failed after others were taken: run setup again once the cause is fixed.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SetupSummary {
    pub env: String,
    pub dry_run: bool,
    pub hosts: Vec<SetupHost>,
}

impl SetupSummary {
    pub fn exit(&self) -> ExitClass {
        let any = |r: SetupResult| self.hosts.iter().any(|h| h.result == r);
        if any(SetupResult::Failed) {
            ExitClass::Inconsistent
        } else if any(SetupResult::Refused) {
            ExitClass::Refused
        } else {
            ExitClass::Success
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.hosts
            .iter()
            .map(|h| {
                let what = match h.result {
                    SetupResult::Unchanged => "unchanged".to_string(),
                    SetupResult::Changed => format!("set up ({} steps)", h.steps),
                    SetupResult::Planned => format!("{} steps planned, nothing changed", h.steps),
                    SetupResult::Refused => "refused, nothing changed".into(),
                    SetupResult::Failed => {
                        "FAILED part-way: fix the cause and run setup again".into()
                    }
                };
                let agent = h
                    .agent_version
                    .as_deref()
                    .map(|v| format!("; deploy-agent {v} answers"))
                    .unwrap_or_default();
                let error = h
                    .error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                format!("{}  {what}{agent}{error}", h.host)
            })
            .collect()
    }
}

/// One `doctor` check of one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckRow {
    pub host: String,
    /// `ssh`, `agent`, `engine`, `image`, `disk`, `clock`.
    pub check: &'static str,
    pub ok: bool,
    pub detail: String,
    /// What to do about it, when not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl CheckRow {
    pub fn lines(&self) -> Vec<String> {
        let mark = if self.ok { "ok  " } else { "FAIL" };
        let mut lines = vec![format!(
            "{}  {mark} {:<6} {}",
            self.host, self.check, self.detail
        )];
        if let Some(fix) = &self.fix {
            lines.push(format!("{}       fix: {fix}", self.host));
        }
        lines
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DoctorSummary {
    pub env: String,
    pub hosts: usize,
    /// Checks that failed, over every host.
    pub problems: usize,
}

impl DoctorSummary {
    pub fn exit(&self) -> ExitClass {
        match self.problems {
            0 => ExitClass::Success,
            _ => ExitClass::Failed,
        }
    }

    pub fn line(&self) -> String {
        match self.problems {
            0 => format!("{}: {} host(s), every check passed", self.env, self.hosts),
            n => format!(
                "{}: {n} problem(s) on {} host(s); each has its fix above",
                self.env, self.hosts
            ),
        }
    }
}
