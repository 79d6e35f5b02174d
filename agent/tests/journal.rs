//! The redb journal against real files: appends, reads, checkpoints, marks,
//! pruning, reopening and tampering.

use ed25519_dalek::SigningKey;
use redb::{Database, ReadableDatabase};
use std::path::{Path, PathBuf};
use sx_agent::journal::{Journal, JournalError, RUNS_TABLE, RedbJournal};
use sx_common::codec::MAX_EVENT_BYTES;
use sx_common::event::{Event, Note, ReplayStarted};
use sx_common::run::Run;
use sx_common::{ChainHead, Digest, EventPayload, SealedEvent, Span, Timestamp, VerifyError};

const NODE: &str = "sx-rempart-2026-prod-1-node-42";
const DAY: i64 = 86_400;

fn random_key() -> SigningKey {
    SigningKey::from_bytes(&rand::random::<[u8; 32]>())
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    key: SigningKey,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("journal.redb");
        Fixture {
            _dir: dir,
            path,
            key: random_key(),
        }
    }

    fn create(&self) -> RedbJournal {
        RedbJournal::create(&self.path, NODE, self.key.clone()).expect("create")
    }

    fn open(&self) -> RedbJournal {
        RedbJournal::open(&self.path, self.key.clone()).expect("open")
    }
}

fn payload(n: u64) -> EventPayload {
    EventPayload::ReplayStarted(ReplayStarted { backlog: n })
}

/// `count` items at `at`.
fn items(count: u64, at: Timestamp) -> Vec<(Timestamp, EventPayload)> {
    (0..count).map(|i| (at, payload(i))).collect()
}

fn now() -> Timestamp {
    Timestamp::from_secs(1_772_163_900)
}

/// A moment after every event of the tests.
fn later() -> Timestamp {
    Timestamp::from_secs(now().as_secs() + 1)
}

fn hash_at(journal: &RedbJournal, seq: u64) -> Digest {
    journal.read_range(seq, 1).expect("read")[0].hash
}

#[test]
fn appends_single_and_batches_and_reads_ranges() {
    let fx = Fixture::new();
    let mut journal = fx.create();
    assert_eq!(journal.head(), ChainHead::default());
    assert_eq!(journal.node_id(), NODE);

    let one = journal.append(&items(1, now())).expect("append 1");
    assert_eq!(one.events.len(), 1);
    assert_eq!(one.events[0].event.seq, 1);
    assert_eq!(one.events[0].event.prev_hash, Digest::GENESIS);
    let five = journal.append(&items(5, now())).expect("append 5");
    let per_item: Vec<_> = (0..3)
        .map(|i| (Timestamp::from_secs(1_000 + i), payload(100 + i as u64)))
        .collect();
    let three = journal.append(&per_item).expect("append 3");
    assert_eq!(journal.head().seq, 9);
    assert_eq!(journal.head(), three.head());
    assert_eq!(three.events[1].event.timestamp, Timestamp::from_secs(1_001));

    let all = journal.read_range(1, 100).expect("read all");
    let appended: Vec<SealedEvent> = [one.events, five.events, three.events].concat();
    assert_eq!(all, appended, "read back exactly what was appended");
    let mut prev = Digest::GENESIS;
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.event.seq, i as u64 + 1);
        assert_eq!(e.event.node_id, NODE);
        assert_eq!(e.event.prev_hash, prev);
        assert_eq!(
            *e,
            SealedEvent::from_bytes(e.bytes.clone()).expect("decodes")
        );
        prev = e.hash;
    }
    let middle = journal.read_range(4, 3).expect("read middle");
    assert_eq!(
        middle.iter().map(|e| e.event.seq).collect::<Vec<_>>(),
        [4, 5, 6]
    );
    assert!(journal.read_range(10, 5).expect("past head").is_empty());
    assert!(journal.read_range(1, 0).expect("max 0").is_empty());

    // The same after reopening.
    drop(journal);
    let journal = fx.open();
    assert_eq!(journal.head().seq, 9);
    assert_eq!(journal.read_range(0, 100).expect("read"), appended);
}

