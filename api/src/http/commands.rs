//! Command routes: `POST /v1/orders`, `POST /v1/orders/{id}/refunds` and the
//! admin commands.
//!
//! **Guarantees:** input is validated into core types *before* the
//! idempotency claim, so a refused request writes nothing; new stream ids
//! come from the Idempotency-Key (`order_id_from_idempotency_key`,
//! `refund_id_from_idempotency_key`), so even a lost idempotency record can
//! never create a second order or refund.

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use ledger_core::ExpectedVersion;
use ledger_core::ids::{
    BuyerId, OrderId, ProductId, SellerAccount, SellerId, StreamId, TransferId,
    order_id_from_idempotency_key, refund_id_from_idempotency_key,
};
use ledger_core::order::{
    LineInput, ORDER_LINES_MAX, Order, OrderCommand, OrderRejection, OrderState, PlacedOrder,
};
use ledger_core::refund::{Refund, RefundCommand, RefundReasonCode, RefundRejection, RefundState};
use ledger_core::{Currency, Decider, Source};
use ledger_store::StoreError;
use ledger_store::handle::{CommandContext, HandleError, Handled, execute, load, to_new_events};
use ledger_store::idempotency::{Fresh, FreshCommand, StoredResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::auth::Principal;
use super::error::{ApiError, ErrorBody};
use super::idempotency::{self, JsonReply};
use super::{AppState, COMMAND_BODY_MAX, LimitedBody, RequestId};

/// `POST /v1/orders` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrderRequest {
    pub buyer_id: String,
    /// ISO 4217, e.g. `USD`.
    pub currency: String,
    pub items: Vec<OrderItemRequest>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderItemRequest {
    pub product_id: String,
    pub seller_id: String,
    /// The seller's Stripe Connect account, `acct_…`.
    pub seller_account: String,
    pub unit_amount_minor: i64,
    pub quantity: i64,
    /// Optional; when present it must equal the order's currency.
    pub currency: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrderCreated {
    pub order_id: String,
    pub status: String,
    pub currency: String,
    pub total_minor: i64,
    pub fee_minor: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
}

/// `POST /v1/orders/{id}/refunds` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundRequest {
    /// Lines to refund; absent means everything still refundable.
    pub product_ids: Option<Vec<String>>,
    /// Free text (the buyer's words), kept with the refund and passed to the
    /// PSP as metadata.
    pub reason: String,
    /// The reason the PSP is told; absent means `requested_by_customer`.
    /// Any other string is a 422 `invalid_field`.
    #[schema(value_type = Option<RefundReasonCodeBody>)]
    pub reason_code: Option<String>,
}

/// `reason_code` of a refund request: the set Hyperswitch accepts for a
/// Stripe refund (`ledger_core::refund::RefundReasonCode`). Declared for the
/// OpenAPI document; the body is read as a string and checked, so a wrong
/// value gets a 422 naming the allowed ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum RefundReasonCodeBody {
    Duplicate,
    Fraudulent,
    RequestedByCustomer,
}

/// `reason_code`, when present, as the core's code.
fn parse_reason_code(code: Option<&str>) -> Result<Option<RefundReasonCode>, ApiError> {
    code.map(|text| {
        RefundReasonCode::parse(text).ok_or_else(|| {
            ApiError::unprocessable(
                "invalid_field",
                format!(
                    "reason_code: {:?} is not one of {}",
                    text.chars().take(64).collect::<String>(),
                    RefundReasonCode::ALLOWED
                ),
            )
        })
    })
    .transpose()
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RefundAccepted {
    pub refund_id: String,
    pub order_id: String,
    pub status: String,
    pub amount_minor: i64,
    pub currency: String,
}

/// Parses a JSON body into `T`, with 400s that say what is wrong.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => ApiError::bad_request("invalid_request", e.to_string()),
            Category::Syntax | Category::Eof | Category::Io => {
                ApiError::bad_request("malformed_json", format!("the body is not valid JSON: {e}"))
            }
        }
    })
}

fn field<T, E: std::fmt::Display>(name: &str, r: Result<T, E>) -> Result<T, ApiError> {
    r.map_err(|e| ApiError::unprocessable("invalid_field", format!("{name}: {e}")))
}

