//! Releases of several images end to end (issue 11): an app whose `api` and `web` come from
//! repositories of their own and whose migration runs in a third, rolled out by the built
//! `deployctl` over real sshd to real agents from a private registry. What each host runs is
//! checked on the engine itself (the image each container was created from) and on what each
//! app answers on `/version`; journals are read through the agents' own sockets.

use std::collections::BTreeMap;

use anyhow::{Context, ensure};
use harness::hosts::{EnvPlan, Fleet, Run, SshHost, quote};
use harness::{
    DemoImage, DemoImages, Registry, build_demo_images, derive_image, docker_inspect, fake_git_sha,
    require_prereqs,
};
use proto::Action;
use proto::wire::OutcomeKind;

use super::{
    APP, data_volume, history, migrations, service_version, status, stop_trusting_the_signing_key,
};

/// The api, web and migrate repositories of one registry, and a fleet allowed to run them.
struct World {
    fleet: Fleet,
    /// The demo versions rebuilt to answer `/version` with `api-vN <their commit>`: other
    /// digests than web's, and something for `verify` to read.
    api: DemoImages,
    web: DemoImages,
    /// The demo versions rebuilt to migrate as `migrate-vN`.
    migrate: DemoImages,
    _registry: Registry,
}

fn world(plans: &[EnvPlan]) -> anyhow::Result<World> {
    require_prereqs()?;
    let registry = Registry::start()?;
    let web = DemoImages::publish(&registry, "acme/web")?;
    let api = DemoImages::publish_derived(&registry, "acme/api", |v| {
        let sha = fake_git_sha(&v.version);
        format!("ENV DEMO_VERSION=\"api-{} {sha}\"", v.version)
    })?;
    let migrate = DemoImages::publish_derived(&registry, "acme/migrate", |v| {
        format!("ENV DEMO_VERSION=migrate-{}", v.version)
    })?;
    let allowed = format!("{}/acme/*", registry.addr());
    let fleet = Fleet::start(plans, &[&allowed], |_, _, _| {})?;
    let w = World {
        fleet,
        api,
        web,
        migrate,
        _registry: registry,
    };
    w.write_config()?;
    Ok(w)
}

impl World {
    /// deploy.toml: `api` from the default repository, verified to serve its release's commit;
    /// `web` from its own, with the data dir the migration writes to; `[migrate]` in its own.
    fn write_config(&self) -> anyhow::Result<()> {
        let health = r#"{ path = "/healthz", port = 8080, interval = "200ms", healthy_for = "1s", deadline = "8s" }"#;
        self.fleet.write_config(&format!(
            r#"app = "{APP}"
image = {api}

[services.api]
health = {health}
verify = {{ path = "/version", expect = "revision" }}

[services.web]
image = {web}
volumes = [{volume}]
health = {health}

[migrate]
command = ["/app", "migrate"]
service = "web"
image = {migrate}
timeout = "1m"
"#,
            api = quote(self.api.repository()),
            web = quote(self.web.repository()),
            migrate = quote(self.migrate.repository()),
            volume = data_volume(&self.fleet)?,
        ))?;
        Ok(())
    }

    /// Every host of `env` runs `api` and `web`: each container created from that very image,
    /// and each app answering as that image does.
    fn expect_running(&self, env: &str, api: &DemoImage, web: &DemoImage) -> anyhow::Result<()> {
        for h in self.fleet.hosts(env) {
            let got = (running_image(h, "api")?, running_image(h, "web")?);
            let want = (api.pinned(), web.pinned());
            ensure!(got == want, "{}: runs {got:?}, expected {want:?}", h.name());
        }
        Ok(())
    }

    /// [`Self::expect_running`] for demo versions `api` and `web`, checking `/version` too.
    fn expect_release(&self, env: &str, api: usize, web: usize) -> anyhow::Result<()> {
        self.expect_running(env, self.api.v(api), self.web.v(web))?;
        for h in self.fleet.hosts(env) {
            let got = (service_version(h, "api")?, service_version(h, "web")?);
            let want = (format!("api-v{api} {}", sha(api)), format!("v{web}"));
            ensure!(
                got == want,
                "{} answers {got:?}, expected {want:?}",
                h.name()
            );
        }
        Ok(())
    }

    fn journal_sizes(&self, env: &str) -> anyhow::Result<Vec<usize>> {
        self.fleet
            .hosts(env)
            .iter()
            .map(|h| Ok(history(h)?.len()))
            .collect()
    }
}

