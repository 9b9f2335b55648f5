//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod binary;
pub mod builder;
pub mod controller;
pub mod fixtures;
pub mod git;
pub mod golden;
pub mod hostile_git;
pub mod keys;
pub mod profiles;
pub mod registry;
pub mod runc;
pub mod sigstore;
pub mod ssh;

use archforge::api::ImageBuild;
use kube::CustomResourceExt;
use regex::Regex;
use serde_json::Value;

/// Runs a command that must succeed and returns its trimmed standard output.
pub fn run(cmd: &mut std::process::Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// What a finished command printed, standard output then standard error, for messages.
pub fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The median of benchmark samples.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

/// The repository root (the workspace), where samples, CRDs and charts live.
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate sits in the workspace")
        .to_path_buf()
}

pub fn sample_path() -> String {
    repo_root()
        .join("config/samples/imagebuild.yaml")
        .display()
        .to_string()
}

/// The committed sample ImageBuild, as the controller would read it from the API server.
pub fn sample() -> ImageBuild {
    let mut build = archforge::manifest::read_imagebuild(&sample_path()).expect("sample parses");
    build.metadata.uid = Some("5f3c1a8e-2b7d-4e61-9a0c-7d2e8b4f6a10".to_string());
    build.metadata.generation = Some(3);
    build
}

/// The openAPIV3Schema of the generated CRD.
pub fn crd_schema() -> Value {
    schema_of(ImageBuild::crd())
}

/// The BuildPolicy CRD's OpenAPI schema.
pub fn policy_crd_schema() -> Value {
    schema_of(archforge::api::BuildPolicy::crd())
}

fn schema_of(
    crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Value {
    serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("the CRD has a schema"),
    )
    .expect("the schema serializes")
}

/// What the API server's structural validation (every supported version, no CEL) says
/// of `value`: type, required, enum, pattern, length, item and numeric bounds, and the
/// uniqueness that `x-kubernetes-list-type` set and map impose.
pub fn schema_errors(schema: &Value, value: &Value, path: &str) -> Vec<String> {
    let mut errors = Vec::new();
    check(schema, value, path, &mut errors);
    errors
}

