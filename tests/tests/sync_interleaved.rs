//! Several agents replaying to one aggregator at once, over real QUIC: their
//! batches meet in the single writer's group commits, and each node's
//! stream must still come out separate, complete, once, in order.

use anyhow::{Context, Result};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use sx_common::Timestamp;
use sx_tests::*;

/// Three nodes of different kinds each hold a backlog of thousands of
/// events; the aggregator appears and all three replay at the same time.
/// The replays are seen in progress together (so their batches interleave
/// in the writer), and in the end each stream holds exactly its node's
/// journal — complete, once, in order, chained — and nothing of the others.
#[test]
fn concurrent_replays_are_stored_as_separate_complete_streams() -> Result<()> {
    const EVENTS: u64 = 15_000;
    let started = Instant::now();
    let fleet = TestFleet::new()?;
    let (quic_port, api_port) = (free_udp_port(), free_tcp_port());
    let quic = format!("127.0.0.1:{quic_port}").parse()?;
    let kinds = [
        ("sx-rempart-mix-node-1", "souverix-rempart", "edge-zone-a1"),
        ("sx-coeur-mix-node-1", "souverix-coeur", "core-zone-a"),
        ("sx-relais-mix-node-1", "souverix-relais", "media-zone-a"),
    ];
    let mut nodes: Vec<(NodeFiles, PathBuf, PathBuf, u64)> = Vec::new();
    for (i, (id, component, zone)) in kinds.into_iter().enumerate() {
        let node = fleet.node(id, component, "region-a", zone)?;
        let data = fleet.agent_dir(&node)?;
        // Different sizes and transaction shapes, so the streams differ.
        fill_journal(&data, EVENTS + 1_000 * i as u64, 250 + 250 * i)?;
        let head = agent_status(&data)?["head_seq"]
            .as_u64()
            .context("head_seq")?;
        let config = fleet.agent_config(&format!("mix-{i}"), quic, "")?;
        nodes.push((node, data, config, head));
    }

    let aggregator_dir = fleet.path().join("aggregator");
    let mut aggregator = AggregatorProcess::start(&fleet, &aggregator_dir, quic_port, api_port)?;
    let after = Timestamp::now();
    let mut agents = nodes
        .iter()
        .map(|(_, data, config, _)| AgentProcess::start(data, config))
        .collect::<Result<Vec<_>>>()?;

    // Watch the replays: at some moment at least two must be under way
    // together (some events stored, not all of the backlog yet).
    let mut together = 0usize;
    let mut most_at_once = 0usize;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = aggregator.status()?;
        let acked = |node: &str| {
            status["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|n| n["node_id"] == node)
                .and_then(|n| n["acked_seq"].as_u64())
                .unwrap_or(0)
        };
        let progress: Vec<u64> = nodes.iter().map(|(n, ..)| acked(&n.node_id)).collect();
        let under_way = nodes
            .iter()
            .zip(&progress)
            .filter(|((.., head), p)| **p > 0 && **p < *head)
            .count();
        most_at_once = most_at_once.max(under_way);
        if under_way >= 2 {
            together += 1;
        }
        if nodes.iter().zip(&progress).all(|((.., head), p)| p >= head) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replays did not finish: {progress:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        together > 0,
        "never saw two replays under way at once (at most {most_at_once})"
    );

    let mut synced = Vec::new();
    for (node, data, ..) in &nodes {
        synced.push(
            aggregator
                .wait_synced_after(&node.node_id, after, Duration::from_secs(60))
                .with_context(|| format!("agent log:\n{}", log_tail(data, 30)))?,
        );
    }
    for agent in &mut agents {
        agent.stop()?;
    }
    let status = aggregator.status()?;
    aggregator.stop()?;

    let mut total = 0;
    for ((node, data, _, head_before), synced) in nodes.iter().zip(&synced) {
        let stored = assert_stream_matches_journal(&aggregator_dir, data, &node.node_id)?;
        let head = agent_status(data)?["head_seq"]
            .as_u64()
            .context("head_seq")?;
        assert_eq!(stored, head, "{}: complete", node.node_id);
        assert_eq!(stored, *synced, "{}", node.node_id);
        assert!(stored > *head_before, "{}", node.node_id);
        total += stored;
    }
    assert_eq!(status["events_stored"], total, "no stray events");
    assert_eq!(status["forks"], 0);
    eprintln!(
        "3 concurrent replays, {total} events, seen together in {together} polls, {:?}",
        started.elapsed()
    );
    Ok(())
}
