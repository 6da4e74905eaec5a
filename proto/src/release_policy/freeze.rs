//! Freeze windows (`[[freeze]]`): when a host takes no release. A window is either weekly, in
//! the civil time of a time zone (`Fri 16:00` to `Mon 08:00`, wrapping the week when `to` comes
//! earlier in the week than `from`), or one-off (`2026-12-20T00:00:00Z` to
//! `2027-01-04T00:00:00Z`). `from` is in the window, `to` is not.
//!
//! Weekly windows are judged on the wall clock of their zone, so `Fri 16:00` in
//! `Europe/Amsterdam` is 15:00 UTC in winter and 14:00 UTC in summer, and a start that a
//! daylight saving change skips begins the window at the first wall-clock time after it.

use std::fmt;

use jiff::civil::DateTime;
use jiff::tz::{TimeZone, TimeZoneDatabase};

use crate::time::Timestamp;

/// One `[[freeze]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    span: Span,
    /// The zone of a weekly window, or of a one-off window's times written without an offset.
    zone: Zone,
    /// Why nothing may be released meanwhile, for whoever is refused.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Span {
    /// `from` and `to` as written, kept for the refusal.
    Once {
        from: jiff::Timestamp,
        to: jiff::Timestamp,
        written: (String, String),
    },
    Weekly {
        from: WeekTime,
        to: WeekTime,
    },
}

#[derive(Debug, Clone, PartialEq)]
struct Zone {
    name: String,
    tz: TimeZone,
}

/// A moment of the week on a wall clock: seconds since Monday 00:00.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct WeekTime(u32);

const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const FULL_DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// A `[[freeze]]` value that cannot be used: the key (as agent.toml spells it), its value and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} = {value:?}: {why}")]
pub struct BadWindow {
    pub key: &'static str,
    pub value: String,
    pub why: String,
}

fn bad(key: &'static str, value: &str, why: impl Into<String>) -> BadWindow {
    BadWindow {
        key,
        value: value.to_string(),
        why: why.into(),
    }
}

impl Window {
    /// `weekly = { from = "Fri 16:00", to = "Mon 08:00" }` in `tz`.
    pub fn weekly(from: &str, to: &str, tz: &str, reason: &str) -> Result<Window, BadWindow> {
        let zone = Zone::named(tz)?;
        let (from_at, to_at) = (
            WeekTime::parse("weekly.from", from)?,
            WeekTime::parse("weekly.to", to)?,
        );
        if from_at == to_at {
            return Err(bad(
                "weekly.to",
                to,
                "is the same time as weekly.from: a window must start and end at different times",
            ));
        }
        Ok(Window {
            span: Span::Weekly {
                from: from_at,
                to: to_at,
            },
            zone,
            reason: checked_reason(reason)?,
        })
    }

    /// `from` / `to` once: RFC 3339 times (`2026-12-20T00:00:00Z`, `…+01:00`), or dates and
    /// times without an offset (`2026-12-20T00:00`) on the wall clock of `tz`.
    pub fn once(from: &str, to: &str, tz: &str, reason: &str) -> Result<Window, BadWindow> {
        let zone = Zone::named(tz)?;
        let (from_at, to_at) = (zone.instant("from", from)?, zone.instant("to", to)?);
        if to_at <= from_at {
            return Err(bad("to", to, format!("is not after from = {from:?}")));
        }
        Ok(Window {
            span: Span::Once {
                from: from_at,
                to: to_at,
                written: (from.trim().to_string(), to.trim().to_string()),
            },
            zone,
            reason: checked_reason(reason)?,
        })
    }

    /// Whether `now` is in the window.
    pub fn holds(&self, now: Timestamp) -> bool {
        let now = instant(now);
        match &self.span {
            Span::Once { from, to, .. } => *from <= now && now < *to,
            Span::Weekly { from, to } => {
                let at = WeekTime::of(now.to_zoned(self.zone.tz.clone()).datetime());
                if from < to {
                    *from <= at && at < *to
                } else {
                    *from <= at || at < *to
                }
            }
        }
    }

    /// What an order refused at `now` is told: the window as configured, its zone, its reason
    /// and the time the host judged.
    pub fn refusal(&self, now: Timestamp) -> String {
        let there = instant(now).to_zoned(self.zone.tz.clone());
        format!(
            "[[freeze]] {self} holds now ({}): this host takes no deploy or rollback until it ends",
            there.strftime("%a %Y-%m-%d %H:%M %Z")
        )
    }
}

/// `"weekend" (weekly Fri 16:00 to Mon 08:00, Europe/Amsterdam)`.
impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let zone = &self.zone.name;
        match &self.span {
            Span::Weekly { from, to } => {
                write!(f, "{:?} (weekly {from} to {to}, {zone})", self.reason)
            }
            Span::Once {
                written: (from, to),
                ..
            } => write!(f, "{:?} ({from} to {to}, {zone})", self.reason),
        }
    }
}

