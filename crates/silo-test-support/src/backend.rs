//! The local service behind the agents in tests: a real HTTP server on an
//! ephemeral port with routes for every behaviour the tunnel must carry.
//!
//! - `GET /hello` → `hello`
//! - `GET /headers` → JSON of the method, URI and every header it received
//! - `GET /cookies` → three `Set-Cookie` and two `X-Multi` values
//! - `POST /echo` → the request body streamed back
//! - `POST /count` → `{"bytes": n, "sum": s}` of the request body
//! - `GET /bytes?n=N` → N bytes streamed (`i % 251` pattern)
//! - `GET /hang` → never answers; counts requests abandoned by the caller
//! - `GET /sse` → five server-sent events, 20 ms apart
//! - `GET /drip?n=N&ms=M[&hang=1]` → N lines `tick i` M ms apart; with
//!   `hang` the body then never ends (counted in `abandoned` when dropped)
//! - `GET /ws` → WebSocket echo
//! - `GET /status/N` → status N

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;

type Body = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// What the backend observed, for assertions.
#[derive(Debug, Default)]
pub struct Observed {
    /// `/hang` requests (and hanging `/drip` bodies) whose caller went away.
    pub abandoned: AtomicUsize,
    /// Bytes produced so far by `/bytes` responses.
    pub produced: AtomicU64,
    pub requests: AtomicUsize,
    /// `/bytes` responses dropped before their last byte (the caller, or
    /// the agent on its behalf, went away).
    pub bytes_abandoned: AtomicUsize,
    /// Request body bytes `POST /count` has read so far.
    pub consumed: AtomicU64,
}

pub struct Backend {
    pub addr: SocketAddr,
    pub observed: Arc<Observed>,
    stop: CancellationToken,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Backend {
    pub async fn spawn() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let observed = Arc::new(Observed::default());
        let stop = CancellationToken::new();
        let (obs, stop2) = (observed.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    a = listener.accept() => a.unwrap(),
                    _ = stop2.cancelled() => return,
                };
                stream.set_nodelay(true).unwrap();
                let obs = obs.clone();
                let svc = service_fn(move |req| route(obs.clone(), req));
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            observed,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn reply(status: StatusCode, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r
}

struct AbandonGuard(Arc<Observed>);

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        self.0.abandoned.fetch_add(1, Ordering::SeqCst);
    }
}

