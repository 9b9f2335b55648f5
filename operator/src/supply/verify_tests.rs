//! `require_isolated` and what counts as isolated provenance.

use super::*;

fn image(platform: &str, build_namespace: Option<&str>) -> VerifiedImage {
    VerifiedImage {
        platform: platform.to_string(),
        digest: format!("sha256:{}", "a".repeat(64)),
        subject: format!("r.example.com/app@sha256:{}", "a".repeat(64)),
        commit: "c".repeat(40),
        source: "https://git.example.com/app.git".to_string(),
        build_namespace: build_namespace.map(str::to_string),
    }
}

#[test]
fn require_isolated_names_the_first_image_built_in_reach_of_a_tenant() {
    let isolated = Some("archforge-builds");
    let all = Verified {
        index: image("index", isolated),
        platforms: vec![
            image("linux/amd64", isolated),
            image("linux/arm64", isolated),
        ],
    };
    assert!(all.require_isolated().is_ok());

    let one_child = Verified {
        platforms: vec![image("linux/amd64", isolated), image("linux/arm64", None)],
        ..all.clone()
    };
    let err = one_child.require_isolated().unwrap_err().to_string();
    assert!(
        err.starts_with("linux/arm64 image r.example.com/app@sha256:")
            && err.contains("not say it was built in an isolated build namespace"),
        "{err}"
    );
    let index = Verified {
        index: image("index", None),
        ..all
    };
    let err = index.require_isolated().unwrap_err().to_string();
    assert!(err.starts_with("index r.example.com/app@"), "{err}");
}

#[test]
fn only_a_statement_that_says_isolated_true_names_a_build_namespace() {
    let statement = |internal: serde_json::Value| serde_json::json!({"predicate": {"buildDefinition": {"internalParameters": internal}}});
    let ns = |internal| build_namespace_of(&statement(internal));
    assert_eq!(
        ns(serde_json::json!({"isolated": true, "buildNamespace": "b"})),
        Some("b".to_string())
    );
    assert_eq!(
        ns(serde_json::json!({"isolated": false, "buildNamespace": "b"})),
        None
    );
    assert_eq!(
        ns(serde_json::json!({"isolated": "true", "buildNamespace": "b"})),
        None
    );
    assert_eq!(ns(serde_json::json!({"isolated": true})), None);
    assert_eq!(ns(serde_json::json!({})), None);
}
