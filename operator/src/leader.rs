//! Optional leader election on a `coordination.k8s.io/v1` Lease, for running several replicas:
//! only the holder reconciles. The holder renews the Lease; if it cannot (another replica took
//! it, or the API server was unreachable for a whole lease duration), the process exits so
//! that two controllers never act at once. Off by default (`--leader-elect`).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// Who we are: the pod name in a cluster, the host name elsewhere.
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_every: Duration,
}

/// Whether `identity` may take the lease now: it is free, ours, or expired.
pub fn can_take(spec: Option<&LeaseSpec>, identity: &str, now: jiff::Timestamp) -> bool {
    let Some(spec) = spec else { return true };
    match spec.holder_identity.as_deref() {
        None | Some("") => true,
        Some(holder) if holder == identity => true,
        Some(_) => {
            let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
            match &spec.renew_time {
                Some(renewed) => renewed.0 + jiff::SignedDuration::from_secs(duration) < now,
                None => true,
            }
        }
    }
}

fn our_spec(config: &LeaseConfig, previous: Option<&LeaseSpec>, now: jiff::Timestamp) -> LeaseSpec {
    let keeps =
        previous.is_some_and(|p| p.holder_identity.as_deref() == Some(config.identity.as_str()));
    LeaseSpec {
        holder_identity: Some(config.identity.clone()),
        lease_duration_seconds: Some(config.lease_duration.as_secs() as i32),
        acquire_time: if keeps {
            previous.and_then(|p| p.acquire_time.clone())
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(
            previous.and_then(|p| p.lease_transitions).unwrap_or(0)
                + if keeps || previous.is_none() { 0 } else { 1 },
        ),
        ..Default::default()
    }
}

/// One attempt to take or renew the lease. `Ok(true)` when we hold it afterwards.
pub async fn try_acquire(api: &Api<Lease>, config: &LeaseConfig) -> Result<bool, kube::Error> {
    let now = jiff::Timestamp::now();
    match api.get_opt(&config.name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(config.name.clone()),
                    ..Default::default()
                },
                spec: Some(our_spec(config, None, now)),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            if !can_take(lease.spec.as_ref(), &config.identity, now) {
                return Ok(false);
            }
            lease.spec = Some(our_spec(config, lease.spec.as_ref(), now));
            // The resourceVersion makes this a compare-and-swap: a replica that raced us gets 409.
            match api
                .replace(&config.name, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// Who holds the lease: the pod name (downward API `POD_NAME`) in a cluster, so that a
/// restarted container of the same pod takes its lease back at once; elsewhere the host name
/// and process id.
pub fn identity() -> String {
    if let Ok(pod) = std::env::var("POD_NAME")
        && !pod.is_empty()
    {
        return pod;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "archforge".into());
    format!("{host}-{}", std::process::id())
}

/// Waits until this process holds the lease, then keeps renewing it in the background.
/// Returns once leadership is held; the renewal task exits the process when it is lost.
pub async fn acquire(client: Client, config: LeaseConfig) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    loop {
        match try_acquire(&api, &config).await {
            Ok(true) => break,
            Ok(false) => tracing::info!(lease = %config.name, "another replica leads; waiting"),
            Err(e) => tracing::warn!(error = %e, "could not read or take the lease"),
        }
        tokio::time::sleep(config.renew_every).await;
    }
    tracing::info!(lease = %config.name, identity = %config.identity, "leading");
    tokio::spawn(async move {
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(config.renew_every).await;
            match try_acquire(&api, &config).await {
                Ok(true) => last_renewal = tokio::time::Instant::now(),
                Ok(false) => {
                    tracing::error!("the lease was taken by another replica; exiting");
                    std::process::exit(1);
                }
                Err(e) if last_renewal.elapsed() >= config.lease_duration => {
                    tracing::error!(error = %e, "could not renew the lease within its duration; exiting");
                    std::process::exit(1);
                }
                Err(e) => tracing::warn!(error = %e, "lease renewal failed; retrying"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renewed: &str) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(Into::into),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(renewed.parse().unwrap())),
            ..Default::default()
        }
    }

    #[test]
    fn who_may_take_the_lease() {
        let now: jiff::Timestamp = "2026-11-23T10:00:20Z".parse().unwrap();
        assert!(can_take(None, "a", now), "no lease yet");
        assert!(
            can_take(Some(&spec(None, "2026-11-23T10:00:19Z")), "a", now),
            "released"
        );
        assert!(
            can_take(Some(&spec(Some("a"), "2026-11-23T10:00:19Z")), "a", now),
            "ours"
        );
        assert!(
            !can_take(Some(&spec(Some("b"), "2026-11-23T10:00:10Z")), "a", now),
            "b renewed 10 s ago"
        );
        assert!(
            can_take(Some(&spec(Some("b"), "2026-11-23T10:00:04Z")), "a", now),
            "b's lease expired"
        );
    }

    #[test]
    fn taking_over_counts_a_transition() {
        let config = LeaseConfig {
            namespace: "ns".into(),
            name: "archforge".into(),
            identity: "a".into(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        };
        let now: jiff::Timestamp = "2026-11-23T10:00:20Z".parse().unwrap();
        let theirs = LeaseSpec {
            lease_transitions: Some(3),
            ..spec(Some("b"), "2026-11-23T10:00:00Z")
        };
        let taken = our_spec(&config, Some(&theirs), now);
        assert_eq!(taken.holder_identity.as_deref(), Some("a"));
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.acquire_time.as_ref().unwrap().0, now);
        let renewed = our_spec(&config, Some(&taken), now);
        assert_eq!(
            renewed.lease_transitions,
            Some(4),
            "renewing is not a transition"
        );
    }
}
