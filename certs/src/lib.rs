//! `sx-certs`: the Souverix fleet PKI, built on rcgen.
//!
//! One fleet CA (Ed25519, default CN `souverix-autorite-root-ca`) issues
//! every identity in the fleet:
//!
//! - **nodes**: Ed25519 client certificates naming the node in a URI SAN
//!   `urn:souverix:node:<node-id>` and binding component type, region and
//!   zone in the subject (`OU`, `ST`, `L`). The same key authenticates the
//!   node in mutual TLS and signs its event journal ([`load_signing_key`]).
//! - **aggregators**: Ed25519 server certificates with DNS/IP SANs and
//!   `urn:souverix:aggregator:<name>`.
//! - **operators**: Ed25519 client certificates for the HTTP API,
//!   `urn:souverix:operator:<name>`.
//!
//! Revocations are recorded in an index and published as a CRL signed by the
//! CA; verifiers (rustls `WebPkiClientVerifier` / `WebPkiServerVerifier`)
//! load it with [`load_crls_pem`].
//!
//! # Where to start
//!
//! - [`Pki`] is a PKI directory ([`layout`] documents the files).
//!   [`Pki::init`] creates the CA, [`Pki::open`] opens an existing one, then
//!   [`Pki::issue_node`], [`Pki::issue_aggregator`], [`Pki::issue_operator`],
//!   [`Pki::revoke`] and [`Pki::publish_crl`].
//! - [`inspect_der`] / [`inspect_pem`] read an identity ([`CertInfo`]) back
//!   out of a certificate: this is what the aggregator runs on a verified
//!   client certificate to learn which node is talking.
//! - [`load_certs_pem`], [`load_key_pem`], [`load_crls_pem`] feed rustls.
//!
//! ```no_run
//! use sx_certs::{CaOptions, NodeRequest, Pki};
//! # fn main() -> Result<(), sx_certs::PkiError> {
//! let pki = Pki::init("./pki", &CaOptions::default())?;
//! let issued = pki.issue_node(&NodeRequest::new(
//!     "sx-rempart-2026-prod-1-node-42",
//!     "souverix-rempart",
//!     "region-a",
//!     "edge-zone-a1",
//! ))?;
//! println!("{} {}", issued.cert_path.display(), issued.fingerprint);
//! # Ok(()) }
//! ```
//!
//! # Beyond the agreed API
//!
//! Additions the other crates may use: [`Pki::root`], [`Pki::ca_info`], [`Pki::ca_key_path`],
//! [`Pki::index_path`], [`Pki::leaf_dir`], [`Pki::find_serial`],
//! [`Pki::issue_operator_forced`]; [`inspect_file`] with [`Inspection`] and
//! [`CertStatus`] (what `sx-certs inspect` prints); [`CertInfo::aggregator_name`],
//! [`CertInfo::operator_name`], [`CertInfo::is_valid_at`]; [`fingerprint`];
//! [`validate_name`]; [`RevocationReason`]; the URI prefixes and defaults
//! below.
//!
//! # Concurrency
//!
//! Every operation that changes the index (issue, revoke, publish CRL, init)
//! holds an exclusive advisory lock on `ca/.lock`, so concurrent `sx-certs`
//! invocations on one directory serialise instead of losing index entries.

pub mod layout;

mod ca;
mod crl;
mod error;
mod identity;
mod index;
mod inspect;
mod issue;
mod load;

pub use ca::{CaOptions, DEFAULT_CA_DAYS, DEFAULT_CA_NAME};
pub use crl::{DEFAULT_CRL_DAYS, RevocationReason, RevokeTarget};
pub use error::PkiError;
pub use identity::{
    AGGREGATOR_UNIT, AGGREGATOR_URI_PREFIX, MAX_NAME_LEN, NODE_URI_PREFIX, OPERATOR_UNIT,
    OPERATOR_URI_PREFIX, ORGANIZATION, validate_name,
};
pub use index::{CertKind, IndexEntry};
pub use inspect::{
    CertInfo, CertStatus, Inspection, fingerprint, inspect_der, inspect_file, inspect_pem,
};
pub use issue::{
    AggregatorRequest, CLOCK_SKEW_ALLOWANCE, DEFAULT_LEAF_DAYS, IssuedCert, NodeRequest, Validity,
};
pub use layout::Pki;
pub use load::{load_certs_pem, load_crls_pem, load_key_pem, load_signing_key};
