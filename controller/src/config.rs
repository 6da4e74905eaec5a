//! `deploy.toml` (README, "deploy.toml"): the app, its image repositories, its services and its
//! environments.
//!
//! Loading is strict: unknown keys, bad durations, malformed hosts and dangling references
//! (`requires` naming no env, `[migrate] service` naming no service) are errors that carry
//! the file, line and column, because a config mistake found half-way through a rollout is
//! far more expensive than one found before anything is contacted.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use proto::order::{MigrationSpec, ServiceKind, ServiceSpec};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use toml::Spanned;

/// Where an agent listens when the host table does not say.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/deploy-agent/agent.sock";

/// A parsed, validated `deploy.toml`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeployConfig {
    pub path: PathBuf,
    pub app: String,
    /// The default repository of every service (without tag or digest); a service's own
    /// `image`, or `[migrate] image`, names another.
    pub image: String,
    pub services: BTreeMap<String, ServiceSpec>,
    pub migrate: Option<MigrationSpec>,
    pub envs: BTreeMap<String, EnvConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EnvConfig {
    pub name: String,
    /// In file order: the first host runs the migration, and batches follow this order.
    pub hosts: Vec<HostSpec>,
    pub max_parallel: usize,
    pub requires: Option<String>,
    pub signing_key: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
    pub canary: Option<Canary>,
}

/// `canary = { hosts, watch }`: the rollout holds after its first `hosts` hosts for `watch`,
/// and goes on only if every service there stayed healthy, unrestarted, the same container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Canary {
    pub hosts: usize,
    pub watch: std::time::Duration,
}

/// The longest canary watch deploy.toml may ask for: the rollout holds its hosts meanwhile.
pub const MAX_CANARY_WATCH: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// One host of an env and how to reach its agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    /// What output calls the host. For table hosts with `name`, also the name the agent must
    /// report for itself (a mismatch means the table points at the wrong machine).
    pub name: String,
    pub name_is_explicit: bool,
    pub target: Target,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The agent's unix socket on this machine.
    Local { socket: PathBuf },
    /// `deploy-agent bridge --socket <socket>` run over SSH on `addr`.
    Ssh(SshTarget),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    /// None: the local user name.
    pub user: Option<String>,
    pub addr: String,
    pub port: u16,
    pub socket: String,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Local { socket } => write!(f, "local:{}", socket.display()),
            Target::Ssh(t) => {
                if let Some(u) = &t.user {
                    write!(f, "{u}@")?;
                }
                write!(f, "{}", host_port_display(&t.addr, t.port))
            }
        }
    }
}

/// `addr` or `addr:port` (`[v6]:port`), the short form used as a default host name.
fn host_port_display(addr: &str, port: u16) -> String {
    match (port, addr.contains(':')) {
        (22, _) => addr.to_string(),
        (p, true) => format!("[{addr}]:{p}"),
        (p, false) => format!("{addr}:{p}"),
    }
}

/// A config error located in its file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source_message}", path.display())]
    Read {
        path: PathBuf,
        source_message: String,
    },
    #[error("{}:{line}:{column}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{}: {message}", path.display())]
    Unlocated { path: PathBuf, message: String },
}

impl DeployConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_path_buf(),
            source_message: e.to_string(),
        })?;
        Self::parse(&text, path)
    }

    /// Parses `text` as the contents of `path` (the path only labels errors).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let locate = |span: Option<Range<usize>>, message: String| match span {
            Some(span) => {
                let (line, column) = line_col(text, span.start);
                ConfigError::Invalid {
                    path: path.to_path_buf(),
                    line,
                    column,
                    message,
                }
            }
            None => ConfigError::Unlocated {
                path: path.to_path_buf(),
                message,
            },
        };
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| locate(e.span(), e.message().trim().to_string()))?;
        raw.validate(path)
            .map_err(|(span, message)| locate(span, message))
    }

    /// The repository `service` runs from: its own `image`, else the app's.
    pub fn repository_of(&self, service: &str) -> &str {
        self.services
            .get(service)
            .and_then(|s| s.image.as_deref())
            .unwrap_or(&self.image)
    }

    /// The repository of `[migrate]`'s own image, when it has one (else it runs in its
    /// service's image).
    pub fn migration_repository(&self) -> Option<&str> {
        self.migrate.as_ref()?.image.as_deref()
    }

    pub fn env(&self, name: &str) -> Result<&EnvConfig, String> {
        self.envs.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.envs.keys().map(String::as_str).collect();
            format!(
                "no env {name:?} in {} (known: {})",
                self.path.display(),
                known.join(", ")
            )
        })
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

