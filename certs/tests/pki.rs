//! The PKI against real verifiers: rustls/webpki with the ring provider, the
//! same stack the agent and aggregator use.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{CertificateError, RootCertStore};
use rustls_pki_types::{PrivateKeyDer, ServerName, UnixTime};
use sx_certs::{
    AggregatorRequest, CaOptions, CertKind, NODE_URI_PREFIX, NodeRequest, Pki, PkiError,
    RevokeTarget, Validity, inspect_der, inspect_pem, load_certs_pem, load_crls_pem, load_key_pem,
    load_signing_key,
};
use tempfile::TempDir;
use time::{Duration, OffsetDateTime};

const NODE: &str = "sx-rempart-2026-prod-1-node-42";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn new_pki() -> Result<(TempDir, Pki)> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::init(dir.path().join("pki"), &CaOptions::default())?;
    Ok((dir, pki))
}

fn node_request(node_id: &str) -> NodeRequest {
    NodeRequest::new(node_id, "souverix-rempart", "region-a", "edge-zone-a1")
}

fn roots(pki: &Pki) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs_pem(&pki.ca_path())? {
        roots.add(cert)?;
    }
    Ok(Arc::new(roots))
}

/// A client verifier trusting `pki`'s CA and honouring its current CRL.
fn client_verifier(pki: &Pki) -> Result<Arc<dyn ClientCertVerifier>> {
    Ok(
        WebPkiClientVerifier::builder_with_provider(roots(pki)?, provider())
            .with_crls(load_crls_pem(&pki.crl_path())?)
            .build()?,
    )
}

/// Verifies the first certificate of `cert_path` as a client certificate now.
fn verify_client(verifier: &dyn ClientCertVerifier, cert_path: &Path) -> Result<(), rustls::Error> {
    let certs = load_certs_pem(cert_path).map_err(|e| rustls::Error::General(e.to_string()))?;
    verifier
        .verify_client_cert(&certs[0], &[], UnixTime::now())
        .map(|_| ())
}

fn certificate_error(result: Result<(), rustls::Error>) -> Result<CertificateError> {
    match result {
        Err(rustls::Error::InvalidCertificate(e)) => Ok(e),
        other => bail!("expected a certificate error, got {other:?}"),
    }
}

fn mode(path: &Path) -> Result<u32> {
    Ok(fs::metadata(path)?.permissions().mode() & 0o777)
}

#[test]
fn node_certificate_verifies_and_carries_identity() -> Result<()> {
    let (_dir, pki) = new_pki()?;
    // Reopen from disk: signing goes through Issuer::from_ca_cert_pem.
    let pki = Pki::open(pki.root())?;
    let issued = pki.issue_node(&node_request(NODE))?;

    verify_client(&*client_verifier(&pki)?, &issued.cert_path)?;

    let info = inspect_pem(&issued.cert_pem)?
        .pop()
        .context("one certificate")?;
    assert_eq!(info.node_id.as_deref(), Some(NODE));
    assert_eq!(info.uris, vec![format!("{NODE_URI_PREFIX}{NODE}")]);
    assert_eq!(info.component_type.as_deref(), Some("souverix-rempart"));
    assert_eq!(info.region.as_deref(), Some("region-a"));
    assert_eq!(info.zone.as_deref(), Some("edge-zone-a1"));
    assert!(
        info.subject.contains(&format!("CN={NODE}")),
        "{}",
        info.subject
    );
    assert!(info.subject.contains("O=Souverix"), "{}", info.subject);
    assert!(
        info.issuer.contains("CN=souverix-autorite-root-ca"),
        "{}",
        info.issuer
    );
    assert!(!info.is_ca);
    assert_eq!(info.serial_hex, issued.serial_hex);
    assert_eq!(info.serial_hex.len(), 32, "16-byte serial");
    assert_eq!(info.fingerprint, issued.fingerprint);
    assert!(info.fingerprint.starts_with("sha256:"));

    // The key is PKCS#8 Ed25519, usable by rustls and by ed25519-dalek, and
    // it is the certificate's key.
    let key = load_key_pem(&issued.key_path)?;
    assert!(matches!(key, PrivateKeyDer::Pkcs8(_)));
    let rustls_key = provider().key_provider.load_private_key(key)?;
    assert_eq!(rustls_key.algorithm(), rustls::SignatureAlgorithm::ED25519);
    let signing_key = load_signing_key(&issued.key_path)?;
    assert_eq!(info.public_key.len(), 32);
    assert_eq!(
        signing_key.verifying_key().as_bytes().as_slice(),
        info.public_key
    );

    // chain.pem = leaf then CA.
    let chain = load_certs_pem(&issued.chain_path)?;
    assert_eq!(chain.len(), 2);
    assert_eq!(inspect_der(&chain[1])?, pki.ca_info()?);
    assert!(pki.ca_info()?.is_ca);

    // Recorded in the index.
    let index = pki.index()?;
    assert_eq!(index.len(), 1);
    assert_eq!(index[0].kind, CertKind::Node);
    assert_eq!(index[0].name, NODE);
    assert_eq!(index[0].serial_hex, issued.serial_hex);
    assert_eq!(index[0].fingerprint, issued.fingerprint);
    assert_eq!(index[0].not_after, info.not_after);
    assert!(!index[0].is_revoked());
    Ok(())
}

