//! `deployctl exec` on the host (README, "One-off commands"): the order's command in a one-off
//! container of the image its service runs, with the service's env_file, volumes and network
//! as the migration borrows them, labelled as ours (`deployctl.role=exec`) and removed
//! afterwards. What the command writes goes to the sink line by line as it comes; its exit code
//! is the outcome's. It changes no service, so there is nothing to undo: recovering an exec a
//! crash interrupted only removes its container.
//!
//! The decisions are pure and tested here: how output bytes become lines ([`Lines`]) and what
//! a command's end means for the outcome ([`ending`]).

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use proto::Order;
use proto::order::{ExecSpec, labels};
use proto::time::Timestamp;
use proto::wire::{FailureClass, Outcome, OutcomeKind, OutputStream, Phase};

use crate::container::{ROLE_LABEL, clear_for_one_off, one_off_spec};
use crate::context::OrderCtx;
use crate::driver;
use crate::runtime::{RunState, RuntimeError};
use crate::{Engine, EventSink};

/// `deployctl.role` of an exec's container.
pub const ROLE_EXEC: &str = "exec";
/// The longest line passed on whole; a longer one goes in pieces (a frame must hold it).
pub const MAX_LINE: usize = 16 * 1024;
/// How often a command whose output has ended is looked at until the engine says it exited.
const POLL: Duration = Duration::from_millis(100);

/// How a command ended, as far as the engine could tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum End {
    Exited(i64),
    TimedOut,
    /// It ran, but its exit code could not be learned.
    Lost(String),
    /// The agent stopped while it ran; recovery removed its container.
    Interrupted,
    /// It never ran: its env file, the engine, or the start failed.
    NotRun {
        class: FailureClass,
        why: String,
    },
}

/// What an end makes of the outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ending {
    pub kind: OutcomeKind,
    pub failure: Option<FailureClass>,
    pub reason: String,
    pub exit_code: Option<i64>,
}

/// The outcome of a command: succeeded only when it exited 0. Nothing of a service changed
/// either way, so no end is a rollback.
pub(crate) fn ending(host: &str, exec: &ExecSpec, end: &End) -> Ending {
    let what = format!("host {host}: `{}` in {}", exec.shown(), exec.service);
    let failed = |failure, reason| Ending {
        kind: OutcomeKind::Failed,
        failure: Some(failure),
        reason,
        exit_code: None,
    };
    match end {
        End::Exited(code) => Ending {
            kind: if *code == 0 {
                OutcomeKind::Succeeded
            } else {
                OutcomeKind::Failed
            },
            failure: None,
            reason: if *code == 0 {
                format!("{what} exited 0")
            } else {
                format!("{what} exited with code {code}")
            },
            exit_code: Some(*code),
        },
        End::TimedOut => failed(
            FailureClass::ExecTimeout,
            format!(
                "{what} did not finish within {} and was killed",
                proto::time::format_duration(exec.timeout)
            ),
        ),
        End::Lost(why) => failed(
            FailureClass::Engine,
            format!("{what}: {why}; its exit code is unknown"),
        ),
        End::Interrupted => failed(
            FailureClass::Interrupted,
            format!(
                "{what}: the agent stopped while it ran, so its exit code is unknown; recovery \
                 removed its container"
            ),
        ),
        End::NotRun { class, why } => failed(*class, format!("{what} did not run: {why}")),
    }
}

/// One stream's bytes made lines as chunks come: a line may span chunks and a chunk hold many.
/// A line loses its `\n` (and a `\r` before it); bytes that are not UTF-8 are replaced; a line
/// longer than [`MAX_LINE`] bytes is passed on in pieces, each cut at a character boundary.
#[derive(Debug, Default)]
pub(crate) struct Lines {
    pending: Vec<u8>,
}

