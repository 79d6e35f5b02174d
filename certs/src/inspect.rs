//! Reading an identity back out of a certificate.
//!
//! [`inspect_der`] is what the aggregator runs on a peer's (already verified)
//! client certificate and what the agent runs on its own certificate at
//! start-up. It takes untrusted bytes: it never panics, and it refuses
//! certificates whose Souverix identity is ambiguous (two node URIs, two OUs
//! ...), so a caller never has to pick one.
//!
//! Parsing is not verification: `inspect_der` checks no signature, no
//! validity period and no revocation. Verify the chain with rustls/webpki
//! against [`crate::Pki::ca_path`] and [`crate::Pki::crl_path`] first.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::x509::AttributeTypeAndValue;

use crate::identity::{
    AGGREGATOR_URI_PREFIX, NODE_URI_PREFIX, OPERATOR_URI_PREFIX, name_from_uris,
};
use crate::layout::read_text;
use crate::{IndexEntry, Pki, PkiError};

/// What a certificate says, parsed from its DER.
///
/// Invariants (guaranteed by [`inspect_der`]): `node_id`, when present, is
/// the single `urn:souverix:node:` URI SAN and satisfies the node id syntax;
/// `component_type`, `region` and `zone` come from the single OU, ST and L
/// subject attributes respectively; `serial_hex` uses the same spelling as
/// the index ([`IndexEntry::serial_hex`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertInfo {
    /// Subject DN, e.g. `CN=n1, O=Souverix, OU=souverix-rempart, ...`.
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// Serial number, lower-case hex, no separators, no leading zero bytes.
    pub serial_hex: String,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
    /// `sha256:<hex>` over the whole certificate DER.
    pub fingerprint: String,
    /// URI SANs, in certificate order.
    pub uris: Vec<String>,
    /// DNS SANs, in certificate order.
    pub dns: Vec<String>,
    /// IP SANs, formatted as addresses.
    pub ips: Vec<String>,
    /// The node id from the `urn:souverix:node:` URI SAN.
    pub node_id: Option<String>,
    /// Subject OU: the component type, e.g. `souverix-rempart`.
    pub component_type: Option<String>,
    /// Subject ST: the region, e.g. `region-a`.
    pub region: Option<String>,
    /// Subject L: the zone, e.g. `edge-zone-a1`.
    pub zone: Option<String>,
    /// The raw subject public key (the BIT STRING content of the
    /// SubjectPublicKeyInfo): 32 bytes for Ed25519.
    #[serde(with = "hex_bytes")]
    pub public_key: Vec<u8>,
    /// Whether basicConstraints says this is a CA.
    pub is_ca: bool,
}

impl CertInfo {
    /// The aggregator name from a `urn:souverix:aggregator:` URI SAN.
    ///
    /// `inspect_der` already rejected certificates with several such URIs or
    /// a malformed name, so the first match is the only one.
    pub fn aggregator_name(&self) -> Option<&str> {
        self.uris
            .iter()
            .find_map(|u| u.strip_prefix(AGGREGATOR_URI_PREFIX))
    }

    /// The operator name from a `urn:souverix:operator:` URI SAN (see
    /// [`CertInfo::aggregator_name`] for why the first match is the one).
    pub fn operator_name(&self) -> Option<&str> {
        self.uris
            .iter()
            .find_map(|u| u.strip_prefix(OPERATOR_URI_PREFIX))
    }

    /// Whether `now` (Unix seconds) lies within the validity period.
    pub fn is_valid_at(&self, now: i64) -> bool {
        self.not_before <= now && now <= self.not_after
    }
}

impl fmt::Display for CertInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
        let list = |v: &[String]| {
            if v.is_empty() {
                "-".to_owned()
            } else {
                v.join(", ")
            }
        };
        writeln!(f, "subject:     {}", self.subject)?;
        writeln!(f, "issuer:      {}", self.issuer)?;
        writeln!(f, "serial:      {}", self.serial_hex)?;
        writeln!(f, "not before:  {}", format_unix(self.not_before))?;
        writeln!(f, "not after:   {}", format_unix(self.not_after))?;
        writeln!(f, "is CA:       {}", self.is_ca)?;
        writeln!(f, "URIs:        {}", list(&self.uris))?;
        writeln!(f, "DNS names:   {}", list(&self.dns))?;
        writeln!(f, "IPs:         {}", list(&self.ips))?;
        writeln!(f, "node id:     {}", opt(&self.node_id))?;
        writeln!(f, "component:   {}", opt(&self.component_type))?;
        writeln!(f, "region:      {}", opt(&self.region))?;
        writeln!(f, "zone:        {}", opt(&self.zone))?;
        writeln!(f, "public key:  {}", hex::encode(&self.public_key))?;
        write!(f, "fingerprint: {}", self.fingerprint)
    }
}

