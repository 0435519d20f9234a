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

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_connectors::file::{file_sink, OutputLine, TimeOfFactory};
use sluice_connectors::{source, SourceSettings};
use sluice_operators::{
    parse_duration_ms, Decode, Decoder, Dedup, DedupConfig, Drift, DriftConfig, DriftSample, Epoch, Event, FeatureRecord, FeatureSet, Features, Metrics,
    Models, Order, OrderConfig, RawRecord, Score, ScoreRecord,
};
use sluice_state::{StateOptions, StateStore, TableSpec};
use timely::dataflow::operators::vec::{Broadcast, Map};
use timely::dataflow::operators::{Concat, Probe};
use timely::dataflow::{ProbeHandle, Stream};

use crate::config::PipelineConfig;
use crate::outputs::{conflict_line, dead_letter_line, drift_line, feature_line, late_line, score_line, unscored_line, PartitionNames};

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
    #[error("{0}")]
    Model(String),
    /// The HTTP server or the monitor cannot start.
    #[error("{0}")]
    Server(String),
    /// A connector cannot start (a Kafka broker unreachable, a topic missing) or a sink failed
    /// to deliver.
    #[error("{0}")]
    Connector(String),
    /// A worker failed.
    #[error("worker {worker}: {message}")]
    Worker {
        /// Which worker.
        worker: usize,
        /// What failed.
        message: String,
    },
}

/// The drift samples of a pipeline: the monitored features of each feature record, the score
/// of each score, the monitored strings of each ordered event.
fn drift_samples<'scope>(
    drift: &DriftConfig,
    string_names: &[String],
    feature_names: &[String],
    features: Stream<'scope, Epoch, Vec<FeatureRecord>>,
    scores: Option<Stream<'scope, Epoch, Vec<ScoreRecord>>>,
    events: Option<Stream<'scope, Epoch, Vec<Event>>>,
) -> Stream<'scope, Epoch, Vec<DriftSample>> {
    let columns = drift.columns();
    let n = columns.numbers.len();
    let picks: Vec<usize> =
        drift.features.iter().map(|f| feature_names.iter().position(|n| n == f).expect("invariant: drift features were validated")).collect();
    let k = columns.categories.len();
    let mut samples = features.map(move |r| {
        let mut numbers: Vec<Option<f64>> = picks.iter().map(|i| r.values[*i]).collect();
        numbers.resize(n, None);
        DriftSample { time_ms: r.time_ms, numbers, categories: vec![None; k] }
    });
    if let Some(scores) = scores {
        samples = samples.concat(scores.map(move |s| {
            let mut numbers = vec![None; n];
            numbers[n - 1] = Some(s.score);
            DriftSample { time_ms: s.time_ms, numbers, categories: vec![None; k] }
        }));
    }
    if let Some(events) = events {
        let picks: Vec<usize> =
            columns.categories.iter().map(|c| string_names.iter().position(|s| s == c).expect("invariant: drift categories were validated")).collect();
        samples = samples.concat(events.map(move |e| DriftSample {
            time_ms: e.time_ms,
            numbers: vec![None; n],
            categories: picks.iter().map(|i| e.strings[*i].clone()).collect(),
        }));
    }
    samples
}

