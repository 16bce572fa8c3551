//! Timestamps are stored as unix milliseconds on both backends: one integer
//! type compares and sorts identically in SQLite and PostgreSQL, which keeps
//! the two implementations behaving the same.

use time::OffsetDateTime;

use crate::{Result, error::decode_err};

/// Milliseconds since the unix epoch (truncated toward zero).
pub(crate) fn to_ms(at: OffsetDateTime) -> i64 {
    // Any date `time` can represent fits in i64 milliseconds.
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

pub(crate) fn from_ms(ms: i64) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_err(|_| decode_err(format!("stored timestamp {ms} is out of range")))
}

pub(crate) fn opt_from_ms(ms: Option<i64>) -> Result<Option<OffsetDateTime>> {
    ms.map(from_ms).transpose()
}

/// `now - history` in stored units, saturating instead of overflowing for
/// absurd retention settings.
pub(crate) fn ms_before(now: OffsetDateTime, history: std::time::Duration) -> i64 {
    let history_ms = i64::try_from(history.as_millis()).unwrap_or(i64::MAX);
    to_ms(now).saturating_sub(history_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_truncates_to_millis() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).unwrap();
        let back = from_ms(to_ms(at)).unwrap();
        assert_eq!(to_ms(back), 1_700_000_000_123);
        assert_eq!(back.nanosecond(), 123_000_000);
    }

    #[test]
    fn pre_epoch_values_round_trip() {
        let at = OffsetDateTime::from_unix_timestamp(-86_400).unwrap();
        assert_eq!(from_ms(to_ms(at)).unwrap(), at);
    }

    #[test]
    fn cutoff_saturates() {
        let now = OffsetDateTime::UNIX_EPOCH;
        assert_eq!(ms_before(now, std::time::Duration::MAX), -i64::MAX);
    }
}
