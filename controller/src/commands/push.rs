//! `deployctl push <REF> --env E`: resolve once, check the promotion gate, connect to every
//! host, then roll out (DESIGN §8).

use futures_util::future::join_all;
use proto::order::{Action, ImageRef, new_id};
use proto::wire::OutcomeKind;

use super::{connect_all, connect_options, find_env, issued_by, load_signer, prepare_hosts};
use crate::config::DeployConfig;
use crate::output::{self, Event, Reporter};
use crate::rollout::RolloutSpec;
use crate::{Error, ExitClass};

/// What the first host does about `[migrate]` (DESIGN §2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Migrations {
    /// Run it, unless this digest's migration already succeeded there (a retried rollout).
    Once,
    /// `--skip-migrations`.
    Skip,
    /// `--rerun-migration`: run it even if it already succeeded for this digest.
    Rerun,
}

impl Migrations {
    pub fn from_flags(skip: bool, rerun: bool) -> Self {
        match (skip, rerun) {
            (true, _) => Migrations::Skip,
            (false, true) => Migrations::Rerun,
            (false, false) => Migrations::Once,
        }
    }
}

pub async fn push(
    cfg: &DeployConfig,
    env_name: &str,
    reference: &str,
    migrations: Migrations,
    json: bool,
) -> Result<ExitClass, Error> {
    let env = find_env(cfg, env_name)?;
    let out = output::reporter(json);
    let resolved = super::resolve_ref(cfg, reference, out.as_ref()).await?;
    if let Some(required) = &env.requires {
        check_promotion(cfg, &env.name, required, &resolved.image, out.as_ref()).await?;
    }
    let signer = load_signer(env).await?;
    let opts = connect_options(env);
    out.hosts(&env.hosts.iter().map(|h| h.name.clone()).collect::<Vec<_>>());
    let prepared = prepare_hosts(cfg, env, &opts, out.as_ref()).await;
    let (mut links, _) = prepared.inspect_err(|_| out.finish())?;
    let spec = RolloutSpec {
        rollout_id: new_id(),
        env: env.name.clone(),
        action: Action::Deploy,
        image: resolved.image,
        reference: resolved.reference,
        issued_by: issued_by(),
        migrate_first: cfg.migrate.is_some() && migrations != Migrations::Skip,
        rerun_migration: migrations == Migrations::Rerun,
    };
    let run = super::Prepared {
        env,
        links: &mut links,
        signer: &signer,
        opts: &opts,
        out: out.as_ref(),
    };
    Ok(super::drive_and_report("push", cfg, spec, run, json).await)
}

/// The promotion gate: `image` must have a succeeded order in the journal of at least one host
/// of the required env.
async fn check_promotion(
    cfg: &DeployConfig,
    for_env: &str,
    required: &str,
    image: &ImageRef,
    out: &dyn Reporter,
) -> Result<(), Error> {
    let req_env = find_env(cfg, required)?;
    let opts = connect_options(req_env);
    out.emit(&Event::Note {
        message: format!(
            "checking that {} was healthy in {required} first",
            image.short_digest()
        ),
    });
    let mut results = connect_all(req_env, &opts, out).await;
    let answers = join_all(results.iter_mut().map(|r| async move {
        match r {
            Ok(conn) => conn
                .history(super::HISTORY_DEPTH * 5)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.clone()),
        }
    }))
    .await;
    let mut unreachable = Vec::new();
    for (host, answer) in req_env.hosts.iter().zip(answers) {
        match answer {
            Ok(history) => {
                let proven = history.iter().any(|e| {
                    e.app == cfg.app
                        && e.image.digest() == image.digest()
                        && e.outcome == Some(OutcomeKind::Succeeded)
                });
                if proven {
                    out.emit(&Event::Note {
                        message: format!(
                            "{} was healthy on {} ({required})",
                            image.short_digest(),
                            host.name
                        ),
                    });
                    return Ok(());
                }
            }
            Err(e) => unreachable.push(format!("{}: {e}", host.name)),
        }
    }
    let asked = req_env.hosts.len() - unreachable.len();
    let mut msg = format!(
        "policy: {} has never been healthy in {required} (required by env {}); push it to {required} first. Asked {asked} of {} {required} host(s).",
        image,
        for_env,
        req_env.hosts.len(),
    );
    if !unreachable.is_empty() {
        msg.push_str(&format!(" Unreachable: {}", unreachable.join("; ")));
    }
    Err(Error::Refused(msg))
}
