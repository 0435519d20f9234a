//! The Kafka sink: an output stream to a topic, delivered from a transactional outbox.
//!
//! ```text
//!  lines ─> (worker 0) sort per epoch ─> outbox table, in the epoch's state commit
//!                                              │ (after the commit)
//!                                              v
//!                      delivery thread: the epoch's records + a progress record
//!                      ─> Kafka (one transaction per epoch, or idempotent produce)
//!                      ─> outbox entries of delivered epochs discarded
//! ```
//!
//! An epoch's output goes to Kafka only once the epoch is committed, so Kafka never holds
//! output of an epoch a restart will recompute. The progress record (key: the sink's
//! transactional id, value `{"epoch": E, "records": n}`, in a single-partition topic) says
//! which epoch was delivered last; after a restart the delivery thread reads it and delivers
//! the committed epochs after it. Exactly-once mode puts the records and the progress record
//! in one transaction: a `read_committed` reader sees every epoch once. At-least-once mode
//! produces the records idempotently, waits for all acknowledgements, then the progress
//! record: a crash between the two delivers that one epoch again (its records carry the
//! headers `sluice-epoch` and `sluice-seq`, the record's place in the epoch's sorted output,
//! the same in every copy, so a reader can drop repeats).
//!
//! Delivery is off the dataflow's threads; when it fails (a fenced producer, a broker that
//! refuses), the pipeline stops at the next epoch boundary and the run reports the failure.
//! When it falls more than `MAX_UNDELIVERED` epochs
//! behind, the sink stops completing epochs, the sources stop at `max_inflight_epochs`, and the
//! pipeline waits (backpressure, no unbounded buffer: the outbox is on disk and bounded by it).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{Offset, TopicPartitionList};
use sluice_operators::epoch::{concat, EpochStash, HeldCapabilities};

use super::logs::{Quiet, QuietConsumer};
use sluice_operators::Epoch;
use sluice_state::protocol::failpoint;
use sluice_state::{BytesCodec, StateReader, StateStore, Table, TableSpec, WorkerState};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::Stream;

use super::config::{Delivery, KafkaSinkConfig, DEFAULT_MESSAGE_TIMEOUT_MS, DEFAULT_TRANSACTION_TIMEOUT_MS};
use crate::sink::{DeliveryState, OutputLine};
use crate::{ConnectorError, OutputStream};

/// The outbox: `<sink id> 0x00 <epoch, 8 bytes BE> <seq, 4 bytes BE>` → the output line.
pub const OUTBOX_TABLE: &str = "sink_outbox";

/// The tables Kafka sinks declare.
pub fn tables() -> Vec<TableSpec> {
    vec![TableSpec::new(OUTBOX_TABLE)]
}

/// Epochs the delivery may be behind the dataflow before the sink holds it back.
pub const MAX_UNDELIVERED: u64 = 8;

const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);

