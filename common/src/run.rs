//! Runs: up to [`MAX_RUN`] byte entries stored as ONE value, with an
//! offset table so any entry is read in place.
//!
//! Both embedded stores keep a stream of consecutive events as runs: a
//! B-tree insert per event is most of what a commit costs (several µs
//! each, beyond what the bytes need), a run is one insert. What an entry
//! holds is the store's choice: the aggregator's event store puts the chain
//! hash before the canonical event bytes, the agent's journal stores the
//! canonical bytes alone (it recomputes hashes on read).
//!
//! Layout, all integers little-endian:
//!
//! ```text
//! count: u32 | offsets: count x u32 | entries
//! entry i = entries[offsets[i]..offsets[i + 1]] (the last one to the end)
//! ```
//!
//! A store keys a run by the seq of its first entry; runs of one stream
//! never overlap and leave no gap, so the run holding `seq` is the last one
//! whose first seq is at most `seq`, and entry `seq - first` in it.

use crate::codec::DecodeError;

/// Most entries in one run: a read of one entry reads its whole run.
pub const MAX_RUN: usize = 1_024;

/// Encodes `items` (at most [`MAX_RUN`]) as one run: entry `i` is the
/// `len(&items[i])` bytes `write(&items[i], out)` appends.
pub fn encode<T>(
    items: &[T],
    len: impl Fn(&T) -> usize,
    write: impl Fn(&T, &mut Vec<u8>),
) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(&mut out, items, len, write);
    out
}

/// [`encode`] into `out` (cleared first), reusing its allocation.
pub fn encode_into<T>(
    out: &mut Vec<u8>,
    items: &[T],
    len: impl Fn(&T) -> usize,
    write: impl Fn(&T, &mut Vec<u8>),
) {
    let count = items.len();
    debug_assert!((1..=MAX_RUN).contains(&count), "a run of {count} entries");
    out.clear();
    let body: usize = items.iter().map(&len).sum();
    out.reserve(4 + 4 * count + body);
    out.extend_from_slice(&(count as u32).to_le_bytes());
    let mut offset = 0usize;
    for item in items {
        debug_assert!(u32::try_from(offset).is_ok(), "run over 4 GiB");
        out.extend_from_slice(&(offset as u32).to_le_bytes());
        offset += len(item);
    }
    let entries_start = out.len();
    for item in items {
        write(item, out);
    }
    debug_assert_eq!(
        out.len() - entries_start,
        body,
        "`len` and `write` disagree"
    );
}

/// A stored run, read in place.
#[derive(Clone, Copy, Debug)]
pub struct Run<'a> {
    count: usize,
    offsets: &'a [u8],
    entries: &'a [u8],
}

impl<'a> Run<'a> {
    /// Checks the header (a count of 1 to [`MAX_RUN`] and the whole offset
    /// table); entries are checked as they are read.
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

    /// How many entries the run holds (at least one).
    pub fn len(&self) -> usize {
        self.count
    }

    /// Always false: a parsed run holds at least one entry.
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

    /// The bytes of the `i`-th entry; an error for `i` out of range or an
    /// offset table that does not fit the entries.
    pub fn entry(&self, i: usize) -> Result<&'a [u8], DecodeError> {
        if i >= self.count {
            return Err(DecodeError::Truncated);
        }
        self.entries
            .get(self.offset(i)..self.offset(i + 1))
            .ok_or(DecodeError::Truncated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| vec![i as u8; i % 7]).collect()
    }

    fn encode_all(entries: &[Vec<u8>]) -> Vec<u8> {
        encode(entries, Vec::len, |e, out| out.extend_from_slice(e))
    }

    #[test]
    fn runs_round_trip() {
        let mut reused = Vec::new();
        for n in [1, 2, 17, MAX_RUN] {
            let entries = entries(n);
            let bytes = encode_all(&entries);
            encode_into(&mut reused, &entries, Vec::len, |e, out| {
                out.extend_from_slice(e)
            });
            assert_eq!(reused, bytes, "encode_into is encode");
            let run = Run::parse(&bytes).expect("parse");
            assert_eq!(run.len(), n);
            assert!(!run.is_empty());
            for (i, e) in entries.iter().enumerate() {
                assert_eq!(run.entry(i).expect("entry"), e.as_slice());
            }
            assert!(run.entry(n).is_err());
        }
    }

    #[test]
    fn damaged_headers_are_errors_not_panics() {
        let original = entries(9);
        let bytes = encode_all(&original);
        for cut in 0..bytes.len() {
            if let Ok(run) = Run::parse(&bytes[..cut]) {
                let read: Result<Vec<&[u8]>, _> = (0..run.len()).map(|i| run.entry(i)).collect();
                assert!(
                    read.map_or(true, |read| read != original),
                    "a run cut at {cut} reads whole"
                );
            }
        }
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut flipped = bytes.clone();
                flipped[i] ^= 1 << bit;
                if let Ok(run) = Run::parse(&flipped) {
                    for i in 0..run.len() + 1 {
                        let _ = run.entry(i);
                    }
                }
            }
        }
        assert!(Run::parse(&0u32.to_le_bytes()).is_err(), "empty run");
        let too_many = (MAX_RUN as u32 + 1).to_le_bytes();
        assert!(Run::parse(&too_many).is_err(), "oversized run");
    }
}
