//! Local ingest: other processes on the node record events through the
//! running agent over a Unix socket, since the journal file is held
//! exclusively by the agent. A request is answered only after the durable
//! append.
//!
//! Protocol: one JSON object per line each way.
//! Request: `{"events": [{"event_type": "lifecycle.update_initiated",
//! "payload": {...}, "timestamp": "2026-...Z" (optional)}]}`.
//! Answer: `{"ok": true, "events": [{"seq": 7, "id": "evt-...", "hash":
//! "sha256:..."}]}` or `{"ok": false, "error": "..."}`.
//!
//! A request may instead carry a bundle operation, `{"bundle": ...}` (a
//! [`LocalRequest`](crate::bundle::LocalRequest): export a bundle, apply a
//! receipt), answered with `{"ok": true, "bundle": ...}`, or a certificate
//! rotation, `{"rotate": {"cert": "/abs/new.pem", "key": "/abs/new.key"}}`
//! (a [`RotateRequest`]), answered with `{"ok": true, "rotated": ...}` (a
//! [`Rotated`]) once the rotation is durable and the uplink was told to
//! reconnect with the new certificate.
//!
//! Or a read of the journal, `{"query": "status"}`, `{"query": "verify"}`
//! or `{"query": {"read": {"from": 1, "max": 1024}}}` (a [`JournalQuery`]),
//! answered with `{"ok": true, "journal": ...}` (a [`JournalAnswer`]): how
//! `sx-agent status`, `verify` and `log` work while the agent runs.

use crate::bundle::{LocalAnswer, LocalRequest};
use crate::handle::JournalHandle;
use crate::journal::data_dir::Status;
use crate::journal::rotation::{RotateRequest, Rotated};
use crate::journal::{DataDir, VerifyReport};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::Path;
use sx_common::event::EventPayload;
use sx_common::time::Timestamp;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// The socket's file name inside the data directory.
pub const SOCKET_FILE: &str = "agent.sock";
/// Longest request line accepted.
const MAX_REQUEST_BYTES: usize = 4 << 20;

/// One event to record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecordItem {
    pub event_type: String,
    pub payload: serde_json::Value,
    #[serde(default)]
    pub timestamp: Option<Timestamp>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Request {
    #[serde(default)]
    events: Vec<RecordItem>,
    /// A bundle operation instead of events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bundle: Option<LocalRequest>,
    /// A certificate rotation instead of events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rotate: Option<RotateRequest>,
    /// A read of the journal instead of events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    query: Option<JournalQuery>,
}

/// Most events one [`JournalQuery::Read`] answers with.
pub const MAX_READ: usize = 1024;

/// A read of the journal the running agent holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JournalQuery {
    Status,
    /// The whole journal (recording waits while it runs).
    Verify,
    /// Up to `max` (at most [`MAX_READ`]) events from seq `from` (from the
    /// first held one when absent).
    Read {
        from: Option<u64>,
        max: usize,
    },
}

/// The answer to a [`JournalQuery`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JournalAnswer {
    Status(Status),
    /// The report, or why the journal does not verify.
    Verified(Result<VerifyReport, String>),
    /// Sealed events in their canonical bytes, hex.
    Events(Vec<String>),
}

/// One recorded event, as answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    pub seq: u64,
    pub id: String,
    pub hash: sx_common::chain::Digest,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Answer {
    ok: bool,
    #[serde(default)]
    events: Vec<Recorded>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bundle: Option<LocalAnswer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rotated: Option<Rotated>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    journal: Option<JournalAnswer>,
}

/// Turns request items into payloads; the first bad one fails the whole
/// request, so nothing is recorded.
pub fn parse_items(items: Vec<RecordItem>) -> Result<Vec<(Timestamp, EventPayload)>> {
    if items.is_empty() {
        bail!("no events in the request");
    }
    let now = Timestamp::now();
    items
        .into_iter()
        .map(|i| {
            let payload = EventPayload::from_type_and_json(&i.event_type, i.payload)?;
            Ok((i.timestamp.unwrap_or(now), payload))
        })
        .collect()
}

/// Serves the socket until the task is dropped.
pub async fn serve(path: &Path, journal: JournalHandle, dir: DataDir) -> Result<()> {
    if path.exists() {
        // A stale socket from a crashed agent: the journal lock proves no
        // other agent runs on this data directory.
        std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    }
    loop {
        let (stream, _) = listener.accept().await?;
        let journal = journal.clone();
        let dir = dir.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_client(stream, journal, dir).await {
                tracing::debug!("local ingest client: {e:#}");
            }
        });
    }
}

async fn serve_client(stream: UnixStream, journal: JournalHandle, dir: DataDir) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        let n = (&mut lines)
            .take(MAX_REQUEST_BYTES as u64)
            .read_line(&mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        let answer = match handle_request(&line, &journal, &dir).await {
            Ok(answer) => answer,
            Err(e) => Answer {
                ok: false,
                error: Some(format!("{e:#}")),
                ..Default::default()
            },
        };
        let mut out = serde_json::to_vec(&answer)?;
        out.push(b'\n');
        write.write_all(&out).await?;
    }
}

