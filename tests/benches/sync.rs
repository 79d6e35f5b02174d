//! Sync throughput benchmark (`cargo bench -p sx-tests --bench sync`).
//!
//! Everything is real: PKI from sx-certs, redb journals and store, QUIC with
//! mutual TLS on loopback, durable acks. The aggregator runs in a child
//! process (this same binary with `--aggregator-child`) so its memory and
//! CPU are measured apart from the agents, which run in this process.
//!
//! Scenarios (select with `SX_BENCH=one,many,idle`, default all):
//! - `one`: one agent replays a 1,000,000-event backlog (SX_BENCH_EVENTS);
//! - `many`: 100 agents replay 10,000 events each at once;
//! - `idle`: 1,000 idle connected agents heartbeating for 30 s.
//!
//! Baseline in the same run: raw redb durable inserts of the same bytes in
//! transactions of 1000, measured before and after each scenario.
//! `SX_BENCH_PROJECTIONS=off` runs the aggregator without live projections
//! (their cost is the difference); `SX_BENCH_WINDOW` / `SX_BENCH_BATCH`
//! override the agent's window and batch size.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use sx_agent::journal::data_dir::{InitRequest, init};
use sx_agent::journal::{DataDir, Journal};
use sx_certs::{AggregatorRequest, CaOptions, NodeRequest, Pki};
use sx_common::event::OperationalTransition;
use sx_common::model::OperationalState;
use sx_common::{EventPayload, Timestamp};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--aggregator-child") {
        return aggregator_child(&args);
    }
    if args.iter().any(|a| a == "--list") {
        return Ok(());
    }
    let which = std::env::var("SX_BENCH").unwrap_or_else(|_| "one,many,idle".into());
    let events: u64 = std::env::var("SX_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let tmp = tempfile::tempdir()?;
    let pki = Pki::init(tmp.path().join("pki"), &CaOptions::default())?;
    pki.issue_aggregator(&AggregatorRequest::new("agg-bench", "region-a"))?;
    // The baseline is measured right before and right after each scenario
    // (the machine is shared: its speed drifts); ratios are against the
    // mean of the two.
    let mut raw_runs = 0;
    let mut raw = |label: &str| -> Result<f64> {
        raw_runs += 1;
        let dir = tmp.path().join(format!("raw-{raw_runs}"));
        std::fs::create_dir_all(&dir)?;
        let r = raw_redb_baseline(&dir, 200_000)?;
        println!("raw redb durable inserts, 1000/txn ({label}): {r:.0} events/s");
        Ok(r)
    };
    if which.contains("one") {
        let before = raw("before one")?;
        let rate = scenario(&pki, tmp.path(), "one", 1, events)?;
        let after = raw("after one")?;
        let base = (before + after) / 2.0;
        println!(
            "one agent, {events} events: {:.0} events/s end to end ({:.2} of raw redb at {base:.0})",
            rate.events_per_s,
            rate.events_per_s / base
        );
        println!("  aggregator peak RSS {} MiB", rate.peak_rss_kib / 1024);
    }
    if which.contains("many") {
        let before = raw("before many")?;
        let rate = scenario(&pki, tmp.path(), "many", 100, 10_000)?;
        let after = raw("after many")?;
        let base = (before + after) / 2.0;
        println!(
            "100 agents x 10000 events: {:.0} events/s aggregate ({:.2} of raw redb at {base:.0}), aggregator peak RSS {} MiB",
            rate.events_per_s,
            rate.events_per_s / base,
            rate.peak_rss_kib / 1024
        );
    }
    if which.contains("idle") {
        idle(&pki, tmp.path(), 1_000, Duration::from_secs(30))?;
    }
    Ok(())
}

