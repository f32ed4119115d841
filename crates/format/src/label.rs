//! Label ordering.

use std::cmp::Ordering;

/// Compares two strings by UTF-16 code units, which is Java's `String.compareTo` and so
/// upstream's label order in every sorted output (spec 5.3).
///
/// This equals byte order except where a supplementary character (4-byte UTF-8, a surrogate
/// pair in UTF-16) meets a character in U+E000..=U+FFFF. Both strings share every byte
/// before the first difference; if that byte is inside a character, the two characters
/// have the same lead byte, hence the same length and the same relative order in both
/// encodings. So only a difference at lead bytes `0xEE..=0xEF` against `0xF0..` needs care.
pub fn cmp_utf16(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let common = common_prefix(a, b);
    match (a.get(common), b.get(common)) {
        (Some(&x), Some(&y)) => match (x, y) {
            (0xF0.., 0xEE..=0xEF) => Ordering::Less,
            (0xEE..=0xEF, 0xF0..) => Ordering::Greater,
            _ => x.cmp(&y),
        },
        _ => a.len().cmp(&b.len()),
    }
}

/// Length of the common prefix, a word at a time (this runs in every label sort).
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    const WORD: usize = std::mem::size_of::<u64>();
    let len = a.len().min(b.len());
    let mut i = 0;
    while i + WORD <= len {
        let word = |s: &[u8]| u64::from_le_bytes(s[i..i + WORD].try_into().expect("8 bytes"));
        let diff = word(a) ^ word(b);
        if diff != 0 {
            // Little-endian load: the lowest set bit is in the first differing byte.
            return i + diff.trailing_zeros() as usize / 8;
        }
        i += WORD;
    }
    i + a[i..len]
        .iter()
        .zip(&b[i..len])
        .take_while(|(x, y)| x == y)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_utf16_order_on_tricky_pairs() {
        let samples = [
            "",
            "a",
            "ab",
            "b",
            "//a:b",
            "//a/b:c",
            "//a:b/c",
            "@@x//y",
            "\u{7f}",
            "é",
            "ë",
            "\u{e000}",
            "\u{ffff}",
            "\u{fffd}x",
            "\u{10000}",
            "\u{1f600}",
            "a\u{1f600}",
            "a\u{ffff}",
            "a\u{e000}b",
            "\u{10ffff}",
            "//pkg:\u{1f600}z",
            "//pkg:\u{fe0f}",
            "//package:abcdefgh",
            "//package:abcdefgh\u{1f600}",
            "//package:abcdefgh\u{ffff}",
            "//package:abcdefgh\u{e9}",
            "//package:abcdefghij",
            "//package:abcdefgi",
        ];
        for a in samples {
            for b in samples {
                assert_eq!(
                    cmp_utf16(a, b),
                    a.encode_utf16().cmp(b.encode_utf16()),
                    "{a:?} vs {b:?}"
                );
            }
        }
    }

    #[test]
    fn differs_from_byte_order_for_supplementary_characters() {
        // U+1F600 is D83D DE00 in UTF-16, so it sorts before U+FFFF, unlike in UTF-8.
        assert_eq!(cmp_utf16("\u{1f600}", "\u{ffff}"), Ordering::Less);
        assert_eq!("\u{1f600}".cmp("\u{ffff}"), Ordering::Greater);
    }
}
