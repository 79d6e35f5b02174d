//! The aggregator's side of a sync session.

use super::SessionEnd;
use crate::chain::{ChainHead, Checkpoint, SealedEvent, VerifyError};
use crate::codec::DecodeError;
use crate::time::Timestamp;
use crate::wire::{AgentMessage, AggregatorMessage, DesiredState, RefusalCode};
use std::collections::VecDeque;

/// Tunables of the aggregator side.
#[derive(Clone, Debug)]
pub struct AggregatorConfig {
    /// Most events accepted in one batch.
    pub max_batch_events: usize,
    /// Close the session when nothing is heard for this long (microseconds).
    pub idle_timeout_us: i64,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        AggregatorConfig {
            max_batch_events: 10_000,
            idle_timeout_us: 30_000_000,
        }
    }
}

/// What the aggregator session asks of, or tells, its driver.
#[derive(Clone, Debug, PartialEq)]
pub enum AggregatorEvent {
    /// The agent introduced itself; the driver answers with
    /// [`AggregatorSession::resume`].
    Hello {
        agent_version: String,
        agent_head: ChainHead,
    },
    /// A decoded batch of the session's node, hashes computed, not yet
    /// verified: the driver hands it to the store, which verifies it against
    /// the stored head and commits, then calls
    /// [`AggregatorSession::committed`] or [`AggregatorSession::rejected`].
    Submit {
        events: Vec<SealedEvent>,
        checkpoint: Checkpoint,
    },
    /// The agent's head and RTT, from a heartbeat.
    Heartbeat {
        agent_head: ChainHead,
        rtt_ms: Option<u32>,
    },
    /// The session is over; the driver closes the connection.
    Closed(SessionEnd),
}

/// Why the store did not take a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The batch starts past the head it was admitted against (`durable`,
    /// which may be a staged, not yet committed head): the agent must
    /// resend. The session rewinds the agent to its own last committed
    /// head, never to this one.
    AheadOfDurable { durable: ChainHead },
    /// The batch failed verification; nothing was stored.
    Invalid(VerifyError),
    /// The store failed; nothing was acknowledged.
    Internal(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    AwaitHello,
    AwaitResume,
    Streaming,
    Closed,
}

/// The aggregator side of one session. `node_id` comes from the client
/// certificate, never from the peer's words: every event of the session must
/// belong to it.
#[derive(Debug)]
pub struct AggregatorSession {
    cfg: AggregatorConfig,
    node_id: String,
    phase: Phase,
    /// The last head the driver reported durable (`resume`, `committed`):
    /// the only head ever sent in `Ack`, `Rewind` or `Resume`.
    durable: ChainHead,
    desired: Option<DesiredState>,
    agent_head: ChainHead,
    last_heard: Timestamp,
    transmit: VecDeque<AggregatorMessage>,
    events: VecDeque<AggregatorEvent>,
}

