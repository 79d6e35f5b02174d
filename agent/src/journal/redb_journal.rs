//! [`RedbJournal`]: the journal in one redb file.
//!
//! # On-disk layout
//!
//! | table | key | value |
//! | --- | --- | --- |
//! | [`RUNS_TABLE`] `event_runs` | seq `u64` of the run's first event | a [run](sx_common::run) of consecutive events: each entry the event's canonical postcard bytes, exactly as hashed |
//! | [`CHECKPOINTS_TABLE`] `checkpoints` | seq `u64` | head hash (32 bytes) then Ed25519 signature (64 bytes) |
//! | [`META_TABLE`] `meta` | name `&str` | see below |
//!
//! Meta entries: `format` (u32 BE), `node_id` (UTF-8), `public_key` (32
//! raw Ed25519 bytes: the current key), `key_history` (the retired keys,
//! see below), and the marks, each seq as u64 BE optionally followed by a
//! 32-byte hash: `acked` (seq+hash), `exported` (seq), `receipted`
//! (seq+hash), `pruned` (seq+hash of the last pruned event).
//!
//! # Runs
//!
//! An append stores the events of its transaction as ONE run row (or a
//! few: a run holds at most [`MAX_RUN`] events and ends before
//! [`MAX_RUN_BYTES`]), keyed by the seq of its
//! first event: a B-tree insert per transaction instead of per event.
//! Runs never overlap and leave no gap, so the run holding `seq` is the
//! last one whose key is at most `seq` (a `..=seq` range query), and the
//! event is entry `seq - key` in it. Runs are written once and only ever
//! deleted whole, by [`prune`](Journal::prune).
//!
//! # Formats
//!
//! `format` 3 is this layout (with or without a key history). Formats 1
//! (one key) and 2 (a key history) are the older layout with one `events`
//! row per event (seq → canonical bytes); [`RedbJournal::open`] converts
//! such a journal to runs in ONE durable write transaction (a crash
//! during it leaves the old layout, converted again at the next open).
//! A build that knows only formats 1 and 2 refuses a format 3 journal
//! clearly instead of reading it as empty.
//!
//! # Key history
//!
//! A certificate rotation ([`RedbJournal::rotate_key`]) retires the node
//! key: `key_history` holds one 48-byte record per retired key, oldest
//! first: the first and last checkpoint seq it signed (u64 BE each) and
//! its 32-byte public key. Checkpoints above the last retired seq verify
//! against `public_key`.
//!
//! Event hashes are not stored: they are recomputed from the bytes on read
//! (SHA-256 over a few hundred bytes costs far less than the extra 32 bytes
//! per event would on every write), which also means a reader never trusts
//! a stored hash. The head is not stored either: it is the last event of
//! the last run (or the `pruned` mark when every event is pruned), read
//! once at open and then kept in memory. So an append writes exactly its
//! run row(s) and one checkpoint row.

use super::seal::Sealer;
use super::{AppendOutcome, Journal, JournalError, Marks, VerifyReport};
use ed25519_dalek::{SigningKey, VerifyingKey};
use redb::{
    AccessGuard, Database, ReadOnlyTable, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition,
};
use std::fmt;
use std::path::Path;
use sx_common::chain::{SignatureBytes, verify_batch};
use sx_common::run::{self, MAX_RUN, Run};
use sx_common::{
    ChainHead, Checkpoint, Digest, EventPayload, SealedEvent, Span, Timestamp, VerifyError,
};

/// Runs of consecutive events by the seq of their first event: the
/// canonical postcard bytes of each, in the [run](sx_common::run) encoding.
pub const RUNS_TABLE: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("event_runs");
/// Events by seq, one row each (canonical postcard bytes): the layout of
/// formats 1 and 2, converted to runs on open.
const LEGACY_EVENTS_TABLE: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("events");
/// Checkpoints by seq: 32-byte head hash then 64-byte signature.
pub const CHECKPOINTS_TABLE: TableDefinition<'static, u64, &[u8]> =
    TableDefinition::new("checkpoints");
/// Identity and marks.
pub const META_TABLE: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("meta");

/// The old layout (one `events` row per event), one key.
const FORMAT_SINGLE_KEY: u32 = 1;
/// The old layout once a key was retired (`key_history` present).
const FORMAT_KEY_HISTORY: u32 = 2;
/// Events in runs; a key history may be present. Written by this build.
const FORMAT_RUNS: u32 = 3;
/// A run buffer kept between appends up to this capacity, freed above it.
const RUN_BUF_KEEP: usize = 4 << 20;
/// A run ends before the event that would take its bytes past this (a
/// run of one event may be larger: an event is at most 1 MiB), so reading
/// one event never reads more than a few MiB.
const MAX_RUN_BYTES: usize = 4 << 20;
const CHECKPOINT_ROW_LEN: usize = 32 + 64;
const KEY_RECORD_LEN: usize = 8 + 8 + 32;

const META_FORMAT: &str = "format";
const META_NODE_ID: &str = "node_id";
const META_PUBLIC_KEY: &str = "public_key";
const META_KEY_HISTORY: &str = "key_history";
const META_ACKED: &str = "acked";
const META_EXPORTED: &str = "exported";
const META_RECEIPTED: &str = "receipted";
const META_PRUNED: &str = "pruned";

/// A [`Journal`] stored in a redb file; every write is a durable
/// ([`redb::Durability::Immediate`]) commit.
///
/// The head and the marks live in memory, loaded at open and updated only
/// after a commit returned. The file is opened exclusively: one
/// `RedbJournal` per file at a time, in one process.
pub struct RedbJournal {
    db: Database,
    node_id: String,
    key: SigningKey,
    verifying_key: VerifyingKey,
    head: ChainHead,
    /// Seq and hash of the last pruned event (0 and genesis if none).
    pruned: ChainHead,
    acked: ChainHead,
    exported_seq: u64,
    receipted: ChainHead,
    /// Retired keys, oldest first.
    key_history: Vec<RetiredKey>,
    sealer: Sealer,
    /// Scratch for encoding runs, reused across appends.
    run_buf: Vec<u8>,
}

/// A node key a certificate rotation retired, and the checkpoints it
/// signed: every checkpoint with seq in `first_seq..=last_seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetiredKey {
    pub first_seq: u64,
    /// The seq of the rotation event: the last one this key signed.
    pub last_seq: u64,
    pub public_key: VerifyingKey,
}

impl fmt::Debug for RedbJournal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the signing key.
        f.debug_struct("RedbJournal")
            .field("node_id", &self.node_id)
            .field("head", &self.head)
            .field("marks", &self.marks())
            .finish_non_exhaustive()
    }
}

