//! JSONL files: a source reading one file per partition, and a sink writing one file per
//! output stream, committed per epoch.
//!
//! | file | what it owns |
//! |---|---|
//! | `config.rs` | [`FileSourceConfig`], [`FileSinkConfig`] |
//! | `source.rs` | [`FileReader`]: lines of a file, by byte offset |
//! | `sink.rs` | [`file_sink`]: sorted, fsync'd, length-committed JSONL output |

mod config;
mod sink;
mod source;

pub use config::{AtEof, FileSinkConfig, FileSourceConfig};
pub use sink::{file_sink, tables as sink_tables, OutputLine, SINK_TABLE};
pub use source::{FileReader, TimeOf};

/// Makes a fresh event-time extractor (one per reader).
pub type TimeOfFactory = std::sync::Arc<dyn Fn() -> TimeOf + Send + Sync>;

#[cfg(test)]
mod tests;
