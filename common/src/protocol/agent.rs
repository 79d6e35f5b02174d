//! The agent's side of a sync session.

use super::SessionEnd;
use crate::chain::{ChainHead, Checkpoint};
use crate::time::Timestamp;
use crate::wire::{AgentMessage, AggregatorMessage, DesiredState};
use std::collections::VecDeque;

/// Tunables of the agent side. Durations in microseconds.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub agent_version: String,
    /// Most events in one batch.
    pub batch_max_events: usize,
    /// Most events sent and not yet acknowledged.
    pub window_events: u64,
    pub heartbeat_interval_us: i64,
    /// Resend from the last ack when nothing is acknowledged for this long
    /// while events are in flight; resend `Hello` when no `Resume` came.
    pub ack_timeout_us: i64,
    /// Give up when nothing at all is heard for this long.
    pub idle_timeout_us: i64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            agent_version: String::from("sx-agent"),
            batch_max_events: 1_000,
            window_events: 16_000,
            heartbeat_interval_us: 5_000_000,
            ack_timeout_us: 15_000_000,
            idle_timeout_us: 30_000_000,
        }
    }
}

/// What the agent session asks of, or tells, its driver.
#[derive(Clone, Debug, PartialEq)]
pub enum AgentEvent {
    /// Read up to `max` events from seq `from` of the journal and pass them
    /// to [`AgentSession::send_batch`] with a checkpoint over the last one.
    NeedBatch { from: u64, max: usize },
    /// The aggregator's durable position (the driver checks the hash against
    /// its journal: a difference is a fork) and the node's desired state.
    Resumed {
        durable: ChainHead,
        desired: Option<DesiredState>,
    },
    /// The aggregator has durably committed everything up to `head`.
    Acked { head: ChainHead },
    /// A round trip was measured.
    Rtt { rtt_ms: u32 },
    /// The session is over; the driver closes the connection.
    Closed(SessionEnd),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Handshaking,
    Streaming,
    Closed,
}

/// The agent side of one sync session over one connection.
#[derive(Debug)]
pub struct AgentSession {
    cfg: AgentConfig,
    node_id: String,
    phase: Phase,
    head: ChainHead,
    acked: ChainHead,
    next_send: u64,
    /// The highest seq sent in this session.
    max_sent: u64,
    /// `max_sent` when the agent last went back to resend (a `Rewind` or
    /// the ack timeout). Until the aggregator holds it, a `Rewind` may
    /// answer a batch sent before going back, so it does not send the agent
    /// back again (it still counts as an ack); a lost resend is left to the
    /// ack timeout. Without this, each out-of-order batch sent the whole
    /// window again, whose reordering caused more rewinds: a storm.
    recover_until: u64,
    batch_requested: bool,
    /// When `Hello` was last queued; resent after `ack_timeout_us` without
    /// `Resume` (the handshake survives loss like the batches do).
    hello_sent: Timestamp,
    last_heard: Timestamp,
    last_progress: Timestamp,
    next_heartbeat: Timestamp,
    ping: u64,
    ping_sent: Option<(u64, Timestamp)>,
    rtt_ms: Option<u32>,
    transmit: VecDeque<AgentMessage>,
    events: VecDeque<AgentEvent>,
}

impl AgentSession {
    /// Starts a session for `node_id` whose journal ends at `head`; queues
    /// `Hello`.
    pub fn new(cfg: AgentConfig, node_id: &str, head: ChainHead, now: Timestamp) -> Self {
        let mut transmit = VecDeque::new();
        transmit.push_back(AgentMessage::Hello {
            node_id: node_id.to_owned(),
            agent_version: cfg.agent_version.clone(),
            head,
        });
        let next_heartbeat = Timestamp(now.0 + cfg.heartbeat_interval_us);
        AgentSession {
            cfg,
            node_id: node_id.to_owned(),
            phase: Phase::Handshaking,
            head,
            acked: ChainHead::default(),
            next_send: 1,
            max_sent: 0,
            recover_until: 0,
            batch_requested: false,
            hello_sent: now,
            last_heard: now,
            last_progress: now,
            next_heartbeat,
            ping: 0,
            ping_sent: None,
            rtt_ms: None,
            transmit,
            events: VecDeque::new(),
        }
    }

