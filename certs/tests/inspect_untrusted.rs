//! `inspect_der` takes bytes from peers: whatever they are, it returns an
//! error or an identity, never panics.

use std::sync::OnceLock;

use proptest::prelude::*;
use sx_certs::{CaOptions, NodeRequest, Pki, inspect_der, load_certs_pem};

/// One real node certificate (DER), made once.
fn node_cert_der() -> &'static [u8] {
    static DER: OnceLock<Vec<u8>> = OnceLock::new();
    DER.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::init(dir.path(), &CaOptions::default()).expect("init");
        let issued = pki
            .issue_node(&NodeRequest::new(
                "node-1",
                "souverix-coeur",
                "region-a",
                "zone-1",
            ))
            .expect("issue");
        load_certs_pem(&issued.cert_path).expect("load")[0].to_vec()
    })
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = inspect_der(&bytes);
    }

    #[test]
    fn corrupted_certificates_never_panic(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut der = node_cert_der().to_vec();
        for (at, byte) in flips {
            let i = at.index(der.len());
            der[i] ^= byte;
        }
        let _ = inspect_der(&der);
        let _ = inspect_der(&der[..cut.index(der.len())]);
    }
}

/// The corpus the properties corrupt is a real, parseable certificate.
#[test]
fn intact_certificate_parses() {
    let info = inspect_der(node_cert_der());
    assert_eq!(info.ok().and_then(|i| i.node_id), Some("node-1".to_owned()));
}
