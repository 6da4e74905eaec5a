//! What the agent needs from the deploy engine, as a trait: the real one is
//! [`deploy::Engine`]; the agent's own tests drive the daemon with a scripted stand-in so the
//! protocol, locks, journal and recovery are tested without Docker.

use std::future::Future;
use std::pin::Pin;

use deploy::events::ServiceEvent;
use deploy::{EventSink, ServiceSnapshot};
use proto::wire::{Outcome, ServiceLogs};
use proto::{Order, ServiceSpec};

/// The engine's events about this agent's service containers ([`Backend::events`]).
pub type Events = Pin<Box<dyn futures_util::Stream<Item = Result<ServiceEvent, String>> + Send>>;

pub trait Backend: Send + Sync + 'static {
    /// Runs an accepted order to its outcome; every step goes to `sink` before it is taken.
    fn execute(&self, order: &Order, sink: &dyn EventSink) -> impl Future<Output = Outcome> + Send;
    /// Brings an order interrupted by a crash to one healthy version per service.
    fn recover(&self, order: &Order, sink: &dyn EventSink) -> impl Future<Output = Outcome> + Send;
    /// What runs now for one service, with a fresh health probe.
    fn inspect_service(
        &self,
        app: &str,
        service: &str,
        spec: &ServiceSpec,
    ) -> impl Future<Output = ServiceSnapshot> + Send;
    /// The tail of a service's container log.
    fn logs(
        &self,
        app: &str,
        service: &str,
        spec: &ServiceSpec,
        lines: usize,
    ) -> impl Future<Output = Result<ServiceLogs, String>> + Send;
    /// The engine's version and data root, or why it does not answer.
    fn engine_facts(&self) -> impl Future<Output = Result<deploy::EngineFacts, String>> + Send {
        async { Err("no engine behind this backend".to_string()) }
    }
    /// Every proxy the order's services name answers; else why not (nothing is changed yet).
    fn check_proxies(&self, _order: &Order) -> impl Future<Output = Result<(), String>> + Send {
        async { Ok(()) }
    }
    /// The maintenance page's text, when a proxied service shows one.
    fn maintenance_of(
        &self,
        _app: &str,
        _service: &str,
        _spec: &ServiceSpec,
    ) -> impl Future<Output = Option<String>> + Send {
        async { None }
    }
    /// What happens to the service containers, as it happens; ends when the engine connection
    /// does. The default never yields (a backend without events: the periodic probe alone).
    fn events(&self) -> Events {
        Box::pin(futures_util::stream::pending())
    }
}

impl Backend for deploy::Engine {
    async fn engine_facts(&self) -> Result<deploy::EngineFacts, String> {
        deploy::Engine::engine_facts(self)
            .await
            .map_err(|e| e.to_string())
    }

    fn execute(&self, order: &Order, sink: &dyn EventSink) -> impl Future<Output = Outcome> + Send {
        deploy::Engine::execute(self, order, sink)
    }

    fn recover(&self, order: &Order, sink: &dyn EventSink) -> impl Future<Output = Outcome> + Send {
        deploy::Engine::recover(self, order, sink)
    }

    fn inspect_service(
        &self,
        app: &str,
        service: &str,
        spec: &ServiceSpec,
    ) -> impl Future<Output = ServiceSnapshot> + Send {
        deploy::Engine::inspect_service(self, app, service, spec)
    }

    async fn logs(
        &self,
        app: &str,
        service: &str,
        spec: &ServiceSpec,
        lines: usize,
    ) -> Result<ServiceLogs, String> {
        deploy::Engine::logs(self, app, service, spec, lines)
            .await
            .map_err(|e| e.to_string())
    }

    fn check_proxies(&self, order: &Order) -> impl Future<Output = Result<(), String>> + Send {
        deploy::Engine::check_proxies(self, order)
    }

    fn maintenance_of(
        &self,
        app: &str,
        service: &str,
        spec: &ServiceSpec,
    ) -> impl Future<Output = Option<String>> + Send {
        deploy::Engine::maintenance_of(self, app, service, spec)
    }

    fn events(&self) -> Events {
        use futures_util::StreamExt;
        Box::pin(self.service_events().map(|e| e.map_err(|e| e.to_string())))
    }
}
