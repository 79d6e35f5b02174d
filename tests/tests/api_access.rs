//! Access to the API of a real aggregator process listening beyond
//! loopback (`0.0.0.0`, reached here through 127.0.0.1): every route but
//! `/healthz` needs the operator credential (bearer token, or the web UI's
//! session cookie from the login form), a missing or wrong one gets 401
//! with `WWW-Authenticate: Bearer`, and without a configured token the
//! aggregator refuses to start at all.

use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use sx_tests::http::{self, Response};
use sx_tests::{AggregatorProcess, TestFleet, bin, free_tcp_port, free_udp_port, wait_for};

const TOKEN: &str = "beyond-loopback-operator-token";
const CHANGE: &str =
    r#"{"set-version":{"rule":{"component":"souverix-coeur","scope":"fleet","version":"3.2.0"}}}"#;

/// `sx-aggregator --config <file> serve` with `api_listen` on all
/// addresses; `token` goes into the file when given.
fn serve_beyond_loopback(
    fleet: &TestFleet,
    name: &str,
    token: Option<&str>,
) -> Result<(
    std::process::Child,
    SocketAddr,
    SocketAddr,
    std::path::PathBuf,
)> {
    let data_dir = fleet.path().join(name);
    std::fs::create_dir_all(&data_dir)?;
    let (quic, api) = (free_udp_port(), free_tcp_port());
    let token_line = token
        .map(|t| format!("operator_token = \"{t}\"\n"))
        .unwrap_or_default();
    let config = fleet.path().join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "[aggregator]\nname = \"agg-test\"\ndata_dir = {:?}\nlisten = \"127.0.0.1:{quic}\"\n\
             api_listen = \"0.0.0.0:{api}\"\n{token_line}[tls]\npki_dir = {:?}\n",
            data_dir.display().to_string(),
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
    Ok((
        child,
        SocketAddr::from(([127, 0, 0, 1], quic)),
        SocketAddr::from(([127, 0, 0, 1], api)),
        data_dir,
    ))
}

fn assert_refused(r: &Response, what: &str, wrong: bool) {
    assert_eq!(r.status, 401, "{what}: {} {}", r.status, r.body);
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(challenge.starts_with("Bearer "), "{what}: {challenge:?}");
    assert_eq!(
        challenge.contains("invalid_token"),
        wrong,
        "{what}: {challenge:?}"
    );
}

