//! `deployctl exec --env E [--host H] [--service S] [--timeout D] -- CMD…` (README, "One-off
//! commands"): a signed exec order to one host (the env's first unless `--host`) for a one-off
//! container of the image its service runs there; the command's lines shown as they come, its
//! exit code deployctl's.
//!
//! Gather (config, the host's status) → decide (pure: the service, the host, the running
//! image, the order) → sign, submit and follow → summarize (the exit code rule is
//! [`crate::output::exec_exit`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use proto::order::{self, Action, ExecSpec, ImageRef, Order, ServiceKind, ServiceSpec};
use proto::wire::{AgentStatus, Health, JobEvent, Outcome, OutputLine, SignedOrder};
use proto::{Timestamp, accept};

use super::{find_env, issued_by, load_signer};
use crate::config::{DeployConfig, EnvConfig, HostSpec};
use crate::connector::{Transport, connect_all, report_connections};
use crate::output::{ExecResult, ExecSummary, Message, Output, Summary, SummaryBody};
use crate::transport::{Connection, JobEnd, Peer};
use crate::{Error, ExitClass};

/// What the command line asks.
#[derive(Debug, Clone)]
pub struct ExecArgs<'a> {
    pub env: &'a str,
    pub host: Option<&'a str>,
    pub service: Option<&'a str>,
    pub timeout: Duration,
    pub command: Vec<String>,
}

pub async fn exec(
    cfg: &DeployConfig,
    args: ExecArgs<'_>,
    out: &dyn Output,
) -> Result<ExitClass, Error> {
    let started = Instant::now();
    let env = find_env(cfg, args.env)?;
    let service = pick_service(&cfg.services, args.service)?;
    let host = pick_host(&env.hosts, &env.name, args.host)?;
    let signer = load_signer(env).await?;
    let (mut conn, status) = reach(env, host, out).await?;
    let (image, reference) = running_image(&status, &cfg.app, service)
        .map_err(|why| Error::Refused(format!("host {}: {why}", host.name)))?;
    let wanted = ExecSpec {
        service: service.to_string(),
        command: args.command.clone(),
        timeout: args.timeout,
    };
    let order = exec_order(cfg, &conn.peer, wanted, (&image, &reference));
    accept::check_exec_shape(&order).map_err(Error::Refused)?;
    let signed = signer
        .sign_order(&order)
        .await
        .map_err(|e| Error::Refused(format!("signing the order: {e}")))?;
    out.emit(&Message::Submitted {
        host: host.name.clone(),
        order_id: order.order_id.clone(),
        action: Action::Exec,
        image: image.clone(),
        images: BTreeMap::new(),
        run_migration: false,
    });
    let name = &host.name;
    let (result, command_exit_code, reason) = follow(&mut conn, signed, name, &env.name, out).await;
    let summary = Summary::new(
        "exec",
        SummaryBody::Exec(ExecSummary {
            env: env.name.clone(),
            host: name.clone(),
            service: service.to_string(),
            argv: args.command,
            order_id: order.order_id,
            image,
            result,
            command_exit_code,
            reason,
            elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        }),
    );
    let exit = summary.exit();
    out.emit(&Message::Summary(summary));
    Ok(exit)
}

/// Connects to `host` and reads its status.
async fn reach(
    env: &EnvConfig,
    host: &HostSpec,
    out: &dyn Output,
) -> Result<(Connection, AgentStatus), Error> {
    let hosts = std::slice::from_ref(host);
    let mut results = connect_all(&Transport::for_env(env), &env.name, hosts).await;
    report_connections(out, hosts, &results);
    let mut conn = match results.pop() {
        Some(Ok(conn)) => conn,
        Some(Err(why)) => return Err(Error::Refused(format!("host {}: {why}", host.name))),
        None => return Err(Error::Refused(format!("host {} was not asked", host.name))),
    };
    let status = conn
        .status()
        .await
        .map_err(|e| Error::Refused(format!("host {}: status: {e}", host.name)))?;
    Ok((conn, status))
}

