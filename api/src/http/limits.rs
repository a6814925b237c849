//! Rate limits and load shedding at the HTTP edge.
//!
//! **Guarantees**
//! - Every authenticated `/v1` request is charged to its token's bucket
//!   (`RATE_LIMIT_PER_TOKEN`, keyed by the token's SHA-256, never the token);
//!   over it the answer is 429 `rate_limited` with `Retry-After`.
//! - Every `/webhooks/hyperswitch` delivery is charged to its source's
//!   bucket (`RATE_LIMIT_WEBHOOK_PER_IP`): the TCP peer address (IPv6 by its
//!   /64, which one host can rotate within), never `X-Forwarded-For`.
//! - At most `MAX_IN_FLIGHT_REQUESTS` requests are handled at once (all
//!   routes but `/healthz`, `/readyz` and `/metrics`); one more is answered
//!   503 `overloaded` with `Retry-After` at once, never queued.
//! - Keyed state is bounded: token keys by the number of configured tokens
//!   (only requests that authenticated are charged); source keys are swept
//!   every [`SWEEP_INTERVAL`] (`retain_recent`: a key is dropped once its
//!   bucket is full again, at most burst/rate seconds after its last
//!   request), and never exceed [`SOURCE_KEYS_MAX`]: past it a sweep runs
//!   inline, and if the table is still full the delivery is shed with 503.
//! - `DISABLE_RATE_LIMIT_FOR_TESTS` turns both rate limits off (production
//!   refuses it); the in-flight cap stays on.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::Semaphore;

use super::AppState;
use super::auth::Principal;
use super::error::ApiError;
use crate::config::{LimitsConfig, RateLimit};

/// How often idle keys leave the per-source table.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// Most source keys held at once: about 100 bytes each, so ~10 MB at worst.
pub const SOURCE_KEYS_MAX: usize = 100_000;
/// What a shed request is told to wait: in-flight requests finish within
/// milliseconds to [`super::REQUEST_TIMEOUT`]; one second spreads retries.
pub const OVERLOAD_RETRY_AFTER_SECS: u64 = 1;
/// Routes an orchestrator probes or scrapes: cheap, and failing them under
/// load would get a busy process restarted.
const UNSHED_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// A token's limiter key: the SHA-256 of the configured token it matched
/// (all zeros when no tokens are configured, development only).
pub type TokenKey = [u8; 32];

/// The limiters of one app.
pub struct Limits {
    per_token: Option<DefaultKeyedRateLimiter<TokenKey>>,
    per_source: Option<DefaultKeyedRateLimiter<IpAddr>>,
    in_flight: Arc<Semaphore>,
    clock: DefaultClock,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("rate_limited", &self.per_token.is_some())
            .field("in_flight_available", &self.in_flight.available_permits())
            .finish_non_exhaustive()
    }
}

fn quota(rate: RateLimit) -> Quota {
    let per_second = NonZeroU32::new(rate.per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(per_second).allow_burst(burst)
}

/// IPv4 as is (also when mapped into IPv6); IPv6 by its /64.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
    }
}

impl Limits {
    /// `rate_limits_on` is false under `DISABLE_RATE_LIMIT_FOR_TESTS`.
    pub fn new(config: &LimitsConfig, rate_limits_on: bool) -> Limits {
        Limits {
            per_token: rate_limits_on.then(|| RateLimiter::keyed(quota(config.per_token))),
            per_source: rate_limits_on.then(|| RateLimiter::keyed(quota(config.webhook_per_ip))),
            in_flight: Arc::new(Semaphore::new(config.max_in_flight as usize)),
            clock: DefaultClock::default(),
        }
    }

    /// No limits at all (the in-flight cap at its default).
    pub fn off() -> Limits {
        Limits::new(&LimitsConfig::default(), false)
    }

    fn rate_limited(&self, wait: Duration, who: &str) -> ApiError {
        // Whole seconds, rounded up, at least 1.
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        ApiError::RateLimited {
            message: format!(
                "too many requests from this {who}; retry after the Retry-After delay"
            ),
            retry_after_secs: secs.max(1),
        }
    }

    /// Charges one request to `key`'s token bucket.
    pub fn check_token(&self, key: &TokenKey) -> Result<(), ApiError> {
        let Some(limiter) = &self.per_token else {
            return Ok(());
        };
        limiter.check_key(key).map_err(|not_until| {
            self.rate_limited(not_until.wait_time_from(self.clock.now()), "token")
        })
    }