async fn handle_request(line: &str, journal: &JournalHandle, dir: &DataDir) -> Result<Answer> {
    if !line.ends_with('\n') {
        bail!("request longer than {MAX_REQUEST_BYTES} bytes or not newline-terminated");
    }
    let req: Request = serde_json::from_str(line).context("request is not valid JSON")?;
    let mut answer = Answer {
        ok: true,
        ..Default::default()
    };
    if let Some(query) = req.query {
        answer.journal = Some(answer_query(query, journal).await?);
        return Ok(answer);
    }
    if let Some(op) = req.bundle {
        answer.bundle = Some(crate::bundle::serve_local(op, dir.clone(), journal.clone()).await?);
        return Ok(answer);
    }
    if let Some(request) = req.rotate {
        let now = Timestamp::now();
        let prepared = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || {
                crate::journal::rotation::prepare(&dir, &request, now)
            })
            .await
            .context("rotation check task")??
        };
        let rotated = journal.rotate(dir.clone(), prepared, now).await?;
        tracing::info!(
            seq = rotated.seq,
            old = %rotated.old_fingerprint,
            new = %rotated.new_fingerprint,
            "node certificate rotated"
        );
        answer.rotated = Some(rotated);
        return Ok(answer);
    }
    let items = parse_items(req.events)?;
    let outcome = journal.append(items).await?;
    answer.events = outcome
        .events
        .iter()
        .map(|e| Recorded {
            seq: e.event.seq,
            id: e.event.id(),
            hash: e.hash,
        })
        .collect();
    Ok(answer)
}

async fn answer_query(query: JournalQuery, journal: &JournalHandle) -> Result<JournalAnswer> {
    Ok(match query {
        JournalQuery::Status => JournalAnswer::Status(journal.status().await?),
        JournalQuery::Verify => JournalAnswer::Verified(
            journal
                .verify()
                .await
                .map_err(|e| format!("{:#}", anyhow::Error::from(e))),
        ),
        JournalQuery::Read { from, max } => {
            let from = match from {
                Some(from) => from,
                None => journal.marks().await.first_held_seq,
            };
            let events = journal.read(from, max.min(MAX_READ)).await?;
            JournalAnswer::Events(events.iter().map(|e| hex::encode(&e.bytes)).collect())
        }
    })
}

/// Reads the journal through a running agent's socket. `Ok(None)` when no
/// agent listens there (the caller then opens the journal itself).
pub fn query_via_socket(path: &Path, query: JournalQuery) -> Result<Option<JournalAnswer>> {
    let request = Request {
        query: Some(query),
        ..Default::default()
    };
    match ask(path, &request)? {
        None => Ok(None),
        Some(Answer {
            journal: Some(answer),
            ..
        }) => Ok(Some(answer)),
        Some(_) => bail!("the running agent does not answer journal queries (an older agent?)"),
    }
}

/// Records through a running agent's socket. `Ok(None)` when no agent
/// listens there (the caller then appends directly).
pub fn record_via_socket(path: &Path, items: Vec<RecordItem>) -> Result<Option<Vec<Recorded>>> {
    let request = Request {
        events: items,
        ..Default::default()
    };
    Ok(ask(path, &request)?.map(|answer| answer.events))
}

/// Runs a bundle operation in a running agent. `Ok(None)` when no agent
/// listens there (the caller then works on the stopped agent's journal).
pub fn bundle_via_socket(path: &Path, op: LocalRequest) -> Result<Option<LocalAnswer>> {
    let request = Request {
        bundle: Some(op),
        ..Default::default()
    };
    match ask(path, &request)? {
        None => Ok(None),
        Some(Answer {
            bundle: Some(answer),
            ..
        }) => Ok(Some(answer)),
        Some(_) => bail!("the running agent does not know bundle operations (an older agent?)"),
    }
}

/// Rotates the certificate of a running agent (`request`'s paths must be
/// absolute: the agent may run in another directory). `Ok(None)` when no
/// agent listens there (the caller then rotates the stopped agent's data
/// directory).
pub fn rotate_via_socket(path: &Path, request: RotateRequest) -> Result<Option<Rotated>> {
    let request = Request {
        rotate: Some(request),
        ..Default::default()
    };
    match ask(path, &request)? {
        None => Ok(None),
        Some(Answer {
            rotated: Some(rotated),
            ..
        }) => Ok(Some(rotated)),
        Some(_) => bail!("the running agent does not know certificate rotation (an older agent?)"),
    }
}

/// Sends one request; `Ok(None)` when nothing listens on `path`.
fn ask(path: &Path, request: &Request) -> Result<Option<Answer>> {
    use std::io::{BufRead, Write};
    let mut stream = match std::os::unix::net::UnixStream::connect(path) {
        Ok(s) => s,
        Err(_) => return Ok(None),
    };
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line).context("sending to the agent")?;
    let mut answer = String::new();
    std::io::BufReader::new(&stream)
        .read_line(&mut answer)
        .context("reading the agent's answer")?;
    let answer: Answer =
        serde_json::from_str(&answer).context("the agent answered something that is not JSON")?;
    if answer.ok {
        Ok(Some(answer))
    } else {
        bail!(answer.error.unwrap_or_else(|| "refused".into()))
    }
}
