//! A canary rollout end to end (issue 13): `canary = { hosts = 1, watch = "10s" }` holds a push
//! after the first host; a release that passes its deploy's health gate and dies 3 s later is
//! rolled back on the canary during the watch (exit 1) and the other hosts are never touched;
//! a healthy release goes on to every host after the watch.

use harness::{build_demo_images, derive_image};

use super::*;

#[test]
fn a_canary_that_turns_unhealthy_is_rolled_back_and_the_rest_never_touched() -> anyhow::Result<()> {
    let w = world(
        &[EnvPlan::new("prod", 3)
            .max_parallel(2)
            .line(r#"canary = { hosts = 1, watch = "10s" }"#)],
        |_, _, _| {},
    )?;
    // v1 everywhere, through the canary's watch.
    let run = w.run(&["push", &w.sha(1), "--env", "prod"])?;
    run.expect(0)?;
    ensure!(
        run.output().contains("canary") && run.output().contains("stayed healthy"),
        "the push held for its canary:\n{}",
        run.output()
    );
    w.expect_versions("prod", "v1")?;
    let before: Vec<String> = w
        .fleet
        .hosts("prod")
        .iter()
        .map(|h| {
            docker(&[
                "inspect",
                "-f",
                "{{.Id}}",
                &h.agent.container_name(APP, "web"),
            ])
        })
        .collect::<Result<_, _>>()?;

    // A release healthy for 3 s, then dead (and restarted by the engine, and dead again).
    let v6 = &build_demo_images()?[5];
    let sha = harness::fake_git_sha("dies after 3s");
    let late = derive_image(v6, "ENV DEMO_CRASH_AFTER_MS=3000")?;
    w.images.push_image(&late, &sha)?;
    let run = w.run(&["push", &sha, "--env", "prod"])?;
    run.expect(1)?;
    let canary = w.fleet.hosts("prod")[0].name().to_string();
    ensure!(
        run.output().contains("canary regressed") && run.output().contains(&canary),
        "the failure names the canary's regression:\n{}",
        run.output()
    );
    w.expect_versions("prod", "v1")?;
    for (h, id) in w.fleet.hosts("prod").iter().zip(&before).skip(1) {
        let now = docker(&[
            "inspect",
            "-f",
            "{{.Id}}",
            &h.agent.container_name(APP, "web"),
        ])?;
        ensure!(&now == id, "{} was touched", h.name());
        ensure!(
            history(h)?.len() == 1,
            "{} got an order besides v1's: {:?}",
            h.name(),
            history(h)?
        );
    }
    Ok(())
}
