//! `sx-aggregator`: parses flags and calls into the library.

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use sx_aggregator::cli::{self, ApiArgs};
use sx_aggregator::config::Config;

/// The Souverix regional aggregator: verified ingest of node twin events over
/// mutually authenticated QUIC, fleet projections and the operator API.
#[derive(Debug, Parser)]
#[command(name = "sx-aggregator", version)]
struct Cli {
    /// TOML configuration file (defaults documented in the README).
    #[arg(long, global = true, env = "SX_AGGREGATOR_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the aggregator: QUIC ingest and the HTTP API.
    Serve {
        /// Data directory (redb files).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// QUIC listen address.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// HTTP API listen address.
        #[arg(long)]
        api_listen: Option<SocketAddr>,
        /// PKI directory in the sx-certs layout.
        #[arg(long)]
        pki_dir: Option<PathBuf>,
        /// Aggregator name (its certificate under pki/aggregators/NAME).
        #[arg(long)]
        name: Option<String>,
        /// Region this aggregator serves.
        #[arg(long)]
        region: Option<String>,
        /// Desired-state declaration (TOML or JSON) to load at start.
        #[arg(long)]
        desired: Option<PathBuf>,
    },
    /// Import air-gapped bundle files: verify them and commit their events
    /// exactly as QUIC ingest does; write receipts for the nodes. Works on
    /// a stopped aggregator's store, or through a running one's API.
    ImportBundle(sx_aggregator::bundle::ImportArgs),
    /// Show every node's sync state (acked seq, last sync, backlog, RTT,
    /// connection) from a running aggregator's API.
    Status(ApiArgs),
    /// Fleet summary: nodes, events, connectivity spectrum, drift, lifecycle,
    /// refusals (API `/api/v1/fleet`).
    Fleet(ApiArgs),
    /// List twins, filtered and paginated (API `/api/v1/twins`).
    Twins {
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        filter: sx_aggregator::cli::TwinFilterArgs,
    },
    /// One node's twin, now or as of a time (API `/api/v1/twins/{node}`).
    Twin {
        node: String,
        /// RFC 3339 time: the twin as it was then.
        #[arg(long)]
        at: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Drift per group, or of one node (API `/api/v1/drift`,
    /// `/api/v1/twins/{node}/drift`).
    Drift {
        /// Grouping: node, cluster, zone, region, global.
        #[arg(long)]
        by: Option<String>,
        /// One node's drift analysis instead.
        #[arg(long, conflicts_with = "by")]
        node: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// A node's connectivity ledger (API `/api/v1/twins/{node}/ledger`).
    Ledger {
        node: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// A node's trust and SBOM index (API `/api/v1/twins/{node}/trust`).
    Trust {
        node: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// A node's neighbours in the fleet graph (API
    /// `/api/v1/graph/neighbours/{node}`).
    Neighbours {
        node: String,
        /// Only links of this type: signaling, media, control, bypass.
        #[arg(long = "type")]
        link_type: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Which nodes lose every path to a cluster if a node or a zone goes
    /// dark (API `/api/v1/graph/impact`).
    Impact {
        #[command(flatten)]
        outage: sx_aggregator::cli::ImpactArgs,
        #[command(flatten)]
        api: ApiArgs,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let mut config = match &cli.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    match cli.command {
        Command::Serve {
            data_dir,
            listen,
            api_listen,
            pki_dir,
            name,
            region,
            desired,
        } => {
            if let Some(v) = desired {
                config.aggregator.desired = Some(v);
            }
            if let Some(v) = data_dir {
                config.aggregator.data_dir = v;
            }
            if let Some(v) = listen {
                config.aggregator.listen = v;
            }
            if let Some(v) = api_listen {
                config.aggregator.api_listen = v;
            }
            if let Some(v) = pki_dir {
                config.tls.pki_dir = Some(v);
            }
            if let Some(v) = name {
                config.aggregator.name = v;
            }
            if let Some(v) = region {
                config.aggregator.region = v;
            }
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                let (ready, bound) = tokio::sync::oneshot::channel();
                let server = sx_aggregator::server::run(config, shutdown_signal(), Some(ready));
                let announce = async {
                    // One JSON line on stdout with the bound addresses, for
                    // supervisors and tests that asked for port 0.
                    if let Ok(b) = bound.await {
                        println!("{{\"quic\":\"{}\",\"api\":\"{}\"}}", b.quic, b.api);
                    }
                };
                let (result, ()) = tokio::join!(server, announce);
                result
            })
        }
        Command::Status(api) => cli::status(&api),
        Command::Fleet(api) => cli::fleet(&api),
        Command::Twins { api, filter } => cli::twins(&api, &filter),
        Command::Twin { node, at, api } => cli::twin(&api, &node, at.as_deref()),
        Command::Drift { by, node, api } => cli::drift(&api, by.as_deref(), node.as_deref()),
        Command::Ledger { node, api } => cli::ledger(&api, &node),
        Command::Trust { node, api } => cli::trust(&api, &node),
        Command::Neighbours {
            node,
            link_type,
            api,
        } => cli::neighbours(&api, &node, link_type.as_deref()),
        Command::Impact { outage, api } => cli::impact(&api, &outage),
        Command::ImportBundle(args) => sx_aggregator::bundle::run_cli(config, args),
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}
