//! A Docker client config (`config.json`) and which of its sources answers for a registry:
//! pure, so every rule of the lookup has a table test.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;

use crate::{Credential, HelperKey};

/// Docker Hub, under the one name every alias of it is normalised to.
pub const DOCKER_HUB: &str = "docker.io";
/// Docker Hub as the Docker CLI names it to helpers and in `auths` (`docker login` writes it).
pub const DOCKER_HUB_SERVER: &str = "https://index.docker.io/v1/";

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

/// A registry as a config key names it: without scheme or path, Docker Hub's aliases as one.
pub fn normalise(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    match key.split('/').next().unwrap_or(key) {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => DOCKER_HUB,
        other => other,
    }
}

/// What a helper is asked for: Docker Hub as [`DOCKER_HUB_SERVER`], any other registry as its
/// `host[:port]` — what `docker login` stored, so a store answers us as it answers Docker.
pub fn server_address(registry: &str) -> String {
    match normalise(registry) {
        DOCKER_HUB => DOCKER_HUB_SERVER.to_string(),
        other => other.to_string(),
    }
}

/// The parts of `config.json` that hold credentials; everything else in it is Docker's.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConfigFile {
    #[serde(default)]
    auths: Option<BTreeMap<String, AuthEntry>>,
    #[serde(default)]
    creds_store: Option<String>,
    #[serde(default)]
    cred_helpers: Option<BTreeMap<String, String>>,
}

/// One `auths` entry. `docker login` with a store writes empty ones (`{}`).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// The source that answers for a registry.
#[derive(Debug)]
pub(crate) enum Choice<'a> {
    Anonymous,
    Entry { key: &'a str, entry: &'a AuthEntry },
    Helper { name: &'a str, named_by: HelperKey },
}

impl ConfigFile {
    pub(crate) fn parse(text: &str) -> Result<ConfigFile, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    /// Docker's order: the registry's `credHelpers` program, else the `credsStore` program
    /// (which then holds every registry's credentials: `auths` is not read), else its `auths`
    /// entry. A key matches as written, else under any spelling [`normalise`] equates.
    pub(crate) fn choose(&self, registry: &str) -> Choice<'_> {
        let helpers = self.cred_helpers.as_ref();
        if let Some(name) = helpers
            .and_then(|h| find(h, registry))
            .filter(|(_, name)| !name.is_empty())
            .map(|(_, name)| name)
        {
            return Choice::Helper {
                name,
                named_by: HelperKey::CredHelpers,
            };
        }
        if let Some(name) = self.creds_store.as_deref().filter(|n| !n.is_empty()) {
            return Choice::Helper {
                name,
                named_by: HelperKey::CredsStore,
            };
        }
        match self.auths.as_ref().and_then(|a| find(a, registry)) {
            Some((key, entry)) => Choice::Entry { key, entry },
            None => Choice::Anonymous,
        }
    }
}

/// The entry of `map` for `registry`: its exact key, else the first key naming the same registry.
fn find<'a, V>(map: &'a BTreeMap<String, V>, registry: &str) -> Option<(&'a str, &'a V)> {
    let wanted = normalise(registry);
    map.get_key_value(registry)
        .or_else(|| map.iter().find(|(k, _)| normalise(k) == wanted))
        .map(|(k, v)| (k.as_str(), v))
}

impl AuthEntry {
    /// `identitytoken`, else `auth` (base64 `user:password`), else `username` + `password`;
    /// None for an entry holding none of them.
    pub(crate) fn credential(&self) -> Result<Option<Credential>, String> {
        fn present(s: &Option<String>) -> Option<&str> {
            s.as_deref().map(str::trim).filter(|s| !s.is_empty())
        }
        if let Some(token) = present(&self.identitytoken) {
            return Ok(Some(Credential::IdentityToken(token.to_string())));
        }
        if let Some(auth) = present(&self.auth) {
            // Docker writes padded base64; other tools do not always.
            let engine = base64::engine::GeneralPurpose::new(
                &base64::alphabet::STANDARD,
                base64::engine::GeneralPurposeConfig::new()
                    .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
            );
            let decoded = engine
                .decode(auth)
                .map_err(|e| format!("\"auth\" is not base64 ({e})"))?;
            let text = String::from_utf8(decoded)
                .map_err(|_| "\"auth\" does not decode to text".to_string())?;
            let (username, password) = text
                .split_once(':')
                .ok_or("\"auth\" does not decode to user:password")?;
            return Ok(Some(Credential::Basic {
                username: username.to_string(),
                password: password.to_string(),
            }));
        }
        match (present(&self.username), &self.password) {
            (Some(username), Some(password)) => Ok(Some(Credential::Basic {
                username: username.to_string(),
                password: password.clone(),
            })),
            _ => Ok(None),
        }
    }
}
