//! `/metrics`: the pipeline's counters, gauges and histograms in the Prometheus text format
//! (version 0.0.4). Names and labels are listed in the README; `dashboards/sluice.json` is a
//! Grafana dashboard built on them.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sluice_connectors::DeliveryState;
use sluice_operators::latency::LatencyMetrics;
use sluice_operators::metrics::{
    CommitMetrics, DecodeMetrics, DedupMetrics, DriftMetrics, KafkaMetrics, ModelMetrics, SloMetrics, SourceMetrics, TimeMetrics, WebhookMetrics,
};
use sluice_operators::{LatencyStage, Metrics};

/// Latency buckets, seconds.
const BUCKETS: [f64; 14] = [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// What `/metrics` needs besides the counters: the source name of each global partition, and
/// the Kafka sinks' delivery state.
#[derive(Debug, Clone, Default)]
pub struct ExportInfo {
    /// Source name per global partition index.
    pub partition_sources: Vec<String>,
    /// Kafka sinks: stream and delivery state.
    pub deliveries: Vec<(String, Arc<DeliveryState>)>,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

fn histogram(out: &mut String, name: &str, labels: &str, h: &hdrhistogram::Histogram<u64>) {
    let sep = if labels.is_empty() { "" } else { "," };
    for le in BUCKETS {
        let count = if h.is_empty() { 0 } else { h.count_between(0, (le * 1e6) as u64) };
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {count}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", h.len());
    let sum = if h.is_empty() { 0.0 } else { h.mean() * h.len() as f64 / 1e6 };
    let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
    let _ = writeln!(out, "{name}_sum{braces} {}", value(sum));
    let _ = writeln!(out, "{name}_count{braces} {}", h.len());
}

/// Renders every metric: each component's families, in the order of [`Metrics`].
pub fn render(m: &Metrics, info: &ExportInfo) -> String {
    let mut out = String::with_capacity(8192);
    sources(&mut out, &m.sources, info);
    decode(&mut out, &m.decode);
    records_out(&mut out, m);
    dedup(&mut out, &m.dedup);
    time(&mut out, &m.time);
    commit(&mut out, &m.commit);
    kafka(&mut out, &m.kafka, &info.deliveries);
    webhook(&mut out, &m.webhook);
    latency(&mut out, &m.latency);
    model(&mut out, &m.model);
    drift(&mut out, &m.drift);
    slo(&mut out, &m.slo);
    out
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// A per-partition map summed per source (every source listed, with 0 if it has nothing).
fn by_source<'a>(per_partition: &std::sync::Mutex<BTreeMap<u32, u64>>, info: &'a ExportInfo) -> BTreeMap<&'a str, u64> {
    let mut per_source: BTreeMap<&str, u64> = info.partition_sources.iter().map(|s| (s.as_str(), 0)).collect();
    if let Ok(p) = per_partition.lock() {
        for (index, n) in p.iter() {
            let source = info.partition_sources.get(*index as usize).map_or("unknown", String::as_str);
            *per_source.entry(source).or_default() += n;
        }
    }
    per_source
}

fn sources(out: &mut String, m: &SourceMetrics, info: &ExportInfo) {
    header(out, "sluice_records_in_total", "counter", "Records read, per source.");
    for (source, n) in by_source(&m.records_by_partition, info) {
        let _ = writeln!(out, "sluice_records_in_total{{source=\"{}\"}} {n}", escape(source));
    }
    header(out, "sluice_records_replayed_total", "counter", "Records read again at the start, to refill the order buffer.");
    let _ = writeln!(out, "sluice_records_replayed_total {}", get(&m.records_replayed));
    header(out, "sluice_inflight_epochs", "gauge", "Epochs open in the dataflow (the queue behind the sources).");
    let _ = writeln!(out, "sluice_inflight_epochs {}", get(&m.inflight_epochs));
    header(out, "sluice_backpressure_seconds_total", "counter", "Time sources waited for the dataflow (max_inflight_epochs reached).");
    let _ = writeln!(out, "sluice_backpressure_seconds_total {}", value(get(&m.backpressure_us) as f64 / 1e6));
    header(out, "sluice_source_paused_seconds_total", "counter", "Time a source's partitions were paused by backpressure (summed over its partitions).");
    for (source, us) in by_source(&m.paused_us_by_partition, info) {
        let _ = writeln!(out, "sluice_source_paused_seconds_total{{source=\"{}\"}} {}", escape(source), value(us as f64 / 1e6));
    }
}

fn decode(out: &mut String, m: &DecodeMetrics) {
    header(out, "sluice_events_decoded_total", "counter", "Records decoded into events.");
    let _ = writeln!(out, "sluice_events_decoded_total {}", get(&m.decoded));
    header(out, "sluice_dead_letters_total", "counter", "Dead letters, per reason.");
    if let Ok(r) = m.dead_letter_reasons.lock() {
        for (reason, n) in r.iter() {
            let _ = writeln!(out, "sluice_dead_letters_total{{reason=\"{}\"}} {n}", escape(reason));
        }
    }
}

/// The one family across components: records per output stream.
fn records_out(out: &mut String, m: &Metrics) {
    header(out, "sluice_records_out_total", "counter", "Records out, per output stream.");
    for (stream, n) in [
        ("features", get(&m.features.records_out)),
        ("scores", get(&m.model.scored)),
        ("shadow_scores", get(&m.model.shadow_scored)),
        ("dead_letters", get(&m.decode.dead_letters)),
        ("late", get(&m.time.late)),
        ("conflicts", get(&m.dedup.conflicts)),
    ] {
        let _ = writeln!(out, "sluice_records_out_total{{stream=\"{stream}\"}} {n}");
    }
}

fn dedup(out: &mut String, m: &DedupMetrics) {
    header(out, "sluice_dedup_duplicates_total", "counter", "Exact repeats dropped by dedup (dedup hits).");
    let _ = writeln!(out, "sluice_dedup_duplicates_total {}", get(&m.duplicates));
    header(out, "sluice_dedup_conflicts_total", "counter", "Repeats of an id with a different payload.");
    let _ = writeln!(out, "sluice_dedup_conflicts_total {}", get(&m.conflicts));
}

fn time(out: &mut String, m: &TimeMetrics) {
    header(out, "sluice_late_events_total", "counter", "Events behind the watermark.");
    let _ = writeln!(out, "sluice_late_events_total {}", get(&m.late));
    header(out, "sluice_watermark_lag_seconds", "gauge", "Largest event time seen minus the watermark.");
    let _ = writeln!(out, "sluice_watermark_lag_seconds {}", value(m.watermark_lag_ms().map_or(f64::NAN, |l| l as f64 / 1000.0)));
    header(out, "sluice_freshness_seconds", "gauge", "Wall clock minus the watermark.");
    let _ = writeln!(out, "sluice_freshness_seconds {}", value(crate::monitor::freshness_ms(m).map_or(f64::NAN, |f| f as f64 / 1000.0)));
}

fn commit(out: &mut String, m: &CommitMetrics) {
    header(out, "sluice_epochs_committed_total", "counter", "Epoch commits handed to the state store.");
    let _ = writeln!(out, "sluice_epochs_committed_total {}", get(&m.commits));
    header(out, "sluice_commit_batches_total", "counter", "Write batches of the commit: each holds every epoch queued behind the last sync.");
    let _ = writeln!(out, "sluice_commit_batches_total {}", get(&m.batches));
    header(out, "sluice_commit_keys_coalesced_total", "counter", "State keys left out of a batch because a later epoch of the same batch wrote them again.");
    let _ = writeln!(out, "sluice_commit_keys_coalesced_total {}", get(&m.coalesced));
    header(out, "sluice_commit_duration_seconds", "histogram", "Time to write and sync one commit batch.");
    histogram(out, "sluice_commit_duration_seconds", "", &m.duration_us.snapshot());
}

/// One family of a per-instance state: name, kind, help, and how to read the value.
type Family<T> = (&'static str, &'static str, &'static str, fn(&T) -> i64);

fn kafka(out: &mut String, m: &KafkaMetrics, deliveries: &[(String, Arc<DeliveryState>)]) {
    if let Ok(k) = m.partitions.lock() {
        if !k.is_empty() {
            header(out, "sluice_kafka_consumer_lag", "gauge", "Records on the broker after the last committed epoch's position, per Kafka source partition.");
            for ((source, p), g) in k.iter() {
                let _ = writeln!(out, "sluice_kafka_consumer_lag{{source=\"{}\",partition=\"{p}\"}} {}", escape(source), g.lag());
            }
            header(out, "sluice_kafka_high_watermark", "gauge", "The broker's high watermark, per Kafka source partition.");
            for ((source, p), g) in k.iter() {
                let _ = writeln!(out, "sluice_kafka_high_watermark{{source=\"{}\",partition=\"{p}\"}} {}", escape(source), g.high_watermark);
            }
            header(out, "sluice_kafka_committed_offset", "gauge", "The position committed with the last epoch (and to the consumer group), per partition.");
            for ((source, p), g) in k.iter() {
                let _ = writeln!(out, "sluice_kafka_committed_offset{{source=\"{}\",partition=\"{p}\"}} {}", escape(source), g.committed);
            }
        }
    }
    if deliveries.is_empty() {
        return;
    }
    let families: [Family<DeliveryState>; 4] = [
        ("sluice_kafka_producer_queue", "gauge", "Records sent by a Kafka sink and not yet acknowledged by the broker.", |d| {
            d.queue_depth.load(Ordering::Relaxed)
        }),
        ("sluice_kafka_delivered_epoch", "gauge", "The last epoch a Kafka sink delivered (-1: none).", |d| d.delivered.load(Ordering::Relaxed)),
        ("sluice_kafka_delivery_retries_total", "counter", "Epoch deliveries tried again after a retriable error (broker away, timeouts).", |d| {
            d.retries.load(Ordering::Relaxed) as i64
        }),
        ("sluice_kafka_delivered_records_total", "counter", "Records a Kafka sink delivered (this process).", |d| d.records.load(Ordering::Relaxed) as i64),
    ];
    for (name, kind, help, read) in families {
        header(out, name, kind, help);
        for (stream, d) in deliveries {
            let _ = writeln!(out, "{name}{{stream=\"{}\"}} {}", escape(stream), read(d));
        }
    }
}

fn webhook(out: &mut String, m: &WebhookMetrics) {
    if let Ok(w) = m.requests.lock() {
        if !w.is_empty() {
            header(out, "sluice_webhook_requests_total", "counter", "Webhook requests per source and outcome: accepted, duplicate, or why refused.");
            for ((source, outcome), n) in w.iter() {
                let _ = writeln!(out, "sluice_webhook_requests_total{{source=\"{}\",outcome=\"{}\"}} {n}", escape(source), escape(outcome));
            }
        }
    }
}

fn latency(out: &mut String, m: &LatencyMetrics) {
    header(out, "sluice_latency_seconds", "histogram", "Latency from ingest (decode) to a stage: features, scored, committed (end to end).");
    for stage in LatencyStage::ALL {
        histogram(out, "sluice_latency_seconds", &format!("stage=\"{}\"", stage.name()), &m.snapshot(stage));
    }
}

fn model(out: &mut String, m: &ModelMetrics) {
    header(out, "sluice_model_batch_seconds", "histogram", "Time of one ONNX Runtime run of the primary model.");
    histogram(out, "sluice_model_batch_seconds", "", &m.batch_latency_us.snapshot());
    header(out, "sluice_model_reloads_total", "counter", "New model versions loaded.");
    let _ = writeln!(out, "sluice_model_reloads_total {}", get(&m.reloads));
    header(out, "sluice_model_reload_failures_total", "counter", "New model files that did not load.");
    let _ = writeln!(out, "sluice_model_reload_failures_total {}", get(&m.reload_failures));
}

fn drift(out: &mut String, m: &DriftMetrics) {
    header(out, "sluice_drift_windows_total", "counter", "Drift windows evaluated.");
    let _ = writeln!(out, "sluice_drift_windows_total {}", get(&m.windows));
    let Ok(d) = m.latest.lock() else { return };
    header(out, "sluice_drift_value", "gauge", "The latest window's drift statistic.");
    for ((column, statistic), g) in d.iter() {
        let _ = writeln!(out, "sluice_drift_value{{column=\"{}\",statistic=\"{statistic}\"}} {}", escape(column), value(g.value.unwrap_or(f64::NAN)));
    }
    header(out, "sluice_drift_status", "gauge", "The latest window's status: 0 ok, 1 warn, 2 alert, -1 too few samples.");
    for ((column, statistic), g) in d.iter() {
        let _ = writeln!(out, "sluice_drift_status{{column=\"{}\",statistic=\"{statistic}\"}} {}", escape(column), g.level);
    }
    header(out, "sluice_drift_alerts_total", "counter", "Windows in alert.");
    for ((column, statistic), g) in d.iter() {
        let _ = writeln!(out, "sluice_drift_alerts_total{{column=\"{}\",statistic=\"{statistic}\"}} {}", escape(column), g.alerts);
    }
}

fn slo(out: &mut String, m: &SloMetrics) {
    let Ok(slo) = m.latest.lock() else { return };
    header(out, "sluice_slo_good_ratio", "gauge", "Good / total in the latest SLO interval.");
    for r in slo.iter() {
        let _ = writeln!(out, "sluice_slo_good_ratio{{objective=\"{}\"}} {}", escape(&r.name), value(r.value.unwrap_or(f64::NAN)));
    }
    header(out, "sluice_slo_objective", "gauge", "The objective (fraction that must be good).");
    for r in slo.iter() {
        let _ = writeln!(out, "sluice_slo_objective{{objective=\"{}\"}} {}", escape(&r.name), r.objective);
    }
    header(out, "sluice_slo_burn_rate", "gauge", "Error budget burn rate over a window.");
    for r in slo.iter() {
        for (w, b) in [("5m", r.burn_5m), ("30m", r.burn_30m), ("1h", r.burn_1h), ("6h", r.burn_6h)] {
            let _ = writeln!(out, "sluice_slo_burn_rate{{objective=\"{}\",window=\"{w}\"}} {}", escape(&r.name), value(b));
        }
    }
    header(out, "sluice_slo_budget_remaining", "gauge", "Error budget remaining over the period (1 untouched, below 0 overspent).");
    for r in slo.iter() {
        let _ = writeln!(out, "sluice_slo_budget_remaining{{objective=\"{}\"}} {}", escape(&r.name), value(r.budget_remaining));
    }
    header(out, "sluice_slo_status", "gauge", "0 ok, 1 ticket (slow burn), 2 page (fast burn).");
    for r in slo.iter() {
        let _ = writeln!(out, "sluice_slo_status{{objective=\"{}\"}} {}", escape(&r.name), r.status.level());
    }
}

/// The HTTP server's requests: `sluice_http_requests_total{route,status}` and
/// `sluice_http_request_duration_seconds{route}`.
pub fn render_requests(m: &crate::server::RequestMetrics) -> String {
    let mut out = String::new();
    header(&mut out, "sluice_http_requests_total", "counter", "Requests to the pipeline's HTTP server (feature API, /metrics, /healthz) per route and status.");
    for ((route, status), n) in m.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter() {
        let _ = writeln!(out, "sluice_http_requests_total{{route=\"{}\",status=\"{status}\"}} {n}", escape(route));
    }
    header(&mut out, "sluice_http_request_duration_seconds", "histogram", "Time from a request's head read to its answer, per route.");
    for (route, h) in m.latency.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter() {
        histogram(&mut out, "sluice_http_request_duration_seconds", &format!("route=\"{}\"", escape(route)), h);
    }
    out
}
