//! Service level objectives: indicators per interval, error budget and multi-window burn-rate
//! alerts, in the manner of the Google SRE workbook.
//!
//! An objective says which fraction of events (latency) or of the time (freshness) must be
//! good: "99.9% of events scored within 50 ms" is `indicator = "latency"`, `stage = "scored"`,
//! `threshold = "50ms"`, `objective = 0.999`; "freshness under 60 s for 99% of the time" is
//! `indicator = "freshness"`, `threshold = "60s"`, `objective = 0.99` (freshness = wall clock −
//! watermark, sampled every second).
//!
//! Every interval, the pipeline hands [`SloTracker::tick`] the good and total counts of each
//! objective; the tracker keeps the history and computes:
//! - the **burn rate** over a window: (bad / total in the window) / (1 − objective) — 1 spends
//!   the budget exactly over the period;
//! - **page** (fast burn): burn over 1 h ≥ 14.4 and over 5 m ≥ 14.4 (2% of a 30-day budget in an
//!   hour); **ticket** (slow burn): burn over 6 h ≥ 6 and over 30 m ≥ 6 (5% in 6 hours). The
//!   short window makes an alert clear soon after the burn stops;
//! - the **budget remaining** over the period: 1 − (bad / total) / (1 − objective) (negative
//!   when overspent).
//!
//! Windows shorter than the history so far use what there is. The tracker is pure: time comes
//! in as the interval's end, so tests drive it with hand-made series.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::latency::LatencyStage;
use crate::{DurationMs, OperatorError};

/// Burn-rate alert windows (ms) and levels: (long, short, level) for page and ticket.
pub const PAGE: (i64, i64, f64) = (3_600_000, 300_000, 14.4);
/// See [`PAGE`].
pub const TICKET: (i64, i64, f64) = (21_600_000, 1_800_000, 6.0);

/// What an objective measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Indicator {
    /// Events whose latency from ingest to `stage` is within the threshold.
    Latency,
    /// Seconds in which wall clock − watermark is within the threshold.
    Freshness,
}

/// `[[slo]]` in a pipeline file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SloConfig {
    /// The objective's name.
    pub name: String,
    /// `latency` or `freshness`.
    pub indicator: Indicator,
    /// For latency: `features`, `scored` or `committed` (end to end, the default).
    #[serde(default = "default_stage")]
    pub stage: String,
    /// Good is at or below this (a duration).
    pub threshold: DurationMs,
    /// The fraction that must be good, e.g. 0.999.
    pub objective: f64,
    /// The budget's period (default 30d).
    #[serde(default = "default_period")]
    pub period: DurationMs,
}

fn default_stage() -> String {
    "committed".into()
}
fn default_period() -> DurationMs {
    DurationMs::from_ms(30 * 86_400_000)
}

/// An objective, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Objective {
    /// Its name.
    pub name: String,
    /// What it measures.
    pub indicator: Indicator,
    /// For latency: the stage.
    pub stage: LatencyStage,
    /// Good is at or below this, in µs.
    pub threshold_us: u64,
    /// The fraction that must be good.
    pub objective: f64,
    /// The period, ms.
    pub period_ms: i64,
}

impl SloConfig {
    /// Checks it; `key` is where it is in the config (`slo[0]`).
    ///
    /// # Errors
    /// A bad stage or objective.
    pub fn objective(&self, key: &str) -> Result<Objective, OperatorError> {
        let bad = |k: &str, problem: String| OperatorError::Config { key: format!("{key}.{k}"), problem };
        let stage = LatencyStage::from_name(&self.stage).ok_or_else(|| bad("stage", format!("`{}` is not one of features, scored, committed", self.stage)))?;
        if !(self.objective > 0.0 && self.objective < 1.0) {
            return Err(bad("objective", format!("{} is not between 0 and 1 (e.g. 0.999)", self.objective)));
        }
        Ok(Objective {
            name: self.name.clone(),
            indicator: self.indicator,
            stage,
            threshold_us: self.threshold.ms() as u64 * 1000,
            objective: self.objective,
            period_ms: self.period.ms(),
        })
    }
}

/// One interval's measurement of an objective.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Measurement {
    /// Good events (or seconds).
    pub good: u64,
    /// All events (or seconds).
    pub total: u64,
    /// Percentiles of the interval's latency (µs): p50, p99, p99.9; `None` for freshness or
    /// when there were no events.
    pub percentiles_us: Option<[u64; 3]>,
}

