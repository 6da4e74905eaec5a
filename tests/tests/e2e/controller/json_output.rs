//! The `--json` contract (README, "Output"), command by command: every stdout line is one JSON
//! object naming its `event`, nothing else reaches stdout, and exactly one summary ends the
//! output with the process's exit code. `maintenance` runs only to its refusal here (no
//! service behind Caddy); proxy.rs drives it through a real Caddy.

use serde_json::Value;

use super::*;

/// Every stdout line of `run` parsed as a JSON object with an `event`; the summary, which must
/// be the one last line and carry the process's exit code.
fn strict_summary(run: &Run) -> anyhow::Result<Value> {
    let mut objects = Vec::new();
    for (i, line) in run.stdout.lines().enumerate() {
        let value: Value = serde_json::from_str(line).with_context(|| {
            format!(
                "`{}`: stdout line {} is no JSON: {line:?}\n{}",
                run.command,
                i + 1,
                run.output()
            )
        })?;
        ensure!(
            value.is_object() && value["event"].is_string(),
            "`{}`: line {} is no event object: {line}",
            run.command,
            i + 1
        );
        objects.push(value);
    }
    let summaries = objects.iter().filter(|v| v["event"] == "summary").count();
    let last = objects.last().context("no output at all")?;
    ensure!(
        summaries == 1 && last["event"] == "summary",
        "`{}`: {summaries} summaries, the last line {last}",
        run.command
    );
    ensure!(
        last["exit_code"].as_i64() == run.code.map(i64::from),
        "`{}` exited {:?}, its summary says {}",
        run.command,
        run.code,
        last["exit_code"]
    );
    Ok(last.clone())
}

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
        let summary = strict_summary(&run)?;
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
        let summary = strict_summary(&run)?;
        ensure!(summary["command"] == command, "{summary}");
    }
    Ok(())
}
