//! Turns raw records into typed [`Event`]s; anything that does not decode becomes a dead letter.
//!
//! ```text
//!   source items ──> decode ──> events ───────────────> (dedup)
//!                      ├──────> dead letters (reason, raw bytes, origin)
//!                      └──────> partition progress ──> (watermark, broadcast)
//! ```
//!
//! Fields are picked from the JSON by JSON pointers (RFC 6901) in one pass over the bytes: a
//! trie of the configured paths drives a serde visitor that skips every other value, so no
//! `serde_json::Value` is built per event. The pass is sonic-rs's (SIMD, 1.6× serde_json on the
//! demo's events: `bench/benches/parsers.rs`); a record it refuses is parsed again by
//! serde_json, whose verdict and error text are the dead letter's reason, so reasons read the
//! same whichever parser saw the record first. Event time may be seconds, milliseconds or
//! RFC 3339 (`time_format = "auto"` tells numbers below 10^11 as seconds).
//!
//! A record is a dead letter when it is larger than `record_bytes_max`, not UTF-8, not JSON,
//! not a JSON object, lacks the id, entity or time, or has a field of the wrong type. The
//! reason names the field and its path. Decoding needs no order and keeps no state but, per
//! partition, the largest event time seen, which it reports at every epoch end and commits.
//!
//! A field may also come from what the broker tells about the record, through an `@` path:
//! `@key` (the message key, UTF-8), `@timestamp` (the message timestamp, ms), `@partition`,
//! `@offset`, `@header/NAME` (the first header of that name, UTF-8). `time_fallback` names
//! where the event time comes from when the JSON has none (e.g. `time_fallback = "@timestamp"`
//! takes a Kafka message's timestamp). Sources without metadata (files, the generator) have
//! only `@partition` and `@offset`.
//!
//! Example: with `id = "/id"`, `entity = "/customer/id"`, `time = "/created"`,
//! `{"id":"e1","customer":{"id":"c9"},"created":1700000000}` decodes to an event `e1` of
//! entity `c9` at 1 700 000 000 000 ms.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use sluice_state::{JsonCodec, Table, TableSpec, WorkerState};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::Stream;

use crate::epoch::HeldCapabilities;
use crate::event::{DeadLetter, DeadLetterReason, Epoch, Event, PartitionProgress, RawRecord, Replay, RequiredField, SourceItem, Text};
use crate::metrics::Metrics;
use crate::OperatorError;

/// The table of per-partition progress: partition index (u32, big-endian) to progress.
pub const PROGRESS_TABLE: &str = "partition_progress";

/// The tables decode declares.
pub fn tables() -> Vec<TableSpec> {
    vec![TableSpec::new(PROGRESS_TABLE)]
}

/// How event time is written in the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TimeFormat {
    /// Numbers below 10^11 are seconds, larger ones milliseconds; strings are RFC 3339.
    #[default]
    Auto,
    /// Seconds since the Unix epoch (fractions kept to the millisecond).
    Seconds,
    /// Milliseconds since the Unix epoch.
    Millis,
    /// An RFC 3339 string.
    Rfc3339,
}

/// Where the fields of an event are in its JSON (`[event]` in a pipeline file).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSchema {
    /// JSON pointer of the idempotency key.
    pub id: String,
    /// JSON pointer of the entity key.
    pub entity: String,
    /// JSON pointer of the event time.
    pub time: String,
    /// How the event time is written.
    #[serde(default)]
    pub time_format: TimeFormat,
    /// JSON pointer of the event kind (optional).
    #[serde(default)]
    pub kind: Option<String>,
    /// Numeric fields: name to JSON pointer.
    #[serde(default)]
    pub numbers: std::collections::BTreeMap<String, String>,
    /// String fields: name to JSON pointer.
    #[serde(default)]
    pub strings: std::collections::BTreeMap<String, String>,
    /// Where the event time comes from when the JSON has none at `time`: an `@` path
    /// (`@timestamp`: the Kafka message's timestamp).
    #[serde(default)]
    pub time_fallback: Option<String>,
    /// Records larger than this are dead letters.
    #[serde(default = "default_record_bytes_max")]
    pub record_bytes_max: usize,
    /// Event times before this (RFC 3339) are dead letters.
    #[serde(default = "default_min_time")]
    pub min_time: String,
    /// Event times at or after this (RFC 3339) are dead letters.
    #[serde(default = "default_max_time")]
    pub max_time: String,
    /// Event times more than this ahead of the wall clock at decode are dead letters (`off`,
    /// the default: no bound but `max_time`).
    #[serde(default, deserialize_with = "crate::duration_or_off")]
    pub max_future: Option<crate::DurationMs>,
}

fn default_record_bytes_max() -> usize {
    1 << 20
}
fn default_min_time() -> String {
    "1970-01-01T00:00:00Z".into()
}
fn default_max_time() -> String {
    "2100-01-01T00:00:00Z".into()
}

/// A time in ms as RFC 3339 (or as ms, beyond what RFC 3339 writes).
fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// The plausible range of event times: `[min, max)`, and at most `max_future` ahead of the
/// wall clock. A time outside it (year 9999, i64::MAX, 1e300 seconds) would move the
/// watermark to the end of time and make every later record late; it is a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TimeBounds {
    min: i64,
    max: i64,
    max_future: Option<crate::DurationMs>,
}

impl TimeBounds {
    fn new(schema: &EventSchema) -> Result<Self, OperatorError> {
        let parse = |key: &str, text: &str| {
            time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
                .map_err(|e| OperatorError::Config { key: key.into(), problem: format!("`{text}` is not an RFC 3339 time ({e})") })
        };
        let (min, max) = (parse("event.min_time", &schema.min_time)?, parse("event.max_time", &schema.max_time)?);
        if min >= max {
            return Err(OperatorError::Config { key: "event.max_time".into(), problem: format!("must be after min_time ({})", schema.min_time) });
        }
        Ok(TimeBounds { min, max, max_future: schema.max_future })
    }

    fn check(&self, time_ms: i64, now_ms: i64) -> Result<(), DeadLetterReason> {
        let out = |why: String| Err(DeadLetterReason::TimeOutOfRange(format!("event time out of range: {} {why}", rfc3339(time_ms))));
        if time_ms < self.min {
            return out(format!("is before min_time = {}", rfc3339(self.min)));
        }
        if time_ms >= self.max {
            return out(format!("is not before max_time = {}", rfc3339(self.max)));
        }
        if let Some(ahead) = self.max_future {
            if time_ms > now_ms.saturating_add(ahead.ms()) {
                return out(format!("is more than max_future = {ahead} ahead of the wall clock"));
            }
        }
        Ok(())
    }
}

