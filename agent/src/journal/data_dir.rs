//! The agent's data directory and the local operations on it.
//!
//! ```text
//! <data-dir>/node.pem       the node certificate (as given to `init`)
//! <data-dir>/node.key       the node's Ed25519 key, PKCS#8 PEM, mode 0600
//! <data-dir>/ca.pem         the fleet CA certificate
//! <data-dir>/journal.redb   the journal (see `RedbJournal`)
//! ```
//!
//! A directory is initialised once `journal.redb` exists: [`init`] builds
//! the journal under a temporary name, records the node's first events in
//! it and only then renames it into place, so an interrupted `init` leaves
//! no half-made journal behind.
//!
//! [`record_local`] is the seam for `sx-agent record`: it appends straight
//! to the journal file, which only works while no daemon holds it.

use super::{AppendOutcome, Journal, JournalError, Marks, RedbJournal};
use ed25519_dalek::SigningKey;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::{Deserialize, Serialize};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use sx_certs::{CertInfo, PkiError};
use sx_common::event::{IdentityReported, TrustChainValidated};
use sx_common::model::CertificateRef;
use sx_common::{Digest, EventPayload, Timestamp};

/// Environment variable naming the data directory when `--data-dir` is not
/// given.
pub const DATA_DIR_ENV: &str = "SX_AGENT_DATA";
/// The data directory when neither `--data-dir` nor [`DATA_DIR_ENV`] is set.
pub const DEFAULT_DATA_DIR: &str = "./agent-data";

const CERT_FILE: &str = "node.pem";
const KEY_FILE: &str = "node.key";
const CA_FILE: &str = "ca.pem";
const JOURNAL_FILE: &str = "journal.redb";
const JOURNAL_INIT_FILE: &str = "journal.redb.init";

/// Why an operation on the data directory failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataDirError {
    #[error("{dir} is not initialised (run `sx-agent init` first)")]
    NotInitialised { dir: PathBuf },
    #[error("{dir} is already initialised (use --force to replace its identity and journal)")]
    AlreadyInitialised { dir: PathBuf },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}")]
    Pki {
        path: PathBuf,
        #[source]
        source: PkiError,
    },
    #[error("{path}: no certificate in the file")]
    NoCertificate { path: PathBuf },
    #[error("{path}: the certificate does not bind a {field}; is it a node certificate?")]
    IncompleteCertificate { path: PathBuf, field: &'static str },
    #[error("key {key} does not belong to certificate {cert}")]
    KeyDoesNotMatchCertificate { key: PathBuf, cert: PathBuf },
    #[error("{path}: not a CA certificate")]
    NotACa { path: PathBuf },
    #[error("node certificate does not validate against the CA: {reason}")]
    ChainInvalid { reason: String },
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// An agent data directory (see the module doc for its files).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `node.pem`: the node certificate.
    pub fn cert_path(&self) -> PathBuf {
        self.root.join(CERT_FILE)
    }

    /// `node.key`: the node key (mode 0600).
    pub fn key_path(&self) -> PathBuf {
        self.root.join(KEY_FILE)
    }

    /// `ca.pem`: the fleet CA certificate.
    pub fn ca_path(&self) -> PathBuf {
        self.root.join(CA_FILE)
    }

    /// `journal.redb`: the journal.
    pub fn journal_path(&self) -> PathBuf {
        self.root.join(JOURNAL_FILE)
    }

    /// Whether [`init`] completed here.
    pub fn is_initialised(&self) -> bool {
        self.journal_path().is_file()
    }

    /// The identity bound by the node certificate kept here.
    pub fn identity(&self) -> Result<NodeIdentity, DataDirError> {
        NodeIdentity::from_cert_file(&self.cert_path())
    }

    /// The node's signing key.
    pub fn signing_key(&self) -> Result<SigningKey, DataDirError> {
        let path = self.key_path();
        sx_certs::load_signing_key(&path).map_err(|source| DataDirError::Pki { path, source })
    }

    /// Opens the journal with the node key, checking that it is the journal
    /// of the node the certificate names.
    ///
    /// Completes a certificate rotation a crash interrupted after its
    /// journal commit (see [`super::rotation`]): when the journal refuses
    /// `node.key` and the staged new key opens it, the staged files are
    /// installed first. Staged files of a rotation that never committed
    /// are removed.
    pub fn open_journal(&self) -> Result<RedbJournal, DataDirError> {
        if !self.is_initialised() {
            return Err(DataDirError::NotInitialised {
                dir: self.root.clone(),
            });
        }
        let journal = super::rotation::open_completing(self)?;
        let identity = self.identity()?;
        if journal.node_id() != identity.node_id {
            return Err(JournalError::WrongNode {
                expected: identity.node_id,
                found: journal.node_id().to_owned(),
            }
            .into());
        }
        Ok(journal)
    }
}

