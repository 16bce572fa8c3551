//! Proxied user requests: which agent a request is for, and handing it to
//! that agent's connection.
//!
//! On the public proxy listener the order is (api.md): `Host:
//! {agent}.{base_domain}`, then `/proxy/{agent}/{rest}` with the prefix
//! stripped, then `http.default_agent`, else 404. A per-agent listener sends
//! everything, verbatim, to its one agent.

use crate::agent::{ProxyBody, ProxyError, ProxyRequest};
use crate::metrics::AgentMeters;
use crate::state::ServerState;
use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

/// Where a listener sends its requests.
#[derive(Clone, Debug)]
pub enum Route {
    /// A per-agent listener.
    Agent(String),
    /// The public proxy listener.
    Public,
}

/// The agent a public request is for, and the URI to forward (the prefix
/// stripped) when it changes.
pub fn route_public(
    base_domain: &str,
    default_agent: &str,
    host: Option<&str>,
    uri: &Uri,
) -> Result<(String, Option<Uri>), ProxyError> {
    if !base_domain.is_empty()
        && let Some(host) = host
    {
        {
            let host = host.rsplit_once(':').map_or(host, |(h, port)| {
                if port.bytes().all(|b| b.is_ascii_digit()) {
                    h
                } else {
                    host
                }
            });
            let host = host.to_ascii_lowercase();
            let label = host
                .strip_suffix(&base_domain.to_ascii_lowercase())
                .and_then(|h| h.strip_suffix('.'));
            if let Some(label) = label.filter(|l| silo_core::id::is_dns_label(l)) {
                return Ok((label.to_owned(), None));
            }
        }
    }
    if let Some(rest) = uri.path().strip_prefix("/proxy/") {
        let (id, tail) = rest.split_once('/').unwrap_or((rest, ""));
        silo_core::id::validate_agent_id(id).map_err(|e| ProxyError::BadRequest(e.to_string()))?;
        let path = match uri.query() {
            Some(q) => format!("/{tail}?{q}"),
            None => format!("/{tail}"),
        };
        let pq = PathAndQuery::try_from(path)
            .map_err(|_| ProxyError::BadRequest("invalid request path".into()))?;
        return Ok((id.to_owned(), Some(Uri::from(pq))));
    }
    if !default_agent.is_empty() {
        return Ok((default_agent.to_owned(), None));
    }
    Err(ProxyError::NoRoute)
}

pub async fn handle(
    state: Arc<ServerState>,
    route: Route,
    client_addr: SocketAddr,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let (agent_id, new_uri) = match &route {
        Route::Agent(id) => (id.clone(), None),
        Route::Public => {
            let cfg = &state.config.http;
            match route_public(&cfg.base_domain, &cfg.default_agent, Some(&host), req.uri()) {
                Ok(r) => r,
                Err(e) => return Ok(e.into_response()),
            }
        }
    };
    let Some(registered) = state.registry.get(&agent_id) else {
        return Ok(ProxyError::NotConnected(agent_id).into_response());
    };
    let on_upgrade =
        silo_proto::headers::wants_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    if let Some(uri) = new_uri {
        parts.uri = uri;
    }
    let https = matches!(route, Route::Public) && !state.config.proxy.tls.cert_file.is_empty();
    let request = ProxyRequest {
        parts,
        body,
        client_addr,
        scheme: if https { "https" } else { "http" },
        host,
        on_upgrade,
    };
    let started = std::time::Instant::now();
    let meters = registered.conn.info().meters.clone();
    let resp = registered
        .conn
        .forward(request)
        .await
        .unwrap_or_else(ProxyError::into_response);
    meters.answered(resp.status().as_u16(), started.elapsed());
    Ok(resp.map(|body| {
        CountingBody {
            inner: body,
            meters,
            bytes: 0,
        }
        .boxed_unsync()
    }))
}

/// Counts the response bytes of one exchange and records them once, when
/// the body is done or dropped.
struct CountingBody {
    inner: ProxyBody,
    meters: Arc<AgentMeters>,
    bytes: u64,
}

impl http_body::Body for CountingBody {
    type Data = bytes::Bytes;
    type Error = crate::agent::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.bytes += data.len() as u64;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for CountingBody {
    fn drop(&mut self) {
        self.meters.bytes_out(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(
        base: &str,
        default: &str,
        host: &str,
        uri: &str,
    ) -> Result<(String, Option<String>), u16> {
        route_public(base, default, Some(host), &uri.parse().unwrap())
            .map(|(a, u)| (a, u.map(|u| u.to_string())))
            .map_err(|e| e.status().as_u16())
    }

    #[test]
    fn host_routing_wins_and_ignores_port_and_case() {
        assert_eq!(
            route(
                "tunnel.example.com",
                "",
                "Dev-1.Tunnel.Example.com:8000",
                "/proxy/other/x"
            ),
            Ok(("dev-1".into(), None))
        );
    }

    #[test]
    fn path_prefix_is_stripped_and_query_kept() {
        assert_eq!(
            route("", "", "h", "/proxy/agent-1/api/v1?x=1&y=2"),
            Ok(("agent-1".into(), Some("/api/v1?x=1&y=2".into())))
        );
        assert_eq!(
            route("", "", "h", "/proxy/agent-1"),
            Ok(("agent-1".into(), Some("/".into())))
        );
    }

    #[test]
    fn default_agent_then_404() {
        assert_eq!(
            route("", "fallback", "h", "/x"),
            Ok(("fallback".into(), None))
        );
        assert_eq!(route("", "", "h", "/x"), Err(404));
    }

    #[test]
    fn invalid_ids_in_the_path_are_400() {
        assert_eq!(route("", "", "h", "/proxy/..%2Fx/y"), Err(400));
        assert_eq!(route("", "", "h", "/proxy//y"), Err(400));
        let long = "a".repeat(65);
        assert_eq!(route("", "", "h", &format!("/proxy/{long}/y")), Err(400));
    }

    #[test]
    fn hosts_that_are_not_dns_labels_fall_through() {
        assert_eq!(
            route("example.com", "", "a_b.example.com", "/proxy/x/"),
            Ok(("x".into(), Some("/".into())))
        );
        assert_eq!(route("example.com", "", "a.b.example.com", "/z"), Err(404));
    }
}
