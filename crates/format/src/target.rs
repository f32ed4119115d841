//! Target types and the per-target hash value `[<Type>#]<overall>~<direct>` (spec 5.1).

use std::fmt::{self, Write as _};
use std::str::FromStr;

use crate::contract::{GENERATED_FILE, HASH_SEPARATOR, RULE, SOURCE_FILE, TYPE_SEPARATOR};

/// The target kinds bazel-diff hashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TargetType {
    Rule,
    SourceFile,
    GeneratedFile,
}

/// A type name given by a user (`--targetType`) that is not one of [`TargetType`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown target type \"{0}\" (expected Rule, SourceFile or GeneratedFile)")]
pub struct UnknownTargetType(pub String);

impl TargetType {
    /// All types, in declaration order.
    pub const ALL: [TargetType; 3] = [
        TargetType::Rule,
        TargetType::SourceFile,
        TargetType::GeneratedFile,
    ];

    /// Parses a type name exactly as upstream spells it (case-sensitive).
    pub fn parse(name: &str) -> Result<Self, UnknownTargetType> {
        match name {
            RULE => Ok(TargetType::Rule),
            SOURCE_FILE => Ok(TargetType::SourceFile),
            GENERATED_FILE => Ok(TargetType::GeneratedFile),
            _ => Err(UnknownTargetType(name.to_owned())),
        }
    }

    /// The name used in hash values and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetType::Rule => RULE,
            TargetType::SourceFile => SOURCE_FILE,
            TargetType::GeneratedFile => GENERATED_FILE,
        }
    }
}

impl FromStr for TargetType {
    type Err = UnknownTargetType;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for TargetType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The type prefix of a hash value. Files may carry type names we do not know (a newer or
/// patched generator); they are kept verbatim so they compare and round-trip unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TypeTag {
    Known(TargetType),
    Other(Box<str>),
}

impl TypeTag {
    /// The tag for a type name; `None` for the empty name, which upstream treats as "no type".
    pub fn from_name(name: &str) -> Option<Self> {
        if name.is_empty() {
            return None;
        }
        Some(match TargetType::parse(name) {
            Ok(known) => TypeTag::Known(known),
            Err(_) => TypeTag::Other(name.into()),
        })
    }

    /// The type name as written in the file.
    pub fn as_str(&self) -> &str {
        match self {
            TypeTag::Known(t) => t.as_str(),
            TypeTag::Other(name) => name,
        }
    }

    /// The known type, if it is one.
    pub fn known(&self) -> Option<TargetType> {
        match self {
            TypeTag::Known(t) => Some(*t),
            TypeTag::Other(_) => None,
        }
    }
}

impl From<TargetType> for TypeTag {
    fn from(t: TargetType) -> Self {
        TypeTag::Known(t)
    }
}

/// A hash value that does not follow `[<Type>#]<overall>~<direct>`. The message is upstream's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Invalid targetHash format: {value}")]
pub struct TargetHashError {
    /// The offending value, as read (or as it would have been written).
    pub value: String,
}

/// The hash of one target: optional type, overall digest and direct digest.
///
/// Equality (`==`, `Hash`) is upstream's target identity (spec 6.1): type, overall and direct
/// digest all equal. Because no part may contain a separator, this is the same as comparing
/// the strings `type#overall~direct`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TargetHash {
    tag: Option<TypeTag>,
    // `overall~direct` in one allocation: files hold ~10^5 of these and are parsed eagerly.
    digests: Box<str>,
    direct_start: usize,
}

impl TargetHash {
    /// Builds a hash value. Fails if a digest contains `#` or `~`, or the type contains `#`,
    /// since the value could then not be read back.
    pub fn new(
        target_type: Option<TypeTag>,
        overall: &str,
        direct: &str,
    ) -> Result<Self, TargetHashError> {
        let bad_digest = |s: &str| s.contains([TYPE_SEPARATOR, HASH_SEPARATOR]);
        let tag = target_type.and_then(|t| TypeTag::from_name(t.as_str()));
        let bad_type = tag
            .as_ref()
            .is_some_and(|t| t.as_str().contains(TYPE_SEPARATOR));
        let hash = TargetHash {
            tag,
            digests: format!("{overall}{HASH_SEPARATOR}{direct}").into_boxed_str(),
            direct_start: overall.len() + HASH_SEPARATOR.len_utf8(),
        };
        if bad_type || bad_digest(overall) || bad_digest(direct) {
            return Err(TargetHashError {
                value: hash.to_string(),
            });
        }
        Ok(hash)
    }

    /// Parses a hash value the way upstream does: split on `#` (one part: no type; two: type
    /// and rest; more: error), then the rest on `~` (exactly two parts).
    pub fn parse(value: &str) -> Result<Self, TargetHashError> {
        let invalid = || TargetHashError {
            value: value.to_owned(),
        };
        let (tag, digests) = match value.split_once(TYPE_SEPARATOR) {
            None => (None, value),
            Some((_, rest)) if rest.contains(TYPE_SEPARATOR) => return Err(invalid()),
            Some((name, rest)) => (TypeTag::from_name(name), rest),
        };
        let (overall, direct) = digests.split_once(HASH_SEPARATOR).ok_or_else(invalid)?;
        if direct.contains(HASH_SEPARATOR) {
            return Err(invalid());
        }
        Ok(TargetHash {
            tag,
            digests: digests.into(),
            direct_start: overall.len() + HASH_SEPARATOR.len_utf8(),
        })
    }