fn outbox_key(sink: &str, epoch: Epoch, seq: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(sink.len() + 13);
    k.extend_from_slice(sink.as_bytes());
    k.push(0);
    k.extend_from_slice(&epoch.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn epoch_of_key(sink: &str, key: &[u8]) -> Epoch {
    let at = sink.len() + 1;
    Epoch::from_be_bytes(key[at..at + 8].try_into().expect("invariant: outbox keys hold an 8-byte epoch"))
}

/// A running delivery thread.
#[derive(Debug)]
pub struct DeliveryHandle {
    /// Its shared state.
    pub state: Arc<DeliveryState>,
    /// The sink's description, for messages.
    pub what: String,
    delivery: Delivery,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DeliveryHandle {
    /// Asks the thread to deliver everything committed and waits for it.
    ///
    /// # Errors
    /// Delivery failed: the undelivered epochs stay in the outbox and go out after a restart.
    pub fn finish(mut self) -> Result<(), ConnectorError> {
        self.state.finish.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let failed = self.state.failed.lock().expect("invariant: not poisoned").clone();
        match failed {
            // At least once, a failed epoch may be at the broker in part: the restart sends it
            // again. Exactly once, its transaction was aborted.
            Some(e) => {
                Err(ConnectorError::KafkaDelivery { what: self.what.clone(), may_have_happened: self.delivery == Delivery::AtLeastOnce, source: e.into() })
            }
            None => Ok(()),
        }
    }
}

impl Drop for DeliveryHandle {
    fn drop(&mut self) {
        // A pipeline that failed still delivers what it committed before stopping.
        self.state.finish.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Counts failed and unconfirmed deliveries.
struct Context {
    failures: AtomicU64,
    /// The most telling delivery failure so far: (rank, message), see [`ProducerContext::delivery`].
    last_failure: Mutex<Option<(u8, String)>>,
    /// Records acknowledged without an offset: librdkafka's idempotent producer takes a
    /// `DuplicateSequenceNumber` answer to a retried send as success, trusting that the first
    /// send was written. tansu 0.6.0 records a producer's sequence before it writes the batch,
    /// so a broker killed in between answers the retry so and never holds the records (seen
    /// in the broker-restart test). An epoch with such records is sent again.
    unconfirmed: AtomicU64,
    /// A failure no retry can mend (a record too large, no authorisation, a fenced producer).
    permanent: AtomicBool,
    /// The producer was fenced: another process with the same transactional id took over.
    fenced: AtomicBool,
}

/// Delivery errors that no retry mends: the pipeline stops and says why. A fenced producer
/// is one of them (see [`fenced_code`]). Other fatal errors of a producer (librdkafka's `_FATAL`:
/// an idempotent producer whose sequence numbers no longer match the broker's, after a broker
/// lost its last writes to a kill) end that producer only: a new one, with a new epoch, takes
/// over.
fn permanent_code(code: RDKafkaErrorCode) -> bool {
    fenced_code(code)
        || matches!(
            code,
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
                | RDKafkaErrorCode::SaslAuthenticationFailed
                | RDKafkaErrorCode::InvalidTransactionTimeout
        )
}

/// The errors that say another producer with the same transactional id took over.
fn fenced_code(code: RDKafkaErrorCode) -> bool {
    matches!(code, RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch | RDKafkaErrorCode::Fenced)
}

/// Why an epoch was not delivered, and whether trying it again may work.
#[derive(Debug)]
struct DeliveryError {
    message: String,
    retriable: bool,
}

impl DeliveryError {
    /// `e`, classified: fenced, permanent, or retriable with a new producer. (A fatal error
    /// is judged by its cause, the producer's `fatal_error`, in [`Deliverer::deliver`].)
    fn from_kafka(what: &str, config: &KafkaSinkConfig, e: &KafkaError) -> Self {
        let code = match e {
            KafkaError::Transaction(t) => Some(t.code()),
            other => other.rdkafka_error_code(),
        };
        if code.is_some_and(fenced_code) {
            return DeliveryError::fenced(config, e);
        }
        DeliveryError { message: kafka(what, config, e), retriable: code.is_none_or(|c| !permanent_code(c)) }
    }

    /// Another process took over the sink: this one must stop delivering at once.
    fn fenced(config: &KafkaSinkConfig, e: impl std::fmt::Display) -> Self {
        let message = format!(
            "another instance took over: a producer with the same transactional id `{}` fenced this one ({e}); this run stops, its undelivered epochs stay in its outbox",
            config.transactional_id()
        );
        DeliveryError { message: kafka("fenced", config, message), retriable: false }
    }
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        super::logs::log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        super::logs::error(&error, reason);
    }
}

impl ProducerContext for Context {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Ok(m) = result {
            if m.offset() < 0 {
                self.unconfirmed.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Err((e, _)) = result {
            self.failures.fetch_add(1, Ordering::Relaxed);
            let code = e.rdkafka_error_code();
            let permanent = code.is_some_and(permanent_code);
            if permanent {
                self.permanent.store(true, Ordering::Relaxed);
            }
            if code.is_some_and(fenced_code) {
                self.fenced.store(true, Ordering::Relaxed);
            }
            // The most telling failure is kept: a permanent one over others, and any over the
            // records purged from the queue because the transaction had failed already.
            let rank = if permanent {
                2
            } else if matches!(code, Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight)) {
                0
            } else {
                1
            };
            let mut last = self.last_failure.lock().expect("invariant: not poisoned");
            if last.as_ref().is_none_or(|(kept, _)| rank >= *kept) {
                *last = Some((rank, e.to_string()));
            }
        }
    }
}

fn client_config(config: &KafkaSinkConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("message.timeout.ms", DEFAULT_MESSAGE_TIMEOUT_MS.to_string());
    // A request the broker never answers (tansu after a restart) is given up after 10 s.
    c.set("socket.timeout.ms", "10000");
    // Java clients' partitioner: the same key goes to the same partition as theirs.
    c.set("partitioner", "murmur2_random");
    if config.delivery == Delivery::ExactlyOnce {
        c.set("transaction.timeout.ms", DEFAULT_TRANSACTION_TIMEOUT_MS.to_string());
    }
    for (k, v) in &config.properties {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &config.brokers).set("enable.idempotence", "true");
    if config.delivery == Delivery::ExactlyOnce {
        c.set("transactional.id", config.transactional_id());
    }
    c
}

fn kafka(what: &str, config: &KafkaSinkConfig, e: impl std::fmt::Display) -> String {
    format!("{what} (topic `{}` on {}): {e}", config.topic, config.brokers)
}

/// Creates `topics` (name, partitions) where missing.
///
/// # Errors
/// The broker refuses.
pub fn ensure_topics(brokers: &str, properties: &BTreeMap<String, String>, topics: &[(&str, u32)]) -> Result<(), ConnectorError> {
    let fail = |what: String| move |e: KafkaError| ConnectorError::Kafka { what, source: e.into() };
    let mut c = ClientConfig::new();
    for (k, v) in properties {
        if k.starts_with("security.") || k.starts_with("sasl.") || k.starts_with("ssl.") {
            c.set(k, v);
        }
    }
    c.set("bootstrap.servers", brokers);
    let admin: AdminClient<Quiet> = c.create_with_context(Quiet).map_err(fail(format!("cannot create an admin client for {brokers}")))?;
    // Only what is missing: some brokers (and librdkafka's mock cluster) do not answer
    // CreateTopics at all.
    let metadata = admin.inner().fetch_metadata(None, KAFKA_TIMEOUT).map_err(fail(format!("cannot read the metadata of {brokers}")))?;
    let exists = |name: &str| metadata.topics().iter().any(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty());
    let new: Vec<NewTopic<'_>> = topics.iter().filter(|(t, _)| !exists(t)).map(|(t, p)| NewTopic::new(t, *p as i32, TopicReplication::Fixed(1))).collect();
    if new.is_empty() {
        return Ok(());
    }
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| ConnectorError::Thread { thread: "Kafka admin runtime", source: e })?;
    let results = runtime
        .block_on(admin.create_topics(&new, &AdminOptions::new().operation_timeout(Some(KAFKA_TIMEOUT))))
        .map_err(fail(format!("cannot create topics on {brokers}")))?;
    for r in results {
        match r {
            Ok(t) => tracing::info!(topic = %t, "created Kafka topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => return Err(ConnectorError::Kafka { what: format!("cannot create topic `{t}` on {brokers}"), source: e.into() }),
        }
    }
    Ok(())
}

/// The epoch this sink delivered last, from its progress topic (the last record with its
/// key, read committed), or `None`.
///
/// # Errors
/// The broker cannot be reached.
pub fn read_progress(config: &KafkaSinkConfig) -> Result<Option<Epoch>, String> {
    let topic = config.progress_topic();
    let id = config.transactional_id();
    let mut c = ClientConfig::new();
    for (k, v) in &config.properties {
        if k.starts_with("security.") || k.starts_with("sasl.") || k.starts_with("ssl.") {
            c.set(k, v);
        }
    }
    c.set("bootstrap.servers", &config.brokers)
        .set("group.id", format!("{id}-progress"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed");
    let consumer: QuietConsumer = c.create_with_context(Quiet).map_err(|e| kafka("cannot create a consumer", config, e))?;
    let (low, high) = consumer.fetch_watermarks(&topic, 0, KAFKA_TIMEOUT).map_err(|e| kafka("cannot read the progress topic's offsets", config, e))?;
    if high <= low {
        return Ok(None);
    }
    // Read backwards in growing windows: the last record of this sink is usually near the end.
    // Each window is read to the end of the partition as the fetches report it, not to `high`:
    // tansu's ListOffsets answers with the first offset of the newest batch it finds, which
    // on its S3 engine (object times in whole seconds) can be an older one.
    let mut window = 64i64;
    loop {
        let start = (high - window).max(low);
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&topic, 0, Offset::Offset(start)).map_err(|e| e.to_string())?;
        consumer.assign(&list).map_err(|e| kafka("cannot assign the progress topic", config, e))?;
        let mut last = None;
        let deadline = Instant::now() + KAFKA_TIMEOUT;
        loop {
            if Instant::now() > deadline {
                return Err(kafka("timed out reading the progress topic", config, topic));
            }
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) if m.key() == Some(id.as_bytes()) => {
                    let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default())
                        .map_err(|e| format!("a progress record of `{id}` in {topic} is not JSON: {e}"))?;
                    last = v["epoch"].as_u64();
                }
                Some(Ok(_)) => {}
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) => tracing::debug!(error = %e, "progress read"),
                None => {}
            }
        }
        if last.is_some() || start == low {
            return Ok(last);
        }
        window *= 4;
    }
}

/// The fields of an output line its message takes key and headers from, each as its JSON text
/// (borrowed: the other fields are skipped, nothing is built per field — a `serde_json::Value`
/// per line was a tenth of the process's time in the Kafka benchmark).
#[derive(Debug, Default, serde::Deserialize)]
struct LineFields<'a> {
    #[serde(borrow)]
    entity: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow)]
    payment_id: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow)]
    id: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow)]
    model: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow)]
    version: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow)]
    raw: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow)]
    raw_base64: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow)]
    reason: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow)]
    source: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow)]
    partition: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow)]
    offset: Option<&'a serde_json::value::RawValue>,
}

