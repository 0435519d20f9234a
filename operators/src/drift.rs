//! Drift: per monitored feature, score and category, a reference distribution against sliding
//! event-time windows, one record per window, column and statistic.
//!
//! ```text
//!   samples (every worker) ──> partial ──(pane sketches)──> windows (worker 0) ──> drift records
//!   progress (all) ──────────────────────────────────────────┘
//! ```
//!
//! Each worker sums its samples into per-pane summaries (a pane is `slide` of event time): a
//! [`Sketch`] per number column, counts per category. Summaries are mergeable exactly, so worker
//! 0 adds up the workers' partials and holds one summary per pane and column. It computes the
//! watermark from the partition progress as `order` does; `order` has released every event
//! below it, and features and scores follow in the same epoch, so once the watermark passes a
//! window's end the window is complete. Then, for each column, the window's panes are merged
//! and compared with the reference:
//!
//! - numbers: `psi` (bins at the reference's deciles), `ks` (D and the asymptotic p-value),
//!   `js` (distance, base 2, over the same bins), `wasserstein` (W1; thresholds in units of the
//!   reference's standard deviation);
//! - categories: `chi2` (goodness of fit to the reference's proportions; status from the
//!   p-value) and `psi` over the categories.
//!
//! The statistics are those of `stats.rs` on the sketches, with the error bounds stated there.
//!
//! The reference is the first `first` samples (rounded up to whole panes, in event time, so it
//! does not depend on the number of workers), the panes of `[from_ms, to_ms)`, or a file written
//! by `sluice drift reference`. Windows start where the reference ends (for a file: at the
//! first pane with data). Samples of a pane that is already out of every open window (events
//! flagged late) are counted and left out. The summaries and the reference are staged in the
//! table `drift` every epoch they change, so a restart resumes the same windows.
//!
//! Example: window 5m, slide 1m, reference `first = 10000`: if the first 10,000 samples fall in
//! the panes up to 12:07, the reference is 12:00–12:07 and the first window is 12:07–12:12,
//! emitted once the watermark passes 12:12, then 12:08–12:13, and so on.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sluice_state::{BytesCodec, Table, TableSpec, WorkerState};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::Stream;

use crate::epoch::{input_frontier, EpochStash, HeldCapabilities};
use crate::event::{Epoch, PartitionProgress};
use crate::metrics::Metrics;
use crate::stats::{chi_square, js_distance, ks, ks_sketch_bound, psi, wasserstein, Sketch, SKETCH_ALPHA};
use crate::watermark::WatermarkTracker;
use crate::{DurationMs, OperatorError};

/// The table of drift state (worker 0's panes and reference).
pub const DRIFT_TABLE: &str = "drift";

/// The tables drift declares.
pub fn tables() -> Vec<TableSpec> {
    vec![TableSpec::new(DRIFT_TABLE)]
}

/// The name of the score column.
pub const SCORE_COLUMN: &str = "score";

/// Most categories kept per column and pane; the rest count as `(other)`.
pub const CATEGORIES_MAX: usize = 1_000;

/// `[drift]` in a pipeline file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftConfig {
    /// Feature names to monitor.
    #[serde(default)]
    pub features: Vec<String>,
    /// Monitor the model's score too.
    #[serde(default)]
    pub score: bool,
    /// String fields of the event (`[event.strings]`) to monitor as categories.
    #[serde(default)]
    pub categories: Vec<String>,
    /// Window size, in event time.
    #[serde(default = "default_window")]
    pub window: DurationMs,
    /// How far windows move; divides `window`.
    #[serde(default = "default_slide")]
    pub slide: DurationMs,
    /// What the windows are compared with.
    #[serde(default)]
    pub reference: ReferenceConfig,
    /// Bins of PSI and JS (at the reference's quantiles).
    #[serde(default = "default_bins")]
    pub bins: usize,
    /// Fewer samples than this in a window's column: status `insufficient`, no statistic.
    #[serde(default = "default_min_samples")]
    pub min_samples: u64,
    /// Warn and alert levels.
    #[serde(default)]
    pub thresholds: Thresholds,
}

