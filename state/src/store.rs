//! The RocksDB instance of a pipeline, and the commit of epochs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rocksdb::{BlockBasedOptions, Cache, ColumnFamilyDescriptor, Options, WriteBatch, WriteOptions, DB};

use crate::codec::{Codec, U64Codec};
use crate::layout::{KEY_COMMITTED_AT_MS, KEY_LAYOUT, KEY_RESUME_EPOCH, LAYOUT, META_CF};
use crate::protocol::failpoint;
use crate::stage::Stage;
use crate::table::{Table, TableSpec};
use crate::{Epoch, StateError};

/// Tuning of the RocksDB instance. The defaults bound memory at roughly
/// `cache_bytes + tables * write_buffer_bytes * 2`.
#[derive(Debug, Clone)]
pub struct StateOptions {
    /// The shared block cache, in bytes.
    pub cache_bytes: usize,
    /// The memtable size per table, in bytes.
    pub write_buffer_bytes: usize,
    /// Sync the WAL at every commit (the durability promise). Tests of pure logic may turn it off.
    pub sync_commits: bool,
    /// The nice level of the commit thread and RocksDB's background threads (0: as the
    /// process). A positive level lets latency-sensitive threads (the feature server) preempt
    /// the write path on a loaded machine.
    pub background_nice: i32,
    /// Commits wait while the state directory's file system has less free space than this
    /// (RocksDB needs room to flush and compact; a write that fails for want of space would
    /// stop the database). Logged loudly; [`StateStore::commit_stalled`] says why.
    pub min_free_bytes: u64,
    /// Take a checkpoint (see [`crate::checkpoint`]) after the first commit this long after
    /// the last one; `None`: never.
    pub checkpoint_every: Option<Duration>,
    /// Complete checkpoints kept.
    pub checkpoints_kept: usize,
}

impl Default for StateOptions {
    fn default() -> Self {
        StateOptions {
            cache_bytes: 64 << 20,
            write_buffer_bytes: 16 << 20,
            sync_commits: true,
            background_nice: 0,
            min_free_bytes: 128 << 20,
            checkpoint_every: None,
            checkpoints_kept: 2,
        }
    }
}

/// What one commit wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct CommitInfo {
    /// The epoch from which a restart resumes after this commit.
    pub resume_epoch: Epoch,
    /// How many staged changes (puts and deletes) the batch held.
    pub changes: usize,
    /// How long the write (with its sync) took.
    pub duration: Duration,
    /// Write batches since the store opened: fewer than the epochs committed when the commit
    /// groups the epochs queued behind a slow sync.
    pub batches_total: u64,
    /// Keys since the store opened whose write was left out of a batch because a later epoch
    /// of the same batch wrote them again.
    pub coalesced_total: u64,
}

struct CommitQueue {
    /// Per worker: every epoch below this has been handed in.
    handed: Vec<Epoch>,
    /// Stages handed in and not yet sent to the writer, by epoch.
    pending: BTreeMap<Epoch, Vec<Arc<Stage>>>,
    /// The resume epoch of the last batch sent to the writer.
    enqueued_resume: Epoch,
    /// Batches sent to the writer.
    enqueued: u64,
    /// The writer's queue; `None` once the store shuts down.
    sender: Option<SyncSender<Job>>,
}

/// One commit for the writer: stages by epoch, and the resume epoch it establishes.
type Job = (BTreeMap<Epoch, Vec<Arc<Stage>>>, Epoch);

/// Batches waiting for the writer beyond the one being written: past this, `hand_in` blocks
/// (backpressure from the disk to the dataflow).
const WRITER_QUEUE_BATCHES: usize = 2;

/// What the writer thread shares with the store.
struct Writer {
    db: Arc<DB>,
    path: PathBuf,
    names: Vec<String>,
    sync_commits: bool,
    resume_epoch: AtomicU64,
    /// (batches written, the first failure, the last commit's figures).
    done: Mutex<(u64, Option<String>, Option<CommitInfo>)>,
    /// Write batches, and keys left out of them ([`CommitInfo`]).
    batches_total: AtomicU64,
    coalesced_total: AtomicU64,
    written: Condvar,
    min_free_bytes: u64,
    /// Why commits are waiting (the disk is full), while they are.
    stalled: Mutex<Option<String>>,
    /// Set when the store closes: a commit waiting for space gives up.
    closing: AtomicBool,
}

