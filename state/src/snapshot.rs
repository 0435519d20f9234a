//! Consistent reads from any thread while the dataflow writes — in the pipeline's process
//! ([`StateReader::new`]) or in another one that follows the state directory
//! ([`StateReader::follow`], RocksDB secondary instances).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rocksdb::{Options, SnapshotWithThreadMode, DB};

use crate::codec::{decode_in, Codec, I64Codec, U64Codec};
use crate::layout::{KEY_COMMITTED_AT_MS, KEY_LAYOUT, KEY_RESUME_EPOCH, LAYOUT, META_CF};
use crate::store::StateStore;
use crate::table::Table;
use crate::{Epoch, StateError};

/// Followers' instances opened by this process, to name their directories apart.
static INSTANCES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How often a follower reopens its view of a running pipeline's state.
pub const FOLLOW_INTERVAL: Duration = Duration::from_millis(500);

/// A cloneable, `Send + Sync` read handle on a state directory, for the feature server and
/// tools.
#[derive(Clone)]
pub struct StateReader {
    source: Source,
}

#[derive(Clone)]
enum Source {
    Store(Arc<Instance>),
    Follower(Arc<Follower>),
}

impl std::fmt::Debug for StateReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, path) = match &self.source {
            Source::Store(i) => ("store", &i.path),
            Source::Follower(f) => ("follower", &f.path),
        };
        f.debug_struct("StateReader").field("kind", &kind).field("path", path).finish()
    }
}

/// One open RocksDB instance: the pipeline's own, or a follower's secondary with its own
/// directory.
pub struct Instance {
    // Field order matters: the DB closes before its directory is removed.
    db: Arc<DB>,
    path: PathBuf,
    _own_dir: Option<OwnDir>,
}

/// A secondary instance's own directory (its info log), removed when the instance closes.
struct OwnDir(PathBuf);

impl Drop for OwnDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The current instance and the thread that replaces it.
struct Follower {
    path: PathBuf,
    current: Arc<RwLock<Arc<Instance>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Opens a secondary instance of the state at `path`: at open it replays the pipeline's
/// manifest and logs, so it sees whole commits (a commit is one write batch), every table as
/// of the same one.
fn open_secondary(path: &Path) -> Result<Instance, StateError> {
    let incompatible = |reason: String| StateError::Incompatible { path: path.into(), reason };
    let mut options = Options::default();
    options.set_max_open_files(-1);
    let mut names = DB::list_cf(&options, path).map_err(|e| StateError::rocks(path, e))?;
    // A pipeline creating the directory adds its tables and the layout just after creating it.
    let mut tries = 0;
    loop {
        if names.iter().any(|n| n == META_CF) {
            let own_dir = std::env::temp_dir().join(format!("sluice-follower-{}-{}", std::process::id(), INSTANCES.fetch_add(1, Ordering::Relaxed)));
            let db = DB::open_cf_as_secondary(&options, path, &own_dir, &names).map_err(|e| StateError::rocks(path, e))?;
            let instance = Instance { db: Arc::new(db), path: path.to_path_buf(), _own_dir: Some(OwnDir(own_dir)) };
            let meta = instance.db.cf_handle(META_CF).expect("invariant: listed and opened");
            match instance.db.get_cf(meta, KEY_LAYOUT).map_err(|e| StateError::rocks(path, e))? {
                Some(layout) if layout == LAYOUT => return Ok(instance),
                Some(other) => {
                    return Err(incompatible(format!(
                        "layout `{}` is not `{}`: written by another version of sluice",
                        String::from_utf8_lossy(&other),
                        String::from_utf8_lossy(LAYOUT)
                    )))
                }
                None => {}
            }
        }
        tries += 1;
        if tries > 20 {
            return Err(incompatible("no sluice commit record: this is not a sluice state directory".into()));
        }
        std::thread::sleep(Duration::from_millis(50));
        names = DB::list_cf(&options, path).map_err(|e| StateError::rocks(path, e))?;
    }
}

impl StateReader {
    /// A reader of `store`, in the pipeline's process.
    pub fn new(store: Arc<StateStore>) -> Self {
        StateReader { source: Source::Store(Arc::new(Instance { db: Arc::clone(&store.db), path: store.path.clone(), _own_dir: None })) }
    }

