use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use super::rules::is_under;
use super::*;
use crate::api::ImageBuild;

fn policy(name: &str, spec: Value) -> BuildPolicy {
    serde_json::from_value(json!({
        "apiVersion": "archforge.dev/v1alpha1", "kind": "BuildPolicy",
        "metadata": {"name": name}, "spec": spec
    }))
    .unwrap()
}

/// An ImageBuild spec: a minimal one with `extra` merged over it.
fn spec(extra: Value) -> ImageBuildSpec {
    let mut spec = json!({
        "source": {"git": {"url": "https://g.example.com/a.git"}},
        "platforms": ["linux/amd64", "linux/arm64"],
        "output": {"image": "registry.example.com/team-a/app:v1"}
    });
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    let build: ImageBuild = serde_json::from_value(json!({
        "apiVersion": "archforge.dev/v1alpha1", "kind": "ImageBuild",
        "metadata": {"name": "app"}, "spec": spec
    }))
    .unwrap();
    build.spec
}

fn team(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("team".to_string(), name.to_string())])
}

fn eval(spec: &ImageBuildSpec, policies: &[BuildPolicy]) -> Result<Defaults, Violations> {
    let refs: Vec<&BuildPolicy> = policies.iter().collect();
    evaluate(spec, &team("a"), &refs, &BuilderSettings::default())
}

fn refused(spec: &ImageBuildSpec, policies: &[BuildPolicy]) -> String {
    eval(spec, policies).expect_err("refused").to_string()
}

#[test]
fn emulation_allowed_and_refused_naming_the_policy_and_field() {
    let p = policy("team-limits", json!({"allowedEmulation": ["Never"]}));
    assert!(
        eval(
            &spec(json!({"emulation": "Never"})),
            std::slice::from_ref(&p)
        )
        .is_ok()
    );
    assert_eq!(
        refused(&spec(json!({"emulation": "Always"})), &[p]),
        r#"BuildPolicy "team-limits": spec.emulation Always is not allowed here (allowed: Never)"#
    );
}

#[test]
fn a_policy_applies_only_to_the_namespaces_it_selects() {
    let p = policy(
        "team-b",
        json!({"namespaceSelector": {"matchLabels": {"team": "b"}}, "allowedEmulation": ["Never"]}),
    );
    let always = spec(json!({"emulation": "Always"}));
    assert!(
        eval(&always, std::slice::from_ref(&p)).is_ok(),
        "team a is not selected"
    );
    let refs = [&p];
    let settings = BuilderSettings::default();
    assert!(evaluate(&always, &team("b"), &refs, &settings).is_err());
}

#[test]
fn strategy_allowed_and_refused() {
    let p = policy("s", json!({"allowedStrategies": ["buildah"]}));
    assert!(eval(&spec(json!({})), std::slice::from_ref(&p)).is_ok());
    assert_eq!(
        refused(&spec(json!({"strategy": "buildkit"})), &[p]),
        r#"BuildPolicy "s": spec.strategy buildkit is not allowed here (allowed: buildah)"#
    );
}

#[test]
fn timeouts_of_the_spec_and_of_each_platform_are_bounded() {
    let p = policy("t", json!({"maxTimeout": "1h"}));
    assert!(eval(&spec(json!({"timeout": "1h"})), std::slice::from_ref(&p)).is_ok());
    assert_eq!(
        refused(&spec(json!({"timeout": "1h1s"})), std::slice::from_ref(&p)),
        r#"BuildPolicy "t": spec.timeout 1h1s is over the maximum 1h"#
    );
    let per_platform =
        spec(json!({"platformSettings": [{"platform": "linux/arm64", "timeout": "24h"}]}));
    assert_eq!(
        refused(&per_platform, std::slice::from_ref(&p)),
        r#"BuildPolicy "t": spec.platformSettings[0].timeout 24h is over the maximum 1h"#
    );
    // Hostile: a number of hours that overflows is not a duration, and is refused.
    let huge = spec(json!({"timeout": "99999999999999999999h"}));
    assert_eq!(
        refused(&huge, &[p]),
        r#"BuildPolicy "t": spec.timeout is not a duration"#
    );
}