    /// Everything up to here is durably held by the aggregator.
    pub fn acked(&self) -> ChainHead {
        self.acked
    }

    /// Events recorded but not yet acknowledged.
    pub fn backlog(&self) -> u64 {
        self.head.seq.saturating_sub(self.acked.seq)
    }

    pub fn is_streaming(&self) -> bool {
        self.phase == Phase::Streaming
    }

    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// The last measured round-trip time.
    pub fn rtt_ms(&self) -> Option<u32> {
        self.rtt_ms
    }

    /// Events sent and not yet acknowledged.
    pub fn in_flight(&self) -> u64 {
        self.next_send
            .saturating_sub(1)
            .saturating_sub(self.acked.seq)
    }

    fn close(&mut self, end: SessionEnd) {
        if self.phase != Phase::Closed {
            self.phase = Phase::Closed;
            self.transmit.clear();
            self.events.push_back(AgentEvent::Closed(end));
        }
    }

    /// A message from the aggregator.
    pub fn handle_message(&mut self, msg: AggregatorMessage, now: Timestamp) {
        if self.phase == Phase::Closed {
            return;
        }
        self.last_heard = now;
        match msg {
            AggregatorMessage::Resume { durable, desired } => {
                if self.phase != Phase::Handshaking {
                    // A duplicate, or the answer to a resent `Hello`: what
                    // it says, the acks say too.
                    return;
                }
                if durable.seq > self.head.seq {
                    return self.close(SessionEnd::ProtocolViolation(format!(
                        "aggregator holds seq {} but the journal ends at {}",
                        durable.seq, self.head.seq
                    )));
                }
                self.phase = Phase::Streaming;
                self.acked = durable;
                self.next_send = durable.seq + 1;
                self.last_progress = now;
                self.events
                    .push_back(AgentEvent::Resumed { durable, desired });
                self.pump();
            }
            AggregatorMessage::Ack { head } => self.advance(head, now, false),
            AggregatorMessage::Rewind { durable } => self.advance(durable, now, true),
            AggregatorMessage::Pong { ping } => {
                if let Some((id, sent)) = self.ping_sent
                    && id == ping
                {
                    let rtt = ((now.0 - sent.0).max(0) / 1_000) as u32;
                    self.rtt_ms = Some(rtt);
                    self.ping_sent = None;
                    self.events.push_back(AgentEvent::Rtt { rtt_ms: rtt });
                }
            }
            AggregatorMessage::Refuse { code, message } => {
                self.close(SessionEnd::Refused { code, message })
            }
        }
    }

    /// An `Ack` or `Rewind`: the aggregator durably holds `head`.
    fn advance(&mut self, head: ChainHead, now: Timestamp, rewind: bool) {
        if self.phase != Phase::Streaming {
            return self.close(SessionEnd::ProtocolViolation("ack before Resume".into()));
        }
        // Not "beyond what this session sent": the store may durably hold
        // more than `Resume` said (a commit of the previous connection that
        // finished after it), and a duplicate batch is acknowledged with the
        // store's head. Beyond the journal, though, is impossible.
        if head.seq > self.head.seq {
            return self.close(SessionEnd::ProtocolViolation(format!(
                "ack of seq {} but the journal ends at {}",
                head.seq, self.head.seq
            )));
        }
        if head.seq < self.acked.seq {
            // A stale message overtaken by a later ack: nothing to learn.
            return;
        }
        if head.seq > self.acked.seq {
            self.acked = head;
            self.last_progress = now;
            self.events.push_back(AgentEvent::Acked { head });
        }
        let go_back = rewind && self.acked.seq >= self.recover_until;
        if go_back {
            self.recover_until = self.max_sent;
        }
        if go_back || self.next_send <= head.seq {
            self.next_send = head.seq + 1;
            self.last_progress = now;
        }
        self.pump();
    }

