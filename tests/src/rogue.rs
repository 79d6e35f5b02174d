//! A hand-driven sync client for attacks: real QUIC and TLS (quinn +
//! rustls, like the agent's uplink), but every frame is chosen by the test,
//! so it can present no certificate or a foreign one, name another node,
//! send another node's events, tamper with signatures and chains, or send
//! frames no agent would.
//!
//! The API is blocking (the client owns a small tokio runtime), in the style
//! of the other helpers of this crate.

use anyhow::{Context, Result, anyhow, bail};
use ed25519_dalek::SigningKey;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use sx_common::chain::{ChainHead, Checkpoint, Digest, SealedEvent};
use sx_common::event::{Event, EventPayload, OperationalTransition};
use sx_common::model::OperationalState;
use sx_common::time::Timestamp;
use sx_common::wire::{self, AgentMessage, AggregatorMessage, FRAME_HEADER_BYTES, MAX_FRAME_BYTES};

/// ALPN of the sync protocol.
pub const ALPN: &[u8] = b"souverix-sync/1";

/// The client certificate a rogue presents, if any.
#[derive(Clone, Copy, Debug)]
pub enum ClientAuth<'a> {
    /// No client certificate at all.
    None,
    /// A certificate (PEM) and its private key (PKCS#8 PEM).
    Cert { cert: &'a Path, key: &'a Path },
}

/// A rustls/quinn client configuration trusting `ca` for the server and
/// presenting `auth`, as the agent's (`agent/src/tls.rs`) does.
pub fn client_config(ca: &Path, auth: ClientAuth<'_>) -> Result<quinn::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in sx_certs::load_certs_pem(ca).context("fleet CA")? {
        roots.add(c).context("fleet CA certificate")?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3")?
        .with_root_certificates(roots);
    let mut tls = match auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Cert { cert, key } => {
            let chain = sx_certs::load_certs_pem(cert).context("client certificate")?;
            let key = sx_certs::load_key_pem(key).context("client key")?;
            builder
                .with_client_auth_cert(chain, key)
                .context("client certificate and key")?
        }
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).context("QUIC TLS configuration")?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(quinn::IdleTimeout::try_from(Duration::from_secs(10)).ok());
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// One rogue connection with one bidirectional stream (opened on first
/// send).
#[derive(Debug)]
pub struct Rogue {
    rt: tokio::runtime::Runtime,
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send: Option<quinn::SendStream>,
    recv: Option<quinn::RecvStream>,
}

/// How a connection ended, as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Closed {
    /// The aggregator closed it with an application code and reason.
    Application { code: u64, reason: String },
    /// Anything else (TLS alert, transport error, timeout), as text.
    Other(String),
}

