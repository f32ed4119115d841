//! The hashes file written by `generate-hashes` (spec 5.1) and the dep-edges file (5.2).

use std::fmt;
use std::io::{self, Write};
use std::path::Path;

use serde::de::{IgnoredAny, MapAccess, Visitor};

use crate::contract::{
    DEP_EDGES_KEY, HASHES_KEY, HASH_SEPARATOR, INDENT, METADATA_KEY, MODULE_GRAPH_JSON_KEY,
};
use crate::error::{ParseError, ReadError, ValueError};
use crate::gson::{escape_into, Pretty};
use crate::json_read::{parse_object, DepEdgesVisitor, Key, Loose, LooseSeed, SkipObject, Slot};
use crate::map::Hashes;
use crate::target::TargetHash;

/// Label to the labels it depends on directly (spec 5.2).
pub type DepEdges = rustc_hash::FxHashMap<String, Vec<String>>;

/// Expected value type named in errors about hash values.
const HASH_VALUE: &str = "a hash string";

/// Rough bytes per entry of a hashes file (label plus two 64-hex digests and punctuation),
/// used to size the map once instead of growing it while parsing.
const BYTES_PER_ENTRY: usize = 160;

/// Rough share of a hashes file taken by labels, to size the label arena likewise.
const LABEL_SHARE: usize = 3;

/// The content of a hashes file.
///
/// Two shapes exist on disk. Legacy/flat, `{label: value}`, is written when there is no
/// metadata. The metadata shape, `{"hashes": {label: value}, "metadata": {...}}`, is written
/// when a module graph (or dep edges) is present; upstream writes it when Bzlmod is enabled.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HashFile {
    pub hashes: Hashes,
    /// `metadata.moduleGraphJson`: raw `bazel mod graph --output=json` text.
    pub module_graph_json: Option<String>,
    /// `metadata.depEdges` (written by upstream's `serve`; never by `generate-hashes`).
    pub dep_edges: Option<DepEdges>,
}

impl HashFile {
    /// Reads and parses a hashes file.
    pub fn read(path: &Path) -> Result<Self, ReadError> {
        read_file(path, "hashes", Self::parse)
    }

    /// Parses a hashes file with upstream's reader rules: if the top-level object has both
    /// `hashes` and `metadata` it is the metadata shape (other top-level keys are ignored),
    /// otherwise every top-level entry is a label and its hash value.
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        let slot = Slot::default();
        let capacity = (bytes.len() / BYTES_PER_ENTRY, bytes.len() / LABEL_SHARE);
        let top = parse_object(
            bytes,
            &slot,
            TopVisitor {
                slot: &slot,
                capacity,
            },
        )?;
        match (top.hashes, top.metadata) {
            (Some(hashes), Some(metadata)) => {
                let Loose::Object(hashes) = hashes else {
                    return Err(bad_field(HASHES_KEY, "an object", hashes.found()));
                };
                let Loose::Object(metadata) = metadata else {
                    return Err(bad_field(METADATA_KEY, "an object", metadata.found()));
                };
                Ok(HashFile {
                    hashes,
                    module_graph_json: metadata.module_graph_json,
                    dep_edges: metadata.dep_edges,
                })
            }
            (hashes, metadata) => {
                if let Some(err) = top.flat_error {
                    return Err(err);
                }
                let mut flat = top.flat;
                // Only one of the two reserved keys is present, so it is an ordinary label.
                let reserved = [
                    (HASHES_KEY, hashes.map(Loose::forget_object)),
                    (METADATA_KEY, metadata.map(Loose::forget_object)),
                ];
                for (key, value) in reserved {
                    if let Some(value) = value {
                        flat.insert(key, flat_value(key, value)?);
                    }
                }
                Ok(HashFile {
                    hashes: flat,
                    module_graph_json: None,
                    dep_edges: None,
                })
            }
        }
    }

    /// Writes the file in upstream's layout with keys sorted (by bytes): the flat shape when
    /// there is no metadata, else the metadata shape. No trailing newline.
    pub fn write<W: Write>(&self, out: W) -> io::Result<()> {
        let mut w = Pretty::new(out);
        if self.module_graph_json.is_none() && self.dep_edges.is_none() {
            write_hashes(&mut w, &self.hashes)?;
        } else {
            w.begin_object()?;
            w.name(HASHES_KEY)?;
            write_hashes(&mut w, &self.hashes)?;
            w.name(METADATA_KEY)?;
            w.begin_object()?;
            if let Some(json) = &self.module_graph_json {
                w.name(MODULE_GRAPH_JSON_KEY)?;
                w.string(json)?;
            }
            if let Some(edges) = &self.dep_edges {
                w.name(DEP_EDGES_KEY)?;
                write_edges(&mut w, edges)?;
            }
            w.end_object()?;
            w.end_object()?;
        }
        w.finish().map(drop)
    }
}

