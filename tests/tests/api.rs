//! The operator API of a real aggregator process, with real agents feeding
//! it over QUIC: every route with its parameters and errors, operator
//! authorisation of desired-state changes, the live stream, the body limit,
//! and the `sx-aggregator` CLI's `--json` output on the same API.

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use sx_tests::{
    AgentProcess, AggregatorProcess, TestFleet, agent_cmd, bin, free_tcp_port, free_udp_port,
    wait_for,
};

const TOKEN: &str = "s3cret-operator-token";
const A: &str = "sx-rempart-api-node-1";
const B: &str = "sx-coeur-api-node-2";
const CLUSTER: &str = "iBCF-interconnect-cluster";

/// An answer: status and JSON body (`Value::Null` if not JSON).
fn call(
    method: &str,
    api: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<(u16, Value)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("http://{api}{path}");
    let mut resp = match (method, body) {
        ("GET", _) => {
            let mut r = agent.get(&url);
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.call()?
        }
        (m, b) => {
            let mut r = match m {
                "PUT" => agent.put(&url),
                _ => agent.post(&url),
            };
            r = r.header("content-type", "application/json");
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.send(b.unwrap_or(""))?
        }
    };
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_string()?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

fn get(api: SocketAddr, path: &str) -> Result<(u16, Value)> {
    call("GET", api, path, &[], None)
}

fn ok(api: SocketAddr, path: &str) -> Result<Value> {
    let (status, body) = get(api, path)?;
    if status != 200 {
        bail!("GET {path}: {status} {body}");
    }
    Ok(body)
}

/// `sx-aggregator <args> --api <api> --json`: (success, stdout JSON, stderr).
fn cli(api: SocketAddr, args: &[&str]) -> Result<(bool, Value, String)> {
    let out = Command::new(bin("sx-aggregator"))
        .args(args)
        .arg("--api")
        .arg(api.to_string())
        .arg("--json")
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok((
        out.status.success(),
        serde_json::from_str(&stdout).unwrap_or(Value::Null),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// An aggregator with an operator token and a desired-state file.
fn start_aggregator(fleet: &TestFleet) -> Result<AggregatorProcess> {
    let data_dir = fleet.path().join("aggregator");
    std::fs::create_dir_all(&data_dir)?;
    let desired = fleet.path().join("desired.json");
    std::fs::write(
        &desired,
        json!({
            "software": [{ "component": "souverix-rempart", "scope": "fleet", "version": "2.4.1" }],
            "config": [{ "scope": "fleet", "values": { "tls.min_version": "1.3" } }],
            "policy": [{ "scope": "fleet", "version": "pol-2026.02" }],
        })
        .to_string(),
    )?;
    let (quic, api) = (free_udp_port(), free_tcp_port());
    let config = fleet.path().join("aggregator.toml");
    std::fs::write(
        &config,
        format!(
            "[aggregator]\nname = \"agg-test\"\nregion = \"region-a\"\ndata_dir = {:?}\n\
             listen = \"127.0.0.1:{quic}\"\napi_listen = \"127.0.0.1:{api}\"\ndesired = {:?}\n\
             operator_token = \"{TOKEN}\"\n[tls]\npki_dir = {:?}\n",
            data_dir.display().to_string(),
            desired.display().to_string(),
            fleet.pki_dir().display().to_string(),
        ),
    )?;
    let log = std::fs::File::create(data_dir.with_extension("log"))?;
    let child = Command::new(bin("sx-aggregator"))
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let p = AggregatorProcess {
        child,
        quic: SocketAddr::from(([127, 0, 0, 1], quic)),
        api: SocketAddr::from(([127, 0, 0, 1], api)),
        data_dir,
    };
    wait_for(Duration::from_secs(20), "the aggregator API", || {
        get(p.api, "/healthz").ok()
    })?;
    Ok(p)
}

fn start_agent(
    fleet: &TestFleet,
    agg: &AggregatorProcess,
    id: &str,
    component: &str,
    zone: &str,
) -> Result<(AgentProcess, std::path::PathBuf)> {
    let node = fleet.node(id, component, "region-a", zone)?;
    let dir = fleet.agent_dir(&node)?;
    let config = fleet.agent_config(id, agg.quic, "")?;
    let agent = AgentProcess::start(&dir, &config)?;
    let socket = dir.join("agent.sock");
    wait_for(Duration::from_secs(20), "the agent socket", || {
        std::os::unix::net::UnixStream::connect(&socket).ok()
    })?;
    Ok((agent, dir))
}

fn record(dir: &Path, event_type: &str, payload: Value) -> Result<()> {
    agent_cmd(dir, &["record", event_type, &payload.to_string()]).map(drop)
}

/// Two nodes: A (rempart, zone a1, in the iBCF cluster, behind on its
/// version) linked to B (coeur, zone a2).
struct Setup {
    _fleet: TestFleet,
    agg: AggregatorProcess,
    agents: Vec<(AgentProcess, std::path::PathBuf)>,
}

fn setup() -> Result<Setup> {
    let fleet = TestFleet::new()?;
    let agg = start_aggregator(&fleet)?;
    let a = start_agent(&fleet, &agg, A, "souverix-rempart", "edge-zone-a1")?;
    let b = start_agent(&fleet, &agg, B, "souverix-coeur", "core-zone-a2")?;
    record(
        &a.1,
        "inventory.topology",
        json!({ "links": [{ "peer": B, "link_type": "signaling" }, { "peer": B, "link_type": "control" }],
                "clusters": [CLUSTER] }),
    )?;
    record(
        &a.1,
        "inventory.software",
        json!({ "component": "souverix-rempart", "version": "2.3.9", "sbom_hash": "sha256:00", "image_provenance": "registry/rempart:2.3.9" }),
    )?;
    record(&a.1, "lifecycle.provisioning_completed", json!({}))?;
    record(&b.1, "lifecycle.provisioning_completed", json!({}))?;
    for id in [A, B] {
        agg.wait_synced(id, Duration::from_secs(30))?;
    }
    Ok(Setup {
        _fleet: fleet,
        agg,
        agents: vec![a, b],
    })
}

#[test]
fn routes_answer_with_the_projections_and_clear_errors() -> Result<()> {
    let s = setup()?;
    let api = s.agg.api;

    // Fleet, status, twins.
    let fleet = ok(api, "/api/v1/fleet")?;
    assert_eq!(fleet["nodes"], 2);
    assert_eq!(fleet["region"], "region-a");
    assert!(fleet["events_stored"].as_u64().unwrap_or(0) >= 6, "{fleet}");
    assert_eq!(fleet["connectivity"]["spectrum"]["live"], 2, "{fleet}");
    let status = ok(api, "/api/v1/status")?;
    assert_eq!(status["nodes"].as_array().map(Vec::len), Some(2));
    let twins = ok(api, "/api/v1/twins")?;
    assert_eq!(twins["total"], 2);
    for (query, expect) in [
        ("zone=edge-zone-a1", vec![A]),
        ("component=souverix-coeur", vec![B]),
        (&format!("cluster={CLUSTER}") as &str, vec![A]),
        // Sorted by node id.
        ("region=region-a&state=live", vec![B, A]),
        ("state=autonomous", vec![]),
        ("offset=1&limit=1", vec![A]),
    ] {
        let v = ok(api, &format!("/api/v1/twins?{query}"))?;
        let got: Vec<&str> = v["twins"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["node"].as_str())
            .collect();
        assert_eq!(got, expect, "twins?{query}");
    }
    let drifting = ok(api, "/api/v1/twins?severity=none")?;
    assert!(
        drifting["twins"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|t| t["node"] != A),
        "A runs 2.3.9 against 2.4.1: it drifts"
    );
    for bad in [
        "/api/v1/twins?state=sideways",
        "/api/v1/twins?severity=apocalyptic",
        "/api/v1/twins?limit=0",
        "/api/v1/twins?limit=10001",
        "/api/v1/twins?bogus=1",
        "/api/v1/twins?offset=-1",
    ] {
        let (status, body) = get(api, bad)?;
        assert_eq!(status, 400, "{bad}: {body}");
    }

    // One twin: now, as of a time, errors.
    let twin = ok(api, &format!("/api/v1/twins/{A}"))?;
    assert_eq!(
        twin["twin"]["identity"]["component_type"],
        "souverix-rempart"
    );
    assert_eq!(
        twin["twin"]["software"]["actual_version"],
        "souverix-rempart-2.3.9"
    );
    assert_eq!(twin["twin"]["lifecycle"]["phase"], "active");
    assert_eq!(twin["sync"]["node_id"], A);
    assert_ne!(twin["drift"]["severity"], "none");
    let first_at = ok(api, &format!("/api/v1/twins/{A}/events?limit=1"))?[0]["timestamp"]
        .as_str()
        .context("first event time")?
        .to_owned();
    let early = ok(api, &format!("/api/v1/twins/{A}?at={first_at}"))?;
    assert_eq!(early["as_of"], first_at.as_str());
    // As of the first event (init records two at the same instant): before
    // provisioning completed and before the software report.
    assert_eq!(
        early["twin"]["lifecycle"]["phase"], "provisioning",
        "{early}"
    );
    assert_eq!(early["twin"]["software"]["actual_version"], "");
    assert!(early["twin"]["last_seq"].as_u64() < twin["twin"]["last_seq"].as_u64());
    assert_eq!(get(api, &format!("/api/v1/twins/{A}?at=yesterday"))?.0, 400);
    let (status, body) = get(api, "/api/v1/twins/sx-nobody")?;
    assert_eq!(status, 404);
    assert!(
        body["error"].as_str().unwrap_or("").contains("sx-nobody"),
        "{body}"
    );

    // Events, ledger, drift of a node.
    let events = ok(api, &format!("/api/v1/twins/{A}/events"))?;
    let seqs: Vec<u64> = events
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let page = ok(api, &format!("/api/v1/twins/{A}/events?from=2&limit=1"))?;
    assert_eq!(page.as_array().map(Vec::len), Some(1));
    assert_eq!(page[0]["seq"], 2);
    assert!(
        page[0]["hash"]
            .as_str()
            .is_some_and(|h| h.starts_with("sha256:"))
    );
    assert_eq!(
        get(api, &format!("/api/v1/twins/{A}/events?limit=0"))?.0,
        400
    );
    assert_eq!(
        get(api, &format!("/api/v1/twins/{A}/events?since=soon"))?.0,
        400
    );
    assert_eq!(get(api, "/api/v1/twins/sx-nobody/events")?.0, 404);
    let ledger = ok(api, &format!("/api/v1/twins/{A}/ledger"))?;
    assert_eq!(ledger["node"], A);
    let states: Vec<&str> = ledger["history"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["state"].as_str())
        .collect();
    assert_eq!(states.last(), Some(&"live"), "{ledger}");
    assert_eq!(get(api, "/api/v1/twins/sx-nobody/ledger")?.0, 404);
    let drift = ok(api, &format!("/api/v1/twins/{A}/drift"))?;
    assert!(drift["version_drift"].is_object(), "{drift}");
    assert_eq!(get(api, "/api/v1/twins/sx-nobody/drift")?.0, 404);

    // Group views.
    let by_zone = ok(api, "/api/v1/drift?by=zone")?;
    let groups: Vec<&str> = by_zone
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g["group"].as_str())
        .collect();
    assert_eq!(groups, ["core-zone-a2", "edge-zone-a1"]);
    let conn = ok(api, "/api/v1/connectivity?by=cluster")?;
    assert!(
        conn.as_array()
            .into_iter()
            .flatten()
            .any(|g| g["group"] == CLUSTER && g["nodes"] == 1),
        "{conn}"
    );
    let life = ok(api, "/api/v1/lifecycle?by=global")?;
    assert_eq!(life[0]["phases"]["active"], 2, "{life}");
    for view in ["drift", "connectivity", "lifecycle"] {
        assert_eq!(
            get(api, &format!("/api/v1/{view}?by=galaxy"))?.0,
            400,
            "{view}"
        );
    }
    assert!(ok(api, "/api/v1/refusals")?.is_array());
    assert!(ok(api, "/api/v1/forks")?.is_array());

    // Unknown routes, the page and its assets.
    let (status, body) = get(api, "/api/v1/nope")?;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "no such route");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    for (path, kind) in [
        ("/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/style.css", "text/css"),
    ] {
        let r = agent.get(&format!("http://{api}{path}")).call()?;
        assert_eq!(r.status().as_u16(), 200, "{path}");
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(ct.starts_with(kind), "{path}: {ct}");
    }
    Ok(())
}

#[test]
fn desired_changes_need_the_operator_token_and_are_recorded() -> Result<()> {
    let s = setup()?;
    let api = s.agg.api;
    let desired = ok(api, "/api/v1/desired")?;
    assert_eq!(
        desired["spec"]["software"][0]["version"], "2.4.1",
        "{desired}"
    );
    let loaded = ok(api, "/api/v1/desired/changes")?;
    let before = loaded.as_array().map_or(0, Vec::len);
    assert!(before >= 1, "the file load is a recorded change: {loaded}");

    let change = json!({ "set-version": { "rule": { "component": "souverix-coeur", "scope": "fleet", "version": "3.2.0" } } })
        .to_string();
    let path = "/api/v1/desired/changes";
    let (status, _) = call("POST", api, path, &[], Some(&change))?;
    assert_eq!(status, 401, "no token");
    let (status, _) = call(
        "POST",
        api,
        path,
        &[("authorization", "Bearer wrong")],
        Some(&change),
    )?;
    assert_eq!(status, 403, "wrong token");
    let (status, _) = call(
        "POST",
        api,
        path,
        &[("authorization", TOKEN)],
        Some(&change),
    )?;
    assert_eq!(status, 401, "not a bearer token");
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("authorization", bearer.as_str()), ("x-operator", "alice")];
    let (status, body) = call("POST", api, path, &auth, Some(&change))?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["by"], "alice");
    let changes = ok(api, path)?;
    let last = changes
        .as_array()
        .and_then(|a| a.last())
        .context("a change")?
        .clone();
    assert_eq!(changes.as_array().map(Vec::len), Some(before + 1));
    assert_eq!(last["by"], "alice");
    assert!(
        last["at"].as_str().is_some_and(|t| t.starts_with("20")),
        "{last}"
    );
    let desired = ok(api, "/api/v1/desired")?;
    assert!(
        desired["spec"]["software"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["component"] == "souverix-coeur" && r["version"] == "3.2.0"),
        "{desired}"
    );
    // The change re-analysed B (no version reported: it cannot match).
    let twin_b = ok(api, &format!("/api/v1/twins/{B}"))?;
    assert_eq!(twin_b["drift"]["node"], B);

    // PUT replaces the whole declaration, with the same authorisation.
    let spec = json!({ "software": [{ "component": "souverix-rempart", "scope": "fleet", "version": "2.3.9" }] }).to_string();
    assert_eq!(
        call("PUT", api, "/api/v1/desired", &[], Some(&spec))?.0,
        401
    );
    assert_eq!(
        call(
            "PUT",
            api,
            "/api/v1/desired",
            &[("authorization", "Bearer nope")],
            Some(&spec)
        )?
        .0,
        403
    );
    let (status, body) = call("PUT", api, "/api/v1/desired", &auth, Some(&spec))?;
    assert_eq!(status, 200, "{body}");
    let drift = ok(api, &format!("/api/v1/twins/{A}/drift"))?;
    assert!(
        drift["version_drift"].is_null(),
        "A now runs the desired 2.3.9: {drift}"
    );

    // Malformed and oversized bodies.
    let (status, _) = call("POST", api, path, &auth, Some("{not json"))?;
    assert_eq!(status, 400);
    let (status, _) = call("POST", api, path, &auth, Some(r#"{"launch-missiles":{}}"#))?;
    assert_eq!(status, 422);
    let huge = format!(
        r#"{{"replace":{{"spec":{{"releases":[],"pad":"{}"}}}}}}"#,
        "x".repeat(2 << 20)
    );
    let status = post_oversized(api, path, &auth, &huge)?;
    assert_eq!(status, 413, "a body over the limit");
    assert_eq!(
        ok(api, path)?.as_array().map(Vec::len),
        Some(before + 2),
        "nothing else recorded"
    );
    Ok(())
}

/// POSTs `body` on a raw socket with `Expect: 100-continue` and returns
/// the final status. (An HTTP client that must finish writing a body the
/// server stopped reading fails with a broken pipe instead of showing the
/// server's answer.)
fn post_oversized(
    api: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<u16> {
    let mut stream = std::net::TcpStream::connect(api)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut all = vec![
        ("content-type", "application/json"),
        ("expect", "100-continue"),
    ];
    all.extend_from_slice(headers);
    let head = sx_tests::http::request_head(api, "POST", path, &all, body.len());
    stream.write_all(head.as_bytes())?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let status = |line: &str| -> Result<u16> {
        line.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("no HTTP status in {line:?}"))
    };
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if status(&line)? != 100 {
        return status(&line);
    }
    // The server reads the body up to its limit, then answers and closes:
    // the rest of the write may fail, the answer is still there to read.
    let _ = stream.write_all(body.as_bytes());
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        if line.starts_with("HTTP/") {
            return status(&line);
        }
    }
}

/// Reads the SSE stream on a raw socket until `until` matches a data line.
fn read_stream(
    api: SocketAddr,
    query: &str,
    timeout: Duration,
    until: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let mut sock = std::net::TcpStream::connect(api)?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    write!(
        sock,
        "GET /api/v1/stream{query} HTTP/1.1\r\nHost: {api}\r\nAccept: text/event-stream\r\n\r\n"
    )?;
    let mut reader = BufReader::new(sock);
    let start = Instant::now();
    let mut line = String::new();
    let mut event = String::new();
    while start.elapsed() < timeout {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => bail!("the stream ended"),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        let l = line.trim_end();
        if let Some(name) = l.strip_prefix("event:") {
            event = name.trim().to_owned();
        } else if let Some(data) = l.strip_prefix("data:")
            && event == "change"
            && let Ok(v) = serde_json::from_str::<Value>(data.trim())
            && until(&v)
        {
            return Ok(v);
        }
    }
    bail!("no matching change within {timeout:?}")
}

#[test]
fn the_stream_delivers_a_change_after_an_event_is_recorded() -> Result<()> {
    let s = setup()?;
    let api = s.agg.api;
    let dir = s.agents[1].1.clone();
    let recorder = std::thread::spawn(move || {
        // Give the subscriber time to connect, then record.
        std::thread::sleep(Duration::from_millis(800));
        record(
            &dir,
            "lifecycle.maintenance_started",
            json!({ "window_id": "mw-1", "reason": "fan" }),
        )
    });
    let change = read_stream(api, &format!("?node={B}"), Duration::from_secs(20), |v| {
        v["event_types"]
            .as_array()
            .is_some_and(|t| t.iter().any(|e| e == "lifecycle.maintenance_started"))
    })?;
    recorder
        .join()
        .map_err(|_| anyhow::anyhow!("recorder panicked"))??;
    assert_eq!(change["node"], B);
    assert_eq!(change["phase"], "maintenance");
    assert_eq!(change["connectivity"], "live");
    assert!(change["seq"].as_u64().unwrap_or(0) > 1);
    for key in ["severity", "event_types"] {
        assert!(!change[key].is_null(), "{key} in {change}");
    }
    Ok(())
}

#[test]
fn the_cli_prints_the_api_json() -> Result<()> {
    let s = setup()?;
    let api = s.agg.api;
    let (success, fleet, err) = cli(api, &["fleet"])?;
    assert!(success, "{err}");
    assert_eq!(fleet["nodes"], 2);
    let (success, twins, err) = cli(api, &["twins", "--zone", "edge-zone-a1"])?;
    assert!(success, "{err}");
    assert_eq!(twins["total"], 1);
    assert_eq!(twins["twins"][0]["node"], A);
    let (success, twins, err) = cli(
        api,
        &["twins", "--state", "live", "--limit", "1", "--offset", "1"],
    )?;
    assert!(success, "{err}");
    assert_eq!(twins["twins"][0]["node"], A, "second by node id");
    let (success, twin, err) = cli(api, &["twin", A])?;
    assert!(success, "{err}");
    assert_eq!(
        twin["twin"]["software"]["actual_version"],
        "souverix-rempart-2.3.9"
    );
    let (success, drift, err) = cli(api, &["drift", "--by", "zone"])?;
    assert!(success, "{err}");
    assert_eq!(drift.as_array().map(Vec::len), Some(2));
    let (success, drift, err) = cli(api, &["drift", "--node", A])?;
    assert!(success, "{err}");
    assert_eq!(drift["node"], A);
    let (success, ledger, err) = cli(api, &["ledger", A])?;
    assert!(success, "{err}");
    assert_eq!(ledger["node"], A);
    let (success, status, err) = cli(api, &["status"])?;
    assert!(success, "{err}");
    assert_eq!(status["nodes"].as_array().map(Vec::len), Some(2));
    // Errors carry the API's message and fail the command.
    let (success, _, err) = cli(api, &["twin", "sx-nobody"])?;
    assert!(!success);
    assert!(err.contains("404") && err.contains("sx-nobody"), "{err}");
    let (success, _, err) = cli(api, &["twins", "--state", "sideways"])?;
    assert!(!success);
    assert!(err.contains("400"), "{err}");
    // Human tables name the nodes.
    let out = Command::new(bin("sx-aggregator"))
        .args(["twins", "--api", &api.to_string()])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(A) && text.contains(B),
        "{text}"
    );
    Ok(())
}

