//! `ledger serve`: the API, the projectors and the workers in one process.
//!
//! **Guarantees:** start-up refuses an unsafe production config before
//! opening a port; shutdown (SIGTERM/SIGINT or [`RunningServer::shutdown`])
//! stops accepting, lets in-flight requests finish for at most
//! `SHUTDOWN_GRACE` (then closes their connections), stops every worker at
//! a safe point (between batches), then closes the pools.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ledger_core::FeeBps;
use ledger_postgres::PgStore;
use ledger_projections::clock::{Clock, SystemClock};
use ledger_projections::managers::Managers;
use ledger_projections::query::QueryStore;
use ledger_projections::readmodel::{ReadModel, ReadModelProjection};
use ledger_projections::retention::{self, IdempotencyRetention, RetentionConfig};
use ledger_projections::runtime::Projector;
use ledger_psp_fake::{FakeHandle, FakePsp, WebhookTarget};
use ledger_store::EventStore;
use ledger_store::idempotency::IdempotencyStore;
use ledger_store::webhook_log::{LoggedAppendStore, WebhookLogStore};
use ledger_store::work::WorkStore;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{AppEnv, Config, ConfigWarning, PspMode};
use crate::http::auth::{TokenDigest, Tokens};
use crate::http::conn::ConnLimits;
use crate::http::limits::Limits;
use crate::http::metrics::Metrics;
use crate::http::{AppState, HttpSettings, Inner, WebhookKey, app};
use crate::managers::{ManagerOps, PspLink, WorkerMode};
use crate::store::{Backend, StoreUrl};

/// `/readyz` fails when a projection is further behind than this.
pub const READINESS_LAG_MAX: u64 = 10_000;
/// How often the webhook-log retention sweep runs.
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);

/// The storage ports of one opened backend.
#[derive(Clone)]
pub struct Ports {
    pub events: Arc<dyn EventStore>,
    pub idempotency: Arc<dyn IdempotencyStore>,
    pub webhook_log: Arc<dyn WebhookLogStore>,
    /// The event store and the webhook log in one transaction.
    pub logged_appends: Arc<dyn LoggedAppendStore>,
    pub reads: Arc<dyn QueryStore>,
    pub read_models: Arc<dyn ledger_projections::readmodel::ReadModelStore>,
    pub work: Arc<dyn WorkStore>,
}

impl std::fmt::Debug for Ports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ports").finish_non_exhaustive()
    }
}

impl Ports {
    pub fn of(backend: &Backend) -> Ports {
        match backend {
            Backend::Postgres(s) => Ports {
                events: Arc::new(s.clone()),
                idempotency: Arc::new(s.clone()),
                webhook_log: Arc::new(s.clone()),
                logged_appends: Arc::new(s.clone()),
                reads: Arc::new(s.clone()),
                read_models: Arc::new(s.clone()),
                work: Arc::new(s.clone()),
            },
            Backend::Sqlite(s) => Ports {
                events: Arc::new(s.clone()),
                idempotency: Arc::new(s.clone()),
                webhook_log: Arc::new(s.clone()),
                logged_appends: Arc::new(s.clone()),
                reads: Arc::new(s.clone()),
                read_models: Arc::new(s.clone()),
                work: Arc::new(s.clone()),
            },
        }
    }
}

/// A started server.
#[derive(Debug)]
pub struct RunningServer {
    pub addr: SocketAddr,
    pub state: AppState,
    cancel: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
    workers: Vec<JoinHandle<()>>,
    managers: Option<Managers>,
    fake: Option<FakeHandle>,
    /// `SHUTDOWN_GRACE`: for in-flight requests, then for each worker.
    grace: Duration,
    read_pool: Option<PgStore>,
}

