//! What the user sees: progress events as they happen and the final result.
//!
//! With `--json` every [`Event`] is one JSON object on stdout and each command ends with one
//! summary object (`"event": "summary"`). Otherwise progress goes to stderr, as one live line
//! per host on a terminal (indicatif) or plain timestamped lines when piped, and results
//! (summaries, tables) go to stdout.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use proto::Timestamp;
use proto::order::Action;
use proto::wire::{JobEvent, Outcome, OutcomeKind, Refusal};
use serde::Serialize;

/// One thing that happened during a command.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Resolved {
        reference: String,
        image: String,
    },
    Connected {
        host: String,
        agent_host: String,
        agent_version: String,
    },
    HostError {
        host: String,
        error: String,
    },
    Submitted {
        host: String,
        order_id: String,
        action: Action,
        image: String,
        run_migration: bool,
    },
    Job {
        host: String,
        job: JobEvent,
    },
    Outcome {
        host: String,
        outcome: Outcome,
    },
    Refused {
        host: String,
        refusal: Refusal,
    },
    RollbackStarted {
        hosts: Vec<String>,
    },
    Note {
        message: String,
    },
}

/// Receives events from every host, possibly concurrently.
pub trait Reporter: Send + Sync {
    fn emit(&self, ev: &Event);
    /// Announces the hosts about to get live lines, in display order.
    fn hosts(&self, _names: &[String]) {}
    /// Ends live lines before results are printed.
    fn finish(&self) {}
}

/// Picks the reporter for this run.
pub fn reporter(json: bool) -> Box<dyn Reporter> {
    if json {
        Box::new(JsonReporter)
    } else if std::io::stderr().is_terminal()
        && std::env::var("TERM").map(|t| t != "dumb").unwrap_or(false)
    {
        Box::new(LiveReporter::new())
    } else {
        Box::new(PlainReporter)
    }
}

/// Prints one JSON object on its own line on stdout.
pub fn print_json<T: Serialize>(value: &T) {
    let mut stdout = std::io::stdout().lock();
    if let Ok(text) = serde_json::to_string(value) {
        let _ = writeln!(stdout, "{text}");
        let _ = stdout.flush();
    }
}

/// Drops progress, for commands whose result shows failures itself.
pub struct Silent;

impl Reporter for Silent {
    fn emit(&self, _ev: &Event) {}
}

struct JsonReporter;

impl Reporter for JsonReporter {
    fn emit(&self, ev: &Event) {
        print_json(ev);
    }
}

struct PlainReporter;

impl Reporter for PlainReporter {
    fn emit(&self, ev: &Event) {
        let mut err = std::io::stderr().lock();
        for line in render(ev) {
            let _ = writeln!(err, "{} {line}", clock());
        }
    }
}

/// One spinner line per host showing its current phase; other lines print above them.
struct LiveReporter {
    multi: MultiProgress,
    bars: Mutex<BTreeMap<String, ProgressBar>>,
}

impl LiveReporter {
    fn new() -> Self {
        LiveReporter {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            bars: Mutex::new(BTreeMap::new()),
        }
    }

    fn bar(&self, host: &str) -> Option<ProgressBar> {
        let mut bars = self.bars.lock().ok()?;
        Some(
            bars.entry(host.to_string())
                .or_insert_with(|| self.new_bar(host))
                .clone(),
        )
    }

