//! While the agent runs it holds the journal (redb opens it exclusively):
//! `sx-agent status`, `log` and `verify` then read it through the agent's
//! socket and answer exactly what they answer on a stopped agent.

use anyhow::{Context, Result};
use serde_json::Value;
use std::time::Duration;
use sx_tests::{AgentProcess, TestFleet, agent_cmd, fill_journal, free_udp_port, wait_for};

fn lines(text: &str) -> Result<Vec<Value>> {
    text.lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect()
}

#[test]
fn status_log_and_verify_read_through_the_running_agent() -> Result<()> {
    let fleet = TestFleet::new()?;
    let node = fleet.node(
        "sx-relais-socket-node-1",
        "souverix-relais",
        "region-a",
        "edge-zone-a1",
    )?;
    let data = fleet.agent_dir(&node)?;
    // More than one read's worth, so `log` pages through the agent.
    fill_journal(&data, 2_500, 500)?;

    // On the stopped agent, from the journal itself.
    let status: Value = serde_json::from_str(&agent_cmd(&data, &["status", "--json"])?)?;
    let log = lines(&agent_cmd(&data, &["log", "--json"])?)?;
    let verified: Value = serde_json::from_str(&agent_cmd(&data, &["verify", "--json"])?)?;
    let window = lines(&agent_cmd(
        &data,
        &["log", "--json", "--from", "1000", "--limit", "1500"],
    )?)?;
    let head = status["head_seq"].as_u64().context("head seq")?;
    assert!(head > 2_500, "{status}");
    assert_eq!(log.len() as u64, head);
    assert_eq!(verified["ok"], true, "{verified}");

    // No aggregator listens: the agent stays autonomous, holding the
    // journal, and records its connectivity.
    let config = fleet.agent_config(
        "socket",
        format!("127.0.0.1:{}", free_udp_port()).parse()?,
        "",
    )?;
    let _agent = AgentProcess::start(&data, &config)?;
    let socket = data.join(sx_agent::local::SOCKET_FILE);
    wait_for(Duration::from_secs(20), "the agent socket", || {
        socket.exists().then_some(())
    })?;
    agent_cmd(
        &data,
        &[
            "record",
            "lifecycle.maintenance_started",
            r#"{"window_id":"w-socket"}"#,
        ],
    )?;

    let live: Value = serde_json::from_str(&agent_cmd(&data, &["status", "--json"])?)?;
    let live_head = live["head_seq"].as_u64().context("head seq")?;
    assert!(live_head > head, "the running agent recorded: {live}");
    assert_eq!(live["node_id"], status["node_id"]);
    assert_eq!(live["first_held_seq"], status["first_held_seq"]);

    let live_log = lines(&agent_cmd(&data, &["log", "--json"])?)?;
    assert!(live_log.len() as u64 >= live_head, "{}", live_log.len());
    // What was there before reads back the same, event for event.
    assert_eq!(&live_log[..log.len()], &log[..]);
    assert!(
        live_log
            .iter()
            .any(|e| e["event_type"] == "lifecycle.maintenance_started"),
        "the event recorded through the agent is in the log"
    );
    let live_window = lines(&agent_cmd(
        &data,
        &["log", "--json", "--from", "1000", "--limit", "1500"],
    )?)?;
    assert_eq!(live_window, window);

    let live_verified: Value = serde_json::from_str(&agent_cmd(&data, &["verify", "--json"])?)?;
    assert_eq!(live_verified["ok"], true, "{live_verified}");
    let report = &live_verified["report"];
    assert!(
        report["events"].as_u64().context("events")? >= live_head
            && report["node_id"] == status["node_id"],
        "{live_verified}"
    );
    let text = agent_cmd(&data, &["status"])?;
    assert!(text.contains("sx-relais-socket-node-1"), "{text}");
    Ok(())
}
