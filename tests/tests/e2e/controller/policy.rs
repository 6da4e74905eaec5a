//! A signing key is not root (README, "What a signing key can and cannot do"): over real SSH to
//! a real agent and engine, each thing a host's `[policy]` does not list is refused before any
//! change with `policy-denied` naming the rule and the field, and the same push is admitted once
//! the policy lists it. Orders are bound to the host key deployctl verified.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use harness::{free_port, unique_name};
use proto::wire::RefusalKind;

use super::*;

/// One thing an order may ask for only when the host lists it.
struct Case {
    what: &'static str,
    /// `[services.*]` tables of deploy.toml.
    services: String,
    /// The `[policy]` rule and the order field the refusal must name.
    rule: &'static str,
    field: &'static str,
    /// What the host adds to its policy (or does to a file) to admit it.
    admit: Admit,
    /// Checked on the container once admitted.
    applied: fn(&serde_json::Value) -> bool,
}

enum Admit {
    Policy(String),
    Chmod(PathBuf, u32),
}

struct PolicyWorld {
    w: World,
    /// Where the host keeps files an order may name, listed in its base policy.
    apps: PathBuf,
    /// The `[policy]` body every case starts from.
    base: String,
}

impl PolicyWorld {
    fn start() -> anyhow::Result<PolicyWorld> {
        let w = world(&[EnvPlan::new("staging", 1)], |_, _, _| {})?;
        let apps = w.fleet.home().join("apps");
        std::fs::create_dir_all(&apps)?;
        let base = format!("files = [{}]\n", quote(&apps.display().to_string()));
        Ok(PolicyWorld { w, apps, base })
    }

    fn host(&self) -> &SshHost {
        &self.w.fleet.hosts("staging")[0]
    }

    fn set_policy(&mut self, body: &str) -> anyhow::Result<()> {
        self.w.fleet.hosts_mut("staging")[0]
            .agent
            .set_policy(body)?;
        Ok(())
    }

    fn write_services(&self, services: &str) -> anyhow::Result<()> {
        self.w.fleet.write_config(&format!(
            "app = \"{APP}\"\nimage = {}\n\n{services}",
            quote(self.w.images.repository())
        ))?;
        Ok(())
    }

    /// A file under `dir` with `text` and `mode`.
    fn file(&self, dir: &Path, name: &str, text: &str, mode: u32) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        Ok(path)
    }

    /// Every container of the host, by id: what "nothing changed" compares.
    fn containers(&self) -> anyhow::Result<String> {
        Ok(docker(&[
            "ps",
            "-aq",
            "--no-trunc",
            "--filter",
            &format!(
                "label={}={}",
                proto::order::labels::HOST,
                self.host().name()
            ),
        ])?)
    }
}

/// Whether the inspected container mounts `source` from the host.
fn mounts(c: &serde_json::Value, source: &str) -> bool {
    c["Mounts"]
        .as_array()
        .is_some_and(|m| m.iter().any(|m| m["Source"] == source))
}

const HEALTH: &str = r#"health = { healthy_for = "300ms", deadline = "10s" }"#;

fn web(extra: &str) -> String {
    format!("[services.web]\n{HEALTH}\n{extra}\n")
}