/// Submits the signed order and shows its steps and its command's lines as they come, to the
/// end: how the command ended, its exit code, and why.
async fn follow(
    conn: &mut Connection,
    signed: SignedOrder,
    host: &str,
    env: &str,
    out: &dyn Output,
) -> (ExecResult, Option<i64>, Option<String>) {
    let mut on_event = |job: &JobEvent| {
        out.emit(&Message::Job {
            host: host.to_string(),
            job: job.clone(),
        })
    };
    let mut on_output = |l: OutputLine| {
        out.emit(&Message::Output {
            host: host.to_string(),
            stream: l.stream,
            line: l.line,
        })
    };
    match conn.exec(signed, &mut on_event, &mut on_output).await {
        Ok(JobEnd::Outcome(outcome)) => ended(&outcome),
        Ok(JobEnd::Refused(refusal)) => {
            let reason = format!("{}: {}", refusal.kind, refusal.message);
            out.emit(&Message::Refused {
                host: host.to_string(),
                refusal,
            });
            (ExecResult::Refused, None, Some(reason))
        }
        Err(e) => (
            ExecResult::Failed,
            None,
            Some(format!(
                "{e}; the command goes on on the host until it ends or its timeout, and \
                 `deployctl history --env {env}` shows how it ended"
            )),
        ),
    }
}

/// The service `--service` names, else the app's only one. Compose services are refused: a
/// one-off of one would need compose's own `run`, which exec does not drive.
fn pick_service<'a>(
    services: &'a BTreeMap<String, ServiceSpec>,
    wanted: Option<&str>,
) -> Result<&'a str, Error> {
    let known = || services.keys().cloned().collect::<Vec<_>>().join(", ");
    let (name, spec) = match wanted {
        Some(w) => services
            .get_key_value(w)
            .ok_or_else(|| Error::Usage(format!("no service {w:?} (known: {})", known())))?,
        None if services.len() == 1 => services
            .iter()
            .next()
            .ok_or_else(|| Error::Usage("deploy.toml declares no service".into()))?,
        None => {
            return Err(Error::Usage(format!(
                "the app has {} services ({}); say which with --service",
                services.len(),
                known()
            )));
        }
    };
    if spec.kind == ServiceKind::Compose {
        return Err(Error::Refused(format!(
            "service {name} is kind = \"compose\": exec runs one-off containers of container \
             services only (run `docker compose run` on the host)"
        )));
    }
    Ok(name)
}

/// The host `--host` names, else the env's first.
fn pick_host<'a>(
    hosts: &'a [HostSpec],
    env: &str,
    wanted: Option<&str>,
) -> Result<&'a HostSpec, Error> {
    let found = match wanted {
        Some(w) => hosts.iter().find(|h| h.name == w),
        None => hosts.first(),
    };
    found.ok_or_else(|| {
        let known: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
        Error::Usage(format!(
            "no host {:?} in env {env} (known: {})",
            wanted.unwrap_or_default(),
            known.join(", ")
        ))
    })
}

/// The image `service` of `app` runs on the host per its status, and the ref it was deployed
/// as: what the order names, so the signed order says exactly what runs (the agent refuses it
/// if that changed meanwhile).
fn running_image(
    status: &AgentStatus,
    app: &str,
    service: &str,
) -> Result<(ImageRef, String), String> {
    let found = status
        .services
        .iter()
        .find(|s| s.app == app && s.service == service);
    let Some(s) = found else {
        return Err(format!(
            "service {service} of {app} was never deployed here, so there is nothing to run \
             the command in"
        ));
    };
    match (&s.image, s.health) {
        (Some(image), Health::Healthy | Health::Unhealthy) => {
            let reference = s
                .reference
                .clone()
                .unwrap_or_else(|| image.digest().to_string());
            Ok((image.clone(), reference))
        }
        (_, health) => Err(format!(
            "service {service} of {app} is not running here ({health}); exec runs a command in \
             the image a running service runs"
        )),
    }
}

