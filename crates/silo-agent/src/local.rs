//! The local service the agent fronts: how to reach it (a connection per
//! Exchange stream, see [`crate::backend`]; a pooled client for the legacy
//! protocol) and the request rewriting (target path, `Host`, hop-by-hop
//! headers, `X-Forwarded-*`).

use crate::backend::Connection;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{HeaderMap, Request, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::client::conn::http1;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use silo_proto::v1::RequestStart;
use std::time::Duration;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type LocalBody = UnsyncBoxBody<Bytes, BoxError>;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

pub struct LocalService {
    base: Uri,
    /// `http://host:port` of `base`, and its path without the trailing
    /// slash: every request URI is these two plus the forwarded path.
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    base_path: String,
    /// `Host` of every request: the local service's host, and its port
    /// unless it is the scheme's default (as hyper-util's client wrote it).
    host: HeaderValue,
    connector: HttpConnector,
    client: Client<HttpConnector, LocalBody>,
}

impl LocalService {
    pub fn new(base: Uri) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(10)));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector.clone());
        let authority = base
            .authority()
            .cloned()
            .unwrap_or_else(|| http::uri::Authority::from_static("localhost"));
        Self {
            scheme: base.scheme().cloned().unwrap_or(http::uri::Scheme::HTTP),
            host: host_header(&base),
            authority,
            base_path: base.path().trim_end_matches('/').to_owned(),
            base,
            connector,
            client,
        }
    }

    pub fn url(&self) -> &Uri {
        &self.base
    }

    /// The request for the local service, as written on its connection:
    /// origin-form (the forwarded path under the URL's path), headers kept
    /// in order minus hop-by-hop ones, `Host` set to the local service's
    /// authority, and `X-Forwarded-*` added. Takes the head by value so
    /// headers and path move instead of being copied.
    pub fn build_request(
        &self,
        start: RequestStart,
        body: LocalBody,
    ) -> Result<Request<LocalBody>, String> {
        let uri = Uri::from(self.join_path(start.path_and_query)?);
        let method = http::Method::from_bytes(start.method.as_bytes())
            .map_err(|_| "invalid method".to_owned())?;
        // Room for `Host` and the three X-Forwarded-* headers added below.
        let mut headers = silo_proto::headers::from_wire_with_room(start.headers, 4);
        silo_proto::headers::strip_hop_by_hop(&mut headers, start.upgrade);
        headers.insert(header::HOST, self.host.clone());
        add_forwarded(&mut headers, &start.client_addr, &start.scheme, &start.host);
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        Ok(req)
    }

    fn join_path(&self, forwarded: String) -> Result<PathAndQuery, String> {
        let joined = if self.base_path.is_empty() && forwarded.starts_with('/') {
            forwarded
        } else if forwarded.starts_with('/') {
            format!("{}{forwarded}", self.base_path)
        } else {
            format!("{}/{forwarded}", self.base_path)
        };
        PathAndQuery::from_maybe_shared(Bytes::from(joined))
            .map_err(|e| format!("invalid request path: {e}"))
    }

    /// Sends a request from [`Self::build_request`] through the pooled
    /// client (the legacy protocol, which has no stream per exchange).
    pub async fn send(
        &self,
        mut req: Request<LocalBody>,
    ) -> Result<http::Response<hyper::body::Incoming>, String> {
        // The pool wants the absolute URL to pick a connection; it writes
        // the origin form.
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        *req.uri_mut() =
            Uri::from_parts(parts).map_err(|e| format!("invalid request path: {e}"))?;
        self.client
            .request(req)
            .await
            .map_err(|e| self.unreachable(&e))
    }

    /// Opens a connection of its own to the local service (TCP_NODELAY,
    /// a 10 s connect timeout), for [`crate::backend`].
    pub async fn connect(&self) -> Result<(http1::SendRequest<LocalBody>, Connection), String> {
        let io = tower::Service::call(&mut self.connector.clone(), self.base.clone())
            .await
            .map_err(|e| self.unreachable(&e))?;
        let (sender, conn) = http1::handshake(io)
            .await
            .map_err(|e| self.unreachable(&e))?;
        Ok((sender, Box::pin(conn.with_upgrades())))
    }

    /// The error line for a request the local service did not answer.
    pub fn unreachable(&self, e: &(dyn std::error::Error + 'static)) -> String {
        format!(
            "local service {} is unreachable: {}",
            self.base,
            error_chain(e)
        )
    }
}

