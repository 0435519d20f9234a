//! The event model: what flows between operators.

use serde::{Deserialize, Serialize};

/// A timely epoch number (re-exported from sluice-state).
pub type Epoch = sluice_state::Epoch;

/// Where a record came from: a source partition (global index over all sources of the
/// pipeline) and its position there (byte offset of a file line, record index of a generator,
/// offset of a Kafka message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Origin {
    /// Global partition index.
    pub partition: u32,
    /// Position within the partition.
    pub offset: u64,
}

/// What a message broker tells about a record besides its bytes (a Kafka message's key,
/// timestamp and headers). The decoder reads it through `@` paths (`@key`, `@timestamp`,
/// `@header/NAME`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RecordMeta {
    /// The message key.
    pub key: Option<Vec<u8>>,
    /// The broker's (or producer's) timestamp, ms since the Unix epoch.
    pub timestamp_ms: Option<i64>,
    /// Headers in their order (a name may repeat).
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Bytes as a source read them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawRecord {
    /// Where the bytes came from.
    pub origin: Origin,
    /// The record, exactly as read.
    pub bytes: Vec<u8>,
    /// Key, timestamp and headers, for sources that have them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Box<RecordMeta>>,
    /// Whether the source can read it again, and whether it is doing so.
    #[serde(default)]
    pub replay: Replay,
}

impl RawRecord {
    /// A record without metadata (a file line, a generated record).
    pub fn new(origin: Origin, bytes: Vec<u8>) -> Self {
        RawRecord { origin, bytes, meta: None, replay: Replay::Kept }
    }
}

/// Whether a record's source can read it again from its origin (so that the order buffer need
/// not store it, see `order.rs`), and whether this copy is such a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Replay {
    /// The source cannot read it again (a paced or change-data source): stored whole while
    /// buffered.
    #[default]
    Kept,
    /// The source can read it again from its origin: only the origin is stored while buffered.
    Rereadable,
    /// Read again at a restart, from before the committed position, to refill the order buffer:
    /// it passed decode and dedup once already, and only the order buffer takes it (if it was
    /// buffered at the commit), nothing else sees it.
    Replayed,
}

/// What a source emits: records, and at the end of each epoch one mark per partition it owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SourceItem {
    /// A record.
    Record(RawRecord),
    /// The partition has emitted everything of this epoch.
    EpochEnd(PartitionMark),
}

/// The end of a partition's epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMark {
    /// Global partition index.
    pub partition: u32,
    /// The partition is exhausted: it holds no watermark back any more.
    pub finished: bool,
    /// The partition produced nothing for longer than the idle timeout (wall clock).
    pub idle: bool,
}

/// A partition's event-time progress at the end of an epoch, broadcast to every worker so that
/// all of them compute the same watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionProgress {
    /// Global partition index.
    pub partition: u32,
    /// The largest event time decoded from the partition so far (ms), if any.
    pub max_event_time_ms: Option<i64>,
    /// See [`PartitionMark::finished`].
    pub finished: bool,
    /// See [`PartitionMark::idle`].
    pub idle: bool,
}

/// The text of an event's fields: a string kept inline up to 24 bytes (ids, entity keys, kinds,
/// currencies), on the heap beyond, so that decoding an event does not allocate per field.
pub type Text = compact_str::CompactString;

/// A decoded event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Idempotency key (the provider's event id).
    pub id: Text,
    /// Entity key (customer, account, card): what features are kept per.
    pub entity: Text,
    /// Event kind (`charge.succeeded`, …); empty when the schema has no kind path.
    pub kind: Text,
    /// Event time, ms since the Unix epoch.
    pub time_ms: i64,
    /// Numeric fields, in schema order; `None` when absent or null.
    pub numbers: Vec<Option<f64>>,
    /// String fields, in schema order; `None` when absent or null.
    pub strings: Vec<Option<Text>>,
    /// Hash of the raw record, to tell a true duplicate from a conflicting one.
    pub payload_hash: u64,
    /// Where the event came from.
    pub origin: Origin,
    /// Set when the event is behind the watermark and the order policy passes it on flagged.
    pub late: bool,
    /// Wall-clock time it was decoded (µs since the Unix epoch): where latency is measured
    /// from. Not part of any output.
    pub ingest_us: i64,
    /// See [`Replay`]. Not part of any output.
    #[serde(default)]
    pub replay: Replay,
}

/// A record that could not be decoded, with why and from where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Why it was rejected.
    pub reason: DeadLetterReason,
    /// Where it came from.
    pub origin: Origin,
    /// The bytes as read, or their first [`DeadLetter::RAW_KEPT`] when longer.
    pub raw: Vec<u8>,
    /// When `raw` was cut: the record's whole length and the XXH3-64 of all its bytes.
    pub cut: Option<(u64, u64)>,
}

