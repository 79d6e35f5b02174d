//! Crashes during replay, with real processes: SIGKILL the aggregator (and,
//! separately, the agent) again and again while a large backlog replays over
//! QUIC, restart it on the same ports, and check that no acknowledged event
//! is lost and none is stored twice (DESIGN.md invariant 1).

use anyhow::{Context, Result};
use rand::Rng;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use sx_common::Timestamp;
use sx_tests::*;

/// An agent configuration for crash tests: like the harness's, but a
/// session to a SIGKILLed aggregator (which never closes it) is given up
/// after 1.5 s instead of 3 s, so that each restart is met by a new session
/// quickly; and small batches and window (50 / 100 events), so the replay
/// advances in small steps, with many commits for a kill to hit (with
/// default sizes it now outruns ten kills).
fn crash_config(fleet: &TestFleet, name: &str, quic_port: u16) -> Result<PathBuf> {
    let path = fleet.path().join(format!("{name}.agent.toml"));
    let text = format!(
        "[agent]\naggregator = \"127.0.0.1:{quic_port}\"\nserver_name = \"localhost\"\n\n\
         [uplink]\nheartbeat_interval = \"300ms\"\nack_timeout = \"1500ms\"\nidle_timeout = \"1500ms\"\n\
         connect_timeout = \"500ms\"\nbackoff_initial = \"50ms\"\nbackoff_max = \"200ms\"\n\
         batch_max_events = 50\nwindow_events = 100\n\n\
         [connectivity]\nautonomous_after = \"1s\"\n"
    );
    std::fs::write(&path, text)?;
    Ok(path)
}

fn failure_context(aggregator: &AggregatorProcess, node: &str, agent_dir: &Path) -> String {
    format!(
        "status {:?}\nagent log:\n{}\naggregator log:\n{}",
        aggregator.node_status(node),
        log_tail(agent_dir, 30),
        log_tail(&aggregator.data_dir, 30)
    )
}

/// 100,000 events replay while the aggregator is SIGKILLed twelve times and
/// restarted on the same ports. Each kill comes at a random moment (20–250
/// ms) after the replay was seen moving again and passed the next twelfth
/// of the backlog, so it hits a live session with batches in flight and
/// commits under way, all along the replay. Before each kill the API's
/// durable head is noted: the store file, read right after the kill, and
/// the restarted aggregator hold at least that much. In the end the store
/// holds exactly the agent's journal (once each, in order, chained), and
/// the agent's acked mark equals the stored count.
#[test]
fn aggregator_sigkilled_during_replay_loses_and_duplicates_nothing() -> Result<()> {
    const EVENTS: u64 = 100_000;
    const KILLS: usize = 12;
    let started = Instant::now();
    let fleet = TestFleet::new()?;
    let node = fleet.node(
        "sx-rempart-crash-agg-1",
        "souverix-rempart",
        "region-a",
        "edge-zone-a1",
    )?;
    let data = fleet.agent_dir(&node)?;
    fill_journal(&data, EVENTS, 1_000)?;
    let head_before = agent_status(&data)?["head_seq"].as_u64().expect("head_seq");
    assert!(head_before > EVENTS);

    let (quic_port, api_port) = (free_udp_port(), free_tcp_port());
    let config = crash_config(&fleet, "crash-agg", quic_port)?;
    let aggregator_dir = fleet.path().join("aggregator");
    let mut aggregator = AggregatorProcess::start(&fleet, &aggregator_dir, quic_port, api_port)?;
    let mut agent = AgentProcess::start(&data, &config)?;
    let filled = started.elapsed();

    let mut rng = rand::thread_rng();
    let mut max_acked = 0u64;
    let mut trace = Vec::new();
    let mut mid_replay = 0;
    for kill in 1..=KILLS {
        // The agent found the (restarted) aggregator, the replay moves, and
        // it passed the next of twelve marks spread over the first 80% of
        // the backlog (so the kills are spread over the whole replay).
        let base = aggregator.acked_seq(&node.node_id)?;
        let mark = kill as u64 * (EVENTS * 4 / 5) / KILLS as u64;
        wait_for(Duration::from_secs(30), "replay progress", || {
            let acked = aggregator.acked_seq(&node.node_id).ok()?;
            (acked > base && acked >= mark).then_some(())
        })
        .with_context(|| failure_context(&aggregator, &node.node_id, &data))?;
        // Then a random moment of the session, batches in flight.
        std::thread::sleep(Duration::from_millis(rng.gen_range(20..=250)));
        // What the aggregator has acknowledged (durably committed) so far.
        let acked = aggregator.acked_seq(&node.node_id)?;
        max_acked = max_acked.max(acked);
        aggregator.kill();
        // What survived the crash, read from the store file itself.
        let durable = store_head(&aggregator_dir, &node.node_id)?.seq;
        assert!(
            durable >= max_acked,
            "kill {kill}: the API reported {max_acked} durable, the store holds {durable} after SIGKILL"
        );
        aggregator = AggregatorProcess::start(&fleet, &aggregator_dir, quic_port, api_port)?;
        let restarted = aggregator.acked_seq(&node.node_id)?;
        assert!(
            restarted >= max_acked,
            "kill {kill}: acknowledged {max_acked}, but the restarted aggregator holds {restarted}"
        );
        trace.push((acked, durable));
        if durable >= head_before {
            break; // The replay is over: no more kills can hit it.
        }
        mid_replay += 1;
    }
    assert!(
        mid_replay >= 10,
        "only {mid_replay} kills came during the replay: {trace:?}"
    );

    let synced = aggregator
        .wait_synced(&node.node_id, Duration::from_secs(120))
        .with_context(|| failure_context(&aggregator, &node.node_id, &data))?;
    let replayed = started.elapsed();
    agent
        .stop()
        .with_context(|| format!("stopping the agent:\n{}", log_tail(&data, 20)))?;
    let status = aggregator.status()?;
    aggregator.stop().with_context(|| {
        format!(
            "stopping the aggregator:\n{}",
            log_tail(&aggregator_dir, 20)
        )
    })?;
    let after = agent_status(&data)?;
    let head = after["head_seq"].as_u64().expect("head_seq");
    let agent_acked = after["acked_seq"].as_u64().expect("acked_seq");
    let stored = assert_stream_matches_journal(&aggregator_dir, &data, &node.node_id)?;
    assert_eq!(stored, head, "every journal event stored exactly once");
    assert_eq!(synced, head);
    assert!(
        agent_acked <= stored,
        "the agent's ack {agent_acked} > stored {stored}"
    );
    assert_eq!(agent_acked, stored, "the agent's acked mark at the end");
    assert_eq!(status["events_stored"], stored, "no other events stored");
    assert_eq!(status["forks"], 0);
    eprintln!(
        "{} aggregator kills ({mid_replay} mid-replay), {stored} events, filled at {filled:?}, replayed at {replayed:?}, done at {:?}; (API acked, stored after SIGKILL) per kill: {trace:?}",
        trace.len(),
        started.elapsed()
    );
    Ok(())
}

