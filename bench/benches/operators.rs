//! Criterion benches of each operator alone: decode, dedup, order, features.
//!
//! Each iteration pushes one batch of generated events (100k, in epochs of 10k) through one
//! operator in a single-worker timely dataflow with a fresh RocksDB state directory (its open
//! and commits are part of the cost, as in a real run). Run: `cargo bench -p sluice-bench`.

// criterion_group! and criterion_main! generate undocumented functions.
#![allow(missing_docs)]

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sluice::demo::{payment_schema, standard_features};
use sluice_connectors::generator::{GeneratorConfig, GeneratorReader};
use sluice_operators::{
    Decoder, Dedup, DedupConfig, Epoch, Event, FeatureSet, Features, LatePolicy, Metrics, Order, OrderConfig, Origin, PartitionProgress, RawRecord,
};
use sluice_state::{StateOptions, StateStore};
use timely::dataflow::operators::vec::Input;
use timely::dataflow::operators::Probe;
use timely::dataflow::{InputHandleVec, ProbeHandle};

const EVENTS: u64 = 100_000;
const EPOCH: usize = 10_000;

fn records() -> Vec<RawRecord> {
    let mut g = GeneratorConfig::named("bench");
    g.customers = 10_000;
    g.duplicate_pct = 1.0;
    g.out_of_order_pct = 5.0;
    g.disorder_ms = 1_000;
    let r = GeneratorReader::new(&g, 0);
    (0..EVENTS).map(|i| RawRecord::new(Origin { partition: 0, offset: i }, r.record(i))).collect()
}

fn events(records: &[RawRecord]) -> Vec<Event> {
    let d = Decoder::new(&payment_schema()).unwrap();
    records.iter().filter_map(|r| d.decode(r).ok()).collect()
}

#[derive(Clone, Copy)]
enum Op {
    Dedup,
    Order,
    Features,
}

fn run(op: Op, events: Vec<Event>) {
    timely::execute_directly(move |worker| {
        let dir = tempfile::tempdir().unwrap();
        let mut tables = sluice_operators::decode::tables();
        tables.extend(sluice_operators::dedup::tables());
        tables.extend(sluice_operators::order::tables());
        tables.extend(sluice_operators::features::tables());
        let store = StateStore::open(dir.path(), &tables, 1, &StateOptions::default()).unwrap();
        let state = Rc::new(RefCell::new(store.worker(0)));
        let metrics = Arc::new(Metrics::default());
        let mut input = InputHandleVec::<Epoch, Event>::new();
        let mut progress_input = InputHandleVec::<Epoch, PartitionProgress>::new();
        let probe = ProbeHandle::new();
        worker.dataflow::<Epoch, _, _>(|scope| {
            let events = scope.input_from(&mut input);
            let progress = scope.input_from(&mut progress_input);
            match op {
                Op::Dedup => {
                    let config = DedupConfig { ttl_ms: 86_400_000, lateness_ms: 5_000, partitions: 1 };
                    let (firsts, _) = events.dedup(progress, config, Rc::clone(&state), Arc::clone(&metrics)).unwrap();
                    firsts.probe_with(&probe);
                }
                Op::Order => {
                    let config = OrderConfig { lateness_ms: 5_000, late: LatePolicy::Side, partitions: 1 };
                    let (ordered, _) = events.order(progress, config, Rc::clone(&state), Arc::clone(&metrics)).unwrap();
                    ordered.probe_with(&probe);
                }
                Op::Features => {
                    let set = FeatureSet::new(&standard_features(), &payment_schema().number_names()).unwrap();
                    events.features(set, 200_000, Rc::clone(&state), Arc::clone(&metrics)).unwrap().probe_with(&probe);
                }
            }
        });
        let mut max_time = None;
        for (epoch, chunk) in events.chunks(EPOCH).enumerate() {
            for e in chunk {
                max_time = Some(max_time.map_or(e.time_ms, |m: i64| m.max(e.time_ms)));
                input.send(e.clone());
            }
            progress_input.send(PartitionProgress { partition: 0, max_event_time_ms: max_time, finished: false, idle: false });
            let next = epoch as Epoch + 1;
            input.advance_to(next);
            progress_input.advance_to(next);
            while probe.less_than(&next) {
                worker.step();
            }
            state.borrow_mut().hand_in(Some(next)).unwrap();
        }
    });
}

fn benches(c: &mut Criterion) {
    let records = records();
    let mut group = c.benchmark_group("operators");
    group.throughput(Throughput::Elements(EVENTS));
    group.sample_size(10);
    let decoder = Decoder::new(&payment_schema()).unwrap();
    group.bench_function("decode", |b| b.iter(|| records.iter().filter(|r| decoder.decode(r).is_ok()).count()));
    let events = events(&records);
    let mut sorted = events.clone();
    sorted.sort_by_key(|e| e.time_ms);
    for (name, op, input) in [("dedup", Op::Dedup, &events), ("order", Op::Order, &events), ("features", Op::Features, &sorted)] {
        group.bench_function(name, |b| b.iter_batched(|| input.clone(), |events| run(op, events), BatchSize::LargeInput));
    }
    group.finish();
}

criterion_group!(operators, benches);
criterion_main!(operators);
