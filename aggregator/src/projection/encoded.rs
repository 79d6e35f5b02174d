//! Small per-node lists kept encoded: the connectivity ledger rows a node
//! keeps in memory ([`RecentLedger`]) and its certificate rotations.
//!
//! A decoded [`LedgerEntry`] takes ~90 bytes (plus its reason string), a
//! rotation ~70 plus two strings; encoded with postcard a row takes 15 to
//! 40 bytes. The lists are read rarely (one node's ledger or trust index
//! on request) and written in runs (a committed batch), so
//! [`EncodedList`] keeps them as one exact-size byte string and decodes on
//! read; the engine appends a whole run at once.

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::marker::PhantomData;
use sx_common::ledger::LedgerEntry;

/// How many ledger rows a node keeps in memory (older ones stay in the
/// event store and are served from there).
pub const LEDGER_IN_MEMORY: usize = 8;

/// A node's most recent ledger rows (at most [`LEDGER_IN_MEMORY`]), oldest
/// first.
pub type RecentLedger = EncodedList<LedgerEntry>;

/// A short list, oldest first, kept as its postcard encoding. In JSON, the
/// list; in binary formats, the encoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedList<T> {
    /// Postcard encoding of a `Vec<T>`; empty for no rows.
    encoded: Box<[u8]>,
    rows: PhantomData<fn() -> T>,
}

impl<T> Default for EncodedList<T> {
    fn default() -> Self {
        EncodedList {
            encoded: Box::default(),
            rows: PhantomData,
        }
    }
}

impl<T: Serialize + DeserializeOwned> EncodedList<T> {
    /// The rows, oldest first.
    pub fn entries(&self) -> Vec<T> {
        if self.encoded.is_empty() {
            return Vec::new();
        }
        // Only this type writes the bytes (or checks them on decode).
        postcard::from_bytes(&self.encoded).unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.encoded.is_empty()
    }

    /// Appends rows (oldest first), keeping the last `keep`.
    pub fn extend(&mut self, rows: Vec<T>, keep: usize) {
        if rows.is_empty() {
            return;
        }
        let mut all = if rows.len() >= keep {
            Vec::new()
        } else {
            self.entries()
        };
        all.extend(rows);
        let excess = all.len().saturating_sub(keep);
        all.drain(..excess);
        *self = EncodedList::from_entries(&all);
    }

    fn from_entries(entries: &[T]) -> Self {
        let encoded = if entries.is_empty() {
            Vec::new()
        } else {
            postcard::to_allocvec(entries).unwrap_or_default()
        };
        EncodedList {
            encoded: encoded.into_boxed_slice(),
            rows: PhantomData,
        }
    }
}

impl<T: Serialize + DeserializeOwned> Serialize for EncodedList<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            self.entries().serialize(serializer)
        } else {
            serializer.serialize_bytes(&self.encoded)
        }
    }
}

impl<'de, T: Serialize + DeserializeOwned> Deserialize<'de> for EncodedList<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let entries: Vec<T> = if deserializer.is_human_readable() {
            Vec::deserialize(deserializer)?
        } else {
            let bytes: Vec<u8> = byte_string(deserializer)?;
            if bytes.is_empty() {
                Vec::new()
            } else {
                postcard::from_bytes(&bytes).map_err(D::Error::custom)?
            }
        };
        Ok(EncodedList::from_entries(&entries))
    }
}

/// A byte string, as [`Serializer::serialize_bytes`] wrote it.
fn byte_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
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
                ledger.extend(chunk.to_vec(), LEDGER_IN_MEMORY);
            }
            assert_eq!(ledger.entries(), all[20 - LEDGER_IN_MEMORY..].to_vec());
        }
        let mut short = RecentLedger::default();
        short.extend(all[..3].to_vec(), LEDGER_IN_MEMORY);
        assert_eq!(short.entries(), all[..3].to_vec());
    }

    #[test]
    fn round_trips_through_postcard_and_json() {
        let mut ledger = RecentLedger::default();
        ledger.extend((1..=9).map(row).collect(), LEDGER_IN_MEMORY);
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
