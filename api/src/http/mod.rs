//! The HTTP edge (axum): commands, queries, the Hyperswitch webhook and
//! operations endpoints.
//!
//! API Boundary: DTOs and status codes live here and nowhere below. A handler
//! validates input into core types, runs the core through
//! `ledger_store::handle::execute`, and maps the outcome to HTTP. Nothing
//! here decides money.
//!
//! **Guarantees:** every route has a body limit and a time limit; every
//! response carries `X-Request-Id` (echoed when the client sent a sane one),
//! and every log line inside a request carries it too; every `/v1` route
//! needs a bearer token, `/v1/admin` the admin one; every `/v1` token and
//! every webhook source is rate-limited and requests beyond the in-flight
//! cap are shed ([`limits`]); connections have header-read and idle
//! timeouts, a cap, and a bounded shutdown drain ([`conn`]).

pub mod auth;
pub mod commands;
pub mod conn;
pub mod error;
pub mod idempotency;
pub mod limits;
pub mod metrics;
pub mod ops;
pub mod queries;
pub mod webhook;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use ledger_core::ids::TransferId;
use ledger_core::order::PlacedOrder;
use ledger_projections::clock::Clock;
use ledger_projections::query::QueryStore;
use ledger_projections::runtime::Status;
use ledger_store::EventStore;
use ledger_store::idempotency::IdempotencyStore;
use ledger_store::webhook_log::WebhookLogStore;
use tokio::sync::watch;
use tracing::Instrument;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use self::auth::Tokens;
use self::error::ApiError;
use self::metrics::Metrics;

/// Commands carry at most a few hundred lines; 256 KiB is generous.
pub const COMMAND_BODY_MAX: usize = 256 * 1024;
/// Seed item E: a webhook body over 64 KiB is refused before any insert.
pub const WEBHOOK_BODY_MAX: usize = 64 * 1024;
/// No request may hold a connection longer than this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// A client-supplied `X-Request-Id` longer than this is replaced.
pub const REQUEST_ID_LEN_MAX: usize = 128;
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Operations that need the PSP process managers (issue: PSP managers).
/// Without them the admin routes answer 501, never a fake success.
#[async_trait]
pub trait AdminOps: Send + Sync + std::fmt::Debug {
    async fn retry_transfer(
        &self,
        transfer_id: TransferId,
        request_id: &str,
    ) -> Result<serde_json::Value, ApiError>;
    async fn reconcile_once(&self, request_id: &str) -> Result<serde_json::Value, ApiError>;
    /// An operator marks a recorded transfer anomaly dealt with.
    async fn resolve_anomaly(
        &self,
        transfer_id: TransferId,
        kind: ledger_core::transfer::TransferAnomalyKind,
        provider_id: Option<String>,
        note: &str,
        request_id: &str,
    ) -> Result<serde_json::Value, ApiError>;
    /// Stripe's transfers created in `[from, to)` matched against the
    /// ledger (a `ProviderReport`).
    async fn reconcile_provider(
        &self,
        from: chrono::DateTime<chrono::Utc>,
        to: chrono::DateTime<chrono::Utc>,
        request_id: &str,
    ) -> Result<serde_json::Value, ApiError>;
}

/// What `POST /v1/orders` learned from the PSP within its deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentStarted {
    pub client_secret: Option<String>,
}

/// Creates the order's payment inline when it can do so quickly; the
/// payment manager finishes it otherwise.
#[async_trait]
pub trait PaymentStarter: Send + Sync + std::fmt::Debug {
    async fn start_within_deadline(&self, order: &PlacedOrder) -> Option<PaymentStarted>;
}

/// Settings the HTTP layer needs, derived from the typed config.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub tokens: Tokens,
    /// Key for `X-Webhook-Signature-512`. `None` refuses every webhook.
    pub webhook_key: Option<WebhookKey>,
    pub fee_bps: ledger_core::FeeBps,
    /// `/readyz` fails when a projection lags more than this many events.
    pub readiness_lag_max: u64,
}

/// The webhook signing key, never printed.
#[derive(Clone)]
pub struct WebhookKey(pub Vec<u8>);

impl std::fmt::Debug for WebhookKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookKey(***)")
    }
}

pub struct Inner {
    pub events: Arc<dyn EventStore>,
    /// The same group commit as `events`, typed: a webhook's append takes
    /// its log row along (`GroupedAppends::append_logged`).
    pub appends: Arc<ledger_store::group_commit::GroupedAppends>,
    pub idempotency: Arc<dyn IdempotencyStore>,
    /// Group commit of new orders under new keys (on `idempotency`'s
    /// backend, which is also the event store's).
    pub fresh: ledger_store::group_commit::FreshCommitter,
    pub webhook_log: Arc<dyn WebhookLogStore>,
    /// Group commit of webhook-log rows (on `webhook_log`): every delivery
    /// whose row did not commit with an append.
    pub log_writer: ledger_store::group_commit::LogCommitter,
    /// The read pool (`DATABASE_READ_URL` when set).
    pub reads: Arc<dyn QueryStore>,
    pub clock: Arc<dyn Clock>,
    pub settings: HttpSettings,
    pub metrics: Metrics,
    pub projections: Vec<watch::Receiver<Status>>,
    pub admin: Option<Arc<dyn AdminOps>>,
    pub payments: Option<Arc<dyn PaymentStarter>>,
    /// Woken after every append so projectors pick it up at once.
    pub wake: Arc<tokio::sync::Notify>,
    /// Rate limits and the in-flight cap.
    pub limits: limits::Limits,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct AppState(pub Arc<Inner>);

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// The request id of the current request (set by [`request_context`]).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

fn sane_request_id(value: &HeaderValue) -> Option<String> {
    let text = value.to_str().ok()?.trim();
    (!text.is_empty()
        && text.len() <= REQUEST_ID_LEN_MAX
        && text.bytes().all(|b| b.is_ascii_graphic()))
    .then(|| text.to_owned())
}

/// Request id, span, time limit and metrics for every request.
async fn request_context(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let request_id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(sane_request_id)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().as_str().to_owned();
    let method_label = metrics::method_label(request.method());
    request
        .extensions_mut()
        .insert(RequestId(request_id.clone()));
    let span =
        tracing::info_span!("http", request_id = %request_id, method = %method, route = %route);
    let mut response = async move {
        match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
            Ok(response) => response,
            Err(_) => ApiError::Timeout.into_response(),
        }
    }
    .instrument(span.clone())
    .await;
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    state.metrics.request(&route, method_label, status, elapsed);
    span.in_scope(|| {
        tracing::info!(status, elapsed_ms = elapsed.as_millis() as u64, "request");
    });
    response
}

