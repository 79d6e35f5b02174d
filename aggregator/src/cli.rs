//! Operator commands that talk to a running aggregator's API: `status`,
//! `fleet`, `twins`, `twin`, `drift`, `ledger`, `trust`, `neighbours`,
//! `impact`. Each prints a human table by default and the API's JSON
//! unchanged with `--json` (for scripts); an API error (unknown node, bad
//! parameter) is printed with the API's own message and fails the command.

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::Value;

/// Where the API is, and how to print. Shared by every API command.
#[derive(Clone, Debug, Args)]
pub struct ApiArgs {
    /// API address of the running aggregator (host:port, or a full
    /// http:// URL).
    #[arg(long, env = "SX_AGGREGATOR_API", default_value = "127.0.0.1:7180")]
    pub api: String,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Operator token, sent as `Authorization: Bearer`; needed when the
    /// API listens beyond loopback.
    #[arg(long, env = "SX_OPERATOR_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl ApiArgs {
    /// A client of the API these arguments name.
    pub fn client(&self) -> ApiClient {
        ApiClient::new(&self.api).with_token(self.token.as_deref())
    }
}

/// A client of the operator API.
#[derive(Debug)]
pub struct ApiClient {
    base: String,
    agent: ureq::Agent,
    token: Option<String>,
}

impl ApiClient {
    pub fn new(api: &str) -> Self {
        let base = if api.starts_with("http://") || api.starts_with("https://") {
            api.trim_end_matches('/').to_owned()
        } else {
            format!("http://{api}")
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(30)))
            .build()
            .into();
        ApiClient {
            base,
            agent,
            token: None,
        }
    }

    /// Sends `Authorization: Bearer <token>` with every request.
    pub fn with_token(mut self, token: Option<&str>) -> Self {
        self.token = token.map(str::to_owned);
        self
    }

    /// `GET path` with query parameters (absent ones left out); the API's
    /// JSON, or its error message as the error.
    pub fn get(&self, path: &str, query: &[(&str, Option<String>)]) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = self.agent.get(&url);
        if let Some(token) = &self.token {
            req = req.header("authorization", &format!("Bearer {token}"));
        }
        for (k, v) in query {
            if let Some(v) = v {
                req = req.query(*k, v);
            }
        }
        let mut resp = req
            .call()
            .with_context(|| format!("GET {url} (is the aggregator running?)"))?;
        let status = resp.status();
        let body = resp
            .body_mut()
            .read_to_string()
            .context("reading the API answer")?;
        let json: Option<Value> = serde_json::from_str(&body).ok();
        if !status.is_success() {
            let message = json
                .as_ref()
                .and_then(|j| j["error"].as_str().map(str::to_owned))
                .unwrap_or(body);
            bail!("GET {path}: {status}: {message}");
        }
        json.context("the API answered something that is not JSON")
    }
}

/// Percent-encodes one path segment (node ids are plain, but be safe).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn print_json(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// A JSON value as table text: strings bare, null as `-`.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Prints rows under headers, columns padded to their widest cell.
fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

/// `sx-aggregator status`.
pub fn status(args: &ApiArgs) -> Result<()> {
    let status = args.client().get("/api/v1/status", &[])?;
    if args.json {
        return print_json(&status);
    }
    println!(
        "aggregator {} ({}), {} events stored, {} commits, {} duplicates, {} forks",
        status["aggregator"].as_str().unwrap_or("?"),
        status["region"].as_str().unwrap_or("?"),
        status["events_stored"],
        status["commits"],
        status["duplicates"],
        status["forks"],
    );
    let rows: Vec<Vec<String>> = status["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            vec![
                cell(&n["node_id"]),
                cell(&n["acked_seq"]),
                cell(&n["agent_head_seq"]),
                cell(&n["backlog"]),
                cell(&n["rtt_ms"]),
                cell(&n["connection"]["state"]),
                n["last_sync"].as_str().unwrap_or("never").to_owned(),
            ]
        })
        .collect();
    print_table(
        &[
            "node",
            "acked",
            "head",
            "backlog",
            "rtt_ms",
            "connection",
            "last sync",
        ],
        &rows,
    );
    Ok(())
}

