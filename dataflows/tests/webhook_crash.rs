//! kill -9 of `sluice run` right after a batch of webhooks was answered 2xx: after a restart,
//! every acknowledged webhook is in the output, none twice.

mod common;

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::post;

#[test]
fn every_acknowledged_webhook_survives_a_kill_9_once() {
    let dir = tempfile::tempdir().unwrap();
    let (pipeline, addr) = common::webhook_pipeline(dir.path(), "state_dir = \"state\"");
    let start_with = |failpoint: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
        if let Some(f) = failpoint {
            command.env("SLUICE_FAILPOINT", f);
        }
        let child = command.current_dir(dir.path()).arg("run").arg(&pipeline).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let started = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(20), "the webhook server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    };
    let start = || start_with(None);
    let t0 = 1_790_000_000_000i64;
    let body = |i: usize| format!(r#"{{"id":"evt_{i}","customer":"c{}","created_ms":{}}}"#, i % 7, t0 + i as i64 * 10);
    let mut acknowledged = Vec::new();
    let mut next = 0;
    for round in 0..3 {
        let mut child = start();
        // A batch answered 2xx, then at once kill -9.
        for _ in 0..40 {
            if post(addr, &format!("evt_{next}"), &body(next)) == Some(200) {
                acknowledged.push(format!("evt_{next}"));
            }
            next += 1;
        }
        // Some redeliveries of what was acknowledged in an earlier round: applied once.
        if round > 0 {
            assert_eq!(post(addr, "evt_0", &body(0)), Some(200));
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
    assert_eq!(acknowledged.len(), 120, "every request was acknowledged");
    // A kill between the synced log write and the answer (the failpoint `webhook.logged`): the
    // sender sees no answer and retries after the restart; the retry is answered as a
    // duplicate, and the webhook is in the output once.
    let mut child = start_with(Some("webhook.logged@3"));
    for _ in 0..2 {
        assert_eq!(post(addr, &format!("evt_{next}"), &body(next)), Some(200));
        acknowledged.push(format!("evt_{next}"));
        next += 1;
    }
    assert_eq!(post(addr, &format!("evt_{next}"), &body(next)), None, "no answer from a process killed before answering");
    let status = child.wait().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9));
    let unanswered = next;
    // The last run: a webhook far ahead in event time moves the watermark past everything, then
    // Ctrl-C stops at an epoch boundary with the output committed.
    let mut child = start();
    assert_eq!(post(addr, &format!("evt_{unanswered}"), &body(unanswered)), Some(200), "the retry of the unanswered webhook");
    acknowledged.push(format!("evt_{unanswered}"));
    let far = format!(r#"{{"id":"evt_far","customer":"z","created_ms":{}}}"#, t0 + 3_600_000);
    assert_eq!(post(addr, "evt_far", &far), Some(200));
    let path = dir.path().join("features.jsonl");
    let started = Instant::now();
    loop {
        let n = std::fs::read_to_string(&path).map(|t| t.lines().count()).unwrap_or(0);
        if n >= acknowledged.len() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "only {n} feature records after 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(child.wait().unwrap().success());
    let mut ids: Vec<String> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    let mut want = acknowledged.clone();
    want.sort();
    let (duplicates, lost) = common::diff_counts(&ids, &want);
    common::Report { scenario: "webhook-acks".into(), kills: 4, events: want.len(), duplicates, lost, recoveries: Vec::new() }.print();
    assert_eq!(ids, want, "every acknowledged webhook once");
}
