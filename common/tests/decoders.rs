//! Every decoder of untrusted input, fed random, mutated, truncated,
//! extended and oversized bytes: it returns an error, never panics, and any
//! tampered value it does accept is caught by the chain.

use ed25519_dalek::SigningKey;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::ops::Range;
use sx_common::chain::{ChainHead, Checkpoint, SealedEvent, canonical_bytes, verify_batch};
use sx_common::codec::{
    DecodeError, MAX_EVENT_BYTES, WIRE_VERSION, decode_exact, decode_limited, decode_versioned,
    encode_versioned,
};
use sx_common::event::EVENT_TYPES;
use sx_common::testing::{
    arb_digest, arb_event_stream, arb_payload, arb_signed_batches, checkpoint,
};
use sx_common::wire::{
    AgentMessage, AggregatorMessage, FRAME_HEADER_BYTES, FrameDecoder, MAX_FRAME_BYTES,
    RefusalCode, decode_body, encode_frame,
};
use sx_common::{Event, EventPayload, Span, Timestamp};

const NODE: &str = "sx-rempart-2026-prod-1-node-42";
const CASES: u32 = 2_000;

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        ..ProptestConfig::default()
    }
}

/// One honestly sealed event (with arbitrary payload) at an arbitrary
/// position of a short stream.
fn arb_sealed_event() -> impl Strategy<Value = SealedEvent> {
    (arb_event_stream(NODE, 1..4), any::<prop::sample::Index>())
        .prop_map(|(events, i)| events[i.index(events.len())].clone())
}

/// A mutation of a byte string: one byte xor-ed with a non-zero mask.
fn flip(bytes: &[u8], at: prop::sample::Index, mask: u8) -> Vec<u8> {
    let mut out = bytes.to_vec();
    if !out.is_empty() {
        let i = at.index(out.len());
        out[i] ^= mask;
    }
    out
}

