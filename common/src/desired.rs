//! Desired state: what operators declare a node should run (software
//! version, configuration values, policy), scoped to the fleet, a region, a
//! zone, a cluster or one node (the most specific rule wins), and a release
//! catalogue marking which releases carry security fixes.
//!
//! Pure: resolution of a node's desired state from the declaration, and the
//! drift a node detects itself against what it runs ([`detect_drift`]).

use crate::event::{ConfigDrift, DesiredStateLearned, EventPayload, PolicyDrift, VersionDrift};
use crate::fold::config_drift;
use crate::model::{ConfigValue, DigitalTwin};
use crate::time::Timestamp;
use crate::version::strip_component;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where a rule applies. Ordered from least to most specific.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    #[default]
    Fleet,
    Region(String),
    Zone(String),
    Cluster(String),
    Node(String),
}

impl Scope {
    /// How specific the scope is (higher wins).
    pub fn rank(&self) -> u8 {
        match self {
            Scope::Fleet => 0,
            Scope::Region(_) => 1,
            Scope::Zone(_) => 2,
            Scope::Cluster(_) => 3,
            Scope::Node(_) => 4,
        }
    }

    /// Whether the scope covers a node.
    pub fn covers(&self, node: &NodePlace<'_>) -> bool {
        match self {
            Scope::Fleet => true,
            Scope::Region(r) => r == node.region,
            Scope::Zone(z) => z == node.zone,
            Scope::Cluster(c) => node.clusters.iter().any(|x| x == c),
            Scope::Node(n) => n == node.node_id,
        }
    }
}

/// Where a node sits, for rule resolution.
#[derive(Clone, Copy, Debug)]
pub struct NodePlace<'a> {
    pub node_id: &'a str,
    pub component_type: &'a str,
    pub region: &'a str,
    pub zone: &'a str,
    pub clusters: &'a [String],
}

impl<'a> NodePlace<'a> {
    pub fn of(twin: &'a DigitalTwin) -> Self {
        NodePlace {
            node_id: &twin.identity.immutable_id,
            component_type: &twin.identity.component_type,
            region: &twin.identity.region,
            zone: &twin.identity.zone,
            clusters: &twin.topology.clusters,
        }
    }
}

/// `component` should run `version` within `scope`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRule {
    pub component: String,
    #[serde(default)]
    pub scope: Scope,
    pub version: String,
}

/// Configuration values desired within `scope` (merged, most specific
/// value per field wins).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfigRule {
    #[serde(default)]
    pub scope: Scope,
    #[serde(default)]
    pub component: Option<String>,
    pub values: BTreeMap<String, ConfigValue>,
}

/// Policy version desired within `scope`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRule {
    #[serde(default)]
    pub scope: Scope,
    pub version: String,
}

/// A release of a component in the catalogue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseEntry {
    pub component: String,
    pub version: String,
    #[serde(default)]
    pub security_fix: bool,
    #[serde(default)]
    pub notes: Option<String>,
}

/// The whole declaration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DesiredSpec {
    pub software: Vec<VersionRule>,
    pub config: Vec<ConfigRule>,
    pub policy: Vec<PolicyRule>,
    pub releases: Vec<ReleaseEntry>,
}

/// One change to the declaration, kept as an aggregator-side event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DesiredChangeKind {
    /// Replace the whole declaration (e.g. loaded from a file).
    Replace { spec: DesiredSpec },
    /// Add or replace the version rule for (component, scope).
    SetVersion { rule: VersionRule },
    /// Add or replace the config rule for (scope, component).
    SetConfig { rule: ConfigRule },
    /// Add or replace the policy rule for the scope.
    SetPolicy { rule: PolicyRule },
    /// Add or replace a catalogue entry.
    AddRelease { release: ReleaseEntry },
}

/// Who changed the desired state, when, and what.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DesiredChange {
    pub seq: u64,
    pub at: Timestamp,
    pub by: String,
    pub change: DesiredChangeKind,
}

impl DesiredSpec {
    /// Applies one change.
    pub fn apply(&mut self, change: &DesiredChangeKind) {
        match change {
            DesiredChangeKind::Replace { spec } => *self = spec.clone(),
            DesiredChangeKind::SetVersion { rule } => {
                self.software
                    .retain(|r| !(r.component == rule.component && r.scope == rule.scope));
                self.software.push(rule.clone());
            }
            DesiredChangeKind::SetConfig { rule } => {
                self.config
                    .retain(|r| !(r.scope == rule.scope && r.component == rule.component));
                self.config.push(rule.clone());
            }
            DesiredChangeKind::SetPolicy { rule } => {
                self.policy.retain(|r| r.scope != rule.scope);
                self.policy.push(rule.clone());
            }
            DesiredChangeKind::AddRelease { release } => {
                self.releases.retain(|r| {
                    !(r.component == release.component && r.version == release.version)
                });
                self.releases.push(release.clone());
            }
        }
    }

    /// The desired state of one node: the most specific rule of each kind.
    pub fn resolve(&self, node: &NodePlace<'_>) -> DesiredStateLearned {
        let software_version = self
            .software
            .iter()
            .filter(|r| r.component == node.component_type && r.scope.covers(node))
            .max_by_key(|r| r.scope.rank())
            .map(|r| r.version.clone());
        let mut rules: Vec<&ConfigRule> = self
            .config
            .iter()
            .filter(|r| {
                r.scope.covers(node)
                    && r.component
                        .as_deref()
                        .is_none_or(|c| c == node.component_type)
            })
            .collect();
        rules.sort_by_key(|r| (r.scope.rank(), r.component.is_some()));
        let mut config = BTreeMap::new();
        for r in rules {
            for (k, v) in &r.values {
                config.insert(k.clone(), v.clone());
            }
        }
        let policy_version = self
            .policy
            .iter()
            .filter(|r| r.scope.covers(node))
            .max_by_key(|r| r.scope.rank())
            .map(|r| r.version.clone());
        DesiredStateLearned {
            software_version,
            config,
            policy_version,
        }
    }

