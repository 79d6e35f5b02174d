//! Properties of the fold, the chain verifier and the payload encodings,
//! over honestly generated streams of arbitrary events.

use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use std::collections::{BTreeMap, BTreeSet};
use sx_common::chain::{ChainHead, Digest, SealedEvent, canonical_bytes, verify_batch};
use sx_common::codec::decode_exact;
use sx_common::event::{ConfigDrift, EVENT_TYPES};
use sx_common::fold::{apply, derive, fold_event, twin_from_events};
use sx_common::ledger::ConnectivityLedger;
use sx_common::model::{ConnectivityState, FieldDrift};
use sx_common::testing::{
    SignedBatch, arb_config_value, arb_event_stream, arb_payload, arb_signed_batches, seal_stream,
};
use sx_common::{DigitalTwin, Event, EventPayload, Span, Timestamp};

const NODE: &str = "sx-rempart-edge-zone-c-node-15";

fn key() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

fn plain(events: &[SealedEvent]) -> Vec<Event> {
    events.iter().map(|s| s.event.clone()).collect()
}

/// One change an attacker (or a bug) could make to an event in transit.
#[derive(Clone, Debug)]
enum Mutation {
    Payload(EventPayload),
    Seq(u64),
    NodeId(String),
    PrevHash(prop::sample::Index, u8),
    Timestamp(i64),
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        arb_payload().prop_map(Mutation::Payload),
        (1u64..).prop_map(Mutation::Seq),
        "[a-z0-9-]{1,4}".prop_map(Mutation::NodeId),
        (any::<prop::sample::Index>(), 1u8..).prop_map(|(i, m)| Mutation::PrevHash(i, m)),
        any::<i64>()
            .prop_filter("a change", |d| *d != 0)
            .prop_map(Mutation::Timestamp),
    ]
}

/// Applies `mutation` to `event`; `None` when it would change nothing.
fn mutate(event: &Event, mutation: &Mutation) -> Option<Event> {
    let mut e = event.clone();
    match mutation {
        Mutation::Payload(p) => e.payload = p.clone(),
        Mutation::Seq(delta) => e.seq = e.seq.wrapping_add(*delta),
        Mutation::NodeId(suffix) => e.node_id.push_str(suffix),
        Mutation::PrevHash(at, mask) => e.prev_hash.0[at.index(32)] ^= mask,
        Mutation::Timestamp(delta) => e.timestamp = Timestamp(e.timestamp.0.checked_add(*delta)?),
    }
    (e != *event).then_some(e)
}

/// Verifies `batches` in order against a store that starts empty and keeps
/// what each accepted batch adds; returns each batch's verdict.
fn verify_in_order(
    key: &SigningKey,
    batches: &[SignedBatch],
) -> Vec<Result<usize, sx_common::VerifyError>> {
    let mut head = ChainHead::default();
    let mut stored: Vec<Digest> = Vec::new();
    batches
        .iter()
        .map(|b| {
            let known = |seq: u64| {
                let i = usize::try_from(seq).ok()?.checked_sub(1)?;
                stored.get(i).copied()
            };
            let verdict = verify_batch(
                NODE,
                &key.verifying_key(),
                head,
                &b.events,
                &b.checkpoint,
                &known,
            )?;
            stored.extend(b.events[verdict.first_new..].iter().map(|e| e.hash));
            head = verdict.head;
            Ok(verdict.first_new)
        })
        .collect()
}

