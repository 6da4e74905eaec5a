//! The rollout against in-process fake agents ([`super::fake`]): batching, reverting after a
//! failure, refusing before any change, following a running job, re-attaching. The same
//! behaviours run against real agents over sshd in `tests/tests/e2e/controller.rs`.

use std::path::Path;

use proto::order::{Action, ImageRef};
use proto::wire::{OutcomeKind, RefusalKind};

use super::fake::{APP, FakeSigner, Fleet, Host, REPO, Step, digest, image};
use super::*;
use crate::ExitClass;
use crate::output::{Recorder, RolloutResult};
use crate::release::Pin;

/// `staging` with hosts h1..hN (in that order), `max_parallel`, and a `[migrate]`.
fn config(hosts: usize, max_parallel: usize) -> DeployConfig {
    let hosts: Vec<String> = (1..=hosts)
        .map(|i| format!("{{ name = \"h{i}\", socket = \"/nonexistent/h{i}.sock\" }}"))
        .collect();
    let toml = format!(
        "app = \"{APP}\"\nimage = \"{REPO}\"\n[services.web]\n\
         [migrate]\ncommand = [\"/app\", \"migrate\"]\nservice = \"web\"\n\
         [env.staging]\nhosts = [{}]\nmax_parallel = {max_parallel}\n",
        hosts.join(", ")
    );
    DeployConfig::parse(&toml, Path::new("deploy.toml")).unwrap()
}

/// `push ref-c`, migrating on the first host.
fn push(c: char) -> Plan {
    Plan {
        action: Action::Deploy,
        target: Target::Release(Release::single(&format!("ref-{c}"), &image(c), &["web"]).unwrap()),
        migrate_first: true,
        rerun_migration: false,
        issued_by: "test".into(),
        override_freeze: None,
    }
}

fn rollback() -> Plan {
    Plan {
        action: Action::Rollback,
        target: Target::PreviousHealthy,
        migrate_first: false,
        rerun_migration: false,
        issued_by: "test".into(),
        override_freeze: None,
    }
}

/// Prepares and drives a rollout of `plan` on the fleet, as `push` / `rollback` do.
async fn roll(fleet: &Fleet, cfg: &DeployConfig, plan: Plan) -> Result<RolloutReport, Error> {
    let env = cfg.env("staging").unwrap();
    let out = Recorder::default();
    let ready = prepare(cfg, env, plan, fleet, &out).await?;
    let d = Driver {
        cfg,
        connector: fleet,
        signer: &FakeSigner,
        out: &out,
    };
    Ok(drive(&d, ready, env.max_parallel, env.canary).await)
}

fn hosts_on(c: char, n: usize) -> Vec<Host> {
    (1..=n).map(|i| Host::on(&format!("h{i}"), c)).collect()
}

/// Where in the log `step` is.
fn at(log: &[Step], step: Step) -> usize {
    log.iter()
        .position(|s| *s == step)
        .unwrap_or_else(|| panic!("{step:?} is not in {log:?}"))
}

fn started(host: &str) -> Step {
    Step::Start(host.into(), Action::Deploy)
}

fn ended(host: &str) -> Step {
    Step::End(host.into())
}

#[tokio::test]
async fn the_first_host_goes_alone_then_batches_of_max_parallel() {
    let fleet = Fleet::new(hosts_on('a', 5));
    let report = roll(&fleet, &config(5, 2), push('b')).await.unwrap();
    assert_eq!(report.conclusion.result, RolloutResult::Succeeded);
    let log = fleet.log();
    // h1 alone; then h2 and h3 together; then h4 and h5 together.
    assert!(at(&log, ended("h1")) < at(&log, started("h2")), "{log:?}");
    for (a, b) in [("h2", "h3"), ("h4", "h5")] {
        let overlap = at(&log, started(a)).max(at(&log, started(b)))
            < at(&log, ended(a)).min(at(&log, ended(b)));
        assert!(overlap, "{a} and {b} run at once: {log:?}");
    }
    let batch2_done = at(&log, ended("h2")).max(at(&log, ended("h3")));
    assert!(batch2_done < at(&log, started("h4")), "{log:?}");
    // Every host on b; the migration ran with the first host's order only.
    for i in 1..=5 {
        let host = fleet.host(&format!("h{i}"));
        assert_eq!(host.digest_of("web").unwrap(), digest('b'));
        assert_eq!(host.orders.len(), 1);
        assert_eq!(host.orders[0].run_migration, i == 1, "h{i}");
    }
    assert_eq!(report.migrated, vec![true, false, false, false, false]);
}

