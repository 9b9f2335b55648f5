//! The install artifacts: the Helm chart (rendered and linted with Helm's own library, the
//! PyPI helm-python-sdk, through scripts/helm.py), the kustomize base (rendered by
//! `kubectl kustomize`), the samples, the AppArmor profile (compiled by the real
//! apparmor_parser) and the fuse device plugin. Every object must deserialize into its
//! k8s-openapi type without losing a field, and the RBAC must equal `rbac::PERMISSIONS`.
//! The generated install files (`make manifests`) must equal what their generators write.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use archforge::api::ImageBuild;
use archforge::rbac::{PERMISSIONS, Scope};
use archforge::settings::BuilderSettings;
use common::profiles::{
    ACCT_PROBE, ROOTLESS_CALLS, assert_chart_copy, check_apparmor_profile, check_seccomp_profile,
    loader_script, under_seccomp,
};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Value, json};

const CHART: &str = "charts/archforge";
const CUSTOM_VALUES: &str = "charts/archforge/ci/custom-values.yaml";
const NAMESPACE: &str = "archforge-system";
/// The chart's default isolated build namespace.
const BUILDS: &str = "archforge-builds";

fn run(command: &mut Command, what: &str) -> String {
    let output = command
        .current_dir(common::repo_root())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start ({e}); run `make setup` first"));
    assert!(
        output.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn helm(args: &[&str]) -> Command {
    let mut command = Command::new("python3");
    command.arg("scripts/helm.py").args(args);
    command
}

/// The chart rendered like `helm template archforge charts/archforge -n archforge-system`.
fn render_chart(values: Option<&str>) -> (String, Vec<Value>) {
    let mut args = vec!["render", CHART, "--namespace", NAMESPACE];
    if let Some(values) = values {
        args.extend(["--values", values]);
    }
    let text = run(&mut helm(&args), "helm render");
    let objects = parse(&text);
    (text, objects)
}

fn parse(text: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .expect("rendered YAML parses")
        .into_iter()
        .filter(|v| !v.is_null())
        .map(normalize_numbers)
        .collect()
}

/// `0` and `0.0` are the same number to the API server (and kustomize writes the CRD's
/// float bounds as integers), so whole floats compare as integers.
fn normalize_numbers(value: Value) -> Value {
    match value {
        Value::Number(n) => match n.as_f64() {
            Some(f) if !n.is_i64() && !n.is_u64() && f.fract() == 0.0 && f.abs() < 9e15 => {
                Value::from(f as i64)
            }
            _ => Value::Number(n),
        },
        Value::Array(items) => Value::Array(items.into_iter().map(normalize_numbers).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, normalize_numbers(v)))
                .collect(),
        ),
        other => other,
    }
}

fn kustomize(dir: &str) -> Vec<Value> {
    parse(&run(
        Command::new("kubectl").args(["kustomize", dir]),
        "kubectl kustomize",
    ))
}

fn key(object: &Value) -> (String, String, String) {
    let field = |v: &Value| v.as_str().unwrap_or_default().to_string();
    (
        field(&object["kind"]),
        field(&object["metadata"]["namespace"]),
        field(&object["metadata"]["name"]),
    )
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| {
            panic!(
                "no {kind} {name} among {:?}",
                objects.iter().map(key).collect::<Vec<_>>()
            )
        })
}

/// Deserializes into the typed object and back: anything k8s-openapi does not know (a
/// misspelt or misplaced field, which the API server would drop or refuse) shows as a
/// difference.
fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(object: &Value) {
    let typed: T = serde_path_to_error::deserialize(object.clone())
        .unwrap_or_else(|e| panic!("{:?}: {} at {}", key(object), e.inner(), e.path()));
    let back = normalize_numbers(serde_json::to_value(&typed).unwrap());
    pretty_assertions::assert_eq!(&back, object, "{:?} changed in a round trip", key(object));
}

/// Like `round_trip` for our own type, whose defaults appear when it is serialized again:
/// every field written must come back unchanged.
fn round_trip_with_defaults<T: serde::de::DeserializeOwned + serde::Serialize>(object: &Value) {
    fn assert_within(written: &Value, back: &Value, path: &str) {
        match (written, back) {
            (Value::Object(w), Value::Object(b)) => {
                for (k, v) in w {
                    let field = format!("{path}.{k}");
                    let back = b.get(k).unwrap_or_else(|| panic!("{field} was dropped"));
                    assert_within(v, back, &field);
                }
            }
            _ => assert_eq!(written, back, "{path} changed"),
        }
    }
    let typed: T = serde_path_to_error::deserialize(object.clone())
        .unwrap_or_else(|e| panic!("{:?}: {} at {}", key(object), e.inner(), e.path()));
    assert_within(
        object,
        &normalize_numbers(serde_json::to_value(&typed).unwrap()),
        "",
    );
}

fn check_types(objects: &[Value]) {
    for object in objects {
        match object["kind"].as_str().unwrap_or_default() {
            "CustomResourceDefinition" => round_trip::<CustomResourceDefinition>(object),
            "Namespace" => round_trip::<Namespace>(object),
            "ServiceAccount" => round_trip::<ServiceAccount>(object),
            "ClusterRole" => round_trip::<ClusterRole>(object),
            "ClusterRoleBinding" => round_trip::<ClusterRoleBinding>(object),
            "Role" => round_trip::<Role>(object),
            "RoleBinding" => round_trip::<RoleBinding>(object),
            "Service" => round_trip::<Service>(object),
            "Deployment" => round_trip::<Deployment>(object),
            "DaemonSet" => round_trip::<DaemonSet>(object),
            "ConfigMap" => round_trip::<ConfigMap>(object),
            "Secret" => round_trip::<Secret>(object),
            "ImageBuild" => round_trip_with_defaults::<ImageBuild>(object),
            // The Prometheus Operator's type has no k8s-openapi binding; its shape is
            // asserted in `custom_values_render_roles_leader_election_and_service_monitor`.
            "ServiceMonitor" => assert_eq!(object["apiVersion"], "monitoring.coreos.com/v1"),
            other => panic!("no typed check for kind {other}"),
        }
    }
}

