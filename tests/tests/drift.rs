//! Drift in a running pipeline: the demo's mid-run shift of amounts raises an alert within two
//! windows; the same stream without the shift raises none across 20 windows; a run stopped and
//! resumed emits the same drift records as one run.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sluice::demo::{demo_config, DemoOptions};
use sluice::{PipelineConfig, RunControl};
use sluice_tests::{assert_same_lines, lines};

fn options() -> DemoOptions {
    DemoOptions { duration: Duration::from_secs(1), rate: 0, workers: 2, events: 200_000, model: None, shadow: None, http: None }
}

/// The demo pipeline, unpaced, with 500 ms windows sliding by 250 ms; (config, shift time ms).
fn pipeline(dir: &std::path::Path, shift: bool) -> (PipelineConfig, i64) {
    let mut config = demo_config(dir, &options());
    let drift = config.drift.as_mut().unwrap();
    drift.window = "500ms".parse().unwrap();
    drift.slide = "250ms".parse().unwrap();
    drift.reference.first = Some(20_000);
    config.order.lateness = "500ms".parse().unwrap();
    let Some(g) = config.sources[0].get_mut::<sluice_connectors::generator::GeneratorConfig>() else { panic!("the demo reads a generator") };
    let shift_ms = g.start_ms + (g.shift_after.unwrap() * g.step_us / 1000) as i64;
    if !shift {
        g.shift_after = None;
    }
    (config, shift_ms)
}

fn drift_records(dir: &std::path::Path) -> Vec<serde_json::Value> {
    lines(&dir.join("drift.jsonl")).iter().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn a_shift_of_amounts_raises_an_alert_within_two_windows() {
    let work = tempfile::tempdir().unwrap();
    let (config, shift_ms) = pipeline(work.path(), true);
    sluice::run(&config, &RunControl::default()).unwrap();
    let records = drift_records(work.path());
    let mut ends: Vec<i64> = records.iter().map(|r| r["window_end_ms"].as_i64().unwrap()).collect();
    ends.dedup();
    assert!(ends.len() >= 20, "{} windows", ends.len());
    let alert = |r: &serde_json::Value| r["status"] == "alert";
    // Before the shift: nothing alerts.
    for r in records.iter().filter(|r| r["window_end_ms"].as_i64().unwrap() <= shift_ms) {
        assert!(!alert(r), "alert before the shift: {r}");
    }
    // The first two windows holding shifted amounts: amount_last PSI alerts in one of them.
    let after: Vec<i64> = ends.iter().copied().filter(|e| *e > shift_ms).take(2).collect();
    assert_eq!(after.len(), 2);
    let raised =
        records.iter().any(|r| after.contains(&r["window_end_ms"].as_i64().unwrap()) && r["column"] == "amount_last" && r["statistic"] == "psi" && alert(r));
    assert!(raised, "no amount_last PSI alert in the windows ending {after:?}");
    // And every full window after the shift alerts on amount_last; currencies never do.
    let full_after = records.iter().filter(|r| {
        r["window_start_ms"].as_i64().unwrap() >= shift_ms && r["column"] == "amount_last" && r["statistic"] == "psi" && r["status"] != "insufficient"
    });
    assert!(full_after.clone().count() >= 5);
    assert!(full_after.clone().all(alert));
    assert!(records.iter().filter(|r| r["column"] == "currency").all(|r| !alert(r)));
}

#[test]
fn a_stream_without_a_shift_raises_no_alert_across_20_windows() {
    let work = tempfile::tempdir().unwrap();
    let (config, _) = pipeline(work.path(), false);
    let control = RunControl::default();
    sluice::run(&config, &control).unwrap();
    let records = drift_records(work.path());
    let mut ends: Vec<i64> = records.iter().map(|r| r["window_end_ms"].as_i64().unwrap()).collect();
    ends.dedup();
    assert!(ends.len() >= 20, "{} windows", ends.len());
    // 2 columns: 4 statistics for amount_last, 2 for currency, per window.
    assert_eq!(records.len(), ends.len() * 6);
    for r in &records {
        assert_ne!(r["status"], "alert", "{r}");
        assert_eq!(r["reference_n"], records[0]["reference_n"]);
    }
    assert_eq!(control.metrics.drift.windows.load(Ordering::Relaxed) as usize, ends.len());
}

#[test]
fn a_stopped_and_resumed_run_emits_the_same_drift_records() {
    let whole = tempfile::tempdir().unwrap();
    let (config, _) = pipeline(whole.path(), true);
    sluice::run(&config, &RunControl::default()).unwrap();

    let parts = tempfile::tempdir().unwrap();
    let (mut config_parts, _) = pipeline(parts.path(), true);
    // Same generator (start time included) as the whole run.
    config_parts.sources = config.sources.clone();
    config_parts.drift = config.drift.clone();
    let control = RunControl::default();
    let stop = Arc::clone(&control.stop);
    let metrics = Arc::clone(&control.metrics);
    let stopper = std::thread::spawn(move || {
        while metrics.sources.records_in.load(Ordering::Relaxed) < 100_000 {
            std::thread::sleep(Duration::from_millis(1));
        }
        stop.store(true, Ordering::Relaxed);
    });
    // One open epoch at a time in the first part: the sources cannot read the whole input
    // before the stopper, which shares two cores with the workers, gets to run (they did).
    let first_part = PipelineConfig { max_inflight_epochs: 1, ..config_parts.clone() };
    let first = sluice::run(&first_part, &control).unwrap();
    stopper.join().unwrap();
    assert!(control.metrics.drift.windows.load(Ordering::Relaxed) > 0, "the first part emitted windows");
    assert!(first.records_in < 200_000, "the first part stopped early: {}", first.records_in);
    let second = sluice::run(&config_parts, &RunControl::default()).unwrap();
    assert!(second.resumed_at_epoch > 0);
    assert_same_lines(&lines(&parts.path().join("features.jsonl")), &lines(&whole.path().join("features.jsonl")), "features.jsonl");
    assert_same_lines(&lines(&parts.path().join("drift.jsonl")), &lines(&whole.path().join("drift.jsonl")), "drift.jsonl");
}
