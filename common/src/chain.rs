//! The hash chain and signed checkpoints that make a node's journal
//! tamper-evident and attributable.
//!
//! An event's hash is SHA-256 over a domain tag, the previous event's hash and
//! the event's canonical postcard bytes. After each write transaction the
//! node signs a [`Checkpoint`] (node id, seq, head hash) with its Ed25519
//! key, so one signature covers a whole batch.
//!
//! [`verify_batch`] is the single check every path uses (agent journal
//! verification, QUIC ingest, bundle import): it returns which events are new,
//! which are duplicates of stored ones, or exactly one [`VerifyError`].

use crate::bytes::{deserialize_fixed, serialize_fixed};
use crate::event::{Event, KnownHash};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};
use std::fmt;

const EVENT_HASH_TAG: &[u8] = b"souverix.event.v1\0";
const CHECKPOINT_TAG: &[u8] = b"souverix.checkpoint.v1\0";

/// A SHA-256 digest; `sha256:<hex>` in JSON.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The `prev_hash` of a stream's first event.
    pub const GENESIS: Digest = Digest([0; 32]);

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", &self.to_hex()[..12])
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.to_hex())
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_fixed(&self.0, "sha256:", serializer)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_fixed::<D, 32>("sha256:", deserializer).map(Digest)
    }
}

/// An Ed25519 signature; hex in JSON.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SignatureBytes(pub [u8; 64]);

impl fmt::Debug for SignatureBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ed25519:{}", &hex::encode(self.0)[..12])
    }
}

impl Serialize for SignatureBytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_fixed(&self.0, "ed25519:", serializer)
    }
}

impl<'de> Deserialize<'de> for SignatureBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_fixed::<D, 64>("ed25519:", deserializer).map(SignatureBytes)
    }
}

/// The canonical bytes of an event: its postcard encoding.
pub fn canonical_bytes(event: &Event) -> Vec<u8> {
    // Serialising owned, well-formed values into a Vec cannot fail.
    postcard::to_allocvec(event).unwrap_or_default()
}

/// Whether `bytes` are exactly the canonical encoding of `event`: the
/// event is serialised against the bytes, compared as it goes, without
/// building the encoding (this runs for every event an aggregator receives).
pub fn is_canonical(event: &Event, bytes: &[u8]) -> bool {
    postcard::serialize_with_flavor(
        event,
        Compare {
            expected: bytes,
            at: 0,
        },
    )
    .unwrap_or(false)
}

/// A postcard output that compares what is written with `expected`;
/// resolves to whether all of `expected` was written, and nothing else.
struct Compare<'a> {
    expected: &'a [u8],
    at: usize,
}

impl postcard::ser_flavors::Flavor for Compare<'_> {
    type Output = bool;

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        let end = self.at + data.len();
        if self.expected.get(self.at..end) != Some(data) {
            // Any error ends serialisation; `is_canonical` reads it as "no".
            return Err(postcard::Error::SerializeBufferFull);
        }
        self.at = end;
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.try_extend(&[data])
    }

    fn finalize(self) -> postcard::Result<bool> {
        Ok(self.at == self.expected.len())
    }
}

/// The chain hash of an event given its canonical bytes.
pub fn event_hash(prev: &Digest, canonical: &[u8]) -> Digest {
    let mut h = Sha256::new();
    h.update(EVENT_HASH_TAG);
    h.update(prev.0);
    h.update(canonical);
    Digest(h.finalize().into())
}

/// An event together with its canonical bytes and chain hash, as journals and
/// stores keep it. The bytes are what was hashed and signed.
#[derive(Clone, Debug, PartialEq)]
pub struct SealedEvent {
    pub event: Event,
    pub bytes: Vec<u8>,
    pub hash: Digest,
}

impl SealedEvent {
    /// Seals a freshly built event (its `prev_hash` already set).
    pub fn seal(event: Event) -> Self {
        let bytes = canonical_bytes(&event);
        let hash = event_hash(&event.prev_hash, &bytes);
        SealedEvent { event, bytes, hash }
    }

    /// The stream head this event makes: its seq and hash.
    pub fn head(&self) -> ChainHead {
        ChainHead {
            seq: self.event.seq,
            hash: self.hash,
        }
    }