#[tokio::test]
async fn a_failure_on_host_2_reverts_host_1() {
    let mut hosts = hosts_on('a', 3);
    hosts[1].fails = Some(digest('b'));
    let fleet = Fleet::new(hosts);
    let report = roll(&fleet, &config(3, 1), push('b')).await.unwrap();
    assert_eq!(report.conclusion.result, RolloutResult::RolledBack);
    assert_eq!(report.conclusion.result.exit(), ExitClass::Failed);

    let h1 = fleet.host("h1");
    let actions: Vec<(Action, String)> = h1
        .orders
        .iter()
        .map(|o| (o.action, o.reference.clone()))
        .collect();
    assert_eq!(
        actions,
        vec![
            (Action::Deploy, "ref-b".into()),
            (Action::Rollback, "ref-a".into())
        ],
        "h1 went to b, then back to a by its old ref"
    );
    assert_eq!(h1.orders[1].image, image('a'));
    assert!(h1.orders[1].migrate.is_none(), "a rollback never migrates");
    assert_eq!(h1.orders[0].rollout_id, h1.orders[1].rollout_id);
    assert_eq!(fleet.host("h2").orders.len(), 1, "h2 restored itself");
    assert!(fleet.host("h3").orders.is_empty(), "h3 was never touched");
    for h in ["h1", "h2", "h3"] {
        assert_eq!(fleet.host(h).digest_of("web").unwrap(), digest('a'), "{h}");
    }
    let summary = summarize(&report);
    assert!(matches!(
        summary.hosts[0].rollback,
        Some(HostState::Succeeded { .. })
    ));
    assert!(matches!(
        summary.hosts[1].state,
        HostState::Failed {
            kind: OutcomeKind::RolledBack,
            ..
        }
    ));
}

#[tokio::test]
async fn an_unreachable_host_refuses_before_any_change() {
    let mut hosts = hosts_on('a', 3);
    hosts[2].reachable = false;
    let fleet = Fleet::new(hosts);
    let err = roll(&fleet, &config(3, 1), push('b')).await.err().unwrap();
    assert_eq!(err.exit(), ExitClass::Refused);
    assert_eq!(err.exit().code(), 3);
    assert!(
        err.to_string().contains("h3: unreachable"),
        "names the host: {err}"
    );
    assert!(
        fleet.log().is_empty(),
        "nothing was sent: {:?}",
        fleet.log()
    );
}

#[tokio::test]
async fn a_retry_follows_the_running_job_then_continues() {
    // A push of b was killed while h1's job (with the migration) ran.
    let mut hosts = hosts_on('a', 3);
    hosts[0].running_job("killed-push", 'b', true);
    let fleet = Fleet::new(hosts);
    let report = roll(&fleet, &config(3, 2), push('b')).await.unwrap();
    assert_eq!(report.conclusion.result, RolloutResult::Succeeded);
    let log = fleet.log();
    assert_eq!(log[0], Step::Watch("h1".into()), "{log:?}");
    assert!(fleet.host("h1").orders.is_empty(), "no second order on h1");
    for h in ["h2", "h3"] {
        let host = fleet.host(h);
        assert_eq!(host.orders.len(), 1, "{h}");
        assert!(!host.orders[0].run_migration, "no second migration on {h}");
    }
    for h in ["h1", "h2", "h3"] {
        assert_eq!(fleet.host(h).digest_of("web").unwrap(), digest('b'), "{h}");
    }
    assert_eq!(report.migrated, vec![true, false, false]);
}

#[tokio::test]
async fn a_running_job_for_another_digest_refuses() {
    let mut hosts = hosts_on('a', 2);
    hosts[1].running_job("someone-else", 'c', false);
    let fleet = Fleet::new(hosts);
    let err = roll(&fleet, &config(2, 1), push('b')).await.err().unwrap();
    assert_eq!(err.exit(), ExitClass::Refused);
    assert!(
        err.to_string().contains("h2: a rollout is in progress")
            && err.to_string().contains("someone-else"),
        "{err}"
    );
    assert!(fleet.log().is_empty(), "{:?}", fleet.log());
}