#[test]
fn payloads_by_value_or_by_reference_append_the_same_events() {
    let (by_ref, by_value) = (Fixture::new(), Fixture::new());
    let by_value = Fixture {
        key: by_ref.key.clone(),
        ..by_value
    };
    let (mut a, mut b) = (by_ref.create(), by_value.create());
    for count in [1, 7, 3] {
        let batch = items(count, now());
        let borrowed = a.append(&batch).expect("append borrowed");
        let owned = b.append_owned(batch).expect("append owned");
        assert_eq!(borrowed, owned);
    }
    assert_eq!(
        a.read_range(1, 100).expect("read"),
        b.read_range(1, 100).expect("read")
    );
    b.verify().expect("verifies");
}

#[test]
fn every_transaction_ends_with_a_signed_checkpoint() {
    let fx = Fixture::new();
    let mut journal = fx.create();
    let vk = fx.key.verifying_key();
    for size in [1, 5, 3] {
        let outcome = journal.append(&items(size, now())).expect("append");
        let last = outcome.events.last().expect("events");
        assert_eq!(outcome.checkpoint.seq, last.event.seq);
        assert_eq!(outcome.checkpoint.head, last.hash);
        outcome
            .checkpoint
            .verify_signature(&vk)
            .expect("signed by the node key");
    }
    let seqs = |cps: Vec<sx_common::Checkpoint>| cps.iter().map(|c| c.seq).collect::<Vec<_>>();
    assert_eq!(journal.checkpoint_count().expect("count"), 3);
    assert_eq!(seqs(journal.checkpoints(1, 9).expect("cps")), [1, 6, 9]);
    assert_eq!(seqs(journal.checkpoints(2, 6).expect("cps")), [6]);
    // A batch ending at 7 must be closed by the checkpoint at 9.
    assert_eq!(seqs(journal.checkpoints(2, 7).expect("cps")), [6, 9]);
    assert_eq!(seqs(journal.checkpoints(7, 7).expect("cps")), [9]);
    assert_eq!(seqs(journal.checkpoints(8, 3).expect("cps")), [6]);
    assert!(journal.checkpoints(10, 20).expect("cps").is_empty());
    assert_eq!(
        journal
            .checkpoint_at_or_after(7)
            .expect("cp")
            .map(|c| c.seq),
        Some(9)
    );
    assert_eq!(
        journal
            .checkpoint_at_or_after(6)
            .expect("cp")
            .map(|c| c.seq),
        Some(6)
    );
    assert!(journal.checkpoint_at_or_after(10).expect("cp").is_none());
    for cp in journal.checkpoints(0, 9).expect("cps") {
        assert_eq!(cp.node_id, NODE);
        assert_eq!(cp.head, hash_at(&journal, cp.seq));
        cp.verify_signature(&vk)
            .expect("stored checkpoint verifies");
    }
    let report = journal.verify().expect("verifies");
    assert_eq!((report.events, report.checkpoints), (9, 3));
    assert_eq!(report.head, journal.head());
}

#[test]
fn refused_appends_change_nothing() {
    let fx = Fixture::new();
    let mut journal = fx.create();
    journal.append(&items(2, now())).expect("append");
    let head = journal.head();
    assert!(matches!(
        journal.append(&[]),
        Err(JournalError::EmptyAppend)
    ));
    assert!(matches!(
        journal.append_owned(Vec::new()),
        Err(JournalError::EmptyAppend)
    ));
    let huge = EventPayload::ConnectionLost(Note {
        reason: Some("x".repeat(MAX_EVENT_BYTES)),
    });
    let mut batch = items(3, now());
    batch.push((now(), huge));
    assert!(matches!(
        journal.append(&batch),
        Err(JournalError::EventTooLarge { .. })
    ));
    assert_eq!(journal.head(), head);
    assert_eq!(journal.read_range(1, 100).expect("read").len(), 2);
    assert_eq!(journal.checkpoint_count().expect("count"), 1);
    // The chain continues from the unchanged head.
    let next = journal.append(&items(1, now())).expect("append");
    assert_eq!(next.events[0].event.seq, 3);
    assert_eq!(next.events[0].event.prev_hash, head.hash);
    journal.verify().expect("verifies");
}

