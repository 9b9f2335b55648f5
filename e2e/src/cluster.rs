//! Cluster-side helpers: the CRD, per-test namespaces, ImageBuild manifests, waiting, and
//! reading what was pushed.

use std::future::Future;
use std::time::{Duration, Instant};

use archforge::api::ImageBuild;
use archforge::plan::rebuild_token;
use archforge::registry::{Registry, parse_reference};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, CustomResourceExt};
use oci_client::Reference;
use serde_json::{Value, json};

use crate::config::Settings;
use crate::nodes::{POOL_LABEL, SIMULATED_LABEL};

pub const FIELD_MANAGER: &str = "archforge-e2e";

/// Applies the CRDs (ImageBuild, BuildPolicy: the operator waits for both watches) with
/// server-side apply and waits until each is Established.
pub async fn install_crd(client: &Client) -> anyhow::Result<()> {
    install_one_crd(client, ImageBuild::crd()).await?;
    install_one_crd(client, archforge::api::BuildPolicy::crd()).await
}

async fn install_one_crd(client: &Client, crd: CustomResourceDefinition) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = crd.metadata.name.clone().expect("the CRD has a name");
    crds.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await?;
    wait_for(
        &format!("the CRD {name} to be Established"),
        Duration::from_secs(60),
        || async {
            let crd = crds.get(&name).await?;
            let established = crd.status.and_then(|s| s.conditions).is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
            Ok(established.then_some(()))
        },
    )
    .await
}

/// Polls `check` every half second until it yields a value, fails, or `timeout` passes.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if Instant::now() > deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A DNS-label namespace name for a test, unique per run.
pub fn namespace_name(test: &str, nonce: u32) -> String {
    let cleaned: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let stem: String = cleaned.trim_matches('-').chars().take(40).collect();
    format!("af-e2e-{}-{nonce:05x}", stem.trim_end_matches('-'))
}

/// The Pod Security level of every scenario's namespace: what a build namespace needs with
/// archforge's default builder settings (no privileged pods, RuntimeDefault seccomp).
pub const POD_SECURITY_LEVEL: &str = "baseline";

/// A scenario's namespace: enforced at [`POD_SECURITY_LEVEL`], and warned and audited at it
/// too so that a violation shows in the Job controller's warnings and the audit log.
pub fn namespace_manifest(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {
            "archforge.dev/e2e": "true",
            "pod-security.kubernetes.io/enforce": POD_SECURITY_LEVEL,
            "pod-security.kubernetes.io/warn": POD_SECURITY_LEVEL,
            "pod-security.kubernetes.io/audit": POD_SECURITY_LEVEL,
        }}
    })
}

pub async fn create_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace: Namespace = serde_json::from_value(namespace_manifest(name))?;
    namespaces
        .create(&PostParams::default(), &namespace)
        .await?;
    Ok(())
}

/// How many times an Event happened: its series count (or the deprecated count) when the
/// reporter folded repeats into it, otherwise once.
pub fn occurrences(event: &Event) -> i32 {
    let series = event.series.as_ref().map_or(0, |s| s.count);
    series.max(event.deprecated_count.unwrap_or(0)).max(1)
}

/// Whether an ImageBuild's status is about its current run: the generation and the
/// rebuild annotation the run was started for are the object's (an annotation change
/// starts a new run without a new generation).
pub fn is_current_run(build: &ImageBuild) -> bool {
    let Some(status) = &build.status else {
        return false;
    };
    status.observed_generation == build.metadata.generation
        && status.rebuild == rebuild_token(build)
}

pub async fn delete_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    match namespaces.delete(name, &DeleteParams::background()).await {
        Err(e) if !is_not_found(&e) => Err(e.into()),
        _ => Ok(()),
    }
}

pub fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
}

/// An ImageBuild for the suite: `platforms`, pushed to `<registry>/e2e/<namespace>/<name>:v1`
/// (or to `registry_host` instead of the suite's registry, e.g. a proxy).
pub fn imagebuild(
    settings: &Settings,
    namespace: &str,
    name: &str,
    platforms: &[&str],
    registry_host: Option<&str>,
) -> Value {
    let host = registry_host.unwrap_or(&settings.registry);
    let mut spec = json!({
        "source": {
            "git": {"url": settings.git_url, "ref": settings.git_ref},
            "dockerfile": "Dockerfile",
        },
        "platforms": platforms,
        "output": {"image": format!("{host}/e2e/{namespace}/{name}:v1")},
        "timeout": "10m",
        "retries": 0,
    });
    if settings.simulate_nodes {
        spec["nodeSelector"] = json!({SIMULATED_LABEL: "true"});
    }
    json!({
        "apiVersion": "archforge.dev/v1alpha1",
        "kind": "ImageBuild",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    })
}

