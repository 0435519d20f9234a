//! Latency from an event's ingest (its decode) to a stage of the pipeline: its feature record,
//! its score, the commit of the epoch holding its output (end to end). Measured by
//! [`LatencyMetrics`], judged by the latency objectives of `slo.rs`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use hdrhistogram::Histogram;

/// Where latency is measured to, from the event's decode (its ingest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatencyStage {
    /// Its feature record is emitted.
    Features = 0,
    /// Its score is emitted.
    Scored = 1,
    /// The epoch holding its output is committed (output durable): end to end.
    Committed = 2,
}

impl LatencyStage {
    /// All stages.
    pub const ALL: [LatencyStage; 3] = [LatencyStage::Features, LatencyStage::Scored, LatencyStage::Committed];

    /// The stage's name in config and metrics.
    pub fn name(self) -> &'static str {
        match self {
            LatencyStage::Features => "features",
            LatencyStage::Scored => "scored",
            LatencyStage::Committed => "committed",
        }
    }

    /// The stage called `name`.
    pub fn from_name(name: &str) -> Option<LatencyStage> {
        LatencyStage::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// A latency histogram: 1 µs to 1 day, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 86_400_000_000, 3).expect("invariant: valid histogram bounds")
}

/// A latency histogram in microseconds behind a lock, empty by default.
#[derive(Debug)]
pub struct LatencyHistogram(Mutex<Histogram<u64>>);

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram(Mutex::new(latency_histogram()))
    }
}

impl LatencyHistogram {
    /// Records one duration (at least 1 µs).
    pub fn record(&self, us: u64) {
        if let Ok(mut h) = self.0.lock() {
            h.saturating_record(us.max(1));
        }
    }

    /// Records many durations.
    pub fn record_all(&self, us: impl Iterator<Item = u64>) {
        if let Ok(mut h) = self.0.lock() {
            for u in us {
                h.saturating_record(u);
            }
        }
    }

    /// A copy.
    pub fn snapshot(&self) -> Histogram<u64> {
        self.0.lock().map(|h| h.clone()).unwrap_or_else(|_| latency_histogram())
    }

    /// The value at quantile `q` (0..=1), in µs; `None` while empty.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        let h = self.0.lock().ok()?;
        (!h.is_empty()).then(|| h.value_at_quantile(q))
    }
}

/// Latency from ingest per [`LatencyStage`].
#[derive(Debug, Default)]
pub struct LatencyMetrics {
    by_stage: [LatencyHistogram; 3],
    /// Ingest times of the records output per epoch, until the epoch is committed.
    pending_commit: Mutex<BTreeMap<u64, Vec<i64>>>,
}

impl LatencyMetrics {
    /// Records the latency to `stage` of records decoded at `ingest_us` (0: unknown, skipped).
    pub fn record(&self, stage: LatencyStage, now_us: i64, ingest_us: impl Iterator<Item = i64>) {
        self.by_stage[stage as usize].record_all(ingest_us.filter(|i| *i > 0).map(|i| (now_us - i).max(0) as u64));
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
            self.record(LatencyStage::Committed, now_us, done.into_iter().flatten());
        }
    }

    /// A copy of the histogram of `stage`.
    pub fn snapshot(&self, stage: LatencyStage) -> Histogram<u64> {
        self.by_stage[stage as usize].snapshot()
    }
}
