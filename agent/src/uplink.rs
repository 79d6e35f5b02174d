//! The uplink: connects to the aggregator over mutually authenticated QUIC,
//! drives an [`AgentSession`], replays the backlog and streams live events;
//! reconnects with bounded, jittered backoff; and records every connectivity
//! transition in the journal.

use crate::config::Config;
use crate::handle::{JournalHandle, OutgoingBatch};
use anyhow::{Context, Result, anyhow, bail};
use rand::Rng;
use std::time::Duration;
use sx_common::chain::ChainHead;
use sx_common::connectivity::{Link, Observation, Thresholds, next_state};
use sx_common::event::{
    ConnectionEstablished, EventPayload, Note, ReplayCompleted, ReplayStarted, SyncCompleted,
    SyncPath,
};
use sx_common::model::ConnectivityState;
use sx_common::protocol::{AgentConfig, AgentEvent, AgentSession, SessionEnd};
use sx_common::time::Timestamp;
use sx_common::wire;
use tokio::sync::{mpsc, oneshot, watch};

/// The connectivity state machine's driver: current state, thresholds, and
/// the last time the aggregator was heard from. Records each transition.
#[derive(Debug)]
pub struct Connectivity {
    state: ConnectivityState,
    thresholds: Thresholds,
    last_contact: Timestamp,
    replay_from: Option<u64>,
    journal: JournalHandle,
    state_tx: watch::Sender<ConnectivityState>,
}

impl Connectivity {
    /// Starts from the last state the journal recorded (or disconnected).
    pub async fn resume(journal: JournalHandle, thresholds: Thresholds) -> Result<Self> {
        let (state, last_contact) = last_recorded(&journal).await?;
        let (state_tx, _) = watch::channel(state);
        Ok(Connectivity {
            state,
            thresholds,
            last_contact,
            replay_from: None,
            journal,
            state_tx,
        })
    }

    pub fn state(&self) -> ConnectivityState {
        self.state
    }

    pub fn watch(&self) -> watch::Receiver<ConnectivityState> {
        self.state_tx.subscribe()
    }

    fn contact(&mut self) {
        self.last_contact = Timestamp::now();
    }

    /// Feeds an observation; records the transition it calls for, if any.
    async fn observe(&mut self, link: Link, rtt_ms: Option<u32>, backlog: u64) -> Result<()> {
        let now = Timestamp::now();
        let obs = Observation {
            link,
            rtt_ms,
            since_contact: now.since(self.last_contact),
            backlog,
        };
        let Some(t) = next_state(self.state, &obs, &self.thresholds) else {
            return Ok(());
        };
        let (from, to) = (t.from, t.to);
        let mut items = vec![(now, EventPayload::ConnectivityTransition(t))];
        if to == ConnectivityState::Replaying {
            self.replay_from = Some(backlog);
            items.push((now, EventPayload::ReplayStarted(ReplayStarted { backlog })));
        }
        if from == ConnectivityState::Replaying {
            let replayed = self.replay_from.take().unwrap_or(0);
            items.push((
                now,
                EventPayload::ReplayCompleted(ReplayCompleted { replayed }),
            ));
        }
        self.journal.append(items).await?;
        tracing::info!(from = %from, to = %to, "connectivity");
        self.state = to;
        self.state_tx.send_replace(to);
        Ok(())
    }
}

/// The last connectivity state the journal recorded and the last moment
/// the aggregator was known reachable (kept by the journal handle's fold).
/// A node never in contact counts from its oldest held event; one with no
/// recorded state starts `disconnected`.
async fn last_recorded(journal: &JournalHandle) -> Result<(ConnectivityState, Timestamp)> {
    let recorded = journal.recorded_connectivity();
    Ok((
        recorded.state.unwrap_or(ConnectivityState::Disconnected),
        recorded
            .last_contact
            .or(recorded.oldest)
            .unwrap_or_else(Timestamp::now),
    ))
}

/// Records the desired state the aggregator sent, if it changed, and the
/// drift the node detects itself against what it runs, so drift is known
/// on the node while it is autonomous and replayed later.
pub async fn learn_desired(
    journal: &JournalHandle,
    desired: sx_common::wire::DesiredState,
) -> Result<()> {
    let items = desired_items(&journal.twin(), desired, Timestamp::now());
    if !items.is_empty() {
        journal.append(items).await?;
    }
    Ok(())
}

