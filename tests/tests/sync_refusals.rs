//! What the aggregator refuses, over real QUIC with real certificates: each
//! attack is refused with a clear reason, stores nothing, and leaves the
//! aggregator serving legitimate agents.
//!
//! TLS-level refusals (no client certificate, another CA, revoked, expired)
//! never reach a session; in-session attacks (another node's stream,
//! tampered signatures and chains, wrong wire version, oversized frames) are
//! driven by the hand-written client in `sx_tests::rogue` and must be
//! answered with `Refuse` and the right code, then the connection closes.

use anyhow::{Context, Result, bail, ensure};
use ed25519_dalek::SigningKey;
use std::path::{Path, PathBuf};
use std::time::Duration;
use sx_certs::{CaOptions, NodeRequest, Pki, RevokeTarget, Validity};
use sx_common::ChainHead;
use sx_common::wire::{AgentMessage, AggregatorMessage, MAX_FRAME_BYTES, RefusalCode};
use sx_tests::rogue::{self, ClientAuth, Closed, Rogue};
use sx_tests::*;

/// A fleet, its aggregator and helpers shared by the tests below.
struct Setup {
    fleet: TestFleet,
    aggregator: AggregatorProcess,
    aggregator_dir: PathBuf,
    quic: std::net::SocketAddr,
}

impl Setup {
    fn start() -> Result<Setup> {
        let fleet = TestFleet::new()?;
        let aggregator_dir = fleet.path().join("aggregator");
        let aggregator =
            AggregatorProcess::start(&fleet, &aggregator_dir, free_udp_port(), free_tcp_port())?;
        let quic = aggregator.quic;
        Ok(Setup {
            fleet,
            aggregator,
            aggregator_dir,
            quic,
        })
    }

    fn node(&self, id: &str) -> Result<NodeFiles> {
        self.fleet
            .node(id, "souverix-rempart", "region-a", "edge-zone-a1")
    }

    /// A node with an initialised agent data directory and a config.
    fn agent(&self, id: &str) -> Result<(NodeFiles, PathBuf, PathBuf)> {
        let node = self.node(id)?;
        let data = self.fleet.agent_dir(&node)?;
        let config = self.fleet.agent_config(id, self.quic, "")?;
        Ok((node, data, config))
    }

    /// Runs the agent until its whole journal is stored, then stops it.
    fn sync(&self, node: &NodeFiles, data: &Path, config: &Path) -> Result<u64> {
        let after = sx_common::Timestamp::now();
        let mut agent = AgentProcess::start(data, config)?;
        let acked = self
            .aggregator
            .wait_synced_after(&node.node_id, after, Duration::from_secs(60))
            .with_context(|| format!("agent log:\n{}", log_tail(data, 30)))?;
        agent.stop()?;
        Ok(acked)
    }

    fn ca(&self) -> PathBuf {
        self.fleet.pki.ca_path()
    }

    /// Everything stored, as the API tells it: the event count, each node's
    /// durable head, and the fork count.
    fn stored(&self) -> Result<serde_json::Value> {
        let s = self.aggregator.status()?;
        let heads: Vec<_> = s["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| {
                serde_json::json!([
                    n["node_id"].clone(),
                    n["acked_seq"].clone(),
                    n["acked_hash"].clone()
                ])
            })
            .collect();
        Ok(serde_json::json!({
            "events_stored": s["events_stored"],
            "heads": heads,
            "forks": s["forks"],
        }))
    }

    /// Whether the aggregator process is still running.
    fn alive(&mut self) -> bool {
        matches!(self.aggregator.child.try_wait(), Ok(None))
    }

    /// Waits for a refusal with `reason` beyond `before` of them, and
    /// returns the most recent such refusal from `/api/v1/refusals`.
    fn refusal_recorded(&self, reason: &str, before: u64) -> Result<serde_json::Value> {
        wait_for(
            Duration::from_secs(5),
            &format!("refusal {reason:?} counted"),
            || (self.aggregator.refusal_count(reason).ok()? > before).then_some(()),
        )?;
        self.aggregator
            .refusals()?
            .into_iter()
            .rev()
            .find(|r| r["reason"] == reason)
            .context("the refusal is missing from /api/v1/refusals")
    }
}

