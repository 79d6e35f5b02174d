//! Who may use the HTTP API.
//!
//! On loopback (the default `api_listen`, `127.0.0.1:7180`) whoever can
//! reach the port may read; only desired-state changes need the operator
//! token ([`crate::query::operator`]). When the API listens on any other
//! address, every route but `/healthz` (and the login page) needs the
//! operator credential, given as either
//!
//! - `Authorization: Bearer <operator_token>` (the CLI, scripts,
//!   Prometheus), or
//! - the session cookie the web UI's login form sets (`POST /login` with the
//!   token): browsers cannot put a header on the page load or on the
//!   `EventSource` of the live stream, but they send a same-site cookie on
//!   both. The cookie holds its expiry and a digest of the token and that
//!   expiry, not the token: it opens the API for [`SESSION_LIFETIME`] and
//!   is refused after, and it is `HttpOnly; SameSite=Strict`, so other
//!   sites can neither read it nor make the browser send it.
//!
//! The aggregator refuses to start beyond loopback without a token
//! ([`ApiAccess::from_config`]). Tokens are compared in constant time.

use crate::api::ApiError;
use crate::config::Config;
use crate::server::Shared;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use std::net::SocketAddr;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Shortest operator token accepted when the API listens beyond loopback.
pub const MIN_TOKEN_BYTES: usize = 16;

/// The UI session cookie.
pub const SESSION_COOKIE: &str = "sx_operator";

/// How long a UI session lasts after the login.
pub const SESSION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

/// Routes that answer without a credential: liveness and the login page.
const PUBLIC_PATHS: [&str; 2] = ["/healthz", "/login"];

/// What the API asks of a request.
#[derive(Clone, Debug)]
pub enum ApiAccess {
    /// Loopback: no credential needed to read.
    Loopback,
    /// Beyond loopback: the operator credential on every route.
    OperatorOnly(OperatorToken),
    /// Beyond loopback without a usable token (a configuration
    /// [`from_config`](Self::from_config) refuses): no credential exists,
    /// every route but the public ones answers 401.
    Closed,
}

/// The configured operator token.
#[derive(Clone)]
pub struct OperatorToken {
    token_digest: [u8; 32],
}

impl std::fmt::Debug for OperatorToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OperatorToken(..)")
    }
}

/// The API may not listen where it was asked to.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    #[error(
        "the API listens on {addr}, beyond loopback, but no operator credential is configured: \
         set aggregator.operator_token (at least {MIN_TOKEN_BYTES} bytes), or listen on 127.0.0.1"
    )]
    NoCredential { addr: SocketAddr },
    #[error(
        "the API listens on {addr}, beyond loopback, and aggregator.operator_token is too short \
         ({len} bytes; at least {MIN_TOKEN_BYTES})"
    )]
    WeakCredential { addr: SocketAddr, len: usize },
}

/// Whether `addr` is reachable only from this machine. The unspecified
/// address (`0.0.0.0`, `::`) listens everywhere: not loopback.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

impl ApiAccess {
    /// The access rule for the configured `api_listen`; an error when it is
    /// beyond loopback with no (or a too short) operator token.
    pub fn from_config(config: &Config) -> Result<ApiAccess, AccessError> {
        let addr = config.aggregator.api_listen;
        if is_loopback(&addr) {
            return Ok(ApiAccess::Loopback);
        }
        match config.aggregator.operator_token.as_deref() {
            None => Err(AccessError::NoCredential { addr }),
            Some(t) if t.trim().is_empty() => Err(AccessError::NoCredential { addr }),
            Some(t) if t.len() < MIN_TOKEN_BYTES => {
                Err(AccessError::WeakCredential { addr, len: t.len() })
            }
            Some(t) => Ok(ApiAccess::OperatorOnly(OperatorToken::new(t))),
        }
    }
}

impl OperatorToken {
    pub fn new(token: &str) -> Self {
        OperatorToken {
            token_digest: Sha256::digest(token.as_bytes()).into(),
        }
    }

    /// Whether `given` is the token, in time independent of both.
    pub fn matches(&self, given: &str) -> bool {
        let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        self.token_digest.ct_eq(&given).into()
    }

    /// The UI session cookie value for a session ending at `expires`
    /// (Unix seconds): `<expires>-<digest of the token and expires>`.
    fn session(&self, expires: u64) -> String {
        let mut h = Sha256::new();
        h.update(b"sx-aggregator ui session v2\0");
        h.update(self.token_digest);
        h.update(expires.to_be_bytes());
        format!("{expires}-{}", hex::encode(h.finalize()))
    }