impl Lines {
    /// The lines `bytes` complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some((len, used)) = next_piece(&self.pending[start..]) {
            let line = &self.pending[start..start + len];
            let line = if used > len {
                line.strip_suffix(b"\r").unwrap_or(line)
            } else {
                line
            };
            out.push(String::from_utf8_lossy(line).into_owned());
            start += used;
        }
        self.pending.drain(..start);
        out
    }

    /// The last line, when the output did not end with a newline.
    pub fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.pending);
        (!rest.is_empty()).then(|| String::from_utf8_lossy(&rest).into_owned())
    }
}

/// The next line of `rest` as (its length, the bytes it uses up with its newline), or a piece
/// of [`MAX_LINE`] bytes at most of a line that long; `None` until a line is complete.
fn next_piece(rest: &[u8]) -> Option<(usize, usize)> {
    match rest.iter().take(MAX_LINE + 1).position(|&b| b == b'\n') {
        Some(newline) => Some((newline, newline + 1)),
        None if rest.len() > MAX_LINE => {
            // Back off to the start of a character, so no piece ends mid-character.
            let mut cut = MAX_LINE;
            while cut > 0 && rest[cut] & 0xC0 == 0x80 {
                cut -= 1;
            }
            let cut = if cut == 0 { MAX_LINE } else { cut };
            Some((cut, cut))
        }
        None => None,
    }
}

/// The lines of both streams.
#[derive(Debug, Default)]
struct Split {
    stdout: Lines,
    stderr: Lines,
}

impl Split {
    fn of(&mut self, stream: OutputStream) -> &mut Lines {
        match stream {
            OutputStream::Stdout => &mut self.stdout,
            OutputStream::Stderr => &mut self.stderr,
        }
    }
}

/// Runs an exec order to its outcome; never panics.
pub(crate) async fn run(e: &Engine, order: &Order, sink: &dyn EventSink) -> Outcome {
    let started_at = Timestamp::now();
    let cx = OrderCtx::new(e, order, sink);
    let end = match &order.exec {
        Some(exec) => run_command(&cx, exec).await,
        None => End::NotRun {
            class: FailureClass::StartFailed,
            why: "the order carries no command".into(),
        },
    };
    finish(&cx, &end, started_at)
}

/// After a crash: the command's run is lost with the agent; its container goes.
pub(crate) async fn recover(e: &Engine, order: &Order, sink: &dyn EventSink) -> Outcome {
    let started_at = Timestamp::now();
    let cx = OrderCtx::new(e, order, sink);
    let mut wanted = cx.identity_labels();
    wanted.push((ROLE_LABEL.to_string(), ROLE_EXEC.to_string()));
    wanted.push((labels::ORDER.to_string(), order.order_id.clone()));
    let found = match e.rt.list_containers(&wanted).await {
        Ok(found) => found,
        Err(err) => {
            let message = format!("cannot look for the command's container: {err}");
            cx.emit(Phase::Recover, None, &message);
            Vec::new()
        }
    };
    for c in found {
        let service = c.label(labels::SERVICE);
        let message = format!("removing the interrupted command's container {}", c.name);
        cx.emit(Phase::Recover, service, &message);
        if let Err(err) = e.rt.remove_container(&c.id).await {
            let message = format!("could not remove {}: {err}", c.name);
            cx.emit(Phase::Recover, service, &message);
        }
    }
    finish(&cx, &End::Interrupted, started_at)
}

