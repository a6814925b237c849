//! Typed configuration of the `ledger` binary, read once from the environment
//! and passed explicitly (no globals).
//!
//! **Guarantees**
//! - A bad value (unparseable, negative, zero, or above its named maximum)
//!   never disables a safeguard: it falls back to the default and yields a
//!   [`ConfigWarning`] the caller logs at WARN. An empty value counts as unset
//!   (as Go's `os.Getenv` did), so it takes the default silently.
//! - The exceptions are values that name *which* provider account or API
//!   contract money moves under (`HYPERSWITCH_PROFILE_ID`,
//!   `STRIPE_API_VERSION`): no fallback is safe for a malformed one (the
//!   default profile may be another business), so it refuses to start with a
//!   [`ConfigError::InvalidValue`] naming the variable.
//! - A secret (`LEDGER_API_TOKEN`, `LEDGER_ADMIN_TOKEN`, `HYPERSWITCH_API_KEY`,
//!   `HYPERSWITCH_WEBHOOK_SECRET`, `STRIPE_SECRET_KEY`) is held in [`Secret`]
//!   and never reaches `Debug`, a warning, a refusal or the start-up summary;
//!   database URLs appear only with their password replaced by `***`.
//! - `APP_ENV=production` refuses to start, listing every [`ProductionRefusal`]
//!   at once, each a sentence naming the failure mode and the env var to fix.
//!
//! **Environments**
//! - `development` (the default when `APP_ENV` is unset): nothing is refused;
//!   with no PSP key at all the PSP fake is selected.
//! - `staging`: behaves like development (no automatic fake), but every
//!   production refusal that is not about test-mode PSP credentials becomes a
//!   WARN advisory, so a staging deploy shows what production would refuse.
//!   Sandbox Hyperswitch and `sk_test_` Stripe keys are what staging is for, so
//!   those two are not advised on. Explicitly disabled workers are advised on
//!   in staging and production.
//! - `production`: see [`Config::check_production`].
//!
//! **Bypass and debug flags.** The Go system's bypass flags were
//! `DISABLE_RATE_LIMIT_FOR_TESTS` (kept: the ledger rate-limits its API),
//! `CSRF_DISABLED` and `BYPASS_CONTENT_CREATOR_ROLE` (not carried over: the
//! ledger has bearer tokens only, no cookies and no roles) and
//! `CLAMAV_REQUIRED=false` (not carried over: no uploads). The ledger adds
//! `LEDGER_PSP_FAKE`. Production refuses either of the kept flags when set.
//!
//! **Env var names** are the seed's. `TRANSFER_RETRY_*` mirrors `REVERSAL_*`
//! with the prefix swapped (`TRANSFER_RETRY_WORKER_ENABLED`,
//! `TRANSFER_RETRY_MAX_RETRIES`, …) and the same defaults, as the seed gives
//! none of its own.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use crate::store::{StoreUrl, redact_url};

/// The names of every variable read here, so callers and tests spell them once.
pub mod var {
    pub const APP_ENV: &str = "APP_ENV";
    pub const DATABASE_URL: &str = "DATABASE_URL";
    pub const DATABASE_READ_URL: &str = "DATABASE_READ_URL";
    pub const LISTEN_ADDR: &str = "LISTEN_ADDR";
    pub const API_TOKEN: &str = "LEDGER_API_TOKEN";
    pub const ADMIN_TOKEN: &str = "LEDGER_ADMIN_TOKEN";
    pub const HYPERSWITCH_ENABLED: &str = "HYPERSWITCH_ENABLED";
    pub const HYPERSWITCH_BASE_URL: &str = "HYPERSWITCH_BASE_URL";
    pub const HYPERSWITCH_API_KEY: &str = "HYPERSWITCH_API_KEY";
    pub const HYPERSWITCH_WEBHOOK_SECRET: &str = "HYPERSWITCH_WEBHOOK_SECRET";
    pub const HYPERSWITCH_PROFILE_ID: &str = "HYPERSWITCH_PROFILE_ID";
    pub const STRIPE_SECRET_KEY: &str = "STRIPE_SECRET_KEY";
    pub const STRIPE_BASE_URL: &str = "STRIPE_BASE_URL";
    pub const STRIPE_API_VERSION: &str = "STRIPE_API_VERSION";
    pub const PLATFORM_FEE_BPS: &str = "PLATFORM_FEE_BPS";
    pub const RECONCILE_WORKER_ENABLED: &str = "RECONCILE_WORKER_ENABLED";
    pub const RECONCILE_INTERVAL: &str = "RECONCILE_INTERVAL";
    pub const RECONCILE_ORDER_STUCK_AFTER: &str = "RECONCILE_ORDER_STUCK_AFTER";
    pub const RECONCILE_REFUND_STUCK_AFTER: &str = "RECONCILE_REFUND_STUCK_AFTER";
    pub const RECONCILE_REFUND_ORPHAN_AFTER: &str = "RECONCILE_REFUND_ORPHAN_AFTER";
    pub const RECONCILE_BATCH_LIMIT: &str = "RECONCILE_BATCH_LIMIT";
    pub const REVERSAL_WORKER_ENABLED: &str = "REVERSAL_WORKER_ENABLED";
    pub const REVERSAL_MAX_RETRIES: &str = "REVERSAL_MAX_RETRIES";
    pub const REVERSAL_CHECK_INTERVAL: &str = "REVERSAL_CHECK_INTERVAL";
    pub const REVERSAL_BACKOFF_BASE: &str = "REVERSAL_BACKOFF_BASE";
    pub const REVERSAL_BACKOFF_MAX: &str = "REVERSAL_BACKOFF_MAX";
    pub const TRANSFER_RETRY_WORKER_ENABLED: &str = "TRANSFER_RETRY_WORKER_ENABLED";
    pub const TRANSFER_RETRY_MAX_RETRIES: &str = "TRANSFER_RETRY_MAX_RETRIES";
    pub const TRANSFER_RETRY_CHECK_INTERVAL: &str = "TRANSFER_RETRY_CHECK_INTERVAL";
    pub const TRANSFER_RETRY_BACKOFF_BASE: &str = "TRANSFER_RETRY_BACKOFF_BASE";
    pub const TRANSFER_RETRY_BACKOFF_MAX: &str = "TRANSFER_RETRY_BACKOFF_MAX";
    pub const WEBHOOK_LOG_RETENTION_DAYS: &str = "HYPERSWITCH_WEBHOOK_LOG_RETENTION_DAYS";
    pub const PSP_FAKE: &str = "LEDGER_PSP_FAKE";
    pub const PSP_TIMEOUT: &str = "PSP_TIMEOUT";
    pub const PROJECTION_COALESCE: &str = "PROJECTION_COALESCE";
    pub const IDEMPOTENCY_RETENTION: &str = "IDEMPOTENCY_RETENTION";
    pub const READ_STATEMENT_TIMEOUT: &str = "READ_STATEMENT_TIMEOUT";
    pub const DISABLE_RATE_LIMIT_FOR_TESTS: &str = "DISABLE_RATE_LIMIT_FOR_TESTS";
    pub const RATE_LIMIT_PER_TOKEN: &str = "RATE_LIMIT_PER_TOKEN";
    pub const RATE_LIMIT_PER_TOKEN_BURST: &str = "RATE_LIMIT_PER_TOKEN_BURST";
    pub const RATE_LIMIT_WEBHOOK_PER_IP: &str = "RATE_LIMIT_WEBHOOK_PER_IP";
    pub const RATE_LIMIT_WEBHOOK_PER_IP_BURST: &str = "RATE_LIMIT_WEBHOOK_PER_IP_BURST";
    pub const MAX_IN_FLIGHT_REQUESTS: &str = "MAX_IN_FLIGHT_REQUESTS";
    pub const MAX_CONNECTIONS: &str = "MAX_CONNECTIONS";
    pub const HEADER_READ_TIMEOUT: &str = "HEADER_READ_TIMEOUT";
    pub const HTTP_IDLE_TIMEOUT: &str = "HTTP_IDLE_TIMEOUT";
    pub const SHUTDOWN_GRACE: &str = "SHUTDOWN_GRACE";
}

/// Local only: a remote listener must be asked for explicitly.
pub const DEFAULT_LISTEN_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080));
/// Sandbox, so a bare development setup can never take live money.
pub const DEFAULT_HYPERSWITCH_BASE_URL: &str = "https://sandbox.hyperswitch.io";
/// Stripe has one endpoint; the key decides test or live mode.
pub const DEFAULT_STRIPE_BASE_URL: &str = "https://api.stripe.com";
/// The `Stripe-Version` every Stripe request pins: the version Stripe's
/// versioning page (<https://docs.stripe.com/api-versions>) named current
/// when this was written. Without a pin the account's default version
/// applies, which can change under the ledger.
pub const DEFAULT_STRIPE_API_VERSION: &str = ledger_psp::stripe::DEFAULT_API_VERSION;
/// Shortest `LEDGER_API_TOKEN` / `LEDGER_ADMIN_TOKEN` production accepts:
/// 32 random characters (e.g. `openssl rand -hex 16` or longer) are beyond
/// guessing at any request rate the API allows.
pub const TOKEN_CHARS_MIN: usize = 32;
/// Hosts of the providers' sandbox and test environments, compared with the
/// host parsed from the base URL (case-insensitive, trailing dot ignored).
/// Stripe has none: its one host serves both modes and the key decides
/// (`sk_test_`/`rk_test_`, see [`ProductionRefusal::StripeTestKey`]).
pub const PSP_SANDBOX_HOSTS: &[&str] = &["sandbox.hyperswitch.io"];
/// Payments are on unless explicitly turned off (a safeguard, not a feature).
pub const DEFAULT_HYPERSWITCH_ENABLED: bool = true;
/// Bound on one PSP request. Hyperswitch and Stripe answer in well under a
/// second; past this the call counts as a transient failure and is retried
/// with the same idempotency key.
pub const DEFAULT_PSP_TIMEOUT: Duration = Duration::from_secs(10);
/// 10 %: the seed names no fee, so this is the product default.
pub const DEFAULT_PLATFORM_FEE_BPS: u32 = 1_000;
/// A fee above the line total would make the seller's share negative.
pub const PLATFORM_FEE_BPS_MAX: u32 = 10_000;
/// Seed item C defaults.
pub const DEFAULT_RECONCILE_INTERVAL: Duration = Duration::from_secs(60 * 60);
pub const DEFAULT_RECONCILE_ORDER_STUCK_AFTER: Duration = Duration::from_secs(30 * 60);
pub const DEFAULT_RECONCILE_REFUND_STUCK_AFTER: Duration = Duration::from_secs(30 * 60);
/// Shorter than "stuck": "the app crashed" is a different signal from "network hiccup".
pub const DEFAULT_RECONCILE_REFUND_ORPHAN_AFTER: Duration = Duration::from_secs(5 * 60);
/// 50 rows per phase per tick, so a 10k-row backlog doesn't hammer Hyperswitch.
pub const DEFAULT_RECONCILE_BATCH_LIMIT: u32 = 50;
/// Every row is a PSP read; more per tick overruns the PSPs' 25–100 req/s limits.
pub const RECONCILE_BATCH_LIMIT_MAX: u32 = 1_000;
/// Seed item B defaults (reversals; transfer retries use the same shape).
pub const DEFAULT_WORKER_MAX_RETRIES: u32 = 5;
pub const DEFAULT_WORKER_CHECK_INTERVAL: Duration = Duration::from_secs(60);
pub const DEFAULT_WORKER_BACKOFF_BASE: Duration = Duration::from_secs(60);
pub const DEFAULT_WORKER_BACKOFF_MAX: Duration = Duration::from_secs(60 * 60);
/// With backoff capped at `backoff_max`, more attempts only delay the
/// `permanently_failed` state that brings an operator in.
pub const WORKER_MAX_RETRIES_MAX: u32 = 100;
/// Seed item E default.
pub const DEFAULT_WEBHOOK_LOG_RETENTION_DAYS: u32 = 90;
/// Ten years; more is a units typo, and the log is forensics, not the ledger.
pub const WEBHOOK_LOG_RETENTION_DAYS_MAX: u32 = 3_650;
/// After a partial batch the read-model projector lets events gather this
/// long before it reads again (`Projector::with_coalesce`): under load, one
/// large batch instead of a transaction per handful of events. Measured with
/// `ledger bench http` (Postgres, 32 clients; ratio to the same run's raw
/// `INSERT` rate): reading again at once, PlaceOrder ran at 0.43x-0.48x;
/// 50ms 0.49x-0.53x; 100ms 0.51x-0.52x; 200ms 0.55x; 250ms 0.60x (the
/// projector stopped altogether: 0.64x). The read models trail the event
/// store by up to this much more; the first event after a quiet spell is
/// applied at once. `0` turns it off (read again at once).
pub const DEFAULT_PROJECTION_COALESCE: Duration = Duration::from_millis(250);
/// A longer wait only makes the read models staler: batches are already
/// large ([`ledger_projections::runtime::BATCH`] at most).
pub const PROJECTION_COALESCE_MAX: Duration = Duration::from_secs(10);
/// Completed idempotency records (and the responses they replay, PSP client
/// secrets included) are kept this long: a client retries within minutes,
/// and Stripe keeps its own keys for 24 hours.
pub const DEFAULT_IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// Ninety days; longer only keeps client secrets around.
pub const IDEMPOTENCY_RETENTION_MAX: Duration = Duration::from_secs(90 * 24 * 60 * 60);
/// Longest a query on the read pool (query endpoints, read models) may run
/// before Postgres cancels it: the endpoints answer in milliseconds, so this
/// only stops a runaway query from holding a connection.
pub const DEFAULT_READ_STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);
/// No interval, threshold or backoff here makes sense beyond a week; a longer
/// one is a units typo that would quietly stop the work it schedules.
pub const DURATION_MAX: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// Requests per second one API token may make on `/v1`. The API token is
/// the marketplace backend's one credential, so this is the whole
/// marketplace's traffic to the ledger: 500/s is several times a busy
/// marketplace's peak (checkouts, refunds, balance reads) and about what one
/// ledger process serves on Postgres (`ledger bench http`), so a runaway
/// client loop or a leaked token cannot take the whole capacity.
pub const DEFAULT_RATE_LIMIT_PER_TOKEN: u32 = 500;
/// Requests one token may send at once above the steady rate (a batch job
/// starting, a retry wave after a blip).
pub const DEFAULT_RATE_LIMIT_PER_TOKEN_BURST: u32 = 1_000;
/// Webhook deliveries per second from one source IP (an IPv6 /64).
/// Hyperswitch delivers from a few addresses, one delivery per payment or
/// refund state change: 50/s per address is far above a marketplace's
/// payment rate, while a single host flooding the unauthenticated route
/// (each delivery costs an HMAC and a log row) is cut off.
pub const DEFAULT_RATE_LIMIT_WEBHOOK_PER_IP: u32 = 50;
/// A backlog Hyperswitch flushes after an outage arrives as a burst.
pub const DEFAULT_RATE_LIMIT_WEBHOOK_PER_IP_BURST: u32 = 200;
/// A rate above this is a units typo (and no longer limits anything).
pub const RATE_LIMIT_MAX: u32 = 1_000_000;
/// Requests being handled at once, all routes but `/healthz`, `/readyz` and
/// `/metrics`; beyond it a request is shed with 503 at once instead of
/// queueing behind the database. Group commit makes hundreds of concurrent
/// commands cheap, but past a few hundred they only wait on the pool and
/// time out after [`crate::http::REQUEST_TIMEOUT`] anyway.
pub const DEFAULT_MAX_IN_FLIGHT_REQUESTS: u32 = 512;
/// Open HTTP connections; a new one beyond it is closed at once. Twice the
/// in-flight cap leaves room for idle keep-alive connections of a pooled
/// client or load balancer; the process needs a file-descriptor limit
/// above it plus the database pools (`ulimit -n` 4096 is plenty).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 1_024;
/// A cap above this is a typo: the process would run out of descriptors first.
pub const MAX_CONNECTIONS_MAX: u32 = 1_000_000;
/// Time a client has to send a request's headers, counted from the
/// connection's opening or from its first byte after an idle keep-alive
/// spell. Legitimate clients send headers in one packet; a slow-loris one
/// is cut off after this.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Headers that take longer than this are not a slow network.
pub const HEADER_READ_TIMEOUT_MAX: Duration = Duration::from_secs(5 * 60);
/// An idle keep-alive connection is closed after this. Longer than the
/// usual load balancer idle timeout (60 s), so the balancer, not the ledger,
/// closes first and never sends a request on a connection being closed.
pub const DEFAULT_HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(75);
pub const HTTP_IDLE_TIMEOUT_MAX: Duration = Duration::from_secs(60 * 60);
/// After a shutdown signal, in-flight requests have this long to finish;
/// then their connections are closed. Above the request time limit (15 s),
/// so every request that can finish does, and below Kubernetes' default
/// 30 s termination grace, leaving time to stop the workers.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(20);
pub const SHUTDOWN_GRACE_MAX: Duration = Duration::from_secs(10 * 60);
/// Long enough to recognise a value in a log line, short enough to keep a
/// pasted blob out of it.
pub const VALUE_SHOWN_CHARS_MAX: usize = 64;
/// Shown instead of any secret value.
pub const MASK: &str = "***";
/// Shown for a variable that is absent.
const UNSET_SHOWN: &str = "(unset)";

