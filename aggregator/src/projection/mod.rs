//! The projection engine: folds over committed events that operators query
//! instead of raw events (the seed's "State Projection Engine").
//!
//! [`ProjectionEngine`] is pure: events and the desired state in, views out;
//! no store, no clock. Per node it keeps the twin (current state), its
//! drift summary (the full analysis is computed on request), the recent
//! connectivity ledger and certificate rotations (kept encoded, [`encoded`]) and the trust
//! history, remembering the last seq applied, so the engine updates
//! incrementally after each commit and a rebuild from the store yields the
//! same engine (invariant 4 of DESIGN.md). A committed run of events costs
//! one summary, row and graph update, however long. Group views (drift,
//! connectivity, lifecycle per cluster/zone/fleet) are computed on query in
//! one pass over a compact row per node ([`rows`]) kept beside each view;
//! the fleet graph ([`graph`]) is kept up to date with the twins.
//!
//! [`service`] is the driver: it feeds the engine after each commit,
//! snapshots it, and streams updates to subscribers.

pub mod drift;
mod drift_groups;
pub mod encoded;
pub mod graph;
mod rows;
pub mod service;
pub mod trust;
pub mod views;

use drift::{DriftAnalysis, DriftSummary};
pub use encoded::{LEDGER_IN_MEMORY, RecentLedger};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};
use sx_common::desired::{DesiredChange, DesiredSpec, NodePlace};
use sx_common::event::{DesiredStateLearned, Event};
use sx_common::fold;
use sx_common::ledger::{ConnectivityLedger, LedgerEntry};
use sx_common::model::{ConnectivityState, DigitalTwin, LifecyclePhase};

/// Everything the engine holds for one node. The full drift analysis is
/// not kept: [`ProjectionEngine::drift`] computes it on request from the
/// twin; the engine keeps its summary, current after every apply.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub twin: DigitalTwin,
    pub summary: DriftSummary,
    /// The most recent connectivity transitions, oldest first.
    pub recent_ledger: RecentLedger,
    /// Certificate rotations and attestation outcomes (for the trust index).
    #[serde(default)]
    pub trust: trust::TrustHistory,
}

impl NodeView {
    /// Seq of the last event applied.
    pub fn last_seq(&self) -> u64 {
        self.twin.last_seq
    }

    /// The node's drift analysis against `desired` (the engine's
    /// [`desired`](ProjectionEngine::desired) state, for the analysis the
    /// engine's summary stands for).
    pub fn drift(&self, desired: &DesiredSpec) -> DriftAnalysis {
        drift::analyze(&self.twin, desired)
    }
}

/// What changed for a node after an apply, for subscribers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeChange {
    pub node: String,
    pub seq: u64,
    pub connectivity: ConnectivityState,
    pub phase: LifecyclePhase,
    pub severity: drift::Severity,
    pub event_types: Vec<String>,
}

/// A node's view (inline: a box would cost a pointer and an allocation
/// header per node) and the desired state resolved for its place, shared
/// with every node resolving to the same (`None`: to resolve on the next
/// apply).
#[derive(Clone, Debug)]
struct NodeEntry {
    view: NodeView,
    desired: Option<Arc<DesiredStateLearned>>,
}

/// What a snapshot starts with: an engine snapshot of this layout (older
/// layouts are refused, and the engine rebuilt from the store).
const SNAPSHOT_FORMAT: [u8; 8] = *b"sxproj\x00\x02";

/// The engine.
///
/// Nodes are kept by row (the order they first appeared, the row of the
/// fleet table), found through a hash index; listings come in node id
/// order, computed on first use after a node was added.
///
/// Equality is semantic: the same views, desired state, graph and rows
/// (rows and graph compared by content, not by interned ids or indices).
#[derive(Clone, Debug, Default)]
pub struct ProjectionEngine {
    /// By row. A node's row is found through the graph's index
    /// ([`graph::FleetGraph::row`]): every node is a vertex.
    nodes: Vec<NodeEntry>,
    desired: DesiredSpec,
    /// Seq of the last desired-state change applied.
    desired_seq: u64,
    /// Desired states resolved for nodes, by their encoding: nodes in the
    /// same place share one.
    resolved: HashMap<Vec<u8>, Arc<DesiredStateLearned>>,
    /// The fleet graph of the twins above, updated with them. Derived data:
    /// not in snapshots (petgraph indices depend on insertion order), rebuilt
    /// by [`from_snapshot`](Self::from_snapshot); compared semantically.
    graph: graph::FleetGraph,
    /// One compact row per node for the group views, and the aggregator's
    /// own observations; derived like the graph (observations are not
    /// derived from events at all: never snapshotted, never compared).
    table: rows::FleetTable,
    /// Rows in node id order.
    order: OnceLock<Vec<u32>>,
    /// Per row, the rank of its node id among all node ids.
    ranks: OnceLock<Vec<u32>>,
}

