//! Label ordering.

use std::cmp::Ordering;

/// Compares two strings by UTF-16 code units, which is Java's `String.compareTo` and so
/// upstream's label order in every sorted output (spec 5.3).
///
/// This equals byte order except where a supplementary character (4-byte UTF-8, a surrogate
/// pair in UTF-16) meets a character in U+E000..=U+FFFF, so only the first differing
/// character is re-encoded.
pub fn cmp_utf16(a: &str, b: &str) -> Ordering {
    let common = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    // The first difference may be inside a multi-byte character; both strings share every
    // byte before it, so they share this character boundary too.
    let mut start = common;
    while !a.is_char_boundary(start) {
        start -= 1;
    }
    match (a[start..].chars().next(), b[start..].chars().next()) {
        (Some(x), Some(y)) => {
            let (mut bx, mut by) = ([0u16; 2], [0u16; 2]);
            x.encode_utf16(&mut bx).cmp(&y.encode_utf16(&mut by))
        }
        _ => a.len().cmp(&b.len()),
    }
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
