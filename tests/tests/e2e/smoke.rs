//! The harness itself, end to end: registry up, every demo image pushed and pulled back by
//! digest, each version behaving as its name says, a real sshd that lets the right key in, and
//! a real Caddy switching a route under the probe's traffic without dropping a request.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use harness::caddy::{self, Caddy};
use harness::{
    Behaviour, Cleanup, ClientKey, DemoImages, Probe, Registry, Sshd, SshdOptions, TEST_LABEL,
    build_demo_images, container_health, container_ip, container_logs, docker, free_listen_addr,
    http_get, published_port, require_prereqs, unique_name, wait_until,
};
use serde_json::json;

const HTTP_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs a demo container labelled for cleanup, port 8080 published on a random loopback port.
fn run_labelled(name: &str, image: &str, extra: &[&str]) -> anyhow::Result<()> {
    let label = format!("{TEST_LABEL}={name}");
    let mut args = vec![
        "run",
        "-d",
        "--name",
        name,
        "--label",
        &label,
        "-p",
        "127.0.0.1::8080",
    ];
    args.extend(extra);
    args.push(image);
    docker(&args)?;
    Ok(())
}

fn get(port: u16, path: &str) -> Result<harness::HttpResponse, String> {
    http_get(&format!("http://127.0.0.1:{port}{path}"), HTTP_TIMEOUT).map_err(|e| e.to_string())
}

#[test]
fn prerequisites_are_installed() -> anyhow::Result<()> {
    require_prereqs()?;
    let version =
        harness::command::run(Command::new("docker-compose").args(["version", "--short"]))?;
    ensure!(
        version.trim().starts_with(['1', '2']),
        "unexpected docker-compose version {version:?}"
    );
    Ok(())
}

#[test]
fn every_demo_image_is_pushed_and_pulled_back_by_digest() -> anyhow::Result<()> {
    require_prereqs()?;
    let start = Instant::now();
    let registry = Registry::start()?;
    let images = DemoImages::publish(&registry, "demo")?;
    eprintln!(
        "registry up and {} images built/pushed in {:.1?}",
        images.all().len(),
        start.elapsed()
    );

    let versions: Vec<&str> = images.all().iter().map(|i| i.version.as_str()).collect();
    assert_eq!(versions, ["v1", "v2", "v3", "v4", "v5", "v6"]);
    let digests: BTreeSet<&str> = images.all().iter().map(|i| i.digest.as_str()).collect();
    let shas: BTreeSet<&str> = images.all().iter().map(|i| i.git_sha.as_str()).collect();
    assert_eq!(
        (digests.len(), shas.len()),
        (6, 6),
        "digests and SHAs must be distinct"
    );
    for image in images.all() {
        assert!(proto::order::is_digest(&image.digest), "{}", image.digest);
        assert_eq!(image.git_sha.len(), 40);
        assert_eq!(image.image_ref.to_string(), image.pinned());
    }

    let tags = http_get(
        &format!("{}/v2/demo/tags/list", registry.url()),
        HTTP_TIMEOUT,
    )?;
    assert_eq!(tags.status, 200, "{}", tags.body);
    let listed: serde_json::Value = serde_json::from_str(&tags.body)?;
    for image in images.all() {
        for tag in [&image.tag, &image.git_sha] {
            assert!(
                listed["tags"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|x| x == tag.as_str())),
                "{tag} not in {listed}"
            );
        }
    }

    // An extra tag lands on the same digest.
    images.push_tag(2, "extra-tag")?;
    let tags = http_get(
        &format!("{}/v2/demo/tags/list", registry.url()),
        HTTP_TIMEOUT,
    )?;
    assert!(tags.body.contains("\"extra-tag\""), "{}", tags.body);

    for image in images.all() {
        // Publishing left no local name for the pushed image: this pull goes to the registry.
        let before = docker(&["image", "inspect", &image.pinned()]);
        assert!(
            before.is_err(),
            "{} known to the engine before the pull",
            image.pinned()
        );
        harness::images::pull(&image.pinned())?;
        let env = docker(&[
            "image",
            "inspect",
            "--format",
            "{{json .Config.Env}}",
            &image.pinned(),
        ])?;
        assert!(
            env.contains(&format!("DEMO_VERSION={}", image.version)),
            "{env}"
        );
    }
    eprintln!("all pulled by digest at {:.1?}", start.elapsed());

    let name = unique_name("smoke-v1");
    let _cleanup = Cleanup::label(TEST_LABEL, &name);
    run_labelled(&name, &images.v(1).pinned(), &[])?;
    let port = published_port(&name, 8080)?;
    wait_until(
        "v1 /healthz to answer 200",
        Duration::from_secs(20),
        || match get(port, "/healthz") {
            Ok(r) if r.status == 200 && r.body == "ok" => Ok(()),
            Ok(r) => Err(format!("{} {}", r.status, r.body)),
            Err(e) => Err(e),
        },
    )?;
    let version = get(port, "/version").map_err(anyhow::Error::msg)?;
    assert_eq!((version.status, version.body.as_str()), (200, "v1"));
    // The image's own HEALTHCHECK (the binary probing itself) works too.
    wait_until(
        "docker to call v1 healthy",
        Duration::from_secs(20),
        || match container_health(&name) {
            Ok(Some(h)) if h == "healthy" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )?;
    let logs = container_logs(&name)?;
    assert!(
        logs.contains("demoapp v1 role=web mode=healthy listening on 0.0.0.0:8080"),
        "{logs}"
    );
    assert!(logs.contains("\"GET /version HTTP/1.1\" 200"), "{logs}");

    let stop = Instant::now();
    docker(&["stop", &name])?;
    let stopped_in = stop.elapsed();
    let exit = docker(&["inspect", "--format", "{{.State.ExitCode}}", &name])?;
    assert_eq!(exit.trim(), "0", "SIGTERM should end the app cleanly");
    assert!(
        stopped_in < Duration::from_secs(5),
        "docker stop took {stopped_in:?}: SIGTERM not handled?"
    );
    eprintln!("smoke done in {:.1?}", start.elapsed());
    Ok(())
}