    /// A reader of the state directory at `path` from another process, which never writes
    /// there: a RocksDB secondary instance, replaced by a freshly opened one every
    /// [`FOLLOW_INTERVAL`] (at most that far behind a running pipeline; with none running,
    /// the last committed state).
    ///
    /// Why reopen rather than `TryCatchUpWithPrimary`: catching up keeps entries replayed from
    /// a log the pipeline has since flushed in the secondary's memtable, where they shadow the
    /// newer flushed values (facebook/rocksdb#15051; this project's test of whole-epoch reads
    /// saw one table ten epochs behind another). A fresh open replays from the current manifest.
    ///
    /// # Errors
    /// The directory is not a sluice state directory (missing, or of another layout).
    pub fn follow(path: &Path) -> Result<Self, StateError> {
        if !path.join("CURRENT").exists() {
            return Err(StateError::Incompatible { path: path.into(), reason: "there is no state here: run the pipeline first (or check `state_dir`)".into() });
        }
        let current = Arc::new(RwLock::new(Arc::new(open_secondary(path)?)));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("sluice-follow".into())
            .spawn({
                let (current, stop, path) = (Arc::clone(&current), Arc::clone(&stop), path.to_path_buf());
                move || {
                    let mut failing = false;
                    let step = Duration::from_millis(20);
                    let mut waited = Duration::ZERO;
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(step);
                        waited += step;
                        if waited < FOLLOW_INTERVAL {
                            continue;
                        }
                        waited = Duration::ZERO;
                        match open_secondary(&path) {
                            Ok(fresh) => {
                                failing = false;
                                let old = std::mem::replace(&mut *current.write().expect("invariant: not poisoned"), Arc::new(fresh));
                                drop(old);
                            }
                            Err(e) if !failing => {
                                failing = true;
                                tracing::warn!(state = %path.display(), error = %e, "cannot reopen the pipeline's state; serving the last view");
                            }
                            Err(_) => {}
                        }
                    }
                }
            })
            .map_err(|e| StateError::Incompatible { path: path.into(), reason: format!("cannot start the follower thread: {e}") })?;
        Ok(StateReader { source: Source::Follower(Arc::new(Follower { path: path.to_path_buf(), current, stop, thread: Some(thread) })) })
    }

    fn instance(&self) -> Arc<Instance> {
        match &self.source {
            Source::Store(i) => Arc::clone(i),
            Source::Follower(f) => Arc::clone(&f.current.read().expect("invariant: not poisoned")),
        }
    }

    /// A typed handle for reading table `name` through this reader's snapshots (not for
    /// writing: it carries no index among a store's declared tables).
    ///
    /// # Errors
    /// [`StateError::UnknownTable`] if the state holds no such table.
    pub fn table<C: Codec>(&self, name: &str) -> Result<Table<C>, StateError> {
        self.instance().db.cf_handle(name).ok_or_else(|| StateError::UnknownTable(name.to_string()))?;
        Ok(Table::new(usize::MAX, name))
    }

    /// The current view: take snapshots of it ([`View::snapshot`]); it stays valid while held,
    /// even after a follower has moved on.
    pub fn view(&self) -> View {
        View { instance: self.instance() }
    }
}

/// The instance a reader reads at one moment.
pub struct View {
    instance: Arc<Instance>,
}

impl View {
    /// A point-in-time view. Commits are whole epochs in one batch, so a snapshot sees every
    /// table as of one committed epoch.
    pub fn snapshot(&self) -> Snapshot<'_> {
        Snapshot { db: &self.instance.db, path: &self.instance.path, snapshot: self.instance.db.snapshot(), secondary: self.instance._own_dir.is_some() }
    }

    /// Every table the state holds (declared by this run or not), with RocksDB's estimates of
    /// its size.
    ///
    /// # Errors
    /// RocksDB errors listing the tables.
    pub fn tables(&self) -> Result<Vec<TableInfo>, StateError> {
        let (db, path) = (&self.instance.db, &self.instance.path);
        let names = DB::list_cf(&Options::default(), path).map_err(|e| StateError::rocks(path, e))?;
        let mut out = Vec::new();
        for name in names.into_iter().filter(|n| n != "default" && n != META_CF) {
            let Some(cf) = db.cf_handle(&name) else { continue };
            let int = |p: &str| db.property_int_value_cf(cf, p).ok().flatten().unwrap_or(0);
            out.push(TableInfo {
                keys: int("rocksdb.estimate-num-keys"),
                sst_bytes: int("rocksdb.total-sst-files-size"),
                memtable_bytes: int("rocksdb.cur-size-all-mem-tables"),
                name,
            });
        }
        Ok(out)
    }
}

