//! One test per validation rule: each bad input must be rejected by Rust `validate()` with a
//! message naming the field, and by the CRD itself (schema or CEL), as an API server would.

mod common;

use archforge::api::ImageBuild;
use common::{cel_errors, crd_schema, sample, schema_errors};
use serde_json::{Value, json};

/// Which layer of the CRD rejects the input at `kubectl apply` time.
#[derive(Debug)]
enum Layer {
    /// Structural schema: enforced by every supported API server.
    Schema,
    /// CEL rule with this message: enforced from 1.25 (Rust `validate()` covers 1.24).
    Cel(&'static str),
}

fn object_with(change: impl FnOnce(&mut Value)) -> Value {
    let mut object = serde_json::to_value(sample()).unwrap();
    change(&mut object["spec"]);
    object
}

/// Asserts that `change` makes the sample invalid in both Rust and the CRD.
fn rejected(change: impl FnOnce(&mut Value), field: &str, message: &str, layer: Layer) {
    let object = object_with(change);
    let build: ImageBuild = serde_json::from_value(object.clone()).expect("still deserializes");
    let invalid = build
        .spec
        .validate()
        .expect_err("validate() must reject it")
        .0;
    assert!(
        invalid
            .iter()
            .any(|i| i.field == field && i.message.contains(message)),
        "expected {field}: ...{message}..., got {invalid:?}"
    );

    let schema = crd_schema();
    let structural = schema_errors(&schema, &object, "");
    let cel = cel_errors(&schema, &object);
    match layer {
        Layer::Schema => assert!(
            !structural.is_empty(),
            "the CRD schema must reject it (CEL said {cel:?})"
        ),
        Layer::Cel(expected) => {
            assert!(
                structural.is_empty(),
                "expected only CEL to reject it, schema said {structural:?}"
            );
            assert_eq!(cel, vec![expected.to_string()]);
        }
    }
}

#[test]
fn the_sample_is_valid_everywhere() {
    let build = sample();
    build.spec.validate().expect("the sample is valid");
    let object = serde_json::to_value(&build).unwrap();
    let schema = crd_schema();
    assert_eq!(schema_errors(&schema, &object, ""), Vec::<String>::new());
    assert_eq!(cel_errors(&schema, &object), Vec::<String>::new());
}

#[test]
fn a_full_valid_spec_passes_every_layer() {
    let object = object_with(|s| {
        s["platforms"] = json!(["linux/amd64", "linux/arm64", "linux/arm/v7", "linux/386"]);
        s["buildArgs"] =
            json!([{"name": "VERSION", "value": "$(touch /tmp/x)"}, {"name": "_b", "value": ""}]);
        s["target"] = json!("runtime");
        s["cache"] = json!({"image": "127.0.0.1:5000/team/app-cache"});
        s["output"]["image"] = json!("localhost:5000/a/b_c/d--e:1.0-rc.1");
        s["output"]["pushSecret"] = json!("regcred");
        s["output"]["mediaType"] = json!("docker");
        s["source"]["git"]["url"] = json!("git@github.com:team/app.git");
        s["source"]["git"]["ref"] = json!("0123456789abcdef0123456789abcdef01234567");
        s["source"]["git"]["depth"] = json!(0);
        s["source"]["git"]["credentialsSecret"] = json!("git-creds");
        s["timeout"] = json!("1h30m");
        s["retries"] = json!(0);
        s["nodeSelector"] = json!({"node.example.com/pool": "builders"});
    });
    let build: ImageBuild = serde_json::from_value(object.clone()).unwrap();
    build.spec.validate().expect("valid");
    let schema = crd_schema();
    assert_eq!(schema_errors(&schema, &object, ""), Vec::<String>::new());
    assert_eq!(cel_errors(&schema, &object), Vec::<String>::new());
}

#[test]
fn platforms_must_not_be_empty() {
    rejected(
        |s| s["platforms"] = json!([]),
        "spec.platforms",
        "at least one platform",
        Layer::Schema,
    );
}

#[test]
fn platforms_must_be_known() {
    rejected(
        |s| s["platforms"] = json!(["linux/amd64", "linux/mips64"]),
        "spec.platforms[1]",
        "unsupported platform \"linux/mips64\"",
        Layer::Schema,
    );
}

#[test]
fn platforms_must_be_os_slash_arch() {
    rejected(
        |s| s["platforms"] = json!(["arm64"]),
        "spec.platforms[0]",
        "unsupported platform",
        Layer::Schema,
    );
}

#[test]
fn platforms_must_be_unique() {
    rejected(
        |s| s["platforms"] = json!(["linux/arm64", "linux/amd64", "linux/arm64"]),
        "spec.platforms[2]",
        "listed more than once",
        Layer::Schema,
    );
}

#[test]
fn output_image_needs_a_registry_host() {
    rejected(
        |s| s["output"]["image"] = json!("team/app:v1"),
        "spec.output.image",
        "registry host",
        Layer::Schema,
    );
}

#[test]
fn output_image_needs_a_tag() {
    rejected(
        |s| s["output"]["image"] = json!("registry.example.com/team/app"),
        "spec.output.image",
        "and a tag",
        Layer::Schema,
    );
}

#[test]
fn output_image_must_not_be_a_digest() {
    rejected(
        |s| s["output"]["image"] = json!("registry.example.com/team/app@sha256:0123"),
        "spec.output.image",
        "is not an image reference",
        Layer::Schema,
    );
}

#[test]
fn output_image_repository_is_lowercase() {
    rejected(
        |s| s["output"]["image"] = json!("registry.example.com/Team/app:v1"),
        "spec.output.image",
        "is not an image reference",
        Layer::Schema,
    );
}

#[test]
fn output_tag_leaves_room_for_the_platform_suffix() {
    let tag = "t".repeat(111);
    rejected(
        move |s| s["output"]["image"] = json!(format!("registry.example.com/team/app:{tag}")),
        "spec.output.image",
        "tag at most 110",
        Layer::Schema,
    );
}

#[test]
fn node_selector_must_not_set_arch() {
    rejected(
        |s| s["nodeSelector"] = json!({"kubernetes.io/arch": "arm64"}),
        "spec.nodeSelector",
        "set by archforge",
        Layer::Cel(
            "spec.nodeSelector: kubernetes.io/arch and kubernetes.io/os are set by archforge from spec.platforms",
        ),
    );
}

#[test]
fn node_selector_must_not_set_os() {
    rejected(
        |s| s["nodeSelector"] = json!({"kubernetes.io/os": "windows", "pool": "a"}),
        "spec.nodeSelector",
        "set by archforge",
        Layer::Cel(
            "spec.nodeSelector: kubernetes.io/arch and kubernetes.io/os are set by archforge from spec.platforms",
        ),
    );
}

#[test]
fn media_type_is_oci_or_docker() {
    let object = object_with(|s| s["output"]["mediaType"] = json!("zip"));
    assert!(!schema_errors(&crd_schema(), &object, "").is_empty());
    let text = serde_json::to_string(&object).unwrap();
    let err = archforge::manifest::parse_imagebuild("ib.yaml", &text)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("spec.output.mediaType") && err.contains("zip"),
        "{err}"
    );
}

