//! Every doctor verdict, as one table of checks and fixes.

use std::time::{Duration, UNIX_EPOCH};

use expect_test::expect;

use super::*;
use crate::resolve::ResolveError;

fn show(rows: &[CheckRow]) -> String {
    rows.iter()
        .flat_map(CheckRow::lines)
        .map(|l| l + "\n")
        .collect()
}

#[test]
fn each_fault_is_named_with_its_fix() {
    let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let ms = Duration::from_millis;
    let space = |what: &str, free: u64, total: u64| DiskSpace {
        what: what.into(),
        path: "/var/lib/docker".into(),
        free_bytes: free << 30,
        total_bytes: total << 30,
    };
    let up = EngineHealth {
        reachable: true,
        version: Some("20.10.24".into()),
        api_version: Some("1.41".into()),
        root_dir: Some("/var/lib/docker".into()),
        error: None,
    };
    let down = EngineHealth {
        reachable: false,
        version: None,
        api_version: None,
        root_dir: None,
        error: Some("permission denied on /var/run/docker.sock".into()),
    };
    let key_error = "host key of [127.0.0.1]:2222 is not in /home/u/.ssh/known_hosts: the server offered ssh-ed25519 SHA256:abc.\nIf that is the right key …\n[127.0.0.1]:2222 ssh-ed25519 AAAAkey";
    let rows = vec![
        ssh("h1", "deploy@h1", Ok(Some("SHA256:abc"))),
        ssh("h1", "deploy@h1", Err(SshProblem::HostKey(key_error))),
        ssh(
            "h1",
            "deploy@h1",
            Err(SshProblem::Auth("SSH authentication as deploy@h1 failed")),
        ),
        ssh(
            "h1",
            "deploy@h1",
            Err(SshProblem::Unreachable("cannot connect to h1: refused")),
        ),
        agent("h1", "prod", AgentAnswer::Version("0.1.0"), "0.1.0"),
        agent("h1", "prod", AgentAnswer::Version("0.0.9"), "0.1.0"),
        agent(
            "h1",
            "prod",
            AgentAnswer::Failed("sh: 1: deploy-agent: not found"),
            "0.1.0",
        ),
        agent(
            "h1",
            "prod",
            AgentAnswer::OtherProtocol("protocol-version: the agent speaks 2, this deployctl 1"),
            "0.1.0",
        ),
        agent(
            "h1",
            "prod",
            AgentAnswer::Failed("connection lost: agent restarting"),
            "0.1.0",
        ),
        engine("h1", &up),
        engine("h1", &down),
        disk("h1", &space("engine", 40, 100)),
        disk("h1", &space("engine", 1, 100)),
        disk("h1", &space("state_dir", 3, 100)),
        clock("h1", t0 + ms(50), t0, t0 + ms(100)),
        clock("h1", t0 + Duration::from_secs(300), t0, t0 + ms(100)),
        clock("h1", t0 - Duration::from_secs(90), t0, t0 + ms(100)),
        image(
            "127.0.0.1:5000/acme/web",
            Ok("127.0.0.1:5000/acme/web@sha256:0123 readable".into()),
        ),
        image(
            "127.0.0.1:5000/acme/web",
            Err(&ResolveError::Unauthorized {
                repository: "acme/web".into(),
                detail: "401".into(),
            }),
        ),
    ];
    expect![[r#"
        h1  ok   ssh    deploy@h1: host key SHA256:abc known
        h1  FAIL ssh    deploy@h1: host key of [127.0.0.1]:2222 is not in /home/u/.ssh/known_hosts: the server offered ssh-ed25519 SHA256:abc.
        h1       fix: check the key on the host (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`), then add the line: [127.0.0.1]:2222 ssh-ed25519 AAAAkey
        h1  FAIL ssh    deploy@h1: SSH authentication as deploy@h1 failed
        h1       fix: put your public key in the login's ~/.ssh/authorized_keys (`deployctl setup` creates the login with root's keys)
        h1  FAIL ssh    deploy@h1: cannot connect to h1: refused
        h1       fix: check the address and port in deploy.toml, that sshd runs, and the firewall (`ssh -v` the same login)
        h1  ok   agent  deploy-agent 0.1.0 answers
        h1  FAIL agent  deploy-agent 0.0.9 answers, this deployctl is 0.1.0
        h1       fix: deployctl setup --env prod --upgrade (replaces the agent once no job runs)
        h1  FAIL agent  sh: 1: deploy-agent: not found
        h1       fix: deployctl setup --env prod (installs and starts the agent)
        h1  FAIL agent  protocol-version: the agent speaks 2, this deployctl 1
        h1       fix: deployctl setup --env prod --upgrade, or use the deployctl that matches the agents
        h1  FAIL agent  connection lost: agent restarting
        h1       fix: on the host: systemctl status deploy-agent; journalctl -u deploy-agent -n 50
        h1  ok   engine Docker 20.10.24 (API 1.41) answers the agent
        h1  FAIL engine the agent cannot reach Docker: permission denied on /var/run/docker.sock
        h1       fix: on the host: systemctl start docker; the agent's user must be in the docker group (`deployctl setup` does that)
        h1  ok   disk   engine (/var/lib/docker): 40.0 GiB free of 100.0 GiB (40%)
        h1  FAIL disk   engine (/var/lib/docker): 1.0 GiB free of 100.0 GiB (1%)
        h1       fix: free space on the host: `docker image prune -a` removes images no container uses; or grow the disk
        h1  FAIL disk   state_dir (/var/lib/docker): 3.0 GiB free of 100.0 GiB (3%)
        h1       fix: free space on the host's filesystem holding the agent's state dir, or grow it
        h1  ok   clock  the host's clock is 0s ahead of this machine's
        h1  FAIL clock  the host's clock is 5m ahead of this machine's
        h1       fix: turn on time sync on the host (`timedatectl set-ntp true`, or chrony) and check this machine's too: orders expire by the host's clock
        h1  FAIL clock  the host's clock is 1m30s behind this machine's
        h1       fix: turn on time sync on the host (`timedatectl set-ntp true`, or chrony) and check this machine's too: orders expire by the host's clock
        127.0.0.1:5000/acme/web  ok   image  127.0.0.1:5000/acme/web@sha256:0123 readable
        127.0.0.1:5000/acme/web  FAIL image  registry refused access to acme/web: 401
        127.0.0.1:5000/acme/web       fix: docker login 127.0.0.1:5000 (or configure its credsStore/credHelpers in ~/.docker/config.json)
    "#]]
    .assert_eq(&show(&rows));
}
