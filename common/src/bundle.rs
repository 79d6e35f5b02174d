//! Air-gapped bundles: a node's events in a signed file carried by hand, and
//! the aggregator's signed receipt that travels back.
//!
//! This module is pure: it builds, encodes, decodes and verifies bundle and
//! receipt bytes. Reading journals, checking certificates against the fleet
//! CA, committing to a store and writing files belong to the agent and the
//! aggregator.
//!
//! # Bundle file
//!
//! ```text
//! "SXBUNDLE"                         8 bytes of magic
//! WIRE_VERSION                       u16 big-endian (codec::encode_versioned)
//! postcard BundleEnvelope {
//!     manifest:     bytes            postcard Manifest, signed exactly as stored
//!     signature:    64 bytes         Ed25519 by the node key over
//!                                    "souverix.bundle.manifest.v1\0" ++ manifest
//!     certificates: [bytes]          DER, node certificate first, then the CA
//!     section:      bytes            postcard EventSection, zstd-compressed
//!                                    when manifest.compression says so
//! }
//! EventSection { events: [canonical event bytes], checkpoints: [Checkpoint] }
//! ```
//!
//! The [`Manifest`] names the node and its public key, the seq range with
//! the first `prev_hash` and the head hash, the bundle counter, creation and
//! expiry times, the intended region and aggregator, and the SHA-256 digests
//! of the certificates and of the section *as stored*. So the signature
//! covers every byte of the file: the magic and version are checked
//! literally, the envelope must be the canonical postcard encoding of what
//! it decodes to, and everything else is signed or digested. A single
//! flipped bit anywhere is an error.
//!
//! The checkpoints split the events into segments, each closed by a
//! checkpoint the node signed over its last event: each segment is one
//! submission to the aggregator's store, verified there by the same
//! [`admit_batch`](crate::protocol::admit_batch) as a QUIC batch.
//!
//! [`decode_bundle`] checks, in this order, so that nothing unauthenticated
//! is ever interpreted: size, magic, version, envelope, canonical encoding,
//! manifest signature, certificate digest, section digest, decompression
//! (bounded by the signed length), events (each decodes, belongs to the
//! node, consecutive seqs, chained), the manifest's range and head, and
//! finally every segment through [`verify_batch`]. Each failure is its own
//! [`BundleError`] variant.
//!
//! # Receipt file
//!
//! ```text
//! "SXRECEIPT" ++ WIRE_VERSION ++ postcard ReceiptEnvelope {
//!     receipt:      bytes            postcard Receipt, signed exactly as stored
//!     signature:    64 bytes         Ed25519 by the aggregator key over
//!                                    "souverix.bundle.receipt.v1\0" ++ receipt
//!     certificates: [bytes]          DER, aggregator certificate first
//! }
//! ```

use crate::bytes::{deserialize_fixed, serialize_fixed};
use crate::chain::{
    ChainHead, Checkpoint, Digest, SealedEvent, SignatureBytes, VerifyError, verify_batch,
};
use crate::codec::{DecodeError, decode_limited, decode_versioned, encode_versioned};
use crate::time::Timestamp;
use crate::wire::DesiredState;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use postcard::ser_flavors::Flavor;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};
use std::fmt;

/// The first bytes of every bundle file.
pub const BUNDLE_MAGIC: &[u8] = b"SXBUNDLE";
/// The first bytes of every receipt file.
pub const RECEIPT_MAGIC: &[u8] = b"SXRECEIPT";
/// Largest bundle file accepted (1 GiB), and largest decompressed section.
/// Checked before anything is decoded or decompressed.
pub const MAX_BUNDLE_BYTES: usize = 1 << 30;
/// Largest receipt file accepted (1 MiB).
pub const MAX_RECEIPT_BYTES: usize = 1 << 20;
/// Largest encoded manifest or receipt body (64 KiB).
const MAX_HEADER_BYTES: usize = 64 << 10;
/// Events per segment an exporter should close with a checkpoint: one store
/// submission each.
pub const SEGMENT_EVENTS: usize = 10_000;
/// Bytes of event data after which an exporter should close a segment even
/// with fewer than [`SEGMENT_EVENTS`] events.
pub const SEGMENT_BYTES: usize = 8 << 20;
/// zstd level used for compressed sections: level 1 compresses these
/// sections as well as level 3 (about 46 bytes per event) at well over
/// twice the speed.
const ZSTD_LEVEL: i32 = 1;

const MANIFEST_TAG: &[u8] = b"souverix.bundle.manifest.v1\0";
const RECEIPT_TAG: &[u8] = b"souverix.bundle.receipt.v1\0";
const SECTION_TAG: &[u8] = b"souverix.bundle.section.v1\0";
const CERTIFICATES_TAG: &[u8] = b"souverix.bundle.certificates.v1\0";

// --- errors ---------------------------------------------------------------

