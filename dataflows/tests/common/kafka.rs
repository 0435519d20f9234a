//! What the Kafka crash tests share: generated input, producing it, reading a topic back, the
//! pipeline they run, the uninterrupted file run to compare with, and a noida-db broker of a
//! test's own (the transactional broker, `scripts/kafka.sh noida`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use sluice_connectors::generator::{GeneratorConfig, GeneratorReader};
use sluice_connectors::{PartitionReader, ReadStatus};

pub fn brokers() -> String {
    let b = std::env::var("SLUICE_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".into());
    let addr = b.split(',').next().unwrap().to_string();
    assert!(
        std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2)).is_ok(),
        "no Kafka broker at {b}: run `scripts/kafka.sh start` (make test does)"
    );
    b
}

pub fn nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

/// The generator's records per partition (duplicates, conflicts, disorder, late, malformed).
/// `late_pct`: the share of records later than the allowed lateness; whether such a record is
/// dropped depends on how far the other partitions had been read when it came, so a run that
/// reads the partitions at a different pace than the reference may differ there.
pub fn generated(partitions: u32, per_partition: u64, late_pct: f64) -> Vec<Vec<Vec<u8>>> {
    let mut g = GeneratorConfig::named("payments");
    g.partitions = partitions;
    g.events = per_partition * u64::from(partitions);
    g.customers = 10_000;
    g.duplicate_pct = 2.0;
    g.conflict_pct = 0.2;
    g.out_of_order_pct = 5.0;
    g.late_pct = late_pct;
    g.malformed_pct = 0.5;
    g.start_ms = 1_790_000_000_000;
    (0..partitions)
        .map(|p| {
            let mut reader = GeneratorReader::new(&g, p);
            let (mut out, mut batch) = (Vec::new(), Vec::new());
            loop {
                let status = reader.read(10_000, &mut batch).unwrap();
                out.extend(batch.drain(..).map(|f| f.bytes));
                if status == ReadStatus::End {
                    return out;
                }
            }
        })
        .collect()
}

pub fn produce(brokers: &str, topic: &str, partitions: &[Vec<Vec<u8>>]) {
    let producer: BaseProducer = rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).set("enable.idempotence", "true").create().unwrap();
    for (p, records) in partitions.iter().enumerate() {
        for r in records {
            let mut record = BaseRecord::<[u8], [u8]>::to(topic).payload(r.as_slice()).partition(p as i32);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, back)) => {
                        producer.poll(Duration::from_millis(20));
                        record = back;
                    }
                }
            }
        }
    }
    producer.flush(Duration::from_secs(60)).unwrap();
}

/// Every record of a topic with its `sluice-epoch` and `sluice-seq` headers.
/// Reads until nothing has come for `idle`.
pub fn consume(brokers: &str, topic: &str, idle: Duration) -> Vec<(Vec<u8>, u64, u64)> {
    read_topic(brokers, topic, idle, |m| {
        let header = |name: &str| {
            m.headers()
                .and_then(|h| h.iter().find(|x| x.key == name).and_then(|x| x.value).map(|v| String::from_utf8_lossy(v).parse::<u64>().unwrap()))
                .unwrap_or_else(|| panic!("a record without {name}"))
        };
        (m.payload().unwrap_or_default().to_vec(), header("sluice-epoch"), header("sluice-seq"))
    })
}

/// Every record of `topic`: payloads only.
pub fn consume_raw(brokers: &str, topic: &str, idle: Duration) -> Vec<Vec<u8>> {
    read_topic(brokers, topic, idle, |m| m.payload().unwrap_or_default().to_vec())
}

