//! Criterion: JSON parsers on the demo's payment events, for issue 19's decode question
//! (serde_json against sonic-rs and simd-json).
//!
//! Five ways over the same 100k generated records: sluice's decoder (the schema's visitor over
//! sonic-rs, as `decode` runs, and over serde_json alone: the fields picked, an `Event` built,
//! the payload hashed), and each parser
//! deserializing the same fields into one borrowed struct (parsing alone; simd-json needs a
//! mutable copy of each record, which is part of its cost). Run:
//! `cargo bench -p sluice-bench --bench parsers`.

// criterion_group! and criterion_main! generate undocumented functions.
#![allow(missing_docs)]

use std::borrow::Cow;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde::Deserialize;
use sluice::demo::payment_schema;
use sluice_connectors::generator::{GeneratorConfig, GeneratorReader};
use sluice_operators::{Decoder, Origin, RawRecord};

const EVENTS: u64 = 100_000;

/// The fields the demo's schema picks.
#[derive(Deserialize)]
struct Payment<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    created_ms: i64,
    #[serde(borrow)]
    customer: Cow<'a, str>,
    #[serde(borrow)]
    merchant: Cow<'a, str>,
    amount: f64,
    #[serde(borrow)]
    currency: Cow<'a, str>,
}

impl Payment<'_> {
    /// Something of every field, so that no parse is optimised away.
    fn weight(&self) -> usize {
        self.id.len()
            + self.kind.len()
            + self.customer.len()
            + self.merchant.len()
            + self.currency.len()
            + (self.created_ms & 1) as usize
            + self.amount as usize
    }
}

fn records() -> Vec<RawRecord> {
    let g = GeneratorConfig::named("bench");
    let r = GeneratorReader::new(&g, 0);
    (0..EVENTS).map(|i| RawRecord::new(Origin { partition: 0, offset: i }, r.record(i))).collect()
}

fn benches(c: &mut Criterion) {
    let records = records();
    let mut group = c.benchmark_group("parsers");
    group.throughput(Throughput::Elements(EVENTS));
    group.sample_size(20);
    let decoder = Decoder::new(&payment_schema()).unwrap();
    group.bench_function("sluice decode (sonic-rs visitor)", |b| b.iter(|| records.iter().filter(|r| decoder.decode(r).is_ok()).count()));
    group.bench_function("sluice decode (serde_json visitor)", |b| b.iter(|| records.iter().filter(|r| decoder.decode_with_serde_json(r).is_ok()).count()));
    group.bench_function("serde_json typed", |b| {
        b.iter(|| records.iter().filter_map(|r| serde_json::from_slice::<Payment<'_>>(&r.bytes).ok()).map(|p| p.weight()).sum::<usize>())
    });
    group.bench_function("sonic-rs typed", |b| {
        b.iter(|| records.iter().filter_map(|r| sonic_rs::from_slice::<Payment<'_>>(&r.bytes).ok()).map(|p| p.weight()).sum::<usize>())
    });
    group.bench_function("simd-json typed (with the copy it needs)", |b| {
        let mut buf = Vec::new();
        b.iter(|| {
            let mut total = 0;
            for r in &records {
                buf.clear();
                buf.extend_from_slice(&r.bytes);
                if let Ok(p) = simd_json::serde::from_slice::<Payment<'_>>(&mut buf) {
                    total += p.weight();
                }
            }
            total
        })
    });
    group.finish();
}

criterion_group!(parsers, benches);
criterion_main!(parsers);
