//! Group views computed from the engine's per-node state on query:
//! drift, connectivity and lifecycle per cluster, zone, region and fleet.
//! The aggregator's own observations (last sync, backlog, staleness) are
//! recorded beside the rows ([`ProjectionEngine::observe`]), never mixed
//! into the node-reported twin.

use super::ProjectionEngine;
use super::drift::{self, DriftAggregate};
use super::rows::{GroupNames, Row};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use sx_common::model::{ConnectivityState, DigitalTwin, LifecyclePhase};
use sx_common::time::{Span, Timestamp};

/// How to group nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GroupBy {
    Node,
    Cluster,
    Zone,
    Region,
    Global,
}

impl std::str::FromStr for GroupBy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "node" => GroupBy::Node,
            "cluster" => GroupBy::Cluster,
            "zone" => GroupBy::Zone,
            "region" => GroupBy::Region,
            "global" | "fleet" => GroupBy::Global,
            other => {
                return Err(format!(
                    "unknown grouping {other:?} (node, cluster, zone, region, global)"
                ));
            }
        })
    }
}

/// The clusters a node belongs to: its region's and zone's clusters and
/// the functional clusters it declared.
pub fn clusters_of(twin: &DigitalTwin) -> Vec<String> {
    let mut out = Vec::with_capacity(2 + twin.topology.clusters.len());
    if !twin.identity.region.is_empty() {
        out.push(format!("{}-cluster", twin.identity.region));
    }
    if !twin.identity.zone.is_empty() {
        out.push(format!("{}-cluster", twin.identity.zone));
    }
    out.extend(twin.topology.clusters.iter().cloned());
    out
}

/// The group keys of a node under a grouping.
pub fn groups_of(node: &str, twin: &DigitalTwin, by: GroupBy) -> Vec<String> {
    match by {
        GroupBy::Node => vec![node.to_owned()],
        GroupBy::Cluster => clusters_of(twin),
        GroupBy::Zone => vec![twin.identity.zone.clone()],
        GroupBy::Region => vec![twin.identity.region.clone()],
        GroupBy::Global => vec!["fleet".to_owned()],
    }
}

/// Drift aggregated per group, groups sorted by name: read from the
/// per-group aggregates the fleet table keeps up to date
/// ([`super::drift_groups`]), so the cost follows the number of groups, not
/// of nodes.
pub fn drift_by(engine: &ProjectionEngine, by: GroupBy) -> Vec<DriftAggregate> {
    let table = engine.table();
    let cells = table.drift();
    if by == GroupBy::Node {
        return engine
            .rows_by_node()
            .filter_map(|(node, row)| {
                let s = cells.get(row as usize)?.summary();
                Some(drift::aggregate(node, [(node, &s)]))
            })
            .collect();
    }
    table.drift_by(by)
}

/// The aggregator's own view of a node's sync, passed into the views.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    pub last_sync: Option<Timestamp>,
    pub backlog: u64,
    /// Since when events have been known to wait on the node (oldest event
    /// not yet received), if any.
    pub backlog_since: Option<Timestamp>,
    pub connected: bool,
}

/// Connectivity of one group: the spectrum of node-reported states, nodes
/// the aggregator marks stale, sync debt and backlog statistics.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnectivityAggregate {
    pub group: String,
    pub nodes: usize,
    pub spectrum: BTreeMap<String, usize>,
    /// Not heard from within the stale threshold (the aggregator's own
    /// observation, independent of what nodes reported).
    pub stale: usize,
    pub sync_debt_max: Span,
    pub sync_debt_mean: Span,
    /// Age of the oldest event known to wait on a node of the group.
    pub oldest_unreceived_max: Span,
    pub backlog_total: u64,
    pub backlog_max: u64,
    pub backlog_mean: f64,
}

/// Whether the aggregator considers a node stale at `now`.
pub fn is_stale(observed: Option<&Observed>, threshold: Span, now: Timestamp) -> bool {
    match observed {
        Some(o) if o.connected => false,
        Some(o) => o.last_sync.is_none_or(|t| now.since(t) > threshold),
        None => true,
    }
}

/// Connectivity of a group, accumulated node by node.
#[derive(Clone, Debug, Default)]
struct ConnectivityAccumulator {
    nodes: usize,
    spectrum: [usize; ConnectivityState::ALL.len()],
    stale: usize,
    sync_debt_max: Span,
    sync_debt_sum: u64,
    oldest_unreceived_max: Span,
    backlog_total: u64,
    backlog_max: u64,
}

