//! The human renderer: what each [`Message`] looks like as text, and where it goes. Pure; the
//! terminal printer ([`super::terminal`]) only writes what this returns.

use std::collections::BTreeMap;
use std::time::Duration;

use proto::order::{ImageRef, shell_quote, short_digest};
use proto::wire::{HistoryEntry, Outcome, OutcomeKind, OutputStream};

use super::{
    ExecResult, ExecSummary, HostAnswer, HostRollout, HostStatus, MaintenanceSummary, Message,
    RolloutResult, RolloutSummary, StatusSummary, Summary, SummaryBody,
};
use crate::ExitClass;
use crate::release::{Digests, describe_digests};
use crate::rollout::{HostState, describe, describe_holder};

/// A message as text, with where it goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Shown {
    /// Progress, for stderr (or a host's live line).
    Progress(Progress),
    /// Rows of a result table, printed aligned before the command's summary.
    Rows(Table, Vec<Vec<String>>),
    /// Result lines, for stdout.
    Out(Vec<String>),
    /// Why a command stopped, for stderr.
    Err(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// The host it is about, when it is about one.
    pub host: Option<String>,
    /// The first is the headline (`host  what happened`); the others are details.
    pub lines: Vec<String>,
    /// The host's part is over: its live line stops.
    pub ends: bool,
    /// Something went wrong: the headline stays on screen, not only in the live line.
    pub failure: bool,
}

/// The result tables, one per read-only command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Status,
    History,
}

impl Table {
    pub fn header(self) -> &'static [&'static str] {
        match self {
            Table::Status => &[
                "HOST",
                "REACHABLE",
                "AGENT",
                "SERVICE",
                "REF",
                "DIGEST",
                "HEALTH",
                "SINCE",
                "LAST OUTCOME",
            ],
            Table::History => &[
                "WHEN",
                "HOST",
                "ACTION",
                "REF",
                "DIGEST",
                "OUTCOME",
                "TOOK",
                "MIGRATION",
                "BY",
                "REASON",
            ],
        }
    }
}

/// How `message` reads, safe to print: much of it is text from hosts (log lines, reasons,
/// refusals, labels), which must not drive the terminal.
pub fn render(message: &Message) -> Shown {
    render_raw(message).printable()
}

