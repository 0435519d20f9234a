//! `type = "postgres"`: PostgreSQL's changes through logical decoding with `wal2json`
//! (format 2), read from a replication slot with `pg_logical_slot_peek_changes`.
//!
//! ```toml
//! [[sources]]
//! type = "postgres"
//! name = "ledger"
//! conninfo = "host=127.0.0.1 port=5432 user=sluice dbname=ledger"
//! slot = "sluice_ledger"        # created (wal2json) when missing
//! tables = ["public.payments"]  # only these (default: every table)
//! until = "forever"             # or "caught_up": end once no change is waiting
//! ```
//!
//! Each change becomes one record shaped as a Debezium envelope (`op` c/u/d/t, `before` = the
//! replica identity's columns for updates and deletes, `after`, `source.lsn` = the change's
//! LSN, `source.schema`/`table`, `ts_ms` = the commit time), so what reads Debezium reads it.
//!
//! Order and position: transactions come whole, in commit order; the partition's position is
//! the commit LSN of the last transaction read, stored in the epoch commit like any source's.
//! After a restart the reader skips transactions at or before it. The slot is only advanced
//! ([`SlotAdvancer`], every 200 ms) to committed positions, so PostgreSQL keeps every change sluice has not
//! committed, and nothing is lost to a crash. A transaction is never split between epochs.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Map, Value};
use sluice_state::{StateReader, StateStore, Table, U64Codec};

use crate::connector::{parse_source, Service, ServiceContext, Source, SourceKind};
use crate::source::{Fetched, PartitionReader, ReadStatus, TimeOfFactory, POSITIONS_TABLE};
use crate::ConnectorError;

/// When a `postgres` source ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PgUntil {
    /// Never: it waits for more changes.
    #[default]
    Forever,
    /// Once a read finds no change waiting (a backfill).
    CaughtUp,
}

/// `type = "postgres"` under `[[sources]]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSourceConfig {
    /// Source name.
    pub name: String,
    /// libpq connection string (`host=… port=… user=… dbname=…`).
    pub conninfo: String,
    /// The logical replication slot (created with `wal2json` when missing).
    pub slot: String,
    /// Only changes of these tables (`schema.table`); empty: all.
    #[serde(default)]
    pub tables: Vec<String>,
    /// When the source ends.
    #[serde(default)]
    pub until: PgUntil,
}

impl PostgresSourceConfig {
    /// Checks the config.
    ///
    /// # Errors
    /// What is wrong, with its key.
    pub fn validate(&self, key: &str) -> Result<(), ConnectorError> {
        let ok = !self.slot.is_empty() && self.slot.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !ok {
            return Err(ConnectorError::Config {
                key: format!("{key}.slot"),
                problem: format!("`{}`: a slot name is lower-case letters, digits and _", self.slot),
            });
        }
        for (i, t) in self.tables.iter().enumerate() {
            if t.split('.').count() != 2 || t.contains(',') || t.contains(' ') {
                return Err(ConnectorError::Config { key: format!("{key}.tables[{i}]"), problem: format!("`{t}` is not schema.table") });
            }
        }
        self.conninfo.parse::<postgres::Config>().map_err(|e| ConnectorError::Config { key: format!("{key}.conninfo"), problem: e.to_string() })?;
        Ok(())
    }

    /// The partition's name: the key of its position.
    pub fn reader_name(&self) -> String {
        format!("postgres:{}:{}", self.name, self.slot)
    }

    fn connect(&self) -> Result<postgres::Client, ConnectorError> {
        let mut config: postgres::Config = self.conninfo.parse().map_err(|e: postgres::Error| self.error("bad conninfo", e))?;
        config.connect_timeout(Duration::from_secs(10));
        if config.get_application_name().is_none() {
            config.application_name("sluice");
        }
        config.connect(postgres::NoTls).map_err(|e| self.error("cannot connect", e))
    }

    fn error(&self, what: &str, e: impl std::fmt::Display) -> ConnectorError {
        ConnectorError::Postgres { what: format!("source `{}` (slot `{}`): {what}", self.name, self.slot), source: e.to_string().into() }
    }

