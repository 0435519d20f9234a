//! Order through its public API ([`Order::order`] in a timely dataflow over a real state
//! store): ties in event time, the watermark edge, each late policy, the watermark as the
//! slowest unfinished partition, and the same outputs for 1 and 3 workers.
//!
//! The watermark comes from [`PartitionProgress`] records: `min over unfinished partitions of
//! (largest event time − lateness)`, never going back, `i64::MAX` once every partition is
//! finished. An event of epoch `e` is late when its time is below the watermark as of the end of
//! epoch `e − 1`; buffered events are released once their time is below the new watermark.
//!
//! Every scenario runs with 1 and with 3 workers (`timely::Config::process`). Events are sent
//! round-robin from all workers; partition progress is sent by worker 0 and broadcast, as the
//! pipeline does. Order promises event-time order per entity, so outputs are compared per
//! entity, in the order they came out.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use rand::{Rng, SeedableRng};
use sluice_operators::{decode, order, Epoch, Event, LateEvent, LatePolicy, Metrics, Order, OrderConfig, Origin, PartitionProgress};
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

/// What order produced, with the epoch of each output; per entity, in output order.
#[derive(Debug, Clone, PartialEq)]
struct Outputs {
    ordered: BTreeMap<sluice_operators::event::Text, Vec<(Epoch, Event)>>,
    late: BTreeMap<sluice_operators::event::Text, Vec<(Epoch, LateEvent)>>,
    late_counted: u64,
    /// The watermark worker 0 reported last.
    watermark_ms: Option<i64>,
}

const ENTITY: &str = "customer-1";

fn event(id: &str, time_ms: i64, (partition, offset): (u32, u64)) -> Event {
    event_of(ENTITY, id, time_ms, (partition, offset))
}

fn event_of(entity: &str, id: &str, time_ms: i64, (partition, offset): (u32, u64)) -> Event {
    Event {
        id: id.into(),
        entity: entity.into(),
        kind: Default::default(),
        time_ms,
        numbers: vec![],
        strings: vec![],
        payload_hash: 0,
        origin: Origin { partition, offset },
        late: false,
        ingest_us: 0,
        replay: Default::default(),
    }
}

fn flagged(mut e: Event) -> Event {
    e.late = true;
    e
}

fn progress(partition: u32, max_event_time_ms: i64) -> PartitionProgress {
    PartitionProgress { partition, max_event_time_ms: Some(max_event_time_ms), finished: false, idle: false }
}

fn finished(partition: u32, max_event_time_ms: i64) -> PartitionProgress {
    PartitionProgress { partition, max_event_time_ms: Some(max_event_time_ms), finished: true, idle: false }
}