fn signing_key(node: &NodeFiles) -> Result<SigningKey> {
    Ok(sx_certs::load_signing_key(&node.key)?)
}

/// Offers a complete session to a client the aggregator must refuse during
/// the TLS handshake: `Hello` for `node_id` and, with a key, a batch of
/// well-formed events signed by it (which the store would take if the
/// certificate were accepted). Returns how the connection ended.
fn offer_refused_tls(
    quic: std::net::SocketAddr,
    config: quinn::ClientConfig,
    node_id: &str,
    key: &SigningKey,
) -> Result<String> {
    let mut rogue = match Rogue::connect(quic, config) {
        Ok(r) => r,
        Err(e) => return Ok(format!("handshake failed: {e:#}")),
    };
    // TLS 1.3: the client is done with its handshake before the server has
    // judged its certificate; whatever it sends next must go nowhere.
    let events = rogue::chain(node_id, ChainHead::default(), 10);
    let sent = rogue
        .send(&AgentMessage::Hello {
            node_id: node_id.into(),
            agent_version: "rogue".into(),
            head: ChainHead::default(),
        })
        .and_then(|()| rogue.send(&rogue::batch(&events, key)));
    if sent.is_ok() {
        match rogue.next_message(Duration::from_secs(5)) {
            Ok(None) => {}
            Ok(Some(m)) => bail!("a refused certificate got an answer: {m:?}"),
            Err(e) => bail!("a refused certificate was not disconnected: {e:#}"),
        }
    }
    match rogue.closed(Duration::from_secs(5))? {
        Closed::Application { code, reason } => {
            bail!(
                "closed by the application ({code}, {reason:?}): the session was not refused by TLS"
            )
        }
        Closed::Other(how) => Ok(how),
    }
}

/// Reads what the aggregator answers until the stream ends: exactly one
/// `Refuse` with `code` (and no `Ack` or `Rewind` before it), then the
/// connection closes with the "refused" application code. Returns the
/// refusal message.
fn expect_refused(rogue: &mut Rogue, code: RefusalCode) -> Result<String> {
    let messages = rogue.messages_until_end(Duration::from_secs(10))?;
    let [AggregatorMessage::Refuse { code: got, message }] = messages.as_slice() else {
        bail!("expected only Refuse({code:?}), got {messages:?}");
    };
    ensure!(
        *got == code,
        "refused with {got:?} ({message}), expected {code:?}"
    );
    let closed = rogue.closed(Duration::from_secs(5))?;
    ensure!(
        closed
            == Closed::Application {
                code: 2,
                reason: "refused".into()
            },
        "connection after the refusal: {closed:?}"
    );
    Ok(message.clone())
}