/// What a node certificate binds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeIdentity {
    pub node_id: String,
    pub component_type: String,
    pub region: String,
    pub zone: String,
    /// The certificate itself, as `sx_certs::inspect_pem` reads it.
    #[serde(skip)]
    pub certificate: CertInfo,
}

impl NodeIdentity {
    /// Reads the first certificate of a PEM file and requires the node
    /// fields (node id, component type, region, zone).
    pub fn from_cert_file(path: &Path) -> Result<Self, DataDirError> {
        let certificate = first_certificate(path)?;
        let field = |value: &Option<String>, field: &'static str| {
            value
                .clone()
                .ok_or_else(|| DataDirError::IncompleteCertificate {
                    path: path.to_owned(),
                    field,
                })
        };
        Ok(NodeIdentity {
            node_id: field(&certificate.node_id, "node id")?,
            component_type: field(&certificate.component_type, "component type")?,
            region: field(&certificate.region, "region")?,
            zone: field(&certificate.zone, "zone")?,
            certificate,
        })
    }
}

/// The files `init` takes its identity from.
#[derive(Clone, Debug)]
pub struct InitRequest {
    /// The node certificate (PEM; the leaf first).
    pub cert: PathBuf,
    /// The node key (PKCS#8 PEM).
    pub key: PathBuf,
    /// The fleet CA certificate (PEM).
    pub ca: PathBuf,
    /// Replace an existing identity and journal.
    pub force: bool,
    /// The time of the first events (and of the certificate check).
    pub now: Timestamp,
}

/// What `init` did.
#[derive(Clone, Debug)]
pub struct Initialised {
    pub identity: NodeIdentity,
    /// The first events (`inventory.identity`, `trust.chain_validated`).
    pub outcome: AppendOutcome,
}

/// Initialises `dir` from a node certificate, its key and the CA:
///
/// 1. the certificate must name a node id, component type, region and
///    zone; the key's public key must be the certificate's; the
///    certificate must validate against the CA (signature, validity at
///    `now`, client-auth usage);
/// 2. the three files are copied into `dir` (the key with mode 0600);
/// 3. the journal is created and its first transaction records
///    `inventory.identity` and `trust.chain_validated`.
///
/// Refuses an initialised directory unless `request.force`, which replaces
/// the identity and starts a new, empty journal.
pub fn init(dir: &DataDir, request: &InitRequest) -> Result<Initialised, DataDirError> {
    if dir.is_initialised() && !request.force {
        return Err(DataDirError::AlreadyInitialised {
            dir: dir.root.clone(),
        });
    }
    let identity = NodeIdentity::from_cert_file(&request.cert)?;
    let key = sx_certs::load_signing_key(&request.key).map_err(|source| DataDirError::Pki {
        path: request.key.clone(),
        source,
    })?;
    if key.verifying_key().as_bytes().as_slice() != identity.certificate.public_key.as_slice() {
        return Err(DataDirError::KeyDoesNotMatchCertificate {
            key: request.key.clone(),
            cert: request.cert.clone(),
        });
    }
    let ca = first_certificate(&request.ca)?;
    if !ca.is_ca {
        return Err(DataDirError::NotACa {
            path: request.ca.clone(),
        });
    }
    validate_chain(&request.cert, &request.ca, request.now)?;

    create_private_dir(&dir.root)?;
    copy_file(&request.cert, &dir.cert_path(), 0o644)?;
    copy_file(&request.key, &dir.key_path(), 0o600)?;
    copy_file(&request.ca, &dir.ca_path(), 0o644)?;

    let staging = dir.root.join(JOURNAL_INIT_FILE);
    remove_if_exists(&staging)?;
    let mut journal = RedbJournal::create(&staging, &identity.node_id, key)?;
    let outcome = journal.append_owned(first_events(&identity, &ca, request.now))?;
    journal.close()?;
    let target = dir.journal_path();
    fs::rename(&staging, &target).map_err(|source| DataDirError::Io {
        path: target.clone(),
        source,
    })?;
    sync_dir(&dir.root)?;
    Ok(Initialised { identity, outcome })
}

/// Appends `items` to the journal in `dir` directly, in one durable
/// transaction.
///
/// This is the local path of `sx-agent record`; when a daemon holds the
/// journal, the command must go through the daemon instead (the journal
/// file is opened exclusively).
pub fn record_local(
    dir: &DataDir,
    items: &[(Timestamp, EventPayload)],
) -> Result<AppendOutcome, DataDirError> {
    let mut journal = dir.open_journal()?;
    let outcome = journal.append(items)?;
    journal.close()?;
    Ok(outcome)
}

