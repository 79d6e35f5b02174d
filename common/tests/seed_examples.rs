//! The seed document's examples, rebuilt from events: the example twin of
//! `sx-rempart-2026-prod-1-node-42` (with the trust chain and SBOM lineage
//! of the seed's `TrustIndex` for the same node), the connectivity ledger of
//! `sx-rempart-edge-zone-c-node-15` and the example `Event`.

use serde_json::json;
use std::collections::BTreeMap;
use sx_common::chain::ChainHead;
use sx_common::event::{
    AttestationPerformed, ConfigReported, ConnectivityTransition, DesiredStateLearned,
    IdentityReported, Note, PayloadError, PolicyApplied, ReplayCompleted, ReplayStarted,
    SoftwareReported, SyncCompleted, SyncPath, TrustChainValidated,
};
use sx_common::fold::{apply, twin_from_events};
use sx_common::ledger::ConnectivityLedger;
use sx_common::model::{
    AttestationState, CertificateRef, ConfigValue, ConnectivityState, FieldDrift, Hardware,
    LifecyclePhase, SbomEntry, SupplyChain,
};
use sx_common::testing::seal_stream;
use sx_common::{DigitalTwin, Event, EventPayload, SealedEvent, Span, Timestamp};

const NODE_42: &str = "sx-rempart-2026-prod-1-node-42";
const NODE_15: &str = "sx-rempart-edge-zone-c-node-15";

fn at(text: &str) -> Timestamp {
    Timestamp::parse(text).expect("valid RFC 3339")
}

/// 2026-02-27 at `hh:mm`.
fn day(hh_mm: &str) -> Timestamp {
    at(&format!("2026-02-27T{hh_mm}:00Z"))
}

fn transition(from: ConnectivityState, to: ConnectivityState) -> ConnectivityTransition {
    ConnectivityTransition {
        from,
        to,
        reason: None,
        latency_ms: None,
        backlog: None,
        sync_interval: None,
    }
}

