//! One HTTP/1 connection to the local service per Exchange stream, driven
//! from the stream's own task.
//!
//! Why not hyper-util's pool: a pooled connection runs in a task of its
//! own, so every request crossed tasks twice (the request handed to the
//! connection task, the response handed back) on top of the pool's
//! checkout and return under a lock. A standby stream carries one exchange
//! at a time, so it can own a connection outright and poll its I/O
//! alongside the exchange: see [`drive`].

use crate::local::{LocalBody, LocalService};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Mutex;
use std::task::Poll;

/// hyper's `UpgradeableConnection` (its type cannot be named).
pub type Connection = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

/// The connection's I/O half. A mutex rather than `&mut` because the
/// exchange installs a new connection while [`drive`] is polling the slot;
/// both run in the one task, so it is never contended.
#[derive(Default)]
pub struct ConnSlot(Mutex<Option<Connection>>);

impl ConnSlot {
    fn install(&self, conn: Connection) {
        *self.lock() = Some(conn);
    }

    /// Drops the connection, closing it (the local service sees the abort).
    fn close(&self) {
        self.lock().take();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Connection>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Polls the connection once; forgets it when it has ended (closed by
    /// the local service, failed, or handed over to an upgrade).
    fn poll(&self, cx: &mut std::task::Context<'_>) {
        let mut slot = self.lock();
        if let Some(conn) = slot.as_mut()
            && let Poll::Ready(result) = conn.as_mut().poll(cx)
        {
            if let Err(e) = result {
                tracing::debug!("local connection ended: {e}");
            }
            *slot = None;
        }
    }
}

/// A connection is closed after this long without an exchange (what
/// hyper-util's pool did before).
const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// A stream's connection to the local service.
#[derive(Default)]
pub struct Backend {
    slot: ConnSlot,
    sender: Option<http1::SendRequest<LocalBody>>,
}

impl Backend {
    /// Waits for `next` (the stream's next request head) between
    /// exchanges. The connection is still polled, so a close by the local
    /// service is noticed, and it is closed after [`IDLE_TIMEOUT`].
    pub async fn idle<F: Future>(&self, next: F) -> F::Output {
        drive(&self.slot, async {
            let mut next = pin!(next);
            tokio::select! {
                out = &mut next => return out,
                () = tokio::time::sleep(IDLE_TIMEOUT) => self.slot.close(),
            }
            next.await
        })
        .await
    }

    /// The request half, for an exchange run under [`drive`] with `slot`.
    pub fn split(&mut self) -> (&ConnSlot, Requester<'_>) {
        let Backend { slot, sender } = self;
        (slot, Requester { slot, sender })
    }
}

/// Runs `fut` and keeps the connection in `slot` moving while it does:
/// writing the request, reading the response and its body, handing over an
/// upgrade, or noticing that the local service closed an idle connection.
pub async fn drive<F: Future>(slot: &ConnSlot, fut: F) -> F::Output {
    let mut fut = pin!(fut);
    std::future::poll_fn(|cx| {
        // Connection first, so response bytes that just arrived reach the
        // exchange in this same pass; and again after, to write what the
        // exchange just sent or start a connection it just installed.
        slot.poll(cx);
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(out);
        }
        slot.poll(cx);
        Poll::Pending
    })
    .await
}

/// Sends requests on the stream's connection, opening one when there is
/// none.
pub struct Requester<'a> {
    slot: &'a ConnSlot,
    sender: &'a mut Option<http1::SendRequest<LocalBody>>,
}

