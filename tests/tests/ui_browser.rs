//! The web UI in a real browser: headless Chromium (Debian's `chromium`,
//! installed by `.ci/run`) driven over the Chrome DevTools protocol, against
//! a real aggregator with real agents over QUIC.
//!
//! It asserts what is on the page (node count, each node's state in the
//! machine-readable index, the detail panel of a node), then records an
//! event through an agent and waits for the page to show it from the live
//! stream, and saves a screenshot to `target/ui-screenshot.png`.
//!
//! Without Chromium the test fails with instructions: it must not pass
//! silently on a machine that cannot run it.

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use serde_json::{Value, json};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use sx_tests::{
    AgentProcess, AggregatorProcess, TestFleet, agent_cmd, free_tcp_port, free_udp_port,
};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

const NODES: usize = 6;

fn chromium_path() -> PathBuf {
    if let Some(path) = std::env::var_os("SX_CHROMIUM") {
        return PathBuf::from(path);
    }
    let path = PathBuf::from("/usr/bin/chromium");
    if !path.exists() {
        install_chromium();
    }
    assert!(
        path.exists(),
        "{} not found and installing Debian's chromium failed: the UI test needs \
         Chromium. Install it with `apt-get update && apt-get install -y chromium`, \
         or point SX_CHROMIUM at a Chromium binary.",
        path.display()
    );
    path
}