/// `sx-aggregator fleet`: the fleet summary.
pub fn fleet(args: &ApiArgs) -> Result<()> {
    let f = args.client().get("/api/v1/fleet", &[])?;
    if args.json {
        return print_json(&f);
    }
    println!(
        "region {} (aggregator {}): {} nodes, {} events stored, {} forks",
        cell(&f["region"]),
        cell(&f["aggregator"]),
        f["nodes"],
        f["events_stored"],
        f["forks"]
    );
    let join = |v: &Value| -> String {
        v.as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_else(|| "-".to_owned())
    };
    let c = &f["connectivity"];
    println!("connectivity: {}", join(&c["spectrum"]));
    println!(
        "  stale {}, sync debt max {} mean {}, backlog total {} max {}",
        c["stale"],
        cell(&c["sync_debt_max"]),
        cell(&c["sync_debt_mean"]),
        c["backlog_total"],
        c["backlog_max"]
    );
    println!("drift: {}", join(&f["drift"]["by_severity"]));
    println!("lifecycle: {}", join(&f["lifecycle"]["phases"]));
    println!("refusals: {}", join(&f["refusals"]));
    Ok(())
}

/// Filters of `sx-aggregator twins` (the API's query parameters).
#[derive(Clone, Debug, Default, Args)]
pub struct TwinFilterArgs {
    #[arg(long)]
    pub region: Option<String>,
    #[arg(long)]
    pub zone: Option<String>,
    #[arg(long)]
    pub cluster: Option<String>,
    /// Component type, e.g. souverix-rempart.
    #[arg(long)]
    pub component: Option<String>,
    /// Connectivity state (live, delayed, edge-cached, autonomous,
    /// disconnected, returning, replaying).
    #[arg(long)]
    pub state: Option<String>,
    /// Drift severity (none, low, medium, high, critical).
    #[arg(long)]
    pub severity: Option<String>,
    #[arg(long)]
    pub offset: Option<usize>,
    /// At most this many rows (1..=10000, default 100).
    #[arg(long)]
    pub limit: Option<usize>,
}

/// `sx-aggregator twins`: the twin list, filtered.
pub fn twins(args: &ApiArgs, f: &TwinFilterArgs) -> Result<()> {
    let v = args.client().get(
        "/api/v1/twins",
        &[
            ("region", f.region.clone()),
            ("zone", f.zone.clone()),
            ("cluster", f.cluster.clone()),
            ("component", f.component.clone()),
            ("state", f.state.clone()),
            ("severity", f.severity.clone()),
            ("offset", f.offset.map(|o| o.to_string())),
            ("limit", f.limit.map(|l| l.to_string())),
        ],
    )?;
    if args.json {
        return print_json(&v);
    }
    let rows: Vec<Vec<String>> = v["twins"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            vec![
                cell(&t["node"]),
                cell(&t["component_type"]),
                cell(&t["zone"]),
                cell(&t["connectivity"]),
                cell(&t["phase"]),
                format!(
                    "{}/{}",
                    cell(&t["actual_version"]),
                    cell(&t["desired_version"])
                ),
                cell(&t["severity"]),
                cell(&t["last_seq"]),
            ]
        })
        .collect();
    print_table(
        &[
            "node",
            "component",
            "zone",
            "connectivity",
            "phase",
            "version/desired",
            "drift",
            "seq",
        ],
        &rows,
    );
    println!(
        "{} of {} twins (offset {})",
        rows.len(),
        v["total"],
        v["offset"]
    );
    Ok(())
}