    /// Whether `given` is a UI session cookie value for the token that has
    /// not expired at `now` (Unix seconds).
    fn session_matches(&self, given: &str, now: u64) -> bool {
        let Some(expires) = given
            .split_once('-')
            .and_then(|(e, _)| e.parse::<u64>().ok())
        else {
            return false;
        };
        // Compare digests so a wrong length costs the same as a wrong
        // value.
        let want: [u8; 32] = Sha256::digest(self.session(expires).as_bytes()).into();
        let got: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        bool::from(want.ct_eq(&got)) && now < expires
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether `given` equals `expected`, compared in constant time (over their
/// SHA-256 digests, so the length does not show either).
pub fn token_matches(expected: &str, given: &str) -> bool {
    OperatorToken::new(expected).matches(given)
}

/// The bearer token of an `Authorization` header, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
}

/// The value of the UI session cookie, if the request has one.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value)
}

/// How a request presented itself.
#[derive(Debug, PartialEq, Eq)]
enum Credential {
    Missing,
    Wrong,
    Valid,
}

fn credential(token: &OperatorToken, headers: &HeaderMap, now: u64) -> Credential {
    if let Some(given) = bearer(headers) {
        return if token.matches(given) {
            Credential::Valid
        } else {
            Credential::Wrong
        };
    }
    match session_cookie(headers) {
        Some(s) if token.session_matches(s, now) => Credential::Valid,
        Some(_) => Credential::Wrong,
        None => Credential::Missing,
    }
}

/// The middleware of every route: passes a request the access rule allows,
/// answers 401 (JSON, or the login page for the UI's `/`) otherwise.
pub async fn require_operator(
    State(access): State<Arc<ApiAccess>>,
    request: Request,
    next: Next,
) -> Response {
    let token = match access.as_ref() {
        ApiAccess::Loopback => return next.run(request).await,
        ApiAccess::OperatorOnly(token) => Some(token),
        ApiAccess::Closed => None,
    };
    let path = request.uri().path();
    if PUBLIC_PATHS.contains(&path) {
        return next.run(request).await;
    }
    let found = match token {
        Some(token) => credential(token, request.headers(), unix_now()),
        None if bearer(request.headers()).is_some() => Credential::Wrong,
        None => Credential::Missing,
    };
    if found == Credential::Valid {
        return next.run(request).await;
    }
    let challenge = match found {
        Credential::Wrong => r#"Bearer realm="sx-aggregator", error="invalid_token""#,
        _ => r#"Bearer realm="sx-aggregator""#,
    };
    let mut response = if path == "/" {
        (StatusCode::UNAUTHORIZED, login_page(false)).into_response()
    } else {
        let message = match found {
            Credential::Wrong => "invalid operator credential",
            _ => "this API needs the operator credential: Authorization: Bearer <operator_token>",
        };
        ApiError::new(StatusCode::UNAUTHORIZED, message).into_response()
    };
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    response
}

/// `/login` (the UI's form) and `/logout`.
pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
}

