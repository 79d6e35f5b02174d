//! `sx-fleet`: a working Souverix fleet in one command.
//!
//! Creates a fleet PKI, starts one `sx-aggregator serve` per region (two
//! regions, each its own aggregator as DESIGN.md has it) and one `sx-agent
//! run` per node over real QUIC with mutual TLS, plus an air-gapped site
//! that moves its events in bundles. Then it plays the scenarios (a
//! regional outage and replay, stopped agents, configuration drift, an
//! update roll-out through the API, a certificate rotation, an impostor and
//! a revoked node), prints the UI addresses and a summary, and writes
//! `summary.json` into the data directory.
//!
//! Where to start: [`scenario::Fleet::run`] is the timeline; [`plan`] is
//! the fleet (decided from `--seed`); [`procs`] the processes.

mod plan;
mod procs;
mod scenario;
mod summary;

use anyhow::Result;
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

/// Run a simulated Souverix fleet of real processes and report.
#[derive(Debug, Parser)]
#[command(name = "sx-fleet", version)]
struct Cli {
    /// Seed of the fleet plan (components, versions, drift, links) and of
    /// the background activity.
    #[arg(long, default_value_t = 2026)]
    seed: u64,
    /// Nodes with a running agent (at least 8), split over two regions of
    /// two zones; an air-gapped site of two more nodes comes on top.
    #[arg(long, default_value_t = 60)]
    nodes: usize,
    /// Approximate length of the scripted run (e.g. 90s, 3m); scenario
    /// phases scale with it.
    #[arg(long, default_value = "90s", value_parser = parse_duration)]
    duration: Duration,
    /// After the summary, keep the fleet running for the UI until Ctrl-C.
    #[arg(long)]
    keep_running: bool,
    /// Where PKI, journals, stores and logs go (emptied first if sx-fleet
    /// made it).
    #[arg(long, default_value = "target/sx-fleet")]
    data_dir: PathBuf,
    /// Directory holding sx-agent and sx-aggregator (default: next to
    /// sx-fleet, built by cargo when run through `cargo run`).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Background events per second, fleet-wide.
    #[arg(long, default_value_t = 3.0)]
    rate: f64,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    sx_common::Span::parse(text)
        .map(|s| Duration::from_secs(s.as_secs()))
        .map_err(|e| e.to_string())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let opts = scenario::Options {
        seed: cli.seed,
        nodes: cli.nodes,
        duration: cli.duration,
        data_dir: cli.data_dir,
        bin_dir: cli.bin_dir,
        rate: cli.rate,
    };
    // Ctrl-C or SIGTERM: stop between steps and take every process down.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, std::sync::atomic::Ordering::SeqCst))?;
    }
    let mut fleet = scenario::Fleet::setup(opts, stop)?;
    let played = fleet.run();
    let summary = summary::collect(&fleet, &fleet.outcomes, cli.seed);
    std::fs::write(
        fleet.root().join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    summary::print(&summary);
    if let Err(e) = played {
        fleet.shutdown();
        return Err(e);
    }
    if fleet.interrupted() {
        fleet.shutdown();
        anyhow::bail!("interrupted");
    }
    println!(
        "summary written to {}",
        fleet.root().join("summary.json").display()
    );
    if cli.keep_running {
        for a in &fleet.aggregators {
            println!("UI of {}: {}", a.region, a.ui());
        }
        println!("the fleet keeps running; Ctrl-C stops it");
        fleet.keep_running();
    }
    fleet.shutdown();
    Ok(())
}
