//! What the agent asks of Caddy, decided over Caddy's JSON config without touching it: the one
//! route a proxied service owns (found by its `@id`), where a missing route goes, what a route
//! in maintenance looks like, and how many requests an old upstream still serves. `caddy.rs`
//! carries these changes out through the admin API.
//!
//! Everything else in Caddy's config is the operator's: a change is always addressed to our
//! route (`/id/<id>`) or adds our route or server where none is, never a whole-config load.

use std::time::Duration;

use serde_json::{Value, json};

/// One change to Caddy's config through the admin API.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub method: &'static str,
    /// Under the admin API, e.g. `/id/deployctl-acme-prod-web`.
    pub path: String,
    pub body: Value,
}

/// What the route sends requests to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handling {
    /// The serving container (`ip:port`); `draining`: an old upstream still finishing requests.
    Upstream {
        dial: String,
        draining: Option<String>,
    },
    /// The maintenance page.
    Maintenance {
        message: String,
        retry_after: Duration,
    },
}

/// A route's `match`: the hosts, or nothing (any host).
fn matcher(hosts: &[String]) -> Value {
    if hosts.is_empty() {
        Value::Null
    } else {
        json!([{ "host": hosts }])
    }
}

/// Caddy reads `{…}` in a static body as placeholders (`{env.SECRET}` would print the proxy's
/// environment); a backslash makes a brace literal.
pub fn escape_placeholders(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '{' | '}' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn unescape_placeholders(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\'
            && let Some(next) = chars.next()
        {
            out.push(next);
            continue;
        }
        out.push(c);
    }
    out
}

fn reverse_proxy(dial: &str) -> Value {
    json!({ "handler": "reverse_proxy", "upstreams": [{ "dial": dial }] })
}

/// The route a service owns. A draining upstream gets a second `reverse_proxy` handler after
/// the first: it never runs (the first one answers every request), but while a route names an
/// address Caddy keeps counting that upstream's requests — those begun before the switch
/// included — which is how the drain knows when the old container is idle. (Caddy 2.6 forgets
/// an upstream, count and all, once no handler names it.)
pub fn route(id: &str, hosts: &[String], handling: &Handling) -> Value {
    let handle = match handling {
        Handling::Upstream { dial, draining } => {
            let mut h = vec![reverse_proxy(dial)];
            h.extend(draining.iter().map(|d| reverse_proxy(d)));
            h
        }
        Handling::Maintenance {
            message,
            retry_after,
        } => vec![json!({
            "handler": "static_response",
            "status_code": 503,
            "headers": {
                "Retry-After": [retry_after.as_secs().max(1).to_string()],
                "Content-Type": ["text/plain; charset=utf-8"],
                "Cache-Control": ["no-store"],
            },
            "body": escape_placeholders(message),
        })],
    };
    let mut r = json!({ "@id": id, "handle": handle, "terminal": true });
    let m = matcher(hosts);
    if !m.is_null() {
        r["match"] = m;
    }
    r
}

/// How a route found in Caddy's config handles requests, if it is one of ours.
pub fn handling_of(route: &Value) -> Option<Handling> {
    let handle = route.get("handle")?.as_array()?;
    let first = handle.first()?;
    match first.get("handler")?.as_str()? {
        "reverse_proxy" => {
            let dial = |h: &Value| {
                h.get("upstreams")?
                    .as_array()?
                    .first()?
                    .get("dial")?
                    .as_str()
                    .map(str::to_owned)
            };
            Some(Handling::Upstream {
                dial: dial(first)?,
                draining: handle.get(1).and_then(dial),
            })
        }
        "static_response" => Some(Handling::Maintenance {
            message: unescape_placeholders(first.get("body")?.as_str().unwrap_or_default()),
            retry_after: first
                .pointer("/headers/Retry-After/0")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
                .map(Duration::from_secs)
                .unwrap_or_default(),
        }),
        _ => None,
    }
}

/// Whether the config holds an object with this `@id` anywhere.
pub fn has_id(config: &Value, id: &str) -> bool {
    match config {
        Value::Object(map) => {
            map.get("@id").and_then(Value::as_str) == Some(id)
                || map.values().any(|v| has_id(v, id))
        }
        Value::Array(items) => items.iter().any(|v| has_id(v, id)),
        _ => false,
    }
}

