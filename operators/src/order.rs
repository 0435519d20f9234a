//! Releases events in event-time order behind the watermark; events behind it are late.
//!
//! ```text
//!   events (by entity) ──> order ──> events in event-time order ──> (features)
//!   progress (all) ──────┘   └─────> late events (side output, by policy)
//! ```
//!
//! Requires: events exchanged by a hash of their entity, and every partition's progress on
//! every worker (see `watermark.rs`). Works epoch by epoch once the epoch is complete:
//!
//! 1. an event of epoch `e` whose time is below the watermark as of the end of epoch `e − 1`
//!    is **late**: sent to the late output (`late = "side"`, the default), dropped (`"drop"`),
//!    or passed on at once with `late = true` (`"flag"`);
//! 2. every other event is buffered in memory, as it is: the epoch's arrivals sorted by
//!    (time, origin) into one run, released from its front (no per-event tree insert, copy or
//!    encoding while it waits);
//! 3. the epoch's progress advances the watermark, and every buffered event with a time below
//!    the new watermark is released, sorted by (time, id, origin).
//!
//! Durable per epoch, off the hot path: the events that arrived in an epoch and are still
//! buffered at its end go to the RocksDB table `order_buffer` as **one value** (a run: key
//! `(epoch, worker)`), and the watermark released below goes to `order_released`, both in the
//! epoch's commit; an event buffered and released in the same epoch never reaches RocksDB. A run
//! is deleted (one point delete) in the first epoch whose watermark has released all of it.
//!
//! What a run holds of an event depends on its source. Most sources can read a record again
//! from its offset (files, Kafka, the webhook log, an unpaced generator: [`Replay::Rereadable`]):
//! a run keeps only its origin, time, owner and payload hash (36 bytes, not the whole event), and the table
//! `order_replay` keeps, per worker, the lowest offset per partition its live runs hold. A
//! restart seeks each such partition back there and reads up to the committed position again,
//! in the first epoch, marked [`Replay::Replayed`]: decode and dedup pass those events on
//! without a dead letter, count or index change (they did their work the first time), and
//! order takes back exactly the events whose origins its runs list; the others (released,
//! late, duplicates) are dropped. The events of sources that cannot be read again (paced ones,
//! change streams) are stored whole, and so are events more than four latenesses ahead of the
//! watermark (a clock far ahead would otherwise hold its partition's reading again back for as
//! long as it waits). So the buffer costs the commit a few bytes an event rather
//! than the event; a restart costs reading the buffered span of each source again. An event
//! that cannot be read again (a Kafka message past its retention) is reported, once.
//!
//! At start every worker rebuilds its buffer from the committed runs: the events it owns (by
//! entity, for any number of workers) at or above the committed release watermark.
//!
//! So the output is in event-time order per worker and per entity, and which events are late
//! depends only on what each partition delivered per epoch, not on the number of workers. When
//! every partition is finished, the watermark is `i64::MAX` and the buffer empties.
//!
//! Example: lateness 10, one partition delivering times 5, 20, 12 in epoch 0 and 30, 3 in
//! epoch 1: after epoch 0 the watermark is 10 and 5 is released; in epoch 1, 3 is late
//! (3 < 10), the watermark becomes 20 and 12 is released; 20 and 30 wait.

use std::cell::RefCell;
use std::collections::{BTreeSet, VecDeque};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde::Deserialize;
use sluice_state::{BytesCodec, Codec, I64Codec, Table, TableSpec, WorkerState};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::Stream;

use crate::epoch::{input_frontier, run_key, EpochStash, HeldCapabilities, RunKey};
use crate::event::{route_hash, Epoch, Event, EventCodec, LateEvent, Origin, PartitionProgress, Replay};
use crate::metrics::Metrics;
use crate::watermark::WatermarkTracker;
use crate::OperatorError;

