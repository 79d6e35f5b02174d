//! Air-gapped sync on the agent: exporting journal events into a signed
//! bundle file, and applying the aggregator's signed receipt.
//!
//! The file formats live in [`sx_common::bundle`]; this module reads the
//! journal, signs with the node key and writes files.
//!
//! # Export
//!
//! [`export`] writes one bundle holding the node's certificate chain
//! (`node.pem` then `ca.pem`), the events of a seq range (by default
//! everything the aggregator is not known to hold: `max(acked, receipted) +
//! 1` to the head) and a checkpoint signed with the node key every
//! [`SEGMENT_EVENTS`] events and on the last one. The journal's own
//! checkpoints are per write transaction (possibly one per event); fresh
//! ones at fixed spacing attest the same chain with a bounded number of
//! signatures, exactly as the QUIC uplink does for its batches.
//!
//! The bundle counter lives in `<data-dir>/bundle-counter` (decimal text),
//! replaced atomically and taken under an advisory lock
//! (`bundle-counter.lock`), before the bundle file is written: a counter is
//! never used twice. Exporting the same range again is allowed and gets a
//! new counter. After the file is durably written, the journal's
//! `exported` mark moves to the last seq.
//!
//! Export never blocks recording: the running agent holds the journal, so
//! `sx-agent export-bundle` asks it over the local socket
//! ([`crate::local`]) and the agent reads the journal in short chunks,
//! releasing it between them. On a stopped agent the command opens the
//! journal itself.
//!
//! # Receipt
//!
//! [`import_receipt`] checks a receipt file: its signature (by the key it
//! names), that key against the aggregator certificate it carries, that
//! certificate against the fleet CA in `ca.pem` (server usage, as a TLS
//! client would check it; the agent holds no CRL), the node id, and that
//! the head hash is the journal's own event at that seq. Then it moves the
//! `receipted` mark (so the journal may prune), applies the desired state
//! if the receipt carries one exactly as the uplink applies QUIC's `Resume`
//! ([`crate::uplink::desired_items`]: `inventory.desired` when it is new to
//! the node, and the version, config and policy drift the node detects
//! against its own twin), and records `connectivity.sync_completed` with
//! `via: bundle`. A receipt at or below
//! the current receipted mark changes nothing.

use crate::handle::JournalHandle;
use crate::journal::data_dir::DataDirError;
use crate::journal::{AppendOutcome, DataDir, Journal, JournalError, Marks, RedbJournal};
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;
use sx_common::bundle::{
    BundleError, BundleHeader, BundleWriter, Compression, SEGMENT_BYTES, SEGMENT_EVENTS,
    decode_receipt,
};
use sx_common::event::{SyncCompleted, SyncPath};
use sx_common::{
    ChainHead, Checkpoint, Digest, DigitalTwin, EventPayload, SealedEvent, Span, Timestamp,
};

/// The bundle counter file in the data directory.
pub const COUNTER_FILE: &str = "bundle-counter";
const COUNTER_LOCK_FILE: &str = "bundle-counter.lock";
/// How long a bundle stays importable by default (30 days).
pub const DEFAULT_EXPIRY: Span = Span(30 * 24 * 3_600);
/// Events read from the journal at a time: the journal is released between
/// reads, so recording goes on during an export.
const READ_CHUNK: usize = 2_048;

/// Why a bundle operation on the agent failed. Nothing was changed, except
/// that a failed export may have used up a counter value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentBundleError {
    /// The bundle or receipt itself was refused.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "nothing to export: the aggregator is known to hold everything up to the head (seq {head}); give --from to export again"
    )]
    NothingToExport { head: u64 },
    #[error("invalid range {from}..={to}: the journal holds seq {first_held}..={head}")]
    InvalidRange {
        from: u64,
        to: u64,
        first_held: u64,
        head: u64,
    },
    #[error("bundle counter file {path} is corrupt: {reason}")]
    CorruptCounter { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Certificates { path: PathBuf, reason: String },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> AgentBundleError + '_ {
    move |source| AgentBundleError::Io {
        path: path.to_owned(),
        source,
    }
}

// --- the journal, stopped or running ----------------------------------------

