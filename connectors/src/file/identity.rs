//! Which file a file partition's committed position was read from, so that a run does not go on
//! from a byte offset into another file (a truncated file read as "0 records", a replaced one read
//! from the middle of a line).
//!
//! The identity is the file's inode, and the length and xxh3 hash of its first bytes (up to
//! [`PREFIX_BYTES_MAX`], as many as had been read): appending keeps it, truncating or rewriting
//! changes it. It is kept in the state directory (`sources/<source>/<hash of the partition
//! name>.json`), recorded when the partition is first read and while its first 4 KiB fill, and
//! checked when a run resumes the partition at a committed position. It is written (and synced)
//! before the position it vouches for is committed, so a committed position always has one.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::file::config::OnChange;
use crate::ConnectorError;

/// Bytes of a file's start its identity covers, at most.
pub const PREFIX_BYTES_MAX: u64 = 4096;

/// A file's identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Identity {
    /// The path it was read at, for a person reading the state directory.
    path: PathBuf,
    /// The inode it had.
    inode: u64,
    /// Bytes of its start covered.
    prefix_bytes: u64,
    /// Their xxh3.
    prefix_xxh3: u64,
    /// Set when this file replaced another under `on_change = "restart"`: the position
    /// committed in the other file. Until a position of this file is committed, the state still
    /// holds that one, and a run that finds it (a crash in between) reads this file from its
    /// start again rather than at the other file's offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replaced_at: Option<u64>,
}

impl Identity {
    /// Of the open `file`, over its first `prefix_bytes` (which it has).
    fn of(path: &Path, file: &File, prefix_bytes: u64) -> std::io::Result<Identity> {
        let mut prefix = vec![0; prefix_bytes as usize];
        file.read_exact_at(&mut prefix, 0)?;
        Ok(Identity {
            path: path.to_path_buf(),
            inode: file.metadata()?.ino(),
            prefix_bytes,
            prefix_xxh3: xxhash_rust::xxh3::xxh3_64(&prefix),
            replaced_at: None,
        })
    }
}

/// The identity of one partition's file: where it is kept, what it says, what to do when the
/// file is another.
#[derive(Debug)]
pub struct Keeper {
    at: PathBuf,
    on_change: OnChange,
    recorded: Option<Identity>,
    /// The other file's committed position, while this one is read from its start in its place.
    replaced_at: Option<u64>,
}

/// What [`Keeper::resume`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Resume {
    /// Go on at the committed position.
    At(u64),
    /// The file changed and `on_change = "restart"`: read it from its start.
    FromStart,
}

impl Keeper {
    /// The keeper of partition `name` of source `source`, under `state_dir`.
    pub fn new(state_dir: &Path, source: &str, name: &str, on_change: OnChange) -> Keeper {
        let file = format!("{:016x}.json", xxhash_rust::xxh3::xxh3_64(name.as_bytes()));
        Keeper { at: state_dir.join("sources").join(source).join(file), on_change, recorded: None, replaced_at: None }
    }

