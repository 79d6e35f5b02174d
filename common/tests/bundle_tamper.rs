//! Bundle and receipt files as untrusted input: every single-bit flip and
//! every truncation of a small bundle is refused; so is every way of
//! removing, duplicating, reordering or inserting events, even when the
//! bundle is validly re-signed; each cause has its own error.

use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use sx_common::bundle::{
    BundleError, BundleHeader, BundleWriter, Compression, decode_bundle, decode_receipt,
};
use sx_common::chain::{ChainHead, Checkpoint, SealedEvent};
use sx_common::event::{EventPayload, Note, ReplayStarted};
use sx_common::testing::seal_stream;
use sx_common::{Event, Timestamp};

const NODE: &str = "sx-rempart-2026-prod-1-node-42";

fn node_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

fn other_key() -> SigningKey {
    SigningKey::from_bytes(&[8; 32])
}

fn events(count: u64) -> Vec<SealedEvent> {
    seal_stream(
        NODE,
        ChainHead::default(),
        (0..count).map(|i| {
            (
                Timestamp::from_secs(1_772_000_000 + i as i64),
                EventPayload::ReplayStarted(ReplayStarted { backlog: i }),
            )
        }),
    )
}

fn header() -> BundleHeader {
    BundleHeader {
        counter: 3,
        created_at: Timestamp::from_secs(1_772_000_000),
        expires_at: Timestamp::from_secs(1_772_000_000 + 86_400),
        region: "region-a".into(),
        aggregator: Some("agg-1".into()),
    }
}

/// Stand-ins for the DER certificates (this crate does not parse them).
fn certificates() -> Vec<Vec<u8>> {
    vec![b"node-cert".to_vec(), b"ca-cert".to_vec()]
}

/// A bundle of `events` as given (in that order), a checkpoint signed with
/// `key` after every `every` events and after the last, manifest signed
/// with `key`.
fn bundle_with(
    key: &SigningKey,
    events: &[SealedEvent],
    every: usize,
    compression: Compression,
) -> Vec<u8> {
    let mut writer = BundleWriter::new(NODE);
    for chunk in events.chunks(every) {
        for e in chunk {
            writer.push_event(e);
        }
        let head = writer.head();
        writer.push_checkpoint(Checkpoint::sign(key, NODE, head.seq, head.hash));
    }
    writer.finish(key, &certificates(), header(), compression)
}

fn small_bundle(compression: Compression) -> Vec<u8> {
    bundle_with(&node_key(), &events(5), 3, compression)
}

#[test]
fn the_small_bundles_verify() {
    for compression in [Compression::None, Compression::Zstd] {
        let bundle = decode_bundle(&small_bundle(compression)).expect("verifies");
        assert_eq!(bundle.events().len(), 5);
        assert_eq!(bundle.checkpoints().len(), 2);
        assert_eq!(bundle.manifest().counter, 3);
        assert_eq!(bundle.manifest().compression, compression);
    }
}

#[test]
fn every_single_bit_flip_is_refused() {
    for compression in [Compression::None, Compression::Zstd] {
        let file = small_bundle(compression);
        let mut causes = std::collections::BTreeSet::new();
        for byte in 0..file.len() {
            for bit in 0..8 {
                let mut flipped = file.clone();
                flipped[byte] ^= 1 << bit;
                match decode_bundle(&flipped) {
                    Ok(_) => panic!("{compression:?}: flip of bit {bit} of byte {byte} accepted"),
                    Err(e) => causes.insert(e.code()),
                };
            }
        }
        // The flips hit every layer: magic, version, envelope, signature,
        // signed manifest, certificates, section.
        for cause in [
            "not-a-bundle",
            "wrong-version",
            "bad-signature",
            "certificates-altered",
            "section-altered",
        ] {
            assert!(causes.contains(cause), "{compression:?}: {causes:?}");
        }
    }
}

#[test]
fn every_truncation_and_extension_is_refused() {
    let file = small_bundle(Compression::Zstd);
    for len in 0..file.len() {
        let err = decode_bundle(&file[..len]).expect_err("truncated");
        assert!(
            matches!(
                err,
                BundleError::Decode(_) | BundleError::NotABundle | BundleError::NonCanonical
            ),
            "truncated to {len}: {err}"
        );
    }
    let mut longer = file.clone();
    longer.push(0);
    assert!(decode_bundle(&longer).is_err());
    assert_eq!(
        decode_bundle(b"SXBUN").err(),
        Some(BundleError::Decode(
            sx_common::codec::DecodeError::Truncated
        ))
    );
    assert_eq!(
        decode_bundle(b"not a bundle at all").err(),
        Some(BundleError::NotABundle)
    );
}

