//! The deploy.toml `deployctl init` writes, as commented text: a skeleton, or the services of a
//! compose file (README, "deployctl init"). Pure; every file it can write loads with
//! [`crate::config::DeployConfig::parse`] (its tests check).

use std::collections::BTreeMap;

use super::compose::{self, Compose, ComposeError, HttpCheck, Image, Service};
use crate::config::{DEFAULT_AGENT_SOCKET, check_repository, parse_ssh_target};

/// What the command line asked for.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Options {
    pub app: Option<String>,
    pub image: Option<String>,
    pub env: String,
    /// Empty: a placeholder to edit.
    pub hosts: Vec<String>,
    /// The agents' socket on the hosts, when not the default.
    pub socket: Option<String>,
}

/// A deploy.toml to write, and what the user should hear about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    pub text: String,
    /// The services written, in file order.
    pub services: Vec<String>,
    /// Compose services left out: they have no image to deploy.
    pub skipped: Vec<String>,
    /// What the user must act on, said besides the comments.
    pub warnings: Vec<String>,
}

/// Where the agent's default `[policy] files` lets env files live.
const HOST_FILES: &str = "/etc/deploy-agent/apps";

/// Refuses options that would make a deploy.toml that does not load, saying which.
pub fn check_options(opts: &Options) -> Result<(), String> {
    let name = |what: &str, n: &str| match proto::order::is_valid_name(n) {
        true => Ok(()),
        false => Err(format!(
            "--{what} {n:?}: not usable in container names ([a-zA-Z0-9][a-zA-Z0-9_.-]*, at most 64)"
        )),
    };
    name("env", &opts.env)?;
    if let Some(app) = &opts.app {
        name("app", app)?;
    }
    if let Some(image) = &opts.image {
        check_repository(image).map_err(|e| format!("--image: {e}"))?;
    }
    if let Some(socket) = &opts.socket
        && (socket.is_empty() || socket.chars().any(char::is_control))
    {
        return Err(format!("--socket {socket:?}: not a path"));
    }
    for (i, host) in opts.hosts.iter().enumerate() {
        if opts.hosts[..i].contains(host) {
            return Err(format!("--host {host} given twice"));
        }
        if host != "local" {
            parse_ssh_target(host, DEFAULT_AGENT_SOCKET).map_err(|e| format!("--host: {e}"))?;
        }
    }
    Ok(())
}

/// A skeleton: one service, `web`, with every common key shown (commented out where
/// optional).
pub fn skeleton(opts: &Options) -> Written {
    let app = opts.app.clone().unwrap_or_else(|| "myapp".into());
    let mut text = header(&app, None, &opts.env);
    let image = opts.image.clone();
    text += &app_lines(
        &app,
        image
            .as_deref()
            .unwrap_or(&format!("registry.example.com/{app}/web")),
    );
    if image.is_none() {
        text += "# EDIT: `image` is the repository your CI pushes the app's images to.\n";
    }
    text += &format!(
        r#"
[services.web]
# ports = ["8080:8080"]                     # [host_ip:][host_port:]container_port[/udp]
# env_file = "{HOST_FILES}/{app}/web.env"   # a path on the HOST, read there: secrets never travel in orders
# volumes = ["{app}-data:/data"]            # a named volume, or an absolute path of the host
# network = "{app}"                         # a user network that exists on the hosts
# command = ["/app", "serve"]               # default: the image's own
# strategy = "start-first"                  # no downtime, when no fixed host port is bound (default "stop-first")
# health = {{ path = "/healthz", port = 8080, interval = "250ms", healthy_for = "2s", deadline = "60s" }}
#   GET path on the container's port must answer 2xx; without `path`: the image's HEALTHCHECK,
#   else the container staying up for healthy_for. A failed check by deadline rolls back.
"#
    );
    text += &migrate_lines("web");
    text += &env_lines(opts);
    Written {
        text,
        services: vec!["web".into()],
        skipped: Vec::new(),
        warnings: Vec::new(),
    }
}

/// The deploy.toml for a compose file's text (`source` names it in comments): one service per
/// compose service with an image.
pub fn from_compose(yaml: &str, source: &str, opts: &Options) -> Result<Written, ComposeError> {
    let compose = compose::parse(yaml)?;
    let default_repo = opts
        .image
        .clone()
        .or_else(|| most_common_repository(&compose));
    let app = opts
        .app
        .clone()
        .or_else(|| {
            compose
                .name
                .clone()
                .filter(|n| proto::order::is_valid_name(n))
        })
        .or_else(|| default_repo.as_deref().and_then(last_segment))
        .unwrap_or_else(|| "myapp".into());
    let mut text = header(&app, Some(source), &opts.env);
    let repo = default_repo
        .clone()
        .unwrap_or_else(|| format!("registry.example.com/{app}/web"));
    text += &app_lines(&app, &repo);
    if default_repo.is_none() {
        text +=
            "# EDIT: no compose service names an image this file can use: name its repository.\n";
    }
    let one_tag = one_tag(&compose);
    if let Some(tag) = one_tag.map(printable) {
        text += &format!(
            "# {source} pins tag {tag}: `deployctl push {tag} --env {}` deploys it.\n",
            opts.env
        );
    }
    for note in &compose.notes {
        text += &format!("# {}\n", printable(note));
    }
    let mut written = Written {
        text: String::new(),
        services: Vec::new(),
        skipped: Vec::new(),
        warnings: Vec::new(),
    };
    let own = ServiceText {
        app: &app,
        repo: &repo,
        show_tag: one_tag.is_none(),
    };
    for s in &compose.services {
        match left_out(s) {
            Some((comment, warning)) => {
                text += &comment;
                written.warnings.push(warning);
                written.skipped.push(s.name.clone());
            }
            None => {
                text += &own.render(s, &mut written.warnings);
                written.services.push(s.name.clone());
            }
        }
    }
    if let Some(first) = written.services.first() {
        text += &migrate_lines(first);
    }
    text += &env_lines(opts);
    written.text = text;
    Ok(written)
}

