//! Drops repeated events by idempotency key.
//!
//! ```text
//!   events (by key) ──> dedup ──> first copies ──> (order)
//!   progress (all) ───┘   └─────> conflicts (same key, different payload)
//! ```
//!
//! Requires: events exchanged by a hash of their id, and every partition's progress on every
//! worker. Works epoch by epoch, once the epoch is complete on both inputs: within an epoch,
//! the copies of a key are taken in origin order (partition, offset), so the *first* copy is
//! the same for any number of workers.
//!
//! Keeps the keys in memory: per key, a 128-bit hash of the id (no false "duplicate" in any
//! payment volume), the first copy's event time and its payload hash, 32 bytes in one hash map.
//! A key is forgotten once it is older than `ttl` behind the watermark (the watermark before
//! the epoch being processed): it is then treated as never seen, and swept out of the map each
//! time the cutoff has advanced by an eighth of the TTL, so memory holds the keys within about
//! 1.125 × `ttl` (10M keys: about 550 MB).
//!
//! Durable per epoch, off the hot path: the keys first seen in an epoch go to the RocksDB table
//! `dedup_keys` as **one value** (a run: key `(epoch, worker)`, 32 bytes per key) in the epoch's
//! commit; a run is deleted (one point delete) in the first epoch whose cutoff passes all its
//! keys. At start every worker rebuilds its index from the committed runs, keeping the keys it
//! owns (by the hash, for any number of workers) that are within the TTL.
//!
//! A repeat with the same payload hash is a duplicate: counted and dropped. A repeat with a
//! different payload is a conflict: it goes to the conflicts output with the first copy's time,
//! and is otherwise dropped (the first copy wins).
//!
//! Example: `e1` (amount 5), then `e1` (amount 5), then `e1` (amount 6) gives `e1` once, one
//! duplicate counted and one conflict.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use sluice_state::{BytesCodec, Table, TableSpec, WorkerState};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::Stream;

use crate::epoch::{input_frontier, run_key, EpochStash, HeldCapabilities, RunKey};
use crate::event::{Conflict, Epoch, Event, PartitionProgress, Replay};
use crate::metrics::Metrics;
use crate::watermark::WatermarkTracker;
use crate::OperatorError;

/// The table of dedup runs: `(epoch, worker)` to the keys first seen there.
pub const KEYS_TABLE: &str = "dedup_keys";

/// The tables dedup declares.
pub fn tables() -> Vec<TableSpec> {
    vec![TableSpec::new(KEYS_TABLE)]
}

/// Dedup settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupConfig {
    /// How long a key is remembered, in event time behind the watermark (ms).
    pub ttl_ms: i64,
    /// Allowed lateness (ms), for the watermark.
    pub lateness_ms: i64,
    /// Number of source partitions, for the watermark.
    pub partitions: usize,
}

/// The 128-bit key of an id.
pub fn key_hash(id: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(id.as_bytes())
}

/// The worker route of a key: its low 64 bits (the same at rebuild, from the stored hash).
fn route_of(key: u128) -> u64 {
    key as u64
}

/// What is kept of a key: the first copy's event time and payload hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    time_ms: i64,
    payload_hash: u64,
}

/// One stored entry of a run: hash, time, payload hash, little-endian.
const RUN_ENTRY_BYTES: usize = 32;
/// The first byte of a run's value: its format.
const RUN_FORMAT: u8 = 1;

fn encode_entry(out: &mut Vec<u8>, key: u128, seen: Seen) {
    out.extend_from_slice(&key.to_le_bytes());
    out.extend_from_slice(&seen.time_ms.to_le_bytes());
    out.extend_from_slice(&seen.payload_hash.to_le_bytes());
}