    /// The journal grew to `head` (new local events).
    pub fn local_append(&mut self, head: ChainHead) {
        if head.seq > self.head.seq {
            self.head = head;
            self.pump();
        }
    }

    /// Sends events read from the journal after a [`AgentEvent::NeedBatch`]:
    /// `events` are canonical bytes of consecutive events starting at
    /// `from`, `checkpoint` signs the last one.
    pub fn send_batch(
        &mut self,
        from: u64,
        events: Vec<Vec<u8>>,
        checkpoint: Checkpoint,
        now: Timestamp,
    ) {
        self.batch_requested = false;
        if self.phase != Phase::Streaming || events.is_empty() || from != self.next_send {
            // Stale answer (a rewind happened meanwhile): ask again.
            self.pump();
            return;
        }
        let last = from + events.len() as u64 - 1;
        if self.in_flight() == 0 {
            self.last_progress = now;
        }
        self.next_send = last + 1;
        self.max_sent = self.max_sent.max(last);
        self.transmit
            .push_back(AgentMessage::Batch { events, checkpoint });
        self.pump();
    }

    /// The driver could not supply the batch it was asked for.
    pub fn batch_unavailable(&mut self) {
        self.batch_requested = false;
    }

    fn pump(&mut self) {
        if self.phase != Phase::Streaming || self.batch_requested {
            return;
        }
        let in_flight = self.in_flight();
        if self.next_send <= self.head.seq && in_flight < self.cfg.window_events {
            let room = (self.cfg.window_events - in_flight) as usize;
            let available = (self.head.seq - self.next_send + 1) as usize;
            let max = self.cfg.batch_max_events.min(room).min(available).max(1);
            self.batch_requested = true;
            self.events.push_back(AgentEvent::NeedBatch {
                from: self.next_send,
                max,
            });
        }
    }

    /// Timers: idle timeout, retransmission, heartbeats.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        if self.phase == Phase::Closed {
            return;
        }
        if now.0 - self.last_heard.0 >= self.cfg.idle_timeout_us {
            return self.close(SessionEnd::Timeout);
        }
        if self.phase == Phase::Handshaking && now.0 - self.hello_sent.0 >= self.cfg.ack_timeout_us
        {
            self.hello_sent = now;
            self.transmit.push_back(AgentMessage::Hello {
                node_id: self.node_id.clone(),
                agent_version: self.cfg.agent_version.clone(),
                head: self.head,
            });
        }
        if self.phase == Phase::Streaming
            && self.in_flight() > 0
            && now.0 - self.last_progress.0 >= self.cfg.ack_timeout_us
        {
            self.next_send = self.acked.seq + 1;
            self.recover_until = self.max_sent;
            self.last_progress = now;
            self.batch_requested = false;
            self.pump();
        }
        if now >= self.next_heartbeat {
            self.ping += 1;
            self.ping_sent = Some((self.ping, now));
            self.transmit.push_back(AgentMessage::Heartbeat {
                ping: self.ping,
                head: self.head,
                rtt_ms: self.rtt_ms,
                sent_at: now,
            });
            self.next_heartbeat = Timestamp(now.0 + self.cfg.heartbeat_interval_us);
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        if self.phase == Phase::Closed {
            return None;
        }
        let mut at = self
            .next_heartbeat
            .0
            .min(self.last_heard.0 + self.cfg.idle_timeout_us);
        if self.phase == Phase::Handshaking {
            at = at.min(self.hello_sent.0 + self.cfg.ack_timeout_us);
        }
        if self.phase == Phase::Streaming && self.in_flight() > 0 {
            at = at.min(self.last_progress.0 + self.cfg.ack_timeout_us);
        }
        Some(Timestamp(at))
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<AgentMessage> {
        self.transmit.pop_front()
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<AgentEvent> {
        self.events.pop_front()
    }
}