#[test]
fn marks_are_checked_monotonic_and_durable() {
    let fx = Fixture::new();
    let mut journal = fx.create();
    journal.append(&items(8, now())).expect("append");
    let (h3, h5) = (hash_at(&journal, 3), hash_at(&journal, 5));

    journal.set_acked(5, h5).expect("ack 5");
    assert_eq!(
        (journal.marks().acked_seq, journal.marks().acked_hash),
        (5, h5)
    );
    journal.set_acked(3, h3).expect("lower ack is ignored");
    assert_eq!(journal.marks().acked_seq, 5);
    assert!(matches!(
        journal.set_acked(9, Digest([1; 32])),
        Err(JournalError::AckBeyondHead { seq: 9, head: 8 })
    ));
    let err = journal.set_acked(6, h5).expect_err("wrong hash");
    assert!(
        matches!(err, JournalError::AckHashMismatch { seq: 6, offered, .. } if offered == h5),
        "{err}"
    );
    assert!(matches!(
        journal.set_acked(3, h5),
        Err(JournalError::AckHashMismatch { seq: 3, .. })
    ));
    assert_eq!(journal.marks().acked_seq, 5);
    let head = journal.head();
    journal.set_acked(head.seq, head.hash).expect("ack head");

    journal.set_exported(4).expect("export 4");
    journal.set_exported(2).expect("lower export is ignored");
    assert!(matches!(
        journal.set_exported(9),
        Err(JournalError::AckBeyondHead { .. })
    ));
    journal.set_receipted(3, h3).expect("receipt 3");
    assert!(matches!(
        journal.set_receipted(5, h3),
        Err(JournalError::AckHashMismatch { .. })
    ));

    let marks = journal.marks();
    assert_eq!(marks.acked_seq, 8);
    assert_eq!(marks.exported_seq, 4);
    assert_eq!((marks.receipted_seq, marks.receipted_hash), (3, h3));
    assert_eq!(marks.first_held_seq, 1);
    assert_eq!(marks.backlog(journal.head()), 0);
    drop(journal);
    assert_eq!(fx.open().marks(), marks, "marks survive reopening");
}

