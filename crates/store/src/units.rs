//! Parsing (and printing) the durations and sizes of CLI flags such as `--max-age 7d`
//! and `--max-bytes 10GB`.

use std::time::Duration;

/// A duration flag value that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason} (examples: 90s, 45m, 12h, 7d, 1d12h30m)")]
pub struct ParseDurationError {
    pub input: String,
    pub reason: String,
}

/// A size flag value that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size {input:?}: {reason} (examples: 1024, 500MB, 10GiB, 1.5T; units are powers of 1024)")]
pub struct ParseSizeError {
    pub input: String,
    pub reason: String,
}

const DURATION_UNITS: [(char, u64); 5] = [
    ('w', 7 * 86_400),
    ('d', 86_400),
    ('h', 3600),
    ('m', 60),
    ('s', 1),
];

/// Parses `<number><unit>` groups, units `w d h m s` from largest to smallest, each at
/// most once: `90s`, `12h`, `7d`, `1d12h30m`. A bare number is rejected (seconds or
/// minutes? the flag would be ambiguous).
pub fn parse_duration(input: &str) -> Result<Duration, ParseDurationError> {
    let fail = |reason: String| ParseDurationError {
        input: input.to_owned(),
        reason,
    };
    let text = input.trim();
    if text.is_empty() {
        return Err(fail("it is empty".into()));
    }
    let mut total: u64 = 0;
    let mut smallest_so_far = usize::MAX; // index into DURATION_UNITS of the last unit
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(fail(format!("expected a number at {rest:?}")));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| fail("the number is too large".into()))?;
        rest = &rest[digits..];
        let Some(unit) = rest.chars().next() else {
            return Err(fail(format!("{number} has no unit")));
        };
        let Some(index) = DURATION_UNITS.iter().position(|&(u, _)| u == unit) else {
            return Err(fail(format!("unknown unit {unit:?}; use w, d, h, m or s")));
        };
        if smallest_so_far != usize::MAX && index <= smallest_so_far {
            return Err(fail(
                "units must go from largest to smallest, each at most once".into(),
            ));
        }
        smallest_so_far = index;
        rest = &rest[unit.len_utf8()..];
        total = number
            .checked_mul(DURATION_UNITS[index].1)
            .and_then(|secs| total.checked_add(secs))
            .ok_or_else(|| fail("the duration is too large".into()))?;
    }
    Ok(Duration::from_secs(total))
}

