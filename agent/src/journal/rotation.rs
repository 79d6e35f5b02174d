//! Certificate rotation: the node moves to a new certificate and key
//! without breaking its journal's chain of custody.
//!
//! 1. [`prepare`] checks the new files before anything changes: the
//!    certificate chains to the fleet CA of the data directory and is valid
//!    now, names the same node (URI SAN) with the same component type,
//!    region and zone, is not the current certificate, and the key is its
//!    key and a new one. Any failure is a [`RotateError`] and nothing
//!    changed.
//! 2. [`apply`] stages the new files next to the old ones
//!    (`node.pem.rotating`, `node.key.rotating` with mode 0600, fsynced),
//!    then [`RedbJournal::rotate_key`] records `trust.certificate_rotated`
//!    as the last event signed with the old key and retires that key into
//!    the journal's key history in one durable transaction, and finally
//!    renames the staged files over `node.pem` and `node.key`.
//! 3. A crash between the journal commit and the renames leaves a journal
//!    that refuses the old `node.key` and a staged key it accepts:
//!    [`open_completing`] (every [`DataDir::open_journal`]) installs the
//!    staged files then. A crash before the commit leaves staged files the
//!    journal does not accept: they are removed.
//!
//! The aggregator verifies each batch against the key of the session's
//! client certificate, and the uplink signs a fresh checkpoint over every
//! batch it sends (see `JournalHandle::read_batch`): events checkpointed
//! under the old key but not yet delivered are sent, re-signed, over the
//! next session, which presents the new certificate.

use super::data_dir::{
    DataDirError, NodeIdentity, first_certificate, remove_if_exists, sync_dir, validate_chain,
};
use super::{AppendOutcome, DataDir, Journal, JournalError, RedbJournal};
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use serde::{Deserialize, Serialize};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use sx_common::event::CertificateRotated;
use sx_common::{Digest, EventPayload, Timestamp};

/// Suffix of the staged files of a rotation in progress.
const STAGED_SUFFIX: &str = "rotating";

/// The new certificate and key an operator rotates to.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RotateRequest {
    /// The new node certificate (PEM; the leaf first).
    pub cert: PathBuf,
    /// Its private key (PKCS#8 PEM).
    pub key: PathBuf,
}

/// Why a rotation was refused or failed. Every variant but
/// [`RotateError::Install`] means nothing changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RotateError {
    /// A file could not be read or parsed, the key is not the
    /// certificate's, or the certificate does not chain to the fleet CA
    /// (another CA, expired, not yet valid, wrong usage).
    #[error("new certificate refused")]
    Refused(#[source] DataDirError),
    /// The new certificate names another node.
    #[error("the new certificate names node {found:?} but this agent is {expected:?}")]
    WrongNode { expected: String, found: String },
    /// The new certificate binds another component type, region or zone.
    #[error(
        "the new certificate binds {field} {found:?} but the node's is {expected:?}; a rotation keeps the node's identity (re-enrol to change it)"
    )]
    IdentityChanged {
        field: &'static str,
        expected: String,
        found: String,
    },
    /// The new certificate is the one in use.
    #[error("the new certificate is the current one ({fingerprint})")]
    SameCertificate { fingerprint: String },
    /// The new key is the current key.
    #[error("the new certificate carries the current key: a rotation needs a fresh key")]
    SameKey,
    /// The data directory's certificate and key do not match its journal.
    #[error("the data directory's current identity is unusable")]
    Current(#[source] DataDirError),
    /// Staging the new files or the journal transaction failed; nothing
    /// changed (staged files were removed).
    #[error("rotation not recorded")]
    NotRecorded(#[source] DataDirError),
    /// The rotation is recorded in the journal but installing the new
    /// files failed; the next open of the journal completes it.
    #[error(
        "rotation recorded at seq {seq} but the new files were not installed (the next start of the agent installs them)"
    )]
    Install {
        seq: u64,
        #[source]
        source: DataDirError,
    },
}

/// A checked rotation, ready for [`apply`]: the new files' bytes as they
/// were checked, and the rotation event.
pub struct PreparedRotation {
    identity: NodeIdentity,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    key: SigningKey,
    old_fingerprint: String,
    old_public_key: Vec<u8>,
    event: CertificateRotated,
}

impl std::fmt::Debug for PreparedRotation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("PreparedRotation")
            .field("node_id", &self.identity.node_id)
            .field("old_fingerprint", &self.old_fingerprint)
            .field("new_fingerprint", &self.event.new_fingerprint)
            .finish_non_exhaustive()
    }
}

impl PreparedRotation {
    /// The new certificate, PEM, exactly as checked.
    pub fn cert_pem(&self) -> &[u8] {
        &self.cert_pem
    }

