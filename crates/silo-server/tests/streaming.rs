//! Bodies, headers and upgrades through the tunnel, as a user sees them:
//! large downloads and uploads streamed (not buffered) with their content
//! intact, echo, server-sent events arriving one by one, WebSockets, repeated
//! response headers, hop-by-hop filtering and `X-Forwarded-*`.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::{BodyExt, Full};
use silo_test_support::backend::{Observed, is_pattern};
use silo_test_support::client::{self, get, get_with, pattern_sum, pattern_upload};
use silo_test_support::{Backend, TestAgent, TestServer, eventually};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

const MIB: u64 = 1024 * 1024;

fn at(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A server, one agent and its backend; the agent's dedicated port.
struct Setup {
    backend: Backend,
    server: TestServer,
    _agent: TestAgent,
    port: u16,
}

async fn setup(agent_id: &str) -> Setup {
    silo_test_support::init_logs();
    let backend = Backend::spawn().await;
    let server = TestServer::spawn().await;
    let agent = TestAgent::spawn(server.grpc, agent_id, &backend.url()).await;
    agent.wait_connected().await;
    let port = server.agent_port(agent_id).await;
    Setup {
        backend,
        server,
        _agent: agent,
        port,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_download_streams_through_with_its_content_intact() {
    let s = setup("down").await;
    let total = 64 * MIB;
    let resp = client::open(
        at(s.port),
        Request::get(format!("/bytes?n={total}"))
            .body(Full::<Bytes>::default())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut received = 0u64;
    let mut checked_streaming = false;
    while let Some(frame) = body.frame().await {
        let data = frame.expect("body frame").into_data().unwrap_or_default();
        assert!(is_pattern(&data, received), "corrupt data at {received}");
        received += data.len() as u64;
        if !checked_streaming && received >= MIB {
            // The first MiB is here while the backend is far from done: the
            // tunnel forwards as it goes instead of collecting the body.
            let produced = s.backend.observed.produced.load(Ordering::SeqCst);
            assert!(
                produced < total / 2,
                "backend already produced {produced} bytes when the first MiB arrived"
            );
            checked_streaming = true;
        }
    }
    assert_eq!(received, total);
    assert_eq!(s.backend.observed.bytes_abandoned.load(Ordering::SeqCst), 0);
}

/// Holds the upload at `offset` until the backend has read `want` bytes.
async fn upload_gate(obs: Arc<Observed>, offset: u64, hold_at: u64, want: u64) {
    if offset == hold_at {
        eventually(
            Duration::from_secs(20),
            "the backend reading the upload while it is still being sent",
            || {
                let obs = obs.clone();
                async move { (obs.consumed.load(Ordering::SeqCst) >= want).then_some(()) }
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_upload_streams_through_with_its_content_intact() {
    let s = setup("up").await;
    let total = 64 * MIB;
    let obs = s.backend.observed.clone();
    // Half-way through sending, the upload waits until the backend has
    // read a good part of it: a tunnel that collected the body first would
    // never get there.
    let body = pattern_upload(total, move |offset| {
        upload_gate(obs.clone(), offset, total / 2, 8 * MIB)
    });
    let resp = client::open(
        at(s.port),
        Request::post("/count")
            .header("content-length", total.to_string())
            .body(body)
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["bytes"], total);
    assert_eq!(v["sum"], pattern_sum(total));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_upload_of_unknown_length_arrives_whole() {
    let s = setup("chunked-up").await;
    let total = 3 * MIB + 17;
    // No Content-Length: the user's client sends it chunked.
    let body = pattern_upload(total, |_| async {});
    let resp = client::open(
        s.server.proxy,
        Request::post("/proxy/chunked-up/count").body(body).unwrap(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["bytes"], total);
    assert_eq!(v["sum"], pattern_sum(total));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5_mib_echo_round_trips_byte_exact() {
    let s = setup("echo").await;
    let payload: Vec<u8> = (0..5 * MIB as usize)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let r = client::post(at(s.port), "/echo", payload.clone()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), payload.len());
    assert!(r.body == payload, "echoed body differs");

    // Through the public listener as well.
    let r = client::post(s.server.proxy, "/proxy/echo/echo", payload.clone()).await;
    assert_eq!(r.status, 200);
    assert!(r.body == payload, "echoed body differs via /proxy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_arrive_one_by_one() {
    let s = setup("sse").await;
    let resp = client::open(
        at(s.port),
        Request::get("/sse").body(Full::<Bytes>::default()).unwrap(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let mut text = String::new();
    let mut first_at = None;
    while let Some(frame) = body.frame().await {
        let data = frame.unwrap().into_data().unwrap_or_default();
        text.push_str(std::str::from_utf8(&data).unwrap());
        if first_at.is_none() && text.contains("data: 0\n\n") {
            assert!(
                !text.contains("data: 4"),
                "the first event came together with the last: {text:?}"
            );
            first_at = Some(Instant::now());
        }
    }
    let first_at = first_at.expect("first event");
    // The backend spaces the remaining four events 20 ms apart; a tunnel
    // that buffered the stream would deliver them all at once.
    assert!(
        first_at.elapsed() >= Duration::from_millis(50),
        "the stream ended {:?} after the first event",
        first_at.elapsed()
    );
    let expected: String = (0..5).map(|i| format!("data: {i}\n\n")).collect();
    assert_eq!(text, expected);
}

async fn websocket_echo(url: &str) {
    let (mut ws, resp) = tokio_tungstenite::connect_async(url)
        .await
        .unwrap_or_else(|e| panic!("websocket handshake with {url}: {e}"));
    assert_eq!(resp.status(), 101);

    ws.send(Message::text("hello through the tunnel"))
        .await
        .unwrap();
    let m = ws.next().await.unwrap().unwrap();
    assert_eq!(m, Message::text("hello through the tunnel"));

    let small = vec![0u8, 1, 2, 254, 255];
    ws.send(Message::binary(small.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(small));

    // Bigger than one tunnel frame (64 KiB) and than the frame queues.
    let big: Vec<u8> = (0..700_000u32).map(|i| (i % 253) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(big));

    // The backend answers our Close with its own, then the stream ends.
    ws.close(None).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("the close handshake completes");
    assert!(
        matches!(reply, Some(Ok(Message::Close(_)))),
        "closing failed: {reply:?}"
    );
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("the stream ends after the close handshake");
    assert!(end.is_none(), "{end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_agent_port_and_the_proxy_path() {
    let s = setup("ws").await;
    websocket_echo(&format!("ws://{}/ws", s.backend.addr)).await;
    websocket_echo(&format!("ws://127.0.0.1:{}/ws", s.port)).await;
    websocket_echo(&format!("ws://{}/proxy/ws/ws", s.server.proxy)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_response_headers_arrive_intact_and_in_order() {
    let s = setup("cookies").await;
    for r in [
        get(at(s.port), "/cookies").await,
        get(s.server.proxy, "/proxy/cookies/cookies").await,
    ] {
        assert_eq!(r.status, 200);
        let cookies: Vec<_> = r.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1; Path=/", "b=2; HttpOnly", "c=3"]);
        let multi: Vec<_> = r.headers.get_all("x-multi").iter().collect();
        assert_eq!(multi, ["one", "two"]);
    }
}

/// Sends `raw` on a fresh connection and returns the whole answer (the
/// request asks the server to close the connection after it).
async fn raw_exchange(addr: SocketAddr, raw: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .expect("answer within 10 s")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// The JSON the backend's `/headers` route answered, from a raw HTTP/1.1
/// answer (content-length or chunked with one chunk).
fn headers_seen(answer: &str) -> Vec<(String, String)> {
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let body = &answer[answer.find('{').expect("JSON body")..=answer.rfind('}').unwrap()];
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_owned(),
                p[1].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn values<'a>(seen: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    seen.iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_dropped_and_forwarded_headers_added() {
    let s = setup("hops").await;
    for (addr, path, host) in [
        (at(s.port), "/headers", "public.example:1234"),
        (s.server.proxy, "/proxy/hops/headers", "other.example"),
    ] {
        // A request carrying every kind of hop-by-hop header, with a body so
        // Transfer-Encoding is meaningful ("gzip, chunked" would reach the
        // backend verbatim if it were forwarded).
        let raw = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\n\
             Connection: close, X-Hop-Secret\r\nX-Hop-Secret: 1\r\n\
             Keep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\n\
             Upgrade: h2c\r\nTransfer-Encoding: gzip, chunked\r\n\
             X-Forwarded-For: 10.9.8.7\r\nX-Kept: a\r\nX-Kept: b\r\n\r\n\
             3\r\nabc\r\n0\r\n\r\n"
        );
        let seen = headers_seen(&raw_exchange(addr, &raw).await);
        for hop in [
            "connection",
            "x-hop-secret",
            "keep-alive",
            "te",
            "proxy-connection",
            "upgrade",
        ] {
            assert!(
                values(&seen, hop).is_empty(),
                "{hop} reached the backend: {seen:?}"
            );
        }
        for v in values(&seen, "transfer-encoding") {
            assert_eq!(v, "chunked", "the user's transfer coding was forwarded");
        }
        assert_eq!(values(&seen, "x-kept"), ["a", "b"]);
        assert_eq!(values(&seen, "x-forwarded-for"), ["10.9.8.7, 127.0.0.1"]);
        assert_eq!(values(&seen, "x-forwarded-proto"), ["http"]);
        assert_eq!(values(&seen, "x-forwarded-host"), [host]);
        // The backend is addressed by its own name, not the public one.
        assert_eq!(values(&seen, "host"), [s.backend.addr.to_string().as_str()]);
    }

    // A plain request gets a fresh X-Forwarded-For.
    let r = get_with(at(s.port), "/headers", &[("host", "h.example")]).await;
    let seen = headers_seen(&format!(
        "HTTP/1.1 200 OK\r\n\r\n{}",
        String::from_utf8_lossy(&r.body)
    ));
    assert_eq!(values(&seen, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(values(&seen, "x-forwarded-host"), ["h.example"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_exchanges_of_one_agent_do_not_mix() {
    let s = setup("mix").await;
    let tasks: Vec<_> = (0..24u64)
        .map(|i| {
            let (port, proxy) = (s.port, s.server.proxy);
            tokio::spawn(async move {
                let n = 100_000 + i * 37_000;
                if i % 2 == 0 {
                    let r = get(at(port), &format!("/bytes?n={n}")).await;
                    assert_eq!(r.body.len() as u64, n, "download {i}");
                    assert!(is_pattern(&r.body, 0), "download {i} corrupt");
                } else {
                    let payload: Vec<u8> = (0..n).map(|b| (b * i % 256) as u8).collect();
                    let r = client::post(proxy, "/proxy/mix/echo", payload.clone()).await;
                    assert!(r.body == payload, "echo {i} differs");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_connection_carries_many_exchanges() {
    let s = setup("keepalive").await;
    let mut conn = client::connect(at(s.port)).await;
    let host = format!("127.0.0.1:{}", s.port);
    let cases: [(&str, &str, u16, &str); 7] = [
        ("GET", "/hello", 200, "hello"),
        ("HEAD", "/bytes?n=1000", 404, ""),
        ("GET", "/status/204", 204, ""),
        ("GET", "/status/304", 304, ""),
        ("GET", "/ws", 400, "not a websocket request"),
        ("POST", "/echo", 200, "ping"),
        ("GET", "/hello", 200, "hello"),
    ];
    for (method, path, status, body) in cases {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &host)
            .body(Full::new(Bytes::from_static(if method == "POST" {
                b"ping"
            } else {
                b""
            })))
            .unwrap();
        // The connection must be ready (idle) again before the next request;
        // it is not if the server closed it after the previous one.
        tokio::time::timeout(Duration::from_secs(5), conn.ready())
            .await
            .unwrap_or_else(|_| panic!("connection not reusable before {method} {path}"))
            .unwrap_or_else(|e| panic!("connection closed before {method} {path}: {e}"));
        let resp = tokio::time::timeout(Duration::from_secs(5), conn.send_request(req))
            .await
            .unwrap_or_else(|_| panic!("{method} {path} hung"))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert_eq!(resp.status(), status, "{method} {path}");
        let got = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(got, body.as_bytes(), "{method} {path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_and_queries_reach_the_backend_verbatim() {
    let s = setup("verbatim").await;
    let r = get(at(s.port), "/headers?a=1&b=%20x&c=%2F").await;
    assert_eq!(r.json()["uri"], "/headers?a=1&b=%20x&c=%2F");
    let r = get(s.server.proxy, "/proxy/verbatim/headers?q=%26&r").await;
    assert_eq!(r.json()["uri"], "/headers?q=%26&r");
    // A big header survives.
    let big = "v".repeat(12 * 1024);
    let r = get_with(at(s.port), "/headers", &[("x-big", &big)]).await;
    let seen = r.json()["headers"].clone();
    assert!(
        seen.as_array()
            .unwrap()
            .iter()
            .any(|p| p[0] == "x-big" && p[1] == big.as_str())
    );
}
