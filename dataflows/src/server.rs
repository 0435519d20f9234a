//! The sluice HTTP server (axum on tokio, in its own thread): `GET /metrics` (Prometheus text:
//! the pipeline's, when one runs in the process, and this server's requests), `GET /healthz`,
//! and the feature routes of `serve.rs`. It never blocks the dataflow: handlers read atomics and
//! short-held locks.
//!
//! Every answer, errors included, is JSON (`{"error": …}`): an unknown route 404, a wrong method
//! 405, a request line longer than [`URI_BYTES_MAX`] 414, headers longer than
//! [`HEADER_BYTES_MAX`] 431 (a request head past hyper's own buffer, ~400 KiB, or with more
//! than 100 headers, is answered 431 by hyper itself, with no body). The limits on slow and idle clients are
//! [`sluice_connectors::http`]'s, set by `[server]`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{MatchedPath, Request};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sluice_operators::Metrics;

use crate::config::ServerSection;
use crate::prometheus::{render, render_requests, ExportInfo};
use crate::serve::{error, FeatureService};

/// A request line (path and query) longer than this is answered 414.
pub const URI_BYTES_MAX: usize = 8 << 10;
/// Request headers longer than this in all are answered 431.
pub const HEADER_BYTES_MAX: usize = 16 << 10;

/// The server's requests: counted per route and status, timed per route (from the request's
/// head read to its answer's head written).
#[derive(Debug, Default)]
pub struct RequestMetrics {
    /// Per (route, status).
    pub(crate) counts: Mutex<BTreeMap<(String, u16), u64>>,
    /// Per route, µs.
    pub(crate) latency: Mutex<BTreeMap<String, hdrhistogram::Histogram<u64>>>,
}

impl RequestMetrics {
    fn record(&self, route: &str, status: u16, took: Duration) {
        *self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner).entry((route.to_string(), status)).or_default() += 1;
        let mut latency = self.latency.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let h = latency.entry(route.to_string()).or_insert_with(|| hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("valid bounds"));
        h.saturating_record(took.as_micros().max(1) as u64);
    }
}

/// Refuses oversized request heads (JSON answers) and records every request in `metrics`.
async fn guard(axum::extract::State(metrics): axum::extract::State<Arc<RequestMetrics>>, request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_string();
    let uri_bytes = request.uri().path_and_query().map_or(0, |p| p.as_str().len());
    let header_bytes: usize = request.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    let response = if uri_bytes > URI_BYTES_MAX {
        error(StatusCode::URI_TOO_LONG, format!("the request's path and query are {uri_bytes} bytes; at most {URI_BYTES_MAX}")).into_response()
    } else if header_bytes > HEADER_BYTES_MAX {
        error(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, format!("the request's headers are {header_bytes} bytes; at most {HEADER_BYTES_MAX}"))
            .into_response()
    } else {
        next.run(request).await
    };
    metrics.record(&route, response.status().as_u16(), started.elapsed());
    response
}

async fn not_found(uri: axum::http::Uri) -> Response {
    error(StatusCode::NOT_FOUND, format!("no route {}: the routes are /healthz, /metrics, /v1/features/{{entity}} and /v1/features:batch", uri.path()))
        .into_response()
}

async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    error(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed on {}", uri.path())).into_response()
}

/// A running server; dropped or [`Server::stop`]ped, it shuts down.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Clone)]
struct AppState {
    pipeline: Option<(Arc<Metrics>, Arc<ExportInfo>)>,
    requests: Arc<RequestMetrics>,
}

async fn metrics_handler(axum::extract::State(s): axum::extract::State<AppState>) -> impl IntoResponse {
    let mut text = s.pipeline.as_ref().map(|(metrics, info)| render(metrics, info)).unwrap_or_default();
    text.push_str(&render_requests(&s.requests));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text)
}

/// The time slice the server's threads ask for, µs: short, so that a request preempts the
/// dataflow (see `sluice_state::sched`).
const SERVER_SLICE_US: u64 = 100;

/// Why the HTTP server (or the feature service behind it) could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// `server.listen` is not an address.
    #[error("server.listen: {0}")]
    Address(String),
    /// The address cannot be bound (taken, or not this machine's).
    #[error("server.listen: cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS's error.
        #[source]
        source: std::io::Error,
    },
    /// The server's runtime or thread cannot start.
    #[error("cannot start the HTTP {what}: {source}")]
    Start {
        /// `runtime` or `thread`.
        what: &'static str,
        /// The OS's error.
        #[source]
        source: std::io::Error,
    },
    /// The feature set does not compile.
    #[error("features: {0}")]
    Features(#[source] sluice_operators::OperatorError),
    /// `server.feature_log` cannot be opened.
    #[error("server.feature_log: cannot open {path}: {source}")]
    FeatureLog {
        /// The file.
        path: std::path::PathBuf,
        /// The OS's error.
        #[source]
        source: std::io::Error,
    },
    /// The feature table cannot be read.
    #[error("state: {0}")]
    State(#[from] sluice_state::StateError),
}

impl ServerError {
    /// Whether starting again may help: a taken port may be freed; the rest needs a change.
    pub fn retry(&self) -> sluice_connectors::Retry {
        match self {
            ServerError::Bind { .. } | ServerError::Start { .. } => sluice_connectors::Retry::Later,
            _ => sluice_connectors::Retry::Never,
        }
    }
}

impl Server {
    /// Binds `section.listen` (e.g. `127.0.0.1:8787`; port 0 picks a free one) and serves.
    ///
    /// # Errors
    /// The address does not parse or cannot be bound.
    pub fn start(section: &ServerSection, pipeline: Option<(Arc<Metrics>, ExportInfo)>, features: Option<FeatureService>) -> Result<Server, ServerError> {
        let addr = sluice_connectors::http::resolve_listen(&section.listen).map_err(ServerError::Address)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sluice-http")
            .on_thread_start(|| sluice_state::sched::set_thread_slice(SERVER_SLICE_US))
            .enable_all()
            .build()
            .map_err(|source| ServerError::Start { what: "runtime", source })?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind(addr)).map_err(|source| ServerError::Bind { addr, source })?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind { addr, source })?;
        let requests = Arc::new(RequestMetrics::default());
        let state = AppState { pipeline: pipeline.map(|(metrics, info)| (metrics, Arc::new(info))), requests: Arc::clone(&requests) };
        let mut app = Router::new().route("/healthz", get(|| async { "ok\n" })).merge(Router::new().route("/metrics", get(metrics_handler)).with_state(state));
        if let Some(service) = features {
            app = app.merge(
                Router::new()
                    .route("/v1/features/{entity}", get(crate::serve::get_one))
                    .route("/v1/features:batch", axum::routing::post(crate::serve::get_batch))
                    .with_state(Arc::new(service)),
            );
        }
        let app = app.fallback(not_found).method_not_allowed_fallback(wrong_method).layer(axum::middleware::from_fn_with_state(requests, guard));
        let limits = sluice_connectors::http::ConnectionLimits {
            header_timeout: Duration::from_millis(section.header_timeout.ms().max(1) as u64),
            max_connections: section.max_connections,
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("sluice-http-main".into())
            .spawn(move || {
                sluice_state::sched::set_thread_slice(SERVER_SLICE_US);
                runtime.block_on(sluice_connectors::http::serve(listener, app, limits, rx, "feature server"));
            })
            .map_err(|source| ServerError::Start { what: "thread", source })?;
        tracing::info!(%addr, "HTTP server listening");
        Ok(Server { addr, shutdown: Some(tx), thread: Some(thread) })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving.
    pub fn stop(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shut();
    }
}
