//! The Debezium JSON envelope: `{"schema": …, "payload": {before, after, source, op, ts_ms}}`
//! or the payload alone (converters with `schemas.enable=false`).
//!
//! | `op` | meaning | rows |
//! |---|---|---|
//! | `c` | insert | `after` |
//! | `r` | snapshot read | `after` |
//! | `u` | update | `before` (when the table's replica identity gives it) and `after` |
//! | `d` | delete | `before` |
//! | `t` | truncate | none: every row of `source.table` goes |
//! | `m` | logical decoding message | none: not a row change, skipped |
//!
//! A tombstone (an empty or `null` value, which Debezium sends after a delete for log
//! compaction) is skipped, not a dead letter. The position of a change is `source.lsn`
//! (PostgreSQL); changes without one (other connectors' positions are not used yet) are
//! applied as they come, with no replay detection.
//!
//! [`ChangeTable`] applies changes to rows keyed by primary key and drops a change whose LSN is
//! not beyond the last one applied to that key: the repeats a connector sends after its
//! restart (it resumes from its last committed offset, before changes it had already sent).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// The kind of a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    /// `c`
    Insert,
    /// `r`
    Snapshot,
    /// `u`
    Update,
    /// `d`
    Delete,
    /// `t`
    Truncate,
}

/// One decoded row change.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// `schema.table` from `source` (`db.table` for connectors without schemas).
    pub table: String,
    /// The kind.
    pub op: Op,
    /// The row before (updates with a full replica identity, deletes).
    pub before: Option<Map<String, Value>>,
    /// The row after (inserts, snapshot reads, updates).
    pub after: Option<Map<String, Value>>,
    /// `source.lsn`, where the connector gives one.
    pub lsn: Option<u64>,
    /// `ts_ms` of the envelope (when the connector processed the change).
    pub ts_ms: Option<i64>,
}

/// Decodes one record. `Ok(None)`: nothing to apply (a tombstone, a logical decoding message).
///
/// # Errors
/// Not JSON, not an envelope, an unknown `op`, or rows missing for the `op`; the message says
/// which, for the dead letter.
pub fn decode(bytes: &[u8]) -> Result<Option<Change>, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))?;
    let payload = match value {
        Value::Null => return Ok(None),
        Value::Object(mut o) if o.contains_key("payload") && o.contains_key("schema") => o.remove("payload").unwrap_or(Value::Null),
        other => other,
    };
    let Value::Object(mut p) = payload else {
        return match payload {
            Value::Null => Ok(None),
            _ => Err("a Debezium payload must be a JSON object".into()),
        };
    };
    let op = match p.get("op").and_then(Value::as_str) {
        Some("c") => Op::Insert,
        Some("r") => Op::Snapshot,
        Some("u") => Op::Update,
        Some("d") => Op::Delete,
        Some("t") => Op::Truncate,
        Some("m") => return Ok(None),
        Some(other) => return Err(format!("unknown Debezium op `{other}`")),
        None => return Err("missing op".into()),
    };
    let source = p.get("source").and_then(Value::as_object).ok_or("missing source")?;
    let table_name = source.get("table").and_then(Value::as_str).ok_or("missing source.table")?;
    let prefix = source.get("schema").or_else(|| source.get("db")).and_then(Value::as_str);
    let table = match prefix {
        Some(s) => format!("{s}.{table_name}"),
        None => table_name.to_string(),
    };
    let lsn = source.get("lsn").and_then(Value::as_u64);
    let ts_ms = p.get("ts_ms").and_then(Value::as_i64);
    let mut row = |name: &str| match p.remove(name) {
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(Value::Null) | None => Ok(None),
        Some(_) => Err(format!("{name} must be an object or null")),
    };
    let (before, after) = (row("before")?, row("after")?);
    match op {
        Op::Insert | Op::Snapshot | Op::Update if after.is_none() => return Err(format!("op {op:?} without after")),
        Op::Delete if before.is_none() => return Err("a delete without before (set the table's replica identity)".into()),
        _ => {}
    }
    Ok(Some(Change { table, op, before, after, lsn, ts_ms }))
}

/// The key of a row: the values of the key columns, as canonical JSON (`[1,"a"]`).
///
/// # Errors
/// A key column is missing from the row.
pub fn row_key(row: &Map<String, Value>, key_columns: &[String]) -> Result<String, String> {
    let values: Result<Vec<&Value>, String> =
        key_columns.iter().map(|c| row.get(c).filter(|v| !v.is_null()).ok_or_else(|| format!("key column `{c}` missing from the row"))).collect();
    Ok(Value::Array(values?.into_iter().cloned().collect()).to_string())
}

/// Rows of one table by primary key, with the last LSN applied per key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChangeTable {
    key_columns: Vec<String>,
    /// Key to (row, LSN of the change that made it).
    rows: BTreeMap<String, (Map<String, Value>, Option<u64>)>,
    /// LSN of the last delete per key (a replayed insert older than it must not bring the row back).
    deleted: BTreeMap<String, u64>,
    /// LSN of the last truncate.
    truncated: Option<u64>,
    /// Changes dropped as replays.
    pub replays: u64,
}

impl ChangeTable {
    /// An empty table keyed by `key_columns`.
    pub fn new(key_columns: &[&str]) -> Self {
        ChangeTable { key_columns: key_columns.iter().map(|c| c.to_string()).collect(), ..ChangeTable::default() }
    }

