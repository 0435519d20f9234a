//! Crash safety of the file-sink pipeline, by the harness of `common/`: the committed output
//! after kills and restarts equals an uninterrupted run's, byte for byte.
//!
//! - kill matrix: one SIGKILL at each failpoint of the commit protocol (state/src/protocol.rs);
//! - crash loop: 30 SIGKILLs at random moments of one run;
//! - corrupt state: a truncated table file, a missing one, flipped bytes in the WAL tail, a
//!   torn last commit, a directory of another layout: a clear error, or a recovery whose output
//!   is still exactly right.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{diff_counts, lines, run_to_end, run_to_failpoint, spawn, Report};
use rand::{Rng, SeedableRng};

const STREAMS: [&str; 4] = ["features", "dead_letters", "late", "conflicts"];
const PER_PARTITION: usize = 60_000;

/// Two partitions of payment events with exact duplicates, late events and malformed lines.
/// Returns the number of input lines.
fn write_input(dir: &Path) -> usize {
    let t0 = 1_790_000_000_000i64;
    let mut total = 0;
    for p in 0..2usize {
        let mut text = String::new();
        let mut last = String::new();
        for i in 0..PER_PARTITION {
            let mut time = t0 + i as i64 * 10 + p as i64 * 3;
            if i % 197 == 0 && i > 0 {
                time -= 60_000;
            }
            let line = if i % 331 == 0 && i > 0 {
                format!("{{\"id\":\"p{p}-{i}\",broken")
            } else {
                format!(r#"{{"id":"p{p}-{i}","customer":"c{}","amount":{:.1},"created_ms":{time}}}"#, (i * 7 + p) % 500, (i * 13 % 1000) as f64 / 10.0)
            };
            text.push_str(&line);
            text.push('\n');
            total += 1;
            if i % 50 == 49 {
                text.push_str(&last);
                text.push('\n');
                total += 1;
            }
            last = line;
        }
        std::fs::write(dir.join(format!("part{p}.jsonl")), text).unwrap();
    }
    total
}

/// The pipeline file in `dir` (paced by event time at `pace` if given).
fn write_pipeline(dir: &Path, pace: Option<f64>) -> PathBuf {
    let pace = pace.map_or(String::new(), |p| format!("pace_speedup = {p}\n"));
    let path = dir.join("pipeline.toml");
    std::fs::write(
        &path,
        format!(
            r#"state_dir = "state"
checkpoint_every = "300ms"
workers = 2
epoch_records = 2000
epoch_ms = 600000
[event]
id = "/id"
entity = "/customer"
time = "/created_ms"
time_format = "millis"
[event.numbers]
amount = "/amount"
[[sources]]
type = "file"
name = "payments"
paths = ["part0.jsonl", "part1.jsonl"]
{pace}[order]
lateness = "5s"
late = "side"
[[features]]
name = "n_1m"
op = "count"
window = "1m"
[[features]]
name = "sum_5m"
op = "sum"
field = "amount"
window = "5m"
slide = "1m"
[[features]]
name = "mean_all"
op = "mean"
field = "amount"
[[sinks]]
stream = "features"
path = "out/features.jsonl"
[[sinks]]
stream = "dead_letters"
path = "out/dead_letters.jsonl"
[[sinks]]
stream = "late"
path = "out/late.jsonl"
[[sinks]]
stream = "conflicts"
path = "out/conflicts.jsonl"
"#
        ),
    )
    .unwrap();
    path
}

/// A working directory with the input and the pipeline file.
fn workdir(root: &Path, name: &str, pace: Option<f64>) -> (PathBuf, PathBuf, usize) {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let events = write_input(&dir);
    let pipeline = write_pipeline(&dir, pace);
    (dir, pipeline, events)
}

/// A run's output against the reference's, counted before anything is asserted so that the
/// report prints the real figures (then [`Compared::assert_exact`] fails on them).
struct Compared {
    what: String,
    /// Lines in the output more often than in the reference's.
    duplicates: usize,
    /// Lines of the reference's missing from the output.
    lost: usize,
    /// Per stream that differs: what is wrong with it.
    problems: Vec<String>,
}

impl Compared {
    fn report(&self, scenario: &str, kills: usize, events: usize, recoveries: Vec<Duration>) {
        Report { scenario: scenario.into(), kills, events, duplicates: self.duplicates, lost: self.lost, recoveries }.print();
        self.assert_exact();
    }

    fn assert_exact(&self) {
        assert!(self.problems.is_empty(), "{}: {}", self.what, self.problems.join("; "));
    }
}

/// Compares every output stream of `dir` with the reference's, byte for byte.
fn compare(dir: &Path, reference: &Path, what: &str) -> Compared {
    let mut compared = Compared { what: what.to_string(), duplicates: 0, lost: 0, problems: Vec::new() };
    for stream in STREAMS {
        let actual = lines(&dir.join("out").join(format!("{stream}.jsonl")));
        let expected = lines(&reference.join("out").join(format!("{stream}.jsonl")));
        let (d, l) = diff_counts(&actual, &expected);
        compared.duplicates += d;
        compared.lost += l;
        if d > 0 || l > 0 {
            compared.problems.push(format!("{stream}: {d} duplicated and {l} lost lines"));
        } else if actual != expected {
            compared.problems.push(format!("{stream}: the same lines in another order"));
        }
    }
    compared
}

fn reference(root: &Path) -> (PathBuf, usize) {
    let (dir, pipeline, events) = workdir(root, "reference", None);
    assert_eq!(run_to_end(&dir, &pipeline), None, "a fresh run does not recover");
    let features = lines(&dir.join("out/features.jsonl")).len();
    // Hand-checked counts of the input: every 331st record of a partition is malformed (181
    // per partition); after record i with i % 50 == 49 record i - 1 is repeated (1,200 per
    // partition), which repeats malformed record 331k when 331k % 50 == 48, i.e. k % 50 == 8:
    // k = 8, 58, 108, 158. Every malformed line is a dead letter, repeats too.
    assert_eq!(lines(&dir.join("out/dead_letters.jsonl")).len(), 2 * (181 + 4));
    assert_eq!(events, 2 * (PER_PARTITION + 1_200));
    assert!(features > 100_000, "{features} feature records");
    (dir, events)
}

#[test]
fn a_kill_at_each_step_of_the_commit_protocol_leaves_the_output_exact() {
    let root = tempfile::tempdir().unwrap();
    let (reference, events) = reference(root.path());
    // Hits counted per process: `source.read` is reached per read, the others once per epoch.
    for spec in ["source.read@40", "sink.file.written@24", "sink.file.synced@24", "commit.batch@6", "commit.synced@6"] {
        let name = spec.split('@').next().unwrap();
        let (dir, pipeline, _) = workdir(root.path(), name, None);
        run_to_failpoint(&dir, &pipeline, spec);
        let recovery = run_to_end(&dir, &pipeline);
        compare(&dir, &reference, spec).report(&format!("file-kill@{name}"), 1, events, recovery.into_iter().collect());
    }
}

#[test]
fn thirty_kills_at_random_moments_leave_the_output_exact() {
    let root = tempfile::tempdir().unwrap();
    let (reference, events) = reference(root.path());
    // Paced so that the run outlasts 30 kills: 600 s of event time at 40x, about 15 s.
    let (dir, pipeline, _) = workdir(root.path(), "loop", Some(40.0));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
    let mut recoveries = Vec::new();
    let mut kills = 0;
    while kills < 30 {
        let run = spawn(&dir, &pipeline, &[]);
        std::thread::sleep(Duration::from_millis(rng.gen_range(150..900)));
        if let Some(t) = run.time_to("first commit after recovery") {
            recoveries.push(t);
        }
        let (running, text) = run.kill9();
        assert!(running, "the run ended before kill {}; make the input longer:\n{text}", kills + 1);
        kills += 1;
    }
    recoveries.extend(run_to_end(&dir, &pipeline));
    let restarts_committed = recoveries.len();
    compare(&dir, &reference, "30 random kills").report("file-crash-loop", kills, events, recoveries);
    assert!(restarts_committed >= 10, "only {restarts_committed} of 31 restarts committed before the next kill");
}

/// Two partitions of 30,000 events 10 ms apart, with repeats of earlier lines: after line i
/// with i % 200 == 199 (i ≥ 300) line i − 300 again (3 s of event time back: its key is still
/// within the 2 s TTL behind a watermark 5 s behind, a duplicate), after line i with
/// i % 200 == 99 (i ≥ 1000) line i − 1000 (10 s back: its key has expired, so it is a new
/// event, and late). Returns the number of input lines.
fn write_ttl_input(dir: &Path) -> usize {
    let t0 = 1_790_000_000_000i64;
    let mut total = 0;
    for p in 0..2usize {
        let line = |i: usize| {
            format!(
                r#"{{"id":"p{p}-{i}","customer":"c{}","amount":{:.2},"created_ms":{}}}"#,
                (i * 7 + p) % 300,
                (i * 37 % 10_000) as f64 / 100.0,
                t0 + i as i64 * 10 + p as i64 * 3
            )
        };
        let mut text = String::new();
        for i in 0..TTL_PER_PARTITION {
            text.push_str(&line(i));
            text.push('\n');
            total += 1;
            let back = match i % 200 {
                199 if i >= 300 => Some(300),
                99 if i >= 1_000 => Some(1_000),
                _ => None,
            };
            if let Some(back) = back {
                text.push_str(&line(i - back));
                text.push('\n');
                total += 1;
            }
        }
        std::fs::write(dir.join(format!("part{p}.jsonl")), text).unwrap();
    }
    total
}

const TTL_PER_PARTITION: usize = 30_000;

/// Dedup keys expiring while the process is killed and restarted: a 2 s TTL (the default is 7
/// days, so no other crash test forgets a key), epochs of 1 s of event time, paced so that 12
/// kills land across the run;
/// the output equals an uninterrupted run's, and that run's is right by hand: every first copy
/// a feature record, the repeats 10 s back late (their keys expired), those 3 s back dropped.
#[test]
fn dedup_keys_expire_across_kills_exactly() {
    let root = tempfile::tempdir().unwrap();
    let setup = |name: &str, pace: Option<f64>| {
        let dir = root.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let events = write_ttl_input(&dir);
        let pipeline = write_pipeline(&dir, pace);
        let text = std::fs::read_to_string(&pipeline).unwrap();
        // Epochs of 1 s of event time, so that a key 10 s back is from an earlier epoch (within
        // an epoch every repeat is a duplicate).
        let text = text.replace("epoch_records = 2000", "epoch_records = 100").replace("[order]", "[dedup]\nttl = \"2s\"\n[order]");
        std::fs::write(&pipeline, text).unwrap();
        (dir, pipeline, events)
    };
    let (reference, _, events) = {
        let (dir, pipeline, events) = setup("ttl-reference", None);
        assert_eq!(run_to_end(&dir, &pipeline), None, "a fresh run does not recover");
        (dir, pipeline, events)
    };
    // Per partition: 145 repeats 10 s back (i = 1099, 1299, …, 29899), 149 repeats 3 s back
    // (i = 399, …, 29999).
    assert_eq!(events, 2 * (TTL_PER_PARTITION + 145 + 149));
    assert_eq!(lines(&reference.join("out/features.jsonl")).len(), 2 * TTL_PER_PARTITION);
    let late = lines(&reference.join("out/late.jsonl"));
    assert_eq!(late.len(), 2 * 145);
    assert!(late.iter().all(|l| {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let i: usize = v["id"].as_str().unwrap().split('-').nth(1).unwrap().parse().unwrap();
        i % 200 == 99 && i + 1_000 < TTL_PER_PARTITION
    }));
    assert!(lines(&reference.join("out/conflicts.jsonl")).is_empty() && lines(&reference.join("out/dead_letters.jsonl")).is_empty());

    // 300 s of event time at 30x: about 10 s.
    let (dir, pipeline, _) = setup("ttl-kills", Some(30.0));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(36);
    let mut recoveries = Vec::new();
    for kill in 0..12 {
        let run = spawn(&dir, &pipeline, &[]);
        std::thread::sleep(Duration::from_millis(rng.gen_range(150..600)));
        if let Some(t) = run.time_to("first commit after recovery") {
            recoveries.push(t);
        }
        let (running, text) = run.kill9();
        assert!(running, "the run ended before kill {}; make the input longer:\n{text}", kill + 1);
    }
    recoveries.extend(run_to_end(&dir, &pipeline));
    compare(&dir, &reference, "12 kills with a 2 s dedup TTL").report("file-crash-loop-ttl-2s", 12, events, recoveries);
}

/// The table files and write-ahead logs of a state directory.
fn files_of(state: &Path, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(state).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == ext)).collect();
    files.sort();
    files
}

