//! The event store's runs: consecutive events of one node stored as one
//! redb value, in the shared run encoding ([`sx_common::run`]: a count, an
//! offset table, the entries). Each entry here is the event's chain hash
//! (32 bytes) followed by its canonical bytes:
//!
//! ```text
//! entry i = chain hash (32 bytes) | canonical event bytes
//! ```
//!
//! A run is keyed by (node index, seq of its first event); runs of a node
//! never overlap and leave no gap, so the run holding `seq` is the last one
//! whose first seq is at most `seq`. Runs are written once and never
//! changed.

use sx_common::chain::{Digest, SealedEvent};
use sx_common::codec::DecodeError;

pub use sx_common::run::MAX_RUN;

const HASH: usize = 32;

/// Encodes `events` (consecutive, at most [`MAX_RUN`]) as one run.
pub fn encode(events: &[SealedEvent]) -> Vec<u8> {
    sx_common::run::encode(
        events,
        |e| HASH + e.bytes.len(),
        |e, out| {
            out.extend_from_slice(&e.hash.0);
            out.extend_from_slice(&e.bytes);
        },
    )
}

/// A stored run, read in place.
#[derive(Clone, Copy, Debug)]
pub struct Run<'a>(sx_common::run::Run<'a>);

impl<'a> Run<'a> {
    /// Checks the header; entries are checked as they are read.
    pub fn parse(bytes: &'a [u8]) -> Result<Run<'a>, DecodeError> {
        sx_common::run::Run::parse(bytes).map(Run)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The hash and canonical bytes of the `i`-th event.
    pub fn entry(&self, i: usize) -> Result<(Digest, &'a [u8]), DecodeError> {
        let (hash, bytes) = self
            .0
            .entry(i)?
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
