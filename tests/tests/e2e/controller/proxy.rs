//! Zero downtime behind Caddy (issue 12), end to end: a service whose deploy.toml names a
//! `proxy` is deployed start-first behind a real Caddy, whose admin API the agent drives (its
//! `[policy] proxies` lists it). Traffic keeps flowing through Caddy at 50 requests a second
//! while versions come and go: not one request may fail, the version flips once per switch, and
//! a request in flight at a switch finishes on the old container (the drain). Maintenance mode
//! answers 503 with the operator's message; an admin API nobody answers refuses the push before
//! anything changes.
//!
//! What the proxy serves is checked through Caddy itself (the demo app's `/version`), where the
//! route points through the admin API (`GET /id/<route id>`), and what runs through Docker.

use std::time::Instant;

use harness::caddy::{self, Caddy};
use harness::{HttpResponse, Probe, container_ip, free_listen_addr};
use serde_json::Value;

use super::*;

/// Requests a second sent through Caddy while versions change.
const RATE: u32 = 50;
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);

/// The `@id` of the route the agent keeps for `web` in `env`.
fn route_id(env: &str) -> String {
    format!("deployctl-{APP}-{env}-web")
}

/// A world of one single-host env whose agent may drive the admin APIs `proxies`.
fn proxied_world(env: &str, proxies: &[&str]) -> anyhow::Result<World> {
    let listed: Vec<String> = proxies.iter().map(|p| quote(p)).collect();
    let line = format!("proxies = [{}]\n", listed.join(", "));
    world(&[EnvPlan::new(env, 1)], |_, _, setup| {
        setup.policy.push_str(&line)
    })
}

/// deploy.toml: `web` behind the Caddy whose admin API is `admin`, served on `listen`.
fn write_proxied_config(w: &World, admin: &str, listen: &str) -> anyhow::Result<()> {
    w.fleet.write_config(&format!(
        r#"app = "{APP}"
image = {image}

[services.web]
health = {{ path = "/healthz", port = 8080, interval = "200ms", healthy_for = "1s", deadline = "8s" }}
proxy = {{ caddy = {admin}, listen = [{listen}], drain = "10s" }}
"#,
        image = quote(w.images.repository()),
        admin = quote(admin),
        listen = quote(listen),
    ))?;
    Ok(())
}

fn get(url: &str) -> anyhow::Result<HttpResponse> {
    Ok(http_get(url, HTTP_TIMEOUT)?)
}

/// What `url` answers now: status and body.
fn expect_answer(url: &str, status: u16, body: &str) -> anyhow::Result<()> {
    let r = get(url)?;
    ensure!(
        (r.status, r.body.as_str()) == (status, body),
        "GET {url}: {} {:?}, expected {status} {body:?}",
        r.status,
        r.body
    );
    Ok(())
}

/// The agent's route for `web`: found by its `@id`, among the routes of the server listening
/// on `listen`, proxying to the container that serves `web` on the host and to nothing else.
fn expect_route(caddy: &Caddy, listen: &str, host: &SshHost) -> anyhow::Result<Value> {
    let id = route_id(host.agent.env());
    let config = caddy.config()?;
    let route = caddy
        .by_id(&id)?
        .with_context(|| format!("no @id {id} in Caddy's config: {config}"))?;
    let (name, server) = caddy::server_listening_on(&config, listen)
        .with_context(|| format!("no server listens on {listen}: {config}"))?;
    ensure!(
        server["routes"]
            .as_array()
            .is_some_and(|routes| routes.iter().any(|r| r["@id"] == id.as_str())),
        "route {id} is not among server {name}'s routes: {server}"
    );
    let serving = host.agent.container_name(APP, "web");
    let upstream = format!("{}:8080", container_ip(&serving)?);
    ensure!(
        caddy::dials(&route) == [upstream.as_str()],
        "route {id} should proxy to {serving} ({upstream}) only: {route}"
    );
    Ok(route)
}

/// The names of the running containers of the host (every service, every version).
fn running(host: &SshHost) -> anyhow::Result<Vec<String>> {
    Ok(docker(&[
        "ps",
        "--filter",
        &format!("label={}={}", proto::order::labels::HOST, host.name()),
        "--format",
        "{{.Names}}",
    ])?
    .lines()
    .map(str::to_string)
    .collect())
}

