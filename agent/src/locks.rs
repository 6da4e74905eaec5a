//! One rollout per service at a time (DESIGN §5): the decision a new order gets against the
//! services that running jobs hold.

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
    /// The same rollout already runs here (a controller retrying): follow that job instead of
    /// starting a second one.
    Attach { order_id: String },
    /// Another rollout holds one of its services.
    Refuse(LockHolder),
}

pub fn decide(held: &BTreeMap<ServiceKey, LockHolder>, order: &Order) -> LockDecision {
    let holders: Vec<&LockHolder> = keys_of(order).iter().filter_map(|k| held.get(k)).collect();
    if let Some(other) = holders.iter().find(|h| h.rollout_id != order.rollout_id) {
        return LockDecision::Refuse((*other).clone());
    }
    match holders.first() {
        Some(same) => LockDecision::Attach {
            order_id: same.order_id.clone(),
        },
        None => LockDecision::Take,
    }
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
            assert_eq!(decide(&held, &o), expected, "case {i}");
        }
    }
}