async fn login_form(State(shared): State<Arc<Shared>>) -> Response {
    match ApiAccess::from_config(&shared.config) {
        Ok(ApiAccess::OperatorOnly(_)) => login_page(false).into_response(),
        _ => Redirect::to("/").into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(shared): State<Arc<Shared>>, Form(form): Form<LoginForm>) -> Response {
    let Ok(ApiAccess::OperatorOnly(token)) = ApiAccess::from_config(&shared.config) else {
        return Redirect::to("/").into_response();
    };
    if !token.matches(&form.token) {
        return (StatusCode::UNAUTHORIZED, login_page(true)).into_response();
    }
    let lifetime = SESSION_LIFETIME.as_secs();
    let cookie = format!(
        "{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={lifetime}",
        token.session(unix_now() + lifetime)
    );
    let mut response = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

async fn logout() -> Response {
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("sx_operator=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}

/// The login page: one field, posted to `/login`; self-contained (the
/// UI's stylesheet is behind the credential too).
fn login_page(failed: bool) -> Html<String> {
    let error = if failed {
        r#"<p class="error">That is not the operator token.</p>"#
    } else {
        ""
    };
    Html(format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Souverix aggregator: sign in</title>
<style>body{{font-family:system-ui,sans-serif;max-width:28rem;margin:4rem auto;padding:0 1rem}}
input{{width:100%;padding:.5rem;margin:.5rem 0;box-sizing:border-box}}.error{{color:#b00020}}</style>
</head><body><h1>Souverix aggregator</h1>
<p>This API listens beyond loopback: sign in with the operator token
(<code>aggregator.operator_token</code>).</p>{error}
<form method="post" action="/login"><label for="token">Operator token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<button type="submit">Sign in</button></form></body></html>
"#
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(listen: &str, token: Option<&str>) -> Config {
        let mut c = Config::default();
        c.aggregator.api_listen = listen.parse().expect("address");
        c.aggregator.operator_token = token.map(str::to_owned);
        c
    }

    #[test]
    fn only_loopback_addresses_are_loopback() {
        for a in [
            "127.0.0.1:1",
            "127.3.2.1:1",
            "[::1]:1",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(is_loopback(&a.parse().expect("address")), "{a}");
        }
        for a in [
            "0.0.0.0:1",
            "[::]:1",
            "10.0.0.1:1",
            "[fe80::1]:1",
            "192.0.2.7:1",
        ] {
            assert!(!is_loopback(&a.parse().expect("address")), "{a}");
        }
    }

    #[test]
    fn beyond_loopback_needs_a_token_of_some_length() {
        let token = "0123456789abcdef-operator";
        assert!(matches!(
            ApiAccess::from_config(&config("127.0.0.1:7180", None)),
            Ok(ApiAccess::Loopback)
        ));
        assert!(matches!(
            ApiAccess::from_config(&config("127.0.0.1:7180", Some(token))),
            Ok(ApiAccess::Loopback)
        ));
        assert!(matches!(
            ApiAccess::from_config(&config("0.0.0.0:7180", None)),
            Err(AccessError::NoCredential { .. })
        ));
        assert!(matches!(
            ApiAccess::from_config(&config("[::]:7180", Some("  "))),
            Err(AccessError::NoCredential { .. })
        ));
        assert!(matches!(
            ApiAccess::from_config(&config("0.0.0.0:7180", Some("short"))),
            Err(AccessError::WeakCredential { len: 5, .. })
        ));
        let Ok(ApiAccess::OperatorOnly(t)) =
            ApiAccess::from_config(&config("0.0.0.0:7180", Some(token)))
        else {
            panic!("a long token beyond loopback is accepted");
        };
        assert!(t.matches(token));
        assert!(!t.matches("0123456789abcdef-operatos"));
        assert!(!t.matches(""));
        let message = AccessError::NoCredential {
            addr: "0.0.0.0:7180".parse().expect("address"),
        }
        .to_string();
        assert!(message.contains("aggregator.operator_token"), "{message}");
    }

    #[test]
    fn credentials_are_read_from_the_header_or_the_session_cookie() {
        const NOW: u64 = 1_800_000_000;
        let token = OperatorToken::new("0123456789abcdef-operator");
        let headers = |pairs: &[(header::HeaderName, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(k.clone(), HeaderValue::from_str(v).expect("header"));
            }
            h
        };
        let auth = header::AUTHORIZATION;
        let cookie = header::COOKIE;
        assert_eq!(credential(&token, &headers(&[]), NOW), Credential::Missing);
        assert_eq!(
            credential(
                &token,
                &headers(&[(auth.clone(), "Bearer 0123456789abcdef-operator")]),
                NOW
            ),
            Credential::Valid
        );
        assert_eq!(
            credential(
                &token,
                &headers(&[(auth.clone(), "bearer 0123456789abcdef-operator")]),
                NOW
            ),
            Credential::Valid
        );
        assert_eq!(
            credential(&token, &headers(&[(auth.clone(), "Bearer nope")]), NOW),
            Credential::Wrong
        );
        // The raw token is not a session cookie; the session digest is.
        assert_eq!(
            credential(
                &token,
                &headers(&[(cookie.clone(), "sx_operator=0123456789abcdef-operator")]),
                NOW
            ),
            Credential::Wrong
        );
        let expires = NOW + 60;
        let session = format!("theme=dark; {SESSION_COOKIE}={}", token.session(expires));
        let with_session = headers(&[(cookie.clone(), &session)]);
        assert_eq!(credential(&token, &with_session, NOW), Credential::Valid);
        // Expired, at its end and after.
        assert_eq!(
            credential(&token, &with_session, expires),
            Credential::Wrong
        );
        assert_eq!(
            credential(&token, &with_session, expires + 1),
            Credential::Wrong
        );
        // A later expiry written by hand does not match the digest.
        let forged =
            token
                .session(expires)
                .replacen(&expires.to_string(), &(expires + 3600).to_string(), 1);
        assert_eq!(
            credential(
                &token,
                &headers(&[(cookie.clone(), &format!("{SESSION_COOKIE}={forged}"))]),
                NOW
            ),
            Credential::Wrong
        );
        // Another token's session does not open this one.
        let other = OperatorToken::new("another-operator-token").session(expires);
        assert_eq!(
            credential(
                &token,
                &headers(&[(cookie.clone(), &format!("{SESSION_COOKIE}={other}"))]),
                NOW
            ),
            Credential::Wrong
        );
        assert_eq!(
            credential(&token, &headers(&[(cookie, "theme=dark")]), NOW),
            Credential::Missing
        );
    }
}