#[test]
fn revoked_node_is_in_the_crl_and_rejected() -> Result<()> {
    let (_dir, pki) = new_pki()?;
    let bad = pki.issue_node(&node_request("node-bad"))?;
    let good = pki.issue_node(&node_request("node-good"))?;
    let crl_number_before = crl_number(&pki)?;

    let entry = pki.revoke(RevokeTarget::Node("node-bad".into()), "key-compromise")?;
    assert_eq!(entry.serial_hex, bad.serial_hex);
    assert_eq!(entry.reason.as_deref(), Some("key-compromise"));
    assert!(entry.is_revoked());

    // The CRL lists exactly the revoked serial, with a higher CRL number.
    let crls = load_crls_pem(&pki.crl_path())?;
    assert_eq!(crls.len(), 1);
    let (_, crl) = x509_parser::parse_x509_crl(crls[0].as_ref())?;
    let serials: Vec<String> = crl
        .iter_revoked_certificates()
        .map(|r| hex::encode(r.raw_serial()))
        .collect();
    assert_eq!(serials, vec![bad.serial_hex.clone()]);
    assert!(crl_number(&pki)? > crl_number_before);
    // Signed by the CA.
    let ca = load_certs_pem(&pki.ca_path())?;
    let (_, ca) = x509_parser::parse_x509_certificate(ca[0].as_ref())?;
    crl.verify_signature(ca.public_key())?;

    let verifier = client_verifier(&pki)?;
    assert_eq!(
        certificate_error(verify_client(&*verifier, &bad.cert_path))?,
        CertificateError::Revoked
    );
    verify_client(&*verifier, &good.cert_path)?;

    // Revoking again is refused; unknown targets are refused.
    assert!(matches!(
        pki.revoke(
            RevokeTarget::Serial(bad.serial_hex.to_uppercase()),
            "superseded"
        ),
        Err(PkiError::AlreadyRevoked { .. })
    ));
    assert!(matches!(
        pki.revoke(RevokeTarget::Node("nobody".into()), "unspecified"),
        Err(PkiError::UnknownTarget { .. })
    ));
    assert!(matches!(
        pki.revoke(RevokeTarget::Node("node-good".into()), "because"),
        Err(PkiError::InvalidReason { .. })
    ));
    Ok(())
}

fn crl_number(pki: &Pki) -> Result<u64> {
    let crls = load_crls_pem(&pki.crl_path())?;
    let (_, crl) = x509_parser::parse_x509_crl(crls[0].as_ref())?;
    let number = crl.crl_number().context("CRL number present")?;
    Ok(u64::try_from(number.clone())?)
}

