//! `deployctl maintenance on|off --env E [--service S] [--message TEXT]` (README, "Behind
//! Caddy"): a signed maintenance order to every host of the env; the proxied services' routes
//! answer 503 with the message and `Retry-After`, or send requests to the serving containers
//! again. No container changes.
//!
//! Gather (config, each host's status) → decide (pure: which services, the order per host) →
//! sign, submit and follow each host → summarize.

use std::collections::BTreeMap;
use std::time::Instant;

use proto::order::{self, Action, ImageRef, MaintenanceSpec, Order, ServiceSpec};
use proto::wire::{AgentStatus, OutcomeKind};
use proto::{Timestamp, accept};

use super::{find_env, issued_by, load_signer};
use crate::config::DeployConfig;
use crate::connector::{Transport, connect_all, report_connections};
use crate::output::{MaintenanceHost, MaintenanceSummary, Message, Output, Summary, SummaryBody};
use crate::transport::{JobEnd, Peer};
use crate::{Error, ExitClass};

/// What the command line asks.
#[derive(Debug, Clone)]
pub struct MaintenanceArgs<'a> {
    pub env: &'a str,
    pub on: bool,
    pub service: Option<&'a str>,
    pub message: Option<String>,
}

pub async fn maintenance(
    cfg: &DeployConfig,
    args: MaintenanceArgs<'_>,
    out: &dyn Output,
) -> Result<ExitClass, Error> {
    let started = Instant::now();
    let env = find_env(cfg, args.env)?;
    let services = pick_services(&cfg.services, args.service)?;
    let signer = load_signer(env).await?;
    let spec = MaintenanceSpec {
        on: args.on,
        message: args.message.clone().filter(|_| args.on),
        retry_after: std::time::Duration::from_secs(60),
    };
    let results = connect_all(&Transport::for_env(env), &env.name, &env.hosts).await;
    report_connections(out, &env.hosts, &results);
    let mut hosts = Vec::new();
    for (host, conn) in env.hosts.iter().zip(results) {
        let name = host.name.clone();
        let mut conn = match conn {
            Ok(c) => c,
            Err(why) => {
                hosts.push(MaintenanceHost::failed(
                    &name,
                    OutcomeKind::Failed,
                    why.to_string(),
                ));
                continue;
            }
        };
        let status = match conn.status().await {
            Ok(s) => s,
            Err(e) => {
                hosts.push(MaintenanceHost::failed(
                    &name,
                    OutcomeKind::Failed,
                    format!("status: {e}"),
                ));
                continue;
            }
        };
        let order = match maintenance_order(cfg, &conn.peer, &services, &status, spec.clone()) {
            Ok(o) => o,
            Err(why) => {
                hosts.push(MaintenanceHost::refused(&name, why));
                continue;
            }
        };
        if let Err(why) = accept::check_maintenance_shape(&order) {
            hosts.push(MaintenanceHost::refused(&name, why));
            continue;
        }
        let signed = signer
            .sign_order(&order)
            .await
            .map_err(|e| Error::Refused(format!("signing the order: {e}")))?;
        out.emit(&Message::Submitted {
            host: name.clone(),
            order_id: order.order_id.clone(),
            action: Action::Maintenance,
            image: order.image.clone(),
            images: order.images.clone(),
            run_migration: false,
        });
        let mut on_event = |job: &proto::wire::JobEvent| {
            out.emit(&Message::Job {
                host: name.clone(),
                job: job.clone(),
            })
        };
        hosts.push(match conn.submit(signed, &mut on_event).await {
            Ok(JobEnd::Outcome(outcome)) => {
                let host = MaintenanceHost {
                    host: name.clone(),
                    result: Some(outcome.kind),
                    refused: false,
                    reason: outcome.reason.clone(),
                };
                out.emit(&Message::Outcome {
                    host: name.clone(),
                    outcome,
                });
                host
            }
            Ok(JobEnd::Refused(refusal)) => {
                let reason = format!("{}: {}", refusal.kind, refusal.message);
                out.emit(&Message::Refused {
                    host: name.clone(),
                    refusal,
                });
                MaintenanceHost::refused(&name, reason)
            }
            Err(e) => MaintenanceHost::failed(&name, OutcomeKind::Failed, e.to_string()),
        });
    }
    let summary = Summary::new(
        "maintenance",
        SummaryBody::Maintenance(MaintenanceSummary {
            env: env.name.clone(),
            on: args.on,
            services: services.keys().cloned().collect(),
            message: spec.on.then(|| spec.message().to_string()),
            hosts,
            elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        }),
    );
    let exit = summary.exit();
    out.emit(&Message::Summary(summary));
    Ok(exit)
}

