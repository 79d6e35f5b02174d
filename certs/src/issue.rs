//! Issuing leaf certificates: nodes, aggregators and operators.
//!
//! Every leaf gets a fresh Ed25519 key, a random 16-byte serial, key usage
//! digitalSignature, basicConstraints `CA:false`, an authority key
//! identifier, and a subject `CN=<name>, O=Souverix, ...`:
//!
//! | kind       | URI SAN                          | subject extras             | EKU        |
//! |------------|----------------------------------|----------------------------|------------|
//! | node       | `urn:souverix:node:<id>`         | OU=component ST=region L=zone | clientAuth |
//! | aggregator | `urn:souverix:aggregator:<name>` + DNS/IP SANs | OU=souverix-aggregator ST=region | serverAuth |
//! | operator   | `urn:souverix:operator:<name>`   | OU=souverix-operator       | clientAuth |
//!
//! The sequence is: validate, take the index lock, sign, record in the index,
//! then write key (0600), certificate and chain. So the CA never signs a
//! certificate it does not know about.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use rcgen::string::Ia5String;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PKCS_ED25519, SanType,
};
use serde::Serialize;
use time::{Duration, OffsetDateTime};

use crate::ca::random_serial;
use crate::identity::{
    AGGREGATOR_UNIT, OPERATOR_UNIT, ORGANIZATION, aggregator_uri, node_uri, operator_uri,
    validate_name,
};
use crate::index::IndexFile;
use crate::inspect::inspect_der;
use crate::layout::{
    CERT_FILE, CHAIN_FILE, KEY_FILE, KEY_MODE, PUBLIC_MODE, create_dir, write_atomic,
};
use crate::{CertKind, IndexEntry, Pki, PkiError};

/// Default lifetime of node, aggregator and operator certificates, in days.
pub const DEFAULT_LEAF_DAYS: u32 = 180;

/// How far [`Validity::days`] backdates `not_before`, to tolerate peers whose
/// clocks run a little behind the CA's.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::minutes(5);

/// A certificate's validity period.
///
/// Issuing checks `not_before < not_after` ([`PkiError::InvalidValidity`]
/// otherwise); both ends may lie in the past, e.g. to make an expired
/// certificate for a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From now (minus [`CLOCK_SKEW_ALLOWANCE`]) for `days` days.
    pub fn days(days: u32) -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - CLOCK_SKEW_ALLOWANCE,
            not_after: now + Duration::days(i64::from(days)),
        }
    }

    /// An explicit period.
    pub fn between(not_before: OffsetDateTime, not_after: OffsetDateTime) -> Validity {
        Validity {
            not_before,
            not_after,
        }
    }

    /// Fails unless the period is non-empty and inside what X.509 can encode.
    pub(crate) fn check(&self) -> Result<(), PkiError> {
        if self.not_before >= self.not_after {
            return Err(PkiError::InvalidValidity {
                detail: format!(
                    "not_before ({}) must be before not_after ({})",
                    self.not_before, self.not_after
                ),
            });
        }
        for t in [self.not_before, self.not_after] {
            if !(0..=9999).contains(&t.year()) {
                return Err(PkiError::InvalidValidity {
                    detail: format!("{t} is outside years 0..=9999"),
                });
            }
        }
        Ok(())
    }
}

/// A request for a node certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRequest {
    /// Node id (`^[a-z0-9][a-z0-9.-]{0,127}$`); becomes CN and the URI SAN.
    pub node_id: String,
    /// Component type, e.g. `souverix-rempart`; becomes OU.
    pub component_type: String,
    /// Region, e.g. `region-a`; becomes ST.
    pub region: String,
    /// Zone, e.g. `edge-zone-a1`; becomes L.
    pub zone: String,
    /// Validity period.
    pub validity: Validity,
    /// Replace an existing certificate for this node. The old certificate is
    /// not revoked: it stays valid until it expires or is revoked by serial.
    pub force: bool,
}

impl NodeRequest {
    /// A request valid for [`DEFAULT_LEAF_DAYS`] from now, not forcing.
    pub fn new(
        node_id: impl Into<String>,
        component_type: impl Into<String>,
        region: impl Into<String>,
        zone: impl Into<String>,
    ) -> NodeRequest {
        NodeRequest {
            node_id: node_id.into(),
            component_type: component_type.into(),
            region: region.into(),
            zone: zone.into(),
            validity: Validity::days(DEFAULT_LEAF_DAYS),
            force: false,
        }
    }
}