    /// Checks that `path` is the file whose first `position` bytes were read and committed.
    ///
    /// # Errors
    /// It is not (and `on_change = "refuse"`), or the identity cannot be read.
    pub fn resume(&mut self, path: &Path, position: u64) -> Result<Resume, ConnectorError> {
        let recorded = match std::fs::read(&self.at) {
            Ok(bytes) => serde_json::from_slice::<Identity>(&bytes).map_err(|e| ConnectorError::Io {
                what: "cannot read the file identity",
                path: self.at.clone(),
                source: std::io::Error::other(e),
            })?,
            // A state written before identities were kept: recorded from now on, the length
            // checked meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let len = std::fs::metadata(path).map_err(|e| ConnectorError::io("cannot open", path, e))?.len();
                if len < position {
                    let why = format!("it has {len} bytes, fewer than the {position} read before: truncated or replaced");
                    return self.changed(path, position, why);
                }
                return Ok(Resume::At(position));
            }
            Err(e) => return Err(ConnectorError::io("cannot read the file identity", &self.at, e)),
        };
        if recorded.replaced_at == Some(position) {
            // Restarted in place of another file, and no position of it committed yet.
            tracing::info!(path = %path.display(), "a file restarted before any of it was committed: reading it from its start again");
            self.replaced_at = Some(position);
            self.recorded = None;
            return Ok(Resume::FromStart);
        }
        match Self::differs(&recorded, path, position) {
            Ok(None) => {
                if recorded.replaced_at.is_some() {
                    // A position of this file was committed since it replaced the other.
                    self.store(Identity { replaced_at: None, ..recorded })?;
                } else {
                    self.recorded = Some(recorded);
                }
                Ok(Resume::At(position))
            }
            Ok(Some(why)) => self.changed(path, position, why),
            Err(e) => Err(ConnectorError::io("cannot check", path, e)),
        }
    }

    /// `path` is not the file read before: refused, or read from its start.
    fn changed(&mut self, path: &Path, position: u64, why: String) -> Result<Resume, ConnectorError> {
        match self.on_change {
            OnChange::Refuse => Err(ConnectorError::FileChanged { path: path.to_path_buf(), position, why }),
            OnChange::Restart => {
                tracing::warn!(path = %path.display(), position, why, "not the file read before: reading it from its start (on_change = restart)");
                self.replaced_at = Some(position);
                self.recorded = None;
                Ok(Resume::FromStart)
            }
        }
    }

    /// Why `path` is not the file `recorded` was taken of, having `position` bytes read.
    fn differs(recorded: &Identity, path: &Path, position: u64) -> std::io::Result<Option<String>> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Some("the file is gone".into())),
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        let other = if meta.ino() == recorded.inode { String::new() } else { format!(" (another inode: {}, was {})", meta.ino(), recorded.inode) };
        let needed = position.max(recorded.prefix_bytes);
        if meta.len() < needed {
            return Ok(Some(format!("it has {} bytes, fewer than the {needed} read before: truncated or replaced{other}", meta.len())));
        }
        if Identity::of(path, &file, recorded.prefix_bytes)?.prefix_xxh3 != recorded.prefix_xxh3 {
            return Ok(Some(format!("its first {} bytes differ from those read before: replaced{other}", recorded.prefix_bytes)));
        }
        Ok(None)
    }

    /// Records the identity of the open `file` once `position` bytes of it are read, when that
    /// covers more of its start than what is recorded.
    ///
    /// # Errors
    /// The file cannot be read or the identity cannot be written.
    pub fn read_up_to(&mut self, path: &Path, file: &File, position: u64) -> Result<(), ConnectorError> {
        let prefix_bytes = position.min(PREFIX_BYTES_MAX);
        if prefix_bytes == 0 || self.recorded.as_ref().is_some_and(|r| r.prefix_bytes >= prefix_bytes) {
            return Ok(());
        }
        let mut identity = Identity::of(path, file, prefix_bytes).map_err(|e| ConnectorError::io("cannot read", path, e))?;
        identity.replaced_at = self.replaced_at;
        self.store(identity)
    }

    /// Writes `identity` (synced, then renamed into place) and keeps it as the recorded one.
    fn store(&mut self, identity: Identity) -> Result<(), ConnectorError> {
        let dir = self.at.parent().expect("invariant: the identity file is in a directory");
        std::fs::create_dir_all(dir).map_err(|e| ConnectorError::io("cannot create", dir, e))?;
        let text = serde_json::to_vec(&identity).expect("invariant: an identity serializes");
        let tmp = self.at.with_extension("json.tmp");
        let written = File::create(&tmp).and_then(|mut f| {
            std::io::Write::write_all(&mut f, &text)?;
            f.sync_all()
        });
        written.map_err(|e| ConnectorError::io("cannot write", &tmp, e))?;
        std::fs::rename(&tmp, &self.at).map_err(|e| ConnectorError::io("cannot write", &self.at, e))?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| ConnectorError::io("cannot sync", dir, e))?;
        self.recorded = Some(identity);
        Ok(())
    }
}
