//! The single writer: submissions from every connection (and bundle import)
//! queue here and are group-committed, many per durable transaction.
//! Replies go out only after the commit returned, so an acknowledgement
//! always means "durable".

use crate::store::{Admitted, EventStore, StoreError, Submission};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use sx_common::chain::SealedEvent;
use sx_common::protocol::Rejection;
use tokio::sync::{broadcast, mpsc, oneshot};

/// The verdict on one submission.
pub type Verdict = Result<Admitted, Rejection>;

/// Limits of one group commit.
#[derive(Clone, Debug)]
pub struct GroupCommit {
    /// Most submissions in one transaction.
    pub max_submissions: usize,
    /// Most events in one transaction (soft: a single large submission is
    /// never split).
    pub max_events: usize,
}

impl Default for GroupCommit {
    fn default() -> Self {
        GroupCommit {
            max_submissions: 256,
            max_events: 64_000,
        }
    }
}

/// Told to subscribers after every commit: the events newly stored for a
/// node, in seq order.
#[derive(Clone, Debug, PartialEq)]
pub struct Committed {
    pub node_id: String,
    pub events: Vec<SealedEvent>,
}

/// Counters of the writer, for status and metrics.
#[derive(Debug, Default)]
pub struct IngestStats {
    pub commits: AtomicU64,
    pub events_stored: AtomicU64,
    pub duplicates: AtomicU64,
    pub rejected: AtomicU64,
    /// Microseconds the writer spent verifying and committing (its
    /// utilisation: busy time over wall time).
    pub busy_us: AtomicU64,
}

struct Job {
    submission: Submission,
    reply: oneshot::Sender<Verdict>,
}

/// Handle to the writer; cheap to clone.
#[derive(Clone, Debug)]
pub struct Ingest {
    jobs: mpsc::Sender<Job>,
    commits: broadcast::Sender<Arc<Vec<Committed>>>,
    pub stats: Arc<IngestStats>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("node", &self.submission.node_id)
            .finish()
    }
}

/// The writer could not take or answer a submission.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("the writer has stopped")]
    Stopped,
}

impl Ingest {
    /// Starts the writer on its own thread. It runs until every handle is
    /// dropped.
    pub fn start(store: Arc<dyn EventStore>, limits: GroupCommit) -> Ingest {
        let (jobs, rx) = mpsc::channel::<Job>(1_024);
        let (commits, _) = broadcast::channel(1_024);
        let stats = Arc::new(IngestStats::default());
        let writer_commits = commits.clone();
        let writer_stats = stats.clone();
        std::thread::Builder::new()
            .name("sx-ingest-writer".into())
            .spawn(move || writer_loop(store, limits, rx, writer_commits, writer_stats))
            .map(|_| ())
            .unwrap_or_else(|e| tracing::error!("cannot start the ingest writer: {e}"));
        Ingest {
            jobs,
            commits,
            stats,
        }
    }

    /// Queues a submission; the returned receiver yields the verdict after
    /// the commit.
    pub async fn submit(
        &self,
        submission: Submission,
    ) -> Result<oneshot::Receiver<Verdict>, IngestError> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job { submission, reply })
            .await
            .map_err(|_| IngestError::Stopped)?;
        Ok(rx)
    }

    /// Submits and waits for the verdict.
    pub async fn submit_and_wait(&self, submission: Submission) -> Result<Verdict, IngestError> {
        self.submit(submission)
            .await?
            .await
            .map_err(|_| IngestError::Stopped)
    }

    /// Blocking variant for non-async callers (bundle import from the CLI).
    pub fn submit_blocking(&self, submission: Submission) -> Result<Verdict, IngestError> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .blocking_send(Job { submission, reply })
            .map_err(|_| IngestError::Stopped)?;
        rx.blocking_recv().map_err(|_| IngestError::Stopped)
    }

    /// New events after each commit.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Vec<Committed>>> {
        self.commits.subscribe()
    }
}

fn writer_loop(
    store: Arc<dyn EventStore>,
    limits: GroupCommit,
    mut rx: mpsc::Receiver<Job>,
    commits: broadcast::Sender<Arc<Vec<Committed>>>,
    stats: Arc<IngestStats>,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        let mut events = jobs[0].submission.events.len();
        while jobs.len() < limits.max_submissions && events < limits.max_events {
            match rx.try_recv() {
                Ok(job) => {
                    events += job.submission.events.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let (submissions, replies): (Vec<Submission>, Vec<_>) =
            jobs.into_iter().map(|j| (j.submission, j.reply)).unzip();
        let started = std::time::Instant::now();
        let appended = store.append(&submissions);
        stats
            .busy_us
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        match appended {
            Ok(verdicts) => {
                stats.commits.fetch_add(1, Ordering::Relaxed);
                let mut committed = Vec::new();
                for ((sub, reply), verdict) in submissions.into_iter().zip(replies).zip(verdicts) {
                    match &verdict {
                        Ok(a) => {
                            let total = sub.events.len() as u64;
                            stats
                                .events_stored
                                .fetch_add(a.new_count, Ordering::Relaxed);
                            stats
                                .duplicates
                                .fetch_add(total - a.new_count, Ordering::Relaxed);
                            if a.new_count > 0 {
                                let mut events = sub.events;
                                let first_new = events.len() - a.new_count as usize;
                                events.drain(..first_new);
                                committed.push(Committed {
                                    node_id: sub.node_id,
                                    events,
                                });
                            }
                        }
                        Err(r) => {
                            stats.rejected.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(node = %sub.node_id, "batch rejected: {r:?}");
                        }
                    }
                    let _ = reply.send(verdict);
                }
                if !committed.is_empty() {
                    let _ = commits.send(Arc::new(committed));
                }
            }
            Err(err) => {
                tracing::error!("commit failed, nothing acknowledged: {err}");
                for reply in replies {
                    let _ = reply.send(Err(Rejection::Internal(store_error_text(&err))));
                }
            }
        }
    }
}

fn store_error_text(err: &StoreError) -> String {
    format!("store failure: {err}")
}
