//! The aggregator process: QUIC ingest, the single writer, and the HTTP API.
//!
//! Each QUIC connection carries one bidirectional stream of frames. A reader
//! task turns bytes into messages; the connection task drives an
//! [`AggregatorSession`] and pipelines batches to the writer, answering each
//! with an ack once its commit is durable.

use crate::config::Config;
use crate::ingest::{GroupCommit, Ingest, Verdict};
use crate::store::{EventStore, RedbStore, Submission};
use crate::sync::SyncTable;
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use sx_common::event::SyncPath;
use sx_common::protocol::{AggregatorConfig, AggregatorEvent, AggregatorSession, Rejection};
use sx_common::time::Timestamp;
use sx_common::wire;
use tokio::sync::{mpsc, oneshot};

/// Why a connection or session was refused; kept for operators and metrics.
#[derive(Clone, Debug, Serialize)]
pub struct Refusal {
    pub at: Timestamp,
    pub peer: String,
    pub node_id: Option<String>,
    pub reason: String,
    pub detail: String,
}

/// Recent refusals (bounded) and counts by reason.
#[derive(Debug, Default)]
pub struct Refusals {
    inner: Mutex<(VecDeque<Refusal>, std::collections::BTreeMap<String, u64>)>,
}

impl Refusals {
    const KEEP: usize = 1_000;

    pub fn record(&self, refusal: Refusal) {
        tracing::warn!(
            peer = %refusal.peer,
            node = refusal.node_id.as_deref().unwrap_or("-"),
            reason = %refusal.reason,
            "refused: {}",
            refusal.detail
        );
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        *g.1.entry(refusal.reason.clone()).or_default() += 1;
        g.0.push_back(refusal);
        if g.0.len() > Self::KEEP {
            g.0.pop_front();
        }
    }

    pub fn recent(&self) -> Vec<Refusal> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.0.iter().cloned().collect()
    }

    pub fn counts(&self) -> std::collections::BTreeMap<String, u64> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.1.clone()
    }
}

/// Everything the running aggregator shares between tasks.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    pub store: Arc<dyn EventStore>,
    pub projections: Arc<crate::projection::service::Projections>,
    pub ingest: Ingest,
    pub sync: SyncTable,
    pub refusals: Refusals,
    pub started_at: Timestamp,
    /// Counters only `/metrics` reports (see [`crate::metrics`]).
    pub metrics: crate::metrics::Metrics,
    /// Serialises observation refreshes: the last to record an observation
    /// in the engine is the last to have computed one.
    observing: std::sync::Mutex<()>,
}

impl Shared {
    /// Records in the projection engine the current observation of each
    /// of `nodes` (store record and sync table), for the connectivity
    /// views. Call after anything an observation derives from changed.
    pub fn observe<'a>(&self, nodes: impl IntoIterator<Item = &'a str>) {
        let _serial = self.observing.lock().unwrap_or_else(|p| p.into_inner());
        let records: Vec<_> = nodes
            .into_iter()
            .filter_map(|n| match self.store.node(n) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(node = n, "reading the node record: {e}");
                    None
                }
            })
            .collect();
        // The sync table's lock is released before the engine's is taken.
        let observations = self.sync.observations(&records);
        self.projections.observe(observations);
    }

    /// Records the observation of every node the store knows.
    pub fn observe_all(&self) -> Result<(), crate::store::StoreError> {
        let _serial = self.observing.lock().unwrap_or_else(|p| p.into_inner());
        let records = self.store.nodes()?;
        let observations = self.sync.observations(&records);
        self.projections.observe(observations);
        Ok(())
    }
}

impl std::fmt::Debug for dyn EventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventStore")
    }
}

/// Addresses the aggregator actually bound (ports may have been 0).
#[derive(Clone, Copy, Debug)]
pub struct Bound {
    pub quic: SocketAddr,
    pub api: SocketAddr,
}

