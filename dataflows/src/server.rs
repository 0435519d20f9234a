//! The sluice HTTP server (axum on tokio, in its own thread): `GET /metrics` (Prometheus text,
//! when a pipeline runs in the process), `GET /healthz`, and the feature routes of `serve.rs`. It never blocks the dataflow: handlers read atomics and short-held locks.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use sluice_operators::Metrics;

use crate::prometheus::{render, ExportInfo};
use crate::serve::FeatureService;

/// A running server; dropped or [`Server::stop`]ped, it shuts down.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    info: Arc<ExportInfo>,
}

async fn metrics_handler(axum::extract::State(s): axum::extract::State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], render(&s.metrics, &s.info))
}

/// The time slice the server's threads ask for, µs: short, so that a request preempts the
/// dataflow (see `sluice_state::sched`).
const SERVER_SLICE_US: u64 = 100;

/// Why the HTTP server (or the feature service behind it) could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// `server.listen` is not an address.
    #[error("server.listen: `{listen}` is not an address like 127.0.0.1:8787: {source}")]
    Address {
        /// As written.
        listen: String,
        /// Why it does not parse.
        #[source]
        source: std::net::AddrParseError,
    },
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
    /// Binds `listen` (e.g. `127.0.0.1:8787`; port 0 picks a free one) and serves.
    ///
    /// # Errors
    /// The address does not parse or cannot be bound.
    pub fn start(listen: &str, pipeline: Option<(Arc<Metrics>, ExportInfo)>, features: Option<FeatureService>) -> Result<Server, ServerError> {
        let addr: SocketAddr = listen.parse().map_err(|source| ServerError::Address { listen: listen.to_string(), source })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sluice-http")
            .on_thread_start(|| sluice_state::sched::set_thread_slice(SERVER_SLICE_US))
            .enable_all()
            .build()
            .map_err(|source| ServerError::Start { what: "runtime", source })?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind(addr)).map_err(|source| ServerError::Bind { addr, source })?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind { addr, source })?;
        let mut app = Router::new().route("/healthz", get(|| async { "ok\n" }));
        if let Some((metrics, info)) = pipeline {
            app = app.merge(Router::new().route("/metrics", get(metrics_handler)).with_state(AppState { metrics, info: Arc::new(info) }));
        }
        let app = match features {
            Some(service) => app.merge(
                Router::new()
                    .route("/v1/features/{entity}", get(crate::serve::get_one))
                    .route("/v1/features:batch", axum::routing::post(crate::serve::get_batch))
                    .with_state(Arc::new(service)),
            ),
            None => app,
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("sluice-http-main".into())
            .spawn(move || {
                sluice_state::sched::set_thread_slice(SERVER_SLICE_US);
                runtime.block_on(async move {
                    let serve = axum::serve(
                        axum::serve::ListenerExt::tap_io(listener, |tcp| {
                            // Answers are small and go out whole: Nagle would only delay them.
                            let _ = tcp.set_nodelay(true);
                        }),
                        app,
                    )
                    .with_graceful_shutdown(async move {
                        let _ = rx.await;
                    });
                    if let Err(e) = serve.await {
                        tracing::error!(error = %e, "the HTTP server failed");
                    }
                });
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
