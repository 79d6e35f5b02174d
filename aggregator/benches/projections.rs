//! Projection benchmark: a fleet of 100,000 twins fed 10,000,000 events.
//!
//! `cargo bench -p sx-aggregator --bench projections` (release profile).
//! Prints what it measured; asserts nothing. Sizes can be changed with
//! `SX_BENCH_NODES`, `SX_BENCH_EVENTS_PER_NODE`, `SX_BENCH_STORE_NODES`,
//! `SX_BENCH_LIVE_EVENTS`; `SX_BENCH_STOP_AFTER=n` stops after part n and
//! `SX_BENCH_PROFILE_DRIFT=zone` repeats one drift view after parts 1 and 2
//! (for profilers).
//!
//! 1. Full rebuild through `ProjectionEngine::apply`: every node's events
//!    generated in memory (a realistic mix, see [`Fleet::history`]) and
//!    applied one node at a time as `service::catch_up` does; only the
//!    apply is timed. Resident memory per twin is the growth of RSS
//!    (`/proc/self/status`) over that build, divided by the twin count.
//! 2. Incremental update cost: live events for random nodes, applied one
//!    event per call.
//! 3. Query latencies (p50/p99/max) on the full fleet.
//! 4. Restart from a snapshot: save (encode + write + fsync), load (read +
//!    decode + graph and table rebuild), tail; and, in a fresh child
//!    process, the resident memory per twin of the engine loaded from it.
//! 5. The same rebuild and restart through a real `RedbStore` holding a
//!    smaller fleet, to extrapolate the store-backed rebuild to 10M events.

use std::hint::black_box;
use std::time::{Duration, Instant};
use sx_aggregator::projection::graph::{self, GraphFilter, Outage};
use sx_aggregator::projection::service::{self, Projections};
use sx_aggregator::projection::views::{self, GroupBy, Observed};
use sx_aggregator::projection::{ProjectionEngine, trust};
use sx_aggregator::store::{EventStore, RedbStore, Submission};
use sx_common::chain::{ChainHead, Digest};
use sx_common::desired::{
    ConfigRule, DesiredChange, DesiredChangeKind, DesiredSpec, PolicyRule, ReleaseEntry, Scope,
    VersionRule,
};
use sx_common::event::*;
use sx_common::model::{
    AttestationState, CertificateRef, ConfigValue, ConnectivityState, Hardware, LinkType, PeerLink,
    SbomEntry,
};
use sx_common::testing::{STREAM_START, checkpoint, seal_stream};
use sx_common::time::{Span, Timestamp};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// SplitMix64: a fast, seedable generator for the synthetic fleet.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const COMPONENTS: [&str; 3] = ["souverix-rempart", "souverix-coeur", "souverix-relais"];
const VERSIONS: [&str; 4] = ["1.4.5", "1.4.6", "1.4.7", "1.5.0"];
const REGIONS: usize = 4;
const ZONES_PER_REGION: usize = 50;
const FUNCTIONAL: [&str; 4] = [
    "iBCF-interconnect-cluster",
    "media-relay-cluster",
    "emergency-routing-cluster",
    "lawful-intercept-cluster",
];

/// The synthetic fleet: node i is a rempart (60%), coeur (20%) or relais
/// (20%); 4 regions of 50 zones; each rempart signals to a coeur of its
/// zone, each coeur sends media to a relais, some remparts bypass to a
/// relais; each region has its own issuing CA.
struct Fleet {
    nodes: usize,
}

impl Fleet {
    fn id(i: usize) -> String {
        let c = ["rempart", "coeur", "relais"][Self::kind(i)];
        format!("sx-{c}-2026-prod-{}-node-{i}", i % REGIONS)
    }

    fn kind(i: usize) -> usize {
        match i % 5 {
            0..=2 => 0,
            3 => 1,
            _ => 2,
        }
    }

    fn zone(i: usize) -> (String, String) {
        let region = i % REGIONS;
        let zone = (i / REGIONS) % ZONES_PER_REGION;
        (
            format!("region-{region}"),
            format!("edge-zone-{region}-{zone}"),
        )
    }

