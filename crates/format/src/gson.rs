//! A minimal JSON writer producing exactly what upstream's Gson
//! (`setPrettyPrinting().disableHtmlEscaping()`) produces: two-space indent, `"key": value`,
//! `{}`/`[]` for empty containers, no trailing newline, and Gson's string escapes.

use std::io::{self, Write};

use crate::contract::INDENT;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scope {
    EmptyObject,
    NonEmptyObject,
    /// An object whose next value belongs to a name already written.
    DanglingName,
    EmptyArray,
    NonEmptyArray,
}

/// Streaming pretty writer. Output is assembled in an internal buffer (appending to a `Vec`
/// is far cheaper than many small `Write` calls) and handed to `out` in large chunks.
/// Callers must nest calls correctly; misuse is a bug in this crate and is only checked in
/// debug builds.
pub(crate) struct Pretty<W: Write> {
    out: W,
    buf: Vec<u8>,
    stack: Vec<Scope>,
}

/// Buffered bytes that trigger a write to the underlying writer.
const FLUSH_AT: usize = 1 << 16;

impl<W: Write> Pretty<W> {
    pub(crate) fn new(out: W) -> Self {
        Pretty {
            out,
            buf: Vec::with_capacity(FLUSH_AT + 1024),
            stack: Vec::new(),
        }
    }

    /// Writes what is buffered and flushes the underlying writer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        debug_assert!(self.stack.is_empty(), "unclosed JSON container");
        self.out.write_all(&self.buf)?;
        self.out.flush()?;
        Ok(self.out)
    }

    pub(crate) fn begin_object(&mut self) -> io::Result<()> {
        self.before_value();
        self.stack.push(Scope::EmptyObject);
        self.buf.push(b'{');
        Ok(())
    }

    pub(crate) fn end_object(&mut self) -> io::Result<()> {
        self.close(Scope::NonEmptyObject, Scope::EmptyObject, b'}');
        self.spill()
    }

    pub(crate) fn begin_array(&mut self) -> io::Result<()> {
        self.before_value();
        self.stack.push(Scope::EmptyArray);
        self.buf.push(b'[');
        Ok(())
    }

    pub(crate) fn end_array(&mut self) -> io::Result<()> {
        self.close(Scope::NonEmptyArray, Scope::EmptyArray, b']');
        self.spill()
    }

    pub(crate) fn name(&mut self, name: &str) -> io::Result<()> {
        match self.stack.last_mut() {
            Some(scope @ Scope::NonEmptyObject) => {
                *scope = Scope::DanglingName;
                self.buf.push(b',');
            }
            Some(scope @ Scope::EmptyObject) => *scope = Scope::DanglingName,
            other => debug_assert!(false, "name() outside an object: {other:?}"),
        }
        self.newline();
        self.buf.push(b'"');
        escape_into(&mut self.buf, name);
        self.buf.push(b'"');
        Ok(())
    }

    pub(crate) fn string(&mut self, value: &str) -> io::Result<()> {
        self.string_parts(&[value])
    }

    /// One string value made of several pieces, written without concatenating them first.
    pub(crate) fn string_parts(&mut self, parts: &[&str]) -> io::Result<()> {
        self.before_value();
        self.buf.push(b'"');
        for part in parts {
            escape_into(&mut self.buf, part);
        }
        self.buf.push(b'"');
        self.spill()
    }

    pub(crate) fn number(&mut self, value: u64) -> io::Result<()> {
        self.before_value();
        self.buf.extend_from_slice(value.to_string().as_bytes());
        self.spill()
    }

    fn spill(&mut self) -> io::Result<()> {
        if self.buf.len() >= FLUSH_AT {
            self.out.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    fn before_value(&mut self) {
        match self.stack.last_mut() {
            None => {}
            Some(scope @ Scope::DanglingName) => {
                *scope = Scope::NonEmptyObject;
                self.buf.extend_from_slice(b": ");
            }
            Some(scope @ Scope::EmptyArray) => {
                *scope = Scope::NonEmptyArray;
                self.newline();
            }
            Some(Scope::NonEmptyArray) => {
                self.buf.push(b',');
                self.newline();
            }
            Some(other) => debug_assert!(false, "value without a name in {other:?}"),
        }
    }

    fn close(&mut self, non_empty: Scope, empty: Scope, bracket: u8) {
        let scope = self.stack.pop();
        debug_assert!(scope == Some(non_empty) || scope == Some(empty));
        if scope == Some(non_empty) {
            self.newline();
        }
        self.buf.push(bracket);
    }

    fn newline(&mut self) {
        self.buf.push(b'\n');
        for _ in 0..self.stack.len() {
            self.buf.extend_from_slice(INDENT.as_bytes());
        }
    }
}

/// True for bytes that may start a Gson escape: `"`, `\\`, control characters, and 0xE2
/// (first byte of U+2028/U+2029).
fn may_need_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\' || b == 0xe2
}

