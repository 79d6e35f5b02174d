//! The seed's examples come out of the projections: the drift analysis of
//! node 42, the connectivity ledger of node 15, group aggregations, the
//! fleet graph (neighbours, impact of an outage) and the trust index.
//! Events are real chained events; the drift example also runs through
//! the real store, writer and projection driver.

use anyhow::{Context, Result};
use ed25519_dalek::SigningKey;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use sx_aggregator::ingest::{GroupCommit, Ingest};
use sx_aggregator::projection::ProjectionEngine;
use sx_aggregator::projection::drift::Severity;
use sx_aggregator::projection::graph::{self, GraphFilter, LinkDirection, Neighbour, Outage};
use sx_aggregator::projection::service::{self, Projections};
use sx_aggregator::projection::trust::{self, AlertKind, TrustPolicy, Validity};
use sx_aggregator::projection::views::{self, GroupBy, Observed};
use sx_aggregator::server::Refusal;
use sx_aggregator::store::{EventStore, RedbStore, Submission};
use sx_common::chain::{ChainHead, SealedEvent};
use sx_common::desired::{
    ConfigRule, DesiredChange, DesiredChangeKind, DesiredSpec, PolicyRule, ReleaseEntry, Scope,
    VersionRule,
};
use sx_common::event::*;
use sx_common::model::{
    AttestationState, CertificateRef, ConfigValue, ConnectivityState, LifecyclePhase, LinkType,
    PeerLink, SbomEntry,
};
use sx_common::testing::{checkpoint, seal_stream};
use sx_common::time::{Span, Timestamp};

const NODE_42: &str = "sx-rempart-2026-prod-1-node-42";
const NODE_15: &str = "sx-rempart-edge-zone-c-node-15";

/// `2026-02-27T{hh:mm}:00Z`.
fn at(hh_mm: &str) -> Timestamp {
    Timestamp::parse(&format!("2026-02-27T{hh_mm}:00Z")).expect("time")
}

/// One node's stream, built event by event.
struct Stream {
    node: String,
    head: ChainHead,
    events: Vec<SealedEvent>,
}

impl Stream {
    fn new(node: &str) -> Self {
        Stream {
            node: node.to_owned(),
            head: ChainHead::default(),
            events: Vec::new(),
        }
    }

    fn push(&mut self, at: Timestamp, payload: EventPayload) -> &mut Self {
        let sealed = seal_stream(&self.node, self.head, [(at, payload)]);
        for e in sealed {
            self.head = ChainHead {
                seq: e.event.seq,
                hash: e.hash,
            };
            self.events.push(e);
        }
        self
    }

    fn events(&self) -> impl Iterator<Item = &Event> {
        self.events.iter().map(|s| &s.event)
    }
}

fn identity(component: &str, region: &str, zone: &str) -> EventPayload {
    EventPayload::IdentityReported(IdentityReported {
        component_type: component.into(),
        region: region.into(),
        zone: zone.into(),
        trust_chain: vec![],
    })
}

fn software(component: &str, version: &str) -> EventPayload {
    EventPayload::SoftwareReported(SoftwareReported {
        component: component.into(),
        version: version.into(),
        sbom_hash: "sha256:def".into(),
        image_provenance: "signed-by-build-system".into(),
    })
}

fn config(values: &[(&str, ConfigValue)]) -> EventPayload {
    EventPayload::ConfigReported(ConfigReported {
        values: values
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
    })
}

