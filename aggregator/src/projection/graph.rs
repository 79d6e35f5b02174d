//! The fleet state graph (the seed's "Fleet State Graph"): twins as nodes,
//! the links nodes declare (`inventory.topology`) as typed edges, and the
//! groupings around them: clusters (`{region}-cluster`, `{zone}-cluster`
//! and the functional clusters a node declares, as [`views::clusters_of`]
//! names them), zones and trust domains (the CA that issued a node's
//! certificate).
//!
//! [`FleetGraph`] lives inside the [`ProjectionEngine`], which calls
//! [`FleetGraph::update_node`] after every apply, so the graph is always the
//! graph of the twins the engine holds. It is derived data: a snapshot does
//! not carry it (petgraph indices depend on insertion order) and
//! [`ProjectionEngine::from_snapshot`] rebuilds it from the twins. Equality
//! is semantic (same nodes, attributes and edges), not index for index.
//!
//! Reachability treats a link as a two-way relationship whichever end
//! declared it: a signaling or media session carries traffic both ways, and
//! often only one side reports the link.
//!
//! Queries: [`FleetGraph::neighbours`] (by edge type, both directions),
//! [`FleetGraph::impact`] / [`FleetGraph::impact_all`] (which nodes lose
//! every path to a cluster when a node or a zone goes dark),
//! [`cluster_rollups`] (drift and connectivity per cluster) and [`view`]
//! (the whole graph with node state, for the API and the UI).

use super::ProjectionEngine;
use super::drift::{DriftAggregate, Severity};
use super::views::{self, ConnectivityAggregate, GroupBy};
use petgraph::Direction;
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::unionfind::UnionFind;
use petgraph::visit::{
    Bfs, EdgeRef, IntoEdgeReferences, NodeFiltered, NodeIndexable, UndirectedAdaptor, VisitMap,
    Visitable,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use sx_common::model::{ConnectivityState, DigitalTwin, LifecyclePhase, LinkType, PeerLink};
use sx_common::time::{Span, Timestamp};

/// What the index holds per node id: its vertex, and the engine's row of
/// the node (`NO_ROW` for a peer the engine does not hold).
#[derive(Clone, Copy, Debug)]
struct Slot {
    vertex: NodeIndex,
    row: u32,
}

const NO_ROW: u32 = u32::MAX;

/// A set of vertices (petgraph's visit map of the graph: a bit set).
type Marks = <StableDiGraph<Vertex, LinkType> as Visitable>::Map;

/// A vertex: a twin, or a peer some twin links to that has not reported
/// itself yet (`reported == false`, no attributes).
#[derive(Clone, Debug)]
struct Vertex {
    id: Arc<str>,
    reported: bool,
    component: Arc<str>,
    region: Arc<str>,
    zone: Arc<str>,
    /// Functional clusters the node declared (region and zone clusters are
    /// derived from `region` and `zone`).
    functional: Arc<[Arc<str>]>,
    trust_domain: Option<Arc<str>>,
}

impl Vertex {
    fn placeholder(id: Arc<str>, empty: &Arc<str>) -> Self {
        Vertex {
            id,
            reported: false,
            component: empty.clone(),
            region: empty.clone(),
            zone: empty.clone(),
            functional: Arc::from(Vec::new()),
            trust_domain: None,
        }
    }

    /// Every cluster the vertex belongs to, as [`views::clusters_of`].
    fn clusters(&self) -> Vec<String> {
        let mut out = Vec::with_capacity(2 + self.functional.len());
        if !self.region.is_empty() {
            out.push(format!("{}-cluster", self.region));
        }
        if !self.zone.is_empty() {
            out.push(format!("{}-cluster", self.zone));
        }
        out.extend(self.functional.iter().map(|c| c.to_string()));
        out
    }
}

/// The issuing CA of a node: the issuer of its leaf certificate, else the
/// first entry of the trust chain its identity names.
pub fn trust_domain_of(twin: &DigitalTwin) -> Option<&str> {
    twin.trust
        .certificate_chain
        .first()
        .map(|c| c.issuer.as_str())
        .filter(|s| !s.is_empty())
        .or_else(|| {
            twin.identity
                .trust_chain
                .first()
                .map(String::as_str)
                .filter(|s| !s.is_empty())
        })
}

/// Whether an event may change what the graph holds of its node (its
/// component, region, zone, clusters, links or trust domain). Only these
/// fold into those twin fields; the engine updates the graph after them.
pub fn changes_placement(payload: &sx_common::event::EventPayload) -> bool {
    use sx_common::event::EventPayload as P;
    matches!(
        payload,
        P::IdentityReported(_)
            | P::TopologyReported(_)
            | P::TrustChainValidated(_)
            | P::CertificateRotated(_)
    )
}

/// The fleet graph, maintained incrementally from the twins.
///
/// Invariants: every reported twin the engine holds is a vertex; an edge
/// `a → b` of type `t` exists iff twin `a` declares a link to peer `b` of
/// type `t` (duplicates and self-links dropped); an unreported vertex
/// exists only while some edge points at it; the membership maps hold
/// exactly the vertices whose attributes name the group.
#[derive(Clone, Debug, Default)]
pub struct FleetGraph {
    graph: StableDiGraph<Vertex, LinkType>,
    index: HashMap<Arc<str>, Slot>,
    clusters: BTreeMap<Arc<str>, BTreeSet<NodeIndex>>,
    zones: BTreeMap<Arc<str>, BTreeSet<NodeIndex>>,
    trust_domains: BTreeMap<Arc<str>, BTreeSet<NodeIndex>>,
    /// Group and attribute names, shared between vertices.
    names: HashSet<Arc<str>>,
    /// Lists of declared clusters, shared between vertices.
    cluster_lists: HashSet<Arc<[Arc<str>]>>,
}

/// Which way an edge runs, seen from the node asked about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkDirection {
    /// The node declared the link.
    Outgoing,
    /// The peer declared a link to the node.
    Incoming,
}