/// The tag compose pins every image at, if one: `push TAG` resolves TAG in every repository,
/// so it deploys what compose runs only then.
fn one_tag(compose: &Compose) -> Option<&str> {
    let tags: Vec<Option<&str>> = compose
        .services
        .iter()
        .filter(|s| s.image.is_some())
        .map(tag_of)
        .collect();
    tags.first()
        .copied()
        .flatten()
        .filter(|t| tags.iter().all(|u| *u == Some(*t)))
}

/// Why a compose service is not written (its comment and warning): a name no container can
/// have, or no image to deploy.
fn left_out(s: &Service) -> Option<(String, String)> {
    if !proto::order::is_valid_name(&s.name) {
        let why = "its name is not usable in container names";
        return Some((
            format!(
                "\n# compose service {:?} not carried over: {why}.\n",
                printable(&s.name)
            ),
            format!("compose service {:?} skipped: {why}", s.name),
        ));
    }
    if s.image.is_some() {
        return None;
    }
    let why = if s.builds {
        "compose builds it"
    } else {
        "no `image:`"
    };
    Some((
        format!(
            "\n# compose service `{name}` not carried over: it has no image to deploy ({why}); \
             push one to a registry and add [services.{name}] with its `image`.\n",
            name = printable(&s.name)
        ),
        format!(
            "compose service {} skipped: it has no image ({why})",
            s.name
        ),
    ))
}

/// How one compose service is written.
struct ServiceText<'a> {
    app: &'a str,
    /// The app's default repository.
    repo: &'a str,
    /// The services' tags differ: each says its own.
    show_tag: bool,
}

impl ServiceText<'_> {
    fn render(&self, s: &Service, warnings: &mut Vec<String>) -> String {
        let name = printable(&s.name);
        let mut out = format!("\n[services.{}]\n", key(&s.name));
        match &s.image {
            Some(Image::Named { repository, tag }) if check_repository(repository).is_ok() => {
                if repository != self.repo {
                    out += &format!("image = {}\n", quote(repository));
                }
                if let Some(tag) = tag.as_deref().filter(|_| self.show_tag) {
                    out += &format!(
                        "# compose pins tag {tag}: `deployctl push REF --set {name}={tag}` keeps it\n",
                        tag = printable(tag)
                    );
                }
            }
            Some(Image::Named { repository: i, .. } | Image::Unresolved(i)) => {
                out += &format!(
                    "# EDIT: compose names the image {}, which is no repository this file can \
                     name: set `image` to its repository (no tag).\n",
                    printable(i)
                );
                warnings.push(format!("{name}: set its `image` by hand (compose: {i})"));
            }
            None => {}
        }
        if !s.ports.is_empty() {
            out += &format!("ports = {}\n", array(&s.ports));
        }
        if !s.volumes.is_empty() {
            out += &format!("volumes = {}\n", array(&s.volumes));
        }
        out += &self.env_file(s, warnings);
        if let Some(command) = &s.command {
            out += &format!("command = {}\n", array(command));
        }
        if let Some(network) = &s.network {
            out += "# the network must exist on the hosts (`docker network create NAME`)\n";
            out += &format!("network = {}\n", quote(network));
        }
        if let Some(h) = &s.health {
            out += &health_line(h);
        }
        for note in &s.notes {
            out += &format!("# {}\n", printable(note));
        }
        out
    }

    /// `env_file`, a path on the host; compose's relative one becomes a path where the agent's
    /// default policy lets it live. Inline `environment:` values are never copied.
    fn env_file(&self, s: &Service, warnings: &mut Vec<String>) -> String {
        let mut out = String::new();
        let path = s.env_file.as_deref().map(|f| match f.starts_with('/') {
            true => f.to_string(),
            false => {
                let base = f.rsplit('/').next().unwrap_or(f);
                format!("{HOST_FILES}/{}/{base}", self.app)
            }
        });
        if !s.environment.is_empty() {
            out += &format!(
                "# compose sets environment inline ({}): deploy.toml never carries values \
                 (secrets never travel in orders); move them into the env_file on the hosts.\n",
                printable(&s.environment.join(", "))
            );
            warnings.push(format!(
                "{}: inline environment not copied ({}); move it into an env_file on the hosts",
                s.name,
                s.environment.join(", ")
            ));
        }
        match (path, &s.env_file) {
            (Some(path), Some(compose_path)) => {
                out +=
                    "# a path on the HOST, read there by the agent: it must exist on every host\n";
                if compose_path != &path {
                    out += &format!(
                        "# (compose reads {} on its own machine: copy it here)\n",
                        printable(compose_path)
                    );
                }
                out += &format!("env_file = {}\n", quote(&path));
            }
            _ if !s.environment.is_empty() => {
                out += &format!(
                    "# env_file = \"{HOST_FILES}/{}/{}.env\"   # a path on the HOST\n",
                    self.app, s.name
                );
            }
            _ => {}
        }
        out
    }
}