/// One entry of a hashes file as the hashing engine produces it, before any allocation.
#[derive(Clone, Copy, Debug)]
pub struct HashEntry<'a> {
    pub label: &'a str,
    /// The `Type#` prefix (only with `--includeTargetType`).
    pub target_type: Option<&'a str>,
    /// SHA-256 digests, written as lowercase hex.
    pub overall: &'a [u8; 32],
    pub direct: &'a [u8; 32],
}

/// Lowercase hex of a digest into `buf`, without allocating.
fn hex_digest<'b>(digest: &[u8; 32], buf: &'b mut [u8; 64]) -> &'b [u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, byte) in digest.iter().enumerate() {
        buf[2 * i] = HEX[usize::from(byte >> 4)];
        buf[2 * i + 1] = HEX[usize::from(byte & 0xf)];
    }
    buf
}

/// Writes a flat hashes file straight from `entries`, which must be sorted by label (bytes)
/// and unique. Byte-identical to [`HashFile::write`] of the same map, without building it.
pub fn write_hash_entries<'a, W: Write>(
    out: W,
    entries: impl IntoIterator<Item = HashEntry<'a>>,
) -> io::Result<()> {
    let mut run = Vec::new();
    format_hash_entries(&mut run, entries, true);
    write_hash_entry_runs(out, &[run])
}

/// Appends `entries` (sorted by label, unique) to `run` exactly as they appear inside a flat
/// hashes file; `first` says whether they start the file. Consecutive runs can be formatted
/// on several threads and joined by [`write_hash_entry_runs`].
pub fn format_hash_entries<'a>(
    run: &mut Vec<u8>,
    entries: impl IntoIterator<Item = HashEntry<'a>>,
    first: bool,
) {
    let mut separator = [0; 4];
    let sep = HASH_SEPARATOR.encode_utf8(&mut separator).as_bytes();
    let mut previous: Option<&str> = None;
    for entry in entries {
        debug_assert!(
            previous.is_none_or(|p| p < entry.label),
            "entries must be sorted"
        );
        // Gson's pretty layout of a one-level object (see `gson::Pretty`).
        if previous.is_some() || !first {
            run.push(b',');
        }
        previous = Some(entry.label);
        run.push(b'\n');
        run.extend_from_slice(INDENT.as_bytes());
        run.push(b'"');
        escape_into(run, entry.label);
        run.extend_from_slice(b"\": \"");
        if let Some(t) = entry.target_type {
            escape_into(run, t);
            run.push(b'#');
        }
        let mut hex = [0u8; 64];
        run.extend_from_slice(hex_digest(entry.overall, &mut hex));
        run.extend_from_slice(sep);
        run.extend_from_slice(hex_digest(entry.direct, &mut hex));
        run.push(b'"');
    }
}

/// Writes a flat hashes file made of the runs [`format_hash_entries`] produced, in order.
pub fn write_hash_entry_runs<W: Write>(mut out: W, runs: &[Vec<u8>]) -> io::Result<()> {
    out.write_all(b"{")?;
    for run in runs {
        out.write_all(run)?;
    }
    let empty = runs.iter().all(Vec::is_empty);
    out.write_all(if empty { b"}" } else { b"\n}" })?;
    out.flush()
}

