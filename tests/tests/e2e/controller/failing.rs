//! deployctl over an env whose service is failing: crash-looping (demo v6 passes a `0s` health
//! window, then exits 1 forever) or stopped. The moment an operator most needs the tool it must
//! help: `status` says it is unhealthy (exit 1), a fix deploys, a rollback to a good version
//! works, a stopped service is recreated.

use serde_json::Value;

use super::*;

/// Waits until every host's `web` has been restarted by the engine at least twice.
fn wait_crash_looping(w: &World, env: &str) -> anyhow::Result<()> {
    for h in w.fleet.hosts(env) {
        let name = h.agent.container_name(APP, "web");
        wait_until(
            &format!("{name} to crash-loop"),
            Duration::from_secs(60),
            || {
                let c = docker_inspect(&name).map_err(|e| e.to_string())?;
                match c["RestartCount"].as_i64() {
                    Some(n) if n >= 2 => Ok(()),
                    n => Err(format!("restarted {n:?} times")),
                }
            },
        )?;
    }
    Ok(())
}

#[test]
fn a_fix_and_a_rollback_deploy_over_a_crash_looping_env() -> anyhow::Result<()> {
    let w = world(&[EnvPlan::new("staging", 2)], |_, _, _| {})?;
    w.write_config("0s", "8s")?;
    w.run(&["push", &w.sha(1), "--env", "staging"])?.expect(0)?;

    // A release that turns bad after it was deployed.
    w.run(&["push", &w.sha(6), "--env", "staging"])?.expect(0)?;
    wait_crash_looping(&w, "staging")?;
    // `status` sees it: one release everywhere, not healthy, exit 1 (README, "Exit codes").
    let unhealthy = wait_until("status to say unhealthy", Duration::from_secs(30), || {
        let run = w.fleet.deployctl(&["status", "--env", "staging", "--json"]);
        let run = run.map_err(|e| e.to_string())?;
        let summary = run.summary().map_err(|e| e.to_string())?;
        match (run.code, &summary["healthy"]) {
            (Some(1), Value::Bool(false)) => Ok(summary),
            _ => Err(format!("exit {:?}: {summary}", run.code)),
        }
    })?;
    ensure!(unhealthy["consistent"] == true, "{unhealthy}");

    // 1. The fix deploys on every host.
    let run = w.run(&["push", &w.sha(2), "--env", "staging"])?;
    run.expect(0)?;
    w.expect_versions("staging", "v2")?;
    for h in w.fleet.hosts("staging") {
        let newest = &history(h)?[0];
        ensure!(
            newest.reference == w.sha(2) && newest.outcome == Some(OutcomeKind::Succeeded),
            "{}: {newest:?}",
            h.name()
        );
    }

    // 2. Broken again; `rollback --to` a good release works too.
    w.run(&["push", &w.sha(6), "--env", "staging"])?.expect(0)?;
    wait_crash_looping(&w, "staging")?;
    let run = w.run(&["rollback", "--to", &w.sha(1), "--env", "staging"])?;
    run.expect(0)?;
    w.expect_versions("staging", "v1")?;

    // 3. A service found stopped on the release it should run is recreated by the same push.
    let first = &w.fleet.hosts("staging")[0];
    let name = first.agent.container_name(APP, "web");
    let before = docker_inspect(&name)?["Id"]
        .as_str()
        .unwrap_or("")
        .to_string();
    docker(&["stop", "-t", "1", &name])?;
    let run = w.run(&["rollback", "--to", &w.sha(1), "--env", "staging"])?;
    run.expect(0)?;
    w.expect_versions("staging", "v1")?;
    let after = docker_inspect(&name)?["Id"]
        .as_str()
        .unwrap_or("")
        .to_string();
    ensure!(
        after != before,
        "a new container serves on {}",
        first.name()
    );
    Ok(())
}