/// What bundle export and receipt import need of the journal: a stopped
/// agent's [`RedbJournal`], or the running agent's through [`RunningJournal`].
pub trait BundleJournal {
    /// The node whose journal this is.
    fn node_id(&self) -> String;
    /// The journal head.
    fn head(&self) -> ChainHead;
    /// The delivery marks.
    fn marks(&mut self) -> Marks;
    /// Up to `max` events from `from` (see [`Journal::read_range`]).
    fn read(&mut self, from: u64, max: usize) -> Result<Vec<SealedEvent>, JournalError>;
    /// See [`Journal::set_exported`].
    fn set_exported(&mut self, seq: u64) -> Result<(), JournalError>;
    /// See [`Journal::set_receipted`].
    fn set_receipted(&mut self, head: ChainHead) -> Result<(), JournalError>;
    /// Appends in one durable transaction (see [`Journal::append`]).
    fn append(
        &mut self,
        items: Vec<(Timestamp, EventPayload)>,
    ) -> Result<AppendOutcome, JournalError>;
    /// The node's own twin, folded from every held event.
    fn twin(&mut self) -> Result<DigitalTwin, JournalError>;
}

impl BundleJournal for RedbJournal {
    fn node_id(&self) -> String {
        Journal::node_id(self).to_owned()
    }
    fn head(&self) -> ChainHead {
        Journal::head(self)
    }
    fn marks(&mut self) -> Marks {
        Journal::marks(self)
    }
    fn read(&mut self, from: u64, max: usize) -> Result<Vec<SealedEvent>, JournalError> {
        self.read_range(from, max)
    }
    fn set_exported(&mut self, seq: u64) -> Result<(), JournalError> {
        Journal::set_exported(self, seq)
    }
    fn set_receipted(&mut self, head: ChainHead) -> Result<(), JournalError> {
        Journal::set_receipted(self, head.seq, head.hash)
    }
    fn append(
        &mut self,
        items: Vec<(Timestamp, EventPayload)>,
    ) -> Result<AppendOutcome, JournalError> {
        Journal::append(self, &items)
    }
    fn twin(&mut self) -> Result<DigitalTwin, JournalError> {
        self.fold_twin(|_| {})
    }
}

/// The running agent's journal, used from a blocking thread (never from an
/// async task): each call locks the journal only for itself.
#[derive(Debug)]
pub struct RunningJournal {
    journal: JournalHandle,
    runtime: tokio::runtime::Handle,
}

impl RunningJournal {
    /// Wraps the handle; `runtime` runs its calls.
    pub fn new(journal: JournalHandle, runtime: tokio::runtime::Handle) -> Self {
        RunningJournal { journal, runtime }
    }
}

impl BundleJournal for RunningJournal {
    fn node_id(&self) -> String {
        self.journal.node_id().to_owned()
    }
    fn head(&self) -> ChainHead {
        self.journal.head()
    }
    fn marks(&mut self) -> Marks {
        self.runtime.block_on(self.journal.marks())
    }
    fn read(&mut self, from: u64, max: usize) -> Result<Vec<SealedEvent>, JournalError> {
        self.runtime.block_on(self.journal.read(from, max))
    }
    fn set_exported(&mut self, seq: u64) -> Result<(), JournalError> {
        self.runtime.block_on(self.journal.set_exported(seq))
    }
    fn set_receipted(&mut self, head: ChainHead) -> Result<(), JournalError> {
        self.runtime.block_on(self.journal.set_receipted(head))
    }
    fn append(
        &mut self,
        items: Vec<(Timestamp, EventPayload)>,
    ) -> Result<AppendOutcome, JournalError> {
        self.runtime.block_on(self.journal.append(items))
    }
    fn twin(&mut self) -> Result<DigitalTwin, JournalError> {
        Ok(self.journal.twin())
    }
}

// --- export -----------------------------------------------------------------

/// What to export (the flags of `sx-agent export-bundle`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportRequest {
    /// The bundle file to write, or an existing directory to write
    /// `<node>-<counter>.sxbundle` in (absolute when sent to the running
    /// agent).
    pub out: PathBuf,
    /// First seq; default `max(acked, receipted) + 1`.
    pub from: Option<u64>,
    /// Last seq; default the head when the export starts.
    pub to: Option<u64>,
    /// Region whose aggregator may import it; default the certificate's.
    pub region: Option<String>,
    /// The one aggregator meant to import it; default any of the region.
    pub aggregator: Option<String>,
    pub expires_in: Span,
    pub compression: Compression,
}

/// What an export wrote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exported {
    pub path: PathBuf,
    pub node_id: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub head_hash: Digest,
    pub counter: u64,
    pub events: u64,
    pub checkpoints: u64,
    /// Size of the file.
    pub bytes: u64,
    pub region: String,
    pub expires_at: Timestamp,
}