/// A request for an aggregator (TLS server) certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregatorRequest {
    /// Aggregator name; becomes CN and the URI SAN.
    pub name: String,
    /// Region the aggregator serves; becomes ST.
    pub region: String,
    /// DNS SANs clients may connect by.
    pub dns_names: Vec<String>,
    /// IP SANs clients may connect by.
    pub ip_addresses: Vec<IpAddr>,
    /// Validity period.
    pub validity: Validity,
    /// Replace an existing certificate for this aggregator.
    pub force: bool,
}

impl AggregatorRequest {
    /// A request for `localhost` and `127.0.0.1`, valid for
    /// [`DEFAULT_LEAF_DAYS`] from now, not forcing.
    pub fn new(name: impl Into<String>, region: impl Into<String>) -> AggregatorRequest {
        AggregatorRequest {
            name: name.into(),
            region: region.into(),
            dns_names: vec!["localhost".to_owned()],
            ip_addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            validity: Validity::days(DEFAULT_LEAF_DAYS),
            force: false,
        }
    }
}

/// A freshly issued certificate and where its files are.
///
/// `Debug` leaves out the private key; `Serialize` (for `--json`) too.
#[derive(Clone, Serialize)]
pub struct IssuedCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    #[serde(skip)]
    pub key_pem: String,
    /// `<dir>/cert.pem`.
    pub cert_path: PathBuf,
    /// `<dir>/key.pem`, mode 0600.
    pub key_path: PathBuf,
    /// `<dir>/chain.pem`: the certificate followed by the CA certificate.
    pub chain_path: PathBuf,
    /// Serial, same spelling as [`IndexEntry::serial_hex`].
    pub serial_hex: String,
    /// `sha256:<hex>` over the certificate DER.
    pub fingerprint: String,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .field("chain_path", &self.chain_path)
            .field("serial_hex", &self.serial_hex)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "serial:      {}", self.serial_hex)?;
        writeln!(f, "fingerprint: {}", self.fingerprint)?;
        writeln!(f, "certificate: {}", self.cert_path.display())?;
        writeln!(f, "key:         {}", self.key_path.display())?;
        write!(f, "chain:       {}", self.chain_path.display())
    }
}

/// Everything that differs between the three kinds of leaf.
struct LeafSpec {
    kind: CertKind,
    name: String,
    subject: DistinguishedName,
    sans: Vec<SanType>,
    purpose: ExtendedKeyUsagePurpose,
    validity: Validity,
    force: bool,
}

impl Pki {
    /// Issues a node certificate into `nodes/<node-id>/` (see the module
    /// doc for its profile).
    pub fn issue_node(&self, req: &NodeRequest) -> Result<IssuedCert, PkiError> {
        validate_name("node id", &req.node_id)?;
        validate_name("component type", &req.component_type)?;
        validate_name("region", &req.region)?;
        validate_name("zone", &req.zone)?;
        let mut subject = base_subject(&req.node_id);
        subject.push(DnType::OrganizationalUnitName, req.component_type.as_str());
        subject.push(DnType::StateOrProvinceName, req.region.as_str());
        subject.push(DnType::LocalityName, req.zone.as_str());
        self.issue_leaf(LeafSpec {
            kind: CertKind::Node,
            name: req.node_id.clone(),
            subject,
            sans: vec![uri_san(node_uri(&req.node_id))?],
            purpose: ExtendedKeyUsagePurpose::ClientAuth,
            validity: req.validity,
            force: req.force,
        })
    }

    /// Issues an aggregator server certificate into `aggregators/<name>/`.
    ///
    /// Fails with [`PkiError::MissingServerName`] if the request names no
    /// DNS name and no IP address.
    pub fn issue_aggregator(&self, req: &AggregatorRequest) -> Result<IssuedCert, PkiError> {
        validate_name("aggregator name", &req.name)?;
        validate_name("region", &req.region)?;
        if req.dns_names.is_empty() && req.ip_addresses.is_empty() {
            return Err(PkiError::MissingServerName {
                name: req.name.clone(),
            });
        }
        let mut sans = vec![uri_san(aggregator_uri(&req.name))?];
        for dns in &req.dns_names {
            sans.push(dns_san(dns)?);
        }
        sans.extend(req.ip_addresses.iter().copied().map(SanType::IpAddress));
        let mut subject = base_subject(&req.name);
        subject.push(DnType::OrganizationalUnitName, AGGREGATOR_UNIT);
        subject.push(DnType::StateOrProvinceName, req.region.as_str());
        self.issue_leaf(LeafSpec {
            kind: CertKind::Aggregator,
            name: req.name.clone(),
            subject,
            sans,
            purpose: ExtendedKeyUsagePurpose::ServerAuth,
            validity: req.validity,
            force: req.force,
        })
    }