fn default_window() -> DurationMs {
    DurationMs::from_ms(300_000)
}
fn default_slide() -> DurationMs {
    DurationMs::from_ms(60_000)
}
fn default_bins() -> usize {
    10
}
fn default_min_samples() -> u64 {
    100
}

/// `[drift.reference]`: exactly one of `first`, `from_ms`+`to_ms`, `file` (default `first =
/// 10000`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ReferenceConfig {
    /// The first this many samples (rounded up to whole panes).
    #[serde(default)]
    pub first: Option<u64>,
    /// Event time range start (ms, inclusive).
    #[serde(default)]
    pub from_ms: Option<i64>,
    /// Event time range end (ms, exclusive).
    #[serde(default)]
    pub to_ms: Option<i64>,
    /// A file written by `sluice drift reference`.
    #[serde(default)]
    pub file: Option<PathBuf>,
}

/// A warn and an alert level.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Levels {
    /// Warn at or beyond this.
    pub warn: f64,
    /// Alert at or beyond this.
    pub alert: f64,
}

/// `[drift.thresholds]`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// PSI (0.1 / 0.25, the usual rule of thumb).
    #[serde(default = "psi_levels")]
    pub psi: Levels,
    /// KS D (0.1 / 0.2).
    #[serde(default = "ks_levels")]
    pub ks: Levels,
    /// JS distance (0.1 / 0.2).
    #[serde(default = "js_levels")]
    pub js: Levels,
    /// Wasserstein-1 in reference standard deviations (0.1 / 0.25).
    #[serde(default = "wasserstein_levels")]
    pub wasserstein: Levels,
    /// Chi-square p-value: at or *below* (1e-3 / 1e-6).
    #[serde(default = "chi2_levels")]
    pub chi2_p: Levels,
}

fn psi_levels() -> Levels {
    Levels { warn: 0.1, alert: 0.25 }
}
fn ks_levels() -> Levels {
    Levels { warn: 0.1, alert: 0.2 }
}
fn js_levels() -> Levels {
    Levels { warn: 0.1, alert: 0.2 }
}
fn wasserstein_levels() -> Levels {
    Levels { warn: 0.1, alert: 0.25 }
}
fn chi2_levels() -> Levels {
    Levels { warn: 1e-3, alert: 1e-6 }
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds { psi: psi_levels(), ks: ks_levels(), js: js_levels(), wasserstein: wasserstein_levels(), chi2_p: chi2_levels() }
    }
}

/// The reference as it runs.
#[derive(Debug, Clone, PartialEq)]
enum Reference {
    First(u64),
    Range(i64, i64),
    File(Vec<Summary>),
}

/// The monitored columns: numbers (features, then the score) then categories.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Columns {
    /// Number column names.
    pub numbers: Vec<String>,
    /// Category column names.
    pub categories: Vec<String>,
}

impl DriftConfig {
    /// The columns, in sample order.
    pub fn columns(&self) -> Columns {
        let mut numbers = self.features.clone();
        if self.score {
            numbers.push(SCORE_COLUMN.into());
        }
        Columns { numbers, categories: self.categories.clone() }
    }

    /// (window, slide) in ms.
    ///
    /// # Errors
    /// A slide that does not divide the window.
    pub fn window_slide_ms(&self) -> Result<(i64, i64), OperatorError> {
        let (window, slide) = (self.window.ms(), self.slide.ms());
        if window % slide != 0 {
            return Err(OperatorError::Config { key: "drift.slide".into(), problem: format!("{} does not divide the window {}", self.slide, self.window) });
        }
        Ok((window, slide))
    }

