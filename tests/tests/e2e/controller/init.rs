//! `deployctl init --from compose.yaml` end to end: the deploy.toml it writes from a compose
//! file naming the demo image pushes as it is, over real OpenSSH to a real agent, and the
//! container runs and answers on its published port; an inline secret is not copied; a second
//! init leaves the file as it is.

use super::*;

#[test]
fn init_from_compose_writes_a_deploy_toml_that_pushes_as_written() -> anyhow::Result<()> {
    let w = world(&[EnvPlan::new("staging", 1)], |_, _, _| {})?;
    let host = &w.fleet.hosts("staging")[0];
    // Its own directory: the world's deploy.toml in the home is not the one pushed.
    let dir = w.fleet.home().join("shop");
    std::fs::create_dir_all(&dir)?;
    let port = harness::free_port()?;
    std::fs::write(
        dir.join("compose.yaml"),
        format!(
            r#"services:
  web:
    image: {repo}:v1
    ports: ["127.0.0.1:{port}:8080"]
    environment:
      SECRET_TOKEN: hunter2
    healthcheck:
      test: ["CMD", "curl", "-f", "http://localhost:8080/healthz"]
      interval: 200ms
    restart: unless-stopped
  builder:
    build: .
"#,
            repo = w.images.repository()
        ),
    )?;
    let (spec, socket) = (
        host.sshd.host_spec(),
        host.agent.socket().display().to_string(),
    );
    let init = || -> anyhow::Result<Run> {
        let args = [
            "init",
            "--from",
            "compose.yaml",
            "--app",
            APP,
            "--env",
            "staging",
            "--host",
            &spec,
            "--socket",
            &socket,
        ];
        Ok(w.fleet.run(w.fleet.command(&args).current_dir(&dir))?)
    };
    let run = init()?;
    run.expect(0)?;
    let written = std::fs::read_to_string(dir.join("deploy.toml"))?;
    ensure!(
        written.contains("SECRET_TOKEN") && !written.contains("hunter2"),
        "the variable is named, its value never copied:\n{written}"
    );
    ensure!(
        run.stderr.contains("builder skipped") && run.stderr.contains("SECRET_TOKEN"),
        "the warnings are printed:\n{}",
        run.output()
    );

    // Pushed as written, from the directory init wrote it in.
    let push = w.fleet.run(
        w.fleet
            .command(&["push", "v1", "--env", "staging"])
            .current_dir(&dir),
    )?;
    push.expect(0)?;
    w.expect_versions("staging", "v1")?;
    let answer = http_get(
        &format!("http://127.0.0.1:{port}/version"),
        Duration::from_secs(5),
    )?;
    ensure!(answer.body.trim() == "v1", "the published port: {answer:?}");

    // A second init leaves the file as it is.
    let again = init()?;
    again.expect(3)?;
    ensure!(
        again.stderr.contains("already exists") && again.stderr.contains("--force"),
        "{}",
        again.output()
    );
    ensure!(
        std::fs::read_to_string(dir.join("deploy.toml"))? == written,
        "init changed an existing file"
    );
    Ok(())
}
