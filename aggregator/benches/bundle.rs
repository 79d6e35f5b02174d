//! Bundle export and import throughput, and bundle size per event.
//!
//! `cargo bench -p sx-aggregator --bench bundle`
//!
//! Setup (not timed): a fleet PKI, an agent data directory, and a journal
//! of `SX_BENCH_EVENTS` events (default 1,000,000) of a realistic
//! connectivity transition, appended 1,000 per durable transaction.
//!
//! Timed, for the zstd and the uncompressed format:
//! - **export**: `sx_agent::bundle::export_stopped`, what `sx-agent
//!   export-bundle` runs on a stopped agent: read the journal, sign a
//!   checkpoint every 10,000 events, build, compress, sign the manifest,
//!   write the file durably;
//! - **import**: into a fresh aggregator store, what `sx-aggregator
//!   import-bundle` runs: decode and verify the file (digests, every event
//!   hash, chain, checkpoint signatures), verify the certificate chain, then
//!   submit every segment through the single writer (`admit_batch`, durable
//!   redb commits). Verify and commit are also shown apart.
//!
//! Files live under Cargo's target tmp dir (a real disk, so fsync counts).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use sx_agent::bundle::{ExportRequest, export_stopped};
use sx_agent::journal::data_dir::{self, InitRequest};
use sx_agent::journal::{DataDir, Journal};
use sx_aggregator::bundle::Importer;
use sx_aggregator::config::Config;
use sx_aggregator::ingest::{GroupCommit, Ingest};
use sx_aggregator::store::{EventStore, RedbStore};
use sx_certs::{AggregatorRequest, CaOptions, NodeRequest, Pki};
use sx_common::bundle::Compression;
use sx_common::event::ConnectivityTransition;
use sx_common::model::ConnectivityState;
use sx_common::{EventPayload, Span, Timestamp};

const NODE_ID: &str = "sx-rempart-2026-prod-1-node-42";
const AGGREGATOR: &str = "agg-bench";
const REGION: &str = "region-a";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let events: u64 = std::env::var("SX_BENCH_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let base =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("bundle-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base)?;
    let result = run(&base, events);
    let _ = std::fs::remove_dir_all(&base);
    result
}

fn run(base: &Path, events: u64) -> Result<(), Box<dyn std::error::Error>> {
    let pki = Pki::init(base.join("pki"), &CaOptions::default())?;
    pki.issue_aggregator(&AggregatorRequest::new(AGGREGATOR, REGION))?;
    let node = pki.issue_node(&NodeRequest::new(
        NODE_ID,
        "souverix-rempart",
        REGION,
        "edge-zone-a1",
    ))?;
    let dir = DataDir::new(base.join("agent"));
    data_dir::init(
        &dir,
        &InitRequest {
            cert: node.cert_path.clone(),
            key: node.key_path.clone(),
            ca: pki.ca_path(),
            force: false,
            now: Timestamp::now(),
        },
    )?;

    let start = Instant::now();
    let mut journal = dir.open_journal()?;
    let mut next = journal.head().seq;
    while next < events {
        let n = (events - next).min(1_000);
        let items: Vec<_> = (next..next + n)
            .map(|i| (Timestamp::now(), sample_transition(i)))
            .collect();
        journal.append(&items)?;
        next += n;
    }
    let head = journal.head().seq;
    journal.close()?;
    println!(
        "setup: journal of {head} events ({} bytes per canonical event) in {:.1?}",
        sx_common::chain::canonical_bytes(&sx_common::Event {
            node_id: NODE_ID.to_owned(),
            seq: 500_000,
            timestamp: Timestamp::now(),
            prev_hash: sx_common::Digest::GENESIS,
            payload: sample_transition(500_000),
        })
        .len(),
        start.elapsed()
    );
    println!(
        "{:<6} {:>10} {:>12} {:>13} {:>11} {:>13} {:>13} {:>13}",
        "format",
        "events",
        "bytes",
        "bytes/event",
        "export ev/s",
        "verify ev/s",
        "commit ev/s",
        "import ev/s"
    );
    for (name, compression) in [("zstd", Compression::Zstd), ("plain", Compression::None)] {
        let out = base.join(format!("bench-{name}.sxbundle"));
        let request = ExportRequest {
            out: out.clone(),
            from: Some(1),
            to: None,
            region: None,
            aggregator: None,
            expires_in: Span::from_secs(3_600),
            compression,
        };
        let start = Instant::now();
        let exported = export_stopped(&dir, &request, Timestamp::now())?;
        let export_time = start.elapsed();

        let (verify_time, commit_time, new) = import(base, &pki, name, &out)?;
        assert_eq!(new, exported.events, "every event imported");
        let n = exported.events as f64;
        println!(
            "{:<6} {:>10} {:>12} {:>13.1} {:>11.0} {:>13.0} {:>13.0} {:>13.0}",
            name,
            exported.events,
            exported.bytes,
            exported.bytes as f64 / n,
            n / export_time.as_secs_f64(),
            n / verify_time.as_secs_f64(),
            n / commit_time.as_secs_f64(),
            n / (verify_time + commit_time).as_secs_f64(),
        );
    }
    Ok(())
}

/// Imports `file` into a fresh store; (verify time, commit time, new events).
fn import(
    base: &Path,
    pki: &Pki,
    name: &str,
    file: &Path,
) -> Result<(Duration, Duration, u64), Box<dyn std::error::Error>> {
    let mut config = Config::default();
    config.aggregator.name = AGGREGATOR.to_owned();
    config.aggregator.region = REGION.to_owned();
    config.aggregator.data_dir = base.join(format!("aggregator-{name}"));
    config.tls.pki_dir = Some(pki.root().to_path_buf());
    std::fs::create_dir_all(&config.aggregator.data_dir)?;
    let store: Arc<dyn EventStore> = Arc::new(RedbStore::open(config.store_path())?);
    let ingest = Ingest::start(store.clone(), GroupCommit::default());
    let importer = Importer::from_config(&config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    let start = Instant::now();
    let bytes = std::fs::read(file)?;
    let now = Timestamp::now();
    let verified = importer.verify(&bytes, now)?;
    drop(bytes);
    let verify_time = start.elapsed();
    let start = Instant::now();
    let imported = runtime.block_on(importer.commit(verified, store.as_ref(), &ingest, now))?;
    let commit_time = start.elapsed();
    Ok((verify_time, commit_time, imported.new_events))
}

/// A realistic connectivity transition (as in the journal bench).
fn sample_transition(i: u64) -> EventPayload {
    let states = ConnectivityState::ALL;
    let n = states.len() as u64;
    EventPayload::ConnectivityTransition(ConnectivityTransition {
        from: states[(i % n) as usize],
        to: states[((i + 1) % n) as usize],
        reason: Some(format!(
            "uplink rtt 412ms above the 250ms threshold on path rempart-a1 -> coeur-a \
             (probe {i}, 3 consecutive failures)"
        )),
        latency_ms: Some(40 + (i % 400) as u32),
        backlog: Some(1_000 + i),
        sync_interval: Some(Span::from_mins(15)),
    })
}
