//! The journal as the running agent shares it: one owner behind a mutex,
//! every call run on the blocking pool, and a watch channel that tells the
//! uplink when the head moved.

use crate::journal::{AppendOutcome, Journal, JournalError, Marks, RedbJournal};
use std::sync::{Arc, Mutex};
use sx_common::chain::{ChainHead, Checkpoint, Digest};
use sx_common::event::EventPayload;
use sx_common::time::{Span, Timestamp};
use tokio::sync::watch;

/// Cheap-to-clone handle on the agent's journal.
#[derive(Clone, Debug)]
pub struct JournalHandle {
    inner: Arc<Mutex<RedbJournal>>,
    key: Arc<ed25519_dalek::SigningKey>,
    node_id: Arc<str>,
    head: watch::Sender<ChainHead>,
    /// The node's own twin, folded from every held event and kept current
    /// by each append (drift is detected against it).
    twin: Arc<Mutex<sx_common::DigitalTwin>>,
}

/// A batch read for the uplink: canonical bytes and a checkpoint over the
/// last event.
#[derive(Debug)]
pub struct OutgoingBatch {
    pub from: u64,
    pub events: Vec<Vec<u8>>,
    pub checkpoint: Checkpoint,
}

impl JournalHandle {
    /// Takes ownership of the journal and folds its held events into the
    /// node's twin.
    pub fn new(journal: RedbJournal, key: ed25519_dalek::SigningKey) -> Result<Self, JournalError> {
        let mut twin = sx_common::DigitalTwin::default();
        let mut next = journal.marks().first_held_seq.max(1);
        loop {
            let chunk = journal.read_range(next, 4_096)?;
            let Some(last) = chunk.last() else { break };
            next = last.event.seq + 1;
            for e in &chunk {
                sx_common::fold::apply(&mut twin, &e.event);
            }
        }
        let (head, _) = watch::channel(journal.head());
        Ok(JournalHandle {
            node_id: journal.node_id().into(),
            inner: Arc::new(Mutex::new(journal)),
            key: Arc::new(key),
            head,
            twin: Arc::new(Mutex::new(twin)),
        })
    }

    /// A copy of the node's current twin.
    pub fn twin(&self) -> sx_common::DigitalTwin {
        self.twin.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn head(&self) -> ChainHead {
        *self.head.borrow()
    }

    /// Notified whenever the head moves.
    pub fn watch_head(&self) -> watch::Receiver<ChainHead> {
        self.head.subscribe()
    }

    async fn with<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut RedbJournal) -> Result<R, JournalError> + Send + 'static,
    ) -> Result<R, JournalError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = inner.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        // The closure only panics on a bug; carry the panic on.
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// Appends durably; the head watch moves after the commit.
    pub async fn append(
        &self,
        items: Vec<(Timestamp, EventPayload)>,
    ) -> Result<AppendOutcome, JournalError> {
        let outcome = self.with(move |j| j.append(&items)).await?;
        {
            let mut twin = self.twin.lock().unwrap_or_else(|p| p.into_inner());
            for e in &outcome.events {
                sx_common::fold::apply(&mut twin, &e.event);
            }
        }
        self.head.send_if_modified(|h| {
            let new = outcome.head();
            let moved = new.seq > h.seq;
            if moved {
                *h = new;
            }
            moved
        });
        Ok(outcome)
    }

    /// Appends one payload stamped `now`.
    pub async fn record(&self, payload: EventPayload) -> Result<AppendOutcome, JournalError> {
        self.append(vec![(Timestamp::now(), payload)]).await
    }

    /// Up to `max` events from `from`, with a fresh checkpoint signed over
    /// the last one.
    pub async fn read_batch(&self, from: u64, max: usize) -> Result<OutgoingBatch, JournalError> {
        let key = self.key.clone();
        let node = self.node_id.clone();
        self.with(move |j| {
            let (events, last) = j.read_raw(from, max)?;
            let last = last.ok_or(JournalError::Pruned {
                requested: from,
                first_held: j.marks().first_held_seq,
            })?;
            let checkpoint = Checkpoint::sign(&key, &node, last.seq, last.hash);
            Ok(OutgoingBatch {
                from,
                events,
                checkpoint,
            })
        })
        .await
    }

    /// The hash of the event at `seq` (genesis for 0), `None` if pruned.
    pub async fn hash_at(&self, seq: u64) -> Result<Option<Digest>, JournalError> {
        if seq == 0 {
            return Ok(Some(Digest::GENESIS));
        }
        self.with(move |j| match j.read_range(seq, 1) {
            Ok(v) => Ok(v.first().filter(|e| e.event.seq == seq).map(|e| e.hash)),
            Err(JournalError::Pruned { .. }) => Ok(None),
            Err(e) => Err(e),
        })
        .await
    }

    pub async fn set_acked(&self, head: ChainHead) -> Result<(), JournalError> {
        self.with(move |j| j.set_acked(head.seq, head.hash)).await
    }

    pub async fn set_receipted(&self, head: ChainHead) -> Result<(), JournalError> {
        self.with(move |j| j.set_receipted(head.seq, head.hash))
            .await
    }

    /// Records that events up to `seq` were written to a bundle.
    pub async fn set_exported(&self, seq: u64) -> Result<(), JournalError> {
        self.with(move |j| j.set_exported(seq)).await
    }

    pub async fn marks(&self) -> Marks {
        self.with(|j| Ok(j.marks())).await.unwrap_or_default()
    }

    pub async fn prune(&self, now: Timestamp, retention: Span) -> Result<u64, JournalError> {
        self.with(move |j| j.prune(now, retention)).await
    }

    /// Up to `max` events from `from`.
    pub async fn read(
        &self,
        from: u64,
        max: usize,
    ) -> Result<Vec<sx_common::chain::SealedEvent>, JournalError> {
        self.with(move |j| j.read_range(from, max)).await
    }
}
