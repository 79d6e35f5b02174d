//! `sx-aggregator`: the regional aggregator of the Souverix twin service.
//!
//! Where to start: [`server::run`] wires the pieces: the QUIC ingest
//! ([`server`]) drives one [`sx_common::protocol::AggregatorSession`] per
//! connection and hands batches to the single writer ([`ingest`]), which
//! group-commits them into the [`store::EventStore`] and acknowledges only
//! after the commit; [`sync`] keeps each node's sync state.

pub mod api;
pub mod cli;
pub mod config;
pub mod ingest;
pub mod server;
pub mod store;
pub mod sync;
pub mod tls;
