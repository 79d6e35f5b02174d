//! Proptest strategies and stream builders for tests, here and in the other
//! crates of the workspace (enable the `testing` feature in
//! `[dev-dependencies]`).
//!
//! Start with [`arb_payload`] (any of the 31 event payloads),
//! [`arb_event_stream`] (an honestly chained stream of one node) and
//! [`arb_signed_batches`] (that stream cut into batches, each closed by a
//! checkpoint signed with the node's key). [`seal_stream`] and [`checkpoint`]
//! build the same things by hand for example-based tests.
//!
//! Values span what a peer could send, with two deliberate limits: floats are
//! finite (NaN has no JSON form and is not equal to itself) and generated
//! timestamps lie in 2000..2100 (RFC 3339 only covers years 0000-9999).
//! Strings for names a fold matches on (component, config field) are drawn
//! mostly from a small vocabulary so that events of a stream interact.

use crate::chain::{ChainHead, Checkpoint, Digest, SealedEvent};
use crate::event::{
    AttestationPerformed, CertificateRotated, ConfigDrift, ConfigReported, ConnectionEstablished,
    ConnectivityTransition, DesiredStateLearned, Event, EventPayload, IdentityReported,
    LifecycleTransition, MaintenanceCompleted, MaintenanceStarted, Note, OperationalTransition,
    PolicyApplied, PolicyDrift, ReplayCompleted, ReplayStarted, SoftwareReported, SyncCompleted,
    SyncPath, TopologyReported, TrustChainValidated, Update, UpdateCompleted, VersionDrift,
};
use crate::model::{
    AttestationState, CertificateRef, ConfigValue, ConnectivityState, FieldDrift, Hardware,
    LifecyclePhase, LinkType, OperationalState, PeerLink, SbomEntry, SupplyChain,
};
use crate::time::{Span, Timestamp};
use ed25519_dalek::SigningKey;
use proptest::collection::{SizeRange, btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use std::collections::BTreeMap;

/// 2026-02-27T00:00:00Z, the day of the seed's examples; generated streams
/// start here.
pub const STREAM_START: Timestamp = Timestamp(1_772_150_400_000_000);

/// 2000-01-01T00:00:00Z and 2100-01-01T00:00:00Z in microseconds.
const YEAR_2000_MICROS: i64 = 946_684_800_000_000;
const YEAR_2100_MICROS: i64 = 4_102_444_800_000_000;

/// Any instant from 2000 to 2100, to the microsecond.
pub fn arb_timestamp() -> impl Strategy<Value = Timestamp> {
    (YEAR_2000_MICROS..YEAR_2100_MICROS).prop_map(Timestamp)
}

/// Any span, from zero to `u64::MAX` seconds, biased towards the minutes and
/// hours the seed shows.
pub fn arb_span() -> impl Strategy<Value = Span> {
    prop_oneof![
        (0u64..48 * 3_600).prop_map(Span),
        (0u64..10_000).prop_map(Span::from_mins),
        any::<u64>().prop_map(Span),
    ]
}

/// Any SHA-256 digest.
pub fn arb_digest() -> impl Strategy<Value = Digest> {
    any::<[u8; 32]>().prop_map(Digest)
}

/// A node id in the fleet's style (`sx-rempart-edge-zone-c-node-15`).
pub fn arb_node_id() -> impl Strategy<Value = String> {
    "sx-(rempart|coeur|relais)-[a-z0-9-]{1,12}-node-[0-9]{1,3}"
}

/// Any of the seven connectivity states.
pub fn arb_connectivity_state() -> impl Strategy<Value = ConnectivityState> {
    proptest::sample::select(ConnectivityState::ALL.to_vec())
}

/// Any configuration value; floats are finite.
pub fn arb_config_value() -> impl Strategy<Value = ConfigValue> {
    prop_oneof![
        any::<bool>().prop_map(ConfigValue::Bool),
        any::<i64>().prop_map(ConfigValue::Int),
        arb_finite_f64().prop_map(ConfigValue::Float),
        arb_text().prop_map(ConfigValue::Text),
    ]
}

/// Any event payload: every one of the 31 variants of [`EventPayload`] is
/// drawn with equal weight, with arbitrary contents.
pub fn arb_payload() -> impl Strategy<Value = EventPayload> {
    use EventPayload as P;
    prop_oneof![
        arb_connectivity_transition().prop_map(P::ConnectivityTransition),
        (arb_lifecycle_phase(), arb_lifecycle_phase(), arb_reason()).prop_map(
            |(from, to, reason)| P::LifecycleTransition(LifecycleTransition { from, to, reason })
        ),
        (
            arb_operational_state(),
            arb_operational_state(),
            arb_reason()
        )
            .prop_map(|(from, to, reason)| P::OperationalTransition(
                OperationalTransition { from, to, reason }
            )),
        (arb_component(), arb_version(), arb_version()).prop_map(|(component, desired, actual)| {
            P::VersionDrift(VersionDrift {
                component,
                desired,
                actual,
            })
        }),
        vec(arb_field_drift(), 0..4).prop_map(|fields| P::ConfigDrift(ConfigDrift { fields })),
        (arb_policy(), arb_policy(), arb_finite_f64(), any::<u32>()).prop_map(
            |(desired_policy, actual_policy, compliance_score, violations)| {
                P::PolicyDrift(PolicyDrift {
                    desired_policy,
                    actual_policy,
                    compliance_score,
                    violations,
                })
            }
        ),
        arb_note().prop_map(P::ProvisioningStarted),
        arb_note().prop_map(P::ProvisioningCompleted),
        (arb_version(), arb_version()).prop_map(|(from_version, to_version)| {
            P::UpdateInitiated(Update {
                from_version,
                to_version,
            })
        }),
        (arb_version(), arb_version(), any::<bool>()).prop_map(
            |(from_version, to_version, succeeded)| P::UpdateCompleted(UpdateCompleted {
                from_version,
                to_version,
                succeeded,
            })
        ),
        (arb_text(), arb_reason(), option::of(arb_timestamp())).prop_map(
            |(window_id, reason, planned_end)| P::MaintenanceStarted(MaintenanceStarted {
                window_id,
                reason,
                planned_end,
            })
        ),
        arb_text()
            .prop_map(|window_id| P::MaintenanceCompleted(MaintenanceCompleted { window_id })),
        arb_note().prop_map(P::DecommissioningStarted),
        arb_note().prop_map(P::DecommissioningCompleted),
        (arb_text(), option::of(any::<u32>())).prop_map(|(aggregator, latency_ms)| {
            P::ConnectionEstablished(ConnectionEstablished {
                aggregator,
                latency_ms,
            })
        }),
        arb_note().prop_map(P::ConnectionLost),
        (
            any::<u64>(),
            prop_oneof![Just(SyncPath::Quic), Just(SyncPath::Bundle)]
        )
            .prop_map(|(acked_seq, via)| P::SyncCompleted(SyncCompleted { acked_seq, via })),
        any::<u64>().prop_map(|backlog| P::ReplayStarted(ReplayStarted { backlog })),
        any::<u64>().prop_map(|replayed| P::ReplayCompleted(ReplayCompleted { replayed })),
        (arb_attestation_state(), arb_reason()).prop_map(|(result, detail)| {
            P::AttestationPerformed(AttestationPerformed { result, detail })
        }),
        (arb_text(), arb_text(), arb_text(), arb_timestamp()).prop_map(
            |(old_fingerprint, new_fingerprint, new_certificate, new_valid_until)| {
                P::CertificateRotated(CertificateRotated {
                    old_fingerprint,
                    new_fingerprint,
                    new_certificate,
                    new_valid_until,
                })
            }
        ),
        arb_sbom_entry().prop_map(P::SbomUpdated),
        vec(arb_certificate_ref(), 0..3)
            .prop_map(|chain| P::TrustChainValidated(TrustChainValidated { chain })),
        (
            arb_component(),
            arb_text(),
            arb_text(),
            vec(arb_text(), 0..3)
        )
            .prop_map(|(component_type, region, zone, trust_chain)| {
                P::IdentityReported(IdentityReported {
                    component_type,
                    region,
                    zone,
                    trust_chain,
                })
            }),
        arb_hardware().prop_map(P::HardwareReported),
        (arb_component(), arb_version(), arb_text(), arb_text()).prop_map(
            |(component, version, sbom_hash, image_provenance)| {
                P::SoftwareReported(SoftwareReported {
                    component,
                    version,
                    sbom_hash,
                    image_provenance,
                })
            }
        ),
        arb_config_map().prop_map(|values| P::ConfigReported(ConfigReported { values })),
        (arb_policy(), arb_finite_f64()).prop_map(|(policy_version, compliance_score)| {
            P::PolicyApplied(PolicyApplied {
                policy_version,
                compliance_score,
            })
        }),
        (vec(arb_peer_link(), 0..3), vec(arb_text(), 0..3)).prop_map(|(links, clusters)| {
            P::TopologyReported(TopologyReported { links, clusters })
        }),
        arb_supply_chain().prop_map(P::SupplyChainReported),
        (
            option::of(arb_version()),
            arb_config_map(),
            option::of(arb_policy())
        )
            .prop_map(|(software_version, config, policy_version)| {
                P::DesiredStateLearned(DesiredStateLearned {
                    software_version,
                    config,
                    policy_version,
                })
            }),
    ]
}

/// An honestly built stream of node `node` from genesis: `len` events with
/// seqs 1, 2, 3 ..., each chained to the one before, timestamps
/// non-decreasing from [`STREAM_START`], arbitrary payloads.
pub fn arb_event_stream(
    node: &str,
    len: impl Into<SizeRange>,
) -> impl Strategy<Value = Vec<SealedEvent>> {
    let node = node.to_owned();
    vec((arb_gap(), arb_payload()), len).prop_map(move |items| {
        seal_stream(
            &node,
            ChainHead::default(),
            timed(STREAM_START, items.into_iter()),
        )
    })
}

/// Consecutive events of one node closed by the node's checkpoint over the
/// last of them, as the agent sends them after a write transaction.
///
/// Invariant (for values built here): `events` is non-empty and
/// `checkpoint` covers `events.last()` and is signed by the stream's key.
#[derive(Clone, Debug, PartialEq)]
pub struct SignedBatch {
    pub events: Vec<SealedEvent>,
    pub checkpoint: Checkpoint,
}

/// An honest stream like [`arb_event_stream`] cut at arbitrary points into
/// batches, each closed by a checkpoint signed with `key`. The batches'
/// events, concatenated, are the whole stream; no batch is empty.
pub fn arb_signed_batches(
    node: &str,
    key: &SigningKey,
    len: impl Into<SizeRange>,
) -> impl Strategy<Value = Vec<SignedBatch>> {
    let node = node.to_owned();
    let key = key.clone();
    vec((arb_gap(), arb_payload(), any::<bool>()), len).prop_map(move |items| {
        let cuts: Vec<bool> = items.iter().map(|(_, _, cut)| *cut).collect();
        let events = seal_stream(
            &node,
            ChainHead::default(),
            timed(
                STREAM_START,
                items.into_iter().map(|(gap, payload, _)| (gap, payload)),
            ),
        );
        split_into_batches(&key, events, |i| cuts.get(i).copied().unwrap_or(false))
    })
}

/// Seals `events` as the stream of `node` continuing after `from`: seqs
/// `from.seq + 1 ...`, the first chained to `from.hash`, each next one to the
/// event before.
pub fn seal_stream(
    node: &str,
    from: ChainHead,
    events: impl IntoIterator<Item = (Timestamp, EventPayload)>,
) -> Vec<SealedEvent> {
    let mut head = from;
    events
        .into_iter()
        .map(|(timestamp, payload)| {
            let sealed = SealedEvent::seal(Event {
                node_id: node.to_owned(),
                seq: head.seq.wrapping_add(1),
                timestamp,
                prev_hash: head.hash,
                payload,
            });
            head = ChainHead {
                seq: sealed.event.seq,
                hash: sealed.hash,
            };
            sealed
        })
        .collect()
}

/// The checkpoint the node signs over the last of `events` (`None` when
/// there are none). The node id is taken from that event.
pub fn checkpoint(key: &SigningKey, events: &[SealedEvent]) -> Option<Checkpoint> {
    events
        .last()
        .map(|last| Checkpoint::sign(key, &last.event.node_id, last.event.seq, last.hash))
}

/// Cuts `events` into batches, closing one after every index `i` for which
/// `cut_after(i)` holds and after the last event, each with its checkpoint.
pub fn split_into_batches(
    key: &SigningKey,
    events: Vec<SealedEvent>,
    cut_after: impl Fn(usize) -> bool,
) -> Vec<SignedBatch> {
    let total = events.len();
    let mut batches = Vec::new();
    let mut current = Vec::new();
    for (i, event) in events.into_iter().enumerate() {
        current.push(event);
        if cut_after(i) || i + 1 == total {
            let events = std::mem::take(&mut current);
            if let Some(checkpoint) = checkpoint(key, &events) {
                batches.push(SignedBatch { events, checkpoint });
            }
        }
    }
    batches
}

/// Turns gaps into timestamps counted from `start`.
fn timed(
    start: Timestamp,
    items: impl Iterator<Item = (i64, EventPayload)>,
) -> impl Iterator<Item = (Timestamp, EventPayload)> {
    let mut at = start;
    items.map(move |(gap, payload)| {
        at = Timestamp(at.0.saturating_add(gap));
        (at, payload)
    })
}

/// The time between two events, in microseconds: often none, often whole
/// minutes, up to a day.
fn arb_gap() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0i64),
        (0i64..=1_440).prop_map(|m| m * 60_000_000),
        0i64..=86_400_000_000,
    ]
}

