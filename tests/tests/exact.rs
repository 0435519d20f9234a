//! The exact-output fixture (`tests/fixtures/exact`, made by its `make_exact.py`): every output
//! stream equal to the expected file byte for byte, under each late mode, for 1 and 4 workers.
//!
//! What it holds still, beyond the golden fixture: the last bits of every feature value (cent
//! amounts, so summation order shows), all 18 op × window combinations, the feature cache
//! dropped and entities read back from RocksDB (64 cached against 1,004 entities), equal event
//! times put in id order, repeats exactly at and just past the dedup TTL's cutoff, and the
//! `drop` and `flag` late modes (flagged events updating the aggregates, `"late":true`).

use sluice_operators::LatePolicy;
use sluice_tests::{assert_same_file, fixture_dir, fixture_pipeline, run};

/// The expected folder of each stream under `late`: the streams a mode does not change are
/// only in `expected/side/`.
fn expected_folder(late: LatePolicy, stream: &str) -> &'static str {
    match (late, stream) {
        (LatePolicy::Drop, "late") => "drop",
        (LatePolicy::Flag, "late" | "features") => "flag",
        _ => "side",
    }
}

fn check(late: LatePolicy, workers: usize) {
    let work = tempfile::tempdir().unwrap();
    let mut config = fixture_pipeline("exact", work.path(), workers);
    config.order.late = late;
    let summary = run(&config);
    for stream in ["features", "dead_letters", "late", "conflicts"] {
        let expected = fixture_dir("exact").join("expected").join(expected_folder(late, stream)).join(format!("{stream}.jsonl"));
        let actual = work.path().join("out").join(format!("{stream}.jsonl"));
        assert_same_file(&actual, &expected, &format!("{stream}, late = {late:?}, {workers} workers"));
    }
    // Every record read is accounted for once: 4,260 non-blank records = 3 dead letters +
    // 3,876 released (+ 217 late) + duplicates + 49 conflicts.
    assert_eq!(
        summary.records_in,
        summary.dead_letters + summary.features_out + summary.duplicates + summary.conflicts + if late == LatePolicy::Flag { 0 } else { summary.late }
    );
    assert_eq!((summary.dead_letters, summary.conflicts, summary.late), (3, 49, 217));
    assert_eq!(summary.features_out, if late == LatePolicy::Flag { 3_876 + 217 } else { 3_876 });
}

#[test]
fn exact_outputs_late_side_one_worker() {
    check(LatePolicy::Side, 1);
}

#[test]
fn exact_outputs_late_side_four_workers() {
    check(LatePolicy::Side, 4);
}

#[test]
fn exact_outputs_late_drop_one_worker() {
    check(LatePolicy::Drop, 1);
}

#[test]
fn exact_outputs_late_drop_four_workers() {
    check(LatePolicy::Drop, 4);
}

#[test]
fn exact_outputs_late_flag_one_worker() {
    check(LatePolicy::Flag, 1);
}

#[test]
fn exact_outputs_late_flag_four_workers() {
    check(LatePolicy::Flag, 4);
}
