//! `deployctl init`'s tables: what it writes for a skeleton and for compose files, that every
//! file loads, which compose files are errors and where, and which options are usage errors.

use std::path::Path;

use expect_test::{Expect, expect};

use super::deploy_toml::{Options, Written, check_options, from_compose, skeleton};
use crate::config::DeployConfig;

fn opts(env: &str, hosts: &[&str]) -> Options {
    Options {
        env: env.into(),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        ..Options::default()
    }
}

/// What a test sees of a written file: its text, then the warnings.
fn shown(w: &Written) -> String {
    let mut text = w.text.clone();
    for warning in &w.warnings {
        text += &format!("WARNING {warning}\n");
    }
    text
}

/// Every file init writes loads as it is, and says nothing of an inline `environment:` value.
fn loads(w: &Written) -> DeployConfig {
    assert!(
        !w.text.contains("hunter2"),
        "a secret value was copied:\n{}",
        w.text
    );
    match DeployConfig::parse(&w.text, Path::new("deploy.toml")) {
        Ok(cfg) => cfg,
        Err(e) => panic!("{e}\n{}", w.text),
    }
}

const COMPOSE: &str = r#"
name: shop
x-common: &common
  restart: unless-stopped
  env_file: ./shared.env
services:
  web:
    <<: *common
    image: registry.example.com/shop/web:1.4.2
    build: .
    ports: ["8080:8080", "127.0.0.1:9090:9090/tcp", "3000-3005:3000-3005"]
    environment:
      DATABASE_URL: postgres://shop:hunter2@db/shop
      LOG: debug
    command: /app serve --port "8080"
    networks: [front, back]
    healthcheck:
      test: ["CMD", "curl", "-f", "http://localhost:8080/healthz"]
      interval: 10s
      retries: 3
    deploy:
      replicas: 2
  api:
    image: registry.example.com/shop/api:1.4.2
    ports:
      - target: 80
        published: 8081
    volumes:
      - api-data:/data
      - ./cache:/cache
      - type: bind
        source: /srv/shop/uploads
        target: /uploads
        read_only: true
    env_file: [/etc/shop/api.env, /etc/shop/extra.env]
    environment: ["SECRET=hunter2", "PLAIN"]
    entrypoint: ["/bin/tini", "--"]
    healthcheck:
      test: pg_isready -U shop
  worker:
    build: ./worker
  web2:
    image: registry.example.com/shop/web:1.4.2
    networks:
      default: {}
    healthcheck:
      test: ["CMD-SHELL", "wget -qO- http://127.0.0.1/ || exit 1"]
volumes:
  api-data: {}
networks:
  front: {}
  back: {}
"#;

/// Each case's file loads, declares the services init says it wrote, and reads as expected.
fn check(cases: Vec<(&str, Written, Expect)>) {
    for (name, written, want) in cases {
        let cfg = loads(&written);
        let mut services = written.services.clone();
        services.sort();
        assert_eq!(
            cfg.services.keys().cloned().collect::<Vec<_>>(),
            services,
            "{name}"
        );
        want.assert_eq(&shown(&written));
    }
}

