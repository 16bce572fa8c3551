//! Negotiated protocol capabilities ("stream-reuse", "inline-body") as a
//! hand-driven agent sees them on the wire: what the welcome offers, when
//! the server reuses an Exchange stream, and when a request body rides
//! inside the `RequestStart` instead of following as data frames.

use bytes::Bytes;
use http::Request;
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use silo_proto::capabilities::{INLINE_BODY, STREAM_REUSE};
use silo_proto::limits::MAX_INLINE_BODY_BYTES;
use silo_proto::v1::tunnel_client::TunnelClient;
use silo_proto::v1::{
    AgentFrame, AgentMessage, End, Header, Hello, RequestStart, ResponseStart, ServerFrame,
    ServerMessage, Welcome, agent_frame, agent_message, server_frame, server_message,
};
use silo_test_support::TestServer;
use silo_test_support::client::{self, Reply};
use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

/// Upper bound for anything the server does on loopback.
const WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WITHIN, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WITHIN:?} waiting for {what}"))
}

/// An agent written by hand: its control session (kept open by holding
/// both halves) and the welcome the server answered its hello with.
struct RawAgent {
    client: TunnelClient<Channel>,
    welcome: Welcome,
    _session_tx: mpsc::Sender<AgentMessage>,
    _session_rx: Streaming<ServerMessage>,
}

impl RawAgent {
    async fn connect(grpc: SocketAddr, agent_id: &str, capabilities: &[&str]) -> Self {
        let mut client = TunnelClient::connect(format!("http://{grpc}"))
            .await
            .expect("gRPC connect");
        let hello = Hello {
            protocol_version: silo_proto::PROTOCOL_VERSION,
            agent_id: agent_id.into(),
            agent_version: "test".into(),
            capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
        };
        let (tx, rx) = mpsc::channel(4);
        let hello = agent_message::Msg::Hello(hello);
        tx.send(AgentMessage { msg: Some(hello) }).await.unwrap();
        let mut inbound = client
            .session(ReceiverStream::new(rx))
            .await
            .expect("session accepted")
            .into_inner();
        let welcome = match within("the welcome", inbound.message()).await {
            Ok(Some(ServerMessage {
                msg: Some(server_message::Msg::Welcome(w)),
            })) => w,
            other => panic!("expected a welcome, got {other:?}"),
        };
        Self {
            client,
            welcome,
            _session_tx: tx,
            _session_rx: inbound,
        }
    }

    /// Opens one standby Exchange stream, tagged with the session id.
    async fn open_exchange(&mut self) -> ExchangeStream {
        let (tx, rx) = mpsc::channel(4);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        let session_id = self.welcome.session_id.parse().unwrap();
        request
            .metadata_mut()
            .insert(silo_proto::SESSION_ID_METADATA, session_id);
        let inbound = within("the exchange stream", self.client.exchange(request))
            .await
            .expect("exchange stream accepted")
            .into_inner();
        ExchangeStream { tx, inbound }
    }
}

/// One Exchange stream as the agent holds it.
struct ExchangeStream {
    tx: mpsc::Sender<AgentFrame>,
    inbound: Streaming<ServerFrame>,
}

impl ExchangeStream {
    /// The server's next frame; the stream ending here is a failure.
    async fn next_frame(&mut self) -> server_frame::Frame {
        match within("a server frame", self.inbound.message()).await {
            Ok(Some(ServerFrame { frame: Some(f) })) => f,
            other => panic!("expected a server frame, got {other:?}"),
        }
    }

    async fn request_start(&mut self) -> RequestStart {
        match self.next_frame().await {
            server_frame::Frame::Start(start) => start,
            other => panic!("expected a RequestStart, got {other:?}"),
        }
    }