fn policy(version: &str, compliance: f64) -> EventPayload {
    EventPayload::PolicyApplied(PolicyApplied {
        policy_version: version.into(),
        compliance_score: compliance,
    })
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

fn topology(links: &[(&str, LinkType)], clusters: &[&str]) -> EventPayload {
    EventPayload::TopologyReported(TopologyReported {
        links: links
            .iter()
            .map(|(p, t)| PeerLink {
                peer: (*p).into(),
                link_type: *t,
            })
            .collect(),
        clusters: clusters.iter().map(|c| (*c).into()).collect(),
    })
}

/// The desired state of the seed's drift example: rempart 1.4.7 (a
/// security release), STIR hard and 2000 cps, policy v2.1.
fn seed_spec() -> DesiredSpec {
    DesiredSpec {
        software: vec![VersionRule {
            component: "souverix-rempart".into(),
            scope: Scope::Fleet,
            version: "1.4.7".into(),
        }],
        config: vec![ConfigRule {
            scope: Scope::Fleet,
            component: None,
            values: [
                (
                    "stir.enforcement_mode".to_owned(),
                    ConfigValue::from("hard"),
                ),
                ("rate_limit.max_cps".to_owned(), ConfigValue::Int(2000)),
            ]
            .into(),
        }],
        policy: vec![PolicyRule {
            scope: Scope::Fleet,
            version: "policy-v2.1".into(),
        }],
        releases: vec![ReleaseEntry {
            component: "souverix-rempart".into(),
            version: "1.4.7".into(),
            security_fix: true,
            notes: Some("STIR verification fix".into()),
        }],
    }
}

/// Node 42 as the seed shows it: 1.4.6, soft/1500 applied at 03:30,
/// policy v2.0 at 0.95, back to live at 03:45; a validated chain, a
/// verified attestation and its SBOM.
fn node_42() -> Stream {
    let mut s = Stream::new(NODE_42);
    s.push(
        at("03:00"),
        identity("souverix-rempart", "region-a", "edge-zone-a1"),
    )
    .push(at("03:00"), software("souverix-rempart", "1.4.6"))
    .push(
        at("03:30"),
        config(&[
            ("stir.enforcement_mode", ConfigValue::from("soft")),
            ("rate_limit.max_cps", ConfigValue::Int(1500)),
        ]),
    )
    .push(at("03:30"), policy("policy-v2.0", 0.95))
    .push(
        at("03:40"),
        EventPayload::TrustChainValidated(TrustChainValidated {
            chain: vec![CertificateRef {
                issuer: "souverix-autorite-root-ca".into(),
                subject: NODE_42.into(),
                valid_until: Timestamp::parse("2026-08-27T00:00:00Z").expect("time"),
                signature: "sha256:0042".into(),
            }],
        }),
    )
    .push(
        at("03:40"),
        EventPayload::SbomUpdated(SbomEntry {
            component: "souverix-rempart".into(),
            version: "1.4.6".into(),
            sbom_hash: "sha256:def".into(),
            provenance: "signed-by-build-system".into(),
            dependencies: vec!["openssl-3.0.13".into()],
        }),
    )
    .push(
        at("03:45"),
        EventPayload::AttestationPerformed(AttestationPerformed {
            result: AttestationState::Verified,
            detail: None,
        }),
    )
    .push(
        at("03:45"),
        EventPayload::ConnectivityTransition(ConnectivityTransition {
            reason: Some("connectivity_restored".into()),
            latency_ms: Some(45),
            ..transition(ConnectivityState::Delayed, ConnectivityState::Live)
        }),
    );
    s
}

fn replace(seq: u64, spec: DesiredSpec) -> DesiredChange {
    DesiredChange {
        seq,
        at: at("02:00"),
        by: "test".into(),
        change: DesiredChangeKind::Replace { spec },
    }
}

/// The seed's `DriftAnalysis`, field by field, as JSON.
fn expected_drift_json() -> serde_json::Value {
    json!({
        "node": NODE_42,
        "timestamp": "2026-02-27T03:45:00Z",
        "version_drift": {
            "component": "souverix-rempart",
            "desired": "1.4.7",
            "actual": "1.4.6",
            "severity": "medium",
            "impact": "missing_security_patch"
        },
        "config_drift": {
            "objects": 2,
            "last_sync": "2026-02-27T03:30:00Z",
            "stale_by": "15m",
            // Sorted by field name.
            "details": [
                {"field": "rate_limit.max_cps", "desired": 2000, "actual": 1500},
                {"field": "stir.enforcement_mode", "desired": "hard", "actual": "soft"}
            ],
            "severity": "medium"
        },
        "policy_drift": {
            "policy_version": "policy-v2.1",
            "actual_version": "policy-v2.0",
            "compliance_score": 0.95,
            "violations": 1,
            "severity": "medium"
        },
        "severity": "medium",
        "drift_score": 4
    })
}

#[test]
fn the_seed_drift_analysis_comes_out_of_the_engine() -> Result<()> {
    let mut engine = ProjectionEngine::new();
    engine.apply_desired(&replace(1, seed_spec()));
    let stream = node_42();
    let change = engine.apply(stream.events()).context("applied")?;
    assert_eq!(change.seq, 8);
    assert_eq!(change.severity, Severity::Medium);
    assert_eq!(change.connectivity, ConnectivityState::Live);

    let d = &engine.drift(NODE_42).context("node 42")?;
    assert_eq!(d.node, NODE_42);
    assert_eq!(d.timestamp, Some(at("03:45")));
    let v = d.version_drift.as_ref().context("version drift")?;
    assert_eq!(
        (v.component.as_str(), v.desired.as_str(), v.actual.as_str()),
        ("souverix-rempart", "1.4.7", "1.4.6")
    );
    assert_eq!(v.severity, Severity::Medium);
    assert_eq!(v.impact, "missing_security_patch");
    let c = d.config_drift.as_ref().context("config drift")?;
    assert_eq!(c.objects, 2);
    assert_eq!(c.last_sync, Some(at("03:30")));
    assert_eq!(c.stale_by, Span::from_mins(15));
    let fields: BTreeMap<&str, (&ConfigValue, Option<&ConfigValue>)> = c
        .details
        .iter()
        .map(|f| (f.field.as_str(), (&f.desired, f.actual.as_ref())))
        .collect();
    assert_eq!(
        fields["stir.enforcement_mode"],
        (&ConfigValue::from("hard"), Some(&ConfigValue::from("soft")))
    );
    assert_eq!(
        fields["rate_limit.max_cps"],
        (&ConfigValue::Int(2000), Some(&ConfigValue::Int(1500)))
    );
    let p = d.policy_drift.as_ref().context("policy drift")?;
    assert_eq!(
        (p.policy_version.as_str(), p.actual_version.as_str()),
        ("policy-v2.1", "policy-v2.0")
    );
    assert_eq!(p.compliance_score, 0.95);
    assert_eq!(p.violations, 1);
    assert_eq!(serde_json::to_value(d)?, expected_drift_json());

    // Without the catalogue entry the same lag is only a patch behind.
    let mut plain = seed_spec();
    plain.releases.clear();
    engine.apply_desired(&replace(2, plain));
    let v = engine.drift(NODE_42).and_then(|d| d.version_drift);
    assert_eq!(
        v.map(|v| (v.severity, v.impact)),
        Some((Severity::Low, "patch_behind".into()))
    );
    Ok(())
}

fn submission(key: &SigningKey, events: Vec<SealedEvent>) -> Result<Submission> {
    let checkpoint = checkpoint(key, &events).context("non-empty batch")?;
    Ok(Submission {
        node_id: events[0].event.node_id.clone(),
        key: key.verifying_key(),
        cert_fingerprint: "sha256:0042".into(),
        events,
        checkpoint,
        via: SyncPath::Quic,
        received_at: at("03:46"),
        news: true,
    })
}

/// The same analysis through the real path: redb store, the group-commit
/// writer, the projection driver following commits; then a restart from
/// the snapshot and a rebuild agree with it.
#[tokio::test]
async fn the_seed_drift_analysis_comes_out_of_the_store_path() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn EventStore> = Arc::new(RedbStore::open(dir.path().join("events.redb"))?);
    let ingest = Ingest::start(store.clone(), GroupCommit::default());
    let snapshot = dir.path().join("projections.snapshot");
    let (projections, startup) = Projections::open(store.clone(), &snapshot)?;
    assert!(!startup.from_snapshot);
    let projections = Arc::new(projections);
    projections.change_desired("operator", DesiredChangeKind::Replace { spec: seed_spec() })?;
    let mut updates = projections.subscribe();
    let follower = projections.clone().follow(&ingest);

    let key = SigningKey::from_bytes(&[42; 32]);
    let stream = node_42();
    // Two batches, as two write transactions of the agent.
    let (first, second) = stream.events.split_at(4);
    for batch in [first.to_vec(), second.to_vec()] {
        let verdict = ingest.submit_and_wait(submission(&key, batch)?).await?;
        assert!(verdict.is_ok(), "{verdict:?}");
    }
    let change = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match updates.recv().await {
                Ok(c) if c.seq == 8 => return Ok(c),
                Ok(_) => continue,
                Err(e) => return Err(e),
            }
        }
    })
    .await??;
    assert_eq!(change.node, NODE_42);
    let drift = projections.read(|e| e.drift(NODE_42)).context("node 42")?;
    assert_eq!(serde_json::to_value(&drift)?, expected_drift_json());

    // Incremental equals rebuilt; a restart from the snapshot equals both.
    let rebuilt = service::rebuild(store.as_ref())?;
    assert!(projections.read(|e| e == &rebuilt));
    projections.save_snapshot()?;
    follower.abort();
    let (restarted, startup) = Projections::open(store.clone(), &snapshot)?;
    assert!(startup.from_snapshot);
    assert_eq!(startup.tail_events, 0);
    assert!(restarted.read(|e| e == &rebuilt));
    assert_eq!(
        restarted.read(|e| e.graph().trust_domain_members("souverix-autorite-root-ca")),
        Some(vec![NODE_42.to_owned()])
    );
    // As of 03:35 the node had not attested and was still disconnected.
    let then = restarted
        .twin_as_of(NODE_42, at("03:35"))?
        .context("twin")?;
    assert_eq!(then.last_seq, 4);
    assert_eq!(then.connectivity.state, ConnectivityState::Disconnected);
    Ok(())
}