/// No client certificate, a certificate of another CA (for the very node
/// id of a real node), and an expired certificate: all refused in the TLS
/// handshake, counted as `tls-handshake`, nothing stored; the real node
/// then syncs, and its stream holds only its own events.
#[test]
fn certificates_outside_the_fleet_are_refused_at_the_handshake() -> Result<()> {
    let mut s = Setup::start()?;
    let (node, data, config) = s.agent("sx-rempart-tls-node-1")?;
    let before = s.stored()?;
    let stray_key = SigningKey::from_bytes(&[7; 32]);

    // 1. No client certificate.
    let count = s.aggregator.refusal_count("tls-handshake")?;
    let how = offer_refused_tls(
        s.quic,
        rogue::client_config(&s.ca(), ClientAuth::None)?,
        &node.node_id,
        &stray_key,
    )?;
    let refusal = s.refusal_recorded("tls-handshake", count)?;
    let detail = refusal["detail"].as_str().unwrap_or_default();
    assert!(
        detail.to_lowercase().contains("certificate"),
        "no-certificate refusal detail: {refusal} (client saw {how})"
    );

    // 2. Certificates from other CAs claiming the real node's id, whose
    //    keys sign a valid-looking chain: one CA with the fleet CA's very
    //    name (the signature cannot match), one with a name of its own.
    for (dir, ca_name, want) in [
        ("other-pki-same-name", None, "BadSignature"),
        ("other-pki", Some("rogue-root-ca"), "UnknownIssuer"),
    ] {
        let mut opts = CaOptions::default();
        if let Some(name) = ca_name {
            opts.common_name = name.into();
        }
        let other = Pki::init(s.fleet.path().join(dir), &opts)?;
        let forged = other.issue_node(&NodeRequest::new(
            &node.node_id,
            "souverix-rempart",
            "region-a",
            "edge-zone-a1",
        ))?;
        let forged_key = sx_certs::load_signing_key(&forged.key_path)?;
        let count = s.aggregator.refusal_count("tls-handshake")?;
        let how = offer_refused_tls(
            s.quic,
            rogue::client_config(
                &s.ca(),
                ClientAuth::Cert {
                    cert: &forged.cert_path,
                    key: &forged.key_path,
                },
            )?,
            &node.node_id,
            &forged_key,
        )?;
        let refusal = s.refusal_recorded("tls-handshake", count)?;
        let detail = refusal["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(want),
            "foreign CA ({dir}) refusal detail: {refusal} (client saw {how})"
        );
    }

    // 3. An expired certificate of this fleet.
    let now = time::OffsetDateTime::now_utc();
    let mut req = NodeRequest::new(
        "sx-rempart-tls-expired",
        "souverix-rempart",
        "region-a",
        "edge-zone-a1",
    );
    req.validity = Validity::between(
        now - time::Duration::days(30),
        now - time::Duration::days(1),
    );
    let expired = s.fleet.pki.issue_node(&req)?;
    let count = s.aggregator.refusal_count("tls-handshake")?;
    let how = offer_refused_tls(
        s.quic,
        rogue::client_config(
            &s.ca(),
            ClientAuth::Cert {
                cert: &expired.cert_path,
                key: &expired.key_path,
            },
        )?,
        "sx-rempart-tls-expired",
        &sx_certs::load_signing_key(&expired.key_path)?,
    )?;
    let refusal = s.refusal_recorded("tls-handshake", count)?;
    let detail = refusal["detail"].as_str().unwrap_or_default();
    assert!(
        detail.to_lowercase().contains("expired"),
        "expired refusal detail: {refusal} (client saw {how})"
    );

    // Nothing was stored, no node is known, and no session ever started.
    assert_eq!(s.stored()?, before, "a refused client changed the store");
    assert_eq!(s.aggregator.status()?["nodes"], serde_json::json!([]));
    assert!(s.alive(), "the aggregator died");

    // The real node syncs, and its stream is its own journal, from seq 1.
    let acked = s.sync(&node, &data, &config)?;
    assert!(acked > 0);
    s.aggregator.stop()?;
    let n = assert_stream_matches_journal(&s.aggregator_dir, &data, &node.node_id)?;
    assert_eq!(n, acked);
    Ok(())
}

/// A node certificate revoked while the aggregator runs: it worked before,
/// and once the aggregator reloaded the CRL (no restart) it is refused at
/// the handshake; nothing it offers is stored; other nodes still sync.
#[test]
fn a_revoked_certificate_is_refused_after_the_crl_reload() -> Result<()> {
    let mut s = Setup::start()?;
    let revoked = s.node("sx-rempart-revoked-1")?;
    let key = signing_key(&revoked)?;
    // Before the revocation the certificate is good: Hello gets Resume.
    {
        let mut r = Rogue::connect_as(s.quic, &s.ca(), &revoked.cert, &revoked.key)?;
        let durable = r.hello(&revoked.node_id, ChainHead::default())?;
        assert_eq!(durable, ChainHead::default());
    }
    let before = s.stored()?;
    s.fleet.pki.revoke(
        RevokeTarget::Node(revoked.node_id.clone()),
        "key-compromise",
    )?;
    // The aggregator polls the CRL file every 2 s; handshakes are refused
    // once it reloaded.
    wait_for(Duration::from_secs(10), "the CRL reload", || {
        let mut r = Rogue::connect_as(s.quic, &s.ca(), &revoked.cert, &revoked.key).ok()?;
        r.hello(&revoked.node_id, ChainHead::default())
            .is_err()
            .then_some(())
    })?;
    let count = s.aggregator.refusal_count("tls-handshake")?;
    let how = offer_refused_tls(
        s.quic,
        rogue::client_config(
            &s.ca(),
            ClientAuth::Cert {
                cert: &revoked.cert,
                key: &revoked.key,
            },
        )?,
        &revoked.node_id,
        &key,
    )?;
    let refusal = s.refusal_recorded("tls-handshake", count)?;
    let detail = refusal["detail"].as_str().unwrap_or_default();
    assert!(
        detail.to_lowercase().contains("revoked"),
        "revocation refusal detail: {refusal} (client saw {how})"
    );
    assert_eq!(s.stored()?, before, "a revoked node changed the store");
    assert!(s.alive(), "the aggregator died");

    // Another node of the fleet is unaffected by the reload.
    let (node, data, config) = s.agent("sx-rempart-revoked-ok")?;
    let acked = s.sync(&node, &data, &config)?;
    s.aggregator.stop()?;
    assert_eq!(
        assert_stream_matches_journal(&s.aggregator_dir, &data, &node.node_id)?,
        acked
    );
    assert!(
        stored_stream(&s.aggregator_dir, &revoked.node_id)?
            .events
            .is_empty()
    );
    Ok(())
}

