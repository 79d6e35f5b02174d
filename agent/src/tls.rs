//! TLS for the uplink: the node certificate as client identity, the fleet
//! CA as the only trust anchor, TLS 1.3, no 0-RTT.

use anyhow::{Context, Result};
use std::path::Path;
use std::sync::Arc;

/// ALPN of the sync protocol (must match the aggregator's).
pub const ALPN: &[u8] = b"souverix-sync/1";

/// The quinn client configuration for a node.
pub fn quic_client_config(
    cert: &Path,
    key: &Path,
    ca: &Path,
    idle_timeout: std::time::Duration,
) -> Result<quinn::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in sx_certs::load_certs_pem(ca).context("fleet CA")? {
        roots.add(c).context("fleet CA certificate")?;
    }
    let chain = sx_certs::load_certs_pem(cert).context("node certificate")?;
    let key = sx_certs::load_key_pem(key).context("node key")?;
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
