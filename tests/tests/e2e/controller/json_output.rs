//! The `--json` contract (README, "Output"), command by command: every stdout line is one JSON
//! object naming its `event`, nothing else reaches stdout, and exactly one summary ends the
//! output with the process's exit code (`Run::summary` holds every `--json` run of the e2e
//! tests to it; this test runs every command). `maintenance` runs only to its refusal here (no
//! service behind Caddy); proxy.rs drives it through a real Caddy.

use super::*;

#[test]
fn every_commands_json_is_one_object_per_line_ending_in_its_summary() -> anyhow::Result<()> {
    let mut w = world(
        &[EnvPlan::new("staging", 1), EnvPlan::new("prod", 1)],
        |_, _, _| {},
    )?;
    // (arguments, exit code, the summary's `command`)
    let runs: &[(&[&str], i32, &str)] = &[
        (&["init", "--config", "init.toml", "--json"], 0, "init"),
        (&["--json", "push", "v1", "--env", "staging"], 0, "push"),
        (&["status", "--env", "staging", "--json"], 0, "status"),
        (&["history", "--env", "staging", "--json"], 0, "history"),
        (
            &["logs", "--env", "staging", "--json", "-n", "5"],
            0,
            "logs",
        ),
        (
            &[
                "exec", "--env", "staging", "--json", "--", "/app", "version",
            ],
            0,
            "exec",
        ),
        (&["--json", "push", "v2", "--env", "staging"], 0, "push"),
        (&["rollback", "--env", "staging", "--json"], 0, "rollback"),
        (
            &["promote", "--from", "staging", "--to", "prod", "--json"],
            0,
            "promote",
        ),
        (&["approvals", "--env", "staging", "--json"], 0, "approvals"),
        // every env (prod and staging run the same release after the promote), then doctor
        (&["status", "--json"], 0, "status"),
        (&["doctor", "--env", "staging", "--json"], 0, "doctor"),
        (
            &["keys", "generate", "--out", "k", "--json"],
            0,
            "keys generate",
        ),
        (
            &["maintenance", "on", "--env", "staging", "--json"],
            64,
            "maintenance",
        ),
        // A usage error clap finds, and a refusal before anything changed.
        (&["push", "--env", "staging", "--json"], 64, "usage"),
        (&["push", "v9", "--env", "staging", "--json"], 3, "push"),
    ];
    for (args, code, command) in runs {
        let run = w.run(args)?;
        run.expect(*code)?;
        let summary = run.summary()?;
        ensure!(summary["command"] == *command, "{summary}");
    }
    w.expect_versions("prod", "v1")?;

    // Every host of the env unreachable: the reading commands still end in one summary, exit 3.
    w.fleet.hosts_mut("staging")[0]
        .agent
        .terminate(Duration::from_secs(30))?;
    for command in ["status", "history", "logs"] {
        let run = w.run(&[command, "--env", "staging", "--json"])?;
        run.expect(3)?;
        let summary = run.summary()?;
        ensure!(summary["command"] == command, "{summary}");
    }
    Ok(())
}
