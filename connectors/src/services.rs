//! The background services of a pipeline's connectors ([`Service`]), started together before
//! the workers and finished together after them: Kafka sinks' delivery threads, webhook
//! servers, Kafka sources' offset publishers, PostgreSQL sources' slot advancers.
//!
//! The assembly layer starts them with [`Services::start`] and ends them with
//! [`Services::finish`]; it names no connector kind, and neither does this file: a connector
//! with a service returns it from its `start`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use sluice_operators::Metrics;
use sluice_state::StateStore;

use crate::connector::{Service, ServiceContext};
use crate::{ConnectorError, DeliveryState, SinkConfig, SourceConfig};

/// A connector's error, with which source or sink it is (`source `ledger``, `sink of `scores``).
pub type ServiceError = (String, ConnectorError);

/// The running services of a pipeline's sources and sinks.
#[derive(Debug, Default)]
pub struct Services {
    /// By source name.
    sources: Vec<(String, Box<dyn Service>)>,
    /// By stream name.
    sinks: Vec<(String, Box<dyn Service>)>,
}

impl Services {
    /// Starts the services of `sinks`, then of `sources`, over `store`; `stop` is raised when
    /// one fails (a delivery).
    ///
    /// # Errors
    /// A service cannot start (a broker unreachable, a port taken, a log that does not open);
    /// those already started are stopped.
    pub fn start(
        sources: &[SourceConfig],
        sinks: &[SinkConfig],
        store: &Arc<StateStore>,
        metrics: &Arc<Metrics>,
        stop: &Arc<AtomicBool>,
    ) -> Result<Services, ServiceError> {
        let context = ServiceContext { store, metrics, stop };
        let mut services = Services::default();
        for s in sinks {
            if let Some(service) = s.start(context).map_err(|e| (format!("sink of `{}`", s.stream()), e))? {
                services.sinks.push((s.stream().to_string(), service));
            }
        }
        for s in sources {
            if let Some(service) = s.start(context).map_err(|e| (format!("source `{}`", s.name()), e))? {
                services.sources.push((s.name().to_string(), service));
            }
        }
        Ok(services)
    }

    /// The delivery state of each sink that delivers from an outbox, by stream, for the sink
    /// operators and `/metrics`.
    pub fn delivery_states(&self) -> Vec<(String, Arc<DeliveryState>)> {
        self.sinks.iter().filter_map(|(stream, s)| Some((stream.clone(), s.delivery()?))).collect()
    }

    /// The address each source's server listens on (a webhook source's), by source.
    pub fn addrs(&self) -> BTreeMap<String, SocketAddr> {
        self.sources.iter().filter_map(|(name, s)| Some((name.clone(), s.addr()?))).collect()
    }

    /// Ends every service once the workers are done and the state is synced: the sources'
    /// first (publishers and advancers take the last committed positions, servers stop
    /// answering), then the sinks' (every committed epoch left is delivered).
    ///
    /// # Errors
    /// The first that failed (a delivery: the undelivered epochs stay in the outbox and go out
    /// after a restart); the rest are finished all the same.
    pub fn finish(self) -> Result<(), ServiceError> {
        let mut first = None;
        let sources = self.sources.into_iter().map(|(name, s)| (format!("source `{name}`"), s));
        let sinks = self.sinks.into_iter().map(|(stream, s)| (format!("sink of `{stream}`"), s));
        for (what, service) in sources.chain(sinks) {
            if let Err(e) = service.finish() {
                first.get_or_insert((what, e));
            }
        }
        first.map_or(Ok(()), Err)
    }
}