    fn last_lsn(&self, key: &str) -> Option<u64> {
        let row = self.rows.get(key).and_then(|(_, l)| *l);
        [row, self.deleted.get(key).copied(), self.truncated].into_iter().flatten().max()
    }

    /// Applies a change; returns false when it was dropped as a replay.
    ///
    /// # Errors
    /// A key column missing from a row.
    pub fn apply(&mut self, change: &Change) -> Result<bool, String> {
        if change.op == Op::Truncate {
            if change.lsn.is_some_and(|l| self.truncated.is_some_and(|t| l <= t)) {
                self.replays += 1;
                return Ok(false);
            }
            self.rows.clear();
            self.deleted.clear();
            self.truncated = change.lsn.or(self.truncated);
            return Ok(true);
        }
        let old_key = change.before.as_ref().map(|r| row_key(r, &self.key_columns)).transpose()?;
        let new_key = change.after.as_ref().map(|r| row_key(r, &self.key_columns)).transpose()?;
        let key = new_key.as_ref().or(old_key.as_ref()).expect("invariant: decode checked the rows of the op");
        if let (Some(lsn), Some(last)) = (change.lsn, self.last_lsn(key)) {
            if lsn <= last {
                self.replays += 1;
                return Ok(false);
            }
        }
        match change.op {
            Op::Delete => {
                self.rows.remove(key);
                if let Some(l) = change.lsn {
                    self.deleted.insert(key.clone(), l);
                }
            }
            _ => {
                // An update that changed the key retracts the row under the old key.
                if let (Some(old), Some(new)) = (&old_key, &new_key) {
                    if old != new {
                        self.rows.remove(old);
                    }
                }
                let after = change.after.clone().expect("invariant: decode checked after");
                self.rows.insert(key.clone(), (after, change.lsn));
            }
        }
        Ok(true)
    }

    /// The rows, by key.
    pub fn rows(&self) -> BTreeMap<String, Map<String, Value>> {
        self.rows.iter().map(|(k, (r, _))| (k.clone(), r.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_with_and_without_the_schema_wrapper_decode_alike() {
        let bare = r#"{"before":null,"after":{"id":1,"amount":10},"source":{"schema":"public","table":"ledger","lsn":100},"op":"c","ts_ms":5}"#;
        let wrapped = format!(r#"{{"schema":{{"type":"struct"}},"payload":{bare}}}"#);
        let a = decode(bare.as_bytes()).unwrap().unwrap();
        assert_eq!(a, decode(wrapped.as_bytes()).unwrap().unwrap());
        assert_eq!((a.table.as_str(), a.op, a.lsn, a.ts_ms), ("public.ledger", Op::Insert, Some(100), Some(5)));
    }

    #[test]
    fn tombstones_and_messages_are_skipped_and_bad_records_say_why() {
        assert_eq!(decode(b""), Ok(None));
        assert_eq!(decode(b"null"), Ok(None));
        assert_eq!(decode(br#"{"schema":{},"payload":null}"#), Ok(None));
        assert_eq!(decode(br#"{"op":"m","source":{"table":"x"},"message":{"prefix":"p","content":"aGk="}}"#), Ok(None));
        assert_eq!(decode(br#"{"op":"x","source":{"table":"t"}}"#).unwrap_err(), "unknown Debezium op `x`");
        assert_eq!(decode(br#"{"op":"d","source":{"table":"t"},"before":null}"#).unwrap_err(), "a delete without before (set the table's replica identity)");
        assert_eq!(decode(br#"{"op":"c","after":{"id":1}}"#).unwrap_err(), "missing source");
        assert!(decode(b"{not json").unwrap_err().starts_with("invalid JSON"));
    }

    /// The fixture plays a connector's life: a snapshot, inserts, updates (one changing the
    /// key), a delete and its tombstone, a connector restart that sends the last changes again,
    /// a truncate and inserts after it; expected.json is the table written out by hand.
    #[test]
    fn the_fixture_replays_to_the_expected_table() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/debezium");
        let text = std::fs::read_to_string(dir.join("ledger.jsonl")).unwrap();
        let mut table = ChangeTable::new(&["id"]);
        let mut states = Vec::new();
        for line in text.lines() {
            if let Some(change) = decode(line.as_bytes()).unwrap() {
                table.apply(&change).unwrap();
            }
            if line.contains("\"op\":\"t\"") {
                states.push(table.rows());
            }
        }
        let expected: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
        let as_value = |rows: &BTreeMap<String, Map<String, Value>>| Value::Object(rows.iter().map(|(k, r)| (k.clone(), Value::Object(r.clone()))).collect());
        assert_eq!(as_value(&states[0]), serde_json::json!({}), "a truncate empties the table");
        assert_eq!(as_value(&table.rows()), expected["after_truncate_and_more"]);
        assert_eq!(table.replays, expected["replays"].as_u64().unwrap());
    }

    #[test]
    fn before_the_truncate_the_table_holds_the_expected_rows() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/debezium");
        let text = std::fs::read_to_string(dir.join("ledger.jsonl")).unwrap();
        let mut table = ChangeTable::new(&["id"]);
        for line in text.lines().take_while(|l| !l.contains("\"op\":\"t\"")) {
            if let Some(change) = decode(line.as_bytes()).unwrap() {
                table.apply(&change).unwrap();
            }
        }
        let expected: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
        let rows = Value::Object(table.rows().into_iter().map(|(k, r)| (k, Value::Object(r))).collect());
        assert_eq!(rows, expected["before_truncate"]);
    }
}