/// A field as header text: a string's characters, any other value's JSON (`null`: none).
fn field_text(field: Option<&serde_json::value::RawValue>) -> Option<String> {
    let raw = field?.get();
    if raw.starts_with('"') {
        serde_json::from_str::<String>(raw).ok()
    } else {
        Some(raw.to_string())
    }
}

/// The message of one output line: key, value, headers.
fn message(stream: &str, epoch: Epoch, seq: usize, line: &[u8]) -> (Option<Vec<u8>>, Vec<u8>, OwnedHeaders) {
    let v: LineFields<'_> = serde_json::from_slice(line).unwrap_or_default();
    let mut headers = OwnedHeaders::new()
        .insert(Header { key: "sluice-epoch", value: Some(itoa::Buffer::new().format(epoch).as_bytes()) })
        .insert(Header { key: "sluice-seq", value: Some(itoa::Buffer::new().format(seq).as_bytes()) });
    if stream == OutputStream::DeadLetters.name() {
        // The raw bytes as they came, with where they came from and why they were refused.
        let base64 = v.raw_base64.filter(|b| b.get().starts_with('"')).and_then(|b| field_text(Some(b)));
        let raw = match (field_text(v.raw), base64) {
            (Some(raw), _) => raw.into_bytes(),
            (None, Some(b)) => base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b).unwrap_or_default(),
            (None, None) => Vec::new(),
        };
        for (header, field) in
            [("sluice-dead-letter-reason", v.reason), ("sluice-source", v.source), ("sluice-partition", v.partition), ("sluice-offset", v.offset)]
        {
            if let Some(value) = field_text(field) {
                headers = headers.insert(Header { key: header, value: Some(value.as_bytes()) });
            }
        }
        return (None, raw, headers);
    }
    for (header, field) in [("sluice-event-id", v.id), ("sluice-model", v.model), ("sluice-model-version", v.version)] {
        if let Some(value) = field_text(field) {
            headers = headers.insert(Header { key: header, value: Some(value.as_bytes()) });
        }
    }
    // The message key: the entity, or the payment of a reconciliation changelog line (so that
    // a payment's changes stay in order on one partition).
    (field_text(v.entity).or_else(|| field_text(v.payment_id)).map(String::into_bytes), line.to_vec(), headers)
}

