//! A real Caddy (Debian's `caddy`) as the reverse proxy in front of a service, for the tests of
//! zero-downtime deploys: started with nothing but its admin API, on a free loopback port, so
//! whatever serves traffic through it (a server, a route) is what the code under test, or the
//! test itself, put there through that API.
//!
//! It never needs ports 80, 443 or 2019: the admin API listens where the config says, the
//! servers the tests add disable automatic HTTPS (which would bind :80 for redirects), and its
//! data and config dirs (certificates, the autosaved config) are in its own temp dir. Dropping
//! a [`Caddy`] kills it.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::command::{await_server, stop_child};
use crate::error::{Error, IoContext, Result};
use crate::net::{HttpResponse, free_port, http_send};

const START_ATTEMPTS: usize = 5;
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Any one admin API request: a config change restarts listeners, which is quick on loopback.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// `127.0.0.1:<a free port>`, for a server's `listen` (or an admin address nothing serves).
pub fn free_listen_addr() -> Result<String> {
    Ok(format!("127.0.0.1:{}", free_port()?))
}

/// A running `caddy run`, its admin API on `127.0.0.1:<port>`.
pub struct Caddy {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for Caddy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caddy")
            .field("admin", &self.admin_addr())
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl Caddy {
    /// Starts Caddy whose whole config is `{"admin": {"listen": "127.0.0.1:<port>"}}` (no
    /// `apps`), and waits until its admin API answers `GET /config/`.
    pub fn start() -> Result<Caddy> {
        let dir = tempfile::Builder::new()
            .prefix("deployctl-caddy-")
            .tempdir()
            .ctx(|| "creating a temp dir".into())?;
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port()?;
            match try_start(dir.path(), port)? {
                Ok(child) => return Ok(Caddy { child, port, dir }),
                // Most likely another process took the port between our probe and the bind.
                Err(why) => last = why,
            }
        }
        Err(Error::Unexpected(format!(
            "caddy did not start after {START_ATTEMPTS} attempts: {last}"
        )))
    }

    /// `127.0.0.1:PORT`, as `proxy = { caddy = … }` and `[policy] proxies` name it.
    pub fn admin_addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr())
    }

    /// One admin API request (`path` from the root, e.g. `/id/x`), JSON body if any; any status.
    pub fn api(&self, method: &str, path: &str, body: Option<&Value>) -> Result<HttpResponse> {
        let url = format!("{}{path}", self.admin_url());
        let bytes = body.map(Value::to_string);
        let headers: &[(&str, &str)] = if bytes.is_some() {
            &[("Content-Type", "application/json")]
        } else {
            &[]
        };
        http_send(
            method,
            &url,
            headers,
            bytes.as_deref().map(str::as_bytes),
            API_TIMEOUT,
        )
    }

    /// [`Caddy::api`], failing unless it answers 2xx; the body parsed (`null` when empty).
    pub fn api_ok(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let reply = self.api(method, path, body)?;
        if !(200..300).contains(&reply.status) {
            return Err(Error::Unexpected(format!(
                "caddy: {method} {path} answered {}: {}",
                reply.status,
                reply.body.trim()
            )));
        }
        if reply.body.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&reply.body).map_err(|e| {
            Error::Unexpected(format!(
                "caddy: {method} {path}: not JSON ({e}): {}",
                reply.body
            ))
        })
    }

    /// The whole running config (`GET /config/`).
    pub fn config(&self) -> Result<Value> {
        self.api_ok("GET", "/config/", None)
    }

    /// The object whose `@id` is `id` (`GET /id/<id>`), `None` when there is none.
    pub fn by_id(&self, id: &str) -> Result<Option<Value>> {
        let reply = self.api("GET", &format!("/id/{id}"), None)?;
        if reply.status == 404 {
            return Ok(None);
        }
        self.api_ok("GET", &format!("/id/{id}"), None).map(Some)
    }

    /// Requests in flight to `upstream` (`host:port`) as `GET /reverse_proxy/upstreams` counts
    /// them; `None` when Caddy lists no such upstream. Caddy lists only the upstreams of its
    /// current config: one a route no longer names drops out even while requests to it run.
    pub fn in_flight(&self, upstream: &str) -> Result<Option<u64>> {
        let listed = self.api_ok("GET", "/reverse_proxy/upstreams", None)?;
        Ok(listed.as_array().and_then(|all| {
            all.iter()
                .find(|u| u["address"] == upstream)
                .and_then(|u| u["num_requests"].as_u64())
        }))
    }

    /// Adds (or replaces) `apps.http.servers.<name>`, creating `apps` and `http` when absent
    /// (the admin API cannot traverse a path whose parents do not exist).
    pub fn add_server(&self, name: &str, server: Value) -> Result<()> {
        let mut config = self.config()?;
        if !config.is_object() {
            config = json!({});
        }
        // Indexing a missing key of an object makes it an empty object: `apps` and `http` come
        // into being as needed.
        config["apps"]["http"]["servers"][name] = server;
        self.api_ok("POST", "/load", Some(&config)).map(drop)
    }

    /// Everything Caddy logged (JSON lines).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("caddy.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Caddy {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