#[test]
fn the_connectivity_ledger_of_node_15() -> Result<()> {
    use ConnectivityState::*;
    let mut s = Stream::new(NODE_15);
    let steps: Vec<(&str, ConnectivityTransition)> = vec![
        (
            "00:00",
            ConnectivityTransition {
                latency_ms: Some(45),
                ..transition(Disconnected, Live)
            },
        ),
        (
            "00:15",
            ConnectivityTransition {
                latency_ms: Some(5000),
                ..transition(Live, Delayed)
            },
        ),
        (
            "00:30",
            ConnectivityTransition {
                sync_interval: Some(Span::from_mins(15)),
                ..transition(Delayed, EdgeCached)
            },
        ),
        (
            "01:00",
            ConnectivityTransition {
                reason: Some("connection_lost".into()),
                ..transition(EdgeCached, Autonomous)
            },
        ),
        (
            "04:00",
            ConnectivityTransition {
                reason: Some("connection_detected".into()),
                ..transition(Autonomous, Returning)
            },
        ),
        (
            "04:05",
            ConnectivityTransition {
                backlog: Some(1247),
                ..transition(Returning, Replaying)
            },
        ),
        (
            "04:20",
            ConnectivityTransition {
                latency_ms: Some(50),
                ..transition(Replaying, Live)
            },
        ),
    ];
    let mut engine = ProjectionEngine::new();
    for (i, (t, step)) in steps.into_iter().enumerate() {
        s.push(at(t), EventPayload::ConnectivityTransition(step));
        engine.apply(s.events().skip(i));
        if i == 5 {
            let twin = &engine.node(NODE_15).context("node")?.twin;
            assert_eq!(twin.connectivity.state, Replaying);
            assert_eq!(twin.connectivity.message_backlog, 1247);
        }
    }
    let ledger = engine.recent_ledger(NODE_15).context("ledger")?;
    assert_eq!(
        ledger.states(),
        vec![
            Live, Delayed, EdgeCached, Autonomous, Returning, Replaying, Live
        ]
    );
    assert_eq!(ledger.state_at(at("02:00")), Some(Autonomous));
    assert_eq!(
        serde_json::to_value(&ledger)?,
        json!({
            "node": NODE_15,
            "history": [
                {"timestamp": "2026-02-27T00:00:00Z", "state": "live", "latency_ms": 45, "seq": 1},
                {"timestamp": "2026-02-27T00:15:00Z", "state": "delayed", "latency_ms": 5000, "seq": 2},
                {"timestamp": "2026-02-27T00:30:00Z", "state": "edge-cached", "sync_interval": "15m", "seq": 3},
                {"timestamp": "2026-02-27T01:00:00Z", "state": "autonomous", "reason": "connection_lost", "seq": 4},
                {"timestamp": "2026-02-27T04:00:00Z", "state": "returning", "reason": "connection_detected", "seq": 5},
                {"timestamp": "2026-02-27T04:05:00Z", "state": "replaying", "backlog": 1247, "seq": 6},
                {"timestamp": "2026-02-27T04:20:00Z", "state": "live", "latency_ms": 50, "seq": 7}
            ]
        })
    );
    let twin = &engine.node(NODE_15).context("node")?.twin;
    assert_eq!(twin.connectivity.state, Live);
    assert_eq!(twin.connectivity.latency_ms, Some(50));
    assert_eq!(twin.connectivity.message_backlog, 0);
    Ok(())
}

