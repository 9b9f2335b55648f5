//! The scale benchmark (`archforge-e2e scale`, `make e2e-scale`): N two-platform
//! ImageBuilds in one namespace with one operator, timed until all succeed, with per-build
//! latencies (created → all Jobs exist, last Job finished → index pushed) as p50/p95, the
//! operator's peak RSS, its Kubernetes API requests per ImageBuild (its own /metrics
//! counter) and, when the API server lets us read its /metrics, `apiserver_request_total`
//! over the round (every client's requests, the control plane's own included).
//!
//! Written for a busy API server: creates go out in bounded parallel and are retried on
//! 429, 5xx and the CEL internal error of kubernetes#114661, each retry noted on stderr and
//! counted in the table.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use archforge::api::{ImageBuild, Phase};
use archforge::render::{LABEL_IMAGEBUILD, LABEL_MANAGED_BY, MANAGER};
use archforge_e2e::cluster::wait_for;
use archforge_e2e::operator::sum_samples;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::{WatchStreamExt, watcher};

use crate::case::{AMD64, ARM64, Case, describe, with_case};
use crate::suite::Suite;

/// `archforge-e2e scale`'s arguments.
#[derive(clap::Parser, Debug)]
pub struct ScaleArgs {
    /// Numbers of ImageBuilds (two platforms each) to run, one round each.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    builds: Vec<usize>,
    /// ImageBuilds created at once.
    #[arg(long, default_value_t = 16)]
    parallel: usize,
    /// Attempts per create before the round fails (retried on 429, 5xx, kubernetes#114661).
    #[arg(long, default_value_t = 10)]
    create_attempts: u32,
    /// How long one round may take.
    #[arg(long, default_value = "60m", value_parser = humantime_duration)]
    timeout: Duration,
}

fn humantime_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(text.trim_end_matches(char::is_alphabetic).len());
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not like 90s, 30m or 1h"))?;
    match unit {
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{text:?} is not like 90s, 30m or 1h")),
    }
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleRow {
    pub builds: usize,
    pub seconds: f64,
    /// created → all Jobs exist, p50 and p95, seconds.
    pub jobs_created: (f64, f64),
    /// last Job finished → index pushed, p50 and p95, seconds.
    pub index_pushed: (f64, f64),
    pub peak_rss_mib: f64,
    pub requests_per_build: f64,
    /// `apiserver_request_total` over the round, when readable.
    pub apiserver_requests: Option<f64>,
    pub create_retries: u32,
}

/// The table's header and separator.
pub const TABLE_HEADER: &str = "| ImageBuilds | time to all Succeeded | created → all Jobs exist p50 / p95 | last Job finished → index pushed p50 / p95 | operator peak RSS | operator Kubernetes requests per ImageBuild | API server requests (all clients) | create retries |\n| --- | --- | --- | --- | --- | --- | --- | --- |";

impl ScaleRow {
    /// The row in the README's table.
    pub fn markdown(&self) -> String {
        let apiserver = self
            .apiserver_requests
            .map_or("not readable".to_string(), |n| format!("{n:.0}"));
        format!(
            "| {} | {:.1} s | {:.2} s / {:.2} s | {:.2} s / {:.2} s | {:.1} MiB | {:.1} | {apiserver} | {} |",
            self.builds,
            self.seconds,
            self.jobs_created.0,
            self.jobs_created.1,
            self.index_pushed.0,
            self.index_pushed.1,
            self.peak_rss_mib,
            self.requests_per_build,
            self.create_retries,
        )
    }
}