impl Requester<'_> {
    fn reset(&mut self) {
        *self.sender = None;
        self.slot.close();
    }

    /// Sends `req`. A connection the local service closed just before (its
    /// keep-alive timeout) is replaced once, as long as the request was not
    /// written to it.
    pub async fn send(
        &mut self,
        local: &LocalService,
        mut req: http::Request<LocalBody>,
    ) -> Result<http::Response<Incoming>, String> {
        let mut fresh = false;
        loop {
            let sender = match self.sender.as_mut().filter(|s| !s.is_closed()) {
                Some(sender) => sender,
                None => {
                    let (sender, conn) = local.connect().await?;
                    self.slot.install(conn);
                    fresh = true;
                    self.sender.insert(sender)
                }
            };
            if let Err(e) = sender.ready().await {
                self.reset();
                if fresh {
                    return Err(local.unreachable(&e));
                }
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(resp),
                Err(mut e) => {
                    self.reset();
                    match e.take_message() {
                        Some(unsent) if !fresh => req = unsent,
                        _ => return Err(local.unreachable(&e.into_error())),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    /// A raw HTTP/1.1 local service: counts connections, reports each
    /// request head, answers `ok`, and with `close_after` closes the
    /// connection after each answer (reporting when it has).
    async fn local_service(
        close_after: bool,
    ) -> (String, Arc<AtomicUsize>, mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/base", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let (events, rx) = mpsc::channel(16);
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let events = events.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let mut chunk = [0u8; 1024];
                        let n = sock.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        let _ = events.send(head).await;
                        let answer = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        sock.write_all(answer.as_bytes()).await.unwrap();
                        if close_after {
                            drop(sock);
                            let _ = events.send("closed".into()).await;
                            return;
                        }
                    }
                });
            }
        });
        (url, accepted, rx)
    }

    fn get(local: &LocalService, path: &str) -> http::Request<LocalBody> {
        let start = silo_proto::v1::RequestStart {
            method: "GET".into(),
            path_and_query: path.into(),
            ..Default::default()
        };
        let body = Empty::new().map_err(|never| match never {}).boxed_unsync();
        local.build_request(start, body).unwrap()
    }

    /// One request through the stream's connection, its body read to the end.
    async fn fetch(
        local: &LocalService,
        backend: &mut Backend,
        path: &str,
    ) -> Result<String, String> {
        let req = get(local, path);
        let (slot, mut requester) = backend.split();
        drive(slot, async move {
            let resp = requester.send(local, req).await?;
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?;
            Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned())
        })
        .await
    }

    #[tokio::test]
    async fn one_connection_carries_the_streams_requests_in_origin_form() {
        let (url, accepted, mut heads) = local_service(false).await;
        let local = LocalService::new(url.parse().unwrap());
        let mut backend = Backend::default();
        for i in 0..3 {
            assert_eq!(
                fetch(&local, &mut backend, &format!("/r{i}?q=1"))
                    .await
                    .unwrap(),
                "ok"
            );
            let head = heads.recv().await.unwrap();
            assert!(
                head.starts_with(&format!("GET /base/r{i}?q=1 HTTP/1.1\r\n")),
                "{head}"
            );
            let authority = url.trim_start_matches("http://").trim_end_matches("/base");
            assert!(head.contains(&format!("host: {authority}")), "{head}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_local_service_closed_is_replaced() {
        let (url, accepted, mut events) = local_service(true).await;
        let local = LocalService::new(url.parse().unwrap());
        let mut backend = Backend::default();
        for _ in 0..3 {
            assert_eq!(fetch(&local, &mut backend, "/").await.unwrap(), "ok");
            assert_ne!(events.recv().await.unwrap(), "closed");
            // The connection is closed before the next request is sent.
            assert_eq!(events.recv().await.unwrap(), "closed");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_unreachable_local_service_is_one_clear_line() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let local = LocalService::new(format!("http://{addr}").parse().unwrap());
        let mut backend = Backend::default();
        let error = fetch(&local, &mut backend, "/").await.unwrap_err();
        assert!(
            error.starts_with(&format!("local service http://{addr}/ is unreachable: ")),
            "{error}"
        );
        assert!(error.contains("Connection refused"), "{error}");
        assert!(!error.contains('\n'));
        assert!(backend.sender.is_none() || backend.sender.as_ref().is_some_and(|s| s.is_closed()));
    }
}
