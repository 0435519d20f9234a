//! JSONL files: a source reading one file per partition, and a sink writing one file per
//! output stream, committed per epoch.
//!
//! | file | what it owns |
//! |---|---|
//! | `config.rs` | [`FileSourceConfig`], [`FileSinkConfig`] |
//! | `source.rs` | [`FileReader`]: lines of a file, by byte offset |
//! | `identity.rs` | which file a committed position was read from |
//! | `sink.rs` | [`file_sink`]: sorted, fsync'd, length-committed JSONL output |

mod config;
mod identity;
mod sink;
mod source;

pub use config::{AtEof, FileSinkConfig, FileSourceConfig, OnChange};
pub use sink::{file_sink, tables as sink_tables, SINK_TABLE};
pub use source::FileReader;

#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use sluice_operators::Epoch;
use sluice_state::WorkerState;
use timely::dataflow::Stream;

use crate::connector::{parse_sink, parse_source, Sink, SinkKind, Source, SourceKind};
use crate::sink::{DeliveryState, OutputLine};
use crate::source::TimeOfFactory;
use crate::{ConnectorError, PartitionReader};

/// The `file` source's registry line.
pub const SOURCE: SourceKind = SourceKind {
    kind: "file",
    about: "JSONL files, one partition per file; as fast as possible or paced by event time",
    parse: parse_source::<FileSourceConfig>,
};

/// The `file` sink's registry line.
pub const SINK: SinkKind = SinkKind {
    kind: "file",
    about: "one JSONL file per output stream, sorted and committed per epoch",
    parse: parse_sink::<FileSinkConfig>,
    tables: sink_tables,
};

impl Source for FileSourceConfig {
    fn name(&self) -> &str {
        &self.name
    }

    fn validate(&self, key: &str) -> Result<(), ConnectorError> {
        FileSourceConfig::validate(self, key)
    }

    fn resolve_paths(&mut self, fix: &dyn Fn(&mut PathBuf)) {
        self.paths.iter_mut().for_each(fix);
        if let Some(p) = self.path.as_mut() {
            fix(p);
        }
    }

    fn default_under(&mut self, state_dir: &std::path::Path) {
        self.state_dir = Some(state_dir.to_path_buf());
    }

    fn partitions(&self) -> usize {
        self.files().len()
    }

    fn reader(&self, partition: usize, time_of: Option<TimeOfFactory>) -> Box<dyn PartitionReader> {
        let mut reader = FileReader::new(&self.name, &self.files()[partition], self.at_eof, self.line_bytes_max);
        if let Some(dir) = &self.state_dir {
            reader = reader.keeping_identity(dir, &self.name, self.on_change);
        }
        match (self.pace_speedup, time_of) {
            (Some(speedup), Some(factory)) => Box::new(reader.paced(speedup, factory())),
            _ => Box::new(reader),
        }
    }
}

impl Sink for FileSinkConfig {
    fn stream(&self) -> &str {
        &self.stream
    }

    fn describe(&self) -> String {
        format!("{} -> {}", self.stream, self.path.display())
    }

    fn destination(&self) -> String {
        self.path.display().to_string()
    }

    fn file(&self) -> Option<&std::path::Path> {
        Some(&self.path)
    }

    fn validate(&self, _key: &str) -> Result<(), ConnectorError> {
        Ok(())
    }

    fn exclusive(&self) -> Vec<(&'static str, String)> {
        vec![("path", self.path.display().to_string())]
    }

    fn resolve_paths(&mut self, fix: &dyn Fn(&mut PathBuf)) {
        fix(&mut self.path);
    }

    fn build<'scope>(
        &self,
        lines: Stream<'scope, Epoch, Vec<OutputLine>>,
        state: Rc<RefCell<WorkerState>>,
        _delivery: Option<Arc<DeliveryState>>,
    ) -> Result<Stream<'scope, Epoch, Vec<()>>, ConnectorError> {
        file_sink(lines, &self.stream, &self.path, state)
    }
}