type Located = (Option<Range<usize>>, String);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    app: Option<Spanned<String>>,
    image: Spanned<String>,
    #[serde(default)]
    services: BTreeMap<Spanned<String>, ServiceSpec>,
    migrate: Option<Spanned<MigrationSpec>>,
    #[serde(default)]
    env: BTreeMap<Spanned<String>, RawEnv>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnv {
    hosts: Spanned<Vec<Spanned<RawHost>>>,
    #[serde(default = "default_max_parallel")]
    max_parallel: Spanned<i64>,
    requires: Option<Spanned<String>>,
    signing_key: Option<String>,
    known_hosts: Option<String>,
    canary: Option<Spanned<RawCanary>>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCanary {
    hosts: i64,
    #[serde(with = "proto::time::duration")]
    watch: std::time::Duration,
}

fn default_max_parallel() -> Spanned<i64> {
    Spanned::new(0..0, 1)
}

/// A host as written: `"user@addr[:port]"`, `"local"`, or a table.
#[derive(Debug, Clone, PartialEq)]
enum RawHost {
    Text(String),
    Table(RawHostTable),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHostTable {
    name: Option<String>,
    ssh: Option<String>,
    socket: Option<String>,
}

impl<'de> Deserialize<'de> for RawHost {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct HostVisitor;
        impl<'de> Visitor<'de> for HostVisitor {
            type Value = RawHost;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"user@addr[:port]\", \"local\", or a table { name, ssh, socket }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawHost, E> {
                Ok(RawHost::Text(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawHost, A::Error> {
                RawHostTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawHost::Table)
            }
        }
        d.deserialize_any(HostVisitor)
    }
}

/// Docker's container-name alphabet; names end up in `<app>-<env>-<service>`.
fn span_of<T>(s: &Spanned<T>) -> Option<Range<usize>> {
    let span = s.span();
    (span.end > 0).then_some(span)
}

impl RawConfig {
    fn validate(self, path: &Path) -> Result<DeployConfig, Located> {
        let image = self.image.get_ref().trim().to_string();
        check_repository(&image).map_err(|m| (span_of(&self.image), m))?;
        let app = match &self.app {
            Some(app) => app.get_ref().clone(),
            None => image.rsplit('/').next().unwrap_or(&image).to_string(),
        };
        if !proto::order::is_valid_name(&app) {
            let span = self
                .app
                .as_ref()
                .and_then(span_of)
                .or_else(|| span_of(&self.image));
            return Err((
                span,
                format!(
                    "app name {app:?} is not usable in container names ([a-zA-Z0-9][a-zA-Z0-9_.-]*)"
                ),
            ));
        }
        if self.services.is_empty() {
            return Err((
                None,
                "no [services.<name>] table: declare at least one service".into(),
            ));
        }
        let mut services = BTreeMap::new();
        for (name, spec) in self.services {
            if !proto::order::is_valid_name(name.get_ref()) {
                return Err((
                    span_of(&name),
                    format!(
                        "service name {:?} is not usable in container names",
                        name.get_ref()
                    ),
                ));
            }
            check_service(name.get_ref(), &spec).map_err(|m| (span_of(&name), m))?;
            services.insert(name.into_inner(), spec);
        }
        let migrate = match self.migrate {
            Some(m) => {
                if !services.contains_key(&m.get_ref().service) {
                    return Err((
                        span_of(&m),
                        format!(
                            "[migrate] service {:?} is not a declared service",
                            m.get_ref().service
                        ),
                    ));
                }
                if m.get_ref().command.is_empty() {
                    return Err((span_of(&m), "[migrate] command is empty".into()));
                }
                if let Some(repo) = &m.get_ref().image {
                    check_repository(repo)
                        .map_err(|e| (span_of(&m), format!("[migrate] image: {e}")))?;
                }
                Some(m.into_inner())
            }
            None => None,
        };
        let env_names: BTreeSet<String> = self.env.keys().map(|k| k.get_ref().clone()).collect();
        let mut envs = BTreeMap::new();
        for (name, raw) in self.env {
            let env = raw
                .validate(name.get_ref(), &env_names)
                .map_err(|(span, m)| (span.or_else(|| span_of(&name)), m))?;
            if !proto::order::is_valid_name(name.get_ref()) {
                return Err((
                    span_of(&name),
                    format!(
                        "env name {:?} is not usable in container names",
                        name.get_ref()
                    ),
                ));
            }
            envs.insert(name.into_inner(), env);
        }
        Ok(DeployConfig {
            path: path.to_path_buf(),
            app,
            image,
            services,
            migrate,
            envs,
        })
    }
}

impl RawEnv {
    fn validate(self, name: &str, env_names: &BTreeSet<String>) -> Result<EnvConfig, Located> {
        if self.hosts.get_ref().is_empty() {
            return Err((span_of(&self.hosts), format!("env {name:?} has no hosts")));
        }
        let mut hosts: Vec<HostSpec> = Vec::new();
        for raw in self.hosts.into_inner() {
            let span = span_of(&raw);
            let host = parse_host(raw.get_ref()).map_err(|m| (span.clone(), m))?;
            if hosts.iter().any(|h| h.name == host.name) {
                return Err((
                    span,
                    format!("host {:?} appears twice in env {name:?}", host.name),
                ));
            }
            hosts.push(host);
        }
        let max_parallel = *self.max_parallel.get_ref();
        if !(1..=1024).contains(&max_parallel) {
            return Err((
                span_of(&self.max_parallel),
                format!("max_parallel must be between 1 and 1024, not {max_parallel}"),
            ));
        }
        if let Some(req) = &self.requires {
            if req.get_ref() == name {
                return Err((span_of(req), format!("env {name:?} cannot require itself")));
            }
            if !env_names.contains(req.get_ref()) {
                return Err((
                    span_of(req),
                    format!("requires = {:?}: no such env in this file", req.get_ref()),
                ));
            }
        }
        let canary = match &self.canary {
            None => None,
            Some(c) => {
                let raw = c.get_ref();
                let bad = |why: String| Err((span_of(c), why));
                if raw.hosts < 1 || raw.hosts as usize > hosts.len() {
                    return bad(format!(
                        "canary.hosts must be between 1 and the env's {} host(s), not {}",
                        hosts.len(),
                        raw.hosts
                    ));
                }
                if raw.watch.is_zero() || raw.watch > MAX_CANARY_WATCH {
                    return bad("canary.watch must be longer than 0s and at most 24h".into());
                }
                Some(Canary {
                    hosts: raw.hosts as usize,
                    watch: raw.watch,
                })
            }
        };
        Ok(EnvConfig {
            canary,
            name: name.to_string(),
            hosts,
            max_parallel: max_parallel as usize,
            requires: self.requires.map(Spanned::into_inner),
            signing_key: self.signing_key.map(|p| expand_tilde(&p)),
            known_hosts: self.known_hosts.map(|p| expand_tilde(&p)),
        })
    }
}

/// What a service may not say: a health or verify path not starting with '/', a `verify`
/// expecting nothing, an `image` that is not a bare repository.
fn check_service(name: &str, spec: &ServiceSpec) -> Result<(), String> {
    if spec.kind == ServiceKind::Compose && spec.compose_file.is_none() {
        return Err(format!(
            "service {name:?} has kind = \"compose\" but no compose_file"
        ));
    }
    // `@host/` or `//host/` after the probe's `ip:port` would name another host.
    let rooted = |what: &str, path: &str| match path.starts_with('/') {
        true => Ok(()),
        false => Err(format!(
            "service {name:?}: {what} path {path:?} must start with '/'"
        )),
    };
    if let Some(path) = &spec.health.path {
        rooted("health", path)?;
    }
    if let Some(v) = &spec.verify {
        rooted("verify", &v.path)?;
        // An empty expectation is found in every body: it would prove nothing.
        if v.expect.trim().is_empty() {
            return Err(format!(
                "service {name:?}: verify.expect is empty; say \"revision\" or the text the body must contain"
            ));
        }
    }
    if let Some(repo) = &spec.image {
        check_repository(repo).map_err(|e| format!("service {name:?}: {e}"))?;
    }
    proto::accept::check_proxy_shape(name, spec)
}

/// A repository reference without tag or digest: `registry.example.com/acme/web`, `acme/web`.
pub(crate) fn check_repository(image: &str) -> Result<(), String> {
    if image.is_empty() {
        return Err("image is empty".into());
    }
    if image.contains('@') {
        return Err(format!(
            "image {image:?} carries a digest; name the repository only (refs are given to push)"
        ));
    }
    if image
        .rsplit('/')
        .next()
        .is_some_and(|last| last.contains(':'))
    {
        return Err(format!(
            "image {image:?} carries a tag; name the repository only (refs are given to push)"
        ));
    }
    if image
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_uppercase())
    {
        return Err(format!("image {image:?} has whitespace or upper case"));
    }
    Ok(())
}

fn parse_host(raw: &RawHost) -> Result<HostSpec, String> {
    match raw {
        RawHost::Text(s) if s == "local" => Ok(HostSpec {
            name: "local".into(),
            name_is_explicit: false,
            target: Target::Local {
                socket: DEFAULT_AGENT_SOCKET.into(),
            },
        }),
        RawHost::Text(s) => {
            let t = parse_ssh_target(s, DEFAULT_AGENT_SOCKET)?;
            Ok(HostSpec {
                name: host_port_display(&t.addr, t.port),
                name_is_explicit: false,
                target: Target::Ssh(t),
            })
        }
        RawHost::Table(t) => {
            let socket = t
                .socket
                .clone()
                .unwrap_or_else(|| DEFAULT_AGENT_SOCKET.to_string());
            if let Some(n) = &t.name
                && (n.is_empty() || n.chars().any(char::is_whitespace))
            {
                return Err(format!("host name {n:?} is empty or has whitespace"));
            }
            let target =
                match &t.ssh {
                    Some(ssh) => Target::Ssh(parse_ssh_target(ssh, &socket)?),
                    None if t.socket.is_some() => Target::Local {
                        socket: expand_tilde(&socket),
                    },
                    None => return Err(
                        "a host table needs `ssh = \"user@addr[:port]\"` or `socket = \"PATH\"`"
                            .into(),
                    ),
                };
            let (name, explicit) = match (&t.name, &target) {
                (Some(n), _) => (n.clone(), true),
                (None, Target::Ssh(s)) => (host_port_display(&s.addr, s.port), false),
                (None, Target::Local { socket }) => (format!("local:{}", socket.display()), false),
            };
            Ok(HostSpec {
                name,
                name_is_explicit: explicit,
                target,
            })
        }
    }
}

/// `user@addr[:port]`, `addr`, `user@[v6addr]:port`.
pub fn parse_ssh_target(s: &str, socket: &str) -> Result<SshTarget, String> {
    let bad = |why: &str| format!("bad host {s:?}: {why} (expected user@addr[:port])");
    if s.is_empty() || s.chars().any(char::is_whitespace) {
        return Err(bad("empty or has whitespace"));
    }
    let (user, rest) = match s.rsplit_once('@') {
        Some(("", r)) => return Err(bad(&format!("empty user before '@' in {r:?}"))),
        Some((u, r)) => (Some(u.to_string()), r),
        None => (None, s),
    };
    let (addr, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        match after {
            "" => (addr, 22),
            p => (
                addr,
                parse_port(p.strip_prefix(':').ok_or_else(|| bad("junk after ']'"))?)
                    .map_err(|e| bad(&e))?,
            ),
        }
    } else {
        match rest.split_once(':') {
            Some((_, p)) if p.contains(':') => {
                return Err(bad("IPv6 addresses go in brackets: [::1]:22"));
            }
            Some((a, p)) => (a, parse_port(p).map_err(|e| bad(&e))?),
            None => (rest, 22),
        }
    };
    if addr.is_empty() {
        return Err(bad("empty address"));
    }
    if socket.is_empty() {
        return Err(bad("empty socket path"));
    }
    Ok(SshTarget {
        user,
        addr: addr.to_string(),
        port,
        socket: socket.to_string(),
    })
}

fn parse_port(p: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("port {p:?} is not 1-65535")),
        Ok(n) => Ok(n),
    }
}

