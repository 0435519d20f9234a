//! Record `i` of partition `p` is a pure function of `(seed, p, i)`: a restart regenerates
//! exactly the records after its committed position, and a repeat of record `j` is rebuilt
//! from `j` rather than remembered.

use std::time::Instant;

use crate::generator::GeneratorConfig;
use crate::source::{Fetched, PartitionReader, ReadStatus};
use crate::ConnectorError;

/// What a generated record is meant to be (tests use it to know the expected outcome).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// An ordinary event.
    Normal,
    /// Moved back in event time by up to `disorder_ms`.
    OutOfOrder,
    /// Moved back by `late_by_ms` or more.
    Late,
    /// An exact repeat of an earlier record (of index `j`).
    Duplicate(u64),
    /// The id of an earlier record `j`, with a different amount.
    Conflict(u64),
    /// Not decodable.
    Malformed,
}

const KINDS: [(&str, u64); 5] = [("charge.succeeded", 70), ("charge.failed", 10), ("refund.created", 10), ("payout.paid", 5), ("dispute.created", 5)];

/// SplitMix64: tiny, fast, and good enough for synthetic data.
struct Rng(u64);
impl Rng {
    fn new(seed: u64, partition: u32, index: u64) -> Self {
        let mut r = Rng(seed ^ (u64::from(partition) << 48) ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        r.next();
        r
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A reader of one generator partition.
#[derive(Debug)]
pub struct GeneratorReader {
    name: String,
    config: GeneratorConfig,
    partition: u32,
    next: u64,
    end: Option<u64>,
    started: Option<(Instant, u64)>,
    rate_per_partition: f64,
}

impl GeneratorReader {
    /// The reader of partition `partition` (0-based within this generator).
    pub fn new(config: &GeneratorConfig, partition: u32) -> Self {
        let p = u64::from(partition);
        let n = u64::from(config.partitions);
        let end = (config.events > 0).then(|| config.events / n + u64::from(p < config.events % n));
        GeneratorReader {
            name: format!("generator:{}:{partition}", config.name),
            config: config.clone(),
            partition,
            next: 0,
            end,
            started: None,
            rate_per_partition: config.rate as f64 / n as f64,
        }
    }

    /// What record `index` is.
    pub fn kind_of(&self, index: u64) -> RecordKind {
        let c = &self.config;
        let mut rng = Rng::new(c.seed, self.partition, index);
        let roll = rng.unit() * 100.0;
        let back = 1 + rng.below(index.clamp(1, 100));
        let mut edge = c.duplicate_pct;
        if roll < edge && index > 0 {
            return RecordKind::Duplicate(index - back.min(index));
        }
        edge += c.conflict_pct;
        if roll < edge && index > 0 {
            return RecordKind::Conflict(index - back.min(index));
        }
        edge += c.out_of_order_pct;
        if roll < edge {
            return RecordKind::OutOfOrder;
        }
        edge += c.late_pct;
        if roll < edge {
            return RecordKind::Late;
        }
        edge += c.malformed_pct;
        if roll < edge {
            return RecordKind::Malformed;
        }
        RecordKind::Normal
    }

    fn base_time(&self, index: u64) -> i64 {
        self.config.start_ms + ((index * self.config.step_us) / 1000) as i64
    }

    /// Writes the plain event of index `index` (its own time, kind and amount) with `time`.
    fn write_event(&self, index: u64, time_ms: i64, amount_factor: f64, out: &mut Vec<u8>) {
        let c = &self.config;
        let mut rng = Rng::new(c.seed ^ 0xA5A5, self.partition, index);
        let customer = rng.below(c.customers);
        let merchant = rng.below(c.merchants);
        let pick = rng.below(100);
        let mut acc = 0;
        let kind = KINDS.iter().find(|(_, w)| {
            acc += w;
            pick < acc
        });
        let kind = kind.map_or("charge.succeeded", |(k, _)| k);
        // Log-normal-ish amounts: exp of a normal (Box–Muller), in cents.
        let (u1, u2) = (rng.unit().max(1e-12), rng.unit());
        let normal = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        let shift = if c.shift_after.is_some_and(|s| index >= s) { c.shift_factor } else { 1.0 };
        let cents = ((3.5 + 1.0 * normal).exp() * 100.0 * shift * amount_factor).round() as i64;
        let currency = ["EUR", "USD", "GBP"][rng.below(3) as usize];
        // Written piece by piece (itoa, not `write!`): the generator is the benchmark's input, and
        // formatting machinery was a tenth of its cost. The bytes are those of
        // `{"id":"evt_{p}_{i}","type":..,"amount":{cents / 100}.{cents % 100:02},..}`.
        let mut n = itoa::Buffer::new();
        out.extend_from_slice(b"{\"id\":\"evt_");
        out.extend_from_slice(n.format(self.partition).as_bytes());
        out.push(b'_');
        out.extend_from_slice(n.format(index).as_bytes());
        out.extend_from_slice(b"\",\"type\":\"");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\",\"created_ms\":");
        out.extend_from_slice(n.format(time_ms).as_bytes());
        out.extend_from_slice(b",\"customer\":\"cus_");
        out.extend_from_slice(n.format(customer).as_bytes());
        out.extend_from_slice(b"\",\"merchant\":\"mer_");
        out.extend_from_slice(n.format(merchant).as_bytes());
        out.extend_from_slice(b"\",\"amount\":");
        write_amount(cents, out);
        out.extend_from_slice(b",\"currency\":\"");
        out.extend_from_slice(currency.as_bytes());
        out.extend_from_slice(b"\"}");
    }

    /// The bytes of record `index`.
    pub fn record(&self, index: u64) -> Vec<u8> {
        let c = &self.config;
        let mut out = Vec::with_capacity(200);
        let mut rng = Rng::new(c.seed ^ 0x5A5A, self.partition, index);
        match self.kind_of(index) {
            RecordKind::Normal => self.write_event(index, self.base_time(index), 1.0, &mut out),
            RecordKind::OutOfOrder => {
                let back = 1 + rng.below(c.disorder_ms.max(1)) as i64;
                self.write_event(index, self.base_time(index) - back, 1.0, &mut out);
            }
            RecordKind::Late => {
                let back = (c.late_by_ms + rng.below(c.late_by_ms.max(1))) as i64;
                self.write_event(index, self.base_time(index) - back, 1.0, &mut out);
            }
            RecordKind::Duplicate(j) => return self.record_plain(j),
            RecordKind::Conflict(j) => {
                let time = self.time_of_plain(j);
                self.write_event(j, time, 1.5, &mut out);
            }
            RecordKind::Malformed => {
                self.write_event(index, self.base_time(index), 1.0, &mut out);
                match rng.below(4) {
                    0 => out.truncate(out.len() / 2),
                    1 => {
                        let text = String::from_utf8(out.clone()).expect("generated JSON is UTF-8");
                        out = text.replacen("\"customer\"", "\"customer_id\"", 1).into_bytes();
                    }
                    2 => {
                        let text = String::from_utf8(out.clone()).expect("generated JSON is UTF-8");
                        out = text.replacen("\"amount\":", "\"amount\":\"n/a\",\"x\":", 1).into_bytes();
                    }
                    _ => {
                        let at = out.len() / 3;
                        out[at] = 0xFF;
                    }
                }
            }
        }
        out
    }

    /// What record `j` emitted if it was an event (a repeat of a repeat is a repeat of the
    /// original; a repeat of a malformed record is the event that record would have been).
    fn record_plain(&self, j: u64) -> Vec<u8> {
        match self.kind_of(j) {
            RecordKind::Normal | RecordKind::OutOfOrder | RecordKind::Late => self.record(j),
            RecordKind::Duplicate(k) | RecordKind::Conflict(k) => self.record_plain(k),
            RecordKind::Malformed => {
                let mut out = Vec::new();
                self.write_event(j, self.base_time(j), 1.0, &mut out);
                out
            }
        }
    }

    fn time_of_plain(&self, j: u64) -> i64 {
        let bytes = self.record_plain(j);
        let text = std::str::from_utf8(&bytes).unwrap_or("");
        text.split("\"created_ms\":").nth(1).and_then(|s| s.split(',').next()).and_then(|s| s.parse().ok()).unwrap_or_else(|| self.base_time(j))
    }
}

impl PartitionReader for GeneratorReader {
    /// Record `j` is a function of `j`; unless paced by a rate.
    fn replayable(&self) -> bool {
        self.rate_per_partition <= 0.0
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn seek(&mut self, position: u64) -> Result<(), ConnectorError> {
        self.next = position;
        self.started = None;
        Ok(())
    }

    fn read(&mut self, records_max: usize, out: &mut Vec<Fetched>) -> Result<ReadStatus, ConnectorError> {
        let mut allowed = records_max as u64;
        if self.rate_per_partition > 0.0 {
            let (start, from) = *self.started.get_or_insert((Instant::now(), self.next));
            let due = from + (start.elapsed().as_secs_f64() * self.rate_per_partition) as u64;
            allowed = allowed.min(due.saturating_sub(self.next));
        }
        if let Some(end) = self.end {
            allowed = allowed.min(end.saturating_sub(self.next));
        }
        for _ in 0..allowed {
            out.push(Fetched::plain(self.next, self.record(self.next)));
            self.next += 1;
        }
        if self.end.is_some_and(|end| self.next >= end) {
            return Ok(ReadStatus::End);
        }
        Ok(if allowed < records_max as u64 { ReadStatus::Waiting } else { ReadStatus::More })
    }

    fn position(&self) -> u64 {
        self.next
    }
}

/// Writes an amount of `cents` as units, a point and two digits (`{cents / 100}.{cents % 100:02}`).
fn write_amount(cents: i64, out: &mut Vec<u8>) {
    let mut n = itoa::Buffer::new();
    out.extend_from_slice(n.format(cents / 100).as_bytes());
    out.push(b'.');
    let hundredths = cents % 100;
    if (0..10).contains(&hundredths) {
        out.push(b'0');
    }
    out.extend_from_slice(n.format(hundredths).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> GeneratorConfig {
        let mut c = GeneratorConfig::named("g");
        c.duplicate_pct = 10.0;
        c.conflict_pct = 5.0;
        c.malformed_pct = 5.0;
        c.late_pct = 2.0;
        c.out_of_order_pct = 10.0;
        c.events = 1000;
        c.partitions = 2;
        c
    }

    #[test]
    fn records_are_a_function_of_their_index() {
        let mut a = GeneratorReader::new(&config(), 1);
        let mut first = Vec::new();
        assert_eq!(a.read(1000, &mut first).unwrap(), ReadStatus::End);
        assert_eq!(first.len(), 500);
        let mut b = GeneratorReader::new(&config(), 1);
        b.seek(250).unwrap();
        let mut rest = Vec::new();
        b.read(1000, &mut rest).unwrap();
        assert_eq!(rest.as_slice(), &first[250..]);
    }

    #[test]
    fn an_event_is_written_as_its_format_says() {
        let r = GeneratorReader::new(&config(), 1);
        let mut out = Vec::new();
        r.write_event(42, 1_700_000_000_123, 1.0, &mut out);
        let text = String::from_utf8(out).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["id"], "evt_1_42");
        assert_eq!(value["created_ms"], 1_700_000_000_123_i64);
        let amount = text.split("\"amount\":").nth(1).unwrap().split(',').next().unwrap();
        let (units, hundredths) = amount.split_once('.').unwrap();
        assert_eq!(hundredths.len(), 2, "{amount}");
        assert!(units.parse::<u64>().is_ok() && hundredths.parse::<u64>().is_ok(), "{amount}");
        // Every amount below a unit and every odd hundredth keeps its two digits.
        for (cents, text) in [(5_i64, "0.05"), (1234, "12.34"), (100, "1.00"), (99, "0.99"), (10, "0.10"), (0, "0.00")] {
            let mut out = Vec::new();
            write_amount(cents, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), text);
        }
    }

    #[test]
    fn repeats_copy_or_alter_an_earlier_event() {
        let r = GeneratorReader::new(&config(), 0);
        let dup = (1..500).find_map(|i| match r.kind_of(i) {
            RecordKind::Duplicate(j) => Some((i, j)),
            _ => None,
        });
        let (i, j) = dup.expect("10% duplicates in 500 records");
        assert_eq!(r.record(i), r.record_plain(j));
        let conflict = (1..500).find_map(|i| match r.kind_of(i) {
            RecordKind::Conflict(j) => Some((i, j)),
            _ => None,
        });
        let (i, j) = conflict.expect("5% conflicts in 500 records");
        let (a, b) = (String::from_utf8(r.record(i)).unwrap(), String::from_utf8(r.record_plain(j)).unwrap());
        assert_ne!(a, b);
        let id = |s: &str| s.split("\"id\":\"").nth(1).unwrap().split('"').next().unwrap().to_string();
        assert_eq!(id(&a), id(&b));
    }

    #[test]
    fn mix_of_kinds_follows_the_percentages() {
        let r = GeneratorReader::new(&config(), 0);
        let n = 20_000;
        let malformed = (0..n).filter(|i| r.kind_of(*i) == RecordKind::Malformed).count();
        // 5% of 20 000 = 1000; a binomial's sd here is about 31.
        assert!((850..1150).contains(&malformed), "{malformed}");
    }
}
