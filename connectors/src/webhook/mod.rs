//! Webhook ingest: `[[sources]] type = "webhook"` ([`config`]) runs an HTTP server
//! ([`server`]) whose route verifies the signature ([`signature`]), writes the webhook to a
//! durable log ([`log`]) and only then answers 2xx; the dataflow reads the log as a partition.

pub mod config;
pub mod log;
pub mod server;
pub mod signature;

pub use config::WebhookSourceConfig;
pub use server::{Gate, WebhookServer};

pub use log::{Appended, WebhookLog, WebhookReader};
pub use signature::{Rejection, Scheme, Verifier};

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use crate::connector::{parse_source, Service, ServiceContext, Source, SourceKind};
use crate::source::TimeOfFactory;
use crate::{ConnectorError, PartitionReader};

/// The `webhook` source's registry line.
pub const SOURCE: SourceKind = SourceKind {
    kind: "webhook",
    about: "HTTP webhooks: signature checked (Standard Webhooks, Stripe, GitHub), logged durably before the 2xx, deduplicated by id",
    parse: parse_source::<WebhookSourceConfig>,
};

impl WebhookSourceConfig {
    /// The source's log: opened by the first caller (the server, at start), then the same
    /// handle for the reader.
    fn log(&self) -> Result<Arc<WebhookLog>, ConnectorError> {
        let mut opened = self.opened.0.lock().expect("invariant: not poisoned");
        if let Some(log) = opened.as_ref() {
            return Ok(Arc::clone(log));
        }
        let log = WebhookLog::open(self.log_dir.as_deref().expect("invariant: the pipeline sets the log directory (default_under) before using it"))?;
        *opened = Some(Arc::clone(&log));
        Ok(log)
    }
}

impl Source for WebhookSourceConfig {
    fn name(&self) -> &str {
        &self.name
    }

    fn validate(&self, key: &str) -> Result<(), ConnectorError> {
        WebhookSourceConfig::validate(self, key)
    }

    /// The log defaults to `<state_dir>/webhooks/<name>`.
    fn default_under(&mut self, state_dir: &Path) {
        if self.log_dir.is_none() {
            self.log_dir = Some(state_dir.join("webhooks").join(&self.name));
        }
    }

    fn partitions(&self) -> usize {
        1
    }

    fn reader(&self, _partition: usize, _time_of: Option<TimeOfFactory>) -> Box<dyn PartitionReader> {
        let log = self.log().expect("invariant: the server opened the log before the readers are built");
        Box::new(WebhookReader::new(&self.name, log))
    }

    /// The HTTP server: it answers only once a webhook is logged, and refuses (429) while the
    /// commit is stalled.
    fn start(&self, context: ServiceContext<'_>) -> Result<Option<Box<dyn Service>>, ConnectorError> {
        let gate: Gate = {
            let store = Arc::clone(context.store);
            Arc::new(move || store.commit_stalled())
        };
        Ok(Some(Box::new(WebhookServer::start(self, self.log()?, Arc::clone(context.metrics), gate)?)))
    }
}

impl Service for WebhookServer {
    fn addr(&self) -> Option<SocketAddr> {
        Some(WebhookServer::addr(self))
    }

    /// Stops answering.
    fn finish(self: Box<Self>) -> Result<(), ConnectorError> {
        Ok(())
    }
}