/// `~/x` → `$HOME/x`; everything else unchanged.
pub fn expand_tilde(p: &str) -> PathBuf {
    match (p.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
app = "acme"
image = "127.0.0.1:5000/acme/web"

[services.web]
ports = ["8080:8080"]
health = { path = "/healthz", port = 8080, interval = "250ms", healthy_for = "2s", deadline = "60s" }

[services.worker]
command = ["/app", "worker"]

[migrate]
command = ["/app", "migrate"]
service = "web"
timeout = "5m"

[env.staging]
hosts = ["deploy@10.0.0.5", "deploy@10.0.0.6:2222"]
max_parallel = 2

[env.prod]
hosts = [{ name = "prod-1", ssh = "deploy@203.0.113.10" }, "local", { socket = "/tmp/a.sock" }]
requires = "staging"
signing_key = "/keys/prod"
"#;

    fn parse(text: &str) -> Result<DeployConfig, ConfigError> {
        DeployConfig::parse(text, Path::new("deploy.toml"))
    }

    #[test]
    fn the_design_example_parses() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.app, "acme");
        assert_eq!(c.services.len(), 2);
        assert_eq!(c.migrate.as_ref().unwrap().timeout.as_secs(), 300);
        let staging = c.env("staging").unwrap();
        assert_eq!(staging.max_parallel, 2);
        assert_eq!(staging.hosts[0].name, "10.0.0.5");
        assert_eq!(staging.hosts[1].name, "10.0.0.6:2222");
        let Target::Ssh(t) = &staging.hosts[1].target else {
            panic!("ssh expected")
        };
        assert_eq!(
            (t.user.as_deref(), t.addr.as_str(), t.port),
            (Some("deploy"), "10.0.0.6", 2222)
        );
        assert_eq!(t.socket, DEFAULT_AGENT_SOCKET);
        let prod = c.env("prod").unwrap();
        assert_eq!(prod.max_parallel, 1);
        assert_eq!(prod.requires.as_deref(), Some("staging"));
        assert_eq!(prod.hosts[0].name, "prod-1");
        assert!(prod.hosts[0].name_is_explicit);
        assert_eq!(
            prod.hosts[1].target,
            Target::Local {
                socket: DEFAULT_AGENT_SOCKET.into()
            }
        );
        assert_eq!(
            prod.hosts[2].target,
            Target::Local {
                socket: "/tmp/a.sock".into()
            }
        );
        assert_eq!(prod.signing_key.as_deref(), Some(Path::new("/keys/prod")));
        assert!(c.env("dev").unwrap_err().contains("staging"));
    }

    #[test]
    fn services_and_the_migration_may_have_their_own_repository() {
        let c = parse(
            r#"
image = "registry.example.com/acme/api"
[services.api]
[services.web]
image = "registry.example.com/acme/web"
verify = { path = "/version", expect = "revision" }
[migrate]
command = ["/migrate"]
service = "api"
image = "registry.example.com/acme/migrate"
"#,
        )
        .unwrap();
        assert_eq!(c.repository_of("api"), "registry.example.com/acme/api");
        assert_eq!(c.repository_of("web"), "registry.example.com/acme/web");
        assert_eq!(
            c.migration_repository(),
            Some("registry.example.com/acme/migrate")
        );
        let verify = c.services["web"].verify.as_ref().unwrap();
        assert_eq!(
            (verify.path.as_str(), verify.expect.as_str()),
            ("/version", "revision")
        );
        let single = parse("image = \"acme/web\"\n[services.web]\n").unwrap();
        assert_eq!(single.repository_of("web"), "acme/web");
        assert_eq!(single.migration_repository(), None);
    }

    #[test]
    fn app_defaults_to_the_last_image_segment() {
        let c = parse("image = \"registry.example.com/acme/web\"\n[services.web]\n").unwrap();
        assert_eq!(c.app, "web");
        assert!(c.envs.is_empty());
    }

    #[test]
    fn mistakes_are_located() {
        let base = "image = \"acme/web\"\n[services.web]\n";
        // (extra text, expected line, expected column, a word the message must contain)
        let cases: &[(&str, usize, usize, &str)] = &[
            ("prots = [\"1:1\"]\n", 3, 1, "prots"),
            (
                "health = { path = \"/h\", deadline = \"soon\" }\n",
                3,
                36,
                "duration",
            ),
            ("[env.s]\nhosts = [\"a@b:99999\"]\n", 4, 10, "port"),
            ("[env.s]\nhosts = []\n", 4, 9, "no hosts"),
            (
                "[env.s]\nhosts = [\"a@b\"]\nrequires = \"nope\"\n",
                5,
                12,
                "no such env",
            ),
            (
                "[env.s]\nhosts = [\"a@b\"]\nmax_parallel = 0\n",
                5,
                16,
                "max_parallel",
            ),
            ("[env.s]\nhosts = [\"a@b\", \"a@b\"]\n", 4, 17, "twice"),
            ("[env.s]\nhosts = [{ nmae = \"x\" }]\n", 4, 12, "nmae"),
            ("[env.s]\nhosts = [{ name = \"x\" }]\n", 4, 10, "ssh"),
            (
                "[migrate]\ncommand = [\"m\"]\nservice = \"db\"\n",
                3,
                1,
                "not a declared service",
            ),
            ("[env.s]\nhost = [\"a@b\"]\n", 4, 1, "host"),
        ];
        for (extra, line, column, word) in cases {
            let text = format!("{base}{extra}");
            match parse(&text) {
                Err(ConfigError::Invalid {
                    line: l,
                    column: c,
                    message,
                    ..
                }) => {
                    assert_eq!((l, c), (*line, *column), "{extra:?}: {message}");
                    assert!(
                        message.contains(word),
                        "{extra:?}: {message:?} lacks {word:?}"
                    );
                }
                other => panic!("{extra:?}: expected a located error, got {other:?}"),
            }
        }
    }

    #[test]
    fn bad_top_level_values_are_refused() {
        for (text, word) in [
            ("image = \"acme/web:v1\"\n[services.web]\n", "tag"),
            ("image = \"acme/web@sha256:00\"\n[services.web]\n", "digest"),
            ("image = \"acme/web\"\n", "services"),
            (
                "image = \"acme/web\"\napp = \"my app\"\n[services.web]\n",
                "app name",
            ),
            (
                "image = \"acme/web\"\n[services.\"we b\"]\n",
                "service name",
            ),
            (
                "image = \"acme/web\"\n[services.api]\nkind = \"compose\"\n",
                "compose_file",
            ),
            (
                "image = \"acme/web\"\n[services.web]\nhealth = { path = \"@evil.example/\" }\n",
                "must start with '/'",
            ),
            (
                "image = \"acme/web\"\n[services.web]\n[env.s]\nhosts = [\"a@b\"]\nrequires = \"s\"\n",
                "itself",
            ),
            (
                "image = \"acme/web\"\n[services.web]\nimage = \"acme/api:v1\"\n",
                "service \"web\": image \"acme/api:v1\" carries a tag",
            ),
            (
                "image = \"acme/web\"\n[services.web]\nimage = \"acme/api@sha256:00\"\n",
                "carries a digest",
            ),
            (
                "image = \"acme/web\"\n[services.web]\nverify = { path = \"version\", expect = \"revision\" }\n",
                "verify path \"version\" must start with '/'",
            ),
            (
                "image = \"acme/web\"\n[services.web]\nverify = { path = \"/version\", expect = \" \" }\n",
                "verify.expect is empty",
            ),
            (
                "image = \"acme/web\"\n[services.web]\nverify = { path = \"/version\" }\n",
                "expect",
            ),
            (
                "image = \"acme/web\"\n[services.web]\n[migrate]\ncommand = [\"m\"]\nservice = \"web\"\nimage = \"acme/m:latest\"\n",
                "[migrate] image: image \"acme/m:latest\" carries a tag",
            ),
            (
                "image = \"acme/web\"\n[services.web]\n[[env]]\n",
                "invalid type",
            ),
            ("image = ", "string"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(word), "{text:?}: {err:?} lacks {word:?}");
            assert!(err.starts_with("deploy.toml"), "{err}");
        }
    }

    #[test]
    fn ssh_targets_parse() {
        let ok = [
            ("deploy@10.0.0.5", Some("deploy"), "10.0.0.5", 22),
            ("10.0.0.5:2222", None, "10.0.0.5", 2222),
            ("me@host.example", Some("me"), "host.example", 22),
            ("me@[::1]:2200", Some("me"), "::1", 2200),
            ("[fe80::1]", None, "fe80::1", 22),
        ];
        for (text, user, addr, port) in ok {
            let t = parse_ssh_target(text, "/s").unwrap();
            assert_eq!(
                (t.user.as_deref(), t.addr.as_str(), t.port),
                (user, addr, port),
                "{text}"
            );
        }
        for bad in [
            "", "@host", "me@", "a@b:0", "a@b:x", "::1", "[::1", "[::1]x", "a b",
        ] {
            assert!(
                parse_ssh_target(bad, "/s").is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("é\nx", 3), (2, 1));
        assert_eq!(line_col("x", 99), (1, 2));
    }
}