#[test]
fn chart_lints_clean_with_default_and_custom_values() {
    for values in [None, Some(CUSTOM_VALUES)] {
        for kube_version in ["v1.24.0", "v1.33.0"] {
            let mut args = vec!["lint", CHART, "--kube-version", kube_version];
            if let Some(values) = values {
                args.extend(["--values", values]);
            }
            let report = run(&mut helm(&args), "helm lint");
            assert!(report.contains("0 problem(s)"), "{report}");
        }
    }
}

#[test]
fn lint_reports_a_broken_chart() {
    let broken = tempfile::tempdir().unwrap();
    let chart = broken.path().join("archforge");
    copy_dir(&common::repo_root().join(CHART), &chart);
    std::fs::write(
        chart.join("templates/service.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {{ .Values.nope.missing }}\n",
    )
    .unwrap();
    let output = helm(&["lint", chart.to_str().unwrap()])
        .current_dir(common::repo_root())
        .output()
        .unwrap();
    assert!(!output.status.success(), "a template error must fail lint");
    assert!(String::from_utf8_lossy(&output.stdout).contains("nil pointer"));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn values_schema_refuses_bad_values() {
    let dir = tempfile::tempdir().unwrap();
    for (values, expected) in [
        ("logFormat: xml\n", "logFormat"),
        ("builder:\n  defaultTimeout: soon\n", "defaultTimeout"),
        ("watchNamespace: [a]\n", "watchNamespace"),
        ("builder:\n  seccompProfile: unconfined\n", "seccompProfile"),
        (
            "builder:\n  podSecurityLevel: Baseline\n",
            "podSecurityLevel",
        ),
        (
            "nodeProfiles:\n  kubeletSeccompDir: relative\n",
            "kubeletSeccompDir",
        ),
        ("seccompLoader:\n  enabled: true\n", "seccompLoader"),
        ("builder:\n  apparmor: unconfined\n", "apparmor"),
        ("builder:\n  selinuxType: \"spc_t:s0\"\n", "selinuxType"),
        (
            "builder:\n  buildkitSnapshotter: stargz\n",
            "buildkitSnapshotter",
        ),
        ("signing:\n  existingSecret: Not_A_Name\n", "existingSecret"),
        ("signing:\n  secret: k\n", "secret"),
        (
            "signing:\n  allowInNamespaceBuilds: \"yes\"\n",
            "allowInNamespaceBuilds",
        ),
        (
            "registry:\n  insecureRegistries: [\"a\\\"]\\n[x]\"]\n",
            "insecureRegistries",
        ),
        // The one-bundle form the chart had before CAs were given per registry host.
        ("registry:\n  caConfigMap:\n    key: ca.crt\n", "key"),
        ("registry:\n  caConfigMap:\n    name: Corp_CA\n", "name"),
    ] {
        let file = dir.path().join("values.yaml");
        std::fs::write(&file, values).unwrap();
        let output = helm(&["render", CHART, "--values", file.to_str().unwrap()])
            .current_dir(common::repo_root())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{values:?} was accepted");
        assert!(stderr.contains(expected), "{values:?}: {stderr}");
    }
}

#[test]
fn default_render_is_typed_and_secure() {
    let (_, objects) = render_chart(None);
    check_types(&objects);
    let kinds: BTreeSet<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
            "Deployment",
            "Namespace",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ])
    );

    let crd = find(
        &objects,
        "CustomResourceDefinition",
        "imagebuilds.archforge.dev",
    );
    let generated = parse(&archforge::manifest::crd_yaml()).remove(0);
    assert_eq!(
        crd, &generated,
        "the chart's CRD is out of date: `make manifests`"
    );

    let deployment: Deployment =
        serde_json::from_value(find(&objects, "Deployment", "archforge").clone()).unwrap();
    let spec = deployment.spec.unwrap();
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(
        spec.strategy.and_then(|s| s.type_).as_deref(),
        Some("Recreate"),
        "a single replica without leader election must not overlap with its successor"
    );
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("archforge"));
    let pod_security = pod.security_context.unwrap();
    assert_eq!(pod_security.run_as_non_root, Some(true));
    assert!(pod_security.run_as_user.is_some_and(|uid| uid != 0));
    assert_eq!(
        pod_security.seccomp_profile.unwrap().type_,
        "RuntimeDefault"
    );
    let [container] = pod.containers.as_slice() else {
        panic!("one container")
    };
    let security = container.security_context.clone().unwrap();
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.privileged, Some(false));
    assert_eq!(
        security.capabilities.unwrap().drop,
        Some(vec!["ALL".to_string()])
    );
    let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(
        probe_path(&container.liveness_probe).as_deref(),
        Some("/healthz")
    );
    assert_eq!(
        probe_path(&container.readiness_probe).as_deref(),
        Some("/readyz")
    );
    let resources = container.resources.clone().unwrap();
    assert!(resources.requests.is_some_and(|r| r.contains_key("memory")));
    assert!(resources.limits.is_some_and(|l| l.contains_key("memory")));
    assert!(
        !env_names(container).contains("ARCHFORGE_LEADER_ELECT"),
        "one replica: no leader election"
    );
}

fn env_names(container: &k8s_openapi::api::core::v1::Container) -> BTreeSet<String> {
    container
        .env
        .iter()
        .flatten()
        .map(|e| e.name.clone())
        .collect()
}

#[test]
fn custom_values_render_roles_leader_election_and_service_monitor() {
    let (_, objects) = render_chart(Some(CUSTOM_VALUES));
    check_types(&objects);
    let deployment = find(&objects, "Deployment", "archforge");
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert!(
        deployment["spec"].get("strategy").is_none(),
        "with leader election a rolling update is safe"
    );
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["image"],
        "registry.example.com/platform/archforge:0.1.0-rc1"
    );
    assert_eq!(container["ports"][0]["containerPort"], 9090);
    assert_eq!(
        deployment["spec"]["template"]["spec"]["serviceAccountName"],
        "builds-operator"
    );
    assert!(
        !objects
            .iter()
            .any(|o| o["kind"] == "ClusterRole" && o["metadata"]["name"] == "archforge"),
        "watching fixed namespaces must not grant cluster-wide access to secrets and jobs"
    );
    let monitor = find(&objects, "ServiceMonitor", "archforge");
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"],
        find(&objects, "Service", "archforge-metrics")["metadata"]["labels"]
            .as_object()
            .map(|labels| {
                json!({
                    "app.kubernetes.io/name": labels["app.kubernetes.io/name"],
                    "app.kubernetes.io/instance": labels["app.kubernetes.io/instance"],
                })
            })
            .unwrap()
    );
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(monitor["metadata"]["labels"]["release"], "kube-prometheus");
}