    /// The type prefix, if the value has one.
    pub fn target_type(&self) -> Option<&TypeTag> {
        self.tag.as_ref()
    }

    /// The overall digest (covers dependencies).
    pub fn overall(&self) -> &str {
        &self.digests[..self.direct_start - HASH_SEPARATOR.len_utf8()]
    }

    /// The direct digest (the target's own definition only).
    pub fn direct(&self) -> &str {
        &self.digests[self.direct_start..]
    }

    /// `overall~direct`, the value without its type prefix.
    pub(crate) fn digests(&self) -> &str {
        &self.digests
    }
}

impl FromStr for TargetHash {
    type Err = TargetHashError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Writes the file form `[<Type>#]<overall>~<direct>`.
impl fmt::Display for TargetHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(tag) = &self.tag {
            f.write_str(tag.as_str())?;
            f.write_char(TYPE_SEPARATOR)?;
        }
        f.write_str(&self.digests)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(value: &str) -> TargetHashError {
        TargetHashError {
            value: value.to_owned(),
        }
    }

    #[test]
    fn parses_untyped_and_typed_values() {
        let h = TargetHash::parse("abc~def").expect("valid");
        assert_eq!(
            (h.target_type(), h.overall(), h.direct()),
            (None, "abc", "def")
        );
        assert_eq!(h.to_string(), "abc~def");

        let h = TargetHash::parse("Rule#abc~def").expect("valid");
        assert_eq!(h.target_type(), Some(&TypeTag::Known(TargetType::Rule)));
        assert_eq!((h.overall(), h.direct()), ("abc", "def"));
        assert_eq!(h.to_string(), "Rule#abc~def");
    }

    #[test]
    fn unknown_type_is_kept_verbatim() {
        let h = TargetHash::parse("PackageGroup#a~b").expect("valid");
        assert_eq!(
            h.target_type(),
            Some(&TypeTag::Other("PackageGroup".into()))
        );
        assert_eq!(h.to_string(), "PackageGroup#a~b");
        // A `~` in the type is accepted upstream (only `#` splits the type off).
        let h = TargetHash::parse("x~y#a~b").expect("valid");
        assert_eq!(h.target_type().map(TypeTag::as_str), Some("x~y"));
    }

    #[test]
    fn empty_type_and_empty_digests_follow_upstream_split() {
        let h = TargetHash::parse("#a~b").expect("valid");
        assert_eq!(h.target_type(), None);
        assert_eq!(h, TargetHash::parse("a~b").expect("valid"));
        let h = TargetHash::parse("~").expect("valid");
        assert_eq!((h.overall(), h.direct()), ("", ""));
    }

    #[test]
    fn rejects_malformed_values_with_upstream_message() {
        for bad in [
            "abc",
            "",
            "a~b~c",
            "Rule#a#b~c",
            "Rule#",
            "Rule#abc",
            "a#b#c~d",
        ] {
            assert_eq!(TargetHash::parse(bad), Err(err(bad)), "{bad:?}");
        }
        assert_eq!(
            TargetHash::parse("deadbeef").map_err(|e| e.to_string()),
            Err("Invalid targetHash format: deadbeef".to_owned())
        );
    }

    #[test]
    fn identity_includes_type() {
        let typed = TargetHash::parse("Rule#a~b").expect("valid");
        let untyped = TargetHash::parse("a~b").expect("valid");
        assert_ne!(typed, untyped);
        assert_ne!(
            TargetHash::parse("a~b").expect("valid"),
            TargetHash::parse("a~c").expect("valid")
        );
    }

    #[test]
    fn new_validates_and_normalises() {
        let h = TargetHash::new(Some(TypeTag::Other("Rule".into())), "o", "d").expect("valid");
        assert_eq!(h, TargetHash::parse("Rule#o~d").expect("valid"));
        let h = TargetHash::new(Some(TypeTag::Other("".into())), "o", "d").expect("valid");
        assert_eq!(h.target_type(), None);
        assert_eq!(TargetHash::new(None, "a~b", "c"), Err(err("a~b~c")));
        assert_eq!(TargetHash::new(None, "a", "c#"), Err(err("a~c#")));
        assert_eq!(
            TargetHash::new(Some(TypeTag::Other("A#B".into())), "a", "c"),
            Err(err("A#B#a~c"))
        );
    }

    #[test]
    fn target_type_names() {
        for t in TargetType::ALL {
            assert_eq!(TargetType::parse(t.as_str()), Ok(t));
        }
        assert_eq!(
            TargetType::parse("rule").map_err(|e| e.to_string()),
            Err("unknown target type \"rule\" (expected Rule, SourceFile or GeneratedFile)".into())
        );
    }
}
