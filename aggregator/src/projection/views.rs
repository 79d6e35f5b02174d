//! Group views computed from the engine's per-node state on query:
//! drift, connectivity and lifecycle per cluster, zone, region and fleet.
//! The aggregator's own observations (last sync, backlog, staleness) are
//! passed in, never mixed into the node-reported twin.

use super::ProjectionEngine;
use super::drift::{self, DriftAggregate};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
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

/// Drift aggregated per group.
pub fn drift_by(engine: &ProjectionEngine, by: GroupBy) -> Vec<DriftAggregate> {
    let mut groups: BTreeMap<String, Vec<(&str, &drift::DriftSummary)>> = BTreeMap::new();
    for (node, view) in engine.nodes() {
        for g in groups_of(node, &view.twin, by) {
            groups
                .entry(g)
                .or_default()
                .push((node.as_str(), &view.summary));
        }
    }
    groups
        .into_iter()
        .map(|(g, members)| drift::aggregate(&g, members))
        .collect()
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

/// Connectivity per group at `now`.
pub fn connectivity_by(
    engine: &ProjectionEngine,
    observed: &HashMap<String, Observed>,
    by: GroupBy,
    stale_after: Span,
    now: Timestamp,
) -> Vec<ConnectivityAggregate> {
    let mut groups: BTreeMap<String, ConnectivityAggregate> = BTreeMap::new();
    let mut debt_sum: BTreeMap<String, u64> = BTreeMap::new();
    for (node, view) in engine.nodes() {
        let o = observed.get(node);
        let last_sync = o
            .and_then(|o| o.last_sync)
            .or(view.twin.connectivity.last_sync);
        let debt = last_sync.map_or(Span::ZERO, |t| now.since(t));
        let backlog = o.map_or(view.twin.connectivity.message_backlog, |o| o.backlog);
        let waiting = o
            .and_then(|o| o.backlog_since)
            .map_or(Span::ZERO, |t| now.since(t));
        let stale = is_stale(o, stale_after, now);
        for g in groups_of(node, &view.twin, by) {
            let agg = groups
                .entry(g.clone())
                .or_insert_with(|| ConnectivityAggregate {
                    group: g.clone(),
                    spectrum: ConnectivityState::ALL
                        .iter()
                        .map(|s| (s.as_str().to_owned(), 0))
                        .collect(),
                    ..ConnectivityAggregate::default()
                });
            agg.nodes += 1;
            *agg.spectrum
                .entry(view.twin.connectivity.state.as_str().to_owned())
                .or_default() += 1;
            agg.stale += usize::from(stale);
            agg.sync_debt_max = agg.sync_debt_max.max(debt);
            *debt_sum.entry(g).or_default() += debt.as_secs();
            agg.oldest_unreceived_max = agg.oldest_unreceived_max.max(waiting);
            agg.backlog_total += backlog;
            agg.backlog_max = agg.backlog_max.max(backlog);
        }
    }
    groups
        .into_values()
        .map(|mut a| {
            let n = a.nodes.max(1) as u64;
            a.sync_debt_mean = Span::from_secs(debt_sum.get(&a.group).copied().unwrap_or(0) / n);
            a.backlog_mean = a.backlog_total as f64 / n as f64;
            a
        })
        .collect()
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

/// Lifecycle per group.
pub fn lifecycle_by(engine: &ProjectionEngine, by: GroupBy) -> Vec<LifecycleAggregate> {
    let mut groups: BTreeMap<String, (LifecycleAggregate, BTreeMap<String, UpdateProgressView>)> =
        BTreeMap::new();
    for (node, view) in engine.nodes() {
        let lc = &view.twin.lifecycle;
        for g in groups_of(node, &view.twin, by) {
            let (agg, updates) = groups.entry(g.clone()).or_insert_with(|| {
                (
                    LifecycleAggregate {
                        group: g.clone(),
                        phases: [
                            "provisioning",
                            "active",
                            "maintenance",
                            "decommissioning",
                            "decommissioned",
                        ]
                        .iter()
                        .map(|p| (p.to_string(), 0))
                        .collect(),
                        ..LifecycleAggregate::default()
                    },
                    BTreeMap::new(),
                )
            });
            agg.nodes += 1;
            *agg.phases
                .entry(phase_name(lc.phase).to_owned())
                .or_default() += 1;
            if let Some(u) = &lc.update {
                let p = updates
                    .entry(u.to_version.clone())
                    .or_insert_with(|| UpdateProgressView {
                        to_version: u.to_version.clone(),
                        ..UpdateProgressView::default()
                    });
                p.initiated += 1;
                match u.succeeded {
                    None => p.in_progress += 1,
                    Some(true) => p.succeeded += 1,
                    Some(false) => p.failed += 1,
                }
            }
            if let Some(m) = &lc.maintenance {
                agg.maintenance.push(MaintenanceView {
                    node: node.clone(),
                    window_id: m.window_id.clone(),
                    reason: m.reason.clone(),
                    started_at: m.started_at,
                    planned_end: m.planned_end,
                });
            }
        }
    }
    groups
        .into_values()
        .map(|(mut agg, updates)| {
            agg.updates = updates.into_values().collect();
            agg
        })
        .collect()
}