#[tokio::test]
async fn a_refusal_on_the_first_host_changes_nothing() {
    let mut hosts = hosts_on('a', 2);
    hosts[0].refuses = Some(RefusalKind::UnknownSigner);
    let fleet = Fleet::new(hosts);
    let report = roll(&fleet, &config(2, 1), push('b')).await.unwrap();
    assert_eq!(report.conclusion.result, RolloutResult::Refused);
    assert_eq!(report.conclusion.result.exit(), ExitClass::Refused);
    assert!(fleet.host("h2").orders.is_empty());
}

#[tokio::test]
async fn rollback_goes_to_the_previous_healthy_digest_everywhere() {
    let mut hosts = hosts_on('a', 2);
    for h in &mut hosts {
        let name = h.name.clone();
        h.journal(
            &format!("{name}-b"),
            'b',
            Some(OutcomeKind::Succeeded),
            false,
        );
        h.running.insert("web".into(), (image('b'), "ref-b".into()));
    }
    let fleet = Fleet::new(hosts.clone());
    let report = roll(&fleet, &config(2, 1), rollback()).await.unwrap();
    assert_eq!(report.conclusion.result, RolloutResult::Succeeded);
    assert_eq!(report.spec.release.image, image('a'));
    assert_eq!(report.spec.release.reference, "ref-a");
    for h in ["h1", "h2"] {
        let host = fleet.host(h);
        assert_eq!(host.orders[0].action, Action::Rollback);
        assert!(!host.orders[0].run_migration);
    }

    // Hosts that disagree: refused, naming each host's candidate.
    hosts[1].journal("h2-c", 'c', Some(OutcomeKind::Succeeded), false);
    hosts[1]
        .running
        .insert("web".into(), (image('c'), "ref-c".into()));
    let fleet = Fleet::new(hosts);
    let err = roll(&fleet, &config(2, 1), rollback()).await.err().unwrap();
    assert_eq!(err.exit(), ExitClass::Refused);
    assert!(err.to_string().contains("--to"), "{err}");
    assert!(fleet.log().is_empty());
}

#[tokio::test]
async fn a_dropped_connection_reattaches_to_the_order() {
    let mut hosts = hosts_on('a', 1);
    hosts[0].drops = true;
    let fleet = Fleet::new(hosts);
    let report = roll(&fleet, &config(1, 1), push('b')).await.unwrap();
    assert_eq!(report.conclusion.result, RolloutResult::Succeeded);
    assert!(matches!(
        report.states[0],
        HostState::Succeeded { changed: true, .. }
    ));
    assert_eq!(fleet.host("h1").orders.len(), 1, "re-attached, not re-sent");
    assert!(fleet.log().contains(&Step::Watch("h1".into())));
}

#[tokio::test]
async fn a_link_the_agent_closed_while_it_waited_is_replaced_before_the_order() {
    let mut hosts = hosts_on('a', 2);
    hosts[1].closes_idle = true;
    let fleet = Fleet::new(hosts);
    let report = roll(&fleet, &config(2, 1), push('b')).await.unwrap();
    assert_eq!(report.conclusion.result, RolloutResult::Succeeded);
    let h2 = fleet.host("h2");
    assert_eq!(h2.orders.len(), 1, "sent once, on the new connection");
    assert_eq!(h2.connections, 2);
    assert_eq!(fleet.host("h1").connections, 1, "a live link is kept");
}

const API: &str = "registry.test/acme/api";
const MIGRATE: &str = "registry.test/acme/migrate";

/// `staging` with hosts h1..hN: `api` from its own repository (the default), `web` from
/// [`REPO`], and a migration in its own image.
fn two_images(hosts: usize) -> DeployConfig {
    let hosts: Vec<String> = (1..=hosts)
        .map(|i| format!("{{ name = \"h{i}\", socket = \"/nonexistent/h{i}.sock\" }}"))
        .collect();
    let toml = format!(
        "app = \"{APP}\"\nimage = \"{API}\"\n[services.api]\n[services.web]\nimage = \"{REPO}\"\n\
         [migrate]\ncommand = [\"/migrate\"]\nservice = \"api\"\nimage = \"{MIGRATE}\"\n\
         [env.staging]\nhosts = [{}]\n",
        hosts.join(", ")
    );
    DeployConfig::parse(&toml, Path::new("deploy.toml")).unwrap()
}

