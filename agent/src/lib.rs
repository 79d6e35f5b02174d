//! `sx-agent`: the Souverix node agent.
//!
//! The agent records the node's own twin events into a local durable
//! journal (hash-chained, checkpoint-signed with the node key) and replays
//! them to the aggregator of its region, or exports them in bundles.
//!
//! Where to start:
//! - [`journal`]: the [`Journal`](journal::Journal) trait, its redb
//!   implementation [`RedbJournal`](journal::RedbJournal), and the data
//!   directory with the local operations the CLI runs
//!   ([`journal::data_dir`]).
//! - [`bundle`]: air-gapped sync: bundle export and receipt import.
//!
//! The `sx-agent` binary (`src/main.rs`, `src/cli.rs`) only parses flags and
//! calls into this library.

pub mod bundle;
pub mod config;
pub mod daemon;
pub mod handle;
pub mod journal;
pub mod local;
pub mod tls;
pub mod uplink;