proptest! {
    #![proptest_config(config(300))]

    // --- (a) the fold --------------------------------------------------------

    #[test]
    fn the_fold_is_deterministic_and_chunk_independent(
        events in arb_event_stream(NODE, 0..40),
        cut in any::<prop::sample::Index>(),
    ) {
        let events = plain(&events);
        let whole = twin_from_events(&events);
        prop_assert_eq!(&twin_from_events(&events), &whole);

        let cut = cut.index(events.len() + 1);
        let mut twin = twin_from_events(&events[..cut]);
        // The twin is all the state the fold needs: a stored snapshot
        // (postcard, as a store keeps it) continues exactly like the original.
        let snapshot = postcard::to_allocvec(&twin).expect("encode twin");
        let mut resumed: DigitalTwin = decode_exact(&snapshot).expect("decode twin");
        prop_assert_eq!(&resumed, &twin);
        for e in &events[cut..] {
            apply(&mut twin, e);
            apply(&mut resumed, e);
        }
        prop_assert_eq!(&twin, &whole);
        prop_assert_eq!(&resumed, &whole);
    }

    /// Folding a run without the derived fields and deriving once at the
    /// end (what the agent's startup fold and the projections do) gives the
    /// twin of applying every event.
    #[test]
    fn deriving_once_after_a_run_equals_applying_each_event(
        events in arb_event_stream(NODE, 0..40),
    ) {
        let events = plain(&events);
        let mut twin = DigitalTwin::default();
        for e in &events {
            fold_event(&mut twin, e);
        }
        derive(&mut twin);
        prop_assert_eq!(twin, twin_from_events(&events));
    }

    #[test]
    fn the_twin_reads_back_from_its_json(events in arb_event_stream(NODE, 0..40)) {
        let twin = twin_from_events(&plain(&events));
        let text = serde_json::to_string(&twin).expect("to JSON");
        let back: DigitalTwin = serde_json::from_str(&text).expect("from JSON");
        prop_assert_eq!(back, twin);
    }

    #[test]
    fn the_twin_agrees_with_the_ledger_and_its_stream(events in arb_event_stream(NODE, 0..40)) {
        let events = plain(&events);
        let twin = twin_from_events(&events);
        let ledger = ConnectivityLedger::from_events(NODE, &events);

        let transitions = events
            .iter()
            .filter(|e| matches!(e.payload, EventPayload::ConnectivityTransition(_)))
            .count();
        prop_assert_eq!(ledger.history.len(), transitions);
        prop_assert_eq!(
            twin.connectivity.state,
            ledger.states().last().copied().unwrap_or(ConnectivityState::Disconnected)
        );
        if let Some(last) = events.last() {
            prop_assert_eq!(ledger.state_at(last.timestamp), ledger.states().last().copied());
            prop_assert_eq!(twin.last_seq, last.seq);
            prop_assert_eq!(twin.last_event_at, Some(last.timestamp));
            prop_assert_eq!(&twin.identity.immutable_id, NODE);
        }
        prop_assert_eq!(twin.first_event_at, events.first().map(|e| e.timestamp));
    }

    #[test]
    fn after_a_config_drift_event_the_twin_shows_exactly_its_fields(
        events in arb_event_stream(NODE, 0..20),
        found in prop::collection::btree_map(
            "[a-c]",
            (arb_config_value(), prop::option::of(arb_config_value())),
            0..3,
        ),
    ) {
        // A drift report lists fields whose actual value differs.
        let fields: Vec<FieldDrift> = found
            .into_iter()
            .filter(|(_, (want, got))| got.as_ref() != Some(want))
            .map(|(field, (desired, actual))| FieldDrift { field, desired, actual })
            .collect();
        let head = events.last().map_or(ChainHead::default(), |e| ChainHead {
            seq: e.event.seq,
            hash: e.hash,
        });
        let at = events.last().map_or(Timestamp::from_secs(1_772_150_400), |e| e.event.timestamp);
        let report = seal_stream(
            NODE,
            head,
            [(at, EventPayload::ConfigDrift(ConfigDrift { fields: fields.clone() }))],
        );
        let mut all = plain(&events);
        all.extend(plain(&report));
        prop_assert_eq!(twin_from_events(&all).state.drift, fields);
    }

    // --- (b) the verifier ----------------------------------------------------

    #[test]
    fn honest_batches_verify_and_replays_are_duplicates(
        batches in arb_signed_batches(NODE, &key(), 1..30),
    ) {
        let key = key();
        for verdict in verify_in_order(&key, &batches) {
            prop_assert_eq!(verdict, Ok(0));
        }
        // Offered again after everything is stored: all duplicates.
        let mut again = batches.clone();
        again.extend(batches.iter().cloned());
        let verdicts = verify_in_order(&key, &again);
        for (b, verdict) in batches.iter().zip(&verdicts[batches.len()..]) {
            prop_assert_eq!(verdict, &Ok(b.events.len()));
        }
    }

    #[test]
    fn any_single_event_mutation_is_refused(
        batches in arb_signed_batches(NODE, &key(), 1..20),
        which_batch in any::<prop::sample::Index>(),
        which_event in any::<prop::sample::Index>(),
        mutation in arb_mutation(),
        rechain in any::<bool>(),
    ) {
        let key = key();
        let b = which_batch.index(batches.len());
        let i = which_event.index(batches[b].events.len());
        let original = &batches[b].events[i].event;
        let changed = mutate(original, &mutation);
        prop_assume!(changed.is_some());
        let changed = changed.expect("assumed");

        // The receiver only ever sees bytes.
        let mut tampered = batches.clone();
        let events = &mut tampered[b].events;
        events[i] = SealedEvent::from_bytes(canonical_bytes(&changed)).expect("re-encoded");
        if rechain {
            // A thorough attacker re-links the rest of the batch (but cannot
            // sign a new checkpoint).
            for j in i + 1..events.len() {
                let mut next = events[j].event.clone();
                next.prev_hash = events[j - 1].hash;
                events[j] = SealedEvent::seal(next);
            }
        }

        let verdicts = verify_in_order(&key, &tampered);
        for (n, verdict) in verdicts[..b].iter().enumerate() {
            prop_assert_eq!(verdict, &Ok(0), "batch {} before the tampered one", n);
        }
        prop_assert!(
            verdicts[b].is_err(),
            "mutation {:?} of event {} in batch {} accepted",
            mutation,
            i,
            b
        );
    }

    // --- (c) payload encodings -----------------------------------------------

    #[test]
    fn every_payload_round_trips_through_postcard_and_json(payload in arb_payload()) {
        let name = payload.type_name();
        let index = EVENT_TYPES.iter().position(|t| *t == name).expect("listed type");

        let bytes = postcard::to_allocvec(&payload).expect("to postcard");
        // postcard's variant tag is the index in EVENT_TYPES (a varint).
        let (variant, _) = postcard::take_from_bytes::<u32>(&bytes).expect("variant tag");
        prop_assert_eq!(variant as usize, index);
        prop_assert_eq!(decode_exact::<EventPayload>(&bytes).expect("from postcard"), payload.clone());

        // The (type, JSON) form `sx-agent record` takes, also through text.
        let body = payload.payload_json();
        prop_assert_eq!(
            EventPayload::from_type_and_json(name, body.clone()).expect("from (type, json)"),
            payload.clone()
        );
        let text = serde_json::to_string(&body).expect("to text");
        let reread: serde_json::Value = serde_json::from_str(&text).expect("from text");
        prop_assert_eq!(
            EventPayload::from_type_and_json(name, reread).expect("from (type, text)"),
            payload.clone()
        );

        // The serde name is the type name.
        let tagged = serde_json::to_value(&payload).expect("to JSON");
        let keys: Vec<&String> = tagged.as_object().expect("externally tagged").keys().collect();
        prop_assert_eq!(keys, vec![name]);
    }

    #[test]
    fn events_round_trip_through_their_canonical_bytes(events in arb_event_stream(NODE, 1..8)) {
        for sealed in &events {
            prop_assert_eq!(&canonical_bytes(&sealed.event), &sealed.bytes);
            let back = SealedEvent::from_bytes(sealed.bytes.clone()).expect("decode");
            prop_assert_eq!(&back, sealed);
        }
    }

    // --- (d) time ------------------------------------------------------------

    #[test]
    fn spans_round_trip_through_json_and_text(secs in any::<u64>()) {
        let span = Span(secs);
        let json = serde_json::to_string(&span).expect("to JSON");
        prop_assert_eq!(serde_json::from_str::<Span>(&json).expect("from JSON"), span);
        prop_assert_eq!(Span::parse(&span.to_string()), Ok(span));
        let bytes = postcard::to_allocvec(&span).expect("to postcard");
        prop_assert_eq!(decode_exact::<Span>(&bytes), Ok(span));
    }

    #[test]
    fn timestamps_round_trip_through_json(micros in RFC3339_MIN_MICROS..=RFC3339_MAX_MICROS) {
        let at = Timestamp(micros);
        let json = serde_json::to_string(&at).expect("to JSON");
        prop_assert!(!json.contains('@'), "not RFC 3339: {}", json);
        prop_assert_eq!(serde_json::from_str::<Timestamp>(&json).expect("from JSON"), at);
        let bytes = postcard::to_allocvec(&at).expect("to postcard");
        prop_assert_eq!(decode_exact::<Timestamp>(&bytes), Ok(at));
    }
}