    /// The new key, PKCS#8 PEM, exactly as checked.
    pub fn key_pem(&self) -> &[u8] {
        &self.key_pem
    }
}

/// What a rotation did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rotated {
    pub node_id: String,
    pub old_fingerprint: String,
    pub new_fingerprint: String,
    pub new_valid_until: Timestamp,
    /// Seq of `trust.certificate_rotated`: the last checkpoint the old key
    /// signed.
    pub seq: u64,
    pub hash: Digest,
    /// How many keys the journal has retired so far.
    pub retired_keys: usize,
}

/// Checks a rotation to `request`'s files for `dir` at `now` (see the
/// module doc); reads every file once, changes nothing.
pub fn prepare(
    dir: &DataDir,
    request: &RotateRequest,
    now: Timestamp,
) -> Result<PreparedRotation, RotateError> {
    if !dir.is_initialised() {
        return Err(RotateError::Current(DataDirError::NotInitialised {
            dir: dir.root().to_owned(),
        }));
    }
    let current = dir.identity().map_err(RotateError::Current)?;
    let read = |path: &Path| {
        fs::read(path).map_err(|source| {
            RotateError::Refused(DataDirError::Io {
                path: path.to_owned(),
                source,
            })
        })
    };
    let cert_pem = read(&request.cert)?;
    let key_pem = read(&request.key)?;
    let identity = NodeIdentity::from_cert_file(&request.cert).map_err(RotateError::Refused)?;
    if identity.node_id != current.node_id {
        return Err(RotateError::WrongNode {
            expected: current.node_id,
            found: identity.node_id,
        });
    }
    for (field, expected, found) in [
        (
            "component type",
            &current.component_type,
            &identity.component_type,
        ),
        ("region", &current.region, &identity.region),
        ("zone", &current.zone, &identity.zone),
    ] {
        if expected != found {
            return Err(RotateError::IdentityChanged {
                field,
                expected: expected.clone(),
                found: found.clone(),
            });
        }
    }
    let key_text = std::str::from_utf8(&key_pem).map_err(|e| key_error(&request.key, e))?;
    let key = SigningKey::from_pkcs8_pem(key_text).map_err(|e| key_error(&request.key, e))?;
    if key.verifying_key().as_bytes().as_slice() != identity.certificate.public_key.as_slice() {
        return Err(RotateError::Refused(
            DataDirError::KeyDoesNotMatchCertificate {
                key: request.key.clone(),
                cert: request.cert.clone(),
            },
        ));
    }
    let ca = first_certificate(&dir.ca_path()).map_err(RotateError::Current)?;
    if !ca.is_ca {
        return Err(RotateError::Current(DataDirError::NotACa {
            path: dir.ca_path(),
        }));
    }
    validate_chain(&request.cert, &dir.ca_path(), now).map_err(RotateError::Refused)?;
    if identity.certificate.fingerprint == current.certificate.fingerprint {
        return Err(RotateError::SameCertificate {
            fingerprint: current.certificate.fingerprint,
        });
    }
    if identity.certificate.public_key == current.certificate.public_key {
        return Err(RotateError::SameKey);
    }
    let event = CertificateRotated {
        old_fingerprint: current.certificate.fingerprint.clone(),
        new_fingerprint: identity.certificate.fingerprint.clone(),
        new_certificate: String::from_utf8_lossy(&cert_pem).into_owned(),
        new_valid_until: Timestamp::from_secs(identity.certificate.not_after),
    };
    Ok(PreparedRotation {
        old_fingerprint: current.certificate.fingerprint,
        old_public_key: current.certificate.public_key,
        identity,
        cert_pem,
        key_pem,
        key,
        event,
    })
}

