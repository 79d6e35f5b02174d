//! The sync protocol's two sans-IO state machines driven against each other
//! in memory, with virtual time and injected faults (see [`harness`] for
//! the `Pair`): a clean run, thousands of seeded random schedules of loss,
//! duplication, reordering, crashes, reconnects and live appends, and the
//! targeted cases (crash safety, wire version and size, identity,
//! heartbeats, retransmission, handshake loss).
//!
//! Reproduce one random schedule with `SX_PAIR_SEED=<seed>`; run more with
//! `SX_PAIR_SEEDS=<count per test>` (default 500 in each of 4 tests).

#[path = "protocol_pair/harness.rs"]
mod harness;

use ed25519_dalek::SigningKey;
use harness::{End, LinkFaults, MS, NODE, Pair, Record, SEC, Setup, Side, refusal_code};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sx_common::chain::{ChainHead, Checkpoint, SealedEvent};
use sx_common::codec::{DecodeError, WIRE_VERSION};
use sx_common::event::{Event, EventPayload, ReplayStarted};
use sx_common::protocol::{AgentConfig, AgentEvent, AggregatorConfig, AggregatorEvent, SessionEnd};
use sx_common::time::Timestamp;
use sx_common::wire::{self, AgentMessage, AggregatorMessage, MAX_FRAME_BYTES, RefusalCode};

fn at(pair: &Pair, after_us: i64) -> Timestamp {
    Timestamp(pair.now.0 + after_us)
}

/// Runs until every journal event is durable and acknowledged, or fails.
fn sync(pair: &mut Pair, within_us: i64) {
    let deadline = at(pair, within_us);
    if !pair.run_until(deadline, Pair::is_synced) {
        pair.fail(format!("not synced within {within_us}us"));
    }
    pair.assert_synced();
}

/// A pair that has synced `n` events over a clean link and is still
/// connected.
fn synced_pair(n: usize) -> Pair {
    let mut pair = Pair::new(7, Setup::quick());
    pair.append(n);
    pair.connect();
    sync(&mut pair, 5 * SEC);
    pair
}

/// `n` events of `node` chained onto `from`; `salt` changes their content.
fn chain(node: &str, from: ChainHead, n: u64, salt: u64) -> Vec<SealedEvent> {
    let mut prev = from;
    (0..n)
        .map(|i| {
            let e = SealedEvent::seal(Event {
                node_id: node.to_owned(),
                seq: prev.seq + 1,
                timestamp: Timestamp::from_secs(5_000 + i as i64),
                prev_hash: prev.hash,
                payload: EventPayload::ReplayStarted(ReplayStarted {
                    backlog: 1_000_000 + salt,
                }),
            });
            prev = ChainHead {
                seq: e.event.seq,
                hash: e.hash,
            };
            e
        })
        .collect()
}

fn batch_message(events: &[SealedEvent], checkpoint: Checkpoint) -> AgentMessage {
    AgentMessage::Batch {
        events: events.iter().map(|e| e.bytes.clone()).collect(),
        checkpoint,
    }
}

fn sign_last(key: &SigningKey, node: &str, events: &[SealedEvent]) -> Checkpoint {
    let last = events.last().expect("non-empty batch");
    Checkpoint::sign(key, node, last.event.seq, last.hash)
}

/// Runs until the live connection is gone (both ends closed).
fn run_until_closed(pair: &mut Pair, within_us: i64) {
    let deadline = at(pair, within_us);
    if !pair.run_until(deadline, |p| !p.is_connected()) {
        pair.fail("the connection did not close");
    }
}

/// The `(agent, aggregator)` ends of connection `conn`.
fn ends_of(pair: &Pair, conn: u64) -> (End, End) {
    let agent = pair.end_of(conn, Side::Agent).map(|e| e.end.clone());
    let aggregator = pair.end_of(conn, Side::Aggregator).map(|e| e.end.clone());
    match (agent, aggregator) {
        (Some(a), Some(b)) => (a, b),
        other => pair.fail(format!("connection {conn} ends: {other:?}")),
    }
}

