//! The trust / SBOM index (the seed's `TrustIndex`): per node the
//! certificate chain with its validity and rotation history, the SBOM
//! lineage, the attestation state, a trust score, and the alerts an
//! operator must see (forks, identity mismatches and other refusals, failed
//! attestations, certificates about to expire).
//!
//! Pure: the engine's node view, the store's record of the node, fork
//! evidence and recent refusals are passed in with `now`; nothing here
//! reads the store, the clock or the server.
//!
//! # The trust score
//!
//! A number in `[0, 1]`, the product of factors (so every finding lowers
//! it and none hides another):
//!
//! | finding | factor |
//! | --- | --- |
//! | fork evidence for the node | 0 (the stream is contested) |
//! | attestation verified, no older than `attestation_max_age` | 1.0 |
//! | attestation verified but older than `attestation_max_age` | 0.75 |
//! | never attested (unknown) | 0.5 |
//! | last attestation failed | 0.2 |
//! | a certificate of the chain has expired | × 0.25 |
//! | a certificate expires within `expiry_window` | × 0.8 |
//! | an identity refusal names the node | × 0.5 |
//! | the certificate seen at ingest is not the chain's leaf | × 0.8 |
//!
//! A verified, fresh attestation with a valid chain and nothing else scores
//! 1.0, as in the seed's example.

use super::NodeView;
use super::ProjectionEngine;
use super::drift::Severity;
use super::encoded::EncodedList;
use crate::server::Refusal;
use crate::store::{ForkEvidence, NodeRecord};
use serde::{Deserialize, Serialize};
use sx_common::event::{Event, EventPayload};
use sx_common::model::{AttestationState, SbomEntry};
use sx_common::time::{Span, Timestamp};

/// How many certificate rotations a node keeps in memory (older ones stay
/// in the event store).
pub const ROTATIONS_IN_MEMORY: usize = 16;

/// What the engine folds per node beyond the twin for the trust index:
/// certificate rotations and attestation outcomes over time (the twin only
/// holds the latest of each).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustHistory {
    /// The most recent rotations, oldest first (kept encoded: rare, and
    /// read only for the trust index).
    pub rotations: EncodedList<Rotation>,
    /// When an attestation last came out verified.
    pub last_verified: Option<Timestamp>,
    /// The last failed attestation, if any.
    pub last_failure: Option<AttestationFailure>,
    /// When the node last reported a validated trust chain.
    pub chain_validated_at: Option<Timestamp>,
}

/// One `trust.certificate_rotated` event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    pub at: Timestamp,
    pub seq: u64,
    pub old_fingerprint: String,
    pub new_fingerprint: String,
    pub new_valid_until: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationFailure {
    pub at: Timestamp,
    pub detail: Option<String>,
}

impl TrustHistory {
    /// Folds one event of the node in (events in seq order).
    pub fn apply(&mut self, event: &Event) {
        match &event.payload {
            EventPayload::CertificateRotated(r) => {
                let rotation = Rotation {
                    at: event.timestamp,
                    seq: event.seq,
                    old_fingerprint: r.old_fingerprint.clone(),
                    new_fingerprint: r.new_fingerprint.clone(),
                    new_valid_until: r.new_valid_until,
                };
                self.rotations.extend(vec![rotation], ROTATIONS_IN_MEMORY);
            }
            EventPayload::AttestationPerformed(a) => match a.result {
                AttestationState::Verified => self.last_verified = Some(event.timestamp),
                AttestationState::Failed => {
                    self.last_failure = Some(AttestationFailure {
                        at: event.timestamp,
                        detail: a.detail.clone(),
                    });
                }
                AttestationState::Unknown => {}
            },
            EventPayload::TrustChainValidated(_) => {
                self.chain_validated_at = Some(event.timestamp);
            }
            _ => {}
        }
    }
}

/// The thresholds of the index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrustPolicy {
    /// Certificates expiring within this window raise an alert.
    pub expiry_window: Span,
    /// A verified attestation older than this counts as stale.
    pub attestation_max_age: Span,
}

