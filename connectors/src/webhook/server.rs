//! The webhook HTTP server of one source (axum on its own tokio runtime thread).
//!
//! `POST <route>`: 413 past `body_bytes_max`; 503 past `max_concurrent` requests at once (and
//! past `max_connections` connections, see [`crate::http`]); the
//! signature checked (400 unreadable, 401 forged or stale); 400 for a body that is not JSON or
//! has no id; 429 with `Retry-After: 1` while the pipeline is `backlog_max` webhooks behind;
//! then appended to the log with the WAL synced, and only then 200 (`{"status":"accepted"}`,
//! or `"duplicate"` for an id already logged: providers redeliver until they get a 2xx). A
//! failed append (disk full) is answered 503 and nothing is acknowledged. Every outcome is
//! counted per source (`sluice_webhook_requests_total`). Slow clients: a connection that has
//! not sent a whole request header `header_timeout_ms` after it opened (or after its previous
//! answer, when kept alive) is closed; a body not all there `body_timeout_ms` after its header
//! is answered 408.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use sluice_operators::Metrics;

use super::config::WebhookSourceConfig;
use super::log::{Appended, WebhookLog};
use super::signature::Verifier;
use crate::ConnectorError;

/// Says why the pipeline cannot take data now (its state disk is full), or `None`: while it
/// says so, webhooks are answered 503 with Retry-After and nothing is logged.
pub type Gate = Arc<dyn Fn() -> Option<String> + Send + Sync>;

struct Shared {
    gate: Gate,
    name: String,
    verifier: Verifier,
    log: Arc<WebhookLog>,
    id_pointer: String,
    backlog_max: u64,
    slots: tokio::sync::Semaphore,
    metrics: Arc<Metrics>,
    body_bytes_max: usize,
    body_timeout: Duration,
}

impl Shared {
    fn count(&self, outcome: &str) {
        self.metrics.webhook.add(&self.name, outcome);
    }