/// The journal's position and delivery state, as `sx-agent status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub node_id: String,
    pub head_seq: u64,
    pub head_hash: Digest,
    pub acked_seq: u64,
    pub acked_hash: Digest,
    pub exported_seq: u64,
    pub receipted_seq: u64,
    pub first_held_seq: u64,
    /// `head − max(acked, receipted)`: events the aggregator may not hold.
    pub backlog: u64,
    pub checkpoints: u64,
}

impl Status {
    /// Reads the status of any journal.
    pub fn of(journal: &impl Journal) -> Result<Self, JournalError> {
        let head = journal.head();
        let marks: Marks = journal.marks();
        Ok(Status {
            node_id: journal.node_id().to_owned(),
            head_seq: head.seq,
            head_hash: head.hash,
            acked_seq: marks.acked_seq,
            acked_hash: marks.acked_hash,
            exported_seq: marks.exported_seq,
            receipted_seq: marks.receipted_seq,
            first_held_seq: marks.first_held_seq,
            backlog: marks.backlog(head),
            checkpoints: journal.checkpoint_count()?,
        })
    }
}

/// The events `init` records first.
fn first_events(
    identity: &NodeIdentity,
    ca: &CertInfo,
    now: Timestamp,
) -> Vec<(Timestamp, EventPayload)> {
    let reference = |c: &CertInfo| CertificateRef {
        issuer: c.issuer.clone(),
        subject: c.subject.clone(),
        valid_until: Timestamp::from_secs(c.not_after),
        signature: c.fingerprint.clone(),
    };
    vec![
        (
            now,
            EventPayload::IdentityReported(IdentityReported {
                component_type: identity.component_type.clone(),
                region: identity.region.clone(),
                zone: identity.zone.clone(),
                trust_chain: vec![ca.subject.clone()],
            }),
        ),
        (
            now,
            EventPayload::TrustChainValidated(TrustChainValidated {
                chain: vec![reference(&identity.certificate), reference(ca)],
            }),
        ),
    ]
}

pub(super) fn first_certificate(path: &Path) -> Result<CertInfo, DataDirError> {
    let pem = fs::read_to_string(path).map_err(|source| DataDirError::Io {
        path: path.to_owned(),
        source,
    })?;
    sx_certs::inspect_pem(&pem)
        .map_err(|source| DataDirError::Pki {
            path: path.to_owned(),
            source,
        })?
        .into_iter()
        .next()
        .ok_or_else(|| DataDirError::NoCertificate {
            path: path.to_owned(),
        })
}

/// Validates the node certificate against the CA as a TLS server would
/// validate it as a client certificate (rustls/webpki): CA signature,
/// validity at `now`, client-auth key usage.
pub(super) fn validate_chain(cert: &Path, ca: &Path, now: Timestamp) -> Result<(), DataDirError> {
    let load = |path: &Path| -> Result<Vec<CertificateDer<'static>>, DataDirError> {
        sx_certs::load_certs_pem(path).map_err(|source| DataDirError::Pki {
            path: path.to_owned(),
            source,
        })
    };
    let invalid = |reason: String| DataDirError::ChainInvalid { reason };
    let chain = load(cert)?;
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or_else(|| DataDirError::NoCertificate {
            path: cert.to_owned(),
        })?;
    let mut roots = rustls::RootCertStore::empty();
    for root in load(ca)? {
        roots.add(root).map_err(|e| invalid(e.to_string()))?;
    }
    // A chain file may repeat the CA after the leaf; webpki ignores it.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| invalid(e.to_string()))?;
    let at = UnixTime::since_unix_epoch(Duration::from_secs(
        u64::try_from(now.as_secs()).unwrap_or(0),
    ));
    verifier
        .verify_client_cert(leaf, intermediates, at)
        .map_err(|e| invalid(e.to_string()))?;
    Ok(())
}

fn create_private_dir(path: &Path) -> Result<(), DataDirError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| DataDirError::Io {
            path: path.to_owned(),
            source,
        })
}

/// Copies `from` to `to` atomically (temporary file, fsync, rename), the
/// new file created with `mode` from the start.
fn copy_file(from: &Path, to: &Path, mode: u32) -> Result<(), DataDirError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| DataDirError::Io { path, source }
    };
    let bytes = fs::read(from).map_err(io_err(from))?;
    let tmp = to.with_extension("tmp");
    remove_if_exists(&tmp)?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    file.write_all(&bytes).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, to).map_err(io_err(to))
}

pub(super) fn remove_if_exists(path: &Path) -> Result<(), DataDirError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(DataDirError::Io {
            path: path.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

pub(super) fn sync_dir(path: &Path) -> Result<(), DataDirError> {
    File::open(path)
        .and_then(|dir| dir.sync_all())
        .map_err(|source| DataDirError::Io {
            path: path.to_owned(),
            source,
        })
}