impl Default for TrustPolicy {
    fn default() -> Self {
        TrustPolicy {
            expiry_window: Span::from_secs(30 * 24 * 3_600),
            attestation_max_age: Span::from_secs(24 * 3_600),
        }
    }
}

/// Where a certificate stands at `now`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Validity {
    Valid,
    Expiring,
    Expired,
}

/// One certificate of the chain (leaf first), as the seed lists it, with
/// its validity at `now`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateStatus {
    pub issuer: String,
    pub subject: String,
    pub valid_until: Timestamp,
    /// `sha256:<hex>` fingerprint of the certificate.
    pub signature: String,
    pub validity: Validity,
    /// Time left until `valid_until` (zero once expired).
    pub expires_in: Span,
}

/// The seed's `attestation`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationView {
    pub last_verified: Option<Timestamp>,
    pub integrity_state: AttestationState,
    /// When the node last attested, whatever the outcome.
    pub last_attestation: Option<Timestamp>,
    pub last_failure: Option<AttestationFailure>,
}

/// What an alert is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlertKind {
    /// The store holds fork evidence for the node.
    Fork,
    /// A connection presented a certificate that does not match the stream
    /// it tried to write, or named no node.
    IdentityMismatch,
    /// Another refusal (bad signature, malformed frames, wrong version ...).
    Refused,
    AttestationFailed,
    CertificateExpired,
    CertificateExpiring,
    /// The certificate seen at ingest is not the leaf of the chain the
    /// node reported.
    CertificateMismatch,
}

/// One trust alert.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustAlert {
    /// The node concerned (`None`: a refused peer that named no node).
    pub node: Option<String>,
    pub kind: AlertKind,
    pub severity: Severity,
    pub at: Option<Timestamp>,
    pub detail: String,
}

/// The seed's `TrustIndex` of one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrustIndex {
    pub node: String,
    pub trust_domain: Option<String>,
    pub certificate_chain: Vec<CertificateStatus>,
    /// Fingerprint of the certificate the node last connected (or signed a
    /// bundle) with, as the store recorded it at ingest.
    pub ingest_fingerprint: Option<String>,
    pub rotations: Vec<Rotation>,
    pub sbom_lineage: Vec<SbomEntry>,
    pub attestation: AttestationView,
    pub trust_score: f64,
    pub alerts: Vec<TrustAlert>,
}

fn same_fingerprint(a: &str, b: &str) -> bool {
    let bare = |s: &str| s.trim().trim_start_matches("sha256:").to_ascii_lowercase();
    bare(a) == bare(b)
}

fn is_identity_refusal(reason: &str) -> bool {
    matches!(reason, "identity" | "identity-mismatch")
}

fn certificate_status(
    c: &sx_common::model::CertificateRef,
    policy: &TrustPolicy,
    now: Timestamp,
) -> CertificateStatus {
    let expires_in = c.valid_until.since(now);
    let validity = if c.valid_until <= now {
        Validity::Expired
    } else if expires_in <= policy.expiry_window {
        Validity::Expiring
    } else {
        Validity::Valid
    };
    CertificateStatus {
        issuer: c.issuer.clone(),
        subject: c.subject.clone(),
        valid_until: c.valid_until,
        signature: c.signature.clone(),
        validity,
        expires_in,
    }
}

/// The alerts about one node (fork, refusals naming it, attestation,
/// certificates), most severe first.
pub fn node_alerts(
    node: &str,
    view: Option<&NodeView>,
    record: Option<&NodeRecord>,
    forks: &[ForkEvidence],
    refusals: &[Refusal],
    policy: &TrustPolicy,
    now: Timestamp,
) -> Vec<TrustAlert> {
    let mut alerts = Vec::new();
    collect_alerts(
        node,
        view,
        record,
        forks.iter().filter(|f| f.node_id == node),
        refusals
            .iter()
            .filter(|r| r.node_id.as_deref() == Some(node)),
        policy,
        now,
        &mut alerts,
    );
    sort_alerts(&mut alerts);
    alerts
}

