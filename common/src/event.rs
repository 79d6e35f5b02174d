//! Twin events: the envelope every event shares and the typed payloads of the
//! five families the seed lists (state transitions, drift, lifecycle,
//! connectivity, trust) plus the inventory reports that complete a twin.
//!
//! Every payload has a stable dotted type name (`connectivity.state_transition`)
//! used in JSON and on the command line. In postcard a payload is its variant
//! index, so variants are only ever appended, never reordered or removed.

use crate::chain::Digest;
use crate::model::{
    AttestationState, CertificateRef, ConfigValue, ConnectivityState, FieldDrift, Hardware,
    LifecyclePhase, OperationalState, PeerLink, SbomEntry, SupplyChain,
};
use crate::time::{Span, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One event of one node's journal: the seed's `Event`, sequenced and chained.
///
/// Invariant: within a node's stream `seq` runs 1, 2, 3 ... without gaps and
/// `prev_hash` is the hash of the event before (all zeroes for seq 1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub node_id: String,
    pub seq: u64,
    pub timestamp: Timestamp,
    pub prev_hash: Digest,
    pub payload: EventPayload,
}

impl Event {
    /// The seed-style identifier, `evt-2026-02-27-034500-000042`: the
    /// event's time and its seq within the node's stream.
    pub fn id(&self) -> String {
        event_id(self.timestamp, self.seq)
    }

    /// The stable dotted type name of the payload.
    pub fn event_type(&self) -> &'static str {
        self.payload.type_name()
    }

    /// The human JSON form: the seed's `id`, `timestamp`, `node_id`,
    /// `event_type`, `payload`, plus `seq` and `prev_hash`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id(),
            "timestamp": self.timestamp,
            "node_id": self.node_id,
            "seq": self.seq,
            "event_type": self.event_type(),
            "payload": self.payload.payload_json(),
            "prev_hash": self.prev_hash,
        })
    }
}

/// `evt-YYYY-MM-DD-HHMMSS-SEQ` for an event at `at` with sequence `seq`.
pub fn event_id(at: Timestamp, seq: u64) -> String {
    let text = at.to_string(); // 2026-02-27T03:45:00Z (maybe with fraction)
    let date = text.get(0..10).unwrap_or("0000-00-00");
    let clock: String = text.get(11..19).unwrap_or("00:00:00").replace(':', "");
    format!("evt-{date}-{clock}-{seq:06}")
}

/// The payload of an event, one variant per event type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum EventPayload {
    // --- state transitions -------------------------------------------------
    #[serde(rename = "connectivity.state_transition")]
    ConnectivityTransition(ConnectivityTransition),
    #[serde(rename = "lifecycle.phase_transition")]
    LifecycleTransition(LifecycleTransition),
    #[serde(rename = "operational.state_transition")]
    OperationalTransition(OperationalTransition),
    // --- drift ---------------------------------------------------------------
    #[serde(rename = "drift.version_detected")]
    VersionDrift(VersionDrift),
    #[serde(rename = "drift.config_detected")]
    ConfigDrift(ConfigDrift),
    #[serde(rename = "drift.policy_detected")]
    PolicyDrift(PolicyDrift),
    // --- lifecycle -------------------------------------------------------------
    #[serde(rename = "lifecycle.provisioning_started")]
    ProvisioningStarted(Note),
    #[serde(rename = "lifecycle.provisioning_completed")]
    ProvisioningCompleted(Note),
    #[serde(rename = "lifecycle.update_initiated")]
    UpdateInitiated(Update),
    #[serde(rename = "lifecycle.update_completed")]
    UpdateCompleted(UpdateCompleted),
    #[serde(rename = "lifecycle.maintenance_started")]
    MaintenanceStarted(MaintenanceStarted),
    #[serde(rename = "lifecycle.maintenance_completed")]
    MaintenanceCompleted(MaintenanceCompleted),
    #[serde(rename = "lifecycle.decommissioning_started")]
    DecommissioningStarted(Note),
    #[serde(rename = "lifecycle.decommissioning_completed")]
    DecommissioningCompleted(Note),
    // --- connectivity ----------------------------------------------------------
    #[serde(rename = "connectivity.connection_established")]
    ConnectionEstablished(ConnectionEstablished),
    #[serde(rename = "connectivity.connection_lost")]
    ConnectionLost(Note),
    #[serde(rename = "connectivity.sync_completed")]
    SyncCompleted(SyncCompleted),
    #[serde(rename = "connectivity.replay_started")]
    ReplayStarted(ReplayStarted),
    #[serde(rename = "connectivity.replay_completed")]
    ReplayCompleted(ReplayCompleted),
    // --- trust ---------------------------------------------------------------
    #[serde(rename = "trust.attestation_performed")]
    AttestationPerformed(AttestationPerformed),
    #[serde(rename = "trust.certificate_rotated")]
    CertificateRotated(CertificateRotated),
    #[serde(rename = "trust.sbom_updated")]
    SbomUpdated(SbomEntry),
    #[serde(rename = "trust.chain_validated")]
    TrustChainValidated(TrustChainValidated),
    // --- inventory -------------------------------------------------------------
    #[serde(rename = "inventory.identity")]
    IdentityReported(IdentityReported),
    #[serde(rename = "inventory.hardware")]
    HardwareReported(Hardware),
    #[serde(rename = "inventory.software")]
    SoftwareReported(SoftwareReported),
    #[serde(rename = "inventory.config")]
    ConfigReported(ConfigReported),
    #[serde(rename = "inventory.policy")]
    PolicyApplied(PolicyApplied),
    #[serde(rename = "inventory.topology")]
    TopologyReported(TopologyReported),
    #[serde(rename = "inventory.supply_chain")]
    SupplyChainReported(SupplyChain),
    #[serde(rename = "inventory.desired")]
    DesiredStateLearned(DesiredStateLearned),
}

