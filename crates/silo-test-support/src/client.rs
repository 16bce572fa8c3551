//! A plain HTTP/1 client for tests, one connection per request so a test
//! controls exactly what is open.

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use tokio::net::TcpStream;

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Opens a connection and returns a sender for one or more requests.
pub async fn connect(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    sender
}

/// Sends `req` (built with an `http://host/path` or `/path` URI) to `addr`
/// and reads the whole answer.
pub async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Reply {
    let mut sender = connect(addr).await;
    let mut req = req;
    if !req.headers().contains_key(http::header::HOST) {
        req.headers_mut()
            .insert(http::header::HOST, addr.to_string().parse().unwrap());
    }
    let resp = sender.send_request(req).await.expect("send request");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("read body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    send(addr, Request::get(path).body(Full::default()).unwrap()).await
}

pub async fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut b = Request::get(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(addr, b.body(Full::default()).unwrap()).await
}

/// Sends `req` with any (e.g. streaming) body over a fresh connection and
/// returns the response as soon as its head arrives; the body streams.
pub async fn open<B>(addr: SocketAddr, mut req: Request<B>) -> http::Response<Incoming>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    if !req.headers().contains_key(http::header::HOST) {
        req.headers_mut()
            .insert(http::header::HOST, addr.to_string().parse().unwrap());
    }
    sender.send_request(req).await.expect("send request")
}

/// A request body of `n` bytes of the `/bytes` pattern (`i % 251`),
/// generated lazily in 64 KiB chunks; `gate(offset)` runs before each chunk
/// so a test can hold the upload at a point of its choosing.
pub fn pattern_upload<G, Fut>(n: u64, gate: G) -> UnsyncBoxBody<Bytes, std::convert::Infallible>
where
    G: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    const CHUNK: u64 = 64 * 1024;
    let gate = std::sync::Arc::new(gate);
    let chunks = futures_util::stream::unfold(0u64, move |offset| {
        let gate = gate.clone();
        async move {
            if offset >= n {
                return None;
            }
            gate(offset).await;
            let len = CHUNK.min(n - offset);
            let data: Vec<u8> = (offset..offset + len).map(|i| (i % 251) as u8).collect();
            Some((Ok(Frame::data(Bytes::from(data))), offset + len))
        }
    });
    StreamBody::new(chunks).boxed_unsync()
}

/// The byte sum `POST /count` reports for `n` bytes of the pattern.
pub fn pattern_sum(n: u64) -> u64 {
    let (cycles, rest) = (n / 251, n % 251);
    cycles * (250 * 251 / 2) + rest * rest.saturating_sub(1) / 2
}

pub async fn post(addr: SocketAddr, path: &str, body: impl Into<Bytes>) -> Reply {
    send(
        addr,
        Request::post(path).body(Full::new(body.into())).unwrap(),
    )
    .await
}
