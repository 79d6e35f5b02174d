//! The fleet to simulate, decided up front from the seed: regions, zones,
//! nodes, their links and clusters, what they run against what is desired.
//! Pure: same seed and size, same plan.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use sx_common::desired::{ConfigRule, DesiredSpec, PolicyRule, ReleaseEntry, Scope, VersionRule};
use sx_common::model::ConfigValue;

pub const REMPART: &str = "souverix-rempart";
pub const COEUR: &str = "souverix-coeur";
pub const RELAIS: &str = "souverix-relais";

/// The functional cluster each component type declares.
pub fn functional_cluster(component: &str) -> &'static str {
    match component {
        REMPART => "iBCF-interconnect-cluster",
        COEUR => "core-session-cluster",
        _ => "media-relay-cluster",
    }
}

/// Desired versions at the start of the run.
pub fn desired_version(component: &str) -> &'static str {
    match component {
        REMPART => "2.4.1",
        COEUR => "3.1.0",
        _ => "1.8.2",
    }
}

/// The version the roll-out moves `souverix-coeur` to.
pub const ROLLOUT_VERSION: &str = "3.2.0";
pub const POLICY: &str = "pol-2026.02";
pub const OLD_POLICY: &str = "pol-2025.11";

/// One region and the aggregator serving it.
#[derive(Clone, Debug)]
pub struct Region {
    pub name: String,
    pub aggregator: String,
    pub zones: Vec<String>,
}