    /// Checks that the server can serve the source, then creates the slot (wal2json) if it
    /// does not exist.
    ///
    /// # Errors
    /// PostgreSQL cannot be reached; or it cannot decode for sluice, with what the database
    /// administrator must change ([`ConnectorError::PostgresServer`]): `wal_level` is not
    /// `logical`, wal2json is not installed or not allowed as an output plugin, or the user may
    /// not use replication slots.
    pub fn ensure_slot(&self) -> Result<(), ConnectorError> {
        let mut client = self.connect()?;
        self.check_server(&mut client)?;
        let exists = client
            .query_opt("SELECT plugin FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()", &[&self.slot])
            .map_err(|e| self.error("cannot list replication slots", e))?;
        match exists {
            Some(row) => {
                let plugin: Option<String> = row.get(0);
                if plugin.as_deref() != Some("wal2json") {
                    return Err(self.error("the slot exists with another plugin", format!("{plugin:?}; sluice reads wal2json")));
                }
            }
            None => {
                client
                    .execute("SELECT pg_create_logical_replication_slot($1, 'wal2json')", &[&self.slot])
                    .map_err(|e| self.server_refusal(&e).unwrap_or_else(|| self.error("cannot create the slot", e)))?;
                tracing::info!(source = %self.name, slot = %self.slot, "created a logical replication slot (wal2json)");
            }
        }
        Ok(())
    }

    /// What the server must have for logical decoding through wal2json, asked before anything
    /// is created: `wal_level = logical`, and wal2json among `output_plugin_libraries` where the
    /// server has that setting (PostgreSQL 15.19 and later: only the
    /// plugins it names may be loaded; older servers allow any).
    fn check_server(&self, client: &mut postgres::Client) -> Result<(), ConnectorError> {
        let wal_level: String = client.query_one("SHOW wal_level", &[]).map_err(|e| self.error("cannot read wal_level", e))?.get(0);
        if wal_level != "logical" {
            return Err(self.server_error(
                format!("the server's wal_level is `{wal_level}`, and logical decoding needs `logical`"),
                "set `wal_level = logical` in postgresql.conf and restart the server",
            ));
        }
        // `current_setting(name, true)` is NULL where the setting does not exist.
        let allowed: Option<String> = client
            .query_one("SELECT current_setting('output_plugin_libraries', true)", &[])
            .map_err(|e| self.error("cannot read output_plugin_libraries", e))?
            .get(0);
        if let Some(allowed) = allowed {
            if !plugin_allowed(&allowed, "wal2json") {
                return Err(self.plugin_refused(&allowed));
            }
        }
        Ok(())
    }

    /// The server's refusal in `e` as what must change, for the refusals an administrator fixes.
    fn server_refusal(&self, e: &postgres::Error) -> Option<ConnectorError> {
        let db = e.as_db_error()?;
        let message = db.message();
        if message.contains("may not be used as an output plugin") {
            let allowed = db.detail().and_then(|d| d.split_once("(currently '")).and_then(|(_, rest)| rest.split_once("')")).map_or("", |(list, _)| list);
            return Some(self.plugin_refused(allowed));
        }
        if message.contains("could not access file") && message.contains("wal2json") {
            return Some(self.server_error(
                "the server has no wal2json output plugin".into(),
                "install it on the database server (Debian and Ubuntu: `postgresql-<version>-wal2json`)",
            ));
        }
        if *db.code() == postgres::error::SqlState::INSUFFICIENT_PRIVILEGE && message.contains("replication") {
            let user = self.conninfo.parse::<postgres::Config>().ok().and_then(|c| c.get_user().map(str::to_string)).unwrap_or_else(|| "the user".into());
            return Some(self.server_error(
                format!("`{user}` may not use replication slots ({message})"),
                &format!("give it the REPLICATION attribute: `ALTER ROLE {user} REPLICATION`"),
            ));
        }
        None
    }

