//! The probe result, which can only serialize to a valid contract object.

/// What a probe found out about a workspace's activity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activity {
    /// Active within the last 60 seconds: `{"has_activity": true}`.
    ActiveNow,
    /// Not active now, last activity unknown: `{"has_activity": false}`.
    Idle,
    /// Last active at this time (Unix milliseconds): `{"last_activity": "<RFC 3339>"}`.
    LastAt(i64),
    /// The probe cannot tell: `{"last_activity": null}`.
    Unknown,
}

impl Activity {
    /// Active within the last 60 seconds.
    pub fn active_now() -> Self {
        Activity::ActiveNow
    }

    /// Not active now.
    pub fn idle() -> Self {
        Activity::Idle
    }

    /// Last active at `unix_ms` (milliseconds since the Unix epoch). A time outside the years
    /// 0000–9999 (microseconds passed by mistake) is written as the nearest one inside, which
    /// the host refuses as in the future.
    pub fn last_at(unix_ms: i64) -> Self {
        Activity::LastAt(unix_ms)
    }

    /// Last active at an RFC 3339 timestamp; `None` if it does not parse.
    pub fn last_at_rfc3339(timestamp: &str) -> Option<Self> {
        parse_rfc3339(timestamp).map(Activity::LastAt)
    }

    /// Activity cannot be determined.
    pub fn unknown() -> Self {
        Activity::Unknown
    }

    /// The contract JSON for this result.
    pub fn to_json(&self) -> String {
        match self {
            Activity::ActiveNow => r#"{"has_activity":true}"#.to_string(),
            Activity::Idle => r#"{"has_activity":false}"#.to_string(),
            Activity::LastAt(ms) => format!(r#"{{"last_activity":"{}"}}"#, format_rfc3339(*ms)),
            Activity::Unknown => r#"{"last_activity":null}"#.to_string(),
        }
    }
}

/// Parse an RFC 3339 timestamp (`Z` or `±hh:mm`, optional fraction) to Unix milliseconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes().all(|c| c.is_ascii_digit()).then(|| part.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut millis = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        let padded = format!("{:0<3}", &frac[..digits.min(3)]);
        millis = padded.parse::<i64>().ok()?;
        rest = &frac[digits..];
    }
    let offset_minutes = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let h: i64 = rest[1..3].parse().ok()?;
            let m: i64 = rest[4..6].parse().ok()?;
            sign * (h * 60 + m)
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    Some(secs * 1000 + millis)
}

/// The latest time RFC 3339 can write (9999-12-31T23:59:59.999Z), in Unix milliseconds.
const LATEST_RFC3339_MS: i64 = 253_402_300_799_999;

/// Format Unix milliseconds as RFC 3339 UTC with millisecond precision. A time outside the
/// years 0000–9999 (microseconds passed for milliseconds, say) is written as the nearest one
/// inside: still a timestamp, which the host then refuses as in the future or accepts as
/// long ago, rather than text it cannot read.
pub fn format_rfc3339(unix_ms: i64) -> String {
    let unix_ms = unix_ms.clamp(-62_167_219_200_000, LATEST_RFC3339_MS);
    let secs = unix_ms.div_euclid(1000);
    let ms = unix_ms.rem_euclid(1000);
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

// Howard Hinnant's civil-date algorithms.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_and_accepts_offsets() {
        let ms = parse_rfc3339("2026-11-29T11:28:24.123Z").unwrap();
        assert_eq!(ms, 1_795_951_704_123);
        assert_eq!(format_rfc3339(ms), "2026-11-29T11:28:24.123Z");
        assert_eq!(parse_rfc3339("2026-11-29T11:28:24+00:00"), Some(1_795_951_704_000));
        assert_eq!(parse_rfc3339("2026-11-29T12:28:24.123456+01:00"), Some(ms));
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
    }

    #[test]
    fn rfc3339_rejects_garbage() {
        for bad in [
            "",
            "yesterday",
            "2026-11-29",
            "2026-11-29T11:28:24",
            "2026-13-01T00:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_time_beyond_year_9999_is_still_a_timestamp() {
        // Microseconds where milliseconds were meant: year 58 900-something, which RFC 3339
        // cannot write; the nearest time it can is the host's to refuse as in the future.
        let micros = Activity::last_at(1_795_951_704_123_000).to_json();
        assert_eq!(micros, r#"{"last_activity":"9999-12-31T23:59:59.999Z"}"#);
        assert_eq!(parse_rfc3339("9999-12-31T23:59:59.999Z"), Some(LATEST_RFC3339_MS));
        assert_eq!(format_rfc3339(i64::MIN), "0000-01-01T00:00:00.000Z");
    }

    #[test]
    fn every_activity_is_a_contract_object() {
        assert_eq!(Activity::active_now().to_json(), r#"{"has_activity":true}"#);
        assert_eq!(Activity::idle().to_json(), r#"{"has_activity":false}"#);
        assert_eq!(Activity::unknown().to_json(), r#"{"last_activity":null}"#);
        assert_eq!(
            Activity::last_at(0).to_json(),
            r#"{"last_activity":"1970-01-01T00:00:00.000Z"}"#
        );
    }
}
