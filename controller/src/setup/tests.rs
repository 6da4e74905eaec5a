//! The setup plan from a host's facts, as a table; the probe's output, the allowed_signers merge,
//! ELF machines and the agent.toml setup writes.

use expect_test::expect;

use super::*;

const SUM: &str = "aaaa";
const KEY: &str = "ci@acme namespaces=\"deployctl-order\" ssh-ed25519 AAAAC3NzaKEY ci@acme";

fn want() -> Desired {
    Desired {
        binary_sha256: SUM.into(),
        binary_arch: "x86_64".into(),
        agent_toml: "host = \"h1\"\n".into(),
        signer_lines: vec![KEY.into()],
        unit: "[Unit]\n".into(),
        login_user: Some("deploy".into()),
    }
}

fn bare() -> HostFacts {
    HostFacts {
        arch: "x86_64".into(),
        systemd: true,
        docker_group: true,
        deployctl_group: false,
        agent_user: false,
        agent_in_docker: false,
        binary_sha256: None,
        agent_toml: None,
        allowed_signers: None,
        unit: None,
        unit_active: false,
        login: Some(LoginFacts {
            exists: false,
            in_group: false,
            has_keys: false,
        }),
    }
}

fn set_up() -> HostFacts {
    HostFacts {
        deployctl_group: true,
        agent_user: true,
        agent_in_docker: true,
        binary_sha256: Some(SUM.into()),
        agent_toml: Some(want().agent_toml),
        allowed_signers: Some(format!("{KEY}\n")),
        unit: Some(want().unit),
        unit_active: true,
        login: Some(LoginFacts {
            exists: true,
            in_group: true,
            has_keys: true,
        }),
        ..bare()
    }
}

fn show(facts: HostFacts, mode: Mode) -> String {
    match plan(&facts, &want(), mode) {
        Err(e) => format!("refused: {e}"),
        Ok(p) if p.unchanged() && p.notes.is_empty() => "unchanged".into(),
        Ok(p) => p
            .steps
            .iter()
            .map(Step::describe)
            .chain(p.notes.iter().map(|n| format!("note: {n}")))
            .collect::<Vec<_>>()
            .join("; "),
    }
}

