//! The twin as a pure fold of a node's events (the seed's `GetLatestState`).
//!
//! [`apply`] takes the twin and the next event of the node's stream and
//! returns nothing but the changed twin: no clock, no I/O. Applying the same
//! events in the same order always yields the same twin.

use crate::event::{Event, EventPayload};
use crate::model::{
    CertificateRef, DigitalTwin, FieldDrift, LifecyclePhase, MaintenanceWindow, UpdateProgress,
};
use crate::time::Span;
use crate::version::{distance, qualified};
use std::collections::BTreeMap;

/// The twin of a node from its whole stream (in seq order).
pub fn twin_from_events<'a>(events: impl IntoIterator<Item = &'a Event>) -> DigitalTwin {
    let mut twin = DigitalTwin::default();
    for e in events {
        apply(&mut twin, e);
    }
    twin
}

/// Folds one event into the twin.
pub fn apply(twin: &mut DigitalTwin, event: &Event) {
    fold_event(twin, event);
    derive(twin);
}

/// Folds one event into the twin without recomputing the derived fields
/// (drift score, config drift, sync debt, stale_by): for a run of events,
/// call [`derive`] once after the last. The derived fields are a function
/// of the others alone, and folding never reads them, so the run yields
/// the twin [`apply`] would, event after event.
pub fn fold_event(twin: &mut DigitalTwin, event: &Event) {
    use EventPayload as P;
    let at = event.timestamp;
    twin.identity.immutable_id.clone_from(&event.node_id);
    match &event.payload {
        P::ConnectivityTransition(t) => {
            let c = &mut twin.connectivity;
            c.state = t.to;
            if t.latency_ms.is_some() {
                c.latency_ms = t.latency_ms;
            }
            if let Some(backlog) = t.backlog {
                c.message_backlog = backlog;
            } else if t.to == crate::model::ConnectivityState::Live {
                c.message_backlog = 0;
            }
        }
        P::LifecycleTransition(t) => twin.lifecycle.phase = t.to,
        P::OperationalTransition(t) => twin.operational_state = t.to,
        P::VersionDrift(d) => {
            twin.software.desired_version = qualified(&d.component, &d.desired);
            twin.software.actual_version = qualified(&d.component, &d.actual);
        }
        P::ConfigDrift(d) => {
            // `fields` is everything found out of line: every other desired
            // field is in line (an empty list means all of them are).
            let state = &mut twin.state;
            for (field, want) in &state.desired {
                if !d.fields.iter().any(|f| &f.field == field) {
                    state.actual.insert(field.clone(), want.clone());
                }
            }
            for f in &d.fields {
                state.desired.insert(f.field.clone(), f.desired.clone());
                match &f.actual {
                    Some(actual) => state.actual.insert(f.field.clone(), actual.clone()),
                    // The node lacks the field.
                    None => state.actual.remove(&f.field),
                };
            }
        }
        P::PolicyDrift(d) => {
            twin.policy.desired_policy.clone_from(&d.desired_policy);
            twin.policy.actual_policy.clone_from(&d.actual_policy);
            twin.policy.compliance_score = d.compliance_score;
        }
        P::ProvisioningStarted(_) => twin.lifecycle.phase = LifecyclePhase::Provisioning,
        P::ProvisioningCompleted(_) => twin.lifecycle.phase = LifecyclePhase::Active,
        P::UpdateInitiated(u) => {
            twin.lifecycle.update = Some(UpdateProgress {
                from_version: u.from_version.clone(),
                to_version: u.to_version.clone(),
                initiated_at: at,
                completed_at: None,
                succeeded: None,
            });
        }
        P::UpdateCompleted(u) => {
            let progress = twin.lifecycle.update.get_or_insert_with(|| UpdateProgress {
                from_version: u.from_version.clone(),
                to_version: u.to_version.clone(),
                initiated_at: at,
                completed_at: None,
                succeeded: None,
            });
            progress.completed_at = Some(at);
            progress.succeeded = Some(u.succeeded);
            if u.succeeded {
                twin.software.actual_version =
                    qualified(&twin.identity.component_type, &u.to_version);
            }
        }
        P::MaintenanceStarted(m) => {
            twin.lifecycle.phase = LifecyclePhase::Maintenance;
            twin.lifecycle.maintenance = Some(MaintenanceWindow {
                window_id: m.window_id.clone(),
                reason: m.reason.clone().unwrap_or_default(),
                started_at: at,
                planned_end: m.planned_end,
            });
        }
        P::MaintenanceCompleted(_) => {
            twin.lifecycle.phase = LifecyclePhase::Active;
            twin.lifecycle.maintenance = None;
        }
        P::DecommissioningStarted(_) => twin.lifecycle.phase = LifecyclePhase::Decommissioning,
        P::DecommissioningCompleted(_) => twin.lifecycle.phase = LifecyclePhase::Decommissioned,
        P::ConnectionEstablished(c) => {
            if c.latency_ms.is_some() {
                twin.connectivity.latency_ms = c.latency_ms;
            }
        }
        P::ConnectionLost(_) => {}
        P::SyncCompleted(s) => {
            twin.connectivity.last_sync = Some(at);
            twin.connectivity.message_backlog =
                event.seq.saturating_sub(1).saturating_sub(s.acked_seq);
        }
        P::ReplayStarted(r) => twin.connectivity.message_backlog = r.backlog,
        P::ReplayCompleted(_) => twin.connectivity.message_backlog = 0,
        P::AttestationPerformed(a) => {
            twin.trust.attestation_state = a.result;
            twin.trust.last_attestation = Some(at);
        }
        P::CertificateRotated(r) => {
            let new = CertificateRef {
                issuer: twin
                    .trust
                    .certificate_chain
                    .first()
                    .map(|c| c.issuer.clone())
                    .unwrap_or_default(),
                subject: event.node_id.clone(),
                valid_until: r.new_valid_until,
                signature: r.new_fingerprint.clone(),
            };
            match twin.trust.certificate_chain.first_mut() {
                Some(leaf) => *leaf = new,
                None => twin.trust.certificate_chain.push(new),
            }
        }
        P::SbomUpdated(s) => {
            if twin.trust.sbom_lineage.last() != Some(s) {
                twin.trust.sbom_lineage.push(s.clone());
            }
            if s.component == twin.identity.component_type {
                twin.software.sbom_hash.clone_from(&s.sbom_hash);
                twin.software.image_provenance.clone_from(&s.provenance);
            }
        }
        P::TrustChainValidated(v) => {
            twin.trust.certificate_chain.clone_from(&v.chain);
            twin.identity.trust_chain = v.chain.iter().map(|c| c.issuer.clone()).collect();
        }
        P::IdentityReported(i) => {
            twin.identity.component_type.clone_from(&i.component_type);
            twin.identity.region.clone_from(&i.region);
            twin.identity.zone.clone_from(&i.zone);
            if !i.trust_chain.is_empty() {
                twin.identity.trust_chain.clone_from(&i.trust_chain);
            }
        }
        P::HardwareReported(h) => twin.hardware = h.clone(),
        P::SoftwareReported(s) => {
            twin.software.actual_version = qualified(&s.component, &s.version);
            twin.software.sbom_hash.clone_from(&s.sbom_hash);
            twin.software
                .image_provenance
                .clone_from(&s.image_provenance);
        }
        P::ConfigReported(c) => {
            twin.state.actual.set_all(&c.values);
            twin.state.last_applied = Some(at);
        }
        P::PolicyApplied(p) => {
            twin.policy.actual_policy.clone_from(&p.policy_version);
            twin.policy.compliance_score = p.compliance_score;
        }
        P::TopologyReported(t) => {
            twin.topology.links.clone_from(&t.links);
            twin.topology.clusters.clone_from(&t.clusters);
        }
        P::SupplyChainReported(s) => twin.supply_chain = s.clone(),
        P::DesiredStateLearned(d) => {
            if let Some(v) = &d.software_version {
                twin.software.desired_version = qualified(&twin.identity.component_type, v);
            }
            twin.state.desired.clone_from(&d.config);
            if let Some(p) = &d.policy_version {
                twin.policy.desired_policy.clone_from(p);
            }
        }
    }
    twin.last_seq = event.seq;
    if twin.first_event_at.is_none() {
        twin.first_event_at = Some(at);
    }
    twin.last_event_at = Some(at);
}

