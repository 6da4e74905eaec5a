//! `agent.toml`: what this agent is (host, env), where it keeps its state and socket,
//! and whom it trusts.
//!
//! Loading is strict: unknown keys are errors, and every error names the file, line and column so
//! an operator can fix it without guessing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use proto::approval::ApprovalRules;
use proto::policy::HostPolicy;
use proto::release_policy::ReleasePolicy;
use proto::sign::{AllowedSigners, AllowedSignersError};
use serde::Deserialize;

mod metrics;
mod policy;
mod release;
pub use metrics::MetricsConfig;
pub use policy::DEFAULT_HOST_KEY_DIR;
pub use release::summary as release_policy_summary;

/// Where `deploy-agent run` and `check-config` look when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/deploy-agent/agent.toml";
/// The socket path the controller assumes for a host table without `socket` (README,
/// "deploy.toml").
pub const DEFAULT_SOCKET: &str = "/run/deploy-agent/agent.sock";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/deploy-agent";

/// A loaded and validated `agent.toml`. Relative paths in the file are resolved against the
/// directory of the file, so a config and its `allowed_signers` can travel together.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    pub host: String,
    pub env: String,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub allowed_signers: PathBuf,
    pub allowed_images: Vec<String>,
    pub container_prefix: String,
    /// How often the health watch probes every deployed service.
    pub health_interval: Duration,
    /// Group that owns the socket (name or numeric gid), so its members may talk to the agent.
    pub socket_group: Option<String>,
    /// How long a SIGTERM waits for running jobs before the agent exits anyway (the next start
    /// recovers whatever was left unfinished).
    pub shutdown_grace: Duration,
    /// `[policy]`: what any order may ask of this host.
    pub policy: HostPolicy,
    /// `[[freeze]]` and `[refs]`: when this host takes releases, and which tags make one.
    pub release_policy: ReleasePolicy,
    /// Files holding this host's SSH public keys; None: sshd's, in [`DEFAULT_HOST_KEY_DIR`].
    pub host_keys: Option<Vec<PathBuf>>,
    /// How much abuse the socket takes (README, "Under abuse").
    pub limits: SocketLimits,
    /// `[approvals]`: deploys and rollbacks need a proposal approved so (README, "Approvals").
    pub approvals: Option<ApprovalRules>,
    /// The Docker client config giving pulls their registry credentials; None: the Docker
    /// CLI's own (README, "Registry credentials").
    pub docker_config: Option<PathBuf>,
    /// `[[alerts]]`: webhooks told of health transitions and failed orders (README, "Alerts").
    pub alerts: Vec<crate::alerts::AlertTarget>,
    /// `[metrics]`: the textfile and/or HTTP listener (README, "Metrics").
    pub metrics: MetricsConfig,
}

/// The socket's bounds: `max_connections`, `frame_timeout` and `idle_timeout` in agent.toml.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketLimits {
    /// Past this many open connections, the one idle longest that follows no job is closed.
    pub max_connections: usize,
    /// `hello` must arrive, and a frame once begun must end, within this.
    pub frame_timeout: Duration,
    /// A connection that follows no job is closed after this long without a request.
    pub idle_timeout: Duration,
}

impl Default for SocketLimits {
    fn default() -> Self {
        SocketLimits {
            max_connections: 64,
            frame_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    host: String,
    env: String,
    #[serde(default = "default_socket")]
    socket: PathBuf,
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    allowed_signers: PathBuf,
    allowed_images: Vec<String>,
    #[serde(default)]
    container_prefix: String,
    #[serde(default = "default_health_interval", with = "proto::time::duration")]
    health_interval: Duration,
    #[serde(default)]
    socket_group: Option<String>,
    #[serde(default = "default_shutdown_grace", with = "proto::time::duration")]
    shutdown_grace: Duration,
    #[serde(default)]
    policy: policy::RawPolicy,
    #[serde(default)]
    freeze: Vec<release::RawFreeze>,
    #[serde(default)]
    refs: Option<release::RawRefs>,
    #[serde(default)]
    host_keys: Option<Vec<PathBuf>>,
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    #[serde(default = "default_frame_timeout", with = "proto::time::duration")]
    frame_timeout: Duration,
    #[serde(default = "default_idle_timeout", with = "proto::time::duration")]
    idle_timeout: Duration,
    #[serde(default)]
    approvals: Option<ApprovalRules>,
    #[serde(default)]
    docker_config: Option<PathBuf>,
    #[serde(default)]
    alerts: Vec<crate::alerts::AlertTarget>,
    #[serde(default)]
    metrics: MetricsConfig,
}

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}
fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}
fn default_health_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(120)
}
fn default_max_connections() -> usize {
    SocketLimits::default().max_connections
}
fn default_frame_timeout() -> Duration {
    SocketLimits::default().frame_timeout
}
fn default_idle_timeout() -> Duration {
    SocketLimits::default().idle_timeout
}

