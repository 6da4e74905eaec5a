//! `deployctl history --env E [-n N]`: the hosts' journals for this app, newest first.

use futures_util::future::join_all;
use proto::wire::HistoryEntry;
use serde_json::json;

use super::{connect_all, connect_options, find_env};
use crate::config::DeployConfig;
use crate::output::{self, table};
use crate::{Error, ExitClass};

pub async fn history(
    cfg: &DeployConfig,
    env_name: &str,
    n: usize,
    json: bool,
) -> Result<ExitClass, Error> {
    let env = find_env(cfg, env_name)?;
    let opts = connect_options(env);
    let mut results = connect_all(env, &opts, &output::Silent).await;
    // Other apps may share the hosts; ask for more so `n` of this app's remain.
    let depth = n.saturating_mul(4).max(50);
    let answers = join_all(results.iter_mut().map(|r| async move {
        match r {
            Ok(conn) => conn.history(depth).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.clone()),
        }
    }))
    .await;
    let mut merged: Vec<(&str, HistoryEntry)> = Vec::new();
    let mut unreachable = Vec::new();
    for (host, answer) in env.hosts.iter().zip(answers) {
        match answer {
            Ok(entries) => merged.extend(
                entries
                    .into_iter()
                    .filter(|e| e.app == cfg.app)
                    .take(n)
                    .map(|e| (host.name.as_str(), e)),
            ),
            Err(e) => unreachable.push((host.name.clone(), e)),
        }
    }
    merged.sort_by(|(ha, a), (hb, b)| {
        (b.accepted_at, &b.order_id, hb).cmp(&(a.accepted_at, &a.order_id, ha))
    });
    if json {
        for (host, entry) in &merged {
            output::print_json(&json!({"event": "history", "host": host, "entry": entry}));
        }
        for (host, e) in &unreachable {
            output::print_json(&json!({"event": "host_error", "host": host, "error": e}));
        }
        output::print_json(&json!({
            "event": "summary",
            "command": "history",
            "env": env.name,
            "entries": merged.len(),
            "unreachable": unreachable.iter().map(|(h, _)| h).collect::<Vec<_>>(),
            "exit_code": if unreachable.len() == env.hosts.len() { 3 } else { 0 },
        }));
    } else {
        let rows: Vec<Vec<String>> = merged
            .iter()
            .map(|(host, e)| {
                vec![
                    e.accepted_at.to_string(),
                    host.to_string(),
                    e.action.to_string(),
                    e.reference.clone(),
                    e.image.short_digest().to_string(),
                    e.outcome
                        .map(|o| o.to_string())
                        .unwrap_or_else(|| "running".into()),
                    e.duration_ms
                        .map(|ms| format!("{:.1}s", ms as f64 / 1000.0))
                        .unwrap_or_else(|| "-".into()),
                    if e.run_migration {
                        "yes".into()
                    } else {
                        "-".into()
                    },
                    e.issued_by.clone(),
                    e.reason.clone().unwrap_or_default(),
                ]
            })
            .collect();
        print!(
            "{}",
            table(
                &[
                    "WHEN",
                    "HOST",
                    "ACTION",
                    "REF",
                    "DIGEST",
                    "OUTCOME",
                    "TOOK",
                    "MIGRATION",
                    "BY",
                    "REASON"
                ],
                &rows
            )
        );
        for (host, e) in &unreachable {
            println!("{host}: unreachable: {e}");
        }
    }
    if unreachable.len() == env.hosts.len() {
        return Err(Error::Refused(format!(
            "no host of {} could be reached",
            env.name
        )));
    }
    Ok(ExitClass::Success)
}