/// Why a bundle or receipt was refused. One variant per cause, so operators
/// and tests can tell them apart; [`BundleError::code`] gives a stable name.
/// A refused bundle changed nothing stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    #[error("file of {size} bytes exceeds the {limit}-byte limit")]
    TooLarge { size: u64, limit: u64 },
    #[error("not a bundle file (it does not start with SXBUNDLE)")]
    NotABundle,
    #[error("not a receipt file (it does not start with SXRECEIPT)")]
    NotAReceipt,
    #[error("undecodable: {0}")]
    Decode(#[from] DecodeError),
    #[error("non-canonical encoding: the file was altered")]
    NonCanonical,
    #[error("the signed header names an unusable Ed25519 public key")]
    BadKey,
    #[error("signature does not verify: the manifest was altered or signed by another key")]
    BadSignature,
    #[error("certificates do not match the signed digest: altered after signing")]
    CertificatesAltered,
    #[error("event section does not match the signed digest: altered after signing")]
    SectionAltered,
    #[error("event section does not decompress to its signed length: {0}")]
    Decompress(String),
    #[error("event {index} of the bundle does not decode: {source}")]
    EventDecode {
        index: usize,
        #[source]
        source: DecodeError,
    },
    #[error("the bundle holds no events")]
    Empty,
    #[error("event seq {seq} belongs to node {got:?}, the bundle to node {expected:?}")]
    ForeignEvent {
        seq: u64,
        expected: String,
        got: String,
    },
    #[error("hole inside the bundle: seq {from}..={to} missing")]
    Hole { from: u64, to: u64 },
    #[error("seq {seq} appears twice in the bundle")]
    DuplicateEvent { seq: u64 },
    #[error("events out of order: seq {seq} after seq {after}")]
    OutOfOrder { seq: u64, after: u64 },
    #[error("event seq {seq} does not chain to the event before it (inserted or altered)")]
    BrokenChain { seq: u64 },
    #[error(
        "events run seq {first}..={last} (head {head}) but the manifest says {manifest_first}..={manifest_last} (head {manifest_head})"
    )]
    RangeMismatch {
        first: u64,
        last: u64,
        head: Digest,
        manifest_first: u64,
        manifest_last: u64,
        manifest_head: Digest,
    },
    #[error("checkpoints do not close the bundle's segments: {reason}")]
    CheckpointLayout { reason: String },
    #[error("segment closed by the checkpoint at seq {seq} does not verify: {source}")]
    BadCheckpoint {
        seq: u64,
        #[source]
        source: VerifyError,
    },
    #[error("no certificate in the file")]
    NoCertificate,
    #[error("certificate not trusted by the fleet CA: {reason}")]
    UntrustedCertificate { reason: String },
    #[error("certificate revoked by the fleet CA")]
    RevokedCertificate,
    #[error("certificate names {certificate:?} but the signed header names {signed:?}")]
    IdentityMismatch { certificate: String, signed: String },
    #[error("signed by a key that is not the certificate's key")]
    KeyMismatch,
    #[error("bundle expired at {expires_at} (now {now})")]
    Expired {
        expires_at: Timestamp,
        now: Timestamp,
    },
    #[error("bundle is meant for region {bundle:?}; this aggregator serves {aggregator:?}")]
    WrongRegion { bundle: String, aggregator: String },
    #[error("bundle is meant for aggregator {bundle:?}; this is {aggregator:?}")]
    WrongAggregator { bundle: String, aggregator: String },
    #[error(
        "rollback: bundle counter {counter} of node {node_id:?} is below {highest}, already imported, and the bundle brings new events"
    )]
    Rollback {
        node_id: String,
        counter: u64,
        highest: u64,
    },
    #[error(
        "missing seq {from}..{to}: import the bundle that holds them first, then this one again"
    )]
    MissingEvents { from: u64, to: u64 },
    #[error(
        "fork at seq {seq}: the aggregator holds {stored}, the bundle {offered}; refused and kept as evidence"
    )]
    Fork {
        seq: u64,
        stored: Digest,
        offered: Digest,
    },
    #[error("refused by the event store: {0}")]
    Rejected(VerifyError),
    #[error("event store failure, nothing acknowledged: {0}")]
    Store(String),
    #[error("receipt is for node {receipt:?}; this node is {node:?}")]
    ReceiptForOtherNode { receipt: String, node: String },
    #[error("receipt names seq {seq} beyond the journal head {head}")]
    ReceiptBeyondHead { seq: u64, head: u64 },
    #[error("receipt names seq {seq} with hash {receipt} but the journal holds {journal}")]
    ReceiptHeadMismatch {
        seq: u64,
        receipt: Digest,
        journal: Digest,
    },
}

