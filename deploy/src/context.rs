//! `OrderCtx`: what the service drivers need to know about the order being run — the engine,
//! the order, and where its steps are recorded — so service code never sees the job that
//! sequences it.

use std::collections::BTreeMap;

use proto::Order;
use proto::order::labels;
use proto::wire::{OutputStream, Phase};

use crate::{Engine, EventSink};

pub(crate) struct OrderCtx<'a> {
    pub e: &'a Engine,
    pub order: &'a Order,
    sink: &'a dyn EventSink,
}

impl<'a> OrderCtx<'a> {
    pub fn new(e: &'a Engine, order: &'a Order, sink: &'a dyn EventSink) -> Self {
        OrderCtx { e, order, sink }
    }

    /// Records a step (before it is taken) to the sink and the log.
    pub fn emit(&self, phase: Phase, service: Option<&str>, message: &str) {
        tracing::info!(%phase, service = service.unwrap_or(""), "{message}");
        self.sink.emit(phase, service, message);
    }

    /// Passes on a line an exec's command wrote (not an event: it is not journaled).
    pub fn output(&self, stream: OutputStream, line: &str) {
        self.sink.output(stream, line);
    }

    /// The name of this order's one-off container for `what` (`migrate`, `exec`).
    pub fn one_off_name(&self, what: &str) -> String {
        let id = &self.e.identity;
        crate::plan::one_off_name(
            &id.container_prefix,
            &self.order.app,
            &id.env,
            what,
            &self.order.order_id,
        )
    }

    pub fn host(&self) -> &str {
        &self.e.identity.host
    }

    /// Labels selecting this engine's containers of this app.
    pub fn identity_labels(&self) -> Vec<(String, String)> {
        vec![
            (labels::HOST.to_string(), self.e.identity.host.clone()),
            (labels::ENV.to_string(), self.e.identity.env.clone()),
            (labels::APP.to_string(), self.order.app.clone()),
        ]
    }

    /// Labels of every container this order creates for `service`.
    pub fn container_labels(&self, service: &str) -> BTreeMap<String, String> {
        let mut l: BTreeMap<String, String> = self.identity_labels().into_iter().collect();
        l.insert(labels::SERVICE.to_string(), service.to_string());
        l.insert(
            labels::DIGEST.to_string(),
            self.order.image_of(service).digest().to_string(),
        );
        l.insert(
            labels::REF.to_string(),
            self.order.reference_of(service).to_string(),
        );
        l.insert(labels::ORDER.to_string(), self.order.order_id.clone());
        l
    }
}
