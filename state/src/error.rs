//! The error type of sluice-state.

use std::path::PathBuf;

/// Everything that can go wrong in the state layer.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// RocksDB itself failed (I/O, corruption, a lock held by another process).
    /// A retry does not help unless the cause (disk full, lock) goes away.
    #[error("RocksDB error in {path}: {source}")]
    Rocks {
        /// The state directory.
        path: PathBuf,
        /// The RocksDB error.
        #[source]
        source: rocksdb::Error,
    },
    /// RocksDB found the state directory corrupt (a truncated or damaged table file, a missing
    /// file, a checksum mismatch). Nothing is read from it: resuming from a damaged state could
    /// produce wrong output.
    #[error(
        "the state directory {path} is corrupt ({detail}); sluice will not resume from it. Restore its newest checkpoint (`sluice checkpoint list` shows them, `sluice checkpoint restore` restores one), or the directory from a backup, or move it aside and run again: a run without state reads its sources from the beginning and rewrites its file sinks"
    )]
    Corrupt {
        /// The state directory.
        path: PathBuf,
        /// What RocksDB reported.
        detail: String,
    },
    /// A stored value could not be decoded by its table's codec: the state directory was
    /// written by an incompatible version, or is corrupt.
    #[error("table `{table}`: cannot decode stored value: {reason}")]
    Codec {
        /// The table.
        table: String,
        /// What was wrong.
        reason: String,
    },
    /// A commit could not be written (disk full, I/O error): nothing of that batch is
    /// committed, and the pipeline must stop committing. Retrying helps once the cause is fixed;
    /// a restart resumes from the last successful commit.
    #[error("commit failed: {0}")]
    CommitFailed(String),
    /// A table was used that the store was not opened with.
    #[error("table `{0}` was not declared when the state store was opened")]
    UnknownTable(String),
    /// The state directory belongs to an incompatible layout or configuration.
    #[error("state directory {path} is not usable: {reason}")]
    Incompatible {
        /// The state directory.
        path: PathBuf,
        /// What does not match, and what to do.
        reason: String,
    },
}

impl StateError {
    pub(crate) fn rocks(path: &std::path::Path, source: rocksdb::Error) -> Self {
        if source.kind() == rocksdb::ErrorKind::Corruption {
            return StateError::Corrupt { path: path.to_path_buf(), detail: source.into_string() };
        }
        StateError::Rocks { path: path.to_path_buf(), source }
    }
}
