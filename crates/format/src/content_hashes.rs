//! The `--contentHashPath` file (spec 5.5): a flat object from path to an arbitrary string
//! that is hashed instead of the file's bytes.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use serde::de::{MapAccess, Visitor};

use crate::error::{ParseError, ReadError, ValueError};
use crate::hashes::read_file;
use crate::json_read::{parse_object, Key, Loose, LooseSeed, SkipObject, Slot};

/// Path (workspace-relative, or `external/<repo>/<path>`) to content hash string.
pub type ContentHashes = HashMap<String, String>;

/// Reads a content hash file.
pub fn read_content_hashes(path: &Path) -> Result<ContentHashes, ReadError> {
    read_file(path, "content hash", parse_content_hashes)
}

/// Parses a content hash file. Values must be strings.
pub fn parse_content_hashes(bytes: &[u8]) -> Result<ContentHashes, ParseError> {
    let slot = Slot::default();
    parse_object(bytes, &slot, ContentHashesVisitor { slot: &slot })
}

struct ContentHashesVisitor<'s> {
    slot: &'s Slot,
}

impl<'de> Visitor<'de> for ContentHashesVisitor<'_> {
    type Value = ContentHashes;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of path to content hash")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ContentHashes, A::Error> {
        let mut hashes = ContentHashes::new();
        while let Some(Key(path)) = map.next_key()? {
            match map.next_value_seed(LooseSeed(SkipObject))? {
                Loose::Str(hash) => {
                    hashes.insert(path.into_owned(), hash.into_owned());
                }
                other => {
                    let source = ValueError::WrongType {
                        expected: "a string",
                        found: other.found(),
                    };
                    return Err(self.slot.bad_value(&path, source));
                }
            }
        }
        Ok(hashes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_path_to_string() {
        let hashes =
            parse_content_hashes(br#"{"a/b.txt": "abc", "external/r/x": ""}"#).expect("valid");
        assert_eq!(hashes.len(), 2);
        assert_eq!(hashes["a/b.txt"], "abc");
        assert_eq!(hashes["external/r/x"], "");
    }

    #[test]
    fn rejects_non_string_values() {
        let err = parse_content_hashes(br#"{"a": 1}"#).expect_err("must fail");
        assert_eq!(
            err.to_string(),
            r#"bad value for "a": expected a string, found a number"#
        );
        let err = parse_content_hashes(b"[]").expect_err("must fail");
        assert!(matches!(err, ParseError::NotAnObject { found: "an array" }));
    }
}