/// Every event type name, in variant order.
pub const EVENT_TYPES: &[&str] = &[
    "connectivity.state_transition",
    "lifecycle.phase_transition",
    "operational.state_transition",
    "drift.version_detected",
    "drift.config_detected",
    "drift.policy_detected",
    "lifecycle.provisioning_started",
    "lifecycle.provisioning_completed",
    "lifecycle.update_initiated",
    "lifecycle.update_completed",
    "lifecycle.maintenance_started",
    "lifecycle.maintenance_completed",
    "lifecycle.decommissioning_started",
    "lifecycle.decommissioning_completed",
    "connectivity.connection_established",
    "connectivity.connection_lost",
    "connectivity.sync_completed",
    "connectivity.replay_started",
    "connectivity.replay_completed",
    "trust.attestation_performed",
    "trust.certificate_rotated",
    "trust.sbom_updated",
    "trust.chain_validated",
    "inventory.identity",
    "inventory.hardware",
    "inventory.software",
    "inventory.config",
    "inventory.policy",
    "inventory.topology",
    "inventory.supply_chain",
    "inventory.desired",
];

/// A payload given as type name and JSON that does not fit that type.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("unknown event type {0:?} (see `EVENT_TYPES`)")]
    UnknownType(String),
    #[error("payload does not fit event type {event_type}: {source}")]
    Invalid {
        event_type: String,
        #[source]
        source: serde_json::Error,
    },
}

impl EventPayload {
    /// The stable dotted name of this payload's type.
    pub fn type_name(&self) -> &'static str {
        use EventPayload::*;
        let index = match self {
            ConnectivityTransition(_) => 0,
            LifecycleTransition(_) => 1,
            OperationalTransition(_) => 2,
            VersionDrift(_) => 3,
            ConfigDrift(_) => 4,
            PolicyDrift(_) => 5,
            ProvisioningStarted(_) => 6,
            ProvisioningCompleted(_) => 7,
            UpdateInitiated(_) => 8,
            UpdateCompleted(_) => 9,
            MaintenanceStarted(_) => 10,
            MaintenanceCompleted(_) => 11,
            DecommissioningStarted(_) => 12,
            DecommissioningCompleted(_) => 13,
            ConnectionEstablished(_) => 14,
            ConnectionLost(_) => 15,
            SyncCompleted(_) => 16,
            ReplayStarted(_) => 17,
            ReplayCompleted(_) => 18,
            AttestationPerformed(_) => 19,
            CertificateRotated(_) => 20,
            SbomUpdated(_) => 21,
            TrustChainValidated(_) => 22,
            IdentityReported(_) => 23,
            HardwareReported(_) => 24,
            SoftwareReported(_) => 25,
            ConfigReported(_) => 26,
            PolicyApplied(_) => 27,
            TopologyReported(_) => 28,
            SupplyChainReported(_) => 29,
            DesiredStateLearned(_) => 30,
        };
        EVENT_TYPES[index]
    }

    /// Builds a payload from its type name and JSON body, as `sx-agent record`
    /// takes them.
    pub fn from_type_and_json(
        event_type: &str,
        payload: serde_json::Value,
    ) -> Result<Self, PayloadError> {
        if !EVENT_TYPES.contains(&event_type) {
            return Err(PayloadError::UnknownType(event_type.to_owned()));
        }
        let mut wrapped = serde_json::Map::new();
        wrapped.insert(event_type.to_owned(), payload);
        serde_json::from_value(serde_json::Value::Object(wrapped)).map_err(|source| {
            PayloadError::Invalid {
                event_type: event_type.to_owned(),
                source,
            }
        })
    }

    /// The payload body alone, as JSON (without the type name).
    pub fn payload_json(&self) -> serde_json::Value {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(mut map)) => map
                .remove(self.type_name())
                .unwrap_or(serde_json::Value::Null),
            _ => serde_json::Value::Null,
        }
    }
}

/// A free-text reason or note; used by events that carry nothing else.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    #[serde(default)]
    pub reason: Option<String>,
}