#[test]
fn each_policy_rule_refuses_before_any_change_and_admits_once_listed() -> anyhow::Result<()> {
    let mut p = PolicyWorld::start()?;
    let outside = p.w.fleet.home().join("outside");
    let env_outside = p.file(&outside, "app.env", "GREETING=hello\n", 0o600)?;
    let hostnet_env = p.file(
        &p.apps,
        "hostnet.env",
        &format!("DEMO_PORT={}\n", free_port()?),
        0o600,
    )?;
    let project = unique_name("policy");
    p.w.fleet.hosts_mut("staging")[0]
        .agent
        .cleanup()
        .compose_project(&project);
    let compose_file = p.file(
        &p.apps.join(&project),
        "compose.yaml",
        &format!(
            "version: \"2.4\"\nservices:\n  api:\n    image: \"{}\"\n",
            p.w.images.v(1).pinned()
        ),
        0o664,
    )?;
    let q = |p: &Path| quote(&p.display().to_string());

    let cases = vec![
        Case {
            what: "the host's root filesystem",
            services: web(r#"volumes = ["/:/host:ro"]"#),
            rule: "volumes",
            field: r#"services.web.volumes[0] = "/:/host:ro""#,
            admit: Admit::Policy(format!("{}volumes = [\"/\"]\n", p.base)),
            applied: |c| mounts(c, "/"),
        },
        Case {
            what: "the Docker socket",
            services: web(r#"volumes = ["/var/run/docker.sock:/var/run/docker.sock"]"#),
            rule: "volumes",
            field: "services.web.volumes[0]",
            admit: Admit::Policy(format!("{}volumes = [\"/var/run/docker.sock\"]\n", p.base)),
            applied: |c| mounts(c, "/var/run/docker.sock"),
        },
        Case {
            what: "the host network",
            services: web(&format!(
                "network = \"host\"\nenv_file = {}",
                q(&hostnet_env)
            )),
            rule: "networks",
            field: r#"services.web.network = "host""#,
            admit: Admit::Policy(format!("{}networks = [\"host\"]\n", p.base)),
            applied: |c| c["HostConfig"]["NetworkMode"] == "host",
        },
        Case {
            what: "an env_file outside `files`",
            services: web(&format!("env_file = {}", q(&env_outside))),
            rule: "files",
            field: "services.web.env_file",
            admit: Admit::Policy(format!("files = [{}, {}]\n", q(&p.apps), q(&outside))),
            applied: |c| {
                c["Config"]["Env"]
                    .as_array()
                    .is_some_and(|e| e.iter().any(|v| v == "GREETING=hello"))
            },
        },
        Case {
            what: "a group-writable compose file",
            services: format!(
                "[services.api]\nkind = \"compose\"\ncompose_file = {}\n{HEALTH}\n",
                q(&compose_file)
            ),
            rule: "files",
            field: "services.api.compose_file",
            admit: Admit::Chmod(compose_file.clone(), 0o644),
            applied: |c| c["Config"]["Labels"]["com.docker.compose.service"] == "api",
        },
        Case {
            what: "host port 80",
            services: web(r#"ports = ["127.0.0.1:80:8080"]"#),
            rule: "ports",
            field: r#"services.web.ports[0] = "127.0.0.1:80:8080""#,
            admit: Admit::Policy(format!("{}ports = \"80,1024-65535\"\n", p.base)),
            applied: |c| c["HostConfig"]["PortBindings"]["8080/tcp"][0]["HostPort"] == "80",
        },
        Case {
            what: "another principal's app",
            services: web(""),
            rule: "apps",
            field: r#"app = "acme""#,
            admit: Admit::Policy(format!(
                "{}[policy.apps]\n\"deployer@deployctl-test\" = [\"acme\"]\n",
                p.base
            )),
            applied: |c| c["State"]["Running"] == true,
        },
    ];

    // Each service alternates between v1 and v2, so every admitted push is a change.
    let mut serving = std::collections::BTreeMap::new();
    for case in &cases {
        let service = if case.field.starts_with("services.api") {
            "api"
        } else {
            "web"
        };
        let next = if serving.get(service) == Some(&1) {
            2
        } else {
            1
        };
        serving.insert(service, next);
        let sha = p.w.sha(next);
        let mut refused_policy = p.base.clone();
        if case.rule == "apps" {
            refused_policy.push_str("[policy.apps]\n\"deployer@deployctl-test\" = [\"billing\"]\n");
        }
        p.set_policy(&refused_policy)?;
        p.write_services(&case.services)?;
        let before = (p.containers()?, history(p.host())?.len());

        let run = p.w.run(&["push", &sha, "--env", "staging"])?;
        run.expect(3).with_context(|| case.what)?;
        let out = run.output();
        ensure!(
            out.contains("policy-denied")
                && out.contains(&format!("[policy] {} denies", case.rule))
                && out.contains(case.field),
            "{}: the refusal names the rule and the field:\n{out}",
            case.what
        );
        ensure!(
            (p.containers()?, history(p.host())?.len()) == before,
            "{}: a refused order changed the host",
            case.what
        );

        match &case.admit {
            Admit::Policy(body) => p.set_policy(body)?,
            Admit::Chmod(path, mode) => {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(*mode))?
            }
        }
        p.w.run(&["push", &sha, "--env", "staging"])?
            .expect(0)
            .with_context(|| format!("{} once listed", case.what))?;
        let status = status(p.host())?;
        // The compose case leaves its `api` running beside `web`.
        let id = status
            .services
            .iter()
            .find(|s| s.service == service)
            .and_then(|s| s.container_id.clone())
            .unwrap_or_default();
        let c = docker_inspect(&id)?;
        ensure!(
            (case.applied)(&c),
            "{}: the admitted container does not have it: {c}",
            case.what
        );
    }
    Ok(())
}

#[test]
fn an_order_valid_for_a_day_is_refused_unless_max_validity_allows_it() -> anyhow::Result<()> {
    let mut p = PolicyWorld::start()?;
    p.write_services(&web(""))?;
    let base = p.base.clone();
    let host = &p.w.fleet.hosts("staging")[0];
    let v1 = p.w.images.v(1).clone();
    let mut order = host.agent.order(APP, &v1.image_ref, "v1");
    order.not_after = order.issued_at.plus(Duration::from_secs(24 * 3600));
    let refused = block_on(async {
        let signed = host.agent.sign(&order).await?;
        anyhow::Ok(host.agent.client().await?.submit(signed).await?)
    })?;
    let refusal = refused.refusal()?;
    ensure!(
        refusal.kind == RefusalKind::PolicyDenied
            && refusal
                .message
                .contains("[policy] max_validity denies not_after")
            && refusal.message.contains("1day"),
        "{refusal:?}"
    );
    ensure!(
        p.containers()?.is_empty(),
        "a refused order changed the host"
    );

    p.set_policy(&format!("{base}max_validity = \"2days\"\n"))?;
    let host = &p.w.fleet.hosts("staging")[0];
    order.order_id = proto::order::new_id();
    let done = block_on(async {
        let signed = host.agent.sign(&order).await?;
        anyhow::Ok(host.agent.client().await?.submit(signed).await?)
    })?;
    ensure!(
        done.outcome()?.kind == OutcomeKind::Succeeded,
        "{}",
        done.describe()
    );
    Ok(())
}

#[test]
fn an_order_bound_to_another_hosts_key_is_refused() -> anyhow::Result<()> {
    // Host A's sshd leads to host B's agent, as a compromised login on A that relays to (or
    // claims to be) B would: deployctl verifies A's key, so the order names A's key, and B,
    // whose own key differs, refuses it.
    let w = world(&[EnvPlan::new("staging", 2)], |_, _, _| {})?;
    let (a, b) = (&w.fleet.hosts("staging")[0], &w.fleet.hosts("staging")[1]);
    // Not Fleet::write_config: it would add the fleet's own env tables.
    let config = format!(
        "app = \"{APP}\"\nimage = {}\n\n{}\n[env.staging]\nhosts = [{{ ssh = {}, socket = {} }}]\n",
        quote(w.images.repository()),
        web(""),
        quote(&a.sshd.host_spec()),
        quote(&b.agent.socket().display().to_string()),
    );
    w.fleet.write_file("deploy.toml", &config)?;
    let run = w.run(&["push", &w.sha(1), "--env", "staging"])?;
    run.expect(3)?;
    let out = run.output();
    let a_key = a.sshd.host_key_fingerprint()?;
    ensure!(
        out.contains("host-mismatch") && out.contains(&a_key) && out.contains("another machine"),
        "the refusal names the key the order is bound to:\n{out}"
    );
    ensure!(
        history(b)?.is_empty(),
        "host B ran an order bound to A's key"
    );

    // Through its own sshd, B takes the same push.
    w.fleet.write_file(
        "deploy.toml",
        &format!(
            "app = \"{APP}\"\nimage = {}\n\n{}\n[env.staging]\nhosts = [{}]\n",
            quote(w.images.repository()),
            web(""),
            b.toml_entry()
        ),
    )?;
    w.run(&["push", &w.sha(1), "--env", "staging"])?.expect(0)?;
    let entry = &history(b)?[0];
    ensure!(entry.outcome == Some(OutcomeKind::Succeeded), "{entry:?}");
    Ok(())
}
