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
use crate::event::{Epoch, FeatureRecord, Origin};
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
    /// Feature names, in the order of the model's input columns.
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
    pub entity: String,
    /// Event id.
    pub id: String,
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
    /// Where the event came from.
    pub origin: Origin,
}

/// A record the model could not score, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unscored {
    /// Entity key.
    pub entity: String,
    /// Event id.
    pub id: String,
    /// Event time (ms).
    pub time_ms: i64,
    /// Why.
    pub reason: String,
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
    state: std::sync::Mutex<SourceState>,
    stop: std::sync::atomic::AtomicBool,
}

impl ModelSource {
    /// Loads the model once (to check it) and, if `config.reload_ms > 0`, starts watching it.
    ///
    /// # Errors
    /// As [`Model::load`].
    pub fn start(config: &ModelConfig) -> Result<Arc<Self>, OperatorError> {
        let bytes = std::fs::read(&config.path)
            .map_err(|e| OperatorError::Config { key: "model.path".into(), problem: format!("cannot read {}: {e}", config.path.display()) })?;
        let model = Model::from_bytes(config, &bytes)?;
        let source = Arc::new(ModelSource {
            config: config.clone(),
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
                .map_err(|e| OperatorError::Config { key: "model.reload_ms".into(), problem: format!("cannot start the model watcher: {e}") })?;
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
                tracing::info!(model = %self.config.model_name(), version, "new model version loaded; it takes effect at the next epoch");
                let mut state = self.state.lock().expect("invariant: model source lock not poisoned");
                state.versions.push(Version { bytes: Arc::new(bytes), version, from_epoch: None });
                if state.versions.len() > 2 {
                    state.versions.remove(0);
                }
            }
            Err(e) => tracing::error!(model = %self.config.model_name(), error = %e, "the new model file does not load; the current version keeps scoring"),
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
            .map_err(|e| OperatorError::Config { key: "model.path".into(), problem: format!("cannot read {}: {e}", config.path.display()) })?;
        Model::from_bytes(config, &bytes)
    }

    /// Builds and checks a model from the bytes of its file (see [`Model::load`]).
    ///
    /// # Errors
    /// As [`Model::load`].
    pub fn from_bytes(config: &ModelConfig, bytes: &[u8]) -> Result<Self, OperatorError> {
        let env = runtime(config.library.as_deref())?;
        let err = |key: &str, problem: String| OperatorError::Config { key: format!("model.{key}"), problem };
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

/// The score operator.
pub trait Score<'scope> {
    /// Scores every record of `self` with the model of `source`; `feature_names` are the
    /// names of [`FeatureRecord::values`]. Returns `(scores, unscored)`.
    ///
    /// # Errors
    /// The model cannot be loaded or does not fit: an input name is not a feature.
    #[allow(clippy::type_complexity)]
    fn score(
        self,
        source: Arc<ModelSource>,
        feature_names: &[String],
        metrics: Arc<Metrics>,
    ) -> Result<(Stream<'scope, Epoch, Vec<ScoreRecord>>, Stream<'scope, Epoch, Vec<Unscored>>), OperatorError>;
}

impl<'scope> Score<'scope> for Stream<'scope, Epoch, Vec<FeatureRecord>> {
    fn score(
        self,
        source: Arc<ModelSource>,
        feature_names: &[String],
        metrics: Arc<Metrics>,
    ) -> Result<(Stream<'scope, Epoch, Vec<ScoreRecord>>, Stream<'scope, Epoch, Vec<Unscored>>), OperatorError> {
        let config = &source.config;
        let mut columns = Vec::new();
        for (i, name) in config.inputs.iter().enumerate() {
            let index = feature_names.iter().position(|f| f == name).ok_or_else(|| OperatorError::Config {
                key: format!("model.inputs[{i}]"),
                problem: format!("`{name}` is not a feature of this pipeline: {feature_names:?}"),
            })?;
            columns.push(index);
        }
        if config.batch_rows_max == 0 {
            return Err(OperatorError::Config { key: "model.batch_rows_max".into(), problem: "must be at least 1".into() });
        }
        let (_, bytes) = source.for_epoch(0);
        let mut model = Model::from_bytes(config, &bytes)?;
        let batch_rows_max = config.batch_rows_max;

        let mut builder = OperatorBuilder::new("Score".to_owned(), self.scope());
        let mut input = builder.new_input(self, Pipeline);
        let (scores_out, scores) = builder.new_output::<Vec<ScoreRecord>>();
        let (unscored_out, unscored) = builder.new_output::<Vec<Unscored>>();
        let mut scores_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<ScoreRecord>>>::from(scores_out);
        let mut unscored_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Unscored>>>::from(unscored_out);
        let input_names = config.inputs.clone();
        builder.build(move |capabilities| {
            let mut held = HeldCapabilities::new(capabilities);
            let mut batch: Vec<FeatureRecord> = Vec::new();
            let mut values: Vec<f32> = Vec::new();
            move |frontiers| {
                let mut scores_h = scores_out.activate();
                let mut unscored_h = unscored_out.activate();
                input.for_each_stamp(|cap, data| {
                    let epoch = *cap.least().expect("invariant: an input stamp has a time");
                    let (version, bytes) = source.for_epoch(epoch);
                    if version != *model.version {
                        match Model::from_bytes(&source.config, &bytes) {
                            Ok(next) => model = next,
                            Err(e) => tracing::error!(error = %e, "cannot switch to model version {version}; the current one keeps scoring"),
                        }
                    }
                    let scores_cap = held.at(0, epoch);
                    let unscored_cap = held.at(1, epoch);
                    let mut scores_s = scores_h.session(&scores_cap);
                    let mut unscored_s = unscored_h.session(&unscored_cap);
                    let mut records = data.flat_map(|d| d.drain(..)).peekable();
                    while records.peek().is_some() {
                        // Fill one batch: at most `batch_rows_max` rows, or what this epoch has.
                        for record in records.by_ref() {
                            let missing = columns.iter().position(|c| !record.values[*c].is_some_and(f64::is_finite));
                            if let Some(j) = missing {
                                let reason = format!("feature `{}` is undefined or not finite", input_names[j]);
                                unscored_s.give(Unscored { entity: record.entity, id: record.id, time_ms: record.time_ms, reason, origin: record.origin });
                                continue;
                            }
                            values.extend(columns.iter().map(|c| record.values[*c].expect("checked above") as f32));
                            batch.push(record);
                            if batch.len() == batch_rows_max {
                                break;
                            }
                        }
                        if batch.is_empty() {
                            continue;
                        }
                        let started = Instant::now();
                        let rows = batch.len();
                        let result = model.score(std::mem::take(&mut values), rows);
                        let latency_us = started.elapsed().as_micros() as u64;
                        metrics.record_batch_latency(latency_us);
                        match result {
                            Ok(scores) => {
                                metrics.scored.fetch_add(rows as u64, std::sync::atomic::Ordering::Relaxed);
                                for (record, score) in batch.drain(..).zip(scores) {
                                    scores_s.give(ScoreRecord {
                                        entity: record.entity,
                                        id: record.id,
                                        time_ms: record.time_ms,
                                        score,
                                        model: Arc::clone(&model.name),
                                        version: Arc::clone(&model.version),
                                        batch_latency_us: latency_us,
                                        origin: record.origin,
                                    });
                                }
                            }
                            Err(e) => {
                                tracing::warn!(model = %model.name, error = %e, rows, "a batch failed to score");
                                for record in batch.drain(..) {
                                    let reason = format!("the model failed on this batch: {e}");
                                    unscored_s.give(Unscored { entity: record.entity, id: record.id, time_ms: record.time_ms, reason, origin: record.origin });
                                }
                            }
                        }
                    }
                });
                held.downgrade(input_frontier(frontiers));
            }
        });
        Ok((scores, unscored))
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

    /// Runs records through the score operator in a one-worker dataflow, in epochs of 64.
    fn run(config: ModelConfig, feature_names: Vec<String>, records: Vec<FeatureRecord>) -> (Vec<ScoreRecord>, Vec<Unscored>) {
        timely::execute_directly(move |worker| {
            let scores = Rc::new(RefCell::new(Vec::new()));
            let unscored = Rc::new(RefCell::new(Vec::new()));
            let mut input = InputHandleVec::<Epoch, FeatureRecord>::new();
            let probe = ProbeHandle::new();
            worker.dataflow::<Epoch, _, _>(|scope| {
                let source = ModelSource::start(&config).unwrap();
                let (s, u) = scope.input_from(&mut input).score(source, &feature_names, Arc::new(Metrics::default())).unwrap();
                let sink = Rc::clone(&scores);
                s.inspect(move |r| sink.borrow_mut().push(r.clone())).probe_with(&probe);
                let sink = Rc::clone(&unscored);
                u.inspect(move |r| sink.borrow_mut().push(r.clone())).probe_with(&probe);
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
            let s = scores.borrow().clone();
            let u = unscored.borrow().clone();
            (s, u)
        })
    }

    fn records(g: &serde_json::Value) -> Vec<FeatureRecord> {
        g["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, row)| FeatureRecord {
                entity: format!("c{i}"),
                id: format!("e{i}"),
                kind: String::new(),
                time_ms: i as i64,
                values: row.as_array().unwrap().iter().map(|v| v.as_f64()).collect(),
                late: false,
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
    fn a_missing_library_says_how_to_install_it() {
        let err = locate_library(Some(Path::new("/nonexistent/libonnxruntime.so"))).unwrap_err();
        assert!(err.contains("install it with `scripts/setup.sh`"), "{err}");
    }
}
