//! Crash recovery and the cost of the synced commit.
//!
//! - `recovery`: the standard pipeline (as a child process of this binary) fills its state
//!   with about 1M entities, is killed with SIGKILL, and restarted, several times. For each
//!   restart: how long opening the state took, and the time from the restart's spawn to its
//!   first new committed epoch (the log line `first commit after recovery`).
//!   Then `small_epochs`: reopening a state written by thousands of small commits.
//! - `commit-cost`: the standard pipeline with epochs closed by time (`epoch_ms`), with the
//!   state's WAL synced at each commit and without: events/s, commits and commit time.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The recovery benchmark's pipeline: the standard one, 1 worker, epochs of 4 × 5,000
/// records (the first commit after a restart needs one epoch processed).
fn recovery_pipeline(work: &Path, entities: u64) -> sluice::PipelineConfig {
    let mut config = crate::standard_pipeline(work, 1, entities * 20, entities, "5s", 5_000, crate::Models::default());
    config.state_min_free_mb = 0;
    config
}

/// The child: runs the recovery pipeline in `work`, logging to stderr.
pub fn child(work: &Path, entities: u64) -> Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new("info")).with_ansi(false).with_writer(std::io::stderr).init();
    sluice::run(&recovery_pipeline(work, entities), &sluice::RunControl::default())?;
    Ok(())
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => dir_bytes(&e.path()),
                _ => e.metadata().map_or(0, |m| m.len()),
            })
            .sum()
    })
}

struct Child {
    process: std::process::Child,
    spawned: Instant,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
}

fn spawn(work: &Path, entities: u64) -> Result<Child> {
    let spawned = Instant::now();
    let mut process =
        Command::new(std::env::current_exe()?).arg("child").arg(work).arg(entities.to_string()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
    let lines = Arc::new(Mutex::new(Vec::new()));
    let pipe = process.stderr.take().context("stderr")?;
    std::thread::spawn({
        let lines = Arc::clone(&lines);
        move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                lines.lock().expect("not poisoned").push((Instant::now(), line));
            }
        }
    });
    Ok(Child { process, spawned, lines })
}