/// A valid node certificate cannot write another node's stream: a `Hello`
/// naming another node, a batch of the other node's real (validly signed)
/// events, and a checkpoint in the other node's name are each refused with
/// `identity-mismatch`. The same events then arrive over the other node's
/// own session and are stored — they were refused for the identity only.
#[test]
fn a_node_cannot_write_another_nodes_stream() -> Result<()> {
    let mut s = Setup::start()?;
    let (attacker, a_data, a_config) = s.agent("sx-rempart-id-attacker")?;
    let (victim, v_data, v_config) = s.agent("sx-coeur-id-victim")?;
    s.sync(&attacker, &a_data, &a_config)?;
    let victim_acked = s.sync(&victim, &v_data, &v_config)?;
    // The victim records more while offline: real events, not yet stored.
    fill_journal(&v_data, 20, 20)?;
    let victim_new: Vec<_> = journal_events(&v_data)?
        .into_iter()
        .filter(|e| e.event.seq > victim_acked)
        .collect();
    assert_eq!(victim_new.len(), 20);
    let victim_key = signing_key(&victim)?;
    let before = s.stored()?;

    // 1. Hello naming the victim over the attacker's certificate.
    let count = s.aggregator.refusal_count("identity-mismatch")?;
    let mut r = Rogue::connect_as(s.quic, &s.ca(), &attacker.cert, &attacker.key)?;
    r.send(&AgentMessage::Hello {
        node_id: victim.node_id.clone(),
        agent_version: "rogue".into(),
        head: ChainHead::default(),
    })?;
    let message = expect_refused(&mut r, RefusalCode::IdentityMismatch)?;
    assert!(message.contains(&victim.node_id), "{message}");
    let refusal = s.refusal_recorded("identity-mismatch", count)?;
    assert_eq!(refusal["node_id"], attacker.node_id, "{refusal}");

    // 2. The attacker's own session carrying the victim's events, with the
    //    victim's valid checkpoint.
    let count = s.aggregator.refusal_count("identity-mismatch")?;
    let mut r = Rogue::connect_as(s.quic, &s.ca(), &attacker.cert, &attacker.key)?;
    r.hello(&attacker.node_id, ChainHead::default())?;
    r.send(&rogue::batch(&victim_new, &victim_key))?;
    let message = expect_refused(&mut r, RefusalCode::IdentityMismatch)?;
    assert!(message.contains(&victim.node_id), "{message}");
    s.refusal_recorded("identity-mismatch", count)?;

    // 3. The attacker's own events chained on its stored head, closed by a
    //    checkpoint in the victim's name (signed with the victim's key).
    let count = s.aggregator.refusal_count("identity-mismatch")?;
    let mut r = Rogue::connect_as(s.quic, &s.ca(), &attacker.cert, &attacker.key)?;
    let durable = r.hello(&attacker.node_id, ChainHead::default())?;
    let own = rogue::chain(&attacker.node_id, durable, 5);
    r.send(&rogue::batch_signed(&own, &victim_key, &victim.node_id))?;
    expect_refused(&mut r, RefusalCode::IdentityMismatch)?;
    s.refusal_recorded("identity-mismatch", count)?;

    assert_eq!(s.stored()?, before, "identity attacks changed the store");
    assert_eq!(s.status_forks()?, 0);
    assert!(s.alive(), "the aggregator died");

    // Control: the rogue client's batches are otherwise fine — the same
    // construction over a node's own session is acknowledged.
    let control = s.node("sx-relais-id-control")?;
    let mut r = Rogue::connect_as(s.quic, &s.ca(), &control.cert, &control.key)?;
    let durable = r.hello(&control.node_id, ChainHead::default())?;
    let events = rogue::chain(&control.node_id, durable, 5);
    r.send(&rogue::batch(&events, &signing_key(&control)?))?;
    match r.answer()? {
        AggregatorMessage::Ack { head } => assert_eq!(head.seq, 5),
        other => bail!("the control batch was not acknowledged: {other:?}"),
    }
    drop(r);

    // The victim's own agent delivers exactly those events.
    let acked = s.sync(&victim, &v_data, &v_config)?;
    assert!(acked >= victim_acked + 20);
    s.aggregator.stop()?;
    assert_eq!(
        assert_stream_matches_journal(&s.aggregator_dir, &v_data, &victim.node_id)?,
        acked
    );
    assert_stream_matches_journal(&s.aggregator_dir, &a_data, &attacker.node_id)?;
    let control_stored = stored_stream(&s.aggregator_dir, &control.node_id)?;
    let hashes = |v: &[sx_common::SealedEvent]| v.iter().map(|e| e.hash).collect::<Vec<_>>();
    assert_eq!(hashes(&control_stored.events), hashes(&events));
    Ok(())
}