fn config(entries: &[(&str, ConfigValue)]) -> BTreeMap<String, ConfigValue> {
    entries
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn plain(events: &[SealedEvent]) -> Vec<Event> {
    events.iter().map(|s| s.event.clone()).collect()
}

/// The certificate chain of the seed's `TrustIndex` for node 42.
fn node_42_certificate() -> CertificateRef {
    CertificateRef {
        issuer: "souverix-autorite-root-ca".into(),
        subject: NODE_42.into(),
        valid_until: at("2026-08-27T00:00:00Z"),
        signature: "sha256:...".into(),
    }
}

/// The SBOM lineage of the seed's `TrustIndex` for node 42.
fn node_42_sbom() -> SbomEntry {
    SbomEntry {
        component: "souverix-rempart".into(),
        version: "1.4.6".into(),
        sbom_hash: "sha256:def...".into(),
        provenance: "signed-by-build-system".into(),
        dependencies: vec!["souverix-sip-core-3.2.0".into()],
    }
}

/// The seed leaves `supply_chain` as `{...}`: filled from its hardware and
/// software sections.
fn node_42_supply_chain() -> SupplyChain {
    let map = |entries: &[(&str, &str)]| {
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>()
    };
    SupplyChain {
        hardware_metadata: map(&[("serial", "HW-2024-Q3-0042"), ("firmware_version", "2.1.3")]),
        software_provenance: map(&[("souverix-rempart-1.4.6", "signed-by-build-system")]),
        manufacturing_batch: map(&[("batch_id", "BATCH-2024-Q3-001"), ("origin", "Factory-A")]),
        trust_chain: vec!["souverix-autorite-root-ca".into()],
    }
}

/// The stream that leaves node 42 in the seed's example state at 03:45.
fn node_42_stream() -> Vec<SealedEvent> {
    use ConnectivityState::*;
    use EventPayload as P;
    let items = vec![
        (
            day("03:00"),
            P::IdentityReported(IdentityReported {
                component_type: "souverix-rempart".into(),
                region: "region-a".into(),
                zone: "edge-zone-a1".into(),
                trust_chain: vec![],
            }),
        ),
        (
            day("03:00"),
            P::HardwareReported(Hardware {
                serial: "HW-2024-Q3-0042".into(),
                manufacturing_origin: "Factory-A".into(),
                batch_id: "BATCH-2024-Q3-001".into(),
                firmware_version: "2.1.3".into(),
                firmware_signature: "sha256:abc...".into(),
            }),
        ),
        (day("03:00"), P::ProvisioningCompleted(Note::default())),
        (
            day("03:00"),
            P::TrustChainValidated(TrustChainValidated {
                chain: vec![node_42_certificate()],
            }),
        ),
        (day("03:00"), P::SupplyChainReported(node_42_supply_chain())),
        (
            day("03:05"),
            P::SoftwareReported(SoftwareReported {
                component: "souverix-rempart".into(),
                version: "1.4.6".into(),
                sbom_hash: "sha256:def...".into(),
                image_provenance: "signed-by-build-system".into(),
            }),
        ),
        (day("03:05"), P::SbomUpdated(node_42_sbom())),
        (
            day("03:10"),
            P::DesiredStateLearned(DesiredStateLearned {
                software_version: Some("1.4.7".into()),
                config: config(&[
                    ("stir.enforcement_mode", "hard".into()),
                    ("rate_limit.max_cps", 2000.into()),
                ]),
                policy_version: Some("policy-v2.1".into()),
            }),
        ),
        (
            day("03:30"),
            P::ConfigReported(ConfigReported {
                values: config(&[
                    ("stir.enforcement_mode", "soft".into()),
                    ("rate_limit.max_cps", 1500.into()),
                ]),
            }),
        ),
        (
            day("03:30"),
            P::PolicyApplied(PolicyApplied {
                policy_version: "policy-v2.0".into(),
                compliance_score: 0.95,
            }),
        ),
        (
            day("03:40"),
            P::ConnectivityTransition(ConnectivityTransition {
                latency_ms: Some(5000),
                ..transition(Disconnected, Delayed)
            }),
        ),
        (
            day("03:45"),
            P::ConnectivityTransition(ConnectivityTransition {
                latency_ms: Some(45),
                reason: Some("connectivity_restored".into()),
                ..transition(Delayed, Live)
            }),
        ),
        // The aggregator acknowledged everything before this event.
        (
            day("03:45"),
            P::SyncCompleted(SyncCompleted {
                acked_seq: 12,
                via: SyncPath::Quic,
            }),
        ),
        (
            day("03:45"),
            P::AttestationPerformed(AttestationPerformed {
                result: AttestationState::Verified,
                detail: None,
            }),
        ),
    ];
    seal_stream(NODE_42, ChainHead::default(), items)
}

#[test]
fn the_seed_twin_is_the_fold_of_its_events() {
    let events = plain(&node_42_stream());
    let twin: DigitalTwin = twin_from_events(&events);

    let id = &twin.identity;
    assert_eq!(id.immutable_id, NODE_42);
    assert_eq!(id.component_type, "souverix-rempart");
    assert_eq!(id.region, "region-a");
    assert_eq!(id.zone, "edge-zone-a1");
    assert_eq!(id.trust_chain, vec!["souverix-autorite-root-ca"]);

    let c = &twin.connectivity;
    assert_eq!(c.state, ConnectivityState::Live);
    assert_eq!(c.last_sync, Some(at("2026-02-27T03:45:00Z")));
    assert_eq!(c.sync_debt, Span::ZERO);
    assert_eq!(c.message_backlog, 0);
    assert_eq!(c.latency_ms, Some(45));

    assert_eq!(twin.lifecycle.phase, LifecyclePhase::Active);

    let hw = &twin.hardware;
    assert_eq!(hw.serial, "HW-2024-Q3-0042");
    assert_eq!(hw.manufacturing_origin, "Factory-A");
    assert_eq!(hw.batch_id, "BATCH-2024-Q3-001");
    assert_eq!(hw.firmware_version, "2.1.3");
    assert_eq!(hw.firmware_signature, "sha256:abc...");

    let sw = &twin.software;
    assert_eq!(sw.desired_version, "souverix-rempart-1.4.7");
    assert_eq!(sw.actual_version, "souverix-rempart-1.4.6");
    assert_eq!(sw.drift_score, 1);
    assert_eq!(sw.sbom_hash, "sha256:def...");
    assert_eq!(sw.image_provenance, "signed-by-build-system");

    assert_eq!(twin.state.last_applied, Some(at("2026-02-27T03:30:00Z")));
    // The seed's drift analysis of the same node: two config objects out.
    assert_eq!(
        twin.state.drift,
        vec![
            FieldDrift {
                field: "rate_limit.max_cps".into(),
                desired: ConfigValue::Int(2000),
                actual: Some(ConfigValue::Int(1500)),
            },
            FieldDrift {
                field: "stir.enforcement_mode".into(),
                desired: "hard".into(),
                actual: Some("soft".into()),
            },
        ]
    );

    let p = &twin.policy;
    assert_eq!(p.desired_policy, "policy-v2.1");
    assert_eq!(p.actual_policy, "policy-v2.0");
    assert_eq!(p.compliance_score, 0.95);
    assert_eq!(p.stale_by, Span::from_mins(15));

    assert_eq!(twin.trust.certificate_chain, vec![node_42_certificate()]);
    assert_eq!(twin.trust.attestation_state, AttestationState::Verified);
    assert_eq!(
        twin.trust.last_attestation,
        Some(at("2026-02-27T03:45:00Z"))
    );
    assert_eq!(twin.trust.sbom_lineage, vec![node_42_sbom()]);

    assert_eq!(twin.supply_chain, node_42_supply_chain());
    assert_eq!(twin.last_seq, 14);
}

#[test]
fn the_seed_twin_json_uses_the_seed_names() {
    let events = plain(&node_42_stream());
    let json = serde_json::to_value(twin_from_events(&events)).expect("twin to JSON");

    assert_eq!(json["identity"]["immutable_id"], NODE_42);
    assert_eq!(json["identity"]["component_type"], "souverix-rempart");
    assert_eq!(json["identity"]["region"], "region-a");
    assert_eq!(json["identity"]["zone"], "edge-zone-a1");

    assert_eq!(json["connectivity"]["state"], "live");
    assert_eq!(json["connectivity"]["last_sync"], "2026-02-27T03:45:00Z");
    assert_eq!(json["connectivity"]["sync_debt"], "0m");
    assert_eq!(json["connectivity"]["message_backlog"], 0);
    assert_eq!(json["connectivity"]["latency_ms"], 45);

    assert_eq!(json["lifecycle"]["phase"], "active");

    assert_eq!(
        json["hardware"],
        json!({
            "serial": "HW-2024-Q3-0042",
            "manufacturing_origin": "Factory-A",
            "batch_id": "BATCH-2024-Q3-001",
            "firmware_version": "2.1.3",
            "firmware_signature": "sha256:abc...",
        })
    );
    assert_eq!(
        json["software"],
        json!({
            "desired_version": "souverix-rempart-1.4.7",
            "actual_version": "souverix-rempart-1.4.6",
            "drift_score": 1,
            "sbom_hash": "sha256:def...",
            "image_provenance": "signed-by-build-system",
        })
    );

    assert_eq!(json["state"]["last_applied"], "2026-02-27T03:30:00Z");
    assert_eq!(
        json["state"]["drift"],
        json!([
            {"field": "rate_limit.max_cps", "desired": 2000, "actual": 1500},
            {"field": "stir.enforcement_mode", "desired": "hard", "actual": "soft"},
        ])
    );

    assert_eq!(
        json["policy"],
        json!({
            "desired_policy": "policy-v2.1",
            "actual_policy": "policy-v2.0",
            "compliance_score": 0.95,
            "stale_by": "15m",
        })
    );

    assert_eq!(
        json["identity"]["trust_chain"],
        json!(["souverix-autorite-root-ca"])
    );
    // The seed's TrustIndex of the same node, field for field.
    assert_eq!(
        json["trust"]["certificate_chain"],
        json!([{
            "issuer": "souverix-autorite-root-ca",
            "subject": "sx-rempart-2026-prod-1-node-42",
            "valid_until": "2026-08-27T00:00:00Z",
            "signature": "sha256:...",
        }])
    );
    assert_eq!(
        json["trust"]["sbom_lineage"],
        json!([{
            "component": "souverix-rempart",
            "version": "1.4.6",
            "sbom_hash": "sha256:def...",
            "provenance": "signed-by-build-system",
            "dependencies": ["souverix-sip-core-3.2.0"],
        }])
    );
    assert_eq!(json["trust"]["attestation_state"], "verified");
    assert_eq!(json["trust"]["last_attestation"], "2026-02-27T03:45:00Z");
    assert_eq!(
        json["supply_chain"]["manufacturing_batch"],
        json!({"batch_id": "BATCH-2024-Q3-001", "origin": "Factory-A"})
    );
    assert_eq!(
        json["supply_chain"]["trust_chain"],
        json!(["souverix-autorite-root-ca"])
    );

    // Every heading of the seed's DigitalTwin is there.
    for heading in [
        "identity",
        "connectivity",
        "lifecycle",
        "hardware",
        "software",
        "state",
        "policy",
        "trust",
        "supply_chain",
    ] {
        assert!(json.get(heading).is_some(), "missing heading {heading}");
    }
    for field in ["desired", "actual", "drift", "last_applied"] {
        assert!(json["state"].get(field).is_some(), "missing state.{field}");
    }
    for field in ["certificate_chain", "sbom_lineage"] {
        assert!(json["trust"].get(field).is_some(), "missing trust.{field}");
    }

    // And it reads back as the same twin.
    let back: DigitalTwin = serde_json::from_value(json).expect("twin from JSON");
    assert_eq!(back, twin_from_events(&events));
}

/// Node 15's night, as events: the seed's seven transitions with other
/// connectivity events in between (which the ledger must leave out).
fn node_15_stream() -> Vec<SealedEvent> {
    use ConnectivityState::*;
    use EventPayload as P;
    let t = |from, to| P::ConnectivityTransition(transition(from, to));
    let with = |p: EventPayload, f: &dyn Fn(&mut ConnectivityTransition)| match p {
        P::ConnectivityTransition(mut c) => {
            f(&mut c);
            P::ConnectivityTransition(c)
        }
        other => other,
    };
    let items = vec![
        (
            day("00:00"),
            with(t(Disconnected, Live), &|c| c.latency_ms = Some(45)),
        ),
        (
            day("00:15"),
            with(t(Live, Delayed), &|c| c.latency_ms = Some(5000)),
        ),
        (
            day("00:30"),
            with(t(Delayed, EdgeCached), &|c| {
                c.sync_interval = Some(Span::from_mins(15))
            }),
        ),
        (day("01:00"), P::ConnectionLost(Note::default())),
        (
            day("01:00"),
            with(t(EdgeCached, Autonomous), &|c| {
                c.reason = Some("connection_lost".into())
            }),
        ),
        (
            day("04:00"),
            with(t(Autonomous, Returning), &|c| {
                c.reason = Some("connection_detected".into())
            }),
        ),
        (
            day("04:05"),
            with(t(Returning, Replaying), &|c| c.backlog = Some(1247)),
        ),
        (
            day("04:05"),
            P::ReplayStarted(ReplayStarted { backlog: 1247 }),
        ),
        (
            day("04:20"),
            P::ReplayCompleted(ReplayCompleted { replayed: 1247 }),
        ),
        (
            day("04:20"),
            with(t(Replaying, Live), &|c| c.latency_ms = Some(50)),
        ),
    ];
    seal_stream(NODE_15, ChainHead::default(), items)
}

#[test]
fn the_seed_ledger_is_reproduced_from_events() {
    let events = plain(&node_15_stream());
    let ledger = ConnectivityLedger::from_events(NODE_15, &events);

    use ConnectivityState::*;
    assert_eq!(
        ledger.states(),
        vec![
            Live, Delayed, EdgeCached, Autonomous, Returning, Replaying, Live
        ]
    );
    // Each row points back at the event that recorded it.
    let seqs: Vec<u64> = ledger.history.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 5, 6, 7, 10]);

    // JSON: exactly the seed's ConnectivityLedger, plus each row's seq.
    let mut json = serde_json::to_value(&ledger).expect("ledger to JSON");
    let rows = json["history"].as_array_mut().expect("history is a list");
    for (row, seq) in rows.iter_mut().zip(&seqs) {
        let row = row.as_object_mut().expect("row is an object");
        assert_eq!(row.remove("seq"), Some(json!(seq)));
    }
    let seed = json!({
        "node": "sx-rempart-edge-zone-c-node-15",
        "history": [
            {"timestamp": "2026-02-27T00:00:00Z", "state": "live", "latency_ms": 45},
            {"timestamp": "2026-02-27T00:15:00Z", "state": "delayed", "latency_ms": 5000},
            {"timestamp": "2026-02-27T00:30:00Z", "state": "edge-cached", "sync_interval": "15m"},
            {"timestamp": "2026-02-27T01:00:00Z", "state": "autonomous", "reason": "connection_lost"},
            {"timestamp": "2026-02-27T04:00:00Z", "state": "returning", "reason": "connection_detected"},
            {"timestamp": "2026-02-27T04:05:00Z", "state": "replaying", "backlog": 1247},
            {"timestamp": "2026-02-27T04:20:00Z", "state": "live", "latency_ms": 50},
        ],
    });
    assert_eq!(json, seed);
}

