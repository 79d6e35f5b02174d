//! The journal as the running agent shares it: one owner behind a mutex,
//! every call run on the blocking pool, a watch channel that tells the
//! uplink when the head moved, and one holding the node's current TLS
//! credentials, which a certificate rotation replaces.

use crate::journal::rotation::{self, PreparedRotation, RotateError, Rotated};
use crate::journal::{AppendOutcome, DataDir, Journal, JournalError, Marks, RedbJournal};
use crate::tls::Credentials;
use ed25519_dalek::VerifyingKey;
use std::sync::{Arc, Mutex};
use sx_common::chain::{ChainHead, Checkpoint, Digest};
use sx_common::event::EventPayload;
use sx_common::time::{Span, Timestamp};
use tokio::sync::watch;

/// Cheap-to-clone handle on the agent's journal.
#[derive(Clone, Debug)]
pub struct JournalHandle {
    inner: Arc<Mutex<RedbJournal>>,
    node_id: Arc<str>,
    head: watch::Sender<ChainHead>,
    /// The certificate and key the uplink presents; their key is the one
    /// the journal signs new checkpoints with.
    credentials: watch::Sender<Arc<Credentials>>,
    /// The node's own twin, folded from every held event and kept current
    /// by each append (drift is detected against it).
    twin: Arc<Mutex<sx_common::DigitalTwin>>,
    /// What the connectivity recorder resumes from, kept by the same folds.
    recorded: Arc<Mutex<RecordedConnectivity>>,
}

/// The node's own account of its connectivity, as its held events tell
/// it: the last state recorded, the last moment the aggregator was known
/// reachable, and the time of the oldest held event (when the node
/// started, as far as the journal knows).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RecordedConnectivity {
    pub state: Option<sx_common::model::ConnectivityState>,
    pub last_contact: Option<Timestamp>,
    pub oldest: Option<Timestamp>,
}

impl RecordedConnectivity {
    /// Takes one more event (in seq order) into account.
    pub fn note(&mut self, event: &sx_common::Event) {
        self.oldest.get_or_insert(event.timestamp);
        if let EventPayload::ConnectivityTransition(t) = &event.payload {
            self.state = Some(t.to);
        }
        if is_contact(&event.payload) {
            self.last_contact = Some(event.timestamp);
        }
    }
}

/// Whether an event shows the aggregator was reachable when it was
/// recorded.
pub fn is_contact(payload: &EventPayload) -> bool {
    use sx_common::model::ConnectivityState as S;
    match payload {
        EventPayload::ConnectionEstablished(_) | EventPayload::SyncCompleted(_) => true,
        EventPayload::ConnectivityTransition(t) => {
            matches!(t.to, S::Live | S::Delayed | S::Replaying)
        }
        _ => false,
    }
}

/// A batch read for the uplink: canonical bytes and a checkpoint over the
/// last event.
#[derive(Debug)]
pub struct OutgoingBatch {
    pub from: u64,
    pub events: Vec<Vec<u8>>,
    pub checkpoint: Checkpoint,
    /// The public key of the checkpoint's signature: a session whose
    /// certificate carries another key (the node rotated meanwhile) must
    /// not send the batch.
    pub signer: VerifyingKey,
}

/// Why [`JournalHandle::new`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandleError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The certificate's key is not the key the journal signs with.
    #[error("the node certificate's key is not the journal's signing key")]
    CredentialsMismatch,
}

impl JournalHandle {
    /// Takes ownership of the journal and folds its held events into the
    /// node's twin. `credentials` must carry the journal's current key.
    pub fn new(journal: RedbJournal, credentials: Credentials) -> Result<Self, HandleError> {
        if credentials.public_key() != journal.verifying_key() {
            return Err(HandleError::CredentialsMismatch);
        }
        let mut recorded = RecordedConnectivity::default();
        let twin = journal.fold_twin(|e| recorded.note(e))?;
        let (head, _) = watch::channel(journal.head());
        Ok(JournalHandle {
            node_id: journal.node_id().into(),
            inner: Arc::new(Mutex::new(journal)),
            head,
            credentials: watch::channel(Arc::new(credentials)).0,
            twin: Arc::new(Mutex::new(twin)),
            recorded: Arc::new(Mutex::new(recorded)),
        })
    }

