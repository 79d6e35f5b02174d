//! The one error type of the PKI: every failure has its own variant, so
//! callers (and the CLI's exit message) can tell them apart.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while creating, issuing, revoking, loading or
/// inspecting certificates.
///
/// Variants that concern a file carry its path, so the message alone says
/// which file to look at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// Reading, writing, creating or locking a file or directory failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },

    /// A PEM document could not be decoded.
    #[error("{origin}: invalid PEM: {source}")]
    Pem {
        /// Where the PEM came from (a path, or `"input"`).
        origin: String,
        /// The decoder's error.
        #[source]
        source: rustls_pki_types::pem::Error,
    },

    /// A PEM document decoded fine but held no item of the expected kind.
    #[error("{origin}: no {expected} found")]
    NothingFound {
        /// Where the PEM came from (a path, or `"input"`).
        origin: String,
        /// What was looked for, e.g. `"CERTIFICATE"`.
        expected: &'static str,
    },

    /// rcgen refused to generate a key, certificate or CRL.
    #[error("certificate generation failed: {0}")]
    CertGen(#[from] rcgen::Error),

    /// A certificate or CRL could not be parsed, or its content is not what
    /// the Souverix profile allows (e.g. two node ids in one certificate).
    #[error("cannot parse {what}: {detail}")]
    Parse {
        /// What was being parsed.
        what: &'static str,
        /// Why it failed.
        detail: String,
    },

    /// A private key file is not a usable PKCS#8 Ed25519 key.
    #[error("{}: not a PKCS#8 Ed25519 private key: {detail}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// Why it was refused.
        detail: String,
    },

    /// `init` found a CA already in place and was not told to replace it.
    #[error("a CA already exists at {} (use --force to replace it)", path.display())]
    CaExists {
        /// The existing CA certificate or key.
        path: PathBuf,
    },

    /// The PKI directory holds no CA (certificate or key missing).
    #[error("no CA at {} (run `sx-certs init-ca` first)", path.display())]
    CaMissing {
        /// The missing file.
        path: PathBuf,
    },

    /// A node id, name, component type, region, zone or DNS name does not
    /// match the allowed syntax.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        /// What kind of name it was (e.g. `"node id"`).
        what: &'static str,
        /// The rejected value.
        value: String,
        /// The rule it broke.
        reason: &'static str,
    },

    /// A validity period (certificate or CRL) is empty or reversed.
    #[error("invalid validity period: {detail}")]
    InvalidValidity {
        /// What is wrong with it.
        detail: String,
    },

    /// A revocation reason is not one of the RFC 5280 names.
    #[error("unknown revocation reason {value:?} (expected one of: {})", crate::RevocationReason::NAMES.join(", "))]
    InvalidReason {
        /// The rejected reason.
        value: String,
    },

    /// A certificate for this subject already exists on disk and the request
    /// did not ask to replace it.
    #[error("a {kind} certificate for {name:?} already exists at {} (use --force to re-issue)", path.display())]
    AlreadyIssued {
        /// `node`, `aggregator` or `operator`.
        kind: crate::CertKind,
        /// The subject name.
        name: String,
        /// The existing certificate.
        path: PathBuf,
    },

    /// An aggregator certificate request named no DNS name and no IP address.
    #[error("aggregator {name:?}: at least one DNS name or IP address is required")]
    MissingServerName {
        /// The aggregator.
        name: String,
    },

    /// A revocation target matches nothing in the index.
    #[error("no issued certificate matches {target}")]
    UnknownTarget {
        /// The target, as the user named it.
        target: String,
    },

    /// Every certificate the revocation target matches is already revoked.
    #[error("certificate {serial_hex} is already revoked")]
    AlreadyRevoked {
        /// The serial of the (most recent) matching certificate.
        serial_hex: String,
    },

    /// The certificate index could not be read or written as JSON.
    #[error("{}: bad certificate index: {source}", path.display())]
    Index {
        /// The index file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
}

impl PkiError {
    /// Wraps an I/O error with the path it concerns.
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> PkiError {
        let path = path.into();
        move |source| PkiError::Io { path, source }
    }
}