/// Runs one round per `--builds` count and prints the table of figures.
pub async fn scale(suite: Arc<Suite>, args: ScaleArgs) -> anyhow::Result<()> {
    ensure!(
        suite.settings.simulate_nodes,
        "the scale benchmark needs ARCHFORGE_E2E_SIMULATE_NODES=1 (thousands of real builds are a different benchmark)"
    );
    let mut rows = Vec::new();
    for &count in &args.builds {
        let row = with_scale_case(&suite, count, &args).await?;
        eprintln!("{count} ImageBuilds: {:.1} s", row.seconds);
        rows.push(row);
    }
    println!("{TABLE_HEADER}");
    for r in rows {
        println!("{}", r.markdown());
    }
    Ok(())
}

/// Whether a refused create is worth another attempt: throttling (429), the server's own
/// trouble (5xx, timeouts) and the CEL data race of kubernetes#114661, which 1.24.0–1.24.9,
/// 1.25.0–1.25.5 and 1.26.0 answer a valid object with under load as an "Internal error".
pub fn is_retryable(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(s) => {
            s.code == 429
                || s.code >= 500
                || s.code == 408
                || s.message.to_ascii_lowercase().contains("internal error")
        }
        // Connection resets and timeouts of an overloaded server.
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// The nearest-rank percentile `p` (0 < p ≤ 100) of `values`; 0 without values.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Sum of `apiserver_request_total` in the API server's /metrics, when this client may read
/// it (the nonResourceURL `/metrics`).
async fn apiserver_requests(client: &kube::Client) -> Option<f64> {
    // A GET of `/metrics`, built the way kube builds its own (no second http crate here).
    let request = kube::core::Request::new("")
        .get("metrics", &kube::api::GetParams::default())
        .ok()?;
    let text = client.request_text(request).await.ok()?;
    let total = sum_samples(&text, "apiserver_request_total");
    (total > 0.0).then_some(total)
}

/// When each ImageBuild reached each point, as this process saw it through its watches.
#[derive(Default)]
struct Timeline {
    created: BTreeMap<String, Instant>,
    jobs: BTreeMap<String, BTreeSet<String>>,
    done_jobs: BTreeMap<String, BTreeSet<String>>,
    all_jobs_exist: BTreeMap<String, Instant>,
    last_job_done: BTreeMap<String, Instant>,
    succeeded: BTreeMap<String, Instant>,
}

impl Timeline {
    fn saw_job(&mut self, job: &Job, platforms: usize) {
        let Some(build) = job.labels().get(LABEL_IMAGEBUILD).cloned() else {
            return;
        };
        let now = Instant::now();
        let jobs = self.jobs.entry(build.clone()).or_default();
        jobs.insert(job.name_any());
        if jobs.len() == platforms {
            self.all_jobs_exist.entry(build.clone()).or_insert(now);
        }
        let complete = job
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "Complete" && c.status == "True")
            });
        if complete {
            let done = self.done_jobs.entry(build.clone()).or_default();
            done.insert(job.name_any());
            if done.len() == platforms {
                self.last_job_done.entry(build).or_insert(now);
            }
        }
    }

    fn saw_build(&mut self, build: &ImageBuild) {
        if build.status.as_ref().and_then(|s| s.phase) == Some(Phase::Succeeded) {
            self.succeeded
                .entry(build.name_any())
                .or_insert_with(Instant::now);
        }
    }

    /// Seconds between two points of each ImageBuild that reached both.
    fn intervals(from: &BTreeMap<String, Instant>, to: &BTreeMap<String, Instant>) -> Vec<f64> {
        from.iter()
            .filter_map(|(name, start)| {
                Some(
                    to.get(name)?
                        .saturating_duration_since(*start)
                        .as_secs_f64(),
                )
            })
            .collect()
    }
}

/// Creates ImageBuild `name`, retrying what a busy API server refuses for now.
async fn create(
    case: &Case,
    name: &str,
    attempts: u32,
    retries: &Mutex<u32>,
) -> anyhow::Result<()> {
    let manifest = case.manifest(name, &[AMD64, ARM64]);
    let mut delay = Duration::from_millis(200);
    for attempt in 1..=attempts {
        match case.apply(&manifest).await {
            Ok(_) => return Ok(()),
            Err(e) if attempt < attempts && is_retryable(&e) => {
                eprintln!("create {name}: attempt {attempt} refused ({e}); retrying in {delay:?}");
                *retries.lock().unwrap() += 1;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("creating ImageBuild {name} (attempt {attempt})"));
            }
        }
    }
    unreachable!("the last attempt returns")
}

