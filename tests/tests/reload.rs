//! Models in a running pipeline. Hot reload mid-stream: records of epochs before the switch carry v1, after it
//! v2; nothing is scored twice or skipped; a version that does not load changes nothing. A
//! shadow model scores the same events into its own output.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sluice::demo::{demo_config, DemoOptions};
use sluice::RunControl;
use sluice_tests::lines;

fn models() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

#[test]
fn a_new_model_version_takes_effect_at_one_epoch_boundary() {
    let work = tempfile::tempdir().unwrap();
    let model = work.path().join("model.onnx");
    std::fs::copy(models().join("fraud_lr.onnx"), &model).unwrap();
    let options = DemoOptions { duration: Duration::from_secs(3), rate: 4_000, workers: 2, events: 0, model: Some(model.clone()), shadow: None, http: None };
    let mut config = demo_config(&work.path().join("out"), &options);
    config.model.as_mut().unwrap().reload_ms = 50;
    // Release events while the run goes on, so that both versions score some.
    config.order.lateness = "200ms".parse().unwrap();
    let swap = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1_500));
        // Replace atomically, as a deployment would.
        let next = model.with_extension("next");
        std::fs::copy(models().join("fraud_gbt.onnx"), &next).unwrap();
        std::fs::rename(&next, &model).unwrap();
    });
    let control = RunControl::default();
    let summary = sluice::run(&config, &control).unwrap();
    swap.join().unwrap();
    assert_eq!(control.metrics.model.reloads.load(Ordering::Relaxed), 1);

    let out = work.path().join("out");
    let scores: Vec<serde_json::Value> = lines(&out.join("scores.jsonl")).iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    let features = lines(&out.join("features.jsonl"));
    let unscored = lines(&out.join("unscored.jsonl"));
    assert_eq!(scores.len() + unscored.len(), features.len(), "every feature record is scored or unscored once");
    assert_eq!(summary.scored as usize, scores.len());
    let mut ids: Vec<&str> = scores.iter().map(|s| s["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), scores.len(), "no event is scored twice");

    // Output is in epoch order; a switch at an epoch boundary shows as one change of version.
    let versions: Vec<&str> = scores.iter().map(|s| s["version"].as_str().unwrap()).collect();
    let changes = versions.windows(2).filter(|w| w[0] != w[1]).count();
    assert_eq!(changes, 1, "exactly one switch of version");
    let (v1, v2) = (versions[0], versions[versions.len() - 1]);
    assert_ne!(v1, v2);
    assert!(versions.iter().filter(|v| **v == v1).count() > 100 && versions.iter().filter(|v| **v == v2).count() > 100);
}

#[test]
fn a_new_version_that_does_not_load_is_reported_and_the_old_one_keeps_scoring() {
    let work = tempfile::tempdir().unwrap();
    let model = work.path().join("model.onnx");
    std::fs::copy(models().join("fraud_lr.onnx"), &model).unwrap();
    let options = DemoOptions { duration: Duration::from_secs(2), rate: 4_000, workers: 2, events: 0, model: Some(model.clone()), shadow: None, http: None };
    let mut config = demo_config(&work.path().join("out"), &options);
    config.model.as_mut().unwrap().reload_ms = 50;
    config.order.lateness = "200ms".parse().unwrap();
    let swap = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        // Half a model file: what a torn copy would leave.
        let mut bytes = std::fs::read(models().join("fraud_gbt.onnx")).unwrap();
        bytes.truncate(bytes.len() / 2);
        let next = model.with_extension("next");
        std::fs::write(&next, bytes).unwrap();
        std::fs::rename(&next, &model).unwrap();
    });
    let control = RunControl::default();
    let summary = sluice::run(&config, &control).unwrap();
    swap.join().unwrap();
    assert_eq!(control.metrics.model.reload_failures.load(Ordering::Relaxed), 1, "the bad file was seen, once");
    assert_eq!(control.metrics.model.reloads.load(Ordering::Relaxed), 0);

    let out = work.path().join("out");
    let scores: Vec<serde_json::Value> = lines(&out.join("scores.jsonl")).iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    let features = lines(&out.join("features.jsonl"));
    let unscored = lines(&out.join("unscored.jsonl"));
    assert_eq!(scores.len() + unscored.len(), features.len());
    assert_eq!(summary.scored as usize, scores.len());
    assert!(scores.len() > 4_000, "the run scored through the bad version: {}", scores.len());
    let first = scores[0]["version"].as_str().unwrap();
    assert!(scores.iter().all(|s| s["version"].as_str().unwrap() == first), "one version scored everything");
}

#[test]
fn a_shadow_model_scores_every_scored_event_next_to_the_primary() {
    let work = tempfile::tempdir().unwrap();
    let options = DemoOptions {
        duration: Duration::from_secs(1),
        rate: 0,
        workers: 2,
        events: 20_000,
        model: Some(models().join("fraud_lr.onnx")),
        shadow: Some(models().join("fraud_gbt.onnx")),
        http: None,
    };
    let config = demo_config(&work.path().join("out"), &options);
    let summary = sluice::run(&config, &RunControl::default()).unwrap();

    let out = work.path().join("out");
    let parse = |name: &str| -> Vec<serde_json::Value> { lines(&out.join(name)).iter().map(|l| serde_json::from_str(l).unwrap()).collect() };
    let (scores, shadow, unscored) = (parse("scores.jsonl"), parse("shadow_scores.jsonl"), parse("unscored.jsonl"));
    assert!(scores.len() > 15_000, "{}", scores.len());
    assert_eq!(shadow.len(), scores.len());
    assert_eq!(summary.shadow_scored as usize, shadow.len());
    // Both outputs are sorted the same way per epoch, so they pair up line by line.
    for (s, p) in shadow.iter().zip(&scores) {
        assert_eq!(s["id"], p["id"]);
        assert_eq!((s["model"].as_str().unwrap(), p["model"].as_str().unwrap()), ("fraud_gbt", "fraud_lr"));
        assert_eq!(s["primary_score"], p["score"]);
        assert!(p.get("primary_score").is_none());
    }
    assert!(unscored.iter().all(|u| u["model"] == "fraud_lr"));
    let diff = summary.shadow_mean_abs_diff.unwrap();
    let want = shadow.iter().zip(&scores).map(|(s, p)| (s["score"].as_f64().unwrap() - p["score"].as_f64().unwrap()).abs()).sum::<f64>() / shadow.len() as f64;
    assert!((diff - want).abs() < 1e-6, "{diff} vs {want}");
}
