//! `sx-common`: the shared language of the Souverix digital twin service.
//!
//! Everything here is pure: no sockets, no files, no clock reads. Agent and
//! aggregator are drivers around it.
//!
//! Where to start:
//! - [`model`]: the [`DigitalTwin`](model::DigitalTwin), field for field as
//!   the seed document names it.
//! - [`event`]: the event envelope and the typed payloads of the five event
//!   families plus inventory reports.
//! - [`fold`]: the twin as a pure fold of a node's events.
//! - [`chain`]: the SHA-256 hash chain, Ed25519 checkpoints and the one
//!   verifier every ingest path uses.
//! - [`codec`]: bounded, versioned decoding of untrusted bytes.
//! - [`ledger`]: the connectivity ledger.
//! - [`bundle`]: air-gapped bundle and receipt files (build, decode, verify).
//! - [`run`]: many entries (events) in one stored value, as both embedded
//!   stores keep their streams.

pub mod bundle;
mod bytes;
pub mod chain;
pub mod codec;
pub mod connectivity;
pub mod desired;
pub mod event;
pub mod fold;
pub mod ledger;
pub mod model;
#[cfg(feature = "quic")]
pub mod quic;
pub mod run;
#[cfg(feature = "testing")]
pub mod testing;
pub mod time;
pub mod version;

pub use chain::{ChainHead, Checkpoint, Digest, SealedEvent, VerifyError};
pub use event::{Event, EventPayload};
pub use model::DigitalTwin;
pub use time::{Span, Timestamp};
pub mod protocol;
pub mod wire;
