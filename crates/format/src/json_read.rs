//! Shared pieces of the streaming readers.
//!
//! Files are parsed straight from the byte slice with serde visitors, so a 10^5-entry hashes
//! file costs one allocation per label and one per value, with no intermediate JSON tree.
//! Visitors that find a semantic error (a bad hash value, a wrong type) put the typed
//! [`ParseError`] into a [`Slot`] and abort the parse; [`parse_object`] then reports that
//! error instead of serde's generic one.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::error::{ParseError, ValueError};
use crate::DepEdges;

/// Holds the typed error of an aborted parse.
#[derive(Default)]
pub(crate) struct Slot(Cell<Option<ParseError>>);

impl Slot {
    /// Records `err` and returns the serde error that unwinds the parser.
    pub(crate) fn fail<E: de::Error>(&self, err: ParseError) -> E {
        self.0.set(Some(err));
        E::custom("aborted")
    }

    pub(crate) fn bad_value<E: de::Error>(&self, key: &str, source: ValueError) -> E {
        self.fail(ParseError::BadValue {
            key: key.to_owned(),
            source,
        })
    }
}

/// Parses `bytes` as a JSON document whose top level must be an object read by `visitor`.
pub(crate) fn parse_object<'de, V: Visitor<'de>>(
    bytes: &'de [u8],
    slot: &Slot,
    visitor: V,
) -> Result<V::Value, ParseError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = LooseSeed(visitor)
        .deserialize(&mut de)
        .and_then(|value| de.end().map(|()| value));
    match parsed {
        Ok(Loose::Object(value)) => Ok(value),
        Ok(other) => Err(ParseError::NotAnObject {
            found: other.found(),
        }),
        Err(e) => Err(slot.0.take().unwrap_or(ParseError::Json(e))),
    }
}

/// An object key, borrowed from the input unless it contained escapes.
pub(crate) struct Key<'de>(pub(crate) Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// A value of any JSON type, keeping strings, reading objects with a nested visitor and
/// only naming the type of anything else (which is skipped). Lets readers report "expected
/// X, found Y" for a label, and accept values whose meaning depends on later keys.
pub(crate) enum Loose<'de, T> {
    Str(Cow<'de, str>),
    Object(T),
    Other(&'static str),
}

impl<'de, T> Loose<'de, T> {
    /// Drops what was read from an object, keeping only that it was one.
    pub(crate) fn forget_object(self) -> Loose<'de, ()> {
        match self {
            Loose::Str(s) => Loose::Str(s),
            Loose::Object(_) => Loose::Object(()),
            Loose::Other(kind) => Loose::Other(kind),
        }
    }

    pub(crate) fn found(&self) -> &'static str {
        match self {
            Loose::Str(_) => "a string",
            Loose::Object(_) => "an object",
            Loose::Other(kind) => kind,
        }
    }
}

/// Reads a [`Loose`] value; objects go to the wrapped visitor.
pub(crate) struct LooseSeed<V>(pub(crate) V);

impl<'de, V: Visitor<'de>> DeserializeSeed<'de> for LooseSeed<V> {
    type Value = Loose<'de, V::Value>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, V: Visitor<'de>> Visitor<'de> for LooseSeed<V> {
    type Value = Loose<'de, V::Value>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Loose::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Loose::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Loose::Str(Cow::Owned(v)))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.0.visit_map(map).map(Loose::Object)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Loose::Other("an array"))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Loose::Other("a boolean"))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Loose::Other("a number"))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Loose::Other("a number"))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Loose::Other("a number"))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Loose::Other("null"))
    }
}

/// Skips an object whose content does not matter (it is reported as "an object").
pub(crate) struct SkipObject;

impl<'de> Visitor<'de> for SkipObject {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(())
    }
}

/// Reads `{label: [dep, ...]}`. `null` lists count as absent, as they do upstream (Gson
/// yields a null list, which the distance code treats like a missing entry).
pub(crate) struct DepEdgesVisitor<'s> {
    pub(crate) slot: &'s Slot,
}

impl<'de> Visitor<'de> for DepEdgesVisitor<'_> {
    type Value = DepEdges;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of label to dependency labels")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<DepEdges, A::Error> {
        let mut edges = DepEdges::default();
        while let Some(Key(label)) = map.next_key()? {
            match map.next_value_seed(LabelList)? {
                Ok(Some(deps)) => {
                    edges.insert(label.into_owned(), deps);
                }
                Ok(None) => {}
                Err(found) => {
                    let expected = "an array of labels";
                    let source = ValueError::WrongType { expected, found };
                    return Err(self.slot.bad_value(&label, source));
                }
            }
        }
        Ok(edges)
    }
}

/// One dep-edges value: `Ok(None)` for null, `Err(found)` for anything but strings.
struct LabelList;

impl<'de> DeserializeSeed<'de> for LabelList {
    type Value = Result<Option<Vec<String>>, &'static str>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for LabelList {
    type Value = Result<Option<Vec<String>>, &'static str>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of labels")
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Ok(None))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut labels = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(element) = seq.next_element_seed(LooseSeed(SkipObject))? {
            match element {
                Loose::Str(label) => labels.push(label.into_owned()),
                _ => {
                    // serde_json insists the array is consumed before our error can surface.
                    while seq.next_element::<IgnoredAny>()?.is_some() {}
                    return Ok(Err("an array with a non-string element"));
                }
            }
        }
        Ok(Ok(Some(labels)))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        SkipObject.visit_map(map).map(|()| Err("an object"))
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Err("a string"))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Err("a boolean"))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Err("a number"))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Err("a number"))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Err("a number"))
    }
}
