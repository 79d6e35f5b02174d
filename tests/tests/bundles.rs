//! Air-gapped sync with real processes: `sx-agent export-bundle`,
//! `sx-aggregator import-bundle` (on a stopped aggregator's store and
//! through a running one's API), `sx-agent import-receipt`, and QUIC
//! afterwards. Bad bundles are refused by cause and change nothing stored.

use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use sx_aggregator::store::{EventStore, RedbStore};
use sx_common::bundle::{BundleHeader, BundleWriter, Compression, decode_bundle, decode_receipt};
use sx_common::chain::{ChainHead, Checkpoint, SealedEvent};
use sx_common::event::{EventPayload, Note, SyncPath};
use sx_common::{Event, Timestamp};
use sx_tests::*;

const AGGREGATOR: &str = "agg-test";
const REGION: &str = "region-a";

/// A fleet with one aggregator data directory and folders for bundles and
/// receipts.
struct Site {
    fleet: TestFleet,
    aggregator_dir: PathBuf,
    bundles: PathBuf,
    receipts: PathBuf,
}

impl Site {
    fn new() -> Result<Self> {
        let fleet = TestFleet::new()?;
        let aggregator_dir = fleet.path().join("aggregator");
        let bundles = fleet.path().join("bundles");
        let receipts = fleet.path().join("receipts");
        for d in [&aggregator_dir, &bundles, &receipts] {
            std::fs::create_dir_all(d)?;
        }
        Ok(Site {
            fleet,
            aggregator_dir,
            bundles,
            receipts,
        })
    }

    /// A node of region-a with an initialised agent data directory.
    fn node(&self, node_id: &str) -> Result<(NodeFiles, PathBuf)> {
        let node = self
            .fleet
            .node(node_id, "souverix-rempart", REGION, "edge-zone-a1")?;
        let data = self.fleet.agent_dir(&node)?;
        Ok((node, data))
    }

    /// `sx-agent export-bundle --json` into the bundle folder as `name`.
    fn export(&self, data: &Path, name: &str, extra: &[&str]) -> Result<Value> {
        let out = self.bundles.join(name);
        let out = out.to_str().context("utf-8 path")?;
        let mut args = vec!["export-bundle", "--json", "--out", out];
        args.extend_from_slice(extra);
        Ok(serde_json::from_str(&agent_cmd(data, &args)?)?)
    }

    fn bundle(&self, name: &str) -> PathBuf {
        self.bundles.join(name)
    }

    /// `sx-aggregator import-bundle --json FILE...`: whether it succeeded,
    /// and one JSON result per file.
    fn import(&self, files: &[&Path]) -> Result<(bool, Vec<Value>)> {
        self.import_with(files, &[])
    }