/// Both sides ended connection `conn` with a refusal carrying `code`: the
/// aggregator refused, the agent was told.
fn assert_refused(pair: &Pair, conn: u64, code: RefusalCode, needle: &str) {
    let (agent, aggregator) = ends_of(pair, conn);
    match &aggregator {
        End::Session(SessionEnd::RefusedPeer { code: c, message }) if *c == code => {
            assert!(
                message.contains(needle),
                "aggregator's reason {message:?} lacks {needle:?}"
            );
        }
        other => panic!("aggregator end {other:?}, expected RefusedPeer {code:?}"),
    }
    match &agent {
        End::Session(SessionEnd::Refused { code: c, message }) if *c == code => {
            assert!(
                message.contains(needle),
                "agent's reason {message:?} lacks {needle:?}"
            );
        }
        other => panic!("agent end {other:?}, expected Refused {code:?}"),
    }
    assert_eq!(refusal_code(&agent), Some(code));
}

// ----------------------------------------------------------------------
// 1. A clean run.

#[test]
fn ten_thousand_events_sync_on_a_clean_link_within_the_window() {
    let mut setup = Setup::quick();
    setup.agent.batch_max_events = 100;
    setup.agent.window_events = 1_000;
    setup.record = false;
    let mut pair = Pair::new(1, setup);
    pair.append(10_000);
    pair.connect();
    let start = pair.now;
    // 10 windows of 1,000 events, one 10 ms round trip each: ~0.1 s.
    sync(&mut pair, SEC);
    let took = pair.now.0 - start.0;
    assert!(took < 500 * MS, "took {took}us of virtual time");
    assert!(pair.failures().is_empty(), "{:?}", pair.ends);
    // Every event went exactly once, and the window was the limit that
    // bound (the harness checks it is never exceeded on every transmit).
    assert_eq!(pair.stats.batches_sent, 100);
    assert_eq!(pair.stats.max_in_flight, 1_000);
    assert_eq!(pair.stats.duplicate_submits, 0);
    assert_eq!(pair.stats.rewinds_sent, 0);
    assert_eq!(pair.agent().map(|a| a.backlog()), Some(0));
}

// ----------------------------------------------------------------------
// 2. Random schedules.

/// One random schedule: random session tunables and link faults, crashes
/// and disconnects, events appended live; then the link heals and the pair
/// must converge. All safety checks run throughout (see the harness).
fn random_schedule(seed: u64) -> Pair {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let latency_min = rng.gen_range(0..=30 * MS);
    let setup = Setup {
        agent: AgentConfig {
            batch_max_events: rng.gen_range(1..=20),
            window_events: rng.gen_range(1..=100),
            heartbeat_interval_us: rng.gen_range(200 * MS..=2 * SEC),
            ack_timeout_us: rng.gen_range(300 * MS..=3 * SEC),
            idle_timeout_us: 8 * SEC,
            ..AgentConfig::default()
        },
        aggregator: AggregatorConfig {
            max_batch_events: 20,
            idle_timeout_us: 8 * SEC,
        },
        faults: LinkFaults {
            latency_min_us: latency_min,
            latency_max_us: latency_min + rng.gen_range(0..=200 * MS),
            drop: if rng.gen_bool(0.2) {
                0.0
            } else {
                rng.gen_range(0.0..0.3)
            },
            duplicate: if rng.gen_bool(0.2) {
                0.0
            } else {
                rng.gen_range(0.0..0.2)
            },
            reorder: rng.gen_bool(0.5),
            silent: false,
        },
        commit_delay_us: if rng.gen_bool(0.3) {
            (0, 0)
        } else {
            (0, rng.gen_range(0..=500 * MS))
        },
        journal_read_us: if rng.gen_bool(0.5) {
            (0, 0)
        } else {
            (0, rng.gen_range(0..=50 * MS))
        },
        reconnect_after_us: Some((0, rng.gen_range(0..=2 * SEC))),
        record: false,
    };
    let total = rng.gen_range(50..=300usize);
    let mut pending = total;
    let mut pair = Pair::new(seed, setup);
    let initial = rng.gen_range(0..=total);
    pair.append(initial);
    pending -= initial;
    pair.connect();

    let chaos_end = at(&pair, rng.gen_range(5..=40) * SEC);
    while pair.now < chaos_end {
        let next = at(&pair, rng.gen_range(0..=2 * SEC));
        pair.drive_until(next);
        match rng.gen_range(0..100) {
            0..60 => {
                let n = pending.min(rng.gen_range(1..=20));
                pair.append(n);
                pending -= n;
            }
            // Crash or disconnect, most often while batches are in flight
            // and commits pending.
            60..68 => {
                let n = pending.min(rng.gen_range(0..=5));
                pair.append(n);
                pending -= n;
                pair.drive_for(rng.gen_range(0..=300 * MS));
                if rng.gen_bool(0.5) {
                    pair.cut();
                } else {
                    pair.disconnect();
                }
            }
            _ => {}
        }
    }
    pair.append(pending);

    // Heal and converge.
    pair.setup.faults = LinkFaults::clean(10 * MS);
    sync(&mut pair, 600 * SEC);
    if !pair.failures().is_empty() {
        pair.fail(format!("an honest pair was refused: {:?}", pair.failures()));
    }
    pair
}