/// Appends `s` with Gson's string escapes (HTML escaping disabled): `"` and `\\`, the short
/// forms `\t \b \n \r \f`, other control characters as lowercase `\u00xx`, and U+2028 and
/// U+2029 (which Gson always escapes). Everything else is copied as UTF-8.
pub(crate) fn escape_into(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    // Escapes are rare: skip clean 16-byte blocks with a branch-free test the compiler
    // vectorises, then go byte by byte.
    let mut i = 0;
    for block in bytes.chunks_exact(16) {
        if block.iter().fold(false, |any, &b| any | may_need_escape(b)) {
            break;
        }
        i += 16;
    }
    let mut clean_from = 0;
    while i < bytes.len() {
        let escape: &[u8] = match bytes[i] {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            0x0c => b"\\f",
            c @ 0..=0x1f => {
                out.extend_from_slice(&bytes[clean_from..i]);
                out.extend_from_slice(format!("\\u{c:04x}").as_bytes());
                i += 1;
                clean_from = i;
                continue;
            }
            // U+2028 and U+2029 are E2 80 A8 and E2 80 A9 in UTF-8.
            0xe2 if bytes.get(i + 1) == Some(&0x80) && bytes.get(i + 2) == Some(&0xa8) => {
                b"\\u2028"
            }
            0xe2 if bytes.get(i + 1) == Some(&0x80) && bytes.get(i + 2) == Some(&0xa9) => {
                b"\\u2029"
            }
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&bytes[clean_from..i]);
        out.extend_from_slice(escape);
        // Every escaped sequence is one byte long except U+2028/U+2029 (three).
        i += if bytes[i] == 0xe2 { 3 } else { 1 };
        clean_from = i;
    }
    out.extend_from_slice(&bytes[clean_from..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(s: &str) -> String {
        let mut out = vec![b'"'];
        escape_into(&mut out, s);
        out.push(b'"');
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn escapes_like_gson_without_html_escaping() {
        assert_eq!(escaped("//a:b"), r#""//a:b""#);
        assert_eq!(escaped("<a href='x'>&=</a>"), r#""<a href='x'>&=</a>""#);
        assert_eq!(escaped("q\"b\\s/"), r#""q\"b\\s/""#);
        assert_eq!(escaped("\t\u{8}\n\r\u{c}"), r#""\t\b\n\r\f""#);
        assert_eq!(escaped("\u{0}\u{1f}\u{7f}"), "\"\\u0000\\u001f\u{7f}\"");
        assert_eq!(escaped("a\u{2028}b\u{2029}c"), r#""a\u2028b\u2029c""#);
        assert_eq!(escaped("é\u{2027}\u{1f600}"), "\"é\u{2027}\u{1f600}\"");
        // Escapes after the vectorised prefix scan, and a lone 0xE2 lead byte.
        let long = format!("{}\"{}\u{2028}\u{2010}", "a".repeat(40), "b".repeat(20));
        let want = format!(
            "\"{}\\\"{}\\u2028\u{2010}\"",
            "a".repeat(40),
            "b".repeat(20)
        );
        assert_eq!(escaped(&long), want);
    }

    #[test]
    fn escaped_strings_decode_to_the_original() {
        // Every BMP character up to U+3000 and a few astral ones, at every block offset.
        let chars: Vec<char> = (0..0x3000u32)
            .chain([
                0xd7ff, 0xe000, 0xfeff, 0xffff, 0x1_0000, 0x1_f600, 0x10_ffff,
            ])
            .filter_map(char::from_u32)
            .collect();
        for chunk in chars.chunks(37) {
            for pad in 0..17 {
                let original: String = "x".repeat(pad) + &chunk.iter().collect::<String>();
                let json = escaped(&original);
                let decoded: String = serde_json::from_str(&json).expect("valid JSON string");
                assert_eq!(decoded, original);
            }
        }
    }

    fn nested_document() -> io::Result<Vec<u8>> {
        let mut w = Pretty::new(Vec::new());
        w.begin_object()?;
        w.name("a")?;
        w.string("x")?;
        w.name("empty")?;
        w.begin_object()?;
        w.end_object()?;
        w.name("list")?;
        w.begin_array()?;
        w.begin_object()?;
        w.name("n")?;
        w.number(3)?;
        w.end_object()?;
        w.string("s")?;
        w.begin_array()?;
        w.end_array()?;
        w.end_array()?;
        w.end_object()?;
        w.finish()
    }

    #[test]
    fn pretty_layout_matches_gson() {
        let doc = nested_document().expect("vec write");
        let expected = "{\n  \"a\": \"x\",\n  \"empty\": {},\n  \"list\": [\n    {\n      \
                        \"n\": 3\n    },\n    \"s\",\n    []\n  ]\n}";
        assert_eq!(String::from_utf8(doc).expect("utf8"), expected);
    }
}