#[test]
fn the_operator_default_timeout_counts_when_the_spec_sets_none() {
    // The operator's default is 30m: a policy allowing 10m refuses the unset timeout.
    let p = policy("t", json!({"maxTimeout": "10m"}));
    assert_eq!(
        refused(&spec(json!({})), &[p]),
        r#"BuildPolicy "t": spec.timeout 30m (unset; the default of the operator) is over the maximum 10m"#
    );
    let with_default = policy(
        "t",
        json!({"maxTimeout": "10m", "defaults": {"timeout": "5m"}}),
    );
    let defaults = eval(&spec(json!({})), &[with_default]).unwrap();
    assert_eq!(defaults.timeout.value, Duration::from_secs(300));
}

#[test]
fn retries_bounded_with_huge_values_refused() {
    let p = policy("r", json!({"maxRetries": 2}));
    assert!(eval(&spec(json!({"retries": 2})), std::slice::from_ref(&p)).is_ok());
    assert_eq!(
        refused(&spec(json!({"retries": 3})), std::slice::from_ref(&p)),
        r#"BuildPolicy "r": spec.retries 3 is over the maximum 2"#
    );
    let hostile =
        spec(json!({"platformSettings": [{"platform": "linux/amd64", "retries": i32::MAX}]}));
    assert!(refused(&hostile, &[p]).contains("spec.platformSettings[0].retries 2147483647"));
}

#[test]
fn resources_bounded_with_quantities_compared_as_numbers() {
    let p = policy(
        "res",
        json!({"maxResources": {"cpu": "4", "memory": "8Gi"}}),
    );
    let ok = spec(
        json!({"resources": {"requests": {"cpu": "3500m", "memory": "8192Mi"}, "limits": {"cpu": "4"}}}),
    );
    assert!(eval(&ok, std::slice::from_ref(&p)).is_ok());
    let over = spec(json!({"resources": {"limits": {"cpu": "4001m", "memory": "1e12"}}}));
    assert_eq!(
        refused(&over, std::slice::from_ref(&p)),
        r#"BuildPolicy "res": spec.resources.limits.cpu 4001m is over the maximum 4; BuildPolicy "res": spec.resources.limits.memory 1e12 is over the maximum 8Gi"#
    );
    // Hostile: a quantity that does not parse (the schema would refuse it; CEL may not run).
    let malformed = spec(json!({"resources": {"requests": {"memory": "8Gi; rm -rf"}}}));
    assert!(refused(&malformed, &[p]).contains("spec.resources.requests.memory is not a quantity"));
}

#[test]
fn a_broken_policy_limit_refuses_rather_than_allows() {
    let p = policy(
        "broken",
        json!({"maxResources": {"cpu": "lots"}, "maxTimeout": "forever"}),
    );
    let message = refused(&spec(json!({})), &[p]);
    assert!(
        message.contains("maxTimeout \"forever\" is not a duration"),
        "{message}"
    );
    assert!(
        message.contains("maxResources.cpu \"lots\" is not a quantity"),
        "{message}"
    );
}

#[test]
fn signing_allowed_or_not() {
    let signed =
        spec(json!({"output": {"image": "registry.example.com/team-a/app:v1", "signing": {}}}));
    let allowed = policy("sign", json!({"signing": {"allowed": true}}));
    assert!(eval(&signed, &[allowed]).is_ok());
    let refusing = policy("sign", json!({"signing": {"allowed": false}}));
    assert!(eval(&spec(json!({})), std::slice::from_ref(&refusing)).is_ok());
    assert_eq!(
        refused(&signed, &[refusing]),
        r#"BuildPolicy "sign": spec.output.signing is not allowed here (signing.allowed: false)"#
    );
}

#[test]
fn repositories_match_at_a_path_boundary_only() {
    let prefix = "registry.example.com/team-a";
    assert!(is_under("registry.example.com/team-a", prefix));
    assert!(is_under("registry.example.com/team-a/app", prefix));
    assert!(is_under(
        "registry.example.com/team-a/app",
        "registry.example.com/team-a/"
    ));
    assert!(is_under("registry.example.com/x", "registry.example.com"));
    for hostile in [
        "registry.example.com/team-ab/x",
        "registry.example.com/team-a@evil.com/x",
        "registry.example.com/team-a/../team-b",
        "registry.example.com.evil.com/team-a/x",
        "registry.example.com:5000/team-a/x",
        "evil.com/registry.example.com/team-a",
        "registry.example.com/team-a/ x",
    ] {
        assert!(!is_under(hostile, prefix), "{hostile}");
    }
    // A malformed prefix matches nothing rather than everything.
    assert!(!is_under("registry.example.com/team-a/x", ""));
    assert!(!is_under(
        "registry.example.com/team-a@evil.com/x",
        "registry.example.com/team-a@evil.com"
    ));
}

