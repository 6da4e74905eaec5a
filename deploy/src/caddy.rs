//! The host's Caddy through its admin API: the only code that speaks to it. What to change is
//! decided in `route.rs`; this module reads the config, sends one change at a time and reads
//! the upstreams' request counts.

use std::time::Duration;

use serde_json::Value;

use crate::route::Change;

/// How long one admin API call may take: Caddy answers from memory, and a config change that
/// takes longer than this (TLS certificates are obtained in the background) is stuck.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the reachability check before an order waits.
pub const REACH_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum CaddyError {
    #[error("cannot reach Caddy's admin API at {addr}: {why}")]
    Unreachable { addr: String, why: String },
    #[error("Caddy's admin API at {addr} refused {method} {path}: {status} {body}")]
    Refused {
        addr: String,
        method: String,
        path: String,
        status: u16,
        body: String,
    },
    #[error("Caddy's admin API at {addr} answered {path} with something that is not JSON: {why}")]
    Garbled {
        addr: String,
        path: String,
        why: String,
    },
}

/// One Caddy admin API (`host:port`, as the service's `proxy.caddy` names it).
pub(crate) struct Caddy<'a> {
    http: &'a reqwest::Client,
    addr: &'a str,
}

impl<'a> Caddy<'a> {
    pub fn new(http: &'a reqwest::Client, addr: &'a str) -> Self {
        Caddy { http, addr }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<(u16, String), CaddyError> {
        let mut req = self
            .http
            .request(method.clone(), self.url(path))
            .timeout(timeout);
        if let Some(b) = body {
            req = req
                .header("Content-Type", "application/json")
                .body(b.to_string());
        }
        let unreachable = |e: reqwest::Error| CaddyError::Unreachable {
            addr: self.addr.to_string(),
            why: e.to_string(),
        };
        let resp = req.send().await.map_err(unreachable)?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(unreachable)?;
        Ok((status, text))
    }

    async fn get_json(&self, path: &str, timeout: Duration) -> Result<Option<Value>, CaddyError> {
        let (status, text) = self.call(reqwest::Method::GET, path, None, timeout).await?;
        match status {
            200 => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| CaddyError::Garbled {
                    addr: self.addr.to_string(),
                    path: path.to_string(),
                    why: e.to_string(),
                }),
            // An unknown `@id` or a path that does not exist.
            400 | 404 => Ok(None),
            _ => Err(self.refused("GET", path, status, text)),
        }
    }

    fn refused(&self, method: &str, path: &str, status: u16, body: String) -> CaddyError {
        CaddyError::Refused {
            addr: self.addr.to_string(),
            method: method.to_string(),
            path: path.to_string(),
            status,
            body: body.trim().chars().take(500).collect(),
        }
    }

    /// Whether the admin API answers at all.
    pub async fn check_reachable(&self) -> Result<(), CaddyError> {
        self.call(reqwest::Method::GET, "/config/", None, REACH_TIMEOUT)
            .await
            .map(|_| ())
    }

    /// The whole config (`null` when Caddy runs none).
    pub async fn config(&self) -> Result<Value, CaddyError> {
        Ok(self
            .get_json("/config/", CALL_TIMEOUT)
            .await?
            .unwrap_or(Value::Null))
    }

    /// Our route, by its `@id`.
    pub async fn route(&self, id: &str) -> Result<Option<Value>, CaddyError> {
        self.get_json(&format!("/id/{id}"), CALL_TIMEOUT).await
    }

    /// `GET /reverse_proxy/upstreams`: every upstream Caddy knows, with its requests in flight.
    pub async fn upstreams(&self) -> Result<Value, CaddyError> {
        Ok(self
            .get_json("/reverse_proxy/upstreams", CALL_TIMEOUT)
            .await?
            .unwrap_or(Value::Null))
    }

    pub async fn apply(&self, change: &Change) -> Result<(), CaddyError> {
        let method =
            reqwest::Method::from_bytes(change.method.as_bytes()).unwrap_or(reqwest::Method::PATCH);
        let (status, text) = self
            .call(method, &change.path, Some(&change.body), CALL_TIMEOUT)
            .await?;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(self.refused(change.method, &change.path, status, text))
        }
    }
}
