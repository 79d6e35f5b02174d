//! The run: set the fleet up, play the scenarios in order, report.
//!
//! Every step talks to the product the way an operator or a node would:
//! the PKI through `sx_certs`, agents through `sx-agent` (init, run, record
//! over the local socket, export-bundle, import-receipt), aggregators
//! through `sx-aggregator` (serve, import-bundle) and the HTTP API.

use crate::plan::{self, FleetPlan, NodePlan};
use crate::procs::{self, Agent, Aggregator, Binaries};
use anyhow::{Context, Result, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use sx_certs::{AggregatorRequest, CaOptions, NodeRequest, Pki, RevokeTarget};

/// What the command line asked for.
#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    pub nodes: usize,
    /// Rough length of the scripted part; the scenario phases scale with it.
    pub duration: Duration,
    pub data_dir: PathBuf,
    pub bin_dir: Option<PathBuf>,
    /// Background events per second, fleet-wide.
    pub rate: f64,
}

/// One scenario step as it went.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub name: String,
    pub ok: bool,
    pub detail: String,
    pub at_secs: f64,
}

/// What the scenarios observed (part of the summary).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Outcomes {
    pub steps: Vec<Step>,
    /// Connectivity states region-b nodes passed through during its
    /// aggregator outage, by state: how many nodes entered it (from their
    /// ledgers, after replay).
    pub outage_states: BTreeMap<String, usize>,
    /// Nodes the aggregator itself marked stale while their agents were
    /// stopped.
    pub stale_observed: usize,
    pub rollout: Value,
    pub rotation: Value,
    pub impostor: Value,
    pub revoked: Value,
    pub bundles: Value,
    pub background_events: u64,
}

/// The running fleet.
pub struct Fleet {
    opts: Options,
    plan: FleetPlan,
    bins: Binaries,
    pki: Pki,
    root: PathBuf,
    token: String,
    pub aggregators: Vec<Aggregator>,
    agents: BTreeMap<String, Agent>,
    rng: StdRng,
    started: Instant,
    pace: f64,
    pub outcomes: Outcomes,
    op_state: BTreeMap<String, bool>,
    last_tick: Instant,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("root", &self.root)
            .field("nodes", &self.plan.nodes.len())
            .finish_non_exhaustive()
    }
}

const MARKER: &str = ".sx-fleet";

/// Empties the data directory if sx-fleet made it; refuses anything else.
fn fresh_root(dir: &std::path::Path) -> Result<PathBuf> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir)?.next().is_none();
        if !empty && !dir.join(MARKER).exists() {
            bail!(
                "{} exists and was not made by sx-fleet: choose another --data-dir",
                dir.display()
            );
        }
        if !empty {
            std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join(MARKER),
        "made by sx-fleet; emptied on its next run\n",
    )?;
    Ok(std::fs::canonicalize(dir)?)
}

impl Fleet {
    /// Creates the PKI, the configurations and the processes' directories.
    pub fn setup(opts: Options, stop: Arc<AtomicBool>) -> Result<Fleet> {
        let started = Instant::now();
        let bins = Binaries::locate(opts.bin_dir.as_deref())?;
        let root = fresh_root(&opts.data_dir)?;
        let plan = FleetPlan::new(opts.seed, opts.nodes);
        let pace = (opts.duration.as_secs_f64() / 90.0).clamp(0.3, 20.0);
        let token = {
            let bytes: [u8; 24] = rand::thread_rng().r#gen();
            hex::encode(bytes)
        };
        std::fs::write(root.join("operator-token"), &token)?;
        let pki = Pki::init(root.join("pki"), &CaOptions::default())?;
        let desired = root.join("desired.json");
        std::fs::write(
            &desired,
            serde_json::to_string_pretty(&plan::desired_spec())?,
        )?;
        let mut aggregators = Vec::new();
        for r in &plan.regions {
            pki.issue_aggregator(&AggregatorRequest::new(&r.aggregator, &r.name))?;
            aggregators.push(Aggregator::prepare(
                &root,
                pki.root(),
                &r.aggregator,
                &r.name,
                &desired,
                &token,
            )?);
        }
        let fleet = Fleet {
            rng: StdRng::seed_from_u64(opts.seed ^ 0x5eed),
            opts,
            plan,
            bins,
            pki,
            root,
            token,
            aggregators,
            agents: BTreeMap::new(),
            started,
            pace,
            outcomes: Outcomes::default(),
            op_state: BTreeMap::new(),
            last_tick: Instant::now(),
            stop,
        };
        fleet.say(&format!(
            "PKI ready ({} nodes planned over {} regions); data in {}",
            fleet.plan.nodes.len(),
            fleet.plan.regions.len(),
            fleet.root.display()
        ));
        Ok(fleet)
    }

    fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn say(&self, msg: &str) {
        println!("[{:>6.1}s] {msg}", self.elapsed());
    }

    fn step(&mut self, name: &str, ok: bool, detail: impl Into<String>) {
        let detail = detail.into();
        self.say(&format!(
            "{} {name}: {detail}",
            if ok { "ok  " } else { "FAIL" }
        ));
        self.outcomes.steps.push(Step {
            name: name.to_owned(),
            ok,
            detail,
            at_secs: self.elapsed(),
        });
    }

    fn secs(&self, base: f64) -> Duration {
        Duration::from_secs_f64(base * self.pace)
    }

    // --- the run ---------------------------------------------------------------

    /// Plays every scenario in order.
    pub fn run(&mut self) -> Result<()> {
        self.start_aggregators()?;
        self.start_agents()?;
        self.check()?;
        self.idle(self.secs(6.0));
        self.config_drift();
        self.check()?;
        self.air_gapped_site(1);
        self.idle(self.secs(3.0));
        self.regional_outage()?;
        self.check()?;
        self.agent_outage()?;
        self.check()?;
        self.rollout()?;
        self.check()?;
        self.certificate_rotation();
        self.check()?;
        self.impostor();
        self.check()?;
        self.revoked_node();
        self.check()?;
        self.air_gapped_site(2);
        let left = self
            .opts
            .duration
            .saturating_sub(self.started.elapsed())
            .max(Duration::from_secs(3));
        self.say(&format!("steady state for {:.0} s", left.as_secs_f64()));
        self.idle(left);
        self.settle();
        Ok(())
    }

    fn start_aggregators(&mut self) -> Result<()> {
        for i in 0..self.aggregators.len() {
            self.aggregators[i].start(&self.bins)?;
            let a = &self.aggregators[i];
            self.say(&format!(
                "{} serving {}: QUIC {}, UI {}",
                a.name,
                a.region,
                a.quic,
                a.ui()
            ));
        }
        Ok(())
    }

    fn start_agents(&mut self) -> Result<()> {
        let ca = self.pki.ca_path();
        let nodes: Vec<NodePlan> = self.plan.nodes.clone();
        for (i, n) in nodes.iter().enumerate() {
            let issued =
                self.pki
                    .issue_node(&NodeRequest::new(&n.id, &n.component, &n.region, &n.zone))?;
            let config = (!n.air_gapped).then(|| {
                procs::agent_config_text(self.aggregators[n.region_index].quic, n.slow_link)
            });
            let agent = Agent::prepare(
                &self.bins,
                &self.root,
                &n.id,
                &issued.cert_path,
                &issued.key_path,
                &ca,
                config,
            )?;
            self.agents.insert(n.id.clone(), agent);
            if (i + 1) % 20 == 0 {
                self.say(&format!("enrolled {} nodes", i + 1));
            }
        }
        let connected: Vec<NodePlan> = self.plan.connected().cloned().collect();
        for n in &connected {
            self.start_agent(&n.id)?;
        }
        for n in &connected {
            let seed = self.opts.seed;
            let agent = self.agent_mut(&n.id);
            agent.wait_socket(Duration::from_secs(30))?;
            agent.record_batch(&plan::inventory(n, seed))?;
        }
        self.say(&format!(
            "{} agents running; inventory recorded (hardware, software, config, policy, topology, supply chain, attestation)",
            connected.len()
        ));
        for r in 0..self.aggregators.len() {
            let ids: Vec<String> = connected
                .iter()
                .filter(|n| n.region_index == r)
                .map(|n| n.id.clone())
                .collect();
            let ok = self.wait_synced(r, &ids, Duration::from_secs(90));
            let name = format!("enrol {}", self.plan.regions[r].name);
            self.step(
                &name,
                ok,
                format!("{} nodes synced to {}", ids.len(), self.aggregators[r].name),
            );
        }
        Ok(())
    }

