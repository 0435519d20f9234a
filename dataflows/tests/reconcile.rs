//! The reconciliation pipeline end to end, through `sluice run` and a pipeline file: the
//! demo's generated webhooks and ledger changes (late, duplicated, out of order, replayed,
//! disagreeing). The changelog is consistent (each retraction takes back the row in place, one
//! row per payment), its final state is the one computed here from the input files, the last
//! summary counts that state; and kill -9 at random moments with restarts changes none of it.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice::reconcile_demo::{write_inputs, DemoInputs};

const SETTLE_MS: i64 = 30_000;

fn pipeline(dir: &Path, inputs: &DemoInputs, workers: usize) -> std::path::PathBuf {
    let text = format!(
        r#"state_dir = "state"
workers = {workers}
epoch_records = 2000

[event]
id = "/id"
entity = "/data/object/id"
time = "/created"
time_format = "millis"
kind = "/type"
[event.numbers]
amount = "/data/object/amount"
[event.strings]
currency = "/data/object/currency"
status = "/data/object/status"

[[sources]]
type = "file"
name = "webhooks"
path = {provider:?}

[[sources]]
type = "file"
name = "ledger"
path = {ledger:?}

[reconcile]
provider = "webhooks"
ledger = "ledger"
settle = "{SETTLE_MS}ms"
table = "public.payments"
[reconcile.columns]
time = "updated_ms"

[[sinks]]
stream = "reconciliation"
path = "reconciliation.jsonl"

[[sinks]]
stream = "reconciliation_summary"
path = "summary.jsonl"

[[sinks]]
stream = "dead_letters"
path = "dead_letters.jsonl"
"#,
        provider = inputs.provider,
        ledger = inputs.ledger,
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// (status, provider amount, ledger amount) per payment.
type State = BTreeMap<String, (String, Option<i64>, Option<i64>)>;

/// From the input files alone: the latest provider event by (time, id), the latest ledger
/// version by LSN, each side's clock, and the status rules of the README.
fn expected(inputs: &DemoInputs) -> State {
    let mut provider: BTreeMap<String, (i64, String, i64, String, String, i64)> = BTreeMap::new();
    let mut ledger: BTreeMap<String, (u64, i64, String, String, i64)> = BTreeMap::new();
    let (mut provider_clock, mut ledger_clock) = (i64::MIN, i64::MIN);
    for line in std::fs::read_to_string(&inputs.provider).unwrap().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let o = &v["data"]["object"];
        let (t, id) = (v["created"].as_i64().unwrap(), v["id"].as_str().unwrap().to_string());
        provider_clock = provider_clock.max(t);
        let e = (t, id, o["amount"].as_i64().unwrap(), o["currency"].as_str().unwrap().to_uppercase(), o["status"].as_str().unwrap().to_string(), t);
        let slot = provider.entry(o["id"].as_str().unwrap().to_string()).or_insert_with(|| e.clone());
        let first = slot.5.min(t);
        if (e.0, &e.1) > (slot.0, &slot.1) {
            *slot = e;
        }
        slot.5 = first;
    }
    for line in std::fs::read_to_string(&inputs.ledger).unwrap().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let a = &v["after"];
        let t = a["updated_ms"].as_i64().unwrap();
        ledger_clock = ledger_clock.max(t);
        let lsn = v["source"]["lsn"].as_u64().unwrap();
        let e = (lsn, a["amount"].as_i64().unwrap(), a["currency"].as_str().unwrap().to_string(), a["status"].as_str().unwrap().to_string(), t);
        let slot = ledger.entry(a["payment_id"].as_str().unwrap().to_string()).or_insert_with(|| e.clone());
        let first = slot.4.min(t);
        if e.0 > slot.0 {
            *slot = e;
        }
        slot.4 = first;
    }
    let mut ids: Vec<&String> = provider.keys().chain(ledger.keys()).collect();
    ids.sort();
    ids.dedup();
    ids.into_iter()
        .map(|id| {
            let (p, l) = (provider.get(id), ledger.get(id));
            let status = match (p, l) {
                (Some(p), Some(l)) if p.3 != l.2 => "currency_mismatch",
                (Some(p), Some(l)) if p.2 != l.1 => "amount_mismatch",
                (Some(p), Some(l)) if p.4 != l.3 => "status_mismatch",
                (Some(_), Some(_)) => "matched",
                (Some(p), None) if ledger_clock - p.5 > SETTLE_MS => "missing_in_ledger",
                (None, Some(l)) if provider_clock - l.4 > SETTLE_MS => "missing_at_provider",
                _ => "pending",
            };
            (id.clone(), (status.to_string(), p.map(|p| p.2), l.map(|l| l.1)))
        })
        .collect()
}

