//! A proxied service's route in the host's Caddy, as the executor and the maintenance order
//! use it: switch it to a container (keeping the old one counted while it drains), wait for the
//! drain, put up or take down the maintenance page. The decisions are `route.rs`'s; the calls
//! `caddy.rs`'s.

use std::time::{Duration, Instant};

use proto::ProxySpec;

use crate::caddy::{Caddy, CaddyError};
use crate::plan;
use crate::route::{self, Handling};
use crate::runtime::ContainerInfo;

/// How often the drain looks at the old upstream's requests in flight.
const DRAIN_POLL: Duration = Duration::from_millis(100);

/// One service's route.
pub(crate) struct Proxied<'a> {
    caddy: Caddy<'a>,
    pub id: String,
    pub spec: &'a ProxySpec,
    port: u16,
    network: Option<&'a str>,
}

/// What a switch did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Switched {
    /// The route now sends requests to the container.
    Routed,
    /// Already so: nothing was changed.
    Already,
    /// The route shows the maintenance page, which stays until `maintenance off`.
    InMaintenance,
}

/// How a drain ended.
pub(crate) enum Drained {
    Idle {
        after: Duration,
    },
    /// Caddy no longer lists the address (nothing could have been counted).
    Unknown,
    /// `drain` passed with requests still in flight.
    TimedOut {
        in_flight: u64,
    },
}

impl<'a> Proxied<'a> {
    pub fn new(
        http: &'a reqwest::Client,
        app: &str,
        env: &str,
        service: &str,
        spec: &'a proto::ServiceSpec,
    ) -> Option<Proxied<'a>> {
        let proxy = spec.proxy.as_ref()?;
        Some(Proxied {
            caddy: Caddy::new(http, &proxy.caddy),
            id: proto::order::route_id(app, env, service),
            spec: proxy,
            // Acceptance refuses a proxy without a port to send requests to.
            port: proxy.upstream_port(&spec.health).unwrap_or(80),
            network: spec.network.as_deref(),
        })
    }

    pub fn admin(&self) -> &str {
        &self.spec.caddy
    }

    /// `ip:port` Caddy dials to reach this container.
    pub fn dial(&self, c: &ContainerInfo) -> Option<String> {
        let ip = plan::probe_ip(&c.networks, self.network)?;
        Some(format!("{ip}:{}", self.port))
    }

    /// How the route handles requests now (`None`: there is no route).
    pub async fn handling(&self) -> Result<Option<Handling>, CaddyError> {
        Ok(self
            .caddy
            .route(&self.id)
            .await?
            .as_ref()
            .and_then(route::handling_of))
    }

    /// Sends every new request to `dial` in one config change; `draining` stays named so its
    /// in-flight requests are counted until the next switch drops it. The route is created
    /// where it is missing; a route in maintenance is left showing its page.
    pub async fn switch_to(
        &self,
        dial: &str,
        draining: Option<&str>,
    ) -> Result<Switched, CaddyError> {
        let wanted = Handling::Upstream {
            dial: dial.to_string(),
            draining: draining.map(str::to_owned),
        };
        let existing = self.caddy.route(&self.id).await?;
        match existing.as_ref().and_then(route::handling_of) {
            Some(Handling::Maintenance { .. }) => return Ok(Switched::InMaintenance),
            Some(h) if h == wanted => return Ok(Switched::Already),
            _ => {}
        }
        self.put(&wanted, existing.is_some()).await?;
        Ok(Switched::Routed)
    }

    /// Puts up the maintenance page in place of whatever the route does.
    pub async fn maintenance_on(
        &self,
        message: &str,
        retry_after: Duration,
    ) -> Result<(), CaddyError> {
        let exists = self.caddy.route(&self.id).await?.is_some();
        let page = Handling::Maintenance {
            message: message.to_string(),
            retry_after,
        };
        self.put(&page, exists).await
    }

    /// Sends requests to `dial` again, whatever the route showed.
    pub async fn maintenance_off(&self, dial: &str) -> Result<(), CaddyError> {
        let exists = self.caddy.route(&self.id).await?.is_some();
        let upstream = Handling::Upstream {
            dial: dial.to_string(),
            draining: None,
        };
        self.put(&upstream, exists).await
    }

    async fn put(&self, handling: &Handling, exists: bool) -> Result<(), CaddyError> {
        let body = route::route(&self.id, &self.spec.hosts, handling);
        let change = if exists {
            route::replace(&self.id, body)
        } else {
            // Only a missing route needs the whole config, to find where it goes.
            let config = self.caddy.config().await?;
            route::place(&config, &self.id, &self.spec.listen, body)
        };
        self.caddy.apply(&change).await
    }

    /// Waits until Caddy has no request in flight to `dial`, at most `drain`.
    pub async fn drain(&self, dial: &str) -> Result<Drained, CaddyError> {
        let started = Instant::now();
        loop {
            let upstreams = self.caddy.upstreams().await?;
            match route::in_flight(&upstreams, dial) {
                None => return Ok(Drained::Unknown),
                Some(0) => {
                    return Ok(Drained::Idle {
                        after: started.elapsed(),
                    });
                }
                Some(n) if started.elapsed() >= self.spec.drain => {
                    return Ok(Drained::TimedOut { in_flight: n });
                }
                Some(_) => tokio::time::sleep(DRAIN_POLL).await,
            }
        }
    }

    /// Whether the admin API answers.
    pub async fn check_reachable(&self) -> Result<(), CaddyError> {
        self.caddy.check_reachable().await
    }
}
