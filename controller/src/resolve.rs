//! Turning what the user typed (a tag, a git SHA or its prefix, a digest) into one
//! `repo@sha256:…` by asking the registry, once, at push time (README, Guarantees 1).
//!
//! Speaks the registry HTTP API v2 over reqwest + rustls: `HEAD /v2/<name>/manifests/<ref>`
//! for the digest and `GET /v2/<name>/tags/list` for prefixes, with the bearer-token dance and
//! the credentials the user's Docker config gives (`registry-auth`: auths, credsStore,
//! credHelpers), looked up only when the registry asks for them. Certificates are checked
//! against the system's trusted roots (or `SSL_CERT_FILE`). Like the Docker engine, a loopback
//! registry is tried over https first and spoken to over plain http when it does not speak
//! TLS; an untrusted certificate is an error, never a reason to fall back.

use std::net::IpAddr;
use std::time::Duration;

use base64::Engine as _;
use proto::order::{ImageRef, is_digest};
use registry_auth::{Credential, DockerConfig};
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, LINK, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use sha2::{Digest as _, Sha256};

mod headers;
pub use headers::{Challenge, CredentialUse, may_authenticate, next_link, parse_challenge};

/// Every manifest kind a multi-arch or single image may be published as.
const MANIFEST_TYPES: &str = "application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json";

/// Shortest hex string taken as a git SHA prefix (git's own default abbreviation).
pub const MIN_PREFIX: usize = 7;

/// What the user typed, classified before any network traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefKind {
    /// `sha256:<64 hex>`: used as is once the registry confirms it exists.
    Digest(String),
    /// 7..39 lowercase hex: the unique tag starting with it.
    Prefix(String),
    /// Anything else that is a valid tag, including a full 40-hex git SHA.
    Tag(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("{0}")]
    BadRef(String),
    #[error("image not found: {0}")]
    NotFound(String),
    #[error("ref {prefix:?} is ambiguous in {repository}: it starts {} tags: {}", candidates.len(), candidates.join(", "))]
    Ambiguous {
        prefix: String,
        repository: String,
        candidates: Vec<String>,
    },
    #[error("registry refused access to {repository}: {detail}")]
    Unauthorized { repository: String, detail: String },
    #[error("registry unreachable ({registry}): {detail}")]
    Unreachable { registry: String, detail: String },
    #[error(
        "registry {registry} presented a certificate this machine does not trust ({detail}): add \
         its CA to the system's trusted roots, or point SSL_CERT_FILE at a PEM bundle holding it"
    )]
    Certificate { registry: String, detail: String },
    /// The Docker config or its helper gave no answer (the text names the file, the helper and
    /// the registry).
    #[error("{0}")]
    Credentials(String),
    #[error("unexpected registry answer: {0}")]
    Protocol(String),
}

/// Classifies a ref. Only lowercase hex counts as a git SHA prefix: tags are case-sensitive.
pub fn classify_ref(input: &str) -> Result<RefKind, ResolveError> {
    let s = input.trim();
    if let Some(hex) = s.strip_prefix("sha256:") {
        return if is_digest(s) {
            Ok(RefKind::Digest(s.to_string()))
        } else {
            Err(ResolveError::BadRef(format!(
                "{input:?} is not a digest: expected sha256: and 64 lowercase hex digits, got {} characters",
                hex.len()
            )))
        };
    }
    let is_hex = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if is_hex && (MIN_PREFIX..40).contains(&s.len()) {
        return Ok(RefKind::Prefix(s.to_string()));
    }
    // The registry's tag grammar: [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
    let mut bytes = s.bytes();
    let valid_tag = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && s.len() <= 128;
    if !valid_tag {
        return Err(ResolveError::BadRef(format!(
            "{input:?} is not a ref: give a tag, a git SHA (or a prefix of at least {MIN_PREFIX} hex digits), or sha256:<64 hex>"
        )));
    }
    if is_hex && s.len() < MIN_PREFIX {
        return Err(ResolveError::BadRef(format!(
            "{input:?} is too short to be a git SHA prefix (at least {MIN_PREFIX} hex digits)"
        )));
    }
    Ok(RefKind::Tag(s.to_string()))
}

