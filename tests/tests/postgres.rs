//! The `postgres` source against a real PostgreSQL 15 with wal2json (`scripts/postgres.sh
//! start`, which `make test` runs; `SLUICE_PG_CONNINFO` points elsewhere): inserts, updates,
//! deletes and a truncate come out as Debezium-shaped changes in commit order, interleaved
//! transactions included; a reader resumes after a position without loss or repeats; and a
//! reconciliation with the database as its ledger, run twice with changes in between, gives a
//! consistent changelog and the expected final state, with the slot advanced to the commit.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use sluice::{PipelineConfig, RunControl};
use sluice_connectors::cdc::postgres::{parse_lsn, PgUntil, PostgresReader, PostgresSourceConfig};
use sluice_connectors::source::{Fetched, PartitionReader, ReadStatus};

fn server() -> String {
    std::env::var("SLUICE_PG_CONNINFO").unwrap_or_else(|_| "host=127.0.0.1 port=54329 user=postgres".into())
}

/// A fresh database with a payments table; its conninfo and a client.
fn database(name: &str) -> (String, postgres::Client) {
    let mut admin = postgres::Client::connect(&format!("{} dbname=postgres", server()), postgres::NoTls)
        .unwrap_or_else(|e| panic!("no PostgreSQL at `{}` ({e}): run scripts/postgres.sh start", server()));
    // Slots from an earlier run of this test hold the database: drop both.
    for row in admin.query("SELECT slot_name FROM pg_replication_slots WHERE database = $1", &[&name]).unwrap() {
        let slot: String = row.get(0);
        admin.execute("SELECT pg_drop_replication_slot($1)", &[&slot]).unwrap();
    }
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name}")).unwrap();
    admin.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    let conninfo = format!("{} dbname={name}", server());
    let mut client = postgres::Client::connect(&conninfo, postgres::NoTls).unwrap();
    client
        .batch_execute("CREATE TABLE payments (payment_id text PRIMARY KEY, amount bigint NOT NULL, currency text NOT NULL, status text NOT NULL, updated_ms bigint NOT NULL); CREATE TABLE other (id int PRIMARY KEY)")
        .unwrap();
    (conninfo, client)
}

fn source(conninfo: &str, slot: &str) -> PostgresSourceConfig {
    PostgresSourceConfig {
        name: "ledger".into(),
        conninfo: conninfo.into(),
        slot: slot.into(),
        tables: vec!["public.payments".into()],
        until: PgUntil::CaughtUp,
    }
}

/// Everything the reader gives until it is caught up: (position, op, key, amount).
fn read_all(reader: &mut PostgresReader) -> Vec<(u64, String, String, Option<i64>)> {
    let mut out: Vec<Fetched> = Vec::new();
    while reader.read(3, &mut out).unwrap() != ReadStatus::End {}
    out.iter()
        .map(|f| {
            let v: Value = serde_json::from_slice(&f.bytes).unwrap();
            let row = if v["after"].is_null() { &v["before"] } else { &v["after"] };
            (f.offset, v["op"].as_str().unwrap().to_string(), row["payment_id"].as_str().unwrap_or("").to_string(), v["after"]["amount"].as_i64())
        })
        .collect()
}

