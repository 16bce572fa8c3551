//! Accepting tunnel connections over TLS, and cutting the live connections
//! of an agent whose certificate was just revoked.
//!
//! Every accepted connection is wrapped in [`ConnIo`], which fails its
//! reads and writes as soon as the agent's kill token fires: closing the
//! gRPC session alone would leave the agent's exchange streams open.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};
use tracing::debug;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Kill switches of live tunnel connections, by agent (normalised id).
#[derive(Debug, Default)]
pub struct ConnRegistry {
    by_agent: Mutex<HashMap<String, Vec<CancellationToken>>>,
}

impl ConnRegistry {
    fn register(&self, agent_id: Option<&str>) -> CancellationToken {
        let token = CancellationToken::new();
        if let Some(id) = agent_id {
            let mut map = self.by_agent.lock().expect("conn registry lock");
            let list = map
                .entry(silo_core::id::normalize_agent_id(id))
                .or_default();
            list.retain(|t| !t.is_cancelled());
            list.push(token.clone());
        }
        token
    }

    /// Drops every live connection of `agent_id`; returns how many.
    pub fn kill(&self, agent_id: &str) -> usize {
        let key = silo_core::id::normalize_agent_id(agent_id);
        let tokens = self
            .by_agent
            .lock()
            .expect("conn registry lock")
            .remove(&key)
            .unwrap_or_default();
        let live = tokens.iter().filter(|t| !t.is_cancelled()).count();
        tokens.iter().for_each(CancellationToken::cancel);
        live
    }
}

/// A connection that can be cut from outside.
pub struct ConnIo<T> {
    inner: T,
    token: CancellationToken,
    killed: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<T> ConnIo<T> {
    fn new(inner: T, token: CancellationToken) -> Self {
        let killed = Box::pin(token.clone().cancelled_owned());
        Self {
            inner,
            token,
            killed,
        }
    }

    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.killed.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "agent certificate revoked",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl<T> Drop for ConnIo<T> {
    fn drop(&mut self) {
        // Marks the registry entry as dead so it gets pruned.
        self.token.cancel();
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ConnIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ConnIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for ConnIo<TlsStream<TcpStream>> {
    type ConnectInfo = TlsConnectInfo<TcpConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Accepts TCP connections, runs TLS handshakes off the accept loop (a slow
/// client cannot hold others up), and yields the established connections.
pub fn tls_incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    conns: Arc<ConnRegistry>,
    stop: CancellationToken,
) -> ReceiverStream<io::Result<ConnIo<TlsStream<TcpStream>>>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                _ = stop.cancelled() => return,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        debug!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let (acceptor, conns, tx) = (acceptor.clone(), conns.clone(), tx.clone());
            tokio::spawn(async move {
                let tls =
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::info!(%peer, "TLS handshake refused: {e}");
                            return;
                        }
                        Err(_) => {
                            debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                let agent_id = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| silo_pki::agent_id_from_cert(c));
                let token = conns.register(agent_id.as_deref());
                let _ = tx.send(Ok(ConnIo::new(tls, token))).await;
            });
        }
    });
    ReceiverStream::new(rx)
}