/// The operator's rules, as (namespace, group, resource) -> verbs ("*" for a ClusterRole's).
type Grants = BTreeMap<(String, String, String), BTreeSet<String>>;

fn operator_grants(objects: &[Value], fullname: &str, service_account: &str) -> Grants {
    let mut grants = Grants::new();
    for object in objects {
        let kind = object["kind"].as_str().unwrap_or_default();
        if !matches!(kind, "ClusterRole" | "Role") {
            continue;
        }
        let name = object["metadata"]["name"].as_str().unwrap();
        let namespace = object["metadata"]["namespace"].as_str().unwrap_or("*");
        match name.strip_prefix(fullname) {
            Some("" | "-nodes" | "-leader-election" | "-builds") => {}
            // Aggregated into the built-in roles for people, never bound to the operator.
            // For platform teams: bound by hand, never aggregated (tenants cannot override).
            Some("-buildpolicies-admin") => {
                let labels = object["metadata"]["labels"].as_object().unwrap();
                assert!(
                    !labels
                        .keys()
                        .any(|k| k.starts_with("rbac.authorization.k8s.io/aggregate-to-")),
                    "{name} must not be aggregated"
                );
                continue;
            }
            Some("-imagebuilds-edit" | "-imagebuilds-view") => {
                assert!(
                    object["metadata"]["labels"]
                        .as_object()
                        .unwrap()
                        .keys()
                        .any(|k| k.starts_with("rbac.authorization.k8s.io/aggregate-to-")),
                    "{name}"
                );
                continue;
            }
            _ => panic!("unexpected {kind} {name}"),
        };
        let binding_kind = if kind == "Role" {
            "RoleBinding"
        } else {
            "ClusterRoleBinding"
        };
        let binding = objects
            .iter()
            .find(|o| {
                o["kind"] == binding_kind
                    && o["roleRef"]["name"] == name
                    && o["metadata"]["namespace"].as_str().unwrap_or("*") == namespace
            })
            .unwrap_or_else(|| panic!("{kind} {name} in {namespace} is bound to nobody"));
        assert_eq!(
            binding["subjects"],
            json!([{"kind": "ServiceAccount", "name": service_account, "namespace": NAMESPACE}])
        );
        for rule in object["rules"].as_array().unwrap() {
            let strings = |field: &str| -> Vec<String> {
                rule[field]
                    .as_array()
                    .unwrap_or_else(|| panic!("{name}: rule without {field}: {rule}"))
                    .iter()
                    .map(|v| v.as_str().unwrap().to_string())
                    .collect()
            };
            for group in strings("apiGroups") {
                for resource in strings("resources") {
                    let verbs = grants
                        .entry((namespace.to_string(), group.clone(), resource))
                        .or_default();
                    verbs.extend(strings("verbs"));
                }
            }
        }
    }
    grants
}

/// What `rbac::PERMISSIONS` grants for ImageBuilds watched in `watched` (all when empty),
/// building in `builds` (each ImageBuild's own namespace when `None`).
fn expected_grants(watched: &[&str], leader_election: bool, builds: Option<&str>) -> Grants {
    let mut grants = Grants::new();
    let watched: Vec<String> = match watched.is_empty() {
        true => vec!["*".into()],
        false => watched.iter().map(|n| n.to_string()).collect(),
    };
    for p in PERMISSIONS {
        let namespaces: Vec<String> = match (p.scope, builds) {
            (Scope::Watched, _) | (Scope::Builds, None) => watched.clone(),
            (Scope::Builds | Scope::BuildSecrets, Some(ns)) => vec![ns.into()],
            (Scope::BuildSecrets, None) => vec![],
            (Scope::Cluster, _) => vec!["*".into()],
            (Scope::LeaderElection, _) if leader_election => vec![NAMESPACE.into()],
            (Scope::LeaderElection, _) => vec![],
        };
        for namespace in namespaces {
            grants
                .entry((namespace, p.group.into(), p.resource.into()))
                .or_default()
                .extend(p.verbs.iter().map(|v| v.to_string()));
        }
    }
    grants
}

/// Each rule of the operator's roles is preceded by a comment that is its reason in
/// `rbac::PERMISSIONS`.
fn assert_rules_explained(rendered: &str) {
    let reasons: BTreeSet<String> = PERMISSIONS.iter().map(|p| format!("# {}", p.why)).collect();
    let lines: Vec<&str> = rendered.lines().collect();
    let mut rules = 0;
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with("- apiGroups:") {
            rules += 1;
            let comment = lines[i - 1];
            assert!(
                comment.starts_with("# "),
                "rule without a why-comment: {line}"
            );
            // The aggregated roles for people explain themselves in their own words.
            let for_people = ["\"imagebuilds\"", "\"buildpolicies\""]
                .iter()
                .any(|r| lines[i + 1].contains(r));
            if !for_people || !lines[i + 2].contains("\"get\"") {
                assert!(
                    reasons.contains(comment),
                    "{comment:?} is not a reason in rbac.rs"
                );
            }
        }
    }
    assert!(rules > 0);
}

#[test]
fn chart_rbac_is_exactly_what_the_controller_uses() {
    let (text, objects) = render_chart(None);
    pretty_assertions::assert_eq!(
        operator_grants(&objects, "archforge", "archforge"),
        expected_grants(&[], false, Some(BUILDS))
    );
    assert_rules_explained(&text);

    let (text, objects) = render_chart(Some(CUSTOM_VALUES));
    pretty_assertions::assert_eq!(
        operator_grants(&objects, "archforge", "builds-operator"),
        expected_grants(&["team-a", "team-b"], true, None)
    );
    assert_rules_explained(&text);
    assert_no_wildcards(&objects);
}

/// No role of `objects` grants `*` as a group, resource or verb, in whichever YAML style
/// it is written.
fn assert_no_wildcards(objects: &[Value]) {
    for object in objects.iter().filter(|o| o.get("rules").is_some()) {
        for rule in object["rules"].as_array().unwrap() {
            for field in ["apiGroups", "resources", "verbs"] {
                assert!(
                    !rule[field]
                        .as_array()
                        .is_some_and(|values| values.iter().any(|v| v == "*")),
                    "{:?}: wildcard in {field}: {rule}",
                    key(object)
                );
            }
        }
    }
}

