//! Dates, times and intervals between PostgreSQL's binary format and ISO 8601 text.
//!
//! PostgreSQL counts days and microseconds from 2000-01-01; `infinity` and `-infinity` are
//! the extreme integers. Output does its own calendar arithmetic, so every value the server
//! can hold (4713 BC to 294276 AD, and the infinities) renders without failing; input goes
//! through `chrono`'s ISO 8601 parsers.

use super::ValueError;
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Timelike};

const USECS_PER_SEC: i64 = 1_000_000;
const USECS_PER_DAY: i64 = 86_400 * USECS_PER_SEC;
/// Days from 1970-01-01 to 2000-01-01.
const PG_EPOCH_UNIX_DAYS: i64 = 10_957;

fn pg_epoch() -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2000, 1, 1).unwrap_or_default().and_time(NaiveTime::MIN)
}

/// Year, month, day of a day count from 1970-01-01 (proleptic Gregorian, year 0 = 1 BC).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Howard Hinnant's algorithm, http://howardhinnant.github.io/date_algorithms.html
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `YYYY-MM-DD`; years outside 0..=9999 get a sign (ISO 8601 expanded form).
fn format_civil(days_since_2000: i64) -> String {
    let (year, month, day) = civil_from_days(days_since_2000 + PG_EPOCH_UNIX_DAYS);
    match year {
        0..=9999 => format!("{year:04}-{month:02}-{day:02}"),
        y if y < 0 => format!("-{:04}-{month:02}-{day:02}", -y),
        y => format!("+{y}-{month:02}-{day:02}"),
    }
}

/// `.ffffff` without trailing zeros, or nothing for whole seconds.
fn fraction(micros: i64) -> String {
    if micros == 0 {
        return String::new();
    }
    format!(".{micros:06}").trim_end_matches('0').to_owned()
}

/// `HH:MM:SS[.ffffff]` of microseconds since midnight (24:00:00 included).
fn format_clock(micros: i64) -> String {
    let secs = micros.div_euclid(USECS_PER_SEC);
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    format!("{h:02}:{m:02}:{s:02}{}", fraction(micros.rem_euclid(USECS_PER_SEC)))
}

/// A `date` value.
pub(crate) fn format_date(days: i32) -> String {
    match days {
        i32::MAX => "infinity".to_owned(),
        i32::MIN => "-infinity".to_owned(),
        d => format_civil(i64::from(d)),
    }
}

/// A `time` value.
pub(crate) fn format_time(micros: i64) -> String {
    format_clock(micros)
}

/// A `timetz` value: time and UTC offset (PostgreSQL sends seconds *west* of UTC).
pub(crate) fn format_timetz(micros: i64, seconds_west: i32) -> String {
    let east = -i64::from(seconds_west);
    let sign = if east < 0 { '-' } else { '+' };
    let (h, m, s) = (east.abs() / 3600, east.abs() / 60 % 60, east.abs() % 60);
    let offset = if s == 0 { format!("{sign}{h:02}:{m:02}") } else { format!("{sign}{h:02}:{m:02}:{s:02}") };
    format!("{}{offset}", format_clock(micros))
}

/// A `timestamp` (`utc` false: `YYYY-MM-DDTHH:MM:SS[.ffffff]`) or `timestamptz` (`utc`
/// true: the same in UTC followed by `Z`).
pub(crate) fn format_timestamp(micros: i64, utc: bool) -> String {
    match micros {
        i64::MAX => "infinity".to_owned(),
        i64::MIN => "-infinity".to_owned(),
        m => {
            let date = format_civil(m.div_euclid(USECS_PER_DAY));
            let clock = format_clock(m.rem_euclid(USECS_PER_DAY));
            format!("{date}T{clock}{}", if utc { "Z" } else { "" })
        }
    }
}

