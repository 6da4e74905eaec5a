//! The registry's response headers, read: authentication challenges (`WWW-Authenticate`),
//! pagination (`Link`), and which of the URLs they name may be sent our credentials. Pure, so
//! a hostile registry's headers are table-tested.

use super::is_loopback;

/// Where a request may carry what authenticates us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialUse {
    /// An API request (manifests, tags): the registry's own host only.
    Registry,
    /// The token endpoint a bearer challenge names: it may be another host (Docker Hub's is
    /// `auth.docker.io`), but only over https, or plain http on loopback.
    TokenRealm,
}

/// Whether `url` may be sent credentials or a token meant for `registry` (`host[:port]`). A
/// pagination link or a challenge is the registry's to write, and a hostile one must not be
/// able to send our credentials elsewhere or over plain http.
pub fn may_authenticate(url: &str, registry: &str, to: CredentialUse) -> bool {
    let Ok(u) = reqwest::Url::parse(url) else {
        return false;
    };
    let Some(host) = u.host_str() else {
        return false;
    };
    let authority = match u.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    let secure = match u.scheme() {
        "https" => true,
        "http" => is_loopback(&authority),
        _ => false,
    };
    let same_host = authority.eq_ignore_ascii_case(registry)
        || (registry == "registry-1.docker.io" && host.eq_ignore_ascii_case(registry));
    secure && (same_host || to == CredentialUse::TokenRealm)
}

/// One `WWW-Authenticate` challenge: scheme and parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: Vec<(String, String)>,
}

impl Challenge {
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }
}

/// Parses `Bearer realm="https://x/token",service="reg",scope="repository:a/b:pull,push"`.
/// Quoted values may contain commas and `\"`; returns None for a header without a scheme.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, mut rest) = match header.split_once(char::is_whitespace) {
        Some((s, r)) => (s, r.trim_start()),
        None => (header, ""),
    };
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return None;
    }
    let mut params = Vec::new();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().trim_start_matches(',').trim();
        let after = after.trim_start();
        let (value, remaining) = if let Some(q) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = q.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next().map(|(_, c)| c)),
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &q[end?..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        if key.is_empty() {
            return None;
        }
        params.push((key.to_string(), value));
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge {
        scheme: scheme.to_string(),
        params,
    })
}

/// The `next` target of a `Link: <url>; rel="next"` header, if any.
pub fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim().replace(' ', "") == "rel=\"next\"")
            .then(|| {
                url.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:samalba/my-app:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "Bearer");
        assert_eq!(c.param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c.param("service"), Some("registry.docker.io"));
        assert_eq!(
            c.param("scope"),
            Some("repository:samalba/my-app:pull,push")
        );

        let c = parse_challenge(r#"Basic realm="Registry \"Realm\"""#).unwrap();
        assert_eq!(
            (c.scheme.as_str(), c.param("realm")),
            ("Basic", Some("Registry \"Realm\""))
        );

        let c = parse_challenge("Bearer realm=https://x/t, service=reg").unwrap();
        assert_eq!(
            (c.param("realm"), c.param("SERVICE")),
            (Some("https://x/t"), Some("reg"))
        );

        assert_eq!(parse_challenge("Basic").unwrap().params, vec![]);
        for bad in [
            "",
            "Bearer realm=\"unterminated",
            "Bearer =x",
            "Be@rer x=1",
            "Bearer novalue",
        ] {
            assert_eq!(parse_challenge(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn credentials_go_only_to_the_registry_over_https_or_loopback() {
        use CredentialUse::{Registry, TokenRealm};
        let table = [
            (
                "https://reg.example.com/v2/a/tags/list",
                "reg.example.com",
                Registry,
                true,
            ),
            (
                "https://reg.example.com:5000/v2/x",
                "reg.example.com:5000",
                Registry,
                true,
            ),
            (
                "http://reg.example.com/v2/x",
                "reg.example.com",
                Registry,
                false,
            ),
            (
                "https://evil.example/v2/x",
                "reg.example.com",
                Registry,
                false,
            ),
            (
                "https://reg.example.com.evil.example/v2",
                "reg.example.com",
                Registry,
                false,
            ),
            (
                "https://reg.example.com:444/v2/x",
                "reg.example.com",
                Registry,
                false,
            ),
            (
                "http://127.0.0.1:5000/v2/x",
                "127.0.0.1:5000",
                Registry,
                true,
            ),
            (
                "http://127.0.0.1:5001/v2/x",
                "127.0.0.1:5000",
                Registry,
                false,
            ),
            (
                "https://registry-1.docker.io/v2/x",
                "registry-1.docker.io",
                Registry,
                true,
            ),
            (
                "https://auth.docker.io/token",
                "registry-1.docker.io",
                TokenRealm,
                true,
            ),
            (
                "http://auth.example/token",
                "reg.example.com",
                TokenRealm,
                false,
            ),
            (
                "http://127.0.0.1:9/token",
                "127.0.0.1:5000",
                TokenRealm,
                true,
            ),
            (
                "ftp://reg.example.com/x",
                "reg.example.com",
                TokenRealm,
                false,
            ),
            ("not a url", "reg.example.com", Registry, false),
        ];
        for (url, registry, to, want) in table {
            assert_eq!(
                may_authenticate(url, registry, to),
                want,
                "{url} for {registry} ({to:?})"
            );
        }
    }

    #[test]
    fn link_headers_give_the_next_page() {
        assert_eq!(
            next_link(r#"</v2/a/tags/list?n=2&last=b>; rel="next""#).as_deref(),
            Some("/v2/a/tags/list?n=2&last=b")
        );
        assert_eq!(
            next_link(r#"<https://x/p2>; rel="prev", <https://x/p3>; rel = "next""#).as_deref(),
            Some("https://x/p3")
        );
        assert_eq!(next_link("garbage"), None);
    }
}
