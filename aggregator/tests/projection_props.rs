//! Invariant 4 of DESIGN.md under random histories: projections are a pure
//! function of the stored events plus the desired state.
//!
//! Random event histories of a few nodes (realistic payloads, honestly
//! chained and checkpoint-signed) are appended to a real `RedbStore` in
//! random batch splits, interleaved across nodes, with duplicate resends
//! and desired-state changes in between. Then:
//! - the engine updated batch by batch as commits land equals
//!   `service::rebuild(store)`;
//! - a snapshot taken midway, restored and caught up with the tail equals
//!   the rebuild;
//! - `engine_as_of(store, None, latest)` equals the current engine, and an
//!   as-of at an earlier instant equals the engine of the events and
//!   changes stamped up to it;
//! - the group views (drift, connectivity, lifecycle under every grouping),
//!   computed from the engine's compact fleet table, equal a plain
//!   reference computed from the full node views, on both engines.

use ed25519_dalek::SigningKey;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use std::collections::BTreeMap;
use sx_aggregator::projection::ProjectionEngine;
use sx_aggregator::projection::drift;
use sx_aggregator::projection::graph;
use sx_aggregator::projection::service;
use sx_aggregator::projection::views::{self, GroupBy, Observed};
use sx_aggregator::store::{EventStore, RedbStore, Submission};
use sx_common::chain::{ChainHead, SealedEvent};
use sx_common::desired::{
    ConfigRule, DesiredChangeKind, PolicyRule, ReleaseEntry, Scope, VersionRule,
};
use sx_common::event::*;
use sx_common::model::{
    AttestationState, CertificateRef, ConfigValue, ConnectivityState, FieldDrift, LifecyclePhase,
    LinkType, PeerLink, SbomEntry,
};
use sx_common::testing::{STREAM_START, SignedBatch, seal_stream, split_into_batches};
use sx_common::time::{Span, Timestamp};

const NODES: [&str; 3] = [
    "sx-rempart-prop-node-1",
    "sx-coeur-prop-node-2",
    "sx-relais-prop-node-3",
];
const COMPONENTS: [&str; 3] = ["souverix-rempart", "souverix-coeur", "souverix-relais"];
const VERSIONS: [&str; 5] = ["1.4.5", "1.4.6", "1.4.7", "1.5.0", "2.0.0"];
const ZONES: [&str; 3] = ["edge-zone-a1", "edge-zone-a2", "core-zone-b"];
const REGIONS: [&str; 2] = ["region-a", "region-b"];
const CLUSTERS: [&str; 2] = ["iBCF-interconnect-cluster", "media-relay-cluster"];
const ISSUERS: [&str; 2] = ["souverix-autorite-root-ca", "souverix-region-b-ca"];

fn minutes(m: u64) -> Timestamp {
    STREAM_START.plus(Span::from_mins(m))
}

fn arb_state() -> impl Strategy<Value = ConnectivityState> {
    select(ConnectivityState::ALL.to_vec())
}

fn arb_config() -> impl Strategy<Value = BTreeMap<String, ConfigValue>> {
    (
        proptest::option::of(select(vec!["soft", "hard"])),
        proptest::option::of(select(vec![1500i64, 2000])),
    )
        .prop_map(|(mode, cps)| {
            let mut m = BTreeMap::new();
            if let Some(mode) = mode {
                m.insert("stir.enforcement_mode".to_owned(), ConfigValue::from(mode));
            }
            if let Some(cps) = cps {
                m.insert("rate_limit.max_cps".to_owned(), ConfigValue::Int(cps));
            }
            m
        })
}

