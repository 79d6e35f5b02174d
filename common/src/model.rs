//! The digital twin of one fleet node, field for field as the seed names it.
//!
//! A twin is never edited in place: it is the fold of the node's events
//! ([`crate::fold`]). JSON uses the seed's names (`immutable_id`,
//! `sync_debt`, ...); postcard uses field order, so fields are only ever
//! appended.

use crate::time::{Span, Timestamp};
use serde::de::{self, Deserializer, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The seven connectivity states of the seed's spectrum, best first.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectivityState {
    Live,
    Delayed,
    EdgeCached,
    Autonomous,
    #[default]
    Disconnected,
    Returning,
    Replaying,
}

impl ConnectivityState {
    pub const ALL: [ConnectivityState; 7] = [
        ConnectivityState::Live,
        ConnectivityState::Delayed,
        ConnectivityState::EdgeCached,
        ConnectivityState::Autonomous,
        ConnectivityState::Disconnected,
        ConnectivityState::Returning,
        ConnectivityState::Replaying,
    ];

    /// The name used in JSON and on the command line (`edge-cached`).
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectivityState::Live => "live",
            ConnectivityState::Delayed => "delayed",
            ConnectivityState::EdgeCached => "edge-cached",
            ConnectivityState::Autonomous => "autonomous",
            ConnectivityState::Disconnected => "disconnected",
            ConnectivityState::Returning => "returning",
            ConnectivityState::Replaying => "replaying",
        }
    }
}

impl fmt::Display for ConnectivityState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ConnectivityState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ConnectivityState::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown connectivity state {s:?}"))
    }
}

/// Lifecycle phases of the seed.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum LifecyclePhase {
    #[default]
    Provisioning,
    Active,
    Maintenance,
    Decommissioning,
    /// Decommissioning completed: the node has left the fleet.
    Decommissioned,
}

/// The node's operational state (the seed's "operational state changes").
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum OperationalState {
    #[default]
    Unknown,
    InService,
    Degraded,
    OutOfService,
}

/// Outcome of the node's last attestation.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum AttestationState {
    #[default]
    Unknown,
    Verified,
    Failed,
}

/// The kind of relationship between two nodes in the fleet graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkType {
    Signaling,
    Media,
    Control,
    Bypass,
}

/// A configuration value: a JSON scalar in JSON, a tagged value in postcard.
#[derive(Clone, Debug, PartialEq)]
pub enum ConfigValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl fmt::Display for ConfigValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigValue::Bool(b) => write!(f, "{b}"),
            ConfigValue::Int(i) => write!(f, "{i}"),
            ConfigValue::Float(x) => write!(f, "{x}"),
            ConfigValue::Text(s) => f.write_str(s),
        }
    }
}

impl From<&str> for ConfigValue {
    fn from(s: &str) -> Self {
        ConfigValue::Text(s.to_owned())
    }
}

impl From<i64> for ConfigValue {
    fn from(i: i64) -> Self {
        ConfigValue::Int(i)
    }
}