/// Runs the operator binary with `args` and returns its standard output.
fn archforge(args: &[&str]) -> String {
    run(
        Command::new(env!("CARGO_BIN_EXE_archforge")).args(args),
        &format!("archforge {}", args.join(" ")),
    )
}

#[test]
fn archforge_rbac_prints_exactly_the_permissions() {
    let text = archforge(&["rbac"]);
    let objects = parse(&text);
    check_types(&objects);
    pretty_assertions::assert_eq!(
        operator_grants(&objects, "archforge", "archforge"),
        expected_grants(&[], false, None)
    );
    assert_rules_explained(&text);
    assert_no_wildcards(&objects);

    let text = archforge(&["rbac", "--build-namespace", BUILDS]);
    let objects = parse(&text);
    check_types(&objects);
    pretty_assertions::assert_eq!(
        operator_grants(&objects, "archforge", "archforge"),
        expected_grants(&[], false, Some(BUILDS))
    );
    assert_rules_explained(&text);

    let text = archforge(&[
        "rbac",
        "--namespace",
        "team-a",
        "--namespace",
        "team-b",
        "--leader-election-namespace",
        NAMESPACE,
        "--service-account",
        "builds-operator",
        "--service-account-namespace",
        NAMESPACE,
    ]);
    let objects = parse(&text);
    check_types(&objects);
    pretty_assertions::assert_eq!(
        operator_grants(&objects, "archforge", "builds-operator"),
        expected_grants(&["team-a", "team-b"], true, None)
    );
    assert!(
        !objects
            .iter()
            .any(|o| o["kind"] == "ClusterRole" && o["metadata"]["name"] == "archforge"),
        "watching fixed namespaces must not grant cluster-wide access to secrets and jobs"
    );
    assert_rules_explained(&text);
}

#[test]
fn chart_rules_are_generated_from_the_permissions() {
    let path = "charts/archforge/templates/_rbac-rules.tpl";
    let committed = std::fs::read_to_string(common::repo_root().join(path)).unwrap();
    let generated = archforge(&["rbac", "--chart-rules"]);
    assert!(
        committed == generated,
        "{path} is out of date with operator/src/rbac.rs: `make manifests`"
    );
}

/// Runs the operator binary with a rendered container's args and environment (the downward
/// API filled in as the kubelet would) and returns its effective configuration.
fn operator_config(deployment: &Value) -> Value {
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let mut command = Command::new(env!("CARGO_BIN_EXE_archforge"));
    command.env_clear();
    for var in container["env"].as_array().unwrap() {
        let name = var["name"].as_str().unwrap();
        let value = match var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some("metadata.name") => "archforge-7d9f-abcde",
            Some("metadata.namespace") => NAMESPACE,
            Some(other) => panic!("unexpected fieldRef {other}"),
            None => var["value"].as_str().unwrap(),
        };
        command.env(name, value);
    }
    for arg in container["args"].as_array().unwrap() {
        command.arg(arg.as_str().unwrap());
    }
    command.arg("--print-config");
    serde_json::from_str(&run(&mut command, "archforge run --print-config")).unwrap()
}

#[test]
fn chart_values_reach_the_operator() {
    let (_, objects) = render_chart(None);
    let config = operator_config(find(&objects, "Deployment", "archforge"));
    // The chart's defaults are the binary's defaults, but for JSON logs in a cluster.
    let defaults = BuilderSettings::default();
    assert_eq!(config["builderImage"], defaults.builder_image);
    assert_eq!(config["gitSyncImage"], defaults.git_sync_image);
    assert_eq!(config["apparmor"], defaults.apparmor.to_string());
    assert_eq!(config["apparmorProfile"], defaults.apparmor_profile);
    assert_eq!(config["selinuxType"], Value::Null);
    assert_eq!(
        config["buildkitSnapshotter"],
        defaults.buildkit_snapshotter.to_string()
    );
    assert_eq!(config["fuseResource"], defaults.fuse_resource);
    assert_eq!(
        config["seccompProfile"],
        defaults.seccomp_profile.to_string()
    );
    assert_eq!(config["podSecurityLevel"], "baseline");
    assert_eq!(config["defaultEmulation"], "Never");
    assert_eq!(config["builderUid"], defaults.builder_uid);
    assert_eq!(config["defaultStrategy"], "buildah");
    assert_eq!(config["buildkitImage"], defaults.buildkit_image);
    assert_eq!(
        config["buildkitApparmorProfile"],
        defaults.buildkit_apparmor_profile
    );
    assert_eq!(
        config["buildkitSeccompProfile"],
        defaults.buildkit_seccomp_profile.to_string()
    );
    // The push container runs the operator's own image: the chart's, by default.
    assert_eq!(config["pusherImage"], defaults.pusher_image);
    assert_eq!(
        config["pusherImage"],
        format!(
            "ghcr.io/archforge-dev/archforge:{}",
            env!("CARGO_PKG_VERSION")
        )
    );
    assert_eq!(config["logFormat"], "json");
    assert_eq!(config["stuckGrace"], "2m");
    assert_eq!(config["leaderElect"], false);
    assert_eq!(config["watchNamespaces"], json!([]));
    assert_eq!(config["buildNamespace"], BUILDS);
    assert_eq!(config["allowInNamespaceSigning"], false);
    assert_eq!(
        config["signingKeyFile"],
        Value::Null,
        "no operator-wide key"
    );
    assert_eq!(
        (
            &config["concurrency"],
            &config["kubeApiQps"],
            &config["kubeApiBurst"]
        ),
        (&json!(16), &json!(50.0), &json!(100))
    );
    // No limit by default: every run starts at once, as before the queue.
    assert_eq!(
        (
            &config["maxRunningBuilds"],
            &config["maxRunningPerArch"],
            &config["maxRunningPerNamespace"]
        ),
        (&json!(0), &json!({}), &json!(0))
    );

    let (_, objects) = render_chart(Some(CUSTOM_VALUES));
    let mut config = operator_config(find(&objects, "Deployment", "archforge"));
    // The queue's limits (apart: one json! of every setting passes the macro's recursion).
    let limits: Vec<Value> = [
        "maxRunningBuilds",
        "maxRunningPerArch",
        "maxRunningPerNamespace",
    ]
    .iter()
    .map(|k| config.as_object_mut().unwrap().remove(*k).unwrap())
    .collect();
    assert_eq!(
        limits,
        [json!(12), json!({"amd64": 8, "arm64": 4}), json!(3)]
    );
    pretty_assertions::assert_eq!(
        config,
        json!({
            "watchNamespaces": ["team-a", "team-b"],
            "buildNamespace": null,
            "allowInNamespaceSigning": false,
            "metricsAddress": "0.0.0.0:9090",
            "logFormat": "text",
            "historyLimit": 25,
            "resync": "2m",
            "stuckGrace": "45s",
            "concurrency": 8,
            "kubeApiQps": 20.5,
            "kubeApiBurst": 40,
            "leaderElect": true,
            "leaderElectionNamespace": NAMESPACE,
            "leaderElectionLease": "archforge-lease",
            "builderImage": "registry.example.com/mirror/buildah:v1.43.0",
            "gitSyncImage": "registry.example.com/mirror/git-sync:v4.4.0",
            "apparmor": "runtime-default",
            "apparmorProfile": "builders-strict",
            "selinuxType": "container_kvm_t",
            "fuseResource": "squat.ai/fuse",
            "fuseQuantity": "2",
            "seccompProfile": "localhost/profiles/buildah.json",
            "podSecurityLevel": "privileged",
            "defaultEmulation": "Fallback",
            "defaultTimeout": "45m",
            "jobTTL": "2h",
            "builderUid": 2000,
            "defaultStrategy": "buildkit",
            "buildkitImage": "registry.example.com/mirror/buildkit:v0.17.0-rootless",
            "buildkitApparmorProfile": "buildkit-strict",
            "buildkitSeccompProfile": "localhost/profiles/buildkit.json",
            "buildkitSnapshotter": "overlayfs",
            // Unset in the values: the operator image the values name.
            "pusherImage": "registry.example.com/platform/archforge:0.1.0-rc1",
            "signingKeyFile": "/etc/archforge/signing/cosign.key",
            "signingKeyPasswordFile": "/etc/archforge/signing/cosign.password",
            "dockerConfig": null,
            "caFiles": [],
            "insecureRegistries": ["registry.internal:5000"],
            "registryCaDir": "/etc/archforge/registry-ca",
        })
    );
}

