//! The health model's judgement (README, "The health model"), pure: what a service's health
//! is, given the engine's one look at it and the deaths of its container the event stream
//! reported; when a run of deaths is a crash loop; and why a service is not healthy.
//!
//! The rule, in one place:
//! - a **death** is a `die` event of the service's serving container (a restart policy's
//!   restart, a crash, an OOM kill, a `docker kill` from outside);
//! - a service is in a **crash loop** when its container died at least [`CRASH_LOOP_DEATHS`]
//!   times within [`CRASH_LOOP_WINDOW`] and has not stayed up for [`SETTLE`] since the last
//!   death, while the engine keeps it running or restarting (a stopped container loops no more);
//! - a container that died is not healthy again until it has stayed up for [`SETTLE`]: a
//!   restart that answers its probe for a moment is no recovery (the engine's own restart
//!   backoff resets after 10 s up, too);
//! - the reason of a death is `oom-killed` when the engine reported an OOM kill for it (the
//!   `oom` event, or the container's `OOMKilled` state), else `exited`.

use std::time::Duration;

use proto::time::Timestamp;
use proto::wire::{Health, HealthReason};
use serde::{Deserialize, Serialize};

/// Deaths within [`CRASH_LOOP_WINDOW`] that make a crash loop.
pub const CRASH_LOOP_DEATHS: usize = 3;
/// How far back deaths count. Long enough that a loop at the engine's longest restart delay
/// (1 minute) stays named.
pub const CRASH_LOOP_WINDOW: Duration = Duration::from_secs(300);
/// How long a container must stay up after a death to count as healthy again.
pub const SETTLE: Duration = Duration::from_secs(10);
/// An `oom` event names the `die` that follows it within this long.
pub const OOM_NAMES_DEATH_WITHIN: Duration = Duration::from_secs(5);
/// Deaths kept per service: the window needs no more.
const KEEP_DEATHS: usize = 10;

/// One death of a service's serving container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Death {
    pub at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub oom: bool,
}

impl Death {
    fn reason(&self) -> HealthReason {
        if self.oom {
            HealthReason::OomKilled
        } else {
            HealthReason::Exited
        }
    }
}

/// Adds a death, forgetting those out of the window and beyond [`KEEP_DEATHS`].
pub fn record_death(deaths: &mut Vec<Death>, death: Death) {
    deaths.push(death);
    deaths.retain(|d| death.at.since(d.at) <= CRASH_LOOP_WINDOW);
    let excess = deaths.len().saturating_sub(KEEP_DEATHS);
    deaths.drain(..excess);
}

/// What the engine showed of a service in one look ([`deploy::ServiceSnapshot`]'s part the
/// model reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Look {
    /// The engine's verdict from state and probe (never [`Health::CrashLoop`]).
    pub health: Health,
    /// When the container last started, while it runs.
    pub up_since: Option<Timestamp>,
    pub oom_killed: bool,
    /// While it does not run.
    pub exit_code: Option<i64>,
}

impl Look {
    pub fn of(snap: &deploy::ServiceSnapshot) -> Look {
        Look {
            health: snap.health,
            up_since: snap.up_since,
            oom_killed: snap.oom_killed,
            exit_code: snap.exit_code,
        }
    }
}

/// The model's verdict on a service: its health and why it is not healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub health: Health,
    pub reason: Option<HealthReason>,
    pub exit_code: Option<i64>,
}

impl Seen {
    /// A health with no reason known (a deploy just proved the service healthy, say).
    pub fn plain(health: Health) -> Seen {
        Seen {
            health,
            reason: None,
            exit_code: None,
        }
    }
}