impl BundleError {
    /// A stable kebab-case name of the cause, for logs, APIs and tests.
    pub fn code(&self) -> &'static str {
        use BundleError::*;
        match self {
            TooLarge { .. } => "too-large",
            NotABundle => "not-a-bundle",
            NotAReceipt => "not-a-receipt",
            Decode(DecodeError::Truncated) => "truncated",
            Decode(DecodeError::UnknownVersion { .. }) => "wrong-version",
            Decode(_) => "malformed",
            NonCanonical => "non-canonical",
            BadKey => "bad-key",
            BadSignature => "bad-signature",
            CertificatesAltered => "certificates-altered",
            SectionAltered => "section-altered",
            Decompress(_) => "decompress",
            EventDecode { .. } => "event-decode",
            Empty => "empty",
            ForeignEvent { .. } => "foreign-event",
            Hole { .. } => "hole",
            DuplicateEvent { .. } => "duplicate-event",
            OutOfOrder { .. } => "out-of-order",
            BrokenChain { .. } => "broken-chain",
            RangeMismatch { .. } => "range-mismatch",
            CheckpointLayout { .. } => "checkpoint-layout",
            BadCheckpoint { .. } => "bad-checkpoint",
            NoCertificate => "no-certificate",
            UntrustedCertificate { .. } => "untrusted-certificate",
            RevokedCertificate => "revoked-certificate",
            IdentityMismatch { .. } => "identity-mismatch",
            KeyMismatch => "key-mismatch",
            Expired { .. } => "expired",
            WrongRegion { .. } => "wrong-region",
            WrongAggregator { .. } => "wrong-aggregator",
            Rollback { .. } => "rollback",
            MissingEvents { .. } => "missing-events",
            Fork { .. } => "fork",
            Rejected(_) => "rejected",
            Store(_) => "store",
            ReceiptForOtherNode { .. } => "receipt-other-node",
            ReceiptBeyondHead { .. } => "receipt-beyond-head",
            ReceiptHeadMismatch { .. } => "receipt-head-mismatch",
        }
    }
}

// --- byte strings ---------------------------------------------------------

/// A raw Ed25519 public key; hex in JSON.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyBytes(pub [u8; 32]);

impl KeyBytes {
    /// The key as ed25519-dalek reads it, if it is a valid point.
    pub fn verifying_key(&self) -> Result<VerifyingKey, BundleError> {
        VerifyingKey::from_bytes(&self.0).map_err(|_| BundleError::BadKey)
    }
}

impl From<VerifyingKey> for KeyBytes {
    fn from(key: VerifyingKey) -> Self {
        KeyBytes(key.to_bytes())
    }
}

impl fmt::Debug for KeyBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ed25519-key:{}", &hex::encode(self.0)[..12])
    }
}

impl Serialize for KeyBytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_fixed(&self.0, "", serializer)
    }
}

impl<'de> Deserialize<'de> for KeyBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_fixed::<D, 32>("", deserializer).map(KeyBytes)
    }
}

/// A byte string that postcard writes as length + raw bytes (the same wire
/// form as `Vec<u8>`) but reads with one copy instead of byte by byte.
#[derive(Clone, Default, PartialEq, Eq)]
struct RawBytes(Vec<u8>);

impl Serialize for RawBytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for RawBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RawVisitor;
        impl<'de> serde::de::Visitor<'de> for RawVisitor {
            type Value = RawBytes;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<RawBytes, E> {
                Ok(RawBytes(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<RawBytes, E> {
                Ok(RawBytes(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RawBytes, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element()? {
                    out.push(b);
                }
                Ok(RawBytes(out))
            }
        }
        deserializer.deserialize_byte_buf(RawVisitor)
    }
}

// --- bundle types ---------------------------------------------------------

/// How the event section is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Compression {
    /// The postcard section as is.
    None,
    /// The postcard section compressed with zstd (one frame).
    Zstd,
}

/// What the exporter chooses for a bundle; the rest of the [`Manifest`] is
/// computed from the content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleHeader {
    /// The node's bundle counter: grows with every export, so an aggregator
    /// can refuse an older bundle after a newer one (rollback).
    pub counter: u64,
    pub created_at: Timestamp,
    /// After this the bundle is refused.
    pub expires_at: Timestamp,
    /// The region whose aggregator may import the bundle.
    pub region: String,
    /// The aggregator meant to import it; any of the region when `None`.
    pub aggregator: Option<String>,
}

/// The signed description of a bundle.
///
/// Invariant of a manifest inside a [`Bundle`] returned by
/// [`decode_bundle`]: the signature verifies with `public_key`, both digests
/// match the file, and the events run `first_seq..=last_seq` starting after
/// `first_prev_hash` and ending at `head_hash`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub node_id: String,
    /// The node key that signed the manifest and the checkpoints; the
    /// importer checks that it is the certificate's key.
    pub public_key: KeyBytes,
    pub first_seq: u64,
    pub last_seq: u64,
    /// The `prev_hash` of the first event: the hash of event `first_seq - 1`.
    pub first_prev_hash: Digest,
    /// The hash of event `last_seq`.
    pub head_hash: Digest,
    pub checkpoint_count: u64,
    pub counter: u64,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub region: String,
    pub aggregator: Option<String>,
    /// SHA-256 over a tag and every certificate (length-prefixed).
    pub certificates_digest: Digest,
    pub compression: Compression,
    /// Length of the uncompressed section.
    pub section_len: u64,
    /// SHA-256 over a tag and the section bytes as stored in the file.
    pub section_digest: Digest,
}

