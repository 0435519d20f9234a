//! The source operator: runs partition readers on a worker and closes epochs.
//!
//! ```text
//!   readers of this worker's partitions ──> source ──> records, and per epoch one
//!                                                      end mark per partition ──> (decode)
//! ```
//!
//! Partition `p` (a global index over all sources of a pipeline) is read by worker
//! `p % workers`. An epoch of a partition ends after `epoch_records` records, so for unpaced
//! sources each epoch holds the same records whatever the number of workers. Paced sources
//! (a generator with a rate, a file paced by event time) also end an epoch after `epoch_ms` of
//! wall time once they have nothing more to give right now; their epochs depend on timing.
//!
//! At the end of each epoch the position of every partition (after its last record of the
//! epoch) is staged in the table `source_positions`, so the epoch's commit holds it; a restart
//! seeks every reader there. The source stops reading while more than `max_inflight_epochs`
//! epochs are open (not yet complete at the end of the dataflow): backpressure, not buffering.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_operators::{Epoch, Metrics, Origin, PartitionMark, RawRecord, RecordMeta, Replay, SourceItem};
use sluice_state::protocol::failpoint;
use sluice_state::{Table, TableSpec, U64Codec, WorkerState};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{ProbeHandle, Scope, Stream};

use crate::ConnectorError;

/// The table of source positions: partition name to position.
pub const POSITIONS_TABLE: &str = "source_positions";

/// The tables sources declare.
pub fn tables() -> Vec<TableSpec> {
    vec![TableSpec::new(POSITIONS_TABLE)]
}

/// Extracts an event time (ms) from a record, for sources paced by event time.
pub type TimeOf = Box<dyn Fn(&[u8]) -> Option<i64>>;

/// Makes a fresh event-time extractor (one per reader).
pub type TimeOfFactory = Arc<dyn Fn() -> TimeOf + Send + Sync>;

/// What a read gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadStatus {
    /// Records were read, or may be read at once.
    More,
    /// Nothing to give right now (paced, or waiting for a file to grow).
    Waiting,
    /// The partition is exhausted for good.
    End,
    /// The partition stops here without being finished: a later run resumes it.
    Stop,
}

/// One record as a reader gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// Its position in the partition.
    pub offset: u64,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// Key, timestamp and headers, where the source has them.
    pub meta: Option<Box<RecordMeta>>,
}

impl Fetched {
    /// A record without metadata.
    pub fn plain(offset: u64, bytes: Vec<u8>) -> Self {
        Fetched { offset, bytes, meta: None }
    }
}

/// A reader of one partition.
pub trait PartitionReader {
    /// A stable name (`file:payments:/path`, `generator:demo:3`): the key of its position.
    fn name(&self) -> &str;
    /// Moves to a committed position.
    ///
    /// # Errors
    /// I/O errors; a position beyond the data.
    fn seek(&mut self, position: u64) -> Result<(), ConnectorError>;
    /// Appends up to `records_max` records to `out`.
    ///
    /// # Errors
    /// I/O errors. The source reports them and treats the partition as stopped.
    fn read(&mut self, records_max: usize, out: &mut Vec<Fetched>) -> Result<ReadStatus, ConnectorError>;
    /// As [`PartitionReader::read`], stopping also at the record that brings the bytes appended
    /// to `bytes_max` or more. The default reads `records_max` records, for sources whose
    /// records are small by construction (generated, webhook bodies under `body_bytes_max`,
    /// database rows); the file and Kafka readers stop at the byte bound.
    ///
    /// # Errors
    /// As [`PartitionReader::read`].
    fn read_bounded(&mut self, records_max: usize, _bytes_max: usize, out: &mut Vec<Fetched>) -> Result<ReadStatus, ConnectorError> {
        self.read(records_max, out)
    }
    /// The position after the last record read.
    fn position(&self) -> u64;
    /// Whether a record can be read again, the same, from its offset, at once (no pacing):
    /// then the order buffer keeps only where its buffered events are, and a restart reads them
    /// again from there (see `order.rs`). The default: no.
    fn replayable(&self) -> bool {
        false
    }
    /// Stops (`true`) or restarts fetching ahead while the dataflow is behind, so that a
    /// reader with a client-side queue (Kafka) does not fill it. The default does nothing:
    /// files and generators read only when asked.
    fn pause(&mut self, _paused: bool) {}
    /// From now on, end at the end of what exists now (a Kafka partition: its current high
    /// watermark) rather than waiting for more. The default does nothing: files and generators
    /// end on their own.
    fn drain(&mut self) {}
}