/// Events a node of the fleet plausibly records, from a small vocabulary
/// so that events of different nodes and the desired state interact.
fn arb_payload() -> impl Strategy<Value = EventPayload> {
    use EventPayload as P;
    prop_oneof![
        4 => (arb_state(), arb_state(), proptest::option::of(select(vec![45u32, 50, 5000])),
              proptest::option::of(0u64..2_000), proptest::option::of(select(vec!["connection_lost", "connection_detected"])))
            .prop_map(|(from, to, latency_ms, backlog, reason)| P::ConnectivityTransition(ConnectivityTransition {
                from, to, reason: reason.map(str::to_owned), latency_ms, backlog,
                sync_interval: (to == ConnectivityState::EdgeCached).then(|| Span::from_mins(15)),
            })),
        1 => (select(COMPONENTS.to_vec()), select(REGIONS.to_vec()), select(ZONES.to_vec()))
            .prop_map(|(c, r, z)| P::IdentityReported(IdentityReported {
                component_type: c.into(), region: r.into(), zone: z.into(), trust_chain: vec![],
            })),
        2 => (select(COMPONENTS.to_vec()), select(VERSIONS.to_vec()))
            .prop_map(|(c, v)| P::SoftwareReported(SoftwareReported {
                component: c.into(), version: v.into(), sbom_hash: format!("sha256:{v}"),
                image_provenance: "signed-by-build-system".into(),
            })),
        2 => arb_config().prop_map(|values| P::ConfigReported(ConfigReported { values })),
        1 => (select(vec!["policy-v2.0", "policy-v2.1"]), select(vec![0.7, 0.95, 1.0]))
            .prop_map(|(p, c)| P::PolicyApplied(PolicyApplied { policy_version: p.into(), compliance_score: c })),
        2 => (vec((select(NODES.to_vec()), select(vec![LinkType::Signaling, LinkType::Media, LinkType::Control, LinkType::Bypass])), 0..3),
              proptest::sample::subsequence(CLUSTERS.to_vec(), 0..=2))
            .prop_map(|(links, clusters)| P::TopologyReported(TopologyReported {
                links: links.into_iter().map(|(p, t)| PeerLink { peer: p.into(), link_type: t }).collect(),
                clusters: clusters.into_iter().map(str::to_owned).collect(),
            })),
        1 => (select(ISSUERS.to_vec()), 0u64..400)
            .prop_map(|(issuer, days)| P::TrustChainValidated(TrustChainValidated {
                chain: vec![CertificateRef {
                    issuer: issuer.into(), subject: "node".into(),
                    valid_until: STREAM_START.plus(Span::from_secs(days * 86_400)),
                    signature: format!("sha256:{days:04}"),
                }],
            })),
        1 => select(vec![AttestationState::Verified, AttestationState::Failed, AttestationState::Unknown])
            .prop_map(|result| P::AttestationPerformed(AttestationPerformed { result, detail: None })),
        1 => (0u64..400).prop_map(|days| P::CertificateRotated(CertificateRotated {
                old_fingerprint: "sha256:old".into(), new_fingerprint: format!("sha256:{days:04}"),
                new_certificate: String::new(), new_valid_until: STREAM_START.plus(Span::from_secs(days * 86_400)),
            })),
        1 => (select(COMPONENTS.to_vec()), select(VERSIONS.to_vec()))
            .prop_map(|(c, v)| P::SbomUpdated(SbomEntry {
                component: c.into(), version: v.into(), sbom_hash: format!("sha256:{v}"),
                provenance: "signed-by-build-system".into(), dependencies: vec!["openssl".into()],
            })),
        1 => (select(VERSIONS.to_vec()), select(VERSIONS.to_vec()), proptest::option::of(any::<bool>()))
            .prop_map(|(from, to, done)| match done {
                None => P::UpdateInitiated(Update { from_version: from.into(), to_version: to.into() }),
                Some(ok) => P::UpdateCompleted(UpdateCompleted { from_version: from.into(), to_version: to.into(), succeeded: ok }),
            }),
        1 => any::<bool>().prop_map(|start| if start {
                P::MaintenanceStarted(MaintenanceStarted { window_id: "mw-1".into(), reason: None, planned_end: None })
            } else {
                P::MaintenanceCompleted(MaintenanceCompleted { window_id: "mw-1".into() })
            }),
        1 => select(vec![LifecyclePhase::Active, LifecyclePhase::Decommissioning])
            .prop_map(|to| P::LifecycleTransition(LifecycleTransition { from: LifecyclePhase::Provisioning, to, reason: None })),
        1 => (0u64..40).prop_map(|acked_seq| P::SyncCompleted(SyncCompleted { acked_seq, via: SyncPath::Quic })),
        1 => (0u64..2_000, any::<bool>()).prop_map(|(n, start)| if start {
                P::ReplayStarted(ReplayStarted { backlog: n })
            } else {
                P::ReplayCompleted(ReplayCompleted { replayed: n })
            }),
        1 => (proptest::option::of(select(VERSIONS.to_vec())), arb_config(), proptest::option::of(select(vec!["policy-v2.0", "policy-v2.1"])))
            .prop_map(|(v, config, p)| P::DesiredStateLearned(DesiredStateLearned {
                software_version: v.map(str::to_owned), config, policy_version: p.map(str::to_owned),
            })),
        1 => (select(VERSIONS.to_vec()), select(VERSIONS.to_vec()))
            .prop_map(|(d, a)| P::VersionDrift(VersionDrift { component: "souverix-rempart".into(), desired: d.into(), actual: a.into() })),
        1 => arb_config().prop_map(|m| P::ConfigDrift(ConfigDrift {
                fields: m.into_iter().map(|(field, v)| FieldDrift { field, desired: ConfigValue::Int(1), actual: Some(v) }).collect(),
            })),
    ]
}