pub fn order_rejection(e: OrderRejection) -> ApiError {
    let message = e.to_string();
    let code = match &e {
        OrderRejection::OrderNotPlaced => return ApiError::not_found("order_not_found", message),
        OrderRejection::OrderAlreadyPlaced { .. } => "idempotency_key_reused",
        OrderRejection::EmptyOrder => "empty_order",
        OrderRejection::TooManyLines { .. } => "too_many_lines",
        OrderRejection::ZeroQuantity { .. } => "zero_quantity",
        OrderRejection::NegativeQuantity { .. } => "negative_quantity",
        OrderRejection::NonPositiveAmount { .. } => "non_positive_amount",
        OrderRejection::DuplicateProduct { .. } => "duplicate_product",
        OrderRejection::AmountOverflow => "amount_overflow",
        OrderRejection::NothingToRefund => "nothing_to_refund",
        OrderRejection::UnknownProduct { .. } => "unknown_product",
        OrderRejection::LineAlreadyRefunded { .. } => "line_already_refunded",
        OrderRejection::RefundExceedsCaptured { .. } => "refund_exceeds_captured",
        OrderRejection::PaymentIdMismatch { .. } => {
            return ApiError::conflict("payment_id_mismatch", message);
        }
        OrderRejection::InvalidTransition { .. } => {
            return ApiError::conflict("invalid_order_state", message);
        }
        OrderRejection::RefundAlreadyPending { .. } => {
            return ApiError::conflict("refund_already_pending", message);
        }
        OrderRejection::RefundNotPending { .. } => {
            return ApiError::conflict("refund_not_pending", message);
        }
    };
    ApiError::unprocessable(code, message)
}

pub fn refund_rejection(e: RefundRejection) -> ApiError {
    let message = e.to_string();
    match e {
        RefundRejection::InvalidTransition { .. } => {
            ApiError::conflict("invalid_refund_state", message)
        }
        RefundRejection::RefundNotRequested => ApiError::not_found("refund_not_found", message),
        _ => ApiError::unprocessable("invalid_refund", message),
    }
}

/// Maps a command-path failure: rejections via `reject`, the rest as 5xx.
pub fn handle_error<R: std::error::Error + Send + Sync + 'static>(
    e: HandleError<R>,
    reject: impl FnOnce(R) -> ApiError,
) -> ApiError {
    match e {
        HandleError::Rejected(r) => reject(r),
        HandleError::Contention { .. } => ApiError::conflict(
            "stream_contended",
            "the stream changed under too many concurrent commands; retry with the same Idempotency-Key",
        ),
        other => ApiError::internal(other),
    }
}

/// The command context for an API command: event ids derive from `cause`.
pub fn api_context(cause: &str, principal: Principal, request_id: &str) -> CommandContext {
    CommandContext::from_cause(cause, principal.as_str(), Source::Api).with_request_id(request_id)
}

fn validate_order(
    req: PlaceOrderRequest,
    order_id: OrderId,
    state: &AppState,
) -> Result<OrderCommand, ApiError> {
    let currency = field("currency", Currency::parse(&req.currency))?;
    if req.items.len() > ORDER_LINES_MAX {
        return Err(ApiError::unprocessable(
            "too_many_lines",
            format!(
                "{} items exceed the limit of {ORDER_LINES_MAX}",
                req.items.len()
            ),
        ));
    }
    let mut lines = Vec::with_capacity(req.items.len());
    for (i, item) in req.items.into_iter().enumerate() {
        if let Some(c) = &item.currency
            && field(&format!("items[{i}].currency"), Currency::parse(c))? != currency
        {
            return Err(ApiError::unprocessable(
                "mixed_currencies",
                format!(
                    "items[{i}] is in {c} but the order is in {}; an order has one currency",
                    req.currency
                ),
            ));
        }
        lines.push(LineInput {
            product_id: field(
                &format!("items[{i}].product_id"),
                ProductId::new(item.product_id),
            )?,
            seller_id: field(
                &format!("items[{i}].seller_id"),
                SellerId::new(item.seller_id),
            )?,
            seller_account: field(
                &format!("items[{i}].seller_account"),
                SellerAccount::new(item.seller_account),
            )?,
            unit_amount_minor: item.unit_amount_minor,
            quantity: item.quantity,
        });
    }
    Ok(OrderCommand::PlaceOrder {
        order_id,
        buyer_id: field("buyer_id", BuyerId::new(req.buyer_id))?,
        currency,
        lines,
        fee_bps: state.settings.fee_bps,
        now: state.clock.now(),
    })
}

