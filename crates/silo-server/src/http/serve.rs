//! One accept loop for every HTTP listener (API, public proxy, per-agent):
//! `TCP_NODELAY`, a header read timeout against slow-loris clients, HTTP/1
//! upgrades, and a graceful drain when the listener is stopped.

use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

#[derive(Clone, Debug)]
pub struct HttpOptions {
    pub header_read_timeout: Duration,
    /// How long open connections may finish their requests once stopped.
    pub grace: Duration,
}

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
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), make_service(peer))
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%peer, "connection ended: {e}");
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(opts.grace, graceful.shutdown()).await;
}
