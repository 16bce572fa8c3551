//! One HTTP exchange with a legacy agent: the whole request body buffered
//! into a `REQUEST`, the matching `RESPONSE` turned back into HTTP.
//!
//! The metadata is exactly the Go implementation's (protocol.md): `method`,
//! `path` (prefix already stripped), `query` (raw, no `?`), `content_type`
//! and `header_<Canonical-Name>` = first value; answers carry
//! `status_code` and `header_<Name>`, or `error` when the agent could not
//! reach its local service.

use super::session::LegacySession;
use crate::agent::{ProxyBody, ProxyError, ProxyRequest, full};
use crate::inflight::InFlightGuard;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use silo_proto::headers::strip_hop_by_hop;
use silo_proto::legacy::{MessageType, ProxyMessage};
use silo_proto::legacy_meta as meta;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{Instant, timeout, timeout_at};
use tracing::debug;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes the request from the session's waiting list however the
/// exchange ends (answered, timed out, or the user went away).
struct Waiting<'a> {
    session: &'a LegacySession,
    id: String,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.session.forget(&self.id);
    }
}

pub(crate) async fn forward(
    session: Arc<LegacySession>,
    req: ProxyRequest,
) -> Result<Response<ProxyBody>, ProxyError> {
    let agent = session.info.agent_id.clone();
    let settings = session.settings.clone();
    let _in_flight =
        InFlightGuard::new(session.in_flight.clone(), session.server_in_flight.clone());
    let unavailable = |reason: &str| ProxyError::AgentUnavailable {
        agent: agent.clone(),
        reason: reason.to_owned(),
    };
    let ProxyRequest {
        mut parts,
        body,
        client_addr,
        scheme,
        host,
        // The legacy protocol has no upgrades; the request goes as a plain
        // one with `Upgrade` stripped below, and a `101` answer is refused.
        on_upgrade: _,
    } = req;
    let payload = read_body(body, settings.max_request_body_bytes, settings.idle_timeout).await?;
    // Response bytes are counted by the proxy handler for every protocol;
    // request bytes by each protocol's exchange.
    session.info.meters.bytes_in(payload.len() as u64);
    strip_hop_by_hop(&mut parts.headers, false);
    let message = request_message(&parts, payload, client_addr, scheme, &host);
    let id = message.id.clone();
    debug!(%id, method = %parts.method, path = %parts.uri.path(), "forwarding to legacy agent");

    let answer = session
        .expect(&id)
        .ok_or_else(|| unavailable("its session closed"))?;
    let _waiting = Waiting {
        session: &session,
        id,
    };
    let deadline = Instant::now() + settings.request_timeout;
    let sent = tokio::select! {
        r = timeout_at(deadline, session.outbound.send(Ok(message))) => r,
        _ = session.liveness.cancel.cancelled() => return Err(unavailable("its session closed")),
    };
    match sent {
        Err(_) => return Err(ProxyError::Timeout(agent)),
        Ok(Err(_)) => return Err(unavailable("its session closed")),
        Ok(Ok(())) => {}
    }
    let reply = match timeout_at(deadline, answer).await {
        Err(_) => return Err(ProxyError::Timeout(agent)),
        Ok(Err(_)) => return Err(unavailable("it disconnected before answering")),
        Ok(Ok(reply)) => reply,
    };
    response_from_message(reply, &parts.method, settings.max_response_body_bytes)
}

/// The whole request body, refused with 413 beyond `max` bytes (at once
/// when `Content-Length` announces it).
async fn read_body<B>(mut body: B, max: u64, idle: Duration) -> Result<Bytes, ProxyError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    if body.size_hint().lower() > max {
        return Err(ProxyError::BodyTooLarge(max));
    }
    let mut buf = BytesMut::new();
    loop {
        match timeout(idle, body.frame()).await {
            Err(_) => {
                return Err(ProxyError::BadRequest(
                    "request body idle for proxy.idle_timeout_seconds".into(),
                ));
            }
            Ok(None) => return Ok(buf.freeze()),
            Ok(Some(Err(e))) => {
                return Err(ProxyError::BadRequest(format!(
                    "reading the request body failed: {e}"
                )));
            }
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if (buf.len() + data.len()) as u64 > max {
                        return Err(ProxyError::BodyTooLarge(max));
                    }
                    buf.extend_from_slice(&data);
                }
            }
        }
    }
}

