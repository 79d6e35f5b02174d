//! Fixed-size byte strings (digests, signatures) that travel as raw bytes in
//! postcard and as hex text in JSON.

use serde::de::{self, Deserializer, Visitor};
use serde::ser::Serializer;
use std::fmt;

/// Serialises `bytes` as raw bytes for binary formats and as `prefix` + hex for
/// human-readable ones.
pub(crate) fn serialize_fixed<S: Serializer>(
    bytes: &[u8],
    prefix: &str,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    if serializer.is_human_readable() {
        serializer.serialize_str(&format!("{prefix}{}", hex::encode(bytes)))
    } else {
        serializer.serialize_bytes(bytes)
    }
}

/// Inverse of [`serialize_fixed`]; rejects any length other than `N`.
pub(crate) fn deserialize_fixed<'de, D: Deserializer<'de>, const N: usize>(
    prefix: &'static str,
    deserializer: D,
) -> Result<[u8; N], D::Error> {
    struct FixedVisitor<const N: usize> {
        prefix: &'static str,
    }
    impl<const N: usize> FixedVisitor<N> {
        fn check_len<E: de::Error>(&self, v: &[u8]) -> Result<[u8; N], E> {
            <[u8; N]>::try_from(v).map_err(|_| E::invalid_length(v.len(), self))
        }
    }
    impl<'de, const N: usize> Visitor<'de> for FixedVisitor<N> {
        type Value = [u8; N];
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(
                f,
                "{N} bytes, or \"{}\" followed by {} hex digits",
                self.prefix,
                N * 2
            )
        }
        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
            self.check_len(v)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            let digits = v.strip_prefix(self.prefix).unwrap_or(v);
            let raw = hex::decode(digits).map_err(E::custom)?;
            self.check_len(&raw)
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = [0u8; N];
            for (i, slot) in out.iter_mut().enumerate() {
                *slot = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(i, &self))?;
            }
            Ok(out)
        }
    }
    if deserializer.is_human_readable() {
        deserializer.deserialize_str(FixedVisitor::<N> { prefix })
    } else {
        deserializer.deserialize_bytes(FixedVisitor::<N> { prefix })
    }
}
