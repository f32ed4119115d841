//! Validates requests (and the fake's own answers) against Firecracker's swagger file,
//! `firecracker-api.yaml`, read at run time: a route exists for the method and path, a body is
//! present when the spec requires one, and the body matches its schema with `$ref`s resolved:
//! required properties present, types and enums right, integer bounds and formats respected,
//! and no property the schema does not name. The swagger sets no `additionalProperties: false`,
//! but Firecracker deserializes with `deny_unknown_fields`, so unknown keys are rejected unless
//! a schema explicitly allows extra properties.
//!
//! Loading fails on any schema keyword this validator does not implement, so a future swagger
//! with, say, `pattern` or `oneOf` cannot be silently half-checked.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use serde_json::{Map, Value};

/// The environment variable that overrides where the swagger file is read from.
pub const SWAGGER_ENV: &str = "FIRECRACKER_API_YAML";
/// Where the swagger file lives relative to an ancestor of this crate's directory.
pub const SWAGGER_RELATIVE: &str = "shared/firecracker/firecracker-api.yaml";

/// Schema keywords the validator enforces (`description`, `default`, `example`, `readOnly`
/// carry no constraint on a request).
const KEYWORDS: &[&str] = &[
    "$ref",
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "minimum",
    "maximum",
    "format",
    "description",
    "default",
    "example",
    "readOnly",
];

#[derive(Debug, thiserror::Error)]
pub enum SwaggerError {
    #[error("the Firecracker swagger file was not found: set {SWAGGER_ENV} or place it at <ancestor of {}>/{SWAGGER_RELATIVE} (looked at: {})", crate_dir.display(), tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NotFound {
        crate_dir: PathBuf,
        tried: Vec<PathBuf>,
    },
    #[error("reading the Firecracker swagger {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing the Firecracker swagger {}: {detail}", path.display())]
    Parse { path: PathBuf, detail: String },
    #[error("the Firecracker swagger {} uses {what} at {at}, which the validator does not implement", path.display())]
    Unsupported {
        path: PathBuf,
        at: String,
        what: String,
    },
}

/// Why a request does not match the swagger. `Display` is the `fault_message` the fake sends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("Invalid request method and/or path: {method} {path}.")]
    UnknownRoute { method: String, path: String },
    #[error("{method} {template} requires a JSON body ({schema})")]
    MissingBody {
        method: String,
        template: String,
        schema: String,
    },
    #[error("{method} {template} takes no body")]
    UnexpectedBody { method: String, template: String },
    #[error("the body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("request does not match firecracker-api.yaml ({schema}): {pointer}: {reason}")]
    Schema {
        schema: String,
        pointer: String,
        reason: String,
    },
}

/// One route of the swagger.
#[derive(Debug, Clone)]
pub struct Operation {
    pub method: String,
    pub template: String,
    pub operation_id: String,
    body: Option<BodyParam>,
    /// Status ("204", "400", "default") to its schema, if it has one.
    responses: BTreeMap<String, Option<Value>>,
}

#[derive(Debug, Clone)]
struct BodyParam {
    required: bool,
    schema: Value,
}

/// A request that matched a route, with its body parsed and validated.
#[derive(Debug, Clone)]
pub struct MatchedRequest {
    pub operation_id: String,
    pub template: String,
    /// `{drive_id}` and friends, from the path.
    pub path_params: BTreeMap<String, String>,
    pub body: Option<Value>,
}

/// The parsed swagger file.
#[derive(Debug, Clone)]
pub struct Swagger {
    path: PathBuf,
    version: String,
    operations: Vec<Operation>,
    definitions: Map<String, Value>,
}

impl Swagger {
    /// Reads the file at [`Swagger::default_path`] once per process.
    pub fn shared() -> Result<Arc<Swagger>, SwaggerError> {
        static SHARED: OnceLock<Result<Arc<Swagger>, String>> = OnceLock::new();
        let loaded = SHARED.get_or_init(|| {
            Swagger::default_path()
                .and_then(|p| Swagger::load(&p))
                .map(Arc::new)
                .map_err(|e| e.to_string())
        });
        match loaded {
            Ok(swagger) => Ok(swagger.clone()),
            // Re-run for a typed error (the cached message is the same).
            Err(_) => Swagger::default_path().and_then(|p| Swagger::load(&p).map(Arc::new)),
        }
    }