#[test]
fn changes_come_out_in_commit_order_and_resume_after_a_position() {
    let (conninfo, mut db) = database("sluice_pg_reader");
    let config = source(&conninfo, "sluice_reader");
    config.ensure_slot().unwrap();
    // Each statement its own transaction.
    for sql in [
        "INSERT INTO payments VALUES ('p1', 100, 'USD', 'pending', 1), ('p2', 200, 'USD', 'pending', 2)",
        "UPDATE payments SET status = 'succeeded' WHERE payment_id = 'p1'",
        "INSERT INTO other VALUES (1)",
        "DELETE FROM payments WHERE payment_id = 'p2'",
    ] {
        db.execute(sql, &[]).unwrap();
    }
    // Interleaved: t1 changes first but commits after t2.
    let mut other = postgres::Client::connect(&conninfo, postgres::NoTls).unwrap();
    let mut t1 = db.transaction().unwrap();
    t1.execute("INSERT INTO payments VALUES ('p3', 300, 'USD', 'pending', 3)", &[]).unwrap();
    other.execute("INSERT INTO payments VALUES ('p4', 400, 'USD', 'pending', 4)", &[]).unwrap();
    t1.commit().unwrap();
    db.execute("TRUNCATE payments", &[]).unwrap();

    let mut reader = PostgresReader::new(&config);
    let got = read_all(&mut reader);
    let ops: Vec<(&str, &str, Option<i64>)> = got.iter().map(|(_, op, key, amount)| (op.as_str(), key.as_str(), *amount)).collect();
    assert_eq!(
        ops,
        vec![
            ("c", "p1", Some(100)),
            ("c", "p2", Some(200)),
            ("u", "p1", Some(100)),
            ("d", "p2", None),
            ("c", "p4", Some(400)),
            ("c", "p3", Some(300)),
            ("t", "", None)
        ]
    );
    // Positions: one per transaction (its commit), increasing; both rows of the first share it.
    let positions: Vec<u64> = got.iter().map(|g| g.0).collect();
    assert_eq!(positions[0], positions[1]);
    assert!(positions.windows(2).skip(1).all(|w| w[0] < w[1]), "{positions:?}");
    // The transaction on the other table came out as nothing.
    assert_eq!(reader.position(), positions[6]);

    // A reader seeking to after the update's transaction gives the rest, once.
    let mut resumed = PostgresReader::new(&config);
    resumed.seek(positions[2]).unwrap();
    let rest: Vec<(String, String)> = read_all(&mut resumed).into_iter().map(|(_, op, key, _)| (op, key)).collect();
    assert_eq!(rest, vec![("d".into(), "p2".into()), ("c".into(), "p4".into()), ("c".into(), "p3".into()), ("t".into(), "".into())]);
    // The slot was not advanced by reading: a new reader from 0 sees everything again.
    assert_eq!(read_all(&mut PostgresReader::new(&config)).len(), 7);
}

fn pipeline(dir: &Path, conninfo: &str, provider: &Path) -> PipelineConfig {
    let text = format!(
        r#"state_dir = {state:?}
epoch_records = 3
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
slot = "sluice_ledger"
tables = ["public.payments"]
until = "caught_up"
[reconcile]
provider = "webhooks"
ledger = "ledger"
settle = "10s"
table = "public.payments"
[reconcile.columns]
time = "updated_ms"
[[sinks]]
stream = "reconciliation"
path = {out:?}
"#,
        state = dir.join("state"),
        out = dir.join("reconciliation.jsonl"),
    );
    let config: PipelineConfig = toml::from_str(&text).unwrap();
    config.validate().unwrap();
    config
}

/// The changelog applied: payment → (status, ledger amount); panics on an inconsistency.
fn state(dir: &Path) -> BTreeMap<String, (String, Option<i64>)> {
    let mut s = BTreeMap::new();
    for line in std::fs::read_to_string(dir.join("reconciliation.jsonl")).unwrap().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let key = v["payment_id"].as_str().unwrap().to_string();
        let row = (v["status"].as_str().unwrap().to_string(), v["ledger"]["amount"].as_i64());
        if v["diff"] == -1 {
            assert_eq!(s.remove(&key), Some(row), "{line}");
        } else {
            assert_eq!(s.insert(key, row), None, "{line}");
        }
    }
    s
}