/// Recomputes the fields that follow from the others: drift score, config
/// drift, sync debt and stale_by, all relative to the latest event.
pub fn derive(twin: &mut DigitalTwin) {
    let sw = &mut twin.software;
    sw.drift_score = if sw.desired_version.is_empty() || sw.actual_version.is_empty() {
        0
    } else {
        distance(&sw.desired_version, &sw.actual_version).score()
    };
    twin.state.drift = config_drift(&twin.state.desired, &twin.state.actual);

    let latest = twin.last_event_at.unwrap_or_default();
    let synced = twin.connectivity.last_sync.or(twin.first_event_at);
    twin.connectivity.sync_debt = synced.map_or(Span::ZERO, |s| latest.since(s));

    let policy_out = !twin.policy.desired_policy.is_empty()
        && twin.policy.desired_policy != twin.policy.actual_policy;
    twin.policy.stale_by = if twin.state.drift.is_empty() && !policy_out {
        Span::ZERO
    } else {
        twin.state
            .last_applied
            .or(twin.first_event_at)
            .map_or(Span::ZERO, |applied| latest.since(applied))
    };
}

/// Every desired field whose actual value differs (or is missing), sorted by
/// field name.
pub fn config_drift(
    desired: &BTreeMap<String, crate::model::ConfigValue>,
    actual: &crate::model::ConfigMap,
) -> Vec<FieldDrift> {
    desired
        .iter()
        .filter(|(field, want)| actual.get(field) != Some(*want))
        .map(|(field, want)| FieldDrift {
            field: field.clone(),
            desired: want.clone(),
            actual: actual.get(field).cloned(),
        })
        .collect()
}