fn arb_finite_f64() -> impl Strategy<Value = f64> {
    use proptest::num::f64::{NEGATIVE, NORMAL, POSITIVE, SUBNORMAL, ZERO};
    prop_oneof![
        (0u32..=100).prop_map(|p| f64::from(p) / 100.0),
        POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO,
    ]
}

fn arb_text() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z0-9.:-]{0,16}", "\\PC{0,12}"]
}

fn arb_reason() -> impl Strategy<Value = Option<String>> {
    option::of(arb_text())
}

fn arb_note() -> impl Strategy<Value = Note> {
    arb_reason().prop_map(|reason| Note { reason })
}

fn arb_component() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("souverix-rempart".to_owned()),
        Just("souverix-coeur".to_owned()),
        arb_text(),
    ]
}

fn arb_version() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{1,2}\\.[0-9]{1,2}\\.[0-9]{1,2}",
        "souverix-rempart-[0-9]\\.[0-9]\\.[0-9]",
        arb_text(),
    ]
}

fn arb_policy() -> impl Strategy<Value = String> {
    prop_oneof!["policy-v[0-9]\\.[0-9]", arb_text()]
}

fn arb_config_key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("stir.enforcement_mode".to_owned()),
        Just("rate_limit.max_cps".to_owned()),
        "[a-z]{1,2}",
        arb_text(),
    ]
}

