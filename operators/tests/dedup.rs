//! Dedup through its public API ([`Dedup::dedup`] in a timely dataflow over a real state
//! store), so that these tests hold for any rewrite of its internals: the TTL boundary, exact
//! repeats against conflicts, keys across epochs, which copy wins within an epoch, and the same
//! outputs for 1 and 3 workers.
//!
//! Every scenario runs with 1 and with 3 workers (`timely::Config::process`). Events are sent
//! round-robin from all workers, so with 3 workers the copies of a key reach its worker in an
//! order that varies from run to run; partition progress is sent by worker 0 and broadcast, as
//! the pipeline does (`dataflows/src/pipeline/stages.rs`).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use rand::{Rng, SeedableRng};
use sluice_operators::{decode, dedup, Conflict, Dedup, DedupConfig, Epoch, Event, Metrics, Origin, PartitionProgress};
use sluice_state::{StateOptions, StateStore};
use timely::dataflow::operators::vec::{Broadcast, Input};
use timely::dataflow::operators::{Inspect, Probe};
use timely::dataflow::{InputHandleVec, ProbeHandle};

/// What one epoch delivers.
#[derive(Debug, Clone, Default)]
struct Step {
    events: Vec<Event>,
    progress: Vec<PartitionProgress>,
}

/// What dedup produced: each output with the epoch it came out at (sorted by epoch, id,
/// origin: across workers the order of outputs is not defined), and the metrics' counters.
#[derive(Debug, Clone, PartialEq)]
struct Outputs {
    firsts: Vec<(Epoch, Event)>,
    conflicts: Vec<(Epoch, Conflict)>,
    duplicates: u64,
    conflicts_counted: u64,
}

fn event(id: &str, time_ms: i64, payload_hash: u64, (partition, offset): (u32, u64)) -> Event {
    Event {
        id: id.into(),
        entity: "customer-1".into(),
        kind: Default::default(),
        time_ms,
        numbers: vec![],
        strings: vec![],
        payload_hash,
        origin: Origin { partition, offset },
        late: false,
        ingest_us: 0,
        replay: Default::default(),
    }
}

fn progress(partition: u32, max_event_time_ms: i64) -> PartitionProgress {
    PartitionProgress { partition, max_event_time_ms: Some(max_event_time_ms), finished: false, idle: false }
}

fn conflict(event: Event, first_time_ms: i64) -> Conflict {
    Conflict { event, first_time_ms }
}

/// Runs dedup on `workers` workers over `steps` (step `i` is epoch `i`), with a fresh state
/// store holding dedup's and decode's tables (dedup reads the committed partition progress).
fn run(workers: usize, config: DedupConfig, steps: &[Step]) -> Outputs {
    let dir = tempfile::tempdir().unwrap();
    let mut tables = dedup::tables();
    tables.extend(decode::tables());
    let store = StateStore::open(dir.path(), &tables, workers, &StateOptions::default()).unwrap();
    let metrics = Arc::new(Metrics::default());
    let firsts: Arc<Mutex<Vec<(Epoch, Event)>>> = Arc::default();
    let conflicts: Arc<Mutex<Vec<(Epoch, Conflict)>>> = Arc::default();
    let steps = steps.to_vec();
    let guards = {
        let (store, metrics, firsts, conflicts) = (Arc::clone(&store), Arc::clone(&metrics), Arc::clone(&firsts), Arc::clone(&conflicts));
        timely::execute(timely::Config::process(workers), move |worker| {
            let index = worker.index();
            let state = Rc::new(RefCell::new(store.worker(index)));
            let mut events_in = InputHandleVec::<Epoch, Event>::new();
            let mut progress_in = InputHandleVec::<Epoch, PartitionProgress>::new();
            let probe = ProbeHandle::new();
            worker.dataflow::<Epoch, _, _>(|scope| {
                let progress = scope.input_from(&mut progress_in).broadcast();
                let (out, conflicted) = scope.input_from(&mut events_in).dedup(progress, config, Rc::clone(&state), Arc::clone(&metrics)).unwrap();
                let sink = Arc::clone(&firsts);
                out.inspect_core(move |seen| {
                    if let Ok((stamp, data)) = seen {
                        let epoch = *stamp.least().unwrap();
                        sink.lock().unwrap().extend(data.iter().map(|e| (epoch, e.clone())));
                    }
                })
                .probe_with(&probe);
                let sink = Arc::clone(&conflicts);
                conflicted
                    .inspect_core(move |seen| {
                        if let Ok((stamp, data)) = seen {
                            let epoch = *stamp.least().unwrap();
                            sink.lock().unwrap().extend(data.iter().map(|c| (epoch, c.clone())));
                        }
                    })
                    .probe_with(&probe);
            });
            for (epoch, step) in steps.iter().enumerate() {
                for (i, e) in step.events.iter().enumerate() {
                    if i % workers == index {
                        events_in.send(e.clone());
                    }
                }
                if index == 0 {
                    for p in &step.progress {
                        progress_in.send(*p);
                    }
                }
                events_in.advance_to(epoch as Epoch + 1);
                progress_in.advance_to(epoch as Epoch + 1);
            }
            drop((events_in, progress_in));
            while !probe.done() {
                worker.step();
            }
        })
        .unwrap()
    };
    for result in guards.join() {
        result.unwrap();
    }
    let mut firsts = firsts.lock().unwrap().clone();
    firsts.sort_by(|(ea, a), (eb, b)| (ea, &a.id, a.origin).cmp(&(eb, &b.id, b.origin)));
    let mut conflicts = conflicts.lock().unwrap().clone();
    conflicts.sort_by(|(ea, a), (eb, b)| (ea, &a.event.id, a.event.origin).cmp(&(eb, &b.event.id, b.event.origin)));
    Outputs { firsts, conflicts, duplicates: Metrics::get(&metrics.dedup.duplicates), conflicts_counted: Metrics::get(&metrics.dedup.conflicts) }
}

