//! Wall-clock timestamps and human durations as they appear in orders and config.
//!
//! Timestamps travel as RFC 3339 strings (second precision, UTC) so journals and
//! `--json` output stay readable; durations as `250ms` / `2s` / `5m`.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A point in time, serialized as RFC 3339 (`2026-11-23T17:51:51Z`).
///
/// Always between the epoch and [`Timestamp::latest`]: RFC 3339 has four-digit years, and a time
/// it cannot write fails (in `humantime`) as a formatting error, which `to_string` and
/// `serde_json` turn into a panic. Orders carry timestamps anyone holding a signing key
/// chooses, so every constructor and every sum saturates instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(SystemTime);

/// The last second of year 9999 since the epoch.
const MAX_UNIX_SECS: u64 = 253_402_300_799;

impl Timestamp {
    /// 9999-12-31T23:59:59.999999999Z, the latest time RFC 3339 can write.
    pub fn latest() -> Self {
        Timestamp(UNIX_EPOCH + Duration::new(MAX_UNIX_SECS, 999_999_999))
    }

    /// `t` moved into the range every timestamp can be written in.
    fn clamped(t: SystemTime) -> Self {
        Timestamp(t.clamp(UNIX_EPOCH, Timestamp::latest().0))
    }

    pub fn now() -> Self {
        Timestamp::clamped(SystemTime::now())
    }

    /// `t`, saturating at the epoch and at [`Timestamp::latest`].
    pub fn from_system(t: SystemTime) -> Self {
        Timestamp::clamped(t)
    }

    /// Saturates at [`Timestamp::latest`].
    pub fn from_unix_secs(secs: u64) -> Self {
        Timestamp(UNIX_EPOCH + Duration::from_secs(secs.min(MAX_UNIX_SECS)))
    }

    pub fn system(self) -> SystemTime {
        self.0
    }

    pub fn unix_secs(self) -> u64 {
        self.0
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    /// `self + d`, saturating at [`Timestamp::latest`]: an order valid until the last second of
    /// year 9999 is remembered until then, not until a time no file can hold.
    pub fn plus(self, d: Duration) -> Self {
        Timestamp::clamped(self.0.checked_add(d).unwrap_or(Timestamp::latest().0))
    }

    /// `self - d`, saturating at the epoch.
    pub fn minus(self, d: Duration) -> Self {
        Timestamp(self.0.checked_sub(d).unwrap_or(UNIX_EPOCH))
    }

    /// Time elapsed from `earlier` to `self`; zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        self.0.duration_since(earlier.0).unwrap_or_default()
    }

    pub fn parse(s: &str) -> Result<Self, humantime::TimestampError> {
        humantime::parse_rfc3339_weak(s).map(Timestamp)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_rfc3339_seconds(self.0))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse(&s)
            .map_err(|e| serde::de::Error::custom(format!("bad timestamp {s:?}: {e}")))
    }
}

/// Parses `250ms`, `2s`, `5m`, `1h 30m`; a bare number is refused because its unit would be a guess.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("bad duration {s:?}: {e} (examples: 250ms, 2s, 5m)"))
}

pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string().replace(' ', "")
}

/// `#[serde(with = "proto::time::duration")]` for `Duration` fields.
pub mod duration {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_format_round_trip() {
        for (text, ms) in [
            ("250ms", 250),
            ("2s", 2000),
            ("5m", 300_000),
            ("1h", 3_600_000),
        ] {
            let d = parse_duration(text).unwrap();
            assert_eq!(d.as_millis(), ms, "{text}");
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
        for bad in ["", "5", "five minutes", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn every_timestamp_can_be_written_however_it_was_made() {
        let last = "9999-12-31T23:59:59Z";
        let latest = Timestamp::parse(last).unwrap();
        let made = [
            // An order valid until the last second RFC 3339 can write, plus the allowed skew:
            // the replay store's `remember_until` once panicked in serde_json.
            latest.plus(Duration::from_secs(60)),
            Timestamp::parse("9999-12-31T23:59:59.999999999Z")
                .unwrap()
                .plus(Duration::from_nanos(1)),
            latest.plus(Duration::MAX),
            Timestamp::from_unix_secs(u64::MAX),
            Timestamp::from_system(UNIX_EPOCH + Duration::from_secs(1 << 40)),
            Timestamp::latest(),
        ];
        for t in made {
            assert_eq!(t.to_string(), last);
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{last}\""));
            assert!(t >= latest);
        }
        let before_epoch = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(
            Timestamp::from_system(before_epoch).to_string(),
            "1970-01-01T00:00:00Z"
        );
        assert_eq!(
            Timestamp::from_unix_secs(0)
                .minus(Duration::MAX)
                .to_string(),
            "1970-01-01T00:00:00Z"
        );
        // Within the range nothing moves.
        let t = Timestamp::from_unix_secs(1_790_000_000);
        assert_eq!(t.plus(Duration::from_secs(60)).unix_secs(), 1_790_000_060);
        assert_eq!(Timestamp::from_system(t.system()), t);
    }

    #[test]
    fn timestamps_round_trip_through_json() {
        let t = Timestamp::from_unix_secs(1_790_000_000);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
        assert!(serde_json::from_str::<Timestamp>("\"yesterday\"").is_err());
    }
}
