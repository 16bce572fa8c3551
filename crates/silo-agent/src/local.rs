//! The local service the agent fronts: a pooled HTTP client and the request
//! rewriting (target URL, hop-by-hop headers, `X-Forwarded-*`).

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{HeaderMap, Request, Uri};
use http_body_util::combinators::UnsyncBoxBody;
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
            .build(connector);
        Self {
            scheme: base.scheme().cloned().unwrap_or(http::uri::Scheme::HTTP),
            authority: base
                .authority()
                .cloned()
                .unwrap_or_else(|| http::uri::Authority::from_static("localhost")),
            base_path: base.path().trim_end_matches('/').to_owned(),
            base,
            client,
        }
    }

    pub fn url(&self) -> &Uri {
        &self.base
    }

    /// The request for the local service: its URL joined with the
    /// forwarded path, headers kept in order minus hop-by-hop ones, `Host`
    /// set by the client from the URL, and `X-Forwarded-*` added. Takes the
    /// head by value so headers and path move instead of being copied.
    pub fn build_request(
        &self,
        start: RequestStart,
        body: LocalBody,
    ) -> Result<Request<LocalBody>, String> {
        let path_and_query = self.join_path(start.path_and_query)?;
        let uri = Uri::from_parts({
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(self.scheme.clone());
            parts.authority = Some(self.authority.clone());
            parts.path_and_query = Some(path_and_query);
            parts
        })
        .map_err(|e| format!("invalid request path: {e}"))?;
        let method = http::Method::from_bytes(start.method.as_bytes())
            .map_err(|_| "invalid method".to_owned())?;
        // Room for the three X-Forwarded-* headers added below.
        let mut headers = silo_proto::headers::from_wire_with_room(start.headers, 3);
        silo_proto::headers::strip_hop_by_hop(&mut headers, start.upgrade);
        headers.remove(header::HOST);
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

    pub async fn send(
        &self,
        req: Request<LocalBody>,
    ) -> Result<http::Response<hyper::body::Incoming>, String> {
        self.client.request(req).await.map_err(|e| {
            format!(
                "local service {} is unreachable: {}",
                self.base,
                error_chain(&e)
            )
        })
    }
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
        assert_eq!(req.uri(), "http://127.0.0.1:3000/app/x/y?q=1");
        assert!(req.headers().get("host").is_none());
        assert_eq!(req.headers()["x-forwarded-for"], "10.0.0.1, 203.0.113.7");
        assert_eq!(req.headers()["x-forwarded-proto"], "http");
        assert_eq!(req.headers()["x-forwarded-host"], "public.example:8000");
        assert_eq!(req.headers()["cookie"], "a=1");
    }
}