impl EventSchema {
    /// Names of the numeric fields, in the order of [`Event::numbers`].
    pub fn number_names(&self) -> Vec<String> {
        self.numbers.keys().cloned().collect()
    }
    /// Names of the string fields, in the order of [`Event::strings`].
    pub fn string_names(&self) -> Vec<String> {
        self.strings.keys().cloned().collect()
    }

    /// Checks the schema; the error names the key and the problem.
    ///
    /// # Errors
    /// A pointer that is not a valid JSON pointer, two fields at one path, or a path that is
    /// both a field and the parent of another.
    pub fn validate(&self) -> Result<(), OperatorError> {
        Decoder::new(self).map(|_| ())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Id,
    Entity,
    Kind,
    Time,
    Number(usize),
    Str(usize),
}

/// Record metadata a field can come from (an `@` path).
#[derive(Debug, Clone, PartialEq, Eq)]
enum MetaSource {
    Key,
    Timestamp,
    Partition,
    Offset,
    Header(String),
}

fn parse_meta(key: &str, path: &str) -> Result<MetaSource, OperatorError> {
    Ok(match path {
        "@key" => MetaSource::Key,
        "@timestamp" => MetaSource::Timestamp,
        "@partition" => MetaSource::Partition,
        "@offset" => MetaSource::Offset,
        _ => match path.strip_prefix("@header/") {
            Some(name) if !name.is_empty() => MetaSource::Header(name.to_string()),
            _ => {
                return Err(OperatorError::Config {
                    key: key.to_string(),
                    problem: format!("`{path}` is not a record metadata path; they are @key, @timestamp, @partition, @offset, @header/NAME"),
                })
            }
        },
    })
}

enum MetaValue {
    Int(i64),
    Text(String),
}

impl MetaSource {
    fn value(&self, record: &RawRecord) -> Result<Option<MetaValue>, DeadLetterReason> {
        let text =
            |bytes: &[u8], what: &str| String::from_utf8(bytes.to_vec()).map(MetaValue::Text).map_err(|_| DeadLetterReason::MetadataNotUtf8(what.to_string()));
        Ok(match self {
            MetaSource::Partition => Some(MetaValue::Int(i64::from(record.origin.partition))),
            MetaSource::Offset => Some(MetaValue::Int(record.origin.offset as i64)),
            MetaSource::Timestamp => record.meta.as_ref().and_then(|m| m.timestamp_ms).map(MetaValue::Int),
            MetaSource::Key => match record.meta.as_ref().and_then(|m| m.key.as_deref()) {
                Some(k) => Some(text(k, "the message key")?),
                None => None,
            },
            MetaSource::Header(name) => match record.meta.as_ref().and_then(|m| m.headers.iter().find(|(n, _)| n == name)) {
                Some((_, v)) => Some(text(v, &format!("header {name}"))?),
                None => None,
            },
        })
    }
}

/// A level of the schema's paths: the keys picked below it, or the field it is.
#[derive(Debug, Default)]
struct Node {
    /// Looked up by a linear scan: a few keys per level, faster than hashing each key read.
    children: Vec<(String, Node)>,
    target: Option<(Target, String)>,
}

impl Node {
    fn child(&self, key: &str) -> Option<&Node> {
        self.children.iter().find(|(k, _)| k == key).map(|(_, n)| n)
    }

    fn child_mut(&mut self, key: String) -> &mut Node {
        let at = match self.children.iter().position(|(k, _)| *k == key) {
            Some(at) => at,
            None => {
                self.children.push((key, Node::default()));
                self.children.len() - 1
            }
        };
        &mut self.children[at].1
    }
}

fn parse_pointer(key: &str, pointer: &str) -> Result<Vec<String>, OperatorError> {
    if !pointer.starts_with('/') {
        return Err(OperatorError::Config {
            key: key.to_string(),
            problem: format!("`{pointer}` is not a JSON pointer (it must start with `/`, e.g. `/data/id`)"),
        });
    }
    Ok(pointer[1..].split('/').map(|t| t.replace("~1", "/").replace("~0", "~")).collect())
}

/// A compiled [`EventSchema`].
#[derive(Debug)]
pub struct Decoder {
    root: Node,
    /// Fields taken from record metadata: source, target, config key.
    meta: Vec<(MetaSource, Target, String)>,
    time_fallback: Option<MetaSource>,
    time_format: TimeFormat,
    numbers: usize,
    strings: usize,
    record_bytes_max: usize,
    paths: [String; 3],
    bounds: TimeBounds,
}

#[derive(Default)]
struct Fields<'de> {
    id: Option<Cow<'de, str>>,
    entity: Option<Cow<'de, str>>,
    kind: Option<Cow<'de, str>>,
    time_ms: Option<i64>,
    /// A number read as the time that no i64 of ms holds (1e300): the text of its value.
    time_unrepresentable: Option<f64>,
    numbers: Vec<Option<f64>>,
    strings: Vec<Option<Text>>,
}

impl Decoder {
    /// Compiles a schema.
    ///
    /// # Errors
    /// As [`EventSchema::validate`].
    pub fn new(schema: &EventSchema) -> Result<Self, OperatorError> {
        let mut root = Node::default();
        let mut meta = Vec::new();
        let mut add = |key: String, pointer: &str, target: Target| -> Result<(), OperatorError> {
            if pointer.starts_with('@') {
                meta.push((parse_meta(&key, pointer)?, target, key));
                return Ok(());
            }
            let mut node = &mut root;
            for token in parse_pointer(&key, pointer)? {
                if node.target.is_some() {
                    return Err(OperatorError::Config { key, problem: format!("`{pointer}` lies inside another field's value") });
                }
                node = node.child_mut(token);
            }
            if node.target.is_some() || !node.children.is_empty() {
                return Err(OperatorError::Config { key, problem: format!("`{pointer}` is also the path of another field, or contains one") });
            }
            node.target = Some((target, key));
            Ok(())
        };
        add("event.id".into(), &schema.id, Target::Id)?;
        add("event.entity".into(), &schema.entity, Target::Entity)?;
        add("event.time".into(), &schema.time, Target::Time)?;
        if let Some(kind) = &schema.kind {
            add("event.kind".into(), kind, Target::Kind)?;
        }
        for (i, (name, pointer)) in schema.numbers.iter().enumerate() {
            add(format!("event.numbers.{name}"), pointer, Target::Number(i))?;
        }
        for (i, (name, pointer)) in schema.strings.iter().enumerate() {
            add(format!("event.strings.{name}"), pointer, Target::Str(i))?;
        }
        let time_fallback = schema.time_fallback.as_deref().map(|p| parse_meta("event.time_fallback", p)).transpose()?;
        if schema.record_bytes_max == 0 {
            return Err(OperatorError::Config { key: "event.record_bytes_max".into(), problem: "must be at least 1".into() });
        }
        Ok(Decoder {
            root,
            meta,
            time_fallback,
            time_format: schema.time_format,
            numbers: schema.numbers.len(),
            strings: schema.strings.len(),
            record_bytes_max: schema.record_bytes_max,
            paths: [schema.id.clone(), schema.entity.clone(), schema.time.clone()],
            bounds: TimeBounds::new(schema)?,
        })
    }