/// The service `--service` names, else every service behind a proxy.
fn pick_services(
    services: &BTreeMap<String, ServiceSpec>,
    wanted: Option<&str>,
) -> Result<BTreeMap<String, ServiceSpec>, Error> {
    let proxied: BTreeMap<String, ServiceSpec> = services
        .iter()
        .filter(|(_, s)| s.proxy.is_some())
        .map(|(n, s)| (n.clone(), s.clone()))
        .collect();
    match wanted {
        Some(w) if !services.contains_key(w) => Err(Error::Usage(format!(
            "no service {w:?} (known: {})",
            services.keys().cloned().collect::<Vec<_>>().join(", ")
        ))),
        Some(w) => proxied
            .get_key_value(w)
            .map(|(n, s)| BTreeMap::from([(n.clone(), s.clone())]))
            .ok_or_else(|| {
                Error::Usage(format!(
                    "service {w} has no `proxy`: the maintenance page is served by Caddy in \
                     front of a service (README, \"Behind Caddy\")"
                ))
            }),
        None if proxied.is_empty() => Err(Error::Usage(
            "no service in deploy.toml has a `proxy`: the maintenance page is served by Caddy \
             in front of a service (README, \"Behind Caddy\")"
                .into(),
        )),
        None => Ok(proxied),
    }
}

/// The maintenance order for one host: its services with the images they run there (an order
/// always names what runs; the agent changes no container either way).
fn maintenance_order(
    cfg: &DeployConfig,
    peer: &Peer,
    services: &BTreeMap<String, ServiceSpec>,
    status: &AgentStatus,
    spec: MaintenanceSpec,
) -> Result<Order, String> {
    let mut running: BTreeMap<String, ImageRef> = BTreeMap::new();
    for name in services.keys() {
        let image = status
            .services
            .iter()
            .find(|s| s.app == cfg.app && s.service == *name)
            .and_then(|s| s.image.clone())
            .ok_or_else(|| {
                format!("service {name} was never deployed here: there is no route to change")
            })?;
        running.insert(name.clone(), image);
    }
    let mut images = running.into_iter();
    let (_, image) = images
        .next()
        .ok_or_else(|| "no service to change".to_string())?;
    let images: BTreeMap<String, ImageRef> = images.filter(|(_, i)| *i != image).collect();
    let issued_at = Timestamp::now();
    Ok(Order {
        order_id: order::new_id(),
        rollout_id: order::new_id(),
        env: peer.env.clone(),
        host: peer.host.clone(),
        host_key: peer.host_key.clone(),
        issued_at,
        not_after: issued_at.plus(order::DEFAULT_VALIDITY),
        issued_by: issued_by(),
        action: Action::Maintenance,
        image,
        images,
        migrate_image: None,
        revision: None,
        reference: if spec.on {
            "maintenance on"
        } else {
            "maintenance off"
        }
        .to_string(),
        refs: BTreeMap::new(),
        tags: BTreeMap::new(),
        run_migration: false,
        rerun_migration: false,
        app: cfg.app.clone(),
        services: services.clone(),
        migrate: None,
        exec: None,
        maintenance: Some(spec),
        proposal: None,
        override_freeze: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(proxied: bool) -> ServiceSpec {
        let json = if proxied {
            r#"{"health":{"port":8080},"proxy":{"caddy":"localhost:2019","listen":[":443"]}}"#
        } else {
            "{}"
        };
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn maintenance_names_proxied_services_only() {
        let services = BTreeMap::from([
            ("web".to_string(), spec(true)),
            ("api".to_string(), spec(true)),
            ("worker".to_string(), spec(false)),
        ]);
        let names = |r: Result<BTreeMap<String, ServiceSpec>, Error>| match r {
            Ok(m) => m.keys().cloned().collect::<Vec<_>>().join(","),
            Err(e) => e.to_string(),
        };
        assert_eq!(names(pick_services(&services, None)), "api,web");
        assert_eq!(names(pick_services(&services, Some("web"))), "web");
        assert!(names(pick_services(&services, Some("worker"))).contains("has no `proxy`"));
        assert!(names(pick_services(&services, Some("nope"))).contains("no service \"nope\""));
        let plain = BTreeMap::from([("worker".to_string(), spec(false))]);
        assert!(names(pick_services(&plain, None)).contains("no service in deploy.toml"));
    }
}
