//! [`EventStore`] on redb, the embedded default.
//!
//! Tables: `nodes` (node id → postcard [`NodeRecord`]), `events`
//! ((node index, seq) → 32-byte hash followed by the event's canonical
//! bytes), `forks` ((node index, seq, n) → postcard [`ForkEvidence`]).
//! Heads are cached in memory and refreshed from the table after a failed
//! commit, so the cache never runs ahead of what is durable.

use super::{Admitted, EventStore, ForkEvidence, NodeRecord, StoreError, Submission};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use sx_common::chain::{ChainHead, Digest, SealedEvent, VerifyError};
use sx_common::protocol::{Rejection, admit_batch};

const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
const EVENTS: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("events");
const FORKS: TableDefinition<(u32, u64, u64), &[u8]> = TableDefinition::new("forks");
const DESIRED: TableDefinition<u64, &[u8]> = TableDefinition::new("desired");

/// Verdicts per submission, and the node records the transaction changed.
type AppendResult = (
    Vec<Result<Admitted, Rejection>>,
    HashMap<String, NodeRecord>,
);

/// The redb event store. Shared by reference: reads run concurrently with the
/// single writer.
#[derive(Debug)]
pub struct RedbStore {
    db: Database,
    cache: Mutex<HashMap<String, NodeRecord>>,
}

impl RedbStore {
    /// Opens or creates the store at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(NODES)?;
        txn.open_table(EVENTS)?;
        txn.open_table(FORKS)?;
        txn.open_table(DESIRED)?;
        txn.commit()?;
        let store = RedbStore {
            db,
            cache: Mutex::new(HashMap::new()),
        };
        store.reload_cache()?;
        Ok(store)
    }

    fn reload_cache(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(NODES)?;
        let mut map = HashMap::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let record = decode_record(k.value(), v.value())?;
            map.insert(record.node_id.clone(), record);
        }
        *self.lock_cache() = map;
        Ok(())
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, NodeRecord>> {
        // A panic while holding the lock cannot leave the map half-updated
        // (it is replaced whole), so a poisoned lock is still usable.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn try_append(&self, submissions: &[Submission]) -> Result<AppendResult, StoreError> {
        let mut touched: HashMap<String, NodeRecord> = HashMap::new();
        let mut results = Vec::with_capacity(submissions.len());
        let txn = self.db.begin_write()?;
        {
            let mut nodes = txn.open_table(NODES)?;
            let mut events = txn.open_table(EVENTS)?;
            let mut forks = txn.open_table(FORKS)?;
            let mut next_index = {
                let cache = self.lock_cache();
                cache.values().map(|r| r.index + 1).max().unwrap_or(0)
            };
            for sub in submissions {
                let record = match touched.get(&sub.node_id) {
                    Some(r) => r.clone(),
                    None => match self.lock_cache().get(&sub.node_id) {
                        Some(r) => r.clone(),
                        None => {
                            let r = NodeRecord {
                                node_id: sub.node_id.clone(),
                                head: ChainHead::default(),
                                first_seen: sub.received_at,
                                last_sync: None,
                                last_sync_via: None,
                                cert_fingerprint: sub.cert_fingerprint.clone(),
                                public_key: Digest(sub.key.to_bytes()),
                                index: next_index,
                            };
                            next_index += 1;
                            r
                        }
                    },
                };
                let ix = record.index;
                let known = |seq: u64| -> Option<Digest> {
                    let guard = events.get((ix, seq)).ok()??;
                    let bytes = guard.value();
                    bytes.first_chunk::<32>().map(|h| Digest(*h))
                };
                let verdict = admit_batch(
                    &sub.node_id,
                    &sub.key,
                    record.head,
                    &sub.events,
                    &sub.checkpoint,
                    &known,
                );
                match verdict {
                    Ok(ok) => {
                        let mut value = Vec::new();
                        for e in &sub.events[ok.first_new..] {
                            value.clear();
                            value.extend_from_slice(&e.hash.0);
                            value.extend_from_slice(&e.bytes);
                            events.insert((ix, e.event.seq), value.as_slice())?;
                        }
                        let new_count = (sub.events.len() - ok.first_new) as u64;
                        let mut updated = record.clone();
                        updated.head = ok.head;
                        updated.last_sync = Some(sub.received_at);
                        updated.last_sync_via = Some(sub.via);
                        updated.cert_fingerprint.clone_from(&sub.cert_fingerprint);
                        updated.public_key = Digest(sub.key.to_bytes());
                        nodes.insert(sub.node_id.as_str(), encode_record(&updated).as_slice())?;
                        results.push(Ok(Admitted {
                            head: ok.head,
                            new_from: record.head.seq + 1,
                            new_count,
                        }));
                        touched.insert(sub.node_id.clone(), updated);
                    }
                    Err(rejection) => {
                        if let Rejection::Invalid(VerifyError::Fork {
                            seq,
                            stored,
                            offered,
                        }) = &rejection
                        {
                            let evidence = ForkEvidence {
                                node_id: sub.node_id.clone(),
                                seq: *seq,
                                stored: *stored,
                                offered: *offered,
                                checkpoint: sub.checkpoint.clone(),
                                detected_at: sub.received_at,
                                via: sub.via,
                            };
                            let n =
                                forks.range((ix, *seq, 0)..=(ix, *seq, u64::MAX))?.count() as u64;
                            let bytes = postcard::to_allocvec(&evidence).unwrap_or_default();
                            forks.insert((ix, *seq, n), bytes.as_slice())?;
                            if !self.lock_cache().contains_key(&sub.node_id)
                                && !touched.contains_key(&sub.node_id)
                            {
                                // Unreachable in practice (a fork needs stored
                                // events), but never leave evidence orphaned.
                                nodes.insert(
                                    sub.node_id.as_str(),
                                    encode_record(&record).as_slice(),
                                )?;
                                touched.insert(sub.node_id.clone(), record);
                            }
                        }
                        results.push(Err(rejection));
                    }
                }
            }
        }
        txn.commit()?;
        Ok((results, touched))
    }
}