/// Flushes every table of a (closed) state directory to table files.
fn flush_all(state: &Path) {
    let names = rocksdb::DB::list_cf(&rocksdb::Options::default(), state).unwrap();
    let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), state, &names).unwrap();
    for name in &names {
        db.flush_cf(db.cf_handle(name).unwrap()).unwrap();
    }
}

/// A finished run in a directory of its own (positions are keyed by the input's path, so a
/// copy of another run's directory would start its sources over), with at least one complete
/// checkpoint: it checkpoints after every commit (one at a time), since a run that ends within
/// `checkpoint_every` of its start takes none (it did on an idle machine).
fn finished(root: &Path, name: &str) -> (PathBuf, PathBuf, usize) {
    let (dir, pipeline, events) = workdir(root, name, None);
    checkpoint_every_commit(&pipeline);
    run_to_end(&dir, &pipeline);
    let list = sluice_cli(&dir, &["checkpoint", "list", "pipeline.toml"]);
    assert!(list.contains(": complete"), "a finished run without a complete checkpoint:\n{list}");
    (dir, pipeline, events)
}

/// Makes the pipeline checkpoint after every commit (a run shorter than `checkpoint_every`
/// takes no checkpoint at all).
fn checkpoint_every_commit(pipeline: &Path) {
    let text = std::fs::read_to_string(pipeline).unwrap();
    std::fs::write(pipeline, text.replace("checkpoint_every = \"300ms\"", "checkpoint_every = \"1ms\"")).unwrap();
}

