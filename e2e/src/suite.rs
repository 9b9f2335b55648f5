//! The suite: what every scenario shares (the cluster, the registry, the operator's
//! settings), set up once: the CRD applied, simulated nodes registered and kept Ready.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use archforge::registry::{Registry, RegistryOptions};
use archforge::settings::{BuilderSettings, KubeVersion};
use archforge_e2e::cluster::install_crd;
use archforge_e2e::config::Settings;
use archforge_e2e::nodes::{self, SimulatedNode};
use kube::Client;

/// What every scenario shares: the cluster, the registry and the operator's settings.
pub struct Suite {
    /// From the environment (`config.rs`).
    pub settings: Settings,
    /// The API server of KUBECONFIG.
    pub client: Client,
    /// The registry the ImageBuilds push to, for reading what they pushed.
    pub registry: Arc<Registry>,
    /// The API server's version: which fields builder pods carry depends on it.
    pub version: KubeVersion,
    /// The operator runs with its defaults; scenarios check pods against them.
    pub builder: BuilderSettings,
    /// Where the scenarios run (libtest-mimic calls them on its own threads).
    pub runtime: tokio::runtime::Handle,
    /// The folder of the operators' logs, one file per namespace.
    pub logs: PathBuf,
}

impl Suite {
    /// Connects with KUBECONFIG, checks the server's version, applies the CRD and, with
    /// simulated nodes, registers them and keeps them Ready.
    pub async fn connect(
        settings: Settings,
        runtime: tokio::runtime::Handle,
    ) -> anyhow::Result<Suite> {
        let client = Client::try_default()
            .await
            .context("connecting with KUBECONFIG")?;
        let info = client
            .apiserver_version()
            .await
            .context("reading the server version")?;
        let version = KubeVersion::from_info(&info.major, &info.minor)
            .with_context(|| format!("unreadable server version {}.{}", info.major, info.minor))?;
        ensure!(
            version >= KubeVersion::OLDEST,
            "the cluster runs Kubernetes {version}; archforge supports 1.24 and newer"
        );
        install_crd(&client).await?;
        let builder = BuilderSettings::default();
        if settings.simulate_nodes {
            nodes::remove_stale_pooled(&client).await?;
            let shared: Vec<SimulatedNode> = ["amd64", "arm64"]
                .into_iter()
                .map(SimulatedNode::shared)
                .collect();
            for node in &shared {
                nodes::ensure(&client, node, &builder.fuse_resource).await?;
            }
            runtime.spawn(nodes::keep_ready(
                client.clone(),
                shared,
                builder.fuse_resource.clone(),
            ));
        }
        let registry = Registry::new(RegistryOptions {
            insecure: if settings.insecure_registry {
                vec![settings.registry.clone()]
            } else {
                vec![]
            },
            ..Default::default()
        });
        let logs = workspace_root().join("target/e2e-logs");
        std::fs::create_dir_all(&logs)?;
        eprintln!(
            "archforge-e2e: Kubernetes {version}, registry {}, {} nodes; operator logs in {}",
            settings.registry,
            if settings.simulate_nodes {
                "simulated"
            } else {
                "real"
            },
            logs.display()
        );
        Ok(Suite {
            settings,
            client,
            registry: Arc::new(registry),
            version,
            builder,
            runtime,
            logs,
        })
    }

    /// How long one run may take: seconds with simulated builders, minutes with real ones.
    pub fn run_timeout(&self) -> Duration {
        if self.settings.simulate_nodes {
            Duration::from_secs(180)
        } else {
            Duration::from_secs(30 * 60)
        }
    }
}

/// The workspace checkout, which holds the operator binary and `target/e2e-logs`.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ sits in the workspace")
        .to_path_buf()
}