#[test]
fn prune_respects_marks_and_retention_and_the_chain_still_verifies() {
    let fx = Fixture::new();
    let mut journal = fx.create();
    let old = Timestamp::from_secs(now().as_secs() - 2 * DAY);
    journal.append(&items(4, old)).expect("old events 1..=4");
    journal.append(&items(2, old)).expect("old events 5..=6");
    journal.append(&items(2, now())).expect("new events 7..=8");
    journal.append(&items(1, now())).expect("new event 9");
    let retention = Span::from_secs(DAY as u64);

    assert_eq!(
        journal.prune(now(), retention).expect("prune"),
        0,
        "nothing delivered"
    );
    journal.set_acked(4, hash_at(&journal, 4)).expect("ack 4");
    assert_eq!(journal.prune(now(), retention).expect("prune"), 4);
    let marks = journal.marks();
    assert_eq!(marks.first_held_seq, 5);
    assert_eq!(journal.pruned_head().seq, 4);
    assert!(matches!(
        journal.read_range(3, 10),
        Err(JournalError::Pruned {
            requested: 3,
            first_held: 5
        })
    ));
    assert_eq!(journal.read_range(5, 10).expect("held").len(), 5);
    // The checkpoint at 6 still covers 5..=6.
    assert_eq!(journal.checkpoint_count().expect("count"), 3);
    journal
        .verify()
        .expect("verifies from the first held event");

    // An ack inside an append's run prunes none of it: runs go whole.
    journal.set_acked(5, hash_at(&journal, 5)).expect("ack 5");
    assert_eq!(journal.prune(now(), retention).expect("prune"), 0);
    assert_eq!(journal.marks().first_held_seq, 5, "5..=6 still held");
    assert_eq!(journal.read_range(5, 1).expect("held")[0].event.seq, 5);

    // A receipt takes over as the limit; 7.. are inside the retention window.
    journal
        .set_receipted(8, hash_at(&journal, 8))
        .expect("receipt 8");
    assert_eq!(journal.prune(now(), retention).expect("prune"), 2);
    assert_eq!(journal.marks().first_held_seq, 7);
    // With no retention, up to the receipt (not beyond: 9 is undelivered).
    assert_eq!(journal.prune(later(), Span::ZERO).expect("prune"), 2);
    assert_eq!(journal.marks().first_held_seq, 9);
    assert_eq!(journal.read_range(9, 10).expect("held").len(), 1);
    journal.verify().expect("verifies");

    // Appends continue on the chain; the state survives reopening.
    journal.append(&items(2, now())).expect("append");
    drop(journal);
    let mut journal = fx.open();
    assert_eq!(journal.head().seq, 11);
    assert_eq!(journal.marks().first_held_seq, 9);
    let report = journal.verify().expect("verifies after reopen");
    assert_eq!((report.first_held_seq, report.events), (9, 3));

    // Prune everything: the head is kept as the pruned mark.
    let head = journal.head();
    journal.set_acked(head.seq, head.hash).expect("ack head");
    assert_eq!(journal.prune(later(), Span::ZERO).expect("prune all"), 3);
    assert!(journal.read_range(12, 10).expect("nothing held").is_empty());
    assert_eq!(journal.checkpoint_count().expect("count"), 0);
    drop(journal);
    let mut journal = fx.open();
    assert_eq!(journal.head(), head);
    assert_eq!(journal.marks().first_held_seq, 12);
    let next = journal
        .append(&items(1, now()))
        .expect("append after full prune");
    assert_eq!(next.events[0].event.seq, 12);
    assert_eq!(next.events[0].event.prev_hash, head.hash);
    journal.verify().expect("verifies");
}

#[test]
fn prune_stops_at_the_first_event_inside_the_window() {
    let fx = Fixture::new();
    let mut journal = fx.create();
    let old = Timestamp::from_secs(now().as_secs() - 2 * DAY);
    journal.append(&items(2, old)).expect("old");
    journal.append(&items(1, now())).expect("young");
    journal
        .append(&items(2, old))
        .expect("old again (clock stepped back)");
    let head = journal.head();
    journal.set_acked(head.seq, head.hash).expect("ack all");
    assert_eq!(
        journal
            .prune(now(), Span::from_secs(DAY as u64))
            .expect("prune"),
        2
    );
    assert_eq!(journal.marks().first_held_seq, 3, "no gap is ever made");
    journal.verify().expect("verifies");
}

#[test]
fn open_checks_identity_and_key() {
    let fx = Fixture::new();
    fx.create().append(&items(1, now())).expect("append");
    assert!(matches!(
        RedbJournal::open(&fx.path, random_key()),
        Err(JournalError::KeyMismatch)
    ));
    let err = RedbJournal::create(&fx.path, "other-node", fx.key.clone()).expect_err("exists");
    assert!(
        matches!(&err, JournalError::AlreadyInitialised { node_id } if node_id == NODE),
        "{err}"
    );
    assert_eq!(fx.open().head().seq, 1, "refusals changed nothing");

    let plain = fx.path.with_file_name("plain.redb");
    Database::create(&plain).expect("plain redb");
    assert!(matches!(
        RedbJournal::open(&plain, fx.key.clone()),
        Err(JournalError::NotInitialised)
    ));
    assert!(matches!(
        RedbJournal::open(fx.path.with_file_name("missing.redb"), fx.key.clone()),
        Err(JournalError::Database(_))
    ));
}

