//! The `sluice` binary as a user runs it.

use std::path::Path;
use std::process::Command;

fn sluice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
}

fn golden() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/golden/pipeline.toml")
}

#[test]
fn demo_without_its_model_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = sluice().current_dir(dir.path()).args(["demo", "--duration", "1s"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("pass --model PATH or --no-model"), "{err}");
}

#[test]
fn a_missing_onnx_runtime_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/fraud_lr.onnx");
    let out = sluice()
        .current_dir(dir.path())
        .env("ORT_DYLIB_PATH", dir.path().join("nowhere/libonnxruntime.so"))
        .args(["demo", "--duration", "1s", "--model"])
        .arg(&model)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("ONNX Runtime 1.31.1 not found") && err.contains("install it with `scripts/setup.sh`"), "{err}");
}

#[test]
fn demo_refuses_to_empty_a_directory_that_is_not_a_demo_output() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("mine");
    std::fs::create_dir(&out_dir).unwrap();
    std::fs::write(out_dir.join("notes.txt"), "keep me").unwrap();
    let out = sluice().args(["demo", "--duration", "1s", "--no-model", "--http", "none", "--out"]).arg(&out_dir).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("is not empty and is not a previous demo's output") && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read_to_string(out_dir.join("notes.txt")).unwrap(), "keep me");
    // A previous demo's output (its marker, or only the names a demo writes) is emptied without
    // asking; so is anything, told to.
    for (marker, old, extra) in [(true, "old.jsonl", None), (false, "features.jsonl", None), (false, "old.jsonl", Some("--force"))] {
        let demo = out_dir.join("demo");
        std::fs::create_dir_all(demo.join("state")).unwrap();
        if marker {
            std::fs::write(demo.join(".sluice-demo"), "").unwrap();
        }
        std::fs::write(demo.join(old), "").unwrap();
        let out =
            sluice().args(["demo", "--duration", "1s", "--rate", "1000", "--no-model", "--http", "none", "--out"]).arg(&demo).args(extra).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(!demo.join("old.jsonl").exists() && demo.join("features.jsonl").exists() && demo.join(".sluice-demo").exists());
        std::fs::remove_dir_all(&demo).unwrap();
    }
    let home = sluice()
        .env("HOME", dir.path())
        .args(["demo", "--duration", "1s", "--no-model", "--http", "none", "--force", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&home.stderr).contains("is the root or the home directory"), "{}", String::from_utf8_lossy(&home.stderr));
    assert_eq!(std::fs::read_to_string(out_dir.join("notes.txt")).unwrap(), "keep me");
}

#[test]
fn user_errors_have_no_backtrace_and_logs_to_a_file_no_colour() {
    let out = sluice().env("RUST_BACKTRACE", "1").args(["validate", "/nonexistent/pipeline.toml"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.starts_with("Error: invalid pipeline") && !err.contains("backtrace"), "{err}");
    // stderr is a pipe here: the log of a failing demo carries no escape codes.
    let dir = tempfile::tempdir().unwrap();
    let out = sluice().current_dir(dir.path()).args(["demo", "--duration", "1s", "--rate", "1000", "--no-model", "--http", "none"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("INFO") && !err.contains('\u{1b}'), "{err}");
}

#[test]
fn validate_accepts_the_golden_pipeline() {
    let out = sluice().arg("validate").arg(golden()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(": valid"), "{text}");
    assert!(text.contains("workers 1, 2 source partition(s), 6 feature(s)"), "{text}");
}

#[test]
fn validate_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(golden()).unwrap().replace("lateness = \"10s\"", "lateness = \"10 parsecs\"");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).unwrap();
    // The sources' files are relative to the pipeline file: copy them too.
    for part in ["part0.jsonl", "part1.jsonl"] {
        std::fs::copy(golden().with_file_name(part), dir.path().join(part)).unwrap();
    }
    let out = sluice().arg("validate").arg(&path).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("order.lateness: `10 parsecs`: unknown unit `parsecs`"), "{err}");
}