#[test]
fn the_signing_secret_is_mounted_read_only_for_the_operator_alone() {
    let (_, objects) = render_chart(None);
    let pod = &find(&objects, "Deployment", "archforge")["spec"]["template"]["spec"];
    assert!(
        !pod.to_string().contains("signing"),
        "no signing key by default: {pod}"
    );

    let (_, objects) = render_chart(Some(CUSTOM_VALUES));
    let deployment: Deployment =
        serde_json::from_value(find(&objects, "Deployment", "archforge").clone()).unwrap();
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "signing-key")
        .expect("a signing-key volume");
    let source = volume.secret.as_ref().expect("a Secret volume");
    assert_eq!(source.secret_name.as_deref(), Some("archforge-signing-key"));
    assert_eq!(
        source.default_mode,
        Some(0o440),
        "owner and group read only"
    );
    assert_eq!(
        source.optional, None,
        "a missing Secret keeps the pod from starting"
    );
    let security = pod.security_context.unwrap();
    let fs_group = security
        .fs_group
        .expect("fsGroup, so the operator can read 0440 files");
    assert_eq!(Some(fs_group), security.run_as_group);
    let mount = pod.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "signing-key")
        .expect("the signing-key volume is mounted");
    assert_eq!(mount.read_only, Some(true));
    assert_eq!(mount.mount_path, "/etc/archforge/signing");
    // The key reaches the operator as files, never as a value in the pod spec.
    assert!(
        !pod.containers[0]
            .env
            .iter()
            .flatten()
            .any(|e| e.name.contains("SIGNING")),
        "{:?}",
        pod.containers[0].env
    );
    assert!(
        pod.init_containers.is_none() && pod.containers.len() == 1,
        "only the operator container sees the key"
    );
}

#[test]
fn in_namespace_signing_is_off_unless_the_platform_team_turns_it_on() {
    let (_, objects) = render_chart(None);
    let config = operator_config(find(&objects, "Deployment", "archforge"));
    assert_eq!(config["allowInNamespaceSigning"], false);

    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("values.yaml");
    std::fs::write(&values, "signing:\n  allowInNamespaceBuilds: true\n").unwrap();
    let (_, objects) = render_chart(Some(values.to_str().unwrap()));
    let config = operator_config(find(&objects, "Deployment", "archforge"));
    assert_eq!(config["allowInNamespaceSigning"], true);
}

#[test]
fn kustomize_base_is_the_same_install_as_the_chart() {
    let base = kustomize("config/default");
    check_types(&base);
    let (_, chart) = render_chart(None);

    let keys = |objects: &[Value]| objects.iter().map(key).collect::<BTreeSet<_>>();
    let mut expected = keys(&chart);
    expected.insert(("Namespace".into(), String::new(), NAMESPACE.into()));
    pretty_assertions::assert_eq!(keys(&base), expected);
    pretty_assertions::assert_eq!(
        operator_grants(&base, "archforge", "archforge"),
        expected_grants(&[], false, Some(BUILDS))
    );
}

/// The directories of the kustomize base that scripts/kustomize-base.py writes.
const GENERATED_CONFIG: [&str; 3] = ["rbac", "manager", "node-profiles"];

fn kustomize_base(chart: &Path, out: &Path) -> std::process::Output {
    Command::new("python3")
        .arg("scripts/kustomize-base.py")
        .arg("--chart")
        .arg(chart)
        .arg("--out")
        .arg(out)
        .current_dir(common::repo_root())
        .output()
        .expect("python3")
}

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect()
}