/// The state of one pipeline process: one RocksDB instance, one column family per table.
///
/// Shared by all workers (`Arc`); each worker writes through its own [`WorkerState`].
pub struct StateStore {
    pub(crate) db: Arc<DB>,
    pub(crate) path: PathBuf,
    pub(crate) specs: Vec<TableSpec>,
    queue: Mutex<CommitQueue>,
    writer: Arc<Writer>,
    thread: Mutex<Option<JoinHandle<()>>>,
    workers: usize,
}

impl Drop for StateStore {
    fn drop(&mut self) {
        self.writer.closing.store(true, Ordering::Release);
        if let Ok(mut queue) = self.queue.lock() {
            queue.sender = None;
        }
        if let Some(handle) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = handle.join();
        }
    }
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore").field("path", &self.path).field("tables", &self.specs).finish()
    }
}

impl StateStore {
    /// Opens (or creates) the state directory at `path` with the given tables, for `workers`
    /// workers.
    ///
    /// Tables present on disk but not declared are kept untouched. The number of workers may
    /// differ from the previous run: state is keyed by data, not by worker.
    ///
    /// # Errors
    /// RocksDB errors (the directory is locked by another process, I/O, corruption), and
    /// [`StateError::Incompatible`] if the directory was written by an incompatible layout.
    pub fn open(path: &Path, tables: &[TableSpec], workers: usize, options: &StateOptions) -> Result<Arc<Self>, StateError> {
        assert!(workers > 0, "invariant: a pipeline has at least one worker");
        let mut names: Vec<&TableSpec> = Vec::new();
        for spec in tables {
            if spec.name == META_CF || spec.name == "default" {
                return Err(StateError::Incompatible { path: path.into(), reason: format!("table name `{}` is reserved", spec.name) });
            }
            if names.iter().any(|s| s.name == spec.name) {
                return Err(StateError::Incompatible { path: path.into(), reason: format!("table `{}` declared twice", spec.name) });
            }
            names.push(spec);
        }
        std::fs::create_dir_all(path).map_err(|e| StateError::Incompatible { path: path.into(), reason: format!("cannot create the state directory: {e}") })?;

        let cache = Cache::new_lru_cache(options.cache_bytes);
        let cf_options = |spec: Option<&TableSpec>| {
            let mut o = Options::default();
            o.set_write_buffer_size(options.write_buffer_bytes);
            o.set_max_write_buffer_number(2);
            o.set_compression_type(rocksdb::DBCompressionType::Lz4);
            let mut block = BlockBasedOptions::default();
            block.set_block_cache(&cache);
            block.set_cache_index_and_filter_blocks(true);
            // Partitioned indexes: a cold read loads one small index partition, not a table's
            // whole index (which, evicted and reloaded from a small cache, made the first epoch
            // after a restart with 1M entities 4x slower). The top level stays pinned.
            block.set_index_type(rocksdb::BlockBasedIndexType::TwoLevelIndexSearch);
            block.set_pin_top_level_index_and_filter(true);
            block.set_cache_index_and_filter_blocks_with_high_priority(true);
            block.set_pin_l0_filter_and_index_blocks_in_cache(true);
            if spec.is_some_and(|s| s.point_lookups) {
                block.set_bloom_filter(10.0, false);
                // Partitioned like the index, for the same reason: a table of 1M entities has a
                // filter of about 1.2 MiB, more than a block-cache shard holds (64 MiB in 64
                // shards), so it was read from disk and checksummed again at every cold read
                // (55% of the first epoch after a restart).
                block.set_partition_filters(true);
                // A Bloom filter on the memtables too, of whole keys (there is no prefix
                // extractor): a key not yet written, the common case, is not searched for in the
                // skip list.
                o.set_memtable_prefix_bloom_ratio(0.1);
                o.set_memtable_whole_key_filtering(true);
            }
            o.set_block_based_table_factory(&block);
            o
        };

        let mut db_options = Options::default();
        db_options.create_if_missing(true);
        db_options.create_missing_column_families(true);
        db_options.set_max_background_jobs(2);
        db_options.set_keep_log_file_num(4);
        if options.background_nice > 0 {
            let mut env = rocksdb::Env::new().map_err(|e| StateError::rocks(path, e))?;
            env.lower_thread_pool_cpu_priority();
            env.lower_high_priority_thread_pool_cpu_priority();
            db_options.set_env(&env);
        }

        let existing = DB::list_cf(&db_options, path).unwrap_or_default();
        let mut descriptors = vec![ColumnFamilyDescriptor::new(META_CF, cf_options(None))];
        for spec in tables {
            descriptors.push(ColumnFamilyDescriptor::new(spec.name.clone(), cf_options(Some(spec))));
        }
        for name in existing {
            if name != "default" && name != META_CF && !tables.iter().any(|s| s.name == name) {
                descriptors.push(ColumnFamilyDescriptor::new(name, cf_options(None)));
            }
        }
        let db = DB::open_cf_descriptors(&db_options, path, descriptors).map_err(|e| StateError::rocks(path, e))?;

        let meta = db.cf_handle(META_CF).expect("invariant: the meta column family was just opened");
        let resume_epoch = match db.get_cf(&meta, KEY_LAYOUT).map_err(|e| StateError::rocks(path, e))? {
            None => {
                let mut batch = WriteBatch::default();
                batch.put_cf(&meta, KEY_LAYOUT, LAYOUT);
                let mut zero = Vec::new();
                U64Codec::encode(&0, &mut zero);
                batch.put_cf(&meta, KEY_RESUME_EPOCH, zero);
                let mut wo = WriteOptions::default();
                wo.set_sync(true);
                db.write_opt(batch, &wo).map_err(|e| StateError::rocks(path, e))?;
                0
            }
            Some(layout) if layout == LAYOUT => {
                let raw = db.get_cf(&meta, KEY_RESUME_EPOCH).map_err(|e| StateError::rocks(path, e))?;
                let raw = raw.ok_or_else(|| StateError::Incompatible {
                    path: path.into(),
                    reason: "the commit record is missing; the directory is corrupt: restore a backup or delete it to start over".into(),
                })?;
                crate::codec::decode_in::<U64Codec>(META_CF, &raw)?
            }
            Some(other) => {
                return Err(StateError::Incompatible {
                    path: path.into(),
                    reason: format!(
                        "layout `{}` is not `{}`: it was written by another version of sluice; delete it to start over",
                        String::from_utf8_lossy(&other),
                        String::from_utf8_lossy(LAYOUT)
                    ),
                })
            }
        };

        let db = Arc::new(db);
        crate::checkpoint::remove_half_written(path);
        let writer = Arc::new(Writer {
            db: Arc::clone(&db),
            path: path.to_path_buf(),
            names: tables.iter().map(|t| t.name.clone()).collect(),
            sync_commits: options.sync_commits,
            resume_epoch: AtomicU64::new(resume_epoch),
            done: Mutex::new((0, None, None)),
            batches_total: AtomicU64::new(0),
            coalesced_total: AtomicU64::new(0),
            written: Condvar::new(),
            min_free_bytes: options.min_free_bytes,
            stalled: Mutex::new(None),
            closing: AtomicBool::new(false),
        });
        let (sender, receiver) = sync_channel::<Job>(WRITER_QUEUE_BATCHES);
        let thread = std::thread::Builder::new()
            .name("sluice-commit".into())
            .spawn({
                let writer = Arc::clone(&writer);
                let nice = options.background_nice;
                let (every, keep) = (options.checkpoint_every, options.checkpoints_kept);
                move || {
                    crate::sched::set_thread_nice(nice);
                    let mut last_checkpoint = Instant::now();
                    let mut finishing: Option<JoinHandle<()>> = None;
                    while let Ok((mut ready, mut resume)) = receiver.recv() {
                        // Group commit: the batches queued while the last one was written go
                        // in one write and one sync, and a key written by several of their
                        // epochs is written once (see `Writer::write`).
                        let mut jobs = 1;
                        while let Ok((more, later_resume)) = receiver.try_recv() {
                            for (epoch, stages) in more {
                                ready.entry(epoch).or_default().extend(stages);
                            }
                            resume = later_resume;
                            jobs += 1;
                        }
                        let result = writer.write(ready, resume);
                        if let (Ok(info), Some(every)) = (&result, every) {
                            if last_checkpoint.elapsed() >= every && info.resume_epoch > 0 {
                                last_checkpoint = Instant::now();
                                let epoch = info.resume_epoch - 1;
                                // One checkpoint at a time: the links here, the copies on a thread;
                                // none while space is short (a checkpoint copies new table files).
                                let roomy = free_bytes(&writer.path).is_none_or(|free| free >= writer.min_free_bytes.saturating_mul(2));
                                if roomy && finishing.as_ref().is_none_or(std::thread::JoinHandle::is_finished) {
                                    match crate::checkpoint::link(&writer.db, &writer.path, epoch) {
                                        Ok(Some(tmp)) => {
                                            let path = writer.path.clone();
                                            let started = last_checkpoint;
                                            finishing = std::thread::Builder::new()
                                                .name("sluice-checkpoint".into())
                                                .spawn(move || match crate::checkpoint::complete(&path, &tmp, epoch, keep) {
                                                    Ok(done) => tracing::info!(epoch, checkpoint = %done.display(), ms = started.elapsed().as_millis() as u64, "checkpoint taken"),
                                                    Err(e) => tracing::warn!(epoch, error = %e, "cannot take a checkpoint; the pipeline goes on"),
                                                })
                                                .ok();
                                        }
                                        Ok(None) => {}
                                        Err(e) => tracing::warn!(epoch, error = %e, "cannot take a checkpoint; the pipeline goes on"),
                                    }
                                }
                            }
                        }
                        let mut done = writer.done.lock().expect("invariant: writer lock not poisoned");
                        done.0 += jobs;
                        match result {
                            Ok(info) => done.2 = Some(info),
                            Err(e) => {
                                tracing::error!(error = %e, "commit failed; the pipeline stops committing");
                                done.1.get_or_insert(e.to_string());
                            }
                        }
                        writer.written.notify_all();
                    }
                    // A checkpoint being copied is finished before the store closes.
                    if let Some(f) = finishing {
                        let _ = f.join();
                    }
                }
            })
            .map_err(|e| StateError::Incompatible { path: path.into(), reason: format!("cannot start the commit thread: {e}") })?;

        Ok(Arc::new(StateStore {
            db,
            path: path.to_path_buf(),
            specs: tables.to_vec(),
            queue: Mutex::new(CommitQueue {
                handed: vec![resume_epoch; workers],
                pending: BTreeMap::new(),
                enqueued_resume: resume_epoch,
                enqueued: 0,
                sender: Some(sender),
            }),
            writer,
            thread: Mutex::new(Some(thread)),
            workers,
        }))
    }

