//! A plain reference implementation of sluice's semantics, written from the operators' docs:
//! one thread, no timely, no RocksDB, brute-force features.
//!
//! Input: per partition, the records it delivers, in order. Epoch `e` of a partition holds its
//! records `[e·N, (e+1)·N)`; the partition is finished in epoch `len / N`.

use std::collections::{BTreeMap, HashMap};

use sluice_operators::{Decoder, Event, Origin, RawRecord};

/// A feature of the reference: op and window, over the single numeric field 0.
#[derive(Debug, Clone, Copy)]
pub enum RefFeature {
    /// Count of events in a tumbling window (ms).
    CountTumbling(i64),
    /// Sum over a sliding window (size, slide).
    SumSliding(i64, i64),
    /// Max over a sliding window (size, slide).
    MaxSliding(i64, i64),
    /// Mean over everything.
    MeanAll,
    /// Min over everything.
    MinAll,
    /// Last value.
    Last,
}

/// What the reference produces.
#[derive(Debug, Default)]
pub struct RefOutput {
    /// (id, entity, time, feature values) in output order (epoch, then time, id, origin).
    pub features: Vec<(String, String, i64, Vec<Option<f64>>)>,
    /// (origin, watermark) of late events, in output order.
    pub late: Vec<(Origin, i64)>,
    /// (origin, first time) of conflicts, in output order.
    pub conflicts: Vec<(Origin, i64)>,
    /// Dead letter origins, in output order.
    pub dead_letters: Vec<Origin>,
    /// Exact duplicates dropped.
    pub duplicates: u64,
}

/// Settings of a reference run.
#[derive(Debug, Clone)]
pub struct RefConfig {
    /// Records per partition per epoch.
    pub epoch_records: usize,
    /// Allowed lateness (ms).
    pub lateness_ms: i64,
    /// Dedup TTL (ms).
    pub ttl_ms: i64,
    /// The features.
    pub features: Vec<RefFeature>,
}

fn start_of(window: (i64, Option<i64>), t: i64) -> i64 {
    match window {
        (size, None) => t.div_euclid(size) * size,
        (size, Some(slide)) => t.div_euclid(slide) * slide + slide - size,
    }
}

fn values(history: &[(i64, Option<f64>)], t: i64, features: &[RefFeature]) -> Vec<Option<f64>> {
    features
        .iter()
        .map(|f| {
            let from = match f {
                RefFeature::CountTumbling(w) => start_of((*w, None), t),
                RefFeature::SumSliding(s, l) | RefFeature::MaxSliding(s, l) => start_of((*s, Some(*l)), t),
                _ => i64::MIN,
            };
            let inside = history.iter().filter(|(time, _)| *time >= from);
            let nums: Vec<f64> = inside.clone().filter_map(|(_, v)| *v).collect();
            match f {
                RefFeature::CountTumbling(_) => Some(inside.count() as f64),
                RefFeature::SumSliding(..) => Some(nums.iter().sum()),
                RefFeature::MaxSliding(..) => nums.iter().copied().reduce(f64::max),
                RefFeature::MeanAll => (!nums.is_empty()).then(|| nums.iter().sum::<f64>() / nums.len() as f64),
                RefFeature::MinAll => nums.iter().copied().reduce(f64::min),
                RefFeature::Last => nums.last().copied(),
            }
        })
        .collect()
}

/// Runs the reference over `partitions` (records of each partition, in order).
pub fn run(partitions: &[Vec<Vec<u8>>], decoder: &Decoder, config: &RefConfig) -> RefOutput {
    let n = config.epoch_records;
    let epochs = partitions.iter().map(|p| p.len() / n).max().unwrap_or(0) + 1;
    let mut out = RefOutput::default();
    let mut progress: BTreeMap<usize, (Option<i64>, bool)> = BTreeMap::new();
    let mut seen: HashMap<String, (i64, u64, usize)> = HashMap::new();
    let mut buffer: Vec<Event> = Vec::new();
    let mut history: HashMap<String, Vec<(i64, Option<f64>)>> = HashMap::new();
    let mut watermark = i64::MIN;
    for e in 0..epochs {
        let mut events = Vec::new();
        for (p, records) in partitions.iter().enumerate() {
            let end = records.len() / n;
            if e > end {
                continue;
            }
            let entry = progress.entry(p).or_insert((None, false));
            for (i, bytes) in records.iter().enumerate().skip(e * n).take(n) {
                let origin = Origin { partition: p as u32, offset: i as u64 };
                match decoder.decode(&RawRecord::new(origin, bytes.clone())) {
                    Ok(event) => {
                        entry.0 = Some(entry.0.map_or(event.time_ms, |m: i64| m.max(event.time_ms)));
                        events.push(event);
                    }
                    Err(_) => out.dead_letters.push(origin),
                }
            }
            entry.1 = e == end;
        }
        // dedup
        let cutoff = watermark.saturating_sub(config.ttl_ms);
        events.sort_by_key(|ev| ev.origin);
        let mut firsts = Vec::new();
        for event in events {
            let prior = seen.get(event.id.as_str()).copied().filter(|(t, _, epoch)| *epoch == e || *t >= cutoff);
            match prior {
                None => {
                    seen.insert(event.id.to_string(), (event.time_ms, event.payload_hash, e));
                    firsts.push(event);
                }
                Some((_, hash, _)) if hash == event.payload_hash => out.duplicates += 1,
                Some((first, _, _)) => out.conflicts.push((event.origin, first)),
            }
        }
        // order
        for event in firsts {
            if event.time_ms < watermark {
                out.late.push((event.origin, watermark));
            } else {
                buffer.push(event);
            }
        }
        let mut new = i64::MAX;
        for p in 0..partitions.len() {
            match progress.get(&p) {
                Some((_, true)) => {}
                Some((Some(max), false)) => new = new.min(max.saturating_sub(config.lateness_ms)),
                _ => new = i64::MIN,
            }
        }
        watermark = watermark.max(new);
        buffer.sort_by(|a, b| (a.time_ms, &a.id, a.origin).cmp(&(b.time_ms, &b.id, b.origin)));
        let keep = buffer.iter().position(|ev| ev.time_ms >= watermark).unwrap_or(buffer.len());
        for event in buffer.drain(..keep) {
            let h = history.entry(event.entity.to_string()).or_default();
            h.push((event.time_ms, event.numbers.first().copied().flatten()));
            let v = values(h, event.time_ms, &config.features);
            out.features.push((event.id.to_string(), event.entity.to_string(), event.time_ms, v));
        }
    }
    assert!(buffer.is_empty(), "reference: everything is released when all partitions finish");
    out
}
