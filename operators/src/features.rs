//! Computes per-entity features as of each event's time, kept in RocksDB.
//!
//! ```text
//!   events in event-time order (by entity) ──> features ──> one feature record per event
//! ```
//!
//! Requires: events exchanged by entity and released in event-time order (the output of
//! `order`). Each event updates its entity's aggregates and gets the feature values *as of its
//! own time*, itself included: an event's features never include a later event.
//!
//! Features are declared in config: an operation (`count`, `sum`, `mean`, `min`, `max`,
//! `last`), a numeric field (not needed for `count`), and a window:
//!
//! - `all`: everything so far;
//! - tumbling `window = "1h"`: the events since the start of the current hour-aligned window;
//! - sliding `window = "1h", slide = "1m"`: the minute buckets of the last hour, i.e. events
//!   with time in `[floor(t / slide) * slide + slide − size, t]`.
//!
//! `count` counts events (with `field`, events that carry it); `sum` of nothing is 0; `mean`,
//! `min`, `max` and `last` of nothing are undefined (`null`). Features sharing a field and a
//! window share one aggregate. The aggregates of an entity are one value in the table
//! `features`, written once per epoch in which the entity changed; the decoded states of the
//! entities seen lately stay in memory (at most `cache_entities_max`, in two generations: see
//! `StateCache`), the others are read back from RocksDB when they next have an event. With more
//! entities than the bound (10M entities against the default 200,000), every entity's state is
//! still exact: the ones seen rarely cost a RocksDB read (block cache, then disk) each time.
//!
//! A late event passed on flagged (order's `late = "flag"`) updates the aggregates of the
//! windows it falls into, and its own values are computed from the entity's current state: best
//! effort, and marked `late` in the output.
//!
//! Example: `sum` of `amount` over a tumbling `1m` window, entity `c1` with amounts 2 at 0:10,
//! 3 at 0:50, 4 at 1:05 gives 2, 5, 4.

use smallvec::SmallVec;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::Deserialize;
use sluice_state::{Table, TableSpec, WorkerState};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::Stream;

use crate::epoch::{EpochStash, HeldCapabilities};
use crate::event::{Epoch, Event, FeatureRecord, Text};
use crate::metrics::Metrics;
use crate::{DurationMs, OperatorError};

/// The table of per-entity aggregates.
pub const FEATURES_TABLE: &str = "features";

/// The tables the features operator declares.
pub fn tables() -> Vec<TableSpec> {
    vec![TableSpec::new(FEATURES_TABLE).with_point_lookups(), TableSpec::new(LAYOUT_TABLE)]
}

/// The table holding the feature layout the state was written with (one key).
pub const LAYOUT_TABLE: &str = "features_layout";
const LAYOUT_KEY: &[u8] = b"layout";

/// An aggregation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeatureOp {
    /// Number of events (with `field`: events carrying it).
    Count,
    /// Sum of the field.
    Sum,
    /// Mean of the field.
    Mean,
    /// Minimum of the field.
    Min,
    /// Maximum of the field.
    Max,
    /// The latest value of the field.
    Last,
}

/// One `[[features]]` entry of a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    /// Output name.
    pub name: String,
    /// The aggregation.
    pub op: FeatureOp,
    /// The numeric field (a key of `[event.numbers]`).
    #[serde(default)]
    pub field: Option<String>,
    /// `"all"` (default: `None`) or a duration (`"1m"`, `"1h"`, `"24h"`).
    #[serde(default, deserialize_with = "crate::duration_or_all")]
    pub window: Option<DurationMs>,
    /// For a sliding window, the slide (a divisor of the window).
    #[serde(default)]
    pub slide: Option<DurationMs>,
}

/// A window, in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    /// Everything so far.
    All,
    /// Aligned windows of this size.
    Tumbling(i64),
    /// Buckets of `slide`, the last `size / slide` of them.
    Sliding {
        /// Window size.
        size: i64,
        /// Bucket size.
        slide: i64,
    },
}

/// Features compiled against a schema.
#[derive(Debug, Clone)]
pub struct FeatureSet {
    /// Feature names, in output order.
    pub names: Vec<String>,
    /// (numeric field index, window) per aggregate.
    aggregates: Vec<(Option<usize>, Window)>,
    /// (aggregate index, op) per feature.
    features: Vec<(usize, FeatureOp)>,
    /// Per aggregate, the floats its features read ([`FLOAT_SUM`] ...): the ones stored.
    floats: Vec<u8>,
    /// The features as the state depends on them (`n = count, window 1m; ...`): stored with the
    /// state, compared at start.
    layout: String,
}