/// Events whose checkpoint is signed by another key, and events whose chain
/// was tampered with (in the middle of the batch, and at the link onto the
/// stored head), over the node's own valid session: refused with
/// `verification-failed`, nothing stored, no fork recorded; the node's own
/// agent then delivers its real events.
#[test]
fn tampered_signatures_and_chains_are_refused() -> Result<()> {
    let mut s = Setup::start()?;
    let (node, data, config) = s.agent("sx-rempart-tamper-1")?;
    let acked = s.sync(&node, &data, &config)?;
    fill_journal(&data, 30, 30)?;
    let real: Vec<_> = journal_events(&data)?
        .into_iter()
        .filter(|e| e.event.seq > acked)
        .collect();
    assert_eq!(real.len(), 30);
    let key = signing_key(&node)?;
    let other_key = SigningKey::from_bytes(&[42; 32]);
    let before = s.stored()?;

    let attempt = |msg: AgentMessage, what: &str| -> Result<String> {
        let count = s.aggregator.refusal_count("verification-failed")?;
        let mut r = Rogue::connect_as(s.quic, &s.ca(), &node.cert, &node.key)?;
        let durable = r.hello(&node.node_id, ChainHead::default())?;
        assert_eq!(durable.seq, acked, "{what}: resume point");
        r.send(&msg)?;
        let message = expect_refused(&mut r, RefusalCode::VerificationFailed)
            .with_context(|| what.to_owned())?;
        let refusal = s.refusal_recorded("verification-failed", count)?;
        assert_eq!(refusal["node_id"], node.node_id, "{refusal}");
        Ok(message)
    };

    // 1. The node's real events, checkpoint signed by another key.
    let message = attempt(
        rogue::batch_signed(&real, &other_key, &node.node_id),
        "foreign signature",
    )?;
    assert!(message.contains("signature"), "{message}");

    // 2. A prev_hash changed in the middle (the rest re-chained onto it),
    //    checkpoint validly signed by the node over the tampered head.
    let mut tampered = real.clone();
    rogue::tamper_prev_hash(&mut tampered, 10, sx_common::Digest([9; 32]));
    let message = attempt(rogue::batch(&tampered, &key), "broken chain")?;
    assert!(
        message.contains(&format!("prev_hash at seq {}", acked + 11)),
        "{message}"
    );

    // 3. The first event does not chain onto the stored head.
    let mut tampered = real.clone();
    rogue::tamper_prev_hash(&mut tampered, 0, sx_common::Digest([3; 32]));
    let message = attempt(rogue::batch(&tampered, &key), "detached chain")?;
    assert!(
        message.contains(&format!("prev_hash at seq {}", acked + 1)),
        "{message}"
    );

    assert_eq!(s.stored()?, before, "tampered batches changed the store");
    assert_eq!(s.status_forks()?, 0, "tampering is not a fork");
    assert!(s.alive(), "the aggregator died");

    // The node's real events are delivered by its agent.
    let synced = s.sync(&node, &data, &config)?;
    assert!(synced >= acked + 30);
    s.aggregator.stop()?;
    assert_eq!(
        assert_stream_matches_journal(&s.aggregator_dir, &data, &node.node_id)?,
        synced
    );
    Ok(())
}

