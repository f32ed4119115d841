//! Entry keys: what names an entry, validated so that no key can name a path outside the
//! store or a moving target (finding F9).

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// Which half of a key a validation error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPart {
    /// The snapshot fingerprint (first path component).
    Fingerprint,
    /// The base commit id (second path component).
    BaseSha,
}

impl fmt::Display for KeyPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyPart::Fingerprint => "fingerprint",
            KeyPart::BaseSha => "base SHA",
        })
    }
}

/// A fingerprint or base SHA that cannot be used as a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {part} {value:?}: {reason}")]
pub struct InvalidKey {
    /// Which half of the key was rejected.
    pub part: KeyPart,
    /// The rejected text, verbatim.
    pub value: String,
    /// Why it was rejected.
    pub reason: &'static str,
}

/// The key of one entry: `<store>/<fingerprint>/<base_sha>/`.
///
/// Both halves are lowercase hex of a fixed length, so a key is always exactly two plain
/// path components: no `..`, no separators, no case-folding aliases, no short or symbolic
/// revisions.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct EntryKey {
    fingerprint: String,
    base_sha: String,
}

impl EntryKey {
    /// Validates both halves: the fingerprint is 64 lowercase hex digits (a SHA-256), the
    /// base SHA is a full 40- (SHA-1) or 64-digit (SHA-256) lowercase hex commit id.
    ///
    /// Callers must canonicalize revisions first (`git rev-parse --verify <rev>^{commit}`).
    pub fn new(fingerprint: &str, base_sha: &str) -> Result<Self, InvalidKey> {
        validate_fingerprint(fingerprint)?;
        validate_commit_sha(base_sha)?;
        Ok(Self {
            fingerprint: fingerprint.to_owned(),
            base_sha: base_sha.to_owned(),
        })
    }

    /// The fingerprint half.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The base commit half.
    pub fn base_sha(&self) -> &str {
        &self.base_sha
    }

    /// `<fingerprint>-<base_sha>`: the stem of this key's lock and work directory names.
    pub(crate) fn stem(&self) -> String {
        format!("{}-{}", self.fingerprint, self.base_sha)
    }

    /// Parses [`stem`](Self::stem) back.
    pub(crate) fn from_stem(stem: &str) -> Option<Self> {
        let (fp, sha) = stem.split_once('-')?;
        Self::new(fp, sha).ok()
    }
}

impl fmt::Display for EntryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.fingerprint, self.base_sha)
    }
}

/// Parses the `<fingerprint>/<base_sha>` form printed by [`Display`](fmt::Display).
impl FromStr for EntryKey {
    type Err = InvalidKey;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((fp, sha)) => Self::new(fp, sha),
            None => Err(InvalidKey {
                part: KeyPart::Fingerprint,
                value: s.to_owned(),
                reason: "expected <fingerprint>/<base-sha>",
            }),
        }
    }
}

/// Checks that `value` is a fingerprint: 64 lowercase hex digits.
pub fn validate_fingerprint(value: &str) -> Result<(), InvalidKey> {
    check_hex(
        KeyPart::Fingerprint,
        value,
        &[64],
        "must be 64 lowercase hex digits (a SHA-256)",
    )
}

/// Checks that `value` is a full commit id: 40 or 64 lowercase hex digits.
pub fn validate_commit_sha(value: &str) -> Result<(), InvalidKey> {
    check_hex(
        KeyPart::BaseSha,
        value,
        &[40, 64],
        "must be a full 40- or 64-digit lowercase hex commit id; resolve branch names, \
         HEAD and short ids with `git rev-parse --verify <rev>^{commit}`",
    )
}

fn check_hex(
    part: KeyPart,
    value: &str,
    lengths: &[usize],
    length_reason: &'static str,
) -> Result<(), InvalidKey> {
    let reject = |reason| {
        Err(InvalidKey {
            part,
            value: value.to_owned(),
            reason,
        })
    };
    if value
        .bytes()
        .any(|b| b.is_ascii_uppercase() && b.is_ascii_hexdigit())
    {
        return reject("hex digits must be lowercase");
    }
    if !value
        .bytes()
        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return reject("contains a character that is not a hex digit");
    }
    if !lengths.contains(&value.len()) {
        return reject(length_reason);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const SHA1: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn accepts_full_ids() {
        assert!(EntryKey::new(FP, SHA1).is_ok());
        assert!(
            EntryKey::new(FP, FP).is_ok(),
            "SHA-256 repositories have 64-digit ids"
        );
    }

    #[test]
    fn rejects_everything_else() {
        let bad_shas = [
            "../x",
            "..",
            "",
            "HEAD",
            "main",
            "0123456",
            &SHA1.to_uppercase(),
            "0123456789abcdef0123456789abcdef0123456g",
            "0123456789abcdef0123456789abcdef0123456/",
            "0123456789abcdef0123456789abcdef012345678",
            " 0123456789abcdef0123456789abcdef0123456",
        ];
        for sha in bad_shas {
            let err = EntryKey::new(FP, sha).expect_err(sha);
            assert_eq!(err.part, KeyPart::BaseSha, "{sha}");
        }
        for fp in ["../x", SHA1, &FP.to_uppercase(), &format!("{}z", &FP[1..])] {
            let err = EntryKey::new(fp, SHA1).expect_err(fp);
            assert_eq!(err.part, KeyPart::Fingerprint, "{fp}");
        }
    }

    #[test]
    fn error_says_why() {
        let err = EntryKey::new(FP, &SHA1.to_uppercase()).expect_err("uppercase");
        assert!(err.to_string().contains("lowercase"), "{err}");
        let err = EntryKey::new(FP, "abc123").expect_err("short");
        assert!(err.to_string().contains("rev-parse"), "{err}");
    }

    #[test]
    fn display_round_trips() {
        let key = EntryKey::new(FP, SHA1).expect("valid");
        assert_eq!(key.to_string().parse::<EntryKey>(), Ok(key.clone()));
        assert_eq!(EntryKey::from_stem(&key.stem()), Some(key));
        assert!("nonsense".parse::<EntryKey>().is_err());
    }
}
