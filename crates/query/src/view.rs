//! Zero-copy reading of the rule in a serialised `Target`: the fields hashing needs,
//! borrowed from the message instead of decoded into owned strings and buffers.
//!
//! Only the plain encoding Bazel writes is read this way (known fields with their declared
//! wire types, singular fields once, valid UTF-8); anything else is left to prost, so the
//! result, or the error, is always prost's.

use crate::proto::{discriminator, Rule};

/// The fields of a `Rule` that hashing reads.
#[derive(Debug, Default, PartialEq)]
pub struct RuleView<'a> {
    pub name: &'a str,
    pub rule_class: &'a str,
    /// Raw serialised `Attribute` messages, in message order.
    pub attributes: Vec<&'a [u8]>,
    pub rule_inputs: Vec<&'a str>,
    pub skylark_environment_hash_code: Option<&'a str>,
    pub instantiation_stack: Vec<&'a str>,
    /// `(label, configuration_checksum)` of each `configured_rule_input`.
    pub configured_rule_inputs: Vec<(Option<&'a str>, Option<&'a str>)>,
}

const WIRE_VARINT: u64 = 0;
const WIRE_FIXED64: u64 = 1;
const WIRE_LEN: u64 = 2;
const WIRE_FIXED32: u64 = 5;

/// One field of a message: number, wire type and, for length-delimited fields, the bytes.
struct Field<'a> {
    number: u64,
    wire_type: u64,
    value: &'a [u8],
    varint: u64,
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (i, &byte) in buf.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            // prost rejects a tenth byte above 1 (more than 64 bits).
            if i == 9 && byte > 1 {
                return None;
            }
            *buf = &buf[i + 1..];
            return Some(value);
        }
    }
    None
}

/// Reads the next field of `buf`; `None` at the end or on anything malformed.
fn next_field<'a>(buf: &mut &'a [u8]) -> Option<Field<'a>> {
    let key = varint(buf)?;
    let (number, wire_type) = (key >> 3, key & 7);
    if number == 0 {
        return None;
    }
    let mut field = Field {
        number,
        wire_type,
        value: &[],
        varint: 0,
    };
    let len = match wire_type {
        WIRE_VARINT => {
            field.varint = varint(buf)?;
            return Some(field);
        }
        WIRE_FIXED64 => 8,
        WIRE_FIXED32 => 4,
        WIRE_LEN => usize::try_from(varint(buf)?).ok()?,
        _ => return None,
    };
    field.value = buf.get(..len)?;
    *buf = &buf[len..];
    Some(field)
}

fn fields<'a>(mut buf: &'a [u8]) -> impl Iterator<Item = Option<Field<'a>>> {
    std::iter::from_fn(move || (!buf.is_empty()).then(|| next_field(&mut buf)))
}

fn text<'a>(field: &Field<'a>) -> Option<&'a str> {
    (field.wire_type == WIRE_LEN)
        .then(|| std::str::from_utf8(field.value).ok())
        .flatten()
}

/// Sets a singular field, refusing a second occurrence (prost would merge or replace).
fn once<'a>(slot: &mut Option<&'a str>, field: &Field<'a>) -> Option<()> {
    match slot {
        Some(_) => None,
        None => {
            *slot = Some(text(field)?);
            Some(())
        }
    }
}

impl<'a> RuleView<'a> {
    /// The rule of a serialised `Target` whose type is `RULE`; `None` for other targets and
    /// for encodings this reader leaves to prost.
    pub fn of_target(message: &'a [u8]) -> Option<Self> {
        let (mut kind, mut rule) = (None, None);
        for field in fields(message) {
            let field = field?;
            match (field.number, field.wire_type) {
                (1, WIRE_VARINT) if kind.is_none() => kind = Some(field.varint as i32),
                (2, WIRE_LEN) if rule.is_none() => rule = Some(field.value),
                _ => return None,
            }
        }
        match (kind, rule) {
            (Some(discriminator::RULE), Some(rule)) => Self::of_rule_message(rule),
            _ => None,
        }
    }

    fn of_rule_message(message: &'a [u8]) -> Option<Self> {
        let mut view = RuleView::default();
        let (mut name, mut rule_class) = (None, None);
        for field in fields(message) {
            let field = field?;
            match field.number {
                1 => once(&mut name, &field)?,
                2 => once(&mut rule_class, &field)?,
                4 if field.wire_type == WIRE_LEN => view.attributes.push(field.value),
                5 => view.rule_inputs.push(text(&field)?),
                12 => once(&mut view.skylark_environment_hash_code, &field)?,
                13 => view.instantiation_stack.push(text(&field)?),
                15 if field.wire_type == WIRE_LEN => {
                    let (mut label, mut checksum) = (None, None);
                    for inner in fields(field.value) {
                        let inner = inner?;
                        match inner.number {
                            1 => once(&mut label, &inner)?,
                            2 => once(&mut checksum, &inner)?,
                            _ => {}
                        }
                    }
                    view.configured_rule_inputs.push((label, checksum));
                }
                4 | 15 => return None,
                // Fields hashing does not read (location, outputs, ...), skipped as prost does.
                _ => {}
            }
        }
        view.name = name.unwrap_or_default();
        view.rule_class = rule_class.unwrap_or_default();
        Some(view)
    }

