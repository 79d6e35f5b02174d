//! Turning payloads into sealed, chained events on the append hot path.
//!
//! Produces exactly what [`SealedEvent::seal`] produces (the canonical
//! postcard bytes and their chain hash) but encodes into a buffer sized
//! from the events sealed before, instead of growing one from empty: that
//! saves several reallocations per event.

use super::JournalError;
use postcard::ser_flavors::Flavor;
use sx_common::chain::event_hash;
use sx_common::codec::MAX_EVENT_BYTES;
use sx_common::event::Event;
use sx_common::{ChainHead, EventPayload, SealedEvent, Timestamp};

/// Seals the events of one node's stream.
#[derive(Debug)]
pub(crate) struct Sealer {
    /// Largest encoding seen so far: the capacity of the next buffer.
    size_hint: usize,
}

impl Default for Sealer {
    fn default() -> Self {
        Sealer { size_hint: 256 }
    }
}

impl Sealer {
    /// Builds and seals the events for `items` on top of `head`, in order,
    /// moving each payload into its event. Refuses an event whose encoding
    /// exceeds [`MAX_EVENT_BYTES`], which no reader would accept.
    pub(crate) fn seal_batch(
        &mut self,
        node_id: &str,
        head: ChainHead,
        items: impl ExactSizeIterator<Item = (Timestamp, EventPayload)>,
    ) -> Result<Vec<SealedEvent>, JournalError> {
        let mut events = Vec::with_capacity(items.len());
        let mut head = head;
        for (timestamp, payload) in items {
            head.seq += 1;
            let event = Event {
                node_id: node_id.to_owned(),
                seq: head.seq,
                timestamp,
                prev_hash: head.hash,
                payload,
            };
            let bytes = postcard::serialize_with_flavor(
                &event,
                PresizedVec(Vec::with_capacity(self.size_hint)),
            )
            .map_err(JournalError::Encode)?;
            if bytes.len() > MAX_EVENT_BYTES {
                return Err(JournalError::EventTooLarge {
                    size: bytes.len(),
                    limit: MAX_EVENT_BYTES,
                });
            }
            self.size_hint = self.size_hint.max(bytes.len());
            head.hash = event_hash(&event.prev_hash, &bytes);
            events.push(SealedEvent {
                event,
                bytes,
                hash: head.hash,
            });
        }
        Ok(events)
    }
}

/// A postcard output that writes into a pre-sized `Vec`.
struct PresizedVec(Vec<u8>);

impl Flavor for PresizedVec {
    type Output = Vec<u8>;

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<Vec<u8>> {
        Ok(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sx_common::Digest;
    use sx_common::event::{Note, Update};

    #[test]
    fn sealing_matches_the_canonical_seal() {
        let items = [
            (
                Timestamp::from_secs(1_000),
                EventPayload::ConnectionLost(Note {
                    reason: Some("x".repeat(700)),
                }),
            ),
            (
                Timestamp::from_secs(1_001),
                EventPayload::UpdateInitiated(Update {
                    from_version: "1.4.6".to_owned(),
                    to_version: "1.4.7".to_owned(),
                }),
            ),
        ];
        let head = ChainHead {
            seq: 41,
            hash: Digest([9; 32]),
        };
        let sealed = Sealer::default()
            .seal_batch("n1", head, items.iter().cloned())
            .expect("seals");
        let mut prev = head.hash;
        for (i, s) in sealed.iter().enumerate() {
            let reference = SealedEvent::seal(Event {
                node_id: "n1".to_owned(),
                seq: 42 + i as u64,
                timestamp: items[i].0,
                prev_hash: prev,
                payload: items[i].1.clone(),
            });
            assert_eq!(s, &reference);
            prev = reference.hash;
        }
    }

    #[test]
    fn oversized_events_are_refused() {
        let items = vec![(
            Timestamp::from_secs(1),
            EventPayload::ConnectionLost(Note {
                reason: Some("x".repeat(MAX_EVENT_BYTES)),
            }),
        )];
        let err = Sealer::default()
            .seal_batch("n1", ChainHead::default(), items.into_iter())
            .expect_err("too large");
        assert!(matches!(err, JournalError::EventTooLarge { .. }), "{err}");
    }
}