/// The first of `windows` that holds at `now`, if any.
pub fn active(windows: &[Window], now: Timestamp) -> Option<&Window> {
    windows.iter().find(|w| w.holds(now))
}

/// proto's timestamps are clamped to what RFC 3339 can write, well within jiff's range.
fn instant(t: Timestamp) -> jiff::Timestamp {
    jiff::Timestamp::try_from(t.system()).unwrap_or(jiff::Timestamp::MAX)
}

fn checked_reason(reason: &str) -> Result<String, BadWindow> {
    let reason = reason.trim();
    if reason.is_empty() || reason.len() > 200 || reason.chars().any(char::is_control) {
        return Err(bad(
            "reason",
            reason,
            "must say in 1 to 200 printable characters why releases stop (it is shown to whoever is refused)",
        ));
    }
    Ok(reason.to_string())
}

impl Zone {
    /// A zone of the bundled IANA database (never the host's own files).
    fn named(name: &str) -> Result<Zone, BadWindow> {
        let tz = TimeZoneDatabase::bundled().get(name).map_err(|_| {
            bad(
                "tz",
                name,
                "is not a time zone of the IANA database (e.g. \"Europe/Amsterdam\", \"UTC\")",
            )
        })?;
        Ok(Zone {
            name: name.to_string(),
            tz,
        })
    }

    /// An RFC 3339 time, or a date and time on this zone's wall clock (the earlier of two
    /// when a clock change repeats it, the first after the gap when it skips it).
    fn instant(&self, key: &'static str, text: &str) -> Result<jiff::Timestamp, BadWindow> {
        let text = text.trim();
        if let Ok(t) = text.parse::<jiff::Timestamp>() {
            return Ok(t);
        }
        let civil = text.parse::<DateTime>().map_err(|_| {
            bad(
                key,
                text,
                "is neither an RFC 3339 time (2026-12-20T00:00:00Z) nor a date and time \
                 (2026-12-20T00:00) in tz",
            )
        })?;
        self.tz
            .to_ambiguous_zoned(civil)
            .compatible()
            .map(|z| z.timestamp())
            .map_err(|e| bad(key, text, format!("cannot be placed in {}: {e}", self.name)))
    }
}

impl WeekTime {
    fn of(civil: DateTime) -> WeekTime {
        let day = u32::from(civil.weekday().to_monday_zero_offset().unsigned_abs());
        let (h, m, s) = (civil.hour(), civil.minute(), civil.second());
        let seconds = [h, m, s].map(|x| u32::from(x.unsigned_abs()));
        WeekTime(day * 86_400 + seconds[0] * 3_600 + seconds[1] * 60 + seconds[2])
    }

    /// `Fri 16:00`: a weekday (`Mon`…`Sun` or its full name, any case) and a 24-hour `HH:MM`.
    fn parse(key: &'static str, text: &str) -> Result<WeekTime, BadWindow> {
        let (day, time) = text
            .split_once(' ')
            .map(|(d, t)| (d.trim(), t.trim()))
            .ok_or_else(|| bad(key, text, "is not a weekday and a time, like \"Fri 16:00\""))?;
        let day = weekday(day).ok_or_else(|| {
            bad(
                key,
                text,
                format!("{day:?} is not a weekday ({})", DAYS.join(", ")),
            )
        })?;
        let (hour, minute) = hour_minute(time).ok_or_else(|| {
            bad(
                key,
                text,
                format!("{time:?} is not a time of day from 00:00 to 23:59"),
            )
        })?;
        Ok(WeekTime(day * 86_400 + hour * 3_600 + minute * 60))
    }
}

impl fmt::Display for WeekTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let day = DAYS.get((self.0 / 86_400) as usize).unwrap_or(&"?");
        let in_day = self.0 % 86_400;
        write!(f, "{day} {:02}:{:02}", in_day / 3_600, in_day % 3_600 / 60)
    }
}

/// Days since Monday.
fn weekday(text: &str) -> Option<u32> {
    let i = DAYS
        .iter()
        .chain(FULL_DAYS.iter())
        .position(|d| d.eq_ignore_ascii_case(text))?;
    u32::try_from(i % 7).ok()
}

/// `HH:MM`, two digits each.
fn hour_minute(text: &str) -> Option<(u32, u32)> {
    let (h, m) = text.split_once(':')?;
    let two_digits = |s: &str| s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit());
    if !two_digits(h) || !two_digits(m) {
        return None;
    }
    let (h, m) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some((h, m))
}

#[cfg(test)]
mod tests;
