//! The epoch commit protocol, in one place: its steps, what a crash after each leaves behind,
//! and how the next start repairs it.
//!
//! An epoch `e` goes through these steps in this order. Each step is also a *failpoint* of the
//! same name (see [`failpoint`]): the crash tests kill the process there.
//!
//! | step | what has happened | a crash right after it |
//! |---|---|---|
//! | `source.read` | a source read records of `e` and holds its new position in memory | nothing durable; the restart reads them again from the committed position |
//! | `webhook.logged` | a webhook's body is appended to the source's log and synced; the 2xx answer comes next | not acknowledged, yet in the output after the restart (a retry from the sender is a duplicate, dropped by id) |
//! | `sink.file.written` | a file sink wrote `e`'s lines after the committed length (not synced) | the start cuts the file back to its committed length; `e` is produced again |
//! | `sink.file.synced` | … and fsynced them, and staged the file's new length with `e`'s state | as above |
//! | `sink.kafka.staged` | a Kafka sink staged `e`'s records in the outbox table, with `e`'s state | as above (the outbox entries were only staged) |
//! | `commit.batch` | the commit thread built **one** RocksDB write batch: every worker's staged changes of `e` (operator state, source positions, file lengths, outbox), the resume epoch `e + 1` and the commit time; epochs handed in while the previous batch was syncing go in the same batch (group commit: they commit together, and a key several of them wrote is written once, with its last value) | as above: nothing of the batch is on disk |
//! | `commit.synced` | the batch is written and the WAL synced: **`e` is committed** | the restart resumes at `e + 1`: `e`'s file output is kept, its outbox entries are delivered |
//! | `checkpoint.files` | (every `checkpoint_every`, after a commit) a checkpoint's table files are linked into `checkpoints/epoch-<e>.tmp`, its marker not yet written | the half-written checkpoint is listed as incomplete, never restored, and removed at the next start |
//! | `sink.kafka.produced` | delivery: the broker acknowledged `e`'s records (at-least-once), or they are in the open transaction (exactly-once) | at-least-once: `e` is delivered again, each copy with the same `sluice-epoch`/`sluice-seq` headers; exactly-once: the restart's `init_transactions` aborts the open transaction, then `e` is delivered |
//! | `sink.kafka.progress` | the progress record of `e` is acknowledged (with the records' transaction committed, in exactly-once mode): `e`'s output is committed at the broker | the restart reads the progress topic and does not deliver `e` again |
//! | `sink.kafka.discarded` | `e`'s outbox entries are deleted | nothing left to do for `e` |
//!
//! So the record that an epoch's output is committed is, for a file, the length in the state
//! commit (output past it is cut off at start), and for Kafka, the progress record (outbox
//! epochs up to it are not delivered again). Output of an epoch that is not committed is
//! produced again after the restart, exactly once, because operators are deterministic given
//! their input and the sources resume at the committed positions.
//!
//! # Failpoints
//!
//! With the cargo feature `failpoints` (on only when tests are built: the crates list
//! themselves with it as dev-dependencies), [`failpoint`] reads `SLUICE_FAILPOINT=name@n` from
//! the environment and kills the process with SIGKILL at the `n`-th time (1 when `@n` is left
//! out) the step `name` is reached. `name@n:pause=MS` stops the thread there for `MS` ms instead
//! (saying `failpoint NAME paused` on stderr), so that a test can act while the process holds
//! that state: the broker killed while a transaction is open. Without the feature it compiles
//! to nothing.

/// Every step of the protocol, in order, with what has happened when it is reached.
pub const STEPS: &[(&str, &str)] = &[
    ("source.read", "a source read records of the epoch; its new position is in memory"),
    ("webhook.logged", "a webhook is in the source's synced log, not yet answered"),
    ("sink.file.written", "a file sink wrote the epoch's lines, not synced"),
    ("sink.file.synced", "a file sink synced the epoch's lines and staged the file length"),
    ("sink.kafka.staged", "a Kafka sink staged the epoch's records in the outbox"),
    ("commit.batch", "the epoch's write batch is built, not written"),
    ("commit.synced", "the epoch's batch is written and synced: the epoch is committed"),
    ("checkpoint.files", "a checkpoint's files are linked, its marker not yet written"),
    ("sink.kafka.produced", "the broker has the epoch's records; no progress record yet"),
    ("sink.kafka.progress", "the epoch's progress record is at the broker"),
    ("sink.kafka.discarded", "the epoch's outbox entries are deleted"),
];

/// Marks that the protocol reached step `name` (one of [`STEPS`]). With the `failpoints`
/// feature, kills the process here when `SLUICE_FAILPOINT` says so.
#[inline(always)]
pub fn failpoint(name: &'static str) {
    #[cfg(feature = "failpoints")]
    armed::hit(name);
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

#[cfg(feature = "failpoints")]
mod armed {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    /// The armed failpoint: its name, the hit that acts, and a pause in ms instead of a kill.
    fn armed() -> Option<&'static (String, u64, Option<u64>)> {
        static ARMED: OnceLock<Option<(String, u64, Option<u64>)>> = OnceLock::new();
        ARMED
            .get_or_init(|| {
                let spec = std::env::var("SLUICE_FAILPOINT").ok()?;
                let (point, pause) = match spec.split_once(":pause=") {
                    Some((point, ms)) => (point, Some(ms.parse().unwrap_or_else(|_| panic!("SLUICE_FAILPOINT={spec}: `{ms}` is not a number of ms")))),
                    None => (spec.as_str(), None),
                };
                let (name, n) = match point.split_once('@') {
                    Some((name, n)) => (name.to_string(), n.parse().unwrap_or_else(|_| panic!("SLUICE_FAILPOINT={spec}: `{n}` is not a count"))),
                    None => (point.to_string(), 1),
                };
                assert!(super::STEPS.iter().any(|(s, _)| *s == name), "SLUICE_FAILPOINT={spec}: no step `{name}`");
                Some((name, n, pause))
            })
            .as_ref()
    }

    pub(super) fn hit(name: &'static str) {
        static HITS: AtomicU64 = AtomicU64::new(0);
        let Some((armed, n, pause)) = armed() else { return };
        if armed != name {
            return;
        }
        if HITS.fetch_add(1, Ordering::SeqCst) + 1 == *n {
            if let Some(ms) = pause {
                eprintln!("sluice: failpoint {name} paused ({n}) for {ms} ms");
                std::thread::sleep(std::time::Duration::from_millis(*ms));
                eprintln!("sluice: failpoint {name} resumed");
                return;
            }
            eprintln!("sluice: failpoint {name} reached ({n}): killing the process");
            kill_self();
        }
    }

    #[allow(unsafe_code)]
    fn kill_self() -> ! {
        // SAFETY: getpid and kill take plain integers and touch no memory of ours.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        loop {
            std::thread::park();
        }
    }
}