fn arb_scope() -> impl Strategy<Value = Scope> {
    prop_oneof![
        Just(Scope::Fleet),
        select(REGIONS.to_vec()).prop_map(|r| Scope::Region(r.into())),
        select(ZONES.to_vec()).prop_map(|z| Scope::Zone(z.into())),
        select(CLUSTERS.to_vec()).prop_map(|c| Scope::Cluster(c.into())),
        select(NODES.to_vec()).prop_map(|n| Scope::Node(n.into())),
    ]
}

fn arb_desired() -> impl Strategy<Value = DesiredChangeKind> {
    prop_oneof![
        (
            select(COMPONENTS.to_vec()),
            arb_scope(),
            select(VERSIONS.to_vec())
        )
            .prop_map(|(c, scope, v)| DesiredChangeKind::SetVersion {
                rule: VersionRule {
                    component: c.into(),
                    scope,
                    version: v.into(),
                },
            }),
        (arb_scope(), arb_config()).prop_map(|(scope, values)| DesiredChangeKind::SetConfig {
            rule: ConfigRule {
                scope,
                component: None,
                values,
            },
        }),
        (arb_scope(), select(vec!["policy-v2.0", "policy-v2.1"])).prop_map(|(scope, v)| {
            DesiredChangeKind::SetPolicy {
                rule: PolicyRule {
                    scope,
                    version: v.into(),
                },
            }
        }),
        (
            select(COMPONENTS.to_vec()),
            select(VERSIONS.to_vec()),
            any::<bool>()
        )
            .prop_map(|(c, v, security_fix)| DesiredChangeKind::AddRelease {
                release: ReleaseEntry {
                    component: c.into(),
                    version: v.into(),
                    security_fix,
                    notes: None,
                },
            }),
    ]
}

/// One node's history: (minutes since the previous event, payload, cut a
/// batch after it).
type History = Vec<(u64, EventPayload, bool)>;

#[derive(Clone, Debug)]
struct Scenario {
    histories: Vec<History>,
    /// Which node's next batch goes next, and whether it is resent.
    schedule: Vec<(usize, bool)>,
    /// Submissions per append call, cycled.
    group: Vec<usize>,
    /// Desired changes: (after how many appends, minutes since start, change).
    desired: Vec<(usize, u64, DesiredChangeKind)>,
    /// After how many appends the snapshot is taken.
    snapshot_after: usize,
    /// An instant (minutes since start) for the intermediate as-of.
    as_of: u64,
}

