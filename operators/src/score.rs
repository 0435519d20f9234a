//! Scores feature records with an ONNX model (ONNX Runtime through `ort`), batched per epoch.
//!
//! ```text
//!   feature records ──> score ──> scores (score, model name and version, batch latency)
//!                         └─────> unscored (a feature the model needs is undefined)
//! ```
//!
//! Requires nothing of order: it works on each epoch's records as they come, on the worker
//! that computed them, with its own ONNX Runtime session (intra-op threads default to 1, so
//! workers do not fight for cores). The records of one activation — in practice one epoch — are
//! cut into batches of at most `batch_rows_max` rows; each batch is one input tensor of shape
//! `[rows, inputs]`, columns in the configured order. The score is column `output_column` of
//! the output `output` (for a scikit-learn classifier: the probability of class 1).
//!
//! A record whose needed feature is undefined (`null`: the min of no values) or not finite is
//! not scored; it goes to the unscored output with the reason. A failed run of the model fails
//! the batch's records the same way, with ONNX Runtime's message; the pipeline goes on.
//!
//! The model's version is the first 12 hex digits of a hash of the model file: two files with
//! the same bytes are the same version. With `reload_ms` set (default 1 s), the file is watched;
//! a new version is loaded in the background and takes effect, on every worker, at one epoch
//! boundary (see [`ModelSource`]); every score names the version that made it.
//!
//! Example: `inputs = ["txn_count_1m", "amount_last"]` builds, for 3 records, a `[3, 2]` float
//! tensor and emits 3 scores.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use ort::session::Session;
use ort::value::Tensor;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::Stream;

use crate::epoch::{input_frontier, HeldCapabilities};
use crate::event::{Epoch, FeatureRecord, Origin, Text};
use crate::latency::LatencyStage;
use crate::metrics::Metrics;
use crate::OperatorError;

/// The ONNX Runtime release sluice is built and tested against.
pub const ORT_VERSION: &str = "1.31.1";

/// `[model]` in a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The `.onnx` file.
    pub path: PathBuf,
    /// The model's name in score records (default: the file's stem).
    #[serde(default)]
    pub name: Option<String>,
    /// Feature names, in the order of the model's input columns (for a shadow model: default
    /// the primary's).
    #[serde(default)]
    pub inputs: Vec<String>,
    /// The output holding the score.
    #[serde(default = "default_output")]
    pub output: String,
    /// The column of that output (for a classifier's probabilities: 1, the positive class).
    #[serde(default = "default_output_column")]
    pub output_column: usize,
    /// ONNX Runtime intra-op threads per worker.
    #[serde(default = "one")]
    pub threads: usize,
    /// Rows per batch at most.
    #[serde(default = "default_batch_rows_max")]
    pub batch_rows_max: usize,
    /// Check the model file for a new version this often (ms); 0 = never.
    #[serde(default = "default_reload_ms")]
    pub reload_ms: u64,
    /// The ONNX Runtime shared library (default: `ORT_DYLIB_PATH`, then
    /// `.tools/onnxruntime/libonnxruntime.so.1.31.1` in the current directory or above).
    #[serde(default)]
    pub library: Option<PathBuf>,
    /// The config section this model comes from (`model`, or `shadow` for a shadow model):
    /// errors name keys in it.
    #[serde(skip, default = "default_section")]
    pub section: String,
}

fn default_section() -> String {
    "model".into()
}

fn default_output() -> String {
    "probabilities".into()
}
fn default_output_column() -> usize {
    1
}
fn one() -> usize {
    1
}
fn default_batch_rows_max() -> usize {
    4096
}
fn default_reload_ms() -> u64 {
    1000
}

impl ModelConfig {
    /// A config with every default for `path` and `inputs`.
    pub fn new(path: &Path, inputs: &[&str]) -> Self {
        ModelConfig {
            path: path.to_path_buf(),
            name: None,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            output: default_output(),
            output_column: default_output_column(),
            threads: one(),
            batch_rows_max: default_batch_rows_max(),
            reload_ms: default_reload_ms(),
            library: None,
            section: default_section(),
        }
    }

    /// The model's name.
    pub fn model_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.path.file_stem().map_or("model".into(), |s| s.to_string_lossy().into_owned()))
    }
}

