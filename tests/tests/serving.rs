//! Feature serving while the stream runs: every value served equals the feature record of the
//! entity's latest event in the committed output; responses go forward in epochs; bad requests
//! get clear errors.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use sluice::config::ServerSection;
use sluice::demo::{demo_config, DemoOptions};
use sluice::RunControl;
use sluice_tests::lines;

/// `None` when the server is gone (the run ended).
fn try_request(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> Option<(u16, serde_json::Value)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, serde_json::from_str(body).unwrap_or(serde_json::Value::Null)))
}

/// A batch request answered in Arrow IPC, turned back into the JSON form of a batch answer;
/// `None` when the server is gone.
fn try_arrow_batch(addr: std::net::SocketAddr, entities: &[String]) -> Option<serde_json::Value> {
    use arrow::array::{Array, BooleanArray, Float64Array, Int64Array, StringArray};
    let body = serde_json::json!({ "entities": entities }).to_string();
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    write!(
        s,
        "POST /v1/features:batch HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\nAccept: application/vnd.apache.arrow.stream\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes).ok()?;
    let split = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&bytes[..split]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200") && head.contains("content-type: application/vnd.apache.arrow.stream"), "{head}");
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes[split + 4..].to_vec()), None).unwrap();
    let schema = reader.schema();
    let epoch: serde_json::Value = serde_json::from_str(&schema.metadata()["epoch"]).unwrap();
    let mut results = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let col = |name: &str| batch.column(schema.index_of(name).unwrap()).clone();
        let entity = col("entity");
        let entity = entity.as_any().downcast_ref::<StringArray>().unwrap();
        let found = col("found");
        let found = found.as_any().downcast_ref::<BooleanArray>().unwrap();
        let (as_of, last) = (col("as_of_ms"), col("last_event_ms"));
        let (as_of, last) = (as_of.as_any().downcast_ref::<Int64Array>().unwrap(), last.as_any().downcast_ref::<Int64Array>().unwrap());
        for row in 0..batch.num_rows() {
            let mut features = serde_json::Map::new();
            for field in schema.fields().iter().skip(4) {
                let c = col(field.name());
                let c = c.as_any().downcast_ref::<Float64Array>().unwrap();
                features.insert(field.name().clone(), if c.is_null(row) { serde_json::Value::Null } else { serde_json::json!(c.value(row)) });
            }
            results.push(serde_json::json!({
                "entity": entity.value(row),
                "found": found.value(row),
                "as_of_ms": (!as_of.is_null(row)).then(|| as_of.value(row)),
                "last_event_ms": (!last.is_null(row)).then(|| last.value(row)),
                "features": features,
            }));
        }
    }
    assert_eq!(results.len(), entities.len());
    Some(serde_json::json!({ "epoch": epoch, "results": results }))
}

fn request(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    try_request(addr, method, path, body).expect("the server answers")
}