    fn no_fields<'de>(&self) -> Fields<'de> {
        Fields { numbers: vec![None; self.numbers], strings: vec![None; self.strings], ..Fields::default() }
    }

    /// Picks the fields with sonic-rs (SIMD). Its errors are not the reasons a dead letter
    /// gives: a record it refuses goes to [`Decoder::parse_exact`], which decides. So does a
    /// record with a `\u` escape, as sonic-rs skips a value without checking its escapes' hex
    /// digits where serde_json refuses it (the test below compares both on 100,000 mutants).
    fn parse_fast<'de>(&self, text: &'de str, fields: &mut Fields<'de>) -> Result<(), ()> {
        // Most records have no backslash at all: one SIMD scan for it, no searcher built.
        let bytes = text.as_bytes();
        if memchr::memchr_iter(b'\\', bytes).any(|i| bytes.get(i + 1) == Some(&b'u')) {
            return Err(());
        }
        self.parse_fast_unchecked(text, fields).map_err(|_| ())
    }

    fn parse_fast_unchecked<'de>(&self, text: &'de str, fields: &mut Fields<'de>) -> Result<(), sonic_rs::Error> {
        let mut de = sonic_rs::Deserializer::from_str(text);
        NodeSeed { node: &self.root, fields, format: self.time_format }.deserialize(&mut de)?;
        de.end()
    }

    /// Picks the fields with serde_json, whose errors are the dead-letter reasons.
    fn parse_exact<'de>(&self, text: &'de str, fields: &mut Fields<'de>) -> Result<(), DeadLetterReason> {
        let mut de = serde_json::Deserializer::from_str(text);
        let seed = NodeSeed { node: &self.root, fields, format: self.time_format };
        seed.deserialize(&mut de).and_then(|()| de.end()).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => DeadLetterReason::WrongType(e.to_string()),
            _ => DeadLetterReason::InvalidJson(e.to_string()),
        })
    }

    /// Decodes one record.
    ///
    /// # Errors
    /// The reason the record is a dead letter.
    pub fn decode(&self, record: &RawRecord) -> Result<Event, DeadLetterReason> {
        self.decode_at(record, crate::event::now_us() / 1000)
    }

    /// Decodes one record, `now_ms` being the wall clock for `max_future`.
    ///
    /// # Errors
    /// The reason the record is a dead letter.
    pub fn decode_at(&self, record: &RawRecord, now_ms: i64) -> Result<Event, DeadLetterReason> {
        self.decode_with(record, true, now_ms)
    }

    /// Decodes one record with serde_json alone (the reference the fast path is measured and
    /// tested against).
    ///
    /// # Errors
    /// The reason the record is a dead letter.
    pub fn decode_with_serde_json(&self, record: &RawRecord) -> Result<Event, DeadLetterReason> {
        self.decode_with(record, false, crate::event::now_us() / 1000)
    }

    /// Decodes one record, trying sonic-rs first when `fast`.
    fn decode_with(&self, record: &RawRecord, fast: bool, now_ms: i64) -> Result<Event, DeadLetterReason> {
        let bytes = &record.bytes;
        if bytes.len() > self.record_bytes_max {
            return Err(DeadLetterReason::Oversized { bytes: bytes.len(), max: self.record_bytes_max });
        }
        let text = std::str::from_utf8(bytes).map_err(|e| DeadLetterReason::InvalidUtf8 { valid_up_to: e.valid_up_to() })?;
        let mut fields = self.no_fields();
        if !fast || self.parse_fast(text, &mut fields).is_err() {
            fields = self.no_fields();
            self.parse_exact(text, &mut fields)?;
        }
        for (source, target, name) in &self.meta {
            if let Some(v) = source.value(record)? {
                apply_meta(&mut fields, *target, name, self.time_format, v)?;
            }
        }
        if fields.time_ms.is_none() {
            if let Some(source) = &self.time_fallback {
                if let Some(v) = source.value(record)? {
                    apply_meta(&mut fields, Target::Time, "event.time_fallback", self.time_format, v)?;
                }
            }
        }
        if let Some(v) = fields.time_unrepresentable {
            return Err(DeadLetterReason::TimeOutOfRange(format!("event time out of range: {v:e} is beyond any time in milliseconds")));
        }
        let id = fields.id.ok_or_else(|| DeadLetterReason::Missing(RequiredField::Id, self.paths[0].clone()))?;
        let entity = fields.entity.ok_or_else(|| DeadLetterReason::Missing(RequiredField::Entity, self.paths[1].clone()))?;
        let time_ms = fields.time_ms.ok_or_else(|| DeadLetterReason::Missing(RequiredField::Time, self.paths[2].clone()))?;
        if id.is_empty() {
            return Err(DeadLetterReason::Empty(RequiredField::Id, self.paths[0].clone()));
        }
        if entity.is_empty() {
            return Err(DeadLetterReason::Empty(RequiredField::Entity, self.paths[1].clone()));
        }
        self.bounds.check(time_ms, now_ms)?;
        Ok(Event {
            id: Text::from(id),
            entity: Text::from(entity),
            kind: fields.kind.map(Text::from).unwrap_or_default(),
            time_ms,
            numbers: fields.numbers,
            strings: fields.strings,
            payload_hash: xxhash_rust::xxh3::xxh3_64(bytes),
            origin: record.origin,
            late: false,
            ingest_us: 0,
            replay: record.replay,
        })
    }
}

