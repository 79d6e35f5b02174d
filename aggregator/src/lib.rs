//! `sx-aggregator`: the regional aggregator of the Souverix twin service.
//!
//! Where to start: [`server::run`] wires the pieces: the QUIC ingest
//! ([`server`]) drives one [`sx_common::protocol::AggregatorSession`] per
//! connection and hands batches to the single writer ([`ingest`]), which
//! group-commits them into the [`store::EventStore`] and acknowledges only
//! after the commit; [`sync`] keeps each node's sync state. [`bundle`]
//! imports air-gapped bundles through that same writer. The HTTP API
//! ([`api`]) checks [`access`] on every route and serves [`metrics`].

pub mod access;
pub mod api;
pub mod bundle;
pub mod cli;
pub mod config;
pub mod ingest;
pub mod metrics;
pub mod projection;
pub mod query;
pub mod server;
pub mod store;
pub mod sync;
pub mod tls;
pub mod ui;
