//! Durable append throughput of [`RedbJournal`] against raw redb inserts of
//! the same bytes, measured in the same run.
//!
//! `cargo bench -p sx-agent --bench journal`
//!
//! For each batch size (events per durable transaction) the bench runs
//! alternating rounds of
//! - **raw**: a fresh redb file, `TableDefinition<u64, &[u8]>`, one durable
//!   commit per batch inserting pre-encoded canonical event bytes;
//! - **journal**: a fresh [`RedbJournal`], one [`Journal::append`] per batch
//!   of the same payloads (encode, hash, sign, events + checkpoint rows,
//!   durable commit);
//!
//! and prints the median events/s of each and the ratio journal/raw.
//! Files live under Cargo's target tmp dir (a real disk, so fsync counts).
//! Set `SX_BENCH_ROUNDS` to change the number of rounds (default 3).

use ed25519_dalek::SigningKey;
use redb::{Database, TableDefinition};
use std::path::Path;
use std::time::{Duration, Instant};
use sx_agent::journal::{Journal, RedbJournal};
use sx_common::event::{ConnectivityTransition, Event};
use sx_common::model::ConnectivityState;
use sx_common::{Digest, EventPayload, SealedEvent, Span, Timestamp};

const NODE_ID: &str = "sx-rempart-2026-prod-1-node-42";
const RAW_TABLE: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("events");

/// (events per transaction, total events per round)
const CASES: [(usize, usize); 3] = [(1, 2_000), (100, 200_000), (1_000, 200_000)];

fn main() {
    let rounds: usize = std::env::var("SX_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let items: Vec<(Timestamp, EventPayload)> = (0..1_000u64)
        .map(|i| {
            (
                Timestamp::from_secs(1_772_163_900 + i as i64),
                sample_transition(i),
            )
        })
        .collect();
    let encoded = SealedEvent::seal(event(1, Digest::GENESIS, &items[0]))
        .bytes
        .len();
    println!(
        "payload: connectivity.state_transition, {encoded} bytes encoded; {rounds} rounds, median"
    );
    let start = Instant::now();
    let sample = canonical_stream(&items, 100_000);
    let per_event = start.elapsed().as_nanos() / sample.len() as u128;
    drop(sample);
    println!("cpu only: building + sealing one event costs ~{per_event} ns");
    println!(
        "{:>6} {:>9} {:>14} {:>14} {:>7}",
        "batch", "events", "raw ev/s", "journal ev/s", "ratio"
    );
    for (batch, total) in CASES {
        let raw_bytes = canonical_stream(&items, total);
        let mut raw = Vec::new();
        let mut journal = Vec::new();
        for _ in 0..rounds {
            let dir = tempfile::tempdir_in(base).expect("tempdir");
            raw.push(rate(
                total,
                raw_inserts(&dir.path().join("raw.redb"), &raw_bytes, batch),
            ));
            journal.push(rate(
                total,
                journal_appends(&dir.path().join("journal.redb"), &items, total, batch),
            ));
        }
        let (raw, journal) = (median(raw), median(journal));
        println!(
            "{batch:>6} {total:>9} {raw:>14.0} {journal:>14.0} {:>7.2}",
            journal / raw
        );
    }
}

fn journal_appends(
    path: &Path,
    items: &[(Timestamp, EventPayload)],
    total: usize,
    batch: usize,
) -> Duration {
    let key = SigningKey::from_bytes(&[7; 32]);
    let mut journal = RedbJournal::create(path, NODE_ID, key).expect("create journal");
    let start = Instant::now();
    for _ in 0..total / batch {
        journal.append(&items[..batch]).expect("append");
    }
    let elapsed = start.elapsed();
    assert_eq!(journal.head().seq, (total / batch * batch) as u64);
    elapsed
}

fn raw_inserts(path: &Path, events: &[Vec<u8>], batch: usize) -> Duration {
    let db = Database::create(path).expect("create raw db");
    let txn = db.begin_write().expect("begin");
    txn.open_table(RAW_TABLE).expect("table");
    txn.commit().expect("commit");
    let start = Instant::now();
    for (chunk_index, chunk) in events.chunks(batch).enumerate() {
        let txn = db.begin_write().expect("begin");
        {
            let mut table = txn.open_table(RAW_TABLE).expect("table");
            for (i, bytes) in chunk.iter().enumerate() {
                let seq = (chunk_index * batch + i + 1) as u64;
                table.insert(seq, bytes.as_slice()).expect("insert");
            }
        }
        txn.commit().expect("commit");
    }
    start.elapsed()
}

/// The canonical bytes the journal would write for `total` events cycling
/// through `items`.
fn canonical_stream(items: &[(Timestamp, EventPayload)], total: usize) -> Vec<Vec<u8>> {
    let mut prev = Digest::GENESIS;
    (0..total)
        .map(|i| {
            let sealed = SealedEvent::seal(event(i as u64 + 1, prev, &items[i % items.len()]));
            prev = sealed.hash;
            sealed.bytes
        })
        .collect()
}

fn event(seq: u64, prev_hash: Digest, (timestamp, payload): &(Timestamp, EventPayload)) -> Event {
    Event {
        node_id: NODE_ID.to_owned(),
        seq,
        timestamp: *timestamp,
        prev_hash,
        payload: payload.clone(),
    }
}

/// A realistic connectivity transition (the shape the connectivity state
/// machine records).
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

fn rate(events: usize, elapsed: Duration) -> f64 {
    events as f64 / elapsed.as_secs_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