    /// Checks what can be checked without data.
    ///
    /// # Errors
    /// The first problem, naming the key.
    pub fn validate(&self, feature_names: &[String], string_names: &[String], has_model: bool) -> Result<(), OperatorError> {
        let bad = |key: String, problem: String| OperatorError::Config { key: format!("drift.{key}"), problem };
        self.window_slide_ms()?;
        for (i, f) in self.features.iter().enumerate() {
            if !feature_names.contains(f) {
                return Err(bad(format!("features[{i}]"), format!("`{f}` is not one of the [[features]]: {feature_names:?}")));
            }
        }
        for (i, c) in self.categories.iter().enumerate() {
            if !string_names.contains(c) {
                return Err(bad(format!("categories[{i}]"), format!("`{c}` is not one of [event.strings]: {string_names:?}")));
            }
        }
        if self.score && !has_model {
            return Err(bad("score".into(), "there is no [model] to take scores from".into()));
        }
        if self.features.is_empty() && self.categories.is_empty() && !self.score {
            return Err(bad("features".into(), "monitor at least one feature, category or the score".into()));
        }
        if self.bins < 2 {
            return Err(bad("bins".into(), "must be at least 2".into()));
        }
        self.reference()?;
        Ok(())
    }

    fn reference(&self) -> Result<Reference, OperatorError> {
        let r = &self.reference;
        let bad = |problem: String| OperatorError::Config { key: "drift.reference".into(), problem };
        match (r.first, r.from_ms, r.to_ms, &r.file) {
            (None, None, None, None) => Ok(Reference::First(10_000)),
            (Some(0), None, None, None) => Err(bad("`first` must be at least 1".into())),
            (Some(n), None, None, None) => Ok(Reference::First(n)),
            (None, Some(from), Some(to), None) if from < to => Ok(Reference::Range(from, to)),
            (None, Some(_), Some(_), None) => Err(bad("`from_ms` must be below `to_ms`".into())),
            (None, None, None, Some(path)) => {
                let file = ReferenceFile::read(path)?;
                if file.columns != self.columns() {
                    return Err(bad(format!("{} is for columns {:?}, this pipeline monitors {:?}", path.display(), file.columns, self.columns())));
                }
                Ok(Reference::File(file.summaries))
            }
            _ => Err(bad("give exactly one of `first`, `from_ms` and `to_ms` together, or `file`".into())),
        }
    }
}

/// One sample: the monitored values of one record (`None` where the record has no such value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftSample {
    /// Event time (ms).
    pub time_ms: i64,
    /// Values per number column.
    pub numbers: Vec<Option<f64>>,
    /// Values per category column.
    pub categories: Vec<Option<crate::event::Text>>,
}

/// A summary of one column over some samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Summary {
    /// Numbers.
    Numbers(Sketch),
    /// Categories and their counts.
    Categories(BTreeMap<String, u64>),
}

impl Summary {
    fn merge(&mut self, other: &Summary) {
        match (self, other) {
            (Summary::Numbers(a), Summary::Numbers(b)) => a.merge(b),
            (Summary::Categories(a), Summary::Categories(b)) => {
                for (k, c) in b {
                    add_category(a, k, *c);
                }
            }
            _ => panic!("invariant: summaries of one column have one kind"),
        }
    }

    /// How many values it summarises.
    pub fn count(&self) -> u64 {
        match self {
            Summary::Numbers(s) => s.count(),
            Summary::Categories(c) => c.values().sum(),
        }
    }
}

fn add_category(map: &mut BTreeMap<String, u64>, key: &str, count: u64) {
    if let Some(c) = map.get_mut(key) {
        *c += count;
    } else if map.len() < CATEGORIES_MAX {
        map.insert(key.to_string(), count);
    } else {
        *map.entry("(other)".into()).or_default() += count;
    }
}

fn empty_summaries(columns: &Columns) -> Vec<Summary> {
    columns.numbers.iter().map(|_| Summary::Numbers(Sketch::default())).chain(columns.categories.iter().map(|_| Summary::Categories(BTreeMap::new()))).collect()
}

/// The file `sluice drift reference` writes: the columns and their summaries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceFile {
    /// What it holds.
    pub columns: Columns,
    /// One summary per column, numbers first.
    pub summaries: Vec<Summary>,
}

