//! Sizes and timeouts both ends of the native protocol rely on.
//!
//! The windows are chosen so that one stalled exchange can pin at most one
//! stream window of the connection window: with eight times more connection
//! window than stream window, a slow reader never blocks its siblings
//! (no head-of-line blocking), while 1 MiB per stream keeps loopback and LAN
//! transfers from waiting on WINDOW_UPDATEs.

use std::time::Duration;

/// Largest body chunk put into one frame; bigger chunks are split (without
/// copying) so frames stay bounded whatever the backend hands us.
pub const MAX_CHUNK_BYTES: usize = 64 * 1024;

/// Bodies of known length up to this size travel inside the start frame
/// (capability "inline-body"): a small exchange is one message each way.
pub const MAX_INLINE_BODY_BYTES: u64 = 64 * 1024;

/// Largest gRPC message either end accepts on the native protocol.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// HTTP/2 flow-control window of one stream (one exchange).
pub const STREAM_WINDOW_BYTES: u32 = 1024 * 1024;

/// HTTP/2 flow-control window of the whole agent connection.
pub const CONNECTION_WINDOW_BYTES: u32 = 8 * 1024 * 1024;

/// Frames queued per exchange and direction between the HTTP side and the
/// gRPC stream; with [`MAX_CHUNK_BYTES`] this bounds per-exchange buffering.
pub const FRAME_QUEUE: usize = 4;

/// The agent's first message must arrive within this time.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Standby exchange streams an agent keeps open at least.
pub const MIN_STANDBY_STREAMS: u32 = 2;

/// Upper bound of concurrent exchanges (and thus streams) per agent.
pub const MAX_CONCURRENT_EXCHANGES: u32 = 512;
