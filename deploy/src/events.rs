//! The engine's event stream as the agent's health model reads it: what happened to the
//! containers of this engine's services (README, "The health model"). Read only: nothing here
//! acts on a container; the agent looks at the service again when one of its containers
//! changes.

use futures_util::StreamExt;
use proto::order::labels;

use crate::container::ROLE_LABEL;
use crate::runtime::{BoxStream, ContainerEvent};
use crate::{Engine, EngineError};

pub use crate::runtime::ContainerEventKind as EventKind;

/// Something that happened to a container of a service this engine deployed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEvent {
    pub container_id: String,
    pub container_name: String,
    pub app: String,
    pub service: String,
    pub kind: EventKind,
    /// For [`EventKind::Die`]: how the main process ended.
    pub exit_code: Option<i64>,
}

/// The event of a service's container; None for one-off containers (migrations, execs), which
/// no service's health is about, and for containers without app and service labels.
pub fn service_event(e: ContainerEvent) -> Option<ServiceEvent> {
    if e.labels.contains_key(ROLE_LABEL) {
        return None;
    }
    Some(ServiceEvent {
        app: e.labels.get(labels::APP)?.clone(),
        service: e.labels.get(labels::SERVICE)?.clone(),
        container_id: e.id,
        container_name: e.name,
        kind: e.kind,
        exit_code: e.exit_code,
    })
}

impl Engine {
    /// Events of the containers labelled with this engine's host and env, from now on. The
    /// stream ends or yields an error when the engine connection does; whoever reads it
    /// reconnects and looks at every service again, since nothing is replayed.
    pub fn service_events(&self) -> BoxStream<'static, Result<ServiceEvent, EngineError>> {
        let wanted = [
            (labels::HOST.to_string(), self.identity.host.clone()),
            (labels::ENV.to_string(), self.identity.env.clone()),
        ];
        Box::pin(self.rt.container_events(&wanted).filter_map(|e| {
            std::future::ready(match e {
                Ok(e) => service_event(e).map(Ok),
                Err(e) => Some(Err(e.into())),
            })
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn event(labels: &[(&str, &str)]) -> ContainerEvent {
        ContainerEvent {
            id: "c0ffee".into(),
            name: "acme-prod-web".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            kind: EventKind::Die,
            exit_code: Some(137),
        }
    }

    #[test]
    fn only_service_containers_make_service_events() {
        let app = (labels::APP, "acme");
        let service = (labels::SERVICE, "web");
        let got = service_event(event(&[app, service, ("image", "r/web")]));
        assert_eq!(
            got,
            Some(ServiceEvent {
                container_id: "c0ffee".into(),
                container_name: "acme-prod-web".into(),
                app: "acme".into(),
                service: "web".into(),
                kind: EventKind::Die,
                exit_code: Some(137),
            })
        );
        // A migration or an exec borrows the service's labels but is no service.
        assert_eq!(
            service_event(event(&[app, service, (ROLE_LABEL, "exec")])),
            None
        );
        assert_eq!(service_event(event(&[app])), None);
        assert_eq!(service_event(event(&[service])), None);
    }
}