/// What learning `desired` records, against the node's own `twin`: the
/// drift the node detects itself, preceded by `inventory.desired` unless
/// the twin already holds that desired state. Shared by the QUIC `Resume`
/// and bundle receipts, so both paths apply desired state alike.
pub fn desired_items(
    twin: &sx_common::DigitalTwin,
    desired: sx_common::wire::DesiredState,
    now: Timestamp,
) -> Vec<(Timestamp, EventPayload)> {
    let mut items = Vec::new();
    for drift in sx_common::desired::detect_drift(twin, &desired) {
        items.push((now, drift));
    }
    let known = sx_common::version::strip_component(&twin.software.desired_version)
        == desired
            .software_version
            .as_deref()
            .map(sx_common::version::strip_component)
            .unwrap_or("")
        && twin.state.desired == desired.config
        && desired
            .policy_version
            .as_deref()
            .is_none_or(|p| p == twin.policy.desired_policy);
    if !known {
        items.insert(0, (now, EventPayload::DesiredStateLearned(desired)));
    }
    items
}

/// Runs the uplink until `shutdown` fires.
pub async fn run(
    config: &Config,
    journal: JournalHandle,
    mut connectivity: Connectivity,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let dir = crate::journal::DataDir::new(&config.agent.data_dir);
    let bind: std::net::SocketAddr = if config.agent.aggregator.is_ipv6() {
        "[::]:0".parse()?
    } else {
        "0.0.0.0:0".parse()?
    };
    let endpoint = quinn::Endpoint::client(bind).context("binding the QUIC client")?;
    // The client configuration of the current credentials, rebuilt after a
    // certificate rotation replaced them.
    let mut client: Option<(std::sync::Arc<crate::tls::Credentials>, quinn::ClientConfig)> = None;
    let mut failures: u32 = 0;
    // After a rotation the link did not go down: reconnect at once, and
    // record no loss of connectivity.
    let mut rotated = false;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let credentials = journal.credentials();
        let tls = match &client {
            Some((c, tls)) if std::sync::Arc::ptr_eq(c, &credentials) => tls.clone(),
            _ => {
                let tls = crate::tls::quic_client_config(
                    &credentials,
                    &dir.ca_path(),
                    config.uplink.idle_timeout,
                )?;
                client = Some((credentials.clone(), tls.clone()));
                tls
            }
        };
        if !rotated {
            let backlog = journal
                .head()
                .seq
                .saturating_sub(journal.marks().await.delivered_seq());
            connectivity.observe(Link::Down, None, backlog).await?;
        }
        match connect(&endpoint, tls, config).await {
            Ok(conn) => {
                connectivity.contact();
                let backlog = journal
                    .head()
                    .seq
                    .saturating_sub(journal.marks().await.delivered_seq());
                connectivity
                    .observe(Link::Connecting, None, backlog)
                    .await?;
                let outcome = drive(
                    &conn,
                    config,
                    &journal,
                    credentials.public_key(),
                    &mut connectivity,
                    &mut shutdown,
                )
                .await;
                conn.close(quinn::VarInt::from_u32(0), b"agent closing");
                // Reconnect at once only when there are new credentials
                // to reconnect with (never loop on a key mismatch).
                rotated = matches!(outcome, Ok(Ended::Rotated))
                    && !std::sync::Arc::ptr_eq(&journal.credentials(), &credentials);
                match outcome {
                    Ok(Ended::Rotated) if rotated => {
                        tracing::info!(
                            "node certificate rotated: reconnecting with the new certificate"
                        );
                        failures = 0;
                    }
                    Ok(Ended::Rotated) => {
                        tracing::error!(
                            "the journal signs with a key the node certificate does not carry"
                        );
                        failures = failures.saturating_add(1);
                    }
                    Ok(Ended::Session(end)) => {
                        tracing::info!("session ended: {end}");
                        if matches!(end, SessionEnd::Refused { .. }) {
                            failures = failures.saturating_add(1);
                        } else {
                            failures = 0;
                        }
                    }
                    Err(e) => {
                        tracing::warn!("session failed: {e:#}");
                        failures = failures.saturating_add(1);
                    }
                }
                if !rotated
                    && !*shutdown.borrow()
                    && connectivity.state() != ConnectivityState::EdgeCached
                {
                    let reason = Some(String::from("session_ended"));
                    journal
                        .record(EventPayload::ConnectionLost(Note { reason }))
                        .await?;
                }
            }
            Err(e) => {
                tracing::debug!("connect failed: {e:#}");
                rotated = false;
                failures = failures.saturating_add(1);
            }
        }
        if rotated {
            continue;
        }
        let delay = backoff(config, failures);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => {}
        }
    }
    endpoint.close(quinn::VarInt::from_u32(0), b"agent stopping");
    // Bounded: draining lasts 3 PTO, which a busy moment can inflate to
    // tens of seconds (RFC 9000 §10.2 allows ending it early on exit).
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    Ok(())
}

