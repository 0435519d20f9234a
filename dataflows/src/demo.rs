//! `sluice demo`: the embedded default pipeline — generator in, the whole pipeline, JSONL files
//! out under `./sluice-demo/` — with a live progress line and a summary.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Deserialize;
use sluice_connectors::{OutputStream, SinkConfig, SourceConfig};
use sluice_operators::slo::SloConfig;
use sluice_operators::{DurationMs, EventSchema, FeatureSpec, Metrics, ModelConfig};

use crate::config::{PipelineConfig, ServerSection};
use crate::pipeline::{RunControl, RunSummary};

/// The demo's knobs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Wall time to generate for.
    pub duration: Duration,
    /// Events per second (0: as fast as possible, `events` in all).
    pub rate: u64,
    /// Workers.
    pub workers: usize,
    /// Events in all when `rate` is 0.
    pub events: u64,
    /// The model scoring every feature record, if any.
    pub model: Option<std::path::PathBuf>,
    /// A shadow model scored on the same batches, if any.
    pub shadow: Option<std::path::PathBuf>,
    /// Serve `/metrics` here (e.g. `127.0.0.1:8787`).
    pub http: Option<String>,
}

/// The demo pipeline, as a pipeline file: what `sluice demo` runs, before its flags.
pub const DEMO_PIPELINE: &str = include_str!("demo.toml");

/// `demo.toml` with `edit` applied to its TOML table, parsed.
fn demo_pipeline(edit: impl FnOnce(&mut toml::Table)) -> PipelineConfig {
    PipelineConfig::parse_edited(DEMO_PIPELINE, edit).expect("invariant: demo.toml is a pipeline file (a unit test reads it)")
}

/// The event schema of the generator's records (`[event]` of `demo.toml`).
pub fn payment_schema() -> EventSchema {
    demo_pipeline(|_| ()).event
}

/// The six standard features of the demo and the benchmark (`[[features]]` of `demo.toml`).
pub fn standard_features() -> Vec<FeatureSpec> {
    demo_pipeline(|_| ()).features
}

/// The demo's objectives (`[[slo]]` of `demo.toml`): end-to-end latency (ingest to committed
/// output, which includes the 5 s the order operator waits for late events) and freshness.
pub fn demo_objectives() -> Vec<SloConfig> {
    demo_pipeline(|_| ()).slo
}

/// The demo pipeline writing under `dir`: `demo.toml` with what the options decide.
pub fn demo_config(dir: &Path, options: &DemoOptions) -> PipelineConfig {
    let events = if options.rate > 0 { options.rate * options.duration.as_secs().max(1) } else { options.events };
    let (mut step_us, mut per_partition_events) = (1, events);
    let mut config = demo_pipeline(|document| {
        let source = document.get_mut("sources").and_then(|s| s.as_array_mut()).and_then(|s| s.first_mut()).and_then(|s| s.as_table_mut());
        let source = source.expect("invariant: demo.toml has a source");
        let partitions = source.get("partitions").and_then(toml::Value::as_integer).unwrap_or(1).max(1) as u64;
        // Event time runs with the wall clock: each partition makes rate/partitions events per
        // second (unpaced: event time as if at 5,000 events/s per partition).
        let per_partition = if options.rate > 0 { (options.rate as f64 / partitions as f64).max(1.0) } else { 5_000.0 };
        step_us = ((1_000_000.0 / per_partition) as u64).max(1);
        per_partition_events = events / partitions;
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        let integer = |n: u64| toml::Value::Integer(i64::try_from(n).unwrap_or(i64::MAX));
        source.insert("events".into(), integer(events));
        source.insert("rate".into(), integer(options.rate));
        source.insert("step_us".into(), integer(step_us));
        source.insert("start_ms".into(), toml::Value::Integer(now_ms));
        // Halfway through, amounts triple: the drift monitor should notice.
        source.insert("shift_after".into(), integer(per_partition_events / 2));
    });
    config.resolve_paths(dir);
    config.workers = options.workers;
    let span_ms = (per_partition_events * step_us / 1000) as i64;
    let slide_ms = ((span_ms / 20).max(100) / 100) * 100;
    if let Some(drift) = config.drift.as_mut() {
        drift.window = DurationMs::from_ms(2 * slide_ms);
        drift.slide = DurationMs::from_ms(slide_ms);
        drift.reference.first = Some((events / 10).max(1));
    }
    let inputs = config.model.as_ref().map(|m| m.inputs.clone()).unwrap_or_default();
    let model = |path: &Path| ModelConfig { path: path.to_path_buf(), inputs: inputs.clone(), ..ModelConfig::new(path, &[]) };
    config.model = options.model.as_deref().map(model);
    config.shadow = options.shadow.as_deref().map(model);
    config.server = match (&options.http, config.server.take()) {
        (Some(listen), Some(server)) => Some(ServerSection { listen: listen.clone(), ..server }),
        (Some(listen), None) => Some(ServerSection::new(listen)),
        (None, _) => None,
    };
    config
}

