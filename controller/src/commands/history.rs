//! `deployctl history --env E [-n N]`: the hosts' journals for this app, newest first.

use futures_util::future::join_all;
use proto::wire::HistoryEntry;

use super::find_env;
use crate::config::DeployConfig;
use crate::connector::{HostError, Transport, connect_all};
use crate::output::{HistorySummary, Message, Output, Summary, SummaryBody};
use crate::{Error, ExitClass};

pub async fn history(
    cfg: &DeployConfig,
    env_name: &str,
    n: usize,
    out: &dyn Output,
) -> Result<ExitClass, Error> {
    let env = find_env(cfg, env_name)?;
    let connector = Transport::for_env(env);
    let results = connect_all(&connector, &env.name, &env.hosts).await;
    // Other apps may share the hosts; ask for more so `n` of this app's remain.
    let depth = n.saturating_mul(4).max(50);
    let answers = join_all(results.into_iter().map(|r| async move {
        let mut conn = r?;
        conn.history(depth).await.map_err(HostError::from)
    }))
    .await;
    let names: Vec<&str> = env.hosts.iter().map(|h| h.name.as_str()).collect();
    let (entries, unreachable) = merge(&cfg.app, n, &names, answers);
    for (host, entry) in &entries {
        out.emit(&Message::History {
            host: host.clone(),
            entry: entry.clone(),
        });
    }
    for (host, error) in &unreachable {
        out.emit(&Message::HostError {
            host: host.clone(),
            kind: Some(error.kind),
            error: error.message.clone(),
        });
    }
    let summary = Summary::new(
        "history",
        SummaryBody::History(HistorySummary {
            env: env.name.clone(),
            hosts: env.hosts.len(),
            entries: entries.len(),
            unreachable: unreachable.into_iter().map(|(h, _)| h).collect(),
        }),
    );
    let exit = summary.exit();
    out.emit(&Message::Summary(summary));
    Ok(exit)
}

type Merged<E> = (Vec<(String, HistoryEntry)>, Vec<(String, E)>);

/// The newest `n` entries of `app` per host, all hosts merged newest first; and the hosts that
/// did not answer, with why.
pub fn merge<E>(
    app: &str,
    n: usize,
    hosts: &[&str],
    answers: Vec<Result<Vec<HistoryEntry>, E>>,
) -> Merged<E> {
    let mut merged = Vec::new();
    let mut unreachable = Vec::new();
    for (host, answer) in hosts.iter().zip(answers) {
        match answer {
            Ok(entries) => merged.extend(
                entries
                    .into_iter()
                    .filter(|e| e.app == app)
                    .take(n)
                    .map(|e| (host.to_string(), e)),
            ),
            Err(e) => unreachable.push((host.to_string(), e)),
        }
    }
    merged.sort_by(|(ha, a), (hb, b)| {
        (b.accepted_at, &b.order_id, hb).cmp(&(a.accepted_at, &a.order_id, ha))
    });
    (merged, unreachable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::tests::journal_entry;
    use proto::order::ImageRef;

    fn entry(id: &str, secs: u64, app: &str) -> HistoryEntry {
        let image = ImageRef::new("r/web", &format!("sha256:{}", "a".repeat(64))).unwrap();
        journal_entry(id, secs, app, "v1", &[("web", image)], None)
    }

    #[test]
    fn journals_merge_newest_first_n_per_host_this_app_only() {
        let answers = vec![
            Ok(vec![
                entry("a3", 3, "web"),
                entry("a2", 2, "other"),
                entry("a1", 1, "web"),
            ]),
            Err("gone".to_string()),
            Ok(vec![entry("c4", 4, "web"), entry("c0", 0, "web")]),
        ];
        let (merged, unreachable) = merge("web", 2, &["h1", "h2", "h3"], answers);
        let got: Vec<(&str, &str)> = merged
            .iter()
            .map(|(h, e)| (h.as_str(), e.order_id.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![("h3", "c4"), ("h1", "a3"), ("h1", "a1"), ("h3", "c0")]
        );
        assert_eq!(unreachable, vec![("h2".to_string(), "gone".to_string())]);
        let (merged, _) = merge(
            "web",
            1,
            &["h1"],
            vec![Ok::<_, String>(vec![
                entry("a3", 3, "web"),
                entry("a1", 1, "web"),
            ])],
        );
        assert_eq!(merged.len(), 1);
    }
}
