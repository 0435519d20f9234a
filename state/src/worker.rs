//! One worker's staged changes, and reads that see them.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use crate::codec::{decode_in, Codec};
use crate::stage::Stage;
use crate::store::StateStore;
use crate::table::Table;
use crate::{Epoch, StateError};

/// A committed key and its value bytes.
pub type Entry = (Vec<u8>, Vec<u8>);

/// A worker's handle on the state: writes are staged per epoch, reads see the worker's own
/// staged writes (newest epoch first) and then the committed database.
///
/// A worker only reads keys it owns (the dataflow routes every key to one worker), so it never
/// needs another worker's uncommitted changes.
pub struct WorkerState {
    store: Arc<StateStore>,
    worker: usize,
    /// Epochs being processed, not yet handed in.
    open: BTreeMap<Epoch, Stage>,
    /// Epochs handed in, kept readable until they are committed.
    in_flight: VecDeque<(Epoch, Arc<Stage>)>,
    /// Every epoch below this was handed in.
    handed: Epoch,
}

impl std::fmt::Debug for WorkerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerState").field("worker", &self.worker).field("open", &self.open.keys()).finish()
    }
}

impl StateStore {
    /// The staging handle of worker `index`.
    pub fn worker(self: &Arc<Self>, index: usize) -> WorkerState {
        assert!(index < self.workers(), "invariant: worker index {index} < workers {}", self.workers());
        WorkerState::new(Arc::clone(self), index)
    }
}

impl WorkerState {
    pub(crate) fn new(store: Arc<StateStore>, worker: usize) -> Self {
        let handed = store.resume_epoch();
        WorkerState { store, worker, open: BTreeMap::new(), in_flight: VecDeque::new(), handed }
    }

    /// The shared store.
    pub fn store(&self) -> &Arc<StateStore> {
        &self.store
    }

    /// This worker's index.
    pub fn index(&self) -> usize {
        self.worker
    }

    fn stage(&mut self, epoch: Epoch, table: usize) -> &mut foldhash::HashMap<Vec<u8>, Option<Vec<u8>>> {
        assert!(epoch >= self.handed, "invariant: epoch {epoch} written after it was handed in (frontier {})", self.handed);
        let tables = self.store.specs.len();
        let stage = self.open.entry(epoch).or_insert_with(|| Stage {
            tables: vec![foldhash::HashMap::default(); tables],
            range_deletes: Vec::new(),
            blind: Vec::new(),
        });
        &mut stage.tables[table]
    }

    /// Stages `value` under `key` for `epoch`.
    ///
    /// # Panics
    /// If `epoch` was already handed in: operators only write the epoch they are processing.
    pub fn put<C: Codec>(&mut self, epoch: Epoch, table: &Table<C>, key: &[u8], value: &C::Value) {
        let mut bytes = Vec::new();
        C::encode(value, &mut bytes);
        self.put_raw(epoch, table.index, key, bytes);
    }

    /// Stages already encoded bytes under `key` for `epoch`.
    pub fn put_raw(&mut self, epoch: Epoch, table: usize, key: &[u8], value: Vec<u8>) {
        self.stage(epoch, table).insert(key.to_vec(), Some(value));
    }

    /// Stages the deletion of `key` for `epoch`.
    pub fn delete<C>(&mut self, epoch: Epoch, table: &Table<C>, key: &[u8]) {
        self.stage(epoch, table.index).insert(key.to_vec(), None);
    }

    /// Stages the deletion of every key in `[from, to)` of `table` for `epoch`, for all workers
    /// at once (a table whose keys order by event time, cut behind a watermark every worker
    /// agrees on).
    ///
    /// The deletion is applied at commit, before the epoch's other changes; it is **not** seen
    /// by [`WorkerState::get`] before then. Use it only on tables the operator does not read back
    /// while running.
    pub fn delete_range<C>(&mut self, epoch: Epoch, table: &Table<C>, from: &[u8], to: &[u8]) {
        self.stage(epoch, table.index);
        let stage = self.open.get_mut(&epoch).expect("invariant: the stage was just created");
        stage.range_deletes.push((table.index, from.to_vec(), to.to_vec()));
    }

