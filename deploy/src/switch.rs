//! The switch plan: from what is observed of one container service and what the order asks,
//! the steps that take the service to the order's version, and the steps that put it back as
//! it was. Pure: every state a service can be found in is a row of a table test, and one
//! executor (`container.rs`) carries out deploys, undos and recoveries alike.

use std::time::Duration;

use proto::Action;
use proto::order::Strategy;

use crate::plan::{NameRole, ProbeMode, aside_name, classify_name, next_name, short_id, time_key};
use crate::runtime::{CheckStatus, ContainerInfo, RunState};

/// Appended to the order id in the name of a version an order set aside while it was already
/// failing, so undo (even after a crash) puts it back as it was instead of waiting for a health
/// it never had. Order ids are alphanumeric, so the dot cannot be part of one.
pub const FAILING_MARK: &str = ".failing";

/// One of a service's containers, as the plan sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub id: String,
    pub digest: Option<String>,
    /// The order that created it.
    pub order: Option<String>,
    pub state: RunState,
    pub finished_at: Option<String>,
}

impl Seen {
    pub fn of(c: &ContainerInfo) -> Self {
        Seen {
            id: c.id.clone(),
            digest: c.label(proto::order::labels::DIGEST).map(str::to_owned),
            order: c.label(proto::order::labels::ORDER).map(str::to_owned),
            state: c.state,
            finished_at: c.finished_at.clone(),
        }
    }

    pub fn running(&self) -> bool {
        self.state == RunState::Running
    }

    fn short_id(&self) -> &str {
        short_id(&self.id)
    }
}

/// A version some order set aside (`<canonical>--<short digest>-<token>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aside {
    /// The order that set it aside, or (for versions returned to the retained set) a short id.
    pub token: String,
    /// It was already failing when it was set aside.
    pub failing: bool,
    pub seen: Seen,
}

/// A container service's containers, sorted by role.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceView {
    /// Serving under the canonical name (or meant to).
    pub canonical: Option<Seen>,
    /// Start-first candidates, normally none outside a running switch.
    pub next: Vec<Seen>,
    pub aside: Vec<Aside>,
}

impl ServiceView {
    /// Sorts containers by their names relative to `canonical`; others are ignored.
    pub fn sort<'a>(
        canonical: &str,
        containers: impl IntoIterator<Item = &'a ContainerInfo>,
    ) -> Self {
        let mut v = ServiceView::default();
        for c in containers {
            match classify_name(canonical, &c.name) {
                NameRole::Canonical => v.canonical = Some(Seen::of(c)),
                NameRole::Next => v.next.push(Seen::of(c)),
                NameRole::Aside { token } => {
                    let (token, failing) = match token.strip_suffix(FAILING_MARK) {
                        Some(t) => (t.to_string(), true),
                        None => (token, false),
                    };
                    v.aside.push(Aside {
                        token,
                        failing,
                        seen: Seen::of(c),
                    });
                }
                NameRole::Other => {}
            }
        }
        v
    }

    /// What `order_id` set aside: the version to put back if the order is undone.
    pub fn aside_by(&self, order_id: &str) -> Option<&Aside> {
        self.aside.iter().find(|a| a.token == order_id)
    }
}

/// How the serving container was doing when the order found it, as the executor judged it
/// (state, restarts, one probe).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    Healthy,
    /// Exited, restarting, crash-looping or failing its probe: nothing to wait for.
    Failing {
        why: String,
    },
}

/// One look at the serving container before a switch: enough to tell a healthy version (worth a
/// start-first handover) from a failing one (replaced at once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentLook {
    pub state: RunState,
    pub restart_count: i64,
    pub exit_code: Option<i64>,
    /// How long it has been up since its last start, when the engine says.
    pub up_for: Option<Duration>,
    pub mode: ProbeMode,
    /// The HTTP probe's verdict (any of a few tries answered), in [`ProbeMode::Http`].
    pub http_ok: Option<bool>,
    pub check: Option<CheckStatus>,
}

/// A container the engine restarted within this window is crash-looping, even if it happens to
/// be up (and answering) at the moment we look.
pub const CRASH_LOOP_WINDOW: Duration = Duration::from_secs(60);