fn order_created(order: &PlacedOrder, client_secret: Option<String>) -> OrderCreated {
    OrderCreated {
        order_id: order.order_id.0.to_string(),
        status: order.status.as_str().to_owned(),
        currency: order.currency.to_string(),
        total_minor: order.total_minor,
        fee_minor: order.fee_minor,
        payment_id: order.payment_id.as_ref().map(|p| p.as_str().to_owned()),
        client_secret,
    }
}

/// Place an order. The order id is derived from the Idempotency-Key.
#[utoipa::path(
    post, path = "/v1/orders", tag = "commands",
    request_body = PlaceOrderRequest,
    params(("Idempotency-Key" = String, Header, description = "unique per command")),
    responses(
        (status = 201, body = OrderCreated),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn place_order(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    headers: HeaderMap,
    LimitedBody(body): LimitedBody<COMMAND_BODY_MAX>,
) -> Result<Response, ApiError> {
    let key = idempotency::key_of(&headers)?;
    let req: PlaceOrderRequest = parse_json(&body)?;
    let order_id = order_id_from_idempotency_key(&key);
    let command = validate_order(req, order_id, &state)?;
    // The core validates amounts, quantities and overflow; run that check
    // before claiming the key so a refused order writes nothing.
    let fresh_events = Order::decide(&OrderState::default(), &command).map_err(order_rejection)?;
    let scope = format!("{}:POST /v1/orders", principal.as_str());
    let stream = order_id.stream_id();
    let ctx = api_context(&format!("order:{key}"), principal, &request_id);

    // The common case: a new key, so a new stream. Claim, append and (with
    // no PSP to call first) the stored response go in one group commit
    // shared with concurrent requests.
    let mut folded = OrderState::default();
    for e in &fresh_events {
        folded = Order::evolve(folded, e).map_err(ApiError::internal)?;
    }
    let placed = folded
        .order
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("order {order_id} not placed")))?;
    let response = match &state.payments {
        Some(_) => None,
        None => Some(StoredResponse::from(JsonReply::new(
            StatusCode::CREATED,
            &order_created(&placed, None),
        )?)),
    };
    let owner = idempotency::new_owner();
    let command_fresh = FreshCommand {
        scope: scope.clone(),
        key: key.clone(),
        request_hash: idempotency::request_hash(&scope, &body),
        owner: owner.clone(),
        stream: stream.clone(),
        events: to_new_events::<Order>(&ctx, &stream, &fresh_events),
        response: response.clone(),
    };
    match state
        .fresh
        .submit(command_fresh, state.clock.now())
        .await
        .map_err(ApiError::internal)?
    {
        Fresh::Written(_) => {
            state.wake.notify_one();
            tracing::info!(order_id = %order_id, total_minor = placed.total_minor, "order placed");
            return Ok(match response {
                Some(stored) => idempotency::respond(&stored, false),
                // Claimed in progress: start the payment, then store the answer.
                None => {
                    let claim = idempotency::Claim::held(&state, &scope, &key, owner);
                    let outcome = start_payment(&state, &stream, placed).await;
                    claim.finish(&state, outcome).await
                }
            });
        }
        // A used key (replay, mismatch, in progress) or an existing stream:
        // the general path judges it.
        Fresh::NotFresh => {}
    }

    let response = idempotency::run(&state, &scope, &key, &body, || async {
        let placed = if place_fresh(&state, &stream, &ctx, &fresh_events).await? {
            placed.clone()
        } else {
            // The stream exists (a replay after a lost idempotency record,
            // or a clash): the general path folds it and lets the core's
            // guards decide.
            let handled: Handled<Order> =
                execute::<Order, _>(&*state.events, &stream, &ctx, &command)
                    .await
                    .map_err(|e| handle_error(e, order_rejection))?;
            handled
                .state
                .order
                .ok_or_else(|| ApiError::internal(anyhow::anyhow!("order {order_id} not placed")))?
        };
        tracing::info!(order_id = %order_id, total_minor = placed.total_minor, "order placed");
        start_payment(&state, &stream, placed).await
    })
    .await;
    Ok(response)
}