/// `sx-aggregator twin NODE [--at TIME]`.
pub fn twin(args: &ApiArgs, node: &str, at: Option<&str>) -> Result<()> {
    let v = args.client().get(
        &format!("/api/v1/twins/{}", segment(node)),
        &[("at", at.map(str::to_owned))],
    )?;
    if args.json {
        return print_json(&v);
    }
    let t = &v["twin"];
    if let Some(at) = v["as_of"].as_str() {
        println!("{node} as of {at}");
    } else {
        println!("{node}");
    }
    let rows = [
        ("component", cell(&t["identity"]["component_type"])),
        (
            "region / zone",
            format!(
                "{} / {}",
                cell(&t["identity"]["region"]),
                cell(&t["identity"]["zone"])
            ),
        ),
        ("clusters", cell(&t["topology"]["clusters"])),
        ("connectivity", cell(&t["connectivity"]["state"])),
        ("lifecycle", cell(&t["lifecycle"]["phase"])),
        ("operational", cell(&t["operational_state"])),
        (
            "software",
            format!(
                "{} (desired {})",
                cell(&t["software"]["actual_version"]),
                cell(&t["software"]["desired_version"])
            ),
        ),
        (
            "policy",
            format!(
                "{} (desired {})",
                cell(&t["policy"]["actual_policy"]),
                cell(&t["policy"]["desired_policy"])
            ),
        ),
        ("attestation", cell(&t["trust"]["attestation_state"])),
        ("last seq", cell(&t["last_seq"])),
        ("last event", cell(&t["last_event_at"])),
    ];
    for (k, val) in rows {
        println!("  {k:<14} {val}");
    }
    if !v["drift"].is_null() {
        println!(
            "  {:<14} {} (score {})",
            "drift",
            cell(&v["drift"]["severity"]),
            v["drift"]["drift_score"]
        );
    }
    if !v["sync"].is_null() {
        let s = &v["sync"];
        println!(
            "  {:<14} acked {} head {} backlog {} ({}), last {}",
            "sync",
            cell(&s["acked_seq"]),
            cell(&s["agent_head_seq"]),
            cell(&s["backlog"]),
            cell(&s["connection"]["state"]),
            cell(&s["last_sync"])
        );
    }
    Ok(())
}

/// `sx-aggregator drift [--by GROUP] [--node NODE]`.
pub fn drift(args: &ApiArgs, by: Option<&str>, node: Option<&str>) -> Result<()> {
    let client = args.client();
    if let Some(node) = node {
        let v = client.get(&format!("/api/v1/twins/{}/drift", segment(node)), &[])?;
        if args.json {
            return print_json(&v);
        }
        println!(
            "{node}: severity {}, score {}",
            cell(&v["severity"]),
            v["drift_score"]
        );
        for key in ["version_drift", "config_drift", "policy_drift"] {
            if !v[key].is_null() {
                println!("  {key}: {}", v[key]);
            }
        }
        return Ok(());
    }
    let v = client.get("/api/v1/drift", &[("by", by.map(str::to_owned))])?;
    if args.json {
        return print_json(&v);
    }
    let rows: Vec<Vec<String>> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| {
            let s = &g["by_severity"];
            vec![
                cell(&g["group"]),
                cell(&g["nodes"]),
                cell(&s["none"]),
                cell(&s["low"]),
                cell(&s["medium"]),
                cell(&s["high"]),
                cell(&s["critical"]),
                g["worst_nodes"]
                    .as_array()
                    .and_then(|w| w.first())
                    .map(|w| format!("{} ({})", cell(&w[0]), w[1]))
                    .unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect();
    print_table(
        &[
            "group", "nodes", "none", "low", "medium", "high", "critical", "worst",
        ],
        &rows,
    );
    Ok(())
}

/// `sx-aggregator ledger NODE`.
pub fn ledger(args: &ApiArgs, node: &str) -> Result<()> {
    let v = args
        .client()
        .get(&format!("/api/v1/twins/{}/ledger", segment(node)), &[])?;
    if args.json {
        return print_json(&v);
    }
    let rows: Vec<Vec<String>> = v["history"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            vec![
                cell(&r["timestamp"]),
                cell(&r["state"]),
                cell(&r["reason"]),
                cell(&r["latency_ms"]),
                cell(&r["backlog"]),
                cell(&r["seq"]),
            ]
        })
        .collect();
    println!("connectivity ledger of {node}");
    print_table(
        &[
            "timestamp",
            "state",
            "reason",
            "latency_ms",
            "backlog",
            "seq",
        ],
        &rows,
    );
    Ok(())
}

/// `sx-aggregator trust NODE`.
pub fn trust(args: &ApiArgs, node: &str) -> Result<()> {
    let v = args
        .client()
        .get(&format!("/api/v1/twins/{}/trust", segment(node)), &[])?;
    if args.json {
        return print_json(&v);
    }
    println!(
        "{node}: trust score {}, domain {}, attestation {}",
        cell(&v["trust_score"]),
        cell(&v["trust_domain"]),
        cell(&v["attestation"]["integrity_state"])
    );
    println!("certificate chain:");
    for c in v["certificate_chain"].as_array().into_iter().flatten() {
        println!(
            "  {} <- {}  {} until {}",
            cell(&c["subject"]),
            cell(&c["issuer"]),
            cell(&c["validity"]),
            cell(&c["valid_until"])
        );
    }
    println!("rotations:");
    for r in v["rotations"].as_array().into_iter().flatten() {
        println!(
            "  {} seq {}: {} -> {}",
            cell(&r["at"]),
            cell(&r["seq"]),
            cell(&r["old_fingerprint"]),
            cell(&r["new_fingerprint"])
        );
    }
    println!("SBOM lineage:");
    for s in v["sbom_lineage"].as_array().into_iter().flatten() {
        println!(
            "  {} {} {} ({})",
            cell(&s["component"]),
            cell(&s["version"]),
            cell(&s["sbom_hash"]),
            cell(&s["provenance"])
        );
    }
    println!("alerts:");
    for a in v["alerts"].as_array().into_iter().flatten() {
        println!(
            "  [{}] {}: {}",
            cell(&a["severity"]),
            cell(&a["kind"]),
            cell(&a["detail"])
        );
    }
    Ok(())
}

/// `sx-aggregator neighbours NODE [--link-type TYPE]`.
pub fn neighbours(args: &ApiArgs, node: &str, link_type: Option<&str>) -> Result<()> {
    let v = args.client().get(
        &format!("/api/v1/graph/neighbours/{}", segment(node)),
        &[("type", link_type.map(str::to_owned))],
    )?;
    if args.json {
        return print_json(&v);
    }
    let list = v
        .as_array()
        .or_else(|| v["neighbours"].as_array())
        .cloned()
        .unwrap_or_default();
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|n| {
            vec![
                cell(&n["node"]),
                cell(&n["link_type"]),
                cell(&n["direction"]),
            ]
        })
        .collect();
    print_table(&["neighbour", "link", "direction"], &rows);
    Ok(())
}