impl RedbJournal {
    /// Up to `max` events' canonical bytes from `from_seq` on, without
    /// decoding them, and the head (seq, hash) after the last one: what the
    /// uplink sends. Only the last event is decoded (to hash it). Empty
    /// when `from_seq` is above the head.
    pub fn read_raw(
        &self,
        from_seq: u64,
        max: usize,
    ) -> Result<(Vec<Vec<u8>>, Option<ChainHead>), JournalError> {
        if self.pruned.seq > 0 && from_seq <= self.pruned.seq {
            return Err(JournalError::Pruned {
                requested: from_seq,
                first_held: self.pruned.seq + 1,
            });
        }
        if max == 0 || from_seq > self.head.seq {
            return Ok((Vec::new(), None));
        }
        let txn = self.db.begin_read()?;
        let table = txn.open_table(RUNS_TABLE)?;
        let mut cursor = Cursor::new(&table, from_seq)?;
        let mut out = Vec::with_capacity(max.min(4_096));
        let mut last_seq = 0;
        while out.len() < max {
            let Some(row) = cursor.next() else { break };
            let (seq, bytes) = row?;
            follows(&mut last_seq, seq)?;
            out.push(bytes.to_vec());
        }
        let head = match out.last() {
            Some(bytes) => Some(decode_event(last_seq, bytes)?.head()),
            None => None,
        };
        Ok((out, head))
    }

    /// The node's twin, folded from every held event (the derived fields
    /// computed once, after the last); `also` sees each event too, in
    /// order, in the same pass.
    pub fn fold_twin(
        &self,
        mut also: impl FnMut(&sx_common::Event),
    ) -> Result<sx_common::DigitalTwin, JournalError> {
        let mut twin = sx_common::DigitalTwin::default();
        self.for_each_event(1, |e| {
            sx_common::fold::fold_event(&mut twin, e);
            also(e);
        })?;
        sx_common::fold::derive(&mut twin);
        Ok(twin)
    }

    /// Calls `f` with every held event from `from_seq` on, in order, decoded
    /// from one read transaction without copying or hashing the stored
    /// bytes: for folding the node's twin, which trusts its own journal
    /// (`verify` checks the chain and checkpoints).
    pub fn for_each_event(
        &self,
        from_seq: u64,
        mut f: impl FnMut(&sx_common::Event),
    ) -> Result<(), JournalError> {
        let from_seq = from_seq.max(self.pruned.seq + 1);
        if from_seq > self.head.seq {
            return Ok(());
        }
        let txn = self.db.begin_read()?;
        let table = txn.open_table(RUNS_TABLE)?;
        let mut cursor = Cursor::new(&table, from_seq)?;
        let mut last_seq = 0;
        while let Some(row) = cursor.next() {
            let (seq, bytes) = row?;
            follows(&mut last_seq, seq)?;
            let event: sx_common::Event = sx_common::codec::decode_exact(bytes)
                .map_err(|source| JournalError::Decode { seq, source })?;
            f(&event);
        }
        Ok(())
    }

