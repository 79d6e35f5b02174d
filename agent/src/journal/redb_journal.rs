//! [`RedbJournal`]: the journal in one redb file.
//!
//! # On-disk layout
//!
//! | table | key | value |
//! | --- | --- | --- |
//! | [`EVENTS_TABLE`] `events` | seq `u64` | the event's canonical postcard bytes, exactly as hashed |
//! | [`CHECKPOINTS_TABLE`] `checkpoints` | seq `u64` | head hash (32 bytes) then Ed25519 signature (64 bytes) |
//! | [`META_TABLE`] `meta` | name `&str` | see below |
//!
//! Meta entries: `format` (u32 BE), `node_id` (UTF-8), `public_key` (32
//! raw Ed25519 bytes: the current key), `key_history` (the retired keys,
//! see below), and the marks, each seq as u64 BE optionally followed by a
//! 32-byte hash: `acked` (seq+hash), `exported` (seq), `receipted`
//! (seq+hash), `pruned` (seq+hash of the last pruned event).
//!
//! # Key history
//!
//! A certificate rotation ([`RedbJournal::rotate_key`]) retires the node
//! key: `key_history` holds one 48-byte record per retired key, oldest
//! first: the first and last checkpoint seq it signed (u64 BE each) and
//! its 32-byte public key. Checkpoints above the last retired seq verify
//! against `public_key`. A journal with a key history is written as format
//! 2, so a build that knows only one key per journal refuses it clearly
//! instead of failing to verify it; format 1 journals are read as before.
//!
//! Event hashes are not stored: they are recomputed from the bytes on read
//! (SHA-256 over a few hundred bytes costs far less than the extra 32 bytes
//! per row would on every write), which also means a reader never trusts a
//! stored hash. The head is not stored either: it is the last event row
//! (or the `pruned` mark when every event is pruned), read once at open and
//! then kept in memory. So an append writes exactly its event rows and one
//! checkpoint row.

use super::seal::Sealer;
use super::{AppendOutcome, Journal, JournalError, Marks, VerifyReport};
use ed25519_dalek::{SigningKey, VerifyingKey};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::fmt;
use std::path::Path;
use sx_common::chain::{SignatureBytes, verify_batch};
use sx_common::{
    ChainHead, Checkpoint, Digest, EventPayload, SealedEvent, Span, Timestamp, VerifyError,
};

/// Events by seq: canonical postcard bytes.
pub const EVENTS_TABLE: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("events");
/// Checkpoints by seq: 32-byte head hash then 64-byte signature.
pub const CHECKPOINTS_TABLE: TableDefinition<'static, u64, &[u8]> =
    TableDefinition::new("checkpoints");
/// Identity and marks.
pub const META_TABLE: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("meta");

/// The layout version written at create: one key, no key history.
const FORMAT_SINGLE_KEY: u32 = 1;
/// The layout version once a key was retired (`key_history` present).
const FORMAT_KEY_HISTORY: u32 = 2;
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
        let table = txn.open_table(EVENTS_TABLE)?;
        let mut out = Vec::with_capacity(max.min(4_096));
        let mut last_seq = 0;
        for row in table.range(from_seq..)?.take(max) {
            let (seq, bytes) = row?;
            last_seq = seq.value();
            out.push(bytes.value().to_vec());
        }
        let head = match out.last() {
            Some(bytes) => Some(decode_event(last_seq, bytes)?.head()),
            None => None,
        };
        Ok((out, head))
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
        let table = txn.open_table(EVENTS_TABLE)?;
        for row in table.range(from_seq..)? {
            let (seq, bytes) = row?;
            let seq = seq.value();
            let event: sx_common::Event = sx_common::codec::decode_exact(bytes.value())
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
            meta.insert(META_FORMAT, FORMAT_SINGLE_KEY.to_be_bytes().as_slice())?;
            meta.insert(META_NODE_ID, node_id.as_bytes())?;
            meta.insert(META_PUBLIC_KEY, verifying_key.as_bytes().as_slice())?;
            txn.open_table(EVENTS_TABLE)?;
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
            let mut table = txn.open_table(EVENTS_TABLE)?;
            for e in &events {
                table.insert(e.event.seq, e.bytes.as_slice())?;
            }
            txn.open_table(CHECKPOINTS_TABLE)?
                .insert(head.seq, checkpoint_row(&checkpoint).as_slice())?;
            let mut meta = txn.open_table(META_TABLE)?;
            meta.insert(META_FORMAT, FORMAT_KEY_HISTORY.to_be_bytes().as_slice())?;
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
        let events = txn.open_table(EVENTS_TABLE)?;
        match events.get(seq)? {
            Some(bytes) => Ok(Some(decode_event(seq, bytes.value())?.hash)),
            None => Ok(None),
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
        {
            let mut table = txn.open_table(EVENTS_TABLE)?;
            for e in &events {
                table.insert(e.event.seq, e.bytes.as_slice())?;
            }
        }
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
        let table = txn.open_table(EVENTS_TABLE)?;
        let wanted = usize::try_from(self.head.seq - from_seq.max(1) + 1).unwrap_or(usize::MAX);
        let mut out = Vec::with_capacity(max.min(wanted));
        for row in table.range(from_seq..)?.take(max) {
            let (seq, bytes) = row?;
            out.push(decode_event(seq.value(), bytes.value())?);
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
            let mut events = txn.open_table(EVENTS_TABLE)?;
            let mut last: Option<ChainHead> = None;
            for row in events.range(self.pruned.seq + 1..=limit)? {
                let (seq, bytes) = row?;
                let sealed = decode_event(seq.value(), bytes.value())?;
                if sealed.event.timestamp >= cutoff {
                    break;
                }
                last = Some(sealed.head());
            }
            match last {
                Some(last) => {
                    events.retain_in(..=last.seq, |_, _| false)?;
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
        let events = txn.open_table(EVENTS_TABLE)?;
        let checkpoints = txn.open_table(CHECKPOINTS_TABLE)?;
        let mut rows = events.range(0..)?;
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
                let key = key.value();
                if key != next {
                    return Err(JournalError::Verify {
                        seq: checkpoint.seq,
                        source: VerifyError::Gap {
                            expected: next,
                            got: key,
                        },
                    });
                }
                segment.push(decode_event(key, bytes.value())?);
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
                from_seq: seq.value(),
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
    if format != FORMAT_SINGLE_KEY && format != FORMAT_KEY_HISTORY {
        return Err(JournalError::UnsupportedFormat {
            found: format,
            expected: FORMAT_KEY_HISTORY,
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

    let events = txn.open_table(EVENTS_TABLE)?;
    let head = match events.last()? {
        Some((seq, bytes)) => decode_event(seq.value(), bytes.value())?.head(),
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