proptest! {
    #![proptest_config(config())]

    // --- random bytes ------------------------------------------------------

    #[test]
    fn random_bytes_are_refused_by_every_binary_decoder(bytes in vec(any::<u8>(), 0..300)) {
        prop_assert!(decode_exact::<Event>(&bytes).is_err());
        prop_assert!(SealedEvent::from_bytes(bytes.clone()).is_err());
        prop_assert!(decode_exact::<Checkpoint>(&bytes).is_err());
        prop_assert!(decode_versioned::<Event>(&bytes, MAX_EVENT_BYTES).is_err());
        prop_assert!(decode_versioned::<Checkpoint>(&bytes, MAX_EVENT_BYTES).is_err());
        // Payloads alone are small enough that random bytes may decode; they
        // must never panic.
        let _ = decode_exact::<EventPayload>(&bytes);
    }

    #[test]
    fn random_bytes_behind_our_version_are_refused(body in vec(any::<u8>(), 0..300)) {
        let mut bytes = WIRE_VERSION.to_be_bytes().to_vec();
        bytes.extend_from_slice(&body);
        prop_assert!(decode_versioned::<Event>(&bytes, MAX_EVENT_BYTES).is_err());
        prop_assert!(decode_versioned::<Checkpoint>(&bytes, MAX_EVENT_BYTES).is_err());
    }

    // --- one byte flipped ----------------------------------------------------

    #[test]
    fn a_flipped_byte_in_an_event_never_goes_unnoticed(
        sealed in arb_sealed_event(),
        at in any::<prop::sample::Index>(),
        mask in 1u8..,
    ) {
        let mutant = flip(&sealed.bytes, at, mask);
        match SealedEvent::from_bytes(mutant.clone()) {
            Err(_) => {}
            Ok(decoded) => {
                // It decoded: the chain sees another event.
                prop_assert_ne!(decoded.hash, sealed.hash);
                prop_assert_eq!(decoded.bytes, mutant);
            }
        }
        // The same through the versioned envelope.
        let mut enveloped = WIRE_VERSION.to_be_bytes().to_vec();
        enveloped.extend_from_slice(&flip(&sealed.bytes, at, mask));
        if let Ok(event) = decode_versioned::<Event>(&enveloped, MAX_EVENT_BYTES) {
            prop_assert_ne!(event, sealed.event);
        }
    }

    #[test]
    fn a_flipped_byte_anywhere_in_a_signed_batch_is_refused(
        events in arb_event_stream(NODE, 1..6),
        which in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        mask in 1u8..,
    ) {
        let key = key();
        let cp = checkpoint(&key, &events).expect("non-empty stream");
        let i = which.index(events.len());
        let mut batch = events.clone();
        match SealedEvent::from_bytes(flip(&events[i].bytes, at, mask)) {
            // Refused at the door.
            Err(_) => {}
            Ok(mutant) => {
                batch[i] = mutant;
                let verdict = verify_batch(
                    NODE,
                    &key.verifying_key(),
                    ChainHead::default(),
                    &batch,
                    &cp,
                    &|_| None,
                );
                prop_assert!(verdict.is_err(), "tampered event {} accepted", i);
            }
        }
    }

    #[test]
    fn a_flipped_byte_in_a_checkpoint_is_refused_or_fails_its_signature(
        events in arb_event_stream(NODE, 1..3),
        at in any::<prop::sample::Index>(),
        mask in 1u8..,
    ) {
        let key = key();
        let cp = checkpoint(&key, &events).expect("non-empty stream");
        let bytes = postcard::to_allocvec(&cp).expect("encode");
        if let Ok(decoded) = decode_exact::<Checkpoint>(&flip(&bytes, at, mask)) {
            prop_assert_ne!(&decoded, &cp);
            prop_assert!(decoded.verify_signature(&key.verifying_key()).is_err());
        }
    }

    // --- truncated, extended, oversized --------------------------------------

    #[test]
    fn every_truncation_of_an_event_is_truncated(sealed in arb_sealed_event()) {
        let bytes = &sealed.bytes;
        for len in 0..bytes.len() {
            prop_assert_eq!(
                decode_exact::<Event>(&bytes[..len]),
                Err(DecodeError::Truncated),
                "cut at {} of {}", len, bytes.len()
            );
            prop_assert_eq!(
                SealedEvent::from_bytes(bytes[..len].to_vec()),
                Err(DecodeError::Truncated)
            );
        }
        let versioned = encode_versioned(&sealed.event);
        for len in 0..versioned.len() {
            prop_assert_eq!(
                decode_versioned::<Event>(&versioned[..len], MAX_EVENT_BYTES),
                Err(DecodeError::Truncated),
                "cut at {} of {}", len, versioned.len()
            );
        }
        prop_assert_eq!(
            decode_versioned::<Event>(&versioned, MAX_EVENT_BYTES),
            Ok(sealed.event.clone())
        );
    }

    #[test]
    fn every_truncation_of_a_checkpoint_is_truncated(events in arb_event_stream(NODE, 1..3)) {
        let cp = checkpoint(&key(), &events).expect("non-empty stream");
        let bytes = postcard::to_allocvec(&cp).expect("encode");
        for len in 0..bytes.len() {
            prop_assert_eq!(
                decode_exact::<Checkpoint>(&bytes[..len]),
                Err(DecodeError::Truncated),
                "cut at {} of {}", len, bytes.len()
            );
        }
        prop_assert_eq!(decode_exact::<Checkpoint>(&bytes), Ok(cp));
    }

    #[test]
    fn extended_input_is_refused_as_trailing_bytes(
        sealed in arb_sealed_event(),
        extra in vec(any::<u8>(), 1..32),
    ) {
        let mut bytes = sealed.bytes.clone();
        bytes.extend_from_slice(&extra);
        prop_assert_eq!(
            decode_exact::<Event>(&bytes),
            Err(DecodeError::TrailingBytes(extra.len()))
        );
        prop_assert_eq!(
            SealedEvent::from_bytes(bytes),
            Err(DecodeError::TrailingBytes(extra.len()))
        );
        let mut versioned = encode_versioned(&sealed.event);
        versioned.extend_from_slice(&extra);
        prop_assert_eq!(
            decode_versioned::<Event>(&versioned, MAX_EVENT_BYTES),
            Err(DecodeError::TrailingBytes(extra.len()))
        );
    }

    #[test]
    fn the_size_limit_is_checked_before_anything_else(
        sealed in arb_sealed_event(),
        version in any::<u16>(),
    ) {
        let bytes = &sealed.bytes;
        let len = bytes.len();
        prop_assert_eq!(decode_limited::<Event>(bytes, len), Ok(sealed.event.clone()));
        prop_assert_eq!(
            decode_limited::<Event>(bytes, len - 1),
            Err(DecodeError::Oversized { size: len, limit: len - 1 })
        );
        // Size before version: even a foreign version is refused as oversized.
        let mut versioned = version.to_be_bytes().to_vec();
        versioned.extend_from_slice(bytes);
        prop_assert_eq!(
            decode_versioned::<Event>(&versioned, len + 1),
            Err(DecodeError::Oversized { size: len + 2, limit: len + 1 })
        );
        let expected = if version == WIRE_VERSION {
            Ok(sealed.event.clone())
        } else {
            Err(DecodeError::UnknownVersion { found: version, expected: WIRE_VERSION })
        };
        prop_assert_eq!(decode_versioned::<Event>(&versioned, len + 2), expected);
    }

    // --- frames ----------------------------------------------------------------

    #[test]
    fn random_bytes_never_panic_the_frame_decoders(
        bytes in vec(any::<u8>(), 0..400),
        cuts in vec(any::<prop::sample::Index>(), 0..6),
    ) {
        // However the bytes are cut, the decoder reads the same messages
        // and stops at the same error.
        prop_assert_eq!(
            feed::<AgentMessage>(&bytes, &cuts),
            feed::<AgentMessage>(&bytes, &[])
        );
        prop_assert_eq!(
            feed::<AggregatorMessage>(&bytes, &cuts),
            feed::<AggregatorMessage>(&bytes, &[])
        );
        let _ = decode_body::<AgentMessage>(&bytes);
        let _ = decode_body::<AggregatorMessage>(&bytes);
    }

    #[test]
    fn random_bytes_behind_a_valid_header_are_refused_or_decoded_whole(
        body in vec(any::<u8>(), 0..400),
    ) {
        let mut bytes = frame_header(body.len() + 2, WIRE_VERSION).to_vec();
        bytes.extend_from_slice(&body);
        for outcome in [
            feed::<AgentMessage>(&bytes, &[]).map(|m| m.len()),
            feed::<AggregatorMessage>(&bytes, &[]).map(|m| m.len()),
        ] {
            match outcome {
                // A complete frame is either one message or an error.
                Ok(count) => prop_assert_eq!(count, 1),
                Err(e) => prop_assert!(
                    matches!(e, DecodeError::Truncated | DecodeError::Malformed(_) | DecodeError::TrailingBytes(_)),
                    "{:?}", e
                ),
            }
        }
    }

    #[test]
    fn frames_in_random_pieces_decode_to_what_was_sent(
        agent in arb_agent_messages(&key()),
        aggregator in arb_aggregator_messages(),
        cuts in vec(any::<prop::sample::Index>(), 0..12),
    ) {
        prop_assert_eq!(feed(&frames(&agent), &cuts), Ok(agent));
        prop_assert_eq!(feed(&frames(&aggregator), &cuts), Ok(aggregator));
    }

    #[test]
    fn every_cut_frame_waits_for_the_rest(agent in arb_agent_messages(&key())) {
        let bytes = frames(&agent[..1]);
        for len in 0..bytes.len() {
            let mut decoder = FrameDecoder::default();
            decoder.push(&bytes[..len]);
            prop_assert_eq!(decoder.next_message::<AgentMessage>(), Ok(None), "cut at {}", len);
            prop_assert_eq!(decoder.pending(), len);
        }
    }

    #[test]
    fn a_flipped_byte_in_a_frame_never_reads_as_what_was_sent(
        agent in arb_agent_messages(&key()),
        at in any::<prop::sample::Index>(),
        mask in 1u8..,
    ) {
        let bytes = flip(&frames(&agent), at, mask);
        // An error, a frame still waiting for bytes, or other messages
        // (altered event bytes, which the chain then refuses).
        prop_assert_ne!(feed::<AgentMessage>(&bytes, &[]), Ok(agent));
    }

    #[test]
    fn the_frame_limit_and_version_are_checked_before_the_body(
        len in prop_oneof![0u32..64, any::<u32>()],
        version in prop_oneof![Just(WIRE_VERSION), any::<u16>()],
        limit in 2usize..1 << 20,
    ) {
        let len = len as usize;
        let mut decoder = FrameDecoder::new(limit);
        decoder.push(&frame_header(len, version));
        let expected = if len > limit {
            Err(DecodeError::Oversized { size: len, limit })
        } else if len < 2 {
            Err(DecodeError::Malformed(format!("frame length {len} below header")))
        } else if version != WIRE_VERSION {
            Err(DecodeError::UnknownVersion { found: version, expected: WIRE_VERSION })
        } else if len == 2 {
            // An empty body is complete, and no message.
            Err(DecodeError::Truncated)
        } else {
            Ok(None)
        };
        prop_assert_eq!(decoder.next_message::<AgentMessage>(), expected);
    }

    // --- JSON ----------------------------------------------------------------

    #[test]
    fn random_json_never_panics_the_payload_decoder(
        event_type in arb_event_type(),
        payload in arb_json(),
    ) {
        match EventPayload::from_type_and_json(&event_type, payload) {
            Ok(p) => {
                // Whatever is accepted has the type asked for and reads back.
                prop_assert_eq!(p.type_name(), event_type.as_str());
                let again = EventPayload::from_type_and_json(p.type_name(), p.payload_json());
                prop_assert_eq!(again.ok(), Some(p));
            }
            Err(sx_common::event::PayloadError::UnknownType(t)) => {
                prop_assert!(!EVENT_TYPES.contains(&t.as_str()));
            }
            Err(_) => prop_assert!(EVENT_TYPES.contains(&event_type.as_str())),
        }
    }

    #[test]
    fn mutated_payload_json_never_panics_the_payload_decoder(
        payload in arb_payload(),
        replacement in arb_json(),
        path in vec(any::<prop::sample::Index>(), 0..4),
    ) {
        let mut json = payload.payload_json();
        replace_somewhere(&mut json, &path, replacement);
        if let Ok(p) = EventPayload::from_type_and_json(payload.type_name(), json) {
            let again = EventPayload::from_type_and_json(p.type_name(), p.payload_json());
            prop_assert_eq!(again.ok(), Some(p));
        }
    }

    #[test]
    fn random_text_never_panics_the_json_decoders(text in "\\PC{0,64}") {
        let _ = serde_json::from_str::<Event>(&text);
        let _ = serde_json::from_str::<sx_common::DigitalTwin>(&text);
        let _ = serde_json::from_str::<Checkpoint>(&text);
        let _ = Timestamp::parse(&text);
        let _ = Span::parse(&text);
    }

    #[test]
    fn span_and_timestamp_parsers_survive_hostile_numbers(
        parts in vec(("[0-9]{0,25}", "[dhms ]?"), 0..6),
        raw in "[0-9T:+.Z-]{0,40}",
    ) {
        let text: String = parts.iter().map(|(n, u)| format!("{n}{u}")).collect();
        let _ = Span::parse(&text);
        let _ = Timestamp::parse(&raw);
        let _ = serde_json::from_value::<Span>(Value::String(text));
        let _ = serde_json::from_value::<Timestamp>(Value::String(raw));
    }
}