/// The table of buffer runs: `(epoch, worker)` to the events that arrived in that epoch and were
/// still buffered at its end.
pub const BUFFER_TABLE: &str = "order_buffer";
/// The table holding the watermark every event below which was released (one key).
pub const RELEASED_TABLE: &str = "order_released";
const RELEASED_KEY: &[u8] = b"released_below";
/// The table of where to read again from: per worker (key: its index, u32 big-endian), the
/// lowest offset per partition of the re-readable events its live runs hold.
pub const REPLAY_TABLE: &str = "order_replay";

/// The tables order declares.
pub fn tables() -> Vec<TableSpec> {
    vec![TableSpec::new(BUFFER_TABLE), TableSpec::new(RELEASED_TABLE), TableSpec::new(REPLAY_TABLE)]
}

/// The first byte of a run's value: its format. Format 1 (before re-reading): whole events only.
const RUN_FORMAT_WHOLE: u8 = 1;
/// Format 2: each entry tagged, [`ENTRY_ORIGIN`] or [`ENTRY_EVENT`].
const RUN_FORMAT: u8 = 2;
/// An entry of a re-readable event: origin partition (u32), offset (u64), time (i64), the
/// route hash of its entity (u64) and its payload hash (u64, so that a different record found
/// at the origin is not taken for it), little-endian.
const ENTRY_ORIGIN: u8 = 0;
const ORIGIN_ENTRY_BYTES: usize = 36;
/// An entry of a whole event: its encoded length (u32, little-endian), then its encoding.
const ENTRY_EVENT: u8 = 1;

/// Whether a buffered event is stored as its origin: its source can read it again, and it is
/// not far ahead of the watermark `watermark` (more than [`FAR_AHEAD_LATENESSES`] allowed
/// latenesses): such an event may stay buffered for long (one with a clock days ahead waits for
/// every other partition to reach it), and its origin would hold its partition's reading again
/// back that far at every restart; it is stored whole, and pins nothing.
fn stored_as_origin(event: &Event, watermark: i64, lateness_ms: i64) -> bool {
    event.replay != Replay::Kept && event.time_ms <= watermark.saturating_add(lateness_ms.max(1).saturating_mul(FAR_AHEAD_LATENESSES))
}

/// See [`stored_as_origin`].
const FAR_AHEAD_LATENESSES: i64 = 4;

/// Appends one event to a run: its origin (`as_origin`), else all of it.
fn push_to_run(run: &mut Vec<u8>, event: &Event, as_origin: bool) {
    if !as_origin {
        run.push(ENTRY_EVENT);
        let at = run.len();
        run.extend_from_slice(&[0; 4]);
        EventCodec::encode(event, run);
        let len = (run.len() - at - 4) as u32;
        run[at..at + 4].copy_from_slice(&len.to_le_bytes());
    } else {
        run.push(ENTRY_ORIGIN);
        run.extend_from_slice(&event.origin.partition.to_le_bytes());
        run.extend_from_slice(&event.origin.offset.to_le_bytes());
        run.extend_from_slice(&event.time_ms.to_le_bytes());
        run.extend_from_slice(&route_hash(&event.entity).to_le_bytes());
        run.extend_from_slice(&event.payload_hash.to_le_bytes());
    }
}

/// One entry of a stored run.
#[derive(Debug, PartialEq)]
enum RunEntry<'a> {
    /// A whole encoded event.
    Event(&'a [u8]),
    /// A re-readable event: where it is, its time, its entity's route hash and its payload hash.
    Origin { origin: Origin, time_ms: i64, route: u64, payload_hash: u64 },
}