#[test]
fn a_reconciliation_reads_its_ledger_from_postgres_and_resumes_where_it_committed() {
    let (conninfo, mut db) = database("sluice_pg_ledger");
    let dir = tempfile::tempdir().unwrap();
    let provider = dir.path().join("provider.jsonl");
    let t = 1_790_000_000_000i64;
    let event = |id: &str, payment: &str, ms: i64, amount: i64| {
        format!(r#"{{"id":"{id}","payment":"{payment}","created":{ms},"amount":{amount},"currency":"usd","status":"succeeded"}}"#)
    };
    std::fs::write(&provider, [event("e1", "p1", t, 100), event("e2", "p2", t, 200), event("e3", "p3", t + 1, 300)].join("\n") + "\n").unwrap();
    // The slot first: logical decoding sees changes made after it exists (no initial snapshot).
    let mut slot = source(&conninfo, "sluice_ledger");
    slot.name = "ledger".into();
    slot.ensure_slot().unwrap();
    db.batch_execute(&format!(
        "INSERT INTO payments VALUES ('p1', 100, 'USD', 'succeeded', {t}), ('p2', 250, 'USD', 'succeeded', {t});
         INSERT INTO payments VALUES ('p9', 900, 'USD', 'succeeded', {t});"
    ))
    .unwrap();
    let run = || sluice::run(&pipeline(dir.path(), &conninfo, &provider), &RunControl::default()).unwrap();
    run();
    let first = state(dir.path());
    assert_eq!(
        first,
        BTreeMap::from([
            ("p1".into(), ("matched".into(), Some(100))),
            ("p2".into(), ("amount_mismatch".into(), Some(250))),
            ("p3".into(), ("pending".into(), None)),
            ("p9".into(), ("pending".into(), Some(900))),
        ])
    );
    // The slot is advanced to the committed position (the advancer's last round at the end).
    let confirmed = |db: &mut postgres::Client| -> u64 {
        let text: String = db.query_one("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'sluice_ledger'", &[]).unwrap().get(0);
        parse_lsn(&text).unwrap()
    };
    let after_first = confirmed(&mut db);
    assert!(after_first > 0);

    // More changes, then the same pipeline again: it resumes after what it committed.
    db.batch_execute(&format!(
        "UPDATE payments SET amount = 200, updated_ms = {} WHERE payment_id = 'p2';
         INSERT INTO payments VALUES ('p3', 300, 'USD', 'succeeded', {});
         DELETE FROM payments WHERE payment_id = 'p9';
         INSERT INTO payments VALUES ('p8', 800, 'USD', 'succeeded', {});",
        t + 20_000,
        t + 20_000,
        t + 20_000
    ))
    .unwrap();
    run();
    let second = state(dir.path());
    assert_eq!(
        second,
        BTreeMap::from([
            ("p1".into(), ("matched".into(), Some(100))),
            ("p2".into(), ("matched".into(), Some(200))),
            ("p3".into(), ("matched".into(), Some(300))),
            // Deleted from the ledger; the provider never had it.
            ("p8".into(), ("pending".into(), Some(800))),
        ])
    );
    assert!(confirmed(&mut db) > after_first);
    // Nothing of the first run came out again: each payment's first line is an insertion.
    let text = std::fs::read_to_string(dir.path().join("reconciliation.jsonl")).unwrap();
    let inserts = text.lines().filter(|l| l.contains("\"diff\":1")).count();
    let retracts = text.lines().filter(|l| l.contains("\"diff\":-1")).count();
    assert_eq!(inserts - retracts, 4);
}

#[test]
fn a_server_that_refuses_wal2json_stops_the_source_at_start_saying_what_to_change() {
    // PostgreSQL 15.19 and later load only the output plugins named in
    // `output_plugin_libraries`; a session can narrow it, which makes this server refuse
    // wal2json for this connection only (the other tests share the server).
    let (conninfo, mut db) = database("sluice_pg_refused");
    let refusing = format!("{conninfo} options='-c output_plugin_libraries=pgoutput'");
    let err = source(&refusing, "sluice_refused").ensure_slot().unwrap_err();
    assert!(matches!(err, sluice_connectors::ConnectorError::PostgresServer { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "PostgreSQL source `ledger`: the server does not allow wal2json as a logical decoding output plugin \
         (output_plugin_libraries = 'pgoutput'); a database administrator must add it: \
         `ALTER SYSTEM SET output_plugin_libraries = pgoutput, wal2json; SELECT pg_reload_conf();` \
         (or the same line in postgresql.conf, then a reload)"
    );
    // Refused before anything was created on the server.
    let slots: i64 = db.query_one("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'sluice_refused'", &[]).unwrap().get(0);
    assert_eq!(slots, 0);

    // The same through a pipeline: `run` fails at start, naming the source and the setting.
    let dir = tempfile::tempdir().unwrap();
    let provider = dir.path().join("provider.jsonl");
    std::fs::write(&provider, "").unwrap();
    let err = sluice::run(&pipeline(dir.path(), &refusing, &provider), &RunControl::default()).unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("sources[1] (ledger): PostgreSQL source `ledger`: the server does not allow wal2json"), "{text}");
    assert!(text.contains("ALTER SYSTEM SET output_plugin_libraries = pgoutput, wal2json"), "{text}");
}