/// Control characters (escape sequences above all) shown as `\u{1b}`-style text; tabs kept.
pub fn printable(line: &str) -> String {
    if !line.chars().any(|c| c.is_control() && c != '\t') {
        return line.to_string();
    }
    line.chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

impl Shown {
    fn printable(self) -> Shown {
        let all = |lines: Vec<String>| lines.iter().map(|l| printable(l)).collect::<Vec<_>>();
        match self {
            Shown::Progress(mut p) => {
                p.lines = all(p.lines);
                p.host = p.host.as_deref().map(printable);
                Shown::Progress(p)
            }
            Shown::Rows(t, rows) => Shown::Rows(t, rows.into_iter().map(all).collect()),
            Shown::Out(lines) => Shown::Out(all(lines)),
            Shown::Err(lines) => Shown::Err(all(lines)),
        }
    }
}

fn render_raw(message: &Message) -> Shown {
    let shown = match message {
        Message::Resolved { reference, image } => {
            general(format!("resolved {reference} → {image}"))
        }
        Message::Connected {
            host,
            agent_host,
            agent_version,
        } => about(
            host,
            format!("connected (agent {agent_host}, deploy-agent {agent_version})"),
        ),
        Message::HostError { host, error, .. } => about(host, format!("error: {error}")).failed(),
        Message::Submitted {
            host,
            order_id,
            action,
            image,
            images,
            run_migration,
        } => about(
            host,
            format!(
                "{action} {}{} (order {order_id})",
                release_images(image, images),
                if *run_migration {
                    " with migration"
                } else {
                    ""
                }
            ),
        ),
        Message::Following { host, order_id } => about(
            host,
            format!("following order {order_id}, already running this release"),
        ),
        Message::Job { host, job } => {
            let service = job.service.as_ref().map(|s| format!("[{s}] "));
            let service = service.unwrap_or_default();
            about(host, format!("{}: {service}{}", job.phase, job.message))
        }
        Message::Outcome { host, outcome } => {
            let mut shown = about(host, outcome_line(outcome)).ends();
            shown.failure = outcome.kind != OutcomeKind::Succeeded;
            let (heading, indent) = (format!("{host}  "), format!("{host}    "));
            shown.lines.extend(log_tail(outcome, &heading, &indent));
            shown
        }
        Message::Refused { host, refusal } => {
            let state = HostState::Refused {
                refusal: refusal.clone(),
            };
            about(host, describe(&state)).ends().failed()
        }
        Message::RollbackStarted { hosts } => general(format!(
            "rolling back {} host(s) this rollout changed: {}",
            hosts.len(),
            hosts.join(", ")
        )),
        Message::Note { message } => general(message.clone()),
        Message::HostStatus(s) => return Shown::Rows(Table::Status, status_rows(s)),
        Message::History { host, entry } => {
            return Shown::Rows(Table::History, vec![history_row(host, entry)]);
        }
        Message::Logs {
            host,
            service,
            container,
            lines,
        } => {
            let mut out = vec![format!("==> {host} {service} ({container}) <==")];
            out.extend(lines.iter().cloned());
            return Shown::Out(out);
        }
        // The command's own lines, as it wrote them: to stdout or stderr, like the command.
        Message::Output { stream, line, .. } => {
            return match stream {
                OutputStream::Stdout => Shown::Out(vec![line.clone()]),
                OutputStream::Stderr => Shown::Err(vec![line.clone()]),
            };
        }
        Message::Demo { message } => return Shown::Out(vec![message.clone()]),
        Message::SetupStep { host, step, state } => {
            let shown = about(host, format!("{}: {step}", setup_state(*state)));
            match state {
                crate::output::StepState::Failed => shown.failed(),
                _ => shown,
            }
        }
        Message::Check(row) => return Shown::Out(row.lines()),
        Message::Proposal(row) => return Shown::Out(vec![row.line()]),
        Message::Summary(s) => return summary(s),
    };
    Shown::Progress(shown)
}

/// Progress about one host: `host  what`.
fn about(host: &str, what: String) -> Progress {
    Progress {
        host: Some(host.to_string()),
        lines: vec![format!("{host}  {what}")],
        ends: false,
        failure: false,
    }
}

/// Progress about no host in particular.
fn general(line: String) -> Progress {
    Progress {
        host: None,
        lines: vec![line],
        ends: false,
        failure: false,
    }
}

impl Progress {
    fn ends(self) -> Progress {
        Progress { ends: true, ..self }
    }

    fn failed(self) -> Progress {
        Progress {
            failure: true,
            ..self
        }
    }
}

/// The failing container's last lines, under a heading.
fn log_tail(o: &Outcome, heading: &str, indent: &str) -> Vec<String> {
    if o.kind == OutcomeKind::Succeeded || o.log_tail.is_empty() {
        return Vec::new();
    }
    let mut lines = vec![format!("{heading}last log lines of the failing container:")];
    lines.extend(o.log_tail.iter().map(|l| format!("{indent}| {l}")));
    lines
}

fn summary(s: &Summary) -> Shown {
    match &s.body {
        SummaryBody::Stopped { result, error } => {
            let mut lines = vec![format!("deployctl: {error}")];
            if *result == ExitClass::Refused {
                lines.push("deployctl: nothing was changed.".into());
            }
            Shown::Err(lines)
        }
        SummaryBody::Rollout(r) => Shown::Out(rollout_lines(s.command, r)),
        SummaryBody::Status(v) => Shown::Out(status_verdict(v)),
        SummaryBody::Envs { envs } => Shown::Out(envs.iter().flat_map(status_verdict).collect()),
        SummaryBody::History(h) if s.exit() == ExitClass::Refused => Shown::Err(vec![format!(
            "deployctl: no host of {} could be reached",
            h.env
        )]),
        SummaryBody::History(h) if h.entries == 0 => Shown::Out(vec![format!(
            "{}: no orders for this app in the journals",
            h.env
        )]),
        SummaryBody::Logs(l) if s.exit() == ExitClass::Refused => Shown::Err(vec![format!(
            "deployctl: no host of {} could be reached",
            l.env
        )]),
        // On stderr, so stdout holds what the command wrote there and nothing else.
        SummaryBody::Exec(e) => Shown::Err(vec![exec_line(e, s.exit())]),
        SummaryBody::Maintenance(m) => Shown::Out(maintenance_lines(m)),
        SummaryBody::Approvals(a) if s.exit() == ExitClass::Refused => Shown::Err(a.lines()),
        SummaryBody::Approvals(a) => Shown::Out(a.lines()),
        SummaryBody::Setup(v) => Shown::Out(v.lines()),
        SummaryBody::Doctor(d) => Shown::Out(vec![d.line()]),
        SummaryBody::Keys(k) => Shown::Out(vec![
            format!(
                "wrote {} (private, mode 0600) and {}",
                k.private_key.display(),
                k.public_key.display()
            ),
            "add this line to /etc/deploy-agent/allowed_signers on every host that should trust it:"
                .into(),
            k.allowed_signers.clone(),
        ]),
        SummaryBody::Init(i) => Shown::Out(i.lines()),
        SummaryBody::History(_) | SummaryBody::Logs(_) | SummaryBody::Demo(_) => {
            Shown::Out(Vec::new())
        }
    }
}

fn setup_state(state: crate::output::StepState) -> &'static str {
    match state {
        crate::output::StepState::Planned => "would",
        crate::output::StepState::Done => "done",
        crate::output::StepState::Failed => "FAILED",
    }
}