/// Runs with 1 and with 3 workers; asserts both give the same outputs and returns them.
fn run_on_1_and_3_workers(config: DedupConfig, steps: &[Step]) -> Outputs {
    let one = run(1, config, steps);
    let three = run(3, config, steps);
    assert_eq!(one, three, "1 worker and 3 workers disagree");
    one
}

const ONE_PARTITION: DedupConfig = DedupConfig { ttl_ms: 100, lateness_ms: 0, partitions: 1 };

#[test]
fn a_key_stored_exactly_at_the_ttl_cutoff_is_still_known_and_one_ms_below_it_is_forgotten() {
    // ttl 100, lateness 0, one partition. Epoch 0 stores `at` (1,100) and `below` (1,099); its
    // progress (max 1,200) makes the watermark 1,200. Epoch 1's cutoff is that watermark before
    // the epoch minus the ttl: 1,200 − 100 = 1,100. `at` (1,100, not < 1,100) is still known:
    // its exact repeat is a duplicate. `below` (1,099 < 1,100) is forgotten: its repeat is a new
    // first copy. Had the cutoff used epoch 1's own progress (max 1,300), it would be 1,200 and
    // `at` would be forgotten too.
    let steps = [
        Step { events: vec![event("at", 1_100, 1, (0, 0)), event("below", 1_099, 2, (0, 1))], progress: vec![progress(0, 1_200)] },
        Step { events: vec![event("at", 1_300, 1, (0, 2)), event("below", 1_300, 2, (0, 3))], progress: vec![progress(0, 1_300)] },
    ];
    let out = run_on_1_and_3_workers(ONE_PARTITION, &steps);
    assert_eq!(out.firsts, vec![(0, event("at", 1_100, 1, (0, 0))), (0, event("below", 1_099, 2, (0, 1))), (1, event("below", 1_300, 2, (0, 3)))]);
    assert_eq!(out.conflicts, vec![]);
    assert_eq!((out.duplicates, out.conflicts_counted), (1, 0));
}

#[test]
fn a_forgotten_key_with_a_different_payload_is_a_new_first_copy_not_a_conflict() {
    // Same boundary as above, with the repeats' payloads changed: `at` (stored 1,100 = cutoff)
    // is known, so its changed payload is a conflict carrying 1,100; `below` (1,099) is
    // forgotten, so its changed payload is simply a new first copy.
    let steps = [
        Step { events: vec![event("at", 1_100, 1, (0, 0)), event("below", 1_099, 2, (0, 1))], progress: vec![progress(0, 1_200)] },
        Step { events: vec![event("at", 1_300, 10, (0, 2)), event("below", 1_300, 20, (0, 3))], progress: vec![progress(0, 1_300)] },
    ];
    let out = run_on_1_and_3_workers(ONE_PARTITION, &steps);
    assert_eq!(out.firsts, vec![(0, event("at", 1_100, 1, (0, 0))), (0, event("below", 1_099, 2, (0, 1))), (1, event("below", 1_300, 20, (0, 3)))]);
    assert_eq!(out.conflicts, vec![(1, conflict(event("at", 1_300, 10, (0, 2)), 1_100))]);
    assert_eq!((out.duplicates, out.conflicts_counted), (0, 1));
}

