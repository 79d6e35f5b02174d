//! The `sx-agent` command line: flag parsing and output formatting only;
//! every command calls into the `sx_agent` library.
//!
//! To add a subcommand: a variant of [`Command`] with its `Args` struct, and
//! one arm in [`run`] calling a function of the library.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use sx_agent::journal::data_dir::{
    self, DATA_DIR_ENV, DEFAULT_DATA_DIR, InitRequest, Initialised, Status,
};
use sx_agent::journal::{DataDir, Journal, RedbJournal, VerifyReport, record_local};
use sx_agent::local::{JournalAnswer, JournalQuery};
use sx_common::event::{ConnectivityTransition, EVENT_TYPES, PayloadError};
use sx_common::model::ConnectivityState;
use sx_common::{EventPayload, SealedEvent, Span, Timestamp};

/// Souverix node agent: durable signed journal and replay uplink.
#[derive(Debug, Parser)]
#[command(name = "sx-agent", version)]
pub struct Cli {
    /// The agent's data directory (identity files and journal).
    #[arg(long, global = true, env = DATA_DIR_ENV, default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Set up the data directory from a node certificate, its key and the
    /// fleet CA, and record the node's first events.
    Init(InitArgs),
    /// Record one event durably in the journal.
    Record(RecordArgs),
    /// List the journal's events.
    Log(LogArgs),
    /// Show the journal head, delivery marks and backlog.
    Status(OutputArgs),
    /// Verify the whole journal: decoding, hash chain, checkpoint signatures.
    Verify(OutputArgs),
    /// Forget events the aggregator holds, once older than the retention.
    Prune(PruneArgs),
    /// Run the agent: hold the journal, serve the local ingest socket, and
    /// replay to / stream live to the aggregator over QUIC.
    Run(RunArgs),
    /// Export journal events into a signed bundle file for air-gapped sync
    /// (through the running agent when there is one).
    ExportBundle(ExportBundleArgs),
    /// Apply an aggregator's receipt: verify it, advance the receipted
    /// mark, record the desired state and the completed sync.
    ImportReceipt(ImportReceiptArgs),
    /// Rotate the node certificate and key (through the running agent when
    /// there is one): record `trust.certificate_rotated` signed with the
    /// old key, keep the old key for verifying the checkpoints it signed,
    /// install the new files, sign from then on with the new key.
    Rotate(RotateArgs),
    /// Append random batches forever, printing the head after each commit
    /// (crash tests).
    #[command(hide = true)]
    DebugAppendLoop(DebugAppendLoopArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// TOML configuration (see the README for every key and its default).
    #[arg(long, env = "SX_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// QUIC address of the aggregator (overrides the configuration).
    #[arg(long)]
    pub aggregator: Option<std::net::SocketAddr>,
    /// Name in the aggregator's certificate (overrides the configuration).
    #[arg(long)]
    pub server_name: Option<String>,
}

/// Output format of data-printing commands.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The node certificate (PEM), as issued by `sx-certs issue-node`.
    #[arg(long)]
    pub cert: PathBuf,
    /// The node's private key (PKCS#8 PEM).
    #[arg(long)]
    pub key: PathBuf,
    /// The fleet CA certificate (PEM).
    #[arg(long)]
    pub ca: PathBuf,
    /// Replace an existing identity and start a new, empty journal. Events
    /// not yet delivered are lost.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
#[command(after_help = event_types_help())]
pub struct RecordArgs {
    /// The event type, e.g. `lifecycle.update_initiated`.
    #[arg(value_name = "TYPE")]
    pub event_type: String,
    /// The payload as JSON, e.g. '{"from_version":"1.4.6","to_version":"1.4.7"}'.
    #[arg(value_name = "JSON")]
    pub payload: String,
    /// The event's time (RFC 3339); now by default.
    #[arg(long, value_parser = parse_timestamp)]
    pub at: Option<Timestamp>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// First seq to list (default: the first held).
    #[arg(long)]
    pub from: Option<u64>,
    /// List at most this many events.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Print one JSON object per line (the event, plus its `hash`).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Keep delivered events at least this long (e.g. 24h, 90m, 7d).
    #[arg(long, default_value = "24h", value_parser = parse_span)]
    pub retention: Span,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct ExportBundleArgs {
    /// The bundle file, or a directory to write `<node>-<counter>.sxbundle`
    /// in (default: the current directory).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// First seq (default: the first the aggregator is not known to hold).
    #[arg(long)]
    pub from: Option<u64>,
    /// Last seq (default: the head).
    #[arg(long)]
    pub to: Option<u64>,
    /// Region whose aggregator may import it (default: the certificate's).
    #[arg(long)]
    pub region: Option<String>,
    /// The only aggregator that may import it (default: any of the region).
    #[arg(long)]
    pub aggregator: Option<String>,
    /// The bundle is refused after this long (e.g. 30d, 12h).
    #[arg(long, default_value = "30d", value_parser = parse_span)]
    pub expires_in: Span,
    /// Store the events without zstd compression.
    #[arg(long)]
    pub no_compress: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct ImportReceiptArgs {
    /// The receipt file written by `sx-aggregator import-bundle`.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    /// The new node certificate (PEM) from the fleet CA, for this node.
    #[arg(long)]
    pub cert: PathBuf,
    /// The new certificate's private key (PKCS#8 PEM).
    #[arg(long)]
    pub key: PathBuf,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct DebugAppendLoopArgs {
    /// Largest batch (events per transaction); each batch is 1..=this.
    #[arg(long, default_value_t = 50)]
    pub max_batch: usize,
    /// Stop after this many appends (default: run until killed).
    #[arg(long)]
    pub count: Option<u64>,
    /// Seed of the batch sizes (default: random).
    #[arg(long)]
    pub seed: Option<u64>,
}

/// Runs a parsed command. Errors are printed by `main`; a failed `verify
/// --json` prints its own report and returns a failure exit code.
pub fn run(cli: Cli) -> Result<ExitCode> {
    let dir = DataDir::new(cli.data_dir);
    match cli.command {
        Command::Init(args) => init(&dir, args),
        Command::Record(args) => record(&dir, args),
        Command::Log(args) => log(&dir, args),
        Command::Status(args) => status(&dir, args),
        Command::Verify(args) => verify(&dir, args),
        Command::Prune(args) => prune(&dir, args),
        Command::Run(args) => run_agent(&dir, args),
        Command::ExportBundle(args) => export_bundle(&dir, args),
        Command::ImportReceipt(args) => import_receipt(&dir, args),
        Command::Rotate(args) => rotate(&dir, args),
        Command::DebugAppendLoop(args) => debug_append_loop(&dir, args),
    }
}

fn init(dir: &DataDir, args: InitArgs) -> Result<ExitCode> {
    let request = InitRequest {
        cert: args.cert,
        key: args.key,
        ca: args.ca,
        force: args.force,
        now: Timestamp::now(),
    };
    let Initialised { identity, outcome } = data_dir::init(dir, &request)?;
    let head = outcome.head();
    if args.output.json {
        print_json(&json!({
            "data_dir": dir.root(),
            "identity": identity,
            "head_seq": head.seq,
            "head_hash": head.hash,
        }))?;
    } else {
        println!(
            "initialised {} for node {} ({}, {}, {}); journal head seq {} {}",
            dir.root().display(),
            identity.node_id,
            identity.component_type,
            identity.region,
            identity.zone,
            head.seq,
            head.hash
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn record(dir: &DataDir, args: RecordArgs) -> Result<ExitCode> {
    // Everything is checked before the journal is opened: a bad command
    // changes nothing.
    let body: Value = serde_json::from_str(&args.payload)
        .with_context(|| format!("payload is not valid JSON: {}", args.payload))?;
    let payload =
        EventPayload::from_type_and_json(&args.event_type, body).map_err(|e| match e {
            PayloadError::UnknownType(t) => anyhow::anyhow!(
                "unknown event type {t:?}; known types: {}",
                EVENT_TYPES.join(", ")
            ),
            // `Invalid` displays its cause itself; don't chain it a second time.
            invalid => anyhow::anyhow!("{invalid}"),
        })?;
    let at = args.at.unwrap_or_else(Timestamp::now);
    // A running agent holds the journal: go through its socket.
    let socket = dir.root().join(sx_agent::local::SOCKET_FILE);
    let item = sx_agent::local::RecordItem {
        event_type: args.event_type.clone(),
        payload: payload.payload_json(),
        timestamp: Some(at),
    };
    if let Some(recorded) = sx_agent::local::record_via_socket(&socket, vec![item])? {
        for r in &recorded {
            if args.output.json {
                print_json(&serde_json::to_value(r)?)?;
            } else {
                println!(
                    "recorded seq {} {} {} {} (via the running agent)",
                    r.seq, r.id, args.event_type, r.hash
                );
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let outcome = record_local(dir, &[(at, payload)])?;
    for sealed in &outcome.events {
        if args.output.json {
            print_json(&event_json(sealed))?;
        } else {
            println!(
                "recorded seq {} {} {} {}",
                sealed.event.seq,
                sealed.event.id(),
                sealed.event.event_type(),
                sealed.hash
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks the running agent, if one holds the journal, to read it.
fn ask_agent(dir: &DataDir, query: JournalQuery) -> Result<Option<JournalAnswer>> {
    let socket = dir.root().join(sx_agent::local::SOCKET_FILE);
    sx_agent::local::query_via_socket(&socket, query)
}

/// Where `log` reads: the running agent, or the journal itself.
enum LogSource {
    Agent { first_held: u64 },
    Journal(Box<RedbJournal>),
}

impl LogSource {
    fn open(dir: &DataDir) -> Result<Self> {
        Ok(match ask_agent(dir, JournalQuery::Status)? {
            Some(JournalAnswer::Status(s)) => LogSource::Agent {
                first_held: s.first_held_seq,
            },
            Some(_) => {
                anyhow::bail!("the running agent answered a status query with something else")
            }
            None => LogSource::Journal(Box::new(dir.open_journal()?)),
        })
    }

    fn first_held(&self) -> u64 {
        match self {
            LogSource::Agent { first_held } => *first_held,
            LogSource::Journal(j) => j.marks().first_held_seq,
        }
    }

    fn read(&self, dir: &DataDir, from: u64, max: usize) -> Result<Vec<SealedEvent>> {
        let LogSource::Journal(journal) = self else {
            return match ask_agent(
                dir,
                JournalQuery::Read {
                    from: Some(from),
                    max,
                },
            )? {
                Some(JournalAnswer::Events(events)) => events
                    .iter()
                    .map(|e| {
                        let bytes = hex::decode(e).context("the agent sent an event not in hex")?;
                        SealedEvent::from_bytes(bytes)
                            .context("the agent sent an undecodable event")
                    })
                    .collect(),
                Some(_) => anyhow::bail!("the running agent answered a read with something else"),
                None => anyhow::bail!("the agent stopped while the log was read"),
            };
        };
        Ok(journal.read_range(from, max)?)
    }
}

fn log(dir: &DataDir, args: LogArgs) -> Result<ExitCode> {
    let source = LogSource::open(dir)?;
    let mut next = args.from.unwrap_or(source.first_held());
    let mut left = args.limit.unwrap_or(usize::MAX);
    let mut out = io::BufWriter::new(io::stdout().lock());
    while left > 0 {
        let events = source.read(dir, next, left.min(sx_agent::local::MAX_READ))?;
        let Some(last) = events.last() else { break };
        next = last.event.seq + 1;
        left = left.saturating_sub(events.len());
        for sealed in &events {
            if args.json {
                serde_json::to_writer(&mut out, &event_json(sealed))?;
                writeln!(out)?;
            } else {
                let e = &sealed.event;
                writeln!(
                    out,
                    "{:>6}  {}  {:<36}  {:?}  {}",
                    e.seq,
                    e.id(),
                    e.event_type(),
                    sealed.hash,
                    e.payload.payload_json()
                )?;
            }
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn status(dir: &DataDir, args: OutputArgs) -> Result<ExitCode> {
    let status = match ask_agent(dir, JournalQuery::Status)? {
        Some(JournalAnswer::Status(status)) => status,
        Some(_) => anyhow::bail!("the running agent answered a status query with something else"),
        None => Status::of(&dir.open_journal()?)?,
    };
    if args.json {
        print_json(&status)?;
    } else {
        println!("node:            {}", status.node_id);
        println!(
            "head:            seq {} {}",
            status.head_seq, status.head_hash
        );
        println!("acked:           seq {}", status.acked_seq);
        println!("exported:        seq {}", status.exported_seq);
        println!("receipted:       seq {}", status.receipted_seq);
        println!("first held:      seq {}", status.first_held_seq);
        println!("backlog:         {} events", status.backlog);
        println!("checkpoints:     {}", status.checkpoints);
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(dir: &DataDir, args: OutputArgs) -> Result<ExitCode> {
    // Through the running agent, the error comes back as its text.
    let verified: Result<VerifyReport, anyhow::Error> = match ask_agent(dir, JournalQuery::Verify)?
    {
        Some(JournalAnswer::Verified(result)) => result.map_err(anyhow::Error::msg),
        Some(_) => anyhow::bail!("the running agent answered a verify query with something else"),
        None => dir.open_journal()?.verify().map_err(anyhow::Error::from),
    };
    match verified {
        Ok(report) => {
            if args.json {
                print_json(&json!({ "ok": true, "report": report }))?;
            } else {
                println!(
                    "ok: journal of {} verifies: {} events from seq {}, {} checkpoints ({} retired keys), head seq {} {}",
                    report.node_id,
                    report.events,
                    report.first_held_seq,
                    report.checkpoints,
                    report.retired_keys,
                    report.head.seq,
                    report.head.hash
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(error) if args.json => {
            print_json(&json!({ "ok": false, "error": format!("{error:#}") }))?;
            Ok(ExitCode::FAILURE)
        }
        Err(error) => Err(error).context("journal verification failed"),
    }
}

fn prune(dir: &DataDir, args: PruneArgs) -> Result<ExitCode> {
    let mut journal = dir.open_journal()?;
    let pruned = journal.prune(Timestamp::now(), args.retention)?;
    let first_held = journal.marks().first_held_seq;
    journal.close()?;
    if args.output.json {
        print_json(&json!({ "pruned": pruned, "first_held_seq": first_held }))?;
    } else {
        println!("pruned {pruned} events; first held seq is now {first_held}");
    }
    Ok(ExitCode::SUCCESS)
}

fn export_bundle(dir: &DataDir, args: ExportBundleArgs) -> Result<ExitCode> {
    use sx_agent::bundle::{ExportRequest, LocalAnswer, LocalRequest};
    let cwd = std::env::current_dir().context("the current directory")?;
    let request = ExportRequest {
        // Absolute: the running agent may have another working directory.
        out: args.out.map_or_else(|| cwd.clone(), |p| cwd.join(p)),
        from: args.from,
        to: args.to,
        region: args.region,
        aggregator: args.aggregator,
        expires_in: args.expires_in,
        compression: if args.no_compress {
            sx_common::bundle::Compression::None
        } else {
            sx_common::bundle::Compression::Zstd
        },
    };
    let socket = dir.root().join(sx_agent::local::SOCKET_FILE);
    let (exported, via) =
        match sx_agent::local::bundle_via_socket(&socket, LocalRequest::Export(request.clone()))? {
            Some(LocalAnswer::Exported(e)) => (e, " (via the running agent)"),
            Some(other) => anyhow::bail!("the running agent answered {other:?}"),
            None => (
                sx_agent::bundle::export_stopped(dir, &request, Timestamp::now())?,
                "",
            ),
        };
    if args.output.json {
        print_json(&exported)?;
    } else {
        println!(
            "exported seq {}..={} of {} ({} events, {} checkpoints, head {}) to {}: counter {}, {} bytes, region {}, expires {}{via}",
            exported.first_seq,
            exported.last_seq,
            exported.node_id,
            exported.events,
            exported.checkpoints,
            exported.head_hash,
            exported.path.display(),
            exported.counter,
            exported.bytes,
            exported.region,
            exported.expires_at,
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn import_receipt(dir: &DataDir, args: ImportReceiptArgs) -> Result<ExitCode> {
    use sx_agent::bundle::{LocalAnswer, LocalRequest};
    let bytes = sx_agent::bundle::read_limited(&args.file, sx_common::bundle::MAX_RECEIPT_BYTES)?;
    let socket = dir.root().join(sx_agent::local::SOCKET_FILE);
    let op = LocalRequest::ImportReceipt {
        receipt_hex: hex::encode(&bytes),
    };
    let applied = match sx_agent::local::bundle_via_socket(&socket, op)? {
        Some(LocalAnswer::ReceiptApplied(a)) => a,
        Some(other) => anyhow::bail!("the running agent answered {other:?}"),
        None => sx_agent::bundle::import_receipt_stopped(dir, &bytes, Timestamp::now())
            .with_context(|| format!("receipt {} refused", args.file.display()))?,
    };
    if args.output.json {
        print_json(&applied)?;
    } else if applied.applied {
        println!(
            "receipt from {}: the aggregator durably holds {} up to seq {} {}; receipted mark moved, recorded seq {:?}{}",
            applied.aggregator,
            applied.node_id,
            applied.head.seq,
            applied.head.hash,
            applied.recorded,
            if applied.desired_state {
                " (with desired state)"
            } else {
                ""
            }
        );
    } else {
        println!(
            "receipt from {} for seq {} already applied: nothing changed",
            applied.aggregator, applied.head.seq
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn rotate(dir: &DataDir, args: RotateArgs) -> Result<ExitCode> {
    use sx_agent::journal::rotation::{self, RotateRequest};
    let cwd = std::env::current_dir().context("the current directory")?;
    let request = RotateRequest {
        // Absolute: the running agent may have another working directory.
        cert: cwd.join(args.cert),
        key: cwd.join(args.key),
    };
    let socket = dir.root().join(sx_agent::local::SOCKET_FILE);
    let (rotated, via) = match sx_agent::local::rotate_via_socket(&socket, request.clone())? {
        Some(rotated) => (rotated, " (via the running agent)"),
        None => (
            rotation::rotate_stopped(dir, &request, Timestamp::now())?,
            "",
        ),
    };
    if args.output.json {
        print_json(&rotated)?;
    } else {
        println!(
            "rotated the certificate of {}: {} -> {} (valid until {}); trust.certificate_rotated at seq {} {} is the last checkpoint of the old key{via}",
            rotated.node_id,
            rotated.old_fingerprint,
            rotated.new_fingerprint,
            rotated.new_valid_until,
            rotated.seq,
            rotated.hash,
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn debug_append_loop(dir: &DataDir, args: DebugAppendLoopArgs) -> Result<ExitCode> {
    let mut journal = dir.open_journal()?;
    let mut rng = match args.seed {
        Some(seed) => StdRng::seed_from_u64(seed),
        None => StdRng::from_entropy(),
    };
    let max_batch = args.max_batch.max(1);
    let mut stdout = io::stdout().lock();
    let mut appends = 0u64;
    while args.count.is_none_or(|count| appends < count) {
        let size = rng.gen_range(1..=max_batch);
        let base = journal.head().seq;
        let items: Vec<_> = (0..size as u64)
            .map(|i| (Timestamp::now(), sample_transition(base + i)))
            .collect();
        let outcome = journal.append_owned(items)?;
        // Printed only after the durable commit returned.
        writeln!(stdout, "{}", outcome.head().seq)?;
        stdout.flush()?;
        appends += 1;
    }
    Ok(ExitCode::SUCCESS)
}

/// A realistic connectivity transition (about 180 bytes encoded).
fn sample_transition(i: u64) -> EventPayload {
    let states = ConnectivityState::ALL;
    let n = states.len() as u64;
    EventPayload::ConnectivityTransition(ConnectivityTransition {
        from: states[(i % n) as usize],
        to: states[((i + 1) % n) as usize],
        reason: Some(format!(
            "uplink rtt above threshold on path rempart->coeur (probe {i})"
        )),
        latency_ms: Some(40 + (i % 400) as u32),
        backlog: Some(i),
        sync_interval: Some(Span::from_mins(15)),
    })
}

/// An event as JSON: `Event::to_json()` plus its `hash`.
fn event_json(sealed: &SealedEvent) -> Value {
    let mut value = sealed.event.to_json();
    if let Value::Object(map) = &mut value {
        map.insert("hash".to_owned(), json!(sealed.hash));
    }
    value
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

fn parse_timestamp(text: &str) -> Result<Timestamp, String> {
    Timestamp::parse(text)
        .map_err(|e| format!("not an RFC 3339 time like 2026-02-27T03:45:00Z: {e}"))
}

fn parse_span(text: &str) -> Result<Span, String> {
    Span::parse(text).map_err(|e| e.to_string())
}

fn event_types_help() -> String {
    format!("Event types:\n  {}", EVENT_TYPES.join("\n  "))
}

fn run_agent(dir: &DataDir, args: RunArgs) -> Result<ExitCode> {
    let mut config = match &args.config {
        Some(p) => sx_agent::config::Config::load(p)?,
        None => sx_agent::config::Config::default(),
    };
    // The data directory flag (or its environment variable) wins, unless it
    // is the default and the configuration names one.
    if args.config.is_none() || dir.root() != std::path::Path::new(DEFAULT_DATA_DIR) {
        config.agent.data_dir = dir.root().to_path_buf();
    }
    if let Some(a) = args.aggregator {
        config.agent.aggregator = a;
    }
    if let Some(n) = args.server_name {
        config.agent.server_name = n;
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(sx_agent::daemon::run(config, shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}