/// Where a repository lives and how to address it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repository {
    /// As written in deploy.toml: what orders name.
    pub full: String,
    /// `host[:port]` of the registry API.
    pub registry: String,
    /// The repository name within the registry (`library/` added for Docker Hub).
    pub name: String,
    /// A loopback registry, which may be spoken to over plain http.
    pub insecure: bool,
}

impl Repository {
    pub fn parse(full: &str) -> Repository {
        let (first, rest) = full.split_once('/').unwrap_or(("", full));
        let explicit = !first.is_empty()
            && (first.contains('.') || first.contains(':') || first == "localhost");
        if explicit {
            let insecure = is_loopback(first);
            Repository {
                full: full.to_string(),
                registry: first.to_string(),
                name: rest.to_string(),
                insecure,
            }
        } else {
            let name = if full.contains('/') {
                full.to_string()
            } else {
                format!("library/{full}")
            };
            Repository {
                full: full.to_string(),
                registry: "registry-1.docker.io".into(),
                name,
                insecure: false,
            }
        }
    }
}

/// True for `localhost`, 127.0.0.0/8 and ::1, with or without a port.
pub fn is_loopback(registry: &str) -> bool {
    let host = if let Some(v6) = registry.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        registry.split(':').next().unwrap_or("")
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Which tags a prefix picks: an exact tag wins, else those starting with the prefix.
pub fn pick_tags<'a>(prefix: &str, tags: &'a [String]) -> Vec<&'a str> {
    if let Some(exact) = tags.iter().find(|t| *t == prefix) {
        return vec![exact.as_str()];
    }
    let mut found: Vec<&str> = tags
        .iter()
        .filter(|t| t.starts_with(prefix))
        .map(String::as_str)
        .collect();
    found.sort_unstable();
    found.dedup();
    found
}

/// At most this many tags of one repository are looked up to find the tags of a release's
/// digests (README, "Release policy"): one `HEAD` each, [`TAG_LOOKUPS_AT_ONCE`] at a time.
pub const MAX_TAG_LOOKUPS: usize = 100;
pub const TAG_LOOKUPS_AT_ONCE: usize = 8;

/// Which of a repository's `tags` are looked up, and how many that might matter were left out:
/// only tags a `[refs]` rule can judge ([`proto::release_policy::refs::examined`]); past
/// `limit`, `ephemeral-*` ones first (missing one would let a throwaway build through), then
/// the others from the last in lexical order, where the newest versions of a scheme sort.
pub fn tags_to_look_up(tags: &[String], limit: usize) -> (Vec<&str>, usize) {
    use proto::release_policy::refs::{EPHEMERAL_PREFIX, examined};
    let mut wanted: Vec<&str> = tags
        .iter()
        .map(String::as_str)
        .filter(|t| examined(t))
        .collect();
    wanted.sort_unstable_by(|a, b| {
        let ephemeral = |t: &str| t.starts_with(EPHEMERAL_PREFIX);
        ephemeral(b).cmp(&ephemeral(a)).then(b.cmp(a))
    });
    wanted.dedup();
    let left_out = wanted.len().saturating_sub(limit);
    wanted.truncate(limit);
    (wanted, left_out)
}

/// The tags of some digests of a repository, as far as [`tags_to_look_up`] looked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TagsFound {
    /// digest → its tags, sorted.
    pub tags: std::collections::BTreeMap<String, Vec<String>>,
    /// Tags that might have mattered but were not looked up.
    pub left_out: usize,
}

/// The outcome of resolution: the pinned image and what the user's ref meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub image: ImageRef,
    /// For display in orders and history: the tag used, or the digest.
    pub reference: String,
}

/// How long a loopback registry has to answer TLS before it is taken to speak plain http.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The client id a token endpoint is told when an identity token is exchanged.
const OAUTH_CLIENT_ID: &str = "deployctl";