/// Judges the serving container from one look.
pub fn judge_current(look: &CurrentLook) -> Condition {
    let failing = |why: String| Condition::Failing { why };
    match look.state {
        RunState::Running => {}
        RunState::Restarting => {
            return failing(format!(
                "crash-looping: the engine is restarting it (restarted {} times)",
                look.restart_count
            ));
        }
        RunState::Exited | RunState::Dead => {
            return failing(match look.exit_code {
                Some(code) => format!("exited with code {code}"),
                None => "exited".to_string(),
            });
        }
        other => return failing(format!("it is not running ({other:?})").to_lowercase()),
    }
    let recently_restarted =
        look.restart_count > 0 && look.up_for.is_none_or(|up| up < CRASH_LOOP_WINDOW);
    if recently_restarted {
        return failing(format!(
            "crash-looping: restarted {} times by the engine, up for {}",
            look.restart_count,
            look.up_for
                .map(|d| format!("{:.1}s", d.as_secs_f64()))
                .unwrap_or_else(|| "an unknown time".into())
        ));
    }
    match look.mode {
        ProbeMode::Http if look.http_ok != Some(true) => {
            failing("its health probe fails".to_string())
        }
        ProbeMode::ImageCheck if look.check == Some(CheckStatus::Unhealthy) => {
            failing("its HEALTHCHECK reports unhealthy".to_string())
        }
        _ => Condition::Healthy,
    }
}

/// What the plan needs to know about the order and the service.
#[derive(Debug, Clone)]
pub struct SwitchInput<'a> {
    pub order_id: &'a str,
    pub digest: &'a str,
    pub canonical: &'a str,
    pub action: Action,
    pub strategy: Strategy,
    /// The service publishes a fixed host port, which two containers cannot bind at once.
    pub fixed_port: bool,
    pub view: &'a ServiceView,
    /// The serving container's condition; `None` when there is none.
    pub condition: Option<&'a Condition>,
}