    /// A typed handle on a declared table.
    ///
    /// # Errors
    /// [`StateError::UnknownTable`] if `name` was not declared at open.
    pub fn table<C: Codec>(&self, name: &str) -> Result<Table<C>, StateError> {
        let index = self.specs.iter().position(|s| s.name == name).ok_or_else(|| StateError::UnknownTable(name.to_string()))?;
        Ok(Table::new(index, name))
    }

    /// The epoch a restarted pipeline resumes at: every epoch below it is committed (durably
    /// written, not only handed in).
    pub fn resume_epoch(&self) -> Epoch {
        self.writer.resume_epoch.load(Ordering::Acquire)
    }

    /// Waits until every commit handed to the writer is written.
    ///
    /// # Errors
    /// [`StateError::CommitFailed`] if any commit failed.
    pub fn sync(&self) -> Result<(), StateError> {
        let enqueued = self.queue.lock().expect("invariant: commit queue lock not poisoned").enqueued;
        let mut done = self.writer.done.lock().expect("invariant: writer lock not poisoned");
        while done.0 < enqueued && done.1.is_none() {
            done = self.writer.written.wait(done).expect("invariant: writer lock not poisoned");
        }
        match &done.1 {
            Some(reason) => Err(StateError::CommitFailed(reason.clone())),
            None => Ok(()),
        }
    }