#[test]
fn the_seed_ledger_round_trips_through_json_and_postcard() {
    let events = plain(&node_15_stream());
    let ledger = ConnectivityLedger::from_events(NODE_15, &events);

    let text = serde_json::to_string(&ledger).expect("to JSON");
    let back: ConnectivityLedger = serde_json::from_str(&text).expect("from JSON");
    assert_eq!(back, ledger);

    // Binary formats keep every field, absent details included.
    let bytes = postcard::to_allocvec(&ledger).expect("to postcard");
    let back: ConnectivityLedger = postcard::from_bytes(&bytes).expect("from postcard");
    assert_eq!(back, ledger);
}

#[test]
fn the_seed_ledger_answers_state_at() {
    let events = plain(&node_15_stream());
    let ledger = ConnectivityLedger::from_events(NODE_15, &events);
    use ConnectivityState::*;
    let cases = [
        ("2026-02-26T23:59:59Z", None),
        ("2026-02-27T00:00:00Z", Some(Live)),
        ("2026-02-27T00:14:59Z", Some(Live)),
        ("2026-02-27T00:15:00Z", Some(Delayed)),
        ("2026-02-27T00:45:00Z", Some(EdgeCached)),
        ("2026-02-27T02:00:00Z", Some(Autonomous)),
        ("2026-02-27T04:00:00Z", Some(Returning)),
        ("2026-02-27T04:10:00Z", Some(Replaying)),
        ("2026-02-27T04:20:00Z", Some(Live)),
        ("2026-02-28T12:00:00Z", Some(Live)),
    ];
    for (when, expected) in cases {
        assert_eq!(ledger.state_at(at(when)), expected, "state at {when}");
    }
}

