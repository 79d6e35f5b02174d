//! Bundle import: events that arrived on removable media enter the store
//! through the same verification, dedupe, fork detection and durable commit
//! as QUIC ingest.
//!
//! [`Importer::verify`] checks what the bundle alone can show: the file
//! ([`sx_common::bundle::decode_bundle`]: encoding, signatures, digests,
//! chain, checkpoints), the certificate chain against the fleet CA and CRL
//! (the same rustls/webpki client-certificate verifier as the QUIC
//! endpoint), that the certificate's node id and key are the manifest's,
//! the expiry, and that the bundle is meant for this region (and this
//! aggregator, when it names one).
//!
//! [`Importer::commit`] then checks the counter (see below) and hands each
//! segment of the bundle, closed by its node-signed checkpoint, to the
//! single writer ([`Ingest`]) as a [`Submission`] with `via:
//! SyncPath::Bundle`: the store runs `admit_batch` on it exactly as on a
//! QUIC batch, dedupes what it holds, records forks as evidence, commits
//! durably and sets the node's `last_sync`/`last_sync_via` (only for a
//! bundle newer than every one imported before: re-importing an old bundle
//! is no news of the node and leaves its sync debt as it was). A bundle whose
//! events are all held changes no event and is reported as already held.
//!
//! **Out of order.** A bundle that starts past the stored head + 1 is
//! refused with [`BundleError::MissingEvents`] ("missing seq N..M"),
//! changing nothing; imported again once the gap is filled it is accepted.
//! The store holds each node's stream gapless, so events beyond a gap have
//! nowhere to go, and parking them would be a second, unverified store.
//! `sx-aggregator import-bundle` retries such files after the others in the
//! same run, so `import-bundle *.sxbundle` works in any order.
//!
//! **Nothing partial from a bad bundle.** A bundle that fails any check is
//! refused before the first submission. Against the store, a verified
//! bundle's segments either all bring new events or none does: events up
//! to the stored head are duplicates or a fork, and after a fork nothing in
//! the bundle chains to the stored head. Only a store failure in the middle
//! of a large import can leave a verified prefix stored; importing the
//! file again completes it.
//!
//! **Counter.** The highest bundle counter imported per node is kept in
//! `<data-dir>/bundle-counters.json` (replaced atomically after the
//! commit). A bundle with a lower counter is refused as a rollback when it
//! brings new events (its last seq is above the stored head); one that
//! brings nothing new is harmless and accepted.
//!
//! **Receipt.** Every accepted import produces a receipt file signed with
//! the aggregator's key (its certificate chain included) naming the node's
//! durable head and the node's desired state, resolved as QUIC's `Resume`
//! resolves it: through the running aggregator's API, by the projections;
//! on a stopped store, by [`stored_desired`] from the declaration the store
//! records (or the configured file) and the node's stored events
//! ([`Importer::with_desired`] is the seam).
//!
//! Imports run one at a time per process. The CLI opens the store itself
//! when no aggregator runs on the data directory; otherwise it posts the
//! bundle to the running aggregator's `POST /api/v1/bundles` ([`routes`]),
//! since redb opens the store file exclusively.

use crate::config::Config;
use crate::ingest::{GroupCommit, Ingest};
use crate::server::{Refusal, Shared};
use crate::store::{EventStore, RedbStore, StoreError, Submission, read_chunks};
use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use ed25519_dalek::SigningKey;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use sx_common::DigitalTwin;
use sx_common::bundle::{Bundle, BundleError, MAX_BUNDLE_BYTES, Receipt, decode_bundle};
use sx_common::chain::ChainHead;
use sx_common::desired::{DesiredSpec, NodePlace};
use sx_common::event::SyncPath;
use sx_common::fold;
use sx_common::protocol::Rejection;
use sx_common::time::Timestamp;
use sx_common::wire::DesiredState;

/// The per-node highest imported counters, in the data directory.
pub const COUNTERS_FILE: &str = "bundle-counters.json";