    /// Whether any release of `component` after `actual` up to and
    /// including `desired` carries a security fix.
    pub fn misses_security_fix(&self, component: &str, desired: &str, actual: &str) -> bool {
        use crate::version::Release;
        let (Some(want), Some(have)) = (Release::parse(desired), Release::parse(actual)) else {
            return false;
        };
        self.releases.iter().any(|r| {
            r.component == component
                && r.security_fix
                && Release::parse(&r.version).is_some_and(|v| v > have && v <= want)
        })
    }
}

/// The drift events a node records itself, comparing what it runs (its
/// twin) with the desired state it learned. Only what differs from the
/// drift it last recorded is returned, so repeated handshakes add nothing.
pub fn detect_drift(twin: &DigitalTwin, desired: &DesiredStateLearned) -> Vec<EventPayload> {
    let mut out = Vec::new();
    let component = &twin.identity.component_type;
    if let Some(want) = &desired.software_version {
        let actual = strip_component(&twin.software.actual_version);
        let recorded = strip_component(&twin.software.desired_version);
        if !actual.is_empty()
            && strip_component(want) != actual
            && recorded != strip_component(want)
        {
            out.push(EventPayload::VersionDrift(VersionDrift {
                component: component.clone(),
                desired: strip_component(want).to_owned(),
                actual: actual.to_owned(),
            }));
        }
    }
    let fields = config_drift(&desired.config, &twin.state.actual);
    if fields != twin.state.drift || desired.config != twin.state.desired {
        out.push(EventPayload::ConfigDrift(ConfigDrift { fields }));
    }
    if let Some(want) = &desired.policy_version
        && !twin.policy.actual_policy.is_empty()
        && *want != twin.policy.actual_policy
        && *want != twin.policy.desired_policy
    {
        out.push(EventPayload::PolicyDrift(PolicyDrift {
            desired_policy: want.clone(),
            actual_policy: twin.policy.actual_policy.clone(),
            compliance_score: twin.policy.compliance_score,
            violations: 1,
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place<'a>(clusters: &'a [String]) -> NodePlace<'a> {
        NodePlace {
            node_id: "n42",
            component_type: "souverix-rempart",
            region: "region-a",
            zone: "edge-zone-a1",
            clusters,
        }
    }

    #[test]
    fn most_specific_rule_wins() {
        let mut spec = DesiredSpec::default();
        for (scope, v) in [
            (Scope::Fleet, "1.4.0"),
            (Scope::Region("region-a".into()), "1.4.5"),
            (Scope::Zone("edge-zone-a1".into()), "1.4.7"),
            (Scope::Zone("edge-zone-a2".into()), "9.9.9"),
        ] {
            spec.apply(&DesiredChangeKind::SetVersion {
                rule: VersionRule {
                    component: "souverix-rempart".into(),
                    scope,
                    version: v.into(),
                },
            });
        }
        let clusters = vec!["ibcf".to_string()];
        assert_eq!(
            spec.resolve(&place(&clusters)).software_version.as_deref(),
            Some("1.4.7")
        );
        spec.apply(&DesiredChangeKind::SetVersion {
            rule: VersionRule {
                component: "souverix-rempart".into(),
                scope: Scope::Node("n42".into()),
                version: "1.5.0".into(),
            },
        });
        assert_eq!(
            spec.resolve(&place(&clusters)).software_version.as_deref(),
            Some("1.5.0")
        );
        // Another component's rules never apply.
        let mut other = place(&clusters);
        other.component_type = "souverix-coeur";
        assert_eq!(spec.resolve(&other).software_version, None);
    }

    #[test]
    fn config_merges_by_specificity_and_catalogue_flags_security_fixes() {
        let mut spec = DesiredSpec::default();
        spec.apply(&DesiredChangeKind::SetConfig {
            rule: ConfigRule {
                scope: Scope::Fleet,
                component: None,
                values: [
                    ("a".to_string(), ConfigValue::Int(1)),
                    ("b".to_string(), ConfigValue::Int(1)),
                ]
                .into(),
            },
        });
        spec.apply(&DesiredChangeKind::SetConfig {
            rule: ConfigRule {
                scope: Scope::Cluster("ibcf".into()),
                component: None,
                values: [("b".to_string(), ConfigValue::Int(2))].into(),
            },
        });
        let clusters = vec!["ibcf".to_string()];
        let d = spec.resolve(&place(&clusters));
        assert_eq!(d.config.get("a"), Some(&ConfigValue::Int(1)));
        assert_eq!(d.config.get("b"), Some(&ConfigValue::Int(2)));
        spec.apply(&DesiredChangeKind::AddRelease {
            release: ReleaseEntry {
                component: "souverix-rempart".into(),
                version: "1.4.7".into(),
                security_fix: true,
                notes: None,
            },
        });
        assert!(spec.misses_security_fix("souverix-rempart", "1.4.7", "1.4.6"));
        assert!(!spec.misses_security_fix("souverix-rempart", "1.4.6", "1.4.5"));
        assert!(!spec.misses_security_fix("souverix-rempart", "1.4.8", "1.4.7"));
    }
}
