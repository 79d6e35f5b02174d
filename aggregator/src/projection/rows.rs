//! The fleet table behind the group views: one small row per node with
//! exactly what the drift, connectivity and lifecycle views aggregate, the
//! node's zone, region and clusters as interned ids, in one contiguous
//! vector, plus the aggregator's own observation of each node.
//!
//! The engine keeps a node's row index beside its view and updates the row
//! whenever it updates the view, so a fleet-wide view is one sequential pass
//! over a few megabytes instead of a walk over every twin building
//! string-keyed maps per group; drift goes further and is kept aggregated
//! per group as cells change ([`super::drift_groups`]). Rows are in the
//! order nodes first appeared; the views' results do not depend on it.
//! Derived data, like the fleet graph: not in snapshots, rebuilt on load,
//! compared through the names the ids stand for.

use super::NodeView;
use super::drift::{DriftAggregate, DriftMember, DriftSummary};
use super::drift_groups::GroupDrift;
use super::views::{GroupBy, Observed};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use sx_common::model::{ConnectivityState, DigitalTwin, LifecyclePhase};
use sx_common::time::Timestamp;

/// The group id of the whole fleet (`"fleet"`).
const FLEET: u32 = 0;

/// Group (zone, region, cluster) and version names, and their ids; and
/// sets of name ids (the clusters of a node), and theirs. Names and sets
/// are never forgotten: a fleet has a bounded vocabulary of them.
#[derive(Clone, Debug)]
pub(crate) struct GroupNames {
    list: Vec<Arc<str>>,
    ids: HashMap<Arc<str>, u32>,
    sets: Vec<Arc<[u32]>>,
    set_ids: HashMap<Arc<[u32]>, u32>,
}

impl Default for GroupNames {
    fn default() -> Self {
        let mut names = GroupNames {
            list: Vec::new(),
            ids: HashMap::new(),
            sets: Vec::new(),
            set_ids: HashMap::new(),
        };
        names.id("fleet");
        names.set_id(&[]);
        names
    }
}

impl GroupNames {
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

    pub(crate) fn name(&self, id: u32) -> &str {
        &self.list[id as usize]
    }

    /// The id of a set of name ids (in the order given).
    fn set_id(&mut self, set: &[u32]) -> u32 {
        if let Some(id) = self.set_ids.get(set) {
            return *id;
        }
        let id = self.sets.len() as u32;
        let set: Arc<[u32]> = Arc::from(set);
        self.sets.push(set.clone());
        self.set_ids.insert(set, id);
        id
    }

    pub(crate) fn set(&self, id: u32) -> &[u32] {
        &self.sets[id as usize]
    }

    /// How many ids exist (the size of a table indexed by group id).
    pub(crate) fn len(&self) -> usize {
        self.list.len()
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
        named
            .into_iter()
            .map(|(name, acc)| finish(name, acc))
            .collect()
    }
}

/// What the group views need of one node.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Row {
    /// False until the groups below were filled in.
    placed: bool,
    pub(crate) zone: u32,
    pub(crate) region: u32,
    /// The clusters the node declared, as declared (a set id, to notice
    /// changes).
    declared: u32,
    /// Every cluster of the node, each once (a set id): its region's and
    /// zone's and the declared ones ([`super::views::clusters_of`]).
    pub(crate) clusters: u32,
    pub(crate) state: ConnectivityState,
    pub(crate) last_sync: Option<Timestamp>,
    pub(crate) backlog: u64,
    pub(crate) phase: LifecyclePhase,
    /// Target version (id) and outcome of the node's update, if any.
    pub(crate) update: Option<(u32, Option<bool>)>,
    pub(crate) maintenance: bool,
}

/// A row's drift numbers, kept apart from the row so the drift views scan
/// one small cell per node.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct DriftCell {
    pub(crate) member: DriftMember,
    pub(crate) zone: u32,
    pub(crate) region: u32,
    /// The node's clusters (a set id).
    pub(crate) clusters: u32,
}