/// The stored runs: (first seq, the events' bytes), in key order.
fn stored_runs(path: &Path) -> Vec<(u64, Vec<Vec<u8>>)> {
    let db = Database::open(path).expect("open redb directly");
    let txn = db.begin_read().expect("read");
    let table = txn.open_table(RUNS_TABLE).expect("table");
    table
        .range(0..)
        .expect("range")
        .map(|row| {
            let (first, value) = row.expect("row");
            let run = Run::parse(value.value()).expect("run");
            let entries = (0..run.len())
                .map(|i| run.entry(i).expect("entry").to_vec())
                .collect();
            (first.value(), entries)
        })
        .collect()
}

/// Writes the raw row of the run keyed `first` (`None` deletes it).
fn write_run_row(path: &Path, first: u64, row: Option<Vec<u8>>) {
    let db = Database::open(path).expect("open redb directly");
    let txn = db.begin_write().expect("write");
    {
        let mut table = txn.open_table(RUNS_TABLE).expect("table");
        match row {
            Some(row) => table.insert(first, row.as_slice()).map(drop),
            None => table.remove(first).map(drop),
        }
        .expect("write row");
    }
    txn.commit().expect("commit");
}

fn encode_run(entries: &[Vec<u8>]) -> Vec<u8> {
    sx_common::run::encode(entries, Vec::len, |e, out| out.extend_from_slice(e))
}

/// Rewrites the stored bytes of event `seq` (inside its run) with `edit`
/// applied to them.
fn tamper(path: &Path, seq: u64, edit: impl FnOnce(Vec<u8>) -> Vec<u8>) {
    let (first, mut entries) = stored_runs(path)
        .into_iter()
        .rev()
        .find(|(first, _)| *first <= seq)
        .expect("run holding seq");
    let i = (seq - first) as usize;
    entries[i] = edit(std::mem::take(&mut entries[i]));
    write_run_row(path, first, Some(encode_run(&entries)));
}

/// Re-encodes an event with a changed payload, keeping its seq and prev_hash.
fn forged(bytes: Vec<u8>) -> Vec<u8> {
    let mut event: Event = postcard::from_bytes(&bytes).expect("decode");
    event.payload = payload(999);
    SealedEvent::seal(event).bytes
}

fn tampered_fixture() -> Fixture {
    let fx = Fixture::new();
    let mut journal = fx.create();
    journal.append(&items(4, now())).expect("1..=4");
    journal.append(&items(4, now())).expect("5..=8");
    journal.verify().expect("verifies before tampering");
    fx
}

#[test]
fn a_forged_payload_breaks_the_chain() {
    let fx = tampered_fixture();
    tamper(&fx.path, 2, forged);
    let err = fx.open().verify().expect_err("tampered");
    assert!(
        matches!(
            err,
            JournalError::Verify {
                seq: 4,
                source: VerifyError::WrongPrevHash { seq: 3 }
            }
        ),
        "{err}"
    );
}

#[test]
fn a_forged_segment_end_no_longer_matches_its_checkpoint() {
    let fx = tampered_fixture();
    tamper(&fx.path, 4, forged);
    let err = fx.open().verify().expect_err("tampered");
    assert!(
        matches!(
            err,
            JournalError::Verify {
                seq: 4,
                source: VerifyError::CheckpointMismatch { .. }
            }
        ),
        "{err}"
    );
}

#[test]
fn garbage_bytes_do_not_decode() {
    let fx = tampered_fixture();
    tamper(&fx.path, 6, |mut bytes| {
        bytes.truncate(bytes.len() / 2);
        bytes
    });
    let err = fx.open().verify().expect_err("tampered");
    assert!(matches!(err, JournalError::Decode { seq: 6, .. }), "{err}");
}