fn try_start(dir: &Path, port: u16) -> Result<std::result::Result<Child, String>> {
    let admin = format!("127.0.0.1:{port}");
    let config = dir.join("caddy.json");
    std::fs::write(&config, json!({ "admin": { "listen": admin } }).to_string())
        .ctx(|| format!("writing {}", config.display()))?;
    let log_path = dir.join("caddy.log");
    let log = File::create(&log_path).ctx(|| format!("creating {}", log_path.display()))?;
    let log2 = log.try_clone().ctx(|| "cloning a file handle".into())?;
    let child = Command::new("caddy")
        .arg("run")
        .arg("--config")
        .arg(&config)
        .current_dir(dir)
        // Caddy keeps certificates and an autosaved config under these: in the temp dir, not
        // the user's home, so runs never see each other's state.
        .env("HOME", dir)
        .env("XDG_DATA_HOME", dir.join("data"))
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .ctx(|| "starting caddy (apt-get install -y caddy)".into())?;
    let listening = format!("\"address\":\"{admin}\"");
    let url = format!("http://{admin}/config/");
    Ok(await_server(
        child,
        "caddy",
        &log_path,
        START_TIMEOUT,
        // The log line proves the answer comes from our Caddy, not from a process that took the
        // port first.
        |log| match crate::net::http_get(&url, Duration::from_secs(2)) {
            Ok(r) if r.status == 200 && log.contains(&listening) => Ok(()),
            Ok(r) => Err(format!("GET /config/ answered {}: {}", r.status, r.body)),
            Err(e) => Err(e.to_string()),
        },
    ))
}

/// A server listening on `listen` with these routes, automatic HTTPS off (its redirects would
/// bind :80, and the tests' servers are plain HTTP on loopback).
pub fn server(listen: &str, routes: Vec<Value>) -> Value {
    json!({
        "listen": [listen],
        "routes": routes,
        "automatic_https": { "disable": true },
    })
}

/// A route with this `@id` proxying every request to `upstream` (`host:port`).
pub fn reverse_proxy_route(id: &str, upstream: &str) -> Value {
    json!({
        "@id": id,
        "handle": [{ "handler": "reverse_proxy", "upstreams": [{ "dial": upstream }] }],
    })
}

/// A route with this `@id` answering `body` to requests whose path matches `path`.
pub fn static_route(id: &str, path: &str, body: &str) -> Value {
    json!({
        "@id": id,
        "match": [{ "path": [path] }],
        "handle": [{ "handler": "static_response", "body": body }],
        "terminal": true,
    })
}

/// Every upstream `dial` address anywhere in a piece of config (a route, a server…), in order:
/// what a route proxies to, however its handlers are nested (`subroute`s and all).
pub fn dials(config: &Value) -> Vec<String> {
    let mut out = Vec::new();
    collect_dials(config, &mut out);
    out
}

fn collect_dials(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("dial", Value::String(addr)) => out.push(addr.clone()),
                    _ => collect_dials(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_dials(v, out)),
        _ => {}
    }
}

/// The server listening on `listen` in a whole config, and its name.
pub fn server_listening_on<'a>(config: &'a Value, listen: &str) -> Option<(&'a str, &'a Value)> {
    config
        .pointer("/apps/http/servers")?
        .as_object()?
        .iter()
        .find(|(_, s)| {
            s["listen"]
                .as_array()
                .is_some_and(|l| l.iter().any(|a| a.as_str() == Some(listen)))
        })
        .map(|(name, s)| (name.as_str(), s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dials_are_found_however_deep() {
        let cases: &[(Value, &[&str])] = &[
            (
                reverse_proxy_route("x", "10.0.0.2:8080"),
                &["10.0.0.2:8080"],
            ),
            (
                json!({"handle": [{"handler": "subroute", "routes": [
                    {"handle": [{"handler": "reverse_proxy",
                                  "upstreams": [{"dial": "a:1"}, {"dial": "b:2"}]}]}
                ]}]}),
                &["a:1", "b:2"],
            ),
            (static_route("y", "/other", "other"), &[]),
            (json!({"dial": 5}), &[]),
            (Value::Null, &[]),
        ];
        for (config, want) in cases {
            assert_eq!(dials(config), *want, "{config}");
        }
    }

    #[test]
    fn servers_are_found_by_listen_address() {
        let config = json!({"apps": {"http": {"servers": {
            "a": server("127.0.0.1:1", vec![]),
            "b": {"listen": ["127.0.0.1:3", "127.0.0.1:2"]},
        }}}});
        let name = |listen| server_listening_on(&config, listen).map(|(n, _)| n);
        assert_eq!(name("127.0.0.1:1"), Some("a"));
        assert_eq!(name("127.0.0.1:2"), Some("b"));
        assert_eq!(name("127.0.0.1:4"), None);
        assert_eq!(
            server_listening_on(&json!({"admin": {}}), "127.0.0.1:1"),
            None
        );
    }
}
