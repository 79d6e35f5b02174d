//! Offline replay over real QUIC between real processes.

use anyhow::Result;
use std::time::Duration;
use sx_common::EventPayload;
use sx_common::model::ConnectivityState;
use sx_tests::*;

/// Aggregator down; the agent records 10,000 events; the aggregator
/// starts; everything replays exactly once, the backlog reaches 0, and the
/// node's own connectivity history shows autonomous → returning →
/// replaying → live.
#[test]
fn backlog_replays_exactly_once_when_the_aggregator_appears() -> Result<()> {
    let fleet = TestFleet::new()?;
    let node = fleet.node(
        "sx-rempart-t1-node-1",
        "souverix-rempart",
        "region-a",
        "edge-zone-a1",
    )?;
    let data = fleet.agent_dir(&node)?;
    let (quic_port, api_port) = (free_udp_port(), free_tcp_port());
    let quic = format!("127.0.0.1:{quic_port}").parse()?;
    let config = fleet.agent_config("t1", quic, "")?;

    // The agent runs with no aggregator: it goes autonomous.
    let mut agent = AgentProcess::start(&data, &config)?;
    std::thread::sleep(Duration::from_millis(1_500));
    // Other processes on the node record through the agent's socket.
    for i in 0..10 {
        agent_cmd(
            &data,
            &[
                "record",
                "lifecycle.maintenance_started",
                &format!(r#"{{"window_id":"w{i}"}}"#),
            ],
        )?;
    }
    agent.stop()?;
    fill_journal(&data, 9_990, 500)?;
    let before = agent_status(&data)?;
    let head_before = before["head_seq"].as_u64().expect("head");
    assert!(head_before >= 10_000 + 2, "head {head_before}");
    assert_eq!(before["acked_seq"], 0);

    let aggregator_dir = fleet.path().join("aggregator");
    let aggregator = AggregatorProcess::start(&fleet, &aggregator_dir, quic_port, api_port)?;
    let mut agent = AgentProcess::start(&data, &config)?;
    // Synced: the aggregator holds the node's own "sync completed" and
    // nothing is left in the backlog.
    let path = format!("/api/v1/nodes/{}/events?from={head_before}", node.node_id);
    let synced = wait_for(Duration::from_secs(60), "sync completed, backlog 0", || {
        let events = get_json(aggregator.api, &path).ok()?;
        let done = events
            .as_array()?
            .iter()
            .any(|e| e["event_type"] == "connectivity.sync_completed");
        let n = aggregator.node_status(&node.node_id).ok()??;
        let acked = n["acked_seq"].as_u64()?;
        (done && n["backlog"] == 0 && n["agent_head_seq"].as_u64()? == acked).then_some(acked)
    })?;
    agent.stop()?;
    let after = agent_status(&data)?;
    let tail = agent_cmd(
        &data,
        &["log", "--from", &(head_before + 1).to_string(), "--json"],
    )?;
    let log = std::fs::read_to_string(data.with_extension("log")).unwrap_or_default();
    assert_eq!(
        after["backlog"], 0,
        "agent still has a backlog: {after}\n{tail}\n{log}"
    );
    drop(aggregator);

    let stored = stored_stream(&aggregator_dir, &node.node_id)?;
    let head_after = after["head_seq"].as_u64().expect("head");
    assert_eq!(stored.events.len() as u64, head_after, "every event once");
    assert_eq!(
        synced, head_after,
        "nothing recorded after the sync completed"
    );
    // The agent's own account of connectivity, as stored at the aggregator.
    let states: Vec<ConnectivityState> = stored
        .events
        .iter()
        .filter_map(|e| match &e.event.payload {
            EventPayload::ConnectivityTransition(t) => Some(t.to),
            _ => None,
        })
        .collect();
    let want = [
        ConnectivityState::Autonomous,
        ConnectivityState::Returning,
        ConnectivityState::Replaying,
        ConnectivityState::Live,
    ];
    let found = states.windows(4).any(|w| w == want);
    assert!(found, "connectivity history {states:?} lacks {want:?}");
    // The replay was recorded with its size.
    let replay = stored
        .events
        .iter()
        .rev()
        .find_map(|e| match &e.event.payload {
            EventPayload::ReplayStarted(r) => Some(r.backlog),
            _ => None,
        });
    assert!(
        replay.is_some_and(|b| b >= 10_000),
        "replay_started {replay:?}"
    );
    Ok(())
}
