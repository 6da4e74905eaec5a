//! A compose file read into what deploy.toml can say of each service, and a note for
//! everything it cannot (README, "deployctl init"). Pure: YAML text in, [`Compose`] out.
//!
//! Only malformed YAML, or YAML that is no compose file (no `services` mapping), is an error;
//! a key deployctl has no use for, or a form of a key it cannot express, becomes a note that
//! init writes as a comment, so the user sees what was left behind.

use serde_norway::{Mapping, Value};

/// A compose file as init understands it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Compose {
    /// The project's `name:`.
    pub name: Option<String>,
    /// In file order.
    pub services: Vec<Service>,
    /// Top-level keys not carried over.
    pub notes: Vec<String>,
}

/// One compose service, as deploy.toml can say it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Service {
    pub name: String,
    /// `image:`; `None` for a service compose builds and never pulls.
    pub image: Option<Image>,
    pub builds: bool,
    pub ports: Vec<String>,
    pub volumes: Vec<String>,
    /// As compose names it: a path on the machine that runs compose.
    pub env_file: Option<String>,
    /// The names, never the values, of inline `environment:` entries.
    pub environment: Vec<String>,
    pub command: Option<Vec<String>>,
    pub network: Option<String>,
    pub health: Option<HttpCheck>,
    /// What was not carried over, and why.
    pub notes: Vec<String>,
}

/// `image:` split into what deploy.toml names (the repository) and what `push` is given (the
/// tag); `Unresolved` when compose fills it from variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Image {
    Named {
        repository: String,
        tag: Option<String>,
    },
    Unresolved(String),
}

/// A compose healthcheck that is an HTTP GET of the container itself, which is what
/// deploy.toml's `health` probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCheck {
    pub path: String,
    pub port: u16,
    pub interval: Option<String>,
}

/// Malformed YAML, or YAML that is no compose file: the message, and where when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposeError {
    /// 1-based line and column.
    pub at: Option<(usize, usize)>,
    pub message: String,
}

impl ComposeError {
    fn unlocated(message: impl Into<String>) -> ComposeError {
        ComposeError {
            at: None,
            message: message.into(),
        }
    }
}

/// Reads a compose file's text.
pub fn parse(text: &str) -> Result<Compose, ComposeError> {
    let mut doc: Value = serde_norway::from_str(text).map_err(|e| ComposeError {
        at: e.location().map(|l| (l.line(), l.column())),
        message: e.to_string(),
    })?;
    doc.apply_merge()
        .map_err(|e| ComposeError::unlocated(format!("merge keys (`<<`): {e}")))?;
    let Value::Mapping(top) = doc else {
        return Err(ComposeError::unlocated(
            "not a compose file: the top level is not a mapping",
        ));
    };
    let mut compose = Compose::default();
    let mut services = None;
    for (key, value) in &top {
        match key.as_str() {
            Some("services") => services = Some(value),
            Some("name") => compose.name = scalar(value),
            // `version` is obsolete in compose, `x-*` hold anchors for the services.
            Some("version") => {}
            Some(k) if k.starts_with("x-") => {}
            Some("volumes") => compose.notes.push(
                "compose key `volumes:` not carried over: the engine creates a named volume \
                 the first time a container mounts it"
                    .into(),
            ),
            Some("networks") => compose.notes.push(
                "compose key `networks:` not carried over: create each network on the hosts \
                 (`docker network create NAME`)"
                    .into(),
            ),
            Some(k) => compose
                .notes
                .push(format!("compose key `{k}:` not carried over")),
            None => {}
        }
    }
    let Some(Value::Mapping(services)) = services else {
        return Err(ComposeError::unlocated(
            "not a compose file: no `services:` mapping",
        ));
    };
    for (name, spec) in services {
        let name = scalar(name).unwrap_or_default();
        let Value::Mapping(spec) = spec else {
            return Err(ComposeError::unlocated(format!(
                "services.{name}: not a mapping"
            )));
        };
        compose.services.push(service(&name, spec));
    }
    Ok(compose)
}

/// Why a compose key has no place in deploy.toml, when there is more to say than "not carried
/// over".
fn reason(key: &str) -> Option<&'static str> {
    Some(match key {
        "entrypoint" => "deploy.toml has `command` only; the image's entrypoint stays",
        "container_name" => "deployctl names containers <app>-<env>-<service>",
        "network_mode" => "name a user network with `network`",
        "expose" => "the health port is reached on the container's own address",
        "restart" => "the agent restarts a failing container itself",
        _ => return None,
    })
}

