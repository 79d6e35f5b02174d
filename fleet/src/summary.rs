//! The end-of-run summary: what every aggregator holds (events, nodes per
//! connectivity state, drift by severity, lifecycle, refusals by reason)
//! and what each scenario observed. Printed for people and written as
//! `summary.json` for scripts and tests.

use crate::scenario::{Fleet, Outcomes};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

fn add_counts(total: &mut BTreeMap<String, u64>, v: &Value) {
    for (k, n) in v.as_object().into_iter().flatten() {
        *total.entry(k.clone()).or_default() += n.as_u64().unwrap_or(0);
    }
}

/// Collects the summary from the running aggregators.
pub fn collect(fleet: &Fleet, outcomes: &Outcomes, seed: u64) -> Value {
    let mut per = Vec::new();
    let mut events = 0u64;
    let mut nodes = 0u64;
    let mut refusals = BTreeMap::new();
    let mut spectrum = BTreeMap::new();
    let mut drift = BTreeMap::new();
    let mut phases = BTreeMap::new();
    for a in &fleet.aggregators {
        let fleet_view = a.get("/api/v1/fleet").unwrap_or(Value::Null);
        let lifecycle = a.get("/api/v1/lifecycle?by=global").unwrap_or(Value::Null);
        let details = a.get("/api/v1/refusals").unwrap_or(Value::Null);
        let changes = a.get("/api/v1/desired/changes").unwrap_or(Value::Null);
        events += fleet_view["events_stored"].as_u64().unwrap_or(0);
        nodes += fleet_view["nodes"].as_u64().unwrap_or(0);
        add_counts(&mut refusals, &fleet_view["refusals"]);
        add_counts(&mut spectrum, &fleet_view["connectivity"]["spectrum"]);
        add_counts(&mut drift, &fleet_view["drift"]["by_severity"]);
        add_counts(&mut phases, &fleet_view["lifecycle"]["phases"]);
        per.push(json!({
            "name": a.name,
            "region": a.region,
            "ui": a.ui(),
            "api": a.api.to_string(),
            "events_stored": fleet_view["events_stored"],
            "nodes": fleet_view["nodes"],
            "connectivity": fleet_view["connectivity"],
            "drift": fleet_view["drift"]["by_severity"],
            "lifecycle": fleet_view["lifecycle"]["phases"],
            "updates": lifecycle[0]["updates"],
            "refusals": fleet_view["refusals"],
            "refusal_details": details,
            "forks": fleet_view["forks"],
            "desired_changes": changes.as_array().map_or(0, Vec::len),
        }));
    }
    let mut out = Map::new();
    out.insert("seed".into(), json!(seed));
    out.insert("data_dir".into(), json!(fleet.root()));
    out.insert(
        "operator_token_file".into(),
        json!(fleet.root().join("operator-token")),
    );
    out.insert(
        "totals".into(),
        json!({
            "events_stored": events,
            "nodes": nodes,
            "refusals_by_reason": refusals,
            "nodes_by_connectivity": spectrum,
            "drift_by_severity": drift,
            "lifecycle": phases,
        }),
    );
    out.insert("aggregators".into(), Value::Array(per));
    out.insert(
        "outcomes".into(),
        serde_json::to_value(outcomes).unwrap_or(Value::Null),
    );
    Value::Object(out)
}

fn counts(v: &Value) -> String {
    let parts: Vec<String> = v
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
    }
}

/// Prints the summary for people.
pub fn print(summary: &Value) {
    let t = &summary["totals"];
    println!();
    println!("=== summary (seed {}) ===", summary["seed"]);
    println!("events stored:          {}", t["events_stored"]);
    println!("nodes:                  {}", t["nodes"]);
    println!(
        "nodes by connectivity:  {}",
        counts(&t["nodes_by_connectivity"])
    );
    println!(
        "drift by severity:      {}",
        counts(&t["drift_by_severity"])
    );
    println!("lifecycle:              {}", counts(&t["lifecycle"]));
    println!(
        "refusals by reason:     {}",
        counts(&t["refusals_by_reason"])
    );
    for a in summary["aggregators"].as_array().into_iter().flatten() {
        println!(
            "  {} ({}): {} events, {} nodes, UI {}",
            a["name"].as_str().unwrap_or("?"),
            a["region"].as_str().unwrap_or("?"),
            a["events_stored"],
            a["nodes"],
            a["ui"].as_str().unwrap_or("?")
        );
        for r in a["refusal_details"].as_array().into_iter().flatten() {
            println!(
                "    refused {} ({}): {}",
                r["node_id"].as_str().unwrap_or("unnamed peer"),
                r["reason"].as_str().unwrap_or("?"),
                r["detail"].as_str().unwrap_or("")
            );
        }
    }
    println!("scenario steps:");
    for s in summary["outcomes"]["steps"]
        .as_array()
        .into_iter()
        .flatten()
    {
        println!(
            "  [{}] {}: {}",
            if s["ok"] == true { "ok" } else { "FAILED" },
            s["name"].as_str().unwrap_or("?"),
            s["detail"].as_str().unwrap_or("")
        );
    }
    println!(
        "background events recorded: {}",
        summary["outcomes"]["background_events"]
    );
    println!(
        "operator token: {}",
        summary["operator_token_file"].as_str().unwrap_or("?")
    );
}
