//! One rollout per service at a time: the decision a new order gets against the services that
//! running jobs hold. A retry converges instead of colliding: an order of the same rollout, or
//! one asking for exactly what a running job is already doing (a push re-run after its
//! controller was killed), follows that job.

use std::collections::BTreeMap;

use proto::Order;
use proto::wire::LockHolder;

/// `(app, service)`: services of different apps never contend.
pub type ServiceKey = (String, String);

pub fn keys_of(order: &Order) -> Vec<ServiceKey> {
    order
        .services
        .keys()
        .map(|s| (order.app.clone(), s.clone()))
        .collect()
}

#[derive(Debug, Clone, PartialEq)]
pub enum LockDecision {
    /// Nothing it touches is held: run it.
    Take,
    /// The same rollout, or the same release, already runs here (a controller retrying, or a
    /// push re-run): follow that job instead of starting a second one.
    Attach { order_id: String },
    /// Another rollout holds one of its services.
    Refuse(LockHolder),
}

/// Whether two orders ask for the same change: the same app's same services to the same image,
/// by the same action. Following one for the other changes nothing the second asked for. An
/// exec is never that: each runs its command once, so one never follows another.
pub fn same_release(a: &Order, b: &Order) -> bool {
    a.action.deploys()
        && a.app == b.app
        && a.env == b.env
        && a.action == b.action
        && a.release() == b.release()
        && a.migration_image() == b.migration_image()
}

/// `running` looks up the order a holder runs (by order id).
pub fn decide<'o>(
    held: &BTreeMap<ServiceKey, LockHolder>,
    order: &Order,
    running: impl Fn(&str) -> Option<&'o Order>,
) -> LockDecision {
    let holders: Vec<&LockHolder> = keys_of(order).iter().filter_map(|k| held.get(k)).collect();
    let Some(first) = holders.first() else {
        return LockDecision::Take;
    };
    let one_job = holders.iter().all(|h| h.order_id == first.order_id);
    let same_rollout = holders.iter().all(|h| h.rollout_id == order.rollout_id);
    let same_release = one_job && running(&first.order_id).is_some_and(|o| same_release(o, order));
    if same_rollout || same_release {
        return LockDecision::Attach {
            order_id: first.order_id.clone(),
        };
    }
    let other = holders
        .iter()
        .find(|h| h.rollout_id != order.rollout_id)
        .unwrap_or(first);
    LockDecision::Refuse((*other).clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::tests::order;
    use proto::time::Timestamp;

    fn holder(order_id: &str, rollout_id: &str) -> LockHolder {
        LockHolder {
            order_id: order_id.into(),
            rollout_id: rollout_id.into(),
            signer: "ci@acme SHA256:abc".into(),
            issued_by: "ci".into(),
            since: Timestamp::from_unix_secs(1),
        }
    }

    fn key(app: &str, service: &str) -> ServiceKey {
        (app.into(), service.into())
    }

    #[test]
    fn decisions() {
        let mut o = order("new", 'a');
        o.rollout_id = "r1".into();
        o.services
            .insert("worker".into(), serde_json::from_str("{}").unwrap());
        // (held services, expected)
        let cases: Vec<(Vec<(ServiceKey, LockHolder)>, LockDecision)> = vec![
            (vec![], LockDecision::Take),
            (
                vec![(key("other-app", "web"), holder("x", "r0"))],
                LockDecision::Take,
            ),
            (
                vec![(key("acme", "db"), holder("x", "r0"))],
                LockDecision::Take,
            ),
            (
                vec![(key("acme", "worker"), holder("x", "r0"))],
                LockDecision::Refuse(holder("x", "r0")),
            ),
            (
                vec![(key("acme", "web"), holder("x", "r1"))],
                LockDecision::Attach {
                    order_id: "x".into(),
                },
            ),
            (
                vec![
                    (key("acme", "web"), holder("x", "r1")),
                    (key("acme", "worker"), holder("y", "r0")),
                ],
                LockDecision::Refuse(holder("y", "r0")),
            ),
        ];
        for (i, (held, expected)) in cases.into_iter().enumerate() {
            let held: BTreeMap<_, _> = held.into_iter().collect();
            assert_eq!(decide(&held, &o, |_| None), expected, "case {i}");
        }
    }

    #[test]
    fn the_same_release_follows_the_running_job() {
        let mut running = order("x", 'a');
        running.rollout_id = "r0".into();
        let held: BTreeMap<_, _> = [(key("acme", "web"), holder("x", "r0"))].into();
        let lookup = |id: &str| (id == "x").then_some(&running);

        let mut retry = order("new", 'a');
        retry.rollout_id = "r1".into();
        assert_eq!(
            decide(&held, &retry, lookup),
            LockDecision::Attach {
                order_id: "x".into()
            },
            "a push re-run of the same release"
        );

        let mut other_image = order("new", 'b');
        other_image.rollout_id = "r1".into();
        assert_eq!(
            decide(&held, &other_image, lookup),
            LockDecision::Refuse(holder("x", "r0")),
            "another release"
        );

        let mut rollback = retry.clone();
        rollback.action = proto::Action::Rollback;
        assert_eq!(
            decide(&held, &rollback, lookup),
            LockDecision::Refuse(holder("x", "r0")),
            "the same image by another action"
        );

        let mut exec = retry.clone();
        exec.action = proto::Action::Exec;
        let mut running_exec = running.clone();
        running_exec.action = proto::Action::Exec;
        let lookup_exec = |id: &str| (id == "x").then_some(&running_exec);
        assert_eq!(
            decide(&held, &exec, lookup_exec),
            LockDecision::Refuse(holder("x", "r0")),
            "an exec of the running exec's very image and service runs once, not followed"
        );
        assert_eq!(
            decide(&held, &retry, lookup_exec),
            LockDecision::Refuse(holder("x", "r0")),
            "a deploy waits for the exec holding its service"
        );

        let mut more = retry.clone();
        more.services
            .insert("worker".into(), serde_json::from_str("{}").unwrap());
        assert_eq!(
            decide(&held, &more, lookup),
            LockDecision::Refuse(holder("x", "r0")),
            "more services than the running job changes"
        );
    }
}