// ---------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------

/// A secret string. `Debug` and `Display` print `***`; read it with
/// [`Secret::expose`] at the one place it is sent. Deliberately neither
/// `Serialize` nor `PartialEq` (compare MACs in constant time elsewhere).
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AppEnv {
    #[default]
    Development,
    Staging,
    Production,
}

impl AppEnv {
    pub const ALLOWED: &'static str = "development, staging, production";

    pub fn as_str(self) -> &'static str {
        match self {
            AppEnv::Development => "development",
            AppEnv::Staging => "staging",
            AppEnv::Production => "production",
        }
    }

    /// Exact names, case-insensitive; no aliases such as `prod`, so a typo
    /// cannot silently land on a laxer environment.
    pub fn parse(value: &str) -> Option<AppEnv> {
        match value.trim().to_ascii_lowercase().as_str() {
            "development" => Some(AppEnv::Development),
            "staging" => Some(AppEnv::Staging),
            "production" => Some(AppEnv::Production),
            _ => None,
        }
    }
}

impl fmt::Display for AppEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which PSP implementation the process talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PspMode {
    /// Hyperswitch and Stripe over HTTP at the configured base URLs.
    Real,
    /// The in-process PSP fake: takes no money, moves no payouts.
    Fake,
}

#[derive(Debug, Clone)]
pub struct HyperswitchConfig {
    pub enabled: bool,
    /// No trailing slash.
    pub base_url: String,
    pub api_key: Option<Secret>,
    /// The profile's `payment_response_hash_key` (HMAC-SHA512 webhook key).
    pub webhook_secret: Option<Secret>,
    /// `HYPERSWITCH_PROFILE_ID`: sent as `profile_id` on payment creates;
    /// required by Hyperswitch when the merchant has more than one business
    /// profile. 1 to 64 characters of `[A-Za-z0-9_-]`.
    pub profile_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct StripeConfig {
    pub secret_key: Option<Secret>,
    /// No trailing slash.
    pub base_url: String,
    /// `STRIPE_API_VERSION`, sent as `Stripe-Version` on every request.
    pub api_version: String,
}

/// The reconciler (seed item C).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileConfig {
    pub enabled: bool,
    pub interval: Duration,
    pub order_stuck_after: Duration,
    pub refund_stuck_after: Duration,
    pub refund_orphan_after: Duration,
    pub batch_limit: u32,
}

/// A retrying PSP worker: reversals (`REVERSAL_*`) and transfer retries
/// (`TRANSFER_RETRY_*`). Backoff is `backoff_base * 2^retry`, capped at
/// `backoff_max`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryWorkerConfig {
    pub enabled: bool,
    pub max_retries: u32,
    pub check_interval: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

/// A token-bucket rate: `per_second` on average, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

/// Rate limits, load shedding and connection hygiene of the HTTP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsConfig {
    /// `RATE_LIMIT_PER_TOKEN` / `_BURST`: each bearer token on `/v1`.
    pub per_token: RateLimit,
    /// `RATE_LIMIT_WEBHOOK_PER_IP` / `_BURST`: each source IP on
    /// `/webhooks/hyperswitch`.
    pub webhook_per_ip: RateLimit,
    /// `MAX_IN_FLIGHT_REQUESTS`: beyond it, 503.
    pub max_in_flight: u32,
    /// `MAX_CONNECTIONS`: beyond it, a new connection is closed.
    pub max_connections: u32,
    /// `HEADER_READ_TIMEOUT`.
    pub header_read_timeout: Duration,
    /// `HTTP_IDLE_TIMEOUT`.
    pub idle_timeout: Duration,
    /// `SHUTDOWN_GRACE`.
    pub shutdown_grace: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            per_token: RateLimit {
                per_second: DEFAULT_RATE_LIMIT_PER_TOKEN,
                burst: DEFAULT_RATE_LIMIT_PER_TOKEN_BURST,
            },
            webhook_per_ip: RateLimit {
                per_second: DEFAULT_RATE_LIMIT_WEBHOOK_PER_IP,
                burst: DEFAULT_RATE_LIMIT_WEBHOOK_PER_IP_BURST,
            },
            max_in_flight: DEFAULT_MAX_IN_FLIGHT_REQUESTS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_HTTP_IDLE_TIMEOUT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

/// The whole configuration. `Debug` is hand-written: secrets print `***` and
/// database URLs lose their password.
#[derive(Clone)]
pub struct Config {
    pub app_env: AppEnv,
    /// Unset means the embedded SQLite file (see [`crate::store`]). May hold a
    /// password: log it only through [`redact_url`].
    pub database_url: Option<String>,
    /// Optional replica for query endpoints. May hold a password.
    pub database_read_url: Option<String>,
    pub listen_addr: SocketAddr,
    pub api_token: Option<Secret>,
    pub admin_token: Option<Secret>,
    pub hyperswitch: HyperswitchConfig,
    pub stripe: StripeConfig,
    pub platform_fee_bps: u32,
    pub reconcile: ReconcileConfig,
    pub reversal: RetryWorkerConfig,
    pub transfer_retry: RetryWorkerConfig,
    pub webhook_log_retention_days: u32,
    pub psp_mode: PspMode,
    /// `PSP_TIMEOUT`: each Hyperswitch / Stripe request.
    pub psp_timeout: Duration,
    /// `PROJECTION_COALESCE`: see [`DEFAULT_PROJECTION_COALESCE`].
    pub projection_coalesce: Duration,
    /// `IDEMPOTENCY_RETENTION`: completed idempotency records older than
    /// this are purged (see [`DEFAULT_IDEMPOTENCY_RETENTION`]).
    pub idempotency_retention: Duration,
    /// `READ_STATEMENT_TIMEOUT`: Postgres `statement_timeout` on the read
    /// pool (see [`DEFAULT_READ_STATEMENT_TIMEOUT`]).
    pub read_statement_timeout: Duration,
    /// `DISABLE_RATE_LIMIT_FOR_TESTS`: test runners only; refused in production.
    pub disable_rate_limit_for_tests: bool,
    /// Rate limits and connection hygiene (see [`LimitsConfig`]); the rate
    /// limits are off when `disable_rate_limit_for_tests` is set.
    pub limits: LimitsConfig,
}

/// A value that was not used as given. The caller logs each at WARN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    pub var: &'static str,
    /// The raw value, truncated; `***` for a secret var; `(unset)` if absent.
    pub value_shown: String,
    /// The default used instead, or `None` when the value was kept and this is
    /// advice (a staging advisory, a disabled worker, a trimmed secret).
    pub default_used: Option<String>,
    pub reason: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}: {}", self.var, self.value_shown, self.reason)?;
        match &self.default_used {
            Some(default) => write!(f, "; using the default {default}"),
            None => Ok(()),
        }
    }
}

/// One reason production refuses to start. [`fmt::Display`] gives the
/// sentence; [`ProductionRefusal::var`] the env var that fixes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProductionRefusal {
    PaymentsDisabled,
    WebhookSecretMissing,
    HyperswitchApiKeyMissing,
    HyperswitchSandbox,
    ApiTokenMissing,
    ApiTokenTooShort,
    AdminTokenMissing,
    AdminTokenTooShort,
    AdminTokenSameAsApiToken,
    SqliteStore,
    /// `var` is `DATABASE_URL` or `DATABASE_READ_URL`.
    DatabaseWithoutTls {
        var: &'static str,
    },
    /// `var` is `HYPERSWITCH_BASE_URL` or `STRIPE_BASE_URL`.
    PspUrlNotHttps {
        var: &'static str,
    },
    PspFake,
    BypassFlag {
        var: &'static str,
    },
    StripeSecretMissing,
    StripeTestKey,
}

impl ProductionRefusal {
    /// The env var whose value causes this refusal and fixes it.
    pub fn var(&self) -> &'static str {
        match self {
            ProductionRefusal::PaymentsDisabled => var::HYPERSWITCH_ENABLED,
            ProductionRefusal::WebhookSecretMissing => var::HYPERSWITCH_WEBHOOK_SECRET,
            ProductionRefusal::HyperswitchApiKeyMissing => var::HYPERSWITCH_API_KEY,
            ProductionRefusal::HyperswitchSandbox => var::HYPERSWITCH_BASE_URL,
            ProductionRefusal::ApiTokenMissing | ProductionRefusal::ApiTokenTooShort => {
                var::API_TOKEN
            }
            ProductionRefusal::AdminTokenMissing
            | ProductionRefusal::AdminTokenTooShort
            | ProductionRefusal::AdminTokenSameAsApiToken => var::ADMIN_TOKEN,
            ProductionRefusal::SqliteStore => var::DATABASE_URL,
            ProductionRefusal::DatabaseWithoutTls { var }
            | ProductionRefusal::PspUrlNotHttps { var } => var,
            ProductionRefusal::PspFake => var::PSP_FAKE,
            ProductionRefusal::BypassFlag { var } => var,
            ProductionRefusal::StripeSecretMissing | ProductionRefusal::StripeTestKey => {
                var::STRIPE_SECRET_KEY
            }
        }
    }

    /// Whether staging gets this as a WARN advisory. Test-mode PSP
    /// credentials are what staging is for, so those are not advised on.
    fn advised_in_staging(&self) -> bool {
        !matches!(
            self,
            ProductionRefusal::HyperswitchSandbox | ProductionRefusal::StripeTestKey
        )
    }
}

impl fmt::Display for ProductionRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProductionRefusal::PaymentsDisabled => f.write_str(
                "HYPERSWITCH_ENABLED=false: orders would complete without any payment being taken, \
                 effectively giving away products; set HYPERSWITCH_ENABLED=true (or unset it).",
            ),
            ProductionRefusal::WebhookSecretMissing => f.write_str(
                "HYPERSWITCH_WEBHOOK_SECRET is not set: webhook signatures cannot be verified, so the \
                 ledger (failing closed) would reject every Hyperswitch webhook and payments and \
                 refunds would settle only when the reconciler polls, up to RECONCILE_INTERVAL late; \
                 set HYPERSWITCH_WEBHOOK_SECRET to the profile's payment_response_hash_key.",
            ),
            ProductionRefusal::HyperswitchApiKeyMissing => f.write_str(
                "HYPERSWITCH_API_KEY is not set: every order would fail to create its payment and the \
                 reconciler could not read payment or refund status; set HYPERSWITCH_API_KEY.",
            ),
            ProductionRefusal::HyperswitchSandbox => f.write_str(
                "HYPERSWITCH_BASE_URL points at the Hyperswitch sandbox: test cards would mark real \
                 orders paid with no money taken, effectively giving away products; set \
                 HYPERSWITCH_BASE_URL to the live Hyperswitch endpoint.",
            ),
            ProductionRefusal::ApiTokenMissing => f.write_str(
                "LEDGER_API_TOKEN is not set: there is no credential to check bearer tokens against, \
                 so every order and refund request would be rejected with 401; set LEDGER_API_TOKEN.",
            ),
            ProductionRefusal::ApiTokenTooShort => write!(
                f,
                "LEDGER_API_TOKEN is shorter than {TOKEN_CHARS_MIN} characters: a short bearer token \
                 can be guessed, and whoever guesses it can place orders and request refunds; set \
                 LEDGER_API_TOKEN to at least {TOKEN_CHARS_MIN} random characters."
            ),
            ProductionRefusal::AdminTokenTooShort => write!(
                f,
                "LEDGER_ADMIN_TOKEN is shorter than {TOKEN_CHARS_MIN} characters: a short admin \
                 token can be guessed, and whoever guesses it can retry transfers and force \
                 reconciles; set LEDGER_ADMIN_TOKEN to at least {TOKEN_CHARS_MIN} random characters."
            ),
            ProductionRefusal::AdminTokenMissing => f.write_str(
                "LEDGER_ADMIN_TOKEN is not set: every admin request would be rejected, leaving \
                 operators no way to retry a transfer or force a reconcile during an incident; set \
                 LEDGER_ADMIN_TOKEN.",
            ),
            ProductionRefusal::AdminTokenSameAsApiToken => f.write_str(
                "LEDGER_ADMIN_TOKEN equals LEDGER_API_TOKEN: every API client could retry transfers \
                 and trigger reconciles with admin rights; set LEDGER_ADMIN_TOKEN to a different \
                 secret.",
            ),
            ProductionRefusal::SqliteStore => f.write_str(
                "DATABASE_URL is unset or not a postgres:// URL, so the ledger would run on the \
                 embedded SQLite file, a single-file store with no replication or backup where one \
                 lost disk loses every event; set DATABASE_URL=postgres://….",
            ),
            ProductionRefusal::DatabaseWithoutTls { var } => write!(
                f,
                "{var} points at a Postgres server beyond this machine without sslmode=require, \
                 verify-ca or verify-full: the database credentials and every event, balance and \
                 payout would cross the network in plaintext, readable and alterable by anyone on \
                 the path (sslmode=prefer silently falls back to plaintext); add \
                 sslmode=verify-full (with sslrootcert=<CA file>) or at least sslmode=require to {var}."
            ),
            ProductionRefusal::PspUrlNotHttps { var } => write!(
                f,
                "{var} is not an https:// URL: the provider API key and every payment, refund and \
                 transfer request would cross the network in plaintext, readable and alterable by \
                 anyone on the path; set {var} to the provider's https:// endpoint."
            ),
            ProductionRefusal::PspFake => f.write_str(
                "LEDGER_PSP_FAKE=true selects the in-process PSP fake: orders would be marked paid \
                 with no money taken and no payout would move, effectively giving away products; \
                 unset LEDGER_PSP_FAKE.",
            ),
            ProductionRefusal::BypassFlag { var } => write!(
                f,
                "{var} is set: it is a test-only bypass that turns a safeguard off (rate limiting), \
                 leaving the API open to credential guessing and request floods; unset {var}."
            ),
            ProductionRefusal::StripeSecretMissing => f.write_str(
                "STRIPE_SECRET_KEY is not set: seller payouts and transfer reversals would never \
                 move, every transfer retrying until it is marked permanently failed; set \
                 STRIPE_SECRET_KEY.",
            ),
            ProductionRefusal::StripeTestKey => f.write_str(
                "STRIPE_SECRET_KEY is a test-mode key (sk_test_/rk_test_): transfers would be made \
                 in Stripe test mode, so no seller would ever be paid while the ledger records \
                 payouts as sent; set STRIPE_SECRET_KEY to a live key.",
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("APP_ENV={value:?} is not one of {allowed}; set APP_ENV to one of them", allowed = AppEnv::ALLOWED)]
    InvalidAppEnv { value: String },
    /// A value with no safe fallback (see the module docs).
    #[error("{var}={value:?} is invalid: {reason}; fix {var} or unset it")]
    InvalidValue {
        var: &'static str,
        /// Truncated to [`VALUE_SHOWN_CHARS_MAX`] characters.
        value: String,
        reason: String,
    },
    /// Every refusal at once, plus the warnings gathered on the way, so one
    /// failed start shows everything to fix.
    #[error("{}", production_error_text(refusals, warnings))]
    Production {
        refusals: Vec<ProductionRefusal>,
        warnings: Vec<ConfigWarning>,
    },
}