#[test]
fn graph_and_trust_routes_and_their_cli() -> Result<()> {
    let s = setup()?;
    let api = s.agg.api;
    let graph = ok(api, "/api/v1/graph")?;
    assert_eq!(graph["nodes"].as_array().map(Vec::len), Some(2), "{graph}");
    assert!(
        graph["edges"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["from"] == A && e["to"] == B && e["link_type"] == "signaling")
    );
    let (success, n, err) = cli(api, &["neighbours", B])?;
    assert!(success, "{err}");
    let list = n
        .as_array()
        .or_else(|| n["neighbours"].as_array())
        .cloned()
        .unwrap_or_default();
    assert!(
        list.iter()
            .any(|x| x["node"] == A && x["direction"] == "incoming"),
        "{n}"
    );
    let (success, _, _) = cli(api, &["neighbours", "sx-nobody"])?;
    assert!(!success);
    let (success, impact, err) = cli(api, &["impact", "--node", B])?;
    assert!(success, "{err}: {impact}");
    let (success, trust, err) = cli(api, &["trust", A])?;
    assert!(success, "{err}");
    assert_eq!(trust["node"], A);
    assert!(trust["trust_score"].is_number());
    assert_eq!(get(api, "/api/v1/twins/sx-nobody/trust")?.0, 404);
    Ok(())
}
