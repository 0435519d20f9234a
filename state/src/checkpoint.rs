//! Checkpoints: copies of the committed state, kept to restore from when the live state
//! directory cannot be trusted.
//!
//! A checkpoint is taken by the commit thread right after a commit, so it holds whole epochs:
//! RocksDB flushes the memtables and hard-links the table files into
//! `<state>/checkpoints/epoch-<E>.tmp` (E: the last committed epoch). A background thread then
//! replaces each link by a file of its own — shared with the previous checkpoint when that one
//! has the same table file, a copy otherwise — so that damage to a live file (a disk error, a
//! truncation) does not reach the checkpoints. Then the marker file `SLUICE_CHECKPOINT` is
//! written and synced, and the directory is renamed to `epoch-<E>`. A crash part-way leaves a
//! `.tmp` directory: such a *half-written* checkpoint is listed as incomplete, never restored
//! from, and removed at the next start.
//!
//! Restoring moves the live state's database files aside (to `<state>/corrupt-<ms>/`, with the
//! checkpoints newer than the one restored) and copies the checkpoint's files in; a run then
//! resumes at the checkpoint's epoch: file sinks are cut
//! back to the checkpoint's lengths and the epochs after it are produced again. Sources must
//! still hold the data after the checkpoint's positions, and from there back to the oldest
//! event the order buffer held at the checkpoint (it is read again, see `order.rs` in the
//! operators; files, webhook logs and Kafka topics within retention do; a PostgreSQL slot
//! already advanced past them does not).

use std::path::{Path, PathBuf};

use crate::{Epoch, StateError};

/// The directory of a state directory's checkpoints.
pub fn checkpoints_dir(state: &Path) -> PathBuf {
    state.join("checkpoints")
}

/// The marker written last into a complete checkpoint.
const MARKER: &str = "SLUICE_CHECKPOINT";

/// One checkpoint directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointEntry {
    /// Its directory.
    pub path: PathBuf,
    /// The last epoch it holds.
    pub epoch: Epoch,
    /// When it was taken (ms since the Unix epoch), from its marker.
    pub created_ms: Option<i64>,
    /// False for a half-written checkpoint (a crash while it was taken): never restored.
    pub complete: bool,
}

fn io(path: &Path, what: &str, e: std::io::Error) -> StateError {
    StateError::Incompatible { path: path.to_path_buf(), reason: format!("{what}: {e}") }
}

/// The checkpoints of the state directory `state`, oldest first.
///
/// # Errors
/// The checkpoints directory cannot be read.
pub fn list(state: &Path) -> Result<Vec<CheckpointEntry>, StateError> {
    let dir = checkpoints_dir(state);
    let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io(&dir, "cannot list the checkpoints", e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("epoch-") else { continue };
        let (number, tmp) = match rest.strip_suffix(".tmp") {
            Some(n) => (n, true),
            None => (rest, false),
        };
        let Ok(epoch) = number.parse::<Epoch>() else { continue };
        let marker = std::fs::read_to_string(entry.path().join(MARKER)).ok();
        let created_ms = marker.as_deref().and_then(|m| serde_json::from_str::<serde_json::Value>(m).ok()).and_then(|v| v["created_ms"].as_i64());
        out.push(CheckpointEntry { path: entry.path(), epoch, created_ms, complete: !tmp && created_ms.is_some() });
    }
    out.sort_by_key(|c| (c.epoch, c.complete));
    Ok(out)
}

/// Removes the half-written checkpoints of `state` (a crash while one was taken), at start.
pub(crate) fn remove_half_written(state: &Path) {
    for c in list(state).unwrap_or_default().into_iter().filter(|c| !c.complete) {
        tracing::warn!(checkpoint = %c.path.display(), "removing a half-written checkpoint (the process stopped while taking it)");
        if let Err(e) = std::fs::remove_dir_all(&c.path) {
            tracing::warn!(checkpoint = %c.path.display(), error = %e, "cannot remove a half-written checkpoint");
        }
    }
}