/// `connectivity.state_transition`: the seed's `{from, to, reason}` plus the
/// ledger's details.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConnectivityTransition {
    pub from: ConnectivityState,
    pub to: ConnectivityState,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub latency_ms: Option<u32>,
    #[serde(default)]
    pub backlog: Option<u64>,
    #[serde(default)]
    pub sync_interval: Option<Span>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LifecycleTransition {
    pub from: LifecyclePhase,
    pub to: LifecyclePhase,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OperationalTransition {
    pub from: OperationalState,
    pub to: OperationalState,
    #[serde(default)]
    pub reason: Option<String>,
}

/// `drift.version_detected`: the node runs another version than desired.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionDrift {
    pub component: String,
    pub desired: String,
    pub actual: String,
}

/// `drift.config_detected`: configuration fields that differ from desired.
/// An empty `fields` means the configuration is back in line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfigDrift {
    pub fields: Vec<FieldDrift>,
}

/// `drift.policy_detected`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyDrift {
    pub desired_policy: String,
    pub actual_policy: String,
    pub compliance_score: f64,
    pub violations: u32,
}

/// `lifecycle.update_initiated`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    pub from_version: String,
    pub to_version: String,
}

/// `lifecycle.update_completed`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateCompleted {
    pub from_version: String,
    pub to_version: String,
    pub succeeded: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceStarted {
    pub window_id: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub planned_end: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceCompleted {
    pub window_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionEstablished {
    pub aggregator: String,
    #[serde(default)]
    pub latency_ms: Option<u32>,
}

/// How events reached the aggregator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncPath {
    Quic,
    Bundle,
}

/// `connectivity.sync_completed`: the aggregator durably holds everything up
/// to `acked_seq`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncCompleted {
    pub acked_seq: u64,
    pub via: SyncPath,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayStarted {
    pub backlog: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayCompleted {
    pub replayed: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationPerformed {
    pub result: AttestationState,
    #[serde(default)]
    pub detail: Option<String>,
}

/// `trust.certificate_rotated`: recorded (and signed) with the old key; it
/// names the new certificate so custody never breaks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateRotated {
    pub old_fingerprint: String,
    pub new_fingerprint: String,
    /// The new certificate, PEM.
    pub new_certificate: String,
    pub new_valid_until: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustChainValidated {
    pub chain: Vec<CertificateRef>,
}

/// `inventory.identity`: what the node's certificate binds, recorded first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityReported {
    pub component_type: String,
    pub region: String,
    pub zone: String,
    #[serde(default)]
    pub trust_chain: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SoftwareReported {
    pub component: String,
    pub version: String,
    pub sbom_hash: String,
    pub image_provenance: String,
}

/// `inventory.config`: the node's actual configuration values (a full
/// snapshot).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfigReported {
    pub values: BTreeMap<String, ConfigValue>,
}

/// `inventory.policy`: the policy the node has applied.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyApplied {
    pub policy_version: String,
    pub compliance_score: f64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopologyReported {
    pub links: Vec<PeerLink>,
    #[serde(default)]
    pub clusters: Vec<String>,
}

/// `inventory.desired`: the desired state the node learned (from the
/// aggregator's handshake or a receipt bundle).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DesiredStateLearned {
    #[serde(default)]
    pub software_version: Option<String>,
    #[serde(default)]
    pub config: BTreeMap<String, ConfigValue>,
    #[serde(default)]
    pub policy_version: Option<String>,
}

/// The hash of the event with `seq`, if known; used by verifiers that check a
/// batch against what is already stored.
pub type KnownHash<'a> = &'a dyn Fn(u64) -> Option<Digest>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_match_serde_names() {
        let samples = vec![
            EventPayload::ConnectionLost(Note::default()),
            EventPayload::ReplayStarted(ReplayStarted { backlog: 3 }),
            EventPayload::DesiredStateLearned(DesiredStateLearned {
                software_version: None,
                config: BTreeMap::new(),
                policy_version: None,
            }),
        ];
        for p in samples {
            let json = serde_json::to_value(&p).expect("json");
            let key = json
                .as_object()
                .and_then(|m| m.keys().next().cloned())
                .expect("one key");
            assert_eq!(key, p.type_name());
            let back = EventPayload::from_type_and_json(p.type_name(), p.payload_json())
                .expect("round trip");
            assert_eq!(back, p);
        }
    }

    #[test]
    fn unknown_type_and_bad_payload_are_distinct_errors() {
        assert!(matches!(
            EventPayload::from_type_and_json("nope.nothing", serde_json::json!({})),
            Err(PayloadError::UnknownType(_))
        ));
        assert!(matches!(
            EventPayload::from_type_and_json(
                "connectivity.replay_started",
                serde_json::json!({"backlog": "many"})
            ),
            Err(PayloadError::Invalid { .. })
        ));
    }

    #[test]
    fn ids_follow_the_seed_style() {
        let at = Timestamp::parse("2026-02-27T03:45:00Z").expect("time");
        assert_eq!(event_id(at, 1), "evt-2026-02-27-034500-000001");
    }
}
