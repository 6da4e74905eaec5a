//! `deployctl logs --env E [--host H] [--service S] [-n N]`: the containers' last log lines.

use futures_util::future::join_all;

use super::find_env;
use crate::config::{DeployConfig, EnvConfig, HostSpec};
use crate::connector::{HostError, Transport, connect_all};
use crate::output::{LogsSummary, Message, Output, Summary, SummaryBody};
use crate::{Error, ExitClass};

pub async fn logs(
    cfg: &DeployConfig,
    env_name: &str,
    host: Option<&str>,
    service: Option<&str>,
    n: usize,
    out: &dyn Output,
) -> Result<ExitClass, Error> {
    let env = find_env(cfg, env_name)?;
    let hosts = select(cfg, env, host, service)?;
    let connector = Transport::for_env(env);
    let results = connect_all(&connector, &env.name, &hosts).await;
    let answers = join_all(results.into_iter().map(|r| async move {
        let mut conn = r?;
        conn.logs(service, n).await.map_err(HostError::from)
    }))
    .await;
    let mut unreachable = 0;
    for (h, answer) in hosts.iter().zip(answers) {
        match answer {
            Ok(all) => {
                for l in all.into_iter().filter(|l| l.app == cfg.app) {
                    out.emit(&Message::Logs {
                        host: h.name.clone(),
                        service: l.service,
                        container: l.container,
                        lines: l.lines,
                    });
                }
            }
            Err(error) => {
                unreachable += 1;
                out.emit(&Message::HostError {
                    host: h.name.clone(),
                    kind: Some(error.kind),
                    error: error.message,
                });
            }
        }
    }
    let summary = Summary::new(
        "logs",
        SummaryBody::Logs(LogsSummary {
            env: env.name.clone(),
            hosts: hosts.len(),
            unreachable,
        }),
    );
    let exit = summary.exit();
    out.emit(&Message::Summary(summary));
    Ok(exit)
}

/// The hosts asked: all of the env's, or the one `--host` names; `--service` must exist.
fn select(
    cfg: &DeployConfig,
    env: &EnvConfig,
    host: Option<&str>,
    service: Option<&str>,
) -> Result<Vec<HostSpec>, Error> {
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
    let hosts: Vec<HostSpec> = env
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
    Ok(hosts)
}