/// The exec order for `peer`: `image` (what runs), the service's spec from deploy.toml (its
/// env_file, volumes and network), bound to the host key the transport verified.
fn exec_order(
    cfg: &DeployConfig,
    peer: &Peer,
    exec: ExecSpec,
    (image, reference): (&ImageRef, &str),
) -> Order {
    let issued_at = Timestamp::now();
    let services = cfg
        .services
        .get_key_value(&exec.service)
        .map(|(k, v)| (k.clone(), v.clone()))
        .into_iter()
        .collect();
    Order {
        order_id: order::new_id(),
        rollout_id: order::new_id(),
        env: peer.env.clone(),
        host: peer.host.clone(),
        host_key: peer.host_key.clone(),
        issued_at,
        // The command may not start later than a deploy order would.
        not_after: issued_at.plus(order::DEFAULT_VALIDITY),
        issued_by: issued_by(),
        action: Action::Exec,
        image: image.clone(),
        images: BTreeMap::new(),
        migrate_image: None,
        revision: None,
        reference: reference.to_string(),
        refs: BTreeMap::new(),
        tags: BTreeMap::new(),
        run_migration: false,
        rerun_migration: false,
        app: cfg.app.clone(),
        services,
        migrate: None,
        exec: Some(exec),
        maintenance: None,
        proposal: None,
        override_freeze: None,
    }
}

/// What an agent's outcome says of the command: it exited (with its code), or it did not run
/// to its end.
fn ended(outcome: &Outcome) -> (ExecResult, Option<i64>, Option<String>) {
    let result = match outcome.exit_code {
        Some(_) => ExecResult::Exited,
        None => ExecResult::Failed,
    };
    (result, outcome.exit_code, outcome.reason.clone())
}

#[cfg(test)]
mod tests {
    use proto::wire::{OutcomeKind, ServiceStatus};

    use super::*;

    fn spec(kind: ServiceKind) -> ServiceSpec {
        let mut s: ServiceSpec = serde_json::from_str("{}").unwrap();
        s.kind = kind;
        s
    }