/// Applies a prepared rotation to `journal`, the open journal of `dir`
/// (see the module doc for the order of the steps). Returns what was done
/// and the journal append (the rotation event and its checkpoint, signed
/// with the old key).
pub fn apply(
    dir: &DataDir,
    journal: &mut RedbJournal,
    prepared: &PreparedRotation,
    now: Timestamp,
) -> Result<(Rotated, AppendOutcome), RotateError> {
    if journal.node_id() != prepared.identity.node_id {
        return Err(RotateError::Current(DataDirError::Journal(
            JournalError::WrongNode {
                expected: prepared.identity.node_id.clone(),
                found: journal.node_id().to_owned(),
            },
        )));
    }
    if journal.verifying_key().as_bytes().as_slice() != prepared.old_public_key.as_slice() {
        // node.pem is not the certificate of the key the journal signs with.
        return Err(RotateError::Current(
            DataDirError::KeyDoesNotMatchCertificate {
                key: dir.key_path(),
                cert: dir.cert_path(),
            },
        ));
    }
    let staged_cert = staged(&dir.cert_path());
    let staged_key = staged(&dir.key_path());
    let recorded = stage(&staged_cert, &prepared.cert_pem, 0o644)
        .and_then(|()| stage(&staged_key, &prepared.key_pem, 0o600))
        .and_then(|()| sync_dir(dir.root()))
        .and_then(|()| {
            journal
                .rotate_key(
                    (
                        now,
                        EventPayload::CertificateRotated(prepared.event.clone()),
                    ),
                    prepared.key.clone(),
                )
                .map_err(DataDirError::from)
        });
    let outcome = match recorded {
        Ok(outcome) => outcome,
        Err(e) => {
            let _ = remove_if_exists(&staged_cert);
            let _ = remove_if_exists(&staged_key);
            return Err(RotateError::NotRecorded(e));
        }
    };
    let head = outcome.head();
    install(dir).map_err(|source| RotateError::Install {
        seq: head.seq,
        source,
    })?;
    let rotated = Rotated {
        node_id: prepared.identity.node_id.clone(),
        old_fingerprint: prepared.old_fingerprint.clone(),
        new_fingerprint: prepared.event.new_fingerprint.clone(),
        new_valid_until: prepared.event.new_valid_until,
        seq: head.seq,
        hash: head.hash,
        retired_keys: journal.key_history().len(),
    };
    Ok((rotated, outcome))
}

/// `sx-agent rotate` on a stopped agent: prepare, open the journal, apply,
/// close.
pub fn rotate_stopped(
    dir: &DataDir,
    request: &RotateRequest,
    now: Timestamp,
) -> Result<Rotated, RotateError> {
    let prepared = prepare(dir, request, now)?;
    let mut journal = dir.open_journal().map_err(RotateError::Current)?;
    let (rotated, _) = apply(dir, &mut journal, &prepared, now)?;
    journal.close().map_err(|e| RotateError::Install {
        seq: rotated.seq,
        source: e.into(),
    })?;
    Ok(rotated)
}

/// Opens the journal of `dir`, completing an interrupted rotation or
/// discarding an unrecorded one (see the module doc).
pub(super) fn open_completing(dir: &DataDir) -> Result<RedbJournal, DataDirError> {
    let staged_key = staged(&dir.key_path());
    match RedbJournal::open(dir.journal_path(), dir.signing_key()?) {
        Ok(journal) => {
            if staged_key.exists() {
                // A rotation that failed before its journal commit.
                remove_if_exists(&staged(&dir.cert_path()))?;
                remove_if_exists(&staged_key)?;
            }
            Ok(journal)
        }
        // After the commit the old key is a retired one.
        Err(JournalError::KeyRetired { .. } | JournalError::KeyMismatch) if staged_key.exists() => {
            let key =
                sx_certs::load_signing_key(&staged_key).map_err(|source| DataDirError::Pki {
                    path: staged_key.clone(),
                    source,
                })?;
            let journal = RedbJournal::open(dir.journal_path(), key)?;
            tracing::warn!(
                dir = %dir.root().display(),
                "completing an interrupted certificate rotation: installing the staged certificate and key"
            );
            install(dir)?;
            Ok(journal)
        }
        Err(e) => Err(e.into()),
    }
}

/// Moves the staged files over the current ones (certificate first, key
/// last: the staged key marks a rotation in progress).
fn install(dir: &DataDir) -> Result<(), DataDirError> {
    for target in [dir.cert_path(), dir.key_path()] {
        let from = staged(&target);
        if from.exists() {
            fs::rename(&from, &target).map_err(|source| DataDirError::Io {
                path: target.clone(),
                source,
            })?;
        }
    }
    sync_dir(dir.root())
}

fn staged(path: &Path) -> PathBuf {
    path.with_extension(match path.extension() {
        Some(ext) => format!("{}.{STAGED_SUFFIX}", ext.to_string_lossy()),
        None => STAGED_SUFFIX.to_owned(),
    })
}

/// Writes `bytes` to a fresh file at `path` created with `mode`, fsynced.
fn stage(path: &Path, bytes: &[u8], mode: u32) -> Result<(), DataDirError> {
    remove_if_exists(path)?;
    let io = |source| DataDirError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}

fn key_error(path: &Path, e: impl std::fmt::Display) -> RotateError {
    RotateError::Refused(DataDirError::Pki {
        path: path.to_owned(),
        source: sx_certs::PkiError::Key {
            path: path.to_owned(),
            detail: e.to_string(),
        },
    })
}