/// `push ref-<api> --set web=ref-<web>` (no `--set` when they are equal): api and the
/// migration at `api`'s digest, web at `web`'s.
fn push_release(api: char, web: char) -> Plan {
    let pin = |repo: &str, c: char| Pin {
        image: ImageRef::new(repo, &digest(c)).unwrap(),
        reference: format!("ref-{c}"),
    };
    let services = [
        ("api".to_string(), pin(API, api)),
        ("web".to_string(), pin(REPO, web)),
    ];
    let migrate = ImageRef::new(MIGRATE, &digest(api)).ok();
    let release = Release::new(format!("ref-{api}"), services.into(), migrate).unwrap();
    Plan {
        target: Target::Release(release),
        ..push(api)
    }
}

/// What each service of a host runs: (api's digest byte, web's).
fn runs(fleet: &Fleet, host: &str) -> (char, char) {
    let h = fleet.host(host);
    let last = |s: &str| h.digest_of(s).and_then(|d| d.chars().last()).unwrap_or('-');
    (last("api"), last("web"))
}

/// The hosts as a fleet left them, to start the next test step from.
fn carried(fleet: &Fleet, n: usize) -> Vec<Host> {
    (1..=n).map(|i| fleet.host(&format!("h{i}"))).collect()
}

#[tokio::test]
async fn a_release_of_several_images_runs_each_service_on_its_own() {
    let cfg = two_images(2);
    let fleet = Fleet::new(hosts_on('a', 2));
    let report = roll(&fleet, &cfg, push_release('b', 'c')).await.unwrap();
    assert_eq!(report.conclusion.result, RolloutResult::Succeeded);
    for h in ["h1", "h2"] {
        assert_eq!(runs(&fleet, h), ('b', 'c'), "{h}");
        let order = &fleet.host(h).orders[0];
        assert_eq!(order.image, ImageRef::new(API, &digest('b')).unwrap());
        assert_eq!(order.image_of("web"), &image('c'));
        assert_eq!(order.reference, "ref-b");
        assert_eq!(order.reference_of("web"), "ref-c");
        assert_eq!(
            order.migration_image(),
            ImageRef::new(MIGRATE, &digest('b')).ok().as_ref()
        );
    }
    let summary = summarize(&report);
    assert_eq!(summary.images.get("web"), Some(&image('c')));
}

#[tokio::test]
async fn a_failure_reverts_every_service_of_the_hosts_changed() {
    let cfg = two_images(3);
    let fleet = Fleet::new(hosts_on('a', 3));
    roll(&fleet, &cfg, push_release('b', 'c')).await.unwrap();
    let mut hosts = carried(&fleet, 3);
    hosts[1].fails = Some(digest('e'));
    let fleet = Fleet::new(hosts);
    // api moves to e, web stays on c: h2 fails on api and puts both back itself.
    let report = roll(&fleet, &cfg, push_release('e', 'c')).await.unwrap();
    assert_eq!(report.conclusion.result, RolloutResult::RolledBack);
    let h1 = fleet.host("h1");
    let back = &h1.orders[2];
    assert_eq!(back.action, Action::Rollback);
    assert_eq!(back.image_of("api").digest(), digest('b'));
    assert_eq!(back.image_of("web"), &image('c'));
    assert_eq!(
        (back.reference_of("api"), back.reference_of("web")),
        ("ref-b", "ref-c"),
        "each service by the ref it ran"
    );
    assert!(back.migrate.is_none() && back.migrate_image.is_none());
    for h in ["h1", "h2", "h3"] {
        assert_eq!(runs(&fleet, h), ('b', 'c'), "{h}");
    }
    assert_eq!(fleet.host("h3").orders.len(), 1, "h3 was never touched");
}

#[tokio::test]
async fn rollback_restores_the_previous_release_exactly() {
    let cfg = two_images(2);
    let fleet = Fleet::new(hosts_on('a', 2));
    roll(&fleet, &cfg, push_release('b', 'c')).await.unwrap();
    roll(&fleet, &cfg, push_release('e', 'c')).await.unwrap();
    let report = roll(&fleet, &cfg, rollback()).await.unwrap();
    assert_eq!(report.conclusion.result, RolloutResult::Succeeded);
    assert_eq!(report.spec.release.reference, "ref-b");
    for h in ["h1", "h2"] {
        assert_eq!(runs(&fleet, h), ('b', 'c'), "{h}");
    }
    // Once more: the previous healthy release is now the one with api on e.
    roll(&fleet, &cfg, rollback()).await.unwrap();
    assert_eq!(runs(&fleet, "h1"), ('e', 'c'));
}