/// Removing, duplicating, reordering or inserting events in a bundle the
/// node (or an attacker with its key) re-signs: each has its own cause.
#[test]
fn validly_signed_malformed_bundles_are_refused_by_cause() {
    let key = node_key();
    let good = events(6);
    let decode = |evs: &[SealedEvent]| {
        decode_bundle(&bundle_with(&key, evs, 100, Compression::Zstd)).expect_err("refused")
    };

    // A hole: seq 3 removed.
    let mut hole = good.clone();
    hole.remove(2);
    assert_eq!(decode(&hole), BundleError::Hole { from: 3, to: 3 });

    // A duplicate.
    let mut dup = good.clone();
    dup.insert(3, good[2].clone());
    assert_eq!(decode(&dup), BundleError::DuplicateEvent { seq: 3 });

    // Reordered.
    let mut reordered = good.clone();
    reordered.swap(2, 3);
    assert_eq!(
        decode(&reordered),
        BundleError::OutOfOrder { seq: 3, after: 4 }
    );

    // A forged event put in place of seq 4, well chained to seq 3: the
    // next event no longer chains to it.
    let mut inserted = good.clone();
    inserted[3] = SealedEvent::seal(Event {
        payload: EventPayload::ConnectionLost(Note {
            reason: Some("forged".into()),
        }),
        ..good[3].event.clone()
    });
    assert_eq!(decode(&inserted), BundleError::BrokenChain { seq: 5 });

    // An event of another node.
    let mut foreign = good.clone();
    foreign[1] = SealedEvent::seal(Event {
        node_id: "sx-other-node".into(),
        ..good[1].event.clone()
    });
    assert!(matches!(
        decode(&foreign),
        BundleError::ForeignEvent { seq: 2, .. }
    ));

    // Nothing at all.
    assert_eq!(decode(&[]), BundleError::Empty);

    // Checkpoints signed by another key than the manifest's.
    let mut writer = BundleWriter::new(NODE);
    good.iter().for_each(|e| writer.push_event(e));
    let head = writer.head();
    writer.push_checkpoint(Checkpoint::sign(&other_key(), NODE, head.seq, head.hash));
    let file = writer.finish(&key, &certificates(), header(), Compression::None);
    assert!(matches!(
        decode_bundle(&file),
        Err(BundleError::BadCheckpoint { seq: 6, .. })
    ));

    // No checkpoint on the last event.
    let mut writer = BundleWriter::new(NODE);
    good.iter().for_each(|e| writer.push_event(e));
    writer.push_checkpoint(Checkpoint::sign(&key, NODE, 3, good[2].hash));
    let file = writer.finish(&key, &certificates(), header(), Compression::None);
    assert!(matches!(
        decode_bundle(&file),
        Err(BundleError::CheckpointLayout { .. })
    ));
}

/// The same kinds of edits made to the bytes of a signed bundle without
/// re-signing (same-length swaps and copies, so every length prefix still
/// fits): refused because the section no longer matches the signed digest.
#[test]
fn edits_without_re_signing_break_the_signed_digest() {
    let good = events(6);
    let file = bundle_with(&node_key(), &good, 100, Compression::None);
    let find = |e: &SealedEvent| {
        file.windows(e.bytes.len())
            .position(|w| w == e.bytes.as_slice())
            .expect("event bytes in an uncompressed section")
    };
    let (a, b) = (&good[2], &good[3]);
    assert_eq!(a.bytes.len(), b.bytes.len(), "same-length events");
    let (at_a, at_b) = (find(a), find(b));
    let len = a.bytes.len();

    let mut reordered = file.clone();
    reordered[at_a..at_a + len].copy_from_slice(&b.bytes);
    reordered[at_b..at_b + len].copy_from_slice(&a.bytes);
    let mut duplicated = file.clone();
    duplicated[at_b..at_b + len].copy_from_slice(&a.bytes);
    for (what, edited) in [("reordered", reordered), ("duplicated", duplicated)] {
        assert_eq!(
            decode_bundle(&edited).err(),
            Some(BundleError::SectionAltered),
            "{what}"
        );
    }
}

#[test]
fn a_manifest_re_signed_by_another_key_is_refused() {
    // The manifest names the other key and is signed by it, but the
    // checkpoints are the node's: they do not verify against it.
    let node = node_key();
    let good = events(4);
    let mut writer = BundleWriter::new(NODE);
    good.iter().for_each(|e| writer.push_event(e));
    let head = writer.head();
    writer.push_checkpoint(Checkpoint::sign(&node, NODE, head.seq, head.hash));
    let file = writer.finish(&other_key(), &certificates(), header(), Compression::Zstd);
    assert!(matches!(
        decode_bundle(&file),
        Err(BundleError::BadCheckpoint { seq: 4, .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    /// Random multi-byte damage: an error, never a panic.
    #[test]
    fn random_damage_is_an_error_not_a_panic(
        edits in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..8),
        zstd in any::<bool>(),
    ) {
        let compression = if zstd { Compression::Zstd } else { Compression::None };
        let mut file = small_bundle(compression);
        for (at, mask) in edits {
            let i = at.index(file.len());
            file[i] ^= mask;
        }
        prop_assert!(decode_bundle(&file).is_err());
        prop_assert!(decode_receipt(&file).is_err());
    }

    /// Random bytes behind a valid magic and version.
    #[test]
    fn random_bodies_are_refused(body in prop::collection::vec(any::<u8>(), 0..400)) {
        let mut file = b"SXBUNDLE\x00\x01".to_vec();
        file.extend_from_slice(&body);
        prop_assert!(decode_bundle(&file).is_err());
        let mut file = b"SXRECEIPT\x00\x01".to_vec();
        file.extend_from_slice(&body);
        prop_assert!(decode_receipt(&file).is_err());
    }
}
