//! The connectivity ledger rows a node keeps in memory, kept encoded.
//!
//! A decoded [`LedgerEntry`] takes ~90 bytes (plus its reason string);
//! encoded with postcard a row takes ~15. The rows are read rarely (one
//! node's ledger on request) and written in runs (a committed batch), so
//! [`RecentLedger`] keeps them as one exact-size byte string and decodes on
//! read; the engine appends a whole run at once.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sx_common::ledger::LedgerEntry;

/// How many ledger rows a node keeps in memory (older ones stay in the
/// event store and are served from there).
pub const LEDGER_IN_MEMORY: usize = 8;

/// A node's most recent ledger rows (at most [`LEDGER_IN_MEMORY`]), oldest
/// first. In JSON, the list of rows; in binary formats, their encoding.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecentLedger {
    /// Postcard encoding of a `Vec<LedgerEntry>`; empty for no rows.
    encoded: Box<[u8]>,
}

impl RecentLedger {
    /// The rows, oldest first.
    pub fn entries(&self) -> Vec<LedgerEntry> {
        if self.encoded.is_empty() {
            return Vec::new();
        }
        // Only this type writes the bytes (or checks them on decode).
        postcard::from_bytes(&self.encoded).unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.encoded.is_empty()
    }

    /// Appends rows (oldest first), keeping the last [`LEDGER_IN_MEMORY`].
    pub fn extend(&mut self, rows: Vec<LedgerEntry>) {
        if rows.is_empty() {
            return;
        }
        let mut all = if rows.len() >= LEDGER_IN_MEMORY {
            Vec::new()
        } else {
            self.entries()
        };
        all.extend(rows);
        let excess = all.len().saturating_sub(LEDGER_IN_MEMORY);
        all.drain(..excess);
        *self = RecentLedger::from_entries(&all);
    }

    fn from_entries(entries: &[LedgerEntry]) -> Self {
        let encoded = if entries.is_empty() {
            Vec::new()
        } else {
            postcard::to_allocvec(entries).unwrap_or_default()
        };
        RecentLedger {
            encoded: encoded.into_boxed_slice(),
        }
    }
}

impl Serialize for RecentLedger {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            self.entries().serialize(serializer)
        } else {
            serializer.serialize_bytes(&self.encoded)
        }
    }
}

impl<'de> Deserialize<'de> for RecentLedger {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let entries: Vec<LedgerEntry> = if deserializer.is_human_readable() {
            Vec::deserialize(deserializer)?
        } else {
            let bytes: Vec<u8> = serde_bytes_vec(deserializer)?;
            if bytes.is_empty() {
                Vec::new()
            } else {
                postcard::from_bytes(&bytes).map_err(D::Error::custom)?
            }
        };
        if entries.len() > LEDGER_IN_MEMORY {
            return Err(D::Error::custom("too many recent ledger rows"));
        }
        Ok(RecentLedger::from_entries(&entries))
    }
}

/// A byte string, as [`Serializer::serialize_bytes`] wrote it.
fn serde_bytes_vec<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    struct Bytes;
    impl<'de> serde::de::Visitor<'de> for Bytes {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a byte string")
        }
        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
    }
    deserializer.deserialize_bytes(Bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sx_common::model::ConnectivityState;
    use sx_common::time::{Span, Timestamp};

    fn row(seq: u64) -> LedgerEntry {
        LedgerEntry {
            timestamp: Timestamp(seq as i64 * 1_000),
            state: ConnectivityState::ALL[seq as usize % 7],
            latency_ms: seq.is_multiple_of(2).then_some(seq as u32),
            sync_interval: seq.is_multiple_of(3).then(|| Span::from_mins(seq)),
            reason: seq.is_multiple_of(5).then(|| format!("reason-{seq}")),
            backlog: seq.is_multiple_of(4).then_some(seq * 10),
            seq,
        }
    }

    #[test]
    fn keeps_the_last_rows_in_order_whatever_the_runs() {
        let all: Vec<LedgerEntry> = (1..=20).map(row).collect();
        for run in [1, 3, 8, 11] {
            let mut ledger = RecentLedger::default();
            for chunk in all.chunks(run) {
                ledger.extend(chunk.to_vec());
            }
            assert_eq!(ledger.entries(), all[20 - LEDGER_IN_MEMORY..].to_vec());
        }
        let mut short = RecentLedger::default();
        short.extend(all[..3].to_vec());
        assert_eq!(short.entries(), all[..3].to_vec());
    }

    #[test]
    fn round_trips_through_postcard_and_json() {
        let mut ledger = RecentLedger::default();
        ledger.extend((1..=9).map(row).collect());
        let bytes = postcard::to_allocvec(&ledger).expect("encode");
        assert_eq!(
            postcard::from_bytes::<RecentLedger>(&bytes),
            Ok(ledger.clone())
        );
        let json = serde_json::to_value(&ledger).expect("json");
        assert_eq!(json, serde_json::to_value(ledger.entries()).expect("json"));
        assert_eq!(
            serde_json::from_value::<RecentLedger>(json).ok(),
            Some(ledger)
        );
        assert!(postcard::from_bytes::<RecentLedger>(&[3, 1, 2, 3]).is_err());
    }
}