impl RawConfig {
    /// The socket limits, each above zero: a zero would close every connection at once.
    fn limits(&self) -> Result<SocketLimits, String> {
        if self.max_connections == 0 {
            return Err("max_connections must be at least 1".into());
        }
        for (key, value) in [
            ("frame_timeout", self.frame_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            if value.is_zero() {
                return Err(format!("{key} must be longer than zero"));
            }
        }
        Ok(SocketLimits {
            max_connections: self.max_connections,
            frame_timeout: self.frame_timeout,
            idle_timeout: self.idle_timeout,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        AgentConfig::parse(&text, path)
    }

    /// Parses the text of `path` (the path is only used for messages and relative paths).
    pub fn parse(text: &str, path: &Path) -> Result<AgentConfig, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|s| line_column(text, s.start))
                .unwrap_or((1, 1));
            ConfigError::Syntax {
                path: path.to_path_buf(),
                line,
                column,
                message: e.message().trim().to_string(),
            }
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        for (key, value) in [("host", &raw.host), ("env", &raw.env)] {
            if let Some(why) = bad_name(value) {
                return Err(invalid(format!("{key} = {value:?}: {why}")));
            }
        }
        if raw.allowed_images.is_empty() {
            return Err(invalid(
                "allowed_images is empty: every order would be refused".into(),
            ));
        }
        if let Some(p) = raw
            .allowed_images
            .iter()
            .find(|p| p.trim().is_empty() || p.contains('@'))
        {
            return Err(invalid(format!(
                "allowed_images entry {p:?} must be a repository or a pattern like \"registry.example.com/acme/*\""
            )));
        }
        if raw
            .container_prefix
            .bytes()
            .any(|b| !(b.is_ascii_alphanumeric() || b"_.-".contains(&b)))
        {
            return Err(invalid(format!(
                "container_prefix {:?} may only hold letters, digits, '_', '.' and '-' (it becomes part of container names)",
                raw.container_prefix
            )));
        }
        if raw.health_interval.is_zero() {
            return Err(invalid("health_interval must be longer than zero".into()));
        }
        if raw
            .socket_group
            .as_deref()
            .is_some_and(|g| g.trim().is_empty())
        {
            return Err(invalid(
                "socket_group is empty; leave it out to keep the agent's own group".into(),
            ));
        }
        let limits = raw.limits().map_err(invalid)?;
        if let Some(rules) = &raw.approvals {
            rules.check().map_err(invalid)?;
        }
        let policy = policy::host_policy(raw.policy).map_err(invalid)?;
        let mut release_policy = release::release_policy(raw.freeze, raw.refs).map_err(invalid)?;
        // Only approvers can grant an override of a freeze.
        release_policy.overridable = raw.approvals.is_some();
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: PathBuf| if p.is_relative() { base.join(p) } else { p };
        Ok(AgentConfig {
            host: raw.host,
            env: raw.env,
            socket: resolve(raw.socket),
            state_dir: resolve(raw.state_dir),
            allowed_signers: resolve(raw.allowed_signers),
            allowed_images: raw.allowed_images,
            container_prefix: raw.container_prefix,
            health_interval: raw.health_interval,
            socket_group: raw.socket_group,
            shutdown_grace: raw.shutdown_grace,
            policy,
            release_policy,
            host_keys: raw
                .host_keys
                .map(|keys| keys.into_iter().map(resolve).collect()),
            limits,
            approvals: raw.approvals,
            docker_config: raw.docker_config.map(resolve),
            alerts: raw.alerts,
            metrics: MetricsConfig {
                textfile: raw.metrics.textfile.map(resolve),
                ..raw.metrics
            },
        })
    }
}

/// Host and env names end up in container labels and names; keep them to a safe alphabet.
fn bad_name(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        Some("must not be empty")
    } else if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    {
        Some("may only hold letters, digits, '_', '.' and '-'")
    } else {
        None
    }
}

