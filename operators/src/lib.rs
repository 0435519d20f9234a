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
//! | `duration.rs` | [`DurationMs`]: durations of pipeline files, read at load |
//! | `epoch.rs` | [`epoch::EpochStash`] (what arrived per epoch, released below the frontier) and the other helpers for operators that work epoch by epoch |
//! | `metrics.rs` | [`Metrics`]: counters for the progress display |
//! | `error.rs` | [`OperatorError`] |
//!
//! The standard chain is `decode → dedup → order → features → score`; `dataflows` wires it.

pub mod decode;
pub mod dedup;
pub mod drift;
pub mod duration;
pub mod epoch;
mod error;
pub mod event;
pub mod features;
pub mod latency;
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
pub use duration::{duration_or_all, duration_or_off, DurationMs};
pub use error::OperatorError;
pub use event::{
    Conflict, DeadLetter, DeadLetterReason, Epoch, Event, FeatureRecord, LateEvent, Origin, PartitionMark, PartitionProgress, RawRecord, RecordMeta, Replay,
    RequiredField, SourceItem,
};
pub use features::{FeatureOp, FeatureSet, FeatureSpec, Features};
pub use latency::LatencyStage;
pub use metrics::{KafkaPartitionGauge, Metrics};
pub use order::{LatePolicy, Order, OrderConfig};
pub use score::{ModelConfig, ModelSource, Models, Score, ScoreRecord, Scored, Unscored};
pub use watermark::WatermarkTracker;