#[test]
fn each_demo_version_behaves_as_its_name_says() -> anyhow::Result<()> {
    require_prereqs()?;
    let registry = Registry::start()?;
    let images = DemoImages::publish(&registry, "demo")?;
    let behaviours: Vec<Behaviour> = images.all().iter().map(|i| i.behaviour).collect();
    assert_eq!(
        behaviours,
        [
            Behaviour::Healthy,
            Behaviour::Healthy,
            Behaviour::NeverHealthy,
            Behaviour::CrashesAtStart,
            Behaviour::MigrationFails,
            Behaviour::CrashLoops
        ]
    );
    let run_id = unique_name("smoke-behave");
    let _cleanup = Cleanup::label(TEST_LABEL, &run_id);

    // v3 serves but is never healthy, by its endpoint and by its HEALTHCHECK.
    let v3 = format!("{run_id}-v3");
    run_labelled(
        &v3,
        &images.v(3).pinned(),
        &["--label", &format!("{TEST_LABEL}={run_id}")],
    )?;
    let port = published_port(&v3, 8080)?;
    wait_until(
        "v3 to answer /healthz with 500",
        Duration::from_secs(20),
        || match get(port, "/healthz") {
            Ok(r) if r.status == 500 => Ok(()),
            Ok(r) => Err(format!("{} {}", r.status, r.body)),
            Err(e) => Err(e),
        },
    )?;
    assert_eq!(
        get(port, "/version").map_err(anyhow::Error::msg)?.body,
        "v3"
    );
    wait_until(
        "docker to call v3 unhealthy",
        Duration::from_secs(20),
        || match container_health(&v3) {
            Ok(Some(h)) if h == "unhealthy" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )?;

    // v4 exits 3 right after starting.
    let v4 = format!("{run_id}-v4");
    let started = Instant::now();
    assert_eq!(run_until_exit(&v4, &images.v(4).pinned(), &run_id)?, 3);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "v4 took {:?} to crash",
        started.elapsed()
    );
    assert!(container_logs(&v4)?.contains("crashing at start"));

    // v6 serves for a moment, then exits 1 (a crash loop under a restart policy).
    let v6 = format!("{run_id}-v6");
    assert_eq!(run_until_exit(&v6, &images.v(6).pinned(), &run_id)?, 1);
    assert!(container_logs(&v6)?.contains("dying as configured"));

    // Migrations: v2 appends one line per run to the mounted file; v5 fails and writes nothing.
    let data = tempfile::tempdir()?;
    let mount = format!("{}:/data", data.path().display());
    let label = format!("{TEST_LABEL}={run_id}");
    let migrate = |image: &str| {
        Command::new("docker")
            .args([
                "run", "--rm", "--label", &label, "-v", &mount, image, "/app", "migrate",
            ])
            .output()
            .context("docker run migrate")
    };
    let ok = migrate(&images.v(2).pinned())?;
    ensure!(
        ok.status.success(),
        "v2 migrate failed: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let failed = migrate(&images.v(5).pinned())?;
    assert_eq!(failed.status.code(), Some(1), "v5 migrate: {failed:?}");
    assert!(String::from_utf8_lossy(&failed.stderr).contains("DEMO_MIGRATE_FAIL=1"));
    let log = std::fs::read_to_string(data.path().join("migrations.log"))?;
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].starts_with("migrated v2 "), "{log}");
    Ok(())
}

