//! Cluster-side helpers: the CRD, per-test namespaces, ImageBuild manifests, waiting, and
//! reading what was pushed.

use std::future::Future;
use std::time::{Duration, Instant};

use archforge::api::ImageBuild;
use archforge::registry::{Registry, parse_reference};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, CustomResourceExt};
use serde_json::{Value, json};

use crate::config::Settings;
use crate::nodes::SIMULATED_LABEL;

pub const FIELD_MANAGER: &str = "archforge-e2e";

/// Applies the CRD with server-side apply and waits until it is Established.
pub async fn install_crd(client: &Client) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = ImageBuild::crd();
    let name = crd.metadata.name.clone().expect("the CRD has a name");
    crds.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await?;
    wait_for(
        "the ImageBuild CRD to be Established",
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

pub async fn create_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace: Namespace = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {
            "archforge.dev/e2e": "true",
            // Builder pods run with the Unconfined seccomp profile by default (rootless
            // buildah's unshare and mount calls), which the baseline and restricted Pod
            // Security levels refuse; namespaces for builds need the privileged level.
            "pod-security.kubernetes.io/enforce": "privileged",
        }}
    }))?;
    namespaces
        .create(&PostParams::default(), &namespace)
        .await?;
    Ok(())
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