/// A small fleet: two zones of region-a, one node in region-b.
///
/// | node | zone | version | config | policy | other |
/// | --- | --- | --- | --- | --- | --- |
/// | a1-1 | edge-zone-a1 | 1.4.6 (security) | 2 fields off since 03:30 | v2.0, 0.95 | live |
/// | a1-2 | edge-zone-a1 | 1.4.7 | in line | v2.1, 1.0 | delayed, backlog 40, updating |
/// | a2-1 | edge-zone-a2 | 1.2.0 (minor) | in line | v2.0, 0.70 | autonomous, maintenance |
/// | b-1  | edge-zone-b1 | 0.9.0 (major, security) | in line | v2.1, 1.0 | replaying 500 |
fn small_fleet() -> Result<ProjectionEngine> {
    use ConnectivityState::*;
    let mut engine = ProjectionEngine::new();
    engine.apply_desired(&replace(1, seed_spec()));
    let in_line = [
        ("stir.enforcement_mode", ConfigValue::from("hard")),
        ("rate_limit.max_cps", ConfigValue::Int(2000)),
    ];
    let node = |id: &str, zone: &str, region: &str, version: &str| {
        let mut s = Stream::new(id);
        s.push(at("03:00"), identity("souverix-rempart", region, zone))
            .push(at("03:00"), software("souverix-rempart", version))
            .push(at("03:00"), topology(&[], &["iBCF-interconnect-cluster"]));
        s
    };
    let mut a1_1 = node("a1-1", "edge-zone-a1", "region-a", "1.4.6");
    a1_1.push(
        at("03:30"),
        config(&[
            ("stir.enforcement_mode", ConfigValue::from("soft")),
            ("rate_limit.max_cps", ConfigValue::Int(1500)),
        ]),
    )
    .push(at("03:30"), policy("policy-v2.0", 0.95))
    .push(
        at("03:45"),
        EventPayload::ConnectivityTransition(transition(Disconnected, Live)),
    );
    let mut a1_2 = node("a1-2", "edge-zone-a1", "region-a", "1.4.7");
    a1_2.push(at("03:00"), config(&in_line))
        .push(at("03:00"), policy("policy-v2.1", 1.0))
        .push(
            at("03:10"),
            EventPayload::ConnectivityTransition(ConnectivityTransition {
                backlog: Some(40),
                ..transition(Live, Delayed)
            }),
        )
        .push(
            at("03:20"),
            EventPayload::UpdateInitiated(Update {
                from_version: "1.4.7".into(),
                to_version: "1.5.0".into(),
            }),
        );
    let mut a2_1 = node("a2-1", "edge-zone-a2", "region-a", "1.2.0");
    a2_1.push(at("03:00"), config(&in_line))
        .push(at("03:00"), policy("policy-v2.0", 0.70))
        .push(
            at("03:05"),
            EventPayload::ConnectivityTransition(transition(Live, Autonomous)),
        )
        .push(
            at("03:10"),
            EventPayload::MaintenanceStarted(MaintenanceStarted {
                window_id: "mw-7".into(),
                reason: Some("firmware".into()),
                planned_end: Some(at("05:00")),
            }),
        );
    let mut b_1 = node("b-1", "edge-zone-b1", "region-b", "0.9.0");
    b_1.push(at("03:00"), config(&in_line))
        .push(at("03:00"), policy("policy-v2.1", 1.0))
        .push(
            at("03:50"),
            EventPayload::ConnectivityTransition(ConnectivityTransition {
                backlog: Some(500),
                ..transition(Returning, Replaying)
            }),
        )
        .push(
            at("03:55"),
            EventPayload::UpdateCompleted(UpdateCompleted {
                from_version: "0.8.0".into(),
                to_version: "0.9.0".into(),
                succeeded: true,
            }),
        );
    for s in [&a1_1, &a1_2, &a2_1, &b_1] {
        engine.apply(s.events()).context("applied")?;
    }
    Ok(engine)
}