    /// A node of kind `kind` near `i` (same region and zone when possible).
    fn near(&self, i: usize, kind: usize) -> usize {
        let block = REGIONS * ZONES_PER_REGION;
        let mut j = i;
        for _ in 0..40 {
            j = (j + block) % self.nodes.max(1);
            if Self::kind(j) == kind {
                return j;
            }
        }
        (i + 1) % self.nodes.max(1)
    }

    fn topology(&self, i: usize, rng: &mut Rng) -> TopologyReported {
        let mut links = Vec::new();
        match Self::kind(i) {
            0 => {
                links.push(PeerLink {
                    peer: Self::id(self.near(i, 1)),
                    link_type: LinkType::Signaling,
                });
                if rng.below(4) == 0 {
                    links.push(PeerLink {
                        peer: Self::id(self.near(i, 2)),
                        link_type: LinkType::Bypass,
                    });
                }
            }
            1 => {
                links.push(PeerLink {
                    peer: Self::id(self.near(i, 2)),
                    link_type: LinkType::Media,
                });
                links.push(PeerLink {
                    peer: Self::id(self.near(i + 1, 1)),
                    link_type: LinkType::Control,
                });
            }
            _ => {}
        }
        let clusters = match Self::kind(i) {
            0 => vec![FUNCTIONAL[0].to_owned()],
            2 => vec![FUNCTIONAL[1].to_owned()],
            _ => vec![FUNCTIONAL[2 + i % 2].to_owned()],
        };
        TopologyReported { links, clusters }
    }

    /// The first events of a node: who it is and what it runs.
    fn inventory(&self, i: usize, rng: &mut Rng) -> Vec<EventPayload> {
        let (region, zone) = Self::zone(i);
        let component = COMPONENTS[Self::kind(i)];
        let version = *rng.pick(&VERSIONS);
        vec![
            EventPayload::IdentityReported(IdentityReported {
                component_type: component.into(),
                region: region.clone(),
                zone,
                trust_chain: vec![],
            }),
            EventPayload::HardwareReported(Hardware {
                serial: format!("HW-2024-Q3-{i:06}"),
                manufacturing_origin: "Factory-A".into(),
                batch_id: "BATCH-2024-Q3-001".into(),
                firmware_version: "2.1.3".into(),
                firmware_signature: "sha256:abc".into(),
            }),
            EventPayload::SoftwareReported(SoftwareReported {
                component: component.into(),
                version: version.into(),
                sbom_hash: format!("sha256:{version}"),
                image_provenance: "signed-by-build-system".into(),
            }),
            EventPayload::TrustChainValidated(TrustChainValidated {
                chain: vec![CertificateRef {
                    issuer: format!("souverix-{region}-ca"),
                    subject: Self::id(i),
                    valid_until: STREAM_START.plus(Span::from_secs((10 + rng.below(200)) * 86_400)),
                    signature: format!("sha256:{:016x}", rng.next()),
                }],
            }),
            EventPayload::SbomUpdated(SbomEntry {
                component: component.into(),
                version: version.into(),
                sbom_hash: format!("sha256:{version}"),
                provenance: "signed-by-build-system".into(),
                dependencies: vec!["openssl-3.0.13".into(), "libsrtp-2.5".into()],
            }),
            EventPayload::TopologyReported(self.topology(i, rng)),
            config_event(rng),
            EventPayload::PolicyApplied(PolicyApplied {
                policy_version: rng.pick(&["policy-v2.0", "policy-v2.1"]).to_string(),
                compliance_score: *rng.pick(&[0.7, 0.95, 1.0]),
            }),
            EventPayload::ProvisioningCompleted(Note { reason: None }),
        ]
    }