fn health_line(h: &HttpCheck) -> String {
    let interval = h
        .interval
        .as_deref()
        .map(|i| format!(", interval = {}", quote(i)))
        .unwrap_or_default();
    format!(
        "health = {{ path = {}, port = {}{interval} }}\n",
        quote(&h.path),
        h.port
    )
}

fn header(app: &str, source: Option<&str>, env: &str) -> String {
    let from = source
        .map(|s| format!(" --from {}", printable(s)))
        .unwrap_or_default();
    format!(
        "# deploy.toml: how deployctl deploys {app} (every key: README \"deploy.toml\").\n\
         # Written by `deployctl init{from}`. Check every line (EDIT marks what must change), then:\n\
         #   deployctl push <git-sha|tag|sha256:digest> --env {env}\n\n"
    )
}

fn app_lines(app: &str, image: &str) -> String {
    format!(
        "app = {}   # containers are named <app>-<env>-<service>\n\
         image = {}   # the default repository of every service, no tag: push names the release\n",
        quote(app),
        quote(image)
    )
}

fn migrate_lines(service: &str) -> String {
    format!(
        "\n# [migrate]                     # optional: once per release, on the first host, in the new image, before any switch\n\
         # command = [\"/app\", \"migrate\"]\n\
         # service = {}                 # borrows its env_file, volumes, network\n\
         # timeout = \"5m\"\n",
        quote(service)
    )
}

fn env_lines(opts: &Options) -> String {
    let mut out = format!("\n[env.{}]\n", key(&opts.env));
    if opts.hosts.is_empty() {
        let placeholder = format!("deploy@{}-1.example.com", opts.env);
        out += "# EDIT: the hosts, user@addr[:port], each running deploy-agent (README \"Running the agent on a host\")\n";
        out += &format!(
            "hosts = [{}]\n",
            host_entry(&placeholder, opts.socket.as_deref())
        );
    } else {
        out += "# in rollout order: the first host runs the migration, batches follow\n";
        let hosts: Vec<String> = opts
            .hosts
            .iter()
            .map(|h| host_entry(h, opts.socket.as_deref()))
            .collect();
        out += &format!("hosts = [{}]\n", hosts.join(", "));
    }
    out += "# max_parallel = 1                       # hosts per batch after the first\n\
            # canary = { hosts = 1, watch = \"5m\" }   # hold after the first host; roll back if it regresses\n\
            # requires = \"dev\"                       # only releases that succeeded in that env first\n\
            # signing_key = \"~/.config/deployctl/key\"\n\
            # known_hosts = \"~/.ssh/known_hosts\"     # the hosts' SSH keys (README \"SSH\")\n";
    out
}

fn host_entry(host: &str, socket: Option<&str>) -> String {
    match (host, socket) {
        (h, None) => quote(h),
        ("local", Some(s)) => format!("{{ socket = {} }}", quote(s)),
        (h, Some(s)) => format!("{{ ssh = {}, socket = {} }}", quote(h), quote(s)),
    }
}

/// The repository most services name (the first named on a tie).
fn most_common_repository(compose: &Compose) -> Option<String> {
    let named: Vec<&str> = compose
        .services
        .iter()
        .filter_map(|s| match &s.image {
            Some(Image::Named { repository, .. }) if check_repository(repository).is_ok() => {
                Some(repository.as_str())
            }
            _ => None,
        })
        .collect();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &named {
        *counts.entry(r).or_default() += 1;
    }
    let best = counts.values().copied().max()?;
    named
        .into_iter()
        .find(|r| counts[r] == best)
        .map(str::to_string)
}

fn tag_of(s: &Service) -> Option<&str> {
    match &s.image {
        Some(Image::Named { tag, .. }) => tag.as_deref(),
        _ => None,
    }
}

fn last_segment(repo: &str) -> Option<String> {
    let last = repo.rsplit('/').next()?;
    proto::order::is_valid_name(last).then(|| last.to_string())
}

/// A TOML string (JSON's escapes are TOML's).
fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn array(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|i| quote(i)).collect();
    format!("[{}]", items.join(", "))
}

/// A TOML key: bare when it can be, quoted otherwise.
fn key(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    if bare { name.to_string() } else { quote(name) }
}

/// Text from the compose file, fit for a comment: a newline in it would end the comment and
/// let the rest be read as TOML.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}