    /// The number of workers this store commits for.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The state directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Deletes the keys in `[from, to)` of `table` at once, outside the epoch commits: only
    /// for data no restart needs any more (a sink's delivered outbox). Not synced: if a crash
    /// loses the delete, the owner deletes again.
    ///
    /// # Errors
    /// RocksDB write errors.
    pub fn discard_range<C: crate::Codec>(&self, table: &Table<C>, from: &[u8], to: &[u8]) -> Result<(), StateError> {
        let cf = self.db.cf_handle(table.name()).ok_or_else(|| StateError::UnknownTable(table.name().to_string()))?;
        self.db.delete_range_cf(cf, from, to).map_err(|e| StateError::rocks(&self.path, e))
    }

    /// Why commits are waiting, while they are (the state's disk is too full); `None` when
    /// they flow. Sources that acknowledge to senders (webhooks) refuse new data meanwhile.
    pub fn commit_stalled(&self) -> Option<String> {
        self.writer.stalled.lock().expect("invariant: not poisoned").clone()
    }

    /// Write batches, and keys left out of them, since the store opened (see [`CommitInfo`]);
    /// up to date with [`StateStore::resume_epoch`].
    pub fn commit_counts(&self) -> (u64, u64) {
        (self.writer.batches_total.load(Ordering::Relaxed), self.writer.coalesced_total.load(Ordering::Relaxed))
    }

    /// The last commit's figures, if any commit was written by this process.
    pub fn last_commit(&self) -> Option<CommitInfo> {
        self.writer.done.lock().expect("invariant: writer lock not poisoned").2.clone()
    }