impl FeatureSet {
    /// Compiles feature specs; `numbers` are the schema's numeric field names.
    ///
    /// # Errors
    /// Unknown fields, bad durations, a slide that does not divide its window, repeated names;
    /// the error names the feature.
    pub fn new(specs: &[FeatureSpec], numbers: &[String]) -> Result<Self, OperatorError> {
        let mut set = FeatureSet { names: Vec::new(), aggregates: Vec::new(), features: Vec::new(), floats: Vec::new(), layout: String::new() };
        for (i, spec) in specs.iter().enumerate() {
            let key = |k: &str| format!("features[{i}] ({}).{k}", spec.name);
            let err = |k: &str, problem: String| OperatorError::Config { key: key(k), problem };
            if spec.name.is_empty() || set.names.contains(&spec.name) {
                return Err(err("name", "must be non-empty and unique".into()));
            }
            let field = match (&spec.field, spec.op) {
                (None, FeatureOp::Count) => None,
                (None, _) => return Err(err("field", format!("`{:?}` needs a numeric field", spec.op).to_lowercase())),
                (Some(f), _) => {
                    Some(numbers.iter().position(|n| n == f).ok_or_else(|| err("field", format!("`{f}` is not one of [event.numbers]: {numbers:?}")))?)
                }
            };
            let window = match (spec.window, spec.slide) {
                (None, None) => Window::All,
                (None, Some(_)) => return Err(err("slide", "a slide needs a window size".into())),
                (Some(size), None) => Window::Tumbling(size.ms()),
                (Some(size), Some(slide)) => {
                    if size.ms() % slide.ms() != 0 {
                        return Err(err("slide", format!("{slide} does not divide the window of {size}")));
                    }
                    Window::Sliding { size: size.ms(), slide: slide.ms() }
                }
            };
            let aggregate = match set.aggregates.iter().position(|a| *a == (field, window)) {
                Some(a) => a,
                None => {
                    set.aggregates.push((field, window));
                    set.floats.push(0);
                    set.aggregates.len() - 1
                }
            };
            set.floats[aggregate] |= floats_read_by(spec.op);
            set.names.push(spec.name.clone());
            set.features.push((aggregate, spec.op));
            let what = match (spec.window, spec.slide) {
                (None, _) => "all".to_string(),
                (Some(size), None) => format!("window {size}"),
                (Some(size), Some(slide)) => format!("window {size} slide {slide}"),
            };
            let op = format!("{:?}", spec.op).to_lowercase();
            let field = spec.field.as_deref().map(|f| format!(" of {f}")).unwrap_or_default();
            set.layout.push_str(&format!("{}{} = {op}{field}, {what}", if i > 0 { "; " } else { "" }, spec.name));
        }
        Ok(set)
    }
}

/// Aggregates of a set of events.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Agg {
    events: u64,
    values: u64,
    sum: f64,
    min: f64,
    max: f64,
    /// The latest value: meaningful when `values > 0`.
    last: f64,
}

impl Agg {
    const EMPTY: Agg = Agg { events: 0, values: 0, sum: 0.0, min: f64::INFINITY, max: f64::NEG_INFINITY, last: 0.0 };

    fn add(&mut self, value: Option<f64>) {
        self.events += 1;
        if let Some(v) = value {
            self.values += 1;
            self.sum += v;
            self.min = self.min.min(v);
            self.max = self.max.max(v);
            self.last = v;
        }
    }

    fn merge(&mut self, other: &Agg) {
        self.events += other.events;
        self.values += other.values;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        if other.values > 0 {
            self.last = other.last;
        }
    }

    fn value(&self, op: FeatureOp, has_field: bool) -> Option<f64> {
        let n = self.values;
        match op {
            FeatureOp::Count => Some(if has_field { n } else { self.events } as f64),
            FeatureOp::Sum => Some(self.sum),
            FeatureOp::Mean => (n > 0).then(|| self.sum / n as f64),
            FeatureOp::Min => (n > 0).then_some(self.min),
            FeatureOp::Max => (n > 0).then_some(self.max),
            FeatureOp::Last => (n > 0).then_some(self.last),
        }
    }
}

