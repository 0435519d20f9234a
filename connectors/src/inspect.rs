//! What the connectors keep in a state directory, read from a committed snapshot for
//! `sluice checkpoint inspect` and the restart report: source positions, file sinks' lengths
//! and the Kafka sinks' undelivered outbox epochs.

use sluice_operators::Epoch;
use sluice_state::{BytesCodec, Snapshot, StateError, StateReader, U64Codec};

use crate::file::SINK_TABLE;
use crate::kafka::sink::OUTBOX_TABLE;
use crate::source::POSITIONS_TABLE;

/// The connectors' committed state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Committed {
    /// Each source partition's committed position (byte offset, record index, Kafka offset,
    /// log offset or LSN, by source type), by partition name.
    pub positions: Vec<(String, u64)>,
    /// Each file sink's committed length in bytes, by stream.
    pub sink_lengths: Vec<(String, u64)>,
    /// Per Kafka sink: committed epochs still in the outbox (first, last, records).
    pub outbox: Vec<(String, Epoch, Epoch, u64)>,
}

fn utf8(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every entry of a table of 8-byte big-endian values, by key; nothing if the state has no
/// such table.
fn u64_table(reader: &StateReader, snapshot: &Snapshot<'_>, name: &str, what: &str) -> Result<Vec<(String, u64)>, StateError> {
    let Ok(table) = reader.table::<U64Codec>(name) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (k, v) in snapshot.range(&table, b"", &[0xff; 8], usize::MAX)? {
        let value =
            v.as_slice().try_into().map(u64::from_be_bytes).map_err(|_| StateError::Codec { table: name.into(), reason: format!("{what} is not 8 bytes") })?;
        out.push((utf8(&k), value));
    }
    Ok(out)
}

/// Reads the connectors' committed state from `snapshot`.
///
/// # Errors
/// RocksDB read errors; a stored value that does not decode.
pub fn committed(reader: &StateReader, snapshot: &Snapshot<'_>) -> Result<Committed, StateError> {
    let positions = u64_table(reader, snapshot, POSITIONS_TABLE, "a position")?;
    let sink_lengths = u64_table(reader, snapshot, SINK_TABLE, "a length")?;
    let mut outbox: Vec<(String, Epoch, Epoch, u64)> = Vec::new();
    if let Ok(table) = reader.table::<BytesCodec>(OUTBOX_TABLE) {
        // Keys: sink id, 0x00, epoch (8 bytes BE), seq (4 bytes BE).
        for (k, _) in snapshot.range(&table, b"", &[0xff; 8], usize::MAX)? {
            let Some(at) = k.iter().position(|b| *b == 0).filter(|at| k.len() == at + 13) else { continue };
            let sink = utf8(&k[..at]);
            let epoch = Epoch::from_be_bytes(k[at + 1..at + 9].try_into().expect("invariant: length checked"));
            match outbox.last_mut() {
                Some(last) if last.0 == sink => {
                    last.2 = epoch;
                    last.3 += 1;
                }
                _ => outbox.push((sink, epoch, epoch, 1)),
            }
        }
    }
    Ok(Committed { positions, sink_lengths, outbox })
}
