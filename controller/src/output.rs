//! What the user sees. Everything a command says is a [`Message`], one typed enum; an [`Output`]
//! renders it in one of two ways:
//!
//! - `--json`: every message is one JSON object on its own line on stdout, named by its
//!   `"event"` field; every command ends with exactly one `{"event": "summary", …}`.
//! - otherwise the human renderer ([`human`]): progress on stderr (one live line per host on a
//!   terminal, plain timestamped lines when piped), results (tables, summaries) on stdout.
//!
//! Commands never print: they gather, summarize (pure), then emit messages here.

mod approvals;
pub mod human;
mod init;
mod setup;
mod terminal;

pub use approvals::{ApprovalsResult, ApprovalsSummary, ProposalRow};
pub use init::InitSummary;
pub use setup::{CheckRow, DoctorSummary, SetupHost, SetupResult, SetupSummary, StepState};

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use proto::order::{Action, ImageRef};
use proto::wire::{
    AgentStatus, HistoryEntry, JobEvent, LockHolder, Outcome, OutcomeKind, OutputStream, Refusal,
    ServiceStatus,
};
use serde::Serialize;

use crate::ExitClass;
use crate::rollout::HostState;

/// One thing a command says: progress while it works, then its results and one summary.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Message {
    /// What the user typed, resolved once to a digest in one repository.
    Resolved {
        reference: String,
        image: ImageRef,
    },
    /// An agent answered `hello` and serves the expected env (and host name).
    Connected {
        host: String,
        agent_host: String,
        agent_version: String,
    },
    /// A host could not be reached, verified or asked; or a job's connection dropped.
    HostError {
        host: String,
        /// What kind of trouble, when it came from reaching or speaking to the agent.
        #[serde(skip_serializing_if = "Option::is_none")]
        kind: Option<HostErrorKind>,
        error: String,
    },
    /// An order was sent to a host.
    Submitted {
        host: String,
        order_id: String,
        action: Action,
        image: ImageRef,
        /// Services on another image than `image` (a release of several images).
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        images: BTreeMap<String, ImageRef>,
        run_migration: bool,
    },
    /// A host already runs a job for the release being rolled out: it is followed, not repeated.
    Following {
        host: String,
        order_id: String,
    },
    /// A step the agent journaled.
    Job {
        host: String,
        job: JobEvent,
    },
    /// How a host's order ended.
    Outcome {
        host: String,
        outcome: Outcome,
    },
    /// The agent refused the order; nothing changed there.
    Refused {
        host: String,
        refusal: Refusal,
    },
    /// A failure: rollback orders go to the hosts this rollout changed.
    RollbackStarted {
        hosts: Vec<String>,
    },
    Note {
        message: String,
    },
    /// `status`: one host, reachable or not.
    HostStatus(HostStatus),
    /// `history`: one journal entry of one host.
    History {
        host: String,
        entry: HistoryEntry,
    },
    /// `logs`: one container's last lines.
    Logs {
        host: String,
        service: String,
        container: String,
        lines: Vec<String>,
    },
    /// `exec`: a line the command wrote, as it came.
    Output {
        host: String,
        stream: OutputStream,
        line: String,
    },
    /// `demo`: a line of its narration.
    Demo {
        message: String,
    },
    /// `approvals`, `approve`, a push or rollback that proposes: a proposal as a host holds it.
    Proposal(ProposalRow),
    /// `setup`: a step on one host, planned, done or failed.
    SetupStep {
        host: String,
        step: String,
        state: StepState,
    },
    /// `doctor`: one check of one host.
    Check(CheckRow),
    /// The last message of every command.
    Summary(Summary),
}

/// One host's answer to `status`; `reachable` says which fields follow.
#[derive(Debug, Clone, Serialize)]
pub struct HostStatus {
    pub host: String,
    pub reachable: bool,
    #[serde(flatten)]
    pub answer: HostAnswer,
}

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum HostAnswer {
    Up {
        agent_host: String,
        agent_version: String,
        uptime_secs: u64,
        /// This app's services only.
        services: Vec<ServiceStatus>,
        running: Vec<LockHolder>,
    },
    Down {
        kind: HostErrorKind,
        error: String,
    },
}

