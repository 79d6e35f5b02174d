//! The operator API over the projections: fleet summary, twins (filtered,
//! paginated, as of a time), a node's events, ledger and drift, group views,
//! desired state (read; change with an operator credential), and a live
//! Server-Sent Events stream of projection changes.

use crate::api::ApiError;
use crate::projection::ProjectionEngine;
use crate::projection::drift::Severity;
use crate::projection::views::{self, GroupBy};
use crate::server::Shared;
use crate::store::read_chunks;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::ops::ControlFlow;
use std::sync::Arc;
use sx_common::desired::DesiredChangeKind;
use sx_common::ledger::ConnectivityLedger;
use sx_common::model::ConnectivityState;
use sx_common::time::Timestamp;

/// The routes of this module.
pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/v1/fleet", get(fleet))
        .route("/api/v1/twins", get(twins))
        .route("/api/v1/twins/{node}", get(twin))
        .route("/api/v1/twins/{node}/events", get(events))
        .route("/api/v1/twins/{node}/ledger", get(ledger))
        .route("/api/v1/twins/{node}/drift", get(node_drift))
        .route("/api/v1/drift", get(drift))
        .route("/api/v1/connectivity", get(connectivity))
        .route("/api/v1/lifecycle", get(lifecycle))
        .route("/api/v1/desired", get(desired).put(replace_desired))
        .route(
            "/api/v1/desired/changes",
            get(desired_changes).post(change_desired),
        )
        .route("/api/v1/stream", get(stream))
        .route("/api/v1/graph", get(graph))
        .route("/api/v1/graph/neighbours/{node}", get(neighbours))
        .route("/api/v1/graph/impact", get(impact))
        .route("/api/v1/twins/{node}/trust", get(trust))
        .route("/api/v1/trust/alerts", get(trust_alerts))
}