impl DriftCell {
    fn of(row: &Row, s: &DriftSummary) -> Self {
        DriftCell {
            member: DriftMember::of(s),
            zone: row.zone,
            region: row.region,
            clusters: row.clusters,
        }
    }

    pub(crate) fn summary(&self) -> DriftSummary {
        self.member.summary()
    }

    /// The cell's groups under a grouping (for `GroupBy::Node`, the
    /// fleet's).
    pub(crate) fn groups<'a>(&'a self, by: GroupBy, names: &'a GroupNames) -> &'a [u32] {
        group_ids(by, &self.zone, &self.region, self.clusters, names)
    }
}

/// The groupings drift is kept for, and how many.
const KINDS: [GroupBy; 4] = [
    GroupBy::Zone,
    GroupBy::Region,
    GroupBy::Cluster,
    GroupBy::Global,
];

/// The [`GroupDrift`] of the groups of one grouping, indexed by group id
/// (a name id: a fleet names a few hundred groups); boxed, so ids that are
/// not groups of this grouping cost a pointer.
#[derive(Clone, Debug, Default)]
struct Groups(Vec<Option<Box<GroupDrift>>>);

impl Groups {
    fn get_mut(&mut self, g: &u32) -> Option<&mut GroupDrift> {
        self.0.get_mut(*g as usize)?.as_deref_mut()
    }

    fn get_or_default(&mut self, g: u32) -> &mut GroupDrift {
        let ix = g as usize;
        if self.0.len() <= ix {
            self.0.resize_with(ix + 1, || None);
        }
        self.0[ix].get_or_insert_with(Box::default)
    }

    fn iter(&self) -> impl Iterator<Item = (u32, &GroupDrift)> {
        self.0
            .iter()
            .enumerate()
            .filter_map(|(g, group)| Some((g as u32, group.as_deref()?)))
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (u32, &mut GroupDrift)> {
        self.0
            .iter_mut()
            .enumerate()
            .filter_map(|(g, group)| Some((g as u32, group.as_deref_mut()?)))
    }
}

/// [`GroupDrift`] of every group of every grouping, by group id. Behind a
/// lock so a view (which holds the table shared) can refill lists that ran
/// short; updates hold the table exclusively and take no lock.
#[derive(Debug, Default)]
struct LiveDrift(Mutex<[Groups; KINDS.len()]>);

impl Clone for LiveDrift {
    fn clone(&self) -> Self {
        LiveDrift(Mutex::new(self.lock().0.clone()))
    }
}

impl LiveDrift {
    fn lock(&self) -> LiveGuard<'_> {
        LiveGuard(self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn get_mut(&mut self) -> LiveKinds<'_> {
        LiveKinds(self.0.get_mut().unwrap_or_else(|e| e.into_inner()))
    }
}

struct LiveGuard<'a>(MutexGuard<'a, [Groups; KINDS.len()]>);

impl LiveGuard<'_> {
    fn kind_mut(&mut self, by: GroupBy) -> &mut Groups {
        let k = KINDS
            .iter()
            .position(|k| *k == by)
            .unwrap_or(KINDS.len() - 1);
        &mut self.0[k]
    }
}

struct LiveKinds<'a>(&'a mut [Groups; KINDS.len()]);

impl LiveKinds<'_> {
    /// A row's drift cell changed from `old` (none: the row is new) to
    /// `new`: out of its old groups, into its new ones.
    fn apply<'n>(
        self,
        row: u32,
        old: Option<&DriftCell>,
        new: &DriftCell,
        names: &GroupNames,
        node: impl Fn(u32) -> &'n str + Copy,
    ) {
        for (by, kind) in KINDS.into_iter().zip(self.0.iter_mut()) {
            if let Some(old) = old {
                for g in old.groups(by, names) {
                    if let Some(group) = kind.get_mut(g) {
                        group.remove(row, &old.member);
                    }
                }
            }
            for g in new.groups(by, names) {
                kind.get_or_default(*g).add(row, &new.member, node);
            }
        }
    }
}