/// Creates, starts and follows the command's container, and removes it whatever happened.
async fn run_command(cx: &OrderCtx<'_>, exec: &ExecSpec) -> End {
    let not_run = |class, why| End::NotRun { class, why };
    let engine = |e: RuntimeError| {
        not_run(
            FailureClass::Engine,
            format!("the Docker engine failed: {e}"),
        )
    };
    let Some(spec) = cx.order.services.get(&exec.service) else {
        let why = format!("the order does not name service {}", exec.service);
        return not_run(FailureClass::StartFailed, why);
    };
    let p = match driver::parts(cx.e, &cx.order.app, &exec.service, spec, false) {
        Ok(p) => p,
        Err(why) => return not_run(FailureClass::StartFailed, why),
    };
    let name = cx.one_off_name(ROLE_EXEC);
    cx.emit(
        Phase::Exec,
        Some(p.name),
        &format!(
            "running `{}` in {} with {}'s env_file, volumes and network as container {name} \
             (timeout {})",
            exec.shown(),
            cx.order.image,
            p.name,
            proto::time::format_duration(exec.timeout)
        ),
    );
    if let Err(e) = clear_for_one_off(cx, &p, &name).await {
        return engine(e);
    }
    let spec = one_off_spec(cx, &p, &name, &cx.order.image, &exec.command, ROLE_EXEC);
    let id = match cx.e.rt.create_container(&spec).await {
        Ok(id) => id,
        Err(e) => return engine(e),
    };
    let end = match cx.e.rt.start_container(&id).await {
        Ok(()) => follow(cx, p.name, &id, exec.timeout).await,
        Err(e) => not_run(FailureClass::StartFailed, format!("could not start: {e}")),
    };
    if let Err(e) = cx.e.rt.remove_container(&id).await {
        let message = format!("could not remove the command's container {name}: {e}");
        cx.emit(Phase::Exec, Some(p.name), &message);
    }
    end
}