fn arb_config_map() -> impl Strategy<Value = BTreeMap<String, ConfigValue>> {
    btree_map(arb_config_key(), arb_config_value(), 0..4)
}

fn arb_field_drift() -> impl Strategy<Value = FieldDrift> {
    (
        arb_config_key(),
        arb_config_value(),
        option::of(arb_config_value()),
    )
        .prop_map(|(field, desired, actual)| FieldDrift {
            field,
            desired,
            actual,
        })
}

fn arb_connectivity_transition() -> impl Strategy<Value = ConnectivityTransition> {
    (
        arb_connectivity_state(),
        arb_connectivity_state(),
        arb_reason(),
        option::of(any::<u32>()),
        option::of(any::<u64>()),
        option::of(arb_span()),
    )
        .prop_map(|(from, to, reason, latency_ms, backlog, sync_interval)| {
            ConnectivityTransition {
                from,
                to,
                reason,
                latency_ms,
                backlog,
                sync_interval,
            }
        })
}

fn arb_lifecycle_phase() -> impl Strategy<Value = LifecyclePhase> {
    prop_oneof![
        Just(LifecyclePhase::Provisioning),
        Just(LifecyclePhase::Active),
        Just(LifecyclePhase::Maintenance),
        Just(LifecyclePhase::Decommissioning),
        Just(LifecyclePhase::Decommissioned),
    ]
}