/// A row with its ids replaced by the names they stand for.
#[derive(Debug, PartialEq)]
pub(crate) struct ResolvedRow<'a> {
    zone: &'a str,
    region: &'a str,
    declared: Vec<&'a str>,
    clusters: Vec<&'a str>,
    update: Option<(&'a str, Option<bool>)>,
    summary: DriftSummary,
    rest: Row,
}

impl Row {
    /// Brings the row in line with the node's view; `placement` says the
    /// node's zone, region or declared clusters may have changed.
    fn update(&mut self, names: &mut GroupNames, view: &NodeView, placement: bool) {
        let twin = &view.twin;
        if (placement || !self.placed) && !self.placed_as(names, twin) {
            self.place(names, twin);
        }
        self.state = twin.connectivity.state;
        self.last_sync = twin.connectivity.last_sync;
        self.backlog = twin.connectivity.message_backlog;
        self.phase = twin.lifecycle.phase;
        self.update = twin.lifecycle.update.as_ref().map(|u| {
            let same = self
                .update
                .is_some_and(|(id, _)| names.name(id) == u.to_version);
            let id = match self.update {
                Some((id, _)) if same => id,
                _ => names.id(&u.to_version),
            };
            (id, u.succeeded)
        });
        self.maintenance = twin.lifecycle.maintenance.is_some();
    }

    /// Whether the row's groups are the twin's (zone, region and declared
    /// clusters decide all of them).
    fn placed_as(&self, names: &GroupNames, twin: &DigitalTwin) -> bool {
        let declared = names.set(self.declared);
        self.placed
            && names.name(self.zone) == twin.identity.zone
            && names.name(self.region) == twin.identity.region
            && declared.len() == twin.topology.clusters.len()
            && declared
                .iter()
                .zip(&twin.topology.clusters)
                .all(|(id, c)| names.name(*id) == c)
    }

    fn place(&mut self, names: &mut GroupNames, twin: &DigitalTwin) {
        self.placed = true;
        self.zone = names.id(&twin.identity.zone);
        self.region = names.id(&twin.identity.region);
        let declared: Vec<u32> = twin.topology.clusters.iter().map(|c| names.id(c)).collect();
        self.declared = names.set_id(&declared);
        let mut clusters: Vec<u32> = Vec::new();
        for c in super::views::clusters_of(twin) {
            let id = names.id(&c);
            if !clusters.contains(&id) {
                clusters.push(id);
            }
        }
        self.clusters = names.set_id(&clusters);
    }

    /// The groups of the row under a grouping (for `GroupBy::Node`, whose
    /// groups are the nodes themselves, the fleet id).
    pub(crate) fn groups<'a>(&'a self, by: GroupBy, names: &'a GroupNames) -> &'a [u32] {
        group_ids(by, &self.zone, &self.region, self.clusters, names)
    }
}

/// The ids of a node's groups under a grouping, from its zone, region and
/// cluster set.
fn group_ids<'a>(
    by: GroupBy,
    zone: &'a u32,
    region: &'a u32,
    clusters: u32,
    names: &'a GroupNames,
) -> &'a [u32] {
    match by {
        GroupBy::Cluster => names.set(clusters),
        GroupBy::Zone => std::slice::from_ref(zone),
        GroupBy::Region => std::slice::from_ref(region),
        GroupBy::Global | GroupBy::Node => std::slice::from_ref(&FLEET),
    }
}

/// Every node's row, the node ids by row, the aggregator's observations by
/// row, and the names row ids refer to.
#[derive(Clone, Debug, Default)]
pub(crate) struct FleetTable {
    pub(crate) names: GroupNames,
    rows: Vec<Row>,
    drift: Vec<DriftCell>,
    nodes: Vec<Arc<str>>,
    /// By row; empty until the first observation (rows past its end have
    /// none).
    observed: Vec<Option<Observed>>,
    /// Drift per group of every grouping, kept up to date with the cells.
    groups: LiveDrift,
}

impl FleetTable {
    /// Adds a row for a new node; returns its index.
    pub(crate) fn add(&mut self, node: Arc<str>) -> u32 {
        let ix = self.rows.len() as u32;
        self.rows.push(Row::default());
        self.drift.push(DriftCell::default());
        self.nodes.push(node);
        ix
    }