/// One score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreRecord {
    /// Entity key.
    pub entity: Text,
    /// Event id.
    pub id: Text,
    /// Event time (ms).
    pub time_ms: i64,
    /// The score.
    pub score: f64,
    /// Model name.
    pub model: Arc<str>,
    /// Model version.
    pub version: Arc<str>,
    /// Time to run the batch this record was in, in microseconds.
    pub batch_latency_us: u64,
    /// For a shadow model's score: the primary model's score of the same event (`None` when
    /// the primary failed on the batch, and for the primary's own scores).
    pub primary_score: Option<f64>,
    /// Where the event came from.
    pub origin: Origin,
}

/// A record the model could not score, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unscored {
    /// Entity key.
    pub entity: Text,
    /// Event id.
    pub id: Text,
    /// Event time (ms).
    pub time_ms: i64,
    /// Why.
    pub reason: String,
    /// The model that could not score it.
    pub model: Arc<str>,
    /// Where the event came from.
    pub origin: Origin,
}

static RUNTIME: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

fn candidates(configured: Option<&Path>) -> Vec<PathBuf> {
    if let Some(p) = configured {
        return vec![p.to_path_buf()];
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return vec![PathBuf::from(p)];
    }
    let mut out = Vec::new();
    if let Ok(mut dir) = std::env::current_dir() {
        loop {
            out.push(dir.join(".tools/onnxruntime").join(format!("libonnxruntime.so.{ORT_VERSION}")));
            if !dir.pop() {
                break;
            }
        }
    }
    out
}

/// Finds the ONNX Runtime library: the configured path, else `ORT_DYLIB_PATH`, else the
/// project's `.tools/onnxruntime/` in the current directory or above.
///
/// # Errors
/// None of them exists; the message says how to install it.
pub fn locate_library(configured: Option<&Path>) -> Result<PathBuf, String> {
    let tried = candidates(configured);
    match tried.iter().find(|p| p.is_file()) {
        Some(path) => Ok(path.clone()),
        None => {
            let list: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
            Err(format!(
                "ONNX Runtime {ORT_VERSION} not found (looked for {}); install it with `scripts/setup.sh` (or `make setup`), or point ORT_DYLIB_PATH or [model].library at libonnxruntime.so.{ORT_VERSION}",
                list.join(", ")
            ))
        }
    }
}

/// Loads ONNX Runtime once per process.
///
/// # Errors
/// The library is missing or cannot be loaded; the message says how to install it.
pub fn runtime(configured: Option<&Path>) -> Result<&'static ort::environment::Environment, OperatorError> {
    let result = RUNTIME.get_or_init(|| {
        let path = locate_library(configured)?;
        let path = path.as_path();
        let builder = ort::init_from(path).map_err(|e| {
            format!("cannot load ONNX Runtime from {}: {e}; it must be libonnxruntime.so.{ORT_VERSION} (scripts/setup.sh installs it)", path.display())
        })?;
        builder.with_name("sluice").build().map_err(|e| format!("cannot start ONNX Runtime from {}: {e}", path.display()))
    });
    result.as_ref().map_err(|problem| OperatorError::Config { key: "model.library".into(), problem: problem.clone() })
}

fn version_of(bytes: &[u8]) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(bytes))[..12].to_string()
}

/// A version of a model file, and the first epoch it scores.
#[derive(Debug)]
struct Version {
    bytes: Arc<Vec<u8>>,
    version: String,
    /// `None` until a worker fixes it (the epoch after the latest any worker has started).
    from_epoch: Option<Epoch>,
}

#[derive(Debug)]
struct SourceState {
    /// Newest last; at most two kept.
    versions: Vec<Version>,
    /// The latest epoch any worker has started scoring.
    latest_epoch: Epoch,
}

/// Where the workers get their model: the file as loaded at start-up and, when `reload_ms`
/// is set, every new version of it, picked up by a background thread that checks the file and
/// loads the new version before offering it. A new version takes effect for every worker at the
/// same epoch: the one after the latest epoch any worker had started when the first worker saw
/// it. A version that does not load is reported and the old one keeps scoring.
#[derive(Debug)]
pub struct ModelSource {
    config: ModelConfig,
    metrics: Arc<Metrics>,
    state: std::sync::Mutex<SourceState>,
    stop: std::sync::atomic::AtomicBool,
}

