//! The webhook log: every accepted webhook is appended here, with the write-ahead log synced,
//! before its request is answered 2xx; the dataflow reads the log like a partition, and its
//! position goes into sluice's commits like any source's.
//!
//! ```text
//!   request ──> verify ──> append (fsync) ──> 2xx        log ──> WebhookReader ──> source
//! ```
//!
//! Entries are numbered from 0 in arrival order (the record offset). A webhook id seen before
//! is not appended again: [`WebhookLog::append`] returns [`Appended::Duplicate`] with the first
//! copy's offset and the request is answered 2xx all the same (providers redeliver until they
//! get one). Appends made at the same time share one synced write (group commit): the first
//! to find the writer free writes every append waiting, then wakes their callers.
//!
//! A log is opened once per source: the source's config holds the handle and gives it to the
//! server and to the reader; a second open of a directory in use is refused by RocksDB's lock.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use sluice_operators::RecordMeta;

use crate::source::{Fetched, PartitionReader, ReadStatus};
use crate::ConnectorError;

const EVENTS: &str = "events";
const IDS: &str = "ids";

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Written at this offset, durably.
    New(u64),
    /// The id was there already, at this offset: nothing written.
    Duplicate(u64),
}

/// One append waiting for a group write.
struct Waiter {
    id: String,
    value: Vec<u8>,
    done: Mutex<Option<Result<Appended, (&'static str, String)>>>,
    wake: Condvar,
}

/// A durable, deduplicated, append-only log of webhooks.
pub struct WebhookLog {
    path: PathBuf,
    db: DB,
    /// The next offset; held by the one writing a group.
    next: Mutex<u64>,
    /// Appends waiting for the next group write.
    queue: Mutex<Vec<Arc<Waiter>>>,
    /// The reader's position (for backpressure: entries logged but not read).
    read: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for WebhookLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookLog").field("path", &self.path).finish()
    }
}

fn db_error(what: &str, path: &Path, e: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::WebhookLog { path: path.to_path_buf(), what: what.to_string(), source: e.to_string().into() }
}

/// An entry's value: received time (ms, big-endian i64), id length (u32), id, body.
fn encode(received_ms: i64, id: &str, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(12 + id.len() + body.len());
    v.extend_from_slice(&received_ms.to_be_bytes());
    v.extend_from_slice(&(id.len() as u32).to_be_bytes());
    v.extend_from_slice(id.as_bytes());
    v.extend_from_slice(body);
    v
}

fn decode(v: &[u8]) -> Option<(i64, &str, &[u8])> {
    let received = i64::from_be_bytes(v.get(0..8)?.try_into().ok()?);
    let n = u32::from_be_bytes(v.get(8..12)?.try_into().ok()?) as usize;
    let id = std::str::from_utf8(v.get(12..12 + n)?).ok()?;
    Some((received, id, v.get(12 + n..)?))
}

impl WebhookLog {
    /// Opens (creating) the log in `dir`.
    ///
    /// # Errors
    /// RocksDB cannot open the directory (one in use by another handle is locked).
    pub fn open(dir: &Path) -> Result<Arc<Self>, ConnectorError> {
        std::fs::create_dir_all(dir).map_err(|e| db_error("cannot create", dir, e))?;
        let path = dir.canonicalize().map_err(|e| db_error("cannot resolve", dir, e))?;
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let cfs = [EVENTS, IDS].map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
        let db = DB::open_cf_descriptors(&options, &path, cfs).map_err(|e| db_error("cannot open", &path, e))?;
        let events = db.cf_handle(EVENTS).expect("invariant: created above");
        let next = match db.iterator_cf(events, IteratorMode::End).next() {
            Some(Ok((k, _))) => u64::from_be_bytes(k.as_ref().try_into().map_err(|_| db_error("corrupt key", &path, "not 8 bytes"))?) + 1,
            Some(Err(e)) => return Err(db_error("cannot read", &path, e)),
            None => 0,
        };
        Ok(Arc::new(WebhookLog { path, db, next: Mutex::new(next), queue: Mutex::new(Vec::new()), read: std::sync::atomic::AtomicU64::new(0) }))
    }