#[test]
fn drift_aggregates_per_node_cluster_zone_and_fleet() -> Result<()> {
    let engine = small_fleet()?;
    let by = |g| -> BTreeMap<String, _> {
        views::drift_by(&engine, g)
            .into_iter()
            .map(|a| (a.group.clone(), a))
            .collect()
    };
    let severities = |a: &sx_aggregator::projection::drift::DriftAggregate| {
        Severity::ALL.map(|s| a.by_severity[&s])
    };

    // Per node: severity of each.
    let nodes = by(GroupBy::Node);
    assert_eq!(severities(&nodes["a1-1"]), [0, 0, 1, 0, 0]); // medium
    assert_eq!(severities(&nodes["a1-2"]), [1, 0, 0, 0, 0]); // in line
    assert_eq!(severities(&nodes["a2-1"]), [0, 0, 0, 1, 0]); // high (minor behind, compliance .7)
    // A major release behind, past a security release: critical.
    assert_eq!(severities(&nodes["b-1"]), [0, 0, 0, 0, 1]);

    // Fleet: counts, score distribution, worst nodes, compliance, staleness.
    let fleet = &by(GroupBy::Global)["fleet"];
    assert_eq!(fleet.nodes, 4);
    assert_eq!(severities(fleet), [1, 0, 1, 1, 1]);
    // Scores: a1-1 1+2+1=4, a1-2 0, a2-1 20+1=21, b-1 100.
    assert_eq!(
        fleet.score_distribution,
        [("0", 1), ("1-9", 1), ("10-99", 1), ("100+", 1)]
            .map(|(k, v)| (k.to_owned(), v))
            .into()
    );
    assert_eq!(
        fleet.worst_nodes,
        vec![
            ("b-1".to_owned(), 100),
            ("a2-1".to_owned(), 21),
            ("a1-1".to_owned(), 4)
        ]
    );
    let mean = fleet.compliance_mean.context("mean")?;
    assert!((mean - (0.95 + 1.0 + 0.70 + 1.0) / 4.0).abs() < 1e-12);
    assert_eq!(fleet.compliance_min, Some(0.70));
    // a1-1's config has been off since 03:30, its last event at 03:45.
    assert_eq!(fleet.stale_by_max, Span::from_mins(15));

    // Zones and clusters.
    let zones = by(GroupBy::Zone);
    assert_eq!(
        zones.keys().collect::<Vec<_>>(),
        ["edge-zone-a1", "edge-zone-a2", "edge-zone-b1"]
    );
    assert_eq!(zones["edge-zone-a1"].nodes, 2);
    assert_eq!(severities(&zones["edge-zone-a1"]), [1, 0, 1, 0, 0]);
    assert_eq!(zones["edge-zone-a1"].compliance_min, Some(0.95));
    let clusters = by(GroupBy::Cluster);
    assert_eq!(
        clusters.keys().collect::<Vec<_>>(),
        [
            "edge-zone-a1-cluster",
            "edge-zone-a2-cluster",
            "edge-zone-b1-cluster",
            "iBCF-interconnect-cluster",
            "region-a-cluster",
            "region-b-cluster"
        ]
    );
    assert_eq!(clusters["region-a-cluster"].nodes, 3);
    assert_eq!(clusters["iBCF-interconnect-cluster"].nodes, 4);
    assert_eq!(
        clusters["region-a-cluster"].worst_nodes[0],
        ("a2-1".to_owned(), 21)
    );

    // The same roll-up through the graph, with connectivity joined in.
    let rollups = graph::cluster_rollups(&engine, Span::from_mins(10), at("04:00"));
    let region_a = rollups
        .iter()
        .find(|r| r.cluster == "region-a-cluster")
        .context("region-a")?;
    assert_eq!(region_a.kind, graph::ClusterKind::Region);
    assert_eq!(region_a.drift, clusters["region-a-cluster"]);
    assert_eq!(region_a.connectivity.nodes, 3);
    Ok(())
}

#[test]
fn connectivity_and_lifecycle_projections() -> Result<()> {
    let engine = small_fleet()?;
    let now = at("04:00");
    // The aggregator heard from a1-1 (connected) and b-1 (10 minutes ago);
    // nothing from the others.
    let observed: HashMap<String, Observed> = [
        (
            "a1-1".to_owned(),
            Observed {
                last_sync: Some(at("03:59")),
                backlog: 0,
                backlog_since: None,
                connected: true,
            },
        ),
        (
            "b-1".to_owned(),
            Observed {
                last_sync: Some(at("03:50")),
                backlog: 500,
                backlog_since: Some(at("03:40")),
                connected: false,
            },
        ),
    ]
    .into();
    let mut observing = engine.clone();
    for (node, o) in &observed {
        observing.observe(node, o.clone());
    }
    assert_eq!(observing.observed("b-1").map(|o| o.backlog), Some(500));
    let fleet =
        views::connectivity_observed_by(&observing, GroupBy::Global, Span::from_mins(5), now);
    let fleet = &fleet[0];
    assert_eq!(fleet.nodes, 4);
    let spectrum: BTreeMap<&str, usize> = fleet
        .spectrum
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(
        spectrum,
        [
            ("autonomous", 1),
            ("delayed", 1),
            ("disconnected", 0),
            ("edge-cached", 0),
            ("live", 1),
            ("replaying", 1),
            ("returning", 0)
        ]
        .into()
    );
    // b-1 heard 10 minutes ago (> 5), a1-2 and a2-1 never: stale.
    assert_eq!(fleet.stale, 3);
    // Sync debt: a1-1 1m, b-1 10m, the others never synced (0).
    assert_eq!(fleet.sync_debt_max, Span::from_mins(10));
    assert_eq!(fleet.sync_debt_mean, Span::from_secs((60 + 600) / 4));
    // Backlog: observed for a1-1 (0) and b-1 (500), reported by a1-2 (40).
    assert_eq!(fleet.backlog_total, 540);
    assert_eq!(fleet.backlog_max, 500);
    assert_eq!(fleet.backlog_mean, 135.0);
    assert_eq!(fleet.oldest_unreceived_max, Span::from_mins(20));
    let zones = views::connectivity_observed_by(&observing, GroupBy::Zone, Span::from_mins(5), now);
    assert_eq!(zones.len(), 3);
    assert_eq!(zones[0].group, "edge-zone-a1");
    assert_eq!(zones[0].backlog_total, 40);

    let lifecycle = views::lifecycle_by(&engine, GroupBy::Global);
    let fleet = &lifecycle[0];
    assert_eq!(fleet.phases["maintenance"], 1);
    assert_eq!(
        fleet.phases["provisioning"], 3,
        "no provisioning_completed yet"
    );
    assert_eq!(fleet.updates.len(), 2);
    let to_150 = fleet
        .updates
        .iter()
        .find(|u| u.to_version == "1.5.0")
        .context("1.5.0")?;
    assert_eq!(
        (to_150.initiated, to_150.in_progress, to_150.succeeded),
        (1, 1, 0)
    );
    let to_090 = fleet
        .updates
        .iter()
        .find(|u| u.to_version == "0.9.0")
        .context("0.9.0")?;
    assert_eq!(
        (to_090.initiated, to_090.succeeded, to_090.failed),
        (1, 1, 0)
    );
    assert_eq!(fleet.maintenance.len(), 1);
    assert_eq!(fleet.maintenance[0].node, "a2-1");
    assert_eq!(fleet.maintenance[0].window_id, "mw-7");
    assert_eq!(fleet.maintenance[0].planned_end, Some(at("05:00")));
    let per_zone = views::lifecycle_by(&engine, GroupBy::Zone);
    assert_eq!(
        per_zone.iter().map(|z| z.maintenance.len()).sum::<usize>(),
        1
    );
    Ok(())
}