/// One import at a time per process: the counter check, the submissions
/// and the counter update of one bundle never interleave with another's.
static IMPORT_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The node's desired state for a receipt. `None` until the aggregator
/// knows desired state (the projections provide it).
pub type DesiredLookup = Arc<dyn Fn(&str) -> Option<DesiredState> + Send + Sync>;

/// Everything an import needs besides the store: trust anchors, this
/// aggregator's identity and receipt key, the counter file.
pub struct Importer {
    name: String,
    region: String,
    verifier: Arc<dyn ClientCertVerifier>,
    signer: SigningKey,
    chain: Vec<Vec<u8>>,
    counters: PathBuf,
    desired: DesiredLookup,
}

impl std::fmt::Debug for Importer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the signing key.
        f.debug_struct("Importer")
            .field("name", &self.name)
            .field("region", &self.region)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

/// A bundle that passed every check that does not need the store.
#[derive(Debug)]
pub struct VerifiedImport {
    bundle: Bundle,
    fingerprint: String,
}

impl VerifiedImport {
    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }
}

/// Whether an accepted bundle brought anything new.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImportOutcome {
    /// New events were durably stored.
    Imported,
    /// Every event was already held (an earlier bundle or QUIC): nothing
    /// changed.
    AlreadyHeld,
}

/// What an accepted import did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Imported {
    pub node_id: String,
    pub counter: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub new_events: u64,
    /// The node's durable head after the import.
    pub head: ChainHead,
    pub outcome: ImportOutcome,
    /// The signed receipt file for the node.
    #[serde(with = "hex_bytes")]
    pub receipt: Vec<u8>,
}

impl Importer {
    /// The importer of the aggregator `config` describes: fleet CA and CRL,
    /// the aggregator's key and certificate chain (for receipts), and
    /// the counter file in its data directory. No desired state.
    pub fn from_config(config: &Config) -> Result<Self> {
        let files = config.tls_files();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for ca in sx_certs::load_certs_pem(&files.ca).context("fleet CA")? {
            roots.add(ca).context("fleet CA certificate")?;
        }
        let crls = if files.crl.exists() {
            sx_certs::load_crls_pem(&files.crl).context("CRL")?
        } else {
            Vec::new()
        };
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .with_crls(crls)
                .build()
                .context("certificate verifier")?;
        let signer = sx_certs::load_signing_key(&files.key).context("aggregator key")?;
        let chain = sx_certs::load_certs_pem(&files.cert_chain)
            .context("aggregator certificate chain")?
            .into_iter()
            .map(|c| c.as_ref().to_vec())
            .collect();
        Ok(Importer {
            name: config.aggregator.name.clone(),
            region: config.aggregator.region.clone(),
            verifier,
            signer,
            chain,
            counters: config.aggregator.data_dir.join(COUNTERS_FILE),
            desired: Arc::new(|_| None),
        })
    }

    /// Sets where receipts get the node's desired state from.
    pub fn with_desired(mut self, desired: DesiredLookup) -> Self {
        self.desired = desired;
        self
    }