#[test]
fn demo_shows_progress_and_writes_every_output() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("demo");
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/fraud_lr.onnx");
    let out = sluice().args(["demo", "--duration", "3s", "--rate", "4000", "--out"]).arg(&out_dir).arg("--model").arg(&model).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("ev/s") && stderr.contains("watermark lag"), "no progress line: {stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    // 3 s at 4000 events/s.
    assert!(stdout.starts_with("sluice: 12000 records in"), "{stdout}");
    // Every feature record is scored (the standard features are all defined once an event has
    // an amount) or unscored with a reason.
    let count = |stream: &str| std::fs::read_to_string(out_dir.join(format!("{stream}.jsonl"))).unwrap().lines().count();
    assert_eq!(count("scores") + count("unscored"), count("features"));
    assert!(count("scores") > 0);
    for stream in ["features", "scores", "dead_letters", "late", "conflicts"] {
        let text = std::fs::read_to_string(out_dir.join(format!("{stream}.jsonl"))).unwrap();
        assert!(!text.is_empty(), "{stream} is empty");
        for line in text.lines() {
            serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{stream}: not JSON ({e}): {line}"));
        }
    }
}

#[test]
fn drift_reference_files_are_written_from_samples_and_checked_against_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = "state_dir = \"state\"\n[event]\nid = \"/id\"\nentity = \"/customer\"\ntime = \"/created\"\n[event.numbers]\namount = \"/amount\"\n[event.strings]\ncurrency = \"/currency\"\n[[sources]]\ntype = \"file\"\nname = \"p\"\npath = \"in.jsonl\"\n[[features]]\nname = \"amount_last\"\nop = \"last\"\nfield = \"amount\"\n";
    std::fs::write(d.join("in.jsonl"), "").unwrap();
    let drift = "[drift]\nfeatures = [\"amount_last\"]\ncategories = [\"currency\"]\n";
    std::fs::write(d.join("p.toml"), format!("{base}{drift}")).unwrap();
    let features: String = (1..=100).map(|x| format!("{{\"id\":\"e{x}\",\"features\":{{\"amount_last\":{x}.0}}}}\n")).collect();
    std::fs::write(d.join("features.jsonl"), features).unwrap();
    let events: String = (0..10)
        .map(|i| format!("{{\"id\":\"e{i}\",\"customer\":\"c\",\"created\":{i},\"currency\":\"{}\"}}\n", if i < 7 { "EUR" } else { "USD" }))
        .chain(std::iter::once("not json\n".to_string()))
        .collect();
    std::fs::write(d.join("events.jsonl"), events).unwrap();

    let out = sluice()
        .current_dir(d)
        .args(["drift", "reference", "p.toml", "--features", "features.jsonl", "--events", "events.jsonl", "--out", "ref.json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "ref.json: reference of amount_last: 100, currency: 10 (1 lines skipped)\n");
    let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("ref.json")).unwrap()).unwrap();
    assert_eq!(reference["summaries"][1]["Categories"], serde_json::json!({"EUR": 7, "USD": 3}));

    // A pipeline naming the file validates; one monitoring other columns is told why not.
    std::fs::write(d.join("q.toml"), format!("{base}{drift}[drift.reference]\nfile = \"ref.json\"\n")).unwrap();
    let ok = sluice().current_dir(d).args(["validate", "q.toml"]).output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    std::fs::write(d.join("r.toml"), format!("{base}[drift]\nfeatures = [\"amount_last\"]\n[drift.reference]\nfile = \"ref.json\"\n")).unwrap();
    let bad = sluice().current_dir(d).args(["validate", "r.toml"]).output().unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8(bad.stderr).unwrap();
    assert!(err.contains("drift.reference") && err.contains("is for columns"), "{err}");
    // Without a sample of a column: a clear error.
    let none = sluice().current_dir(d).args(["drift", "reference", "p.toml", "--features", "features.jsonl", "--out", "x.json"]).output().unwrap();
    assert!(!none.status.success());
    assert!(String::from_utf8(none.stderr).unwrap().contains("no sample for `currency`"));
}

