//! `sluice demo`: the embedded default pipeline — generator in, the whole pipeline, JSONL files
//! out under `./sluice-demo/` — with a live progress line and a summary.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sluice_connectors::file::FileSinkConfig;
use sluice_connectors::generator::GeneratorConfig;
use sluice_connectors::SourceConfig;
use sluice_connectors::{OutputStream, SinkConfig};
use sluice_operators::drift::{ReferenceConfig, Thresholds};
use sluice_operators::slo::{Indicator, SloConfig};
use sluice_operators::{DriftConfig, EventSchema, FeatureOp, FeatureSpec, Metrics, TimeFormat};

use crate::config::{DedupSection, OrderSection, PipelineConfig, ServerSection};
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

/// The event schema of the generator's records.
pub fn payment_schema() -> EventSchema {
    EventSchema {
        id: "/id".into(),
        entity: "/customer".into(),
        time: "/created_ms".into(),
        time_format: TimeFormat::Millis,
        kind: Some("/type".into()),
        numbers: [("amount".to_string(), "/amount".to_string())].into(),
        strings: [("currency".to_string(), "/currency".to_string()), ("merchant".to_string(), "/merchant".to_string())].into(),
        time_fallback: None,
        record_bytes_max: 1 << 20,
    }
}

/// The six standard features of the demo and the benchmark.
pub fn standard_features() -> Vec<FeatureSpec> {
    let f = |name: &str, op: FeatureOp, field: Option<&str>, window: Option<&str>, slide: Option<&str>| FeatureSpec {
        name: name.into(),
        op,
        field: field.map(Into::into),
        window: window.map(Into::into),
        slide: slide.map(Into::into),
    };
    vec![
        f("txn_count_1m", FeatureOp::Count, None, Some("1m"), None),
        f("amount_sum_1h", FeatureOp::Sum, Some("amount"), Some("1h"), Some("5m")),
        f("amount_mean_24h", FeatureOp::Mean, Some("amount"), Some("24h"), Some("1h")),
        f("amount_max_1h", FeatureOp::Max, Some("amount"), Some("1h"), Some("5m")),
        f("amount_min_all", FeatureOp::Min, Some("amount"), None, None),
        f("amount_last", FeatureOp::Last, Some("amount"), None, None),
    ]
}

/// The demo's objectives: end-to-end latency (ingest to committed output, which includes the
/// 5 s the order operator waits for late events) and freshness.
pub fn demo_objectives() -> Vec<SloConfig> {
    vec![
        SloConfig {
            name: "committed_within_10s".into(),
            indicator: Indicator::Latency,
            stage: "committed".into(),
            threshold: "10s".into(),
            objective: 0.999,
            period: "30d".into(),
        },
        SloConfig {
            name: "scored_within_7s".into(),
            indicator: Indicator::Latency,
            stage: "scored".into(),
            threshold: "7s".into(),
            objective: 0.99,
            period: "30d".into(),
        },
        SloConfig {
            name: "fresh_within_10s".into(),
            indicator: Indicator::Freshness,
            stage: "committed".into(),
            threshold: "10s".into(),
            objective: 0.99,
            period: "30d".into(),
        },
    ]
}