    /// The checks that need no store (see the module doc). CPU-bound: run
    /// it off the async threads for large bundles.
    pub fn verify(&self, bytes: &[u8], now: Timestamp) -> Result<VerifiedImport, BundleError> {
        let bundle = decode_bundle(bytes)?;
        let manifest = bundle.manifest();
        let untrusted = |reason: String| BundleError::UntrustedCertificate { reason };
        let (leaf, rest) = bundle
            .certificates()
            .split_first()
            .ok_or(BundleError::NoCertificate)?;
        let leaf_der = CertificateDer::from(leaf.as_slice());
        let intermediates: Vec<CertificateDer<'_>> = rest
            .iter()
            .map(|c| CertificateDer::from(c.as_slice()))
            .collect();
        let at = UnixTime::since_unix_epoch(Duration::from_secs(
            u64::try_from(now.as_secs()).unwrap_or(0),
        ));
        self.verifier
            .verify_client_cert(&leaf_der, &intermediates, at)
            .map_err(|e| match e {
                rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked) => {
                    BundleError::RevokedCertificate
                }
                other => untrusted(other.to_string()),
            })?;
        let info = sx_certs::inspect_der(leaf).map_err(|e| untrusted(e.to_string()))?;
        let certificate_node = info
            .node_id
            .clone()
            .ok_or_else(|| untrusted("the certificate names no node".to_owned()))?;
        if certificate_node != manifest.node_id {
            return Err(BundleError::IdentityMismatch {
                certificate: certificate_node,
                signed: manifest.node_id.clone(),
            });
        }
        if info.public_key.as_slice() != manifest.public_key.0.as_slice() {
            return Err(BundleError::KeyMismatch);
        }
        manifest.check_expiry(now)?;
        if manifest.region != self.region {
            return Err(BundleError::WrongRegion {
                bundle: manifest.region.clone(),
                aggregator: self.region.clone(),
            });
        }
        if let Some(aggregator) = &manifest.aggregator
            && *aggregator != self.name
        {
            return Err(BundleError::WrongAggregator {
                bundle: aggregator.clone(),
                aggregator: self.name.clone(),
            });
        }
        Ok(VerifiedImport {
            bundle,
            fingerprint: info.fingerprint,
        })
    }

    /// The store side of an import (see the module doc): counter check,
    /// one submission per segment through the single writer, counter
    /// update, receipt.
    pub async fn commit(
        &self,
        verified: VerifiedImport,
        store: &dyn EventStore,
        ingest: &Ingest,
        now: Timestamp,
    ) -> Result<Imported, BundleError> {
        let _one_at_a_time = IMPORT_LOCK.lock().await;
        let manifest = verified.bundle.manifest().clone();
        let node_id = manifest.node_id.clone();
        let mut counters = CounterBook::load(&self.counters)?;
        let stored = store.head(&node_id).map_err(store_failure)?;
        if let Some(highest) = counters.highest(&node_id)
            && manifest.counter < highest
            && manifest.last_seq > stored.seq
        {
            return Err(BundleError::Rollback {
                node_id,
                counter: manifest.counter,
                highest,
            });
        }

        // Only a bundle newer than every one imported before is news of the
        // node (moves its last sync); the same or an older one again is not.
        let news = counters
            .highest(&node_id)
            .is_none_or(|highest| manifest.counter > highest);
        let key = verified.bundle.key();
        let mut verdicts = Vec::new();
        for (events, checkpoint) in verified.bundle.into_segments() {
            let submission = Submission {
                node_id: node_id.clone(),
                key,
                cert_fingerprint: verified.fingerprint.clone(),
                events,
                checkpoint,
                via: SyncPath::Bundle,
                received_at: now,
                news,
            };
            let verdict = ingest
                .submit(submission)
                .await
                .map_err(|e| BundleError::Store(e.to_string()))?;
            verdicts.push(verdict);
        }
        let mut new_events = 0;
        let mut head = stored;
        let mut refusal = None;
        for verdict in verdicts {
            match verdict.await {
                Ok(Ok(admitted)) => {
                    new_events += admitted.new_count;
                    if admitted.head.seq > head.seq {
                        head = admitted.head;
                    }
                }
                Ok(Err(rejection)) => {
                    refusal.get_or_insert_with(|| refused(rejection, manifest.first_seq));
                }
                Err(_) => {
                    refusal.get_or_insert(BundleError::Store("the writer stopped".to_owned()));
                }
            }
        }
        if let Some(refusal) = refusal {
            return Err(refusal);
        }
        if counters.raise(&node_id, manifest.counter, now) {
            counters.save(&self.counters)?;
        }
        // QUIC may have moved the head further meanwhile: name the latest.
        let durable = store.head(&node_id).map_err(store_failure)?;
        if durable.seq > head.seq {
            head = durable;
        }
        let receipt = Receipt {
            node_id: node_id.clone(),
            head,
            bundle_counter: manifest.counter,
            bundle_first_seq: manifest.first_seq,
            bundle_last_seq: manifest.last_seq,
            new_events,
            aggregator: self.name.clone(),
            region: self.region.clone(),
            issued_at: now,
            desired: (self.desired)(&node_id),
            aggregator_key: sx_common::bundle::KeyBytes([0; 32]),
            certificates_digest: sx_common::Digest::GENESIS,
        };
        let receipt = sx_common::bundle::encode_receipt(&self.signer, receipt, &self.chain);
        Ok(Imported {
            node_id,
            counter: manifest.counter,
            first_seq: manifest.first_seq,
            last_seq: manifest.last_seq,
            new_events,
            head,
            outcome: if new_events > 0 {
                ImportOutcome::Imported
            } else {
                ImportOutcome::AlreadyHeld
            },
            receipt,
        })
    }

    /// [`verify`](Importer::verify) then [`commit`](Importer::commit).
    pub async fn import(
        &self,
        bytes: &[u8],
        store: &dyn EventStore,
        ingest: &Ingest,
        now: Timestamp,
    ) -> Result<Imported, BundleError> {
        let verified = self.verify(bytes, now)?;
        self.commit(verified, store, ingest, now).await
    }
}

