//! What a signed order may ask of a host (README, Guarantees 9): the
//! host's `[policy]` in `agent.toml` bounds the host paths an order mounts, the networks it
//! joins, the files it reads, the ports it publishes, how long it stays valid, whether it may
//! run one-off commands (`exec`) and, optionally, which signer may deploy which app. A valid signature alone must not make a key root on
//! every host of an env.
//!
//! [`check`] is a pure decision over the order, the signer and what the host says about the
//! files the order names ([`HostFiles`], answered by the agent from the filesystem), so every
//! rule is tested as a table without a host.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::RangeInclusive;
use std::time::Duration;

use crate::order::{Action, Order};
use crate::spec::{VolumeSource, parse_port, parse_volume};

/// Where `env_file` and `compose_file` may live when `[policy] files` is not given.
pub const DEFAULT_FILES_DIR: &str = "/etc/deploy-agent/apps";
/// The longest validity window (`not_after - issued_at`) accepted by default.
pub const DEFAULT_MAX_VALIDITY: Duration = Duration::from_secs(15 * 60);
/// Host ports an order may publish by default: none of the privileged ones.
pub const DEFAULT_PORTS: RangeInclusive<u16> = 1024..=65535;

/// A host's `[policy]`. The default is the safe one: named volumes only, any user network but
/// never the host's, files only under [`DEFAULT_FILES_DIR`], unprivileged ports, 15 minutes.
#[derive(Debug, Clone, PartialEq)]
pub struct HostPolicy {
    /// Host paths an order may mount, each admitting itself and everything under it.
    pub volumes: Vec<String>,
    /// `None`: any user network (never `host` or another container's). `Some`: only these,
    /// which is also how `host` is allowed.
    pub networks: Option<Vec<String>>,
    /// Directories (or files) where `env_file` and `compose_file` may live.
    pub files: Vec<String>,
    /// Host ports an order may publish.
    pub ports: Vec<RangeInclusive<u16>>,
    pub max_validity: Duration,
    /// Empty: any signer may deploy any app. Otherwise principal → apps (`*` for all); a
    /// signer whose principals are not listed may deploy nothing.
    pub apps: BTreeMap<String, Vec<String>>,
    /// Whether exec orders (one-off commands in a service's image) may run here. On by
    /// default: an exec can do no more than a deploy of the same image with the same spec.
    pub exec: bool,
    /// Caddy admin APIs (`host:port`) an order's `proxy` may drive. Caddy's own default
    /// address on loopback by default: an order could otherwise point the agent's requests at
    /// any address.
    pub proxies: Vec<String>,
}

/// The admin API addresses `[policy] proxies` admits by default: Caddy's own default.
pub const DEFAULT_PROXIES: [&str; 3] = ["localhost:2019", "127.0.0.1:2019", "[::1]:2019"];

impl Default for HostPolicy {
    fn default() -> Self {
        HostPolicy {
            volumes: Vec::new(),
            networks: None,
            files: vec![DEFAULT_FILES_DIR.to_string()],
            ports: vec![DEFAULT_PORTS],
            max_validity: DEFAULT_MAX_VALIDITY,
            apps: BTreeMap::new(),
            exec: true,
            proxies: DEFAULT_PROXIES.map(String::from).to_vec(),
        }
    }
}

/// Why an order is denied: the rule (a key of `[policy]`), the order's field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub rule: &'static str,
    pub field: String,
    pub why: String,
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[policy] {} denies {}: {}",
            self.rule, self.field, self.why
        )
    }
}

/// What the host says about a path an order names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileLook {
    /// The path with every symlink that exists resolved: a link inside an allowed directory
    /// must not reach outside it.
    pub resolved: String,
    pub kind: FileKind,
    /// Owned by root or by the agent's own user.
    pub owner_trusted: bool,
    /// The permission bits (`mode & 0o7777`).
    pub mode: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Missing,
    File,
    Other,
}

/// Answers [`FileLook`]s; the agent's implementation reads the filesystem.
pub trait HostFiles {
    fn look(&self, path: &str) -> FileLook;
}

/// A host that holds no file at all: for callers whose orders name none.
pub struct EmptyHost;

impl HostFiles for EmptyHost {
    fn look(&self, path: &str) -> FileLook {
        FileLook {
            resolved: path.to_string(),
            kind: FileKind::Missing,
            owner_trusted: false,
            mode: 0,
        }
    }
}

