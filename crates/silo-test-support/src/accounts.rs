//! Helpers for the accounts and admin API: JSON requests with headers,
//! logins, the generated root password and admin key, token claims.

use crate::client::{Reply, send};
use crate::harness::TestServer;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use std::net::SocketAddr;
use std::path::Path;

/// Any request: `method` `path` with `headers` and a raw `body`.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let mut b = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(addr, b.body(Full::new(body.into())).unwrap()).await
}

/// A request with a JSON body (and `Content-Type: application/json`).
pub async fn json_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &serde_json::Value,
) -> Reply {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    request(addr, method, path, &all, body.to_string()).await
}

/// `Bearer <token>`, for an `authorization` header.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Reads a secret the server generated in `data_dir`.
pub fn read_secret(data_dir: &Path, file: &str) -> String {
    std::fs::read_to_string(data_dir.join(file)).unwrap_or_else(|e| panic!("reading {file}: {e}"))
}

/// The claims of a JWT, decoded without checking the signature.
pub fn jwt_claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).expect("a JWT has three parts");
    let bytes = base64url_decode(payload).expect("JWT payload is base64url");
    serde_json::from_slice(&bytes).expect("JWT payload is JSON")
}

fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

impl TestServer {
    /// Waits until the server answers `GET /ready` with 200: its store is
    /// open and the first-start files exist. (Requests sent earlier wait
    /// in the listen backlog, so this needs no polling.)
    pub async fn wait_ready(&self) {
        let r = crate::client::get(self.api, "/ready").await;
        assert_eq!(r.status, 200, "/ready: {}", r.text());
    }

    /// The password of `root` from `<data_dir>/initial-root-password`.
    pub fn root_password(&self) -> String {
        read_secret(&self.config.data_dir, "initial-root-password")
    }

    /// `POST /auth/login`; the reply as it came.
    pub async fn try_login(&self, username: &str, password: &str) -> Reply {
        let body = serde_json::json!({ "username": username, "password": password });
        json_request(self.api, "POST", "/auth/login", &[], &body).await
    }

    /// Logs in and returns the token (panics unless 200).
    pub async fn login(&self, username: &str, password: &str) -> String {
        let r = self.try_login(username, password).await;
        assert_eq!(r.status, 200, "login as {username}: {}", r.text());
        r.json()["token"]
            .as_str()
            .expect("token in the login reply")
            .to_owned()
    }

    /// A token of `root`, logged in with the generated password (once the
    /// server is ready and the password file exists).
    pub async fn root_token(&self) -> String {
        self.wait_ready().await;
        self.login("root", &self.root_password()).await
    }

    /// Creates an account through `POST /users` with the admin key
    /// and returns its id.
    pub async fn create_user(&self, username: &str, password: &str, role: &str) -> i64 {
        let body = serde_json::json!({ "username": username, "password": password, "role": role });
        let key = [("x-api-key", crate::harness::ADMIN_KEY)];
        let r = json_request(self.api, "POST", "/users", &key, &body).await;
        assert_eq!(r.status, 201, "create {username}: {}", r.text());
        r.json()["id"].as_i64().expect("id of the new user")
    }

    /// A request on the API listener with a bearer token.
    pub async fn with_token(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&serde_json::Value>,
    ) -> Reply {
        let auth = bearer(token);
        let headers = [("authorization", auth.as_str())];
        match body {
            Some(b) => json_request(self.api, method, path, &headers, b).await,
            None => request(self.api, method, path, &headers, Bytes::new()).await,
        }
    }
}