/// A model taking the standard features, with every default.
fn model(path: &Path) -> sluice_operators::ModelConfig {
    let names = standard_features().into_iter().map(|f| f.name).collect::<Vec<_>>();
    sluice_operators::ModelConfig::new(path, &names.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The demo pipeline writing under `dir`.
pub fn demo_config(dir: &Path, options: &DemoOptions) -> PipelineConfig {
    let mut generator = GeneratorConfig::named("payments");
    generator.partitions = 4;
    generator.rate = options.rate;
    generator.events = if options.rate > 0 { options.rate * options.duration.as_secs().max(1) } else { options.events };
    generator.customers = 50_000;
    generator.duplicate_pct = 2.0;
    generator.conflict_pct = 0.2;
    generator.out_of_order_pct = 5.0;
    generator.late_pct = 0.3;
    generator.malformed_pct = 0.5;
    // Event time runs with the wall clock: each partition makes rate/4 events per second (unpaced:
    // event time as if at 20,000 events/s).
    let per_partition = if options.rate > 0 { (options.rate as f64 / 4.0).max(1.0) } else { 5_000.0 };
    generator.step_us = ((1_000_000.0 / per_partition) as u64).max(1);
    // Halfway through, amounts triple: the drift monitor should notice.
    let per_partition_events = generator.events / 4;
    generator.shift_after = Some(per_partition_events / 2);
    let span_ms = (per_partition_events * generator.step_us / 1000) as i64;
    let slide_ms = ((span_ms / 20).max(100) / 100) * 100;
    generator.start_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let generator_events = generator.events;
    let sink = |stream: OutputStream| SinkConfig::new(FileSinkConfig { stream: stream.name().into(), path: dir.join(format!("{stream}.jsonl")) });
    PipelineConfig {
        workers: options.workers,
        state_dir: dir.join("state"),
        epoch_records: 10_000,
        epoch_ms: 100,
        max_inflight_epochs: 4,
        state_cache_mb: 64,
        state_min_free_mb: 128,
        state_sync: true,
        checkpoint_every: "10m".into(),
        checkpoints_kept: 2,
        feature_cache_entities: 200_000,
        event: payment_schema(),
        sources: vec![SourceConfig::new(generator)],
        dedup: DedupSection::default(),
        order: OrderSection::default(),
        features: standard_features(),
        model: options.model.as_ref().map(|path| model(path)),
        shadow: options.shadow.as_ref().map(|path| model(path)),
        drift: Some(DriftConfig {
            features: vec!["amount_last".into()],
            score: false,
            categories: vec!["currency".into()],
            window: format!("{}ms", 2 * slide_ms),
            slide: format!("{slide_ms}ms"),
            reference: ReferenceConfig { first: Some((generator_events / 10).max(1)), ..ReferenceConfig::default() },
            bins: 10,
            min_samples: 100,
            thresholds: Thresholds::default(),
        }),
        slo: demo_objectives(),
        slo_interval: "2s".into(),
        server: options.http.as_ref().map(|listen| ServerSection::new(listen)),
        // Every stream of the standard pipeline, each to `<stream>.jsonl`.
        sinks: OutputStream::ALL.into_iter().filter(|s| s.of_standard_pipeline()).map(sink).collect(),
        reconcile: None,
    }
}

/// `sluice demo --kafka`: the demo pipeline reading topic `{prefix}payments` (4 partitions,
/// fed from the demo's generator by the caller) and writing every output stream but `slo` to
/// topic `{prefix}{stream}`. Returns the pipeline and the generator that feeds the input.
pub fn kafka_demo_config(
    mut config: PipelineConfig,
    brokers: &str,
    prefix: &str,
    delivery: sluice_connectors::kafka::Delivery,
) -> (PipelineConfig, GeneratorConfig, String) {
    let generator = config.sources.pop().and_then(|s| s.get::<GeneratorConfig>().cloned()).expect("invariant: the demo reads the generator");
    let input = format!("{prefix}payments");
    config.sources = vec![SourceConfig::new(sluice_connectors::kafka::KafkaSourceConfig {
        name: "payments".into(),
        brokers: brokers.into(),
        topic: input.clone(),
        group_id: format!("{prefix}sluice"),
        start: sluice_connectors::kafka::StartAt::Earliest,
        until: sluice_connectors::kafka::Until::Forever,
        partitions: None,
        isolation: sluice_connectors::kafka::Isolation::ReadCommitted,
        properties: Default::default(),
    })];
    for sink in config.sinks.iter_mut() {
        if sink.output() == Some(OutputStream::Slo) {
            continue;
        }
        let stream = sink.stream().to_string();
        *sink = SinkConfig::new(sluice_connectors::kafka::KafkaSinkConfig {
            topic: format!("{prefix}{}", stream.replace('_', "-")),
            stream,
            brokers: brokers.into(),
            delivery,
            progress_topic: None,
            transactional_id: None,
            partitions: 4,
            properties: Default::default(),
        });
    }
    (config, generator, input)
}

/// One progress line.
pub fn progress_line(metrics: &Metrics, events_per_s: f64, elapsed: Duration) -> String {
    let lag = metrics.watermark_lag_ms().map_or("-".to_string(), |l| format!("{:.1}s", l as f64 / 1000.0));
    format!(
        "{:>6.1}s  in {:>9}  {:>9.0} ev/s  features {:>9}  scored {:>9}  dupes {:>6}  conflicts {:>5}  late {:>5}  dead {:>5}  watermark lag {:>6}  commits {}",
        elapsed.as_secs_f64(),
        Metrics::get(&metrics.records_in),
        events_per_s,
        Metrics::get(&metrics.features_out),
        Metrics::get(&metrics.scored),
        Metrics::get(&metrics.duplicates),
        Metrics::get(&metrics.conflicts),
        Metrics::get(&metrics.late),
        Metrics::get(&metrics.dead_letters),
        lag,
        Metrics::get(&metrics.commits),
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
            let n = Metrics::get(&metrics.records_in);
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
