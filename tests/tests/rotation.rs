//! Certificate rotation of a running agent, end to end: real `sx-agent` and
//! `sx-aggregator` processes, real QUIC with mutual TLS, real redb files,
//! certificates from `sx-certs`.

use anyhow::{Context, Result};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use sx_certs::NodeRequest;
use sx_common::{EventPayload, Timestamp};
use sx_tests::*;

const NODE: &str = "sx-rempart-rot-node-1";

fn new_certificate(fleet: &TestFleet, name: &str) -> Result<(String, String, String)> {
    let mut req = NodeRequest::new(NODE, "souverix-rempart", "region-a", "edge-zone-a1");
    req.force = true;
    let issued = fleet.pki.issue_node(&req)?;
    // The PKI rewrites its per-node files on every issue: keep a copy.
    let cert = fleet.path().join(format!("{name}.pem"));
    let key = fleet.path().join(format!("{name}.key"));
    std::fs::write(&cert, &issued.cert_pem)?;
    std::fs::write(&key, &issued.key_pem)?;
    Ok((
        cert.display().to_string(),
        key.display().to_string(),
        issued.fingerprint,
    ))
}

fn record(data: &Path, window: &str) -> Result<()> {
    agent_cmd(
        data,
        &[
            "record",
            "lifecycle.maintenance_started",
            &format!(r#"{{"window_id":"{window}"}}"#),
        ],
    )?;
    Ok(())
}

fn rotate(data: &Path, cert: &str, key: &str) -> Result<Value> {
    let out = agent_cmd(data, &["rotate", "--cert", cert, "--key", key, "--json"])?;
    serde_json::from_str(&out).with_context(|| format!("sx-agent rotate printed {out}"))
}

/// A running agent rotates twice: once while connected (live), once while
/// the aggregator is down with events checkpointed under the old key still
/// undelivered. It keeps syncing under each new certificate; the aggregator
/// stores the whole journal exactly once, refuses nothing, and its trust
/// index shows both rotations and the certificate now in use.
#[test]
fn a_running_agent_rotates_and_keeps_syncing() -> Result<()> {
    let fleet = TestFleet::new()?;
    let node = fleet.node(NODE, "souverix-rempart", "region-a", "edge-zone-a1")?;
    let data = fleet.agent_dir(&node)?;
    let first_fingerprint = sx_agent::journal::DataDir::new(&data)
        .identity()?
        .certificate
        .fingerprint;
    let (quic_port, api_port) = (free_udp_port(), free_tcp_port());
    let config = fleet.agent_config("rot", format!("127.0.0.1:{quic_port}").parse()?, "")?;
    let aggregator_dir = fleet.path().join("aggregator");
    let mut aggregator = AggregatorProcess::start(&fleet, &aggregator_dir, quic_port, api_port)?;
    let mut agent = AgentProcess::start(&data, &config)?;
    wait_for(Duration::from_secs(20), "the agent's socket", || {
        std::os::unix::net::UnixStream::connect(data.join("agent.sock")).ok()
    })?;
    for i in 0..5 {
        record(&data, &format!("before-{i}"))?;
    }
    aggregator.wait_synced(NODE, Duration::from_secs(30))?;

    // A bad rotation through the running agent is refused and changes
    // nothing: the node keeps its certificate and keeps syncing.
    let other = fleet.node(
        "sx-rempart-rot-node-2",
        "souverix-rempart",
        "region-a",
        "edge-zone-a1",
    )?;
    let refused = agent_cmd(
        &data,
        &[
            "rotate",
            "--cert",
            &other.cert.display().to_string(),
            "--key",
            &other.key.display().to_string(),
        ],
    )
    .expect_err("a certificate of another node");
    assert!(
        format!("{refused:#}").contains("sx-rempart-rot-node-2"),
        "{refused:#}"
    );

    // Rotation 1, live.
    let (cert1, key1, fingerprint1) = new_certificate(&fleet, "second")?;
    let rotated1 = rotate(&data, &cert1, &key1)?;
    assert_eq!(rotated1["old_fingerprint"], first_fingerprint.as_str());
    assert_eq!(rotated1["new_fingerprint"], fingerprint1.as_str());
    let seq1 = rotated1["seq"].as_u64().context("seq")?;
    for i in 0..5 {
        record(&data, &format!("after-first-{i}"))?;
    }
    let acked = aggregator.wait_synced(NODE, Duration::from_secs(30))?;
    assert!(acked > seq1 + 5, "acked {acked}, rotation at {seq1}");

    // Rotation 2 with the aggregator down: events checkpointed under the
    // second key are still undelivered when the third takes over.
    aggregator.stop()?;
    for i in 0..5 {
        record(&data, &format!("offline-{i}"))?;
    }
    let (cert2, key2, fingerprint2) = new_certificate(&fleet, "third")?;
    let rotated2 = rotate(&data, &cert2, &key2)?;
    assert_eq!(rotated2["old_fingerprint"], fingerprint1.as_str());
    assert_eq!(rotated2["retired_keys"], 2);
    let seq2 = rotated2["seq"].as_u64().context("seq")?;
    assert!(seq2 > acked + 5, "rotation at {seq2}, acked {acked}");
    for i in 0..5 {
        record(&data, &format!("after-second-{i}"))?;
    }
    let restarted = Timestamp::now();
    let aggregator = AggregatorProcess::start(&fleet, &aggregator_dir, quic_port, api_port)?;
    let acked = aggregator
        .wait_synced_after(NODE, restarted, Duration::from_secs(60))
        .with_context(|| format!("agent log:\n{}", log_tail(&data, 30)))?;
    assert!(acked > seq2 + 5, "acked {acked}, rotation at {seq2}");

    // Nothing was refused on the way: no batch signed with a key its
    // session's certificate does not carry, no certificate refused. (A
    // handshake the agent abandoned at its connect timeout while the
    // aggregator was starting is no refusal, and is not recorded as one.)
    let real = aggregator.refusals()?;
    assert!(real.is_empty(), "{real:?}\n{}", log_tail(&data, 60));

    // The trust index shows both rotations, in order, and the certificate
    // the node now connects with, which is the reported chain's leaf.
    let trust = get_json(aggregator.api, &format!("/api/v1/twins/{NODE}/trust"))?;
    let rotations = trust["rotations"].as_array().context("rotations")?;
    let shown: Vec<(u64, &str, &str)> = rotations
        .iter()
        .map(|r| {
            (
                r["seq"].as_u64().unwrap_or(0),
                r["old_fingerprint"].as_str().unwrap_or(""),
                r["new_fingerprint"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            (seq1, first_fingerprint.as_str(), fingerprint1.as_str()),
            (seq2, fingerprint1.as_str(), fingerprint2.as_str()),
        ],
        "{trust}"
    );
    assert_eq!(
        trust["ingest_fingerprint"],
        fingerprint2.as_str(),
        "{trust}"
    );
    assert_eq!(
        trust["certificate_chain"][0]["signature"],
        fingerprint2.as_str(),
        "{trust}"
    );
    let alerts = trust["alerts"].as_array().context("alerts")?;
    assert!(
        alerts.iter().all(|a| !matches!(
            a["kind"].as_str(),
            Some("fork" | "refused" | "identity-mismatch" | "certificate-mismatch")
        )),
        "{alerts:?}"
    );

    agent.stop()?;
    drop(aggregator);

    // Exactly once: the store holds the agent's journal, event for event.
    let stored = assert_stream_matches_journal(&aggregator_dir, &data, NODE)?;
    assert!(stored > seq2 + 5, "{stored}");
    let events = journal_events(&data)?;
    for seq in [seq1, seq2] {
        let e = &events[(seq - 1) as usize];
        assert!(
            matches!(e.event.payload, EventPayload::CertificateRotated(_)),
            "seq {seq}: {:?}",
            e.event.payload
        );
    }

    // The agent's journal verifies: each checkpoint under the key of its
    // time, two keys retired.
    let verified: Value = serde_json::from_str(&agent_cmd(&data, &["verify", "--json"])?)?;
    assert_eq!(verified["ok"], true, "{verified}");
    assert_eq!(verified["report"]["retired_keys"], 2, "{verified}");
    let installed = std::fs::read_to_string(data.join("node.pem"))?;
    assert_eq!(installed, std::fs::read_to_string(&cert2)?);
    Ok(())
}