    /// The node's connectivity as its held events record it.
    pub fn recorded_connectivity(&self) -> RecordedConnectivity {
        *self.recorded.lock().unwrap_or_else(|p| p.into_inner())
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

    /// The node's current TLS credentials.
    pub fn credentials(&self) -> Arc<Credentials> {
        self.credentials.borrow().clone()
    }

    /// Notified whenever a rotation replaced the credentials.
    pub fn watch_credentials(&self) -> watch::Receiver<Arc<Credentials>> {
        self.credentials.subscribe()
    }

    async fn with<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut RedbJournal) -> Result<R, JournalError> + Send + 'static,
    ) -> Result<R, JournalError> {
        self.blocking(f).await
    }

    /// Runs `f` on the journal on the blocking pool.
    async fn blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut RedbJournal) -> R + Send + 'static,
    ) -> R {
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
        let outcome = self.with(move |j| j.append_owned(items)).await?;
        self.appended(&outcome.events);
        Ok(outcome)
    }

    /// Folds appended events into the twin and moves the head watch.
    fn appended(&self, events: &[sx_common::chain::SealedEvent]) {
        {
            let mut twin = self.twin.lock().unwrap_or_else(|p| p.into_inner());
            for e in events {
                sx_common::fold::apply(&mut twin, &e.event);
            }
        }
        {
            let mut recorded = self.recorded.lock().unwrap_or_else(|p| p.into_inner());
            for e in events {
                recorded.note(&e.event);
            }
        }
        let Some(last) = events.last() else { return };
        self.head.send_if_modified(|h| {
            let moved = last.event.seq > h.seq;
            if moved {
                *h = last.head();
            }
            moved
        });
    }

    /// Applies a prepared certificate rotation (see
    /// [`rotation::apply`]) to the held journal, then hands the uplink the
    /// new credentials: it ends its session and reconnects with them. Also
    /// when installing the files failed after the journal commit, the
    /// journal signs with the new key from then on, so the credentials
    /// move with it.
    pub async fn rotate(
        &self,
        dir: DataDir,
        prepared: PreparedRotation,
        now: Timestamp,
    ) -> Result<Rotated, RotateError> {
        let credentials = Credentials::from_pem(prepared.cert_pem(), prepared.key_pem());
        let (result, rotated_event) = self
            .blocking(move |j| {
                let before = j.verifying_key();
                let result = rotation::apply(&dir, j, &prepared, now);
                let event = (j.verifying_key() != before)
                    .then(|| j.read_range(j.head().seq, 1).ok())
                    .flatten();
                (result.map(|(rotated, _)| rotated), event)
            })
            .await;
        if let Some(events) = rotated_event {
            self.appended(&events);
            match credentials {
                Ok(c) => {
                    self.credentials.send_replace(Arc::new(c));
                }
                Err(e) => tracing::error!("new credentials unusable after rotation: {e:#}"),
            }
        }
        result
    }

    /// Appends one payload stamped `now`.
    pub async fn record(&self, payload: EventPayload) -> Result<AppendOutcome, JournalError> {
        self.append(vec![(Timestamp::now(), payload)]).await
    }

    /// Up to `max` events from `from`, with a fresh checkpoint signed over
    /// the last one with the current key (so events checkpointed under a
    /// key a rotation retired go out signed with the new one).
    pub async fn read_batch(&self, from: u64, max: usize) -> Result<OutgoingBatch, JournalError> {
        self.with(move |j| {
            let (events, last) = j.read_raw(from, max)?;
            let last = last.ok_or(JournalError::Pruned {
                requested: from,
                first_held: j.marks().first_held_seq,
            })?;
            Ok(OutgoingBatch {
                from,
                events,
                checkpoint: j.sign_checkpoint(last),
                signer: j.verifying_key(),
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

    /// The journal's status, as `sx-agent status` shows it.
    pub async fn status(&self) -> Result<crate::journal::data_dir::Status, JournalError> {
        self.with(|j| crate::journal::data_dir::Status::of(&*j))
            .await
    }

    /// Verifies the whole journal. Recording waits while it runs (about a
    /// second per million events).
    pub async fn verify(&self) -> Result<crate::journal::VerifyReport, JournalError> {
        self.with(|j| j.verify()).await
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