/// The service's health from one look and its recorded deaths (oldest first), at `now`.
pub fn judge(look: &Look, deaths: &[Death], now: Timestamp) -> Seen {
    let recent: Vec<&Death> = deaths
        .iter()
        .filter(|d| now.since(d.at) <= CRASH_LOOP_WINDOW)
        .collect();
    let last = recent.last().copied();
    let settled = last.is_none_or(|d| {
        look.up_since
            .is_some_and(|up| now.since(up.max(d.at)) >= SETTLE)
    });
    let seen = |health, reason, exit_code| Seen {
        health,
        reason,
        exit_code,
    };
    match (look.health, last) {
        (Health::Missing, _) => seen(Health::Missing, Some(HealthReason::Removed), None),
        (Health::Stopped, Some(d)) => seen(Health::Stopped, Some(d.reason()), d.exit_code),
        (Health::Stopped, None) => seen(
            Health::Stopped,
            Some(exit_reason(look.oom_killed)),
            look.exit_code,
        ),
        (_, Some(d)) if !settled && recent.len() >= CRASH_LOOP_DEATHS => {
            seen(Health::CrashLoop, Some(d.reason()), d.exit_code)
        }
        (_, Some(d)) if !settled => seen(Health::Unhealthy, Some(d.reason()), d.exit_code),
        (Health::Unhealthy, _) if look.up_since.is_some() => {
            seen(Health::Unhealthy, Some(HealthReason::ProbeFailed), None)
        }
        // Restarting, with no death recorded (the event stream was down when it died).
        (Health::Unhealthy, _) => seen(
            Health::Unhealthy,
            Some(exit_reason(look.oom_killed)),
            look.exit_code,
        ),
        (health, _) => Seen::plain(health),
    }
}

