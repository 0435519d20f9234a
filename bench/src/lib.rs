//! sluice-bench: the end-to-end load driver and the criterion benches of each operator.
//!
//! | file | what it owns |
//! |---|---|
//! | `lib.rs` | the standard benchmark pipeline, process memory and CPU readings |
//! | `kafka.rs` | topic in → topic out: throughput over a preloaded topic, latency at a fixed rate |
//! | `webhook.rs` | signed webhooks over HTTP into a running pipeline: requests/s and response times |
//! | `recovery.rs` | recovery time after kill -9 with ~1M entities; the cost of synced commits per `epoch_ms` |
//! | `lookup.rs` | the feature-lookup load generator (HTTP/1.1 keep-alive, open loop) |
//! | `bin/sluice-bench.rs` | the driver: `pipeline` prints events/s and peak RSS for 1 and 2 workers |
//! | `benches/operators.rs` | criterion: decode, dedup, order, features, each alone |
//!
//! Figures are recorded with the machine in `bench/RESULTS.md`.

pub mod kafka;
pub mod lookup;
pub mod recovery;
pub mod webhook;

use std::path::Path;

use sluice::demo::{payment_schema, standard_features};
use sluice::PipelineConfig;
use sluice_connectors::file::FileSinkConfig;
use sluice_connectors::generator::GeneratorConfig;
use sluice_connectors::SourceConfig;

/// The models a benchmark run scores with.
#[derive(Debug, Clone, Copy, Default)]
pub struct Models<'a> {
    /// The model scoring every event, if any.
    pub model: Option<&'a Path>,
    /// Its shadow, if any.
    pub shadow: Option<&'a Path>,
    /// Monitor drift (amount_last, currency, and the score when scored) and the demo's SLOs.
    pub monitor: bool,
}

/// The standard benchmark traffic: 4 unpaced partitions (25k events/s of event time each), 1%
/// duplicates, 0.1% conflicts, 5% out of order by up to 1 s, 0.1% late, 0.1% malformed.
pub fn standard_traffic(events: u64, customers: u64) -> GeneratorConfig {
    let mut g = GeneratorConfig::named("bench");
    g.partitions = 4;
    g.events = events;
    g.customers = customers;
    g.step_us = 40;
    g.duplicate_pct = 1.0;
    g.conflict_pct = 0.1;
    g.out_of_order_pct = 5.0;
    g.disorder_ms = 1_000;
    g.late_pct = 0.1;
    g.malformed_pct = 0.1;
    g
}

/// The standard pipeline of the performance bar: generator (unpaced) → decode → dedup → order
/// → 6 features → file sink, with `events` events over 4 partitions and the given allowed
/// lateness (the standard is `5s`) and records per partition per epoch (the standard is 20000),
/// scored by `model` when given, and by `shadow` as its shadow.
///
/// # Panics
/// Never for valid arguments: the built config is validated.
pub fn standard_pipeline(work: &Path, workers: usize, events: u64, customers: u64, lateness: &str, epoch_records: usize, models: Models<'_>) -> PipelineConfig {
    let g = standard_traffic(events, customers);
    let text = format!(
        "state_dir = {:?}\nepoch_records = {epoch_records}\n[event]\nid = \"/id\"\nentity = \"/customer\"\ntime = \"/created_ms\"\n[[sources]]\ntype = \"generator\"\nname = \"x\"\n",
        work.join("state")
    );
    let mut config: PipelineConfig = toml::from_str(&text).expect("a valid base pipeline");
    config.workers = workers;
    config.event = payment_schema();
    config.sources = vec![SourceConfig::new(g)];
    config.order.lateness = lateness.parse().unwrap();
    config.features = standard_features();
    let names: Vec<String> = config.features.iter().map(|f| f.name.clone()).collect();
    let model_config = |path: &Path| {
        let mut m = sluice_operators::ModelConfig::new(path, &names.iter().map(String::as_str).collect::<Vec<_>>());
        m.reload_ms = 0;
        m
    };
    config.model = models.model.map(model_config);
    config.shadow = models.shadow.map(model_config);
    if models.monitor {
        config.drift = Some(sluice_operators::DriftConfig {
            features: vec!["amount_last".into()],
            score: models.model.is_some(),
            categories: vec!["currency".into()],
            window: "10s".parse().unwrap(),
            slide: "2s".parse().unwrap(),
            reference: sluice_operators::drift::ReferenceConfig { first: Some(100_000), ..Default::default() },
            bins: 10,
            min_samples: 100,
            thresholds: sluice_operators::drift::Thresholds::default(),
        });
        config.slo = sluice::demo::demo_objectives();
        config.slo_interval = "1s".parse().unwrap();
    }
    config.sinks = vec![sluice_connectors::SinkConfig::new(FileSinkConfig { stream: "features".into(), path: work.join("features.jsonl") })];
    config.validate().expect("the standard pipeline is valid");
    config
}

/// Peak resident memory of this process (VmHWM), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU time of this process so far, user + system, all threads (getrusage), in seconds.
#[allow(unsafe_code)]
pub fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one rusage into the pointer it is given, which points at one.
    let usage = unsafe {
        if libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) != 0 {
            return 0.0;
        }
        usage.assume_init()
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}
