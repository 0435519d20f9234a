//! sluice-state: the durable state of a sluice pipeline, in RocksDB.
//!
//! This crate owns everything that touches disk for operator state: typed tables (one column
//! family each), their codecs, event-time TTL, the per-epoch atomic commit and the read
//! snapshots the feature server uses. It knows nothing of timely: operators call it with an
//! epoch number and bytes.
//!
//! It must not: spawn threads of its own, buffer without a bound, or hand out a view that mixes
//! two committed epochs.
//!
//! | file | what it owns |
//! |---|---|
//! | `error.rs` | [`StateError`], the one error type of the crate |
//! | `codec.rs` | [`Codec`]: how a table's values become bytes, and the stock codecs |
//! | `table.rs` | [`TableSpec`] (declared up front) and [`Table`] (a typed handle) |
//! | `store.rs` | [`StateStore`]: the RocksDB instance, its options, and the commit of epochs |
//! | `layout.rs` | the state directory's own keys: layout version, resume epoch, commit time |
//! | `stage.rs` | a stage: one worker's changes in one epoch, handed to the commit as a unit |
//! | `worker.rs` | [`WorkerState`]: one worker's staged, not yet committed changes, read through |
//! | `snapshot.rs` | [`StateReader`] and [`Snapshot`]: consistent reads from any thread |
//! | `checkpoint.rs` | checkpoints: taking, listing and restoring copies of the committed state |
//! | `sched.rs` | thread scheduling: the dataflow's threads yield the cores to the feature server's |
//! | `protocol.rs` | the epoch commit protocol: its named steps, crash outcomes, failpoints |
//!
//! # How the pieces relate
//!
//! A pipeline opens one [`StateStore`] per process with every [`TableSpec`] its operators
//! declare. Each timely worker gets a [`WorkerState`]; operators write through it into a
//! *stage* tagged with the epoch they are processing, and read through it (their own staged
//! writes first, then the database). When every worker has finished epoch `e`, the stages of
//! all workers for epochs `<= e` are written in **one** RocksDB write batch, together with the
//! source positions (which are staged like any other change) and the epoch number, with the
//! WAL synced. A [`Snapshot`] therefore always sees whole epochs.
//!
//! The design keeps one RocksDB instance per process rather than one per worker (as first
//! sketched in ARCHITECTURE.md): one batch then commits all workers' changes atomically, so a
//! crash can never leave worker 0 at epoch 7 and worker 1 at epoch 6, and no two-phase commit
//! is needed. RocksDB is internally concurrent, so reads from several workers do not contend.

mod codec;
mod error;
mod layout;
mod snapshot;
mod stage;
mod store;
mod table;
mod worker;

pub use codec::{BytesCodec, Codec, F64Codec, I64Codec, JsonCodec, U64Codec};
pub use error::StateError;
pub use snapshot::{Snapshot, StateReader, TableInfo, View, FOLLOW_INTERVAL};
pub use store::{CommitInfo, StateOptions, StateStore};
pub use table::{Table, TableSpec};
pub use worker::WorkerState;

pub mod checkpoint;
pub mod protocol;
pub mod sched;

/// A timely epoch number: the unit of commit.
pub type Epoch = u64;
