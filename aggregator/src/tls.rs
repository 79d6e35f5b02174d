//! TLS for the QUIC ingest: TLS 1.3 only, a client certificate chained to
//! the fleet CA and not on its CRL is required, 0-RTT off.

use anyhow::{Context, Result};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use std::path::Path;
use std::sync::Arc;

/// ALPN of the sync protocol.
pub const ALPN: &[u8] = b"souverix-sync/1";

/// Paths of the aggregator's TLS material.
#[derive(Clone, Debug)]
pub struct TlsPaths<'a> {
    pub cert_chain: &'a Path,
    pub key: &'a Path,
    pub ca: &'a Path,
    pub crl: Option<&'a Path>,
}

/// Builds the rustls server configuration.
pub fn server_config(paths: &TlsPaths<'_>) -> Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for ca in sx_certs::load_certs_pem(paths.ca).context("fleet CA")? {
        roots.add(ca).context("fleet CA certificate")?;
    }
    let crls = match paths.crl {
        Some(p) if p.exists() => sx_certs::load_crls_pem(p).context("CRL")?,
        _ => Vec::new(),
    };
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .with_crls(crls)
        .build()
        .context("client certificate verifier")?;
    let chain = sx_certs::load_certs_pem(paths.cert_chain).context("aggregator certificate")?;
    let key = sx_certs::load_key_pem(paths.key).context("aggregator key")?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .context("aggregator certificate and key")?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    cfg.max_early_data_size = 0;
    Ok(cfg)
}

/// The QUIC transport settings shared by both ends: generous flow-control
/// windows for replay throughput, idle timeout from the configuration.
pub fn transport(idle_timeout: std::time::Duration) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(quinn::IdleTimeout::try_from(idle_timeout).ok());
    t.keep_alive_interval(Some(idle_timeout / 3));
    t.stream_receive_window(quinn::VarInt::from_u32(16 << 20));
    t.receive_window(quinn::VarInt::from_u32(32 << 20));
    t.send_window(32 << 20);
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(1));
    t
}

/// The quinn server configuration for `paths`.
pub fn quic_server_config(
    paths: &TlsPaths<'_>,
    idle_timeout: std::time::Duration,
) -> Result<quinn::ServerConfig> {
    let tls = server_config(paths)?;
    let quic =
        quinn::crypto::rustls::QuicServerConfig::try_from(tls).context("QUIC TLS configuration")?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    cfg.transport_config(Arc::new(transport(idle_timeout)));
    Ok(cfg)
}