async fn route(
    obs: Arc<Observed>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    obs.requests.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_owned();
    let resp = match (req.method().as_str(), path.as_str()) {
        ("GET", "/hello") => reply(StatusCode::OK, full("hello")),
        (_, "/headers") => {
            let headers: Vec<(String, String)> = req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let v = serde_json::json!({
                "method": req.method().as_str(),
                "uri": req.uri().to_string(),
                "headers": headers,
            });
            reply(StatusCode::OK, full(v.to_string()))
        }
        ("GET", "/cookies") => Response::builder()
            .header("set-cookie", "a=1; Path=/")
            .header("set-cookie", "b=2; HttpOnly")
            .header("x-multi", "one")
            .header("set-cookie", "c=3")
            .header("x-multi", "two")
            .body(full("cookies"))
            .unwrap(),
        ("POST", "/echo") => {
            let body = req.into_body().map_err(|e| Box::new(e) as _).boxed_unsync();
            reply(StatusCode::OK, body)
        }
        ("POST", "/count") => {
            let mut body = req.into_body();
            let (mut n, mut sum) = (0u64, 0u64);
            while let Some(f) = body.frame().await {
                let Ok(f) = f else { break };
                if let Ok(d) = f.into_data() {
                    n += d.len() as u64;
                    obs.consumed.fetch_add(d.len() as u64, Ordering::SeqCst);
                    sum = d.iter().fold(sum, |s, b| s.wrapping_add(u64::from(*b)));
                }
            }
            reply(
                StatusCode::OK,
                full(serde_json::json!({"bytes": n, "sum": sum}).to_string()),
            )
        }
        ("GET", "/bytes") => {
            let n: u64 = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("n="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            reply(StatusCode::OK, pattern_body(n, obs.clone()))
        }
        ("GET", "/hang") => {
            let _guard = AbandonGuard(obs.clone());
            std::future::pending::<()>().await;
            unreachable!()
        }
        ("GET", "/sse") => {
            let events = futures_util::stream::iter(0..5).then(|i| async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from(
                    format!("data: {i}\n\n"),
                )))
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(StreamBody::new(events).boxed_unsync())
                .unwrap()
        }
        ("GET", "/drip") => {
            let q = |key: &str| -> Option<u64> {
                req.uri().query()?.split('&').find_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    (k == key).then(|| v.parse().ok())?
                })
            };
            let (n, gap) = (q("n").unwrap_or(1), q("ms").unwrap_or(0));
            let hang = q("hang").is_some_and(|h| h != 0);
            let obs = obs.clone();
            let ticks = futures_util::stream::iter(0..n).then(move |i| async move {
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(gap)).await;
                }
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from(
                    format!("tick {i}\n"),
                )))
            });
            let tail = futures_util::stream::iter(hang.then_some(())).then(move |()| {
                let guard = AbandonGuard(obs.clone());
                async move {
                    let _guard = guard;
                    std::future::pending::<Result<Frame<Bytes>, _>>().await
                }
            });
            reply(
                StatusCode::OK,
                StreamBody::new(ticks.chain(tail)).boxed_unsync(),
            )
        }
        ("GET", "/ws") => {
            let key = req.headers().get("sec-websocket-key").cloned();
            let Some(key) = key else {
                return Ok(reply(
                    StatusCode::BAD_REQUEST,
                    full("not a websocket request"),
                ));
            };
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    None,
                )
                .await;
                while let Some(Ok(msg)) = ws.next().await {
                    // Keep reading after a Close: the next read sends the
                    // close reply and then ends the stream.
                    if msg.is_close() {
                        continue;
                    }
                    if ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
            let accept =
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", accept)
                .body(full(""))
                .unwrap()
        }
        ("GET", p) if p.starts_with("/status/") => {
            let code = p["/status/".len()..]
                .parse()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok());
            reply(code.unwrap_or(StatusCode::BAD_REQUEST), full(""))
        }
        _ => reply(StatusCode::NOT_FOUND, full("no such route")),
    };
    Ok(resp)
}

/// Counts a `/bytes` body dropped before its end.
struct BytesGuard {
    obs: Arc<Observed>,
    done: bool,
}

impl Drop for BytesGuard {
    fn drop(&mut self) {
        if !self.done {
            self.obs.bytes_abandoned.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// `n` bytes of `i % 251`, produced lazily in 64 KiB chunks.
fn pattern_body(n: u64, obs: Arc<Observed>) -> Body {
    const CHUNK: u64 = 64 * 1024;
    let guard = Arc::new(std::sync::Mutex::new(BytesGuard {
        obs: obs.clone(),
        done: false,
    }));
    let chunks = futures_util::stream::unfold(0u64, move |offset| {
        let (obs, guard) = (obs.clone(), guard.clone());
        async move {
            if offset >= n {
                guard.lock().unwrap().done = true;
                return None;
            }
            let len = CHUNK.min(n - offset);
            let data: Vec<u8> = (offset..offset + len).map(|i| (i % 251) as u8).collect();
            obs.produced.fetch_add(len, Ordering::SeqCst);
            Some((
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from(data))),
                offset + len,
            ))
        }
    });
    StreamBody::new(chunks).boxed_unsync()
}

/// Checks that `data` continues the `/bytes` pattern from `offset`.
pub fn is_pattern(data: &[u8], offset: u64) -> bool {
    data.iter()
        .enumerate()
        .all(|(i, b)| u64::from(*b) == (offset + i as u64) % 251)
}