/// The store's reason for not taking a segment, as a bundle error.
fn refused(rejection: Rejection, first_seq: u64) -> BundleError {
    match rejection {
        Rejection::AheadOfDurable { durable } => BundleError::MissingEvents {
            from: durable.seq + 1,
            to: first_seq.saturating_sub(1).max(durable.seq + 1),
        },
        Rejection::Invalid(sx_common::VerifyError::Fork {
            seq,
            stored,
            offered,
        }) => BundleError::Fork {
            seq,
            stored,
            offered,
        },
        Rejection::Invalid(other) => BundleError::Rejected(other),
        Rejection::Internal(message) => BundleError::Store(message),
    }
}

fn store_failure(e: StoreError) -> BundleError {
    BundleError::Store(e.to_string())
}

// --- the counter file -------------------------------------------------------

/// The highest bundle counter imported per node.
#[derive(Debug, Default, Serialize, Deserialize)]
struct CounterBook {
    nodes: BTreeMap<String, CounterEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CounterEntry {
    counter: u64,
    imported_at: Timestamp,
}

impl CounterBook {
    fn load(path: &Path) -> Result<Self, BundleError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| BundleError::Store(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(CounterBook::default()),
            Err(e) => Err(BundleError::Store(format!("{}: {e}", path.display()))),
        }
    }

    fn highest(&self, node: &str) -> Option<u64> {
        self.nodes.get(node).map(|e| e.counter)
    }

    /// Records `counter` if it is the node's highest; whether it was.
    fn raise(&mut self, node: &str, counter: u64, now: Timestamp) -> bool {
        if self.highest(node).is_some_and(|h| h >= counter) {
            return false;
        }
        self.nodes.insert(
            node.to_owned(),
            CounterEntry {
                counter,
                imported_at: now,
            },
        );
        true
    }

    /// Replaces the file atomically (temporary file, fsync, rename).
    fn save(&self, path: &Path) -> Result<(), BundleError> {
        let failed = |e: std::io::Error| BundleError::Store(format!("{}: {e}", path.display()));
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)?;
            if let Some(dir) = path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(failed)
    }
}

// --- HTTP -------------------------------------------------------------------

/// `POST /api/v1/bundles`: the body is a bundle file; the answer is the
/// [`Imported`] report (with the receipt, hex) or `{"error", "cause"}` with
/// the [`BundleError::code`].
pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/v1/bundles", post(import_http))
        .layer(DefaultBodyLimit::max(MAX_BUNDLE_BYTES))
}

/// A refused import, as the API answers it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImportRefusal {
    pub error: String,
    pub cause: String,
}