/// Runs the aggregator until `shutdown` completes. `ready` (if given) gets
/// the bound addresses once both listeners are up.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
    ready: Option<oneshot::Sender<Bound>>,
) -> Result<()> {
    // Beyond loopback the API needs an operator credential: refuse to start
    // without one rather than serve the fleet to anyone.
    crate::access::ApiAccess::from_config(&config)?;
    std::fs::create_dir_all(&config.aggregator.data_dir)
        .with_context(|| format!("creating {}", config.aggregator.data_dir.display()))?;
    let store: Arc<dyn EventStore> =
        Arc::new(RedbStore::open(config.store_path()).context("opening the event store")?);
    let ingest = Ingest::start(
        store.clone(),
        GroupCommit {
            max_events: config.ingest.group_commit_max_events,
            ..GroupCommit::default()
        },
    );
    let (projections, startup) = crate::projection::service::Projections::open(
        store.clone(),
        &config.aggregator.data_dir.join("projections.snapshot"),
    )
    .context("loading the projections")?;
    tracing::info!(
        from_snapshot = startup.from_snapshot,
        tail_events = startup.tail_events,
        nodes = startup.nodes,
        "projections ready"
    );
    let projections = Arc::new(projections);
    if let Some(path) = &config.aggregator.desired {
        load_desired(&projections, path)?;
    }
    let files = config.tls_files();
    let idle = std::time::Duration::from_secs(config.ingest.idle_timeout.as_secs().max(1));
    let server_config = crate::tls::quic_server_config(
        &crate::tls::TlsPaths {
            cert_chain: &files.cert_chain,
            key: &files.key,
            ca: &files.ca,
            crl: Some(&files.crl),
        },
        idle,
    )?;
    let endpoint = quinn::Endpoint::server(server_config, config.aggregator.listen)
        .with_context(|| format!("binding QUIC on {}", config.aggregator.listen))?;
    let quic_addr = endpoint.local_addr()?;
    let api_listener = tokio::net::TcpListener::bind(config.aggregator.api_listen)
        .await
        .with_context(|| format!("binding the API on {}", config.aggregator.api_listen))?;
    let api_addr = api_listener.local_addr()?;
    let live_projections = config.ingest.live_projections;
    let shared = Arc::new(Shared {
        config,
        store,
        projections: projections.clone(),
        ingest,
        sync: SyncTable::default(),
        refusals: Refusals::default(),
        started_at: Timestamp::now(),
        metrics: crate::metrics::Metrics::default(),
        observing: std::sync::Mutex::new(()),
    });
    // Every node the engine holds gets its observation, and so does each
    // node as its events are applied (the first ones included).
    let weak = Arc::downgrade(&shared);
    projections.set_observer(Box::new(move |nodes| {
        if let Some(shared) = weak.upgrade() {
            shared.observe(nodes.iter().copied());
        }
    }));
    shared
        .observe_all()
        .context("recording the nodes' observations")?;
    let follower = live_projections.then(|| projections.clone().follow(&shared.ingest));
    tracing::info!(%quic_addr, %api_addr, "aggregator listening");
    if let Some(ready) = ready {
        let _ = ready.send(Bound {
            quic: quic_addr,
            api: api_addr,
        });
    }
    let crl_watch = tokio::spawn(watch_crl(endpoint.clone(), shared.clone(), files, idle));
    let api = tokio::spawn(crate::api::serve(api_listener, shared.clone()));
    let snapshots = tokio::spawn(snapshot_loop(projections.clone()));
    let accept = accept_loop(endpoint.clone(), shared.clone());
    tokio::select! {
        _ = accept => {},
        _ = shutdown => {},
    }
    endpoint.close(quinn::VarInt::from_u32(0), b"aggregator shutting down");
    api.abort();
    crl_watch.abort();
    snapshots.abort();
    // Give peers a moment to learn of the close, but no more: a closed
    // connection drains for 3 PTO, and a PTO inflated by a busy moment made
    // shutdown wait tens of seconds. RFC 9000 §10.2 lets an endpoint that
    // closes its socket end draining early.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), endpoint.wait_idle()).await;
    if let Some(follower) = follower {
        follower.abort();
    }
    projections
        .catch_up()
        .context("final projection catch-up")?;
    projections
        .save_snapshot()
        .context("saving the projection snapshot")?;
    Ok(())
}

/// Saves a projection snapshot every minute, so a restart replays only the
/// tail.
async fn snapshot_loop(projections: Arc<crate::projection::service::Projections>) {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        let p = projections.clone();
        match tokio::task::spawn_blocking(move || p.save_snapshot()).await {
            Ok(Ok(bytes)) => tracing::debug!(bytes, "projection snapshot saved"),
            Ok(Err(e)) => tracing::warn!("projection snapshot failed: {e}"),
            Err(e) => tracing::warn!("projection snapshot task failed: {e}"),
        }
    }
}

/// Loads a desired-state declaration (TOML or JSON) and records it as a
/// change when it differs from the current one.
pub fn load_desired(
    projections: &crate::projection::service::Projections,
    path: &std::path::Path,
) -> Result<()> {
    let spec = read_desired(path)?;
    if projections.read(|e| e.desired() != &spec) {
        let by = format!("file:{}", path.display());
        projections.change_desired(&by, sx_common::desired::DesiredChangeKind::Replace { spec })?;
        tracing::info!("desired state loaded from {}", path.display());
    }
    Ok(())
}