fn encode_record(record: &NodeRecord) -> Vec<u8> {
    postcard::to_allocvec(record).unwrap_or_default()
}

fn decode_record(node: &str, bytes: &[u8]) -> Result<NodeRecord, StoreError> {
    sx_common::codec::decode_exact(bytes).map_err(|source| StoreError::Corrupt {
        node: node.to_owned(),
        seq: 0,
        source,
    })
}

impl EventStore for RedbStore {
    fn append(
        &self,
        submissions: &[Submission],
    ) -> Result<Vec<Result<Admitted, Rejection>>, StoreError> {
        match self.try_append(submissions) {
            Ok((results, touched)) => {
                self.lock_cache().extend(touched);
                Ok(results)
            }
            Err(e) => {
                // Nothing was committed; the cache was not touched either, but
                // reload in case the failure left the file in a new state.
                let _ = self.reload_cache();
                Err(e)
            }
        }
    }

    fn head(&self, node_id: &str) -> Result<ChainHead, StoreError> {
        Ok(self
            .lock_cache()
            .get(node_id)
            .map(|r| r.head)
            .unwrap_or_default())
    }

    fn node(&self, node_id: &str) -> Result<Option<NodeRecord>, StoreError> {
        Ok(self.lock_cache().get(node_id).cloned())
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let mut all: Vec<NodeRecord> = self.lock_cache().values().cloned().collect();
        all.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(all)
    }

    fn read(
        &self,
        node_id: &str,
        from_seq: u64,
        max: usize,
    ) -> Result<Vec<SealedEvent>, StoreError> {
        let Some(ix) = self.lock_cache().get(node_id).map(|r| r.index) else {
            return Ok(Vec::new());
        };
        let txn = self.db.begin_read()?;
        let table = txn.open_table(EVENTS)?;
        let mut out = Vec::new();
        for row in table
            .range((ix, from_seq.max(1))..=(ix, u64::MAX))?
            .take(max)
        {
            let (k, v) = row?;
            let seq = k.value().1;
            let bytes = v.value();
            let corrupt = |source| StoreError::Corrupt {
                node: node_id.to_owned(),
                seq,
                source,
            };
            let body = bytes
                .get(32..)
                .ok_or(corrupt(sx_common::codec::DecodeError::Truncated))?;
            let sealed = SealedEvent::from_bytes(body.to_vec()).map_err(corrupt)?;
            out.push(sealed);
        }
        Ok(out)
    }

    fn forks(&self) -> Result<Vec<ForkEvidence>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(FORKS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let (_, seq, _) = k.value();
            let evidence: ForkEvidence =
                sx_common::codec::decode_exact(v.value()).map_err(|source| {
                    StoreError::Corrupt {
                        node: String::from("?"),
                        seq,
                        source,
                    }
                })?;
            out.push(evidence);
        }
        out.sort_by_key(|f| f.detected_at);
        Ok(out)
    }

    fn event_count(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(EVENTS)?;
        Ok(table.len()?)
    }

    fn append_desired(
        &self,
        at: sx_common::time::Timestamp,
        by: &str,
        change: sx_common::desired::DesiredChangeKind,
    ) -> Result<sx_common::desired::DesiredChange, StoreError> {
        let txn = self.db.begin_write()?;
        let record = {
            let mut table = txn.open_table(DESIRED)?;
            let seq = table.last()?.map_or(0, |(k, _)| k.value()) + 1;
            let record = sx_common::desired::DesiredChange {
                seq,
                at,
                by: by.to_owned(),
                change,
            };
            let bytes = postcard::to_allocvec(&record).unwrap_or_default();
            table.insert(seq, bytes.as_slice())?;
            record
        };
        txn.commit()?;
        Ok(record)
    }

    fn desired_changes(
        &self,
        after: u64,
    ) -> Result<Vec<sx_common::desired::DesiredChange>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(DESIRED)?;
        let mut out = Vec::new();
        for row in table.range(after.saturating_add(1)..)? {
            let (k, v) = row?;
            let seq = k.value();
            let change = sx_common::codec::decode_exact(v.value()).map_err(|source| {
                StoreError::Corrupt {
                    node: String::from("(desired state)"),
                    seq,
                    source,
                }
            })?;
            out.push(change);
        }
        Ok(out)
    }
}
