//! The aggregator's event store: per-node verified streams, behind a trait
//! so another log (a replicated one) can stand in for the embedded redb.
//!
//! Invariants every implementation keeps:
//! - a node's stream holds seq 1..=head without gaps, every event verified
//!   against the node's key and chained to the one before;
//! - [`EventStore::append`] commits all accepted submissions in one durable
//!   transaction and returns only after it is durable; a rejected
//!   submission changes no event (fork evidence is kept apart);
//! - resending what is held is harmless: identical events are deduplicated.

mod redb_store;
pub mod run;

pub use redb_store::RedbStore;

use serde::{Deserialize, Serialize};
use sx_common::chain::{ChainHead, Checkpoint, Digest, SealedEvent};
use sx_common::event::SyncPath;
use sx_common::protocol::Rejection;
use sx_common::time::Timestamp;

/// One batch offered for one node, by QUIC ingest or bundle import.
#[derive(Clone, Debug)]
pub struct Submission {
    pub node_id: String,
    /// The node's public key, from its verified certificate.
    pub key: ed25519_dalek::VerifyingKey,
    /// SHA-256 fingerprint of that certificate.
    pub cert_fingerprint: String,
    pub events: Vec<SealedEvent>,
    pub checkpoint: Checkpoint,
    pub via: SyncPath,
    pub received_at: Timestamp,
    /// Whether this is news from the node (a QUIC batch, or a bundle newer
    /// than every bundle imported before): only news moves the node's last
    /// sync, so re-importing an old bundle does not make a silent node
    /// look synced.
    pub news: bool,
}

/// A submission accepted and durably committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admitted {
    /// The node's durable head after the commit.
    pub head: ChainHead,
    /// Seqs newly stored by this submission (empty range: all duplicates).
    pub new_from: u64,
    pub new_count: u64,
}

/// What the store knows of a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node_id: String,
    /// Durable head: everything up to it is stored and acknowledged.
    pub head: ChainHead,
    pub first_seen: Timestamp,
    /// When the node's stream was last confirmed (any accepted submission).
    pub last_sync: Option<Timestamp>,
    pub last_sync_via: Option<SyncPath>,
    pub cert_fingerprint: String,
    /// Ed25519 public key the stream verifies against.
    pub public_key: Digest,
    /// Storage index of the node (internal key prefix).
    pub index: u32,
}

/// Evidence of a fork: a validly signed batch that contradicts the stored
/// stream. Kept, never applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkEvidence {
    pub node_id: String,
    pub seq: u64,
    pub stored: Digest,
    pub offered: Digest,
    pub checkpoint: Checkpoint,
    pub detected_at: Timestamp,
    pub via: SyncPath,
}

/// Storage failures (as opposed to rejections of bad input).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("event store: {0}")]
    Storage(#[from] redb::Error),
    #[error("event store holds undecodable data for node {node} seq {seq}: {source}")]
    Corrupt {
        node: String,
        seq: u64,
        #[source]
        source: sx_common::codec::DecodeError,
    },
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Storage(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// The event store of a region.
pub trait EventStore: Send + Sync {
    /// Verifies and appends submissions in one durable transaction. Returns,
    /// per submission, what was admitted or why it was rejected. An `Err`
    /// means nothing was committed.
    fn append(
        &self,
        submissions: &[Submission],
    ) -> Result<Vec<Result<Admitted, Rejection>>, StoreError>;

    /// The durable head of a node (zero if unknown).
    fn head(&self, node_id: &str) -> Result<ChainHead, StoreError>;

    fn node(&self, node_id: &str) -> Result<Option<NodeRecord>, StoreError>;

    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError>;

    /// Up to `max` events of a node from `from_seq` on, in order.
    fn read(
        &self,
        node_id: &str,
        from_seq: u64,
        max: usize,
    ) -> Result<Vec<SealedEvent>, StoreError>;

    /// Fork evidence, oldest first.
    fn forks(&self) -> Result<Vec<ForkEvidence>, StoreError>;

    /// Total number of events held.
    fn event_count(&self) -> Result<u64, StoreError>;

    /// Durably records a desired-state change (the aggregator's own event
    /// stream) and returns it with its seq.
    fn append_desired(
        &self,
        at: Timestamp,
        by: &str,
        change: sx_common::desired::DesiredChangeKind,
    ) -> Result<sx_common::desired::DesiredChange, StoreError>;

    /// Desired-state changes with seq above `after`, in order.
    fn desired_changes(
        &self,
        after: u64,
    ) -> Result<Vec<sx_common::desired::DesiredChange>, StoreError>;
}

/// How many events [`read_chunks`] reads at a time.
pub const READ_CHUNK: usize = 4_096;

/// Passes a node's stored events with seq in `from..=to` to `f`, in order,
/// [`READ_CHUNK`] at a time, until they run out or `f` breaks.
pub fn read_chunks(
    store: &dyn EventStore,
    node_id: &str,
    from: u64,
    to: u64,
    mut f: impl FnMut(&[SealedEvent]) -> std::ops::ControlFlow<()>,
) -> Result<(), StoreError> {
    let mut next = from.max(1);
    while next <= to {
        let max = usize::try_from(to - next + 1).map_or(READ_CHUNK, |n| n.min(READ_CHUNK));
        let chunk = store.read(node_id, next, max)?;
        let Some(last) = chunk.last().map(|e| e.event.seq) else {
            break;
        };
        if f(&chunk).is_break() {
            break;
        }
        next = last + 1;
    }
    Ok(())
}