/// Exports a bundle from `journal` (see the module doc). `now` is the
/// creation time.
pub fn export(
    dir: &DataDir,
    journal: &mut impl BundleJournal,
    request: &ExportRequest,
    now: Timestamp,
) -> Result<Exported, AgentBundleError> {
    let node_id = journal.node_id();
    let head = journal.head();
    let marks = journal.marks();
    let (from, to) = export_range(request, &marks, head)?;
    let identity = dir.identity()?;
    let key = dir.signing_key()?;
    let certificates = certificate_chain(dir)?;

    let mut writer = BundleWriter::new(&node_id);
    let mut segment_start = (0u64, 0usize);
    let mut checkpoints = 0u64;
    let mut next = from;
    while next <= to {
        let want = usize::try_from(to - next + 1).map_or(READ_CHUNK, |n| n.min(READ_CHUNK));
        let events = journal.read(next, want)?;
        if events.first().map(|e| e.event.seq) != Some(next) {
            return Err(JournalError::Pruned {
                requested: next,
                first_held: journal.marks().first_held_seq,
            }
            .into());
        }
        for event in events.iter().take_while(|e| e.event.seq <= to) {
            writer.push_event(event);
            let seq = event.event.seq;
            let in_segment = writer.event_count() - segment_start.0;
            let bytes = writer.event_bytes() - segment_start.1;
            if seq == to || in_segment >= SEGMENT_EVENTS as u64 || bytes >= SEGMENT_BYTES {
                writer.push_checkpoint(Checkpoint::sign(&key, &node_id, seq, event.hash));
                checkpoints += 1;
                segment_start = (writer.event_count(), writer.event_bytes());
            }
            next = seq + 1;
        }
    }
    let last = writer.head();
    let events = writer.event_count();
    let counter = next_counter(dir)?;
    let region = request.region.clone().unwrap_or(identity.region);
    let expires_at = now.plus(request.expires_in);
    let header = BundleHeader {
        counter,
        created_at: now,
        expires_at,
        region: region.clone(),
        aggregator: request.aggregator.clone(),
    };
    let bytes = writer.finish(&key, &certificates, header, request.compression);
    let path = if request.out.is_dir() {
        request.out.join(format!("{node_id}-{counter}.sxbundle"))
    } else {
        request.out.clone()
    };
    write_atomic(&path, &bytes)?;
    journal.set_exported(to)?;
    Ok(Exported {
        path,
        node_id,
        first_seq: from,
        last_seq: last.seq,
        head_hash: last.hash,
        counter,
        events,
        checkpoints,
        bytes: bytes.len() as u64,
        region,
        expires_at,
    })
}

/// Exports from a stopped agent's journal (opened and closed here).
pub fn export_stopped(
    dir: &DataDir,
    request: &ExportRequest,
    now: Timestamp,
) -> Result<Exported, AgentBundleError> {
    let mut journal = dir.open_journal()?;
    let exported = export(dir, &mut journal, request, now)?;
    journal.close()?;
    Ok(exported)
}

fn export_range(
    request: &ExportRequest,
    marks: &Marks,
    head: ChainHead,
) -> Result<(u64, u64), AgentBundleError> {
    let from = request.from.unwrap_or(marks.delivered_seq() + 1);
    let to = request.to.unwrap_or(head.seq);
    if request.from.is_none() && request.to.is_none() && from > to {
        return Err(AgentBundleError::NothingToExport { head: head.seq });
    }
    if from == 0 || from > to || to > head.seq || from < marks.first_held_seq {
        return Err(AgentBundleError::InvalidRange {
            from,
            to,
            first_held: marks.first_held_seq,
            head: head.seq,
        });
    }
    Ok((from, to))
}

/// The node certificate(s) of `node.pem`, then the CA of `ca.pem` unless
/// `node.pem` already carries it; DER.
fn certificate_chain(dir: &DataDir) -> Result<Vec<Vec<u8>>, AgentBundleError> {
    let load = |path: PathBuf| {
        sx_certs::load_certs_pem(&path).map_err(|e| AgentBundleError::Certificates {
            path,
            reason: e.to_string(),
        })
    };
    let mut chain: Vec<Vec<u8>> = load(dir.cert_path())?
        .into_iter()
        .map(|c| c.as_ref().to_vec())
        .collect();
    for ca in load(dir.ca_path())? {
        if !chain.iter().any(|c| c.as_slice() == ca.as_ref()) {
            chain.push(ca.as_ref().to_vec());
        }
    }
    Ok(chain)
}

