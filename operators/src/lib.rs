//! sluice-operators: the event model and every dataflow operator of sluice.
//!
//! Each operator is one file with one extension trait on timely's `Stream`. Operators keep
//! scratch state in their constructor closure and durable state only in the tables they
//! declare (a `tables()` function per stateful operator), reached through a
//! [`sluice_state::WorkerState`]. They do no I/O beyond that: sources and sinks are in
//! sluice-connectors.
//!
//! | file | what it owns |
//! |---|---|
//! | `event.rs` | [`Event`], [`RawRecord`], [`DeadLetter`] with its [`DeadLetterReason`], and the other records that flow |
//! | `decode.rs` | [`Decode`]: bytes to events by JSON pointers; dead letters; partition progress |
//! | `watermark.rs` | [`WatermarkTracker`]: the watermark every worker computes alike |
//! | `dedup.rs` | [`Dedup`]: drop repeats by idempotency key, report conflicts |
//! | `order.rs` | [`Order`]: event-time order behind the watermark, late events |
//! | `features.rs` | [`Features`]: windowed per-entity aggregates as of each event |
//! | `score.rs` | [`Score`]: ONNX models scored in batches through ONNX Runtime (`ort`) |
//! | `drift.rs` | [`Drift`]: reference vs sliding windows per feature, score and category; [`DriftStatus`] |
//! | `reconcile.rs` | [`reconcile::reconcile`]: provider events against ledger versions per payment, the changelog and its summary |
//! | `slo.rs` | [`slo::SloTracker`]: objectives, error budget, multi-window burn-rate alerts; [`slo::SloStatus`] |
//! | `stats.rs` | drift statistics (PSI, KS, JS, Wasserstein, chi-square) and the mergeable [`stats::Sketch`] |
//! | `epoch.rs` | [`epoch::EpochStash`] (what arrived per epoch, released below the frontier) and the other helpers for operators that work epoch by epoch |
//! | `metrics.rs` | [`Metrics`]: counters for the progress display |
//! | `error.rs` | [`OperatorError`] |
//!
//! The standard chain is `decode → dedup → order → features → score`; `dataflows` wires it.

pub mod decode;
pub mod dedup;
pub mod drift;
pub mod epoch;
mod error;
pub mod event;
pub mod features;
pub mod metrics;
pub mod order;
pub mod reconcile;
pub mod score;
pub mod slo;
pub mod stats;
pub mod watermark;

pub use decode::{Decode, Decoder, EventSchema, TimeFormat};
pub use dedup::{Dedup, DedupConfig};
pub use drift::{Drift, DriftConfig, DriftRecord, DriftSample, DriftStatus};
pub use error::OperatorError;
pub use event::{
    Conflict, DeadLetter, DeadLetterReason, Epoch, Event, FeatureRecord, LateEvent, Origin, PartitionMark, PartitionProgress, RawRecord, RecordMeta,
    RequiredField, SourceItem,
};
pub use features::{FeatureOp, FeatureSet, FeatureSpec, Features};
pub use metrics::{KafkaPartitionGauge, Metrics, Stage};
pub use order::{LatePolicy, Order, OrderConfig};
pub use score::{ModelConfig, ModelSource, Models, Score, ScoreRecord, Scored, Unscored};
pub use watermark::WatermarkTracker;

/// Parses a duration such as `250ms`, `5s`, `1m`, `1h`, `7d` (or a bare number of ms).
///
/// # Errors
/// A message saying what a duration looks like.
pub fn parse_duration_ms(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit = unit.trim();
    let n: i64 = number.parse().map_err(|_| format!("`{text}` is not a duration (like `250ms`, `5s`, `1m`, `1h`, `7d`)"))?;
    let scale = match unit {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (use ms, s, m, h or d)")),
    };
    let ms = n.checked_mul(scale).ok_or_else(|| format!("`{text}` is too long"))?;
    if ms <= 0 {
        return Err(format!("`{text}` must be positive"));
    }
    Ok(ms)
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_parse_with_units() {
        assert_eq!(super::parse_duration_ms("7d"), Ok(604_800_000));
        assert_eq!(super::parse_duration_ms("250ms"), Ok(250));
        assert_eq!(super::parse_duration_ms("90"), Ok(90));
        assert!(super::parse_duration_ms("5 parsecs").unwrap_err().contains("unknown unit"));
        assert!(super::parse_duration_ms("0s").is_err());
    }
}