#[test]
fn crl_numbers_increase_on_every_publication() -> Result<()> {
    let (_dir, pki) = new_pki()?;
    let first = crl_number(&pki)?;
    pki.publish_crl(1)?;
    let second = crl_number(&pki)?;
    pki.publish_crl(90)?;
    let third = crl_number(&pki)?;
    assert!(first < second && second < third, "{first} {second} {third}");
    assert!(matches!(
        pki.publish_crl(0),
        Err(PkiError::InvalidValidity { .. })
    ));
    Ok(())
}

#[test]
fn revoking_a_name_revokes_every_certificate_issued_to_it() -> Result<()> {
    let (_dir, pki) = new_pki()?;
    let old = pki.issue_node(&node_request("node-1"))?;
    let mut again = node_request("node-1");
    again.force = true;
    let new = pki.issue_node(&again)?;
    assert_ne!(old.serial_hex, new.serial_hex);

    let entry = pki.revoke(RevokeTarget::Node("node-1".into()), "superseded")?;
    assert_eq!(entry.serial_hex, new.serial_hex, "the latest is returned");
    let index = pki.index()?;
    assert!(index.iter().all(|e| e.is_revoked()));

    let verifier = client_verifier(&pki)?;
    // The old certificate was overwritten on disk; check it from memory.
    for pem in [&old.cert_pem, &new.cert_pem] {
        let path = pki.root().join("check.pem");
        fs::write(&path, pem)?;
        assert_eq!(
            certificate_error(verify_client(&*verifier, &path))?,
            CertificateError::Revoked
        );
    }
    Ok(())
}

#[test]
fn key_files_are_private() -> Result<()> {
    let (_dir, pki) = new_pki()?;
    let node = pki.issue_node(&node_request("node-1"))?;
    let aggregator = pki.issue_aggregator(&AggregatorRequest::new("agg-a", "region-a"))?;
    let operator = pki.issue_operator("alice", Validity::days(30))?;
    for key in [
        pki.ca_key_path(),
        node.key_path,
        aggregator.key_path,
        operator.key_path,
    ] {
        assert_eq!(mode(&key)?, 0o600, "{}", key.display());
    }
    assert_eq!(mode(&pki.ca_dir())?, 0o700);
    assert_eq!(mode(&node.cert_path)?, 0o644);
    Ok(())
}

#[test]
fn init_refuses_to_overwrite_a_ca_without_force() -> Result<()> {
    let (_dir, pki) = new_pki()?;
    let before = pki.ca_cert_pem()?;
    pki.issue_node(&node_request("node-1"))?;

    let refused = Pki::init(pki.root(), &CaOptions::default());
    assert!(matches!(refused, Err(PkiError::CaExists { .. })));
    assert_eq!(pki.ca_cert_pem()?, before, "CA untouched");
    assert_eq!(pki.index()?.len(), 1, "index untouched");

    let forced = CaOptions {
        force: true,
        ..CaOptions::default()
    };
    let pki = Pki::init(pki.root(), &forced)?;
    assert_ne!(pki.ca_cert_pem()?, before, "new CA");
    assert!(pki.index()?.is_empty(), "fresh index");
    Ok(())
}

#[test]
fn open_needs_a_ca() -> Result<()> {
    let dir = tempfile::tempdir()?;
    assert!(matches!(
        Pki::open(dir.path()),
        Err(PkiError::CaMissing { .. })
    ));
    Ok(())
}

#[test]
fn invalid_names_are_rejected_and_nothing_is_written() -> Result<()> {
    let (_dir, pki) = new_pki()?;
    for bad in [
        "",
        "Node-1",
        "../escape",
        "a/b",
        "-x",
        "node 1",
        &"n".repeat(129),
    ] {
        let result = pki.issue_node(&node_request(bad));
        assert!(
            matches!(
                result,
                Err(PkiError::InvalidName {
                    what: "node id",
                    ..
                })
            ),
            "{bad:?}: {result:?}"
        );
    }
    let mut bad_zone = node_request("node-1");
    bad_zone.zone = "Zone A".into();
    assert!(matches!(
        pki.issue_node(&bad_zone),
        Err(PkiError::InvalidName { what: "zone", .. })
    ));
    assert!(pki.index()?.is_empty());
    assert!(!pki.root().join("nodes").exists());
    assert!(!pki.root().join("escape").exists());
    Ok(())
}