impl Manifest {
    /// The head the bundle brings the node's stream to.
    pub fn head(&self) -> ChainHead {
        ChainHead {
            seq: self.last_seq,
            hash: self.head_hash,
        }
    }

    /// Number of events in the bundle.
    pub fn event_count(&self) -> u64 {
        (self.last_seq + 1).saturating_sub(self.first_seq)
    }

    /// Refuses the bundle after its expiry.
    pub fn check_expiry(&self, now: Timestamp) -> Result<(), BundleError> {
        if now > self.expires_at {
            return Err(BundleError::Expired {
                expires_at: self.expires_at,
                now,
            });
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct BundleEnvelope {
    manifest: RawBytes,
    signature: SignatureBytes,
    certificates: Vec<RawBytes>,
    section: RawBytes,
}

#[derive(Serialize, Deserialize)]
struct EventSection {
    events: Vec<RawBytes>,
    checkpoints: Vec<Checkpoint>,
}

/// A decoded bundle whose every self-contained property is verified (see
/// the module doc). What it does not know: whether its certificates chain to
/// the fleet CA, whether it is expired or meant for this region, and how it
/// relates to what a store holds. Those are the importer's checks.
#[derive(Clone, Debug)]
pub struct Bundle {
    manifest: Manifest,
    key: VerifyingKey,
    certificates: Vec<Vec<u8>>,
    events: Vec<SealedEvent>,
    checkpoints: Vec<Checkpoint>,
}

impl Bundle {
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The key the manifest and checkpoints verified against.
    pub fn key(&self) -> VerifyingKey {
        self.key
    }

    /// The certificates as carried (DER), node certificate first.
    pub fn certificates(&self) -> &[Vec<u8>] {
        &self.certificates
    }

    /// The events, in seq order, gapless and chained.
    pub fn events(&self) -> &[SealedEvent] {
        &self.events
    }

    /// The checkpoints, in seq order; the last one covers the last event.
    pub fn checkpoints(&self) -> &[Checkpoint] {
        &self.checkpoints
    }

    /// Splits the events into segments, each with the checkpoint closing it:
    /// one store submission per segment.
    pub fn into_segments(self) -> Vec<(Vec<SealedEvent>, Checkpoint)> {
        let mut out = Vec::with_capacity(self.checkpoints.len());
        let mut events = self.events.into_iter().peekable();
        for checkpoint in self.checkpoints {
            let mut segment = Vec::new();
            while let Some(e) = events.next_if(|e| e.event.seq <= checkpoint.seq) {
                segment.push(e);
            }
            out.push((segment, checkpoint));
        }
        out
    }
}

/// Builds a bundle: events and checkpoints are pushed in order, then
/// [`finish`](BundleWriter::finish) signs and encodes the file.
///
/// The writer checks nothing (a reader checks everything), so tests can
/// build malformed bundles that are nonetheless validly signed.
#[derive(Debug)]
pub struct BundleWriter {
    node_id: String,
    /// The postcard encodings of the pushed events, concatenated.
    events: Vec<u8>,
    count: u64,
    first: Option<(u64, Digest)>,
    last: ChainHead,
    checkpoints: Vec<Checkpoint>,
}

impl BundleWriter {
    /// A writer for a bundle of `node_id`'s events.
    pub fn new(node_id: &str) -> Self {
        BundleWriter {
            node_id: node_id.to_owned(),
            events: Vec::new(),
            count: 0,
            first: None,
            last: ChainHead::default(),
            checkpoints: Vec::new(),
        }
    }

    /// Appends an event (its canonical bytes as stored).
    pub fn push_event(&mut self, event: &SealedEvent) {
        if self.first.is_none() {
            self.first = Some((event.event.seq, event.event.prev_hash));
        }
        push_varint(&mut self.events, event.bytes.len() as u64);
        self.events.extend_from_slice(&event.bytes);
        self.count += 1;
        self.last = ChainHead {
            seq: event.event.seq,
            hash: event.hash,
        };
    }

    /// Appends a checkpoint (normally over the last pushed event).
    pub fn push_checkpoint(&mut self, checkpoint: Checkpoint) {
        self.checkpoints.push(checkpoint);
    }

    /// Events pushed so far.
    pub fn event_count(&self) -> u64 {
        self.count
    }

    /// Bytes of event data pushed so far.
    pub fn event_bytes(&self) -> usize {
        self.events.len()
    }

    /// The seq and hash of the last pushed event.
    pub fn head(&self) -> ChainHead {
        self.last
    }

    /// Signs the manifest with `key` (the node key) and encodes the file.
    /// `certificates` are DER, the node certificate first.
    pub fn finish(
        self,
        key: &SigningKey,
        certificates: &[Vec<u8>],
        header: BundleHeader,
        compression: Compression,
    ) -> Vec<u8> {
        let mut section = Vec::with_capacity(self.events.len() + 16);
        push_varint(&mut section, self.count);
        section.extend_from_slice(&self.events);
        // Serialising our own checkpoints into a Vec cannot fail.
        section.extend_from_slice(&postcard::to_allocvec(&self.checkpoints).unwrap_or_default());
        let section_len = section.len() as u64;
        let stored = match compression {
            Compression::None => section,
            // Compressing into memory only fails on allocation failure.
            Compression::Zstd => zstd::bulk::compress(&section, ZSTD_LEVEL).unwrap_or_default(),
        };
        let (first_seq, first_prev_hash) = self.first.unwrap_or((0, Digest::GENESIS));
        let manifest = Manifest {
            node_id: self.node_id,
            public_key: key.verifying_key().into(),
            first_seq,
            last_seq: self.last.seq,
            first_prev_hash,
            head_hash: self.last.hash,
            checkpoint_count: self.checkpoints.len() as u64,
            counter: header.counter,
            created_at: header.created_at,
            expires_at: header.expires_at,
            region: header.region,
            aggregator: header.aggregator,
            certificates_digest: certificates_digest(certificates),
            compression,
            section_len,
            section_digest: tagged_digest(SECTION_TAG, &[&stored]),
        };
        let manifest = postcard::to_allocvec(&manifest).unwrap_or_default();
        let signature = key.sign(&signed_message(MANIFEST_TAG, &manifest));
        let envelope = BundleEnvelope {
            manifest: RawBytes(manifest),
            signature: SignatureBytes(signature.to_bytes()),
            certificates: certificates.iter().cloned().map(RawBytes).collect(),
            section: RawBytes(stored),
        };
        with_magic(BUNDLE_MAGIC, &encode_versioned(&envelope))
    }
}

/// Decodes and verifies a bundle file (see the module doc for the checks
/// and their order). Nothing of a refused file is used.
pub fn decode_bundle(bytes: &[u8]) -> Result<Bundle, BundleError> {
    let body = strip_magic(
        bytes,
        BUNDLE_MAGIC,
        MAX_BUNDLE_BYTES,
        BundleError::NotABundle,
    )?;
    let envelope: BundleEnvelope = decode_versioned(body, MAX_BUNDLE_BYTES)?;
    check_canonical(&envelope, &body[2..])?;

    // Authenticity of the header, then of everything the header digests.
    let manifest: Manifest = decode_limited(&envelope.manifest.0, MAX_HEADER_BYTES)?;
    let key = manifest.public_key.verifying_key()?;
    verify_signature(
        &key,
        MANIFEST_TAG,
        &envelope.manifest.0,
        &envelope.signature,
    )?;
    let certificates: Vec<Vec<u8>> = envelope.certificates.into_iter().map(|c| c.0).collect();
    if certificates_digest(&certificates) != manifest.certificates_digest {
        return Err(BundleError::CertificatesAltered);
    }
    if tagged_digest(SECTION_TAG, &[&envelope.section.0]) != manifest.section_digest {
        return Err(BundleError::SectionAltered);
    }

    // The section is authentic: unpack it.
    let section = unpack_section(&manifest, envelope.section.0)?;
    let section: EventSection = decode_limited(&section, MAX_BUNDLE_BYTES)?;
    let mut events = Vec::with_capacity(section.events.len());
    for (index, raw) in section.events.into_iter().enumerate() {
        let sealed = SealedEvent::from_bytes(raw.0)
            .map_err(|source| BundleError::EventDecode { index, source })?;
        events.push(sealed);
    }
    check_events(&manifest, &events)?;
    check_checkpoints(&manifest, &key, &events, &section.checkpoints)?;
    Ok(Bundle {
        manifest,
        key,
        certificates,
        events,
        checkpoints: section.checkpoints,
    })
}

fn unpack_section(manifest: &Manifest, stored: Vec<u8>) -> Result<Vec<u8>, BundleError> {
    let expected = usize::try_from(manifest.section_len)
        .ok()
        .filter(|n| *n <= MAX_BUNDLE_BYTES)
        .ok_or(BundleError::TooLarge {
            size: manifest.section_len,
            limit: MAX_BUNDLE_BYTES as u64,
        })?;
    let section = match manifest.compression {
        Compression::None => stored,
        Compression::Zstd => zstd::bulk::decompress(&stored, expected)
            .map_err(|e| BundleError::Decompress(e.to_string()))?,
    };
    if section.len() != expected {
        return Err(BundleError::Decompress(format!(
            "{} bytes, the manifest says {expected}",
            section.len()
        )));
    }
    Ok(section)
}

/// The events belong to the node, run consecutively, chain, and match the
/// manifest's range and head.
fn check_events(manifest: &Manifest, events: &[SealedEvent]) -> Result<(), BundleError> {
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return Err(BundleError::Empty);
    };
    for e in events {
        if e.event.node_id != manifest.node_id {
            return Err(BundleError::ForeignEvent {
                seq: e.event.seq,
                expected: manifest.node_id.clone(),
                got: e.event.node_id.clone(),
            });
        }
    }
    // Order first: a seq at or below the one before is a duplicate if it
    // already appeared, else out of order.
    for (i, pair) in events.windows(2).enumerate() {
        let (after, seq) = (pair[0].event.seq, pair[1].event.seq);
        if seq <= after {
            let seen = events[..=i]
                .binary_search_by_key(&seq, |e| e.event.seq)
                .is_ok();
            return Err(if seen {
                BundleError::DuplicateEvent { seq }
            } else {
                BundleError::OutOfOrder { seq, after }
            });
        }
    }
    // Increasing: any jump is a hole; each event chains to the one before.
    for pair in events.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let seq = b.event.seq;
        if seq > a.event.seq + 1 {
            return Err(BundleError::Hole {
                from: a.event.seq + 1,
                to: seq - 1,
            });
        }
        if b.event.prev_hash != a.hash {
            return Err(BundleError::BrokenChain { seq });
        }
    }
    if first.event.seq == 0
        || first.event.seq != manifest.first_seq
        || first.event.prev_hash != manifest.first_prev_hash
        || last.event.seq != manifest.last_seq
        || last.hash != manifest.head_hash
    {
        return Err(BundleError::RangeMismatch {
            first: first.event.seq,
            last: last.event.seq,
            head: last.hash,
            manifest_first: manifest.first_seq,
            manifest_last: manifest.last_seq,
            manifest_head: manifest.head_hash,
        });
    }
    Ok(())
}

/// Checkpoints in increasing seq order, inside the range, the last one on
/// the last event; each segment passes [`verify_batch`] against the one
/// before (the first against `first_prev_hash`).
fn check_checkpoints(
    manifest: &Manifest,
    key: &VerifyingKey,
    events: &[SealedEvent],
    checkpoints: &[Checkpoint],
) -> Result<(), BundleError> {
    let layout = |reason: String| BundleError::CheckpointLayout { reason };
    if checkpoints.len() as u64 != manifest.checkpoint_count {
        return Err(layout(format!(
            "{} checkpoints, the manifest says {}",
            checkpoints.len(),
            manifest.checkpoint_count
        )));
    }
    match checkpoints.last() {
        Some(cp) if cp.seq == manifest.last_seq => {}
        Some(cp) => {
            return Err(layout(format!(
                "the last checkpoint is at seq {}, not on the last event {}",
                cp.seq, manifest.last_seq
            )));
        }
        None => return Err(layout("no checkpoint".to_owned())),
    }
    let mut stored = ChainHead {
        seq: manifest.first_seq - 1,
        hash: manifest.first_prev_hash,
    };
    for checkpoint in checkpoints {
        if checkpoint.seq <= stored.seq || checkpoint.seq > manifest.last_seq {
            return Err(layout(format!(
                "checkpoint at seq {} after seq {} (range {}..={})",
                checkpoint.seq, stored.seq, manifest.first_seq, manifest.last_seq
            )));
        }
        // Events are gapless from first_seq: index arithmetic is exact.
        let from = (stored.seq + 1 - manifest.first_seq) as usize;
        let to = (checkpoint.seq - manifest.first_seq) as usize;
        let segment = &events[from..=to];
        let verified = verify_batch(&manifest.node_id, key, stored, segment, checkpoint, &|_| {
            None
        })
        .map_err(|source| BundleError::BadCheckpoint {
            seq: checkpoint.seq,
            source,
        })?;
        stored = verified.head;
    }
    Ok(())
}

// --- receipts ---------------------------------------------------------------

/// The aggregator's signed statement of what it durably holds of a node
/// after importing a bundle, with the node's desired state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub node_id: String,
    /// The node's durable head at the aggregator after the import: every
    /// event up to it is stored.
    pub head: ChainHead,
    /// The imported bundle: counter and seq range.
    pub bundle_counter: u64,
    pub bundle_first_seq: u64,
    pub bundle_last_seq: u64,
    /// Events of the bundle that were new to the aggregator.
    pub new_events: u64,
    /// The aggregator's name (its certificate's `urn:souverix:aggregator:`).
    pub aggregator: String,
    pub region: String,
    pub issued_at: Timestamp,
    /// What the aggregator wants the node to be, if it knows.
    pub desired: Option<DesiredState>,
    /// The aggregator key that signs; set by [`encode_receipt`].
    pub aggregator_key: KeyBytes,
    /// Digest of the certificates carried; set by [`encode_receipt`].
    pub certificates_digest: Digest,
}