/// `status`'s last lines: whether every host runs one release and is healthy, else which hosts
/// differ from the release most of them run, and how.
fn status_verdict(v: &StatusSummary) -> Vec<String> {
    let release = match v.release.is_empty() {
        true => String::new(),
        false => format!(" ({})", describe_digests(&v.release)),
    };
    let verdict = match (v.consistent, v.healthy) {
        _ if v.reachable < v.hosts => {
            format!(
                "{} of {} host(s) unreachable",
                v.hosts - v.reachable,
                v.hosts
            )
        }
        (true, true) => format!("one release everywhere{release}, all healthy"),
        (true, false) => format!("one release everywhere{release}, NOT all healthy"),
        (false, _) => {
            let hosts: Vec<&str> = v.differing.iter().map(|d| d.host.as_str()).collect();
            format!(
                "NOT one release everywhere: {} differ{} from{release}",
                hosts.join(", "),
                if hosts.len() == 1 { "s" } else { "" }
            )
        }
    };
    let mut lines = vec![format!("{}: {verdict}", v.env)];
    if v.reachable == v.hosts {
        let why = v
            .differing
            .iter()
            .map(|d| format!("  {}: {}", d.host, d.why));
        lines.extend(why);
    }
    lines
}

/// `r/api@sha256:0123456789ab`, and each service on another image: `, web r/web@sha256:…`.
fn release_images(image: &ImageRef, images: &BTreeMap<String, ImageRef>) -> String {
    let mut text = short_image(&image.to_string());
    for (service, other) in images {
        text.push_str(&format!(", {service} {}", short_image(&other.to_string())));
    }
    text
}

/// How an exec went, with what deployctl exits.
fn maintenance_lines(m: &MaintenanceSummary) -> Vec<String> {
    let what = if m.on {
        "maintenance page up"
    } else {
        "maintenance over"
    };
    let mut lines: Vec<String> = m
        .hosts
        .iter()
        .map(|h| {
            let state = match (h.refused, h.result) {
                (true, _) => "refused (nothing changed)".to_string(),
                (false, Some(OutcomeKind::Succeeded)) => what.to_string(),
                (false, Some(kind)) => kind.to_string(),
                (false, None) => "not sent".to_string(),
            };
            match &h.reason {
                Some(r) if h.result != Some(OutcomeKind::Succeeded) => {
                    format!("  {}: {state}: {r}", h.host)
                }
                _ => format!("  {}: {state}", h.host),
            }
        })
        .collect();
    let services = m.services.join(", ");
    let ok = m
        .hosts
        .iter()
        .filter(|h| h.result == Some(OutcomeKind::Succeeded))
        .count();
    lines.push(if ok == m.hosts.len() {
        let message = m
            .message
            .as_ref()
            .map(|msg| format!(" ({msg:?})"))
            .unwrap_or_default();
        format!("{}: {what} for {services} on every host{message}", m.env)
    } else {
        format!(
            "{}: {what} on {ok} of {} host(s) for {services}",
            m.env,
            m.hosts.len()
        )
    });
    lines
}

