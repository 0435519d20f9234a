//! What every sink shares: the line it is given ([`OutputLine`]) and, for a sink that
//! delivers committed epochs from an outbox, its [`DeliveryState`].

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sluice_operators::event::Text;
use sluice_operators::Origin;

/// One output line with the key it is sorted by within its epoch.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OutputLine {
    /// Sort key: event time (0 where not meaningful), id, origin.
    pub key: (i64, Text, Origin),
    /// The line, without its newline: a slice of a block shared with the lines written
    /// after it (see `sluice::outputs::LineBlocks`), or a buffer of its own.
    pub bytes: bytes::Bytes,
}

/// What a delivery thread (a Kafka sink's) shares with the sink operator and the pipeline.
#[derive(Debug, Default)]
pub struct DeliveryState {
    /// The last epoch delivered (-1: none yet).
    pub delivered: AtomicI64,
    /// Records delivered by this process.
    pub records: AtomicU64,
    /// Records waiting in the producer's queue (librdkafka's in-flight count).
    pub queue_depth: AtomicI64,
    /// Epoch deliveries retried after a retriable error.
    pub retries: AtomicU64,
    /// Set by the pipeline once every epoch is committed: deliver what is left and stop.
    pub finish: AtomicBool,
    /// The failure that stopped delivery, if any.
    pub failed: Mutex<Option<String>>,
}
