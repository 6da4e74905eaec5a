//! Services found failing: a crash-looping version (demo v6: healthy for 0.3 s, then exit 1,
//! forever restarted by the engine), a stopped one, and what a deploy, a failed deploy and a
//! rollback do about each. The broken version must never stand in the way of a fix, and a
//! failed fix must leave the host exactly as it found it.

use super::*;

/// `web` with a health window the crash-looping v6 passes.
fn lenient_web(w: &World, strategy: Strategy) -> ServiceSpec {
    let mut web = w.web();
    web.strategy = strategy;
    web.health.healthy_for = Duration::ZERO;
    web
}

/// Deploys v6 and waits until the engine has restarted it a few times. Stop-first, because a
/// start-first handover re-checks the candidate long enough to see v6 die and roll it back.
async fn crash_looping(w: &World, web: &ServiceSpec) -> anyhow::Result<String> {
    let mut web = web.clone();
    web.strategy = Strategy::StopFirst;
    let (o, events) = w.run(&w.order_v(6, &[("web", web)], false)).await;
    expect(&o, OutcomeKind::Succeeded, &events)?;
    let id = id_of(&o, "web")?;
    harness::wait_until("v6 to crash-loop", Duration::from_secs(30), || {
        let c = docker_inspect(&id).map_err(|e| e.to_string())?;
        match c["RestartCount"].as_i64() {
            Some(n) if n >= 2 => Ok(()),
            n => Err(format!("restarted {n:?} times")),
        }
    })?;
    Ok(id)
}

fn said(events: &Events, needle: &str) -> bool {
    events.all().iter().any(|(_, _, m)| m.contains(needle))
}