    /// The same fields of a decoded rule.
    pub fn of_rule(rule: &'a Rule) -> Self {
        RuleView {
            name: &rule.name,
            rule_class: &rule.rule_class,
            attributes: rule.attribute.iter().map(|a| &a[..]).collect(),
            rule_inputs: rule.rule_input.iter().map(String::as_str).collect(),
            skylark_environment_hash_code: rule.skylark_environment_hash_code.as_deref(),
            instantiation_stack: rule
                .instantiation_stack
                .iter()
                .map(String::as_str)
                .collect(),
            configured_rule_inputs: rule
                .configured_rule_input
                .iter()
                .map(|c| (c.label.as_deref(), c.configuration_checksum.as_deref()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{ConfiguredRuleInput, Target};
    use bytes::Bytes;
    use prost::Message;

    fn rule() -> Rule {
        Rule {
            name: "//a:r".into(),
            rule_class: "genrule".into(),
            attribute: vec![
                Bytes::from_static(b"\x0a\x04name"),
                Bytes::from_static(b"\x0a\x04srcs\x10\x05"),
            ],
            rule_input: vec!["//a:b".into(), "@x//:y".into()],
            skylark_environment_hash_code: Some("abc".into()),
            instantiation_stack: vec!["a/BUILD:1:1: <toplevel>".into()],
            configured_rule_input: vec![ConfiguredRuleInput {
                label: Some("//a:b".into()),
                configuration_checksum: None,
            }],
        }
    }

    fn target(rule: Rule) -> Vec<u8> {
        Target {
            r#type: discriminator::RULE,
            rule: Some(rule),
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn view_of_bytes_equals_view_of_decoded_rule() {
        let r = rule();
        let bytes = target(r.clone());
        // `type` then `rule`, as Bazel writes them; only the type is kept when truncated to 2.
        assert_eq!(&bytes[..2], b"\x08\x01");
        assert_eq!(RuleView::of_target(&bytes), Some(RuleView::of_rule(&r)));
        // Unread fields (here `location`, 3) are skipped.
        let mut with_location = bytes.clone();
        let mut extra = Vec::new();
        prost::encoding::string::encode(3, &"a/BUILD:1:1".to_owned(), &mut extra);
        with_location.truncate(2);
        with_location.extend(target_rule_field(&r, &extra));
        assert_eq!(
            RuleView::of_target(&with_location),
            Some(RuleView::of_rule(&r))
        );
    }

    /// Field 1 (type) and field 2 (the rule with `extra` appended), re-encoded.
    fn target_rule_field(r: &Rule, extra: &[u8]) -> Vec<u8> {
        let mut rule = r.encode_to_vec();
        rule.extend_from_slice(extra);
        let mut out = Vec::new();
        prost::encoding::encode_key(2, prost::encoding::WireType::LengthDelimited, &mut out);
        prost::encoding::encode_varint(rule.len() as u64, &mut out);
        out.extend(rule);
        out
    }

    #[test]
    fn unusual_encodings_are_left_to_prost() {
        let r = rule();
        // A second name (prost keeps the last one).
        let mut extra = Vec::new();
        prost::encoding::string::encode(1, &"//a:other".to_owned(), &mut extra);
        let mut bytes = target(Rule::default());
        bytes.truncate(2);
        bytes.extend(target_rule_field(&r, &extra));
        assert_eq!(RuleView::of_target(&bytes), None);
        // Invalid UTF-8 in an input (prost fails).
        let mut bad = Vec::new();
        prost::encoding::bytes::encode(5, &vec![0xffu8], &mut bad);
        let mut bytes = target(Rule::default());
        bytes.truncate(2);
        bytes.extend(target_rule_field(&r, &bad));
        assert_eq!(RuleView::of_target(&bytes), None);
        // Not a rule, truncated, garbage.
        let source = Target {
            r#type: discriminator::SOURCE_FILE,
            ..Default::default()
        };
        assert_eq!(RuleView::of_target(&source.encode_to_vec()), None);
        let whole = target(r);
        assert_eq!(RuleView::of_target(&whole[..whole.len() - 1]), None);
        assert_eq!(RuleView::of_target(&[0xff; 12]), None);
    }
}