fn is_job_event(v: &Value, phase: &str) -> bool {
    v["event"] == "job" && v["job"]["phase"] == phase
}

fn says(v: &Value, text: &str) -> bool {
    v["event"] == "job"
        && v["job"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(text))
}

/// The agent's event after it switched the route of `web` in `env`.
fn is_switch(v: &Value, env: &str) -> bool {
    says(v, &format!("route {} switched to", route_id(env)))
}

#[test]
fn deploys_behind_caddy_drop_no_request() -> anyhow::Result<()> {
    let caddy = Caddy::start()?;
    let w = proxied_world("staging", &[&caddy.admin_addr()])?;
    let host = &w.fleet.hosts("staging")[0];
    let listen = free_listen_addr()?;
    // Caddy serves something else too, which no deploy may touch.
    let other_listen = free_listen_addr()?;
    caddy.add_server(
        "other",
        caddy::server(
            &other_listen,
            vec![caddy::static_route("test-other", "/*", "other")],
        ),
    )?;
    let other = caddy.config()?["apps"]["http"]["servers"]["other"].clone();
    write_proxied_config(&w, &caddy.admin_addr(), &listen)?;
    let url = format!("http://{listen}/version");

    // 1. v1: the agent creates the server on `listen` (Caddy has none there) and the route.
    w.run(&["push", "v1", "--env", "staging"])?.expect(0)?;
    expect_answer(&url, 200, "v1")?;
    expect_route(&caddy, &listen, host)?;

    // 2. v2 under traffic, a request of 5 s in flight when the route switches. It starts once
    //    the new container is started and its health is being proven, at least `healthy_for`
    //    (1 s) before the switch.
    let probe = Probe::start(&url, RATE);
    let mut push = w
        .fleet
        .spawn(&["--json", "push", "v2", "--env", "staging"])?;
    push.until(|v| is_job_event(v, "health"))?;
    let slow_url = format!("http://{listen}/slow?ms=5000");
    let slow = std::thread::spawn(move || {
        let reply = http_get(&slow_url, Duration::from_secs(20));
        (Instant::now(), reply)
    });
    // Events come in the order the agent journaled them: the switch after the proof.
    push.until(|v| says(v, "is healthy ("))?;
    push.until(|v| is_switch(v, "staging"))?;
    let switch_seen = Instant::now();
    let run = push.finish()?;
    run.expect(0)?;
    let (slow_done, slow) = slow
        .join()
        .map_err(|_| anyhow::anyhow!("the slow request's thread panicked"))?;
    let slow = slow?;
    ensure!(
        (slow.status, slow.body.as_str()) == (200, "v1"),
        "the request in flight at the switch should finish on v1: {slow:?}"
    );
    ensure!(
        slow_done > switch_seen,
        "the slow request ended before the switch was reported: it proves no drain"
    );
    expect_route(&caddy, &listen, host)?;
    // The old container is stopped once drained.
    wait_until(
        "one container left running",
        Duration::from_secs(30),
        || match running(host) {
            Ok(names) if names.len() == 1 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )?;

    // 3. v3 never gets healthy: rolled back, the route never moved.
    let run = w.run(&["--json", "push", "v3", "--env", "staging"])?;
    run.expect(1)?;
    ensure!(
        !run.json_lines().iter().any(|v| is_switch(v, "staging")),
        "a version never proven got the route:\n{}",
        run.stdout
    );
    expect_route(&caddy, &listen, host)?;

    // 4. rollback to v1, start-first as well.
    let run = w.run(&["--json", "rollback", "--env", "staging"])?;
    run.expect(0)?;
    ensure!(
        run.json_lines().iter().any(|v| is_switch(v, "staging")),
        "the rollback switched no route:\n{}",
        run.stdout
    );
    let report = probe.stop();
    ensure!(
        report.failed == 0,
        "{report}\nCaddy's log:\n{}",
        caddy.log()
    );
    // One flip per switch; an answer of the replaced version within Caddy's reload overlap
    // (its old listener still taking a connection for a few ms) is no flip back.
    ensure!(
        report.settled_versions(harness::probe::RELOAD_OVERLAP) == ["v1", "v2", "v1"],
        "{report}"
    );
    ensure!(report.total >= 100, "the probe hardly ran: {report}");
    expect_answer(&url, 200, "v1")?;
    expect_route(&caddy, &listen, host)?;
    w.expect_versions("staging", "v1")?;

    // 5. Caddy's other config is as it was.
    ensure!(
        caddy.config()?["apps"]["http"]["servers"]["other"] == other,
        "server `other` changed: {}",
        caddy.config()?
    );
    expect_answer(&format!("http://{other_listen}/"), 200, "other")?;
    Ok(())
}

#[test]
fn maintenance_answers_503_with_the_message_until_it_is_off() -> anyhow::Result<()> {
    let caddy = Caddy::start()?;
    let w = proxied_world("staging", &[&caddy.admin_addr()])?;
    let host = &w.fleet.hosts("staging")[0];
    let listen = free_listen_addr()?;
    // A server on `listen` exists already, with a route of its own: the agent's goes in it.
    caddy.add_server(
        "shared",
        caddy::server(
            &listen,
            vec![caddy::static_route("test-other", "/other", "other")],
        ),
    )?;
    let other = caddy.by_id("test-other")?.context("route test-other")?;
    write_proxied_config(&w, &caddy.admin_addr(), &listen)?;
    let url = format!("http://{listen}/version");
    w.run(&["push", "v1", "--env", "staging"])?.expect(0)?;
    expect_answer(&url, 200, "v1")?;
    expect_route(&caddy, &listen, host)?;

    // 1. On: 503, the message, Retry-After; status says so.
    w.run(&[
        "maintenance",
        "on",
        "--env",
        "staging",
        "--service",
        "web",
        "--message",
        // Caddy would fill in a placeholder with its own environment: the page shows it as typed.
        "back soon {env.HOME}",
    ])?
    .expect(0)?;
    let r = get(&url)?;
    ensure!(
        r.status == 503
            && r.body.contains("back soon {env.HOME}")
            && r.header("Retry-After").is_some(),
        "in maintenance: {r:?}"
    );
    let run = w.run(&["status", "--env", "staging"])?;
    ensure!(run.stdout.contains("maintenance"), "{}", run.output());
    let run = w.run(&["status", "--env", "staging", "--json"])?;
    let line = run
        .json_lines()
        .into_iter()
        .find(|v| v["event"] == "host_status")
        .context(run.stdout.clone())?;
    ensure!(
        line["services"][0]["maintenance"] == "back soon {env.HOME}",
        "{line}"
    );
    // The container was never touched.
    w.expect_versions("staging", "v1")?;

    // 2. Off: the service answers again.
    w.run(&["maintenance", "off", "--env", "staging", "--service", "web"])?
        .expect(0)?;
    expect_answer(&url, 200, "v1")?;
    expect_route(&caddy, &listen, host)?;
    let run = w.run(&["status", "--env", "staging", "--json"])?;
    run.expect(0)?;
    let line = run
        .json_lines()
        .into_iter()
        .find(|v| v["event"] == "host_status")
        .context(run.stdout.clone())?;
    ensure!(line["services"][0]["maintenance"].is_null(), "{line}");

    // 3. The server's other route is as it was.
    ensure!(
        caddy.by_id("test-other")?.as_ref() == Some(&other),
        "route test-other changed: {}",
        caddy.config()?
    );
    Ok(())
}

#[test]
fn an_unreachable_admin_api_refuses_the_push_before_anything_changes() -> anyhow::Result<()> {
    // Allowed by the policy, but nothing listens there.
    let dead = free_listen_addr()?;
    let w = proxied_world("staging", &[&dead])?;
    let host = &w.fleet.hosts("staging")[0];
    w.run(&["push", "v1", "--env", "staging"])?.expect(0)?;
    let journaled = history(host)?.len();

    write_proxied_config(&w, &dead, &free_listen_addr()?)?;
    let run = w.run(&["push", "v2", "--env", "staging"])?;
    run.expect(3)?;
    ensure!(
        run.output().contains("proxy-unreachable"),
        "{}",
        run.output()
    );
    w.expect_versions("staging", "v1")?;
    ensure!(
        history(host)?.len() == journaled,
        "a refused order was journaled"
    );
    ensure!(running(host)?.len() == 1, "{:?}", running(host)?);
    Ok(())
}
