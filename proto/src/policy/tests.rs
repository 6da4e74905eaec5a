//! The host policy as tables: each rule with what it admits and the refusal it words.

use std::collections::BTreeMap;

use expect_test::{Expect, expect};

use super::*;
use crate::order::{ImageRef, ServiceSpec};
use crate::time::Timestamp;

/// A host where `/etc/deploy-agent/apps/acme.env` is a proper secret file, one file is
/// group-writable, one is someone else's, `/srv/acme/escape` is a symlink to `/` and `/var/run`
/// one to `/run`.
struct Host;

impl HostFiles for Host {
    fn look(&self, path: &str) -> FileLook {
        let file = |mode, owner_trusted| FileLook {
            resolved: path.to_string(),
            kind: FileKind::File,
            owner_trusted,
            mode,
        };
        match path {
            "/etc/deploy-agent/apps/acme.env" | "/etc/acme/compose.yml" => file(0o600, true),
            "/etc/deploy-agent/apps/shared.env" => file(0o664, true),
            "/etc/deploy-agent/apps/theirs.env" => file(0o644, false),
            "/etc/deploy-agent/apps/dir" => FileLook {
                kind: FileKind::Other,
                ..file(0o755, true)
            },
            "/etc/deploy-agent/apps/link.env" => FileLook {
                resolved: "/etc/shadow".into(),
                ..file(0o640, true)
            },
            // As on most hosts, /var/run is a link to /run.
            p if p.starts_with("/var/run/") => FileLook {
                resolved: p.replacen("/var/run/", "/run/", 1),
                ..file(0o755, true)
            },
            p if p.starts_with("/srv/acme/escape") => FileLook {
                resolved: p.replacen("/srv/acme/escape", "", 1),
                ..file(0o755, true)
            },
            _ => FileLook {
                resolved: path.to_string(),
                kind: FileKind::Missing,
                owner_trusted: false,
                mode: 0,
            },
        }
    }
}

