//! Frames on the sync stream: a 4-byte big-endian length, a 2-byte wire
//! version, then the postcard body of one message.
//!
//! The length is checked against a hard maximum before anything is
//! allocated; the version is checked before the body is read. These types
//! are the protocol's boundary: they are kept apart from the domain types
//! and change only with [`WIRE_VERSION`](crate::codec::WIRE_VERSION).

use crate::chain::{ChainHead, Checkpoint};
use crate::codec::{DecodeError, WIRE_VERSION};
use crate::event::DesiredStateLearned;
use crate::time::Timestamp;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Largest frame accepted (length prefix value), 8 MiB.
pub const MAX_FRAME_BYTES: usize = 8 << 20;
/// Bytes before a frame's body: length (4) and version (2).
pub const FRAME_HEADER_BYTES: usize = 6;

/// What the aggregator wants the node to be; sent in [`AggregatorMessage::Resume`].
pub type DesiredState = DesiredStateLearned;

/// Agent to aggregator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AgentMessage {
    /// First message: who the agent says it is and how far its journal goes.
    Hello {
        node_id: String,
        agent_version: String,
        head: ChainHead,
    },
    /// Consecutive events (canonical bytes) closed by a checkpoint signed by
    /// the node over the last of them.
    Batch {
        events: Vec<Vec<u8>>,
        checkpoint: Checkpoint,
    },
    /// Liveness, the agent's head (so the aggregator knows the backlog while
    /// idle) and the round-trip time it last measured.
    Heartbeat {
        ping: u64,
        head: ChainHead,
        rtt_ms: Option<u32>,
        sent_at: Timestamp,
    },
}

/// Aggregator to agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AggregatorMessage {
    /// Answer to `Hello`: the aggregator's durable position for this node and
    /// the node's desired state.
    Resume {
        durable: ChainHead,
        desired: Option<DesiredState>,
    },
    /// Everything up to `head` is durably committed. Cumulative.
    Ack { head: ChainHead },
    /// A batch did not follow the durable position (lost or reordered
    /// messages): send again from `durable.seq + 1`.
    Rewind { durable: ChainHead },
    /// Answer to a heartbeat, for RTT.
    Pong { ping: u64 },
    /// The session is refused; the connection closes after this.
    Refuse { code: RefusalCode, message: String },
}

/// Why the aggregator refused a session. Stable codes, logged and counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RefusalCode {
    WrongVersion,
    IdentityMismatch,
    VerificationFailed,
    Fork,
    Malformed,
    Oversized,
    ProtocolViolation,
    Internal,
}

impl RefusalCode {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalCode::WrongVersion => "wrong-version",
            RefusalCode::IdentityMismatch => "identity-mismatch",
            RefusalCode::VerificationFailed => "verification-failed",
            RefusalCode::Fork => "fork",
            RefusalCode::Malformed => "malformed",
            RefusalCode::Oversized => "oversized",
            RefusalCode::ProtocolViolation => "protocol-violation",
            RefusalCode::Internal => "internal",
        }
    }
}

/// Appends one frame holding `msg` to `out`.
pub fn encode_frame<T: Serialize>(msg: &T, out: &mut Vec<u8>) {
    // Serialising our own message types cannot fail. Sized first, then
    // written once in place: batches are large, and growing a buffer by
    // doubling copies them several times.
    let size =
        postcard::serialize_with_flavor(msg, postcard::ser_flavors::Size::default()).unwrap_or(0);
    out.reserve(FRAME_HEADER_BYTES + size);
    out.extend_from_slice(&((size + 2) as u32).to_be_bytes());
    out.extend_from_slice(&WIRE_VERSION.to_be_bytes());
    let start = out.len();
    *out = postcard::to_extend(msg, std::mem::take(out)).unwrap_or_default();
    debug_assert_eq!(out.len() - start, size);
}

/// One frame holding `msg`.
pub fn frame<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(msg, &mut out);
    out
}

/// Reads a frame header: the body length that follows it (version
/// included), after checking the limit and the version.
pub fn parse_header(header: [u8; FRAME_HEADER_BYTES], limit: usize) -> Result<usize, DecodeError> {
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > limit {
        return Err(DecodeError::Oversized { size: len, limit });
    }
    if len < 2 {
        return Err(DecodeError::Malformed(format!(
            "frame length {len} below header"
        )));
    }
    let version = u16::from_be_bytes([header[4], header[5]]);
    if version != WIRE_VERSION {
        return Err(DecodeError::UnknownVersion {
            found: version,
            expected: WIRE_VERSION,
        });
    }
    Ok(len - 2)
}

/// Decodes a frame body (after the header).
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
    crate::codec::decode_limited(body, MAX_FRAME_BYTES)
}

/// Incremental frame decoder for byte streams arriving in arbitrary pieces.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    limit: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new(MAX_FRAME_BYTES)
    }
}

impl FrameDecoder {
    pub fn new(limit: usize) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            limit,
        }
    }

    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message, `Ok(None)` if more bytes are needed. An
    /// error is final: the stream is unusable after it.
    pub fn next_message<T: DeserializeOwned>(&mut self) -> Result<Option<T>, DecodeError> {
        let Some(header) = self.buf.first_chunk::<FRAME_HEADER_BYTES>() else {
            return Ok(None);
        };
        let body_len = parse_header(*header, self.limit)?;
        let total = FRAME_HEADER_BYTES + body_len;
        if self.buf.len() < total {
            return Ok(None);
        }
        let msg = decode_body(&self.buf[FRAME_HEADER_BYTES..total]);
        self.buf.drain(..total);
        msg.map(Some)
    }

    /// Bytes held that do not yet form a frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_in_pieces() {
        let msgs = vec![
            AggregatorMessage::Pong { ping: 7 },
            AggregatorMessage::Ack {
                head: ChainHead::default(),
            },
        ];
        let mut bytes = Vec::new();
        for m in &msgs {
            encode_frame(m, &mut bytes);
        }
        let mut dec = FrameDecoder::default();
        let mut out = Vec::new();
        for b in bytes.chunks(3) {
            dec.push(b);
            while let Some(m) = dec.next_message::<AggregatorMessage>().expect("decode") {
                out.push(m);
            }
        }
        assert_eq!(out, msgs);
        assert_eq!(dec.pending(), 0);
    }

    #[test]
    fn oversized_and_wrong_version_fail_before_the_body() {
        let mut dec = FrameDecoder::new(16);
        dec.push(&[0, 0, 1, 0, 0, 1]);
        assert_eq!(
            dec.next_message::<AggregatorMessage>(),
            Err(DecodeError::Oversized {
                size: 256,
                limit: 16
            })
        );
        let mut dec = FrameDecoder::default();
        let mut f = frame(&AggregatorMessage::Pong { ping: 1 });
        f[5] = 99;
        dec.push(&f);
        assert!(matches!(
            dec.next_message::<AggregatorMessage>(),
            Err(DecodeError::UnknownVersion { found: 99, .. })
        ));
    }
}