    /// Creates the journal of `node_id` in the redb file at `path` (created
    /// if missing), recording the node id and `key`'s public key. Refuses a
    /// file that already holds a journal.
    pub fn create(
        path: impl AsRef<Path>,
        node_id: &str,
        key: SigningKey,
    ) -> Result<Self, JournalError> {
        let db = Database::create(path)?;
        let verifying_key = key.verifying_key();
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(META_TABLE)?;
            let existing = meta
                .get(META_NODE_ID)?
                .map(|v| String::from_utf8_lossy(v.value()).into_owned());
            if let Some(node_id) = existing {
                return Err(JournalError::AlreadyInitialised { node_id });
            }
            meta.insert(META_FORMAT, FORMAT_RUNS.to_be_bytes().as_slice())?;
            meta.insert(META_NODE_ID, node_id.as_bytes())?;
            meta.insert(META_PUBLIC_KEY, verifying_key.as_bytes().as_slice())?;
            txn.open_table(RUNS_TABLE)?;
            txn.open_table(CHECKPOINTS_TABLE)?;
        }
        txn.commit()?;
        Ok(RedbJournal {
            db,
            node_id: node_id.to_owned(),
            key,
            verifying_key,
            head: ChainHead::default(),
            pruned: ChainHead::default(),
            acked: ChainHead::default(),
            exported_seq: 0,
            receipted: ChainHead::default(),
            key_history: Vec::new(),
            sealer: Sealer::default(),
            run_buf: Vec::new(),
        })
    }

    /// Opens an existing journal. Refuses a file without a journal
    /// ([`JournalError::NotInitialised`]) and a key whose public key is not
    /// the journal's current one ([`JournalError::KeyMismatch`], or
    /// [`JournalError::KeyRetired`] for a key a rotation retired). Checks
    /// that the last held event is covered by the last checkpoint, so a
    /// journal is never extended from an unsigned head.
    pub fn open(path: impl AsRef<Path>, key: SigningKey) -> Result<Self, JournalError> {
        let db = Database::open(path)?;
        let state = load_state(&db, &key)?;
        Ok(RedbJournal {
            db,
            node_id: state.node_id,
            verifying_key: key.verifying_key(),
            key,
            head: state.head,
            pruned: state.pruned,
            acked: state.acked,
            exported_seq: state.exported_seq,
            receipted: state.receipted,
            key_history: state.key_history,
            sealer: Sealer::default(),
            run_buf: Vec::new(),
        })
    }

    /// The current public key: new checkpoints are signed with its key.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.verifying_key
    }

    /// The keys certificate rotations retired, oldest first.
    pub fn key_history(&self) -> &[RetiredKey] {
        &self.key_history
    }

    /// The public key the stored checkpoint at `seq` verifies against: the
    /// retired key whose range holds `seq`, else the current key.
    pub fn verifying_key_at(&self, seq: u64) -> VerifyingKey {
        key_at(&self.key_history, self.verifying_key, seq)
    }

    /// Signs a checkpoint of (node, `head`) with the current key, as the
    /// uplink does for each batch it sends.
    pub fn sign_checkpoint(&self, head: ChainHead) -> Checkpoint {
        Checkpoint::sign(&self.key, &self.node_id, head.seq, head.hash)
    }

    /// Rotates the node key: in ONE durable transaction, appends `rotation`
    /// (normally `trust.certificate_rotated`) as the last event signed with
    /// the current key, retires that key into the key history with the
    /// checkpoint range it signed, and makes `new_key` the current key.
    /// Every later checkpoint is signed with `new_key`; [`verify`] checks
    /// each stored checkpoint against the key of its range.
    ///
    /// Refuses `new_key` equal to the current key or to a retired one
    /// ([`JournalError::KeyReused`]). On any error nothing changed.
    ///
    /// [`verify`]: Journal::verify
    pub fn rotate_key(
        &mut self,
        rotation: (Timestamp, EventPayload),
        new_key: SigningKey,
    ) -> Result<AppendOutcome, JournalError> {
        let new_public = new_key.verifying_key();
        if new_public == self.verifying_key
            || self.key_history.iter().any(|k| k.public_key == new_public)
        {
            return Err(JournalError::KeyReused);
        }
        let events = self
            .sealer
            .seal_batch(&self.node_id, self.head, std::iter::once(rotation))?;
        let head = events
            .last()
            .map(SealedEvent::head)
            .ok_or(JournalError::EmptyAppend)?;
        let checkpoint = self.sign_checkpoint(head);
        let mut history = self.key_history.clone();
        history.push(RetiredKey {
            first_seq: history.last().map_or(1, |k| k.last_seq + 1),
            last_seq: head.seq,
            public_key: self.verifying_key,
        });
        let txn = self.db.begin_write()?;
        {
            insert_runs(&mut txn.open_table(RUNS_TABLE)?, &events, &mut self.run_buf)?;
            txn.open_table(CHECKPOINTS_TABLE)?
                .insert(head.seq, checkpoint_row(&checkpoint).as_slice())?;
            let mut meta = txn.open_table(META_TABLE)?;
            meta.insert(META_KEY_HISTORY, encode_key_history(&history).as_slice())?;
            meta.insert(META_PUBLIC_KEY, new_public.as_bytes().as_slice())?;
        }
        // Durable commit; on any error above, dropping `txn` aborts it.
        txn.commit()?;
        self.head = head;
        self.key_history = history;
        self.key = new_key;
        self.verifying_key = new_public;
        Ok(AppendOutcome { events, checkpoint })
    }

    /// Closes the file, reporting any error redb meets while doing so.
    pub fn close(self) -> Result<(), JournalError> {
        self.db.close()?;
        Ok(())
    }

    /// The seq and hash of the last pruned event (0 and genesis if none):
    /// the `prev_hash` the first held event must carry.
    pub fn pruned_head(&self) -> ChainHead {
        self.pruned
    }

    /// The stored hash of the event at `seq`, if it is still known.
    fn stored_hash(&self, seq: u64) -> Result<Option<Digest>, JournalError> {
        if seq == self.head.seq {
            return Ok(Some(self.head.hash));
        }
        if seq == self.pruned.seq {
            return Ok(Some(self.pruned.hash));
        }
        if seq < self.pruned.seq {
            return Ok(None);
        }
        let txn = self.db.begin_read()?;
        let runs = txn.open_table(RUNS_TABLE)?;
        let mut cursor = Cursor::new(&runs, seq)?;
        match cursor.next() {
            Some(Ok((held, bytes))) if held == seq => Ok(Some(decode_event(seq, bytes)?.hash)),
            Some(Err(e)) => Err(e),
            _ => Ok(None),
        }
    }

    /// Checks an ack or receipt against the journal; `Ok(true)` when it
    /// moves the mark currently at `current`.
    fn check_delivery(&self, seq: u64, hash: Digest, current: u64) -> Result<bool, JournalError> {
        if seq > self.head.seq {
            return Err(JournalError::AckBeyondHead {
                seq,
                head: self.head.seq,
            });
        }
        match self.stored_hash(seq)? {
            Some(stored) if stored != hash => Err(JournalError::AckHashMismatch {
                seq,
                stored,
                offered: hash,
            }),
            Some(_) => Ok(seq > current),
            // Inside the pruned prefix: already delivered, nothing to move.
            None => Ok(false),
        }
    }

    /// Stores freshly sealed events (at least one, continuing the head) and
    /// the checkpoint of their last one in one durable transaction; the
    /// head moves once the commit returned.
    fn store_batch(&mut self, events: Vec<SealedEvent>) -> Result<AppendOutcome, JournalError> {
        let head = events
            .last()
            .map(SealedEvent::head)
            .ok_or(JournalError::EmptyAppend)?;
        let txn = self.db.begin_write()?;
        insert_runs(&mut txn.open_table(RUNS_TABLE)?, &events, &mut self.run_buf)?;
        let checkpoint = self.sign_checkpoint(head);
        txn.open_table(CHECKPOINTS_TABLE)?
            .insert(head.seq, checkpoint_row(&checkpoint).as_slice())?;
        // Durable (Immediate) commit: only once it returned is the head ours.
        // On any error above, dropping `txn` aborts it and nothing changed.
        txn.commit()?;
        self.head = head;
        Ok(AppendOutcome { events, checkpoint })
    }

    /// Durably writes one meta entry.
    fn write_meta(&self, key: &'static str, value: &[u8]) -> Result<(), JournalError> {
        let txn = self.db.begin_write()?;
        txn.open_table(META_TABLE)?.insert(key, value)?;
        txn.commit()?;
        Ok(())
    }

    fn decode_checkpoint(&self, seq: u64, row: &[u8]) -> Result<Checkpoint, JournalError> {
        let (head, signature) = match (
            row.get(..32).and_then(|h| <[u8; 32]>::try_from(h).ok()),
            row.get(32..).and_then(|s| <[u8; 64]>::try_from(s).ok()),
        ) {
            (Some(h), Some(s)) => (h, s),
            _ => {
                return Err(JournalError::CorruptCheckpoint {
                    seq,
                    len: row.len(),
                });
            }
        };
        Ok(Checkpoint {
            node_id: self.node_id.clone(),
            seq,
            head: Digest(head),
            signature: SignatureBytes(signature),
        })
    }
}

impl Journal for RedbJournal {
    fn node_id(&self) -> &str {
        &self.node_id
    }

    fn head(&self) -> ChainHead {
        self.head
    }

    fn append(
        &mut self,
        items: &[(Timestamp, EventPayload)],
    ) -> Result<AppendOutcome, JournalError> {
        if items.is_empty() {
            return Err(JournalError::EmptyAppend);
        }
        let events = self
            .sealer
            .seal_batch(&self.node_id, self.head, items.iter().cloned())?;
        self.store_batch(events)
    }

    fn append_owned(
        &mut self,
        items: Vec<(Timestamp, EventPayload)>,
    ) -> Result<AppendOutcome, JournalError> {
        if items.is_empty() {
            return Err(JournalError::EmptyAppend);
        }
        let events = self
            .sealer
            .seal_batch(&self.node_id, self.head, items.into_iter())?;
        self.store_batch(events)
    }

    fn read_range(&self, from_seq: u64, max: usize) -> Result<Vec<SealedEvent>, JournalError> {
        if self.pruned.seq > 0 && from_seq <= self.pruned.seq {
            return Err(JournalError::Pruned {
                requested: from_seq,
                first_held: self.pruned.seq + 1,
            });
        }
        if max == 0 || from_seq > self.head.seq {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_read()?;
        let table = txn.open_table(RUNS_TABLE)?;
        let wanted = usize::try_from(self.head.seq - from_seq.max(1) + 1).unwrap_or(usize::MAX);
        let mut out = Vec::with_capacity(max.min(wanted));
        let mut cursor = Cursor::new(&table, from_seq)?;
        let mut last_seq = 0;
        while out.len() < max {
            let Some(row) = cursor.next() else { break };
            let (seq, bytes) = row?;
            follows(&mut last_seq, seq)?;
            out.push(decode_event(seq, bytes)?);
        }
        Ok(out)
    }

    fn checkpoints(&self, from_seq: u64, to_seq: u64) -> Result<Vec<Checkpoint>, JournalError> {
        if from_seq > to_seq {
            return Ok(self.checkpoint_at_or_after(to_seq)?.into_iter().collect());
        }
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CHECKPOINTS_TABLE)?;
        let mut out = Vec::new();
        for row in table.range(from_seq..)? {
            let (seq, bytes) = row?;
            let seq = seq.value();
            out.push(self.decode_checkpoint(seq, bytes.value())?);
            // Stop at the checkpoint at `to_seq`, or else the first above it.
            if seq >= to_seq {
                break;
            }
        }
        Ok(out)
    }