fn random_schedules(part: u64) {
    if let Ok(seed) = std::env::var("SX_PAIR_SEED") {
        if part == 0 {
            let seed = seed.parse().expect("SX_PAIR_SEED is a u64");
            eprintln!("{:?}", random_schedule(seed));
        }
        return;
    }
    let count: u64 = std::env::var("SX_PAIR_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    let mut totals = harness::Stats::default();
    for seed in part * count..(part + 1) * count {
        let pair = random_schedule(seed);
        totals.add(&pair.stats);
    }
    eprintln!(
        "schedules {}..{}: {totals:?}",
        part * count,
        (part + 1) * count
    );
    // The schedules did exercise what they are about (given enough of them).
    if count < 100 {
        return;
    }
    assert!(totals.connections > 2 * count, "{totals:?}");
    assert!(totals.lost_commits > 0, "{totals:?}");
    assert!(
        totals.frames_dropped > 0 && totals.frames_duplicated > 0,
        "{totals:?}"
    );
    assert!(
        totals.rewinds_sent > 0 && totals.duplicate_submits > 0,
        "{totals:?}"
    );
}

#[test]
fn random_schedules_converge_safely_part_0() {
    random_schedules(0);
}

#[test]
fn random_schedules_converge_safely_part_1() {
    random_schedules(1);
}

#[test]
fn random_schedules_converge_safely_part_2() {
    random_schedules(2);
}

#[test]
fn random_schedules_converge_safely_part_3() {
    random_schedules(3);
}

// ----------------------------------------------------------------------
// 3. An aggregator crash.

#[test]
fn a_crash_loses_only_unacknowledged_commits_and_the_agent_resends_them() {
    let mut setup = Setup::quick();
    setup.commit_delay_us = (500 * MS, 500 * MS);
    let mut pair = Pair::new(3, setup);
    pair.append(20);
    pair.connect();
    sync(&mut pair, 5 * SEC);
    let first = pair.conn_id().expect("connected");

    // 30 more reach the store but wait for their commit...
    pair.append(30);
    pair.drive_for(100 * MS);
    assert_eq!(pair.store.events.len(), 50, "all admitted (staged)");
    assert_eq!(pair.store.durable_len, 20);
    assert!(pair.store.pending_commits() > 0);
    assert_eq!(pair.acked.seq, 20);
    // ... when the aggregator crashes.
    pair.cut();
    assert_eq!(pair.store.events.len(), 20, "uncommitted work is lost");
    assert_eq!(pair.acked.seq, 20, "and was never acknowledged");
    let acked_beyond = pair.log.iter().any(|r| {
        matches!(r, Record::AgentEvent { event: AgentEvent::Acked { head }, .. } if head.seq > 20)
    });
    assert!(!acked_beyond, "the agent was told of events the crash lost");
    let sent_beyond = pair.log.iter().any(|r| {
        matches!(r, Record::AggregatorSent { conn, msg: AggregatorMessage::Ack { head }, .. }
            if *conn == first && head.seq > 20)
    });
    assert!(
        !sent_beyond,
        "the aggregator acknowledged events the crash lost"
    );

    pair.connect();
    let second = pair.conn_id().expect("reconnected");
    assert_ne!(first, second);
    sync(&mut pair, 5 * SEC);
    assert!(pair.failures().is_empty(), "{:?}", pair.ends);
    // The new session resumed from the durable head and resent the rest.
    let resumed = pair.log.iter().find_map(|r| match r {
        Record::AgentEvent {
            conn,
            event: AgentEvent::Resumed { durable, .. },
            ..
        } if *conn == second => Some(durable.seq),
        _ => None,
    });
    assert_eq!(resumed, Some(20));
    let resent_from_21 = pair.log.iter().any(|r| match r {
        Record::AgentSent {
            conn,
            msg: AgentMessage::Batch { events, checkpoint },
            ..
        } => *conn == second && checkpoint.seq + 1 - events.len() as u64 == 21,
        _ => false,
    });
    assert!(resent_from_21);
}

// ----------------------------------------------------------------------
// 4. Wire version and frame size.

#[test]
fn a_frame_of_another_wire_version_is_refused_with_a_clear_error_on_both_sides() {
    let mut pair = synced_pair(10);
    let conn = pair.conn_id().expect("connected");
    let before = pair.store.clone();
    let mut frame = wire::frame(&AgentMessage::Heartbeat {
        ping: 99,
        head: pair.journal_head(),
        rtt_ms: None,
        sent_at: pair.now,
    });
    frame[4..6].copy_from_slice(&(WIRE_VERSION + 1).to_be_bytes());
    pair.inject(Side::Aggregator, frame);
    run_until_closed(&mut pair, 2 * SEC);

    assert_eq!(
        pair.aggregator_decode_errors,
        vec![DecodeError::UnknownVersion {
            found: WIRE_VERSION + 1,
            expected: WIRE_VERSION
        }]
    );
    let needle = format!("unknown wire version {}", WIRE_VERSION + 1);
    assert_refused(&pair, conn, RefusalCode::WrongVersion, &needle);
    let (agent, _) = ends_of(&pair, conn);
    let End::Session(end) = agent else {
        panic!("agent end {agent:?}")
    };
    assert_eq!(
        end.to_string(),
        format!("refused by peer (wrong-version): {needle} (this build speaks {WIRE_VERSION})")
    );
    assert_eq!(pair.store.events, before.events);
}

#[test]
fn an_oversized_frame_is_refused_before_its_body_is_read() {
    let mut pair = synced_pair(10);
    let conn = pair.conn_id().expect("connected");
    let before = pair.store.clone();
    // Only a header: the length alone condemns it.
    let mut header = ((MAX_FRAME_BYTES + 1) as u32).to_be_bytes().to_vec();
    header.extend_from_slice(&WIRE_VERSION.to_be_bytes());
    pair.inject(Side::Aggregator, header);
    run_until_closed(&mut pair, 2 * SEC);

    assert_eq!(
        pair.aggregator_decode_errors,
        vec![DecodeError::Oversized {
            size: MAX_FRAME_BYTES + 1,
            limit: MAX_FRAME_BYTES
        }]
    );
    assert_refused(&pair, conn, RefusalCode::Oversized, "oversized input");
    assert_eq!(pair.store.events, before.events);
}

#[test]
fn an_aggregator_frame_of_another_version_ends_the_agent_with_a_clear_error() {
    let mut pair = synced_pair(10);
    let conn = pair.conn_id().expect("connected");
    let mut frame = wire::frame(&AggregatorMessage::Pong { ping: 1 });
    frame[4..6].copy_from_slice(&7u16.to_be_bytes());
    pair.inject(Side::Agent, frame);
    run_until_closed(&mut pair, 2 * SEC);

    let (agent, aggregator) = ends_of(&pair, conn);
    let expected = DecodeError::UnknownVersion {
        found: 7,
        expected: WIRE_VERSION,
    };
    assert_eq!(
        expected.to_string(),
        format!("unknown wire version 7 (this build speaks {WIRE_VERSION})")
    );
    assert_eq!(agent, End::Decode(expected));
    assert_eq!(aggregator, End::PeerClosed);
}

// ----------------------------------------------------------------------
// 5. Identity and verification: refused, and nothing stored.

#[test]
fn a_hello_naming_another_node_is_refused() {
    let mut pair = synced_pair(10);
    pair.disconnect();
    let before = pair.store.clone();
    pair.connect_as("n2");
    let conn = pair.conn_id().expect("connected");
    run_until_closed(&mut pair, 2 * SEC);
    assert_refused(&pair, conn, RefusalCode::IdentityMismatch, "\"n2\"");
    assert_eq!(pair.store.events, before.events);
    assert_eq!(pair.store.durable_len, before.durable_len);
}

/// Injects `msg` into a synced session and expects refusal with `code`,
/// the store unchanged.
fn assert_batch_refused(msg: AgentMessage, code: RefusalCode, needle: &str) {
    let mut pair = synced_pair(10);
    let conn = pair.conn_id().expect("connected");
    let before = pair.store.clone();
    pair.inject_to_aggregator(&msg);
    run_until_closed(&mut pair, 2 * SEC);
    assert_refused(&pair, conn, code, needle);
    assert_eq!(pair.store.events, before.events, "the store changed");
    assert_eq!(pair.store.durable_len, before.durable_len);
    assert_eq!(pair.store.pending_commits(), 0);
}

#[test]
fn a_batch_holding_another_nodes_event_is_refused() {
    let pair = synced_pair(10);
    let key = pair.key().clone();
    let foreign = chain("n2", pair.journal_head(), 2, 0);
    let msg = batch_message(&foreign, sign_last(&key, NODE, &foreign));
    assert_batch_refused(msg, RefusalCode::IdentityMismatch, "event of node \"n2\"");
}

#[test]
fn a_batch_with_another_nodes_checkpoint_is_refused() {
    let pair = synced_pair(10);
    let key = pair.key().clone();
    let events = chain(NODE, pair.journal_head(), 2, 0);
    let msg = batch_message(&events, sign_last(&key, "n2", &events));
    assert_batch_refused(
        msg,
        RefusalCode::IdentityMismatch,
        "checkpoint of node \"n2\"",
    );
}

#[test]
fn a_batch_signed_by_another_key_is_refused() {
    let pair = synced_pair(10);
    let events = chain(NODE, pair.journal_head(), 3, 0);
    let other_key = SigningKey::from_bytes(&[2; 32]);
    let msg = batch_message(&events, sign_last(&other_key, NODE, &events));
    assert_batch_refused(
        msg,
        RefusalCode::VerificationFailed,
        "bad checkpoint signature",
    );
}

#[test]
fn a_validly_signed_fork_is_refused() {
    let pair = synced_pair(10);
    let key = pair.key().clone();
    // Another history from seq 5 on, signed with the node's own key.
    let fork_point = ChainHead {
        seq: 4,
        hash: pair.journal[3].hash,
    };
    let fork = chain(NODE, fork_point, 8, 1);
    assert_ne!(fork[0].hash, pair.journal[4].hash);
    let msg = batch_message(&fork, sign_last(&key, NODE, &fork));
    assert_batch_refused(msg, RefusalCode::Fork, "fork at seq 5");
}

// ----------------------------------------------------------------------
// 6. Heartbeats.

#[test]
fn heartbeats_measure_rtt_carry_the_head_and_silence_times_out() {
    let mut setup = Setup::quick();
    setup.faults = LinkFaults::clean(20 * MS);
    let interval = setup.agent.heartbeat_interval_us;
    let idle = setup.agent.idle_timeout_us;
    assert_eq!(idle, setup.aggregator.idle_timeout_us);
    let mut pair = Pair::new(6, setup);
    pair.append(5);
    pair.connect();
    let conn = pair.conn_id().expect("connected");
    sync(&mut pair, 5 * SEC);

    // Idle and synced for 30 s: a heartbeat every interval, each answered.
    let from = pair.now;
    pair.drive_for(30 * SEC);
    let beats: Vec<i64> = pair
        .log
        .iter()
        .filter_map(|r| match r {
            Record::AgentSent {
                at,
                msg: AgentMessage::Heartbeat { .. },
                ..
            } if *at > from => Some(at.0),
            _ => None,
        })
        .collect();
    assert!(
        (29..=31).contains(&beats.len()),
        "{} heartbeats",
        beats.len()
    );
    assert!(
        beats.windows(2).all(|w| w[1] - w[0] == interval),
        "{beats:?}"
    );
    // One-way latency 20 ms: RTT 40 ms.
    let rtt = pair.last_rtt_ms.expect("an RTT was measured");
    assert!((40..=41).contains(&rtt), "rtt {rtt} ms");
    assert_eq!(pair.agent().and_then(|a| a.rtt_ms()), Some(rtt));
    let last_beat = pair.log.iter().rev().find_map(|r| match r {
        Record::AggregatorEvent {
            event: AggregatorEvent::Heartbeat { agent_head, rtt_ms },
            ..
        } => Some((*agent_head, *rtt_ms)),
        _ => None,
    });
    assert_eq!(last_beat, Some((pair.journal_head(), Some(rtt))));
    let heard = pair
        .log
        .iter()
        .filter(|r| {
            matches!(r, Record::AggregatorEvent { at, conn: c, event: AggregatorEvent::Heartbeat { .. } }
                if *at > from && *c == conn)
        })
        .count();
    assert!(
        heard + 1 >= beats.len(),
        "{heard} of {} heartbeats heard",
        beats.len()
    );

    // Batches lost, heartbeats not: the aggregator learns the agent's head
    // (its backlog) from heartbeats alone.
    pair.drop_to_aggregator = Some(Box::new(|m| matches!(m, AgentMessage::Batch { .. })));
    pair.append(3);
    pair.drive_for(interval + 100 * MS);
    assert_eq!(pair.store.events.len(), 5);
    assert_eq!(
        pair.aggregator().map(|a| a.agent_head()),
        Some(pair.journal_head())
    );
    pair.drop_to_aggregator = None;
    sync(&mut pair, 10 * SEC);

    // The link goes silent: both sides give up after the idle timeout.
    pair.setup.faults.silent = true;
    let silent_from = pair.now.0;
    run_until_closed(&mut pair, 2 * idle);
    assert!(pair.failures().is_empty(), "{:?}", pair.ends);
    for side in [Side::Agent, Side::Aggregator] {
        let ended = pair.end_of(conn, side).expect("ended");
        assert_eq!(ended.end, End::Session(SessionEnd::Timeout), "{side:?}");
        // Last heard at most one interval (plus latency) before the silence.
        let after = ended.at.0 - silent_from;
        assert!(
            after >= idle - interval - 20 * MS && after <= idle + 20 * MS,
            "{side:?} timed out {after}us after the silence began"
        );
    }
}

// ----------------------------------------------------------------------
// 7. Retransmission.

#[test]
fn a_lost_ack_is_recovered_by_retransmission_without_duplicates() {
    let setup = Setup::quick();
    let ack_timeout = setup.agent.ack_timeout_us;
    let mut pair = Pair::new(7, setup);
    let mut dropped = 0;
    pair.drop_to_agent = Some(Box::new(move |m| {
        // The first ack of the last batch (and any ack covering it).
        let last = matches!(m, AggregatorMessage::Ack { head } if head.seq == 50);
        if last && dropped == 0 {
            dropped += 1;
            return true;
        }
        false
    }));
    pair.append(50);
    pair.connect();
    sync(&mut pair, 10 * SEC);

    let sends_of_last: Vec<i64> = pair
        .log
        .iter()
        .filter_map(|r| match r {
            Record::AgentSent {
                at,
                msg: AgentMessage::Batch { events, checkpoint },
                ..
            } if checkpoint.seq == 50 => {
                assert_eq!(events.len(), 10, "resent from acked + 1 = 41");
                Some(at.0)
            }
            _ => None,
        })
        .collect();
    assert_eq!(sends_of_last.len(), 2, "sent, then resent once");
    let acked_40 = pair.log.iter().find_map(|r| match r {
        Record::AgentEvent {
            at,
            event: AgentEvent::Acked { head },
            ..
        } if head.seq == 40 => Some(at.0),
        _ => None,
    });
    // Resent exactly one ack timeout after the last progress.
    assert_eq!(Some(sends_of_last[1] - ack_timeout), acked_40);
    let acks_of_50 = pair
        .log
        .iter()
        .filter(|r| {
            matches!(r, Record::AggregatorSent { msg: AggregatorMessage::Ack { head }, .. }
                if head.seq == 50)
        })
        .count();
    assert_eq!(acks_of_50, 2, "acked, the ack lost, acked again");
    let lost_at = pair.log.iter().find_map(|r| match r {
        Record::AggregatorSent {
            at, dropped: true, ..
        } => Some(at.0),
        _ => None,
    });
    let lost_at = lost_at.expect("an ack was dropped");
    assert!(sends_of_last[0] < lost_at && lost_at < sends_of_last[1]);
    let dropped_batches = pair
        .log
        .iter()
        .filter(|r| matches!(r, Record::AgentSent { dropped: true, .. }))
        .count();
    assert_eq!(dropped_batches, 0);
    assert_eq!(
        pair.stats.duplicate_submits, 1,
        "the resend was deduplicated"
    );
    assert_eq!(pair.stats.submits, 6);
    assert!(pair.failures().is_empty(), "{:?}", pair.ends);
}

// ----------------------------------------------------------------------
// Regressions: cases the random schedules found.

/// A batch overtakes a lost one while earlier batches wait for their
/// commit: the store (admitting against its staged head) sends it back. The
/// `Rewind` must name the *committed* head, since the agent takes it as an
/// acknowledgement.
#[test]
fn a_rewind_never_acknowledges_uncommitted_events() {
    let mut setup = Setup::quick();
    setup.commit_delay_us = (SEC, SEC);
    let mut pair = Pair::new(8, setup);
    let mut dropped = false;
    pair.drop_to_aggregator = Some(Box::new(move |m| {
        let second = matches!(m, AgentMessage::Batch { checkpoint, .. } if checkpoint.seq == 20);
        let drop = second && !dropped;
        dropped |= drop;
        drop
    }));
    pair.append(30);
    pair.connect();
    sync(&mut pair, 10 * SEC);
    assert!(pair.stats.rewinds_sent > 0, "{:?}", pair.stats);
    let rewinds: Vec<u64> = pair
        .log
        .iter()
        .filter_map(|r| match r {
            Record::AggregatorSent {
                msg: AggregatorMessage::Rewind { durable },
                ..
            } => Some(durable.seq),
            _ => None,
        })
        .collect();
    // Events 1..=10 were staged, not committed, when 21..=30 arrived.
    assert_eq!(rewinds.first(), Some(&0), "{rewinds:?}");
    assert!(pair.failures().is_empty(), "{:?}", pair.ends);
}

/// The connection dies with commits still pending; they complete after the
/// new session's `Resume`, so the store's head runs ahead of anything this
/// connection sent, and a duplicate batch is acknowledged with it.
#[test]
fn an_ack_may_exceed_what_this_connection_sent() {
    let mut setup = Setup::quick();
    setup.agent.batch_max_events = 5;
    setup.agent.window_events = 20;
    setup.commit_delay_us = (SEC, SEC);
    let mut pair = Pair::new(9, setup);
    pair.append(20);
    pair.connect();
    pair.drive_for(100 * MS);
    assert_eq!(pair.store.events.len(), 20);
    assert_eq!(pair.store.durable_len, 0);
    pair.disconnect();
    pair.setup.agent.window_events = 5;
    pair.connect();
    sync(&mut pair, 10 * SEC);
    let conn = pair.conn_id().expect("connected");
    let acked: Vec<u64> = pair
        .log
        .iter()
        .filter_map(|r| match r {
            Record::AgentEvent {
                conn: c,
                event: AgentEvent::Acked { head },
                ..
            } if *c == conn => Some(head.seq),
            _ => None,
        })
        .collect();
    // Sent 1..=5 only (window 5), told 20 are held.
    assert_eq!(acked, vec![20]);
    assert!(pair.failures().is_empty(), "{:?}", pair.ends);
}

/// The handshake survives loss like the stream does: a lost `Hello` (its
/// heartbeats arriving first) and a lost `Resume` are both resent.
#[test]
fn a_lost_hello_or_resume_is_resent() {
    for lose_hello in [true, false] {
        let mut pair = Pair::new(10, Setup::quick());
        let mut dropped = false;
        if lose_hello {
            pair.drop_to_aggregator = Some(Box::new(move |m| {
                let drop = matches!(m, AgentMessage::Hello { .. }) && !dropped;
                dropped |= drop;
                drop
            }));
        } else {
            pair.drop_to_agent = Some(Box::new(move |m| {
                let drop = matches!(m, AggregatorMessage::Resume { .. }) && !dropped;
                dropped |= drop;
                drop
            }));
        }
        pair.append(10);
        pair.connect();
        sync(&mut pair, 10 * SEC);
        let hellos = pair
            .log
            .iter()
            .filter(|r| {
                matches!(
                    r,
                    Record::AgentSent {
                        msg: AgentMessage::Hello { .. },
                        ..
                    }
                )
            })
            .count();
        assert_eq!(hellos, 2, "lose_hello {lose_hello}");
        assert_eq!(pair.stats.connections, 1);
        assert!(pair.failures().is_empty(), "{:?}", pair.ends);
    }
}

/// Under reordering every out-of-order batch is answered with a `Rewind`;
/// each must not send the whole window again (whose own reordering would
/// cause more rewinds, each another window: 16,770 batches for these 300
/// events before the fix). One go-back per window; a resend lost or
/// overtaken again is the ack timeout's job.
#[test]
fn reordering_does_not_set_off_a_retransmission_storm() {
    let mut setup = Setup::quick();
    setup.agent.batch_max_events = 1;
    setup.agent.window_events = 50;
    setup.faults = LinkFaults {
        latency_min_us: MS,
        latency_max_us: 100 * MS,
        drop: 0.0,
        duplicate: 0.0,
        reorder: true,
        silent: false,
    };
    setup.record = false;
    let mut pair = Pair::new(11, setup);
    pair.append(300);
    pair.connect();
    pair.drive_for(20 * SEC);
    let reordered = pair.stats.clone();
    assert!(reordered.rewinds_sent > 0, "{reordered:?}");
    pair.setup.faults = LinkFaults::clean(10 * MS);
    sync(&mut pair, 60 * SEC);
    assert!(
        pair.stats.batches_sent <= 5 * 300,
        "{} batches for 300 events ({} while reordered)",
        pair.stats.batches_sent,
        reordered.batches_sent
    );
}
