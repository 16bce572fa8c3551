//! Human durations for configuration: `90d`, `12h`, `5m`, `30s`, `250ms`,
//! or a bare integer meaning seconds.
//!
//! One number and one unit only: compound forms (`1h30m`) and fractions are
//! rejected rather than guessed at. Zero parses; whether zero is acceptable
//! is the caller's decision (config.md rejects zero TTLs in `validate()`).
//! Callers adding a parsed duration to a clock should use `checked_add`: the
//! parser bounds values by `u64` seconds, not by what a clock can represent.

use std::time::Duration;
use thiserror::Error;

const UNITS: &str = "d, h, m, s or ms";

/// A string that is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "invalid duration {}: {reason}; expected a whole number followed by {UNITS} \
     (e.g. 90d, 12h, 5m, 30s)",
    crate::quoted(.input)
)]
pub struct InvalidDuration {
    input: String,
    reason: &'static str,
}

impl InvalidDuration {
    fn new(input: &str, reason: &'static str) -> Self {
        Self {
            input: input.chars().take(100).collect(),
            reason,
        }
    }

    /// Why the input was rejected (`"unknown unit"`, `"too large"`, ...).
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

/// Parses `90d`, `12h`, `5m`, `30s`, `250ms` or bare seconds (`3600`).
pub fn parse_duration(s: &str) -> Result<Duration, InvalidDuration> {
    if s.is_empty() {
        return Err(InvalidDuration::new(s, "empty"));
    }
    if s.starts_with('-') {
        return Err(InvalidDuration::new(s, "negative"));
    }
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(digits_end);
    if digits.is_empty() {
        return Err(InvalidDuration::new(s, "missing number"));
    }
    let too_large = || InvalidDuration::new(s, "too large");
    let n: u64 = digits.parse().map_err(|_| too_large())?;
    let seconds_per_unit = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "" | "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(InvalidDuration::new(s, "unknown unit")),
    };
    n.checked_mul(seconds_per_unit)
        .map(Duration::from_secs)
        .ok_or_else(too_large)
}

