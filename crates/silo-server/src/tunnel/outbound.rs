//! The queue behind each server-to-agent stream.
//!
//! tokio's mpsc allocates its slots in blocks of 32, so a channel of
//! `Result<ServerFrame, Status>` (≈ 200 bytes, `Status` is large) costs
//! ≈ 6 KiB per stream even when only 4 frames may queue. Every idle agent
//! holds a control stream and its standby streams, so at 10,000 agents
//! that block was the largest allocation after HTTP/2's own buffers.
//! Queueing boxed messages keeps the block at 32 pointers; the one small
//! allocation per frame is cheap next to encoding and sending it.

use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::Status;

pub(crate) type Outbound<T> = mpsc::Sender<Box<T>>;

/// The response stream tonic encodes from; it never yields an error (the
/// handlers end a stream by closing it, and refuse before it starts).
pub struct OutboundStream<T>(mpsc::Receiver<Box<T>>);

pub(crate) fn channel<T>(capacity: usize) -> (Outbound<T>, OutboundStream<T>) {
    let (tx, rx) = mpsc::channel(capacity);
    (tx, OutboundStream(rx))
}

impl<T> Stream for OutboundStream<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|m| m.map(|boxed| Ok(*boxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn yields_what_was_sent_in_order_then_ends() {
        let (tx, mut rx) = channel::<u32>(4);
        tx.send(Box::new(1)).await.unwrap();
        tx.send(Box::new(2)).await.unwrap();
        drop(tx);
        assert_eq!(rx.next().await.unwrap().unwrap(), 1);
        assert_eq!(rx.next().await.unwrap().unwrap(), 2);
        assert!(rx.next().await.is_none());
    }
}