impl ConnectivityAccumulator {
    fn finish(self, group: &str) -> ConnectivityAggregate {
        let n = self.nodes.max(1) as u64;
        ConnectivityAggregate {
            group: group.to_owned(),
            nodes: self.nodes,
            spectrum: ConnectivityState::ALL
                .iter()
                .zip(self.spectrum)
                .map(|(s, n)| (s.as_str().to_owned(), n))
                .collect(),
            stale: self.stale,
            sync_debt_max: self.sync_debt_max,
            sync_debt_mean: Span::from_secs(self.sync_debt_sum / n),
            oldest_unreceived_max: self.oldest_unreceived_max,
            backlog_total: self.backlog_total,
            backlog_max: self.backlog_max,
            backlog_mean: self.backlog_total as f64 / n as f64,
        }
    }
}

/// Connectivity per group at `now`, groups sorted by name, with the
/// aggregator's observations recorded in the engine
/// ([`ProjectionEngine::observe`]; a node without one counts as stale, with
/// its reported last sync and backlog): one pass over the fleet table.
/// Totals saturate (a node may report any backlog).
pub fn connectivity_observed_by(
    engine: &ProjectionEngine,
    by: GroupBy,
    stale_after: Span,
    now: Timestamp,
) -> Vec<ConnectivityAggregate> {
    if by == GroupBy::Node {
        let table = engine.table();
        return engine
            .rows_by_node()
            .filter_map(|(node, ix)| {
                let row = table.row(ix)?;
                let o = table.observed(ix);
                Some(connectivity_of(&table.names, node, [(row, o)], by, stale_after, now).into())
            })
            .collect();
    }
    connectivity_of(
        &engine.table().names,
        "",
        engine.table().iter().map(|(_, row, o)| (row, o)),
        by,
        stale_after,
        now,
    )
    .into_groups(engine)
}

/// Accumulates rows into per-group accumulators (or, for one node, a
/// single one).
fn connectivity_of<'a>(
    names: &GroupNames,
    node: &str,
    rows: impl IntoIterator<Item = (&'a Row, Option<&'a Observed>)>,
    by: GroupBy,
    stale_after: Span,
    now: Timestamp,
) -> ConnectivityGroups {
    let mut out = ConnectivityGroups {
        node: node.to_owned(),
        groups: Vec::new(),
    };
    for (row, o) in rows {
        let last_sync = o.and_then(|o| o.last_sync).or(row.last_sync);
        let debt = last_sync.map_or(Span::ZERO, |t| now.since(t));
        let backlog = o.map_or(row.backlog, |o| o.backlog);
        let waiting = o
            .and_then(|o| o.backlog_since)
            .map_or(Span::ZERO, |t| now.since(t));
        let stale = is_stale(o, stale_after, now);
        let mut add = |g: u32| {
            let ix = g as usize;
            if out.groups.len() <= ix {
                out.groups.resize(ix + 1, None);
            }
            let acc: &mut ConnectivityAccumulator = out.groups[ix].get_or_insert_default();
            acc.nodes += 1;
            acc.spectrum[row.state as usize] += 1;
            acc.stale += usize::from(stale);
            acc.sync_debt_max = acc.sync_debt_max.max(debt);
            acc.sync_debt_sum = acc.sync_debt_sum.saturating_add(debt.as_secs());
            acc.oldest_unreceived_max = acc.oldest_unreceived_max.max(waiting);
            acc.backlog_total = acc.backlog_total.saturating_add(backlog);
            acc.backlog_max = acc.backlog_max.max(backlog);
        };
        for g in row.groups(by, names) {
            add(*g);
        }
    }
    out
}

/// Connectivity accumulated per group id.
struct ConnectivityGroups {
    /// The node, when the one group is a node.
    node: String,
    groups: Vec<Option<ConnectivityAccumulator>>,
}

impl ConnectivityGroups {
    fn into_groups(self, engine: &ProjectionEngine) -> Vec<ConnectivityAggregate> {
        engine
            .table()
            .names
            .sorted(self.groups, |name, acc| acc.finish(name))
    }
}

impl From<ConnectivityGroups> for ConnectivityAggregate {
    fn from(g: ConnectivityGroups) -> Self {
        let node = g.node;
        g.groups
            .into_iter()
            .flatten()
            .next()
            .unwrap_or_default()
            .finish(&node)
    }
}

