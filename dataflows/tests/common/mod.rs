//! The crash harness: runs `sluice run` as a child process, kills it (SIGKILL, at a failpoint of
//! the commit protocol or at a chosen moment), restarts it, and compares what it committed with
//! an uninterrupted run. Each scenario prints one line (to stderr, past the test capture):
//!
//! ```text
//! crash scenario=<name> kills=<n> events=<n> duplicates=<n> lost=<n> recovery_p50_ms=<ms> recovery_max_ms=<ms>
//! ```
//!
//! Recovery time is from the restart's spawn to its log line `first commit after recovery`.

#![allow(dead_code)]

pub mod kafka;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};

use base64::Engine;
use hmac::{Hmac, Mac};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `sluice run` whose stderr is collected line by line with arrival times.
pub struct Run {
    pub child: Child,
    pub spawned: Instant,
    pub stderr: Arc<Mutex<Vec<(Instant, String)>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// Starts `sluice run pipeline` in `dir`, with extra environment variables.
pub fn spawn(dir: &Path, pipeline: &Path, env: &[(&str, &str)]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command.current_dir(dir).arg("run").arg(pipeline).stdout(Stdio::null()).stderr(Stdio::piped()).env_remove("SLUICE_FAILPOINT");
    for (k, v) in env {
        command.env(k, v);
    }
    let spawned = Instant::now();
    let mut child = command.spawn().expect("cannot start sluice");
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn({
        let stderr = Arc::clone(&stderr);
        move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                stderr.lock().unwrap().push((Instant::now(), line));
            }
        }
    });
    Run { child, spawned, stderr, reader: Some(reader) }
}

impl Run {
    /// The time from spawn to the first stderr line containing `needle`.
    pub fn time_to(&self, needle: &str) -> Option<Duration> {
        self.stderr.lock().unwrap().iter().find(|(_, l)| l.contains(needle)).map(|(t, _)| t.duration_since(self.spawned))
    }

    /// True while the process runs.
    pub fn child_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn text(&self) -> String {
        self.stderr.lock().unwrap().iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>().join("\n")
    }

    /// Waits for the process to end (at most `limit`); the exit status and stderr.
    pub fn wait(mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("sluice did not finish within {limit:?}; stderr:\n{}", self.text());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        (status, self.text())
    }

    /// SIGKILL now; true if the process was still running.
    pub fn kill9(mut self) -> (bool, String) {
        let running = self.child.try_wait().unwrap().is_none();
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        (running, self.text())
    }
}

/// Runs to the end; panics unless it succeeds. Returns the recovery time (when it resumed).
pub fn run_to_end(dir: &Path, pipeline: &Path) -> Option<Duration> {
    let run = spawn(dir, pipeline, &[]);
    let recovery_probe = Arc::clone(&run.stderr);
    let spawned = run.spawned;
    let (status, text) = run.wait(Duration::from_secs(300));
    assert!(status.success(), "sluice failed ({status}):\n{text}");
    let lines = recovery_probe.lock().unwrap();
    lines.iter().find(|(_, l)| l.contains("first commit after recovery")).map(|(t, _)| t.duration_since(spawned))
}

/// Runs with `SLUICE_FAILPOINT=spec`; asserts the process was killed there. Returns stderr.
pub fn run_to_failpoint(dir: &Path, pipeline: &Path, spec: &str) -> String {
    let run = spawn(dir, pipeline, &[("SLUICE_FAILPOINT", spec)]);
    let (status, text) = run.wait(Duration::from_secs(300));
    assert_eq!(status.signal(), Some(9), "SLUICE_FAILPOINT={spec}: expected a SIGKILL at the failpoint, got {status}; stderr:\n{text}");
    let name = spec.split('@').next().unwrap();
    assert!(text.contains(&format!("failpoint {name} reached")), "SLUICE_FAILPOINT={spec}: not killed by the failpoint:\n{text}");
    text
}

/// The lines of a file.
///
/// # Panics
/// If the file cannot be read: a missing output is a failure, not an empty one (while a run
/// is still starting, poll with [`lines_so_far`]).
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display())).lines().map(str::to_string).collect()
}

/// The lines of a file a running pipeline writes: none while it does not exist yet.
pub fn lines_so_far(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).map(|t| t.lines().map(str::to_string).collect()).unwrap_or_default()
}

/// (duplicates, lost): lines more often in `actual` than in `expected`, and fewer.
pub fn diff_counts(actual: &[String], expected: &[String]) -> (usize, usize) {
    let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
    for l in expected {
        *counts.entry(l).or_default() += 1;
    }
    for l in actual {
        *counts.entry(l).or_default() -= 1;
    }
    let duplicates = counts.values().filter(|c| **c < 0).map(|c| (-c) as usize).sum();
    let lost = counts.values().filter(|c| **c > 0).map(|c| *c as usize).sum();
    (duplicates, lost)
}

/// One scenario's line of the harness report.
pub struct Report {
    pub scenario: String,
    pub kills: usize,
    pub events: usize,
    pub duplicates: usize,
    pub lost: usize,
    pub recoveries: Vec<Duration>,
}

impl Report {
    pub fn print(&self) {
        let mut ms: Vec<u128> = self.recoveries.iter().map(Duration::as_millis).collect();
        ms.sort_unstable();
        let p50 = ms.get(ms.len().saturating_sub(1) / 2).map_or("-".to_string(), u128::to_string);
        let max = ms.last().map_or("-".to_string(), u128::to_string);
        let line = format!(
            "crash scenario={} kills={} events={} duplicates={} lost={} recovery_p50_ms={p50} recovery_max_ms={max}\n",
            self.scenario, self.kills, self.events, self.duplicates, self.lost
        );
        // Past the test harness's capture, so that `make test` shows it.
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
}

/// Webhooks signed the Standard Webhooks way with this key.
pub const KEY: &[u8] = b"sluice-webhook-test-key";

pub fn sign(id: &str, ts: i64, body: &str) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(KEY).unwrap();
    mac.update(format!("{id}.{ts}.{body}").as_bytes());
    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

/// POSTs a signed webhook; the status code, if an answer came.
pub fn post(addr: SocketAddr, id: &str, body: &str) -> Option<u16> {
    let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!(
        "POST /webhooks/psp HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\nwebhook-id: {id}\r\nwebhook-timestamp: {ts}\r\nwebhook-signature: {}\r\n\r\n{body}",
        body.len(),
        sign(id, ts, body)
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split(' ').nth(1).and_then(|c| c.parse().ok())
}

/// A webhook pipeline in `dir` (source `psp` on a free port, a count per customer into
/// `features.jsonl`) with `head` at the top of the file (`state_dir = …` and the like).
/// Returns the pipeline file and the webhook address.
pub fn webhook_pipeline(dir: &Path, head: &str) -> (std::path::PathBuf, SocketAddr) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let secret = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(KEY));
    let pipeline = dir.join("pipeline.toml");
    std::fs::write(
        &pipeline,
        format!(
            r#"{head}
epoch_ms = 50
[event]
id = "/id"
entity = "/customer"
time = "/created_ms"
time_format = "millis"
[[sources]]
type = "webhook"
name = "psp"
listen = "{addr}"
scheme = "standard"
secrets = ["{secret}"]
[order]
lateness = "1s"
[[features]]
name = "n"
op = "count"
window = "all"
[[sinks]]
stream = "features"
path = "features.jsonl"
"#
        ),
    )
    .unwrap();
    (pipeline, addr)
}