/// What `sx-aggregator impact` takes dark.
#[derive(Clone, Debug, Default, Args)]
pub struct ImpactArgs {
    /// A node going dark.
    #[arg(long, conflicts_with = "zone", required_unless_present = "zone")]
    pub node: Option<String>,
    /// A whole zone going dark.
    #[arg(long)]
    pub zone: Option<String>,
    /// Only this cluster (default: every cluster someone is cut off from).
    #[arg(long)]
    pub cluster: Option<String>,
}

/// `sx-aggregator impact (--node N | --zone Z) [--cluster C]`.
pub fn impact(args: &ApiArgs, i: &ImpactArgs) -> Result<()> {
    let v = args.client().get(
        "/api/v1/graph/impact",
        &[
            ("node", i.node.clone()),
            ("zone", i.zone.clone()),
            ("cluster", i.cluster.clone()),
        ],
    )?;
    if args.json {
        return print_json(&v);
    }
    let list = match &v {
        Value::Array(a) => a.clone(),
        Value::Object(m) if m.contains_key("impacts") => {
            v["impacts"].as_array().cloned().unwrap_or_default()
        }
        other => vec![other.clone()],
    };
    if list.is_empty() {
        println!("no node loses its last path to any cluster");
    }
    for imp in &list {
        println!(
            "cluster {}: {} cut off, {} still reaching (dark: {})",
            cell(&imp["cluster"]),
            imp["cut_off"].as_array().map_or(0, Vec::len),
            cell(&imp["still_reaching"]),
            cell(&imp["dark"])
        );
        for n in imp["cut_off"].as_array().into_iter().flatten() {
            println!("  {}", cell(n));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_escaped_and_cells_are_plain() {
        assert_eq!(segment("sx-node.1"), "sx-node.1");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
        assert_eq!(cell(&Value::Null), "-");
        assert_eq!(cell(&serde_json::json!("x")), "x");
        assert_eq!(cell(&serde_json::json!(["a", "b"])), "a,b");
    }
}
