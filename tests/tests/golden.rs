//! The golden fixture through the whole pipeline: outputs equal the expected files exactly,
//! for 1 and 4 workers.

use sluice_tests::{assert_same_lines, golden_dir, golden_pipeline, lines, run};

fn check(workers: usize) {
    let work = tempfile::tempdir().unwrap();
    let config = golden_pipeline(work.path(), workers);
    let summary = run(&config);
    for stream in ["features", "dead_letters", "late", "conflicts"] {
        let actual = lines(&work.path().join("out").join(format!("{stream}.jsonl")));
        let expected = lines(&golden_dir().join("expected").join(format!("{stream}.jsonl")));
        assert_same_lines(&actual, &expected, &format!("{stream} with {workers} workers"));
    }
    // 226 non-blank records = 206 feature records + 12 malformed + 3 exact duplicates
    // + 2 conflicts + 3 late.
    assert_eq!(summary.records_in, 226);
    assert_eq!((summary.dead_letters, summary.duplicates, summary.conflicts, summary.late), (12, 3, 2, 3));
    assert_eq!(summary.features_out, 206);
}

#[test]
fn golden_outputs_with_one_worker() {
    check(1);
}

#[test]
fn golden_outputs_with_four_workers() {
    check(4);
}
