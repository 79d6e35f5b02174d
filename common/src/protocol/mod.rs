//! The sync protocol as two sans-IO state machines, one per side, in the
//! manner of quinn-proto: messages and `now` in; messages to send, events
//! for the driver and the next timeout out. No sockets, no clock, no storage
//! inside: the drivers (agent and aggregator) read journals, commit to stores
//! and move frames.
//!
//! Outline (DESIGN.md, "Sync protocol"):
//! 1. agent `Hello` (node id, head); 2. aggregator `Resume` (durable head,
//!    desired state); 3. agent streams `Batch`es from `durable + 1`, each
//!    closed by a signed checkpoint, at most `window_events` unacknowledged;
//!    aggregator answers cumulative `Ack`s after durable commit; 4. live:
//!    new events flow as recorded; heartbeats carry head and RTT.
//!
//! Loss, duplication and reordering are survived without trusting the
//! transport: acks are cumulative, duplicates are deduplicated by the store,
//! a batch that does not follow the durable head is answered with `Rewind`,
//! and a missing ack triggers retransmission from the last acked seq.

mod agent;
mod aggregator;

pub use agent::{AgentConfig, AgentEvent, AgentSession};
pub use aggregator::{
    AggregatorConfig, AggregatorEvent, AggregatorSession, Rejection, admit_batch,
};

use crate::wire::RefusalCode;

/// Why a session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// The peer refused the session.
    Refused { code: RefusalCode, message: String },
    /// This side refused the peer (and told it so).
    RefusedPeer { code: RefusalCode, message: String },
    /// Nothing heard from the peer within the idle timeout.
    Timeout,
    /// The peer broke the protocol.
    ProtocolViolation(String),
    /// This side is shutting down.
    Shutdown,
}

impl std::fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionEnd::Refused { code, message } => {
                write!(f, "refused by peer ({}): {message}", code.as_str())
            }
            SessionEnd::RefusedPeer { code, message } => {
                write!(f, "refused peer ({}): {message}", code.as_str())
            }
            SessionEnd::Timeout => f.write_str("peer silent past the idle timeout"),
            SessionEnd::ProtocolViolation(m) => write!(f, "protocol violation: {m}"),
            SessionEnd::Shutdown => f.write_str("shutting down"),
        }
    }
}