/// A decoded receipt whose signature verifies with the key it names and
/// whose certificates are the ones it digests. Whether that key is a
/// trusted aggregator's is the agent's check.
#[derive(Clone, Debug, PartialEq)]
pub struct SignedReceipt {
    pub receipt: Receipt,
    /// DER, the aggregator certificate first.
    pub certificates: Vec<Vec<u8>>,
}

#[derive(Serialize, Deserialize)]
struct ReceiptEnvelope {
    receipt: RawBytes,
    signature: SignatureBytes,
    certificates: Vec<RawBytes>,
}

/// Signs `receipt` with the aggregator key and encodes the receipt file,
/// after setting its `aggregator_key` and `certificates_digest`.
pub fn encode_receipt(key: &SigningKey, mut receipt: Receipt, certificates: &[Vec<u8>]) -> Vec<u8> {
    receipt.aggregator_key = key.verifying_key().into();
    receipt.certificates_digest = certificates_digest(certificates);
    let body = postcard::to_allocvec(&receipt).unwrap_or_default();
    let signature = key.sign(&signed_message(RECEIPT_TAG, &body));
    let envelope = ReceiptEnvelope {
        receipt: RawBytes(body),
        signature: SignatureBytes(signature.to_bytes()),
        certificates: certificates.iter().cloned().map(RawBytes).collect(),
    };
    with_magic(RECEIPT_MAGIC, &encode_versioned(&envelope))
}