fn arb_scenario() -> impl Strategy<Value = Scenario> {
    (
        vec(
            vec((0u64..30, arb_payload(), any::<bool>()), 1..24),
            NODES.len(),
        ),
        vec((0usize..NODES.len(), proptest::bool::weighted(0.15)), 64),
        vec(1usize..=3, 1..4),
        vec((0usize..12, 0u64..240, arb_desired()), 0..6),
        0usize..16,
        0u64..400,
    )
        .prop_map(
            |(histories, schedule, group, desired, snapshot_after, as_of)| Scenario {
                histories,
                schedule,
                group,
                desired,
                snapshot_after,
                as_of,
            },
        )
}

fn key(i: usize) -> SigningKey {
    SigningKey::from_bytes(&[i as u8 + 1; 32])
}

/// The node's history as signed batches, the first event an identity so
/// every node has a place in the fleet.
fn batches(i: usize, history: &History) -> Vec<SignedBatch> {
    let mut at = STREAM_START;
    let mut items = vec![(
        at,
        EventPayload::IdentityReported(IdentityReported {
            component_type: COMPONENTS[i].into(),
            region: REGIONS[i % REGIONS.len()].into(),
            zone: ZONES[i].into(),
            trust_chain: vec![ISSUERS[i % ISSUERS.len()].into()],
        }),
    )];
    let mut cuts = vec![false];
    for (gap, payload, cut) in history {
        at = at.plus(Span::from_mins(*gap));
        items.push((at, payload.clone()));
        cuts.push(*cut);
    }
    let events = seal_stream(NODES[i], ChainHead::default(), items);
    split_into_batches(&key(i), events, |j| cuts[j])
}

fn submission(i: usize, batch: &SignedBatch) -> Submission {
    Submission {
        node_id: NODES[i].to_owned(),
        key: key(i).verifying_key(),
        cert_fingerprint: format!("sha256:{i:02}"),
        events: batch.events.clone(),
        checkpoint: batch.checkpoint.clone(),
        via: SyncPath::Quic,
        received_at: STREAM_START,
        news: true,
    }
}

/// The engine of everything stamped at or before `at`, built by hand:
/// desired changes stamped by then, each node's events up to the first
/// one stamped later.
fn reference_as_of(
    store: &dyn EventStore,
    all: &[Vec<SealedEvent>],
    at: Timestamp,
) -> ProjectionEngine {
    let mut engine = ProjectionEngine::new();
    for change in store.desired_changes(0).unwrap_or_default() {
        if change.at <= at {
            engine.apply_desired(&change);
        }
    }
    for events in all {
        let upto: Vec<&Event> = events
            .iter()
            .map(|s| &s.event)
            .take_while(|e| e.timestamp <= at)
            .collect();
        engine.apply(upto);
    }
    engine
}

const GROUPINGS: [GroupBy; 5] = [
    GroupBy::Node,
    GroupBy::Cluster,
    GroupBy::Zone,
    GroupBy::Region,
    GroupBy::Global,
];

/// The members of each group, in node id order, straight from the views.
fn members(engine: &ProjectionEngine, by: GroupBy) -> BTreeMap<String, Vec<&str>> {
    let mut groups: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (node, view) in engine.nodes() {
        for g in views::groups_of(node, &view.twin, by) {
            groups.entry(g).or_default().push(node);
        }
    }
    groups
}

/// Drift per group, the plain way.
fn reference_drift(engine: &ProjectionEngine, by: GroupBy) -> Vec<drift::DriftAggregate> {
    members(engine, by)
        .into_iter()
        .map(|(g, nodes)| {
            drift::aggregate(
                &g,
                nodes
                    .into_iter()
                    .filter_map(|n| engine.node(n).map(|v| (n, &v.summary))),
            )
        })
        .collect()
}