/// The `REQUEST` for an HTTP request whose hop-by-hop headers are gone.
pub(crate) fn request_message(
    parts: &http::request::Parts,
    payload: Bytes,
    client_addr: SocketAddr,
    scheme: &str,
    host: &str,
) -> ProxyMessage {
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let mut metadata = HashMap::from([
        (meta::METHOD.to_owned(), parts.method.as_str().to_owned()),
        (meta::PATH.to_owned(), parts.uri.path().to_owned()),
        (
            meta::QUERY.to_owned(),
            parts.uri.query().unwrap_or_default().to_owned(),
        ),
        (meta::CONTENT_TYPE.to_owned(), content_type),
    ]);
    let mut headers = parts.headers.clone();
    // Go's server never sent `Host` (net/http keeps it out of the header
    // map) and the agent's HTTP client sets its own; the public host goes
    // as X-Forwarded-Host instead.
    headers.remove(header::HOST);
    add_forwarded(&mut headers, client_addr, scheme, host);
    meta::put_headers(&headers, &mut metadata);
    ProxyMessage {
        id: uuid::Uuid::new_v4().to_string(),
        r#type: MessageType::Request as i32,
        payload,
        metadata,
    }
}

/// The `X-Forwarded-*` the native agent adds for its local service. A
/// legacy agent forwards headers as they come, so the server adds them;
/// earlier `X-Forwarded-For` values are folded into the one value the
/// protocol can carry.
fn add_forwarded(headers: &mut HeaderMap, client: SocketAddr, scheme: &str, host: &str) {
    let prior: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let client = crate::client_addr::ip_text(client.ip());
    let chain = if prior.is_empty() {
        client
    } else {
        format!("{}, {client}", prior.join(", "))
    };
    if let Ok(v) = HeaderValue::from_str(&chain) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    for (name, value) in [(X_FORWARDED_PROTO, scheme), (X_FORWARDED_HOST, host)] {
        if let Ok(v) = HeaderValue::from_str(value)
            && !value.is_empty()
        {
            headers.insert(name, v);
        }
    }
}

