//! The fleet CA: creating it, opening it, and loading it back as an rcgen
//! [`Issuer`] to sign with.
//!
//! The CA is a self-signed Ed25519 certificate, `CN=<name>, O=Souverix`,
//! basicConstraints `CA:true, pathlen:0` (it signs leaves only), key usage
//! keyCertSign + cRLSign + digitalSignature.

use std::path::Path;

use rand::RngCore;
use rand::rngs::OsRng;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ED25519, SerialNumber,
};

use crate::index::IndexFile;
use crate::issue::Validity;
use crate::layout::{KEY_MODE, PUBLIC_MODE, create_dir, read_text, write_atomic};
use crate::{CertInfo, DEFAULT_CRL_DAYS, Pki, PkiError, inspect_pem};

/// Default common name of the fleet CA.
pub const DEFAULT_CA_NAME: &str = "souverix-autorite-root-ca";
/// Default CA lifetime in days (ten years).
pub const DEFAULT_CA_DAYS: u32 = 3650;

/// How to create the fleet CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaOptions {
    /// Subject CN of the CA certificate.
    pub common_name: String,
    /// Lifetime from now, in days; at least 1.
    pub days: u32,
    /// Replace an existing CA (and start a fresh, empty index). Certificates
    /// issued by the old CA stop verifying against the new one.
    pub force: bool,
}

impl Default for CaOptions {
    fn default() -> Self {
        CaOptions {
            common_name: DEFAULT_CA_NAME.to_owned(),
            days: DEFAULT_CA_DAYS,
            force: false,
        }
    }
}

impl Pki {
    /// Opens an existing PKI directory.
    ///
    /// Fails with [`PkiError::CaMissing`] unless both `ca/ca.pem` and
    /// `ca/ca.key` exist. Nothing is read beyond that until an operation
    /// needs it.
    pub fn open(dir: impl AsRef<Path>) -> Result<Pki, PkiError> {
        let pki = Pki {
            root: dir.as_ref().to_owned(),
        };
        for path in [pki.ca_path(), pki.ca_key_path()] {
            if !path.is_file() {
                return Err(PkiError::CaMissing { path });
            }
        }
        Ok(pki)
    }

    /// Creates the fleet CA in `dir` (created if missing), an empty index and
    /// an initial empty CRL valid for [`DEFAULT_CRL_DAYS`].
    ///
    /// Refuses with [`PkiError::CaExists`] if a CA certificate or key is
    /// already there, unless `opts.force`.
    pub fn init(dir: impl AsRef<Path>, opts: &CaOptions) -> Result<Pki, PkiError> {
        let pki = Pki {
            root: dir.as_ref().to_owned(),
        };
        crate::identity::validate_ca_name(&opts.common_name)?;
        if opts.days == 0 {
            return Err(PkiError::InvalidValidity {
                detail: "a CA must be valid for at least one day".to_owned(),
            });
        }
        let validity = Validity::days(opts.days);
        validity.check()?;

        create_dir(&pki.ca_dir())?;
        let _lock = pki.lock()?;
        if !opts.force {
            for path in [pki.ca_path(), pki.ca_key_path()] {
                if path.exists() {
                    return Err(PkiError::CaExists { path });
                }
            }
        }

        let key = KeyPair::generate_for(&PKCS_ED25519)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, opts.common_name.as_str());
        params
            .distinguished_name
            .push(DnType::OrganizationName, crate::identity::ORGANIZATION);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let cert = params.self_signed(&key)?;

        // Key first: a CA certificate on disk without its key would make
        // `open` succeed and every signing operation fail.
        write_atomic(&pki.ca_key_path(), key.serialize_pem().as_bytes(), KEY_MODE)?;
        write_atomic(&pki.ca_path(), cert.pem().as_bytes(), PUBLIC_MODE)?;
        IndexFile::default().store(&pki.index_path())?;
        drop(_lock);

        pki.publish_crl(DEFAULT_CRL_DAYS)?;
        Ok(pki)
    }

    /// The CA certificate, PEM.
    pub fn ca_cert_pem(&self) -> Result<String, PkiError> {
        read_text(&self.ca_path())
    }

    /// What the CA certificate says (subject, validity, fingerprint ...).
    pub fn ca_info(&self) -> Result<CertInfo, PkiError> {
        let path = self.ca_path();
        inspect_pem(&self.ca_cert_pem()?)?
            .into_iter()
            .next()
            .ok_or_else(|| PkiError::NothingFound {
                origin: path.display().to_string(),
                expected: "CERTIFICATE",
            })
    }

    /// Loads the CA back as an rcgen issuer (subject DN, key identifier and
    /// key usages taken from `ca.pem`, signing key from `ca.key`).
    pub(crate) fn issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        let key_path = self.ca_key_path();
        let key_pem = read_text(&key_path)?;
        let key = KeyPair::from_pkcs8_pem_and_sign_algo(&key_pem, &PKCS_ED25519).map_err(|e| {
            PkiError::Key {
                path: key_path,
                detail: e.to_string(),
            }
        })?;
        let cert_pem = self.ca_cert_pem()?;
        Ok(Issuer::from_ca_cert_pem(&cert_pem, key)?)
    }
}

/// A fresh serial number: 16 random bytes, positive, always encoded in
/// exactly 16 bytes (top bit clear so no sign padding, second-highest bit
/// set so no leading zero byte), which keeps its hex spelling stable.
pub(crate) fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_positive_sixteen_bytes_and_distinct() {
        let a = random_serial().to_bytes();
        let b = random_serial().to_bytes();
        assert_eq!(a.len(), 16);
        assert!(a[0] & 0x80 == 0 && a[0] != 0);
        assert_ne!(a, b);
    }
}