/// `sluice demo --kafka`: the demo pipeline reading topic `{prefix}payments` (4 partitions,
/// fed from the demo's generator by the caller) and writing every output stream but `slo` to
/// topic `{prefix}{stream}` with the sinks' `delivery`. Returns the pipeline and the source it
/// read before (the generator, to feed the topic from).
///
/// # Errors
/// `delivery` is not a Kafka sink's delivery.
pub fn kafka_demo_config(
    mut config: PipelineConfig,
    brokers: &str,
    prefix: &str,
    delivery: &str,
) -> Result<(PipelineConfig, SourceConfig), crate::config::ConfigError> {
    let connector = |entries: Vec<(&str, toml::Value)>| toml::Value::Table(entries.into_iter().map(|(k, v)| (k.to_string(), v)).collect());
    let text = |t: &str| toml::Value::String(t.into());
    let source = connector(vec![
        ("type", text("kafka")),
        ("name", text("payments")),
        ("brokers", text(brokers)),
        ("topic", text(&format!("{prefix}payments"))),
        ("group_id", text(&format!("{prefix}sluice"))),
    ]);
    let source = SourceConfig::deserialize(source).map_err(|e| crate::config::bad("--kafka", e.to_string()))?;
    let generator = std::mem::replace(&mut config.sources, vec![source]).remove(0);
    for sink in config.sinks.iter_mut().filter(|s| s.output() != Some(OutputStream::Slo)) {
        let stream = sink.stream().to_string();
        let table = connector(vec![
            ("type", text("kafka")),
            ("topic", text(&format!("{prefix}{}", stream.replace('_', "-")))),
            ("stream", text(&stream)),
            ("brokers", text(brokers)),
            ("delivery", text(delivery)),
            ("partitions", toml::Value::Integer(4)),
        ]);
        *sink = SinkConfig::deserialize(table).map_err(|e| crate::config::bad("--delivery", e.to_string()))?;
    }
    Ok((config, generator))
}

/// One progress line.
pub fn progress_line(metrics: &Metrics, events_per_s: f64, elapsed: Duration) -> String {
    let lag = metrics.time.watermark_lag_ms().map_or("-".to_string(), |l| format!("{:.1}s", l as f64 / 1000.0));
    format!(
        "{:>6.1}s  in {:>9}  {:>9.0} ev/s  features {:>9}  scored {:>9}  dupes {:>6}  conflicts {:>5}  late {:>5}  dead {:>5}  watermark lag {:>6}  commits {}",
        elapsed.as_secs_f64(),
        Metrics::get(&metrics.sources.records_in),
        events_per_s,
        Metrics::get(&metrics.features.records_out),
        Metrics::get(&metrics.model.scored),
        Metrics::get(&metrics.dedup.duplicates),
        Metrics::get(&metrics.dedup.conflicts),
        Metrics::get(&metrics.time.late),
        Metrics::get(&metrics.decode.dead_letters),
        lag,
        Metrics::get(&metrics.commit.commits),
    )
}

/// Prints a progress line every second until `done` is set.
pub fn spawn_progress(control: &RunControl, done: std::sync::Arc<std::sync::atomic::AtomicBool>) -> std::thread::JoinHandle<()> {
    let metrics = std::sync::Arc::clone(&control.metrics);
    std::thread::spawn(move || {
        let started = Instant::now();
        let tty = std::io::stderr().is_terminal();
        let (mut last_n, mut last_t) = (0u64, Instant::now());
        while !done.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(250));
            if last_t.elapsed() < Duration::from_secs(1) {
                continue;
            }
            let n = Metrics::get(&metrics.sources.records_in);
            let rate = (n - last_n) as f64 / last_t.elapsed().as_secs_f64();
            (last_n, last_t) = (n, Instant::now());
            let line = progress_line(&metrics, rate, started.elapsed());
            let mut err = std::io::stderr().lock();
            let _ = if tty { write!(err, "\r{line}\x1b[K") } else { writeln!(err, "{line}") };
            let _ = err.flush();
        }
        if tty {
            let _ = writeln!(std::io::stderr());
        }
    })
}