/// Applies the changelog, checking that every retraction takes back the row in place and that
/// no payment has two rows; returns the final state and (insertions, retractions).
fn replay(dir: &Path) -> (State, usize, usize) {
    let mut state = State::new();
    let (mut ins, mut ret) = (0, 0);
    let mut last_epoch = 0;
    for line in std::fs::read_to_string(dir.join("reconciliation.jsonl")).unwrap().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let epoch = v["epoch"].as_u64().unwrap();
        assert!(epoch >= last_epoch, "epochs out of order: {line}");
        last_epoch = epoch;
        let id = v["payment_id"].as_str().unwrap().to_string();
        let row = (v["status"].as_str().unwrap().to_string(), v["provider"]["amount"].as_i64(), v["ledger"]["amount"].as_i64());
        match v["diff"].as_i64().unwrap() {
            -1 => {
                assert_eq!(state.remove(&id), Some(row), "a retraction of a row not in place: {line}");
                ret += 1;
            }
            1 => {
                assert_eq!(state.insert(id, row), None, "a second row for a payment: {line}");
                ins += 1;
            }
            d => panic!("diff {d}: {line}"),
        }
    }
    (state, ins, ret)
}

fn counts(state: &State) -> BTreeMap<String, i64> {
    let mut c: BTreeMap<String, i64> =
        ["matched", "amount_mismatch", "currency_mismatch", "status_mismatch", "missing_in_ledger", "missing_at_provider", "pending"]
            .iter()
            .map(|s| (s.to_string(), 0))
            .collect();
    for (status, _, _) in state.values() {
        *c.get_mut(status).unwrap() += 1;
    }
    c
}

fn last_summary(dir: &Path) -> BTreeMap<String, i64> {
    let text = std::fs::read_to_string(dir.join("summary.jsonl")).unwrap();
    let v: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    serde_json::from_value(v["counts"].clone()).unwrap()
}

fn run(config: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sluice")).current_dir(config.parent().unwrap()).arg("run").arg(config).output().unwrap()
}

#[test]
fn the_changelog_converges_to_the_reconciliation_of_the_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = write_inputs(&dir.path().join("inputs"), 20_000, 7).unwrap();
    let want = expected(&inputs);
    for workers in [1, 2] {
        let work = dir.path().join(format!("w{workers}"));
        std::fs::create_dir_all(&work).unwrap();
        let out = run(&pipeline(&work, &inputs, workers));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let (got, ins, ret) = replay(&work);
        assert_eq!(got.len(), 20_000);
        assert_eq!(got, want, "{workers} workers");
        assert_eq!(last_summary(&work), counts(&want));
        assert_eq!(std::fs::read_to_string(work.join("dead_letters.jsonl")).unwrap(), "");
        // Every status occurs, and corrections happened (late webhooks, ledger fixes).
        assert!(counts(&want).values().all(|n| *n > 0), "{:?}", counts(&want));
        assert!(ret > 1_000, "{workers} workers: {ins} insertions, {ret} retractions");
        println!("{workers} workers: {ins} insertions, {ret} retractions; final {:?}", counts(&got));
    }
}

#[test]
fn kill_9_and_restart_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = write_inputs(&dir.path().join("inputs"), 150_000, 11).unwrap();
    let want = expected(&inputs);
    let work = dir.path().join("run");
    std::fs::create_dir_all(&work).unwrap();
    let config = pipeline(&work, &inputs, 2);
    let mut kills = 0;
    // Seeded moments: 3 kills between 0.3 and 1.5 s into a run.
    let mut seed = 0x5eed_u64;
    for _ in 0..3 {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let after = Duration::from_millis(300 + (seed >> 33) % 1_200);
        let mut child =
            Command::new(env!("CARGO_BIN_EXE_sluice")).current_dir(&work).arg("run").arg(&config).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let started = Instant::now();
        while started.elapsed() < after && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(5));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
    }
    let out = run(&config);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(kills >= 2, "the run ended before the kills; give it more input ({kills} kills)");
    let (got, ins, ret) = replay(&work);
    assert_eq!(got, want);
    assert_eq!(last_summary(&work), counts(&want));
    println!("reconcile kill -9: {kills} kills, {ins} insertions, {ret} retractions, final state equal");
}