impl RunningServer {
    /// Stops accepting, drains, stops workers; returns when all are done.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        self.wait().await
    }

    /// Waits until the server stops (after a signal or `shutdown`).
    pub async fn wait(self) -> anyhow::Result<()> {
        let served = self.server.await.context("server task panicked")?;
        self.cancel.cancel();
        for w in self.workers {
            let _ = tokio::time::timeout(self.grace, w).await;
        }
        if let Some(fake) = self.fake {
            fake.shutdown().await;
        }
        served.context("serving HTTP")
    }

    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// The process managers; `None` when payments are off
    /// (`HYPERSWITCH_ENABLED=false`, or real PSP keys missing).
    pub fn managers(&self) -> Option<&Managers> {
        self.managers.as_ref()
    }

    /// The in-process PSP fake (`PspMode::Fake` only).
    /// The Postgres read pool the query endpoints use (the replica's, or
    /// the server's own with `statement_timeout`); `None` on SQLite.
    pub fn read_pool(&self) -> Option<&PgStore> {
        self.read_pool.as_ref()
    }

    pub fn fake(&self) -> Option<&FakePsp> {
        self.fake.as_deref()
    }

    /// The fake's loopback root (`…/_fake/…` is its control API).
    pub fn fake_base_url(&self) -> Option<String> {
        self.fake.as_ref().map(FakeHandle::base_url)
    }
}

fn settings(config: &Config) -> anyhow::Result<HttpSettings> {
    let tokens = Tokens {
        api: config
            .api_token
            .as_ref()
            .map(|t| TokenDigest::of(t.expose())),
        admin: config
            .admin_token
            .as_ref()
            .map(|t| TokenDigest::of(t.expose())),
    };
    let webhook_key = match (&config.hyperswitch.webhook_secret, config.psp_mode) {
        (Some(s), _) => Some(WebhookKey(s.expose().as_bytes().to_vec())),
        // The fake signs with a key made for this process only.
        (None, PspMode::Fake) => Some(WebhookKey(
            uuid::Uuid::new_v4().simple().to_string().into_bytes(),
        )),
        (None, PspMode::Real) => None,
    };
    let fee_bps = FeeBps::new(i64::from(config.platform_fee_bps))
        .map_err(|e| anyhow::anyhow!("PLATFORM_FEE_BPS: {e}"))?;
    Ok(HttpSettings {
        tokens,
        webhook_key,
        fee_bps,
        readiness_lag_max: READINESS_LAG_MAX,
    })
}

/// Where the in-process fake delivers: this server's own webhook route, on
/// loopback when it listens on every interface, signed with its key.
fn own_webhook_target(addr: SocketAddr, key: Option<&WebhookKey>) -> WebhookTarget {
    let host = if addr.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    };
    WebhookTarget {
        url: format!("http://{host}/webhooks/hyperswitch"),
        key: key.map(|k| String::from_utf8_lossy(&k.0).into_owned()),
    }
}

