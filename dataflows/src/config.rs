//! The pipeline file (TOML): what a pipeline reads, how it decodes, dedups, orders, which
//! features it keeps, and where its outputs go.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sluice_connectors::SourceConfig;
use sluice_connectors::{OutputStream, SinkConfig};
use sluice_operators::slo::{Objective, SloConfig};
use sluice_operators::{duration_or_off, DriftConfig, DurationMs, EventSchema, FeatureSet, FeatureSpec, LatePolicy, ModelConfig};

/// A configuration problem: the key and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct ConfigError {
    /// Dotted key (`order.lateness`, `sources[1].path`).
    pub key: String,
    /// The problem.
    pub problem: String,
}

pub(crate) fn bad(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError { key: key.into(), problem: problem.into() }
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Address to listen on, e.g. `127.0.0.1:8787` (port 0: any free port).
    pub listen: String,
    /// Entities per `POST /v1/features:batch` at most.
    #[serde(default = "default_batch_max")]
    pub batch_max: usize,
    /// Feature responses are flagged stale when the last commit is older than this.
    #[serde(default = "default_stale_after")]
    pub stale_after: DurationMs,
    /// Append every served feature vector to this JSONL file (relative to the pipeline file).
    #[serde(default)]
    pub feature_log: Option<PathBuf>,
    /// The nice level of the dataflow's threads (workers, commit, RocksDB background) while the
    /// server runs, so that lookups preempt ingest when the cores are busy; 0 turns it off.
    #[serde(default = "default_dataflow_nice")]
    pub dataflow_nice: i32,
    /// A connection without a whole request header this long after it opened (or after its
    /// previous answer) is closed.
    #[serde(default = "default_server_timeout")]
    pub header_timeout: DurationMs,
    /// A request body not all in this long after its header is answered 408.
    #[serde(default = "default_server_timeout")]
    pub body_timeout: DurationMs,
    /// Larger request bodies are answered 413.
    #[serde(default = "default_server_body_bytes_max")]
    pub body_bytes_max: usize,
    /// Connections open at once; more are answered 503 and closed.
    #[serde(default = "default_server_max_connections")]
    pub max_connections: usize,
}

impl ServerSection {
    /// Listening on `listen`, other settings default.
    pub fn new(listen: &str) -> Self {
        ServerSection {
            listen: listen.into(),
            batch_max: default_batch_max(),
            stale_after: default_stale_after(),
            feature_log: None,
            dataflow_nice: default_dataflow_nice(),
            header_timeout: default_server_timeout(),
            body_timeout: default_server_timeout(),
            body_bytes_max: default_server_body_bytes_max(),
            max_connections: default_server_max_connections(),
        }
    }
}

fn default_server_timeout() -> DurationMs {
    DurationMs::from_ms(10_000)
}
fn default_server_body_bytes_max() -> usize {
    1 << 20
}
fn default_server_max_connections() -> usize {
    4096
}

fn default_batch_max() -> usize {
    1000
}
fn default_dataflow_nice() -> i32 {
    10
}
fn default_stale_after() -> DurationMs {
    DurationMs::from_ms(5_000)
}

fn default_slo_interval() -> DurationMs {
    DurationMs::from_ms(10_000)
}

/// `[dedup]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupSection {
    /// How long keys are remembered, in event time behind the watermark.
    #[serde(default = "default_ttl")]
    pub ttl: DurationMs,
}

impl Default for DedupSection {
    fn default() -> Self {
        DedupSection { ttl: default_ttl() }
    }
}

fn default_ttl() -> DurationMs {
    DurationMs::from_ms(7 * 86_400_000)
}

/// `[order]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderSection {
    /// Allowed lateness.
    #[serde(default = "default_lateness")]
    pub lateness: DurationMs,
    /// What happens to late events: `side` (default), `drop`, `flag`.
    #[serde(default)]
    pub late: LatePolicy,
    /// Wall time without records after which a partition stops holding the watermark back.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: DurationMs,
}

impl Default for OrderSection {
    fn default() -> Self {
        OrderSection { lateness: default_lateness(), late: LatePolicy::Side, idle_timeout: default_idle_timeout() }
    }
}

fn default_lateness() -> DurationMs {
    DurationMs::from_ms(5_000)
}
fn default_idle_timeout() -> DurationMs {
    DurationMs::from_ms(30_000)
}