const REMPART: &str = "sx-rempart-2026-prod-1-node-42";
const COEUR: &str = "sx-coeur-2026-prod-1-node-43";
const RELAIS: &str = "sx-relais-2026-prod-1-node-44";
const RELAIS_CLUSTER: &str = "media-relay-cluster";

/// The seed's graph: rempart → coeur (signaling), coeur → relais (media),
/// optionally rempart → relais (bypass).
fn seed_graph(bypass: bool) -> Result<ProjectionEngine> {
    let mut engine = ProjectionEngine::new();
    let mut rempart = Stream::new(REMPART);
    let mut links = vec![(COEUR, LinkType::Signaling)];
    if bypass {
        links.push((RELAIS, LinkType::Bypass));
    }
    rempart
        .push(
            at("03:00"),
            identity("souverix-rempart", "region-a", "edge-zone-a1"),
        )
        .push(
            at("03:00"),
            topology(&links, &["iBCF-interconnect-cluster"]),
        );
    let mut coeur = Stream::new(COEUR);
    coeur
        .push(
            at("03:00"),
            identity("souverix-coeur", "region-a", "core-zone-a"),
        )
        .push(at("03:00"), topology(&[(RELAIS, LinkType::Media)], &[]));
    let mut relais = Stream::new(RELAIS);
    relais
        .push(
            at("03:00"),
            identity("souverix-relais", "region-a", "edge-zone-a2"),
        )
        .push(at("03:00"), topology(&[], &[RELAIS_CLUSTER]));
    // The relais reports last: until then the others' links point at a
    // placeholder.
    engine.apply(rempart.events()).context("rempart")?;
    engine.apply(coeur.events()).context("coeur")?;
    assert!(engine.graph().contains(RELAIS));
    engine.apply(relais.events()).context("relais")?;
    Ok(engine)
}

#[test]
fn graph_neighbours_by_type_and_direction() -> Result<()> {
    let engine = seed_graph(true)?;
    let g = engine.graph();
    let n = |node: &str, link_type, direction| Neighbour {
        node: node.to_owned(),
        link_type,
        direction,
    };
    assert_eq!(
        g.neighbours(COEUR, None),
        Some(vec![
            n(RELAIS, LinkType::Media, LinkDirection::Outgoing),
            n(REMPART, LinkType::Signaling, LinkDirection::Incoming),
        ])
    );
    assert_eq!(
        g.neighbours(RELAIS, Some(LinkType::Bypass)),
        Some(vec![n(REMPART, LinkType::Bypass, LinkDirection::Incoming)])
    );
    assert_eq!(g.neighbours(REMPART, Some(LinkType::Control)), Some(vec![]));
    assert_eq!(g.neighbours("nobody", None), None);
    assert_eq!(
        serde_json::to_value(g.neighbours(REMPART, Some(LinkType::Signaling)))?,
        json!([{"node": COEUR, "link_type": "signaling", "direction": "outgoing"}])
    );
    Ok(())
}

#[test]
fn when_coeur_goes_dark_rempart_loses_the_relais_cluster_unless_bypassed() -> Result<()> {
    let chain = seed_graph(false)?;
    let coeur_dark = Outage::Node(COEUR.to_owned());
    let impact = chain
        .graph()
        .impact(&coeur_dark, RELAIS_CLUSTER)
        .context("cluster")?;
    assert_eq!(impact.dark, vec![COEUR.to_owned()]);
    assert_eq!(impact.cut_off, vec![REMPART.to_owned()]);
    assert_eq!(impact.still_reaching, 1, "the relais itself");
    // The all-clusters analysis finds the same, and the clusters on either
    // side of the cut: coeur's own zone cluster is lost to everyone.
    let all: BTreeMap<String, Vec<String>> = chain
        .graph()
        .impact_all(&coeur_dark)
        .into_iter()
        .map(|i| (i.cluster.clone(), i.cut_off))
        .collect();
    assert_eq!(all[RELAIS_CLUSTER], impact.cut_off);
    assert_eq!(all["edge-zone-a1-cluster"], vec![RELAIS.to_owned()]);
    assert_eq!(
        all["core-zone-a-cluster"],
        vec![REMPART.to_owned(), RELAIS.to_owned()].tap_sort()
    );
    assert!(
        !all.contains_key("region-a-cluster"),
        "every node is a member"
    );
    // The same outage by zone.
    let zone = chain
        .graph()
        .impact(&Outage::Zone("core-zone-a".into()), RELAIS_CLUSTER)
        .context("cluster")?;
    assert_eq!(zone.cut_off, vec![REMPART.to_owned()]);
    // Losing the relais' own zone cuts everyone off.
    let relais_zone = chain
        .graph()
        .impact(&Outage::Zone("edge-zone-a2".into()), RELAIS_CLUSTER)
        .context("cluster")?;
    assert_eq!(
        relais_zone.cut_off,
        vec![REMPART.to_owned(), COEUR.to_owned()].tap_sort()
    );
    assert_eq!(relais_zone.still_reaching, 0);

    let bypassed = seed_graph(true)?;
    let impact = bypassed
        .graph()
        .impact(&coeur_dark, RELAIS_CLUSTER)
        .context("cluster")?;
    assert!(impact.cut_off.is_empty());
    assert_eq!(impact.still_reaching, 2);
    let all: Vec<String> = bypassed
        .graph()
        .impact_all(&coeur_dark)
        .into_iter()
        .map(|i| i.cluster)
        .collect();
    assert_eq!(all, vec!["core-zone-a-cluster".to_owned()]);
    assert_eq!(
        bypassed.graph().impact(&coeur_dark, "no-such-cluster"),
        None
    );
    Ok(())
}