/// Pins the builder pods of ImageBuild `manifest` to the scenario's own simulated nodes
/// (those labelled [`POOL_LABEL`] `pool`), instead of the shared ones.
pub fn select_pool(manifest: &mut Value, pool: &str) {
    manifest["spec"]["nodeSelector"] = json!({POOL_LABEL: pool});
}

/// The manifest `digest` in the repository of `image` (`host[:port]/repository:tag`, as
/// `spec.output.image` says it): platform images are pushed by digest only, with no tag to
/// name them by.
pub fn by_digest(image: &str, digest: &str) -> anyhow::Result<Reference> {
    Ok(parse_reference(image)?.clone_with_digest(digest.to_string()))
}

/// The image configuration (`architecture`, `os`, labels...) of the image manifest
/// `reference` names.
pub async fn read_image_config(
    registry: &Registry,
    reference: &Reference,
) -> anyhow::Result<Value> {
    let auth = registry.auth_for(reference)?;
    let (_, _, config) = registry
        .client()
        .pull_manifest_and_config(reference, &auth)
        .await?;
    Ok(serde_json::from_str(&config)?)
}

/// The platform (`os/arch[/variant]`) an image configuration says its binaries are for.
pub fn config_platform(config: &Value) -> String {
    let mut platform = format!(
        "{}/{}",
        config["os"].as_str().unwrap_or_default(),
        config["architecture"].as_str().unwrap_or_default()
    );
    if let Some(variant) = config["variant"].as_str() {
        platform = format!("{platform}/{variant}");
    }
    platform
}

/// The platforms (`os/arch[/variant]`) and digests of a pushed image index.
pub async fn read_index(
    registry: &Registry,
    reference: &str,
) -> anyhow::Result<(String, Vec<(String, String)>)> {
    let target = parse_reference(reference)?;
    let auth = registry.auth_for(&target)?;
    let (bytes, digest) = registry
        .client()
        .pull_manifest_raw(
            &target,
            &auth,
            &[
                "application/vnd.oci.image.index.v1+json",
                "application/vnd.docker.distribution.manifest.list.v2+json",
            ],
        )
        .await?;
    let index: Value = serde_json::from_slice(&bytes)?;
    Ok((digest, index_platforms(&index)))
}