/// Decodes a receipt file and checks its signature against the key it
/// names and its certificates against its digest.
pub fn decode_receipt(bytes: &[u8]) -> Result<SignedReceipt, BundleError> {
    let body = strip_magic(
        bytes,
        RECEIPT_MAGIC,
        MAX_RECEIPT_BYTES,
        BundleError::NotAReceipt,
    )?;
    let envelope: ReceiptEnvelope = decode_versioned(body, MAX_RECEIPT_BYTES)?;
    check_canonical(&envelope, &body[2..])?;
    let receipt: Receipt = decode_limited(&envelope.receipt.0, MAX_HEADER_BYTES)?;
    let key = receipt.aggregator_key.verifying_key()?;
    verify_signature(&key, RECEIPT_TAG, &envelope.receipt.0, &envelope.signature)?;
    let certificates: Vec<Vec<u8>> = envelope.certificates.into_iter().map(|c| c.0).collect();
    if certificates_digest(&certificates) != receipt.certificates_digest {
        return Err(BundleError::CertificatesAltered);
    }
    Ok(SignedReceipt {
        receipt,
        certificates,
    })
}

// --- shared helpers -------------------------------------------------------

/// Checks the size limit and the magic; returns what follows the magic.
fn strip_magic<'a>(
    bytes: &'a [u8],
    magic: &[u8],
    limit: usize,
    wrong: BundleError,
) -> Result<&'a [u8], BundleError> {
    if bytes.len() > limit {
        return Err(BundleError::TooLarge {
            size: bytes.len() as u64,
            limit: limit as u64,
        });
    }
    match bytes.strip_prefix(magic) {
        Some(rest) => Ok(rest),
        None if magic.starts_with(bytes) => Err(DecodeError::Truncated.into()),
        None => Err(wrong),
    }
}