impl ReferenceFile {
    /// Summarises samples.
    pub fn from_samples<'a>(columns: &Columns, samples: impl Iterator<Item = &'a DriftSample>) -> ReferenceFile {
        let mut summaries = empty_summaries(columns);
        for s in samples {
            add_sample(&mut summaries, s);
        }
        ReferenceFile { columns: columns.clone(), summaries }
    }

    /// Reads a reference file.
    ///
    /// # Errors
    /// The file cannot be read or is not a reference file.
    pub fn read(path: &std::path::Path) -> Result<ReferenceFile, OperatorError> {
        let bad = |problem: String| OperatorError::Config { key: "drift.reference.file".into(), problem };
        let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
        serde_json::from_str(&text).map_err(|e| bad(format!("{} is not a reference file written by `sluice drift reference`: {e}", path.display())))
    }
}

fn add_sample(summaries: &mut [Summary], sample: &DriftSample) {
    let n = sample.numbers.len();
    for (i, v) in sample.numbers.iter().enumerate() {
        if let (Some(v), Summary::Numbers(s)) = (v, &mut summaries[i]) {
            s.add(*v);
        }
    }
    for (i, v) in sample.categories.iter().enumerate() {
        if let (Some(v), Summary::Categories(c)) = (v, &mut summaries[n + i]) {
            add_category(c, v, 1);
        }
    }
}

/// How a drift statistic stands against its levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriftStatus {
    /// Below the warn level.
    Ok,
    /// At or past the warn level.
    Warn,
    /// At or past the alert level.
    Alert,
    /// Fewer than `min_samples` in the window, or an empty reference: not judged.
    Insufficient,
}

impl DriftStatus {
    /// Its name in the drift output: `ok`, `warn`, `alert`, `insufficient`.
    pub fn name(self) -> &'static str {
        match self {
            DriftStatus::Ok => "ok",
            DriftStatus::Warn => "warn",
            DriftStatus::Alert => "alert",
            DriftStatus::Insufficient => "insufficient",
        }
    }

    /// Its level in `/metrics`: 0 ok, 1 warn, 2 alert, -1 insufficient.
    pub fn level(self) -> i8 {
        match self {
            DriftStatus::Ok => 0,
            DriftStatus::Warn => 1,
            DriftStatus::Alert => 2,
            DriftStatus::Insufficient => -1,
        }
    }
}

/// One statistic of one column over one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftRecord {
    /// Window start (ms, inclusive).
    pub window_start_ms: i64,
    /// Window end (ms, exclusive).
    pub window_end_ms: i64,
    /// The column.
    pub column: String,
    /// `psi`, `ks`, `js`, `wasserstein` or `chi2`.
    pub statistic: String,
    /// Its value (`None` when `insufficient`).
    pub value: Option<f64>,
    /// The p-value, for `ks` and `chi2`.
    pub p_value: Option<f64>,
    /// How far the value may be from that of the exact samples (sketch error), where known.
    pub error_bound: Option<f64>,
    /// The warn level (for `wasserstein` in the column's units; for `chi2` a p-value).
    pub warn: f64,
    /// The alert level.
    pub alert: f64,
    /// How the value stands against the levels.
    pub status: DriftStatus,
    /// Samples in the reference.
    pub reference_n: u64,
    /// Samples in the window.
    pub current_n: u64,
}

/// A worker's summary of one pane, sent to worker 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PanePartial {
    /// Pane index (`time / slide`).
    pub pane: i64,
    /// One summary per column.
    pub summaries: Vec<Summary>,
}

/// Worker 0's progress, staged to the `drift` table (small: compared and written whenever it
/// changes; the reference has its own key, written only when it changes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
struct Progress {
    reference_done: bool,
    /// The end (ms) of the next window to emit, once the reference is done.
    next_end: Option<i64>,
    /// Panes below this are out of every open window.
    open_from_pane: i64,
}

const PROGRESS_KEY: &[u8] = b"progress";
const REFERENCE_KEY: &[u8] = b"reference";

