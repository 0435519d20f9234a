//! Hot reload of the model mid-stream: records of epochs before the switch carry v1, after it
//! v2; nothing is scored twice or skipped.

use std::path::Path;
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
    let options = DemoOptions { duration: Duration::from_secs(3), rate: 4_000, workers: 2, events: 0, model: Some(model.clone()) };
    let mut config = demo_config(&work.path().join("out"), &options);
    config.model.as_mut().unwrap().reload_ms = 50;
    // Release events while the run goes on, so that both versions score some.
    config.order.lateness = "200ms".into();
    let swap = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1_500));
        // Replace atomically, as a deployment would.
        let next = model.with_extension("next");
        std::fs::copy(models().join("fraud_gbt.onnx"), &next).unwrap();
        std::fs::rename(&next, &model).unwrap();
    });
    let summary = sluice::run(&config, &RunControl::default()).unwrap();
    swap.join().unwrap();

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