/// Passes the command's output on as it comes and waits for its end; kills it at `timeout`.
async fn follow(cx: &OrderCtx<'_>, service: &str, id: &str, timeout: Duration) -> End {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut split = Split::default();
    let mut output = cx.e.rt.follow_output(id);
    let streamed = tokio::time::timeout_at(deadline, async {
        while let Some(chunk) = output.next().await {
            let chunk = chunk?;
            for line in split.of(chunk.stream).push(&chunk.bytes) {
                cx.output(chunk.stream, &line);
            }
        }
        Ok::<(), RuntimeError>(())
    })
    .await;
    drop(output);
    for stream in [OutputStream::Stdout, OutputStream::Stderr] {
        if let Some(last) = split.of(stream).finish() {
            cx.output(stream, &last);
        }
    }
    match streamed {
        Err(_) => return kill(cx, service, id, timeout).await,
        Ok(Err(e)) => {
            let message = format!("cannot follow the command's output ({e}); waiting for its end");
            cx.emit(Phase::Exec, Some(service), &message);
        }
        Ok(Ok(())) => {}
    }
    // The output ends when the container stops; the engine may take a moment to say so.
    loop {
        match cx.e.rt.inspect_container(id).await {
            Ok(Some(c)) if matches!(c.state, RunState::Exited | RunState::Dead) => {
                return c.exit_code.map_or_else(
                    || End::Lost("the engine gave no exit code".into()),
                    End::Exited,
                );
            }
            Ok(Some(_)) => {}
            Ok(None) => return End::Lost("its container vanished before it finished".into()),
            Err(e) => return End::Lost(format!("the Docker engine failed while it ran: {e}")),
        }
        if tokio::time::Instant::now() >= deadline {
            return kill(cx, service, id, timeout).await;
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn kill(cx: &OrderCtx<'_>, service: &str, id: &str, timeout: Duration) -> End {
    let message = format!(
        "the command did not finish within {}; killing it",
        proto::time::format_duration(timeout)
    );
    cx.emit(Phase::Exec, Some(service), &message);
    if let Err(e) = cx.e.rt.kill_container(id).await {
        let message = format!("could not kill the command: {e} (its container is removed next)");
        cx.emit(Phase::Exec, Some(service), &message);
    }
    End::TimedOut
}

fn finish(cx: &OrderCtx<'_>, end: &End, started_at: Timestamp) -> Outcome {
    let fallback = ExecSpec {
        service: "-".into(),
        command: Vec::new(),
        timeout: Duration::ZERO,
    };
    let exec = cx.order.exec.as_ref().unwrap_or(&fallback);
    let e = ending(cx.host(), exec, end);
    cx.emit(Phase::Done, None, &format!("{}: {}", e.kind, e.reason));
    Outcome {
        order_id: cx.order.order_id.clone(),
        rollout_id: cx.order.rollout_id.clone(),
        kind: e.kind,
        failure: e.failure,
        reason: Some(e.reason),
        changed: false,
        log_tail: Vec::new(),
        services: BTreeMap::new(),
        started_at,
        finished_at: Timestamp::now(),
        rollback_ms: None,
        exit_code: e.exit_code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_becomes_lines_as_it_comes() {
        let long = "x".repeat(MAX_LINE + 5);
        let at_boundary = format!("{}é\n", "x".repeat(MAX_LINE - 1));
        // (chunks, lines as they complete, the last line at the end)
        type Case<'a> = (Vec<&'a [u8]>, Vec<String>, Option<&'a str>);
        let cases: Vec<Case> = vec![
            (vec![b"a\nb\n"], vec!["a".into(), "b".into()], None),
            (
                vec![b"he", b"llo\nwor", b"ld"],
                vec!["hello".into()],
                Some("world"),
            ),
            (vec![b"dos\r\n", b"\r"], vec!["dos".into()], Some("\r")),
            (vec![b"\n\n"], vec![String::new(), String::new()], None),
            (vec![b"\xff\n"], vec!["\u{fffd}".into()], None),
            (
                vec![long.as_bytes(), b"\n"],
                vec!["x".repeat(MAX_LINE), "xxxxx".into()],
                None,
            ),
            (
                vec![at_boundary.as_bytes()],
                vec!["x".repeat(MAX_LINE - 1), "é".into()],
                None,
            ),
            (vec![], vec![], None),
        ];
        for (i, (chunks, want, last)) in cases.into_iter().enumerate() {
            let mut lines = Lines::default();
            let got: Vec<String> = chunks.iter().flat_map(|c| lines.push(c)).collect();
            assert_eq!(got, want, "case {i}");
            assert_eq!(lines.finish().as_deref(), last, "case {i}");
        }
    }

    #[test]
    fn an_end_is_an_outcome() {
        let exec = ExecSpec {
            service: "web".into(),
            command: vec!["/app".into(), "exit".into(), "7".into()],
            timeout: Duration::from_secs(300),
        };
        let not_run = End::NotRun {
            class: FailureClass::StartFailed,
            why: "env_file /x: cannot read it".into(),
        };
        let cases = [
            (
                End::Exited(0),
                "succeeded - 0 host h1: `/app exit 7` in web exited 0",
            ),
            (
                End::Exited(7),
                "failed - 7 host h1: `/app exit 7` in web exited with code 7",
            ),
            (
                End::TimedOut,
                "failed ExecTimeout - host h1: `/app exit 7` in web did not finish within 5m and \
                 was killed",
            ),
            (
                End::Lost("its container vanished before it finished".into()),
                "failed Engine - host h1: `/app exit 7` in web: its container vanished before it \
                 finished; its exit code is unknown",
            ),
            (
                End::Interrupted,
                "failed Interrupted - host h1: `/app exit 7` in web: the agent stopped while it \
                 ran, so its exit code is unknown; recovery removed its container",
            ),
            (
                not_run,
                "failed StartFailed - host h1: `/app exit 7` in web did not run: env_file /x: \
                 cannot read it",
            ),
        ];
        for (end, want) in cases {
            let e = ending("h1", &exec, &end);
            let got = format!(
                "{} {} {} {}",
                e.kind,
                e.failure.map_or("-".into(), |f| format!("{f:?}")),
                e.exit_code.map_or("-".into(), |c| c.to_string()),
                e.reason
            );
            assert_eq!(got, want, "{end:?}");
        }
    }
}