/// Reads a dep-edges file (`{label: [dep, ...]}`); `null` lists are skipped.
pub fn read_dep_edges(path: &Path) -> Result<DepEdges, ReadError> {
    read_file(path, "dep edges", parse_dep_edges)
}

/// Parses a dep-edges file.
pub fn parse_dep_edges(bytes: &[u8]) -> Result<DepEdges, ParseError> {
    let slot = Slot::default();
    parse_object(bytes, &slot, DepEdgesVisitor { slot: &slot })
}

/// Writes a dep-edges file: keys sorted (by bytes), each list in its given order.
pub fn write_dep_edges<W: Write>(out: W, edges: &DepEdges) -> io::Result<()> {
    let mut w = Pretty::new(out);
    write_edges(&mut w, edges)?;
    w.finish().map(drop)
}

/// Reads a whole file and parses it, attaching the path and format name to errors.
pub(crate) fn read_file<T>(
    path: &Path,
    what: &'static str,
    parse: impl FnOnce(&[u8]) -> Result<T, ParseError>,
) -> Result<T, ReadError> {
    let bytes = std::fs::read(path).map_err(|source| ReadError::Io {
        what,
        path: path.to_owned(),
        source,
    })?;
    parse(&bytes).map_err(|source| ReadError::Parse {
        what,
        path: path.to_owned(),
        source,
    })
}

fn write_hashes<W: Write>(w: &mut Pretty<W>, hashes: &Hashes) -> io::Result<()> {
    let mut entries: Vec<(&str, &TargetHash)> = hashes.iter().collect();
    // Maps read from our own files are sorted already; checking is far cheaper than sorting.
    if !entries.windows(2).all(|pair| pair[0].0 <= pair[1].0) {
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    }
    w.begin_object()?;
    for (label, hash) in entries {
        w.name(label)?;
        match hash.target_type() {
            Some(tag) => w.string_parts(&[tag.as_str(), "#", hash.digests()])?,
            None => w.string(hash.digests())?,
        }
    }
    w.end_object()
}

fn write_edges<W: Write>(w: &mut Pretty<W>, edges: &DepEdges) -> io::Result<()> {
    let mut entries: Vec<(&str, &[String])> = edges
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    w.begin_object()?;
    for (label, deps) in entries {
        w.name(label)?;
        w.begin_array()?;
        for dep in deps {
            w.string(dep)?;
        }
        w.end_array()?;
    }
    w.end_object()
}

fn presized((entries, label_bytes): (usize, usize)) -> Hashes {
    let mut hashes = Hashes::with_capacity(entries);
    hashes.reserve_label_bytes(label_bytes);
    hashes
}

fn bad_field(field: &'static str, expected: &'static str, found: &'static str) -> ParseError {
    ParseError::BadField {
        field,
        expected,
        found,
    }
}

/// Interprets a top-level value of the flat shape.
fn flat_value<T>(label: &str, value: Loose<'_, T>) -> Result<TargetHash, ParseError> {
    let source = match value {
        Loose::Str(s) => match TargetHash::parse(&s) {
            Ok(hash) => return Ok(hash),
            Err(e) => ValueError::TargetHash(e),
        },
        other => ValueError::WrongType {
            expected: HASH_VALUE,
            found: other.found(),
        },
    };
    Err(ParseError::BadValue {
        key: label.to_owned(),
        source,
    })
}

/// What the top-level object holds before the shape is known (it depends on whether both
/// reserved keys occur, which only the end of the object tells).
struct Top<'de> {
    flat: Hashes,
    /// First bad flat entry; only an error if the file turns out to be flat.
    flat_error: Option<ParseError>,
    hashes: Option<Loose<'de, Hashes>>,
    metadata: Option<Loose<'de, Metadata>>,
}

struct TopVisitor<'s> {
    slot: &'s Slot,
    /// Expected number of entries and of label bytes.
    capacity: (usize, usize),
}

