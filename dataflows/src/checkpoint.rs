//! What a state directory holds: the committed epoch, the source positions and sink lengths it
//! resumes from, undelivered outbox epochs and the tables' sizes. Printed by
//! `sluice checkpoint list|inspect`, and (in short) by every run that resumes.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sluice_operators::Epoch;
use sluice_state::{StateError, StateReader, TableInfo};

/// The committed state of a directory, as of one snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Inspection {
    /// The state directory.
    pub path: PathBuf,
    /// The layout tag (`sluice-state/2`).
    pub layout: Option<String>,
    /// A run resumes at this epoch: every epoch below it is committed.
    pub resume_epoch: Epoch,
    /// When the last commit was written (ms since the Unix epoch).
    pub committed_at_ms: Option<i64>,
    /// Each source partition's committed position (byte offset, record index, Kafka offset,
    /// log offset or LSN, by source type).
    pub positions: Vec<(String, u64)>,
    /// Each file sink's committed length in bytes.
    pub sink_lengths: Vec<(String, u64)>,
    /// Per Kafka sink: committed epochs still in the outbox (first, last, records).
    pub outbox: Vec<(String, Epoch, Epoch, u64)>,
    /// The tables and their estimated sizes.
    pub tables: Vec<TableInfo>,
}

/// Reads what `reader` holds, as of one snapshot.
///
/// # Errors
/// RocksDB read errors; a stored value that does not decode.
pub fn inspect(reader: &StateReader, path: &Path) -> Result<Inspection, StateError> {
    let view = reader.view();
    let snapshot = view.snapshot();
    let sluice_connectors::inspect::Committed { positions, sink_lengths, outbox } = sluice_connectors::inspect::committed(reader, &snapshot)?;
    Ok(Inspection {
        path: path.to_path_buf(),
        layout: snapshot.layout()?,
        resume_epoch: snapshot.resume_epoch()?,
        committed_at_ms: snapshot.committed_at_ms()?,
        positions,
        sink_lengths,
        outbox,
        tables: view.tables()?,
    })
}

/// A UTC time of day with date, from ms since the Unix epoch (`2026-11-24T12:00:00.123Z`).
pub fn utc(ms: i64) -> String {
    let (days, rem) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // Civil from days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3_600_000, rem / 60_000 % 60, rem / 1000 % 60, rem % 1000)
}

impl Inspection {
    /// The committed epoch (the last one written), if any.
    pub fn committed_epoch(&self) -> Option<Epoch> {
        self.resume_epoch.checked_sub(1)
    }

    /// One line: the committed epoch, when, and the positions a run resumes from.
    pub fn summary(&self) -> String {
        let mut s = match (self.committed_epoch(), self.committed_at_ms) {
            (Some(e), Some(at)) => format!("epoch {e} committed at {}", utc(at)),
            _ => "no epoch committed yet".to_string(),
        };
        if !self.positions.is_empty() {
            s.push_str("; positions ");
            s.push_str(&self.positions.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "));
        }
        if !self.sink_lengths.is_empty() {
            s.push_str("; file sinks ");
            s.push_str(&self.sink_lengths.iter().map(|(k, v)| format!("{k}={v}B")).collect::<Vec<_>>().join(" "));
        }
        for (sink, first, last, records) in &self.outbox {
            let _ = write!(s, "; outbox {sink} epochs {first}..={last} ({records} records undelivered)");
        }
        s
    }

    /// The full report of `sluice checkpoint inspect`.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "state directory  {}", self.path.display());
        let _ = writeln!(s, "layout           {}", self.layout.as_deref().unwrap_or("(none)"));
        match (self.committed_epoch(), self.committed_at_ms) {
            (Some(e), Some(at)) => {
                let _ = writeln!(s, "committed epoch  {e} at {}", utc(at));
            }
            _ => {
                let _ = writeln!(s, "committed epoch  none yet");
            }
        }
        let _ = writeln!(s, "resumes at       epoch {}", self.resume_epoch);
        let _ = writeln!(s, "source positions");
        for (k, v) in &self.positions {
            let _ = writeln!(s, "  {k:<48} {v}");
        }
        let _ = writeln!(s, "file sinks (committed bytes)");
        for (k, v) in &self.sink_lengths {
            let _ = writeln!(s, "  {k:<48} {v}");
        }
        let _ = writeln!(s, "Kafka outbox (committed, undelivered)");
        for (k, first, last, n) in &self.outbox {
            let _ = writeln!(s, "  {k:<48} epochs {first}..={last}, {n} records");
        }
        let _ = writeln!(s, "tables (RocksDB estimates)");
        let _ = writeln!(s, "  {:<24} {:>14} {:>14} {:>14}", "table", "entries (est.)", "sst bytes", "memtable bytes");
        for t in &self.tables {
            let _ = writeln!(s, "  {:<24} {:>14} {:>14} {:>14}", t.name, t.keys, t.sst_bytes, t.memtable_bytes);
        }
        s
    }

    /// As JSON, for tools.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "state_dir": self.path.display().to_string(),
            "layout": self.layout,
            "committed_epoch": self.committed_epoch(),
            "resume_epoch": self.resume_epoch,
            "committed_at_ms": self.committed_at_ms,
            "positions": self.positions.iter().map(|(k, v)| serde_json::json!({"partition": k, "position": v})).collect::<Vec<_>>(),
            "file_sinks": self.sink_lengths.iter().map(|(k, v)| serde_json::json!({"sink": k, "bytes": v})).collect::<Vec<_>>(),
            "outbox": self.outbox.iter().map(|(k, f, l, n)| serde_json::json!({"sink": k, "first_epoch": f, "last_epoch": l, "records": n})).collect::<Vec<_>>(),
            "tables": self.tables.iter().map(|t| serde_json::json!({"name": t.name, "keys": t.keys, "sst_bytes": t.sst_bytes, "memtable_bytes": t.memtable_bytes})).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (a leap day) 12:34:56.789.
        assert_eq!(utc(951_827_696_789), "2000-02-29T12:34:56.789Z");
        assert_eq!(utc(1_795_996_800_000), "2026-11-30T00:00:00.000Z");
    }
}
