//! Time as the twin service carries it: instants in microseconds since the
//! Unix epoch and spans in whole seconds. Both are integers on the wire and
//! the seed's human forms in JSON (`2026-02-27T03:45:00Z`, `15m`).
//!
//! Nothing in `sx-common` reads the clock: callers pass `now` in.

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// An instant, in microseconds since 1970-01-01T00:00:00Z.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The epoch itself; used as "never".
    pub const EPOCH: Timestamp = Timestamp(0);

    pub fn from_micros(micros: i64) -> Self {
        Timestamp(micros)
    }

    pub fn from_secs(secs: i64) -> Self {
        Timestamp(secs.saturating_mul(1_000_000))
    }

    pub fn as_micros(self) -> i64 {
        self.0
    }

    pub fn as_secs(self) -> i64 {
        self.0.div_euclid(1_000_000)
    }

    /// The current wall-clock time. Only drivers (binaries, tests) call this;
    /// pure code takes `now` as an argument.
    pub fn now() -> Self {
        let now = OffsetDateTime::now_utc();
        Timestamp((now.unix_timestamp_nanos() / 1_000) as i64)
    }

    /// Parses RFC 3339 (`2026-02-27T03:45:00Z`).
    pub fn parse(text: &str) -> Result<Self, time::error::Parse> {
        let at = OffsetDateTime::parse(text, &Rfc3339)?;
        Ok(Timestamp((at.unix_timestamp_nanos() / 1_000) as i64))
    }

    /// `self + span`, saturating.
    pub fn plus(self, span: Span) -> Self {
        Timestamp(
            self.0
                .saturating_add((span.0 as i64).saturating_mul(1_000_000)),
        )
    }

    /// The whole seconds from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Span {
        Span((self.0.saturating_sub(earlier.0).max(0) / 1_000_000) as u64)
    }

    fn to_offset(self) -> Option<OffsetDateTime> {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000).ok()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_offset().and_then(|t| t.format(&Rfc3339).ok()) {
            Some(text) => f.write_str(&text),
            None => write!(f, "@{}us", self.0),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            serializer.serialize_i64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            Timestamp::parse(&text).map_err(de::Error::custom)
        } else {
            i64::deserialize(deserializer).map(Timestamp)
        }
    }
}

/// A length of time in whole seconds, shown as the seed shows it: `0m`,
/// `15m`, `2h30m`, `45s`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span(pub u64);

impl Span {
    pub const ZERO: Span = Span(0);

    pub fn from_secs(secs: u64) -> Self {
        Span(secs)
    }

    pub fn from_mins(mins: u64) -> Self {
        Span(mins.saturating_mul(60))
    }

    pub fn as_secs(self) -> u64 {
        self.0
    }

    /// Parses `1h2m3s`, `15m`, `0m`, `90s` or a bare number of seconds.
    pub fn parse(text: &str) -> Result<Self, SpanParseError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(SpanParseError(text.to_owned()));
        }
        if let Ok(secs) = text.parse::<u64>() {
            return Ok(Span(secs));
        }
        let mut total: u64 = 0;
        let mut number = String::new();
        for c in text.chars() {
            if c.is_ascii_digit() {
                number.push(c);
                continue;
            }
            let unit = match c {
                'd' => 86_400,
                'h' => 3_600,
                'm' => 60,
                's' => 1,
                _ => return Err(SpanParseError(text.to_owned())),
            };
            let n: u64 = number
                .parse()
                .map_err(|_| SpanParseError(text.to_owned()))?;
            total = total.saturating_add(n.saturating_mul(unit));
            number.clear();
        }
        if !number.is_empty() {
            return Err(SpanParseError(text.to_owned()));
        }
        Ok(Span(total))
    }
}

/// A span that is not of the form `1h2m3s`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a duration like 15m or 1h30m: {0:?}")]
pub struct SpanParseError(pub String);

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (d, h, m, s) = (
            self.0 / 86_400,
            self.0 % 86_400 / 3_600,
            self.0 % 3_600 / 60,
            self.0 % 60,
        );
        if self.0 == 0 {
            return f.write_str("0m");
        }
        if d > 0 {
            write!(f, "{d}d")?;
        }
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if s > 0 {
            write!(f, "{s}s")?;
        }
        Ok(())
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            serializer.serialize_u64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            Span::parse(&text).map_err(de::Error::custom)
        } else {
            u64::deserialize(deserializer).map(Span)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_round_trips_through_rfc3339() {
        let t = Timestamp::parse("2026-02-27T03:45:00Z").expect("parse");
        assert_eq!(t.to_string(), "2026-02-27T03:45:00Z");
        assert_eq!(t.as_secs(), 1_772_163_900);
        let json = serde_json::to_string(&t).expect("json");
        assert_eq!(json, "\"2026-02-27T03:45:00Z\"");
        let bin = postcard::to_allocvec(&t).expect("postcard");
        assert_eq!(postcard::from_bytes::<Timestamp>(&bin).expect("back"), t);
    }

    #[test]
    fn spans_print_like_the_seed() {
        assert_eq!(Span::ZERO.to_string(), "0m");
        assert_eq!(Span::from_mins(15).to_string(), "15m");
        assert_eq!(Span(9_000).to_string(), "2h30m");
        assert_eq!(Span::parse("2h30m").expect("parse"), Span(9_000));
        assert_eq!(Span::parse("45s").expect("parse"), Span(45));
        assert!(Span::parse("15x").is_err());
        assert!(Span::parse("15").is_ok());
        assert!(Span::parse("m").is_err());
    }

    #[test]
    fn since_is_never_negative() {
        let a = Timestamp::from_secs(100);
        let b = Timestamp::from_secs(160);
        assert_eq!(b.since(a), Span(60));
        assert_eq!(a.since(b), Span::ZERO);
    }
}