/// A whole pipeline file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Timely workers (threads).
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// The state directory (RocksDB). Relative paths are relative to the pipeline file.
    pub state_dir: PathBuf,
    /// Records per partition per epoch.
    #[serde(default = "default_epoch_records")]
    pub epoch_records: usize,
    /// Bytes of records per partition per epoch: an epoch ends at whichever of the two comes
    /// first, so that large records do not make an epoch (held in memory until committed) large.
    #[serde(default = "default_epoch_bytes")]
    pub epoch_bytes: usize,
    /// Wall time after which a paced source closes its epoch.
    #[serde(default = "default_epoch_ms")]
    pub epoch_ms: u64,
    /// Open epochs beyond which sources stop reading (backpressure).
    #[serde(default = "default_max_inflight_epochs")]
    pub max_inflight_epochs: u64,
    /// RocksDB block cache, in MiB.
    #[serde(default = "default_state_cache_mb")]
    pub state_cache_mb: usize,
    /// Commits wait (loudly) while the state directory's disk has less free space than this,
    /// in MiB, and go on once there is; webhooks are answered 503 meanwhile.
    #[serde(default = "default_state_min_free_mb")]
    pub state_min_free_mb: u64,
    /// Sync the state's write-ahead log at every commit (default true). `false` survives a
    /// killed process (the OS still writes the log) but not a power loss or kernel crash,
    /// after which already-delivered epochs could be recomputed: only for measuring what the
    /// sync costs (`sluice-bench commit-cost`).
    #[serde(default = "default_true")]
    pub state_sync: bool,
    /// Take a checkpoint of the committed state this often (`10m`; `off`: never), into
    /// `<state_dir>/checkpoints/`, to restore from (`sluice checkpoint restore`) when the live
    /// state cannot be trusted.
    #[serde(default = "default_checkpoint_every", deserialize_with = "duration_or_off")]
    pub checkpoint_every: Option<DurationMs>,
    /// Complete checkpoints kept.
    #[serde(default = "default_checkpoints_kept")]
    pub checkpoints_kept: usize,
    /// Entities whose decoded feature state is cached in memory, per worker.
    #[serde(default = "default_feature_cache_entities")]
    pub feature_cache_entities: usize,
    /// Where the fields of an event are.
    pub event: EventSchema,
    /// The sources.
    pub sources: Vec<SourceConfig>,
    /// Dedup settings.
    #[serde(default)]
    pub dedup: DedupSection,
    /// Order settings.
    #[serde(default)]
    pub order: OrderSection,
    /// The features.
    #[serde(default)]
    pub features: Vec<FeatureSpec>,
    /// A model scoring every feature record (optional).
    #[serde(default)]
    pub model: Option<ModelConfig>,
    /// A shadow model scored on the same batches as `model`, into `shadow_scores` (optional;
    /// the same keys as `[model]`, `inputs` and `library` default to the model's).
    #[serde(default)]
    pub shadow: Option<ModelConfig>,
    /// Drift monitoring (optional).
    #[serde(default)]
    pub drift: Option<DriftConfig>,
    /// Service level objectives (optional).
    #[serde(default)]
    pub slo: Vec<SloConfig>,
    /// How often SLO records are made (wall clock).
    #[serde(default = "default_slo_interval")]
    pub slo_interval: DurationMs,
    /// The HTTP server (`/metrics`); none without this section.
    #[serde(default)]
    pub server: Option<ServerSection>,
    /// The sinks: one per output stream at most; streams without one are counted only.
    #[serde(default)]
    pub sinks: Vec<SinkConfig>,
    /// A reconciliation pipeline instead of the feature pipeline (see [`crate::reconcile`]).
    #[serde(default)]
    pub reconcile: Option<ReconcileConfig>,
}

fn default_workers() -> usize {
    1
}
fn default_epoch_bytes() -> usize {
    64 << 20
}

fn default_epoch_records() -> usize {
    10_000
}
fn default_epoch_ms() -> u64 {
    100
}
fn default_max_inflight_epochs() -> u64 {
    4
}
fn default_checkpoint_every() -> Option<DurationMs> {
    Some(DurationMs::from_ms(600_000))
}

fn default_checkpoints_kept() -> usize {
    2
}

fn default_true() -> bool {
    true
}

fn default_state_min_free_mb() -> u64 {
    128
}

fn default_state_cache_mb() -> usize {
    64
}
fn default_feature_cache_entities() -> usize {
    200_000
}

/// Durations of a validated config, in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Durations {
    /// `dedup.ttl`.
    pub ttl_ms: i64,
    /// `order.lateness`.
    pub lateness_ms: i64,
    /// `order.idle_timeout`.
    pub idle_timeout_ms: i64,
    /// `checkpoint_every` (`None`: off).
    pub checkpoint_every_ms: Option<i64>,
}