/// A producer with the sink's settings; in exactly-once mode with its transactions initialised
/// (which fences an older producer with the same transactional id).
fn new_producer(config: &KafkaSinkConfig) -> Result<BaseProducer<Context>, DeliveryError> {
    let context = Context {
        failures: AtomicU64::new(0),
        last_failure: Mutex::new(None),
        unconfirmed: AtomicU64::new(0),
        permanent: AtomicBool::new(false),
        fenced: AtomicBool::new(false),
    };
    let producer: BaseProducer<Context> =
        client_config(config).create_with_context(context).map_err(|e| DeliveryError::from_kafka("cannot create a producer", config, &e))?;
    if config.delivery == Delivery::ExactlyOnce {
        producer
            .init_transactions(KAFKA_TIMEOUT)
            .map_err(|e| DeliveryError::from_kafka("cannot start transactions (a broker without them needs `delivery = \"at_least_once\"`)", config, &e))?;
    }
    Ok(producer)
}

/// How long a flush waits between its checks that everything is acknowledged.
const FLUSH_ROUND: Duration = Duration::from_millis(10);

struct Deliverer {
    config: KafkaSinkConfig,
    id: String,
    progress_topic: String,
    producer: BaseProducer<Context>,
}

impl Deliverer {
    fn send(&self, record: BaseRecord<'_, [u8], [u8]>) -> Result<(), DeliveryError> {
        let mut record = record;
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    self.producer.poll(Duration::from_millis(50));
                    record = back;
                }
                Err((e, _)) => return Err(DeliveryError::from_kafka("cannot produce", &self.config, &e)),
            }
        }
    }

    /// Waits until every message produced is acknowledged and its delivery report served (the
    /// context counts failures from them), [`KAFKA_TIMEOUT`] at most. rdkafka's
    /// `BaseProducer::flush` waits in rounds of `poll(100 ms)`, each waited out in full even
    /// when the reports are in: every flush cost at least 100 ms, and an epoch has two. Rounds
    /// of 10 ms here. (librdkafka's own blocking flush cannot be used: with reports as events it
    /// waits for them to be served, which nobody does while it waits.)
    fn flush(&self) -> Result<(), KafkaError> {
        let deadline = Instant::now() + KAFKA_TIMEOUT;
        loop {
            match self.producer.flush(Duration::ZERO) {
                Ok(()) => return Ok(()),
                Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)) if Instant::now() < deadline => {
                    self.producer.poll(FLUSH_ROUND);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Delivers one epoch's lines and its progress record.
    ///
    /// On a retriable error in exactly-once mode the open transaction is aborted, so nothing of
    /// the epoch is committed; the caller may deliver the epoch again.
    fn deliver(&self, epoch: Epoch, lines: &[Vec<u8>]) -> Result<(), DeliveryError> {
        let exactly_once = self.config.delivery == Delivery::ExactlyOnce;
        // A record the broker refused for good (too large, not authorised) makes the whole
        // attempt permanent, whatever error surfaced first; a fenced producer says so.
        let permanent = |mut e: DeliveryError| {
            if let Some((code, reason)) = self.producer.client().fatal_error() {
                if fenced_code(code) {
                    return DeliveryError::fenced(&self.config, reason);
                }
                e.retriable &= !permanent_code(code);
                e.message = format!("{} (the producer's fatal error: {reason})", e.message);
            }
            if self.producer.context().permanent.load(Ordering::Relaxed) {
                e.retriable = false;
            }
            e
        };
        if !exactly_once {
            return self.deliver_at_least_once(epoch, lines).map_err(permanent);
        }
        self.producer.begin_transaction().map_err(|e| DeliveryError::from_kafka("cannot begin a transaction", &self.config, &e))?;
        let result = self.deliver_in_transaction(epoch, lines).map_err(permanent);
        if let Err(e) = &result {
            // A producer with a fatal error cannot abort; its successor's init_transactions
            // ends the transaction instead.
            if e.retriable && self.producer.client().fatal_error().is_none() {
                if let Err(abort) = self.producer.abort_transaction(KAFKA_TIMEOUT) {
                    return Err(permanent(DeliveryError::from_kafka(
                        &format!("cannot abort the failed epoch's transaction ({})", e.message),
                        &self.config,
                        &abort,
                    )));
                }
            }
        }
        result
    }

    fn deliver_at_least_once(&self, epoch: Epoch, lines: &[Vec<u8>]) -> Result<(), DeliveryError> {
        let before = self.counts();
        self.send_lines(epoch, lines)?;
        // Every record acknowledged before the progress record says the epoch is out.
        self.flush().map_err(|e| DeliveryError::from_kafka("records not acknowledged", &self.config, &e))?;
        self.check(before)?;
        failpoint("sink.kafka.produced");
        self.send_progress(epoch, lines.len())?;
        self.flush().map_err(|e| DeliveryError::from_kafka("the progress record was not acknowledged", &self.config, &e))?;
        self.check(before)?;
        failpoint("sink.kafka.progress");
        Ok(())
    }

    fn send_lines(&self, epoch: Epoch, lines: &[Vec<u8>]) -> Result<(), DeliveryError> {
        for (seq, line) in lines.iter().enumerate() {
            let (key, value, headers) = message(&self.config.stream, epoch, seq, line);
            let mut record = BaseRecord::to(&self.config.topic).payload(value.as_slice()).headers(headers);
            if let Some(k) = &key {
                record = record.key(k.as_slice());
            }
            self.send(record)?;
            // Delivery reports served every so often, not after each message (each poll read
            // the clock and took librdkafka's locks); a poll serves one report event (of one
            // produce batch), and messages count as queued until theirs is served, so often
            // enough that reports never pile up to a full queue. A full queue polls in `send`,
            // and the epoch's flush serves the rest.
            if seq % 32 == 31 {
                self.producer.poll(Duration::ZERO);
            }
        }
        Ok(())
    }

    fn send_progress(&self, epoch: Epoch, records: usize) -> Result<(), DeliveryError> {
        let progress = serde_json::json!({ "epoch": epoch, "records": records }).to_string();
        self.send(BaseRecord::to(&self.progress_topic).key(self.id.as_bytes()).payload(progress.as_bytes()).partition(0))
    }

    fn deliver_in_transaction(&self, epoch: Epoch, lines: &[Vec<u8>]) -> Result<(), DeliveryError> {
        let before = self.counts();
        self.send_lines(epoch, lines)?;
        self.send_progress(epoch, lines.len())?;
        // The commit flushes anyway; flushing first puts the records at the broker, inside the
        // open transaction, when the failpoint below is reached (a kill there leaves an open
        // transaction with records, which the restart must abort).
        self.flush().map_err(|e| DeliveryError::from_kafka("records not acknowledged", &self.config, &e))?;
        self.check(before)?;
        failpoint("sink.kafka.produced");
        self.producer.commit_transaction(KAFKA_TIMEOUT).map_err(|e| {
            DeliveryError::from_kafka(
                "cannot commit the epoch's transaction (a broker without transactions needs `delivery = \"at_least_once\"`)",
                &self.config,
                &e,
            )
        })?;
        self.check(before)?;
        failpoint("sink.kafka.progress");
        Ok(())
    }

    /// Failed and unconfirmed deliveries so far, for [`Self::check`].
    fn counts(&self) -> (u64, u64) {
        let context = self.producer.context();
        (context.failures.load(Ordering::Relaxed), context.unconfirmed.load(Ordering::Relaxed))
    }

    fn check(&self, before: (u64, u64)) -> Result<(), DeliveryError> {
        let context = self.producer.context();
        let (failures, unconfirmed) = self.counts();
        let (failures, unconfirmed) = (failures - before.0, unconfirmed - before.1);
        if failures > 0 {
            let last = context.last_failure.lock().expect("invariant: not poisoned").clone().map(|(_, m)| m).unwrap_or_default();
            if context.fenced.load(Ordering::Relaxed) {
                return Err(DeliveryError::fenced(&self.config, last));
            }
            let retriable = !context.permanent.load(Ordering::Relaxed);
            return Err(DeliveryError { message: kafka(&format!("{failures} record(s) were not delivered"), &self.config, last), retriable });
        }
        if unconfirmed > 0 {
            let message =
                format!("{unconfirmed} record(s) were acknowledged as duplicates of an earlier send, without an offset; the broker may not hold them");
            return Err(DeliveryError { message: kafka(&message, &self.config, "the epoch is sent again"), retriable: true });
        }
        Ok(())
    }
}

/// Starts the delivery thread of a sink over `store`'s outbox: connects, fences an older
/// producer with the same transactional id (exactly-once), reads the progress, then delivers
/// committed epochs as they come.
///
/// # Errors
/// The broker cannot be reached, refuses transactions (exactly-once on a broker without
/// them), or the topics cannot be created.
pub fn start_delivery(config: &KafkaSinkConfig, store: Arc<StateStore>, stop_on_failure: Arc<AtomicBool>) -> Result<DeliveryHandle, ConnectorError> {
    let what = format!("Kafka sink `{}` → topic `{}`", config.stream, config.topic);
    let progress_topic = config.progress_topic();
    let kafka = |step: &str| {
        let what = format!("{what}: {step}");
        move |e: String| ConnectorError::Kafka { what, source: e.into() }
    };
    ensure_topics(&config.brokers, &config.properties, &[(&config.topic, config.partitions), (&progress_topic, 1)])?;
    let producer = new_producer(config).map_err(|e| kafka("producer")(e.message))?;
    let delivered = read_progress(config).map_err(kafka("progress"))?;
    let state = Arc::new(DeliveryState::default());
    state.delivered.store(delivered.map_or(-1, |e| e as i64), Ordering::Release);
    let mut deliverer = Deliverer { config: config.clone(), id: config.transactional_id(), progress_topic, producer };
    let thread = std::thread::Builder::new()
        .name("sluice-kafka-sink".into())
        .spawn({
            let state = Arc::clone(&state);
            let what = what.clone();
            move || {
                if let Err(e) = delivery_loop(&mut deliverer, &store, &state) {
                    tracing::error!(sink = %what, error = %e, "Kafka delivery stopped; the pipeline stops; undelivered epochs stay in the outbox and go out after a restart");
                    *state.failed.lock().expect("invariant: not poisoned") = Some(e);
                    stop_on_failure.store(true, Ordering::Release);
                }
            }
        })
        .map_err(|source| ConnectorError::Thread { thread: "Kafka delivery thread", source })?;
    Ok(DeliveryHandle { state, what, delivery: config.delivery, thread: Some(thread) })
}

/// How long an epoch's delivery is retried (the broker away, requests timing out) before the
/// pipeline stops with the error.
pub const RETRY_FOR: Duration = Duration::from_secs(600);

/// Delivers an epoch, again and again while the errors are retriable (with backoff up to 5 s,
/// for up to [`RETRY_FOR`]). In at-least-once mode a retried epoch may be delivered twice in
/// part; its copies carry the same `sluice-epoch` and `sluice-seq` headers. In exactly-once
/// mode each failed attempt's transaction is aborted.
///
/// A failed attempt may have delivered the epoch all the same (a commit whose answer was lost
/// with the connection, a broker that restarted after writing it): before each new attempt the
/// new producer's `init_transactions` settles the old producer's transaction (committed or
/// aborted, never left open), and the progress topic, read again, says whether the epoch is
/// out. Only an epoch that is not is sent again.
fn deliver_with_retries(d: &mut Deliverer, epoch: Epoch, lines: &[Vec<u8>], state: &DeliveryState) -> Result<(), String> {
    let started = std::time::Instant::now();
    let mut backoff = Duration::from_millis(100);
    // After a failed attempt: a new producer, then the progress, before the epoch is sent again.
    let mut recovering = false;
    loop {
        let failure = if recovering {
            // A new producer: a client whose broker restarted may keep waiting on requests the
            // broker forgot (seen with tansu). Exactly-once: its init_transactions fences the
            // old one and ends its transaction.
            match new_producer(&d.config).and_then(|p| {
                d.producer = p;
                read_progress(&d.config).map_err(|message| DeliveryError { message, retriable: true })
            }) {
                Ok(Some(delivered)) if delivered >= epoch => {
                    tracing::info!(sink = %d.config.stream, epoch, "the failed attempt had delivered the epoch (its progress record is at the broker)");
                    return Ok(());
                }
                Ok(progress) => {
                    // Epochs acknowledged earlier and gone from the broker now: a broker that
                    // lost acknowledged writes in a crash. Their outbox entries are discarded;
                    // say so rather than lose them silently.
                    let before = state.delivered.load(Ordering::Acquire);
                    if progress.map_or(-1, |p| p as i64) < before {
                        tracing::error!(
                            sink = %d.config.stream,
                            broker_has = ?progress,
                            acknowledged = before,
                            "the broker no longer holds epochs it acknowledged (lost in a broker crash?); their records are not in the outbox any more and are not sent again"
                        );
                    }
                    recovering = false;
                    continue;
                }
                Err(e) => e,
            }
        } else {
            match d.deliver(epoch, lines) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            }
        };
        if !failure.retriable {
            return Err(failure.message);
        }
        if started.elapsed() >= RETRY_FOR {
            return Err(format!("{} (still failing after {} s of retries)", failure.message, RETRY_FOR.as_secs()));
        }
        state.retries.fetch_add(1, Ordering::Relaxed);
        let what = if recovering { "cannot reconnect yet" } else { "Kafka delivery failed; retrying the epoch" };
        tracing::warn!(sink = %d.config.stream, epoch, error = %failure.message, retry_in_ms = backoff.as_millis() as u64, "{what}");
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(5));
        recovering = true;
    }
}