#[test]
fn sshd_lets_in_the_authorized_key_only() -> anyhow::Result<()> {
    require_prereqs()?;
    let keys = tempfile::tempdir()?;
    let good = ClientKey::generate(keys.path())?;
    let stranger = ClientKey::generate(keys.path())?;
    let sshd = Sshd::start_with(SshdOptions {
        authorized_keys: vec![good.public_line.clone()],
        set_env: vec![("DEPLOYCTL_SMOKE".into(), "set-by-sshd".into())],
        ..SshdOptions::default()
    })?;
    let fingerprint = sshd.host_key_fingerprint()?;
    assert!(fingerprint.starts_with("SHA256:"), "{fingerprint}");
    assert!(
        sshd.known_hosts_line()
            .starts_with(&format!("[127.0.0.1]:{} ssh-ed25519 AAAA", sshd.port()))
    );

    let ok = sshd
        .ssh_command(&good)
        .args(["echo", "hello", "$DEPLOYCTL_SMOKE"])
        .output()?;
    assert!(
        ok.status.success(),
        "login failed: {}\nsshd log:\n{}",
        String::from_utf8_lossy(&ok.stderr),
        sshd.log()
    );
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout).trim(),
        "hello set-by-sshd"
    );
    let status = sshd.ssh_command(&good).arg("true").status()?;
    assert!(status.success());

    let refused = sshd.ssh_command(&stranger).arg("true").output()?;
    assert!(!refused.status.success(), "an unknown key got in");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Permission denied"),
        "{refused:?}"
    );

    // And the host key is really checked: an empty known_hosts refuses the server.
    let empty = keys.path().join("empty_known_hosts");
    std::fs::write(&empty, "")?;
    let unknown_host = Command::new("ssh")
        .arg("-i")
        .arg(&good.private_path)
        .args([
            "-o",
            &format!("UserKnownHostsFile={}", empty.display()),
            "-o",
            "StrictHostKeyChecking=yes",
        ])
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
        ])
        .args([
            "-p",
            &sshd.port().to_string(),
            &format!("{}@127.0.0.1", sshd.user()),
            "true",
        ])
        .output()?;
    assert!(
        !unknown_host.status.success(),
        "an unknown host key was accepted"
    );
    assert!(
        String::from_utf8_lossy(&unknown_host.stderr).contains("Host key verification failed"),
        "{unknown_host:?}"
    );
    Ok(())
}

