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

/// The drift-score buckets of [`DriftAggregate::score_distribution`].
const BUCKETS: [&str; 4] = ["0", "1-9", "10-99", "100+"];

fn bucket(score: u32) -> usize {
    usize::from(score > 0) + usize::from(score > 9) + usize::from(score > 99)
}

/// Compliance scores are summed in fixed point, in units of 2^-64: integer
/// sums do not depend on the order members come in (float sums do), and
/// every score in [2^-11, 2^40] is represented exactly.
const FIXED_POINT: f64 = 18_446_744_073_709_551_616.0;

/// Compliance scores beyond ±2^40 (nonsense: a score is in [0, 1]) are
/// summed as ±2^40.
const COMPLIANCE_LIMIT: f64 = 1_099_511_627_776.0;

/// A [`DriftSummary`] as [`DriftGroups`] adds it: the compliance score
/// already converted to its fixed-point term.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DriftMember {
    /// In units of 2^-64; zero without a compliance score. As two words
    /// (high first), so a member is aligned to 8 bytes, not 16.
    compliance_term: [u64; 2],
    compliance: f64,
    stale_by: Span,
    drift_score: u32,
    severity: Severity,
    has_compliance: bool,
}

impl DriftMember {
    pub fn of(s: &DriftSummary) -> Self {
        let has = s.compliance_score.is_some();
        let c = s.compliance_score.unwrap_or(0.0);
        // Exact for scores in [2^-11, 2^40]; others are clamped, NaN
        // counts as 0 (`as`): deterministic for any input. With terms of at
        // most 2^104, no sum of fewer than 2^23 members overflows.
        let term = (c.clamp(-COMPLIANCE_LIMIT, COMPLIANCE_LIMIT) * FIXED_POINT) as i128;
        DriftMember {
            compliance_term: if has {
                [(term >> 64) as u64, term as u64]
            } else {
                [0, 0]
            },
            compliance: c,
            stale_by: s.stale_by,
            drift_score: s.drift_score,
            severity: s.severity,
            has_compliance: has,
        }
    }

    pub fn summary(&self) -> DriftSummary {
        DriftSummary {
            severity: self.severity,
            drift_score: self.drift_score,
            compliance_score: self.has_compliance.then_some(self.compliance),
            stale_by: self.stale_by,
        }
    }
}

/// [`aggregate`] for many groups at once, one member at a time, so a view
/// feeds every group in a single pass over the fleet. Members are
/// identified by a key that sorts as their node ids do (the node id itself,
/// or a rank); results do not depend on the order members are added in.
///
/// What an add touches of a group is one small struct (two cache lines),
/// so with hundreds of groups hit in any order an add costs one or two
/// L1 lines rather than one per field; the worst lists, rarely touched,
/// are kept apart.
#[derive(Clone, Debug)]
pub struct DriftGroups<K> {
    counters: Vec<GroupCounters<K>>,
    /// Per group, the ten highest scores, highest first, ties by key.
    worst: Vec<Worst<K>>,
}

/// How many of a group's worst nodes an aggregate lists.
const WORST: usize = 10;

/// A group's worst members, highest score first, ties by key: a fixed
/// array, so a view allocates nothing per group while it scans.
#[derive(Clone, Copy, Debug)]
struct Worst<K> {
    len: usize,
    items: [(K, u32); WORST],
}

impl<K: Copy + Default> Default for Worst<K> {
    fn default() -> Self {
        Worst {
            len: 0,
            items: [(K::default(), 0); WORST],
        }
    }
}

impl<K> Worst<K> {
    fn as_slice(&self) -> &[(K, u32)] {
        &self.items[..self.len]
    }
}

/// The running numbers of one group.
#[derive(Clone, Copy, Debug)]
struct GroupCounters<K> {
    /// In units of 2^-64.
    compliance_sum: i128,
    /// Meaningful once `compliance_count > 0`.
    compliance_min: f64,
    stale_by_max: Span,
    by_severity: [u32; Severity::ALL.len()],
    buckets: [u32; BUCKETS.len()],
    compliance_count: u32,
    /// The tenth worst member once there are ten (what a newcomer must
    /// beat), so most members never touch the lists.
    floor: Option<(K, u32)>,
}