fn delivery_loop(d: &mut Deliverer, store: &Arc<StateStore>, state: &DeliveryState) -> Result<(), String> {
    let reader = StateReader::new(Arc::clone(store));
    let table: Table<BytesCodec> = reader.table(OUTBOX_TABLE).map_err(|e| e.to_string())?;
    let sink = d.id.clone();
    let sink = sink.as_str();
    loop {
        let finishing = state.finish.load(Ordering::Acquire);
        let committed = store.resume_epoch();
        let delivered = state.delivered.load(Ordering::Acquire);
        let from = outbox_key(sink, (delivered + 1) as Epoch, 0);
        let to = outbox_key(sink, committed, 0);
        let entries = if from < to {
            let view = reader.view();
            let snapshot = view.snapshot();
            snapshot.range(&table, &from, &to, usize::MAX).map_err(|e| e.to_string())?
        } else {
            Vec::new()
        };
        let mut epochs: BTreeMap<Epoch, Vec<Vec<u8>>> = BTreeMap::new();
        for (k, v) in entries {
            epochs.entry(epoch_of_key(sink, &k)).or_default().push(v);
        }
        for (epoch, lines) in &epochs {
            deliver_with_retries(d, *epoch, lines, state)?;
            state.delivered.store(*epoch as i64, Ordering::Release);
            state.records.fetch_add(lines.len() as u64, Ordering::Relaxed);
        }
        // Every committed epoch is delivered (epochs without output have no entries).
        if committed > 0 && (committed - 1) as i64 > state.delivered.load(Ordering::Acquire) && epochs.is_empty() {
            state.delivered.store((committed - 1) as i64, Ordering::Release);
        }
        if let Some(last) = epochs.keys().last() {
            store.discard_range(&table, &outbox_key(sink, 0, 0), &outbox_key(sink, last + 1, 0)).map_err(|e| e.to_string())?;
            failpoint("sink.kafka.discarded");
        }
        state.queue_depth.store(i64::from(d.producer.in_flight_count()), Ordering::Relaxed);
        if finishing && epochs.is_empty() {
            return Ok(());
        }
        if epochs.is_empty() {
            d.producer.poll(Duration::from_millis(5));
        }
    }
}