    /// Brings a row in line with its node's view (`placement`: the node's
    /// zone, region or declared clusters may have changed).
    pub(crate) fn update(&mut self, row: u32, view: &NodeView, placement: bool) {
        let ix = row as usize;
        let (Some(r), Some(cell)) = (self.rows.get_mut(ix), self.drift.get_mut(ix)) else {
            return;
        };
        let old = r.placed.then_some(*cell);
        r.update(&mut self.names, view, placement);
        *cell = DriftCell::of(r, &view.summary);
        if old.as_ref() != Some(cell) {
            let new = *cell;
            let nodes = &self.nodes;
            self.groups
                .get_mut()
                .apply(row, old.as_ref(), &new, &self.names, |r| {
                    nodes.get(r as usize).map_or("", |n| n)
                });
        }
    }

    /// Drift aggregated per group (zone, region, cluster or the fleet),
    /// groups sorted by name.
    pub(crate) fn drift_by(&self, by: GroupBy) -> Vec<DriftAggregate> {
        let mut live = self.groups.lock();
        let node = |r: u32| self.node(r);
        if live
            .kind_mut(by)
            .iter()
            .map(|(_, group)| group)
            .any(|g| g.nodes() > 0 && g.needs_refill())
        {
            self.refill(&mut live);
        }
        let mut named: Vec<(&str, &GroupDrift)> = live
            .kind_mut(by)
            .iter()
            .filter(|(_, group)| group.nodes() > 0)
            .map(|(g, group)| (self.names.name(g), group))
            .collect();
        named.sort_unstable_by(|a, b| a.0.cmp(b.0));
        named
            .into_iter()
            .map(|(name, group)| group.finish(name, node))
            .collect()
    }

    /// Refills, in one pass over the cells, the lists of every group (of
    /// every grouping) that ran short or low.
    fn refill(&self, live: &mut LiveGuard<'_>) {
        let mut refilling: [Vec<bool>; KINDS.len()] = Default::default();
        for (by, flags) in KINDS.into_iter().zip(&mut refilling) {
            flags.resize(self.names.len(), false);
            for (g, group) in live.kind_mut(by).iter_mut() {
                if group.nodes() > 0 && (group.needs_refill() || group.runs_low()) {
                    group.begin_refill();
                    flags[g as usize] = true;
                }
            }
        }
        let node = |r: u32| self.node(r);
        for (by, flags) in KINDS.into_iter().zip(&refilling) {
            if !flags.contains(&true) {
                continue;
            }
            let kind = live.kind_mut(by);
            for (ix, (cell, row)) in self.drift.iter().zip(&self.rows).enumerate() {
                if !row.placed {
                    continue;
                }
                for g in cell.groups(by, &self.names) {
                    if flags[*g as usize]
                        && let Some(group) = kind.get_mut(g)
                    {
                        group.refill(ix as u32, &cell.member, node);
                    }
                }
            }
        }
    }

    /// Drift numbers by row.
    pub(crate) fn drift(&self) -> &[DriftCell] {
        &self.drift
    }

    pub(crate) fn observe(&mut self, row: u32, observed: Observed) {
        let ix = row as usize;
        if ix >= self.rows.len() {
            return;
        }
        if self.observed.len() <= ix {
            self.observed.resize(self.rows.len(), None);
        }
        self.observed[ix] = Some(observed);
    }

    pub(crate) fn observed(&self, row: u32) -> Option<&Observed> {
        self.observed.get(row as usize)?.as_ref()
    }

    /// The node of a row.
    pub(crate) fn node(&self, row: u32) -> &str {
        self.nodes.get(row as usize).map_or("", |n| n)
    }

    pub(crate) fn row(&self, row: u32) -> Option<&Row> {
        self.rows.get(row as usize)
    }