async fn import_http(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let now = Timestamp::now();
    // Read the trust material per request: a new CRL applies at once.
    // Receipts carry the desired state the projections resolve for the
    // node, as QUIC's `Resume` does (none while the node is unknown to
    // them, e.g. before they caught up with its first events).
    let projections = shared.projections.clone();
    let desired: DesiredLookup = Arc::new(move |node: &str| {
        projections.read(|e| {
            e.node(node).map(|v| {
                e.desired()
                    .resolve(&sx_common::desired::NodePlace::of(&v.twin))
            })
        })
    });
    let importer = match Importer::from_config(&shared.config) {
        Ok(i) => Arc::new(i.with_desired(desired)),
        Err(e) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(ImportRefusal {
                    error: format!("{e:#}"),
                    cause: "configuration".to_owned(),
                }),
            )
                .into_response();
        }
    };
    let verifying = importer.clone();
    let verified = tokio::task::spawn_blocking(move || verifying.verify(&body, now))
        .await
        .unwrap_or_else(|e| Err(BundleError::Store(format!("verification panicked: {e}"))));
    let result = match verified {
        Ok(v) => {
            importer
                .commit(v, shared.store.as_ref(), &shared.ingest, now)
                .await
        }
        Err(e) => Err(e),
    };
    shared.metrics.bundle_import(match &result {
        Ok(i) if i.outcome == ImportOutcome::Imported => "imported",
        Ok(_) => "already-held",
        Err(_) => "refused",
    });
    match result {
        Ok(imported) => {
            // The node's last sync moved (even when it held every event).
            shared.observe([imported.node_id.as_str()]);
            tracing::info!(
                node = %imported.node_id,
                counter = imported.counter,
                new = imported.new_events,
                head = imported.head.seq,
                "bundle imported"
            );
            Json(imported).into_response()
        }
        Err(e) => {
            shared.refusals.record(Refusal {
                at: now,
                peer: "bundle".to_owned(),
                node_id: None,
                reason: format!("bundle-{}", e.code()),
                detail: e.to_string(),
            });
            let status = match e {
                BundleError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
                BundleError::MissingEvents { .. } | BundleError::Fork { .. } => {
                    StatusCode::CONFLICT
                }
                BundleError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            let refusal = ImportRefusal {
                error: e.to_string(),
                cause: e.code().to_owned(),
            };
            (status, Json(refusal)).into_response()
        }
    }
}

// --- the command line -------------------------------------------------------

/// `sx-aggregator import-bundle`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// Bundle files, in any order: one refused for missing events is tried
    /// again after the others.
    #[arg(value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
    /// Data directory (redb files).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// PKI directory in the sx-certs layout.
    #[arg(long)]
    pub pki_dir: Option<PathBuf>,
    /// Aggregator name (its certificate under pki/aggregators/NAME).
    #[arg(long)]
    pub name: Option<String>,
    /// Region this aggregator serves.
    #[arg(long)]
    pub region: Option<String>,
    /// Write each receipt here, as `<node>-<counter>.sxreceipt`.
    #[arg(long)]
    pub receipt_dir: Option<PathBuf>,
    /// Desired-state declaration (TOML or JSON) the receipts resolve for
    /// their node when importing on a stopped store (default: the
    /// configured `desired`, else the declaration the store records).
    #[arg(long)]
    pub desired: Option<PathBuf>,
    /// API of the running aggregator, used when it holds the store
    /// (default: the configured `api_listen`).
    #[arg(long)]
    pub api: Option<String>,
    /// Operator token for that API when it listens beyond loopback
    /// (default: the configured `operator_token`).
    #[arg(long, env = "SX_OPERATOR_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print one JSON object per file.
    #[arg(long)]
    pub json: bool,
}

/// The result of one file: the import, or the refusal's code and message.
type FileResult = std::result::Result<Imported, ImportRefusal>;