    /// [`Site::import`] with extra flags (e.g. `--api`).
    fn import_with(&self, files: &[&Path], extra: &[&str]) -> Result<(bool, Vec<Value>)> {
        let out = Command::new(bin("sx-aggregator"))
            .arg("import-bundle")
            .arg("--json")
            .arg("--data-dir")
            .arg(&self.aggregator_dir)
            .arg("--pki-dir")
            .arg(self.fleet.pki_dir())
            .arg("--name")
            .arg(AGGREGATOR)
            .arg("--region")
            .arg(REGION)
            .arg("--receipt-dir")
            .arg(&self.receipts)
            .args(extra)
            .args(files)
            .output()?;
        let stdout = String::from_utf8(out.stdout)?;
        let results = stdout
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<Vec<Value>, _>>()
            .with_context(|| {
                format!(
                    "import-bundle printed: {stdout}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })?;
        if results.len() != files.len() {
            bail!(
                "import-bundle printed {} results for {} files: {stdout}\n{}",
                results.len(),
                files.len(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok((out.status.success(), results))
    }

    /// Imports one file that must be refused for `cause`, and checks that
    /// the store did not change.
    fn assert_refused(&self, file: &Path, cause: &str) -> Result<()> {
        let before = snapshot(&self.aggregator_dir)?;
        let (ok, results) = self.import(&[file])?;
        let result = &results[0];
        if ok || result["ok"] != false || result["cause"] != cause {
            bail!("{} should be refused for {cause}: {result}", file.display());
        }
        let after = snapshot(&self.aggregator_dir)?;
        if before != after {
            bail!("refused {cause} changed the store: {before:?} -> {after:?}");
        }
        Ok(())
    }

    fn receipt(&self, node: &str, counter: u64) -> PathBuf {
        self.receipts.join(format!("{node}-{counter}.sxreceipt"))
    }
}

/// What a stopped aggregator's store holds, for before/after comparisons.
#[derive(Debug, PartialEq, Eq)]
struct StoreSnapshot {
    events: u64,
    heads: Vec<(String, ChainHead)>,
}

fn snapshot(aggregator_dir: &Path) -> Result<StoreSnapshot> {
    let store = RedbStore::open(aggregator_dir.join("events.redb"))?;
    Ok(StoreSnapshot {
        events: store.event_count()?,
        heads: store
            .nodes()?
            .into_iter()
            .map(|n| (n.node_id, n.head))
            .collect(),
    })
}

/// Every event a stopped agent's journal holds, in seq order.
fn journal(data: &Path) -> Result<Vec<SealedEvent>> {
    use sx_agent::journal::Journal;
    let journal = sx_agent::journal::DataDir::new(data).open_journal()?;
    let mut next = journal.marks().first_held_seq.max(1);
    let mut out = Vec::new();
    loop {
        let chunk = journal.read_range(next, 10_000)?;
        let Some(last) = chunk.last() else { break };
        next = last.event.seq + 1;
        out.extend(chunk);
    }
    journal.close()?;
    Ok(out)
}

fn seq(v: &Value, field: &str) -> u64 {
    v[field].as_u64().unwrap_or(u64::MAX)
}

/// An air-gapped node records 50,000 events across several exports; the
/// bundles are imported out of order and some twice; a receipt goes back;
/// the last bundle goes through a running aggregator's API; then QUIC
/// delivers the rest. The aggregator ends up with every event exactly once.
#[test]
fn air_gapped_node_syncs_by_bundles_out_of_order_then_quic() -> Result<()> {
    let site = Site::new()?;
    let (node, data) = site.node("sx-rempart-gap-node-1")?;
    let id = node.node_id.as_str();

    // Exports as the journal grows: 1..=12000 (twice: the same range
    // again is allowed and gets a new counter), 6001..=24000 (overlapping
    // the first), 24001..=36000 (init recorded the first two events).
    fill_journal(&data, 11_998, 1_000)?;
    let b1 = site.export(&data, "b1.sxbundle", &[])?;
    let b1_again = site.export(&data, "b1-again.sxbundle", &[])?;
    fill_journal(&data, 12_000, 1_000)?;
    let b2 = site.export(&data, "b2.sxbundle", &["--from", "6001"])?;
    fill_journal(&data, 12_000, 1_000)?;
    let b3 = site.export(&data, "b3.sxbundle", &["--from", "24001", "--no-compress"])?;
    for (b, first, last, counter) in [
        (&b1, 1, 12_000, 1),
        (&b1_again, 1, 12_000, 2),
        (&b2, 6_001, 24_000, 3),
        (&b3, 24_001, 36_000, 4),
    ] {
        assert_eq!(
            (seq(b, "first_seq"), seq(b, "last_seq"), seq(b, "counter")),
            (first, last, counter),
            "{b}"
        );
    }
    assert_eq!(b1["head_hash"], b1_again["head_hash"]);
    assert_eq!(agent_status(&data)?["exported_seq"], 36_000);

    // The latest range first: refused, nothing stored.
    let (ok, r) = site.import(&[&site.bundle("b3.sxbundle")])?;
    assert!(!ok);
    assert_eq!(r[0]["cause"], "missing-events", "{r:?}");
    assert!(
        r[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("missing seq 1..24000")),
        "{r:?}"
    );
    assert_eq!(snapshot(&site.aggregator_dir)?.events, 0);

    // The first range, twice: imported, then already held.
    let before = std::time::SystemTime::now();
    let (ok, r) = site.import(&[&site.bundle("b1.sxbundle")])?;
    assert!(ok, "{r:?}");
    assert_eq!(
        (r[0]["outcome"].as_str(), seq(&r[0], "new_events")),
        (Some("imported"), 12_000)
    );
    {
        // Sync debt: the store's last sync is this import, via bundle.
        let store = RedbStore::open(site.aggregator_dir.join("events.redb"))?;
        let record = store.node(id)?.context("node known")?;
        assert_eq!(record.last_sync_via, Some(SyncPath::Bundle));
        let at = record.last_sync.context("last sync")?;
        let since = before.duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
        assert!(at.as_secs() >= since && at.as_secs() <= since + 60, "{at}");
    }
    let (ok, r) = site.import(&[&site.bundle("b1.sxbundle")])?;
    assert!(ok, "{r:?}");
    assert_eq!(
        (r[0]["outcome"].as_str(), seq(&r[0], "new_events")),
        (Some("already-held"), 0)
    );
    assert_eq!(snapshot(&site.aggregator_dir)?.events, 12_000);

    // The last range before the middle one, in one run: the last is
    // refused, then retried once the middle one filled the gap. The middle
    // one overlaps the first: of its 18,000 events the 12,000 new merge.
    let (ok, r) = site.import(&[&site.bundle("b3.sxbundle"), &site.bundle("b2.sxbundle")])?;
    assert!(ok, "{r:?}");
    assert_eq!(seq(&r[0], "new_events"), 12_000, "{r:?}");
    assert_eq!(seq(&r[1], "new_events"), 12_000, "{r:?}");
    let (ok, r) = site.import(&[&site.bundle("b2.sxbundle")])?;
    assert!(ok && r[0]["outcome"] == "already-held", "{r:?}");
    // The copy of the first range: an older counter, nothing new, harmless.
    let before = snapshot(&site.aggregator_dir)?;
    let (ok, r) = site.import(&[&site.bundle("b1-again.sxbundle")])?;
    assert!(ok && r[0]["outcome"] == "already-held", "{r:?}");
    let snap = snapshot(&site.aggregator_dir)?;
    assert_eq!(snap, before);
    assert_eq!(snap.events, 36_000);
    assert_eq!(snap.heads[0].1.seq, 36_000);

    // The receipt of the newest import goes back: the node may prune.
    let receipt = site.receipt(id, 4);
    let applied = agent_cmd(
        &data,
        &[
            "import-receipt",
            "--json",
            receipt.to_str().context("utf-8")?,
        ],
    )?;
    let applied: Value = serde_json::from_str(&applied)?;
    assert_eq!(
        (applied["applied"].as_bool(), seq(&applied["head"], "seq")),
        (Some(true), 36_000)
    );
    let status = agent_status(&data)?;
    assert_eq!(status["receipted_seq"], 36_000);
    // Applying it again changes nothing.
    let again = agent_cmd(
        &data,
        &[
            "import-receipt",
            "--json",
            receipt.to_str().context("utf-8")?,
        ],
    )?;
    assert_eq!(serde_json::from_str::<Value>(&again)?["applied"], false);
    assert_eq!(agent_status(&data)?["head_seq"], status["head_seq"]);
    let recorded = journal(&data)?;
    let sync = recorded
        .iter()
        .rev()
        .find_map(|e| match &e.event.payload {
            EventPayload::SyncCompleted(s) => Some(s.clone()),
            _ => None,
        })
        .context("sync_completed recorded")?;
    assert_eq!((sync.acked_seq, sync.via), (36_000, SyncPath::Bundle));

    // More events; the default export starts after the receipted mark.
    fill_journal(&data, 13_999, 1_000)?;
    // Uncompressed: above the API's 1 MiB default body limit.
    let b4 = site.export(&data, "b4.sxbundle", &["--no-compress"])?;
    assert!(
        seq(&b4, "bytes") > sx_aggregator::api::MAX_BODY_BYTES as u64,
        "{b4}"
    );
    assert_eq!(
        (seq(&b4, "first_seq"), seq(&b4, "last_seq")),
        (36_001, 50_000)
    );

    // The aggregator runs now, with a desired state: import goes through
    // its API, and the receipt carries what it resolves for the node.
    let desired = site.fleet.path().join("desired.json");
    std::fs::write(
        &desired,
        r#"{"software": [{"component": "souverix-rempart", "scope": "fleet", "version": "2.4.1"}]}"#,
    )?;
    let (quic_port, api_port) = (free_udp_port(), free_tcp_port());
    let aggregator = AggregatorProcess::start_with(
        &site.fleet,
        &site.aggregator_dir,
        quic_port,
        api_port,
        &["--desired", desired.to_str().context("utf-8")?],
    )?;
    let api = aggregator.api.to_string();
    let (ok, r) = site.import_with(
        &[&site.bundle("b4.sxbundle"), &site.bundle("b1.sxbundle")],
        &["--api", &api],
    )?;
    let log =
        || std::fs::read_to_string(site.aggregator_dir.with_extension("log")).unwrap_or_default();
    assert!(ok, "{r:?}\n{}", log());
    assert_eq!(seq(&r[0], "new_events"), 14_000);
    assert_eq!(r[1]["outcome"], "already-held");
    let receipt = decode_receipt(&std::fs::read(site.receipt(id, 5))?)?.receipt;
    assert_eq!(receipt.head.seq, 50_000);
    assert_eq!(
        receipt.desired.and_then(|d| d.software_version).as_deref(),
        Some("2.4.1")
    );
    let n = aggregator.node_status(id)?.context("node status")?;
    assert_eq!(n["acked_seq"], 50_000, "{n}");
    assert_eq!(n["last_sync_via"], "bundle", "{n}");
    assert!(
        n["last_sync"].is_string() && n["sync_debt"].is_string(),
        "{n}"
    );

    // Finally the node reaches the aggregator over QUIC with the rest.
    fill_journal(&data, 1_000, 500)?;
    let config = site.fleet.agent_config("gap", aggregator.quic, "")?;
    let mut agent = AgentProcess::start(&data, &config)?;
    // Synced and quiet: the node's own sync_completed is stored, its head
    // is the durable head, and nothing moves for a while.
    let mut last = None;
    let head = wait_for(Duration::from_secs(90), "QUIC delivers the rest", || {
        let n = aggregator.node_status(id).ok()??;
        let acked = n["acked_seq"].as_u64()?;
        let path = format!("/api/v1/nodes/{id}/events?from=51001");
        let events = get_json(aggregator.api, &path).ok()?;
        let completed = events
            .as_array()?
            .iter()
            .any(|e| e["event_type"] == "connectivity.sync_completed");
        let synced = completed
            && acked > 51_000
            && n["backlog"] == 0
            && n["agent_head_seq"].as_u64()? == acked
            && n["last_sync_via"] == "quic";
        let stable = synced && last == Some(acked);
        last = synced.then_some(acked);
        std::thread::sleep(Duration::from_millis(300));
        stable.then_some(acked)
    })?;
    agent.stop()?;

    // The node's twin and connectivity ledger at the aggregator are the
    // ones its own journal folds to, up to what the aggregator holds.
    let held = journal(&data)?;
    let durable = aggregator.node_status(id)?.context("node status")?["acked_seq"]
        .as_u64()
        .context("acked seq")?;
    assert!(durable >= head);
    let upto: Vec<&Event> = held
        .iter()
        .map(|e| &e.event)
        .take_while(|e| e.seq <= durable)
        .collect();
    let twin = serde_json::to_value(sx_common::fold::twin_from_events(upto.iter().copied()))?;
    let shown = wait_for(Duration::from_secs(30), "the projections", || {
        let t = get_json(aggregator.api, &format!("/api/v1/twins/{id}")).ok()?;
        (t["twin"]["last_seq"].as_u64() == Some(durable)).then_some(t)
    })?;
    assert_eq!(shown["twin"], twin);
    let ledger = sx_common::ledger::ConnectivityLedger::from_events(id, upto.iter().copied());
    assert!(!ledger.history.is_empty(), "the QUIC session's transitions");
    assert_eq!(
        get_json(aggregator.api, &format!("/api/v1/twins/{id}/ledger"))?,
        serde_json::to_value(&ledger)?
    );
    drop(aggregator);

    let stored = stored_stream(&site.aggregator_dir, id)?;
    assert_eq!(
        stored.events.len() as u64,
        durable,
        "every event, exactly once"
    );
    assert_eq!(
        stored.events.len(),
        held.len(),
        "the node holds nothing more"
    );
    for (s, j) in stored.events.iter().zip(&held) {
        assert_eq!((s.event.seq, s.hash), (j.event.seq, j.hash));
    }

    // A bundle of what QUIC delivered changes nothing and says so.
    let quic_range = site.export(
        &data,
        "quic-range.sxbundle",
        &["--from", "50001", "--to", &durable.to_string()],
    )?;
    let before = snapshot(&site.aggregator_dir)?;
    let (ok, r) = site.import(&[&site.bundle("quic-range.sxbundle")])?;
    assert!(ok, "{r:?}");
    assert_eq!(
        (r[0]["outcome"].as_str(), seq(&r[0], "new_events")),
        (Some("already-held"), 0),
        "{quic_range}"
    );
    assert_eq!(snapshot(&site.aggregator_dir)?, before);

    // The default export starts after what the aggregator acknowledged.
    fill_journal(&data, 1, 1)?;
    let status = agent_status(&data)?;
    assert_eq!(status["acked_seq"], durable, "{status}");
    let rest = site.export(&data, "rest.sxbundle", &[])?;
    assert_eq!(seq(&rest, "first_seq"), durable + 1, "{rest}");
    Ok(())
}

/// Receipts carry the node's desired state whichever way the bundle went
/// in: `import-bundle` on a stopped store resolves the declaration for the
/// node's place as its stored events tell it (the most specific rule wins),
/// a running aggregator as its projections do. `import-receipt` applies it
/// as the QUIC handshake does: `inventory.desired`, then the drift the node
/// detects against what it runs.
#[test]
fn receipts_carry_the_resolved_desired_state_and_the_node_detects_drift() -> Result<()> {
    let site = Site::new()?;
    let (node, data) = site.node("sx-rempart-drift-node-1")?;
    let id = node.node_id.as_str();
    agent_cmd(
        &data,
        &[
            "record",
            "inventory.software",
            r#"{"component": "souverix-rempart", "version": "2.3.9",
                "sbom_hash": "sha256:00", "image_provenance": "registry.local/rempart"}"#,
        ],
    )?;
    fill_journal(&data, 10, 10)?;
    let desired = site.fleet.path().join("desired.json");
    std::fs::write(
        &desired,
        r#"{"software": [
            {"component": "souverix-rempart", "scope": "fleet", "version": "2.4.0"},
            {"component": "souverix-rempart", "scope": {"zone": "edge-zone-a1"}, "version": "2.4.1"},
            {"component": "souverix-rempart", "scope": {"zone": "edge-zone-b1"}, "version": "9.9.9"},
            {"component": "souverix-coeur", "scope": "fleet", "version": "7.0.0"}
        ], "policy": [{"scope": "fleet", "version": "pol-2026.02"}]}"#,
    )?;
    let desired = desired.to_str().context("utf-8")?;
    site.export(&data, "b1.sxbundle", &[])?;
    let resolved = |path: &Path| -> Result<Option<sx_common::event::DesiredStateLearned>> {
        Ok(decode_receipt(&std::fs::read(path)?)?.receipt.desired)
    };

    // On the stopped store.
    let (ok, r) = site.import_with(&[&site.bundle("b1.sxbundle")], &["--desired", desired])?;
    assert!(ok, "{r:?}");
    let offline = resolved(&site.receipt(id, 1))?.context("desired state in the receipt")?;
    assert_eq!(
        (
            offline.software_version.as_deref(),
            offline.policy_version.as_deref()
        ),
        (Some("2.4.1"), Some("pol-2026.02"))
    );

    // Through a running aggregator with the same declaration: the same.
    let (quic_port, api_port) = (free_udp_port(), free_tcp_port());
    let aggregator = AggregatorProcess::start_with(
        &site.fleet,
        &site.aggregator_dir,
        quic_port,
        api_port,
        &["--desired", desired],
    )?;
    let api = aggregator.api.to_string();
    let (ok, r) = site.import_with(&[&site.bundle("b1.sxbundle")], &["--api", &api])?;
    assert!(ok && r[0]["outcome"] == "already-held", "{r:?}");
    assert_eq!(resolved(&site.receipt(id, 1))?, Some(offline.clone()));
    drop(aggregator);

    // The node learns it and detects its own drift, once.
    let receipt = site.receipt(id, 1);
    let receipt = receipt.to_str().context("utf-8")?;
    let applied: Value =
        serde_json::from_str(&agent_cmd(&data, &["import-receipt", "--json", receipt])?)?;
    assert_eq!(
        applied["recorded"].as_array().map(Vec::len),
        Some(3),
        "{applied}"
    );
    let events = journal(&data)?;
    let types: Vec<&str> = events
        .iter()
        .rev()
        .take(3)
        .rev()
        .map(|e| e.event.event_type())
        .collect();
    assert_eq!(
        types,
        [
            "inventory.desired",
            "drift.version_detected",
            "connectivity.sync_completed"
        ]
    );
    let drift = events.iter().find_map(|e| match &e.event.payload {
        EventPayload::VersionDrift(d) => Some(d.clone()),
        _ => None,
    });
    let drift = drift.context("version drift recorded")?;
    assert_eq!(
        (drift.desired.as_str(), drift.actual.as_str()),
        ("2.4.1", "2.3.9")
    );
    let again: Value =
        serde_json::from_str(&agent_cmd(&data, &["import-receipt", "--json", receipt])?)?;
    assert_eq!(again["applied"], false, "{again}");
    Ok(())
}

/// The connectivity views follow the aggregator's observations, not only
/// the events: a node last synced before the aggregator started has that
/// sync debt (and is not stale); importing a newer bundle of events the
/// store already holds moves its last sync, in the views at once, with no
/// new event, while importing the same bundle again does not.
#[test]
fn only_a_newer_bundle_moves_the_sync_debt_the_views_show() -> Result<()> {
    let site = Site::new()?;
    let (node, data) = site.node("sx-rempart-debt-node-1")?;
    let id = node.node_id.as_str();
    fill_journal(&data, 98, 100)?;
    site.export(&data, "b1.sxbundle", &[])?;
    let (ok, r) = site.import(&[&site.bundle("b1.sxbundle")])?;
    assert!(ok, "{r:?}");
    std::thread::sleep(Duration::from_secs(3));

    let (quic_port, api_port) = (free_udp_port(), free_tcp_port());
    let aggregator =
        AggregatorProcess::start(&site.fleet, &site.aggregator_dir, quic_port, api_port)?;
    let view = || -> Result<(sx_common::Span, u64, u64)> {
        let groups = get_json(aggregator.api, "/api/v1/connectivity?by=node")?;
        let g = groups
            .as_array()
            .and_then(|a| a.iter().find(|g| g["group"] == id))
            .with_context(|| format!("{id} in {groups}"))?;
        let debt = g["sync_debt_max"].as_str().context("sync debt")?;
        let debt = sx_common::Span::parse(debt).map_err(|e| anyhow::anyhow!("{debt}: {e}"))?;
        let stored = get_json(aggregator.api, "/api/v1/fleet")?["events_stored"]
            .as_u64()
            .context("events stored")?;
        Ok((debt, g["stale"].as_u64().context("stale")?, stored))
    };
    let (debt, stale, stored) = view()?;
    assert!(debt >= sx_common::Span::from_secs(3), "{debt}");
    assert_eq!((stale, stored), (0, 100));

    // The same bundle again is no news of the node: the debt keeps growing.
    let api = aggregator.api.to_string();
    let (ok, r) = site.import_with(&[&site.bundle("b1.sxbundle")], &["--api", &api])?;
    assert!(ok && r[0]["outcome"] == "already-held", "{r:?}");
    let (again, stale, stored) = view()?;
    assert!(again >= debt, "{again} after re-importing, {debt} before");
    assert_eq!((stale, stored), (0, 100));

    // A newer export of the same events is: the node was heard from.
    site.export(&data, "b2.sxbundle", &["--from", "1"])?;
    let (ok, r) = site.import_with(&[&site.bundle("b2.sxbundle")], &["--api", &api])?;
    assert!(ok && r[0]["outcome"] == "already-held", "{r:?}");
    let (debt, stale, stored) = view()?;
    assert!(debt < sx_common::Span::from_secs(3), "{debt}");
    assert_eq!((stale, stored), (0, 100));
    Ok(())
}

/// Every kind of bad bundle is refused with its own cause, and the store
/// is unchanged (event count, heads).
#[test]
fn bad_bundles_are_refused_by_cause_and_change_nothing() -> Result<()> {
    let site = Site::new()?;
    let (a, data_a) = site.node("sx-rempart-bad-node-a")?;
    let (b, data_b) = site.node("sx-rempart-bad-node-b")?;
    fill_journal(&data_a, 998, 100)?;
    fill_journal(&data_b, 98, 50)?;

    // Something stored first, so "unchanged" means something.
    site.export(&data_a, "a-first.sxbundle", &["--to", "500"])?;
    let (ok, r) = site.import(&[&site.bundle("a-first.sxbundle")])?;
    assert!(ok, "{r:?}");
    let good = site.export(&data_a, "a-good.sxbundle", &["--no-compress"])?;
    assert_eq!(seq(&good, "first_seq"), 1, "nothing receipted yet");
    let good_file = site.bundle("a-good.sxbundle");
    let good_bytes = std::fs::read(&good_file)?;

    // A sample of single-bit flips and truncations of a real bundle.
    let write = |name: &str, bytes: &[u8]| -> Result<PathBuf> {
        let p = site.bundle(name);
        std::fs::write(&p, bytes)?;
        Ok(p)
    };
    let mut rng_state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    let mut flips: Vec<usize> = (0..12).map(|i| i * 2).collect(); // magic, version, envelope
    flips.extend((0..12).map(|_| (next() % good_bytes.len() as u64) as usize));
    for (i, at) in flips.into_iter().enumerate() {
        let mut bytes = good_bytes.clone();
        bytes[at] ^= 1 << (next() % 8);
        let file = write(&format!("flip-{i}.sxbundle"), &bytes)?;
        let before = snapshot(&site.aggregator_dir)?;
        let (ok, r) = site.import(&[&file])?;
        assert!(
            !ok && r[0]["ok"] == false,
            "flip at byte {at} accepted: {r:?}"
        );
        assert_eq!(before, snapshot(&site.aggregator_dir)?, "flip at {at}");
    }
    for len in [0, 7, 9, 100, good_bytes.len() / 2, good_bytes.len() - 1] {
        let file = write(&format!("cut-{len}.sxbundle"), &good_bytes[..len])?;
        let (ok, r) = site.import(&[&file])?;
        assert!(!ok, "truncation to {len} accepted: {r:?}");
    }
    site.assert_refused(&write("cut-3.sxbundle", &good_bytes[..3])?, "truncated")?;

    // Structural edits the node key re-signs: each has its own cause.
    let bundle = decode_bundle(&good_bytes)?;
    let key_a = sx_certs::load_signing_key(&site.fleet.pki.node_dir(&a.node_id).join("key.pem"))?;
    let key_b = sx_certs::load_signing_key(&site.fleet.pki.node_dir(&b.node_id).join("key.pem"))?;
    let certs = |node: &str| -> Result<Vec<Vec<u8>>> {
        let chain = site.fleet.pki.node_dir(node).join("chain.pem");
        Ok(sx_certs::load_certs_pem(&chain)?
            .into_iter()
            .map(|c| c.as_ref().to_vec())
            .collect())
    };
    let header = |counter: u64, region: &str, expires_at: Timestamp| BundleHeader {
        counter,
        created_at: Timestamp::now(),
        expires_at,
        region: region.to_owned(),
        aggregator: None,
    };
    let soon = Timestamp::now().plus(sx_common::Span::from_secs(3_600));
    let build = |node: &str,
                 key: &ed25519_dalek::SigningKey,
                 events: &[SealedEvent],
                 certificates: Vec<Vec<u8>>| {
        let mut w = BundleWriter::new(node);
        for e in events {
            w.push_event(e);
        }
        let head = w.head();
        w.push_checkpoint(Checkpoint::sign(key, node, head.seq, head.hash));
        w.finish(
            key,
            &certificates,
            header(100, REGION, soon),
            Compression::Zstd,
        )
    };
    let events = bundle.events().to_vec();
    let mut hole = events.clone();
    hole.remove(600);
    let mut dup = events.clone();
    dup.insert(700, events[699].clone());
    let mut reordered = events.clone();
    reordered.swap(800, 801);
    let mut inserted = events.clone();
    inserted[900] = SealedEvent::seal(Event {
        payload: EventPayload::ConnectionLost(Note {
            reason: Some("forged".into()),
        }),
        ..events[900].event.clone()
    });
    let ca = certs(&a.node_id)?;
    for (name, evs, cause) in [
        ("hole", &hole, "hole"),
        ("dup", &dup, "duplicate-event"),
        ("reordered", &reordered, "out-of-order"),
        ("inserted", &inserted, "broken-chain"),
    ] {
        let file = write(
            &format!("{name}.sxbundle"),
            &build(&a.node_id, &key_a, evs, ca.clone()),
        )?;
        site.assert_refused(&file, cause)?;
    }
    // The control: the same builder with the events untouched is accepted,
    // and merges with the 1..=500 already stored.
    let control = write(
        "control.sxbundle",
        &build(&a.node_id, &key_a, &events, ca.clone()),
    )?;
    let (ok, r) = site.import(&[&control])?;
    assert!(ok, "{r:?}");
    assert_eq!(
        (seq(&r[0], "first_seq"), seq(&r[0], "new_events")),
        (1, 500),
        "{r:?}"
    );

    // Re-signed with another node's key, with node A's certificate: the key
    // is not the certificate's. With node B's certificate: not B's events.
    let file = write(
        "resigned.sxbundle",
        &build(&a.node_id, &key_b, &events, ca.clone()),
    )?;
    site.assert_refused(&file, "key-mismatch")?;
    let file = write(
        "resigned-b.sxbundle",
        &build(&a.node_id, &key_b, &events, certs(&b.node_id)?),
    )?;
    site.assert_refused(&file, "identity-mismatch")?;

    // A validly signed other history of node A: a fork, kept as evidence,
    // no event changed.
    let mut forked = events[..10].to_vec();
    forked[3] = SealedEvent::seal(Event {
        payload: EventPayload::ConnectionLost(Note {
            reason: Some("another history".into()),
        }),
        ..forked[3].event.clone()
    });
    for i in 4..forked.len() {
        forked[i] = SealedEvent::seal(Event {
            prev_hash: forked[i - 1].hash,
            ..forked[i].event.clone()
        });
    }
    let file = write(
        "fork.sxbundle",
        &build(&a.node_id, &key_a, &forked, ca.clone()),
    )?;
    site.assert_refused(&file, "fork")?;
    assert_eq!(
        RedbStore::open(site.aggregator_dir.join("events.redb"))?
            .forks()?
            .len(),
        1
    );

    // Expired, for another region, for another aggregator.
    let file = site.export(&data_a, "expired.sxbundle", &["--expires-in", "1s"])?;
    std::thread::sleep(Duration::from_millis(2_100));
    site.assert_refused(Path::new(file["path"].as_str().context("path")?), "expired")?;
    site.export(&data_a, "region-b.sxbundle", &["--region", "region-b"])?;
    site.assert_refused(&site.bundle("region-b.sxbundle"), "wrong-region")?;
    site.export(&data_a, "agg-x.sxbundle", &["--aggregator", "agg-other"])?;
    site.assert_refused(&site.bundle("agg-x.sxbundle"), "wrong-aggregator")?;

    // Rollback: node B exports 1..=30 (counter 1), 1..=100 (counter 2),
    // then 1..=50 (counter 3). Once counter 3 is in, counter 2 may not
    // bring 51..=100; counter 1 brings nothing new and is harmless.
    let low = site.export(&data_b, "b-low.sxbundle", &["--to", "30"])?;
    let old = site.export(&data_b, "b-old.sxbundle", &[])?;
    let new = site.export(&data_b, "b-new.sxbundle", &["--to", "50"])?;
    assert!(seq(&low, "counter") < seq(&old, "counter"));
    assert!(seq(&old, "counter") < seq(&new, "counter"));
    let (ok, r) = site.import(&[&site.bundle("b-new.sxbundle")])?;
    assert!(ok, "{r:?}");
    site.assert_refused(&site.bundle("b-old.sxbundle"), "rollback")?;
    let (ok, r) = site.import(&[&site.bundle("b-low.sxbundle")])?;
    assert!(ok && r[0]["outcome"] == "already-held", "{r:?}");

    // A revoked node, and a node of another CA.
    let (c, data_c) = site.node("sx-rempart-bad-node-c")?;
    site.export(&data_c, "revoked.sxbundle", &[])?;
    site.fleet.pki.revoke(
        sx_certs::RevokeTarget::Node(c.node_id.clone()),
        "key-compromise",
    )?;
    site.assert_refused(&site.bundle("revoked.sxbundle"), "revoked-certificate")?;
    let other = sx_certs::Pki::init(
        site.fleet.path().join("other-pki"),
        &sx_certs::CaOptions {
            common_name: "some-other-ca".into(),
            ..sx_certs::CaOptions::default()
        },
    )?;
    let d = other.issue_node(&sx_certs::NodeRequest::new(
        "sx-rempart-bad-node-d",
        "souverix-rempart",
        REGION,
        "edge-zone-a1",
    ))?;
    let data_d = site.fleet.path().join("agents").join("d");
    let out = Command::new(bin("sx-agent"))
        .arg("--data-dir")
        .arg(&data_d)
        .args(["init", "--cert"])
        .arg(&d.cert_path)
        .arg("--key")
        .arg(&d.key_path)
        .arg("--ca")
        .arg(other.ca_path())
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    site.export(&data_d, "other-ca.sxbundle", &[])?;
    site.assert_refused(&site.bundle("other-ca.sxbundle"), "untrusted-certificate")?;

    // Not a bundle at all.
    site.assert_refused(&write("text.sxbundle", b"hello, world")?, "not-a-bundle")?;
    Ok(())
}

/// The running agent exports through its socket while events keep being
/// recorded, and applies a receipt through it; receipts that do not fit
/// this node or its journal are refused and change nothing.
#[test]
fn running_agent_exports_and_applies_receipts_through_its_socket() -> Result<()> {
    let site = Site::new()?;
    let (node, data) = site.node("sx-rempart-live-node-1")?;
    let (other, other_data) = site.node("sx-rempart-live-node-2")?;
    fill_journal(&data, 200, 100)?;
    fill_journal(&other_data, 10, 10)?;
    // No aggregator listens: the agent stays autonomous and keeps recording.
    let config = site.fleet.agent_config(
        "live",
        format!("127.0.0.1:{}", free_udp_port()).parse()?,
        "",
    )?;
    let mut agent = AgentProcess::start(&data, &config)?;
    let socket = data.join(sx_agent::local::SOCKET_FILE);
    wait_for(Duration::from_secs(20), "the agent socket", || {
        socket.exists().then_some(())
    })?;

    let recorder = {
        let data = data.clone();
        std::thread::spawn(move || -> Result<()> {
            for i in 0..20 {
                agent_cmd(
                    &data,
                    &[
                        "record",
                        "lifecycle.maintenance_started",
                        &format!(r#"{{"window_id":"w{i}"}}"#),
                    ],
                )?;
            }
            Ok(())
        })
    };
    let out = site.bundles.join("live.sxbundle");
    let text = agent_cmd(
        &data,
        &["export-bundle", "--out", out.to_str().context("utf-8")?],
    )?;
    assert!(text.contains("via the running agent"), "{text}");
    recorder
        .join()
        .map_err(|_| anyhow::anyhow!("recorder panicked"))??;

    // Import on the stopped aggregator's store; the receipt goes back
    // through the running agent.
    let (ok, r) = site.import(&[&out])?;
    assert!(ok, "{r:?}");
    let last = seq(&r[0], "last_seq");
    site.export(&other_data, "other.sxbundle", &[])?;
    let (ok, r) = site.import(&[&site.bundle("other.sxbundle")])?;
    assert!(ok, "{r:?}");

    // A receipt for another node, and a tampered receipt: refused.
    let foreign = site.receipt(&other.node_id, 1);
    let err = agent_cmd(
        &data,
        &["import-receipt", foreign.to_str().context("utf-8")?],
    )
    .expect_err("receipt of another node");
    assert!(err.to_string().contains("receipt is for node"), "{err:#}");
    let receipt = site.receipt(&node.node_id, 1);
    let mut bytes = std::fs::read(&receipt)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    let tampered = site.receipts.join("tampered.sxreceipt");
    std::fs::write(&tampered, &bytes)?;
    assert!(
        agent_cmd(
            &data,
            &["import-receipt", tampered.to_str().context("utf-8")?]
        )
        .is_err()
    );

    let text = agent_cmd(
        &data,
        &["import-receipt", receipt.to_str().context("utf-8")?],
    )?;
    assert!(text.contains(&format!("up to seq {last}")), "{text}");
    agent.stop()?;
    let status = agent_status(&data)?;
    assert_eq!(status["receipted_seq"], last);
    assert_eq!(status["exported_seq"], last);
    assert!(status["head_seq"].as_u64().unwrap_or(0) > last, "{status}");
    Ok(())
}

/// A receipt carrying desired state: the agent records it as
/// `inventory.desired` with the sync. A receipt whose head hash is not the
/// journal's own event, or that is signed by a key other than its
/// certificate's, is refused and changes nothing.
#[test]
fn receipts_carry_desired_state_and_must_match_the_journal() -> Result<()> {
    use sx_common::bundle::{KeyBytes, Receipt, encode_receipt};
    let site = Site::new()?;
    let (node, data) = site.node("sx-rempart-desired-node-1")?;
    fill_journal(&data, 20, 10)?;
    let head = journal(&data)?.last().map(|e| ChainHead {
        seq: e.event.seq,
        hash: e.hash,
    });
    let head = head.context("events")?;
    let aggregator_dir = site.fleet.pki.aggregator_dir(AGGREGATOR);
    let key = sx_certs::load_signing_key(&aggregator_dir.join("key.pem"))?;
    let chain: Vec<Vec<u8>> = sx_certs::load_certs_pem(&aggregator_dir.join("chain.pem"))?
        .into_iter()
        .map(|c| c.as_ref().to_vec())
        .collect();
    let desired = sx_common::event::DesiredStateLearned {
        software_version: Some("2.4.1".into()),
        config: Default::default(),
        policy_version: Some("policy-7".into()),
    };
    let receipt = |head: ChainHead| Receipt {
        node_id: node.node_id.clone(),
        head,
        bundle_counter: 1,
        bundle_first_seq: 1,
        bundle_last_seq: head.seq,
        new_events: head.seq,
        aggregator: AGGREGATOR.into(),
        region: REGION.into(),
        issued_at: Timestamp::now(),
        desired: Some(desired.clone()),
        aggregator_key: KeyBytes([0; 32]),
        certificates_digest: sx_common::Digest::GENESIS,
    };
    let write = |name: &str, bytes: Vec<u8>| -> Result<String> {
        let p = site.receipts.join(name);
        std::fs::write(&p, bytes)?;
        Ok(p.to_str().context("utf-8")?.to_owned())
    };

    // The wrong hash at the right seq: another history.
    let wrong = write(
        "wrong.sxreceipt",
        encode_receipt(
            &key,
            receipt(ChainHead {
                seq: head.seq,
                hash: sx_common::Digest([9; 32]),
            }),
            &chain,
        ),
    )?;
    let err = agent_cmd(&data, &["import-receipt", &wrong]).expect_err("mismatch");
    assert!(err.to_string().contains("but the journal holds"), "{err:#}");
    // Signed by a node key, carrying the aggregator's certificate.
    let node_key = sx_certs::load_signing_key(&node.key)?;
    let forged = write(
        "forged.sxreceipt",
        encode_receipt(&node_key, receipt(head), &chain),
    )?;
    let err = agent_cmd(&data, &["import-receipt", &forged]).expect_err("forged");
    assert!(
        err.to_string().contains("not the certificate's key"),
        "{err:#}"
    );
    // Signed by an aggregator of the same name under another CA.
    let other = sx_certs::Pki::init(
        site.fleet.path().join("other-pki"),
        &sx_certs::CaOptions {
            common_name: "some-other-ca".into(),
            ..sx_certs::CaOptions::default()
        },
    )?;
    other.issue_aggregator(&sx_certs::AggregatorRequest::new(AGGREGATOR, REGION))?;
    let other_dir = other.aggregator_dir(AGGREGATOR);
    let other_chain: Vec<Vec<u8>> = sx_certs::load_certs_pem(&other_dir.join("chain.pem"))?
        .into_iter()
        .map(|c| c.as_ref().to_vec())
        .collect();
    let foreign = write(
        "other-ca.sxreceipt",
        encode_receipt(
            &sx_certs::load_signing_key(&other_dir.join("key.pem"))?,
            receipt(head),
            &other_chain,
        ),
    )?;
    let err = agent_cmd(&data, &["import-receipt", &foreign]).expect_err("other CA");
    assert!(
        err.to_string().contains("not trusted by the fleet CA"),
        "{err:#}"
    );
    let status = agent_status(&data)?;
    assert_eq!(
        (
            status["receipted_seq"].as_u64(),
            status["head_seq"].as_u64()
        ),
        (Some(0), Some(head.seq))
    );

    let good = write(
        "good.sxreceipt",
        encode_receipt(&key, receipt(head), &chain),
    )?;
    let applied: Value =
        serde_json::from_str(&agent_cmd(&data, &["import-receipt", "--json", &good])?)?;
    assert_eq!(
        applied["recorded"].as_array().map(Vec::len),
        Some(2),
        "{applied}"
    );
    let events = journal(&data)?;
    let learned = events.iter().find_map(|e| match &e.event.payload {
        EventPayload::DesiredStateLearned(d) => Some(d.clone()),
        _ => None,
    });
    assert_eq!(learned, Some(desired));
    assert_eq!(agent_status(&data)?["receipted_seq"], head.seq);
    Ok(())
}
