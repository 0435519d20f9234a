//! The dataflow one worker builds: its sources' partitions, then the reconciliation or the
//! standard chain, each output to its sink.
//!
//! ```text
//!  sources ─> decode ─> dedup ─> order ─> features ─> score ─> sinks
//!               │  └─ progress (broadcast) ─┘  │        └──> drift
//!               v          v                   v
//!         dead letters  conflicts            late
//! ```

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use sluice_connectors::OutputLine;
use sluice_connectors::{source, OutputStream};
use sluice_operators::event::SourceItem;
use sluice_operators::{
    Decode, Decoder, Dedup, DedupConfig, Drift, DriftConfig, DriftSample, Epoch, Event, FeatureRecord, FeatureSet, Features, Order, OrderConfig, Score,
    ScoreRecord,
};
use sluice_state::WorkerState;
use timely::dataflow::operators::vec::{Broadcast, Map};
use timely::dataflow::operators::{Concat, Probe};
use timely::dataflow::scope::Scope;
use timely::dataflow::{ProbeHandle, Stream};

use super::{Plan, WorkerError};
use crate::outputs::{conflict_line, dead_letter_line, drift_line, feature_line, late_line, score_line, unscored_line, FeatureNames, LineBlocks};

/// Builds the worker's dataflow: reads the partitions it owns (global index modulo the
/// workers), and every output goes through the probe, so that the probe passes an epoch only
/// once every sink has it.
pub(super) fn build<'scope>(
    scope: Scope<'scope, Epoch>,
    plan: &Plan,
    (index, peers): (usize, usize),
    state: &Rc<RefCell<WorkerState>>,
    probe: &ProbeHandle<Epoch>,
) -> Result<(), WorkerError> {
    let config = &plan.config;
    let mut readers = Vec::new();
    let mut global = 0u32;
    for s in &config.sources {
        for p in 0..s.partitions() {
            if global as usize % peers == index {
                readers.push((global, s.reader(p, Some(Arc::clone(&plan.time_of)))));
            }
            global += 1;
        }
    }
    let items = source::build(scope, readers, plan.settings, Rc::clone(state), probe.clone(), Arc::clone(&plan.stop), Arc::clone(&plan.metrics))
        .map_err(|source| WorkerError::Connector { what: "the sources".into(), source })?;
    let sink = |lines: Stream<'scope, Epoch, Vec<OutputLine>>, stream: OutputStream| -> Result<(), WorkerError> {
        match config.sinks.iter().find(|s| s.output() == Some(stream)) {
            Some(s) => {
                // Worker 0 tells a Kafka sink's delivery thread what was committed.
                let delivery = (index == 0).then(|| plan.delivery_states.iter().find(|(s, _)| s == stream.name()).map(|(_, d)| Arc::clone(d))).flatten();
                s.build(lines, Rc::clone(state), delivery)
                    .map_err(|source| WorkerError::Connector { what: format!("the sink of `{}`", stream.name()), source })?
                    .probe_with(probe);
            }
            None => {
                lines.probe_with(probe);
            }
        }
        Ok(())
    };
    match &config.reconcile {
        Some(r) => crate::reconcile::build(items, r, &config.event, &plan.names, state, &plan.metrics, &sink),
        None => standard(items, plan, state, &sink),
    }
}

/// The standard chain: decode → dedup → order → features → score, drift beside it.
fn standard<'scope>(
    items: Stream<'scope, Epoch, Vec<SourceItem>>,
    plan: &Plan,
    state: &Rc<RefCell<WorkerState>>,
    sink: &dyn Fn(Stream<'scope, Epoch, Vec<OutputLine>>, OutputStream) -> Result<(), WorkerError>,
) -> Result<(), WorkerError> {
    let (config, durations, metrics, names) = (&plan.config, &plan.durations, &plan.metrics, &plan.names);
    let decoder = Decoder::new(&config.event)?;
    let (events, dead, progress) = items.decode(decoder, Rc::clone(state), Arc::clone(metrics))?;
    let progress = progress.broadcast();
    let partitions = config.partitions();
    let dedup = DedupConfig { ttl_ms: durations.ttl_ms, lateness_ms: durations.lateness_ms, partitions };
    let (firsts, conflicts) = events.dedup(progress.clone(), dedup, Rc::clone(state), Arc::clone(metrics))?;
    let order = OrderConfig { lateness_ms: durations.lateness_ms, late: config.order.late, partitions };
    let (ordered, late) = firsts.order(progress.clone(), order, Rc::clone(state), Arc::clone(metrics))?;
    let events_for_drift = config.drift.as_ref().filter(|d| !d.categories.is_empty()).map(|_| ordered.clone());
    let set = FeatureSet::new(&config.features, &config.event.number_names())?;
    let feature_names = set.names.clone();
    let features = ordered.features(set, config.feature_cache_entities, Rc::clone(state), Arc::clone(metrics))?;

    let mut scores_for_drift = None;
    if let Some(models) = &plan.models {
        let scored = features.clone().score(models.clone(), &feature_names, Arc::clone(metrics))?;
        if config.drift.as_ref().is_some_and(|d| d.score) {
            scores_for_drift = Some(scored.scores.clone());
        }
        let mut blocks = LineBlocks::default();
        sink(scored.scores.map(move |s| score_line(&s, &mut blocks)), OutputStream::Scores)?;
        sink(scored.unscored.map(|u| unscored_line(&u)), OutputStream::Unscored)?;
        let mut blocks = LineBlocks::default();
        sink(scored.shadow_scores.map(move |s| score_line(&s, &mut blocks)), OutputStream::ShadowScores)?;
    }
    if let Some(drift) = &config.drift {
        let samples = drift_samples(drift, &config.event.string_names(), &feature_names, features.clone(), scores_for_drift, events_for_drift);
        let records = samples.drift(progress, drift.clone(), (partitions, durations.lateness_ms), Rc::clone(state), Arc::clone(metrics))?;
        sink(records.map(|r| drift_line(&r)), OutputStream::Drift)?;
    }
    let feature_names = FeatureNames::new(&feature_names);
    let mut blocks = LineBlocks::default();
    sink(features.map(move |r| feature_line(&r, &feature_names, &mut blocks)), OutputStream::Features)?;
    let n = names.clone();
    sink(dead.map(move |d| dead_letter_line(&d, &n)), OutputStream::DeadLetters)?;
    let n = names.clone();
    sink(late.map(move |l| late_line(&l, &n)), OutputStream::Late)?;
    let n = names.clone();
    sink(conflicts.map(move |c| conflict_line(&c, &n)), OutputStream::Conflicts)?;
    Ok(())
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