/// Exponential backoff from `backoff_initial`, capped at `backoff_max`,
/// with ±50% jitter; zero failures (a session that ended normally) gives
/// the initial delay.
fn backoff(config: &Config, failures: u32) -> Duration {
    let base = config.uplink.backoff_initial;
    let exp = base.saturating_mul(1u32 << failures.min(16));
    let capped = exp.min(config.uplink.backoff_max);
    let jitter = rand::thread_rng().gen_range(0.5..1.0);
    capped.mul_f64(jitter)
}

async fn connect(
    endpoint: &quinn::Endpoint,
    tls: quinn::ClientConfig,
    config: &Config,
) -> Result<quinn::Connection> {
    let connecting = endpoint
        .connect_with(tls, config.agent.aggregator, &config.agent.server_name)
        .context("starting the QUIC connection")?;
    tokio::time::timeout(config.uplink.connect_timeout, connecting)
        .await
        .map_err(|_| anyhow!("connect timed out"))?
        .context("QUIC/TLS handshake")
}

fn protocol_config(config: &Config) -> AgentConfig {
    let us = |d: Duration| d.as_micros().min(i64::MAX as u128) as i64;
    AgentConfig {
        agent_version: format!("sx-agent {}", env!("CARGO_PKG_VERSION")),
        batch_max_events: config.uplink.batch_max_events.max(1),
        window_events: config.uplink.window_events.max(1),
        heartbeat_interval_us: us(config.uplink.heartbeat_interval),
        ack_timeout_us: us(config.uplink.ack_timeout),
        idle_timeout_us: us(config.uplink.idle_timeout),
    }
}

/// How a session ended without an error.
#[derive(Debug)]
enum Ended {
    /// The protocol session ended.
    Session(SessionEnd),
    /// The node's certificate was rotated: the session, authenticated with
    /// the old certificate, cannot carry batches signed with the new key.
    Rotated,
}