fn exec_line(e: &ExecSummary, exit: ExitClass) -> String {
    let took = format!("{:.1}s", e.elapsed_ms as f64 / 1000.0);
    let command: Vec<String> = e.argv.iter().map(|a| shell_quote(a)).collect();
    let what = format!(
        "exec `{}` on {} ({} in {})",
        command.join(" "),
        e.host,
        e.service,
        short_image(&e.image.to_string())
    );
    let reason = e.reason.as_deref().unwrap_or("no reason given");
    match (e.result, e.command_exit_code) {
        (ExecResult::Exited, Some(0)) => format!("{what}: exited 0 after {took}"),
        (ExecResult::Exited, Some(code)) => format!(
            "{what}: exited with code {code} after {took} (deployctl exits {})",
            exit.code()
        ),
        (ExecResult::Refused, _) => {
            format!("deployctl: {what}: refused, nothing ran (exit 3): {reason}")
        }
        _ => format!(
            "deployctl: {what}: did not run to its end (exit {}): {reason}",
            exit.code()
        ),
    }
}

/// A rollout's result: a headline with the exit code's meaning, then one line per host.
fn rollout_lines(command: &str, r: &RolloutSummary) -> Vec<String> {
    let what = format!(
        "{command} {} ({}) to {}",
        r.reference,
        release_images(&r.image, &r.images),
        r.env
    );
    let took = proto::time::format_duration(Duration::from_millis(r.elapsed_ms));
    let mut lines = vec![match r.result {
        RolloutResult::Succeeded => {
            format!("{what}: succeeded on {} host(s) in {took}", r.hosts.len())
        }
        RolloutResult::RolledBack => format!(
            "{what}: FAILED after {took}; every host is back on its previous version (exit 1)"
        ),
        RolloutResult::Inconsistent => format!(
            "{what}: FAILED after {took}; the env is NOT consistent and needs a human (exit 2)"
        ),
        RolloutResult::Refused => format!("{what}: refused; nothing was changed (exit 3)"),
    }];
    for h in &r.hosts {
        lines.push(format!("  {}: {}", h.host, host_line(r, h)));
        if let Some(o) = &h.outcome {
            lines.extend(log_tail(o, "    ", "    "));
        }
    }
    for bad in &r.inconsistent {
        lines.push(format!("  NOT CONSISTENT: {}: {}", bad.host, bad.why));
    }
    lines
}

/// What each service of an outcome runs now, or ran before the order, in short.
fn outcome_digests(o: &Outcome, before: bool) -> Option<String> {
    let digests: Digests = o
        .services
        .iter()
        .filter_map(|(s, r)| {
            let d = if before {
                &r.previous_digest
            } else {
                &r.digest
            };
            Some((s.clone(), d.clone()?))
        })
        .collect();
    (!digests.is_empty()).then(|| describe_digests(&digests))
}

/// What changed on one host, in words.
fn host_line(r: &RolloutSummary, h: &HostRollout) -> String {
    let now = |o: &Outcome| outcome_digests(o, false);
    let mut text = match (&h.state, &h.outcome) {
        (
            HostState::Succeeded {
                changed: true,
                previous,
            },
            Some(o),
        ) => format!(
            "changed to {}{}{}",
            now(o).unwrap_or_else(|| r.image.short_digest().to_string()),
            outcome_digests(o, true)
                .or_else(|| Some(short_digest(previous.as_ref()?).to_string()))
                .map(|p| format!(" (was {p})"))
                .unwrap_or_else(|| " (first deploy)".into()),
            if h.run_migration {
                ", migration ran here"
            } else {
                ""
            }
        ),
        // Its order succeeded, and then the rollout judged it failed (a canary that regressed).
        (state @ (HostState::Failed { .. } | HostState::Broken { .. }), Some(o))
            if o.kind == OutcomeKind::Succeeded =>
        {
            describe(state)
        }
        (state, Some(o)) if !matches!(state, HostState::Succeeded { .. }) => {
            let serving = now(o).map(|d| format!("; serving {d}")).unwrap_or_default();
            format!("{}{serving}", outcome_line(o))
        }
        (state, _) => describe(state),
    };
    if let Some(rb) = &h.rollback {
        let back = h
            .rollback_outcome
            .as_ref()
            .and_then(now)
            .map(|d| format!(" to {d}"))
            .unwrap_or_default();
        text.push_str(&format!("; rolled back{back}: {}", describe(rb)));
    }
    text
}

/// A service's health with why it is not healthy: `stopped (exited 137)`, `crash-loop (exited 1)`,
/// `unhealthy (oom-killed 137)`.
fn health_shown(svc: &proto::wire::ServiceStatus) -> String {
    match (svc.reason, svc.exit_code) {
        (Some(r), Some(code)) => format!("{} ({r} {code})", svc.health),
        (Some(r), None) => format!("{} ({r})", svc.health),
        (None, _) => svc.health.to_string(),
    }
}