fn service(name: &str, spec: &Mapping) -> Service {
    let mut s = Service {
        name: name.to_string(),
        ..Service::default()
    };
    let notes = &mut Vec::new();
    for (key, value) in spec {
        let Some(key) = key.as_str() else { continue };
        match key {
            "image" => s.image = scalar(value).map(|i| image(&i)),
            "build" => s.builds = true,
            "ports" => s.ports = ports(value, notes),
            "volumes" => s.volumes = volumes(value, notes),
            "env_file" => s.env_file = env_file(value, notes),
            "environment" => s.environment = environment(value),
            "command" => s.command = command(value, notes),
            "networks" => s.network = network(value, notes),
            "healthcheck" => s.health = healthcheck(value, notes),
            k if k.starts_with("x-") => {}
            k => notes.push(match reason(k) {
                Some(why) => format!("compose key `{k}:` not carried over: {why}"),
                None => format!("compose key `{k}:` not carried over"),
            }),
        }
    }
    if s.builds && s.image.is_some() {
        notes.push(
            "compose key `build:` not carried over: deployctl deploys the image your CI pushed"
                .into(),
        );
    }
    s.notes = std::mem::take(notes);
    s
}

/// A string, number or boolean as text.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A list of scalars, or one scalar as a list of one.
fn list(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::Sequence(items) => items.iter().map(scalar).collect(),
        other => scalar(other).map(|s| vec![s]),
    }
}

/// `registry:5000/acme/web:v1`, `acme/web@sha256:…`, `nginx`.
pub fn image(text: &str) -> Image {
    if text.contains('$') {
        return Image::Unresolved(text.to_string());
    }
    let named = text.split('@').next().unwrap_or(text);
    let (repository, tag) = match named.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag.to_string())),
        _ => (named, None),
    };
    Image::Named {
        repository: repository.to_string(),
        tag,
    }
}

fn ports(v: &Value, notes: &mut Vec<String>) -> Vec<String> {
    let Value::Sequence(items) = v else {
        notes.push("compose key `ports:` not carried over: not a list".into());
        return Vec::new();
    };
    let mut out = Vec::new();
    for item in items {
        let text = match item {
            Value::Mapping(m) => long_port(m),
            other => scalar(other),
        };
        match text {
            Some(p) if proto::spec::parse_port(&p).is_ok() => out.push(p),
            Some(p) => notes.push(format!(
                "port {p:?} not carried over: deployctl publishes [host_ip:][host_port:]container_port[/tcp|/udp], one port each"
            )),
            None => notes.push("a port not carried over: unreadable".into()),
        }
    }
    out
}

/// `{ target, published, host_ip, protocol }` as the short form.
fn long_port(m: &Mapping) -> Option<String> {
    let get = |k: &str| m.get(k).and_then(scalar);
    let mut text = get("target")?;
    if let Some(published) = get("published") {
        text = format!("{published}:{text}");
        if let Some(ip) = get("host_ip") {
            text = format!("{ip}:{text}");
        }
    }
    if let Some(protocol) = get("protocol") {
        text = format!("{text}/{protocol}");
    }
    Some(text)
}

fn volumes(v: &Value, notes: &mut Vec<String>) -> Vec<String> {
    let Value::Sequence(items) = v else {
        notes.push("compose key `volumes:` not carried over: not a list".into());
        return Vec::new();
    };
    let mut out = Vec::new();
    for item in items {
        let text = match item {
            Value::Mapping(m) => long_volume(m),
            other => scalar(other),
        };
        match text {
            Some(vol) if proto::spec::parse_volume(&vol).is_ok() => out.push(vol),
            Some(vol) => notes.push(format!(
                "volume {vol:?} not carried over: deployctl mounts a named volume or an absolute \
                 path of the host (name:/path or /host/path:/path); write it so in `volumes`"
            )),
            None => notes.push("a volume not carried over: unreadable".into()),
        }
    }
    out
}

/// `{ type, source, target, read_only }` as the short form.
fn long_volume(m: &Mapping) -> Option<String> {
    let get = |k: &str| m.get(k).and_then(scalar);
    let mut text = format!("{}:{}", get("source")?, get("target")?);
    if get("read_only").as_deref() == Some("true") {
        text.push_str(":ro");
    }
    Some(text)
}