/// Runs `sx-aggregator import-bundle`: against the store directly when no
/// aggregator holds it, else through the running aggregator's API. Fails
/// when any file was refused.
pub fn run_cli(mut config: Config, args: ImportArgs) -> Result<()> {
    if let Some(v) = args.data_dir.clone() {
        config.aggregator.data_dir = v;
    }
    if let Some(v) = args.pki_dir.clone() {
        config.tls.pki_dir = Some(v);
    }
    if let Some(v) = args.name.clone() {
        config.aggregator.name = v;
    }
    if let Some(v) = args.region.clone() {
        config.aggregator.region = v;
    }
    if let Some(v) = args.desired.clone() {
        config.aggregator.desired = Some(v);
    }
    if let Some(dir) = &args.receipt_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::create_dir_all(&config.aggregator.data_dir)
        .with_context(|| format!("creating {}", config.aggregator.data_dir.display()))?;
    let results = match RedbStore::open(config.store_path()) {
        Ok(store) => {
            let store: Arc<dyn EventStore> = Arc::new(store);
            let importer = Importer::from_config(&config)?
                .with_desired(stored_desired(&config, store.clone())?);
            let ingest = Ingest::start(
                store.clone(),
                GroupCommit {
                    max_events: config.ingest.group_commit_max_events,
                    ..GroupCommit::default()
                },
            );
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            import_all(&args.files, |bytes| {
                runtime
                    .block_on(importer.import(bytes, store.as_ref(), &ingest, Timestamp::now()))
                    .map_err(|e| ImportRefusal {
                        error: e.to_string(),
                        cause: e.code().to_owned(),
                    })
            })
        }
        Err(StoreError::Storage(redb::Error::DatabaseAlreadyOpen)) => {
            let api = args
                .api
                .clone()
                .unwrap_or_else(|| config.aggregator.api_listen.to_string());
            tracing::info!("the store is held by a running aggregator: importing through {api}");
            let token = args
                .token
                .clone()
                .or_else(|| config.aggregator.operator_token.clone());
            import_all(&args.files, |bytes| {
                post_bundle(&api, token.as_deref(), bytes)
            })
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!("opening the event store {}", config.store_path().display())
            });
        }
    };
    let mut refused = 0;
    for (path, result) in args.files.iter().zip(results) {
        let result = match result {
            Ok(r) => r,
            Err(e) => Err(ImportRefusal {
                error: format!("{e:#}"),
                cause: "unreadable".to_owned(),
            }),
        };
        if let (Ok(imported), Some(dir)) = (&result, &args.receipt_dir) {
            let receipt = dir.join(format!(
                "{}-{}.sxreceipt",
                imported.node_id, imported.counter
            ));
            std::fs::write(&receipt, &imported.receipt)
                .with_context(|| format!("writing {}", receipt.display()))?;
        }
        refused += usize::from(result.is_err());
        print_result(path, &result, args.json)?;
    }
    if refused > 0 {
        anyhow::bail!("{refused} of {} bundles refused", args.files.len());
    }
    Ok(())
}

/// Where receipts get desired state when `import-bundle` runs on a stopped
/// store: what a running aggregator on it would resolve. The declaration is
/// the one its recorded changes make, or the configured file (which `serve`
/// records at start); the node's place (component, region, zone, clusters)
/// is its twin folded from its stored events, as the projections fold it.
pub fn stored_desired(config: &Config, store: Arc<dyn EventStore>) -> Result<DesiredLookup> {
    let mut spec = DesiredSpec::default();
    for change in store
        .desired_changes(0)
        .context("reading the desired state")?
    {
        spec.apply(&change.change);
    }
    if let Some(path) = &config.aggregator.desired {
        spec = crate::server::read_desired(path)?;
    }
    Ok(Arc::new(move |node: &str| {
        let twin = stored_twin(store.as_ref(), node).ok()??;
        Some(spec.resolve(&NodePlace::of(&twin)))
    }))
}

/// A node's twin folded from its stored events; `None` for a node the
/// store does not hold.
fn stored_twin(store: &dyn EventStore, node: &str) -> Result<Option<DigitalTwin>, StoreError> {
    let mut twin = DigitalTwin::default();
    let mut any = false;
    read_chunks(store, node, 1, u64::MAX, |chunk| {
        any = true;
        for e in chunk {
            fold::fold_event(&mut twin, &e.event);
        }
        ControlFlow::Continue(())
    })?;
    if !any {
        return Ok(None);
    }
    fold::derive(&mut twin);
    Ok(Some(twin))
}