/// Connectivity per group, the plain way.
fn reference_connectivity(
    engine: &ProjectionEngine,
    observed: &std::collections::HashMap<String, Observed>,
    by: GroupBy,
    stale_after: Span,
    now: Timestamp,
) -> Vec<views::ConnectivityAggregate> {
    members(engine, by)
        .into_iter()
        .map(|(g, nodes)| {
            let mut a = views::ConnectivityAggregate {
                group: g,
                spectrum: ConnectivityState::ALL
                    .iter()
                    .map(|s| (s.as_str().to_owned(), 0))
                    .collect(),
                ..Default::default()
            };
            let mut debt_sum = 0u64;
            for n in nodes {
                let Some(v) = engine.node(n) else { continue };
                let o = observed.get(n);
                let last_sync = o
                    .and_then(|o| o.last_sync)
                    .or(v.twin.connectivity.last_sync);
                let debt = last_sync.map_or(Span::ZERO, |t| now.since(t));
                let backlog = o.map_or(v.twin.connectivity.message_backlog, |o| o.backlog);
                a.nodes += 1;
                *a.spectrum
                    .entry(v.twin.connectivity.state.as_str().to_owned())
                    .or_default() += 1;
                a.stale += usize::from(views::is_stale(o, stale_after, now));
                a.sync_debt_max = a.sync_debt_max.max(debt);
                debt_sum = debt_sum.saturating_add(debt.as_secs());
                a.oldest_unreceived_max = a.oldest_unreceived_max.max(
                    o.and_then(|o| o.backlog_since)
                        .map_or(Span::ZERO, |t| now.since(t)),
                );
                a.backlog_total = a.backlog_total.saturating_add(backlog);
                a.backlog_max = a.backlog_max.max(backlog);
            }
            let n = a.nodes.max(1) as u64;
            a.sync_debt_mean = Span::from_secs(debt_sum / n);
            a.backlog_mean = a.backlog_total as f64 / n as f64;
            a
        })
        .collect()
}

/// Lifecycle per group, the plain way.
fn reference_lifecycle(engine: &ProjectionEngine, by: GroupBy) -> Vec<views::LifecycleAggregate> {
    members(engine, by)
        .into_iter()
        .map(|(g, nodes)| {
            let mut a = views::LifecycleAggregate {
                group: g,
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
                ..Default::default()
            };
            let mut updates: BTreeMap<String, views::UpdateProgressView> = BTreeMap::new();
            for n in nodes {
                let Some(v) = engine.node(n) else { continue };
                let lc = &v.twin.lifecycle;
                a.nodes += 1;
                let phase = serde_json::to_value(lc.phase)
                    .ok()
                    .and_then(|p| p.as_str().map(str::to_owned))
                    .unwrap_or_default();
                *a.phases.entry(phase).or_default() += 1;
                if let Some(u) = &lc.update {
                    let p = updates.entry(u.to_version.clone()).or_insert_with(|| {
                        views::UpdateProgressView {
                            to_version: u.to_version.clone(),
                            ..Default::default()
                        }
                    });
                    p.initiated += 1;
                    match u.succeeded {
                        None => p.in_progress += 1,
                        Some(true) => p.succeeded += 1,
                        Some(false) => p.failed += 1,
                    }
                }
                if let Some(m) = &lc.maintenance {
                    a.maintenance.push(views::MaintenanceView {
                        node: n.to_owned(),
                        window_id: m.window_id.clone(),
                        reason: m.reason.clone(),
                        started_at: m.started_at,
                        planned_end: m.planned_end,
                    });
                }
            }
            a.updates = updates.into_values().collect();
            a
        })
        .collect()
}