    fn checkpoint_at_or_after(&self, seq: u64) -> Result<Option<Checkpoint>, JournalError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CHECKPOINTS_TABLE)?;
        let mut rows = table.range(seq..)?;
        match rows.next() {
            Some(row) => {
                let (seq, bytes) = row?;
                Ok(Some(self.decode_checkpoint(seq.value(), bytes.value())?))
            }
            None => Ok(None),
        }
    }

    fn checkpoint_count(&self) -> Result<u64, JournalError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(CHECKPOINTS_TABLE)?.len()?)
    }

    fn marks(&self) -> Marks {
        Marks {
            acked_seq: self.acked.seq,
            acked_hash: self.acked.hash,
            exported_seq: self.exported_seq,
            receipted_seq: self.receipted.seq,
            receipted_hash: self.receipted.hash,
            first_held_seq: self.pruned.seq + 1,
        }
    }

    fn set_acked(&mut self, seq: u64, hash: Digest) -> Result<(), JournalError> {
        if self.check_delivery(seq, hash, self.acked.seq)? {
            let acked = ChainHead { seq, hash };
            // Without waiting for the disk: the uplink moves this mark on
            // every ack, and an fsync each time would stall the replay. The
            // mark reaches the disk with the next durable commit; after a
            // crash it can only lag (never lead), and the next handshake
            // re-learns the aggregator's durable position.
            let mut txn = self.db.begin_write()?;
            let _ = txn.set_durability(redb::Durability::None);
            txn.open_table(META_TABLE)?
                .insert(META_ACKED, encode_head(acked).as_slice())?;
            txn.commit()?;
            self.acked = acked;
        }
        Ok(())
    }

    fn set_exported(&mut self, seq: u64) -> Result<(), JournalError> {
        if seq > self.head.seq {
            return Err(JournalError::AckBeyondHead {
                seq,
                head: self.head.seq,
            });
        }
        if seq > self.exported_seq {
            self.write_meta(META_EXPORTED, &seq.to_be_bytes())?;
            self.exported_seq = seq;
        }
        Ok(())
    }

    fn set_receipted(&mut self, seq: u64, hash: Digest) -> Result<(), JournalError> {
        if self.check_delivery(seq, hash, self.receipted.seq)? {
            let receipted = ChainHead { seq, hash };
            self.write_meta(META_RECEIPTED, &encode_head(receipted))?;
            self.receipted = receipted;
        }
        Ok(())
    }

    fn prune(&mut self, now: Timestamp, retention: Span) -> Result<u64, JournalError> {
        let limit = self.marks().delivered_seq().min(self.head.seq);
        if limit <= self.pruned.seq {
            return Ok(0);
        }
        let retention_micros =
            i64::try_from(retention.as_secs()).map_or(i64::MAX, |s| s.saturating_mul(1_000_000));
        let cutoff = Timestamp::from_micros(now.as_micros().saturating_sub(retention_micros));
        let txn = self.db.begin_write()?;
        let last_pruned = {
            let mut runs = txn.open_table(RUNS_TABLE)?;
            // Whole runs only, oldest first: each must end at or below the
            // limit and hold only events older than the cutoff.
            let mut last: Option<ChainHead> = None;
            let mut next = self.pruned.seq + 1;
            'runs: for row in runs.range(self.pruned.seq + 1..=limit)? {
                let (first, value) = row?;
                let first = first.value();
                if first != next {
                    return Err(JournalError::Verify {
                        seq: first,
                        source: VerifyError::Gap {
                            expected: next,
                            got: first,
                        },
                    });
                }
                let run = parse_run(first, value.value())?;
                let run_last = first + run.len() as u64 - 1;
                if run_last > limit {
                    break;
                }
                for i in 0..run.len() - 1 {
                    let seq = first + i as u64;
                    let event: sx_common::Event =
                        sx_common::codec::decode_exact(run_entry(&run, first, i)?)
                            .map_err(|source| JournalError::Decode { seq, source })?;
                    if event.timestamp >= cutoff {
                        break 'runs;
                    }
                }
                let sealed = decode_event(run_last, run_entry(&run, first, run.len() - 1)?)?;
                if sealed.event.timestamp >= cutoff {
                    break;
                }
                last = Some(sealed.head());
                next = run_last + 1;
            }
            match last {
                Some(last) => {
                    runs.retain_in(..=last.seq, |_, _| false)?;
                    txn.open_table(CHECKPOINTS_TABLE)?
                        .retain_in(..=last.seq, |_, _| false)?;
                    txn.open_table(META_TABLE)?
                        .insert(META_PRUNED, encode_head(last).as_slice())?;
                    last
                }
                None => return Ok(0),
            }
        };
        txn.commit()?;
        let count = last_pruned.seq - self.pruned.seq;
        self.pruned = last_pruned;
        Ok(count)
    }

    fn verify(&self) -> Result<VerifyReport, JournalError> {
        let txn = self.db.begin_read()?;
        let runs = txn.open_table(RUNS_TABLE)?;
        let checkpoints = txn.open_table(CHECKPOINTS_TABLE)?;
        let mut rows = Cursor::new(&runs, 0)?;
        let mut stored = self.pruned;
        let mut segment: Vec<SealedEvent> = Vec::new();
        let mut report = VerifyReport {
            node_id: self.node_id.clone(),
            first_held_seq: self.pruned.seq + 1,
            head: self.head,
            events: 0,
            checkpoints: 0,
            retired_keys: self.key_history.len() as u64,
        };
        for row in checkpoints.range(0..)? {
            let (seq, bytes) = row?;
            let checkpoint = self.decode_checkpoint(seq.value(), bytes.value())?;
            segment.clear();
            let mut next = stored.seq + 1;
            while next <= checkpoint.seq {
                let Some(row) = rows.next() else { break };
                let (key, bytes) = row?;
                if key != next {
                    return Err(JournalError::Verify {
                        seq: checkpoint.seq,
                        source: VerifyError::Gap {
                            expected: next,
                            got: key,
                        },
                    });
                }
                segment.push(decode_event(key, bytes)?);
                next += 1;
            }
            let verified = verify_batch(
                &self.node_id,
                &self.verifying_key_at(checkpoint.seq),
                stored,
                &segment,
                &checkpoint,
                &|_| None,
            )
            .map_err(|source| JournalError::Verify {
                seq: checkpoint.seq,
                source,
            })?;
            stored = verified.head;
            report.events += segment.len() as u64;
            report.checkpoints += 1;
        }
        if let Some(row) = rows.next() {
            let (seq, _) = row?;
            return Err(JournalError::Uncovered {
                from_seq: seq,
                head_seq: self.head.seq,
            });
        }
        if stored != self.head {
            return Err(JournalError::Verify {
                seq: self.head.seq,
                source: VerifyError::CheckpointMismatch {
                    checkpoint_seq: stored.seq,
                    checkpoint_head: stored.hash,
                    batch_seq: self.head.seq,
                    batch_head: self.head.hash,
                },
            });
        }
        Ok(report)
    }
}