fn exit_reason(oom_killed: bool) -> HealthReason {
    if oom_killed {
        HealthReason::OomKilled
    } else {
        HealthReason::Exited
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_000_000;

    fn at(secs: u64) -> Timestamp {
        Timestamp::from_unix_secs(T0 + secs)
    }

    fn died(secs: u64, code: i64, oom: bool) -> Death {
        Death {
            at: at(secs),
            exit_code: Some(code),
            oom,
        }
    }

    fn look(health: Health, up_since: Option<u64>) -> Look {
        Look {
            health,
            up_since: up_since.map(at),
            oom_killed: false,
            exit_code: None,
        }
    }

    /// What the engine shows, the deaths, now, and the expected health, reason and exit code.
    type Case = (
        Look,
        Vec<Death>,
        u64,
        Health,
        Option<HealthReason>,
        Option<i64>,
    );

    #[test]
    fn the_model_names_crash_loops_and_oom_kills() {
        use Health::*;
        use HealthReason::*;
        let exited = |s| died(s, 1, false);
        // (what the engine shows, deaths, now, expected health, reason, exit code)
        let cases: Vec<Case> = vec![
            // Nothing died: the engine's look stands.
            (look(Healthy, Some(0)), vec![], 100, Healthy, None, None),
            (look(Unknown, None), vec![], 100, Unknown, None, None),
            (
                look(Unhealthy, Some(0)),
                vec![],
                100,
                Unhealthy,
                Some(ProbeFailed),
                None,
            ),
            (
                look(Missing, None),
                vec![],
                100,
                Missing,
                Some(Removed),
                None,
            ),
            // Killed from outside and left stopped.
            (
                look(Stopped, None),
                vec![died(100, 137, false)],
                100,
                Stopped,
                Some(Exited),
                Some(137),
            ),
            // ...and still stopped long after: the death out of the window, the engine's code.
            (
                Look {
                    exit_code: Some(137),
                    ..look(Stopped, None)
                },
                vec![died(100, 137, false)],
                1000,
                Stopped,
                Some(Exited),
                Some(137),
            ),
            // One death, restarted by the engine at once: not healthy until it stayed up 10 s.
            (
                look(Healthy, Some(100)),
                vec![exited(100)],
                101,
                Unhealthy,
                Some(Exited),
                Some(1),
            ),
            (
                look(Healthy, Some(100)),
                vec![exited(100)],
                109,
                Unhealthy,
                Some(Exited),
                Some(1),
            ),
            (
                look(Healthy, Some(100)),
                vec![exited(100)],
                110,
                Healthy,
                None,
                None,
            ),
            // An OOM kill, the engine restarting it.
            (
                look(Unhealthy, None),
                vec![died(100, 137, true)],
                100,
                Unhealthy,
                Some(OomKilled),
                Some(137),
            ),
            // Two deaths are no loop yet.
            (
                look(Unhealthy, None),
                vec![exited(90), exited(100)],
                100,
                Unhealthy,
                Some(Exited),
                Some(1),
            ),
            // Three within 5 minutes: a crash loop, up or restarting.
            (
                look(Unhealthy, None),
                vec![exited(1), exited(2), exited(4)],
                4,
                CrashLoop,
                Some(Exited),
                Some(1),
            ),
            (
                look(Healthy, Some(5)),
                vec![exited(1), exited(2), exited(4)],
                6,
                CrashLoop,
                Some(Exited),
                Some(1),
            ),
            (
                look(Unhealthy, None),
                vec![exited(0), died(60, 137, true), exited(290)],
                295,
                CrashLoop,
                Some(Exited),
                Some(1),
            ),
            // The OOM kill named when it was the last death.
            (
                look(Unhealthy, None),
                vec![exited(1), exited(2), died(4, 137, true)],
                4,
                CrashLoop,
                Some(OomKilled),
                Some(137),
            ),
            // Up 10 s since the last death: the loop is over, whatever the count.
            (
                look(Healthy, Some(5)),
                vec![exited(1), exited(2), exited(4)],
                15,
                Healthy,
                None,
                None,
            ),
            // Up for long, but the probe fails: unhealthy, not a loop.
            (
                look(Unhealthy, Some(5)),
                vec![exited(1), exited(2), exited(4)],
                60,
                Unhealthy,
                Some(ProbeFailed),
                None,
            ),
            // Deaths spread wider than the window.
            (
                look(Unhealthy, None),
                vec![exited(0), exited(200), exited(400)],
                400,
                Unhealthy,
                Some(Exited),
                Some(1),
            ),
            // Stopped during a loop: it loops no more.
            (
                look(Stopped, None),
                vec![exited(1), exited(2), died(4, 0, false)],
                5,
                Stopped,
                Some(Exited),
                Some(0),
            ),
            // Removed: deaths do not matter.
            (
                look(Missing, None),
                vec![exited(1), exited(2), exited(4)],
                5,
                Missing,
                Some(Removed),
                None,
            ),
            // Restarting with no death seen (events were down): the engine's OOM flag names it.
            (
                Look {
                    oom_killed: true,
                    exit_code: Some(137),
                    ..look(Unhealthy, None)
                },
                vec![],
                100,
                Unhealthy,
                Some(OomKilled),
                Some(137),
            ),
        ];
        for (i, (look, deaths, now, health, reason, exit_code)) in cases.into_iter().enumerate() {
            let got = judge(&look, &deaths, at(now));
            assert_eq!(
                got,
                Seen {
                    health,
                    reason,
                    exit_code
                },
                "case {i}: {look:?} {deaths:?} at +{now}s"
            );
        }
    }

    #[test]
    fn deaths_are_kept_for_the_window_and_bounded() {
        let mut deaths = Vec::new();
        for s in [0, 100, 250, 301] {
            record_death(&mut deaths, died(s, 1, false));
        }
        let kept: Vec<u64> = deaths.iter().map(|d| d.at.unix_secs() - T0).collect();
        assert_eq!(kept, [100, 250, 301]);
        for s in 302..330 {
            record_death(&mut deaths, died(s, 1, false));
        }
        assert_eq!(deaths.len(), KEEP_DEATHS);
        assert_eq!(deaths.last().map(|d| d.at), Some(at(329)));
    }
}