impl Child {
    fn wait_for(&mut self, needle: &str, limit: Duration) -> Result<(Duration, String)> {
        loop {
            if let Some((t, l)) = self.lines.lock().expect("not poisoned").iter().find(|(_, l)| l.contains(needle)) {
                return Ok((t.duration_since(self.spawned), l.clone()));
            }
            if let Some(status) = self.process.try_wait()? {
                bail!("the pipeline ended ({status}) before `{needle}`");
            }
            if self.spawned.elapsed() > limit {
                bail!("no `{needle}` within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn kill9(mut self) -> Result<()> {
        self.process.kill()?;
        self.process.wait()?;
        Ok(())
    }
}

/// `sluice-bench recovery`.
pub fn recovery(entities: u64, restarts: usize, fill_seconds: u64) -> Result<()> {
    let work = tempfile::tempdir()?;
    println!("recovery: the standard pipeline (1 worker, epochs of 4 x 5000 records), {entities} entities, filled for {fill_seconds} s, then {restarts} x (kill -9, restart)");
    let first = spawn(work.path(), entities)?;
    std::thread::sleep(Duration::from_secs(fill_seconds));
    first.kill9()?;
    {
        let reader = sluice_state::StateReader::follow(&work.path().join("state"))?;
        let inspection = sluice::checkpoint::inspect(&reader, &work.path().join("state"))?;
        let features = inspection.tables.iter().find(|t| t.name == "features").map_or(0, |t| t.keys);
        println!(
            "state after the fill: {features} feature keys (RocksDB estimate), {:.1} MiB on disk, {}",
            dir_bytes(&work.path().join("state")) as f64 / (1 << 20) as f64,
            inspection.summary().split(';').next().unwrap_or("")
        );
    }
    println!(
        "{:>8}  {:>14}  {:>22}  {:>18}  {:>18}  {:>26}",
        "restart", "open state ms", "recovered line at ms", "dedup rebuild ms", "order restore ms", "first new commit at ms"
    );
    let mut firsts = Vec::new();
    for i in 1..=restarts {
        let mut child = spawn(work.path(), entities)?;
        let (recovered_at, line) = child.wait_for("recovered epoch", Duration::from_secs(120))?;
        let open_ms = line.split_whitespace().find_map(|kv| kv.strip_prefix("open_ms=")).unwrap_or("?").to_string();
        let (first_commit, _) = child.wait_for("first commit after recovery", Duration::from_secs(120))?;
        // Logged before the first commit, and only when there was something to rebuild.
        let logged = |needle: &str| {
            let lines = child.lines.lock().expect("not poisoned");
            lines.iter().find(|(_, l)| l.contains(needle)).and_then(|(_, l)| l.split_whitespace().find_map(|kv| kv.strip_prefix("ms=")).map(str::to_string))
        };
        let (dedup, order) = (logged("dedup: key index rebuilt").unwrap_or("-".into()), logged("order: buffer restored").unwrap_or("-".into()));
        println!("{i:>8}  {open_ms:>14}  {:>22}  {dedup:>18}  {order:>18}  {:>26}", recovered_at.as_millis(), first_commit.as_millis());
        firsts.push(first_commit);
        // Let it commit a little more before the next kill.
        std::thread::sleep(Duration::from_millis(1500));
        child.kill9()?;
    }
    firsts.sort();
    println!(
        "recovery (spawn to first new committed epoch): p50 {} ms, max {} ms",
        firsts[(firsts.len() - 1) / 2].as_millis(),
        firsts.last().map_or(0, Duration::as_millis)
    );
    small_epochs(104_000, 8)
}

/// Reopening a state written by many small commits (issue 26: it once took 154 s and 17 GB for
/// 104k events in epochs of 8 records, as RocksDB replayed a range deletion per epoch): the
/// standard pipeline over `events` events in epochs of `epoch_records` records per partition,
/// run to the end, then run again on the same state, where nothing is left to read, so that
/// the second run's time is opening the state and resuming.
///
/// # Errors
/// A run fails.
pub fn small_epochs(events: u64, epoch_records: usize) -> Result<()> {
    let work = tempfile::tempdir()?;
    let config = crate::standard_pipeline(work.path(), 1, events, 1_000, "5s", epoch_records, crate::Models::default());
    let started = Instant::now();
    let first = sluice::run(&config, &sluice::RunControl::default())?;
    let first_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let second = sluice::run(&config, &sluice::RunControl::default())?;
    println!(
        "small epochs: {events} events in epochs of {epoch_records} records per partition, {} commits in {first_s:.1} s; run again on that state: {} ms ({} records read)",
        first.resume_epoch,
        started.elapsed().as_millis(),
        second.records_in
    );
    Ok(())
}

/// One run of the standard pipeline for `commit-cost`: (events/s, events/CPU-s, commits, write
/// batches, commit p50 µs, commit p99 µs).
fn cost_run(events: u64, epoch_records: usize, sync: bool) -> Result<(f64, f64, u64, u64, u64, u64)> {
    let work = tempfile::tempdir()?;
    let mut config = crate::standard_pipeline(work.path(), 1, events, 100_000, "5s", epoch_records, crate::Models::default());
    config.state_sync = sync;
    let control = sluice::RunControl::default();
    let started = Instant::now();
    let cpu = crate::cpu_seconds();
    let summary = sluice::run(&config, &control)?;
    let rate = summary.records_in as f64 / started.elapsed().as_secs_f64();
    let per_cpu = summary.records_in as f64 / (crate::cpu_seconds() - cpu).max(1e-9);
    let commit = &control.metrics.commit.duration_us;
    let (p50, p99) = (commit.quantile_us(0.5).unwrap_or(0), commit.quantile_us(0.99).unwrap_or(0));
    let get = sluice_operators::Metrics::get;
    Ok((rate, per_cpu, get(&control.metrics.commit.commits), get(&control.metrics.commit.batches), p50, p99))
}

/// `sluice-bench commit-cost`. Unpaced sources end epochs by record count (so that output does
/// not depend on timing); each `epoch_ms` is turned into the records per partition that take
/// that long at the rate of an unsynced run.
pub fn commit_cost(events: u64, epoch_ms_list: &str) -> Result<()> {
    let (base, ..) = cost_run(events, 20_000, false)?;
    println!("commit cost: the standard pipeline, 1 worker, {events} events; epochs sized to last about epoch_ms at {base:.0} events/s (4 partitions); the state's WAL synced at each commit vs not");
    println!(
        "{:>9}  {:>14}  {:>6}  {:>10}  {:>12}  {:>8}  {:>8}  {:>14}  {:>14}  {:>14}",
        "epoch_ms", "records/part.", "sync", "events/s", "events/CPU-s", "commits", "batches", "epoch ms", "commit p50 µs", "commit p99 µs"
    );
    for epoch_ms in epoch_ms_list.split(',') {
        let epoch_ms: u64 = epoch_ms.trim().parse().context("--epoch-ms takes numbers, e.g. 10,50,200")?;
        let records = ((base * epoch_ms as f64 / 1000.0 / 4.0) as usize).max(1);
        let mut rates = Vec::new();
        for sync in [true, false] {
            let (rate, per_cpu, commits, batches, p50, p99) = cost_run(events, records, sync)?;
            let epoch = events as f64 / rate * 1000.0 / commits.max(1) as f64;
            println!(
                "{epoch_ms:>9}  {records:>14}  {:>6}  {rate:>10.0}  {per_cpu:>12.0}  {commits:>8}  {batches:>8}  {epoch:>14.1}  {p50:>14}  {p99:>14}",
                if sync { "yes" } else { "no" }
            );
            rates.push(rate);
        }
        println!("{:>9}  synced commits cost {:.1}% of throughput", "", (1.0 - rates[0] / rates[1]) * 100.0);
    }
    Ok(())
}