/// Parses one DER certificate (untrusted input) into a [`CertInfo`].
///
/// Fails on trailing bytes, on malformed extensions, and on ambiguous or
/// malformed Souverix identity fields.
pub fn inspect_der(der: &[u8]) -> Result<CertInfo, PkiError> {
    let parse_err = |detail: String| PkiError::Parse {
        what: "certificate",
        detail,
    };
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| parse_err(e.to_string()))?;
    if !rest.is_empty() {
        return Err(parse_err(format!("{} trailing bytes", rest.len())));
    }

    let mut uris = Vec::new();
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    let san = cert
        .subject_alternative_name()
        .map_err(|e| parse_err(format!("subjectAltName: {e}")))?;
    for name in san.iter().flat_map(|ext| ext.value.general_names.iter()) {
        match name {
            GeneralName::URI(uri) => uris.push((*uri).to_owned()),
            GeneralName::DNSName(host) => dns.push((*host).to_owned()),
            GeneralName::IPAddress(bytes) => ips.push(format_ip(bytes)),
            _ => {}
        }
    }
    // Checks the other identity URIs for ambiguity too; only the node id is
    // kept as a field.
    name_from_uris("aggregator name", AGGREGATOR_URI_PREFIX, &uris)?;
    name_from_uris("operator name", OPERATOR_URI_PREFIX, &uris)?;
    let node_id = name_from_uris("node id", NODE_URI_PREFIX, &uris)?;

    let subject = cert.subject();
    let component_type = single_attribute("OU", subject.iter_organizational_unit())?;
    let region = single_attribute("ST", subject.iter_state_or_province())?;
    let zone = single_attribute("L", subject.iter_locality())?;

    Ok(CertInfo {
        subject: subject.to_string(),
        issuer: cert.issuer().to_string(),
        serial_hex: serial_to_hex(cert.raw_serial()),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        fingerprint: fingerprint(der),
        uris,
        dns,
        ips,
        node_id,
        component_type,
        region,
        zone,
        public_key: cert.public_key().subject_public_key.data.to_vec(),
        is_ca: cert.is_ca(),
    })
}

/// Parses every `CERTIFICATE` block of a PEM document, in order.
///
/// Fails if the PEM is malformed, holds no certificate, or any certificate
/// fails [`inspect_der`].
pub fn inspect_pem(pem: &str) -> Result<Vec<CertInfo>, PkiError> {
    let ders = certs_from_pem(pem.as_bytes(), "input")?;
    ders.iter().map(|der| inspect_der(der)).collect()
}

/// A certificate together with what the CA's index says about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inspection {
    /// What the certificate says.
    #[serde(flatten)]
    pub info: CertInfo,
    /// What the index says.
    pub status: CertStatus,
}

/// The revocation state of a certificate as far as a PKI's index knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum CertStatus {
    /// No PKI was given, or its index does not list this serial (e.g. the CA
    /// certificate itself, or a certificate from another CA).
    Unknown,
    /// Issued by this CA and not revoked.
    Good,
    /// Issued by this CA and revoked.
    Revoked {
        /// When, Unix seconds.
        revoked_at: i64,
        /// RFC 5280 reason name.
        reason: String,
    },
}

impl CertStatus {
    fn from_entry(entry: Option<&IndexEntry>) -> CertStatus {
        match entry {
            None => CertStatus::Unknown,
            Some(IndexEntry {
                revoked_at: Some(at),
                reason,
                ..
            }) => CertStatus::Revoked {
                revoked_at: *at,
                reason: reason.clone().unwrap_or_else(|| "unspecified".to_owned()),
            },
            Some(_) => CertStatus::Good,
        }
    }
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.info)?;
        match &self.status {
            CertStatus::Unknown => write!(f, "revoked:     unknown (not in the index)"),
            CertStatus::Good => write!(f, "revoked:     no"),
            CertStatus::Revoked { revoked_at, reason } => write!(
                f,
                "revoked:     yes, {} ({reason})",
                format_unix(*revoked_at)
            ),
        }
    }
}