    /// Exactly `n` bytes of data frames (however the server split them).
    async fn request_data(&mut self, n: usize) -> Vec<u8> {
        let mut got = Vec::new();
        while got.len() < n {
            match self.next_frame().await {
                server_frame::Frame::Data(d) => got.extend_from_slice(&d),
                other => panic!("expected data after {} bytes, got {other:?}", got.len()),
            }
        }
        assert_eq!(got.len(), n, "more data than the user sent");
        got
    }

    /// A streamed request body: data frames up to the `End`.
    async fn streamed_body(&mut self) -> Vec<u8> {
        let mut got = Vec::new();
        loop {
            match self.next_frame().await {
                server_frame::Frame::Data(d) => got.extend_from_slice(&d),
                server_frame::Frame::End(End {}) => return got,
                other => panic!("expected data or End, got {other:?}"),
            }
        }
    }

    async fn send(&self, f: agent_frame::Frame) {
        self.tx.send(AgentFrame { frame: Some(f) }).await.unwrap();
    }

    /// Answers the classic way: head, one data frame, `End`.
    async fn respond_streamed(&self, status: u32, body: &'static str) {
        let head = ResponseStart {
            status,
            headers: vec![text_plain()],
            ..Default::default()
        };
        self.send(agent_frame::Frame::Start(head)).await;
        let data = Bytes::from_static(body.as_bytes());
        self.send(agent_frame::Frame::Data(data)).await;
        self.send(agent_frame::Frame::End(End {})).await;
    }

    /// Asserts the server closes its side instead of sending anything more.
    async fn expect_closed_by_server(&mut self) {
        match within("the server to end the stream", self.inbound.message()).await {
            Ok(None) | Err(_) => {}
            Ok(Some(f)) => panic!("the stream should have ended, got {f:?}"),
        }
    }
}

fn text_plain() -> Header {
    Header {
        name: "content-type".into(),
        value: Bytes::from_static(b"text/plain"),
    }
}

/// A user request to `agent` through the public proxy path, in the
/// background so the test can play the agent meanwhile.
fn user(server: &TestServer, agent: &str, req: Request<Full<Bytes>>) -> JoinHandle<Reply> {
    let (mut parts, body) = req.into_parts();
    parts.uri = format!("/proxy/{agent}{}", parts.uri).parse().unwrap();
    tokio::spawn(client::send(server.proxy, Request::from_parts(parts, body)))
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path).body(Full::default()).unwrap()
}

/// A body of known length: `Full` makes the client send Content-Length.
fn post(path: &str, body: Vec<u8>) -> Request<Full<Bytes>> {
    Request::post(path).body(Full::from(body)).unwrap()
}

/// Waits for the user's reply and checks its status and exact body.
async fn expect_reply(user: JoinHandle<Reply>, status: u16, body: &str) -> Reply {
    let r = within("the user's reply", user).await.expect("user task");
    assert_eq!((r.status.as_u16(), r.text().as_str()), (status, body));
    r
}