#[test]
fn timeout_must_be_positive() {
    rejected(
        |s| s["timeout"] = json!("0s"),
        "spec.timeout",
        "positive duration",
        Layer::Cel("spec.timeout: must be a positive duration of at most 24h"),
    );
}

#[test]
fn timeout_is_at_most_a_day() {
    rejected(
        |s| s["timeout"] = json!("25h"),
        "spec.timeout",
        "at most 24h",
        Layer::Cel("spec.timeout: must be a positive duration of at most 24h"),
    );
}

#[test]
fn timeout_must_be_a_duration() {
    rejected(
        |s| s["timeout"] = json!("ten minutes"),
        "spec.timeout",
        "positive duration",
        Layer::Schema,
    );
}

#[test]
fn push_secret_is_a_dns_label() {
    rejected(
        |s| s["output"]["pushSecret"] = json!("Reg_Cred"),
        "spec.output.pushSecret",
        "valid Secret name",
        Layer::Schema,
    );
}

#[test]
fn credentials_secret_is_a_dns_label() {
    rejected(
        |s| s["source"]["git"]["credentialsSecret"] = json!("-creds"),
        "spec.source.git.credentialsSecret",
        "valid Secret name",
        Layer::Schema,
    );
}

#[test]
fn git_url_cannot_be_an_option() {
    rejected(
        |s| s["source"]["git"]["url"] = json!("-oProxyCommand=touch /tmp/x"),
        "spec.source.git.url",
        "is not a git URL",
        Layer::Schema,
    );
}

