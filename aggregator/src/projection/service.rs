//! The projection driver: keeps a [`ProjectionEngine`] current after each
//! commit, restarts fast from a snapshot plus the store's tail, streams
//! node changes to subscribers, and answers as-of queries from the store.

use super::{NodeChange, ProjectionEngine};
use crate::ingest::Ingest;
use crate::store::{EventStore, StoreError, read_chunks};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};
use sx_common::model::DigitalTwin;
use sx_common::time::Timestamp;
use tokio::sync::broadcast;

/// The running projections of a region.
#[derive(Debug)]
pub struct Projections {
    engine: RwLock<ProjectionEngine>,
    updates: broadcast::Sender<Arc<NodeChange>>,
    store: Arc<dyn EventStore>,
    snapshot_path: PathBuf,
    /// Called with the nodes events were just applied to, before their
    /// changes are streamed: the aggregator records their observations
    /// (the engine ignores observations of nodes it does not hold yet).
    observer: OnceLock<ObserverCell>,
}

/// See [`Projections::set_observer`].
pub type Observer = Box<dyn Fn(&[&str]) + Send + Sync>;

struct ObserverCell(Observer);

impl std::fmt::Debug for ObserverCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

/// How the projections came up.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Startup {
    pub from_snapshot: bool,
    pub tail_events: u64,
    pub nodes: usize,
}

impl Projections {
    /// Loads the snapshot at `snapshot_path` (if it decodes) and applies
    /// whatever the store holds beyond it.
    pub fn open(
        store: Arc<dyn EventStore>,
        snapshot_path: &Path,
    ) -> Result<(Self, Startup), StoreError> {
        let snapshot = std::fs::read(snapshot_path)
            .ok()
            .and_then(|b| ProjectionEngine::from_snapshot(&b).ok());
        let from_snapshot = snapshot.is_some();
        let mut engine = snapshot.unwrap_or_default();
        let tail_events = catch_up(&mut engine, store.as_ref(), None)?;
        let startup = Startup {
            from_snapshot,
            tail_events,
            nodes: engine.len(),
        };
        let (updates, _) = broadcast::channel(4_096);
        Ok((
            Projections {
                engine: RwLock::new(engine),
                updates,
                store,
                snapshot_path: snapshot_path.to_path_buf(),
                observer: OnceLock::new(),
            },
            startup,
        ))
    }

    /// Reads the engine.
    pub fn read<R>(&self, f: impl FnOnce(&ProjectionEngine) -> R) -> R {
        let guard = self.engine.read().unwrap_or_else(|p| p.into_inner());
        f(&guard)
    }

    fn write<R>(&self, f: impl FnOnce(&mut ProjectionEngine) -> R) -> R {
        let mut guard = self.engine.write().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// Sets what is called with the nodes events were applied to (once;
    /// later calls are ignored). It runs with no engine lock held.
    pub fn set_observer(&self, observer: Observer) {
        let _ = self.observer.set(ObserverCell(observer));
    }

    /// Records the aggregator's observations of nodes in the engine
    /// ([`ProjectionEngine::observe`]), taking the write lock only when one
    /// differs from what the engine holds (nodes the engine does not hold
    /// are skipped).
    pub fn observe(&self, observations: Vec<(String, super::views::Observed)>) {
        let changed: Vec<_> = self.read(|e| {
            observations
                .into_iter()
                .filter(|(node, o)| e.node(node).is_some() && e.observed(node) != Some(o))
                .collect()
        });
        if !changed.is_empty() {
            self.write(|e| {
                for (node, o) in changed {
                    e.observe(&node, o);
                }
            });
        }
    }

    /// Streams applied changes, after the observer saw their nodes.
    fn publish(&self, changes: Vec<NodeChange>) {
        if changes.is_empty() {
            return;
        }
        if let Some(observer) = self.observer.get() {
            let nodes: Vec<&str> = changes.iter().map(|c| c.node.as_str()).collect();
            (observer.0)(&nodes);
        }
        for c in changes {
            let _ = self.updates.send(Arc::new(c));
        }
    }

    /// Node changes, as they are applied.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<NodeChange>> {
        self.updates.subscribe()
    }

    /// Brings the engine up to the store (all nodes, desired state).
    pub fn catch_up(&self) -> Result<u64, StoreError> {
        let mut changes = Vec::new();
        let n = self.write(|e| catch_up(e, self.store.as_ref(), Some(&mut changes)))?;
        self.publish(changes);
        Ok(n)
    }