/// Everything [`RedbJournal::open`] reads from the file.
struct LoadedState {
    node_id: String,
    head: ChainHead,
    pruned: ChainHead,
    acked: ChainHead,
    exported_seq: u64,
    receipted: ChainHead,
    key_history: Vec<RetiredKey>,
}

fn load_state(db: &Database, key: &SigningKey) -> Result<LoadedState, JournalError> {
    let txn = db.begin_read()?;
    let meta = match txn.open_table(META_TABLE) {
        Ok(meta) => meta,
        Err(redb::TableError::TableDoesNotExist(_)) => return Err(JournalError::NotInitialised),
        Err(e) => return Err(e.into()),
    };
    let meta_bytes = |name: &'static str| -> Result<Option<Vec<u8>>, JournalError> {
        Ok(meta.get(name)?.map(|v| v.value().to_vec()))
    };
    let node_id = meta_bytes(META_NODE_ID)?.ok_or(JournalError::NotInitialised)?;
    let node_id = String::from_utf8(node_id).map_err(|e| JournalError::CorruptMeta {
        key: META_NODE_ID,
        reason: e.to_string(),
    })?;
    let format = meta_bytes(META_FORMAT)?
        .and_then(|b| <[u8; 4]>::try_from(b.as_slice()).ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| JournalError::CorruptMeta {
            key: META_FORMAT,
            reason: "missing or not 4 bytes".to_owned(),
        })?;
    if ![FORMAT_SINGLE_KEY, FORMAT_KEY_HISTORY, FORMAT_RUNS].contains(&format) {
        return Err(JournalError::UnsupportedFormat {
            found: format,
            expected: FORMAT_RUNS,
        });
    }
    let key_history = match meta_bytes(META_KEY_HISTORY)? {
        Some(bytes) => decode_key_history(&bytes)?,
        None => Vec::new(),
    };
    let public_key = meta_bytes(META_PUBLIC_KEY)?.ok_or_else(|| JournalError::CorruptMeta {
        key: META_PUBLIC_KEY,
        reason: "missing".to_owned(),
    })?;
    if public_key.as_slice() != key.verifying_key().as_bytes().as_slice() {
        let public = key.verifying_key();
        return Err(match key_history.iter().find(|k| k.public_key == public) {
            Some(retired) => JournalError::KeyRetired {
                last_seq: retired.last_seq,
            },
            None => JournalError::KeyMismatch,
        });
    }
    if format != FORMAT_RUNS {
        // Identity and key checked: now convert, then read the runs.
        convert_per_event(db)?;
        return load_state(db, key);
    }
    let head_mark = |name: &'static str| -> Result<ChainHead, JournalError> {
        match meta_bytes(name)? {
            Some(bytes) => decode_head(name, &bytes),
            None => Ok(ChainHead::default()),
        }
    };
    let pruned = head_mark(META_PRUNED)?;
    let acked = head_mark(META_ACKED)?;
    let receipted = head_mark(META_RECEIPTED)?;
    let exported_seq = match meta_bytes(META_EXPORTED)? {
        Some(bytes) => <[u8; 8]>::try_from(bytes.as_slice())
            .map(u64::from_be_bytes)
            .map_err(|_| JournalError::CorruptMeta {
                key: META_EXPORTED,
                reason: format!("{} bytes, expected 8", bytes.len()),
            })?,
        None => 0,
    };

    let runs = txn.open_table(RUNS_TABLE)?;
    let head = match runs.last()? {
        Some((first, value)) => {
            let first = first.value();
            let run = parse_run(first, value.value())?;
            let i = run.len() - 1;
            decode_event(first + i as u64, run_entry(&run, first, i)?)?.head()
        }
        None => pruned,
    };
    if head.seq > pruned.seq {
        // The head must be the one the last checkpoint signed.
        let checkpoints = txn.open_table(CHECKPOINTS_TABLE)?;
        let last = checkpoints
            .last()?
            .map(|(seq, row)| (seq.value(), row.value().get(..32).map(<[u8]>::to_vec)));
        match last {
            Some((seq, Some(hash))) if seq == head.seq && hash == head.hash.0 => {}
            Some((seq, hash)) if seq >= head.seq => {
                return Err(JournalError::Verify {
                    seq: head.seq,
                    source: VerifyError::CheckpointMismatch {
                        checkpoint_seq: seq,
                        checkpoint_head: hash
                            .and_then(|h| <[u8; 32]>::try_from(h.as_slice()).ok())
                            .map(Digest)
                            .unwrap_or_default(),
                        batch_seq: head.seq,
                        batch_head: head.hash,
                    },
                });
            }
            other => {
                return Err(JournalError::Uncovered {
                    from_seq: other.map_or(pruned.seq, |(seq, _)| seq) + 1,
                    head_seq: head.seq,
                });
            }
        }
    }
    Ok(LoadedState {
        node_id,
        head,
        pruned,
        acked,
        exported_seq,
        receipted,
        key_history,
    })
}

/// The key of the range holding `seq`, else `current`.
fn key_at(history: &[RetiredKey], current: VerifyingKey, seq: u64) -> VerifyingKey {
    history
        .iter()
        .find(|k| (k.first_seq..=k.last_seq).contains(&seq))
        .map_or(current, |k| k.public_key)
}

fn encode_key_history(history: &[RetiredKey]) -> Vec<u8> {
    let mut out = Vec::with_capacity(history.len() * KEY_RECORD_LEN);
    for k in history {
        out.extend_from_slice(&k.first_seq.to_be_bytes());
        out.extend_from_slice(&k.last_seq.to_be_bytes());
        out.extend_from_slice(k.public_key.as_bytes());
    }
    out
}

/// Decodes `key_history`: whole records with ordered, adjacent ranges and
/// valid Ed25519 keys.
fn decode_key_history(bytes: &[u8]) -> Result<Vec<RetiredKey>, JournalError> {
    let corrupt = |reason: String| JournalError::CorruptMeta {
        key: META_KEY_HISTORY,
        reason,
    };
    if !bytes.len().is_multiple_of(KEY_RECORD_LEN) {
        return Err(corrupt(format!(
            "{} bytes, not a multiple of {KEY_RECORD_LEN}",
            bytes.len()
        )));
    }
    let mut out: Vec<RetiredKey> = Vec::with_capacity(bytes.len() / KEY_RECORD_LEN);
    for record in bytes.chunks_exact(KEY_RECORD_LEN) {
        let (first, rest) = record.split_at(8);
        let (last, key) = rest.split_at(8);
        let seq = |b: &[u8]| <[u8; 8]>::try_from(b).map(u64::from_be_bytes);
        let (Ok(first_seq), Ok(last_seq), Ok(key)) =
            (seq(first), seq(last), <[u8; 32]>::try_from(key))
        else {
            return Err(corrupt("malformed record".to_owned()));
        };
        let public_key = VerifyingKey::from_bytes(&key)
            .map_err(|e| corrupt(format!("retired key unusable: {e}")))?;
        let expected_first = out.last().map_or(1, |k| k.last_seq + 1);
        if first_seq != expected_first || last_seq < first_seq {
            return Err(corrupt(format!(
                "range {first_seq}..={last_seq} does not follow the previous one"
            )));
        }
        out.push(RetiredKey {
            first_seq,
            last_seq,
            public_key,
        });
    }
    Ok(out)
}