/// Runs order on `workers` workers over `steps` (step `i` is epoch `i`), with a fresh state
/// store holding order's and decode's tables (order reads the committed partition progress).
fn run(workers: usize, config: OrderConfig, steps: &[Step]) -> Outputs {
    let dir = tempfile::tempdir().unwrap();
    let mut tables = order::tables();
    tables.extend(decode::tables());
    let store = StateStore::open(dir.path(), &tables, workers, &StateOptions::default()).unwrap();
    let metrics = Arc::new(Metrics::default());
    let ordered: Arc<Mutex<Vec<(Epoch, Event)>>> = Arc::default();
    let late: Arc<Mutex<Vec<(Epoch, LateEvent)>>> = Arc::default();
    let steps = steps.to_vec();
    let guards = {
        let (store, metrics, ordered, late) = (Arc::clone(&store), Arc::clone(&metrics), Arc::clone(&ordered), Arc::clone(&late));
        timely::execute(timely::Config::process(workers), move |worker| {
            let index = worker.index();
            let state = Rc::new(RefCell::new(store.worker(index)));
            let mut events_in = InputHandleVec::<Epoch, Event>::new();
            let mut progress_in = InputHandleVec::<Epoch, PartitionProgress>::new();
            let probe = ProbeHandle::new();
            worker.dataflow::<Epoch, _, _>(|scope| {
                let progress = scope.input_from(&mut progress_in).broadcast();
                let (out, behind) = scope.input_from(&mut events_in).order(progress, config, Rc::clone(&state), Arc::clone(&metrics)).unwrap();
                // One lock per container: a worker's outputs stay in their order.
                let sink = Arc::clone(&ordered);
                out.inspect_core(move |seen| {
                    if let Ok((stamp, data)) = seen {
                        let epoch = *stamp.least().unwrap();
                        sink.lock().unwrap().extend(data.iter().map(|e| (epoch, e.clone())));
                    }
                })
                .probe_with(&probe);
                let sink = Arc::clone(&late);
                behind
                    .inspect_core(move |seen| {
                        if let Ok((stamp, data)) = seen {
                            let epoch = *stamp.least().unwrap();
                            sink.lock().unwrap().extend(data.iter().map(|e| (epoch, e.clone())));
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
    let mut out = Outputs {
        ordered: BTreeMap::new(),
        late: BTreeMap::new(),
        late_counted: Metrics::get(&metrics.time.late),
        watermark_ms: metrics.time.watermark_ms.get(),
    };
    for (epoch, e) in ordered.lock().unwrap().iter() {
        out.ordered.entry(e.entity.clone()).or_default().push((*epoch, e.clone()));
    }
    // The late output has no order to keep: sorted by epoch and origin.
    let mut late = late.lock().unwrap().clone();
    late.sort_by_key(|(epoch, l)| (*epoch, l.event.origin));
    for (epoch, l) in late {
        out.late.entry(l.event.entity.clone()).or_default().push((epoch, l));
    }
    out
}

/// Runs with 1 and with 3 workers; asserts both give the same outputs and returns them.
fn run_on_1_and_3_workers(config: OrderConfig, steps: &[Step]) -> Outputs {
    let one = run(1, config, steps);
    let three = run(3, config, steps);
    assert_eq!(one, three, "1 worker and 3 workers disagree");
    one
}

fn one_partition(lateness_ms: i64, late: LatePolicy) -> OrderConfig {
    OrderConfig { lateness_ms, late, partitions: 1 }
}

/// The released events of `ENTITY` with their epochs.
fn ordered(out: &Outputs) -> Vec<(Epoch, Event)> {
    out.ordered.get(ENTITY).cloned().unwrap_or_default()
}

fn late(out: &Outputs) -> Vec<(Epoch, LateEvent)> {
    out.late.get(ENTITY).cloned().unwrap_or_default()
}

#[test]
fn events_with_equal_time_are_released_in_id_order_then_origin_not_in_arrival_order() {
    // Arrival order c, a′, b, a, z; origin order a (0,0), c (0,1), b (0,2), a′ (0,3), z (0,9).
    // Released: z first (time 99), then the four at time 100 by id, the two `a` by origin:
    // a (0,0), a′ (0,3), b, c. Neither the arrival nor the origin order.
    let steps = [Step {
        events: vec![event("c", 100, (0, 1)), event("a", 100, (0, 3)), event("b", 100, (0, 2)), event("a", 100, (0, 0)), event("z", 99, (0, 9))],
        progress: vec![progress(0, 200)],
    }];
    let out = run_on_1_and_3_workers(one_partition(0, LatePolicy::Side), &steps);
    let want = [event("z", 99, (0, 9)), event("a", 100, (0, 0)), event("a", 100, (0, 3)), event("b", 100, (0, 2)), event("c", 100, (0, 1))];
    assert_eq!(ordered(&out), want.into_iter().map(|e| (0, e)).collect::<Vec<_>>());
    assert_eq!((late(&out), out.late_counted), (vec![], 0));
}

#[test]
fn an_event_at_the_watermark_is_on_time_one_ms_below_is_late_and_release_needs_time_below_the_new_watermark() {
    // Lateness 10, one partition.
    // Epoch 0: `first` at 100; progress max 100 → watermark 90. 100 is not < 90: buffered.
    // Epoch 1: `at` 90 and `below` 89 against the watermark 90 of epoch 0: 90 is on time,
    //   89 is late. Progress max 100 again: the watermark stays 90, and `at` (90, not < 90)
    //   stays buffered.
    // Epoch 2: progress max 101 → watermark 91: `at` (90 < 91) is released, `first` (100) not.
    // Epoch 3: the partition finishes → watermark i64::MAX: `first` is released.
    let steps = [
        Step { events: vec![event("first", 100, (0, 0))], progress: vec![progress(0, 100)] },
        Step { events: vec![event("at", 90, (0, 1)), event("below", 89, (0, 2))], progress: vec![progress(0, 100)] },
        Step { events: vec![], progress: vec![progress(0, 101)] },
        Step { events: vec![], progress: vec![finished(0, 101)] },
    ];
    let out = run_on_1_and_3_workers(one_partition(10, LatePolicy::Side), &steps);
    assert_eq!(ordered(&out), vec![(2, event("at", 90, (0, 1))), (3, event("first", 100, (0, 0)))]);
    assert_eq!(late(&out), vec![(1, LateEvent { event: event("below", 89, (0, 2)), watermark_ms: 90 })]);
    assert_eq!(out.late_counted, 1);
    assert_eq!(out.watermark_ms, Some(i64::MAX));
}

#[test]
fn the_modules_example_releases_five_then_twelve_and_holds_twenty_and_thirty() {
    // order.rs's example: lateness 10, one partition delivering 5, 20, 12 in epoch 0 and 30, 3
    // in epoch 1. After epoch 0 the watermark is 20 − 10 = 10: 5 is released. In epoch 1, 3 is
    // late (3 < 10); the watermark becomes 30 − 10 = 20 and 12 is released; 20 and 30 wait
    // (the partition never finishes).
    let steps = [
        Step { events: vec![event("t5", 5, (0, 0)), event("t20", 20, (0, 1)), event("t12", 12, (0, 2))], progress: vec![progress(0, 20)] },
        Step { events: vec![event("t30", 30, (0, 3)), event("t3", 3, (0, 4))], progress: vec![progress(0, 30)] },
    ];
    let out = run_on_1_and_3_workers(one_partition(10, LatePolicy::Side), &steps);
    assert_eq!(ordered(&out), vec![(0, event("t5", 5, (0, 0))), (1, event("t12", 12, (0, 2)))]);
    assert_eq!(late(&out), vec![(1, LateEvent { event: event("t3", 3, (0, 4)), watermark_ms: 10 })]);
    assert_eq!((out.late_counted, out.watermark_ms), (1, Some(20)));
}

/// The scenario of the late-policy tests. Lateness 0, one partition.
/// Epoch 0: `a` at 100; progress max 100 → watermark 100; `a` (100, not < 100) buffered.
/// Epoch 1: `late` at 50 (< 100: late) and `b` at 150; progress max 150 → watermark 150:
///   `a` is released; `b` waits.
/// Epoch 2: the partition finishes → watermark i64::MAX: `b` is released.
fn late_policy_steps() -> Vec<Step> {
    vec![
        Step { events: vec![event("a", 100, (0, 0))], progress: vec![progress(0, 100)] },
        Step { events: vec![event("late", 50, (0, 1)), event("b", 150, (0, 2))], progress: vec![progress(0, 150)] },
        Step { events: vec![], progress: vec![finished(0, 150)] },
    ]
}

#[test]
fn side_policy_sends_a_late_event_to_the_late_output_with_the_watermark_it_was_behind() {
    let out = run_on_1_and_3_workers(one_partition(0, LatePolicy::Side), &late_policy_steps());
    assert_eq!(ordered(&out), vec![(1, event("a", 100, (0, 0))), (2, event("b", 150, (0, 2)))]);
    assert_eq!(late(&out), vec![(1, LateEvent { event: event("late", 50, (0, 1)), watermark_ms: 100 })]);
    assert_eq!(out.late_counted, 1);
}

#[test]
fn drop_policy_sends_a_late_event_nowhere_and_counts_it() {
    let out = run_on_1_and_3_workers(one_partition(0, LatePolicy::Drop), &late_policy_steps());
    assert_eq!(ordered(&out), vec![(1, event("a", 100, (0, 0))), (2, event("b", 150, (0, 2)))]);
    assert_eq!(late(&out), vec![]);
    assert_eq!(out.late_counted, 1);
}

#[test]
fn flag_policy_passes_a_late_event_on_flagged_after_the_epochs_released_events() {
    // `late` (50) comes out in its own epoch 1, with late = true, after `a` (100) released in
    // that epoch: flagged events do not wait for the watermark, so they break time order.
    let out = run_on_1_and_3_workers(one_partition(0, LatePolicy::Flag), &late_policy_steps());
    assert_eq!(ordered(&out), vec![(1, event("a", 100, (0, 0))), (1, flagged(event("late", 50, (0, 1)))), (2, event("b", 150, (0, 2)))]);
    assert_eq!(late(&out), vec![]);
    assert_eq!(out.late_counted, 1);
}

#[test]
fn the_slowest_unfinished_partition_holds_the_watermark_and_a_finished_one_no_longer_counts() {
    // Two partitions, lateness 5.
    // Epoch 0: p0 at 100, p1 at 40; progress 100 and 40 → watermark min(95, 35) = 35: nothing
    //   released (40 is not < 35).
    // Epoch 1: p0 at 50 (not late: 50 ≥ 35); p1 reports 60 → watermark min(95, 55) = 55:
    //   40 and 50 released, in time order.
    // Epoch 2: p1 finishes (at 60) → only p0 counts: watermark 95; 100 still waits.
    // Epoch 3: p0 at 96 (≥ 95, on time) and then p0 finishes → i64::MAX: 96 and 100 released.
    let steps = [
        Step { events: vec![event("p0-100", 100, (0, 0)), event("p1-40", 40, (1, 0))], progress: vec![progress(0, 100), progress(1, 40)] },
        Step { events: vec![event("p0-50", 50, (0, 1))], progress: vec![progress(0, 100), progress(1, 60)] },
        Step { events: vec![], progress: vec![progress(0, 100), finished(1, 60)] },
        Step { events: vec![event("p0-96", 96, (0, 2))], progress: vec![finished(0, 100), finished(1, 60)] },
    ];
    let config = OrderConfig { lateness_ms: 5, late: LatePolicy::Side, partitions: 2 };
    let out = run_on_1_and_3_workers(config, &steps);
    assert_eq!(
        ordered(&out),
        vec![(1, event("p1-40", 40, (1, 0))), (1, event("p0-50", 50, (0, 1))), (3, event("p0-96", 96, (0, 2))), (3, event("p0-100", 100, (0, 0)))]
    );
    assert_eq!((late(&out), out.late_counted), (vec![], 0));
}

/// The plain reference: per epoch, events in origin order; late when below the watermark
/// before the epoch; the rest buffered and released below the new watermark sorted by (time,
/// id, origin), then the flagged ones. Per entity, in output order.
fn reference(config: OrderConfig, steps: &[Step]) -> Outputs {
    let mut out = Outputs { ordered: BTreeMap::new(), late: BTreeMap::new(), late_counted: 0, watermark_ms: None };
    let mut reported: BTreeMap<u32, PartitionProgress> = BTreeMap::new();
    let mut watermark = i64::MIN;
    let mut buffer: Vec<Event> = Vec::new();
    for (epoch, step) in steps.iter().enumerate() {
        let epoch = epoch as Epoch;
        let mut events = step.events.clone();
        events.sort_by_key(|e| e.origin);
        let mut flag = Vec::new();
        for e in events {
            if e.time_ms >= watermark {
                buffer.push(e);
                continue;
            }
            out.late_counted += 1;
            match config.late {
                LatePolicy::Side => out.late.entry(e.entity.clone()).or_default().push((epoch, LateEvent { event: e, watermark_ms: watermark })),
                LatePolicy::Drop => {}
                LatePolicy::Flag => flag.push(flagged(e)),
            }
        }
        for p in &step.progress {
            reported.insert(p.partition, *p);
        }
        // min over unfinished partitions of (largest time − lateness); none unfinished: i64::MAX.
        let slowest = (0..config.partitions as u32)
            .filter(|p| !reported.get(p).is_some_and(|r| r.finished))
            .map(|p| reported.get(&p).and_then(|r| r.max_event_time_ms).map_or(i64::MIN, |t| t - config.lateness_ms))
            .min();
        watermark = watermark.max(slowest.unwrap_or(i64::MAX));
        out.watermark_ms = Some(watermark);
        let (mut released, kept): (Vec<Event>, Vec<Event>) = buffer.drain(..).partition(|e| e.time_ms < watermark);
        buffer = kept;
        released.sort_by(|a, b| (a.time_ms, &a.id, a.origin).cmp(&(b.time_ms, &b.id, b.origin)));
        for e in released.into_iter().chain(flag) {
            out.ordered.entry(e.entity.clone()).or_default().push((epoch, e));
        }
    }
    for late in out.late.values_mut() {
        late.sort_by_key(|(epoch, l)| (*epoch, l.event.origin));
    }
    out
}

#[test]
fn seeded_random_input_gives_the_plain_references_outputs_per_entity_on_1_and_3_workers() {
    // 8 epochs of 50 events over 6 entities and 3 partitions, times moving 100 ms per epoch
    // with up to 120 ms of disorder, lateness 60 (so some events are late), repeated times
    // (multiples of 10) for ties; all partitions finish in a last epoch, which releases the
    // rest. Each late policy.
    for policy in [LatePolicy::Side, LatePolicy::Drop, LatePolicy::Flag] {
        let config = OrderConfig { lateness_ms: 60, late: policy, partitions: 3 };
        for seed in [11, 12] {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut offsets = [0u64; 3];
            let mut max_time: [Option<i64>; 3] = [None; 3];
            let mut steps = Vec::new();
            for epoch in 0..8i64 {
                let mut step = Step::default();
                for _ in 0..50 {
                    let partition = rng.gen_range(0..3u32);
                    let time = 1_000 + epoch * 100 + rng.gen_range(-12..10) * 10;
                    let entity = format!("entity-{}", rng.gen_range(0..6));
                    let id = format!("e{}", rng.gen_range(0..40));
                    step.events.push(event_of(&entity, &id, time, (partition, offsets[partition as usize])));
                    offsets[partition as usize] += 1;
                    max_time[partition as usize] = max_time[partition as usize].max(Some(time));
                }
                step.progress =
                    (0..3).map(|p| PartitionProgress { partition: p, max_event_time_ms: max_time[p as usize], finished: false, idle: false }).collect();
                steps.push(step);
            }
            steps.push(Step {
                events: vec![],
                progress: (0..3).map(|p| PartitionProgress { partition: p, max_event_time_ms: max_time[p as usize], finished: true, idle: false }).collect(),
            });
            let want = reference(config, &steps);
            let released: usize = want.ordered.values().map(Vec::len).sum();
            assert!(want.late_counted > 20 && released > 250, "{policy:?} seed {seed}: {} late, {released} out", want.late_counted);
            assert_eq!(run_on_1_and_3_workers(config, &steps), want, "{policy:?} seed {seed}");
        }
    }
}
