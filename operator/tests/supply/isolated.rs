//! Whether a build ran out of tenants' reach is a fact of the operator's settings: the
//! provenance the operator writes says `isolated` (and the build namespace) from its own
//! config, and `archforge verify --require-isolated` passes only such provenance, for the
//! index and every platform image.

use super::*;
use archforge::controller::signing::build_facts;
use archforge::plan::AuthFile;
use archforge::registry::RegistryOptions;
use archforge::settings::BuilderSettings;
use archforge::validation::ValidSpec;

const BUILD_NAMESPACE: &str = "archforge-builds";

/// The provenance facts the operator writes for the sample ImageBuild's run, in isolated
/// mode (`--build-namespace`) or in-namespace mode with the platform team's opt-in.
fn operator_facts(build_namespace: Option<&str>) -> BuildFacts {
    let mut config =
        common::controller::config(BuilderSettings::default(), RegistryOptions::default(), None);
    config.build_namespace = build_namespace.map(str::to_string);
    config.allow_in_namespace_signing = build_namespace.is_none();
    let build = common::sample();
    let plan = archforge::plan::plan(
        &ValidSpec::check(&build).unwrap(),
        &config.builder,
        COMMIT,
        AuthFile::None,
    );
    let status = Default::default();
    build_facts(&config, &build, &plan, &status, "2026-11-23T10:05:00Z")
}

/// Two platform images and their index in `repo`, signed with `key` and attested with
/// `facts`.
async fn publish(registry: &Registry, repo: &str, key: &SigningKey, facts: &BuildFacts) {
    let images =
        push_platform_images(registry, |_| format!("{repo}@@unknown-digest@@"), repo).await;
    let signer = Signer { key, facts };
    registry
        .publish(
            &format!("{repo}:v1"),
            &images,
            MediaType::Oci,
            &BTreeMap::new(),
            Some(&signer),
        )
        .await
        .unwrap();
}

fn verify_isolated(reg: &TestRegistry, image: &str, key_file: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_archforge"))
        .args(["verify", image, "--require-isolated", "--key"])
        .arg(key_file)
        .args(["--insecure-registry", &reg.addr])
        .output()
        .unwrap()
}

#[tokio::test]
async fn verify_require_isolated_passes_only_builds_the_operator_isolated() {
    let reg = TestRegistry::start(Mode::Plain);
    let registry = Registry::new(reg.options());
    let key = SigningKey::generate();
    let dir = tempfile::tempdir().unwrap();
    let public = dir.path().join("cosign.pub");
    std::fs::write(&public, key.public_pem()).unwrap();
    let isolated = operator_facts(Some(BUILD_NAMESPACE));
    let in_namespace = operator_facts(None);
    let isolated_repo = reg.image("team/isolated");
    let in_namespace_repo = reg.image("team/in-namespace");
    publish(&registry, &isolated_repo, &key, &isolated).await;
    publish(&registry, &in_namespace_repo, &key, &in_namespace).await;

    // Isolated: passes, and says where it was built.
    let image = format!("{isolated_repo}:v1");
    let out = verify_isolated(&reg, &image, &public);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert_eq!(
        shown
            .matches(&format!("isolated in {BUILD_NAMESPACE}"))
            .count(),
        3,
        "the index and both platform images: {shown}"
    );

    // In the ImageBuild's namespace (signed under the opt-in): it fails, naming the index.
    let image = format!("{in_namespace_repo}:v1");
    let out = verify_isolated(&reg, &image, &public);
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(
        shown.contains(&format!("index {in_namespace_repo}@sha256:"))
            && shown.contains("not say it was built in an isolated build namespace"),
        "{shown}"
    );

    // Without the flag both pass, the output saying which is which.
    let out = verify(&reg, &image, &public);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert_eq!(shown.matches("not isolated").count(), 3, "{shown}");
    assert!(
        verify(&reg, &format!("{isolated_repo}:v1"), &public)
            .status
            .success()
    );
}

#[tokio::test]
async fn one_platform_image_attested_in_reach_of_a_tenant_fails_require_isolated() {
    let signed = signed().await;
    let Signed(reg, registry, repo, key, images, _) = &signed;
    let dir = tempfile::tempdir().unwrap();
    let public = dir.path().join("cosign.pub");
    std::fs::write(&public, key.public_pem()).unwrap();
    // The index and amd64 re-attested as isolated, arm64 left as built in-namespace.
    let isolated = BuildFacts {
        build_namespace: Some(BUILD_NAMESPACE.to_string()),
        ..facts(COMMIT)
    };
    let signer = Signer {
        key,
        facts: &isolated,
    };
    let index = signed.5.index.digest.clone();
    registry
        .sign_and_attest(repo, &index, None, &signer)
        .await
        .unwrap();
    registry
        .sign_and_attest(repo, &images[0].digest, Some(&images[0].platform), &signer)
        .await
        .unwrap();
    let out = verify_isolated(reg, &format!("{repo}:v1"), &public);
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(
        shown.contains(&format!("linux/arm64 image {repo}@{}", images[1].digest))
            && shown.contains("--require-isolated"),
        "{shown}"
    );
}
