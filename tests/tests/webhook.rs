//! The webhook source end to end: a pipeline with `[[sources]] type = "webhook"` (Standard
//! Webhooks signatures) answers real HTTP requests on loopback, and what it acknowledged comes
//! out of the pipeline once.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use sluice::{PipelineConfig, RunControl};
use sluice_tests::lines;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn sign(id: &str, ts: i64, body: &str) -> String {
    let key = base64::engine::general_purpose::STANDARD.decode(&SECRET[6..]).unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.{body}").as_bytes());
    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

/// One HTTP/1.1 POST; the status and body.
fn post(addr: SocketAddr, path: &str, headers: &[(&str, String)], body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string())
}

fn now_s() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn config(dir: &std::path::Path) -> PipelineConfig {
    config_with(dir, "")
}

fn config_with(dir: &std::path::Path, source_extra: &str) -> PipelineConfig {
    let text = format!(
        r#"state_dir = {state:?}
epoch_ms = 50
[event]
id = "/id"
entity = "/customer"
time = "/created_ms"
time_format = "millis"
[event.numbers]
amount = "/amount"
[[sources]]
type = "webhook"
name = "psp"
listen = "127.0.0.1:0"
scheme = "standard"
secrets = ["whsec_c2x1aWNlLW9sZC1zZWNyZXQ=", "{SECRET}"]
body_bytes_max = 2000
{source_extra}
[order]
lateness = "1s"
[[features]]
name = "n"
op = "count"
window = "all"
[[features]]
name = "total"
op = "sum"
field = "amount"
window = "all"
[[sinks]]
stream = "features"
path = {features:?}
"#,
        state = dir.join("state"),
        features = dir.join("features.jsonl"),
    );
    let config: PipelineConfig = toml::from_str(&text).unwrap();
    config.validate().unwrap();
    config
}