    /// Nodes other scenarios use (rotation, impostor victim, revocation),
    /// kept out of the agent outage.
    fn reserved(&self) -> Vec<String> {
        let a = |comp: &str| {
            self.plan
                .connected()
                .filter(|n| n.region_index == 0 && n.component == comp)
                .map(|n| n.id.clone())
                .collect::<Vec<_>>()
        };
        let mut out = Vec::new();
        out.extend(a(plan::REMPART).first().cloned());
        out.extend(a(plan::COEUR).first().cloned());
        out.extend(a(plan::RELAIS).last().cloned());
        out
    }

    fn start_agent(&mut self, node: &str) -> Result<()> {
        let bins = self.bins.clone();
        self.agent_mut(node).start(&bins)
    }

    fn agent_mut(&mut self, node: &str) -> &mut Agent {
        self.agents
            .get_mut(node)
            .expect("planned node has an agent")
    }

    /// Waits until every listed node is connected with nothing left to send.
    fn wait_synced(&mut self, region: usize, nodes: &[String], timeout: Duration) -> bool {
        let start = Instant::now();
        let want: BTreeSet<&str> = nodes.iter().map(String::as_str).collect();
        while start.elapsed() < timeout && !self.interrupted() {
            if let Ok(status) = self.aggregators[region].get("/api/v1/status") {
                let done = status["nodes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|n| {
                        want.contains(n["node_id"].as_str().unwrap_or(""))
                            && n["acked_seq"].as_u64().unwrap_or(0) > 0
                            && n["backlog"] == 0
                            && n["connection"]["state"] == "connected"
                    })
                    .count();
                if done == want.len() {
                    return true;
                }
            }
            self.tick_progress();
            std::thread::sleep(Duration::from_millis(300));
        }
        false
    }

    fn check(&self) -> Result<()> {
        if self.interrupted() {
            bail!("interrupted");
        }
        Ok(())
    }

    /// Whether Ctrl-C or SIGTERM asked the run to stop.
    pub fn interrupted(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Lets time pass while nodes record background events.
    fn idle(&mut self, d: Duration) {
        let end = Instant::now() + d;
        let gap = Duration::from_secs_f64(1.0 / self.opts.rate.max(0.1));
        while Instant::now() < end && !self.interrupted() {
            self.background_event();
            self.tick_progress();
            std::thread::sleep(gap.min(end.saturating_duration_since(Instant::now())));
        }
    }

    /// One event on a random running agent: an operational change, an
    /// attestation, or a fresh policy report.
    fn background_event(&mut self) {
        let running: Vec<String> = self
            .agents
            .iter_mut()
            .filter_map(|(id, a)| a.is_running().then(|| id.clone()))
            .collect();
        if running.is_empty() {
            return;
        }
        let id = running[self.rng.gen_range(0..running.len())].clone();
        let Some(n) = self.plan.node_by_id(&id).cloned() else {
            return;
        };
        let event = match self.rng.gen_range(0..10) {
            0..=3 => {
                let degraded = self.op_state.entry(id.clone()).or_insert(false);
                let (from, to) = if *degraded {
                    ("degraded", "in-service")
                } else {
                    ("in-service", "degraded")
                };
                *degraded = !*degraded;
                (
                    "operational.state_transition",
                    json!({ "from": from, "to": to, "reason": "load probe" }),
                )
            }
            4..=7 => (
                "trust.attestation_performed",
                json!({ "result": "verified", "detail": "periodic TPM quote" }),
            ),
            _ => (
                "inventory.policy",
                json!({
                    "policy_version": n.policy,
                    "compliance_score": if n.policy == plan::POLICY { 0.98 } else { 0.81 },
                }),
            ),
        };
        if self.agents[&id].record_batch(&[event]).is_ok() {
            self.outcomes.background_events += 1;
        }
    }

    /// A progress line every five seconds.
    fn tick_progress(&mut self) {
        if self.last_tick.elapsed() < Duration::from_secs(5) {
            return;
        }
        self.last_tick = Instant::now();
        let mut parts = Vec::new();
        for a in &self.aggregators {
            if !a.is_running() {
                parts.push(format!("{}: DOWN", a.region));
                continue;
            }
            let Ok(f) = a.get("/api/v1/fleet") else {
                parts.push(format!("{}: no answer", a.region));
                continue;
            };
            let spectrum: Vec<String> = f["connectivity"]["spectrum"]
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            parts.push(format!(
                "{}: {} events, {} nodes [{}]",
                a.region,
                f["events_stored"],
                f["nodes"],
                spectrum.join(", ")
            ));
        }
        self.say(&parts.join(" | "));
    }

    // --- scenarios ---------------------------------------------------------------

    /// A few nodes report a configuration that left the desired one.
    fn config_drift(&mut self) {
        let candidates: Vec<NodePlan> = self
            .plan
            .connected()
            .filter(|n| n.component == plan::RELAIS)
            .take(3)
            .cloned()
            .collect();
        let mut done = Vec::new();
        for n in candidates {
            let mut values = n.config.clone();
            values.insert(
                "media.max_streams".to_owned(),
                sx_common::model::ConfigValue::Int(500),
            );
            values.insert(
                "tls.min_version".to_owned(),
                sx_common::model::ConfigValue::from("1.2"),
            );
            if self.agents[&n.id]
                .record_batch(&[("inventory.config", json!({ "values": values }))])
                .is_ok()
            {
                done.push(n.id.clone());
            }
        }
        self.step(
            "config drift",
            !done.is_empty(),
            format!(
                "{} relais reported hand-edited config (tls.min_version 1.2, media.max_streams 500)",
                done.len()
            ),
        );
    }

    /// Stops region-b's aggregator; its nodes go edge-cached, autonomous
    /// and disconnected while they keep journaling, then return and replay.
    fn regional_outage(&mut self) -> Result<()> {
        let r = 1;
        let outage = self.secs(14.0).max(Duration::from_secs(11));
        let before = sx_common::Timestamp::now();
        self.aggregators[r].stop();
        self.say(&format!(
            "outage: {} stopped for {:.0} s; its nodes journal on their own",
            self.aggregators[r].name,
            outage.as_secs_f64()
        ));
        self.idle(outage);
        self.aggregators[r].start(&self.bins)?;
        self.say(&format!(
            "{} back: nodes return and replay",
            self.aggregators[r].name
        ));
        let ids: Vec<String> = self
            .plan
            .connected()
            .filter(|n| n.region_index == r)
            .map(|n| n.id.clone())
            .collect();
        let synced = self.wait_synced(r, &ids, Duration::from_secs(90));
        // What the nodes went through, from their own ledgers.
        let mut states: BTreeMap<String, usize> = BTreeMap::new();
        for id in &ids {
            let Ok(l) = self.aggregators[r].get(&format!("/api/v1/twins/{id}/ledger")) else {
                continue;
            };
            let seen: BTreeSet<String> = l["history"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| {
                    e["timestamp"]
                        .as_str()
                        .and_then(|t| sx_common::Timestamp::parse(t).ok())
                        .is_some_and(|t| t >= before)
                })
                .filter_map(|e| e["state"].as_str().map(str::to_owned))
                .collect();
            for s in seen {
                *states.entry(s).or_default() += 1;
            }
        }
        let ok = synced && states.get("autonomous").copied().unwrap_or(0) > 0;
        let detail = format!(
            "{} nodes replayed; states entered: {}",
            ids.len(),
            states
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        self.outcomes.outage_states = states;
        self.step("regional outage and replay", ok, detail);
        Ok(())
    }

    /// Stops three agents of region-a; their nodes keep journaling through
    /// `sx-agent record` (straight into the journal), the aggregator marks
    /// them stale; on restart they replay.
    fn agent_outage(&mut self) -> Result<()> {
        let r = 0;
        let reserved = self.reserved();
        let pool: Vec<String> = self
            .plan
            .connected()
            .filter(|n| n.region_index == r && !reserved.contains(&n.id))
            .map(|n| n.id.clone())
            .collect();
        let take = (pool.len() / 4).clamp(1, 3);
        let ids: Vec<String> = pool.into_iter().rev().take(take).collect();
        for id in &ids {
            self.agent_mut(id).stop();
        }
        self.say(&format!("agents stopped: {}", ids.join(", ")));
        let mut recorded = 0;
        for id in &ids {
            let a = &self.agents[id];
            for k in 0..3 {
                let p = json!({ "from": "in-service", "to": "degraded", "reason": format!("power cut {k}") });
                if a.record_cli(&self.bins, "operational.state_transition", &p)
                    .is_ok()
                {
                    recorded += 1;
                }
            }
        }
        self.idle(self.secs(8.0).max(Duration::from_secs(7)));
        let stale = self.aggregators[r]
            .get("/api/v1/connectivity?by=global")
            .ok()
            .and_then(|v| v[0]["stale"].as_u64())
            .unwrap_or(0) as usize;
        self.outcomes.stale_observed = stale;
        for id in &ids {
            self.start_agent(id)?;
        }
        let synced = self.wait_synced(r, &ids, Duration::from_secs(60));
        self.step(
            "agent outage",
            synced && stale >= ids.len(),
            format!(
                "{} agents down; {recorded} events journaled offline; aggregator saw {stale} stale; replayed: {synced}",
                ids.len()
            ),
        );
        Ok(())
    }

    /// Operators raise souverix-coeur to the next release through the API
    /// (with the token); coeur nodes drift, then update in waves; one
    /// update fails.
    fn rollout(&mut self) -> Result<()> {
        let change = json!({
            "set-version": { "rule": {
                "component": plan::COEUR, "scope": "fleet", "version": plan::ROLLOUT_VERSION
            } }
        });
        let mut changed = 0;
        for a in &self.aggregators {
            match procs::post_json(a.api, "/api/v1/desired/changes", &self.token, &change) {
                Ok(_) => changed += 1,
                Err(e) => self.say(&format!("desired change on {} failed: {e:#}", a.name)),
            }
        }
        let drifting = self.count_severity_at_least("medium");
        self.say(&format!(
            "roll-out: desired {} {} on {changed} aggregators; {drifting} nodes now drift medium or worse",
            plan::COEUR,
            plan::ROLLOUT_VERSION
        ));
        let coeurs: Vec<NodePlan> = self
            .plan
            .connected()
            .filter(|n| n.component == plan::COEUR)
            .cloned()
            .collect();
        let failing = coeurs.last().map(|n| n.id.clone());
        let waves = 3usize;
        let per_wave = coeurs.len().div_ceil(waves).max(1);
        let (mut succeeded, mut failed) = (0, 0);
        for wave in coeurs.chunks(per_wave) {
            for n in wave {
                let p = json!({ "from_version": n.version, "to_version": plan::ROLLOUT_VERSION });
                let _ = self.agents[&n.id].record_batch(&[("lifecycle.update_initiated", p)]);
            }
            self.idle(self.secs(3.0).max(Duration::from_secs(1)));
            for n in wave {
                let fails = Some(&n.id) == failing.as_ref();
                let mut events = vec![(
                    "lifecycle.update_completed",
                    json!({
                        "from_version": n.version,
                        "to_version": plan::ROLLOUT_VERSION,
                        "succeeded": !fails,
                    }),
                )];
                if !fails {
                    events.push((
                        "inventory.software",
                        plan::software(n, plan::ROLLOUT_VERSION, self.opts.seed),
                    ));
                }
                if self.agents[&n.id].record_batch(&events).is_ok() {
                    if fails {
                        failed += 1;
                    } else {
                        succeeded += 1;
                    }
                }
            }
        }
        // A maintenance window left open on one relais, for the UI.
        if let Some(n) = self.plan.connected().find(|n| n.component == plan::RELAIS) {
            let _ = self.agents[&n.id].record_batch(&[(
                "lifecycle.maintenance_started",
                json!({ "window_id": "mw-2026-07", "reason": "fan replacement" }),
            )]);
        }
        self.idle(Duration::from_secs(2));
        self.outcomes.rollout = json!({
            "component": plan::COEUR,
            "to_version": plan::ROLLOUT_VERSION,
            "aggregators_changed": changed,
            "succeeded": succeeded,
            "failed": failed,
        });
        self.step(
            "roll-out",
            changed == self.aggregators.len() && succeeded > 0,
            format!(
                "{} → {}: {succeeded} updated, {failed} failed (left drifting)",
                plan::COEUR,
                plan::ROLLOUT_VERSION
            ),
        );
        Ok(())
    }

    fn count_severity_at_least(&self, min: &str) -> usize {
        let order = ["none", "low", "medium", "high", "critical"];
        let from = order.iter().position(|s| *s == min).unwrap_or(0);
        self.aggregators
            .iter()
            .filter(|a| a.is_running())
            .filter_map(|a| a.get("/api/v1/drift?by=global").ok())
            .map(|v| {
                order[from..]
                    .iter()
                    .map(|s| v[0]["by_severity"][s].as_u64().unwrap_or(0) as usize)
                    .sum::<usize>()
            })
            .sum()
    }

    /// Rotates one node's certificate while its agent runs: a new
    /// certificate from the CA (forced), then `sx-agent rotate`, which
    /// records `trust.certificate_rotated` signed with the old key, installs
    /// the new files and has the uplink reconnect with them. The node keeps
    /// syncing under its new certificate, and the aggregator's trust index
    /// shows the rotation.
    fn certificate_rotation(&mut self) {
        match self.rotate() {
            Ok(detail) => {
                self.outcomes.rotation = json!({ "ok": true, "detail": detail });
                self.step("certificate rotation", true, detail);
            }
            Err(e) => {
                let detail = format!("{e:#}");
                self.outcomes.rotation = json!({ "ok": false, "detail": detail });
                self.step("certificate rotation", false, detail);
            }
        }
    }

    fn rotate(&mut self) -> Result<String> {
        let n = self
            .plan
            .connected()
            .find(|n| n.region_index == 0 && n.component == plan::REMPART)
            .cloned()
            .context("no rempart in region-a")?;
        let r = n.region_index;
        let mut req = NodeRequest::new(&n.id, &n.component, &n.region, &n.zone);
        req.force = true;
        let issued = self.pki.issue_node(&req)?;
        let rotated =
            self.agents[&n.id].rotate_cli(&self.bins, &issued.cert_path, &issued.key_path)?;
        let rotation_seq = rotated["seq"]
            .as_u64()
            .context("sx-agent rotate printed no seq")?;
        if rotated["new_fingerprint"] != issued.fingerprint.as_str() {
            bail!("sx-agent rotate reported {rotated}, not the issued certificate");
        }
        let old_fingerprint = rotated["old_fingerprint"].as_str().unwrap_or("").to_owned();
        self.agents[&n.id].record_batch(&[(
            "trust.attestation_performed",
            json!({ "result": "verified", "detail": "first attestation under the rotated key" }),
        )])?;
        if !self.wait_synced(r, std::slice::from_ref(&n.id), Duration::from_secs(30)) {
            bail!(
                "after the rotation the agent of {} did not sync under its new certificate: see {}",
                n.id,
                self.agents[&n.id].log.display()
            );
        }
        // "Synced" can be seen before the aggregator heard of the events
        // recorded after the rotation: wait for them to be acknowledged.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut acked = self.acked(r, &n.id);
        while acked <= rotation_seq && Instant::now() < deadline && !self.interrupted() {
            self.tick_progress();
            std::thread::sleep(Duration::from_millis(200));
            acked = self.acked(r, &n.id);
        }
        if acked <= rotation_seq {
            bail!("no event after the rotation (seq {rotation_seq}) was accepted: acked {acked}");
        }
        let trust = self.aggregators[r].get(&format!("/api/v1/twins/{}/trust", n.id))?;
        let shown = trust["rotations"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|x| {
                x["seq"] == rotation_seq
                    && x["old_fingerprint"] == old_fingerprint.as_str()
                    && x["new_fingerprint"] == issued.fingerprint.as_str()
            });
        if !shown {
            bail!(
                "the trust index of {} does not show the rotation: {trust}",
                n.id
            );
        }
        let ingest = trust["ingest_fingerprint"].as_str().unwrap_or("");
        if ingest != issued.fingerprint {
            bail!(
                "the aggregator last saw {} with certificate {ingest:?}, not the new {}",
                n.id,
                issued.fingerprint
            );
        }
        Ok(format!(
            "{}: {} → {} by `sx-agent rotate` while running; rotation at seq {rotation_seq} signed with the old key, events up to seq {acked} accepted under the new certificate; trust index shows the rotation",
            n.id,
            &old_fingerprint[..old_fingerprint.len().min(19)],
            &issued.fingerprint[..19]
        ))
    }

    fn acked(&self, region: usize, node: &str) -> u64 {
        self.aggregators[region]
            .get("/api/v1/status")
            .ok()
            .and_then(|s| {
                s["nodes"]
                    .as_array()?
                    .iter()
                    .find(|n| n["node_id"] == node)
                    .and_then(|n| n["acked_seq"].as_u64())
            })
            .unwrap_or(0)
    }

    fn refusals(&self, region: usize) -> Vec<Value> {
        self.aggregators[region]
            .get("/api/v1/refusals")
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }

    /// A node certificate from another CA, naming a real node: the
    /// aggregator must refuse it in the TLS handshake and store nothing.
    fn impostor(&mut self) {
        let result = (|| -> Result<Value> {
            let r = 0;
            let victim = self
                .plan
                .connected()
                .find(|n| n.region_index == r && n.component == plan::COEUR)
                .cloned()
                .context("no coeur in region-a")?;
            let rogue = Pki::init(
                self.root.join("rogue-pki"),
                &CaOptions {
                    common_name: "rogue-ca".to_owned(),
                    ..CaOptions::default()
                },
            )?;
            let issued = rogue.issue_node(&NodeRequest::new(
                &victim.id,
                &victim.component,
                &victim.region,
                &victim.zone,
            ))?;
            let before = self.refusals(r).len();
            let acked_before = self.acked(r, &victim.id);
            let impostor_root = self.root.join("impostor");
            let mut agent = Agent::prepare(
                &self.bins,
                &impostor_root,
                &victim.id,
                &issued.cert_path,
                &issued.key_path,
                &rogue.ca_path(),
                Some(procs::agent_config_text(self.aggregators[r].quic, false)),
            )?;
            // The impostor trusts the real fleet CA for the server, as an
            // attacker who copied it would.
            std::fs::copy(self.pki.ca_path(), agent.data_dir.join("ca.pem"))?;
            agent.start(&self.bins)?;
            std::thread::sleep(Duration::from_secs(4));
            agent.stop();
            let new: Vec<Value> = self.refusals(r).into_iter().skip(before).collect();
            let acked_after = self.acked(r, &victim.id);
            Ok(json!({
                "victim": victim.id,
                "refused": !new.is_empty(),
                "refusals": new,
                "victim_stream_untouched": acked_after >= acked_before,
            }))
        })();
        match result {
            Ok(v) => {
                let ok = v["refused"] == true;
                let detail = format!(
                    "certificate from \"rogue-ca\" naming {}: {} ({})",
                    v["victim"].as_str().unwrap_or("?"),
                    if ok { "refused" } else { "NOT refused" },
                    v["refusals"][0]["detail"]
                        .as_str()
                        .unwrap_or("no refusal recorded")
                );
                self.outcomes.impostor = v;
                self.step("impostor refused", ok, detail);
            }
            Err(e) => {
                self.outcomes.impostor = json!({ "refused": false, "error": format!("{e:#}") });
                self.step("impostor refused", false, format!("{e:#}"));
            }
        }
    }

    /// Revokes a node; once the CRL is reloaded its reconnection is
    /// refused.
    fn revoked_node(&mut self) {
        let result = (|| -> Result<Value> {
            let r = 0;
            let n = self
                .plan
                .connected()
                .filter(|n| n.region_index == r && n.component == plan::RELAIS)
                .last()
                .cloned()
                .context("no relais in region-a")?;
            let before = self.refusals(r).len();
            self.pki
                .revoke(RevokeTarget::Node(n.id.clone()), "key-compromise")?;
            // The aggregator polls the CRL file every two seconds.
            std::thread::sleep(Duration::from_secs(3));
            self.agent_mut(&n.id).stop();
            self.start_agent(&n.id)?;
            std::thread::sleep(Duration::from_secs(4));
            self.agent_mut(&n.id).stop();
            let new: Vec<Value> = self.refusals(r).into_iter().skip(before).collect();
            Ok(json!({ "node": n.id, "refused": !new.is_empty(), "refusals": new }))
        })();
        match result {
            Ok(v) => {
                let ok = v["refused"] == true;
                let detail = format!(
                    "{} revoked (key-compromise), reconnection {} ({}); its agent stays down",
                    v["node"].as_str().unwrap_or("?"),
                    if ok { "refused" } else { "NOT refused" },
                    v["refusals"][0]["detail"]
                        .as_str()
                        .unwrap_or("no refusal recorded")
                );
                self.outcomes.revoked = v;
                self.step("revoked node refused", ok, detail);
            }
            Err(e) => {
                self.outcomes.revoked = json!({ "refused": false, "error": format!("{e:#}") });
                self.step("revoked node refused", false, format!("{e:#}"));
            }
        }
    }

    /// The air-gapped site: events recorded straight into the journals,
    /// exported in bundles, imported through region-b's aggregator, and the
    /// receipts carried back.
    fn air_gapped_site(&mut self, round: u32) {
        let result = (|| -> Result<Value> {
            let r = 1;
            let nodes: Vec<NodePlan> = self
                .plan
                .nodes
                .iter()
                .filter(|n| n.air_gapped)
                .cloned()
                .collect();
            let bundles = self.root.join("bundles");
            let receipts = self.root.join("receipts");
            std::fs::create_dir_all(&bundles)?;
            std::fs::create_dir_all(&receipts)?;
            let mut files = Vec::new();
            for n in &nodes {
                let events = if round == 1 {
                    plan::inventory(n, self.opts.seed)
                } else {
                    vec![(
                        "trust.attestation_performed",
                        json!({ "result": "verified", "detail": "attested on site, carried by hand" }),
                    )]
                };
                for (t, p) in &events {
                    self.agents[&n.id].record_cli(&self.bins, t, p)?;
                }
                let file = bundles.join(format!("{}-{round}.sxbundle", n.id));
                procs::run_cli(
                    &self.bins.agent,
                    &[
                        "--data-dir".as_ref(),
                        self.agents[&n.id].data_dir.as_os_str(),
                        "export-bundle".as_ref(),
                        "--out".as_ref(),
                        file.as_os_str(),
                        "--json".as_ref(),
                    ],
                )?;
                files.push(file);
            }
            let mut args: Vec<&std::ffi::OsStr> = vec![
                "--config".as_ref(),
                self.aggregators[r].config.as_os_str(),
                "import-bundle".as_ref(),
            ];
            args.extend(files.iter().map(|f| f.as_os_str()));
            args.extend([
                "--receipt-dir".as_ref(),
                receipts.as_os_str(),
                "--json".as_ref(),
            ]);
            let out = procs::run_cli(&self.bins.aggregator, &args)?;
            let imported: Vec<Value> = out
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            let mut receipted = 0;
            for entry in std::fs::read_dir(&receipts)? {
                let path = entry?.path();
                let Some(name) = path.file_name().and_then(|f| f.to_str()) else {
                    continue;
                };
                if let Some(n) = nodes.iter().find(|n| name.starts_with(&n.id))
                    && !name.ends_with(".done")
                {
                    procs::run_cli(
                        &self.bins.agent,
                        &[
                            "--data-dir".as_ref(),
                            self.agents[&n.id].data_dir.as_os_str(),
                            "import-receipt".as_ref(),
                            path.as_os_str(),
                        ],
                    )?;
                    std::fs::rename(&path, path.with_extension("sxreceipt.done"))?;
                    receipted += 1;
                }
            }
            Ok(
                json!({ "round": round, "files": files.len(), "imported": imported, "receipts": receipted }),
            )
        })();
        let name = format!("air-gapped site, bundle round {round}");
        match result {
            Ok(v) => {
                let detail = format!(
                    "{} bundles exported by sx-agent, imported by sx-aggregator import-bundle, {} receipts carried back",
                    v["files"], v["receipts"]
                );
                self.step(&name, v["receipts"].as_u64().unwrap_or(0) > 0, detail);
                self.push_bundle_outcome(v);
            }
            Err(e) => {
                self.step(&name, false, format!("{e:#}"));
                self.push_bundle_outcome(json!({ "round": round, "error": format!("{e:#}") }));
            }
        }
    }

    fn push_bundle_outcome(&mut self, v: Value) {
        match &mut self.outcomes.bundles {
            Value::Array(a) => a.push(v),
            other => *other = Value::Array(vec![v]),
        }
    }

    /// Waits (briefly) until every running agent is synced.
    fn settle(&mut self) {
        for r in 0..self.aggregators.len() {
            let running: Vec<String> = self
                .agents
                .iter_mut()
                .filter_map(|(id, a)| a.is_running().then(|| id.clone()))
                .collect();
            let ids: Vec<String> = running
                .into_iter()
                .filter(|id| {
                    self.plan
                        .node_by_id(id)
                        .is_some_and(|n| n.region_index == r)
                })
                .collect();
            let ok = self.wait_synced(r, &ids, Duration::from_secs(30));
            if !ok {
                self.say(&format!(
                    "{}: not every node synced before the summary",
                    self.plan.regions[r].name
                ));
            }
        }
    }

    /// Keeps the fleet up (background events at a gentle pace) until
    /// interrupted.
    pub fn keep_running(&mut self) {
        self.opts.rate = self.opts.rate.min(1.0);
        while !self.interrupted() {
            self.idle(Duration::from_secs(60));
        }
    }

    /// Stops every process.
    pub fn shutdown(&mut self) {
        for a in self.agents.values_mut() {
            a.stop();
        }
        for a in &mut self.aggregators {
            a.stop();
        }
    }

    pub fn root(&self) -> &std::path::Path {
        &self.root
    }
}