#[test]
fn served_values_equal_the_committed_feature_output_while_the_stream_runs() {
    let work = tempfile::tempdir().unwrap();
    let options = DemoOptions { duration: Duration::from_secs(4), rate: 8_000, workers: 2, events: 0, model: None, shadow: None, http: None };
    let mut config = demo_config(work.path(), &options);
    let mut server = ServerSection::new("127.0.0.1:0");
    server.feature_log = Some(work.path().join("served.jsonl"));
    config.server = Some(server);
    config.order.lateness = "200ms".parse().unwrap();
    config.drift = None;
    let control = RunControl::default();
    let addr_cell = Arc::clone(&control.http_addr);
    let done = Arc::new(AtomicBool::new(false));
    let finished = Arc::clone(&done);
    let checker = std::thread::spawn(move || {
        let started = Instant::now();
        let addr = loop {
            if let Some(a) = addr_cell.get() {
                break *a;
            }
            assert!(started.elapsed() < Duration::from_secs(30));
            std::thread::sleep(Duration::from_millis(5));
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut responses = Vec::new();
        while !finished.load(Ordering::Relaxed) {
            let entities: Vec<String> = (0..400).map(|_| format!("cus_{}", rng.gen_range(0..50_000))).collect();
            // Every third request in Arrow IPC; the same checks apply to both.
            if responses.len() % 3 == 2 {
                let Some(body) = try_arrow_batch(addr, &entities) else { break };
                responses.push(body);
            } else {
                let Some((status, body)) = try_request(addr, "POST", "/v1/features:batch", &serde_json::json!({ "entities": entities }).to_string()) else {
                    break;
                };
                assert_eq!(status, 200, "{body}");
                responses.push(body);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        responses
    });
    sluice::run(&config, &control).unwrap();
    done.store(true, Ordering::Relaxed);
    let responses = checker.join().unwrap();

    // The feature record of each (entity, event time), the last in output order.
    let mut expected: HashMap<(String, i64), serde_json::Value> = HashMap::new();
    for line in lines(&work.path().join("features.jsonl")) {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        expected.insert((v["entity"].as_str().unwrap().to_string(), v["time_ms"].as_i64().unwrap()), v["features"].clone());
    }
    let mut checked = 0;
    let mut last_epoch = -1i64;
    let mut latest_seen: HashMap<String, i64> = HashMap::new();
    for r in &responses {
        let Some(epoch) = r["epoch"].as_i64() else { continue };
        assert!(epoch >= last_epoch, "epochs go forward: {epoch} after {last_epoch}");
        last_epoch = epoch;
        for result in r["results"].as_array().unwrap() {
            if result["found"] != true {
                continue;
            }
            let entity = result["entity"].as_str().unwrap().to_string();
            let last = result["last_event_ms"].as_i64().unwrap();
            assert_eq!(result["as_of_ms"].as_i64(), Some(last));
            let want = expected.get(&(entity.clone(), last)).unwrap_or_else(|| panic!("{entity} served as of {last}, which no committed feature record has"));
            for (name, value) in want.as_object().unwrap() {
                assert_eq!(result["features"][name].as_f64(), value.as_f64(), "{entity} {name} at epoch {epoch}");
            }
            let seen = latest_seen.entry(entity).or_insert(i64::MIN);
            assert!(last >= *seen, "an entity's latest event does not go back");
            *seen = last;
            checked += 1;
        }
    }
    assert!(responses.len() >= 20, "{} responses while running", responses.len());
    // The feature log holds every served vector, with its epoch and as-of time.
    let log = lines(&work.path().join("served.jsonl"));
    assert_eq!(log.len(), checked);
    for line in &log {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let want = &expected[&(v["entity"].as_str().unwrap().to_string(), v["as_of_ms"].as_i64().unwrap())];
        assert_eq!(&v["features"], want, "{line}");
        assert!(v["epoch"].is_i64() && v["served_at_ms"].is_i64());
    }
    assert!(checked >= 1_000, "{checked} entities checked");
}

#[test]
fn bad_requests_get_clear_errors() {
    let work = tempfile::tempdir().unwrap();
    let options = DemoOptions { duration: Duration::from_secs(2), rate: 2_000, workers: 1, events: 0, model: None, shadow: None, http: None };
    let mut config = demo_config(work.path(), &options);
    let mut server = ServerSection::new("127.0.0.1:0");
    server.batch_max = 3;
    config.server = Some(server);
    config.drift = None;
    let control = RunControl::default();
    let addr_cell = Arc::clone(&control.http_addr);
    let checker = std::thread::spawn(move || {
        let addr = loop {
            if let Some(a) = addr_cell.get() {
                break *a;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        vec![
            request(addr, "GET", "/v1/features/nobody", ""),
            request(addr, "GET", "/v1/features/nobody?as_of=yesterday", ""),
            request(addr, "GET", "/v1/features/nobody?names=colour", ""),
            request(addr, "POST", "/v1/features:batch", r#"{"entities": ["a", "b", "c", "d"]}"#),
            request(addr, "POST", "/v1/features:batch", r#"{"entities": ["a""#),
            request(addr, "POST", "/v1/features:batch", r#"{"entities": ["a"], "names": ["amount_last"]}"#),
        ]
    });
    sluice::run(&config, &control).unwrap();
    let out = checker.join().unwrap();
    assert_eq!(out[0].0, 404);
    assert_eq!(out[0].1["error"], "unknown entity `nobody`: no event of it is committed");
    assert_eq!(out[1].0, 400);
    assert_eq!(out[1].1["error"], "as_of `yesterday` is not a time in ms since the Unix epoch");
    assert_eq!(out[2].0, 400);
    assert!(out[2].1["error"].as_str().unwrap().starts_with("unknown feature `colour`"));
    assert_eq!(out[3].0, 413);
    assert_eq!(out[3].1["error"], "4 entities in one batch; at most 3");
    assert_eq!(out[4].0, 400);
    assert!(out[4].1["error"].as_str().unwrap().starts_with("the body must be"));
    assert_eq!(out[5].0, 200);
    assert_eq!(out[5].1["results"][0], serde_json::json!({ "entity": "a", "found": false }));
}

/// `sluice serve`'s path: a follower of the state directory opened while the pipeline runs
/// catches up with its commits, and after the pipeline stops answers with the last committed
/// values, flagged stale with their age.
#[test]
fn a_follower_serves_the_last_commit_after_the_pipeline_stops() {
    let work = tempfile::tempdir().unwrap();
    let options = DemoOptions { duration: Duration::from_secs(3), rate: 4_000, workers: 2, events: 0, model: None, shadow: None, http: None };
    let mut config = demo_config(work.path(), &options);
    config.drift = None;
    let state_dir = config.state_dir.clone();
    let run = {
        let config = config.clone();
        std::thread::spawn(move || sluice::run(&config, &RunControl::default()).unwrap())
    };
    let started = Instant::now();
    while !state_dir.join("CURRENT").exists() {
        assert!(started.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(5));
    }
    // Opened early: what it serves at the end it learned by catching up.
    let reader = sluice_state::StateReader::follow(&state_dir).unwrap();
    let early_epoch = reader.view().snapshot().resume_epoch().unwrap();
    let summary = run.join().unwrap();
    std::thread::sleep(sluice_state::FOLLOW_INTERVAL * 3);
    assert!(summary.resume_epoch > early_epoch + 5, "the follower opened mid-run ({early_epoch} of {})", summary.resume_epoch);

    let mut section = ServerSection::new("127.0.0.1:0");
    section.stale_after = "1ms".parse().unwrap();
    let service = sluice::serve::FeatureService::from_config(&config, &section, reader).unwrap().unwrap();
    let server = sluice::server::Server::start(&section, None, Some(service)).unwrap();
    let addr = server.addr();

    // The final state of an entity is the feature record of its latest event.
    let mut expected: HashMap<String, (i64, serde_json::Value)> = HashMap::new();
    for line in lines(&work.path().join("features.jsonl")) {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let time = v["time_ms"].as_i64().unwrap();
        let e = expected.entry(v["entity"].as_str().unwrap().to_string()).or_insert((i64::MIN, serde_json::Value::Null));
        if time >= e.0 {
            *e = (time, v["features"].clone());
        }
    }
    let mut entities: Vec<&String> = expected.keys().collect();
    entities.sort();
    assert!(entities.len() > 1_000, "{} entities", entities.len());
    for chunk in entities.chunks(1_000) {
        let (status, body) = request(addr, "POST", "/v1/features:batch", &serde_json::json!({ "entities": chunk }).to_string());
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["epoch"].as_u64(), Some(summary.resume_epoch - 1));
        assert_eq!(body["stale"], true);
        assert!(body["age_ms"].as_i64().unwrap() >= (sluice_state::FOLLOW_INTERVAL * 3).as_millis() as i64, "{}", body["age_ms"]);
        for result in body["results"].as_array().unwrap() {
            let entity = result["entity"].as_str().unwrap();
            let (time, features) = &expected[entity];
            assert_eq!((result["found"].as_bool(), result["last_event_ms"].as_i64()), (Some(true), Some(*time)), "{entity}");
            for (name, value) in features.as_object().unwrap() {
                assert_eq!(result["features"][name].as_f64(), value.as_f64(), "{entity} {name}");
            }
        }
    }
    let (status, body) = request(addr, "GET", "/v1/features/cus_nobody", "");
    assert_eq!((status, body["error"].as_str()), (404, Some("unknown entity `cus_nobody`: no event of it is committed")));
    // No pipeline in the process: /metrics has the server's requests only.
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").unwrap();
    let mut metrics = String::new();
    s.read_to_string(&mut metrics).unwrap();
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(!metrics.contains("sluice_records_in_total"), "{metrics}");
    assert!(metrics.contains("\nsluice_http_requests_total{route=\"/v1/features/{entity}\",status=\"404\"} 1\n"), "{metrics}");
}

/// Sends `raw` on a new connection and reads until the server closes it (at most 10 s): what
/// came back and how long the server took to close.
fn exchange(addr: std::net::SocketAddr, raw: &[u8]) -> (String, Duration) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    (String::from_utf8_lossy(&out).to_string(), started.elapsed())
}

/// The status and the JSON body of a whole answer.
fn answer(text: &str) -> (u16, serde_json::Value) {
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no answer: {text:?}"));
    assert!(head.to_ascii_lowercase().contains("content-type: application/json"), "{head}");
    (head.split_whitespace().nth(1).unwrap().parse().unwrap(), serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}")))
}

/// Slow and idle clients are cut off as on the webhook route, too many connections are
/// refused, and every error answer is JSON; every request is counted on `/metrics`.
#[test]
fn the_feature_server_limits_clients_and_answers_every_error_in_json() {
    let work = tempfile::tempdir().unwrap();
    let options = DemoOptions { duration: Duration::ZERO, rate: 0, workers: 1, events: 500, model: None, shadow: None, http: None };
    let mut config = demo_config(work.path(), &options);
    config.drift = None;
    sluice::run(&config, &RunControl::default()).unwrap();
    let mut section = ServerSection::new("localhost:0");
    section.header_timeout = "400ms".parse().unwrap();
    section.body_timeout = "400ms".parse().unwrap();
    section.body_bytes_max = 1024;
    let service = |section: &ServerSection| {
        sluice::serve::FeatureService::from_config(&config, section, sluice_state::StateReader::follow(&config.state_dir).unwrap()).unwrap().unwrap()
    };
    let server = sluice::server::Server::start(&section, None, Some(service(&section))).unwrap();
    let addr = server.addr();
    assert_eq!(addr.ip(), std::net::IpAddr::from([127, 0, 0, 1]), "localhost is resolved");

    // Half a header, then nothing: closed after the header timeout, unanswered.
    let (got, after) = exchange(addr, b"GET /v1/features/cus_1 HTTP/1.1\r\nhost: x\r\n");
    assert_eq!(got, "");
    assert!(after >= Duration::from_millis(350) && after < Duration::from_secs(5), "{after:?}");
    // A body announced and a tenth of it sent: 408 after the body timeout.
    let (got, after) = exchange(addr, b"POST /v1/features:batch HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"entities\"");
    assert_eq!(answer(&got), (408, serde_json::json!({ "error": "the body did not arrive within 400ms" })));
    assert!(after >= Duration::from_millis(350) && after < Duration::from_secs(5), "{after:?}");
    // 100 GB announced: refused at once, without waiting for it.
    let (got, after) = exchange(addr, b"POST /v1/features:batch HTTP/1.1\r\nhost: x\r\ncontent-length: 100000000000\r\n\r\n{");
    assert_eq!(answer(&got), (413, serde_json::json!({ "error": "the body is larger than 1024 bytes" })));
    assert!(after < Duration::from_millis(350), "{after:?}");

    let close = "host: x\r\nconnection: close\r\n";
    let error = |request: String| answer(&exchange(addr, request.as_bytes()).0);
    assert_eq!(
        error(format!("GET /v2/nothing HTTP/1.1\r\n{close}\r\n")),
        (404, serde_json::json!({ "error": "no route /v2/nothing: the routes are /healthz, /metrics, /v1/features/{entity} and /v1/features:batch" }))
    );
    assert_eq!(
        error(format!("DELETE /v1/features/cus_1 HTTP/1.1\r\n{close}\r\n")),
        (405, serde_json::json!({ "error": "DELETE is not allowed on /v1/features/cus_1" }))
    );
    let (status, body) = error(format!("GET /v1/features/%FF%FE HTTP/1.1\r\n{close}\r\n"));
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().starts_with("the entity in the path: "), "{body}");
    let (status, body) = error(format!("GET /v1/features/cus_1?names=amount_last&names=txn_count_1m HTTP/1.1\r\n{close}\r\n"));
    assert_eq!(status, 400);
    let message = body["error"].as_str().unwrap();
    assert!(message.starts_with("the query (?names=a,b&as_of=ms, each at most once): ") && message.contains("duplicate field `names`"), "{message}");
    let long = "a".repeat(9000);
    assert_eq!(
        error(format!("GET /v1/features/{long} HTTP/1.1\r\n{close}\r\n")),
        (414, serde_json::json!({ "error": "the request's path and query are 9013 bytes; at most 8192" }))
    );
    assert_eq!(
        error(format!("GET /v1/features/cus_1 HTTP/1.1\r\n{close}x-big: {}\r\n\r\n", "b".repeat(17000))),
        (431, serde_json::json!({ "error": "the request's headers are 17037 bytes; at most 16384" }))
    );

    // Every request counted by route and status (the 408 and 413 too; the unanswered one not).
    let (metrics, _) = exchange(addr, format!("GET /metrics HTTP/1.1\r\n{close}\r\n").as_bytes());
    let counts: Vec<&str> = metrics.lines().filter(|l| l.starts_with("sluice_http_requests_total{")).collect();
    assert_eq!(
        counts,
        [
            "sluice_http_requests_total{route=\"/v1/features/{entity}\",status=\"400\"} 2",
            "sluice_http_requests_total{route=\"/v1/features/{entity}\",status=\"405\"} 1",
            "sluice_http_requests_total{route=\"/v1/features/{entity}\",status=\"414\"} 1",
            "sluice_http_requests_total{route=\"/v1/features/{entity}\",status=\"431\"} 1",
            "sluice_http_requests_total{route=\"/v1/features:batch\",status=\"408\"} 1",
            "sluice_http_requests_total{route=\"/v1/features:batch\",status=\"413\"} 1",
            "sluice_http_requests_total{route=\"unmatched\",status=\"404\"} 1",
        ]
    );
    assert!(metrics.contains("sluice_http_request_duration_seconds_count{route=\"/v1/features:batch\"} 2\n"), "{metrics}");
    server.stop();

    // Two connections at most: a third is answered 503 and closed while two are open.
    section.header_timeout = "10s".parse().unwrap();
    section.max_connections = 2;
    let server = sluice::server::Server::start(&section, None, Some(service(&section))).unwrap();
    let idle: Vec<std::net::TcpStream> = (0..2).map(|_| std::net::TcpStream::connect(server.addr()).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(100));
    let (got, _) = exchange(server.addr(), format!("GET /healthz HTTP/1.1\r\n{close}\r\n").as_bytes());
    assert_eq!(answer(&got), (503, serde_json::json!({ "error": "more than 2 connections open; retry" })));
    drop(idle);
    std::thread::sleep(Duration::from_millis(100));
    let (got, _) = exchange(server.addr(), format!("GET /healthz HTTP/1.1\r\n{close}\r\n").as_bytes());
    assert!(got.starts_with("HTTP/1.1 200") && got.ends_with("ok\n"), "{got}");
}
