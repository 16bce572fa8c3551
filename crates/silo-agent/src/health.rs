//! The agent's own `GET /health` (compat), on loopback by default.

use crate::session::AgentStatus;
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub async fn serve(
    listener: TcpListener,
    status: Arc<AgentStatus>,
    agent_id: String,
    stop: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            a = listener.accept() => match a {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
            _ = stop.cancelled() => return,
        };
        let (status, agent_id) = (status.clone(), agent_id.clone());
        let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let body = if req.uri().path() == "/health" {
                let connected = status.connected.load(Ordering::Relaxed);
                (
                    StatusCode::OK,
                    serde_json::json!({
                        "status": "ok",
                        "agent_id": agent_id,
                        "connected": connected,
                        "port": status.assigned_port.load(Ordering::Relaxed),
                    }),
                )
            } else {
                (
                    StatusCode::NOT_FOUND,
                    serde_json::json!({ "error": "not found" }),
                )
            };
            let mut resp = Response::new(Full::new(Bytes::from(body.1.to_string())));
            *resp.status_mut() = body.0;
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            async move { Ok::<_, Infallible>(resp) }
        });
        tokio::spawn(async move {
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
