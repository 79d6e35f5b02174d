//! `GET /metrics` of a real aggregator process fed by a real agent over
//! QUIC, a refused rogue connection and bundles posted to the API: the
//! exposition parses strictly, and the counters move by exactly what the
//! store took, refused and imported.

use anyhow::{Context, Result};
use serde_json::json;
use std::time::Duration;
use sx_tests::http;
use sx_tests::prometheus::{self, Exposition};
use sx_tests::rogue::{self, ClientAuth, Rogue};
use sx_tests::{
    AgentProcess, AggregatorProcess, TestFleet, agent_cmd, fill_journal, free_tcp_port,
    free_udp_port, get_json, wait_for,
};

const ZONE: &str = "edge-zone-a1";
const BUNDLE_ZONE: &str = "core-zone-a2";

fn scrape(agg: &AggregatorProcess) -> Result<Exposition> {
    let r = http::get(agg.api, "/metrics", &[])?;
    anyhow::ensure!(r.status == 200, "GET /metrics: {} {}", r.status, r.body);
    let content_type = r.header("content-type").unwrap_or_default();
    anyhow::ensure!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "content type {content_type:?}"
    );
    prometheus::parse(&r.body).with_context(|| format!("parsing:\n{}", r.body))
}

fn post_bundle(agg: &AggregatorProcess, bytes: &[u8]) -> Result<http::Response> {
    http::request(
        agg.api,
        "POST",
        "/api/v1/bundles",
        &[("content-type", "application/octet-stream")],
        bytes,
    )
}

const INGESTED: &str = "sx_aggregator_events_ingested_total";
const IMPORTS: &str = "sx_aggregator_bundle_imports_total";