/// The entries of a run's value.
fn decode_run(bytes: &[u8]) -> Result<impl Iterator<Item = (u128, Seen)> + '_, String> {
    match bytes.split_first() {
        Some((&RUN_FORMAT, entries)) if entries.len() % RUN_ENTRY_BYTES == 0 => Ok(entries.chunks_exact(RUN_ENTRY_BYTES).map(|e| {
            let key = u128::from_le_bytes(e[..16].try_into().expect("16 bytes"));
            let time_ms = i64::from_le_bytes(e[16..24].try_into().expect("8 bytes"));
            let payload_hash = u64::from_le_bytes(e[24..].try_into().expect("8 bytes"));
            (key, Seen { time_ms, payload_hash })
        })),
        Some((&RUN_FORMAT, entries)) => Err(format!("a dedup run of {} bytes is not a whole number of {RUN_ENTRY_BYTES}-byte entries", entries.len())),
        Some((format, _)) => Err(format!("unknown dedup run format {format}")),
        None => Err("an empty dedup run".into()),
    }
}

/// Shards of the key index, by the top bits of the hash.
const SHARDS: usize = 64;

/// The keys within the TTL, and the stored runs not yet deleted.
struct KeyIndex {
    /// In [`SHARDS`] hash maps, each growing on its own: growing never holds two copies of the
    /// whole index at once (one map of 10M keys briefly held 830 MB while it doubled).
    seen: Vec<FxHashMap<u128, Seen>>,
    /// The cutoff of the last sweep.
    swept_at: i64,
    /// Sweep when the cutoff has moved this far since.
    sweep_ms: i64,
    /// Runs in the table by the latest event time in each: every run the cutoff has passed is at
    /// the front, whatever order they were written in (one run with a far-future key holds back
    /// no other).
    runs: BTreeSet<(i64, RunKey)>,
}

impl KeyIndex {
    /// Rebuilds the index of worker `index` of `peers` from the committed runs: the keys it
    /// owns not expired at `cutoff`. Worker 0 takes charge of deleting the runs found.
    fn rebuild(state: &WorkerState, table: &Table<BytesCodec>, ttl_ms: i64, cutoff: i64, (index, peers): (usize, usize)) -> Result<Self, OperatorError> {
        let started = std::time::Instant::now();
        let stored = state.scan_committed(table)?;
        // Each shard sized once for its share of the stored keys: no rehash while filling.
        let entries: usize = stored.iter().map(|(_, v)| v.len() / RUN_ENTRY_BYTES).sum();
        let per_shard = entries / peers / SHARDS + entries / peers / SHARDS / 8;
        let mut keys = KeyIndex {
            seen: (0..SHARDS).map(|_| FxHashMap::with_capacity_and_hasher(per_shard, Default::default())).collect(),
            swept_at: cutoff,
            sweep_ms: (ttl_ms / 8).max(1),
            runs: BTreeSet::new(),
        };
        let run_count = stored.len();
        // Runs in key order are in epoch order: a key stored again (after it expired) is
        // overwritten by its later run.
        for (run, value) in stored {
            let entries = decode_run(&value).map_err(|reason| sluice_state::StateError::Codec { table: KEYS_TABLE.into(), reason })?;
            let mut latest = i64::MIN;
            for (key, seen) in entries {
                latest = latest.max(seen.time_ms);
                if seen.time_ms >= cutoff && (route_of(key) % peers as u64) as usize == index {
                    keys.insert(key, seen);
                }
            }
            if index == 0 {
                let run: RunKey = run
                    .as_slice()
                    .try_into()
                    .map_err(|_| sluice_state::StateError::Codec { table: KEYS_TABLE.into(), reason: format!("a run key of {} bytes", run.len()) })?;
                keys.runs.insert((latest, run));
            }
        }
        let kept: usize = keys.seen.iter().map(|s| s.len()).sum();
        if run_count > 0 {
            tracing::info!(worker = index, runs = run_count, stored = entries, kept, ms = started.elapsed().as_millis() as u64, "dedup: key index rebuilt");
        }
        Ok(keys)
    }

    fn shard(key: u128) -> usize {
        (key >> (128 - SHARDS.trailing_zeros())) as usize
    }

    fn get(&self, key: u128) -> Option<Seen> {
        self.seen[Self::shard(key)].get(&key).copied()
    }

    fn insert(&mut self, key: u128, seen: Seen) {
        self.seen[Self::shard(key)].insert(key, seen);
    }