/// One neighbour of a node.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Neighbour {
    pub node: String,
    pub link_type: LinkType,
    pub direction: LinkDirection,
}

/// What goes dark in an impact analysis.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outage {
    Node(String),
    Zone(String),
    Nodes(Vec<String>),
}

/// Nodes that lose every path to a cluster in an outage.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Impact {
    pub cluster: String,
    /// The nodes that went dark (known to the graph), sorted.
    pub dark: Vec<String>,
    /// Nodes (not dark) that reached a member of the cluster before and
    /// reach none after, sorted.
    pub cut_off: Vec<String>,
    /// Nodes (not dark) that still reach the cluster.
    pub still_reaching: usize,
}

impl FleetGraph {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds the graph of every twin of `nodes`.
    pub fn from_twins<'a>(nodes: impl IntoIterator<Item = (&'a str, &'a DigitalTwin)>) -> Self {
        let mut g = FleetGraph::new();
        for (id, twin) in nodes {
            g.update_node(id, twin);
        }
        g
    }

    /// Brings the vertex of `node_id` in line with its twin: attributes,
    /// group memberships and outgoing edges. Cheap when nothing the graph
    /// tracks changed (the common case: most events touch no topology).
    pub fn update_node(&mut self, node_id: &str, twin: &DigitalTwin) {
        let ix = self.vertex(node_id);
        let domain = trust_domain_of(twin);
        let v = &self.graph[ix];
        let same = v.reported
            && *v.component == *twin.identity.component_type
            && *v.region == *twin.identity.region
            && *v.zone == *twin.identity.zone
            && v.functional.len() == twin.topology.clusters.len()
            && v.functional
                .iter()
                .zip(&twin.topology.clusters)
                .all(|(a, b)| **a == **b)
            && v.trust_domain.as_deref() == domain;
        if !same {
            self.set_attributes(ix, twin, domain);
        }
        if !self.links_match(ix, node_id, &twin.topology.links) {
            self.set_links(ix, node_id, &twin.topology.links);
        }
    }

    /// Number of vertices (twins and unreported peers).
    pub fn node_count(&self) -> usize {
        self.graph.node_count()
    }

    pub fn edge_count(&self) -> usize {
        self.graph.edge_count()
    }

    pub fn contains(&self, node: &str) -> bool {
        self.index.contains_key(node)
    }

    /// The graph's own copy of a node id, to share rather than copy.
    pub(crate) fn shared_id(&self, node: &str) -> Option<Arc<str>> {
        self.index.get_key_value(node).map(|(k, _)| k.clone())
    }

    /// The engine's row of a node (see [`set_row`](Self::set_row)).
    pub(crate) fn row(&self, node: &str) -> Option<u32> {
        Some(self.index.get(node)?.row).filter(|r| *r != NO_ROW)
    }

    /// Records the engine's row of a node the graph holds (every twin is a
    /// vertex, and stays one), so the engine needs no index of its own:
    /// the row sits in the padding of the graph's index slot.
    pub(crate) fn set_row(&mut self, node: &str, row: u32) {
        if let Some(slot) = self.index.get_mut(node) {
            slot.row = row;
        }
    }

    /// A node's neighbours, both directions, optionally of one link type;
    /// `None` for a node the graph does not know. Sorted by node, type and
    /// direction.
    pub fn neighbours(&self, node: &str, link_type: Option<LinkType>) -> Option<Vec<Neighbour>> {
        let ix = self.index.get(node)?.vertex;
        let mut out = Vec::new();
        for (dir, direction) in [
            (Direction::Outgoing, LinkDirection::Outgoing),
            (Direction::Incoming, LinkDirection::Incoming),
        ] {
            for e in self.graph.edges_directed(ix, dir) {
                if link_type.is_some_and(|t| t != *e.weight()) {
                    continue;
                }
                let other = if dir == Direction::Outgoing {
                    e.target()
                } else {
                    e.source()
                };
                out.push(Neighbour {
                    node: self.graph[other].id.to_string(),
                    link_type: *e.weight(),
                    direction,
                });
            }
        }
        out.sort();
        Some(out)
    }

    /// Cluster names, sorted.
    pub fn clusters(&self) -> impl Iterator<Item = &str> {
        self.clusters.keys().map(|k| &**k)
    }

    /// Members of a cluster, sorted; `None` if no node belongs to it.
    pub fn cluster_members(&self, cluster: &str) -> Option<Vec<String>> {
        self.clusters.get(cluster).map(|m| self.ids(m))
    }

    /// Members of a zone, sorted.
    pub fn zone_members(&self, zone: &str) -> Option<Vec<String>> {
        self.zones.get(zone).map(|m| self.ids(m))
    }

    /// Members of a trust domain (issuing CA), sorted.
    pub fn trust_domain_members(&self, domain: &str) -> Option<Vec<String>> {
        self.trust_domains.get(domain).map(|m| self.ids(m))
    }

    /// Which nodes lose every path to `cluster` when `outage` goes dark.
    /// `None` if no node belongs to the cluster.
    ///
    /// Two multi-source breadth-first searches from the cluster's members
    /// over the undirected graph, one with the dark nodes filtered out.
    pub fn impact(&self, outage: &Outage, cluster: &str) -> Option<Impact> {
        let members = self.clusters.get(cluster)?;
        let dark = self.dark_set(outage);
        let none = self.graph.visit_map();
        let before = self.reach(members, &none);
        let after = self.reach(members, &dark);
        let mut cut_off = Vec::new();
        let mut still_reaching = 0;
        for ix in self.graph.node_indices() {
            if dark.is_visited(&ix) {
                continue;
            }
            if after.is_visited(&ix) {
                still_reaching += 1;
            } else if before.is_visited(&ix) {
                cut_off.push(self.graph[ix].id.to_string());
            }
        }
        cut_off.sort();
        Some(Impact {
            cluster: cluster.to_owned(),
            dark: self.dark_ids(&dark),
            cut_off,
            still_reaching,
        })
    }

    /// [`impact`](Self::impact) for every cluster at once, listing only the
    /// clusters some node is cut off from. Connected components before and
    /// after the outage (petgraph's union-find): a node is cut off from a
    /// cluster when its component held a member before and holds none after.
    pub fn impact_all(&self, outage: &Outage) -> Vec<Impact> {
        let dark = self.dark_set(outage);
        let bound = self.graph.node_bound();
        let mut before = UnionFind::<usize>::new(bound);
        let mut after = UnionFind::<usize>::new(bound);
        for e in self.graph.edge_references() {
            let (a, b) = (e.source(), e.target());
            before.union(a.index(), b.index());
            if !dark.is_visited(&a) && !dark.is_visited(&b) {
                after.union(a.index(), b.index());
            }
        }
        let before = before.into_labeling();
        let after = after.into_labeling();
        // Only nodes sharing a component with a dark node can lose a path.
        let hit: HashSet<usize> = dark.ones().map(|i| before[i]).collect();
        let clusters: Vec<(&Arc<str>, &BTreeSet<NodeIndex>)> = self.clusters.iter().collect();
        // The clusters (by position, ascending) with a member in each
        // component hit before, and with a lit member in each component after.
        let mut before_has: HashMap<usize, Vec<usize>> = HashMap::new();
        let mut after_has: HashMap<usize, Vec<usize>> = HashMap::new();
        for (ci, (_, members)) in clusters.iter().enumerate() {
            for m in members.iter() {
                let b = before[m.index()];
                if hit.contains(&b) {
                    let list = before_has.entry(b).or_default();
                    if list.last() != Some(&ci) {
                        list.push(ci);
                    }
                }
                if !dark.is_visited(m) {
                    let list = after_has.entry(after[m.index()]).or_default();
                    if list.last() != Some(&ci) {
                        list.push(ci);
                    }
                }
            }
        }
        // What a node loses depends only on its components before and
        // after: compute it once per pair.
        let mut lost_of: HashMap<(usize, usize), Vec<usize>> = HashMap::new();
        let mut cut_off: Vec<Vec<NodeIndex>> = vec![Vec::new(); clusters.len()];
        let mut lit_size: HashMap<usize, usize> = HashMap::new();
        for ix in self.graph.node_indices() {
            if dark.is_visited(&ix) {
                continue;
            }
            let key = (before[ix.index()], after[ix.index()]);
            *lit_size.entry(key.1).or_default() += 1;
            if !hit.contains(&key.0) {
                continue;
            }
            let lost = lost_of.entry(key).or_insert_with(|| {
                let had = before_has.get(&key.0).map_or(&[][..], Vec::as_slice);
                let has = after_has.get(&key.1).map_or(&[][..], Vec::as_slice);
                had.iter()
                    .filter(|c| has.binary_search(c).is_err())
                    .copied()
                    .collect()
            });
            for ci in lost.iter() {
                cut_off[*ci].push(ix);
            }
        }
        let mut still_reaching = vec![0usize; clusters.len()];
        for (comp, cis) in &after_has {
            let size = lit_size.get(comp).copied().unwrap_or(0);
            for ci in cis {
                still_reaching[*ci] += size;
            }
        }
        let dark_ids = self.dark_ids(&dark);
        clusters
            .iter()
            .zip(cut_off)
            .zip(still_reaching)
            .filter(|((_, cut), _)| !cut.is_empty())
            .map(|(((name, _), cut), still_reaching)| {
                let mut cut_off: Vec<String> = cut
                    .iter()
                    .map(|ix| self.graph[*ix].id.to_string())
                    .collect();
                cut_off.sort();
                Impact {
                    cluster: name.to_string(),
                    dark: dark_ids.clone(),
                    cut_off,
                    still_reaching,
                }
            })
            .collect()
    }

    /// Every edge as (from, to, type), sorted: the graph's canonical form.
    pub fn edges(&self) -> Vec<(String, String, LinkType)> {
        let mut out: Vec<_> = self
            .graph
            .edge_references()
            .map(|e| {
                (
                    self.graph[e.source()].id.to_string(),
                    self.graph[e.target()].id.to_string(),
                    *e.weight(),
                )
            })
            .collect();
        out.sort();
        out
    }

    // --- maintenance -------------------------------------------------------

    fn intern(&mut self, name: &str) -> Arc<str> {
        if let Some(a) = self.names.get(name) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(name);
        self.names.insert(a.clone());
        a
    }

    /// The vertex of `id`, created as a placeholder if unknown.
    fn vertex(&mut self, id: &str) -> NodeIndex {
        if let Some(slot) = self.index.get(id) {
            return slot.vertex;
        }
        let id: Arc<str> = Arc::from(id);
        let empty = self.intern("");
        let ix = self.graph.add_node(Vertex::placeholder(id.clone(), &empty));
        self.index.insert(
            id,
            Slot {
                vertex: ix,
                row: NO_ROW,
            },
        );
        ix
    }

    fn set_attributes(&mut self, ix: NodeIndex, twin: &DigitalTwin, domain: Option<&str>) {
        self.leave_groups(ix);
        let component = self.intern(&twin.identity.component_type);
        let region = self.intern(&twin.identity.region);
        let zone = self.intern(&twin.identity.zone);
        let functional: Vec<Arc<str>> = twin
            .topology
            .clusters
            .iter()
            .map(|c| self.intern(c))
            .collect();
        let functional = match self.cluster_lists.get(functional.as_slice()) {
            Some(list) => list.clone(),
            None => {
                let list: Arc<[Arc<str>]> = Arc::from(functional);
                self.cluster_lists.insert(list.clone());
                list
            }
        };
        let trust_domain = domain.map(|d| self.intern(d));
        let v = &mut self.graph[ix];
        v.reported = true;
        v.component = component;
        v.region = region;
        v.zone = zone;
        v.functional = functional;
        v.trust_domain = trust_domain;
        self.join_groups(ix);
    }

    fn join_groups(&mut self, ix: NodeIndex) {
        let v = self.graph[ix].clone();
        for c in v.clusters() {
            let key = self.intern(&c);
            self.clusters.entry(key).or_default().insert(ix);
        }
        if !v.zone.is_empty() {
            self.zones.entry(v.zone.clone()).or_default().insert(ix);
        }
        if let Some(d) = &v.trust_domain {
            self.trust_domains.entry(d.clone()).or_default().insert(ix);
        }
    }

    fn leave_groups(&mut self, ix: NodeIndex) {
        fn leave(map: &mut BTreeMap<Arc<str>, BTreeSet<NodeIndex>>, key: &str, ix: NodeIndex) {
            if let Some(set) = map.get_mut(key) {
                set.remove(&ix);
                if set.is_empty() {
                    map.remove(key);
                }
            }
        }
        let v = &self.graph[ix];
        for c in v.clusters() {
            leave(&mut self.clusters, &c, ix);
        }
        leave(&mut self.zones, &v.zone, ix);
        if let Some(d) = &v.trust_domain {
            leave(&mut self.trust_domains, d, ix);
        }
    }

    /// The distinct links a twin declares, without self-links, sorted.
    fn declared<'a>(me: &str, links: &'a [PeerLink]) -> Vec<(&'a str, LinkType)> {
        let mut out: Vec<(&str, LinkType)> = links
            .iter()
            .filter(|l| l.peer != me)
            .map(|l| (l.peer.as_str(), l.link_type))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    fn links_match(&self, ix: NodeIndex, me: &str, links: &[PeerLink]) -> bool {
        let declared = Self::declared(me, links);
        let mut present: Vec<(&str, LinkType)> = self
            .graph
            .edges_directed(ix, Direction::Outgoing)
            .map(|e| (&*self.graph[e.target()].id, *e.weight()))
            .collect();
        present.sort();
        declared == present
    }

    fn set_links(&mut self, ix: NodeIndex, me: &str, links: &[PeerLink]) {
        let old: Vec<_> = self
            .graph
            .edges_directed(ix, Direction::Outgoing)
            .map(|e| (e.id(), e.target()))
            .collect();
        for (edge, _) in &old {
            self.graph.remove_edge(*edge);
        }
        for (peer, link_type) in Self::declared(me, links) {
            let to = self.vertex(peer);
            self.graph.add_edge(ix, to, link_type);
        }
        // Drop placeholders no edge points at any more.
        for (_, target) in old {
            let orphan = self.graph.node_weight(target).is_some_and(|v| !v.reported)
                && self
                    .graph
                    .edges_directed(target, Direction::Incoming)
                    .next()
                    .is_none();
            if orphan && let Some(v) = self.graph.remove_node(target) {
                self.index.remove(&v.id);
            }
        }
    }

    // --- queries -------------------------------------------------------------

    fn ids(&self, set: &BTreeSet<NodeIndex>) -> Vec<String> {
        let mut out: Vec<String> = set
            .iter()
            .map(|ix| self.graph[*ix].id.to_string())
            .collect();
        out.sort();
        out
    }

    fn dark_set(&self, outage: &Outage) -> Marks {
        let mut dark = self.graph.visit_map();
        match outage {
            Outage::Node(n) => {
                if let Some(slot) = self.index.get(n.as_str()) {
                    dark.visit(slot.vertex);
                }
            }
            Outage::Nodes(ns) => {
                for n in ns {
                    if let Some(slot) = self.index.get(n.as_str()) {
                        dark.visit(slot.vertex);
                    }
                }
            }
            Outage::Zone(z) => {
                for ix in self.zones.get(z.as_str()).into_iter().flatten() {
                    dark.visit(*ix);
                }
            }
        }
        dark
    }

    fn dark_ids(&self, dark: &Marks) -> Vec<String> {
        let mut out: Vec<String> = dark
            .ones()
            .map(|i| self.graph[NodeIndex::new(i)].id.to_string())
            .collect();
        out.sort();
        out
    }

    /// Vertices that reach one of `sources` (undirected), dark ones removed.
    fn reach(&self, sources: &BTreeSet<NodeIndex>, dark: &Marks) -> Marks {
        let lit = NodeFiltered::from_fn(&self.graph, |ix: NodeIndex| !dark.is_visited(&ix));
        let g = UndirectedAdaptor(&lit);
        let mut bfs = Bfs {
            stack: VecDeque::new(),
            discovered: g.visit_map(),
        };
        for s in sources {
            if !dark.is_visited(s) && bfs.discovered.visit(*s) {
                bfs.stack.push_back(*s);
            }
        }
        while bfs.next(g).is_some() {}
        bfs.discovered
    }

    /// The graph's content in a canonical, index-free form.
    #[allow(clippy::type_complexity)]
    fn canonical(
        &self,
    ) -> (
        BTreeMap<&str, (bool, &str, &str, &str, &[Arc<str>], Option<&str>)>,
        Vec<(String, String, LinkType)>,
    ) {
        let vertices = self
            .graph
            .node_weights()
            .map(|v| {
                (
                    &*v.id,
                    (
                        v.reported,
                        &*v.component,
                        &*v.region,
                        &*v.zone,
                        &*v.functional,
                        v.trust_domain.as_deref(),
                    ),
                )
            })
            .collect();
        (vertices, self.edges())
    }
}

