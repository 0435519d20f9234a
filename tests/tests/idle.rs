//! An idle partition must not hold the watermark back forever: a file that never grows (tailed
//! with `at_eof = "follow"`) beside one with data.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::RunControl;
use sluice_connectors::file::{AtEof, FileSourceConfig};
use sluice_connectors::SourceConfig;
use sluice_tests::{golden_dir, golden_pipeline, lines};

/// Runs the golden data (partition 0 only) next to an empty tailed file, stops once `wait`
/// has passed, and returns the feature lines written by then.
fn features_with_idle_timeout(idle_timeout: &str, wait: Duration) -> Vec<String> {
    let work = tempfile::tempdir().unwrap();
    let mut config = golden_pipeline(work.path(), 2);
    let empty = work.path().join("quiet.jsonl");
    std::fs::write(&empty, b"").unwrap();
    config.sources = vec![
        SourceConfig::new(FileSourceConfig {
            name: "payments".into(),
            paths: vec![golden_dir().join("part0.jsonl")],
            path: None,
            at_eof: AtEof::Finish,
            on_change: Default::default(),
            state_dir: None,
            pace_speedup: None,
            line_bytes_max: 1 << 20,
        }),
        SourceConfig::new(FileSourceConfig {
            name: "quiet".into(),
            paths: vec![empty],
            path: None,
            at_eof: AtEof::Follow,
            on_change: Default::default(),
            state_dir: None,
            pace_speedup: None,
            line_bytes_max: 1 << 20,
        }),
    ];
    config.order.idle_timeout = idle_timeout.parse().unwrap();
    config.epoch_ms = 20;
    config.validate().unwrap();
    let control = RunControl::default();
    let stop = Arc::clone(&control.stop);
    let features = work.path().join("out/features.jsonl");
    let run = std::thread::spawn(move || sluice::run(&config, &control).unwrap());
    let started = Instant::now();
    while started.elapsed() < wait {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    run.join().unwrap();
    lines(&features)
}

#[test]
fn an_idle_partition_stops_holding_the_watermark_back() {
    let released = features_with_idle_timeout("200ms", Duration::from_secs(2));
    // Partition 0 of the fixture has 114 distinct decodable events, 110 of them more than the
    // 10 s lateness before its last one: at most those can be released once the quiet
    // partition is idle. Which of them count as late depends on when (in wall time) the idle
    // timeout fires, so the lower bound is loose.
    assert!((90..=110).contains(&released.len()), "{} feature records were released", released.len());
    let held = features_with_idle_timeout("1h", Duration::from_secs(2));
    assert_eq!(held.len(), 0, "without the idle timeout the quiet partition holds everything back");
}