/// Runs a pipeline to the end of its inputs (or until `control.stop` is set).
///
/// # Errors
/// Configuration, state and worker failures; a panicking worker is reported as a failure.
pub fn run(config: &PipelineConfig, control: &RunControl) -> Result<RunSummary, RunError> {
    config.validate()?;
    // What only the outside world knows (a Kafka topic's partitions), once, before any worker.
    let mut resolved = config.clone();
    for (i, s) in resolved.sources.iter_mut().enumerate() {
        s.resolve().map_err(|e| RunError::Connector(format!("sources[{i}] ({}): {e}", s.name())))?;
        if let sluice_connectors::SourceConfig::Webhook(w) = s {
            if w.log_dir.is_none() {
                w.log_dir = Some(resolved.state_dir.join("webhooks").join(&w.name));
            }
        }
    }
    let config = &resolved;
    let started = Instant::now();
    let durations = config.durations()?;
    // Loaded once before starting workers, so that a missing library or a model that does not
    // fit fails here, with one clear message; then watched for new versions.
    let start_model = |m: &sluice_operators::ModelConfig| {
        let source = sluice_operators::ModelSource::start(m, Arc::clone(&control.metrics)).map_err(|e| RunError::Model(e.to_string()))?;
        tracing::info!(section = %m.section, model = %m.model_name(), "model loaded");
        Ok::<_, RunError>(source)
    };
    let models = match &config.model {
        Some(model) => Some(Models { primary: start_model(model)?, shadow: config.shadow_model().as_ref().map(start_model).transpose()? }),
        None => None,
    };
    let nice = config.server.as_ref().map_or(0, |s| s.dataflow_nice);
    let options = StateOptions {
        cache_bytes: config.state_cache_mb << 20,
        background_nice: nice,
        min_free_bytes: config.state_min_free_mb << 20,
        sync_commits: config.state_sync,
        checkpoint_every: durations.checkpoint_every_ms.map(|ms| Duration::from_millis(ms.max(1) as u64)),
        checkpoints_kept: config.checkpoints_kept,
        ..StateOptions::default()
    };
    let store = StateStore::open(&config.state_dir, &tables(), config.workers, &options)?;
    let resumed_at_epoch = store.resume_epoch();
    let opened_in = started.elapsed();
    // Kafka sinks deliver from the outbox on their own threads, from the first committed
    // epoch they have not delivered.
    let mut deliveries = Vec::new();
    for s in &config.sinks {
        if let sluice_connectors::SinkConfig::Kafka(k) = s {
            let handle = sluice_connectors::kafka::start_delivery(k, Arc::clone(&store), Arc::clone(&control.stop))
                .map_err(|e| RunError::Connector(format!("sink of `{}`: {e}", k.stream)))?;
            deliveries.push((k.stream.clone(), handle));
        }
    }
    let delivery_states: Arc<Vec<(String, Arc<sluice_connectors::kafka::DeliveryState>)>> =
        Arc::new(deliveries.iter().map(|(s, h)| (s.clone(), Arc::clone(&h.state))).collect());
    // Webhook sources: their logs, and their servers (answering only once a webhook is logged).
    let mut webhook_servers = Vec::new();
    for s in &config.sources {
        if let sluice_connectors::SourceConfig::Webhook(w) = s {
            let dir = w.log_dir.as_deref().expect("invariant: set above");
            let log = sluice_connectors::webhook::WebhookLog::open(dir).map_err(|e| RunError::Connector(format!("source `{}`: {e}", w.name)))?;
            let gate: sluice_connectors::webhook::Gate = {
                let store = Arc::clone(&store);
                Arc::new(move || store.commit_stalled())
            };
            let server = sluice_connectors::webhook::WebhookServer::start(w, log, Arc::clone(&control.metrics), gate)
                .map_err(|e| RunError::Connector(format!("source `{}`: {e}", w.name)))?;
            control.webhook_addrs.lock().expect("invariant: not poisoned").insert(w.name.clone(), server.addr());
            webhook_servers.push(server);
        }
    }
    // Kafka sources commit sluice's committed positions to their consumer group, for lag tools.
    let mut publishers = Vec::new();
    for s in &config.sources {
        if let sluice_connectors::SourceConfig::Kafka(k) = s {
            let publisher = sluice_connectors::kafka::OffsetPublisher::start(k, Arc::clone(&store), Arc::clone(&control.metrics))
                .map_err(|e| RunError::Connector(format!("source `{}`: {e}", k.name)))?;
            publishers.push(publisher);
        }
    }
    // PostgreSQL sources: their slots advance to the committed positions.
    let mut advancers = Vec::new();
    for s in &config.sources {
        if let sluice_connectors::SourceConfig::Postgres(p) = s {
            let advancer = sluice_connectors::cdc::postgres::SlotAdvancer::start(p, Arc::clone(&store))
                .map_err(|e| RunError::Connector(format!("source `{}`: {e}", p.name)))?;
            advancers.push(advancer);
        }
    }
    if resumed_at_epoch > 0 {
        // The restart report: what was recovered, and how long opening the state took.
        let recovered = crate::checkpoint::inspect(&sluice_state::StateReader::new(Arc::clone(&store)), &config.state_dir)?;
        tracing::info!(
            epoch = resumed_at_epoch - 1,
            state = %config.state_dir.display(),
            open_ms = opened_in.as_millis() as u64,
            "recovered {}",
            recovered.summary()
        );
    }

    let mut names = Vec::new();
    for s in &config.sources {
        for p in 0..s.partitions() {
            names.push((s.name().to_string(), p as u32));
        }
    }
    let server = match &config.server {
        Some(s) => {
            let info =
                crate::prometheus::ExportInfo { partition_sources: names.iter().map(|(s, _)| s.clone()).collect(), deliveries: delivery_states.to_vec() };
            let features =
                crate::serve::FeatureService::from_config(config, s, sluice_state::StateReader::new(Arc::clone(&store))).map_err(RunError::Server)?;
            let server = crate::server::Server::start(&s.listen, Some((Arc::clone(&control.metrics), info)), features).map_err(RunError::Server)?;
            let _ = control.http_addr.set(server.addr());
            Some(server)
        }
        None => None,
    };
    let slo_path = config.sinks.iter().find(|s| s.stream() == "slo").and_then(|s| s.path().map(std::path::Path::to_path_buf));
    let interval = Duration::from_millis(
        parse_duration_ms(&config.slo_interval).map_err(|p| RunError::Config(crate::config::ConfigError { key: "slo_interval".into(), problem: p }))? as u64,
    );
    let monitor = crate::monitor::Monitor::start(config.objectives()?, interval, slo_path, Arc::clone(&control.metrics))
        .map_err(|e| RunError::Server(format!("cannot start the SLO monitor: {e}")))?;
    let names = PartitionNames(Arc::new(names));
    let config = Arc::new(config.clone());
    let settings = SourceSettings {
        epoch_records: config.epoch_records,
        epoch_ms: config.epoch_ms,
        max_inflight_epochs: config.max_inflight_epochs,
        idle_timeout_ms: durations.idle_timeout_ms as u64,
    };
    let time_of: TimeOfFactory = {
        let schema = config.event.clone();
        Arc::new(move || {
            let decoder = Decoder::new(&schema).expect("invariant: the schema was validated");
            Box::new(move |bytes: &[u8]| {
                decoder.decode(&RawRecord::new(sluice_operators::Origin { partition: 0, offset: 0 }, bytes.to_vec())).ok().map(|e| e.time_ms)
            })
        })
    };

    let worker_store = Arc::clone(&store);
    let metrics = Arc::clone(&control.metrics);
    let stop = sluice_connectors::source::StopLine::new(Arc::clone(&control.stop), config.workers, resumed_at_epoch).draining_on(Arc::clone(&control.drain));
    let guards = timely::execute(timely::Config::process(config.workers), move |worker| -> Result<(), String> {
        sluice_state::sched::set_thread_nice(nice);
        let index = worker.index();
        let peers = worker.peers();
        let state = Rc::new(RefCell::new(worker_store.worker(index)));
        let probe = ProbeHandle::<Epoch>::new();
        let built = worker.dataflow::<Epoch, _, _>(|scope| -> Result<(), String> {
            let mut readers = Vec::new();
            let mut global = 0u32;
            for s in &config.sources {
                for p in 0..s.partitions() {
                    if global as usize % peers == index {
                        readers.push((global, s.reader(p, Some(Arc::clone(&time_of)))));
                    }
                    global += 1;
                }
            }
            let items = source::build(scope, readers, settings, Rc::clone(&state), probe.clone(), Arc::clone(&stop), Arc::clone(&metrics))
                .map_err(|e| e.to_string())?;
            let sink = |lines: Stream<'_, Epoch, Vec<OutputLine>>, stream: &str| -> Result<(), String> {
                match config.sinks.iter().find(|s| s.stream() == stream) {
                    Some(sluice_connectors::SinkConfig::File(s)) => {
                        file_sink(lines, stream, &s.path, Rc::clone(&state)).map_err(|e| e.to_string())?.probe_with(&probe);
                    }
                    Some(sluice_connectors::SinkConfig::Kafka(k)) => {
                        let delivery = (index == 0).then(|| delivery_states.iter().find(|(s, _)| s == stream).map(|(_, d)| Arc::clone(d))).flatten();
                        sluice_connectors::kafka::kafka_sink(lines, k, delivery, Rc::clone(&state)).map_err(|e| e.to_string())?.probe_with(&probe);
                    }
                    None => {
                        lines.probe_with(&probe);
                    }
                }
                Ok(())
            };
            if let Some(r) = &config.reconcile {
                return crate::reconcile::build(items, r, &config.event, &names, &state, &metrics, &sink);
            }
            let decoder = Decoder::new(&config.event).map_err(|e| e.to_string())?;
            let (events, dead, progress) = items.decode(decoder, Rc::clone(&state), Arc::clone(&metrics)).map_err(|e| e.to_string())?;
            let progress = progress.broadcast();
            let partitions = config.partitions();
            let dedup = DedupConfig { ttl_ms: durations.ttl_ms, lateness_ms: durations.lateness_ms, partitions };
            let (firsts, conflicts) = events.dedup(progress.clone(), dedup, Rc::clone(&state), Arc::clone(&metrics)).map_err(|e| e.to_string())?;
            let order = OrderConfig { lateness_ms: durations.lateness_ms, late: config.order.late, partitions };
            let (ordered, late) = firsts.order(progress.clone(), order, Rc::clone(&state), Arc::clone(&metrics)).map_err(|e| e.to_string())?;
            let events_for_drift = config.drift.as_ref().filter(|d| !d.categories.is_empty()).map(|_| ordered.clone());
            let set = FeatureSet::new(&config.features, &config.event.number_names()).map_err(|e| e.to_string())?;
            let feature_names = set.names.clone();
            let features = ordered.features(set, config.feature_cache_entities, Rc::clone(&state), Arc::clone(&metrics)).map_err(|e| e.to_string())?;

            let mut scores_for_drift = None;
            if let Some(models) = &models {
                let scored = features.clone().score(models.clone(), &feature_names, Arc::clone(&metrics)).map_err(|e| e.to_string())?;
                if config.drift.as_ref().is_some_and(|d| d.score) {
                    scores_for_drift = Some(scored.scores.clone());
                }
                sink(scored.scores.map(|s| score_line(&s)), "scores")?;
                sink(scored.unscored.map(|u| unscored_line(&u)), "unscored")?;
                sink(scored.shadow_scores.map(|s| score_line(&s)), "shadow_scores")?;
            }
            if let Some(drift) = &config.drift {
                let samples = drift_samples(drift, &config.event.string_names(), &feature_names, features.clone(), scores_for_drift, events_for_drift);
                let records = samples
                    .drift(progress, drift.clone(), (partitions, durations.lateness_ms), Rc::clone(&state), Arc::clone(&metrics))
                    .map_err(|e| e.to_string())?;
                sink(records.map(|r| drift_line(&r)), "drift")?;
            }
            sink(features.map(move |r| feature_line(&r, &feature_names)), "features")?;
            let n = names.clone();
            sink(dead.map(move |d| dead_letter_line(&d, &n)), "dead_letters")?;
            let n = names.clone();
            sink(late.map(move |l| late_line(&l, &n)), "late")?;
            let n = names.clone();
            sink(conflicts.map(move |c| conflict_line(&c, &n)), "conflicts")?;
            Ok(())
        });
        built?;

        let mut handed: Option<Epoch> = None;
        let mut seen_resume = worker_store.resume_epoch();
        loop {
            worker.step_or_park(Some(Duration::from_millis(1)));
            let frontier = probe.with_frontier(|f| f.first().copied());
            if frontier != handed {
                handed = frontier;
                let committed = state.borrow_mut().hand_in(frontier).map_err(|e| format!("commit failed: {e}"))?;
                if committed.is_some() {
                    metrics.commits.fetch_add(1, Ordering::Relaxed);
                }
            }
            if index == 0 {
                let resume = worker_store.resume_epoch();
                if resume != seen_resume {
                    if seen_resume == resumed_at_epoch && resumed_at_epoch > 0 {
                        tracing::info!(epoch = resume - 1, ms = started.elapsed().as_millis() as u64, "first commit after recovery");
                    }
                    seen_resume = resume;
                    let now = sluice_operators::event::now_us();
                    metrics.last_commit_ms.store(now / 1000, Ordering::Relaxed);
                    metrics.committed_before(resume, now);
                    if let (Some(info), Ok(mut h)) = (worker_store.last_commit(), metrics.commit_us.lock()) {
                        h.saturating_record(info.duration.as_micros() as u64);
                    }
                }
            }
            if frontier.is_none() {
                break;
            }
        }
        Ok(())
    })
    .map_err(|e| RunError::Worker { worker: 0, message: e })?;

    for (worker, result) in guards.join().into_iter().enumerate() {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(message)) => return Err(RunError::Worker { worker, message }),
            Err(panic) => return Err(RunError::Worker { worker, message: panic }),
        }
    }
    // The last batches may still be on their way to disk.
    store.sync()?;
    for publisher in publishers {
        publisher.finish();
    }
    for advancer in advancers {
        advancer.finish();
    }
    drop(webhook_servers);
    // Then the Kafka sinks deliver every committed epoch left.
    for (stream, handle) in deliveries {
        handle.finish().map_err(|e| RunError::Connector(format!("sink of `{stream}`: {e}")))?;
    }
    control.metrics.committed_before(store.resume_epoch(), sluice_operators::event::now_us());
    monitor.finish();
    drop(server);
    let m = &control.metrics;
    Ok(RunSummary {
        resumed_at_epoch,
        resume_epoch: store.resume_epoch(),
        records_in: Metrics::get(&m.records_in),
        decoded: Metrics::get(&m.decoded),
        dead_letters: Metrics::get(&m.dead_letters),
        duplicates: Metrics::get(&m.duplicates),
        conflicts: Metrics::get(&m.conflicts),
        late: Metrics::get(&m.late),
        features_out: Metrics::get(&m.features_out),
        scored: Metrics::get(&m.scored),
        shadow_scored: Metrics::get(&m.shadow_scored),
        shadow_mean_abs_diff: m.shadow_mean_abs_diff(),
        drift_windows: Metrics::get(&m.drift_windows),
        drift_alerts: m
            .drift_latest
            .lock()
            .map(|l| l.iter().filter(|(_, g)| g.alerts > 0).map(|((c, s), g)| (c.clone(), s.clone(), g.alerts)).collect())
            .unwrap_or_default(),
        elapsed: started.elapsed(),
    })
}