impl PartialEq for FleetGraph {
    /// Same vertices with the same attributes and the same edges, whatever
    /// order they were inserted in.
    fn eq(&self, other: &Self) -> bool {
        self.canonical() == other.canonical()
    }
}

// --- views -------------------------------------------------------------------

/// Which part of the graph a view shows (all of it by default).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GraphFilter {
    pub region: Option<String>,
    pub zone: Option<String>,
    pub cluster: Option<String>,
}

/// A node of the graph view, with the state the UI colours it by
/// (`None` for a peer that never reported).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphNodeView {
    pub id: String,
    pub reported: bool,
    pub component: String,
    pub region: String,
    pub zone: String,
    pub clusters: Vec<String>,
    pub trust_domain: Option<String>,
    pub connectivity: Option<ConnectivityState>,
    pub drift_severity: Option<Severity>,
    pub lifecycle_phase: Option<LifecyclePhase>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphEdgeView {
    pub from: String,
    pub to: String,
    pub link_type: LinkType,
}

/// How a cluster came about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClusterKind {
    Region,
    Zone,
    Function,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    pub name: String,
    pub kind: ClusterKind,
    pub members: Vec<String>,
}

/// A zone or a trust domain and its members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMembers {
    pub name: String,
    pub members: Vec<String>,
}

