//! The projection engine: folds over committed events that operators query
//! instead of raw events (the seed's "State Projection Engine").
//!
//! [`ProjectionEngine`] is pure: events and the desired state in, views out;
//! no store, no clock. Per node it keeps the twin (current state), the drift
//! analysis and its summary, each remembering the last seq applied, so the
//! engine updates incrementally after each commit and a rebuild from the
//! store yields the same engine (invariant 4 of DESIGN.md). Group views
//! (drift, connectivity, lifecycle per cluster/zone/fleet) are computed on
//! query in one pass over a compact row per node ([`rows`]) kept beside
//! each view; the fleet graph ([`graph`]) is kept up to date with the
//! twins.
//!
//! [`service`] is the driver: it feeds the engine after each commit,
//! snapshots it, and streams updates to subscribers.

pub mod drift;
pub mod graph;
mod rows;
pub mod service;
pub mod trust;
pub mod views;

use drift::{DriftAnalysis, DriftSummary};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use sx_common::desired::{DesiredChange, DesiredSpec};
use sx_common::event::Event;
use sx_common::fold;
use sx_common::ledger::{ConnectivityLedger, LedgerEntry};
use sx_common::model::{ConnectivityState, DigitalTwin, LifecyclePhase};

/// How many ledger rows a node keeps in memory (older ones stay in the
/// event store and are served from there). Each row costs ~90 bytes per
/// twin; eight keep a fleet of 100,000 within ~70 MB for them.
pub const LEDGER_IN_MEMORY: usize = 8;

/// Everything the engine holds for one node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub twin: DigitalTwin,
    pub drift: DriftAnalysis,
    pub summary: DriftSummary,
    /// The most recent connectivity transitions, oldest first.
    pub recent_ledger: Vec<LedgerEntry>,
    /// Certificate rotations and attestation outcomes (for the trust index).
    #[serde(default)]
    pub trust: trust::TrustHistory,
}

impl NodeView {
    /// Seq of the last event applied.
    pub fn last_seq(&self) -> u64 {
        self.twin.last_seq
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

/// A node's view (boxed: it is large, and map nodes hold eleven entries
/// inline) and the index of its row in the fleet table.
#[derive(Clone, Debug)]
struct NodeEntry {
    view: Box<NodeView>,
    row: u32,
}

/// The row index of an entry not yet in the fleet table.
const NO_ROW: u32 = u32::MAX;

impl Default for NodeEntry {
    fn default() -> Self {
        NodeEntry {
            view: Box::default(),
            row: NO_ROW,
        }
    }
}

/// Snapshots hold the views alone (`node id -> NodeView`); rows are derived.
mod entries {
    use super::{NodeEntry, NodeView};
    use serde::de::{MapAccess, Visitor};
    use serde::{Deserializer, Serializer};
    use std::collections::BTreeMap;

    pub fn serialize<S: Serializer>(
        nodes: &BTreeMap<String, NodeEntry>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_map(nodes.iter().map(|(k, e)| (k, &*e.view)))
    }

    /// Boxes each view as it is decoded (no intermediate map of large
    /// inline views).
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<String, NodeEntry>, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = BTreeMap<String, NodeEntry>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of node ids to node views")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((node, view)) = map.next_entry::<String, NodeView>()? {
                    let entry = NodeEntry {
                        view: Box::new(view),
                        row: super::NO_ROW,
                    };
                    out.insert(node, entry);
                }
                Ok(out)
            }
        }
        deserializer.deserialize_map(Entries)
    }
}

/// The engine. `BTreeMap` keeps node order stable for listings.
///
/// Equality is semantic: the same views, desired state, graph and rows
/// (rows and graph compared by content, not by interned ids or indices).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ProjectionEngine {
    #[serde(with = "entries")]
    nodes: BTreeMap<String, NodeEntry>,
    desired: DesiredSpec,
    /// Seq of the last desired-state change applied.
    desired_seq: u64,
    /// The fleet graph of the twins above, updated with them. Derived data:
    /// not in snapshots (petgraph indices depend on insertion order), rebuilt
    /// by [`from_snapshot`](Self::from_snapshot); compared semantically.
    #[serde(skip)]
    graph: graph::FleetGraph,
    /// One compact row per node for the group views, and the aggregator's
    /// own observations; derived like the graph (observations are not
    /// derived from events at all: never snapshotted, never compared).
    #[serde(skip)]
    table: rows::FleetTable,
    /// Per row, the rank of its node id among all node ids; computed on
    /// first use after a node was added.
    #[serde(skip)]
    ranks: std::sync::OnceLock<Vec<u32>>,
}

impl PartialEq for ProjectionEngine {
    fn eq(&self, other: &Self) -> bool {
        self.desired_seq == other.desired_seq
            && self.desired == other.desired
            && self.nodes.len() == other.nodes.len()
            && self
                .nodes
                .iter()
                .zip(&other.nodes)
                .all(|((ka, a), (kb, b))| {
                    ka == kb
                        && a.view == b.view
                        && self.table.resolved(a.row) == other.table.resolved(b.row)
                })
            && self.graph == other.graph
    }
}