/// Formats with the largest unit that represents `d` exactly (`90d`, `3m`,
/// `45s`, `0s`), so the result parses back to the same value.
///
/// Durations that are not whole milliseconds are truncated to milliseconds:
/// configuration never produces them and the output is meant for humans.
pub fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() != 0 {
        return format!("{}ms", d.as_millis());
    }
    let secs = d.as_secs();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs != 0 && secs.is_multiple_of(size) {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

/// `#[serde(with = "silo_core::duration::serde_duration")]` for a
/// [`Duration`] field: reads `"90d"` or an integer number of seconds, writes
/// the [`format_duration`] string.
pub mod serde_duration {
    use super::{format_duration, parse_duration};
    use serde::Serializer;
    use serde::de::{self, Deserializer, Unexpected, Visitor};
    use std::fmt;
    use std::time::Duration;

    /// Serializes as `"90d"`.
    pub fn serialize<S: Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_duration(*d))
    }

    /// Deserializes from `"90d"` or a non-negative integer (seconds).
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        deserializer.deserialize_any(DurationVisitor)
    }

    struct DurationVisitor;

    /// What error messages say we wanted; the config loader turns
    /// "expected ..." into its one-line message.
    const EXPECTED: &str = "a duration such as 90d, 12h, 5m or 30s";

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(EXPECTED)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            parse_duration(v).map_err(|e| {
                let expected = format!("{EXPECTED} ({})", e.reason());
                E::invalid_value(Unexpected::Str(v), &expected.as_str())
            })
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v)
                .map(Duration::from_secs)
                .map_err(|_| E::invalid_value(Unexpected::Signed(v), &"a non-negative duration"))
        }
    }

    /// The same for `Option<Duration>`: `null`/absent is `None`.
    pub mod option {
        use super::DurationVisitor;
        use serde::{Deserializer, Serializer};
        use std::time::Duration;

        /// Serializes `Some` as `"90d"`, `None` as null.
        pub fn serialize<S: Serializer>(
            d: &Option<Duration>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, serializer),
                None => serializer.serialize_none(),
            }
        }

        /// Deserializes null as `None`, anything else as [`super::deserialize`].
        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<Duration>, D::Error> {
            struct OptionVisitor;
            impl<'de> serde::de::Visitor<'de> for OptionVisitor {
                type Value = Option<Duration>;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a duration or null")
                }
                fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                    Ok(None)
                }
                fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                    Ok(None)
                }
                fn visit_some<D2: Deserializer<'de>>(
                    self,
                    d: D2,
                ) -> Result<Self::Value, D2::Error> {
                    d.deserialize_any(DurationVisitor).map(Some)
                }
            }
            deserializer.deserialize_option(OptionVisitor)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::{Deserialize, Serialize};

    #[test]
    fn parses_units_and_bare_seconds() {
        let cases = [
            ("90d", 90 * 86_400),
            ("12h", 12 * 3_600),
            ("5m", 300),
            ("30s", 30),
            ("45", 45),
            ("0", 0),
            ("0d", 0),
            ("007s", 7),
        ];
        for (input, secs) in cases {
            assert_eq!(
                parse_duration(input),
                Ok(Duration::from_secs(secs)),
                "{input}"
            );
        }
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    }

    #[test]
    fn rejects_garbage_with_reason() {
        let cases = [
            ("", "empty"),
            ("-5m", "negative"),
            ("d", "missing number"),
            ("+5s", "missing number"),
            ("5x", "unknown unit"),
            ("5M", "unknown unit"),
            ("1h30m", "unknown unit"),
            ("1.5h", "unknown unit"),
            (" 5s", "missing number"),
            ("5s ", "unknown unit"),
            ("99999999999999999999", "too large"),
            ("213503982334602d", "too large"),
        ];
        for (input, reason) in cases {
            let err = parse_duration(input).unwrap_err();
            assert_eq!(err.reason(), reason, "{input:?}");
        }
        assert_eq!(
            parse_duration("5x").unwrap_err().to_string(),
            "invalid duration \"5x\": unknown unit; expected a whole number followed by \
             d, h, m, s or ms (e.g. 90d, 12h, 5m, 30s)"
        );
    }

    #[test]
    fn formats_largest_exact_unit() {
        let f = |s| format_duration(Duration::from_secs(s));
        assert_eq!(f(90 * 86_400), "90d");
        assert_eq!(f(36 * 3_600), "36h");
        assert_eq!(f(180), "3m");
        assert_eq!(f(45), "45s");
        assert_eq!(f(61), "61s");
        assert_eq!(f(0), "0s");
        assert_eq!(format_duration(Duration::from_millis(1_500)), "1500ms");
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Holder {
        #[serde(with = "serde_duration")]
        ttl: Duration,
        #[serde(with = "serde_duration::option", default)]
        extra: Option<Duration>,
    }

    #[test]
    fn serde_accepts_strings_and_seconds() {
        let h: Holder = serde_json::from_str(r#"{"ttl":"90d"}"#).unwrap();
        assert_eq!(h.ttl, Duration::from_secs(90 * 86_400));
        assert_eq!(h.extra, None);
        let h: Holder = serde_json::from_str(r#"{"ttl":120,"extra":"5m"}"#).unwrap();
        assert_eq!(h.ttl, Duration::from_secs(120));
        assert_eq!(h.extra, Some(Duration::from_secs(300)));
        assert_eq!(
            serde_json::to_string(&h).unwrap(),
            r#"{"ttl":"2m","extra":"5m"}"#
        );
        let err = serde_json::from_str::<Holder>(r#"{"ttl":"5x"}"#).unwrap_err();
        assert!(
            err.to_string().contains("expected a duration such as"),
            "{err}"
        );
        assert!(serde_json::from_str::<Holder>(r#"{"ttl":-1}"#).is_err());
        assert!(serde_json::from_str::<Holder>(r#"{"ttl":true}"#).is_err());
    }

    proptest! {
        #[test]
        fn format_round_trips(secs in 0u64..10_000_000_000) {
            let d = Duration::from_secs(secs);
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }

        #[test]
        fn never_panics(s in "\\PC{0,30}") {
            let _ = parse_duration(&s);
        }
    }
}