/// Imports every file with `import`, then again those refused for missing
/// events, for as long as a round stored something new. Results in file
/// order; an `Err` is a file that could not be read.
fn import_all(
    files: &[PathBuf],
    mut import: impl FnMut(&[u8]) -> FileResult,
) -> Vec<Result<FileResult>> {
    let mut results: Vec<Option<Result<FileResult>>> = files.iter().map(|_| None).collect();
    let mut pending: Vec<usize> = (0..files.len()).collect();
    loop {
        let mut progress = false;
        let mut again = Vec::new();
        for i in pending {
            let result = read_bundle(&files[i]).map(|bytes| import(&bytes));
            match &result {
                Ok(Ok(imported)) => progress |= imported.new_events > 0,
                Ok(Err(refusal)) if refusal.cause == "missing-events" => again.push(i),
                _ => {}
            }
            results[i] = Some(result);
        }
        if !progress || again.is_empty() {
            break;
        }
        pending = again;
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(anyhow::anyhow!("not tried"))))
        .collect()
}

/// Reads a bundle file, refusing one above the size limit before reading.
fn read_bundle(path: &Path) -> Result<Vec<u8>> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if size > MAX_BUNDLE_BYTES as u64 {
        return Err(BundleError::TooLarge {
            size,
            limit: MAX_BUNDLE_BYTES as u64,
        })
        .with_context(|| path.display().to_string());
    }
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Posts a bundle to a running aggregator's API.
fn post_bundle(api: &str, token: Option<&str>, bytes: &[u8]) -> FileResult {
    let url = format!("http://{api}/api/v1/bundles");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let unreachable = |e: String| ImportRefusal {
        error: format!(
            "the store is held by a running aggregator, but its API at {api} did not take the bundle: {e}"
        ),
        cause: "api-unreachable".to_owned(),
    };
    let mut request = agent
        .post(&url)
        .header("content-type", "application/octet-stream");
    if let Some(token) = token {
        request = request.header("authorization", &format!("Bearer {token}"));
    }
    let mut response = request
        .send(bytes)
        .map_err(|e| unreachable(e.to_string()))?;
    let ok = response.status().is_success();
    let body = response
        .body_mut()
        .with_config()
        .limit(16 << 20)
        .read_to_string()
        .map_err(|e| unreachable(e.to_string()))?;
    if ok {
        serde_json::from_str(&body).map_err(|e| unreachable(e.to_string()))
    } else {
        Err(serde_json::from_str(&body).unwrap_or_else(|_| unreachable(body)))
    }
}

fn print_result(path: &Path, result: &FileResult, json: bool) -> Result<()> {
    if json {
        let value = match result {
            Ok(imported) => serde_json::json!({
                "file": path, "ok": true, "outcome": imported.outcome,
                "node_id": imported.node_id, "counter": imported.counter,
                "first_seq": imported.first_seq, "last_seq": imported.last_seq,
                "new_events": imported.new_events, "head": imported.head,
            }),
            Err(refusal) => serde_json::json!({
                "file": path, "ok": false, "cause": refusal.cause, "error": refusal.error,
            }),
        };
        println!("{}", serde_json::to_string(&value)?);
        return Ok(());
    }
    match result {
        Ok(i) if i.outcome == ImportOutcome::Imported => println!(
            "imported {}: node {} seq {}..={} (counter {}): {} new events, head seq {} {}",
            path.display(),
            i.node_id,
            i.first_seq,
            i.last_seq,
            i.counter,
            i.new_events,
            i.head.seq,
            i.head.hash
        ),
        Ok(i) => println!(
            "already held {}: node {} seq {}..={} (counter {}): nothing changed, head seq {}",
            path.display(),
            i.node_id,
            i.first_seq,
            i.last_seq,
            i.counter,
            i.head.seq
        ),
        Err(refusal) => println!(
            "refused {} ({}): {}",
            path.display(),
            refusal.cause,
            refusal.error
        ),
    }
    Ok(())
}

/// Receipt bytes as hex in JSON.
mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        hex::decode(text).map_err(serde::de::Error::custom)
    }
}