/// Why `allowed_signers` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TrustFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Parse(#[from] AllowedSignersError),
}

impl AgentConfig {
    /// Reads and parses `allowed_signers`. The agent does so at start and again for every
    /// order, so a key added or removed takes effect without a restart.
    pub fn load_allowed_signers(&self) -> Result<AllowedSigners, TrustFileError> {
        let path = &self.allowed_signers;
        let text = std::fs::read_to_string(path).map_err(|source| TrustFileError::Read {
            path: path.clone(),
            source,
        })?;
        Ok(AllowedSigners::parse(&text, &path.display().to_string())?)
    }

    /// `SHA256:…` of each of this host's SSH host keys, read for every order like
    /// `allowed_signers`, so a rotated host key counts at once.
    pub fn load_host_keys(&self) -> Result<Vec<String>, String> {
        let files =
            policy::host_key_files(self.host_keys.as_deref(), Path::new(DEFAULT_HOST_KEY_DIR));
        policy::host_key_fingerprints(&files)
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before
        .get(line_start..)
        .map(|s| s.chars().count())
        .unwrap_or(0)
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
host = "prod-1"
env = "prod"
socket = "/run/deploy-agent/agent.sock"
state_dir = "state"
allowed_signers = "/etc/deploy-agent/allowed_signers"
allowed_images = ["registry.example.com/acme/*"]
"#;

    #[test]
    fn a_good_file_loads_with_defaults_and_resolved_paths() {
        let c = AgentConfig::parse(GOOD, Path::new("/etc/deploy-agent/agent.toml")).unwrap();
        assert_eq!(c.host, "prod-1");
        assert_eq!(c.env, "prod");
        assert_eq!(c.state_dir, PathBuf::from("/etc/deploy-agent/state"));
        assert_eq!(
            c.allowed_signers,
            PathBuf::from("/etc/deploy-agent/allowed_signers")
        );
        assert_eq!(c.health_interval, Duration::from_secs(10));
        assert_eq!(c.container_prefix, "");
        assert_eq!(c.socket_group, None);
        assert_eq!(c.docker_config, None);
        let with = format!("{GOOD}docker_config = \"docker/config.json\"\n");
        let c = AgentConfig::parse(&with, Path::new("/etc/deploy-agent/agent.toml")).unwrap();
        assert_eq!(
            c.docker_config,
            Some(PathBuf::from("/etc/deploy-agent/docker/config.json"))
        );
        assert_eq!(
            (
                c.limits.max_connections,
                c.limits.frame_timeout,
                c.limits.idle_timeout
            ),
            (64, Duration::from_secs(10), Duration::from_secs(60))
        );
    }

    #[test]
    fn socket_limits_are_read_and_must_be_above_zero() {
        let text = format!(
            "{GOOD}max_connections = 8\nframe_timeout = \"2s\"\nidle_timeout = \"500ms\"\n"
        );
        let c = AgentConfig::parse(&text, Path::new("agent.toml")).unwrap();
        assert_eq!(
            c.limits,
            SocketLimits {
                max_connections: 8,
                frame_timeout: Duration::from_secs(2),
                idle_timeout: Duration::from_millis(500),
            }
        );
        for (extra, key) in [
            ("max_connections = 0", "max_connections"),
            ("frame_timeout = \"0s\"", "frame_timeout"),
            ("idle_timeout = \"0ms\"", "idle_timeout"),
        ] {
            let err = AgentConfig::parse(&format!("{GOOD}{extra}\n"), Path::new("agent.toml"))
                .unwrap_err();
            assert!(
                matches!(&err, ConfigError::Invalid { message, .. } if message.contains(key)),
                "{extra}: {err}"
            );
        }
        let err = AgentConfig::parse(
            &format!("{GOOD}max_connections = -1\n"),
            Path::new("agent.toml"),
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { line: 8, .. }), "{err}");
    }

    #[test]
    fn allowed_signers_are_read_from_the_configured_file_with_its_name_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let c = AgentConfig::parse(GOOD, &dir.path().join("agent.toml")).unwrap();
        let missing = c.load_allowed_signers().unwrap_err().to_string();
        assert!(
            missing.starts_with("cannot read /etc/deploy-agent/allowed_signers"),
            "{missing}"
        );

