//! The fast local backend both the direct and the tunnelled load hit.
//!
//! - `GET /small` → 100 bytes
//! - `GET /bytes?n=N` → N bytes streamed in 64 KiB chunks
//! - `POST /echo` → the request body streamed back
//! - `POST /sink` → reads the body, answers its length
//!
//! Bodies are slices of one static buffer so the backend allocates nothing
//! per chunk: the benchmark should measure the tunnel, not the backend.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use tokio::net::TcpListener;

pub const SMALL_BODY_BYTES: usize = 100;
pub const CHUNK_BYTES: usize = 64 * 1024;

static CHUNK: [u8; CHUNK_BYTES] = [b'x'; CHUNK_BYTES];

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<Bytes, BoxError>;

/// A zero-copy 64 KiB (or shorter) chunk of filler bytes.
pub fn chunk(len: usize) -> Bytes {
    Bytes::from_static(&CHUNK[..len.min(CHUNK_BYTES)])
}

/// `n` filler bytes as a stream of static chunks.
pub fn filler_body(n: u64) -> Body {
    let chunks = futures_util::stream::unfold(n, |left| async move {
        if left == 0 {
            return None;
        }
        let len = left.min(CHUNK_BYTES as u64);
        Some((
            Ok::<_, BoxError>(Frame::data(chunk(len as usize))),
            left - len,
        ))
    });
    StreamBody::new(chunks).boxed()
}

/// Binds an ephemeral loopback port and serves until the runtime ends.
pub async fn spawn() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            // Without it, small responses wait for delayed ACKs (Nagle).
            let _ = stream.set_nodelay(true);
            // HTTP/1.1 only: that is what the load generator speaks.
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(route))
                    .await;
            });
        }
    });
    Ok(addr)
}

fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|never| match never {}).boxed()
}

async fn route(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let resp = match (req.method().as_str(), req.uri().path()) {
        ("GET", "/small") => Response::new(full(chunk(SMALL_BODY_BYTES))),
        ("GET", "/bytes") => {
            let n = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("n="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            Response::builder()
                .header(http::header::CONTENT_LENGTH, n)
                .body(filler_body(n))
                .expect("valid response")
        }
        ("POST", "/echo") => {
            let len = req.headers().get(http::header::CONTENT_LENGTH).cloned();
            let mut resp = Response::new(req.into_body().map_err(BoxError::from).boxed());
            if let Some(len) = len {
                resp.headers_mut().insert(http::header::CONTENT_LENGTH, len);
            }
            resp
        }
        ("POST", "/sink") => {
            let mut body = req.into_body();
            let mut n = 0u64;
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(d) = frame.data_ref() {
                    n += d.len() as u64;
                }
            }
            Response::new(full(Bytes::from(n.to_string())))
        }
        _ => {
            let mut r = Response::new(full(Bytes::from_static(b"no such route")));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    };
    Ok(resp)
}
