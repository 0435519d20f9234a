//! The monitor thread: samples freshness every second, ends an SLO interval every
//! `slo_interval`, writes the SLO records (stream `slo`) and keeps the latest for `/metrics`.
//!
//! SLO records are wall-clock observations of this run, not results of the dataflow: they are
//! appended to their file as they are made (and flushed), not committed per epoch, and a rerun
//! over the same input does not reproduce them.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_operators::slo::{latency_measurement, Indicator, Measurement, Objective, SloRecord, SloStatus, SloTracker};
use sluice_operators::{LatencyStage, Metrics};

/// A running monitor; [`Monitor::finish`] ends the last interval and stops it.
#[derive(Debug)]
pub struct Monitor {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn wall_ms() -> i64 {
    sluice_operators::event::now_us() / 1000
}

/// Freshness now: wall clock − watermark, ms; `None` before the first watermark or after the
/// input ended.
pub fn freshness_ms(time: &sluice_operators::metrics::TimeMetrics) -> Option<i64> {
    let w = time.watermark_ms.get()?;
    (w != i64::MAX).then(|| (wall_ms() - w).max(0))
}

struct State {
    tracker: SloTracker,
    before: Vec<hdrhistogram::Histogram<u64>>,
    freshness: Vec<(u64, u64)>,
    out: Option<std::io::BufWriter<std::fs::File>>,
}

impl State {
    fn sample_freshness(&mut self, metrics: &Metrics) {
        let Some(f) = freshness_ms(&metrics.time) else { return };
        let thresholds: Vec<(Indicator, u64)> = self.tracker.objectives().map(|o| (o.indicator, o.threshold_us)).collect();
        for ((indicator, threshold_us), (good, total)) in thresholds.into_iter().zip(&mut self.freshness) {
            if indicator == Indicator::Freshness {
                *total += 1;
                *good += u64::from((f as u64) * 1000 <= threshold_us);
            }
        }
    }

    fn tick(&mut self, metrics: &Metrics) -> Vec<SloRecord> {
        let objectives: Vec<Objective> = self.tracker.objectives().cloned().collect();
        let now: Vec<hdrhistogram::Histogram<u64>> = LatencyStage::ALL.iter().map(|s| metrics.latency.snapshot(*s)).collect();
        let measurements: Vec<Measurement> = objectives
            .iter()
            .zip(&mut self.freshness)
            .map(|(o, f)| match o.indicator {
                Indicator::Latency => latency_measurement(&now[o.stage as usize], &self.before[o.stage as usize], o.threshold_us),
                Indicator::Freshness => {
                    let (good, total) = std::mem::take(f);
                    Measurement { good, total, percentiles_us: None }
                }
            })
            .collect();
        self.before = now;
        let records = self.tracker.tick(wall_ms(), &measurements);
        if let Some(out) = self.out.as_mut() {
            for r in &records {
                let _ = serde_json::to_writer(&mut *out, r);
                let _ = out.write_all(b"\n");
            }
            let _ = out.flush();
        }
        if let Ok(mut latest) = metrics.slo.latest.lock() {
            latest.clone_from(&records);
        }
        for r in records.iter().filter(|r| r.status != SloStatus::Ok) {
            tracing::warn!(objective = %r.name, status = r.status.name(), burn_5m = r.burn_5m, burn_1h = r.burn_1h, budget_remaining = r.budget_remaining, "SLO burning");
        }
        records
    }
}

impl Monitor {
    /// Starts the monitor for `objectives`, writing SLO records to `path` if given.
    ///
    /// # Errors
    /// The SLO file cannot be opened.
    pub fn start(objectives: Vec<Objective>, interval: Duration, path: Option<PathBuf>, metrics: Arc<Metrics>) -> std::io::Result<Monitor> {
        let out = match path {
            Some(p) => {
                if let Some(dir) = p.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                Some(std::io::BufWriter::new(std::fs::OpenOptions::new().create(true).append(true).open(&p)?))
            }
            None => None,
        };
        let n = objectives.len();
        let mut state = State {
            tracker: SloTracker::new(objectives),
            before: LatencyStage::ALL.iter().map(|s| metrics.latency.snapshot(*s)).collect(),
            freshness: vec![(0, 0); n],
            out,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new().name("sluice-monitor".into()).spawn(move || {
            let mut interval_started = Instant::now();
            let mut last_sample = Instant::now();
            loop {
                std::thread::sleep(Duration::from_millis(50));
                let stop = stopping.load(Ordering::Relaxed);
                if last_sample.elapsed() >= Duration::from_secs(1) {
                    state.sample_freshness(&metrics);
                    last_sample = Instant::now();
                }
                if (interval_started.elapsed() >= interval || stop) && n > 0 {
                    state.tick(&metrics);
                    interval_started = Instant::now();
                }
                if stop {
                    return;
                }
            }
        })?;
        Ok(Monitor { stop, thread: Some(thread) })
    }

    /// Ends the last interval and stops.
    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