/// Demo version `n`'s commit: a tag in every repository.
fn sha(n: usize) -> String {
    fake_git_sha(&format!("v{n}"))
}

/// The image a host's container of `service` was created from (`repository@sha256:…`).
fn running_image(h: &SshHost, service: &str) -> anyhow::Result<String> {
    let c = docker_inspect(&h.agent.container_name(APP, service))?;
    let image = c["Config"]["Image"].as_str().context("no Config.Image")?;
    Ok(image.to_string())
}

/// A digest as the human output shortens it.
fn short(digest: &str) -> String {
    proto::order::short_digest(digest).to_string()
}

/// The `--json` events of a run named `event`.
fn events(run: &Run, event: &str) -> Vec<serde_json::Value> {
    let all = run.json_lines().into_iter();
    all.filter(|v| v["event"] == event).collect()
}

#[test]
fn a_release_of_several_images_pushed_mixed_rolled_back_and_promoted() -> anyhow::Result<()> {
    let w = world(&[
        EnvPlan::new("staging", 2),
        EnvPlan::new("prod", 1).requires("staging"),
    ])?;

    push_set_and_roll_back(&w)?;
    status_and_history(&w)?;
    promote_and_refuse(&w)
}

/// Steps 1-3: a SHA in three repositories, `--set`, and `rollback` to the previous release.
fn push_set_and_roll_back(w: &World) -> anyhow::Result<()> {
    // 1. One SHA, three repositories: each resolved once, each service on its own digest, the
    // migration once, in the migrate image.
    let run = w
        .fleet
        .deployctl(&["--json", "push", &sha(1), "--env", "staging"])?;
    run.expect(0)?;
    let resolved: Vec<String> = events(&run, "resolved")
        .iter()
        .map(|e| e["image"].as_str().unwrap_or_default().to_string())
        .collect();
    let mut want = vec![
        w.api.v(1).pinned(),
        w.migrate.v(1).pinned(),
        w.web.v(1).pinned(),
    ];
    want.sort();
    ensure!(resolved == want, "resolved {resolved:?}, expected {want:?}");
    w.expect_release("staging", 1, 1)?;
    let migrated = migrations(&w.fleet);
    ensure!(
        migrated.len() == 1 && migrated[0].starts_with("migrated migrate-v1 "),
        "one migration, in the migrate image: {migrated:?}"
    );
    let staging = w.fleet.hosts("staging");
    let newest = &history(&staging[0])?[0];
    ensure!(
        newest.image == w.api.v(1).image_ref
            && newest.images == BTreeMap::from([("web".into(), w.web.v(1).image_ref.clone())])
            && newest.run_migration,
        "{newest:?}"
    );

    // 2. --set: web on another commit's image, api as it was.
    let set_web = format!("web={}", sha(2));
    w.fleet
        .deployctl(&["push", &sha(1), "--set", &set_web, "--env", "staging"])?
        .expect(0)?;
    w.expect_release("staging", 1, 2)?;
    let newest = &history(&staging[0])?[0];
    ensure!(
        newest.reference == sha(1) && newest.refs == BTreeMap::from([("web".into(), sha(2))]),
        "{newest:?}"
    );
    let refs: BTreeMap<String, Option<String>> = status(&staging[1])?
        .services
        .into_iter()
        .map(|s| (s.service, s.reference))
        .collect();
    ensure!(
        refs == BTreeMap::from([("api".into(), Some(sha(1))), ("web".into(), Some(sha(2)))]),
        "each container carries its own ref: {refs:?}"
    );
    ensure!(
        migrations(&w.fleet).len() == 1,
        "the migrate image did not change, so it did not migrate again: {:?}",
        migrations(&w.fleet)
    );

    // 3. Then v2 everywhere, and `rollback`: back to api v1 + web v2, exactly, not to v1 + v1.
    w.fleet
        .deployctl(&["push", &sha(2), "--env", "staging"])?
        .expect(0)?;
    w.expect_release("staging", 2, 2)?;
    let run = w.fleet.deployctl(&["rollback", "--env", "staging"])?;
    run.expect(0)?;
    w.expect_release("staging", 1, 2)?;

    Ok(())
}

