//! Crash consistency with real processes: `sx-agent debug-append-loop`
//! appends random batches (1..=50 events per durable transaction) and prints
//! the head after each returned append; the test SIGKILLs it at random
//! moments, then reopens the journal and checks that
//!
//! - it opens and `verify()` passes (chain, checkpoints, signatures);
//! - its head is at least the last seq the child printed: every append that
//!   returned survived;
//! - events 1..=printed are all there, gapless, and the history already
//!   seen before the kill is unchanged (no fork);
//!
//! and then lets the next child continue on the same journal.
//!
//! A SIGKILL loses the process, not the page cache: this checks redb's
//! atomic commits and the journal's head handling, not power loss (redb's
//! own crash tests freeze fsync for that).

use rand::{Rng, SeedableRng};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};
use sx_agent::journal::{DataDir, Journal};
use sx_certs::{CaOptions, NodeRequest, Pki};
use sx_common::Digest;

const KILLS: usize = 24;
const NODE: &str = "sx-relais-2026-prod-1-node-7";

#[test]
fn sigkill_at_random_moments_loses_no_returned_append() {
    let started = Instant::now();
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = Pki::init(tmp.path().join("pki"), &CaOptions::default()).expect("pki");
    let node = pki
        .issue_node(&NodeRequest::new(
            NODE,
            "souverix-relais",
            "region-b",
            "media-b2",
        ))
        .expect("node");
    let dir = DataDir::new(tmp.path().join("agent-data"));
    let init = Command::new(env!("CARGO_BIN_EXE_sx-agent"))
        .arg("init")
        .arg("--data-dir")
        .arg(dir.root())
        .arg("--cert")
        .arg(&node.cert_path)
        .arg("--key")
        .arg(&node.key_path)
        .arg("--ca")
        .arg(pki.ca_path())
        .output()
        .expect("run init");
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );

    // (seq, hash) of a few events seen after earlier kills: must never change.
    let mut witnesses: Vec<(u64, Digest)> = Vec::new();
    let mut last_head = 2;
    let mut kills_mid_run = 0;
    // Rounds killed inside a commit (or just after it) whose events were
    // written already: they survive, the printed head lags behind.
    let mut unreported_commits = 0;
    for round in 0..KILLS {
        let mut child = spawn_loop(&dir, rng.r#gen());
        let lines = read_lines(&mut child);
        thread::sleep(Duration::from_millis(rng.gen_range(15..250)));
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("reap");
        assert!(
            !status.success(),
            "round {round}: the loop only ends when killed"
        );
        let printed: Vec<u64> = lines.join().expect("reader");
        if !printed.is_empty() {
            kills_mid_run += 1;
        }
        let printed_head = printed.last().copied().unwrap_or(0);
        assert!(
            printed.windows(2).all(|w| w[0] < w[1]),
            "round {round}: printed heads increase"
        );

        let journal = dir.open_journal().unwrap_or_else(|e| {
            panic!("round {round}: journal does not reopen after SIGKILL: {e:#}")
        });
        let report = journal
            .verify()
            .unwrap_or_else(|e| panic!("round {round}: journal does not verify: {e:#}"));
        let head = journal.head();
        assert_eq!(report.head, head);
        assert!(
            head.seq >= printed_head,
            "round {round}: head {} lost appends that returned (printed {printed_head})",
            head.seq
        );
        assert!(head.seq >= last_head, "round {round}: head went back");
        if head.seq > printed_head.max(last_head) {
            unreported_commits += 1;
        }
        assert_eq!(
            report.events, head.seq,
            "round {round}: events 1..=head all held"
        );
        // Gapless 1..=printed, and earlier history unchanged.
        let events = journal.read_range(1, usize::MAX).expect("read");
        assert_eq!(events.len() as u64, head.seq);
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.event.seq, i as u64 + 1, "round {round}: gap");
        }
        for &(seq, hash) in &witnesses {
            assert_eq!(
                events[seq as usize - 1].hash,
                hash,
                "round {round}: history at seq {seq} changed (fork)"
            );
        }
        witnesses.push((head.seq, head.hash));
        if head.seq > 2 {
            let seq = rng.gen_range(1..=head.seq);
            witnesses.push((seq, events[seq as usize - 1].hash));
        }
        last_head = head.seq;
        journal.close().expect("close");
    }
    assert!(
        kills_mid_run >= KILLS / 2,
        "most kills must land while appending ({kills_mid_run}/{KILLS})"
    );
    println!(
        "{KILLS} kills ({unreported_commits} inside a commit), final head {last_head}, {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

fn spawn_loop(dir: &DataDir, seed: u64) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sx-agent"))
        .arg("debug-append-loop")
        .arg("--data-dir")
        .arg(dir.root())
        .arg("--max-batch")
        .arg("50")
        .arg("--seed")
        .arg(seed.to_string())
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn debug-append-loop")
}

/// Reads the child's complete lines (a line is only complete once its
/// newline arrived) until the pipe closes.
fn read_lines(child: &mut Child) -> thread::JoinHandle<Vec<u64>> {
    let stdout = child.stdout.take().expect("piped stdout");
    thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut heads = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) if line.ends_with('\n') => {
                    heads.push(line.trim().parse().expect("a head seq per line"));
                }
                Ok(_) => break, // a partial last line: the kill cut it
            }
        }
        heads
    })
}