/// The whole graph (or the part a [`GraphFilter`] selects) for the API and
/// the UI. Edges are shown when both ends are; groups list shown members.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphView {
    pub nodes: Vec<GraphNodeView>,
    pub edges: Vec<GraphEdgeView>,
    pub clusters: Vec<ClusterView>,
    pub zones: Vec<GroupMembers>,
    pub trust_domains: Vec<GroupMembers>,
}

fn kind_of(name: &str, v: &Vertex) -> ClusterKind {
    let is = |part: &str| !part.is_empty() && name.strip_suffix("-cluster") == Some(part);
    if is(&v.region) {
        ClusterKind::Region
    } else if is(&v.zone) {
        ClusterKind::Zone
    } else {
        ClusterKind::Function
    }
}

/// The graph view of the engine's fleet.
pub fn view(engine: &ProjectionEngine, filter: &GraphFilter) -> GraphView {
    let fg = engine.graph();
    let g = &fg.graph;
    let cluster = filter
        .cluster
        .as_deref()
        .map(|c| fg.clusters.get(c).cloned().unwrap_or_default());
    let shown = |ix: NodeIndex| {
        let v = &g[ix];
        v.reported
            && filter.region.as_deref().is_none_or(|r| *v.region == *r)
            && filter.zone.as_deref().is_none_or(|z| *v.zone == *z)
            && cluster.as_ref().is_none_or(|m| m.contains(&ix))
    };
    let open = filter == &GraphFilter::default();
    let mut visible = g.visit_map();
    let mut nodes = Vec::new();
    for ix in g.node_indices() {
        let v = &g[ix];
        // Unreported peers have no place of their own: they are shown when
        // the view is unfiltered or a shown node links to them.
        let include = if v.reported {
            shown(ix)
        } else {
            open || g.neighbors_directed(ix, Direction::Incoming).any(&shown)
        };
        if !include {
            continue;
        }
        visible.visit(ix);
        let state = engine.node(&v.id).filter(|_| v.reported);
        nodes.push(GraphNodeView {
            id: v.id.to_string(),
            reported: v.reported,
            component: v.component.to_string(),
            region: v.region.to_string(),
            zone: v.zone.to_string(),
            clusters: v.clusters(),
            trust_domain: v.trust_domain.as_deref().map(str::to_owned),
            connectivity: state.map(|s| s.twin.connectivity.state),
            drift_severity: state.map(|s| s.summary.severity),
            lifecycle_phase: state.map(|s| s.twin.lifecycle.phase),
        });
    }
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    let mut edges: Vec<GraphEdgeView> = g
        .edge_references()
        .filter(|e| visible.is_visited(&e.source()) && visible.is_visited(&e.target()))
        .map(|e| GraphEdgeView {
            from: g[e.source()].id.to_string(),
            to: g[e.target()].id.to_string(),
            link_type: *e.weight(),
        })
        .collect();
    edges.sort_by(|a, b| (&a.from, &a.to, a.link_type).cmp(&(&b.from, &b.to, b.link_type)));
    let members = |set: &BTreeSet<NodeIndex>| -> Vec<String> {
        let mut m: Vec<String> = set
            .iter()
            .filter(|ix| visible.is_visited(*ix))
            .map(|ix| g[*ix].id.to_string())
            .collect();
        m.sort();
        m
    };
    let clusters = fg
        .clusters
        .iter()
        .filter_map(|(name, set)| {
            let m = members(set);
            let first = set.iter().next().map(|ix| &g[*ix])?;
            (!m.is_empty()).then(|| ClusterView {
                name: name.to_string(),
                kind: kind_of(name, first),
                members: m,
            })
        })
        .collect();
    let groups = |map: &BTreeMap<Arc<str>, BTreeSet<NodeIndex>>| -> Vec<GroupMembers> {
        map.iter()
            .filter_map(|(name, set)| {
                let m = members(set);
                (!m.is_empty()).then(|| GroupMembers {
                    name: name.to_string(),
                    members: m,
                })
            })
            .collect()
    };
    GraphView {
        nodes,
        edges,
        clusters,
        zones: groups(&fg.zones),
        trust_domains: groups(&fg.trust_domains),
    }
}

