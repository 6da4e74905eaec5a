//! Registry credentials and private CAs end to end (README, "Registry credentials"): a
//! registry whose password only a credential helper knows, named by `credHelpers` and then by
//! `credsStore`, lets `deployctl push` resolve the ref and the agent pull it (each from its own
//! Docker config: `~/.docker/config.json`, and agent.toml's `docker_config`); a wrong password
//! is refused with the registry's answer and nothing changes; a registry behind a private CA is
//! trusted once `SSL_CERT_FILE` names the CA, and a clear certificate error before.

use std::path::{Path, PathBuf};

use harness::{RegistryOptions, TestCa};

use super::*;

const USER: &str = "ci";
const PASSWORD: &str = "s3cret-registry-password";
/// The helper program is `docker-credential-e2e`.
const HELPER: &str = "e2e";

/// A credential helper in a directory of its own: it answers for one registry with the
/// password in `secret` and logs every request in `calls.log` (as `$HELPER_CALLER server`).
struct CredHelper {
    dir: tempfile::TempDir,
}

impl CredHelper {
    fn new(registry: &str) -> anyhow::Result<CredHelper> {
        let dir = tempfile::Builder::new()
            .prefix("deployctl-credhelper-")
            .tempdir()?;
        let script = dir.path().join(format!("docker-credential-{HELPER}"));
        std::fs::write(
            &script,
            format!(
                r#"#!/bin/sh
here=$(dirname "$0")
test "$1" = get || exit 2
read -r server
echo "$HELPER_CALLER $server" >> "$here/calls.log"
if [ "$server" = "{registry}" ]; then
  printf '{{"ServerURL":"%s","Username":"{USER}","Secret":"%s"}}' "$server" "$(cat "$here/secret")"
else
  echo "credentials not found in native keychain"
  exit 1
fi
"#
            ),
        )?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
        let helper = CredHelper { dir };
        helper.set_secret(PASSWORD)?;
        Ok(helper)
    }

    fn set_secret(&self, secret: &str) -> anyhow::Result<()> {
        Ok(std::fs::write(self.dir.path().join("secret"), secret)?)
    }

