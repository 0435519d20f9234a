//! Reads a JSONL file line by line; a line's offset is the byte where it starts.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::file::config::{AtEof, OnChange};
use crate::file::identity::{Keeper, Resume};
use crate::source::{Fetched, PartitionReader, ReadStatus, TimeOf};
use crate::ConnectorError;

/// A reader of one file.
pub struct FileReader {
    name: String,
    path: PathBuf,
    reader: Option<BufReader<File>>,
    position: u64,
    at_eof: AtEof,
    line_bytes_max: usize,
    pace: Option<(f64, TimeOf)>,
    /// (wall start, first event time) of pacing.
    pace_origin: Option<(Instant, i64)>,
    /// A record read ahead but held back by pacing.
    held: Option<(u64, Vec<u8>, u64)>,
    /// The file's identity, when kept.
    identity: Option<Keeper>,
}

impl std::fmt::Debug for FileReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileReader").field("path", &self.path).field("position", &self.position).finish()
    }
}

impl FileReader {
    /// A reader of `path` for source `source`.
    pub fn new(source: &str, path: &Path, at_eof: AtEof, line_bytes_max: usize) -> Self {
        FileReader {
            name: format!("file:{source}:{}", path.display()),
            path: path.to_path_buf(),
            reader: None,
            position: 0,
            at_eof,
            line_bytes_max,
            pace: None,
            pace_origin: None,
            held: None,
            identity: None,
        }
    }

    /// Keeps the file's identity under `state_dir` (see [`crate::file::identity`]): a resumed
    /// position is checked to be in the same file, and `on_change` says what to do if not.
    pub fn keeping_identity(mut self, state_dir: &Path, source: &str, on_change: OnChange) -> Self {
        self.identity = Some(Keeper::new(state_dir, source, &self.name, on_change));
        self
    }

    /// Paces reading by event time at `speedup`, with `time_of` reading a record's time.
    pub fn paced(mut self, speedup: f64, time_of: TimeOf) -> Self {
        self.pace = Some((speedup, time_of));
        self
    }

    fn open(&mut self) -> Result<Option<&mut BufReader<File>>, ConnectorError> {
        if self.reader.is_none() {
            let file = match File::open(&self.path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.at_eof == AtEof::Follow => return Ok(None),
                Err(e) => return Err(ConnectorError::io("cannot open", &self.path, e)),
            };
            let mut reader = BufReader::with_capacity(1 << 20, file);
            reader.seek(SeekFrom::Start(self.position)).map_err(|e| ConnectorError::io("cannot seek in", &self.path, e))?;
            self.reader = Some(reader);
        }
        Ok(self.reader.as_mut())
    }

    /// Reads one line: `(offset, bytes, next position)`, `None` at the end of the data.
    /// Blank lines are skipped (not dead letters); a line longer than `line_bytes_max` is cut
    /// there, and the rest of it is consumed without being kept; a byte order mark at the
    /// start of the file is dropped.
    fn next_line(&mut self) -> Result<Option<(u64, Vec<u8>, u64)>, ConnectorError> {
        let at_eof = self.at_eof;
        let max = self.line_bytes_max;
        let path = self.path.clone();
        let mut start = self.position;
        let Some(reader) = self.open()? else { return Ok(None) };
        loop {
            let mut line = Vec::new();
            let mut consumed = 0u64;
            let mut complete = false;
            loop {
                let buf = reader.fill_buf().map_err(|e| ConnectorError::io("cannot read", &path, e))?;
                if buf.is_empty() {
                    break;
                }
                let (chunk, found) = match buf.iter().position(|b| *b == b'\n') {
                    Some(i) => (&buf[..=i], true),
                    None => (buf, false),
                };
                let room = (max + 1).saturating_sub(line.len());
                line.extend_from_slice(&chunk[..chunk.len().min(room)]);
                let n = chunk.len();
                consumed += n as u64;
                reader.consume(n);
                if found {
                    complete = true;
                    break;
                }
            }
            if consumed == 0 {
                self.position = start;
                return Ok(None);
            }
            if !complete && at_eof != AtEof::Finish {
                // A partial last line may still be being written: leave it for later.
                reader.seek(SeekFrom::Start(start)).map_err(|e| ConnectorError::io("cannot seek in", &path, e))?;
                self.position = start;
                return Ok(None);
            }
            let next = start + consumed;
            while matches!(line.last(), Some(b'\n' | b'\r')) {
                line.pop();
            }
            line.truncate(max);
            // A file saved with a UTF-8 byte order mark (Windows editors): the mark is not
            // part of the first record.
            if start == 0 && line.starts_with(b"\xEF\xBB\xBF") {
                line.drain(..3);
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                start = next;
                continue;
            }
            return Ok(Some((start, line, next)));
        }
    }
}

impl FileReader {
    /// Records the file's identity as far as it has been read.
    fn keep_identity(&mut self) -> Result<(), ConnectorError> {
        if let (Some(keeper), Some(reader)) = (self.identity.as_mut(), self.reader.as_ref()) {
            keeper.read_up_to(&self.path, reader.get_ref(), self.position)?;
        }
        Ok(())
    }
}

impl PartitionReader for FileReader {
    /// A file's lines are there to read again, unless it is paced by event time.
    fn replayable(&self) -> bool {
        self.pace.is_none()
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn seek(&mut self, position: u64) -> Result<(), ConnectorError> {
        self.reader = None;
        self.held = None;
        self.position = match self.identity.as_mut() {
            Some(keeper) if position > 0 => match keeper.resume(&self.path, position)? {
                Resume::At(position) => position,
                Resume::FromStart => 0,
            },
            _ => position,
        };
        Ok(())
    }

    fn read(&mut self, records_max: usize, out: &mut Vec<Fetched>) -> Result<ReadStatus, ConnectorError> {
        self.read_bounded(records_max, usize::MAX, out)
    }

    fn read_bounded(&mut self, records_max: usize, bytes_max: usize, out: &mut Vec<Fetched>) -> Result<ReadStatus, ConnectorError> {
        let mut read_bytes = 0;
        for _ in 0..records_max {
            if read_bytes >= bytes_max {
                break;
            }
            let line = match self.held.take() {
                Some(line) => Some(line),
                None => self.next_line()?,
            };
            let Some((offset, bytes, next)) = line else {
                self.keep_identity()?;
                return Ok(match self.at_eof {
                    AtEof::Finish => ReadStatus::End,
                    AtEof::Stop => ReadStatus::Stop,
                    AtEof::Follow => ReadStatus::Waiting,
                });
            };
            if let Some((speedup, time_of)) = &self.pace {
                if let Some(t) = time_of(&bytes) {
                    let (wall, first) = *self.pace_origin.get_or_insert((Instant::now(), t));
                    let due_ms = ((t - first) as f64 / speedup).max(0.0);
                    if wall.elapsed().as_secs_f64() * 1000.0 < due_ms {
                        self.held = Some((offset, bytes, next));
                        self.keep_identity()?;
                        return Ok(ReadStatus::Waiting);
                    }
                }
            }
            self.position = next;
            read_bytes += bytes.len();
            out.push(Fetched::plain(offset, bytes));
        }
        self.keep_identity()?;
        Ok(ReadStatus::More)
    }

    fn position(&self) -> u64 {
        self.position
    }
}
