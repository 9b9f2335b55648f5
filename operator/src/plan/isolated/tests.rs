use super::*;
use serde_json::json;

fn build(namespace: &str, name: &str, uid: &str) -> ImageBuild {
    serde_json::from_value(json!({
        "apiVersion": "archforge.dev/v1alpha1", "kind": "ImageBuild",
        "metadata": {"name": name, "namespace": namespace, "uid": uid, "generation": 3},
        "spec": {"source": {"git": {"url": "https://g.example.com/a.git"}},
                 "platforms": ["linux/amd64", "linux/ppc64le"],
                 "output": {"image": "r.example.com/a:v1"}}
    }))
    .unwrap()
}

#[test]
fn two_tenants_imagebuilds_of_one_name_never_share_a_job_name() {
    let a = current_job_names(&build("team-a", "app", "u1"));
    let b = current_job_names(&build("team-b", "app", "u1"));
    let again = current_job_names(&build("team-a", "app", "u2"));
    assert_eq!(a.len(), 2);
    assert!(
        a.iter().all(|n| !b.contains(n) && !again.contains(n)),
        "{a:?} {b:?}"
    );
    assert!(
        a[0].starts_with("app-") && a[0].ends_with("-3-linux-amd64"),
        "{}",
        a[0]
    );
}

#[test]
fn a_hostile_name_still_gives_job_names_of_at_most_63_characters() {
    let long = format!("{}.x", "a".repeat(250));
    for name in current_job_names(&build("ns", &long, "u")) {
        assert!(name.len() <= 63, "{name}");
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        );
    }
}

#[test]
fn a_copy_carries_only_the_keys_the_pod_uses_and_is_owned_by_its_job() {
    let b = build("team-a", "app", "u1");
    let source: Secret = serde_json::from_value(json!({
        "metadata": {"name": "push", "namespace": "team-a", "labels": {"x": "y"}},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": "e30=", "extra": "c2VjcmV0"}
    }))
    .unwrap();
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": "app-h-3-linux-amd64", "namespace": "builds", "uid": "job-uid"}
    }))
    .unwrap();
    let copy = secret_copy(&source, PUSH, false, &job, &b);
    assert_eq!(
        copy.metadata.name.as_deref(),
        Some("app-h-3-linux-amd64-push")
    );
    assert_eq!(copy.metadata.namespace.as_deref(), Some("builds"));
    let keys: Vec<&String> = copy.data.as_ref().unwrap().keys().collect();
    assert_eq!(keys, [".dockerconfigjson"]);
    let owner = &copy.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("Job", "job-uid")
    );
    assert!(belongs_to(&copy.metadata, &b));
    assert_eq!(copy.metadata.labels.as_ref().unwrap().get("x"), None);
}

#[test]
fn only_both_labels_tie_an_object_to_its_imagebuild() {
    let b = build("team-a", "app", "u1");
    let meta = |ns: &str, uid: &str| ObjectMeta {
        labels: Some(BTreeMap::from([
            (LABEL_IMAGEBUILD_NAMESPACE.to_string(), ns.to_string()),
            (LABEL_IMAGEBUILD_UID.to_string(), uid.to_string()),
        ])),
        ..Default::default()
    };
    assert!(belongs_to(&meta("team-a", "u1"), &b));
    assert!(!belongs_to(&meta("team-b", "u1"), &b));
    assert!(!belongs_to(&meta("team-a", "u2"), &b));
    assert!(!belongs_to(&ObjectMeta::default(), &b));
}

#[test]
fn an_isolated_job_has_no_owner_and_names_its_imagebuild() {
    let b = build("team-a", "app", "u1");
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": "j", "namespace": "team-a",
                     "ownerReferences": [{"apiVersion": "archforge.dev/v1alpha1", "kind": "ImageBuild",
                                          "name": "app", "uid": "u1", "controller": true}]},
        "spec": {"template": {"metadata": {"labels": {"archforge.dev/generation": "3"}}, "spec": {"containers": []}}}
    }))
    .unwrap();
    let moved = isolate_job(job, &b, "builds");
    assert_eq!(moved.metadata.namespace.as_deref(), Some("builds"));
    assert_eq!(moved.metadata.owner_references, None);
    assert_eq!(
        imagebuild_of(&moved.metadata),
        Some(("team-a".into(), "app".into()))
    );
    let template = moved.spec.unwrap().template.metadata.unwrap();
    assert!(belongs_to(&template, &b));
    assert_eq!(template.labels.unwrap()["archforge.dev/generation"], "3");
}

#[test]
fn copies_exist_only_for_the_secrets_the_spec_names() {
    let names = SecretNames {
        git: None,
        push: Some("p".into()),
        pull: Some("q".into()),
    };
    let copies = copies_for(&names, "job");
    assert_eq!(copies.git, None);
    assert_eq!(copies.push.as_deref(), Some("job-push"));
    assert_eq!(copies.pull.as_deref(), Some("job-pull"));
}
