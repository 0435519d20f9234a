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
            assert!(started.elapsed() < Duration::from_secs(60), "no drift window and SLO record within 60 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        let (head, body) = get(addr, "/metrics");
        let (_, health) = get(addr, "/healthz");
        (head, body, health)
    });
    let final_metrics = Arc::clone(&control.metrics);
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
        "sluice_commit_batches_total",
        "sluice_commit_keys_coalesced_total",
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
    let counter = |s: &prometheus_parse::Sample| match s.value {
        prometheus_parse::Value::Counter(n) => n,
        ref other => panic!("{} is not a counter: {other:?}", s.metric),
    };
    let dead_sum: f64 = dead.iter().map(|s| counter(s)).sum();
    let dead_then = scrape.samples.iter().find(|s| s.metric == "sluice_records_out_total" && s.labels.get("stream") == Some("dead_letters")).map(counter);
    assert_eq!(Some(dead_sum), dead_then, "dead letters by reason sum to the dead letters out");
    final_values_agree_with_the_outputs(&final_metrics, &summary, work.path());
}

/// `/metrics` as rendered from the metrics after the run agrees with what the run wrote: each
/// stream's records-out counter equals the lines of its output file, the dead letters by
/// reason sum to the dead-letter lines, and every record read is accounted for once.
fn final_values_agree_with_the_outputs(metrics: &sluice_operators::Metrics, summary: &sluice::RunSummary, dir: &std::path::Path) {
    let info = sluice::prometheus::ExportInfo { partition_sources: vec!["payments".to_string(); 64], ..Default::default() };
    let scrape = parse(&sluice::prometheus::render(metrics, &info));
    let one = |metric: &str, label: Option<(&str, &str)>| -> f64 {
        let found: Vec<f64> = scrape
            .samples
            .iter()
            .filter(|s| s.metric == metric && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(n) | prometheus_parse::Value::Gauge(n) | prometheus_parse::Value::Untyped(n) => n,
                ref other => panic!("{metric}: {other:?}"),
            })
            .collect();
        found.iter().sum()
    };
    let file_lines = |stream: &str| sluice_tests::lines(&dir.join(format!("{stream}.jsonl"))).len() as f64;
    for stream in ["features", "scores", "dead_letters", "late", "conflicts"] {
        assert_eq!(one("sluice_records_out_total", Some(("stream", stream))), file_lines(stream), "sluice_records_out_total{{stream=\"{stream}\"}}");
    }
    assert_eq!(one("sluice_dead_letters_total", None), file_lines("dead_letters"), "dead letters by reason");
    let records_in = one("sluice_records_in_total", None);
    assert_eq!(records_in, summary.records_in as f64);
    // Every record read is a dead letter, a duplicate, a conflict, late, or a feature record.
    let accounted =
        file_lines("dead_letters") + one("sluice_dedup_duplicates_total", None) + file_lines("conflicts") + file_lines("late") + file_lines("features");
    assert_eq!(accounted, records_in, "every record read accounted for once");
    assert_eq!(one("sluice_events_decoded_total", None), records_in - file_lines("dead_letters"));
    // Group commit: never more write batches than epochs committed.
    let (batches, epochs) = (one("sluice_commit_batches_total", None), one("sluice_epochs_committed_total", None));
    assert!(batches >= 1.0 && batches <= epochs, "{batches} batches for {epochs} epochs");
}
