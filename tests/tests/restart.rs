//! Stop and restart: the first part of each file, stop, then the rest with the same state
//! directory, gives exactly the outputs of one run over the whole files.

use std::path::{Path, PathBuf};

use sluice::{PipelineConfig, RunSummary};
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

/// The golden pipeline over the first 48 records of each file (6 epochs of 8: both partitions
/// stop on the same epoch boundary), run to the end of them, and the (full, copy) file pairs.
fn first_part(work: &Path, workers: usize) -> (PipelineConfig, Vec<(PathBuf, PathBuf)>, RunSummary) {
    let mut config = golden_pipeline(work, workers);
    let Some(files) = config.sources[0].get_mut::<sluice_connectors::file::FileSourceConfig>() else { panic!("the golden source is a file source") };
    let mut copies = Vec::new();
    for (i, path) in files.files().iter().enumerate() {
        let copy = work.join(format!("part{i}.jsonl"));
        head(path, &copy, 48);
        copies.push((path.clone(), copy));
    }
    files.paths = copies.iter().map(|(_, c)| c.clone()).collect();
    files.at_eof = AtEof::Stop;
    let first = run(&config);
    assert_eq!(first.records_in, 96);
    assert!(first.resume_epoch > 0);
    (config, copies, first)
}

/// Grows the files to their full length and finishes them: the outputs must be those of one
/// run over the whole files.
fn finish_and_compare(work: &Path, mut config: PipelineConfig, copies: &[(PathBuf, PathBuf)], workers: usize) -> RunSummary {
    for (full, copy) in copies {
        std::fs::copy(full, copy).unwrap();
    }
    let Some(files) = config.sources[0].get_mut::<sluice_connectors::file::FileSourceConfig>() else { unreachable!() };
    files.at_eof = AtEof::Finish;
    config.workers = workers;
    let second = run(&config);
    for stream in ["features", "dead_letters", "late", "conflicts"] {
        let actual = lines(&work.join("out").join(format!("{stream}.jsonl")));
        let expected = lines(&golden_dir().join("expected").join(format!("{stream}.jsonl")));
        assert_same_lines(&actual, &expected, &format!("{stream} after a restart"));
    }
    second
}

fn stop_and_resume(workers_first: usize, workers_second: usize) {
    let work = tempfile::tempdir().unwrap();
    let (config, copies, first) = first_part(work.path(), workers_first);
    let second = finish_and_compare(work.path(), config, &copies, workers_second);
    assert_eq!(second.resumed_at_epoch, first.resume_epoch);
    assert_eq!(second.records_in, 226 - 96, "the second run reads only what the first did not");
    // The events the first run left buffered were stored as their origins and read again.
    assert!(second.records_replayed > 0 && second.records_replayed <= 96, "{}", second.records_replayed);
}

#[test]
fn stop_and_resume_equals_one_run() {
    stop_and_resume(1, 1);
}

#[test]
fn stop_and_resume_with_another_worker_count_equals_one_run() {
    stop_and_resume(2, 3);
}

/// Buffered events read again by a source that then has nothing new (a tailed file that did not
/// grow): the first epoch still ends (on wall time, once the reading again is done), commits, and
/// a stop stops the run.
#[test]
fn a_restart_with_nothing_new_to_read_commits_and_stops() {
    let work = tempfile::tempdir().unwrap();
    let (mut config, copies, first) = first_part(work.path(), 1);
    let Some(files) = config.sources[0].get_mut::<sluice_connectors::file::FileSourceConfig>() else { unreachable!() };
    files.at_eof = AtEof::Follow;
    config.epoch_ms = 20;
    let control = sluice::RunControl::default();
    let stop = std::sync::Arc::clone(&control.stop);
    let (done, finished) = std::sync::mpsc::channel();
    let tailed = config.clone();
    std::thread::spawn(move || done.send(sluice::run(&tailed, &control).unwrap()).unwrap());
    std::thread::sleep(std::time::Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let tail = finished.recv_timeout(std::time::Duration::from_secs(20)).expect("the run stops once asked, after reading its buffer again");
    assert_eq!(tail.resumed_at_epoch, first.resume_epoch);
    assert_eq!(tail.records_in, 0);
    assert!(tail.records_replayed > 0);
    assert!(tail.resume_epoch > first.resume_epoch, "an epoch was committed");
    // The buffer stored again (origins of the events read again) gives the same outputs.
    let last = finish_and_compare(work.path(), config, &copies, 1);
    assert_eq!(last.records_in, 226 - 96);
}
