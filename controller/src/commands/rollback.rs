//! `deployctl rollback --env E [--to REF]`: a rollout of the previous healthy digest (the same
//! on every host, read from the hosts' journals) or of REF; no migration, no promotion gate.

use proto::order::{Action, ImageRef, new_id};

use super::{connect_options, find_env, issued_by, load_signer, prepare_hosts};
use crate::config::DeployConfig;
use crate::output::{self, Event};
use crate::rollout::{self, RolloutSpec};
use crate::{Error, ExitClass};

pub async fn rollback(
    cfg: &DeployConfig,
    env_name: &str,
    to: Option<&str>,
    json: bool,
) -> Result<ExitClass, Error> {
    let env = find_env(cfg, env_name)?;
    let out = output::reporter(json);
    let explicit = match to {
        Some(reference) => Some(super::resolve_ref(cfg, reference, out.as_ref()).await?),
        None => None,
    };
    let signer = load_signer(env).await?;
    let opts = connect_options(env);
    out.hosts(&env.hosts.iter().map(|h| h.name.clone()).collect::<Vec<_>>());
    let prepared = prepare_hosts(cfg, env, &opts, out.as_ref()).await;
    let (mut links, histories) = prepared.inspect_err(|_| out.finish())?;
    let (image, reference) = match explicit {
        Some(r) => (r.image, r.reference),
        None => {
            let mut per_host = Vec::new();
            for (link, history) in links.iter().zip(&histories) {
                let current = rollout::current_digest(&link.before, &cfg.app);
                per_host.push((
                    link.spec.name.clone(),
                    rollout::previous_healthy(history, &cfg.app, current.as_deref()),
                ));
            }
            let (digest, reference) = agree(&per_host).map_err(|e| {
                out.finish();
                Error::Refused(e)
            })?;
            let image =
                ImageRef::new(&cfg.image, &digest).map_err(|e| Error::Refused(e.to_string()))?;
            out.emit(&Event::Note {
                message: format!(
                    "previous healthy version on every host: {reference} ({})",
                    image.short_digest()
                ),
            });
            (image, reference)
        }
    };
    let spec = RolloutSpec {
        rollout_id: new_id(),
        env: env.name.clone(),
        action: Action::Rollback,
        image,
        reference,
        issued_by: issued_by(),
        migrate_first: false,
        rerun_migration: false,
    };
    let run = super::Prepared {
        env,
        links: &mut links,
        signer: &signer,
        opts: &opts,
        out: out.as_ref(),
    };
    Ok(super::drive_and_report("rollback", cfg, spec, run, json).await)
}

/// The one previous healthy digest every host agrees on, or why there is none.
pub fn agree(per_host: &[(String, Option<(String, String)>)]) -> Result<(String, String), String> {
    let first = per_host.first().and_then(|(_, p)| p.clone());
    let all_same = per_host
        .iter()
        .all(|(_, p)| p.as_ref().map(|(d, _)| d) == first.as_ref().map(|(d, _)| d));
    match first {
        Some(found) if all_same => Ok(found),
        _ => {
            let lines: Vec<String> = per_host
                .iter()
                .map(|(h, p)| match p {
                    Some((d, r)) => format!("  {h}: {r} ({})", proto::order::short_digest(d)),
                    None => format!("  {h}: no earlier healthy version in its journal"),
                })
                .collect();
            Err(format!(
                "no previous healthy version common to every host; choose one with --to REF:\n{}",
                lines.join("\n")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_must_agree_on_the_previous_version() {
        let p = |d: &str| Some((d.to_string(), format!("ref-{d}")));
        let ok = agree(&[("a".into(), p("x")), ("b".into(), p("x"))]).unwrap();
        assert_eq!(ok, ("x".to_string(), "ref-x".to_string()));
        let err = agree(&[("a".into(), p("x")), ("b".into(), p("y"))]).unwrap_err();
        assert!(
            err.contains("--to") && err.contains("a: ref-x") && err.contains("b: ref-y"),
            "{err}"
        );
        assert!(
            agree(&[("a".into(), None)])
                .unwrap_err()
                .contains("no earlier healthy version")
        );
        assert!(agree(&[]).is_err());
    }
}