fn production_error_text(refusals: &[ProductionRefusal], warnings: &[ConfigWarning]) -> String {
    let mut text = format!(
        "APP_ENV=production refuses to start ({} problem{}):",
        refusals.len(),
        if refusals.len() == 1 { "" } else { "s" }
    );
    for refusal in refusals {
        text.push_str("\n- ");
        text.push_str(&refusal.to_string());
    }
    for warning in warnings {
        text.push_str("\nwarning: ");
        text.push_str(&warning.to_string());
    }
    text
}

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

impl Config {
    /// Reads the process environment. Non-UTF-8 values count as unset.
    pub fn from_process_env() -> Result<(Config, Vec<ConfigWarning>), ConfigError> {
        Config::from_env(&|name| std::env::var(name).ok())
    }

    /// Builds the configuration from `env` (a lookup by variable name).
    ///
    /// Returns the warnings to log at WARN. Fails on an unknown `APP_ENV`, and
    /// in production on any [`ProductionRefusal`].
    pub fn from_env(
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Config, Vec<ConfigWarning>), ConfigError> {
        let mut r = Reader {
            env,
            warnings: Vec::new(),
        };
        let app_env = match r.raw(var::APP_ENV) {
            None => AppEnv::default(),
            Some(value) => AppEnv::parse(&value).ok_or_else(|| ConfigError::InvalidAppEnv {
                value: truncate(&value),
            })?,
        };

        let api_token = r.secret(var::API_TOKEN);
        let admin_token = r.secret(var::ADMIN_TOKEN);
        let hyperswitch = HyperswitchConfig {
            enabled: r.bool(var::HYPERSWITCH_ENABLED, DEFAULT_HYPERSWITCH_ENABLED),
            base_url: r.http_url(var::HYPERSWITCH_BASE_URL, DEFAULT_HYPERSWITCH_BASE_URL),
            api_key: r.secret(var::HYPERSWITCH_API_KEY),
            webhook_secret: r.secret(var::HYPERSWITCH_WEBHOOK_SECRET),
            profile_id: r.hyperswitch_profile_id()?,
        };
        let stripe = StripeConfig {
            secret_key: r.secret(var::STRIPE_SECRET_KEY),
            base_url: r.http_url(var::STRIPE_BASE_URL, DEFAULT_STRIPE_BASE_URL),
            api_version: r.stripe_api_version()?,
        };
        let reconcile = ReconcileConfig {
            enabled: r.bool(var::RECONCILE_WORKER_ENABLED, true),
            interval: r.duration(var::RECONCILE_INTERVAL, DEFAULT_RECONCILE_INTERVAL),
            order_stuck_after: r.duration(
                var::RECONCILE_ORDER_STUCK_AFTER,
                DEFAULT_RECONCILE_ORDER_STUCK_AFTER,
            ),
            refund_stuck_after: r.duration(
                var::RECONCILE_REFUND_STUCK_AFTER,
                DEFAULT_RECONCILE_REFUND_STUCK_AFTER,
            ),
            refund_orphan_after: r.duration(
                var::RECONCILE_REFUND_ORPHAN_AFTER,
                DEFAULT_RECONCILE_REFUND_ORPHAN_AFTER,
            ),
            batch_limit: r.u32(
                var::RECONCILE_BATCH_LIMIT,
                DEFAULT_RECONCILE_BATCH_LIMIT,
                RECONCILE_BATCH_LIMIT_MAX,
            ),
        };
        let reversal = r.retry_worker(&REVERSAL_VARS);
        let transfer_retry = r.retry_worker(&TRANSFER_RETRY_VARS);

        // Unset → automatic; an unreadable value is treated as unset.
        let psp_fake = r.optional_bool(var::PSP_FAKE, "auto");
        let no_psp_keys = hyperswitch.api_key.is_none() && stripe.secret_key.is_none();
        let psp_mode = match psp_fake {
            Some(true) => PspMode::Fake,
            Some(false) => PspMode::Real,
            None if app_env == AppEnv::Development && no_psp_keys => PspMode::Fake,
            None => PspMode::Real,
        };

        let config = Config {
            app_env,
            database_url: r.raw(var::DATABASE_URL),
            database_read_url: r.raw(var::DATABASE_READ_URL),
            listen_addr: r.listen_addr(),
            api_token,
            admin_token,
            hyperswitch,
            stripe,
            platform_fee_bps: r.u32(
                var::PLATFORM_FEE_BPS,
                DEFAULT_PLATFORM_FEE_BPS,
                PLATFORM_FEE_BPS_MAX,
            ),
            reconcile,
            reversal,
            transfer_retry,
            webhook_log_retention_days: r.u32(
                var::WEBHOOK_LOG_RETENTION_DAYS,
                DEFAULT_WEBHOOK_LOG_RETENTION_DAYS,
                WEBHOOK_LOG_RETENTION_DAYS_MAX,
            ),
            psp_mode,
            psp_timeout: r.duration(var::PSP_TIMEOUT, DEFAULT_PSP_TIMEOUT),
            projection_coalesce: r.duration_up_to(
                var::PROJECTION_COALESCE,
                DEFAULT_PROJECTION_COALESCE,
                PROJECTION_COALESCE_MAX,
                Zero::Off,
            ),
            idempotency_retention: r.duration_up_to(
                var::IDEMPOTENCY_RETENTION,
                DEFAULT_IDEMPOTENCY_RETENTION,
                IDEMPOTENCY_RETENTION_MAX,
                Zero::Invalid,
            ),
            read_statement_timeout: r
                .duration(var::READ_STATEMENT_TIMEOUT, DEFAULT_READ_STATEMENT_TIMEOUT),
            disable_rate_limit_for_tests: r.bool(var::DISABLE_RATE_LIMIT_FOR_TESTS, false),
            limits: r.limits(),
        };

        let mut warnings = r.warnings;
        if config.app_env != AppEnv::Development {
            warnings.extend(config.disabled_worker_warnings());
        }
        match config.app_env {
            AppEnv::Development => {}
            AppEnv::Staging => {
                if let Err(refusals) = config.check_production() {
                    warnings.extend(
                        refusals
                            .into_iter()
                            .filter(ProductionRefusal::advised_in_staging)
                            .map(|refusal| config.staging_advisory(refusal)),
                    );
                }
            }
            AppEnv::Production => {
                if let Err(refusals) = config.check_production() {
                    return Err(ConfigError::Production { refusals, warnings });
                }
            }
        }
        Ok((config, warnings))
    }

    /// Every reason this configuration must not run in production, in a fixed
    /// order. Independent of `app_env`, so staging can report them as advice.
    pub fn check_production(&self) -> Result<(), Vec<ProductionRefusal>> {
        let mut refusals = Vec::new();
        if !self.hyperswitch.enabled {
            refusals.push(ProductionRefusal::PaymentsDisabled);
        }
        if self.hyperswitch.webhook_secret.is_none() {
            refusals.push(ProductionRefusal::WebhookSecretMissing);
        }
        if self.hyperswitch.api_key.is_none() {
            refusals.push(ProductionRefusal::HyperswitchApiKeyMissing);
        }
        if is_psp_sandbox(&self.hyperswitch.base_url) {
            refusals.push(ProductionRefusal::HyperswitchSandbox);
        }
        for (var, url) in [
            (var::HYPERSWITCH_BASE_URL, &self.hyperswitch.base_url),
            (var::STRIPE_BASE_URL, &self.stripe.base_url),
        ] {
            if !is_https(url) {
                refusals.push(ProductionRefusal::PspUrlNotHttps { var });
            }
        }
        match &self.api_token {
            None => refusals.push(ProductionRefusal::ApiTokenMissing),
            Some(api) => {
                if is_short_token(api) {
                    refusals.push(ProductionRefusal::ApiTokenTooShort);
                }
                if self
                    .admin_token
                    .as_ref()
                    .is_some_and(|admin| admin.expose() == api.expose())
                {
                    refusals.push(ProductionRefusal::AdminTokenSameAsApiToken);
                }
            }
        }
        match &self.admin_token {
            None => refusals.push(ProductionRefusal::AdminTokenMissing),
            Some(admin) if is_short_token(admin) => {
                refusals.push(ProductionRefusal::AdminTokenTooShort);
            }
            Some(_) => {}
        }
        if !self.store_is_postgres() {
            refusals.push(ProductionRefusal::SqliteStore);
        }
        for (var, url) in [
            (var::DATABASE_URL, &self.database_url),
            (var::DATABASE_READ_URL, &self.database_read_url),
        ] {
            if let Some(url) = url
                && postgres_url_sends_plaintext(url)
            {
                refusals.push(ProductionRefusal::DatabaseWithoutTls { var });
            }
        }
        if self.psp_mode == PspMode::Fake {
            refusals.push(ProductionRefusal::PspFake);
        }
        if self.disable_rate_limit_for_tests {
            refusals.push(ProductionRefusal::BypassFlag {
                var: var::DISABLE_RATE_LIMIT_FOR_TESTS,
            });
        }
        match &self.stripe.secret_key {
            None => refusals.push(ProductionRefusal::StripeSecretMissing),
            Some(key) if is_stripe_test_key(key.expose()) => {
                refusals.push(ProductionRefusal::StripeTestKey);
            }
            Some(_) => {}
        }
        if refusals.is_empty() {
            Ok(())
        } else {
            Err(refusals)
        }
    }

    /// One line for the start-up log: every setting, secrets as `set`/`unset`,
    /// database URLs without their password.
    pub fn redacted_summary(&self) -> String {
        let mut summary = self.redacted_summary_base();
        summary.push_str(&format!(" limits=({})", summary_limits(&self.limits)));
        summary
    }

    fn redacted_summary_base(&self) -> String {
        let store = match StoreUrl::parse(self.database_url.as_deref()) {
            Ok(url) => url.describe(),
            Err(_) => format!(
                "unsupported {}",
                redact_url(self.database_url.as_deref().unwrap_or_default())
            ),
        };
        let replica = self
            .database_read_url
            .as_deref()
            .map_or_else(|| "none".to_owned(), redact_url);
        let h = &self.hyperswitch;
        format!(
            "app_env={} listen_addr={} store={} read_replica={} psp_mode={} \
             hyperswitch=(enabled={} base_url={} api_key={} webhook_secret={} profile_id={}) \
             stripe=(base_url={} api_version={} secret_key={}) api_token={} admin_token={} \
             platform_fee_bps={} \
             reconcile=({}) reversal=({}) transfer_retry=({}) webhook_log_retention_days={} \
             projection_coalesce={} idempotency_retention={} read_statement_timeout={} \
             disable_rate_limit_for_tests={}",
            self.app_env,
            self.listen_addr,
            store,
            replica,
            match self.psp_mode {
                PspMode::Real => "real",
                PspMode::Fake => "fake",
            },
            h.enabled,
            h.base_url,
            presence(&h.api_key),
            presence(&h.webhook_secret),
            h.profile_id.as_deref().unwrap_or(UNSET_SHOWN),
            self.stripe.base_url,
            self.stripe.api_version,
            presence(&self.stripe.secret_key),
            presence(&self.api_token),
            presence(&self.admin_token),
            self.platform_fee_bps,
            summary_reconcile(&self.reconcile),
            summary_worker(&self.reversal),
            summary_worker(&self.transfer_retry),
            self.webhook_log_retention_days,
            format_duration(self.projection_coalesce),
            format_duration(self.idempotency_retention),
            format_duration(self.read_statement_timeout),
            self.disable_rate_limit_for_tests,
        )
    }

    fn store_is_postgres(&self) -> bool {
        matches!(
            StoreUrl::parse(self.database_url.as_deref()),
            Ok(StoreUrl::Postgres(_))
        )
    }

    fn staging_advisory(&self, refusal: ProductionRefusal) -> ConfigWarning {
        let value_shown = match refusal {
            ProductionRefusal::SqliteStore => self
                .database_url
                .as_deref()
                .map_or_else(|| UNSET_SHOWN.to_owned(), |url| truncate(&redact_url(url))),
            ProductionRefusal::DatabaseWithoutTls { var } => {
                let url = if var == var::DATABASE_READ_URL {
                    &self.database_read_url
                } else {
                    &self.database_url
                };
                truncate(&redact_url(url.as_deref().unwrap_or_default()))
            }
            ProductionRefusal::HyperswitchSandbox => truncate(&self.hyperswitch.base_url),
            ProductionRefusal::PspUrlNotHttps { var } => truncate(if var == var::STRIPE_BASE_URL {
                &self.stripe.base_url
            } else {
                &self.hyperswitch.base_url
            }),
            ProductionRefusal::PaymentsDisabled => "false".to_owned(),
            ProductionRefusal::PspFake | ProductionRefusal::BypassFlag { .. } => "true".to_owned(),
            ProductionRefusal::ApiTokenMissing
            | ProductionRefusal::AdminTokenMissing
            | ProductionRefusal::WebhookSecretMissing
            | ProductionRefusal::HyperswitchApiKeyMissing
            | ProductionRefusal::StripeSecretMissing => UNSET_SHOWN.to_owned(),
            ProductionRefusal::AdminTokenSameAsApiToken
            | ProductionRefusal::ApiTokenTooShort
            | ProductionRefusal::AdminTokenTooShort
            | ProductionRefusal::StripeTestKey => MASK.to_owned(),
        };
        ConfigWarning {
            var: refusal.var(),
            value_shown,
            default_used: None,
            reason: format!("production would refuse to start: {refusal}"),
        }
    }

