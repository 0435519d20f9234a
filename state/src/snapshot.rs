//! Consistent reads from any thread while the dataflow writes.

use std::sync::Arc;

use rocksdb::{SnapshotWithThreadMode, DB};

use crate::codec::{decode_in, Codec, U64Codec};
use crate::store::StateStore;
use crate::table::Table;
use crate::{Epoch, StateError};

/// A cloneable, `Send + Sync` read handle on a store, for the feature server and tools.
#[derive(Clone, Debug)]
pub struct StateReader {
    store: Arc<StateStore>,
}

impl StateReader {
    /// A reader of `store`.
    pub fn new(store: Arc<StateStore>) -> Self {
        StateReader { store }
    }

    /// A point-in-time view. Commits are whole epochs in one batch, so a snapshot sees every
    /// table as of one committed epoch.
    pub fn snapshot(&self) -> Snapshot<'_> {
        Snapshot { store: &self.store, snapshot: self.store.db.snapshot() }
    }
}

/// A consistent view of the committed state.
pub struct Snapshot<'a> {
    store: &'a StateStore,
    snapshot: SnapshotWithThreadMode<'a, DB>,
}

impl Snapshot<'_> {
    /// The value of `key` as of this snapshot.
    ///
    /// # Errors
    /// RocksDB read errors, or a stored value the codec cannot decode.
    pub fn get<C: Codec>(&self, table: &Table<C>, key: &[u8]) -> Result<Option<C::Value>, StateError> {
        let raw = self.snapshot.get_cf(self.store.cf(table.index), key).map_err(|e| StateError::rocks(&self.store.path, e))?;
        raw.map(|bytes| decode_in::<C>(table.name(), &bytes)).transpose()
    }

    /// The epoch a restart would resume at, as of this snapshot: all epochs below it are in view.
    ///
    /// # Errors
    /// RocksDB read errors.
    pub fn resume_epoch(&self) -> Result<Epoch, StateError> {
        let meta = self.store.db.cf_handle("sluice_meta").expect("invariant: meta is open");
        let raw = self.snapshot.get_cf(meta, b"resume_epoch").map_err(|e| StateError::rocks(&self.store.path, e))?;
        raw.map(|bytes| decode_in::<U64Codec>("sluice_meta", &bytes)).transpose().map(|e| e.unwrap_or(0))
    }
}