/// Runs `sluice ARGS` in `dir`; panics unless it succeeds. Returns stdout.
fn sluice_cli(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice")).current_dir(dir).args(args).output().unwrap();
    assert!(out.status.success(), "sluice {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `sluice checkpoint restore`, then a run to the end: the output must equal the reference's.
fn restore_and_finish(dir: &Path, reference: &Path, what: &str) -> Compared {
    let restored = sluice_cli(dir, &["checkpoint", "restore", "pipeline.toml"]);
    assert!(restored.contains("restored the checkpoint of epoch"), "{restored}");
    run_to_end(dir, &dir.join("pipeline.toml"));
    compare(dir, reference, what)
}

/// Starts a run that must refuse the state: a failure (not a crash) whose message contains
/// `expected`; the committed output is left as it was.
fn refused(dir: &Path, pipeline: &Path, expected: &str) {
    let before: Vec<Vec<String>> = STREAMS.iter().map(|s| lines(&dir.join("out").join(format!("{s}.jsonl")))).collect();
    let (status, text) = spawn(dir, pipeline, &[]).wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "expected a refusal, got {status}:\n{text}");
    assert!(text.contains(expected), "expected `{expected}` in:\n{text}");
    let after: Vec<Vec<String>> = STREAMS.iter().map(|s| lines(&dir.join("out").join(format!("{s}.jsonl")))).collect();
    assert!(before == after, "a refused start changed the output");
}

#[test]
fn state_that_cannot_be_trusted_is_refused_or_recovered_exactly() {
    let root = tempfile::tempdir().unwrap();
    let (reference, events) = reference(root.path());
    let report = |scenario: &str, kills: usize, compared: Compared| compared.report(scenario, kills, events, Vec::new());

    // A table file cut in half: refused at start.
    let (dir, _, _) = finished(root.path(), "sst");
    flush_all(&dir.join("state"));
    let largest = files_of(&dir.join("state"), "sst").into_iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).expect("table files after a flush");
    let len = std::fs::metadata(&largest).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&largest).unwrap().set_len(len / 2).unwrap();
    refused(&dir, &dir.join("pipeline.toml"), "is corrupt");
    // … and restored from its newest checkpoint, the rest is produced again, exactly.
    let dl = restore_and_finish(&dir, &reference, "truncated table file");
    report("corrupt-truncated-sst:refused+restored", 0, dl);

    // A table file missing: refused, restored.
    let (dir, _, _) = finished(root.path(), "sst-missing");
    flush_all(&dir.join("state"));
    std::fs::remove_file(&files_of(&dir.join("state"), "sst")[0]).unwrap();
    refused(&dir, &dir.join("pipeline.toml"), "is corrupt");
    let dl = restore_and_finish(&dir, &reference, "missing table file");
    report("corrupt-missing-sst:refused+restored", 0, dl);

    // A kill while a checkpoint is being written: listed as half-written, never restored;
    // the run goes on from the live state, and a restore takes the newest complete one.
    let (dir, pipeline, _) = workdir(root.path(), "half-checkpoint", None);
    // A run that ended within 300 ms of its start reached no checkpoint, so no failpoint (CI).
    checkpoint_every_commit(&pipeline);
    run_to_failpoint(&dir, &pipeline, "checkpoint.files@1");
    let list = sluice_cli(&dir, &["checkpoint", "list", "pipeline.toml"]);
    assert!(list.contains("HALF-WRITTEN") && !list.contains(": complete"), "{list}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice")).current_dir(&dir).args(["checkpoint", "restore", "pipeline.toml"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no complete checkpoint"), "a half-written checkpoint restored: {err}");
    let recovery = run_to_end(&dir, &pipeline);
    compare(&dir, &reference, "after a half-written checkpoint").report("half-written-checkpoint:recovered", 1, events, recovery.into_iter().collect());
    let list = sluice_cli(&dir, &["checkpoint", "list", "pipeline.toml"]);
    assert!(!list.contains("HALF-WRITTEN"), "the next start removes the half-written one:\n{list}");

    // Bytes flipped in the last commit's WAL record, after a kill: RocksDB's point-in-time
    // recovery stops before the damaged record, the run resumes at an earlier commit, cuts the
    // files back to that commit's lengths and produces the rest again.
    for (scenario, damage) in [("corrupt-wal-tail:recovered", "flip"), ("torn-last-commit:recovered", "truncate")] {
        let (dir, pipeline, _) = workdir(root.path(), scenario.split(':').next().unwrap(), None);
        run_to_failpoint(&dir, &pipeline, "commit.synced@8");
        let wal = files_of(&dir.join("state"), "log").pop().expect("a write-ahead log");
        let mut bytes = std::fs::read(&wal).unwrap();
        assert!(bytes.len() > 64, "the log holds the last commits");
        let n = bytes.len();
        if damage == "flip" {
            for b in &mut bytes[n - 40..n - 24] {
                *b ^= 0x5a;
            }
        } else {
            bytes.truncate(n - 20);
        }
        std::fs::write(&wal, &bytes).unwrap();
        let recovery = run_to_end(&dir, &pipeline);
        assert!(recovery.is_some(), "{scenario}: resumed from a commit");
        compare(&dir, &reference, scenario).report(scenario, 1, events, recovery.into_iter().collect());
    }

    // A directory written by another layout: refused, with what to do.
    let (dir, _, _) = finished(root.path(), "layout");
    {
        let state = dir.join("state");
        let names = rocksdb::DB::list_cf(&rocksdb::Options::default(), &state).unwrap();
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), &state, &names).unwrap();
        db.put_cf(db.cf_handle("sluice_meta").unwrap(), b"layout", b"sluice-state/0").unwrap();
    }
    refused(&dir, &dir.join("pipeline.toml"), "written by another version of sluice; delete it to start over");
    Report { scenario: "incompatible-layout:refused".into(), kills: 0, events, duplicates: 0, lost: 0, recoveries: Vec::new() }.print();
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, mib: u64) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = std::process::Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"]).arg(at).output().unwrap();
        assert!(out.status.success(), "cannot mount a tmpfs (the disk-full test needs root): {}", String::from_utf8_lossy(&out.stderr));
        Tmpfs(at.to_path_buf())
    }

    fn free(&self) -> u64 {
        let out = std::process::Command::new("df").args(["-B1", "--output=avail"]).arg(&self.0).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().nth(1).unwrap().trim().parse().unwrap()
    }

    /// Fills the file system up to `leave` bytes free.
    fn fill(&self, leave: u64) -> PathBuf {
        let path = self.0.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 1 << 20];
        while self.free() > leave + (1 << 20) {
            std::io::Write::write_all(&mut file, &chunk).unwrap();
            file.sync_all().unwrap();
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn wait_for(run: &common::Run, needle: &str, limit: Duration) -> Duration {
    let started = std::time::Instant::now();
    loop {
        if let Some(t) = run.time_to(needle) {
            return t;
        }
        assert!(started.elapsed() < limit, "no `{needle}` within {limit:?}:\n{}", run.text());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_full_state_disk_stops_commits_answers_503_and_resumes_once_freed() {
    let root = tempfile::tempdir().unwrap();
    let (reference, events) = reference(root.path());
    let disk = Tmpfs::mount(&root.path().join("disk"), 64);

    // The file pipeline, paced, with its state on the small disk that fills up mid-run.
    let (dir, pipeline, _) = workdir(root.path(), "disk-full", Some(40.0));
    let text = std::fs::read_to_string(&pipeline).unwrap();
    let text = text.replace("state_dir = \"state\"", &format!("state_dir = \"{}\"\nstate_min_free_mb = 16", disk.0.join("state").display()));
    std::fs::write(&pipeline, text).unwrap();
    let run = spawn(&dir, &pipeline, &[]);
    std::thread::sleep(Duration::from_secs(3));
    let filler = disk.fill(8 << 20);
    let stalled_at = wait_for(&run, "DISK FULL", Duration::from_secs(10));
    // Stalled: the output stops growing. The sinks run ahead of the commit by the batches the
    // commit thread queues (2, of about 0.5 s each here), then wait too.
    let features = dir.join("out/features.jsonl");
    let stalled = std::time::Instant::now();
    loop {
        let size = std::fs::metadata(&features).unwrap().len();
        std::thread::sleep(Duration::from_secs(2));
        if std::fs::metadata(&features).unwrap().len() == size {
            break;
        }
        assert!(stalled.elapsed() < Duration::from_secs(20), "output kept growing while commits were stopped");
    }
    let mut run = run;
    assert!(run.child_running(), "the pipeline gave up on a full disk:\n{}", run.text());
    assert!(stalled_at < Duration::from_secs(20));
    std::fs::remove_file(&filler).unwrap();
    let freed_at = run.spawned.elapsed();
    let resumed_at = wait_for(&run, "disk space is back; commits resume", Duration::from_secs(10));
    let (status, text) = run.wait(Duration::from_secs(120));
    assert!(status.success(), "{text}");
    compare(&dir, &reference, "disk full").report("disk-full", 0, events, vec![resumed_at.saturating_sub(freed_at)]);
    std::fs::remove_dir_all(disk.0.join("state")).unwrap();

    // A webhook source on the full disk: 503 with Retry-After and nothing stored, until the
    // space is back; every webhook acknowledged is in the output once.
    let dir = root.path().join("disk-full-webhook");
    std::fs::create_dir_all(&dir).unwrap();
    let (pipeline, addr) = common::webhook_pipeline(&dir, &format!("state_dir = \"{}\"\nstate_min_free_mb = 16", disk.0.join("webhook-state").display()));
    let t0 = 1_790_000_000_000i64;
    let body = |i: usize| format!(r#"{{"id":"evt_{i}","customer":"c{}","created_ms":{}}}"#, i % 3, t0 + i as i64 * 10);
    let run = spawn(&dir, &pipeline, &[]);
    let up = std::time::Instant::now();
    while common::post(addr, "evt_0", &body(0)) != Some(200) {
        assert!(up.elapsed() < Duration::from_secs(20), "the webhook server did not come up:\n{}", run.text());
        std::thread::sleep(Duration::from_millis(50));
    }
    for i in 1..10 {
        assert_eq!(common::post(addr, &format!("evt_{i}"), &body(i)), Some(200));
    }
    let filler = disk.fill(8 << 20);
    wait_for(&run, "DISK FULL", Duration::from_secs(10));
    assert_eq!(common::post(addr, "evt_10", &body(10)), Some(503), "a webhook while the disk is full");
    std::fs::remove_file(&filler).unwrap();
    let retried = std::time::Instant::now();
    while common::post(addr, "evt_10", &body(10)) != Some(200) {
        assert!(retried.elapsed() < Duration::from_secs(10), "webhooks still refused after the space came back:\n{}", run.text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let far = format!(r#"{{"id":"evt_far","customer":"z","created_ms":{}}}"#, t0 + 3_600_000);
    assert_eq!(common::post(addr, "evt_far", &far), Some(200));
    let out = dir.join("features.jsonl");
    let waited = std::time::Instant::now();
    while common::lines_so_far(&out).len() < 11 {
        assert!(waited.elapsed() < Duration::from_secs(30), "only {} feature records:\n{}", common::lines_so_far(&out).len(), run.text());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    std::process::Command::new("kill").args(["-INT", &run.child.id().to_string()]).status().unwrap();
    let (status, text) = run.wait(Duration::from_secs(30));
    assert!(status.success(), "{text}");
    let mut ids: Vec<String> = lines(&out).iter().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_str().unwrap().to_string()).collect();
    ids.sort();
    let mut want: Vec<String> = (0..=10).map(|i| format!("evt_{i}")).collect();
    want.sort();
    let (duplicates, lost) = diff_counts(&ids, &want);
    Report { scenario: "disk-full-webhooks-503".into(), kills: 0, events: want.len(), duplicates, lost, recoveries: Vec::new() }.print();
    assert_eq!(ids, want);
}