    /// One operational event, in the mix a running fleet records: mostly
    /// connectivity (transitions, syncs, replays), then attestation,
    /// configuration, updates, maintenance, drift, rare topology and
    /// certificate changes.
    fn operational(
        &self,
        i: usize,
        seq: u64,
        state: &mut ConnectivityState,
        rng: &mut Rng,
    ) -> EventPayload {
        use ConnectivityState::*;
        let roll = rng.below(100);
        match roll {
            0..=39 => {
                let from = *state;
                let to = match from {
                    Live => *rng.pick(&[Delayed, Delayed, EdgeCached, Autonomous]),
                    Delayed => *rng.pick(&[Live, Live, EdgeCached]),
                    EdgeCached => *rng.pick(&[Live, Autonomous]),
                    Autonomous | Disconnected => Returning,
                    Returning => Replaying,
                    Replaying => Live,
                };
                *state = to;
                EventPayload::ConnectivityTransition(ConnectivityTransition {
                    from,
                    to,
                    reason: match to {
                        Autonomous => Some("connection_lost".into()),
                        Returning => Some("connection_detected".into()),
                        _ => None,
                    },
                    latency_ms: matches!(to, Live | Delayed).then(|| 20 + rng.below(5_000) as u32),
                    backlog: (to == Replaying).then(|| rng.below(5_000)),
                    sync_interval: (to == EdgeCached).then(|| Span::from_mins(15)),
                })
            }
            40..=59 => EventPayload::SyncCompleted(SyncCompleted {
                acked_seq: seq.saturating_sub(1 + rng.below(3)),
                via: SyncPath::Quic,
            }),
            60..=64 => EventPayload::ReplayCompleted(ReplayCompleted {
                replayed: rng.below(5_000),
            }),
            65..=74 => EventPayload::AttestationPerformed(AttestationPerformed {
                result: if rng.below(50) == 0 {
                    AttestationState::Failed
                } else {
                    AttestationState::Verified
                },
                detail: None,
            }),
            75..=79 => config_event(rng),
            80..=82 => EventPayload::PolicyApplied(PolicyApplied {
                policy_version: rng.pick(&["policy-v2.0", "policy-v2.1"]).to_string(),
                compliance_score: *rng.pick(&[0.7, 0.95, 1.0]),
            }),
            83..=85 => {
                let to = *rng.pick(&VERSIONS);
                if rng.below(2) == 0 {
                    EventPayload::UpdateInitiated(Update {
                        from_version: "1.4.6".into(),
                        to_version: to.into(),
                    })
                } else {
                    EventPayload::UpdateCompleted(UpdateCompleted {
                        from_version: "1.4.6".into(),
                        to_version: to.into(),
                        succeeded: rng.below(10) != 0,
                    })
                }
            }
            86..=89 => {
                if rng.below(2) == 0 {
                    EventPayload::MaintenanceStarted(MaintenanceStarted {
                        window_id: format!("mw-{}", rng.below(100)),
                        reason: Some("firmware".into()),
                        planned_end: None,
                    })
                } else {
                    EventPayload::MaintenanceCompleted(MaintenanceCompleted {
                        window_id: "mw".into(),
                    })
                }
            }
            90..=94 => EventPayload::PolicyDrift(PolicyDrift {
                desired_policy: "policy-v2.1".into(),
                actual_policy: "policy-v2.0".into(),
                compliance_score: 0.95,
                violations: 1,
            }),
            95..=96 => EventPayload::OperationalTransition(OperationalTransition {
                from: sx_common::model::OperationalState::InService,
                to: sx_common::model::OperationalState::Degraded,
                reason: None,
            }),
            97 => EventPayload::TopologyReported(self.topology(i, rng)),
            98 => EventPayload::CertificateRotated(CertificateRotated {
                old_fingerprint: "sha256:old".into(),
                new_fingerprint: format!("sha256:{:016x}", rng.next()),
                new_certificate: String::new(),
                new_valid_until: STREAM_START.plus(Span::from_secs(365 * 86_400)),
            }),
            _ => EventPayload::SbomUpdated(SbomEntry {
                component: "libsrtp".into(),
                version: "2.5".into(),
                sbom_hash: "sha256:srtp".into(),
                provenance: "signed-by-build-system".into(),
                dependencies: vec![],
            }),
        }
    }