/// Raw redb: the same kind of bytes (a ~120-byte event) in durable
/// transactions of 1000, u64 keys.
fn raw_redb_baseline(dir: &Path, n: u64) -> Result<f64> {
    const T: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("raw");
    let db = redb::Database::create(dir.join("raw.redb"))?;
    let value = sample_bytes();
    let start = Instant::now();
    let mut seq = 0u64;
    while seq < n {
        let txn = db.begin_write()?;
        {
            let mut t = txn.open_table(T)?;
            for _ in 0..1000 {
                seq += 1;
                t.insert(seq, value.as_slice())?;
            }
        }
        txn.commit()?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

fn sample_payload(i: u64) -> EventPayload {
    EventPayload::OperationalTransition(OperationalTransition {
        from: OperationalState::InService,
        to: OperationalState::InService,
        reason: Some(format!("bench-{i}")),
    })
}

fn sample_bytes() -> Vec<u8> {
    let e = sx_common::Event {
        node_id: "sx-rempart-bench-node-00001".into(),
        seq: 123_456,
        timestamp: Timestamp::now(),
        prev_hash: sx_common::Digest([7; 32]),
        payload: sample_payload(1),
    };
    sx_common::chain::canonical_bytes(&e)
}

struct Rate {
    events_per_s: f64,
    peak_rss_kib: u64,
}

fn node_dir(pki: &Pki, root: &Path, id: &str) -> Result<PathBuf> {
    let issued = pki.issue_node(&NodeRequest::new(
        id,
        "souverix-rempart",
        "region-a",
        "edge-zone-a1",
    ))?;
    let dir = DataDir::new(root.join("agents").join(id));
    init(
        &dir,
        &InitRequest {
            cert: issued.cert_path,
            key: issued.key_path,
            ca: pki.ca_path(),
            force: false,
            now: Timestamp::now(),
        },
    )?;
    Ok(dir.root().to_path_buf())
}

fn fill(dir: &Path, count: u64) -> Result<u64> {
    let d = DataDir::new(dir);
    let mut j = d.open_journal()?;
    let mut left = count;
    while left > 0 {
        let n = left.min(1000);
        let items: Vec<_> = (0..n)
            .map(|i| (Timestamp::now(), sample_payload(i)))
            .collect();
        j.append(&items)?;
        left -= n;
    }
    let head = j.head().seq;
    j.close()?;
    Ok(head)
}

fn start_aggregator(pki: &Pki, data: &Path) -> Result<(Child, u16, u16)> {
    let quic = free_port_udp();
    let api = free_port_tcp();
    let exe = std::env::current_exe()?;
    let child = Command::new(exe)
        .arg("--aggregator-child")
        .arg(data)
        .arg(pki.root())
        .arg(quic.to_string())
        .arg(api.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while ureq::get(&format!("http://127.0.0.1:{api}/healthz"))
        .call()
        .is_err()
    {
        if Instant::now() > deadline {
            bail!("aggregator child did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((child, quic, api))
}

fn aggregator_child(args: &[String]) -> Result<()> {
    let data = PathBuf::from(&args[2]);
    let pki = PathBuf::from(&args[3]);
    let quic: u16 = args[4].parse()?;
    let api: u16 = args[5].parse()?;
    let mut config = sx_aggregator::config::Config::default();
    config.aggregator.name = "agg-bench".into();
    config.aggregator.data_dir = data;
    config.aggregator.listen = ([127, 0, 0, 1], quic).into();
    config.aggregator.api_listen = ([127, 0, 0, 1], api).into();
    config.tls.pki_dir = Some(pki);
    // SX_BENCH_PROJECTIONS=off: ingest alone, to measure what the live
    // projections cost the sync rate.
    config.ingest.live_projections = std::env::var("SX_BENCH_PROJECTIONS").as_deref() != Ok("off");
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(sx_aggregator::server::run(
        config,
        std::future::pending(),
        None,
    ))
}

fn free_port_udp() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap_or(17_170)
}

fn free_port_tcp() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap_or(17_180)
}

fn proc_status(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// utime + stime of a process, in clock ticks.
fn proc_cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1;
            let f: Vec<&str> = after.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

fn agent_config(data: &Path, quic: u16) -> sx_agent::config::Config {
    let mut c = sx_agent::config::Config::default();
    c.agent.data_dir = data.to_path_buf();
    c.agent.aggregator = ([127, 0, 0, 1], quic).into();
    if let Some(w) = env_u64("SX_BENCH_WINDOW") {
        c.uplink.window_events = w;
    }
    if let Some(b) = env_u64("SX_BENCH_BATCH") {
        c.uplink.batch_max_events = b as usize;
    }
    c
}

fn total_acked(api: u16) -> Result<u64> {
    let body = ureq::get(&format!("http://127.0.0.1:{api}/api/v1/status"))
        .call()?
        .body_mut()
        .read_to_string()?;
    let v: serde_json::Value = serde_json::from_str(&body)?;
    Ok(v["nodes"]
        .as_array()
        .map(|a| a.iter().filter_map(|n| n["acked_seq"].as_u64()).sum())
        .unwrap_or(0))
}

/// `agents` agents with `events` each replay at once; events/s from the
/// first agent start until every journal head is acknowledged.
fn scenario(pki: &Pki, root: &Path, name: &str, agents: usize, events: u64) -> Result<Rate> {
    let root = root.join(name);
    let mut dirs = Vec::new();
    let mut heads = 0;
    let fill_start = Instant::now();
    for i in 0..agents {
        let dir = node_dir(pki, &root, &format!("sx-rempart-{name}-node-{i:05}"))?;
        heads += fill(&dir, events)?;
        dirs.push(dir);
    }
    eprintln!(
        "  [{name}] journals filled in {:.1} s",
        fill_start.elapsed().as_secs_f64()
    );
    let (mut child, quic, api) = start_aggregator(pki, &root.join("aggregator"))?;
    let pid = child.id();
    let rt = tokio::runtime::Runtime::new()?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let start = Instant::now();
    let agg_cpu0 = proc_cpu_ticks(pid);
    let own_cpu0 = proc_cpu_ticks(std::process::id());
    let mut tasks = Vec::new();
    for dir in &dirs {
        let config = agent_config(dir, quic);
        let mut rx = stopped.clone();
        tasks.push(rt.spawn(async move {
            let shutdown = async move {
                let _ = rx.wait_for(|v| *v).await;
            };
            sx_agent::daemon::run(config, shutdown).await
        }));
    }
    // Done when the aggregator holds every event of the filled journals
    // (connectivity events the agents add on top are not counted).
    let deadline = Instant::now() + Duration::from_secs(1_800);
    let mut peak = 0;
    let mut first_ack = None;
    loop {
        peak = peak.max(proc_status(pid, "VmHWM:"));
        let acked = total_acked(api).unwrap_or(0);
        if acked > 0 && first_ack.is_none() {
            first_ack = Some(start.elapsed());
        }
        if acked >= heads {
            break;
        }
        if Instant::now() > deadline {
            bail!("replay did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = start.elapsed().as_secs_f64();
    // CPU per event on each side (10 ms ticks), which the machine's load
    // disturbs less than the wall-clock rate.
    if let Some(t) = first_ack {
        println!("  [{name}] first events acknowledged after {t:.2?} (agent start, handshake)");
    }
    let agg_cpu = (proc_cpu_ticks(pid) - agg_cpu0) as f64 / 100.0;
    let own_cpu = (proc_cpu_ticks(std::process::id()) - own_cpu0) as f64 / 100.0;
    peak = peak.max(proc_status(pid, "VmHWM:"));
    match ureq::get(&format!("http://127.0.0.1:{api}/api/v1/status"))
        .call()
        .and_then(|mut r| r.body_mut().read_to_string())
        .map(|b| serde_json::from_str::<serde_json::Value>(&b).unwrap_or_default())
    {
        Err(e) => eprintln!("  [{name}] status: {e}"),
        Ok(v) => {
            let stored = v["events_stored"].as_f64().unwrap_or(0.0);
            let commits = v["commits"].as_f64().unwrap_or(0.0).max(1.0);
            let busy = v["writer_busy_ms"].as_f64().unwrap_or(0.0) / 1e3;
            println!(
                "  [{name}] {commits} group commits, {:.0} events per commit; writer busy {busy:.2} s ({:.0}% of the run)",
                stored / commits,
                busy / start.elapsed().as_secs_f64() * 100.0
            );
        }
    }
    let _ = stop.send(true);
    for t in tasks {
        let _ = rt.block_on(t).context("agent task")?;
    }
    let _ = child.kill();
    let _ = child.wait();
    // Only the events the agents had before they started count.
    let replayed = heads - 2 * agents as u64;
    println!(
        "  [{name}] CPU per event: aggregator {:.2} µs, agents {:.2} µs; {:.0}% of 2 cores busy with them over {elapsed:.2} s",
        agg_cpu * 1e6 / replayed as f64,
        own_cpu * 1e6 / replayed as f64,
        (agg_cpu + own_cpu) / elapsed / 2.0 * 100.0
    );
    Ok(Rate {
        events_per_s: replayed as f64 / elapsed,
        peak_rss_kib: peak,
    })
}

/// `n` idle agents connected and heartbeating: the aggregator's memory and
/// CPU over `window`.
fn idle(pki: &Pki, root: &Path, n: usize, window: Duration) -> Result<()> {
    let root = root.join("idle");
    let mut dirs = Vec::new();
    for i in 0..n {
        dirs.push(node_dir(
            pki,
            &root,
            &format!("sx-relais-idle-node-{i:05}"),
        )?);
    }
    let (mut child, quic, api) = start_aggregator(pki, &root.join("aggregator"))?;
    let pid = child.id();
    let rt = tokio::runtime::Runtime::new()?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for dir in &dirs {
        let config = agent_config(dir, quic);
        let mut rx = stopped.clone();
        tasks.push(rt.spawn(async move {
            let shutdown = async move {
                let _ = rx.wait_for(|v| *v).await;
            };
            sx_agent::daemon::run(config, shutdown).await
        }));
    }
    // Wait until every agent has synced its first events.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let body = ureq::get(&format!("http://127.0.0.1:{api}/api/v1/status"))
            .call()?
            .body_mut()
            .read_to_string()?;
        let v: serde_json::Value = serde_json::from_str(&body)?;
        let connected = v["nodes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|n| n["connection"]["state"] == "connected")
                    .count()
            })
            .unwrap_or(0);
        if connected >= n {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {connected} of {n} agents connected");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(5));
    let cpu0 = proc_cpu_ticks(pid);
    let t0 = Instant::now();
    std::thread::sleep(window);
    let cpu1 = proc_cpu_ticks(pid);
    let secs = t0.elapsed().as_secs_f64();
    // SAFETY-free: sysconf via libc would be unsafe; Linux uses 100 ticks/s.
    let ticks_per_s = 100.0;
    let cpu = (cpu1 - cpu0) as f64 / ticks_per_s / secs * 100.0;
    println!(
        "{n} idle agents heartbeating (5 s interval): aggregator RSS {} MiB, CPU {cpu:.1}% of one core",
        proc_status(pid, "VmRSS:") / 1024
    );
    let _ = stop.send(true);
    for t in tasks {
        let _ = rt.block_on(t);
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}
