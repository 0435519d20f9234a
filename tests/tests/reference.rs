//! dedup, order and features against the plain reference implementation, on 100k generated
//! events (duplicates, conflicts, disorder, late and malformed records), 1 and 4 workers.

use std::path::Path;

use sluice::demo::payment_schema;
use sluice::PipelineConfig;
use sluice_connectors::file::FileSinkConfig;
use sluice_connectors::generator::{GeneratorConfig, GeneratorReader};
use sluice_connectors::SourceConfig;
use sluice_operators::{Decoder, FeatureOp, FeatureSpec, LatePolicy};
use sluice_tests::reference::{self, RefConfig, RefFeature, RefOutput};
use sluice_tests::{lines, run};

const EVENTS: u64 = 100_000;
const PARTITIONS: u32 = 4;
const EPOCH_RECORDS: usize = 1_000;

fn generator() -> GeneratorConfig {
    let mut g = GeneratorConfig::named("gen");
    g.partitions = PARTITIONS;
    g.events = EVENTS;
    g.seed = 2026;
    g.customers = 1_000;
    // 4 partitions at 1 ms steps each: ~25 s of event time per partition.
    g.step_us = 1_000;
    g.duplicate_pct = 3.0;
    g.conflict_pct = 1.0;
    g.out_of_order_pct = 10.0;
    g.disorder_ms = 1_500;
    g.late_pct = 1.0;
    g.late_by_ms = 4_000;
    g.malformed_pct = 1.0;
    g
}

fn feature(name: &str, op: FeatureOp, field: bool, window: Option<&str>, slide: Option<&str>) -> FeatureSpec {
    FeatureSpec {
        name: name.into(),
        op,
        field: field.then(|| "amount".into()),
        window: window.map(|w| w.parse().unwrap()),
        slide: slide.map(|s| s.parse().unwrap()),
    }
}

fn pipeline(work: &Path, workers: usize) -> PipelineConfig {
    let sink = |stream: &str| sluice_connectors::SinkConfig::new(FileSinkConfig { stream: stream.into(), path: work.join(format!("{stream}.jsonl")) });
    let text = format!(
        "state_dir = {:?}\nepoch_records = {EPOCH_RECORDS}\n[event]\nid = \"/id\"\nentity = \"/customer\"\ntime = \"/created_ms\"\n[[sources]]\ntype = \"generator\"\nname = \"x\"\n",
        work.join("state")
    );
    let mut config: PipelineConfig = toml::from_str(&text).unwrap();
    config.workers = workers;
    config.event = payment_schema();
    config.sources = vec![SourceConfig::new(generator())];
    config.dedup.ttl = "10s".parse().unwrap();
    config.order.lateness = "2s".parse().unwrap();
    config.order.late = LatePolicy::Side;
    config.features = vec![
        feature("n_1s", FeatureOp::Count, false, Some("1s"), None),
        feature("sum_3s", FeatureOp::Sum, true, Some("3s"), Some("500ms")),
        feature("max_3s", FeatureOp::Max, true, Some("3s"), Some("500ms")),
        feature("mean", FeatureOp::Mean, true, None, None),
        feature("min", FeatureOp::Min, true, None, None),
        feature("last", FeatureOp::Last, true, None, None),
    ];
    config.sinks = ["features", "dead_letters", "late", "conflicts"].iter().map(|s| sink(s)).collect();
    config.validate().unwrap();
    config
}

fn expected() -> RefOutput {
    let g = generator();
    let partitions: Vec<Vec<Vec<u8>>> = (0..PARTITIONS)
        .map(|p| {
            let r = GeneratorReader::new(&g, p);
            let n = EVENTS / u64::from(PARTITIONS);
            (0..n).map(|i| r.record(i)).collect()
        })
        .collect();
    let decoder = Decoder::new(&payment_schema()).unwrap();
    let config = RefConfig {
        epoch_records: EPOCH_RECORDS,
        lateness_ms: 2_000,
        ttl_ms: 10_000,
        features: vec![
            RefFeature::CountTumbling(1_000),
            RefFeature::SumSliding(3_000, 500),
            RefFeature::MaxSliding(3_000, 500),
            RefFeature::MeanAll,
            RefFeature::MinAll,
            RefFeature::Last,
        ],
    };
    reference::run(&partitions, &decoder, &config)
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap()
}

fn origin(v: &serde_json::Value) -> (u64, u64) {
    (v["partition"].as_u64().unwrap(), v["offset"].as_u64().unwrap())
}

fn close(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0),
        (None, None) => true,
        _ => false,
    }
}

fn check(workers: usize) {
    let work = tempfile::tempdir().unwrap();
    let config = pipeline(work.path(), workers);
    let summary = run(&config);
    let want = expected();
    assert_eq!(summary.records_in, EVENTS);
    // The input is a real mix, or the comparison proves little.
    assert!(
        want.duplicates > 1_000 && want.conflicts.len() > 300 && want.late.len() > 300 && want.dead_letters.len() > 300,
        "{} {} {} {}",
        want.duplicates,
        want.conflicts.len(),
        want.late.len(),
        want.dead_letters.len()
    );

    // dedup: the same conflicts, in the same order, and the same number of duplicates.
    let conflicts: Vec<((u64, u64), i64)> =
        lines(&work.path().join("conflicts.jsonl")).iter().map(|l| json(l)).map(|v| (origin(&v), v["first_time_ms"].as_i64().unwrap())).collect();
    let want_conflicts: Vec<((u64, u64), i64)> = want.conflicts.iter().map(|(o, t)| ((u64::from(o.partition), o.offset), *t)).collect();
    assert_eq!(conflicts, want_conflicts, "conflicts with {workers} workers");
    assert_eq!(summary.duplicates, want.duplicates);

    // order: the same late events, behind the same watermarks.
    let late: Vec<((u64, u64), i64)> =
        lines(&work.path().join("late.jsonl")).iter().map(|l| json(l)).map(|v| (origin(&v), v["watermark_ms"].as_i64().unwrap())).collect();
    let want_late: Vec<((u64, u64), i64)> = want.late.iter().map(|(o, w)| ((u64::from(o.partition), o.offset), *w)).collect();
    assert_eq!(late, want_late, "late events with {workers} workers");
    let dead: Vec<(u64, u64)> = lines(&work.path().join("dead_letters.jsonl")).iter().map(|l| origin(&json(l))).collect();
    let want_dead: Vec<(u64, u64)> = want.dead_letters.iter().map(|o| (u64::from(o.partition), o.offset)).collect();
    assert_eq!(dead, want_dead);

    // order and features: the same events in the same order, with the same values.
    let features = lines(&work.path().join("features.jsonl"));
    assert_eq!(features.len(), want.features.len(), "feature records with {workers} workers");
    let names = ["n_1s", "sum_3s", "max_3s", "mean", "min", "last"];
    for (i, (line, (id, entity, time, values))) in features.iter().zip(&want.features).enumerate() {
        let v = json(line);
        assert_eq!(
            (v["id"].as_str().unwrap(), v["entity"].as_str().unwrap(), v["time_ms"].as_i64().unwrap()),
            (id.as_str(), entity.as_str(), *time),
            "record {i}"
        );
        for (name, want) in names.iter().zip(values) {
            let got = v["features"][name].as_f64();
            assert!(close(got, *want), "record {i} ({id}) feature {name}: got {got:?}, want {want:?}");
        }
    }
}

#[test]
fn pipeline_matches_the_reference_with_one_worker() {
    check(1);
}

#[test]
fn pipeline_matches_the_reference_with_four_workers() {
    check(4);
}