    fn new_bar(&self, host: &str) -> ProgressBar {
        let style = ProgressStyle::with_template("{spinner} {prefix:<16} {elapsed:>4} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let bar = self.multi.add(
            ProgressBar::new_spinner()
                .with_style(style)
                .with_prefix(host.to_string()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    }
}

impl Reporter for LiveReporter {
    fn hosts(&self, names: &[String]) {
        for n in names {
            let _ = self.bar(n);
        }
    }

    fn emit(&self, ev: &Event) {
        let host = match ev {
            Event::Connected { host, .. }
            | Event::HostError { host, .. }
            | Event::Submitted { host, .. }
            | Event::Job { host, .. }
            | Event::Outcome { host, .. }
            | Event::Refused { host, .. } => Some(host.as_str()),
            _ => None,
        };
        let lines = render(ev);
        match host.and_then(|h| self.bar(h)) {
            Some(bar) => {
                let mut lines = lines.into_iter();
                if let Some(first) = lines.next() {
                    let status = first
                        .split_once("  ")
                        .map(|(_, rest)| rest.trim().to_string())
                        .unwrap_or(first.clone());
                    match ev {
                        Event::Outcome { .. } | Event::Refused { .. } => {
                            bar.finish_with_message(status)
                        }
                        _ => bar.set_message(status),
                    }
                    // Failures and their log lines stay on screen above the live lines.
                    if matches!(ev, Event::HostError { .. } | Event::Refused { .. })
                        || matches!(ev, Event::Outcome { outcome, .. } if outcome.kind != OutcomeKind::Succeeded)
                    {
                        let _ = self.multi.println(&first);
                    }
                }
                for line in lines {
                    let _ = self.multi.println(line);
                }
            }
            None => {
                for line in lines {
                    let _ = self.multi.println(line);
                }
            }
        }
    }

    fn finish(&self) {
        if let Ok(bars) = self.bars.lock() {
            for bar in bars.values() {
                if !bar.is_finished() {
                    bar.abandon();
                }
            }
        }
    }
}

/// `HH:MM:SS` in UTC, for plain progress lines.
fn clock() -> String {
    let text = Timestamp::now().to_string();
    text.get(11..19).unwrap_or(&text).to_string()
}

/// Human lines for an event; the first is the headline.
pub fn render(ev: &Event) -> Vec<String> {
    match ev {
        Event::Resolved { reference, image } => vec![format!("resolved {reference} → {image}")],
        Event::Connected {
            host,
            agent_host,
            agent_version,
        } => {
            vec![format!(
                "{host}  connected (agent {agent_host}, deploy-agent {agent_version})"
            )]
        }
        Event::HostError { host, error } => vec![format!("{host}  error: {error}")],
        Event::Submitted {
            host,
            order_id,
            action,
            image,
            run_migration,
        } => vec![format!(
            "{host}  {action} {}{} (order {order_id})",
            short_image(image),
            if *run_migration {
                " with migration"
            } else {
                ""
            }
        )],
        Event::Job { host, job: event } => {
            let service = event
                .service
                .as_ref()
                .map(|s| format!("[{s}] "))
                .unwrap_or_default();
            vec![format!(
                "{host}  {}: {service}{}",
                event.phase, event.message
            )]
        }
        Event::Outcome { host, outcome } => {
            let mut lines = vec![format!("{host}  {}", outcome_line(outcome))];
            if outcome.kind != OutcomeKind::Succeeded && !outcome.log_tail.is_empty() {
                lines.push(format!("{host}  last log lines of the failing container:"));
                lines.extend(outcome.log_tail.iter().map(|l| format!("{host}    | {l}")));
            }
            lines
        }
        Event::Refused { host, refusal } => {
            let mut line = format!("{host}  refused ({}): {}", refusal.kind, refusal.message);
            if let Some(h) = &refusal.holder {
                line.push_str(&format!(
                    " [held by {}]",
                    crate::rollout::describe_holder(h)
                ));
            }
            vec![line]
        }
        Event::RollbackStarted { hosts } => vec![format!(
            "rolling back {} host(s) this rollout changed: {}",
            hosts.len(),
            hosts.join(", ")
        )],
        Event::Note { message } => vec![message.clone()],
    }
}

/// `repo@sha256:0123456789ab` — the digest shortened for progress lines.
pub fn short_image(image: &str) -> String {
    match image.rsplit_once("@sha256:") {
        Some((repo, hex)) => format!("{repo}@sha256:{}", &hex[..hex.len().min(12)]),
        None => image.to_string(),
    }
}

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
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                let pad = widths[i].saturating_sub(cell.chars().count()) + 2;
                s.push_str(cell);
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
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let t = table(
            &["HOST", "HEALTH"],
            &[
                vec!["a".into(), "healthy".into()],
                vec!["longer-host".into(), "-".into()],
            ],
        );
        assert_eq!(
            t,
            "HOST         HEALTH\na            healthy\nlonger-host  -\n"
        );
    }

    #[test]
    fn images_shorten() {
        let img = format!("r/web@sha256:{}", "a".repeat(64));
        assert_eq!(short_image(&img), "r/web@sha256:aaaaaaaaaaaa");
        assert_eq!(short_image("x"), "x");
    }

    #[test]
    fn events_serialize_with_their_name() {
        let v = serde_json::to_value(Event::Note {
            message: "hi".into(),
        })
        .unwrap();
        assert_eq!(v, serde_json::json!({"event": "note", "message": "hi"}));
    }
}