#[test]
fn input_over_one_mebibyte_is_oversized_whatever_it_holds() {
    let event = Event {
        node_id: NODE.into(),
        seq: 1,
        timestamp: Timestamp::from_secs(1_772_163_900),
        prev_hash: sx_common::Digest::GENESIS,
        payload: EventPayload::ConnectionLost(sx_common::event::Note::default()),
    };
    let valid = canonical_bytes(&event);
    // A valid event padded past the limit (otherwise: trailing bytes), and
    // pure garbage (otherwise: malformed).
    let mut padded = valid.clone();
    padded.resize(MAX_EVENT_BYTES + 1, 0);
    let garbage = vec![0xff; MAX_EVENT_BYTES + 1];
    for bytes in [&padded, &garbage] {
        let oversized = DecodeError::Oversized {
            size: MAX_EVENT_BYTES + 1,
            limit: MAX_EVENT_BYTES,
        };
        assert_eq!(decode_exact::<Event>(bytes).err(), Some(oversized.clone()));
        assert_eq!(
            SealedEvent::from_bytes(bytes.clone()).err(),
            Some(oversized.clone())
        );
        assert_eq!(
            decode_exact::<Checkpoint>(bytes).err(),
            Some(oversized.clone())
        );
        assert_eq!(
            decode_versioned::<Event>(bytes, MAX_EVENT_BYTES).err(),
            Some(oversized)
        );
    }
    // Exactly at the limit it is parsed (and the padding is trailing).
    padded.truncate(MAX_EVENT_BYTES);
    assert_eq!(
        decode_exact::<Event>(&padded),
        Err(DecodeError::TrailingBytes(MAX_EVENT_BYTES - valid.len()))
    );
}