#[test]
fn existing_node_certificate_is_kept_without_force() -> Result<()> {
    let (_dir, pki) = new_pki()?;
    let first = pki.issue_node(&node_request("node-1"))?;
    let refused = pki.issue_node(&node_request("node-1"));
    assert!(matches!(
        refused,
        Err(PkiError::AlreadyIssued {
            kind: CertKind::Node,
            ..
        })
    ));
    assert_eq!(fs::read_to_string(&first.cert_path)?, first.cert_pem);
    assert_eq!(pki.index()?.len(), 1);
    Ok(())
}

#[test]
fn expired_certificate_is_rejected() -> Result<()> {
    let (_dir, pki) = new_pki()?;
    let now = OffsetDateTime::now_utc();
    let mut req = node_request("node-old");
    req.validity = Validity::between(now - Duration::days(30), now - Duration::days(1));
    let expired = pki.issue_node(&req)?;
    let info = inspect_pem(&expired.cert_pem)?.pop().context("cert")?;
    assert!(!info.is_valid_at(now.unix_timestamp()));

    let err = certificate_error(verify_client(&*client_verifier(&pki)?, &expired.cert_path))?;
    assert!(
        matches!(
            err,
            CertificateError::Expired | CertificateError::ExpiredContext { .. }
        ),
        "{err:?}"
    );

    let mut backwards = node_request("node-backwards");
    backwards.validity = Validity::between(now, now - Duration::days(1));
    assert!(matches!(
        pki.issue_node(&backwards),
        Err(PkiError::InvalidValidity { .. })
    ));
    Ok(())
}

#[test]
fn certificate_from_another_ca_is_rejected() -> Result<()> {
    let (_dir, pki) = new_pki()?;
    let verifier = client_verifier(&pki)?;

    // An unrelated CA.
    let other_dir = tempfile::tempdir()?;
    let other = Pki::init(
        other_dir.path(),
        &CaOptions {
            common_name: "some-other-ca".into(),
            ..CaOptions::default()
        },
    )?;
    let foreign = other.issue_node(&node_request(NODE))?;
    let err = certificate_error(verify_client(&*verifier, &foreign.cert_path))?;
    assert_eq!(err, CertificateError::UnknownIssuer);

    // An impostor CA with the very same name: found by name, fails the signature.
    let (_impostor_dir, impostor) = new_pki()?;
    let forged = impostor.issue_node(&node_request(NODE))?;
    let err = certificate_error(verify_client(&*verifier, &forged.cert_path))?;
    assert_eq!(err, CertificateError::BadSignature);
    Ok(())
}

#[test]
fn aggregator_certificate_serves_its_names_only() -> Result<()> {
    let (_dir, pki) = new_pki()?;
    let mut req = AggregatorRequest::new("agg-a", "region-a");
    req.dns_names.push("aggregator.region-a.example".into());
    let issued = pki.issue_aggregator(&req)?;
    let info = inspect_pem(&issued.cert_pem)?.pop().context("cert")?;
    assert_eq!(info.aggregator_name(), Some("agg-a"));
    assert_eq!(info.node_id, None, "an aggregator is not a node");
    assert_eq!(info.region.as_deref(), Some("region-a"));
    assert_eq!(info.dns, vec!["localhost", "aggregator.region-a.example"]);
    assert_eq!(info.ips, vec!["127.0.0.1"]);

    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots(&pki)?, provider())
            .with_crls(load_crls_pem(&pki.crl_path())?)
            .build()?;
    let certs = load_certs_pem(&issued.cert_path)?;
    for name in ["localhost", "aggregator.region-a.example", "127.0.0.1"] {
        verifier
            .verify_server_cert(
                &certs[0],
                &[],
                &ServerName::try_from(name)?,
                &[],
                UnixTime::now(),
            )
            .with_context(|| format!("server name {name}"))?;
    }
    let wrong = verifier
        .verify_server_cert(
            &certs[0],
            &[],
            &ServerName::try_from("evil.example")?,
            &[],
            UnixTime::now(),
        )
        .map(|_| ());
    assert!(matches!(
        certificate_error(wrong)?,
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
    ));

    // A node certificate is not a server certificate (EKU clientAuth only).
    let node = pki.issue_node(&node_request("node-1"))?;
    let node_certs = load_certs_pem(&node.cert_path)?;
    let misuse = verifier
        .verify_server_cert(
            &node_certs[0],
            &[],
            &ServerName::try_from("localhost")?,
            &[],
            UnixTime::now(),
        )
        .map(|_| ());
    assert!(certificate_error(misuse).is_ok());

    let mut nameless = AggregatorRequest::new("agg-b", "region-a");
    nameless.dns_names.clear();
    nameless.ip_addresses.clear();
    assert!(matches!(
        pki.issue_aggregator(&nameless),
        Err(PkiError::MissingServerName { .. })
    ));
    Ok(())
}

