//! The real processes of the fleet: `sx-aggregator serve` per region and
//! `sx-agent run` per node, their configuration files, and small clients
//! for the API and the command lines.

use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the workspace binaries are.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub agent: PathBuf,
    pub aggregator: PathBuf,
}

impl Binaries {
    /// `dir` if given; else the directory of this executable, after asking
    /// cargo (when run through `cargo run`) to build the two binaries with
    /// the same profile, since cargo only builds the binary it runs.
    pub fn locate(dir: Option<&Path>) -> Result<Binaries> {
        let dir = match dir {
            Some(d) => d.to_path_buf(),
            None => {
                let exe = std::env::current_exe().context("locating sx-fleet")?;
                let dir = exe
                    .parent()
                    .context("sx-fleet has no parent directory")?
                    .to_path_buf();
                if let Ok(cargo) = std::env::var("CARGO") {
                    let release = dir.file_name().is_some_and(|n| n == "release");
                    eprintln!(
                        "building sx-agent and sx-aggregator ({} profile)...",
                        if release { "release" } else { "dev" }
                    );
                    let mut cmd = Command::new(cargo);
                    cmd.args(["build", "-q", "-p", "sx-agent", "-p", "sx-aggregator"]);
                    if release {
                        cmd.arg("--release");
                    }
                    let status = cmd.status().context("running cargo build")?;
                    if !status.success() {
                        bail!("cargo build of sx-agent and sx-aggregator failed");
                    }
                }
                dir
            }
        };
        let b = Binaries {
            agent: dir.join("sx-agent"),
            aggregator: dir.join("sx-aggregator"),
        };
        for p in [&b.agent, &b.aggregator] {
            if !p.exists() {
                bail!(
                    "{} not found: build the workspace binaries first \
                     (`cargo build --release --workspace --bins`) or pass --bin-dir",
                    p.display()
                );
            }
        }
        Ok(b)
    }
}

/// A free loopback port (TCP and UDP probed).
pub fn free_port() -> Result<u16> {
    for _ in 0..50 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free loopback port")
}

/// Sends SIGTERM and waits up to `grace` for the exit, then SIGKILL.
pub fn terminate(child: &mut Child, grace: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let start = Instant::now();
    while start.elapsed() < grace {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// One region's aggregator.
#[derive(Debug)]
pub struct Aggregator {
    pub name: String,
    pub region: String,
    pub config: PathBuf,
    pub log: PathBuf,
    pub quic: SocketAddr,
    pub api: SocketAddr,
    pub child: Option<Child>,
}

impl Aggregator {
    /// Writes the configuration (fixed ports, so a restart keeps the
    /// address agents dial).
    pub fn prepare(
        root: &Path,
        pki: &Path,
        name: &str,
        region: &str,
        desired: &Path,
        token: &str,
    ) -> Result<Aggregator> {
        let dir = root.join("aggregators").join(name);
        std::fs::create_dir_all(&dir)?;
        let data_dir = dir.join("data");
        let quic = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let api = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let config = dir.join("aggregator.toml");
        let text = format!(
            "[aggregator]\nname = {name:?}\nregion = {region:?}\ndata_dir = {data:?}\n\
             listen = \"{quic}\"\napi_listen = \"{api}\"\ndesired = {desired:?}\n\
             stale_after = \"5s\"\noperator_token = {token:?}\n\n[tls]\npki_dir = {pki:?}\n",
            data = data_dir.display().to_string(),
            desired = desired.display().to_string(),
            pki = pki.display().to_string(),
        );
        std::fs::write(&config, text)?;
        Ok(Aggregator {
            name: name.to_owned(),
            region: region.to_owned(),
            config,
            log: dir.join("aggregator.log"),
            quic,
            api,
            child: None,
        })
    }

    /// Starts `sx-aggregator serve` and waits for its API.
    pub fn start(&mut self, bins: &Binaries) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&bins.aggregator)
            .arg("--config")
            .arg(&self.config)
            .arg("serve")
            .env("RUST_LOG", "warn,sx_aggregator=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting sx-aggregator")?;
        self.child = Some(child);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                bail!(
                    "{} exited with {status} at start: see {}",
                    self.name,
                    self.log.display()
                );
            }
            if http_get(self.api, "/healthz").is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "{} did not come up within 30 s: see {}",
            self.name,
            self.log.display()
        )
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, Duration::from_secs(20));
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn get(&self, path: &str) -> Result<Value> {
        get_json(self.api, path)
    }

    pub fn ui(&self) -> String {
        format!("http://{}/", self.api)
    }
}

impl Drop for Aggregator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One node's agent.
#[derive(Debug)]
pub struct Agent {
    pub node: String,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
}

/// Agent configuration for a fast, visible simulation: heartbeats every
/// 500 ms, autonomous after 3 s without contact, disconnected after 9 s.
pub fn agent_config_text(aggregator: SocketAddr, slow_link: bool) -> String {
    let delay = if slow_link {
        // Below loopback RTT: the node reports `delayed` while connected,
        // as a satellite-backhauled site would.
        "delayed_rtt_ms = 0\nlive_rtt_ms = 0\n"
    } else {
        ""
    };
    format!(
        "[agent]\naggregator = \"{aggregator}\"\nserver_name = \"localhost\"\n\n\
         [uplink]\nheartbeat_interval = \"500ms\"\nack_timeout = \"3s\"\nidle_timeout = \"3s\"\n\
         connect_timeout = \"3s\"\nbackoff_initial = \"250ms\"\nbackoff_max = \"1500ms\"\n\n\
         [connectivity]\nautonomous_after = \"3s\"\ndisconnected_after = \"9s\"\n\
         edge_sync_interval = \"5s\"\n{delay}"
    )
}

