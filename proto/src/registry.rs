//! Registries as Docker's own tools name them: which registry a repository lives in, and which
//! `~/.docker/config.json` `auths` entry holds its credentials. Pure (callers read the file);
//! shared by the controller, which resolves refs, and the engine, which pulls, so the two sides
//! always pick the same entry.

use base64::Engine as _;

/// Docker Hub, under the one name every alias of it is normalised to.
pub const DOCKER_HUB: &str = "docker.io";

/// The registry host of a repository: its first segment when that is a host (`a.b`, `h:5000`,
/// `localhost`), else Docker Hub.
pub fn registry_host(repository: &str) -> &str {
    match repository.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first
        }
        _ => DOCKER_HUB,
    }
}

/// One registry's credentials from a Docker client config.
#[derive(Clone, PartialEq, Eq)]
pub struct DockerCredentials {
    pub username: String,
    pub password: String,
    /// The `auths` key they were found under, as written.
    pub server: String,
}

impl std::fmt::Debug for DockerCredentials {
    // Never print a password, not even in a debug log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerCredentials")
            .field("username", &self.username)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// A registry as an `auths` key names it: without scheme or path, Docker Hub's aliases as one.
fn normalise(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    match key.split('/').next().unwrap_or(key) {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => DOCKER_HUB,
        other => other,
    }
}

/// The credentials `config_json` holds for `registry` (a host, an `auths` key, or a Docker Hub
/// alias): `auth` (base64 `user:password`) or `username` + `password`.
pub fn docker_credentials(config_json: &str, registry: &str) -> Option<DockerCredentials> {
    let config: serde_json::Value = serde_json::from_str(config_json).ok()?;
    let auths = config.get("auths")?.as_object()?;
    let wanted = normalise(registry);
    let (key, entry) = auths.iter().find(|(k, _)| normalise(k) == wanted)?;
    let auth = entry
        .get("auth")
        .and_then(|a| a.as_str())
        .filter(|a| !a.trim().is_empty());
    let (username, password) = match auth {
        Some(auth) => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .ok()?;
            let text = String::from_utf8(decoded).ok()?;
            let (u, p) = text.split_once(':')?;
            (u.to_string(), p.to_string())
        }
        None => (
            entry.get("username")?.as_str()?.to_string(),
            entry.get("password")?.as_str()?.to_string(),
        ),
    };
    Some(DockerCredentials {
        username,
        password,
        server: key.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_name_their_registry() {
        let table = [
            ("127.0.0.1:5000/acme/web", "127.0.0.1:5000"),
            ("registry.example.com/acme/web", "registry.example.com"),
            ("localhost/web", "localhost"),
            ("acme/web", "docker.io"),
            ("web", "docker.io"),
        ];
        for (repo, want) in table {
            assert_eq!(registry_host(repo), want, "{repo}");
        }
    }

    #[test]
    fn credentials_are_found_under_any_spelling_of_the_registry() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let config = format!(
            r#"{{"auths": {{
                "https://registry.example.com/v1/": {{"auth": "{}"}},
                "127.0.0.1:5000": {{"username": "u", "password": "p"}},
                "registry-1.docker.io": {{"auth": "{}"}},
                "ghcr.io": {{"auth": "", "username": "g", "password": "h"}},
                "broken": {{"auth": "!!!"}},
                "no-colon": {{"auth": "{}"}}}}}}"#,
            b64("bob:s3:cret"),
            b64("hub:pw"),
            b64("nocolon")
        );
        let found = |registry: &str| {
            docker_credentials(&config, registry).map(|c| (c.username, c.password, c.server))
        };
        let row = |u: &str, p: &str, s: &str| Some((u.into(), p.into(), s.into()));
        let table = [
            (
                "registry.example.com",
                row("bob", "s3:cret", "https://registry.example.com/v1/"),
            ),
            ("127.0.0.1:5000", row("u", "p", "127.0.0.1:5000")),
            // Docker Hub's aliases are one registry, whichever spelling each side uses.
            ("docker.io", row("hub", "pw", "registry-1.docker.io")),
            (
                "https://index.docker.io/v1/",
                row("hub", "pw", "registry-1.docker.io"),
            ),
            (
                "registry-1.docker.io",
                row("hub", "pw", "registry-1.docker.io"),
            ),
            ("ghcr.io", row("g", "h", "ghcr.io")),
            ("broken", None),
            ("no-colon", None),
            ("other.example.com", None),
        ];
        for (registry, want) in table {
            assert_eq!(found(registry), want, "{registry}");
        }
        assert_eq!(docker_credentials("not json", "x"), None);
        assert_eq!(docker_credentials("{}", "x"), None);
    }

    #[test]
    fn a_password_is_never_in_debug_output() {
        let c = DockerCredentials {
            username: "u".into(),
            password: "hunter2".into(),
            server: "s".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