#[test]
fn a_skeleton_shows_every_common_key_and_loads() {
    check(vec![
        (
            "skeleton, hosts to edit",
            skeleton(&opts("staging", &[])),
            expect![[r#"
                # deploy.toml: how deployctl deploys myapp (every key: README "deploy.toml").
                # Written by `deployctl init`. Check every line (EDIT marks what must change), then:
                #   deployctl push <git-sha|tag|sha256:digest> --env staging

                app = "myapp"   # containers are named <app>-<env>-<service>
                image = "registry.example.com/myapp/web"   # the default repository of every service, no tag: push names the release
                # EDIT: `image` is the repository your CI pushes the app's images to.

                [services.web]
                # ports = ["8080:8080"]                     # [host_ip:][host_port:]container_port[/udp]
                # env_file = "/etc/deploy-agent/apps/myapp/web.env"   # a path on the HOST, read there: secrets never travel in orders
                # volumes = ["myapp-data:/data"]            # a named volume, or an absolute path of the host
                # network = "myapp"                         # a user network that exists on the hosts
                # command = ["/app", "serve"]               # default: the image's own
                # strategy = "start-first"                  # no downtime, when no fixed host port is bound (default "stop-first")
                # health = { path = "/healthz", port = 8080, interval = "250ms", healthy_for = "2s", deadline = "60s" }
                #   GET path on the container's port must answer 2xx; without `path`: the image's HEALTHCHECK,
                #   else the container staying up for healthy_for. A failed check by deadline rolls back.

                # [migrate]                     # optional: once per release, on the first host, in the new image, before any switch
                # command = ["/app", "migrate"]
                # service = "web"                 # borrows its env_file, volumes, network
                # timeout = "5m"

                [env.staging]
                # EDIT: the hosts, user@addr[:port], each running deploy-agent (README "Running the agent on a host")
                hosts = ["deploy@staging-1.example.com"]
                # max_parallel = 1                       # hosts per batch after the first
                # canary = { hosts = 1, watch = "5m" }   # hold after the first host; roll back if it regresses
                # requires = "dev"                       # only releases that succeeded in that env first
                # signing_key = "~/.config/deployctl/key"
                # known_hosts = "~/.ssh/known_hosts"     # the hosts' SSH keys (README "SSH")
            "#]],
        ),
        (
            "skeleton with its hosts and socket",
            skeleton(&Options {
                app: Some("acme".into()),
                image: Some("ghcr.io/acme/app".into()),
                socket: Some("/run/agent.sock".into()),
                ..opts("prod", &["deploy@10.0.0.5", "local"])
            }),
            expect![[r#"
                # deploy.toml: how deployctl deploys acme (every key: README "deploy.toml").
                # Written by `deployctl init`. Check every line (EDIT marks what must change), then:
                #   deployctl push <git-sha|tag|sha256:digest> --env prod

                app = "acme"   # containers are named <app>-<env>-<service>
                image = "ghcr.io/acme/app"   # the default repository of every service, no tag: push names the release

                [services.web]
                # ports = ["8080:8080"]                     # [host_ip:][host_port:]container_port[/udp]
                # env_file = "/etc/deploy-agent/apps/acme/web.env"   # a path on the HOST, read there: secrets never travel in orders
                # volumes = ["acme-data:/data"]            # a named volume, or an absolute path of the host
                # network = "acme"                         # a user network that exists on the hosts
                # command = ["/app", "serve"]               # default: the image's own
                # strategy = "start-first"                  # no downtime, when no fixed host port is bound (default "stop-first")
                # health = { path = "/healthz", port = 8080, interval = "250ms", healthy_for = "2s", deadline = "60s" }
                #   GET path on the container's port must answer 2xx; without `path`: the image's HEALTHCHECK,
                #   else the container staying up for healthy_for. A failed check by deadline rolls back.

                # [migrate]                     # optional: once per release, on the first host, in the new image, before any switch
                # command = ["/app", "migrate"]
                # service = "web"                 # borrows its env_file, volumes, network
                # timeout = "5m"

                [env.prod]
                # in rollout order: the first host runs the migration, batches follow
                hosts = [{ ssh = "deploy@10.0.0.5", socket = "/run/agent.sock" }, { socket = "/run/agent.sock" }]
                # max_parallel = 1                       # hosts per batch after the first
                # canary = { hosts = 1, watch = "5m" }   # hold after the first host; roll back if it regresses
                # requires = "dev"                       # only releases that succeeded in that env first
                # signing_key = "~/.config/deployctl/key"
                # known_hosts = "~/.ssh/known_hosts"     # the hosts' SSH keys (README "SSH")
            "#]],
        ),
    ]);
}

#[test]
fn a_compose_file_becomes_services_and_comments_never_secrets() {
    check(vec![(
        "a compose file: what is carried, what is a comment, what is left out",
        from_compose(
            COMPOSE,
            "compose.yaml",
            &opts("staging", &["deploy@10.0.0.5"]),
        )
        .unwrap(),
        expect![[r##"
                # deploy.toml: how deployctl deploys shop (every key: README "deploy.toml").
                # Written by `deployctl init --from compose.yaml`. Check every line (EDIT marks what must change), then:
                #   deployctl push <git-sha|tag|sha256:digest> --env staging

                app = "shop"   # containers are named <app>-<env>-<service>
                image = "registry.example.com/shop/web"   # the default repository of every service, no tag: push names the release
                # compose.yaml pins tag 1.4.2: `deployctl push 1.4.2 --env staging` deploys it.
                # compose key `volumes:` not carried over: the engine creates a named volume the first time a container mounts it
                # compose key `networks:` not carried over: create each network on the hosts (`docker network create NAME`)

                [services.web]
                ports = ["8080:8080", "127.0.0.1:9090:9090/tcp"]
                # compose sets environment inline (DATABASE_URL, LOG): deploy.toml never carries values (secrets never travel in orders); move them into the env_file on the hosts.
                # a path on the HOST, read there by the agent: it must exist on every host
                # (compose reads ./shared.env on its own machine: copy it here)
                env_file = "/etc/deploy-agent/apps/shop/shared.env"
                command = ["/app", "serve", "--port", "8080"]
                # the network must exist on the hosts (`docker network create NAME`)
                network = "front"
                health = { path = "/healthz", port = 8080, interval = "10s" }
                # compose key `deploy:` not carried over
                # port "3000-3005:3000-3005" not carried over: deployctl publishes [host_ip:][host_port:]container_port[/tcp|/udp], one port each
                # compose joins front, back; deployctl joins one network: the first
                # compose key `restart:` not carried over: the agent restarts a failing container itself
                # compose key `build:` not carried over: deployctl deploys the image your CI pushed

                [services.api]
                image = "registry.example.com/shop/api"
                ports = ["8081:80"]
                volumes = ["api-data:/data", "/srv/shop/uploads:/uploads:ro"]
                # compose sets environment inline (SECRET, PLAIN): deploy.toml never carries values (secrets never travel in orders); move them into the env_file on the hosts.
                # a path on the HOST, read there by the agent: it must exist on every host
                env_file = "/etc/shop/api.env"
                # volume "./cache:/cache" not carried over: deployctl mounts a named volume or an absolute path of the host (name:/path or /host/path:/path); write it so in `volumes`
                # compose reads 2 env files (/etc/shop/api.env, /etc/shop/extra.env); deployctl reads one: merge them into it on the host
                # compose key `entrypoint:` not carried over: deploy.toml has `command` only; the image's entrypoint stays
                # compose healthcheck `pg_isready -U shop` is no HTTP check of the container: without `health.path` the agent uses the image's own HEALTHCHECK, else waits for the container to stay up

                # compose service `worker` not carried over: it has no image to deploy (compose builds it); push one to a registry and add [services.worker] with its `image`.

                [services.web2]
                health = { path = "/", port = 80 }
                # compose's `default` network is the project's own: name a network that exists on the hosts in `network`, or leave it out

                # [migrate]                     # optional: once per release, on the first host, in the new image, before any switch
                # command = ["/app", "migrate"]
                # service = "web"                 # borrows its env_file, volumes, network
                # timeout = "5m"

                [env.staging]
                # in rollout order: the first host runs the migration, batches follow
                hosts = ["deploy@10.0.0.5"]
                # max_parallel = 1                       # hosts per batch after the first
                # canary = { hosts = 1, watch = "5m" }   # hold after the first host; roll back if it regresses
                # requires = "dev"                       # only releases that succeeded in that env first
                # signing_key = "~/.config/deployctl/key"
                # known_hosts = "~/.ssh/known_hosts"     # the hosts' SSH keys (README "SSH")
                WARNING web: inline environment not copied (DATABASE_URL, LOG); move it into an env_file on the hosts
                WARNING api: inline environment not copied (SECRET, PLAIN); move it into an env_file on the hosts
                WARNING compose service worker skipped: it has no image (compose builds it)
            "##]],
    )]);
}

#[test]
fn images_of_several_repositories_and_tags() {
    check(vec![(
        "images of several repositories and tags, and one compose fills in",
        from_compose(SEVERAL, "app/compose.yml", &opts("dev", &[])).unwrap(),
        expect![[r##"
                # deploy.toml: how deployctl deploys api (every key: README "deploy.toml").
                # Written by `deployctl init --from app/compose.yml`. Check every line (EDIT marks what must change), then:
                #   deployctl push <git-sha|tag|sha256:digest> --env dev

                app = "api"   # containers are named <app>-<env>-<service>
                image = "ghcr.io/acme/api"   # the default repository of every service, no tag: push names the release

                [services.api]
                # compose pins tag v2: `deployctl push REF --set api=v2` keeps it
                command = ["/app", "api", "8080"]

                [services.web]
                image = "ghcr.io/acme/web"

                [services.sidecar]
                # EDIT: compose names the image ${REGISTRY}/sidecar:${TAG:-latest}, which is no repository this file can name: set `image` to its repository (no tag).
                # compose key `command:` not carried over: write it as a list in `command`

                # compose service "bad name" not carried over: its name is not usable in container names.

                # [migrate]                     # optional: once per release, on the first host, in the new image, before any switch
                # command = ["/app", "migrate"]
                # service = "api"                 # borrows its env_file, volumes, network
                # timeout = "5m"

                [env.dev]
                # EDIT: the hosts, user@addr[:port], each running deploy-agent (README "Running the agent on a host")
                hosts = ["deploy@dev-1.example.com"]
                # max_parallel = 1                       # hosts per batch after the first
                # canary = { hosts = 1, watch = "5m" }   # hold after the first host; roll back if it regresses
                # requires = "dev"                       # only releases that succeeded in that env first
                # signing_key = "~/.config/deployctl/key"
                # known_hosts = "~/.ssh/known_hosts"     # the hosts' SSH keys (README "SSH")
                WARNING sidecar: set its `image` by hand (compose: ${REGISTRY}/sidecar:${TAG:-latest})
                WARNING compose service "bad name" skipped: its name is not usable in container names
            "##]],
    )]);
}

const SEVERAL: &str = r#"
services:
  api:
    image: ghcr.io/acme/api:v2
    command: ["/app", "api", 8080]
  web:
    image: ghcr.io/acme/web@sha256:0123
  sidecar:
    image: ${REGISTRY}/sidecar:${TAG:-latest}
    command: sh -c "echo $$HOME"
  "bad name":
    image: ghcr.io/acme/api:v2
"#;

#[test]
fn what_is_no_compose_file_is_an_error_with_its_place() {
    let cases = [
        ("services:\n  web:\n    image: [unclosed\n", "4:1"),
        ("services:\n  web:\n\timage: x\n", "3:1"),
        ("- a\n- list\n", "-"),
        ("version: '3'\n", "-"),
        ("services:\n  web: 3\n", "-"),
        ("", "-"),
    ];
    let got: Vec<String> = cases
        .iter()
        .map(|(yaml, _)| {
            let e = from_compose(yaml, "c.yaml", &opts("staging", &[])).unwrap_err();
            let at = e.at.map_or("-".to_string(), |(l, c)| format!("{l}:{c}"));
            format!("{at} {}", e.message)
        })
        .collect();
    for ((_, at), line) in cases.iter().zip(&got) {
        assert!(line.starts_with(at), "{line}");
    }
    expect![[r#"
        4:1 did not find expected ',' or ']' at line 4 column 1, while parsing a flow sequence at line 3 column 12
        3:1 found character that cannot start any token at line 3 column 1, while scanning for the next token
        - not a compose file: the top level is not a mapping
        - not a compose file: no `services:` mapping
        - services.web: not a mapping
        - not a compose file: the top level is not a mapping"#]]
    .assert_eq(&got.join("\n"));
}

#[test]
fn options_that_would_not_load_are_usage_errors() {
    let cases: Vec<(Options, bool)> = vec![
        (
            opts("staging", &["deploy@10.0.0.5:2222", "local", "[::1]"]),
            true,
        ),
        (opts("prod.eu", &["a@b", "b@a"]), true),
        (opts("my env", &[]), false),
        (opts("staging", &["a@b", "a@b"]), false),
        (opts("staging", &["a b"]), false),
        (opts("staging", &["deploy@"]), false),
        (
            Options {
                image: Some("ghcr.io/acme/web:v1".into()),
                ..opts("staging", &[])
            },
            false,
        ),
        (
            Options {
                app: Some("-x".into()),
                ..opts("staging", &[])
            },
            false,
        ),
        (
            Options {
                socket: Some(String::new()),
                ..opts("staging", &[])
            },
            false,
        ),
    ];
    for (o, ok) in cases {
        assert_eq!(
            check_options(&o).is_ok(),
            ok,
            "{o:?}: {:?}",
            check_options(&o)
        );
        if ok {
            loads(&skeleton(&o));
        }
    }
}