/// Reads `"1024-65535"`, `"8080"` or a comma-separated list of both.
pub fn parse_port_ranges(s: &str) -> Result<Vec<RangeInclusive<u16>>, String> {
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .map_err(|_| format!("{:?} is not a port number (1-65535)", p.trim()))
    };
    s.split(',')
        .map(|part| {
            let (lo, hi) = match part.split_once('-') {
                Some((lo, hi)) => (port(lo)?, port(hi)?),
                None => (port(part)?, port(part)?),
            };
            if lo == 0 || lo > hi {
                return Err(format!(
                    "{:?} is not a port range like 1024-65535",
                    part.trim()
                ));
            }
            Ok(lo..=hi)
        })
        .collect()
}

/// Checks `order`, signed by `principals` (the allowed_signers field that admitted the key),
/// against `policy`. The first rule broken wins.
pub fn check(
    order: &Order,
    principals: &str,
    policy: &HostPolicy,
    files: &dyn HostFiles,
) -> Result<(), Denial> {
    check_app(order, principals, policy)?;
    if order.action == Action::Exec && !policy.exec {
        return Err(Denial {
            rule: "exec",
            field: "action = \"exec\"".into(),
            why: "this host runs no one-off commands (exec = false)".into(),
        });
    }
    let validity = order.not_after.since(order.issued_at);
    if validity > policy.max_validity {
        return Err(Denial {
            rule: "max_validity",
            field: "not_after".into(),
            why: format!(
                "the order is valid for {}, longer than the {} this host accepts",
                humantime::format_duration(validity),
                humantime::format_duration(policy.max_validity)
            ),
        });
    }
    for (name, spec) in &order.services {
        let field = |what: &str| format!("services.{name}.{what}");
        for (i, v) in spec.volumes.iter().enumerate() {
            check_volume(v, policy, files).map_err(|why| Denial {
                rule: "volumes",
                field: field(&format!("volumes[{i}] = {v:?}")),
                why,
            })?;
        }
        if let Some(net) = &spec.network {
            check_network(net, policy).map_err(|why| Denial {
                rule: "networks",
                field: field(&format!("network = {net:?}")),
                why,
            })?;
        }
        for (i, p) in spec.ports.iter().enumerate() {
            check_port(p, policy).map_err(|why| Denial {
                rule: "ports",
                field: field(&format!("ports[{i}] = {p:?}")),
                why,
            })?;
        }
        if let Some(proxy) = &spec.proxy {
            check_proxy(proxy, policy).map_err(|(what, why)| Denial {
                rule: what.rule(),
                field: field(&what.field()),
                why,
            })?;
        }
        for (key, path) in [
            ("env_file", &spec.env_file),
            ("compose_file", &spec.compose_file),
        ] {
            if let Some(path) = path {
                check_file(path, policy, files).map_err(|why| Denial {
                    rule: "files",
                    field: field(&format!("{key} = {path:?}")),
                    why,
                })?;
            }
        }
    }
    Ok(())
}

fn check_app(order: &Order, principals: &str, policy: &HostPolicy) -> Result<(), Denial> {
    if policy.apps.is_empty() {
        return Ok(());
    }
    let admitted = principals.split(',').map(str::trim).any(|p| {
        policy
            .apps
            .get(p)
            .is_some_and(|apps| apps.iter().any(|a| a == "*" || *a == order.app))
    });
    if admitted {
        return Ok(());
    }
    Err(Denial {
        rule: "apps",
        field: format!("app = {:?}", order.app),
        why: format!(
            "signer {principals:?} may not deploy app {:?} on this host",
            order.app
        ),
    })
}

fn check_volume(v: &str, policy: &HostPolicy, files: &dyn HostFiles) -> Result<(), String> {
    let volume = parse_volume(v)?;
    let VolumeSource::HostPath(path) = volume.source else {
        return Ok(());
    };
    let listed = || {
        if policy.volumes.is_empty() {
            "[policy] volumes lists no host path, so only named volumes are allowed".to_string()
        } else {
            format!("[policy] volumes = {:?}", policy.volumes)
        }
    };
    if !under_any(path, &policy.volumes)? {
        return Err(format!(
            "host path {path:?} is not at or under a listed path ({})",
            listed()
        ));
    }
    let resolved = files.look(path).resolved;
    if !under_any(&resolved, &resolved_roots(&policy.volumes, files))? {
        return Err(format!(
            "host path {path:?} resolves to {resolved:?} through a symlink, which is not at or \
             under a listed path ({})",
            listed()
        ));
    }
    Ok(())
}

fn check_network(net: &str, policy: &HostPolicy) -> Result<(), String> {
    let listed = policy
        .networks
        .as_ref()
        .is_some_and(|nets| nets.iter().any(|n| n == net));
    // `host` shares the host's network stack and `container:X` another container's: both
    // reach what no user network does, so only an explicit listing admits them.
    let shares_a_namespace = net == "host" || net.starts_with("container:");
    let engine_mode = !crate::spec::is_user_network(net);
    match &policy.networks {
        _ if listed => Ok(()),
        _ if shares_a_namespace => Err(format!(
            "network {net:?} shares another network namespace; list it in [policy] networks to allow it"
        )),
        None => Ok(()),
        Some(_) if engine_mode => Ok(()),
        Some(nets) => Err(format!(
            "network {net:?} is not in [policy] networks = {nets:?}"
        )),
    }
}