fn order(service: &str, validity_secs: u64) -> Order {
    let issued_at = Timestamp::from_unix_secs(1_767_225_600);
    Order {
        order_id: "o1".into(),
        rollout_id: "r1".into(),
        env: "prod".into(),
        host: "web-1".into(),
        host_key: None,
        issued_at,
        not_after: issued_at.plus(Duration::from_secs(validity_secs)),
        issued_by: "ci".into(),
        action: crate::Action::Deploy,
        image: ImageRef::new(
            "reg/acme/web",
            "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        )
        .unwrap(),
        images: BTreeMap::new(),
        migrate_image: None,
        revision: None,
        reference: "v1".into(),
        refs: Default::default(),
        tags: Default::default(),
        run_migration: false,
        rerun_migration: false,
        app: "acme".into(),
        services: BTreeMap::from([(
            "web".to_string(),
            serde_json::from_str::<ServiceSpec>(service).unwrap(),
        )]),
        migrate: None,
        exec: None,
        maintenance: None,
        proposal: None,
        override_freeze: None,
    }
}

/// One line per case: the service spec (and policy changes), then the verdict.
fn table(cases: &[(&str, &str, HostPolicy)], expect: Expect) {
    let mut out = String::new();
    for (label, service, policy) in cases {
        let verdict = match check(&order(service, 600), "ci@acme", policy, &Host) {
            Ok(()) => "admitted".to_string(),
            Err(d) => d.to_string(),
        };
        out.push_str(&format!("{label:<28} {verdict}\n"));
    }
    expect.assert_eq(&out);
}

fn with(f: impl FnOnce(&mut HostPolicy)) -> HostPolicy {
    let mut p = HostPolicy::default();
    f(&mut p);
    p
}

#[test]
fn volumes() {
    let srv = || with(|p| p.volumes = vec!["/srv/acme".into()]);
    table(
        &[
            (
                "named",
                r#"{"volumes":["data:/data"]}"#,
                HostPolicy::default(),
            ),
            (
                "root, default",
                r#"{"volumes":["/:/host"]}"#,
                HostPolicy::default(),
            ),
            ("root, /srv/acme", r#"{"volumes":["/:/host"]}"#, srv()),
            (
                "root, listed",
                r#"{"volumes":["/:/host"]}"#,
                with(|p| p.volumes = vec!["/".into()]),
            ),
            (
                "docker.sock",
                r#"{"volumes":["/var/run/docker.sock:/s"]}"#,
                srv(),
            ),
            (
                "docker.sock, listed",
                r#"{"volumes":["/var/run/docker.sock:/s"]}"#,
                with(|p| p.volumes = vec!["/var/run/docker.sock".into()]),
            ),
            ("under", r#"{"volumes":["/srv/acme/data:/d:ro"]}"#, srv()),
            (
                "sibling prefix",
                r#"{"volumes":["/srv/acmeevil:/d"]}"#,
                srv(),
            ),
            (
                "dot-dot",
                r#"{"volumes":["/srv/acme/../../etc:/d"]}"#,
                srv(),
            ),
            (
                "symlink out",
                r#"{"volumes":["/srv/acme/escape/etc:/d"]}"#,
                srv(),
            ),
            (
                "second volume",
                r#"{"volumes":["data:/data","/etc:/e"]}"#,
                srv(),
            ),
        ],
        expect![[r#"
            named                        admitted
            root, default                [policy] volumes denies services.web.volumes[0] = "/:/host": host path "/" is not at or under a listed path ([policy] volumes lists no host path, so only named volumes are allowed)
            root, /srv/acme              [policy] volumes denies services.web.volumes[0] = "/:/host": host path "/" is not at or under a listed path ([policy] volumes = ["/srv/acme"])
            root, listed                 admitted
            docker.sock                  [policy] volumes denies services.web.volumes[0] = "/var/run/docker.sock:/s": host path "/var/run/docker.sock" is not at or under a listed path ([policy] volumes = ["/srv/acme"])
            docker.sock, listed          admitted
            under                        admitted
            sibling prefix               [policy] volumes denies services.web.volumes[0] = "/srv/acmeevil:/d": host path "/srv/acmeevil" is not at or under a listed path ([policy] volumes = ["/srv/acme"])
            dot-dot                      [policy] volumes denies services.web.volumes[0] = "/srv/acme/../../etc:/d": "/srv/acme/../../etc" holds a '.' or '..' component
            symlink out                  [policy] volumes denies services.web.volumes[0] = "/srv/acme/escape/etc:/d": host path "/srv/acme/escape/etc" resolves to "/etc" through a symlink, which is not at or under a listed path ([policy] volumes = ["/srv/acme"])
            second volume                [policy] volumes denies services.web.volumes[1] = "/etc:/e": host path "/etc" is not at or under a listed path ([policy] volumes = ["/srv/acme"])
        "#]],
    );
}

#[test]
fn networks_and_ports() {
    let acme = || with(|p| p.networks = Some(vec!["acme".into()]));
    table(
        &[
            (
                "user network, default",
                r#"{"network":"acme"}"#,
                HostPolicy::default(),
            ),
            (
                "host, default",
                r#"{"network":"host"}"#,
                HostPolicy::default(),
            ),
            (
                "host, listed",
                r#"{"network":"host"}"#,
                with(|p| p.networks = Some(vec!["host".into()])),
            ),
            (
                "container:, default",
                r#"{"network":"container:db"}"#,
                HostPolicy::default(),
            ),
            ("listed", r#"{"network":"acme"}"#, acme()),
            ("not listed", r#"{"network":"billing"}"#, acme()),
            ("bridge with a list", r#"{"network":"bridge"}"#, acme()),
            (
                "port 8080",
                r#"{"ports":["8080:80"]}"#,
                HostPolicy::default(),
            ),
            ("port 80", r#"{"ports":["80:8080"]}"#, HostPolicy::default()),
            (
                "port 80 on loopback",
                r#"{"ports":["127.0.0.1:80:8080"]}"#,
                HostPolicy::default(),
            ),
            ("ephemeral", r#"{"ports":["80"]}"#, HostPolicy::default()),
            (
                "port 80, listed",
                r#"{"ports":["80:8080","443:8443"]}"#,
                with(|p| p.ports = parse_port_ranges("80,443,1024-65535").unwrap()),
            ),
        ],
        expect![[r#"
            user network, default        admitted
            host, default                [policy] networks denies services.web.network = "host": network "host" shares another network namespace; list it in [policy] networks to allow it
            host, listed                 admitted
            container:, default          [policy] networks denies services.web.network = "container:db": network "container:db" shares another network namespace; list it in [policy] networks to allow it
            listed                       admitted
            not listed                   [policy] networks denies services.web.network = "billing": network "billing" is not in [policy] networks = ["acme"]
            bridge with a list           admitted
            port 8080                    admitted
            port 80                      [policy] ports denies services.web.ports[0] = "80:8080": host port 80 is outside [policy] ports = "1024-65535"
            port 80 on loopback          [policy] ports denies services.web.ports[0] = "127.0.0.1:80:8080": host port 80 is outside [policy] ports = "1024-65535"
            ephemeral                    admitted
            port 80, listed              admitted
        "#]],
    );
}

#[test]
fn files() {
    let etc_acme = || with(|p| p.files = vec!["/etc/acme".into()]);
    table(
        &[
            (
                "default dir",
                r#"{"env_file":"/etc/deploy-agent/apps/acme.env"}"#,
                HostPolicy::default(),
            ),
            (
                "outside",
                r#"{"env_file":"/root/.ssh/id_ed25519"}"#,
                HostPolicy::default(),
            ),
            (
                "relative",
                r#"{"env_file":"acme.env"}"#,
                HostPolicy::default(),
            ),
            (
                "group-writable",
                r#"{"env_file":"/etc/deploy-agent/apps/shared.env"}"#,
                HostPolicy::default(),
            ),
            (
                "someone else's",
                r#"{"env_file":"/etc/deploy-agent/apps/theirs.env"}"#,
                HostPolicy::default(),
            ),
            (
                "missing",
                r#"{"env_file":"/etc/deploy-agent/apps/none.env"}"#,
                HostPolicy::default(),
            ),
            (
                "a directory",
                r#"{"env_file":"/etc/deploy-agent/apps/dir"}"#,
                HostPolicy::default(),
            ),
            (
                "symlink out",
                r#"{"env_file":"/etc/deploy-agent/apps/link.env"}"#,
                HostPolicy::default(),
            ),
            (
                "compose, default",
                r#"{"kind":"compose","compose_file":"/etc/acme/compose.yml"}"#,
                HostPolicy::default(),
            ),
            (
                "compose, listed",
                r#"{"kind":"compose","compose_file":"/etc/acme/compose.yml"}"#,
                etc_acme(),
            ),
        ],
        expect![[r#"
            default dir                  admitted
            outside                      [policy] files denies services.web.env_file = "/root/.ssh/id_ed25519": "/root/.ssh/id_ed25519" is not under a directory of [policy] files = ["/etc/deploy-agent/apps"]
            relative                     [policy] files denies services.web.env_file = "acme.env": "acme.env" is not an absolute path
            group-writable               [policy] files denies services.web.env_file = "/etc/deploy-agent/apps/shared.env": "/etc/deploy-agent/apps/shared.env" is writable by its group or by everyone (mode 0664); chmod go-w it
            someone else's               [policy] files denies services.web.env_file = "/etc/deploy-agent/apps/theirs.env": "/etc/deploy-agent/apps/theirs.env" is owned by neither root nor the agent's user, so someone else could change what the order runs
            missing                      [policy] files denies services.web.env_file = "/etc/deploy-agent/apps/none.env": "/etc/deploy-agent/apps/none.env" does not exist on this host
            a directory                  [policy] files denies services.web.env_file = "/etc/deploy-agent/apps/dir": "/etc/deploy-agent/apps/dir" is not a regular file
            symlink out                  [policy] files denies services.web.env_file = "/etc/deploy-agent/apps/link.env": "/etc/deploy-agent/apps/link.env" resolves to "/etc/shadow" through a symlink, outside [policy] files = ["/etc/deploy-agent/apps"]
            compose, default             [policy] files denies services.web.compose_file = "/etc/acme/compose.yml": "/etc/acme/compose.yml" is not under a directory of [policy] files = ["/etc/deploy-agent/apps"]
            compose, listed              admitted
        "#]],
    );
}

#[test]
fn validity_and_apps() {
    let apps = |entries: &[(&str, &[&str])]| {
        with(|p| {
            p.apps = entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
                .collect()
        })
    };
    let verdict = |validity: u64, principals: &str, policy: &HostPolicy| match check(
        &order("{}", validity),
        principals,
        policy,
        &Host,
    ) {
        Ok(()) => "admitted".to_string(),
        Err(d) => d.to_string(),
    };
    let cases = [
        ("10 min", verdict(600, "ci@acme", &HostPolicy::default())),
        ("15 min", verdict(900, "ci@acme", &HostPolicy::default())),
        ("1 day", verdict(86_400, "ci@acme", &HostPolicy::default())),
        (
            "1 day, max 2d",
            verdict(
                86_400,
                "ci@acme",
                &with(|p| p.max_validity = Duration::from_secs(2 * 86_400)),
            ),
        ),
        (
            "apps: mine",
            verdict(600, "ci@acme", &apps(&[("ci@acme", &["acme"])])),
        ),
        (
            "apps: one of my principals",
            verdict(600, "ops@acme,ci@acme", &apps(&[("ci@acme", &["acme"])])),
        ),
        (
            "apps: another's",
            verdict(
                600,
                "ci@billing",
                &apps(&[("ci@acme", &["acme"]), ("ci@billing", &["billing"])]),
            ),
        ),
        (
            "apps: wildcard",
            verdict(600, "admin", &apps(&[("admin", &["*"])])),
        ),
    ];
    let out: String = cases
        .iter()
        .map(|(label, v)| format!("{label:<28} {v}\n"))
        .collect();
    expect![[r#"
        10 min                       admitted
        15 min                       admitted
        1 day                        [policy] max_validity denies not_after: the order is valid for 1day, longer than the 15m this host accepts
        1 day, max 2d                admitted
        apps: mine                   admitted
        apps: one of my principals   admitted
        apps: another's              [policy] apps denies app = "acme": signer "ci@billing" may not deploy app "acme" on this host
        apps: wildcard               admitted
    "#]]
    .assert_eq(&out);
}

#[test]
fn exec() {
    let exec = |mut o: Order| {
        o.action = crate::Action::Exec;
        o.exec = Some(crate::order::ExecSpec {
            service: "web".into(),
            command: vec!["/app".into(), "version".into()],
            timeout: Duration::from_secs(60),
        });
        o
    };
    let off = with(|p| p.exec = false);
    let acme_only = with(|p| p.apps = BTreeMap::from([("ci@acme".into(), vec!["other".into()])]));
    // (label, order, policy)
    let cases = [
        (
            "exec, default",
            exec(order("{}", 600)),
            HostPolicy::default(),
        ),
        ("exec, exec = false", exec(order("{}", 600)), off.clone()),
        ("deploy, exec = false", order("{}", 600), off),
        ("exec, another's app", exec(order("{}", 600)), acme_only),
        (
            "exec, env_file outside",
            exec(order(r#"{"env_file":"/etc/acme/web.env"}"#, 600)),
            HostPolicy::default(),
        ),
    ];
    let out: String = cases
        .iter()
        .map(|(label, o, policy)| {
            let verdict = match check(o, "ci@acme", policy, &Host) {
                Ok(()) => "admitted".to_string(),
                Err(d) => d.to_string(),
            };
            format!("{label:<28} {verdict}\n")
        })
        .collect();
    expect![[r#"
        exec, default                admitted
        exec, exec = false           [policy] exec denies action = "exec": this host runs no one-off commands (exec = false)
        deploy, exec = false         admitted
        exec, another's app          [policy] apps denies app = "acme": signer "ci@acme" may not deploy app "acme" on this host
        exec, env_file outside       [policy] files denies services.web.env_file = "/etc/acme/web.env": "/etc/acme/web.env" is not under a directory of [policy] files = ["/etc/deploy-agent/apps"]
    "#]].assert_eq(&out);
}

#[test]
fn proxies() {
    let proxy = |caddy: &str, listen: &str| {
        format!(
            r#"{{"health":{{"port":8080}},"proxy":{{"caddy":"{caddy}","listen":["{listen}"]}}}}"#
        )
    };
    let listed = with(|p| p.proxies = vec!["127.0.0.1:2999".into()]);
    let cases: Vec<(&str, String, HostPolicy)> = vec![
        (
            "caddy's default",
            proxy("localhost:2019", ":8443"),
            HostPolicy::default(),
        ),
        (
            "another admin API",
            proxy("10.0.0.9:2019", ":8443"),
            HostPolicy::default(),
        ),
        (
            "listed admin API",
            proxy("127.0.0.1:2999", ":8443"),
            listed.clone(),
        ),
        (
            "default no longer listed",
            proxy("localhost:2019", ":8443"),
            listed,
        ),
        (
            "listen :443, default",
            proxy("localhost:2019", ":443"),
            HostPolicy::default(),
        ),
        (
            "listen :443, listed",
            proxy("localhost:2019", ":443"),
            with(|p| p.ports = parse_port_ranges("443,1024-65535").unwrap()),
        ),
    ];
    let cases: Vec<(&str, &str, HostPolicy)> = cases
        .iter()
        .map(|(l, s, p)| (*l, s.as_str(), p.clone()))
        .collect();
    table(
        &cases,
        expect![[r#"
            caddy's default              admitted
            another admin API            [policy] proxies denies services.web.proxy.caddy = "10.0.0.9:2019": this host lets orders drive only the Caddy admin APIs ["localhost:2019", "127.0.0.1:2019", "[::1]:2019"]
            listed admin API             admitted
            default no longer listed     [policy] proxies denies services.web.proxy.caddy = "localhost:2019": this host lets orders drive only the Caddy admin APIs ["127.0.0.1:2999"]
            listen :443, default         [policy] ports denies services.web.proxy.listen[0] = ":443": host port 443 is outside [policy] ports = "1024-65535"
            listen :443, listed          admitted
        "#]],
    );
}

#[test]
fn port_ranges_parse_or_explain() {
    assert_eq!(parse_port_ranges("1024-65535").unwrap(), vec![1024..=65535]);
    assert_eq!(
        parse_port_ranges("80, 443,8000-8100").unwrap(),
        vec![80..=80, 443..=443, 8000..=8100]
    );
    for bad in ["", "0-10", "10-5", "http", "1-70000", "80,"] {
        assert!(parse_port_ranges(bad).is_err(), "{bad:?}");
    }
}
