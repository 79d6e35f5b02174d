//! The HTTP JSON API (loopback by default; beyond it, every route needs the
//! operator credential: see [`crate::access`]). This module holds the
//! routes the sync service needs and `/metrics`; operators' routes build on
//! the same state.

use crate::server::Shared;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use sx_common::time::Timestamp;

/// Serves the API on `listener` until the task is aborted, and samples the
/// ingest rate `/metrics` reports meanwhile.
pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let sampler = crate::metrics::sample_ingest_rate(shared.clone());
    tokio::select! {
        served = axum::serve(listener, router(shared)) => {
            if let Err(e) = served {
                tracing::error!("API server stopped: {e}");
            }
        }
        () = sampler => {}
    }
}

/// Largest request body the API reads (413 beyond), unless a route says
/// otherwise.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Every route, behind the access rule of the configured `api_listen`. A
/// configuration [`run`](crate::server::run) would refuse (beyond loopback
/// without a token) gets a router that answers 401 to everything but
/// `/healthz`.
pub fn router(shared: Arc<Shared>) -> Router {
    let access = crate::access::ApiAccess::from_config(&shared.config).unwrap_or_else(|e| {
        tracing::error!("{e}: refusing every request");
        crate::access::ApiAccess::Closed
    });
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/api/v1/status", get(status))
        .route("/api/v1/nodes/{node}/events", get(node_events))
        .route("/api/v1/refusals", get(refusals))
        .route("/api/v1/forks", get(forks))
        .merge(crate::query::routes())
        .merge(crate::bundle::routes())
        .merge(crate::ui::routes())
        .merge(crate::access::routes())
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        // Request bodies (desired-state changes) are small; routes that take
        // more (bundle import) set their own, larger limit.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(access),
            crate::access::require_operator,
        ))
        .with_state(shared)
}

/// `GET /metrics`: the Prometheus text exposition ([`crate::metrics`]).
async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    match tokio::task::spawn_blocking(move || crate::metrics::render(&shared)).await {
        Ok(Ok(text)) => (
            [(
                axum::http::header::CONTENT_TYPE,
                crate::metrics::CONTENT_TYPE,
            )],
            text,
        )
            .into_response(),
        Ok(Err(e)) => ApiError::internal(e).into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

/// A JSON error body with a status code.
#[derive(Debug, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    status: StatusCode,
    error: String,
}

impl ApiError {
    pub fn new(status: StatusCode, error: impl Into<String>) -> Self {
        ApiError {
            status,
            error: error.into(),
        }
    }

    fn internal(e: impl std::fmt::Display) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self)).into_response()
    }
}

/// The aggregator's own status and every node's sync state.
#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub aggregator: String,
    pub region: String,
    pub started_at: Timestamp,
    pub now: Timestamp,
    pub events_stored: u64,
    pub commits: u64,
    /// Time the ingest writer spent verifying and committing, in ms.
    pub writer_busy_ms: u64,
    pub duplicates: u64,
    pub rejected_batches: u64,
    pub refusals: std::collections::BTreeMap<String, u64>,
    pub forks: usize,
    pub nodes: Vec<serde_json::Value>,
}

async fn status(State(shared): State<Arc<Shared>>) -> Result<Json<Status>, ApiError> {
    let records = shared.store.nodes().map_err(ApiError::internal)?;
    let now = Timestamp::now();
    let nodes = shared
        .sync
        .snapshot(&records, now)
        .into_iter()
        .map(|n| serde_json::to_value(n).unwrap_or_default())
        .collect();
    let stats = &shared.ingest.stats;
    Ok(Json(Status {
        aggregator: shared.config.aggregator.name.clone(),
        region: shared.config.aggregator.region.clone(),
        started_at: shared.started_at,
        now,
        events_stored: shared.store.event_count().map_err(ApiError::internal)?,
        commits: stats.commits.load(Ordering::Relaxed),
        writer_busy_ms: stats.busy_us.load(Ordering::Relaxed) / 1_000,
        duplicates: stats.duplicates.load(Ordering::Relaxed),
        rejected_batches: stats.rejected.load(Ordering::Relaxed),
        refusals: shared.refusals.counts(),
        forks: shared.store.forks().map_err(ApiError::internal)?.len(),
        nodes,
    }))
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    from: Option<u64>,
    limit: Option<usize>,
}

async fn node_events(
    State(shared): State<Arc<Shared>>,
    Path(node): Path<String>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    if shared
        .store
        .node(&node)
        .map_err(ApiError::internal)?
        .is_none()
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("unknown node {node:?}"),
        ));
    }
    let limit = q.limit.unwrap_or(1_000).min(10_000);
    let events = shared
        .store
        .read(&node, q.from.unwrap_or(1), limit)
        .map_err(ApiError::internal)?;
    Ok(Json(
        events
            .iter()
            .map(|e| {
                let mut j = e.event.to_json();
                j["hash"] = serde_json::json!(e.hash);
                j
            })
            .collect(),
    ))
}

async fn refusals(State(shared): State<Arc<Shared>>) -> Json<Vec<crate::server::Refusal>> {
    Json(shared.refusals.recent())
}

async fn forks(
    State(shared): State<Arc<Shared>>,
) -> Result<Json<Vec<crate::store::ForkEvidence>>, ApiError> {
    Ok(Json(shared.store.forks().map_err(ApiError::internal)?))
}