/// Reads a desired-state declaration file: JSON when it ends in `.json`,
/// else TOML.
pub fn read_desired(path: &std::path::Path) -> Result<sx_common::desired::DesiredSpec> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    } else {
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

/// Rebuilds the TLS configuration when the CRL file changes, so a
/// revocation takes effect for new connections without a restart.
async fn watch_crl(
    endpoint: quinn::Endpoint,
    _shared: Arc<Shared>,
    files: crate::config::TlsFiles,
    idle: std::time::Duration,
) {
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut last = modified(&files.crl);
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let now = modified(&files.crl);
        if now != last {
            last = now;
            let paths = crate::tls::TlsPaths {
                cert_chain: &files.cert_chain,
                key: &files.key,
                ca: &files.ca,
                crl: Some(&files.crl),
            };
            match crate::tls::quic_server_config(&paths, idle) {
                Ok(cfg) => {
                    endpoint.set_server_config(Some(cfg));
                    tracing::info!("CRL changed: TLS configuration reloaded");
                }
                Err(e) => tracing::error!("CRL changed but could not be loaded: {e:#}"),
            }
        }
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        let shared = shared.clone();
        tokio::spawn(async move {
            let peer = incoming.remote_address().to_string();
            match incoming.await {
                Ok(conn) => handle_connection(conn, shared).await,
                // This side failed the handshake (no or untrusted client
                // certificate, revoked, expired, protocol error): a refusal.
                Err(
                    e @ (quinn::ConnectionError::TransportError(_)
                    | quinn::ConnectionError::VersionMismatch),
                ) => shared.refusals.record(Refusal {
                    at: Timestamp::now(),
                    peer,
                    node_id: None,
                    reason: "tls-handshake".into(),
                    detail: e.to_string(),
                }),
                // The peer gave up or went away mid-handshake (an agent's
                // connect timeout while this aggregator was busy): nothing
                // was refused.
                Err(e) => tracing::debug!(%peer, "handshake abandoned: {e}"),
            }
        });
    }
}

/// The verified identity of a connection's client certificate.
struct PeerIdentity {
    node_id: String,
    key: ed25519_dalek::VerifyingKey,
    fingerprint: String,
}

fn peer_identity(conn: &quinn::Connection) -> Result<PeerIdentity, String> {
    let certs = conn
        .peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .ok_or("no client certificate")?;
    let leaf = certs.first().ok_or("empty client certificate chain")?;
    let info = sx_certs::inspect_der(leaf).map_err(|e| format!("unreadable certificate: {e}"))?;
    let node_id = info
        .node_id
        .clone()
        .ok_or("certificate names no node (no urn:souverix:node: SAN)")?;
    let key_bytes: [u8; 32] = info
        .public_key
        .as_slice()
        .try_into()
        .map_err(|_| "certificate key is not Ed25519".to_string())?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&key_bytes)
        .map_err(|e| format!("certificate key unusable: {e}"))?;
    Ok(PeerIdentity {
        node_id,
        key,
        fingerprint: info.fingerprint,
    })
}

async fn handle_connection(conn: quinn::Connection, shared: Arc<Shared>) {
    let _open = shared.metrics.connection_opened();
    let peer = conn.remote_address().to_string();
    let identity = match peer_identity(&conn) {
        Ok(id) => id,
        Err(detail) => {
            shared.refusals.record(Refusal {
                at: Timestamp::now(),
                peer,
                node_id: None,
                reason: "identity".into(),
                detail: detail.clone(),
            });
            conn.close(quinn::VarInt::from_u32(1), detail.as_bytes());
            return;
        }
    };
    let (send, recv) = match conn.accept_bi().await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(node = %identity.node_id, "connection ended before a stream: {e}");
            return;
        }
    };
    shared
        .sync
        .connected(&identity.node_id, peer.clone(), Timestamp::now());
    shared.observe([identity.node_id.as_str()]);
    let end = drive_session(&shared, &identity, &peer, send, recv).await;
    shared
        .sync
        .disconnected(&identity.node_id, Timestamp::now());
    shared.observe([identity.node_id.as_str()]);
    match end {
        Some(refusal) => {
            shared.refusals.record(refusal);
            // Let the Refuse frame reach the agent before closing.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            conn.close(quinn::VarInt::from_u32(2), b"refused");
        }
        None => conn.close(quinn::VarInt::from_u32(0), b"session over"),
    }
}

