//! A maintenance order (`deployctl maintenance on|off`): the route of each service it names
//! shows a 503 page with `Retry-After`, or sends requests to the serving container again. No
//! container is touched; a service's route is its only change.

use std::collections::BTreeMap;

use proto::wire::{FailureClass, Outcome, OutcomeKind, Phase};
use proto::{MaintenanceSpec, Order, Timestamp};

use crate::context::OrderCtx;
use crate::proxy::Proxied;
use crate::{Engine, EventSink};

/// Runs a maintenance order to its outcome; never panics. Services are changed one by one; a
/// failure stops there and says which services were already changed.
pub(crate) async fn run(e: &Engine, order: &Order, sink: &dyn EventSink) -> Outcome {
    let started_at = Timestamp::now();
    let cx = OrderCtx::new(e, order, sink);
    let result = match &order.maintenance {
        Some(m) => apply(&cx, m).await,
        None => Err((Vec::new(), "the order carries no `maintenance`".into())),
    };
    let (kind, failure, changed, reason) = match result {
        Ok(done) => {
            let reason = match &order.maintenance {
                Some(m) if m.on => format!("maintenance page up for {}", done.join(", ")),
                _ => format!("maintenance over for {}", done.join(", ")),
            };
            (OutcomeKind::Succeeded, None, !done.is_empty(), reason)
        }
        Err((done, why)) => {
            let reason = if done.is_empty() {
                why
            } else {
                format!("{why} (already changed: {})", done.join(", "))
            };
            (
                OutcomeKind::Failed,
                Some(FailureClass::Proxy),
                !done.is_empty(),
                reason,
            )
        }
    };
    cx.emit(Phase::Done, None, &format!("{kind}: {reason}"));
    Outcome {
        order_id: order.order_id.clone(),
        rollout_id: order.rollout_id.clone(),
        kind,
        failure,
        reason: Some(reason),
        changed,
        log_tail: Vec::new(),
        services: BTreeMap::new(),
        started_at,
        finished_at: Timestamp::now(),
        rollback_ms: None,
        exit_code: None,
    }
}

/// Each service's route changed; the services done so far, or those and why the next failed.
async fn apply(
    cx: &OrderCtx<'_>,
    m: &MaintenanceSpec,
) -> Result<Vec<String>, (Vec<String>, String)> {
    let mut done = Vec::new();
    for (name, spec) in &cx.order.services {
        let Some(px) = Proxied::new(&cx.e.http, &cx.order.app, &cx.order.env, name, spec) else {
            return Err((done, format!("service {name} has no proxy")));
        };
        let result = if m.on {
            cx.emit(
                Phase::Switch,
                Some(name),
                &format!(
                    "route {}: answering 503 with the maintenance page (Retry-After: {}s)",
                    px.id,
                    m.retry_after.as_secs().max(1)
                ),
            );
            px.maintenance_on(m.message(), m.retry_after)
                .await
                .map_err(|e| e.to_string())
        } else {
            off(cx, &px, name).await
        };
        if let Err(why) = result {
            return Err((done, format!("{name}: {why}")));
        }
        done.push(name.clone());
    }
    Ok(done)
}

/// Requests go to the serving container again.
async fn off(cx: &OrderCtx<'_>, px: &Proxied<'_>, name: &str) -> Result<(), String> {
    let canonical = cx.e.canonical(&cx.order.app, name);
    let serving = cx
        .e
        .rt
        .inspect_container(&canonical)
        .await
        .map_err(|e| format!("the Docker engine failed: {e}"))?
        .filter(|c| c.is_running() && cx.e.is_ours(c))
        .ok_or_else(|| {
            format!("{canonical} is not running: the maintenance page stays until it is deployed")
        })?;
    let dial = px
        .dial(&serving)
        .ok_or_else(|| format!("{canonical} has no address on its network"))?;
    cx.emit(
        Phase::Switch,
        Some(name),
        &format!(
            "route {}: sending requests to {canonical} at {dial} again",
            px.id
        ),
    );
    px.maintenance_off(&dial).await.map_err(|e| e.to_string())
}
