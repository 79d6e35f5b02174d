//! Test support for end-to-end tests: a throwaway fleet PKI, real
//! `sx-aggregator` and `sx-agent` processes on loopback, and helpers to
//! inspect what they stored after they stopped.
//!
//! The binaries are the workspace's own, found next to the test executable
//! (`target/<profile>/`); `cargo test --workspace` builds them first.

use anyhow::{Context, Result, bail};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use sx_certs::{AggregatorRequest, CaOptions, NodeRequest, Pki};

/// Path of a workspace binary (`sx-agent`, `sx-aggregator`, `sx-certs`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (it builds the binaries)",
        path.display()
    );
    path
}

/// A free port on 127.0.0.1 (UDP and TCP are probed separately by callers).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free UDP port")
}

pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free TCP port")
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A fleet in a temporary directory: PKI, data directories, processes.
#[derive(Debug)]
pub struct TestFleet {
    pub dir: tempfile::TempDir,
    pub pki: Pki,
}

/// A node's certificate and key files.
#[derive(Clone, Debug)]
pub struct NodeFiles {
    pub node_id: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestFleet {
    /// A fresh PKI with the aggregator certificate `agg-test`.
    pub fn new() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let pki = Pki::init(dir.path().join("pki"), &CaOptions::default())?;
        pki.issue_aggregator(&AggregatorRequest::new("agg-test", "region-a"))?;
        Ok(TestFleet { dir, pki })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn pki_dir(&self) -> PathBuf {
        self.pki.root().to_path_buf()
    }

    /// Issues a node certificate.
    pub fn node(
        &self,
        node_id: &str,
        component: &str,
        region: &str,
        zone: &str,
    ) -> Result<NodeFiles> {
        let issued = self
            .pki
            .issue_node(&NodeRequest::new(node_id, component, region, zone))?;
        Ok(NodeFiles {
            node_id: node_id.to_owned(),
            cert: issued.cert_path,
            key: issued.key_path,
        })
    }

    /// Issues a node certificate and initialises its agent data directory.
    pub fn agent_dir(&self, node: &NodeFiles) -> Result<PathBuf> {
        let data = self.path().join("agents").join(&node.node_id);
        let out = Command::new(bin("sx-agent"))
            .arg("--data-dir")
            .arg(&data)
            .arg("init")
            .arg("--cert")
            .arg(&node.cert)
            .arg("--key")
            .arg(&node.key)
            .arg("--ca")
            .arg(self.pki.ca_path())
            .output()?;
        if !out.status.success() {
            bail!("sx-agent init: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(data)
    }

    /// Writes an agent configuration for fast tests and returns its path.
    pub fn agent_config(&self, name: &str, aggregator: SocketAddr, extra: &str) -> Result<PathBuf> {
        let path = self.path().join(format!("{name}.agent.toml"));
        let text = format!(
            "[agent]\naggregator = \"{aggregator}\"\nserver_name = \"localhost\"\n\n\
             [uplink]\nheartbeat_interval = \"300ms\"\nack_timeout = \"3s\"\nidle_timeout = \"3s\"\n\
             connect_timeout = \"1s\"\nbackoff_initial = \"50ms\"\nbackoff_max = \"300ms\"\n\n\
             [connectivity]\nautonomous_after = \"1s\"\n{extra}\n"
        );
        std::fs::write(&path, text)?;
        Ok(path)
    }
}

/// A running `sx-aggregator serve`.
#[derive(Debug)]
pub struct AggregatorProcess {
    pub child: Child,
    pub quic: SocketAddr,
    pub api: SocketAddr,
    pub data_dir: PathBuf,
}

impl AggregatorProcess {
    /// Starts an aggregator on fixed ports (so it can be restarted on the
    /// same address) and waits until its API answers.
    pub fn start(
        fleet: &TestFleet,
        data_dir: &Path,
        quic_port: u16,
        api_port: u16,
    ) -> Result<Self> {
        Self::start_with(fleet, data_dir, quic_port, api_port, &[])
    }

    /// [`AggregatorProcess::start`] with extra `serve` flags.
    pub fn start_with(
        fleet: &TestFleet,
        data_dir: &Path,
        quic_port: u16,
        api_port: u16,
        extra: &[&str],
    ) -> Result<Self> {
        let log = std::fs::File::create(data_dir.with_extension("log"))?;
        std::fs::create_dir_all(data_dir)?;
        let child = Command::new(bin("sx-aggregator"))
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--pki-dir")
            .arg(fleet.pki_dir())
            .arg("--name")
            .arg("agg-test")
            .arg("--listen")
            .arg(format!("127.0.0.1:{quic_port}"))
            .arg("--api-listen")
            .arg(format!("127.0.0.1:{api_port}"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting sx-aggregator")?;
        let mut p = AggregatorProcess {
            child,
            quic: SocketAddr::from(([127, 0, 0, 1], quic_port)),
            api: SocketAddr::from(([127, 0, 0, 1], api_port)),
            data_dir: data_dir.to_path_buf(),
        };
        let api = p.api;
        let ready = wait_for(Duration::from_secs(20), "the aggregator API", || {
            ureq::get(&format!("http://{api}/healthz")).call().ok()
        });
        if ready.is_err() {
            p.kill();
            bail!(
                "aggregator did not come up: see {}",
                data_dir.with_extension("log").display()
            );
        }
        Ok(p)
    }

    /// `GET /api/v1/status`.
    pub fn status(&self) -> Result<serde_json::Value> {
        get_json(self.api, "/api/v1/status")
    }

    /// The sync state of one node from the status, if known.
    pub fn node_status(&self, node: &str) -> Result<Option<serde_json::Value>> {
        let status = self.status()?;
        Ok(status["nodes"]
            .as_array()
            .and_then(|a| a.iter().find(|n| n["node_id"] == node).cloned()))
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> Result<()> {
        terminate(&mut self.child)
    }
}

impl Drop for AggregatorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `GET` a JSON document from an API.
pub fn get_json(api: SocketAddr, path: &str) -> Result<serde_json::Value> {
    let body = ureq::get(&format!("http://{api}{path}"))
        .call()?
        .body_mut()
        .read_to_string()?;
    Ok(serde_json::from_str(&body)?)
}

/// Sends SIGTERM and waits (up to 20 s) for the process to exit.
pub fn terminate(child: &mut Child) -> Result<()> {
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .context("sending SIGTERM")?;
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("process exited with {status}");
            }
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            bail!("process did not stop within 20 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `sx-agent run`.
#[derive(Debug)]
pub struct AgentProcess {
    pub child: Child,
    pub data_dir: PathBuf,
}

impl AgentProcess {
    pub fn start(data_dir: &Path, config: &Path) -> Result<Self> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.with_extension("log"))?;
        let child = Command::new(bin("sx-agent"))
            .arg("--data-dir")
            .arg(data_dir)
            .arg("run")
            .arg("--config")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting sx-agent")?;
        Ok(AgentProcess {
            child,
            data_dir: data_dir.to_path_buf(),
        })
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn stop(&mut self) -> Result<()> {
        terminate(&mut self.child)
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `sx-agent` with arguments on a data directory and returns stdout.
pub fn agent_cmd(data_dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(bin("sx-agent"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!(
            "sx-agent {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// The agent's status (`sx-agent status --json`); the agent must be stopped.
pub fn agent_status(data_dir: &Path) -> Result<serde_json::Value> {
    Ok(serde_json::from_str(&agent_cmd(
        data_dir,
        &["status", "--json"],
    )?)?)
}

/// Appends `count` events directly to a stopped agent's journal, in
/// transactions of `per_txn`.
pub fn fill_journal(data_dir: &Path, count: u64, per_txn: usize) -> Result<()> {
    use sx_agent::journal::Journal;
    let dir = sx_agent::journal::DataDir::new(data_dir);
    let mut journal = dir.open_journal()?;
    let mut left = count;
    while left > 0 {
        let n = left.min(per_txn as u64);
        let items: Vec<_> = (0..n)
            .map(|i| {
                (
                    sx_common::Timestamp::now(),
                    sx_common::EventPayload::OperationalTransition(
                        sx_common::event::OperationalTransition {
                            from: sx_common::model::OperationalState::InService,
                            to: sx_common::model::OperationalState::InService,
                            reason: Some(format!("load-{i}")),
                        },
                    ),
                )
            })
            .collect();
        journal.append(&items)?;
        left -= n;
    }
    journal.close()?;
    Ok(())
}

/// What a stopped aggregator's store holds for a node, fully re-verified:
/// every event decodes, seqs run 1..=n without gap or duplicate, and the
/// chain links.
#[derive(Debug)]
pub struct StoredStream {
    pub events: Vec<sx_common::SealedEvent>,
}

pub fn stored_stream(data_dir: &Path, node: &str) -> Result<StoredStream> {
    use sx_aggregator::store::EventStore;
    let store = sx_aggregator::store::RedbStore::open(data_dir.join("events.redb"))?;
    let mut events = Vec::new();
    let mut next = 1;
    loop {
        let chunk = store.read(node, next, 10_000)?;
        let Some(last) = chunk.last() else { break };
        next = last.event.seq + 1;
        events.extend(chunk);
    }
    let mut prev = sx_common::Digest::GENESIS;
    for (i, e) in events.iter().enumerate() {
        if e.event.seq != i as u64 + 1 {
            bail!("stored seq {} at position {i}", e.event.seq);
        }
        if e.event.prev_hash != prev {
            bail!("stored chain broken at seq {}", e.event.seq);
        }
        prev = e.hash;
    }
    Ok(StoredStream { events })
}

pub mod http;
pub mod prometheus;
pub mod rogue;

/// Every event a stopped agent's journal holds, in seq order.
pub fn journal_events(data_dir: &Path) -> Result<Vec<sx_common::SealedEvent>> {
    use sx_agent::journal::Journal;
    let journal = sx_agent::journal::DataDir::new(data_dir).open_journal()?;
    let mut next = journal.marks().first_held_seq.max(1);
    let mut events = Vec::new();
    loop {
        let chunk = journal.read_range(next, 10_000)?;
        let Some(last) = chunk.last() else { break };
        next = last.event.seq + 1;
        events.extend(chunk);
    }
    journal.close()?;
    Ok(events)
}

/// The durable head of `node` in a stopped aggregator's store, read straight
/// from its redb file (after a SIGKILL this is what survived).
pub fn store_head(data_dir: &Path, node: &str) -> Result<sx_common::ChainHead> {
    use sx_aggregator::store::EventStore;
    let store = sx_aggregator::store::RedbStore::open(data_dir.join("events.redb"))?;
    Ok(store.head(node)?)
}

/// Asserts that the aggregator stored exactly the agent's journal for
/// `node`: the same events (by hash), once each, in order, chained, and
/// nothing of any other node in that stream. Both processes must be stopped.
/// Returns the number of events.
pub fn assert_stream_matches_journal(
    aggregator_dir: &Path,
    agent_dir: &Path,
    node: &str,
) -> Result<u64> {
    let stored = stored_stream(aggregator_dir, node)?;
    let journal = journal_events(agent_dir)?;
    if let Some(e) = stored.events.iter().find(|e| e.event.node_id != node) {
        bail!(
            "the stream of {node} holds an event of {} (seq {})",
            e.event.node_id,
            e.event.seq
        );
    }
    if stored.events.len() != journal.len() {
        bail!(
            "{node}: the aggregator holds {} events, the journal {}",
            stored.events.len(),
            journal.len()
        );
    }
    for (s, j) in stored.events.iter().zip(&journal) {
        if s.event.seq != j.event.seq || s.hash != j.hash || s.bytes != j.bytes {
            bail!(
                "{node}: stored seq {} ({:?}) differs from the journal's seq {} ({:?})",
                s.event.seq,
                s.hash,
                j.event.seq,
                j.hash
            );
        }
    }
    Ok(stored.events.len() as u64)
}

impl AggregatorProcess {
    /// The durable head (`acked_seq`) the API reports for `node`, 0 if the
    /// node is unknown.
    pub fn acked_seq(&self, node: &str) -> Result<u64> {
        Ok(self
            .node_status(node)?
            .and_then(|n| n["acked_seq"].as_u64())
            .unwrap_or(0))
    }

    /// `GET /api/v1/refusals`.
    pub fn refusals(&self) -> Result<Vec<serde_json::Value>> {
        let v = get_json(self.api, "/api/v1/refusals")?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    /// The status count of refusals with `reason`.
    pub fn refusal_count(&self, reason: &str) -> Result<u64> {
        Ok(self.status()?["refusals"][reason].as_u64().unwrap_or(0))
    }

    /// Waits until `node` is fully synced and quiet: connected, the
    /// agent's reported head equals the durable head, no backlog, and
    /// nothing moved for a little longer than the test heartbeat (so no
    /// event is still on its way). Returns the durable head seq.
    pub fn wait_synced(&self, node: &str, timeout: Duration) -> Result<u64> {
        self.wait_synced_after(node, sx_common::Timestamp::EPOCH, timeout)
    }

    /// [`wait_synced`](Self::wait_synced) over a connection made after
    /// `after` (so the state of an earlier, killed agent's connection,
    /// which the aggregator only drops at its idle timeout, does not count).
    pub fn wait_synced_after(
        &self,
        node: &str,
        after: sx_common::Timestamp,
        timeout: Duration,
    ) -> Result<u64> {
        let mut last: Option<u64> = None;
        wait_for(timeout, &format!("{node} synced and quiet"), || {
            let n = self.node_status(node).ok()??;
            let acked = n["acked_seq"].as_u64()?;
            let since = n["connection"]["since"]
                .as_str()
                .and_then(|t| sx_common::Timestamp::parse(t).ok())?;
            let synced = acked > 0
                && n["backlog"] == 0
                && n["agent_head_seq"].as_u64()? == acked
                && n["connection"]["state"] == "connected"
                && since > after;
            let stable = synced && last == Some(acked);
            last = synced.then_some(acked);
            if stable {
                return Some(acked);
            }
            std::thread::sleep(Duration::from_millis(400));
            None
        })
    }
}

/// The last `lines` lines of a process log (`<data dir>.log`), for failure
/// messages.
pub fn log_tail(data_dir: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(data_dir.with_extension("log")).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