impl PipelineConfig {
    /// Reads and validates a pipeline file; relative paths in it are made relative to the
    /// file's directory.
    ///
    /// # Errors
    /// The file cannot be read, is not valid TOML for a pipeline, or fails validation; the
    /// error names the key.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let config = PipelineConfig::load_unchecked(path)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads a pipeline file and resolves its paths, without [`PipelineConfig::validate`].
    ///
    /// # Errors
    /// The file cannot be read or is not a pipeline file.
    pub fn load_unchecked(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| bad(path.display().to_string(), format!("cannot read: {e}")))?;
        let mut config = PipelineConfig::parse(&text).map_err(|e| match e.key.as_str() {
            "" => bad(path.display().to_string(), e.problem),
            _ => e,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        Ok(config)
    }

    /// Reads a pipeline file's text, durations and all, without resolving its paths or
    /// validating it.
    ///
    /// # Errors
    /// The text is not a pipeline file: the error names the key (empty for the file as a
    /// whole) and the line.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let line = inner.span().map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
            let problem = match line {
                Some(line) => format!("{} (line {line})", inner.message().trim()),
                None => inner.message().trim().to_string(),
            };
            bad(if key == "." { String::new() } else { key }, problem)
        })
    }

    /// A pipeline file's text with `edit` applied to its TOML table before it is read (how the
    /// demos set what their flags decide).
    ///
    /// # Errors
    /// As [`PipelineConfig::parse`] (lines are those of the edited text).
    pub fn parse_edited(text: &str, edit: impl FnOnce(&mut toml::Table)) -> Result<Self, ConfigError> {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| bad("", e.message().trim()))?;
        edit(&mut table);
        let edited = toml::to_string(&table).map_err(|e| bad("", e.to_string()))?;
        PipelineConfig::parse(&edited)
    }

    /// Makes relative paths relative to `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.state_dir);
        for s in &mut self.sources {
            s.resolve_paths(&fix);
        }
        if let Some(p) = self.server.as_mut().and_then(|s| s.feature_log.as_mut()) {
            fix(p);
        }
        for s in &mut self.sinks {
            s.resolve_paths(&fix);
        }
        if let Some(f) = self.drift.as_mut().and_then(|d| d.reference.file.as_mut()) {
            fix(f);
        }
        for m in self.model.iter_mut().chain(self.shadow.iter_mut()) {
            fix(&mut m.path);
            if let Some(l) = m.library.as_mut() {
                fix(l);
            }
        }
    }

    /// The shadow model's config as it runs: `inputs` and `library` filled in from `[model]`
    /// where left out, errors naming `shadow.*`.
    pub fn shadow_model(&self) -> Option<ModelConfig> {
        let mut shadow = self.shadow.clone()?;
        shadow.section = "shadow".into();
        if let Some(model) = &self.model {
            if shadow.inputs.is_empty() {
                shadow.inputs = model.inputs.clone();
            }
            if shadow.library.is_none() {
                shadow.library = model.library.clone();
            }
        }
        Some(shadow)
    }

    /// The SLO objectives, checked.
    ///
    /// # Errors
    /// The first bad one, with its key.
    pub fn objectives(&self) -> Result<Vec<Objective>, ConfigError> {
        let mut out: Vec<Objective> = Vec::new();
        for (i, s) in self.slo.iter().enumerate() {
            let o = s.objective(&format!("slo[{i}]")).map_err(|e| match e {
                sluice_operators::OperatorError::Config { key, problem } => bad(key, problem),
                other => bad(format!("slo[{i}]"), other.to_string()),
            })?;
            if out.iter().any(|x| x.name == o.name) {
                return Err(bad(format!("slo[{i}].name"), format!("`{}` is used by another objective", o.name)));
            }
            out.push(o);
        }
        Ok(out)
    }

    /// Total source partitions.
    pub fn partitions(&self) -> usize {
        self.sources.iter().map(|s| s.partitions()).sum()
    }

    /// The durations the dataflow takes, in ms.
    pub fn durations(&self) -> Durations {
        Durations {
            ttl_ms: self.dedup.ttl.ms(),
            lateness_ms: self.order.lateness.ms(),
            idle_timeout_ms: self.order.idle_timeout.ms(),
            checkpoint_every_ms: self.checkpoint_every.map(DurationMs::ms),
        }
    }

    /// Checks everything that can be checked before running.
    ///
    /// # Errors
    /// The first problem found, with its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.workers == 0 || self.workers > 256 {
            return Err(bad("workers", format!("{} is not between 1 and 256", self.workers)));
        }
        if self.epoch_bytes == 0 {
            return Err(bad("epoch_bytes", "must be at least 1"));
        }
        if self.epoch_records == 0 {
            return Err(bad("epoch_records", "must be at least 1"));
        }
        if self.epoch_ms == 0 {
            return Err(bad("epoch_ms", "must be at least 1"));
        }
        if self.max_inflight_epochs == 0 {
            return Err(bad("max_inflight_epochs", "must be at least 1"));
        }
        if self.state_cache_mb == 0 {
            return Err(bad("state_cache_mb", "must be at least 1"));
        }
        self.event.validate().map_err(|e| bad("event", e.to_string()))?;
        if self.sources.is_empty() {
            return Err(bad("sources", "a pipeline needs at least one [[sources]] entry"));
        }
        for (i, s) in self.sources.iter().enumerate() {
            s.validate(&format!("sources[{i}]")).map_err(|e| bad(format!("sources[{i}]"), e.to_string()))?;
            if self.sources[..i].iter().any(|o| o.name() == s.name()) {
                return Err(bad(format!("sources[{i}].name"), format!("`{}` is used by another source", s.name())));
            }
        }
        if let Some(r) = &self.reconcile {
            let names: Vec<&str> = self.sources.iter().map(|s| s.name()).collect();
            r.validate(&names, &self.event)?;
            if !self.features.is_empty() || self.model.is_some() || self.drift.is_some() {
                return Err(bad("reconcile", "a reconciliation pipeline has no [[features]], [model] or [drift]"));
            }
        }
        if let Some(server) = &self.server {
            if !(0..=19).contains(&server.dataflow_nice) {
                return Err(bad("server.dataflow_nice", format!("{} is not between 0 and 19", server.dataflow_nice)));
            }
        }
        let set = FeatureSet::new(&self.features, &self.event.number_names()).map_err(|e| bad("features", e.to_string()))?;
        if self.shadow.is_some() && self.model.is_none() {
            return Err(bad("shadow", "a shadow model needs a [model] to shadow"));
        }
        for m in self.model.iter().cloned().chain(self.shadow_model()) {
            let section = &m.section;
            for (i, input) in m.inputs.iter().enumerate() {
                if !set.names.contains(input) {
                    return Err(bad(format!("{section}.inputs[{i}]"), format!("`{input}` is not one of the [[features]]: {:?}", set.names)));
                }
            }
            if m.inputs.is_empty() {
                return Err(bad(format!("{section}.inputs"), "list the features the model takes, in its column order"));
            }
            if m.batch_rows_max == 0 {
                return Err(bad(format!("{section}.batch_rows_max"), "must be at least 1"));
            }
            if !m.path.is_file() {
                return Err(bad(format!("{section}.path"), format!("{} is not a readable file", m.path.display())));
            }
        }
        if let Some(d) = &self.drift {
            d.validate(&set.names, &self.event.string_names(), self.model.is_some()).map_err(|e| match e {
                sluice_operators::OperatorError::Config { key, problem } => bad(key, problem),
                other => bad("drift", other.to_string()),
            })?;
        }
        self.objectives()?;
        if let Some(server) = &self.server {
            sluice_connectors::http::resolve_listen(&server.listen).map_err(|problem| bad("server.listen", problem))?;
            for (key, n) in [("batch_max", server.batch_max), ("body_bytes_max", server.body_bytes_max), ("max_connections", server.max_connections)] {
                if n == 0 {
                    return Err(bad(format!("server.{key}"), "must be at least 1"));
                }
            }
            for (key, d) in [("header_timeout", server.header_timeout), ("body_timeout", server.body_timeout)] {
                if d.ms() < 1 {
                    return Err(bad(format!("server.{key}"), "must be at least 1ms"));
                }
            }
        }
        if self.slo_interval.ms() < 100 {
            return Err(bad("slo_interval", "must be at least 100ms"));
        }
        for (i, s) in self.sinks.iter().enumerate() {
            if s.output().is_none() {
                return Err(bad(format!("sinks[{i}].stream"), format!("`{}` is not one of {:?}", s.stream(), OutputStream::names())));
            }
            if self.sinks[..i].iter().any(|o| o.stream() == s.stream()) {
                return Err(bad(format!("sinks[{i}].stream"), format!("`{}` already has a sink", s.stream())));
            }
            s.validate_among(&format!("sinks[{i}]"), &self.sinks[..i]).map_err(|e| match e {
                sluice_connectors::ConnectorError::Config { key, problem } => bad(key, problem),
                other => bad(format!("sinks[{i}]"), other.to_string()),
            })?;
        }
        Ok(())
    }
}