#[test]
fn output_and_cache_must_be_under_an_allowed_repository() {
    let p = policy(
        "repos",
        json!({"allowedRepositories": ["registry.example.com/team-a"]}),
    );
    let ok = spec(json!({"cache": {"image": "registry.example.com/team-a/cache"}}));
    assert!(eval(&ok, std::slice::from_ref(&p)).is_ok());
    let elsewhere = spec(json!({
        "output": {"image": "registry.example.com/team-ab/x:v1"},
        "cache": {"image": "registry.example.com/team-b/cache"}
    }));
    assert_eq!(
        refused(&elsewhere, &[p]),
        "BuildPolicy \"repos\": spec.output.image registry.example.com/team-ab/x is not under an allowed repository (allowed: registry.example.com/team-a); \
         BuildPolicy \"repos\": spec.cache.image registry.example.com/team-b/cache is not under an allowed repository (allowed: registry.example.com/team-a)"
    );
}

#[test]
fn policy_defaults_fill_what_the_spec_leaves_out() {
    let p = policy(
        "d",
        json!({"defaults": {"timeout": "45m", "emulation": "Fallback", "strategy": "buildkit", "retries": 3}}),
    );
    let defaults = eval(&spec(json!({})), &[p]).unwrap();
    let settings = defaults.settings(&BuilderSettings::default());
    assert_eq!(settings.default_timeout, Duration::from_secs(45 * 60));
    assert_eq!(settings.default_emulation, Emulation::Fallback);
    assert_eq!(settings.default_strategy, Strategy::Buildkit);
    assert_eq!(settings.default_retries, 3);
    assert_eq!(defaults.emulation.policy.as_deref(), Some("d"));
    // Without a policy: the operator's defaults.
    let none = eval(&spec(json!({})), &[]).unwrap();
    assert_eq!(
        none.settings(&BuilderSettings::default()),
        BuilderSettings::default()
    );
}

#[test]
fn several_policies_all_apply_and_defaults_come_from_the_first_by_name() {
    let loose = policy("a-loose", json!({"defaults": {"emulation": "Always"}}));
    let strict = policy(
        "b-strict",
        json!({"allowedEmulation": ["Never", "Fallback"], "defaults": {"emulation": "Never"}}),
    );
    // The default of a-loose is checked against b-strict: a violation naming both.
    assert_eq!(
        refused(&spec(json!({})), &[strict.clone(), loose.clone()]),
        r#"BuildPolicy "b-strict": spec.emulation Always (unset; the default of BuildPolicy "a-loose") is not allowed here (allowed: Never, Fallback)"#
    );
    // Each policy's limits hold: the most restrictive combination.
    let retries = policy("c", json!({"maxRetries": 1}));
    let err = eval(
        &spec(json!({"emulation": "Always", "retries": 2})),
        &[retries, strict],
    )
    .unwrap_err();
    assert_eq!(err.policies(), ["b-strict", "c"]);
}

#[test]
fn the_namespace_limit_is_the_smallest_of_the_policies() {
    let a = policy("a", json!({"maxConcurrentBuilds": 5}));
    let b = policy("b", json!({"maxConcurrentBuilds": 2}));
    let c = policy("c", json!({}));
    assert_eq!(namespace_limit(&a), Some(5));
    assert_eq!(namespace_limit(&c), None);
    assert_eq!(namespace_limit_of(&[&a, &b, &c]), Some(2));
    assert_eq!(namespace_limit_of(&[&c]), None);
    // A 0 the schema would refuse is the tightest limit, not none.
    let mut zero = a.clone();
    zero.spec.max_concurrent_builds = Some(0);
    assert_eq!(namespace_limit(&zero), Some(1));
}
