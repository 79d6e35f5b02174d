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
/// event store and are served from there).
pub const LEDGER_IN_MEMORY: usize = 16;

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

/// A node's view and its row for the group views. The view is boxed (it is
/// large, and map nodes hold eleven entries inline); the row stays inline
/// so a pass over the map for a group view touches little memory.
#[derive(Clone, Debug, Default)]
struct NodeEntry {
    view: Box<NodeView>,
    row: rows::Row,
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
                        row: Default::default(),
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
    /// Names the rows refer to by id; derived like the graph.
    #[serde(skip)]
    names: rows::GroupNames,
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
                        && a.row.resolved(&self.names) == b.row.resolved(&other.names)
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
        self.graph.update_node(node, &view.twin);
        entry.row.update(&mut self.names, view);
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
            entry.row.update(&mut self.names, view);
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

    /// Every node's row for the group views, in node id order.
    pub(crate) fn rows(&self) -> impl Iterator<Item = (&str, &rows::Row)> {
        self.nodes.iter().map(|(k, e)| (k.as_str(), &e.row))
    }

    /// The names rows refer to.
    pub(crate) fn names(&self) -> &rows::GroupNames {
        &self.names
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
        for entry in engine.nodes.values_mut() {
            entry.row.update(&mut engine.names, &entry.view);
        }
        Ok(engine)
    }
}