    /// Charges one webhook delivery to its source's bucket.
    pub fn check_source(&self, ip: IpAddr) -> Result<(), ApiError> {
        let Some(limiter) = &self.per_source else {
            return Ok(());
        };
        if limiter.len() >= SOURCE_KEYS_MAX {
            limiter.retain_recent();
            if limiter.len() >= SOURCE_KEYS_MAX {
                return Err(ApiError::Overloaded {
                    message: "too many webhook sources at once; retry later".to_owned(),
                    retry_after_secs: OVERLOAD_RETRY_AFTER_SECS,
                });
            }
        }
        limiter.check_key(&source_key(ip)).map_err(|not_until| {
            self.rate_limited(not_until.wait_time_from(self.clock.now()), "source address")
        })
    }

    /// Drops keys whose bucket is full again (they hold no information).
    pub fn sweep(&self) {
        if let Some(limiter) = &self.per_source {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        if let Some(limiter) = &self.per_token {
            limiter.retain_recent();
        }
    }

    /// Keys held now (token, source).
    pub fn keys_held(&self) -> (usize, usize) {
        (
            self.per_token.as_ref().map_or(0, |l| l.len()),
            self.per_source.as_ref().map_or(0, |l| l.len()),
        )
    }
}

/// Sweeps `limits` every [`SWEEP_INTERVAL`] until `cancel`.
pub async fn sweep_until(state: AppState, cancel: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => state.limits.sweep(),
        }
    }
}

/// The global in-flight cap (outermost but for the request context).
pub async fn shed_load(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if UNSHED_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let Ok(_permit) = Arc::clone(&state.limits.in_flight).try_acquire_owned() else {
        return ApiError::Overloaded {
            message: "the ledger is at its limit of requests in flight; retry after the Retry-After delay"
                .to_owned(),
            retry_after_secs: OVERLOAD_RETRY_AFTER_SECS,
        }
        .into_response();
    };
    next.run(request).await
}

/// Per-token limit, inside `require_api` / `require_admin` (which put the
/// [`Principal`] in the request).
pub async fn limit_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let tokens = &state.settings.tokens;
    let key = match request.extensions().get::<Principal>() {
        Some(Principal::Api) => tokens.api.as_ref().map(|d| d.limiter_key()),
        Some(Principal::Admin) => tokens.admin.as_ref().map(|d| d.limiter_key()),
        Some(Principal::Anonymous) | None => None,
    }
    .unwrap_or([0; 32]);
    state.limits.check_token(&key)?;
    Ok(next.run(request).await)
}

/// Per-source limit on the webhook route.
pub async fn limit_webhook(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED), |c| c.0.ip());
    match state.limits.check_source(ip) {
        Ok(()) => next.run(request).await,
        Err(e) => {
            state.metrics.webhook("rate_limited");
            e.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_second: u32, burst: u32) -> Limits {
        let rate = RateLimit { per_second, burst };
        Limits::new(
            &LimitsConfig {
                per_token: rate,
                webhook_per_ip: rate,
                ..LimitsConfig::default()
            },
            true,
        )
    }

    #[test]
    fn a_token_gets_its_burst_then_429_with_a_whole_second_retry_after() {
        let l = limits(1, 3);
        for _ in 0..3 {
            assert!(l.check_token(&[1; 32]).is_ok());
        }
        match l.check_token(&[1; 32]) {
            Err(ApiError::RateLimited {
                retry_after_secs, ..
            }) => assert_eq!(retry_after_secs, 1),
            other => panic!("{other:?}"),
        }
        // Another token has its own bucket.
        assert!(l.check_token(&[2; 32]).is_ok());
        assert_eq!(l.keys_held().0, 2);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let l = limits(1, 1);
        let e = l.rate_limited(Duration::from_millis(1_001), "token");
        assert!(matches!(
            e,
            ApiError::RateLimited {
                retry_after_secs: 2,
                ..
            }
        ));
        let e = l.rate_limited(Duration::ZERO, "token");
        assert!(matches!(
            e,
            ApiError::RateLimited {
                retry_after_secs: 1,
                ..
            }
        ));
    }

    #[test]
    fn ipv6_sources_share_a_bucket_per_64_and_mapped_ipv4_is_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(c));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(source_key(mapped), "10.1.2.3".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn sweeping_drops_sources_whose_bucket_refilled() {
        let l = limits(1_000_000, 1);
        for n in 0..50u8 {
            assert!(l.check_source(IpAddr::from([10, 0, 0, n])).is_ok());
        }
        assert_eq!(l.keys_held().1, 50);
        // One request at a million per second refills within a microsecond;
        // wait for that condition with a deadline.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            l.sweep();
            if l.keys_held().1 == 0 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "keys never swept");
            std::thread::yield_now();
        }
    }

    #[test]
    fn off_limits_never_refuse() {
        let l = Limits::off();
        for _ in 0..10_000 {
            assert!(l.check_token(&[1; 32]).is_ok());
            assert!(l.check_source(IpAddr::from([10, 0, 0, 1])).is_ok());
        }
        assert_eq!(l.keys_held(), (0, 0));
    }
}
