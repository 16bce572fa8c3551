//! Header conversion between `http` types and the wire.
//!
//! Every value is kept, in order, duplicates included (several `Set-Cookie`
//! must survive); only hop-by-hop headers are dropped, as RFC 9110 §7.6.1
//! asks of a proxy.

use crate::v1::Header;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection, never the message (RFC 9110
/// §7.6.1 plus the de-facto `Proxy-Connection` and `Keep-Alive`).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers, including those the `Connection` header
/// names. `Upgrade` is removed too unless `keep_upgrade` (an upgrade request
/// or a 101 response), in which case `Connection: upgrade` is restored.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none of them: one scan over the names present is
    // far cheaper than hashing nine names for removals that find nothing
    // (callgrind: ~3,000 instructions per exchange on each side).
    let any = headers
        .keys()
        .any(|name| name == header::UPGRADE || HOP_BY_HOP.contains(name));
    if !any {
        if keep_upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        if keep_upgrade && name == header::UPGRADE {
            continue;
        }
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Whether a request or response asks for a protocol upgrade.
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Flattens a header map into wire headers, keeping every value in order.
pub fn to_wire(headers: &HeaderMap) -> Vec<Header> {
    headers
        .iter()
        .map(|(name, value)| Header {
            name: name.as_str().to_owned(),
            value: bytes::Bytes::copy_from_slice(value.as_bytes()),
        })
        .collect()
}

/// Rebuilds a header map from wire headers. Entries with an invalid name or
/// value are skipped rather than failing the whole exchange: they could not
/// have come from a valid HTTP message.
pub fn from_wire(wire: Vec<Header>) -> HeaderMap {
    from_wire_with_room(wire, 0)
}

/// [`from_wire`] with room for `extra` more headers, so adding them does
/// not grow (rehash) the map.
pub fn from_wire_with_room(wire: Vec<Header>, extra: usize) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(wire.len() + extra);
    for h in wire {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_maybe_shared(h.value),
        ) else {
            continue;
        };
        map.append(name, value);
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn repeated_values_survive_the_round_trip_in_order() {
        let m = map(&[
            ("set-cookie", "a=1"),
            ("content-type", "text/plain"),
            ("set-cookie", "b=2"),
            ("set-cookie", "c=3"),
        ]);
        let back = from_wire(to_wire(&m));
        let cookies: Vec<_> = back.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2", "c=3"]);
        assert_eq!(back["content-type"], "text/plain");
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_dropped() {
        let mut m = map(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut m, false);
        let names: Vec<_> = m.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn each_hop_by_hop_header_alone_is_dropped_and_others_kept() {
        // Each alone: the scan that skips clean messages must see every one.
        for hop in [
            "connection",
            "proxy-connection",
            "keep-alive",
            "proxy-authenticate",
            "proxy-authorization",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
        ] {
            let mut m = map(&[("x-a", "1"), (hop, "v"), ("x-b", "2")]);
            strip_hop_by_hop(&mut m, false);
            let names: Vec<_> = m.keys().map(|k| k.as_str()).collect();
            assert_eq!(names, ["x-a", "x-b"], "{hop}");
        }
        let mut clean = map(&[
            ("content-length", "3"),
            ("set-cookie", "a"),
            ("set-cookie", "b"),
        ]);
        let before = clean.clone();
        strip_hop_by_hop(&mut clean, false);
        assert_eq!(clean, before);
        strip_hop_by_hop(&mut clean, true);
        assert_eq!(clean["connection"], "upgrade");
    }

    #[test]
    fn room_for_extra_headers_changes_nothing_else() {
        let wire = to_wire(&map(&[("a", "1"), ("a", "2"), ("b", "3")]));
        let m = from_wire_with_room(wire.clone(), 3);
        assert_eq!(m, from_wire(wire));
        assert!(m.capacity() >= 5);
    }

    #[test]
    fn upgrade_is_kept_for_upgrade_exchanges() {
        let mut m = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(wants_upgrade(&m));
        strip_hop_by_hop(&mut m, true);
        assert_eq!(m["upgrade"], "websocket");
        assert_eq!(m["connection"], "upgrade");
    }

    #[test]
    fn invalid_wire_headers_are_skipped() {
        let wire = vec![
            Header {
                name: "bad name".into(),
                value: "x".into(),
            },
            Header {
                name: "good".into(),
                value: bytes::Bytes::from_static(b"ok"),
            },
            Header {
                name: "bad-value".into(),
                value: bytes::Bytes::from_static(b"a\nb"),
            },
        ];
        let m = from_wire(wire);
        assert_eq!(m.len(), 1);
        assert_eq!(m["good"], "ok");
    }
}