/// The status table's rows for one host: one per service, one per running job.
fn status_rows(s: &HostStatus) -> Vec<Vec<String>> {
    let row = |cells: [&str; 9]| cells.iter().map(|c| c.to_string()).collect::<Vec<_>>();
    let (version, services, running) = match &s.answer {
        HostAnswer::Down { error, .. } => {
            return vec![row([&s.host, "NO", "-", "-", "-", "-", "-", "-", error])];
        }
        HostAnswer::Up {
            agent_version,
            services,
            running,
            ..
        } => (agent_version.as_str(), services, running),
    };
    let mut rows = Vec::new();
    if services.is_empty() {
        rows.push(row([
            &s.host,
            "yes",
            version,
            "-",
            "-",
            "-",
            "missing",
            "-",
            "nothing deployed",
        ]));
    }
    for svc in services {
        let mut last = svc
            .last_outcome
            .map(|o| o.to_string())
            .unwrap_or_else(|| "-".into());
        if let Some(message) = &svc.maintenance {
            last = format!("{last}; maintenance: {message:?}");
        }
        rows.push(row([
            &s.host,
            "yes",
            version,
            &svc.service,
            svc.reference.as_deref().unwrap_or("-"),
            svc.image.as_ref().map(|i| i.short_digest()).unwrap_or("-"),
            &health_shown(svc),
            &svc.since.to_string(),
            &last,
        ]));
    }
    for job in running {
        rows.push(row([
            &s.host,
            "yes",
            version,
            "*",
            "-",
            "-",
            "busy",
            &job.since.to_string(),
            &format!("running {}", describe_holder(job)),
        ]));
    }
    rows
}

/// One journal entry; a release of several images shows each service's digest, and each
/// service on a ref of its own (`--set`) that ref.
fn history_row(host: &str, e: &HistoryEntry) -> Vec<String> {
    let mut reference = e.reference.clone();
    for (service, r) in &e.refs {
        reference.push_str(&format!(" {service}={r}"));
    }
    let digests: Digests = e
        .services
        .iter()
        .map(|s| (s.clone(), e.image_of(s).digest().to_string()))
        .collect();
    vec![
        e.accepted_at.to_string(),
        host.to_string(),
        e.action.to_string(),
        reference,
        match e.images.is_empty() {
            true => e.image.short_digest().to_string(),
            false => describe_digests(&digests),
        },
        e.outcome
            .map(|o| o.to_string())
            .unwrap_or_else(|| "running".into()),
        e.duration_ms
            .map(|ms| format!("{:.1}s", ms as f64 / 1000.0))
            .unwrap_or_else(|| "-".into()),
        if e.run_migration { "yes" } else { "-" }.into(),
        e.issued_by.clone(),
        match &e.override_freeze {
            Some(why) => format!(
                "OVERRODE a freeze ({why:?}); {}",
                e.reason.clone().unwrap_or_default()
            ),
            None => e.reason.clone().unwrap_or_default(),
        },
    ]
}

/// `repo@sha256:0123456789ab` — the digest shortened for progress lines.
pub fn short_image(image: &str) -> String {
    match image.rsplit_once("@sha256:") {
        Some((repo, hex)) => format!("{repo}@sha256:{}", proto::order::short_digest(hex)),
        None => image.to_string(),
    }
}

/// `rolled-back in 9.2s [health-deadline]: not healthy … (previous version back in 812 ms)`.
pub fn outcome_line(o: &Outcome) -> String {
    let took = o.finished_at.since(o.started_at);
    let mut s = format!(
        "{} in {}",
        o.kind,
        proto::time::format_duration(Duration::from_millis(took.as_millis() as u64))
    );
    if let Some(f) = o.failure {
        s.push_str(&format!(
            " [{}]",
            serde_json::to_value(f)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default()
        ));
    }
    if let Some(r) = &o.reason {
        s.push_str(&format!(": {r}"));
    }
    if let Some(ms) = o.rollback_ms {
        s.push_str(&format!(" (previous version back in {ms} ms)"));
    }
    s
}

/// Left-aligned text columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            s.push_str(cell);
            if i + 1 < cells.len() {
                let pad = widths[i].saturating_sub(cell.chars().count()) + 2;
                s.push_str(&" ".repeat(pad));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(header.to_vec());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests;