fn pane_key(pane: i64) -> Vec<u8> {
    let mut k = b"pane/".to_vec();
    k.extend_from_slice(&((pane as u64) ^ (1 << 63)).to_be_bytes());
    k
}

/// The computed statistics of one window (pure; used by the operator and tests).
pub fn window_records(config: &DriftConfig, columns: &Columns, reference: &[Summary], current: &[Summary], (start_ms, end_ms): (i64, i64)) -> Vec<DriftRecord> {
    let t = &config.thresholds;
    let mut out = Vec::new();
    let n_numbers = columns.numbers.len();
    for (i, (r, c)) in reference.iter().zip(current).enumerate() {
        let column = if i < n_numbers { &columns.numbers[i] } else { &columns.categories[i - n_numbers] };
        let (rn, cn) = (r.count(), c.count());
        let enough = cn >= config.min_samples && rn > 0;
        let mut emit = |statistic: &str, value: Option<f64>, p_value: Option<f64>, bound: Option<f64>, levels: Levels, lower_is_worse: bool| {
            let judged = if lower_is_worse { p_value } else { value };
            let status = match judged {
                _ if !enough => DriftStatus::Insufficient,
                Some(v) if !lower_is_worse && v >= levels.alert => DriftStatus::Alert,
                Some(v) if !lower_is_worse && v >= levels.warn => DriftStatus::Warn,
                Some(v) if lower_is_worse && v <= levels.alert => DriftStatus::Alert,
                Some(v) if lower_is_worse && v <= levels.warn => DriftStatus::Warn,
                _ => DriftStatus::Ok,
            };
            out.push(DriftRecord {
                window_start_ms: start_ms,
                window_end_ms: end_ms,
                column: column.clone(),
                statistic: statistic.into(),
                value: value.filter(|_| enough),
                p_value: p_value.filter(|_| enough),
                error_bound: bound.filter(|_| enough),
                warn: levels.warn,
                alert: levels.alert,
                status,
                reference_n: rn,
                current_n: cn,
            });
        };
        match (r, c) {
            (Summary::Numbers(rs), Summary::Numbers(cs)) => {
                let (rd, cd) = (rs.dist(), cs.dist());
                let edges = rd.quantile_edges(config.bins);
                let (rc, cc) = (rd.bin_counts(&edges), cd.bin_counts(&edges));
                let ok = enough && !cd.is_empty() && !rd.is_empty();
                emit("psi", ok.then(|| psi(&rc, &cc)), None, None, t.psi, false);
                let (d, p) = if ok { ks(&rd, &cd) } else { (f64::NAN, f64::NAN) };
                emit("ks", ok.then_some(d), ok.then_some(p), ok.then(|| ks_sketch_bound(rs, cs)), t.ks, false);
                emit("js", ok.then(|| js_distance(&rc, &cc)), None, None, t.js, false);
                let sd = if rd.is_empty() { 0.0 } else { rd.std() };
                let w_levels = Levels { warn: t.wasserstein.warn * sd, alert: t.wasserstein.alert * sd };
                let bound = ok.then(|| SKETCH_ALPHA * (rd.mean_abs() + cd.mean_abs()));
                emit("wasserstein", ok.then(|| wasserstein(&rd, &cd)), None, bound, w_levels, false);
            }
            (Summary::Categories(rc), Summary::Categories(cc)) => {
                let keys: std::collections::BTreeSet<&String> = rc.keys().chain(cc.keys()).collect();
                let k = keys.len() as f64;
                let r: Vec<u64> = keys.iter().map(|key| rc.get(*key).copied().unwrap_or(0)).collect();
                let o: Vec<u64> = keys.iter().map(|key| cc.get(*key).copied().unwrap_or(0)).collect();
                let ok = enough && cn > 0;
                let (stat, p) = if ok {
                    // Expected: the reference's proportions, smoothed so that none is zero.
                    let expected: Vec<f64> = r.iter().map(|x| cn as f64 * (*x as f64 + 0.5) / (rn as f64 + 0.5 * k)).collect();
                    chi_square(&o, &expected)
                } else {
                    (f64::NAN, f64::NAN)
                };
                emit("chi2", ok.then_some(stat), ok.then_some(p), None, t.chi2_p, true);
                emit("psi", ok.then(|| psi(&r, &o)), None, None, t.psi, false);
            }
            _ => panic!("invariant: reference and current summaries of a column have one kind"),
        }
    }
    out
}

