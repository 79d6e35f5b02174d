//! Revocation: marking certificates revoked in the index and publishing the
//! CRL (`ca/crl.pem`) that verifiers load.
//!
//! Invariants: after [`Pki::revoke`] returns, `crl.pem` lists the revoked
//! serial; every CRL carries a CRL number strictly greater than the previous
//! one (the number is committed to the index before the CRL is written, so a
//! crash can skip a number but never reuse one).

use std::fmt;
use std::str::FromStr;

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use time::{Duration, OffsetDateTime};

use crate::index::{IndexFile, normalize_serial};
use crate::layout::{PUBLIC_MODE, write_atomic};
use crate::{CertKind, IndexEntry, Pki, PkiError};

/// Default `nextUpdate` distance of a published CRL, in days.
///
/// Verifiers that enforce CRL expiry reject everything once it passes, so
/// re-publish (`sx-certs crl`) well before.
pub const DEFAULT_CRL_DAYS: u32 = 30;

/// What to revoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeTarget {
    /// Every unrevoked certificate issued to this node id.
    Node(String),
    /// Every unrevoked certificate issued to this aggregator.
    Aggregator(String),
    /// Every unrevoked certificate issued to this operator.
    Operator(String),
    /// The one certificate with this serial (hex; case, `:` and leading
    /// zeros do not matter).
    Serial(String),
}

impl fmt::Display for RevokeTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RevokeTarget::Node(n) => write!(f, "node {n:?}"),
            RevokeTarget::Aggregator(n) => write!(f, "aggregator {n:?}"),
            RevokeTarget::Operator(n) => write!(f, "operator {n:?}"),
            RevokeTarget::Serial(s) => write!(f, "serial {s}"),
        }
    }
}

/// RFC 5280 §5.3.1 revocation reasons, spelled in kebab-case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationReason {
    /// `unspecified`
    Unspecified,
    /// `key-compromise`
    KeyCompromise,
    /// `ca-compromise`
    CaCompromise,
    /// `affiliation-changed`
    AffiliationChanged,
    /// `superseded`
    Superseded,
    /// `cessation-of-operation`
    CessationOfOperation,
    /// `certificate-hold`
    CertificateHold,
    /// `privilege-withdrawn`
    PrivilegeWithdrawn,
}

impl RevocationReason {
    /// Every reason, in RFC order.
    pub const ALL: [RevocationReason; 8] = [
        RevocationReason::Unspecified,
        RevocationReason::KeyCompromise,
        RevocationReason::CaCompromise,
        RevocationReason::AffiliationChanged,
        RevocationReason::Superseded,
        RevocationReason::CessationOfOperation,
        RevocationReason::CertificateHold,
        RevocationReason::PrivilegeWithdrawn,
    ];

    /// The accepted spellings, in the same order as [`RevocationReason::ALL`].
    pub const NAMES: [&'static str; 8] = [
        "unspecified",
        "key-compromise",
        "ca-compromise",
        "affiliation-changed",
        "superseded",
        "cessation-of-operation",
        "certificate-hold",
        "privilege-withdrawn",
    ];

    /// The kebab-case name.
    pub fn name(self) -> &'static str {
        match self {
            RevocationReason::Unspecified => "unspecified",
            RevocationReason::KeyCompromise => "key-compromise",
            RevocationReason::CaCompromise => "ca-compromise",
            RevocationReason::AffiliationChanged => "affiliation-changed",
            RevocationReason::Superseded => "superseded",
            RevocationReason::CessationOfOperation => "cessation-of-operation",
            RevocationReason::CertificateHold => "certificate-hold",
            RevocationReason::PrivilegeWithdrawn => "privilege-withdrawn",
        }
    }

    fn to_rcgen(self) -> rcgen::RevocationReason {
        match self {
            RevocationReason::Unspecified => rcgen::RevocationReason::Unspecified,
            RevocationReason::KeyCompromise => rcgen::RevocationReason::KeyCompromise,
            RevocationReason::CaCompromise => rcgen::RevocationReason::CaCompromise,
            RevocationReason::AffiliationChanged => rcgen::RevocationReason::AffiliationChanged,
            RevocationReason::Superseded => rcgen::RevocationReason::Superseded,
            RevocationReason::CessationOfOperation => rcgen::RevocationReason::CessationOfOperation,
            RevocationReason::CertificateHold => rcgen::RevocationReason::CertificateHold,
            RevocationReason::PrivilegeWithdrawn => rcgen::RevocationReason::PrivilegeWithdrawn,
        }
    }
}

impl FromStr for RevocationReason {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|reason| reason.name() == s)
            .ok_or_else(|| PkiError::InvalidReason {
                value: s.to_owned(),
            })
    }
}