/// Starts everything on `listener` and returns at once. `mode` says whether
/// the PSP process managers run on their own timers (`ledger serve`) or only
/// when called through [`RunningServer::managers`] (tests).
pub async fn start(
    config: &Config,
    backend: &Backend,
    listener: TcpListener,
    clock: Arc<dyn Clock>,
    mode: WorkerMode,
) -> anyhow::Result<RunningServer> {
    let ports = Ports::of(backend);
    // Query endpoints read through a pool of their own whose statements
    // Postgres cancels after READ_STATEMENT_TIMEOUT; the writer has no limit.
    let read_timeout = config.read_statement_timeout;
    let read_pool: Option<PgStore> = match config.database_read_url.as_deref() {
        Some(url) => match StoreUrl::parse(Some(url))? {
            StoreUrl::Postgres(u) => Some(
                PgStore::connect_reads(&u, read_timeout)
                    .await
                    .with_context(|| {
                        format!(
                            "cannot connect to DATABASE_READ_URL {}",
                            crate::store::redact_url(&u)
                        )
                    })?,
            ),
            StoreUrl::Sqlite(_) => anyhow::bail!(
                "DATABASE_READ_URL must be a Postgres replica (postgres://…); the embedded SQLite store has no replicas"
            ),
        },
        None => match backend {
            Backend::Postgres(s) => Some(
                s.read_pool(read_timeout)
                    .await
                    .context("cannot open the read pool")?,
            ),
            Backend::Sqlite(_) => None,
        },
    };
    let reads: Arc<dyn QueryStore> = match &read_pool {
        Some(pool) => Arc::new(pool.clone()),
        None => ports.reads.clone(),
    };
    let settings = settings(config)?;
    if settings.tokens.is_open() {
        tracing::warn!(
            "NO API TOKENS CONFIGURED: every /v1 route is open to anyone who can reach {}. Set LEDGER_API_TOKEN and LEDGER_ADMIN_TOKEN (production refuses to start without them)",
            config.listen_addr
        );
    }
    let cancel = CancellationToken::new();
    let mut workers = Vec::new();

    // Read-model projector.
    let wake = Arc::new(Notify::new());
    let handler = ReadModelProjection::new(ports.read_models.clone(), &ReadModel::ALL, false);
    let mut projector =
        Projector::new(ports.events.clone(), handler).with_coalesce(config.projection_coalesce);
    let projection_status = projector.subscribe();
    let (stop_tx, stop_rx) = watch::channel(false);
    {
        let cancel = cancel.clone();
        workers.push(tokio::spawn(async move {
            cancel.cancelled().await;
            let _ = stop_tx.send(true);
        }));
    }
    {
        let wake = wake.clone();
        workers.push(tokio::spawn(async move {
            if let Err(e) = projector.run(wake, stop_rx).await {
                tracing::error!(error = %e, "read-model projector stopped");
            }
        }));
    }

    // Webhook-log retention.
    {
        let log = ports.webhook_log.clone();
        let cfg = RetentionConfig {
            retention_days: config.webhook_log_retention_days,
            ..RetentionConfig::default()
        };
        workers.push(tokio::spawn(retention::run_daily(
            log,
            clock.clone(),
            cfg,
            RETENTION_INTERVAL,
            cancel.clone(),
        )));
    }

    // Idempotency-record purge.
    {
        let cfg = IdempotencyRetention {
            retention: config.idempotency_retention,
            ..IdempotencyRetention::default()
        };
        workers.push(tokio::spawn(retention::run_idempotency_purge(
            ports.idempotency.clone(),
            clock.clone(),
            cfg,
            retention::IDEMPOTENCY_SWEEP_INTERVAL,
            cancel.clone(),
        )));
    }

    // PSP process managers.
    let addr = listener.local_addr().context("listener address")?;
    let webhook = own_webhook_target(addr, settings.webhook_key.as_ref());
    let mut projections = vec![projection_status];
    let (managers, fake) = match PspLink::connect(config, Some(webhook), mode, clock.clone())
        .await?
    {
        Some(link) => {
            let managers = link.managers(&ports, config, clock.clone(), "serve");
            projections.extend(managers.feed_status());
            if mode == WorkerMode::Background {
                workers.extend(managers.spawn(cancel.clone()));
            }
            (Some(managers), link.fake)
        }
        None => {
            tracing::warn!(
                "PSP PROCESS MANAGERS OFF: no payment, refund or payout will reach a PSP and /v1/admin answers 501. \
                 Set HYPERSWITCH_ENABLED=true with HYPERSWITCH_API_KEY and STRIPE_SECRET_KEY (or run in development without keys for the PSP fake)"
            );
            (None, None)
        }
    };
    let ops = managers
        .as_ref()
        .map(|m| Arc::new(ManagerOps::new(m.clone(), clock.clone())));

    // Requests' appends share transactions (group commit); a webhook's
    // `ok` log row commits with its append.
    let appends = Arc::new(ledger_store::group_commit::GroupedAppends::start_logged(
        ports.events.clone(),
        ports.logged_appends.clone(),
    ));
    let state = AppState(Arc::new(Inner {
        events: appends.clone(),
        appends,
        idempotency: ports.idempotency.clone(),
        fresh: ledger_store::group_commit::FreshCommitter::start(ports.idempotency.clone()),
        webhook_log: ports.webhook_log.clone(),
        log_writer: ledger_store::group_commit::LogCommitter::start(ports.webhook_log.clone()),
        reads,
        clock,
        settings,
        metrics: Metrics::new(),
        projections,
        admin: ops.clone().map(|o| o as Arc<dyn crate::http::AdminOps>),
        payments: ops.map(|o| o as Arc<dyn crate::http::PaymentStarter>),
        wake,
        limits: Limits::new(&config.limits, !config.disable_rate_limit_for_tests),
    }));
    if config.disable_rate_limit_for_tests {
        tracing::warn!(
            "RATE LIMITS OFF (DISABLE_RATE_LIMIT_FOR_TESTS): no /v1 token or webhook source is limited"
        );
    }
    workers.push(tokio::spawn(crate::http::limits::sweep_until(
        state.clone(),
        cancel.clone(),
    )));
    let router = app(state.clone());
    let server = tokio::spawn(crate::http::conn::serve(
        listener,
        router,
        ConnLimits::from(&config.limits),
        state.metrics.clone(),
        cancel.clone(),
    ));
    tracing::info!(%addr, "ledger listening");
    Ok(RunningServer {
        addr,
        state,
        cancel,
        server,
        workers,
        managers,
        fake,
        grace: config.limits.shutdown_grace,
        read_pool,
    })
}