#[test]
fn the_plan_goes_from_what_a_host_has_to_what_it_should() {
    let rows: Vec<(&str, HostFacts, Mode)> = vec![
        ("a bare host", bare(), Mode::Install),
        ("set up", set_up(), Mode::Install),
        ("set up, --upgrade", set_up(), Mode::Upgrade),
        (
            "no systemd",
            HostFacts {
                systemd: false,
                ..bare()
            },
            Mode::Install,
        ),
        (
            "no docker",
            HostFacts {
                docker_group: false,
                ..bare()
            },
            Mode::Install,
        ),
        (
            "arm host",
            HostFacts {
                arch: "aarch64".into(),
                ..bare()
            },
            Mode::Install,
        ),
        (
            "another binary",
            HostFacts {
                binary_sha256: Some("bbbb".into()),
                ..set_up()
            },
            Mode::Install,
        ),
        (
            "another binary, --upgrade",
            HostFacts {
                binary_sha256: Some("bbbb".into()),
                ..set_up()
            },
            Mode::Upgrade,
        ),
        (
            "agent.toml edited on the host",
            HostFacts {
                agent_toml: Some("host = \"h1\"\n[approvals]\n".into()),
                ..set_up()
            },
            Mode::Install,
        ),
        (
            "another key in allowed_signers",
            HostFacts {
                allowed_signers: Some("alice ssh-ed25519 AAAAalice\n".into()),
                ..set_up()
            },
            Mode::Install,
        ),
        (
            "an old unit",
            HostFacts {
                unit: Some("[Unit]\nold\n".into()),
                ..set_up()
            },
            Mode::Install,
        ),
        (
            "stopped",
            HostFacts {
                unit_active: false,
                ..set_up()
            },
            Mode::Install,
        ),
        (
            "deploy user outside the group, without keys",
            HostFacts {
                login: Some(LoginFacts {
                    exists: true,
                    in_group: false,
                    has_keys: false,
                }),
                ..set_up()
            },
            Mode::Install,
        ),
        (
            "agent user outside docker",
            HostFacts {
                agent_in_docker: false,
                ..set_up()
            },
            Mode::Install,
        ),
    ];
    let table: String = rows
        .into_iter()
        .map(|(name, facts, mode)| format!("{name}:\n  {}\n", show(facts, mode)))
        .collect();
    expect![[r#"
        a bare host:
          create group deployctl; create system user deploy-agent (group deployctl, in docker); create user deploy (in deployctl) with the setup login's authorized_keys; install /usr/local/bin/deploy-agent (checksum verified); write /etc/deploy-agent/agent.toml; write /etc/deploy-agent/allowed_signers; write /etc/systemd/system/deploy-agent.service; systemctl daemon-reload; systemctl enable --now deploy-agent
        set up:
          unchanged
        set up, --upgrade:
          unchanged
        no systemd:
          refused: no systemd runs on this host (/run/systemd/system is missing); set the agent up by hand instead: README "Running the agent on a host" has the six steps (binary, users, agent.toml, allowed_signers, a service for `deploy-agent run --config /etc/deploy-agent/agent.toml`, first push)
        no docker:
          refused: Docker is not installed (no `docker` group): install the Docker engine first (e.g. `apt install docker.io`), then run setup again
        arm host:
          refused: the host is aarch64, but this deploy-agent binary is built for x86_64: pass --agent-binary with a aarch64 build
        another binary:
          refused: the host runs another deploy-agent (/usr/local/bin/deploy-agent sha256 bbbb, this deployctl ships aaaa): run `deployctl setup --upgrade` to replace it once no job runs
        another binary, --upgrade:
          replace /usr/local/bin/deploy-agent (checksum verified) once no job runs; systemctl restart deploy-agent
        agent.toml edited on the host:
          note: /etc/deploy-agent/agent.toml differs from what setup would write: kept as the host has it
        another key in allowed_signers:
          write /etc/deploy-agent/allowed_signers
        an old unit:
          write /etc/systemd/system/deploy-agent.service; systemctl daemon-reload; systemctl restart deploy-agent
        stopped:
          systemctl enable --now deploy-agent
        deploy user outside the group, without keys:
          add deploy to group deployctl; note: deploy has no ~/.ssh/authorized_keys: add the controllers' keys before the first push
        agent user outside docker:
          add deploy-agent to group docker; systemctl restart deploy-agent
    "#]]
    .assert_eq(&table);
}

#[test]
fn probe_output_reads_back() {
    let text = "arch=x86_64\nsystemd=yes\ndocker_group=yes\ndeployctl_group=no\nagent_user=no\n\
                agent_in_docker=no\nbinary_sha256=\nagent_toml=-\nallowed_signers=YWxpY2UK\n\
                unit=-\nunit_active=no\nlogin_exists=yes\nlogin_in_group=no\nlogin_has_keys=yes\n";
    let facts = HostFacts::parse(text).unwrap();
    assert_eq!(facts.binary_sha256, None);
    assert_eq!(facts.agent_toml, None);
    assert_eq!(facts.allowed_signers.as_deref(), Some("alice\n"));
    assert_eq!(
        facts.login,
        Some(LoginFacts {
            exists: true,
            in_group: false,
            has_keys: true
        })
    );
    let err = HostFacts::parse("arch=x86_64\n").unwrap_err();
    assert!(err.contains("systemd"), "{err}");
    let err = HostFacts::parse(&text.replace("YWxpY2UK", "!!")).unwrap_err();
    assert!(err.contains("allowed_signers"), "{err}");
}

#[test]
fn allowed_signers_gain_the_env_keys_and_keep_the_rest() {
    let alice = "alice@acme namespaces=\"deployctl-order\" ssh-ed25519 AAAAalice alice";
    assert_eq!(
        merge_allowed_signers(None, &[KEY.into()]),
        format!("{KEY}\n")
    );
    assert_eq!(
        merge_allowed_signers(Some(alice), &[KEY.into()]),
        format!("{alice}\n{KEY}\n")
    );
    // the same key under another principal is already there
    let renamed = "ci namespaces=\"deployctl-order\" ssh-ed25519 AAAAC3NzaKEY";
    assert_eq!(
        merge_allowed_signers(Some(&format!("{renamed}\n")), &[KEY.into()]),
        format!("{renamed}\n")
    );
}

#[test]
fn elf_headers_name_the_machine() {
    let mut h = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0\x3e\0".to_vec();
    assert_eq!(elf_arch(&h), Some("x86_64"));
    h[18] = 0xb7;
    assert_eq!(elf_arch(&h), Some("aarch64"));
    assert_eq!(elf_arch(b"#!/bin/sh\n"), None);
    assert_eq!(elf_arch(b""), None);
    let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    assert_eq!(elf_arch(&me), Some(std::env::consts::ARCH));
}

#[test]
fn agent_toml_admits_what_deploy_toml_runs() {
    let text = r#"
app = "acme"
image = "127.0.0.1:5000/acme/web"
[services.web]
ports = ["80:8080"]
volumes = ["/srv/acme:/data", "named:/cache"]
env_file = "/etc/acme/web.env"
[services.worker]
image = "127.0.0.1:5000/acme/worker"
[env.prod]
hosts = [{ name = "prod-1", ssh = "deploy@10.0.0.5" }]
"#;
    let cfg =
        crate::config::DeployConfig::parse(text, std::path::Path::new("deploy.toml")).unwrap();
    let host = &cfg.envs["prod"].hosts[0];
    expect![[r##"
        # Written by `deployctl setup --env prod` from acme's deploy.toml. Setup never
        # overwrites this file once it exists: edit it here (README, "Running the agent on a
        # host" explains every key), and restart the agent: systemctl restart deploy-agent
        host = "prod-1"
        env = "prod"
        socket = "/run/deploy-agent/agent.sock"
        state_dir = "/var/lib/deploy-agent"
        allowed_signers = "/etc/deploy-agent/allowed_signers"
        allowed_images = ["127.0.0.1:5000/acme/web", "127.0.0.1:5000/acme/worker"]

        [policy]
        volumes = ["/srv/acme"]
        files = ["/etc/deploy-agent/apps", "/etc/acme"]
        ports = "80-65535"
    "##]]
    .assert_eq(&agent_toml(&cfg, "prod", host));
}
