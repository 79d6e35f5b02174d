//! The aggregator's ingest path stage by stage, in one process
//! (`cargo bench -p sx-aggregator --bench ingest`), to see where an event's
//! time goes: frame decode (postcard + canonical check + SHA-256), verify and
//! commit through `RedbStore::append`, the projection follower's apply, and
//! raw redb inserts of the same keys and values as the baseline, measured in
//! the same run. Prints figures; asserts nothing. `SX_BENCH_EVENTS` sets the
//! event count (default 300,000), in batches of 1,000 as agents send them.

use ed25519_dalek::SigningKey;
use std::time::{Duration, Instant};
use sx_aggregator::projection::ProjectionEngine;
use sx_aggregator::store::{EventStore, RedbStore, Submission};
use sx_common::chain::ChainHead;
use sx_common::chain::SealedEvent;
use sx_common::event::OperationalTransition;
use sx_common::event::SyncPath;
use sx_common::model::OperationalState;
use sx_common::wire::{self, AgentMessage};
use sx_common::{EventPayload, Timestamp};

const NODE: &str = "sx-rempart-2026-a1-node-00001";
const BATCH: usize = 1_000;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let total: usize = std::env::var("SX_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300_000);
    let key = SigningKey::from_bytes(&[7; 32]);
    let start = Timestamp::now();
    let events = sx_common::testing::seal_stream(
        NODE,
        ChainHead::default(),
        (0..total).map(|i| {
            (
                Timestamp(start.0 + i as i64),
                EventPayload::OperationalTransition(OperationalTransition {
                    from: OperationalState::InService,
                    to: OperationalState::InService,
                    reason: Some(format!("bench-{i}")),
                }),
            )
        }),
    );
    let batches = sx_common::testing::split_into_batches(&key, events, |i| (i + 1) % BATCH == 0);
    let frames: Vec<Vec<u8>> = batches
        .iter()
        .map(|b| {
            let body = wire::frame(&AgentMessage::Batch {
                events: b.events.iter().map(|e| e.bytes.clone()).collect(),
                checkpoint: b.checkpoint.clone(),
            });
            body[wire::FRAME_HEADER_BYTES..].to_vec()
        })
        .collect();
    let bytes: usize = frames.iter().map(Vec::len).sum();
    println!(
        "ingest stages: {total} events in {} batches of {BATCH}, {:.0} bytes/event on the wire",
        frames.len(),
        bytes as f64 / total as f64
    );
    let tmp = tempfile::tempdir().expect("tempdir");

    // Baseline: raw redb, one row per event with the same keys and values
    // as the store had before runs; and the same without fsync, to show
    // what the disk's share is.
    let raw = raw_redb(tmp.path(), "raw", &batches, redb::Durability::Immediate);
    report("raw redb inserts (baseline), 1000/txn", total, raw, raw);
    let no_sync = raw_redb(tmp.path(), "raw-nosync", &batches, redb::Durability::None);
    report("raw redb inserts, 1000/txn, no fsync", total, no_sync, raw);

    // 1a-d. The parts of the decode, one at a time.
    let t = Instant::now();
    let parts: Vec<AgentMessage> = frames
        .iter()
        .map(|f| wire::decode_body(f).expect("frame"))
        .collect();
    report("1a. frame body -> Vec<Vec<u8>>", total, t.elapsed(), raw);
    let bodies: Vec<&Vec<u8>> = parts
        .iter()
        .flat_map(|m| match m {
            AgentMessage::Batch { events, .. } => events.iter(),
            _ => panic!("not a batch"),
        })
        .collect();
    let t = Instant::now();
    let evs: Vec<sx_common::Event> = bodies
        .iter()
        .map(|b| sx_common::codec::decode_exact(b).expect("event"))
        .collect();
    report("1b. event decode", total, t.elapsed(), raw);
    let t = Instant::now();
    for (e, b) in evs.iter().zip(&bodies) {
        assert!(sx_common::chain::is_canonical(e, b));
    }
    report("1c. canonical check", total, t.elapsed(), raw);
    let t = Instant::now();
    for (e, b) in evs.iter().zip(&bodies) {
        std::hint::black_box(sx_common::chain::event_hash(&e.prev_hash, b));
    }
    report("1d. hash", total, t.elapsed(), raw);
    drop((bodies, evs));
    drop(parts);

    // 1. Frame body -> verified-hash SealedEvents, as a session does.
    let t = Instant::now();
    let mut decoded = Vec::with_capacity(frames.len());
    for f in &frames {
        let msg: AgentMessage = wire::decode_body(f).expect("frame");
        let AgentMessage::Batch { events, checkpoint } = msg else {
            panic!("not a batch")
        };
        let events: Vec<SealedEvent> = events
            .into_iter()
            .map(|b| SealedEvent::from_bytes(b).expect("event"))
            .collect();
        decoded.push((events, checkpoint));
    }
    report(
        "1. frame decode + canonical check + hash",
        total,
        t.elapsed(),
        raw,
    );

    // 2. Verify and commit, one submission per transaction.
    let store = RedbStore::open(tmp.path().join("store.redb")).expect("store");
    let now = Timestamp::now();
    let subs: Vec<Submission> = decoded
        .into_iter()
        .map(|(events, checkpoint)| Submission {
            node_id: NODE.into(),
            key: key.verifying_key(),
            cert_fingerprint: "bench".into(),
            events,
            checkpoint,
            via: SyncPath::Quic,
            received_at: now,
            news: true,
        })
        .collect();
    let t = Instant::now();
    for s in &subs {
        let v = store.append(std::slice::from_ref(s)).expect("append");
        assert!(v[0].is_ok(), "{:?}", v[0]);
    }
    report(
        "2. RedbStore::append (verify + commit)",
        total,
        t.elapsed(),
        raw,
    );

    // 3. The projection follower's apply of the committed batches.
    let mut engine = ProjectionEngine::new();
    let t = Instant::now();
    for s in &subs {
        std::hint::black_box(engine.apply(s.events.iter().map(|e| &e.event)));
    }
    report(
        "3. ProjectionEngine::apply per batch",
        total,
        t.elapsed(),
        raw,
    );
}

fn report(what: &str, events: usize, took: Duration, raw: Duration) {
    println!(
        "  {what:<44} {:>9.0} events/s  {:>6.0} ns/event  ({:.2}x raw redb time)",
        events as f64 / took.as_secs_f64(),
        took.as_nanos() as f64 / events as f64,
        took.as_secs_f64() / raw.as_secs_f64()
    );
}

/// Raw redb: one row per event ((node index, seq) → hash + bytes), a
/// transaction per batch, with the given durability.
fn raw_redb(
    dir: &std::path::Path,
    name: &str,
    batches: &[sx_common::testing::SignedBatch],
    durability: redb::Durability,
) -> Duration {
    const T: redb::TableDefinition<(u32, u64), &[u8]> = redb::TableDefinition::new("raw");
    let db = redb::Database::create(dir.join(format!("{name}.redb"))).expect("raw db");
    let t = Instant::now();
    let mut value = Vec::new();
    for b in batches {
        let mut txn = db.begin_write().expect("txn");
        txn.set_durability(durability).expect("durability");
        {
            let mut table = txn.open_table(T).expect("table");
            for e in &b.events {
                value.clear();
                value.extend_from_slice(&e.hash.0);
                value.extend_from_slice(&e.bytes);
                table
                    .insert((0, e.event.seq), value.as_slice())
                    .expect("insert");
            }
        }
        txn.commit().expect("commit");
    }
    t.elapsed()
}
