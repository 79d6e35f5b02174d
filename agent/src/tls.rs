//! TLS for the uplink: the node certificate as client identity, the fleet
//! CA as the only trust anchor, TLS 1.3, no 0-RTT.

use anyhow::{Context, Result, anyhow};
use ed25519_dalek::VerifyingKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// ALPN of the sync protocol (must match the aggregator's).
pub const ALPN: &[u8] = b"souverix-sync/1";

/// A node's TLS identity held in memory: its certificate chain and key as
/// PEM, and the certificate's Ed25519 public key. The running agent keeps
/// them in memory so a certificate rotation swaps them in one step (the
/// uplink never builds a session from a half-installed pair of files).
#[derive(Clone)]
pub struct Credentials {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    public_key: VerifyingKey,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Credentials")
            .field("public_key", &self.public_key)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Reads a certificate file and a key file.
    pub fn load(cert: &Path, key: &Path) -> Result<Self> {
        let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        Credentials::from_pem(&read(cert)?, &read(key)?)
    }

    /// From PEM bytes: the chain (leaf first) and its PKCS#8 key; checks
    /// that both parse and the leaf carries an Ed25519 key.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self> {
        let (chain, _) = parse_pem(cert_pem, key_pem)?;
        let leaf = chain.first().ok_or_else(|| anyhow!("no certificate"))?;
        let info = sx_certs::inspect_der(leaf).context("node certificate")?;
        let key = <[u8; 32]>::try_from(info.public_key.as_slice())
            .map_err(|_| anyhow!("the node certificate's key is not Ed25519"))?;
        Ok(Credentials {
            cert_pem: cert_pem.to_vec(),
            key_pem: key_pem.to_vec(),
            public_key: VerifyingKey::from_bytes(&key).context("node certificate key")?,
        })
    }

    /// The certificate's public key: the key the aggregator verifies this
    /// node's batches against in a session using these credentials.
    pub fn public_key(&self) -> VerifyingKey {
        self.public_key
    }
}

fn parse_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .context("node certificate PEM")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).context("node key PEM")?;
    Ok((chain, key))
}

/// The quinn client configuration for a node.
pub fn quic_client_config(
    credentials: &Credentials,
    ca: &Path,
    idle_timeout: std::time::Duration,
) -> Result<quinn::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in sx_certs::load_certs_pem(ca).context("fleet CA")? {
        roots.add(c).context("fleet CA certificate")?;
    }
    let (chain, key) = parse_pem(&credentials.cert_pem, &credentials.key_pem)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3")?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .context("node certificate and key")?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.enable_early_data = false;
    let quic =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).context("QUIC TLS configuration")?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(quinn::IdleTimeout::try_from(idle_timeout).ok());
    transport.keep_alive_interval(Some(idle_timeout / 3));
    transport.stream_receive_window(quinn::VarInt::from_u32(4 << 20));
    transport.send_window(32 << 20);
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}