/// Our route, replaced where it is.
pub fn replace(id: &str, route: Value) -> Change {
    Change {
        method: "PATCH",
        path: format!("/id/{id}"),
        body: route,
    }
}

/// Where `route` goes, given Caddy's whole config (`GET /config/`): over our own route when it
/// exists; else at the end of the routes of the server that listens on exactly `listen` (the
/// operator's other routes keep their precedence); else in a new server of ours.
pub fn place(config: &Value, id: &str, listen: &[String], route: Value) -> Change {
    if has_id(config, id) {
        return replace(id, route);
    }
    let servers = config
        .pointer("/apps/http/servers")
        .and_then(Value::as_object);
    let wanted = sorted(listen.iter().map(String::as_str));
    if let Some((name, _)) = servers.into_iter().flatten().find(|(_, s)| {
        let listens = s.get("listen").and_then(Value::as_array);
        sorted(listens.into_iter().flatten().filter_map(Value::as_str)) == wanted
    }) {
        return Change {
            method: "POST",
            path: format!("/config/apps/http/servers/{name}/routes"),
            body: route,
        };
    }
    let name = server_name(listen, servers.map(|s| s.keys().map(String::as_str)));
    let server = json!({ "listen": listen, "routes": [route] });
    // The deepest part of the path that exists gets the new part.
    let (path, body) = if servers.is_some() {
        (format!("/config/apps/http/servers/{name}"), server)
    } else if config.pointer("/apps/http").is_some_and(Value::is_object) {
        (
            "/config/apps/http/servers".to_string(),
            json!({ name: server }),
        )
    } else if config.pointer("/apps").is_some_and(Value::is_object) {
        (
            "/config/apps/http".to_string(),
            json!({ "servers": { name: server } }),
        )
    } else if config.is_object() {
        (
            "/config/apps".to_string(),
            json!({ "http": { "servers": { name: server } } }),
        )
    } else {
        (
            "/config/".to_string(),
            json!({ "apps": { "http": { "servers": { name: server } } } }),
        )
    };
    let method = if path == "/config/" { "POST" } else { "PUT" };
    Change { method, path, body }
}

fn sorted<'a>(items: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut v: Vec<&str> = items.collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// `deployctl-<ports>`, made unique among the existing server names.
fn server_name<'a>(listen: &[String], existing: Option<impl Iterator<Item = &'a str>>) -> String {
    let ports: Vec<String> = listen
        .iter()
        .map(|l| {
            l.rsplit_once(':')
                .map_or(l.as_str(), |(_, p)| p)
                .to_string()
        })
        .collect();
    let base = format!("deployctl-{}", ports.join("-"));
    let taken: Vec<&str> = existing.into_iter().flatten().collect();
    let mut name = base.clone();
    let mut n = 2;
    while taken.contains(&name.as_str()) {
        name = format!("{base}-{n}");
        n += 1;
    }
    name
}