fn psql(conninfo: &str, sql: &str) -> String {
    let out = Command::new("psql").args([conninfo, "-v", "ON_ERROR_STOP=1", "-tAq", "-c", sql]).output().expect("psql (scripts/postgres.sh start installs it)");
    assert!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The ledger in PostgreSQL (the `postgres` source, wal2json): 30,000 payments in 300
/// transactions, then 3,000 amount corrections; three kill -9s of `sluice run` at seeded
/// moments and restarts; the final state is the one computed here.
#[test]
fn a_postgres_ledger_survives_kill_9_without_loss_or_repeats() {
    let server = std::env::var("SLUICE_PG_CONNINFO").unwrap_or_else(|_| "host=127.0.0.1 port=54329 user=postgres".into());
    let admin = format!("{server} dbname=postgres");
    psql(&admin, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'sluice_kill'");
    psql(&admin, "DROP DATABASE IF EXISTS sluice_pg_kill");
    psql(&admin, "CREATE DATABASE sluice_pg_kill");
    let conninfo = format!("{server} dbname=sluice_pg_kill");
    psql(&conninfo, "CREATE TABLE payments (payment_id text PRIMARY KEY, amount bigint, currency text, status text, updated_ms bigint)");
    psql(&conninfo, "SELECT 1 FROM pg_create_logical_replication_slot('sluice_kill', 'wal2json')");
    let t = 1_790_000_000_000i64;
    let n = 30_000i64;
    // Each -c its own transaction: 300 inserts of 100 rows; the ledger has amount 100 + i,
    // except that every 10th is 1 off until a later update fixes it.
    let mut script = String::new();
    for k in 0..300 {
        script.push_str(&format!(
            "INSERT INTO payments SELECT 'p' || lpad(i::text, 5, '0'), 100 + i + (CASE WHEN i % 10 = 0 THEN 1 ELSE 0 END), 'USD', 'succeeded', {t} + i FROM generate_series({}, {}) i;\n",
            k * 100,
            k * 100 + 99
        ));
    }
    script.push_str(&format!("UPDATE payments SET amount = amount - 1, updated_ms = {t} + {n} WHERE right(payment_id, 1) = '0';\n"));
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), script).unwrap();
    let out = Command::new("psql").args([conninfo.as_str(), "-v", "ON_ERROR_STOP=1", "-q", "-f"]).arg(file.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The provider: every payment but each 7th, amount 100 + i.
    let dir = tempfile::tempdir().unwrap();
    let provider = dir.path().join("provider.jsonl");
    let mut lines = String::new();
    for i in (0..n).filter(|i| i % 7 != 0) {
        lines.push_str(&format!(r#"{{"id":"e{i}","payment":"p{i:05}","created":{},"amount":{},"currency":"usd","status":"succeeded"}}"#, t + i, 100 + i));
        lines.push('\n');
    }
    std::fs::write(&provider, lines).unwrap();
    let config = dir.path().join("pipeline.toml");
    std::fs::write(
        &config,
        format!(
            r#"state_dir = "state"
workers = 2
epoch_records = 500
[event]
id = "/id"
entity = "/payment"
time = "/created"
time_format = "millis"
[event.numbers]
amount = "/amount"
[event.strings]
currency = "/currency"
status = "/status"
[[sources]]
type = "file"
name = "webhooks"
path = {provider:?}
[[sources]]
type = "postgres"
name = "ledger"
conninfo = "{conninfo}"
slot = "sluice_kill"
tables = ["public.payments"]
until = "caught_up"
[reconcile]
provider = "webhooks"
ledger = "ledger"
settle = "{SETTLE_MS}ms"
[reconcile.columns]
time = "updated_ms"
[[sinks]]
stream = "reconciliation"
path = "reconciliation.jsonl"
[[sinks]]
stream = "reconciliation_summary"
path = "summary.jsonl"
"#
        ),
    )
    .unwrap();
    let mut kills = 0;
    for after_ms in [400u64, 900, 650] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .current_dir(dir.path())
            .arg("run")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(after_ms) && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(5));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
    }
    let out = run(&config);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(kills >= 2, "the run ended before the kills ({kills} kills)");
    let (got, ins, ret) = replay(dir.path());
    // The provider's clock ends at t + n - 1; settle 30 s is longer than the whole span, so
    // the payments the provider lacks are pending; the rest match (the update fixed every 10th).
    let want: State = (0..n)
        .map(|i| {
            let status = if i % 7 == 0 { "pending" } else { "matched" };
            (format!("p{i:05}"), (status.to_string(), (i % 7 != 0).then_some(100 + i), Some(100 + i)))
        })
        .collect();
    assert_eq!(got.len(), want.len());
    assert_eq!(got, want);
    assert_eq!(last_summary(dir.path()), counts(&want));
    println!("postgres ledger kill -9: {kills} kills, {ins} insertions, {ret} retractions, final state equal");
}