/// The HTTP response for an agent's `RESPONSE`, or the error the user gets
/// instead.
pub(crate) fn response_from_message(
    reply: ProxyMessage,
    method: &Method,
    max_body: u64,
) -> Result<Response<ProxyBody>, ProxyError> {
    let ProxyMessage {
        payload, metadata, ..
    } = reply;
    if let Some(error) = metadata.get(meta::ERROR).filter(|e| !e.is_empty()) {
        return Err(ProxyError::Upstream(error.clone()));
    }
    if payload.len() as u64 > max_body {
        return Err(ProxyError::Upstream(format!(
            "the agent's response body is larger than grpc.legacy.max_response_body_bytes ({max_body} bytes)"
        )));
    }
    // Go's server answered 200 when the agent sent no status.
    let status = match metadata.get(meta::STATUS_CODE) {
        None => StatusCode::OK,
        Some(s) => s
            .trim()
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .ok_or_else(|| {
                ProxyError::Upstream(format!("the agent sent an invalid status_code {s:?}"))
            })?,
    };
    if status.is_informational() {
        return Err(ProxyError::Upstream(format!(
            "the agent answered {status}, which legacy agents cannot carry"
        )));
    }
    let mut headers = meta::headers_from(&metadata);
    strip_hop_by_hop(&mut headers, false);
    // The body is whole here, so its length is known; a stale or wrong
    // Content-Length would make the response invalid. HEAD answers keep
    // theirs: it describes the body a GET would get.
    let length_matches = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        == Some(payload.len());
    if !length_matches && method != Method::HEAD {
        headers.remove(header::CONTENT_LENGTH);
    }
    let mut resp = Response::new(full(payload));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::post(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn reply(meta: &[(&str, &str)], body: &'static [u8]) -> ProxyMessage {
        ProxyMessage {
            id: "x".into(),
            r#type: MessageType::Response as i32,
            payload: Bytes::from_static(body),
            metadata: meta
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn request_metadata_is_the_go_servers() {
        let p = parts(
            "/api/items?x=1&y=%20",
            &[
                ("content-type", "application/json"),
                ("x-multi", "first"),
                ("x-multi", "second"),
                ("host", "public.example"),
                ("x-forwarded-for", "10.0.0.1"),
            ],
        );
        let addr: SocketAddr = "203.0.113.9:5555".parse().unwrap();
        let m = request_message(
            &p,
            Bytes::from_static(b"{}"),
            addr,
            "http",
            "public.example",
        );
        assert_eq!(m.r#type, MessageType::Request as i32);
        assert!(uuid::Uuid::parse_str(&m.id).is_ok());
        assert_eq!(m.payload, "{}");
        let md = &m.metadata;
        assert_eq!(md["method"], "POST");
        assert_eq!(md["path"], "/api/items");
        assert_eq!(md["query"], "x=1&y=%20");
        assert_eq!(md["content_type"], "application/json");
        assert_eq!(md["header_Content-Type"], "application/json");
        assert_eq!(md["header_X-Multi"], "first");
        assert_eq!(md["header_X-Forwarded-For"], "10.0.0.1, 203.0.113.9");
        assert_eq!(md["header_X-Forwarded-Proto"], "http");
        assert_eq!(md["header_X-Forwarded-Host"], "public.example");
        assert!(!md.contains_key("header_Host"));
    }

    #[test]
    fn no_query_and_no_content_type_are_empty_strings() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let m = request_message(&parts("/", &[]), Bytes::new(), addr, "http", "");
        assert_eq!(m.metadata["query"], "");
        assert_eq!(m.metadata["content_type"], "");
        assert_eq!(m.metadata["path"], "/");
    }

    #[test]
    fn responses_map_status_headers_and_body() {
        let r = reply(
            &[
                ("status_code", "201"),
                ("header_X-Reply", "yes"),
                ("header_Connection", "close"),
                ("header_Content-Length", "999"),
            ],
            b"made",
        );
        let resp = response_from_message(r, &Method::GET, 1024).unwrap();
        assert_eq!(resp.status(), 201);
        assert_eq!(resp.headers()["x-reply"], "yes");
        assert!(resp.headers().get("connection").is_none(), "hop-by-hop");
        assert!(
            resp.headers().get("content-length").is_none(),
            "wrong length"
        );
        let head = reply(&[("header_Content-Length", "999")], b"");
        let resp = response_from_message(head, &Method::HEAD, 1024).unwrap();
        assert_eq!(resp.status(), 200, "no status_code means 200");
        assert_eq!(resp.headers()["content-length"], "999");
    }

    #[test]
    fn error_form_oversize_and_bad_status_are_502() {
        let cases = [
            reply(
                &[("status_code", "502"), ("error", "dial refused")],
                b"dial refused",
            ),
            reply(&[("status_code", "200")], b"too long"),
            reply(&[("status_code", "abc")], b""),
            reply(&[("status_code", "101")], b""),
        ];
        let messages: Vec<String> = cases
            .into_iter()
            .map(|r| {
                let e = response_from_message(r, &Method::GET, 4).unwrap_err();
                assert_eq!(e.status(), 502);
                e.to_string()
            })
            .collect();
        assert_eq!(messages[0], "dial refused");
        assert!(
            messages[1].contains("max_response_body_bytes"),
            "{}",
            messages[1]
        );
    }

    #[tokio::test]
    async fn bodies_over_the_cap_are_413() {
        let idle = Duration::from_secs(1);
        let ok = read_body(Full::new(Bytes::from_static(b"1234")), 4, idle).await;
        assert_eq!(ok.unwrap(), "1234");
        let over = read_body(Full::new(Bytes::from_static(b"12345")), 4, idle).await;
        assert_eq!(over.unwrap_err().status(), 413);
    }
}