#[test]
fn an_exact_repeat_is_counted_and_dropped_and_a_changed_payload_is_a_conflict_with_the_first_copys_time() {
    // The module's example across two epochs: e1 (hash 5) first; then e1 (hash 5) again, an
    // exact repeat: counted, on no output; then e1 (hash 6): a conflict carrying the first
    // copy's event time 1,000 (not its own 1,020). ttl 60,000: nothing expires.
    let config = DedupConfig { ttl_ms: 60_000, lateness_ms: 0, partitions: 1 };
    let steps = [
        Step { events: vec![event("e1", 1_000, 5, (0, 0))], progress: vec![progress(0, 1_000)] },
        Step { events: vec![event("e1", 1_010, 5, (0, 1)), event("e1", 1_020, 6, (0, 2))], progress: vec![progress(0, 1_020)] },
    ];
    let out = run_on_1_and_3_workers(config, &steps);
    assert_eq!(out.firsts, vec![(0, event("e1", 1_000, 5, (0, 0)))]);
    assert_eq!(out.conflicts, vec![(1, conflict(event("e1", 1_020, 6, (0, 2)), 1_000))]);
    assert_eq!((out.duplicates, out.conflicts_counted), (1, 1));
}

#[test]
fn a_repeat_several_epochs_later_is_recognised_while_within_the_ttl() {
    // Two partitions, lateness 50, ttl 1,000. `k` is first seen in epoch 0 at 500; epochs 1
    // and 2 carry only progress; the watermarks after epochs 0..=3 are min(max) − 50 = 550,
    // 750, 950, 1,150, so the cutoffs of epochs 1..=4 are −450, −250, −50, 150: 500 stays above
    // them. Epoch 3 repeats `k` exactly (a duplicate) and epoch 4 with another payload (a
    // conflict with first time 500). `other` (first seen in epoch 3) shows a new key still
    // passes in a later epoch.
    let config = DedupConfig { ttl_ms: 1_000, lateness_ms: 50, partitions: 2 };
    let steps = [
        Step { events: vec![event("k", 500, 7, (1, 0))], progress: vec![progress(0, 600), progress(1, 700)] },
        Step { events: vec![], progress: vec![progress(0, 800), progress(1, 900)] },
        Step { events: vec![], progress: vec![progress(0, 1_000), progress(1, 1_100)] },
        Step { events: vec![event("k", 1_150, 7, (0, 9)), event("other", 1_150, 7, (0, 10))], progress: vec![progress(0, 1_200), progress(1, 1_300)] },
        Step { events: vec![event("k", 1_250, 8, (1, 4))], progress: vec![progress(0, 1_300), progress(1, 1_300)] },
    ];
    let out = run_on_1_and_3_workers(config, &steps);
    assert_eq!(out.firsts, vec![(0, event("k", 500, 7, (1, 0))), (3, event("other", 1_150, 7, (0, 10)))]);
    assert_eq!(out.conflicts, vec![(4, conflict(event("k", 1_250, 8, (1, 4)), 500))]);
    assert_eq!((out.duplicates, out.conflicts_counted), (1, 1));
}

#[test]
fn within_one_epoch_the_copy_with_the_lowest_origin_wins_whatever_the_arrival_order() {
    // Four copies of `k` in one epoch. By origin (partition, offset): b (0,9) < c (0,12) <
    // a (1,0) < d (1,3), so b is the first copy, although it arrives last in the first order
    // and d has the earliest event time. c has b's payload: a duplicate. a and d differ from
    // b: conflicts carrying b's time, 1,500.
    let a = event("k", 1_700, 7, (1, 0));
    let b = event("k", 1_500, 8, (0, 9));
    let c = event("k", 1_600, 8, (0, 12));
    let d = event("k", 1_400, 9, (1, 3));
    let arrivals = [[&a, &d, &c, &b], [&b, &c, &d, &a], [&d, &b, &a, &c]];
    for arrival in arrivals {
        let steps = [Step { events: arrival.iter().map(|e| (*e).clone()).collect(), progress: vec![progress(0, 2_000), progress(1, 2_000)] }];
        let out = run_on_1_and_3_workers(DedupConfig { ttl_ms: 60_000, lateness_ms: 0, partitions: 2 }, &steps);
        let ids: Vec<(u32, u64)> = arrival.iter().map(|e| (e.origin.partition, e.origin.offset)).collect();
        assert_eq!(out.firsts, vec![(0, b.clone())], "arrival order {ids:?}");
        assert_eq!(out.conflicts, vec![(0, conflict(a.clone(), 1_500)), (0, conflict(d.clone(), 1_500))], "arrival order {ids:?}");
        assert_eq!((out.duplicates, out.conflicts_counted), (1, 2), "arrival order {ids:?}");
    }
}