/// Whether a run of `len` events and `bytes` bytes ends before an event of
/// `next` bytes: at [`MAX_RUN`] events, or past [`MAX_RUN_BYTES`].
fn run_full(len: usize, bytes: usize, next: usize) -> bool {
    len == MAX_RUN || (len > 0 && bytes + next > MAX_RUN_BYTES)
}

/// Inserts `events` (consecutive, at least one) as runs of at most
/// [`MAX_RUN`] events and [`MAX_RUN_BYTES`], each keyed by its first seq,
/// encoded in `buf`.
fn insert_runs(
    table: &mut redb::Table<'_, u64, &'static [u8]>,
    events: &[SealedEvent],
    buf: &mut Vec<u8>,
) -> Result<(), JournalError> {
    let mut rest = events;
    while !rest.is_empty() {
        let mut len = 0;
        let mut bytes = 0;
        while let Some(e) = rest.get(len)
            && !run_full(len, bytes, e.bytes.len())
        {
            bytes += e.bytes.len();
            len += 1;
        }
        let (chunk, tail) = rest.split_at(len);
        rest = tail;
        run::encode_into(
            buf,
            chunk,
            |e| e.bytes.len(),
            |e, out| out.extend_from_slice(&e.bytes),
        );
        table.insert(chunk[0].event.seq, buf.as_slice())?;
    }
    if buf.capacity() > RUN_BUF_KEEP {
        *buf = Vec::new();
    }
    Ok(())
}

/// Parses the stored run keyed `first`.
fn parse_run(first: u64, bytes: &[u8]) -> Result<Run<'_>, JournalError> {
    Run::parse(bytes).map_err(|source| JournalError::Decode { seq: first, source })
}

/// The bytes of entry `i` of the run keyed `first`.
fn run_entry<'a>(run: &Run<'a>, first: u64, i: usize) -> Result<&'a [u8], JournalError> {
    run.entry(i).map_err(|source| JournalError::Decode {
        seq: first + i as u64,
        source,
    })
}

/// Checks that `seq` follows `last` (any seq when `last` is 0: the first
/// one read), then makes it the last one.
fn follows(last: &mut u64, seq: u64) -> Result<(), JournalError> {
    if *last != 0 && seq != *last + 1 {
        return Err(JournalError::Verify {
            seq,
            source: VerifyError::Gap {
                expected: *last + 1,
                got: seq,
            },
        });
    }
    *last = seq;
    Ok(())
}

/// Walks the stored events in run order from the run holding a given seq
/// (the last run keyed at or below it), yielding each event's seq (its
/// run's key plus its index: the seq it must carry) and its bytes, read in
/// place. Skips events below the start seq.
struct Cursor {
    runs: redb::Range<'static, u64, &'static [u8]>,
    run: Option<AccessGuard<'static, &'static [u8]>>,
    first: u64,
    count: usize,
    index: usize,
    from_seq: u64,
}

impl Cursor {
    fn new(table: &ReadOnlyTable<u64, &'static [u8]>, from_seq: u64) -> Result<Self, JournalError> {
        let start = match table.range(..=from_seq)?.next_back() {
            Some(row) => row?.0.value(),
            None => from_seq,
        };
        Ok(Cursor {
            runs: table.range(start..)?,
            run: None,
            first: 0,
            count: 0,
            index: 0,
            from_seq,
        })
    }

    /// The next stored event: its seq and bytes.
    fn next(&mut self) -> Option<Result<(u64, &[u8]), JournalError>> {
        while self.index >= self.count {
            let (first, value) = match self.runs.next()? {
                Ok(row) => row,
                Err(e) => return Some(Err(e.into())),
            };
            let first = first.value();
            let count = match parse_run(first, value.value()) {
                Ok(run) => run.len(),
                Err(e) => return Some(Err(e)),
            };
            self.first = first;
            self.count = count;
            self.index = usize::try_from(self.from_seq.saturating_sub(first))
                .unwrap_or(usize::MAX)
                .min(count);
            self.run = Some(value);
        }
        let i = self.index;
        self.index += 1;
        let value = self.run.as_ref()?;
        let seq = self.first + i as u64;
        Some(
            parse_run(self.first, value.value())
                .and_then(|run| run_entry(&run, self.first, i))
                .map(|bytes| (seq, bytes)),
        )
    }
}

/// Converts a journal of the per-event layout (formats 1 and 2) to runs in
/// ONE durable write transaction (on any error nothing changed): the rows
/// of each checkpoint segment become one run (split at [`MAX_RUN`] events
/// or [`MAX_RUN_BYTES`], and at any gap between stored seqs), exactly as appends would have written
/// them. Bytes move verbatim, undecoded, so a damaged journal converts to
/// one `verify` reports the same way. The `events` table is deleted and
/// the format set to 3.
fn convert_per_event(db: &Database) -> Result<(), JournalError> {
    let txn = db.begin_write()?;
    {
        let legacy = txn.open_table(LEGACY_EVENTS_TABLE)?;
        let checkpoints = txn.open_table(CHECKPOINTS_TABLE)?;
        let mut runs = txn.open_table(RUNS_TABLE)?;
        let mut segment_ends = checkpoints.range(0..)?;
        // The first checkpoint seq at or above the last event read.
        let mut segment_end = 0u64;
        let mut pending: Vec<Vec<u8>> = Vec::new();
        let mut pending_bytes = 0usize;
        let mut first = 0u64;
        let mut buf = Vec::new();
        let mut flush = |first: u64, pending: &mut Vec<Vec<u8>>| -> Result<(), JournalError> {
            if !pending.is_empty() {
                run::encode_into(&mut buf, pending, Vec::len, |e, out| {
                    out.extend_from_slice(e)
                });
                runs.insert(first, buf.as_slice())?;
                pending.clear();
            }
            Ok(())
        };
        for row in legacy.range(0..)? {
            let (key, value) = row?;
            let seq = key.value();
            let value = value.value();
            if seq != first + pending.len() as u64
                || run_full(pending.len(), pending_bytes, value.len())
            {
                flush(first, &mut pending)?;
            }
            if pending.is_empty() {
                first = seq;
                pending_bytes = 0;
            }
            pending_bytes += value.len();
            pending.push(value.to_vec());
            while segment_end < seq {
                segment_end = match segment_ends.next() {
                    Some(row) => row?.0.value(),
                    None => u64::MAX,
                };
            }
            if segment_end == seq {
                flush(first, &mut pending)?;
            }
        }
        flush(first, &mut pending)?;
    }
    txn.delete_table(LEGACY_EVENTS_TABLE)?;
    txn.open_table(META_TABLE)?
        .insert(META_FORMAT, FORMAT_RUNS.to_be_bytes().as_slice())?;
    txn.commit()?;
    Ok(())
}

