//! `deployctl promote --from staging --to prod`: exactly the release that runs, healthy, on
//! every host of `--from` is rolled out to `--to` — the digests, not a ref resolved again (a
//! tag may have moved since). Refused, naming the hosts, when `--from` is mixed, unhealthy,
//! busy or partly unreachable.
//!
//! Gather (each `--from` host's status and journal) → decide (pure: [`staging_release`]) → the
//! rollout every push goes through ([`super::rollout::roll_out`]).

use futures_util::future::join_all;
use proto::wire::{AgentStatus, Health, HistoryEntry, OutcomeKind};

use super::rollout::{Migrations, What, roll_out};
use super::{find_env, resolve_release};
use crate::config::{DeployConfig, EnvConfig};
use crate::connector::{Transport, connect_all, report_connections};
use crate::output::{Message, Output};
use crate::release::{Release, current_digests};
use crate::rollout::{HISTORY_DEPTH, Target};
use crate::{Error, ExitClass};

/// One `--from` host as promote saw it.
pub struct Seen {
    pub host: String,
    pub answer: Result<(AgentStatus, Vec<HistoryEntry>), String>,
}

pub async fn promote(
    cfg: &DeployConfig,
    (from, to): (&str, &str),
    migrations: Migrations,
    override_freeze: Option<String>,
    out: &dyn Output,
) -> Result<ExitClass, Error> {
    if from == to {
        return Err(Error::Usage(format!(
            "--from and --to are both {from}: promote moves a release from one env to another"
        )));
    }
    let from_env = find_env(cfg, from)?;
    find_env(cfg, to)?;
    out.emit(&Message::Note {
        message: format!("reading what runs on every host of {from}"),
    });
    let seen = gather(from_env, out).await;
    let services: Vec<&str> = cfg.services.keys().map(String::as_str).collect();
    let mut release =
        staging_release(&cfg.app, &services, &from_env.name, &seen).map_err(Error::Refused)?;
    if cfg.migrate.as_ref().is_some_and(|m| m.image.is_some()) {
        release.migrate_image = migrate_image_at(cfg, &release, out).await?;
    }
    out.emit(&Message::Note {
        message: format!(
            "promoting {} ({}), healthy on every host of {from}, to {to}",
            release.describe(),
            release.reference
        ),
    });
    let what = What::push(&release.reference, migrations)
        .with_override(override_freeze)
        .named("promote");
    roll_out(cfg, to, what, Target::Release(release), out).await
}

/// Each host's status and journal, or why there is none.
async fn gather(env: &EnvConfig, out: &dyn Output) -> Vec<Seen> {
    let connector = Transport::for_env(env);
    let results = connect_all(&connector, &env.name, &env.hosts).await;
    report_connections(out, &env.hosts, &results);
    let answers = join_all(results.into_iter().map(|r| async move {
        let mut conn = r.map_err(|e| e.message)?;
        let status = conn.status().await.map_err(|e| e.to_string())?;
        let history = conn
            .history(HISTORY_DEPTH)
            .await
            .map_err(|e| e.to_string())?;
        Ok((status, history))
    }))
    .await;
    env.hosts
        .iter()
        .zip(answers)
        .map(|(h, answer)| Seen {
            host: h.name.clone(),
            answer,
        })
        .collect()
}

/// The release every host of `env` runs, healthy and idle, as the journal recorded it (its
/// ref and each service's): else why not, naming each host that stands in the way.
pub fn staging_release(
    app: &str,
    services: &[&str],
    env: &str,
    seen: &[Seen],
) -> Result<Release, String> {
    let mut problems = Vec::new();
    let mut running = Vec::new();
    for s in seen {
        let (status, _) = match &s.answer {
            Ok(a) => a,
            Err(e) => {
                problems.push(format!("{} is unreachable ({e})", s.host));
                continue;
            }
        };
        for job in &status.running {
            problems.push(format!(
                "{} is running order {} of rollout {}",
                s.host, job.order_id, job.rollout_id
            ));
        }
        for name in services {
            match status
                .services
                .iter()
                .find(|x| x.app == app && x.service == *name)
            {
                Some(x) if x.health == Health::Healthy => {}
                Some(x) => problems.push(format!("{}: {name} is {}", s.host, x.health)),
                None => problems.push(format!("{}: {name} is not deployed", s.host)),
            }
        }
        running.push((s.host.as_str(), current_digests(status, app, services)));
    }
    if let Some((first_host, first)) = running.first() {
        for (host, digests) in &running[1..] {
            let diff = crate::release::differences(digests, first);
            if !diff.is_empty() {
                problems.push(format!(
                    "{env} is mixed: {host} differs from {first_host} ({})",
                    diff.join(", ")
                ));
            }
        }
    }
    if !problems.is_empty() {
        return Err(format!(
            "cannot promote from {env}: {}; promote takes only a release that runs healthy on \
             every host of {env}",
            problems.join("; ")
        ));
    }
    let digests = running.first().map(|(_, d)| d.clone()).unwrap_or_default();
    // The journal says which ref (and `--set` refs) these digests were deployed as.
    seen.iter()
        .filter_map(|s| s.answer.as_ref().ok())
        .flat_map(|(_, history)| history)
        .filter(|e| e.app == app && e.action.deploys())
        .filter(|e| e.outcome == Some(OutcomeKind::Succeeded))
        .filter_map(|e| Release::from_entry(e, services))
        .find(|r| r.digests() == digests)
        .ok_or_else(|| {
            format!(
                "cannot promote from {env}: no journal entry of {env} records the release it \
                 runs (its orders were pruned?); push it by digest instead"
            )
        })
}

/// `[migrate] image` at the release's ref: the one image a promotion resolves, since the
/// journal keeps only the services' images. The services must still resolve to what runs.
async fn migrate_image_at(
    cfg: &DeployConfig,
    release: &Release,
    out: &dyn Output,
) -> Result<Option<proto::ImageRef>, Error> {
    let sets = release
        .services
        .iter()
        .filter(|(_, p)| p.reference != release.reference)
        .map(|(s, p)| (s.clone(), p.reference.clone()))
        .collect();
    let again = resolve_release(cfg, &release.reference, &sets, true, out).await?;
    if again.digests() != release.digests() {
        return Err(Error::Refused(format!(
            "{} no longer resolves to the release that runs ({}); the migrate image cannot be \
             matched to it",
            release.reference,
            crate::release::differences(&again.digests(), &release.digests()).join(", ")
        )));
    }
    Ok(again.migrate_image)
}

#[cfg(test)]
mod tests;
