//! Configuration of the generator.

use serde::Deserialize;

use crate::ConnectorError;

/// `type = "generator"` under `[[sources]]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorConfig {
    /// Source name.
    pub name: String,
    /// Number of partitions (independent streams).
    #[serde(default = "one")]
    pub partitions: u32,
    /// Records in all, over all partitions; 0 = unbounded.
    #[serde(default)]
    pub events: u64,
    /// Records per second over all partitions, wall clock; 0 = as fast as possible.
    #[serde(default)]
    pub rate: u64,
    /// RNG seed.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Event time of the first record (ms since the Unix epoch).
    #[serde(default = "default_start_ms")]
    pub start_ms: i64,
    /// Event time between consecutive records of one partition, in microseconds.
    #[serde(default = "default_step_us")]
    pub step_us: u64,
    /// Number of distinct customers (the entities).
    #[serde(default = "default_customers")]
    pub customers: u64,
    /// Number of distinct merchants.
    #[serde(default = "default_merchants")]
    pub merchants: u64,
    /// Percent of records that are exact repeats of an earlier record.
    #[serde(default)]
    pub duplicate_pct: f64,
    /// Percent of records that repeat an earlier id with a different amount.
    #[serde(default)]
    pub conflict_pct: f64,
    /// Percent of records whose event time is moved back by up to `disorder_ms`.
    #[serde(default)]
    pub out_of_order_pct: f64,
    /// Up to how far out-of-order records move back (ms); keep it below the lateness.
    #[serde(default = "default_disorder_ms")]
    pub disorder_ms: u64,
    /// Percent of records whose event time is `late_by_ms` or more in the past.
    #[serde(default)]
    pub late_pct: f64,
    /// How far late records are moved back (ms); keep it above the lateness.
    #[serde(default = "default_late_by_ms")]
    pub late_by_ms: u64,
    /// Percent of records that are malformed (bad JSON, missing fields, wrong types, bad UTF-8).
    #[serde(default)]
    pub malformed_pct: f64,
    /// From this record index of each partition on, amounts are drawn from a shifted
    /// distribution (×`shift_factor`): drift for monitors to find. Unset: no shift.
    #[serde(default)]
    pub shift_after: Option<u64>,
    /// Multiplier of amounts after `shift_after`.
    #[serde(default = "default_shift_factor")]
    pub shift_factor: f64,
}

fn one() -> u32 {
    1
}
fn default_seed() -> u64 {
    42
}
fn default_start_ms() -> i64 {
    1_767_225_600_000 // 2026-01-01T00:00:00Z
}
fn default_step_us() -> u64 {
    1_000
}
fn default_customers() -> u64 {
    10_000
}
fn default_merchants() -> u64 {
    500
}
fn default_disorder_ms() -> u64 {
    2_000
}
fn default_late_by_ms() -> u64 {
    60_000
}
fn default_shift_factor() -> f64 {
    3.0
}

impl GeneratorConfig {
    /// A generator with every default and this name.
    pub fn named(name: &str) -> Self {
        toml_like_defaults(name)
    }

    /// Checks the config; `key` is where it sits.
    ///
    /// # Errors
    /// Zero partitions or customers, percentages out of range or summing past 100.
    pub fn validate(&self, key: &str) -> Result<(), ConnectorError> {
        let err = |k: &str, problem: String| ConnectorError::Config { key: format!("{key}.{k}"), problem };
        if self.partitions == 0 {
            return Err(err("partitions", "must be at least 1".into()));
        }
        if self.customers == 0 || self.merchants == 0 {
            return Err(err("customers", "customers and merchants must be at least 1".into()));
        }
        let pcts = [
            ("duplicate_pct", self.duplicate_pct),
            ("conflict_pct", self.conflict_pct),
            ("out_of_order_pct", self.out_of_order_pct),
            ("late_pct", self.late_pct),
            ("malformed_pct", self.malformed_pct),
        ];
        for (k, v) in pcts {
            if !(0.0..=100.0).contains(&v) {
                return Err(err(k, format!("{v} is not a percentage between 0 and 100")));
            }
        }
        let total: f64 = pcts.iter().map(|(_, v)| v).sum();
        if total > 100.0 {
            return Err(err("duplicate_pct", format!("the percentages add up to {total}, more than 100")));
        }
        if self.step_us == 0 {
            return Err(err("step_us", "must be at least 1".into()));
        }
        Ok(())
    }
}

fn toml_like_defaults(name: &str) -> GeneratorConfig {
    GeneratorConfig {
        name: name.to_string(),
        partitions: one(),
        events: 0,
        rate: 0,
        seed: default_seed(),
        start_ms: default_start_ms(),
        step_us: default_step_us(),
        customers: default_customers(),
        merchants: default_merchants(),
        duplicate_pct: 0.0,
        conflict_pct: 0.0,
        out_of_order_pct: 0.0,
        disorder_ms: default_disorder_ms(),
        late_pct: 0.0,
        late_by_ms: default_late_by_ms(),
        malformed_pct: 0.0,
        shift_after: None,
        shift_factor: default_shift_factor(),
    }
}