impl AggregatorSession {
    pub fn new(cfg: AggregatorConfig, node_id: &str, now: Timestamp) -> Self {
        AggregatorSession {
            cfg,
            node_id: node_id.to_owned(),
            phase: Phase::AwaitHello,
            durable: ChainHead::default(),
            desired: None,
            agent_head: ChainHead::default(),
            last_heard: now,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The head the agent last reported.
    pub fn agent_head(&self) -> ChainHead {
        self.agent_head
    }

    pub fn durable(&self) -> ChainHead {
        self.durable
    }

    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    fn refuse(&mut self, code: RefusalCode, message: String) {
        if self.phase == Phase::Closed {
            return;
        }
        self.phase = Phase::Closed;
        self.transmit.clear();
        self.transmit.push_back(AggregatorMessage::Refuse {
            code,
            message: message.clone(),
        });
        self.events
            .push_back(AggregatorEvent::Closed(SessionEnd::RefusedPeer {
                code,
                message,
            }));
    }

    /// A frame from the agent could not be decoded: the session ends.
    pub fn handle_decode_error(&mut self, err: &DecodeError) {
        let code = match err {
            DecodeError::UnknownVersion { .. } => RefusalCode::WrongVersion,
            DecodeError::Oversized { .. } => RefusalCode::Oversized,
            _ => RefusalCode::Malformed,
        };
        self.refuse(code, err.to_string());
    }

    /// A message from the agent.
    pub fn handle_message(&mut self, msg: AgentMessage, now: Timestamp) {
        if self.phase == Phase::Closed {
            return;
        }
        self.last_heard = now;
        match (self.phase, msg) {
            (
                Phase::AwaitHello,
                AgentMessage::Hello {
                    node_id,
                    agent_version,
                    head,
                },
            ) => {
                if node_id != self.node_id {
                    return self.refuse(
                        RefusalCode::IdentityMismatch,
                        format!(
                            "hello names node {node_id:?} but the certificate is {:?}",
                            self.node_id
                        ),
                    );
                }
                self.agent_head = head;
                self.phase = Phase::AwaitResume;
                self.events.push_back(AggregatorEvent::Hello {
                    agent_version,
                    agent_head: head,
                });
            }
            // A duplicate `Hello`, or one the agent resent because our
            // `Resume` was lost: answer again once the driver has resumed.
            (Phase::AwaitResume | Phase::Streaming, AgentMessage::Hello { node_id, .. })
                if node_id == self.node_id =>
            {
                if self.phase == Phase::Streaming {
                    self.transmit.push_back(AggregatorMessage::Resume {
                        durable: self.durable,
                        desired: self.desired.clone(),
                    });
                }
            }
            (Phase::Streaming, AgentMessage::Batch { events, checkpoint }) => {
                self.batch(events, checkpoint)
            }
            // A heartbeat that overtook a lost or late `Hello`: liveness only.
            (Phase::AwaitHello, AgentMessage::Heartbeat { .. }) => {}
            (
                Phase::Streaming | Phase::AwaitResume,
                AgentMessage::Heartbeat {
                    ping, head, rtt_ms, ..
                },
            ) => {
                if head.seq > self.agent_head.seq {
                    self.agent_head = head;
                }
                self.transmit.push_back(AggregatorMessage::Pong { ping });
                self.events.push_back(AggregatorEvent::Heartbeat {
                    agent_head: head,
                    rtt_ms,
                });
            }
            (phase, other) => self.refuse(
                RefusalCode::ProtocolViolation,
                format!("unexpected {} in phase {phase:?}", message_name(&other)),
            ),
        }
    }

    fn batch(&mut self, raw: Vec<Vec<u8>>, checkpoint: Checkpoint) {
        if raw.is_empty() {
            return self.refuse(RefusalCode::Malformed, "empty batch".into());
        }
        if raw.len() > self.cfg.max_batch_events {
            return self.refuse(
                RefusalCode::Oversized,
                format!(
                    "batch of {} events, limit {}",
                    raw.len(),
                    self.cfg.max_batch_events
                ),
            );
        }
        let mut events = Vec::with_capacity(raw.len());
        for bytes in raw {
            match SealedEvent::from_bytes(bytes) {
                Ok(e) => events.push(e),
                Err(err) => {
                    return self.refuse(RefusalCode::Malformed, format!("event: {err}"));
                }
            }
        }
        if let Some(foreign) = events.iter().find(|e| e.event.node_id != self.node_id) {
            let message = format!(
                "session of node {:?} sent an event of node {:?}",
                self.node_id, foreign.event.node_id
            );
            return self.refuse(RefusalCode::IdentityMismatch, message);
        }
        if checkpoint.node_id != self.node_id {
            let message = format!(
                "session of node {:?} sent a checkpoint of node {:?}",
                self.node_id, checkpoint.node_id
            );
            return self.refuse(RefusalCode::IdentityMismatch, message);
        }
        if let Some(last) = events.last()
            && last.event.seq > self.agent_head.seq
        {
            self.agent_head = ChainHead {
                seq: last.event.seq,
                hash: last.hash,
            };
        }
        self.events
            .push_back(AggregatorEvent::Submit { events, checkpoint });
    }

    /// Answers `Hello` with the durable position and desired state.
    pub fn resume(&mut self, durable: ChainHead, desired: Option<DesiredState>) {
        if self.phase != Phase::AwaitResume {
            return;
        }
        self.durable = durable;
        self.desired = desired.clone();
        self.phase = Phase::Streaming;
        self.transmit
            .push_back(AggregatorMessage::Resume { durable, desired });
    }

    /// The store durably holds the node's stream up to `head` (after a
    /// submitted batch): acknowledge it.
    pub fn committed(&mut self, head: ChainHead) {
        if self.phase != Phase::Streaming {
            return;
        }
        if head.seq >= self.durable.seq {
            self.durable = head;
        }
        self.transmit
            .push_back(AggregatorMessage::Ack { head: self.durable });
    }

    /// The store did not take a submitted batch.
    pub fn rejected(&mut self, rejection: Rejection) {
        match rejection {
            Rejection::AheadOfDurable { .. } => {
                // Rewind to the head the driver reported *committed*, not to
                // the one the store was admitting against: a store that
                // pipelines admits against its staged head (it must, or it
                // would admit the same events twice), and the agent takes a
                // `Rewind`'s head as acknowledged. Raising `durable` here
                // also made the next `committed` of an earlier batch ack
                // that staged head before it was durable.
                if self.phase == Phase::Streaming {
                    self.transmit.push_back(AggregatorMessage::Rewind {
                        durable: self.durable,
                    });
                }
            }
            Rejection::Invalid(err) => {
                let code = match err {
                    VerifyError::Fork { .. } => RefusalCode::Fork,
                    VerifyError::WrongNode { .. } => RefusalCode::IdentityMismatch,
                    _ => RefusalCode::VerificationFailed,
                };
                self.refuse(code, err.to_string());
            }
            Rejection::Internal(message) => self.refuse(RefusalCode::Internal, message),
        }
    }

    /// Idle timeout.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        if self.phase != Phase::Closed && now.0 - self.last_heard.0 >= self.cfg.idle_timeout_us {
            self.phase = Phase::Closed;
            self.events
                .push_back(AggregatorEvent::Closed(SessionEnd::Timeout));
        }
    }

