//! Wire protocols spoken between silo-proxy agents and the server.
//!
//! The native protocol (`silo.tunnel.v1`) is ours to evolve; the legacy one
//! (`proxy`) is frozen to what agents of the original Go implementation
//! speak. Everything both ends must agree on besides the messages lives here
//! too: metadata keys, limits, flow-control windows and header handling.
//!
//! # Layout
//! - [`v1`]: generated native messages, client and server.
//! - [`legacy`]: generated legacy messages, client and server.
//! - [`legacy_meta`]: legacy metadata keys and `header_<Name>` mapping.
//! - [`headers`]: HTTP header <-> wire conversion and hop-by-hop filtering.
//! - [`limits`]: frame sizes, windows and timeouts shared by both ends.
//! - [`codec`]: the protobuf codec with small per-call buffers.

pub mod codec;
pub mod headers;
pub mod legacy_meta;
pub mod limits;

/// Native protocol, version 1.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("silo.tunnel.v1");
}

/// Legacy protocol of the Go implementation (package `proxy`).
pub mod legacy {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("proxy");

    /// Full gRPC path of the legacy stream, fixed by deployed agents.
    pub const STREAM_PATH: &str = "/proxy.ProxyService/Stream";
}

/// Revision of the native protocol this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Request metadata key carrying the session id on `Exchange` streams.
pub const SESSION_ID_METADATA: &str = "silo-session-id";

/// Capability flags exchanged in the hello.
pub mod capabilities {
    /// The agent relays HTTP Upgrade (WebSocket) exchanges.
    pub const UPGRADE: &str = "upgrade";
    /// The agent can renew its certificate over the tunnel.
    pub const RENEW: &str = "renew";
    /// An Exchange stream whose exchange ended cleanly carries the next one
    /// (see `tunnel.proto`).
    pub const STREAM_REUSE: &str = "stream-reuse";
    /// Small bodies of known length travel inside the start frames.
    pub const INLINE_BODY: &str = "inline-body";

    /// True when `list` (the peer's capabilities) contains `capability`.
    pub fn has(list: &[String], capability: &str) -> bool {
        list.iter().any(|c| c == capability)
    }
}