/// The entries of a run's value.
fn decode_run(bytes: &[u8]) -> Result<Vec<RunEntry<'_>>, String> {
    let (format, mut rest) = match bytes.split_first() {
        Some((&format, rest)) if format == RUN_FORMAT || format == RUN_FORMAT_WHOLE => (format, rest),
        Some((format, _)) => return Err(format!("unknown order run format {format}")),
        None => return Err("an empty order run".into()),
    };
    let torn = || "a torn order run".to_string();
    let mut out = Vec::new();
    while !rest.is_empty() {
        let tag = if format == RUN_FORMAT_WHOLE {
            ENTRY_EVENT
        } else {
            let (&tag, after) = rest.split_first().expect("invariant: not empty");
            rest = after;
            tag
        };
        match tag {
            ENTRY_EVENT => {
                let len = rest.get(..4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize).ok_or_else(torn)?;
                out.push(RunEntry::Event(rest.get(4..4 + len).ok_or_else(torn)?));
                rest = &rest[4 + len..];
            }
            ENTRY_ORIGIN => {
                let e = rest.get(..ORIGIN_ENTRY_BYTES).ok_or_else(torn)?;
                let u64_at = |at: usize| u64::from_le_bytes(e[at..at + 8].try_into().expect("8 bytes"));
                let origin = Origin { partition: u32::from_le_bytes(e[..4].try_into().expect("4 bytes")), offset: u64_at(4) };
                out.push(RunEntry::Origin { origin, time_ms: u64_at(12) as i64, route: u64_at(20), payload_hash: u64_at(28) });
                rest = &rest[ORIGIN_ENTRY_BYTES..];
            }
            other => return Err(format!("an order run entry of unknown kind {other}")),
        }
    }
    Ok(out)
}

/// Lowers `pins` (partition to lowest offset) to hold `origin`.
fn pin(pins: &mut Vec<(u32, u64)>, origin: Origin) {
    match pins.iter_mut().find(|(p, _)| *p == origin.partition) {
        Some((_, offset)) => *offset = (*offset).min(origin.offset),
        None => pins.push((origin.partition, origin.offset)),
    }
}