    fn plugin_refused(&self, allowed: &str) -> ConnectorError {
        let mut list: Vec<&str> = allowed.split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
        list.push("wal2json");
        self.server_error(
            format!("the server does not allow wal2json as a logical decoding output plugin (output_plugin_libraries = '{allowed}')"),
            &format!(
                "a database administrator must add it: `ALTER SYSTEM SET output_plugin_libraries = {}; SELECT pg_reload_conf();` (or the same line in postgresql.conf, then a reload)",
                list.join(", ")
            ),
        )
    }

    fn server_error(&self, problem: String, fix: &str) -> ConnectorError {
        ConnectorError::PostgresServer { source_name: self.name.clone(), problem, fix: fix.to_string() }
    }
}

/// Whether `plugin` is in an `output_plugin_libraries` list, read as PostgreSQL reads a list
/// setting: names separated by commas, each optionally in double quotes (a quoted name may hold
/// commas, and `""` is a quote), spaces around them ignored.
fn plugin_allowed(list: &str, plugin: &str) -> bool {
    let mut names = Vec::new();
    let mut chars = list.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut name = String::new();
        if chars.next_if_eq(&'"').is_some() {
            while let Some(c) = chars.next() {
                if c == '"' && chars.next_if_eq(&'"').is_none() {
                    break;
                }
                name.push(c);
            }
            while chars.next_if(|c| *c != ',').is_some() {}
        } else {
            while let Some(c) = chars.next_if(|c| *c != ',') {
                name.push(c);
            }
            name.truncate(name.trim_end().len());
        }
        names.push(name);
        if chars.next().is_none() {
            break;
        }
    }
    names.iter().any(|n| n == plugin)
}

/// `X/Y` to a number.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// A number to `X/Y`.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// wal2json's timestamp (`2026-11-24 10:39:21.544417+00`, the offset also `+05:30`) in ms since
/// the epoch.
fn timestamp_ms(text: &str) -> Option<i64> {
    let (date, rest) = text.split_once(' ')?;
    let sign_at = rest.rfind(['+', '-'])?;
    let (clock, offset) = rest.split_at(sign_at);
    let mut d = date.split('-').map(str::parse::<i64>);
    let (y, mo, da) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, "0"));
    let mut t = hms.split(':').map(str::parse::<i64>);
    let (h, mi, se) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let ms = format!("{frac:0<3}").get(..3)?.parse::<i64>().ok()?;
    let sign = if offset.starts_with('-') { -1 } else { 1 };
    let (oh, om) = offset[1..].split_once(':').unwrap_or((&offset[1..], "0"));
    let offset_s = sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60);
    let month = time::Month::try_from(u8::try_from(mo).ok()?).ok()?;
    let day = time::Date::from_calendar_date(i32::try_from(y).ok()?, month, u8::try_from(da).ok()?).ok()?;
    let days = i64::from(day.to_julian_day()) - i64::from(time::Date::from_calendar_date(1970, time::Month::January, 1).ok()?.to_julian_day());
    Some((days * 86_400 + h * 3600 + mi * 60 + se - offset_s) * 1000 + ms)
}

fn columns(value: Option<&Value>) -> Option<Map<String, Value>> {
    let list = value?.as_array()?;
    Some(list.iter().filter_map(|c| Some((c.get("name")?.as_str()?.to_string(), c.get("value").cloned().unwrap_or(Value::Null)))).collect())
}

/// One wal2json (format 2) change as a Debezium payload; `None` for rows that are not changes
/// (`B`, `C`, `M`).
pub fn debezium_payload(change: &Value, lsn: u64, commit_ms: Option<i64>) -> Option<Value> {
    let op = match change.get("action")?.as_str()? {
        "I" => "c",
        "U" => "u",
        "D" => "d",
        "T" => "t",
        _ => return None,
    };
    let before = columns(change.get("identity"));
    let after = if op == "d" || op == "t" { None } else { columns(change.get("columns")) };
    Some(json!({
        "op": op,
        "before": before,
        "after": after,
        "source": {"connector": "sluice-postgres", "lsn": lsn, "schema": change.get("schema"), "table": change.get("table")},
        "ts_ms": commit_ms,
    }))
}

