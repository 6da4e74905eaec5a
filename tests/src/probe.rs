//! Traffic during a deploy, to prove it loses none: a [`Probe`] GETs a URL at a fixed rate, each
//! request on a fresh TCP connection (as a new client would come) and on a thread of its own, so
//! a slow or hanging reply never delays the schedule. [`Probe::stop`] returns a [`ProbeReport`]:
//! how many requests, which failed, and which versions answered in turn.
//!
//! ```no_run
//! # fn main() -> harness::Result<()> {
//! let probe = harness::probe::Probe::start("http://127.0.0.1:8080/version", 50);
//! // … deploy …
//! let report = probe.stop();
//! assert_eq!(report.failed, 0, "{report}");
//! assert_eq!(report.versions(), ["v1", "v2"]);
//! # Ok(()) }
//! ```

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::net::http_get;

/// The longest one request may take (connect, send, read) before it counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How many failures a report describes.
const EXAMPLES: usize = 5;

/// One request and what came of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// When it was sent, from the probe's start.
    pub at: Duration,
    /// Status and body, or why there was no reply.
    pub reply: std::result::Result<(u16, String), String>,
}

impl Record {
    /// A 2xx reply.
    pub fn is_ok(&self) -> bool {
        matches!(self.reply, Ok((status, _)) if (200..300).contains(&status))
    }

    /// `+1.234s: 502 <body>` or `+1.234s: <error>`, for messages.
    pub fn describe(&self) -> String {
        let what = match &self.reply {
            Ok((status, body)) => {
                let body: String = body.trim().chars().take(120).collect();
                format!("{status} {body:?}")
            }
            Err(e) => e.clone(),
        };
        format!("+{:.3}s: {what}", self.at.as_secs_f64())
    }
}

/// Requests in flight and done, shared by the scheduler and the request threads.
type Records = Arc<Mutex<Vec<Record>>>;

/// GETs a URL `per_second` times a second until stopped; see the module doc.
pub struct Probe {
    url: String,
    started: Instant,
    records: Records,
    stop: Option<mpsc::Sender<()>>,
    scheduler: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe")
            .field("url", &self.url)
            .field("elapsed", &self.elapsed())
            .finish_non_exhaustive()
    }
}

impl Probe {
    /// Starts probing `url` (plain `http://host:port/path`) at once.
    pub fn start(url: &str, per_second: u32) -> Probe {
        let period = Duration::from_secs(1) / per_second.max(1);
        let started = Instant::now();
        let records: Records = Arc::default();
        let (stop, stopped) = mpsc::channel();
        let scheduler = {
            let url = url.to_string();
            let records = Arc::clone(&records);
            thread::spawn(move || schedule(&url, started, period, &records, &stopped))
        };
        Probe {
            url: url.to_string(),
            started,
            records,
            stop: Some(stop),
            scheduler: Some(scheduler),
        }
    }

    /// Time since the probe started, the clock of [`Record::at`] (to mark windows for
    /// [`ProbeReport::window`]).
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The requests answered (or failed) so far, e.g. to wait until a version shows.
    pub fn snapshot(&self) -> ProbeReport {
        let records = self
            .records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        ProbeReport::from_records(records)
    }

    /// Stops sending, waits for the requests in flight (at most [`REQUEST_TIMEOUT`] and a bit)
    /// and reports on every request.
    pub fn stop(mut self) -> ProbeReport {
        self.halt();
        self.snapshot()
    }

    fn halt(&mut self) {
        drop(self.stop.take());
        if let Some(scheduler) = self.scheduler.take() {
            let _ = scheduler.join();
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.halt();
    }
}

/// The scheduler: one request thread every `period` from `started`, until `stopped` says so
/// (a message or the sender dropped); then waits for every request thread.
fn schedule(
    url: &str,
    started: Instant,
    period: Duration,
    records: &Records,
    stopped: &mpsc::Receiver<()>,
) {
    let mut requests: Vec<JoinHandle<()>> = Vec::new();
    for n in 0u32.. {
        // Pacing, not synchronisation: the wait ends early when the probe is stopped.
        let due = started + period * n;
        match stopped.recv_timeout(due.saturating_duration_since(Instant::now())) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
        }
        let at = started.elapsed();
        let (url, done) = (url.to_string(), Arc::clone(records));
        let spawned = thread::Builder::new()
            .name("probe-request".into())
            .spawn(move || {
                let reply = http_get(&url, REQUEST_TIMEOUT)
                    .map(|r| (r.status, r.body))
                    .map_err(|e| e.to_string());
                push(&done, Record { at, reply });
            });
        match spawned {
            Ok(handle) => requests.push(handle),
            Err(e) => push(
                records,
                Record {
                    at,
                    reply: Err(format!("no thread for the request: {e}")),
                },
            ),
        }
        requests.retain(|h| !h.is_finished());
    }
    for handle in requests {
        let _ = handle.join();
    }
}