impl Rogue {
    /// Connects to `addr` (server name `localhost`). Fails if the QUIC/TLS
    /// handshake fails as far as the client can tell; note that in TLS 1.3
    /// the server judges the client certificate after the client finished,
    /// so a refused certificate may still "connect" here and be closed
    /// right after.
    pub fn connect(addr: SocketAddr, config: quinn::ClientConfig) -> Result<Rogue> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let (endpoint, conn) = rt.block_on(async {
            let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
            endpoint.set_default_client_config(config);
            let connecting = endpoint.connect(addr, "localhost")?;
            let conn = tokio::time::timeout(Duration::from_secs(5), connecting)
                .await
                .map_err(|_| anyhow!("handshake timed out"))??;
            anyhow::Ok((endpoint, conn))
        })?;
        Ok(Rogue {
            rt,
            endpoint,
            conn,
            send: None,
            recv: None,
        })
    }

    /// Connects presenting `cert`/`key`, trusting the fleet CA `ca`.
    pub fn connect_as(addr: SocketAddr, ca: &Path, cert: &Path, key: &Path) -> Result<Rogue> {
        Rogue::connect(addr, client_config(ca, ClientAuth::Cert { cert, key })?)
    }

    /// Writes raw bytes on the sync stream (opening it first if needed).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        let Rogue {
            rt,
            conn,
            send,
            recv,
            ..
        } = self;
        rt.block_on(async {
            if send.is_none() {
                let (s, r) = conn.open_bi().await?;
                *send = Some(s);
                *recv = Some(r);
            }
            let s = send.as_mut().ok_or_else(|| anyhow!("no stream"))?;
            s.write_all(bytes).await?;
            anyhow::Ok(())
        })
    }

    /// Sends one well-formed frame.
    pub fn send(&mut self, msg: &AgentMessage) -> Result<()> {
        self.send_raw(&wire::frame(msg))
    }

    /// The next message from the aggregator; `Ok(None)` if the stream or
    /// the connection ended first; `Err` on a timeout or a bad frame.
    pub fn next_message(&mut self, timeout: Duration) -> Result<Option<AggregatorMessage>> {
        let Rogue { rt, recv, .. } = self;
        let recv = recv
            .as_mut()
            .ok_or_else(|| anyhow!("nothing sent yet: no stream"))?;
        rt.block_on(async {
            let read = async {
                let mut header = [0u8; FRAME_HEADER_BYTES];
                if recv.read_exact(&mut header).await.is_err() {
                    return Ok(None);
                }
                let len = wire::parse_header(header, MAX_FRAME_BYTES)?;
                let mut body = vec![0u8; len];
                if recv.read_exact(&mut body).await.is_err() {
                    return Ok(None);
                }
                Ok(Some(wire::decode_body::<AggregatorMessage>(&body)?))
            };
            tokio::time::timeout(timeout, read)
                .await
                .map_err(|_| anyhow!("no message from the aggregator within {timeout:?}"))?
        })
    }

    /// Every message until the stream ends (at most `timeout` in all).
    pub fn messages_until_end(&mut self, timeout: Duration) -> Result<Vec<AggregatorMessage>> {
        let deadline = std::time::Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.next_message(left)? {
                Some(m) => out.push(m),
                None => return Ok(out),
            }
        }
    }

    /// Waits (up to `timeout`) for the connection to close and says how.
    pub fn closed(&self, timeout: Duration) -> Result<Closed> {
        let conn = self.conn.clone();
        self.rt.block_on(async {
            let err = tokio::time::timeout(timeout, conn.closed())
                .await
                .map_err(|_| anyhow!("the connection is still open after {timeout:?}"))?;
            Ok(match err {
                quinn::ConnectionError::ApplicationClosed(c) => Closed::Application {
                    code: c.error_code.into_inner(),
                    reason: String::from_utf8_lossy(&c.reason).into_owned(),
                },
                other => Closed::Other(other.to_string()),
            })
        })
    }

    /// Sends `Hello` for `node_id` and expects `Resume`: returns the
    /// aggregator's durable head for the node.
    pub fn hello(&mut self, node_id: &str, head: ChainHead) -> Result<ChainHead> {
        self.send(&AgentMessage::Hello {
            node_id: node_id.to_owned(),
            agent_version: "rogue".into(),
            head,
        })?;
        match self.next_message(Duration::from_secs(5))? {
            Some(AggregatorMessage::Resume { durable, .. }) => Ok(durable),
            other => bail!("expected Resume, got {other:?}"),
        }
    }

    /// Waits for the answer to a batch: skips nothing, returns the first
    /// message (an `Ack`, `Rewind` or `Refuse`).
    pub fn answer(&mut self) -> Result<AggregatorMessage> {
        self.next_message(Duration::from_secs(10))?
            .ok_or_else(|| anyhow!("the stream ended without an answer"))
    }
}

impl Drop for Rogue {
    fn drop(&mut self) {
        self.conn.close(quinn::VarInt::from_u32(0), b"rogue done");
        self.endpoint
            .close(quinn::VarInt::from_u32(0), b"rogue done");
    }
}

/// `n` well-formed events of `node_id` chained onto `after`.
pub fn chain(node_id: &str, after: ChainHead, n: u64) -> Vec<SealedEvent> {
    let mut prev = after.hash;
    (0..n)
        .map(|i| {
            let e = SealedEvent::seal(Event {
                node_id: node_id.to_owned(),
                seq: after.seq + 1 + i,
                timestamp: Timestamp::now(),
                prev_hash: prev,
                payload: EventPayload::OperationalTransition(OperationalTransition {
                    from: OperationalState::InService,
                    to: OperationalState::Degraded,
                    reason: Some(format!("rogue-{i}")),
                }),
            });
            prev = e.hash;
            e
        })
        .collect()
}

/// Re-seals `events[index]` with `prev_hash` replaced, and re-chains the
/// events after it onto the tampered one: every link but that one holds,
/// so only the chain check can catch it.
pub fn tamper_prev_hash(events: &mut [SealedEvent], index: usize, prev_hash: Digest) {
    let mut prev = prev_hash;
    for e in events.iter_mut().skip(index) {
        let mut event = e.event.clone();
        event.prev_hash = prev;
        *e = SealedEvent::seal(event);
        prev = e.hash;
    }
}

/// A `Batch` of `events` whose checkpoint over the last one is signed by
/// `key` in the name of `checkpoint_node`.
pub fn batch_signed(
    events: &[SealedEvent],
    key: &SigningKey,
    checkpoint_node: &str,
) -> AgentMessage {
    let (seq, head) = events
        .last()
        .map_or((0, Digest::GENESIS), |l| (l.event.seq, l.hash));
    AgentMessage::Batch {
        events: events.iter().map(|e| e.bytes.clone()).collect(),
        checkpoint: Checkpoint::sign(key, checkpoint_node, seq, head),
    }
}

/// A well-formed `Batch` of `events`, signed by `key` for the events' node.
pub fn batch(events: &[SealedEvent], key: &SigningKey) -> AgentMessage {
    let node = events
        .first()
        .map_or_else(String::new, |e| e.event.node_id.clone());
    batch_signed(events, key, &node)
}