impl ModelSource {
    /// Loads the model once (to check it) and, if `config.reload_ms > 0`, starts watching it.
    ///
    /// # Errors
    /// As [`Model::load`].
    pub fn start(config: &ModelConfig, metrics: Arc<Metrics>) -> Result<Arc<Self>, OperatorError> {
        let bytes = std::fs::read(&config.path)
            .map_err(|e| OperatorError::Config { key: format!("{}.path", config.section), problem: format!("cannot read {}: {e}", config.path.display()) })?;
        let model = Model::from_bytes(config, &bytes)?;
        let source = Arc::new(ModelSource {
            config: config.clone(),
            metrics,
            state: std::sync::Mutex::new(SourceState {
                versions: vec![Version { bytes: Arc::new(bytes), version: model.version.to_string(), from_epoch: Some(0) }],
                latest_epoch: 0,
            }),
            stop: std::sync::atomic::AtomicBool::new(false),
        });
        if config.reload_ms > 0 {
            let weak = Arc::downgrade(&source);
            let interval = std::time::Duration::from_millis(config.reload_ms);
            std::thread::Builder::new()
                .name("sluice-model-watch".into())
                .spawn(move || {
                    let mut seen = None;
                    loop {
                        std::thread::sleep(interval);
                        let Some(source) = weak.upgrade() else { return };
                        if source.stop.load(std::sync::atomic::Ordering::Relaxed) {
                            return;
                        }
                        source.check(&mut seen);
                    }
                })
                .map_err(|e| OperatorError::Config { key: format!("{}.reload_ms", config.section), problem: format!("cannot start the model watcher: {e}") })?;
        }
        Ok(source)
    }

    /// Looks at the file once: a new, loadable version is offered to the workers.
    fn check(&self, seen: &mut Option<(std::time::SystemTime, u64)>) {
        let Ok(meta) = std::fs::metadata(&self.config.path) else { return };
        let stamp = (meta.modified().unwrap_or(std::time::UNIX_EPOCH), meta.len());
        if *seen == Some(stamp) {
            return;
        }
        *seen = Some(stamp);
        let Ok(bytes) = std::fs::read(&self.config.path) else { return };
        let version = version_of(&bytes);
        if self.state.lock().expect("invariant: model source lock not poisoned").versions.iter().any(|v| v.version == version) {
            return;
        }
        match Model::from_bytes(&self.config, &bytes) {
            Ok(_) => {
                self.metrics.model.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(model = %self.config.model_name(), version, "new model version loaded; it takes effect at the next epoch");
                let mut state = self.state.lock().expect("invariant: model source lock not poisoned");
                state.versions.push(Version { bytes: Arc::new(bytes), version, from_epoch: None });
                if state.versions.len() > 2 {
                    state.versions.remove(0);
                }
            }
            Err(e) => {
                self.metrics.model.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(model = %self.config.model_name(), error = %e, "the new model file does not load; the current version keeps scoring");
            }
        }
    }

    /// The version a worker must use for `epoch`, as (version, bytes).
    fn for_epoch(&self, epoch: Epoch) -> (String, Arc<Vec<u8>>) {
        let mut state = self.state.lock().expect("invariant: model source lock not poisoned");
        state.latest_epoch = state.latest_epoch.max(epoch);
        let latest = state.latest_epoch;
        for v in &mut state.versions {
            if v.from_epoch.is_none() {
                v.from_epoch = Some(latest + 1);
            }
        }
        let chosen = state.versions.iter().rev().find(|v| v.from_epoch.is_some_and(|f| f <= epoch)).unwrap_or(&state.versions[0]);
        (chosen.version.clone(), Arc::clone(&chosen.bytes))
    }
}

impl Drop for ModelSource {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A loaded model: its session and what it was checked to take.
pub struct Model {
    session: Session,
    name: Arc<str>,
    version: Arc<str>,
    input: String,
    columns: usize,
    output: String,
    output_column: usize,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("name", &self.name).field("version", &self.version).field("columns", &self.columns).finish()
    }
}

impl Model {
    /// Loads and checks a model: one float input of shape `[rows, len(inputs)]`, and the
    /// configured output.
    ///
    /// # Errors
    /// The library or the file cannot be loaded, or the model does not fit the config; the
    /// message names the key.
    pub fn load(config: &ModelConfig) -> Result<Self, OperatorError> {
        let bytes = std::fs::read(&config.path)
            .map_err(|e| OperatorError::Config { key: format!("{}.path", config.section), problem: format!("cannot read {}: {e}", config.path.display()) })?;
        Model::from_bytes(config, &bytes)
    }