/// Epoch and flow settings of sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceSettings {
    /// Records per partition per epoch.
    pub epoch_records: usize,
    /// Bytes of records per partition per epoch (the epoch ends at the record that reaches it).
    pub epoch_bytes: usize,
    /// Wall time after which a waiting (paced) source ends its epoch.
    pub epoch_ms: u64,
    /// Open epochs beyond which sources stop reading.
    pub max_inflight_epochs: u64,
    /// Wall time without records after which a partition is idle.
    pub idle_timeout_ms: u64,
}

struct Partition {
    index: u32,
    reader: Box<dyn PartitionReader>,
    in_epoch: usize,
    in_epoch_bytes: usize,
    status: ReadStatus,
    last_record: Instant,
    /// While above 0: records before this offset are read again at a restart, to refill the
    /// order buffer (the committed position; the reader was sought back to where its oldest
    /// buffered event is). They do not count in the epoch, and all of them are read in the first
    /// epoch.
    replay_until: u64,
}

impl Partition {
    /// Whether its part of the epoch is full, by records or by bytes.
    fn full(&self, settings: &SourceSettings) -> bool {
        self.in_epoch >= settings.epoch_records || self.in_epoch_bytes >= settings.epoch_bytes
    }
}

/// Records read per activation, so that downstream operators run between reads.
const RECORDS_PER_ACTIVATION: usize = 4096;

/// Where the sources of all workers stop when asked to: at the end of one epoch, the same on
/// every worker, so that a stopped run ends on an epoch boundary that an uninterrupted run also
/// has (epochs end at `epoch_records` per partition, not where the stop happened to come), and
/// its output is a prefix of that run's.
///
/// When the flag is first seen, the stop epoch is the latest epoch any worker's source has
/// started; every source finishes its epochs up to it and stops. Each source asks
/// [`StopLine::finished`] at each epoch end, under one lock, so none can start an epoch past the
/// stop epoch once it is fixed.
#[derive(Debug)]
pub struct StopLine {
    flag: Arc<AtomicBool>,
    /// Set to finish every partition at what exists now (see [`PartitionReader::drain`]).
    drain: Arc<AtomicBool>,
    /// (the stop epoch once fixed, the epoch each worker's source is in)
    state: std::sync::Mutex<(Option<Epoch>, Vec<Epoch>)>,
}

impl StopLine {
    /// A stop line for `workers` sources starting at `first_epoch`, watching `flag`.
    pub fn new(flag: Arc<AtomicBool>, workers: usize, first_epoch: Epoch) -> Arc<Self> {
        Arc::new(StopLine { flag, drain: Arc::new(AtomicBool::new(false)), state: std::sync::Mutex::new((None, vec![first_epoch; workers])) })
    }

    /// The same stop line, also watching `drain`: once set, every reader is asked to
    /// [`PartitionReader::drain`].
    pub fn draining_on(self: Arc<Self>, drain: Arc<AtomicBool>) -> Arc<Self> {
        let line = Arc::try_unwrap(self).expect("invariant: draining_on is called right after new");
        Arc::new(StopLine { drain, ..line })
    }

    /// A worker's source has ended `epoch`: whether it stops now (else it starts `epoch + 1`).
    pub fn finished(&self, worker: usize, epoch: Epoch) -> bool {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.0.is_none() && self.flag.load(Ordering::Relaxed) {
            let at = state.1.iter().copied().max().unwrap_or(epoch).max(epoch);
            tracing::info!(epoch = at, "stopping at the end of epoch {at}");
            state.0 = Some(at);
        }
        match state.0 {
            Some(at) if epoch >= at => true,
            _ => {
                state.1[worker] = epoch + 1;
                false
            }
        }
    }
}