#[tokio::test]
async fn a_fix_deploys_over_a_crash_looping_service_whatever_the_strategy() -> anyhow::Result<()> {
    for strategy in [Strategy::StopFirst, Strategy::StartFirst] {
        let w = World::new().await?;
        let web = lenient_web(&w, strategy);
        let broken = crash_looping(&w, &web).await?;

        let (o, events) = w.run(&w.order_v(2, &[("web", web.clone())], false)).await;
        expect(&o, OutcomeKind::Succeeded, &events)?;
        ensure!(
            said(&events, "is failing") && said(&events, "without waiting"),
            "the journal says why the old version was not waited for:\n{}",
            events.text()
        );
        ensure!(w.version("web")? == "v2", "{strategy:?}: v2 serves");
        ensure!(digest_of(&o, "web") == Some(w.v(2).digest.clone()));
        // The broken version is kept, stopped, for the record (and an explicit rollback).
        let kept = w
            .containers()?
            .into_iter()
            .find(|(_, id, _, _)| *id == broken)
            .context("the crash-looping container was removed")?;
        ensure!(
            !kept.2,
            "{strategy:?}: the crash-looping version was stopped: {kept:?}"
        );
        ensure!(
            kept.0.ends_with(".failing"),
            "{strategy:?}: marked as failing: {kept:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_failed_fix_puts_the_crash_looping_version_back_as_it_was() -> anyhow::Result<()> {
    let w = World::new().await?;
    let web = lenient_web(&w, Strategy::StopFirst);
    let broken = crash_looping(&w, &web).await?;

    // v3 never gets healthy: the fix fails, and the host goes back to what it was.
    let mut strict = web.clone();
    strict.health.deadline = Duration::from_secs(3);
    let (o, events) = w.run(&w.order_v(3, &[("web", strict)], false)).await;
    expect(&o, OutcomeKind::RolledBack, &events)?;
    let reason = o.reason.clone().unwrap_or_default();
    ensure!(
        reason.contains("already broken") && reason.contains("web was failing before it"),
        "the outcome says the host was broken before the order: {reason}"
    );
    ensure!(!o.changed, "the host is as before the order");
    ensure!(
        id_of(&o, "web")? == broken,
        "the same container is back: {o:?}"
    );
    let c = docker_inspect(&w.canonical("web"))?;
    ensure!(
        c["Id"].as_str() == Some(broken.as_str()),
        "it serves under its name again"
    );
    let restarts = c["RestartCount"].as_i64().unwrap_or(0);
    harness::wait_until("v6 to crash-loop again", Duration::from_secs(30), || {
        let n = docker_inspect(&broken).map_err(|e| e.to_string())?["RestartCount"]
            .as_i64()
            .unwrap_or(0);
        if n > restarts {
            Ok(())
        } else {
            Err(format!("{n} restarts"))
        }
    })?;
    ensure!(
        !w.containers()?
            .iter()
            .any(|(_, _, _, d)| *d == w.v(3).digest),
        "nothing of v3 is left"
    );
    Ok(())
}

#[tokio::test]
async fn a_rollback_to_a_retained_version_over_a_crash_looping_service() -> anyhow::Result<()> {
    let w = World::new().await?;
    let web = lenient_web(&w, Strategy::StartFirst);
    let (o, events) = w.run(&w.order_v(1, &[("web", web.clone())], false)).await;
    expect(&o, OutcomeKind::Succeeded, &events)?;
    let v1 = id_of(&o, "web")?;
    crash_looping(&w, &web).await?;

    let mut back = w.order_v(1, &[("web", web.clone())], false);
    back.action = Action::Rollback;
    let (o, events) = w.run(&back).await;
    expect(&o, OutcomeKind::Succeeded, &events)?;
    ensure!(id_of(&o, "web")? == v1, "the retained v1 container is back");
    ensure!(w.version("web")? == "v1");
    Ok(())
}

#[tokio::test]
async fn the_same_version_found_stopped_is_recreated() -> anyhow::Result<()> {
    let w = World::new().await?;
    let web = [("web", w.web())];
    let (o, events) = w.run(&w.order_v(1, &web, false)).await;
    expect(&o, OutcomeKind::Succeeded, &events)?;
    let first = id_of(&o, "web")?;
    docker(&["stop", "-t", "1", &first])?;

    let (o, events) = w.run(&w.order_v(1, &web, false)).await;
    expect(&o, OutcomeKind::Succeeded, &events)?;
    ensure!(o.changed, "recreating is a change: {o:?}");
    let second = id_of(&o, "web")?;
    ensure!(second != first, "a new container serves");
    ensure!(running(&second)? && w.version("web")? == "v1");
    ensure!(
        said(&events, "already runs this version but is failing"),
        "{}",
        events.text()
    );

    // Healthy and on the ordered version: nothing to do, nothing touched.
    let (o, events) = w.run(&w.order_v(1, &web, false)).await;
    expect(&o, OutcomeKind::Succeeded, &events)?;
    ensure!(!o.changed && id_of(&o, "web")? == second, "{o:?}");
    Ok(())
}

#[tokio::test]
async fn a_compose_service_found_stopped_is_fixed_and_a_failed_fix_puts_it_back()
-> anyhow::Result<()> {
    let mut w = World::new().await?;
    let (_project, api) = compose_api(&mut w)?;
    let (o, events) = w.run(&w.order_v(1, &[("api", api.clone())], false)).await;
    expect(&o, OutcomeKind::Succeeded, &events)?;
    docker(&["stop", "-t", "1", &id_of(&o, "api")?])?;

    // A fix that fails too: the dead v1 is put back without waiting for its health, and the
    // outcome says the host was broken before the order.
    let mut strict = api.clone();
    strict.health.deadline = Duration::from_secs(3);
    let (o, events) = w.run(&w.order_v(3, &[("api", strict)], false)).await;
    expect(&o, OutcomeKind::RolledBack, &events)?;
    let reason = o.reason.clone().unwrap_or_default();
    ensure!(reason.contains("already broken"), "{reason}");
    ensure!(digest_of(&o, "api") == Some(w.v(1).digest.clone()), "{o:?}");

    // A fix that works (compose's `up` started the restored v1 again, so it is not failing now).
    let (o, events) = w.run(&w.order_v(2, &[("api", api)], false)).await;
    expect(&o, OutcomeKind::Succeeded, &events)?;
    ensure!(digest_of(&o, "api") == Some(w.v(2).digest.clone()), "{o:?}");
    Ok(())
}