/// Step 4: `status` and `history` of the release the staging hosts run (api v1, web v2).
fn status_and_history(w: &World) -> anyhow::Result<()> {
    // 4. status: one line per host and service, one release everywhere; history: each digest.
    let run = w
        .fleet
        .deployctl(&["status", "--env", "staging", "--json"])?;
    run.expect(0)?;
    let summary = run.summary()?;
    let release = serde_json::json!({"api": w.api.v(1).digest, "web": w.web.v(2).digest});
    ensure!(
        summary["consistent"] == true && summary["release"] == release,
        "{summary}"
    );
    for line in events(&run, "host_status") {
        let images: Vec<&str> = line["services"]
            .as_array()
            .context("services")?
            .iter()
            .filter_map(|s| s["image"].as_str())
            .collect();
        let want = [
            w.api.v(1).image_ref.to_string(),
            w.web.v(2).image_ref.to_string(),
        ];
        ensure!(images == want, "{line}");
    }
    let run = w.fleet.deployctl(&["status", "--env", "staging"])?;
    run.expect(0)?;
    let (api1, web2) = (short(&w.api.v(1).digest), short(&w.web.v(2).digest));
    ensure!(
        run.stdout.contains(&format!(
            "staging: one release everywhere (api {api1}, web {web2}), all healthy"
        )),
        "{}",
        run.output()
    );
    let run = w.fleet.deployctl(&["history", "--env", "staging"])?;
    run.expect(0)?;
    ensure!(
        run.stdout.contains(&format!("api {api1}, web {web2}"))
            && run.stdout.contains(&format!("{} web={}", sha(1), sha(2))),
        "{}",
        run.stdout
    );

    Ok(())
}

/// Steps 5-6: `requires` and refusals, with staging on api v1, web v2 after api v2, web v2.
fn promote_and_refuse(w: &World) -> anyhow::Result<()> {
    // 5. requires: prod takes only a release staging ran as a whole. api v2 and web v1 each
    // succeeded there, never together: refused, nothing changed; v2 + v2 did: promoted.
    let prod = w.fleet.hosts("prod");
    let set_web = format!("web={}", sha(1));
    let run = w
        .fleet
        .deployctl(&["push", &sha(2), "--set", &set_web, "--env", "prod"])?;
    run.expect(3)?;
    ensure!(
        run.output().contains("never been healthy in staging")
            && run.output().contains(&format!(
                "web runs {}, not {}",
                short(&w.web.v(1).digest),
                short(&w.web.v(2).digest)
            )),
        "{}",
        run.output()
    );
    ensure!(history(&prod[0])?.is_empty(), "prod got an order");
    w.fleet
        .deployctl(&["push", &sha(2), "--env", "prod", "--skip-migrations"])?
        .expect(0)?;
    w.expect_release("prod", 2, 2)?;

    // 6. A ref one repository lacks: refused before anything, naming every repository that
    // lacks it.
    w.web.push_tag(2, "web-only")?;
    let before = w.journal_sizes("staging")?;
    let run = w
        .fleet
        .deployctl(&["push", "web-only", "--env", "staging"])?;
    run.expect(3)?;
    let out = run.output();
    ensure!(
        out.contains("in 2 of 3 repositories")
            && out.contains(&format!(
                "{} (web-only): image not found",
                w.api.repository()
            ))
            && out.contains(&format!(
                "{} (web-only): image not found",
                w.migrate.repository()
            ))
            && !out.contains(&format!("{} (web-only)", w.web.repository())),
        "{out}"
    );
    ensure!(w.journal_sizes("staging")? == before, "a host got an order");
    w.expect_release("staging", 1, 2)?;
    let run = w
        .fleet
        .deployctl(&["push", &sha(1), "--set", "wbe=v1", "--env", "staging"])?;
    run.expect(64)?;
    ensure!(
        run.output().contains("no service \"wbe\""),
        "{}",
        run.output()
    );
    Ok(())
}

#[test]
fn a_failing_or_unverified_service_rolls_the_whole_release_back() -> anyhow::Result<()> {
    let w = world(&[EnvPlan::new("staging", 2)])?;
    w.fleet
        .deployctl(&["push", &sha(1), "--env", "staging"])?
        .expect(0)?;
    w.expect_release("staging", 1, 1)?;
    a_failing_web_rolls_api_back(&w)?;
    let unlabelled = verify_expects_the_release(&w)?;
    a_refusal_reverts_each_service(&w, &unlabelled)
}

