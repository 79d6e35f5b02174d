//! How a Souverix identity is spelled inside a certificate: the URI SAN
//! prefixes, the subject attributes, and the syntax of the names that go in
//! them.
//!
//! Names end up both in certificates and in file-system paths
//! (`nodes/<node-id>/`), so the syntax is strict: lower-case ASCII letters,
//! digits, `.` and `-`, starting with a letter or digit, at most 128 bytes.
//! That rules out `/`, `..` as a whole name, empty names and anything that
//! needs escaping.

use crate::PkiError;

/// URI SAN prefix naming a fleet node: `urn:souverix:node:<node-id>`.
pub const NODE_URI_PREFIX: &str = "urn:souverix:node:";
/// URI SAN prefix naming an aggregator: `urn:souverix:aggregator:<name>`.
pub const AGGREGATOR_URI_PREFIX: &str = "urn:souverix:aggregator:";
/// URI SAN prefix naming an operator: `urn:souverix:operator:<name>`.
pub const OPERATOR_URI_PREFIX: &str = "urn:souverix:operator:";

/// The subject organisation (O) of every certificate the fleet CA issues.
pub const ORGANIZATION: &str = "Souverix";
/// The subject OU of aggregator certificates.
pub const AGGREGATOR_UNIT: &str = "souverix-aggregator";
/// The subject OU of operator certificates.
pub const OPERATOR_UNIT: &str = "souverix-operator";

/// Longest allowed name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Checks `value` against the name syntax `^[a-z0-9][a-z0-9.-]{0,127}$`.
///
/// `what` names the field in the error (`"node id"`, `"region"` ...).
pub fn validate_name(what: &'static str, value: &str) -> Result<(), PkiError> {
    let invalid = |reason| PkiError::InvalidName {
        what,
        value: value.to_owned(),
        reason,
    };
    let Some(first) = value.bytes().next() else {
        return Err(invalid("must not be empty"));
    };
    if value.len() > MAX_NAME_LEN {
        return Err(invalid("must be at most 128 bytes"));
    }
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(invalid("must start with a lower-case letter or a digit"));
    }
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-';
    if !value.bytes().all(allowed) {
        return Err(invalid(
            "may only contain lower-case letters, digits, '.' and '-'",
        ));
    }
    Ok(())
}

/// Checks a CA common name: 1 to 64 bytes (the X.520 upper bound), no
/// control characters. Looser than [`validate_name`] since it never becomes
/// a path.
pub fn validate_ca_name(value: &str) -> Result<(), PkiError> {
    let invalid = |reason| PkiError::InvalidName {
        what: "CA name",
        value: value.to_owned(),
        reason,
    };
    if value.trim().is_empty() {
        return Err(invalid("must not be empty"));
    }
    if value.len() > 64 {
        return Err(invalid("must be at most 64 bytes"));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid("must not contain control characters"));
    }
    Ok(())
}

/// The URI SAN for a node id.
pub fn node_uri(node_id: &str) -> String {
    format!("{NODE_URI_PREFIX}{node_id}")
}

/// The URI SAN for an aggregator name.
pub fn aggregator_uri(name: &str) -> String {
    format!("{AGGREGATOR_URI_PREFIX}{name}")
}

/// The URI SAN for an operator name.
pub fn operator_uri(name: &str) -> String {
    format!("{OPERATOR_URI_PREFIX}{name}")
}

/// Extracts the one name carried under `prefix` among `uris`.
///
/// Returns `Ok(None)` when no URI has the prefix, and an error when more than
/// one does or the name breaks the syntax: an identity must be unambiguous.
pub(crate) fn name_from_uris(
    what: &'static str,
    prefix: &str,
    uris: &[String],
) -> Result<Option<String>, PkiError> {
    let mut found = uris.iter().filter_map(|uri| uri.strip_prefix(prefix));
    let Some(name) = found.next() else {
        return Ok(None);
    };
    if found.next().is_some() {
        return Err(PkiError::Parse {
            what: "certificate identity",
            detail: format!("more than one {what} URI ({prefix}...)"),
        });
    }
    validate_name(what, name)?;
    Ok(Some(name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_fleet_names() {
        for ok in [
            "sx-rempart-2026-prod-1-node-42",
            "a",
            "0",
            "edge-zone-a1",
            "node.eu-1",
            &"a".repeat(128),
        ] {
            assert!(
                validate_name("node id", ok).is_ok(),
                "{ok:?} should be valid"
            );
        }
    }

    #[test]
    fn rejects_bad_names() {
        for bad in [
            "",
            "Node",
            "-lead",
            ".hidden",
            "..",
            "a/b",
            "../etc",
            "a b",
            "née",
            "a_b",
            &"a".repeat(129),
        ] {
            let err = validate_name("node id", bad).expect_err(bad);
            assert!(
                matches!(
                    err,
                    PkiError::InvalidName {
                        what: "node id",
                        ..
                    }
                ),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn identity_from_uris_is_unambiguous() {
        let uris = vec![node_uri("n1"), "https://example.org".to_owned()];
        assert_eq!(
            name_from_uris("node id", NODE_URI_PREFIX, &uris)
                .ok()
                .flatten(),
            Some("n1".to_owned())
        );
        let none = vec![operator_uri("alice")];
        assert_eq!(
            name_from_uris("node id", NODE_URI_PREFIX, &none)
                .ok()
                .flatten(),
            None
        );
        let two = vec![node_uri("n1"), node_uri("n2")];
        assert!(name_from_uris("node id", NODE_URI_PREFIX, &two).is_err());
        let bad = vec![node_uri("../x")];
        assert!(name_from_uris("node id", NODE_URI_PREFIX, &bad).is_err());
    }
}