/// Drift and connectivity of one cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterRollup {
    pub cluster: String,
    pub kind: ClusterKind,
    pub drift: DriftAggregate,
    pub connectivity: ConnectivityAggregate,
}

/// Drift and connectivity rolled up per cluster (the cluster groupings of
/// [`views::drift_by`] and [`views::connectivity_observed_by`], joined by name).
pub fn cluster_rollups(
    engine: &ProjectionEngine,
    stale_after: Span,
    now: Timestamp,
) -> Vec<ClusterRollup> {
    let fg = engine.graph();
    let mut connectivity: BTreeMap<String, ConnectivityAggregate> =
        views::connectivity_observed_by(engine, GroupBy::Cluster, stale_after, now)
            .into_iter()
            .map(|c| (c.group.clone(), c))
            .collect();
    views::drift_by(engine, GroupBy::Cluster)
        .into_iter()
        .map(|drift| {
            let kind = fg
                .clusters
                .get(drift.group.as_str())
                .and_then(|m| m.iter().next())
                .map_or(ClusterKind::Function, |ix| {
                    kind_of(&drift.group, &fg.graph[*ix])
                });
            ClusterRollup {
                cluster: drift.group.clone(),
                kind,
                connectivity: connectivity.remove(&drift.group).unwrap_or_default(),
                drift,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sx_common::model::{CertificateRef, PeerLink};

    fn twin(zone: &str, links: &[(&str, LinkType)], clusters: &[&str]) -> DigitalTwin {
        let mut t = DigitalTwin::default();
        t.identity.region = "region-a".into();
        t.identity.zone = zone.into();
        t.identity.component_type = "souverix-rempart".into();
        t.topology.links = links
            .iter()
            .map(|(p, l)| PeerLink {
                peer: (*p).into(),
                link_type: *l,
            })
            .collect();
        t.topology.clusters = clusters.iter().map(|c| (*c).into()).collect();
        t
    }

    #[test]
    fn links_replace_edges_and_placeholders_come_and_go() {
        let mut g = FleetGraph::new();
        g.update_node("a", &twin("z1", &[("b", LinkType::Signaling)], &[]));
        assert!(g.contains("b"));
        assert_eq!(g.node_count(), 2);
        g.update_node("a", &twin("z1", &[("c", LinkType::Media)], &[]));
        assert!(!g.contains("b"), "an unreferenced placeholder is dropped");
        assert_eq!(g.edges(), vec![("a".into(), "c".into(), LinkType::Media)]);
        // Duplicates and self-links are dropped.
        g.update_node(
            "a",
            &twin(
                "z1",
                &[
                    ("c", LinkType::Media),
                    ("c", LinkType::Media),
                    ("a", LinkType::Control),
                ],
                &[],
            ),
        );
        assert_eq!(g.edge_count(), 1);
    }

    #[test]
    fn memberships_follow_attribute_changes() {
        let mut g = FleetGraph::new();
        let mut t = twin("z1", &[], &["ibcf"]);
        t.trust.certificate_chain.push(CertificateRef {
            issuer: "root-ca".into(),
            ..CertificateRef::default()
        });
        g.update_node("a", &t);
        assert_eq!(g.cluster_members("z1-cluster"), Some(vec!["a".to_string()]));
        assert_eq!(g.cluster_members("ibcf"), Some(vec!["a".to_string()]));
        assert_eq!(
            g.trust_domain_members("root-ca"),
            Some(vec!["a".to_string()])
        );
        t.identity.zone = "z2".into();
        t.topology.clusters.clear();
        g.update_node("a", &t);
        assert_eq!(g.cluster_members("z1-cluster"), None);
        assert_eq!(g.cluster_members("ibcf"), None);
        assert_eq!(g.zone_members("z2"), Some(vec!["a".to_string()]));
        // Semantic equality whatever the history.
        let fresh = FleetGraph::from_twins([("a", &t)]);
        assert_eq!(fresh, g);
    }
}
