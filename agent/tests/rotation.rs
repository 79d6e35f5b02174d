//! Certificate rotation on a stopped agent: a real PKI from `sx-certs`, a
//! real data directory and redb journal, the real `sx-agent` binary.
//!
//! After a rotation every checkpoint verifies against the key of its time
//! (old checkpoints against the retired key, new ones against the new key);
//! every bad input is refused with a clear error and leaves the journal and
//! the identity files exactly as they were.

use ed25519_dalek::VerifyingKey;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use sx_agent::journal::data_dir::{self, InitRequest};
use sx_agent::journal::{DataDir, Journal, JournalError, RedbJournal};
use sx_certs::{CaOptions, IssuedCert, NodeRequest, Pki, Validity};
use sx_common::{EventPayload, Timestamp};

mod common;
use common::{failed, json, ok, path_str as s};

const NODE: &str = "sx-rempart-2026-prod-1-node-42";
const OTHER_NODE: &str = "sx-rempart-2026-prod-1-node-43";

struct Site {
    tmp: tempfile::TempDir,
    pki: Pki,
    dir: DataDir,
}

impl Site {
    /// A PKI, a node certificate and an initialised data directory with a
    /// few more events (so the old key signed several checkpoints).
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pki = Pki::init(tmp.path().join("pki"), &CaOptions::default()).expect("pki");
        let first = pki.issue_node(&request(NODE, false)).expect("node cert");
        let dir = DataDir::new(tmp.path().join("agent-data"));
        data_dir::init(
            &dir,
            &InitRequest {
                cert: first.cert_path.clone(),
                key: first.key_path.clone(),
                ca: pki.ca_path(),
                force: false,
                now: Timestamp::now(),
            },
        )
        .expect("init");
        let site = Site { tmp, pki, dir };
        for i in 0..3 {
            site.record(&format!(r#"{{"backlog": {i}}}"#));
        }
        site
    }

    /// Issues a new certificate for `node` and copies it (the PKI rewrites
    /// its per-node files on every issue) to `<tmp>/<name>.pem|.key`.
    fn issue(&self, name: &str, req: NodeRequest) -> (PathBuf, PathBuf, IssuedCert) {
        let issued = self.pki.issue_node(&req).expect("issue");
        self.keep(name, issued)
    }

    fn keep(&self, name: &str, issued: IssuedCert) -> (PathBuf, PathBuf, IssuedCert) {
        let cert = self.tmp.path().join(format!("{name}.pem"));
        let key = self.tmp.path().join(format!("{name}.key"));
        std::fs::write(&cert, &issued.cert_pem).expect("write cert");
        std::fs::write(&key, &issued.key_pem).expect("write key");
        (cert, key, issued)
    }

    fn agent(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_sx-agent"))
            .args(args)
            .env("SX_AGENT_DATA", self.dir.root())
            .env_remove("RUST_LOG")
            .output()
            .expect("run sx-agent")
    }

    fn record(&self, backlog_json: &str) -> Value {
        json(&ok(self.agent(&[
            "record",
            "connectivity.replay_started",
            backlog_json,
            "--json",
        ])))
    }

    fn rotate(&self, cert: &Path, key: &Path) -> Output {
        self.agent(&["rotate", "--cert", s(cert), "--key", s(key), "--json"])
    }

    /// Everything a refused rotation must leave untouched: the identity
    /// files byte for byte, no other file (nothing staged), and the
    /// journal's content: every event, every checkpoint with its
    /// signature, the marks and the keys. (The redb file's bytes are no
    /// measure: redb rewrites its header whenever a journal is opened.)
    fn snapshot(&self) -> Vec<(String, String)> {
        let mut files: Vec<(String, String)> = std::fs::read_dir(self.dir.root())
            .expect("data dir")
            .map(|e| e.expect("entry").path())
            .map(|p| {
                let name = p.file_name().expect("name").to_string_lossy().into_owned();
                let digest = if name == "journal.redb" {
                    self.journal_content()
                } else {
                    sx_certs::fingerprint(&std::fs::read(&p).expect("read"))
                };
                (name, digest)
            })
            .collect();
        files.sort();
        files
    }

    fn journal_content(&self) -> String {
        let journal = self.dir.open_journal().expect("open");
        let events = journal.read_range(1, usize::MAX).expect("events");
        let checkpoints = journal.checkpoints(0, u64::MAX).expect("checkpoints");
        let content = format!(
            "{events:?}\n{checkpoints:?}\n{:?}\n{:?}\n{:?}\n{:?}",
            journal.head(),
            journal.marks(),
            journal.verifying_key(),
            journal.key_history()
        );
        journal.close().expect("close");
        content
    }

    fn verifying_key_of(&self, cert_pem: &str) -> VerifyingKey {
        let info = sx_certs::inspect_pem(cert_pem)
            .expect("pem")
            .into_iter()
            .next()
            .expect("cert");
        VerifyingKey::from_bytes(&info.public_key.try_into().expect("32 bytes")).expect("key")
    }
}

fn request(node: &str, force: bool) -> NodeRequest {
    let mut req = NodeRequest::new(node, "souverix-rempart", "region-a", "edge-zone-a1");
    req.force = force;
    req
}

#[test]
fn rotation_keeps_every_checkpoint_verifiable() {
    let site = Site::new();
    let old_pem = std::fs::read_to_string(site.dir.cert_path()).expect("old cert");
    let old_key = site.verifying_key_of(&old_pem);
    let old_fingerprint = site
        .dir
        .identity()
        .expect("identity")
        .certificate
        .fingerprint;
    let head_before = site.dir.open_journal().expect("open").head();

    let (cert, key, issued) = site.issue("new", request(NODE, true));
    let rotated = json(&ok(site.rotate(&cert, &key)));
    let rotation_seq = head_before.seq + 1;
    assert_eq!(rotated["node_id"], NODE);
    assert_eq!(rotated["seq"], rotation_seq, "{rotated}");
    assert_eq!(rotated["old_fingerprint"], old_fingerprint.as_str());
    assert_eq!(rotated["new_fingerprint"], issued.fingerprint.as_str());
    assert_eq!(rotated["retired_keys"], 1);

    // The new identity is installed: the certificate as given, the key
    // with mode 0600, nothing staged left behind.
    assert_eq!(
        std::fs::read_to_string(site.dir.cert_path()).expect("cert"),
        issued.cert_pem
    );
    assert_eq!(
        std::fs::read_to_string(site.dir.key_path()).expect("key"),
        issued.key_pem
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(site.dir.key_path())
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let names: Vec<String> = site.snapshot().into_iter().map(|(n, _)| n).collect();
    assert!(names.iter().all(|n| !n.contains("rotating")), "{names:?}");

    // Later events are checkpointed with the new key.
    let after = site.record(r#"{"backlog": 99}"#);
    assert_eq!(after["seq"], rotation_seq + 1);

    let new_key = site.verifying_key_of(&issued.cert_pem);
    let journal = site.dir.open_journal().expect("open with the new key");
    assert_eq!(journal.verifying_key(), new_key);
    assert_eq!(journal.key_history().len(), 1);
    assert_eq!(journal.key_history()[0].public_key, old_key);
    assert_eq!(journal.key_history()[0].first_seq, 1);
    assert_eq!(journal.key_history()[0].last_seq, rotation_seq);

    // The rotation event: the last one under the old key, naming the new
    // certificate.
    let event = journal
        .read_range(rotation_seq, 1)
        .expect("read")
        .pop()
        .expect("rotation event");
    match &event.event.payload {
        EventPayload::CertificateRotated(r) => {
            assert_eq!(r.old_fingerprint, old_fingerprint);
            assert_eq!(r.new_fingerprint, issued.fingerprint);
            assert_eq!(r.new_certificate, issued.cert_pem);
            let not_after = sx_certs::inspect_pem(&issued.cert_pem).expect("pem")[0].not_after;
            assert_eq!(r.new_valid_until, Timestamp::from_secs(not_after));
        }
        other => panic!("expected trust.certificate_rotated, got {other:?}"),
    }

    // Every stored checkpoint verifies against the key of its range, and
    // only that key.
    let checkpoints = journal.checkpoints(0, u64::MAX).expect("checkpoints");
    let (old_cps, new_cps): (Vec<_>, Vec<_>) =
        checkpoints.iter().partition(|c| c.seq <= rotation_seq);
    assert!(old_cps.len() >= 4, "{old_cps:?}");
    assert_eq!(old_cps.last().map(|c| c.seq), Some(rotation_seq));
    assert_eq!(new_cps.len(), 1);
    for c in &old_cps {
        c.verify_signature(&old_key)
            .expect("old checkpoint, old key");
        assert!(c.verify_signature(&new_key).is_err(), "seq {}", c.seq);
        assert_eq!(journal.verifying_key_at(c.seq), old_key);
    }
    for c in &new_cps {
        c.verify_signature(&new_key)
            .expect("new checkpoint, new key");
        assert!(c.verify_signature(&old_key).is_err(), "seq {}", c.seq);
    }
    let report = journal.verify().expect("verifies");
    assert_eq!(report.checkpoints, checkpoints.len() as u64);
    assert_eq!(report.retired_keys, 1);
    assert_eq!(report.head.seq, rotation_seq + 1);
    journal.close().expect("close");

    // The CLI agrees.
    let verified = json(&ok(site.agent(&["verify", "--json"])));
    assert_eq!(verified["ok"], true, "{verified}");
    assert_eq!(verified["report"]["retired_keys"], 1);

    // A second rotation retires the second key too; all three ranges verify.
    let (cert2, key2, issued2) = site.issue("newer", request(NODE, true));
    let rotated2 = json(&ok(site.rotate(&cert2, &key2)));
    assert_eq!(rotated2["seq"], rotation_seq + 2);
    assert_eq!(rotated2["retired_keys"], 2);
    site.record(r#"{"backlog": 100}"#);
    let journal = site.dir.open_journal().expect("open");
    assert_eq!(
        journal.verifying_key(),
        site.verifying_key_of(&issued2.cert_pem)
    );
    assert_eq!(journal.key_history()[1].first_seq, rotation_seq + 1);
    assert_eq!(journal.key_history()[1].last_seq, rotation_seq + 2);
    assert_eq!(journal.key_history()[1].public_key, new_key);
    let report = journal.verify().expect("verifies");
    assert_eq!(report.retired_keys, 2);
    assert_eq!(report.head.seq, rotation_seq + 3);
}

#[test]
fn a_retired_key_is_refused_by_name() {
    let site = Site::new();
    let old_signing = site.dir.signing_key().expect("old key");
    let (cert, key, _) = site.issue("new", request(NODE, true));
    let rotated = json(&ok(site.rotate(&cert, &key)));
    let err = RedbJournal::open(site.dir.journal_path(), old_signing).expect_err("retired");
    match err {
        JournalError::KeyRetired { last_seq } => {
            assert_eq!(Some(last_seq), rotated["seq"].as_u64())
        }
        other => panic!("expected KeyRetired, got {other}"),
    }
}

#[test]
fn bad_rotations_are_refused_and_change_nothing() {
    let site = Site::new();
    let before = site.snapshot();
    let status_before = ok(site.agent(&["status", "--json"]));

    // A certificate for this node from another CA.
    let foreign =
        Pki::init(site.tmp.path().join("foreign-pki"), &CaOptions::default()).expect("foreign pki");
    let (foreign_cert, foreign_key, _) = site.keep(
        "foreign",
        foreign.issue_node(&request(NODE, false)).expect("issue"),
    );
    // A certificate of this CA for another node.
    let (other_cert, other_key, _) = site.issue("other", request(OTHER_NODE, false));
    // A good certificate for this node, and a key that is not its.
    let (good_cert, _good_key, _) = site.issue("good", request(NODE, true));
    // An expired certificate for this node.
    let mut expired = request(NODE, true);
    let now = time::OffsetDateTime::now_utc();
    expired.validity = Validity::between(
        now - time::Duration::days(30),
        now - time::Duration::days(1),
    );
    let (expired_cert, expired_key, _) = site.issue("expired", expired);
    // Another zone: a rotation keeps the node's identity.
    let mut moved = request(NODE, true);
    moved.zone = "edge-zone-b2".to_owned();
    let (moved_cert, moved_key, _) = site.issue("moved", moved);
    // Unreadable and unparsable files.
    let missing = site.tmp.path().join("missing.pem");
    let garbage = site.tmp.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").expect("garbage");
    let current_cert = site.tmp.path().join("current.pem");
    let current_key = site.tmp.path().join("current.key");
    std::fs::copy(site.dir.cert_path(), &current_cert).expect("copy");
    std::fs::copy(site.dir.key_path(), &current_key).expect("copy");

    let cases: Vec<(&str, &Path, &Path, &str)> = vec![
        (
            "another CA",
            &foreign_cert,
            &foreign_key,
            "does not validate against the CA",
        ),
        ("another node", &other_cert, &other_key, OTHER_NODE),
        (
            "key of another certificate",
            &good_cert,
            &other_key,
            "does not belong to certificate",
        ),
        (
            "expired",
            &expired_cert,
            &expired_key,
            "certificate expired",
        ),
        ("another zone", &moved_cert, &moved_key, "edge-zone-b2"),
        ("missing certificate", &missing, &other_key, "missing.pem"),
        ("missing key", &good_cert, &missing, "missing.pem"),
        (
            "unparsable certificate",
            &garbage,
            &other_key,
            "garbage.pem",
        ),
        ("unparsable key", &good_cert, &garbage, "garbage.pem"),
        (
            "the current certificate",
            &current_cert,
            &current_key,
            "is the current one",
        ),
    ];
    for (what, cert, key, expected) in cases {
        let stderr = failed(site.rotate(cert, key));
        assert!(
            stderr.contains(expected),
            "{what}: expected {expected:?} in: {stderr}"
        );
        assert_eq!(
            site.snapshot(),
            before,
            "{what}: the data directory changed"
        );
    }
    assert_eq!(ok(site.agent(&["status", "--json"])), status_before);
    let verified = json(&ok(site.agent(&["verify", "--json"])));
    assert_eq!(verified["report"]["retired_keys"], 0, "{verified}");

    // And the good pair still rotates afterwards.
    let (good_cert, good_key, _) = site.issue("good-again", request(NODE, true));
    ok(site.rotate(&good_cert, &good_key));
}

#[test]
fn an_interrupted_rotation_is_completed_or_discarded_at_open() {
    // Crash after the journal commit, before the new files were renamed
    // into place: the staged files are installed by the next open.
    let site = Site::new();
    let old_pem = std::fs::read(site.dir.cert_path()).expect("cert");
    let old_key = std::fs::read(site.dir.key_path()).expect("key");
    let (cert, key, issued) = site.issue("new", request(NODE, true));
    ok(site.rotate(&cert, &key));
    let root = site.dir.root();
    std::fs::rename(site.dir.cert_path(), root.join("node.pem.rotating")).expect("stage cert");
    std::fs::rename(site.dir.key_path(), root.join("node.key.rotating")).expect("stage key");
    std::fs::write(site.dir.cert_path(), &old_pem).expect("old cert back");
    std::fs::write(site.dir.key_path(), &old_key).expect("old key back");
    let journal = site
        .dir
        .open_journal()
        .expect("open completes the rotation");
    assert_eq!(journal.verify().expect("verifies").retired_keys, 1);
    journal.close().expect("close");
    assert_eq!(
        std::fs::read_to_string(site.dir.cert_path()).expect("cert"),
        issued.cert_pem
    );
    assert!(!root.join("node.key.rotating").exists());
    assert!(!root.join("node.pem.rotating").exists());

    // Crash before the journal commit: staged files the journal does not
    // accept are discarded, the current identity stays.
    let (cert, key, _) = site.issue("never", request(NODE, true));
    std::fs::copy(&cert, root.join("node.pem.rotating")).expect("stage");
    std::fs::copy(&key, root.join("node.key.rotating")).expect("stage");
    let journal = site.dir.open_journal().expect("open discards");
    assert_eq!(journal.key_history().len(), 1);
    journal.close().expect("close");
    assert!(!root.join("node.key.rotating").exists());
    assert!(!root.join("node.pem.rotating").exists());
    assert_eq!(
        std::fs::read_to_string(site.dir.cert_path()).expect("cert"),
        issued.cert_pem
    );
}

#[test]
fn reusing_a_key_is_refused_by_the_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("journal.redb");
    let first = random_key();
    let mut journal = RedbJournal::create(&path, NODE, first.clone()).expect("create");
    let note = |n| {
        (
            Timestamp::from_secs(1_772_163_900),
            EventPayload::ReplayStarted(sx_common::event::ReplayStarted { backlog: n }),
        )
    };
    journal.append(&[note(1)]).expect("append");
    let second = random_key();
    journal.rotate_key(note(2), second.clone()).expect("rotate");
    let head = journal.head();
    for reused in [first, second] {
        let err = journal.rotate_key(note(3), reused).expect_err("reused");
        assert!(matches!(err, JournalError::KeyReused), "{err}");
        assert_eq!(journal.head(), head);
    }
    journal.close().expect("close");
    let journal = RedbJournal::open(&path, random_key()).expect_err("unknown key");
    assert!(matches!(journal, JournalError::KeyMismatch), "{journal}");
}

fn random_key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&rand::random::<[u8; 32]>())
}