/// Canonical bytes are what the chain hashes: an event that decodes from
/// bytes other than its canonical encoding would hash differently from the
/// same event sealed again, so a stored chain would no longer verify.
///
/// postcard accepts over-long varints (`0x85 0x00` for 5), so
/// `SealedEvent::from_bytes` must compare the bytes with `canonical_bytes`
/// of what it decoded.
#[test]
fn only_canonical_bytes_are_accepted() {
    let event = Event {
        node_id: NODE.into(),
        seq: 5,
        timestamp: Timestamp::from_secs(1_772_163_900),
        prev_hash: sx_common::Digest::GENESIS,
        payload: EventPayload::ConnectionLost(sx_common::event::Note::default()),
    };
    let canonical = canonical_bytes(&event);
    // node_id is a length-prefixed string: re-encode the length over-long.
    let len = u8::try_from(NODE.len()).expect("short id");
    assert_eq!(canonical[0], len);
    let mut over_long = vec![len | 0x80, 0x00];
    over_long.extend_from_slice(&canonical[1..]);
    assert!(
        SealedEvent::from_bytes(over_long).is_err(),
        "the same event under two encodings, with two hashes"
    );
}

/// The messages an agent sends in a session: a hello, batches of canonical
/// event bytes each closed by its checkpoint, a heartbeat.
fn arb_agent_messages(key: &SigningKey) -> impl Strategy<Value = Vec<AgentMessage>> {
    (
        arb_signed_batches(NODE, key, 1..6),
        any::<u64>(),
        any::<Option<u32>>(),
    )
        .prop_map(|(batches, ping, rtt_ms)| {
            let head = batches
                .last()
                .and_then(|b| b.events.last())
                .map(SealedEvent::head)
                .unwrap_or_default();
            let mut messages = vec![AgentMessage::Hello {
                node_id: NODE.to_owned(),
                agent_version: "0.1.0".to_owned(),
                head: ChainHead::default(),
            }];
            messages.extend(batches.into_iter().map(|b| AgentMessage::Batch {
                events: b.events.into_iter().map(|e| e.bytes).collect(),
                checkpoint: b.checkpoint,
            }));
            messages.push(AgentMessage::Heartbeat {
                ping,
                head,
                rtt_ms,
                sent_at: Timestamp::from_secs(1_772_163_900),
            });
            messages
        })
}