    /// `$FIRECRACKER_API_YAML` if set, else the first `<ancestor>/shared/firecracker/
    /// firecracker-api.yaml` above this crate's directory (the workspace keeps `shared/` beside
    /// its checkout).
    pub fn default_path() -> Result<PathBuf, SwaggerError> {
        if let Some(path) = std::env::var_os(SWAGGER_ENV) {
            return Ok(PathBuf::from(path));
        }
        let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let mut tried = Vec::new();
        for dir in crate_dir.ancestors() {
            let candidate = dir.join(SWAGGER_RELATIVE);
            if candidate.is_file() {
                return Ok(candidate);
            }
            tried.push(candidate);
        }
        Err(SwaggerError::NotFound { crate_dir, tried })
    }

    pub fn load(path: &Path) -> Result<Swagger, SwaggerError> {
        let text = std::fs::read_to_string(path).map_err(|source| SwaggerError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Swagger::parse(&text, path)
    }

    /// Parses swagger text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Swagger, SwaggerError> {
        let parse_error = |detail: String| SwaggerError::Parse {
            path: path.to_path_buf(),
            detail,
        };
        let yaml: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(text).map_err(|e| parse_error(e.to_string()))?;
        let doc = yaml_to_json(yaml).map_err(parse_error)?;
        if doc.get("swagger").and_then(Value::as_str) != Some("2.0") {
            return Err(parse_error("not a swagger 2.0 document".into()));
        }
        let version = doc
            .pointer("/info/version")
            .and_then(Value::as_str)
            .ok_or_else(|| parse_error("no info.version".into()))?
            .to_owned();
        let definitions = doc
            .get("definitions")
            .and_then(Value::as_object)
            .cloned()
            .ok_or_else(|| parse_error("no definitions".into()))?;
        let paths = doc
            .get("paths")
            .and_then(Value::as_object)
            .ok_or_else(|| parse_error("no paths".into()))?;
        let unsupported = |at: String, what: String| SwaggerError::Unsupported {
            path: path.to_path_buf(),
            at,
            what,
        };
        let mut operations = Vec::new();
        for (template, item) in paths {
            let item = item
                .as_object()
                .ok_or_else(|| parse_error(format!("path {template} is not a mapping")))?;
            for (method, op) in item {
                let method_upper = method.to_ascii_uppercase();
                if !["GET", "PUT", "PATCH", "POST", "DELETE"].contains(&method_upper.as_str()) {
                    return Err(unsupported(
                        format!("paths.{template}"),
                        format!("key {method:?}"),
                    ));
                }
                let at = format!("paths.{template}.{method}");
                let operation_id = op
                    .get("operationId")
                    .and_then(Value::as_str)
                    .ok_or_else(|| parse_error(format!("{at} has no operationId")))?
                    .to_owned();
                let mut body = None;
                for param in op
                    .get("parameters")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    match param.get("in").and_then(Value::as_str) {
                        Some("body") => {
                            let schema = param
                                .get("schema")
                                .cloned()
                                .ok_or_else(|| parse_error(format!("{at}: body without schema")))?;
                            body = Some(BodyParam {
                                required: param.get("required").and_then(Value::as_bool)
                                    == Some(true),
                                schema,
                            });
                        }
                        Some("path") => {
                            if param.get("type").and_then(Value::as_str) != Some("string") {
                                return Err(unsupported(
                                    at.clone(),
                                    "a non-string path parameter".into(),
                                ));
                            }
                        }
                        other => {
                            return Err(unsupported(
                                at.clone(),
                                format!("a parameter in {other:?}"),
                            ))
                        }
                    }
                }
                let mut responses = BTreeMap::new();
                for (status, response) in op
                    .get("responses")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                {
                    responses.insert(status.clone(), response.get("schema").cloned());
                }
                operations.push(Operation {
                    method: method_upper,
                    template: template.clone(),
                    operation_id,
                    body,
                    responses,
                });
            }
        }
        let swagger = Swagger {
            path: path.to_path_buf(),
            version,
            operations,
            definitions,
        };
        swagger.check_supported()?;
        Ok(swagger)
    }

    /// Every schema in the document uses only keywords in [`KEYWORDS`], types the validator
    /// knows, and `$ref`s that resolve.
    fn check_supported(&self) -> Result<(), SwaggerError> {
        let mut schemas: Vec<(String, &Value)> = self
            .definitions
            .iter()
            .map(|(name, schema)| (format!("definitions.{name}"), schema))
            .collect();
        for op in &self.operations {
            let at = format!("paths.{}.{}", op.template, op.method.to_ascii_lowercase());
            if let Some(body) = &op.body {
                schemas.push((format!("{at} body"), &body.schema));
            }
            for (status, schema) in &op.responses {
                if let Some(schema) = schema {
                    schemas.push((format!("{at} response {status}"), schema));
                }
            }
        }
        while let Some((at, schema)) = schemas.pop() {
            let unsupported = |what: String| SwaggerError::Unsupported {
                path: self.path.clone(),
                at: at.clone(),
                what,
            };
            let object = schema
                .as_object()
                .ok_or_else(|| unsupported("a schema that is not a mapping".into()))?;
            for (key, value) in object {
                if !KEYWORDS.contains(&key.as_str()) {
                    return Err(unsupported(format!("keyword {key:?}")));
                }
                match key.as_str() {
                    "$ref" => {
                        self.resolve(value.as_str().unwrap_or_default())
                            .ok_or_else(|| unsupported(format!("unresolvable $ref {value}")))?;
                    }
                    "type" => {
                        let known = ["object", "string", "integer", "number", "boolean", "array"];
                        if !value.as_str().is_some_and(|t| known.contains(&t)) {
                            return Err(unsupported(format!("type {value}")));
                        }
                    }
                    "properties" => {
                        for (name, sub) in value.as_object().into_iter().flatten() {
                            schemas.push((format!("{at}.{name}"), sub));
                        }
                    }
                    "items" => schemas.push((format!("{at}[]"), value)),
                    "additionalProperties" if value.is_object() => {
                        schemas.push((format!("{at}.*"), value))
                    }
                    "additionalProperties" if !value.is_boolean() => {
                        return Err(unsupported(format!("additionalProperties {value}")))
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `info.version` (`1.17.0-dev`).
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn operations(&self) -> &[Operation] {
        &self.operations
    }

    /// The definition a `$ref` names (`#/definitions/Drive`).
    fn resolve(&self, reference: &str) -> Option<&Value> {
        self.definitions
            .get(reference.strip_prefix("#/definitions/")?)
    }

    /// The route for `method path`, with its path parameters.
    pub fn route(
        &self,
        method: &str,
        path: &str,
    ) -> Option<(&Operation, BTreeMap<String, String>)> {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        self.operations
            .iter()
            .filter(|op| op.method == method)
            .find_map(|op| {
                let template: Vec<&str> = op.template.trim_start_matches('/').split('/').collect();
                if template.len() != segments.len() {
                    return None;
                }
                let mut params = BTreeMap::new();
                for (t, s) in template.iter().zip(&segments) {
                    if let Some(name) = t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
                        if s.is_empty() {
                            return None;
                        }
                        params.insert(name.to_owned(), (*s).to_owned());
                    } else if t != s {
                        return None;
                    }
                }
                Some((op, params))
            })
    }

    /// Checks a request: route, body presence, body schema.
    pub fn validate_request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<MatchedRequest, Rejection> {
        let (op, path_params) =
            self.route(method, path)
                .ok_or_else(|| Rejection::UnknownRoute {
                    method: method.to_owned(),
                    path: path.to_owned(),
                })?;
        let body = body.filter(|b| !b.iter().all(u8::is_ascii_whitespace));
        let value = match (&op.body, body) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(Rejection::UnexpectedBody {
                    method: op.method.clone(),
                    template: op.template.clone(),
                })
            }
            (Some(param), None) => {
                if param.required {
                    return Err(Rejection::MissingBody {
                        method: op.method.clone(),
                        template: op.template.clone(),
                        schema: schema_name(&param.schema),
                    });
                }
                None
            }
            (Some(param), Some(bytes)) => {
                let value: Value = serde_json::from_slice(bytes)
                    .map_err(|e| Rejection::InvalidJson(e.to_string()))?;
                self.check(&param.schema, &value, "body")
                    .map_err(|(pointer, reason)| Rejection::Schema {
                        schema: schema_name(&param.schema),
                        pointer,
                        reason,
                    })?;
                Some(value)
            }
        };
        Ok(MatchedRequest {
            operation_id: op.operation_id.clone(),
            template: op.template.clone(),
            path_params,
            body: value,
        })
    }

    /// Checks an answer of `operation_id` against the swagger's response for `status` (or
    /// `default`): a schema means a JSON body matching it, no schema means no body.
    pub fn validate_response(
        &self,
        operation_id: &str,
        status: u16,
        body: Option<&Value>,
    ) -> Result<(), Rejection> {
        let schema_error = |pointer: &str, reason: String| Rejection::Schema {
            schema: format!("{operation_id} response {status}"),
            pointer: pointer.to_owned(),
            reason,
        };
        let op = self
            .operations
            .iter()
            .find(|op| op.operation_id == operation_id)
            .ok_or_else(|| schema_error("", "no such operation".into()))?;
        let schema = op
            .responses
            .get(&status.to_string())
            .or_else(|| op.responses.get("default"))
            .ok_or_else(|| schema_error("", "status not documented".into()))?;
        match (schema, body) {
            (None, None) => Ok(()),
            (None, Some(_)) => Err(schema_error("body", "this status has no body".into())),
            (Some(_), None) => Err(schema_error("body", "missing".into())),
            (Some(schema), Some(body)) => self
                .check(schema, body, "body")
                .map_err(|(pointer, reason)| schema_error(&pointer, reason)),
        }
    }

    /// Checks `value` against `#/definitions/<name>`.
    pub fn validate_definition(&self, name: &str, value: &Value) -> Result<(), Rejection> {
        let schema = serde_json::json!({ "$ref": format!("#/definitions/{name}") });
        self.check(&schema, value, "body")
            .map_err(|(pointer, reason)| Rejection::Schema {
                schema: name.to_owned(),
                pointer,
                reason,
            })
    }

    /// The validator proper: `Err((pointer, reason))` at the first mismatch.
    fn check(&self, schema: &Value, value: &Value, at: &str) -> Result<(), (String, String)> {
        let fail = |reason: String| Err((at.to_owned(), reason));
        let Some(schema_obj) = schema.as_object() else {
            return fail("schema is not a mapping".into());
        };
        if let Some(reference) = schema_obj.get("$ref").and_then(Value::as_str) {
            let Some(target) = self.resolve(reference) else {
                return fail(format!("unresolvable $ref {reference}"));
            };
            return self.check(target, value, at);
        }
        if let Some(allowed) = schema_obj.get("enum").and_then(Value::as_array) {
            if !allowed.contains(value) {
                let names: Vec<String> = allowed.iter().map(Value::to_string).collect();
                return fail(format!("{value} is not one of [{}]", names.join(", ")));
            }
        }
        let kind = schema_obj.get("type").and_then(Value::as_str).unwrap_or(
            if schema_obj.contains_key("properties")
                || schema_obj.contains_key("additionalProperties")
            {
                "object"
            } else {
                "any"
            },
        );
        match kind {
            "any" => Ok(()),
            "string" => match value {
                Value::String(_) => Ok(()),
                _ => fail(format!("expected a string, got {}", json_type(value))),
            },
            "boolean" => match value {
                Value::Bool(_) => Ok(()),
                _ => fail(format!("expected a boolean, got {}", json_type(value))),
            },
            "number" => match value {
                Value::Number(n) => check_bounds(schema_obj, n.as_f64().unwrap_or(f64::NAN), at),
                _ => fail(format!("expected a number, got {}", json_type(value))),
            },
            "integer" => {
                let number = match value {
                    Value::Number(n) if n.is_i64() || n.is_u64() => n,
                    _ => return fail(format!("expected an integer, got {}", json_type(value))),
                };
                let format_range = match schema_obj.get("format").and_then(Value::as_str) {
                    Some("int32") => Some((i64::from(i32::MIN), i64::from(i32::MAX))),
                    Some("int64") => Some((i64::MIN, i64::MAX)),
                    _ => None,
                };
                if let Some((lo, hi)) = format_range {
                    let fits = number.as_i64().is_some_and(|v| (lo..=hi).contains(&v));
                    if !fits {
                        return fail(format!("{number} does not fit in {lo}..={hi}"));
                    }
                }
                // Integers past 2^53 lose precision as f64, but every bound in the swagger is
                // far below that.
                let as_f64 = number
                    .as_i64()
                    .map(|v| v as f64)
                    .or_else(|| number.as_u64().map(|v| v as f64))
                    .unwrap_or(f64::NAN);
                check_bounds(schema_obj, as_f64, at)
            }
            "array" => {
                let Value::Array(items) = value else {
                    return fail(format!("expected an array, got {}", json_type(value)));
                };
                if let Some(item_schema) = schema_obj.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        self.check(item_schema, item, &format!("{at}[{i}]"))?;
                    }
                }
                Ok(())
            }
            "object" => {
                let Value::Object(fields) = value else {
                    return fail(format!("expected an object, got {}", json_type(value)));
                };
                let empty = Map::new();
                let properties = schema_obj
                    .get("properties")
                    .and_then(Value::as_object)
                    .unwrap_or(&empty);
                for required in schema_obj
                    .get("required")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                {
                    if !fields.contains_key(required) {
                        return fail(format!("missing required property `{required}`"));
                    }
                }
                for (key, field) in fields {
                    let here = format!("{at}.{key}");
                    if let Some(sub) = properties.get(key) {
                        self.check(sub, field, &here)?;
                        continue;
                    }
                    match schema_obj.get("additionalProperties") {
                        Some(Value::Bool(true)) => {}
                        Some(extra @ Value::Object(_)) => self.check(extra, field, &here)?,
                        _ => {
                            let mut known: Vec<&str> =
                                properties.keys().map(String::as_str).collect();
                            known.sort_unstable();
                            return fail(format!(
                                "unknown property `{key}` (expected one of: {})",
                                known.join(", ")
                            ));
                        }
                    }
                }
                Ok(())
            }
            other => fail(format!("unsupported schema type {other}")),
        }
    }
}