/// Links the files of a checkpoint of `db` (whose last committed epoch is `epoch`) into
/// `state`'s checkpoints directory, as `epoch-<E>.tmp`. Returns its path, or `None` if that
/// checkpoint exists already. Called on the commit thread: no commit is written meanwhile.
pub(crate) fn link(db: &rocksdb::DB, state: &Path, epoch: Epoch) -> Result<Option<PathBuf>, StateError> {
    let dir = checkpoints_dir(state);
    std::fs::create_dir_all(&dir).map_err(|e| io(&dir, "cannot create the checkpoints directory", e))?;
    if dir.join(format!("epoch-{epoch}")).exists() {
        return Ok(None);
    }
    let tmp = dir.join(format!("epoch-{epoch}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io(&tmp, "cannot remove a half-written checkpoint", e))?;
    }
    let checkpoint = rocksdb::checkpoint::Checkpoint::new(db).map_err(|e| StateError::rocks(state, e))?;
    checkpoint.create_checkpoint(&tmp).map_err(|e| StateError::rocks(state, e))?;
    Ok(Some(tmp))
}

/// Finishes the linked checkpoint `tmp` of `epoch` (off the commit thread): gives each table
/// file its own copy (shared with the newest complete checkpoint where that has the same file),
/// writes the marker, names it, and keeps the newest `keep` complete checkpoints.
pub(crate) fn complete(state: &Path, tmp: &Path, epoch: Epoch, keep: usize) -> Result<PathBuf, StateError> {
    let result = finish(state, tmp, epoch, keep);
    if result.is_err() {
        // Not left half-written, taking space (the likely failure is a full disk).
        let _ = std::fs::remove_dir_all(tmp);
    }
    result
}

fn finish(state: &Path, tmp: &Path, epoch: Epoch, keep: usize) -> Result<PathBuf, StateError> {
    let dir = checkpoints_dir(state);
    let previous = list(state)?.into_iter().rev().find(|c| c.complete);
    // Listed first: the loop adds and renames files in the directory.
    let entries: Vec<std::fs::DirEntry> = std::fs::read_dir(tmp).and_then(Iterator::collect).map_err(|e| io(tmp, "cannot list", e))?;
    for entry in entries {
        let path = entry.path();
        let metadata = entry.metadata().map_err(|e| io(&path, "cannot stat", e))?;
        let sst = path.extension().is_some_and(|e| e == "sst");
        // RocksDB links table files and option files into the checkpoint; the rest are copies.
        if !sst && std::os::unix::fs::MetadataExt::nlink(&metadata) < 2 {
            continue;
        }
        let len = metadata.len();
        let shared = previous.as_ref().filter(|_| sst).map(|p| p.path.join(entry.file_name())).filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() == len));
        let fresh = tmp.join(format!("{}.own", entry.file_name().to_string_lossy()));
        match shared {
            Some(older) => std::fs::hard_link(&older, &fresh).map_err(|e| io(&fresh, "cannot link", e))?,
            None => {
                std::fs::copy(&path, &fresh).map_err(|e| io(&fresh, "cannot copy", e))?;
                std::fs::File::open(&fresh).and_then(|f| f.sync_all()).map_err(|e| io(&fresh, "cannot sync", e))?;
            }
        }
        std::fs::rename(&fresh, &path).map_err(|e| io(&path, "cannot replace", e))?;
    }
    crate::protocol::failpoint("checkpoint.files");
    let final_path = dir.join(format!("epoch-{epoch}"));
    let created_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let marker = serde_json::json!({ "epoch": epoch, "created_ms": created_ms, "layout": String::from_utf8_lossy(crate::layout::LAYOUT) }).to_string();
    let marker_path = tmp.join(MARKER);
    // (the marker is written only into a checkpoint whose files are all its own)
    std::fs::write(&marker_path, marker).map_err(|e| io(&marker_path, "cannot write the checkpoint marker", e))?;
    std::fs::File::open(&marker_path).and_then(|f| f.sync_all()).map_err(|e| io(&marker_path, "cannot sync the checkpoint marker", e))?;
    std::fs::rename(tmp, &final_path).map_err(|e| io(&final_path, "cannot name the checkpoint", e))?;
    std::fs::File::open(&dir).and_then(|f| f.sync_all()).map_err(|e| io(&dir, "cannot sync the checkpoints directory", e))?;
    // Keep the newest `keep` complete ones; half-written ones go (the new one is complete).
    let all = list(state)?;
    let complete: Vec<&CheckpointEntry> = all.iter().filter(|c| c.complete).collect();
    let old = complete.len().saturating_sub(keep.max(1));
    for c in complete.iter().take(old).copied().chain(all.iter().filter(|c| !c.complete && c.path != tmp)) {
        if let Err(e) = std::fs::remove_dir_all(&c.path) {
            tracing::warn!(checkpoint = %c.path.display(), error = %e, "cannot remove an old checkpoint");
        }
    }
    Ok(final_path)
}

/// True if the database files of the state directory are locked by a running pipeline.
#[allow(unsafe_code)]
fn locked(state: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(file) = std::fs::OpenOptions::new().read(true).write(true).open(state.join("LOCK")) else { return false };
    // SAFETY: a zeroed flock is a valid value of the plain C struct, and fcntl reads and
    // writes only that struct for F_GETLK.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: `file` is open for the duration of the call; `lock` is a valid flock.
    let result = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut lock) };
    result == 0 && lock.l_type != libc::F_UNLCK as libc::c_short
}