/// Takes the next bundle counter: under the lock, reads the counter file,
/// writes the incremented value durably, and returns it.
pub fn next_counter(dir: &DataDir) -> Result<u64, AgentBundleError> {
    let lock_path = dir.root().join(COUNTER_LOCK_FILE);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_error(&lock_path))?;
    lock.lock().map_err(io_error(&lock_path))?;
    let path = dir.root().join(COUNTER_FILE);
    let current = current_counter(dir)?;
    let next = current + 1;
    write_atomic(&path, format!("{next}\n").as_bytes())?;
    drop(lock);
    Ok(next)
}

/// The last bundle counter used (0 before the first export).
pub fn current_counter(dir: &DataDir) -> Result<u64, AgentBundleError> {
    let path = dir.root().join(COUNTER_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().map_err(|e: std::num::ParseIntError| {
            AgentBundleError::CorruptCounter {
                path,
                reason: e.to_string(),
            }
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(source) => Err(AgentBundleError::Io { path, source }),
    }
}

/// Replaces `path` with `bytes`: temporary file in the same directory,
/// fsync, rename, fsync of the directory.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), AgentBundleError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = File::create(&tmp).map_err(io_error(&tmp))?;
        file.write_all(bytes).map_err(io_error(&tmp))?;
        file.sync_all().map_err(io_error(&tmp))?;
        fs::rename(&tmp, path).map_err(io_error(path))?;
        File::open(&parent)
            .and_then(|d| d.sync_all())
            .map_err(io_error(&parent))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

// --- receipts ---------------------------------------------------------------

/// What applying a receipt did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptApplied {
    pub node_id: String,
    pub aggregator: String,
    /// The head the aggregator durably holds, now the receipted mark.
    pub head: ChainHead,
    /// False when the receipt was at or below the receipted mark already:
    /// nothing was changed or recorded.
    pub applied: bool,
    /// Whether the receipt carried a desired state (learned as over QUIC:
    /// see [`crate::uplink::desired_items`]).
    pub desired_state: bool,
    /// The seqs of the events recorded (`inventory.desired` and the drift
    /// the node detects, when the desired state is new to it, then
    /// `connectivity.sync_completed`).
    pub recorded: Vec<u64>,
}

/// Verifies a receipt file and applies it to `journal` (see the module
/// doc). `now` is the time of the certificate check and of the recorded
/// events.
pub fn import_receipt(
    dir: &DataDir,
    journal: &mut impl BundleJournal,
    bytes: &[u8],
    now: Timestamp,
) -> Result<ReceiptApplied, AgentBundleError> {
    let signed = decode_receipt(bytes)?;
    verify_aggregator_certificate(&dir.ca_path(), &signed, now)?;
    let receipt = signed.receipt;
    let node_id = journal.node_id();
    if receipt.node_id != node_id {
        return Err(BundleError::ReceiptForOtherNode {
            receipt: receipt.node_id,
            node: node_id,
        }
        .into());
    }
    let head = journal.head();
    if receipt.head.seq > head.seq {
        return Err(BundleError::ReceiptBeyondHead {
            seq: receipt.head.seq,
            head: head.seq,
        }
        .into());
    }
    let marks = journal.marks();
    let mut outcome = ReceiptApplied {
        node_id,
        aggregator: receipt.aggregator.clone(),
        head: receipt.head,
        applied: false,
        desired_state: receipt.desired.is_some(),
        recorded: Vec::new(),
    };
    // Our own event at that seq must be the one the aggregator holds.
    if receipt.head.seq >= marks.first_held_seq {
        let held = journal.read(receipt.head.seq, 1)?;
        match held.first() {
            Some(e) if e.event.seq == receipt.head.seq && e.hash == receipt.head.hash => {}
            Some(e) => {
                return Err(BundleError::ReceiptHeadMismatch {
                    seq: receipt.head.seq,
                    receipt: receipt.head.hash,
                    journal: e.hash,
                }
                .into());
            }
            None => {
                return Err(BundleError::ReceiptBeyondHead {
                    seq: receipt.head.seq,
                    head: head.seq,
                }
                .into());
            }
        }
    }
    if receipt.head.seq <= marks.receipted_seq {
        return Ok(outcome);
    }
    journal.set_receipted(receipt.head)?;
    let mut items = match receipt.desired {
        Some(desired) => crate::uplink::desired_items(&journal.twin()?, desired, now),
        None => Vec::new(),
    };
    items.push((
        now,
        EventPayload::SyncCompleted(SyncCompleted {
            acked_seq: receipt.head.seq,
            via: SyncPath::Bundle,
        }),
    ));
    let appended = journal.append(items)?;
    outcome.applied = true;
    outcome.recorded = appended.events.iter().map(|e| e.event.seq).collect();
    Ok(outcome)
}

/// Imports a receipt into a stopped agent's journal.
pub fn import_receipt_stopped(
    dir: &DataDir,
    bytes: &[u8],
    now: Timestamp,
) -> Result<ReceiptApplied, AgentBundleError> {
    let mut journal = dir.open_journal()?;
    let applied = import_receipt(dir, &mut journal, bytes, now)?;
    journal.close()?;
    Ok(applied)
}

/// The receipt's first certificate must chain to the fleet CA for server
/// use, carry the key that signed the receipt, and name the aggregator the
/// receipt names.
fn verify_aggregator_certificate(
    ca_path: &Path,
    signed: &sx_common::bundle::SignedReceipt,
    now: Timestamp,
) -> Result<(), AgentBundleError> {
    let untrusted = |reason: String| BundleError::UntrustedCertificate { reason };
    let (leaf, rest) = signed
        .certificates
        .split_first()
        .ok_or(BundleError::NoCertificate)?;
    let roots = sx_certs::load_certs_pem(ca_path).map_err(|e| AgentBundleError::Certificates {
        path: ca_path.to_owned(),
        reason: e.to_string(),
    })?;
    let anchors = roots
        .iter()
        .map(|c| webpki::anchor_from_trusted_cert(c).map(|a| a.to_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| AgentBundleError::Certificates {
            path: ca_path.to_owned(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    let leaf_der = CertificateDer::from(leaf.as_slice());
    let intermediates: Vec<CertificateDer<'_>> = rest
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let end_entity =
        webpki::EndEntityCert::try_from(&leaf_der).map_err(|e| untrusted(e.to_string()))?;
    let at = UnixTime::since_unix_epoch(Duration::from_secs(
        u64::try_from(now.as_secs()).unwrap_or(0),
    ));
    end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &intermediates,
            at,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| untrusted(e.to_string()))?;
    let info = sx_certs::inspect_der(leaf).map_err(|e| untrusted(e.to_string()))?;
    if info.public_key.as_slice() != signed.receipt.aggregator_key.0.as_slice() {
        return Err(BundleError::KeyMismatch.into());
    }
    let name = info.aggregator_name().unwrap_or_default();
    if name != signed.receipt.aggregator {
        return Err(BundleError::IdentityMismatch {
            certificate: name.to_owned(),
            signed: signed.receipt.aggregator.clone(),
        }
        .into());
    }
    Ok(())
}

// --- the local socket ---------------------------------------------------------

/// A bundle operation asked of the running agent over its local socket.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LocalRequest {
    /// Export a bundle to a file (absolute path).
    Export(ExportRequest),
    /// Apply a receipt (the file's bytes, hex).
    ImportReceipt { receipt_hex: String },
}

/// The answer to a [`LocalRequest`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LocalAnswer {
    Exported(Exported),
    ReceiptApplied(ReceiptApplied),
}

/// Serves a bundle request in the running agent: the work runs on a
/// blocking thread and takes the journal only chunk by chunk.
pub async fn serve_local(
    request: LocalRequest,
    dir: DataDir,
    journal: JournalHandle,
) -> Result<LocalAnswer, AgentBundleError> {
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut running = RunningJournal::new(journal, runtime);
        let now = Timestamp::now();
        match request {
            LocalRequest::Export(req) => {
                export(&dir, &mut running, &req, now).map(LocalAnswer::Exported)
            }
            LocalRequest::ImportReceipt { receipt_hex } => {
                let bytes = hex::decode(receipt_hex).map_err(|e| {
                    BundleError::Decode(sx_common::codec::DecodeError::Malformed(e.to_string()))
                })?;
                import_receipt(&dir, &mut running, &bytes, now).map(LocalAnswer::ReceiptApplied)
            }
        }
    })
    .await
    // The closure only panics on a bug; carry the panic on.
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// Reads a bundle or receipt file, refusing one above `limit` before
/// reading it.
pub fn read_limited(path: &Path, limit: usize) -> Result<Vec<u8>, AgentBundleError> {
    let size = fs::metadata(path).map_err(io_error(path))?.len();
    if size > limit as u64 {
        return Err(BundleError::TooLarge {
            size,
            limit: limit as u64,
        }
        .into());
    }
    fs::read(path).map_err(io_error(path))
}