/// Starts the payment of a placed order within its deadline when the PSP
/// managers run, and answers with the order as it then stands.
async fn start_payment(
    state: &AppState,
    stream: &StreamId,
    placed: PlacedOrder,
) -> Result<JsonReply, ApiError> {
    let (placed, secret) = match &state.payments {
        Some(p) => match p.start_within_deadline(&placed).await {
            Some(started) => {
                // Re-read so the answer shows the payment id it recorded.
                let reloaded = load::<Order, _>(&*state.events, stream)
                    .await
                    .map_err(ApiError::internal)?;
                (
                    reloaded.state.order.unwrap_or(placed),
                    started.client_secret,
                )
            }
            None => (placed, None),
        },
        None => (placed, None),
    };
    JsonReply::new(StatusCode::CREATED, &order_created(&placed, secret))
}

/// One round trip: a new order's stream cannot exist yet, so append the
/// decided events with `NoStream` without loading. `false` when the stream
/// already exists.
async fn place_fresh(
    state: &AppState,
    stream: &StreamId,
    ctx: &CommandContext,
    events: &[ledger_core::order::OrderEvent],
) -> Result<bool, ApiError> {
    let new_events = to_new_events::<Order>(ctx, stream, events);
    match state
        .events
        .append(stream, ExpectedVersion::NoStream, &new_events)
        .await
    {
        Ok(appended) => Ok(!appended.already_existed),
        Err(StoreError::WrongExpectedVersion { .. }) => Ok(false),
        Err(e) => Err(ApiError::internal(e)),
    }
}
pub fn parse_order_id(text: &str) -> Result<OrderId, ApiError> {
    Uuid::parse_str(text).map(OrderId).map_err(|_| {
        ApiError::not_found(
            "order_not_found",
            format!("no order {text:?}; order ids are UUIDs"),
        )
    })
}