fn encode_pins(pins: &[(u32, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(pins.len() * 12);
    for (partition, offset) in pins {
        out.extend_from_slice(&partition.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
    }
    out
}

/// Where each partition (by global index) is to be read again from at a restart: the lowest
/// offset any worker's live runs hold of it. Partitions absent need no reading again.
///
/// # Errors
/// The table cannot be read, or holds a torn value.
pub fn replay_from(state: &WorkerState) -> Result<FxHashMap<u32, u64>, sluice_state::StateError> {
    let table: Table<BytesCodec> = state.store().table(REPLAY_TABLE)?;
    let mut out: FxHashMap<u32, u64> = FxHashMap::default();
    for (_, value) in state.scan_committed(&table)? {
        if value.len() % 12 != 0 {
            return Err(sluice_state::StateError::Codec {
                table: REPLAY_TABLE.into(),
                reason: format!("a value of {} bytes is not a list of 12-byte entries", value.len()),
            });
        }
        for e in value.chunks_exact(12) {
            let partition = u32::from_le_bytes(e[..4].try_into().expect("4 bytes"));
            let offset = u64::from_le_bytes(e[4..].try_into().expect("8 bytes"));
            let at = out.entry(partition).or_insert(offset);
            *at = (*at).min(offset);
        }
    }
    Ok(out)
}

/// Sorts a run into (time, origin) order.
fn sort_run(run: &mut VecDeque<Event>) {
    run.make_contiguous().sort_unstable_by_key(|e| (e.time_ms, e.origin));
}

/// The buffered events: one run per epoch of arrival, each in (time, origin) order, released
/// from the front as the watermark passes. No event is copied or encoded while it waits, and
/// the memory of a run released to its end holds the next epoch's arrivals.
#[derive(Default)]
struct Buffer {
    runs: Vec<VecDeque<Event>>,
    spare: VecDeque<Event>,
}

impl Buffer {
    /// An empty run to fill, with the memory of the last run released.
    fn fresh_run(&mut self) -> VecDeque<Event> {
        std::mem::take(&mut self.spare)
    }

    fn push(&mut self, run: VecDeque<Event>) {
        if !run.is_empty() {
            self.runs.push(run);
        }
    }

    /// Moves every event with a time below `watermark` into `out`, run after run (each run's in
    /// order). What stays held is proportional to the events still buffered: a run mostly
    /// released gives its memory back, and beyond [`MAX_RUNS`] runs (events far ahead of the
    /// watermark, one run per epoch) they are merged into one.
    fn release(&mut self, watermark: i64, out: &mut Vec<Event>) {
        for run in &mut self.runs {
            let n = run.partition_point(|e| e.time_ms < watermark);
            out.extend(run.drain(..n));
            if !run.is_empty() && run.len() < run.capacity() / 4 {
                run.shrink_to_fit();
            }
        }
        let mut i = 0;
        while i < self.runs.len() {
            if self.runs[i].is_empty() {
                let run = self.runs.swap_remove(i);
                if run.capacity() > self.spare.capacity() {
                    self.spare = run;
                }
            } else {
                i += 1;
            }
        }
        if self.runs.len() > MAX_RUNS {
            let mut merged: VecDeque<Event> = self.runs.drain(..).flatten().collect();
            sort_run(&mut merged);
            self.runs.push(merged);
        }
    }
}

/// Runs kept apart at most (the lateness over an epoch's span of event time, normally a handful).
const MAX_RUNS: usize = 32;

/// What to do with an event behind the watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LatePolicy {
    /// Send it to the late output.
    #[default]
    Side,
    /// Count it and drop it.
    Drop,
    /// Pass it on at once, with `late = true`.
    Flag,
}

/// Order settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderConfig {
    /// Allowed lateness (ms).
    pub lateness_ms: i64,
    /// Late policy.
    pub late: LatePolicy,
    /// Number of source partitions.
    pub partitions: usize,
}

/// A run after one that finished every partition (files read with `at_eof = "finish"`, a
/// generator's count reached): that run's end moved the watermark to the end of time, released
/// everything and stored `i64::MAX` as the release floor. Left so, every record appended to its
/// files since would be late. The floor comes down to just past the latest event time read
/// (every event released had a time at or below it; the partitions report again, see
/// [`crate::decode::committed_progress`]): appended records newer than that are ordered as
/// usual, older ones are late. Returns whether it came down (it is then stored in the first
/// epoch, so that a stop before the watermark rises does not restore the old floor); logged
/// once (worker 0).
fn resume_after_the_end(committed: &[PartitionProgress], released_below: &mut i64, worker: usize) -> bool {
    if *released_below != i64::MAX {
        return false;
    }
    let latest = committed.iter().filter_map(|p| p.max_event_time_ms).max();
    if worker == 0 {
        tracing::warn!(
            latest_event_ms = latest,
            "every partition finished in an earlier run (at_eof = finish): the watermark resumes just past the latest event time read; records appended with older times are late"
        );
    }
    *released_below = latest.map_or(i64::MIN, |t| t.saturating_add(1));
    true
}

/// The order operator.
pub trait Order<'scope> {
    /// Orders `self` behind the watermark; returns `(ordered events, late events)`.
    ///
    /// # Errors
    /// The state cannot be read at start-up.
    #[allow(clippy::type_complexity)]
    fn order(
        self,
        progress: Stream<'scope, Epoch, Vec<PartitionProgress>>,
        config: OrderConfig,
        state: Rc<RefCell<WorkerState>>,
        metrics: Arc<Metrics>,
    ) -> Result<(Stream<'scope, Epoch, Vec<Event>>, Stream<'scope, Epoch, Vec<LateEvent>>), OperatorError>;
}