/// One simulated node.
#[derive(Clone, Debug)]
pub struct NodePlan {
    pub id: String,
    pub component: String,
    pub region: String,
    pub zone: String,
    /// Index into [`FleetPlan::regions`].
    pub region_index: usize,
    pub version: String,
    pub config: BTreeMap<String, ConfigValue>,
    pub policy: String,
    /// (peer, link type) this node declares.
    pub links: Vec<(String, &'static str)>,
    /// Functional clusters beyond region and zone.
    pub clusters: Vec<String>,
    /// A node on a slow link: its agent's delay threshold is below
    /// loopback RTT, so it reports `delayed` while connected.
    pub slow_link: bool,
    /// An air-gapped node: no agent daemon, events move in bundles.
    pub air_gapped: bool,
}

/// The whole plan.
#[derive(Clone, Debug)]
pub struct FleetPlan {
    pub regions: Vec<Region>,
    pub nodes: Vec<NodePlan>,
}

fn desired_config(component: &str) -> BTreeMap<String, ConfigValue> {
    let mut m = BTreeMap::new();
    m.insert("tls.min_version".to_owned(), ConfigValue::from("1.3"));
    m.insert("telemetry.interval_s".to_owned(), ConfigValue::from(30));
    match component {
        REMPART => {
            m.insert("sip.max_sessions".to_owned(), ConfigValue::from(5000));
            m.insert("sip.topology_hiding".to_owned(), ConfigValue::Bool(true));
        }
        COEUR => {
            m.insert("session.timer_s".to_owned(), ConfigValue::from(1800));
            m.insert("routing.policy".to_owned(), ConfigValue::from("least-cost"));
        }
        _ => {
            m.insert("media.codec".to_owned(), ConfigValue::from("opus"));
            m.insert("media.max_streams".to_owned(), ConfigValue::from(2000));
        }
    }
    m
}

/// The desired state every aggregator starts from.
pub fn desired_spec() -> DesiredSpec {
    let software = [REMPART, COEUR, RELAIS]
        .iter()
        .map(|c| VersionRule {
            component: (*c).to_owned(),
            scope: Scope::Fleet,
            version: desired_version(c).to_owned(),
        })
        .collect();
    let config = [REMPART, COEUR, RELAIS]
        .iter()
        .map(|c| ConfigRule {
            scope: Scope::Fleet,
            component: Some((*c).to_owned()),
            values: desired_config(c),
        })
        .collect();
    DesiredSpec {
        software,
        config,
        policy: vec![PolicyRule {
            scope: Scope::Fleet,
            version: POLICY.to_owned(),
        }],
        releases: vec![
            ReleaseEntry {
                component: REMPART.to_owned(),
                version: "2.4.1".to_owned(),
                security_fix: true,
                notes: Some("SIP header injection fix".to_owned()),
            },
            ReleaseEntry {
                component: COEUR.to_owned(),
                version: ROLLOUT_VERSION.to_owned(),
                security_fix: false,
                notes: Some("session timer rework".to_owned()),
            },
        ],
    }
}

/// A version `steps` behind `v` at the given part (0 major, 1 minor, 2 patch).
fn behind(v: &str, part: usize) -> String {
    let mut parts: Vec<u32> = v.split('.').filter_map(|p| p.parse().ok()).collect();
    parts.resize(3, 0);
    if parts[part] > 0 {
        parts[part] -= 1;
    } else {
        parts[part] = 9;
    }
    format!("{}.{}.{}", parts[0], parts[1], parts[2])
}

impl FleetPlan {
    /// A fleet of about `nodes` nodes (at least 8) over two regions of two
    /// zones, plus an air-gapped site of two nodes in the second region.
    pub fn new(seed: u64, nodes: usize) -> FleetPlan {
        let mut rng = StdRng::seed_from_u64(seed);
        let regions = vec![
            Region {
                name: "region-a".into(),
                aggregator: "agg-region-a".into(),
                zones: vec!["edge-zone-a1".into(), "core-zone-a2".into()],
            },
            Region {
                name: "region-b".into(),
                aggregator: "agg-region-b".into(),
                zones: vec!["edge-zone-b1".into(), "core-zone-b2".into()],
            },
        ];
        let connected = nodes.max(8);
        let zones: Vec<(usize, String)> = regions
            .iter()
            .enumerate()
            .flat_map(|(i, r)| r.zones.iter().map(move |z| (i, z.clone())))
            .collect();
        let mut plan = FleetPlan {
            regions,
            nodes: Vec::new(),
        };
        for (zi, (ri, zone)) in zones.iter().enumerate() {
            let count = connected / zones.len() + usize::from(zi < connected % zones.len());
            let short = zone.rsplit('-').next().unwrap_or(zone).to_owned();
            for i in 0..count {
                // One coeur in five, at least one per zone; rempart and
                // relais share the rest (all three from three nodes up).
                let component = match i % 5 {
                    0 => COEUR,
                    1 | 3 => REMPART,
                    _ => RELAIS,
                };
                let node = plan.node(
                    &mut rng,
                    format!(
                        "sx-{}-2026-{short}-node-{:02}",
                        component.trim_start_matches("souverix-"),
                        i + 1
                    ),
                    component,
                    *ri,
                    zone,
                );
                plan.nodes.push(node);
            }
        }
        for i in 0..2 {
            let component = if i == 0 { COEUR } else { REMPART };
            let mut node = plan.node(
                &mut rng,
                format!(
                    "sx-{}-2026-b9-sealed-node-{:02}",
                    component.trim_start_matches("souverix-"),
                    i + 1
                ),
                component,
                1,
                "sealed-site-b9",
            );
            node.air_gapped = true;
            node.slow_link = false;
            plan.nodes.push(node);
        }
        plan.link(&mut rng);
        plan
    }