#[test]
fn kustomize_base_is_generated_from_the_chart() {
    let out = tempfile::tempdir().unwrap();
    let output = kustomize_base(&common::repo_root().join(CHART), out.path());
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for dir in GENERATED_CONFIG {
        let generated = files(&out.path().join(dir));
        let committed = files(&common::repo_root().join("config").join(dir));
        assert_eq!(
            committed.keys().collect::<Vec<_>>(),
            generated.keys().collect::<Vec<_>>(),
            "config/{dir}: the files differ from what `make manifests` writes"
        );
        for (name, bytes) in &generated {
            assert!(
                &committed[name] == bytes,
                "config/{dir}/{name} is out of date with the chart: `make manifests`"
            );
            let text = String::from_utf8_lossy(bytes);
            assert!(
                text.starts_with("# Generated by `make manifests`"),
                "config/{dir}/{name} does not say it is generated"
            );
            assert!(
                !text.contains("helm.sh/") && !text.contains("managed-by: Helm"),
                "config/{dir}/{name} claims Helm manages it"
            );
        }
    }
}

#[test]
fn kustomize_base_refuses_a_template_it_has_no_file_for() {
    let dir = tempfile::tempdir().unwrap();
    let chart = dir.path().join("archforge");
    copy_dir(&common::repo_root().join(CHART), &chart);
    std::fs::write(
        chart.join("templates/extra.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: extra\n",
    )
    .unwrap();
    let output = kustomize_base(&chart, &dir.path().join("config"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "an unmapped template was dropped");
    assert!(stderr.contains("templates/extra.yaml"), "{stderr}");
    assert!(
        !dir.path().join("config").exists(),
        "nothing is written when a template has no file"
    );
}

#[test]
fn no_aggregated_role_lets_tenants_touch_buildpolicies() {
    let (_, objects) = render_chart(None);
    let aggregated: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRole")
        .filter(|o| {
            o["metadata"]["labels"].as_object().is_some_and(|l| {
                l.keys()
                    .any(|k| k.starts_with("rbac.authorization.k8s.io/aggregate-to-"))
            })
        })
        .collect();
    assert_eq!(aggregated.len(), 2, "the edit and view roles are rendered");
    for role in aggregated {
        for rule in role["rules"].as_array().unwrap() {
            let resources = rule["resources"].as_array().unwrap();
            assert!(
                resources.iter().all(|r| r != "buildpolicies" && r != "*"),
                "{}: {rule}",
                role["metadata"]["name"]
            );
        }
    }
    let platform = objects
        .iter()
        .find(|o| {
            o["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.ends_with("-buildpolicies-admin"))
        })
        .expect("the platform team's BuildPolicy role");
    assert_eq!(platform["rules"][0]["resources"][0], "buildpolicies");
}

#[test]
fn crd_copies_are_generated() {
    let imagebuild = archforge::manifest::crd_yaml();
    let policy = archforge::manifest::policy_crd_yaml();
    for (copy, generated) in [
        (
            "charts/archforge/crds/imagebuilds.archforge.dev.yaml",
            &imagebuild,
        ),
        ("config/crd/imagebuilds.archforge.dev.yaml", &imagebuild),
        (
            "charts/archforge/crds/buildpolicies.archforge.dev.yaml",
            &policy,
        ),
        ("config/crd/buildpolicies.archforge.dev.yaml", &policy),
    ] {
        let committed = std::fs::read_to_string(common::repo_root().join(copy)).unwrap();
        assert!(
            committed == *generated,
            "{copy} is out of date: `make manifests`"
        );
    }
}

#[test]
fn samples_are_valid_imagebuilds() {
    let dir = common::repo_root().join("config/samples");
    let mut imagebuilds = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let objects = parse(&text);
        check_types(&objects);
        for object in objects.iter().filter(|o| o["kind"] == "ImageBuild") {
            let build: ImageBuild = serde_json::from_value(object.clone()).unwrap();
            build
                .spec
                .validate()
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            imagebuilds += 1;
        }
        // What `archforge render` and `build --local` read: the file's one ImageBuild.
        archforge::manifest::read_imagebuild(path.to_str().unwrap()).unwrap();
    }
    assert!(imagebuilds >= 3);
    let private = parse(&std::fs::read_to_string(dir.join("private.yaml")).unwrap());
    let build = find(&private, "ImageBuild", "billing-api");
    for (field, kind) in [
        (
            &build["spec"]["source"]["git"]["credentialsSecret"],
            "kubernetes.io/basic-auth",
        ),
        (
            &build["spec"]["output"]["pushSecret"],
            "kubernetes.io/dockerconfigjson",
        ),
    ] {
        let secret = find(&private, "Secret", field.as_str().unwrap());
        assert_eq!(secret["type"], kind);
    }
    let own = parse(&std::fs::read_to_string(dir.join("archforge-self.yaml")).unwrap());
    let own = find(&own, "ImageBuild", "archforge");
    assert_eq!(own["spec"]["dockerfile"], json!(null));
    assert_eq!(own["spec"]["source"]["dockerfile"], "Containerfile");
    assert!(common::repo_root().join("Containerfile").is_file());
    assert_eq!(
        own["spec"]["platforms"],
        json!(["linux/amd64", "linux/arm64"])
    );
}

#[test]
fn apparmor_profile_compiles_and_keeps_the_default_denials() {
    let profile = common::repo_root().join("config/apparmor/archforge-builder");
    let default_name = BuilderSettings::default().apparmor_profile;
    // Compiles, keeps the denials, and the parser refuses a typo.
    let text = check_apparmor_profile(&profile, &default_name, "umount,");

    let objects = kustomize("config/node-profiles");
    check_types(&objects);
    let script = loader_script(&objects, "apparmor", "archforge-builder", &text);
    assert!(
        script
            .contains("apparmor_parser --replace --write-cache /etc/apparmor.d/archforge-builder")
    );
    // On a node without AppArmor it loads nothing (and does not fail): the kubelet's own
    // test of whether AppArmor is enabled.
    assert!(script.starts_with(
        "if [ \"$(cat /sys/module/apparmor/parameters/enabled 2>/dev/null)\" != Y ]; then"
    ));
    assert_chart_copy("archforge-builder", &text);
}

#[test]
fn fuse_device_plugin_advertises_the_default_resource() {
    let objects = kustomize("config/fuse-device-plugin");
    check_types(&objects);
    let plugin = find(&objects, "DaemonSet", "archforge-fuse-device-plugin");
    let args: Vec<&str> = plugin["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let after = |flag: &str| args[args.iter().position(|a| *a == flag).unwrap() + 1];
    let device: Value = serde_saphyr::from_str(after("--device")).unwrap();
    assert_eq!(device["groups"][0]["paths"][0]["path"], "/dev/fuse");
    assert_eq!(
        format!("{}/{}", after("--domain"), device["name"].as_str().unwrap()),
        BuilderSettings::default().fuse_resource
    );
}

#[test]
fn seccomp_profile_allows_user_namespaces_and_refuses_the_dangerous_calls() {
    let profile = common::repo_root().join("config/seccomp/archforge-builder.json");

    // What rootless buildah needs from seccomp: a user namespace and mounts inside it; what
    // it refuses: acct(NULL), which gets EPERM under the profile.
    let text = check_seccomp_profile(&profile, "mount -t tmpfs tmpfs /mnt && echo mounted");
    let allow_all = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(allow_all.path(), r#"{"defaultAction": "SCMP_ACT_ALLOW"}"#).unwrap();
    let allowed = under_seccomp(allow_all.path(), &ACCT_PROBE);
    assert!(
        String::from_utf8_lossy(&allowed.stdout).contains("ok"),
        "the probe itself must work without the profile: {allowed:?}"
    );
    for call in [
        "kexec_load",
        "init_module",
        "bpf",
        "ptrace",
        "keyctl",
        "reboot",
    ] {
        assert!(
            text.contains(&format!("\"{call}\"")),
            "{call} is not denied"
        );
    }
    for call in ROOTLESS_CALLS {
        assert!(
            !text.contains(&format!("\"{call}\"")),
            "{call} must stay allowed"
        );
    }
    // libseccomp really checks: a syscall name it does not know is refused.
    let broken = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(broken.path(), text.replace("\"bpf\"", "\"bpff\"")).unwrap();
    assert!(!under_seccomp(broken.path(), &["true"]).status.success());

    // One profile: the kustomize loader and the chart ship the same bytes.
    let objects = kustomize("config/node-profiles");
    check_types(&objects);
    find(&objects, "DaemonSet", "archforge-node-profiles");
    let script = loader_script(&objects, "seccomp", "archforge-builder.json", &text);
    // The file lands where the documented --seccomp-profile value points.
    assert!(script.contains("/seccomp/archforge/archforge-builder.json"));
    assert_chart_copy("archforge-builder.json", &text);

    let (_, defaults) = render_chart(None);
    assert!(
        !defaults.iter().any(|o| o["kind"] == "DaemonSet"),
        "the loader is opt-in"
    );
    let (_, custom) = render_chart(Some(CUSTOM_VALUES));
    check_types(&custom);
    let map = find(&custom, "ConfigMap", "archforge-node-profiles");
    assert_eq!(map["metadata"]["namespace"], "node-setup");
    let data: Value =
        serde_json::from_str(map["data"]["archforge-builder.json"].as_str().unwrap()).unwrap();
    assert_eq!(data, serde_json::from_str::<Value>(&text).unwrap());
    let loader = find(&custom, "DaemonSet", "archforge-node-profiles");
    let pod = &loader["spec"]["template"]["spec"];
    assert_eq!(
        pod["volumes"][0]["hostPath"]["path"],
        "/var/lib/k0s/kubelet/seccomp"
    );
    // With nodeProfiles.apparmor off, nothing in it is privileged or sees the host's root.
    let inits = pod["initContainers"].as_array().unwrap();
    assert_eq!(inits.len(), 1, "{inits:?}");
    let install = &inits[0]["securityContext"];
    assert_eq!(install["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(install["allowPrivilegeEscalation"], false);
    assert!(install.get("privileged").is_none());
    assert_eq!(pod["volumes"].as_array().unwrap().len(), 2);
    assert!(map["data"].get("archforge-builder").is_none());
}

#[test]
fn the_node_profiles_loader_makes_the_shipped_seccomp_profile_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("values.yaml");
    let seccomp = |values: &str| {
        std::fs::write(&file, values).unwrap();
        let (_, objects) = render_chart(Some(file.to_str().unwrap()));
        operator_config(find(&objects, "Deployment", "archforge"))["seccompProfile"].clone()
    };
    assert_eq!(seccomp("{}\n"), "RuntimeDefault");
    let enabled = "nodeProfiles:\n  enabled: true\n";
    assert_eq!(
        seccomp(enabled),
        "localhost/archforge/archforge-builder.json"
    );
    // A value set by hand wins either way.
    let own = format!("{enabled}builder:\n  seccompProfile: RuntimeDefault\n");
    assert_eq!(seccomp(&own), "RuntimeDefault");

    // The AppArmor loader, on by default with the loader: privileged, the host's root.
    std::fs::write(&file, enabled).unwrap();
    let (_, objects) = render_chart(Some(file.to_str().unwrap()));
    let loader = find(&objects, "DaemonSet", "archforge-node-profiles");
    let pod = &loader["spec"]["template"]["spec"];
    let names: Vec<&str> = pod["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["seccomp", "apparmor"]);
    assert_eq!(
        pod["initContainers"][1]["securityContext"]["privileged"],
        true
    );
    assert_eq!(pod["volumes"][2]["hostPath"]["path"], "/");
    // config/node-profiles is this render.
    let map = find(&objects, "ConfigMap", "archforge-node-profiles");
    assert_eq!(
        kustomize("config/node-profiles")
            .iter()
            .find(|o| o["kind"] == "ConfigMap")
            .unwrap()["data"],
        map["data"]
    );
}

#[test]
fn chart_readme_values_table_is_generated() {
    let generated = run(
        Command::new("python3").args(["scripts/chart-readme.py", "--chart", CHART]),
        "scripts/chart-readme.py",
    );
    // Rows come from values.yaml's comments, types and defaults from Helm's parser.
    assert!(
        generated.contains(
            "| `builder.podSecurityLevel` | string | `\"baseline\"` | Pod Security level of the namespaces ImageBuilds run in:"
        ),
        "{generated}"
    );
    assert!(
        generated.contains("| `builder.uid` | int | `1000` |"),
        "{generated}"
    );

    let readme_path = format!("{CHART}/README.md");
    let readme = std::fs::read_to_string(common::repo_root().join(&readme_path)).unwrap();
    let start = readme
        .find("<!-- values-table:start")
        .and_then(|i| readme[i..].find('\n').map(|n| i + n + 1))
        .unwrap_or_else(|| panic!("{readme_path} has no values-table:start marker"));
    let end = readme[start..]
        .find("<!-- values-table:end -->")
        .map(|n| start + n)
        .unwrap_or_else(|| panic!("{readme_path} has no values-table:end marker after the start"));
    assert!(
        readme[start..end] == generated,
        "{readme_path}'s values table differs from values.yaml: run `make chart-readme`"
    );
}

#[test]
fn the_binfmt_daemonset_is_opt_in_and_registers_what_it_is_told() {
    let objects = kustomize("config/binfmt");
    check_types(&objects);
    let set = find(&objects, "DaemonSet", "archforge-binfmt");
    let pod = &set["spec"]["template"]["spec"];
    assert_eq!(
        pod["initContainers"][0]["securityContext"]["privileged"],
        true
    );
    assert_eq!(pod["nodeSelector"]["archforge.dev/binfmt"], "true");

    let (_, defaults) = render_chart(None);
    assert!(
        !defaults
            .iter()
            .any(|o| o["metadata"]["name"] == "archforge-binfmt")
    );
    let (_, custom) = render_chart(Some(CUSTOM_VALUES));
    check_types(&custom);
    let set = find(&custom, "DaemonSet", "archforge-binfmt");
    assert_eq!(set["metadata"]["namespace"], "node-setup");
    let register = &set["spec"]["template"]["spec"]["initContainers"][0];
    assert_eq!(register["args"], json!(["--install", "arm64"]));
    // The builder side of the contract: the label the operator schedules emulated builds by.
    assert_eq!(
        archforge::plan::emulation_label("arm64"),
        "emulation.archforge.dev/arm64"
    );
}

#[test]
fn the_default_install_builds_in_its_own_baseline_namespace_no_tenant_is_bound_in() {
    let (_, objects) = render_chart(None);
    let namespace = find(&objects, "Namespace", BUILDS);
    let labels = &namespace["metadata"]["labels"];
    for mode in ["enforce", "audit", "warn"] {
        assert_eq!(
            labels[format!("pod-security.kubernetes.io/{mode}")],
            "baseline"
        );
    }
    // The only binding there is the operator's.
    let bindings: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "RoleBinding" && o["metadata"]["namespace"] == BUILDS)
        .collect();
    assert_eq!(bindings.len(), 1);
    assert_eq!(bindings[0]["subjects"][0]["kind"], "ServiceAccount");
    let container =
        &find(&objects, "Deployment", "archforge")["spec"]["template"]["spec"]["containers"][0];
    let env = container["env"].as_array().unwrap();
    assert!(env.contains(&json!({"name": "ARCHFORGE_BUILD_NAMESPACE", "value": BUILDS})));
    // The ClusterRole over the tenants' namespaces may not create Jobs, pods or Secrets.
    let watched = find(&objects, "ClusterRole", "archforge");
    for rule in watched["rules"].as_array().unwrap() {
        let resources = rule["resources"].to_string();
        assert!(
            !resources.contains("jobs") && !resources.contains("pods"),
            "{rule}"
        );
        if resources.contains("secrets") {
            assert_eq!(rule["verbs"], json!(["get"]), "{rule}");
        }
    }
}

#[test]
fn the_build_namespace_is_not_created_when_asked_not_to_and_absent_when_empty() {
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("values.yaml");
    for (text, namespace, role) in [
        ("builds:\n  createNamespace: false\n", false, true),
        ("builds:\n  namespace: \"\"\n", false, false),
    ] {
        std::fs::write(&values, text).unwrap();
        let (_, objects) = render_chart(Some(values.to_str().unwrap()));
        assert_eq!(
            objects.iter().any(|o| o["kind"] == "Namespace"),
            namespace,
            "{text}"
        );
        let builds_role = objects
            .iter()
            .any(|o| o["metadata"]["name"] == "archforge-builds");
        assert_eq!(builds_role, role, "{text}");
        let env =
            objects.iter().find(|o| o["kind"] == "Deployment").unwrap()["spec"]["template"]["spec"]
                ["containers"][0]["env"]
                .to_string();
        assert_eq!(env.contains("ARCHFORGE_BUILD_NAMESPACE"), role, "{text}");
    }
}

#[test]
fn a_build_namespace_that_is_no_namespace_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("values.yaml");
    std::fs::write(&values, "builds:\n  namespace: \"Builds; rm -rf /\"\n").unwrap();
    let path = values.to_str().unwrap();
    let output = helm(&["render", CHART, "--namespace", NAMESPACE, "--values", path])
        .current_dir(common::repo_root())
        .output()
        .unwrap();
    assert!(!output.status.success(), "the schema let it through");
}

#[test]
fn the_build_namespace_gets_the_quota_and_limits_the_values_give_and_none_by_default() {
    let (_, objects) = render_chart(None);
    assert!(
        !objects
            .iter()
            .any(|o| o["kind"] == "ResourceQuota" || o["kind"] == "LimitRange"),
        "none by default"
    );
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("values.yaml");
    let text = "builds:\n  resourceQuota:\n    pods: \"40\"\n    limits.memory: 160Gi\n  limitRange:\n    - type: Container\n      max: {memory: 8Gi}\n";
    std::fs::write(&values, text).unwrap();
    let (_, objects) = render_chart(Some(values.to_str().unwrap()));
    let quota = find(&objects, "ResourceQuota", "archforge-builds");
    assert_eq!(quota["metadata"]["namespace"], BUILDS);
    assert_eq!(
        quota["spec"]["hard"],
        json!({"pods": "40", "limits.memory": "160Gi"})
    );
    let limits = find(&objects, "LimitRange", "archforge-builds");
    assert_eq!(limits["metadata"]["namespace"], BUILDS);
    assert_eq!(
        limits["spec"]["limits"],
        json!([{"type": "Container", "max": {"memory": "8Gi"}}])
    );
    // Without a build namespace there is nowhere to put them: the tenants' own apply.
    let text = format!("{text}  namespace: \"\"\n");
    std::fs::write(&values, text).unwrap();
    let (_, objects) = render_chart(Some(values.to_str().unwrap()));
    assert!(!objects.iter().any(|o| o["kind"] == "ResourceQuota"));
}
