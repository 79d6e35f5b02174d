//! The main job, end to end: `sx-fleet` with a small fleet and a time
//! limit, real aggregators and agents over QUIC. Asserts what happened
//! (from the `summary.json` it writes and from the API while it is up),
//! not only that it exited.

use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TIME_LIMIT: Duration = Duration::from_secs(420);

fn run_fleet(data_dir: &std::path::Path) -> Result<(String, Value)> {
    // Cargo builds `sx-fleet` for this test; `sx-agent` and `sx-aggregator`
    // land in the same directory (their packages' own tests build them).
    let fleet = std::path::PathBuf::from(env!("CARGO_BIN_EXE_sx-fleet"));
    let bin_dir = fleet.parent().context("bin dir")?.to_path_buf();
    for name in ["sx-agent", "sx-aggregator"] {
        if !bin_dir.join(name).exists() {
            bail!(
                "{} is missing: run the tests with `cargo test --workspace`",
                bin_dir.join(name).display()
            );
        }
    }
    let mut child = Command::new(&fleet)
        .args([
            "--nodes",
            "12",
            "--duration",
            "30s",
            "--seed",
            "7",
            "--rate",
            "2",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--bin-dir")
        .arg(&bin_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if start.elapsed() > TIME_LIMIT {
            // SIGTERM: sx-fleet stops its processes and exits.
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            std::thread::sleep(Duration::from_secs(15));
            let _ = child.kill();
            bail!("sx-fleet did not finish within {TIME_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !status.success() {
        bail!(
            "sx-fleet failed ({status}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(data_dir.join("summary.json")).context("summary.json")?,
    )?;
    eprintln!("{stdout}");
    Ok((stdout, summary))
}

fn step<'a>(summary: &'a Value, name: &str) -> &'a Value {
    summary["outcomes"]["steps"]
        .as_array()
        .and_then(|s| {
            s.iter()
                .find(|s| s["name"].as_str().is_some_and(|n| n.starts_with(name)))
        })
        .unwrap_or(&Value::Null)
}

#[test]
fn sx_fleet_runs_a_fleet_through_its_scenarios() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data_dir = tmp.path().join("fleet");
    let (stdout, s) = run_fleet(&data_dir)?;
    let t = &s["totals"];

    // Every node of the plan (12 connected + 2 air-gapped) reached an
    // aggregator, and events were stored.
    assert_eq!(t["nodes"], 14, "{t}");
    assert!(t["events_stored"].as_u64().unwrap_or(0) > 100, "{t}");
    assert_eq!(s["aggregators"].as_array().map(Vec::len), Some(2));
    assert!(
        stdout.contains("UI http://127.0.0.1:"),
        "the UI address is printed"
    );

    // Every scripted step must succeed.
    for name in [
        "enrol region-a",
        "enrol region-b",
        "config drift",
        "regional outage and replay",
        "agent outage",
        "roll-out",
        "impostor refused",
        "revoked node refused",
        "air-gapped site, bundle round 1",
        "air-gapped site, bundle round 2",
        "certificate rotation",
    ] {
        assert_eq!(step(&s, name)["ok"], true, "{name}: {}", step(&s, name));
    }

    // The regional outage: nodes went down the spectrum on their own and
    // came back through returning and replaying.
    let states = &s["outcomes"]["outage_states"];
    for state in [
        "edge-cached",
        "autonomous",
        "returning",
        "replaying",
        "live",
    ] {
        assert!(states[state].as_u64().unwrap_or(0) > 0, "{state}: {states}");
    }
    assert!(s["outcomes"]["stale_observed"].as_u64().unwrap_or(0) >= 1);

    // Drift was found (planned drift plus the roll-out's failed update).
    let drift = &t["drift_by_severity"];
    let drifting: u64 = ["low", "medium", "high", "critical"]
        .iter()
        .map(|k| drift[k].as_u64().unwrap_or(0))
        .sum();
    assert!(drifting > 0, "{drift}");
    assert!(s["outcomes"]["rollout"]["succeeded"].as_u64().unwrap_or(0) > 0);
    assert_eq!(s["outcomes"]["rollout"]["failed"], 1);

    // The impostor and the revoked node were refused, for those reasons.
    assert!(
        t["refusals_by_reason"]["tls-handshake"]
            .as_u64()
            .unwrap_or(0)
            >= 2,
        "{t}"
    );
    let details: Vec<String> = s["aggregators"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|a| a["refusal_details"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r["detail"].as_str().map(str::to_owned))
        .collect();
    assert!(
        details.iter().any(|d| d.contains("UnknownIssuer")),
        "{details:?}"
    );
    assert!(details.iter().any(|d| d.contains("Revoked")), "{details:?}");
    assert_eq!(s["outcomes"]["impostor"]["victim_stream_untouched"], true);

    // Bundles went both ways.
    let bundles = s["outcomes"]["bundles"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(bundles.len(), 2);
    assert!(
        bundles
            .iter()
            .all(|b| b["receipts"].as_u64().unwrap_or(0) == 2),
        "{bundles:?}"
    );

    // Certificate rotation: `sx-agent rotate` on the running agent, the
    // node kept syncing under its new certificate and the trust index
    // shows the rotation (the step checks both; see its detail).
    let rotation = &s["outcomes"]["rotation"];
    assert_eq!(rotation["ok"], true, "{rotation}");
    let detail = rotation["detail"].as_str().unwrap_or("");
    assert!(
        detail.contains("trust index shows the rotation"),
        "{rotation}"
    );

    // The processes are gone: the stores can be opened.
    for a in ["agg-region-a", "agg-region-b"] {
        let store = data_dir.join("aggregators").join(a).join("data");
        let head = sx_tests::store_head(&store, "sx-coeur-2026-a1-node-01");
        if a == "agg-region-a" {
            assert!(head?.seq > 0);
        }
    }
    Ok(())
}