/// An `interval` as an ISO 8601 duration, each field signed on its own the way PostgreSQL's
/// `IntervalStyle = iso_8601` prints it: `P1Y2M3DT4H5M6.5S`, `P-1M`, `PT-0.5S`, `PT0S`.
pub(crate) fn format_interval(micros: i64, days: i32, months: i32) -> String {
    let mut text = String::from("P");
    let (years, months) = (months / 12, months % 12);
    for (value, unit) in [(i64::from(years), 'Y'), (i64::from(months), 'M'), (i64::from(days), 'D')] {
        if value != 0 {
            text.push_str(&format!("{value}{unit}"));
        }
    }
    let (hours, rest) = (micros / (3600 * USECS_PER_SEC), micros % (3600 * USECS_PER_SEC));
    let (minutes, rest) = (rest / (60 * USECS_PER_SEC), rest % (60 * USECS_PER_SEC));
    if micros != 0 || text.len() == 1 {
        text.push('T');
        if hours != 0 {
            text.push_str(&format!("{hours}H"));
        }
        if minutes != 0 {
            text.push_str(&format!("{minutes}M"));
        }
        if rest != 0 || text.ends_with('T') {
            let sign = if rest < 0 { "-" } else { "" };
            let abs = rest.abs();
            text.push_str(&format!("{sign}{}{}S", abs / USECS_PER_SEC, fraction(abs % USECS_PER_SEC)));
        }
    }
    text
}

/// Parses a `date` parameter: `YYYY-MM-DD`, `infinity` or `-infinity`.
pub(crate) fn parse_date(text: &str) -> Result<i32, ValueError> {
    match text.trim() {
        "infinity" => return Ok(i32::MAX),
        "-infinity" => return Ok(i32::MIN),
        _ => {}
    }
    let date: NaiveDate = text
        .trim()
        .parse()
        .map_err(|_| ValueError::new(format!("{text:?} is not an ISO 8601 date (YYYY-MM-DD)")))?;
    let days = (date - pg_epoch().date()).num_days();
    i32::try_from(days).map_err(|_| ValueError::new(format!("{text:?} is out of range")))
}

/// Microseconds since midnight of a `NaiveTime` (a leap second counts as the second before).
fn clock_micros(time: NaiveTime) -> i64 {
    i64::from(time.num_seconds_from_midnight()) * USECS_PER_SEC
        + i64::from(time.nanosecond().min(999_999_999) / 1000)
}

/// Parses a `time` parameter: `HH:MM[:SS[.ffffff]]`.
pub(crate) fn parse_time(text: &str) -> Result<i64, ValueError> {
    let trimmed = text.trim();
    if trimmed == "24:00:00" || trimmed == "24:00" {
        return Ok(USECS_PER_DAY);
    }
    let time = NaiveTime::parse_from_str(trimmed, "%H:%M:%S%.f")
        .or_else(|_| NaiveTime::parse_from_str(trimmed, "%H:%M"))
        .map_err(|_| ValueError::new(format!("{text:?} is not an ISO 8601 time (HH:MM:SS[.ffffff])")))?;
    Ok(clock_micros(time))
}

/// ISO 8601 with `T` or a space between date and time.
fn with_t(text: &str) -> String {
    let mut text = text.trim().to_owned();
    if text.len() > 10 && text.as_bytes()[10] == b' ' {
        text.replace_range(10..11, "T");
    }
    text
}

fn micros_since_epoch(at: NaiveDateTime, text: &str) -> Result<i64, ValueError> {
    (at - pg_epoch()).num_microseconds().ok_or_else(|| ValueError::new(format!("{text:?} is out of range")))
}

/// Parses a `timestamp` parameter: `YYYY-MM-DDTHH:MM:SS[.ffffff]` (a space works too), or a
/// date alone (midnight). An offset, if given, is ignored, as PostgreSQL does for `timestamp`.
pub(crate) fn parse_timestamp(text: &str) -> Result<i64, ValueError> {
    let normalized = with_t(text);
    match normalized.as_str() {
        "infinity" => return Ok(i64::MAX),
        "-infinity" => return Ok(i64::MIN),
        _ => {}
    }
    let at = normalized
        .parse::<NaiveDateTime>()
        .ok()
        .or_else(|| DateTime::parse_from_rfc3339(&normalized).ok().map(|t| t.naive_local()))
        .or_else(|| normalized.parse::<NaiveDate>().ok().map(|d| d.and_time(NaiveTime::MIN)))
        .ok_or_else(|| {
            ValueError::new(format!("{text:?} is not an ISO 8601 timestamp (YYYY-MM-DDTHH:MM:SS[.ffffff])"))
        })?;
    micros_since_epoch(at, text)
}