/// Step 1, from api v1 + web v1 everywhere: web on v3 never gets healthy; the first host puts
/// api back too, the second host is never touched.
fn a_failing_web_rolls_api_back(w: &World) -> anyhow::Result<()> {
    let staging = w.fleet.hosts("staging");
    let set_web = format!("web={}", sha(3));
    let run = w.fleet.deployctl(&[
        "--json",
        "push",
        &sha(2),
        "--set",
        &set_web,
        "--env",
        "staging",
    ])?;
    run.expect(1)?;
    w.expect_release("staging", 1, 1)?;
    let api_undone = events(&run, "job").iter().any(|e| {
        e["host"] == staging[0].name()
            && e["job"]["phase"] == "rollback"
            && e["job"]["service"] == "api"
    });
    ensure!(
        api_undone,
        "api was switched, then rolled back:\n{}",
        run.stdout
    );
    let first = &history(&staging[0])?[0];
    ensure!(
        first.outcome == Some(OutcomeKind::RolledBack)
            && first.image_of("web") == &w.web.v(3).image_ref
            && first.image_of("api") == &w.api.v(2).image_ref,
        "{first:?}"
    );
    ensure!(
        history(&staging[1])?.len() == 1,
        "the second host got an order"
    );
    Ok(())
}

/// Steps 2-3: `verify` passes an image without a revision label that serves its `--set` ref's
/// commit (left running everywhere, and returned), and fails one serving another commit than
/// its label names.
fn verify_expects_the_release(w: &World) -> anyhow::Result<DemoImage> {
    let v2 = &build_demo_images()?[1];
    let unlabelled_sha = fake_git_sha("unlabelled api");
    let unlabelled = derive_image(
        v2,
        &format!(
            "ENV DEMO_VERSION=\"api-unlabelled {unlabelled_sha}\"\n\
             LABEL org.opencontainers.image.revision=\"\""
        ),
    )?;
    let unlabelled = w.api.push_image(&unlabelled, &unlabelled_sha)?;
    let set_api = format!("api={unlabelled_sha}");
    w.fleet
        .deployctl(&["push", &sha(1), "--set", &set_api, "--env", "staging"])?
        .expect(0)?;
    w.expect_running("staging", &unlabelled, w.web.v(1))?;

    // 3. verify, an image whose label names one commit while it serves another: verify-failed,
    // rolled back on the first host, the second never touched.
    let liar_sha = fake_git_sha("liar api");
    let liar = derive_image(
        v2,
        &format!(
            "ENV DEMO_VERSION=\"api-v2 {}\"\nLABEL org.opencontainers.image.revision={liar_sha}",
            sha(2)
        ),
    )?;
    w.api.push_image(&liar, &liar_sha)?;
    let before = w.journal_sizes("staging")?;
    let set_api = format!("api={liar_sha}");
    let run = w
        .fleet
        .deployctl(&["push", &sha(1), "--set", &set_api, "--env", "staging"])?;
    run.expect(1)?;
    ensure!(
        run.output().contains("verify-failed") && run.output().contains(&liar_sha),
        "{}",
        run.output()
    );
    w.expect_running("staging", &unlabelled, w.web.v(1))?;
    ensure!(
        w.journal_sizes("staging")? == vec![before[0] + 1, before[1]],
        "only the first host got the order"
    );
    Ok(unlabelled)
}

/// Step 4: the second host refuses a release the first already runs; the first goes back to
/// the release it ran (`unlabelled` api, web v1), each service to its own image, by its own ref.
fn a_refusal_reverts_each_service(w: &World, unlabelled: &DemoImage) -> anyhow::Result<()> {
    let staging = w.fleet.hosts("staging");
    stop_trusting_the_signing_key(&staging[1])?;
    let run = w
        .fleet
        .deployctl(&["--json", "push", &sha(2), "--env", "staging"])?;
    run.expect(1)?;
    ensure!(run.summary()?["result"] == "rolled-back", "{}", run.stdout);
    w.expect_running("staging", unlabelled, w.web.v(1))?;
    let back = &history(&staging[0])?[0];
    ensure!(
        back.action == Action::Rollback
            && back.outcome == Some(OutcomeKind::Succeeded)
            && back.image_of("api") == &unlabelled.image_ref
            && back.image_of("web") == &w.web.v(1).image_ref
            && back.reference_of("api") == unlabelled.git_sha
            && back.reference_of("web") == sha(1),
        "{back:?}"
    );
    Ok(())
}