    /// Forgets the keys expired at `cutoff` once it has moved an eighth of the TTL, and stages
    /// the deletion of the runs all of whose keys are expired.
    fn expire(&mut self, cutoff: i64, epoch: Epoch, state: &mut WorkerState, table: &Table<BytesCodec>) {
        if cutoff >= self.swept_at.saturating_add(self.sweep_ms) {
            for shard in &mut self.seen {
                shard.retain(|_, s| s.time_ms >= cutoff);
            }
            self.swept_at = cutoff;
        }
        while self.runs.first().is_some_and(|(latest, _)| *latest < cutoff) {
            let (_, run) = self.runs.pop_first().expect("invariant: checked non-empty");
            state.delete(epoch, table, &run);
        }
    }
}

/// The dedup operator.
pub trait Dedup<'scope> {
    /// Deduplicates `self` by id; returns `(first copies, conflicts)`.
    ///
    /// # Errors
    /// The state cannot be read at start-up.
    #[allow(clippy::type_complexity)]
    fn dedup(
        self,
        progress: Stream<'scope, Epoch, Vec<PartitionProgress>>,
        config: DedupConfig,
        state: Rc<RefCell<WorkerState>>,
        metrics: Arc<Metrics>,
    ) -> Result<(Stream<'scope, Epoch, Vec<Event>>, Stream<'scope, Epoch, Vec<Conflict>>), OperatorError>;
}

#[derive(Default)]
struct Pending {
    events: Vec<Vec<Event>>,
    progress: Vec<PartitionProgress>,
}