    /// `PATH` with the helper's directory first.
    fn path_var(&self) -> String {
        format!(
            "{}:{}",
            self.dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    /// Who asked for what since the last call, and forgets it.
    fn take_calls(&self) -> anyhow::Result<Vec<String>> {
        let log = self.dir.path().join("calls.log");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        Ok(text.lines().map(str::to_string).collect())
    }
}

/// Writes a Docker client config at `path`, creating its directory.
fn write_docker_config(path: &Path, json: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    Ok(std::fs::write(path, json)?)
}

/// One host (its agent pulling with `agent_config`, finding helpers on `path_var`) and a
/// deploy.toml for `registry`'s demo images.
fn auth_world(
    registry: Registry,
    agent_config: Option<PathBuf>,
    agent_path: Option<String>,
) -> anyhow::Result<World> {
    world_on(registry, &[EnvPlan::new("staging", 1)], |_, _, setup| {
        setup.docker_config = agent_config.clone();
        if let Some(path) = &agent_path {
            setup.env_vars = vec![
                ("PATH".into(), path.clone()),
                ("HELPER_CALLER".into(), "agent".into()),
            ];
        }
    })
}

/// The digest of the image the host's `web` runs, as its agent reports it.
fn running_digest(w: &World) -> anyhow::Result<Option<String>> {
    let host = &w.fleet.hosts("staging")[0];
    Ok(status(host)?
        .services
        .iter()
        .find(|s| s.service == "web")
        .and_then(|s| s.image.as_ref())
        .map(|i| i.digest().to_string()))
}

#[test]
fn credential_helpers_let_push_resolve_and_the_agent_pull() -> anyhow::Result<()> {
    require_prereqs()?;
    let registry = Registry::start_with(RegistryOptions {
        basic_auth: Some((USER.into(), PASSWORD.into())),
        tls: None,
    })?;
    let addr = registry.addr();
    let helper = CredHelper::new(&addr)?;
    let agent_dir = tempfile::tempdir()?;
    let agent_config = agent_dir.path().join("docker/config.json");
    let w = auth_world(
        registry,
        Some(agent_config.clone()),
        Some(helper.path_var()),
    )?;
    let user_config = w.fleet.home().join(".docker/config.json");
    let push = |n: usize| -> anyhow::Result<Run> {
        let mut cmd = w.fleet.command(&["push", &w.sha(n), "--env", "staging"]);
        cmd.env("PATH", helper.path_var())
            .env("HELPER_CALLER", "deployctl");
        Ok(w.fleet.run(&mut cmd)?)
    };
    // Each side asked the helper for this registry, and only for it.
    let both_asked = |calls: &[String]| {
        let asked = |who: &str| calls.iter().any(|c| *c == format!("{who} {addr}"));
        asked("deployctl")
            && asked("agent")
            && calls.iter().all(|c| c.ends_with(&format!(" {addr}")))
    };

    // 1. credHelpers name the helper for this registry, on both sides.
    let cred_helpers = format!(r#"{{"credHelpers": {{"{addr}": "{HELPER}"}}}}"#);
    write_docker_config(&user_config, &cred_helpers)?;
    write_docker_config(&agent_config, &cred_helpers)?;
    push(1)?.expect(0)?;
    w.expect_versions("staging", "v1")?;
    ensure!(running_digest(&w)?.as_deref() == Some(w.images.v(1).digest.as_str()));
    let calls = helper.take_calls()?;
    ensure!(both_asked(&calls), "the helper was asked: {calls:?}");

    // 2. The same helper as the store of every registry.
    let store = format!(r#"{{"credsStore": "{HELPER}", "auths": {{"{addr}": {{}}}}}}"#);
    write_docker_config(&user_config, &store)?;
    write_docker_config(&agent_config, &store)?;
    let run = push(2)?;
    run.expect(0)?;
    w.expect_versions("staging", "v2")?;
    ensure!(running_digest(&w)?.as_deref() == Some(w.images.v(2).digest.as_str()));
    let calls = helper.take_calls()?;
    ensure!(both_asked(&calls), "the helper was asked: {calls:?}");

    // 3. A wrong password: refused at resolution with the registry's answer; the host keeps v2.
    helper.set_secret("not-the-password")?;
    let run = push(3)?;
    run.expect(3)?;
    let out = run.output();
    ensure!(
        out.contains(&format!("registry refused access to {addr}/acme/web"))
            && out.contains("credentials refused (401 Unauthorized)"),
        "the refusal says the registry refused the credentials:\n{out}"
    );
    w.expect_versions("staging", "v2")?;
    ensure!(running_digest(&w)?.as_deref() == Some(w.images.v(2).digest.as_str()));

    // 4. A helper that is not there: named, with the registry, not a crash.
    write_docker_config(&user_config, r#"{"credsStore": "absent"}"#)?;
    let run = push(3)?;
    run.expect(3)?;
    ensure!(
        run.output().contains(&format!(
            "credential helper docker-credential-absent (credsStore in {}) for {addr}: the program is not on PATH",
            user_config.display()
        )),
        "the error names the helper and the registry:\n{}",
        run.output()
    );
    w.expect_versions("staging", "v2")?;

    // 5. The same on the host: its pull fails naming the helper; the host keeps v2.
    helper.set_secret(PASSWORD)?;
    write_docker_config(&user_config, &cred_helpers)?;
    write_docker_config(&agent_config, r#"{"credsStore": "absent"}"#)?;
    let run = push(3)?;
    run.expect(1)?;
    ensure!(
        run.output().contains(&format!(
            "credential helper docker-credential-absent (credsStore in {}) for {addr}: the program is not on PATH",
            agent_config.display()
        )) && run.output().contains("pull-failed"),
        "the host's failure names the helper and the registry:\n{}",
        run.output()
    );
    w.expect_versions("staging", "v2")?;
    Ok(())
}

#[test]
fn a_private_ca_is_trusted_through_ssl_cert_file() -> anyhow::Result<()> {
    require_prereqs()?;
    let ca = TestCa::generate()?;
    let registry = Registry::start_with(RegistryOptions {
        basic_auth: None,
        tls: Some(ca.server_cert_and_key()),
    })?;
    let addr = registry.addr();
    let w = auth_world(registry, None, None)?;
    let push = |ca_file: Option<&Path>| -> anyhow::Result<Run> {
        let mut cmd = w.fleet.command(&["push", &w.sha(1), "--env", "staging"]);
        cmd.env_remove("SSL_CERT_FILE").env_remove("SSL_CERT_DIR");
        if let Some(file) = ca_file {
            cmd.env("SSL_CERT_FILE", file);
        }
        Ok(w.fleet.run(&mut cmd)?)
    };

    // 1. The system's roots do not hold the CA: a certificate error, never plain http instead.
    let run = push(None)?;
    run.expect(3)?;
    ensure!(
        run.output().contains(&format!(
            "registry {addr} presented a certificate this machine does not trust"
        )) && run.output().contains("SSL_CERT_FILE"),
        "the error says the certificate is not trusted and what to do:\n{}",
        run.output()
    );
    w.expect_versions("staging", "")?;

    // 2. With the CA named, the ref resolves over https and the agent pulls and runs it.
    push(Some(&ca.ca_path()))?.expect(0)?;
    w.expect_versions("staging", "v1")?;
    ensure!(running_digest(&w)?.as_deref() == Some(w.images.v(1).digest.as_str()));
    Ok(())
}
