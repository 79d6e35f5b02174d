//! The node's durable, hash-chained, signed event journal.
//!
//! Every twin event the node records goes through a [`Journal`]: it gives the
//! event the next `seq`, chains it to the head (`prev_hash`), stores its
//! canonical bytes and, in the same durable transaction, a [`Checkpoint`]
//! signed with the node key. The uplink and bundle export read from it; acks
//! and receipts move its [`Marks`]; [`Journal::prune`] forgets what the
//! aggregator durably holds once the retention window has passed.
//!
//! - [`RedbJournal`] is the embedded implementation (one redb file).
//! - [`data_dir`] is the agent's data directory (identity files + journal)
//!   and the local operations the CLI runs on it (`init`, `record`, ...).
//! - [`rotation`] rotates the node certificate and key: the rotation event
//!   signed with the old key, the key history, the new files installed.
//!
//! # Invariants
//!
//! 1. Events are held with gapless seq from [`Marks::first_held_seq`] to
//!    the head; each one's `prev_hash` is the hash of the one before (the
//!    hash of the last pruned event for the first held one).
//! 2. Every append is one durable transaction that ends with a checkpoint
//!    of the new head, so every held event is covered by a signed
//!    checkpoint at or above it.
//! 3. The in-memory head only moves after the commit returned: an append
//!    that returned `Ok` survives a crash, one that did not left nothing.
//! 4. Nothing above `max(acked, receipted)` and nothing younger than the
//!    retention window is ever pruned.

pub mod data_dir;
mod error;
mod redb_journal;
pub mod rotation;
mod seal;

pub use data_dir::{DataDir, record_local};
pub use error::JournalError;
pub use redb_journal::{CHECKPOINTS_TABLE, META_TABLE, RUNS_TABLE, RedbJournal, RetiredKey};

use serde::{Deserialize, Serialize};
use sx_common::{ChainHead, Checkpoint, Digest, EventPayload, SealedEvent, Span, Timestamp};

/// A node's local event journal.
///
/// Invariant: events are stored with gapless seq from the first held seq to
/// [`head`](Journal::head); every append transaction ends with a signed
/// [`Checkpoint`] of the new head; nothing is pruned above
/// `max(acked, receipted)` or inside the retention window.
pub trait Journal {
    /// The node whose stream this is (fixed at creation).
    fn node_id(&self) -> &str;

    /// The seq and hash of the last event appended (seq 0 and
    /// [`Digest::GENESIS`] before the first). Held in memory; moves only
    /// after a commit returned.
    fn head(&self) -> ChainHead;

    /// Appends `items` as consecutive events (each with its own timestamp)
    /// in ONE durable transaction that also stores a checkpoint of the new
    /// head signed with the node key. Returns the sealed events and that
    /// checkpoint once the commit has returned. An empty `items` is refused
    /// ([`JournalError::EmptyAppend`]) since a checkpoint covers at least
    /// one event. The payloads are copied into the events; see
    /// [`append_owned`](Journal::append_owned) to hand them over instead.
    fn append(
        &mut self,
        items: &[(Timestamp, EventPayload)],
    ) -> Result<AppendOutcome, JournalError>;

    /// [`append`](Journal::append), moving the payloads into the events
    /// instead of copying them: for callers that built the items only to
    /// append them (the daemon's journal handle), one copy less per event
    /// on the append path.
    fn append_owned(
        &mut self,
        items: Vec<(Timestamp, EventPayload)>,
    ) -> Result<AppendOutcome, JournalError> {
        self.append(&items)
    }

    /// Up to `max` events from `from_seq` on, in seq order: the canonical
    /// bytes as stored and their hash. Empty when `from_seq` is above the
    /// head; [`JournalError::Pruned`] when it lies in the pruned prefix.
    fn read_range(&self, from_seq: u64, max: usize) -> Result<Vec<SealedEvent>, JournalError>;

    /// The checkpoints whose seq lies in `[from_seq, to_seq]`, plus the first
    /// checkpoint at or above `to_seq`, so a reader can always close a batch
    /// ending at `to_seq` with a signed checkpoint (the extra one covers
    /// events past `to_seq`, which the reader then also sends).
    fn checkpoints(&self, from_seq: u64, to_seq: u64) -> Result<Vec<Checkpoint>, JournalError>;

    /// The first checkpoint whose seq is `seq` or above.
    fn checkpoint_at_or_after(&self, seq: u64) -> Result<Option<Checkpoint>, JournalError>;

    /// How many checkpoints are held.
    fn checkpoint_count(&self) -> Result<u64, JournalError>;

    /// The delivery marks (acked, exported, receipted) and the first held seq.
    fn marks(&self) -> Marks;