/// Drives one session over `conn`, authenticated with the certificate of
/// `session_key`, until it ends.
async fn drive(
    conn: &quinn::Connection,
    config: &Config,
    journal: &JournalHandle,
    session_key: ed25519_dalek::VerifyingKey,
    connectivity: &mut Connectivity,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Ended> {
    let (mut send, recv) = conn.open_bi().await.context("opening the sync stream")?;
    let mut session = AgentSession::new(
        protocol_config(config),
        journal.node_id(),
        journal.head(),
        Timestamp::now(),
    );
    let (tx, mut rx) = mpsc::channel(64);
    let reader = tokio::spawn(sx_common::quic::read_frames(recv, tx));
    let mut heads = journal.watch_head();
    let mut credentials = journal.watch_credentials();
    if credentials.borrow_and_update().public_key() != session_key {
        // Rotated between connecting and here.
        return Ok(Ended::Rotated);
    }
    let mut reading: Option<
        oneshot::Receiver<Result<OutgoingBatch, crate::journal::JournalError>>,
    > = None;
    let mut out = Vec::new();
    let mut draining: Option<tokio::time::Instant> = None;
    let result = loop {
        while let Some(ev) = session.poll_event() {
            match ev {
                AgentEvent::NeedBatch { .. } if draining.is_some() => {
                    session.batch_unavailable();
                }
                AgentEvent::NeedBatch { from, max } => {
                    let (done, wait) = oneshot::channel();
                    let j = journal.clone();
                    tokio::spawn(async move {
                        let _ = done.send(j.read_batch(from, max).await);
                    });
                    reading = Some(wait);
                }
                AgentEvent::Resumed { durable, desired } => {
                    match journal.hash_at(durable.seq).await? {
                        Some(h) if h != durable.hash => {
                            bail!(
                                "fork: the aggregator holds seq {} with hash {} but the journal has {}",
                                durable.seq,
                                durable.hash,
                                h
                            );
                        }
                        _ => {}
                    }
                    connectivity.contact();
                    journal.set_acked(durable).await?;
                    journal
                        .record(EventPayload::ConnectionEstablished(ConnectionEstablished {
                            aggregator: config.agent.server_name.clone(),
                            latency_ms: session.rtt_ms(),
                        }))
                        .await?;
                    if let Some(d) = desired {
                        learn_desired(journal, d).await?;
                    }
                    let backlog = journal.head().seq.saturating_sub(durable.seq);
                    connectivity
                        .observe(Link::Up, session.rtt_ms(), backlog)
                        .await?;
                }
                AgentEvent::Acked { head } => {
                    connectivity.contact();
                    journal.set_acked(head).await?;
                    let backlog = journal.head().seq.saturating_sub(head.seq);
                    let was = connectivity.state();
                    connectivity
                        .observe(Link::Up, session.rtt_ms(), backlog)
                        .await?;
                    if was == ConnectivityState::Replaying
                        && connectivity.state() != ConnectivityState::Replaying
                    {
                        journal
                            .record(EventPayload::SyncCompleted(SyncCompleted {
                                acked_seq: head.seq,
                                via: SyncPath::Quic,
                            }))
                            .await?;
                    }
                }
                AgentEvent::Rtt { rtt_ms } => {
                    connectivity.contact();
                    let backlog = session.backlog();
                    connectivity
                        .observe(Link::Up, Some(rtt_ms), backlog)
                        .await?;
                }
                AgentEvent::Closed(end) => {
                    reader.abort();
                    return Ok(Ended::Session(end));
                }
            }
        }
        out.clear();
        while let Some(msg) = session.poll_transmit() {
            wire::encode_frame(&msg, &mut out);
        }
        if !out.is_empty() {
            send.write_all(&out).await.context("sending")?;
        }
        if let Some(deadline) = draining {
            // Shutting down: wait for the acks of what is in flight (so the
            // journal's marks are current), but no longer than a moment.
            if session.in_flight() == 0 || tokio::time::Instant::now() >= deadline {
                break Ok(Ended::Session(SessionEnd::Shutdown));
            }
        }
        let wait = session
            .poll_timeout()
            .map(|t| (t.0 - Timestamp::now().0).max(0) as u64)
            .unwrap_or(1_000_000);
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(Ok(m)) => session.handle_message(m, Timestamp::now()),
                Some(Err(e)) => break Err(anyhow!("undecodable frame from the aggregator: {e}")),
                None => break Err(anyhow!("the aggregator closed the stream")),
            },
            batch = async { reading.as_mut().expect("guarded").await }, if reading.is_some() => {
                reading = None;
                match batch {
                    // Signed with a key this session's certificate does not
                    // carry: the aggregator would refuse it. Reconnect with
                    // the new certificate; the batch is read again then.
                    Ok(Ok(b)) if b.signer != session_key => break Ok(Ended::Rotated),
                    Ok(Ok(b)) => session.send_batch(b.from, b.events, b.checkpoint, Timestamp::now()),
                    Ok(Err(e)) => break Err(anyhow!("reading the journal: {e}")),
                    Err(_) => session.batch_unavailable(),
                }
            }
            changed = heads.changed() => {
                if changed.is_ok() {
                    let head: ChainHead = *heads.borrow_and_update();
                    session.local_append(head);
                }
            }
            _ = tokio::time::sleep(Duration::from_micros(wait)) => {
                session.handle_timeout(Timestamp::now());
            }
            changed = credentials.changed() => {
                if changed.is_ok() && credentials.borrow_and_update().public_key() != session_key {
                    break Ok(Ended::Rotated);
                }
            }
            _ = shutdown.changed(), if draining.is_none() => {
                draining = Some(tokio::time::Instant::now() + Duration::from_secs(2));
            }
            _ = tokio::time::sleep_until(draining.unwrap_or_else(tokio::time::Instant::now)), if draining.is_some() => {}
        }
    };
    reader.abort();
    result
}
