//! Runs: consecutive events of one node stored as one redb value.
//!
//! A B-tree insert per event is most of what a commit costs (several µs
//! each, beyond what the bytes need); a run of up to [`MAX_RUN`] events is
//! one insert. Layout, all integers little-endian:
//!
//! ```text
//! count: u32 | offsets: count x u32 | entries
//! entry i = entries[offsets[i]..offsets[i + 1]] (the last one to the end)
//!         = chain hash (32 bytes) | canonical event bytes
//! ```
//!
//! A run is keyed by (node index, seq of its first event); runs of a node
//! never overlap and leave no gap, so the run holding `seq` is the last one
//! whose first seq is at most `seq`. Runs are written once and never
//! changed.

use sx_common::chain::{Digest, SealedEvent};
use sx_common::codec::DecodeError;

/// Most events in one run: a read of one event reads its whole run.
pub const MAX_RUN: usize = 1_024;

const HASH: usize = 32;

/// Encodes `events` (consecutive, at most [`MAX_RUN`]) as one run.
pub fn encode(events: &[SealedEvent]) -> Vec<u8> {
    let count = events.len();
    let body: usize = events.iter().map(|e| HASH + e.bytes.len()).sum();
    let mut out = Vec::with_capacity(4 + 4 * count + body);
    out.extend_from_slice(&(count as u32).to_le_bytes());
    let mut offset = 0u32;
    for e in events {
        out.extend_from_slice(&offset.to_le_bytes());
        offset += (HASH + e.bytes.len()) as u32;
    }
    for e in events {
        out.extend_from_slice(&e.hash.0);
        out.extend_from_slice(&e.bytes);
    }
    out
}

/// A stored run, read in place.
#[derive(Clone, Copy, Debug)]
pub struct Run<'a> {
    count: usize,
    offsets: &'a [u8],
    entries: &'a [u8],
}

impl<'a> Run<'a> {
    /// Checks the header; entries are checked as they are read.
    pub fn parse(bytes: &'a [u8]) -> Result<Run<'a>, DecodeError> {
        let (count, rest) = bytes
            .split_first_chunk::<4>()
            .ok_or(DecodeError::Truncated)?;
        let count = u32::from_le_bytes(*count) as usize;
        if count == 0 || count > MAX_RUN {
            return Err(DecodeError::Malformed(format!("a run of {count} events")));
        }
        if rest.len() < 4 * count {
            return Err(DecodeError::Truncated);
        }
        let (offsets, entries) = rest.split_at(4 * count);
        Ok(Run {
            count,
            offsets,
            entries,
        })
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn offset(&self, i: usize) -> usize {
        if i == self.count {
            return self.entries.len();
        }
        let b = &self.offsets[4 * i..4 * i + 4];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize
    }

    /// The hash and canonical bytes of the `i`-th event.
    pub fn entry(&self, i: usize) -> Result<(Digest, &'a [u8]), DecodeError> {
        if i >= self.count {
            return Err(DecodeError::Truncated);
        }
        let entry = self
            .entries
            .get(self.offset(i)..self.offset(i + 1))
            .ok_or(DecodeError::Truncated)?;
        let (hash, bytes) = entry
            .split_first_chunk::<HASH>()
            .ok_or(DecodeError::Truncated)?;
        Ok((Digest(*hash), bytes))
    }

    /// The `i`-th event, decoded (canonical form and hash checked again).
    pub fn event(&self, i: usize) -> Result<SealedEvent, DecodeError> {
        let (hash, bytes) = self.entry(i)?;
        let sealed = SealedEvent::from_bytes(bytes.to_vec())?;
        if sealed.hash != hash {
            return Err(DecodeError::Malformed(
                "stored hash differs from the event's".into(),
            ));
        }
        Ok(sealed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sx_common::chain::ChainHead;
    use sx_common::event::{EventPayload, OperationalTransition};
    use sx_common::model::OperationalState;
    use sx_common::time::Timestamp;

    fn events(n: usize) -> Vec<SealedEvent> {
        sx_common::testing::seal_stream(
            "sx-coeur-2026-a1-node-00001",
            ChainHead::default(),
            (0..n).map(|i| {
                (
                    Timestamp(i as i64),
                    EventPayload::OperationalTransition(OperationalTransition {
                        from: OperationalState::InService,
                        to: OperationalState::Degraded,
                        reason: Some("x".repeat(i % 7)),
                    }),
                )
            }),
        )
    }

    #[test]
    fn runs_round_trip() {
        for n in [1, 2, 17, MAX_RUN] {
            let events = events(n);
            let bytes = encode(&events);
            let run = Run::parse(&bytes).expect("parse");
            assert_eq!(run.len(), n);
            for (i, e) in events.iter().enumerate() {
                assert_eq!(&run.event(i).expect("event"), e);
                assert_eq!(run.entry(i).expect("entry").0, e.hash);
            }
            assert!(run.entry(n).is_err());
        }
    }

    #[test]
    fn damaged_runs_are_errors_not_panics() {
        let bytes = encode(&events(5));
        for cut in 0..bytes.len() {
            if let Ok(run) = Run::parse(&bytes[..cut]) {
                assert!(
                    (0..run.len()).any(|i| run.event(i).is_err()),
                    "a run cut at {cut} must not read whole"
                );
            }
        }
        for i in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0x01;
            if let Ok(run) = Run::parse(&flipped) {
                let all: Result<Vec<_>, _> = (0..run.len()).map(|i| run.event(i)).collect();
                if let Ok(all) = all {
                    assert_ne!(all, events(5), "a flipped bit at {i} went unnoticed");
                }
            }
        }
        assert!(Run::parse(&0u32.to_le_bytes()).is_err(), "empty run");
    }
}