/// Parses a `timestamptz` parameter: RFC 3339, with `Z` or an offset (`+02:00`).
pub(crate) fn parse_timestamptz(text: &str) -> Result<i64, ValueError> {
    let normalized = with_t(text);
    match normalized.as_str() {
        "infinity" => return Ok(i64::MAX),
        "-infinity" => return Ok(i64::MIN),
        _ => {}
    }
    match DateTime::parse_from_rfc3339(&normalized) {
        Ok(at) => micros_since_epoch(at.naive_utc(), text),
        Err(_) if normalized.parse::<NaiveDateTime>().is_ok() => {
            Err(ValueError::new(format!("{text:?} has no UTC offset; add Z or an offset such as +02:00")))
        }
        Err(_) => Err(ValueError::new(format!(
            "{text:?} is not an RFC 3339 timestamp (YYYY-MM-DDTHH:MM:SS[.ffffff]Z)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_timestamps_render_as_iso_8601() {
        assert_eq!(format_date(0), "2000-01-01");
        assert_eq!(format_date(-1), "1999-12-31");
        assert_eq!(format_date(59), "2000-02-29");
        assert_eq!(format_date(i32::MAX), "infinity");
        assert_eq!(format_date(i32::MIN), "-infinity");
        // 4714-11-24 BC (Julian day 0), the first day PostgreSQL knows, is year -4713.
        assert_eq!(format_date(-2_451_545), "-4713-11-24");
        assert_eq!(format_timestamp(0, false), "2000-01-01T00:00:00");
        assert_eq!(format_timestamp(-1, true), "1999-12-31T23:59:59.999999Z");
        assert_eq!(format_timestamp(USECS_PER_DAY + 1_500_000, true), "2000-01-02T00:00:01.5Z");
        assert_eq!(format_timestamp(i64::MAX, true), "infinity");
        assert_eq!(format_timestamp(i64::MIN, false), "-infinity");
        assert_eq!(format_time(USECS_PER_DAY), "24:00:00");
        assert_eq!(format_timetz(3_600_000_000, -19_800), "01:00:00+05:30");
        assert_eq!(format_timetz(0, 3600), "00:00:00-01:00");
    }

    #[test]
    fn intervals_render_as_iso_8601_durations() {
        let hms = (4 * 3600 + 5 * 60 + 6) * USECS_PER_SEC + 500_000;
        assert_eq!(format_interval(hms, 3, 14), "P1Y2M3DT4H5M6.5S");
        assert_eq!(format_interval(0, 0, 0), "PT0S");
        assert_eq!(format_interval(0, 0, -1), "P-1M");
        assert_eq!(format_interval(-500_000, 0, 0), "PT-0.5S");
        assert_eq!(format_interval(-hms, -3, 0), "P-3DT-4H-5M-6.5S");
        assert_eq!(format_interval(3600 * USECS_PER_SEC, 0, 0), "PT1H");
        assert_eq!(format_interval(0, 7, 0), "P7D");
    }

    #[test]
    fn parameters_parse_from_iso_8601() {
        assert_eq!(parse_date("2000-01-02"), Ok(1));
        assert_eq!(parse_date("infinity"), Ok(i32::MAX));
        assert!(parse_date("01/02/2000").is_err());
        assert_eq!(parse_time("00:00:01.25"), Ok(1_250_000));
        assert_eq!(parse_time("12:30"), Ok(45_000 * USECS_PER_SEC));
        assert_eq!(parse_timestamp("2000-01-01T00:00:01"), Ok(USECS_PER_SEC));
        assert_eq!(parse_timestamp("2000-01-01 00:00:01"), Ok(USECS_PER_SEC));
        assert_eq!(parse_timestamp("-infinity"), Ok(i64::MIN));
        assert_eq!(parse_timestamptz("2000-01-01T01:00:00+01:00"), Ok(0));
        assert_eq!(parse_timestamptz("2000-01-01 00:00:00.5Z"), Ok(500_000));
        assert!(parse_timestamptz("2000-01-01T00:00:00").unwrap_err().to_string().contains("offset"));
        assert_eq!(parse_timestamptz("infinity"), Ok(i64::MAX));
    }
}