        let text = GOOD.replace("/etc/deploy-agent/allowed_signers", "allowed_signers");
        let c = AgentConfig::parse(&text, &dir.path().join("agent.toml")).unwrap();
        let key = proto::sign::ed25519_key(&[1; 32], "ci");
        let line = proto::sign::allowed_signers_line("ci", key.public_key()).unwrap();
        std::fs::write(&c.allowed_signers, format!("# ci\n{line}\n")).unwrap();
        assert_eq!(c.load_allowed_signers().unwrap().len(), 1);
        std::fs::write(
            &c.allowed_signers,
            format!("{line}\nbob frobnicate {line}\n"),
        )
        .unwrap();
        let bad = c.load_allowed_signers().unwrap_err().to_string();
        let origin = format!("{}:2: ", c.allowed_signers.display());
        assert!(bad.starts_with(&origin), "{bad}");
    }

    #[test]
    fn bad_files_are_refused_with_a_location() {
        // (text appended to GOOD or replacing it, expected line, column, fragment of message)
        let cases: &[(&str, usize, usize, &str)] = &[
            ("colour = \"red\"\n", 8, 1, "colour"),
            ("health_interval = \"soon\"\n", 8, 19, "bad duration"),
            ("container_prefix = 3\n", 8, 20, "string"),
        ];
        for (extra, line, column, fragment) in cases {
            let text = format!("{GOOD}{extra}");
            match AgentConfig::parse(&text, Path::new("agent.toml")) {
                Err(ConfigError::Syntax {
                    line: l,
                    column: c,
                    message,
                    ..
                }) => {
                    assert_eq!((l, c), (*line, *column), "{extra}: {message}");
                    assert!(message.contains(fragment), "{extra}: {message}");
                }
                other => panic!("{extra}: expected a syntax error, got {other:?}"),
            }
        }
    }

    #[test]
    fn invalid_values_are_named() {
        let cases: &[(&str, &str, &str)] = &[
            ("host = \"prod-1\"", "host = \"prod 1\"", "host"),
            ("env = \"prod\"", "env = \"\"", "env"),
            (
                "allowed_images = [\"registry.example.com/acme/*\"]",
                "allowed_images = []",
                "allowed_images",
            ),
            (
                "allowed_images = [\"registry.example.com/acme/*\"]",
                "allowed_images = [\"a/b@sha256:00\"]",
                "allowed_images",
            ),
        ];
        for (from, to, fragment) in cases {
            let text = GOOD.replace(from, to);
            let err = AgentConfig::parse(&text, Path::new("agent.toml")).unwrap_err();
            assert!(err.to_string().contains(fragment), "{to}: {err}");
        }
        let err = AgentConfig::parse(
            &format!("{GOOD}container_prefix = \"a/b\"\n"),
            Path::new("a.toml"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("container_prefix"), "{err}");
    }

    #[test]
    fn approvals_are_read_and_must_be_satisfiable() {
        let c = AgentConfig::parse(GOOD, Path::new("agent.toml")).unwrap();
        assert_eq!(c.approvals, None);
        let text = format!(
            "{GOOD}\n[approvals]\nrequired = 2\nprincipals = [\"alice@acme\", \"bob@acme\"]\n"
        );
        let c = AgentConfig::parse(&text, Path::new("agent.toml")).unwrap();
        assert_eq!(
            c.approvals,
            Some(ApprovalRules {
                required: 2,
                principals: vec!["alice@acme".into(), "bob@acme".into()],
            })
        );
        for (body, fragment) in [
            ("required = 0\nprincipals = [\"a\"]", "at least 1"),
            (
                "required = 3\nprincipals = [\"a\", \"b\"]",
                "could ever be approved",
            ),
            ("required = 1\nprincipals = [\"a\"]\nquorum = 1", "quorum"),
            ("required = -1\nprincipals = [\"a\"]", "expected usize"),
        ] {
            let text = format!("{GOOD}\n[approvals]\n{body}\n");
            let err = AgentConfig::parse(&text, Path::new("agent.toml")).unwrap_err();
            assert!(err.to_string().contains(fragment), "{body}: {err}");
        }
    }

    #[test]
    fn line_column_counts_from_one() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_column("ab", 99), (1, 3));
    }
}