    /// Appends a webhook unless its id is in the log; durable (WAL synced) when it returns.
    ///
    /// # Errors
    /// The write failed (disk full, I/O error): the request must not be acknowledged.
    pub fn append(&self, id: &str, body: &[u8], received_ms: i64) -> Result<Appended, ConnectorError> {
        let me = Arc::new(Waiter { id: id.to_string(), value: encode(received_ms, id, body), done: Mutex::new(None), wake: Condvar::new() });
        self.queue.lock().expect("invariant: not poisoned").push(Arc::clone(&me));
        loop {
            if let Some(result) = me.done.lock().expect("invariant: not poisoned").take() {
                return result.map_err(|(what, detail)| db_error(what, &self.path, detail));
            }
            match self.next.try_lock() {
                Ok(mut next) => {
                    let group = std::mem::take(&mut *self.queue.lock().expect("invariant: not poisoned"));
                    if !group.is_empty() {
                        self.write_group(&mut next, &group);
                    }
                }
                Err(_) => {
                    let done = me.done.lock().expect("invariant: not poisoned");
                    if done.is_none() {
                        // Woken by the writer; the timeout covers a writer that finished
                        // between our try_lock and this wait.
                        let _ = me.wake.wait_timeout(done, std::time::Duration::from_millis(1));
                    }
                }
            }
        }
    }