    /// Node `i`'s first `count` events.
    fn history(&self, i: usize, count: usize, rng: &mut Rng) -> Vec<Event> {
        let node = Self::id(i);
        let mut at = STREAM_START;
        let mut state = ConnectivityState::Disconnected;
        let mut out = Vec::with_capacity(count);
        let mut payloads = self.inventory(i, rng).into_iter();
        for seq in 1..=count as u64 {
            let payload = match payloads.next() {
                Some(p) => p,
                None => self.operational(i, seq, &mut state, rng),
            };
            at = at.plus(Span::from_secs(rng.below(900)));
            out.push(Event {
                node_id: node.clone(),
                seq,
                timestamp: at,
                prev_hash: Digest::GENESIS,
                payload,
            });
        }
        out
    }
}

fn config_event(rng: &mut Rng) -> EventPayload {
    EventPayload::ConfigReported(ConfigReported {
        values: [
            (
                "stir.enforcement_mode".to_owned(),
                ConfigValue::from(*rng.pick(&["soft", "hard", "hard", "hard"])),
            ),
            (
                "rate_limit.max_cps".to_owned(),
                ConfigValue::Int(*rng.pick(&[1500, 2000, 2000])),
            ),
            ("sip.max_forwards".to_owned(), ConfigValue::Int(70)),
        ]
        .into(),
    })
}

fn spec() -> DesiredSpec {
    DesiredSpec {
        software: COMPONENTS
            .iter()
            .map(|c| VersionRule {
                component: (*c).into(),
                scope: Scope::Fleet,
                version: "1.4.7".into(),
            })
            .collect(),
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
            notes: None,
        }],
    }
}

fn desired_change() -> DesiredChange {
    DesiredChange {
        seq: 1,
        at: STREAM_START,
        by: "bench".into(),
        change: DesiredChangeKind::Replace { spec: spec() },
    }
}

