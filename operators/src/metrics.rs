//! Counters shared by the operators of all workers, read by the progress display.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::event::DeadLetterReason;

/// Pipeline counters. Relaxed atomics: figures for humans, not for synchronisation.
#[derive(Debug)]
pub struct Metrics {
    /// Records read by sources.
    pub records_in: AtomicU64,
    /// Records decoded into events.
    pub decoded: AtomicU64,
    /// Dead letters.
    pub dead_letters: AtomicU64,
    /// Exact repeats dropped by dedup.
    pub duplicates: AtomicU64,
    /// Repeats with a different payload.
    pub conflicts: AtomicU64,
    /// Events behind the watermark.
    pub late: AtomicU64,
    /// Feature records emitted.
    pub features_out: AtomicU64,
    /// Records scored by a model.
    pub scored: AtomicU64,
    /// Records scored by a shadow model.
    pub shadow_scored: AtomicU64,
    /// Shadow scores with a primary score to compare with.
    pub shadow_compared: AtomicU64,
    /// Sum of |shadow − primary| over those, in units of 1e-9.
    pub shadow_abs_diff_nano: AtomicU64,
    /// New model versions loaded while running (primary and shadow).
    pub model_reloads: AtomicU64,
    /// New model files that did not load (the old version kept scoring).
    pub model_reload_failures: AtomicU64,
    /// Drift samples of panes already out of every open window (flagged late events).
    pub drift_late_samples: AtomicU64,
    /// Drift windows emitted.
    pub drift_windows: AtomicU64,
    /// The latest drift record per (column, statistic): value and status.
    pub drift_latest: std::sync::Mutex<std::collections::BTreeMap<(String, String), DriftGauge>>,
    /// The latest watermark (ms), `i64::MIN` before the first.
    pub watermark_ms: AtomicI64,
    /// The largest event time seen (ms).
    pub max_event_time_ms: AtomicI64,
    /// Epochs committed.
    pub commits: AtomicU64,
    /// Records read per source partition (global partition index).
    pub records_by_partition: std::sync::Mutex<std::collections::BTreeMap<u32, u64>>,
    /// Time each source partition (global index) was paused by backpressure, µs.
    pub paused_us_by_partition: std::sync::Mutex<std::collections::BTreeMap<u32, u64>>,
    /// Kafka source partitions: (source, partition) to their offsets.
    pub kafka_partitions: std::sync::Mutex<std::collections::BTreeMap<(String, i32), KafkaPartitionGauge>>,
    /// Webhook requests per (source, outcome): `accepted`, `duplicate`, or why refused.
    pub webhook_requests: std::sync::Mutex<std::collections::BTreeMap<(String, String), u64>>,
    /// Dead letters per reason class (the reason up to its first detail).
    pub dead_letter_reasons: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// Time sources spent waiting for the dataflow (more than `max_inflight_epochs` open), µs.
    pub backpressure_us: AtomicU64,
    /// Epochs open in the dataflow (worker 0's source).
    pub inflight_epochs: AtomicU64,
    /// Commit (write batch + WAL sync) durations, µs.
    pub commit_us: std::sync::Mutex<hdrhistogram::Histogram<u64>>,
    /// Wall time of the latest commit (ms since the Unix epoch; 0 before the first).
    pub last_commit_ms: AtomicI64,
    /// The latest SLO records, one per objective.
    pub slo_latest: std::sync::Mutex<Vec<crate::slo::SloRecord>>,
    /// Latency from ingest (decode) per stage, in microseconds (see [`Stage`]).
    pub latency_us: [std::sync::Mutex<hdrhistogram::Histogram<u64>>; 3],
    /// Ingest times of the records output per epoch, until the epoch is committed.
    pending_commit: std::sync::Mutex<std::collections::BTreeMap<u64, Vec<i64>>>,
    /// Model batch latencies, in microseconds (1 µs to 60 s, 3 significant digits).
    pub batch_latency_us: std::sync::Mutex<hdrhistogram::Histogram<u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            records_in: AtomicU64::new(0),
            decoded: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            late: AtomicU64::new(0),
            features_out: AtomicU64::new(0),
            scored: AtomicU64::new(0),
            shadow_scored: AtomicU64::new(0),
            drift_late_samples: AtomicU64::new(0),
            drift_windows: AtomicU64::new(0),
            drift_latest: std::sync::Mutex::new(std::collections::BTreeMap::new()),
            model_reloads: AtomicU64::new(0),
            model_reload_failures: AtomicU64::new(0),
            shadow_compared: AtomicU64::new(0),
            shadow_abs_diff_nano: AtomicU64::new(0),
            watermark_ms: AtomicI64::new(i64::MIN),
            max_event_time_ms: AtomicI64::new(i64::MIN),
            commits: AtomicU64::new(0),
            records_by_partition: std::sync::Mutex::new(std::collections::BTreeMap::new()),
            dead_letter_reasons: std::sync::Mutex::new(std::collections::BTreeMap::new()),
            paused_us_by_partition: std::sync::Mutex::new(std::collections::BTreeMap::new()),
            webhook_requests: std::sync::Mutex::new(std::collections::BTreeMap::new()),
            kafka_partitions: std::sync::Mutex::new(std::collections::BTreeMap::new()),
            backpressure_us: AtomicU64::new(0),
            inflight_epochs: AtomicU64::new(0),
            commit_us: std::sync::Mutex::new(latency_histogram()),
            last_commit_ms: AtomicI64::new(0),
            slo_latest: std::sync::Mutex::new(Vec::new()),
            latency_us: std::array::from_fn(|_| std::sync::Mutex::new(latency_histogram())),
            pending_commit: std::sync::Mutex::new(std::collections::BTreeMap::new()),
            batch_latency_us: std::sync::Mutex::new(hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).expect("invariant: valid histogram bounds")),
        }
    }
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

