//! `deployctl promote --from staging --to prod` end to end (issue 13): exactly the release
//! staging runs — its digests, even after its tag moved in the registry — goes to prod; a mixed
//! staging is refused, naming the host that differs, and prod is left as it was (and `status`
//! of the mixed staging exits 1).

use super::*;

#[test]
fn promote_takes_exactly_what_staging_runs_and_refuses_a_mixed_staging() -> anyhow::Result<()> {
    let w = world(
        &[
            EnvPlan::new("staging", 2),
            EnvPlan::new("prod", 1).requires("staging"),
        ],
        |_, _, _| {},
    )?;
    w.run(&["push", &w.sha(1), "--env", "staging"])?.expect(0)?;
    w.run(&["push", &w.sha(2), "--env", "staging"])?.expect(0)?;

    // 1. Mixed: the second staging host goes back to v1 by an order straight to its agent.
    let second = &w.fleet.hosts("staging")[1];
    let order = second.agent.order(APP, &w.images.v(1).image_ref, "v1");
    let done = block_on(async {
        let signed = second.agent.sign(&order).await?;
        anyhow::Ok(second.agent.client().await?.submit(signed).await?)
    })?;
    ensure!(
        done.outcome()?.kind == OutcomeKind::Succeeded,
        "{}",
        done.describe()
    );
    // `status` says so too, and exits 1 (README, "Exit codes").
    let run = w.run(&["status", "--env", "staging", "--json"])?;
    run.expect(1)?;
    let summary = run.summary()?;
    ensure!(
        summary["consistent"] == false
            && summary["reachable"] == 2
            && summary["differing"][0]["host"] == second.name(),
        "{summary}"
    );
    let run = w.run(&["promote", "--from", "staging", "--to", "prod"])?;
    run.expect(3)?;
    ensure!(
        run.output().contains("staging is mixed") && run.output().contains(second.name()),
        "the refusal names the host that differs:\n{}",
        run.output()
    );
    w.expect_versions("prod", "")?;

    // 2. One release again; then v2's tag moves to another image: promote still takes the
    // digests staging runs, never the tag resolved again.
    w.run(&["push", &w.sha(2), "--env", "staging"])?.expect(0)?;
    w.images.push_tag(5, &w.sha(2))?;
    let run = w.run(&["promote", "--from", "staging", "--to", "prod"])?;
    run.expect(0)?;
    w.expect_versions("prod", "v2")?;
    let prod = status(&w.fleet.hosts("prod")[0])?;
    let digest = prod.services[0]
        .image
        .as_ref()
        .map(|i| i.digest().to_string());
    ensure!(
        digest.as_deref() == Some(w.images.v(2).image_ref.digest()),
        "prod runs {digest:?}, not staging's {}",
        w.images.v(2).image_ref
    );
    Ok(())
}
