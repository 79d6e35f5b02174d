//! The `sx-agent` journal commands as an operator runs them: a real PKI from
//! `sx-certs`, a real data directory, the real binary.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use sx_certs::{CaOptions, IssuedCert, NodeRequest, Pki};

mod common;
use common::{failed, json, ok, path_str};

const NODE: &str = "sx-rempart-2026-prod-1-node-42";

struct Site {
    tmp: tempfile::TempDir,
    pki: Pki,
    ca: PathBuf,
    node: IssuedCert,
}

impl Site {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pki = Pki::init(tmp.path().join("pki"), &CaOptions::default()).expect("pki");
        let node = pki
            .issue_node(&NodeRequest::new(
                NODE,
                "souverix-rempart",
                "region-a",
                "edge-zone-a1",
            ))
            .expect("node cert");
        let ca = pki.ca_path();
        Site { tmp, pki, ca, node }
    }

    fn data_dir(&self) -> PathBuf {
        self.tmp.path().join("agent-data")
    }

    /// `sx-agent ARGS` with `SX_AGENT_DATA` pointing at the site's data dir.
    fn agent(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_sx-agent"))
            .args(args)
            .env("SX_AGENT_DATA", self.data_dir())
            .env_remove("RUST_LOG")
            .output()
            .expect("run sx-agent")
    }

    fn init_args<'a>(&'a self, cert: &'a Path, key: &'a Path) -> Vec<&'a str> {
        vec![
            "init",
            "--cert",
            path_str(cert),
            "--key",
            path_str(key),
            "--ca",
            path_str(&self.ca),
        ]
    }

    fn init(&self) -> Output {
        self.agent(&self.init_args(&self.node.cert_path, &self.node.key_path))
    }

    fn status(&self) -> Value {
        json(&ok(self.agent(&["status", "--json"])))
    }
}