/// One step of a switch or of its undo. Container ids are the engine's; the candidate (the
/// container the order creates or brings back) is whatever `Create` or `Revive` produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Left by an earlier, abandoned attempt: delete it.
    RemoveLeftover { id: String },
    /// Take the serving container out of service and keep it: rename it to `name` first (the
    /// name tells a restarted agent that this order had begun stopping it), then stop it.
    SetAside { id: String, name: String },
    /// Create the candidate from the order's image as `name`; with `alias` it answers as the
    /// service on its network at once (stop-first), else only once proven (start-first).
    Create { name: String, alias: bool },
    /// Bring the retained `id` back as the candidate `name` (a rollback to a kept version).
    Revive {
        id: String,
        name: String,
        alias: bool,
    },
    /// Start the candidate and wait until it is proven healthy.
    StartAndProve { name: String },
    /// Start-first: the proven candidate answers as the service and is proven again at its new
    /// address while `old` still serves; then `old` is set aside as `aside` and the candidate
    /// takes the canonical name.
    TakeOver { old: String, aside: String },
    /// Undo: created by the order, so stop and delete it.
    Remove { id: String },
    /// Undo: a retained version the order had brought back; stop it, then return it to the
    /// retained set as `name`.
    Retire { id: String, name: String },
    /// Undo: the previous version gets the canonical name, its network and is started; it is
    /// proven healthy only if it was healthy before the order (`prove`), else it is back as it
    /// was.
    Restore { id: String, prove: bool },
    /// Undo behind a proxy: the serving container leaves the canonical name for `name` and goes
    /// on serving (its route unchanged) while the previous version comes back.
    MakeRoom { id: String, name: String },
    /// Undo behind a proxy: the route goes to the restored version, and `from` (what served
    /// until now) finishes its requests in flight before it is taken off.
    Reroute { from: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchPlan {
    pub steps: Vec<Step>,
    /// Why the plan differs from the plain one, for the journal.
    pub notes: Vec<String>,
    /// False: the service already runs the order's version, healthy (leftovers aside).
    pub changes: bool,
}

/// The steps that take one container service to the order's version.
pub fn plan_switch(i: &SwitchInput<'_>) -> SwitchPlan {
    let mut steps: Vec<Step> = i
        .view
        .next
        .iter()
        .map(|n| Step::RemoveLeftover { id: n.id.clone() })
        .collect();
    let mut notes = Vec::new();
    let current = i.view.canonical.as_ref();
    let failing = match (current, i.condition) {
        (Some(_), Some(Condition::Failing { why })) => Some(why.as_str()),
        // Not running is failing whatever the executor said.
        (Some(c), _) if !c.running() => Some("it is not running"),
        _ => None,
    };
    let same_digest = current.is_some_and(|c| c.digest.as_deref() == Some(i.digest));
    if same_digest && failing.is_none() {
        return SwitchPlan {
            steps,
            notes,
            changes: false,
        };
    }
    if let Some(why) = failing {
        notes.push(if same_digest {
            format!("it already runs this version but is failing ({why}): recreating it")
        } else {
            format!("the serving version is failing ({why}): replacing it without waiting for it")
        });
    }
    let wants_start_first = i.strategy == Strategy::StartFirst;
    if wants_start_first && i.fixed_port {
        notes.push(
            "start-first needs a service without a fixed host port, and this one binds one: \
             switching stop-first"
                .to_string(),
        );
    }
    let start_first = wants_start_first && !i.fixed_port && failing.is_none() && current.is_some();
    let candidate = if start_first {
        next_name(i.canonical)
    } else {
        i.canonical.to_string()
    };
    let token = |failing: bool| {
        if failing {
            format!("{}{FAILING_MARK}", i.order_id)
        } else {
            i.order_id.to_string()
        }
    };
    if !start_first && let Some(c) = current {
        steps.push(Step::SetAside {
            id: c.id.clone(),
            name: aside_name(i.canonical, c.digest.as_deref(), &token(failing.is_some())),
        });
    }
    let retained = match i.action {
        Action::Rollback => i
            .view
            .aside
            .iter()
            .map(|a| &a.seen)
            .filter(|s| !s.running() && s.digest.as_deref() == Some(i.digest))
            .max_by_key(|s| time_key(s.finished_at.as_deref())),
        // An exec never switches a service (`exec.rs` runs it); a deploy creates its version.
        // Exec and maintenance orders never switch a service (`exec.rs`, `lib.rs` run them).
        Action::Deploy | Action::Exec | Action::Maintenance => None,
    };
    steps.push(match retained {
        Some(r) => Step::Revive {
            id: r.id.clone(),
            name: candidate.clone(),
            alias: !start_first,
        },
        None => Step::Create {
            name: candidate.clone(),
            alias: !start_first,
        },
    });
    steps.push(Step::StartAndProve { name: candidate });
    if start_first && let Some(c) = current {
        steps.push(Step::TakeOver {
            old: c.id.clone(),
            aside: aside_name(i.canonical, c.digest.as_deref(), &token(false)),
        });
    }
    SwitchPlan {
        steps,
        notes,
        changes: true,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UndoPlan {
    pub steps: Vec<Step>,
    /// Whether the order had changed anything for this service.
    pub order_changed_it: bool,
    /// The version put back was already failing before the order.
    pub previous_failing: bool,
    /// A previous version ends up serving (false: the service had none before the order).
    pub previous_serving: bool,
}

/// Puts a service back to what it was before `order_id`, judging only from container names and
/// labels: what the order created is removed, what it set aside is restored as it was. A
/// serving container the order never touched is left exactly as it is.
///
/// Behind a proxy (`proxied`) what serves keeps serving until the previous version is back and
/// the route goes to it: it makes room, the previous version is restored, the route switched,
/// and only then is it taken off.
pub fn plan_undo(order_id: &str, canonical: &str, view: &ServiceView, proxied: bool) -> UndoPlan {
    let mine = |s: &Seen| s.order.as_deref() == Some(order_id);
    let take_off = |s: &Seen| {
        if mine(s) {
            Step::Remove { id: s.id.clone() }
        } else {
            Step::Retire {
                id: s.id.clone(),
                name: aside_name(canonical, s.digest.as_deref(), s.short_id()),
            }
        }
    };
    let mut steps: Vec<Step> = view.next.iter().map(take_off).collect();
    let mut changed = !view.next.is_empty();
    let mut previous_failing = false;
    let previous_serving = match (view.aside_by(order_id), &view.canonical) {
        (Some(previous), current) => {
            changed = true;
            previous_failing = previous.failing;
            let restore = Step::Restore {
                id: previous.seen.id.clone(),
                prove: !previous.failing,
            };
            match current.as_ref().filter(|c| proxied && c.running()) {
                Some(c) => {
                    steps.push(Step::MakeRoom {
                        id: c.id.clone(),
                        name: next_name(canonical),
                    });
                    steps.push(restore);
                    steps.push(Step::Reroute { from: c.id.clone() });
                    steps.push(take_off(c));
                }
                None => {
                    steps.extend(current.iter().map(take_off));
                    steps.push(restore);
                }
            }
            true
        }
        // Created by this order with nothing set aside: a first deploy, which leaves nothing.
        (None, Some(c)) if mine(c) => {
            changed = true;
            steps.push(Step::Remove { id: c.id.clone() });
            false
        }
        // Still the version from before the order, which never set it aside: as it was.
        (None, Some(_)) => true,
        (None, None) => false,
    };
    UndoPlan {
        steps,
        order_changed_it: changed,
        previous_failing,
        previous_serving,
    }
}

/// After a restart: is this service already on the ordered digest, with nothing half-done?
pub fn is_settled(digest: &str, view: &ServiceView) -> bool {
    view.next.is_empty()
        && view
            .canonical
            .as_ref()
            .is_some_and(|c| c.running() && c.digest.as_deref() == Some(digest))
}

/// Whether `order_id` left its mark on the service (a container it created or set aside).
pub fn order_touched(order_id: &str, view: &ServiceView) -> bool {
    let mine = |s: &Seen| s.order.as_deref() == Some(order_id);
    view.aside_by(order_id).is_some()
        || view.canonical.as_ref().is_some_and(mine)
        || view.next.iter().any(mine)
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{Expect, expect};

    const O: &str = "ORDER";
    const C: &str = "app-env-web";
    const NEW: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    const OLD: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    fn seen(id: &str, digest: &str, order: &str, state: RunState) -> Seen {
        Seen {
            id: id.into(),
            digest: Some(digest.into()),
            order: Some(order.into()),
            state,
            finished_at: None,
        }
    }

    fn aside(token: &str, failing: bool, s: Seen) -> Aside {
        Aside {
            token: token.into(),
            failing,
            seen: s,
        }
    }

    fn render(steps: &[Step]) -> String {
        steps
            .iter()
            .map(|s| match s {
                Step::RemoveLeftover { id } => format!("remove-leftover {id}"),
                Step::SetAside { id, name } => format!("set-aside {id} as {name}"),
                Step::Create { name, alias } => format!("create {name} alias={alias}"),
                Step::Revive { id, name, alias } => format!("revive {id} as {name} alias={alias}"),
                Step::StartAndProve { name } => format!("start+prove {name}"),
                Step::TakeOver { old, aside } => format!("take-over from {old} ({old} as {aside})"),
                Step::Remove { id } => format!("remove {id}"),
                Step::Retire { id, name } => format!("retire {id} as {name}"),
                Step::Restore { id, prove } => format!("restore {id} prove={prove}"),
                Step::MakeRoom { id, name } => format!("make room: {id} as {name}"),
                Step::Reroute { from } => format!("reroute from {from}"),
            })
            .collect::<Vec<_>>()
            .join("; ")
            .replace(&OLD[7..19], "OLD")
            .replace(&NEW[7..19], "NEW")
    }

    /// The serving container's states the executor can report.
    fn currents() -> Vec<(&'static str, Option<Seen>, Option<Condition>)> {
        let failing = |why: &str| Some(Condition::Failing { why: why.into() });
        vec![
            ("absent", None, None),
            (
                "old healthy",
                Some(seen("cur", OLD, "o1", RunState::Running)),
                Some(Condition::Healthy),
            ),
            (
                "old unhealthy",
                Some(seen("cur", OLD, "o1", RunState::Running)),
                failing("probe fails"),
            ),
            (
                "old restarting",
                Some(seen("cur", OLD, "o1", RunState::Restarting)),
                failing("restarting"),
            ),
            (
                "old crash-looping, seen up",
                Some(seen("cur", OLD, "o1", RunState::Running)),
                failing("restarted 5 times"),
            ),
            (
                "old exited",
                Some(seen("cur", OLD, "o1", RunState::Exited)),
                failing("exited"),
            ),
            (
                "old exited, judged healthy",
                Some(seen("cur", OLD, "o1", RunState::Exited)),
                Some(Condition::Healthy),
            ),
            (
                "same healthy",
                Some(seen("cur", NEW, "o1", RunState::Running)),
                Some(Condition::Healthy),
            ),
            (
                "same unhealthy",
                Some(seen("cur", NEW, "o1", RunState::Running)),
                failing("probe fails"),
            ),
            (
                "same restarting",
                Some(seen("cur", NEW, "o1", RunState::Restarting)),
                failing("restarting"),
            ),
        ]
    }

    fn table(action: Action, view_extra: impl Fn(&mut ServiceView)) -> String {
        let strategies = [
            ("stop-first", Strategy::StopFirst, false),
            ("start-first", Strategy::StartFirst, false),
            ("start-first+port", Strategy::StartFirst, true),
        ];
        let mut out = String::new();
        for (state, current, condition) in currents() {
            for (sname, strategy, fixed_port) in strategies {
                let mut view = ServiceView {
                    canonical: current.clone(),
                    ..ServiceView::default()
                };
                view_extra(&mut view);
                let plan = plan_switch(&SwitchInput {
                    order_id: O,
                    digest: NEW,
                    canonical: C,
                    action,
                    strategy,
                    fixed_port,
                    view: &view,
                    condition: condition.as_ref(),
                });
                let steps = if plan.changes {
                    render(&plan.steps)
                } else {
                    format!("unchanged {}", render(&plan.steps))
                };
                out.push_str(&format!("{state:<27} {sname:<16} | {steps}\n"));
            }
        }
        out
    }

    fn check(actual: String, expect: Expect) {
        expect.assert_eq(&actual);
    }

    #[test]
    fn deploy_plan_for_every_observed_state_and_strategy() {
        check(
            table(Action::Deploy, |_| {}),
            expect![[r#"
            absent                      stop-first       | create app-env-web alias=true; start+prove app-env-web
            absent                      start-first      | create app-env-web alias=true; start+prove app-env-web
            absent                      start-first+port | create app-env-web alias=true; start+prove app-env-web
            old healthy                 stop-first       | set-aside cur as app-env-web--OLD-ORDER; create app-env-web alias=true; start+prove app-env-web
            old healthy                 start-first      | create app-env-web--next alias=false; start+prove app-env-web--next; take-over from cur (cur as app-env-web--OLD-ORDER)
            old healthy                 start-first+port | set-aside cur as app-env-web--OLD-ORDER; create app-env-web alias=true; start+prove app-env-web
            old unhealthy               stop-first       | set-aside cur as app-env-web--OLD-ORDER.failing; create app-env-web alias=true; start+prove app-env-web
            old unhealthy               start-first      | set-aside cur as app-env-web--OLD-ORDER.failing; create app-env-web alias=true; start+prove app-env-web
            old unhealthy               start-first+port | set-aside cur as app-env-web--OLD-ORDER.failing; create app-env-web alias=true; start+prove app-env-web
            old restarting              stop-first       | set-aside cur as app-env-web--OLD-ORDER.failing; create app-env-web alias=true; start+prove app-env-web
            old restarting              start-first      | set-aside cur as app-env-web--OLD-ORDER.failing; create app-env-web alias=true; start+prove app-env-web
            old restarting              start-first+port | set-aside cur as app-env-web--OLD-ORDER.failing; create app-env-web alias=true; start+prove app-env-web
            old crash-looping, seen up  stop-first       | set-aside cur as app-env-web--OLD-ORDER.failing; create app-env-web alias=true; start+prove app-env-web
            old crash-looping, seen up  start-first      | set-aside cur as app-env-web--OLD-ORDER.failing; create app-env-web alias=true; start+prove app-env-web
            old crash-looping, seen up  start-first+port | set-aside cur as app-env-web--OLD-ORDER.failing; create app-env-web alias=true; start+prove app-env-web
            old exited                  stop-first       | set-aside cur as app-env-web--OLD-ORDER.failing; create app-env-web alias=true; start+prove app-env-web
            old exited                  start-first      | set-aside cur as app-env-web--OLD-ORDER.failing; create app-env-web alias=true; start+prove app-env-web
            old exited                  start-first+port | set-aside cur as app-env-web--OLD-ORDER.failing; create app-env-web alias=true; start+prove app-env-web
            old exited, judged healthy  stop-first       | set-aside cur as app-env-web--OLD-ORDER.failing; create app-env-web alias=true; start+prove app-env-web
            old exited, judged healthy  start-first      | set-aside cur as app-env-web--OLD-ORDER.failing; create app-env-web alias=true; start+prove app-env-web
            old exited, judged healthy  start-first+port | set-aside cur as app-env-web--OLD-ORDER.failing; create app-env-web alias=true; start+prove app-env-web
            same healthy                stop-first       | unchanged 
            same healthy                start-first      | unchanged 
            same healthy                start-first+port | unchanged 
            same unhealthy              stop-first       | set-aside cur as app-env-web--NEW-ORDER.failing; create app-env-web alias=true; start+prove app-env-web
            same unhealthy              start-first      | set-aside cur as app-env-web--NEW-ORDER.failing; create app-env-web alias=true; start+prove app-env-web
            same unhealthy              start-first+port | set-aside cur as app-env-web--NEW-ORDER.failing; create app-env-web alias=true; start+prove app-env-web
            same restarting             stop-first       | set-aside cur as app-env-web--NEW-ORDER.failing; create app-env-web alias=true; start+prove app-env-web
            same restarting             start-first      | set-aside cur as app-env-web--NEW-ORDER.failing; create app-env-web alias=true; start+prove app-env-web
            same restarting             start-first+port | set-aside cur as app-env-web--NEW-ORDER.failing; create app-env-web alias=true; start+prove app-env-web
        "#]],
        );
    }

    #[test]
    fn a_rollback_revives_the_newest_retained_copy_and_leftovers_go_first() {
        let extra = |v: &mut ServiceView| {
            let mut older = seen("kept-1", NEW, "o0", RunState::Exited);
            older.finished_at = Some("2026-01-01T00:00:01Z".into());
            let mut newer = seen("kept-2", NEW, "o0", RunState::Exited);
            newer.finished_at = Some("2026-01-01T00:00:02.5Z".into());
            v.aside = vec![aside("x1", false, older), aside("x2", false, newer)];
            v.next = vec![seen("stale-next", OLD, "o9", RunState::Running)];
        };
        let out = table(Action::Rollback, extra);
        let rows: Vec<&str> = out
            .lines()
            .filter(|l| {
                l.starts_with("old healthy") || l.starts_with("same") || l.starts_with("absent  ")
            })
            .collect();
        check(
            rows.join("\n"),
            expect![[r#"
            absent                      stop-first       | remove-leftover stale-next; revive kept-2 as app-env-web alias=true; start+prove app-env-web
            absent                      start-first      | remove-leftover stale-next; revive kept-2 as app-env-web alias=true; start+prove app-env-web
            absent                      start-first+port | remove-leftover stale-next; revive kept-2 as app-env-web alias=true; start+prove app-env-web
            old healthy                 stop-first       | remove-leftover stale-next; set-aside cur as app-env-web--OLD-ORDER; revive kept-2 as app-env-web alias=true; start+prove app-env-web
            old healthy                 start-first      | remove-leftover stale-next; revive kept-2 as app-env-web--next alias=false; start+prove app-env-web--next; take-over from cur (cur as app-env-web--OLD-ORDER)
            old healthy                 start-first+port | remove-leftover stale-next; set-aside cur as app-env-web--OLD-ORDER; revive kept-2 as app-env-web alias=true; start+prove app-env-web
            same healthy                stop-first       | unchanged remove-leftover stale-next
            same healthy                start-first      | unchanged remove-leftover stale-next
            same healthy                start-first+port | unchanged remove-leftover stale-next
            same unhealthy              stop-first       | remove-leftover stale-next; set-aside cur as app-env-web--NEW-ORDER.failing; revive kept-2 as app-env-web alias=true; start+prove app-env-web
            same unhealthy              start-first      | remove-leftover stale-next; set-aside cur as app-env-web--NEW-ORDER.failing; revive kept-2 as app-env-web alias=true; start+prove app-env-web
            same unhealthy              start-first+port | remove-leftover stale-next; set-aside cur as app-env-web--NEW-ORDER.failing; revive kept-2 as app-env-web alias=true; start+prove app-env-web
            same restarting             stop-first       | remove-leftover stale-next; set-aside cur as app-env-web--NEW-ORDER.failing; revive kept-2 as app-env-web alias=true; start+prove app-env-web
            same restarting             start-first      | remove-leftover stale-next; set-aside cur as app-env-web--NEW-ORDER.failing; revive kept-2 as app-env-web alias=true; start+prove app-env-web
            same restarting             start-first+port | remove-leftover stale-next; set-aside cur as app-env-web--NEW-ORDER.failing; revive kept-2 as app-env-web alias=true; start+prove app-env-web"#]],
        );
    }

    /// Every point at which an order can be cut off (agent killed, switch failed), as the
    /// engine then shows the service, and what undo does about it.
    #[test]
    fn undo_at_each_crash_point_puts_back_what_the_order_displaced() {
        use RunState::{Exited, Running};
        let o1 = |id: &str, st| seen(id, OLD, "o1", st);
        let mine = |id: &str, st| seen(id, NEW, O, st);
        let view = |canonical: Option<Seen>, next: Vec<Seen>, aside: Vec<Aside>| ServiceView {
            canonical,
            next,
            aside,
        };
        let rows: Vec<(&str, ServiceView)> = vec![
            ("nothing there", view(None, vec![], vec![])),
            (
                "before any step: old untouched",
                view(Some(o1("old", Running)), vec![], vec![]),
            ),
            (
                "untouched old was crash-looping",
                view(Some(o1("old", RunState::Restarting)), vec![], vec![]),
            ),
            (
                "stop-first: renamed aside, stop in flight",
                view(None, vec![], vec![aside(O, false, o1("old", Running))]),
            ),
            (
                "stop-first: set aside and stopped",
                view(None, vec![], vec![aside(O, false, o1("old", Exited))]),
            ),
            (
                "stop-first: new created",
                view(
                    Some(mine("new", RunState::Created)),
                    vec![],
                    vec![aside(O, false, o1("old", Exited))],
                ),
            ),
            (
                "stop-first: new started, failed its health",
                view(
                    Some(mine("new", Running)),
                    vec![],
                    vec![aside(O, false, o1("old", Exited))],
                ),
            ),
            (
                "failing old replaced, new failed too",
                view(
                    Some(mine("new", Running)),
                    vec![],
                    vec![aside(O, true, o1("old", Exited))],
                ),
            ),
            (
                "first deploy: new created",
                view(Some(mine("new", RunState::Created)), vec![], vec![]),
            ),
            (
                "start-first: candidate created",
                view(
                    Some(o1("old", Running)),
                    vec![mine("new", RunState::Created)],
                    vec![],
                ),
            ),
            (
                "start-first: candidate failed its health",
                view(Some(o1("old", Running)), vec![mine("new", Running)], vec![]),
            ),
            (
                "start-first: old set aside, candidate not yet renamed",
                view(
                    None,
                    vec![mine("new", Running)],
                    vec![aside(O, false, o1("old", Exited))],
                ),
            ),
            (
                "start-first: candidate renamed, not yet healthy",
                view(
                    Some(mine("new", Running)),
                    vec![],
                    vec![aside(O, false, o1("old", Exited))],
                ),
            ),
            (
                "rollback revived a retained version",
                view(
                    Some(seen("ret", NEW, "o0", Running)),
                    vec![],
                    vec![aside(O, false, o1("old", Exited))],
                ),
            ),
            (
                "another order's aside is not ours to restore",
                view(
                    Some(mine("new", Running)),
                    vec![],
                    vec![aside("o7", false, o1("old", Exited))],
                ),
            ),
        ];
        let out: Vec<String> = rows
            .iter()
            .map(|(name, v)| {
                let p = plan_undo(O, C, v, false);
                format!(
                    "{name:<55} | {} | changed={} serving={} failing={}",
                    render(&p.steps),
                    p.order_changed_it,
                    p.previous_serving,
                    p.previous_failing
                )
            })
            .collect();
        check(
            out.join("\n"),
            expect![[r#"
            nothing there                                           |  | changed=false serving=false failing=false
            before any step: old untouched                          |  | changed=false serving=true failing=false
            untouched old was crash-looping                         |  | changed=false serving=true failing=false
            stop-first: renamed aside, stop in flight               | restore old prove=true | changed=true serving=true failing=false
            stop-first: set aside and stopped                       | restore old prove=true | changed=true serving=true failing=false
            stop-first: new created                                 | remove new; restore old prove=true | changed=true serving=true failing=false
            stop-first: new started, failed its health              | remove new; restore old prove=true | changed=true serving=true failing=false
            failing old replaced, new failed too                    | remove new; restore old prove=false | changed=true serving=true failing=true
            first deploy: new created                               | remove new | changed=true serving=false failing=false
            start-first: candidate created                          | remove new | changed=true serving=true failing=false
            start-first: candidate failed its health                | remove new | changed=true serving=true failing=false
            start-first: old set aside, candidate not yet renamed   | remove new; restore old prove=true | changed=true serving=true failing=false
            start-first: candidate renamed, not yet healthy         | remove new; restore old prove=true | changed=true serving=true failing=false
            rollback revived a retained version                     | retire ret as app-env-web--NEW-ret; restore old prove=true | changed=true serving=true failing=false
            another order's aside is not ours to restore            | remove new | changed=true serving=false failing=false"#]],
        );
        // Behind a proxy, only a running version that serves in place of one set aside plans
        // differently: it serves on until the route goes back.
        let proxied: Vec<String> = rows
            .iter()
            .map(|(name, v)| {
                let p = plan_undo(O, C, v, true);
                format!("{name:<55} | {}", render(&p.steps))
            })
            .collect();
        check(
            proxied.join("\n"),
            expect![[r#"
            nothing there                                           | 
            before any step: old untouched                          | 
            untouched old was crash-looping                         | 
            stop-first: renamed aside, stop in flight               | restore old prove=true
            stop-first: set aside and stopped                       | restore old prove=true
            stop-first: new created                                 | remove new; restore old prove=true
            stop-first: new started, failed its health              | make room: new as app-env-web--next; restore old prove=true; reroute from new; remove new
            failing old replaced, new failed too                    | make room: new as app-env-web--next; restore old prove=false; reroute from new; remove new
            first deploy: new created                               | remove new
            start-first: candidate created                          | remove new
            start-first: candidate failed its health                | remove new
            start-first: old set aside, candidate not yet renamed   | remove new; restore old prove=true
            start-first: candidate renamed, not yet healthy         | make room: new as app-env-web--next; restore old prove=true; reroute from new; remove new
            rollback revived a retained version                     | make room: ret as app-env-web--next; restore old prove=true; reroute from ret; retire ret as app-env-web--NEW-ret
            another order's aside is not ours to restore            | remove new"#]],
        );
    }

    #[test]
    fn names_carry_the_failing_mark_through_a_restart() {
        let c = |name: &str, state| ContainerInfo {
            id: name.into(),
            name: name.into(),
            image: String::new(),
            labels: Default::default(),
            state,
            exit_code: None,
            restart_count: 0,
            check: None,
            started_at: None,
            finished_at: None,
            networks: Default::default(),
            oom_killed: false,
            error: None,
        };
        let all = [
            c(C, RunState::Running),
            c(&format!("{C}--next"), RunState::Created),
            c(
                &format!("{C}--111111111111-ORDER.failing"),
                RunState::Exited,
            ),
            c(&format!("{C}--111111111111-OTHER"), RunState::Exited),
            c("unrelated", RunState::Running),
        ];
        let v = ServiceView::sort(C, all.iter());
        assert_eq!(v.canonical.as_ref().map(|s| s.id.as_str()), Some(C));
        assert_eq!(v.next.len(), 1);
        let by = v.aside_by(O).expect("the order's aside");
        assert!(by.failing);
        assert!(!v.aside_by("OTHER").expect("other aside").failing);
        assert_eq!(v.aside.len(), 2);
    }

    #[test]
    fn the_serving_container_is_judged_from_one_look() {
        let look = |state, restarts, up: Option<u64>, mode, http_ok, check| CurrentLook {
            state,
            restart_count: restarts,
            exit_code: Some(1),
            up_for: up.map(Duration::from_secs),
            mode,
            http_ok,
            check,
        };
        use ProbeMode::{Http, ImageCheck, Running as Up};
        use RunState::{Created, Exited, Restarting, Running};
        let rows = [
            (
                "serving, probe ok",
                look(Running, 0, Some(5), Http, Some(true), None),
            ),
            (
                "serving, probe fails",
                look(Running, 0, Some(5), Http, Some(false), None),
            ),
            (
                "restarted long ago, probe ok",
                look(Running, 2, Some(3600), Http, Some(true), None),
            ),
            (
                "up 0.2 s after a restart",
                look(Running, 7, Some(0), Http, Some(true), None),
            ),
            ("restarting", look(Restarting, 7, None, Http, None, None)),
            ("exited", look(Exited, 0, None, Up, None, None)),
            (
                "created, never started",
                look(Created, 0, None, Up, None, None),
            ),
            (
                "image check unhealthy",
                look(
                    Running,
                    0,
                    Some(5),
                    ImageCheck,
                    None,
                    Some(CheckStatus::Unhealthy),
                ),
            ),
            (
                "image check starting",
                look(
                    Running,
                    0,
                    Some(5),
                    ImageCheck,
                    None,
                    Some(CheckStatus::Starting),
                ),
            ),
            ("no probe, up", look(Running, 0, Some(5), Up, None, None)),
        ];
        let out: Vec<String> = rows
            .iter()
            .map(|(name, l)| format!("{name:<30} | {:?}", judge_current(l)))
            .collect();
        check(
            out.join("\n"),
            expect![[r#"
            serving, probe ok              | Healthy
            serving, probe fails           | Failing { why: "its health probe fails" }
            restarted long ago, probe ok   | Healthy
            up 0.2 s after a restart       | Failing { why: "crash-looping: restarted 7 times by the engine, up for 0.0s" }
            restarting                     | Failing { why: "crash-looping: the engine is restarting it (restarted 7 times)" }
            exited                         | Failing { why: "exited with code 1" }
            created, never started         | Failing { why: "it is not running (created)" }
            image check unhealthy          | Failing { why: "its HEALTHCHECK reports unhealthy" }
            image check starting           | Healthy
            no probe, up                   | Healthy"#]],
        );
    }

    #[test]
    fn settled_means_on_the_digest_with_nothing_pending() {
        let v = |c: Option<Seen>, next: Vec<Seen>| ServiceView {
            canonical: c,
            next,
            aside: vec![],
        };
        let s = |digest, state| seen("c", digest, "o", state);
        assert!(is_settled(NEW, &v(Some(s(NEW, RunState::Running)), vec![])));
        assert!(!is_settled(
            NEW,
            &v(Some(s(NEW, RunState::Restarting)), vec![])
        ));
        assert!(!is_settled(
            NEW,
            &v(Some(s(OLD, RunState::Running)), vec![])
        ));
        assert!(!is_settled(
            NEW,
            &v(
                Some(s(NEW, RunState::Running)),
                vec![s(OLD, RunState::Running)]
            )
        ));
        assert!(!is_settled(NEW, &v(None, vec![])));
    }
}