impl ProjectionEngine {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies consecutive events of one node. Events at or below the
    /// node's last applied seq are skipped (already applied); a gap stops
    /// the apply (the caller reads the missing events first). Returns the
    /// change, if any event was applied.
    pub fn apply<'a>(&mut self, events: impl IntoIterator<Item = &'a Event>) -> Option<NodeChange> {
        let mut events = events.into_iter().peekable();
        let first: &'a Event = events.peek()?;
        let node = first.node_id.as_str();
        // Only a stream's first event creates a node: a batch that starts
        // past a gap must not leave an empty view behind.
        let entry = match self.nodes.get_mut(node) {
            Some(entry) => entry,
            None if first.seq == 1 => self.nodes.entry(node.to_owned()).or_default(),
            None => return None,
        };
        let view = &mut *entry.view;
        let mut change: Option<NodeChange> = None;
        let mut placement_changed = entry.row == NO_ROW;
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
            fold::apply(&mut view.twin, event);
            view.trust.apply(event);
            placement_changed |= graph::changes_placement(&event.payload);
            if let Some(entry) = LedgerEntry::from_event(event) {
                if view.recent_ledger.len() >= LEDGER_IN_MEMORY {
                    view.recent_ledger.remove(0);
                }
                view.recent_ledger.push(entry);
            }
            let c = change.get_or_insert_with(|| NodeChange {
                node: node.to_owned(),
                seq: 0,
                connectivity: ConnectivityState::Disconnected,
                phase: LifecyclePhase::Provisioning,
                severity: drift::Severity::None,
                event_types: Vec::new(),
            });
            c.seq = event.seq;
            let t = event.event_type();
            if !c.event_types.iter().any(|x| x == t) {
                c.event_types.push(t.to_owned());
            }
        }
        let mut c = change?;
        // The lineage grows by push; keep no spare capacity per twin.
        view.twin.trust.sbom_lineage.shrink_to_fit();
        view.drift = drift::analyze(&view.twin, &self.desired);
        view.summary = DriftSummary::of(&view.drift, &view.twin);
        if placement_changed {
            self.graph.update_node(node, &view.twin);
        }
        if entry.row == NO_ROW {
            let id = self.graph.shared_id(node).unwrap_or_else(|| node.into());
            entry.row = self.table.add(id);
            self.ranks = std::sync::OnceLock::new();
        }
        self.table.update(entry.row, view);
        c.connectivity = view.twin.connectivity.state;
        c.phase = view.twin.lifecycle.phase;
        c.severity = view.drift.severity;
        Some(c)
    }

    /// Applies a desired-state change and re-analyses every node.
    pub fn apply_desired(&mut self, change: &DesiredChange) {
        if change.seq <= self.desired_seq {
            return;
        }
        self.desired.apply(&change.change);
        self.desired_seq = change.seq;
        for entry in self.nodes.values_mut() {
            let view = &mut *entry.view;
            view.drift = drift::analyze(&view.twin, &self.desired);
            view.summary = DriftSummary::of(&view.drift, &view.twin);
            self.table.update(entry.row, view);
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
        self.nodes.get(node).map(|e| &*e.view)
    }

    pub fn nodes(&self) -> impl Iterator<Item = (&String, &NodeView)> {
        self.nodes.iter().map(|(k, e)| (k, &*e.view))
    }

    /// The fleet table the group views scan.
    pub(crate) fn table(&self) -> &rows::FleetTable {
        &self.table
    }

    /// Per row of the fleet table, the rank of its node id in id order.
    pub(crate) fn ranks(&self) -> &[u32] {
        self.ranks.get_or_init(|| {
            let mut ranks = vec![0; self.table.len()];
            for (rank, entry) in self.nodes.values().enumerate() {
                if let Some(r) = ranks.get_mut(entry.row as usize) {
                    *r = rank as u32;
                }
            }
            ranks
        })
    }

    /// Every node's row index, in node id order.
    pub(crate) fn rows_by_node(&self) -> impl Iterator<Item = (&str, u32)> {
        self.nodes.iter().map(|(k, e)| (k.as_str(), e.row))
    }

    /// Records the aggregator's own observation of a node's sync (last
    /// contact, backlog, connection), for [`views::connectivity_observed_by`].
    /// Not an event: kept apart from the twin, never snapshotted, never part
    /// of equality. Ignored for a node the engine does not hold.
    pub fn observe(&mut self, node: &str, observed: views::Observed) {
        if let Some(e) = self.nodes.get(node) {
            self.table.observe(e.row, observed);
        }
    }

    /// The last observation recorded with [`observe`](Self::observe).
    pub fn observed(&self, node: &str) -> Option<&views::Observed> {
        self.table.observed(self.nodes.get(node)?.row)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The last seq applied per node (what a snapshot covers).
    pub fn positions(&self) -> BTreeMap<String, u64> {
        self.nodes
            .iter()
            .map(|(k, e)| (k.clone(), e.view.last_seq()))
            .collect()
    }

    /// The connectivity ledger rows held in memory for a node.
    pub fn recent_ledger(&self, node: &str) -> Option<ConnectivityLedger> {
        self.nodes.get(node).map(|e| ConnectivityLedger {
            node: node.to_owned(),
            history: e.view.recent_ledger.clone(),
        })
    }

    /// Encodes the engine for a snapshot.
    pub fn to_snapshot(&self) -> Vec<u8> {
        sx_common::codec::encode_versioned(self)
    }

    /// Decodes a snapshot written by [`to_snapshot`](Self::to_snapshot).
    pub fn from_snapshot(bytes: &[u8]) -> Result<Self, sx_common::codec::DecodeError> {
        let mut engine: Self = sx_common::codec::decode_versioned(bytes, usize::MAX)?;
        engine.graph = graph::FleetGraph::from_twins(
            engine
                .nodes
                .iter()
                .map(|(id, e)| (id.as_str(), &e.view.twin)),
        );
        for (node, entry) in &mut engine.nodes {
            let id = engine
                .graph
                .shared_id(node)
                .unwrap_or_else(|| node.as_str().into());
            entry.row = engine.table.add(id);
            engine.table.update(entry.row, &entry.view);
        }
        Ok(engine)
    }
}