    /// Decodes canonical bytes received from elsewhere and computes the hash
    /// of exactly those bytes.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, crate::codec::DecodeError> {
        let event: Event = crate::codec::decode_exact(&bytes)?;
        // Only the canonical encoding is accepted, so an event has exactly
        // one byte form and one hash.
        if !is_canonical(&event, &bytes) {
            return Err(crate::codec::DecodeError::Malformed(
                "event bytes are not in canonical form".into(),
            ));
        }
        let hash = event_hash(&event.prev_hash, &bytes);
        Ok(SealedEvent { event, bytes, hash })
    }
}

/// The head of a node's stream: the seq and hash of its last event
/// (0 and [`Digest::GENESIS`] before the first).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    pub seq: u64,
    pub hash: Digest,
}

/// A node's signature over its stream head after a write transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub node_id: String,
    pub seq: u64,
    pub head: Digest,
    pub signature: SignatureBytes,
}

fn checkpoint_message(node_id: &str, seq: u64, head: &Digest) -> Vec<u8> {
    let mut msg = Vec::with_capacity(CHECKPOINT_TAG.len() + node_id.len() + 48);
    msg.extend_from_slice(CHECKPOINT_TAG);
    msg.extend_from_slice(&(node_id.len() as u64).to_be_bytes());
    msg.extend_from_slice(node_id.as_bytes());
    msg.extend_from_slice(&seq.to_be_bytes());
    msg.extend_from_slice(&head.0);
    msg
}

impl Checkpoint {
    /// Signs `(node_id, seq, head)` with the node's key.
    pub fn sign(key: &SigningKey, node_id: &str, seq: u64, head: Digest) -> Self {
        let sig = key.sign(&checkpoint_message(node_id, seq, &head));
        Checkpoint {
            node_id: node_id.to_owned(),
            seq,
            head,
            signature: SignatureBytes(sig.to_bytes()),
        }
    }

    /// Checks the signature against the node's public key.
    pub fn verify_signature(&self, key: &VerifyingKey) -> Result<(), VerifyError> {
        let sig = Signature::from_bytes(&self.signature.0);
        key.verify(
            &checkpoint_message(&self.node_id, self.seq, &self.head),
            &sig,
        )
        .map_err(|_| VerifyError::BadSignature { seq: self.seq })
    }
}

/// Why a batch of events was refused. Each kind of tampering has its own
/// variant so operators (and tests) can tell them apart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    #[error("empty batch: a checkpoint must cover at least one event")]
    Empty,
    #[error("event for node {got:?} in the stream of node {expected:?}")]
    WrongNode { expected: String, got: String },
    #[error("sequence gap: expected seq {expected}, got {got}")]
    Gap { expected: u64, got: u64 },
    #[error("wrong prev_hash at seq {seq}: the event does not chain to the one before")]
    WrongPrevHash { seq: u64 },
    #[error(
        "fork at seq {seq}: a different event is already stored under this seq ({stored} vs {offered})"
    )]
    Fork {
        seq: u64,
        stored: Digest,
        offered: Digest,
    },
    #[error(
        "checkpoint covers seq {checkpoint_seq} head {checkpoint_head} but the batch ends at seq {batch_seq} head {batch_head}"
    )]
    CheckpointMismatch {
        checkpoint_seq: u64,
        checkpoint_head: Digest,
        batch_seq: u64,
        batch_head: Digest,
    },
    #[error("bad checkpoint signature at seq {seq}: not signed by this node's key")]
    BadSignature { seq: u64 },
    #[error("seq {seq} is below what is still held (first held seq {first_held}); cannot check it")]
    Unverifiable { seq: u64, first_held: u64 },
}

/// The result of a successful [`verify_batch`]: how many leading events were
/// already stored (identical duplicates) and the new head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedBatch {
    /// Index in the batch of the first event not yet stored.
    pub first_new: usize,
    /// Head after appending the new events.
    pub head: ChainHead,
}