    /// Applies committed events as the writer reports them, until the
    /// writer stops. Falls back to reading the store when it lagged.
    pub fn follow(self: Arc<Self>, ingest: &Ingest) -> tokio::task::JoinHandle<()> {
        let mut rx = ingest.subscribe();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(batch) => {
                        let changes: Vec<NodeChange> = self.write(|e| {
                            batch
                                .iter()
                                .filter_map(|c| e.apply(c.events.iter().map(|s| &s.event)))
                                .collect()
                        });
                        // A gap (a commit seen before an earlier one) is
                        // closed from the store.
                        let behind = self.read(|e| {
                            batch.iter().any(|c| {
                                let last = c.events.last().map_or(0, |s| s.event.seq);
                                e.node(&c.node_id).is_none_or(|v| v.last_seq() < last)
                            })
                        });
                        self.publish(changes);
                        if behind && let Err(e) = self.catch_up() {
                            tracing::error!("projection catch-up failed: {e}");
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::debug!("projections lagged {n} commits; reading the store");
                        if let Err(e) = self.catch_up() {
                            tracing::error!("projection catch-up failed: {e}");
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        })
    }

    /// Records a desired-state change durably, then applies it.
    pub fn change_desired(
        &self,
        by: &str,
        change: sx_common::desired::DesiredChangeKind,
    ) -> Result<sx_common::desired::DesiredChange, StoreError> {
        let record = self.store.append_desired(Timestamp::now(), by, change)?;
        self.catch_up()?;
        Ok(record)
    }

    /// Writes a snapshot (atomically: temp file, fsync, rename).
    pub fn save_snapshot(&self) -> std::io::Result<usize> {
        use std::io::Write;
        let bytes = self.read(ProjectionEngine::to_snapshot);
        let tmp = self.snapshot_path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.snapshot_path)?;
        Ok(bytes.len())
    }

    /// A node's twin as it was at `at` (events stamped at or before `at`).
    pub fn twin_as_of(&self, node: &str, at: Timestamp) -> Result<Option<DigitalTwin>, StoreError> {
        Ok(engine_as_of(self.store.as_ref(), Some(node), at)?
            .node(node)
            .map(|v| v.twin.clone()))
    }

    /// The whole engine as it was at `at`.
    pub fn engine_as_of(&self, at: Timestamp) -> Result<ProjectionEngine, StoreError> {
        engine_as_of(self.store.as_ref(), None, at)
    }

    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }
}

/// Applies every stored event and desired change beyond the engine's
/// positions. Returns how many events were applied.
pub fn catch_up(
    engine: &mut ProjectionEngine,
    store: &dyn EventStore,
    mut changes: Option<&mut Vec<NodeChange>>,
) -> Result<u64, StoreError> {
    let mut applied = 0;
    for change in store.desired_changes(engine.desired_seq())? {
        engine.apply_desired(&change);
    }
    for record in store.nodes()? {
        let next = engine.node(&record.node_id).map_or(1, |v| v.last_seq() + 1);
        read_chunks(store, &record.node_id, next, record.head.seq, |chunk| {
            applied += chunk.len() as u64;
            let change = engine.apply(chunk.iter().map(|s| &s.event));
            if let (Some(out), Some(c)) = (changes.as_deref_mut(), change) {
                out.push(c);
            }
            ControlFlow::Continue(())
        })?;
    }
    Ok(applied)
}

/// Rebuilds an engine from the store alone (every event, every desired
/// change), as a check that incremental equals rebuilt.
pub fn rebuild(store: &dyn EventStore) -> Result<ProjectionEngine, StoreError> {
    let mut engine = ProjectionEngine::new();
    catch_up(&mut engine, store, None)?;
    Ok(engine)
}

/// The engine of events and desired changes stamped at or before `at`
/// (one node, or all).
pub fn engine_as_of(
    store: &dyn EventStore,
    only: Option<&str>,
    at: Timestamp,
) -> Result<ProjectionEngine, StoreError> {
    let mut engine = ProjectionEngine::new();
    for change in store.desired_changes(0)? {
        if change.at <= at {
            engine.apply_desired(&change);
        }
    }
    for record in store.nodes()? {
        if only.is_some_and(|n| n != record.node_id) {
            continue;
        }
        // The node's history up to `at`: its events in seq order until the
        // first one stamped later.
        read_chunks(store, &record.node_id, 1, record.head.seq, |chunk| {
            let upto = chunk.iter().take_while(|s| s.event.timestamp <= at).count();
            engine.apply(chunk[..upto].iter().map(|s| &s.event));
            if upto < chunk.len() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
    }
    Ok(engine)
}
