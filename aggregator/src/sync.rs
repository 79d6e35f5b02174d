//! Per-node sync state as the aggregator observes it: durable position, last
//! sync, the head the agent reports, backlog, RTT and connection. The
//! durable part lives in the store; the rest is this process's observation.
//! The two combined ([`SyncTable::observation`]) are recorded in the
//! projection engine for the connectivity views whenever either moves
//! ([`crate::server::Shared::observe`]).

use crate::projection::views;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Mutex;
use sx_common::chain::ChainHead;
use sx_common::event::SyncPath;
use sx_common::time::{Span, Timestamp};

/// Whether a node currently has a session with this aggregator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum Connection {
    Connected { since: Timestamp, peer: String },
    Disconnected { since: Timestamp },
    Never,
}

/// What the aggregator knows of one node's sync.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeSync {
    pub node_id: String,
    pub acked_seq: u64,
    pub acked_hash: sx_common::chain::Digest,
    pub last_sync: Option<Timestamp>,
    pub last_sync_via: Option<SyncPath>,
    /// The highest head the agent reported (Hello, heartbeat or batch).
    pub agent_head_seq: u64,
    /// Events the node holds that the aggregator does not: agent head − acked.
    pub backlog: u64,
    pub rtt_ms: Option<u32>,
    pub connection: Connection,
    /// Time since the last sync, at the moment of the query.
    pub sync_debt: Span,
    /// Age of the oldest event known to wait on the node.
    pub oldest_unreceived: Span,
}

#[derive(Clone, Debug, Default)]
struct Observed {
    agent_head: u64,
    /// When the aggregator first learned of events it does not hold.
    backlog_since: Option<Timestamp>,
    rtt_ms: Option<u32>,
    connection: Option<Connection>,
    /// Sessions of the node open right now. A restarted agent reconnects
    /// before the aggregator drops its dead connection (at the idle
    /// timeout), so the end of one session must not mark the node
    /// disconnected while a newer one is open.
    sessions: u32,
}

/// The live observations; combined with store records on query.
#[derive(Debug, Default)]
pub struct SyncTable {
    observed: Mutex<HashMap<String, Observed>>,
}

impl SyncTable {
    fn with<R>(&self, node: &str, f: impl FnOnce(&mut Observed) -> R) -> R {
        let mut map = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        f(map.entry(node.to_owned()).or_default())
    }

    /// A session of `node` opened; pair each call with one
    /// [`disconnected`](Self::disconnected).
    pub fn connected(&self, node: &str, peer: String, now: Timestamp) {
        self.with(node, |o| {
            o.sessions += 1;
            o.connection = Some(Connection::Connected { since: now, peer })
        });
    }

    /// A session of `node` ended; the node is disconnected once none is
    /// left open.
    pub fn disconnected(&self, node: &str, now: Timestamp) {
        self.with(node, |o| {
            o.sessions = o.sessions.saturating_sub(1);
            if o.sessions == 0 {
                o.connection = Some(Connection::Disconnected { since: now })
            }
        });
    }

    /// The agent reported its head; `acked` is the durable head now.
    pub fn agent_head(&self, node: &str, head: ChainHead, acked: u64, now: Timestamp) {
        self.with(node, |o| {
            o.agent_head = o.agent_head.max(head.seq);
            if o.agent_head > acked {
                o.backlog_since.get_or_insert(now);
            } else {
                o.backlog_since = None;
            }
        });
    }

    /// Events up to `acked` are durable: clear the backlog age if caught up.
    pub fn acked(&self, node: &str, acked: u64) {
        self.with(node, |o| {
            if o.agent_head <= acked {
                o.backlog_since = None;
            }
        });
    }

    /// The observation the projection views take of the node of `record`
    /// (its durable head and last sync, with this process's observation).
    pub fn observation(&self, record: &crate::store::NodeRecord) -> views::Observed {
        let map = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        observation(map.get(&record.node_id), record)
    }

    /// [`observation`](Self::observation) of every record, by node id.
    pub fn observations(
        &self,
        records: &[crate::store::NodeRecord],
    ) -> Vec<(String, views::Observed)> {
        let map = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        records
            .iter()
            .map(|r| (r.node_id.clone(), observation(map.get(&r.node_id), r)))
            .collect()
    }

    pub fn rtt(&self, node: &str, rtt_ms: Option<u32>) {
        if rtt_ms.is_some() {
            self.with(node, |o| o.rtt_ms = rtt_ms);
        }
    }

    /// The sync state of every node the store knows, as of `now`.
    pub fn snapshot(&self, records: &[crate::store::NodeRecord], now: Timestamp) -> Vec<NodeSync> {
        let map = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        records
            .iter()
            .map(|r| {
                let o = map.get(&r.node_id).cloned().unwrap_or_default();
                let agent_head = o.agent_head.max(r.head.seq);
                NodeSync {
                    node_id: r.node_id.clone(),
                    acked_seq: r.head.seq,
                    acked_hash: r.head.hash,
                    last_sync: r.last_sync,
                    last_sync_via: r.last_sync_via,
                    agent_head_seq: agent_head,
                    backlog: agent_head - r.head.seq,
                    rtt_ms: o.rtt_ms,
                    connection: o.connection.unwrap_or(Connection::Never),
                    sync_debt: r.last_sync.map_or(Span::ZERO, |s| now.since(s)),
                    oldest_unreceived: o
                        .backlog_since
                        .filter(|_| agent_head > r.head.seq)
                        .map_or(Span::ZERO, |t| now.since(t)),
                }
            })
            .collect()
    }
}

/// A node's observation for the views: a node this process has not seen
/// has its store's last sync, no backlog and no connection.
fn observation(o: Option<&Observed>, r: &crate::store::NodeRecord) -> views::Observed {
    let agent_head = o.map_or(0, |o| o.agent_head);
    views::Observed {
        last_sync: r.last_sync,
        backlog: agent_head.saturating_sub(r.head.seq),
        backlog_since: o
            .and_then(|o| o.backlog_since)
            .filter(|_| agent_head > r.head.seq),
        connected: o.is_some_and(|o| matches!(o.connection, Some(Connection::Connected { .. }))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(table: &SyncTable, node: &str) -> Option<Connection> {
        let map = table.observed.lock().unwrap_or_else(|p| p.into_inner());
        map.get(node).and_then(|o| o.connection.clone())
    }

    /// A restarted agent's new session opens before the dead one times out:
    /// the old one ending must not mark the node disconnected.
    #[test]
    fn a_stale_session_ending_keeps_a_newer_one_connected() {
        let t = SyncTable::default();
        t.connected("n", "old".into(), Timestamp(1));
        t.connected("n", "new".into(), Timestamp(2));
        t.disconnected("n", Timestamp(3));
        assert_eq!(
            connection(&t, "n"),
            Some(Connection::Connected {
                since: Timestamp(2),
                peer: "new".into()
            })
        );
        t.disconnected("n", Timestamp(4));
        assert_eq!(
            connection(&t, "n"),
            Some(Connection::Disconnected {
                since: Timestamp(4)
            })
        );
    }
}
