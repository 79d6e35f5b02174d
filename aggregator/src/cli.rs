//! Operator commands that talk to a running aggregator's API.

use anyhow::{Context, Result};

fn get_json(api: &str, path: &str) -> Result<serde_json::Value> {
    let url = format!("http://{api}{path}");
    let body = ureq::get(&url)
        .call()
        .with_context(|| format!("GET {url} (is the aggregator running?)"))?
        .body_mut()
        .read_to_string()
        .context("reading the API answer")?;
    serde_json::from_str(&body).context("the API answered something that is not JSON")
}

/// `sx-aggregator status`.
pub fn status(api: &str, json: bool) -> Result<()> {
    let status = get_json(api, "/api/v1/status")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    println!(
        "aggregator {} ({}), {} events stored, {} commits, {} duplicates, {} forks",
        status["aggregator"].as_str().unwrap_or("?"),
        status["region"].as_str().unwrap_or("?"),
        status["events_stored"],
        status["commits"],
        status["duplicates"],
        status["forks"],
    );
    println!(
        "{:<40} {:>10} {:>10} {:>8} {:>8} {:<14} last sync",
        "node", "acked", "head", "backlog", "rtt_ms", "connection"
    );
    for n in status["nodes"].as_array().into_iter().flatten() {
        println!(
            "{:<40} {:>10} {:>10} {:>8} {:>8} {:<14} {}",
            n["node_id"].as_str().unwrap_or("?"),
            n["acked_seq"].to_string(),
            n["agent_head_seq"].to_string(),
            n["backlog"].to_string(),
            n["rtt_ms"]
                .as_u64()
                .map_or("-".to_string(), |v| v.to_string()),
            n["connection"]["state"].as_str().unwrap_or("?"),
            n["last_sync"].as_str().unwrap_or("never"),
        );
    }
    Ok(())
}
