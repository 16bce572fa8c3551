//! The built-in load generator: N keep-alive HTTP/1.1 connections, each a
//! closed loop (next request as soon as the previous response body ended),
//! and single large transfers. No external tool is needed, so the numbers
//! mean the same thing on every machine.

use crate::backend::{self, chunk};
use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ReqBody = BoxBody<Bytes, BoxError>;

/// What every request of a run looks like.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Get(&'static str),
    /// POST of `body` filler bytes to a path.
    Post(&'static str, usize),
}

/// One closed-loop run against one address.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub target: SocketAddr,
    pub conns: usize,
    pub kind: Kind,
    /// Traffic before the measured window: warms connections, the agent's
    /// backend pool and the server's standby streams.
    pub warmup: Duration,
    pub duration: Duration,
}

/// Totals of one run over its measured window.
#[derive(Debug, Default)]
pub struct Outcome {
    pub requests: u64,
    /// Requests completed including the warm-up, for CPU per request.
    pub completed: u64,
    pub bytes: u64,
    pub errors: u64,
    pub secs: f64,
    /// Latency of every request that started and ended inside the window.
    pub latencies_us: Vec<u32>,
}

impl Outcome {
    pub fn req_per_sec(&self) -> f64 {
        self.requests as f64 / self.secs
    }

    /// Response body bytes per second, in MB (10^6 bytes).
    pub fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / self.secs / 1e6
    }

    /// Latency percentile `p` (0–100) in milliseconds; expects sorted data.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * self.latencies_us.len() as f64).ceil() as usize;
        let idx = rank.clamp(1, self.latencies_us.len()) - 1;
        f64::from(self.latencies_us[idx]) / 1000.0
    }
}

/// Runs `load` and merges what every connection measured.
pub async fn run(load: Load) -> anyhow::Result<Outcome> {
    let start = Instant::now() + load.warmup;
    let end = start + load.duration;
    let mut workers = Vec::with_capacity(load.conns);
    for _ in 0..load.conns {
        workers.push(tokio::spawn(worker(load.target, load.kind, start, end)));
    }
    let mut total = Outcome {
        secs: load.duration.as_secs_f64(),
        ..Default::default()
    };
    for w in workers {
        let o = w.await.context("load worker panicked")?;
        total.requests += o.requests;
        total.completed += o.completed;
        total.bytes += o.bytes;
        total.errors += o.errors;
        total.latencies_us.extend(o.latencies_us);
    }
    total.latencies_us.sort_unstable();
    if total.requests == 0 {
        bail!(
            "no request completed against {} ({} errors)",
            load.target,
            total.errors
        );
    }
    Ok(total)
}

async fn worker(target: SocketAddr, kind: Kind, start: Instant, end: Instant) -> Outcome {
    let mut out = Outcome::default();
    let mut sender: Option<SendRequest<ReqBody>> = None;
    while Instant::now() < end {
        if sender.is_none() {
            match connect(target).await {
                Ok(s) => sender = Some(s),
                Err(_) => {
                    out.errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let s = sender.as_mut().expect("connected above");
        let t0 = Instant::now();
        let mut bytes = 0u64;
        // Cut at `end`: a request still running then is not counted, only
        // the body bytes it received inside the window are.
        let result =
            tokio::time::timeout_at(end, exchange(s, target, kind, start, &mut bytes)).await;
        out.bytes += bytes;
        match result {
            Err(_elapsed) => break,
            Ok(Ok(())) => {
                out.completed += 1;
                if t0 >= start {
                    out.requests += 1;
                    let us = t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                    out.latencies_us.push(us);
                }
            }
            Ok(Err(_)) => {
                if Instant::now() >= start {
                    out.errors += 1;
                }
                sender = None;
            }
        }
    }
    out
}

/// A keep-alive HTTP/1.1 connection with `TCP_NODELAY` (small requests
/// otherwise stall on delayed ACKs).
pub async fn connect(target: SocketAddr) -> anyhow::Result<SendRequest<ReqBody>> {
    let tcp = TcpStream::connect(target).await?;
    tcp.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

fn request(target: SocketAddr, kind: Kind) -> http::Request<ReqBody> {
    let (method, path, body): (_, _, ReqBody) = match kind {
        Kind::Get(path) => (
            http::Method::GET,
            path,
            Full::new(Bytes::new()).map_err(|n| match n {}).boxed(),
        ),
        Kind::Post(path, len) => (
            http::Method::POST,
            path,
            Full::new(chunk(len)).map_err(|n| match n {}).boxed(),
        ),
    };
    http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, target.to_string())
        .body(body)
        .expect("valid request")
}

/// One request; adds the response body bytes received after `count_from`.
async fn exchange(
    sender: &mut SendRequest<ReqBody>,
    target: SocketAddr,
    kind: Kind,
    count_from: Instant,
    bytes: &mut u64,
) -> anyhow::Result<()> {
    sender.ready().await?;
    let resp = sender.send_request(request(target, kind)).await?;
    if !resp.status().is_success() {
        bail!("status {}", resp.status());
    }
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        if let Some(d) = frame?.data_ref()
            && Instant::now() >= count_from
        {
            *bytes += d.len() as u64;
        }
    }
    Ok(())
}

/// Downloads `n` bytes in one request on a fresh connection; returns the
/// seconds it took.
pub async fn download(target: SocketAddr, n: u64) -> anyhow::Result<f64> {
    let mut sender = connect(target).await?;
    let t0 = Instant::now();
    let path = format!("/bytes?n={n}");
    let req = http::Request::get(path.as_str())
        .header(http::header::HOST, target.to_string())
        .body(Full::new(Bytes::new()).map_err(|n| match n {}).boxed())?;
    let resp = sender.send_request(req).await?;
    if !resp.status().is_success() {
        bail!("download: status {}", resp.status());
    }
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(d) = frame?.data_ref() {
            got += d.len() as u64;
        }
    }
    if got != n {
        bail!("download: got {got} of {n} bytes");
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// Uploads `n` bytes in one streamed request body; returns the seconds it
/// took, after checking the backend saw every byte.
pub async fn upload(target: SocketAddr, n: u64) -> anyhow::Result<f64> {
    let mut sender = connect(target).await?;
    let t0 = Instant::now();
    let req = http::Request::post("/sink")
        .header(http::header::HOST, target.to_string())
        .header(http::header::CONTENT_LENGTH, n)
        .body(backend::filler_body(n))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    let secs = t0.elapsed().as_secs_f64();
    let seen: u64 = std::str::from_utf8(&body)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if !status.is_success() || seen != n {
        bail!(
            "upload: status {status}, backend saw {seen} of {n} bytes: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(secs)
}

#[cfg(test)]
mod tests {
    use super::Outcome;

    #[test]
    fn percentiles_are_nearest_rank() {
        let o = Outcome {
            latencies_us: (1..=100).map(|i| i * 1000).collect(),
            ..Default::default()
        };
        assert_eq!(o.percentile_ms(50.0), 50.0);
        assert_eq!(o.percentile_ms(99.0), 99.0);
        assert_eq!(o.percentile_ms(100.0), 100.0);
        assert!(Outcome::default().percentile_ms(50.0).is_nan());
    }
}
