//! The background services of a pipeline's connectors, started together before the workers
//! and finished together after them: Kafka sinks' delivery threads, webhook servers (with their
//! logs), Kafka sources' offset publishers and PostgreSQL sources' slot advancers.
//!
//! The assembly layer starts them with [`Services::start`] and ends them with
//! [`Services::finish`]; it names no connector kind. A connector with a service adds it here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use sluice_operators::Metrics;
use sluice_state::StateStore;

use crate::cdc::postgres::SlotAdvancer;
use crate::kafka::{start_delivery, DeliveryHandle, DeliveryState, OffsetPublisher};
use crate::webhook::{Gate, WebhookLog, WebhookServer};
use crate::{ConnectorError, SinkConfig, SourceConfig};

/// A connector's error, with which source or sink it is (`source `ledger``, `sink of `scores``).
pub type ServiceError = (String, ConnectorError);

/// The running services of a pipeline's sources and sinks.
#[derive(Debug, Default)]
pub struct Services {
    deliveries: Vec<(String, DeliveryHandle)>,
    webhook_servers: Vec<(String, WebhookServer)>,
    publishers: Vec<OffsetPublisher>,
    advancers: Vec<SlotAdvancer>,
}

impl Services {
    /// Starts the services of `sources` and `sinks` over `store`. Kafka sinks deliver from the
    /// first committed epoch they have not delivered; webhook servers answer only once a
    /// webhook is logged, and refuse (429) while the commit is stalled; `stop` is raised when a
    /// delivery fails.
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
        let mut services = Services::default();
        for s in sinks {
            if let SinkConfig::Kafka(k) = s {
                let handle = start_delivery(k, Arc::clone(store), Arc::clone(stop)).map_err(|e| (format!("sink of `{}`", k.stream), e))?;
                services.deliveries.push((k.stream.clone(), handle));
            }
        }
        for s in sources {
            let what = || format!("source `{}`", s.name());
            match s {
                SourceConfig::Webhook(w) => {
                    let dir = w.log_dir.as_deref().expect("invariant: the log directory is resolved before the services start");
                    let log = WebhookLog::open(dir).map_err(|e| (what(), e))?;
                    let gate: Gate = {
                        let store = Arc::clone(store);
                        Arc::new(move || store.commit_stalled())
                    };
                    let server = WebhookServer::start(w, log, Arc::clone(metrics), gate).map_err(|e| (what(), e))?;
                    services.webhook_servers.push((w.name.clone(), server));
                }
                // Kafka sources commit sluice's committed positions to their consumer group, for lag tools.
                SourceConfig::Kafka(k) => {
                    services.publishers.push(OffsetPublisher::start(k, Arc::clone(store), Arc::clone(metrics)).map_err(|e| (what(), e))?);
                }
                // PostgreSQL slots advance to the committed positions.
                SourceConfig::Postgres(p) => services.advancers.push(SlotAdvancer::start(p, Arc::clone(store)).map_err(|e| (what(), e))?),
                SourceConfig::File(_) | SourceConfig::Generator(_) => {}
            }
        }
        Ok(services)
    }

    /// The delivery state of each Kafka sink, by stream, for the sink operators and `/metrics`.
    pub fn delivery_states(&self) -> Vec<(String, Arc<DeliveryState>)> {
        self.deliveries.iter().map(|(s, h)| (s.clone(), Arc::clone(&h.state))).collect()
    }

    /// The address each webhook server listens on, by source.
    pub fn webhook_addrs(&self) -> BTreeMap<String, SocketAddr> {
        self.webhook_servers.iter().map(|(name, s)| (name.clone(), s.addr())).collect()
    }

    /// Ends every service once the workers are done and the state is synced: publishers and
    /// advancers take the last committed positions, webhook servers stop answering, and Kafka
    /// sinks deliver every committed epoch left.
    ///
    /// # Errors
    /// A Kafka sink failed to deliver: the undelivered epochs stay in the outbox and go out
    /// after a restart.
    pub fn finish(self) -> Result<(), ServiceError> {
        let Services { deliveries, webhook_servers, publishers, advancers } = self;
        for publisher in publishers {
            publisher.finish();
        }
        for advancer in advancers {
            advancer.finish();
        }
        drop(webhook_servers);
        for (stream, handle) in deliveries {
            handle.finish().map_err(|e| (format!("sink of `{stream}`"), e))?;
        }
        Ok(())
    }
}