/// Caddy and the probe before any deployctl code drives them: a route switched back and forth
/// under 50 requests a second drops none, and a request in flight at a switch finishes on the
/// upstream it started on. What the proxy tests assert of deployctl rests on this.
#[test]
fn caddy_switches_a_route_under_load_without_dropping_a_request() -> anyhow::Result<()> {
    require_prereqs()?;
    let caddy = Caddy::start()?;
    let config = caddy.config()?;
    ensure!(
        config == json!({ "admin": { "listen": caddy.admin_addr() } }),
        "Caddy starts with its admin API only: {config}"
    );
    let run_id = unique_name("smoke-caddy");
    let _cleanup = Cleanup::label(TEST_LABEL, &run_id);
    let mut upstreams = Vec::new();
    for image in &build_demo_images()?[..2] {
        let name = format!("{run_id}-{}", image.version);
        run_labelled(
            &name,
            &image.id,
            &["--label", &format!("{TEST_LABEL}={run_id}")],
        )?;
        let upstream = format!("{}:8080", container_ip(&name)?);
        wait_until(
            &format!("{name} to answer /healthz"),
            Duration::from_secs(20),
            || match http_get(&format!("http://{upstream}/healthz"), HTTP_TIMEOUT) {
                Ok(r) if r.status == 200 => Ok(()),
                Ok(r) => Err(format!("{} {}", r.status, r.body)),
                Err(e) => Err(e.to_string()),
            },
        )?;
        upstreams.push(upstream);
    }
    let listen = free_listen_addr()?;
    caddy.add_server(
        "smoke",
        caddy::server(
            &listen,
            vec![caddy::reverse_proxy_route("smoke-web", &upstreams[0])],
        ),
    )?;
    let url = format!("http://{listen}/version");
    wait_until(
        "Caddy to proxy to v1",
        Duration::from_secs(10),
        || match http_get(&url, HTTP_TIMEOUT) {
            Ok(r) if r.status == 200 && r.body == "v1" => Ok(()),
            Ok(r) => Err(format!("{} {}", r.status, r.body)),
            Err(e) => Err(e.to_string()),
        },
    )?;

    let probe = Probe::start(&url, 50);
    let slow_url = format!("http://{listen}/slow?ms=3000");
    let slow = std::thread::spawn(move || http_get(&slow_url, Duration::from_secs(10)));
    wait_until(
        "the slow request to reach v1",
        Duration::from_secs(10),
        || match caddy.in_flight(&upstreams[0]) {
            Ok(Some(n)) if n > 0 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )?;
    // The probe must have read the starting version before the first switch.
    wait_until("the probe to read v1", Duration::from_secs(10), || {
        let seen = probe.snapshot();
        match seen.versions().as_slice() {
            [v] if v == "v1" => Ok(()),
            _ => Err(seen.to_string()),
        }
    })?;
    for (version, upstream) in [
        ("v2", &upstreams[1]),
        ("v1", &upstreams[0]),
        ("v2", &upstreams[1]),
    ] {
        let switched_at = probe.elapsed();
        caddy.api_ok(
            "PATCH",
            "/id/smoke-web/handle/0/upstreams",
            Some(&json!([{ "dial": upstream }])),
        )?;
        // The next switch waits out this one's reload overlap, so the report can tell a switch
        // from the overlap's stray replies.
        let settled = switched_at + harness::probe::RELOAD_OVERLAP * 2;
        wait_until(
            &format!("the probe to see {version}"),
            Duration::from_secs(10),
            || {
                let seen = probe.snapshot();
                if seen.versions().last().map(String::as_str) == Some(version)
                    && probe.elapsed() > settled
                {
                    Ok(())
                } else {
                    Err(seen.to_string())
                }
            },
        )?;
    }
    let slow = slow
        .join()
        .map_err(|_| anyhow::anyhow!("the slow request's thread panicked"))??;
    let report = probe.stop();
    ensure!(
        (slow.status, slow.body.as_str()) == (200, "v1"),
        "the request in flight at the switch: {slow:?}"
    );
    ensure!(
        report.failed == 0,
        "{report}\nCaddy's log:\n{}",
        caddy.log()
    );
    ensure!(
        report.settled_versions(harness::probe::RELOAD_OVERLAP) == ["v1", "v2", "v1", "v2"]
            && report.total > 20,
        "{report}"
    );
    let route = caddy.by_id("smoke-web")?.context("the route by its @id")?;
    ensure!(caddy::dials(&route) == [upstreams[1].as_str()], "{route}");
    Ok(())
}

/// Runs `image` as `name` (labelled for cleanup) and waits for it to stop: its exit code.
fn run_until_exit(name: &str, image: &str, run_id: &str) -> anyhow::Result<i64> {
    run_labelled(name, image, &["--label", &format!("{TEST_LABEL}={run_id}")])?;
    let code = wait_until(
        &format!("{name} to exit"),
        Duration::from_secs(20),
        || match docker(&[
            "inspect",
            "--format",
            "{{.State.Running}} {{.State.ExitCode}}",
            name,
        ]) {
            Ok(s) if s.starts_with("false ") => s
                .trim()
                .trim_start_matches("false ")
                .parse::<i64>()
                .map_err(|e| format!("{s:?}: {e}")),
            other => Err(format!("{other:?}")),
        },
    )?;
    Ok(code)
}