/// One aggregate's state for one entity: buckets `(start, agg)`, oldest first. `All` keeps
/// one bucket, tumbling windows the current one, sliding windows up to `size / slide`.
///
/// Inline up to one bucket (every `all` and tumbling aggregate, and a sliding one while an
/// entity is quiet): an entity's aggregates are then one allocation.
type AggState = SmallVec<[(i64, Agg); 1]>;

fn update(state: &mut AggState, window: Window, time: i64, value: Option<f64>) {
    let (start, keep_from) = match window {
        Window::All => (i64::MIN, i64::MIN),
        Window::Tumbling(size) => {
            let start = time.div_euclid(size) * size;
            (start, start)
        }
        Window::Sliding { size, slide } => {
            let start = time.div_euclid(slide) * slide;
            (start, start + slide - size)
        }
    };
    // In order, only the newest bucket can match (checked first); a flagged late event may hit
    // an older one.
    let at = match state.last() {
        Some((newest, _)) if *newest < start => None,
        Some((newest, _)) if *newest == start => Some(state.len() - 1),
        _ => state.iter().position(|(s, _)| *s >= start),
    };
    match at {
        Some(i) if state[i].0 == start => state[i].1.add(value),
        Some(i) => {
            let mut agg = Agg::EMPTY;
            agg.add(value);
            state.insert(i, (start, agg));
        }
        None => {
            let mut agg = Agg::EMPTY;
            agg.add(value);
            state.push((start, agg));
        }
    }
    let newest = state.last().map_or(start, |b| b.0);
    let keep_from = keep_from.max(match window {
        Window::All => i64::MIN,
        Window::Tumbling(_) => newest,
        Window::Sliding { size, slide } => newest + slide - size,
    });
    let expired = state.iter().take_while(|(s, _)| *s < keep_from).count();
    if expired > 0 {
        state.drain(..expired);
    }
}

fn read(state: &AggState, window: Window, time: i64) -> Agg {
    let from = match window {
        Window::All => i64::MIN,
        Window::Tumbling(size) => time.div_euclid(size) * size,
        Window::Sliding { size, slide } => time.div_euclid(slide) * slide + slide - size,
    };
    let mut total = Agg::EMPTY;
    for (start, agg) in state {
        if *start >= from {
            total.merge(agg);
        }
    }
    total
}

/// The format byte of an entity's stored state: 4 stores, of a bucket of several values, only the
/// floats its aggregate's features read (with, per aggregate, the mask of those it keeps); 3
/// (still read) stored all four.
const STATE_FORMAT: u8 = 4;
const STATE_FORMAT_ALL_FLOATS: u8 = 3;

/// The floats of an [`Agg`], as bits of a mask.
const FLOAT_SUM: u8 = 1;
const FLOAT_MIN: u8 = 2;
const FLOAT_MAX: u8 = 4;
const FLOAT_LAST: u8 = 8;
const FLOATS_ALL: u8 = FLOAT_SUM | FLOAT_MIN | FLOAT_MAX | FLOAT_LAST;

/// The floats of an aggregate a feature's value is computed from (counts are always kept).
fn floats_read_by(op: FeatureOp) -> u8 {
    match op {
        FeatureOp::Count => 0,
        FeatureOp::Sum | FeatureOp::Mean => FLOAT_SUM,
        FeatureOp::Min => FLOAT_MIN,
        FeatureOp::Max => FLOAT_MAX,
        FeatureOp::Last => FLOAT_LAST,
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    (v >> 1) as i64 ^ -((v & 1) as i64)
}

/// Encodes an entity's state compactly: most buckets hold one value or none, so a bucket is its
/// start (as a difference from the previous bucket's), its counts (varints), and only the floats
/// its count needs: none for no value, the value itself for one (sum, min, max and last are then
/// what adding it to an empty aggregate gives), and for more, those of sum, min, max and last
/// that `floats[aggregate]` says its features read (a `sum` and a `max` over one window: two of
/// the four). The others read back as an empty aggregate's, which no feature reads; the layout
/// check at start keeps a state from being read by features that would.
fn encode_state(state: &[AggState], floats: &[u8], last_time_ms: i64, out: &mut Vec<u8>) {
    debug_assert_eq!(state.len(), floats.len());
    out.push(STATE_FORMAT);
    put_varint(out, zigzag(last_time_ms));
    put_varint(out, state.len() as u64);
    for (buckets, &kept) in state.iter().zip(floats) {
        // The mask is stored: a reader with other features finds out, instead of reading a sum
        // as a max.
        out.push(kept);
        put_varint(out, buckets.len() as u64);
        let mut previous = 0i64;
        for (start, a) in buckets {
            put_varint(out, zigzag(start.wrapping_sub(previous)));
            previous = *start;
            put_varint(out, a.events);
            put_varint(out, a.values);
            match a.values {
                0 => {}
                1 => out.extend_from_slice(&a.last.to_bits().to_le_bytes()),
                _ => {
                    for (bit, f) in [(FLOAT_SUM, a.sum), (FLOAT_MIN, a.min), (FLOAT_MAX, a.max), (FLOAT_LAST, a.last)] {
                        if kept & bit != 0 {
                            out.extend_from_slice(&f.to_bits().to_le_bytes());
                        }
                    }
                }
            }
        }
    }
}

/// Reads the varints and floats of a stored state.
struct StateReader<'a>(&'a [u8]);

