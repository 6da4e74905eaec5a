//! `deployctl doctor` (issue 14): one env whose hosts each carry one seeded fault — a host key
//! not in known_hosts, a host with no agent (a bare host), an agent of another version, an
//! agent whose clock is 5 minutes ahead (libfaketime) — next to a healthy host; each fault is
//! named with its fix, the healthy host passes every check, and doctor exits 1; and a registry
//! that wants credentials this machine lacks is named with `docker login`.

use harness::{BareHost, FakeAgent, Sshd};
use proto::wire::{AgentStatus, Reply};

use super::*;

#[test]
fn doctor_names_each_seeded_fault_with_its_fix() -> anyhow::Result<()> {
    let w = world(&[EnvPlan::new("staging", 2)], |_, i, setup| {
        if i == 1 {
            setup.clock_off("+5m");
        }
    })?;
    let fleet = &w.fleet;
    let (good, skewed) = (&fleet.hosts("staging")[0], &fleet.hosts("staging")[1]);
    let bare = BareHost::start(&fleet.user_key.public_line)?;
    let stranger = Sshd::start(std::slice::from_ref(&fleet.user_key.public_line))?;
    let old = FakeAgent::start(
        Reply::Hello {
            protocol: proto::wire::PROTOCOL_VERSION,
            agent_version: "0.0.1".into(),
            host: "old".into(),
            env: "staging".into(),
        },
        AgentStatus {
            agent_version: "0.0.1".into(),
            host: "old".into(),
            env: "staging".into(),
            uptime_secs: 1,
            services: Vec::new(),
            running: Vec::new(),
            approvals: None,
            host_health: None,
        },
    )?;
    let known_hosts = fleet.home().join(".ssh/known_hosts");
    let mut kh = std::fs::read_to_string(&known_hosts)?;
    kh.push_str(&(bare.known_hosts_line() + "\n"));
    std::fs::write(&known_hosts, kh)?;
    let config = fleet.home().join("deploy.toml");
    let extra = format!(
        "  {{ name = \"bare\", ssh = \"root@127.0.0.1:{}\" }},\n  {{ name = \"stranger\", ssh = {} }},\n  {{ name = \"old\", socket = {} }},\n]",
        bare.port(),
        quote(&stranger.host_spec()),
        quote(&old.socket().display().to_string()),
    );
    let text = std::fs::read_to_string(&config)?.replacen("\n]", &format!("\n{extra}"), 1);
    std::fs::write(&config, text)?;

    let run = w.run(&["doctor", "--env", "staging", "--json"])?;
    run.expect(1)?;
    let checks: Vec<serde_json::Value> = run
        .json_lines()
        .into_iter()
        .filter(|l| l["event"] == "check")
        .collect();
    let failed = |host: &str, check: &str| {
        checks
            .iter()
            .find(|c| c["host"] == host && c["check"] == check && c["ok"] == false)
            .map(|c| format!("{} / fix: {}", c["detail"], c["fix"]))
    };
    let out = run.output();
    ensure!(
        checks
            .iter()
            .filter(|c| c["host"] == good.name())
            .all(|c| c["ok"] == true)
            && checks.iter().filter(|c| c["host"] == good.name()).count() >= 5,
        "the healthy host: {out}"
    );
    let clock = failed(skewed.name(), "clock").with_context(|| format!("no clock fault: {out}"))?;
    ensure!(
        clock.contains("ahead") && clock.contains("timedatectl"),
        "{clock}"
    );
    let missing = failed("bare", "agent").with_context(|| format!("no missing agent: {out}"))?;
    ensure!(
        missing.contains("deployctl setup --env staging"),
        "{missing}"
    );
    let key = failed("stranger", "ssh").with_context(|| format!("no host key fault: {out}"))?;
    ensure!(key.contains(&stranger.known_hosts_line()), "{key}");
    let version = failed("old", "agent").with_context(|| format!("no version fault: {out}"))?;
    ensure!(
        version.contains("0.0.1") && version.contains("--upgrade"),
        "{version}"
    );
    let summary = run.summary()?;
    ensure!(summary["problems"] == 4, "{summary}");
    Ok(())
}

#[test]
fn doctor_says_to_log_in_when_the_registry_wants_credentials_we_lack() -> anyhow::Result<()> {
    require_prereqs()?;
    let registry = harness::Registry::start_with(harness::RegistryOptions {
        basic_auth: Some(("ci".into(), "registry-password".into())),
        tls: None,
    })?;
    let addr = registry.addr();
    let w = world_on(registry, &[EnvPlan::new("staging", 1)], |_, _, _| {})?;
    let run = w.run(&["doctor", "--env", "staging", "--json"])?;
    run.expect(1)?;
    let image = run
        .json_lines()
        .into_iter()
        .find(|l| l["event"] == "check" && l["check"] == "image")
        .with_context(|| format!("no image check: {}", run.output()))?;
    ensure!(image["ok"] == false, "{image}");
    let fix = image["fix"].as_str().unwrap_or_default();
    ensure!(fix.contains(&format!("docker login {addr}")), "{image}");
    let host = &w.fleet.hosts("staging")[0];
    ensure!(
        run.json_lines()
            .iter()
            .filter(|l| l["event"] == "check" && l["host"] == host.name())
            .all(|l| l["ok"] == true),
        "the host itself is fine: {}",
        run.output()
    );
    Ok(())
}