fn push(records: &Records, record: Record) {
    records
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(record);
}

/// What a probe saw: every request in the order they were sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    pub records: Vec<Record>,
    pub total: usize,
    /// Requests without a 2xx reply (errors, timeouts, other statuses).
    pub failed: usize,
    /// The first few failures, described ([`Record::describe`]).
    pub examples: Vec<String>,
}

impl ProbeReport {
    /// The report on these requests, sorted by when they were sent (they finish in any order).
    pub fn from_records(mut records: Vec<Record>) -> ProbeReport {
        records.sort_by_key(|r| r.at);
        let failures: Vec<&Record> = records.iter().filter(|r| !r.is_ok()).collect();
        ProbeReport {
            total: records.len(),
            failed: failures.len(),
            examples: failures
                .iter()
                .take(EXAMPLES)
                .map(|r| r.describe())
                .collect(),
            records,
        }
    }

    /// The bodies (trimmed) of the successful replies, consecutive repeats collapsed: a deploy
    /// v1 → v2 that flips exactly once reads `["v1", "v2"]`; one that wavers, `["v1", "v2",
    /// "v1", "v2"]`. Failures do not break a run.
    pub fn versions(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for record in self.records.iter().filter(|r| r.is_ok()) {
            if let Ok((_, body)) = &record.reply {
                let body = body.trim();
                if out.last().map(String::as_str) != Some(body) {
                    out.push(body.to_string());
                }
            }
        }
        out
    }

    /// [`Self::versions`], but a reply of the version just replaced, to a request sent within
    /// `overlap` of the first reply of its successor, does not count as a flip back: Caddy 2.6
    /// starts a new config's listener (SO_REUSEPORT) before it closes the old config's, and for
    /// those few milliseconds the kernel may hand a new connection to either, the old one still
    /// routing to the old upstream. Such replies are [`Self::reload_blips`].
    pub fn settled_versions(&self, overlap: Duration) -> Vec<String> {
        self.settle(overlap).0
    }

    /// How many replies [`Self::settled_versions`] set aside as the reload overlap's.
    pub fn reload_blips(&self, overlap: Duration) -> usize {
        self.settle(overlap).1
    }

    fn settle(&self, overlap: Duration) -> (Vec<String>, usize) {
        let mut out: Vec<String> = Vec::new();
        let mut changed_at = Duration::ZERO;
        let mut blips = 0;
        for record in self.records.iter().filter(|r| r.is_ok()) {
            let Ok((_, body)) = &record.reply else {
                continue;
            };
            let body = body.trim();
            if out.last().map(String::as_str) == Some(body) {
                continue;
            }
            let previous = out.len().checked_sub(2).map(|i| out[i].as_str());
            if previous == Some(body) && record.at < changed_at + overlap {
                blips += 1;
                continue;
            }
            out.push(body.to_string());
            changed_at = record.at;
        }
        (out, blips)
    }

    /// The requests sent in `from..to` (probe time, [`Probe::elapsed`]), e.g. during one deploy.
    pub fn window(&self, from: Duration, to: Duration) -> ProbeReport {
        ProbeReport::from_records(
            self.records
                .iter()
                .filter(|r| r.at >= from && r.at < to)
                .cloned()
                .collect(),
        )
    }
}

/// How long after a switch an answer of the replaced version is Caddy's reload overlap (see
/// [`ProbeReport::settled_versions`]), not a flip back.
pub const RELOAD_OVERLAP: Duration = Duration::from_millis(250);

