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
    let component = &twin.identity.component_type;
    let mut score = 0u32;
    let version_drift = version_finding(twin, desired, spec).map(|v| {
        score = score.saturating_add(v.score);
        VersionDriftReport {
            component: component.clone(),
            desired: v.desired.to_owned(),
            actual: v.actual.to_owned(),
            severity: v.severity,
            impact: v.impact.to_owned(),
        }
    });
    let details = sx_common::fold::config_drift(&desired.config, &twin.state.actual);
    let config_drift = (!details.is_empty()).then(|| {
        let (last_sync, stale_by, severity) = config_staleness(twin);
        score = score.saturating_add(details.len() as u32);
        ConfigDriftReport {
            objects: details.len(),
            last_sync,
            stale_by,
            severity,
            details,
        }
    });
    let policy_drift = policy_finding(twin, desired).map(|(want, severity)| {
        score = score.saturating_add(1);
        PolicyDriftReport {
            policy_version: want.to_owned(),
            actual_version: twin.policy.actual_policy.clone(),
            compliance_score: twin.policy.compliance_score,
            violations: 1,
            severity,
        }
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

/// The [`DriftSummary`] of [`analyze_against`], without building the
/// reports (no allocation): what the engine keeps per node after each
/// apply. Equal to `DriftSummary::of(&analyze_against(..), twin)`.
pub fn summarize_against(
    twin: &DigitalTwin,
    desired: &DesiredStateLearned,
    spec: &DesiredSpec,
) -> DriftSummary {
    let mut score = 0u32;
    let mut severity = Severity::None;
    if let Some(v) = version_finding(twin, desired, spec) {
        score = score.saturating_add(v.score);
        severity = severity.max(v.severity);
    }
    let actual = &twin.state.actual;
    let objects = desired
        .config
        .iter()
        .filter(|(field, want)| actual.get(field) != Some(*want))
        .count();
    let mut stale_by = twin.policy.stale_by;
    if objects > 0 {
        let (_, config_stale_by, config_severity) = config_staleness(twin);
        score = score.saturating_add(objects as u32);
        severity = severity.max(config_severity);
        stale_by = stale_by.max(config_stale_by);
    }
    if let Some((_, policy_severity)) = policy_finding(twin, desired) {
        score = score.saturating_add(1);
        severity = severity.max(policy_severity);
    }
    DriftSummary {
        severity,
        drift_score: score,
        compliance_score: compliance_of(twin),
        stale_by,
    }
}

/// A version out of line with the desired one.
struct VersionFinding<'a> {
    desired: &'a str,
    actual: &'a str,
    score: u32,
    severity: Severity,
    impact: &'static str,
}

fn version_finding<'a>(
    twin: &'a DigitalTwin,
    desired: &'a DesiredStateLearned,
    spec: &DesiredSpec,
) -> Option<VersionFinding<'a>> {
    let want = desired.software_version.as_ref()?;
    let actual = strip_component(&twin.software.actual_version);
    if actual.is_empty() {
        return None;
    }
    let want = strip_component(want);
    let d = distance(want, actual);
    if d == Distance::Same {
        return None;
    }
    let behind = sx_common::version::compare(actual, want) == std::cmp::Ordering::Less;
    let security = behind && spec.misses_security_fix(&twin.identity.component_type, want, actual);
    let (severity, impact) = match d {
        _ if !behind && d != Distance::Unknown => (Severity::Low, "ahead_of_desired"),
        Distance::Major(_) if security => (Severity::Critical, "missing_security_patch"),
        Distance::Major(_) => (Severity::High, "major_version_behind"),
        _ if security => (Severity::Medium, "missing_security_patch"),
        Distance::Minor(_) => (Severity::Medium, "minor_version_behind"),
        Distance::Patch(_) => (Severity::Low, "patch_behind"),
        _ => (Severity::Low, "unknown_version"),
    };
    Some(VersionFinding {
        desired: want,
        actual,
        score: d.score(),
        severity,
        impact,
    })
}

/// Last sync, staleness and severity of drifted configuration.
fn config_staleness(twin: &DigitalTwin) -> (Option<Timestamp>, Span, Severity) {
    let latest = twin.last_event_at.unwrap_or_default();
    let last_sync = twin.state.last_applied;
    let stale_by = last_sync.map_or(Span::ZERO, |t| latest.since(t));
    let severity = if stale_by >= Span::from_secs(24 * 3_600) {
        Severity::High
    } else {
        Severity::Medium
    };
    (last_sync, stale_by, severity)
}

/// The desired policy and the severity, when the node runs another one.
fn policy_finding<'a>(
    twin: &DigitalTwin,
    desired: &'a DesiredStateLearned,
) -> Option<(&'a str, Severity)> {
    let want = desired.policy_version.as_ref()?;
    let actual = &twin.policy.actual_policy;
    if actual.is_empty() || actual == want {
        return None;
    }
    let severity = if twin.policy.compliance_score < 0.8 {
        Severity::High
    } else {
        Severity::Medium
    };
    Some((want, severity))
}

fn compliance_of(twin: &DigitalTwin) -> Option<f64> {
    (!twin.policy.actual_policy.is_empty()).then_some(twin.policy.compliance_score)
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
            compliance_score: compliance_of(twin),
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

pub use super::drift_groups::{DriftMember, aggregate};
