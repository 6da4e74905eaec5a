//! `deployctl status --env E`: what each host runs now. Unreachable hosts are shown, not fatal.

use futures_util::future::join_all;
use proto::wire::{AgentStatus, Health};
use serde_json::json;

use super::{connect_all, connect_options, find_env};
use crate::config::DeployConfig;
use crate::output::{self, table};
use crate::{Error, ExitClass};

pub async fn status(cfg: &DeployConfig, env_name: &str, json: bool) -> Result<ExitClass, Error> {
    let env = find_env(cfg, env_name)?;
    let opts = connect_options(env);
    // Connection progress would only clutter the table; failures are shown in it.
    let mut results = connect_all(env, &opts, &output::Silent).await;
    let answers: Vec<Result<(String, String, AgentStatus), String>> =
        join_all(results.iter_mut().map(|r| async move {
            match r {
                Ok(conn) => {
                    let s = conn.status().await.map_err(|e| e.to_string())?;
                    Ok((conn.peer.host.clone(), conn.peer.agent_version.clone(), s))
                }
                Err(e) => Err(e.clone()),
            }
        }))
        .await;

    let mut digests = std::collections::BTreeSet::new();
    let mut all_healthy = true;
    let mut reachable = 0;
    let mut rows = Vec::new();
    for (host, answer) in env.hosts.iter().zip(&answers) {
        match answer {
            Ok((agent_host, version, status)) => {
                reachable += 1;
                let services: Vec<_> = status
                    .services
                    .iter()
                    .filter(|s| s.app == cfg.app)
                    .collect();
                for name in cfg.services.keys() {
                    match services.iter().find(|s| &s.service == name) {
                        Some(s) => {
                            digests.insert(s.image.as_ref().map(|i| i.digest().to_string()));
                            all_healthy &= s.health == Health::Healthy;
                        }
                        None => {
                            digests.insert(None);
                            all_healthy = false;
                        }
                    }
                }
                if json {
                    output::print_json(&json!({
                        "event": "host_status",
                        "host": host.name,
                        "reachable": true,
                        "agent_host": agent_host,
                        "agent_version": version,
                        "uptime_secs": status.uptime_secs,
                        "services": services,
                        "running": status.running,
                    }));
                }
                if services.is_empty() {
                    rows.push(vec![
                        host.name.clone(),
                        "yes".into(),
                        version.clone(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        "missing".into(),
                        "-".into(),
                        "nothing deployed".into(),
                    ]);
                }
                for s in services {
                    rows.push(vec![
                        host.name.clone(),
                        "yes".into(),
                        version.clone(),
                        s.service.clone(),
                        s.reference.clone().unwrap_or_else(|| "-".into()),
                        s.image
                            .as_ref()
                            .map(|i| i.short_digest().to_string())
                            .unwrap_or_else(|| "-".into()),
                        s.health.to_string(),
                        s.since.to_string(),
                        s.last_outcome
                            .map(|o| o.to_string())
                            .unwrap_or_else(|| "-".into()),
                    ]);
                }
                if !status.running.is_empty() {
                    for h in &status.running {
                        rows.push(vec![
                            host.name.clone(),
                            "yes".into(),
                            version.clone(),
                            "*".into(),
                            "-".into(),
                            "-".into(),
                            "busy".into(),
                            h.since.to_string(),
                            format!("running {}", crate::rollout::describe_holder(h)),
                        ]);
                    }
                }
            }
            Err(e) => {
                all_healthy = false;
                if json {
                    output::print_json(
                        &json!({"event": "host_status", "host": host.name, "reachable": false, "error": e}),
                    );
                }
                rows.push(vec![
                    host.name.clone(),
                    "NO".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    e.clone(),
                ]);
            }
        }
    }
    let consistent = reachable == env.hosts.len() && digests.len() == 1 && !digests.contains(&None);
    if json {
        output::print_json(&json!({
            "event": "summary",
            "command": "status",
            "env": env.name,
            "hosts": env.hosts.len(),
            "reachable": reachable,
            "consistent": consistent,
            "healthy": all_healthy,
            "digests": digests.iter().flatten().collect::<Vec<_>>(),
            "exit_code": 0,
        }));
    } else {
        print!(
            "{}",
            table(
                &[
                    "HOST",
                    "REACHABLE",
                    "AGENT",
                    "SERVICE",
                    "REF",
                    "DIGEST",
                    "HEALTH",
                    "SINCE",
                    "LAST OUTCOME"
                ],
                &rows
            )
        );
        let verdict = match (consistent, all_healthy) {
            (true, true) => "one digest everywhere, all healthy".to_string(),
            (true, false) => "one digest everywhere, NOT all healthy".to_string(),
            (false, _) if reachable < env.hosts.len() => format!(
                "{} of {} host(s) unreachable",
                env.hosts.len() - reachable,
                env.hosts.len()
            ),
            (false, _) => format!("NOT consistent: {} different digests", digests.len()),
        };
        println!("{}: {verdict}", env.name);
    }
    Ok(ExitClass::Success)
}