#[test]
fn the_seed_ledger_night_leaves_the_twin_live_and_drained() {
    let events = plain(&node_15_stream());
    let mut twin = DigitalTwin::default();
    for e in &events[..7] {
        apply(&mut twin, e);
    }
    // Replaying, with the backlog the node announced.
    assert_eq!(twin.connectivity.state, ConnectivityState::Replaying);
    assert_eq!(twin.connectivity.message_backlog, 1247);
    for e in &events[7..] {
        apply(&mut twin, e);
    }
    assert_eq!(twin.connectivity.state, ConnectivityState::Live);
    assert_eq!(twin.connectivity.latency_ms, Some(50));
    assert_eq!(twin.connectivity.message_backlog, 0);
    // Never synced: the debt runs from the first event.
    assert_eq!(twin.connectivity.sync_debt, Span(4 * 3_600 + 20 * 60));
}

#[test]
fn the_seed_event_has_our_json_form() {
    let event = Event {
        node_id: NODE_42.into(),
        seq: 1,
        timestamp: at("2026-02-27T03:45:00Z"),
        prev_hash: sx_common::Digest::GENESIS,
        payload: EventPayload::ConnectivityTransition(ConnectivityTransition {
            reason: Some("connectivity_restored".into()),
            ..transition(ConnectivityState::Delayed, ConnectivityState::Live)
        }),
    };
    let json = event.to_json();

    // The seed's `evt-2026-02-27-034500-001`: the same date and clock, then
    // the event's seq within its node's stream.
    let id = json["id"].as_str().expect("id is text");
    let seq = id
        .strip_prefix("evt-2026-02-27-034500-")
        .expect("seed-style id");
    assert_eq!(seq.parse::<u64>().expect("numeric suffix"), 1);
    assert_eq!(id, event.id());

    assert_eq!(json["timestamp"], "2026-02-27T03:45:00Z");
    assert_eq!(json["node_id"], NODE_42);
    assert_eq!(json["event_type"], "connectivity.state_transition");
    assert_eq!(json["seq"], 1);
    assert_eq!(json["payload"]["from"], "delayed");
    assert_eq!(json["payload"]["to"], "live");
    assert_eq!(json["payload"]["reason"], "connectivity_restored");
    assert_eq!(
        json["prev_hash"],
        format!("sha256:{}", "0".repeat(64)).as_str()
    );

    // The seed's payload, exactly as written there, is accepted as ours.
    let seed_payload = json!({"from": "delayed", "to": "live", "reason": "connectivity_restored"});
    assert_eq!(
        EventPayload::from_type_and_json("connectivity.state_transition", seed_payload.clone())
            .expect("seed payload fits"),
        event.payload
    );
    // The seed's bare `state_transition` is ambiguous (connectivity,
    // lifecycle or operational): we name the family.
    assert!(matches!(
        EventPayload::from_type_and_json("state_transition", seed_payload),
        Err(PayloadError::UnknownType(_))
    ));
}