async fn graph(
    State(shared): State<Arc<Shared>>,
    Query(filter): Query<crate::projection::graph::GraphFilter>,
) -> Json<Value> {
    Json(json!(
        shared
            .projections
            .read(|e| crate::projection::graph::view(e, &filter))
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NeighbourQuery {
    #[serde(rename = "type")]
    link_type: Option<String>,
}

async fn neighbours(
    State(shared): State<Arc<Shared>>,
    Path(node): Path<String>,
    Query(q): Query<NeighbourQuery>,
) -> Result<Json<Value>, ApiError> {
    let link_type = q
        .link_type
        .as_deref()
        .map(|t| serde_json::from_value::<sx_common::model::LinkType>(json!(t)))
        .transpose()
        .map_err(|_| bad_request("type must be signaling, media, control or bypass"))?;
    shared
        .projections
        .read(|e| e.graph().neighbours(&node, link_type))
        .map(|n| Json(json!({ "node": node, "neighbours": n })))
        .ok_or_else(|| unknown_node(&node))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImpactQuery {
    node: Option<String>,
    zone: Option<String>,
    cluster: Option<String>,
}

async fn impact(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<ImpactQuery>,
) -> Result<Json<Value>, ApiError> {
    use crate::projection::graph::Outage;
    let outage = match (q.node, q.zone) {
        (Some(n), None) => Outage::Node(n),
        (None, Some(z)) => Outage::Zone(z),
        _ => return Err(bad_request("give exactly one of node= or zone=")),
    };
    shared.projections.read(|e| {
        let g = e.graph();
        if let Outage::Node(n) = &outage
            && !g.contains(n)
        {
            return Err(unknown_node(n));
        }
        match &q.cluster {
            Some(c) => g.impact(&outage, c).map(|i| Json(json!(i))).ok_or_else(|| {
                ApiError::new(StatusCode::NOT_FOUND, format!("unknown cluster {c:?}"))
            }),
            None => Ok(Json(json!({ "impacts": g.impact_all(&outage) }))),
        }
    })
}

async fn trust(
    State(shared): State<Arc<Shared>>,
    Path(node): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let record = shared.store.node(&node).map_err(internal)?;
    let forks = shared.store.forks().map_err(internal)?;
    let refusals = shared.refusals.recent();
    let policy = crate::projection::trust::TrustPolicy::default();
    let now = Timestamp::now();
    shared
        .projections
        .read(|e| {
            crate::projection::trust::index(
                e,
                &node,
                record.as_ref(),
                &forks,
                &refusals,
                &policy,
                now,
            )
        })
        .map(|t| Json(json!(t)))
        .ok_or_else(|| unknown_node(&node))
}

async fn trust_alerts(State(shared): State<Arc<Shared>>) -> Result<Json<Value>, ApiError> {
    let records = shared.store.nodes().map_err(internal)?;
    let forks = shared.store.forks().map_err(internal)?;
    let refusals = shared.refusals.recent();
    let policy = crate::projection::trust::TrustPolicy::default();
    let now = Timestamp::now();
    Ok(Json(json!(shared.projections.read(|e| {
        crate::projection::trust::fleet_alerts(e, &records, &forks, &refusals, &policy, now)
    }))))
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

fn bad_request(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, e.to_string())
}

fn parse_time(text: &str) -> Result<Timestamp, ApiError> {
    Timestamp::parse(text).map_err(|e| bad_request(format!("bad time {text:?}: {e}")))
}

/// The grouping named by `by` (default `zone`).
fn group_by(by: Option<&str>) -> Result<GroupBy, ApiError> {
    by.unwrap_or("zone").parse().map_err(bad_request)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ByQuery {
    by: Option<String>,
}

async fn fleet(State(shared): State<Arc<Shared>>) -> Result<Json<Value>, ApiError> {
    let now = Timestamp::now();
    let stale_after = shared.config.aggregator.stale_after;
    let (connectivity, drift, lifecycle, nodes) = shared.projections.read(|e| {
        (
            views::connectivity_observed_by(e, GroupBy::Global, stale_after, now),
            views::drift_by(e, GroupBy::Global),
            views::lifecycle_by(e, GroupBy::Global),
            e.len(),
        )
    });
    Ok(Json(json!({
        "region": shared.config.aggregator.region,
        "aggregator": shared.config.aggregator.name,
        "now": now,
        "nodes": nodes,
        "events_stored": shared.store.event_count().map_err(internal)?,
        "connectivity": connectivity.into_iter().next(),
        "drift": drift.into_iter().next(),
        "lifecycle": lifecycle.into_iter().next(),
        "refusals": shared.refusals.counts(),
        "forks": shared.store.forks().map_err(internal)?.len(),
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TwinFilter {
    region: Option<String>,
    zone: Option<String>,
    cluster: Option<String>,
    component: Option<String>,
    state: Option<String>,
    severity: Option<String>,
    offset: Option<usize>,
    limit: Option<usize>,
}

/// One row of the twin list.
#[derive(Debug, Serialize)]
struct TwinRow {
    node: String,
    component_type: String,
    region: String,
    zone: String,
    clusters: Vec<String>,
    connectivity: ConnectivityState,
    phase: sx_common::model::LifecyclePhase,
    actual_version: String,
    desired_version: String,
    severity: Severity,
    drift_score: u32,
    last_seq: u64,
    last_event_at: Option<Timestamp>,
}

async fn twins(
    State(shared): State<Arc<Shared>>,
    Query(f): Query<TwinFilter>,
) -> Result<Json<Value>, ApiError> {
    let state: Option<ConnectivityState> = f
        .state
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(bad_request)?;
    let severity: Option<Severity> = f
        .severity
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(bad_request)?;
    let limit = f.limit.unwrap_or(100);
    if limit == 0 || limit > 10_000 {
        return Err(bad_request("limit must be between 1 and 10000"));
    }
    let offset = f.offset.unwrap_or(0);
    let (total, rows) = shared.projections.read(|e| {
        let matching = e.nodes().filter(|(_, v)| {
            let t = &v.twin;
            f.region.as_ref().is_none_or(|r| *r == t.identity.region)
                && f.zone.as_ref().is_none_or(|z| *z == t.identity.zone)
                && f.component
                    .as_ref()
                    .is_none_or(|c| *c == t.identity.component_type)
                && f.cluster
                    .as_ref()
                    .is_none_or(|c| views::clusters_of(t).contains(c))
                && state.is_none_or(|s| s == t.connectivity.state)
                && severity.is_none_or(|s| s == v.summary.severity)
        });
        let mut total = 0usize;
        let mut rows = Vec::new();
        for (node, v) in matching {
            if total >= offset && rows.len() < limit {
                let t = &v.twin;
                rows.push(TwinRow {
                    node: node.clone(),
                    component_type: t.identity.component_type.clone(),
                    region: t.identity.region.clone(),
                    zone: t.identity.zone.clone(),
                    clusters: views::clusters_of(t),
                    connectivity: t.connectivity.state,
                    phase: t.lifecycle.phase,
                    actual_version: t.software.actual_version.clone(),
                    desired_version: t.software.desired_version.clone(),
                    severity: v.summary.severity,
                    drift_score: v.summary.drift_score,
                    last_seq: t.last_seq,
                    last_event_at: t.last_event_at,
                });
            }
            total += 1;
        }
        (total, rows)
    });
    Ok(Json(
        json!({ "total": total, "offset": offset, "limit": limit, "twins": rows }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AtQuery {
    at: Option<String>,
}

fn unknown_node(node: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("unknown node {node:?}"))
}

async fn twin(
    State(shared): State<Arc<Shared>>,
    Path(node): Path<String>,
    Query(q): Query<AtQuery>,
) -> Result<Json<Value>, ApiError> {
    if let Some(at) = q.at.as_deref() {
        let at = parse_time(at)?;
        let p = shared.projections.clone();
        let n = node.clone();
        let twin = tokio::task::spawn_blocking(move || p.twin_as_of(&n, at))
            .await
            .map_err(internal)?
            .map_err(internal)?
            .ok_or_else(|| unknown_node(&node))?;
        return Ok(Json(json!({ "as_of": at, "twin": twin })));
    }
    let (view, drift) = shared
        .projections
        .read(|e| e.node(&node).map(|v| (v.clone(), v.drift(e.desired()))))
        .ok_or_else(|| unknown_node(&node))?;
    let records = shared.store.node(&node).map_err(internal)?;
    let sync = records.map(|r| {
        shared
            .sync
            .snapshot(std::slice::from_ref(&r), Timestamp::now())
            .into_iter()
            .next()
    });
    Ok(Json(json!({
        "twin": view.twin,
        "drift": drift,
        "sync": sync.flatten(),
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    from: Option<u64>,
    since: Option<String>,
    limit: Option<usize>,
}

async fn events(
    State(shared): State<Arc<Shared>>,
    Path(node): Path<String>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<Value>, ApiError> {
    if shared.store.node(&node).map_err(internal)?.is_none() {
        return Err(unknown_node(&node));
    }
    let limit = q.limit.unwrap_or(1_000);
    if limit == 0 || limit > 10_000 {
        return Err(bad_request("limit must be between 1 and 10000"));
    }
    let since = q.since.as_deref().map(parse_time).transpose()?;
    let mut out = Vec::new();
    let from = q.from.unwrap_or(1);
    read_chunks(shared.store.as_ref(), &node, from, u64::MAX, |chunk| {
        for e in chunk {
            if since.is_none_or(|t| e.event.timestamp >= t) && out.len() < limit {
                let mut j = e.event.to_json();
                j["hash"] = json!(e.hash);
                out.push(j);
            }
        }
        if out.len() < limit {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(())
        }
    })
    .map_err(internal)?;
    Ok(Json(Value::Array(out)))
}

async fn ledger(
    State(shared): State<Arc<Shared>>,
    Path(node): Path<String>,
) -> Result<Json<ConnectivityLedger>, ApiError> {
    if shared.store.node(&node).map_err(internal)?.is_none() {
        return Err(unknown_node(&node));
    }
    let store = shared.store.clone();
    let n = node.clone();
    let ledger = tokio::task::spawn_blocking(move || {
        let mut ledger = ConnectivityLedger::new(&n);
        read_chunks(store.as_ref(), &n, 1, u64::MAX, |chunk| {
            for e in chunk {
                ledger.apply(&e.event);
            }
            ControlFlow::Continue(())
        })?;
        Ok::<_, crate::store::StoreError>(ledger)
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    Ok(Json(ledger))
}

async fn node_drift(
    State(shared): State<Arc<Shared>>,
    Path(node): Path<String>,
) -> Result<Json<Value>, ApiError> {
    shared
        .projections
        .read(|e| e.drift(&node).map(|d| json!(d)))
        .map(Json)
        .ok_or_else(|| unknown_node(&node))
}

async fn drift(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<ByQuery>,
) -> Result<Json<Value>, ApiError> {
    let by = group_by(q.by.as_deref())?;
    Ok(Json(json!(
        shared.projections.read(|e| views::drift_by(e, by))
    )))
}

async fn connectivity(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<ByQuery>,
) -> Result<Json<Value>, ApiError> {
    let by = group_by(q.by.as_deref())?;
    let stale_after = shared.config.aggregator.stale_after;
    let now = Timestamp::now();
    Ok(Json(json!(shared.projections.read(|e| {
        views::connectivity_observed_by(e, by, stale_after, now)
    }))))
}

async fn lifecycle(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<ByQuery>,
) -> Result<Json<Value>, ApiError> {
    let by = group_by(q.by.as_deref())?;
    Ok(Json(json!(
        shared.projections.read(|e| views::lifecycle_by(e, by))
    )))
}

async fn desired(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(
        shared
            .projections
            .read(|e: &ProjectionEngine| json!({ "seq": e.desired_seq(), "spec": e.desired() })),
    )
}

async fn desired_changes(State(shared): State<Arc<Shared>>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(
        shared.store.desired_changes(0).map_err(internal)?
    )))
}

/// The operator named by a valid bearer token, or a 401/403.
pub fn operator(shared: &Shared, headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(expected) = shared.config.aggregator.operator_token.as_deref() else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "changes need an operator credential, and none is configured (aggregator.operator_token)",
        ));
    };
    let given = crate::access::bearer(headers)
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "missing bearer token"))?;
    if !crate::access::token_matches(expected, given) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "invalid operator token",
        ));
    }
    Ok(headers
        .get("x-operator")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("operator")
        .to_owned())
}

async fn replace_desired(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(spec): Json<sx_common::desired::DesiredSpec>,
) -> Result<Json<Value>, ApiError> {
    apply_change(&shared, &headers, DesiredChangeKind::Replace { spec }).await
}

async fn change_desired(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(change): Json<DesiredChangeKind>,
) -> Result<Json<Value>, ApiError> {
    apply_change(&shared, &headers, change).await
}

async fn apply_change(
    shared: &Arc<Shared>,
    headers: &HeaderMap,
    change: DesiredChangeKind,
) -> Result<Json<Value>, ApiError> {
    let by = operator(shared, headers)?;
    let p = shared.projections.clone();
    let record = tokio::task::spawn_blocking(move || p.change_desired(&by, change))
        .await
        .map_err(internal)?
        .map_err(internal)?;
    Ok(Json(json!(record)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamQuery {
    node: Option<String>,
    /// Comma-separated event types; a change is sent if it has any.
    types: Option<String>,
}

async fn stream(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<StreamQuery>,
) -> Sse<impl futures_core::Stream<Item = Result<SseEvent, std::convert::Infallible>>> {
    let rx = shared.projections.subscribe();
    let types: Option<Vec<String>> = q.types.map(|t| t.split(',').map(str::to_owned).collect());
    let stream = futures_util::stream::unfold(rx, move |mut rx| {
        let node = q.node.clone();
        let types = types.clone();
        async move {
            loop {
                match rx.recv().await {
                    Ok(change) => {
                        if node.as_ref().is_some_and(|n| *n != change.node) {
                            continue;
                        }
                        if let Some(t) = &types
                            && !change.event_types.iter().any(|e| t.contains(e))
                        {
                            continue;
                        }
                        let data = serde_json::to_string(&*change).unwrap_or_default();
                        let ev = SseEvent::default().event("change").data(data);
                        return Some((Ok(ev), rx));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let ev = SseEvent::default().event("lagged").data(n.to_string());
                        return Some((Ok(ev), rx));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