async fn with_scale_case(
    suite: &Arc<Suite>,
    count: usize,
    args: &ScaleArgs,
) -> anyhow::Result<ScaleRow> {
    let mut row = None;
    with_case(suite, &format!("scale-{count}"), None, async |case| {
        let timeline = Arc::new(Mutex::new(Timeline::default()));
        let managed = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGER}"));
        let jobs: Api<Job> = Api::namespaced(suite.client.clone(), &case.namespace);
        let job_watch = {
            let timeline = timeline.clone();
            tokio::spawn(
                watcher(jobs, managed)
                    .default_backoff()
                    .applied_objects()
                    .for_each(move |job| {
                        if let Ok(job) = job {
                            timeline.lock().unwrap().saw_job(&job, 2);
                        }
                        futures::future::ready(())
                    }),
            )
        };
        let build_watch = {
            let timeline = timeline.clone();
            tokio::spawn(
                watcher(case.builds.clone(), watcher::Config::default())
                    .default_backoff()
                    .applied_objects()
                    .for_each(move |build| {
                        if let Ok(build) = build {
                            timeline.lock().unwrap().saw_build(&build);
                        }
                        futures::future::ready(())
                    }),
            )
        };
        let apiserver_before = apiserver_requests(&suite.client).await;
        let retries = Mutex::new(0);
        let started = Instant::now();
        futures::stream::iter(0..count)
            .map(|i| {
                let (timeline, retries) = (&timeline, &retries);
                async move {
                    let name = format!("app-{i:04}");
                    create(case, &name, args.create_attempts, retries).await?;
                    timeline
                        .lock()
                        .unwrap()
                        .created
                        .insert(name, Instant::now());
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(args.parallel.max(1))
            .try_collect::<Vec<_>>()
            .await?;
        eprintln!(
            "{count} ImageBuilds created in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let outcome = wait_for(
            &format!("{count} ImageBuilds to succeed"),
            args.timeout,
            || async {
                case.operator.lock().unwrap().check_alive()?;
                if timeline.lock().unwrap().succeeded.len() < count {
                    return Ok(None);
                }
                // The watch says all succeeded; one list confirms it (and names failures).
                let builds = case.builds.list(&ListParams::default()).await?.items;
                let failed: Vec<String> = builds
                    .iter()
                    .filter(|b| b.status.as_ref().and_then(|s| s.phase) == Some(Phase::Failed))
                    .map(|b| format!("{}: {}", b.name_any(), describe(b.status.as_ref().unwrap())))
                    .collect();
                ensure!(failed.is_empty(), "failed: {failed:?}");
                let done = builds
                    .iter()
                    .filter(|b| b.status.as_ref().and_then(|s| s.phase) == Some(Phase::Succeeded))
                    .count();
                Ok((done == count).then_some(()))
            },
        )
        .await;
        let seconds = started.elapsed().as_secs_f64();
        job_watch.abort();
        build_watch.abort();
        outcome?;
        let apiserver_after = apiserver_requests(&suite.client).await;
        let (metrics_address, peak) = {
            let operator = case.operator.lock().unwrap();
            (operator.metrics_address.clone(), operator.peak_rss_kib())
        };
        let text = reqwest::get(format!("http://{metrics_address}/metrics"))
            .await?
            .text()
            .await?;
        let requests = sum_samples(&text, "archforge_kubernetes_requests_total");
        ensure!(
            requests > 0.0,
            "no Kubernetes requests counted; metrics:\n{text}"
        );
        let timeline = timeline.lock().unwrap();
        let jobs_created = Timeline::intervals(&timeline.created, &timeline.all_jobs_exist);
        let index_pushed = Timeline::intervals(&timeline.last_job_done, &timeline.succeeded);
        row = Some(ScaleRow {
            builds: count,
            seconds,
            jobs_created: (
                percentile(&jobs_created, 50.0),
                percentile(&jobs_created, 95.0),
            ),
            index_pushed: (
                percentile(&index_pushed, 50.0),
                percentile(&index_pushed, 95.0),
            ),
            peak_rss_mib: peak.context("operator peak RSS")? as f64 / 1024.0,
            requests_per_build: requests / count as f64,
            apiserver_requests: apiserver_before
                .zip(apiserver_after)
                .map(|(before, after)| after - before),
            create_retries: *retries.lock().unwrap(),
        });
        Ok(())
    })
    .await?;
    row.context("no figures")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            status: Some(kube::core::response::StatusSummary::Failure),
            code,
            message: message.into(),
            reason: String::new(),
            details: None,
            metadata: None,
        }))
    }

    #[test]
    fn busy_server_refusals_are_retried_and_real_ones_are_not() {
        assert!(is_retryable(&refusal(429, "too many requests")));
        assert!(is_retryable(&refusal(500, "etcdserver: request timed out")));
        assert!(is_retryable(&refusal(503, "unavailable")));
        // kubernetes#114661: a valid object refused by the CEL data race.
        assert!(is_retryable(&refusal(
            422,
            "ImageBuild.archforge.dev \"app-0001\" is invalid: spec: Internal error: rule compile error"
        )));
        assert!(!is_retryable(&refusal(
            422,
            "spec.platforms: Duplicate value"
        )));
        assert!(!is_retryable(&refusal(403, "forbidden")));
        assert!(!is_retryable(&refusal(409, "already exists")));
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), 50.0);
        assert_eq!(percentile(&values, 95.0), 95.0);
        assert_eq!(percentile(&[3.0], 95.0), 3.0);
        assert_eq!(percentile(&[1.0, 2.0], 50.0), 1.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn the_timeline_marks_all_jobs_and_the_last_completion_once() {
        let job = |name: &str, complete: bool| -> Job {
            let mut j = serde_json::json!({"metadata": {"name": name,
                "labels": {"archforge.dev/imagebuild": "app-0001"}}});
            if complete {
                j["status"] =
                    serde_json::json!({"conditions": [{"type": "Complete", "status": "True"}]});
            }
            serde_json::from_value(j).unwrap()
        };
        let mut t = Timeline::default();
        t.saw_job(&job("a", false), 2);
        assert!(t.all_jobs_exist.is_empty());
        t.saw_job(&job("b", false), 2);
        let first = t.all_jobs_exist["app-0001"];
        t.saw_job(&job("a", true), 2);
        assert!(t.last_job_done.is_empty(), "one of two is done");
        t.saw_job(&job("b", true), 2);
        t.saw_job(&job("b", true), 2);
        assert_eq!(t.all_jobs_exist["app-0001"], first);
        assert_eq!(t.last_job_done.len(), 1);
    }

    #[test]
    fn a_row_prints_in_the_table_shape() {
        let row = ScaleRow {
            builds: 100,
            seconds: 63.25,
            jobs_created: (0.5, 1.25),
            index_pushed: (0.75, 2.0),
            peak_rss_mib: 40.0,
            requests_per_build: 11.2,
            apiserver_requests: None,
            create_retries: 3,
        };
        let columns = TABLE_HEADER.lines().next().unwrap().matches('|').count();
        assert_eq!(row.markdown().matches('|').count(), columns);
        assert_eq!(
            row.markdown(),
            "| 100 | 63.2 s | 0.50 s / 1.25 s | 0.75 s / 2.00 s | 40.0 MiB | 11.2 | not readable | 3 |"
        );
    }
}