impl StateReader<'_> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.0.split_first().ok_or("truncated feature state")?;
            self.0 = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err("a varint of more than 10 bytes in feature state".into())
    }

    fn byte(&mut self) -> Result<u8, String> {
        let (&b, rest) = self.0.split_first().ok_or("truncated feature state")?;
        self.0 = rest;
        Ok(b)
    }

    fn float(&mut self) -> Result<f64, String> {
        let (bits, rest) = self.0.split_at_checked(8).ok_or("truncated feature state")?;
        self.0 = rest;
        Ok(f64::from_bits(u64::from_le_bytes(bits.try_into().expect("8 bytes"))))
    }
}

/// Reads an entity's stored state: its aggregates and the time of its latest event. `floats` are
/// the floats stored per aggregate, as [`encode_state`] was given them.
fn decode_state(bytes: &[u8], floats: &[u8]) -> Result<(Vec<AggState>, i64), String> {
    let (&format, rest) = bytes.split_first().ok_or("empty feature state")?;
    if format != STATE_FORMAT && format != STATE_FORMAT_ALL_FLOATS {
        return Err(format!("unknown feature state format {format}"));
    }
    let mut r = StateReader(rest);
    let last_time_ms = unzigzag(r.varint()?);
    let count = r.varint()? as usize;
    if count != floats.len() {
        return Err(format!("feature state of {count} aggregates, where the features have {}", floats.len()));
    }
    let mut out = Vec::with_capacity(count.min(1024));
    for (aggregate, &wanted) in floats.iter().enumerate() {
        let kept = if format == STATE_FORMAT_ALL_FLOATS { FLOATS_ALL } else { r.byte()? };
        if wanted & !kept != 0 {
            return Err(format!(
                "feature state of aggregate {aggregate} keeps floats {kept:#06b}, the features read {wanted:#06b}: it was written for other features (a new state directory, or the features it was written with, is needed)"
            ));
        }
        let n = r.varint()? as usize;
        let mut buckets = AggState::with_capacity(n.min(4096));
        let mut start = 0i64;
        for _ in 0..n {
            start = start.wrapping_add(unzigzag(r.varint()?));
            let events = r.varint()?;
            let values = r.varint()?;
            let mut agg = Agg::EMPTY;
            match values {
                0 => {}
                1 => agg.add(Some(r.float()?)),
                _ => {
                    agg.values = values;
                    for (bit, f) in [(FLOAT_SUM, &mut agg.sum), (FLOAT_MIN, &mut agg.min), (FLOAT_MAX, &mut agg.max), (FLOAT_LAST, &mut agg.last)] {
                        if kept & bit != 0 {
                            *f = r.float()?;
                        }
                    }
                }
            }
            agg.events = events;
            buckets.push((start, agg));
        }
        out.push(buckets);
    }
    if !r.0.is_empty() {
        return Err(format!("{} bytes after the end of feature state", r.0.len()));
    }
    Ok((out, last_time_ms))
}

/// An entity's features as the features table holds them, for serving.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedFeatures {
    /// Values in [`FeatureSet::names`] order (`None`: undefined).
    pub values: Vec<Option<f64>>,
    /// The event time they are as of.
    pub as_of_ms: i64,
    /// The time of the entity's latest event.
    pub last_event_ms: i64,
}

