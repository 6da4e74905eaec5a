//! `deployctl logs --env E [--host H] [--service S] [-n N]`: the containers' last log lines.

use futures_util::future::join_all;
use serde_json::json;

use super::{connect_options, find_env};
use crate::config::{DeployConfig, EnvConfig};
use crate::output;
use crate::transport;
use crate::{Error, ExitClass};

pub async fn logs(
    cfg: &DeployConfig,
    env_name: &str,
    host: Option<&str>,
    service: Option<&str>,
    n: usize,
    json: bool,
) -> Result<ExitClass, Error> {
    let env = find_env(cfg, env_name)?;
    if let Some(s) = service
        && !cfg.services.contains_key(s)
    {
        let known: Vec<&str> = cfg.services.keys().map(String::as_str).collect();
        return Err(Error::Usage(format!(
            "no service {s:?} in {} (known: {})",
            cfg.path.display(),
            known.join(", ")
        )));
    }
    let hosts: Vec<_> = env
        .hosts
        .iter()
        .filter(|h| host.is_none_or(|want| h.name == want))
        .cloned()
        .collect();
    if hosts.is_empty() {
        let known: Vec<&str> = env.hosts.iter().map(|h| h.name.as_str()).collect();
        return Err(Error::Usage(format!(
            "no host {:?} in env {} (known: {})",
            host.unwrap_or_default(),
            env.name,
            known.join(", ")
        )));
    }
    let selected = EnvConfig {
        hosts,
        ..env.clone()
    };
    let opts = connect_options(&selected);
    let results = super::connect_all(&selected, &opts, &output::Silent).await;
    let answers = join_all(results.into_iter().map(|r| async move {
        let mut conn = r?;
        conn.logs(service, n)
            .await
            .map_err(|e: transport::TransportError| e.to_string())
    }))
    .await;
    let mut failures = 0;
    for (h, answer) in selected.hosts.iter().zip(answers) {
        match answer {
            Ok(all) => {
                for l in all.into_iter().filter(|l| l.app == cfg.app) {
                    if json {
                        output::print_json(
                            &json!({"event": "logs", "host": h.name, "service": l.service, "container": l.container, "lines": l.lines}),
                        );
                    } else {
                        println!("==> {} {} ({}) <==", h.name, l.service, l.container);
                        for line in &l.lines {
                            println!("{line}");
                        }
                    }
                }
            }
            Err(e) => {
                failures += 1;
                if json {
                    output::print_json(&json!({"event": "host_error", "host": h.name, "error": e}));
                } else {
                    eprintln!("{}: unreachable: {e}", h.name);
                }
            }
        }
    }
    if json {
        output::print_json(
            &json!({"event": "summary", "command": "logs", "env": env.name, "unreachable": failures, "exit_code": if failures == selected.hosts.len() { 3 } else { 0 }}),
        );
    }
    if failures == selected.hosts.len() {
        return Err(Error::Refused(format!(
            "no host of {} could be reached",
            env.name
        )));
    }
    Ok(ExitClass::Success)
}