impl fmt::Display for RevocationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Pki {
    /// Revokes `target` for `reason` (a [`RevocationReason`] name) and
    /// re-publishes the CRL with [`DEFAULT_CRL_DAYS`].
    ///
    /// A name target revokes *every* unrevoked certificate issued under that
    /// name (re-issued ones included), so no older certificate keeps the
    /// identity alive; the most recent of them is returned. Fails with
    /// [`PkiError::UnknownTarget`] if nothing matches and
    /// [`PkiError::AlreadyRevoked`] if everything matching is revoked already.
    pub fn revoke(&self, target: RevokeTarget, reason: &str) -> Result<IndexEntry, PkiError> {
        let reason: RevocationReason = reason.parse()?;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let revoked = {
            let _lock = self.lock()?;
            let index_path = self.index_path();
            let mut index = IndexFile::load(&index_path)?;
            let matching: Vec<usize> = index
                .certs
                .iter()
                .enumerate()
                .filter(|(_, e)| target_matches(&target, e))
                .map(|(i, _)| i)
                .collect();
            let Some(&latest) = matching.last() else {
                return Err(PkiError::UnknownTarget {
                    target: target.to_string(),
                });
            };
            let mut revoked_latest = None;
            for &i in &matching {
                let entry = &mut index.certs[i];
                if entry.revoked_at.is_none() {
                    entry.revoked_at = Some(now);
                    entry.reason = Some(reason.name().to_owned());
                    revoked_latest = Some(entry.clone());
                }
            }
            let Some(revoked) = revoked_latest else {
                return Err(PkiError::AlreadyRevoked {
                    serial_hex: index.certs[latest].serial_hex.clone(),
                });
            };
            index.store(&index_path)?;
            revoked
        };
        self.publish_crl(DEFAULT_CRL_DAYS)?;
        Ok(revoked)
    }

    /// Signs and writes `ca/crl.pem` listing every revoked certificate in the
    /// index, with the next CRL number and `nextUpdate` `next_update_days`
    /// (at least 1) from now. Returns the CRL path.
    pub fn publish_crl(&self, next_update_days: u32) -> Result<std::path::PathBuf, PkiError> {
        if next_update_days == 0 {
            return Err(PkiError::InvalidValidity {
                detail: "a CRL's next update must be at least one day ahead".to_owned(),
            });
        }
        let _lock = self.lock()?;
        let issuer = self.issuer()?;
        let index_path = self.index_path();
        let mut index = IndexFile::load(&index_path)?;

        let revoked_certs = index
            .certs
            .iter()
            .filter_map(|entry| {
                let at = entry.revoked_at?;
                Some(revoked_params(entry, at))
            })
            .collect::<Result<Vec<_>, _>>()?;

        index.crl_number += 1;
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now,
            next_update: now + Duration::days(i64::from(next_update_days)),
            crl_number: SerialNumber::from_slice(&index.crl_number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            // Same method the CA certificate's subject key identifier used,
            // so the CRL's authority key identifier matches it.
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&issuer)?;
        let pem = crl.pem()?;
        index.store(&index_path)?;
        let path = self.crl_path();
        write_atomic(&path, pem.as_bytes(), PUBLIC_MODE)?;
        Ok(path)
    }
}

fn target_matches(target: &RevokeTarget, entry: &IndexEntry) -> bool {
    match target {
        RevokeTarget::Node(name) => entry.kind == CertKind::Node && entry.name == *name,
        RevokeTarget::Aggregator(name) => entry.kind == CertKind::Aggregator && entry.name == *name,
        RevokeTarget::Operator(name) => entry.kind == CertKind::Operator && entry.name == *name,
        RevokeTarget::Serial(serial) => entry.serial_hex == normalize_serial(serial),
    }
}

fn revoked_params(entry: &IndexEntry, revoked_at: i64) -> Result<RevokedCertParams, PkiError> {
    let corrupt = |detail: String| PkiError::Parse {
        what: "certificate index",
        detail,
    };
    let serial = hex::decode(&entry.serial_hex)
        .map_err(|e| corrupt(format!("serial {:?}: {e}", entry.serial_hex)))?;
    let revocation_time = OffsetDateTime::from_unix_timestamp(revoked_at)
        .map_err(|e| corrupt(format!("revoked_at {revoked_at}: {e}")))?;
    let reason = match entry.reason.as_deref() {
        Some(name) => name.parse::<RevocationReason>()?,
        None => RevocationReason::Unspecified,
    };
    Ok(RevokedCertParams {
        serial_number: SerialNumber::from_slice(&serial),
        revocation_time,
        // RFC 5280 §5.3.1: omit the reason code rather than say "unspecified".
        reason_code: (reason != RevocationReason::Unspecified).then(|| reason.to_rcgen()),
        invalidity_date: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip_by_name() {
        for (reason, name) in RevocationReason::ALL
            .into_iter()
            .zip(RevocationReason::NAMES)
        {
            assert_eq!(reason.name(), name);
            assert_eq!(name.parse::<RevocationReason>().ok(), Some(reason));
        }
        assert!(matches!(
            "keyCompromise".parse::<RevocationReason>(),
            Err(PkiError::InvalidReason { .. })
        ));
    }
}