/// Appends the alerts of `node`, given the forks and refusals naming it.
#[allow(clippy::too_many_arguments)]
fn collect_alerts<'a>(
    node: &str,
    view: Option<&NodeView>,
    record: Option<&NodeRecord>,
    forks: impl Iterator<Item = &'a ForkEvidence>,
    refusals: impl Iterator<Item = &'a Refusal>,
    policy: &TrustPolicy,
    now: Timestamp,
    alerts: &mut Vec<TrustAlert>,
) {
    let alert = |kind, severity, at, detail: String| TrustAlert {
        node: Some(node.to_owned()),
        kind,
        severity,
        at,
        detail,
    };
    for f in forks {
        alerts.push(alert(
            AlertKind::Fork,
            Severity::Critical,
            Some(f.detected_at),
            format!(
                "fork at seq {}: stored {} but a validly signed batch offered {}",
                f.seq, f.stored, f.offered
            ),
        ));
    }
    for r in refusals {
        alerts.push(refusal_alert(r));
    }
    if let Some(view) = view {
        let trust = &view.twin.trust;
        if trust.attestation_state == AttestationState::Failed {
            let detail = view
                .trust
                .last_failure
                .as_ref()
                .and_then(|f| f.detail.clone())
                .unwrap_or_else(|| "attestation failed".to_owned());
            alerts.push(alert(
                AlertKind::AttestationFailed,
                Severity::High,
                trust.last_attestation,
                detail,
            ));
        }
        for c in &trust.certificate_chain {
            let s = certificate_status(c, policy, now);
            match s.validity {
                Validity::Expired => alerts.push(alert(
                    AlertKind::CertificateExpired,
                    Severity::Critical,
                    Some(c.valid_until),
                    format!("certificate {} issued by {} expired", c.subject, c.issuer),
                )),
                Validity::Expiring => alerts.push(alert(
                    AlertKind::CertificateExpiring,
                    Severity::Medium,
                    Some(c.valid_until),
                    format!(
                        "certificate {} issued by {} expires in {}",
                        c.subject, c.issuer, s.expires_in
                    ),
                )),
                Validity::Valid => {}
            }
        }
        if let (Some(leaf), Some(record)) = (trust.certificate_chain.first(), record)
            && !record.cert_fingerprint.is_empty()
            && !leaf.signature.is_empty()
            && !same_fingerprint(&leaf.signature, &record.cert_fingerprint)
        {
            alerts.push(alert(
                AlertKind::CertificateMismatch,
                Severity::Medium,
                record.last_sync,
                format!(
                    "ingest saw certificate {} but the reported chain's leaf is {}",
                    record.cert_fingerprint, leaf.signature
                ),
            ));
        }
    }
}

/// The alert a refusal raises (identity refusals weigh more).
fn refusal_alert(r: &Refusal) -> TrustAlert {
    let (kind, severity) = if is_identity_refusal(&r.reason) {
        (AlertKind::IdentityMismatch, Severity::High)
    } else {
        (AlertKind::Refused, Severity::Medium)
    };
    TrustAlert {
        node: r.node_id.clone(),
        kind,
        severity,
        at: Some(r.at),
        detail: format!("{} from {}: {}", r.reason, r.peer, r.detail),
    }
}

fn sort_alerts(alerts: &mut [TrustAlert]) {
    alerts.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then_with(|| b.at.cmp(&a.at))
            .then_with(|| a.node.cmp(&b.node))
            .then_with(|| a.kind.cmp(&b.kind))
    });
}