impl PartialEq for ProjectionEngine {
    fn eq(&self, other: &Self) -> bool {
        self.desired_seq == other.desired_seq
            && self.desired == other.desired
            && self.nodes.len() == other.nodes.len()
            && self.order().iter().zip(other.order()).all(|(a, b)| {
                let (va, vb) = (
                    &self.nodes[*a as usize].view,
                    &other.nodes[*b as usize].view,
                );
                self.table.node(*a) == other.table.node(*b)
                    && va == vb
                    && self.table.resolved(*a) == other.table.resolved(*b)
            })
            && self.graph == other.graph
    }
}

/// Resolves the desired state of a twin's place, shared through `resolved`.
fn resolve(
    resolved: &mut HashMap<Vec<u8>, Arc<DesiredStateLearned>>,
    spec: &DesiredSpec,
    twin: &DigitalTwin,
) -> Arc<DesiredStateLearned> {
    let desired = spec.resolve(&NodePlace::of(twin));
    let key = postcard::to_allocvec(&desired).unwrap_or_default();
    resolved
        .entry(key)
        .or_insert_with(|| Arc::new(desired))
        .clone()
}

impl ProjectionEngine {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies consecutive events of one node. Events at or below the
    /// node's last applied seq are skipped (already applied); a gap stops
    /// the apply (the caller reads the missing events first). Returns the
    /// change, if any event was applied.
    ///
    /// A run costs one update of the node's summary, row and graph vertex
    /// whatever its length: only the fold itself is per event.
    pub fn apply<'a>(&mut self, events: impl IntoIterator<Item = &'a Event>) -> Option<NodeChange> {
        let mut events = events.into_iter().peekable();
        let first: &'a Event = events.peek()?;
        let node = first.node_id.as_str();
        // Only a stream's first event creates a node: a batch that starts
        // past a gap must not leave an empty view behind.
        let existing = self.graph.row(node);
        if existing.is_none() && first.seq != 1 {
            return None;
        }
        let mut fresh: Option<NodeView> = None;
        let view: &mut NodeView = match existing {
            Some(row) => &mut self.nodes[row as usize].view,
            None => fresh.insert(NodeView::default()),
        };
        let mut placement = existing.is_none();
        let mut ledger: Vec<LedgerEntry> = Vec::new();
        let mut types: Vec<&'static str> = Vec::new();
        for event in events {
            if event.node_id != node {
                break;
            }
            if event.seq <= view.last_seq() {
                continue;
            }
            if event.seq != view.last_seq() + 1 {
                break;
            }
            fold::fold_event(&mut view.twin, event);
            view.trust.apply(event);
            placement |= graph::changes_placement(&event.payload);
            if let Some(entry) = LedgerEntry::from_event(event) {
                ledger.push(entry);
            }
            let t = event.event_type();
            if !types.iter().any(|x| std::ptr::eq(*x, t)) {
                types.push(t);
            }
        }
        if types.is_empty() {
            return None;
        }
        fold::derive(&mut view.twin);
        view.recent_ledger.extend(ledger, LEDGER_IN_MEMORY);
        // The lineage grows by push; keep no spare capacity per twin.
        view.twin.trust.sbom_lineage.shrink_to_fit();
        if placement {
            self.graph.update_node(node, &view.twin);
        }
        let row = match existing {
            Some(row) => row,
            None => {
                let row = self.nodes.len() as u32;
                let id = self.graph.shared_id(node).unwrap_or_else(|| node.into());
                self.graph.set_row(node, row);
                self.table.add(id);
                self.nodes.push(NodeEntry {
                    view: fresh.take().unwrap_or_default(),
                    desired: None,
                });
                self.order = OnceLock::new();
                self.ranks = OnceLock::new();
                row
            }
        };
        let entry = &mut self.nodes[row as usize];
        let view = &mut entry.view;
        let desired = match &entry.desired {
            Some(d) if !placement => d.clone(),
            _ => {
                let d = resolve(&mut self.resolved, &self.desired, &view.twin);
                entry.desired = Some(d.clone());
                d
            }
        };
        view.summary = drift::summarize_against(&view.twin, &desired, &self.desired);
        self.table.update(row, view, placement);
        Some(NodeChange {
            node: node.to_owned(),
            seq: view.twin.last_seq,
            connectivity: view.twin.connectivity.state,
            phase: view.twin.lifecycle.phase,
            severity: view.summary.severity,
            event_types: types.into_iter().map(str::to_owned).collect(),
        })
    }

    /// Applies a desired-state change and re-analyses every node.
    pub fn apply_desired(&mut self, change: &DesiredChange) {
        if change.seq <= self.desired_seq {
            return;
        }
        self.desired.apply(&change.change);
        self.desired_seq = change.seq;
        self.resolved.clear();
        for (row, entry) in self.nodes.iter_mut().enumerate() {
            let view = &mut entry.view;
            let desired = resolve(&mut self.resolved, &self.desired, &view.twin);
            view.summary = drift::summarize_against(&view.twin, &desired, &self.desired);
            entry.desired = Some(desired);
            self.table.update(row as u32, view, false);
        }
    }

    /// The fleet graph of the twins the engine holds.
    pub fn graph(&self) -> &graph::FleetGraph {
        &self.graph
    }

    pub fn desired(&self) -> &DesiredSpec {
        &self.desired
    }

    pub fn desired_seq(&self) -> u64 {
        self.desired_seq
    }

    pub fn node(&self, node: &str) -> Option<&NodeView> {
        let row = self.graph.row(node)?;
        Some(&self.nodes[row as usize].view)
    }

    /// A node's drift analysis against the engine's desired state (its
    /// summary is in the node's view).
    pub fn drift(&self, node: &str) -> Option<DriftAnalysis> {
        Some(self.node(node)?.drift(&self.desired))
    }

    /// Every node, in node id order.
    pub fn nodes(&self) -> impl Iterator<Item = (&String, &NodeView)> {
        self.order().iter().map(|row| {
            let view = &self.nodes[*row as usize].view;
            // The twin's id is the node's: every event folded in names it.
            (&view.twin.identity.immutable_id, view)
        })
    }

    /// The view of a row of the fleet table.
    pub(crate) fn view_at(&self, row: u32) -> Option<&NodeView> {
        self.nodes.get(row as usize).map(|e| &e.view)
    }

    /// The fleet table the group views scan.
    pub(crate) fn table(&self) -> &rows::FleetTable {
        &self.table
    }

    /// Rows in node id order.
    fn order(&self) -> &[u32] {
        self.order.get_or_init(|| {
            let mut order: Vec<u32> = (0..self.nodes.len() as u32).collect();
            order.sort_unstable_by(|a, b| self.table.node(*a).cmp(self.table.node(*b)));
            order
        })
    }

    /// Per row of the fleet table, the rank of its node id in id order.
    pub(crate) fn ranks(&self) -> &[u32] {
        self.ranks.get_or_init(|| {
            let mut ranks = vec![0; self.nodes.len()];
            for (rank, row) in self.order().iter().enumerate() {
                ranks[*row as usize] = rank as u32;
            }
            ranks
        })
    }

    /// Every node's row index, in node id order.
    pub(crate) fn rows_by_node(&self) -> impl Iterator<Item = (&str, u32)> {
        self.order().iter().map(|row| (self.table.node(*row), *row))
    }

    /// Records the aggregator's own observation of a node's sync (last
    /// contact, backlog, connection), for [`views::connectivity_observed_by`].
    /// Not an event: kept apart from the twin, never snapshotted, never part
    /// of equality. Ignored for a node the engine does not hold.
    pub fn observe(&mut self, node: &str, observed: views::Observed) {
        if let Some(row) = self.graph.row(node) {
            self.table.observe(row, observed);
        }
    }

    /// The last observation recorded with [`observe`](Self::observe).
    pub fn observed(&self, node: &str) -> Option<&views::Observed> {
        self.table.observed(self.graph.row(node)?)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The last seq applied per node (what a snapshot covers).
    pub fn positions(&self) -> BTreeMap<String, u64> {
        self.nodes()
            .map(|(k, v)| (k.clone(), v.last_seq()))
            .collect()
    }

    /// The connectivity ledger rows held in memory for a node.
    pub fn recent_ledger(&self, node: &str) -> Option<ConnectivityLedger> {
        self.node(node).map(|v| ConnectivityLedger {
            node: node.to_owned(),
            history: v.recent_ledger.entries(),
        })
    }

    /// Encodes the engine for a snapshot.
    pub fn to_snapshot(&self) -> Vec<u8> {
        sx_common::codec::encode_versioned(self)
    }

    /// Decodes a snapshot written by [`to_snapshot`](Self::to_snapshot).
    pub fn from_snapshot(bytes: &[u8]) -> Result<Self, sx_common::codec::DecodeError> {
        sx_common::codec::decode_versioned(bytes, usize::MAX)
    }

    /// The engine of decoded views (node id order), desired state and its
    /// seq; derived data rebuilt. `None` if a node appears twice or a
    /// view's twin names another node.
    fn from_parts(
        views: Vec<(String, NodeView)>,
        desired: DesiredSpec,
        desired_seq: u64,
    ) -> Option<Self> {
        let mut engine = ProjectionEngine {
            desired,
            desired_seq,
            ..Self::default()
        };
        engine.graph =
            graph::FleetGraph::from_twins(views.iter().map(|(id, v)| (id.as_str(), &v.twin)));
        for (node, view) in views {
            if view.twin.identity.immutable_id != node || engine.graph.row(&node).is_some() {
                return None;
            }
            let row = engine.nodes.len() as u32;
            let id = engine
                .graph
                .shared_id(&node)
                .unwrap_or_else(|| node.as_str().into());
            engine.graph.set_row(&node, row);
            engine.table.add(id);
            engine.table.update(row, &view, true);
            engine.nodes.push(NodeEntry {
                view,
                desired: None,
            });
        }
        Some(engine)
    }
}