fn check_bounds(schema: &Map<String, Value>, value: f64, at: &str) -> Result<(), (String, String)> {
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
        if value < min {
            return Err((
                at.to_owned(),
                format!("{value} is less than the minimum {min}"),
            ));
        }
    }
    if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
        if value > max {
            return Err((
                at.to_owned(),
                format!("{value} is more than the maximum {max}"),
            ));
        }
    }
    Ok(())
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `Drive` for `{"$ref": "#/definitions/Drive"}`, else `inline schema`.
fn schema_name(schema: &Value) -> String {
    schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/definitions/"))
        .unwrap_or("inline schema")
        .to_owned()
}

/// YAML to JSON, with mapping keys as strings (response codes are integer keys in YAML).
fn yaml_to_json(yaml: serde_yaml_ng::Value) -> Result<Value, String> {
    use serde_yaml_ng::Value as Y;
    Ok(match yaml {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                let f = n.as_f64().ok_or("unrepresentable number")?;
                serde_json::Number::from_f64(f)
                    .map(Value::Number)
                    .ok_or_else(|| format!("non-finite number {f}"))?
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(
            items
                .into_iter()
                .map(yaml_to_json)
                .collect::<Result<_, _>>()?,
        ),
        Y::Mapping(mapping) => {
            let mut object = Map::new();
            for (key, value) in mapping {
                let key = match key {
                    Y::String(s) => s,
                    Y::Number(n) => n.to_string(),
                    Y::Bool(b) => b.to_string(),
                    other => return Err(format!("unsupported mapping key {other:?}")),
                };
                object.insert(key, yaml_to_json(value)?);
            }
            Value::Object(object)
        }
        Y::Tagged(tagged) => return Err(format!("unexpected YAML tag {}", tagged.tag)),
    })
}