/// Sets a field from record metadata, with the checks and conversions of a JSON value: a
/// timestamp is milliseconds; a header's text that reads as a number is that number.
fn apply_meta(fields: &mut Fields<'_>, target: Target, name: &str, format: TimeFormat, v: MetaValue) -> Result<(), DeadLetterReason> {
    let leaf = LeafVisitor { target, name, fields, format };
    let result: Result<(), serde_json::Error> = match v {
        MetaValue::Int(ms) if target == Target::Time => {
            leaf.fields.time_ms = Some(ms);
            Ok(())
        }
        MetaValue::Int(n) => leaf.number(n as f64, Some(n)),
        MetaValue::Text(t) if matches!(target, Target::Time | Target::Number(_)) && t.trim().parse::<f64>().is_ok() => {
            let n: f64 = t.trim().parse().expect("invariant: parsed above");
            leaf.number(n, t.trim().parse::<i64>().ok())
        }
        MetaValue::Text(t) => leaf.string(Cow::Owned(t)),
    };
    result.map_err(|e| DeadLetterReason::WrongType(e.to_string()))
}

struct NodeSeed<'a, 'de> {
    node: &'a Node,
    fields: &'a mut Fields<'de>,
    format: TimeFormat,
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        match &self.node.target {
            Some((target, name)) => deserializer.deserialize_any(LeafVisitor { target: *target, name, fields: self.fields, format: self.format }),
            None => deserializer.deserialize_any(self),
        }
    }
}

impl<'de> Visitor<'de> for NodeSeed<'_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match self.node.child(&key.0) {
                Some(child) => map.next_value_seed(NodeSeed { node: child, fields: &mut *self.fields, format: self.format })?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0usize;
        loop {
            let child = if self.node.children.is_empty() { None } else { self.node.child(index.to_string().as_str()) };
            let more = match child {
                Some(child) => seq.next_element_seed(NodeSeed { node: child, fields: &mut *self.fields, format: self.format })?.is_some(),
                None => seq.next_element::<IgnoredAny>()?.is_some(),
            };
            if !more {
                return Ok(());
            }
            index += 1;
        }
    }
    // Scalars where an object was expected: nothing below can match, so nothing is picked.
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

/// An object key, borrowed from the input when it has no escapes.
struct Key<'de>(Cow<'de, str>);
impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

struct LeafVisitor<'a, 'de> {
    target: Target,
    name: &'a str,
    fields: &'a mut Fields<'de>,
    format: TimeFormat,
}

impl<'de> LeafVisitor<'_, 'de> {
    fn wrong<E: de::Error>(&self, found: &str) -> E {
        let expected = match self.target {
            Target::Number(_) => "a number",
            Target::Time => match self.format {
                TimeFormat::Auto => "a number or an RFC 3339 string",
                TimeFormat::Rfc3339 => "an RFC 3339 string",
                _ => "a number",
            },
            _ => "a string or an integer",
        };
        E::custom(format!("wrong type: {} must be {expected}, found {found}", self.name))
    }

    fn number<E: de::Error>(self, v: f64, integer: Option<i64>) -> Result<(), E> {
        // -0 is 0 (sonic-rs reads `-0` as the integer 0, serde_json as -0.0).
        let v = if v == 0.0 { 0.0 } else { v };
        match self.target {
            Target::Number(i) => self.fields.numbers[i] = Some(v),
            Target::Time => {
                let seconds = match self.format {
                    TimeFormat::Millis => false,
                    TimeFormat::Seconds => true,
                    TimeFormat::Auto => v.abs() < 1e11,
                    TimeFormat::Rfc3339 => return Err(self.wrong("a number")),
                };
                let ms = match integer {
                    Some(n) if !seconds => n,
                    _ => {
                        let ms = if seconds { v * 1000.0 } else { v };
                        // Beyond an i64 of ms, a cast would saturate to a time that looks valid.
                        if ms.is_nan() || ms.abs() >= 9.2e18 {
                            // The last value of a repeated key wins, as for any field.
                            (self.fields.time_ms, self.fields.time_unrepresentable) = (None, Some(v));
                            return Ok(());
                        }
                        ms.round() as i64
                    }
                };
                (self.fields.time_ms, self.fields.time_unrepresentable) = (Some(ms), None);
            }
            Target::Id | Target::Entity | Target::Kind | Target::Str(_) => match integer {
                Some(n) => self.string(Cow::Owned(n.to_string()))?,
                None => return Err(self.wrong("a fractional number")),
            },
        }
        Ok(())
    }

    fn string<E: de::Error>(self, v: Cow<'de, str>) -> Result<(), E> {
        match self.target {
            Target::Id => self.fields.id = Some(v),
            Target::Entity => self.fields.entity = Some(v),
            Target::Kind => self.fields.kind = Some(v),
            Target::Str(i) => self.fields.strings[i] = Some(Text::from(v)),
            Target::Number(_) => return Err(self.wrong("a string")),
            Target::Time => {
                if matches!(self.format, TimeFormat::Seconds | TimeFormat::Millis) {
                    return Err(self.wrong("a string"));
                }
                let parsed = time::OffsetDateTime::parse(&v, &time::format_description::well_known::Rfc3339)
                    .map_err(|e| E::custom(format!("wrong type: {} is not an RFC 3339 time ({e}): {v:?}", self.name)))?;
                (self.fields.time_ms, self.fields.time_unrepresentable) = (Some((parsed.unix_timestamp_nanos() / 1_000_000) as i64), None);
            }
        }
        Ok(())
    }
}