/// (platform, digest) of each entry of an index document.
pub fn index_platforms(index: &Value) -> Vec<(String, String)> {
    index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let p = &m["platform"];
            let mut platform = format!(
                "{}/{}",
                p["os"].as_str().unwrap_or_default(),
                p["architecture"].as_str().unwrap_or_default()
            );
            if let Some(variant) = p["variant"].as_str() {
                platform = format!("{platform}/{variant}");
            }
            (
                platform,
                m["digest"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(simulate_nodes: bool) -> Settings {
        Settings {
            kubeconfig: "/k".into(),
            registry: "10.0.0.5:5000".into(),
            insecure_registry: true,
            simulate_nodes,
            operator: "archforge".into(),
            git_url: crate::config::SIMULATED_GIT_URL.into(),
            git_ref: crate::config::SIMULATED_GIT_REF.into(),
            keep_namespaces: false,
        }
    }

    #[test]
    fn namespace_names_are_dns_labels() {
        let name = namespace_name(
            "Registry_down during assembly, back after a while!",
            0xabcde,
        );
        assert!(name.len() <= 63, "{name}");
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
        assert!(name.starts_with("af-e2e-registry-down-during-assembly"));
        assert!(name.ends_with("-abcde"));
        assert!(!name.contains("--e") && !name.ends_with('-'));
    }

    #[test]
    fn suite_imagebuilds_are_valid_and_pinned_to_simulated_nodes() {
        for simulate in [true, false] {
            let manifest = imagebuild(
                &settings(simulate),
                "af-e2e-x",
                "app",
                &["linux/amd64", "linux/arm64"],
                None,
            );
            let build: ImageBuild = serde_json::from_value(manifest.clone()).unwrap();
            build.spec.validate().unwrap();
            assert_eq!(build.spec.output.image, "10.0.0.5:5000/e2e/af-e2e-x/app:v1");
            assert_eq!(
                build
                    .spec
                    .node_selector
                    .is_some_and(|s| s[SIMULATED_LABEL] == "true"),
                simulate
            );
        }
        let proxied = imagebuild(
            &settings(true),
            "n",
            "app",
            &["linux/amd64"],
            Some("127.0.0.1:40001"),
        );
        assert_eq!(
            proxied["spec"]["output"]["image"],
            "127.0.0.1:40001/e2e/n/app:v1"
        );
    }

    #[test]
    fn namespaces_enforce_warn_and_audit_baseline() {
        let namespace: Namespace =
            serde_json::from_value(namespace_manifest("af-e2e-x-00001")).unwrap();
        let labels = namespace.metadata.labels.unwrap();
        for mode in ["enforce", "warn", "audit"] {
            assert_eq!(
                labels[&format!("pod-security.kubernetes.io/{mode}")],
                "baseline",
                "{mode}"
            );
        }
        assert_eq!(labels["archforge.dev/e2e"], "true");
    }

    #[test]
    fn counts_the_occurrences_of_an_event() {
        let event = |extra: Value| -> Event {
            let mut e =
                json!({"eventTime": "2024-01-01T00:00:00.000000Z", "metadata": {"name": "e"}});
            e.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            serde_json::from_value(e).unwrap()
        };
        assert_eq!(occurrences(&event(json!({}))), 1);
        assert_eq!(
            occurrences(&event(
                json!({"series": {"count": 4, "lastObservedTime": "2024-01-01T00:00:09.000000Z"}})
            )),
            4
        );
        assert_eq!(occurrences(&event(json!({"deprecatedCount": 3}))), 3);
    }

    #[test]
    fn the_current_run_is_the_objects_generation_and_rebuild_token() {
        let build = |generation: i64, annotation: Option<&str>, status: Value| -> ImageBuild {
            let mut manifest = imagebuild(&settings(true), "n", "app", &["linux/amd64"], None);
            manifest["metadata"]["generation"] = json!(generation);
            if let Some(token) = annotation {
                manifest["metadata"]["annotations"] =
                    json!({archforge::plan::REBUILD_ANNOTATION: token});
            }
            manifest["status"] = status;
            serde_json::from_value(manifest).unwrap()
        };
        assert!(!is_current_run(&build(1, None, Value::Null)));
        assert!(is_current_run(&build(
            1,
            None,
            json!({"observedGeneration": 1})
        )));
        assert!(!is_current_run(&build(
            2,
            None,
            json!({"observedGeneration": 1})
        )));
        // The failed run's status, before the operator took up the new annotation.
        assert!(!is_current_run(&build(
            1,
            Some("2"),
            json!({"observedGeneration": 1})
        )));
        assert!(is_current_run(&build(
            1,
            Some("2"),
            json!({"observedGeneration": 1, "rebuild": "2"})
        )));
    }

    #[test]
    fn a_pooled_imagebuild_selects_only_its_pool() {
        let mut manifest = imagebuild(
            &settings(true),
            "af-e2e-x-1a2b3",
            "app",
            &["linux/amd64", "linux/arm64"],
            None,
        );
        select_pool(&mut manifest, "af-e2e-x-1a2b3");
        manifest["spec"]["emulation"] = json!("Fallback");
        manifest["spec"]["emulationAfter"] = json!("0s");
        let build: ImageBuild = serde_json::from_value(manifest).unwrap();
        build.spec.validate().unwrap();
        let selector = build.spec.node_selector.unwrap();
        assert_eq!(selector.len(), 1, "{selector:?}");
        assert_eq!(selector[POOL_LABEL], "af-e2e-x-1a2b3");
        assert_eq!(
            build.spec.emulation,
            Some(archforge::api::Emulation::Fallback)
        );
    }

    #[test]
    fn names_an_image_by_digest_without_its_tag() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let reference = by_digest("10.0.0.5:5000/e2e/ns/app:v1", &digest).unwrap();
        assert_eq!(
            reference.to_string(),
            format!("10.0.0.5:5000/e2e/ns/app@{digest}")
        );
        assert_eq!(reference.tag(), None);
        assert_eq!(reference.digest(), Some(digest.as_str()));
        // Not an output image: no registry host, or no tag.
        assert!(by_digest("e2e/app:v1", &digest).is_err());
        assert!(by_digest("10.0.0.5:5000/e2e/app", &digest).is_err());
    }

    #[test]
    fn reads_the_platform_of_an_image_config() {
        assert_eq!(
            config_platform(&json!({"os": "linux", "architecture": "arm64"})),
            "linux/arm64"
        );
        assert_eq!(
            config_platform(&json!({"os": "linux", "architecture": "arm", "variant": "v7"})),
            "linux/arm/v7"
        );
    }

    #[test]
    fn reads_platforms_of_an_index() {
        let index = json!({"manifests": [
            {"digest": "sha256:a", "platform": {"os": "linux", "architecture": "amd64"}},
            {"digest": "sha256:b", "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
        ]});
        assert_eq!(
            index_platforms(&index),
            vec![
                ("linux/amd64".to_string(), "sha256:a".to_string()),
                ("linux/arm/v7".to_string(), "sha256:b".to_string())
            ]
        );
    }
}