/// A registry client for one repository.
#[derive(Clone)]
pub struct Resolver {
    repo: Repository,
    http: reqwest::Client,
    docker_config: DockerConfig,
    /// The credentials once looked up (at the first challenge); `Some(None)`: anonymous.
    credentials: Option<Option<Credential>>,
    /// Value for the Authorization header once a challenge has been answered.
    authorization: Option<String>,
    /// `https` or `http`, once known (a loopback registry's is found at the first request).
    scheme: Option<&'static str>,
}

impl Resolver {
    /// A client taking credentials from the Docker CLI's config.
    pub fn new(image: &str) -> Result<Self, ResolveError> {
        Resolver::with_docker_config(image, DockerConfig::from_env())
    }

    pub fn with_docker_config(
        image: &str,
        docker_config: DockerConfig,
    ) -> Result<Self, ResolveError> {
        let repo = Repository::parse(image);
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("deployctl/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ResolveError::Protocol(format!("cannot build the HTTP client: {e}")))?;
        let scheme = (!repo.insecure).then_some("https");
        Ok(Resolver {
            repo,
            http,
            docker_config,
            credentials: None,
            authorization: None,
            scheme,
        })
    }

    pub fn repository(&self) -> &Repository {
        &self.repo
    }

    /// Resolves `input` to `repo@sha256:…`.
    pub async fn resolve(&mut self, input: &str) -> Result<Resolved, ResolveError> {
        match classify_ref(input)? {
            RefKind::Digest(d) => {
                self.manifest_digest(&d).await?;
                Ok(Resolved {
                    image: self.pin(&d)?,
                    reference: d,
                })
            }
            RefKind::Tag(tag) => {
                let digest = self.manifest_digest(&tag).await?;
                Ok(Resolved {
                    image: self.pin(&digest)?,
                    reference: tag,
                })
            }
            RefKind::Prefix(prefix) => {
                let tags = self.tags().await?;
                let tag = match pick_tags(&prefix, &tags).as_slice() {
                    [one] => one.to_string(),
                    [] => {
                        return Err(ResolveError::NotFound(format!(
                            "no tag of {} starts with {prefix:?} ({} tags in the repository)",
                            self.repo.full,
                            tags.len()
                        )));
                    }
                    many => {
                        return Err(ResolveError::Ambiguous {
                            prefix,
                            repository: self.repo.full.clone(),
                            candidates: many.iter().map(|s| s.to_string()).collect(),
                        });
                    }
                };
                let digest = self.manifest_digest(&tag).await?;
                Ok(Resolved {
                    image: self.pin(&digest)?,
                    reference: tag,
                })
            }
        }
    }

    /// The tags pointing at each of `digests`: the repository's tags listed, those a rule can
    /// judge looked up (at most [`MAX_TAG_LOOKUPS`], several at a time). A tag deleted between
    /// the listing and its lookup is no tag.
    pub async fn tags_of(
        &mut self,
        digests: &std::collections::BTreeSet<String>,
    ) -> Result<TagsFound, ResolveError> {
        use futures_util::StreamExt as _;
        let all = self.tags().await?;
        let (wanted, left_out) = tags_to_look_up(&all, MAX_TAG_LOOKUPS);
        // Each lookup on its own client: the token the listing obtained is shared, and no
        // lookup waits for another's answer.
        let answers: Vec<(String, Result<String, ResolveError>)> =
            futures_util::stream::iter(wanted)
                .map(|tag| {
                    let mut r = self.clone();
                    async move { (tag.to_string(), r.manifest_digest(tag).await) }
                })
                .buffer_unordered(TAG_LOOKUPS_AT_ONCE)
                .collect()
                .await;
        let mut found = TagsFound {
            left_out,
            ..TagsFound::default()
        };
        for (tag, answer) in answers {
            match answer {
                Ok(digest) if digests.contains(&digest) => {
                    found.tags.entry(digest).or_default().push(tag)
                }
                Ok(_) | Err(ResolveError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        found.tags.values_mut().for_each(|t| t.sort());
        Ok(found)
    }

    fn pin(&self, digest: &str) -> Result<ImageRef, ResolveError> {
        ImageRef::new(&self.repo.full, digest).map_err(|e| ResolveError::Protocol(e.to_string()))
    }

    /// The digest of the manifest `reference` names, from `Docker-Content-Digest` or, when a
    /// registry leaves that header out, from hashing the manifest body.
    async fn manifest_digest(&mut self, reference: &str) -> Result<String, ResolveError> {
        let url = format!("{}/manifests/{reference}", self.base_url().await?);
        let what = format!("{}:{reference}", self.repo.full);
        let resp = self.send(Method::HEAD, &url).await?;
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => {
                return Err(ResolveError::NotFound(format!(
                    "{} has no manifest {reference:?}",
                    self.repo.full
                )));
            }
            s => {
                return Err(ResolveError::Protocol(format!(
                    "HEAD manifest {} answered {s}",
                    what
                )));
            }
        }
        if let Some(d) = header_digest(resp.headers()) {
            return if reference.starts_with("sha256:") && d != reference {
                Err(ResolveError::Protocol(format!(
                    "registry answered digest {d} for {reference}"
                )))
            } else {
                Ok(d)
            };
        }
        let resp = self.send(Method::GET, &url).await?;
        if !resp.status().is_success() {
            return Err(ResolveError::Protocol(format!(
                "GET manifest {} answered {}",
                what,
                resp.status()
            )));
        }
        if let Some(d) = header_digest(resp.headers()) {
            return Ok(d);
        }
        let body = resp.bytes().await.map_err(|e| self.transport(e))?;
        Ok(format!("sha256:{:x}", Sha256::digest(&body)))
    }

    /// Every tag of the repository, following pagination.
    async fn tags(&mut self) -> Result<Vec<String>, ResolveError> {
        #[derive(serde::Deserialize)]
        struct TagList {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let mut url = format!("{}/tags/list?n=1000", self.base_url().await?);
        let mut all = Vec::new();
        // A cap so a misbehaving registry cannot loop us forever.
        for _ in 0..100 {
            let resp = self.send(Method::GET, &url).await?;
            match resp.status() {
                StatusCode::OK => {}
                StatusCode::NOT_FOUND => {
                    return Err(ResolveError::NotFound(format!(
                        "repository {} does not exist",
                        self.repo.full
                    )));
                }
                s => {
                    return Err(ResolveError::Protocol(format!(
                        "tags/list of {} answered {s}",
                        self.repo.full
                    )));
                }
            }
            let next = resp
                .headers()
                .get(LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(next_link);
            let list: TagList = resp.json().await.map_err(|e| {
                ResolveError::Protocol(format!("tags/list of {} is not JSON: {e}", self.repo.full))
            })?;
            all.extend(list.tags.unwrap_or_default());
            match next {
                Some(n) if n.starts_with('/') => {
                    let scheme = self.scheme.unwrap_or("https");
                    url = format!("{scheme}://{}{n}", self.repo.registry);
                }
                Some(n) => url = n,
                None => break,
            }
        }
        Ok(all)
    }

    /// `<scheme>://<registry>/v2/<name>`. A loopback registry's scheme is found at the first
    /// request, as the Docker engine finds it: https when it answers TLS (its certificate must
    /// be trusted), else plain http.
    async fn base_url(&mut self) -> Result<String, ResolveError> {
        let scheme = match self.scheme {
            Some(scheme) => scheme,
            None => {
                let probe = format!("https://{}/v2/", self.repo.registry);
                let answer = self.http.get(&probe).timeout(PROBE_TIMEOUT).send().await;
                let scheme = match answer {
                    Ok(_) => "https",
                    Err(e) if certificate_error(&e).is_some() => return Err(self.transport(e)),
                    Err(_) => "http",
                };
                self.scheme = Some(scheme);
                scheme
            }
        };
        Ok(format!(
            "{scheme}://{}/v2/{}",
            self.repo.registry, self.repo.name
        ))
    }

    /// Sends a request, answering one authentication challenge if the registry asks.
    async fn send(&mut self, method: Method, url: &str) -> Result<reqwest::Response, ResolveError> {
        let resp = self.send_once(method.clone(), url).await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_challenge)
            .ok_or_else(|| self.unauthorized("401 without a usable WWW-Authenticate challenge"))?;
        let credential = self.credentials().await?;
        if challenge.scheme.eq_ignore_ascii_case("bearer") {
            let token = self.bearer_token(&challenge, credential.as_ref()).await?;
            self.authorization = Some(format!("Bearer {token}"));
        } else if challenge.scheme.eq_ignore_ascii_case("basic") {
            let (user, pass) = match credential {
                Some(Credential::Basic { username, password }) => (username, password),
                Some(Credential::IdentityToken(_)) => {
                    return Err(self.unauthorized(
                        "the registry wants basic auth, and its credentials are an identity token, \
                         which only a bearer token endpoint takes",
                    ));
                }
                None => {
                    return Err(self.unauthorized(&format!(
                        "basic auth required and {}",
                        self.no_credentials()
                    )));
                }
            };
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
            self.authorization = Some(format!("Basic {encoded}"));
        } else {
            return Err(
                self.unauthorized(&format!("unsupported auth scheme {:?}", challenge.scheme))
            );
        }
        let resp = self.send_once(method, url).await?;
        if resp.status() == StatusCode::UNAUTHORIZED || resp.status() == StatusCode::FORBIDDEN {
            let hint = match self.credentials.as_ref().and_then(Option::as_ref) {
                Some(_) => format!("credentials refused ({})", resp.status()),
                None => self.no_credentials(),
            };
            return Err(self.unauthorized(&hint));
        }
        Ok(resp)
    }

    /// The registry's credentials from the Docker config, looked up once, on a blocking thread
    /// (a credential helper may run).
    async fn credentials(&mut self) -> Result<Option<Credential>, ResolveError> {
        if let Some(known) = &self.credentials {
            return Ok(known.clone());
        }
        let config = self.docker_config.clone();
        let registry = self.repo.registry.clone();
        let found = tokio::task::spawn_blocking(move || config.credentials(&registry))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
            .map_err(ResolveError::Credentials)?;
        let credential = found.map(|f| f.credential);
        self.credentials = Some(credential.clone());
        Ok(credential)
    }

    /// "no credentials in <config>", for a registry that wanted some.
    fn no_credentials(&self) -> String {
        match self.docker_config.path() {
            Some(path) => format!(
                "no credentials for {} in {} (docker login, credsStore or credHelpers)",
                self.repo.registry,
                path.display()
            ),
            None => "no Docker config (neither DOCKER_CONFIG nor HOME is set)".to_string(),
        }
    }

    async fn send_once(
        &self,
        method: Method,
        url: &str,
    ) -> Result<reqwest::Response, ResolveError> {
        let mut req = self
            .http
            .request(method, url)
            .header(ACCEPT, MANIFEST_TYPES);
        if let Some(auth) = &self.authorization
            && may_authenticate(url, &self.repo.registry, CredentialUse::Registry)
        {
            req = req.header(AUTHORIZATION, auth);
        }
        req.send().await.map_err(|e| self.transport(e))
    }

    /// A token from the endpoint a bearer challenge names: for a user and password by GET with
    /// basic auth, for an identity token by the OAuth2 refresh-token grant (as Docker does).
    async fn bearer_token(
        &self,
        challenge: &Challenge,
        credential: Option<&Credential>,
    ) -> Result<String, ResolveError> {
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let realm = challenge
            .param("realm")
            .ok_or_else(|| self.unauthorized("bearer challenge without realm"))?;
        let scope = challenge
            .param("scope")
            .map(str::to_string)
            .unwrap_or_else(|| format!("repository:{}:pull", self.repo.name));
        let mut query = vec![("scope", scope)];
        if let Some(service) = challenge.param("service") {
            query.push(("service", service.to_string()));
        }
        if credential.is_some()
            && !may_authenticate(realm, &self.repo.registry, CredentialUse::TokenRealm)
        {
            return Err(self.unauthorized(&format!(
                "the registry's token endpoint {realm} is not https (nor loopback): not sending \
                 credentials there"
            )));
        }
        let req = match credential {
            None => self.http.get(realm).query(&query),
            Some(Credential::Basic { username, password }) => self
                .http
                .get(realm)
                .query(&query)
                .basic_auth(username, Some(password)),
            Some(Credential::IdentityToken(token)) => {
                query.extend([
                    ("grant_type", "refresh_token".to_string()),
                    ("refresh_token", token.clone()),
                    ("client_id", OAUTH_CLIENT_ID.to_string()),
                ]);
                self.http.post(realm).form(&query)
            }
        };
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        if !resp.status().is_success() {
            return Err(self.unauthorized(&format!(
                "token endpoint {realm} answered {}",
                resp.status()
            )));
        }
        let token: Token = resp
            .json()
            .await
            .map_err(|e| ResolveError::Protocol(format!("token endpoint {realm}: {e}")))?;
        token
            .token
            .or(token.access_token)
            .ok_or_else(|| self.unauthorized("token endpoint returned no token"))
    }

    fn unauthorized(&self, detail: &str) -> ResolveError {
        ResolveError::Unauthorized {
            repository: self.repo.full.clone(),
            detail: detail.to_string(),
        }
    }

    /// A request that got no answer: an untrusted certificate, or an unreachable registry.
    fn transport(&self, e: reqwest::Error) -> ResolveError {
        let registry = self.repo.registry.clone();
        if let Some(detail) = certificate_error(&e) {
            return ResolveError::Certificate { registry, detail };
        }
        let mut detail = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            detail = format!("{detail}: {s}");
            source = s.source();
        }
        ResolveError::Unreachable { registry, detail }
    }
}

/// What rustls said when the error is about the peer's certificate (untrusted issuer, wrong
/// name, expired …). It sits in reqwest's chain inside nested `io::Error`s, whose `source()`
/// skips the error they wrap, so those are unwrapped instead.
fn certificate_error(e: &reqwest::Error) -> Option<String> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(tls @ rustls::Error::InvalidCertificate(_)) =
            err.downcast_ref::<rustls::Error>()
        {
            return Some(tls.to_string());
        }
        next = match err.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

fn header_digest(headers: &HeaderMap) -> Option<String> {
    headers
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|d| is_digest(d))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA40: &str = "0123456789abcdef0123456789abcdef01234567";
    const D64: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn refs_classify() {
        let cases: &[(&str, Result<RefKind, ()>)] = &[
            (SHA40, Ok(RefKind::Tag(SHA40.into()))),
            ("0123456", Ok(RefKind::Prefix("0123456".into()))),
            (&SHA40[..39], Ok(RefKind::Prefix(SHA40[..39].into()))),
            (D64, Ok(RefKind::Digest(D64.into()))),
            ("v1.2.3", Ok(RefKind::Tag("v1.2.3".into()))),
            ("latest", Ok(RefKind::Tag("latest".into()))),
            ("ABCDEF0", Ok(RefKind::Tag("ABCDEF0".into()))),
            (
                "deadbeefcafe-rc1",
                Ok(RefKind::Tag("deadbeefcafe-rc1".into())),
            ),
            ("abc", Err(())),
            ("012345", Err(())),
            ("sha256:0123", Err(())),
            ("sha256:", Err(())),
            ("", Err(())),
            ("-v1", Err(())),
            ("v1/x", Err(())),
            ("a b", Err(())),
        ];
        for (input, want) in cases {
            let got = classify_ref(input).map_err(|_| ());
            assert_eq!(&got, want, "{input:?}");
        }
    }

    #[test]
    fn repositories_split_into_registry_and_name() {
        let cases = [
            (
                "127.0.0.1:5000/acme/web",
                "127.0.0.1:5000",
                "acme/web",
                true,
            ),
            ("localhost:5000/web", "localhost:5000", "web", true),
            ("[::1]:5000/web", "[::1]:5000", "web", true),
            (
                "registry.example.com/acme/web",
                "registry.example.com",
                "acme/web",
                false,
            ),
            ("ghcr.io/acme/web", "ghcr.io", "acme/web", false),
            ("10.0.0.1:5000/web", "10.0.0.1:5000", "web", false),
            ("acme/web", "registry-1.docker.io", "acme/web", false),
            ("nginx", "registry-1.docker.io", "library/nginx", false),
        ];
        for (full, registry, name, insecure) in cases {
            let r = Repository::parse(full);
            assert_eq!(
                (r.registry.as_str(), r.name.as_str(), r.insecure),
                (registry, name, insecure),
                "{full}"
            );
        }
        assert!(
            is_loopback("127.1.2.3:80") && is_loopback("localhost") && !is_loopback("128.0.0.1")
        );
    }

    #[test]
    fn prefixes_pick_tags() {
        let tags: Vec<String> = ["aaaaaaa1", "aaaaaaa2", "bbbbbbb", "bbbbbbbb", "latest"]
            .map(String::from)
            .to_vec();
        assert_eq!(pick_tags("aaaaaaa", &tags), vec!["aaaaaaa1", "aaaaaaa2"]);
        assert_eq!(pick_tags("aaaaaaa1", &tags), vec!["aaaaaaa1"]);
        assert_eq!(pick_tags("bbbbbbb", &tags), vec!["bbbbbbb"]);
        assert_eq!(pick_tags("ccccccc", &tags), Vec::<&str>::new());
    }

    #[test]
    fn the_tags_looked_up_are_those_a_rule_can_judge_ephemeral_first() {
        let tags: Vec<String> = [
            "latest",
            "0123456789abcdef0123456789abcdef01234567",
            "v1.2.0",
            "v1.10.0",
            "2023.06.1",
            "ephemeral-pr-7",
            "v1.3.0-rc.1",
            "v1",
            "v1.2.0",
        ]
        .map(String::from)
        .to_vec();
        let (all, left_out) = tags_to_look_up(&tags, 100);
        assert_eq!(
            (all, left_out),
            (
                vec![
                    "ephemeral-pr-7",
                    "v1.3.0-rc.1",
                    "v1.2.0",
                    "v1.10.0",
                    "2023.06.1"
                ],
                0
            )
        );
        let (few, left_out) = tags_to_look_up(&tags, 2);
        assert_eq!((few, left_out), (vec!["ephemeral-pr-7", "v1.3.0-rc.1"], 3));
        assert_eq!(tags_to_look_up(&[], 100), (vec![], 0));
    }

    /// A registry that wants a bearer token, answering just enough of the API.
    async fn fake_registry() -> (String, tokio::task::JoinHandle<()>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let realm = format!("http://{addr}/token");
        let server = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                // The head, then as much body as Content-Length says.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head = loop {
                    let n = stream.read(&mut chunk).await.unwrap_or(0);
                    buf.extend_from_slice(&chunk[..n]);
                    // A TLS hello (the https probe): answered as a plain HTTP server does.
                    if buf.first() == Some(&0x16) {
                        break "TLS".to_string();
                    }
                    let text = String::from_utf8_lossy(&buf).to_string();
                    let Some((head, body)) = text.split_once("\r\n\r\n") else {
                        if n == 0 {
                            break text;
                        }
                        continue;
                    };
                    let wanted = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(str::to_string)
                        })
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if body.len() >= wanted || n == 0 {
                        break text;
                    }
                };
                let line = head.lines().next().unwrap_or_default().to_string();
                let authorized = head
                    .lines()
                    .any(|l| l.eq_ignore_ascii_case("authorization: Bearer t0k"));
                let (status, headers, body) = if line == "TLS" {
                    ("400 Bad Request", String::new(), String::new())
                } else if line.starts_with("GET /token?") {
                    assert!(
                        line.contains("scope=repository%3Aacme%2Fweb%3Apull")
                            && line.contains("service=reg"),
                        "{line}"
                    );
                    ("200 OK", String::new(), r#"{"token":"t0k"}"#.to_string())
                } else if line.starts_with("POST /token ") {
                    // The refresh-token grant an identity token is exchanged by.
                    let body = head.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
                    let grant = [
                        "grant_type=refresh_token",
                        "client_id=deployctl",
                        "service=reg",
                    ]
                    .iter()
                    .all(|p| body.contains(p));
                    if grant && body.contains("refresh_token=r3fresh") {
                        (
                            "200 OK",
                            String::new(),
                            r#"{"access_token":"t0k"}"#.to_string(),
                        )
                    } else {
                        ("401 Unauthorized", String::new(), String::new())
                    }
                } else if !authorized {
                    let challenge = format!(
                        "WWW-Authenticate: Bearer realm=\"{realm}\",service=\"reg\",scope=\"repository:acme/web:pull\"\r\n"
                    );
                    ("401 Unauthorized", challenge, String::new())
                } else if line.starts_with("HEAD /v2/acme/web/manifests/v1 ")
                    || line.starts_with("HEAD /v2/acme/web/manifests/v1.0.0 ")
                {
                    (
                        "200 OK",
                        format!("Docker-Content-Digest: sha256:{}\r\n", "a".repeat(64)),
                        String::new(),
                    )
                } else if line.starts_with("GET /v2/acme/web/tags/list") {
                    (
                        "200 OK",
                        String::new(),
                        r#"{"name":"acme/web","tags":["v1","0123456789","0123456abc","v1.0.0","ephemeral-gone"]}"#
                            .to_string(),
                    )
                } else {
                    ("404 Not Found", String::new(), String::new())
                };
                let reply = format!(
                    "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
            }
        });
        (addr, server)
    }

    /// A resolver taking credentials from `config` (JSON), helpers from an empty directory.
    fn resolver(addr: &str, config: &str) -> (Resolver, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, config).unwrap();
        let docker_config = DockerConfig::at(path).search_helpers_in(dir.path());
        let r = Resolver::with_docker_config(&format!("{addr}/acme/web"), docker_config).unwrap();
        (r, dir)
    }

    #[tokio::test]
    async fn identity_tokens_are_exchanged_and_credential_failures_named() {
        let (addr, server) = fake_registry().await;
        let identity =
            |token: &str| format!(r#"{{"auths": {{"{addr}": {{"identitytoken": "{token}"}}}}}}"#);
        let (mut r, _dir) = resolver(&addr, &identity("r3fresh"));
        let got = r.resolve("v1").await.unwrap();
        assert_eq!(got.image.digest(), format!("sha256:{}", "a".repeat(64)));

        let (mut r, _dir) = resolver(&addr, &identity("stale"));
        let err = r.resolve("v1").await.unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "registry refused access to {addr}/acme/web: token endpoint"
            )) && err.ends_with("answered 401 Unauthorized"),
            "{err}"
        );

        let helper = format!(r#"{{"credHelpers": {{"{addr}": "nowhere"}}}}"#);
        let (mut r, _dir) = resolver(&addr, &helper);
        let err = r.resolve("v1").await.unwrap_err().to_string();
        assert!(
            err.starts_with("credential helper docker-credential-nowhere (credHelpers in ")
                && err.contains(&format!(") for {addr}: the program is not on PATH")),
            "{err}"
        );
        server.abort();
    }

    #[tokio::test]
    async fn bearer_challenges_are_answered() {
        let (addr, server) = fake_registry().await;
        let (mut r, _dir) = resolver(&addr, "{}");
        let got = r.resolve("v1").await.unwrap();
        assert_eq!(got.image.digest(), format!("sha256:{}", "a".repeat(64)));
        assert_eq!(got.reference, "v1");
        match r.resolve("0123456").await {
            Err(ResolveError::Ambiguous { candidates, .. }) => {
                assert_eq!(candidates, ["0123456789", "0123456abc"])
            }
            other => panic!("expected ambiguity, got {other:?}"),
        }
        assert!(matches!(
            r.resolve("v2").await,
            Err(ResolveError::NotFound(_))
        ));
        assert!(matches!(
            r.resolve("fedcba9").await,
            Err(ResolveError::NotFound(_))
        ));
        // v1.0.0 names the digest; ephemeral-gone was deleted after the listing; v1 and the
        // SHA-like tags are no release tag, so not looked up.
        let digest = format!("sha256:{}", "a".repeat(64));
        let found = r.tags_of(&[digest.clone()].into()).await.unwrap();
        assert_eq!(
            found,
            TagsFound {
                tags: [(digest, vec!["v1.0.0".to_string()])].into(),
                left_out: 0
            }
        );
        server.abort();
    }
}
