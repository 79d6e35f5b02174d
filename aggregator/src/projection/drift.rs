//! The drift analyzer: desired state (declared at the aggregator) against
//! the actual state nodes report, per node as the seed's `DriftAnalysis`,
//! and aggregated per cluster, zone and fleet. Pure.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use sx_common::desired::{DesiredSpec, NodePlace};
use sx_common::event::DesiredStateLearned;
use sx_common::model::{DigitalTwin, FieldDrift};
use sx_common::time::{Span, Timestamp};
use sx_common::version::{Distance, distance, strip_component};

/// How bad a drift is.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    #[default]
    None,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 5] = [
        Severity::None,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::None => "none",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

impl std::str::FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Severity::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("unknown severity {s:?}"))
    }
}

/// `version_drift` of the seed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionDriftReport {
    pub component: String,
    pub desired: String,
    pub actual: String,
    pub severity: Severity,
    /// `missing_security_patch`, `major_version_behind`, `minor_version_behind`,
    /// `patch_behind`, `ahead_of_desired`, `unknown_version`.
    pub impact: String,
}

/// `config_drift` of the seed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfigDriftReport {
    pub objects: usize,
    pub last_sync: Option<Timestamp>,
    pub stale_by: Span,
    pub details: Vec<FieldDrift>,
    pub severity: Severity,
}

/// `policy_drift` of the seed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyDriftReport {
    pub policy_version: String,
    pub actual_version: String,
    pub compliance_score: f64,
    pub violations: u32,
    pub severity: Severity,
}

/// The seed's `DriftAnalysis` of one node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DriftAnalysis {
    pub node: String,
    /// Time of the latest event the analysis reflects.
    pub timestamp: Option<Timestamp>,
    pub version_drift: Option<VersionDriftReport>,
    pub config_drift: Option<ConfigDriftReport>,
    pub policy_drift: Option<PolicyDriftReport>,
    /// The worst of the three.
    pub severity: Severity,
    /// Version distance score (100/10/1 per major/minor/patch) plus one per
    /// drifted config object plus one for policy drift.
    pub drift_score: u32,
}

/// Analyses a node's twin against its desired state (resolved from `spec`).
pub fn analyze(twin: &DigitalTwin, spec: &DesiredSpec) -> DriftAnalysis {
    let desired = spec.resolve(&NodePlace::of(twin));
    analyze_against(twin, &desired, spec)
}

/// Analyses a node's twin against an already resolved desired state.
pub fn analyze_against(
    twin: &DigitalTwin,
    desired: &DesiredStateLearned,
    spec: &DesiredSpec,
) -> DriftAnalysis {
    let component = twin.identity.component_type.clone();
    let mut score = 0u32;
    let version_drift = desired.software_version.as_ref().and_then(|want| {
        let actual = strip_component(&twin.software.actual_version);
        if actual.is_empty() {
            return None;
        }
        let want = strip_component(want);
        let d = distance(want, actual);
        if d == Distance::Same {
            return None;
        }
        score = score.saturating_add(d.score());
        let behind = sx_common::version::compare(actual, want) == std::cmp::Ordering::Less;
        let security = behind && spec.misses_security_fix(&component, want, actual);
        let (severity, impact) = match d {
            _ if !behind && d != Distance::Unknown => (Severity::Low, "ahead_of_desired"),
            Distance::Major(_) if security => (Severity::Critical, "missing_security_patch"),
            Distance::Major(_) => (Severity::High, "major_version_behind"),
            _ if security => (Severity::Medium, "missing_security_patch"),
            Distance::Minor(_) => (Severity::Medium, "minor_version_behind"),
            Distance::Patch(_) => (Severity::Low, "patch_behind"),
            _ => (Severity::Low, "unknown_version"),
        };
        Some(VersionDriftReport {
            component: component.clone(),
            desired: want.to_owned(),
            actual: actual.to_owned(),
            severity,
            impact: impact.to_owned(),
        })
    });
    let latest = twin.last_event_at.unwrap_or_default();
    let details = sx_common::fold::config_drift(&desired.config, &twin.state.actual);
    let config_drift = (!details.is_empty()).then(|| {
        let last_sync = twin.state.last_applied;
        let stale_by = last_sync.map_or(Span::ZERO, |t| latest.since(t));
        score = score.saturating_add(details.len() as u32);
        ConfigDriftReport {
            objects: details.len(),
            last_sync,
            stale_by,
            severity: if stale_by >= Span::from_secs(24 * 3_600) {
                Severity::High
            } else {
                Severity::Medium
            },
            details,
        }
    });
    let policy_drift = desired.policy_version.as_ref().and_then(|want| {
        let actual = &twin.policy.actual_policy;
        if actual.is_empty() || actual == want {
            return None;
        }
        score = score.saturating_add(1);
        let compliance = twin.policy.compliance_score;
        Some(PolicyDriftReport {
            policy_version: want.clone(),
            actual_version: actual.clone(),
            compliance_score: compliance,
            violations: 1,
            severity: if compliance < 0.8 {
                Severity::High
            } else {
                Severity::Medium
            },
        })
    });
    let severity = [
        version_drift.as_ref().map(|v| v.severity),
        config_drift.as_ref().map(|c| c.severity),
        policy_drift.as_ref().map(|p| p.severity),
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or_default();
    DriftAnalysis {
        node: twin.identity.immutable_id.clone(),
        timestamp: twin.last_event_at,
        version_drift,
        config_drift,
        policy_drift,
        severity,
        drift_score: score,
    }
}

/// The per-node numbers drift aggregation needs (small, kept per node).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DriftSummary {
    pub severity: Severity,
    pub drift_score: u32,
    pub compliance_score: Option<f64>,
    pub stale_by: Span,
}