fn with_magic(magic: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(magic.len() + body.len());
    out.extend_from_slice(magic);
    out.extend_from_slice(body);
    out
}

/// Refuses input that decodes to `value` but is not its canonical
/// encoding (an over-long length prefix, say): every byte of a file must be
/// accounted for. Compares while encoding, without a second copy.
fn check_canonical<T: Serialize>(value: &T, input: &[u8]) -> Result<(), BundleError> {
    let same = postcard::serialize_with_flavor(
        value,
        CompareFlavor {
            expected: input,
            pos: 0,
        },
    )
    .unwrap_or(false);
    if same {
        Ok(())
    } else {
        Err(BundleError::NonCanonical)
    }
}

/// A postcard output that compares against `expected` instead of writing.
struct CompareFlavor<'a> {
    expected: &'a [u8],
    pos: usize,
}

impl Flavor for CompareFlavor<'_> {
    type Output = bool;

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.try_extend(&[data])
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        let end = self.pos + data.len();
        match self.expected.get(self.pos..end) {
            Some(slice) if slice == data => {
                self.pos = end;
                Ok(())
            }
            _ => Err(postcard::Error::SerializeBufferFull),
        }
    }

    fn finalize(self) -> postcard::Result<bool> {
        Ok(self.pos == self.expected.len())
    }
}

fn signed_message(tag: &[u8], body: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(tag.len() + body.len());
    msg.extend_from_slice(tag);
    msg.extend_from_slice(body);
    msg
}

fn verify_signature(
    key: &VerifyingKey,
    tag: &[u8],
    body: &[u8],
    signature: &SignatureBytes,
) -> Result<(), BundleError> {
    key.verify_strict(
        &signed_message(tag, body),
        &Signature::from_bytes(&signature.0),
    )
    .map_err(|_| BundleError::BadSignature)
}

fn tagged_digest(tag: &[u8], parts: &[&[u8]]) -> Digest {
    let mut h = Sha256::new();
    h.update(tag);
    for part in parts {
        h.update(part);
    }
    Digest(h.finalize().into())
}

fn certificates_digest(certificates: &[Vec<u8>]) -> Digest {
    let mut h = Sha256::new();
    h.update(CERTIFICATES_TAG);
    h.update((certificates.len() as u64).to_be_bytes());
    for c in certificates {
        h.update((c.len() as u64).to_be_bytes());
        h.update(c);
    }
    Digest(h.finalize().into())
}

