//! `sx-agent run`: the long-running agent. Holds the journal, serves the
//! local ingest socket, runs the uplink and prunes acknowledged events past
//! the retention.

use crate::config::Config;
use crate::handle::JournalHandle;
use crate::journal::DataDir;
use anyhow::{Context, Result};
use std::future::Future;
use std::time::Duration;
use sx_common::time::Timestamp;
use tokio::sync::watch;

/// Runs the agent until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    let dir = DataDir::new(&config.agent.data_dir);
    let journal = dir
        .open_journal()
        .with_context(|| format!("opening the journal in {}", dir.root().display()))?;
    let credentials = crate::tls::Credentials::load(&dir.cert_path(), &dir.key_path())?;
    let journal = JournalHandle::new(journal, credentials)?;
    tracing::info!(
        node = journal.node_id(),
        head = journal.head().seq,
        "agent starting"
    );
    let connectivity =
        crate::uplink::Connectivity::resume(journal.clone(), config.connectivity.clone()).await?;
    let (stop_tx, stop_rx) = watch::channel(false);

    let socket_path = config.socket_path();
    let local = {
        let journal = journal.clone();
        let path = socket_path.clone();
        let dir = dir.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::local::serve(&path, journal, dir).await {
                tracing::error!("local ingest stopped: {e:#}");
            }
        })
    };
    let pruner = {
        let journal = journal.clone();
        let retention = config.agent.retention;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                match journal.prune(Timestamp::now(), retention).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!("pruned {n} acknowledged events"),
                    Err(e) => tracing::warn!("pruning failed: {e}"),
                }
            }
        })
    };
    let uplink = {
        let config = config.clone();
        let journal = journal.clone();
        tokio::spawn(
            async move { crate::uplink::run(&config, journal, connectivity, stop_rx).await },
        )
    };
    shutdown.await;
    tracing::info!("agent stopping");
    let _ = stop_tx.send(true);
    let result = uplink.await;
    local.abort();
    pruner.abort();
    let _ = std::fs::remove_file(&socket_path);
    match result {
        Ok(r) => r,
        Err(e) => Err(anyhow::anyhow!("uplink task failed: {e}")),
    }
}
