//! Why a journal operation failed.

use sx_common::codec::DecodeError;
use sx_common::{Digest, VerifyError};

/// Why a [`Journal`](super::Journal) operation failed. A failed write
/// changed nothing: neither the file nor the in-memory head.
///
/// Variants wrapping a cause expose it as [`std::error::Error::source`]
/// and do not repeat it in their own message: print the whole chain
/// (`{:#}` through `anyhow`, or walk `source()`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// The redb file could not be created or opened (I/O, already open by
    /// another process, needs an upgrade, ...).
    #[error("journal database")]
    Database(#[from] redb::DatabaseError),
    /// A read or write transaction could not begin.
    #[error("journal transaction")]
    Transaction(#[from] redb::TransactionError),
    /// A table could not be opened (missing, or of another type).
    #[error("journal table")]
    Table(#[from] redb::TableError),
    /// Reading or writing the file failed.
    #[error("journal storage")]
    Storage(#[from] redb::StorageError),
    /// The durable commit failed; the transaction's writes are not stored.
    #[error("journal commit")]
    Commit(#[from] redb::CommitError),
    /// A stored event's bytes do not decode.
    #[error("stored event at seq {seq} does not decode")]
    Decode {
        seq: u64,
        #[source]
        source: DecodeError,
    },
    /// The stored chain does not verify. `seq` is the checkpoint (or event)
    /// closing the segment that failed; `source` says exactly what is wrong.
    #[error("journal does not verify at seq {seq}")]
    Verify {
        seq: u64,
        #[source]
        source: VerifyError,
    },
    /// Held events past the last checkpoint: nothing signed covers them.
    #[error("events from seq {from_seq} to {head_seq} are not covered by any checkpoint")]
    Uncovered { from_seq: u64, head_seq: u64 },
    /// The journal belongs to another node than expected.
    #[error("journal belongs to node {found:?}, expected {expected:?}")]
    WrongNode { expected: String, found: String },
    /// The signing key is not the one recorded when the journal was created.
    #[error("signing key does not match the public key recorded in the journal")]
    KeyMismatch,
    /// The signing key was the node's key until a certificate rotation
    /// retired it with the checkpoint at `last_seq`.
    #[error(
        "signing key was retired by the certificate rotation at seq {last_seq}; use the current node key"
    )]
    KeyRetired { last_seq: u64 },
    /// A rotation to the current key or to a retired one.
    #[error("the new key is the current node key or a retired one: a rotation needs a fresh key")]
    KeyReused,
    /// The file holds no journal (no node id recorded).
    #[error("not a journal: no node id recorded in its meta table")]
    NotInitialised,
    /// `create` on a file that already holds a journal.
    #[error("a journal for node {node_id:?} already exists in this file")]
    AlreadyInitialised { node_id: String },
    /// The file was written by a journal format this build does not read.
    #[error("journal format {found} is not supported (this build reads {expected})")]
    UnsupportedFormat { found: u32, expected: u32 },
    /// A meta entry is missing or malformed.
    #[error("journal meta entry {key:?} is corrupt: {reason}")]
    CorruptMeta { key: &'static str, reason: String },
    /// A stored checkpoint row is malformed.
    #[error("stored checkpoint at seq {seq} is corrupt ({len} bytes)")]
    CorruptCheckpoint { seq: u64, len: usize },
    /// An event could not be encoded (never happens for well-formed
    /// payloads; reported rather than stored wrong).
    #[error("event does not encode")]
    Encode(#[source] postcard::Error),
    /// An append with no events: a checkpoint covers at least one.
    #[error("nothing to append")]
    EmptyAppend,
    /// An event whose canonical encoding exceeds what any reader accepts.
    #[error("event of {size} bytes exceeds the {limit}-byte limit")]
    EventTooLarge { size: usize, limit: usize },
    /// A read from a seq whose events were pruned.
    #[error("seq {requested} was pruned (first held seq is {first_held})")]
    Pruned { requested: u64, first_held: u64 },
    /// An ack, receipt or export mark beyond the journal head.
    #[error("mark at seq {seq} is beyond the journal head {head}")]
    AckBeyondHead { seq: u64, head: u64 },
    /// An ack or receipt whose hash is not the stored event's hash: the
    /// aggregator holds another history (a fork).
    #[error("ack for seq {seq} names hash {offered} but the journal holds {stored}")]
    AckHashMismatch {
        seq: u64,
        stored: Digest,
        offered: Digest,
    },
}