impl DriftSummary {
    pub fn of(analysis: &DriftAnalysis, twin: &DigitalTwin) -> Self {
        DriftSummary {
            severity: analysis.severity,
            drift_score: analysis.drift_score,
            compliance_score: (!twin.policy.actual_policy.is_empty())
                .then_some(twin.policy.compliance_score),
            stale_by: analysis
                .config_drift
                .as_ref()
                .map_or(twin.policy.stale_by, |c| {
                    c.stale_by.max(twin.policy.stale_by)
                }),
        }
    }
}

/// Drift aggregated over a group of nodes (a cluster, a zone, the fleet).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DriftAggregate {
    pub group: String,
    pub nodes: usize,
    pub by_severity: BTreeMap<Severity, usize>,
    /// Nodes per drift-score bucket: `0`, `1-9`, `10-99`, `100+`.
    pub score_distribution: BTreeMap<String, usize>,
    /// Up to ten nodes with the highest drift score (node, score).
    pub worst_nodes: Vec<(String, u32)>,
    pub compliance_mean: Option<f64>,
    pub compliance_min: Option<f64>,
    pub stale_by_max: Span,
}

/// The drift-score buckets of [`DriftAggregate::score_distribution`].
const BUCKETS: [&str; 4] = ["0", "1-9", "10-99", "100+"];

fn bucket(score: u32) -> usize {
    match score {
        0 => 0,
        1..=9 => 1,
        10..=99 => 2,
        _ => 3,
    }
}

/// Compliance scores are summed in fixed point, in units of 2^-64: integer
/// sums do not depend on the order members come in (float sums do), and
/// every score in [2^-11, 2^52) is represented exactly.
const FIXED_POINT: f64 = 18_446_744_073_709_551_616.0;

/// [`aggregate`] one member at a time, so views can feed many groups in a
/// single pass over the fleet. Members are identified by a key that sorts
/// as their node ids do (the node id itself, or a rank); the result does
/// not depend on the order members are added in.
#[derive(Clone, Debug)]
pub struct DriftAccumulator<K> {
    nodes: usize,
    by_severity: [usize; Severity::ALL.len()],
    buckets: [usize; BUCKETS.len()],
    /// In units of 2^-64, saturating (a node may report any number).
    compliance_sum: i128,
    compliance_count: usize,
    compliance_min: Option<f64>,
    stale_by_max: Span,
    /// The ten highest scores, highest first, ties by key.
    worst: Vec<(K, u32)>,
}

impl<K> Default for DriftAccumulator<K> {
    fn default() -> Self {
        DriftAccumulator {
            nodes: 0,
            by_severity: Default::default(),
            buckets: Default::default(),
            compliance_sum: 0,
            compliance_count: 0,
            compliance_min: None,
            stale_by_max: Span::ZERO,
            worst: Vec::new(),
        }
    }
}

impl<K: Ord + Copy> DriftAccumulator<K> {
    pub fn add(&mut self, node: K, s: &DriftSummary) {
        self.nodes += 1;
        self.by_severity[s.severity as usize] += 1;
        self.buckets[bucket(s.drift_score)] += 1;
        if let Some(c) = s.compliance_score {
            // `as` saturates (and maps NaN to 0): deterministic for any input.
            self.compliance_sum = self
                .compliance_sum
                .saturating_add((c * FIXED_POINT).round() as i128);
            self.compliance_count += 1;
            self.compliance_min = Some(self.compliance_min.map_or(c, |m: f64| m.min(c)));
        }
        self.stale_by_max = self.stale_by_max.max(s.stale_by);
        let score = s.drift_score;
        let ranks_before = |w: &(K, u32)| w.1 > score || (w.1 == score && w.0 < node);
        let worst = &mut self.worst;
        if score > 0 && (worst.len() < 10 || worst.last().is_some_and(|w| !ranks_before(w))) {
            let at = worst.partition_point(ranks_before);
            worst.insert(at, (node, score));
            worst.truncate(10);
        }
    }

    /// The aggregate of the group; `node_id` names a member's key.
    pub fn finish(self, group: &str, node_id: impl Fn(K) -> String) -> DriftAggregate {
        DriftAggregate {
            group: group.to_owned(),
            nodes: self.nodes,
            by_severity: Severity::ALL.into_iter().zip(self.by_severity).collect(),
            score_distribution: BUCKETS
                .iter()
                .zip(self.buckets)
                .filter(|(_, n)| *n > 0)
                .map(|(b, n)| ((*b).to_owned(), n))
                .collect(),
            worst_nodes: self
                .worst
                .into_iter()
                .map(|(n, score)| (node_id(n), score))
                .collect(),
            compliance_mean: (self.compliance_count > 0)
                .then(|| self.compliance_sum as f64 / FIXED_POINT / self.compliance_count as f64),
            compliance_min: self.compliance_min,
            stale_by_max: self.stale_by_max,
        }
    }
}

/// Aggregates summaries of one group: counts by severity and score bucket,
/// the ten worst nodes (highest score, ties by node id), compliance mean
/// and minimum, the longest staleness.
pub fn aggregate<'a>(
    group: &str,
    members: impl IntoIterator<Item = (&'a str, &'a DriftSummary)>,
) -> DriftAggregate {
    let mut acc = DriftAccumulator::default();
    for (node, s) in members {
        acc.add(node, s);
    }
    acc.finish(group, str::to_owned)
}