impl std::fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests, {} failed; versions {:?}",
            self.total,
            self.failed,
            self.versions()
        )?;
        if !self.examples.is_empty() {
            write!(f, "; failures: {}", self.examples.join("; "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;

    use super::*;

    fn rec(ms: u64, reply: std::result::Result<(u16, &str), &str>) -> Record {
        Record {
            at: Duration::from_millis(ms),
            reply: reply
                .map(|(s, b)| (s, b.to_string()))
                .map_err(str::to_string),
        }
    }

    #[test]
    fn reports_count_failures_and_collapse_versions() {
        // (records in completion order, total, failed, versions)
        let cases: Vec<(Vec<Record>, usize, usize, Vec<&str>)> = vec![
            (vec![], 0, 0, vec![]),
            (
                vec![rec(0, Ok((200, "v1"))), rec(10, Ok((200, "v1\n")))],
                2,
                0,
                vec!["v1"],
            ),
            (
                // finished out of order: sorted by when sent
                vec![
                    rec(20, Ok((200, "v2"))),
                    rec(0, Ok((200, "v1"))),
                    rec(10, Ok((200, "v1"))),
                    rec(30, Ok((200, "v2"))),
                ],
                4,
                0,
                vec!["v1", "v2"],
            ),
            (
                vec![
                    rec(0, Ok((200, "v1"))),
                    rec(10, Err("connection reset")),
                    rec(20, Ok((502, "bad gateway"))),
                    rec(30, Ok((200, "v1"))),
                    rec(40, Ok((301, ""))),
                    rec(50, Ok((200, "v2"))),
                    rec(60, Ok((200, "v1"))),
                ],
                7,
                3,
                vec!["v1", "v2", "v1"],
            ),
        ];
        for (records, total, failed, versions) in cases {
            let report = ProbeReport::from_records(records.clone());
            assert_eq!(
                (report.total, report.failed, report.versions()),
                (
                    total,
                    failed,
                    versions.iter().map(|v| v.to_string()).collect()
                ),
                "{records:?}"
            );
            assert_eq!(report.examples.len(), failed);
        }
    }

    #[test]
    fn an_old_reply_within_the_reload_overlap_is_no_flip_back() {
        let ok = |ms, v| rec(ms, Ok((200, v)));
        let overlap = Duration::from_millis(100);
        let cases: Vec<(Vec<Record>, Vec<&str>, usize)> = vec![
            (
                vec![ok(0, "v1"), ok(20, "v2"), ok(40, "v1"), ok(60, "v2")],
                vec!["v1", "v2"],
                1,
            ),
            (
                vec![ok(0, "v1"), ok(20, "v2"), ok(200, "v1")],
                vec!["v1", "v2", "v1"],
                0,
            ),
            (
                vec![
                    ok(0, "v1"),
                    ok(20, "v2"),
                    ok(40, "v1"),
                    ok(300, "v1"),
                    ok(500, "v2"),
                ],
                vec!["v1", "v2", "v1", "v2"],
                1,
            ),
            (
                vec![ok(0, "v1"), ok(20, "v2"), ok(40, "v3")],
                vec!["v1", "v2", "v3"],
                0,
            ),
        ];
        for (records, want, blips) in cases {
            let report = ProbeReport::from_records(records.clone());
            assert_eq!(
                (
                    report.settled_versions(overlap),
                    report.reload_blips(overlap)
                ),
                (want.iter().map(|v| v.to_string()).collect(), blips),
                "{records:?}"
            );
        }
    }

    #[test]
    fn failures_are_described_a_few_at_most() {
        let records: Vec<Record> = (0..8)
            .map(|n| rec(n * 100, Err("timed out")))
            .chain([rec(1, Ok((503, "back soon\n")))])
            .collect();
        let report = ProbeReport::from_records(records);
        assert_eq!((report.total, report.failed), (9, 9));
        assert_eq!(
            report.examples,
            [
                "+0.000s: timed out",
                "+0.001s: 503 \"back soon\"",
                "+0.100s: timed out",
                "+0.200s: timed out",
                "+0.300s: timed out",
            ]
        );
        let text = report.to_string();
        assert!(text.starts_with("9 requests, 9 failed; versions []; failures: +0.000s"));
    }

    #[test]
    fn windows_take_the_requests_sent_in_them() {
        let report = ProbeReport::from_records(vec![
            rec(0, Ok((200, "v1"))),
            rec(100, Err("refused")),
            rec(200, Ok((200, "v2"))),
            rec(300, Ok((200, "v2"))),
        ]);
        let w = report.window(Duration::from_millis(100), Duration::from_millis(300));
        assert_eq!((w.total, w.failed, w.versions()), (2, 1, vec!["v2".into()]));
    }

    /// A local server that answers `v1` to every connection, the first one only after `delay`.
    fn server(delay: Duration) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            for (n, conn) in listener.incoming().enumerate() {
                let Ok(mut conn) = conn else { continue };
                thread::spawn(move || {
                    let mut buf = [0u8; 1024];
                    let _ = conn.read(&mut buf);
                    if n == 0 {
                        thread::sleep(delay);
                    }
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nv1",
                    );
                });
            }
        });
        format!("http://{addr}/version")
    }

    #[test]
    fn a_slow_reply_does_not_hold_up_the_schedule() {
        const FIRST: Duration = Duration::from_millis(20);
        let url = server(Duration::from_millis(1500));
        let probe = Probe::start(&url, 50);
        // 20 replies at 50/s take 0.4 s: all of them while the first is still pending.
        let quick = crate::wait::wait_until(
            "20 replies while the first is pending",
            Duration::from_secs(10),
            || {
                let seen = probe.snapshot();
                // Only the first request is sent before the second is due, at 20 ms.
                if seen.records.iter().any(|r| r.at < FIRST) {
                    Err("the first request came back already".to_string())
                } else if seen.total >= 20 {
                    Ok(seen.total)
                } else {
                    Err(format!("{} so far", seen.total))
                }
            },
        );
        let report = probe.stop();
        assert!(quick.is_ok(), "{quick:?}; {report}");
        assert_eq!(report.failed, 0, "{report}");
        assert_eq!(report.versions(), ["v1"]);
        assert!(
            report.records.first().is_some_and(|r| r.at < FIRST),
            "{report:?}"
        );
    }
}