/// Request a refund (phase 1). The PSP refund (phase 2) follows
/// asynchronously; poll `GET /v1/refunds/{id}`.
#[utoipa::path(
    post, path = "/v1/orders/{id}/refunds", tag = "commands",
    request_body = RefundRequest,
    params(
        ("id" = String, Path, description = "order id"),
        ("Idempotency-Key" = String, Header, description = "unique per command")
    ),
    responses(
        (status = 202, body = RefundAccepted),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn request_refund(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    Path(id): Path<String>,
    headers: HeaderMap,
    LimitedBody(body): LimitedBody<COMMAND_BODY_MAX>,
) -> Result<Response, ApiError> {
    let key = idempotency::key_of(&headers)?;
    let req: RefundRequest = parse_json(&body)?;
    let order_id = parse_order_id(&id)?;
    let product_ids = req
        .product_ids
        .map(|ids| {
            ids.into_iter()
                .enumerate()
                .map(|(i, p)| field(&format!("product_ids[{i}]"), ProductId::new(p)))
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    let refund_id = refund_id_from_idempotency_key(order_id, &key);
    let stream = order_id.stream_id();
    let reason_code = parse_reason_code(req.reason_code.as_deref())?;
    let command = OrderCommand::RequestRefund {
        refund_id,
        product_ids,
        reason: req.reason,
        reason_code,
        now: state.clock.now(),
    };
    // Dry run against the current state so a refused refund writes nothing.
    let current = load::<Order, _>(&*state.events, &stream)
        .await
        .map_err(ApiError::internal)?;
    if current.version.is_none() {
        return Err(ApiError::not_found(
            "order_not_found",
            format!("no order {order_id}"),
        ));
    }
    Order::decide(&current.state, &command).map_err(order_rejection)?;
    let scope = format!("{}:POST /v1/orders/{{id}}/refunds", principal.as_str());
    let response = idempotency::run(
        &state,
        &scope,
        &key,
        &[order_id.0.as_bytes().as_slice(), &body[..]].concat(),
        || async {
            let ctx = api_context(
                &format!("refund:{refund_id}:reserve"),
                principal,
                &request_id,
            );
            let handled: Handled<Order> =
                execute::<Order, _>(&*state.events, &stream, &ctx, &command)
                    .await
                    .map_err(|e| handle_error(e, order_rejection))?;
            let order = handled
                .state
                .order
                .ok_or_else(|| ApiError::internal(anyhow::anyhow!("order {order_id} vanished")))?;
            let refund_stream = refund_id.stream_id();
            let refund = match order
                .pending_refund
                .as_ref()
                .filter(|p| p.refund_id == refund_id)
            {
                Some(pending) => {
                    let payment_id = order.payment_id.clone().ok_or_else(|| {
                        ApiError::internal(anyhow::anyhow!("refundable order without payment id"))
                    })?;
                    let ctx = api_context(
                        &format!("refund:{refund_id}:request"),
                        principal,
                        &request_id,
                    );
                    let cmd = RefundCommand::Request {
                        refund_id,
                        order_id,
                        payment_id,
                        amount_minor: pending.amount_minor,
                        currency: order.currency,
                        lines: pending.lines.clone(),
                        reason: clip_reason(&command),
                        reason_code,
                        now: state.clock.now(),
                    };
                    execute::<Refund, _>(&*state.events, &refund_stream, &ctx, &cmd)
                        .await
                        .map_err(|e| handle_error(e, refund_rejection))?
                        .state
                }
                // Already completed or released (a replay after the idempotency
                // record was lost): answer from the refund stream.
                None => {
                    load::<Refund, _>(&*state.events, &refund_stream)
                        .await
                        .map_err(ApiError::internal)?
                        .state
                }
            };
            refund_reply(&refund, &stream)
        },
    )
    .await;
    Ok(response)
}

fn clip_reason(command: &OrderCommand) -> String {
    match command {
        OrderCommand::RequestRefund { reason, .. } => reason.clone(),
        _ => String::new(),
    }
}

fn refund_reply(refund: &RefundState, order_stream: &StreamId) -> Result<JsonReply, ApiError> {
    let r = refund.refund.as_ref().ok_or_else(|| {
        ApiError::internal(anyhow::anyhow!(
            "refund for {order_stream} has no refund stream"
        ))
    })?;
    JsonReply::new(
        StatusCode::ACCEPTED,
        &RefundAccepted {
            refund_id: r.refund_id.0.to_string(),
            order_id: r.order_id.0.to_string(),
            status: r.status.as_str().to_owned(),
            amount_minor: r.amount_minor,
            currency: r.currency.to_string(),
        },
    )
}

fn admin_ops(state: &AppState) -> Result<&dyn super::AdminOps, ApiError> {
    state
        .admin
        .as_deref()
        .ok_or_else(|| ApiError::NotImplemented {
            message: "the PSP process managers are not running in this process".to_owned(),
        })
}

/// A seller transfer's status, as the read models and the admin routes
/// spell it (`ledger_core::transfer::TransferStatus`).
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TransferStatusName {
    Pending,
    Completed,
    Failed,
    PermanentlyFailed,
    Cancelled,
    ReversalPending,
    PartiallyReversed,
    Reversed,
    ReversalFailed,
    /// A Stripe create's answer was lost: the payout may or may not exist
    /// until a read of Stripe says which.
    Indeterminate,
    /// The same for a reversal.
    ReversalIndeterminate,
}

/// `POST /v1/admin/transfers/{id}/retry` answer (the managers'
/// `RetriedTransfer`; documentation only, the JSON comes from there).
#[derive(Debug, Serialize, ToSchema)]
pub struct TransferRetried {
    pub transfer_id: String,
    pub from_status: TransferStatusName,
    pub status: TransferStatusName,
    /// The Stripe attempt (the idempotency key's counter) the next call uses.
    pub attempt: u32,
    /// Only after an `indeterminate` / `reversal_indeterminate` transfer:
    /// the read of Stripe found this object (`tr_…` or `trr_…`) and the
    /// ledger recorded it.
    pub found: Option<String>,
    /// Only after an `indeterminate` one: the read proved the last attempt
    /// made nothing; `attempt` is the next one, already queued.
    pub absent: Option<bool>,
    /// Only after an `indeterminate` one: the read found something the
    /// ledger cannot record; the anomaly's kind (`amount_mismatch`,
    /// `duplicate_at_provider`, `unknown_at_provider`, `unreadable_answer`,
    /// `paid_while_not_owed`), listed by `GET /v1/anomalies`.
    pub anomaly: Option<String>,
}

/// Retry a transfer now. An `indeterminate` (or `reversal_indeterminate`)
/// one is read at Stripe first and never sent again before that: found →
/// recorded (`found`), proven absent → a new attempt under a new key
/// (`absent`), anything else → an anomaly for an operator (`anomaly`). A
/// `failed` or `permanently_failed` one goes back to `pending`.
#[utoipa::path(
    post, path = "/v1/admin/transfers/{id}/retry", tag = "admin",
    params(
        ("id" = String, Path, description = "transfer id"),
        ("Idempotency-Key" = String, Header, description = "unique per command")
    ),
    responses(
        (status = 200, description = "the transfer after the retry was recorded", body = TransferRetried),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 501, body = ErrorBody),
        (status = 503, description = "Stripe (or the store) could not be read now; nothing was decided", body = ErrorBody,
            headers(("Retry-After" = u32, description = "seconds to wait before retrying with the same Idempotency-Key")))
    ),
    security(("bearer" = []))
)]
pub async fn retry_transfer(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    Path(id): Path<String>,
    headers: HeaderMap,
    LimitedBody(body): LimitedBody<COMMAND_BODY_MAX>,
) -> Result<Response, ApiError> {
    let key = idempotency::key_of(&headers)?;
    let transfer_id = transfer_id_of(&id)?;
    let ops = admin_ops(&state)?;
    let scope = format!(
        "{}:POST /v1/admin/transfers/{{id}}/retry:{id}",
        principal.as_str()
    );
    Ok(idempotency::run(&state, &scope, &key, &body, || async {
        let value = ops.retry_transfer(transfer_id, &request_id).await?;
        JsonReply::new(StatusCode::OK, &value)
    })
    .await)
}