impl DeadLetter {
    /// The most of a record a dead letter keeps (a 5 MB line must not be held until its epoch
    /// commits, nor written out whole).
    pub const RAW_KEPT: usize = 4096;

    /// A dead letter of `bytes`, cut to [`DeadLetter::RAW_KEPT`] (at a UTF-8 character
    /// boundary, when the kept part is text) with the whole record's length and hash.
    pub fn new(reason: DeadLetterReason, origin: Origin, mut bytes: Vec<u8>) -> Self {
        if bytes.len() <= Self::RAW_KEPT {
            return DeadLetter { reason, origin, raw: bytes, cut: None };
        }
        let cut = Some((bytes.len() as u64, xxhash_rust::xxh3::xxh3_64(&bytes)));
        let mut keep = Self::RAW_KEPT;
        if let Err(e) = std::str::from_utf8(&bytes[..keep]) {
            // Text cut inside a character: keep the whole characters (a record that is not text
            // before that point stays as it is, written as base64).
            if e.error_len().is_none() && e.valid_up_to() + 4 > keep {
                keep = e.valid_up_to();
            }
        }
        bytes.truncate(keep);
        bytes.shrink_to_fit();
        DeadLetter { reason, origin, raw: bytes, cut }
    }
}

/// Why a record became a dead letter. Its text (`Display`) is the `reason` of the dead-letters
/// output; its [`class`](DeadLetterReason::class) labels the dead-letter counter in `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeadLetterReason {
    /// Longer than `record_bytes_max`.
    Oversized {
        /// The record's length.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// Not UTF-8 from this byte on.
    InvalidUtf8 {
        /// The length of the valid prefix.
        valid_up_to: usize,
    },
    /// Not JSON (the parser's message).
    InvalidJson(String),
    /// A mapped field of the wrong type or value (the whole message, which names the field).
    WrongType(String),
    /// Record metadata that should be text and is not UTF-8 (`the message key`, `header X`).
    MetadataNotUtf8(String),
    /// A required field absent, at this path.
    Missing(RequiredField, String),
    /// A required field present but empty, at this path.
    Empty(RequiredField, String),
    /// A reconciliation input that cannot be applied (why).
    Unreconcilable(String),
    /// An event time outside `[event]` `min_time`, `max_time`, `max_future` (the whole message).
    TimeOutOfRange(String),
}

/// The fields every event must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequiredField {
    /// The idempotency key.
    Id,
    /// The entity key.
    Entity,
    /// The event time.
    Time,
}

impl DeadLetterReason {
    /// The reason without its details, as a metric label (`invalid JSON`, `missing id`).
    pub fn class(&self) -> &'static str {
        match self {
            DeadLetterReason::Oversized { .. } => "oversized",
            DeadLetterReason::InvalidUtf8 { .. } => "invalid UTF-8",
            DeadLetterReason::InvalidJson(_) => "invalid JSON",
            DeadLetterReason::WrongType(_) => "wrong type",
            DeadLetterReason::MetadataNotUtf8(_) => "metadata not UTF-8",
            DeadLetterReason::Missing(RequiredField::Id, _) => "missing id",
            DeadLetterReason::Missing(RequiredField::Entity, _) => "missing entity",
            DeadLetterReason::Missing(RequiredField::Time, _) => "missing event time",
            DeadLetterReason::Empty(RequiredField::Id, _) => "empty id",
            DeadLetterReason::Empty(RequiredField::Entity, _) => "empty entity",
            DeadLetterReason::Empty(RequiredField::Time, _) => "empty event time",
            DeadLetterReason::Unreconcilable(_) => "not reconcilable",
            DeadLetterReason::TimeOutOfRange(_) => "time out of range",
        }
    }
}

impl std::fmt::Display for RequiredField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RequiredField::Id => "id",
            RequiredField::Entity => "entity",
            RequiredField::Time => "event time",
        })
    }
}

impl std::fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeadLetterReason::Oversized { bytes, max } => write!(f, "oversized: {bytes} bytes, more than record_bytes_max = {max}"),
            DeadLetterReason::InvalidUtf8 { valid_up_to } => write!(f, "invalid UTF-8 at byte {valid_up_to}"),
            DeadLetterReason::InvalidJson(e) => write!(f, "invalid JSON: {e}"),
            DeadLetterReason::WrongType(message) | DeadLetterReason::Unreconcilable(message) | DeadLetterReason::TimeOutOfRange(message) => {
                f.write_str(message)
            }
            DeadLetterReason::MetadataNotUtf8(what) => write!(f, "{what} is not UTF-8"),
            DeadLetterReason::Missing(field, path) => write!(f, "missing {field} at {path}"),
            DeadLetterReason::Empty(field, path) => write!(f, "empty {field} at {path}"),
        }
    }
}