/// The binary (postcard) shape of [`ConfigValue`].
#[derive(Serialize, Deserialize)]
enum TaggedConfigValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl Serialize for ConfigValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            match self {
                ConfigValue::Bool(b) => serializer.serialize_bool(*b),
                ConfigValue::Int(i) => serializer.serialize_i64(*i),
                ConfigValue::Float(x) => serializer.serialize_f64(*x),
                ConfigValue::Text(s) => serializer.serialize_str(s),
            }
        } else {
            let tagged = match self {
                ConfigValue::Bool(b) => TaggedConfigValue::Bool(*b),
                ConfigValue::Int(i) => TaggedConfigValue::Int(*i),
                ConfigValue::Float(x) => TaggedConfigValue::Float(*x),
                ConfigValue::Text(s) => TaggedConfigValue::Text(s.clone()),
            };
            tagged.serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for ConfigValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl Visitor<'_> for ScalarVisitor {
            type Value = ConfigValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a boolean, number or string")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ConfigValue, E> {
                Ok(ConfigValue::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ConfigValue, E> {
                Ok(ConfigValue::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ConfigValue, E> {
                i64::try_from(v)
                    .map(ConfigValue::Int)
                    .or(Ok(ConfigValue::Float(v as f64)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ConfigValue, E> {
                Ok(ConfigValue::Float(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ConfigValue, E> {
                Ok(ConfigValue::Text(v.to_owned()))
            }
        }
        if deserializer.is_human_readable() {
            deserializer.deserialize_any(ScalarVisitor)
        } else {
            Ok(match TaggedConfigValue::deserialize(deserializer)? {
                TaggedConfigValue::Bool(b) => ConfigValue::Bool(b),
                TaggedConfigValue::Int(i) => ConfigValue::Int(i),
                TaggedConfigValue::Float(x) => ConfigValue::Float(x),
                TaggedConfigValue::Text(s) => ConfigValue::Text(s),
            })
        }
    }
}

/// One field whose desired and actual values differ.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FieldDrift {
    pub field: String,
    pub desired: ConfigValue,
    pub actual: Option<ConfigValue>,
}

/// A certificate as the twin records it (not the certificate itself).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateRef {
    pub issuer: String,
    pub subject: String,
    pub valid_until: Timestamp,
    /// `sha256:<hex>` of the DER certificate.
    pub signature: String,
}

/// One entry of a node's SBOM lineage.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SbomEntry {
    pub component: String,
    pub version: String,
    pub sbom_hash: String,
    pub provenance: String,
    #[serde(default)]
    pub dependencies: Vec<String>,
}

/// A link from this node to a peer, declared by the node.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PeerLink {
    pub peer: String,
    pub link_type: LinkType,
}

/// `identity` of the seed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    pub immutable_id: String,
    pub component_type: String,
    pub region: String,
    pub zone: String,
    pub trust_chain: Vec<String>,
}

/// `connectivity` of the seed, as the node last reported it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Connectivity {
    pub state: ConnectivityState,
    pub last_sync: Option<Timestamp>,
    /// Time from `last_sync` to the node's latest event.
    pub sync_debt: Span,
    pub message_backlog: u64,
    pub latency_ms: Option<u32>,
}

/// An update in flight or last completed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateProgress {
    pub from_version: String,
    pub to_version: String,
    pub initiated_at: Timestamp,
    pub completed_at: Option<Timestamp>,
    pub succeeded: Option<bool>,
}

/// A maintenance window in progress.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceWindow {
    pub window_id: String,
    pub reason: String,
    pub started_at: Timestamp,
    pub planned_end: Option<Timestamp>,
}

/// `lifecycle` of the seed, with the update and maintenance in progress.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Lifecycle {
    pub phase: LifecyclePhase,
    pub update: Option<UpdateProgress>,
    pub maintenance: Option<MaintenanceWindow>,
}

/// `hardware` of the seed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hardware {
    pub serial: String,
    pub manufacturing_origin: String,
    pub batch_id: String,
    pub firmware_version: String,
    pub firmware_signature: String,
}

/// `software` of the seed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Software {
    pub desired_version: String,
    pub actual_version: String,
    /// Version distance: 100 per major, 10 per minor, 1 per patch release
    /// (the largest differing part only); 0 when in line.
    pub drift_score: u32,
    pub sbom_hash: String,
    pub image_provenance: String,
}

/// Configuration values by field name, in name order: what a node reports
/// running. Serialized exactly as a `BTreeMap<String, ConfigValue>` (a map
/// in JSON and postcard); held as one exact-size sorted list, since a twin
/// holds a handful of fields and a B-tree node would take ~600 bytes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConfigMap(Vec<(String, ConfigValue)>);

impl ConfigMap {
    pub fn get(&self, field: &str) -> Option<&ConfigValue> {
        let i = self.position(field).ok()?;
        Some(&self.0[i].1)
    }

    /// Sets a field; returns its previous value.
    pub fn insert(&mut self, field: String, value: ConfigValue) -> Option<ConfigValue> {
        match self.position(&field) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.reserve_exact(1);
                self.0.insert(i, (field, value));
                None
            }
        }
    }

    /// Removes a field; returns its value.
    pub fn remove(&mut self, field: &str) -> Option<ConfigValue> {
        let i = self.position(field).ok()?;
        let (_, value) = self.0.remove(i);
        self.0.shrink_to_fit();
        Some(value)
    }

    /// Every field and its value, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &ConfigValue)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Replaces every value with those of `values`.
    pub fn set_all(&mut self, values: &BTreeMap<String, ConfigValue>) {
        let same_fields =
            self.0.len() == values.len() && self.0.iter().zip(values).all(|(a, b)| a.0 == *b.0);
        if same_fields {
            for ((_, v), (_, new)) in self.0.iter_mut().zip(values) {
                v.clone_from(new);
            }
        } else {
            *self = ConfigMap::from(values);
        }
    }

    fn position(&self, field: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(field))
    }
}

impl From<&BTreeMap<String, ConfigValue>> for ConfigMap {
    fn from(values: &BTreeMap<String, ConfigValue>) -> Self {
        let mut list = Vec::with_capacity(values.len());
        list.extend(values.iter().map(|(k, v)| (k.clone(), v.clone())));
        ConfigMap(list)
    }
}