async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

pub fn log_warnings(warnings: &[ConfigWarning]) {
    for w in warnings {
        tracing::warn!(var = w.var, value = %w.value_shown, default = ?w.default_used, "{}", w.reason);
    }
}

/// The typed config from the process env, `--database-url` (which clap
/// also reads from `DATABASE_URL`) winning. `Err` carries the message that
/// names every problem; the caller prints it and exits 2.
pub fn load_config(database_url: Option<&str>) -> Result<Config, String> {
    let env = |key: &str| {
        if key == "DATABASE_URL"
            && let Some(url) = database_url
        {
            return Some(url.to_owned());
        }
        std::env::var(key).ok()
    };
    let (config, warnings) = Config::from_env(&env).map_err(|e| e.to_string())?;
    log_warnings(&warnings);
    Ok(config)
}

/// `ledger serve`.
pub async fn run(database_url: Option<&str>) -> anyhow::Result<ExitCode> {
    let config = match load_config(database_url) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ledger serve refuses to start:\n{e}");
            return Ok(ExitCode::from(2));
        }
    };
    tracing::info!(config = %config.redacted_summary(), "starting");
    if config.app_env != AppEnv::Production && config.psp_mode == PspMode::Fake {
        tracing::warn!("PSP FAKE IN USE: no real payment or payout will happen");
    }
    let url = StoreUrl::parse(config.database_url.as_deref())?;
    let backend = Backend::open(&url).await?;
    backend.migrate().await?;
    let listener = TcpListener::bind(config.listen_addr)
        .await
        .with_context(|| format!("cannot listen on {} (LISTEN_ADDR)", config.listen_addr))?;
    let server = start(
        &config,
        &backend,
        listener,
        Arc::new(SystemClock),
        WorkerMode::Background,
    )
    .await?;
    println!("ledger listening on http://{}", server.addr);
    if let Some(fake) = server.fake_base_url() {
        println!("psp fake on {fake} (control API: {fake}/_fake, e.g. POST {fake}/_fake/faults)");
    }
    let cancel = server.cancel_token();
    tokio::spawn(async move {
        signal().await;
        tracing::info!("shutdown signal received; draining");
        cancel.cancel();
    });
    server.wait().await?;
    if let Backend::Sqlite(s) = &backend {
        s.close().await;
    }
    if let Backend::Postgres(s) = &backend {
        s.pool().close().await;
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}