/// Decodes a stored event, checking it sits under its own seq.
fn decode_event(seq: u64, bytes: &[u8]) -> Result<SealedEvent, JournalError> {
    let sealed = SealedEvent::from_bytes(bytes.to_vec())
        .map_err(|source| JournalError::Decode { seq, source })?;
    if sealed.event.seq != seq {
        return Err(JournalError::Verify {
            seq,
            source: VerifyError::Gap {
                expected: seq,
                got: sealed.event.seq,
            },
        });
    }
    Ok(sealed)
}

fn checkpoint_row(checkpoint: &Checkpoint) -> [u8; CHECKPOINT_ROW_LEN] {
    let mut row = [0u8; CHECKPOINT_ROW_LEN];
    row[..32].copy_from_slice(&checkpoint.head.0);
    row[32..].copy_from_slice(&checkpoint.signature.0);
    row
}

fn encode_head(head: ChainHead) -> [u8; 40] {
    let mut out = [0u8; 40];
    out[..8].copy_from_slice(&head.seq.to_be_bytes());
    out[8..].copy_from_slice(&head.hash.0);
    out
}

fn decode_head(key: &'static str, bytes: &[u8]) -> Result<ChainHead, JournalError> {
    match (
        bytes.get(..8).and_then(|s| <[u8; 8]>::try_from(s).ok()),
        bytes.get(8..).and_then(|h| <[u8; 32]>::try_from(h).ok()),
    ) {
        (Some(seq), Some(hash)) => Ok(ChainHead {
            seq: u64::from_be_bytes(seq),
            hash: Digest(hash),
        }),
        _ => Err(JournalError::CorruptMeta {
            key,
            reason: format!("{} bytes, expected 40", bytes.len()),
        }),
    }
}

#[cfg(test)]
mod tests {
    //! Journals of the per-event layout (formats 1 and 2), written here as
    //! builds before runs wrote them, open converted to runs.

    use super::*;
    use redb::TableHandle;
    use sx_common::event::{Event, Note, ReplayStarted};

    const NODE: &str = "sx-rempart-2026-prod-1-node-42";

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    /// A per-event journal as older builds wrote it.
    struct Legacy {
        dir: tempfile::TempDir,
        events: Vec<SealedEvent>,
        /// Seqs of the checkpoints.
        checkpoints: Vec<u64>,
    }

    impl Legacy {
        fn path(&self) -> std::path::PathBuf {
            self.dir.path().join("journal.redb")
        }
    }

    /// Writes `batches` appends (one checkpoint each) in the old layout,
    /// signed by `keys[0]` up to and including seq `rotated_at` (then
    /// retired into the key history, format 2) and by `keys[1]` after.
    fn write_legacy(batches: &[usize], keys: &[SigningKey], rotated_at: Option<u64>) -> Legacy {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::create(dir.path().join("journal.redb")).expect("create");
        let mut head = ChainHead::default();
        let mut events = Vec::new();
        let mut checkpoints = Vec::new();
        let txn = db.begin_write().expect("write");
        {
            let mut rows = txn.open_table(LEGACY_EVENTS_TABLE).expect("events");
            let mut cps = txn.open_table(CHECKPOINTS_TABLE).expect("checkpoints");
            for &count in batches {
                for _ in 0..count {
                    let sealed = SealedEvent::seal(Event {
                        node_id: NODE.to_owned(),
                        seq: head.seq + 1,
                        timestamp: Timestamp::from_secs(1_772_163_900),
                        prev_hash: head.hash,
                        payload: EventPayload::ReplayStarted(ReplayStarted { backlog: head.seq }),
                    });
                    rows.insert(sealed.event.seq, sealed.bytes.as_slice())
                        .expect("row");
                    head = sealed.head();
                    events.push(sealed);
                }
                let signer = match rotated_at {
                    Some(at) if head.seq > at => &keys[1],
                    _ => &keys[0],
                };
                let checkpoint = Checkpoint::sign(signer, NODE, head.seq, head.hash);
                cps.insert(head.seq, checkpoint_row(&checkpoint).as_slice())
                    .expect("checkpoint");
                checkpoints.push(head.seq);
            }
            let mut meta = txn.open_table(META_TABLE).expect("meta");
            meta.insert(META_NODE_ID, NODE.as_bytes()).expect("node");
            let (format, current) = match rotated_at {
                Some(at) => {
                    let history = [RetiredKey {
                        first_seq: 1,
                        last_seq: at,
                        public_key: keys[0].verifying_key(),
                    }];
                    meta.insert(META_KEY_HISTORY, encode_key_history(&history).as_slice())
                        .expect("history");
                    (FORMAT_KEY_HISTORY, &keys[1])
                }
                None => (FORMAT_SINGLE_KEY, &keys[0]),
            };
            meta.insert(META_FORMAT, format.to_be_bytes().as_slice())
                .expect("format");
            meta.insert(
                META_PUBLIC_KEY,
                current.verifying_key().as_bytes().as_slice(),
            )
            .expect("key");
        }
        txn.commit().expect("commit");
        Legacy {
            dir,
            events,
            checkpoints,
        }
    }

    /// (format, whether the `events` table exists, the runs as (first, len)).
    fn layout_at(path: &Path) -> (u32, bool, Vec<(u64, usize)>) {
        layout(&Database::open(path).expect("open"))
    }