/// The requests Caddy has in flight to `dial`, from `GET /reverse_proxy/upstreams`; `None`
/// when Caddy does not list it (no handler names it any more).
pub fn in_flight(upstreams: &Value, dial: &str) -> Option<u64> {
    upstreams
        .as_array()?
        .iter()
        .find(|u| u.get("address").and_then(Value::as_str) == Some(dial))?
        .get("num_requests")?
        .as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    const ID: &str = "deployctl-acme-prod-web";

    fn upstream(dial: &str, draining: Option<&str>) -> Handling {
        Handling::Upstream {
            dial: dial.into(),
            draining: draining.map(str::to_owned),
        }
    }

    #[test]
    fn routes_round_trip_through_their_json() {
        let hosts = vec!["app.example.com".to_string()];
        let cases = [
            upstream("172.17.0.2:8080", None),
            upstream("172.17.0.3:8080", Some("172.17.0.2:8080")),
            Handling::Maintenance {
                message: "back at {env.HOME} \\o/".into(),
                retry_after: Duration::from_secs(120),
            },
        ];
        for h in cases {
            let r = route(ID, &hosts, &h);
            assert_eq!(handling_of(&r), Some(h.clone()), "{r}");
        }
        expect![[r#"{"@id":"deployctl-acme-prod-web","handle":[{"body":"back \\{env.HOME\\} \\\\o/","handler":"static_response","headers":{"Cache-Control":["no-store"],"Content-Type":["text/plain; charset=utf-8"],"Retry-After":["60"]},"status_code":503}],"terminal":true}"#]]
        .assert_eq(
            &route(
                ID,
                &[],
                &Handling::Maintenance {
                    message: "back {env.HOME} \\o/".into(),
                    retry_after: Duration::from_secs(60),
                },
            )
            .to_string(),
        );
        assert_eq!(
            handling_of(&json!({"handle": [{"handler": "file_server"}]})),
            None
        );
    }

    #[test]
    fn a_route_goes_over_ours_or_into_the_server_on_its_addresses_or_a_new_one() {
        let listen = vec!["127.0.0.1:8443".to_string()];
        let r = json!({ "@id": ID });
        let theirs = json!({"apps": {"http": {"servers": {
            "srv0": { "listen": [":443"], "routes": [{"@id": "mine"}] },
            "deployctl-8443": { "listen": [":9999"] },
        }}}});
        let ours = json!({"apps": {"http": {"servers": {
            "srv0": { "listen": [":443"], "routes": [{ "@id": ID }] },
        }}}});
        let same_listen = json!({"apps": {"http": {"servers": {
            "site": { "listen": ["127.0.0.1:8443"], "routes": [] },
        }}}});
        let cases = [
            ("no config at all", Value::Null),
            ("an empty config", json!({})),
            ("apps without http", json!({"apps": {"tls": {}}})),
            (
                "http without servers",
                json!({"apps": {"http": {"grace_period": "5s"}}}),
            ),
            ("other servers only", theirs),
            ("our route exists", ours),
            ("a server on our listen", same_listen),
        ];
        let out: String = cases
            .iter()
            .map(|(what, config)| {
                let c = place(config, ID, &listen, r.clone());
                format!("{what:<24} {} {} {}\n", c.method, c.path, c.body)
            })
            .collect();
        expect![[r#"
            no config at all         POST /config/ {"apps":{"http":{"servers":{"deployctl-8443":{"listen":["127.0.0.1:8443"],"routes":[{"@id":"deployctl-acme-prod-web"}]}}}}}
            an empty config          PUT /config/apps {"http":{"servers":{"deployctl-8443":{"listen":["127.0.0.1:8443"],"routes":[{"@id":"deployctl-acme-prod-web"}]}}}}
            apps without http        PUT /config/apps/http {"servers":{"deployctl-8443":{"listen":["127.0.0.1:8443"],"routes":[{"@id":"deployctl-acme-prod-web"}]}}}
            http without servers     PUT /config/apps/http/servers {"deployctl-8443":{"listen":["127.0.0.1:8443"],"routes":[{"@id":"deployctl-acme-prod-web"}]}}
            other servers only       PUT /config/apps/http/servers/deployctl-8443-2 {"listen":["127.0.0.1:8443"],"routes":[{"@id":"deployctl-acme-prod-web"}]}
            our route exists         PATCH /id/deployctl-acme-prod-web {"@id":"deployctl-acme-prod-web"}
            a server on our listen   POST /config/apps/http/servers/site/routes {"@id":"deployctl-acme-prod-web"}
        "#]].assert_eq(&out);
    }

    #[test]
    fn in_flight_counts_are_read_per_address() {
        let up = json!([
            {"address": "172.17.0.2:8080", "num_requests": 3, "fails": 0},
            {"address": "172.17.0.3:8080", "num_requests": 0, "fails": 0},
        ]);
        assert_eq!(in_flight(&up, "172.17.0.2:8080"), Some(3));
        assert_eq!(in_flight(&up, "172.17.0.3:8080"), Some(0));
        assert_eq!(in_flight(&up, "172.17.0.9:8080"), None);
        assert_eq!(in_flight(&Value::Null, "172.17.0.2:8080"), None);
    }

    #[test]
    fn has_id_looks_everywhere() {
        let config =
            json!({"apps": {"http": {"servers": {"a": {"routes": [{"handle": [{"@id": "x"}]}]}}}}});
        assert!(has_id(&config, "x"));
        assert!(!has_id(&config, "y"));
    }
}