    /// A worker turned off by hand is not silent, but it is a safeguard off:
    /// say what stops happening.
    fn disabled_worker_warnings(&self) -> Vec<ConfigWarning> {
        let mut warnings = Vec::new();
        let mut off = |var: &'static str, consequence: &str| {
            warnings.push(ConfigWarning {
                var,
                value_shown: "false".to_owned(),
                default_used: None,
                reason: format!("worker explicitly disabled: {consequence}"),
            });
        };
        if !self.reconcile.enabled {
            off(
                var::RECONCILE_WORKER_ENABLED,
                "orders and refunds whose webhook never arrives stay pending forever",
            );
        }
        if !self.reversal.enabled {
            off(
                var::REVERSAL_WORKER_ENABLED,
                "refunded sellers' Stripe transfers stay reversal_pending and are never reversed",
            );
        }
        if !self.transfer_retry.enabled {
            off(
                var::TRANSFER_RETRY_WORKER_ENABLED,
                "failed seller payouts are never retried",
            );
        }
        warnings
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("app_env", &self.app_env)
            .field(
                "database_url",
                &self.database_url.as_deref().map(redact_url),
            )
            .field(
                "database_read_url",
                &self.database_read_url.as_deref().map(redact_url),
            )
            .field("listen_addr", &self.listen_addr)
            .field("api_token", &self.api_token)
            .field("admin_token", &self.admin_token)
            .field("hyperswitch", &self.hyperswitch)
            .field("stripe", &self.stripe)
            .field("platform_fee_bps", &self.platform_fee_bps)
            .field("reconcile", &self.reconcile)
            .field("reversal", &self.reversal)
            .field("transfer_retry", &self.transfer_retry)
            .field(
                "webhook_log_retention_days",
                &self.webhook_log_retention_days,
            )
            .field("psp_mode", &self.psp_mode)
            .field("psp_timeout", &self.psp_timeout)
            .field("projection_coalesce", &self.projection_coalesce)
            .field("idempotency_retention", &self.idempotency_retention)
            .field("read_statement_timeout", &self.read_statement_timeout)
            .field(
                "disable_rate_limit_for_tests",
                &self.disable_rate_limit_for_tests,
            )
            .field("limits", &self.limits)
            .finish()
    }
}

/// What a zero duration means for a variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Zero {
    /// A mistake (an interval of zero would spin): the default, with a WARN.
    Invalid,
    /// The feature off.
    Off,
}

struct RetryWorkerVars {
    enabled: &'static str,
    max_retries: &'static str,
    check_interval: &'static str,
    backoff_base: &'static str,
    backoff_max: &'static str,
}

const REVERSAL_VARS: RetryWorkerVars = RetryWorkerVars {
    enabled: var::REVERSAL_WORKER_ENABLED,
    max_retries: var::REVERSAL_MAX_RETRIES,
    check_interval: var::REVERSAL_CHECK_INTERVAL,
    backoff_base: var::REVERSAL_BACKOFF_BASE,
    backoff_max: var::REVERSAL_BACKOFF_MAX,
};

const TRANSFER_RETRY_VARS: RetryWorkerVars = RetryWorkerVars {
    enabled: var::TRANSFER_RETRY_WORKER_ENABLED,
    max_retries: var::TRANSFER_RETRY_MAX_RETRIES,
    check_interval: var::TRANSFER_RETRY_CHECK_INTERVAL,
    backoff_base: var::TRANSFER_RETRY_BACKOFF_BASE,
    backoff_max: var::TRANSFER_RETRY_BACKOFF_MAX,
};

const SECRET_VARS: [&str; 5] = [
    var::API_TOKEN,
    var::ADMIN_TOKEN,
    var::HYPERSWITCH_API_KEY,
    var::HYPERSWITCH_WEBHOOK_SECRET,
    var::STRIPE_SECRET_KEY,
];

fn is_secret_var(name: &str) -> bool {
    SECRET_VARS.contains(&name)
}

/// Reads variables and collects a warning for every value not used as given.
struct Reader<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    warnings: Vec<ConfigWarning>,
}

impl Reader<'_> {
    /// The value, trimmed; empty or whitespace-only counts as unset.
    fn raw(&self, name: &str) -> Option<String> {
        (self.env)(name)
            .map(|value| value.trim().to_owned())
            .filter(|value| !value.is_empty())
    }

    fn fallback(&mut self, var: &'static str, value: &str, default: String, reason: String) {
        self.warnings.push(ConfigWarning {
            var,
            value_shown: if is_secret_var(var) {
                MASK.to_owned()
            } else {
                truncate(value)
            },
            default_used: Some(default),
            reason,
        });
    }

    fn secret(&mut self, name: &'static str) -> Option<Secret> {
        let untrimmed = (self.env)(name)?;
        let value = untrimmed.trim();
        if value.is_empty() {
            return None;
        }
        if value.len() != untrimmed.len() {
            // Typically a newline from `echo … > file`; kept trimmed, but said
            // out loud because a signature mismatch would otherwise be a mystery.
            self.warnings.push(ConfigWarning {
                var: name,
                value_shown: MASK.to_owned(),
                default_used: None,
                reason: "leading or trailing whitespace was trimmed".to_owned(),
            });
        }
        Some(Secret::new(value))
    }

    fn bool(&mut self, name: &'static str, default: bool) -> bool {
        self.optional_bool(name, &default.to_string())
            .unwrap_or(default)
    }

    /// `None` when unset or unreadable (the latter warned, with `default_shown`).
    fn optional_bool(&mut self, name: &'static str, default_shown: &str) -> Option<bool> {
        let value = self.raw(name)?;
        match parse_bool(&value) {
            Some(parsed) => Some(parsed),
            None => {
                self.fallback(
                    name,
                    &value,
                    default_shown.to_owned(),
                    "not a boolean (use true/false, 1/0 or yes/no)".to_owned(),
                );
                None
            }
        }
    }

    fn u32(&mut self, name: &'static str, default: u32, max: u32) -> u32 {
        let Some(value) = self.raw(name) else {
            return default;
        };
        let reason = match value.parse::<i64>() {
            Err(_) => "not an integer".to_owned(),
            Ok(n) if n < 0 => "negative".to_owned(),
            Ok(0) => "zero".to_owned(),
            Ok(n) => match u32::try_from(n) {
                Ok(n) if n <= max => return n,
                _ => format!("above the maximum of {max}"),
            },
        };
        self.fallback(name, &value, default.to_string(), reason);
        default
    }

    fn duration(&mut self, name: &'static str, default: Duration) -> Duration {
        self.duration_up_to(name, default, DURATION_MAX, Zero::Invalid)
    }

    fn duration_up_to(
        &mut self,
        name: &'static str,
        default: Duration,
        max: Duration,
        zero: Zero,
    ) -> Duration {
        let Some(value) = self.raw(name) else {
            return default;
        };
        let reason = match parse_go_duration(&value) {
            Err(err) => err.to_string(),
            Ok(d) if d.is_zero() && zero == Zero::Off => return d,
            Ok(d) if d.is_zero() => "zero".to_owned(),
            Ok(d) if d > max => {
                format!("above the maximum of {}", format_duration(max))
            }
            Ok(d) => return d,
        };
        self.fallback(name, &value, format_duration(default), reason);
        default
    }

    /// An `http://` or `https://` URL with a host, without a trailing slash.
    fn http_url(&mut self, name: &'static str, default: &str) -> String {
        let Some(value) = self.raw(name) else {
            return default.to_owned();
        };
        let host_and_path = value
            .strip_prefix("https://")
            .or_else(|| value.strip_prefix("http://"));
        match host_and_path {
            Some(rest)
                if !rest.is_empty()
                    && !rest.starts_with('/')
                    && !rest.contains(char::is_whitespace) =>
            {
                value.trim_end_matches('/').to_owned()
            }
            _ => {
                self.fallback(
                    name,
                    &value,
                    default.to_owned(),
                    "not an http:// or https:// URL with a host".to_owned(),
                );
                default.to_owned()
            }
        }
    }

    /// `HYPERSWITCH_PROFILE_ID`: unset, or a valid Hyperswitch id.
    fn hyperswitch_profile_id(&mut self) -> Result<Option<String>, ConfigError> {
        let name = var::HYPERSWITCH_PROFILE_ID;
        let Some(value) = self.raw(name) else {
            return Ok(None);
        };
        if ledger_core::ids::is_hyperswitch_id(&value) {
            return Ok(Some(value));
        }
        Err(ConfigError::InvalidValue {
            var: name,
            value: truncate(&value),
            reason: format!(
                "a Hyperswitch profile id is 1 to {} characters of A-Z, a-z, 0-9, '_' and '-' \
                 (e.g. pro_…)",
                ledger_core::ids::HYPERSWITCH_ID_MAX
            ),
        })
    }

    /// `STRIPE_API_VERSION`: the default when unset, otherwise something
    /// that can be sent as a header (printable ASCII, no whitespace).
    fn stripe_api_version(&mut self) -> Result<String, ConfigError> {
        let name = var::STRIPE_API_VERSION;
        let Some(value) = self.raw(name) else {
            return Ok(DEFAULT_STRIPE_API_VERSION.to_owned());
        };
        match ledger_psp::stripe::check_api_version(&value) {
            Ok(()) => Ok(value),
            Err(reason) => Err(ConfigError::InvalidValue {
                var: name,
                value: truncate(&value),
                reason: format!(
                    "{reason}; a Stripe API version is up to {} printable ASCII characters \
                     without whitespace (e.g. {DEFAULT_STRIPE_API_VERSION})",
                    ledger_psp::stripe::API_VERSION_MAX
                ),
            }),
        }
    }

    /// Port 0 is accepted: it is "any free port", which tests rely on.
    fn listen_addr(&mut self) -> SocketAddr {
        let Some(value) = self.raw(var::LISTEN_ADDR) else {
            return DEFAULT_LISTEN_ADDR;
        };
        match value.parse::<SocketAddr>() {
            Ok(addr) => addr,
            Err(_) => {
                self.fallback(
                    var::LISTEN_ADDR,
                    &value,
                    DEFAULT_LISTEN_ADDR.to_string(),
                    "not an ip:port socket address".to_owned(),
                );
                DEFAULT_LISTEN_ADDR
            }
        }
    }

    fn rate_limit(
        &mut self,
        per_second: &'static str,
        burst: &'static str,
        default: RateLimit,
    ) -> RateLimit {
        RateLimit {
            per_second: self.u32(per_second, default.per_second, RATE_LIMIT_MAX),
            burst: self.u32(burst, default.burst, RATE_LIMIT_MAX),
        }
    }

    fn limits(&mut self) -> LimitsConfig {
        let d = LimitsConfig::default();
        LimitsConfig {
            per_token: self.rate_limit(
                var::RATE_LIMIT_PER_TOKEN,
                var::RATE_LIMIT_PER_TOKEN_BURST,
                d.per_token,
            ),
            webhook_per_ip: self.rate_limit(
                var::RATE_LIMIT_WEBHOOK_PER_IP,
                var::RATE_LIMIT_WEBHOOK_PER_IP_BURST,
                d.webhook_per_ip,
            ),
            max_in_flight: self.u32(var::MAX_IN_FLIGHT_REQUESTS, d.max_in_flight, RATE_LIMIT_MAX),
            max_connections: self.u32(var::MAX_CONNECTIONS, d.max_connections, MAX_CONNECTIONS_MAX),
            header_read_timeout: self.duration_up_to(
                var::HEADER_READ_TIMEOUT,
                d.header_read_timeout,
                HEADER_READ_TIMEOUT_MAX,
                Zero::Invalid,
            ),
            idle_timeout: self.duration_up_to(
                var::HTTP_IDLE_TIMEOUT,
                d.idle_timeout,
                HTTP_IDLE_TIMEOUT_MAX,
                Zero::Invalid,
            ),
            shutdown_grace: self.duration_up_to(
                var::SHUTDOWN_GRACE,
                d.shutdown_grace,
                SHUTDOWN_GRACE_MAX,
                Zero::Invalid,
            ),
        }
    }

    fn retry_worker(&mut self, vars: &RetryWorkerVars) -> RetryWorkerConfig {
        RetryWorkerConfig {
            enabled: self.bool(vars.enabled, true),
            max_retries: self.u32(
                vars.max_retries,
                DEFAULT_WORKER_MAX_RETRIES,
                WORKER_MAX_RETRIES_MAX,
            ),
            check_interval: self.duration(vars.check_interval, DEFAULT_WORKER_CHECK_INTERVAL),
            backoff_base: self.duration(vars.backoff_base, DEFAULT_WORKER_BACKOFF_BASE),
            backoff_max: self.duration(vars.backoff_max, DEFAULT_WORKER_BACKOFF_MAX),
        }
    }
}

// ---------------------------------------------------------------------------
// Parsing and formatting helpers
// ---------------------------------------------------------------------------

/// `true/false`, `1/0`, `yes/no`, case-insensitive.
pub fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("negative")]
    Negative,
    #[error("not a duration (use e.g. 90s, 30m, 1h30m, 500ms): {0}")]
    Invalid(&'static str),
    #[error("too large")]
    Overflow,
}

/// Digits kept per number; more cannot fit a `u64` of nanoseconds anyway.
const DURATION_DIGITS_MAX: usize = 20;

/// Parses Go's `time.ParseDuration` syntax: an optional sign, then one or
/// more `<number><unit>` with units `ns`, `us`/`µs`, `ms`, `s`, `m`, `h` and
/// optional decimal fractions (`1.5h`); a bare `0` is zero. Integer maths only.
pub fn parse_go_duration(input: &str) -> Result<Duration, DurationError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let (negative, mut rest) = match s.as_bytes()[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(DurationError::Invalid("no number"));
    }
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (int_part, after_int) = rest.split_at(int_len);
        rest = after_int;
        let mut frac_part = "";
        if let Some(after_dot) = rest.strip_prefix('.') {
            let frac_len = after_dot
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(after_dot.len());
            (frac_part, rest) = after_dot.split_at(frac_len);
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(DurationError::Invalid("expected a number"));
        }
        if int_part.len() > DURATION_DIGITS_MAX || frac_part.len() > DURATION_DIGITS_MAX {
            return Err(DurationError::Overflow);
        }
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let (unit, after_unit) = rest.split_at(unit_len);
        rest = after_unit;
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            "" => return Err(DurationError::Invalid("missing unit")),
            _ => return Err(DurationError::Invalid("unknown unit")),
        };
        let int_value: u128 = if int_part.is_empty() {
            0
        } else {
            int_part
                .parse()
                .map_err(|_| DurationError::Invalid("bad number"))?
        };
        let mut nanos = int_value
            .checked_mul(unit_nanos)
            .ok_or(DurationError::Overflow)?;
        if !frac_part.is_empty() {
            let frac_value: u128 = frac_part
                .parse()
                .map_err(|_| DurationError::Invalid("bad fraction"))?;
            let scale =
                10u128.pow(u32::try_from(frac_part.len()).map_err(|_| DurationError::Overflow)?);
            nanos = nanos
                .checked_add(
                    frac_value
                        .checked_mul(unit_nanos)
                        .ok_or(DurationError::Overflow)?
                        / scale,
                )
                .ok_or(DurationError::Overflow)?;
        }
        total_nanos = total_nanos
            .checked_add(nanos)
            .ok_or(DurationError::Overflow)?;
    }
    if negative && total_nanos > 0 {
        return Err(DurationError::Negative);
    }
    let nanos = u64::try_from(total_nanos).map_err(|_| DurationError::Overflow)?;
    Ok(Duration::from_nanos(nanos))
}

/// Go-style short form that [`parse_go_duration`] reads back: `1h30m`, `5m`,
/// `1m30s`, `500ms`, `0s`.
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_owned();
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3_600, secs % 3_600 / 60, secs % 60);
    let nanos = d.subsec_nanos();
    let mut out = String::new();
    for (value, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if value > 0 {
            out.push_str(&format!("{value}{unit}"));
        }
    }
    if nanos > 0 {
        if nanos.is_multiple_of(1_000_000) {
            out.push_str(&format!("{}ms", nanos / 1_000_000));
        } else {
            out.push_str(&format!("{nanos}ns"));
        }
    }
    out
}

fn truncate(value: &str) -> String {
    if value.chars().count() <= VALUE_SHOWN_CHARS_MAX {
        return value.to_owned();
    }
    let mut shown: String = value.chars().take(VALUE_SHOWN_CHARS_MAX).collect();
    shown.push('…');
    shown
}