/// A table and RocksDB's estimates of its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    /// The table (column family) name.
    pub name: String,
    /// Estimated number of keys (deleted ones may still count until compacted).
    pub keys: u64,
    /// Bytes in SST files.
    pub sst_bytes: u64,
    /// Bytes in memtables (not yet flushed; in the WAL).
    pub memtable_bytes: u64,
}

/// A consistent view of the committed state.
pub struct Snapshot<'a> {
    db: &'a DB,
    path: &'a Path,
    snapshot: SnapshotWithThreadMode<'a, DB>,
    secondary: bool,
}

impl Snapshot<'_> {
    /// The value of `key` as of this snapshot.
    ///
    /// # Errors
    /// RocksDB read errors, or a stored value the codec cannot decode; a table the state
    /// does not hold.
    pub fn get<C: Codec>(&self, table: &Table<C>, key: &[u8]) -> Result<Option<C::Value>, StateError> {
        let cf = self.db.cf_handle(table.name()).ok_or_else(|| StateError::UnknownTable(table.name().to_string()))?;
        let raw = self.snapshot.get_cf(cf, key).map_err(|e| StateError::rocks(self.path, e))?;
        raw.map(|bytes| decode_in::<C>(table.name(), &bytes)).transpose()
    }

    /// The entries with keys in `[from, to)` as of this snapshot, in key order, at most
    /// `limit` of them.
    ///
    /// # Errors
    /// RocksDB read errors; a table the state does not hold.
    pub fn range<C: Codec>(&self, table: &Table<C>, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<crate::worker::Entry>, StateError> {
        let cf = self.db.cf_handle(table.name()).ok_or_else(|| StateError::UnknownTable(table.name().to_string()))?;
        let mut options = rocksdb::ReadOptions::default();
        // A secondary instance does not support snapshots in iterators; it never changes
        // after its open (followers reopen rather than catch up), so it needs none.
        if !self.secondary {
            options.set_snapshot(&self.snapshot);
        }
        options.set_iterate_upper_bound(to.to_vec());
        let mut out = Vec::new();
        for item in self.db.iterator_cf_opt(cf, options, rocksdb::IteratorMode::From(from, rocksdb::Direction::Forward)) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(|e| StateError::rocks(self.path, e))?;
            out.push((k.into_vec(), v.into_vec()));
        }
        Ok(out)
    }

    fn meta<C: Codec>(&self, key: &[u8]) -> Result<Option<C::Value>, StateError> {
        let meta = self.db.cf_handle(META_CF).expect("invariant: meta is open");
        let raw = self.snapshot.get_cf(meta, key).map_err(|e| StateError::rocks(self.path, e))?;
        raw.map(|bytes| decode_in::<C>(META_CF, &bytes)).transpose()
    }

    /// The epoch a restart would resume at, as of this snapshot: all epochs below it are in view.
    ///
    /// # Errors
    /// RocksDB read errors.
    pub fn resume_epoch(&self) -> Result<Epoch, StateError> {
        self.meta::<U64Codec>(KEY_RESUME_EPOCH).map(|e| e.unwrap_or(0))
    }

    /// The layout tag the directory was written with (`sluice-state/2`).
    ///
    /// # Errors
    /// RocksDB read errors.
    pub fn layout(&self) -> Result<Option<String>, StateError> {
        let meta = self.db.cf_handle(META_CF).expect("invariant: meta is open");
        let raw = self.snapshot.get_cf(meta, KEY_LAYOUT).map_err(|e| StateError::rocks(self.path, e))?;
        Ok(raw.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// The wall time (ms since the Unix epoch) of the commit in view; `None` before the first.
    ///
    /// # Errors
    /// RocksDB read errors.
    pub fn committed_at_ms(&self) -> Result<Option<i64>, StateError> {
        self.meta::<I64Codec>(KEY_COMMITTED_AT_MS)
    }
}
