//! `deployctl exec` end to end (issue 12), over real OpenSSH to real agents on the real engine:
//! a signed one-off command in the image the service runs, on the env's first host unless
//! `--host`, with the service's env_file and volumes; its output streamed as it comes, its exit
//! code deployctl's, journaled with its signer, its container removed; refused when the service
//! does not run or the host's `[policy] exec = false`. The demo image has no shell: the commands
//! are the demo app's own (`version`, `exit N`, `wait-for PATH`).

use proto::order::labels;

use super::*;

/// The exec containers left on `host` (there must be none once an exec ended).
fn exec_containers(host: &SshHost) -> anyhow::Result<String> {
    Ok(docker(&[
        "ps",
        "-aq",
        "--filter",
        "label=deployctl.role=exec",
        "--filter",
        &format!("label={}={}", labels::HOST, host.name()),
    ])?)
}

/// The `exec` entries of a `history --json` run: (host, entry).
fn exec_entries(run: &Run) -> Vec<serde_json::Value> {
    run.json_lines()
        .into_iter()
        .filter(|v| v["event"] == "history" && v["entry"]["action"] == "exec")
        .collect()
}

#[test]
fn exec_runs_a_signed_one_off_command_in_the_running_image() -> anyhow::Result<()> {
    let mut w = world(&[EnvPlan::new("staging", 2)], |_, _, _| {})?;
    w.run(&["push", "v1", "--env", "staging"])?.expect(0)?;
    let (first, second) = {
        let hosts = w.fleet.hosts("staging");
        (hosts[0].name().to_string(), hosts[1].name().to_string())
    };

    // 1. The running digest's version, on the first host; stdout is the command's alone.
    let run = w.run(&["exec", "--env", "staging", "--", "/app", "version"])?;
    run.expect(0)?;
    ensure!(
        run.stdout == "v1\n",
        "stdout: {:?}\n{}",
        run.stdout,
        run.stderr
    );
    let run = w.run(&[
        "--json", "exec", "--env", "staging", "--", "/app", "version",
    ])?;
    run.expect(0)?;
    let summary = run.summary()?;
    ensure!(
        summary["host"] == first.as_str()
            && summary["result"] == "exited"
            && summary["command_exit_code"] == 0
            && summary["argv"] == serde_json::json!(["/app", "version"])
            && summary["image"] == w.images.v(1).image_ref.to_string(),
        "{summary}"
    );

    // 2. The command's exit code is deployctl's; --host picks the host.
    let run = w.run(&[
        "exec", "--env", "staging", "--host", &second, "--", "/app", "exit", "7",
    ])?;
    run.expect(7)?;
    ensure!(
        run.stderr.contains(&format!("on {second}")) && run.stderr.contains("exited with code 7"),
        "{}",
        run.stderr
    );

    // 3. Output streams: the command waits for a file in the service's volume that is made
    //    only once its first line has reached deployctl's stdout.
    let flag = w.fleet.home().join("data/exec-flag");
    let mut streaming = w.fleet.spawn(&[
        "--json",
        "exec",
        "--env",
        "staging",
        "--",
        "/app",
        "wait-for",
        "/data/exec-flag",
    ])?;
    let before = streaming.read_until(|v| v["event"] == "output" && v["stream"] == "stdout")?;
    let first_line = before.last().context("a line")?;
    ensure!(
        first_line["line"] == "waiting for /data/exec-flag" && first_line["host"] == first.as_str(),
        "{first_line}"
    );
    ensure!(
        before
            .iter()
            .any(|v| v["event"] == "job" && v["job"]["phase"] == "exec"),
        "the agent says what it runs before the output: {before:#?}"
    );
    std::fs::write(&flag, "")?;
    let after = streaming.read_until(|v| v["event"] == "summary")?;
    let outputs: Vec<(&str, &str)> = after
        .iter()
        .filter(|v| v["event"] == "output")
        .filter_map(|v| Some((v["stream"].as_str()?, v["line"].as_str()?)))
        .collect();
    ensure!(
        outputs.last() == Some(&("stdout", "found /data/exec-flag")),
        "{outputs:?}"
    );
    let stderr_line = before.iter().chain(&after).any(|v| {
        v["event"] == "output"
            && v["stream"] == "stderr"
            && v["line"]
                .as_str()
                .is_some_and(|l| l.starts_with("wait-for: polling"))
    });
    ensure!(stderr_line, "stderr lines come too: {after:#?}");
    let summary = after.last().context("summary")?;
    ensure!(summary["exit_code"] == 0, "{summary}");
    drop(streaming);

    // 4. The service's env_file is the command's too.
    let env_file = w.fleet.home().join("web.env");
    std::fs::write(&env_file, "DEMO_VERSION=from-the-env-file\n")?;
    std::fs::set_permissions(
        &env_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    let config = std::fs::read_to_string(w.fleet.home().join("deploy.toml"))?;
    let with_env_file = config.replace(
        "[services.web]\n",
        &format!(
            "[services.web]\nenv_file = {}\n",
            quote(&env_file.display().to_string())
        ),
    );
    w.fleet.write_file("deploy.toml", &with_env_file)?;
    let run = w.run(&["exec", "--env", "staging", "--", "/app", "version"])?;
    run.expect(0)?;
    ensure!(run.stdout == "from-the-env-file\n", "{}", run.output());
    w.fleet.write_file("deploy.toml", &config)?;

    // 5. Journaled with the signer; nothing left behind; the service untouched.
    let run = w.run(&["--json", "history", "--env", "staging"])?;
    run.expect(0)?;
    let execs = exec_entries(&run);
    ensure!(execs.len() == 5, "five execs: {}", run.stdout);
    for e in &execs {
        ensure!(
            e["entry"]["signer"]
                .as_str()
                .is_some_and(|s| s.starts_with("deployer@deployctl-test (SHA256:"))
                && e["entry"]["issued_by"] == "e2e@deployctl-test"
                && e["entry"]["image"] == w.images.v(1).image_ref.to_string(),
            "{e}"
        );
    }
    let seven: Vec<_> = execs
        .iter()
        .filter(|e| e["entry"]["exit_code"] == 7)
        .collect();
    ensure!(
        seven.len() == 1
            && seven[0]["host"] == second.as_str()
            && seven[0]["entry"]["outcome"] == "failed"
            && seven[0]["entry"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("`/app exit 7` in web exited with code 7")),
        "{seven:?}"
    );
    for h in w.fleet.hosts("staging") {
        ensure!(
            exec_containers(h)?.is_empty(),
            "exec containers left on {}",
            h.name()
        );
    }
    w.expect_versions("staging", "v1")?;

    // 6. A service that does not run has nothing to run the command in.
    let stopped = w.fleet.hosts("staging")[1].agent.container_name(APP, "web");
    docker(&["stop", &stopped])?;
    let run = w.run(&[
        "exec", "--env", "staging", "--host", &second, "--", "/app", "version",
    ])?;
    run.expect(3)?;
    ensure!(run.output().contains("not running"), "{}", run.output());

    // 7. A host whose policy forbids exec refuses it, naming the rule; nothing is journaled.
    let journaled = history(&w.fleet.hosts("staging")[0])?.len();
    let policy = harness::agents::AgentSetup::new(&[]).policy + "exec = false\n";
    w.fleet.hosts_mut("staging")[0].agent.set_policy(&policy)?;
    let run = w.run(&[
        "--json", "exec", "--env", "staging", "--", "/app", "version",
    ])?;
    run.expect(3)?;
    let refused = run
        .json_lines()
        .into_iter()
        .find(|v| v["event"] == "refused")
        .context(run.stdout.clone())?;
    ensure!(
        refused["refusal"]["kind"] == "policy-denied"
            && refused["refusal"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("[policy] exec denies")),
        "{refused}"
    );
    ensure!(run.summary()?["result"] == "refused", "{}", run.stdout);
    ensure!(
        history(&w.fleet.hosts("staging")[0])?.len() == journaled,
        "a refused exec is not journaled"
    );
    Ok(())
}
