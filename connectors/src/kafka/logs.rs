//! librdkafka's own log lines and error callbacks, into `tracing`, at most one line per kind per
//! [`WINDOW`] for the whole process.
//!
//! While a broker is away, every connection of every client (one consumer per partition, the
//! offset publisher, the producer) reports each failed reconnect: a 3 s broker restart gave 115
//! ERROR lines with rdkafka's default context. sluice retries these itself and reports what
//! it cannot ride out, so transport failures are warnings here, and repeats of a kind are
//! counted and reported with the next line of that kind.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;

/// How long repeats of one kind of line are held back.
pub const WINDOW: Duration = Duration::from_secs(30);

/// The client context of sluice's consumers, admin clients and the demo's feeder: [`ClientContext::log`] and
/// [`ClientContext::error`] through [`log`] and [`error`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Quiet;

impl ClientContext for Quiet {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self::error(&error, reason);
    }
}

impl ConsumerContext for Quiet {}

impl ProducerContext for Quiet {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

/// A consumer with the [`Quiet`] context.
pub type QuietConsumer = BaseConsumer<Quiet>;

/// Lines written and held back, per kind.
static SEEN: LazyLock<Mutex<HashMap<String, Seen>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

struct Seen {
    written: Instant,
    held_back: u64,
}

/// Whether a line of `kind` is written now, and how many of its kind were held back since the
/// last one written.
fn admit(kind: &str, now: Instant) -> Option<u64> {
    let mut seen = SEEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    match seen.get_mut(kind) {
        Some(s) if now.duration_since(s.written) < WINDOW => {
            s.held_back += 1;
            None
        }
        Some(s) => {
            let held_back = s.held_back;
            *s = Seen { written: now, held_back: 0 };
            Some(held_back)
        }
        None => {
            seen.insert(kind.to_string(), Seen { written: now, held_back: 0 });
            Some(0)
        }
    }
}

/// Transport failures sluice rides out by itself (reconnects, retries, replays).
fn transient(code: Option<RDKafkaErrorCode>) -> bool {
    matches!(
        code,
        Some(
            RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::Resolve
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::BrokerNotAvailable
                | RDKafkaErrorCode::NetworkException
        )
    )
}

/// A librdkafka log line. Connection failures (`FAIL`) are warnings.
pub fn log(level: RDKafkaLogLevel, fac: &str, message: &str) {
    if matches!(level, RDKafkaLogLevel::Debug) {
        tracing::debug!(target: "librdkafka", "{fac} {message}");
        return;
    }
    let Some(held_back) = admit(&format!("log:{fac}:{level:?}"), Instant::now()) else {
        return;
    };
    let more = if held_back > 0 { format!(" ({held_back} more {fac} lines in the last {} s)", WINDOW.as_secs()) } else { String::new() };
    match level {
        RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error if fac != "FAIL" => {
            tracing::error!(target: "librdkafka", "{fac} {message}{more}");
        }
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => tracing::info!(target: "librdkafka", "{fac} {message}{more}"),
        _ => tracing::warn!(target: "librdkafka", "{fac} {message}{more}"),
    }
}

/// A librdkafka error callback (an error of the client, not of one request).
pub fn error(error: &KafkaError, reason: &str) {
    let code = error.rdkafka_error_code();
    // The end of a partition (`enable.partition.eof`, for bounded reads) is news, not an error.
    if matches!(error, KafkaError::PartitionEOF(_)) || code == Some(RDKafkaErrorCode::PartitionEOF) {
        tracing::debug!(target: "librdkafka", "{error}: {reason}");
        return;
    }
    let Some(held_back) = admit(&format!("error:{code:?}"), Instant::now()) else {
        return;
    };
    let more = if held_back > 0 { format!(" ({held_back} more like it in the last {} s)", WINDOW.as_secs()) } else { String::new() };
    if transient(code) {
        tracing::warn!(target: "librdkafka", "{error}: {reason}; retrying{more}");
    } else {
        tracing::error!(target: "librdkafka", "{error}: {reason}{more}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_is_written_once_per_window_with_the_count_held_back() {
        let t0 = Instant::now();
        assert_eq!(admit("test:kind", t0), Some(0));
        assert_eq!(admit("test:kind", t0 + Duration::from_secs(1)), None);
        assert_eq!(admit("test:kind", t0 + Duration::from_secs(29)), None);
        // Another kind is not held back by the first.
        assert_eq!(admit("test:other", t0 + Duration::from_secs(2)), Some(0));
        assert_eq!(admit("test:kind", t0 + Duration::from_secs(30)), Some(2));
        assert_eq!(admit("test:kind", t0 + Duration::from_secs(31)), None);
        assert_eq!(admit("test:kind", t0 + Duration::from_secs(61)), Some(1));
    }

    #[test]
    fn transport_failures_are_transient_and_others_are_not() {
        assert!(transient(Some(RDKafkaErrorCode::AllBrokersDown)));
        assert!(transient(Some(RDKafkaErrorCode::BrokerTransportFailure)));
        assert!(!transient(Some(RDKafkaErrorCode::TopicAuthorizationFailed)));
        assert!(!transient(Some(RDKafkaErrorCode::SaslAuthenticationFailed)));
        assert!(!transient(None));
    }
}
