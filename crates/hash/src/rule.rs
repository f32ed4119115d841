//! Per-rule work that needs nothing but the rule itself (spec 4.5-4.7): the attribute
//! digest, the sorted input list, the `.bzl` files of the instantiation stack, tags.

use bazel_diff_query::proto::{attribute_type, AttributeHead, PackageGroup};
use bazel_diff_query::RuleView;
use bytes::Bytes;
use prost::Message;
use sha2::{Digest as _, Sha256};

use crate::{java_cmp, Digest, HashConfig, HashError};

/// A rule reduced to what the graph pass needs.
pub(crate) struct PreparedRule {
    pub label: String,
    /// `ruleDigest(R)` (spec 4.6).
    pub attribute_digest: Digest,
    /// Sorted, de-duplicated encoded inputs (spec 4.7).
    pub inputs: Vec<String>,
    /// `.bzl`/`.scl` paths of the instantiation stack; `None` when the stack is empty.
    pub bzl_paths: Option<Vec<String>>,
    /// Carries one of `--alwaysAffectedTags`.
    pub always_affected: bool,
    /// Labels named in `visibility` besides `//visibility:*`: edges to package groups are
    /// added once the graph is known.
    pub visibility: Vec<String>,
    /// A synthetic rule standing for a `package_group`.
    pub is_package_group: bool,
}

/// Reads field 1 (`name`) of a serialised `Attribute` without decoding the rest.
fn attribute_name(bytes: &[u8]) -> Option<&str> {
    let mut buf = bytes;
    while !buf.is_empty() {
        let key = prost::encoding::decode_varint(&mut buf).ok()?;
        let (field, wire_type) = (key >> 3, key & 7);
        let len = match wire_type {
            0 => {
                prost::encoding::decode_varint(&mut buf).ok()?;
                continue;
            }
            1 => 8,
            5 => 4,
            2 => usize::try_from(prost::encoding::decode_varint(&mut buf).ok()?).ok()?,
            _ => return None,
        };
        let value = buf.get(..len)?;
        if field == 1 && wire_type == 2 {
            return std::str::from_utf8(value).ok();
        }
        buf = &buf[len..];
    }
    None
}

/// The external transform of a rule input (spec 4.7): `@repo//x` becomes `//external:repo`
/// unless the repo is fine-grained.
fn external_input(input: &str, fine_grained: &[String]) -> Option<String> {
    if input.starts_with("//") || input.starts_with("@//") || input.starts_with("@@//") {
        return None;
    }
    if !input.starts_with('@') || fine_grained.iter().any(|r| input.starts_with(r.as_str())) {
        return None;
    }
    let mut parts: Vec<&str> = input.split("//").collect();
    while parts.last() == Some(&"") {
        parts.pop();
    }
    match parts[..] {
        [repo, _] => Some(format!("//external:{}", repo.trim_start_matches('@'))),
        _ => None,
    }
}

fn digest_attributes<'a>(
    rule_class: &str,
    name: &str,
    env_hash: &str,
    attributes: impl Iterator<Item = (&'a str, &'a [u8])>,
    config: &HashConfig,
) -> Digest {
    let mut sorted: Vec<(&str, &[u8])> = attributes
        .filter(|(n, _)| *n != "generator_location" && !config.ignored_attributes.contains(*n))
        .collect();
    sorted.sort_by(|a, b| java_cmp(a.0, b.0));
    let mut h = Sha256::new();
    h.update(rule_class.as_bytes());
    h.update(name.as_bytes());
    h.update(env_hash.as_bytes());
    for (_, bytes) in sorted {
        h.update(bytes);
    }
    h.finalize().into()
}

fn finish_inputs(mut inputs: Vec<String>, config: &HashConfig) -> Vec<String> {
    let extras: Vec<String> = inputs
        .iter()
        .filter_map(|i| external_input(i, &config.fine_grained_repos))
        .collect();
    inputs.extend(extras);
    inputs.sort_by(|a, b| java_cmp(a, b));
    inputs.dedup();
    inputs
}

/// Keeps the main-repo `.bzl`/`.scl` files of an instantiation stack (spec 4.5).
fn bzl_paths(stack: &[&str]) -> Option<Vec<String>> {
    if stack.is_empty() {
        return None;
    }
    let mut paths: Vec<String> = stack
        .iter()
        .map(|&frame| frame.split(':').next().unwrap_or(frame))
        .filter(|p| p.ends_with(".bzl") || p.ends_with(".scl"))
        .filter(|p| !p.starts_with("external/") && !p.starts_with('@') && !p.starts_with("../"))
        .map(str::to_owned)
        .collect();
    paths.sort_by(|a, b| java_cmp(a, b));
    paths.dedup();
    Some(paths)
}