/// What kind of trouble a host error is: `--json`'s `kind`, for scripts to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostErrorKind {
    /// No connection: the address, SSH, or the agent's socket.
    Unreachable,
    /// The host's SSH key is unknown, changed or revoked in known_hosts.
    HostKey,
    /// SSH accepted none of the keys tried.
    Auth,
    /// The agent speaks another protocol version (README, "Version skew").
    ProtocolVersion,
    /// The agent said something this deployctl cannot read.
    Protocol,
    /// The agent could not serve the request.
    Agent,
    /// The connection dropped mid-conversation.
    ConnectionLost,
    /// The agent serves another env, or calls itself another name than deploy.toml gives it.
    WrongAgent,
    /// `setup` could not install or start the agent there (no systemd, no Docker, a step failed).
    Setup,
}

impl HostStatus {
    /// A reachable host, showing only `app`'s services.
    pub fn up(host: &str, status: &AgentStatus, app: &str) -> HostStatus {
        HostStatus {
            host: host.to_string(),
            reachable: true,
            answer: HostAnswer::Up {
                agent_host: status.host.clone(),
                agent_version: status.agent_version.clone(),
                uptime_secs: status.uptime_secs,
                services: status
                    .services
                    .iter()
                    .filter(|s| s.app == app)
                    .cloned()
                    .collect(),
                running: status.running.clone(),
            },
        }
    }

    pub fn down(host: &str, kind: HostErrorKind, error: &str) -> HostStatus {
        HostStatus {
            host: host.to_string(),
            reachable: false,
            answer: HostAnswer::Down {
                kind,
                error: error.to_string(),
            },
        }
    }
}

/// `{"event": "summary", "command": …, "exit_code": …, …}`: how a command ended.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub command: &'static str,
    pub exit_code: u8,
    #[serde(flatten)]
    pub body: SummaryBody,
}

impl Summary {
    pub fn new(command: &'static str, body: SummaryBody) -> Summary {
        Summary {
            command,
            exit_code: body.exit().code(),
            body,
        }
    }

    pub fn exit(&self) -> ExitClass {
        self.body.exit()
    }
}

/// What each command's summary carries besides its name and exit code.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum SummaryBody {
    /// The command stopped before doing its job (config, usage, a refusal, Ctrl-C).
    Stopped {
        result: ExitClass,
        error: String,
    },
    Rollout(RolloutSummary),
    Status(StatusSummary),
    /// `status` over several envs: each env's verdict.
    Envs {
        envs: Vec<StatusSummary>,
    },
    History(HistorySummary),
    Logs(LogsSummary),
    Exec(ExecSummary),
    Maintenance(MaintenanceSummary),
    Keys(KeysSummary),
    Demo(DemoSummary),
    Approvals(ApprovalsSummary),
    Setup(SetupSummary),
    Doctor(DoctorSummary),
    Init(InitSummary),
}

impl SummaryBody {
    pub fn exit(&self) -> ExitClass {
        match self {
            SummaryBody::Stopped { result, .. } => *result,
            SummaryBody::Rollout(r) => r.result.exit(),
            SummaryBody::Status(s) => s.exit(),
            SummaryBody::Envs { envs } => envs
                .iter()
                .map(StatusSummary::exit)
                .max_by_key(|e| match e {
                    ExitClass::Refused => 2,
                    ExitClass::Success => 0,
                    _ => 1,
                })
                .unwrap_or(ExitClass::Success),
            SummaryBody::History(h) => unreachable_exit(h.hosts, h.unreachable.len()),
            SummaryBody::Logs(l) => unreachable_exit(l.hosts, l.unreachable),
            SummaryBody::Exec(e) => exec_exit(e.result, e.command_exit_code),
            SummaryBody::Maintenance(m) => m.exit(),
            SummaryBody::Keys(_) | SummaryBody::Init(_) => ExitClass::Success,
            SummaryBody::Approvals(a) => a.exit(),
            SummaryBody::Setup(s) => s.exit(),
            SummaryBody::Doctor(d) => d.exit(),
            SummaryBody::Demo(d) => match d.result {
                DemoResult::Succeeded => ExitClass::Success,
                DemoResult::Failed => ExitClass::Failed,
            },
        }
    }
}