    pub(crate) fn cf(&self, index: usize) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(&self.specs[index].name).expect("invariant: declared tables are open")
    }

    /// Receives worker `worker`'s stages for epochs below `frontier` (`None`: the worker is
    /// done). When all workers have now handed an epoch in, sends everything complete to the
    /// writer thread as one batch and returns the epoch that batch will resume at. Blocks while
    /// the writer is more than [`WRITER_QUEUE_BATCHES`] batches behind.
    pub(crate) fn hand_in(&self, worker: usize, frontier: Option<Epoch>, stages: Vec<(Epoch, Arc<Stage>)>) -> Result<Option<Epoch>, StateError> {
        if let Some(reason) = &self.writer.done.lock().expect("invariant: writer lock not poisoned").1 {
            return Err(StateError::CommitFailed(reason.clone()));
        }
        let mut queue = self.queue.lock().expect("invariant: commit queue lock not poisoned");
        for (epoch, stage) in stages {
            assert!(epoch >= queue.enqueued_resume, "invariant: epoch {epoch} staged after it was committed");
            queue.pending.entry(epoch).or_default().push(stage);
        }
        let frontier = frontier.unwrap_or(Epoch::MAX);
        assert!(frontier >= queue.handed[worker], "invariant: a worker's frontier never goes back");
        queue.handed[worker] = frontier;
        let all = *queue.handed.iter().min().expect("invariant: at least one worker");
        let current = queue.enqueued_resume;
        if all <= current {
            return Ok(None);
        }
        let keep = queue.pending.split_off(&all);
        let ready = std::mem::replace(&mut queue.pending, keep);
        let resume = if all == Epoch::MAX { ready.keys().next_back().map_or(current, |e| e + 1).max(current) } else { all };
        if resume == current && ready.is_empty() {
            return Ok(None);
        }
        queue.enqueued_resume = resume;
        queue.enqueued += 1;
        let sender = queue.sender.as_ref().expect("invariant: the writer runs while the store is open");
        // Sent under the lock: batches reach the writer in epoch order.
        sender.send((ready, resume)).map_err(|_| StateError::CommitFailed("the commit thread is gone".into()))?;
        Ok(Some(resume))
    }
}

