//! The connectivity ledger: a node's connectivity history as the seed's
//! `ConnectivityLedger` shows it, folded from its connectivity transitions.

use crate::event::{Event, EventPayload};
use crate::model::ConnectivityState;
use crate::time::{Span, Timestamp};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

/// One row of the ledger: a state the node entered, when, and the details
/// it gave (latency, sync interval, reason, backlog).
///
/// In JSON a row shows only the details it has, as the seed's ledger does
/// (`{timestamp, state, latency_ms}`); binary formats carry every field.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct LedgerEntry {
    pub timestamp: Timestamp,
    pub state: ConnectivityState,
    #[serde(default)]
    pub latency_ms: Option<u32>,
    #[serde(default)]
    pub sync_interval: Option<Span>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub backlog: Option<u64>,
    /// Seq of the event that recorded this transition.
    pub seq: u64,
}

impl Serialize for LedgerEntry {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Skipping absent details is only sound for self-describing formats:
        // postcard reads fields by position.
        let human = serializer.is_human_readable();
        let details = [
            self.latency_ms.is_some(),
            self.sync_interval.is_some(),
            self.reason.is_some(),
            self.backlog.is_some(),
        ];
        let shown = |present: bool| present || !human;
        let len = 3 + details.iter().filter(|p| shown(**p)).count();
        let mut row = serializer.serialize_struct("LedgerEntry", len)?;
        row.serialize_field("timestamp", &self.timestamp)?;
        row.serialize_field("state", &self.state)?;
        if shown(details[0]) {
            row.serialize_field("latency_ms", &self.latency_ms)?;
        }
        if shown(details[1]) {
            row.serialize_field("sync_interval", &self.sync_interval)?;
        }
        if shown(details[2]) {
            row.serialize_field("reason", &self.reason)?;
        }
        if shown(details[3]) {
            row.serialize_field("backlog", &self.backlog)?;
        }
        row.serialize_field("seq", &self.seq)?;
        row.end()
    }
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