/// Snapshots hold the format, the views (`(node id, view)` in node id
/// order), the desired state and its seq; everything else is derived.
mod snapshot {
    use super::{NodeView, ProjectionEngine, SNAPSHOT_FORMAT};
    use serde::de::{Error as _, SeqAccess, Visitor};
    use serde::ser::SerializeTuple;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use sx_common::desired::DesiredSpec;

    impl Serialize for ProjectionEngine {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            struct Views<'a>(&'a ProjectionEngine);
            impl Serialize for Views<'_> {
                fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                    serializer.collect_seq(self.0.nodes())
                }
            }
            let mut t = serializer.serialize_tuple(4)?;
            t.serialize_element(&SNAPSHOT_FORMAT)?;
            t.serialize_element(&Views(self))?;
            t.serialize_element(&self.desired)?;
            t.serialize_element(&self.desired_seq)?;
            t.end()
        }
    }

    /// The views, in snapshot order.
    struct Views(Vec<(String, NodeView)>);

    impl<'de> Deserialize<'de> for Views {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Entries;
            impl<'de> Visitor<'de> for Entries {
                type Value = Views;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a sequence of (node id, node view)")
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Views, A::Error> {
                    let mut out = Vec::new();
                    while let Some(entry) = seq.next_element::<(String, NodeView)>()? {
                        out.push(entry);
                    }
                    Ok(Views(out))
                }
            }
            deserializer.deserialize_seq(Entries)
        }
    }

    impl<'de> Deserialize<'de> for ProjectionEngine {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Snapshot;
            impl<'de> Visitor<'de> for Snapshot {
                type Value = ProjectionEngine;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a projection snapshot")
                }
                fn visit_seq<A: SeqAccess<'de>>(
                    self,
                    mut seq: A,
                ) -> Result<ProjectionEngine, A::Error> {
                    let missing = || A::Error::custom("truncated projection snapshot");
                    let format: [u8; 8] = seq.next_element()?.ok_or_else(missing)?;
                    if format != SNAPSHOT_FORMAT {
                        return Err(A::Error::custom("unknown projection snapshot format"));
                    }
                    let views: Views = seq.next_element()?.ok_or_else(missing)?;
                    let desired: DesiredSpec = seq.next_element()?.ok_or_else(missing)?;
                    let desired_seq: u64 = seq.next_element()?.ok_or_else(missing)?;
                    ProjectionEngine::from_parts(views.0, desired, desired_seq)
                        .ok_or_else(|| A::Error::custom("inconsistent projection snapshot"))
                }
            }
            deserializer.deserialize_tuple(4, Snapshot)
        }
    }
}
