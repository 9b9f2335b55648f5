//! The operator under test: the real `archforge run` binary, out of cluster, with the
//! suite's kubeconfig, watching one namespace. Tests kill and restart it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::Settings;

pub struct Operator {
    binary: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    pub metrics_address: String,
}

/// The `archforge run` arguments for one watched namespace.
pub fn run_args(
    settings: &Settings,
    namespace: &str,
    metrics_address: &str,
    extra_insecure: &[String],
) -> Vec<String> {
    let mut args = vec![
        "run".to_string(),
        format!("--namespace={namespace}"),
        format!("--metrics-address={metrics_address}"),
        "--log-format=json".to_string(),
        // A short resync so that a lost watch event costs seconds, not minutes.
        "--resync=20s".to_string(),
    ];
    if settings.insecure_registry {
        args.push(format!("--insecure-registry={}", settings.registry));
    }
    for host in extra_insecure {
        args.push(format!("--insecure-registry={host}"));
    }
    args
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Operator {
    /// Starts the operator for `namespace`, logging to `log`.
    pub fn start(
        settings: &Settings,
        namespace: &str,
        log: &Path,
        extra_insecure: &[String],
    ) -> anyhow::Result<Operator> {
        Operator::start_with(settings, namespace, log, extra_insecure, &[])
    }

    /// [`Operator::start`] with `extra` arguments (settings a scenario needs; none of
    /// [`run_args`]' own).
    pub fn start_with(
        settings: &Settings,
        namespace: &str,
        log: &Path,
        extra_insecure: &[String],
        extra: &[String],
    ) -> anyhow::Result<Operator> {
        let metrics_address = format!("127.0.0.1:{}", free_port());
        let mut args = run_args(settings, namespace, &metrics_address, extra_insecure);
        args.extend(extra.iter().cloned());
        let mut operator = Operator {
            binary: settings.operator.clone(),
            args,
            log: log.to_path_buf(),
            child: None,
            metrics_address,
        };
        operator.spawn()?;
        Ok(operator)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.binary)
            .args(&self.args)
            .env("RUST_LOG", "info,archforge=debug")
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!(
                    "starting {}: {e} (run `make e2e`, which builds it)",
                    self.binary.display()
                )
            })?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL, the way a node failure or an OOM kill ends it: no shutdown code runs.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Fails when the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            anyhow::bail!("the operator exited ({status}); see {}", self.log.display());
        }
        Ok(())
    }

    /// The Prometheus text of /metrics.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        metrics_text(&self.metrics_address).await
    }

    /// Peak resident memory of the process so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        peak_rss_from_proc_status(&status)
    }

    pub fn log(&self) -> &Path {
        &self.log
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn peak_rss_from_proc_status(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The Prometheus text of the /metrics endpoint at `address`, waiting up to 20 s for a
/// process that is still starting.
pub async fn metrics_text(address: &str) -> anyhow::Result<String> {
    let url = format!("http://{address}/metrics");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match reqwest::get(&url).await {
            Ok(response) => return Ok(response.error_for_status()?.text().await?),
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The `name="value"` labels of a sample's `{...}` part (values unescaped).
fn sample_labels(labels: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = labels;
    while let Some((name, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.push((
            name.trim().trim_start_matches(',').trim().to_string(),
            value,
        ));
        rest = &after[end..];
    }
    out
}

/// Sum of the samples of a counter family in Prometheus text whose labels include every
/// pair of `labels`, e.g. `archforge_kubernetes_requests_total` with verb="create",
/// resource="jobs".
pub fn sum_samples_where(text: &str, family: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            let (metric, rest) = name.split_once('{').unwrap_or((name, ""));
            let found = sample_labels(rest.strip_suffix('}').unwrap_or(rest));
            let matches = labels
                .iter()
                .all(|(k, v)| found.iter().any(|(fk, fv)| fk == k && fv == v));
            (metric == family && matches).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// Sum of every sample of a counter family in Prometheus text, e.g.
/// `archforge_kubernetes_requests_total`.
pub fn sum_samples(text: &str, family: &str) -> f64 {
    sum_samples_where(text, family, &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_a_counter_family_and_nothing_else() {
        let text = "# HELP archforge_kubernetes_requests Requests\n\
                    # TYPE archforge_kubernetes_requests counter\n\
                    archforge_kubernetes_requests_total{verb=\"list\",resource=\"jobs\"} 12\n\
                    archforge_kubernetes_requests_total{verb=\"patch\",resource=\"jobs\"} 4\n\
                    archforge_kubernetes_requests_totally 100\n\
                    archforge_reconciles_total 7\n";
        assert_eq!(
            sum_samples(text, "archforge_kubernetes_requests_total"),
            16.0
        );
        assert_eq!(sum_samples(text, "archforge_reconciles_total"), 7.0);
        assert_eq!(sum_samples(text, "missing_total"), 0.0);
    }

    #[test]
    fn sums_the_samples_with_given_labels() {
        let text = "# TYPE archforge_kubernetes_requests counter\n\
                    archforge_kubernetes_requests_total{verb=\"list\",resource=\"jobs\"} 12\n\
                    archforge_kubernetes_requests_total{verb=\"patch\",resource=\"jobs\"} 4\n\
                    archforge_kubernetes_requests_total{verb=\"patch\",resource=\"imagebuilds/status\"} 9\n\
                    archforge_kubernetes_requests_total{resource=\"jobs\",verb=\"patch\",x=\"a\\\"b,c\"} 1\n\
                    archforge_kubernetes_requests_total 100\n";
        let family = "archforge_kubernetes_requests_total";
        assert_eq!(
            sum_samples_where(text, family, &[("verb", "patch"), ("resource", "jobs")]),
            5.0
        );
        assert_eq!(sum_samples_where(text, family, &[("x", "a\"b,c")]), 1.0);
        assert_eq!(sum_samples_where(text, family, &[("verb", "delete")]), 0.0);
        assert_eq!(sum_samples(text, family), 126.0);
    }

    #[test]
    fn reads_the_peak_rss() {
        let status =
            "Name:\tarchforge\nVmPeak:\t  900000 kB\nVmHWM:\t   48212 kB\nVmRSS:\t   40000 kB\n";
        assert_eq!(peak_rss_from_proc_status(status), Some(48212));
        assert_eq!(peak_rss_from_proc_status("Name: x\n"), None);
    }

    #[test]
    fn operator_arguments_parse_as_archforge_run() {
        let settings = Settings {
            kubeconfig: "/k".into(),
            registry: "10.0.0.5:5000".into(),
            insecure_registry: true,
            simulate_nodes: true,
            operator: "archforge".into(),
            git_url: "https://x/y.git".into(),
            git_ref: "main".into(),
            keep_namespaces: false,
        };
        let args = run_args(
            &settings,
            "e2e-a",
            "127.0.0.1:9000",
            &["127.0.0.1:40001".into()],
        );
        let mut argv = vec!["archforge".to_string()];
        argv.extend(args);
        let cli = <archforge::cli::Cli as clap::Parser>::try_parse_from(argv).unwrap();
        let archforge::cli::Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(run.namespaces, vec!["e2e-a"]);
        let insecure: Vec<&str> = run
            .registry
            .trust
            .insecure_registries
            .iter()
            .map(|host| host.as_str())
            .collect();
        assert_eq!(insecure, ["10.0.0.5:5000", "127.0.0.1:40001"]);
        assert_eq!(run.resync, Duration::from_secs(20));
    }
}