impl FeatureSet {
    /// The features of an entity from its stored state `bytes`, as of its latest event, or as of
    /// `as_of` (ms) — which must not be before its latest event: the state holds the aggregates
    /// after that event, not the history before it. Windows are read at the as-of time, so a
    /// later `as_of` sees older buckets expire (a `count` over `1m` an hour after the last event
    /// is 0).
    ///
    /// # Errors
    /// Corrupt state, or `as_of` before the latest event.
    pub fn serve(&self, bytes: &[u8], as_of: Option<i64>) -> Result<ServedFeatures, String> {
        let (aggs, last) = decode_state(bytes, &self.floats)?;
        let at = match as_of {
            Some(t) if t < last => {
                return Err(format!("as_of {t} is before the entity's latest event ({last}); sluice keeps the aggregates after it, not the history before"))
            }
            Some(t) => t,
            None => last,
        };
        let values = self
            .features
            .iter()
            .map(|(a, op)| {
                let (field, window) = self.aggregates[*a];
                read(&aggs[*a], window, at).value(*op, field.is_some())
            })
            .collect();
        Ok(ServedFeatures { values, as_of_ms: at, last_event_ms: last })
    }
}

/// An entity's decoded aggregates, whether the current epoch changed them, its latest event time.
type CachedState = (Vec<AggState>, bool, i64);

/// The decoded states of the entities seen lately, at most `max` of them, in two generations:
/// an entity is looked up in the hot one, then in the cold one (and moved to the hot one), then
/// read from RocksDB (into the hot one). At an epoch's end, once the hot generation holds more
/// than half of `max`, it becomes the cold one and the old cold one is dropped. So an entity
/// seen again within a generation is never read back, a burst of new entities evicts only
/// those not seen for two generations (no LRU list to keep per event), and memory stays
/// bounded by `max` plus one epoch's new entities. Whatever is evicted is in RocksDB already:
/// an entity's state is written in the epoch that changed it, before the epoch ends.
struct StateCache {
    hot: rustc_hash::FxHashMap<Text, CachedState>,
    cold: rustc_hash::FxHashMap<Text, CachedState>,
    max: usize,
}

impl StateCache {
    fn new(max: usize) -> Self {
        StateCache { hot: Default::default(), cold: Default::default(), max }
    }

    /// The entity's state, from the hot generation, the cold one, or `load`.
    fn get_or_load(&mut self, entity: &Text, load: impl FnOnce() -> (Vec<AggState>, i64)) -> &mut CachedState {
        // One probe of the hot generation (an entry, not a lookup then a get): at 100k entities
        // the table is out of cache, and each probe was a miss.
        match self.hot.entry(entity.clone()) {
            std::collections::hash_map::Entry::Occupied(hit) => hit.into_mut(),
            std::collections::hash_map::Entry::Vacant(slot) => {
                let entry = match self.cold.remove(entity) {
                    Some(entry) => entry,
                    None => {
                        let (aggs, latest) = load();
                        (aggs, false, latest)
                    }
                };
                slot.insert(entry)
            }
        }
    }

    /// Ages the generations once the hot one holds more than half the bound.
    fn end_epoch(&mut self) {
        if self.hot.len() > self.max / 2 {
            self.cold = std::mem::take(&mut self.hot);
            // The next generation starts with room for as many entities as the last one held.
            self.hot.reserve(self.cold.len());
        }
    }
}

/// The features operator.
pub trait Features<'scope> {
    /// Computes the features of every event of `self`.
    ///
    /// # Errors
    /// The features table is not declared.
    fn features(
        self,
        set: FeatureSet,
        cache_entities_max: usize,
        state: Rc<RefCell<WorkerState>>,
        metrics: Arc<Metrics>,
    ) -> Result<Stream<'scope, Epoch, Vec<FeatureRecord>>, OperatorError>;
}