    /// Builds and checks a model from the bytes of its file (see [`Model::load`]).
    ///
    /// # Errors
    /// As [`Model::load`].
    pub fn from_bytes(config: &ModelConfig, bytes: &[u8]) -> Result<Self, OperatorError> {
        let env = runtime(config.library.as_deref())?;
        let err = |key: &str, problem: String| OperatorError::Config { key: format!("{}.{key}", config.section), problem };
        let version = version_of(bytes);
        let cannot = |e: String| err("path", format!("{} is not a model ONNX Runtime can load: {e}", config.path.display()));
        let builder = Session::builder(env).map_err(|e| cannot(e.to_string()))?;
        let mut builder = builder.with_intra_threads(config.threads.max(1)).map_err(|e| cannot(e.to_string()))?;
        let session = builder.commit_from_memory(bytes).map_err(|e| cannot(e.to_string()))?;
        let [input] = session.inputs() else {
            return Err(err("path", format!("the model has {} inputs; sluice feeds exactly one [rows, features] tensor", session.inputs().len())));
        };
        let shape = input.dtype().tensor_shape().map(|s| s.to_vec()).unwrap_or_default();
        let columns = match shape.as_slice() {
            [_, c] => *c,
            other => return Err(err("path", format!("the model's input `{}` has shape {other:?}; sluice feeds [rows, features]", input.name()))),
        };
        if columns >= 0 && columns as usize != config.inputs.len() {
            return Err(err("inputs", format!("the model takes {columns} feature columns, but {} are listed: {:?}", config.inputs.len(), config.inputs)));
        }
        let Some(output) = session.outputs().iter().find(|o| o.name() == config.output) else {
            let names: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
            return Err(err("output", format!("the model has no output `{}`; it has {names:?}", config.output)));
        };
        let width = output.dtype().tensor_shape().and_then(|s| s.last().copied()).unwrap_or(1);
        if width >= 0 && config.output_column >= width.max(1) as usize {
            return Err(err("output_column", format!("column {} is out of range: output `{}` has {width} columns", config.output_column, config.output)));
        }
        Ok(Model {
            input: input.name().to_string(),
            session,
            name: config.model_name().into(),
            version: version.into(),
            columns: config.inputs.len(),
            output: config.output.clone(),
            output_column: config.output_column,
        })
    }

    /// The model's version (a hash of its file).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Scores `rows` rows laid out row-major in `values`.
    ///
    /// # Errors
    /// ONNX Runtime's message when the run fails.
    pub fn score(&mut self, values: Vec<f32>, rows: usize) -> Result<Vec<f64>, String> {
        assert_eq!(values.len(), rows * self.columns, "invariant: a batch holds rows × columns values");
        let tensor = Tensor::from_array((vec![rows as i64, self.columns as i64], values)).map_err(|e| e.to_string())?;
        let outputs = self.session.run(ort::inputs![self.input.as_str() => tensor]).map_err(|e| e.to_string())?;
        let value = &outputs[self.output.as_str()];
        let out_rows = |shape: &[i64]| shape.first().copied().unwrap_or(0) as usize;
        if let Ok((shape, data)) = value.try_extract_tensor::<f32>() {
            let width = if shape.len() > 1 { shape[1] as usize } else { 1 };
            if out_rows(shape) != rows {
                return Err(format!("the model gave {} rows for {rows}", out_rows(shape)));
            }
            return Ok((0..rows).map(|r| f64::from(data[r * width + self.output_column.min(width - 1)])).collect());
        }
        let (shape, data) = value.try_extract_tensor::<f64>().map_err(|e| format!("output `{}` is not a float tensor: {e}", self.output))?;
        let width = if shape.len() > 1 { shape[1] as usize } else { 1 };
        Ok((0..rows).map(|r| data[r * width + self.output_column.min(width - 1)]).collect())
    }
}

/// The models the score operator runs: a primary, and optionally a shadow scored on the same
/// batches, whose scores go to their own output so that two versions can be compared live.
#[derive(Debug, Clone)]
pub struct Models {
    /// The model whose scores are the pipeline's scores.
    pub primary: Arc<ModelSource>,
    /// A second model, scored on the primary's batches; it never affects the primary's output.
    pub shadow: Option<Arc<ModelSource>>,
}

/// The outputs of the score operator.
#[derive(Debug)]
pub struct Scored<'scope> {
    /// The primary model's scores.
    pub scores: Stream<'scope, Epoch, Vec<ScoreRecord>>,
    /// Records a model could not score (`model` says which), with the reason.
    pub unscored: Stream<'scope, Epoch, Vec<Unscored>>,
    /// The shadow model's scores, each with the primary's score of the same event (empty
    /// without a shadow).
    pub shadow_scores: Stream<'scope, Epoch, Vec<ScoreRecord>>,
}