#[test]
fn an_event_moved_to_another_seq_is_caught() {
    let fx = tampered_fixture();
    let mut five = Vec::new();
    tamper(&fx.path, 5, |bytes| {
        five = bytes.clone();
        bytes
    });
    tamper(&fx.path, 6, |_| five);
    let err = fx.open().verify().expect_err("tampered");
    assert!(
        matches!(
            err,
            JournalError::Verify {
                seq: 6,
                source: VerifyError::Gap {
                    expected: 6,
                    got: 5
                }
            }
        ),
        "{err}"
    );
}

#[test]
fn a_forged_head_is_refused_at_open() {
    let fx = tampered_fixture();
    tamper(&fx.path, 8, forged);
    let err = RedbJournal::open(&fx.path, fx.key.clone()).expect_err("head forged");
    assert!(
        matches!(
            err,
            JournalError::Verify {
                seq: 8,
                source: VerifyError::CheckpointMismatch { .. }
            }
        ),
        "{err}"
    );
}

#[test]
fn a_deleted_run_is_a_gap() {
    let fx = tampered_fixture();
    write_run_row(&fx.path, 1, None);
    let err = fx.open().verify().expect_err("tampered");
    assert!(
        matches!(
            err,
            JournalError::Verify {
                seq: 4,
                source: VerifyError::Gap {
                    expected: 1,
                    got: 5
                }
            }
        ),
        "{err}"
    );
}

#[test]
fn an_overlapping_run_is_caught() {
    let fx = tampered_fixture();
    let runs = stored_runs(&fx.path);
    assert_eq!(
        runs.iter()
            .map(|(first, e)| (*first, e.len()))
            .collect::<Vec<_>>(),
        [(1, 4), (5, 4)],
        "one run per append"
    );
    // A copy of 3..=4 stored again as a run of its own.
    write_run_row(&fx.path, 3, Some(encode_run(&runs[0].1[2..])));
    let err = fx.open().verify().expect_err("tampered");
    assert!(
        matches!(
            err,
            JournalError::Verify {
                seq: 8,
                source: VerifyError::Gap {
                    expected: 5,
                    got: 3
                }
            }
        ),
        "{err}"
    );
}

#[test]
fn every_damaged_run_fails_open_or_verify() {
    let fx = tampered_fixture();
    for first in [1, 5] {
        let db = Database::open(&fx.path).expect("open redb directly");
        let row = {
            let txn = db.begin_read().expect("read");
            let table = txn.open_table(RUNS_TABLE).expect("table");
            table
                .get(first)
                .expect("get")
                .expect("run")
                .value()
                .to_vec()
        };
        drop(db);
        let check = |damaged: Vec<u8>, what: &str| {
            write_run_row(&fx.path, first, Some(damaged));
            let outcome = RedbJournal::open(&fx.path, fx.key.clone()).and_then(|j| j.verify());
            assert!(outcome.is_err(), "run {first} {what} went unnoticed");
        };
        for cut in 0..row.len() {
            check(row[..cut].to_vec(), &format!("cut at {cut}"));
        }
        // Every bit of the count and offset table, one bit of every
        // entry byte (each check is a durable commit and two opens).
        let header = 4 + 4 * 4;
        for i in 0..row.len() {
            for bit in 0..if i < header { 8 } else { 1 } {
                let mut flipped = row.clone();
                flipped[i] ^= 1 << bit;
                check(flipped, &format!("with bit {bit} of byte {i} flipped"));
            }
        }
        write_run_row(&fx.path, first, Some(row));
        fx.open().verify().expect("restored");
    }
}