    fn node(
        &self,
        rng: &mut StdRng,
        id: String,
        component: &str,
        region_index: usize,
        zone: &str,
    ) -> NodePlan {
        let desired = desired_version(component);
        let roll: f64 = rng.r#gen();
        let version = if roll < 0.80 {
            desired.to_owned()
        } else if roll < 0.92 {
            behind(desired, 2)
        } else if roll < 0.97 {
            behind(desired, 1)
        } else {
            behind(desired, 0)
        };
        let mut config = desired_config(component);
        if rng.gen_bool(0.15) {
            let keys: Vec<String> = config.keys().cloned().collect();
            let key = &keys[rng.gen_range(0..keys.len())];
            let drifted = match &config[key] {
                ConfigValue::Int(i) => ConfigValue::Int(i / 2),
                ConfigValue::Bool(b) => ConfigValue::Bool(!b),
                ConfigValue::Text(t) if t == "1.3" => ConfigValue::from("1.2"),
                ConfigValue::Text(t) => ConfigValue::Text(format!("{t}-legacy")),
                ConfigValue::Float(f) => ConfigValue::Float(f * 2.0),
            };
            config.insert(key.clone(), drifted);
        }
        let policy = if rng.gen_bool(0.1) {
            OLD_POLICY
        } else {
            POLICY
        };
        NodePlan {
            id,
            component: component.to_owned(),
            region: self.regions[region_index].name.clone(),
            zone: zone.to_owned(),
            region_index,
            version,
            config,
            policy: policy.to_owned(),
            links: Vec::new(),
            clusters: vec![functional_cluster(component).to_owned()],
            slow_link: rng.gen_bool(0.08),
            air_gapped: false,
        }
    }

    /// Declares the links: rempart → a coeur of its zone (signaling,
    /// control); relais → a rempart (media) and a coeur (control) of its
    /// zone; coeur → the first coeur of the region's other zone
    /// (signaling); some rempart → a coeur of the other zone (bypass).
    fn link(&mut self, rng: &mut StdRng) {
        let by_zone = |nodes: &[NodePlan], zone: &str, comp: &str| -> Vec<String> {
            nodes
                .iter()
                .filter(|n| n.zone == zone && n.component == comp)
                .map(|n| n.id.clone())
                .collect()
        };
        let snapshot = self.nodes.clone();
        for n in &mut self.nodes {
            let coeurs = by_zone(&snapshot, &n.zone, COEUR);
            let remparts = by_zone(&snapshot, &n.zone, REMPART);
            let other_zone = self.regions[n.region_index]
                .zones
                .iter()
                .find(|z| **z != n.zone)
                .cloned()
                .unwrap_or_default();
            let far_coeurs = by_zone(&snapshot, &other_zone, COEUR);
            let pick = |rng: &mut StdRng, v: &[String]| -> Option<String> {
                (!v.is_empty()).then(|| v[rng.gen_range(0..v.len())].clone())
            };
            match n.component.as_str() {
                REMPART => {
                    if let Some(c) = pick(rng, &coeurs) {
                        n.links.push((c.clone(), "signaling"));
                        n.links.push((c, "control"));
                    }
                    if rng.gen_bool(0.3)
                        && let Some(c) = pick(rng, &far_coeurs)
                    {
                        n.links.push((c, "bypass"));
                    }
                }
                COEUR => {
                    if let Some(c) = far_coeurs.first() {
                        n.links.push((c.clone(), "signaling"));
                    }
                }
                _ => {
                    if let Some(r) = pick(rng, &remparts) {
                        n.links.push((r, "media"));
                    }
                    if let Some(c) = pick(rng, &coeurs) {
                        n.links.push((c, "control"));
                    }
                }
            }
        }
    }

    /// Nodes with a running agent (not air-gapped).
    pub fn connected(&self) -> impl Iterator<Item = &NodePlan> {
        self.nodes.iter().filter(|n| !n.air_gapped)
    }