    /// Writes a group of appends in one synced batch and hands each its result.
    fn write_group(&self, next: &mut u64, group: &[Arc<Waiter>]) {
        let events = self.db.cf_handle(EVENTS).expect("invariant: opened with it");
        let ids = self.db.cf_handle(IDS).expect("invariant: opened with it");
        let mut batch = WriteBatch::default();
        let mut in_group: HashMap<&str, u64> = HashMap::new();
        let mut results: Vec<Result<Appended, (&'static str, String)>> = Vec::with_capacity(group.len());
        let mut offset = *next;
        for w in group {
            let seen = match in_group.get(w.id.as_str()) {
                Some(o) => Ok(Some(*o)),
                None => match self.db.get_cf(ids, w.id.as_bytes()) {
                    Ok(Some(v)) => v.as_slice().try_into().map(|b| Some(u64::from_be_bytes(b))).map_err(|_| ("corrupt id entry", w.id.clone())),
                    Ok(None) => Ok(None),
                    Err(e) => Err(("cannot read", e.to_string())),
                },
            };
            results.push(match seen {
                Ok(Some(o)) => Ok(Appended::Duplicate(o)),
                Ok(None) => {
                    batch.put_cf(events, offset.to_be_bytes(), &w.value);
                    batch.put_cf(ids, w.id.as_bytes(), offset.to_be_bytes());
                    in_group.insert(&w.id, offset);
                    offset += 1;
                    Ok(Appended::New(offset - 1))
                }
                Err(e) => Err(e),
            });
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        let written = if batch.is_empty() { Ok(()) } else { self.db.write_opt(batch, &wo) };
        if let Err(e) = &written {
            // Nothing of the group is stored.
            let message = ("cannot append", e.to_string());
            for r in results.iter_mut() {
                // New ones, and repeats of an id first seen in this group: none is stored.
                if matches!(r, Ok(Appended::New(_))) || matches!(r, Ok(Appended::Duplicate(o)) if *o >= *next) {
                    *r = Err(message.clone());
                }
            }
        } else {
            *next = offset;
        }
        for (w, r) in group.iter().zip(results) {
            *w.done.lock().expect("invariant: not poisoned") = Some(r);
            w.wake.notify_one();
        }
    }

    /// The offset the next webhook will get (= the number appended).
    pub fn end(&self) -> u64 {
        *self.next.lock().expect("invariant: not poisoned")
    }

    /// Entries logged and not yet read by the pipeline.
    pub fn backlog(&self) -> u64 {
        self.end().saturating_sub(self.read.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Up to `max` entries from `from`, as records: the body, with the webhook id as header
    /// `webhook-id` and the receive time as the timestamp.
    ///
    /// # Errors
    /// A read failed or an entry is corrupt.
    pub fn read(&self, from: u64, max: usize, out: &mut Vec<Fetched>) -> Result<(), ConnectorError> {
        let events = self.db.cf_handle(EVENTS).expect("invariant: opened with it");
        let start = from.to_be_bytes();
        for item in self.db.iterator_cf(events, IteratorMode::From(&start, Direction::Forward)).take(max) {
            let (k, v) = item.map_err(|e| db_error("cannot read", &self.path, e))?;
            let offset = u64::from_be_bytes(k.as_ref().try_into().map_err(|_| db_error("corrupt key", &self.path, "not 8 bytes"))?);
            let (received_ms, id, body) = decode(&v).ok_or_else(|| db_error("corrupt entry", &self.path, offset))?;
            let meta = RecordMeta { key: None, timestamp_ms: Some(received_ms), headers: vec![("webhook-id".into(), id.as_bytes().to_vec())] };
            out.push(Fetched { offset, bytes: body.to_vec(), meta: Some(Box::new(meta)) });
        }
        Ok(())
    }
}

/// Reads a webhook log as one partition (never ends: webhooks keep coming).
#[derive(Debug)]
pub struct WebhookReader {
    name: String,
    log: Arc<WebhookLog>,
    position: u64,
    draining: bool,
}

impl WebhookReader {
    /// The reader of the log of source `source`.
    pub fn new(source: &str, log: Arc<WebhookLog>) -> Self {
        WebhookReader { name: format!("webhook:{source}"), log, position: 0, draining: false }
    }
}

impl PartitionReader for WebhookReader {
    /// The webhook log keeps every accepted request.
    fn replayable(&self) -> bool {
        true
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn seek(&mut self, position: u64) -> Result<(), ConnectorError> {
        self.position = position;
        Ok(())
    }

    fn read(&mut self, records_max: usize, out: &mut Vec<Fetched>) -> Result<ReadStatus, ConnectorError> {
        let before = out.len();
        self.log.read(self.position, records_max, out)?;
        if let Some(last) = out[before..].last() {
            self.position = last.offset + 1;
        }
        // Reading again below the committed position at a restart is not a backlog.
        self.log.read.fetch_max(self.position, std::sync::atomic::Ordering::Relaxed);
        Ok(if out.len() - before == records_max {
            ReadStatus::More
        } else if self.draining && out.len() == before {
            ReadStatus::End
        } else {
            ReadStatus::Waiting
        })
    }

    fn drain(&mut self) {
        self.draining = true;
    }

    fn position(&self) -> u64 {
        self.position
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bodies(out: &[Fetched]) -> Vec<(u64, String, String)> {
        out.iter()
            .map(|f| {
                let id = &f.meta.as_ref().unwrap().headers[0].1;
                (f.offset, String::from_utf8(id.clone()).unwrap(), String::from_utf8(f.bytes.clone()).unwrap())
            })
            .collect()
    }

    #[test]
    fn appends_are_numbered_deduplicated_by_id_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = WebhookLog::open(dir.path()).unwrap();
            assert_eq!(log.append("a", b"{\"n\":1}", 10).unwrap(), Appended::New(0));
            assert_eq!(log.append("b", b"{\"n\":2}", 11).unwrap(), Appended::New(1));
            assert_eq!(log.append("a", b"{\"n\":1, \"again\":true}", 12).unwrap(), Appended::Duplicate(0));
            let again = WebhookLog::open(dir.path()).unwrap_err().to_string();
            assert!(again.contains("cannot open") && again.contains("lock"), "a log in use is not opened twice: {again}");
        }
        let log = WebhookLog::open(dir.path()).unwrap();
        assert_eq!(log.end(), 2);
        assert_eq!(log.append("c", b"{\"n\":3}", 13).unwrap(), Appended::New(2));
        assert_eq!(log.append("b", b"x", 14).unwrap(), Appended::Duplicate(1));
        let mut out = Vec::new();
        log.read(1, 10, &mut out).unwrap();
        assert_eq!(bodies(&out), vec![(1, "b".into(), "{\"n\":2}".into()), (2, "c".into(), "{\"n\":3}".into())]);
        assert_eq!(out[0].meta.as_ref().unwrap().timestamp_ms, Some(11));
    }

    #[test]
    fn fifty_identical_webhooks_at_once_are_appended_once() {
        let dir = tempfile::tempdir().unwrap();
        let log = WebhookLog::open(dir.path()).unwrap();
        let threads: Vec<_> = (0..50)
            .map(|_| {
                let log = Arc::clone(&log);
                std::thread::spawn(move || log.append("evt_same", b"{\"id\":\"evt_same\"}", 1).unwrap())
            })
            .collect();
        let results: Vec<Appended> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(results.iter().filter(|r| **r == Appended::New(0)).count(), 1);
        assert_eq!(results.iter().filter(|r| **r == Appended::Duplicate(0)).count(), 49);
        assert_eq!(log.end(), 1);
    }

    #[test]
    fn the_reader_resumes_at_a_committed_position_and_waits_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let log = WebhookLog::open(dir.path()).unwrap();
        for i in 0..5 {
            log.append(&format!("e{i}"), format!("{{\"i\":{i}}}").as_bytes(), i).unwrap();
        }
        let mut reader = WebhookReader::new("psp", Arc::clone(&log));
        assert_eq!(reader.name(), "webhook:psp");
        reader.seek(2).unwrap();
        let mut out = Vec::new();
        assert_eq!(reader.read(2, &mut out).unwrap(), ReadStatus::More);
        assert_eq!(reader.read(10, &mut out).unwrap(), ReadStatus::Waiting);
        assert_eq!(out.iter().map(|f| f.offset).collect::<Vec<_>>(), vec![2, 3, 4]);
        assert_eq!(reader.position(), 5);
        log.append("e5", b"{}", 5).unwrap();
        out.clear();
        assert_eq!(reader.read(10, &mut out).unwrap(), ReadStatus::Waiting);
        assert_eq!(out.iter().map(|f| f.offset).collect::<Vec<_>>(), vec![5]);
    }
}