/// A transfer id from the path; anything but a UUID names no transfer.
fn transfer_id_of(id: &str) -> Result<TransferId, ApiError> {
    Uuid::parse_str(id).map(TransferId).map_err(|_| {
        ApiError::not_found(
            "transfer_not_found",
            format!("no transfer {id:?}; transfer ids are UUIDs"),
        )
    })
}

/// `POST /v1/admin/transfers/{id}/anomalies/resolve` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveAnomalyRequest {
    /// The recorded anomaly's kind.
    pub kind: AnomalyKindName,
    /// The provider object it names (`tr_…`, `trr_…`), as recorded; absent
    /// for an anomaly recorded without one.
    pub provider_id: Option<String>,
    /// What the operator did (1–500 characters), kept in the event.
    pub note: String,
}

/// A transfer anomaly's kind.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKindName {
    AmountMismatch,
    DuplicateAtProvider,
    UnknownAtProvider,
    UnreadableAnswer,
    PaidWhileNotOwed,
}

impl From<AnomalyKindName> for ledger_core::transfer::TransferAnomalyKind {
    fn from(k: AnomalyKindName) -> Self {
        use ledger_core::transfer::TransferAnomalyKind as K;
        match k {
            AnomalyKindName::AmountMismatch => K::AmountMismatch,
            AnomalyKindName::DuplicateAtProvider => K::DuplicateAtProvider,
            AnomalyKindName::UnknownAtProvider => K::UnknownAtProvider,
            AnomalyKindName::UnreadableAnswer => K::UnreadableAnswer,
            AnomalyKindName::PaidWhileNotOwed => K::PaidWhileNotOwed,
        }
    }
}