/// A read-only command succeeds when at least one host answered.
fn unreachable_exit(hosts: usize, unreachable: usize) -> ExitClass {
    if unreachable >= hosts {
        ExitClass::Refused
    } else {
        ExitClass::Success
    }
}

/// What a rollout amounts to, for every host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutResult {
    Succeeded,
    RolledBack,
    Inconsistent,
    Refused,
}

impl RolloutResult {
    pub fn exit(self) -> ExitClass {
        match self {
            RolloutResult::Succeeded => ExitClass::Success,
            RolloutResult::RolledBack => ExitClass::Failed,
            RolloutResult::Inconsistent => ExitClass::Inconsistent,
            RolloutResult::Refused => ExitClass::Refused,
        }
    }
}

/// The summary of `push` and `rollback`.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutSummary {
    pub env: String,
    pub rollout_id: String,
    #[serde(rename = "ref")]
    pub reference: String,
    /// The image of every service not in `images`.
    pub image: ImageRef,
    /// Services on another image (a release of several images).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub images: BTreeMap<String, ImageRef>,
    pub result: RolloutResult,
    pub elapsed_ms: u64,
    pub hosts: Vec<HostRollout>,
    /// Hosts not known to be on a good version, with why.
    pub inconsistent: Vec<Inconsistent>,
}

/// One host's part of a rollout.
#[derive(Debug, Clone, Serialize)]
pub struct HostRollout {
    pub host: String,
    pub state: HostState,
    /// The agent's outcome of this rollout's order (none when refused, unsent or lost).
    pub outcome: Option<Outcome>,
    /// Whether its order ran `[migrate]` (the first host's, unless skipped).
    pub run_migration: bool,
    /// Where the rollback order sent after a failure left it.
    pub rollback: Option<HostState>,
    pub rollback_outcome: Option<Outcome>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Inconsistent {
    pub host: String,
    pub why: String,
}

/// The summary of `status`: the env's verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusSummary {
    pub env: String,
    pub hosts: usize,
    pub reachable: usize,
    /// Every host reachable and running one release: each service on the same digest everywhere.
    pub consistent: bool,
    /// Every service of every host healthy.
    pub healthy: bool,
    /// The distinct digests running.
    pub digests: Vec<String>,
    /// The release most reachable hosts run (the first host's on a tie): service → digest.
    pub release: BTreeMap<String, String>,
    /// The reachable hosts that run another release (or lack a service), with how they differ.
    pub differing: Vec<Inconsistent>,
}