/// Formats whole seconds in the syntax [`parse_duration`] reads: `1d12h30m`, `0s`.
pub fn format_duration(duration: Duration) -> String {
    let mut secs = duration.as_secs();
    if secs == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in DURATION_UNITS {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

const SIZE_UNITS: [&str; 6] = ["", "K", "M", "G", "T", "P"];

/// Parses a byte count: a number with an optional unit `K`, `M`, `G`, `T`, `P` (each
/// optionally followed by `B` or `iB`, any case), all powers of 1024; a fraction is allowed
/// with a unit and rounded down to whole bytes. `1024`, `500mb`, `10GB`, `1.5 TiB`.
pub fn parse_size(input: &str) -> Result<u64, ParseSizeError> {
    let fail = |reason: String| ParseSizeError {
        input: input.to_owned(),
        reason,
    };
    let text = input.trim();
    let number_len = text
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.')
        .count();
    let (number, unit) = text.split_at(number_len);
    let unit = unit.trim_start().to_ascii_uppercase();
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || (number.contains('.') && fraction.is_empty()) || fraction.contains('.') {
        return Err(fail("expected a number such as 10 or 1.5".into()));
    }
    let unit_core = unit
        .strip_suffix("IB")
        .or_else(|| unit.strip_suffix('B'))
        .unwrap_or(&unit);
    let Some(power) = SIZE_UNITS.iter().position(|u| *u == unit_core) else {
        return Err(fail(format!(
            "unknown unit {unit:?}; use B, K, M, G, T or P"
        )));
    };
    if unit == "IB" {
        return Err(fail("unknown unit \"iB\"; use B, K, M, G, T or P".into()));
    }
    if power == 0 && !fraction.is_empty() {
        return Err(fail("a byte count must be whole".into()));
    }
    let multiplier = 1u128 << (10 * power);
    let too_large = || fail("the size is too large".into());
    let whole: u128 = whole.parse().map_err(|_| too_large())?;
    let mut bytes = whole.checked_mul(multiplier).ok_or_else(too_large)?;
    if !fraction.is_empty() {
        let digits = u32::try_from(fraction.len()).map_err(|_| too_large())?;
        let scale = 10u128.checked_pow(digits).ok_or_else(too_large)?;
        let numerator: u128 = fraction.parse().map_err(|_| too_large())?;
        bytes += numerator.checked_mul(multiplier).ok_or_else(too_large)? / scale;
    }
    u64::try_from(bytes).map_err(|_| too_large())
}

/// Formats a byte count for humans with binary units: `512 B`, `1.5 KiB`, `10.0 GiB`.
pub fn format_size(bytes: u64) -> String {
    let mut power = 0;
    while power + 1 < SIZE_UNITS.len() && bytes >= 1u64 << (10 * (power + 1)) {
        power += 1;
    }
    if power == 0 {
        return format!("{bytes} B");
    }
    let value = bytes as f64 / (1u64 << (10 * power)) as f64;
    format!("{value:.1} {}iB", SIZE_UNITS[power])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let d = |s| parse_duration(s).map(|d| d.as_secs());
        assert_eq!(d("90s"), Ok(90));
        assert_eq!(d("12h"), Ok(12 * 3600));
        assert_eq!(d("7d"), Ok(7 * 86_400));
        assert_eq!(d("1d12h30m"), Ok(86_400 + 12 * 3600 + 30 * 60));
        assert_eq!(d("2w"), Ok(14 * 86_400));
        assert_eq!(d(" 0s "), Ok(0));
    }

    #[test]
    fn duration_errors_are_specific() {
        for (input, says) in [
            ("", "empty"),
            ("90", "no unit"),
            ("5y", "unknown unit"),
            ("30m1h", "largest to smallest"),
            ("1h1h", "largest to smallest"),
            ("h", "expected a number"),
            ("1.5h", "unknown unit"),
            ("-1d", "expected a number"),
            ("99999999999999999999s", "too large"),
            ("9999999999999999w", "too large"),
        ] {
            let err = parse_duration(input).expect_err(input).to_string();
            assert!(err.contains(says), "{input:?}: {err}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1b"), Ok(1));
        assert_eq!(parse_size("500mb"), Ok(500 << 20));
        assert_eq!(parse_size("10GB"), Ok(10 << 30));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("10 GiB"), Ok(10 << 30));
        assert_eq!(parse_size("1.5T"), Ok(3 << 39));
        assert_eq!(parse_size("1.0000001K"), Ok(1024));
        assert_eq!(parse_size("16P"), Ok(16 << 50));
    }

    #[test]
    fn size_errors_are_specific() {
        for (input, says) in [
            ("", "expected a number"),
            ("GB", "expected a number"),
            ("1.5", "whole"),
            ("1.", "expected a number"),
            ("1.2.3K", "expected a number"),
            ("10XB", "unknown unit"),
            ("10iB", "unknown unit"),
            ("-5", "expected a number"),
            ("16384P", "too large"),
            ("99999999999999999999999999999999999999999", "too large"),
        ] {
            let err = parse_size(input).expect_err(input).to_string();
            assert!(err.contains(says), "{input:?}: {err}");
        }
    }

    #[test]
    fn formatting_round_trips() {
        for secs in [0, 59, 60, 3600, 90_061, 1_209_600 + 1] {
            let text = format_duration(Duration::from_secs(secs));
            assert_eq!(
                parse_duration(&text).map(|d| d.as_secs()),
                Ok(secs),
                "{text}"
            );
        }
        assert_eq!(
            format_duration(Duration::from_secs(86_400 + 12 * 3600 + 30 * 60)),
            "1d12h30m"
        );
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(1536), "1.5 KiB");
        assert_eq!(format_size(10 << 30), "10.0 GiB");
    }
}