#[test]
fn appends_above_max_run_split_into_runs_and_prune_whole_runs() {
    use sx_common::run::MAX_RUN;
    let fx = Fixture::new();
    let mut journal = fx.create();
    let old = Timestamp::from_secs(now().as_secs() - 2 * DAY);
    let total = 2 * MAX_RUN as u64 + 100;
    let outcome = journal
        .append(&items(total, old))
        .expect("one large append");
    journal.append(&items(3, old)).expect("small append");
    drop(journal);
    let runs: Vec<(u64, usize)> = stored_runs(&fx.path)
        .iter()
        .map(|(first, e)| (*first, e.len()))
        .collect();
    let m = MAX_RUN as u64;
    assert_eq!(
        runs,
        [
            (1, MAX_RUN),
            (m + 1, MAX_RUN),
            (2 * m + 1, 100),
            (total + 1, 3)
        ]
    );
    let mut journal = fx.open();
    assert_eq!(journal.head().seq, total + 3);
    // Reads across run boundaries, from inside a run.
    let read = journal.read_range(m - 1, 4).expect("read");
    assert_eq!(read, outcome.events[m as usize - 2..m as usize + 2]);
    let (raw, head) = journal.read_raw(2 * m - 1, 5).expect("read raw");
    assert_eq!(raw.len(), 5);
    assert_eq!(raw[4], outcome.events[2 * m as usize + 2].bytes);
    assert_eq!(
        head.expect("head"),
        outcome.events[2 * m as usize + 2].head()
    );
    let mut seen = Vec::new();
    journal
        .for_each_event(m, |e| seen.push(e.seq))
        .expect("for each");
    assert_eq!(seen, (m..=total + 3).collect::<Vec<_>>());
    assert_eq!(journal.verify().expect("verify").events, total + 3);

    // An ack in the middle of the second run prunes the first run only.
    let acked = &outcome.events[m as usize + 10];
    journal.set_acked(acked.event.seq, acked.hash).expect("ack");
    assert_eq!(journal.prune(later(), Span::ZERO).expect("prune"), m);
    assert_eq!(journal.marks().first_held_seq, m + 1);
    assert_eq!(journal.pruned_head(), outcome.events[m as usize - 1].head());
    assert_eq!(journal.read_range(m + 1, 1).expect("held").len(), 1);
    assert!(matches!(
        journal.read_range(m, 1),
        Err(JournalError::Pruned { .. })
    ));
    let report = journal.verify().expect("verifies after prune");
    assert_eq!(
        (report.first_held_seq, report.events),
        (m + 1, total + 3 - m)
    );
    // An ack on the last event of a run prunes up to it.
    let acked = &outcome.events[2 * m as usize - 1];
    journal.set_acked(acked.event.seq, acked.hash).expect("ack");
    assert_eq!(journal.prune(later(), Span::ZERO).expect("prune"), m);
    assert_eq!(journal.marks().first_held_seq, 2 * m + 1);
    drop(journal);
    let journal = fx.open();
    assert_eq!(journal.marks().first_held_seq, 2 * m + 1);
    journal.verify().expect("verifies after reopen");
}

