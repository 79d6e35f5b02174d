//! Loading PEM files for rustls, and a node's Ed25519 signing key.

use std::path::Path;

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::PkiError;
use crate::inspect::certs_from_pem;
use crate::layout::read_text;

/// Every certificate in a PEM file, in order (a leaf's `chain.pem` yields the
/// leaf then the CA). Fails if there is none.
pub fn load_certs_pem(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let pem = read_text(path)?;
    certs_from_pem(pem.as_bytes(), &path.display().to_string())
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 or SEC1; the PKI
/// itself only writes PKCS#8).
pub fn load_key_pem(path: &Path) -> Result<PrivateKeyDer<'static>, PkiError> {
    let pem = read_text(path)?;
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|source| pem_error(path, source, "PRIVATE KEY"))
}

/// Every CRL in a PEM file. Fails if there is none.
pub fn load_crls_pem(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, PkiError> {
    let pem = read_text(path)?;
    let crls = CertificateRevocationListDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| pem_error(path, source, "X509 CRL"))?;
    if crls.is_empty() {
        return Err(PkiError::NothingFound {
            origin: path.display().to_string(),
            expected: "X509 CRL",
        });
    }
    Ok(crls)
}

/// The Ed25519 signing key in a PKCS#8 PEM file (v1 or v2, as ring writes).
///
/// For a node this is the key of its TLS certificate, so
/// `load_signing_key(key.pem)?.verifying_key()` equals the certificate's
/// [`crate::CertInfo::public_key`].
pub fn load_signing_key(path: &Path) -> Result<SigningKey, PkiError> {
    let pem = read_text(path)?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|e| PkiError::Key {
        path: path.to_owned(),
        detail: e.to_string(),
    })
}

fn pem_error(
    path: &Path,
    source: rustls_pki_types::pem::Error,
    expected: &'static str,
) -> PkiError {
    let origin = path.display().to_string();
    match source {
        rustls_pki_types::pem::Error::NoItemsFound => PkiError::NothingFound { origin, expected },
        source => PkiError::Pem { origin, source },
    }
}