#[test]
fn beyond_loopback_every_route_needs_the_operator_credential() -> Result<()> {
    let fleet = TestFleet::new()?;
    let (child, quic, api, data_dir) = serve_beyond_loopback(&fleet, "agg", Some(TOKEN))?;
    let agg = AggregatorProcess {
        child,
        quic,
        api,
        data_dir,
    };
    wait_for(Duration::from_secs(20), "the aggregator API", || {
        http::get(api, "/healthz", &[]).ok()
    })?;

    // Liveness stays open.
    let r = http::get(api, "/healthz", &[])?;
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));

    let bearer = format!("Bearer {TOKEN}");
    let wrong = format!("Bearer {TOKEN}x");
    for path in [
        "/api/v1/status",
        "/api/v1/fleet",
        "/api/v1/twins",
        "/api/v1/refusals",
        "/api/v1/connectivity?by=zone",
        "/api/v1/desired",
        "/metrics",
        "/ui/app.js",
        "/ui/style.css",
        "/no/such/route",
    ] {
        let r = http::get(api, path, &[])?;
        assert_refused(&r, path, false);
        let body = r.json();
        assert!(
            body["error"].as_str().is_some_and(|e| e.contains("Bearer")),
            "{path}: {}",
            r.body
        );
        assert_refused(
            &http::get(api, path, &[("authorization", &wrong)])?,
            path,
            true,
        );
        assert_refused(
            &http::get(api, path, &[("authorization", TOKEN)])?,
            &format!("{path} (not a bearer header)"),
            false,
        );
        let r = http::get(api, path, &[("authorization", &bearer)])?;
        let want = if path == "/no/such/route" { 404 } else { 200 };
        assert_eq!(r.status, want, "{path} with the token: {}", r.body);
    }
    let r = http::get(api, "/metrics", &[("authorization", &bearer)])?;
    sx_tests::prometheus::parse(&r.body)?;

    // A change and a bundle import without the token change nothing.
    let r = http::request(
        api,
        "POST",
        "/api/v1/bundles",
        &[("content-type", "application/octet-stream")],
        b"not a bundle",
    )?;
    assert_refused(&r, "bundle import", false);
    let r = http::request(
        api,
        "POST",
        "/api/v1/desired/changes",
        &[("content-type", "application/json")],
        CHANGE.as_bytes(),
    )?;
    assert_refused(&r, "desired change", false);
    let changes = http::get(
        api,
        "/api/v1/desired/changes",
        &[("authorization", &bearer)],
    )?;
    assert_eq!(changes.json(), serde_json::json!([]), "{}", changes.body);
    let m = sx_tests::prometheus::parse(
        &http::get(api, "/metrics", &[("authorization", &bearer)])?.body,
    )?;
    assert_eq!(
        m.get(
            "sx_aggregator_bundle_imports_total",
            &[("outcome", "refused")]
        )?,
        0.0,
        "the refused request never reached the import"
    );

    // The web UI: the page answers with the login form; a wrong token is
    // refused; the right one sets a session cookie that opens the page,
    // the API it reads and the live stream, but not desired-state changes.
    let r = http::get(api, "/", &[])?;
    assert_refused(&r, "the page", false);
    assert!(r.body.contains("action=\"/login\""), "{}", r.body);
    let login = |token: &str| {
        http::request(
            api,
            "POST",
            "/login",
            &[("content-type", "application/x-www-form-urlencoded")],
            format!("token={token}").as_bytes(),
        )
    };
    let r = login("nope")?;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.header("set-cookie").is_none());
    let r = login(TOKEN)?;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location"), Some("/"));
    let set_cookie = r.header("set-cookie").context("a session cookie")?;
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    assert!(
        !set_cookie.contains(TOKEN),
        "the cookie is not the token: {set_cookie}"
    );
    let cookie = set_cookie.split(';').next().context("cookie")?.to_owned();
    let with_cookie = [("cookie", cookie.as_str())];
    let r = http::get(api, "/", &with_cookie)?;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("/ui/app.js"), "the UI page");
    for path in ["/ui/app.js", "/api/v1/status", "/api/v1/fleet"] {
        assert_eq!(http::get(api, path, &with_cookie)?.status, 200, "{path}");
    }
    let r = http::get(api, "/api/v1/stream", &with_cookie)?;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_refused(
        &http::get(api, "/api/v1/stream", &[])?,
        "the stream without the cookie",
        false,
    );
    assert_refused(
        &http::get(api, "/api/v1/status", &[("cookie", "sx_operator=forged")])?,
        "a forged cookie",
        true,
    );
    let r = http::request(
        api,
        "POST",
        "/api/v1/desired/changes",
        &[("content-type", "application/json"), with_cookie[0]],
        CHANGE.as_bytes(),
    )?;
    assert_eq!(r.status, 401, "changes need the bearer token: {}", r.body);
    let r = http::request(
        api,
        "POST",
        "/api/v1/desired/changes",
        &[
            ("content-type", "application/json"),
            ("authorization", &bearer),
        ],
        CHANGE.as_bytes(),
    )?;
    assert_eq!(r.status, 200, "{}", r.body);
    let changes = http::get(
        api,
        "/api/v1/desired/changes",
        &[("authorization", &bearer)],
    )?;
    assert_eq!(changes.json().as_array().map(Vec::len), Some(1));
    let r = http::request(api, "POST", "/logout", &with_cookie, b"")?;
    assert!(
        r.header("set-cookie")
            .is_some_and(|c| c.contains("Max-Age=0")),
        "{:?}",
        r.headers
    );

    // The CLI sends the token given by flag or environment.
    let status = |extra: &[&str], env: Option<&str>| -> Result<(bool, String)> {
        let mut cmd = Command::new(bin("sx-aggregator"));
        cmd.arg("status")
            .arg("--api")
            .arg(api.to_string())
            .arg("--json")
            .args(extra)
            .env_remove("SX_OPERATOR_TOKEN");
        if let Some(t) = env {
            cmd.env("SX_OPERATOR_TOKEN", t);
        }
        let out = cmd.output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    };
    let (ok, stderr) = status(&[], None)?;
    assert!(!ok && stderr.contains("401"), "{stderr}");
    let (ok, stderr) = status(&["--token", TOKEN], None)?;
    assert!(ok, "{stderr}");
    let (ok, stderr) = status(&[], Some(TOKEN))?;
    assert!(ok, "{stderr}");
    drop(agg);
    Ok(())
}

/// Beyond loopback without a token, or with one too short to be a secret,
/// the aggregator does not start: a clear error, nothing listening.
#[test]
fn beyond_loopback_without_a_token_the_aggregator_refuses_to_start() -> Result<()> {
    let fleet = TestFleet::new()?;
    for (name, token, want) in [
        ("none", None, "no operator credential is configured"),
        ("short", Some("short"), "too short"),
    ] {
        let (mut child, _, api, data_dir) = serve_beyond_loopback(&fleet, name, token)?;
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                anyhow::bail!("{name}: the aggregator started beyond loopback");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let stderr = std::fs::read_to_string(data_dir.with_extension("log"))?;
        assert!(!status.success(), "{name}: {status}");
        assert!(stderr.contains(want), "{name}: {stderr}");
        assert!(stderr.contains("operator_token"), "{name}: {stderr}");
        assert!(
            std::net::TcpStream::connect(api).is_err(),
            "{name}: something listens on the API port"
        );
    }
    Ok(())
}