    /// Issues an operator client certificate into `operators/<name>/`,
    /// refusing to replace an existing one (see
    /// [`Pki::issue_operator_forced`]).
    pub fn issue_operator(&self, name: &str, validity: Validity) -> Result<IssuedCert, PkiError> {
        self.issue_operator_with(name, validity, false)
    }

    /// Like [`Pki::issue_operator`] but replaces an existing certificate (the
    /// old one is not revoked).
    pub fn issue_operator_forced(
        &self,
        name: &str,
        validity: Validity,
    ) -> Result<IssuedCert, PkiError> {
        self.issue_operator_with(name, validity, true)
    }

    fn issue_operator_with(
        &self,
        name: &str,
        validity: Validity,
        force: bool,
    ) -> Result<IssuedCert, PkiError> {
        validate_name("operator name", name)?;
        let mut subject = base_subject(name);
        subject.push(DnType::OrganizationalUnitName, OPERATOR_UNIT);
        self.issue_leaf(LeafSpec {
            kind: CertKind::Operator,
            name: name.to_owned(),
            subject,
            sans: vec![uri_san(operator_uri(name))?],
            purpose: ExtendedKeyUsagePurpose::ClientAuth,
            validity,
            force,
        })
    }

    fn issue_leaf(&self, spec: LeafSpec) -> Result<IssuedCert, PkiError> {
        spec.validity.check()?;
        let dir = self.leaf_dir(spec.kind, &spec.name);
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        let chain_path = dir.join(CHAIN_FILE);

        let _lock = self.lock()?;
        if !spec.force && (cert_path.exists() || key_path.exists()) {
            return Err(PkiError::AlreadyIssued {
                kind: spec.kind,
                name: spec.name,
                path: cert_path,
            });
        }
        let issuer = self.issuer()?;
        let ca_pem = self.ca_cert_pem()?;

        let key = KeyPair::generate_for(&PKCS_ED25519)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = spec.subject;
        params.subject_alt_names = spec.sans;
        params.serial_number = Some(random_serial());
        params.not_before = spec.validity.not_before;
        params.not_after = spec.validity.not_after;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![spec.purpose];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &issuer)?;

        // Read the facts back from what was actually signed.
        let info = inspect_der(cert.der())?;
        let index_path = self.index_path();
        let mut index = IndexFile::load(&index_path)?;
        index.certs.push(IndexEntry {
            serial_hex: info.serial_hex.clone(),
            kind: spec.kind,
            name: spec.name,
            not_before: info.not_before,
            not_after: info.not_after,
            fingerprint: info.fingerprint.clone(),
            revoked_at: None,
            reason: None,
        });
        index.store(&index_path)?;

        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        create_dir(&dir)?;
        write_atomic(&key_path, key_pem.as_bytes(), KEY_MODE)?;
        write_atomic(&cert_path, cert_pem.as_bytes(), PUBLIC_MODE)?;
        let chain = format!("{cert_pem}{ca_pem}");
        write_atomic(&chain_path, chain.as_bytes(), PUBLIC_MODE)?;

        Ok(IssuedCert {
            cert_pem,
            key_pem,
            cert_path,
            key_path,
            chain_path,
            serial_hex: info.serial_hex,
            fingerprint: info.fingerprint,
        })
    }
}

fn base_subject(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn
}

fn uri_san(uri: String) -> Result<SanType, PkiError> {
    Ok(SanType::URI(Ia5String::try_from(uri)?))
}

fn dns_san(name: &str) -> Result<SanType, PkiError> {
    let invalid = |reason| PkiError::InvalidName {
        what: "DNS name",
        value: name.to_owned(),
        reason,
    };
    // Same rules rustls applies when a client names the server.
    rustls_pki_types::DnsName::try_from(name).map_err(|_| invalid("not a valid DNS name"))?;
    if name.parse::<IpAddr>().is_ok() {
        return Err(invalid("is an IP address; pass it as an IP SAN"));
    }
    Ok(SanType::DnsName(Ia5String::try_from(name)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_must_be_a_forward_period() {
        let now = OffsetDateTime::now_utc();
        assert!(Validity::between(now, now).check().is_err());
        assert!(
            Validity::between(now, now - Duration::seconds(1))
                .check()
                .is_err()
        );
        assert!(
            Validity::days(0).check().is_ok(),
            "backdating keeps days(0) non-empty"
        );
        assert!(Validity::days(1).check().is_ok());
    }

    #[test]
    fn dns_sans_are_checked() {
        assert!(dns_san("aggregator.region-a.example").is_ok());
        assert!(dns_san("localhost").is_ok());
        for bad in ["", "has space", "127.0.0.1", "-x..y"] {
            assert!(dns_san(bad).is_err(), "{bad:?}");
        }
    }
}