/// Longest operator note kept on a resolution.
pub const ANOMALY_NOTE_MAX: usize = 500;

/// `POST /v1/admin/transfers/{id}/anomalies/resolve` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct AnomalyResolved {
    pub transfer_id: String,
    pub kind: AnomalyKindName,
    pub provider_id: Option<String>,
    /// False when it was resolved already.
    pub newly_resolved: bool,
}

/// Mark a recorded transfer anomaly dealt with (say, the second payout was
/// reversed at Stripe): `ledger verify` stops reporting it and the provider
/// sweep stops listing it. An `unreadable_answer` on an indeterminate
/// transfer is read at Stripe again.
#[utoipa::path(
    post, path = "/v1/admin/transfers/{id}/anomalies/resolve", tag = "admin",
    params(
        ("id" = String, Path, description = "transfer id"),
        ("Idempotency-Key" = String, Header, description = "unique per command")
    ),
    request_body = ResolveAnomalyRequest,
    responses(
        (status = 200, description = "the anomaly is resolved", body = AnomalyResolved),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "`anomaly_not_recorded`: no such anomaly on this transfer", body = ErrorBody),
        (status = 422, description = "`invalid_field`: the note is empty or too long", body = ErrorBody),
        (status = 501, body = ErrorBody),
        (status = 503, body = ErrorBody, headers(("Retry-After" = u32, description = "seconds to wait before retrying")))
    ),
    security(("bearer" = []))
)]
pub async fn resolve_anomaly(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    Path(id): Path<String>,
    headers: HeaderMap,
    LimitedBody(body): LimitedBody<COMMAND_BODY_MAX>,
) -> Result<Response, ApiError> {
    let key = idempotency::key_of(&headers)?;
    let transfer_id = transfer_id_of(&id)?;
    let request: ResolveAnomalyRequest = parse_json(&body)?;
    let note = request.note.trim().to_owned();
    if note.is_empty() || note.chars().count() > ANOMALY_NOTE_MAX {
        return Err(ApiError::unprocessable(
            "invalid_field",
            format!("note: say what was done, in 1 to {ANOMALY_NOTE_MAX} characters"),
        ));
    }
    let ops = admin_ops(&state)?;
    let scope = format!(
        "{}:POST /v1/admin/transfers/{{id}}/anomalies/resolve:{id}",
        principal.as_str()
    );
    Ok(idempotency::run(&state, &scope, &key, &body, || async {
        let value = ops
            .resolve_anomaly(
                transfer_id,
                request.kind.into(),
                request.provider_id.clone(),
                &note,
                &request_id,
            )
            .await?;
        JsonReply::new(StatusCode::OK, &value)
    })
    .await)
}

/// `POST /v1/admin/reconcile/provider` body; both optional.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderReconcileRequest {
    /// RFC3339, inclusive; default `to` − 24h.
    pub from: Option<String>,
    /// RFC3339, exclusive; default now.
    pub to: Option<String>,
}

/// `POST /v1/admin/reconcile/provider` answer (the managers'
/// `ProviderReport`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderReconciled {
    /// `created[gte]` of the window, unix seconds.
    pub from: i64,
    /// `created[lt]` of the window, unix seconds.
    pub to: i64,
    pub transfers_listed: u32,
    pub reversals_listed: u32,
    /// Objects that match what the ledger records.
    pub matched: u32,
    /// Objects the ledger is still working on (not anomalies).
    pub in_flight: u32,
    pub anomalies: Vec<ProviderAnomalyBody>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderAnomalyBody {
    /// `tr_…` or `trr_…`.
    pub provider_id: String,
    /// The share's stream, when the object names one the ledger has.
    pub stream_id: Option<String>,
    /// `amount_mismatch`, `duplicate_at_provider`, `unknown_at_provider`, …
    pub kind: String,
    pub detail: String,
    /// False when an earlier sweep recorded this anomaly already.
    pub new: bool,
}