#[test]
fn operator_certificate_is_a_client_certificate() -> Result<()> {
    let (_dir, pki) = new_pki()?;
    let issued = pki.issue_operator("alice", Validity::days(30))?;
    verify_client(&*client_verifier(&pki)?, &issued.cert_path)?;
    let info = inspect_pem(&issued.cert_pem)?.pop().context("cert")?;
    assert_eq!(info.operator_name(), Some("alice"));
    assert_eq!(info.node_id, None);
    assert!(issued.cert_path.starts_with(pki.operator_dir("alice")));

    assert!(matches!(
        pki.issue_operator("alice", Validity::days(30)),
        Err(PkiError::AlreadyIssued { .. })
    ));
    let again = pki.issue_operator_forced("alice", Validity::days(30))?;
    assert_ne!(again.serial_hex, issued.serial_hex);

    let aggregator = pki.issue_aggregator(&AggregatorRequest::new("agg-a", "region-a"))?;
    // An aggregator certificate is not a client certificate (EKU serverAuth only).
    assert!(
        certificate_error(verify_client(
            &*client_verifier(&pki)?,
            &aggregator.cert_path
        ))
        .is_ok()
    );
    Ok(())
}

/// A full TLS 1.3 handshake in memory: the aggregator's server certificate
/// against the node's client certificate, both Ed25519; the server learns the
/// node id from the peer certificate.
#[test]
fn mutual_tls_handshake_identifies_the_node() -> Result<()> {
    let (_dir, pki) = new_pki()?;
    let node = pki.issue_node(&node_request(NODE))?;
    let aggregator = pki.issue_aggregator(&AggregatorRequest::new("agg-a", "region-a"))?;

    let server_config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(client_verifier(&pki)?)
        .with_single_cert(
            load_certs_pem(&aggregator.chain_path)?,
            load_key_pem(&aggregator.key_path)?,
        )?;
    let client_config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(&pki)?)
        .with_client_auth_cert(
            load_certs_pem(&node.chain_path)?,
            load_key_pem(&node.key_path)?,
        )?;

    let mut client =
        rustls::ClientConnection::new(Arc::new(client_config), ServerName::try_from("localhost")?)?;
    let mut server = rustls::ServerConnection::new(Arc::new(server_config))?;
    for _ in 0..10 {
        if !client.is_handshaking() && !server.is_handshaking() {
            break;
        }
        let mut buf = Vec::new();
        client.write_tls(&mut buf)?;
        server.read_tls(&mut buf.as_slice())?;
        server.process_new_packets()?;
        let mut buf = Vec::new();
        server.write_tls(&mut buf)?;
        client.read_tls(&mut buf.as_slice())?;
        client.process_new_packets()?;
    }
    assert!(!client.is_handshaking() && !server.is_handshaking());
    let peer = server
        .peer_certificates()
        .context("client presented a certificate")?;
    assert_eq!(inspect_der(&peer[0])?.node_id.as_deref(), Some(NODE));
    Ok(())
}