/// The raw request body, read through a limit. Over the limit → 413 with
/// the standard error body, before the handler sees a byte.
#[derive(Debug)]
pub struct LimitedBody<const MAX: usize>(pub Bytes);

impl<S: Send + Sync, const MAX: usize> FromRequest<S> for LimitedBody<MAX> {
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, ApiError> {
        LimitedBody::<MAX>::from_request_inner(request)
            .await
            .map(LimitedBody)
    }
}

/// Most bytes of an oversize body read and dropped before its 413 goes
/// out. A server that answers and closes while the client is still
/// sending makes the client's write fail with a reset, and the client then
/// never reads the 413 (seen as a flaky `IncompleteMessage` from reqwest
/// for a body one byte over the limit). Bodies larger than this are
/// refused without reading them: that client may see a reset instead.
pub const OVERSIZE_DRAIN_MAX: usize = 1024 * 1024;

impl<const MAX: usize> LimitedBody<MAX> {
    /// Reads the body through the limit (also used by handlers that need
    /// the headers and extensions first).
    pub async fn from_request_inner(request: Request) -> Result<Bytes, ApiError> {
        use http_body_util::BodyExt;

        let too_large = || ApiError::PayloadTooLarge {
            message: format!("the request body exceeds {MAX} bytes"),
        };
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        // A client that asked to `Expect: 100-continue` has not sent its
        // body: it gets the 413 at once instead of an invitation to upload.
        let waits_to_send = request
            .headers()
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let mut body: Body = request.into_body();
        if let Some(declared) = declared.filter(|n| *n > MAX as u64) {
            if declared <= OVERSIZE_DRAIN_MAX as u64 && !waits_to_send {
                drain(&mut body, OVERSIZE_DRAIN_MAX).await;
            }
            return Err(too_large());
        }
        let mut read = Vec::with_capacity(declared.map_or(0, |n| n as usize));
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return Err(ApiError::bad_request(
                    "body_unreadable",
                    "the request body could not be read",
                ));
            };
            if let Some(data) = frame.data_ref() {
                if read.len() + data.len() > MAX {
                    drain(
                        &mut body,
                        OVERSIZE_DRAIN_MAX.saturating_sub(read.len() + data.len()),
                    )
                    .await;
                    return Err(too_large());
                }
                read.extend_from_slice(data);
            }
        }
        Ok(Bytes::from(read))
    }
}

/// Reads and drops at most about `max` more bytes of `body` (a frame may
/// overshoot), stopping at its end or at an error.
async fn drain(body: &mut Body, max: usize) {
    use http_body_util::BodyExt;

    let mut seen = 0usize;
    while seen <= max {
        match body.frame().await {
            Some(Ok(frame)) => seen += frame.data_ref().map_or(0, |d| d.len()),
            _ => return,
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ledger",
        description = "Event-sourced ledger for a digital-goods marketplace."
    ),
    components(schemas(error::ErrorBody, error::ErrorDetail)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// All routes and their OpenAPI description, from the same declarations so
/// they cannot drift.
pub fn routes(state: &AppState) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let admin = OpenApiRouter::new()
        .routes(routes!(commands::retry_transfer))
        .routes(routes!(commands::resolve_anomaly))
        .routes(routes!(commands::reconcile))
        .routes(routes!(commands::reconcile_provider))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            limits::limit_token,
        ))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_admin,
        ));
    let v1 = OpenApiRouter::new()
        .routes(routes!(commands::place_order, queries::list_orders))
        .routes(routes!(queries::get_order))
        .routes(routes!(commands::request_refund))
        .routes(routes!(queries::order_events))
        .routes(routes!(queries::get_refund))
        .routes(routes!(queries::list_transfers))
        .routes(routes!(queries::get_transfer))
        .routes(routes!(queries::seller_balance))
        .routes(routes!(queries::trial_balance))
        .routes(routes!(queries::anomalies))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            limits::limit_token,
        ))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_api,
        ));
    let webhooks = OpenApiRouter::new()
        .routes(routes!(webhook::hyperswitch))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            limits::limit_webhook,
        ));
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(admin)
        .merge(v1)
        .merge(webhooks)
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .split_for_parts()
}

/// The application: routes, `/openapi.json`, and the per-request context.
pub fn app(state: AppState) -> Router {
    let (router, openapi) = routes(&state);
    let openapi = Arc::new(openapi);
    router
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let doc = Arc::clone(&openapi);
                async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
        .method_not_allowed_fallback(|| async {
            ApiError::MethodNotAllowed {
                message: "this route does not accept that method; see /openapi.json".to_owned(),
            }
        })
        .fallback(|| async {
            ApiError::not_found("route_not_found", "no such route; see /openapi.json")
        })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            limits::shed_load,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            request_context,
        ))
        .with_state(state)
}
