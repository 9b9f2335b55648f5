use super::*;
use crate::settings::KubeVersion;
use serde_json::json;

fn pod(value: serde_json::Value) -> PodSpec {
    serde_json::from_value(value).unwrap()
}

fn rules(result: Result<(), Violations>) -> Vec<&'static str> {
    result
        .err()
        .map(|v| v.violations.iter().map(|v| v.rule).collect())
        .unwrap_or_default()
}

fn minimal(security: serde_json::Value) -> PodSpec {
    pod(json!({"containers": [{"name": "c", "image": "i", "securityContext": security}]}))
}

#[test]
fn a_restricted_pod_passes_every_level() {
    let p = minimal(json!({
        "allowPrivilegeEscalation": false, "runAsNonRoot": true,
        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}
    }));
    for level in [Level::Privileged, Level::Baseline, Level::Restricted] {
        assert_eq!(check(&p, &BTreeMap::new(), level), Ok(()), "{level}");
    }
}

#[test]
fn baseline_refuses_each_escalation_by_name() {
    let none = BTreeMap::new();
    let cases = [
        (json!({"privileged": true}), "privileged"),
        (
            json!({"capabilities": {"add": ["SYS_ADMIN"]}}),
            "capabilities_baseline",
        ),
        (
            json!({"seccompProfile": {"type": "Unconfined"}}),
            "seccompProfile_baseline",
        ),
        (json!({"procMount": "Unmasked"}), "procMount"),
        (
            json!({"seLinuxOptions": {"type": "spc_t"}}),
            "seLinuxOptions",
        ),
        (
            json!({"appArmorProfile": {"type": "Unconfined"}}),
            "appArmorProfile",
        ),
    ];
    for (security, rule) in cases {
        let found = rules(check(&minimal(security.clone()), &none, Level::Baseline));
        assert_eq!(found, [rule], "{security}");
        // The privileged level admits all of them.
        assert_eq!(check(&minimal(security), &none, Level::Privileged), Ok(()));
    }
    // SETUID and SETGID are in the baseline set: rootless buildah's newuidmap needs them.
    let builder = minimal(
        json!({"capabilities": {"drop": ["ALL"], "add": ["SETUID", "SETGID"]},
                                 "allowPrivilegeEscalation": true}),
    );
    assert_eq!(check(&builder, &none, Level::Baseline), Ok(()));
}

#[test]
fn pod_level_escalations_are_named() {
    let p = pod(json!({
        "hostNetwork": true,
        "securityContext": {"seccompProfile": {"type": "Unconfined"},
                            "sysctls": [{"name": "kernel.msgmax", "value": "1"}]},
        "containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80, "hostPort": 80}]}],
        "volumes": [{"name": "root", "hostPath": {"path": "/"}}]
    }));
    let mut found = rules(check(&p, &BTreeMap::new(), Level::Baseline));
    found.sort();
    assert_eq!(
        found,
        [
            "hostNamespaces",
            "hostPathVolumes",
            "hostPorts",
            "seccompProfile_baseline",
            "sysctls"
        ]
    );
}

#[test]
fn apparmor_annotations_must_name_a_profile() {
    let p = minimal(json!({}));
    let with = |value: &str| {
        BTreeMap::from([(format!("{APPARMOR_ANNOTATION_PREFIX}c"), value.to_string())])
    };
    assert_eq!(
        check(&p, &with("localhost/archforge-builder"), Level::Baseline),
        Ok(())
    );
    assert_eq!(check(&p, &with("runtime/default"), Level::Baseline), Ok(()));
    assert_eq!(
        rules(check(&p, &with("unconfined"), Level::Baseline)),
        ["appArmorProfile"]
    );
}

#[test]
fn restricted_names_what_rootless_buildah_cannot_give_up() {
    let builder = minimal(json!({
        "runAsNonRoot": true, "runAsUser": 1000, "allowPrivilegeEscalation": true,
        "capabilities": {"drop": ["ALL"], "add": ["SETUID", "SETGID"]},
        "seccompProfile": {"type": "RuntimeDefault"}
    }));
    let err = check(&builder, &BTreeMap::new(), Level::Restricted).unwrap_err();
    let found: Vec<&str> = err.violations.iter().map(|v| v.rule).collect();
    assert_eq!(
        found,
        ["allowPrivilegeEscalation", "capabilities_restricted"]
    );
    let text = err.to_string();
    assert!(text.contains("\"restricted\""), "{text}");
    assert!(text.contains("SETUID, SETGID"), "{text}");
}

#[test]
fn restricted_needs_an_explicit_seccomp_profile_and_non_root() {
    let p = minimal(
        json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]},
                           "runAsUser": 0}),
    );
    let mut found = rules(check(&p, &BTreeMap::new(), Level::Restricted));
    found.sort();
    assert_eq!(
        found,
        ["runAsNonRoot", "runAsUser", "seccompProfile_restricted"]
    );
    let p = pod(json!({
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}, "runAsNonRoot": true},
        "containers": [{"name": "c", "image": "i", "securityContext":
            {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}],
        "volumes": [{"name": "w", "emptyDir": {}}, {"name": "n", "nfs": {"server": "s", "path": "/"}}]
    }));
    assert_eq!(
        rules(check(&p, &BTreeMap::new(), Level::Restricted)),
        ["restrictedVolumes"]
    );
}

#[test]
fn levels_parse() {
    assert_eq!("baseline".parse::<Level>(), Ok(Level::Baseline));
    assert!("Baseline".parse::<Level>().is_err());
}

#[test]
fn selinux_types_follow_the_policy_version() {
    let v = |s: &str| s.parse::<KubeVersion>().unwrap();
    let none = BTreeMap::new();
    let with_type = |t: &str| minimal(json!({"seLinuxOptions": {"type": t}}));
    for version in ["1.24", "1.30", "1.31", "1.33"] {
        for t in ["container_t", "container_init_t", "container_kvm_t", ""] {
            assert_eq!(
                check_at(&with_type(t), &none, Level::Baseline, v(version)),
                Ok(())
            );
        }
        // Never admitted: the unconfined type, and any user or role.
        let spc = check_at(&with_type("spc_t"), &none, Level::Baseline, v(version));
        assert_eq!(rules(spc), ["seLinuxOptions"]);
        let role = minimal(json!({"seLinuxOptions": {"type": "container_t", "role": "r"}}));
        assert_eq!(
            rules(check_at(&role, &none, Level::Baseline, v(version))),
            ["seLinuxOptions"]
        );
    }
    // container_engine_t from policy version 1.31 (kubernetes/kubernetes#126165).
    let engine = with_type("container_engine_t");
    let refused = check_at(&engine, &none, Level::Baseline, v("1.30")).unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("not admitted at policy version 1.30"),
        "{refused}"
    );
    assert_eq!(check_at(&engine, &none, Level::Baseline, v("1.31")), Ok(()));
    assert_eq!(
        check(&engine, &none, Level::Baseline),
        Ok(()),
        "the newest policy"
    );
    // At the pod level too.
    let pod_level = pod(
        json!({"securityContext": {"seLinuxOptions": {"type": "container_engine_t"}},
                               "containers": [{"name": "c", "image": "i"}]}),
    );
    assert!(check_at(&pod_level, &none, Level::Baseline, v("1.29")).is_err());
    assert_eq!(
        selinux_types(v("1.30")),
        ["container_t", "container_init_t", "container_kvm_t"]
    );
    assert!(selinux_type_allowed("container_engine_t", v("1.31")));
}
