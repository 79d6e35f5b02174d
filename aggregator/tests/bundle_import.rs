//! Bundle import against a real store, in process: every single-bit flip
//! and every truncation of a small, real bundle (fleet certificates, node
//! key) goes through [`Importer::import`], the path `import-bundle` and
//! `POST /api/v1/bundles` run, and is refused with the store, its fork
//! evidence and the counter file exactly as before. The unaltered file is
//! then accepted, so the bundle would have changed the store.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use sx_aggregator::bundle::{COUNTERS_FILE, Importer};
use sx_aggregator::config::Config;
use sx_aggregator::ingest::{GroupCommit, Ingest};
use sx_aggregator::store::{EventStore, ForkEvidence, NodeRecord, RedbStore};
use sx_certs::{AggregatorRequest, CaOptions, NodeRequest, Pki};
use sx_common::bundle::{BundleHeader, BundleWriter, Compression};
use sx_common::chain::{ChainHead, Checkpoint, SealedEvent};
use sx_common::event::ReplayStarted;
use sx_common::testing::seal_stream;
use sx_common::{EventPayload, Span, Timestamp};

const NODE_ID: &str = "sx-rempart-2026-prod-1-node-42";
const AGGREGATOR: &str = "agg-test";
const REGION: &str = "region-a";

struct Harness {
    _dir: tempfile::TempDir,
    config: Config,
    store: Arc<dyn EventStore>,
    ingest: Ingest,
    importer: Importer,
    runtime: tokio::runtime::Runtime,
    key: ed25519_dalek::SigningKey,
    chain: Vec<Vec<u8>>,
}

/// Everything a refused import must leave as it was.
#[derive(Debug, PartialEq)]
struct StoreState {
    events: Vec<(u64, sx_common::Digest)>,
    nodes: Vec<NodeRecord>,
    forks: Vec<ForkEvidence>,
    counters: Option<Vec<u8>>,
}

impl Harness {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = Pki::init(dir.path().join("pki"), &CaOptions::default()).expect("pki");
        pki.issue_aggregator(&AggregatorRequest::new(AGGREGATOR, REGION))
            .expect("aggregator certificate");
        let node = pki
            .issue_node(&NodeRequest::new(
                NODE_ID,
                "souverix-rempart",
                REGION,
                "edge-zone-a1",
            ))
            .expect("node certificate");
        let key = sx_certs::load_signing_key(&node.key_path).expect("node key");
        let mut chain: Vec<Vec<u8>> = sx_certs::load_certs_pem(&node.cert_path)
            .expect("node certificate")
            .into_iter()
            .map(|c| c.as_ref().to_vec())
            .collect();
        chain.extend(
            sx_certs::load_certs_pem(&pki.ca_path())
                .expect("CA")
                .into_iter()
                .map(|c| c.as_ref().to_vec()),
        );
        let mut config = Config::default();
        config.aggregator.name = AGGREGATOR.to_owned();
        config.aggregator.region = REGION.to_owned();
        config.aggregator.data_dir = dir.path().join("aggregator");
        config.tls.pki_dir = Some(pki.root().to_path_buf());
        std::fs::create_dir_all(&config.aggregator.data_dir).expect("data dir");
        let store: Arc<dyn EventStore> =
            Arc::new(RedbStore::open(config.store_path()).expect("store"));
        let ingest = Ingest::start(store.clone(), GroupCommit::default());
        let importer = Importer::from_config(&config).expect("importer");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        Harness {
            _dir: dir,
            config,
            store,
            ingest,
            importer,
            runtime,
            key,
            chain,
        }
    }

    /// A bundle of `events` with a checkpoint after every `every`.
    fn bundle(
        &self,
        events: &[SealedEvent],
        every: usize,
        counter: u64,
        compression: Compression,
    ) -> Vec<u8> {
        let mut writer = BundleWriter::new(NODE_ID);
        for chunk in events.chunks(every) {
            chunk.iter().for_each(|e| writer.push_event(e));
            let head = writer.head();
            writer.push_checkpoint(Checkpoint::sign(&self.key, NODE_ID, head.seq, head.hash));
        }
        let now = Timestamp::now();
        let header = BundleHeader {
            counter,
            created_at: now,
            expires_at: now.plus(Span::from_secs(86_400)),
            region: REGION.to_owned(),
            aggregator: None,
        };
        writer.finish(&self.key, &self.chain, header, compression)
    }

    fn import(&self, bytes: &[u8]) -> Result<sx_aggregator::bundle::Imported, &'static str> {
        self.runtime
            .block_on(self.importer.import(
                bytes,
                self.store.as_ref(),
                &self.ingest,
                Timestamp::now(),
            ))
            .map_err(|e| e.code())
    }

    fn state(&self) -> StoreState {
        let events = self
            .store
            .read(NODE_ID, 1, 10_000)
            .expect("read")
            .into_iter()
            .map(|e| (e.event.seq, e.hash))
            .collect();
        let counters = self.config.aggregator.data_dir.join(COUNTERS_FILE);
        StoreState {
            events,
            nodes: self.store.nodes().expect("nodes"),
            forks: self.store.forks().expect("forks"),
            counters: read_if_present(&counters),
        }
    }
}