/// Every group view of `engine` equals its plain reference.
fn check_views(engine: &ProjectionEngine, now: Timestamp) -> Result<(), TestCaseError> {
    // The aggregator heard from every other node.
    let observed: std::collections::HashMap<String, Observed> = engine
        .nodes()
        .step_by(2)
        .map(|(n, _)| {
            (
                n.clone(),
                Observed {
                    last_sync: Some(STREAM_START),
                    backlog: 3,
                    backlog_since: Some(STREAM_START),
                    connected: false,
                },
            )
        })
        .collect();
    let stale_after = Span::from_mins(30);
    // The same observations recorded in the engine: not part of equality.
    let mut with = engine.clone();
    for (n, o) in &observed {
        with.observe(n, o.clone());
    }
    prop_assert!(&with == engine);
    for by in GROUPINGS {
        prop_assert_eq!(
            views::connectivity_observed_by(&with, by, stale_after, now),
            reference_connectivity(engine, &observed, by, stale_after, now)
        );
        // None recorded: every node stale, with what it reported.
        prop_assert_eq!(
            views::connectivity_observed_by(engine, by, stale_after, now),
            reference_connectivity(engine, &Default::default(), by, stale_after, now)
        );
        prop_assert_eq!(views::drift_by(engine, by), reference_drift(engine, by));
        prop_assert_eq!(
            views::lifecycle_by(engine, by),
            reference_lifecycle(engine, by)
        );
    }
    Ok(())
}

fn run(scenario: Scenario) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let store = RedbStore::open(dir.path().join("events.redb"))
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let fail = |e: sx_aggregator::store::StoreError| TestCaseError::fail(e.to_string());

    let per_node: Vec<Vec<SignedBatch>> = scenario
        .histories
        .iter()
        .enumerate()
        .map(|(i, h)| batches(i, h))
        .collect();
    let all_events: Vec<Vec<SealedEvent>> = per_node
        .iter()
        .map(|b| b.iter().flat_map(|b| b.events.clone()).collect())
        .collect();
    let mut next = vec![0usize; NODES.len()];
    let mut incremental = ProjectionEngine::new();
    let mut snapshot: Option<Vec<u8>> = None;
    let mut appends = 0usize;
    let mut schedule = scenario.schedule.iter().cycle();
    let mut group = scenario.group.iter().cycle();
    let mut latest = STREAM_START;

    loop {
        if appends == scenario.snapshot_after && snapshot.is_none() {
            snapshot = Some(incremental.to_snapshot());
        }
        for (_, minute, change) in scenario.desired.iter().filter(|d| d.0 == appends) {
            let at = minutes(*minute);
            latest = latest.max(at);
            let record = store
                .append_desired(at, "prop", change.clone())
                .map_err(fail)?;
            incremental.apply_desired(&record);
        }
        // The next group of submissions, interleaved across nodes.
        let want = *group.next().unwrap_or(&1);
        let mut subs = Vec::new();
        while subs.len() < want {
            let left: Vec<usize> = (0..NODES.len())
                .filter(|i| next[*i] < per_node[*i].len())
                .collect();
            if left.is_empty() {
                break;
            }
            let &(pick, resend) = schedule.next().unwrap_or(&(0, false));
            let i = left[pick % left.len()];
            if resend && next[i] > 0 {
                subs.push(submission(i, &per_node[i][next[i] - 1]));
            }
            subs.push(submission(i, &per_node[i][next[i]]));
            next[i] += 1;
        }
        if subs.is_empty() {
            break;
        }
        let verdicts = store.append(&subs).map_err(fail)?;
        appends += 1;
        // Apply what was committed, as the driver does.
        for (sub, verdict) in subs.iter().zip(verdicts) {
            let admitted = verdict.map_err(|r| TestCaseError::fail(format!("{r:?}")))?;
            let first_new = sub.events.len() - admitted.new_count as usize;
            incremental.apply(sub.events[first_new..].iter().map(|s| &s.event));
        }
    }
    for events in &all_events {
        if let Some(last) = events.last() {
            latest = latest.max(last.event.timestamp);
        }
    }

    let rebuilt = service::rebuild(&store).map_err(fail)?;
    prop_assert_eq!(&incremental, &rebuilt, "incremental != rebuilt");
    prop_assert_eq!(
        incremental.positions(),
        all_events
            .iter()
            .enumerate()
            .map(|(i, e)| (NODES[i].to_owned(), e.len() as u64))
            .collect::<BTreeMap<_, _>>()
    );

    let bytes = snapshot.unwrap_or_else(|| incremental.to_snapshot());
    let mut restored =
        ProjectionEngine::from_snapshot(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    service::catch_up(&mut restored, &store, None).map_err(fail)?;
    prop_assert_eq!(&restored, &rebuilt, "snapshot + tail != rebuilt");

    let now = service::engine_as_of(&store, None, latest).map_err(fail)?;
    prop_assert_eq!(&now, &rebuilt, "as of the latest instant != current");

    // The maintained graph is the graph of the twins as they stand.
    prop_assert_eq!(
        incremental.graph(),
        &graph::FleetGraph::from_twins(incremental.nodes().map(|(n, v)| (n.as_str(), &v.twin)))
    );
    // Every stored analysis is the analysis of the twin as it stands.
    for (_, view) in incremental.nodes() {
        let fresh = drift::analyze(&view.twin, incremental.desired());
        prop_assert_eq!(&view.summary, &drift::DriftSummary::of(&fresh, &view.twin));
        prop_assert_eq!(
            incremental.drift(&view.twin.identity.immutable_id),
            Some(fresh)
        );
    }
    check_views(&incremental, latest)?;
    check_views(&restored, latest)?;

    let at = minutes(scenario.as_of);
    let then = service::engine_as_of(&store, None, at).map_err(fail)?;
    prop_assert_eq!(
        &then,
        &reference_as_of(&store, &all_events, at),
        "as-of mismatch"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        max_shrink_iters: 200,
        ..ProptestConfig::default()
    })]

    #[test]
    fn incremental_snapshot_and_as_of_equal_the_rebuild(scenario in arb_scenario()) {
        run(scenario)?;
    }
}

