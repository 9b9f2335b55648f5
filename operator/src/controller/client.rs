//! The Kubernetes client the controller runs with: every request counted
//! ([`crate::telemetry::CountRequests`]) and, like client-go's, rate limited on the client
//! side ([`RateLimit`]) so that a burst of work queues here, not in the API server.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::telemetry::{CountRequests, Metrics};

/// A token bucket: `qps` requests a second on average, up to `burst` at once. A `qps` of 0
/// turns the limit off.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    pub qps: f32,
    pub burst: u32,
}

impl<S> tower::Layer<S> for RateLimit {
    type Service = RateLimited<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimited {
            inner,
            limit: *self,
            tokens: self.burst.max(1) as f64,
            last: Instant::now(),
            wait: None,
        }
    }
}

/// The service [`RateLimit`] wraps around the client's. kube's client puts a buffer in
/// front of it, so one instance sees every request and the bucket is the whole client's.
pub struct RateLimited<S> {
    inner: S,
    limit: RateLimit,
    tokens: f64,
    last: Instant,
    wait: Option<Pin<Box<Sleep>>>,
}

impl<S> RateLimited<S> {
    fn refill(&mut self) {
        let now = Instant::now();
        let earned = now.duration_since(self.last).as_secs_f64() * f64::from(self.limit.qps);
        self.tokens = (self.tokens + earned).min(self.limit.burst.max(1) as f64);
        self.last = now;
    }
}

impl<S, R> tower::Service<R> for RateLimited<S>
where
    S: tower::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.limit.qps > 0.0 {
            loop {
                if let Some(wait) = self.wait.as_mut() {
                    std::task::ready!(wait.as_mut().poll(cx));
                    self.wait = None;
                }
                self.refill();
                if self.tokens >= 1.0 {
                    break;
                }
                let missing = (1.0 - self.tokens) / f64::from(self.limit.qps);
                self.wait = Some(Box::pin(tokio::time::sleep(Duration::from_secs_f64(
                    missing,
                ))));
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        if self.limit.qps > 0.0 {
            self.tokens -= 1.0;
        }
        self.inner.call(request)
    }
}

/// The client for `config`: requests counted into `metrics`, then rate limited.
pub fn client(
    config: kube::Config,
    metrics: Arc<Metrics>,
    limit: RateLimit,
) -> kube::Result<kube::Client> {
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&limit)
        .with_layer(&CountRequests::new(metrics))
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, Service};

    /// A service that answers at once, counting calls.
    #[derive(Default)]
    struct Echo(u32);

    impl Service<()> for Echo {
        type Response = u32;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<u32, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, (): ()) -> Self::Future {
            self.0 += 1;
            std::future::ready(Ok(self.0))
        }
    }

    async fn call(service: &mut RateLimited<Echo>) {
        std::future::poll_fn(|cx| service.poll_ready(cx))
            .await
            .unwrap();
        service.call(()).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_goes_at_once_and_the_rest_at_the_rate() {
        let mut service = RateLimit {
            qps: 10.0,
            burst: 5,
        }
        .layer(Echo::default());
        let start = Instant::now();
        for _ in 0..5 {
            call(&mut service).await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "the burst does not wait");
        for _ in 0..10 {
            call(&mut service).await;
        }
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(999) && waited <= Duration::from_millis(1010),
            "ten more at 10/s take a second: {waited:?}"
        );
        // Idle time refills the bucket, up to the burst.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let again = Instant::now();
        for _ in 0..5 {
            call(&mut service).await;
        }
        assert_eq!(again.elapsed(), Duration::ZERO);
        call(&mut service).await;
        assert!(again.elapsed() >= Duration::from_millis(99));
    }

    #[tokio::test(start_paused = true)]
    async fn a_qps_of_zero_does_not_limit() {
        let mut service = RateLimit { qps: 0.0, burst: 0 }.layer(Echo::default());
        let start = Instant::now();
        for _ in 0..1000 {
            call(&mut service).await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
