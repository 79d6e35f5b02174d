//! The agent's TOML configuration, with documented defaults; command-line
//! flags override it.
//!
//! ```toml
//! [agent]
//! data_dir = "./agent-data"        # journal and identity (sx-agent init)
//! aggregator = "127.0.0.1:7170"    # QUIC address of the region's aggregator
//! server_name = "localhost"        # name in the aggregator's certificate
//! retention = "24h"                # keep acknowledged events this long
//! # socket = "./agent-data/agent.sock"  # local ingest (default: in data_dir)
//!
//! [uplink]
//! batch_max_events = 1000          # events per batch
//! window_events = 16000            # unacknowledged events in flight
//! heartbeat_interval = "5s"
//! ack_timeout = "15s"              # resend from the last ack after this
//! idle_timeout = "30s"             # give a silent link up after this
//! connect_timeout = "5s"
//! backoff_initial = "200ms"        # reconnect delay, doubled per failure...
//! backoff_max = "5s"               # ...up to this, with jitter
//!
//! [connectivity]                   # thresholds of the state machine
//! delayed_rtt_ms = 1000
//! live_rtt_ms = 500
//! autonomous_after = "5m"
//! disconnected_after = "1d"
//! replay_backlog = 0
//! edge_sync_interval = "15m"
//! ```

use anyhow::{Context, Result};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use sx_common::connectivity::Thresholds;
use sx_common::time::Span;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub agent: AgentSection,
    pub uplink: UplinkSection,
    pub connectivity: Thresholds,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentSection {
    pub data_dir: PathBuf,
    pub aggregator: SocketAddr,
    pub server_name: String,
    pub retention: Span,
    pub socket: Option<PathBuf>,
}

impl Default for AgentSection {
    fn default() -> Self {
        AgentSection {
            data_dir: PathBuf::from("./agent-data"),
            aggregator: SocketAddr::from(([127, 0, 0, 1], 7170)),
            server_name: "localhost".into(),
            retention: Span::from_secs(24 * 3_600),
            socket: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UplinkSection {
    pub batch_max_events: usize,
    pub window_events: u64,
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
}

impl Default for UplinkSection {
    fn default() -> Self {
        UplinkSection {
            batch_max_events: 1_000,
            window_events: 16_000,
            heartbeat_interval: Duration::from_secs(5),
            ack_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(5),
        }
    }
}

impl Config {
    /// Reads a TOML file; unknown keys are errors.
    pub fn load(path: &Path) -> Result<Config> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// The local ingest socket path.
    pub fn socket_path(&self) -> PathBuf {
        self.agent
            .socket
            .clone()
            .unwrap_or_else(|| self.agent.data_dir.join(crate::local::SOCKET_FILE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_example_parses_and_unknown_keys_fail() {
        let c: Config = toml::from_str(
            "[agent]\naggregator = \"127.0.0.1:9000\"\n[uplink]\nheartbeat_interval = \"250ms\"\n\
             [connectivity]\nautonomous_after = \"2s\"\n",
        )
        .expect("parse");
        assert_eq!(c.agent.aggregator.port(), 9000);
        assert_eq!(c.uplink.heartbeat_interval, Duration::from_millis(250));
        assert_eq!(c.connectivity.autonomous_after, Span::from_secs(2));
        assert_eq!(c.uplink.batch_max_events, 1_000);
        assert!(toml::from_str::<Config>("[uplink]\nnope = 1\n").is_err());
    }
}
