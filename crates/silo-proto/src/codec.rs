//! The protobuf codec of both protocols, with small per-stream buffers.
//!
//! tonic allocates an encode and a decode buffer for every call up front
//! (8 KiB each by default). An idle agent holds a control stream and a few
//! standby Exchange streams, so with 10,000 agents those buffers alone
//! would cost more than the rest of the connection. Buffers still grow to
//! what a message needs (a 64 KiB body chunk) and are handed on without a
//! copy.

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial size of a call's encode and decode buffer.
const BUFFER_BYTES: usize = 1024;
/// Encoded messages ready together are sent as one HTTP/2 DATA frame up to
/// this size (tonic's default).
const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD_BYTES)
}

/// `ProstCodec` with [`BUFFER_BYTES`] buffers; named in `build.rs`.
#[derive(Debug, Clone)]
pub struct SmallBufferCodec<T, U>(std::marker::PhantomData<(T, U)>);

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<T, U> Codec for SmallBufferCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