/// Per node: its zone, the clusters it declares, its links (to other nodes
/// of the fleet or to peers that never report).
type Topology = Vec<(usize, Vec<usize>, Vec<(usize, LinkType)>)>;

/// A random fleet topology.
fn arb_topology() -> impl Strategy<Value = Topology> {
    let link = select(vec![
        LinkType::Signaling,
        LinkType::Media,
        LinkType::Control,
        LinkType::Bypass,
    ]);
    vec(
        (
            0usize..3,
            vec(0usize..3, 0..2),
            vec((0usize..14, link), 0..3),
        ),
        2..12,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The all-clusters impact (union-find components) agrees with the
    /// per-cluster impact (breadth-first searches) for any outage.
    #[test]
    fn impact_all_agrees_with_impact_per_cluster(
        topology in arb_topology(),
        dark_node in 0usize..12,
        dark_zone in proptest::option::of(0usize..3),
    ) {
        let id = |i: usize| format!("sx-node-{i:02}");
        let mut engine = ProjectionEngine::new();
        for (i, (zone, clusters, links)) in topology.iter().enumerate() {
            let items = vec![
                (STREAM_START, EventPayload::IdentityReported(IdentityReported {
                    component_type: "souverix-coeur".into(),
                    region: "region-a".into(),
                    zone: format!("zone-{zone}"),
                    trust_chain: vec![],
                })),
                (STREAM_START, EventPayload::TopologyReported(TopologyReported {
                    links: links.iter().map(|(p, t)| PeerLink { peer: id(*p), link_type: *t }).collect(),
                    clusters: clusters.iter().map(|c| format!("fn-{c}")).collect(),
                })),
            ];
            let events = seal_stream(&id(i), ChainHead::default(), items);
            engine.apply(events.iter().map(|s| &s.event));
        }
        let outage = match dark_zone {
            Some(z) => graph::Outage::Zone(format!("zone-{z}")),
            None => graph::Outage::Node(id(dark_node)),
        };
        let g = engine.graph();
        let expected: Vec<graph::Impact> = g
            .clusters()
            .filter_map(|c| g.impact(&outage, c))
            .filter(|i| !i.cut_off.is_empty())
            .collect();
        prop_assert_eq!(g.impact_all(&outage), expected);
    }
}