    pub fn poll_timeout(&self) -> Option<Timestamp> {
        (self.phase != Phase::Closed)
            .then_some(Timestamp(self.last_heard.0 + self.cfg.idle_timeout_us))
    }

    pub fn poll_transmit(&mut self) -> Option<AggregatorMessage> {
        self.transmit.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<AggregatorEvent> {
        self.events.pop_front()
    }
}

fn message_name(msg: &AgentMessage) -> &'static str {
    match msg {
        AgentMessage::Hello { .. } => "Hello",
        AgentMessage::Batch { .. } => "Batch",
        AgentMessage::Heartbeat { .. } => "Heartbeat",
    }
}

/// The store's admission rule for a submitted batch, shared by every store
/// and by bundle import: a batch starting past the durable head is sent back
/// (`AheadOfDurable`), anything else must pass [`verify_batch`] against the
/// stored head. Returns which events are new and the head after them.
///
/// [`verify_batch`]: crate::chain::verify_batch
pub fn admit_batch(
    node_id: &str,
    key: &ed25519_dalek::VerifyingKey,
    stored: ChainHead,
    events: &[SealedEvent],
    checkpoint: &Checkpoint,
    known: crate::event::KnownHash<'_>,
) -> Result<crate::chain::VerifiedBatch, Rejection> {
    if let Some(first) = events.first()
        && first.event.seq > stored.seq + 1
    {
        return Err(Rejection::AheadOfDurable { durable: stored });
    }
    crate::chain::verify_batch(node_id, key, stored, events, checkpoint, known)
        .map_err(Rejection::Invalid)
}
