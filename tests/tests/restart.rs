//! Stop and restart: the first part of each file, stop, then the rest with the same state
//! directory, gives exactly the outputs of one run over the whole files.

use std::path::Path;

use sluice_connectors::file::AtEof;
use sluice_tests::{assert_same_lines, golden_dir, golden_pipeline, lines, run};

/// Copies the first `records` non-blank lines of `from` to `to`.
fn head(from: &Path, to: &Path, records: usize) {
    let text = std::fs::read(from).unwrap();
    let mut out = Vec::new();
    let mut count = 0;
    for line in text.split_inclusive(|b| *b == b'\n') {
        if count == records {
            break;
        }
        if !line.iter().all(u8::is_ascii_whitespace) {
            count += 1;
        }
        out.extend_from_slice(line);
    }
    std::fs::write(to, out).unwrap();
}

fn stop_and_resume(workers_first: usize, workers_second: usize) {
    let work = tempfile::tempdir().unwrap();
    let mut config = golden_pipeline(work.path(), workers_first);
    let Some(files) = config.sources[0].get_mut::<sluice_connectors::file::FileSourceConfig>() else { panic!("the golden source is a file source") };
    let mut copies = Vec::new();
    for (i, path) in files.files().iter().enumerate() {
        let copy = work.path().join(format!("part{i}.jsonl"));
        // 6 epochs of 8 records: both partitions stop on the same epoch boundary.
        head(path, &copy, 48);
        copies.push((path.clone(), copy));
    }
    files.paths = copies.iter().map(|(_, c)| c.clone()).collect();
    files.at_eof = AtEof::Stop;
    let first = run(&config);
    assert_eq!(first.records_in, 96);
    assert!(first.resume_epoch > 0);

    // The files grow to their full length; the second run finishes them.
    for (full, copy) in &copies {
        std::fs::copy(full, copy).unwrap();
    }
    let Some(files) = config.sources[0].get_mut::<sluice_connectors::file::FileSourceConfig>() else { unreachable!() };
    files.at_eof = AtEof::Finish;
    config.workers = workers_second;
    let second = run(&config);
    assert_eq!(second.resumed_at_epoch, first.resume_epoch);
    assert_eq!(second.records_in, 226 - 96, "the second run reads only what the first did not");
    // The events the first run left buffered were stored as their origins and read again.
    assert!(second.records_replayed > 0 && second.records_replayed <= 96, "{}", second.records_replayed);
    for stream in ["features", "dead_letters", "late", "conflicts"] {
        let actual = lines(&work.path().join("out").join(format!("{stream}.jsonl")));
        let expected = lines(&golden_dir().join("expected").join(format!("{stream}.jsonl")));
        assert_same_lines(&actual, &expected, &format!("{stream} after a restart"));
    }
}

#[test]
fn stop_and_resume_equals_one_run() {
    stop_and_resume(1, 1);
}

#[test]
fn stop_and_resume_with_another_worker_count_equals_one_run() {
    stop_and_resume(2, 3);
}
