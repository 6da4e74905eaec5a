//! `~/.ssh/config` (issue 14): a host written in deploy.toml as an alias reaches its agent
//! through the config's `HostName`, `Port`, `User` and `IdentityFile`, as `ssh` would — the key
//! here is found only through `IdentityFile`.

use super::*;

#[test]
fn a_host_alias_from_ssh_config_reaches_its_agent() -> anyhow::Result<()> {
    let w = world(&[EnvPlan::new("staging", 1)], |_, _, _| {})?;
    let host = &w.fleet.hosts("staging")[0];
    let ssh = w.fleet.home().join(".ssh");
    // The key is not where deployctl looks by default any more: only the config names it.
    std::fs::rename(ssh.join("id_ed25519"), ssh.join("deploy_key"))?;
    let _ = std::fs::rename(ssh.join("id_ed25519.pub"), ssh.join("deploy_key.pub"));
    std::fs::write(
        ssh.join("config"),
        format!(
            "Host staging-box\n    HostName 127.0.0.1\n    Port {}\n    User {}\n    IdentityFile {}\n",
            host.sshd.port(),
            host.sshd.user(),
            ssh.join("deploy_key").display()
        ),
    )?;
    let toml_path = w.fleet.home().join("deploy.toml");
    let toml = std::fs::read_to_string(&toml_path)?;
    let direct = quote(&host.sshd.host_spec());
    ensure!(toml.contains(&direct), "{toml}");
    std::fs::write(&toml_path, toml.replace(&direct, "\"staging-box\""))?;

    let run = w.run(&["push", &w.sha(1), "--env", "staging"])?;
    run.expect(0)?;
    w.expect_versions("staging", "v1")?;
    Ok(())
}
