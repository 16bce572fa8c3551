//! [`ApiClient`]: JSON requests to a silo-proxy server with a timeout.

use crate::{ClientError, Trust};
use reqwest::{Method, Url};
use serde_json::Value;
use std::error::Error as _;
use std::time::Duration;

/// Default timeout of one request, connection included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A client of one server's API.
#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: Url,
    api_key: Option<String>,
    timeout: Duration,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.base.as_str())
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A decoded answer: the status and the JSON body (`Null` when empty or
/// not JSON).
#[derive(Debug, Clone)]
pub struct ApiResponse {
    pub status: u16,
    pub body: Value,
}

impl ApiResponse {
    /// The `error` field of an error body, or a generic text.
    pub fn error_message(&self) -> String {
        self.body
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("HTTP {}", self.status))
    }

    /// `Ok(body)` on 2xx, else [`ClientError::Api`] with the server's message.
    pub fn into_success(self) -> Result<Value, ClientError> {
        if (200..300).contains(&self.status) {
            Ok(self.body)
        } else {
            Err(ClientError::Api {
                status: self.status,
                message: self.error_message(),
            })
        }
    }
}

impl ApiClient {
    /// A client of the server at `base_url` (`https://host:port`, or
    /// `http://` for a server without TLS), verifying it per `trust`, with
    /// `timeout` per request.
    pub fn new(base_url: &str, trust: &Trust, timeout: Duration) -> Result<Self, ClientError> {
        let base = parse_base_url(base_url)?;
        crate::install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("silo-proxy/", env!("CARGO_PKG_VERSION")));
        if let Some(config) = trust.rustls_config()? {
            builder = builder.tls_backend_preconfigured(config);
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Usage(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            http,
            base,
            api_key: None,
            timeout,
        })
    }

    /// Sends `X-API-Key` with every request.
    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// Sends one request with an optional JSON body and decodes the answer,
    /// whatever its status.
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> Result<ApiResponse, ClientError> {
        let relative = path_and_query.trim_start_matches('/');
        let url = self.base.join(relative).map_err(|_| ClientError::Url {
            url: path_and_query.to_owned(),
            reason: "not a path",
        })?;
        let mut req = self.http.request(method, url.clone());
        if let Some(key) = &self.api_key {
            req = req.header("x-api-key", key);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|e| self.transport_error(&e))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| self.transport_error(&e))?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(ApiResponse { status, body })
    }

    /// [`send`](Self::send), then [`ApiResponse::into_success`].
    pub async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        self.send(method, path_and_query, body)
            .await?
            .into_success()
    }

    /// One line that says what went wrong, from the innermost cause.
    fn transport_error(&self, err: &reqwest::Error) -> ClientError {
        let url = origin(&self.base);
        if err.is_timeout() {
            return ClientError::Timeout {
                url,
                seconds: self.timeout.as_secs().max(1),
            };
        }
        let mut tls = None;
        let mut innermost = err.to_string();
        let mut source = err.source();
        while let Some(e) = source {
            if let Some(t) = find_rustls(e) {
                tls = Some(tls_reason(t));
            }
            innermost = e.to_string();
            source = e.source();
        }
        match tls {
            Some(reason) => ClientError::Tls { url, reason },
            None => ClientError::Transport {
                url,
                reason: innermost,
            },
        }
    }
}

/// The rustls error in `e`, looking through (nested) `io::Error`s, whose
/// `source()` skips the error they wrap.
fn find_rustls<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(t) = e.downcast_ref::<rustls::Error>() {
        return Some(t);
    }
    let inner = e.downcast_ref::<std::io::Error>()?.get_ref()?;
    find_rustls(inner)
}

/// A readable reason for a refused server certificate.
fn tls_reason(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::Other(other)) => other.0.to_string(),
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            "the server's certificate does not chain to a trusted CA".into()
        }
        rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        ) => "the server's certificate is not valid for the host name of the URL".into(),
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "the server's certificate has expired".into()
        }
        other => other.to_string(),
    }
}

/// `scheme://host:port` of a URL, for messages.
fn origin(url: &Url) -> String {
    url.origin().ascii_serialization()
}

/// An `http(s)` URL with a host; a trailing path is kept as the base.
fn parse_base_url(s: &str) -> Result<Url, ClientError> {
    let bad = |reason| ClientError::Url {
        url: s.to_owned(),
        reason,
    };
    let mut url = Url::parse(s.trim()).map_err(|_| bad("expected https://host:port"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("the scheme must be https:// (or http://)"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("no query or fragment expected"));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        assert_eq!(
            parse_base_url("https://h:8080").unwrap().as_str(),
            "https://h:8080/"
        );
        assert_eq!(
            parse_base_url("https://h/sub")
                .unwrap()
                .join("api/v1/x")
                .unwrap()
                .as_str(),
            "https://h/sub/api/v1/x"
        );
        for bad in ["h:8080", "ftp://h", "https://", "https://h/?q=1"] {
            assert!(parse_base_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn error_bodies_become_messages() {
        let r = ApiResponse {
            status: 401,
            body: serde_json::json!({"error": "provision key expired"}),
        };
        let e = r.into_success().unwrap_err().to_string();
        assert_eq!(e, "server answered 401: provision key expired");
        let r = ApiResponse {
            status: 502,
            body: Value::Null,
        };
        assert!(
            r.into_success()
                .unwrap_err()
                .to_string()
                .contains("HTTP 502")
        );
    }
}
