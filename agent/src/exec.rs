//! What an exec order (`deployctl exec`, README "One-off commands") needs of the agent beyond a
//! deploy's path: the check that its service runs the very image the order names, made while
//! the order holds the service (so no deploy can switch it between the look and the run), and
//! how its acceptance reads in the journal. The run itself is the engine's (`deploy`'s exec);
//! its output reaches the clients through the job ([`crate::job::Job`]), never the journal.

use deploy::ServiceSnapshot;
use proto::order::{ExecSpec, Order};
use proto::wire::Health;

/// Whether `exec`, of `order`, may run in what the engine shows of its service: a container
/// running the order's image. `Err` says what runs instead, for the refusal.
pub fn check_target(
    snap: &ServiceSnapshot,
    order: &Order,
    exec: &ExecSpec,
    host: &str,
) -> Result<(), String> {
    let service = &exec.service;
    let running = matches!(snap.health, Health::Healthy | Health::Unhealthy);
    match &snap.image {
        _ if !running => Err(format!(
            "service {service} of {} is not running on host {host} ({}); exec runs a command in \
             the image a running service runs",
            order.app, snap.health
        )),
        Some(image) if image.digest() == order.image.digest() => Ok(()),
        Some(image) => Err(format!(
            "service {service} of {} runs {} on host {host} now, not the ordered {} (deployed \
             since the order was made?); run exec again",
            order.app,
            image.short_digest(),
            order.image.short_digest()
        )),
        None => Err(format!(
            "service {service} of {} runs an image of unknown digest on host {host}, so it cannot \
             be the ordered {}",
            order.app,
            order.image.short_digest()
        )),
    }
}

/// The journal's `accepted` line of an exec order.
pub fn accepted_message(order: &Order, exec: &ExecSpec, signer: &str) -> String {
    format!(
        "accepted exec of `{}` in {} ({}, {}) signed by {signer}, issued by {}; it holds {} until \
         it ends (at most {})",
        exec.shown(),
        exec.service,
        order.image,
        order.reference,
        order.issued_by,
        exec.service,
        proto::time::format_duration(exec.timeout)
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proto::ImageRef;

    use super::*;
    use crate::journal::tests::order;

    fn version() -> ExecSpec {
        ExecSpec {
            service: "web".into(),
            command: vec!["/app".into(), "version".into()],
            timeout: Duration::from_secs(60),
        }
    }

    fn snap(health: Health, digest: Option<char>) -> ServiceSnapshot {
        let image = digest.map(|c| {
            let digest = format!("sha256:{}", c.to_string().repeat(64));
            ImageRef::new("127.0.0.1:5000/acme/web", &digest).unwrap()
        });
        ServiceSnapshot {
            container_id: image.as_ref().map(|_| "c0ffee".into()),
            image,
            reference: Some("v1".into()),
            order_id: None,
            health,
            restarts: 0,
            up_since: None,
            oom_killed: false,
            exit_code: None,
            probe_ms: None,
        }
    }

    #[test]
    fn an_exec_runs_only_in_the_image_its_service_runs() {
        // (what the engine shows, the refusal's words; None: it may run)
        let cases = [
            (snap(Health::Healthy, Some('a')), None),
            (snap(Health::Unhealthy, Some('a')), None),
            (
                snap(Health::Healthy, Some('b')),
                Some("runs bbbbbbbbbbbb on host h1 now"),
            ),
            (snap(Health::Healthy, None), Some("unknown digest")),
            (
                snap(Health::Stopped, Some('a')),
                Some("is not running on host h1 (stopped)"),
            ),
            (
                snap(Health::Missing, None),
                Some("is not running on host h1 (missing)"),
            ),
            (snap(Health::Unknown, None), Some("(unknown)")),
        ];
        for (seen, refused) in cases {
            let got = check_target(&seen, &order("x", 'a'), &version(), "h1");
            match (&got, refused) {
                (Ok(()), None) => {}
                (Err(why), Some(want)) if why.contains(want) => {}
                _ => panic!("{seen:?}: {got:?}, expected {refused:?}"),
            }
        }
    }

    #[test]
    fn the_acceptance_names_command_service_image_and_signer() {
        let line = accepted_message(&order("x", 'a'), &version(), "ci@acme (SHA256:abc)");
        assert!(
            line.starts_with(
                "accepted exec of `/app version` in web (127.0.0.1:5000/acme/web@sha256:aaaa"
            ) && line.contains("signed by ci@acme (SHA256:abc), issued by ci")
                && line.ends_with("(at most 1m)"),
            "{line}"
        );
    }
}
