//! From a [`PipelineConfig`] to a running timely computation.
//!
//! ```text
//!  sources ─> decode ─> dedup ─> order ─> features ─> features sink
//!               │  └─ progress (broadcast) ─┘  │
//!               v          v                   v
//!         dead letters  conflicts            late
//! ```
//!
//! Each worker builds the same dataflow; sources read only the partitions the worker owns.
//! The worker loop steps the dataflow and, whenever the probe at the end of the dataflow
//! passes an epoch, hands that epoch's staged state in; the state store commits an epoch once
//! every worker has handed it in.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_connectors::services::Services;
use sluice_connectors::source::StopLine;
use sluice_connectors::DeliveryState;
use sluice_connectors::{OutputStream, SourceSettings, TimeOfFactory};
use sluice_operators::{Decoder, DurationMs, Epoch, Metrics, Models, RawRecord};
use sluice_state::{StateOptions, StateStore, TableSpec};

use crate::config::{Durations, PipelineConfig};
use crate::outputs::PartitionNames;

mod stages;
mod worker;

/// How a run is driven from outside.
#[derive(Debug, Clone, Default)]
pub struct RunControl {
    /// Set to stop: sources end their epoch and stop without finishing; state is committed.
    pub stop: Arc<AtomicBool>,
    /// Set to drain: sources read what exists now (a Kafka partition up to its current high
    /// watermark) and then finish, so that every buffered event comes out; the run ends.
    pub drain: Arc<AtomicBool>,
    /// Counters, shared with a progress display.
    pub metrics: Arc<Metrics>,
    /// The HTTP server's address, once it listens.
    pub http_addr: Arc<std::sync::OnceLock<std::net::SocketAddr>>,
    /// Webhook sources' addresses by source name, once they listen.
    pub webhook_addrs: Arc<std::sync::Mutex<std::collections::BTreeMap<String, std::net::SocketAddr>>>,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    /// The epoch the run resumed at (0 for a fresh state directory).
    pub resumed_at_epoch: Epoch,
    /// The epoch a later run will resume at.
    pub resume_epoch: Epoch,
    /// Records read.
    pub records_in: u64,
    /// Records read again at the start to refill the order buffer (not in `records_in`).
    pub records_replayed: u64,
    /// Events decoded.
    pub decoded: u64,
    /// Dead letters.
    pub dead_letters: u64,
    /// Exact duplicates dropped.
    pub duplicates: u64,
    /// Conflicting repeats.
    pub conflicts: u64,
    /// Late events.
    pub late: u64,
    /// Feature records out.
    pub features_out: u64,
    /// Records scored.
    pub scored: u64,
    /// Records scored by the shadow model.
    pub shadow_scored: u64,
    /// Mean |shadow score − primary score| over the records both scored.
    pub shadow_mean_abs_diff: Option<f64>,
    /// Drift windows emitted.
    pub drift_windows: u64,
    /// Drift records with status `alert`, per (column, statistic).
    pub drift_alerts: Vec<(String, String, u64)>,
    /// Wall time.
    pub elapsed: Duration,
}

/// Every table a pipeline declares.
pub fn tables() -> Vec<TableSpec> {
    let mut t = sluice_operators::decode::tables();
    t.extend(crate::reconcile::tables());
    t.extend(sluice_operators::dedup::tables());
    t.extend(sluice_operators::order::tables());
    t.extend(sluice_operators::features::tables());
    t.extend(sluice_operators::drift::tables());
    t.extend(sluice_connectors::tables());
    t
}