/// 0000-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z: what RFC 3339 can
/// write.
const RFC3339_MIN_MICROS: i64 = -62_167_219_200_000_000;
const RFC3339_MAX_MICROS: i64 = 253_402_300_799_999_999;

#[test]
fn the_rfc3339_range_edges_round_trip() {
    for (micros, text) in [
        (RFC3339_MIN_MICROS, "0000-01-01T00:00:00Z"),
        (RFC3339_MAX_MICROS, "9999-12-31T23:59:59.999999Z"),
        (0, "1970-01-01T00:00:00Z"),
        (-1, "1969-12-31T23:59:59.999999Z"),
    ] {
        let at = Timestamp(micros);
        assert_eq!(at.to_string(), text);
        assert_eq!(Timestamp::parse(text).expect("parse"), at);
    }
}

/// Proptest draws variants at random; this makes sure, deterministically,
/// that `arb_payload` reaches every one of them, so the properties above
/// cover all 31 variants and the `type_name` table cannot drift from the
/// serde names unnoticed.
#[test]
fn arb_payload_covers_every_event_type_under_its_serde_name() {
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let strategy = arb_payload();
    let mut seen: BTreeMap<&'static str, String> = BTreeMap::new();
    for _ in 0..3_000 {
        let payload = strategy.new_tree(&mut runner).expect("generate").current();
        let tagged = serde_json::to_value(&payload).expect("to JSON");
        let serde_name = tagged
            .as_object()
            .and_then(|m| m.keys().next().cloned())
            .expect("externally tagged");
        seen.insert(payload.type_name(), serde_name);
    }
    let listed: BTreeSet<&str> = EVENT_TYPES.iter().copied().collect();
    assert_eq!(EVENT_TYPES.len(), 31);
    assert_eq!(listed.len(), 31, "EVENT_TYPES has duplicates");
    assert_eq!(seen.keys().copied().collect::<BTreeSet<_>>(), listed);
    for (type_name, serde_name) in &seen {
        assert_eq!(type_name, serde_name);
    }
}