fn env_file(v: &Value, notes: &mut Vec<String>) -> Option<String> {
    let files: Vec<String> = match v {
        Value::Sequence(items) => items
            .iter()
            .filter_map(|i| match i {
                Value::Mapping(m) => m.get("path").and_then(scalar),
                other => scalar(other),
            })
            .collect(),
        other => scalar(other).into_iter().collect(),
    };
    if files.len() > 1 {
        notes.push(format!(
            "compose reads {} env files ({}); deployctl reads one: merge them into it on the host",
            files.len(),
            files.join(", ")
        ));
    }
    files.into_iter().next()
}

/// The variable names of `environment:` as a mapping or a `KEY=VALUE` list.
fn environment(v: &Value) -> Vec<String> {
    match v {
        Value::Mapping(m) => m.keys().filter_map(scalar).collect(),
        Value::Sequence(items) => items
            .iter()
            .filter_map(scalar)
            .map(|e| e.split('=').next().unwrap_or_default().to_string())
            .collect(),
        _ => Vec::new(),
    }
}

fn command(v: &Value, notes: &mut Vec<String>) -> Option<Vec<String>> {
    let argv = match v {
        Value::Sequence(_) => list(v),
        Value::String(s) => split_words(s),
        _ => None,
    };
    if argv.is_none() {
        notes.push(
            "compose key `command:` not carried over: write it as a list in `command`".into(),
        );
    }
    argv
}

/// A command line split as compose splits a `command:` string: on whitespace, with '…' and
/// "…" quoting; `None` for what takes a shell ($, backslashes, unbalanced quotes).
fn split_words(s: &str) -> Option<Vec<String>> {
    if s.contains(['$', '\\', '`']) {
        return None;
    }
    let mut words = Vec::new();
    let (mut word, mut quote, mut started) = (String::new(), None, false);
    for c in s.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                started = true;
            }
            (None, c) if c.is_whitespace() => {
                if started {
                    words.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            (None, c) => {
                word.push(c);
                started = true;
            }
        }
    }
    if quote.is_some() {
        return None;
    }
    if started {
        words.push(word);
    }
    (!words.is_empty()).then_some(words)
}

fn network(v: &Value, notes: &mut Vec<String>) -> Option<String> {
    let names: Vec<String> = match v {
        Value::Mapping(m) => m.keys().filter_map(scalar).collect(),
        other => list(other).unwrap_or_default(),
    };
    if names.len() > 1 {
        notes.push(format!(
            "compose joins {}; deployctl joins one network: the first",
            names.join(", ")
        ));
    }
    let first = names.into_iter().next()?;
    if first == "default" {
        notes.push(
            "compose's `default` network is the project's own: name a network that exists on \
             the hosts in `network`, or leave it out"
                .into(),
        );
        return None;
    }
    Some(first)
}

fn healthcheck(v: &Value, notes: &mut Vec<String>) -> Option<HttpCheck> {
    let Value::Mapping(m) = v else { return None };
    if m.get("disable").and_then(Value::as_bool) == Some(true) {
        return None;
    }
    let test = m.get("test").and_then(list).unwrap_or_default();
    let words: Vec<&str> = test.iter().flat_map(|t| t.split_whitespace()).collect();
    let Some((port, path)) = words.iter().find_map(|w| local_url(w)) else {
        let shown = test
            .iter()
            .filter(|t| !matches!(t.as_str(), "CMD" | "CMD-SHELL"))
            .cloned()
            .collect::<Vec<_>>()
            .join(" ");
        if !shown.is_empty() && shown != "NONE" {
            notes.push(format!(
                "compose healthcheck `{shown}` is no HTTP check of the container: without \
                 `health.path` the agent uses the image's own HEALTHCHECK, else waits for the \
                 container to stay up"
            ));
        }
        return None;
    };
    let interval = m.get("interval").and_then(scalar);
    let interval = interval.filter(|i| proto::time::parse_duration(i).is_ok());
    Some(HttpCheck {
        path,
        port,
        interval,
    })
}

/// `http://localhost:8080/healthz` (or 127.0.0.1, 0.0.0.0, [::1]; the port defaults to 80):
/// the container's own port and path.
fn local_url(word: &str) -> Option<(u16, String)> {
    let word = word.trim_matches(|c| c == '\'' || c == '"');
    let rest = word.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (h, p.parse().ok()?),
        _ => (authority, 80),
    };
    let local = ["localhost", "127.0.0.1", "0.0.0.0", "[::1]"].contains(&host);
    (local && port != 0).then(|| (port, path.to_string()))
}