    /// Stages a put that is **not** visible to [`WorkerState::get`] before it is committed:
    /// no lookup structure is kept for it, which makes it cheaper. For tables the operator only
    /// reads back at start-up (the order buffer).
    pub fn put_blind<C>(&mut self, epoch: Epoch, table: &Table<C>, key: &[u8], value: Vec<u8>) {
        self.stage(epoch, table.index);
        let stage = self.open.get_mut(&epoch).expect("invariant: the stage was just created");
        stage.blind.push((table.index, key.to_vec(), value));
    }

    /// Removes `key`, which the caller knows was first written in `written` (a key written once
    /// and removed once, like a buffered event): if that is still `epoch`'s own open stage, the
    /// put is simply dropped and nothing reaches the database; otherwise a delete is staged.
    pub fn remove_written<C>(&mut self, epoch: Epoch, written: Epoch, table: &Table<C>, key: &[u8]) {
        if written == epoch {
            if let Some(stage) = self.open.get_mut(&epoch) {
                if stage.tables[table.index].remove(key).is_some() {
                    return;
                }
            }
        }
        self.delete(epoch, table, key);
    }

    fn prune(&mut self) {
        let resume = self.store.resume_epoch();
        while self.in_flight.front().is_some_and(|(e, _)| *e < resume) {
            self.in_flight.pop_front();
        }
    }

    /// Looks `key` up in the staged changes only: `Some(None)` if staged as deleted.
    fn staged(&self, table: usize, key: &[u8]) -> Option<Option<&[u8]>> {
        for stage in self.open.values().rev() {
            if let Some(v) = stage.tables[table].get(key) {
                return Some(v.as_deref());
            }
        }
        for (_, stage) in self.in_flight.iter().rev() {
            if let Some(v) = stage.tables[table].get(key) {
                return Some(v.as_deref());
            }
        }
        None
    }

    /// The current bytes of `key`: staged, else committed.
    ///
    /// # Errors
    /// RocksDB read errors.
    pub fn get_raw(&mut self, table: usize, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        self.prune();
        if let Some(v) = self.staged(table, key) {
            return Ok(v.map(<[u8]>::to_vec));
        }
        self.store.db.get_cf(self.store.cf(table), key).map_err(|e| StateError::rocks(&self.store.path, e))
    }

    /// The current value of `key`: staged, else committed.
    ///
    /// # Errors
    /// RocksDB read errors, or a stored value the codec cannot decode.
    pub fn get<C: Codec>(&mut self, table: &Table<C>, key: &[u8]) -> Result<Option<C::Value>, StateError> {
        match self.get_raw(table.index, key)? {
            Some(bytes) => Ok(Some(decode_in::<C>(table.name(), &bytes)?)),
            None => Ok(None),
        }
    }

    /// Every committed entry of a table, in key order. For restoring in-memory buffers at
    /// start-up, before anything is staged.
    ///
    /// # Errors
    /// RocksDB read errors.
    pub fn scan_committed<C>(&self, table: &Table<C>) -> Result<Vec<Entry>, StateError> {
        let mut out = Vec::new();
        for item in self.store.db.iterator_cf(self.store.cf(table.index), rocksdb::IteratorMode::Start) {
            let (k, v) = item.map_err(|e| StateError::rocks(&self.store.path, e))?;
            out.push((k.into_vec(), v.into_vec()));
        }
        Ok(out)
    }

    /// Hands in every stage for epochs below `frontier` (`None`: this worker will process no
    /// more epochs). The commit is written (by the store's commit thread) once all workers have
    /// handed an epoch in; the call that completes a batch returns the epoch it will resume at.
    /// The stages stay readable here until the commit is durable.
    ///
    /// # Errors
    /// An earlier commit failed: nothing after it is committed.
    pub fn hand_in(&mut self, frontier: Option<Epoch>) -> Result<Option<Epoch>, StateError> {
        let bound = frontier.unwrap_or(Epoch::MAX);
        if bound <= self.handed && frontier.is_some() {
            return Ok(None);
        }
        let keep = match frontier {
            Some(f) => self.open.split_off(&f),
            None => BTreeMap::new(),
        };
        let ready = std::mem::replace(&mut self.open, keep);
        let stages: Vec<(Epoch, Arc<Stage>)> = ready.into_iter().map(|(e, s)| (e, Arc::new(s))).collect();
        self.in_flight.extend(stages.iter().cloned());
        self.handed = bound;
        let info = self.store.hand_in(self.worker, frontier, stages)?;
        self.prune();
        Ok(info)
    }
}
