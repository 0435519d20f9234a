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
//! 2. every other event is buffered, in memory and in the RocksDB table `order_buffer` (so a
//!    restart finds it), keyed by (time, origin);
//! 3. the epoch's progress advances the watermark, and every buffered event with a time below
//!    the new watermark is released, sorted by (time, id, origin). Since the watermark is the
//!    same on every worker, one range deletion of the keys below it clears the released events
//!    of all workers from the table; an event buffered and released in the same epoch never
//!    reaches RocksDB at all.
//!
//! So the output is in event-time order per worker and per entity, and which events are late
//! depends only on what each partition delivered per epoch, not on the number of workers. When
//! every partition is finished, the watermark is `i64::MAX` and the buffer empties.
//!
//! Example: lateness 10, one partition delivering times 5, 20, 12 in epoch 0 and 30, 3 in
//! epoch 1: after epoch 0 the watermark is 10 and 5 is released; in epoch 1, 3 is late
//! (3 < 10), the watermark becomes 20 and 12 is released; 20 and 30 wait.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::Deserialize;
use sluice_state::{Codec, Table, TableSpec, WorkerState};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::Stream;

use crate::epoch::{input_frontier, EpochStash, HeldCapabilities};
use crate::event::{route_hash, Epoch, Event, EventCodec, LateEvent, Origin, PartitionProgress};
use crate::metrics::Metrics;
use crate::watermark::WatermarkTracker;
use crate::OperatorError;

/// The table of buffered events: (time, partition, offset) to the event.
pub const BUFFER_TABLE: &str = "order_buffer";

/// The tables order declares.
pub fn tables() -> Vec<TableSpec> {
    vec![TableSpec::new(BUFFER_TABLE)]
}

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

fn buffer_key(time_ms: i64, origin: Origin) -> [u8; 20] {
    let mut key = [0u8; 20];
    key[..8].copy_from_slice(&((time_ms as u64) ^ (1 << 63)).to_be_bytes());
    key[8..12].copy_from_slice(&origin.partition.to_be_bytes());
    key[12..].copy_from_slice(&origin.offset.to_be_bytes());
    key
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

/// (time, origin): unique per record; ties in time are put in id order at release.
type BufferKey = (i64, Origin);

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
        let table: Table<EventCodec> = state.borrow().store().table(BUFFER_TABLE)?;
        let committed = crate::decode::committed_progress(&state.borrow())?;
        let mut tracker = WatermarkTracker::new(config.partitions, config.lateness_ms, &committed);

        // Restore the buffer: the entries of the entities this worker owns.
        // Buffered events are held encoded: a third of the memory of an `Event` and its strings,
        // and the same bytes go to the table.
        let mut buffer: BTreeMap<BufferKey, Vec<u8>> = BTreeMap::new();
        for (key, value) in state.borrow().scan_committed(&table)? {
            let event = EventCodec::decode(&value).map_err(|reason| sluice_state::StateError::Codec { table: BUFFER_TABLE.into(), reason })?;
            debug_assert_eq!(key.as_slice(), buffer_key(event.time_ms, event.origin).as_slice());
            if (route_hash(&event.entity) % peers as u64) as usize == index {
                buffer.insert((event.time_ms, event.origin), value);
            }
        }

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
                    let mut events = crate::epoch::concat(events);
                    events.sort_unstable_by_key(|e| e.origin);
                    let watermark = tracker.watermark();
                    let ordered_cap = held.at(0, epoch);
                    let late_cap = held.at(1, epoch);
                    let mut ordered_s = ordered_h.session(&ordered_cap);
                    let mut late_s = late_h.session(&late_cap);
                    let mut state = state.borrow_mut();
                    let mut late_count = 0;
                    let mut flagged = Vec::new();
                    let mut arrived = Vec::new();
                    for mut event in events {
                        if event.time_ms < watermark {
                            late_count += 1;
                            match config.late {
                                LatePolicy::Side => late_s.give(LateEvent { event, watermark_ms: watermark }),
                                LatePolicy::Drop => {}
                                LatePolicy::Flag => {
                                    event.late = true;
                                    flagged.push(event);
                                }
                            }
                        } else {
                            let mut bytes = Vec::with_capacity(128);
                            EventCodec::encode(&event, &mut bytes);
                            arrived.push((event.time_ms, event.origin));
                            buffer.insert((event.time_ms, event.origin), bytes);
                        }
                    }
                    metrics.time.late.fetch_add(late_count, Ordering::Relaxed);
                    for p in &progress {
                        tracker.apply(p);
                    }
                    let previous = watermark;
                    let watermark = tracker.advance();
                    if index == 0 {
                        metrics.time.watermark_ms.set(watermark);
                    }
                    let mut released = Vec::new();
                    while let Some(first) = buffer.first_entry() {
                        if first.key().0 >= watermark {
                            break;
                        }
                        let bytes = first.remove();
                        let event = EventCodec::decode(&bytes).unwrap_or_else(|e| panic!("invariant: a buffered event decodes: {e}"));
                        released.push(event);
                    }
                    // Already in (time, origin) order; put equal times in id order.
                    released.sort_by(|a, b| (a.time_ms, a.id.as_str(), a.origin).cmp(&(b.time_ms, b.id.as_str(), b.origin)));
                    for event in released {
                        ordered_s.give(event);
                    }
                    // What arrived in this epoch and is still buffered goes to the table; what
                    // was released within the epoch never reaches RocksDB.
                    for key in arrived {
                        if let Some(bytes) = buffer.get(&key) {
                            state.put_blind(epoch, &table, &buffer_key(key.0, key.1), bytes.clone());
                        }
                    }
                    // Every worker releases everything below the same watermark in the same
                    // epoch, so one range deletion (staged by worker 0) removes all released
                    // events of all workers from the table.
                    if index == 0 && watermark > previous && watermark > i64::MIN {
                        let origin = Origin { partition: 0, offset: 0 };
                        state.delete_range(epoch, &table, &buffer_key(i64::MIN, origin), &buffer_key(watermark, origin));
                    }
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
    fn buffer_keys_sort_by_time_then_origin() {
        let a = buffer_key(-1, Origin { partition: 9, offset: 9 });
        let b = buffer_key(0, Origin { partition: 0, offset: 0 });
        let c = buffer_key(0, Origin { partition: 0, offset: 1 });
        assert!(a < b && b < c);
    }
}