impl<'scope> Dedup<'scope> for Stream<'scope, Epoch, Vec<Event>> {
    fn dedup(
        self,
        progress: Stream<'scope, Epoch, Vec<PartitionProgress>>,
        config: DedupConfig,
        state: Rc<RefCell<WorkerState>>,
        metrics: Arc<Metrics>,
    ) -> Result<(Stream<'scope, Epoch, Vec<Event>>, Stream<'scope, Epoch, Vec<Conflict>>), OperatorError> {
        let scope = self.scope();
        let (index, peers) = (scope.index(), scope.peers());
        let table: Table<BytesCodec> = state.borrow().store().table(KEYS_TABLE)?;
        let committed = crate::decode::committed_progress(&state.borrow())?;
        let mut tracker = WatermarkTracker::new(config.partitions, config.lateness_ms, &committed);
        let cutoff = tracker.watermark().saturating_sub(config.ttl_ms);
        let mut keys = KeyIndex::rebuild(&state.borrow(), &table, config.ttl_ms, cutoff, (index, peers))?;

        let mut builder = OperatorBuilder::new("Dedup".to_owned(), scope);
        let mut events_in = builder.new_input(self, Exchange::new(|e: &Event| route_of(key_hash(&e.id))));
        let mut progress_in = builder.new_input(progress, Pipeline);
        let (firsts_out, firsts) = builder.new_output::<Vec<Event>>();
        let (conflicts_out, conflicts) = builder.new_output::<Vec<Conflict>>();
        let mut firsts_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Event>>>::from(firsts_out);
        let mut conflicts_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Conflict>>>::from(conflicts_out);

        builder.build(move |capabilities| {
            let mut held = HeldCapabilities::new(capabilities);
            let mut pending: EpochStash<Pending> = EpochStash::new();
            let mut order: Vec<(u128, crate::event::Origin, u32)> = Vec::new();
            let mut run: Vec<u8> = Vec::new();
            move |frontiers| {
                events_in.for_each_stamp(|cap, data| {
                    let slot = pending.at(*cap.least().expect("invariant: an input stamp has a time"));
                    for batch in data {
                        slot.events.push(std::mem::take(batch));
                    }
                });
                progress_in.for_each_stamp(|cap, data| {
                    let slot = pending.at(*cap.least().expect("invariant: an input stamp has a time"));
                    for batch in data {
                        slot.progress.append(batch);
                    }
                });
                let frontier = input_frontier(frontiers);
                let mut firsts_h = firsts_out.activate();
                let mut conflicts_h = conflicts_out.activate();
                while let Some((epoch, Pending { events, progress })) = pending.pop_complete(frontier) {
                    let mut events = crate::epoch::concat(events);
                    // Events read again at a restart passed here the first time (their keys
                    // are in the index): they go straight on to the order buffer.
                    let replayed: Vec<Event> = if events.iter().any(|e| e.replay == Replay::Replayed) {
                        let (replayed, fresh) = events.into_iter().partition(|e| e.replay == Replay::Replayed);
                        events = fresh;
                        replayed
                    } else {
                        Vec::new()
                    };
                    let cutoff = tracker.watermark().saturating_sub(config.ttl_ms);
                    let mut state = state.borrow_mut();
                    keys.expire(cutoff, epoch, &mut state, &table);
                    // Copies of one key side by side, the first (lowest origin) first, so the
                    // first copy is the same for any number of workers.
                    order.clear();
                    order.extend(events.iter().enumerate().map(|(i, e)| (key_hash(&e.id), e.origin, i as u32)));
                    order.sort_unstable();
                    // Per event: the first copy's (time, payload hash), `None` for a first copy.
                    let mut decisions: Vec<Option<Seen>> = vec![None; events.len()];
                    run.clear();
                    run.push(RUN_FORMAT);
                    let mut first: Option<Seen> = None;
                    let mut latest = i64::MIN;
                    for (n, (key, _, i)) in order.iter().enumerate() {
                        let i = *i as usize;
                        if n == 0 || order[n - 1].0 != *key {
                            // A key stored in an earlier epoch is known while within the TTL;
                            // copies within this epoch always compare with its first copy.
                            first = keys.get(*key).filter(|s| s.time_ms >= cutoff);
                            if first.is_none() {
                                let seen = Seen { time_ms: events[i].time_ms, payload_hash: events[i].payload_hash };
                                keys.insert(*key, seen);
                                encode_entry(&mut run, *key, seen);
                                latest = latest.max(seen.time_ms);
                                first = Some(seen);
                                continue;
                            }
                        }
                        decisions[i] = first;
                    }
                    if run.len() > 1 {
                        state.put_blind(epoch, &table, &run_key(epoch, index), std::mem::take(&mut run));
                        keys.runs.insert((latest, run_key(epoch, index)));
                    }
                    let firsts_cap = held.at(0, epoch);
                    let conflicts_cap = held.at(1, epoch);
                    let mut firsts_s = firsts_h.session(&firsts_cap);
                    let mut conflicts_s = conflicts_h.session(&conflicts_cap);
                    firsts_s.give_iterator(replayed.into_iter());
                    let (mut duplicates, mut conflicted) = (0, 0);
                    for (event, first) in events.into_iter().zip(decisions) {
                        match first {
                            Some(s) if s.payload_hash == event.payload_hash => duplicates += 1,
                            Some(s) => {
                                conflicted += 1;
                                conflicts_s.give(Conflict { event, first_time_ms: s.time_ms });
                            }
                            None => firsts_s.give(event),
                        }
                    }
                    metrics.dedup.duplicates.fetch_add(duplicates, Ordering::Relaxed);
                    metrics.dedup.conflicts.fetch_add(conflicted, Ordering::Relaxed);
                    for p in &progress {
                        tracker.apply(p);
                    }
                    tracker.advance();
                }
                held.downgrade(frontier);
            }
        });
        Ok((firsts, conflicts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_round_trip_and_refuse_a_torn_value() {
        let mut run = vec![RUN_FORMAT];
        encode_entry(&mut run, u128::MAX - 5, Seen { time_ms: -42, payload_hash: 7 });
        encode_entry(&mut run, 3, Seen { time_ms: 1_790_000_000_000, payload_hash: u64::MAX });
        let entries: Vec<(u128, Seen)> = decode_run(&run).unwrap().collect();
        assert_eq!(entries, vec![(u128::MAX - 5, Seen { time_ms: -42, payload_hash: 7 }), (3, Seen { time_ms: 1_790_000_000_000, payload_hash: u64::MAX })]);
        assert_eq!(decode_run(&run[..run.len() - 1]).err().unwrap(), "a dedup run of 63 bytes is not a whole number of 32-byte entries");
        assert_eq!(decode_run(&[9]).err().unwrap(), "unknown dedup run format 9");
    }
}