/// The reader of a `postgres` source (one partition).
pub struct PostgresReader {
    config: PostgresSourceConfig,
    name: String,
    client: Option<postgres::Client>,
    /// Commit LSN of the last transaction read.
    position: u64,
    /// Transactions read and not yet confirmed in the slot: (commit LSN, rows), to ask a peek
    /// for enough rows to get past them.
    unconfirmed: VecDeque<(u64, usize)>,
    last_empty: Option<Instant>,
    last_error: Option<Instant>,
    draining: bool,
}

impl PostgresReader {
    /// A reader; it connects on its first read.
    pub fn new(config: &PostgresSourceConfig) -> Self {
        PostgresReader {
            config: config.clone(),
            name: config.reader_name(),
            client: None,
            position: 0,
            unconfirmed: VecDeque::new(),
            last_empty: None,
            last_error: None,
            draining: config.until == PgUntil::CaughtUp,
        }
    }

    fn peek(&mut self, records_max: usize) -> Result<Vec<(u64, String)>, ConnectorError> {
        if self.client.is_none() {
            self.client = Some(self.config.connect()?);
        }
        let client = self.client.as_mut().expect("invariant: connected above");
        let confirmed: Option<String> = client
            .query_one("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", &[&self.config.slot])
            .map_err(|e| self.config.error("cannot read the slot", e))?
            .get(0);
        let confirmed = confirmed.as_deref().and_then(parse_lsn).unwrap_or(0);
        while self.unconfirmed.front().is_some_and(|(lsn, _)| *lsn <= confirmed) {
            self.unconfirmed.pop_front();
        }
        let skip: usize = self.unconfirmed.iter().map(|(_, rows)| rows).sum();
        let limit = (skip + records_max.max(1)) as i32;
        let mut sql = String::from(
            "SELECT lsn::text, data FROM pg_logical_slot_peek_changes($1, NULL, $2, 'format-version', '2', 'include-transaction', 'true', 'include-timestamp', 'true'",
        );
        if !self.config.tables.is_empty() {
            sql.push_str(", 'add-tables', $3");
        }
        sql.push(')');
        let tables = self.config.tables.join(",");
        let rows = if self.config.tables.is_empty() {
            client.query(&sql, &[&self.config.slot, &limit])
        } else {
            client.query(&sql, &[&self.config.slot, &limit, &tables])
        }
        .map_err(|e| self.config.server_refusal(&e).unwrap_or_else(|| self.config.error("cannot read changes", e)))?;
        Ok(rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, String>(1))).filter_map(|(l, d)| Some((parse_lsn(&l)?, d))).collect())
    }
}

impl PartitionReader for PostgresReader {
    fn name(&self) -> &str {
        &self.name
    }

    fn seek(&mut self, position: u64) -> Result<(), ConnectorError> {
        self.position = position;
        Ok(())
    }

