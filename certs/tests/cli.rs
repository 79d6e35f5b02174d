//! Smoke test of the `sx-certs` binary: the commands an operator runs, in
//! order, with their JSON output parsed and checked.

use std::path::Path;
use std::process::{Command, Output};

use anyhow::{Context, Result, ensure};
use serde_json::Value;

fn sx_certs(pki_dir: &Path, args: &[&str]) -> Result<Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_sx-certs"))
        .arg("--pki-dir")
        .arg(pki_dir)
        .args(args)
        .env_remove("SX_PKI_DIR")
        .output()?)
}

/// Runs a command that must succeed and returns its stdout.
fn ok(pki_dir: &Path, args: &[&str]) -> Result<String> {
    let out = sx_certs(pki_dir, args)?;
    ensure!(
        out.status.success(),
        "sx-certs {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

fn json(pki_dir: &Path, args: &[&str]) -> Result<Value> {
    let mut args = args.to_vec();
    args.push("--json");
    Ok(serde_json::from_str(&ok(pki_dir, &args)?)?)
}

#[test]
fn init_issue_inspect_revoke_list() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = dir.path().join("pki");

    let ca = json(&pki, &["init-ca"])?;
    assert_eq!(ca["is_ca"], true);
    assert!(
        ca["subject"]
            .as_str()
            .context("subject")?
            .contains("souverix-autorite-root-ca")
    );

    // A second init without --force fails and says why.
    let again = sx_certs(&pki, &["init-ca"])?;
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    let issued = json(
        &pki,
        &[
            "issue-node",
            "--node-id",
            "sx-rempart-2026-prod-1-node-42",
            "--component",
            "souverix-rempart",
            "--region",
            "region-a",
            "--zone",
            "edge-zone-a1",
            "--days",
            "30",
        ],
    )?;
    assert!(issued.get("key_pem").is_none(), "keys are never printed");
    let serial = issued["serial_hex"].as_str().context("serial")?.to_owned();
    let cert = pki.join("nodes/sx-rempart-2026-prod-1-node-42/cert.pem");
    assert_eq!(issued["cert_path"].as_str(), cert.to_str());

    let inspected = json(&pki, &["inspect", cert.to_str().context("utf-8 path")?])?;
    let node = &inspected[0];
    assert_eq!(node["node_id"], "sx-rempart-2026-prod-1-node-42");
    assert_eq!(node["component_type"], "souverix-rempart");
    assert_eq!(node["region"], "region-a");
    assert_eq!(node["zone"], "edge-zone-a1");
    assert_eq!(node["serial_hex"], serial.as_str());
    assert_eq!(node["is_ca"], false);
    assert_eq!(node["public_key"].as_str().map(str::len), Some(64));
    assert_eq!(node["status"]["state"], "good");
    let lifetime = node["not_after"].as_i64().context("not_after")?
        - node["not_before"].as_i64().context("not_before")?;
    assert!((30 * 86_400..31 * 86_400).contains(&lifetime), "{lifetime}");

    // Text output carries the same facts.
    let text = ok(&pki, &["inspect", cert.to_str().context("utf-8 path")?])?;
    assert!(
        text.contains("edge-zone-a1") && text.contains("revoked:     no"),
        "{text}"
    );

    let revoked = json(
        &pki,
        &[
            "revoke",
            "--node-id",
            "sx-rempart-2026-prod-1-node-42",
            "--reason",
            "key-compromise",
        ],
    )?;
    assert_eq!(revoked["serial_hex"], serial.as_str());
    assert_eq!(revoked["reason"], "key-compromise");

    let inspected = json(&pki, &["inspect", cert.to_str().context("utf-8 path")?])?;
    assert_eq!(inspected[0]["status"]["state"], "revoked");

    let list = json(&pki, &["list"])?;
    let entries = list.as_array().context("list is an array")?;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["kind"], "node");
    assert_eq!(entries[0]["serial_hex"], serial.as_str());
    assert!(entries[0]["revoked_at"].is_i64());

    let crl = json(&pki, &["crl", "--days", "7"])?;
    assert_eq!(crl["crl_path"].as_str(), pki.join("ca/crl.pem").to_str());
    Ok(())
}

#[test]
fn bad_input_is_refused_with_a_clear_error() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = dir.path().join("pki");
    ok(&pki, &["init-ca", "--name", "test-ca"])?;

    let bad_id = sx_certs(
        &pki,
        &[
            "issue-node",
            "--node-id",
            "Bad/Id",
            "--component",
            "c",
            "--region",
            "r",
            "--zone",
            "z",
        ],
    )?;
    assert!(!bad_id.status.success());
    assert!(String::from_utf8_lossy(&bad_id.stderr).contains("invalid node id"));

    // Two revocation targets at once are a usage error.
    let two = sx_certs(&pki, &["revoke", "--node-id", "a", "--serial", "01"])?;
    assert_eq!(two.status.code(), Some(2));

    // An expired certificate can be made for tests with explicit dates.
    let expired = json(
        &pki,
        &[
            "issue-operator",
            "--name",
            "old-op",
            "--not-before",
            "2020-01-01T00:00:00Z",
            "--not-after",
            "2020-02-01T00:00:00Z",
        ],
    )?;
    let cert = expired["cert_path"].as_str().context("cert_path")?;
    let info = json(&pki, &["inspect", cert])?;
    assert_eq!(info[0]["not_after"], 1_580_515_200);

    let help = ok(&pki, &["issue-aggregator", "--help"])?;
    assert!(help.contains("--dns") && help.contains("--ip"), "{help}");
    Ok(())
}

#[test]
fn every_command_has_help_and_prints_json() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = dir.path().join("pki");
    let top = ok(&pki, &["--help"])?;
    let commands: Vec<&str> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    let mut sorted = commands.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        [
            "crl",
            "init-ca",
            "inspect",
            "issue-aggregator",
            "issue-node",
            "issue-operator",
            "list",
            "revoke"
        ],
        "{top}"
    );
    for command in commands {
        let help = ok(&pki, &[command, "--help"])?;
        assert!(
            help.contains("--json") && help.contains("--pki-dir"),
            "{command} --help: {help}"
        );
    }

    // An aggregator server certificate with DNS and IP SANs, as JSON.
    ok(&pki, &["init-ca"])?;
    let issued = json(
        &pki,
        &[
            "issue-aggregator",
            "--name",
            "agg-region-a",
            "--region",
            "region-a",
            "--dns",
            "aggregator.region-a.example",
            "--ip",
            "10.0.0.7",
        ],
    )?;
    assert!(issued.get("key_pem").is_none(), "keys are never printed");
    let cert = issued["cert_path"].as_str().context("cert_path")?;
    let info = json(&pki, &["inspect", cert])?;
    let dns = info[0]["dns"].as_array().context("dns SANs")?;
    assert!(
        dns.iter().any(|d| d == "aggregator.region-a.example"),
        "{info}"
    );
    let ips = info[0]["ips"].as_array().context("IP SANs")?;
    assert!(ips.iter().any(|ip| ip == "10.0.0.7"), "{info}");
    assert_eq!(info[0]["region"], "region-a");
    Ok(())
}