/// The agent is SIGKILLed five times mid-replay (each time a random moment
/// after the replay passed another seventh of the backlog) and restarted:
/// after each kill its acked mark is at most what the aggregator durably
/// holds; the replay resumes from the durable head and completes with every
/// event stored exactly once, and the journal still verifies.
#[test]
fn agent_sigkilled_during_replay_resumes_exactly_once() -> Result<()> {
    const EVENTS: u64 = 40_000;
    const KILLS: u64 = 5;
    let started = Instant::now();
    let fleet = TestFleet::new()?;
    let node = fleet.node(
        "sx-coeur-crash-agent-1",
        "souverix-coeur",
        "region-a",
        "core-zone-a",
    )?;
    let data = fleet.agent_dir(&node)?;
    fill_journal(&data, EVENTS, 1_000)?;
    let head_before = agent_status(&data)?["head_seq"].as_u64().expect("head_seq");

    let (quic_port, api_port) = (free_udp_port(), free_tcp_port());
    let config = crash_config(&fleet, "crash-agent", quic_port)?;
    let aggregator_dir = fleet.path().join("aggregator");
    let mut aggregator = AggregatorProcess::start(&fleet, &aggregator_dir, quic_port, api_port)?;
    let mut agent = AgentProcess::start(&data, &config)?;

    let mut rng = rand::thread_rng();
    let mut progress = Vec::new();
    let mut last_start = Timestamp::now();
    for kill in 1..=KILLS {
        let mark = kill * EVENTS / (KILLS + 2);
        wait_for(Duration::from_secs(30), "replay progress", || {
            (aggregator.acked_seq(&node.node_id).ok()? >= mark).then_some(())
        })
        .with_context(|| failure_context(&aggregator, &node.node_id, &data))?;
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..=100)));
        agent.kill();
        let st = agent_status(&data)?;
        let agent_acked = st["acked_seq"].as_u64().expect("acked_seq");
        let stored = aggregator.acked_seq(&node.node_id)?;
        assert!(
            agent_acked <= stored,
            "kill {kill}: the agent holds ack {agent_acked} but the aggregator stored only {stored}"
        );
        assert!(
            stored < head_before,
            "kill {kill} came after the replay ended: {progress:?}"
        );
        progress.push((agent_acked, stored));
        last_start = Timestamp::now();
        agent = AgentProcess::start(&data, &config)?;
    }

    let synced = aggregator
        .wait_synced_after(&node.node_id, last_start, Duration::from_secs(120))
        .with_context(|| failure_context(&aggregator, &node.node_id, &data))?;
    agent.stop()?;
    aggregator.stop()?;
    let after = agent_status(&data)?;
    let head = after["head_seq"].as_u64().expect("head_seq");
    let stored = assert_stream_matches_journal(&aggregator_dir, &data, &node.node_id)?;
    assert_eq!(stored, head, "every journal event stored exactly once");
    assert_eq!(synced, head);
    assert_eq!(
        after["acked_seq"], stored,
        "the agent's acked mark at the end"
    );
    let verify: serde_json::Value =
        serde_json::from_str(&agent_cmd(&data, &["verify", "--json"])?)?;
    assert_eq!(verify["ok"], true, "journal after the kills: {verify}");
    eprintln!(
        "{KILLS} agent kills, {stored} events, {:?}; (agent acked, stored) per kill: {progress:?}",
        started.elapsed()
    );
    Ok(())
}