#[test]
fn signed_webhooks_are_logged_before_the_2xx_and_applied_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let control = RunControl::default();
    let (addrs, drain) = (std::sync::Arc::clone(&control.webhook_addrs), std::sync::Arc::clone(&control.drain));
    let metrics = std::sync::Arc::clone(&control.metrics);
    let run = std::thread::spawn(move || sluice::run(&config, &control));
    let addr = loop {
        if let Some(a) = addrs.lock().unwrap().get("psp").copied() {
            break a;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let path = "/webhooks/psp";
    let event = |id: &str, customer: &str, ms: i64, amount: f64| format!(r#"{{"id":"{id}","customer":"{customer}","created_ms":{ms},"amount":{amount}}}"#);
    let send = |id: &str, body: &str, ts: i64, sig: String| {
        post(addr, path, &[("webhook-id", id.to_string()), ("webhook-timestamp", ts.to_string()), ("webhook-signature", sig)], body)
    };
    let now = now_s();
    let t0 = 1_790_000_000_000i64;

    let b1 = event("evt_1", "c1", t0, 10.0);
    assert_eq!(send("evt_1", &b1, now, sign("evt_1", now, &b1)).0, 200);
    // A redelivery (new timestamp and signature, same id): 2xx, applied once.
    let (status, body) = send("evt_1", &b1, now + 1, sign("evt_1", now + 1, &b1));
    assert_eq!((status, body.contains("duplicate")), (200, true), "{body}");
    let b2 = event("evt_2", "c1", t0 + 1_000, 5.5);
    assert_eq!(send("evt_2", &b2, now, sign("evt_2", now, &b2)).0, 200);
    let b3 = event("evt_3", "c2", t0 + 2_000, 7.0);
    // Signed with the old secret of a rotation: accepted.
    let old = {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"sluice-old-secret").unwrap();
        mac.update(format!("evt_3.{now}.{b3}").as_bytes());
        format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
    };
    assert_eq!(send("evt_3", &b3, now, old).0, 200);

    // Refused, and never logged.
    let b4 = event("evt_4", "c2", t0 + 3_000, 1.0);
    assert_eq!(send("evt_4", &b4, now, sign("evt_4", now, &b3)).0, 401, "signature of another body");
    assert_eq!(send("evt_4", &b4, now - 301, sign("evt_4", now - 301, &b4)).0, 401, "stale timestamp");
    assert_eq!(send("evt_4", &b4, now, "v1,".into()).0, 401, "empty signature");
    assert_eq!(post(addr, path, &[], &b4).0, 400, "no signature headers");
    let big = format!(r#"{{"id":"evt_5","pad":"{}"}}"#, "x".repeat(3_000));
    assert_eq!(send("evt_5", &big, now, sign("evt_5", now, &big)).0, 413);
    assert_eq!(send("evt_6", "{not json", now, sign("evt_6", now, "{not json")).0, 400);
    assert_eq!(post(addr, "/webhooks/other", &[], "{}").0, 404);

    // 50 identical webhooks at once: applied once.
    let b7 = event("evt_7", "c3", t0 + 4_000, 2.0);
    let threads: Vec<_> = (0..50)
        .map(|_| {
            let (b7, sig) = (b7.clone(), sign("evt_7", now, &b7));
            std::thread::spawn(move || {
                post(addr, "/webhooks/psp", &[("webhook-id", "evt_7".into()), ("webhook-timestamp", now.to_string()), ("webhook-signature", sig)], &b7).0
            })
        })
        .collect();
    let statuses: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    drain.store(true, std::sync::atomic::Ordering::Relaxed);
    run.join().unwrap().unwrap();
    let got: Vec<(String, String, f64, f64)> = lines(&dir.path().join("features.jsonl"))
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["id"].as_str().unwrap().into(),
                v["entity"].as_str().unwrap().into(),
                v["features"]["n"].as_f64().unwrap(),
                v["features"]["total"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("evt_1".into(), "c1".into(), 1.0, 10.0),
            ("evt_2".into(), "c1".into(), 2.0, 15.5),
            ("evt_3".into(), "c2".into(), 1.0, 7.0),
            ("evt_7".into(), "c3".into(), 1.0, 2.0)
        ]
    );
    let counts = metrics.webhook.requests.lock().unwrap().clone();
    let n = |o: &str| counts.get(&("psp".to_string(), o.to_string())).copied().unwrap_or(0);
    assert_eq!(
        (n("accepted"), n("duplicate"), n("bad_signature"), n("stale_timestamp"), n("missing_header"), n("too_large"), n("bad_json")),
        (4, 50, 2, 1, 1, 1, 1)
    );
}

/// Starts the pipeline; its webhook address, and a function that drains and ends it.
fn start(config: PipelineConfig) -> (SocketAddr, impl FnOnce()) {
    let control = RunControl::default();
    let (addrs, drain) = (std::sync::Arc::clone(&control.webhook_addrs), std::sync::Arc::clone(&control.drain));
    let run = std::thread::spawn(move || sluice::run(&config, &control));
    let addr = loop {
        if let Some(a) = addrs.lock().unwrap().get("psp").copied() {
            break a;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (addr, move || {
        drain.store(true, std::sync::atomic::Ordering::Relaxed);
        run.join().unwrap().unwrap();
    })
}

/// Reads until the server closes the connection; what it sent and when it closed.
fn until_closed(s: &mut TcpStream) -> (String, Duration) {
    let started = std::time::Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    (String::from_utf8_lossy(&out).to_string(), started.elapsed())
}

#[test]
fn slow_and_idle_clients_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, stop) = start(config_with(dir.path(), "header_timeout_ms = 400\nbody_timeout_ms = 400"));
    // Half a header, then nothing: closed after the header timeout, without an answer.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"POST /webhooks/psp HTTP/1.1\r\nhost: x\r\n").unwrap();
    let (got, after) = until_closed(&mut s);
    assert!(after >= Duration::from_millis(350) && after < Duration::from_secs(5), "{after:?}");
    assert!(!got.contains("200"), "{got}");
    // A connection that sends nothing at all: the same.
    let mut s = TcpStream::connect(addr).unwrap();
    let (_, after) = until_closed(&mut s);
    assert!(after >= Duration::from_millis(350) && after < Duration::from_secs(5), "{after:?}");
    // A whole header and a tenth of the body: 408 after the body timeout.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"POST /webhooks/psp HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"id\":\"e\"").unwrap();
    let (got, after) = until_closed(&mut s);
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(after >= Duration::from_millis(350) && after < Duration::from_secs(5), "{after:?}");
    // A keep-alive connection idle after its answer: closed too.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"POST /webhooks/psp HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}").unwrap();
    let (got, after) = until_closed(&mut s);
    assert!(got.starts_with("HTTP/1.1 400"), "unsigned: {got}");
    assert!(after < Duration::from_secs(5), "{after:?}");
    stop();
}

#[test]
fn a_pipeline_too_far_behind_answers_429_with_retry_after() {
    // The server and its log without a pipeline reading it: the backlog only grows.
    let dir = tempfile::tempdir().unwrap();
    let config: sluice_connectors::webhook::WebhookSourceConfig =
        toml::from_str(&format!("name = \"psp\"\nlisten = \"127.0.0.1:0\"\nscheme = \"standard\"\nsecrets = [\"{SECRET}\"]\nbacklog_max = 2\n")).unwrap();
    let log = sluice_connectors::webhook::WebhookLog::open(dir.path()).unwrap();
    let server =
        sluice_connectors::webhook::WebhookServer::start(&config, std::sync::Arc::clone(&log), std::sync::Arc::default(), std::sync::Arc::new(|| None))
            .unwrap();
    let now = now_s();
    let send = |id: &str| {
        let body = format!(r#"{{"id":"{id}","customer":"c1","created_ms":1790000000000,"amount":1}}"#);
        let mut s = TcpStream::connect(server.addr()).unwrap();
        let req = format!(
            "POST /webhooks/psp HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\nwebhook-id: {id}\r\nwebhook-timestamp: {now}\r\nwebhook-signature: {}\r\n\r\n{body}",
            body.len(),
            sign(id, now, &body)
        );
        s.write_all(req.as_bytes()).unwrap();
        until_closed(&mut s).0
    };
    assert!(send("evt_1").starts_with("HTTP/1.1 200"));
    assert!(send("evt_2").starts_with("HTTP/1.1 200"));
    // Two logged and unread: the third is refused with Retry-After, and not logged.
    let refused = send("evt_3");
    assert!(refused.starts_with("HTTP/1.1 429"), "{refused}");
    assert!(refused.to_ascii_lowercase().contains("retry-after: 1"), "{refused}");
    assert_eq!(log.backlog(), 2);
}