fn arb_operational_state() -> impl Strategy<Value = OperationalState> {
    prop_oneof![
        Just(OperationalState::Unknown),
        Just(OperationalState::InService),
        Just(OperationalState::Degraded),
        Just(OperationalState::OutOfService),
    ]
}

fn arb_attestation_state() -> impl Strategy<Value = AttestationState> {
    prop_oneof![
        Just(AttestationState::Unknown),
        Just(AttestationState::Verified),
        Just(AttestationState::Failed),
    ]
}

fn arb_link_type() -> impl Strategy<Value = LinkType> {
    prop_oneof![
        Just(LinkType::Signaling),
        Just(LinkType::Media),
        Just(LinkType::Control),
        Just(LinkType::Bypass),
    ]
}

fn arb_peer_link() -> impl Strategy<Value = PeerLink> {
    (arb_node_id(), arb_link_type()).prop_map(|(peer, link_type)| PeerLink { peer, link_type })
}

fn arb_certificate_ref() -> impl Strategy<Value = CertificateRef> {
    (arb_text(), arb_text(), arb_timestamp(), arb_text()).prop_map(
        |(issuer, subject, valid_until, signature)| CertificateRef {
            issuer,
            subject,
            valid_until,
            signature,
        },
    )
}

fn arb_sbom_entry() -> impl Strategy<Value = SbomEntry> {
    (
        arb_component(),
        arb_version(),
        arb_text(),
        arb_text(),
        vec(arb_text(), 0..3),
    )
        .prop_map(
            |(component, version, sbom_hash, provenance, dependencies)| SbomEntry {
                component,
                version,
                sbom_hash,
                provenance,
                dependencies,
            },
        )
}

fn arb_hardware() -> impl Strategy<Value = Hardware> {
    (arb_text(), arb_text(), arb_text(), arb_text(), arb_text()).prop_map(
        |(serial, manufacturing_origin, batch_id, firmware_version, firmware_signature)| Hardware {
            serial,
            manufacturing_origin,
            batch_id,
            firmware_version,
            firmware_signature,
        },
    )
}

fn arb_supply_chain() -> impl Strategy<Value = SupplyChain> {
    let map = || btree_map(arb_text(), arb_text(), 0..3);
    (map(), map(), map(), vec(arb_text(), 0..3)).prop_map(
        |(hardware_metadata, software_provenance, manufacturing_batch, trust_chain)| SupplyChain {
            hardware_metadata,
            software_provenance,
            manufacturing_batch,
            trust_chain,
        },
    )
}