/// Progress of updates towards one target version.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateProgressView {
    pub to_version: String,
    pub initiated: usize,
    pub in_progress: usize,
    pub succeeded: usize,
    pub failed: usize,
}

/// A maintenance window in progress on a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceView {
    pub node: String,
    pub window_id: String,
    pub reason: String,
    pub started_at: Timestamp,
    pub planned_end: Option<Timestamp>,
}

/// The lifecycle projection of a group.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LifecycleAggregate {
    pub group: String,
    pub nodes: usize,
    pub phases: BTreeMap<String, usize>,
    pub updates: Vec<UpdateProgressView>,
    pub maintenance: Vec<MaintenanceView>,
}

fn phase_name(p: LifecyclePhase) -> &'static str {
    match p {
        LifecyclePhase::Provisioning => "provisioning",
        LifecyclePhase::Active => "active",
        LifecyclePhase::Maintenance => "maintenance",
        LifecyclePhase::Decommissioning => "decommissioning",
        LifecyclePhase::Decommissioned => "decommissioned",
    }
}

const PHASES: [LifecyclePhase; 5] = [
    LifecyclePhase::Provisioning,
    LifecyclePhase::Active,
    LifecyclePhase::Maintenance,
    LifecyclePhase::Decommissioning,
    LifecyclePhase::Decommissioned,
];

/// Lifecycle of a group, accumulated node by node.
#[derive(Clone, Debug, Default)]
struct LifecycleAccumulator {
    nodes: usize,
    phases: [usize; PHASES.len()],
    /// Per target version id: initiated, in progress, succeeded, failed.
    updates: BTreeMap<u32, [usize; 4]>,
    /// Rows of the nodes in maintenance.
    maintenance: Vec<u32>,
}

/// Lifecycle per group, groups sorted by name; maintenance windows in node
/// id order.
pub fn lifecycle_by(engine: &ProjectionEngine, by: GroupBy) -> Vec<LifecycleAggregate> {
    let table = engine.table();
    let ranks = engine.ranks();
    let finish = |name: &str, acc: LifecycleAccumulator| {
        let mut updates: Vec<UpdateProgressView> = acc
            .updates
            .into_iter()
            .map(
                |(id, [initiated, in_progress, succeeded, failed])| UpdateProgressView {
                    to_version: table.names.name(id).to_owned(),
                    initiated,
                    in_progress,
                    succeeded,
                    failed,
                },
            )
            .collect();
        updates.sort_by(|a, b| a.to_version.cmp(&b.to_version));
        let mut maintenance = acc.maintenance;
        maintenance.sort_unstable_by_key(|row| ranks.get(*row as usize).copied());
        LifecycleAggregate {
            group: name.to_owned(),
            nodes: acc.nodes,
            phases: PHASES
                .iter()
                .zip(acc.phases)
                .map(|(p, n)| (phase_name(*p).to_owned(), n))
                .collect(),
            updates,
            maintenance: maintenance
                .into_iter()
                .filter_map(|row| {
                    let m = engine.view_at(row)?.twin.lifecycle.maintenance.as_ref()?;
                    Some(MaintenanceView {
                        node: table.node(row).to_owned(),
                        window_id: m.window_id.clone(),
                        reason: m.reason.clone(),
                        started_at: m.started_at,
                        planned_end: m.planned_end,
                    })
                })
                .collect(),
        }
    };
    fn add(acc: &mut LifecycleAccumulator, ix: u32, row: &Row) {
        acc.nodes += 1;
        acc.phases[row.phase as usize] += 1;
        if let Some((to, outcome)) = row.update {
            let p = acc.updates.entry(to).or_default();
            p[0] += 1;
            match outcome {
                None => p[1] += 1,
                Some(true) => p[2] += 1,
                Some(false) => p[3] += 1,
            }
        }
        if row.maintenance {
            acc.maintenance.push(ix);
        }
    }
    if by == GroupBy::Node {
        return engine
            .rows_by_node()
            .filter_map(|(node, ix)| {
                let mut acc = LifecycleAccumulator::default();
                add(&mut acc, ix, table.row(ix)?);
                Some(finish(node, acc))
            })
            .collect();
    }
    let mut groups: Vec<Option<LifecycleAccumulator>> = vec![None; table.names.len()];
    for (ix, row) in table.rows().iter().enumerate() {
        for g in row.groups(by, &table.names) {
            add(groups[*g as usize].get_or_insert_default(), ix as u32, row);
        }
    }
    table.names.sorted(groups, finish)
}
