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
//! Keeps, in the RocksDB table `dedup_keys`, each key's event time and payload hash. A key is
//! forgotten once it is older than `ttl` behind the watermark (the watermark before the epoch
//! being processed); a compaction filter then drops it from disk. Nothing is kept in memory
//! beyond the epochs not yet committed: 10M keys cost disk, not RAM.
//!
//! A repeat with the same payload hash is a duplicate: counted and dropped. A repeat with a
//! different payload is a conflict: it goes to the conflicts output with the first copy's time,
//! and is otherwise dropped (the first copy wins).
//!
//! Example: `e1` (amount 5), then `e1` (amount 5), then `e1` (amount 6) gives `e1` once, one
//! duplicate counted and one conflict.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use sluice_state::{Table, TableSpec, WorkerState};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::Stream;

use crate::epoch::{input_frontier, EpochStash, HeldCapabilities};
use crate::event::{route_hash, Conflict, Epoch, Event, PartitionProgress};
use crate::metrics::Metrics;
use crate::watermark::WatermarkTracker;
use crate::OperatorError;

/// The table of seen keys: id to (event time, payload hash).
pub const KEYS_TABLE: &str = "dedup_keys";

/// The tables dedup declares.
pub fn tables() -> Vec<TableSpec> {
    vec![TableSpec::new(KEYS_TABLE).with_ttl().with_point_lookups()]
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

fn encode_seen(time_ms: i64, hash: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    <sluice_state::I64Codec as sluice_state::Codec>::encode(&time_ms, &mut v);
    v.extend_from_slice(&hash.to_le_bytes());
    v
}

fn decode_seen(bytes: &[u8]) -> Option<(i64, u64)> {
    let time = sluice_state::ttl_stamp(bytes)?;
    let hash = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
    Some((time, hash))
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
        let table: Table<sluice_state::BytesCodec> = state.borrow().store().table(KEYS_TABLE)?;
        let committed = crate::decode::committed_progress(&state.borrow())?;
        let mut tracker = WatermarkTracker::new(config.partitions, config.lateness_ms, &committed);

        let mut builder = OperatorBuilder::new("Dedup".to_owned(), self.scope());
        let mut events_in = builder.new_input(self, Exchange::new(|e: &Event| route_hash(&e.id)));
        let mut progress_in = builder.new_input(progress, Pipeline);
        let (firsts_out, firsts) = builder.new_output::<Vec<Event>>();
        let (conflicts_out, conflicts) = builder.new_output::<Vec<Conflict>>();
        let mut firsts_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Event>>>::from(firsts_out);
        let mut conflicts_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Conflict>>>::from(conflicts_out);

        builder.build(move |capabilities| {
            let mut held = HeldCapabilities::new(capabilities);
            let mut pending: EpochStash<Pending> = EpochStash::new();
            // Cutoffs of processed epochs, applied to the compaction filter once committed.
            let mut cutoffs: VecDeque<(Epoch, i64)> = VecDeque::new();
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
                    let cutoff = tracker.watermark().saturating_sub(config.ttl_ms);
                    // Copies of one key sit side by side, the first (lowest origin) first; the
                    // sorted keys also make RocksDB's batched lookup faster.
                    events.sort_unstable_by(|a, b| (a.id.as_str(), a.origin).cmp(&(b.id.as_str(), b.origin)));
                    let stored = {
                        let mut keys: Vec<&[u8]> = events.iter().map(|e| e.id.as_bytes()).collect();
                        keys.dedup();
                        let values = state.borrow_mut().get_many_raw(&table, &keys, Some(cutoff)).unwrap_or_else(|e| panic!("dedup: cannot read state: {e}"));
                        values.into_iter().map(|v| v.as_deref().and_then(decode_seen)).collect::<Vec<_>>()
                    };
                    let firsts_cap = held.at(0, epoch);
                    let conflicts_cap = held.at(1, epoch);
                    let mut firsts_s = firsts_h.session(&firsts_cap);
                    let mut conflicts_s = conflicts_h.session(&conflicts_cap);
                    let (mut duplicates, mut conflicted) = (0, 0);
                    let mut state = state.borrow_mut();
                    // Decide on borrowed events first (no id is cloned), then move them out.
                    let mut decisions: Vec<Option<(i64, u64)>> = Vec::with_capacity(events.len());
                    let mut key_index = 0usize;
                    // (time, hash) of the first copy of the current key, from the store or this epoch.
                    let mut first: Option<(i64, u64)> = None;
                    for (i, event) in events.iter().enumerate() {
                        if i == 0 || events[i - 1].id != event.id {
                            if i > 0 {
                                key_index += 1;
                            }
                            first = stored[key_index];
                        }
                        decisions.push(first);
                        if first.is_none() {
                            first = Some((event.time_ms, event.payload_hash));
                        }
                    }
                    for (event, first) in events.into_iter().zip(decisions) {
                        match first {
                            Some((_, hash)) if hash == event.payload_hash => duplicates += 1,
                            Some((first_time_ms, _)) => {
                                conflicted += 1;
                                conflicts_s.give(Conflict { event, first_time_ms });
                            }
                            None => {
                                state.put_raw(epoch, table.index(), event.id.as_bytes(), encode_seen(event.time_ms, event.payload_hash));
                                firsts_s.give(event);
                            }
                        }
                    }
                    metrics.dedup.duplicates.fetch_add(duplicates, Ordering::Relaxed);
                    metrics.dedup.conflicts.fetch_add(conflicted, Ordering::Relaxed);
                    for p in &progress {
                        tracker.apply(p);
                    }
                    tracker.advance();
                    cutoffs.push_back((epoch, cutoff));
                }
                // Let compactions drop keys expired as of a committed epoch.
                let resume = state.borrow().store().resume_epoch();
                let mut latest = None;
                while cutoffs.front().is_some_and(|(e, _)| *e < resume) {
                    latest = cutoffs.pop_front().map(|(_, c)| c);
                }
                if let Some(cutoff) = latest {
                    state.borrow().store().set_ttl_cutoff(&table, cutoff);
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
    fn seen_values_round_trip_and_carry_the_ttl_stamp() {
        let v = encode_seen(-42, 7);
        assert_eq!(decode_seen(&v), Some((-42, 7)));
        assert_eq!(sluice_state::ttl_stamp(&v), Some(-42));
    }
}