fn presence(secret: &Option<Secret>) -> &'static str {
    if secret.is_some() { "set" } else { "unset" }
}

/// Whether the URL's parsed host is one of [`PSP_SANDBOX_HOSTS`]. A host
/// that merely contains a sandbox name (`sandbox.hyperswitch.io.example`,
/// a self-hosted `hyperswitch.example.com`) is not one.
fn is_psp_sandbox(base_url: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(base_url) else {
        return false;
    };
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    PSP_SANDBOX_HOSTS
        .iter()
        .any(|sandbox| host.eq_ignore_ascii_case(sandbox))
}

fn is_https(url: &str) -> bool {
    reqwest::Url::parse(url).is_ok_and(|u| u.scheme() == "https" && u.host_str().is_some())
}

fn is_short_token(token: &Secret) -> bool {
    token.expose().chars().count() < TOKEN_CHARS_MIN
}

/// Whether connecting to this `postgres://` URL may send credentials and
/// data in plaintext over a network: a host beyond loopback (or one that
/// cannot be told) and an `sslmode` that does not demand TLS (`prefer`, the
/// default, falls back to plaintext). Unix sockets and loopback never leave
/// the machine. Other URLs (SQLite) are not Postgres's business.
fn postgres_url_sends_plaintext(url: &str) -> bool {
    if !matches!(StoreUrl::parse(Some(url)), Ok(StoreUrl::Postgres(_))) {
        return false;
    }
    let Ok(parsed) = reqwest::Url::parse(url.trim()) else {
        return true;
    };
    let mut host = parsed.host_str().map(str::to_owned);
    let mut sslmode = None;
    // Later parameters override earlier ones, as sqlx applies them in order.
    for (key, value) in parsed.query_pairs() {
        match &*key {
            "sslmode" | "ssl-mode" => sslmode = Some(value.to_ascii_lowercase()),
            "host" | "hostaddr" => host = Some(value.into_owned()),
            _ => {}
        }
    }
    let demands_tls = matches!(
        sslmode.as_deref(),
        Some("require" | "verify-ca" | "verify-full")
    );
    !demands_tls && !host.as_deref().is_some_and(is_local_host)
}