    #[test]
    fn the_service_is_the_named_one_or_the_only_one() {
        let one = BTreeMap::from([("web".to_string(), spec(ServiceKind::Container))]);
        let mut two = one.clone();
        two.insert("api".into(), spec(ServiceKind::Compose));
        // (services, --service, the service or the exit code and what the error says)
        type Case<'a> = (
            &'a BTreeMap<String, ServiceSpec>,
            Option<&'a str>,
            Result<&'a str, (u8, &'a str)>,
        );
        let cases: Vec<Case> = vec![
            (&one, None, Ok("web")),
            (&one, Some("web"), Ok("web")),
            (
                &one,
                Some("db"),
                Err((64, "no service \"db\" (known: web)")),
            ),
            (&two, None, Err((64, "2 services (api, web); say which"))),
            (&two, Some("web"), Ok("web")),
            (&two, Some("api"), Err((3, "kind = \"compose\""))),
        ];
        for (services, wanted, want) in cases {
            let got = pick_service(services, wanted).map_err(|e| (e.exit().code(), e.to_string()));
            match (got, want) {
                (Ok(g), Ok(w)) => assert_eq!(g, w),
                (Err((code, msg)), Err((c, m))) if code == c && msg.contains(m) => {}
                (got, want) => panic!("{wanted:?}: {got:?}, expected {want:?}"),
            }
        }
    }

    #[test]
    fn the_host_is_the_named_one_or_the_first() {
        let config = DeployConfig::parse(
            "app = \"acme\"\nimage = \"r/acme\"\n[services.web]\n\
             [env.staging]\nhosts = [\"a@10.0.0.1\", \"b@10.0.0.2\"]\n",
            std::path::Path::new("deploy.toml"),
        )
        .unwrap();
        let hosts = &config.env("staging").unwrap().hosts;
        let name =
            |h: Result<&HostSpec, Error>| h.map(|h| h.name.clone()).map_err(|e| e.to_string());
        assert_eq!(
            name(pick_host(hosts, "staging", None)),
            Ok(hosts[0].name.clone())
        );
        let second = hosts[1].name.clone();
        assert_eq!(name(pick_host(hosts, "staging", Some(&second))), Ok(second));
        let err = name(pick_host(hosts, "staging", Some("nope"))).unwrap_err();
        assert!(err.contains("no host \"nope\" in env staging"), "{err}");
    }

    #[test]
    fn the_image_is_what_runs() {
        let image = ImageRef::new("r/acme", &format!("sha256:{}", "a".repeat(64))).unwrap();
        let service = |app: &str, name: &str, health, reference: Option<&str>| ServiceStatus {
            container_id: Some("c".into()),
            image: Some(image.clone()),
            reference: reference.map(str::to_string),
            ..ServiceStatus::new(app, name, health, Timestamp::now())
        };
        let status = |services| AgentStatus {
            agent_version: "1".into(),
            host: "h".into(),
            env: "e".into(),
            uptime_secs: 1,
            services,
            running: vec![],
            approvals: None,
            host_health: None,
        };
        // (services on the host, the ref ordered or what the refusal says)
        let cases = [
            (
                vec![service("acme", "web", Health::Healthy, Some("v1"))],
                Ok("v1"),
            ),
            (
                vec![service("acme", "web", Health::Unhealthy, Some("v1"))],
                Ok("v1"),
            ),
            (
                vec![service("acme", "web", Health::Healthy, None)],
                Ok(image.digest()),
            ),
            (
                vec![service("acme", "web", Health::Stopped, Some("v1"))],
                Err("is not running here (stopped)"),
            ),
            (
                vec![service("acme", "web", Health::Missing, Some("v1"))],
                Err("is not running here (missing)"),
            ),
            (
                vec![service("other", "web", Health::Healthy, Some("v1"))],
                Err("was never deployed here"),
            ),
            (vec![], Err("was never deployed here")),
        ];
        for (services, want) in cases {
            let got = running_image(&status(services), "acme", "web");
            match (got, want) {
                (Ok((i, r)), Ok(w)) => assert_eq!((i, r.as_str()), (image.clone(), w)),
                (Err(e), Err(w)) if e.contains(w) => {}
                (got, want) => panic!("{got:?}, expected {want:?}"),
            }
        }
    }

    #[test]
    fn the_order_names_the_running_image_and_only_its_service() {
        let config = DeployConfig::parse(
            "app = \"acme\"\nimage = \"r/acme\"\n[services.web]\nvolumes = [\"d:/data\"]\n\
             [services.worker]\n[migrate]\ncommand = [\"/app\", \"migrate\"]\nservice = \"web\"\n\
             [env.staging]\nhosts = [\"a@10.0.0.1\"]\n",
            std::path::Path::new("deploy.toml"),
        )
        .unwrap();
        let peer = Peer {
            host: "h1".into(),
            env: "staging".into(),
            agent_version: "1".into(),
            host_key: Some("SHA256:k".into()),
        };
        let image = ImageRef::new("r/acme", &format!("sha256:{}", "a".repeat(64))).unwrap();
        let exec = ExecSpec {
            service: "web".into(),
            command: vec!["/app".into(), "version".into()],
            timeout: Duration::from_secs(60),
        };
        let o = exec_order(&config, &peer, exec.clone(), (&image, "v1"));
        assert_eq!(
            (o.action, &o.image, o.reference.as_str(), o.exec.as_ref()),
            (Action::Exec, &image, "v1", Some(&exec))
        );
        assert_eq!(o.services.keys().collect::<Vec<_>>(), ["web"]);
        assert_eq!(o.services["web"].volumes, ["d:/data"]);
        assert_eq!(
            (o.host.as_str(), o.host_key.as_deref(), o.env.as_str()),
            ("h1", Some("SHA256:k"), "staging")
        );
        assert!(o.migrate.is_none() && !o.run_migration);
        assert_eq!(accept::check_exec_shape(&o), Ok(()));
    }

    #[test]
    fn an_outcome_with_an_exit_code_is_a_command_that_ran_to_its_end() {
        let outcome = |exit_code| Outcome {
            order_id: "o".into(),
            rollout_id: "r".into(),
            kind: OutcomeKind::Failed,
            failure: None,
            reason: Some("why".into()),
            changed: false,
            log_tail: vec![],
            services: BTreeMap::new(),
            started_at: Timestamp::now(),
            finished_at: Timestamp::now(),
            rollback_ms: None,
            exit_code,
        };
        assert_eq!(
            ended(&outcome(Some(7))),
            (ExecResult::Exited, Some(7), Some("why".into()))
        );
        assert_eq!(
            ended(&outcome(None)),
            (ExecResult::Failed, None, Some("why".into()))
        );
    }
}
