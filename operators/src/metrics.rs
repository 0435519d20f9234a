//! The pipeline's metrics, by component: each part of the pipeline counts into its own struct
//! ([`SourceMetrics`], [`DecodeMetrics`], …, [`WebhookMetrics`]), and [`Metrics`] is only their
//! list. Shared by the operators of all workers and the connectors' threads; read by the
//! progress display, the monitor and `/metrics` (`dataflows/src/prometheus.rs` walks the
//! components in this order). Relaxed atomics: figures for humans, not for synchronisation.
//!
//! A new counter is one field in its component, the line that counts it, and its line in
//! `prometheus.rs`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::event::DeadLetterReason;
use crate::latency::{LatencyHistogram, LatencyMetrics};
use crate::slo::SloRecord;

/// Every component's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Sources: records read, backpressure.
    pub sources: SourceMetrics,
    /// Decode: events and dead letters.
    pub decode: DecodeMetrics,
    /// Dedup: repeats dropped, conflicts.
    pub dedup: DedupMetrics,
    /// Event time: the watermark, late events.
    pub time: TimeMetrics,
    /// Features: records out.
    pub features: FeatureMetrics,
    /// Models: scores, shadow comparison, reloads, batch latency.
    pub model: ModelMetrics,
    /// Drift: windows and the latest statistics.
    pub drift: DriftMetrics,
    /// The latest SLO records.
    pub slo: SloMetrics,
    /// Commits of epochs.
    pub commit: CommitMetrics,
    /// Latency from ingest per stage.
    pub latency: LatencyMetrics,
    /// Kafka sources' partition offsets.
    pub kafka: KafkaMetrics,
    /// Webhook sources' requests.
    pub webhook: WebhookMetrics,
}

impl Metrics {
    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Adds `n` to `key`'s count in a map behind a lock.
fn add_to<K: Ord>(map: &Mutex<BTreeMap<K, u64>>, key: K, n: u64) {
    if let Ok(mut m) = map.lock() {
        *m.entry(key).or_default() += n;
    }
}

/// What the sources read, and how long backpressure held them.
#[derive(Debug, Default)]
pub struct SourceMetrics {
    /// Records read by sources.
    pub records_in: AtomicU64,
    /// Records read again at a restart to refill the order buffer (not in `records_in`).
    pub records_replayed: AtomicU64,
    /// Records read per source partition (global partition index).
    pub records_by_partition: Mutex<BTreeMap<u32, u64>>,
    /// Time each source partition (global index) was paused by backpressure, µs.
    pub paused_us_by_partition: Mutex<BTreeMap<u32, u64>>,
    /// Time sources spent waiting for the dataflow (more than `max_inflight_epochs` open), µs.
    pub backpressure_us: AtomicU64,
    /// Epochs open in the dataflow (worker 0's source).
    pub inflight_epochs: AtomicU64,
}

impl SourceMetrics {
    /// Counts records read from source partition `partition`.
    pub fn add_records(&self, partition: u32, n: u64) {
        if n > 0 {
            add_to(&self.records_by_partition, partition, n);
        }
    }

    /// Adds to a partition's paused time.
    pub fn add_paused(&self, partition: u32, us: u64) {
        add_to(&self.paused_us_by_partition, partition, us);
    }
}

/// Records decoded into events, and dead letters.
#[derive(Debug, Default)]
pub struct DecodeMetrics {
    /// Records decoded into events.
    pub decoded: AtomicU64,
    /// Dead letters.
    pub dead_letters: AtomicU64,
    /// Dead letters per reason class.
    pub dead_letter_reasons: Mutex<BTreeMap<&'static str, u64>>,
}

impl DecodeMetrics {
    /// Counts a dead letter by its reason's class.
    pub fn add_dead_letter(&self, reason: &DeadLetterReason) {
        add_to(&self.dead_letter_reasons, reason.class(), 1);
    }

    pub(crate) fn add(&self, decoded: u64, rejected: u64) {
        self.decoded.fetch_add(decoded, Ordering::Relaxed);
        self.dead_letters.fetch_add(rejected, Ordering::Relaxed);
    }
}

/// Repeats found by dedup.
#[derive(Debug, Default)]
pub struct DedupMetrics {
    /// Exact repeats dropped.
    pub duplicates: AtomicU64,
    /// Repeats with a different payload.
    pub conflicts: AtomicU64,
}

/// An event time in ms, `i64::MIN` until the first.
#[derive(Debug)]
pub struct EventTimeGauge(AtomicI64);

impl Default for EventTimeGauge {
    fn default() -> Self {
        EventTimeGauge(AtomicI64::new(i64::MIN))
    }
}

impl EventTimeGauge {
    /// The time, `None` before the first.
    pub fn get(&self) -> Option<i64> {
        let t = self.0.load(Ordering::Relaxed);
        (t != i64::MIN).then_some(t)
    }

    /// Sets the time.
    pub fn set(&self, ms: i64) {
        self.0.store(ms, Ordering::Relaxed);
    }