/// Distinguishable bytes, so a shifted or truncated body cannot pass.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_welcome_lists_the_servers_capabilities() {
    let server = TestServer::spawn().await;
    // The server lists what it supports whatever the agent announced.
    let agent = RawAgent::connect(server.grpc, "plain", &[]).await;
    let caps = &agent.welcome.capabilities;
    assert!(caps.iter().any(|c| c == "stream-reuse"), "{caps:?}");
    assert!(caps.iter().any(|c| c == "inline-body"), "{caps:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_capabilities_gets_one_exchange_per_stream() {
    let server = TestServer::spawn().await;
    let mut agent = RawAgent::connect(server.grpc, "oneshot", &[]).await;
    let mut stream = agent.open_exchange().await;

    let first = user(&server, "oneshot", get("/first"));
    let start = stream.request_start().await;
    assert_eq!(
        (start.method.as_str(), start.path_and_query.as_str()),
        ("GET", "/first")
    );
    assert!(!start.has_body && start.body.is_empty(), "{start:?}");
    stream.respond_streamed(200, "first answer").await;
    expect_reply(first, 200, "first answer").await;

    // A second user is waiting, yet the used stream must not carry it: the
    // server ends it (the request waits for a stream this agent never opens).
    let second = user(&server, "oneshot", get("/second"));
    stream.expect_closed_by_server().await;
    second.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reusing_agent_gets_the_next_request_on_the_same_stream() {
    let server = TestServer::spawn().await;
    let mut agent = RawAgent::connect(server.grpc, "reuser", &[STREAM_REUSE]).await;
    // The only stream this agent ever opens: requests 2 and 3 can only
    // reach it if the server reuses it.
    let mut stream = agent.open_exchange().await;

    let mut exchange_ids = HashSet::new();
    for (path, answer) in [("/1", "answer 1"), ("/2", "answer 2"), ("/3", "answer 3")] {
        let u = user(&server, "reuser", get(path));
        let start = stream.request_start().await;
        assert_eq!(start.path_and_query, path);
        assert!(!start.has_body && start.body.is_empty(), "{start:?}");
        exchange_ids.insert(start.exchange_id);
        stream.respond_streamed(200, answer).await;
        expect_reply(u, 200, answer).await;
    }
    assert_eq!(exchange_ids.len(), 3, "each exchange has its own id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_bodies_travel_inside_the_start_frames() {
    let server = TestServer::spawn().await;
    let mut agent = RawAgent::connect(server.grpc, "inline", &[STREAM_REUSE, INLINE_BODY]).await;
    let mut stream = agent.open_exchange().await;

    let sent = pattern(3000);
    let u = user(&server, "inline", post("/small", sent.clone()));
    let start = stream.request_start().await;
    assert_eq!(
        (start.method.as_str(), start.path_and_query.as_str()),
        ("POST", "/small")
    );
    assert!(!start.has_body, "an inline body is not followed by data");
    assert_eq!(start.body, sent);
    // The whole answer in the head: no data, no End.
    let head = ResponseStart {
        status: 201,
        headers: vec![text_plain()],
        body: Bytes::from_static(b"inline answer"),
        complete: true,
    };
    stream.send(agent_frame::Frame::Start(head)).await;
    let r = expect_reply(u, 201, "inline answer").await;
    assert_eq!(r.headers["content-type"], "text/plain");

    // The same stream carries the next request, and its very next frame is
    // that request's head: no data or End of the first one came in between.
    // At exactly the limit the body is still inline.
    let at_limit = pattern(MAX_INLINE_BODY_BYTES as usize);
    let u = user(&server, "inline", post("/at-limit", at_limit.clone()));
    let start = stream.request_start().await;
    assert_eq!(start.path_and_query, "/at-limit");
    assert!(!start.has_body, "{} bytes are inline", at_limit.len());
    assert!(start.body == at_limit, "the inline body differs");
    stream.respond_streamed(200, "second answer").await;
    expect_reply(u, 200, "second answer").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_or_unknown_length_body_is_streamed() {
    let server = TestServer::spawn().await;
    let mut agent = RawAgent::connect(server.grpc, "big", &[STREAM_REUSE, INLINE_BODY]).await;
    let mut stream = agent.open_exchange().await;

    // Known length, one byte over the limit.
    let large = pattern(MAX_INLINE_BODY_BYTES as usize + 1);
    let u = user(&server, "big", post("/large", large.clone()));
    let start = stream.request_start().await;
    assert_eq!(start.path_and_query, "/large");
    assert!(start.has_body && start.body.is_empty(), "{start:?}");
    assert!(
        stream.streamed_body().await == large,
        "the streamed body differs"
    );
    stream.respond_streamed(200, "large done").await;
    expect_reply(u, 200, "large done").await;

    // Unknown length (chunked), held open by the user: the head must reach
    // the agent before the body ends, and each chunk as it comes.
    let (chunks, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    let req = Request::post("/proxy/big/chunked")
        .body(StreamBody::new(ReceiverStream::new(rx)))
        .unwrap();
    let proxy = server.proxy;
    let u = tokio::spawn(async move {
        let resp = client::open(proxy, req).await;
        let status = resp.status();
        (status, resp.into_body().collect().await.unwrap().to_bytes())
    });
    let chunk = |bytes: &'static [u8]| Ok(Frame::data(Bytes::from_static(bytes)));
    chunks.send(chunk(b"first chunk;")).await.unwrap();
    let start = stream.request_start().await;
    assert_eq!(start.path_and_query, "/chunked");
    assert!(start.has_body && start.body.is_empty(), "{start:?}");
    assert_eq!(stream.request_data(12).await, b"first chunk;");
    chunks.send(chunk(b"second chunk")).await.unwrap();
    assert_eq!(stream.request_data(12).await, b"second chunk");
    drop(chunks);
    let rest = stream.streamed_body().await;
    assert!(rest.is_empty(), "End follows the last chunk, got {rest:?}");
    stream.respond_streamed(200, "chunked done").await;
    let (status, body) = within("the chunked upload's reply", u).await.unwrap();
    assert_eq!((status.as_u16(), &body[..]), (200, &b"chunked done"[..]));
}

// The other half of the negotiation: the server inlines only for agents that
// asked for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_inline_body_a_small_body_is_streamed() {
    let server = TestServer::spawn().await;
    let mut agent = RawAgent::connect(server.grpc, "classic", &[STREAM_REUSE]).await;
    let mut stream = agent.open_exchange().await;

    let sent = pattern(3000);
    let u = user(&server, "classic", post("/small", sent.clone()));
    let start = stream.request_start().await;
    assert!(start.has_body && start.body.is_empty(), "{start:?}");
    assert_eq!(stream.streamed_body().await, sent);
    stream.respond_streamed(200, "streamed").await;
    expect_reply(u, 200, "streamed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_of_declared_length_frees_its_stream_for_the_next_request() {
    let server = TestServer::spawn().await;
    let mut agent = RawAgent::connect(server.grpc, "sized", &[STREAM_REUSE]).await;
    let mut stream = agent.open_exchange().await;

    // hyper stops reading a body once its Content-Length is written, so the
    // agent's `End` comes after the user already has the whole answer; the
    // stream must still go back to the pool rather than be cancelled.
    let first = user(&server, "sized", get("/sized"));
    stream.request_start().await;
    let body = "exactly this long";
    let head = ResponseStart {
        status: 200,
        headers: vec![
            text_plain(),
            Header {
                name: "content-length".into(),
                value: Bytes::from(body.len().to_string()),
            },
        ],
        ..Default::default()
    };
    stream.send(agent_frame::Frame::Start(head)).await;
    stream
        .send(agent_frame::Frame::Data(Bytes::from_static(
            body.as_bytes(),
        )))
        .await;
    expect_reply(first, 200, body).await;
    stream.send(agent_frame::Frame::End(End {})).await;

    let second = user(&server, "sized", get("/after"));
    let start = stream.request_start().await;
    assert_eq!(start.path_and_query, "/after");
    stream.respond_streamed(200, "second answer").await;
    expect_reply(second, 200, "second answer").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_upgrade_is_never_followed_by_another_request_on_its_stream() {
    let server = TestServer::spawn().await;
    let mut agent = RawAgent::connect(server.grpc, "declines", &[STREAM_REUSE]).await;
    let mut stream = agent.open_exchange().await;

    // The agent waits for the server's `End` after an upgrade request, even
    // when the local service answers without a 101; the server must not
    // put such a stream back into the pool.
    let upgrade = Request::get("/ws")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .body(Full::default())
        .unwrap();
    let first = user(&server, "declines", upgrade);
    let start = stream.request_start().await;
    assert!(start.upgrade, "{start:?}");
    stream.respond_streamed(200, "no upgrade here").await;
    expect_reply(first, 200, "no upgrade here").await;

    let second = user(&server, "declines", get("/next"));
    stream.expect_closed_by_server().await;
    second.abort();
}