/// Where latency is measured to, from the event's decode (its ingest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Its feature record is emitted.
    Features = 0,
    /// Its score is emitted.
    Scored = 1,
    /// The epoch holding its output is committed (output durable): end to end.
    Committed = 2,
}

impl Stage {
    /// All stages.
    pub const ALL: [Stage; 3] = [Stage::Features, Stage::Scored, Stage::Committed];

    /// The stage's name in config and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Features => "features",
            Stage::Scored => "scored",
            Stage::Committed => "committed",
        }
    }

    /// The stage called `name`.
    pub fn from_name(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// A latency histogram: 1 µs to 1 day, 3 significant digits.
pub fn latency_histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 86_400_000_000, 3).expect("invariant: valid histogram bounds")
}

/// The latest value of one drift statistic, for `/metrics`.
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

impl Metrics {
    /// Counts records read from source partition `partition`.
    pub fn add_partition_records(&self, partition: u32, n: u64) {
        if n > 0 {
            if let Ok(mut m) = self.records_by_partition.lock() {
                *m.entry(partition).or_default() += n;
            }
        }
    }

    /// Adds to a partition's paused time.
    pub fn add_partition_paused(&self, partition: u32, us: u64) {
        if let Ok(mut m) = self.paused_us_by_partition.lock() {
            *m.entry(partition).or_default() += us;
        }
    }

    /// Counts a dead letter by its reason's class.
    pub fn add_dead_letter(&self, reason: &DeadLetterReason) {
        if let Ok(mut m) = self.dead_letter_reasons.lock() {
            *m.entry(reason.class()).or_default() += 1;
        }
    }

    /// Records the latency to `stage` of records decoded at `ingest_us` (0: unknown, skipped).
    pub fn record_stage(&self, stage: Stage, now_us: i64, ingest_us: impl Iterator<Item = i64>) {
        if let Ok(mut h) = self.latency_us[stage as usize].lock() {
            for i in ingest_us.filter(|i| *i > 0) {
                h.saturating_record((now_us - i).max(0) as u64);
            }
        }
    }

    /// Holds the ingest times of `epoch`'s output until the epoch is committed.
    pub fn hold_for_commit(&self, epoch: u64, ingest_us: impl Iterator<Item = i64>) {
        if let Ok(mut p) = self.pending_commit.lock() {
            p.entry(epoch).or_default().extend(ingest_us.filter(|i| *i > 0));
        }
    }

    /// Every epoch below `resume` is committed (at `now_us`): records their end-to-end latency.
    pub fn committed_before(&self, resume: u64, now_us: i64) {
        let done: Vec<Vec<i64>> = match self.pending_commit.lock() {
            Ok(mut p) => {
                let keep = p.split_off(&resume);
                std::mem::replace(&mut *p, keep).into_values().collect()
            }
            Err(_) => return,
        };
        if !done.is_empty() {
            self.record_stage(Stage::Committed, now_us, done.into_iter().flatten());
        }
    }

    /// A copy of the latency histogram of `stage`.
    pub fn latency_snapshot(&self, stage: Stage) -> hdrhistogram::Histogram<u64> {
        self.latency_us[stage as usize].lock().map(|h| h.clone()).unwrap_or_else(|_| latency_histogram())
    }

    /// Records one window's drift records.
    pub fn record_drift(&self, records: &[crate::drift::DriftRecord]) {
        self.drift_windows.fetch_add(1, Ordering::Relaxed);
        let Ok(mut latest) = self.drift_latest.lock() else { return };
        for r in records {
            let level = r.status.level();
            let entry = latest.entry((r.column.clone(), r.statistic.clone())).or_insert(DriftGauge { value: None, level, alerts: 0, window_end_ms: 0 });
            entry.value = r.value;
            entry.level = level;
            entry.window_end_ms = r.window_end_ms;
            entry.alerts += u64::from(level == 2);
        }
    }

    pub(crate) fn add_decoded(&self, decoded: u64, rejected: u64) {
        self.decoded.fetch_add(decoded, Ordering::Relaxed);
        self.dead_letters.fetch_add(rejected, Ordering::Relaxed);
    }

    /// Records one model batch's latency.
    pub fn record_batch_latency(&self, micros: u64) {
        if let Ok(mut h) = self.batch_latency_us.lock() {
            h.saturating_record(micros.max(1));
        }
    }

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

    /// Batch latency at quantile `q` (0..=1), in microseconds; `None` before any batch.
    pub fn batch_latency_quantile_us(&self, q: f64) -> Option<u64> {
        let h = self.batch_latency_us.lock().ok()?;
        (!h.is_empty()).then(|| h.value_at_quantile(q))
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Watermark lag in event time: largest event time seen minus the watermark, in ms.
    pub fn watermark_lag_ms(&self) -> Option<i64> {
        let w = self.watermark_ms.load(Ordering::Relaxed);
        let m = self.max_event_time_ms.load(Ordering::Relaxed);
        (w != i64::MIN && m != i64::MIN && w != i64::MAX).then(|| (m - w).max(0))
    }
}