impl<'scope> Features<'scope> for Stream<'scope, Epoch, Vec<Event>> {
    fn features(
        self,
        set: FeatureSet,
        cache_entities_max: usize,
        state: Rc<RefCell<WorkerState>>,
        metrics: Arc<Metrics>,
    ) -> Result<Stream<'scope, Epoch, Vec<FeatureRecord>>, OperatorError> {
        let table: Table<sluice_state::BytesCodec> = state.borrow().store().table(FEATURES_TABLE)?;
        // A state written with other features would be read as these (a max under the name of a
        // min): refused, with what to do. A state without a layout gets this one in its first
        // epoch with features.
        let layout_table: Table<sluice_state::BytesCodec> = state.borrow().store().table(LAYOUT_TABLE)?;
        let stored = state.borrow_mut().get(&layout_table, LAYOUT_KEY)?;
        let mut layout_to_store = match stored {
            Some(stored) if stored != set.layout.as_bytes() => {
                return Err(OperatorError::Config {
                    key: "features".into(),
                    problem: format!(
                        "the state in {} was written with other features ({}); this pipeline has {}. Run it with a new state_dir (the features are recomputed from the sources), or put the old [[features]] back",
                        state.borrow().store().path().display(),
                        String::from_utf8_lossy(&stored),
                        set.layout
                    ),
                });
            }
            Some(_) => None,
            None => Some(set.layout.clone().into_bytes()),
        };
        let stream = self.unary_frontier::<CapacityContainerBuilder<Vec<FeatureRecord>>, _, _, _>(Pipeline, "Features", move |cap, _info| {
            let mut held = HeldCapabilities::new(vec![cap]);
            let mut pending: EpochStash<Vec<Vec<Event>>> = EpochStash::new();
            let mut cache = StateCache::new(cache_entities_max);
            let mut dirty: Vec<Text> = Vec::new();
            let mut encoded = Vec::new();
            let mut reads: Vec<Agg> = Vec::with_capacity(set.aggregates.len());
            move |(input, frontier), output| {
                input.for_each_stamp(|cap, data| {
                    let slot = pending.at(*cap.least().expect("invariant: an input stamp has a time"));
                    for batch in data {
                        slot.push(std::mem::take(batch));
                    }
                });
                let frontier = frontier.frontier().first().copied();
                // Chunks in arrival order: order released them in event-time order.
                while let Some((epoch, chunks)) = pending.pop_complete(frontier) {
                    let out_cap = held.at(0, epoch);
                    let mut session = output.session(&out_cap);
                    let mut state = state.borrow_mut();
                    let produced = chunks.iter().map(Vec::len).sum::<usize>() as u64;
                    let mut ingest = Vec::with_capacity(produced as usize);
                    for event in chunks.into_iter().flatten() {
                        ingest.push(event.ingest_us);
                        let aggs = cache.get_or_load(&event.entity, || {
                            match state.get_raw(table.index(), event.entity.as_bytes()).unwrap_or_else(|e| panic!("features: cannot read state: {e}")) {
                                Some(bytes) => {
                                    decode_state(&bytes, &set.floats).unwrap_or_else(|e| panic!("features: state of entity {:?} is corrupt: {e}", event.entity))
                                }
                                None => (vec![AggState::new(); set.aggregates.len()], i64::MIN),
                            }
                        });
                        if !aggs.1 {
                            aggs.1 = true;
                            dirty.push(event.entity.clone());
                        }
                        aggs.2 = aggs.2.max(event.time_ms);
                        let aggs = &mut aggs.0;
                        for (agg, (field, window)) in aggs.iter_mut().zip(&set.aggregates) {
                            let value = field.and_then(|f| event.numbers.get(f).copied().flatten());
                            update(agg, *window, event.time_ms, value);
                        }
                        // Each aggregate read once, however many features share it.
                        reads.clear();
                        reads.extend(aggs.iter().zip(&set.aggregates).map(|(agg, (_, window))| read(agg, *window, event.time_ms)));
                        let values = set.features.iter().map(|(a, op)| reads[*a].value(*op, set.aggregates[*a].0.is_some())).collect();
                        session.give(FeatureRecord {
                            entity: event.entity,
                            id: event.id,
                            kind: event.kind,
                            time_ms: event.time_ms,
                            values,
                            late: event.late,
                            origin: event.origin,
                            ingest_us: event.ingest_us,
                        });
                    }
                    if let Some(layout) = layout_to_store.take() {
                        state.put(epoch, &layout_table, LAYOUT_KEY, &layout);
                    }
                    for entity in dirty.drain(..) {
                        let entry = cache.hot.get_mut(&entity).expect("invariant: dirty entities are in the hot generation");
                        entry.1 = false;
                        encoded.clear();
                        encode_state(&entry.0, &set.floats, entry.2, &mut encoded);
                        state.put_raw(epoch, table.index(), entity.as_bytes(), encoded.as_slice().to_vec());
                    }
                    cache.end_epoch();
                    metrics.features.records_out.fetch_add(produced, Ordering::Relaxed);
                    metrics.latency.record(crate::latency::LatencyStage::Features, crate::event::now_us(), ingest.iter().copied());
                    metrics.latency.hold_for_commit(epoch, ingest.into_iter());
                }
                held.downgrade(frontier);
            }
        });
        Ok(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(window: Window, events: &[(i64, f64)]) -> Vec<Agg> {
        let mut state = AggState::new();
        events
            .iter()
            .map(|(t, v)| {
                update(&mut state, window, *t, Some(*v));
                read(&state, window, *t)
            })
            .collect()
    }

    #[test]
    fn tumbling_sum_resets_at_the_window_boundary() {
        let sums: Vec<f64> = run(Window::Tumbling(60_000), &[(10_000, 2.0), (50_000, 3.0), (65_000, 4.0)]).iter().map(|a| a.sum).collect();
        assert_eq!(sums, vec![2.0, 5.0, 4.0]);
    }

    #[test]
    fn sliding_window_keeps_the_last_buckets() {
        // size 3, slide 1: at t the window is [floor(t) - 2, t].
        let w = Window::Sliding { size: 3, slide: 1 };
        let aggs = run(w, &[(0, 1.0), (1, 2.0), (2, 4.0), (3, 8.0), (5, 16.0)]);
        let sums: Vec<f64> = aggs.iter().map(|a| a.sum).collect();
        assert_eq!(sums, vec![1.0, 3.0, 7.0, 14.0, 24.0]);
        assert_eq!(aggs[4].value(FeatureOp::Min, true), Some(8.0));
        assert_eq!(aggs[4].value(FeatureOp::Count, false), Some(2.0));
    }

    #[test]
    fn empty_aggregates_have_no_min_and_zero_sum() {
        let mut a = Agg::EMPTY;
        a.add(None);
        assert_eq!(a.value(FeatureOp::Min, true), None);
        assert_eq!(a.value(FeatureOp::Sum, true), Some(0.0));
        assert_eq!(a.value(FeatureOp::Count, false), Some(1.0));
        assert_eq!(a.value(FeatureOp::Count, true), Some(0.0));
    }

    #[test]
    fn state_codec_round_trips() {
        let mut s = AggState::new();
        update(&mut s, Window::Sliding { size: 10, slide: 5 }, 3, Some(1.0));
        update(&mut s, Window::Sliding { size: 10, slide: 5 }, 7, None);
        let mut many = AggState::new();
        for (t, v) in [(0, Some(-0.0)), (1, Some(2.5)), (2, None), (3, Some(-7.25))] {
            update(&mut many, Window::All, t, v);
        }
        let mut one = AggState::new();
        update(&mut one, Window::Tumbling(60_000), -90_000, Some(-0.0));
        let states = vec![s, AggState::new(), many, one];
        let all = [FLOATS_ALL; 4];
        let mut buf = Vec::new();
        encode_state(&states, &all, -1_795_000_000_000, &mut buf);
        let (decoded, last) = decode_state(&buf, &all).unwrap();
        assert_eq!(last, -1_795_000_000_000);
        // Compared bit for bit (`-0.0 == 0.0` would hide a lost sign).
        assert_eq!(format!("{decoded:?}"), format!("{states:?}"));
        assert_eq!(decoded[3][0].1.sum.to_bits(), (0.0f64 + -0.0).to_bits());
        assert_eq!(decoded[3][0].1.min.to_bits(), (-0.0f64).to_bits());
        assert_eq!(decode_state(&buf[..buf.len() - 1], &all).unwrap_err(), "truncated feature state");
        assert_eq!(decode_state(&buf, &all[..3]).unwrap_err(), "feature state of 4 aggregates, where the features have 3");
        buf.push(0);
        assert_eq!(decode_state(&buf, &all).unwrap_err(), "1 bytes after the end of feature state");
        assert_eq!(decode_state(&[2], &all).unwrap_err(), "unknown feature state format 2");

        // Only the floats a feature reads: `many` (three values in one bucket) keeps its max
        // and last, 16 bytes less; those read back, the others as an empty aggregate's.
        let some = [FLOATS_ALL, FLOATS_ALL, FLOAT_MAX | FLOAT_LAST, 0];
        let mut small = Vec::new();
        encode_state(&states, &some, -1_795_000_000_000, &mut small);
        assert_eq!(small.len() + 16, buf.len() - 1);
        // Features that read a float the state does not keep: refused, not read as zero.
        assert!(decode_state(&small, &[FLOATS_ALL, FLOATS_ALL, FLOAT_MIN, 0]).unwrap_err().contains("written for other features"));
        let (decoded, _) = decode_state(&small, &some).unwrap();
        let bucket = decoded[2][0].1;
        assert_eq!((bucket.events, bucket.values, bucket.max, bucket.last), (4, 3, 2.5, -7.25));
        assert_eq!((bucket.sum, bucket.min), (0.0, f64::INFINITY));
        assert_eq!(format!("{:?}", decoded[3]), format!("{:?}", states[3]), "one value keeps every float");
    }

    #[test]
    fn a_state_of_format_3_reads_all_four_floats() {
        // Format 3, latest event at 5 ms, one aggregate of one bucket starting at 0 with two
        // events and values: sum 3, min 1, max 2, last 2.
        let mut bytes = vec![3, 10, 1, 1, 0, 2, 2];
        for f in [3.0f64, 1.0, 2.0, 2.0] {
            bytes.extend_from_slice(&f.to_bits().to_le_bytes());
        }
        let (decoded, last) = decode_state(&bytes, &[FLOAT_SUM]).unwrap();
        assert_eq!(last, 5);
        let a = decoded[0][0].1;
        assert_eq!((a.events, a.values, a.sum, a.min, a.max, a.last), (2, 2, 3.0, 1.0, 2.0, 2.0));
    }

    #[test]
    fn each_aggregate_stores_the_floats_of_its_features() {
        let spec = |name: &str, op, window: Option<&str>| FeatureSpec {
            name: name.into(),
            op,
            field: (op != FeatureOp::Count).then(|| "amount".to_string()),
            window: window.map(|w| w.parse().unwrap()),
            slide: None,
        };
        let set = FeatureSet::new(
            &[
                spec("n", FeatureOp::Count, Some("1m")),
                spec("sum", FeatureOp::Sum, Some("1h")),
                spec("max", FeatureOp::Max, Some("1h")),
                spec("mean", FeatureOp::Mean, None),
                spec("last", FeatureOp::Last, None),
            ],
            &["amount".to_string()],
        )
        .unwrap();
        assert_eq!(set.floats, vec![0, FLOAT_SUM | FLOAT_MAX, FLOAT_SUM | FLOAT_LAST]);
    }

    #[test]
    fn the_cache_keeps_two_generations_and_reads_back_the_rest() {
        let mut cache = StateCache::new(4);
        let mut loads = Vec::new();
        let epoch = |cache: &mut StateCache, entities: &[&str], loads: &mut Vec<String>| {
            for e in entities {
                let entry = cache.get_or_load(&Text::from(*e), || {
                    loads.push(e.to_string());
                    (Vec::new(), 0)
                });
                entry.2 += 1; // what this epoch changed survives a move between generations
            }
            cache.end_epoch();
        };
        epoch(&mut cache, &["a", "b", "c", "a"], &mut loads);
        assert_eq!(loads, ["a", "b", "c"]);
        assert_eq!((cache.hot.len(), cache.cold.len()), (0, 3), "3 > 4 / 2: the hot generation aged");
        epoch(&mut cache, &["a", "d"], &mut loads);
        assert_eq!(loads, ["a", "b", "c", "d"], "a came back from the cold generation");
        assert_eq!((cache.hot.len(), cache.cold.len()), (2, 2));
        epoch(&mut cache, &["e"], &mut loads);
        assert_eq!((cache.hot.len(), cache.cold.len()), (0, 3));
        epoch(&mut cache, &["b", "a"], &mut loads);
        assert_eq!(loads, ["a", "b", "c", "d", "e", "b"], "b and c were dropped with the old cold generation");
        assert_eq!(cache.hot[&Text::from("a")].2, 4, "a: twice in the first epoch, once in the second and the fourth");
    }

    #[test]
    fn config_errors_name_the_feature() {
        let spec = FeatureSpec { name: "x".into(), op: FeatureOp::Sum, field: Some("nope".into()), window: None, slide: None };
        let err = FeatureSet::new(&[spec], &["amount".into()]).unwrap_err().to_string();
        assert!(err.starts_with("features[0] (x).field: `nope` is not one of [event.numbers]"), "{err}");
    }
}
