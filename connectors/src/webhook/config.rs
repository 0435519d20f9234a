//! `[[sources]] type = "webhook"`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Deserialize;

use super::log::WebhookLog;
use super::signature::{Scheme, Verifier};
use crate::ConnectorError;

/// A webhook source: an HTTP route that verifies, logs durably, then acknowledges.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSourceConfig {
    /// The source's name.
    pub name: String,
    /// Where to listen (`127.0.0.1:8790`; port 0: any free port).
    pub listen: String,
    /// The route (default `/webhooks/<name>`).
    #[serde(default)]
    pub path: Option<String>,
    /// The signature scheme: `standard`, `stripe` or `github`.
    pub scheme: Scheme,
    /// Secrets; more than one while rotating.
    pub secrets: Vec<String>,
    /// Timestamp tolerance, seconds (Standard Webhooks, Stripe).
    #[serde(default = "default_tolerance")]
    pub tolerance_s: i64,
    /// Larger bodies are answered 413.
    #[serde(default = "default_body_bytes_max")]
    pub body_bytes_max: usize,
    /// Requests handled at once; more are answered 503.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: usize,
    /// Connections open at once (idle keep-alive ones too); more are answered 503 and closed.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Webhooks logged but not yet read by the pipeline beyond which requests are answered
    /// 429 with `Retry-After` (backpressure, not an unbounded log).
    #[serde(default = "default_backlog_max")]
    pub backlog_max: u64,
    /// JSON pointer of the webhook id in the body, for schemes without an id header (Stripe's
    /// event id: `/id`). GitHub's `X-GitHub-Delivery` and Standard Webhooks' `webhook-id`
    /// headers are used when present.
    #[serde(default = "default_id")]
    pub id: String,
    /// The log's directory (default: `<state_dir>/webhooks/<name>`, set at start).
    #[serde(default)]
    pub log_dir: Option<PathBuf>,
    /// A connection that has not sent a request's whole header this long after it opened or
    /// after its previous response (an idle keep-alive connection too) is closed (ms).
    #[serde(default = "default_header_timeout_ms")]
    pub header_timeout_ms: u64,
    /// A request whose body has not all arrived this long after its header is answered 408 (ms).
    #[serde(default = "default_body_timeout_ms")]
    pub body_timeout_ms: u64,
    /// The log, once opened: shared by the server and the reader (and by every clone of this
    /// config), so the log is opened once per pipeline without a process-wide registry.
    #[serde(skip)]
    pub(crate) opened: OpenedLog,
}

/// The log a webhook source opened (see [`WebhookSourceConfig::log`]); equal whatever it holds,
/// so configs compare by what was written in the file.
#[derive(Debug, Clone, Default)]
pub(crate) struct OpenedLog(pub(crate) Arc<Mutex<Option<Arc<WebhookLog>>>>);

impl PartialEq for OpenedLog {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

fn default_header_timeout_ms() -> u64 {
    10_000
}

fn default_body_timeout_ms() -> u64 {
    10_000
}

fn default_tolerance() -> i64 {
    super::signature::DEFAULT_TOLERANCE_S
}
fn default_body_bytes_max() -> usize {
    1 << 20
}
fn default_max_concurrent() -> usize {
    256
}
fn default_max_connections() -> usize {
    4096
}
fn default_backlog_max() -> u64 {
    100_000
}
fn default_id() -> String {
    "/id".into()
}

impl WebhookSourceConfig {
    /// The route.
    pub fn route(&self) -> String {
        self.path.clone().unwrap_or_else(|| format!("/webhooks/{}", self.name))
    }

    /// The verifier of the configured scheme and secrets.
    ///
    /// # Errors
    /// As [`Verifier::new`].
    pub fn verifier(&self, key: &str) -> Result<Verifier, ConnectorError> {
        Verifier::new(self.scheme, &self.secrets, self.tolerance_s, key)
    }

    /// Checks the config; `key` is where it sits.
    ///
    /// # Errors
    /// The first problem found, named by its key.
    pub fn validate(&self, key: &str) -> Result<(), ConnectorError> {
        self.verifier(key)?;
        crate::http::resolve_listen(&self.listen).map_err(|problem| ConnectorError::Config { key: format!("{key}.listen"), problem })?;
        if !self.route().starts_with('/') {
            return Err(ConnectorError::Config { key: format!("{key}.path"), problem: "must start with /".into() });
        }
        if self.body_bytes_max == 0 || self.max_concurrent == 0 || self.max_connections == 0 || self.backlog_max == 0 {
            return Err(ConnectorError::Config {
                key: key.to_string(),
                problem: "body_bytes_max, max_concurrent, max_connections and backlog_max must be at least 1".into(),
            });
        }
        if !self.id.starts_with('/') {
            return Err(ConnectorError::Config { key: format!("{key}.id"), problem: format!("`{}` is not a JSON pointer", self.id) });
        }
        Ok(())
    }
}