    pub fn node_by_id(&self, id: &str) -> Option<&NodePlan> {
        self.nodes.iter().find(|n| n.id == id)
    }
}

/// The inventory a node records after its agent starts, as (type, payload).
pub fn inventory(n: &NodePlan, seed: u64) -> Vec<(&'static str, Value)> {
    let digest = |what: &str| {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (seed, &n.id, what).hash(&mut h);
        format!(
            "sha256:{:016x}{:016x}",
            h.finish(),
            h.finish().rotate_left(17)
        )
    };
    let serial = format!(
        "SX-{}-{}",
        n.component.trim_start_matches("souverix-").to_uppercase(),
        &digest("serial")[7..19]
    );
    let sbom = digest(&format!("sbom-{}", n.version));
    let links: Vec<Value> = n
        .links
        .iter()
        .map(|(peer, t)| json!({ "peer": peer, "link_type": t }))
        .collect();
    vec![
        (
            "inventory.hardware",
            json!({
                "serial": serial,
                "manufacturing_origin": "FR-Grenoble",
                "batch_id": format!("batch-2026-{:02}", (seed % 12) + 1),
                "firmware_version": "fw-7.3.2",
                "firmware_signature": digest("firmware"),
            }),
        ),
        ("inventory.software", software(n, &n.version, seed)),
        (
            "trust.sbom_updated",
            json!({
                "component": n.component,
                "version": n.version,
                "sbom_hash": sbom,
                "provenance": "registry.souverix.internal/release",
                "dependencies": ["openssl-3.0.13", "rustls-0.23", "quinn-0.11"],
            }),
        ),
        ("inventory.config", json!({ "values": n.config })),
        (
            "inventory.policy",
            json!({
                "policy_version": n.policy,
                "compliance_score": if n.policy == POLICY { 0.98 } else { 0.81 },
            }),
        ),
        (
            "inventory.topology",
            json!({ "links": links, "clusters": n.clusters }),
        ),
        (
            "inventory.supply_chain",
            json!({
                "hardware_metadata": { "vendor": "Souverix Industries", "model": n.component },
                "software_provenance": { "builder": "sx-ci", "attestation": "slsa-3" },
                "manufacturing_batch": { "plant": "Grenoble-2" },
                "trust_chain": ["souverix-autorite-root-ca"],
            }),
        ),
        (
            "trust.attestation_performed",
            json!({ "result": "verified", "detail": "TPM quote verified at boot" }),
        ),
        (
            "operational.state_transition",
            json!({ "from": "unknown", "to": "in-service", "reason": "boot" }),
        ),
        (
            "lifecycle.provisioning_completed",
            json!({ "reason": "enrolled by sx-fleet" }),
        ),
    ]
}

/// `inventory.software` for a node running `version`.
pub fn software(n: &NodePlan, version: &str, seed: u64) -> Value {
    json!({
        "component": n.component,
        "version": version,
        "sbom_hash": format!("sha256:{:064x}", (seed as u128) << 64 | version.len() as u128),
        "image_provenance": format!("registry.souverix.internal/{}:{version}", n.component),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_is_a_function_of_seed_and_size() {
        let a = FleetPlan::new(7, 60);
        let b = FleetPlan::new(7, 60);
        let ids = |p: &FleetPlan| p.nodes.iter().map(|n| n.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&a), ids(&b));
        assert_eq!(
            a.nodes
                .iter()
                .map(|n| n.version.clone())
                .collect::<Vec<_>>(),
            b.nodes
                .iter()
                .map(|n| n.version.clone())
                .collect::<Vec<_>>()
        );
        assert_eq!(a.connected().count(), 60);
        assert_eq!(a.nodes.len(), 62);
        for zone in [
            "edge-zone-a1",
            "core-zone-a2",
            "edge-zone-b1",
            "core-zone-b2",
        ] {
            assert!(
                a.nodes
                    .iter()
                    .any(|n| n.zone == zone && n.component == COEUR)
            );
        }
        let mut seen = std::collections::HashSet::new();
        assert!(a.nodes.iter().all(|n| seen.insert(n.id.clone())));
        assert!(
            a.nodes
                .iter()
                .all(|n| sx_certs::validate_name("node id", &n.id).is_ok())
        );
    }

    #[test]
    fn versions_behind() {
        assert_eq!(behind("2.4.1", 2), "2.4.0");
        assert_eq!(behind("2.4.0", 2), "2.4.9");
        assert_eq!(behind("3.1.0", 0), "2.1.0");
    }
}