impl<'de> Visitor<'de> for TopVisitor<'_> {
    type Value = Top<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a hashes object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top<'de>, A::Error> {
        let mut top = Top {
            flat: Hashes::default(),
            flat_error: None,
            hashes: None,
            metadata: None,
        };
        while let Some(Key(key)) = map.next_key()? {
            match &*key {
                HASHES_KEY => {
                    let visitor = HashesVisitor {
                        slot: self.slot,
                        capacity: self.capacity,
                    };
                    top.hashes = Some(map.next_value_seed(LooseSeed(visitor))?);
                }
                METADATA_KEY => {
                    let visitor = MetadataVisitor { slot: self.slot };
                    top.metadata = Some(map.next_value_seed(LooseSeed(visitor))?);
                }
                _ => {
                    let value = map.next_value_seed(LooseSeed(SkipObject))?;
                    match flat_value(&key, value) {
                        Ok(hash) => {
                            if top.flat.is_empty() {
                                top.flat = presized(self.capacity);
                            }
                            top.flat.insert(&key, hash);
                        }
                        Err(e) => {
                            top.flat_error.get_or_insert(e);
                        }
                    }
                }
            }
        }
        Ok(top)
    }
}

/// The `hashes` object of the metadata shape. Errors abort at once: a bad entry makes the
/// file invalid whichever shape it turns out to be.
struct HashesVisitor<'s> {
    slot: &'s Slot,
    /// Expected number of entries and of label bytes.
    capacity: (usize, usize),
}

impl<'de> Visitor<'de> for HashesVisitor<'_> {
    type Value = Hashes;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of label to hash")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Hashes, A::Error> {
        let mut hashes = presized(self.capacity);
        while let Some(Key(label)) = map.next_key()? {
            let value = map.next_value_seed(LooseSeed(SkipObject))?;
            match flat_value(&label, value) {
                Ok(hash) => {
                    hashes.insert(&label, hash);
                }
                Err(e) => return Err(self.slot.fail(e)),
            }
        }
        Ok(hashes)
    }
}

struct Metadata {
    module_graph_json: Option<String>,
    dep_edges: Option<DepEdges>,
}

struct MetadataVisitor<'s> {
    slot: &'s Slot,
}