fn host_header(base: &Uri) -> HeaderValue {
    let host = base.host().unwrap_or("localhost");
    let default_port = if base.scheme() == Some(&http::uri::Scheme::HTTPS) {
        443
    } else {
        80
    };
    let value = match base.port_u16() {
        Some(port) if port != default_port => format!("{host}:{port}"),
        _ => host.to_owned(),
    };
    HeaderValue::from_str(&value).expect("a URI host and port are a valid header value")
}

fn add_forwarded(headers: &mut HeaderMap, client_addr: &str, scheme: &str, host: &str) {
    if !client_addr.is_empty() {
        let prior: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let chain = if prior.is_empty() {
            client_addr.to_owned()
        } else {
            format!("{}, {client_addr}", prior.join(", "))
        };
        if let Ok(v) = HeaderValue::from_str(&chain) {
            headers.insert(X_FORWARDED_FOR, v);
        }
    }
    for (name, value) in [(X_FORWARDED_PROTO, scheme), (X_FORWARDED_HOST, host)] {
        if let Ok(v) = HeaderValue::from_str(value)
            && !value.is_empty()
        {
            headers.insert(name, v);
        }
    }
}

/// "client error (Connect): tcp connect error: Connection refused" rather
/// than the bare outermost message.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};
    use silo_proto::v1::Header;

    fn start(path: &str, headers: &[(&str, &str)]) -> RequestStart {
        RequestStart {
            method: "GET".into(),
            path_and_query: path.into(),
            headers: headers
                .iter()
                .map(|(n, v)| Header {
                    name: (*n).into(),
                    value: Bytes::copy_from_slice(v.as_bytes()),
                })
                .collect(),
            client_addr: "203.0.113.7".into(),
            scheme: "http".into(),
            host: "public.example:8000".into(),
            ..Default::default()
        }
    }

    fn empty() -> LocalBody {
        Empty::new().map_err(|never| match never {}).boxed_unsync()
    }

    #[test]
    fn host_carries_the_port_only_when_it_is_not_the_default() {
        for (url, host) in [
            ("http://127.0.0.1:3000/app", "127.0.0.1:3000"),
            ("http://localhost:80", "localhost"),
            ("http://localhost", "localhost"),
            ("https://svc.internal:443/", "svc.internal"),
            ("http://user:pw@[::1]:8080/", "[::1]:8080"),
        ] {
            let req = LocalService::new(url.parse().unwrap())
                .build_request(start("/", &[]), empty())
                .unwrap();
            assert_eq!(req.headers()["host"], host, "{url}");
        }
    }

    #[test]
    fn joins_base_path_and_sets_forwarded_headers() {
        let local = LocalService::new("http://127.0.0.1:3000/app/".parse().unwrap());
        let req = local
            .build_request(
                start(
                    "/x/y?q=1",
                    &[
                        ("host", "public.example"),
                        ("x-forwarded-for", "10.0.0.1"),
                        ("cookie", "a=1"),
                    ],
                ),
                empty(),
            )
            .unwrap();
        assert_eq!(req.uri(), "/app/x/y?q=1");
        assert_eq!(req.headers()["host"], "127.0.0.1:3000");
        assert_eq!(req.headers().get_all("host").iter().count(), 1);
        assert_eq!(req.headers()["x-forwarded-for"], "10.0.0.1, 203.0.113.7");
        assert_eq!(req.headers()["x-forwarded-proto"], "http");
        assert_eq!(req.headers()["x-forwarded-host"], "public.example:8000");
        assert_eq!(req.headers()["cookie"], "a=1");
    }
}