/// List Stripe's transfers created in a window (default the last 24 hours,
/// at most 31 days) and their reversals, and match each against the ledger.
/// Every disagreement is recorded as an anomaly on the share's stream
/// (`GET /v1/anomalies`, `ledger verify`). Read-only at Stripe.
#[utoipa::path(
    post, path = "/v1/admin/reconcile/provider", tag = "admin",
    params(("Idempotency-Key" = String, Header, description = "unique per command")),
    request_body(content = Option<ProviderReconcileRequest>, description = "optional; an empty body is the last 24 hours"),
    responses(
        (status = 200, description = "the window's objects matched against the ledger", body = ProviderReconciled),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 422, description = "`invalid_window`: from must be before to, at most 31 days apart", body = ErrorBody),
        (status = 501, body = ErrorBody),
        (status = 503, description = "Stripe (or the store) could not be read now", body = ErrorBody,
            headers(("Retry-After" = u32, description = "seconds to wait before retrying")))
    ),
    security(("bearer" = []))
)]
pub async fn reconcile_provider(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    headers: HeaderMap,
    LimitedBody(body): LimitedBody<COMMAND_BODY_MAX>,
) -> Result<Response, ApiError> {
    let key = idempotency::key_of(&headers)?;
    let request: ProviderReconcileRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ProviderReconcileRequest::default()
    } else {
        parse_json(&body)?
    };
    let instant = |name: &str, value: Option<&str>| {
        value
            .map(|v| {
                chrono::DateTime::parse_from_rfc3339(v.trim())
                    .map(|t| t.with_timezone(&chrono::Utc))
                    .map_err(|e| {
                        ApiError::bad_request(
                            "invalid_request",
                            format!("{name}: {v:?} is not an RFC3339 time ({e})"),
                        )
                    })
            })
            .transpose()
    };
    let from = instant("from", request.from.as_deref())?;
    let to = instant("to", request.to.as_deref())?;
    let (from, to) = crate::reconcile::provider_window(from, to, None, state.clock.now())
        .map_err(|message| ApiError::unprocessable("invalid_window", message))?;
    let ops = admin_ops(&state)?;
    let scope = format!("{}:POST /v1/admin/reconcile/provider", principal.as_str());
    Ok(idempotency::run(&state, &scope, &key, &body, || async {
        let value = ops.reconcile_provider(from, to, &request_id).await?;
        JsonReply::new(StatusCode::OK, &value)
    })
    .await)
}

/// Run one reconciler pass now and report what it did.
#[utoipa::path(
    post, path = "/v1/admin/reconcile", tag = "admin",
    params(("Idempotency-Key" = String, Header, description = "unique per command")),
    responses(
        (status = 200, description = "what the pass did, per stuck class"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 501, body = ErrorBody),
        (status = 503, description = "a PSP or the store could not be read now", body = ErrorBody,
            headers(("Retry-After" = u32, description = "seconds to wait before retrying")))
    ),
    security(("bearer" = []))
)]
pub async fn reconcile(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    headers: HeaderMap,
    LimitedBody(body): LimitedBody<COMMAND_BODY_MAX>,
) -> Result<Response, ApiError> {
    let key = idempotency::key_of(&headers)?;
    let ops = admin_ops(&state)?;
    let scope = format!("{}:POST /v1/admin/reconcile", principal.as_str());
    Ok(idempotency::run(&state, &scope, &key, &body, || async {
        let value = ops.reconcile_once(&request_id).await?;
        JsonReply::new(StatusCode::OK, &value)
    })
    .await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger_core::transfer::TransferStatus;

    /// The documented enum is the core's, status for status.
    #[test]
    fn the_documented_transfer_statuses_are_the_cores() {
        let documented = [
            TransferStatusName::Pending,
            TransferStatusName::Completed,
            TransferStatusName::Failed,
            TransferStatusName::PermanentlyFailed,
            TransferStatusName::Cancelled,
            TransferStatusName::ReversalPending,
            TransferStatusName::PartiallyReversed,
            TransferStatusName::Reversed,
            TransferStatusName::ReversalFailed,
            TransferStatusName::Indeterminate,
            TransferStatusName::ReversalIndeterminate,
        ]
        .map(|s| serde_json::to_value(s).unwrap());
        let core = TransferStatus::ALL.map(|s| serde_json::Value::from(s.as_str()));
        assert_eq!(documented, core);
    }
}
