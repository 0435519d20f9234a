//! Hostile input end to end (issue 26): records that once lost data or poisoned the pipeline.

use sluice_tests::{golden_pipeline, lines, run};

/// One event at year 9999 in each partition used to move the watermark to the end of time: every
/// later record went to `late`. Now each is a dead letter with its reason, and every other record
/// is in `features`, none late.
#[test]
fn an_absurd_event_time_is_a_dead_letter_and_poisons_nothing() {
    let work = tempfile::tempdir().unwrap();
    let mut config = golden_pipeline(work.path(), 1);
    let Some(files) = config.sources[0].get_mut::<sluice_connectors::file::FileSourceConfig>() else { panic!("the golden source is a file source") };
    let mut paths = Vec::new();
    for p in 0..2 {
        // 20 records a second apart (epochs of 8 records per partition), the 6th at year 9999.
        let text: String = (0..20)
            .map(|i| {
                let created = if i == 5 { "\"9999-12-31T00:00:00Z\"".to_string() } else { (1_767_225_600_000_i64 + i * 1000).to_string() };
                format!("{{\"id\":\"p{p}e{i}\",\"type\":\"charge\",\"customer\":\"c{p}\",\"created\":{created},\"amount\":1.0,\"currency\":\"EUR\"}}\n")
            })
            .collect();
        let path = work.path().join(format!("part{p}.jsonl"));
        std::fs::write(&path, text).unwrap();
        paths.push(path);
    }
    files.paths = paths;
    let summary = run(&config);
    assert_eq!(summary.records_in, 40);
    let out = work.path().join("out");
    let dead = lines(&out.join("dead_letters.jsonl"));
    assert_eq!(dead.len(), 2, "{dead:?}");
    for line in &dead {
        assert!(line.contains(r#""reason":"event time out of range: 9999-12-31T00:00:00Z is not before max_time = 2100-01-01T00:00:00Z""#), "{line}");
    }
    assert_eq!(lines(&out.join("late.jsonl")), Vec::<String>::new());
    let features = lines(&out.join("features.jsonl"));
    assert_eq!(features.len(), 38);
    // The last of customer c1's 19 events counts all of them within the minute.
    assert!(
        features.iter().any(|l| l.starts_with(r#"{"entity":"c1","id":"p1e19","kind":"charge","time_ms":1767225619000,"features":{"n_1m":19"#)),
        "{features:?}"
    );
}

/// A feature changed between two runs on one state directory used to be read with the old
/// aggregates under the new name (a max reported as a min). Now the second run is refused with
/// both layouts and what to do; the unchanged pipeline still resumes.
#[test]
fn changed_features_on_the_same_state_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let config = golden_pipeline(work.path(), 1);
    run(&config);
    assert_eq!(run(&config).records_in, 0, "the unchanged pipeline resumes at the end of its files");
    let mut changed = config.clone();
    changed.features[1].op = sluice_operators::FeatureOp::Max;
    let err = sluice::run(&changed, &sluice::RunControl::default()).unwrap_err().to_string();
    assert!(err.contains("was written with other features (n_1m = count, window 1m; sum_5m = sum of amount, window 5m slide 1m;"), "{err}");
    assert!(err.contains("this pipeline has n_1m = count, window 1m; sum_5m = max of amount, window 5m slide 1m;"), "{err}");
    assert!(err.contains("Run it with a new state_dir"), "{err}");
}

/// Record `i` of partition `p`: a charge of customer `c<p>`, `i` seconds into 2026.
fn record(p: usize, i: i64) -> String {
    format!(
        "{{\"id\":\"p{p}e{i}\",\"type\":\"charge\",\"customer\":\"c{p}\",\"created\":{},\"amount\":1.0,\"currency\":\"EUR\"}}\n",
        1_767_225_600_000_i64 + i * 1000
    )
}

/// A file source used to resume by byte offset in whatever file was there: a truncated file gave
/// "0 records" and success, a rewritten one was read from the middle of a line. Now a run over a
/// file that is not the one read before is refused, saying what differs and what to do; with
/// `on_change = "restart"` the file is read from its start; a file that only grew is resumed.
#[test]
fn a_truncated_or_replaced_input_file_is_refused_or_read_again() {
    let work = tempfile::tempdir().unwrap();
    let mut config = golden_pipeline(work.path(), 1);
    let Some(files) = config.sources[0].get_mut::<sluice_connectors::file::FileSourceConfig>() else { panic!("the golden source is a file source") };
    let write = |p: usize, range: std::ops::Range<i64>| {
        let path = work.path().join(format!("part{p}.jsonl"));
        std::fs::write(&path, range.map(|i| record(p, i)).collect::<String>()).unwrap();
        path
    };
    files.paths = vec![write(0, 0..20), write(1, 0..20)];
    let read_before = std::fs::metadata(&files.paths[1]).unwrap().len();
    assert_eq!(run(&config).records_in, 40);

    // Appended to: only the new records are read.
    let mut grown = std::fs::OpenOptions::new().append(true).open(work.path().join("part0.jsonl")).unwrap();
    std::io::Write::write_all(&mut grown, (20..25).map(|i| record(0, i)).collect::<String>().as_bytes()).unwrap();
    assert_eq!(run(&config).records_in, 5);

    // Truncated (another, shorter file): refused, nothing read.
    let part1 = write(1, 0..3);
    let err = sluice::run(&config, &sluice::RunControl::default()).unwrap_err().to_string();
    let size = std::fs::metadata(&part1).unwrap().len();
    assert!(
        err.contains(&format!(
            "{} is not the file read before: it has {size} bytes, fewer than the {read_before} read before: truncated or replaced",
            part1.display()
        )),
        "{err}"
    );
    assert!(err.contains("set on_change = \"restart\" on the source to read this file from its start, or run with a new state_dir"), "{err}");

    // Rewritten at a greater length: refused too (its first bytes differ).
    let part1 = write(1, 100..140);
    let err = sluice::run(&config, &sluice::RunControl::default()).unwrap_err().to_string();
    assert!(
        err.contains(&format!("{} is not the file read before: its first {read_before} bytes differ from those read before: replaced", part1.display())),
        "{err}"
    );

    // Told to restart: the new file is read whole, from its start.
    let Some(files) = config.sources[0].get_mut::<sluice_connectors::file::FileSourceConfig>() else { unreachable!() };
    files.on_change = sluice_connectors::file::OnChange::Restart;
    assert_eq!(run(&config).records_in, 40);
    // ... and is the file read before from then on.
    assert_eq!(run(&config).records_in, 0);
}

/// A run with `at_eof = "finish"` ends by moving the watermark to the end of time; a later run
/// over the same files, appended to, used to send every appended record to `late`. Now the
/// watermark resumes just past the latest event time read: newer appended records are features,
/// older ones late.
#[test]
fn records_appended_after_a_finished_run_are_not_all_late() {
    let work = tempfile::tempdir().unwrap();
    let mut config = golden_pipeline(work.path(), 1);
    let Some(files) = config.sources[0].get_mut::<sluice_connectors::file::FileSourceConfig>() else { panic!("the golden source is a file source") };
    let paths: Vec<std::path::PathBuf> = (0..2)
        .map(|p| {
            let path = work.path().join(format!("part{p}.jsonl"));
            std::fs::write(&path, (0..20).map(|i| record(p, i)).collect::<String>()).unwrap();
            path
        })
        .collect();
    files.paths = paths.clone();
    assert_eq!(run(&config).records_in, 40);
    let out = work.path().join("out");
    assert_eq!((lines(&out.join("features.jsonl")).len(), lines(&out.join("late.jsonl")).len()), (40, 0));

    // Appended: 3 records after the latest time read (19 s), one at 15 s (older than it), and a
    // copy of one read before (a duplicate within the TTL, dropped: the dedup index outlived
    // the end of the first run).
    let mut grown = std::fs::OpenOptions::new().append(true).open(&paths[0]).unwrap();
    let appended: String = [25, 26, 27].iter().map(|i| record(0, *i)).collect::<String>() + &record(0, 15).replace("p0e15", "p0e15b") + &record(0, 18);
    std::io::Write::write_all(&mut grown, appended.as_bytes()).unwrap();
    let summary = run(&config);
    assert_eq!((summary.records_in, summary.duplicates), (5, 1));
    let features = lines(&out.join("features.jsonl"));
    assert_eq!(features.len(), 43);
    assert!(features[40..].iter().zip([25, 26, 27]).all(|(l, i)| l.contains(&format!("\"id\":\"p0e{i}\""))), "{:?}", &features[40..]);
    let late = lines(&out.join("late.jsonl"));
    assert_eq!(late.len(), 1);
    assert!(late[0].contains("\"id\":\"p0e15b\"") && late[0].contains("\"watermark_ms\":1767225619001"), "{}", late[0]);
}

/// An epoch used to be bounded by records only: 10,000 records of a few MB each were one epoch
/// held in memory. Now `epoch_bytes` ends an epoch too, at the record that reaches it.
#[test]
fn epochs_are_bounded_by_bytes_as_well_as_records() {
    let epochs = |epoch_bytes: usize| {
        let work = tempfile::tempdir().unwrap();
        let mut config = golden_pipeline(work.path(), 1);
        let Some(files) = config.sources[0].get_mut::<sluice_connectors::file::FileSourceConfig>() else { panic!("the golden source is a file source") };
        // 12 records of 100 bytes (and a newline) in each partition.
        files.paths = (0..2)
            .map(|p| {
                let path = work.path().join(format!("part{p}.jsonl"));
                let text: String = (0..12)
                    .map(|i| {
                        format!(
                            "{{\"id\":\"p{p}e{i:02}\",\"type\":\"charge\",\"customer\":\"c{p}\",\"created\":{},\"amount\":1.0,\"currency\":\"EUR\"}}\n",
                            1_767_225_600_000_i64 + i * 1000
                        )
                    })
                    .collect();
                assert_eq!(text.len(), 12 * 101);
                std::fs::write(&path, text).unwrap();
                path
            })
            .collect();
        config.epoch_bytes = epoch_bytes;
        let summary = run(&config);
        assert_eq!(lines(&work.path().join("out/features.jsonl")).len(), 24, "the same output whatever the epochs");
        summary.resume_epoch
    };
    // epoch_records = 8: epochs of 8 and 4 records, then the end.
    assert_eq!(epochs(64 << 20), 2);
    // 250 bytes: epochs of 3 records (the third reaches 300 bytes), 4 of them, and one that
    // finds the end of the files (a read stopped by the bound does not look past it).
    assert_eq!(epochs(250), 5);
    // 1 byte: one record per epoch, then the end.
    assert_eq!(epochs(1), 13);
}
