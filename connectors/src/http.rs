//! What sluice's HTTP servers (the webhook sources', the pipeline's `[server]`) share: the listen
//! address resolved, one accept loop with the limits a server facing the network needs, and a
//! request body read with a size bound and a deadline.
//!
//! Limits, each a slow or hostile client's way to hold a server's memory or sockets: a
//! connection that has not sent a whole request header `header_timeout` after it opened (or
//! after its previous answer, when kept alive) is closed; past `max_connections` open at once, a
//! new connection is answered 503 with `Retry-After` and closed; a body is read whole only up to
//! its bound and its deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::Router;

/// The address `listen` names: an IP address and port (`127.0.0.1:8787`, `[::1]:8787`), or a
/// host name and port (`localhost:8787`), resolved now; of several addresses, the first IPv4 one.
///
/// # Errors
/// The text has no port, or the name does not resolve.
pub fn resolve_listen(listen: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = listen.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let not = |why: String| format!("`{listen}` is not an address like 127.0.0.1:8787 or localhost:8787: {why}");
    if listen.rsplit_once(':').is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err()) {
        return Err(not("expected host:port".into()));
    }
    let addrs: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(listen).map_err(|e| not(e.to_string()))?.collect();
    addrs.iter().find(|a| a.is_ipv4()).or(addrs.first()).copied().ok_or_else(|| not("the name resolves to no address".into()))
}

/// The connection limits of a server.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Time to send a whole request header, from the connection's start or its previous answer.
    pub header_timeout: Duration,
    /// Connections open at once; more are answered 503 and closed.
    pub max_connections: usize,
}

/// The JSON answer to a connection past the limit.
fn refused(message: &str) -> axum::response::Response {
    let body = serde_json::json!({ "error": message }).to_string();
    axum::response::IntoResponse::into_response((
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        [("content-type", "application/json"), ("retry-after", "1"), ("connection", "close")],
        body,
    ))
}

/// Serves `app` on `listener` under `limits` until `shutdown` fires (or is dropped); for a
/// server's own runtime. `what` names the server in logs.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: ConnectionLimits,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
    what: &'static str,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, most often: wait for connections to close.
                tracing::warn!(server = what, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Answers are small and go out whole: Nagle would only delay them.
        let _ = stream.set_nodelay(true);
        let io = hyper_util::rt::TokioIo::new(stream);
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(limits.header_timeout);
        match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => {
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                tokio::spawn(async move {
                    if let Err(e) = builder.serve_connection(io, service).await {
                        tracing::debug!(server = what, error = %e, "connection closed");
                    }
                    drop(slot);
                });
            }
            Err(_) => {
                let message = format!("more than {} connections open; retry", limits.max_connections);
                tracing::debug!(server = what, "{message}");
                // Answered and closed as soon as its request head is in, which it gets a second
                // for: refused connections must not pile up either.
                builder.keep_alive(false).header_read_timeout(limits.header_timeout.min(Duration::from_secs(1)));
                let service = hyper::service::service_fn(move |_req| {
                    let answer = refused(&message);
                    async move { Ok::<_, std::convert::Infallible>(answer) }
                });
                tokio::spawn(async move {
                    let _ = builder.serve_connection(io, service).await;
                });
            }
        }
    }
}

/// Why a request body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Longer than the bound.
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    /// Not all there by the deadline.
    #[error("the body did not arrive within {0:?}")]
    Timeout(Duration),
    /// The connection failed while reading it.
    #[error("the body cannot be read: {0}")]
    Unreadable(String),
}

impl BodyError {
    /// The HTTP status that answers it.
    pub fn status(&self) -> axum::http::StatusCode {
        match self {
            BodyError::TooLarge(_) => axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::Timeout(_) => axum::http::StatusCode::REQUEST_TIMEOUT,
            BodyError::Unreadable(_) => axum::http::StatusCode::BAD_REQUEST,
        }
    }
}

/// A request's whole body: at most `max` bytes (a larger announced or sent body is refused
/// as soon as that is known), all of it within `timeout`.
///
/// # Errors
/// As [`BodyError`].
pub async fn read_body(body: axum::body::Body, max: usize, timeout: Duration) -> Result<Bytes, BodyError> {
    // A `content-length` over the bound: refused before waiting for any of it.
    if axum::body::HttpBody::size_hint(&body).lower() > max as u64 {
        return Err(BodyError::TooLarge(max));
    }
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, max)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) if is_too_large(&e) => Err(BodyError::TooLarge(max)),
        Ok(Err(e)) => Err(BodyError::Unreadable(e.to_string())),
        Err(_) => Err(BodyError::Timeout(timeout)),
    }
}

fn is_too_large(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_resolve_or_say_why() {
        assert_eq!(resolve_listen("127.0.0.1:8787").unwrap(), "127.0.0.1:8787".parse::<SocketAddr>().unwrap());
        assert_eq!(resolve_listen("[::1]:0").unwrap(), "[::1]:0".parse::<SocketAddr>().unwrap());
        assert_eq!(resolve_listen("localhost:8787").unwrap(), "127.0.0.1:8787".parse::<SocketAddr>().unwrap());
        for bad in ["localhost", "8787", ":8787", "localhost:http", "localhost:70000", "no-such-host.invalid:80"] {
            let e = resolve_listen(bad).unwrap_err();
            assert!(e.starts_with(&format!("`{bad}` is not an address like 127.0.0.1:8787 or localhost:8787: ")), "{e}");
        }
    }
}
