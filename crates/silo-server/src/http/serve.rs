//! One accept loop for every HTTP listener (API, public proxy, per-agent):
//! `TCP_NODELAY`, a header read timeout against slow-loris clients, HTTP/1
//! upgrades, and a graceful drain when the listener is stopped.

use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

#[derive(Clone, Debug)]
pub struct HttpOptions {
    pub header_read_timeout: Duration,
    /// How long open connections may finish their requests once stopped.
    pub grace: Duration,
    /// Serve HTTPS with this configuration.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// A TLS handshake that has not finished by then is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `listener` until `stop` fires, then lets open connections finish
/// their exchanges for up to `opts.grace`.
pub async fn serve<F, S, B>(
    listener: TcpListener,
    make_service: F,
    opts: HttpOptions,
    stop: CancellationToken,
) where
    F: Fn(SocketAddr) -> S,
    S: Service<http::Request<Incoming>, Response = http::Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly
                    // instead of spinning.
                    debug!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        // hyper applies the header read timeout to HTTP/1 requests once it
        // knows the protocol, but not while it waits for the bytes that tell
        // HTTP/1 from HTTP/2: a client that connects and sends nothing (or
        // half a preface) would hold its socket forever. So the first
        // request must also start within the timeout.
        let first_request = Arc::new(AtomicBool::new(false));
        let service = {
            let (inner, seen) = (make_service(peer), first_request.clone());
            hyper::service::service_fn(move |req| {
                seen.store(true, Ordering::Relaxed);
                inner.call(req)
            })
        };
        let header_timeout = opts.header_read_timeout;
        let watcher = graceful.watcher();
        let builder = builder.clone();
        match &opts.tls {
            None => {
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                let conn = watcher.watch(conn.into_owned());
                tokio::spawn(async move {
                    if let Err(e) = first_request_within(conn, header_timeout, &first_request).await
                    {
                        debug!(%peer, "connection ended: {e}");
                    }
                });
            }
            Some(tls) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.clone());
                // The handshake runs in the connection's task so a slow
                // client cannot stall the accept loop.
                tokio::spawn(async move {
                    let stream =
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => return debug!(%peer, "TLS handshake failed: {e}"),
                            Err(_) => return debug!(%peer, "TLS handshake timed out"),
                        };
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    let conn = watcher.watch(conn.into_owned());
                    if let Err(e) = first_request_within(conn, header_timeout, &first_request).await
                    {
                        debug!(%peer, "connection ended: {e}");
                    }
                });
            }
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(opts.grace, graceful.shutdown()).await;
}

/// Runs a connection, closing it when no request has started within
/// `limit` of its start.
async fn first_request_within<C, E>(conn: C, limit: Duration, seen: &AtomicBool) -> Result<(), E>
where
    C: Future<Output = Result<(), E>>,
{
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        ended = &mut conn => return ended,
        () = tokio::time::sleep(limit) => {}
    }
    if seen.load(Ordering::Relaxed) {
        conn.await
    } else {
        debug!("no request within http.header_read_timeout_seconds; closing");
        Ok(())
    }
}
