//! The aggregator's TOML configuration, with documented defaults; command
//! line flags override it.
//!
//! ```toml
//! [aggregator]
//! name = "agg-region-a"          # the aggregator's certificate name
//! region = "region-a"
//! data_dir = "./aggregator-data" # redb files live here
//! listen = "127.0.0.1:7170"      # QUIC ingest (UDP)
//! api_listen = "127.0.0.1:7180"  # HTTP API and web UI
//! desired = "desired.toml"       # desired-state declaration (optional)
//! stale_after = "5m"             # mark nodes not heard from as stale
//! operator_token = "..."         # bearer token for changes (and non-loopback)
//!
//! [tls]                           # default: the layout of `sx-certs` under pki_dir
//! pki_dir = "./pki"
//! # cert = ".../chain.pem"  key = "..."  ca = "..."  crl = "..."
//!
//! [ingest]
//! max_batch_events = 10000       # per batch from one agent
//! group_commit_max_events = 64000
//! idle_timeout = "30s"
//! live_projections = true        # false: projections catch up only at the
//!                                # next start (ingest-only measurements)
//! ```

use anyhow::{Context, Result};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use sx_common::time::Span;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub aggregator: AggregatorSection,
    pub tls: TlsSection,
    pub ingest: IngestSection,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AggregatorSection {
    pub name: String,
    pub region: String,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub api_listen: SocketAddr,
    /// Desired-state declaration (TOML or JSON) loaded at start.
    pub desired: Option<PathBuf>,
    /// Nodes not heard from for longer are marked stale.
    pub stale_after: Span,
    /// Bearer token operators present to change desired state (and for any
    /// route when the API listens beyond loopback). None: no changes.
    pub operator_token: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSection {
    pub pki_dir: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub crl: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestSection {
    pub max_batch_events: usize,
    pub group_commit_max_events: usize,
    pub idle_timeout: Span,
    /// Update the projections right after each commit (the default). When
    /// false they catch up from the store at the next start only: for
    /// measuring ingest alone, as the sync benchmark does against its
    /// default run.
    pub live_projections: bool,
}

impl Default for AggregatorSection {
    fn default() -> Self {
        AggregatorSection {
            name: "agg-region-a".into(),
            region: "region-a".into(),
            data_dir: PathBuf::from("./aggregator-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 7170)),
            api_listen: SocketAddr::from(([127, 0, 0, 1], 7180)),
            desired: None,
            stale_after: Span::from_mins(5),
            operator_token: None,
        }
    }
}

impl Default for IngestSection {
    fn default() -> Self {
        IngestSection {
            max_batch_events: 10_000,
            group_commit_max_events: 64_000,
            idle_timeout: Span::from_secs(30),
            live_projections: true,
        }
    }
}

/// Resolved TLS file paths.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert_chain: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub crl: PathBuf,
}

impl Config {
    /// Reads a TOML file; unknown keys are errors.
    pub fn load(path: &Path) -> Result<Config> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// The TLS files: explicit paths, else the `sx-certs` layout under
    /// `pki_dir` (default `./pki`).
    pub fn tls_files(&self) -> TlsFiles {
        let pki = self
            .tls
            .pki_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("./pki"));
        let agg = pki.join("aggregators").join(&self.aggregator.name);
        TlsFiles {
            cert_chain: self
                .tls
                .cert
                .clone()
                .unwrap_or_else(|| agg.join("chain.pem")),
            key: self.tls.key.clone().unwrap_or_else(|| agg.join("key.pem")),
            ca: self
                .tls
                .ca
                .clone()
                .unwrap_or_else(|| pki.join("ca").join("ca.pem")),
            crl: self
                .tls
                .crl
                .clone()
                .unwrap_or_else(|| pki.join("ca").join("crl.pem")),
        }
    }

    pub fn store_path(&self) -> PathBuf {
        self.aggregator.data_dir.join("events.redb")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides_parse() {
        let c: Config = toml::from_str(
            "[aggregator]\nregion = \"region-b\"\n[ingest]\nidle_timeout = \"1m\"\n",
        )
        .expect("parse");
        assert_eq!(c.aggregator.region, "region-b");
        assert_eq!(c.aggregator.name, "agg-region-a");
        assert_eq!(c.ingest.idle_timeout, Span::from_secs(60));
        assert!(c.ingest.live_projections, "live projections by default");
        let ingest_only: Config =
            toml::from_str("[ingest]\nlive_projections = false\n").expect("parse");
        assert!(!ingest_only.ingest.live_projections);
        assert!(toml::from_str::<Config>("[aggregator]\nbogus = 1\n").is_err());
        let files = c.tls_files();
        assert!(files.ca.ends_with("pki/ca/ca.pem"));
    }
}