/// The trust score of a node (see the module doc for the rule).
pub fn trust_score(
    node: &str,
    view: Option<&NodeView>,
    record: Option<&NodeRecord>,
    forks: &[ForkEvidence],
    refusals: &[Refusal],
    policy: &TrustPolicy,
    now: Timestamp,
) -> f64 {
    if forks.iter().any(|f| f.node_id == node) {
        return 0.0;
    }
    let Some(view) = view else {
        return 0.0;
    };
    let trust = &view.twin.trust;
    let mut score: f64 = match trust.attestation_state {
        AttestationState::Verified => {
            let age = trust.last_attestation.map_or(Span::ZERO, |t| now.since(t));
            if age > policy.attestation_max_age {
                0.75
            } else {
                1.0
            }
        }
        AttestationState::Unknown => 0.5,
        AttestationState::Failed => 0.2,
    };
    let worst = trust
        .certificate_chain
        .iter()
        .map(|c| certificate_status(c, policy, now).validity)
        .fold(Validity::Valid, |w, v| match (w, v) {
            (Validity::Expired, _) | (_, Validity::Expired) => Validity::Expired,
            (Validity::Expiring, _) | (_, Validity::Expiring) => Validity::Expiring,
            _ => Validity::Valid,
        });
    score *= match worst {
        Validity::Expired => 0.25,
        Validity::Expiring => 0.8,
        Validity::Valid => 1.0,
    };
    if refusals
        .iter()
        .any(|r| r.node_id.as_deref() == Some(node) && is_identity_refusal(&r.reason))
    {
        score *= 0.5;
    }
    if let (Some(leaf), Some(record)) = (trust.certificate_chain.first(), record)
        && !record.cert_fingerprint.is_empty()
        && !leaf.signature.is_empty()
        && !same_fingerprint(&leaf.signature, &record.cert_fingerprint)
    {
        score *= 0.8;
    }
    score.clamp(0.0, 1.0)
}

/// The trust index of one node; `None` if the engine does not know it.
pub fn index(
    engine: &ProjectionEngine,
    node: &str,
    record: Option<&NodeRecord>,
    forks: &[ForkEvidence],
    refusals: &[Refusal],
    policy: &TrustPolicy,
    now: Timestamp,
) -> Option<TrustIndex> {
    let view = engine.node(node)?;
    let trust = &view.twin.trust;
    Some(TrustIndex {
        node: node.to_owned(),
        trust_domain: super::graph::trust_domain_of(&view.twin).map(str::to_owned),
        certificate_chain: trust
            .certificate_chain
            .iter()
            .map(|c| certificate_status(c, policy, now))
            .collect(),
        ingest_fingerprint: record.map(|r| r.cert_fingerprint.clone()),
        rotations: view.trust.rotations.entries(),
        sbom_lineage: trust.sbom_lineage.clone(),
        attestation: AttestationView {
            last_verified: view.trust.last_verified,
            integrity_state: trust.attestation_state,
            last_attestation: trust.last_attestation,
            last_failure: view.trust.last_failure.clone(),
        },
        trust_score: trust_score(node, Some(view), record, forks, refusals, policy, now),
        alerts: node_alerts(node, Some(view), record, forks, refusals, policy, now),
    })
}

/// Every trust alert of the fleet, most severe first: per node as
/// [`node_alerts`], plus forks and refusals of nodes the engine does not
/// hold and refusals that named no node.
pub fn fleet_alerts(
    engine: &ProjectionEngine,
    records: &[NodeRecord],
    forks: &[ForkEvidence],
    refusals: &[Refusal],
    policy: &TrustPolicy,
    now: Timestamp,
) -> Vec<TrustAlert> {
    use std::collections::{BTreeMap, BTreeSet, HashMap};
    let records: HashMap<&str, &NodeRecord> =
        records.iter().map(|r| (r.node_id.as_str(), r)).collect();
    let mut forks_of: BTreeMap<&str, Vec<&ForkEvidence>> = BTreeMap::new();
    for f in forks {
        forks_of.entry(f.node_id.as_str()).or_default().push(f);
    }
    let mut refusals_of: BTreeMap<&str, Vec<&Refusal>> = BTreeMap::new();
    let mut alerts = Vec::new();
    for r in refusals {
        match r.node_id.as_deref() {
            Some(n) => refusals_of.entry(n).or_default().push(r),
            None => alerts.push(refusal_alert(r)),
        }
    }
    let mut nodes: BTreeSet<&str> = engine.nodes().map(|(n, _)| n.as_str()).collect();
    nodes.extend(forks_of.keys());
    nodes.extend(refusals_of.keys());
    for n in nodes {
        collect_alerts(
            n,
            engine.node(n),
            records.get(n).copied(),
            forks_of.get(n).into_iter().flatten().copied(),
            refusals_of.get(n).into_iter().flatten().copied(),
            policy,
            now,
            &mut alerts,
        );
    }
    sort_alerts(&mut alerts);
    alerts
}