    /// Every row, in row order.
    pub(crate) fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// (node id, row, observation) of every node, in row order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &Row, Option<&Observed>)> {
        let observed = self.observed.iter().map(Option::as_ref);
        self.rows
            .iter()
            .zip(&self.nodes)
            .zip(observed.chain(std::iter::repeat(None)))
            .map(|((r, n), o)| (&**n, r, o))
    }

    /// A row's content, independent of the order rows were added and
    /// names interned in (observations are not part of it).
    pub(crate) fn resolved(&self, row: u32) -> Option<ResolvedRow<'_>> {
        let r = self.row(row)?;
        let names = &self.names;
        let resolve = |set: u32| {
            names
                .set(set)
                .iter()
                .map(|id| names.name(*id))
                .collect::<Vec<_>>()
        };
        Some(ResolvedRow {
            zone: names.name(r.zone),
            region: names.name(r.region),
            declared: resolve(r.declared),
            clusters: resolve(r.clusters),
            update: r.update.map(|(id, ok)| (names.name(id), ok)),
            summary: self.drift.get(row as usize)?.summary(),
            rest: Row {
                zone: 0,
                region: 0,
                declared: 0,
                clusters: 0,
                update: None,
                ..r.clone()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projection::drift::{self, Severity};
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use sx_common::time::Span;

    fn view(zone: u8, region: u8, cluster: Option<u8>, score: u32, stale: u64) -> NodeView {
        let mut v = NodeView::default();
        v.twin.identity.zone = format!("zone-{zone}");
        v.twin.identity.region = format!("region-{region}");
        v.twin.topology.clusters = cluster.map(|c| format!("fn-{c}")).into_iter().collect();
        v.summary = DriftSummary {
            severity: Severity::ALL[(score % 5) as usize],
            drift_score: score,
            compliance_score: (!score.is_multiple_of(3)).then(|| f64::from(score % 7) / 7.0),
            stale_by: Span(stale),
        };
        v
    }

    /// The table's groups the plain way: every node's current view, grouped
    /// by name, aggregated from scratch.
    fn reference(views: &[(String, NodeView)], by: GroupBy) -> Vec<DriftAggregate> {
        let mut groups: BTreeMap<String, Vec<(&str, &DriftSummary)>> = BTreeMap::new();
        for (node, v) in views {
            for g in super::super::views::groups_of(node, &v.twin, by) {
                let members = groups.entry(g).or_default();
                if !members.iter().any(|(n, _)| *n == node) {
                    members.push((node, &v.summary));
                }
            }
        }
        groups
            .into_iter()
            .map(|(g, members)| drift::aggregate(&g, members))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Nodes join, change drift and move between zones, regions and
        /// clusters in any order, in groups large enough that the kept
        /// candidate lists run short and are refilled: every grouping's
        /// view equals the aggregate of the current views from scratch.
        #[test]
        fn group_drift_follows_every_change(
            changes in proptest::collection::vec(
                (0usize..150, 0u8..4, 0u8..2, proptest::option::of(0u8..3), 0u32..60, 0u64..5),
                1..900,
            ),
        ) {
            let mut table = FleetTable::default();
            let mut views: Vec<(String, NodeView)> = Vec::new();
            let mut rows: HashMap<usize, u32> = HashMap::new();
            for (i, (node, zone, region, cluster, score, stale)) in changes.into_iter().enumerate() {
                let v = view(zone, region, cluster, score, stale);
                let row = *rows.entry(node).or_insert_with(|| {
                    views.push((format!("node-{node:03}"), NodeView::default()));
                    table.add(Arc::from(format!("node-{node:03}")))
                });
                table.update(row, &v, true);
                views[row as usize].1 = v;
                if i % 50 == 49 {
                    for by in KINDS {
                        prop_assert_eq!(table.drift_by(by), reference(&views, by));
                    }
                }
            }
            for by in KINDS {
                prop_assert_eq!(table.drift_by(by), reference(&views, by));
            }
            // A copy answers the same.
            let copy = table.clone();
            prop_assert_eq!(copy.drift_by(GroupBy::Zone), reference(&views, GroupBy::Zone));
        }
    }
}