/// Which part of a `proxy` a denial is about.
enum ProxyPart<'a> {
    Caddy(&'a str),
    Listen(usize, &'a str),
}

impl ProxyPart<'_> {
    fn rule(&self) -> &'static str {
        match self {
            ProxyPart::Caddy(_) => "proxies",
            ProxyPart::Listen(..) => "ports",
        }
    }

    fn field(&self) -> String {
        match self {
            ProxyPart::Caddy(c) => format!("proxy.caddy = {c:?}"),
            ProxyPart::Listen(i, l) => format!("proxy.listen[{i}] = {l:?}"),
        }
    }
}

/// The admin API must be one the host lists; the ports Caddy is asked to listen on count as
/// ports the order publishes.
fn check_proxy<'a>(
    proxy: &'a crate::order::ProxySpec,
    policy: &HostPolicy,
) -> Result<(), (ProxyPart<'a>, String)> {
    if !policy.proxies.contains(&proxy.caddy) {
        return Err((
            ProxyPart::Caddy(&proxy.caddy),
            format!(
                "this host lets orders drive only the Caddy admin APIs {:?}",
                policy.proxies
            ),
        ));
    }
    for (i, listen) in proxy.listen.iter().enumerate() {
        let part = || ProxyPart::Listen(i, listen);
        let port = crate::spec::listen_port(listen)
            .ok_or_else(|| (part(), format!("{listen:?} is not [host]:port")))?;
        check_host_port(port, policy).map_err(|why| (part(), why))?;
    }
    Ok(())
}

fn check_port(p: &str, policy: &HostPolicy) -> Result<(), String> {
    let mapping = parse_port(p)?;
    let Some(port) = mapping.host_port else {
        return Ok(());
    };
    check_host_port(port, policy)
}

fn check_host_port(port: u16, policy: &HostPolicy) -> Result<(), String> {
    if policy.ports.iter().any(|r| r.contains(&port)) {
        return Ok(());
    }
    let ranges: Vec<String> = policy
        .ports
        .iter()
        .map(|r| format!("{}-{}", r.start(), r.end()))
        .collect();
    Err(format!(
        "host port {port} is outside [policy] ports = {:?}",
        ranges.join(",")
    ))
}

fn check_file(path: &str, policy: &HostPolicy, files: &dyn HostFiles) -> Result<(), String> {
    if !under_any(path, &policy.files)? {
        return Err(format!(
            "{path:?} is not under a directory of [policy] files = {:?}",
            policy.files
        ));
    }
    let look = files.look(path);
    if !under_any(&look.resolved, &resolved_roots(&policy.files, files))? {
        return Err(format!(
            "{path:?} resolves to {:?} through a symlink, outside [policy] files = {:?}",
            look.resolved, policy.files
        ));
    }
    match look.kind {
        FileKind::File => {}
        FileKind::Missing => return Err(format!("{path:?} does not exist on this host")),
        FileKind::Other => return Err(format!("{path:?} is not a regular file")),
    }
    if !look.owner_trusted {
        return Err(format!(
            "{path:?} is owned by neither root nor the agent's user, so someone else could change \
             what the order runs"
        ));
    }
    if look.mode & 0o022 != 0 {
        return Err(format!(
            "{path:?} is writable by its group or by everyone (mode {:04o}); chmod go-w it",
            look.mode
        ));
    }
    Ok(())
}

/// The listed paths with their symlinks resolved too: listing `/var/run/docker.sock` admits the
/// socket though `/var/run` is a link to `/run`.
fn resolved_roots(roots: &[String], files: &dyn HostFiles) -> Vec<String> {
    roots.iter().map(|r| files.look(r).resolved).collect()
}

/// Whether `path` is at or under one of `roots`, compared component by component. A path with
/// `.` or `..` components is refused rather than normalised: the host, not this function,
/// decides where such a path leads.
fn under_any(path: &str, roots: &[String]) -> Result<bool, String> {
    let path = components(path)?;
    Ok(roots.iter().any(|root| {
        components(root).is_ok_and(|root| path.len() >= root.len() && path[..root.len()] == root)
    }))
}

fn components(path: &str) -> Result<Vec<&str>, String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} is not an absolute path"));
    }
    let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    if parts.iter().any(|c| *c == "." || *c == "..") {
        return Err(format!("{path:?} holds a '.' or '..' component"));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests;