impl Agent {
    /// `sx-agent init` on a fresh data directory, and its configuration.
    pub fn prepare(
        bins: &Binaries,
        root: &Path,
        node: &str,
        cert: &Path,
        key: &Path,
        ca: &Path,
        config_text: Option<String>,
    ) -> Result<Agent> {
        let agents = root.join("agents");
        std::fs::create_dir_all(&agents)?;
        let data_dir = agents.join(node);
        run_cli(
            &bins.agent,
            &[
                "--data-dir".as_ref(),
                data_dir.as_os_str(),
                "init".as_ref(),
                "--cert".as_ref(),
                cert.as_os_str(),
                "--key".as_ref(),
                key.as_os_str(),
                "--ca".as_ref(),
                ca.as_os_str(),
            ],
        )
        .with_context(|| format!("sx-agent init for {node}"))?;
        let config = agents.join(format!("{node}.toml"));
        if let Some(text) = config_text {
            std::fs::write(&config, text)?;
        }
        Ok(Agent {
            node: node.to_owned(),
            log: agents.join(format!("{node}.log")),
            data_dir,
            config,
            child: None,
        })
    }

    pub fn start(&mut self, bins: &Binaries) -> Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&bins.agent)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting the agent of {}", self.node))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the agent's socket answers (it opened its journal).
    pub fn wait_socket(&mut self, timeout: Duration) -> Result<()> {
        let socket = self.socket();
        let start = Instant::now();
        while start.elapsed() < timeout {
            if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                self.child = None;
                bail!(
                    "the agent of {} exited with {status}: see {}",
                    self.node,
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("the agent of {} did not open its socket", self.node)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, Duration::from_secs(10));
        }
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.data_dir.join(sx_agent::local::SOCKET_FILE)
    }

    /// Records events through the running agent's socket (the path `sx-agent
    /// record` takes), in one durable append.
    pub fn record_batch(&self, events: &[(&str, Value)]) -> Result<usize> {
        let items = events
            .iter()
            .map(|(t, p)| sx_agent::local::RecordItem {
                event_type: (*t).to_owned(),
                payload: p.clone(),
                timestamp: None,
            })
            .collect();
        match sx_agent::local::record_via_socket(&self.socket(), items)? {
            Some(recorded) => Ok(recorded.len()),
            None => bail!("the agent of {} is not running", self.node),
        }
    }

    /// `sx-agent rotate --cert CERT --key KEY --json`: through the socket
    /// when the agent runs, on the data directory when it is stopped.
    /// Returns what the command printed.
    pub fn rotate_cli(&self, bins: &Binaries, cert: &Path, key: &Path) -> Result<Value> {
        let out = run_cli(
            &bins.agent,
            &[
                "--data-dir".as_ref(),
                self.data_dir.as_os_str(),
                "rotate".as_ref(),
                "--cert".as_ref(),
                cert.as_os_str(),
                "--key".as_ref(),
                key.as_os_str(),
                "--json".as_ref(),
            ],
        )?;
        serde_json::from_str(&out).with_context(|| format!("sx-agent rotate printed {out}"))
    }

    /// `sx-agent record TYPE JSON`: through the socket when the agent runs,
    /// straight into the journal when it is stopped.
    pub fn record_cli(&self, bins: &Binaries, event_type: &str, payload: &Value) -> Result<()> {
        run_cli(
            &bins.agent,
            &[
                "--data-dir".as_ref(),
                self.data_dir.as_os_str(),
                "record".as_ref(),
                event_type.as_ref(),
                payload.to_string().as_ref(),
            ],
        )
        .map(drop)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs a command line to completion; its stdout, or its stderr as error.
pub fn run_cli(bin: &Path, args: &[&std::ffi::OsStr]) -> Result<String> {
    let out = Command::new(bin)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "{} {:?} failed: {}",
            bin.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            args,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

fn http_get(api: SocketAddr, path: &str) -> Result<String> {
    let mut r = agent().get(&format!("http://{api}{path}")).call()?;
    if !r.status().is_success() {
        bail!("GET {path}: {}", r.status());
    }
    Ok(r.body_mut().read_to_string()?)
}

/// `GET` a JSON document.
pub fn get_json(api: SocketAddr, path: &str) -> Result<Value> {
    Ok(serde_json::from_str(&http_get(api, path)?)?)
}

/// `POST` JSON with the operator token; the answer or the API's error.
pub fn post_json(api: SocketAddr, path: &str, token: &str, body: &Value) -> Result<Value> {
    let mut r = agent()
        .post(&format!("http://{api}{path}"))
        .header("Authorization", &format!("Bearer {token}"))
        .header("X-Operator", "sx-fleet")
        .send_json(body)?;
    let status = r.status();
    let text = r.body_mut().read_to_string()?;
    if !status.is_success() {
        bail!("POST {path}: {status}: {text}");
    }
    Ok(serde_json::from_str(&text)?)
}