/// Frames no agent sends: a `Hello` in wire version 99, and a length header
/// above `MAX_FRAME_BYTES` sent without its body (first, and mid-session).
/// Refused with `wrong-version` / `oversized` before any allocation or
/// store access; the node's agent then syncs as usual.
#[test]
fn wrong_version_and_oversized_frames_are_refused() -> Result<()> {
    let mut s = Setup::start()?;
    let (node, data, config) = s.agent("sx-relais-frames-1")?;
    let acked = s.sync(&node, &data, &config)?;
    fill_journal(&data, 10, 10)?;
    let before = s.stored()?;
    let hello = AgentMessage::Hello {
        node_id: node.node_id.clone(),
        agent_version: "rogue".into(),
        head: ChainHead::default(),
    };

    // 1. Wire version 99.
    let count = s.aggregator.refusal_count("wrong-version")?;
    let mut frame = sx_common::wire::frame(&hello);
    frame[4..6].copy_from_slice(&99u16.to_be_bytes());
    let mut r = Rogue::connect_as(s.quic, &s.ca(), &node.cert, &node.key)?;
    r.send_raw(&frame)?;
    let message = expect_refused(&mut r, RefusalCode::WrongVersion)?;
    assert!(message.contains("99"), "{message}");
    s.refusal_recorded("wrong-version", count)?;

    // 2. An oversized length header as the first frame, no body.
    let mut header = Vec::new();
    header.extend_from_slice(&((MAX_FRAME_BYTES + 1) as u32).to_be_bytes());
    header.extend_from_slice(&sx_common::codec::WIRE_VERSION.to_be_bytes());
    let count = s.aggregator.refusal_count("oversized")?;
    let mut r = Rogue::connect_as(s.quic, &s.ca(), &node.cert, &node.key)?;
    r.send_raw(&header)?;
    let message = expect_refused(&mut r, RefusalCode::Oversized)?;
    assert!(
        message.contains(&(MAX_FRAME_BYTES + 1).to_string()),
        "{message}"
    );
    s.refusal_recorded("oversized", count)?;

    // 3. The same, mid-session (after Resume), with the largest length.
    let mut header = Vec::new();
    header.extend_from_slice(&u32::MAX.to_be_bytes());
    header.extend_from_slice(&sx_common::codec::WIRE_VERSION.to_be_bytes());
    let count = s.aggregator.refusal_count("oversized")?;
    let mut r = Rogue::connect_as(s.quic, &s.ca(), &node.cert, &node.key)?;
    let durable = r.hello(&node.node_id, ChainHead::default())?;
    assert_eq!(durable.seq, acked);
    r.send_raw(&header)?;
    expect_refused(&mut r, RefusalCode::Oversized)?;
    s.refusal_recorded("oversized", count)?;

    assert_eq!(s.stored()?, before, "bad frames changed the store");
    assert!(s.alive(), "the aggregator died");

    let synced = s.sync(&node, &data, &config)?;
    assert!(synced >= acked + 10);
    s.aggregator.stop()?;
    assert_eq!(
        assert_stream_matches_journal(&s.aggregator_dir, &data, &node.node_id)?,
        synced
    );
    Ok(())
}

impl Setup {
    fn status_forks(&self) -> Result<u64> {
        Ok(self.aggregator.status()?["forks"].as_u64().unwrap_or(0))
    }
}