#[test]
fn init_record_log_status_verify() {
    let site = Site::new();
    ok(site.init());
    let dir = site.data_dir();
    for file in ["node.pem", "node.key", "ca.pem", "journal.redb"] {
        assert!(dir.join(file).is_file(), "{file} missing");
    }
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("node.key"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let recorded = json(&ok(site.agent(&[
        "record",
        "lifecycle.update_initiated",
        r#"{"from_version":"1.4.6","to_version":"1.4.7"}"#,
        "--json",
    ])));
    assert_eq!(recorded["seq"], 3);
    assert_eq!(recorded["event_type"], "lifecycle.update_initiated");
    assert_eq!(recorded["payload"]["to_version"], "1.4.7");
    let text = ok(site.agent(&[
        "record",
        "connectivity.replay_started",
        r#"{"backlog": 12}"#,
        "--at",
        "2026-02-27T03:45:00Z",
    ]));
    assert!(
        text.starts_with("recorded seq 4 evt-2026-02-27-034500-000004"),
        "{text}"
    );

    let log = ok(site.agent(&["log", "--json"]));
    let events: Vec<Value> = log.lines().map(json).collect();
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["event_type"].as_str().expect("type"))
        .collect();
    assert_eq!(
        types,
        [
            "inventory.identity",
            "trust.chain_validated",
            "lifecycle.update_initiated",
            "connectivity.replay_started"
        ]
    );
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"], i as u64 + 1);
        assert_eq!(e["node_id"], NODE);
        let expected_prev = if i == 0 {
            format!("sha256:{}", "0".repeat(64))
        } else {
            events[i - 1]["hash"].as_str().expect("hash").to_owned()
        };
        assert_eq!(
            e["prev_hash"],
            expected_prev.as_str(),
            "event {} chains",
            i + 1
        );
    }
    let identity = &events[0]["payload"];
    assert_eq!(identity["component_type"], "souverix-rempart");
    assert_eq!(identity["region"], "region-a");
    assert_eq!(identity["zone"], "edge-zone-a1");
    assert_eq!(
        identity["trust_chain"][0],
        "CN=souverix-autorite-root-ca, O=Souverix"
    );
    let chain = events[1]["payload"]["chain"].as_array().expect("chain");
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[0]["signature"], site.node.fingerprint.as_str());
    assert!(
        chain[0]["subject"]
            .as_str()
            .expect("subject")
            .contains(NODE)
    );

    let page = ok(site.agent(&["log", "--json", "--from", "2", "--limit", "2"]));
    let seqs: Vec<u64> = page
        .lines()
        .map(|l| json(l)["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, [2, 3]);

    let status = site.status();
    assert_eq!(status["node_id"], NODE);
    assert_eq!(status["head_seq"], 4);
    assert_eq!(status["head_hash"], events[3]["hash"]);
    assert_eq!(status["acked_seq"], 0);
    assert_eq!(status["first_held_seq"], 1);
    assert_eq!(status["backlog"], 4);
    assert_eq!(status["checkpoints"], 3);

    let verified = json(&ok(site.agent(&["verify", "--json"])));
    assert_eq!(verified["ok"], true);
    assert_eq!(verified["report"]["events"], 4);
    assert!(ok(site.agent(&["verify"])).starts_with("ok:"));

    // Nothing is delivered, so nothing may be pruned.
    let pruned = json(&ok(site.agent(&["prune", "--retention", "0m", "--json"])));
    assert_eq!(pruned["pruned"], 0);
    assert_eq!(site.status()["head_seq"], 4);
}

#[test]
fn bad_records_are_refused_and_change_nothing() {
    let site = Site::new();
    ok(site.init());
    let before = site.status();

    let err = failed(site.agent(&["record", "nope.nothing", "{}"]));
    assert!(err.contains("unknown event type \"nope.nothing\""), "{err}");
    assert!(
        err.contains("lifecycle.update_initiated"),
        "lists the known types: {err}"
    );
    let err = failed(site.agent(&["record", "lifecycle.update_initiated", "{not json"]));
    assert!(err.contains("not valid JSON"), "{err}");
    let err = failed(site.agent(&[
        "record",
        "lifecycle.update_initiated",
        r#"{"from_version": 1}"#,
    ]));
    assert!(
        err.contains("does not fit event type lifecycle.update_initiated"),
        "{err}"
    );
    let err = failed(site.agent(&[
        "record",
        "connectivity.replay_started",
        "{}",
        "--at",
        "yesterday",
    ]));
    assert!(err.contains("RFC 3339"), "{err}");

    assert_eq!(site.status(), before, "head and marks unchanged");
    assert!(ok(site.agent(&["verify"])).starts_with("ok:"));
}

#[test]
fn init_refuses_twice_a_foreign_key_and_a_foreign_ca() {
    let site = Site::new();
    // A key that is not the certificate's.
    let other = site
        .pki
        .issue_node(&NodeRequest::new(
            "other-node",
            "souverix-coeur",
            "region-a",
            "core-a",
        ))
        .expect("other node");
    let err = failed(site.agent(&site.init_args(&site.node.cert_path, &other.key_path)));
    assert!(err.contains("does not belong to certificate"), "{err}");
    assert!(
        !site.data_dir().join("journal.redb").exists(),
        "nothing initialised"
    );

    // A certificate from another CA.
    let foreign = Pki::init(site.tmp.path().join("foreign"), &CaOptions::default()).expect("pki");
    let stranger = foreign
        .issue_node(&NodeRequest::new(
            NODE,
            "souverix-rempart",
            "region-a",
            "edge-zone-a1",
        ))
        .expect("stranger");
    let err = failed(site.agent(&site.init_args(&stranger.cert_path, &stranger.key_path)));
    assert!(err.contains("does not validate against the CA"), "{err}");
    assert!(
        !site.data_dir().join("journal.redb").exists(),
        "nothing initialised"
    );

    ok(site.init());
    ok(site.agent(&["record", "connectivity.replay_started", r#"{"backlog": 1}"#]));
    let err = failed(site.init());
    assert!(err.contains("already initialised"), "{err}");
    assert_eq!(site.status()["head_seq"], 3, "the journal is untouched");

    let mut forced = site.init_args(&site.node.cert_path, &site.node.key_path);
    forced.push("--force");
    ok(site.agent(&forced));
    assert_eq!(site.status()["head_seq"], 2, "a new journal");
}

#[test]
fn a_tampered_journal_fails_verify() {
    use redb::{Database, ReadableDatabase};
    use sx_agent::journal::RUNS_TABLE;
    use sx_common::run::{self, Run};

    let site = Site::new();
    ok(site.init());
    for backlog in 0..3 {
        ok(site.agent(&[
            "record",
            "connectivity.replay_started",
            &format!(r#"{{"backlog": {backlog}}}"#),
        ]));
    }
    // Flip one byte of the payload of event 3 (its last byte: the backlog);
    // each record is one append, so event 3 is alone in the run keyed 3.
    {
        let db = Database::open(site.data_dir().join("journal.redb")).expect("redb");
        let mut bytes = {
            let txn = db.begin_read().expect("read");
            let table = txn.open_table(RUNS_TABLE).expect("table");
            let row = table.get(3).expect("get").expect("run of event 3");
            let run = Run::parse(row.value()).expect("run");
            assert_eq!(run.len(), 1);
            run.entry(0).expect("event 3").to_vec()
        };
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        let row = run::encode(&[bytes], Vec::len, |e, out| out.extend_from_slice(e));
        let txn = db.begin_write().expect("write");
        txn.open_table(RUNS_TABLE)
            .expect("table")
            .insert(3, row.as_slice())
            .expect("insert");
        txn.commit().expect("commit");
    }
    let err = failed(site.agent(&["verify"]));
    assert!(err.contains("journal verification failed"), "{err}");
    // Event 3 was its own transaction: its checkpoint no longer matches it.
    assert!(
        err.contains("does not verify at seq 3: checkpoint covers seq 3"),
        "{err}"
    );
    let out = site.agent(&["verify", "--json"]);
    assert!(!out.status.success());
    let report = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(report["ok"], false);
    assert!(
        report["error"]
            .as_str()
            .expect("error")
            .contains("checkpoint covers seq 3"),
        "{report}"
    );
}

#[test]
fn every_command_has_help_and_data_dir_flag_wins_over_env() {
    let site = Site::new();
    // Every command that prints data takes --json; `run` is the daemon.
    let printing = [
        "init",
        "record",
        "log",
        "status",
        "verify",
        "prune",
        "export-bundle",
        "import-receipt",
        "rotate",
    ];
    for command in printing.into_iter().chain(["run"]) {
        let help = ok(site.agent(&[command, "--help"]));
        assert!(help.contains("--data-dir"), "{command} --help: {help}");
        assert_eq!(
            help.contains("--json"),
            command != "run",
            "{command} --help: {help}"
        );
    }
    // And that is every command there is.
    let top = ok(site.agent(&["--help"]));
    let listed: Vec<&str> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    let mut known: Vec<&str> = printing.into_iter().chain(["run"]).collect();
    known.sort_unstable();
    let mut listed_sorted = listed.clone();
    listed_sorted.sort_unstable();
    assert_eq!(listed_sorted, known, "{top}");
    assert!(ok(site.agent(&["record", "--help"])).contains("trust.chain_validated"));

    let err = failed(site.agent(&["status"]));
    assert!(err.contains("not initialised"), "{err}");
    ok(site.init());
    let elsewhere = site.tmp.path().join("elsewhere");
    let err = failed(site.agent(&["status", "--data-dir", path_str(&elsewhere)]));
    assert!(err.contains("elsewhere"), "{err}");
    assert!(!elsewhere.exists(), "status creates nothing");
}
