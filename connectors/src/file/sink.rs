//! Writes one output stream to one JSONL file, committed per epoch.
//!
//! All lines go to worker 0, which writes an epoch once it is complete, sorted by each line's
//! key (so the file is the same for any number of workers), then flushes and fsyncs the file
//! and stages its new length in the table `sink_positions`. The epoch's state commit therefore
//! records how long the file is after that epoch. On start, the file is cut back to its
//! committed length: lines of epochs that were written but never committed (a crash between
//! the write and the commit) are removed, and those epochs are produced again. A crash never
//! leaves half an epoch in the committed part of a file.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use sluice_operators::epoch::{concat, EpochStash, HeldCapabilities};
use sluice_operators::Epoch;
use sluice_state::protocol::failpoint;
use sluice_state::{Table, TableSpec, U64Codec, WorkerState};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::Stream;

use crate::sink::OutputLine;
use crate::ConnectorError;

/// The table of committed output lengths: sink name to bytes.
pub const SINK_TABLE: &str = "sink_positions";

/// The tables file sinks declare.
pub fn tables() -> Vec<TableSpec> {
    vec![TableSpec::new(SINK_TABLE)]
}

struct Output {
    path: PathBuf,
    file: BufWriter<File>,
    length: u64,
}

fn open_output(path: &Path, committed: u64) -> Result<Output, ConnectorError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| ConnectorError::io("cannot create the directory of", path, e))?;
    }
    let file = OpenOptions::new().create(true).truncate(false).read(true).write(true).open(path).map_err(|e| ConnectorError::io("cannot open", path, e))?;
    let actual = file.metadata().map_err(|e| ConnectorError::io("cannot stat", path, e))?.len();
    if actual < committed {
        return Err(ConnectorError::OutputTruncated { path: path.to_path_buf(), committed, actual });
    }
    if actual > committed {
        tracing::info!(path = %path.display(), removed_bytes = actual - committed, "removing output of uncommitted epochs");
        file.set_len(committed).map_err(|e| ConnectorError::io("cannot truncate", path, e))?;
    }
    let mut file = BufWriter::with_capacity(1 << 20, file);
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(committed)).map_err(|e| ConnectorError::io("cannot seek in", path, e))?;
    Ok(Output { path: path.to_path_buf(), file, length: committed })
}

/// Writes `lines` to `path`; `name` identifies the sink in the state (use the stream name).
/// Returns the operator's (empty) output, to be probed: the sink's epoch is done when it passes.
///
/// # Errors
/// The file cannot be opened, or is shorter than committed.
pub fn file_sink<'scope>(
    lines: Stream<'scope, Epoch, Vec<OutputLine>>,
    name: &str,
    path: &Path,
    state: Rc<RefCell<WorkerState>>,
) -> Result<Stream<'scope, Epoch, Vec<()>>, ConnectorError> {
    let table: Table<U64Codec> = state.borrow().store().table(SINK_TABLE)?;
    let key = format!("file:{name}");
    let mut output = if lines.scope().index() == 0 {
        let committed = state.borrow_mut().get(&table, key.as_bytes())?.unwrap_or(0);
        Some(open_output(path, committed)?)
    } else {
        None
    };
    let stream = lines.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(Exchange::new(|_: &OutputLine| 0), "FileSink", move |cap, _info| {
        // Held at the input frontier, so that the probe after the sink passes an epoch only
        // once the sink has written it and staged its length.
        let mut held = HeldCapabilities::new(vec![cap]);
        let mut pending: EpochStash<Vec<Vec<OutputLine>>> = EpochStash::new();
        move |(input, frontier), _output| {
            input.for_each_stamp(|cap, data| {
                let slot = pending.at(*cap.least().expect("invariant: an input stamp has a time"));
                for batch in data {
                    slot.push(std::mem::take(batch));
                }
            });
            let frontier = frontier.frontier().first().copied();
            let Some(out) = output.as_mut() else {
                held.downgrade(frontier);
                return;
            };
            let mut wrote = false;
            while let Some((epoch, chunks)) = pending.pop_complete(frontier) {
                let mut lines = concat(chunks);
                lines.sort_unstable();
                for line in &lines {
                    let written = out.file.write_all(&line.bytes).and_then(|()| out.file.write_all(b"\n"));
                    if let Err(e) = written {
                        panic!("file sink {}: cannot write: {e}; the epoch is not committed and will be produced again after a restart", out.path.display());
                    }
                    out.length += line.bytes.len() as u64 + 1;
                }
                // Each epoch records its own end, so a commit of any prefix of epochs is exact.
                state.borrow_mut().put(epoch, &table, key.as_bytes(), &out.length);
                wrote = true;
            }
            if wrote {
                let flushed = out.file.flush();
                failpoint("sink.file.written");
                let synced = flushed.and_then(|()| out.file.get_ref().sync_data());
                if let Err(e) = synced {
                    panic!("file sink {}: cannot sync: {e}; the epoch is not committed and will be produced again after a restart", out.path.display());
                }
                failpoint("sink.file.synced");
            }
            held.downgrade(frontier);
        }
    });
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_beyond_the_committed_length_is_cut_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out/f.jsonl");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"committed\nnot committed\n").unwrap();
        let mut out = open_output(&path, 10).unwrap();
        out.file.write_all(b"next\n").unwrap();
        out.file.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "committed\nnext\n");
    }

    #[test]
    fn a_file_shorter_than_committed_is_an_error_not_a_silent_loss() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.jsonl");
        std::fs::write(&path, b"abc\n").unwrap();
        let err = open_output(&path, 100).err().unwrap().to_string();
        assert!(err.contains("has 4 bytes but 100 were committed"), "{err}");
    }
}