impl StatusSummary {
    /// 3 when a host is unreachable, 1 when unhealthy or mixed, else 0.
    pub fn exit(&self) -> ExitClass {
        if self.reachable < self.hosts {
            ExitClass::Refused
        } else if self.consistent && self.healthy {
            ExitClass::Success
        } else {
            ExitClass::Failed
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct HistorySummary {
    pub env: String,
    pub hosts: usize,
    pub entries: usize,
    pub unreachable: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LogsSummary {
    pub env: String,
    pub hosts: usize,
    /// How many of the hosts asked could not be reached.
    pub unreachable: usize,
}

/// The summary of `exec`.
#[derive(Debug, Clone, Serialize)]
pub struct ExecSummary {
    pub env: String,
    pub host: String,
    pub service: String,
    /// The command and its arguments (`command` is the summary's: `"exec"`).
    pub argv: Vec<String>,
    pub order_id: String,
    /// The image the command ran in: what the service ran when deployctl asked.
    pub image: ImageRef,
    pub result: ExecResult,
    /// The command's own exit code, when it ran to its end.
    pub command_exit_code: Option<i64>,
    /// Why it did not run to its end, or how it ended.
    pub reason: Option<String>,
    pub elapsed_ms: u64,
}

/// How an exec went, for its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExecResult {
    /// The command ran to its end: its exit code is deployctl's.
    Exited,
    /// It could not run to its end: the engine, its timeout, or the connection.
    Failed,
    /// The agent refused the order; nothing ran.
    Refused,
}

/// `exec`'s exit code: the command's own when it ran to its end, 1 when it could not, 3 when
/// refused (README, "Exit codes"). A code no process can exit with reads as 255, never as 0.
pub fn exec_exit(result: ExecResult, command_exit_code: Option<i64>) -> ExitClass {
    match (result, command_exit_code) {
        (ExecResult::Exited, Some(0)) => ExitClass::Success,
        (ExecResult::Exited, Some(code)) => {
            ExitClass::Command(u8::try_from(code).ok().filter(|c| *c != 0).unwrap_or(255))
        }
        (ExecResult::Exited | ExecResult::Failed, _) => ExitClass::Failed,
        (ExecResult::Refused, _) => ExitClass::Refused,
    }
}

/// The summary of `maintenance on|off`.
#[derive(Debug, Clone, Serialize)]
pub struct MaintenanceSummary {
    pub env: String,
    pub on: bool,
    pub services: Vec<String>,
    /// The page's text (`on`).
    pub message: Option<String>,
    pub hosts: Vec<MaintenanceHost>,
    pub elapsed_ms: u64,
}

/// How one host took a maintenance order.
#[derive(Debug, Clone, Serialize)]
pub struct MaintenanceHost {
    pub host: String,
    /// The order's outcome (`None`: refused, or never sent).
    pub result: Option<OutcomeKind>,
    pub refused: bool,
    pub reason: Option<String>,
}

impl MaintenanceHost {
    pub fn refused(host: &str, reason: String) -> Self {
        MaintenanceHost {
            host: host.to_string(),
            result: None,
            refused: true,
            reason: Some(reason),
        }
    }

    pub fn failed(host: &str, kind: OutcomeKind, reason: String) -> Self {
        MaintenanceHost {
            host: host.to_string(),
            result: Some(kind),
            refused: false,
            reason: Some(reason),
        }
    }
}

impl MaintenanceSummary {
    /// 0 when every host changed its routes, 3 when every host refused, else 1.
    pub fn exit(&self) -> ExitClass {
        if self
            .hosts
            .iter()
            .all(|h| h.result == Some(OutcomeKind::Succeeded))
        {
            ExitClass::Success
        } else if self.hosts.iter().all(|h| h.refused) {
            ExitClass::Refused
        } else {
            ExitClass::Failed
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct KeysSummary {
    pub private_key: PathBuf,
    pub public_key: PathBuf,
    pub allowed_signers: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DemoSummary {
    pub result: DemoResult,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DemoResult {
    Succeeded,
    Failed,
}

/// Where messages go. Shared by every host's task of a rollout, hence `Sync`.
pub trait Output: Send + Sync {
    fn emit(&self, message: &Message);
    /// Announces the hosts about to get live lines, in display order.
    fn hosts(&self, _names: &[String]) {}
}

/// The output for this run: JSON lines, or the human renderer.
pub fn for_run(json: bool) -> Box<dyn Output> {
    if json {
        Box::new(Json)
    } else {
        Box::new(terminal::Human::new())
    }
}

/// The JSON renderer: one object per message, one message per line, on stdout.
struct Json;

impl Output for Json {
    fn emit(&self, message: &Message) {
        let mut stdout = std::io::stdout().lock();
        if let Ok(text) = serde_json::to_string(message) {
            let _ = writeln!(stdout, "{text}");
            let _ = stdout.flush();
        }
    }
}

/// Keeps every message, for tests.
#[cfg(test)]
#[derive(Default)]
pub struct Recorder(pub std::sync::Mutex<Vec<Message>>);

#[cfg(test)]
impl Output for Recorder {
    fn emit(&self, message: &Message) {
        if let Ok(mut all) = self.0.lock() {
            all.push(message.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn to_json(m: &Message) -> serde_json::Value {
        serde_json::to_value(m).unwrap()
    }

    #[test]
    fn messages_serialize_with_their_name() {
        let note = Message::Note {
            message: "hi".into(),
        };
        assert_eq!(to_json(&note), json!({"event": "note", "message": "hi"}));
        let down = Message::HostStatus(HostStatus::down("h1", HostErrorKind::Unreachable, "gone"));
        assert_eq!(
            to_json(&down),
            json!({"event": "host_status", "host": "h1", "reachable": false,
                   "kind": "unreachable", "error": "gone"})
        );
    }

    #[test]
    fn summaries_carry_the_command_and_exit_code_beside_their_fields() {
        let stopped = Summary::new(
            "push",
            SummaryBody::Stopped {
                result: ExitClass::Refused,
                error: "no".into(),
            },
        );
        assert_eq!(
            to_json(&Message::Summary(stopped)),
            json!({"event": "summary", "command": "push", "exit_code": 3, "result": "refused", "error": "no"})
        );
        let status = StatusSummary {
            env: "staging".into(),
            hosts: 2,
            reachable: 2,
            consistent: true,
            healthy: true,
            digests: vec!["sha256:a".into()],
            release: BTreeMap::from([("web".into(), "sha256:a".into())]),
            differing: vec![],
        };
        let summary = Summary::new("status", SummaryBody::Status(status));
        assert_eq!(
            to_json(&Message::Summary(summary)),
            json!({"event": "summary", "command": "status", "exit_code": 0, "env": "staging",
                   "hosts": 2, "reachable": 2, "consistent": true, "healthy": true,
                   "digests": ["sha256:a"], "release": {"web": "sha256:a"}, "differing": []})
        );
    }

    #[test]
    fn read_only_commands_fail_only_when_no_host_answers() {
        let history = |unreachable: &[&str]| {
            SummaryBody::History(HistorySummary {
                env: "e".into(),
                hosts: 2,
                entries: 0,
                unreachable: unreachable.iter().map(|s| s.to_string()).collect(),
            })
            .exit()
        };
        assert_eq!(history(&[]), ExitClass::Success);
        assert_eq!(history(&["a"]), ExitClass::Success);
        assert_eq!(history(&["a", "b"]), ExitClass::Refused);
    }

    #[test]
    fn an_exec_summary_names_each_field_once() {
        let body = ExecSummary {
            env: "staging".into(),
            host: "h1".into(),
            service: "web".into(),
            argv: vec!["/app".into(), "exit".into(), "7".into()],
            order_id: "o".into(),
            image: ImageRef::new("r/web", &format!("sha256:{}", "a".repeat(64))).unwrap(),
            result: ExecResult::Exited,
            command_exit_code: Some(7),
            reason: None,
            elapsed_ms: 5,
        };
        let text = serde_json::to_string(&Message::Summary(Summary::new(
            "exec",
            SummaryBody::Exec(body),
        )))
        .unwrap();
        assert!(
            text.starts_with(
                r#"{"event":"summary","command":"exec","exit_code":7,"env":"staging""#
            ) && text.contains(r#""argv":["/app","exit","7"]"#)
                && text.matches(r#""command""#).count() == 1,
            "{text}"
        );
    }

    #[test]
    fn exec_passes_the_commands_exit_code_through() {
        use ExecResult::*;
        let cases = [
            (Exited, Some(0), 0),
            (Exited, Some(7), 7),
            (Exited, Some(3), 3),
            (Exited, Some(255), 255),
            (Exited, Some(256), 255),
            (Exited, Some(-1), 255),
            (Exited, None, 1),
            (Failed, None, 1),
            (Failed, Some(0), 1),
            (Refused, None, 3),
        ];
        for (result, code, want) in cases {
            assert_eq!(exec_exit(result, code).code(), want, "{result:?} {code:?}");
        }
    }
}
