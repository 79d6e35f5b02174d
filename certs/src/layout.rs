//! Where the PKI keeps its files, and how it writes them.
//!
//! ```text
//! <pki-dir>/ca/ca.pem            CA certificate
//! <pki-dir>/ca/ca.key            CA private key, PKCS#8 PEM, mode 0600
//! <pki-dir>/ca/index.json        every issued certificate, revocations, CRL number
//! <pki-dir>/ca/crl.pem           current CRL, signed by the CA
//! <pki-dir>/ca/.lock             advisory lock held while the index changes
//! <pki-dir>/nodes/<node-id>/     cert.pem, key.pem (0600), chain.pem (cert + CA)
//! <pki-dir>/aggregators/<name>/  cert.pem, key.pem (0600), chain.pem
//! <pki-dir>/operators/<name>/    cert.pem, key.pem (0600), chain.pem
//! ```
//!
//! Every file is written atomically (temporary file in the same directory,
//! then rename), so a reader never sees half a certificate. Private keys are
//! created with mode 0600 from the start; directories with mode 0700.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{CertKind, PkiError};

/// File name of a leaf certificate inside its directory.
pub const CERT_FILE: &str = "cert.pem";
/// File name of a leaf private key inside its directory.
pub const KEY_FILE: &str = "key.pem";
/// File name of a leaf chain (leaf certificate then CA certificate).
pub const CHAIN_FILE: &str = "chain.pem";

/// Mode of private key files.
pub const KEY_MODE: u32 = 0o600;
/// Mode of certificates, chains, the index and the CRL.
pub const PUBLIC_MODE: u32 = 0o644;
/// Mode of the directories the PKI creates.
pub const DIR_MODE: u32 = 0o700;

/// A PKI directory: the fleet CA plus everything it issued.
///
/// Holding a `Pki` means the directory existed with a CA in it when it was
/// opened (or was just initialised); every operation re-reads the CA and the
/// index from disk, so several `Pki` values (or processes) may share a
/// directory. Changes to the index are serialised by an advisory file lock.
#[derive(Debug, Clone)]
pub struct Pki {
    pub(crate) root: PathBuf,
}

impl Pki {
    /// The PKI root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<pki-dir>/ca`.
    pub fn ca_dir(&self) -> PathBuf {
        self.root.join("ca")
    }

    /// `<pki-dir>/ca/ca.pem`, the CA certificate (the trust anchor).
    pub fn ca_path(&self) -> PathBuf {
        self.ca_dir().join("ca.pem")
    }

    /// `<pki-dir>/ca/ca.key`, the CA private key.
    pub fn ca_key_path(&self) -> PathBuf {
        self.ca_dir().join("ca.key")
    }

    /// `<pki-dir>/ca/index.json`.
    pub fn index_path(&self) -> PathBuf {
        self.ca_dir().join("index.json")
    }

    /// `<pki-dir>/ca/crl.pem`.
    pub fn crl_path(&self) -> PathBuf {
        self.ca_dir().join("crl.pem")
    }

    /// `<pki-dir>/nodes/<node-id>`. The id is not validated here.
    pub fn node_dir(&self, node_id: &str) -> PathBuf {
        self.root.join("nodes").join(node_id)
    }

    /// `<pki-dir>/aggregators/<name>`. The name is not validated here.
    pub fn aggregator_dir(&self, name: &str) -> PathBuf {
        self.root.join("aggregators").join(name)
    }

    /// `<pki-dir>/operators/<name>`. The name is not validated here.
    pub fn operator_dir(&self, name: &str) -> PathBuf {
        self.root.join("operators").join(name)
    }

    /// The directory of a leaf of the given kind.
    pub fn leaf_dir(&self, kind: CertKind, name: &str) -> PathBuf {
        match kind {
            CertKind::Node => self.node_dir(name),
            CertKind::Aggregator => self.aggregator_dir(name),
            CertKind::Operator => self.operator_dir(name),
        }
    }

    fn lock_path(&self) -> PathBuf {
        self.ca_dir().join(".lock")
    }

    /// Takes the exclusive advisory lock on the index; released when the
    /// returned file is dropped.
    pub(crate) fn lock(&self) -> Result<File, PkiError> {
        let path = self.lock_path();
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(PUBLIC_MODE)
            .open(&path)
            .map_err(PkiError::io(&path))?;
        file.lock().map_err(PkiError::io(&path))?;
        Ok(file)
    }
}

/// Creates `dir` and its missing parents with mode 0700.
pub(crate) fn create_dir(dir: &Path) -> Result<(), PkiError> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(PkiError::io(dir))
}

/// Reads a whole text file.
pub(crate) fn read_text(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(PkiError::io(path))
}

/// Makes temporary file names unique within the process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Replaces `path` with `contents` atomically; the file has `mode` from the
/// moment it exists, so a key is never readable by others, not even briefly.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let unique = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{file_name}.tmp-{}-{unique}", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(PkiError::io(&tmp))?;
        file.write_all(contents).map_err(PkiError::io(&tmp))?;
        file.sync_all().map_err(PkiError::io(&tmp))?;
        fs::rename(&tmp, path).map_err(PkiError::io(path))
    })();
    if result.is_err() {
        // Best effort: the temporary file is garbage either way.
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn atomic_write_sets_mode_and_replaces() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("key.pem");
        write_atomic(&path, b"one", KEY_MODE)?;
        write_atomic(&path, b"two", KEY_MODE)?;
        assert_eq!(fs::read(&path)?, b"two");
        assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path())?.count(), 1);
        Ok(())
    }
}