/// Installs Debian's Chromium, as `.ci/run` does, so the README's test
/// command needs nothing set up beforehand (as root, or through sudo).
fn install_chromium() {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    let apt = |args: &[&str]| {
        let mut cmd = if root {
            Command::new("apt-get")
        } else {
            let mut sudo = Command::new("sudo");
            sudo.args(["-n", "apt-get"]);
            sudo
        };
        cmd.args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    eprintln!("installing Debian's chromium for the UI test");
    let _ = apt(&["update", "-qq"]) && apt(&["install", "-y", "-qq", "chromium"]);
}

/// A headless Chromium and one page of it, over the DevTools protocol.
struct Browser {
    child: Child,
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    session: String,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn launch(url: &str) -> Result<Browser> {
        let profile = tempfile::tempdir()?;
        let child = Command::new(chromium_path())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--window-size=1400,1200",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting chromium")?;
        // Chromium writes the port it chose and the browser target's path.
        let port_file = profile.path().join("DevToolsActivePort");
        let text = sx_tests::wait_for(Duration::from_secs(30), "DevToolsActivePort", || {
            std::fs::read_to_string(&port_file)
                .ok()
                .filter(|t| t.lines().count() >= 2)
        })?;
        let mut lines = text.lines();
        let port = lines.next().context("port line")?.trim();
        let path = lines.next().context("path line")?.trim();
        let (ws, _) = tungstenite::connect(format!("ws://127.0.0.1:{port}{path}"))
            .context("connecting to the DevTools socket")?;
        if let MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
        }
        let mut b = Browser {
            child,
            ws,
            session: String::new(),
            next_id: 0,
            _profile: profile,
        };
        let target = b.call(None, "Target.createTarget", json!({ "url": url }))?;
        let target_id = target["targetId"].as_str().context("targetId")?.to_owned();
        let attached = b.call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target_id, "flatten": true }),
        )?;
        b.session = attached["sessionId"]
            .as_str()
            .context("sessionId")?
            .to_owned();
        Ok(b)
    }

    /// Sends one command and waits for its answer (events in between are
    /// skipped).
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws.send(Message::text(msg.to_string()))?;
        loop {
            let text = match self.ws.read()? {
                Message::Text(t) => t,
                _ => continue,
            };
            let v: Value = serde_json::from_str(text.as_str())?;
            if v["id"] == id {
                if !v["error"].is_null() {
                    bail!("{method}: {}", v["error"]);
                }
                return Ok(v["result"].clone());
            }
        }
    }

    /// Evaluates an expression in the page and returns its value.
    fn eval(&mut self, expression: &str) -> Result<Value> {
        let session = self.session.clone();
        let r = self.call(
            Some(&session),
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        )?;
        if !r["exceptionDetails"].is_null() {
            bail!(
                "page exception in {expression:?}: {}",
                r["exceptionDetails"]
            );
        }
        Ok(r["result"]["value"].clone())
    }

    /// Polls an expression until it is `true`.
    fn wait_true(&mut self, expression: &str, timeout: Duration, what: &str) -> Result<()> {
        let start = Instant::now();
        loop {
            // Exceptions (the document still loading) count as "not yet".
            if self.eval(expression).ok() == Some(json!(true)) {
                return Ok(());
            }
            if start.elapsed() > timeout {
                let state = self.eval("document.getElementById('ui-state').textContent")?;
                bail!("timed out after {timeout:?} waiting for {what}; page state: {state}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screenshot(&mut self, path: &Path) -> Result<()> {
        let session = self.session.clone();
        let r = self.call(
            Some(&session),
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": true }),
        )?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().context("screenshot data")?)?;
        std::fs::write(path, png)?;
        Ok(())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.call(None, "Browser.close", json!({}));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `target/` of the workspace (the binaries' parent's parent).
fn target_dir() -> PathBuf {
    sx_tests::bin("sx-agent")
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .to_path_buf()
}

fn node_attr(node: &str, attr: &str) -> String {
    format!("document.querySelector('[data-node=\"{node}\"]')?.dataset.{attr}")
}

#[test]
fn the_page_shows_the_fleet_and_follows_the_live_stream() -> Result<()> {
    chromium_path();
    let fleet = TestFleet::new()?;
    let agg_dir = fleet.path().join("aggregator");
    let agg = AggregatorProcess::start(&fleet, &agg_dir, free_udp_port(), free_tcp_port())?;
    let config = fleet.agent_config("ui", agg.quic, "")?;
    let zones = ["edge-zone-a1", "core-zone-a2"];
    let mut agents = Vec::new();
    let mut ids = Vec::new();
    for i in 0..NODES {
        let (component, short) = match i % 3 {
            0 => ("souverix-coeur", "coeur"),
            1 => ("souverix-rempart", "rempart"),
            _ => ("souverix-relais", "relais"),
        };
        let id = format!("sx-{short}-ui-node-{i}");
        let node = fleet.node(&id, component, "region-a", zones[i % 2])?;
        let dir = fleet.agent_dir(&node)?;
        agents.push((AgentProcess::start(&dir, &config)?, dir));
        ids.push(id);
    }
    // Inventory through the running agents: topology (links for the
    // graph), software, and the end of provisioning.
    for (i, (_, dir)) in agents.iter().enumerate() {
        let socket = dir.join("agent.sock");
        sx_tests::wait_for(Duration::from_secs(20), "agent socket", || {
            std::os::unix::net::UnixStream::connect(&socket).ok()
        })?;
        let peer = &ids[(i + 1) % NODES];
        let topology = json!({
            "links": [{ "peer": peer, "link_type": if i % 2 == 0 { "signaling" } else { "media" } }],
            "clusters": ["iBCF-interconnect-cluster"],
        });
        agent_cmd(
            dir,
            &["record", "inventory.topology", &topology.to_string()],
        )?;
        agent_cmd(dir, &["record", "lifecycle.provisioning_completed", "{}"])?;
    }
    for id in &ids {
        agg.wait_synced(id, Duration::from_secs(30))?;
    }

    let url = format!("http://{}/", agg.api);
    let mut browser = Browser::launch(&url)?;
    browser.wait_true(
        "document.body.dataset.ready === 'true'",
        Duration::from_secs(30),
        "the page to load the fleet",
    )?;
    assert_eq!(
        browser.eval("document.getElementById('node-count').textContent")?,
        json!(NODES.to_string()),
        "node count on the page"
    );
    assert_eq!(
        browser.eval("document.querySelectorAll('#node-index li').length")?,
        json!(NODES)
    );
    let watched = ids[1].clone();
    for id in &ids {
        assert_eq!(
            browser.eval(&node_attr(id, "state"))?,
            json!("live"),
            "{id}"
        );
        assert_eq!(
            browser.eval(&node_attr(id, "phase"))?,
            json!("active"),
            "{id}"
        );
    }
    // The aggregates rendered: spectrum, heat map, sync table.
    assert_eq!(
        browser.eval("document.querySelector('#spectrum [data-state=\"live\"]')?.dataset.count")?,
        json!(NODES.to_string())
    );
    assert!(
        browser
            .eval("document.querySelectorAll('#heatmap td[data-zone]').length")?
            .as_u64()
            .unwrap_or(0)
            >= 2
    );
    assert_eq!(
        browser.eval("document.querySelectorAll('#sync-table tbody tr').length")?,
        json!(zones.len())
    );

    // Live: an event recorded now reaches the page through the stream (the
    // page's own full reload is a minute away).
    browser.wait_true(
        "document.body.dataset.live === 'open'",
        Duration::from_secs(15),
        "the live stream to open",
    )?;
    let changes_before = browser.eval("Number(document.body.dataset.changes)")?;
    let dir = &agents[1].1;
    agent_cmd(
        dir,
        &[
            "record",
            "lifecycle.maintenance_started",
            r#"{"window_id":"mw-ui-1","reason":"fan replacement"}"#,
        ],
    )?;
    browser.wait_true(
        &format!("{} === 'maintenance'", node_attr(&watched, "phase")),
        Duration::from_secs(15),
        "the recorded maintenance window to show on the page",
    )?;
    // The page counts the changes it applied from the stream; a reload
    // does not count.
    browser.wait_true(
        &format!("Number(document.body.dataset.changes) > {changes_before}"),
        Duration::from_secs(5),
        "the change to be counted as coming from the stream",
    )?;

    // The detail panel of a node: search, Enter, twin and ledger shown.
    browser.eval(&format!(
        "(() => {{ const s = document.getElementById('search'); s.value = '{watched}';
           s.dispatchEvent(new Event('input'));
           s.dispatchEvent(new KeyboardEvent('keydown', {{ key: 'Enter' }})); return true; }})()"
    ))?;
    browser.wait_true(
        &format!(
            "document.getElementById('detail-title').textContent === '{watched}' && \
             !!document.getElementById('ledger-timeline')"
        ),
        Duration::from_secs(15),
        "the detail panel with the connectivity ledger",
    )?;
    let detail = browser.eval("document.getElementById('detail-body').textContent")?;
    let detail = detail.as_str().unwrap_or("");
    assert!(detail.contains("souverix-rempart"), "{detail}");
    assert!(detail.contains("maintenance"), "{detail}");

    // The aggregates follow (debounced): the lifecycle distribution counts
    // the maintenance window.
    browser.wait_true(
        "document.querySelector('#lifecycle [data-phase=\"maintenance\"]')?.dataset.count === '1'",
        Duration::from_secs(15),
        "the lifecycle distribution to count the maintenance window",
    )?;

    let shot = target_dir().join("ui-screenshot.png");
    browser.screenshot(&shot)?;
    let png = std::fs::read(&shot)?;
    assert!(png.starts_with(b"\x89PNG"), "{} is a PNG", shot.display());
    assert!(png.len() > 10_000, "the screenshot shows something");
    eprintln!("screenshot: {}", shot.display());
    drop(browser);
    for (mut a, _) in agents {
        a.stop()?;
    }
    Ok(())
}