/// One objective's state at the end of one interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SloRecord {
    /// The objective.
    pub name: String,
    /// `latency` or `freshness`.
    pub indicator: Indicator,
    /// The interval's end (wall clock, ms).
    pub interval_end_ms: i64,
    /// Good in the interval.
    pub good: u64,
    /// Total in the interval.
    pub total: u64,
    /// good / total in the interval (`None` when total is 0).
    pub value: Option<f64>,
    /// The objective.
    pub objective: f64,
    /// Latency percentiles of the interval, ms: p50, p99, p99.9.
    pub p50_ms: Option<f64>,
    /// See `p50_ms`.
    pub p99_ms: Option<f64>,
    /// See `p50_ms`.
    pub p999_ms: Option<f64>,
    /// Burn rate over 5 minutes.
    pub burn_5m: f64,
    /// Over 30 minutes.
    pub burn_30m: f64,
    /// Over 1 hour.
    pub burn_1h: f64,
    /// Over 6 hours.
    pub burn_6h: f64,
    /// Error budget remaining over the period (1 = untouched, < 0 = overspent).
    pub budget_remaining: f64,
    /// How fast the budget burns.
    pub status: SloStatus,
}

/// How fast an objective's error budget burns (the multiwindow burn-rate alerts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SloStatus {
    /// Within budget.
    Ok,
    /// A slow burn: open a ticket.
    Ticket,
    /// A fast burn: page someone.
    Page,
}

impl SloStatus {
    /// Its name in the SLO output: `ok`, `ticket`, `page`.
    pub fn name(self) -> &'static str {
        match self {
            SloStatus::Ok => "ok",
            SloStatus::Ticket => "ticket",
            SloStatus::Page => "page",
        }
    }

    /// Its level in `/metrics`: 0 ok, 1 ticket, 2 page.
    pub fn level(self) -> i8 {
        match self {
            SloStatus::Ok => 0,
            SloStatus::Ticket => 1,
            SloStatus::Page => 2,
        }
    }
}

/// The history of one objective: (interval end, good, total), oldest first, at most one period.
#[derive(Debug, Clone)]
struct History {
    objective: Objective,
    intervals: VecDeque<(i64, u64, u64)>,
}

impl History {
    fn burn(&self, now_ms: i64, window_ms: i64) -> f64 {
        let (mut bad, mut total) = (0u64, 0u64);
        for (end, g, t) in self.intervals.iter().rev() {
            if *end <= now_ms - window_ms {
                break;
            }
            bad += t - g;
            total += t;
        }
        if total == 0 {
            0.0
        } else {
            (bad as f64 / total as f64) / (1.0 - self.objective.objective)
        }
    }
}

/// The objectives of a pipeline and their histories.
#[derive(Debug, Clone)]
pub struct SloTracker {
    histories: Vec<History>,
}

impl SloTracker {
    /// A tracker for `objectives`.
    pub fn new(objectives: Vec<Objective>) -> Self {
        SloTracker { histories: objectives.into_iter().map(|objective| History { objective, intervals: VecDeque::new() }).collect() }
    }

    /// The objectives.
    pub fn objectives(&self) -> impl Iterator<Item = &Objective> {
        self.histories.iter().map(|h| &h.objective)
    }

    /// Ends an interval at `now_ms` with one measurement per objective (in order): one record
    /// per objective.
    pub fn tick(&mut self, now_ms: i64, measurements: &[Measurement]) -> Vec<SloRecord> {
        let mut out = Vec::new();
        for (h, m) in self.histories.iter_mut().zip(measurements) {
            h.intervals.push_back((now_ms, m.good.min(m.total), m.total));
            while h.intervals.front().is_some_and(|(end, _, _)| *end <= now_ms - h.objective.period_ms) {
                h.intervals.pop_front();
            }
            let burn = |w| h.burn(now_ms, w);
            let (b5m, b30m, b1h, b6h) = (burn(PAGE.1), burn(TICKET.1), burn(PAGE.0), burn(TICKET.0));
            let status = if b1h >= PAGE.2 && b5m >= PAGE.2 {
                SloStatus::Page
            } else if b6h >= TICKET.2 && b30m >= TICKET.2 {
                SloStatus::Ticket
            } else {
                SloStatus::Ok
            };
            let (bad, total) = h.intervals.iter().fold((0u64, 0u64), |(b, t), (_, g, n)| (b + n - g, t + n));
            let budget_remaining = if total == 0 { 1.0 } else { 1.0 - (bad as f64 / total as f64) / (1.0 - h.objective.objective) };
            let ms = |i: usize| m.percentiles_us.map(|p| p[i] as f64 / 1000.0);
            out.push(SloRecord {
                name: h.objective.name.clone(),
                indicator: h.objective.indicator,
                interval_end_ms: now_ms,
                good: m.good.min(m.total),
                total: m.total,
                value: (m.total > 0).then(|| m.good.min(m.total) as f64 / m.total as f64),
                objective: h.objective.objective,
                p50_ms: ms(0),
                p99_ms: ms(1),
                p999_ms: ms(2),
                burn_5m: b5m,
                burn_30m: b30m,
                burn_1h: b1h,
                burn_6h: b6h,
                budget_remaining,
                status,
            });
        }
        out
    }
}