impl From<BTreeMap<String, ConfigValue>> for ConfigMap {
    fn from(values: BTreeMap<String, ConfigValue>) -> Self {
        let mut list = Vec::with_capacity(values.len());
        list.extend(values);
        ConfigMap(list)
    }
}

impl PartialEq<BTreeMap<String, ConfigValue>> for ConfigMap {
    fn eq(&self, other: &BTreeMap<String, ConfigValue>) -> bool {
        self.0.len() == other.len()
            && self
                .0
                .iter()
                .zip(other)
                .all(|((ka, va), (kb, vb))| ka == kb && va == vb)
    }
}

impl Serialize for ConfigMap {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for ConfigMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        BTreeMap::<String, ConfigValue>::deserialize(deserializer).map(ConfigMap::from)
    }
}

/// `state` of the seed: configuration desired, actual and their difference.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TwinState {
    pub desired: BTreeMap<String, ConfigValue>,
    pub actual: ConfigMap,
    pub drift: Vec<FieldDrift>,
    pub last_applied: Option<Timestamp>,
}

/// `policy` of the seed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub desired_policy: String,
    pub actual_policy: String,
    pub compliance_score: f64,
    /// How long the node's configuration and policy have been out of line:
    /// from `state.last_applied` to the latest event, zero when in line.
    pub stale_by: Span,
}

/// `trust` of the seed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Trust {
    pub certificate_chain: Vec<CertificateRef>,
    pub attestation_state: AttestationState,
    pub last_attestation: Option<Timestamp>,
    pub sbom_lineage: Vec<SbomEntry>,
}

/// `supply_chain` of the seed: free-form metadata per heading.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupplyChain {
    #[serde(default)]
    pub hardware_metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub software_provenance: BTreeMap<String, String>,
    #[serde(default)]
    pub manufacturing_batch: BTreeMap<String, String>,
    #[serde(default)]
    pub trust_chain: Vec<String>,
}

/// Where the node sits in the fleet graph, as it declared.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Topology {
    pub links: Vec<PeerLink>,
    /// Logical groupings the node belongs to beyond region and zone
    /// (e.g. `iBCF-interconnect-cluster`).
    pub clusters: Vec<String>,
}

/// The full twin of one node: the seed's `DigitalTwin`, plus the operational
/// state, topology and the position of the last event folded in.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DigitalTwin {
    pub identity: Identity,
    pub connectivity: Connectivity,
    pub lifecycle: Lifecycle,
    pub hardware: Hardware,
    pub software: Software,
    pub state: TwinState,
    pub policy: Policy,
    pub trust: Trust,
    pub supply_chain: SupplyChain,
    pub operational_state: OperationalState,
    pub topology: Topology,
    /// Seq of the last event folded into this twin (0: none).
    pub last_seq: u64,
    /// Timestamp of the first event folded into this twin.
    pub first_event_at: Option<Timestamp>,
    /// Timestamp of the last event folded into this twin.
    pub last_event_at: Option<Timestamp>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> BTreeMap<String, ConfigValue> {
        [
            ("sip.max_forwards".to_owned(), ConfigValue::Int(70)),
            (
                "stir.enforcement_mode".to_owned(),
                ConfigValue::from("hard"),
            ),
            ("rate_limit.max_cps".to_owned(), ConfigValue::Float(1.5)),
        ]
        .into()
    }

    #[test]
    fn config_map_serializes_as_the_btree_map_it_holds() {
        let map = values();
        let list = ConfigMap::from(&map);
        assert_eq!(list, map);
        assert_eq!(
            serde_json::to_string(&list).ok(),
            serde_json::to_string(&map).ok()
        );
        let bytes = postcard::to_allocvec(&map).expect("encode");
        assert_eq!(postcard::to_allocvec(&list).ok(), Some(bytes.clone()));
        assert_eq!(postcard::from_bytes::<ConfigMap>(&bytes).ok(), Some(list));
    }

    #[test]
    fn config_map_edits_as_a_map_does() {
        let mut map = BTreeMap::new();
        let mut list = ConfigMap::default();
        let edits = [("b", 1), ("a", 2), ("c", 3), ("b", 4), ("a", 5)];
        for (field, value) in edits {
            assert_eq!(
                list.insert(field.to_owned(), ConfigValue::Int(value)),
                map.insert(field.to_owned(), ConfigValue::Int(value))
            );
            assert_eq!(list, map);
        }
        assert_eq!(list.remove("b"), map.remove("b"));
        assert_eq!(list.remove("zz"), map.remove("zz"));
        assert_eq!(list, map);
        assert_eq!(list.get("a"), map.get("a"));
        list.set_all(&values());
        assert_eq!(list, values());
        list.set_all(&values());
        assert_eq!(list.len(), 3);
    }
}