/// Any sequence of aggregator messages.
fn arb_aggregator_messages() -> impl Strategy<Value = Vec<AggregatorMessage>> {
    let head = || (any::<u64>(), arb_digest()).prop_map(|(seq, hash)| ChainHead { seq, hash });
    let message = prop_oneof![
        head().prop_map(|durable| AggregatorMessage::Resume {
            durable,
            desired: None
        }),
        head().prop_map(|head| AggregatorMessage::Ack { head }),
        head().prop_map(|durable| AggregatorMessage::Rewind { durable }),
        any::<u64>().prop_map(|ping| AggregatorMessage::Pong { ping }),
        "\\PC{0,40}".prop_map(|message| AggregatorMessage::Refuse {
            code: RefusalCode::Fork,
            message
        }),
    ];
    vec(message, 1..6)
}

/// A frame header: body length (version included) and version.
fn frame_header(len: usize, version: u16) -> [u8; FRAME_HEADER_BYTES] {
    let mut header = [0; FRAME_HEADER_BYTES];
    header[..4].copy_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    header[4..].copy_from_slice(&version.to_be_bytes());
    header
}

fn frames<T: serde::Serialize>(messages: &[T]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in messages {
        encode_frame(m, &mut out);
    }
    out
}

/// `0..len` cut at `cuts` into consecutive, non-empty pieces.
fn pieces(len: usize, cuts: &[prop::sample::Index]) -> Vec<Range<usize>> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c.index(len + 1)).collect();
    at.extend([0, len]);
    at.sort_unstable();
    at.dedup();
    at.windows(2).map(|w| w[0]..w[1]).collect()
}

