//! The fleet table behind the group views: one small row per node holding
//! exactly what the drift, connectivity and lifecycle views aggregate, with
//! the node's zone, region and clusters as interned ids.
//!
//! The engine keeps it beside the full per-node views and updates a row
//! whenever it updates the node, so a fleet-wide view is one pass over
//! compact rows in node id order (the order the views always used, which
//! keeps float sums and ties reproducible) instead of a walk over every
//! twin with a string-keyed map per group. Derived data, like the fleet
//! graph: not in snapshots, rebuilt on load, compared semantically.

use super::NodeView;
use super::drift::DriftSummary;
use super::views::GroupBy;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use sx_common::model::{ConnectivityState, DigitalTwin, LifecyclePhase};
use sx_common::time::Timestamp;

/// The group id of the whole fleet (`"fleet"`).
pub(crate) const FLEET: u32 = 0;

/// Names (zones, regions, clusters, versions) and their ids.
#[derive(Clone, Debug)]
struct Names {
    list: Vec<Arc<str>>,
    ids: HashMap<Arc<str>, u32>,
}

impl Default for Names {
    fn default() -> Self {
        let mut names = Names {
            list: Vec::new(),
            ids: HashMap::new(),
        };
        names.id("fleet");
        names
    }
}

impl Names {
    fn id(&mut self, name: &str) -> u32 {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = self.list.len() as u32;
        let name: Arc<str> = Arc::from(name);
        self.list.push(name.clone());
        self.ids.insert(name, id);
        id
    }
}

/// What the group views need of one node.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Row {
    pub(crate) zone: u32,
    pub(crate) region: u32,
    /// The clusters the node declared, as declared (to detect changes).
    declared: Box<[u32]>,
    /// Every cluster of the node, each once: region and zone clusters and
    /// the declared ones ([`super::views::clusters_of`]).
    pub(crate) clusters: Box<[u32]>,
    pub(crate) summary: DriftSummary,
    pub(crate) state: ConnectivityState,
    pub(crate) last_sync: Option<Timestamp>,
    pub(crate) backlog: u64,
    pub(crate) phase: LifecyclePhase,
    /// Target version (id) and outcome of the node's update, if any.
    pub(crate) update: Option<(u32, Option<bool>)>,
    pub(crate) maintenance: bool,
}

/// One row per node, in node id order.
#[derive(Clone, Debug, Default)]
pub struct FleetRows {
    rows: BTreeMap<Arc<str>, Row>,
    names: Names,
}

impl FleetRows {
    /// Brings the row of `node` in line with its view.
    pub(crate) fn update(&mut self, node: &str, view: &NodeView) {
        let twin = &view.twin;
        let update = twin
            .lifecycle
            .update
            .as_ref()
            .map(|u| (self.names.id(&u.to_version), u.succeeded));
        let placed = self
            .rows
            .get(node)
            .is_some_and(|row| self.same_place(row, twin));
        if !placed {
            let row = self.place(twin, &view.summary);
            self.rows.insert(Arc::from(node), row);
        }
        if let Some(row) = self.rows.get_mut(node) {
            row.summary.clone_from(&view.summary);
            row.state = twin.connectivity.state;
            row.last_sync = twin.connectivity.last_sync;
            row.backlog = twin.connectivity.message_backlog;
            row.phase = twin.lifecycle.phase;
            row.update = update;
            row.maintenance = twin.lifecycle.maintenance.is_some();
        }
    }

    fn same_place(&self, row: &Row, twin: &DigitalTwin) -> bool {
        let name = |id: u32| &*self.names.list[id as usize];
        name(row.zone) == twin.identity.zone
            && name(row.region) == twin.identity.region
            && row.declared.len() == twin.topology.clusters.len()
            && row
                .declared
                .iter()
                .zip(&twin.topology.clusters)
                .all(|(id, c)| name(*id) == c)
    }

    /// A fresh row for `twin` (state fields are filled by the caller).
    fn place(&mut self, twin: &DigitalTwin, summary: &DriftSummary) -> Row {
        let declared: Box<[u32]> = twin
            .topology
            .clusters
            .iter()
            .map(|c| self.names.id(c))
            .collect();
        let mut clusters: Vec<u32> = super::views::clusters_of(twin)
            .iter()
            .map(|c| self.names.id(c))
            .collect();
        let mut seen = Vec::with_capacity(clusters.len());
        clusters.retain(|c| {
            let first = !seen.contains(c);
            seen.push(*c);
            first
        });
        Row {
            zone: self.names.id(&twin.identity.zone),
            region: self.names.id(&twin.identity.region),
            declared,
            clusters: clusters.into_boxed_slice(),
            summary: summary.clone(),
            state: twin.connectivity.state,
            last_sync: None,
            backlog: 0,
            phase: twin.lifecycle.phase,
            update: None,
            maintenance: false,
        }
    }

    /// Rows in node id order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &Row)> {
        self.rows.iter().map(|(k, v)| (&**k, v))
    }

    /// How many group ids exist (the size of a per-group table).
    pub(crate) fn group_count(&self) -> usize {
        self.names.list.len()
    }

    pub(crate) fn name(&self, id: u32) -> &str {
        &self.names.list[id as usize]
    }

    /// The groups of a row under a grouping (not `GroupBy::Node`, whose
    /// groups are the nodes themselves).
    pub(crate) fn groups<'a>(row: &'a Row, by: GroupBy) -> &'a [u32] {
        match by {
            GroupBy::Cluster => &row.clusters,
            GroupBy::Zone => std::slice::from_ref(&row.zone),
            GroupBy::Region => std::slice::from_ref(&row.region),
            GroupBy::Global | GroupBy::Node => std::slice::from_ref(&FLEET),
        }
    }

    /// Per-group results, sorted by group name.
    pub(crate) fn sorted<T, R>(
        &self,
        groups: Vec<Option<T>>,
        mut finish: impl FnMut(&str, T) -> R,
    ) -> Vec<R> {
        let mut named: Vec<(&str, T)> = groups
            .into_iter()
            .enumerate()
            .filter_map(|(id, acc)| acc.map(|a| (self.name(id as u32), a)))
            .collect();
        named.sort_by(|a, b| a.0.cmp(b.0));
        named.into_iter().map(|(name, acc)| finish(name, acc)).collect()
    }

    /// The rows with their ids resolved to names: the table's content,
    /// independent of the order names were interned in.
    #[allow(clippy::type_complexity)]
    fn resolved(&self) -> Vec<(&str, [&str; 2], [Vec<&str>; 2], Option<(&str, Option<bool>)>, Row)> {
        let names = |ids: &[u32]| ids.iter().map(|id| self.name(*id)).collect::<Vec<_>>();
        self.rows
            .iter()
            .map(|(node, row)| {
                // Ids are compared through their names.
                let bare = Row {
                    zone: 0,
                    region: 0,
                    declared: Box::new([]),
                    clusters: Box::new([]),
                    update: None,
                    ..row.clone()
                };
                (
                    &**node,
                    [self.name(row.zone), self.name(row.region)],
                    [names(&row.declared), names(&row.clusters)],
                    row.update.map(|(id, ok)| (self.name(id), ok)),
                    bare,
                )
            })
            .collect()
    }
}

impl PartialEq for FleetRows {
    fn eq(&self, other: &Self) -> bool {
        self.resolved() == other.resolved()
    }
}