/// Replaces the database files of the state directory `state` by those of `checkpoint`; the
/// replaced files are moved to `<state>/corrupt-<ms>/`. Returns that directory.
///
/// # Errors
/// A pipeline holds the state; the checkpoint is half-written; file operations fail.
pub fn restore(state: &Path, checkpoint: &CheckpointEntry) -> Result<PathBuf, StateError> {
    if !checkpoint.complete {
        return Err(StateError::Incompatible { path: checkpoint.path.clone(), reason: "a half-written checkpoint cannot be restored".into() });
    }
    if locked(state) {
        return Err(StateError::Incompatible { path: state.to_path_buf(), reason: "a running pipeline holds this state; stop it first".into() });
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let aside = state.join(format!("corrupt-{now}"));
    std::fs::create_dir_all(&aside).map_err(|e| io(&aside, "cannot create", e))?;
    // The database files are the regular files at the top of the state directory (webhook
    // logs, checkpoints and earlier set-aside copies are directories).
    for entry in std::fs::read_dir(state).map_err(|e| io(state, "cannot list", e))? {
        let entry = entry.map_err(|e| io(state, "cannot list", e))?;
        if entry.file_type().map_err(|e| io(&entry.path(), "cannot stat", e))?.is_file() {
            std::fs::rename(entry.path(), aside.join(entry.file_name())).map_err(|e| io(&entry.path(), "cannot move aside", e))?;
        }
    }
    for entry in std::fs::read_dir(&checkpoint.path).map_err(|e| io(&checkpoint.path, "cannot list", e))? {
        let entry = entry.map_err(|e| io(&checkpoint.path, "cannot list", e))?;
        if entry.file_name() == MARKER {
            continue;
        }
        // Copies, not links: the restored state must not share files with the checkpoint.
        let target = state.join(entry.file_name());
        std::fs::copy(entry.path(), &target).map_err(|e| io(&target, "cannot copy the checkpoint's file", e))?;
        std::fs::File::open(&target).and_then(|f| f.sync_all()).map_err(|e| io(&target, "cannot sync", e))?;
    }
    // Checkpoints newer than the restored one belong to the abandoned history (and could name
    // table files the restored state will create anew): aside too.
    for newer in list(state)?.into_iter().filter(|c| c.epoch > checkpoint.epoch) {
        let name = newer.path.file_name().expect("invariant: listed entries have names").to_owned();
        std::fs::rename(&newer.path, aside.join(name)).map_err(|e| io(&newer.path, "cannot move aside", e))?;
    }
    std::fs::File::open(state).and_then(|f| f.sync_all()).map_err(|e| io(state, "cannot sync", e))?;
    Ok(aside)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::{StateOptions, StateStore, TableSpec, U64Codec};

    #[test]
    fn a_checkpoint_has_files_of_its_own_and_restores_its_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let tables = [TableSpec::new("counts")];
        {
            let store = StateStore::open(dir.path(), &tables, 1, &StateOptions::default()).unwrap();
            let counts = store.table::<U64Codec>("counts").unwrap();
            let mut w = store.worker(0);
            w.put(0, &counts, b"k", &1);
            w.hand_in(Some(1)).unwrap();
            store.sync().unwrap();
            let tmp = link(&store.db, dir.path(), 0).unwrap().unwrap();
            assert!(!list(dir.path()).unwrap()[0].complete, "linked, not yet complete");
            let done = complete(dir.path(), &tmp, 0, 2).unwrap();
            assert_eq!(done, checkpoints_dir(dir.path()).join("epoch-0"));
            // No table file of the checkpoint is a live file.
            for entry in std::fs::read_dir(&done).unwrap() {
                let entry = entry.unwrap();
                if let Ok(live) = std::fs::metadata(dir.path().join(entry.file_name())) {
                    assert_ne!(live.ino(), entry.metadata().unwrap().ino(), "{:?} shared with the live state", entry.file_name());
                }
            }
            w.put(1, &counts, b"k", &2);
            w.hand_in(Some(2)).unwrap();
            store.sync().unwrap();
        }
        let entries = list(dir.path()).unwrap();
        assert_eq!(entries.iter().map(|c| (c.epoch, c.complete)).collect::<Vec<_>>(), vec![(0, true)]);
        let aside = restore(dir.path(), &entries[0]).unwrap();
        assert!(aside.join("CURRENT").exists(), "the replaced files are kept");
        let store = StateStore::open(dir.path(), &tables, 1, &StateOptions::default()).unwrap();
        assert_eq!(store.resume_epoch(), 1);
        let counts = store.table::<U64Codec>("counts").unwrap();
        assert_eq!(store.worker(0).get(&counts, b"k").unwrap(), Some(1));
    }

    #[test]
    fn a_half_written_checkpoint_is_listed_incomplete_and_removed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(checkpoints_dir(dir.path()).join("epoch-7.tmp")).unwrap();
        let entries = list(dir.path()).unwrap();
        assert_eq!(entries.len(), 1);
        assert!(!entries[0].complete);
        assert!(restore(dir.path(), &entries[0]).unwrap_err().to_string().contains("half-written"));
        drop(StateStore::open(dir.path(), &[TableSpec::new("counts")], 1, &StateOptions::default()).unwrap());
        assert!(list(dir.path()).unwrap().is_empty());
    }
}