    fn answer(&self, status: StatusCode, outcome: &str, message: &str) -> Response {
        self.count(outcome);
        (status, [("content-type", "application/json")], serde_json::json!({ "status": outcome, "message": message }).to_string()).into_response()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

async fn receive(State(s): State<Arc<Shared>>, headers: HeaderMap, body: axum::body::Body) -> Response {
    let Ok(_slot) = s.slots.try_acquire() else {
        return s.answer(StatusCode::SERVICE_UNAVAILABLE, "too_many_requests_at_once", "too many requests at once; retry");
    };
    if let Some(reason) = (s.gate)() {
        s.count("unavailable");
        let body = serde_json::json!({ "status": "unavailable", "message": format!("not accepting webhooks: {reason}; retry") }).to_string();
        return (StatusCode::SERVICE_UNAVAILABLE, [("content-type", "application/json"), ("retry-after", "5")], body).into_response();
    }
    // A slow client's body is given `body_timeout` (it holds a slot meanwhile).
    let body = match crate::http::read_body(body, s.body_bytes_max, s.body_timeout).await {
        Ok(b) => b,
        Err(e) => {
            let outcome = match e {
                crate::http::BodyError::TooLarge(_) => "too_large",
                crate::http::BodyError::Timeout(_) => "body_timeout",
                crate::http::BodyError::Unreadable(_) => "unreadable_body",
            };
            return s.answer(e.status(), outcome, &e.to_string());
        }
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let now = now_ms();
    let id_header = match s.verifier.verify(header, &body, now / 1000) {
        Ok(id) => id,
        Err(r) => return s.answer(StatusCode::from_u16(r.status()).unwrap_or(StatusCode::UNAUTHORIZED), r.reason(), &r.to_string()),
    };
    let json: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return s.answer(StatusCode::BAD_REQUEST, "bad_json", &format!("the body is not JSON: {e}")),
    };
    let id = id_header.or_else(|| header("x-github-delivery").map(str::to_string)).or_else(|| match json.pointer(&s.id_pointer) {
        Some(serde_json::Value::String(v)) if !v.is_empty() => Some(v.clone()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    });
    let Some(id) = id else {
        return s.answer(StatusCode::BAD_REQUEST, "no_id", &format!("no webhook id: no id header and nothing at {}", s.id_pointer));
    };
    if s.log.backlog() >= s.backlog_max {
        s.count("backpressure");
        return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], "{\"status\":\"backpressure\"}").into_response();
    }
    let log = Arc::clone(&s.log);
    let appended = tokio::task::spawn_blocking(move || {
        let appended = log.append(&id, &body, now);
        if appended.is_ok() {
            sluice_state::protocol::failpoint("webhook.logged");
        }
        appended
    })
    .await;
    match appended {
        Ok(Ok(Appended::New(offset))) => {
            s.count("accepted");
            (StatusCode::OK, [("content-type", "application/json")], format!("{{\"status\":\"accepted\",\"offset\":{offset}}}")).into_response()
        }
        Ok(Ok(Appended::Duplicate(offset))) => {
            s.count("duplicate");
            (StatusCode::OK, [("content-type", "application/json")], format!("{{\"status\":\"duplicate\",\"offset\":{offset}}}")).into_response()
        }
        Ok(Err(e)) => {
            tracing::error!(source = %s.name, error = %e, "cannot log a webhook; answering 503");
            s.answer(StatusCode::SERVICE_UNAVAILABLE, "log_failed", "cannot store the webhook; retry")
        }
        Err(e) => s.answer(StatusCode::SERVICE_UNAVAILABLE, "log_failed", &e.to_string()),
    }
}

/// A running webhook server; stops when dropped.
#[derive(Debug)]
pub struct WebhookServer {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WebhookServer {
    /// Binds the source's address and serves its route, appending to `log`.
    ///
    /// # Errors
    /// A bad config, or the address cannot be bound.
    pub fn start(config: &WebhookSourceConfig, log: Arc<WebhookLog>, metrics: Arc<Metrics>, gate: Gate) -> Result<Self, ConnectorError> {
        let key = format!("webhook source `{}`", config.name);
        let verifier = config.verifier(&key)?;
        let addr = crate::http::resolve_listen(&config.listen).map_err(|problem| ConnectorError::Config { key: format!("{key}.listen"), problem })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sluice-webhook")
            .enable_all()
            .build()
            .map_err(|e| ConnectorError::Config { key: key.clone(), problem: format!("cannot start a runtime: {e}") })?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(addr))
            .map_err(|e| ConnectorError::Config { key: format!("{key}.listen"), problem: format!("cannot bind {addr}: {e}") })?;
        let addr = listener.local_addr().map_err(|e| ConnectorError::Config { key: key.clone(), problem: e.to_string() })?;
        let shared = Arc::new(Shared {
            gate,
            name: config.name.clone(),
            verifier,
            log,
            id_pointer: config.id.clone(),
            backlog_max: config.backlog_max,
            slots: tokio::sync::Semaphore::new(config.max_concurrent),
            metrics,
            body_bytes_max: config.body_bytes_max,
            body_timeout: Duration::from_millis(config.body_timeout_ms.max(1)),
        });
        let limits =
            crate::http::ConnectionLimits { header_timeout: Duration::from_millis(config.header_timeout_ms.max(1)), max_connections: config.max_connections };
        let app = Router::new().route(&config.route(), post(receive)).with_state(shared);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("sluice-webhook-main".into())
            .spawn(move || {
                runtime.block_on(crate::http::serve(listener, app, limits, rx, "webhook"));
            })
            .map_err(|e| ConnectorError::Config { key: key.clone(), problem: format!("cannot start the server thread: {e}") })?;
        tracing::info!(%addr, route = %config.route(), source = %config.name, "webhook server listening");
        Ok(WebhookServer { addr, shutdown: Some(tx), thread: Some(thread) })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for WebhookServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
