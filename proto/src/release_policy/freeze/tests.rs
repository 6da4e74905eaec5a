//! Freeze windows as tables: which moments each window holds, around its boundaries, across a
//! week's wrap and daylight saving changes; and what a bad window is told.

use expect_test::{Expect, expect};

use super::*;

fn at(rfc3339: &str) -> Timestamp {
    Timestamp::parse(rfc3339).unwrap()
}

/// One line per moment: the moment (UTC) and whether `window` holds then.
fn table(window: &Window, moments: &[&str], expect: Expect) {
    let out: String = moments
        .iter()
        .map(|m| {
            let verdict = if window.holds(at(m)) {
                "frozen"
            } else {
                "open"
            };
            format!("{m}  {verdict}\n")
        })
        .collect();
    expect.assert_eq(&out);
}

#[test]
fn a_weekly_window_wraps_the_week() {
    let weekend = Window::weekly("Fri 16:00", "Mon 08:00", "UTC", "weekend").unwrap();
    table(
        &weekend,
        &[
            "2026-12-03T23:59:59Z", // Thu
            "2026-12-04T15:59:59Z", // Fri, a second before
            "2026-12-04T16:00:00Z", // Fri, from: in
            "2026-12-05T12:00:00Z", // Sat
            "2026-12-06T23:59:59Z", // Sun, the week's last second
            "2026-12-07T00:00:00Z", // Mon, the week's first
            "2026-12-07T07:59:59Z", // Mon, a second before to
            "2026-12-07T08:00:00Z", // Mon, to: out
            "2026-12-09T12:00:00Z", // Wed
        ],
        expect![[r#"
            2026-12-03T23:59:59Z  open
            2026-12-04T15:59:59Z  open
            2026-12-04T16:00:00Z  frozen
            2026-12-05T12:00:00Z  frozen
            2026-12-06T23:59:59Z  frozen
            2026-12-07T00:00:00Z  frozen
            2026-12-07T07:59:59Z  frozen
            2026-12-07T08:00:00Z  open
            2026-12-09T12:00:00Z  open
        "#]],
    );
    let nights = Window::weekly("wednesday 22:00", "THU 06:30", "UTC", "batch jobs").unwrap();
    table(
        &nights,
        &[
            "2026-12-09T21:59:59Z",
            "2026-12-09T22:00:00Z",
            "2026-12-10T06:29:59Z",
            "2026-12-10T06:30:00Z",
            "2026-12-16T23:00:00Z", // the next week's
        ],
        expect![[r#"
            2026-12-09T21:59:59Z  open
            2026-12-09T22:00:00Z  frozen
            2026-12-10T06:29:59Z  frozen
            2026-12-10T06:30:00Z  open
            2026-12-16T23:00:00Z  frozen
        "#]],
    );
}

#[test]
fn a_weekly_window_follows_the_wall_clock_of_its_zone() {
    let weekend = Window::weekly("Fri 16:00", "Mon 08:00", "Europe/Amsterdam", "weekend").unwrap();
    // Fri 16:00 in Amsterdam is 15:00 UTC in winter (CET), 14:00 UTC in summer (CEST).
    table(
        &weekend,
        &[
            "2026-01-09T14:59:59Z",
            "2026-01-09T15:00:00Z",
            "2026-07-10T13:59:59Z",
            "2026-07-10T14:00:00Z",
            "2026-07-13T05:59:59Z", // Mon 07:59:59 CEST
            "2026-07-13T06:00:00Z", // Mon 08:00 CEST
        ],
        expect![[r#"
            2026-01-09T14:59:59Z  open
            2026-01-09T15:00:00Z  frozen
            2026-07-10T13:59:59Z  open
            2026-07-10T14:00:00Z  frozen
            2026-07-13T05:59:59Z  frozen
            2026-07-13T06:00:00Z  open
        "#]],
    );
    // On 2026-03-29 Amsterdam's clocks jump from 02:00 to 03:00: a window starting at 02:30
    // begins at 03:00, the first wall-clock time after the gap.
    let spring = Window::weekly("Sun 02:30", "Sun 03:30", "Europe/Amsterdam", "dst").unwrap();
    table(
        &spring,
        &[
            "2026-03-29T00:59:59Z", // 01:59:59 CET
            "2026-03-29T01:00:00Z", // 03:00 CEST
            "2026-03-29T01:29:59Z", // 03:29:59 CEST
            "2026-03-29T01:30:00Z", // 03:30 CEST
        ],
        expect![[r#"
            2026-03-29T00:59:59Z  open
            2026-03-29T01:00:00Z  frozen
            2026-03-29T01:29:59Z  frozen
            2026-03-29T01:30:00Z  open
        "#]],
    );
    // On 2026-10-25 the clocks go from 03:00 back to 02:00: 02:00-03:00 happens twice, and a
    // window on that hour holds both times.
    let autumn = Window::weekly("Sun 02:00", "Sun 03:00", "Europe/Amsterdam", "dst").unwrap();
    table(
        &autumn,
        &[
            "2026-10-24T23:59:59Z", // 01:59:59 CEST
            "2026-10-25T00:00:00Z", // 02:00 CEST
            "2026-10-25T00:59:59Z", // 02:59:59 CEST
            "2026-10-25T01:00:00Z", // 02:00 CET, again
            "2026-10-25T01:59:59Z", // 02:59:59 CET
            "2026-10-25T02:00:00Z", // 03:00 CET
        ],
        expect![[r#"
            2026-10-24T23:59:59Z  open
            2026-10-25T00:00:00Z  frozen
            2026-10-25T00:59:59Z  frozen
            2026-10-25T01:00:00Z  frozen
            2026-10-25T01:59:59Z  frozen
            2026-10-25T02:00:00Z  open
        "#]],
    );
}

#[test]
fn a_one_off_window_holds_from_from_until_to() {
    let holidays = Window::once(
        "2026-12-20T00:00:00Z",
        "2027-01-04T00:00:00Z",
        "UTC",
        "holidays",
    )
    .unwrap();
    table(
        &holidays,
        &[
            "2026-12-19T23:59:59Z",
            "2026-12-20T00:00:00Z",
            "2027-01-03T23:59:59Z",
            "2027-01-04T00:00:00Z",
            "2027-12-25T00:00:00Z", // not every year
        ],
        expect![[r#"
            2026-12-19T23:59:59Z  open
            2026-12-20T00:00:00Z  frozen
            2027-01-03T23:59:59Z  frozen
            2027-01-04T00:00:00Z  open
            2027-12-25T00:00:00Z  open
        "#]],
    );
    // Without an offset, the times are on the wall clock of tz (CET: UTC+1 in December).
    let civil = Window::once(
        "2026-12-24T12:00",
        "2026-12-27T00:00:00",
        "Europe/Amsterdam",
        "christmas",
    )
    .unwrap();
    table(
        &civil,
        &[
            "2026-12-24T10:59:59Z",
            "2026-12-24T11:00:00Z",
            "2026-12-26T22:59:59Z",
            "2026-12-26T23:00:00Z",
        ],
        expect![[r#"
            2026-12-24T10:59:59Z  open
            2026-12-24T11:00:00Z  frozen
            2026-12-26T22:59:59Z  frozen
            2026-12-26T23:00:00Z  open
        "#]],
    );
    // An offset wins over tz.
    let offset = Window::once(
        "2026-12-20T00:00:00+01:00",
        "2026-12-21T00:00:00+01:00",
        "UTC",
        "x",
    )
    .unwrap();
    assert!(offset.holds(at("2026-12-19T23:00:00Z")));
    assert!(!offset.holds(at("2026-12-20T23:00:00Z")));
}

#[test]
fn the_first_window_that_holds_is_the_one_named() {
    let windows = [
        Window::once(
            "2026-12-20T00:00:00Z",
            "2027-01-04T00:00:00Z",
            "UTC",
            "holidays",
        )
        .unwrap(),
        Window::weekly("Fri 16:00", "Mon 08:00", "Europe/Amsterdam", "weekend").unwrap(),
    ];
    let named = |m: &str| active(&windows, at(m)).map(|w| w.reason.clone());
    assert_eq!(named("2026-12-09T12:00:00Z"), None);
    assert_eq!(named("2026-12-05T12:00:00Z").as_deref(), Some("weekend"));
    assert_eq!(named("2026-12-26T12:00:00Z").as_deref(), Some("holidays"));
    assert_eq!(active(&[], at("2026-12-26T12:00:00Z")), None);
}

#[test]
fn a_refusal_names_the_window_its_zone_reason_and_the_time_judged() {
    let weekend =
        Window::weekly("fri 16:00", "Monday 08:00", "Europe/Amsterdam", "weekend").unwrap();
    let holidays = Window::once(
        "2026-12-20T00:00:00Z",
        " 2027-01-04T00:00:00Z",
        "UTC",
        " holidays ",
    )
    .unwrap();
    let out = [
        weekend.refusal(at("2026-12-04T16:30:00Z")),
        holidays.refusal(at("2026-12-24T08:00:00Z")),
    ]
    .join("\n");
    expect![[r#"
        [[freeze]] "weekend" (weekly Fri 16:00 to Mon 08:00, Europe/Amsterdam) holds now (Fri 2026-12-04 17:30 CET): this host takes no deploy or rollback until it ends
        [[freeze]] "holidays" (2026-12-20T00:00:00Z to 2027-01-04T00:00:00Z, UTC) holds now (Thu 2026-12-24 08:00 UTC): this host takes no deploy or rollback until it ends"#]]
    .assert_eq(&out);
}

#[test]
fn bad_windows_are_told_which_key_and_why() {
    type Make = fn() -> Result<Window, BadWindow>;
    let cases: &[(&str, Make)] = &[
        ("bad weekday", || {
            Window::weekly("Fry 16:00", "Mon 08:00", "UTC", "r")
        }),
        ("no time", || Window::weekly("Fri", "Mon 08:00", "UTC", "r")),
        ("bad time", || {
            Window::weekly("Fri 16:00", "Mon 8:00", "UTC", "r")
        }),
        ("24:00", || {
            Window::weekly("Fri 16:00", "Mon 24:00", "UTC", "r")
        }),
        ("minute 60", || {
            Window::weekly("Fri 16:60", "Mon 08:00", "UTC", "r")
        }),
        ("same from and to", || {
            Window::weekly("Fri 16:00", "fri 16:00", "UTC", "r")
        }),
        ("unknown tz", || {
            Window::weekly("Fri 16:00", "Mon 08:00", "Mars/Olympus", "r")
        }),
        ("empty tz", || {
            Window::weekly("Fri 16:00", "Mon 08:00", "", "r")
        }),
        ("empty reason", || {
            Window::weekly("Fri 16:00", "Mon 08:00", "UTC", "  ")
        }),
        ("reason with a newline", || {
            Window::weekly("Fri 16:00", "Mon 08:00", "UTC", "a\nb")
        }),
        ("to before from", || {
            Window::once("2027-01-04T00:00:00Z", "2026-12-20T00:00:00Z", "UTC", "r")
        }),
        ("to equals from", || {
            Window::once("2026-12-20T00:00:00Z", "2026-12-20T00:00:00Z", "UTC", "r")
        }),
        ("not a time", || {
            Window::once("tomorrow", "2026-12-20T00:00:00Z", "UTC", "r")
        }),
        ("a date: its midnight", || {
            Window::once("2026-12-19", "2026-12-20T00:00:00Z", "UTC", "r")
        }),
        ("month 13", || {
            Window::once("2026-13-01T00:00:00Z", "2027-01-01T00:00:00Z", "UTC", "r")
        }),
        ("a multibyte day", || {
            Window::weekly("Fré 16:00", "Mon 08:00", "UTC", "r")
        }),
    ];
    let out: String = cases
        .iter()
        .map(|(label, make)| match make() {
            Ok(w) => format!("{label:<24} accepted: {w}\n"),
            Err(e) => format!("{label:<24} {e}\n"),
        })
        .collect();
    expect![[r#"
        bad weekday              weekly.from = "Fry 16:00": "Fry" is not a weekday (Mon, Tue, Wed, Thu, Fri, Sat, Sun)
        no time                  weekly.from = "Fri": is not a weekday and a time, like "Fri 16:00"
        bad time                 weekly.to = "Mon 8:00": "8:00" is not a time of day from 00:00 to 23:59
        24:00                    weekly.to = "Mon 24:00": "24:00" is not a time of day from 00:00 to 23:59
        minute 60                weekly.from = "Fri 16:60": "16:60" is not a time of day from 00:00 to 23:59
        same from and to         weekly.to = "fri 16:00": is the same time as weekly.from: a window must start and end at different times
        unknown tz               tz = "Mars/Olympus": is not a time zone of the IANA database (e.g. "Europe/Amsterdam", "UTC")
        empty tz                 tz = "": is not a time zone of the IANA database (e.g. "Europe/Amsterdam", "UTC")
        empty reason             reason = "": must say in 1 to 200 printable characters why releases stop (it is shown to whoever is refused)
        reason with a newline    reason = "a\nb": must say in 1 to 200 printable characters why releases stop (it is shown to whoever is refused)
        to before from           to = "2026-12-20T00:00:00Z": is not after from = "2027-01-04T00:00:00Z"
        to equals from           to = "2026-12-20T00:00:00Z": is not after from = "2026-12-20T00:00:00Z"
        not a time               from = "tomorrow": is neither an RFC 3339 time (2026-12-20T00:00:00Z) nor a date and time (2026-12-20T00:00) in tz
        a date: its midnight     accepted: "r" (2026-12-19 to 2026-12-20T00:00:00Z, UTC)
        month 13                 from = "2026-13-01T00:00:00Z": is neither an RFC 3339 time (2026-12-20T00:00:00Z) nor a date and time (2026-12-20T00:00) in tz
        a multibyte day          weekly.from = "Fré 16:00": "Fré" is not a weekday (Mon, Tue, Wed, Thu, Fri, Sat, Sun)
    "#]]
    .assert_eq(&out);
}

/// Weekday times, dates and times with or without an offset (years 0000 to 9999, so at the
/// ends of what jiff and RFC 3339 hold), and any text.
const TIME_TEXT: &str = "((Mon|fri|Sunday) [0-2][0-9]:[0-5][0-9]|[0-9]{4}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9](:[0-5][0-9])?(Z|[+-][01][0-9]:[0-5][0-9])?|\\PC{0,24})";

proptest::proptest! {
    /// agent.toml is the operator's, but no text of it may take the agent down.
    #[test]
    fn any_text_is_a_window_or_an_error(
        from in TIME_TEXT,
        to in TIME_TEXT,
        tz in "(UTC|Europe/Amsterdam|\\PC{0,16})",
        secs in 0u64..253_402_300_799,
    ) {
        let made = [
            Window::weekly(&from, &to, &tz, "r"),
            Window::once(&from, &to, &tz, "r"),
        ];
        for w in made.into_iter().flatten() {
            let now = Timestamp::from_unix_secs(secs);
            let _ = (w.holds(now), w.refusal(now));
        }
    }
}