fn read_if_present(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

fn events(count: u64) -> Vec<SealedEvent> {
    seal_stream(
        NODE_ID,
        ChainHead::default(),
        (0..count).map(|i| {
            (
                Timestamp::from_secs(1_772_000_000 + i as i64),
                EventPayload::ReplayStarted(ReplayStarted { backlog: i }),
            )
        }),
    )
}

#[test]
fn every_bit_flip_and_truncation_is_refused_and_changes_nothing_stored() {
    let h = Harness::new();
    let stream = events(9);
    // Something stored first (seq 1..=3, counter 1), so that "unchanged"
    // covers a node record, its last sync and the counter file.
    let first = h.bundle(&stream[..3], 3, 1, Compression::Zstd);
    assert_eq!(h.import(&first).map(|i| i.new_events), Ok(3));

    // Each bundle overlaps what is stored and brings three new events.
    for (compression, range, counter) in
        [(Compression::None, 0..6, 2), (Compression::Zstd, 3..9, 3)]
    {
        let file = h.bundle(&stream[range], 2, counter, compression);
        let before = h.state();
        let mut causes = BTreeSet::new();
        for byte in 0..file.len() {
            for bit in 0..8 {
                let mut flipped = file.clone();
                flipped[byte] ^= 1 << bit;
                match h.import(&flipped) {
                    Ok(i) => panic!("{compression:?}: flip of bit {bit} of byte {byte}: {i:?}"),
                    Err(cause) => causes.insert(cause),
                };
                assert_eq!(
                    h.state(),
                    before,
                    "{compression:?}: flip of bit {bit} of byte {byte}"
                );
            }
        }
        for cause in [
            "not-a-bundle",
            "wrong-version",
            "bad-signature",
            "certificates-altered",
            "section-altered",
        ] {
            assert!(causes.contains(cause), "{compression:?}: {causes:?}");
        }
        for len in 0..file.len() {
            let cause = h.import(&file[..len]).expect_err("truncated");
            assert!(
                ["truncated", "malformed", "not-a-bundle", "non-canonical"].contains(&cause),
                "{compression:?}: truncated to {len}: {cause}"
            );
            assert_eq!(h.state(), before, "{compression:?}: truncated to {len}");
        }
        // The unaltered file is accepted and changes the store.
        let imported = h.import(&file).expect("the unaltered bundle");
        assert_eq!(imported.new_events, 3, "{compression:?}");
        assert_ne!(h.state(), before, "{compression:?}");
    }
    assert_eq!(h.state().events.len(), 9);
}
