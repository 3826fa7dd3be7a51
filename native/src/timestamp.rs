//! RFC 3339 timestamps of the one shape producers send, converted to epoch seconds bit for bit as
//! Python's `datetime.fromisoformat(s).timestamp()` does.
//!
//! Python computes an aware datetime's timestamp as exact integer microseconds since the epoch divided
//! by 10**6 with int/int true division, which is correctly rounded. Within the years this accepts the
//! microsecond count is below 2**53, so `micros as f64 / 1e6` is that same single rounding.

/// Epoch seconds of `YYYY-MM-DDTHH:MM:SS[.fff|.ffffff](Z|+HH:MM|-HH:MM)`, or None for anything else
/// (lowercase `t`/`z`, other fraction lengths, no offset, impossible dates...): those go to the exact
/// Python decoder, so refusing here is always safe.
pub fn parse(s: &[u8]) -> Option<f64> {
    let micros = parse_micros(s)?;
    Some(micros as f64 / 1e6)
}

fn parse_micros(s: &[u8]) -> Option<i64> {
    if s.len() < 20 {
        return None;
    }
    let year = digits(s, 0, 4)?;
    let month = digits(s, 5, 2)?;
    let day = digits(s, 8, 2)?;
    let hour = digits(s, 11, 2)?;
    let minute = digits(s, 14, 2)?;
    let second = digits(s, 17, 2)?;
    if s[4] != b'-' || s[7] != b'-' || s[10] != b'T' || s[13] != b':' || s[16] != b':' {
        return None;
    }
    // Year 0 does not exist for Python's datetime; seconds == 60 (leap second) is refused by it too.
    if year < 1 || !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut pos = 19;
    let mut fraction = 0;
    if s[pos] == b'.' {
        let n = s[pos + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        fraction = match n {
            3 => digits(s, pos + 1, 3)? * 1000,
            6 => digits(s, pos + 1, 6)?,
            _ => return None,
        };
        pos += 1 + n;
    }
    let offset = match &s[pos..] {
        [b'Z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (oh, om) = (digits(s, pos + 1, 2)?, digits(s, pos + 4, 2)?);
            // Python's timezone needs |offset| strictly below 24 hours.
            if oh > 23 || om > 59 {
                return None;
            }
            let seconds = oh * 3600 + om * 60;
            if *sign == b'-' {
                -seconds
            } else {
                seconds
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    Some(seconds * 1_000_000 + fraction)
}

fn digits(s: &[u8], at: usize, n: usize) -> Option<i64> {
    let field = s.get(at..at + n)?;
    let mut value = 0i64;
    for &c in field {
        if !c.is_ascii_digit() {
            return None;
        }
        value = value * 10 + i64::from(c - b'0');
    }
    Some(value)
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm: counting years from
/// March puts the leap day last, so a day of the year is a closed formula).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::parse;

    fn ts(s: &str) -> Option<f64> {
        parse(s.as_bytes())
    }

    #[test]
    fn epoch_and_offsets() {
        assert_eq!(ts("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(ts("2026-11-20T00:00:00.000Z"), Some(1_795_132_800.0));
        assert_eq!(ts("2026-11-20T05:30:00+05:30"), Some(1_795_132_800.0));
        assert_eq!(ts("2026-11-19T19:00:00-05:00"), Some(1_795_132_800.0));
        assert_eq!(ts("2026-11-20T00:00:00-00:00"), Some(1_795_132_800.0));
        assert_eq!(ts("2000-01-01T00:00:00Z"), Some(946_684_800.0));
    }

    #[test]
    fn fractions_round_once() {
        // Python: datetime.fromisoformat("2026-11-20T00:00:05.400Z").timestamp() == 1795132805.4
        assert_eq!(ts("2026-11-20T00:00:05.400Z"), Some(1_795_132_805.4));
        assert_eq!(ts("2026-11-20T00:00:05.400000Z"), Some(1_795_132_805.4));
        assert_eq!(ts("2026-11-20T00:00:05.000001Z"), Some(1_795_132_805.000_001));
        assert_eq!(ts("2026-11-20T00:00:05.999999Z").unwrap().to_bits(), (1_795_132_805_999_999_f64 / 1e6).to_bits());
    }

    #[test]
    fn leap_days() {
        assert_eq!(ts("2024-02-29T00:00:00Z"), Some(1_709_164_800.0));
        assert_eq!(ts("2000-02-29T00:00:00Z"), Some(951_782_400.0));
        assert_eq!(ts("2023-02-29T00:00:00Z"), None);
        assert_eq!(ts("2100-02-29T00:00:00Z"), None);
        assert_eq!(ts("2024-04-31T00:00:00Z"), None);
    }

    #[test]
    fn refuses_other_shapes() {
        for s in [
            "2026-11-20t00:00:00Z",
            "2026-11-20T00:00:00z",
            "2026-11-20 00:00:00Z",
            "2026-11-20T00:00:00",
            "2026-11-20T00:00:00.1Z",
            "2026-11-20T00:00:00.1234567Z",
            "2026-11-20T00:00:00.Z",
            "2026-11-20T24:00:00Z",
            "2026-11-20T23:60:00Z",
            "2026-11-20T23:59:60Z",
            "2026-13-01T00:00:00Z",
            "2026-00-01T00:00:00Z",
            "2026-01-00T00:00:00Z",
            "0000-01-01T00:00:00Z",
            "2026-11-20T00:00:00+24:00",
            "2026-11-20T00:00:00+05:60",
            "2026-11-20T00:00:00+0530",
            "2026-11-20T00:00:00+05:30:00",
            "2026-11-20T00:00:00ZZ",
            "2026-11-20T00:00:00Z ",
            "+026-11-20T00:00:00Z",
            "2026-1-20T00:00:00Z",
            "",
        ] {
            assert_eq!(ts(s), None, "{s}");
        }
    }
}