impl Writer {
    /// Waits while the state's file system has less than `min_free_bytes` free: the batch
    /// stays in memory, the workers block handing in more (the sources stop reading), and the
    /// commit goes ahead once space is free. Gives up only when the store closes.
    fn wait_for_space(&self) -> Result<(), StateError> {
        let mut since: Option<Instant> = None;
        loop {
            let free = free_bytes(&self.path);
            match free {
                Some(free) if free < self.min_free_bytes => {
                    if since.is_none() {
                        let reason = format!(
                            "the state directory {} has {} MiB free, less than the {} MiB kept free (state_min_free_mb)",
                            self.path.display(),
                            free >> 20,
                            self.min_free_bytes >> 20
                        );
                        tracing::error!(
                            "DISK FULL: {reason}; commits are stopped, nothing new is acknowledged (webhooks get 503), committed data is safe; sluice goes on by itself once space is freed"
                        );
                        *self.stalled.lock().expect("invariant: not poisoned") = Some(reason);
                        since = Some(Instant::now());
                    }
                    if self.closing.load(Ordering::Acquire) {
                        return Err(StateError::CommitFailed(
                            "stopped while waiting for disk space; the epoch is not committed and is produced again by the next run".into(),
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                _ => {
                    if let Some(since) = since {
                        *self.stalled.lock().expect("invariant: not poisoned") = None;
                        tracing::warn!(waited_ms = since.elapsed().as_millis() as u64, "disk space is back; commits resume");
                    }
                    return Ok(());
                }
            }
        }
    }

    fn cf(&self, index: usize) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(&self.names[index]).expect("invariant: declared tables are open")
    }

    fn write(&self, ready: BTreeMap<Epoch, Vec<Arc<Stage>>>, resume: Epoch) -> Result<CommitInfo, StateError> {
        let started = Instant::now();
        let mut batch = WriteBatch::default();
        let mut changes = 0;
        let cfs: Vec<_> = (0..self.names.len()).map(|i| self.cf(i)).collect();
        let mut sorted: Vec<(&Vec<u8>, &Option<Vec<u8>>)> = Vec::new();
        // Of several epochs, a key's write is kept from the latest only (a feature changed in
        // each of them is written once): its value is the one the last write leaves, whatever
        // range deletions came between.
        let latest_write: Option<foldhash::HashMap<(usize, &[u8]), Epoch>> = (ready.len() > 1).then(|| {
            let mut latest = foldhash::HashMap::default();
            for (&epoch, stages) in &ready {
                for stage in stages {
                    for (index, changes_of_table) in stage.tables.iter().enumerate() {
                        for key in changes_of_table.keys() {
                            latest.insert((index, key.as_slice()), epoch);
                        }
                    }
                }
            }
            latest
        });
        let mut overwritten = 0u64;
        for (&epoch, stages) in &ready {
            for stage in stages {
                for (index, from, to) in &stage.range_deletes {
                    changes += 1;
                    batch.delete_range_cf(cfs[*index], from, to);
                }
            }
            for stage in stages {
                for (index, key, value) in &stage.blind {
                    changes += 1;
                    batch.put_cf(cfs[*index], key, value);
                }
            }
            for stage in stages {
                for (index, changes_of_table) in stage.tables.iter().enumerate() {
                    // Keys within one stage are distinct, so their order in the batch does not
                    // change the result (stages are applied in epoch order); in key order, the
                    // memtable inserts each one next to the previous one instead of searching
                    // its skip list from the top.
                    sorted.clear();
                    match &latest_write {
                        None => sorted.extend(changes_of_table.iter()),
                        Some(latest) => {
                            let before = sorted.len();
                            sorted.extend(changes_of_table.iter().filter(|(key, _)| latest.get(&(index, key.as_slice())) == Some(&epoch)));
                            overwritten += (changes_of_table.len() - (sorted.len() - before)) as u64;
                        }
                    }
                    sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
                    for (key, value) in sorted.drain(..) {
                        changes += 1;
                        match value {
                            Some(value) => batch.put_cf(cfs[index], key, value),
                            None => batch.delete_cf(cfs[index], key),
                        }
                    }
                }
            }
        }
        let meta = self.db.cf_handle(META_CF).expect("invariant: meta is open");
        let mut bytes = Vec::new();
        U64Codec::encode(&resume, &mut bytes);
        batch.put_cf(meta, KEY_RESUME_EPOCH, bytes);
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        let mut bytes = Vec::new();
        crate::codec::I64Codec::encode(&now_ms, &mut bytes);
        batch.put_cf(meta, KEY_COMMITTED_AT_MS, bytes);
        let mut wo = WriteOptions::default();
        wo.set_sync(self.sync_commits);
        self.wait_for_space()?;
        failpoint("commit.batch");
        self.db.write_opt(batch, &wo).map_err(|e| StateError::rocks(&self.path, e))?;
        failpoint("commit.synced");
        // Counted before the resume epoch moves: whoever sees the new epoch sees its batch.
        let info = CommitInfo {
            resume_epoch: resume,
            changes,
            duration: started.elapsed(),
            batches_total: self.batches_total.fetch_add(1, Ordering::Relaxed) + 1,
            coalesced_total: self.coalesced_total.fetch_add(overwritten, Ordering::Relaxed) + overwritten,
        };
        self.resume_epoch.store(resume, Ordering::Release);
        Ok(info)
    }
}

/// Bytes available to this process on the file system holding `path` (`None`: unknown).
#[allow(unsafe_code)]
fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a NUL-terminated string and `stat` points to writable memory of the
    // struct's size; statvfs writes only there.
    let result = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if result != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled the struct.
    let stat = unsafe { stat.assume_init() };
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StateReader;

    fn tables() -> Vec<TableSpec> {
        vec![TableSpec::new("counts"), TableSpec::new("seen").with_point_lookups()]
    }

    fn open(dir: &Path, workers: usize) -> Arc<StateStore> {
        StateStore::open(dir, &tables(), workers, &StateOptions::default()).unwrap()
    }

    #[test]
    fn committed_epochs_survive_reopen_and_staged_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path(), 1);
            let counts = store.table::<U64Codec>("counts").unwrap();
            let mut w = store.worker(0);
            w.put(0, &counts, b"a", &1);
            w.put(1, &counts, b"a", &2);
            w.put(2, &counts, b"b", &7);
            // The worker reads its own staged writes, newest epoch first.
            assert_eq!(w.get(&counts, b"a").unwrap(), Some(2));
            assert_eq!(w.hand_in(Some(2)).unwrap(), Some(2));
            store.sync().unwrap();
            let info = store.last_commit().unwrap();
            assert_eq!(info.resume_epoch, 2);
            // Epochs 0 and 1 in one batch: `a` is written once, with epoch 1's value.
            assert_eq!((info.changes, info.coalesced_total, info.batches_total), (1, 1, 1));
            // Epoch 2 is still open: visible to the worker, not committed.
            assert_eq!(w.get(&counts, b"b").unwrap(), Some(7));
        }
        let store = open(dir.path(), 1);
        assert_eq!(store.resume_epoch(), 2);
        let counts = store.table::<U64Codec>("counts").unwrap();
        let mut w = store.worker(0);
        assert_eq!(w.get(&counts, b"a").unwrap(), Some(2));
        assert_eq!(w.get(&counts, b"b").unwrap(), None);
    }

    #[test]
    fn a_batch_of_several_epochs_leaves_what_they_would_leave_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 1);
        let counts = store.table::<U64Codec>("counts").unwrap();
        let mut w = store.worker(0);
        w.put(0, &counts, b"a", &1);
        w.put(0, &counts, b"b", &5);
        w.put(0, &counts, b"d", &9);
        // Epoch 1 deletes a..c, epoch 2 writes `a` again and deletes `d`: `a` and `d` are
        // written once (their last writes), `b` stays deleted by the range.
        w.delete_range(1, &counts, b"a", b"c");
        w.put(2, &counts, b"a", &3);
        w.delete(2, &counts, b"d");
        assert_eq!(w.hand_in(Some(3)).unwrap(), Some(3));
        store.sync().unwrap();
        let info = store.last_commit().unwrap();
        assert_eq!((info.changes, info.coalesced_total, info.batches_total), (4, 2, 1), "a, b, d, the range; a and d of epoch 0 left out");
        let view = StateReader::new(Arc::clone(&store)).view();
        let snap = view.snapshot();
        let read = |key: &[u8]| snap.get(&counts, key).unwrap();
        assert_eq!((read(b"a"), read(b"b"), read(b"d")), (Some(3), None, None));
    }

    #[test]
    fn an_epoch_commits_only_when_every_worker_handed_it_in() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 2);
        let counts = store.table::<U64Codec>("counts").unwrap();
        let mut w0 = store.worker(0);
        let mut w1 = store.worker(1);
        w0.put(0, &counts, b"x", &10);
        w1.put(0, &counts, b"y", &20);
        w1.put(1, &counts, b"y", &21);
        assert_eq!(w0.hand_in(Some(1)).unwrap(), None);
        store.sync().unwrap();
        assert_eq!(store.resume_epoch(), 0);
        // w0 still reads its handed-in, uncommitted write.
        assert_eq!(w0.get(&counts, b"x").unwrap(), Some(10));
        assert_eq!(w1.hand_in(Some(2)).unwrap(), Some(1));
        store.sync().unwrap();
        let view = StateReader::new(Arc::clone(&store)).view();
        let snap = view.snapshot();
        assert_eq!(snap.get(&counts, b"x").unwrap(), Some(10));
        assert_eq!(snap.get(&counts, b"y").unwrap(), Some(20), "epoch 1 of w1 is not committed yet");
        assert_eq!(snap.resume_epoch().unwrap(), 1);
        assert_eq!(w0.hand_in(None).unwrap(), Some(2));
        store.sync().unwrap();
        assert_eq!(store.resume_epoch(), 2);
    }

    #[test]
    fn snapshot_does_not_see_later_commits() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 1);
        let counts = store.table::<U64Codec>("counts").unwrap();
        let mut w = store.worker(0);
        w.put(0, &counts, b"k", &1);
        w.hand_in(Some(1)).unwrap();
        store.sync().unwrap();
        let reader = StateReader::new(Arc::clone(&store));
        let handle = std::thread::spawn({
            let reader = reader.clone();
            let counts = counts.clone();
            move || {
                let view = reader.view();
                let snap = view.snapshot();
                let before = snap.get(&counts, b"k").unwrap();
                std::thread::sleep(Duration::from_millis(200));
                let after = snap.get(&counts, b"k").unwrap();
                (before, after, snap.resume_epoch().unwrap())
            }
        });
        std::thread::sleep(Duration::from_millis(50));
        w.put(1, &counts, b"k", &2);
        w.hand_in(Some(2)).unwrap();
        store.sync().unwrap();
        let (before, after, epoch) = handle.join().unwrap();
        assert_eq!((before, after, epoch), (Some(1), Some(1), 1));
        assert_eq!(reader.view().snapshot().get(&counts, b"k").unwrap(), Some(2));
    }

    /// Two workers write 50 keys each with the epoch number, every epoch; readers in this
    /// process and a follower never see keys of two epochs in one snapshot, and always the
    /// epoch below the resume epoch in view — across memtable flushes too.
    #[test]
    fn snapshots_and_followers_never_mix_epochs() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 2);
        let counts = store.table::<U64Codec>("counts").unwrap();
        let keys: Vec<Vec<u8>> = (0..100).map(|i| format!("{}{i}", if i < 50 { 'a' } else { 'b' }).into_bytes()).collect();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let follower = StateReader::follow(dir.path()).unwrap();
        let readers: Vec<_> = [StateReader::new(Arc::clone(&store)), follower]
            .into_iter()
            .map(|reader| {
                let (done, counts, keys) = (Arc::clone(&done), counts.clone(), keys.clone());
                std::thread::spawn(move || {
                    let mut checked = std::collections::BTreeSet::new();
                    while !done.load(Ordering::Relaxed) {
                        let view = reader.view();
                        let snap = view.snapshot();
                        let resume = snap.resume_epoch().unwrap();
                        let values: Vec<Option<u64>> = keys.iter().map(|k| snap.get(&counts, k).unwrap()).collect();
                        let want = resume.checked_sub(1);
                        assert!(values.iter().all(|v| *v == want), "resume epoch {resume}, values {values:?}");
                        checked.insert(resume);
                    }
                    (checked.len(), checked.last().copied())
                })
            })
            .collect();
        let (mut w0, mut w1) = (store.worker(0), store.worker(1));
        for epoch in 0..300u64 {
            for (i, key) in keys.iter().enumerate() {
                let w = if i < 50 { &mut w0 } else { &mut w1 };
                w.put(epoch, &counts, key, &epoch);
            }
            w0.hand_in(Some(epoch + 1)).unwrap();
            w1.hand_in(Some(epoch + 1)).unwrap();
            if epoch % 60 == 59 {
                store.sync().unwrap();
                store.db.flush_cf(store.cf(counts.index)).unwrap();
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        store.sync().unwrap();
        std::thread::sleep(crate::FOLLOW_INTERVAL * 3);
        done.store(true, Ordering::Relaxed);
        let seen: Vec<(usize, Option<u64>)> = readers.into_iter().map(|r| r.join().unwrap()).collect();
        // Both saw several commits while they were being written (the follower one per
        // reopen), and ended on the last.
        assert!(seen[0].0 >= 10 && seen[1].0 >= 2, "distinct epochs seen: {seen:?}");
        assert_eq!((seen[0].1, seen[1].1), (Some(300), Some(300)));
    }

    #[test]
    fn removing_a_key_written_in_the_same_open_epoch_stages_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 1);
        let counts = store.table::<U64Codec>("counts").unwrap();
        let mut w = store.worker(0);
        w.put(3, &counts, b"tmp", &1);
        w.remove_written(3, 3, &counts, b"tmp");
        assert_eq!(w.get(&counts, b"tmp").unwrap(), None);
        assert_eq!(w.hand_in(Some(4)).unwrap(), Some(4));
        store.sync().unwrap();
        assert_eq!(store.last_commit().unwrap().changes, 0);
    }

    #[test]
    fn range_deletes_apply_in_epoch_order_before_the_epochs_puts() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 1);
        let counts = store.table::<U64Codec>("counts").unwrap();
        let mut w = store.worker(0);
        w.put(0, &counts, b"k5", &5);
        w.put(1, &counts, b"k7", &7);
        w.delete_range(1, &counts, b"k0", b"k6");
        w.put(2, &counts, b"k3", &3);
        w.put_blind(2, &counts, b"k4", vec![0, 0, 0, 0, 0, 0, 0, 4]);
        assert_eq!(w.get(&counts, b"k4").unwrap(), None, "blind puts are not read back before commit");
        w.hand_in(Some(3)).unwrap();
        store.sync().unwrap();
        let view = StateReader::new(Arc::clone(&store)).view();
        let snap = view.snapshot();
        assert_eq!(snap.get(&counts, b"k5").unwrap(), None, "deleted by epoch 1's range");
        assert_eq!(snap.get(&counts, b"k7").unwrap(), Some(7));
        assert_eq!(snap.get(&counts, b"k3").unwrap(), Some(3), "written after the range deletion");
        assert_eq!(snap.get(&counts, b"k4").unwrap(), Some(4));
    }

    #[test]
    fn a_directory_of_another_layout_is_refused_with_advice() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path(), 1);
            let meta = store.db.cf_handle(META_CF).unwrap();
            store.db.put_cf(meta, KEY_LAYOUT, b"sluice-state/0").unwrap();
        }
        let err = StateStore::open(dir.path(), &tables(), 1, &StateOptions::default()).unwrap_err();
        assert!(err.to_string().contains("written by another version of sluice; delete it to start over"), "{err}");
    }
}