impl<'de> Visitor<'de> for LeafVisitor<'_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a scalar for {}", self.name)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.number(v as f64, Some(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.number(v as f64, i64::try_from(v).ok())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        let integer = (v.fract() == 0.0 && v.abs() < 9.0e15).then_some(v as i64);
        self.number(v, integer)
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<(), E> {
        self.string(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.string(Cow::Owned(v.to_string()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(()) // null: absent
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(self.wrong("a boolean"))
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(self.wrong("an object"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(self.wrong("an array"))
    }
}

/// The decode operator, on a stream of source items.
pub trait Decode<'scope> {
    /// Decodes records; returns `(events, dead letters, partition progress)`.
    ///
    /// `state` is this worker's state handle; the progress of the partitions this worker reads
    /// is committed with each epoch and restored from there.
    ///
    /// # Errors
    /// The progress table cannot be read at start-up.
    #[allow(clippy::type_complexity)]
    fn decode(
        self,
        decoder: Decoder,
        state: Rc<RefCell<WorkerState>>,
        metrics: std::sync::Arc<Metrics>,
    ) -> Result<(Stream<'scope, Epoch, Vec<Event>>, Stream<'scope, Epoch, Vec<DeadLetter>>, Stream<'scope, Epoch, Vec<PartitionProgress>>), OperatorError>;
}

/// The entry of `partition` in a table by partition index, grown to hold it.
fn slot_of(by_partition: &mut Vec<Option<i64>>, partition: u32) -> &mut Option<i64> {
    let i = partition as usize;
    if by_partition.len() <= i {
        by_partition.resize(i + 1, None);
    }
    &mut by_partition[i]
}

/// Reads the committed progress of every partition, as a run starts from it: when every
/// partition had finished (a run over files with `at_eof = "finish"` that went to the end), none
/// is finished any more, since each reports again in this run (at once, if nothing was
/// appended). The watermark trackers of order, dedup and drift then resume from the data rather
/// than at the end of time.
///
/// # Errors
/// RocksDB errors, or a value that does not decode.
pub fn committed_progress(state: &WorkerState) -> Result<Vec<PartitionProgress>, OperatorError> {
    let table: Table<JsonCodec<PartitionProgress>> = state.store().table(PROGRESS_TABLE)?;
    let mut out = Vec::new();
    for (_, value) in state.scan_committed(&table)? {
        out.push(
            serde_json::from_slice(&value)
                .map_err(|e| OperatorError::State(sluice_state::StateError::Codec { table: PROGRESS_TABLE.into(), reason: e.to_string() }))?,
        );
    }
    if out.iter().all(|p: &PartitionProgress| p.finished) {
        for p in &mut out {
            p.finished = false;
        }
    }
    Ok(out)
}

impl<'scope> Decode<'scope> for Stream<'scope, Epoch, Vec<SourceItem>> {
    fn decode(
        self,
        decoder: Decoder,
        state: Rc<RefCell<WorkerState>>,
        metrics: std::sync::Arc<Metrics>,
    ) -> Result<(Stream<'scope, Epoch, Vec<Event>>, Stream<'scope, Epoch, Vec<DeadLetter>>, Stream<'scope, Epoch, Vec<PartitionProgress>>), OperatorError> {
        let table: Table<JsonCodec<PartitionProgress>> = state.borrow().store().table(PROGRESS_TABLE)?;
        // The largest event time per global partition index.
        let mut max_time: Vec<Option<i64>> = Vec::new();
        for p in committed_progress(&state.borrow())? {
            *slot_of(&mut max_time, p.partition) = p.max_event_time_ms;
        }

        let mut builder = OperatorBuilder::new("Decode".to_owned(), self.scope());
        let mut input = builder.new_input(self, Pipeline);
        let (events_out, events) = builder.new_output::<Vec<Event>>();
        let (dead_out, dead) = builder.new_output::<Vec<DeadLetter>>();
        let (progress_out, progress) = builder.new_output::<Vec<PartitionProgress>>();
        let mut events_out = OutputBuilder::<_, timely::container::CapacityContainerBuilder<Vec<Event>>>::from(events_out);
        let mut dead_out = OutputBuilder::<_, timely::container::CapacityContainerBuilder<Vec<DeadLetter>>>::from(dead_out);
        let mut progress_out = OutputBuilder::<_, timely::container::CapacityContainerBuilder<Vec<PartitionProgress>>>::from(progress_out);

        builder.build(move |capabilities| {
            let mut held = HeldCapabilities::new(capabilities);
            move |frontiers| {
                let mut events_h = events_out.activate();
                let mut dead_h = dead_out.activate();
                let mut progress_h = progress_out.activate();
                input.for_each_stamp(|cap, data| {
                    let epoch = *cap.least().expect("invariant: an input stamp has a time");
                    let events_cap = held.at(0, epoch);
                    let dead_cap = held.at(1, epoch);
                    let progress_cap = held.at(2, epoch);
                    let mut events_s = events_h.session(&events_cap);
                    let mut dead_s = dead_h.session(&dead_cap);
                    let mut progress_s = progress_h.session(&progress_cap);
                    let (mut decoded, mut rejected) = (0u64, 0u64);
                    let mut latest = i64::MIN;
                    let now = crate::event::now_us();
                    for item in data.flat_map(|d| d.drain(..)) {
                        match item {
                            // A record read again to refill the order buffer was decoded
                            // (and counted, or dead-lettered) the first time: only an event
                            // goes on, to the order buffer.
                            SourceItem::Record(record) if record.replay == Replay::Replayed => {
                                // Its ingest time is unknown (before the restart): latency skips it.
                                if let Ok(event) = decoder.decode_at(&record, now / 1000) {
                                    events_s.give(event);
                                }
                            }
                            SourceItem::Record(record) => match decoder.decode_at(&record, now / 1000) {
                                Ok(mut event) => {
                                    event.ingest_us = now;
                                    let slot = slot_of(&mut max_time, event.origin.partition);
                                    *slot = Some(slot.map_or(event.time_ms, |m| m.max(event.time_ms)));
                                    decoded += 1;
                                    latest = latest.max(event.time_ms);
                                    events_s.give(event);
                                }
                                Err(reason) => {
                                    rejected += 1;
                                    metrics.decode.add_dead_letter(&reason);
                                    dead_s.give(DeadLetter::new(reason, record.origin, record.bytes));
                                }
                            },
                            SourceItem::EpochEnd(mark) => {
                                let progress = PartitionProgress {
                                    partition: mark.partition,
                                    max_event_time_ms: max_time.get(mark.partition as usize).copied().flatten(),
                                    finished: mark.finished,
                                    idle: mark.idle,
                                };
                                // Idle is wall-clock state: not committed, so a restart starts
                                // with the partition active again.
                                let stored = PartitionProgress { idle: false, ..progress };
                                state.borrow_mut().put(epoch, &table, &mark.partition.to_be_bytes(), &stored);
                                progress_s.give(progress);
                            }
                        }
                    }
                    metrics.decode.add(decoded, rejected);
                    metrics.time.max_event_time_ms.raise(latest);
                });
                held.downgrade(crate::epoch::input_frontier(frontiers));
            }
        });
        Ok((events, dead, progress))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Origin, RecordMeta};

    fn schema() -> EventSchema {
        EventSchema {
            id: "/id".into(),
            entity: "/customer/id".into(),
            time: "/created".into(),
            time_format: TimeFormat::Auto,
            kind: Some("/type".into()),
            numbers: [("amount".to_string(), "/data/amount".to_string())].into(),
            strings: [("currency".to_string(), "/data/currency".to_string()), ("tag".to_string(), "/tags/1".to_string())].into(),
            time_fallback: None,
            record_bytes_max: 200,
            min_time: default_min_time(),
            max_time: default_max_time(),
            max_future: None,
        }
    }

    fn decode(json: &str) -> Result<Event, String> {
        let d = Decoder::new(&schema()).unwrap();
        d.decode(&RawRecord::new(Origin { partition: 2, offset: 40 }, json.as_bytes().to_vec())).map_err(|e| e.to_string())
    }

    #[test]
    fn each_reason_has_the_class_it_is_counted_by() {
        let d = Decoder::new(&schema()).unwrap();
        let reason = |bytes: &[u8]| d.decode(&RawRecord::new(Origin { partition: 0, offset: 0 }, bytes.to_vec())).unwrap_err();
        let cases: [(&[u8], &str, &str); 6] = [
            (br#"{"id":"e","#, "invalid JSON", "invalid JSON: EOF while parsing a value at line 1 column 10"),
            (br#"{"id":"e","created":1}"#, "missing entity", "missing entity at /customer/id"),
            (br#"{"id":"","customer":{"id":"c"},"created":1}"#, "empty id", "empty id at /id"),
            (br#"{"customer":{"id":"c"},"created":1}"#, "missing id", "missing id at /id"),
            (b"{\"id\":\"\xff\"}", "invalid UTF-8", "invalid UTF-8 at byte 7"),
            (
                br#"{"id":"e","customer":{"id":"c"},"created":1,"data":{"amount":"12"}}"#,
                "wrong type",
                "wrong type: event.numbers.amount must be a number, found a string at line 1 column 65",
            ),
        ];
        for (bytes, class, text) in cases {
            let r = reason(bytes);
            assert_eq!((r.class(), r.to_string().as_str()), (class, text), "{}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn picks_nested_fields_and_skips_the_rest() {
        let e = decode(r#"{"skip":{"deep":[1,{"x":2}]},"id":"e1","type":"charge.succeeded","customer":{"id":"c9","name":"A"},"created":1700000000,"data":{"amount":12.5,"currency":"EUR"},"tags":["a","b"]}"#).unwrap();
        assert_eq!((e.id.as_str(), e.entity.as_str(), e.kind.as_str(), e.time_ms), ("e1", "c9", "charge.succeeded", 1_700_000_000_000));
        assert_eq!(e.numbers, vec![Some(12.5)]);
        assert_eq!(e.strings, vec![Some("EUR".into()), Some("b".into())]);
        assert_eq!(e.origin, Origin { partition: 2, offset: 40 });
    }

    fn with_meta(json: &str, meta: Option<RecordMeta>) -> RawRecord {
        RawRecord { meta: meta.map(Box::new), ..RawRecord::new(Origin { partition: 3, offset: 77 }, json.as_bytes().to_vec()) }
    }

    #[test]
    fn fields_from_the_message_key_timestamp_headers_and_position() {
        let mut s = schema();
        s.entity = "@key".into();
        s.time = "/created".into();
        s.time_fallback = Some("@timestamp".into());
        s.strings = [("origin".to_string(), "@header/source".to_string()), ("where".to_string(), "@offset".to_string())].into();
        s.numbers = [("amount".to_string(), "@header/amount".to_string())].into();
        let d = Decoder::new(&s).unwrap();
        let meta = RecordMeta {
            key: Some(b"cust-7".to_vec()),
            timestamp_ms: Some(1_700_000_000_999),
            headers: vec![("source".into(), b"psp".to_vec()), ("amount".into(), b"12.5".to_vec()), ("source".into(), b"second".to_vec())],
        };
        // No time in the JSON: the message timestamp.
        let e = d.decode(&with_meta(r#"{"id":"e1"}"#, Some(meta.clone()))).unwrap();
        assert_eq!((e.id.as_str(), e.entity.as_str(), e.time_ms), ("e1", "cust-7", 1_700_000_000_999));
        assert_eq!(e.strings, vec![Some("psp".into()), Some("77".into())]);
        assert_eq!(e.numbers, vec![Some(12.5)]);
        // A time in the JSON wins over the fallback.
        assert_eq!(d.decode(&with_meta(r#"{"id":"e1","created":1700000001}"#, Some(meta.clone()))).unwrap().time_ms, 1_700_000_001_000);
        // No key: the entity is missing, named by its path.
        let no_key = RecordMeta { key: None, ..meta.clone() };
        assert_eq!(d.decode(&with_meta(r#"{"id":"e1"}"#, Some(no_key))).unwrap_err().to_string(), "missing entity at @key");
        // A file record has no timestamp: no fallback either.
        assert_eq!(d.decode(&with_meta(r#"{"id":"e1"}"#, None)).unwrap_err().to_string(), "missing entity at @key");
        let mut t = schema();
        t.time_fallback = Some("@timestamp".into());
        let d = Decoder::new(&t).unwrap();
        assert_eq!(d.decode(&with_meta(r#"{"id":"e","customer":{"id":"c"}}"#, None)).unwrap_err().to_string(), "missing event time at /created");
        // A header that is not a number where a number is wanted.
        let bad = RecordMeta { headers: vec![("amount".into(), b"twelve".to_vec())], ..meta };
        let mut u = schema();
        u.numbers = [("amount".to_string(), "@header/amount".to_string())].into();
        let d = Decoder::new(&u).unwrap();
        assert_eq!(
            d.decode(&with_meta(r#"{"id":"e","customer":{"id":"c"},"created":1}"#, Some(bad))).unwrap_err().to_string(),
            "wrong type: event.numbers.amount must be a number, found a string"
        );
    }

    #[test]
    fn unknown_metadata_paths_are_config_errors() {
        let mut s = schema();
        s.entity = "@keys".into();
        let e = Decoder::new(&s).unwrap_err().to_string();
        assert!(e.contains("event.entity") && e.contains("`@keys` is not a record metadata path"), "{e}");
        let mut s = schema();
        s.time_fallback = Some("@header/".into());
        assert!(Decoder::new(&s).unwrap_err().to_string().contains("event.time_fallback"));
    }

    #[test]
    fn event_time_in_millis_rfc3339_and_fractional_seconds() {
        let base = r#""id":"e","customer":{"id":"c"}"#;
        assert_eq!(decode(&format!(r#"{{{base},"created":1700000000123}}"#)).unwrap().time_ms, 1_700_000_000_123);
        assert_eq!(decode(&format!(r#"{{{base},"created":"2023-11-14T22:13:20.5Z"}}"#)).unwrap().time_ms, 1_700_000_000_500);
        assert_eq!(decode(&format!(r#"{{{base},"created":1700000000.25}}"#)).unwrap().time_ms, 1_700_000_000_250);
    }

    #[test]
    fn numeric_ids_become_strings_and_null_is_absent() {
        let e = decode(r#"{"id":42,"customer":{"id":7},"created":1,"data":{"amount":null}}"#).unwrap();
        assert_eq!((e.id.as_str(), e.entity.as_str(), e.time_ms, e.numbers[0]), ("42", "7", 1000, None));
    }

    #[test]
    fn bad_records_get_reasons_that_name_the_problem() {
        assert_eq!(decode(r#"{"id":"e","created":1}"#).unwrap_err(), "missing entity at /customer/id");
        assert_eq!(decode(r#"{"customer":{"id":"c"},"created":1}"#).unwrap_err(), "missing id at /id");
        assert_eq!(decode(r#"{"id":"e","customer":{"id":"c"}}"#).unwrap_err(), "missing event time at /created");
        let wrong = decode(r#"{"id":"e","customer":{"id":"c"},"created":1,"data":{"amount":"12"}}"#).unwrap_err();
        assert!(wrong.starts_with("wrong type: event.numbers.amount must be a number, found a string"), "{wrong}");
        let not_json = decode(r#"{"id":"e","#).unwrap_err();
        assert!(not_json.starts_with("invalid JSON: "), "{not_json}");
        let trailing = decode(r#"{"id":"e","customer":{"id":"c"},"created":1} x"#).unwrap_err();
        assert!(trailing.starts_with("invalid JSON: trailing characters"), "{trailing}");
        let big = format!(r#"{{"id":"{}"}}"#, "x".repeat(300));
        assert_eq!(decode(&big).unwrap_err(), "oversized: 309 bytes, more than record_bytes_max = 200");
        let d = Decoder::new(&schema()).unwrap();
        let bad = d.decode(&RawRecord::new(Origin { partition: 0, offset: 0 }, b"{\"id\":\"\xff\"}".to_vec())).unwrap_err().to_string();
        assert_eq!(bad, "invalid UTF-8 at byte 7");
        let bad_time = decode(r#"{"id":"e","customer":{"id":"c"},"created":"yesterday"}"#).unwrap_err();
        assert!(bad_time.starts_with("wrong type: event.time is not an RFC 3339 time"), "{bad_time}");
        assert!(decode("[1,2]").is_err());
    }

    /// Decodes `bytes` both ways (sonic-rs first, and serde_json alone): the same event or the
    /// same reason, to the bit (`{:?}` tells -0.0 from 0.0).
    fn assert_same_both_ways(d: &Decoder, bytes: &[u8]) {
        let record = RawRecord::new(Origin { partition: 1, offset: 9 }, bytes.to_vec());
        let (fast, exact) = (format!("{:?}", d.decode_with(&record, true, 0)), format!("{:?}", d.decode_with(&record, false, 0)));
        assert_eq!(fast, exact, "record {:?}", String::from_utf8_lossy(bytes));
    }

    #[test]
    fn the_fast_parser_agrees_with_serde_json_on_edge_cases() {
        let d = Decoder::new(&schema()).unwrap();
        let base = r#""id":"e","customer":{"id":"c"}"#;
        let deep = format!(r#"{{{base},"created":1,"skip":{}1{}}}"#, "[".repeat(5000), "]".repeat(5000));
        let cases: Vec<String> = [
            "-0",
            "0.0",
            "-0.0",
            "1e400",
            "-1e400",
            "1.7976931348623157e308",
            "4.9e-324",
            "1e-400",
            "123456789012345678901234567890",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775808",
            "-9223372036854775809",
            "9007199254740993",
            "0.1",
            "1E3",
            "1e+3",
            "01",
            "+1",
            "1.",
            ".5",
            "-",
            "1e",
            "NaN",
            "Infinity",
            "true",
            "null",
            "\"12\"",
            "[]",
            "{}",
            "2.5000000000000000000000000000001",
            "0.30000000000000004",
            "1700000000.0005",
        ]
        .iter()
        .flat_map(|n| {
            [
                format!(r#"{{{base},"created":1,"data":{{"amount":{n}}}}}"#),
                format!(r#"{{{base},"created":{n}}}"#),
                format!(r#"{{"id":{n},"customer":{{"id":"c"}},"created":1}}"#),
            ]
        })
        .chain(
            [
                r#"{"\u0069d":"e","customer":{"id":"c"},"created":1}"#,
                r#"{"id":"e\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00","customer":{"id":"c"},"created":1}"#,
                r#"{"id":"\ud800","customer":{"id":"c"},"created":1}"#,
                r#"{"id":"\udc00x","customer":{"id":"c"},"created":1}"#,
                r#"{"id":"\u00zz","customer":{"id":"c"},"created":1}"#,
                r#"{"id":"a","id":"b","customer":{"id":"c"},"customer":{"x":1},"created":1}"#,
                "{\"id\":\"a\tb\",\"customer\":{\"id\":\"c\"},\"created\":1}",
                "{\"id\":\"a\u{1}b\",\"customer\":{\"id\":\"c\"},\"created\":1}",
                " \r\n\t{ \"id\" : \"e\" , \"customer\" : { \"id\" : \"c\" } , \"created\" : 1 } \n",
                "\u{feff}{\"id\":\"e\",\"customer\":{\"id\":\"c\"},\"created\":1}",
                r#"{"id":"e","customer":{"id":"c"},"created":1,}"#,
                r#"{"id":"e","customer":{"id":"c",},"created":1}"#,
                r#"{"id":"e","customer":{"id":"c"},"created":1}{}"#,
                r#"{"id":"e","customer":{"id":"c"},"created":1}]"#,
                r#"{"id":"e","customer":{"id":"c"},"created":1,"skip":[1,2,]}"#,
                r#"{"id":"e","customer":{"id":"c"},"created":1,"skip":{"a" 1}}"#,
                r#"{"id":"e","customer":{"id":"c"},"created":1,"skip":"\x"}"#,
                r#"{"id":"e","customer":{"id":"c"},"created":1,"skip":"\u00zz"}"#,
                r#"{"id":"e","customer":{"id":"c"},"created":1,"skip":"\ud800"}"#,
                r#"{"id":"e","customer":{"id":"c"},"created":1,"skip":"\udc00\u0041"}"#,
                r#"{"id":"e","customer":{"id":"c"},"created":1,"\u00zz":1}"#,
                "{\"id\":\"e\",\"customer\":{\"id\":\"c\"},\"created\":1,\"skip\":\"a\u{1}b\"}",
                "{\"id\":\"e\",\"customer\":{\"id\":\"c\"},\"created\":1,\"skip\":\"a\nb\"}",
                "{\"id\":\"e\",\"customer\":{\"id\":\"c\"},\"created\":1,\"sk\u{7f}ip\":\"a\u{1f}b\"}",
                r#"{"id":"e","customer":{"id":"c"},"created":1,"skip":tru}"#,
                r#"{"id":"e","customer":{"id":"c"},"created":1,"skip":nul}"#,
                r#"{"id":"e","customer":{"id":"c"},"created":1,"skip":[1 2]}"#,
                r#"{"id":"e","customer":{"id":"c"},"created":1 /* c */}"#,
                r#"{"id":"e","customer":{"id":"c"},"created":1,"tags":["a",{"b":1}]}"#,
                r#"{"id":"e","customer":{"id":"c"},"created":1,"tags":["a","b","c"]}"#,
                r#"{"id":"e","customer":[{"id":"c"}],"created":1}"#,
                r#"{"id":"e","customer":"c","created":1}"#,
                r#"{"id":"e","customer":{"id":true},"created":1}"#,
                r#"{"id":"e","customer":{"id":{}},"created":1}"#,
                r#"{"id":"e","customer":{"id":"c"},"created":"2023-11-14T22:13:20.5+01:00"}"#,
                r#"{"id":"e","customer":{"id":"c"},"created":"2023-11-14"}"#,
                r#"{"id":"e","customer":{"id":"c"},"created":1,"data":{"currency":12}}"#,
                r#"{"id":"e","customer":{"id":"c"},"created":1,"data":{"currency":1.5}}"#,
                r#"{"id":"e","customer":{"id":"c"},"created":1,"data":{"currency":"EUR"}"#,
                r#"[{"id":"e"}]"#,
                r#""a string""#,
                "42",
                "",
                " ",
                "{",
                "{}",
            ]
            .iter()
            .map(|s| s.to_string()),
        )
        .chain([deep])
        .collect();
        for case in &cases {
            assert_same_both_ways(&d, case.as_bytes());
        }
    }

    #[test]
    fn the_fast_parser_agrees_with_serde_json_on_mutated_records() {
        use rand::{Rng, SeedableRng};
        let d = Decoder::new(&schema()).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(19);
        let bases = [
            r#"{"skip":{"deep":[1,{"x":2.5e3}]},"id":"e1","type":"charge.succeeded","customer":{"id":"c9","name":"A\"b"},"created":1700000000,"data":{"amount":-12.5,"currency":"EUR"},"tags":["a","b",null]}"#,
            r#"{"id":7,"customer":{"id":"c\u00e9"},"created":"2023-11-14T22:13:20.5Z","data":{"amount":1e2,"currency":null},"tags":[true,"x"]}"#,
        ];
        let alphabet = b"{}[]\":,\\ -+.0123456789eEtrufalsn\t\nxu";
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..100_000 {
            let mut bytes = bases[rng.gen_range(0..bases.len())].as_bytes().to_vec();
            for _ in 0..rng.gen_range(1..=3) {
                let at = rng.gen_range(0..bytes.len());
                match rng.gen_range(0..4) {
                    0 => {
                        bytes.remove(at);
                    }
                    1 => bytes.insert(at, alphabet[rng.gen_range(0..alphabet.len())]),
                    2 => bytes[at] = alphabet[rng.gen_range(0..alphabet.len())],
                    _ => bytes.truncate(at),
                }
                if bytes.is_empty() {
                    break;
                }
            }
            assert_same_both_ways(&d, &bytes);
            match d.decode(&RawRecord::new(Origin { partition: 1, offset: 9 }, bytes)) {
                Ok(_) => accepted += 1,
                Err(_) => refused += 1,
            }
        }
        // Both outcomes are exercised, not only refusals.
        assert!(accepted > 1_000 && refused > 1_000, "accepted {accepted}, refused {refused}");
    }

    #[test]
    fn times_outside_the_plausible_range_are_dead_letters() {
        let base = r#""id":"e","customer":{"id":"c"}"#;
        let reason = |created: &str| decode(&format!(r#"{{{base},"created":{created}}}"#)).map(|e| e.time_ms);
        assert_eq!(
            reason(r#""9999-12-31T00:00:00Z""#),
            Err("event time out of range: 9999-12-31T00:00:00Z is not before max_time = 2100-01-01T00:00:00Z".into())
        );
        assert_eq!(reason("9223372036854775807"), Err("event time out of range: 9223372036854775807 ms is not before max_time = 2100-01-01T00:00:00Z".into()));
        assert_eq!(reason("1e300"), Err("event time out of range: 1e300 is beyond any time in milliseconds".into()));
        // A repeated key: the last value wins, whichever way round.
        assert_eq!(reason(r#"1e300,"created":1700000000"#), Ok(1_700_000_000_000));
        assert_eq!(reason(r#"1700000000,"created":1e300"#), Err("event time out of range: 1e300 is beyond any time in milliseconds".into()));
        assert_eq!(reason("-1"), Err("event time out of range: 1969-12-31T23:59:59Z is before min_time = 1970-01-01T00:00:00Z".into()));
        // The edges: min_time is in, max_time is out.
        assert_eq!(reason("0"), Ok(0));
        assert_eq!(reason("4102444799999"), Ok(4_102_444_799_999));
        assert!(reason("4102444800000").is_err());
        let d = Decoder::new(&schema()).unwrap();
        let r = d.decode(&RawRecord::new(Origin { partition: 0, offset: 0 }, format!(r#"{{{base},"created":1e300}}"#).into_bytes())).unwrap_err();
        assert_eq!(r.class(), "time out of range");

        // max_future: against the clock given (here 2026-01-01T00:00:00Z), to the millisecond.
        let mut s = schema();
        s.max_future = Some(crate::DurationMs::from_ms(86_400_000));
        let d = Decoder::new(&s).unwrap();
        let now = 1_767_225_600_000;
        let at = |ms: i64| d.decode_at(&RawRecord::new(Origin { partition: 0, offset: 0 }, format!(r#"{{{base},"created":{ms}}}"#).into_bytes()), now);
        assert_eq!(at(now + 86_400_000).unwrap().time_ms, now + 86_400_000);
        assert_eq!(
            at(now + 86_400_001).unwrap_err().to_string(),
            "event time out of range: 2026-01-02T00:00:00.001Z is more than max_future = 1d ahead of the wall clock"
        );

        let mut s = schema();
        s.max_time = "1969-01-01T00:00:00Z".into();
        assert!(Decoder::new(&s).unwrap_err().to_string().contains("event.max_time"));
        s.max_time = "soon".into();
        assert!(Decoder::new(&s).unwrap_err().to_string().contains("`soon` is not an RFC 3339 time"));
    }

    #[test]
    fn schema_errors_name_the_key() {
        let mut s = schema();
        s.numbers.insert("dup".into(), "/data/amount".into());
        let err = Decoder::new(&s).unwrap_err().to_string();
        assert!(err.contains("event.numbers.dup"), "{err}");
        let mut s = schema();
        s.id = "id".into();
        assert!(Decoder::new(&s).unwrap_err().to_string().contains("`id` is not a JSON pointer"));
    }
}