#[test]
fn features_get_reads_a_running_pipeline() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let mut child = sluice()
        .current_dir(dir.path())
        .args(["demo", "--duration", "5s", "--rate", "4000", "--no-model", "--http", "127.0.0.1:0", "--out"])
        .arg(&out_dir)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut lines = stderr.lines();
    let addr = loop {
        let line = lines.next().expect("the demo says where its metrics are").unwrap();
        if let Some(rest) = line.split("metrics at http://").nth(1) {
            break rest.trim_end_matches("/metrics").to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    // An entity with committed features.
    let entity = loop {
        let text = std::fs::read_to_string(out_dir.join("features.jsonl")).unwrap_or_default();
        if let Some(line) = text.lines().next() {
            break serde_json::from_str::<serde_json::Value>(line).unwrap()["entity"].as_str().unwrap().to_string();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    // The file sink writes an epoch's lines before the epoch's state commit: the entity is
    // served once that commit lands, a moment later.
    let mut tries = 0;
    let got = loop {
        let got = sluice().args(["features", "get", &entity, "--server", &addr, "--names", "txn_count_1m,amount_last"]).output().unwrap();
        let not_yet = String::from_utf8_lossy(&got.stderr).contains("HTTP 404");
        tries += 1;
        if got.status.success() || !not_yet || tries == 100 {
            break got;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(got.status.success(), "{}", String::from_utf8_lossy(&got.stderr));
    let v: serde_json::Value = serde_json::from_slice(&got.stdout).unwrap();
    assert_eq!(v["entity"], entity.as_str());
    let names: Vec<&String> = v["features"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["amount_last", "txn_count_1m"]);
    let missing = sluice().args(["features", "get", "nobody", "--server", &addr]).output().unwrap();
    assert!(!missing.status.success());
    let err = String::from_utf8(missing.stderr).unwrap();
    assert!(err.contains("unknown entity `nobody`") && err.contains("HTTP 404"), "{err}");
    assert!(child.wait().unwrap().success());

    // The demo has stopped: `sluice serve` answers from its state, with the commit's age.
    let mut serve = sluice()
        .args(["serve", "--listen", "127.0.0.1:0", "--demo"])
        .arg(&out_dir)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(serve.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("sluice serve says where it listens").unwrap();
        if let Some(rest) = line.split(" at http://").nth(1) {
            break rest.split('/').next().unwrap().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let last = std::fs::read_to_string(out_dir.join("features.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["entity"] == entity.as_str())
        .max_by_key(|v| v["time_ms"].as_i64())
        .unwrap();
    let got = sluice().args(["features", "get", &entity, "--server", &addr]).output().unwrap();
    assert!(got.status.success(), "{}", String::from_utf8_lossy(&got.stderr));
    let v: serde_json::Value = serde_json::from_slice(&got.stdout).unwrap();
    // The demo's `stale_after` is 5 s: stale or not by the commit's age.
    let age = v["age_ms"].as_i64().unwrap();
    assert_eq!((v["stale"].as_bool(), v["last_event_ms"].as_i64()), (Some(age > 5_000), last["time_ms"].as_i64()), "{v}");
    for (name, value) in last["features"].as_object().unwrap() {
        assert_eq!(v["features"][name].as_f64(), value.as_f64(), "{name}");
    }
    std::process::Command::new("kill").args(["-INT", &serve.id().to_string()]).status().unwrap();
    assert!(serve.wait().unwrap().success());
    let no_pipeline = sluice().args(["serve", "--demo", "/nonexistent/sluice-demo"]).output().unwrap();
    let err = String::from_utf8(no_pipeline.stderr).unwrap();
    assert!(!no_pipeline.status.success() && err.contains("there is no state here: run the pipeline first"), "{err}");
}

/// Every record of a topic (read from the start until nothing comes for 2 s).
fn consume_topic(brokers: &str, topic: &str) -> Vec<Vec<u8>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "cli-test")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let metadata = consumer.fetch_metadata(Some(topic), std::time::Duration::from_secs(10)).unwrap();
    let mut list = rdkafka::TopicPartitionList::new();
    for p in 0..metadata.topics()[0].partitions().len() as i32 {
        list.add_partition_offset(topic, p, rdkafka::Offset::Beginning).unwrap();
    }
    consumer.assign(&list).unwrap();
    let mut out = Vec::new();
    let mut last = std::time::Instant::now();
    while last.elapsed() < std::time::Duration::from_secs(2) {
        if let Some(m) = consumer.poll(std::time::Duration::from_millis(100)) {
            out.push(m.unwrap().payload().unwrap_or_default().to_vec());
            last = std::time::Instant::now();
        }
    }
    out
}

/// `sluice demo --kafka`: the generator feeds a topic, the pipeline reads it and writes every
/// stream to topics; once everything is fed the source drains and the demo ends, with every
/// feature record in the features topic once (the broker of `scripts/kafka.sh start`).
#[test]
fn demo_runs_topic_to_topic_through_the_project_broker() {
    let brokers = std::env::var("SLUICE_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".into());
    let dir = tempfile::tempdir().unwrap();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let prefix = format!("cli-{nanos}-");
    let out = sluice()
        .current_dir(dir.path())
        .args([
            "demo",
            "--no-model",
            "--http",
            "none",
            "--duration",
            "2s",
            "--rate",
            "5000",
            "--delivery",
            "at_least_once",
            "--kafka",
            &brokers,
            "--topic-prefix",
            &prefix,
        ])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("fed 10000 records to Kafka"), "{stderr}");
    assert!(stdout.contains("sluice: 10000 records in"), "{stdout}");
    let features: usize = stdout
        .split("feature records ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("the summary names the feature records");
    assert!(stdout.contains(&format!("features       → topic {prefix}features on {brokers}")), "{stdout}");
    let got = consume_topic(&brokers, &format!("{prefix}features"));
    assert_eq!(got.len(), features, "every feature record in the topic");
    let mut ids: Vec<String> = got.iter().map(|g| serde_json::from_slice::<serde_json::Value>(g).unwrap()["id"].as_str().unwrap().to_string()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), features, "each once");
    // The generator's 10,000 records less its duplicates and malformed ones: most become features.
    assert!(features > 9_000, "{features} feature records");
}

#[test]
fn demo_reconcile_writes_a_changelog_and_prints_the_totals() {
    let dir = tempfile::tempdir().unwrap();
    let out = sluice().current_dir(dir.path()).args(["demo", "--reconcile", "--payments", "3000", "--out", "rdemo"]).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("3000 payments"), "{stderr}");
    // 3,000 payments: every one has a row at the end, and the totals say so.
    let counts = stdout.lines().find(|l| l.starts_with("payments by status:")).unwrap_or_else(|| panic!("{stdout}"));
    let total: i64 = counts.split_whitespace().filter_map(|w| w.parse::<i64>().ok()).sum();
    assert_eq!(total, 3000, "{stdout}");
    assert!(stdout.contains("0 dead letters"), "{stdout}");
    let changelog = std::fs::read_to_string(dir.path().join("rdemo/reconciliation.jsonl")).unwrap();
    let net: i64 = changelog.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["diff"].as_i64().unwrap()).sum();
    assert_eq!(net, 3000);
}

#[test]
fn checkpoint_inspect_shows_the_committed_positions_and_lengths() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("pipeline.toml");
    std::fs::copy(golden(), &pipeline).unwrap();
    for part in ["part0.jsonl", "part1.jsonl"] {
        std::fs::copy(golden().with_file_name(part), dir.path().join(part)).unwrap();
    }
    let out = sluice().current_dir(dir.path()).arg("run").arg(&pipeline).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let out = sluice().current_dir(dir.path()).args(["checkpoint", "inspect", "--json"]).arg(&pipeline).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // A finished run: each file source is committed at its end (its length in bytes), each
    // file sink at the length of its file.
    let positions: Vec<u64> = v["positions"].as_array().unwrap().iter().map(|p| p["position"].as_u64().unwrap()).collect();
    let lengths: Vec<u64> = ["part0.jsonl", "part1.jsonl"].iter().map(|p| std::fs::metadata(dir.path().join(p)).unwrap().len()).collect();
    assert_eq!(positions, lengths, "{v}");
    let sinks = v["file_sinks"].as_array().unwrap();
    assert_eq!(sinks.len(), 4, "{v}");
    for s in sinks {
        let name = s["sink"].as_str().unwrap().strip_prefix("file:").unwrap();
        let len = std::fs::metadata(dir.path().join("out").join(format!("{name}.jsonl"))).unwrap().len();
        assert_eq!(s["bytes"].as_u64().unwrap(), len, "{name}");
    }
    assert_eq!(v["layout"], "sluice-state/2");
    let resume = v["resume_epoch"].as_u64().unwrap();
    assert!(resume > 0 && v["committed_epoch"].as_u64() == Some(resume - 1), "{v}");
    assert!(v["tables"].as_array().unwrap().iter().any(|t| t["name"] == "features"), "{v}");

    let out = sluice().current_dir(dir.path()).args(["checkpoint", "list"]).arg(&pipeline).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(&format!("epoch {} committed at", resume - 1)), "{text}");
    assert!(text.contains(&format!("={}", lengths[0])) && text.contains(&format!("={}", lengths[1])), "{text}");

    // No state there: a clear error.
    let out = sluice().current_dir(dir.path()).args(["checkpoint", "inspect", "--state", "nowhere"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("there is no state here"), "{err}");
}

/// `validate` refuses what `run` would refuse at start and can be known without acting: a
/// model that does not fit or is not ONNX, a missing ONNX Runtime, an output or state path that
/// cannot be written, a listen address that is not one. Each names its key.
#[test]
fn validate_checks_what_run_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    for part in ["part0.jsonl", "part1.jsonl"] {
        std::fs::copy(golden().with_file_name(part), dir.path().join(part)).unwrap();
    }
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
    std::fs::write(dir.path().join("not_onnx.onnx"), "this is not a model").unwrap();
    std::fs::write(dir.path().join("a_file"), "x").unwrap();
    std::fs::create_dir(dir.path().join("a_dir")).unwrap();
    let golden_text = std::fs::read_to_string(golden()).unwrap();
    let features = r#"["n_1m", "sum_5m", "max_5m", "mean_all", "min_all", "last"]"#;
    let lr = models.join("fraud_lr.onnx").display().to_string();
    let validate = |edit: &dyn Fn(&str) -> String| {
        let path = dir.path().join("p.toml");
        std::fs::write(&path, edit(&golden_text)).unwrap();
        let out = sluice().arg("validate").arg(&path).output().unwrap();
        (out.status.success(), String::from_utf8(out.stdout).unwrap() + &String::from_utf8(out.stderr).unwrap())
    };
    let with_model = |model: String| move |t: &str| format!("{t}\n[model]\n{model}\n");
    type Edit = Box<dyn Fn(&str) -> String>;
    let cases: Vec<(Edit, String)> = vec![
        (Box::new(with_model(format!("path = \"{lr}\"\ninputs = [\"n_1m\"]"))), "model.inputs: the model takes 6 feature columns, but 1 are listed".into()),
        (Box::new(with_model(format!("path = \"not_onnx.onnx\"\ninputs = {features}"))), "model.path: ".into()),
        (
            Box::new(with_model(format!("path = \"{lr}\"\ninputs = {features}\nlibrary = \"/nonexistent/libonnxruntime.so\""))),
            "model.library: ONNX Runtime 1.31.1 not found".into(),
        ),
        (
            Box::new(|t: &str| t.replace("path = \"out/features.jsonl\"", "path = \"a_dir\"")),
            format!("sinks[0].path: {}/a_dir is a directory, not a file", dir.path().display()),
        ),
        (
            Box::new(|t: &str| t.replace("path = \"out/late.jsonl\"", "path = \"a_file/late.jsonl\"")),
            format!("sinks[2].path: {0}/a_file/late.jsonl cannot be created: {0}/a_file is a file, not a directory", dir.path().display()),
        ),
        (
            Box::new(|t: &str| t.replace("state_dir = \"state\"", "state_dir = \"a_file\"")),
            format!("state_dir: {}/a_file is a file, not a directory", dir.path().display()),
        ),
        (
            Box::new(|t: &str| format!("{t}\n[server]\nlisten = \"8787\"\n")),
            "server.listen: `8787` is not an address like 127.0.0.1:8787 or localhost:8787".into(),
        ),
    ];
    for (edit, expected) in &cases {
        let (ok, text) = validate(edit.as_ref());
        assert!(!ok && text.contains(expected.as_str()), "expected {expected:?} in:\n{text}");
    }
    // The same model with its six inputs: valid, and what is left for the start is named.
    let (ok, text) = validate(&with_model(format!("path = \"{lr}\"\ninputs = {features}")));
    assert!(ok, "{text}");
    assert!(text.contains("checked at start only: listen addresses bound"), "{text}");
}
