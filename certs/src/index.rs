//! The CA's memory: `ca/index.json` lists every certificate the CA signed,
//! with its revocation state, plus the number of the last CRL published.
//!
//! Invariants: a certificate is recorded here *before* its files are written,
//! so the CA never signed anything it cannot revoke; entries are only ever
//! appended or marked revoked, never removed; `crl_number` only grows.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::inspect::format_unix;
use crate::layout::{PUBLIC_MODE, read_text, write_atomic};
use crate::{Pki, PkiError};

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertKind {
    /// A fleet node (client auth; signs its journal with the same key).
    Node,
    /// A regional aggregator (server auth).
    Aggregator,
    /// A human or tool using the HTTP API (client auth).
    Operator,
}

impl fmt::Display for CertKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad` so that width specifiers line up `list` output.
        f.pad(match self {
            CertKind::Node => "node",
            CertKind::Aggregator => "aggregator",
            CertKind::Operator => "operator",
        })
    }
}

/// One certificate the CA issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// Serial number, lower-case hex without separators or leading zero bytes
    /// (the same spelling as [`crate::CertInfo::serial_hex`]).
    pub serial_hex: String,
    /// What the certificate is for.
    pub kind: CertKind,
    /// Node id, aggregator name or operator name.
    pub name: String,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
    /// `sha256:<hex>` over the certificate DER.
    pub fingerprint: String,
    /// When the CA revoked it, Unix seconds; `None` while it is not revoked.
    pub revoked_at: Option<i64>,
    /// RFC 5280 reason name (see [`crate::RevocationReason`]); set iff revoked.
    pub reason: Option<String>,
}

impl IndexEntry {
    /// Whether the certificate has been revoked.
    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }
}

impl fmt::Display for IndexEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{serial}  {kind:<10}  {name}  {nb} .. {na}",
            serial = self.serial_hex,
            kind = self.kind,
            name = self.name,
            nb = format_unix(self.not_before),
            na = format_unix(self.not_after),
        )?;
        if let Some(at) = self.revoked_at {
            write!(
                f,
                "  REVOKED {} ({})",
                format_unix(at),
                self.reason.as_deref().unwrap_or("unspecified")
            )?;
        }
        Ok(())
    }
}

/// The on-disk shape of `ca/index.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct IndexFile {
    /// Number of the last CRL published (0: none yet).
    pub crl_number: u64,
    /// Issued certificates, oldest first.
    pub certs: Vec<IndexEntry>,
}

impl IndexFile {
    pub(crate) fn load(path: &Path) -> Result<IndexFile, PkiError> {
        let text = read_text(path)?;
        serde_json::from_str(&text).map_err(|source| PkiError::Index {
            path: path.to_owned(),
            source,
        })
    }

    pub(crate) fn store(&self, path: &Path) -> Result<(), PkiError> {
        let mut text = serde_json::to_string_pretty(self).map_err(|source| PkiError::Index {
            path: path.to_owned(),
            source,
        })?;
        text.push('\n');
        write_atomic(path, text.as_bytes(), PUBLIC_MODE)
    }
}

impl Pki {
    /// Every certificate the CA issued, oldest first, with revocation state.
    pub fn index(&self) -> Result<Vec<IndexEntry>, PkiError> {
        Ok(IndexFile::load(&self.index_path())?.certs)
    }

    /// The index entry for a serial (any case, `:` separators and leading
    /// zeros allowed), if the CA issued it.
    pub fn find_serial(&self, serial_hex: &str) -> Result<Option<IndexEntry>, PkiError> {
        let wanted = normalize_serial(serial_hex);
        Ok(self.index()?.into_iter().find(|e| e.serial_hex == wanted))
    }
}

/// Canonical serial spelling: lower case, whole bytes, no `:`, no leading
/// zero bytes.
pub(crate) fn normalize_serial(serial_hex: &str) -> String {
    let mut compact: String = serial_hex
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if compact.len() % 2 == 1 {
        compact.insert(0, '0');
    }
    let mut rest = compact.as_str();
    while rest.len() > 2 && rest.starts_with("00") {
        rest = &rest[2..];
    }
    rest.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_spellings_normalize() {
        assert_eq!(normalize_serial("00:AB:01"), "ab01");
        assert_eq!(normalize_serial("ab01"), "ab01");
        assert_eq!(normalize_serial("00"), "00");
        assert_eq!(normalize_serial("abc"), "0abc");
    }

    #[test]
    fn index_round_trips_through_json() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("index.json");
        let index = IndexFile {
            crl_number: 3,
            certs: vec![IndexEntry {
                serial_hex: "4a01".into(),
                kind: CertKind::Node,
                name: "n1".into(),
                not_before: 1,
                not_after: 2,
                fingerprint: "sha256:00".into(),
                revoked_at: Some(5),
                reason: Some("key-compromise".into()),
            }],
        };
        index.store(&path)?;
        assert_eq!(IndexFile::load(&path)?, index);
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        assert_eq!(json["certs"][0]["kind"], "node");
        Ok(())
    }
}