/// Appends `value` as postcard writes a length or integer (LEB128).
fn push_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, EventPayload, ReplayStarted};

    const NODE: &str = "n1";

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn stream(count: u64) -> Vec<SealedEvent> {
        let mut prev = Digest::GENESIS;
        (1..=count)
            .map(|seq| {
                let e = SealedEvent::seal(Event {
                    node_id: NODE.to_owned(),
                    seq,
                    timestamp: Timestamp::from_secs(1_000 + seq as i64),
                    prev_hash: prev,
                    payload: EventPayload::ReplayStarted(ReplayStarted { backlog: seq }),
                });
                prev = e.hash;
                e
            })
            .collect()
    }

    fn header() -> BundleHeader {
        BundleHeader {
            counter: 1,
            created_at: Timestamp::from_secs(10),
            expires_at: Timestamp::from_secs(20),
            region: "region-a".into(),
            aggregator: None,
        }
    }

    fn build(events: &[SealedEvent], every: usize, compression: Compression) -> Vec<u8> {
        let k = key(1);
        let mut w = BundleWriter::new(NODE);
        for chunk in events.chunks(every) {
            for e in chunk {
                w.push_event(e);
            }
            let head = w.head();
            w.push_checkpoint(Checkpoint::sign(&k, NODE, head.seq, head.hash));
        }
        w.finish(&k, &[vec![1, 2, 3], vec![4]], header(), compression)
    }

    #[test]
    fn the_writer_encodes_exactly_what_postcard_would() {
        let events = stream(3);
        let k = key(1);
        let cp = Checkpoint::sign(&k, NODE, 3, events[2].hash);
        let mut w = BundleWriter::new(NODE);
        events.iter().for_each(|e| w.push_event(e));
        w.push_checkpoint(cp.clone());
        let file = w.finish(&k, &[], header(), Compression::None);
        let envelope: BundleEnvelope =
            decode_versioned(&file[BUNDLE_MAGIC.len()..], MAX_BUNDLE_BYTES).expect("decodes");
        let reference = EventSection {
            events: events.iter().map(|e| RawBytes(e.bytes.clone())).collect(),
            checkpoints: vec![cp],
        };
        assert_eq!(
            envelope.section.0,
            postcard::to_allocvec(&reference).expect("encodes")
        );
    }

    #[test]
    fn round_trip_plain_and_compressed() {
        let events = stream(25);
        for compression in [Compression::None, Compression::Zstd] {
            let file = build(&events, 10, compression);
            let bundle = decode_bundle(&file).expect("verifies");
            assert_eq!(bundle.events(), events.as_slice());
            assert_eq!(bundle.manifest().first_seq, 1);
            assert_eq!(
                bundle.manifest().head(),
                ChainHead {
                    seq: 25,
                    hash: events[24].hash
                }
            );
            assert_eq!(bundle.certificates(), &[vec![1, 2, 3], vec![4]]);
            let segments = bundle.into_segments();
            let sizes: Vec<usize> = segments.iter().map(|(e, _)| e.len()).collect();
            assert_eq!(sizes, vec![10, 10, 5]);
            assert!(
                segments
                    .iter()
                    .all(|(e, cp)| e.last().map(|l| l.event.seq) == Some(cp.seq))
            );
        }
    }

    #[test]
    fn overlong_length_prefix_is_non_canonical() {
        let events = stream(2);
        let file = build(&events, 10, Compression::None);
        // The envelope starts with the manifest's length (a varint): add a
        // continuation byte that adds nothing to its value.
        let at = BUNDLE_MAGIC.len() + 2;
        let width = file[at..]
            .iter()
            .position(|b| b & 0x80 == 0)
            .expect("varint")
            + 1;
        let mut altered = file[..at + width].to_vec();
        altered[at + width - 1] |= 0x80;
        altered.push(0x00);
        altered.extend_from_slice(&file[at + width..]);
        assert_eq!(
            decode_bundle(&altered).err(),
            Some(BundleError::NonCanonical)
        );
    }

    #[test]
    fn receipts_round_trip_and_refuse_tampering() {
        let k = key(9);
        let receipt = Receipt {
            node_id: NODE.into(),
            head: ChainHead {
                seq: 5,
                hash: Digest([3; 32]),
            },
            bundle_counter: 2,
            bundle_first_seq: 1,
            bundle_last_seq: 5,
            new_events: 5,
            aggregator: "agg".into(),
            region: "region-a".into(),
            issued_at: Timestamp::from_secs(5),
            desired: None,
            aggregator_key: KeyBytes([0; 32]),
            certificates_digest: Digest::GENESIS,
        };
        let file = encode_receipt(&k, receipt.clone(), &[vec![7; 10]]);
        let back = decode_receipt(&file).expect("verifies");
        assert_eq!(back.receipt.head, receipt.head);
        assert_eq!(
            back.receipt.aggregator_key,
            KeyBytes(k.verifying_key().to_bytes())
        );
        for i in 0..file.len() {
            for bit in 0..8 {
                let mut f = file.clone();
                f[i] ^= 1 << bit;
                assert!(decode_receipt(&f).is_err(), "flip at byte {i} bit {bit}");
            }
        }
        assert_eq!(decode_bundle(&file).err(), Some(BundleError::NotABundle));
    }
}
