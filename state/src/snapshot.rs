//! Consistent reads from any thread while the dataflow writes — in the pipeline's process
//! ([`StateReader::new`]) or in another one that follows the state directory
//! ([`StateReader::follow`], a RocksDB secondary instance).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rocksdb::{Options, SnapshotWithThreadMode, DB};

use crate::codec::{decode_in, Codec, I64Codec, U64Codec};
use crate::store::{StateStore, KEY_COMMITTED_AT_MS, KEY_LAYOUT, KEY_RESUME_EPOCH, LAYOUT, META_CF};
use crate::table::Table;
use crate::{Epoch, StateError};

/// Followers opened by this process, to name their directories apart.
static FOLLOWERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How often a follower catches up with the pipeline's writes.
pub const FOLLOW_INTERVAL: Duration = Duration::from_millis(100);

/// A cloneable, `Send + Sync` read handle on a state directory, for the feature server and
/// tools.
#[derive(Clone)]
pub struct StateReader {
    db: Arc<DB>,
    path: PathBuf,
    /// Set when the reader was built by [`StateReader::follow`]: stops its catch-up thread
    /// when the last clone is dropped.
    _follower: Option<Arc<Follower>>,
}

impl std::fmt::Debug for StateReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateReader").field("path", &self.path).field("follower", &self._follower.is_some()).finish()
    }
}

/// The catch-up thread and the secondary instance's own directory.
struct Follower {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    own_dir: PathBuf,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.own_dir);
    }
}

impl StateReader {
    /// A reader of `store`, in the pipeline's process.
    pub fn new(store: Arc<StateStore>) -> Self {
        StateReader { db: Arc::clone(&store.db), path: store.path.clone(), _follower: None }
    }

    /// A reader of the state directory at `path` from another process: a RocksDB secondary
    /// instance that never writes there, and catches up with the pipeline's commits every
    /// [`FOLLOW_INTERVAL`] while one runs (whole commits only: a commit is one write batch).
    /// It works as well with no pipeline running, on the last committed state.
    ///
    /// # Errors
    /// The directory is not a sluice state directory (missing, or of another layout).
    pub fn follow(path: &Path) -> Result<Self, StateError> {
        let incompatible = |reason: String| StateError::Incompatible { path: path.into(), reason };
        if !path.join("CURRENT").exists() {
            return Err(incompatible("there is no state here: run the pipeline first (or check `state_dir`)".into()));
        }
        let mut options = Options::default();
        options.set_max_open_files(-1);
        let mut names = DB::list_cf(&options, path).map_err(|e| StateError::rocks(path, e))?;
        // A pipeline creating the directory adds its tables just after creating it.
        for _ in 0..20 {
            if names.iter().any(|n| n == META_CF) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
            names = DB::list_cf(&options, path).map_err(|e| StateError::rocks(path, e))?;
        }
        if !names.iter().any(|n| n == META_CF) {
            return Err(incompatible("no sluice commit record: this is not a sluice state directory".into()));
        }
        let own_dir = std::env::temp_dir().join(format!("sluice-follower-{}-{}", std::process::id(), FOLLOWERS.fetch_add(1, Ordering::Relaxed)));
        let db = DB::open_cf_as_secondary(&options, path, &own_dir, &names).map_err(|e| StateError::rocks(path, e))?;
        let meta = db.cf_handle(META_CF).expect("invariant: listed and opened");
        let mut layout = db.get_cf(meta, KEY_LAYOUT).map_err(|e| StateError::rocks(path, e))?;
        // A pipeline creating the directory writes the layout just after creating it.
        for _ in 0..20 {
            if layout.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
            let _ = db.try_catch_up_with_primary();
            layout = db.get_cf(meta, KEY_LAYOUT).map_err(|e| StateError::rocks(path, e))?;
        }
        if layout.as_deref() != Some(LAYOUT) {
            let _ = std::fs::remove_dir_all(&own_dir);
            return Err(incompatible(format!(
                "layout `{}` is not `{}`: written by another version of sluice",
                String::from_utf8_lossy(&layout.unwrap_or_default()),
                String::from_utf8_lossy(LAYOUT)
            )));
        }
        let db = Arc::new(db);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("sluice-follow".into())
            .spawn({
                let db = Arc::clone(&db);
                let stop = Arc::clone(&stop);
                let path = path.to_path_buf();
                move || {
                    let mut failing = false;
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(FOLLOW_INTERVAL);
                        match db.try_catch_up_with_primary() {
                            Ok(()) => failing = false,
                            Err(e) if !failing => {
                                failing = true;
                                tracing::warn!(state = %path.display(), error = %e, "cannot catch up with the pipeline's state; serving the last state read");
                            }
                            Err(_) => {}
                        }
                    }
                }
            })
            .map_err(|e| incompatible(format!("cannot start the follower thread: {e}")))?;
        Ok(StateReader { db, path: path.to_path_buf(), _follower: Some(Arc::new(Follower { stop, thread: Some(thread), own_dir })) })
    }

    /// A typed handle for reading table `name` through this reader's snapshots (not for
    /// writing: it carries no index among a store's declared tables).
    ///
    /// # Errors
    /// [`StateError::UnknownTable`] if the state holds no such table.
    pub fn table<C: Codec>(&self, name: &str) -> Result<Table<C>, StateError> {
        self.db.cf_handle(name).ok_or_else(|| StateError::UnknownTable(name.to_string()))?;
        Ok(Table::new(usize::MAX, name))
    }

    /// A point-in-time view. Commits are whole epochs in one batch, so a snapshot sees every
    /// table as of one committed epoch.
    pub fn snapshot(&self) -> Snapshot<'_> {
        Snapshot { db: &self.db, path: &self.path, snapshot: self.db.snapshot() }
    }
}

/// A consistent view of the committed state.
pub struct Snapshot<'a> {
    db: &'a DB,
    path: &'a Path,
    snapshot: SnapshotWithThreadMode<'a, DB>,
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

    /// The wall time (ms since the Unix epoch) of the commit in view; `None` before the first.
    ///
    /// # Errors
    /// RocksDB read errors.
    pub fn committed_at_ms(&self) -> Result<Option<i64>, StateError> {
        self.meta::<I64Codec>(KEY_COMMITTED_AT_MS)
    }
}