/// Inspects every certificate in a PEM file and looks each one up in `pki`'s
/// index (if a PKI is given) to report its revocation state.
pub fn inspect_file(path: &Path, pki: Option<&Pki>) -> Result<Vec<Inspection>, PkiError> {
    let pem = read_text(path)?;
    let ders = certs_from_pem(pem.as_bytes(), &path.display().to_string())?;
    let index = match pki {
        Some(pki) => pki.index()?,
        None => Vec::new(),
    };
    ders.iter()
        .map(|der| {
            let info = inspect_der(der)?;
            let entry = index.iter().find(|e| e.serial_hex == info.serial_hex);
            let status = CertStatus::from_entry(entry);
            Ok(Inspection { info, status })
        })
        .collect()
}

/// All `CERTIFICATE` blocks of a PEM document; at least one.
pub(crate) fn certs_from_pem(
    pem: &[u8],
    origin: &str,
) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| PkiError::Pem {
            origin: origin.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(PkiError::NothingFound {
            origin: origin.to_owned(),
            expected: "CERTIFICATE",
        });
    }
    Ok(certs)
}

/// `sha256:<hex>` over `der`.
pub fn fingerprint(der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(der)))
}

/// Hex of a DER INTEGER's content bytes, minus the sign-padding zero bytes.
pub(crate) fn serial_to_hex(raw: &[u8]) -> String {
    let first_non_zero = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    let trimmed = &raw[first_non_zero.min(raw.len().saturating_sub(1))..];
    hex::encode(trimmed)
}

/// Formats Unix seconds as RFC 3339 (falls back to the number if out of range).
pub(crate) fn format_unix(secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| secs.to_string())
}

fn format_ip(bytes: &[u8]) -> String {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        IpAddr::V4(Ipv4Addr::from(v4)).to_string()
    } else if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
        IpAddr::V6(Ipv6Addr::from(v6)).to_string()
    } else {
        format!("invalid:{}", hex::encode(bytes))
    }
}

/// The value of a subject attribute that must appear at most once, since it
/// is an identity field.
fn single_attribute<'a, 'b: 'a>(
    label: &'static str,
    mut values: impl Iterator<Item = &'a AttributeTypeAndValue<'b>>,
) -> Result<Option<String>, PkiError> {
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(PkiError::Parse {
            what: "certificate identity",
            detail: format!("more than one {label} attribute in the subject"),
        });
    }
    let value = first.as_str().map_err(|e| PkiError::Parse {
        what: "certificate identity",
        detail: format!("{label} attribute: {e}"),
    })?;
    Ok(Some(value.to_owned()))
}

/// Serialises bytes as a hex string (for `public_key` in JSON).
mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        hex::decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_hex_drops_sign_padding_only() {
        assert_eq!(serial_to_hex(&[0x00, 0x80, 0x01]), "8001");
        assert_eq!(serial_to_hex(&[0x7f, 0x00]), "7f00");
        assert_eq!(serial_to_hex(&[0x00]), "00");
        assert_eq!(serial_to_hex(&[]), "");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for input in [&b""[..], b"\x30", b"\x30\x03\x02\x01\x01", &[0xff; 64]] {
            assert!(matches!(
                inspect_der(input),
                Err(PkiError::Parse {
                    what: "certificate",
                    ..
                })
            ));
        }
    }

    #[test]
    fn pem_without_certificate_is_refused() {
        let err = inspect_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
            .expect_err("no certificate");
        assert!(matches!(
            err,
            PkiError::NothingFound {
                expected: "CERTIFICATE",
                ..
            }
        ));
    }

    #[test]
    fn ip_formatting() {
        assert_eq!(format_ip(&[127, 0, 0, 1]), "127.0.0.1");
        assert_eq!(format_ip(&[0; 16]), "::");
        assert_eq!(format_ip(&[1, 2]), "invalid:0102");
    }
}
