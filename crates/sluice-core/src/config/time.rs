//! The one timestamp form the configuration accepts: RFC 3339 in UTC,
//! `YYYY-MM-DDTHH:MM:SSZ`. Small enough not to need a date crate.

/// (year, month 1–12, day 1–31) of a day number since 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
pub fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y as u64, m as u64, d as u64)
}

/// Unix milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ` (what events and
/// records report).
pub fn format_rfc3339_millis(unix_ms: u64) -> String {
    rfc3339_millis(unix_ms).as_str().to_owned()
}

/// [`format_rfc3339_millis`] without an allocation: the text on the
/// stack, to be written where it goes (it serializes as the string).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Rfc3339Millis([u8; 24]);

impl Rfc3339Millis {
    pub fn as_str(&self) -> &str {
        // Always ASCII digits and separators: never the empty fallback.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::fmt::Debug for Rfc3339Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Rfc3339Millis {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Unix milliseconds as [`Rfc3339Millis`].
pub fn rfc3339_millis(unix_ms: u64) -> Rfc3339Millis {
    let secs = unix_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    // Written digit by digit: it is on every audit event.
    let mut out = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut v: u64| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, y.min(9999));
    put(5, 2, m);
    put(8, 2, d);
    put(11, 2, rem / 3600);
    put(14, 2, rem % 3600 / 60);
    put(17, 2, rem % 60);
    put(20, 3, unix_ms % 1000);
    Rfc3339Millis(out)
}

/// Unix seconds for `YYYY-MM-DDTHH:MM:SSZ`, or `None` if malformed.
pub fn parse_rfc3339_utc(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<u64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&mo) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if d == 0 || d > month_days[(mo - 1) as usize] {
        return None;
    }
    let days_before_year: u64 = (1970..y)
        .map(|yr| {
            if (yr % 4 == 0 && yr % 100 != 0) || yr % 400 == 0 {
                366
            } else {
                365
            }
        })
        .sum();
    let days_before_month: u64 = month_days[..(mo - 1) as usize].iter().sum();
    let days = days_before_year + days_before_month + d - 1;
    Some(days * 86_400 + h * 3600 + mi * 60 + se)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_what_it_parses_with_millis() {
        assert_eq!(format_rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_rfc3339_millis(951_782_400_123),
            "2000-02-29T00:00:00.123Z"
        );
        let t = parse_rfc3339_utc("2026-11-27T10:30:59Z").unwrap();
        assert_eq!(
            format_rfc3339_millis(t * 1000 + 7),
            "2026-11-27T10:30:59.007Z"
        );
        // The same text without an allocation, and as JSON.
        let stamp = rfc3339_millis(951_782_400_123);
        assert_eq!(stamp.as_str(), "2000-02-29T00:00:00.123Z");
        assert_eq!(
            serde_json::to_string(&stamp).unwrap(),
            "\"2000-02-29T00:00:00.123Z\""
        );
    }

    #[test]
    fn known_instants() {
        assert_eq!(parse_rfc3339_utc("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_utc("2000-02-29T12:00:00Z"), Some(951_825_600));
        assert_eq!(
            parse_rfc3339_utc("2026-11-27T09:30:00Z"),
            Some(1_795_771_800)
        );
    }

    #[test]
    fn malformed_is_none() {
        for s in [
            "2026-11-27",
            "2026-13-01T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2026-11-27T09:30:00+01:00",
            "x",
        ] {
            assert_eq!(parse_rfc3339_utc(s), None, "{s}");
        }
    }
}
