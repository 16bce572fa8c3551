//! Shutdown and slow clients as a user and an operator see them: the
//! server and the agent drain what is under way and refuse what is new, and
//! a client that sends its request too slowly is cut.

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use silo_test_support::backend::is_pattern;
use silo_test_support::client::{self, get};
use silo_test_support::{Backend, TestAgent, TestServer, eventually};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const MIB: u64 = 1024 * 1024;

fn at(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

// ---------------------------------------------------------------- shutdown

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_downloads_and_refuses_new_connections() {
    silo_test_support::init_logs();
    let backend = Backend::spawn().await;
    let mut server = TestServer::spawn().await;
    let agent = TestAgent::spawn(server.grpc, "drain", &backend.url()).await;
    agent.wait_connected().await;
    let port = agent.port();

    let total = 16 * MIB;
    let downloads = [
        format!("http://{}/proxy/drain/bytes?n={total}", server.proxy),
        format!("http://127.0.0.1:{port}/bytes?n={total}"),
    ];
    let mut bodies = Vec::new();
    for url in &downloads {
        let uri: http::Uri = url.parse().unwrap();
        let addr: SocketAddr = uri.authority().unwrap().as_str().parse().unwrap();
        let resp = client::open(
            addr,
            Request::get(uri.path_and_query().unwrap().as_str())
                .body(Full::<Bytes>::default())
                .unwrap(),
        )
        .await;
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        bodies.push((body, first.len() as u64));
    }

    server.shutdown.cancel();
    for addr in [server.proxy, at(port), server.api] {
        eventually(
            Duration::from_secs(5),
            &format!("{addr} refusing connections"),
            || async move { TcpStream::connect(addr).await.is_err().then_some(()) },
        )
        .await;
    }
    for (mut body, mut received) in bodies {
        while let Some(frame) = body.frame().await {
            let data = frame
                .expect("download cut by the shutdown")
                .into_data()
                .unwrap();
            assert!(is_pattern(&data, received));
            received += data.len() as u64;
        }
        assert_eq!(received, total);
    }
    let stopped = tokio::time::timeout(Duration::from_secs(10), server.task.take().unwrap())
        .await
        .expect("server stops after draining");
    stopped.unwrap().unwrap();
    eventually(Duration::from_secs(5), "the agent told to go", || async {
        (!agent.connected()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_shutting_down_finishes_its_exchanges_and_takes_no_new_ones() {
    silo_test_support::init_logs();
    let backend = Backend::spawn().await;
    let server = TestServer::spawn().await;
    let mut agent = TestAgent::spawn(server.grpc, "leaving", &backend.url()).await;
    agent.wait_connected().await;

    let total = 16 * MIB;
    let resp = client::open(
        server.proxy,
        Request::get(format!("/proxy/leaving/bytes?n={total}"))
            .body(Full::<Bytes>::default())
            .unwrap(),
    )
    .await;
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let mut received = first.len() as u64;

    agent.shutdown.cancel();
    // New requests are refused at once rather than left waiting for an
    // agent that will take no more: it leaves the registry as soon as it
    // starts draining (its grace here is 5 s).
    eventually(
        Duration::from_secs(2),
        "the agent to leave the registry",
        || async { (server.agents().await["count"] == 0).then_some(()) },
    )
    .await;
    let started = Instant::now();
    let r = get(server.proxy, "/proxy/leaving/hello").await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(started.elapsed() < Duration::from_secs(2));

    // The download under way completes.
    while let Some(frame) = body.frame().await {
        let data = frame
            .expect("download cut by the agent's shutdown")
            .into_data()
            .unwrap();
        assert!(is_pattern(&data, received));
        received += data.len() as u64;
    }
    assert_eq!(received, total);
    tokio::time::timeout(Duration::from_secs(10), agent.stop())
        .await
        .expect("the agent stops once drained");
}

// ------------------------------------------------------------ slow clients

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_clients_are_cut_after_the_header_read_timeout() {
    let backend = Backend::spawn().await;
    let server = TestServer::spawn_with(|c| c.http.header_read_timeout_seconds = 1).await;
    let agent = TestAgent::spawn(server.grpc, "loris", &backend.url()).await;
    agent.wait_connected().await;
    let port = agent.port();

    let partials: [&[u8]; 3] = [
        b"GET /proxy/loris/hello HTTP/1.1\r\nHost: a\r\nX-Slow: ",
        b"GET /proxy/lo",
        b"",
    ];
    for addr in [server.proxy, at(port), server.api] {
        for partial in partials {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(partial).await.unwrap();
            let started = Instant::now();
            let mut rest = Vec::new();
            let closed =
                tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
            let what = format!("{addr} after {:?}", String::from_utf8_lossy(partial));
            assert!(closed.is_ok(), "connection still open 5 s {what}");
            let took = started.elapsed();
            assert!(
                took >= Duration::from_millis(800),
                "cut too early ({took:?}) {what}"
            );
            let answer = String::from_utf8_lossy(&rest);
            assert!(
                answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
                "{what}: {answer}"
            );
        }
    }
    // Well-behaved clients are still served.
    assert_eq!(
        get(server.proxy, "/proxy/loris/hello").await.text(),
        "hello"
    );
}