/// Resident set size of this process, in bytes.
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// CPU time this process has used (user + system), from `/proc/self/stat`
/// (10 ms resolution). Beside wall time, it shows what the work costs when
/// other processes compete for the cores.
fn cpu_time() -> Duration {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // After the command: state is field 3; utime 14 and stime 15.
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Run in a child process: load a snapshot into a fresh heap and report
/// the resident memory it takes per twin.
fn measure_snapshot(path: &str) {
    let before = rss();
    let bytes = std::fs::read(path).expect("read");
    let engine = ProjectionEngine::from_snapshot(&bytes).expect("decode");
    drop(bytes);
    let after = rss();
    let per_twin = after.saturating_sub(before) as f64 / engine.len().max(1) as f64;
    println!(
        "  resident memory after a restart from the snapshot (fresh process): {:.1} MiB -> {:.1} MiB = {:.0} bytes/twin ({:.2} KiB/twin, target <= 4 KiB: {})",
        mib(before),
        mib(after),
        per_twin,
        per_twin / 1024.0,
        if per_twin <= 4096.0 { "met" } else { "MISSED" }
    );
    black_box(engine);
}

struct Latencies(Vec<Duration>);

impl Latencies {
    fn measure(iterations: usize, mut f: impl FnMut(usize)) -> Self {
        let mut out = Vec::with_capacity(iterations);
        for i in 0..iterations {
            let t = Instant::now();
            f(i);
            out.push(t.elapsed());
        }
        out.sort();
        Latencies(out)
    }

    fn quantile(&self, q: f64) -> Duration {
        let i = ((self.0.len() as f64 * q).ceil() as usize).clamp(1, self.0.len()) - 1;
        self.0[i]
    }

    fn report(&self, name: &str, target: Option<Duration>) {
        let p99 = self.quantile(0.99);
        let verdict = match target {
            Some(t) if p99 <= t => format!("  (target <= {t:?}: met)"),
            Some(t) => format!("  (target <= {t:?}: MISSED)"),
            None => String::new(),
        };
        println!(
            "  {name:<44} n={:<5} p50 {:>10.3?}  p99 {:>10.3?}  max {:>10.3?}{verdict}",
            self.0.len(),
            self.quantile(0.5),
            p99,
            self.0.last().copied().unwrap_or_default(),
        );
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() {
    if let Ok(path) = std::env::var("SX_BENCH_MEASURE_SNAPSHOT") {
        measure_snapshot(&path);
        return;
    }
    let nodes = env("SX_BENCH_NODES", 100_000);
    let per_node = env("SX_BENCH_EVENTS_PER_NODE", 100);
    let store_nodes = env("SX_BENCH_STORE_NODES", 10_000).min(nodes);
    let live_events = env("SX_BENCH_LIVE_EVENTS", 1_000_000);
    let total = nodes * per_node;
    let fleet = Fleet { nodes };
    println!(
        "projection benchmark: {nodes} twins x {per_node} events = {total} events \
         (store-backed: {store_nodes} twins); load average at start: {}",
        load_average()
    );

    // 1. Full rebuild through the engine, memory per twin.
    let rss_before = rss();
    let mut engine = ProjectionEngine::new();
    engine.apply_desired(&desired_change());
    let mut rng = Rng(7);
    let mut applying = Duration::ZERO;
    let mut generating = Duration::ZERO;
    let cpu_start = cpu_time();
    for i in 0..nodes {
        let t = Instant::now();
        let events = fleet.history(i, per_node, &mut rng);
        generating += t.elapsed();
        let t = Instant::now();
        black_box(engine.apply(events.iter()));
        applying += t.elapsed();
    }
    let phase_cpu = cpu_time() - cpu_start;
    let rss_after = rss();
    let per_twin = rss_after.saturating_sub(rss_before) as f64 / nodes as f64;
    println!("\n1. full rebuild through ProjectionEngine::apply (in-memory events)");
    println!(
        "  applied {total} events in {applying:.2?} wall: {:.0} events/s ({:.0} ns/event); \
         generating them took {generating:.2?} (not counted)",
        total as f64 / applying.as_secs_f64(),
        applying.as_nanos() as f64 / total as f64
    );
    println!(
        "  CPU time of the whole part (generating + applying): {phase_cpu:.2?} for {:.2?} wall",
        generating + applying
    );
    println!(
        "  resident memory: {:.1} MiB -> {:.1} MiB = {:.0} bytes/twin ({:.2} KiB/twin, target <= 4 KiB: {})",
        mib(rss_before),
        mib(rss_after),
        per_twin,
        per_twin / 1024.0,
        if per_twin <= 4096.0 { "met" } else { "MISSED" }
    );
    println!(
        "  graph: {} vertices, {} edges, {} clusters",
        engine.graph().node_count(),
        engine.graph().edge_count(),
        engine.graph().clusters().count()
    );

    let stop_after = env("SX_BENCH_STOP_AFTER", 5);
    if stop_after < 2 {
        return;
    }

    if let Ok(by) = std::env::var("SX_BENCH_PROFILE_DRIFT") {
        // Profiling aid: repeat one drift view.
        let by: GroupBy = by.parse().unwrap_or(GroupBy::Zone);
        let t = Instant::now();
        for _ in 0..200 {
            black_box(views::drift_by(&engine, by));
        }
        println!("  200 x drift_by({by:?}): {:.2?} each", t.elapsed() / 200);
        if stop_after < 2 {
            return;
        }
    }
    // 2. Incremental update cost: live events for random nodes, one per call.
    let mut heads: Vec<(u64, Timestamp, ConnectivityState)> = (0..nodes)
        .map(|i| {
            engine.node(&Fleet::id(i)).map_or(
                (0, STREAM_START, ConnectivityState::Disconnected),
                |v| {
                    (
                        v.twin.last_seq,
                        v.twin.last_event_at.unwrap_or(STREAM_START),
                        v.twin.connectivity.state,
                    )
                },
            )
        })
        .collect();
    // Live events for random nodes, continuing each node's stream.
    let mut next_events = |count: usize, rng: &mut Rng| -> Vec<Event> {
        let mut live = Vec::with_capacity(count);
        for _ in 0..count {
            let i = rng.below(nodes as u64) as usize;
            let (seq, at, state) = &mut heads[i];
            *seq += 1;
            *at = at.plus(Span::from_secs(rng.below(60)));
            live.push(Event {
                node_id: Fleet::id(i),
                seq: *seq,
                timestamp: *at,
                prev_hash: Digest::GENESIS,
                payload: fleet.operational(i, *seq, state, rng),
            });
        }
        live
    };
    let live = next_events(live_events, &mut rng);
    let t = Instant::now();
    let c = cpu_time();
    for e in &live {
        black_box(engine.apply(std::iter::once(e)));
    }
    let took = t.elapsed();
    let took_cpu = cpu_time() - c;
    println!("\n2. incremental update (one event per apply, random nodes of the full fleet)");
    println!(
        "  {live_events} events in {took:.2?} wall: {:.0} ns/event ({:.0} events/s); CPU {took_cpu:.2?}: {:.0} ns/event",
        took.as_nanos() as f64 / live_events as f64,
        live_events as f64 / took.as_secs_f64(),
        took_cpu.as_nanos() as f64 / live_events as f64,
    );
    drop(live);
    if stop_after < 3 {
        return;
    }

    if let Ok(by) = std::env::var("SX_BENCH_PROFILE_DRIFT") {
        // Profiling aid: repeat one drift view.
        let by: GroupBy = by.parse().unwrap_or(GroupBy::Zone);
        let t = Instant::now();
        for _ in 0..200 {
            black_box(views::drift_by(&engine, by));
        }
        println!("  200 x drift_by({by:?}): {:.2?} each", t.elapsed() / 200);
        if stop_after < 3 {
            return;
        }
    }
    // 3. Query latencies.
    println!("\n3. query latencies on {} twins", engine.len());
    let ids: Vec<String> = (0..1_000)
        .map(|_| Fleet::id(rng.below(nodes as u64) as usize))
        .collect();
    let target = Some(Duration::from_millis(5));
    Latencies::measure(1_000, |i| {
        black_box(engine.node(&ids[i]).map(|v| v.twin.clone()));
    })
    .report("one twin: lookup + clone", target);
    Latencies::measure(1_000, |i| {
        black_box(
            engine
                .node(&ids[i])
                .map(|v| serde_json::to_vec(v).unwrap_or_default()),
        );
    })
    .report("one twin: lookup + JSON (whole node view)", target);
    Latencies::measure(1_000, |i| {
        black_box(engine.graph().neighbours(&ids[i], None));
    })
    .report("neighbours of a node", target);
    Latencies::measure(200, |_| {
        black_box(views::drift_by(&engine, GroupBy::Zone));
    })
    .report("drift_by(Zone)", target);
    // The same while the fleet changes: a burst of live events applied
    // between queries (not timed), so lists emptied by changes are
    // refilled within the timed query.
    let bursts: Vec<Vec<Event>> = (0..200).map(|_| next_events(1_000, &mut rng)).collect();
    let mut took = Vec::with_capacity(bursts.len());
    for burst in &bursts {
        for e in burst {
            black_box(engine.apply(std::iter::once(e)));
        }
        let t = Instant::now();
        black_box(views::drift_by(&engine, GroupBy::Zone));
        took.push(t.elapsed());
    }
    took.sort();
    Latencies(took).report("drift_by(Zone), 1,000 live events before each", target);
    Latencies::measure(200, |_| {
        black_box(views::drift_by(&engine, GroupBy::Global));
    })
    .report("drift_by(Global)", None);
    Latencies::measure(50, |_| {
        black_box(views::drift_by(&engine, GroupBy::Cluster));
    })
    .report("drift_by(Cluster)", None);
    let now = STREAM_START.plus(Span::from_secs(7 * 86_400));
    // What the API serves: no observation yet (every node stale), then
    // every node observed, the observations held in the engine as the
    // aggregator records them.
    Latencies::measure(200, |_| {
        black_box(views::connectivity_observed_by(
            &engine,
            GroupBy::Global,
            Span::from_mins(5),
            now,
        ));
    })
    .report("connectivity spectrum (Global), 0% observed", target);
    for i in 0..nodes {
        engine.observe(
            &Fleet::id(i),
            Observed {
                last_sync: Some(now.plus(Span::ZERO)),
                backlog: rng.below(10),
                backlog_since: None,
                connected: rng.below(10) != 0,
            },
        );
    }
    Latencies::measure(200, |_| {
        black_box(views::connectivity_observed_by(
            &engine,
            GroupBy::Global,
            Span::from_mins(5),
            now,
        ));
    })
    .report("connectivity spectrum (Global), 100% observed", target);
    Latencies::measure(200, |_| {
        black_box(views::connectivity_observed_by(
            &engine,
            GroupBy::Zone,
            Span::from_mins(5),
            now,
        ));
    })
    .report("connectivity spectrum (Zone), 100% observed", None);
    Latencies::measure(20, |_| {
        black_box(views::lifecycle_by(&engine, GroupBy::Zone));
    })
    .report("lifecycle_by(Zone)", None);
    let coeur = Fleet::id(3);
    Latencies::measure(20, |_| {
        black_box(
            engine
                .graph()
                .impact(&Outage::Node(coeur.clone()), FUNCTIONAL[1]),
        );
    })
    .report("impact(node dark, media-relay-cluster)", None);
    Latencies::measure(5, |_| {
        black_box(
            engine
                .graph()
                .impact_all(&Outage::Zone("edge-zone-0-0".into())),
        );
    })
    .report("impact_all(zone dark)", None);
    Latencies::measure(5, |_| {
        black_box(graph::view(&engine, &GraphFilter::default()));
    })
    .report("graph::view (whole fleet)", None);
    Latencies::measure(5, |_| {
        black_box(trust::fleet_alerts(
            &engine,
            &[],
            &[],
            &[],
            &trust::TrustPolicy::default(),
            now,
        ));
    })
    .report("trust::fleet_alerts", None);

    if stop_after < 4 {
        return;
    }

    // 4. Restart from a snapshot.
    println!("\n4. restart from a snapshot ({} twins)", engine.len());
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("projections.snapshot");
    let t = Instant::now();
    let bytes = engine.to_snapshot();
    let encode = t.elapsed();
    let t = Instant::now();
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&path).expect("create");
        f.write_all(&bytes).expect("write");
        f.sync_all().expect("fsync");
    }
    let write = t.elapsed();
    let size = bytes.len();
    drop(bytes);
    match std::process::Command::new(std::env::current_exe().expect("own path"))
        .env("SX_BENCH_MEASURE_SNAPSHOT", &path)
        .output()
    {
        Ok(out) => print!("{}", String::from_utf8_lossy(&out.stdout)),
        Err(e) => println!("  (could not measure the restarted engine's memory: {e})"),
    }
    let t = Instant::now();
    let bytes = std::fs::read(&path).expect("read");
    let read = t.elapsed();
    let t = Instant::now();
    let mut restored = ProjectionEngine::from_snapshot(&bytes).expect("decode");
    let decode = t.elapsed();
    drop(bytes);
    let tail_events = (live_events / 10).max(1);
    let tail = next_events(tail_events, &mut rng);
    let t = Instant::now();
    for e in &tail {
        restored.apply(std::iter::once(e));
    }
    let tail_took = t.elapsed();
    println!(
        "  snapshot {:.1} MiB ({:.0} bytes/twin): encode {encode:.2?}, write+fsync {write:.2?}",
        mib(size as u64),
        size as f64 / nodes as f64
    );
    println!("  load: read {read:.2?}, decode + graph rebuild {decode:.2?}");
    println!("  tail of {tail_events} events applied in {tail_took:.2?}");
    println!(
        "  restart total (load + tail): {:.2?}; save: {:.2?}",
        read + decode + tail_took,
        encode + write
    );
    drop(restored);
    drop(tail);
    drop(engine);
    if stop_after < 5 {
        return;
    }

    // 5. Store-backed rebuild and restart.
    let store_total = store_nodes * per_node;
    println!(
        "\n5. store-backed: RedbStore with {store_nodes} twins x {per_node} = {store_total} events"
    );
    let sdir = tempfile::tempdir().expect("tempdir");
    let store =
        std::sync::Arc::new(RedbStore::open(sdir.path().join("events.redb")).expect("open"));
    let mut rng = Rng(11);
    let t = Instant::now();
    let mut pending: Vec<Submission> = Vec::new();
    let mut appending = Duration::ZERO;
    let submit = |pending: &mut Vec<Submission>, appending: &mut Duration| {
        if pending.is_empty() {
            return;
        }
        let t = Instant::now();
        let verdicts = store.append(pending).expect("append");
        *appending += t.elapsed();
        assert!(
            verdicts.iter().all(Result::is_ok),
            "the store refused a batch"
        );
        pending.clear();
    };
    for i in 0..store_nodes {
        let key = ed25519_dalek::SigningKey::from_bytes(&[(i % 251) as u8 + 1; 32]);
        let events = fleet.history(i, per_node, &mut rng);
        let sealed = seal_stream(
            &Fleet::id(i),
            ChainHead::default(),
            events.into_iter().map(|e| (e.timestamp, e.payload)),
        );
        // Batches of 50 events, as agent write transactions.
        for chunk in sealed.chunks(50) {
            let cp = checkpoint(&key, chunk).expect("non-empty");
            pending.push(Submission {
                node_id: Fleet::id(i),
                key: key.verifying_key(),
                cert_fingerprint: "sha256:00".into(),
                events: chunk.to_vec(),
                checkpoint: cp,
                via: SyncPath::Quic,
                received_at: STREAM_START,
                news: true,
            });
        }
        // Group commits of 64 submissions (3,200 events).
        if pending.len() >= 64 {
            submit(&mut pending, &mut appending);
        }
    }
    submit(&mut pending, &mut appending);
    store
        .append_desired(
            STREAM_START,
            "bench",
            DesiredChangeKind::Replace { spec: spec() },
        )
        .expect("desired");
    println!(
        "  filled in {:.2?} (of which store.append {appending:.2?}: {:.0} events/s verified and committed)",
        t.elapsed(),
        store_total as f64 / appending.as_secs_f64()
    );
    let t = Instant::now();
    let rebuilt = service::rebuild(store.as_ref()).expect("rebuild");
    let took = t.elapsed();
    let rate = store_total as f64 / took.as_secs_f64();
    println!(
        "  service::rebuild: {store_total} events in {took:.2?}: {rate:.0} events/s \
         => 10M events extrapolated: {:.0} s",
        10_000_000.0 / rate
    );
    let snap = sdir.path().join("projections.snapshot");
    let dyn_store: std::sync::Arc<dyn EventStore> = store.clone();
    let (projections, _) = Projections::open(dyn_store.clone(), &snap).expect("open");
    let t = Instant::now();
    let saved = projections.save_snapshot().expect("save");
    let save = t.elapsed();
    drop(projections);
    // A tail: 10% more events on 10% of the nodes.
    let mut tail = 0;
    for i in (0..store_nodes).step_by(10) {
        let key = ed25519_dalek::SigningKey::from_bytes(&[(i % 251) as u8 + 1; 32]);
        let node = Fleet::id(i);
        let head = store.head(&node).expect("head");
        let mut state = ConnectivityState::Live;
        let items: Vec<(Timestamp, EventPayload)> = (1..=per_node as u64)
            .map(|k| {
                (
                    STREAM_START.plus(Span::from_secs(30 * 86_400 + k)),
                    fleet.operational(i, head.seq + k, &mut state, &mut rng),
                )
            })
            .collect();
        let sealed = seal_stream(&node, head, items);
        tail += sealed.len();
        let cp = checkpoint(&key, &sealed).expect("non-empty");
        store
            .append(&[Submission {
                node_id: node,
                key: key.verifying_key(),
                cert_fingerprint: "sha256:00".into(),
                events: sealed,
                checkpoint: cp,
                via: SyncPath::Quic,
                received_at: STREAM_START,
                news: true,
            }])
            .expect("append");
    }
    let t = Instant::now();
    let (restarted, startup) = Projections::open(dyn_store, &snap).expect("open");
    let open = t.elapsed();
    println!(
        "  Projections snapshot save: {:.1} MiB in {save:.2?}; restart (load + tail of {} events): {open:.2?} (from_snapshot: {})",
        mib(saved as u64),
        startup.tail_events,
        startup.from_snapshot
    );
    assert_eq!(startup.tail_events as usize, tail);
    let equal = restarted.read(|e| e.len() == rebuilt.len());
    println!(
        "  restarted engine holds {} twins (same as rebuilt: {equal})",
        restarted.read(|e| e.len())
    );
}