/// Builds the source operator over `readers` (`(global partition index, reader)`, only those
/// this worker owns).
///
/// `probe` watches the end of the dataflow (for backpressure); `stop` says where to stop
/// without finishing the partitions (see [`StopLine`]).
///
/// # Errors
/// The committed positions cannot be read, or a reader cannot seek to its position.
#[allow(clippy::too_many_arguments)]
pub fn build<'scope>(
    scope: Scope<'scope, Epoch>,
    readers: Vec<(u32, Box<dyn PartitionReader>)>,
    settings: SourceSettings,
    state: Rc<RefCell<WorkerState>>,
    probe: ProbeHandle<Epoch>,
    stop: Arc<StopLine>,
    metrics: Arc<Metrics>,
) -> Result<Stream<'scope, Epoch, Vec<SourceItem>>, ConnectorError> {
    let worker = scope.index();
    let table: Table<U64Codec> = state.borrow().store().table(POSITIONS_TABLE)?;
    let mut partitions = Vec::new();
    let replay_from = sluice_operators::order::replay_from(&state.borrow())?;
    for (index, mut reader) in readers {
        let mut replay_until = 0;
        if let Some(position) = state.borrow_mut().get(&table, reader.name().as_bytes())? {
            reader.seek(position)?;
            // Also when the reader is no longer re-readable (paced since): its stored origins
            // need the reading again, paced or not.
            if let Some(&from) = replay_from.get(&index).filter(|&&from| from < position) {
                // Seek to the committed position first: a reader that finds its input
                // replaced starts it again rather than re-read another's records.
                if reader.position() == position {
                    tracing::info!(partition = reader.name(), from, to = position, "reading again the events the order buffer held");
                    reader.seek(from)?;
                    replay_until = position;
                }
            }
        }
        partitions.push(Partition { index, reader, in_epoch: 0, in_epoch_bytes: 0, status: ReadStatus::More, last_record: Instant::now(), replay_until });
    }
    let first_epoch = state.borrow().store().resume_epoch();
    let stream = source::<_, CapacityContainerBuilder<Vec<SourceItem>>, _, _>(scope, "Source", move |cap, info| {
        let activator = scope.activator_for(info.address);
        let mut cap = if partitions.is_empty() { None } else { Some(cap.delayed(&first_epoch)) };
        let mut epoch = first_epoch;
        let mut epoch_started = Instant::now();
        let mut buffer = Vec::new();
        let mut blocked_since: Option<Instant> = None;
        let mut draining = false;
        move |output| {
            let Some(held) = cap.as_ref() else { return };
            if !draining && stop.drain.load(Ordering::Relaxed) {
                draining = true;
                for p in partitions.iter_mut() {
                    p.reader.drain();
                }
            }
            // Backpressure: wait for the dataflow to complete older epochs.
            let complete = probe.with_frontier(|f| f.first().copied()).unwrap_or(Epoch::MAX);
            if worker == 0 {
                metrics.sources.inflight_epochs.store(epoch.saturating_sub(complete.min(epoch)), Ordering::Relaxed);
            }
            if epoch >= complete.saturating_add(settings.max_inflight_epochs) {
                if blocked_since.is_none() {
                    blocked_since = Some(Instant::now());
                    for p in partitions.iter_mut() {
                        p.reader.pause(true);
                    }
                }
                activator.activate_after(Duration::from_millis(1));
                return;
            }
            if let Some(since) = blocked_since.take() {
                let us = since.elapsed().as_micros() as u64;
                metrics.sources.backpressure_us.fetch_add(us, Ordering::Relaxed);
                for p in partitions.iter_mut() {
                    p.reader.pause(false);
                    metrics.sources.add_paused(p.index, us);
                }
            }
            let mut session = output.session(held);
            let mut budget = RECORDS_PER_ACTIVATION;
            let mut read_total = 0u64;
            {
                for p in partitions.iter_mut() {
                    if matches!(p.status, ReadStatus::End | ReadStatus::Stop) || p.full(&settings) || budget == 0 {
                        continue;
                    }
                    let want = (settings.epoch_records - p.in_epoch).min(budget);
                    buffer.clear();
                    p.status = match p.reader.read_bounded(want, settings.epoch_bytes - p.in_epoch_bytes, &mut buffer) {
                        Ok(status) => status,
                        Err(e) => {
                            tracing::error!(partition = p.reader.name(), error = %e, "source read failed; the partition stops here");
                            ReadStatus::Stop
                        }
                    };
                    if !buffer.is_empty() {
                        p.last_record = Instant::now();
                        failpoint("source.read");
                    }
                    budget -= buffer.len().min(budget);
                    let replayed = if p.replay_until > 0 { buffer.partition_point(|f| f.offset < p.replay_until) } else { 0 };
                    // Read again up to the committed position (a Kafka reader's moves past the
                    // transaction markers too), or as far as the partition goes.
                    if p.replay_until > 0 && (p.reader.position() >= p.replay_until || matches!(p.status, ReadStatus::End | ReadStatus::Stop)) {
                        p.replay_until = 0;
                    }
                    let fresh = &buffer[replayed..];
                    p.in_epoch += fresh.len();
                    p.in_epoch_bytes += fresh.iter().map(|f| f.bytes.len()).sum::<usize>();
                    metrics.sources.add_records(p.index, fresh.len() as u64);
                    read_total += fresh.len() as u64;
                    metrics.sources.records_replayed.fetch_add(replayed as u64, Ordering::Relaxed);
                    let rereadable = if p.reader.replayable() { Replay::Rereadable } else { Replay::Kept };
                    for (n, f) in buffer.drain(..).enumerate() {
                        let replay = if n < replayed { Replay::Replayed } else { rereadable };
                        session.give(SourceItem::Record(RawRecord {
                            origin: Origin { partition: p.index, offset: f.offset },
                            bytes: f.bytes,
                            meta: f.meta,
                            replay,
                        }));
                    }
                }
            }
            metrics.sources.records_in.fetch_add(read_total, Ordering::Relaxed);
            let settled = |p: &Partition| matches!(p.status, ReadStatus::End | ReadStatus::Stop) || p.full(&settings);
            let all_settled = partitions.iter().all(settled);
            // The records read again all go in the first epoch (the order buffer takes them
            // there), however long the reading takes.
            let timed_out = epoch_started.elapsed() >= Duration::from_millis(settings.epoch_ms)
                && partitions.iter().all(|p| (settled(p) || p.status == ReadStatus::Waiting) && p.replay_until == 0);
            if all_settled || timed_out {
                let now = Instant::now();
                let mut state = state.borrow_mut();
                for p in partitions.iter_mut() {
                    let idle = p.status == ReadStatus::Waiting && now.duration_since(p.last_record) >= Duration::from_millis(settings.idle_timeout_ms);
                    session.give(SourceItem::EpochEnd(PartitionMark { partition: p.index, finished: p.status == ReadStatus::End, idle }));
                    state.put(epoch, &table, p.reader.name().as_bytes(), &p.reader.position());
                    p.in_epoch = 0;
                    p.in_epoch_bytes = 0;
                }
                drop(session);
                let done = stop.finished(worker, epoch) || partitions.iter().all(|p| matches!(p.status, ReadStatus::End | ReadStatus::Stop));
                if done {
                    cap = None;
                    return;
                }
                // A finished partition was announced once; every watermark tracker keeps that.
                partitions.retain(|p| p.status != ReadStatus::End);
                epoch += 1;
                epoch_started = Instant::now();
                if let Some(c) = cap.as_mut() {
                    c.downgrade(&epoch);
                }
            }
            if partitions.iter().any(|p| p.status == ReadStatus::More) {
                activator.activate();
            } else {
                activator.activate_after(Duration::from_millis(1));
            }
        }
    });
    Ok(stream)
}