/// One model as a worker runs it: its source, its loaded version, and its feature columns.
struct Scorer {
    source: Arc<ModelSource>,
    model: Model,
    /// Indexes into [`FeatureRecord::values`], in the model's column order.
    columns: Vec<usize>,
}

impl Scorer {
    fn new(source: Arc<ModelSource>, feature_names: &[String]) -> Result<Self, OperatorError> {
        let config = &source.config;
        let mut columns = Vec::new();
        for (i, name) in config.inputs.iter().enumerate() {
            let index = feature_names.iter().position(|f| f == name).ok_or_else(|| OperatorError::Config {
                key: format!("{}.inputs[{i}]", config.section),
                problem: format!("`{name}` is not a feature of this pipeline: {feature_names:?}"),
            })?;
            columns.push(index);
        }
        if config.batch_rows_max == 0 {
            return Err(OperatorError::Config { key: format!("{}.batch_rows_max", config.section), problem: "must be at least 1".into() });
        }
        let (_, bytes) = source.for_epoch(0);
        let model = Model::from_bytes(config, &bytes)?;
        Ok(Scorer { source, model, columns })
    }

    /// Switches to the version `epoch` must be scored with, if it is not the loaded one.
    fn switch_for(&mut self, epoch: Epoch) {
        let (version, bytes) = self.source.for_epoch(epoch);
        if version != *self.model.version {
            match Model::from_bytes(&self.source.config, &bytes) {
                Ok(next) => self.model = next,
                Err(e) => tracing::error!(error = %e, "cannot switch to model version {version}; the current one keeps scoring"),
            }
        }
    }

    /// The first of this model's features that `record` lacks, by position in its inputs.
    fn missing(&self, record: &FeatureRecord) -> Option<usize> {
        self.columns.iter().position(|c| !record.values[*c].is_some_and(f64::is_finite))
    }

    fn unscored(&self, record: &FeatureRecord, reason: String) -> Unscored {
        Unscored {
            entity: record.entity.clone(),
            id: record.id.clone(),
            time_ms: record.time_ms,
            reason,
            model: Arc::clone(&self.model.name),
            origin: record.origin,
        }
    }

    fn undefined(&self, record: &FeatureRecord, j: usize) -> Unscored {
        self.unscored(record, format!("feature `{}` is undefined or not finite", self.source.config.inputs[j]))
    }

    /// Scores `rows` (all with this model's features defined): the scores and the batch's
    /// latency in microseconds, or ONNX Runtime's message.
    fn run(&mut self, rows: &[&FeatureRecord]) -> (Result<Vec<f64>, String>, u64) {
        let mut values = Vec::with_capacity(rows.len() * self.columns.len());
        for record in rows {
            values.extend(self.columns.iter().map(|c| record.values[*c].expect("invariant: rows have the model's features") as f32));
        }
        let started = Instant::now();
        let result = self.model.score(values, rows.len());
        (result, started.elapsed().as_micros() as u64)
    }

    fn record(&self, record: &FeatureRecord, score: f64, latency_us: u64, primary_score: Option<f64>) -> ScoreRecord {
        ScoreRecord {
            entity: record.entity.clone(),
            id: record.id.clone(),
            time_ms: record.time_ms,
            score,
            model: Arc::clone(&self.model.name),
            version: Arc::clone(&self.model.version),
            batch_latency_us: latency_us,
            primary_score,
            origin: record.origin,
        }
    }
}

/// The score operator.
pub trait Score<'scope> {
    /// Scores every record of `self` with the primary model of `models`, and the shadow's on the
    /// same batches; `feature_names` are the names of [`FeatureRecord::values`].
    ///
    /// # Errors
    /// A model cannot be loaded or does not fit: an input name is not a feature.
    fn score(self, models: Models, feature_names: &[String], metrics: Arc<Metrics>) -> Result<Scored<'scope>, OperatorError>;
}