    fn layout(db: &Database) -> (u32, bool, Vec<(u64, usize)>) {
        let txn = db.begin_read().expect("read");
        let format = txn
            .open_table(META_TABLE)
            .expect("meta")
            .get(META_FORMAT)
            .expect("get")
            .map(|v| u32::from_be_bytes(v.value().try_into().expect("4 bytes")))
            .expect("format");
        let legacy = txn
            .list_tables()
            .expect("tables")
            .any(|t| t.name() == LEGACY_EVENTS_TABLE.name());
        let runs = match txn.open_table(RUNS_TABLE) {
            Ok(table) => table
                .iter()
                .expect("iter")
                .map(|row| {
                    let (first, value) = row.expect("row");
                    (first.value(), Run::parse(value.value()).expect("run").len())
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        (format, legacy, runs)
    }

    #[test]
    fn runs_end_before_they_pass_their_byte_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("journal.redb");
        let mut journal = RedbJournal::create(&path, "node-big", key(1)).expect("create");
        let big = |i: usize| {
            (
                Timestamp::from_secs(1),
                EventPayload::ProvisioningStarted(Note {
                    reason: Some(format!("{i}{}", "x".repeat(700_000))),
                }),
            )
        };
        // Ten events of ~700 KB in one append: two runs of five (a sixth
        // would take a run past 4 MiB), then small ones join a new run.
        journal
            .append(&(0..10).map(big).collect::<Vec<_>>())
            .expect("append");
        journal
            .append(&[(
                Timestamp::from_secs(2),
                EventPayload::ReplayStarted(ReplayStarted { backlog: 1 }),
            )])
            .expect("append");
        let (format, legacy, runs) = layout(&journal.db);
        assert_eq!((format, legacy), (FORMAT_RUNS, false));
        assert_eq!(runs, vec![(1, 5), (6, 5), (11, 1)]);
        let events = journal.read_range(1, usize::MAX).expect("read");
        assert_eq!(events.len(), 11);
        assert_eq!(journal.read_range(7, 1).expect("read one")[0].event.seq, 7);
        assert_eq!(journal.verify().expect("verifies").events, 11);
    }

    #[test]
    fn a_format_1_journal_is_converted_to_runs_on_open() {
        let batches = [1, 3, 2_500, 2];
        let legacy = write_legacy(&batches, &[key(1)], None);
        let path = legacy.path();
        assert_eq!(layout_at(&path), (FORMAT_SINGLE_KEY, true, Vec::new()));

        let mut journal = RedbJournal::open(&path, key(1)).expect("open converts");
        let m = MAX_RUN as u64;
        let expected_runs = vec![
            (1, 1),
            (2, 3),
            (5, MAX_RUN),
            (5 + m, MAX_RUN),
            (5 + 2 * m, 2_500 - 2 * MAX_RUN),
            (2_505, 2),
        ];
        assert_eq!(
            layout(&journal.db),
            (FORMAT_RUNS, false, expected_runs.clone())
        );
        let total = legacy.events.len() as u64;
        assert_eq!(journal.head(), legacy.events.last().expect("events").head());
        assert_eq!(
            journal.read_range(1, usize::MAX).expect("read"),
            legacy.events
        );
        let report = journal.verify().expect("verifies");
        assert_eq!(
            (report.events, report.checkpoints),
            (total, legacy.checkpoints.len() as u64)
        );
        // Appends continue the chain as runs; a reopen converts nothing.
        journal
            .append(&[(
                Timestamp::from_secs(1),
                EventPayload::ReplayStarted(ReplayStarted { backlog: 999 }),
            )])
            .expect("append");
        drop(journal);
        let journal = RedbJournal::open(&path, key(1)).expect("reopen");
        let mut runs = expected_runs;
        runs.push((total + 1, 1));
        assert_eq!(layout(&journal.db), (FORMAT_RUNS, false, runs));
        assert_eq!(journal.verify().expect("verifies").events, total + 1);
    }

    #[test]
    fn a_format_2_journal_keeps_its_key_history() {
        let keys = [key(1), key(2)];
        let legacy = write_legacy(&[2, 1, 3], &keys, Some(3));
        let path = legacy.path();
        // The retired key is refused before anything is converted.
        assert!(matches!(
            RedbJournal::open(&path, key(1)),
            Err(JournalError::KeyRetired { last_seq: 3 })
        ));
        assert!(matches!(
            RedbJournal::open(&path, key(9)),
            Err(JournalError::KeyMismatch)
        ));
        assert_eq!(layout_at(&path), (FORMAT_KEY_HISTORY, true, Vec::new()));

        let journal = RedbJournal::open(&path, key(2)).expect("open converts");
        assert_eq!(
            layout(&journal.db),
            (FORMAT_RUNS, false, vec![(1, 2), (3, 1), (4, 3)])
        );
        assert_eq!(journal.key_history().len(), 1);
        assert_eq!(journal.verifying_key_at(3), keys[0].verifying_key());
        let report = journal.verify().expect("verifies with the retired key");
        assert_eq!((report.events, report.retired_keys), (6, 1));
    }

    #[test]
    fn a_pruned_or_damaged_legacy_journal_converts_as_it_is() {
        // Pruned up to 3 (mid-segment, as per-event pruning could leave it).
        let legacy = write_legacy(&[2, 4, 2], &[key(1)], None);
        let path = legacy.path();
        {
            let db = Database::open(&path).expect("open");
            let txn = db.begin_write().expect("write");
            txn.open_table(LEGACY_EVENTS_TABLE)
                .expect("events")
                .retain_in(..=3, |_, _| false)
                .expect("prune rows");
            txn.open_table(CHECKPOINTS_TABLE)
                .expect("checkpoints")
                .retain_in(..=3, |_, _| false)
                .expect("prune checkpoints");
            txn.open_table(META_TABLE)
                .expect("meta")
                .insert(META_PRUNED, encode_head(legacy.events[2].head()).as_slice())
                .expect("pruned mark");
            txn.commit().expect("commit");
        }
        let journal = RedbJournal::open(&path, key(1)).expect("open converts");
        assert_eq!(layout(&journal.db).2, vec![(4, 3), (7, 2)]);
        assert_eq!(journal.marks().first_held_seq, 4);
        let report = journal.verify().expect("verifies");
        assert_eq!((report.first_held_seq, report.events), (4, 5));
        drop(journal);

        // A gap in the old rows stays a gap (the runs split there).
        let legacy = write_legacy(&[3, 3], &[key(1)], None);
        let path = legacy.path();
        {
            let db = Database::open(&path).expect("open");
            let txn = db.begin_write().expect("write");
            txn.open_table(LEGACY_EVENTS_TABLE)
                .expect("events")
                .remove(2)
                .expect("delete row 2");
            txn.commit().expect("commit");
        }
        let journal = RedbJournal::open(&path, key(1)).expect("open converts");
        assert_eq!(layout(&journal.db).2, vec![(1, 1), (3, 1), (4, 3)]);
        let err = journal.verify().expect_err("gap");
        assert!(
            matches!(
                err,
                JournalError::Verify {
                    seq: 3,
                    source: VerifyError::Gap {
                        expected: 2,
                        got: 3
                    }
                }
            ),
            "{err}"
        );
        drop(journal);

        // A forged row stays forged.
        let legacy = write_legacy(&[3, 3], &[key(1)], None);
        let path = legacy.path();
        {
            let mut event = legacy.events[1].event.clone();
            event.payload = EventPayload::ReplayStarted(ReplayStarted { backlog: 999 });
            let forged = SealedEvent::seal(event);
            let db = Database::open(&path).expect("open");
            let txn = db.begin_write().expect("write");
            txn.open_table(LEGACY_EVENTS_TABLE)
                .expect("events")
                .insert(2, forged.bytes.as_slice())
                .expect("forge row 2");
            txn.commit().expect("commit");
        }
        let err = RedbJournal::open(&path, key(1))
            .expect("open converts")
            .verify()
            .expect_err("forged");
        assert!(
            matches!(
                err,
                JournalError::Verify {
                    seq: 3,
                    source: VerifyError::WrongPrevHash { seq: 3 }
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_format_is_refused_unchanged() {
        let legacy = write_legacy(&[1], &[key(1)], None);
        let path = legacy.path();
        {
            let db = Database::open(&path).expect("open");
            let txn = db.begin_write().expect("write");
            txn.open_table(META_TABLE)
                .expect("meta")
                .insert(META_FORMAT, 4u32.to_be_bytes().as_slice())
                .expect("format");
            txn.commit().expect("commit");
        }
        assert!(matches!(
            RedbJournal::open(&path, key(1)),
            Err(JournalError::UnsupportedFormat {
                found: 4,
                expected: FORMAT_RUNS
            })
        ));
        assert_eq!(layout_at(&path), (4, true, Vec::new()));
    }
}
