//! The watermark: how far event time has surely progressed, computed the same on every worker.
//!
//! `watermark = min over source partitions of (largest event time seen there − allowed
//! lateness)`. A finished partition does not count; an idle one (no record for the idle
//! timeout) does not count either. When every unfinished partition is idle, the watermark moves
//! to the largest event time seen anywhere − lateness: what has arrived is released, and a
//! quiet source holds nothing back. The watermark never goes back. When every partition is
//! finished it is `i64::MAX`: everything buffered is released.
//!
//! Every worker receives every partition's progress at the end of every epoch (broadcast), so
//! the watermark after epoch `e` is the same on all workers and for any number of workers: it
//! depends only on what each partition delivered up to its `e`-th epoch end.

use std::collections::BTreeMap;

use crate::event::PartitionProgress;

/// Tracks partitions' progress and the resulting watermark.
#[derive(Debug, Clone)]
pub struct WatermarkTracker {
    partitions: usize,
    lateness_ms: i64,
    state: BTreeMap<u32, PartitionProgress>,
    current: i64,
}

impl WatermarkTracker {
    /// A tracker over `partitions` partitions, starting from the committed progress.
    pub fn new(partitions: usize, lateness_ms: i64, committed: &[PartitionProgress]) -> Self {
        let mut tracker = WatermarkTracker { partitions, lateness_ms, state: BTreeMap::new(), current: i64::MIN };
        for p in committed {
            tracker.state.insert(p.partition, *p);
        }
        tracker.current = tracker.compute().unwrap_or(i64::MIN);
        tracker
    }

    /// Raises the watermark to at least `floor`: a watermark reached before a restart, which the
    /// committed progress alone may not give back (an idle partition that since turned active).
    pub fn with_floor(mut self, floor: i64) -> Self {
        self.current = self.current.max(floor);
        self
    }

    /// Applies one partition's progress report.
    pub fn apply(&mut self, progress: &PartitionProgress) {
        self.state.insert(progress.partition, *progress);
    }

    /// Recomputes the watermark after a batch of [`WatermarkTracker::apply`]; returns it.
    pub fn advance(&mut self) -> i64 {
        if let Some(w) = self.compute() {
            self.current = self.current.max(w);
        }
        self.current
    }

    /// The current watermark (ms): events with a time below it are late.
    pub fn watermark(&self) -> i64 {
        self.current
    }

    /// `None` when nothing is known yet that could move it.
    fn compute(&self) -> Option<i64> {
        let mut min = i64::MAX;
        let mut unfinished = 0;
        let mut active = 0;
        let mut latest: Option<i64> = None;
        for partition in 0..self.partitions as u32 {
            if let Some(t) = self.state.get(&partition).and_then(|p| p.max_event_time_ms) {
                latest = Some(latest.map_or(t, |l| l.max(t)));
            }
            match self.state.get(&partition) {
                Some(p) if p.finished => {}
                Some(p) if p.idle => unfinished += 1,
                Some(p) => {
                    unfinished += 1;
                    active += 1;
                    min = min.min(p.max_event_time_ms.map_or(i64::MIN, |t| t.saturating_sub(self.lateness_ms)));
                }
                None => {
                    unfinished += 1;
                    active += 1;
                    min = i64::MIN;
                }
            }
        }
        if unfinished > 0 && active == 0 {
            return latest.map(|t| t.saturating_sub(self.lateness_ms));
        }
        Some(min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(partition: u32, max: Option<i64>, finished: bool, idle: bool) -> PartitionProgress {
        PartitionProgress { partition, max_event_time_ms: max, finished, idle }
    }

    #[test]
    fn watermark_is_the_slowest_partition_minus_lateness() {
        let mut t = WatermarkTracker::new(2, 10, &[]);
        t.apply(&p(0, Some(100), false, false));
        assert_eq!(t.advance(), i64::MIN, "partition 1 has reported nothing yet");
        t.apply(&p(1, Some(50), false, false));
        assert_eq!(t.advance(), 40);
        t.apply(&p(1, Some(30), false, false));
        assert_eq!(t.advance(), 40, "never goes back");
    }

    #[test]
    fn idle_partitions_do_not_hold_it_back() {
        let mut t = WatermarkTracker::new(2, 10, &[]);
        t.apply(&p(0, Some(100), false, false));
        t.apply(&p(1, Some(5), false, true));
        assert_eq!(t.advance(), 90);
        // Everything unfinished is idle: what was seen anywhere, minus lateness.
        t.apply(&p(0, Some(200), false, true));
        assert_eq!(t.advance(), 190);
    }

    #[test]
    fn a_finished_partition_and_an_idle_one_release_what_was_seen() {
        let mut t = WatermarkTracker::new(2, 10, &[]);
        t.apply(&p(0, Some(500), true, false));
        t.apply(&p(1, None, false, false));
        assert_eq!(t.advance(), i64::MIN, "partition 1 has sent nothing and is not idle yet");
        t.apply(&p(1, None, false, true));
        assert_eq!(t.advance(), 490);
    }

    #[test]
    fn a_floor_from_before_a_restart_holds_when_committed_progress_gives_less() {
        // Before the restart both partitions were idle at 100 and 50: the watermark was 90. The
        // committed progress now says partition 1 is active at 50, which alone gives 40.
        let committed = [p(0, Some(100), false, true), p(1, Some(50), false, false)];
        assert_eq!(WatermarkTracker::new(2, 10, &committed).watermark(), 40);
        let mut t = WatermarkTracker::new(2, 10, &committed).with_floor(90);
        assert_eq!(t.watermark(), 90);
        t.apply(&p(1, Some(95), false, false));
        assert_eq!(t.advance(), 90, "85 from the progress does not lower it");
        t.apply(&p(1, Some(130), false, false));
        assert_eq!(t.advance(), 120);
    }

    #[test]
    fn all_finished_releases_everything() {
        let mut t = WatermarkTracker::new(2, 0, &[p(0, Some(7), true, false)]);
        t.apply(&p(1, Some(9), true, false));
        assert_eq!(t.advance(), i64::MAX);
    }
}