impl<'de> Visitor<'de> for MetadataVisitor<'_> {
    type Value = Metadata;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a metadata object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Metadata, A::Error> {
        let mut metadata = Metadata {
            module_graph_json: None,
            dep_edges: None,
        };
        while let Some(Key(key)) = map.next_key()? {
            match &*key {
                MODULE_GRAPH_JSON_KEY => {
                    metadata.module_graph_json = match map.next_value_seed(LooseSeed(SkipObject))? {
                        Loose::Str(json) => Some(json.into_owned()),
                        // Upstream would fail on null; absent is the only sensible reading.
                        Loose::Other("null") => None,
                        other => {
                            let field = "metadata.moduleGraphJson";
                            let err = bad_field(field, "a string", other.found());
                            return Err(self.slot.fail(err));
                        }
                    };
                }
                DEP_EDGES_KEY => {
                    let visitor = DepEdgesVisitor { slot: self.slot };
                    metadata.dep_edges = match map.next_value_seed(LooseSeed(visitor))? {
                        Loose::Object(edges) => Some(edges),
                        Loose::Other("null") => None,
                        other => {
                            let field = "metadata.depEdges";
                            let err = bad_field(field, "an object", other.found());
                            return Err(self.slot.fail(err));
                        }
                    };
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(metadata)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::{TargetType, TypeTag};

    fn hash(value: &str) -> TargetHash {
        TargetHash::parse(value).expect("valid hash")
    }

    fn parse(json: &str) -> HashFile {
        HashFile::parse(json.as_bytes()).expect("valid file")
    }

    fn parse_err(json: &str) -> String {
        HashFile::parse(json.as_bytes())
            .expect_err("must be rejected")
            .to_string()
    }

    fn written(file: &HashFile) -> String {
        let mut out = Vec::new();
        file.write(&mut out).expect("vec write");
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn reads_flat_shape() {
        let file = parse(r#"{"//a:b": "Rule#o1~d1", "//c:d": "o2~d2"}"#);
        assert_eq!(file.hashes.len(), 2);
        assert_eq!(file.hashes["//a:b"], hash("Rule#o1~d1"));
        assert_eq!(
            file.hashes["//a:b"].target_type(),
            Some(&TypeTag::Known(TargetType::Rule))
        );
        assert_eq!(file.hashes["//c:d"], hash("o2~d2"));
        assert_eq!((file.module_graph_json, file.dep_edges), (None, None));
    }

    #[test]
    fn reads_metadata_shape_ignoring_other_top_level_keys() {
        let file = parse(
            r#"{
              "extra": [1, {"x": null}],
              "hashes": {"//a:b": "o~d"},
              "other": 3,
              "metadata": {
                "moduleGraphJson": "{\"key\": \"<root>\"}",
                "depEdges": {"//a:b": ["//c:d"], "//c:d": [], "//e:f": null},
                "future": {"ignored": true}
              }
            }"#,
        );
        assert_eq!(file.hashes.len(), 1);
        assert_eq!(file.hashes["//a:b"], hash("o~d"));
        assert_eq!(
            file.module_graph_json.as_deref(),
            Some(r#"{"key": "<root>"}"#)
        );
        let edges = file.dep_edges.expect("dep edges");
        assert_eq!(edges.len(), 2);
        assert_eq!(edges["//a:b"], ["//c:d"]);
        assert!(edges["//c:d"].is_empty());
    }

    #[test]
    fn metadata_fields_are_optional() {
        let file = parse(r#"{"hashes": {}, "metadata": {}}"#);
        assert_eq!(file, HashFile::default());
        let file = parse(r#"{"metadata": {"moduleGraphJson": null}, "hashes": {"//x": "a~b"}}"#);
        assert_eq!(file.module_graph_json, None);
        assert_eq!(file.hashes.len(), 1);
    }

    #[test]
    fn one_reserved_key_alone_is_an_ordinary_label() {
        let file = parse(r#"{"hashes": "a~b", "//x:y": "c~d"}"#);
        assert_eq!(file.hashes["hashes"], hash("a~b"));
        assert_eq!(file.hashes["//x:y"], hash("c~d"));
        let file = parse(r#"{"metadata": "Rule#a~b"}"#);
        assert_eq!(file.hashes["metadata"], hash("Rule#a~b"));
        assert_eq!(
            parse_err(r#"{"hashes": {"//a": "a~b"}}"#),
            r#"bad value for "hashes": expected a hash string, found an object"#
        );
    }

    #[test]
    fn flat_errors_only_count_in_the_flat_shape() {
        assert_eq!(
            parse_err(r#"{"//a:b": "deadbeef", "//c:d": "a~b"}"#),
            r#"bad value for "//a:b": Invalid targetHash format: deadbeef"#
        );
        assert_eq!(
            parse_err(r#"{"//a:b": 12}"#),
            r#"bad value for "//a:b": expected a hash string, found a number"#
        );
        let file = parse(r#"{"junk": "deadbeef", "hashes": {}, "metadata": {}}"#);
        assert!(file.hashes.is_empty());
    }

    #[test]
    fn rejects_structural_errors() {
        assert!(parse_err("").starts_with("not valid JSON: EOF while parsing"));
        assert!(parse_err("{\"//a\": \"a~b\",}").starts_with("not valid JSON: "));
        assert!(parse_err("{} {}").starts_with("not valid JSON: trailing characters"));
        assert_eq!(
            parse_err("[]"),
            "expected a JSON object at the top level, found an array"
        );
        assert_eq!(
            parse_err("\"a~b\""),
            "expected a JSON object at the top level, found a string"
        );
        assert_eq!(
            parse_err(r#"{"hashes": {"//a": "Rule#x"}, "metadata": {}}"#),
            r#"bad value for "//a": Invalid targetHash format: Rule#x"#
        );
        assert_eq!(
            parse_err(r#"{"hashes": {"//a": null}, "metadata": {}}"#),
            r#"bad value for "//a": expected a hash string, found null"#
        );
        assert_eq!(
            parse_err(r#"{"hashes": {}, "metadata": 1}"#),
            r#""metadata" must be an object, found a number"#
        );
        assert_eq!(
            parse_err(r#"{"hashes": [], "metadata": {}}"#),
            r#""hashes" must be an object, found an array"#
        );
        assert_eq!(
            parse_err(r#"{"hashes": {}, "metadata": {"moduleGraphJson": {}}}"#),
            r#""metadata.moduleGraphJson" must be a string, found an object"#
        );
        assert_eq!(
            parse_err(r#"{"hashes": {}, "metadata": {"depEdges": {"//a": [1]}}}"#),
            r#"bad value for "//a": expected an array of labels, found an array with a non-string element"#
        );
    }

    #[test]
    fn escaped_labels_and_duplicates() {
        // Escapes force an owned key; duplicates keep the last value, as Gson does.
        let file = parse(r#"{"//a:\u0062": "a~b", "//c": "x~y", "//c": "z~w"}"#);
        assert_eq!(file.hashes["//a:b"], hash("a~b"));
        assert_eq!(file.hashes["//c"], hash("z~w"));
    }

    #[test]
    fn writes_flat_shape_sorted_in_gson_layout() {
        let mut file = HashFile::default();
        file.hashes.insert("//b:b", hash("o2~d2"));
        file.hashes.insert("//a:a", hash("Rule#o1~d1"));
        file.hashes.insert("//c:<&>", hash("o3~d3"));
        assert_eq!(
            written(&file),
            "{\n  \"//a:a\": \"Rule#o1~d1\",\n  \"//b:b\": \"o2~d2\",\n  \"//c:<&>\": \"o3~d3\"\n}"
        );
        assert_eq!(written(&HashFile::default()), "{}");
    }

    #[test]
    fn writes_metadata_shape_in_gson_layout() {
        let mut file = HashFile {
            module_graph_json: Some("{\n  \"key\": \"<root>\"\n}".into()),
            ..HashFile::default()
        };
        file.hashes.insert("//a:a", hash("o~d"));
        let expected = r#"{
  "hashes": {
    "//a:a": "o~d"
  },
  "metadata": {
    "moduleGraphJson": "{\n  \"key\": \"<root>\"\n}"
  }
}"#;
        assert_eq!(written(&file), expected);

        let mut edges = DepEdges::default();
        edges.insert("//a:a".into(), vec!["//z".into(), "//b".into()]);
        file.dep_edges = Some(edges);
        file.module_graph_json = None;
        let expected = r#"{
  "hashes": {
    "//a:a": "o~d"
  },
  "metadata": {
    "depEdges": {
      "//a:a": [
        "//z",
        "//b"
      ]
    }
  }
}"#;
        assert_eq!(written(&file), expected);
    }

    #[test]
    fn round_trips() {
        let mut file = HashFile {
            module_graph_json: Some("prefix {\"a\": [1, 2]}\u{2028}\t".into()),
            dep_edges: Some(DepEdges::default()),
            ..HashFile::default()
        };
        for i in 0..100 {
            let value = format!("{}{i:064x}~{:064x}", ["", "Rule#", "Weird#"][i % 3], i * 7);
            file.hashes
                .insert(&format!("//pkg{}:t\"{i}", i % 7), hash(&value));
        }
        let bytes = written(&file);
        assert_eq!(parse(&bytes), file);
        file.module_graph_json = None;
        file.dep_edges = None;
        assert_eq!(parse(&written(&file)), file);
    }

    #[test]
    fn truncated_or_corrupted_input_never_panics() {
        let doc = br#"{"hashes": {"//a:b": "Rule#o~d", "//c\u0041": "x~y"},
            "metadata": {"moduleGraphJson": "{}", "depEdges": {"//a:b": ["//c", null]}},
            "//z": "q~r"}"#;
        for len in 0..doc.len() {
            let _ = HashFile::parse(&doc[..len]);
            let _ = parse_dep_edges(&doc[..len]);
            let _ = crate::parse_content_hashes(&doc[..len]);
        }
        for i in 0..doc.len() {
            for replacement in [b'"', b'{', b'}', b'[', b'~', b'#', b'\\', b'1', 0xff] {
                let mut corrupted = doc.to_vec();
                corrupted[i] = replacement;
                let _ = HashFile::parse(&corrupted);
                let _ = parse_dep_edges(&corrupted);
            }
        }
    }

    #[test]
    fn dep_edges_file() {
        let edges = parse_dep_edges(br#"{"//b": ["//a"], "//a": [], "//s": null}"#).expect("valid");
        assert_eq!(edges.len(), 2);
        let mut out = Vec::new();
        write_dep_edges(&mut out, &edges).expect("vec write");
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "{\n  \"//a\": [],\n  \"//b\": [\n    \"//a\"\n  ]\n}"
        );
        let err = parse_dep_edges(br#"{"//b": "//a"}"#).expect_err("must fail");
        assert_eq!(
            err.to_string(),
            r#"bad value for "//b": expected an array of labels, found a string"#
        );
    }

    #[test]
    fn read_errors_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.json");
        let err = HashFile::read(&missing).expect_err("must fail");
        assert!(matches!(err, ReadError::Io { .. }));
        assert!(err
            .to_string()
            .starts_with(&format!("cannot read hashes file {}: ", missing.display())));

        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, r#"{"//x": "nope"}"#).expect("write");
        let err = HashFile::read(&bad).expect_err("must fail");
        assert!(matches!(err, ReadError::Parse { .. }));
        assert_eq!(
            err.to_string(),
            format!(
                r#"invalid hashes file {}: bad value for "//x": Invalid targetHash format: nope"#,
                bad.display()
            )
        );
        let err = read_dep_edges(&bad).expect_err("must fail");
        assert!(err.to_string().starts_with("invalid dep edges file"));
    }
}

#[cfg(test)]
mod entry_tests {
    use super::*;

    fn hex_of(d: &[u8; 32]) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn streamed_entries_match_the_map_writer() {
        let (one, two) = ([0x01; 32], [0xab; 32]);
        let entries = [
            HashEntry {
                label: "//a:b",
                target_type: Some("Rule"),
                overall: &one,
                direct: &two,
            },
            HashEntry {
                label: "//a:c",
                target_type: Some("SourceFile"),
                overall: &two,
                direct: &two,
            },
        ];
        let mut streamed = Vec::new();
        write_hash_entries(&mut streamed, entries).unwrap();
        let mut file = HashFile::default();
        for e in entries {
            let tag = e.target_type.and_then(crate::TypeTag::from_name);
            let (overall, direct) = (hex_of(e.overall), hex_of(e.direct));
            file.hashes
                .insert(e.label, TargetHash::new(tag, &overall, &direct).unwrap());
        }
        let mut mapped = Vec::new();
        file.write(&mut mapped).unwrap();
        assert_eq!(
            String::from_utf8(streamed.clone()).unwrap(),
            String::from_utf8(mapped).unwrap()
        );
        let mut runs = vec![Vec::new(), Vec::new(), Vec::new()];
        format_hash_entries(&mut runs[0], entries[..1].iter().copied(), true);
        format_hash_entries(&mut runs[2], entries[1..].iter().copied(), false);
        let mut joined = Vec::new();
        write_hash_entry_runs(&mut joined, &runs).unwrap();
        assert_eq!(joined, streamed, "runs joined equal one run");
        let mut empty = Vec::new();
        write_hash_entries(&mut empty, []).unwrap();
        assert_eq!(empty, b"{}");
    }
}
