//! Durable append throughput of [`RedbJournal`] against raw redb inserts of
//! the same bytes, measured in the same run.
//!
//! `cargo bench -p sx-agent --bench journal`
//!
//! For each batch size (events per durable transaction) each round writes,
//! alternating one transaction at a time:
//! - **raw**: a fresh redb file, `TableDefinition<u64, &[u8]>`, one durable
//!   commit per batch inserting pre-encoded canonical event bytes;
//! - **journal**: a fresh [`RedbJournal`], one [`Journal::append_owned`] per batch
//!   of the same payloads, handed over by value as the daemon's
//!   `JournalHandle` does (built before the clock starts, like the raw
//!   side's bytes); timed: encode, hash, sign, the run row(s) of the
//!   batch + a checkpoint row, durable commit; the returned events are
//!   dropped untimed;
//!
//! and prints the events/s of each over all rounds, their ratio
//! (journal/raw), and the median over all transaction pairs of the
//! per-pair ratio (robust to a stall hitting one side). Alternating per
//! transaction pairs the two under the same conditions, which matters on a
//! shared machine where other processes' CPU and fsync load drift over
//! seconds.
//!
//! Files live under Cargo's target tmp dir (a real disk, so fsync counts).
//! `SX_BENCH_ROUNDS` sets the number of rounds (default 3); `SX_BENCH_BATCH`
//! runs only the case of that batch size (for profiling).

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
        "payload: connectivity.state_transition, {encoded} bytes encoded; {rounds} paired rounds"
    );
    let start = Instant::now();
    let sample = canonical_stream(&items, 100_000, items.len());
    let per_event = start.elapsed().as_nanos() / sample.len() as u128;
    drop(sample);
    println!("cpu only: building + sealing one event costs ~{per_event} ns");
    println!(
        "{:>6} {:>9} {:>14} {:>14} {:>7} {:>9}",
        "batch", "events", "raw ev/s", "journal ev/s", "ratio", "pair med"
    );
    let only: Option<usize> = std::env::var("SX_BENCH_BATCH")
        .ok()
        .and_then(|b| b.parse().ok());
    for (batch, total) in CASES {
        if only.is_some_and(|only| only != batch) {
            continue;
        }
        let raw_bytes = canonical_stream(&items, total, batch);
        let (mut raw, mut journal, mut pairs) = (Duration::ZERO, Duration::ZERO, Vec::new());
        for _ in 0..rounds {
            let dir = tempfile::tempdir_in(base).expect("tempdir");
            for (r, j) in paired_round(dir.path(), &items, &raw_bytes, batch) {
                raw += r;
                journal += j;
                pairs.push(r.as_secs_f64() / j.as_secs_f64());
            }
        }
        let events = total * rounds;
        let (raw_rate, journal_rate) = (rate(events, raw), rate(events, journal));
        println!(
            "{batch:>6} {total:>9} {raw_rate:>14.0} {journal_rate:>14.0} {:>7.2} {:>9.2}",
            journal_rate / raw_rate,
            median(pairs)
        );
    }
}

/// One round: a fresh raw redb file and a fresh journal, written in
/// alternation, one durable transaction each in turn. Returns the time of
/// each (raw transaction, journal append) pair.
fn paired_round(
    dir: &Path,
    items: &[(Timestamp, EventPayload)],
    raw_bytes: &[Vec<u8>],
    batch: usize,
) -> Vec<(Duration, Duration)> {
    let db = Database::create(dir.join("raw.redb")).expect("create raw db");
    let txn = db.begin_write().expect("begin");
    txn.open_table(RAW_TABLE).expect("table");
    txn.commit().expect("commit");
    let key = SigningKey::from_bytes(&[7; 32]);
    let mut journal =
        RedbJournal::create(dir.join("journal.redb"), NODE_ID, key).expect("create journal");

    let mut pairs = Vec::with_capacity(raw_bytes.len() / batch);
    for (chunk_index, chunk) in raw_bytes.chunks(batch).enumerate() {
        let start = Instant::now();
        let txn = db.begin_write().expect("begin");
        {
            let mut table = txn.open_table(RAW_TABLE).expect("table");
            for (i, bytes) in chunk.iter().enumerate() {
                let seq = (chunk_index * batch + i + 1) as u64;
                table.insert(seq, bytes.as_slice()).expect("insert");
            }
        }
        txn.commit().expect("commit");
        let raw = start.elapsed();

        let payloads = items[..chunk.len()].to_vec();
        let start = Instant::now();
        let outcome = journal.append_owned(payloads).expect("append");
        pairs.push((raw, start.elapsed()));
        // Same bytes on both sides (checked outside the timed part).
        assert_eq!(outcome.events.last().map(|e| &e.bytes), chunk.last());
    }
    assert_eq!(journal.head().seq, raw_bytes.len() as u64);
    pairs
}

/// Exactly the canonical bytes the journal writes for `total` events
/// appended `batch` at a time, each append taking `items[..batch]`.
fn canonical_stream(
    items: &[(Timestamp, EventPayload)],
    total: usize,
    batch: usize,
) -> Vec<Vec<u8>> {
    let mut prev = Digest::GENESIS;
    (0..total)
        .map(|i| {
            let sealed = SealedEvent::seal(event(i as u64 + 1, prev, &items[i % batch]));
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