    /// Raises the time to `ms` if it is later.
    pub fn raise(&self, ms: i64) {
        self.0.fetch_max(ms, Ordering::Relaxed);
    }
}

/// Event time: the watermark, the largest time seen, late events.
#[derive(Debug, Default)]
pub struct TimeMetrics {
    /// The latest watermark (ms).
    pub watermark_ms: EventTimeGauge,
    /// The largest event time seen (ms).
    pub max_event_time_ms: EventTimeGauge,
    /// Events behind the watermark.
    pub late: AtomicU64,
}

impl TimeMetrics {
    /// Watermark lag in event time: largest event time seen minus the watermark, in ms.
    pub fn watermark_lag_ms(&self) -> Option<i64> {
        let (w, m) = (self.watermark_ms.get()?, self.max_event_time_ms.get()?);
        (w != i64::MAX).then(|| (m - w).max(0))
    }
}

/// Feature records out.
#[derive(Debug, Default)]
pub struct FeatureMetrics {
    /// Feature records emitted.
    pub records_out: AtomicU64,
}

/// The models: what they scored, the shadow's agreement, reloads, batch latency.
#[derive(Debug, Default)]
pub struct ModelMetrics {
    /// Records scored by the primary model.
    pub scored: AtomicU64,
    /// Records scored by a shadow model.
    pub shadow_scored: AtomicU64,
    /// Shadow scores with a primary score to compare with.
    pub shadow_compared: AtomicU64,
    /// Sum of |shadow − primary| over those, in units of 1e-9.
    pub shadow_abs_diff_nano: AtomicU64,
    /// New model versions loaded while running (primary and shadow).
    pub reloads: AtomicU64,
    /// New model files that did not load (the old version kept scoring).
    pub reload_failures: AtomicU64,
    /// Primary model batch latencies, µs.
    pub batch_latency_us: LatencyHistogram,
}

impl ModelMetrics {
    /// Records one shadow batch: `rows` scored, `compared` of them with a primary score, whose
    /// absolute differences sum to `abs_diff`.
    pub fn record_shadow_batch(&self, rows: u64, compared: u64, abs_diff: f64) {
        self.shadow_scored.fetch_add(rows, Ordering::Relaxed);
        self.shadow_compared.fetch_add(compared, Ordering::Relaxed);
        self.shadow_abs_diff_nano.fetch_add((abs_diff * 1e9).round() as u64, Ordering::Relaxed);
    }

    /// Mean |shadow score − primary score| so far; `None` before the first comparison.
    pub fn shadow_mean_abs_diff(&self) -> Option<f64> {
        let n = self.shadow_compared.load(Ordering::Relaxed);
        (n > 0).then(|| self.shadow_abs_diff_nano.load(Ordering::Relaxed) as f64 * 1e-9 / n as f64)
    }
}

/// Drift windows and the latest value of each statistic (recorded by `drift.rs`).
#[derive(Debug, Default)]
pub struct DriftMetrics {
    /// Samples of panes already out of every open window (flagged late events).
    pub late_samples: AtomicU64,
    /// Windows emitted.
    pub windows: AtomicU64,
    /// The latest record per (column, statistic).
    pub latest: Mutex<BTreeMap<(String, String), DriftGauge>>,
}

/// The latest value of one drift statistic.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftGauge {
    /// The value (`None`: too few samples).
    pub value: Option<f64>,
    /// 0 ok, 1 warn, 2 alert, -1 insufficient.
    pub level: i8,
    /// Alerts raised so far.
    pub alerts: u64,
    /// The window end (ms).
    pub window_end_ms: i64,
}

/// The latest SLO records, one per objective (set by the monitor).
#[derive(Debug, Default)]
pub struct SloMetrics {
    /// The records.
    pub latest: Mutex<Vec<SloRecord>>,
}

/// Commits of epochs to the state store.
#[derive(Debug, Default)]
pub struct CommitMetrics {
    /// Epochs committed.
    pub commits: AtomicU64,
    /// Commit (write batch + WAL sync) durations, µs.
    pub duration_us: LatencyHistogram,
    /// Wall time of the latest commit (ms since the Unix epoch; 0 before the first).
    pub last_ms: AtomicI64,
    /// Write batches (one per commit, which holds every epoch queued behind the last sync).
    pub batches: AtomicU64,
    /// Keys not written because a later epoch of the same batch wrote them again.
    pub coalesced: AtomicU64,
}

/// Kafka sources: (source, partition) to their offsets.
#[derive(Debug, Default)]
pub struct KafkaMetrics {
    /// The offsets per (source, partition).
    pub partitions: Mutex<BTreeMap<(String, i32), KafkaPartitionGauge>>,
}

/// A Kafka source partition's offsets, as lag tools see them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KafkaPartitionGauge {
    /// The broker's high watermark (the offset the next record will get).
    pub high_watermark: i64,
    /// The offset after the last record of the last committed epoch (what sluice commits to
    /// the consumer group).
    pub committed: i64,
}

impl KafkaPartitionGauge {
    /// Records on the broker not yet in a committed epoch.
    pub fn lag(&self) -> i64 {
        (self.high_watermark - self.committed).max(0)
    }
}

/// Webhook sources: requests per (source, outcome): `accepted`, `duplicate`, or why refused.
#[derive(Debug, Default)]
pub struct WebhookMetrics {
    /// The counts.
    pub requests: Mutex<BTreeMap<(String, String), u64>>,
}

impl WebhookMetrics {
    /// Counts one request of `source` with `outcome`.
    pub fn add(&self, source: &str, outcome: &str) {
        add_to(&self.requests, (source.to_string(), outcome.to_string()), 1);
    }
}