pub(crate) fn prepare_rule(
    rule: &RuleView<'_>,
    config: &HashConfig,
) -> Result<PreparedRule, HashError> {
    let bad_attribute = || HashError::BadAttribute {
        label: rule.name.to_owned(),
    };
    let mut named: Vec<(&str, &[u8])> = Vec::with_capacity(rule.attributes.len());
    let mut always_affected = false;
    let mut visibility = Vec::new();
    for &raw in &rule.attributes {
        let name = attribute_name(raw).ok_or_else(bad_attribute)?;
        let wanted = match name {
            "tags" => !config.always_affected_tags.is_empty(),
            "visibility" => true,
            _ => false,
        };
        if wanted {
            let head = AttributeHead::decode(raw).map_err(|_| bad_attribute())?;
            if name == "tags" {
                always_affected = head
                    .string_list_value
                    .iter()
                    .any(|t| config.always_affected_tags.contains(t));
            } else {
                visibility = head.string_list_value;
                // `//visibility:public` and `:private` can never be package groups; most
                // rules name nothing else, so they then keep no list to free later.
                visibility.retain(|v| !v.starts_with("//visibility:"));
                visibility.shrink_to_fit();
            }
        }
        named.push((name, raw));
    }
    let attribute_digest = digest_attributes(
        rule.rule_class,
        rule.name,
        rule.skylark_environment_hash_code.unwrap_or(""),
        named.into_iter(),
        config,
    );
    let inputs = if config.use_cquery {
        rule.configured_rule_inputs
            .iter()
            .filter_map(|&(label, checksum)| {
                let label = label?;
                Some(match checksum {
                    Some(c) if !c.is_empty() => format!("{label}|{c}"),
                    _ => label.to_owned(),
                })
            })
            .collect()
    } else {
        rule.rule_inputs.iter().map(|&i| i.to_owned()).collect()
    };
    Ok(PreparedRule {
        attribute_digest,
        inputs: finish_inputs(inputs, config),
        bzl_paths: bzl_paths(&rule.instantiation_stack),
        always_affected,
        visibility,
        is_package_group: false,
        label: rule.name.to_owned(),
    })
}

/// A `package_group` as a synthetic rule: its package list is a `packages` STRING_LIST
/// attribute and the groups it includes are its inputs (our fix for upstream #441).
pub(crate) fn prepare_package_group(group: PackageGroup, config: &HashConfig) -> PreparedRule {
    let packages = Bytes::from(
        AttributeHead {
            name: "packages".into(),
            r#type: attribute_type::STRING_LIST,
            string_list_value: group.contained_package,
        }
        .encode_to_vec(),
    );
    let attribute_digest = digest_attributes(
        "package_group",
        &group.name,
        "",
        std::iter::once(("packages", &packages[..])),
        config,
    );
    PreparedRule {
        attribute_digest,
        inputs: finish_inputs(group.included_package_group, config),
        bzl_paths: None,
        always_affected: false,
        visibility: Vec::new(),
        is_package_group: true,
        label: group.name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_transform() {
        let fg = vec!["@maven".to_owned()];
        assert_eq!(
            external_input("@bazel_tools//tools:x", &fg).as_deref(),
            Some("//external:bazel_tools")
        );
        assert_eq!(
            external_input("@@rules_go+//go:def", &fg).as_deref(),
            Some("//external:rules_go+")
        );
        assert_eq!(external_input("@maven//:guava", &fg), None);
        // Plain string prefix, as upstream: `@maven` also covers `@maven_android`.
        assert_eq!(external_input("@maven_android//:guava", &fg), None);
        assert_eq!(external_input("//a:b", &fg), None);
        assert_eq!(external_input("@//a:b", &fg), None);
        assert_eq!(external_input("@repo", &fg), None);
    }

    #[test]
    fn inputs_sorted_deduplicated_with_extras() {
        let config = HashConfig::new("/ws");
        let inputs = finish_inputs(
            vec![
                "//b:x".into(),
                "@r//:y".into(),
                "//a:x".into(),
                "//b:x".into(),
            ],
            &config,
        );
        assert_eq!(inputs, ["//a:x", "//b:x", "//external:r", "@r//:y"]);
    }

    #[test]
    fn stack_paths_filtered() {
        let stack = vec![
            "pkg/BUILD:3:9: <toplevel>",
            "tools/defs.bzl:6:5: bench_genrule",
            "tools/defs.bzl:9:5: other",
            "external/x/y.bzl:1:1: z",
            "a/b.scl:1:1: z",
        ];
        assert_eq!(bzl_paths(&stack).unwrap(), ["a/b.scl", "tools/defs.bzl"]);
        assert_eq!(bzl_paths(&[]), None);
    }

    #[test]
    fn attribute_name_scans_fields() {
        let attr = AttributeHead {
            name: "srcs".into(),
            r#type: 6,
            string_list_value: vec!["//a:b".into()],
        };
        assert_eq!(attribute_name(&attr.encode_to_vec()), Some("srcs"));
        // name after another field
        let mut buf = Vec::new();
        prost::encoding::int32::encode(2, &6, &mut buf);
        prost::encoding::string::encode(1, &"deps".to_owned(), &mut buf);
        assert_eq!(attribute_name(&buf), Some("deps"));
        assert_eq!(attribute_name(&[0xff]), None);
    }
}
