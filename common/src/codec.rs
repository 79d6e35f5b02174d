//! Decoding untrusted bytes: size limits checked before anything is
//! allocated, truncation told apart from malformed input, and the wire
//! version checked before the rest is read.

use serde::de::DeserializeOwned;

/// The version of every binary format this crate defines (frames, batches,
/// bundles). A peer speaking another version is refused with
/// [`DecodeError::UnknownVersion`].
pub const WIRE_VERSION: u16 = 1;

/// Largest encoded event accepted anywhere (1 MiB).
pub const MAX_EVENT_BYTES: usize = 1 << 20;

/// Why bytes could not be decoded. Nothing partially decoded is ever used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("truncated input: ended before the value was complete")]
    Truncated,
    #[error("oversized input: {size} bytes, limit {limit}")]
    Oversized { size: usize, limit: usize },
    #[error("unknown wire version {found} (this build speaks {expected})")]
    UnknownVersion { found: u16, expected: u16 },
    #[error("malformed input: {0}")]
    Malformed(String),
    #[error("{0} trailing bytes after the value")]
    TrailingBytes(usize),
}

impl From<postcard::Error> for DecodeError {
    fn from(e: postcard::Error) -> Self {
        match e {
            postcard::Error::DeserializeUnexpectedEnd => DecodeError::Truncated,
            other => DecodeError::Malformed(other.to_string()),
        }
    }
}

/// Decodes exactly one value that must fill `bytes`, refusing more than
/// [`MAX_EVENT_BYTES`].
pub fn decode_exact<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    decode_limited(bytes, MAX_EVENT_BYTES)
}

/// Decodes exactly one value that must fill `bytes`, refusing more than
/// `limit` bytes before reading anything.
pub fn decode_limited<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, DecodeError> {
    if bytes.len() > limit {
        return Err(DecodeError::Oversized {
            size: bytes.len(),
            limit,
        });
    }
    let (value, rest) = postcard::take_from_bytes::<T>(bytes)?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    Ok(value)
}

/// Encodes `value` prefixed by [`WIRE_VERSION`].
pub fn encode_versioned<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&WIRE_VERSION.to_be_bytes());
    // Serialising into a Vec only fails for types serde cannot express,
    // which ours never are.
    if let Ok(body) = postcard::to_allocvec(value) {
        out.extend_from_slice(&body);
    }
    out
}

/// Decodes a value written by [`encode_versioned`]: the size limit first,
/// then the version, then the body.
pub fn decode_versioned<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, DecodeError> {
    if bytes.len() > limit {
        return Err(DecodeError::Oversized {
            size: bytes.len(),
            limit,
        });
    }
    let version = match bytes {
        [a, b, ..] => u16::from_be_bytes([*a, *b]),
        _ => return Err(DecodeError::Truncated),
    };
    if version != WIRE_VERSION {
        return Err(DecodeError::UnknownVersion {
            found: version,
            expected: WIRE_VERSION,
        });
    }
    decode_limited(&bytes[2..], limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_size_and_truncation_are_told_apart() {
        let bytes = encode_versioned(&(7u64, String::from("hello")));
        let back: (u64, String) = decode_versioned(&bytes, 1024).expect("round trip");
        assert_eq!(back, (7, "hello".to_owned()));
        assert_eq!(
            decode_versioned::<(u64, String)>(&bytes, 4),
            Err(DecodeError::Oversized {
                size: bytes.len(),
                limit: 4
            })
        );
        let mut wrong = bytes.clone();
        wrong[1] = 9;
        assert!(matches!(
            decode_versioned::<(u64, String)>(&wrong, 1024),
            Err(DecodeError::UnknownVersion { found: 9, .. })
        ));
        assert_eq!(
            decode_versioned::<(u64, String)>(&bytes[..bytes.len() - 1], 1024),
            Err(DecodeError::Truncated)
        );
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            decode_versioned::<(u64, String)>(&longer, 1024),
            Err(DecodeError::TrailingBytes(1))
        );
    }
}