impl<K> Default for GroupCounters<K> {
    fn default() -> Self {
        GroupCounters {
            compliance_sum: 0,
            compliance_min: 0.0,
            stale_by_max: Span::ZERO,
            by_severity: [0; Severity::ALL.len()],
            buckets: [0; BUCKETS.len()],
            compliance_count: 0,
            floor: None,
        }
    }
}

impl<K: Ord + Copy + Default> DriftGroups<K> {
    /// Accumulators for groups `0..groups`.
    pub fn new(groups: usize) -> Self {
        DriftGroups {
            counters: vec![GroupCounters::default(); groups],
            worst: vec![Worst::default(); groups],
        }
    }

    /// Adds a member to group `g` (which must be below `groups`).
    #[inline]
    pub fn add(&mut self, g: usize, node: K, s: &DriftSummary) {
        self.add_member(g, node, &DriftMember::of(s));
    }

    /// [`add`](Self::add) for a summary already in member form (what the
    /// fleet table keeps per node, so a view converts nothing per node).
    #[inline]
    pub fn add_member(&mut self, g: usize, node: K, m: &DriftMember) {
        // Few branches: views call this for every node of the fleet.
        let c = &mut self.counters[g];
        c.by_severity[m.severity as usize] += 1;
        c.buckets[bucket(m.drift_score)] += 1;
        let [high, low] = m.compliance_term;
        c.compliance_sum += (i128::from(high as i64) << 64) | i128::from(low);
        if m.has_compliance {
            c.compliance_min = if c.compliance_count == 0 {
                m.compliance
            } else {
                c.compliance_min.min(m.compliance)
            };
        }
        c.compliance_count += u32::from(m.has_compliance);
        c.stale_by_max = c.stale_by_max.max(m.stale_by);
        let score = m.drift_score;
        let ranks_before = |w: &(K, u32)| w.1 > score || (w.1 == score && w.0 < node);
        if score > 0 && c.floor.is_none_or(|w| !ranks_before(&w)) {
            let worst = &mut self.worst[g];
            let at = worst.as_slice().partition_point(ranks_before);
            // Past the floor check a member ranks within the ten (unless
            // its key came twice).
            if at < WORST {
                let len = (worst.len + 1).min(WORST);
                worst.items.copy_within(at..len - 1, at + 1);
                worst.items[at] = (node, score);
                worst.len = len;
                c.floor = (len == WORST).then(|| worst.items[WORST - 1]);
            }
        }
    }

    /// Whether any member was added to group `g`.
    pub fn has_members(&self, g: usize) -> bool {
        self.counters
            .get(g)
            .is_some_and(|c| c.by_severity.iter().any(|n| *n > 0))
    }

    /// The aggregate of group `g`; `node_id` names a member's key.
    pub fn finish(&self, g: usize, group: &str, node_id: impl Fn(K) -> String) -> DriftAggregate {
        let c = self.counters[g];
        let count = c.compliance_count;
        DriftAggregate {
            group: group.to_owned(),
            nodes: c.by_severity.iter().map(|n| *n as usize).sum(),
            by_severity: Severity::ALL
                .into_iter()
                .zip(c.by_severity.map(|n| n as usize))
                .collect(),
            score_distribution: BUCKETS
                .iter()
                .zip(c.buckets)
                .filter(|(_, n)| *n > 0)
                .map(|(b, n)| ((*b).to_owned(), n as usize))
                .collect(),
            worst_nodes: self.worst[g]
                .as_slice()
                .iter()
                .map(|(n, score)| (node_id(*n), *score))
                .collect(),
            compliance_mean: (count > 0)
                .then(|| c.compliance_sum as f64 / FIXED_POINT / f64::from(count)),
            compliance_min: (count > 0).then_some(c.compliance_min),
            stale_by_max: c.stale_by_max,
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
    let mut acc = DriftGroups::new(1);
    for (node, s) in members {
        acc.add(0, node, s);
    }
    acc.finish(0, group, str::to_owned)
}