/// Feeds `bytes` to a fresh decoder in the pieces `cuts` makes, taking each
/// message out as soon as it is complete: every message read, or the first
/// error (which is final). Messages read before an error are dropped.
fn feed<T: DeserializeOwned>(
    bytes: &[u8],
    cuts: &[prop::sample::Index],
) -> Result<Vec<T>, DecodeError> {
    let mut decoder = FrameDecoder::new(MAX_FRAME_BYTES);
    let mut messages = Vec::new();
    for piece in pieces(bytes.len(), cuts) {
        decoder.push(&bytes[piece]);
        while let Some(message) = decoder.next_message()? {
            messages.push(message);
        }
    }
    Ok(messages)
}

fn arb_event_type() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(EVENT_TYPES).prop_map(str::to_owned),
        "[a-z_.]{0,32}",
        "\\PC{0,16}",
    ]
}

/// Any JSON value, with keys and strings drawn partly from the names our
/// payloads use so that decoding gets past the first field.
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|x| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)),
        arb_json_text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map(arb_json_key(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_json_text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "live",
            "edge-cached",
            "active",
            "verified",
            "quic",
            "bundle",
            "in-service",
            "2026-02-27T03:45:00Z",
            "15m",
            "0m",
            "1h30m",
            "sha256:",
            "policy-v2.1",
            "souverix-rempart-1.4.7",
            "signaling",
        ])
        .prop_map(str::to_owned),
        "[0-9]{1,22}[dhms]",
        "[0-9T:+.Z-]{0,30}",
        "\\PC{0,12}",
    ]
}

fn arb_json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "from",
            "to",
            "reason",
            "latency_ms",
            "backlog",
            "sync_interval",
            "fields",
            "field",
            "desired",
            "actual",
            "component",
            "acked_seq",
            "via",
            "result",
            "window_id",
            "planned_end",
            "chain",
            "issuer",
            "valid_until",
            "values",
            "links",
            "peer",
            "link_type",
            "config",
            "software_version",
            "policy_version",
        ])
        .prop_map(str::to_owned),
        "[a-z_]{1,12}",
    ]
}

/// Replaces the value at a path chosen by `path` (indexes into arrays and
/// objects, stopping early at a leaf) with `replacement`.
fn replace_somewhere(json: &mut Value, path: &[prop::sample::Index], replacement: Value) {
    let Some((step, rest)) = path.split_first() else {
        *json = replacement;
        return;
    };
    let child = match json {
        Value::Array(items) if !items.is_empty() => {
            let i = step.index(items.len());
            items.get_mut(i)
        }
        Value::Object(map) if !map.is_empty() => {
            let i = step.index(map.len());
            map.values_mut().nth(i)
        }
        _ => None,
    };
    match child {
        Some(child) => replace_somewhere(child, rest, replacement),
        None => *json = replacement,
    }
}