/// Verifies a batch of sealed events closed by a checkpoint against the stream
/// head already stored for the node.
///
/// - every event belongs to `node_id` and the checkpoint too;
/// - seqs are consecutive and each `prev_hash` chains to the event before;
/// - the checkpoint covers exactly the last event and is signed by `key`;
/// - events at or below `stored.seq` must equal what is stored (`known`),
///   otherwise it is a fork; the first event above must chain to `stored`.
///
/// Nothing is trusted before this returns `Ok`.
pub fn verify_batch(
    node_id: &str,
    key: &VerifyingKey,
    stored: ChainHead,
    events: &[SealedEvent],
    checkpoint: &Checkpoint,
    known: KnownHash<'_>,
) -> Result<VerifiedBatch, VerifyError> {
    let (first, last) = match (events.first(), events.last()) {
        (Some(f), Some(l)) => (f, l),
        _ => return Err(VerifyError::Empty),
    };
    // Identity of every event and of the checkpoint.
    for e in events {
        if e.event.node_id != node_id {
            return Err(VerifyError::WrongNode {
                expected: node_id.to_owned(),
                got: e.event.node_id.clone(),
            });
        }
    }
    if checkpoint.node_id != node_id {
        return Err(VerifyError::WrongNode {
            expected: node_id.to_owned(),
            got: checkpoint.node_id.clone(),
        });
    }
    // Internal consistency: consecutive seqs, each linked to the one before.
    for pair in events.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if b.event.seq != a.event.seq.wrapping_add(1) {
            return Err(VerifyError::Gap {
                expected: a.event.seq.wrapping_add(1),
                got: b.event.seq,
            });
        }
        if b.event.prev_hash != a.hash {
            return Err(VerifyError::WrongPrevHash { seq: b.event.seq });
        }
    }
    if first.event.seq == 0 || first.event.seq > stored.seq + 1 {
        return Err(VerifyError::Gap {
            expected: stored.seq + 1,
            got: first.event.seq,
        });
    }
    // The node vouches for the batch.
    if checkpoint.seq != last.event.seq || checkpoint.head != last.hash {
        return Err(VerifyError::CheckpointMismatch {
            checkpoint_seq: checkpoint.seq,
            checkpoint_head: checkpoint.head,
            batch_seq: last.event.seq,
            batch_head: last.hash,
        });
    }
    checkpoint.verify_signature(key)?;
    // Against what is stored: duplicates must be identical; the first new
    // event must chain onto the stored head.
    let mut first_new = events.len();
    for (i, e) in events.iter().enumerate() {
        let seq = e.event.seq;
        if seq > stored.seq {
            first_new = i;
            break;
        }
        let stored_hash = if seq == stored.seq {
            Some(stored.hash)
        } else {
            known(seq)
        };
        match stored_hash {
            Some(h) if h == e.hash => {}
            Some(h) => {
                return Err(VerifyError::Fork {
                    seq,
                    stored: h,
                    offered: e.hash,
                });
            }
            None => {
                return Err(VerifyError::Unverifiable {
                    seq,
                    first_held: seq + 1,
                });
            }
        }
    }
    if first_new == 0 && first.event.prev_hash != stored.hash {
        return Err(VerifyError::WrongPrevHash {
            seq: first.event.seq,
        });
    }
    let head = if first_new < events.len() {
        ChainHead {
            seq: last.event.seq,
            hash: last.hash,
        }
    } else {
        stored
    };
    Ok(VerifiedBatch { first_new, head })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventPayload, ReplayStarted};
    use crate::time::Timestamp;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn stream(node: &str, from: ChainHead, count: u64) -> Vec<SealedEvent> {
        let mut prev = from.hash;
        (0..count)
            .map(|i| {
                let e = SealedEvent::seal(Event {
                    node_id: node.to_owned(),
                    seq: from.seq + 1 + i,
                    timestamp: Timestamp::from_secs(1_000 + i as i64),
                    prev_hash: prev,
                    payload: EventPayload::ReplayStarted(ReplayStarted { backlog: i }),
                });
                prev = e.hash;
                e
            })
            .collect()
    }

    fn cp(k: &SigningKey, node: &str, events: &[SealedEvent]) -> Checkpoint {
        let last = events.last().expect("non-empty");
        Checkpoint::sign(k, node, last.event.seq, last.hash)
    }

    fn none(_: u64) -> Option<Digest> {
        None
    }

    #[test]
    fn a_clean_batch_verifies_from_genesis() {
        let k = key(1);
        let evs = stream("n1", ChainHead::default(), 5);
        let out = verify_batch(
            "n1",
            &k.verifying_key(),
            ChainHead::default(),
            &evs,
            &cp(&k, "n1", &evs),
            &none,
        )
        .expect("verifies");
        assert_eq!(out.first_new, 0);
        assert_eq!(out.head.seq, 5);
        assert_eq!(out.head.hash, evs[4].hash);
    }

    #[test]
    fn each_tamper_kind_has_its_own_error() {
        let k = key(1);
        let vk = k.verifying_key();
        let evs = stream("n1", ChainHead::default(), 4);
        let good = cp(&k, "n1", &evs);
        let genesis = ChainHead::default();

        // Gap inside the batch.
        let mut gap = evs.clone();
        gap.remove(1);
        assert!(matches!(
            verify_batch("n1", &vk, genesis, &gap, &cp(&k, "n1", &gap), &none),
            Err(VerifyError::Gap {
                expected: 2,
                got: 3
            })
        ));
        // Gap against the stored head.
        assert!(matches!(
            verify_batch("n1", &vk, genesis, &evs[1..], &good, &none),
            Err(VerifyError::Gap {
                expected: 1,
                got: 2
            })
        ));
        // Payload tampered: the next event no longer chains to it.
        let mut tampered = evs.clone();
        tampered[1].event.payload = EventPayload::ReplayStarted(ReplayStarted { backlog: 99 });
        tampered[1] = SealedEvent::seal(tampered[1].event.clone());
        assert!(matches!(
            verify_batch("n1", &vk, genesis, &tampered, &good, &none),
            Err(VerifyError::WrongPrevHash { seq: 3 })
        ));
        // Last event tampered: the checkpoint no longer covers it.
        let mut tail = evs.clone();
        tail[3].event.timestamp = Timestamp::from_secs(5);
        tail[3] = SealedEvent::seal(tail[3].event.clone());
        assert!(matches!(
            verify_batch("n1", &vk, genesis, &tail, &good, &none),
            Err(VerifyError::CheckpointMismatch { .. })
        ));
        // Signed by another key.
        let forged = cp(&key(2), "n1", &evs);
        assert!(matches!(
            verify_batch("n1", &vk, genesis, &evs, &forged, &none),
            Err(VerifyError::BadSignature { seq: 4 })
        ));
        // Another node's events.
        let other = stream("n2", genesis, 4);
        assert!(matches!(
            verify_batch("n1", &vk, genesis, &other, &cp(&k, "n2", &other), &none),
            Err(VerifyError::WrongNode { .. })
        ));
        // A stream that does not chain onto the stored head.
        let head2 = ChainHead {
            seq: 0,
            hash: Digest([7; 32]),
        };
        assert!(matches!(
            verify_batch("n1", &vk, head2, &evs, &good, &none),
            Err(VerifyError::WrongPrevHash { seq: 1 })
        ));
        assert!(matches!(
            verify_batch("n1", &vk, genesis, &[], &good, &none),
            Err(VerifyError::Empty)
        ));
    }

    #[test]
    fn duplicates_are_skipped_and_forks_refused() {
        let k = key(1);
        let vk = k.verifying_key();
        let evs = stream("n1", ChainHead::default(), 6);
        let stored = ChainHead {
            seq: 3,
            hash: evs[2].hash,
        };
        let hashes: Vec<Digest> = evs.iter().map(|e| e.hash).collect();
        let known = |seq: u64| hashes.get(seq as usize - 1).copied();
        let out = verify_batch("n1", &vk, stored, &evs, &cp(&k, "n1", &evs), &known)
            .expect("overlap verifies");
        assert_eq!(out.first_new, 3);
        assert_eq!(out.head.seq, 6);
        // Entirely old: nothing new, head unchanged.
        let out = verify_batch(
            "n1",
            &vk,
            stored,
            &evs[..2],
            &cp(&k, "n1", &evs[..2]),
            &known,
        )
        .expect("duplicate verifies");
        assert_eq!(out.first_new, 2);
        assert_eq!(out.head, stored);

        // A signed alternative history from seq 2 on: fork at seq 2.
        let alt_start = ChainHead {
            seq: 1,
            hash: evs[0].hash,
        };
        let mut alt = stream("n1", alt_start, 3);
        for e in alt.iter_mut() {
            e.event.timestamp = Timestamp::from_secs(9_999);
        }
        let mut prev = evs[0].hash;
        for e in alt.iter_mut() {
            e.event.prev_hash = prev;
            *e = SealedEvent::seal(e.event.clone());
            prev = e.hash;
        }
        let err =
            verify_batch("n1", &vk, stored, &alt, &cp(&k, "n1", &alt), &known).expect_err("fork");
        assert!(matches!(err, VerifyError::Fork { seq: 2, .. }), "{err:?}");
    }
}