/// `[reconcile]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileConfig {
    /// The source of provider events (webhooks), decoded by `[event]`.
    pub provider: String,
    /// The source of ledger changes (Debezium envelopes).
    pub ledger: String,
    /// How long a payment may be one-sided (in event time) before it is missing.
    #[serde(default = "default_settle")]
    pub settle: DurationMs,
    /// Multiplies the provider's amount into minor units.
    #[serde(default = "default_scale")]
    pub amount_scale: f64,
    /// Multiplies the ledger's amount into minor units.
    #[serde(default = "default_scale")]
    pub ledger_amount_scale: f64,
    /// Provider status to ledger status.
    #[serde(default)]
    pub statuses: BTreeMap<String, String>,
    /// Only changes of this table (`schema.table`) are the ledger; others are dead letters.
    #[serde(default)]
    pub table: Option<String>,
    /// The ledger's columns.
    #[serde(default)]
    pub columns: LedgerColumns,
}

fn default_settle() -> DurationMs {
    DurationMs::from_ms(600_000)
}

fn default_scale() -> f64 {
    1.0
}

/// `[reconcile.columns]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerColumns {
    /// The payment id (the table's key).
    pub key: String,
    /// Amount.
    pub amount: String,
    /// Currency.
    pub currency: String,
    /// Status.
    pub status: String,
    /// Event time (ms); `None`: the change's `ts_ms`.
    pub time: Option<String>,
}

