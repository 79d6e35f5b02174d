//! Release versions as the fleet names them (`souverix-rempart-1.4.7` or
//! just `1.4.7`) and the distance between two of them.

use std::cmp::Ordering;

/// A dotted numeric release version; missing parts count as zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Release {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

impl Release {
    /// Parses `1.4.7`, `v1.4`, or the version part of `souverix-rempart-1.4.7`.
    pub fn parse(text: &str) -> Option<Release> {
        let bare = strip_component(text).trim_start_matches('v');
        let core = bare.split(['-', '+']).next().unwrap_or(bare);
        let mut parts = core.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next().map_or(Some(0), |p| p.parse().ok())?;
        let patch = parts.next().map_or(Some(0), |p| p.parse().ok())?;
        if parts.next().is_some() {
            return None;
        }
        Some(Release {
            major,
            minor,
            patch,
        })
    }
}

/// The version part of `component-1.2.3` (everything after the last `-`
/// that is followed by a digit), or the whole text.
pub fn strip_component(text: &str) -> &str {
    let bytes = text.as_bytes();
    for (i, b) in bytes.iter().enumerate().rev() {
        if *b == b'-' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
            return &text[i + 1..];
        }
    }
    text
}

/// `component-version`, unless `version` already names the component.
pub fn qualified(component: &str, version: &str) -> String {
    if component.is_empty() || version.is_empty() || version.starts_with(component) {
        version.to_owned()
    } else {
        format!("{component}-{version}")
    }
}

/// How far `actual` is from `desired`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Distance {
    Same,
    Patch(u64),
    Minor(u64),
    Major(u64),
    /// One of the versions could not be parsed but they differ.
    Unknown,
}

impl Distance {
    /// The twin's `drift_score`: 100 per major, 10 per minor, 1 per patch
    /// (only the largest differing part counts); 1 when unparseable.
    pub fn score(self) -> u32 {
        let clamp = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        match self {
            Distance::Same => 0,
            Distance::Patch(n) => clamp(n),
            Distance::Minor(n) => clamp(n).saturating_mul(10),
            Distance::Major(n) => clamp(n).saturating_mul(100),
            Distance::Unknown => 1,
        }
    }
}

/// The distance from `actual` to `desired` (either order gives the same size).
pub fn distance(desired: &str, actual: &str) -> Distance {
    if strip_component(desired) == strip_component(actual) {
        return Distance::Same;
    }
    match (Release::parse(desired), Release::parse(actual)) {
        (Some(d), Some(a)) => {
            if d.major != a.major {
                Distance::Major(d.major.abs_diff(a.major))
            } else if d.minor != a.minor {
                Distance::Minor(d.minor.abs_diff(a.minor))
            } else if d.patch != a.patch {
                Distance::Patch(d.patch.abs_diff(a.patch))
            } else {
                Distance::Same
            }
        }
        _ => Distance::Unknown,
    }
}

/// Compares two versions by release number (unparseable ones sort first).
pub fn compare(a: &str, b: &str) -> Ordering {
    Release::parse(a).cmp(&Release::parse(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fleet_version_names() {
        let r = Release::parse("souverix-rempart-1.4.7").expect("parse");
        assert_eq!((r.major, r.minor, r.patch), (1, 4, 7));
        assert_eq!(
            Release::parse("2.1"),
            Some(Release {
                major: 2,
                minor: 1,
                patch: 0
            })
        );
        assert_eq!(Release::parse("policy-v2.1"), None);
        assert_eq!(strip_component("souverix-rempart-1.4.7"), "1.4.7");
        assert_eq!(
            qualified("souverix-rempart", "1.4.7"),
            "souverix-rempart-1.4.7"
        );
        assert_eq!(
            qualified("souverix-rempart", "souverix-rempart-1.4.7"),
            "souverix-rempart-1.4.7"
        );
    }

    #[test]
    fn distance_drives_the_score() {
        assert_eq!(
            distance("1.4.7", "souverix-rempart-1.4.6"),
            Distance::Patch(1)
        );
        assert_eq!(distance("1.4.7", "1.4.6").score(), 1);
        assert_eq!(distance("1.6.0", "1.4.9").score(), 20);
        assert_eq!(distance("2.0.0", "1.4.9").score(), 100);
        assert_eq!(distance("1.4.7", "1.4.7").score(), 0);
        assert_eq!(distance("x", "y"), Distance::Unknown);
    }
}