/// A repeat of an idempotency key whose payload differs from the first copy's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conflict {
    /// The repeat (the first copy went on through the pipeline).
    pub event: Event,
    /// Event time of the first copy.
    pub first_time_ms: i64,
}

/// An event that arrived behind the watermark.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LateEvent {
    /// The event.
    pub event: Event,
    /// The watermark it was behind (ms).
    pub watermark_ms: i64,
}

/// One event's features, as of its event time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureRecord {
    /// Entity key.
    pub entity: Text,
    /// Event id.
    pub id: Text,
    /// Event kind.
    pub kind: Text,
    /// Event time (ms).
    pub time_ms: i64,
    /// Feature values in the configured order; `None` when undefined (min of nothing).
    pub values: Vec<Option<f64>>,
    /// The event was late and passed through flagged: its values are best effort.
    pub late: bool,
    /// Where the event came from.
    pub origin: Origin,
    /// When its event was decoded (µs since the Unix epoch).
    pub ingest_us: i64,
}

/// Wall-clock microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

/// A stable 64-bit hash, for routing keys to workers. Stable across runs and platforms, so a
/// restart with the same number of workers routes every key as before.
pub fn route_hash(key: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key.as_bytes())
}

/// A compact binary encoding of [`Event`], for state tables (the order buffer).
#[derive(Debug)]
pub struct EventCodec;

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a>(&'a [u8]);
impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!("truncated: wanted {n} bytes, {} left", self.0.len()));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn str(&mut self) -> Result<Text, String> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.take(n)?).map(Text::from).map_err(|e| e.to_string())
    }
}

impl sluice_state::Codec for EventCodec {
    type Value = Event;
    fn encode(e: &Event, out: &mut Vec<u8>) {
        out.push(2); // version
        put_str(out, &e.id);
        put_str(out, &e.entity);
        put_str(out, &e.kind);
        out.extend_from_slice(&e.time_ms.to_le_bytes());
        out.extend_from_slice(&(e.numbers.len() as u32).to_le_bytes());
        for n in &e.numbers {
            match n {
                Some(v) => {
                    out.push(1);
                    out.extend_from_slice(&v.to_bits().to_le_bytes());
                }
                None => out.push(0),
            }
        }
        out.extend_from_slice(&(e.strings.len() as u32).to_le_bytes());
        for s in &e.strings {
            match s {
                Some(v) => {
                    out.push(1);
                    put_str(out, v);
                }
                None => out.push(0),
            }
        }
        out.extend_from_slice(&e.payload_hash.to_le_bytes());
        out.extend_from_slice(&e.origin.partition.to_le_bytes());
        out.extend_from_slice(&e.origin.offset.to_le_bytes());
        out.push(u8::from(e.late));
        out.extend_from_slice(&e.ingest_us.to_le_bytes());
    }
    fn decode(bytes: &[u8]) -> Result<Event, String> {
        let mut r = Reader(bytes);
        let version = r.u8()?;
        if version != 1 && version != 2 {
            return Err(format!("unknown event encoding version {version}"));
        }
        let id = r.str()?;
        let entity = r.str()?;
        let kind = r.str()?;
        let time_ms = r.u64()? as i64;
        let count = r.u32()? as usize;
        let mut numbers = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            numbers.push(if r.u8()? == 1 { Some(f64::from_bits(r.u64()?)) } else { None });
        }
        let count = r.u32()? as usize;
        let mut strings = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            strings.push(if r.u8()? == 1 { Some(r.str()?) } else { None });
        }
        let payload_hash = r.u64()?;
        let partition = r.u32()?;
        let offset = r.u64()?;
        let late = r.u8()? == 1;
        let ingest_us = if version >= 2 { r.u64()? as i64 } else { 0 };
        Ok(Event { id, entity, kind, time_ms, numbers, strings, payload_hash, origin: Origin { partition, offset }, late, ingest_us, replay: Replay::Kept })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_state::Codec;

    #[test]
    fn event_codec_round_trips() {
        let e = Event {
            id: "e1".into(),
            entity: "c".into(),
            kind: "k".into(),
            time_ms: -5,
            numbers: vec![Some(1.5), None],
            strings: vec![None, Some("x".into())],
            payload_hash: 99,
            origin: Origin { partition: 3, offset: 77 },
            late: true,
            ingest_us: 1_795_000_000_000_123,
            replay: Default::default(),
        };
        let mut buf = Vec::new();
        EventCodec::encode(&e, &mut buf);
        assert_eq!(EventCodec::decode(&buf).unwrap(), e);
        assert!(EventCodec::decode(&buf[..buf.len() - 3]).unwrap_err().starts_with("truncated"));
    }
}