impl Default for LedgerColumns {
    fn default() -> Self {
        LedgerColumns { key: "payment_id".into(), amount: "amount".into(), currency: "currency".into(), status: "status".into(), time: None }
    }
}

impl ReconcileConfig {
    /// Checks the section against the pipeline's sources and event schema.
    ///
    /// # Errors
    /// What is wrong, with its key.
    pub fn validate(&self, sources: &[&str], event: &EventSchema) -> Result<(), ConfigError> {
        for (key, name) in [("reconcile.provider", &self.provider), ("reconcile.ledger", &self.ledger)] {
            if !sources.contains(&name.as_str()) {
                return Err(bad(key, format!("`{name}` is not one of the sources {sources:?}")));
            }
        }
        if self.provider == self.ledger {
            return Err(bad("reconcile.ledger", "the provider and the ledger must be different sources"));
        }
        for (key, scale) in [("reconcile.amount_scale", self.amount_scale), ("reconcile.ledger_amount_scale", self.ledger_amount_scale)] {
            if !(scale.is_finite() && scale > 0.0) {
                return Err(bad(key, format!("{scale} is not a positive number")));
            }
        }
        if !event.numbers.contains_key("amount") {
            return Err(bad("event.numbers", "a reconciliation reads the provider's amount from [event.numbers] amount"));
        }
        if !event.strings.contains_key("currency") {
            return Err(bad("event.strings", "a reconciliation reads the provider's currency from [event.strings] currency"));
        }
        if !event.strings.contains_key("status") && event.kind.is_none() {
            return Err(bad("event", "a reconciliation needs the provider's status: [event.strings] status, or [event] kind"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
state_dir = "state"
[event]
id = "/id"
entity = "/customer"
time = "/created_ms"
[event.numbers]
amount = "/amount"
[[sources]]
type = "generator"
name = "g"
"#;

    fn parse(text: &str) -> Result<PipelineConfig, ConfigError> {
        let c = PipelineConfig::parse(text)?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn a_minimal_pipeline_gets_the_documented_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!((c.workers, c.epoch_records, c.max_inflight_epochs), (1, 10_000, 4));
        assert_eq!(c.durations(), Durations { ttl_ms: 7 * 86_400_000, lateness_ms: 5_000, idle_timeout_ms: 30_000, checkpoint_every_ms: Some(600_000) });
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse(&format!("{MINIMAL}\n[order]\nlateness = \"5 minutes\"")).unwrap_err();
        assert_eq!(e.key, "order.lateness");
        let e = parse(&format!("{MINIMAL}\n[[sinks]]\nstream = \"predictions\"\npath = \"x\"")).unwrap_err();
        assert_eq!(e.key, "sinks[0].stream");
        let e = parse(&format!("{MINIMAL}\n[[features]]\nname = \"s\"\nop = \"sum\"\nfield = \"fee\"")).unwrap_err();
        assert!(e.problem.contains("features[0] (s).field: `fee` is not one of [event.numbers]"), "{e}");
        let e = parse(&MINIMAL.replace("state_dir", "workers = 0\nstate_dir")).unwrap_err();
        assert_eq!(e.key, "workers");
        let e = parse(&MINIMAL.replace("[event]", "colour = 1\n[event]")).unwrap_err();
        assert!(e.problem.contains("unknown field `colour`"), "{e}");
        let e = parse(&format!("{MINIMAL}\n[server]\nlisten = \"127.0.0.1:0\"\ndataflow_nice = 20")).unwrap_err();
        assert_eq!((e.key.as_str(), e.problem.as_str()), ("server.dataflow_nice", "20 is not between 0 and 19"));
        let c = parse(&format!("{MINIMAL}\n[server]\nlisten = \"127.0.0.1:0\"")).unwrap();
        assert_eq!(c.server.unwrap().dataflow_nice, 10);
    }

    #[test]
    fn durations_are_read_at_load_and_their_errors_name_key_and_line() {
        let text = MINIMAL.replace("state_dir", "checkpoint_every = \"off\"\nstate_dir") + "[order]\nlateness = \"250ms\"\nidle_timeout = \"2m\"\n";
        let c = parse(&text).unwrap();
        assert_eq!(c.durations(), Durations { ttl_ms: 7 * 86_400_000, lateness_ms: 250, idle_timeout_ms: 120_000, checkpoint_every_ms: None });
        let e = parse(&format!("{MINIMAL}[order]\nlateness = \"5 minutes\"\n")).unwrap_err();
        assert_eq!((e.key.as_str(), e.problem.as_str()), ("order.lateness", "`5 minutes`: unknown unit `minutes` (use ms, s, m, h or d) (line 13)"));
        let e = parse(&format!("{MINIMAL}[dedup]\nttl = \"10\"\n")).unwrap_err();
        assert_eq!((e.key.as_str(), e.problem.as_str()), ("dedup.ttl", "`10` needs a unit: `10ms`, `10s`, `10m`, `10h` or `10d` (line 13)"));
        let e = parse(&MINIMAL.replace("state_dir", "checkpoint_every = \"never\"\nstate_dir")).unwrap_err();
        assert_eq!(e.key, "checkpoint_every");
        assert!(e.problem.ends_with("(or `off`) (line 2)"), "{e}");
        let e = parse(&format!("{MINIMAL}[[slo]]\nname = \"x\"\nindicator = \"freshness\"\nthreshold = \"0s\"\nobjective = 0.9\n")).unwrap_err();
        assert_eq!((e.key.as_str(), e.problem.as_str()), ("slo[0].threshold", "`0s` must be positive (line 15)"));
    }

    #[test]
    fn a_shadow_takes_the_models_inputs_and_names_its_own_keys() {
        let lr = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/fraud_lr.onnx");
        let gbt = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/fraud_gbt.onnx");
        let features = "[[features]]\nname = \"n\"\nop = \"count\"\n[[features]]\nname = \"s\"\nop = \"sum\"\nfield = \"amount\"\n";
        let model = format!("[model]\npath = \"{lr}\"\ninputs = [\"s\", \"n\"]\nlibrary = \"/opt/ort.so\"\n");
        let c = parse(&format!("{MINIMAL}{features}{model}[shadow]\npath = \"{gbt}\"\nthreads = 2\n")).unwrap();
        let shadow = c.shadow_model().unwrap();
        assert_eq!((shadow.section.as_str(), shadow.inputs.clone(), shadow.threads), ("shadow", vec!["s".to_string(), "n".to_string()], 2));
        assert_eq!(shadow.library.as_deref(), Some(Path::new("/opt/ort.so")));
        assert_eq!(c.model.as_ref().unwrap().section, "model");

        let e = parse(&format!("{MINIMAL}{features}{model}[shadow]\npath = \"{gbt}\"\ninputs = [\"n\", \"fee\"]\n")).unwrap_err();
        assert_eq!(e.key, "shadow.inputs[1]");
        let e = parse(&format!("{MINIMAL}{features}[shadow]\npath = \"{gbt}\"\n")).unwrap_err();
        assert_eq!((e.key.as_str(), e.problem.as_str()), ("shadow", "a shadow model needs a [model] to shadow"));
    }
}