/// The sink operator: worker 0 writes each complete epoch's lines, sorted, into the outbox in
/// that epoch's commit; the delivery thread takes them from there.
///
/// # Errors
/// The outbox table is missing.
pub fn kafka_sink<'scope>(
    lines: Stream<'scope, Epoch, Vec<OutputLine>>,
    config: &KafkaSinkConfig,
    delivery: Option<Arc<DeliveryState>>,
    state: Rc<RefCell<WorkerState>>,
) -> Result<Stream<'scope, Epoch, Vec<()>>, ConnectorError> {
    let table: Table<BytesCodec> = state.borrow().store().table(OUTBOX_TABLE)?;
    let sink = config.transactional_id();
    let scope = lines.scope();
    let stream = lines.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(Exchange::new(|_: &OutputLine| 0), "KafkaSink", move |cap, info| {
        let activator = scope.activator_for(info.address);
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
            let Some(delivery) = delivery.as_ref() else {
                held.downgrade(frontier);
                return;
            };
            // Delivery failed: the pipeline is stopping; epochs still go to the outbox (and out
            // after a restart), without waiting for a delivery that will not come.
            let failed = delivery.failed.lock().expect("invariant: not poisoned").is_some();
            let mut through = frontier;
            while let Some(epoch) = pending.next_complete(frontier) {
                // Backpressure: hold this epoch while the delivery is too far behind.
                let delivered = delivery.delivered.load(Ordering::Acquire);
                if !failed && epoch as i64 > delivered + MAX_UNDELIVERED as i64 {
                    through = Some(epoch);
                    activator.activate_after(Duration::from_millis(5));
                    break;
                }
                let mut lines = concat(pending.take(epoch));
                lines.sort_unstable();
                let mut state = state.borrow_mut();
                for (seq, line) in lines.into_iter().enumerate() {
                    state.put_blind(epoch, &table, &outbox_key(&sink, epoch, seq as u32), line.bytes.to_vec());
                }
                failpoint("sink.kafka.staged");
            }
            held.downgrade(through);
        }
    });
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers;

    fn headers_of(h: &OwnedHeaders) -> Vec<(String, String)> {
        h.iter().map(|h| (h.key.to_string(), String::from_utf8(h.value.unwrap_or_default().to_vec()).unwrap())).collect()
    }

    #[test]
    fn a_message_takes_its_key_and_headers_from_the_line() {
        let line = br#"{"entity":"cus_\u00e91","id":"evt_\"7","time_ms":5,"values":[1.5,null],"model":"lr","version":3}"#;
        let (key, value, headers) = message("features", 12, 4, line);
        assert_eq!(key.as_deref(), Some("cus_\u{e9}1".as_bytes()));
        assert_eq!(value, line.to_vec());
        let pairs = |v: &[(&str, &str)]| v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
        assert_eq!(
            headers_of(&headers),
            pairs(&[("sluice-epoch", "12"), ("sluice-seq", "4"), ("sluice-event-id", "evt_\"7"), ("sluice-model", "lr"), ("sluice-model-version", "3")])
        );
        // A changelog line is keyed by its payment; a null entity is no key.
        let (key, _, headers) = message("changelog", 0, 0, br#"{"entity":null,"payment_id":"pay_9"}"#);
        assert_eq!(key.as_deref(), Some(&b"pay_9"[..]));
        assert_eq!(headers_of(&headers).len(), 2);
    }

    #[test]
    fn a_dead_letter_message_is_the_raw_record() {
        let line = br#"{"reason":"malformed_json","source":"payments","partition":2,"offset":41,"raw":"{\"id\": 1"}"#;
        let (key, value, headers) = message("dead_letters", 1, 0, line);
        assert_eq!((key, value), (None, b"{\"id\": 1".to_vec()));
        let h = headers_of(&headers);
        assert_eq!(
            &h[2..],
            &[
                ("sluice-dead-letter-reason".to_string(), "malformed_json".to_string()),
                ("sluice-source".to_string(), "payments".to_string()),
                ("sluice-partition".to_string(), "2".to_string()),
                ("sluice-offset".to_string(), "41".to_string()),
            ]
        );
        // Bytes that are not UTF-8 come as base64.
        let (_, value, _) = message("dead_letters", 1, 0, br#"{"reason":"not_utf8","raw_base64":"/wA="}"#);
        assert_eq!(value, vec![0xff, 0x00]);
        // A line that is not JSON has no key, no fields: its message is empty.
        let (key, value, headers) = message("dead_letters", 1, 0, b"not json");
        assert_eq!((key, value, headers_of(&headers).len()), (None, Vec::new(), 2));
    }
}