mod model {
    //! Random sequences of appends, acks, receipts, prunes and reopenings
    //! against a plain model of what must be held.

    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        /// `count` events, `age_hours` old.
        Append {
            count: u64,
            age_hours: i64,
        },
        /// Ack the event at this fraction of the head.
        Ack(f64),
        Receipt(f64),
        Prune {
            retention_hours: u64,
        },
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1..6u64, 0..72i64).prop_map(|(count, age_hours)| Op::Append { count, age_hours }),
            2 => (0.0..=1.0f64).prop_map(Op::Ack),
            1 => (0.0..=1.0f64).prop_map(Op::Receipt),
            2 => (0..48u64).prop_map(|retention_hours| Op::Prune { retention_hours }),
            1 => Just(Op::Reopen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        #[test]
        fn the_journal_holds_exactly_what_the_model_says(ops in proptest::collection::vec(op(), 1..24)) {
            let fx = Fixture::new();
            let mut journal = fx.create();
            // Every event ever appended: (timestamp, hash), index = seq - 1.
            let mut all: Vec<(Timestamp, Digest)> = Vec::new();
            // The seq range of every append (a run each), and the first
            // one not pruned: pruning removes whole runs.
            let mut runs: Vec<(u64, u64)> = Vec::new();
            let mut next_run = 0usize;
            let mut first_held = 1u64;
            let (mut acked, mut receipted) = (0u64, 0u64);
            for op in ops {
                match op {
                    Op::Append { count, age_hours } => {
                        let at = Timestamp::from_secs(now().as_secs() - age_hours * 3_600);
                        let outcome = journal.append(&items(count, at)).expect("append");
                        runs.push((all.len() as u64 + 1, all.len() as u64 + count));
                        all.extend(outcome.events.iter().map(|e| (at, e.hash)));
                    }
                    Op::Ack(f) | Op::Receipt(f) => {
                        let seq = (f * all.len() as f64).round() as u64;
                        let hash = if seq == 0 { Digest::GENESIS } else { all[seq as usize - 1].1 };
                        if matches!(op, Op::Ack(_)) {
                            journal.set_acked(seq, hash).expect("ack");
                            if seq >= first_held - 1 { acked = acked.max(seq); }
                        } else {
                            journal.set_receipted(seq, hash).expect("receipt");
                            if seq >= first_held - 1 { receipted = receipted.max(seq); }
                        }
                    }
                    Op::Prune { retention_hours } => {
                        let cutoff = now().as_secs() - retention_hours as i64 * 3_600;
                        let mut expected = 0;
                        while let Some(&(first, last)) = runs.get(next_run) {
                            let old = (first..=last)
                                .all(|seq| all[seq as usize - 1].0.as_secs() < cutoff);
                            if last > acked.max(receipted) || !old {
                                break;
                            }
                            expected += last + 1 - first;
                            first_held = last + 1;
                            next_run += 1;
                        }
                        let pruned = journal
                            .prune(now(), Span::from_secs(retention_hours * 3_600))
                            .expect("prune");
                        prop_assert_eq!(pruned, expected);
                    }
                    Op::Reopen => {
                        drop(journal);
                        journal = fx.open();
                    }
                }
                let marks = journal.marks();
                prop_assert_eq!(marks.first_held_seq, first_held);
                prop_assert_eq!(marks.acked_seq, acked);
                prop_assert_eq!(marks.receipted_seq, receipted);
                prop_assert_eq!(journal.head().seq, all.len() as u64);
                let held = journal.read_range(first_held, usize::MAX).expect("read held");
                prop_assert_eq!(held.len() as u64, all.len() as u64 + 1 - first_held);
                for e in &held {
                    prop_assert_eq!(e.hash, all[e.event.seq as usize - 1].1);
                }
                let report = journal.verify().expect("verifies");
                prop_assert_eq!(report.events, held.len() as u64);
            }
        }
    }
}

#[test]
fn large_batches_append_whole_or_not_at_all() {
    // Large appends seal on a helper thread while inserting; the result
    // must be the same as for small ones, and a failure must leave nothing.
    let fx = Fixture::new();
    let mut journal = fx.create();
    journal.append(&items(3, now())).expect("small");
    let big = journal.append(&items(1_000, now())).expect("large");
    assert_eq!(big.events.len(), 1_000);
    assert_eq!(big.head().seq, 1_003);
    let mut prev = hash_at(&journal, 3);
    for (i, e) in big.events.iter().enumerate() {
        assert_eq!(e.event.seq, 4 + i as u64);
        assert_eq!(e.event.prev_hash, prev);
        prev = e.hash;
    }
    assert_eq!(journal.read_range(4, 2_000).expect("read"), big.events);

    let head = journal.head();
    let mut bad = items(700, now());
    bad[650].1 = EventPayload::ConnectionLost(Note {
        reason: Some("x".repeat(MAX_EVENT_BYTES)),
    });
    assert!(matches!(
        journal.append(&bad),
        Err(JournalError::EventTooLarge { .. })
    ));
    assert_eq!(journal.head(), head);
    assert!(journal.read_range(1_004, 10).expect("read").is_empty());
    drop(journal);
    let mut journal = fx.open();
    assert_eq!(journal.head(), head, "nothing of the failed append stored");
    journal.append(&items(300, now())).expect("large again");
    let report = journal.verify().expect("verifies");
    assert_eq!((report.events, report.checkpoints), (1_303, 3));
}