/// Drives one session; returns the refusal if the session was refused.
async fn drive_session(
    shared: &Arc<Shared>,
    identity: &PeerIdentity,
    peer: &str,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
) -> Option<Refusal> {
    let cfg = AggregatorConfig {
        max_batch_events: shared.config.ingest.max_batch_events,
        idle_timeout_us: (shared.config.ingest.idle_timeout.as_secs().max(1) as i64) * 1_000_000,
    };
    let node = identity.node_id.as_str();
    let mut session = AggregatorSession::new(cfg, node, Timestamp::now());
    let (tx, mut rx) = mpsc::channel(64);
    let reader = tokio::spawn(sx_common::quic::read_frames(recv, tx));
    let mut pending: VecDeque<(oneshot::Receiver<Verdict>, Option<sx_common::ChainHead>)> =
        VecDeque::new();
    let mut out = Vec::new();
    let mut refusal = None;
    let result = loop {
        // Events first: they may queue messages.
        while let Some(ev) = session.poll_event() {
            match ev {
                AggregatorEvent::Hello { agent_head, .. } => {
                    let acked = shared.store.head(node).map_or(0, |h| h.seq);
                    shared
                        .sync
                        .agent_head(node, agent_head, acked, Timestamp::now());
                    shared.observe([node]);
                    let desired = shared.projections.read(|e| {
                        e.node(node).map(|v| {
                            e.desired()
                                .resolve(&sx_common::desired::NodePlace::of(&v.twin))
                        })
                    });
                    match shared.store.head(node) {
                        Ok(head) => session.resume(head, desired),
                        Err(e) => session.rejected(Rejection::Internal(e.to_string())),
                    }
                }
                AggregatorEvent::Submit { events, checkpoint } => {
                    // The head the batch shows is the agent's word only once
                    // the batch verified: recorded with the verdict.
                    let head = events.last().map(sx_common::chain::SealedEvent::head);
                    let sub = Submission {
                        node_id: node.to_owned(),
                        key: identity.key,
                        cert_fingerprint: identity.fingerprint.clone(),
                        events,
                        checkpoint,
                        via: SyncPath::Quic,
                        received_at: Timestamp::now(),
                        news: true,
                    };
                    match shared.ingest.submit(sub).await {
                        Ok(rx) => pending.push_back((rx, head)),
                        Err(e) => session.rejected(Rejection::Internal(e.to_string())),
                    }
                }
                AggregatorEvent::Heartbeat { agent_head, rtt_ms } => {
                    let acked = session.durable().seq;
                    shared
                        .sync
                        .agent_head(node, agent_head, acked, Timestamp::now());
                    shared.sync.rtt(node, rtt_ms);
                    shared.observe([node]);
                }
                AggregatorEvent::Closed(end) => {
                    if let sx_common::protocol::SessionEnd::RefusedPeer { code, message } = &end {
                        refusal = Some(Refusal {
                            at: Timestamp::now(),
                            peer: peer.to_owned(),
                            node_id: Some(node.to_owned()),
                            reason: code.as_str().to_owned(),
                            detail: message.clone(),
                        });
                    }
                }
            }
        }
        out.clear();
        while let Some(msg) = session.poll_transmit() {
            wire::encode_frame(&msg, &mut out);
        }
        if !out.is_empty() && send.write_all(&out).await.is_err() {
            break None;
        }
        if session.is_closed() {
            let _ = send.finish();
            break refusal;
        }
        let deadline = session
            .poll_timeout()
            .map(|t| (t.0 - Timestamp::now().0).max(0) as u64)
            .unwrap_or(1_000_000);
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(Ok(m)) => session.handle_message(m, Timestamp::now()),
                Some(Err(e)) => session.handle_decode_error(&e),
                None => break None,
            },
            verdict = async { (&mut pending.front_mut().expect("guarded").0).await }, if !pending.is_empty() => {
                let shown = pending.pop_front().and_then(|(_, head)| head);
                match verdict {
                    Ok(Ok(admitted)) => {
                        if let Some(head) = shown {
                            shared.sync.agent_head(node, head, admitted.head.seq, Timestamp::now());
                        }
                        shared.sync.acked(node, admitted.head.seq);
                        // The store's record moved too (head, last sync),
                        // even for a batch of duplicates.
                        shared.observe([node]);
                        session.committed(admitted.head)
                    }
                    Ok(Err(rejection)) => session.rejected(rejection),
                    Err(_) => session.rejected(Rejection::Internal("writer stopped".into())),
                }
            }
            _ = tokio::time::sleep(std::time::Duration::from_micros(deadline)) => {
                session.handle_timeout(Timestamp::now());
            }
        }
    };
    reader.abort();
    result
}