impl<'scope> Order<'scope> for Stream<'scope, Epoch, Vec<Event>> {
    fn order(
        self,
        progress: Stream<'scope, Epoch, Vec<PartitionProgress>>,
        config: OrderConfig,
        state: Rc<RefCell<WorkerState>>,
        metrics: Arc<Metrics>,
    ) -> Result<(Stream<'scope, Epoch, Vec<Event>>, Stream<'scope, Epoch, Vec<LateEvent>>), OperatorError> {
        let scope = self.scope();
        let (index, peers) = (scope.index(), scope.peers());
        let table: Table<BytesCodec> = state.borrow().store().table(BUFFER_TABLE)?;
        let released_table: Table<I64Codec> = state.borrow().store().table(RELEASED_TABLE)?;
        let committed = crate::decode::committed_progress(&state.borrow())?;
        let mut released_below = state.borrow_mut().get(&released_table, RELEASED_KEY)?.unwrap_or(i64::MIN);
        let mut store_floor = resume_after_the_end(&committed, &mut released_below, index);
        // The watermark never goes back, across restarts too: events below the stored one were
        // released (and must not be buffered again, nor dropped from a run while buffered).
        let mut tracker = WatermarkTracker::new(config.partitions, config.lateness_ms, &committed).with_floor(released_below);

        // Restore the buffer: the events of the entities this worker owns that were not released
        // by the last committed epoch, as one run. Runs in the table by the latest event time in
        // each, so that every run the watermark has passed is at the front, whatever order they
        // were written in (worker 0 takes charge of those found at start).
        // Re-readable events come back in the first epoch (see the module docs): `awaiting`
        // holds the origins of those this worker owns. Each live run's pins say where its
        // re-readable events are (worker 0 keeps those of the runs found at start).
        let mut buffer = Buffer::default();
        let mut runs: BTreeSet<(i64, RunKey)> = BTreeSet::new();
        let mut run_pins: FxHashMap<RunKey, Vec<(u32, u64)>> = FxHashMap::default();
        let mut awaiting: FxHashMap<Origin, u64> = FxHashMap::default();
        let mut restored = Vec::new();
        let started = std::time::Instant::now();
        let stored = state.borrow().scan_committed(&table)?;
        let run_count = stored.len();
        let owned = |route: u64| (route % peers as u64) as usize == index;
        for (key, value) in stored {
            let codec = |reason: String| sluice_state::StateError::Codec { table: BUFFER_TABLE.into(), reason };
            let mut latest = i64::MIN;
            let mut pins = Vec::new();
            for entry in decode_run(&value).map_err(codec)? {
                match entry {
                    RunEntry::Event(bytes) => {
                        let event = EventCodec::decode(bytes).map_err(codec)?;
                        latest = latest.max(event.time_ms);
                        if event.time_ms >= released_below && owned(route_hash(&event.entity)) {
                            restored.push(event);
                        }
                    }
                    RunEntry::Origin { origin, time_ms, route, payload_hash } => {
                        latest = latest.max(time_ms);
                        if time_ms >= released_below {
                            pin(&mut pins, origin);
                            if owned(route) {
                                awaiting.insert(origin, payload_hash);
                            }
                        }
                    }
                }
            }
            if index == 0 {
                let key: RunKey = key.as_slice().try_into().map_err(|_| codec(format!("a run key of {} bytes", key.len())))?;
                runs.insert((latest, key));
                run_pins.insert(key, pins);
            }
        }
        let mut restored = VecDeque::from(restored);
        sort_run(&mut restored);
        if run_count > 0 {
            tracing::info!(
                worker = index,
                runs = run_count,
                events = restored.len(),
                to_read_again = awaiting.len(),
                ms = started.elapsed().as_millis() as u64,
                "order: buffer restored"
            );
        }
        buffer.push(restored);
        // The pins of workers a run with more workers had: worker 0's pins now cover their
        // runs (it took charge of every run found), so their keys go in the first epoch.
        let replay_table: Table<BytesCodec> = state.borrow().store().table(REPLAY_TABLE)?;
        let mut stale_pins: Vec<Vec<u8>> = Vec::new();
        if index == 0 {
            for (key, _) in state.borrow().scan_committed(&replay_table)? {
                if key.as_slice().try_into().map(u32::from_be_bytes).map_or(true, |w| w as usize >= peers) {
                    stale_pins.push(key);
                }
            }
        }
        let mut pins_stored: Option<Vec<(u32, u64)>> = None;
        let mut first_epoch = true;

        let mut builder = OperatorBuilder::new("Order".to_owned(), scope);
        let mut events_in = builder.new_input(self, Exchange::new(|e: &Event| route_hash(&e.entity)));
        let mut progress_in = builder.new_input(progress, Pipeline);
        let (ordered_out, ordered) = builder.new_output::<Vec<Event>>();
        let (late_out, late) = builder.new_output::<Vec<LateEvent>>();
        let mut ordered_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Event>>>::from(ordered_out);
        let mut late_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<LateEvent>>>::from(late_out);

        builder.build(move |capabilities| {
            let mut held = HeldCapabilities::new(capabilities);
            let mut pending: EpochStash<(Vec<Vec<Event>>, Vec<PartitionProgress>)> = EpochStash::new();
            let mut run: Vec<u8> = Vec::new();
            // The events an epoch releases, in a buffer kept across epochs.
            let mut released: Vec<Event> = Vec::new();
            move |frontiers| {
                events_in.for_each_stamp(|cap, data| {
                    let slot = pending.at(*cap.least().expect("invariant: an input stamp has a time"));
                    for batch in data {
                        slot.0.push(std::mem::take(batch));
                    }
                });
                progress_in.for_each_stamp(|cap, data| {
                    let slot = pending.at(*cap.least().expect("invariant: an input stamp has a time"));
                    for batch in data {
                        slot.1.append(batch);
                    }
                });
                let frontier = input_frontier(frontiers);
                let mut ordered_h = ordered_out.activate();
                let mut late_h = late_out.activate();
                while let Some((epoch, (events, progress))) = pending.pop_complete(frontier) {
                    let watermark = tracker.watermark();
                    let mut behind = Vec::new();
                    let mut arrived = buffer.fresh_run();
                    for event in events.into_iter().flatten() {
                        if event.replay == Replay::Replayed {
                            // Read again at the restart: taken back if it was buffered.
                            if awaiting.get(&event.origin) == Some(&event.payload_hash) {
                                awaiting.remove(&event.origin);
                                arrived.push_back(event);
                            }
                        } else if event.time_ms < watermark {
                            behind.push(event);
                        } else {
                            arrived.push_back(event);
                        }
                    }
                    if std::mem::take(&mut first_epoch) && !awaiting.is_empty() {
                        // Every record read again came in the first epoch: those missing are
                        // no longer in their source (a Kafka message past its retention, a
                        // file cut or replaced).
                        tracing::error!(
                            worker = index,
                            missing = awaiting.len(),
                            "order: buffered events could not be read again from their source and are lost (a Kafka topic's retention shorter than the allowed lateness, a topic or input file replaced, or a file cut)"
                        );
                        awaiting = FxHashMap::default();
                    }
                    behind.sort_unstable_by_key(|e| e.origin);
                    sort_run(&mut arrived);
                    let ordered_cap = held.at(0, epoch);
                    let late_cap = held.at(1, epoch);
                    let mut ordered_s = ordered_h.session(&ordered_cap);
                    let mut late_s = late_h.session(&late_cap);
                    let mut state = state.borrow_mut();
                    metrics.time.late.fetch_add(behind.len() as u64, Ordering::Relaxed);
                    let mut flagged = Vec::new();
                    for mut event in behind {
                        match config.late {
                            LatePolicy::Side => late_s.give(LateEvent { event, watermark_ms: watermark }),
                            LatePolicy::Drop => {}
                            LatePolicy::Flag => {
                                event.late = true;
                                flagged.push(event);
                            }
                        }
                    }
                    for p in &progress {
                        tracker.apply(p);
                    }
                    let previous = watermark;
                    let watermark = tracker.advance();
                    if index == 0 {
                        metrics.time.watermark_ms.set(watermark);
                    }
                    buffer.release(watermark, &mut released);
                    let from_arrived = arrived.partition_point(|e| e.time_ms < watermark);
                    released.extend(arrived.drain(..from_arrived));
                    // Each run in (time, origin) order; put them together, equal times in id order.
                    released.sort_by(|a, b| (a.time_ms, a.id.as_str(), a.origin).cmp(&(b.time_ms, b.id.as_str(), b.origin)));
                    for event in released.drain(..) {
                        ordered_s.give(event);
                    }
                    // What arrived in this epoch and is still buffered goes to the table as one
                    // run; what was released within the epoch never reaches RocksDB.
                    if let Some(last) = arrived.back() {
                        let latest = last.time_ms;
                        run.clear();
                        run.push(RUN_FORMAT);
                        let mut pins = Vec::new();
                        for event in &arrived {
                            let as_origin = stored_as_origin(event, watermark, config.lateness_ms);
                            push_to_run(&mut run, event, as_origin);
                            if as_origin {
                                pin(&mut pins, event.origin);
                            }
                        }
                        state.put_blind(epoch, &table, &run_key(epoch, index), std::mem::take(&mut run));
                        runs.insert((latest, run_key(epoch, index)));
                        run_pins.insert(run_key(epoch, index), pins);
                        buffer.push(arrived);
                    }
                    if watermark > previous {
                        // Runs all of whose events are released go; the watermark says which
                        // events of the runs kept were.
                        while runs.first().is_some_and(|(latest, _)| *latest < watermark) {
                            let (_, key) = runs.pop_first().expect("invariant: checked non-empty");
                            state.delete(epoch, &table, &key);
                            run_pins.remove(&key);
                        }
                    }
                    // Where a restart reads again from: stored when it moved.
                    let mut pins: Vec<(u32, u64)> = Vec::new();
                    for origin in run_pins.values().flatten() {
                        pin(&mut pins, Origin { partition: origin.0, offset: origin.1 });
                    }
                    pins.sort_unstable();
                    if pins_stored.as_ref() != Some(&pins) {
                        state.put_blind(epoch, &replay_table, &(index as u32).to_be_bytes(), encode_pins(&pins));
                        pins_stored = Some(pins);
                    }
                    for key in stale_pins.drain(..) {
                        state.delete(epoch, &replay_table, &key);
                    }
                    if (watermark > previous || store_floor) && index == 0 {
                        state.put(epoch, &released_table, RELEASED_KEY, &watermark);
                    }
                    store_floor = false;
                    for event in flagged {
                        ordered_s.give(event);
                    }
                }
                held.downgrade(frontier);
            }
        });
        Ok((ordered, late))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_round_trip_and_refuse_a_torn_value() {
        let event = |id: &str, time_ms: i64| Event {
            id: id.into(),
            entity: "c1".into(),
            kind: "k".into(),
            time_ms,
            numbers: vec![Some(2.5)],
            strings: vec![None],
            payload_hash: 7,
            origin: crate::event::Origin { partition: 1, offset: time_ms as u64 },
            late: false,
            ingest_us: 11,
            replay: Default::default(),
        };
        // A whole event, then a re-readable one (its origin, time and route only).
        let events = [event("e1", 5), Event { replay: Replay::Rereadable, ..event("e2", 9) }];
        let mut run = vec![RUN_FORMAT];
        for e in &events {
            push_to_run(&mut run, e, stored_as_origin(e, 0, 10));
        }
        // Re-readable but far ahead of the watermark (more than 4 latenesses): stored whole.
        assert!(stored_as_origin(&events[1], -31, 10));
        assert!(!stored_as_origin(&events[1], -32, 10));
        assert!(!stored_as_origin(&events[0], 100, 10));
        let whole_len = run.len() - 1 - 1 - ORIGIN_ENTRY_BYTES;
        assert_eq!(run.len(), 1 + whole_len + 1 + 36);
        let entries = decode_run(&run).unwrap();
        assert_eq!(entries.len(), 2);
        let RunEntry::Event(bytes) = entries[0] else { panic!("{:?}", entries[0]) };
        assert_eq!(EventCodec::decode(bytes).unwrap(), events[0]);
        assert_eq!(
            entries[1],
            RunEntry::Origin { origin: crate::event::Origin { partition: 1, offset: 9 }, time_ms: 9, route: route_hash("c1"), payload_hash: 7 }
        );
        assert_eq!(decode_run(&run[..run.len() - 1]).unwrap_err(), "a torn order run");
        assert_eq!(decode_run(&[3]).unwrap_err(), "unknown order run format 3");
        assert_eq!(decode_run(&[RUN_FORMAT, 7]).unwrap_err(), "an order run entry of unknown kind 7");

        // A run of the first format (whole events, untagged) still reads.
        let mut old = vec![RUN_FORMAT_WHOLE];
        let mut encoded = Vec::new();
        EventCodec::encode(&events[0], &mut encoded);
        old.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
        old.extend_from_slice(&encoded);
        assert_eq!(decode_run(&old).unwrap(), vec![RunEntry::Event(&encoded)]);

        let mut pins = Vec::new();
        for (partition, offset) in [(1, 40), (0, 7), (1, 12), (0, 9)] {
            pin(&mut pins, crate::event::Origin { partition, offset });
        }
        assert_eq!(pins, vec![(1, 12), (0, 7)]);
        assert_eq!(encode_pins(&pins).len(), 24);
    }

    #[test]
    fn the_buffer_releases_below_the_watermark_run_by_run() {
        let event = |time_ms: i64, offset: u64| Event {
            id: format!("e{offset}").into(),
            entity: "c".into(),
            kind: Default::default(),
            time_ms,
            numbers: vec![],
            strings: vec![],
            payload_hash: 0,
            origin: crate::event::Origin { partition: 0, offset },
            late: false,
            ingest_us: 0,
            replay: Default::default(),
        };
        let run = |events: Vec<Event>| {
            let mut run = VecDeque::from(events);
            sort_run(&mut run);
            run
        };
        let mut buffer = Buffer::default();
        buffer.push(run(vec![event(20, 1), event(5, 0), event(12, 2)]));
        buffer.push(run(vec![event(30, 3), event(11, 4)]));
        buffer.push(run(vec![]));
        let release = |buffer: &mut Buffer, watermark: i64| {
            let mut out = Vec::new();
            buffer.release(watermark, &mut out);
            out.iter().map(|e| (e.time_ms, e.origin.offset)).collect::<Vec<_>>()
        };
        assert_eq!(release(&mut buffer, 12), vec![(5, 0), (11, 4)]);
        assert_eq!(release(&mut buffer, 12), vec![]);
        assert_eq!(release(&mut buffer, 25), vec![(12, 2), (20, 1)]);
        assert_eq!(buffer.runs.len(), 1);
        // The run released to its end is kept for the next epoch's arrivals.
        assert!(buffer.spare.is_empty() && buffer.spare.capacity() >= 3);
        assert!(buffer.fresh_run().capacity() >= 3);
        assert_eq!(release(&mut buffer, i64::MAX), vec![(30, 3)]);
        assert!(buffer.runs.is_empty());

        // An event far ahead of the watermark in each of many epochs: the runs are merged, and
        // a run mostly released holds no more than its events need.
        let mut buffer = Buffer::default();
        for epoch in 0..40u64 {
            let mut events: Vec<Event> = (0..100).map(|i| event(epoch as i64 * 100 + i, epoch * 1000 + i as u64)).collect();
            events.push(event(1_000_000 + epoch as i64, epoch * 1000 + 999));
            buffer.push(run(events));
            assert_eq!(release(&mut buffer, epoch as i64 * 100 + 100).len(), 100);
            assert!(buffer.runs.len() <= MAX_RUNS);
            assert!(buffer.runs.iter().all(|r| r.capacity() <= 4 * r.len().max(1) || r.capacity() <= 101));
        }
        assert_eq!(buffer.runs.iter().map(VecDeque::len).sum::<usize>(), 40);
        let rest = release(&mut buffer, i64::MAX);
        assert_eq!(rest.len(), 40);
        let mut times: Vec<i64> = rest.iter().map(|(t, _)| *t).collect();
        times.sort_unstable();
        assert_eq!(times, (0..40).map(|e| 1_000_000 + e).collect::<Vec<i64>>());
    }
}
