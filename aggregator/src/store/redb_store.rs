//! [`EventStore`] on redb, the embedded default.
//!
//! Tables: `nodes` (node id → postcard [`NodeRecord`]), `event_runs`
//! ((node index, first seq) → a [`run`](super::run) of up to 1,024
//! consecutive events with their hashes), `forks` ((node index, seq, n) →
//! postcard [`ForkEvidence`]). A store written by an older build, with one
//! `events` row per event, is converted to runs when opened.
//! Heads are cached in memory and refreshed from the table after a failed
//! commit, so the cache never runs ahead of what is durable.

use super::{Admitted, EventStore, ForkEvidence, NodeRecord, StoreError, Submission, run};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use sx_common::chain::{ChainHead, Digest, SealedEvent, VerifyError};
use sx_common::protocol::{Rejection, admit_batch};

const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
const RUNS: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("event_runs");
/// One row per event: the layout before runs, converted on open.
const EVENTS_V1: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("events");
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
        convert_v1(&db)?;
        let txn = db.begin_write()?;
        txn.open_table(NODES)?;
        txn.open_table(RUNS)?;
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
            let mut events = txn.open_table(RUNS)?;
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
                    let (first, row) = events.range((ix, 0)..=(ix, seq)).ok()?.next_back()?.ok()?;
                    let run = run::Run::parse(row.value()).ok()?;
                    let i = usize::try_from(seq - first.value().1).ok()?;
                    run.entry(i).ok().map(|(hash, _)| hash)
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
                        for chunk in sub.events[ok.first_new..].chunks(run::MAX_RUN) {
                            let first = chunk[0].event.seq;
                            events.insert((ix, first), run::encode(chunk).as_slice())?;
                        }
                        let new_count = (sub.events.len() - ok.first_new) as u64;
                        let mut updated = record.clone();
                        updated.head = ok.head;
                        if sub.news {
                            updated.last_sync = Some(sub.received_at);
                            updated.last_sync_via = Some(sub.via);
                        }
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
        let table = txn.open_table(RUNS)?;
        let from_seq = from_seq.max(1);
        let corrupt = |seq, source| StoreError::Corrupt {
            node: node_id.to_owned(),
            seq,
            source,
        };
        // The run holding `from_seq`, then the ones after it.
        let start = table
            .range((ix, 0)..=(ix, from_seq))?
            .next_back()
            .transpose()?
            .map_or(from_seq, |(k, _)| k.value().1);
        let mut out = Vec::new();
        for row in table.range((ix, start)..=(ix, u64::MAX))? {
            if out.len() >= max {
                break;
            }
            let (k, v) = row?;
            let first = k.value().1;
            let run = run::Run::parse(v.value()).map_err(|e| corrupt(first, e))?;
            let skip = from_seq.saturating_sub(first) as usize;
            for i in skip..run.len() {
                if out.len() >= max {
                    break;
                }
                let seq = first + i as u64;
                let sealed = run.event(i).map_err(|e| corrupt(seq, e))?;
                if sealed.event.seq != seq {
                    return Err(corrupt(
                        seq,
                        sx_common::codec::DecodeError::Malformed(format!(
                            "seq {} stored at {seq}",
                            sealed.event.seq
                        )),
                    ));
                }
                out.push(sealed);
            }
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
        // Every stream holds 1..=head without gaps.
        Ok(self.lock_cache().values().map(|r| r.head.seq).sum())
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

/// Converts a store of the one-row-per-event layout to runs, in one
/// transaction (nothing changes if it fails).
fn convert_v1(db: &Database) -> Result<(), StoreError> {
    use redb::TableHandle;
    let txn = db.begin_write()?;
    if !txn.list_tables()?.any(|t| t.name() == EVENTS_V1.name()) {
        return Ok(());
    }
    {
        let old = txn.open_table(EVENTS_V1)?;
        let mut runs = txn.open_table(RUNS)?;
        // The run being gathered: node index and its consecutive events.
        let mut run_ix = 0;
        let mut pending: Vec<SealedEvent> = Vec::new();
        for row in old.iter()? {
            let (k, v) = row?;
            let (ix, seq) = k.value();
            let corrupt = |source| StoreError::Corrupt {
                node: format!("(index {ix})"),
                seq,
                source,
            };
            let body = v
                .value()
                .get(32..)
                .ok_or(corrupt(sx_common::codec::DecodeError::Truncated))?;
            let sealed = SealedEvent::from_bytes(body.to_vec()).map_err(corrupt)?;
            let continues = run_ix == ix
                && pending.last().is_some_and(|e| e.event.seq + 1 == seq)
                && pending.len() < run::MAX_RUN;
            if !continues && !pending.is_empty() {
                let first = pending[0].event.seq;
                runs.insert((run_ix, first), run::encode(&pending).as_slice())?;
                pending.clear();
            }
            run_ix = ix;
            pending.push(sealed);
        }
        if let Some(first) = pending.first() {
            runs.insert((run_ix, first.event.seq), run::encode(&pending).as_slice())?;
        }
    }
    txn.delete_table(EVENTS_V1)?;
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use sx_common::event::{EventPayload, OperationalTransition, SyncPath};
    use sx_common::model::OperationalState;
    use sx_common::time::Timestamp;

    const NODE: &str = "sx-relais-2026-b1-node-00007";

    fn stream(from: ChainHead, n: usize) -> Vec<SealedEvent> {
        sx_common::testing::seal_stream(
            NODE,
            from,
            (0..n).map(|i| {
                (
                    Timestamp(1_000 + i as i64),
                    EventPayload::OperationalTransition(OperationalTransition {
                        from: OperationalState::InService,
                        to: OperationalState::InService,
                        reason: Some(format!("r{i}")),
                    }),
                )
            }),
        )
    }

    fn submission(key: &SigningKey, events: Vec<SealedEvent>) -> Submission {
        let checkpoint = sx_common::testing::checkpoint(key, &events).expect("events");
        Submission {
            node_id: NODE.into(),
            key: key.verifying_key(),
            cert_fingerprint: "fp".into(),
            events,
            checkpoint,
            via: SyncPath::Quic,
            received_at: Timestamp(5_000),
            news: true,
        }
    }

    #[test]
    fn reads_cross_runs_and_duplicates_are_checked_inside_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStore::open(dir.path().join("s.redb")).expect("open");
        let key = SigningKey::from_bytes(&[3; 32]);
        // 2,500 events in one submission: three runs (1024, 1024, 452).
        let events = stream(ChainHead::default(), 2_500);
        let v = store
            .append(&[submission(&key, events.clone())])
            .expect("append");
        assert_eq!(v[0].as_ref().map(|a| a.new_count), Ok(2_500));
        assert_eq!(store.event_count().expect("count"), 2_500);
        for (from, max) in [
            (1, 10_000),
            (1_000, 100),
            (1_024, 2),
            (1_025, 1),
            (2_500, 9),
        ] {
            let got = store.read(NODE, from, max).expect("read");
            let want: Vec<_> = events[from as usize - 1..]
                .iter()
                .take(max)
                .cloned()
                .collect();
            assert_eq!(got, want, "read from {from}, max {max}");
        }
        assert!(store.read(NODE, 2_501, 10).expect("read").is_empty());
        // Resending a range that straddles two runs is a duplicate...
        let again = submission(&key, events[1_000..1_100].to_vec());
        let v = store.append(&[again]).expect("append");
        assert_eq!(v[0].as_ref().map(|a| a.new_count), Ok(0));
        // ...and a different event at a stored seq inside a run is a fork.
        let mut forked = stream(
            ChainHead {
                seq: 1_499,
                hash: events[1_498].hash,
            },
            1,
        );
        forked[0] = SealedEvent::seal(sx_common::Event {
            payload: EventPayload::OperationalTransition(OperationalTransition {
                from: OperationalState::InService,
                to: OperationalState::Degraded,
                reason: None,
            }),
            ..forked[0].event.clone()
        });
        let v = store.append(&[submission(&key, forked)]).expect("append");
        assert!(
            matches!(
                v[0],
                Err(Rejection::Invalid(VerifyError::Fork { seq: 1_500, .. }))
            ),
            "{:?}",
            v[0]
        );
        assert_eq!(store.read(NODE, 1, 10_000).expect("read"), events);
    }

    #[test]
    fn a_store_of_one_row_per_event_is_converted_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("old.redb");
        let events = stream(ChainHead::default(), 1_500);
        let last = events.last().expect("events");
        {
            // What an older build wrote.
            let db = Database::create(&path).expect("create");
            let txn = db.begin_write().expect("txn");
            {
                let mut nodes = txn.open_table(NODES).expect("nodes");
                let record = NodeRecord {
                    node_id: NODE.into(),
                    head: ChainHead {
                        seq: last.event.seq,
                        hash: last.hash,
                    },
                    first_seen: Timestamp(1),
                    last_sync: None,
                    last_sync_via: None,
                    cert_fingerprint: "fp".into(),
                    public_key: Digest([0; 32]),
                    index: 0,
                };
                nodes
                    .insert(NODE, encode_record(&record).as_slice())
                    .expect("insert");
                let mut rows = txn.open_table(EVENTS_V1).expect("events");
                for e in &events {
                    let mut value = e.hash.0.to_vec();
                    value.extend_from_slice(&e.bytes);
                    rows.insert((0, e.event.seq), value.as_slice())
                        .expect("insert");
                }
            }
            txn.commit().expect("commit");
        }
        let store = RedbStore::open(&path).expect("open converts");
        assert_eq!(store.read(NODE, 1, 10_000).expect("read"), events);
        assert_eq!(store.event_count().expect("count"), 1_500);
        drop(store);
        // Converted once: the old table is gone, reopening is plain.
        let store = RedbStore::open(&path).expect("reopen");
        assert_eq!(store.read(NODE, 700, 3).expect("read"), events[699..702]);
    }
}
