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

use crate::handle::JournalHandle;
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

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    events: Vec<RecordItem>,
}

/// One recorded event, as answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    pub seq: u64,
    pub id: String,
    pub hash: sx_common::chain::Digest,
}

#[derive(Debug, Serialize, Deserialize)]
struct Answer {
    ok: bool,
    #[serde(default)]
    events: Vec<Recorded>,
    #[serde(default)]
    error: Option<String>,
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
pub async fn serve(path: &Path, journal: JournalHandle) -> Result<()> {
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
        tokio::spawn(async move {
            if let Err(e) = serve_client(stream, journal).await {
                tracing::debug!("local ingest client: {e:#}");
            }
        });
    }
}

async fn serve_client(stream: UnixStream, journal: JournalHandle) -> Result<()> {
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
        let answer = match handle_request(&line, &journal).await {
            Ok(events) => Answer {
                ok: true,
                events,
                error: None,
            },
            Err(e) => Answer {
                ok: false,
                events: Vec::new(),
                error: Some(format!("{e:#}")),
            },
        };
        let mut out = serde_json::to_vec(&answer)?;
        out.push(b'\n');
        write.write_all(&out).await?;
    }
}

async fn handle_request(line: &str, journal: &JournalHandle) -> Result<Vec<Recorded>> {
    if !line.ends_with('\n') {
        bail!("request longer than {MAX_REQUEST_BYTES} bytes or not newline-terminated");
    }
    let req: Request = serde_json::from_str(line).context("request is not valid JSON")?;
    let items = parse_items(req.events)?;
    let outcome = journal.append(items).await?;
    Ok(outcome
        .events
        .iter()
        .map(|e| Recorded {
            seq: e.event.seq,
            id: e.event.id(),
            hash: e.hash,
        })
        .collect())
}

/// Records through a running agent's socket. `Ok(None)` when no agent
/// listens there (the caller then appends directly).
pub fn record_via_socket(path: &Path, items: Vec<RecordItem>) -> Result<Option<Vec<Recorded>>> {
    use std::io::{BufRead, Write};
    let mut stream = match std::os::unix::net::UnixStream::connect(path) {
        Ok(s) => s,
        Err(_) => return Ok(None),
    };
    let mut line = serde_json::to_vec(&Request { events: items })?;
    line.push(b'\n');
    stream.write_all(&line).context("sending to the agent")?;
    let mut answer = String::new();
    std::io::BufReader::new(&stream)
        .read_line(&mut answer)
        .context("reading the agent's answer")?;
    let answer: Answer =
        serde_json::from_str(&answer).context("the agent answered something that is not JSON")?;
    if answer.ok {
        Ok(Some(answer.events))
    } else {
        bail!(answer.error.unwrap_or_else(|| "refused".into()))
    }
}
