//! The parts of `build.proto` / `analysis_v2.proto` we decode. Field numbers follow Bazel's
//! definitions; fields we never read are skipped by prost as unknown.

use bytes::Bytes;

/// `blaze_query.Target.Discriminator`.
pub mod discriminator {
    pub const RULE: i32 = 1;
    pub const SOURCE_FILE: i32 = 2;
    pub const GENERATED_FILE: i32 = 3;
    pub const PACKAGE_GROUP: i32 = 4;
    pub const ENVIRONMENT_GROUP: i32 = 5;
}

/// `blaze_query.Attribute.Discriminator` values we need to build synthetic attributes.
pub mod attribute_type {
    pub const STRING_LIST: i32 = 5;
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Target {
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    #[prost(message, optional, tag = "2")]
    pub rule: Option<Rule>,
    #[prost(message, optional, tag = "3")]
    pub source_file: Option<SourceFile>,
    #[prost(message, optional, tag = "4")]
    pub generated_file: Option<GeneratedFile>,
    #[prost(message, optional, tag = "5")]
    pub package_group: Option<PackageGroup>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Rule {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub rule_class: String,
    /// Raw serialised `Attribute` messages, exactly as Bazel wrote them.
    #[prost(bytes = "bytes", repeated, tag = "4")]
    pub attribute: Vec<Bytes>,
    #[prost(string, repeated, tag = "5")]
    pub rule_input: Vec<String>,
    #[prost(string, optional, tag = "12")]
    pub skylark_environment_hash_code: Option<String>,
    #[prost(string, repeated, tag = "13")]
    pub instantiation_stack: Vec<String>,
    #[prost(message, repeated, tag = "15")]
    pub configured_rule_input: Vec<ConfiguredRuleInput>,
}

/// The fields of `Attribute` we interpret (the hash covers the raw bytes).
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeHead {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(int32, tag = "2")]
    pub r#type: i32,
    #[prost(string, repeated, tag = "6")]
    pub string_list_value: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ConfiguredRuleInput {
    #[prost(string, optional, tag = "1")]
    pub label: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub configuration_checksum: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SourceFile {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, repeated, tag = "3")]
    pub subinclude: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GeneratedFile {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub generating_rule: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PackageGroup {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, repeated, tag = "2")]
    pub contained_package: Vec<String>,
    #[prost(string, repeated, tag = "3")]
    pub included_package_group: Vec<String>,
}

/// `analysis.CqueryResult`: one message of cquery's `streamed_proto` output.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CqueryResult {
    #[prost(message, repeated, tag = "1")]
    pub results: Vec<ConfiguredTarget>,
}

/// `analysis.ConfiguredTarget` (only the target).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConfiguredTarget {
    #[prost(message, optional, tag = "1")]
    pub target: Option<Target>,
}

impl Target {
    /// The label of the target, whatever its kind; `None` for kinds we do not know.
    pub fn label(&self) -> Option<&str> {
        match self.r#type {
            discriminator::RULE => self.rule.as_ref().map(|r| r.name.as_str()),
            discriminator::SOURCE_FILE => self.source_file.as_ref().map(|s| s.name.as_str()),
            discriminator::GENERATED_FILE => self.generated_file.as_ref().map(|g| g.name.as_str()),
            discriminator::PACKAGE_GROUP => self.package_group.as_ref().map(|p| p.name.as_str()),
            _ => None,
        }
    }
}