/// A run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration is not valid.
    #[error("configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// The state directory cannot be used.
    #[error("state: {0}")]
    State(#[from] sluice_state::StateError),
    /// The model cannot be loaded or does not fit the pipeline.
    #[error(transparent)]
    Model(sluice_operators::OperatorError),
    /// The HTTP server cannot start (the address taken, or the feature service's config).
    #[error(transparent)]
    Server(#[from] crate::server::ServerError),
    /// The SLO monitor's thread cannot start.
    #[error("cannot start the SLO monitor: {0}")]
    Monitor(#[source] std::io::Error),
    /// A connector cannot start (a Kafka broker unreachable, a topic missing) or a sink failed
    /// to deliver.
    #[error("{what}: {source}")]
    Connector {
        /// Which source or sink (`source `ledger``, `sink of `scores``).
        what: String,
        /// Why.
        #[source]
        source: sluice_connectors::ConnectorError,
    },
    /// A worker failed.
    #[error("worker {worker}: {source}")]
    Worker {
        /// Which worker.
        worker: usize,
        /// What failed.
        #[source]
        source: WorkerError,
    },
}

/// Why a worker could not build its dataflow, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// An operator could not be built (its configuration, its state tables).
    #[error(transparent)]
    Operator(#[from] sluice_operators::OperatorError),
    /// The state layer failed while building (a table, a replay of committed inputs).
    #[error("state: {0}")]
    State(#[from] sluice_state::StateError),
    /// The configuration does not fit (caught here only if validation let it through).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The sources' reader or a sink could not be built.
    #[error("{what}: {source}")]
    Connector {
        /// The sources, or the sink of a stream.
        what: String,
        /// Why.
        #[source]
        source: sluice_connectors::ConnectorError,
    },
    /// Handing an epoch in for commit failed: the store has stopped committing.
    #[error("commit failed: {0}")]
    Commit(#[source] sluice_state::StateError),
    /// The worker's thread panicked, or timely could not start the workers.
    #[error("{0}")]
    Aborted(String),
}

impl RunError {
    /// Whether running again may help without changing anything (a broker or a server that
    /// comes back), as far as the error tells.
    pub fn retry(&self) -> sluice_connectors::Retry {
        match self {
            RunError::Connector { source, .. } => source.retry(),
            RunError::Server(e) => e.retry(),
            RunError::Monitor(_) => sluice_connectors::Retry::Later,
            RunError::Config(_) | RunError::State(_) | RunError::Model(_) | RunError::Worker { .. } => sluice_connectors::Retry::Never,
        }
    }
}

fn connector_service((what, source): sluice_connectors::services::ServiceError) -> RunError {
    RunError::Connector { what, source }
}

/// What every worker builds and runs from: the resolved configuration and what was started for
/// it before the workers (the state, the models, the connectors' services).
pub(crate) struct Plan {
    /// The validated configuration, with what only the outside world knows resolved.
    pub config: Arc<PipelineConfig>,
    /// Its durations, parsed.
    pub durations: Durations,
    /// The models, loaded.
    pub models: Option<Models>,
    /// Source and partition of each global partition index.
    pub names: PartitionNames,
    /// The Kafka sinks' delivery states, by stream.
    pub delivery_states: Vec<(String, Arc<DeliveryState>)>,
    /// How a paced file source reads an event's time.
    pub time_of: TimeOfFactory,
    /// Epochs and backpressure.
    pub settings: SourceSettings,
    /// The state store.
    pub store: Arc<StateStore>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Where the sources stop.
    pub stop: Arc<StopLine>,
    /// The epoch this run resumed at.
    pub resumed_at_epoch: Epoch,
    /// When the run started.
    pub started: Instant,
    /// The niceness of the dataflow's threads.
    pub nice: i32,
}

/// Runs a pipeline to the end of its inputs (or until `control.stop` is set).
///
/// # Errors
/// Configuration, state and worker failures; a panicking worker is reported as a failure.
pub fn run(config: &PipelineConfig, control: &RunControl) -> Result<RunSummary, RunError> {
    let started = Instant::now();
    let config = resolve(config)?;
    let durations = config.durations();
    let models = start_models(&config, &control.metrics)?;
    let nice = config.server.as_ref().map_or(0, |s| s.dataflow_nice);
    let store = open_state(&config, nice)?;
    let resumed_at_epoch = store.resume_epoch();
    report_recovery(&config, &store, started.elapsed())?;
    let services = Services::start(&config.sources, &config.sinks, &store, &control.metrics, &control.stop).map_err(connector_service)?;
    control.webhook_addrs.lock().expect("invariant: not poisoned").extend(services.addrs());
    let names = partition_names(&config);
    let server = start_server(&config, control, &store, &names, services.delivery_states())?;
    let monitor = start_monitor(&config, &control.metrics)?;
    let plan = Arc::new(Plan {
        settings: SourceSettings {
            epoch_records: config.epoch_records,
            epoch_bytes: config.epoch_bytes,
            epoch_ms: config.epoch_ms,
            max_inflight_epochs: config.max_inflight_epochs,
            idle_timeout_ms: durations.idle_timeout_ms as u64,
        },
        time_of: time_of(&config),
        stop: StopLine::new(Arc::clone(&control.stop), config.workers, resumed_at_epoch).draining_on(Arc::clone(&control.drain)),
        delivery_states: services.delivery_states(),
        config: Arc::new(config),
        durations,
        models,
        names,
        store: Arc::clone(&store),
        metrics: Arc::clone(&control.metrics),
        resumed_at_epoch,
        started,
        nice,
    });
    let workers = plan.config.workers;
    let guards = timely::execute(timely::Config::process(workers), move |worker| worker::run(worker, &plan))
        .map_err(|e| RunError::Worker { worker: 0, source: WorkerError::Aborted(e) })?;
    for (worker, result) in guards.join().into_iter().enumerate() {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(source)) => return Err(RunError::Worker { worker, source }),
            Err(panic) => return Err(RunError::Worker { worker, source: WorkerError::Aborted(panic) }),
        }
    }
    // The last batches may still be on their way to disk; then the Kafka sinks deliver every
    // committed epoch left.
    store.sync()?;
    services.finish().map_err(connector_service)?;
    control.metrics.latency.committed_before(store.resume_epoch(), sluice_operators::event::now_us());
    monitor.finish();
    drop(server);
    Ok(summary(&control.metrics, resumed_at_epoch, store.resume_epoch(), started.elapsed()))
}

/// Validates `config`, then resolves what only the outside world knows (a Kafka topic's
/// partitions) and the defaults that depend on the state directory, once, before any worker.
fn resolve(config: &PipelineConfig) -> Result<PipelineConfig, RunError> {
    config.validate()?;
    let mut resolved = config.clone();
    for (i, s) in resolved.sources.iter_mut().enumerate() {
        s.resolve().map_err(|source| RunError::Connector { what: format!("sources[{i}] ({})", s.name()), source })?;
        s.default_under(&resolved.state_dir);
    }
    Ok(resolved)
}

/// Loads the models once before starting workers, so that a missing library or a model that
/// does not fit fails here, with one clear message; they are then watched for new versions.
fn start_models(config: &PipelineConfig, metrics: &Arc<Metrics>) -> Result<Option<Models>, RunError> {
    let start = |m: &sluice_operators::ModelConfig| {
        let source = sluice_operators::ModelSource::start(m, Arc::clone(metrics)).map_err(RunError::Model)?;
        tracing::info!(section = %m.section, model = %m.model_name(), "model loaded");
        Ok::<_, RunError>(source)
    };
    Ok(match &config.model {
        Some(model) => Some(Models { primary: start(model)?, shadow: config.shadow_model().as_ref().map(start).transpose()? }),
        None => None,
    })
}

fn open_state(config: &PipelineConfig, nice: i32) -> Result<Arc<StateStore>, RunError> {
    let options = StateOptions {
        cache_bytes: config.state_cache_mb << 20,
        background_nice: nice,
        min_free_bytes: config.state_min_free_mb << 20,
        sync_commits: config.state_sync,
        checkpoint_every: config.checkpoint_every.map(DurationMs::std),
        checkpoints_kept: config.checkpoints_kept,
        ..StateOptions::default()
    };
    Ok(StateStore::open(&config.state_dir, &tables(), config.workers, &options)?)
}

/// The restart report: what was recovered, and how long opening the state took.
fn report_recovery(config: &PipelineConfig, store: &Arc<StateStore>, opened_in: Duration) -> Result<(), RunError> {
    let resumed_at_epoch = store.resume_epoch();
    if resumed_at_epoch > 0 {
        let recovered = crate::checkpoint::inspect(&sluice_state::StateReader::new(Arc::clone(store)), &config.state_dir)?;
        tracing::info!(
            epoch = resumed_at_epoch - 1,
            state = %config.state_dir.display(),
            open_ms = opened_in.as_millis() as u64,
            "recovered {}",
            recovered.summary()
        );
    }
    Ok(())
}

/// Source and partition of each global partition index, in the order of the sources.
fn partition_names(config: &PipelineConfig) -> PartitionNames {
    let mut names = Vec::new();
    for s in &config.sources {
        for p in 0..s.partitions() {
            names.push((s.name().to_string(), p as u32));
        }
    }
    PartitionNames(Arc::new(names))
}

/// The `[server]`: `/metrics`, `/healthz` and feature serving.
fn start_server(
    config: &PipelineConfig,
    control: &RunControl,
    store: &Arc<StateStore>,
    names: &PartitionNames,
    deliveries: Vec<(String, Arc<DeliveryState>)>,
) -> Result<Option<crate::server::Server>, RunError> {
    let Some(s) = &config.server else {
        return Ok(None);
    };
    let info = crate::prometheus::ExportInfo { partition_sources: names.0.iter().map(|(s, _)| s.clone()).collect(), deliveries };
    let features = crate::serve::FeatureService::from_config(config, s, sluice_state::StateReader::new(Arc::clone(store)))?;
    let server = crate::server::Server::start(s, Some((Arc::clone(&control.metrics), info)), features)?;
    let _ = control.http_addr.set(server.addr());
    Ok(Some(server))
}

/// The monitor thread: freshness samples, SLO intervals, the `slo` records.
fn start_monitor(config: &PipelineConfig, metrics: &Arc<Metrics>) -> Result<crate::monitor::Monitor, RunError> {
    let slo_path = config.sinks.iter().find(|s| s.output() == Some(OutputStream::Slo)).and_then(|s| s.file().map(std::path::Path::to_path_buf));
    crate::monitor::Monitor::start(config.objectives()?, config.slo_interval.std(), slo_path, Arc::clone(metrics)).map_err(RunError::Monitor)
}

/// How a paced file source reads an event's time: by the pipeline's `[event]` mapping.
fn time_of(config: &PipelineConfig) -> TimeOfFactory {
    let schema = config.event.clone();
    Arc::new(move || {
        let decoder = Decoder::new(&schema).expect("invariant: the schema was validated");
        Box::new(move |bytes: &[u8]| {
            decoder.decode(&RawRecord::new(sluice_operators::Origin { partition: 0, offset: 0 }, bytes.to_vec())).ok().map(|e| e.time_ms)
        })
    })
}

fn summary(m: &Metrics, resumed_at_epoch: Epoch, resume_epoch: Epoch, elapsed: Duration) -> RunSummary {
    RunSummary {
        resumed_at_epoch,
        resume_epoch,
        records_in: Metrics::get(&m.sources.records_in),
        records_replayed: Metrics::get(&m.sources.records_replayed),
        decoded: Metrics::get(&m.decode.decoded),
        dead_letters: Metrics::get(&m.decode.dead_letters),
        duplicates: Metrics::get(&m.dedup.duplicates),
        conflicts: Metrics::get(&m.dedup.conflicts),
        late: Metrics::get(&m.time.late),
        features_out: Metrics::get(&m.features.records_out),
        scored: Metrics::get(&m.model.scored),
        shadow_scored: Metrics::get(&m.model.shadow_scored),
        shadow_mean_abs_diff: m.model.shadow_mean_abs_diff(),
        drift_windows: Metrics::get(&m.drift.windows),
        drift_alerts: m
            .drift
            .latest
            .lock()
            .map(|l| l.iter().filter(|(_, g)| g.alerts > 0).map(|((c, s), g)| (c.clone(), s.clone(), g.alerts)).collect())
            .unwrap_or_default(),
        elapsed,
    }
}
