//! Metadata conventions of the legacy protocol (protocol.md, "Legacy
//! protocol"): the keys both ends read and write, and the mapping between
//! HTTP headers and `header_<Name>` entries.
//!
//! The legacy `metadata` is a `map<string, string>`, so it holds one value
//! per header: the first one, as the Go implementation sends it. Repeated
//! headers (several `Set-Cookie`) cannot cross this protocol; that is one of
//! the reasons the native protocol exists.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use std::collections::HashMap;

/// First `PING`: the id the agent claims.
pub const AGENT_ID: &str = "agent_id";
/// `REQUEST`: the HTTP method.
pub const METHOD: &str = "method";
/// `REQUEST`: the path, after any prefix stripping, without the query.
pub const PATH: &str = "path";
/// `REQUEST`: the raw query string, without `?`.
pub const QUERY: &str = "query";
/// `REQUEST`: the request's `Content-Type`.
pub const CONTENT_TYPE: &str = "content_type";
/// `RESPONSE`: the status as a decimal string.
pub const STATUS_CODE: &str = "status_code";
/// `RESPONSE`: set (with status `502`) when the agent could not reach its
/// local service; the text is the error.
pub const ERROR: &str = "error";
/// Prefix of header entries: `header_<Canonical-Name>`.
pub const HEADER_PREFIX: &str = "header_";

/// The name as Go's `textproto.CanonicalMIMEHeaderKey` writes it
/// (`x-forwarded-for` → `X-Forwarded-For`): the Go implementation puts
/// header names on the wire in this form, and its agents look them up so.
pub fn canonical_header_name(name: &str) -> String {
    let mut upper = true;
    name.chars()
        .map(|c| {
            let out = if upper {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            };
            upper = c == '-';
            out
        })
        .collect()
}

/// Adds `header_<Canonical-Name>` = first value for every header name.
/// Values that are not UTF-8 are converted lossily: protobuf strings must
/// be UTF-8.
pub fn put_headers(headers: &HeaderMap, metadata: &mut HashMap<String, String>) {
    for name in headers.keys() {
        let Some(first) = headers.get(name) else {
            continue;
        };
        metadata.insert(
            format!("{HEADER_PREFIX}{}", canonical_header_name(name.as_str())),
            String::from_utf8_lossy(first.as_bytes()).into_owned(),
        );
    }
}

/// The headers carried as `header_*` entries. Entries with a name or value
/// HTTP does not allow are skipped: they could not have come from a valid
/// HTTP message.
pub fn headers_from(metadata: &HashMap<String, String>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (key, value) in metadata {
        let Some(name) = key.strip_prefix(HEADER_PREFIX) else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_canonical_like_go() {
        assert_eq!(canonical_header_name("x-forwarded-for"), "X-Forwarded-For");
        assert_eq!(canonical_header_name("CONTENT-TYPE"), "Content-Type");
        assert_eq!(canonical_header_name("etag"), "Etag");
        assert_eq!(
            canonical_header_name("www-authenticate"),
            "Www-Authenticate"
        );
        assert_eq!(canonical_header_name("x--y"), "X--Y");
    }

    #[test]
    fn first_values_go_out_and_come_back() {
        let mut h = HeaderMap::new();
        h.append("set-cookie", HeaderValue::from_static("a=1"));
        h.append("set-cookie", HeaderValue::from_static("b=2"));
        h.append("x-one", HeaderValue::from_static("1"));
        let mut meta = HashMap::new();
        put_headers(&h, &mut meta);
        assert_eq!(meta.len(), 2);
        assert_eq!(meta["header_Set-Cookie"], "a=1");
        assert_eq!(meta["header_X-One"], "1");

        meta.insert("status_code".into(), "200".into());
        meta.insert("header_bad name".into(), "x".into());
        meta.insert("header_X-Bad-Value".into(), "a\nb".into());
        let back = headers_from(&meta);
        assert_eq!(back.len(), 2);
        assert_eq!(back["set-cookie"], "a=1");
        assert_eq!(back["x-one"], "1");
    }
}
