//! Protocol frames read from a QUIC stream (feature `quic`): what the
//! agent's and the aggregator's session drivers both run on their receive
//! stream.

use crate::codec::DecodeError;
use crate::wire::{self, FRAME_HEADER_BYTES, MAX_FRAME_BYTES};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

/// Reads frames from `recv` and passes each decoded message to `tx`, until
/// the stream ends, the receiver goes away, or a frame is bad: a header
/// over [`MAX_FRAME_BYTES`] or of another version, or a body that does not
/// decode, is passed on as its error (checked before the body is read) and
/// ends the reading.
pub async fn read_frames<M: DeserializeOwned>(
    mut recv: quinn::RecvStream,
    tx: mpsc::Sender<Result<M, DecodeError>>,
) {
    loop {
        let mut header = [0u8; FRAME_HEADER_BYTES];
        if recv.read_exact(&mut header).await.is_err() {
            return;
        }
        let len = match wire::parse_header(header, MAX_FRAME_BYTES) {
            Ok(n) => n,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        let mut body = vec![0u8; len];
        if recv.read_exact(&mut body).await.is_err() {
            return;
        }
        let msg = wire::decode_body::<M>(&body);
        let failed = msg.is_err();
        if tx.send(msg).await.is_err() || failed {
            return;
        }
    }
}