fn check(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    if value.is_null() {
        return;
    }
    let kind = schema.get("type").and_then(Value::as_str);
    let type_ok = match kind {
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        Some("array") => value.is_array(),
        Some("object") => value.is_object(),
        _ => true,
    };
    if !type_ok {
        errors.push(format!("{path}: expected {}", kind.unwrap_or("?")));
        return;
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        errors.push(format!("{path}: unsupported value {value}"));
    }
    if let Some(s) = value.as_str() {
        let len = s.chars().count() as u64;
        if let Some(pattern) = schema.get("pattern").and_then(Value::as_str)
            && !Regex::new(pattern)
                .expect("schema pattern compiles")
                .is_match(s)
        {
            errors.push(format!("{path}: does not match {pattern}"));
        }
        if schema
            .get("maxLength")
            .and_then(Value::as_u64)
            .is_some_and(|m| len > m)
        {
            errors.push(format!("{path}: too long"));
        }
        if schema
            .get("minLength")
            .and_then(Value::as_u64)
            .is_some_and(|m| len < m)
        {
            errors.push(format!("{path}: too short"));
        }
    }
    if let Some(n) = value.as_f64() {
        if schema
            .get("minimum")
            .and_then(Value::as_f64)
            .is_some_and(|m| n < m)
        {
            errors.push(format!("{path}: below minimum"));
        }
        if schema
            .get("maximum")
            .and_then(Value::as_f64)
            .is_some_and(|m| n > m)
        {
            errors.push(format!("{path}: above maximum"));
        }
    }
    if let Some(items) = value.as_array() {
        let len = items.len() as u64;
        if schema
            .get("minItems")
            .and_then(Value::as_u64)
            .is_some_and(|m| len < m)
        {
            errors.push(format!("{path}: too few items"));
        }
        if schema
            .get("maxItems")
            .and_then(Value::as_u64)
            .is_some_and(|m| len > m)
        {
            errors.push(format!("{path}: too many items"));
        }
        match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("set") => {
                for (i, item) in items.iter().enumerate() {
                    if items[..i].contains(item) {
                        errors.push(format!("{path}[{i}]: duplicate value"));
                    }
                }
            }
            Some("map") => {
                let keys: Vec<&str> = schema["x-kubernetes-list-map-keys"]
                    .as_array()
                    .expect("list maps name their keys")
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                let key_of = |item: &Value| -> Vec<Value> {
                    keys.iter()
                        .map(|k| item.get(*k).cloned().unwrap_or(Value::Null))
                        .collect()
                };
                for (i, item) in items.iter().enumerate() {
                    if items[..i].iter().any(|other| key_of(other) == key_of(item)) {
                        errors.push(format!("{path}[{i}]: duplicate entry"));
                    }
                }
            }
            _ => {}
        }
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                check(item_schema, item, &format!("{path}[{i}]"), errors);
            }
        }
    }
    if let Some(object) = value.as_object() {
        if let Some(required) = schema.get("required").and_then(Value::as_array) {
            for field in required.iter().filter_map(Value::as_str) {
                if !object.contains_key(field) {
                    errors.push(format!("{path}.{field}: required"));
                }
            }
        }
        let properties = schema.get("properties").and_then(Value::as_object);
        let additional = schema.get("additionalProperties");
        for (key, child) in object {
            let child_path = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            if let Some(child_schema) = properties.and_then(|p| p.get(key)) {
                check(child_schema, child, &child_path, errors);
            } else if let Some(additional) = additional.filter(|a| a.is_object()) {
                check(additional, child, &child_path, errors);
            }
        }
    }
}

/// The CEL rules' verdict on `object`, evaluated client-side as the API server would.
pub fn cel_errors(schema: &Value, object: &Value) -> Vec<String> {
    match kube::core::cel::Validator::new().validate(schema, object, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(|e| e.message.clone()).collect(),
    }
}

/// The secret text in [`MALFORMED_SECRET_LINES`].
pub const MALFORMED_SECRET: &str = "SUPERSECRET-pass-123";

/// Secret values that break the YAML, each with the (1-based) line and column where
/// serde_saphyr reports the error in [`write_imagebuild_with_secret_line`]'s file.
pub const MALFORMED_SECRET_LINES: [(&str, u64, u64); 2] = [
    ("  password: \"SUPERSECRET-pass-123", 20, 13),
    ("  password: SUPERSECRET-pass-123: pass", 20, 33),
];

/// Writes an ImageBuild file (HTTPS source, credentialsSecret `git`) followed by the Secret
/// `git` whose last line is `password_line`, and returns its path.
pub fn write_imagebuild_with_secret_line(dir: &std::path::Path, password_line: &str) -> String {
    let path = dir.join("ib.yaml");
    let text = format!(
        "apiVersion: archforge.dev/v1alpha1\nkind: ImageBuild\nmetadata:\n  name: app\nspec:\n  source:\n    git:\n      url: https://git.example.com/team/app.git\n      credentialsSecret: git\n  platforms: [linux/amd64]\n  output:\n    image: registry.example.com/team/app:v1\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: git\nstringData:\n  username: bot\n{password_line}\n"
    );
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Asserts that `out` failed, names the line and column of the broken YAML, and shows no
/// part of the malformed Secret.
pub fn assert_malformed_secret_hidden(out: &std::process::Output, line: u64, column: u64) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for shown in [&stdout, &stderr] {
        assert!(
            !shown.contains("SUPERSECRET"),
            "the Secret's value was printed:\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }
    assert!(
        stderr.contains(&format!(
            "ib.yaml is not an ImageBuild: invalid YAML at line {line} column {column} (in its YAML document 2)"
        )),
        "{stderr}"
    );
}
