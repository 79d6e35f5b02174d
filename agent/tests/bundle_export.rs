//! Exporting a bundle from the running agent never blocks recording: the
//! export (`serve_local`, what `sx-agent export-bundle` asks the running
//! agent over its socket) takes the journal only chunk by chunk, so events
//! recorded meanwhile are appended while it runs, and the bundle holds the
//! range fixed when it started.

use sx_agent::bundle::{ExportRequest, LocalAnswer, LocalRequest, serve_local};
use sx_agent::handle::JournalHandle;
use sx_agent::journal::data_dir::{self, InitRequest};
use sx_agent::journal::{DataDir, Journal};
use sx_agent::tls::Credentials;
use sx_certs::{CaOptions, NodeRequest, Pki};
use sx_common::bundle::{Compression, decode_bundle};
use sx_common::event::{Note, OperationalTransition};
use sx_common::model::OperationalState;
use sx_common::{EventPayload, Span, Timestamp};

const NODE_ID: &str = "sx-rempart-2026-prod-1-node-42";
/// Enough events that the export spans many journal reads.
const EVENTS: u64 = 60_000;

fn transition(i: u64) -> EventPayload {
    EventPayload::OperationalTransition(OperationalTransition {
        from: OperationalState::InService,
        to: OperationalState::InService,
        reason: Some(format!("load-{i}")),
    })
}

#[test]
fn events_are_recorded_while_a_running_agent_exports() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let pki = Pki::init(tmp.path().join("pki"), &CaOptions::default()).expect("pki");
    let node = pki
        .issue_node(&NodeRequest::new(
            NODE_ID,
            "souverix-rempart",
            "region-a",
            "edge-zone-a1",
        ))
        .expect("node certificate");
    let dir = DataDir::new(tmp.path().join("agent"));
    data_dir::init(
        &dir,
        &InitRequest {
            cert: node.cert_path.clone(),
            key: node.key_path.clone(),
            ca: pki.ca_path(),
            force: false,
            now: Timestamp::now(),
        },
    )
    .expect("init");
    let mut journal = dir.open_journal().expect("journal");
    let mut next = journal.head().seq;
    while next < EVENTS {
        let n = (EVENTS - next).min(1_000);
        let items: Vec<_> = (next..next + n)
            .map(|i| (Timestamp::now(), transition(i)))
            .collect();
        journal.append(&items).expect("append");
        next += n;
    }
    let credentials = Credentials::load(&node.cert_path, &node.key_path).expect("credentials");
    let handle = JournalHandle::new(journal, credentials).expect("handle");
    let head_at_start = handle.head().seq;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let out = tmp.path().join("live.sxbundle");
    let request = ExportRequest {
        out: out.clone(),
        from: None,
        to: None,
        region: None,
        aggregator: None,
        expires_in: Span::from_secs(3_600),
        compression: Compression::Zstd,
    };
    let (exported, recorded_during) = runtime.block_on(async {
        let export = tokio::spawn(serve_local(
            LocalRequest::Export(request),
            dir.clone(),
            handle.clone(),
        ));
        let mut recorded_during = 0u64;
        while !export.is_finished() {
            let note = EventPayload::ConnectionLost(Note {
                reason: Some("recorded during the export".into()),
            });
            handle
                .append(vec![(Timestamp::now(), note)])
                .await
                .expect("recording goes on");
            if !export.is_finished() {
                recorded_during += 1;
            }
        }
        let answer = export.await.expect("export task").expect("export");
        (answer, recorded_during)
    });
    let LocalAnswer::Exported(exported) = exported else {
        panic!("not an export: {exported:?}");
    };

    // A journal held for the whole export would let at most one append
    // (queued before the export's first read) complete while it ran.
    assert!(
        recorded_during >= 3,
        "only {recorded_during} events recorded during the export"
    );
    let head_at_end = handle.head().seq;
    assert!(head_at_end >= head_at_start + recorded_during);
    // The bundle holds the range fixed when the export started.
    assert_eq!(exported.first_seq, 1);
    assert!(
        exported.last_seq >= head_at_start && exported.last_seq < head_at_end,
        "{exported:?}, head {head_at_start} then {head_at_end}"
    );
    let bundle = decode_bundle(&std::fs::read(&out).expect("bundle file")).expect("verifies");
    assert_eq!(bundle.events().len() as u64, exported.last_seq);
    assert_eq!(bundle.manifest().head_hash, exported.head_hash);
}