/// The drift operator.
pub trait Drift<'scope> {
    /// Monitors the samples of `self`; returns the drift records (emitted on worker 0).
    /// `watermark` is (source partitions, lateness in ms), as `order` has them.
    ///
    /// # Errors
    /// Bad config, or the state cannot be read.
    fn drift(
        self,
        progress: Stream<'scope, Epoch, Vec<PartitionProgress>>,
        config: DriftConfig,
        watermark: (usize, i64),
        state: Rc<RefCell<WorkerState>>,
        metrics: Arc<Metrics>,
    ) -> Result<Stream<'scope, Epoch, Vec<DriftRecord>>, OperatorError>;
}

impl<'scope> Drift<'scope> for Stream<'scope, Epoch, Vec<DriftSample>> {
    fn drift(
        self,
        progress: Stream<'scope, Epoch, Vec<PartitionProgress>>,
        config: DriftConfig,
        watermark: (usize, i64),
        state: Rc<RefCell<WorkerState>>,
        metrics: Arc<Metrics>,
    ) -> Result<Stream<'scope, Epoch, Vec<DriftRecord>>, OperatorError> {
        let (partitions, lateness_ms) = watermark;
        let scope = self.scope();
        let index = scope.index();
        let (window_ms, slide_ms) = config.window_slide_ms()?;
        let columns = config.columns();
        let reference_kind = config.reference()?;
        let table: Table<BytesCodec> = state.borrow().store().table(DRIFT_TABLE)?;

        // 1. Each worker: samples to per-pane partial summaries.
        let mut builder = OperatorBuilder::new("DriftPartial".to_owned(), scope);
        let mut samples_in = builder.new_input(self, Pipeline);
        let (partial_out, partials) = builder.new_output::<Vec<PanePartial>>();
        let mut partial_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<PanePartial>>>::from(partial_out);
        let partial_columns = columns.clone();
        builder.build(move |capabilities| {
            let mut held = HeldCapabilities::new(capabilities);
            move |frontiers| {
                let mut out = partial_out.activate();
                samples_in.for_each_stamp(|cap, data| {
                    let epoch = *cap.least().expect("invariant: an input stamp has a time");
                    let mut panes: BTreeMap<i64, Vec<Summary>> = BTreeMap::new();
                    for batch in data {
                        for sample in batch.iter() {
                            let pane = sample.time_ms.div_euclid(slide_ms);
                            add_sample(panes.entry(pane).or_insert_with(|| empty_summaries(&partial_columns)), sample);
                        }
                    }
                    let cap = held.at(0, epoch);
                    let mut session = out.session(&cap);
                    for (pane, summaries) in panes {
                        session.give(PanePartial { pane, summaries });
                    }
                });
                held.downgrade(input_frontier(frontiers));
            }
        });

        // 2. Worker 0: merge, watch the watermark, emit complete windows.
        let committed = crate::decode::committed_progress(&state.borrow())?;
        let mut tracker = WatermarkTracker::new(partitions, lateness_ms, &committed);
        let mut progress_state = Progress { open_from_pane: i64::MIN, ..Progress::default() };
        let mut panes: BTreeMap<i64, Vec<Summary>> = BTreeMap::new();
        // Reference summaries, once complete (or while being built from the first panes).
        let mut reference: Option<Vec<Summary>> = None;
        if index == 0 {
            let corrupt = |what: String| OperatorError::State(sluice_state::StateError::Codec { table: DRIFT_TABLE.into(), reason: what });
            for (key, value) in state.borrow().scan_committed(&table)? {
                if key == PROGRESS_KEY {
                    progress_state = bincode::deserialize(&value).map_err(|e| corrupt(e.to_string()))?;
                } else if key == REFERENCE_KEY {
                    reference = Some(bincode::deserialize(&value).map_err(|e| corrupt(e.to_string()))?);
                } else if let Some(k) = key.strip_prefix(b"pane/") {
                    let pane = (u64::from_be_bytes(k.try_into().map_err(|_| corrupt("a pane key is not 8 bytes".into()))?) ^ (1 << 63)) as i64;
                    panes.insert(pane, bincode::deserialize(&value).map_err(|e| corrupt(e.to_string()))?);
                }
            }
        }
        if let (Reference::File(summaries), false) = (&reference_kind, progress_state.reference_done) {
            reference = Some(summaries.clone());
            progress_state.reference_done = true;
        }

        let mut builder = OperatorBuilder::new("DriftWindows".to_owned(), scope);
        let mut partials_in = builder.new_input(partials, Exchange::new(|_: &PanePartial| 0));
        let mut progress_in = builder.new_input(progress, Pipeline);
        let (records_out, records) = builder.new_output::<Vec<DriftRecord>>();
        let mut records_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<DriftRecord>>>::from(records_out);
        builder.build(move |capabilities| {
            let mut held = HeldCapabilities::new(capabilities);
            let mut pending: EpochStash<(Vec<PanePartial>, Vec<PartitionProgress>)> = EpochStash::new();
            move |frontiers| {
                partials_in.for_each_stamp(|cap, data| {
                    let slot = pending.at(*cap.least().expect("invariant: an input stamp has a time"));
                    for batch in data {
                        slot.0.append(batch);
                    }
                });
                progress_in.for_each_stamp(|cap, data| {
                    let slot = pending.at(*cap.least().expect("invariant: an input stamp has a time"));
                    for batch in data {
                        slot.1.append(batch);
                    }
                });
                let frontier = input_frontier(frontiers);
                let mut out = records_out.activate();
                while let Some((epoch, (partials, progress))) = pending.pop_complete(frontier) {
                    if index != 0 {
                        continue;
                    }
                    let mut touched = std::collections::BTreeSet::new();
                    let mut late = 0u64;
                    for partial in partials {
                        if partial.pane < progress_state.open_from_pane {
                            late += partial.summaries.first().map_or(0, Summary::count);
                            continue;
                        }
                        touched.insert(partial.pane);
                        match panes.get_mut(&partial.pane) {
                            Some(existing) => existing.iter_mut().zip(&partial.summaries).for_each(|(a, b)| a.merge(b)),
                            None => {
                                panes.insert(partial.pane, partial.summaries);
                            }
                        }
                    }
                    if late > 0 {
                        metrics.drift.late_samples.fetch_add(late, Ordering::Relaxed);
                    }
                    for p in &progress {
                        tracker.apply(p);
                    }
                    let watermark = tracker.advance();
                    let before = progress_state.clone();
                    let mut reference_changed = false;
                    let mut removed = Vec::new();
                    let complete = |pane: i64| watermark == i64::MAX || (pane + 1).saturating_mul(slide_ms) <= watermark;

                    // The reference, while it is being built from panes.
                    if !progress_state.reference_done {
                        while let Some((&pane, _)) = panes.first_key_value() {
                            if !complete(pane) {
                                break;
                            }
                            let summaries = panes.remove(&pane).expect("invariant: the first pane exists");
                            removed.push(pane);
                            progress_state.open_from_pane = pane + 1;
                            let into_reference = match reference_kind {
                                Reference::Range(from, to) => pane * slide_ms >= from && (pane + 1) * slide_ms <= to,
                                _ => true,
                            };
                            if into_reference {
                                match reference.as_mut() {
                                    Some(r) => r.iter_mut().zip(&summaries).for_each(|(a, b)| a.merge(b)),
                                    None => reference = Some(summaries),
                                }
                                reference_changed = true;
                            }
                            let count = reference.as_ref().and_then(|r| r.first()).map_or(0, Summary::count);
                            let done = match reference_kind {
                                Reference::First(n) => count >= n,
                                Reference::Range(_, to) => (pane + 1) * slide_ms >= to,
                                Reference::File(_) => true,
                            };
                            if done {
                                progress_state.reference_done = true;
                                progress_state.next_end = Some((pane + 1) * slide_ms + window_ms);
                                tracing::info!(samples = count, until_ms = (pane + 1) * slide_ms, "drift reference complete");
                                break;
                            }
                        }
                        // The end of the input with a reference short of `first`: use it.
                        if watermark == i64::MAX && !progress_state.reference_done && reference.is_some() {
                            progress_state.reference_done = true;
                        }
                    }
                    if progress_state.reference_done && progress_state.next_end.is_none() {
                        if let Some((&pane, _)) = panes.first_key_value() {
                            progress_state.next_end = Some(pane * slide_ms + window_ms);
                        }
                    }

                    // Complete windows.
                    let cap = held.at(0, epoch);
                    let mut session = out.session(&cap);
                    let last_pane = panes.last_key_value().map(|(p, _)| *p);
                    while let (Some(end), Some(reference)) = (progress_state.next_end, reference.as_ref().filter(|_| progress_state.reference_done)) {
                        let start = end - window_ms;
                        let ready = if watermark == i64::MAX { last_pane.is_some_and(|p| start <= p * slide_ms) } else { end <= watermark };
                        if !ready {
                            break;
                        }
                        let mut current = empty_summaries(&columns);
                        for (_, summaries) in panes.range(start / slide_ms..end / slide_ms) {
                            current.iter_mut().zip(summaries).for_each(|(a, b)| a.merge(b));
                        }
                        let records = window_records(&config, &columns, reference, &current, (start, end));
                        metrics.drift.record(&records);
                        for r in records {
                            session.give(r);
                        }
                        progress_state.next_end = Some(end + slide_ms);
                        progress_state.open_from_pane = (end + slide_ms - window_ms) / slide_ms;
                        while let Some((&pane, _)) = panes.first_key_value() {
                            if pane >= progress_state.open_from_pane {
                                break;
                            }
                            panes.remove(&pane);
                            removed.push(pane);
                        }
                    }

                    // Stage what changed.
                    let mut state = state.borrow_mut();
                    for pane in &removed {
                        state.delete(epoch, &table, &pane_key(*pane));
                    }
                    for pane in touched {
                        if let Some(summaries) = panes.get(&pane) {
                            state.put_raw(epoch, table.index(), &pane_key(pane), bincode::serialize(summaries).expect("invariant: summaries serialize"));
                        }
                    }
                    if let (true, Some(r)) = (reference_changed, reference.as_ref()) {
                        state.put_raw(epoch, table.index(), REFERENCE_KEY, bincode::serialize(r).expect("invariant: summaries serialize"));
                    }
                    if progress_state != before {
                        state.put_raw(epoch, table.index(), PROGRESS_KEY, bincode::serialize(&progress_state).expect("invariant: progress serializes"));
                    }
                }
                held.downgrade(frontier);
            }
        });
        Ok(records)
    }
}
impl crate::metrics::DriftMetrics {
    /// Records one window's drift records: each statistic's value and status, alerts counted.
    pub fn record(&self, records: &[DriftRecord]) {
        self.windows.fetch_add(1, Ordering::Relaxed);
        let Ok(mut latest) = self.latest.lock() else { return };
        for r in records {
            let level = r.status.level();
            let gauge = crate::metrics::DriftGauge { value: None, level, alerts: 0, window_end_ms: 0 };
            let entry = latest.entry((r.column.clone(), r.statistic.clone())).or_insert(gauge);
            entry.value = r.value;
            entry.level = level;
            entry.window_end_ms = r.window_end_ms;
            entry.alerts += u64::from(level == 2);
        }
    }
}
