use super::*;

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn arm64() -> Platform {
    "linux/arm64".parse().unwrap()
}

#[test]
fn short_names_are_readable() {
    assert_eq!(
        job_name(&run_name("guestbook", None, 3, None), &arm64()),
        "guestbook-3-linux-arm64"
    );
    let v7: Platform = "linux/arm/v7".parse().unwrap();
    assert_eq!(v7.slug(), "linux-arm-v7");
    assert_eq!(platform_tag("r.io/a/b:v1", &v7), "r.io/a/b:v1-linux-arm-v7");
}

#[test]
fn long_names_are_bounded_and_distinct() {
    let long_a = format!("{}a", "x".repeat(252));
    let long_b = format!("{}b", "x".repeat(252));
    let ppc: Platform = "linux/ppc64le".parse().unwrap();
    let a = job_name(&run_name(&long_a, None, i64::MAX, Some("token")), &ppc);
    let b = job_name(&run_name(&long_b, None, i64::MAX, Some("token")), &ppc);
    assert!(is_dns_label(&a), "{a}");
    assert!(is_dns_label(&b), "{b}");
    assert_ne!(a, b);
}

#[test]
fn a_name_that_looks_hashed_never_meets_the_hashed_form_of_another() {
    let dotted = dns_label("foo.bar", 63);
    assert!(looks_hashed(&dotted), "{dotted}");
    // The literal form of the dotted name's label is itself hashed, so they differ.
    let literal = dns_label(&dotted, 63);
    assert!(is_dns_label(&literal));
    assert_ne!(literal, dotted);
    let run = |name: &str| job_name(&run_name(name, None, 1, None), &arm64());
    assert_ne!(run("foo.bar"), run(&dotted));
    // Names that merely end in a number or in fewer hex digits stay readable.
    assert_eq!(dns_label("app-2026", 63), "app-2026");
    assert_eq!(dns_label("app-v2-cafe", 63), "app-v2-cafe");
}

#[test]
fn a_hashed_name_is_hashed_by_the_uid_so_a_chosen_name_cannot_take_it() {
    // Two names whose 32-bit name hashes collide (found by a birthday search in a
    // fraction of a second): hashing the name alone would give them one Job name.
    let victim = format!("{}9451", "a".repeat(64));
    let attacker = format!("{}60956", "a".repeat(64));
    assert_eq!(
        run_name(&victim, None, 1, None),
        run_name(&attacker, None, 1, None)
    );
    // With the UIDs (which nobody picks) they differ.
    assert_ne!(
        run_name(&victim, Some("3f1c0d2e-uid-of-victim"), 1, None),
        run_name(&attacker, Some("9a7b6c5d-uid-of-attacker"), 1, None)
    );
    let again = run_name(&victim, Some("3f1c0d2e-uid-of-victim"), 1, None);
    assert_eq!(
        again,
        run_name(&victim, Some("3f1c0d2e-uid-of-victim"), 1, None)
    );
    // Short, valid names stay as they are, whatever the UID.
    assert_eq!(run_name("app", Some("uid"), 1, None), "app-1");
}

#[test]
fn dotted_names_do_not_collide_with_dashed_ones() {
    let dotted = dns_label("app.v2", 63);
    let dashed = dns_label("app-v2", 63);
    assert!(is_dns_label(&dotted));
    assert_eq!(dashed, "app-v2");
    assert_ne!(dotted, dashed);
}

#[test]
fn current_job_names_match_the_plan() {
    let mut build: ImageBuild = serde_json::from_value(serde_json::json!({
        "apiVersion": "archforge.dev/v1alpha1", "kind": "ImageBuild",
        "metadata": {"name": "app", "generation": 4, "annotations": {REBUILD_ANNOTATION: "t1"}},
        "spec": {"source": {"git": {"url": "https://g.example.com/a.git"}},
                 "platforms": ["linux/amd64", "linux/arm/v7"],
                 "output": {"image": "r.example.com/a:v1"}}
    }))
    .unwrap();
    let planned: Vec<String> = plan(
        &ValidSpec::check(&build).unwrap(),
        &BuilderSettings::default(),
        "main",
        AuthFile::None,
    )
    .platforms
    .into_iter()
    .map(|p| p.job_name)
    .collect();
    assert_eq!(current_job_names(&build), planned);
    assert!(planned[1].starts_with("app-4-r") && planned[1].ends_with("-linux-arm-v7"));
    build.metadata.annotations = None;
    assert_eq!(
        current_job_names(&build),
        ["app-4-linux-amd64", "app-4-linux-arm-v7"]
    );
}

#[test]
fn rebuild_token_changes_the_run_name() {
    let plain = run_name("app", None, 2, None);
    let first = run_name("app", None, 2, Some("2026-11-23T10:00"));
    let second = run_name("app", None, 2, Some("2026-11-23T11:00"));
    assert_eq!(plain, "app-2");
    assert!(first.starts_with("app-2-r"));
    assert_ne!(first, second);
    assert_eq!(
        first,
        run_name("app", None, 2, Some("2026-11-23T10:00")),
        "deterministic"
    );
}

#[test]
fn platforms_parse_and_print() {
    for text in ["linux/amd64", "linux/arm/v7"] {
        assert_eq!(text.parse::<Platform>().unwrap().to_string(), text);
    }
    for bad in [
        "linux",
        "linux/",
        "/amd64",
        "linux/arm/v7/x",
        "linux/am d64",
    ] {
        assert!(bad.parse::<Platform>().is_err(), "{bad}");
    }
}

#[test]
fn platforms_are_pushed_by_digest_unless_platform_tags() {
    let output = |image: &str, platform_tags: bool| crate::api::Output {
        image: image.to_string(),
        push_secret: None,
        media_type: MediaType::Oci,
        platform_tags,
        signing: None,
    };
    // A registry port is not a tag.
    assert_eq!(
        push_target(&output("127.0.0.1:5000/team/app:v1", false), &arm64()),
        "127.0.0.1:5000/team/app@@unknown-digest@@"
    );
    assert_eq!(
        push_target(&output("r.io/app:v1", false), &arm64()),
        "r.io/app@@unknown-digest@@"
    );
    assert_eq!(
        push_target(&output("127.0.0.1:5000/team/app:v1", true), &arm64()),
        "127.0.0.1:5000/team/app:v1-linux-arm64"
    );
    // What progress lines show: the repository, never buildah's placeholder.
    assert_eq!(
        shown_push_target(&push_target(
            &output("127.0.0.1:5000/team/app:v1", false),
            &arm64()
        )),
        "127.0.0.1:5000/team/app (by digest)"
    );
    assert_eq!(
        shown_push_target("127.0.0.1:5000/team/app:v1-linux-arm64"),
        "127.0.0.1:5000/team/app:v1-linux-arm64"
    );
}