/// The good/total counts and percentiles of the latencies recorded between two snapshots of a
/// cumulative histogram.
pub fn latency_measurement(now: &hdrhistogram::Histogram<u64>, before: &hdrhistogram::Histogram<u64>, threshold_us: u64) -> Measurement {
    let mut interval = now.clone();
    if interval.subtract(before).is_err() {
        interval = now.clone();
    }
    let total = interval.len();
    if total == 0 {
        return Measurement::default();
    }
    let good = interval.count_between(0, threshold_us);
    let p = |q: f64| interval.value_at_quantile(q);
    Measurement { good, total, percentiles_us: Some([p(0.5), p(0.99), p(0.999)]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objective() -> Objective {
        SloConfig {
            name: "fast".into(),
            indicator: Indicator::Latency,
            stage: "scored".into(),
            threshold: DurationMs::from_ms(50),
            objective: 0.999,
            period: DurationMs::from_ms(86_400_000),
        }
        .objective("slo[0]")
        .unwrap()
    }

    /// One interval per minute, 1000 events each: 60 good minutes, 15 minutes with half the
    /// events bad, 35 good minutes.
    #[test]
    fn burn_rate_alerts_fire_and_clear_on_a_hand_made_series() {
        let mut t = SloTracker::new(vec![objective()]);
        let mut statuses = Vec::new();
        let mut last = None;
        for minute in 1..=110i64 {
            let bad = if (61..=75).contains(&minute) { 500 } else { 0 };
            let r = t.tick(minute * 60_000, &[Measurement { good: 1000 - bad, total: 1000, percentiles_us: None }]).remove(0);
            statuses.push((minute, r.status));
            last = Some(r);
        }
        let status = |m: i64| statuses[(m - 1) as usize].1.name();
        // By hand (budget 0.1%, half bad = burn 500 in a bad minute):
        // minute 61: 30m burn 500/30 = 16.7 ≥ 6, 6h burn 500/61 = 8.2 ≥ 6 → ticket; 5m burn
        // 100 but 1h burn 500/60 = 8.3 < 14.4 → no page.
        assert_eq!(status(60), "ok");
        assert_eq!(status(61), "ticket");
        // minute 62: 1h burn 1000/60 = 16.7 ≥ 14.4 and 5m burn 200 → page.
        assert_eq!(status(62), "page");
        assert_eq!(status(75), "page");
        // The 5m window holds a bad minute through minute 79; at 80 it holds none → page clears.
        assert_eq!(status(79), "page");
        assert_eq!(status(80), "ticket");
        // The 30m window holds a bad minute through minute 104 (61..=75 + 29); at 105 → clears.
        assert_eq!(status(104), "ticket");
        assert_eq!(status(105), "ok");
        let r = last.unwrap();
        // 7,500 bad of 110,000 over the day: 1 − (7500/110000)/0.001.
        assert!((r.budget_remaining - (1.0 - (7500.0 / 110_000.0) / 0.001)).abs() < 1e-9, "{}", r.budget_remaining);
        assert_eq!((r.burn_5m, r.burn_30m), (0.0, 0.0));
        // 1h window at minute 110: minutes 51..=110 hold minutes 61..=75: 7500 / 60000.
        assert!((r.burn_1h - (7500.0 / 60_000.0) / 0.001).abs() < 1e-9);
    }

    #[test]
    fn latency_measurements_are_the_interval_between_snapshots() {
        let mut h = crate::latency::latency_histogram();
        for v in [10_000u64, 20_000, 60_000] {
            h.record(v).unwrap();
        }
        let before = h.clone();
        for v in [30_000u64, 40_000, 49_000, 51_000, 200_000] {
            h.record(v).unwrap();
        }
        let m = latency_measurement(&h, &before, 50_000);
        assert_eq!((m.good, m.total), (3, 5));
        let [p50, _, p999] = m.percentiles_us.unwrap();
        assert!((49_000..=49_100).contains(&p50) && (200_000..=200_200).contains(&p999), "{p50} {p999}");
    }

    #[test]
    fn bad_objectives_name_their_key() {
        let mut c = SloConfig {
            name: "x".into(),
            indicator: Indicator::Freshness,
            stage: "committed".into(),
            threshold: DurationMs::from_ms(60_000),
            objective: 1.5,
            period: DurationMs::from_ms(30 * 86_400_000),
        };
        assert_eq!(c.objective("slo[1]").unwrap_err().to_string(), "slo[1].objective: 1.5 is not between 0 and 1 (e.g. 0.999)");
        c.objective = 0.99;
        c.stage = "sink".into();
        assert!(c.objective("slo[1]").unwrap_err().to_string().starts_with("slo[1].stage: `sink`"));
    }
}
