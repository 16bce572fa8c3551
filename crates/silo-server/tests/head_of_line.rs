//! No head-of-line blocking between the exchanges of one agent: a download
//! whose reader stalls while more than 4x the tunnel connection's
//! flow-control window is still to come must not slow the agent's other
//! requests. Shared flow control (one window for the whole connection)
//! would fail this: the stalled download would fill the connection window
//! and every other response would wait behind it.

use silo_proto::limits::{CONNECTION_WINDOW_BYTES, STREAM_WINDOW_BYTES};
use silo_test_support::backend::is_pattern;
use silo_test_support::client::get;
use silo_test_support::{Backend, TestAgent, TestServer, eventually};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Latency bound of each small request while the download is stalled
/// (debug build, two cores, 50 at once).
const BOUND: Duration = Duration::from_secs(2);

/// Reads a chunked HTTP/1.1 response body incrementally.
struct Chunked {
    reader: BufReader<TcpStream>,
    left_in_chunk: u64,
    done: bool,
}

impl Chunked {
    /// Sends a GET and reads the response head.
    async fn get(addr: SocketAddr, path: &str) -> Self {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut reader = BufReader::with_capacity(16 * 1024, stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).await.unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            head.push_str(&line);
        }
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "{head}"
        );
        Self {
            reader,
            left_in_chunk: 0,
            done: false,
        }
    }

    /// Appends up to `max` body bytes to `out`; 0 at the end of the body.
    async fn read(&mut self, out: &mut Vec<u8>, max: usize) -> usize {
        if self.done {
            return 0;
        }
        if self.left_in_chunk == 0 {
            let mut line = String::new();
            self.reader.read_line(&mut line).await.unwrap();
            let size = line.trim_end().split(';').next().unwrap();
            self.left_in_chunk = u64::from_str_radix(size, 16).expect("chunk size");
            if self.left_in_chunk == 0 {
                self.done = true;
                return 0;
            }
        }
        let want = max.min(self.left_in_chunk as usize);
        let start = out.len();
        out.resize(start + want, 0);
        self.reader.read_exact(&mut out[start..]).await.unwrap();
        self.left_in_chunk -= want as u64;
        if self.left_in_chunk == 0 {
            let mut crlf = [0u8; 2];
            self.reader.read_exact(&mut crlf).await.unwrap();
            assert_eq!(&crlf, b"\r\n");
        }
        want
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_download_does_not_block_the_agents_other_requests() {
    silo_test_support::init_logs();
    let window = u64::from(CONNECTION_WINDOW_BYTES);
    // One stalled exchange can pin at most its stream window of the
    // connection window.
    const { assert!(STREAM_WINDOW_BYTES < CONNECTION_WINDOW_BYTES) };
    let total = 8 * window; // 64 MiB
    let backend = Backend::spawn().await;
    let server = TestServer::spawn().await;
    let agent = TestAgent::spawn(server.grpc, "hol", &backend.url()).await;
    agent.wait_connected().await;
    let port = server.agent_port("hol").await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));

    // Start the download, read a little of it, then stop reading.
    let mut download = Chunked::get(addr, &format!("/bytes?n={total}")).await;
    let mut data = Vec::new();
    while data.len() < 64 * 1024 {
        assert!(download.read(&mut data, 64 * 1024).await > 0);
    }
    // The stall is established once the backend stops producing: every
    // buffer and window between it and the reader is full.
    let produced = &backend.observed.produced;
    let mut last = (produced.load(Ordering::SeqCst), Instant::now());
    let stalled_at = eventually(
        Duration::from_secs(20),
        "the backend to stop producing",
        || {
            let now = produced.load(Ordering::SeqCst);
            let stable = if now != last.0 {
                last = (now, Instant::now());
                None
            } else {
                (last.1.elapsed() >= Duration::from_millis(500)).then_some(now)
            };
            async move { stable }
        },
    )
    .await;
    assert!(
        total - stalled_at > 4 * window,
        "only {} bytes still to come when stalled; the test needs more than 4x the \
         connection window ({window})",
        total - stalled_at
    );

    // Fifty small requests to the same agent, all at once, each within the
    // bound.
    let started = Instant::now();
    let small: Vec<_> = (0..50)
        .map(|_| {
            tokio::spawn(async move {
                let t = Instant::now();
                let r = tokio::time::timeout(BOUND, get(addr, "/hello")).await;
                r.map(|r| (r.status.as_u16(), r.text(), t.elapsed()))
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for task in small {
        let (status, text, took) = task.await.unwrap().unwrap_or_else(|_| {
            panic!("a request took over {BOUND:?} behind the stalled download")
        });
        assert_eq!((status, text.as_str()), (200, "hello"));
        slowest = slowest.max(took);
    }
    eprintln!(
        "50 requests during the stall: slowest {slowest:?}, all done after {:?}; \
         backend stalled at {stalled_at} of {total} bytes",
        started.elapsed()
    );
    let now = produced.load(Ordering::SeqCst);
    assert!(
        now < total && total - now > 4 * window,
        "the stalled download moved on: {now} of {total} produced"
    );

    // Resume: the whole download arrives, intact.
    let mut offset = 0u64;
    loop {
        let n = download.read(&mut data, 1024 * 1024).await;
        if data.len() >= 4 * 1024 * 1024 || n == 0 {
            assert!(is_pattern(&data, offset), "corrupt data at {offset}");
            offset += data.len() as u64;
            data.clear();
        }
        if n == 0 {
            break;
        }
    }
    assert_eq!(offset, total);
}