/// The end-of-run summary.
pub fn summary_text(summary: &RunSummary, config: &PipelineConfig) -> String {
    let secs = summary.elapsed.as_secs_f64();
    let mut s = String::new();
    s.push_str(&format!("sluice: {} records in {:.1}s ({:.0} records/s)\n", summary.records_in, secs, summary.records_in as f64 / secs.max(1e-9)));
    s.push_str(&format!(
        "  decoded {}  dead letters {}  duplicates {}  conflicts {}  late {}\n",
        summary.decoded, summary.dead_letters, summary.duplicates, summary.conflicts, summary.late
    ));
    s.push_str(&format!(
        "  feature records {}  scored {}  committed through epoch {}\n",
        summary.features_out,
        summary.scored,
        summary.resume_epoch.saturating_sub(1)
    ));
    if summary.shadow_scored > 0 {
        let diff = summary.shadow_mean_abs_diff.map_or("-".into(), |d| format!("{d:.4}"));
        s.push_str(&format!("  shadow scored {}  mean |shadow - primary| {diff}\n", summary.shadow_scored));
    }
    if summary.drift_windows > 0 {
        let alerts: Vec<String> = summary.drift_alerts.iter().map(|(c, s, n)| format!("{c} {s} ×{n}")).collect();
        let alerts = if alerts.is_empty() { "none".to_string() } else { alerts.join(", ") };
        s.push_str(&format!("  drift windows {}  alerts: {alerts}\n", summary.drift_windows));
    }
    s.push_str(&outputs_text(config));
    s
}

/// Where a run's outputs went: files, or topics.
pub fn outputs_text(config: &PipelineConfig) -> String {
    let mut s = String::new();
    for sink in &config.sinks {
        s.push_str(&format!("  {}\n", sink.destination()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_is_its_pipeline_file_with_what_the_flags_decide() {
        let dir = Path::new("/tmp/demo-out");
        let options = DemoOptions {
            duration: Duration::from_secs(10),
            rate: 2_000,
            workers: 2,
            events: 0,
            model: Some("m.onnx".into()),
            shadow: None,
            http: Some("127.0.0.1:9999".into()),
        };
        let config = demo_config(dir, &options);
        assert_eq!((config.workers, config.state_dir.as_path()), (2, Path::new("/tmp/demo-out/state")));
        // 20,000 events over 4 partitions at 500/s each: 2 ms apart, a 10 s span.
        let generator = config.sources[0].get::<sluice_connectors::generator::GeneratorConfig>().unwrap();
        assert_eq!((generator.events, generator.step_us, generator.shift_after, generator.partitions), (20_000, 2_000, Some(2_500), 4));
        let drift = config.drift.as_ref().unwrap();
        assert_eq!((drift.window.ms(), drift.slide.ms(), drift.reference.first), (1_000, 500, Some(2_000)));
        let model = config.model.as_ref().unwrap();
        assert_eq!((model.path.as_path(), model.inputs.len()), (Path::new("m.onnx"), 6));
        assert_eq!(config.server.as_ref().map(|s| s.listen.as_str()), Some("127.0.0.1:9999"));
        let sinks: Vec<String> = config.sinks.iter().map(|s| s.destination()).collect();
        assert_eq!(sinks.len(), 9);
        assert_eq!((sinks[0].as_str(), sinks[8].as_str()), ("/tmp/demo-out/features.jsonl", "/tmp/demo-out/slo.jsonl"));
        assert_eq!((payment_schema().numbers.len(), standard_features().len(), demo_objectives().len()), (1, 6, 3));

        let options = DemoOptions { model: None, http: None, ..options };
        let config = demo_config(dir, &options);
        assert!(config.model.is_none() && config.server.is_none());
        config.validate().unwrap();
    }
}