/// Loopback names and addresses, and Unix socket directories.
fn is_local_host(host: &str) -> bool {
    if host.starts_with('/') || host.starts_with("%2F") || host.starts_with("%2f") {
        return true;
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

fn is_stripe_test_key(key: &str) -> bool {
    key.starts_with("sk_test_") || key.starts_with("rk_test_")
}

fn summary_reconcile(c: &ReconcileConfig) -> String {
    format!(
        "enabled={} interval={} order_stuck_after={} refund_stuck_after={} \
         refund_orphan_after={} batch_limit={}",
        c.enabled,
        format_duration(c.interval),
        format_duration(c.order_stuck_after),
        format_duration(c.refund_stuck_after),
        format_duration(c.refund_orphan_after),
        c.batch_limit,
    )
}

fn summary_limits(c: &LimitsConfig) -> String {
    format!(
        "per_token={}/s burst={} webhook_per_ip={}/s burst={} max_in_flight={} \
         max_connections={} header_read_timeout={} idle_timeout={} shutdown_grace={}",
        c.per_token.per_second,
        c.per_token.burst,
        c.webhook_per_ip.per_second,
        c.webhook_per_ip.burst,
        c.max_in_flight,
        c.max_connections,
        format_duration(c.header_read_timeout),
        format_duration(c.idle_timeout),
        format_duration(c.shutdown_grace),
    )
}

fn summary_worker(c: &RetryWorkerConfig) -> String {
    format!(
        "enabled={} max_retries={} check_interval={} backoff_base={} backoff_max={}",
        c.enabled,
        c.max_retries,
        format_duration(c.check_interval),
        format_duration(c.backoff_base),
        format_duration(c.backoff_max),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    // Distinctive secret values: none may ever appear in output.
    const API_TOKEN: &str = "apitok-SENTINEL-a1b2c3d4e5f6a7b8c9d0";
    const ADMIN_TOKEN: &str = "admtok-SENTINEL-f0e9d8c7b6a5f4e3d2c1";
    const HS_API_KEY: &str = "snd-hskey-SENTINEL-0011223344";
    const HS_WEBHOOK_SECRET: &str = "whsec-SENTINEL-5566778899";
    const STRIPE_KEY: &str = "sk_live_SENTINEL-aabbccddeeff";
    const DB_PASSWORD: &str = "dbpass-SENTINEL-778899";
    const ALL_SECRETS: [&str; 6] = [
        API_TOKEN,
        ADMIN_TOKEN,
        HS_API_KEY,
        HS_WEBHOOK_SECRET,
        STRIPE_KEY,
        DB_PASSWORD,
    ];

    fn load(pairs: &[(&str, &str)]) -> Result<(Config, Vec<ConfigWarning>), ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_env(&move |name| map.get(name).cloned())
    }

    fn load_ok(pairs: &[(&str, &str)]) -> (Config, Vec<ConfigWarning>) {
        match load(pairs) {
            Ok(loaded) => loaded,
            Err(e) => panic!("expected a config, got: {e}"),
        }
    }

    fn production_env() -> Vec<(&'static str, String)> {
        vec![
            (var::APP_ENV, "production".to_owned()),
            (
                var::DATABASE_URL,
                format!(
                    "postgres://ledger:{DB_PASSWORD}@db.internal:5432/ledger\
                     ?sslmode=verify-full&sslrootcert=/etc/ledger/db-ca.pem"
                ),
            ),
            (var::API_TOKEN, API_TOKEN.to_owned()),
            (var::ADMIN_TOKEN, ADMIN_TOKEN.to_owned()),
            (var::HYPERSWITCH_ENABLED, "true".to_owned()),
            (
                var::HYPERSWITCH_BASE_URL,
                "https://api.hyperswitch.io".to_owned(),
            ),
            (var::HYPERSWITCH_API_KEY, HS_API_KEY.to_owned()),
            (
                var::HYPERSWITCH_WEBHOOK_SECRET,
                HS_WEBHOOK_SECRET.to_owned(),
            ),
            (var::STRIPE_SECRET_KEY, STRIPE_KEY.to_owned()),
        ]
    }

    /// `production_env()` with `var` removed (`None`) or replaced.
    fn production_with(var: &'static str, value: Option<&str>) -> Vec<(&'static str, String)> {
        let mut env: Vec<_> = production_env()
            .into_iter()
            .filter(|(k, _)| *k != var)
            .collect();
        if let Some(value) = value {
            env.push((var, value.to_owned()));
        }
        env
    }

    fn load_owned(
        env: &[(&'static str, String)],
    ) -> Result<(Config, Vec<ConfigWarning>), ConfigError> {
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        load(&pairs)
    }

    fn refusals_of(env: &[(&'static str, String)]) -> Vec<ProductionRefusal> {
        match load_owned(env) {
            Err(ConfigError::Production { refusals, .. }) => refusals,
            Err(other) => panic!("expected a production refusal, got {other}"),
            Ok((config, _)) => panic!("expected a production refusal, got {config:?}"),
        }
    }

    fn assert_no_secret(text: &str) {
        for secret in ALL_SECRETS {
            assert!(
                !text.contains(secret),
                "secret {secret} leaked into: {text}"
            );
        }
    }

    // ---- defaults -------------------------------------------------------

    #[test]
    fn empty_env_gives_the_seed_defaults_and_no_warnings() {
        let (c, warnings) = load_ok(&[]);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(c.app_env, AppEnv::Development);
        assert_eq!(c.database_url, None);
        assert_eq!(c.database_read_url, None);
        assert_eq!(c.listen_addr.to_string(), "127.0.0.1:8080");
        assert!(c.api_token.is_none() && c.admin_token.is_none());
        assert!(c.hyperswitch.enabled);
        assert_eq!(c.hyperswitch.base_url, "https://sandbox.hyperswitch.io");
        assert!(c.hyperswitch.api_key.is_none() && c.hyperswitch.webhook_secret.is_none());
        assert_eq!(c.stripe.base_url, "https://api.stripe.com");
        assert!(c.stripe.secret_key.is_none());
        assert_eq!(c.hyperswitch.profile_id, None);
        assert_eq!(c.stripe.api_version, "2026-09-30.endive");
        assert_eq!(c.stripe.api_version, DEFAULT_STRIPE_API_VERSION);
        assert_eq!(c.platform_fee_bps, 1_000);
        assert_eq!(
            c.reconcile,
            ReconcileConfig {
                enabled: true,
                interval: Duration::from_secs(3_600),
                order_stuck_after: Duration::from_secs(1_800),
                refund_stuck_after: Duration::from_secs(1_800),
                refund_orphan_after: Duration::from_secs(300),
                batch_limit: 50,
            }
        );
        let worker = RetryWorkerConfig {
            enabled: true,
            max_retries: 5,
            check_interval: Duration::from_secs(60),
            backoff_base: Duration::from_secs(60),
            backoff_max: Duration::from_secs(3_600),
        };
        assert_eq!(c.reversal, worker);
        assert_eq!(c.transfer_retry, worker);
        assert_eq!(c.webhook_log_retention_days, 90);
        assert_eq!(c.projection_coalesce, Duration::from_millis(250));
        assert_eq!(c.idempotency_retention, Duration::from_secs(7 * 86_400));
        assert_eq!(c.read_statement_timeout, Duration::from_secs(5));
        assert_eq!(c.psp_mode, PspMode::Fake);
        assert!(!c.disable_rate_limit_for_tests);
    }

    #[test]
    fn every_setting_is_read_from_its_seed_variable() {
        let (c, warnings) = load_ok(&[
            (var::DATABASE_URL, "postgres://db/ledger"),
            (var::DATABASE_READ_URL, "postgres://replica/ledger"),
            (var::LISTEN_ADDR, "0.0.0.0:9000"),
            (var::STRIPE_BASE_URL, "http://127.0.0.1:12111/"),
            (var::HYPERSWITCH_BASE_URL, "http://127.0.0.1:12112"),
            (var::HYPERSWITCH_PROFILE_ID, "pro_2Xyz_biz-1"),
            (var::STRIPE_API_VERSION, "2024-06-20"),
            (var::PLATFORM_FEE_BPS, "250"),
            (var::RECONCILE_WORKER_ENABLED, "no"),
            (var::RECONCILE_INTERVAL, "5m"),
            (var::RECONCILE_ORDER_STUCK_AFTER, "45m"),
            (var::RECONCILE_REFUND_STUCK_AFTER, "1h"),
            (var::RECONCILE_REFUND_ORPHAN_AFTER, "90s"),
            (var::RECONCILE_BATCH_LIMIT, "20"),
            (var::REVERSAL_WORKER_ENABLED, "0"),
            (var::REVERSAL_MAX_RETRIES, "7"),
            (var::REVERSAL_CHECK_INTERVAL, "30s"),
            (var::REVERSAL_BACKOFF_BASE, "1s"),
            (var::REVERSAL_BACKOFF_MAX, "10s"),
            (var::TRANSFER_RETRY_WORKER_ENABLED, "false"),
            (var::TRANSFER_RETRY_MAX_RETRIES, "3"),
            (var::TRANSFER_RETRY_CHECK_INTERVAL, "2m"),
            (var::TRANSFER_RETRY_BACKOFF_BASE, "500ms"),
            (var::TRANSFER_RETRY_BACKOFF_MAX, "1h30m"),
            (var::WEBHOOK_LOG_RETENTION_DAYS, "30"),
            (var::PROJECTION_COALESCE, "40ms"),
            (var::IDEMPOTENCY_RETENTION, "48h"),
            (var::READ_STATEMENT_TIMEOUT, "2s"),
            (var::DISABLE_RATE_LIMIT_FOR_TESTS, "yes"),
        ]);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(c.database_url.as_deref(), Some("postgres://db/ledger"));
        assert_eq!(
            c.database_read_url.as_deref(),
            Some("postgres://replica/ledger")
        );
        assert_eq!(c.listen_addr.to_string(), "0.0.0.0:9000");
        assert_eq!(c.stripe.base_url, "http://127.0.0.1:12111");
        assert_eq!(c.hyperswitch.base_url, "http://127.0.0.1:12112");
        assert_eq!(c.hyperswitch.profile_id.as_deref(), Some("pro_2Xyz_biz-1"));
        assert_eq!(c.stripe.api_version, "2024-06-20");
        assert_eq!(c.platform_fee_bps, 250);
        assert_eq!(
            c.reconcile,
            ReconcileConfig {
                enabled: false,
                interval: Duration::from_secs(300),
                order_stuck_after: Duration::from_secs(2_700),
                refund_stuck_after: Duration::from_secs(3_600),
                refund_orphan_after: Duration::from_secs(90),
                batch_limit: 20,
            }
        );
        assert_eq!(
            c.reversal,
            RetryWorkerConfig {
                enabled: false,
                max_retries: 7,
                check_interval: Duration::from_secs(30),
                backoff_base: Duration::from_secs(1),
                backoff_max: Duration::from_secs(10),
            }
        );
        assert_eq!(
            c.transfer_retry,
            RetryWorkerConfig {
                enabled: false,
                max_retries: 3,
                check_interval: Duration::from_secs(120),
                backoff_base: Duration::from_millis(500),
                backoff_max: Duration::from_secs(5_400),
            }
        );
        assert_eq!(c.webhook_log_retention_days, 30);
        assert_eq!(c.projection_coalesce, Duration::from_millis(40));
        assert_eq!(c.idempotency_retention, Duration::from_secs(48 * 3_600));
        assert_eq!(c.read_statement_timeout, Duration::from_secs(2));
        assert!(c.disable_rate_limit_for_tests);
    }

    #[test]
    fn empty_or_blank_values_count_as_unset_without_warning() {
        let (c, warnings) = load_ok(&[
            (var::APP_ENV, ""),
            (var::RECONCILE_INTERVAL, "   "),
            (var::PLATFORM_FEE_BPS, ""),
            (var::API_TOKEN, "  "),
            (var::DATABASE_URL, ""),
            (var::HYPERSWITCH_PROFILE_ID, " "),
            (var::STRIPE_API_VERSION, ""),
        ]);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(c.app_env, AppEnv::Development);
        assert_eq!(c.reconcile.interval, DEFAULT_RECONCILE_INTERVAL);
        assert_eq!(c.platform_fee_bps, DEFAULT_PLATFORM_FEE_BPS);
        assert!(c.api_token.is_none());
        assert!(c.database_url.is_none());
        assert_eq!(c.hyperswitch.profile_id, None);
        assert_eq!(c.stripe.api_version, DEFAULT_STRIPE_API_VERSION);
    }

    // ---- HYPERSWITCH_PROFILE_ID and STRIPE_API_VERSION ---------------------

    fn invalid_value(pairs: &[(&str, &str)]) -> (&'static str, String) {
        match load(pairs) {
            Err(err @ ConfigError::InvalidValue { var, .. }) => (var, err.to_string()),
            Err(other) => panic!("expected InvalidValue, got {other}"),
            Ok((config, _)) => panic!("expected InvalidValue, got {config:?}"),
        }
    }

    #[test]
    fn hyperswitch_profile_id_is_kept_trimmed_when_valid() {
        let longest = "p".repeat(64);
        for (value, expected) in [
            ("pro_abc", "pro_abc"),
            (" pro_2Xyz-9 \n", "pro_2Xyz-9"),
            (longest.as_str(), longest.as_str()),
        ] {
            let (c, warnings) = load_ok(&[(var::HYPERSWITCH_PROFILE_ID, value)]);
            assert!(warnings.is_empty(), "{warnings:?}");
            assert_eq!(c.hyperswitch.profile_id.as_deref(), Some(expected));
        }
    }

    #[test]
    fn a_malformed_hyperswitch_profile_id_refuses_to_start_naming_the_variable() {
        let too_long = "p".repeat(65);
        for bad in ["pro abc", "pro.abc", "pro_é", "pro/1", too_long.as_str()] {
            let (var, text) = invalid_value(&[(var::HYPERSWITCH_PROFILE_ID, bad)]);
            assert_eq!(var, var::HYPERSWITCH_PROFILE_ID, "{bad:?}");
            assert!(
                text.starts_with("HYPERSWITCH_PROFILE_ID=") && text.contains("1 to 64"),
                "{text}"
            );
        }
        // In every environment, not only production.
        let mut env = production_env();
        env.push((var::HYPERSWITCH_PROFILE_ID, "not valid".to_owned()));
        assert!(matches!(
            load_owned(&env),
            Err(ConfigError::InvalidValue {
                var: var::HYPERSWITCH_PROFILE_ID,
                ..
            })
        ));
    }

    #[test]
    fn a_malformed_stripe_api_version_refuses_to_start_naming_the_variable() {
        let too_long = "1".repeat(65);
        for bad in [
            "2024-06-20 beta",
            "2024\t06",
            "2024-06-20é",
            too_long.as_str(),
        ] {
            let (var, text) = invalid_value(&[(var::STRIPE_API_VERSION, bad)]);
            assert_eq!(var, var::STRIPE_API_VERSION, "{bad:?}");
            assert!(
                text.starts_with("STRIPE_API_VERSION=") && text.contains("2026-09-30.endive"),
                "{text}"
            );
        }
        let (c, _) = load_ok(&[(var::STRIPE_API_VERSION, " 2025-12-15.clover ")]);
        assert_eq!(c.stripe.api_version, "2025-12-15.clover");
    }

    #[test]
    fn the_summary_shows_the_profile_id_and_the_stripe_api_version() {
        let (c, _) = load_ok(&[]);
        let summary = c.redacted_summary();
        for expected in ["profile_id=(unset)", "api_version=2026-09-30.endive"] {
            assert!(
                summary.contains(expected),
                "{expected} missing from {summary}"
            );
        }
        let (c, _) = load_ok(&[
            (var::HYPERSWITCH_PROFILE_ID, "pro_abc"),
            (var::STRIPE_API_VERSION, "2024-06-20"),
        ]);
        let summary = c.redacted_summary();
        for expected in [
            "webhook_secret=unset profile_id=pro_abc)",
            "stripe=(base_url=https://api.stripe.com api_version=2024-06-20 secret_key=unset)",
        ] {
            assert!(
                summary.contains(expected),
                "{expected} missing from {summary}"
            );
        }
    }

    // ---- APP_ENV ----------------------------------------------------------

    #[test]
    fn app_env_accepts_exact_names_case_insensitively() {
        for (value, expected) in [
            ("development", AppEnv::Development),
            ("Staging", AppEnv::Staging),
            (" STAGING ", AppEnv::Staging),
        ] {
            assert_eq!(load_ok(&[(var::APP_ENV, value)]).0.app_env, expected);
        }
        let prod: Vec<_> = production_env();
        assert_eq!(load_owned(&prod).unwrap().0.app_env, AppEnv::Production);
    }

    #[test]
    fn unknown_app_env_is_an_error_naming_the_allowed_values() {
        for value in ["prod", "dev", "test", "productio"] {
            let err = load(&[(var::APP_ENV, value)]).unwrap_err();
            assert!(matches!(err, ConfigError::InvalidAppEnv { .. }), "{err:?}");
            let text = err.to_string();
            assert!(
                text.contains("development, staging, production") && text.contains(value),
                "{text}"
            );
        }
    }

    // ---- durations --------------------------------------------------------

    #[test]
    fn go_durations_parse() {
        let cases: &[(&str, Duration)] = &[
            ("1h", Duration::from_secs(3_600)),
            ("30m", Duration::from_secs(1_800)),
            ("90s", Duration::from_secs(90)),
            ("1h30m", Duration::from_secs(5_400)),
            ("2h45m30s", Duration::from_secs(9_930)),
            ("500ms", Duration::from_millis(500)),
            ("1.5h", Duration::from_secs(5_400)),
            ("0.25s", Duration::from_millis(250)),
            (".5m", Duration::from_secs(30)),
            ("1s500ms", Duration::from_millis(1_500)),
            ("10us", Duration::from_micros(10)),
            ("10µs", Duration::from_micros(10)),
            ("7ns", Duration::from_nanos(7)),
            ("+5m", Duration::from_secs(300)),
            (" 5m ", Duration::from_secs(300)),
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("-0s", Duration::ZERO),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_go_duration(input), Ok(*expected), "{input}");
        }
    }

    #[test]
    fn bad_go_durations_are_rejected_with_a_reason() {
        let cases: &[(&str, DurationError)] = &[
            ("", DurationError::Empty),
            ("-5m", DurationError::Negative),
            ("-1h30m", DurationError::Negative),
            ("5", DurationError::Invalid("missing unit")),
            ("5d", DurationError::Invalid("unknown unit")),
            ("5 m", DurationError::Invalid("unknown unit")),
            ("abc", DurationError::Invalid("expected a number")),
            ("h", DurationError::Invalid("expected a number")),
            ("1h-5m", DurationError::Invalid("unknown unit")),
            ("-", DurationError::Invalid("no number")),
            (".m", DurationError::Invalid("expected a number")),
            ("99999999999999999999999h", DurationError::Overflow),
            ("9999999999999h", DurationError::Overflow),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_go_duration(input).as_ref(), Err(expected), "{input}");
        }
    }

    #[test]
    fn format_duration_reads_back_through_the_parser() {
        for (d, text) in [
            (Duration::ZERO, "0s"),
            (Duration::from_secs(3_600), "1h"),
            (Duration::from_secs(5_400), "1h30m"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_millis(1_500), "1s500ms"),
            (Duration::from_nanos(1_000_007), "1000007ns"),
        ] {
            assert_eq!(format_duration(d), text);
            assert_eq!(parse_go_duration(text), Ok(d), "{text}");
        }
    }

    type DurationField = fn(&Config) -> Duration;

    const DURATION_FIELDS: [(&str, DurationField, Duration); 11] = [
        (
            var::RECONCILE_INTERVAL,
            |c| c.reconcile.interval,
            DEFAULT_RECONCILE_INTERVAL,
        ),
        (
            var::RECONCILE_ORDER_STUCK_AFTER,
            |c| c.reconcile.order_stuck_after,
            DEFAULT_RECONCILE_ORDER_STUCK_AFTER,
        ),
        (
            var::RECONCILE_REFUND_STUCK_AFTER,
            |c| c.reconcile.refund_stuck_after,
            DEFAULT_RECONCILE_REFUND_STUCK_AFTER,
        ),
        (
            var::RECONCILE_REFUND_ORPHAN_AFTER,
            |c| c.reconcile.refund_orphan_after,
            DEFAULT_RECONCILE_REFUND_ORPHAN_AFTER,
        ),
        (
            var::REVERSAL_CHECK_INTERVAL,
            |c| c.reversal.check_interval,
            DEFAULT_WORKER_CHECK_INTERVAL,
        ),
        (
            var::REVERSAL_BACKOFF_BASE,
            |c| c.reversal.backoff_base,
            DEFAULT_WORKER_BACKOFF_BASE,
        ),
        (
            var::REVERSAL_BACKOFF_MAX,
            |c| c.reversal.backoff_max,
            DEFAULT_WORKER_BACKOFF_MAX,
        ),
        (
            var::TRANSFER_RETRY_CHECK_INTERVAL,
            |c| c.transfer_retry.check_interval,
            DEFAULT_WORKER_CHECK_INTERVAL,
        ),
        (
            var::TRANSFER_RETRY_BACKOFF_BASE,
            |c| c.transfer_retry.backoff_base,
            DEFAULT_WORKER_BACKOFF_BASE,
        ),
        (
            var::TRANSFER_RETRY_BACKOFF_MAX,
            |c| c.transfer_retry.backoff_max,
            DEFAULT_WORKER_BACKOFF_MAX,
        ),
        (
            var::READ_STATEMENT_TIMEOUT,
            |c| c.read_statement_timeout,
            DEFAULT_READ_STATEMENT_TIMEOUT,
        ),
    ];

    #[test]
    fn idempotency_retention_goes_up_to_ninety_days_and_never_to_zero() {
        let (c, warnings) = load_ok(&[(var::IDEMPOTENCY_RETENTION, "2160h")]);
        assert_eq!(c.idempotency_retention, IDEMPOTENCY_RETENTION_MAX);
        assert!(warnings.is_empty(), "{warnings:?}");
        let (c, warnings) = load_ok(&[(var::IDEMPOTENCY_RETENTION, "30m")]);
        assert_eq!(c.idempotency_retention, Duration::from_secs(1_800));
        assert!(warnings.is_empty(), "{warnings:?}");
        for (bad, reason) in [
            ("2161h", "above the maximum of 2160h"),
            ("0", "zero"),
            ("-1h", "negative"),
            ("7d", "unknown unit"),
        ] {
            let (c, warnings) = load_ok(&[(var::IDEMPOTENCY_RETENTION, bad)]);
            assert_eq!(
                c.idempotency_retention, DEFAULT_IDEMPOTENCY_RETENTION,
                "{bad}"
            );
            assert_eq!(warnings.len(), 1, "{bad}: {warnings:?}");
            assert_eq!(warnings[0].default_used.as_deref(), Some("168h"), "{bad}");
            assert!(
                warnings[0].reason.contains(reason),
                "{bad}: {}",
                warnings[0].reason
            );
        }
    }

    #[test]
    fn projection_coalesce_is_bounded_at_its_own_maximum_and_zero_turns_it_off() {
        let (c, warnings) = load_ok(&[(var::PROJECTION_COALESCE, "10s")]);
        assert_eq!(c.projection_coalesce, PROJECTION_COALESCE_MAX);
        assert!(warnings.is_empty(), "{warnings:?}");
        let (c, warnings) = load_ok(&[(var::PROJECTION_COALESCE, "0")]);
        assert_eq!(c.projection_coalesce, Duration::ZERO, "zero turns it off");
        assert!(warnings.is_empty(), "{warnings:?}");
        for (bad, reason) in [("11s", "above the maximum of 10s"), ("-1s", "negative")] {
            let (c, warnings) = load_ok(&[(var::PROJECTION_COALESCE, bad)]);
            assert_eq!(c.projection_coalesce, DEFAULT_PROJECTION_COALESCE, "{bad}");
            assert_eq!(warnings.len(), 1, "{bad}: {warnings:?}");
            assert!(
                warnings[0].reason.contains(reason),
                "{bad}: {}",
                warnings[0].reason
            );
        }
    }

    #[test]
    fn every_duration_var_takes_a_good_value_and_falls_back_on_a_bad_one() {
        for (name, field, default) in DURATION_FIELDS {
            let (c, warnings) = load_ok(&[(name, "2m30s")]);
            assert_eq!(field(&c), Duration::from_secs(150), "{name}");
            assert!(warnings.is_empty(), "{name}: {warnings:?}");

            for (bad, reason) in [
                ("soon", "not a duration"),
                ("-5m", "negative"),
                ("0s", "zero"),
                ("0", "zero"),
                ("15", "missing unit"),
                ("3d", "unknown unit"),
                ("169h", "above the maximum of 168h"),
            ] {
                let (c, warnings) = load_ok(&[(name, bad)]);
                assert_eq!(field(&c), default, "{name}={bad}");
                assert_eq!(warnings.len(), 1, "{name}={bad}: {warnings:?}");
                let w = &warnings[0];
                assert_eq!(w.var, name);
                assert_eq!(w.value_shown, bad);
                assert_eq!(
                    w.default_used.as_deref(),
                    Some(format_duration(default).as_str())
                );
                assert!(w.reason.contains(reason), "{name}={bad}: {}", w.reason);
            }
        }
    }

    // ---- integers ---------------------------------------------------------

    type IntField = fn(&Config) -> u32;

    const INT_FIELDS: [(&str, IntField, u32, u32); 5] = [
        (
            var::PLATFORM_FEE_BPS,
            |c| c.platform_fee_bps,
            DEFAULT_PLATFORM_FEE_BPS,
            PLATFORM_FEE_BPS_MAX,
        ),
        (
            var::RECONCILE_BATCH_LIMIT,
            |c| c.reconcile.batch_limit,
            DEFAULT_RECONCILE_BATCH_LIMIT,
            RECONCILE_BATCH_LIMIT_MAX,
        ),
        (
            var::REVERSAL_MAX_RETRIES,
            |c| c.reversal.max_retries,
            DEFAULT_WORKER_MAX_RETRIES,
            WORKER_MAX_RETRIES_MAX,
        ),
        (
            var::TRANSFER_RETRY_MAX_RETRIES,
            |c| c.transfer_retry.max_retries,
            DEFAULT_WORKER_MAX_RETRIES,
            WORKER_MAX_RETRIES_MAX,
        ),
        (
            var::WEBHOOK_LOG_RETENTION_DAYS,
            |c| c.webhook_log_retention_days,
            DEFAULT_WEBHOOK_LOG_RETENTION_DAYS,
            WEBHOOK_LOG_RETENTION_DAYS_MAX,
        ),
    ];

    #[test]
    fn every_int_var_takes_values_up_to_its_max_and_falls_back_otherwise() {
        for (name, field, default, max) in INT_FIELDS {
            for good in [1, 3, max] {
                let (c, warnings) = load_ok(&[(name, &good.to_string())]);
                assert_eq!(field(&c), good, "{name}={good}");
                assert!(warnings.is_empty(), "{name}={good}: {warnings:?}");
            }
            let above = (u64::from(max) + 1).to_string();
            for (bad, reason) in [
                ("ten", "not an integer"),
                ("1.5", "not an integer"),
                ("-3", "negative"),
                ("0", "zero"),
                (above.as_str(), "above the maximum"),
                ("99999999999", "above the maximum"),
                ("999999999999999999999999", "not an integer"),
            ] {
                let (c, warnings) = load_ok(&[(name, bad)]);
                assert_eq!(field(&c), default, "{name}={bad}");
                assert_eq!(warnings.len(), 1, "{name}={bad}: {warnings:?}");
                let w = &warnings[0];
                assert_eq!((w.var, w.value_shown.as_str()), (name, bad));
                assert_eq!(w.default_used, Some(default.to_string()));
                assert!(w.reason.contains(reason), "{name}={bad}: {}", w.reason);
            }
        }
    }

    // ---- booleans ---------------------------------------------------------

    type BoolField = fn(&Config) -> bool;

    const BOOL_FIELDS: [(&str, BoolField, bool); 5] = [
        (var::HYPERSWITCH_ENABLED, |c| c.hyperswitch.enabled, true),
        (var::RECONCILE_WORKER_ENABLED, |c| c.reconcile.enabled, true),
        (var::REVERSAL_WORKER_ENABLED, |c| c.reversal.enabled, true),
        (
            var::TRANSFER_RETRY_WORKER_ENABLED,
            |c| c.transfer_retry.enabled,
            true,
        ),
        (
            var::DISABLE_RATE_LIMIT_FOR_TESTS,
            |c| c.disable_rate_limit_for_tests,
            false,
        ),
    ];

    #[test]
    fn every_bool_var_accepts_the_six_spellings_and_falls_back_otherwise() {
        for (name, field, default) in BOOL_FIELDS {
            for (value, expected) in [
                ("true", true),
                ("TRUE", true),
                ("1", true),
                ("yes", true),
                ("false", false),
                ("False", false),
                ("0", false),
                ("no", false),
            ] {
                let (c, warnings) = load_ok(&[(name, value)]);
                assert_eq!(field(&c), expected, "{name}={value}");
                assert!(warnings.is_empty(), "{name}={value}: {warnings:?}");
            }
            for bad in ["flase", "on", "2", "enabled"] {
                let (c, warnings) = load_ok(&[(name, bad)]);
                assert_eq!(field(&c), default, "{name}={bad}");
                assert_eq!(warnings.len(), 1, "{name}={bad}: {warnings:?}");
                assert_eq!(warnings[0].var, name);
                assert_eq!(warnings[0].value_shown, bad);
                assert_eq!(warnings[0].default_used, Some(default.to_string()));
                assert!(warnings[0].reason.contains("not a boolean"));
            }
        }
    }

    #[test]
    fn a_typo_in_hyperswitch_enabled_keeps_payments_on_even_in_production() {
        let env = production_with(var::HYPERSWITCH_ENABLED, Some("flase"));
        let (c, warnings) = load_owned(&env).unwrap();
        assert!(c.hyperswitch.enabled);
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].var, var::HYPERSWITCH_ENABLED);
    }

    // ---- addresses and URLs ----------------------------------------------

    #[test]
    fn listen_addr_parses_accepts_port_zero_and_falls_back_on_garbage() {
        let (c, w) = load_ok(&[(var::LISTEN_ADDR, "[::1]:0")]);
        assert_eq!(c.listen_addr.to_string(), "[::1]:0");
        assert!(w.is_empty());
        for bad in ["localhost:8080", "8080", "127.0.0.1", "1.2.3.4:99999"] {
            let (c, w) = load_ok(&[(var::LISTEN_ADDR, bad)]);
            assert_eq!(c.listen_addr, DEFAULT_LISTEN_ADDR, "{bad}");
            assert_eq!(w.len(), 1, "{bad}");
            assert_eq!(w[0].var, var::LISTEN_ADDR);
            assert_eq!(w[0].default_used.as_deref(), Some("127.0.0.1:8080"));
        }
    }

    #[test]
    fn psp_base_urls_must_be_http_urls_with_a_host() {
        for name in [var::HYPERSWITCH_BASE_URL, var::STRIPE_BASE_URL] {
            for bad in [
                "api.stripe.com",
                "ftp://x",
                "https://",
                "https:///path",
                "http://a b",
            ] {
                let (c, w) = load_ok(&[(name, bad)]);
                let expected = if name == var::STRIPE_BASE_URL {
                    (&c.stripe.base_url, DEFAULT_STRIPE_BASE_URL)
                } else {
                    (&c.hyperswitch.base_url, DEFAULT_HYPERSWITCH_BASE_URL)
                };
                assert_eq!(expected.0, expected.1, "{name}={bad}");
                assert_eq!(w.len(), 1, "{name}={bad}");
                assert_eq!(w[0].var, name);
            }
        }
    }

    #[test]
    fn long_values_are_truncated_in_warnings() {
        let long = "x".repeat(500);
        let (_, w) = load_ok(&[(var::RECONCILE_INTERVAL, &long)]);
        assert_eq!(w[0].value_shown.chars().count(), VALUE_SHOWN_CHARS_MAX + 1);
        assert!(w[0].value_shown.ends_with('…'));
    }

    // ---- psp mode -----------------------------------------------------------

    #[test]
    fn psp_mode_is_fake_only_in_development_without_keys_or_when_forced() {
        let cases: &[(&[(&str, &str)], PspMode)] = &[
            (&[], PspMode::Fake),
            (&[(var::HYPERSWITCH_API_KEY, HS_API_KEY)], PspMode::Real),
            (&[(var::STRIPE_SECRET_KEY, STRIPE_KEY)], PspMode::Real),
            (
                &[
                    (var::PSP_FAKE, "true"),
                    (var::HYPERSWITCH_API_KEY, HS_API_KEY),
                ],
                PspMode::Fake,
            ),
            (&[(var::PSP_FAKE, "false")], PspMode::Real),
            (&[(var::APP_ENV, "staging")], PspMode::Real),
            (
                &[(var::APP_ENV, "staging"), (var::PSP_FAKE, "1")],
                PspMode::Fake,
            ),
        ];
        for (env, expected) in cases {
            assert_eq!(load_ok(env).0.psp_mode, *expected, "{env:?}");
        }
    }

    #[test]
    fn unreadable_psp_fake_warns_and_selects_automatically() {
        let (c, w) = load_ok(&[(var::PSP_FAKE, "sure")]);
        assert_eq!(c.psp_mode, PspMode::Fake);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].default_used.as_deref(), Some("auto"));
        let (c, _) = load_ok(&[
            (var::PSP_FAKE, "sure"),
            (var::STRIPE_SECRET_KEY, STRIPE_KEY),
        ]);
        assert_eq!(c.psp_mode, PspMode::Real);
    }

    // ---- production -----------------------------------------------------------

    #[test]
    fn fully_configured_production_starts_without_warnings() {
        let (c, warnings) = load_owned(&production_env()).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(c.psp_mode, PspMode::Real);
        assert_eq!(c.check_production(), Ok(()));
    }

    /// Each rule, alone, yields exactly its refusal, whose sentence names the
    /// env var that fixes it.
    fn check_rule(env: Vec<(&'static str, String)>, expected: ProductionRefusal, phrase: &str) {
        let refusals = refusals_of(&env);
        assert_eq!(refusals, vec![expected]);
        let sentence = expected.to_string();
        assert!(sentence.contains(expected.var()), "{sentence}");
        assert!(sentence.contains(phrase), "{sentence}");
        assert!(!sentence.contains('\n'), "{sentence}");
    }

    #[test]
    fn production_refuses_payments_disabled() {
        check_rule(
            production_with(var::HYPERSWITCH_ENABLED, Some("false")),
            ProductionRefusal::PaymentsDisabled,
            "effectively giving away products",
        );
    }

    #[test]
    fn production_refuses_a_missing_webhook_secret() {
        check_rule(
            production_with(var::HYPERSWITCH_WEBHOOK_SECRET, None),
            ProductionRefusal::WebhookSecretMissing,
            "reject every Hyperswitch webhook",
        );
    }

    #[test]
    fn production_refuses_a_missing_hyperswitch_api_key() {
        check_rule(
            production_with(var::HYPERSWITCH_API_KEY, None),
            ProductionRefusal::HyperswitchApiKeyMissing,
            "fail to create its payment",
        );
    }

    #[test]
    fn production_refuses_the_hyperswitch_sandbox() {
        check_rule(
            production_with(
                var::HYPERSWITCH_BASE_URL,
                Some("https://sandbox.hyperswitch.io/"),
            ),
            ProductionRefusal::HyperswitchSandbox,
            "sandbox",
        );
        // Unset falls back to the sandbox default, which production refuses.
        check_rule(
            production_with(var::HYPERSWITCH_BASE_URL, None),
            ProductionRefusal::HyperswitchSandbox,
            "sandbox",
        );
    }

    #[test]
    fn production_refuses_a_missing_api_token() {
        check_rule(
            production_with(var::API_TOKEN, None),
            ProductionRefusal::ApiTokenMissing,
            "401",
        );
    }

    #[test]
    fn production_refuses_a_missing_admin_token() {
        check_rule(
            production_with(var::ADMIN_TOKEN, None),
            ProductionRefusal::AdminTokenMissing,
            "admin request would be rejected",
        );
    }

    #[test]
    fn production_refuses_an_admin_token_equal_to_the_api_token() {
        check_rule(
            production_with(var::ADMIN_TOKEN, Some(API_TOKEN)),
            ProductionRefusal::AdminTokenSameAsApiToken,
            "admin rights",
        );
    }

    #[test]
    fn production_refuses_sqlite() {
        for url in [
            None,
            Some("sqlite://./data/ledger.db"),
            Some("./ledger.db"),
            Some("mysql://x/y"),
        ] {
            check_rule(
                production_with(var::DATABASE_URL, url),
                ProductionRefusal::SqliteStore,
                "single-file store with no replication or backup",
            );
        }
        let env = production_with(
            var::DATABASE_URL,
            Some("postgresql://db/ledger?sslmode=require"),
        );
        assert!(load_owned(&env).is_ok());
    }

    #[test]
    fn production_refuses_a_postgres_url_beyond_loopback_without_tls() {
        for var in [var::DATABASE_URL, var::DATABASE_READ_URL] {
            for url in [
                format!("postgres://ledger:{DB_PASSWORD}@db.internal:5432/ledger"),
                format!("postgres://ledger:{DB_PASSWORD}@db.internal/ledger?sslmode=prefer"),
                "postgres://ledger@10.0.0.5/ledger?sslmode=disable".to_owned(),
                "postgres://ledger@db.internal/ledger?sslmode=allow".to_owned(),
                "postgresql://ledger@[2001:db8::1]:5432/ledger".to_owned(),
                // The last sslmode wins, as in sqlx; `host=` overrides the authority.
                "postgres://ledger@db.internal/ledger?sslmode=require&sslmode=prefer".to_owned(),
                "postgres://ledger@localhost/ledger?host=db.internal".to_owned(),
            ] {
                let env = production_with(var, Some(&url));
                check_rule(
                    env.clone(),
                    ProductionRefusal::DatabaseWithoutTls { var },
                    "in plaintext",
                );
                let text = load_owned(&env).unwrap_err().to_string();
                assert!(text.contains("sslmode=verify-full"), "{text}");
                assert_no_secret(&text);
            }
        }
    }

    #[test]
    fn production_accepts_postgres_with_tls_or_on_this_machine() {
        for url in [
            "postgres://ledger@db.internal/ledger?sslmode=require",
            "postgres://ledger@db.internal/ledger?sslmode=verify-ca&sslrootcert=/ca.pem",
            "postgres://ledger@db.internal/ledger?sslmode=VERIFY-FULL",
            "postgres://ledger@db.internal/ledger?ssl-mode=verify-full",
            "postgres://ledger@localhost/ledger",
            "postgres://ledger@LOCALHOST./ledger",
            "postgres://ledger@127.0.0.1:5432/ledger",
            "postgres://ledger@127.8.9.10/ledger?sslmode=prefer",
            "postgres://ledger@[::1]:5432/ledger",
            "postgres://ledger@db.internal/ledger?host=/var/run/postgresql",
            "postgres://ledger@%2Fvar%2Frun%2Fpostgresql/ledger",
        ] {
            let mut env = production_with(var::DATABASE_URL, Some(url));
            env.push((var::DATABASE_READ_URL, url.to_owned()));
            if let Err(e) = load_owned(&env) {
                panic!("{url}: {e}");
            }
        }
    }

    #[test]
    fn staging_advises_on_a_plaintext_postgres_url_without_its_password() {
        let url = format!("postgres://ledger:{DB_PASSWORD}@db.internal/ledger");
        let (_, w) = load_ok(&[(var::APP_ENV, "staging"), (var::DATABASE_URL, &url)]);
        let advice = w
            .iter()
            .find(|w| w.reason.contains("in plaintext"))
            .expect("an advisory on the plaintext database URL");
        assert_eq!(advice.var, var::DATABASE_URL);
        assert_eq!(
            advice.value_shown,
            "postgres://ledger:***@db.internal/ledger"
        );
        assert_no_secret(&advice.to_string());
    }

    #[test]
    fn production_refuses_tokens_shorter_than_32_characters() {
        let short = "s".repeat(TOKEN_CHARS_MIN - 1);
        check_rule(
            production_with(var::API_TOKEN, Some(&short)),
            ProductionRefusal::ApiTokenTooShort,
            "at least 32 random characters",
        );
        check_rule(
            production_with(var::ADMIN_TOKEN, Some(&short)),
            ProductionRefusal::AdminTokenTooShort,
            "at least 32 random characters",
        );
        let text = load_owned(&production_with(var::ADMIN_TOKEN, Some(&short)))
            .unwrap_err()
            .to_string();
        assert!(!text.contains(&short), "{text}");
        // Characters, not bytes: 31 two-byte characters are still too short.
        let short_multibyte = "é".repeat(TOKEN_CHARS_MIN - 1);
        assert_eq!(
            refusals_of(&production_with(var::API_TOKEN, Some(&short_multibyte))),
            vec![ProductionRefusal::ApiTokenTooShort]
        );
        let exact = "e".repeat(TOKEN_CHARS_MIN);
        let mut env = production_with(var::API_TOKEN, Some(&exact));
        env.retain(|(k, _)| *k != var::ADMIN_TOKEN);
        env.push((var::ADMIN_TOKEN, "f".repeat(TOKEN_CHARS_MIN)));
        assert!(load_owned(&env).is_ok());
    }

    #[test]
    fn production_refuses_psp_base_urls_that_are_not_https() {
        for (var, url) in [
            (
                var::HYPERSWITCH_BASE_URL,
                "http://hyperswitch.internal:8080",
            ),
            (var::STRIPE_BASE_URL, "http://api.stripe.com"),
        ] {
            check_rule(
                production_with(var, Some(url)),
                ProductionRefusal::PspUrlNotHttps { var },
                "in plaintext",
            );
        }
        let env = production_with(var::STRIPE_BASE_URL, Some("https://api.stripe.com/"));
        assert!(load_owned(&env).is_ok());
    }

    #[test]
    fn the_sandbox_is_told_by_the_parsed_host_not_by_a_substring() {
        for url in [
            "https://SANDBOX.hyperswitch.io.",
            "https://sandbox.hyperswitch.io:443/api",
            "https://ops@sandbox.hyperswitch.io",
        ] {
            check_rule(
                production_with(var::HYPERSWITCH_BASE_URL, Some(url)),
                ProductionRefusal::HyperswitchSandbox,
                "sandbox",
            );
        }
        // A self-hosted Hyperswitch, whatever its name or path says.
        for url in [
            "https://hyperswitch.example.com",
            "https://sandbox.hyperswitch.io.example.com",
            "https://payments.example.com/sandbox.hyperswitch.io",
            "https://sandbox-hyperswitch.example.com",
        ] {
            let env = production_with(var::HYPERSWITCH_BASE_URL, Some(url));
            if let Err(e) = load_owned(&env) {
                panic!("{url}: {e}");
            }
        }
    }

    #[test]
    fn production_refuses_the_psp_fake() {
        check_rule(
            production_with(var::PSP_FAKE, Some("true")),
            ProductionRefusal::PspFake,
            "no money taken",
        );
    }

    #[test]
    fn production_refuses_the_rate_limit_bypass_flag() {
        check_rule(
            production_with(var::DISABLE_RATE_LIMIT_FOR_TESTS, Some("1")),
            ProductionRefusal::BypassFlag {
                var: var::DISABLE_RATE_LIMIT_FOR_TESTS,
            },
            "rate limiting",
        );
    }

    #[test]
    fn production_refuses_a_missing_stripe_secret() {
        check_rule(
            production_with(var::STRIPE_SECRET_KEY, None),
            ProductionRefusal::StripeSecretMissing,
            "payouts and transfer reversals would never move",
        );
    }

    #[test]
    fn production_refuses_a_stripe_test_key() {
        check_rule(
            production_with(
                var::STRIPE_SECRET_KEY,
                Some("sk_test_SENTINEL-aabbccddeeff"),
            ),
            ProductionRefusal::StripeTestKey,
            "test mode",
        );
    }

    #[test]
    fn production_lists_every_refusal_one_per_line() {
        let err = load(&[
            (var::APP_ENV, "production"),
            (var::HYPERSWITCH_ENABLED, "false"),
            (var::PSP_FAKE, "true"),
        ])
        .unwrap_err();
        let ConfigError::Production { refusals, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(
            refusals,
            &vec![
                ProductionRefusal::PaymentsDisabled,
                ProductionRefusal::WebhookSecretMissing,
                ProductionRefusal::HyperswitchApiKeyMissing,
                ProductionRefusal::HyperswitchSandbox,
                ProductionRefusal::ApiTokenMissing,
                ProductionRefusal::AdminTokenMissing,
                ProductionRefusal::SqliteStore,
                ProductionRefusal::PspFake,
                ProductionRefusal::StripeSecretMissing,
            ]
        );
        let text = err.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1 + refusals.len(), "{text}");
        assert!(lines[0].contains("9 problems"), "{text}");
        for (line, refusal) in lines[1..].iter().zip(refusals) {
            assert_eq!(*line, format!("- {refusal}"));
        }
    }

    #[test]
    fn production_error_carries_the_warnings_too() {
        let mut env = production_with(var::API_TOKEN, None);
        env.push((var::RECONCILE_INTERVAL, "often".to_owned()));
        let err = load_owned(&env).unwrap_err();
        let ConfigError::Production { warnings, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(warnings.len(), 1);
        assert!(
            err.to_string()
                .contains("warning: RECONCILE_INTERVAL=often"),
            "{err}"
        );
    }

    #[test]
    fn disabled_workers_are_advised_on_outside_development() {
        let mut env = production_env();
        env.push((var::REVERSAL_WORKER_ENABLED, "false".to_owned()));
        env.push((var::RECONCILE_WORKER_ENABLED, "no".to_owned()));
        let (_, w) = load_owned(&env).unwrap();
        let vars: Vec<_> = w.iter().map(|w| w.var).collect();
        assert_eq!(
            vars,
            vec![var::RECONCILE_WORKER_ENABLED, var::REVERSAL_WORKER_ENABLED]
        );
        assert!(w.iter().all(|w| w.default_used.is_none()));

        let (_, w) = load_ok(&[(var::REVERSAL_WORKER_ENABLED, "false")]);
        assert!(w.is_empty(), "{w:?}");
    }

    // ---- staging ----------------------------------------------------------------

    #[test]
    fn staging_starts_but_warns_on_what_production_refuses() {
        let (c, w) = load_ok(&[
            (var::APP_ENV, "staging"),
            (var::HYPERSWITCH_API_KEY, HS_API_KEY),
            (var::HYPERSWITCH_WEBHOOK_SECRET, HS_WEBHOOK_SECRET),
            (var::STRIPE_SECRET_KEY, "sk_test_SENTINEL-aabbccddeeff"),
            (var::API_TOKEN, API_TOKEN),
            (var::DISABLE_RATE_LIMIT_FOR_TESTS, "true"),
        ]);
        assert_eq!(c.app_env, AppEnv::Staging);
        let vars: Vec<_> = w.iter().map(|w| w.var).collect();
        // Sandbox Hyperswitch and a Stripe test key are not advised on.
        assert_eq!(
            vars,
            vec![
                var::ADMIN_TOKEN,
                var::DATABASE_URL,
                var::DISABLE_RATE_LIMIT_FOR_TESTS,
            ]
        );
        for warning in &w {
            assert!(warning.default_used.is_none());
            assert!(
                warning
                    .reason
                    .starts_with("production would refuse to start: ")
            );
        }
        assert_eq!(w[0].value_shown, "(unset)");
    }

    // ---- secrets ------------------------------------------------------------------

    #[test]
    fn secret_masks_itself() {
        let s = Secret::new(API_TOKEN);
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(s.expose(), API_TOKEN);
    }

    #[test]
    fn secrets_never_appear_in_debug_or_the_summary() {
        let mut env = production_env();
        env.push((
            var::DATABASE_READ_URL,
            format!("postgres://reader:{DB_PASSWORD}@replica/ledger?sslmode=require"),
        ));
        let (c, _) = load_owned(&env).unwrap();
        assert_eq!(c.api_token.as_ref().map(Secret::expose), Some(API_TOKEN));
        let debug = format!("{c:?}");
        assert_no_secret(&debug);
        assert!(debug.contains("***"), "{debug}");
        let pretty = format!("{c:#?}");
        assert_no_secret(&pretty);
        let summary = c.redacted_summary();
        assert_no_secret(&summary);
        assert!(!summary.contains('\n'), "{summary}");
        for expected in [
            "app_env=production",
            "store=postgres postgres://ledger:***@db.internal:5432/ledger",
            "read_replica=postgres://reader:***@replica/ledger",
            "api_token=set",
            "webhook_secret=set",
            "psp_mode=real",
            "interval=1h",
            "backoff_max=1h",
        ] {
            assert!(
                summary.contains(expected),
                "{expected} missing from {summary}"
            );
        }
    }

    #[test]
    fn a_password_in_the_query_string_never_appears_in_debug_the_summary_or_advice() {
        let mut env = production_with(
            var::DATABASE_URL,
            Some(&format!(
                "postgres://ledger@db.internal/ledger?password={DB_PASSWORD}&sslmode=require"
            )),
        );
        env.push((
            var::DATABASE_READ_URL,
            format!("postgres://reader@replica/ledger?sslmode=require&password={DB_PASSWORD}"),
        ));
        let (c, _) = load_owned(&env).unwrap();
        let summary = c.redacted_summary();
        assert_no_secret(&summary);
        assert!(
            summary.contains("store=postgres postgres://ledger@db.internal/ledger?password=***&"),
            "{summary}"
        );
        assert!(
            summary.contains(
                "read_replica=postgres://reader@replica/ledger?sslmode=require&password=***"
            ),
            "{summary}"
        );
        assert_no_secret(&format!("{c:?}"));
        // The staging advisory shows the URL it is about, password hidden.
        let url = format!("postgres://ledger@db.internal/ledger?password={DB_PASSWORD}");
        let (_, w) = load_ok(&[(var::APP_ENV, "staging"), (var::DATABASE_URL, &url)]);
        assert!(
            w.iter().any(|w| w.value_shown.contains("password=***")),
            "{w:?}"
        );
        for warning in &w {
            assert_no_secret(&warning.to_string());
        }
    }

    #[test]
    fn secrets_never_appear_in_warnings_or_refusals() {
        // Whitespace around every secret yields a masked warning each.
        let padded: Vec<(&'static str, String)> = [
            (var::API_TOKEN, API_TOKEN),
            (var::ADMIN_TOKEN, API_TOKEN), // equal to the API token: refused
            (var::HYPERSWITCH_API_KEY, HS_API_KEY),
            (var::HYPERSWITCH_WEBHOOK_SECRET, HS_WEBHOOK_SECRET),
            (var::STRIPE_SECRET_KEY, "sk_test_SENTINEL-aabbccddeeff"),
        ]
        .into_iter()
        .map(|(k, v)| (k, format!(" {v}\n")))
        .collect();
        let mut env = padded.clone();
        env.push((var::APP_ENV, "production".to_owned()));
        env.push((
            var::DATABASE_URL,
            format!("sqlite://user:{DB_PASSWORD}@/ledger.db"),
        ));
        let err = load_owned(&env).unwrap_err();
        let ConfigError::Production { refusals, warnings } = &err else {
            panic!("{err:?}");
        };
        assert!(refusals.contains(&ProductionRefusal::AdminTokenSameAsApiToken));
        assert!(refusals.contains(&ProductionRefusal::StripeTestKey));
        assert_eq!(warnings.len(), 5, "{warnings:?}");
        for w in warnings {
            assert_eq!(w.value_shown, MASK);
            assert_no_secret(&w.to_string());
        }
        assert_no_secret(&err.to_string());
        assert_no_secret(&format!("{err:?}"));
        assert!(!err.to_string().contains("SENTINEL"), "{err}");

        // Staging advisories and the trimmed config: still nothing.
        let mut env = padded;
        env.push((var::APP_ENV, "staging".to_owned()));
        env.push((
            var::DATABASE_URL,
            format!("sqlite://user:{DB_PASSWORD}@/ledger.db"),
        ));
        let (c, warnings) = load_owned(&env).unwrap();
        assert_eq!(c.api_token.as_ref().map(Secret::expose), Some(API_TOKEN));
        assert!(warnings.iter().any(|w| w.var == var::ADMIN_TOKEN));
        for w in &warnings {
            assert!(!w.to_string().contains("SENTINEL"), "{w}");
        }
    }

    // ---- rate limits and connection hygiene ------------------------------

    #[test]
    fn limits_default_to_the_documented_production_values() {
        let (c, warnings) = load_ok(&[]);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            c.limits,
            LimitsConfig {
                per_token: RateLimit {
                    per_second: 500,
                    burst: 1_000,
                },
                webhook_per_ip: RateLimit {
                    per_second: 50,
                    burst: 200,
                },
                max_in_flight: 512,
                max_connections: 1_024,
                header_read_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(75),
                shutdown_grace: Duration::from_secs(20),
            }
        );
        // Production takes them as they are: no limit can be switched off
        // there (the bypass flag is refused, see below).
        let (c, warnings) = load_owned(&production_env()).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(c.limits, LimitsConfig::default());
    }

    #[test]
    fn every_limit_is_read_from_its_variable() {
        let (c, warnings) = load_ok(&[
            (var::RATE_LIMIT_PER_TOKEN, "7"),
            (var::RATE_LIMIT_PER_TOKEN_BURST, "9"),
            (var::RATE_LIMIT_WEBHOOK_PER_IP, "3"),
            (var::RATE_LIMIT_WEBHOOK_PER_IP_BURST, "4"),
            (var::MAX_IN_FLIGHT_REQUESTS, "1"),
            (var::MAX_CONNECTIONS, "2"),
            (var::HEADER_READ_TIMEOUT, "200ms"),
            (var::HTTP_IDLE_TIMEOUT, "2m"),
            (var::SHUTDOWN_GRACE, "1s500ms"),
        ]);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            c.limits,
            LimitsConfig {
                per_token: RateLimit {
                    per_second: 7,
                    burst: 9,
                },
                webhook_per_ip: RateLimit {
                    per_second: 3,
                    burst: 4,
                },
                max_in_flight: 1,
                max_connections: 2,
                header_read_timeout: Duration::from_millis(200),
                idle_timeout: Duration::from_secs(120),
                shutdown_grace: Duration::from_millis(1_500),
            }
        );
        let summary = c.redacted_summary();
        for expected in [
            "limits=(per_token=7/s burst=9 webhook_per_ip=3/s burst=4 max_in_flight=1",
            "max_connections=2 header_read_timeout=200ms idle_timeout=2m shutdown_grace=1s500ms)",
        ] {
            assert!(
                summary.contains(expected),
                "{expected} missing from {summary}"
            );
        }
        assert!(format!("{c:?}").contains("max_connections: 2"));
    }

    type LimitIntField = fn(&Config) -> u32;

    const LIMIT_INT_FIELDS: [(&str, LimitIntField, u32, u32); 6] = [
        (
            var::RATE_LIMIT_PER_TOKEN,
            |c| c.limits.per_token.per_second,
            DEFAULT_RATE_LIMIT_PER_TOKEN,
            RATE_LIMIT_MAX,
        ),
        (
            var::RATE_LIMIT_PER_TOKEN_BURST,
            |c| c.limits.per_token.burst,
            DEFAULT_RATE_LIMIT_PER_TOKEN_BURST,
            RATE_LIMIT_MAX,
        ),
        (
            var::RATE_LIMIT_WEBHOOK_PER_IP,
            |c| c.limits.webhook_per_ip.per_second,
            DEFAULT_RATE_LIMIT_WEBHOOK_PER_IP,
            RATE_LIMIT_MAX,
        ),
        (
            var::RATE_LIMIT_WEBHOOK_PER_IP_BURST,
            |c| c.limits.webhook_per_ip.burst,
            DEFAULT_RATE_LIMIT_WEBHOOK_PER_IP_BURST,
            RATE_LIMIT_MAX,
        ),
        (
            var::MAX_IN_FLIGHT_REQUESTS,
            |c| c.limits.max_in_flight,
            DEFAULT_MAX_IN_FLIGHT_REQUESTS,
            RATE_LIMIT_MAX,
        ),
        (
            var::MAX_CONNECTIONS,
            |c| c.limits.max_connections,
            DEFAULT_MAX_CONNECTIONS,
            MAX_CONNECTIONS_MAX,
        ),
    ];

    /// Zero, negative, garbage or absurd never turns a limit off: the
    /// default applies, with a WARN naming the variable. Production too.
    #[test]
    fn a_bad_limit_falls_back_to_its_default_with_a_warning_even_in_production() {
        for (name, field, default, max) in LIMIT_INT_FIELDS {
            let above = (u64::from(max) + 1).to_string();
            for (bad, reason) in [
                ("0", "zero"),
                ("-1", "negative"),
                ("many", "not an integer"),
                ("10/s", "not an integer"),
                (above.as_str(), "above the maximum"),
            ] {
                let (c, warnings) = load_ok(&[(name, bad)]);
                assert_eq!(field(&c), default, "{name}={bad}");
                assert_eq!(warnings.len(), 1, "{name}={bad}: {warnings:?}");
                assert_eq!(
                    (warnings[0].var, warnings[0].value_shown.as_str()),
                    (name, bad)
                );
                assert_eq!(warnings[0].default_used, Some(default.to_string()));
                assert!(warnings[0].reason.contains(reason), "{name}={bad}");
            }
            let mut env = production_env();
            env.push((name, "0".to_owned()));
            let (c, warnings) = load_owned(&env).unwrap();
            assert_eq!(field(&c), default, "{name}=0 in production");
            assert_eq!(warnings.len(), 1, "{name}: {warnings:?}");
        }
    }

    type LimitDurationField = fn(&Config) -> Duration;

    const LIMIT_DURATION_FIELDS: [(&str, LimitDurationField, Duration, &str); 3] = [
        (
            var::HEADER_READ_TIMEOUT,
            |c| c.limits.header_read_timeout,
            DEFAULT_HEADER_READ_TIMEOUT,
            "5m1s",
        ),
        (
            var::HTTP_IDLE_TIMEOUT,
            |c| c.limits.idle_timeout,
            DEFAULT_HTTP_IDLE_TIMEOUT,
            "1h0m1s",
        ),
        (
            var::SHUTDOWN_GRACE,
            |c| c.limits.shutdown_grace,
            DEFAULT_SHUTDOWN_GRACE,
            "10m1s",
        ),
    ];

    #[test]
    fn a_bad_connection_timeout_falls_back_to_its_default_with_a_warning() {
        for (name, field, default, above_max) in LIMIT_DURATION_FIELDS {
            let (c, warnings) = load_ok(&[(name, "250ms")]);
            assert_eq!(field(&c), Duration::from_millis(250), "{name}");
            assert!(warnings.is_empty(), "{name}: {warnings:?}");
            for (bad, reason) in [
                ("0", "zero"),
                ("0s", "zero"),
                ("-1s", "negative"),
                ("10", "missing unit"),
                ("soon", "not a duration"),
                (above_max, "above the maximum"),
            ] {
                let (c, warnings) = load_ok(&[(name, bad)]);
                assert_eq!(field(&c), default, "{name}={bad}");
                assert_eq!(warnings.len(), 1, "{name}={bad}: {warnings:?}");
                assert_eq!(warnings[0].var, name);
                assert_eq!(
                    warnings[0].default_used.as_deref(),
                    Some(format_duration(default).as_str())
                );
                assert!(
                    warnings[0].reason.contains(reason),
                    "{name}={bad}: {}",
                    warnings[0].reason
                );
            }
        }
    }
}
