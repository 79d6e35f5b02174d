//! The connectivity ledger: a node's connectivity history as the seed's
//! `ConnectivityLedger` shows it, folded from its connectivity transitions.

use crate::event::{Event, EventPayload};
use crate::model::ConnectivityState;
use crate::time::{Span, Timestamp};
use serde::{Deserialize, Serialize};

/// One row of the ledger: a state the node entered, when, and the details
/// it gave (latency, sync interval, reason, backlog).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub timestamp: Timestamp,
    pub state: ConnectivityState,
    pub latency_ms: Option<u32>,
    pub sync_interval: Option<Span>,
    pub reason: Option<String>,
    pub backlog: Option<u64>,
    /// Seq of the event that recorded this transition.
    pub seq: u64,
}

impl LedgerEntry {
    /// The ledger row recorded by `event`, if it is a connectivity transition.
    pub fn from_event(event: &Event) -> Option<LedgerEntry> {
        match &event.payload {
            EventPayload::ConnectivityTransition(t) => Some(LedgerEntry {
                timestamp: event.timestamp,
                state: t.to,
                latency_ms: t.latency_ms,
                sync_interval: t.sync_interval,
                reason: t.reason.clone(),
                backlog: t.backlog,
                seq: event.seq,
            }),
            _ => None,
        }
    }
}

/// A node's connectivity history, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectivityLedger {
    pub node: String,
    pub history: Vec<LedgerEntry>,
}

impl ConnectivityLedger {
    pub fn new(node: &str) -> Self {
        ConnectivityLedger {
            node: node.to_owned(),
            history: Vec::new(),
        }
    }

    /// Folds one event in (events must come in seq order).
    pub fn apply(&mut self, event: &Event) {
        if let Some(entry) = LedgerEntry::from_event(event) {
            self.history.push(entry);
        }
    }

    /// The ledger of a node's whole stream.
    pub fn from_events<'a>(node: &str, events: impl IntoIterator<Item = &'a Event>) -> Self {
        let mut ledger = ConnectivityLedger::new(node);
        for e in events {
            ledger.apply(e);
        }
        ledger
    }

    /// The states entered, in order.
    pub fn states(&self) -> Vec<ConnectivityState> {
        self.history.iter().map(|e| e.state).collect()
    }

    /// The state in force at `at` (the last transition at or before it).
    pub fn state_at(&self, at: Timestamp) -> Option<ConnectivityState> {
        self.history
            .iter()
            .take_while(|e| e.timestamp <= at)
            .last()
            .map(|e| e.state)
    }
}