#[test]
fn a_config_drift_event_is_what_the_twin_then_shows() {
    use EventPayload as P;
    let mut events = plain(&node_42_stream());
    let head = ChainHead {
        seq: events.len() as u64,
        hash: node_42_stream().last().expect("non-empty").hash,
    };
    // The agent finds max_cps fixed, and the enforcement mode missing.
    let more = seal_stream(
        NODE_42,
        head,
        [(
            day("03:50"),
            P::ConfigDrift(sx_common::event::ConfigDrift {
                fields: vec![FieldDrift {
                    field: "stir.enforcement_mode".into(),
                    desired: "hard".into(),
                    actual: None,
                }],
            }),
        )],
    );
    events.extend(plain(&more));
    let twin = twin_from_events(&events);
    assert_eq!(
        twin.state.drift,
        vec![FieldDrift {
            field: "stir.enforcement_mode".into(),
            desired: "hard".into(),
            actual: None,
        }]
    );
    assert_eq!(twin.policy.stale_by, Span::from_mins(20));

    // Then everything back in line.
    let head = ChainHead {
        seq: more[0].event.seq,
        hash: more[0].hash,
    };
    let last = seal_stream(
        NODE_42,
        head,
        [(
            day("03:55"),
            P::ConfigDrift(sx_common::event::ConfigDrift { fields: vec![] }),
        )],
    );
    events.extend(plain(&last));
    let twin = twin_from_events(&events);
    assert!(twin.state.drift.is_empty(), "{:?}", twin.state.drift);
    assert_eq!(twin.state.actual, twin.state.desired);
    // Policy is still out of line (v2.0 applied, v2.1 desired).
    assert_eq!(twin.policy.stale_by, Span::from_mins(25));
}