/// `each` of every record of `topic` (read committed) from the beginning, until none came for
/// `idle`.
pub fn read_topic<T>(brokers: &str, topic: &str, idle: Duration, each: impl Fn(&rdkafka::message::BorrowedMessage<'_>) -> T) -> Vec<T> {
    read_topic_as(brokers, topic, "read_committed", idle, each)
}

/// As [`read_topic`], with the given `isolation.level`.
pub fn read_topic_as<T>(brokers: &str, topic: &str, isolation: &str, idle: Duration, each: impl Fn(&rdkafka::message::BorrowedMessage<'_>) -> T) -> Vec<T> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("crash-check-{}", nanos()))
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()
        .unwrap();
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    let mut list = rdkafka::TopicPartitionList::new();
    for p in 0..metadata.topics()[0].partitions().len() as i32 {
        list.add_partition_offset(topic, p, rdkafka::Offset::Beginning).unwrap();
    }
    consumer.assign(&list).unwrap();
    let mut out = Vec::new();
    let mut last = Instant::now();
    while last.elapsed() < idle {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            out.push(each(&m.unwrap()));
            last = Instant::now();
        }
    }
    out
}

/// The pipeline: the given source and features sink, 2 workers, small epochs.
pub fn pipeline(dir: &Path, source: &str, sink: &str) -> std::path::PathBuf {
    let text = format!(
        r#"state_dir = "state"
workers = 2
epoch_records = 400
max_inflight_epochs = 3

[event]
id = "/id"
entity = "/customer"
time = "/created_ms"
time_format = "millis"
kind = "/type"
[event.numbers]
amount = "/amount"

{source}

[[features]]
name = "n_1m"
op = "count"
window = "1m"

[[features]]
name = "sum_5m"
op = "sum"
field = "amount"
window = "5m"
slide = "1m"

[[features]]
name = "last"
op = "last"
field = "amount"

{sink}
"#
    );
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The feature records of the same records through files, uninterrupted, sorted.
pub fn reference(work: &Path, input: &[Vec<Vec<u8>>]) -> Vec<Vec<u8>> {
    let file_dir = work.join("files");
    std::fs::create_dir_all(&file_dir).unwrap();
    let mut paths = Vec::new();
    for (p, records) in input.iter().enumerate() {
        let path = file_dir.join(format!("part{p}.jsonl"));
        let mut text = Vec::new();
        for r in records {
            text.extend_from_slice(r);
            text.push(b'\n');
        }
        std::fs::write(&path, text).unwrap();
        paths.push(format!("{path:?}"));
    }
    let source = format!("[[sources]]\ntype = \"file\"\nname = \"payments\"\npaths = [{}]\n", paths.join(", "));
    let sink = "[[sinks]]\nstream = \"features\"\npath = \"features.jsonl\"\n";
    let config = pipeline(&file_dir, &source, sink);
    let out = Command::new(env!("CARGO_BIN_EXE_sluice")).current_dir(&file_dir).arg("run").arg(&config).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut want: Vec<Vec<u8>> = std::fs::read_to_string(file_dir.join("features.jsonl")).unwrap().lines().map(|l| l.as_bytes().to_vec()).collect();
    want.sort();
    want
}

/// Checks `got` against `want`: nothing missing, nothing extra, copies of a record with equal
/// `sluice-epoch`/`sluice-seq` headers. Returns (repeats, the epochs repeated).
pub fn check(got: &[(Vec<u8>, u64, u64)], want: &[Vec<u8>], what: &str) -> (usize, std::collections::BTreeSet<u64>) {
    let mut copies: BTreeMap<&[u8], Vec<(u64, u64)>> = BTreeMap::new();
    for (payload, epoch, seq) in got {
        copies.entry(payload.as_slice()).or_default().push((*epoch, *seq));
    }
    let missing = want.iter().filter(|w| !copies.contains_key(w.as_slice())).count();
    let extra = copies.len() - (want.len() - missing);
    let mut repeated = std::collections::BTreeSet::new();
    let mut repeats = 0;
    for (payload, c) in &copies {
        if c.len() > 1 {
            repeats += c.len() - 1;
            assert!(c.iter().all(|x| *x == c[0]), "{what}: copies of one record with different epoch/seq headers: {c:?} {}", String::from_utf8_lossy(payload));
            repeated.insert(c[0].0);
        }
    }
    assert_eq!(missing, 0, "{what}: records lost");
    assert_eq!(extra, 0, "{what}: records an uninterrupted run does not have");
    (repeats, repeated)
}

/// A free local TCP port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The noida-db binary (`scripts/kafka.sh noida` installs it and prints its path, which
/// `make test` passes as `SLUICE_NOIDA`).
pub fn noida_bin() -> PathBuf {
    let bin = std::env::var("SLUICE_NOIDA").map(PathBuf::from).unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/noida-db/noida-db"));
    assert!(bin.is_file(), "no noida-db at {}: run `scripts/kafka.sh noida` (make test does)", bin.display());
    bin
}

/// A noida-db broker (Kafka protocol with transactions) of a test's own, on a free port with a
/// fresh data directory; it can be killed and started again on the same data.
pub struct Noida {
    pub port: u16,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Noida {
    /// Starts one keeping its data in `dir/noida-data`.
    pub fn start(dir: &Path) -> Noida {
        let data = dir.join("noida-data");
        std::fs::create_dir_all(&data).unwrap();
        let mut broker = Noida { port: free_port(), data, log: dir.join("noida.log"), child: None };
        broker.restart();
        broker
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the process (again) on the same data directory and port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "noida-db runs already");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(noida_bin())
            .args(["start", "--host", "127.0.0.1", "--only", "kafka", "--kafka-port", &self.port.to_string(), "--data-dir"])
            .arg(&self.data)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(20), "noida-db did not start: {}", std::fs::read_to_string(&self.log).unwrap_or_default());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}

impl Drop for Noida {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A Kafka source of `topic` read to its end, and the exactly-once (default) features sink to
/// `topic_out`, for [`pipeline`].
pub fn kafka_ends(brokers: &str, topic_in: &str, topic_out: &str, delivery: &str) -> (String, String) {
    (
        format!("[[sources]]\ntype = \"kafka\"\nname = \"payments\"\nbrokers = \"{brokers}\"\ntopic = \"{topic_in}\"\nuntil = \"high_watermark\"\n"),
        format!(
            "[[sinks]]\nstream = \"features\"\ntype = \"kafka\"\nbrokers = \"{brokers}\"\ntopic = \"{topic_out}\"\ndelivery = \"{delivery}\"\npartitions = 2\n"
        ),
    )
}

/// The sorted multiset difference of `got` and `want`: (repeats, lost).
pub fn exact(got: &[Vec<u8>], want: &[Vec<u8>]) -> (usize, usize) {
    let mut counts: BTreeMap<&[u8], i64> = BTreeMap::new();
    for w in want {
        *counts.entry(w).or_default() += 1;
    }
    for g in got {
        *counts.entry(g).or_default() -= 1;
    }
    let repeats = counts.values().filter(|c| **c < 0).map(|c| (-c) as usize).sum();
    let lost = counts.values().filter(|c| **c > 0).map(|c| *c as usize).sum();
    (repeats, lost)
}