/// The plain reference: per epoch, copies in (id, origin) order; a key's first copy is looked
/// up among the stored keys not older than the cutoff (watermark before the epoch − ttl); later
/// copies of the epoch compare with that first copy.
fn reference(config: DedupConfig, steps: &[Step]) -> Outputs {
    let mut stored: BTreeMap<sluice_operators::event::Text, (i64, u64)> = BTreeMap::new();
    // Per partition: its largest event time − lateness (i64::MIN before its first event).
    let mut max_time: BTreeMap<u32, i64> = BTreeMap::new();
    let mut watermark = i64::MIN;
    let mut out = Outputs { firsts: vec![], conflicts: vec![], duplicates: 0, conflicts_counted: 0 };
    for (epoch, step) in steps.iter().enumerate() {
        let epoch = epoch as Epoch;
        let cutoff = watermark.saturating_sub(config.ttl_ms);
        let mut events = step.events.clone();
        events.sort_by(|a, b| (&a.id, a.origin).cmp(&(&b.id, b.origin)));
        let mut first_this_epoch: BTreeMap<sluice_operators::event::Text, (i64, u64)> = BTreeMap::new();
        for e in events {
            let first = first_this_epoch.get(&e.id).copied().or_else(|| stored.get(&e.id).copied().filter(|(t, _)| *t >= cutoff));
            first_this_epoch.insert(e.id.clone(), first.unwrap_or((e.time_ms, e.payload_hash)));
            match first {
                None => {
                    stored.insert(e.id.clone(), (e.time_ms, e.payload_hash));
                    out.firsts.push((epoch, e));
                }
                Some((_, hash)) if hash == e.payload_hash => out.duplicates += 1,
                Some((time, _)) => {
                    out.conflicts_counted += 1;
                    out.conflicts.push((epoch, Conflict { event: e, first_time_ms: time }));
                }
            }
        }
        for p in &step.progress {
            max_time.insert(p.partition, p.max_event_time_ms.map_or(i64::MIN, |t| t - config.lateness_ms));
        }
        if max_time.len() == config.partitions {
            watermark = watermark.max(*max_time.values().min().unwrap());
        }
    }
    out.firsts.sort_by(|(ea, a), (eb, b)| (ea, &a.id, a.origin).cmp(&(eb, &b.id, b.origin)));
    out.conflicts.sort_by(|(ea, a), (eb, b)| (ea, &a.event.id, a.event.origin).cmp(&(eb, &b.event.id, b.event.origin)));
    out
}

#[test]
fn seeded_random_input_gives_the_plain_references_outputs_on_1_and_3_workers() {
    // 8 epochs of 60 events over 25 keys, 3 partitions, 2 payloads per key, event times moving
    // 100 ms per epoch with up to 300 ms of disorder; ttl 250 and lateness 40, so keys do
    // expire between repeats.
    let config = DedupConfig { ttl_ms: 250, lateness_ms: 40, partitions: 3 };
    for seed in [1, 2, 3] {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut offsets = [0u64; 3];
        let mut max_time: [Option<i64>; 3] = [None; 3];
        let mut steps = Vec::new();
        for epoch in 0..8i64 {
            let mut step = Step::default();
            for _ in 0..60 {
                let partition = rng.gen_range(0..3u32);
                let time = 1_000 + epoch * 100 + rng.gen_range(-300..100);
                let id = format!("k{}", rng.gen_range(0..25));
                step.events.push(event(&id, time, rng.gen_range(1..=2), (partition, offsets[partition as usize])));
                offsets[partition as usize] += 1;
                max_time[partition as usize] = max_time[partition as usize].max(Some(time));
            }
            step.progress = (0..3).map(|p| PartitionProgress { partition: p, max_event_time_ms: max_time[p as usize], finished: false, idle: false }).collect();
            steps.push(step);
        }
        let want = reference(config, &steps);
        // The scenario exercises every case: firsts after expiry, duplicates and conflicts.
        assert!(
            want.firsts.len() > 25 && want.duplicates > 20 && want.conflicts_counted > 20,
            "seed {seed}: {} {} {}",
            want.firsts.len(),
            want.duplicates,
            want.conflicts_counted
        );
        assert_eq!(run_on_1_and_3_workers(config, &steps), want, "seed {seed}");
    }
}