#[test]
fn metrics_count_what_was_stored_refused_and_imported() -> Result<()> {
    let fleet = TestFleet::new()?;
    let data_dir = fleet.path().join("aggregator");
    let agg = AggregatorProcess::start(&fleet, &data_dir, free_udp_port(), free_tcp_port())?;

    // A fresh aggregator: every family typed, counters at 0, the outcome
    // and connection-refusal series there from the start.
    let m = scrape(&agg)?;
    for (family, kind) in [
        (INGESTED, "counter"),
        ("sx_aggregator_duplicate_events_total", "counter"),
        ("sx_aggregator_rejected_batches_total", "counter"),
        ("sx_aggregator_group_commits_total", "counter"),
        ("sx_aggregator_ingest_writer_busy_seconds_total", "counter"),
        ("sx_aggregator_refusals_total", "counter"),
        (IMPORTS, "counter"),
        ("sx_aggregator_quic_connections_accepted_total", "counter"),
        ("sx_aggregator_quic_connections", "gauge"),
        ("sx_aggregator_ingest_events_per_second", "gauge"),
        ("sx_aggregator_events_stored", "gauge"),
        ("sx_aggregator_zone_backlog_events", "gauge"),
        ("sx_aggregator_region_sync_debt_max_seconds", "gauge"),
    ] {
        assert_eq!(m.kind(family), Some(kind), "{family}");
    }
    assert_eq!(m.get(INGESTED, &[])?, 0.0);
    assert_eq!(m.get("sx_aggregator_quic_connections", &[])?, 0.0);
    for outcome in ["imported", "already-held", "refused"] {
        assert_eq!(m.get(IMPORTS, &[("outcome", outcome)])?, 0.0, "{outcome}");
    }
    assert_eq!(
        m.get(
            "sx_aggregator_refusals_total",
            &[("reason", "tls-handshake")]
        )?,
        0.0
    );

    // 1. An agent syncs over QUIC: ingested = what the store holds.
    let node = fleet.node(
        "sx-rempart-metrics-node-1",
        "souverix-rempart",
        "region-a",
        ZONE,
    )?;
    let agent_dir = fleet.agent_dir(&node)?;
    let config = fleet.agent_config("metrics", agg.quic, "")?;
    let _agent = AgentProcess::start(&agent_dir, &config)?;
    let acked = agg.wait_synced(&node.node_id, Duration::from_secs(30))?;
    let m = scrape(&agg)?;
    assert_eq!(m.get(INGESTED, &[])?, acked as f64);
    assert_eq!(m.get("sx_aggregator_events_stored", &[])?, acked as f64);
    assert_eq!(
        agg.status()?["events_stored"].as_u64(),
        Some(acked),
        "the status agrees"
    );
    assert!(m.get("sx_aggregator_group_commits_total", &[])? >= 1.0);
    assert!(
        m.get("sx_aggregator_ingest_writer_busy_seconds_total", &[])? > 0.0,
        "committing took time"
    );
    assert_eq!(m.get("sx_aggregator_quic_connections", &[])?, 1.0);
    let accepted = m.get("sx_aggregator_quic_connections_accepted_total", &[])?;
    assert!(accepted >= 1.0);
    // The rate is sampled once a second: wait for the sample that saw the
    // events (they arrived within the last 10 s).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while scrape(&agg)?.get("sx_aggregator_ingest_events_per_second", &[])? <= 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "events arrived within the last 10 s, yet the rate stays 0"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(m.get("sx_aggregator_zone_nodes", &[("zone", ZONE)])?, 1.0);
    assert_eq!(
        m.get("sx_aggregator_region_nodes", &[("region", "region-a")])?,
        1.0
    );
    assert_eq!(
        m.get("sx_aggregator_zone_backlog_events", &[("zone", ZONE)])?,
        0.0
    );

    // More events: the counter moves by exactly the new durable seqs.
    for i in 0..5 {
        agent_cmd(
            &agent_dir,
            &[
                "record",
                "operational.state_transition",
                &json!({ "from": "in-service", "to": "in-service", "reason": format!("metrics {i}") })
                    .to_string(),
            ],
        )?;
    }
    let acked_now = wait_for(Duration::from_secs(30), "5 more events stored", || {
        agg.wait_synced(&node.node_id, Duration::from_secs(10))
            .ok()
            .filter(|a| *a >= acked + 5)
    })?;
    let m = scrape(&agg)?;
    assert_eq!(m.get(INGESTED, &[])?, acked_now as f64);

    // The zone and region gauges are the connectivity view's numbers.
    for (by, label) in [("zone", "zone"), ("region", "region")] {
        let view = get_json(agg.api, &format!("/api/v1/connectivity?by={by}"))?;
        let groups = view.as_array().context("groups")?;
        let series = m.series(&format!("sx_aggregator_{by}_nodes"));
        assert_eq!(series.len(), groups.len(), "{by}: {view}");
        for g in groups {
            let name = g["group"].as_str().context("group name")?;
            assert_eq!(
                m.get(&format!("sx_aggregator_{by}_nodes"), &[(label, name)])?,
                g["nodes"].as_f64().context("nodes")?
            );
            assert_eq!(
                m.get(
                    &format!("sx_aggregator_{by}_backlog_max_events"),
                    &[(label, name)]
                )?,
                g["backlog_max"].as_f64().context("backlog_max")?
            );
        }
    }

    // 2. A rogue without a client certificate: refused at the handshake,
    //    counted under its reason, never an accepted connection.
    let before = agg.refusal_count("tls-handshake")?;
    let _ = Rogue::connect(
        agg.quic,
        rogue::client_config(&fleet.pki.ca_path(), ClientAuth::None)?,
    )
    .and_then(|mut r| r.send_raw(b"hello"));
    let refused = wait_for(Duration::from_secs(10), "the refusal", || {
        agg.refusal_count("tls-handshake")
            .ok()
            .filter(|n| *n > before)
    })?;
    let m = scrape(&agg)?;
    assert_eq!(
        m.get(
            "sx_aggregator_refusals_total",
            &[("reason", "tls-handshake")]
        )?,
        refused as f64
    );
    assert_eq!(
        m.get("sx_aggregator_quic_connections_accepted_total", &[])?,
        accepted,
        "a refused handshake is not an accepted connection"
    );

    // 3. Bundles through the API: imported, already held, refused.
    let other = fleet.node(
        "sx-coeur-metrics-node-2",
        "souverix-coeur",
        "region-a",
        BUNDLE_ZONE,
    )?;
    let other_dir = fleet.agent_dir(&other)?;
    fill_journal(&other_dir, 18, 18)?;
    let bundle = fleet.path().join("other.sxbundle");
    agent_cmd(
        &other_dir,
        &[
            "export-bundle",
            "--out",
            bundle.to_str().context("utf-8 path")?,
        ],
    )?;
    let bytes = std::fs::read(&bundle)?;
    let before = scrape(&agg)?;
    let r = post_bundle(&agg, &bytes)?;
    assert_eq!(r.status, 200, "{}", r.body);
    let new_events = r.json()["new_events"].as_u64().context("new_events")?;
    assert_eq!(new_events, 20, "init's two events and 18 more");
    let m = scrape(&agg)?;
    assert_eq!(m.get(IMPORTS, &[("outcome", "imported")])?, 1.0);
    assert_eq!(
        m.get(INGESTED, &[])? - before.get(INGESTED, &[])?,
        new_events as f64
    );
    // The projections apply the import right after its commit.
    let zone_nodes = wait_for(Duration::from_secs(10), "the bundle's zone", || {
        scrape(&agg)
            .ok()?
            .value("sx_aggregator_zone_nodes", &[("zone", BUNDLE_ZONE)])
    })?;
    assert_eq!(zone_nodes, 1.0);

    let r = post_bundle(&agg, &bytes)?;
    assert_eq!(r.status, 200, "{}", r.body);
    let duplicates_before = m.get("sx_aggregator_duplicate_events_total", &[])?;
    let m = scrape(&agg)?;
    assert_eq!(m.get(IMPORTS, &[("outcome", "already-held")])?, 1.0);
    assert_eq!(m.get(IMPORTS, &[("outcome", "imported")])?, 1.0);
    assert_eq!(
        m.get("sx_aggregator_duplicate_events_total", &[])? - duplicates_before,
        new_events as f64,
        "every event of the second import was a duplicate"
    );

    let r = post_bundle(&agg, b"not a bundle")?;
    assert_ne!(r.status, 200);
    let cause = r.json()["cause"].as_str().context("cause")?.to_owned();
    let m = scrape(&agg)?;
    assert_eq!(m.get(IMPORTS, &[("outcome", "refused")])?, 1.0);
    assert_eq!(
        m.get(
            "sx_aggregator_refusals_total",
            &[("reason", &format!("bundle-{cause}"))]
        )?,
        1.0
    );
    Ok(())
}