    fn read(&mut self, records_max: usize, out: &mut Vec<Fetched>) -> Result<ReadStatus, ConnectorError> {
        // An empty answer is not asked again for 100 ms, nor after an error for 1 s.
        if self.last_empty.is_some_and(|t| t.elapsed() < Duration::from_millis(100)) || self.last_error.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return Ok(ReadStatus::Waiting);
        }
        let rows = match self.peek(records_max) {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(source = %self.config.name, error = %e, "PostgreSQL source waiting; retrying in 1 s");
                self.client = None;
                self.last_error = Some(Instant::now());
                return Ok(ReadStatus::Waiting);
            }
        };
        self.last_error = None;
        let before = out.len();
        let returned = rows.len();
        let limit = self.unconfirmed.iter().map(|(_, r)| r).sum::<usize>() + records_max.max(1);
        let mut txn: Vec<(u64, Value)> = Vec::new();
        let mut rows_in_txn = 0;
        let mut commit_ms = None;
        for (lsn, data) in rows {
            let value: Value = serde_json::from_str(&data).map_err(|e| self.config.error("wal2json gave invalid JSON", e))?;
            rows_in_txn += 1;
            match value.get("action").and_then(Value::as_str) {
                Some("B") => {
                    txn.clear();
                    rows_in_txn = 1;
                    commit_ms = value.get("timestamp").and_then(Value::as_str).and_then(timestamp_ms);
                }
                Some("C") => {
                    // Transactions at or before the position were read already (before a
                    // restart, or by an earlier peek: the slot only moves on commits).
                    if lsn > self.position {
                        for (change_lsn, change) in txn.drain(..) {
                            if let Some(payload) = debezium_payload(&change, change_lsn, commit_ms) {
                                out.push(Fetched::plain(lsn, payload.to_string().into_bytes()));
                            }
                        }
                        self.position = lsn;
                    }
                    // Every transaction between the slot and the position, once: the next
                    // peek asks for that many rows more.
                    if self.unconfirmed.back().is_none_or(|(l, _)| lsn > *l) {
                        self.unconfirmed.push_back((lsn, rows_in_txn));
                    }
                    txn.clear();
                }
                _ => txn.push((lsn, value)),
            }
        }
        // New changes, or a full answer (more may be waiting behind it): read again at once.
        if out.len() > before || returned >= limit {
            self.last_empty = None;
            return Ok(ReadStatus::More);
        }
        if self.draining {
            return Ok(ReadStatus::End);
        }
        self.last_empty = Some(Instant::now());
        Ok(ReadStatus::Waiting)
    }

    fn position(&self) -> u64 {
        self.position
    }

    fn drain(&mut self) {
        self.draining = true;
    }
}

