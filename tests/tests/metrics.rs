//! `/metrics` while a pipeline runs: served over HTTP, parsed by a Prometheus text-format
//! parser, with every metric the README lists and values that agree with the run.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::config::ServerSection;
use sluice::demo::{demo_config, DemoOptions};
use sluice::RunControl;

fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

fn parse(body: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap()
}

#[test]
fn metrics_parse_and_name_everything() {
    let work = tempfile::tempdir().unwrap();
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/fraud_lr.onnx");
    let options = DemoOptions { duration: Duration::from_secs(3), rate: 8_000, workers: 2, events: 0, model: Some(model), shadow: None, http: None };
    let mut config = demo_config(work.path(), &options);
    config.server = Some(ServerSection::new("127.0.0.1:0"));
    config.slo_interval = "500ms".parse().unwrap();
    // Release events soon, so that drift windows close while the run goes on.
    config.order.lateness = "200ms".parse().unwrap();
    let control = RunControl::default();
    let addr_cell = Arc::clone(&control.http_addr);
    let metrics = Arc::clone(&control.metrics);
    let scraper = std::thread::spawn(move || {
        let started = Instant::now();
        let addr = loop {
            if let Some(a) = addr_cell.get() {
                break *a;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "the server never listened");
            std::thread::sleep(Duration::from_millis(10));
        };
        // Wait for some output and an SLO interval, then scrape while the run goes on.
        while metrics.drift.windows.load(std::sync::atomic::Ordering::Relaxed) == 0 || metrics.slo.latest.lock().unwrap().is_empty() {
            std::thread::sleep(Duration::from_millis(20));
        }
        let (head, body) = get(addr, "/metrics");
        let (_, health) = get(addr, "/healthz");
        (head, body, health)
    });
    let summary = sluice::run(&config, &control).unwrap();
    let (head, body, health) = scraper.join().unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
    assert_eq!(health, "ok\n");

    let scrape = parse(&body);
    let names: std::collections::BTreeSet<&str> = scrape.samples.iter().map(|s| s.metric.as_str()).collect();
    for name in [
        "sluice_records_in_total",
        "sluice_events_decoded_total",
        "sluice_records_out_total",
        "sluice_dead_letters_total",
        "sluice_dedup_duplicates_total",
        "sluice_dedup_conflicts_total",
        "sluice_late_events_total",
        "sluice_watermark_lag_seconds",
        "sluice_freshness_seconds",
        "sluice_epochs_committed_total",
        "sluice_commit_duration_seconds",
        "sluice_inflight_epochs",
        "sluice_backpressure_seconds_total",
        "sluice_latency_seconds",
        "sluice_model_batch_seconds",
        "sluice_model_reloads_total",
        "sluice_drift_windows_total",
        "sluice_drift_value",
        "sluice_drift_status",
        "sluice_slo_good_ratio",
        "sluice_slo_burn_rate",
        "sluice_slo_budget_remaining",
        "sluice_slo_status",
    ] {
        assert!(names.contains(name), "{name} missing from /metrics; have {names:?}");
    }
    // Types are declared: counters, gauges, histograms.
    assert!(matches!(scrape.samples.iter().find(|s| s.metric == "sluice_latency_seconds").unwrap().value, prometheus_parse::Value::Histogram(_)));
    assert!(matches!(scrape.samples.iter().find(|s| s.metric == "sluice_records_in_total").unwrap().value, prometheus_parse::Value::Counter(_)));
    let records_in = scrape.samples.iter().find(|s| s.metric == "sluice_records_in_total").unwrap();
    assert_eq!(records_in.labels.get("source"), Some("payments"));
    let prometheus_parse::Value::Counter(n) = records_in.value else { unreachable!() };
    assert!(n > 0.0 && n <= summary.records_in as f64, "{n} of {}", summary.records_in);
    // One SLO burn rate per objective and window.
    let burns = scrape.samples.iter().filter(|s| s.metric == "sluice_slo_burn_rate").count();
    assert_eq!(burns, config.slo.len() * 4);
    // The Grafana dashboard only uses metrics that exist.
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards/sluice.json")).unwrap()).unwrap();
    let mut used = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (i, _) in expr.match_indices("sluice_") {
                let name: String = expr[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                let base = name.strip_suffix("_bucket").unwrap_or(&name);
                assert!(names.contains(base), "the dashboard uses {name}, which /metrics does not have");
                used += 1;
            }
        }
    }
    assert!(used >= 16);
    // Dead letters carry their reason class; their sum is the dead letters counted then.
    let dead: Vec<&prometheus_parse::Sample> = scrape.samples.iter().filter(|s| s.metric == "sluice_dead_letters_total").collect();
    assert!(dead.iter().all(|s| !s.labels.get("reason").unwrap_or("").contains(':')));
}
