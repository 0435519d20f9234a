//! Configuration of the file source and sink.

use std::path::PathBuf;

use serde::Deserialize;

use crate::ConnectorError;

/// What a file source does at the end of its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AtEof {
    /// The partition is finished: the watermark moves past it, buffered events are released.
    #[default]
    Finish,
    /// Stop without finishing: a later run with the same state continues from here when the
    /// file has grown.
    Stop,
    /// Wait for the file to grow (tail it); the partition turns idle after the idle timeout.
    Follow,
}

/// What a file source does when a file is not the one its committed position was read from
/// (truncated, rewritten, replaced).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnChange {
    /// The run is refused, saying what differs and what to do.
    #[default]
    Refuse,
    /// The file is read from its start (records read before again are duplicates, dropped
    /// within the dedup TTL), with a warning.
    Restart,
}

/// `type = "file"` under `[[sources]]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// Source name.
    pub name: String,
    /// The JSONL files, one partition each (a single `path` is also accepted).
    #[serde(default)]
    pub paths: Vec<PathBuf>,
    /// One file.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// End-of-file behaviour.
    #[serde(default)]
    pub at_eof: AtEof,
    /// When a file is not the one read before.
    #[serde(default)]
    pub on_change: OnChange,
    /// Where the files' identities are kept (`<state_dir>`, set at start; none: not checked).
    #[serde(skip)]
    pub state_dir: Option<PathBuf>,
    /// Pace by event time at this speed-up (1.0 = real time); unset reads as fast as possible.
    #[serde(default)]
    pub pace_speedup: Option<f64>,
    /// Lines longer than this are cut (and then rejected by decode as oversized).
    #[serde(default = "default_line_bytes_max")]
    pub line_bytes_max: usize,
}

fn default_line_bytes_max() -> usize {
    16 << 20
}

impl FileSourceConfig {
    /// All files of the source.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files = self.paths.clone();
        files.extend(self.path.clone());
        files
    }

    /// Checks the config; `key` is where it sits (`sources[0]`).
    ///
    /// # Errors
    /// No file, a file that does not exist, a bad speed-up.
    pub fn validate(&self, key: &str) -> Result<(), ConnectorError> {
        let err = |k: &str, problem: String| ConnectorError::Config { key: format!("{key}.{k}"), problem };
        if self.files().is_empty() {
            return Err(err("path", "a file source needs `path` or `paths`".into()));
        }
        for f in self.files() {
            if !f.is_file() && self.at_eof != AtEof::Follow {
                return Err(err("path", format!("{} is not a readable file", f.display())));
            }
        }
        if let Some(s) = self.pace_speedup {
            if !(s.is_finite() && s > 0.0) {
                return Err(err("pace_speedup", format!("{s} must be a positive number")));
            }
        }
        if self.line_bytes_max == 0 {
            return Err(err("line_bytes_max", "must be at least 1".into()));
        }
        Ok(())
    }
}

/// `[[sinks]]`: one output stream to one JSONL file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// The stream: `features`, `dead_letters`, `late` or `conflicts`.
    pub stream: String,
    /// The output file.
    pub path: PathBuf,
}