/// Advances the source's slot to its committed position (every 200 ms), so that PostgreSQL
/// can recycle the WAL sluice no longer needs; never past what is committed.
#[derive(Debug)]
pub struct SlotAdvancer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SlotAdvancer {
    /// Starts advancing `config`'s slot.
    ///
    /// # Errors
    /// The positions table is missing, or the thread cannot start.
    pub fn start(config: &PostgresSourceConfig, store: Arc<StateStore>) -> Result<Self, ConnectorError> {
        let reader = StateReader::new(store);
        let table: Table<U64Codec> = reader.table(POSITIONS_TABLE)?;
        let stop = Arc::new(AtomicBool::new(false));
        let config = config.clone();
        let name = config.reader_name();
        let thread = std::thread::Builder::new()
            .name("sluice-pg-slot".into())
            .spawn({
                let stop = Arc::clone(&stop);
                move || {
                    let mut client: Option<postgres::Client> = None;
                    let mut advanced = 0u64;
                    let mut next = Instant::now();
                    let mut warned: Option<Instant> = None;
                    loop {
                        let stopping = stop.load(Ordering::Acquire);
                        if stopping || Instant::now() >= next {
                            // Often: until the slot moves, each read decodes again what the
                            // previous ones read.
                            next = Instant::now() + Duration::from_millis(200);
                            let committed = reader.view().snapshot().get(&table, name.as_bytes()).ok().flatten().unwrap_or(0);
                            if committed > advanced {
                                let result = match client.as_mut() {
                                    Some(c) => Ok(c),
                                    None => config.connect().map(|c| client.insert(c)),
                                }
                                .and_then(|c| {
                                    c.execute("SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)", &[&config.slot, &format_lsn(committed)])
                                        .map_err(|e| config.error("cannot advance the slot", e))
                                });
                                match result {
                                    Ok(_) => advanced = committed,
                                    Err(e) => {
                                        client = None;
                                        if warned.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
                                            tracing::warn!(error = %e, "retrying");
                                            warned = Some(Instant::now());
                                        }
                                    }
                                }
                            }
                        }
                        if stopping {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            })
            .map_err(|source| ConnectorError::Thread { thread: "PostgreSQL slot advancer", source })?;
        Ok(SlotAdvancer { stop, thread: Some(thread) })
    }

    /// Advances to the final committed position once more and stops.
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for SlotAdvancer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `postgres` source's registry line.
pub const SOURCE: SourceKind = SourceKind {
    kind: "postgres",
    about:
        "PostgreSQL changes by logical decoding (wal2json) from a replication slot, as Debezium-shaped records; the slot advanced only to committed positions",
    parse: parse_source::<PostgresSourceConfig>,
};

impl Source for PostgresSourceConfig {
    fn name(&self) -> &str {
        &self.name
    }

    fn validate(&self, key: &str) -> Result<(), ConnectorError> {
        PostgresSourceConfig::validate(self, key)
    }

    /// The server checked and the slot created.
    fn resolve(&mut self) -> Result<(), ConnectorError> {
        self.ensure_slot()
    }

    fn partitions(&self) -> usize {
        1
    }

    fn reader(&self, _partition: usize, _time_of: Option<TimeOfFactory>) -> Box<dyn PartitionReader> {
        Box::new(PostgresReader::new(self))
    }

    /// Advances the slot to the committed positions.
    fn start(&self, context: ServiceContext<'_>) -> Result<Option<Box<dyn Service>>, ConnectorError> {
        Ok(Some(Box::new(SlotAdvancer::start(self, Arc::clone(context.store))?)))
    }
}

impl Service for SlotAdvancer {
    /// Advances to the final committed position once more.
    fn finish(self: Box<Self>) -> Result<(), ConnectorError> {
        SlotAdvancer::finish(*self);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_and_timestamps_read() {
        assert_eq!(parse_lsn("0/19248B8"), Some(0x19248B8));
        assert_eq!(parse_lsn("1A/0"), Some(0x1A << 32));
        assert_eq!(format_lsn(0x1A_0000_00FF), "1A/FF");
        assert_eq!(parse_lsn("x"), None);
        assert_eq!(timestamp_ms("2026-11-24 10:39:21.544417+00"), Some(1_795_516_761_544));
        assert_eq!(timestamp_ms("2026-11-24 11:39:21+01"), Some(1_795_516_761_000));
    }

    #[test]
    fn output_plugin_lists_are_read_as_postgresql_writes_them() {
        assert!(plugin_allowed("pgoutput, test_decoding, wal2json", "wal2json"));
        assert!(plugin_allowed("wal2json", "wal2json"));
        assert!(plugin_allowed("pgoutput, \"wal2json\" ", "wal2json"));
        assert!(!plugin_allowed("pgoutput, test_decoding", "wal2json"));
        assert!(!plugin_allowed("", "wal2json"));
        assert!(!plugin_allowed("wal2json_old", "wal2json"));
        // `ALTER SYSTEM SET x = 'a, b, wal2json'` makes one quoted name of the whole list, which
        // the server refuses (seen on 15.20).
        assert!(!plugin_allowed("\"pgoutput, test_decoding, wal2json\"", "wal2json"));
    }

    #[test]
    fn wal2json_changes_become_debezium_payloads() {
        let update: Value = serde_json::from_str(
            r#"{"action":"U","schema":"public","table":"payments","columns":[{"name":"payment_id","type":"text","value":"p1"},{"name":"amount","type":"bigint","value":100}],"identity":[{"name":"payment_id","type":"text","value":"p1"}]}"#,
        )
        .unwrap();
        let p = debezium_payload(&update, 77, Some(5)).unwrap();
        assert_eq!(
            p,
            json!({"op":"u","before":{"payment_id":"p1"},"after":{"payment_id":"p1","amount":100},
                   "source":{"connector":"sluice-postgres","lsn":77,"schema":"public","table":"payments"},"ts_ms":5})
        );
        let change = crate::cdc::debezium::decode(p.to_string().as_bytes()).unwrap().unwrap();
        assert_eq!((change.table.as_str(), change.op, change.lsn), ("public.payments", crate::cdc::Op::Update, Some(77)));
        let delete: Value =
            serde_json::from_str(r#"{"action":"D","schema":"public","table":"payments","identity":[{"name":"payment_id","type":"text","value":"p2"}]}"#)
                .unwrap();
        assert_eq!(debezium_payload(&delete, 78, None).unwrap()["after"], Value::Null);
        assert_eq!(debezium_payload(&json!({"action":"B"}), 1, None), None);
    }
}