trait TapSort {
    fn tap_sort(self) -> Self;
}

impl TapSort for Vec<String> {
    fn tap_sort(mut self) -> Self {
        self.sort();
        self
    }
}

#[test]
fn graph_view_and_its_maintenance() -> Result<()> {
    let mut engine = seed_graph(true)?;
    let view = graph::view(&engine, &GraphFilter::default());
    let json = serde_json::to_value(&view)?;
    assert_eq!(json["nodes"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        json["nodes"][0],
        json!({
            "id": COEUR,
            "reported": true,
            "component": "souverix-coeur",
            "region": "region-a",
            "zone": "core-zone-a",
            "clusters": ["region-a-cluster", "core-zone-a-cluster"],
            "trust_domain": null,
            "connectivity": "disconnected",
            "drift_severity": "none",
            "lifecycle_phase": "provisioning"
        })
    );
    assert_eq!(
        json["edges"],
        json!([
            {"from": COEUR, "to": RELAIS, "link_type": "media"},
            {"from": REMPART, "to": COEUR, "link_type": "signaling"},
            {"from": REMPART, "to": RELAIS, "link_type": "bypass"}
        ])
    );
    let relay = view
        .clusters
        .iter()
        .find(|c| c.name == RELAIS_CLUSTER)
        .context("relay cluster")?;
    assert_eq!(relay.kind, graph::ClusterKind::Function);
    assert_eq!(relay.members, vec![RELAIS.to_owned()]);
    assert_eq!(view.zones.len(), 3);
    // A filtered view keeps edges between shown nodes only.
    let zone = graph::view(
        &engine,
        &GraphFilter {
            zone: Some("edge-zone-a1".into()),
            ..GraphFilter::default()
        },
    );
    assert_eq!(zone.nodes.len(), 1);
    assert!(zone.edges.is_empty());

    // Rempart drops its bypass: the edge goes; the snapshot rebuilds the
    // same graph.
    let mut rempart = Stream::new(REMPART);
    rempart
        .push(
            at("03:00"),
            identity("souverix-rempart", "region-a", "edge-zone-a1"),
        )
        .push(
            at("03:00"),
            topology(
                &[(COEUR, LinkType::Signaling), (RELAIS, LinkType::Bypass)],
                &["iBCF-interconnect-cluster"],
            ),
        )
        .push(
            at("03:10"),
            topology(
                &[(COEUR, LinkType::Signaling)],
                &["iBCF-interconnect-cluster"],
            ),
        );
    engine.apply(rempart.events());
    assert_eq!(engine.graph().edge_count(), 2);
    let restored = ProjectionEngine::from_snapshot(&engine.to_snapshot())?;
    assert_eq!(restored.graph(), engine.graph());
    assert_eq!(restored, engine);
    Ok(())
}

#[test]
fn trust_index_of_the_seed_node() -> Result<()> {
    let mut engine = ProjectionEngine::new();
    engine.apply(node_42().events()).context("applied")?;
    let policy = TrustPolicy::default();
    let now = at("04:00");
    let index = trust::index(&engine, NODE_42, None, &[], &[], &policy, now).context("index")?;
    let json = serde_json::to_value(&index)?;
    assert_eq!(
        json["certificate_chain"],
        json!([{
            "issuer": "souverix-autorite-root-ca",
            "subject": NODE_42,
            "valid_until": "2026-08-27T00:00:00Z",
            "signature": "sha256:0042",
            "validity": "valid",
            "expires_in": index.certificate_chain[0].expires_in.to_string()
        }])
    );
    assert_eq!(
        json["sbom_lineage"],
        json!([{
            "component": "souverix-rempart",
            "version": "1.4.6",
            "sbom_hash": "sha256:def",
            "provenance": "signed-by-build-system",
            "dependencies": ["openssl-3.0.13"]
        }])
    );
    assert_eq!(json["attestation"]["last_verified"], "2026-02-27T03:45:00Z");
    assert_eq!(json["attestation"]["integrity_state"], "verified");
    assert_eq!(json["trust_score"], 1.0);
    assert_eq!(json["trust_domain"], "souverix-autorite-root-ca");
    assert!(index.alerts.is_empty());

    // Half a year later the certificate is within the 30-day window.
    let later = Timestamp::parse("2026-08-10T00:00:00Z")?;
    let index = trust::index(&engine, NODE_42, None, &[], &[], &policy, later).context("index")?;
    assert_eq!(index.certificate_chain[0].validity, Validity::Expiring);
    assert_eq!(index.alerts.len(), 1);
    assert_eq!(index.alerts[0].kind, AlertKind::CertificateExpiring);
    assert_eq!(index.alerts[0].severity, Severity::Medium);
    // Expiring (0.8) and a stale attestation (0.75).
    assert!((index.trust_score - 0.8 * 0.75).abs() < 1e-12);
    let expired = Timestamp::parse("2026-09-01T00:00:00Z")?;
    let index =
        trust::index(&engine, NODE_42, None, &[], &[], &policy, expired).context("index")?;
    assert_eq!(index.alerts[0].kind, AlertKind::CertificateExpired);
    assert_eq!(index.alerts[0].severity, Severity::Critical);
    Ok(())
}

#[test]
fn certificate_rotation_and_failed_attestation_in_the_trust_index() -> Result<()> {
    let mut s = node_42();
    s.push(
        at("03:50"),
        EventPayload::CertificateRotated(CertificateRotated {
            old_fingerprint: "sha256:0042".into(),
            new_fingerprint: "sha256:0043".into(),
            new_certificate: "-----BEGIN CERTIFICATE-----".into(),
            new_valid_until: Timestamp::parse("2027-02-27T00:00:00Z")?,
        }),
    )
    .push(
        at("03:55"),
        EventPayload::AttestationPerformed(AttestationPerformed {
            result: AttestationState::Failed,
            detail: Some("PCR 7 mismatch".into()),
        }),
    );
    let mut engine = ProjectionEngine::new();
    engine.apply(s.events()).context("applied")?;
    let policy = TrustPolicy::default();
    let now = at("04:00");
    let index = trust::index(&engine, NODE_42, None, &[], &[], &policy, now).context("index")?;
    assert_eq!(index.rotations.len(), 1);
    assert_eq!(index.rotations[0].new_fingerprint, "sha256:0043");
    assert_eq!(index.certificate_chain[0].signature, "sha256:0043");
    assert_eq!(
        index.certificate_chain[0].issuer,
        "souverix-autorite-root-ca"
    );
    assert_eq!(index.attestation.integrity_state, AttestationState::Failed);
    assert_eq!(index.attestation.last_verified, Some(at("03:45")));
    assert_eq!(index.alerts.len(), 1);
    assert_eq!(index.alerts[0].kind, AlertKind::AttestationFailed);
    assert_eq!(index.alerts[0].detail, "PCR 7 mismatch");
    assert_eq!(index.trust_score, 0.2);
    Ok(())
}

/// A forked submission to the real store, an identity refusal and a
/// refused stranger all surface as alerts; the fork zeroes the score.
#[test]
fn forks_and_refusals_raise_trust_alerts() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = RedbStore::open(dir.path().join("events.redb"))?;
    let key = SigningKey::from_bytes(&[42; 32]);
    let stream = node_42();
    let verdicts = store.append(&[submission(&key, stream.events.clone())?])?;
    assert!(verdicts[0].is_ok());
    // The same key signs a different history from seq 5 on.
    let honest_head = ChainHead {
        seq: 4,
        hash: stream.events[3].hash,
    };
    let forked = seal_stream(
        NODE_42,
        honest_head,
        [(
            at("03:41"),
            EventPayload::ConnectionLost(Note { reason: None }),
        )],
    );
    let verdicts = store.append(&[submission(&key, forked)?])?;
    assert!(verdicts[0].is_err(), "a fork is refused");
    let forks = store.forks()?;
    assert_eq!(forks.len(), 1);
    assert_eq!(forks[0].seq, 5);

    let engine = service::rebuild(&store)?;
    let records = store.nodes()?;
    let refusal = |node: Option<&str>, reason: &str| Refusal {
        at: at("03:58"),
        peer: "192.0.2.7:4433".into(),
        node_id: node.map(str::to_owned),
        reason: reason.into(),
        detail: "certificate names another node".into(),
    };
    let refusals = vec![
        refusal(Some(NODE_42), "identity-mismatch"),
        refusal(None, "tls-handshake"),
    ];
    let policy = TrustPolicy::default();
    let now = at("04:00");
    let index = trust::index(
        &engine,
        NODE_42,
        records.first(),
        &forks,
        &refusals,
        &policy,
        now,
    )
    .context("index")?;
    assert_eq!(index.trust_score, 0.0);
    assert_eq!(index.ingest_fingerprint.as_deref(), Some("sha256:0042"));
    let kinds: Vec<AlertKind> = index.alerts.iter().map(|a| a.kind).collect();
    assert_eq!(kinds, vec![AlertKind::Fork, AlertKind::IdentityMismatch]);
    assert_eq!(index.alerts[0].severity, Severity::Critical);

    let all = trust::fleet_alerts(&engine, &records, &forks, &refusals, &policy, now);
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].kind, AlertKind::Fork);
    assert!(
        all.iter()
            .any(|a| a.node.is_none() && a.kind == AlertKind::Refused)
    );
    // Without the fork, the identity refusal halves an otherwise perfect score.
    let score = trust::trust_score(
        NODE_42,
        engine.node(NODE_42),
        records.first(),
        &[],
        &refusals,
        &policy,
        now,
    );
    assert_eq!(score, 0.5);
    Ok(())
}

#[test]
fn lifecycle_phase_names_match_the_model() {
    // The lifecycle view names phases as the model serialises them.
    for (phase, name) in [
        (LifecyclePhase::Provisioning, "provisioning"),
        (LifecyclePhase::Maintenance, "maintenance"),
        (LifecyclePhase::Decommissioned, "decommissioned"),
    ] {
        assert_eq!(serde_json::to_value(phase).ok(), Some(json!(name)));
    }
}