#[test]
fn git_ref_cannot_be_an_option() {
    rejected(
        |s| s["source"]["git"]["ref"] = json!("--upload-pack=touch /tmp/x"),
        "spec.source.git.ref",
        "branch, tag or commit",
        Layer::Schema,
    );
}

#[test]
fn git_depth_is_not_negative() {
    rejected(
        |s| s["source"]["git"]["depth"] = json!(-1),
        "spec.source.git.depth",
        "0 (full history)",
        Layer::Schema,
    );
}

#[test]
fn context_dir_stays_inside_the_repository() {
    rejected(
        |s| s["source"]["contextDir"] = json!("../../etc"),
        "spec.source.contextDir",
        "no '..'",
        Layer::Cel("spec.source.contextDir: must stay inside the repository (no '..')"),
    );
}

#[test]
fn context_dir_is_relative() {
    rejected(
        |s| s["source"]["contextDir"] = json!("/etc"),
        "spec.source.contextDir",
        "relative path",
        Layer::Schema,
    );
}

#[test]
fn dockerfile_stays_inside_the_repository() {
    rejected(
        |s| s["source"]["dockerfile"] = json!("docker/../../Dockerfile"),
        "spec.source.dockerfile",
        "no '..'",
        Layer::Cel("spec.source.dockerfile: must stay inside the repository (no '..')"),
    );
}

#[test]
fn build_arg_names_are_arg_names() {
    rejected(
        |s| s["buildArgs"] = json!([{"name": "1-X", "value": "v"}]),
        "spec.buildArgs[0].name",
        "valid ARG name",
        Layer::Schema,
    );
}

#[test]
fn build_arg_names_are_unique() {
    rejected(
        |s| s["buildArgs"] = json!([{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]),
        "spec.buildArgs[1].name",
        "more than once",
        Layer::Schema,
    );
}

#[test]
fn target_is_a_stage_name() {
    rejected(
        |s| s["target"] = json!("-stage"),
        "spec.target",
        "build stage name",
        Layer::Schema,
    );
}

#[test]
fn cache_is_a_repository_without_tag() {
    rejected(
        |s| s["cache"] = json!({"image": "registry.example.com/team/cache:latest"}),
        "spec.cache.image",
        "no tag",
        Layer::Schema,
    );
}

#[test]
fn retries_are_bounded() {
    rejected(
        |s| s["retries"] = json!(11),
        "spec.retries",
        "between 0 and 10",
        Layer::Schema,
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let object = object_with(|s| {
        s["platforms"] = json!([]);
        s["retries"] = json!(-1);
        s["output"]["image"] = json!("app");
    });
    let build: ImageBuild = serde_json::from_value(object).unwrap();
    let fields: Vec<String> = build
        .spec
        .validate()
        .unwrap_err()
        .0
        .into_iter()
        .map(|i| i.field)
        .collect();
    assert_eq!(
        fields,
        ["spec.platforms", "spec.output.image", "spec.retries"]
    );
}