    /// Records that the aggregator durably holds everything up to `seq`,
    /// whose hash it reports as `hash`. Refuses `seq` above the head
    /// ([`JournalError::AckBeyondHead`]) and a hash other than the stored
    /// one ([`JournalError::AckHashMismatch`]). Monotonic: an ack at or
    /// below the current one changes nothing (after the hash check). An ack
    /// inside the pruned prefix, where the hash is no longer held, changes
    /// nothing either.
    fn set_acked(&mut self, seq: u64, hash: Digest) -> Result<(), JournalError>;

    /// Records that events up to `seq` were written to a bundle.
    /// Monotonic; refuses `seq` above the head.
    fn set_exported(&mut self, seq: u64) -> Result<(), JournalError>;

    /// Records an aggregator receipt (for a bundle) covering events up to
    /// `seq` with hash `hash`. Same checks and monotonicity as
    /// [`set_acked`](Journal::set_acked).
    fn set_receipted(&mut self, seq: u64, hash: Digest) -> Result<(), JournalError>;

    /// Deletes the leading events (and the checkpoints up to the last of
    /// them) with `seq <= max(acked, receipted)` whose timestamp is older
    /// than `now - retention`, stopping at the first event that is not.
    /// Keeps the seq and hash of the last pruned event so the chain still
    /// verifies from the first held event. Returns how many events went.
    ///
    /// An implementation may delete events only in whole units of storage
    /// ([`RedbJournal`]: whole runs, the events of one append transaction,
    /// at most [`sx_common::run::MAX_RUN`]): a unit that straddles the limit
    /// or holds one event inside the window is kept whole, with everything
    /// after it. So pruning may keep up to a unit's worth more than the
    /// rule allows, never less; [`Marks::first_held_seq`] is always the
    /// first seq actually held.
    fn prune(&mut self, now: Timestamp, retention: Span) -> Result<u64, JournalError>;

    /// Verifies the whole held journal: every event decodes and sits under
    /// its own seq, the chain links from the last pruned hash to the head,
    /// and every segment is closed by a checkpoint signed by the node key
    /// of its time (the current key, or the retired key whose range holds
    /// the checkpoint's seq after a certificate rotation), one
    /// [`sx_common::chain::verify_batch`] per checkpoint.
    fn verify(&self) -> Result<VerifyReport, JournalError>;
}

/// What a successful [`Journal::append`] durably stored.
#[derive(Clone, Debug, PartialEq)]
pub struct AppendOutcome {
    /// The new events, in seq order, exactly as stored.
    pub events: Vec<SealedEvent>,
    /// The checkpoint of the new head, stored in the same transaction.
    pub checkpoint: Checkpoint,
}

impl AppendOutcome {
    /// The head after this append.
    pub fn head(&self) -> ChainHead {
        ChainHead {
            seq: self.checkpoint.seq,
            hash: self.checkpoint.head,
        }
    }
}

/// The journal's delivery marks. Every mark only ever grows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Marks {
    /// Highest seq the aggregator acknowledged as durably stored.
    pub acked_seq: u64,
    /// Hash of the event at `acked_seq` (genesis when 0).
    pub acked_hash: Digest,
    /// Highest seq written to an exported bundle.
    pub exported_seq: u64,
    /// Highest seq covered by an aggregator receipt (bundle path).
    pub receipted_seq: u64,
    /// Hash of the event at `receipted_seq` (genesis when 0).
    pub receipted_hash: Digest,
    /// The first seq still held (readable, and verified from the last
    /// pruned hash): one above the last pruned event, so every event from
    /// here to the head is held. Pruning removes whole runs, so events that
    /// are delivered and past the retention may still be held from here
    /// on (at most a run's worth more than the rule requires, never less).
    /// `head.seq + 1` when every event is pruned (and 1 for a journal
    /// nothing was ever pruned from).
    pub first_held_seq: u64,
}

impl Marks {
    /// The highest seq the aggregator is known to hold, by either path.
    pub fn delivered_seq(&self) -> u64 {
        self.acked_seq.max(self.receipted_seq)
    }

    /// Events the aggregator is not yet known to hold.
    pub fn backlog(&self, head: ChainHead) -> u64 {
        head.seq.saturating_sub(self.delivered_seq())
    }
}

/// The result of a successful [`Journal::verify`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub node_id: String,
    /// First held seq: verification starts from the last pruned hash.
    pub first_held_seq: u64,
    /// The verified head (equal to the journal's head).
    pub head: ChainHead,
    /// Number of events checked.
    pub events: u64,
    /// Number of checkpoint signatures checked.
    pub checkpoints: u64,
    /// Keys certificate rotations retired: their checkpoints verified
    /// against them.
    pub retired_keys: u64,
}