impl<'scope> Score<'scope> for Stream<'scope, Epoch, Vec<FeatureRecord>> {
    fn score(self, models: Models, feature_names: &[String], metrics: Arc<Metrics>) -> Result<Scored<'scope>, OperatorError> {
        let mut primary = Scorer::new(models.primary, feature_names)?;
        let mut shadow = models.shadow.map(|s| Scorer::new(s, feature_names)).transpose()?;
        let batch_rows_max = primary.source.config.batch_rows_max;

        let mut builder = OperatorBuilder::new("Score".to_owned(), self.scope());
        let mut input = builder.new_input(self, Pipeline);
        let (scores_out, scores) = builder.new_output::<Vec<ScoreRecord>>();
        let (unscored_out, unscored) = builder.new_output::<Vec<Unscored>>();
        let (shadow_out, shadow_scores) = builder.new_output::<Vec<ScoreRecord>>();
        let mut scores_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<ScoreRecord>>>::from(scores_out);
        let mut unscored_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Unscored>>>::from(unscored_out);
        let mut shadow_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<ScoreRecord>>>::from(shadow_out);
        builder.build(move |capabilities| {
            let mut held = HeldCapabilities::new(capabilities);
            let mut records: Vec<FeatureRecord> = Vec::new();
            move |frontiers| {
                let mut scores_h = scores_out.activate();
                let mut unscored_h = unscored_out.activate();
                let mut shadow_h = shadow_out.activate();
                input.for_each_stamp(|cap, data| {
                    let epoch = *cap.least().expect("invariant: an input stamp has a time");
                    primary.switch_for(epoch);
                    if let Some(s) = shadow.as_mut() {
                        s.switch_for(epoch);
                    }
                    let (scores_cap, unscored_cap, shadow_cap) = (held.at(0, epoch), held.at(1, epoch), held.at(2, epoch));
                    let mut scores_s = scores_h.session(&scores_cap);
                    let mut unscored_s = unscored_h.session(&unscored_cap);
                    let mut shadow_s = shadow_h.session(&shadow_cap);
                    records.clear();
                    for d in data {
                        records.append(d);
                    }
                    // Batches are cut from the records the primary can score; the shadow scores
                    // those of each batch it can, and never changes what the primary emits.
                    let mut batch: Vec<&FeatureRecord> = Vec::with_capacity(batch_rows_max.min(records.len()));
                    let mut rest = records.iter().peekable();
                    while rest.peek().is_some() {
                        batch.clear();
                        for record in rest.by_ref() {
                            match primary.missing(record) {
                                Some(j) => unscored_s.give(primary.undefined(record, j)),
                                None => batch.push(record),
                            }
                            if batch.len() == batch_rows_max {
                                break;
                            }
                        }
                        if batch.is_empty() {
                            continue;
                        }
                        let (result, latency_us) = primary.run(&batch);
                        metrics.model.batch_latency_us.record(latency_us);
                        let primary_scores = match result {
                            Ok(scores) => {
                                metrics.model.scored.fetch_add(batch.len() as u64, Ordering::Relaxed);
                                for (record, score) in batch.iter().zip(&scores) {
                                    scores_s.give(primary.record(record, *score, latency_us, None));
                                }
                                metrics.latency.record(LatencyStage::Scored, crate::event::now_us(), batch.iter().map(|r| r.ingest_us));
                                Some(scores)
                            }
                            Err(e) => {
                                tracing::warn!(model = %primary.model.name, error = %e, rows = batch.len(), "a batch failed to score");
                                for record in &batch {
                                    unscored_s.give(primary.unscored(record, format!("the model failed on this batch: {e}")));
                                }
                                None
                            }
                        };
                        let Some(shadow) = shadow.as_mut() else { continue };
                        let mut rows = Vec::with_capacity(batch.len());
                        let mut primary_of = Vec::with_capacity(batch.len());
                        for (i, record) in batch.iter().enumerate() {
                            match shadow.missing(record) {
                                Some(j) => unscored_s.give(shadow.undefined(record, j)),
                                None => {
                                    rows.push(*record);
                                    primary_of.push(primary_scores.as_ref().map(|s| s[i]));
                                }
                            }
                        }
                        if rows.is_empty() {
                            continue;
                        }
                        match shadow.run(&rows) {
                            (Ok(scores), latency_us) => {
                                let (mut compared, mut abs_diff) = (0u64, 0f64);
                                for ((record, score), primary_score) in rows.iter().zip(scores).zip(primary_of) {
                                    if let Some(p) = primary_score {
                                        compared += 1;
                                        abs_diff += (score - p).abs();
                                    }
                                    shadow_s.give(shadow.record(record, score, latency_us, primary_score));
                                }
                                metrics.model.record_shadow_batch(rows.len() as u64, compared, abs_diff);
                            }
                            (Err(e), _) => {
                                tracing::warn!(model = %shadow.model.name, error = %e, rows = rows.len(), "a shadow batch failed to score");
                                for record in rows {
                                    unscored_s.give(shadow.unscored(record, format!("the shadow model failed on this batch: {e}")));
                                }
                            }
                        }
                    }
                });
                held.downgrade(input_frontier(frontiers));
            }
        });
        Ok(Scored { scores, unscored, shadow_scores })
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use timely::dataflow::operators::vec::Input;
    use timely::dataflow::operators::{Inspect, Probe};
    use timely::dataflow::{InputHandleVec, ProbeHandle};

    use super::*;

    fn models_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
    }

    fn golden() -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(models_dir().join("golden.json")).unwrap()).unwrap()
    }

    fn names(g: &serde_json::Value) -> Vec<String> {
        g["features"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
    }

    /// Runs records through the score operator in a one-worker dataflow, in epochs of 64:
    /// (scores, unscored, shadow scores).
    fn run_with(config: ModelConfig, shadow: Option<ModelConfig>, feature_names: Vec<String>, records: Vec<FeatureRecord>) -> Outputs {
        timely::execute_directly(move |worker| {
            let out = Rc::new(RefCell::new((Vec::new(), Vec::new(), Vec::new())));
            let mut input = InputHandleVec::<Epoch, FeatureRecord>::new();
            let probe = ProbeHandle::new();
            worker.dataflow::<Epoch, _, _>(|scope| {
                let models = Models {
                    primary: ModelSource::start(&config, Arc::default()).unwrap(),
                    shadow: shadow.as_ref().map(|s| ModelSource::start(s, Arc::default()).unwrap()),
                };
                let scored = scope.input_from(&mut input).score(models, &feature_names, Arc::new(Metrics::default())).unwrap();
                let sink = Rc::clone(&out);
                scored.scores.inspect(move |r| sink.borrow_mut().0.push(r.clone())).probe_with(&probe);
                let sink = Rc::clone(&out);
                scored.unscored.inspect(move |r| sink.borrow_mut().1.push(r.clone())).probe_with(&probe);
                let sink = Rc::clone(&out);
                scored.shadow_scores.inspect(move |r| sink.borrow_mut().2.push(r.clone())).probe_with(&probe);
            });
            for (epoch, chunk) in records.chunks(64).enumerate() {
                for r in chunk {
                    input.send(r.clone());
                }
                input.advance_to(epoch as Epoch + 1);
            }
            drop(input);
            while !probe.done() {
                worker.step();
            }
            let result = out.borrow().clone();
            result
        })
    }

    type Outputs = (Vec<ScoreRecord>, Vec<Unscored>, Vec<ScoreRecord>);

    fn run(config: ModelConfig, feature_names: Vec<String>, records: Vec<FeatureRecord>) -> (Vec<ScoreRecord>, Vec<Unscored>) {
        let (scores, unscored, shadow) = run_with(config, None, feature_names, records);
        assert!(shadow.is_empty());
        (scores, unscored)
    }

    fn records(g: &serde_json::Value) -> Vec<FeatureRecord> {
        g["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, row)| FeatureRecord {
                entity: format!("c{i}").into(),
                id: format!("e{i}").into(),
                kind: Default::default(),
                time_ms: i as i64,
                values: row.as_array().unwrap().iter().map(|v| v.as_f64()).collect(),
                late: false,
                ingest_us: 0,
                origin: Origin { partition: 0, offset: i as u64 },
            })
            .collect()
    }

    #[test]
    fn scores_equal_python_onnxruntime_for_both_models() {
        let g = golden();
        let names = names(&g);
        for model in ["fraud_lr", "fraud_gbt"] {
            let mut config = ModelConfig::new(&models_dir().join(format!("{model}.onnx")), &names.iter().map(String::as_str).collect::<Vec<_>>());
            config.batch_rows_max = 50; // batches cut inside epochs too
            let (scores, unscored) = run(config, names.clone(), records(&g));
            assert!(unscored.is_empty());
            let want = g["scores"][model].as_array().unwrap();
            assert_eq!(scores.len(), want.len());
            for (i, (s, w)) in scores.iter().zip(want).enumerate() {
                assert_eq!(s.id, format!("e{i}"));
                assert_eq!(&*s.model, model);
                assert_eq!(s.version.len(), 12);
                let w = w.as_f64().unwrap();
                assert!((s.score - w).abs() <= 1e-6, "{model} row {i}: {} vs {w}", s.score);
            }
        }
    }

    #[test]
    fn undefined_features_are_unscored_with_the_reason() {
        let g = golden();
        let names = names(&g);
        let mut records = records(&g)[..3].to_vec();
        records[1].values[2] = None;
        records[2].values[5] = Some(f64::NAN);
        let config = ModelConfig::new(&models_dir().join("fraud_lr.onnx"), &names.iter().map(String::as_str).collect::<Vec<_>>());
        let (scores, unscored) = run(config, names, records);
        assert_eq!(scores.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), vec!["e0"]);
        let reasons: Vec<(&str, &str)> = unscored.iter().map(|u| (u.id.as_str(), u.reason.as_str())).collect();
        assert_eq!(reasons, vec![("e1", "feature `amount_mean_24h` is undefined or not finite"), ("e2", "feature `amount_last` is undefined or not finite")]);
    }

    #[test]
    fn a_model_that_does_not_fit_the_config_is_refused_at_load() {
        let lr = models_dir().join("fraud_lr.onnx");
        let err = Model::load(&ModelConfig::new(&lr, &["a", "b"])).unwrap_err().to_string();
        assert!(err.starts_with("model.inputs: the model takes 6 feature columns, but 2 are listed"), "{err}");
        let mut config = ModelConfig::new(&lr, &["a", "b", "c", "d", "e", "f"]);
        config.output = "score".into();
        let err = Model::load(&config).unwrap_err().to_string();
        assert!(err.starts_with("model.output: the model has no output `score`; it has [\"label\", \"probabilities\"]"), "{err}");
    }

    #[test]
    fn a_corrupt_model_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.onnx");
        let mut bytes = std::fs::read(models_dir().join("fraud_gbt.onnx")).unwrap();
        bytes.truncate(bytes.len() / 2);
        std::fs::write(&path, bytes).unwrap();
        let err = Model::load(&ModelConfig::new(&path, &["a"; 6])).unwrap_err().to_string();
        assert!(err.contains("is not a model ONNX Runtime can load"), "{err}");
    }

    #[test]
    fn a_shadow_model_scores_the_same_batches_into_its_own_output() {
        let g = golden();
        let names = names(&g);
        let inputs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut records = records(&g);
        records[7].values[0] = None;
        let mut primary = ModelConfig::new(&models_dir().join("fraud_lr.onnx"), &inputs);
        primary.batch_rows_max = 50;
        let mut shadow = ModelConfig::new(&models_dir().join("fraud_gbt.onnx"), &inputs);
        shadow.section = "shadow".into();
        let (scores, unscored, shadow_scores) = run_with(primary, Some(shadow), names, records);
        let (lr, gbt) = (g["scores"]["fraud_lr"].as_array().unwrap(), g["scores"]["fraud_gbt"].as_array().unwrap());
        assert_eq!(scores.len(), 199);
        assert_eq!(shadow_scores.len(), 199);
        for (s, p) in shadow_scores.iter().zip(&scores) {
            let i: usize = s.id[1..].parse().unwrap();
            assert_eq!(s.id, p.id);
            assert_eq!((&*s.model, &*p.model), ("fraud_gbt", "fraud_lr"));
            assert!((s.score - gbt[i].as_f64().unwrap()).abs() <= 1e-6, "shadow row {i}");
            assert_eq!(s.primary_score, Some(p.score));
            assert!((p.score - lr[i].as_f64().unwrap()).abs() <= 1e-6, "primary row {i}");
            assert_eq!(p.primary_score, None);
        }
        // The record without a feature is unscored once, by the primary: the shadow only sees
        // the primary's batches.
        let u: Vec<(&str, &str)> = unscored.iter().map(|u| (u.id.as_str(), &*u.model)).collect();
        assert_eq!(u, vec![("e7", "fraud_lr")]);
    }

    #[test]
    fn a_shadow_that_does_not_fit_names_its_own_section() {
        let lr = models_dir().join("fraud_lr.onnx");
        let mut config = ModelConfig::new(&lr, &["a", "b"]);
        config.section = "shadow".into();
        let err = Model::load(&config).unwrap_err().to_string();
        assert!(err.starts_with("shadow.inputs: the model takes 6 feature columns, but 2 are listed"), "{err}");
    }

    #[test]
    fn a_missing_library_says_how_to_install_it() {
        let err = locate_library(Some(Path::new("/nonexistent/libonnxruntime.so"))).unwrap_err();
        assert!(err.contains("install it with `scripts/setup.sh`"), "{err}");
    }
}
