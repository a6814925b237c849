//! Query routes over the read models (the read pool).
//!
//! **Guarantees:** every parameter is bound; `sort` is a whitelist and
//! anything else sorts by `created_at desc`; pages are keyset cursors, so a
//! page never repeats or skips a row that existed when the first page was
//! read; timestamps are RFC 3339 UTC on both backends.

use axum::Json;
use axum::extract::{Path, Query, State};
use chrono::{DateTime, SecondsFormat, Utc};
use ledger_core::ids::StreamId;
use ledger_core::transfer::TransferStatus;
use ledger_projections::query::SqlParam;
use ledger_projections::readmodel::Dialect;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use utoipa::IntoParams;

use super::AppState;
use super::commands::parse_order_id;
use super::error::{ApiError, ErrorBody};

/// Page size when `limit` is absent.
pub const PAGE_DEFAULT: u32 = 50;
/// Largest page a client may ask for.
pub const PAGE_MAX: u32 = 200;
/// Events per `/events` response (a stream this long is an anomaly).
pub const STREAM_EVENTS_MAX: u32 = 1_000;

fn json_object(d: Dialect) -> &'static str {
    match d {
        Dialect::Postgres => "json_build_object",
        Dialect::Sqlite => "json_object",
    }
}

/// `$n` on Postgres, `?n` on SQLite (SQLite numbers `$name` by first use).
fn p(d: Dialect, n: usize) -> String {
    match d {
        Dialect::Postgres => format!("${n}"),
        Dialect::Sqlite => format!("?{n}"),
    }
}

/// `select <json of columns> as doc from …`, text on both dialects.
fn select_json(d: Dialect, columns: &[&str], rest: &str) -> String {
    let pairs: Vec<String> = columns.iter().map(|c| format!("'{c}', {c}")).collect();
    let obj = format!("{}({})", json_object(d), pairs.join(", "));
    match d {
        Dialect::Postgres => format!("select ({obj})::text from {rest}"),
        Dialect::Sqlite => format!("select {obj} from {rest}"),
    }
}

fn is_time_key(key: &str) -> bool {
    key.ends_with("_at") || key == "status_since" || key == "at"
}

/// Parses one JSON row and rewrites timestamps to RFC 3339 UTC (ms).
fn normalise(text: &str) -> Result<Value, ApiError> {
    let mut value: Value = serde_json::from_str(text).map_err(ApiError::internal)?;
    if let Value::Object(map) = &mut value {
        for (key, v) in map.iter_mut() {
            if let (true, Value::String(s)) = (is_time_key(key), &*v)
                && let Some(t) = parse_time(s)
            {
                *v = Value::String(t.to_rfc3339_opts(SecondsFormat::Millis, true));
            }
        }
    }
    Ok(value)
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .or_else(|_| DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%:z"))
        .or_else(|_| DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%#z"))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

async fn rows(state: &AppState, sql: &str, params: &[SqlParam]) -> Result<Vec<Value>, ApiError> {
    state
        .reads
        .query_json(sql, params)
        .await
        .map_err(ApiError::internal)?
        .iter()
        .map(|t| normalise(t))
        .collect()
}

const ORDER_COLUMNS: [&str; 12] = [
    "order_id",
    "status",
    "buyer_id",
    "currency",
    "total_minor",
    "captured_minor",
    "refunded_minor",
    "fee_minor",
    "payment_id",
    "created_at",
    "updated_at",
    "status_since",
];

const REFUND_COLUMNS: [&str; 13] = [
    "refund_id",
    "status",
    "order_id",
    "payment_id",
    "amount_minor",
    "currency",
    "reason",
    "hyperswitch_refund_id",
    "failure",
    "error_message",
    "requested_at",
    "updated_at",
    "status_since",
];

const TRANSFER_COLUMNS: [&str; 17] = [
    "transfer_id",
    "status",
    "order_id",
    "seller_id",
    "destination",
    "currency",
    "amount_minor",
    "transferred_minor",
    "amount_reversed_minor",
    "stripe_transfer_id",
    "stripe_reversal_id",
    "retry_count",
    "reversal_retry_count",
    "next_retry_at",
    "last_error",
    "created_at",
    "status_since",
];

const LINE_COLUMNS: [&str; 9] = [
    "product_id",
    "seller_id",
    "seller_account",
    "unit_amount_minor",
    "quantity",
    "total_minor",
    "fee_minor",
    "seller_minor",
    "refund_state",
];

/// One order with its lines, refunds and transfers.
#[utoipa::path(
    get, path = "/v1/orders/{id}", tag = "queries",
    params(("id" = String, Path, description = "order id")),
    responses((status = 200, description = "the order read model"), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn get_order(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let order_id = parse_order_id(&id)?.0.to_string();
    let d = state.reads.dialect();
    let key = [SqlParam::Text(order_id.clone())];
    let sql = select_json(
        d,
        &ORDER_COLUMNS,
        &format!("order_view where order_id = {}", p(d, 1)),
    );
    let Some(mut order) = rows(&state, &sql, &key).await?.into_iter().next() else {
        return Err(ApiError::not_found(
            "order_not_found",
            format!("no order {order_id} (a just-placed order appears once projected)"),
        ));
    };
    let lines = rows(
        &state,
        &select_json(
            d,
            &LINE_COLUMNS,
            &format!(
                "order_line_view where order_id = {} order by product_id",
                p(d, 1)
            ),
        ),
        &key,
    )
    .await?;
    let refunds = rows(
        &state,
        &select_json(
            d,
            &REFUND_COLUMNS,
            &format!(
                "refund_view where order_id = {} order by requested_at",
                p(d, 1)
            ),
        ),
        &key,
    )
    .await?;
    let transfers = rows(
        &state,
        &select_json(
            d,
            &TRANSFER_COLUMNS,
            &format!(
                "seller_transfer_view where order_id = {} order by seller_id",
                p(d, 1)
            ),
        ),
        &key,
    )
    .await?;
    if let Value::Object(map) = &mut order {
        map.insert("lines".to_owned(), Value::Array(lines));
        map.insert("refunds".to_owned(), Value::Array(refunds));
        map.insert("transfers".to_owned(), Value::Array(transfers));
    }
    Ok(Json(order))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct OrderListQuery {
    pub status: Option<String>,
    pub buyer_id: Option<String>,
    pub seller_id: Option<String>,
    /// `created_at_desc` (default), `created_at_asc`, `updated_at_desc`,
    /// `updated_at_asc`, `total_minor_desc`, `total_minor_asc`; anything
    /// else sorts by `created_at desc`.
    pub sort: Option<String>,
    pub limit: Option<String>,
    /// The `next_cursor` of the previous page.
    pub after: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SortColumn {
    CreatedAt,
    UpdatedAt,
    TotalMinor,
}

fn parse_sort(sort: Option<&str>) -> (SortColumn, bool) {
    match sort.unwrap_or("") {
        "created_at_asc" => (SortColumn::CreatedAt, true),
        "updated_at_desc" => (SortColumn::UpdatedAt, false),
        "updated_at_asc" => (SortColumn::UpdatedAt, true),
        "total_minor_desc" => (SortColumn::TotalMinor, false),
        "total_minor_asc" => (SortColumn::TotalMinor, true),
        _ => (SortColumn::CreatedAt, false),
    }
}

fn parse_limit(limit: Option<&str>) -> Result<u32, ApiError> {
    match limit {
        None => Ok(PAGE_DEFAULT),
        Some(text) => match text.parse::<u32>() {
            Ok(n) if (1..=PAGE_MAX).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(
                "invalid_query",
                format!("limit must be an integer from 1 to {PAGE_MAX}"),
            )),
        },
    }
}

/// Column carrying the raw sort key; removed before the response.
const CURSOR_KEY: &str = "_cursor";

fn encode_cursor(sort_value: &Value, id: &str) -> String {
    hex::encode(json!([sort_value, id]).to_string())
}

fn bad_cursor() -> ApiError {
    ApiError::bad_request(
        "invalid_cursor",
        "after must be a next_cursor this API returned",
    )
}

fn decode_cursor(cursor: &str) -> Result<(Value, String), ApiError> {
    let bytes = hex::decode(cursor).map_err(|_| bad_cursor())?;
    let parsed: (Value, String) = serde_json::from_slice(&bytes).map_err(|_| bad_cursor())?;
    Ok(parsed)
}

/// Orders, filtered, sorted and paged.
#[utoipa::path(
    get, path = "/v1/orders", tag = "queries",
    params(OrderListQuery),
    responses((status = 200, description = "{items, next_cursor}"), (status = 400, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn list_orders(
    State(state): State<AppState>,
    Query(q): Query<OrderListQuery>,
) -> Result<Json<Value>, ApiError> {
    let d = state.reads.dialect();
    let (column, ascending) = parse_sort(q.sort.as_deref());
    let limit = parse_limit(q.limit.as_deref())?;
    let (col, cast) = match (column, d) {
        (SortColumn::CreatedAt, Dialect::Postgres) => ("created_at", "::timestamptz"),
        (SortColumn::UpdatedAt, Dialect::Postgres) => ("updated_at", "::timestamptz"),
        (SortColumn::CreatedAt, Dialect::Sqlite) => ("created_at", ""),
        (SortColumn::UpdatedAt, Dialect::Sqlite) => ("updated_at", ""),
        (SortColumn::TotalMinor, _) => ("total_minor", ""),
    };
    let mut filters = Vec::new();
    let mut params = Vec::new();
    let bind = |params: &mut Vec<SqlParam>, v: SqlParam| {
        params.push(v);
        p(d, params.len())
    };
    if let Some(s) = q.status.filter(|s| !s.is_empty()) {
        let ph = bind(&mut params, SqlParam::Text(s));
        filters.push(format!("o.status = {ph}"));
    }
    if let Some(b) = q.buyer_id.filter(|s| !s.is_empty()) {
        let ph = bind(&mut params, SqlParam::Text(b));
        filters.push(format!("o.buyer_id = {ph}"));
    }
    if let Some(s) = q.seller_id.filter(|s| !s.is_empty()) {
        let ph = bind(&mut params, SqlParam::Text(s));
        filters.push(format!(
            "exists (select 1 from order_line_view l where l.order_id = o.order_id and l.seller_id = {ph})"
        ));
    }
    if let Some(cursor) = q.after.as_deref().filter(|s| !s.is_empty()) {
        let (value, id) = decode_cursor(cursor)?;
        let sort_param = match (&value, column) {
            (Value::Number(n), SortColumn::TotalMinor) => {
                SqlParam::Int(n.as_i64().ok_or_else(bad_cursor)?)
            }
            // The raw stored value (full precision), compared as stored.
            (Value::String(s), SortColumn::CreatedAt | SortColumn::UpdatedAt)
                if parse_time(s).is_some() =>
            {
                SqlParam::Text(s.clone())
            }
            _ => return Err(bad_cursor()),
        };
        let v = bind(&mut params, sort_param);
        let i = bind(&mut params, SqlParam::Text(id));
        let op = if ascending { ">" } else { "<" };
        let v = if cast.is_empty() {
            v
        } else {
            format!("({v}::text){cast}")
        };
        filters.push(format!("(o.{col}, o.order_id) {op} ({v}, {i})"));
    }
    let dir = if ascending { "asc" } else { "desc" };
    let where_clause = if filters.is_empty() {
        String::new()
    } else {
        format!("where {}", filters.join(" and "))
    };
    let columns: Vec<String> = ORDER_COLUMNS.iter().map(|c| format!("o.{c}")).collect();
    let mut pairs: Vec<String> = ORDER_COLUMNS
        .iter()
        .zip(&columns)
        .map(|(name, c)| format!("'{name}', {c}"))
        .collect();
    // The sort key at full stored precision, for the cursor only.
    pairs.push(format!("'{CURSOR_KEY}', o.{col}"));
    let obj = format!("{}({})", json_object(d), pairs.join(", "));
    let obj = match d {
        Dialect::Postgres => format!("({obj})::text"),
        Dialect::Sqlite => obj,
    };
    let fetch = i64::from(limit) + 1;
    let lim = bind(&mut params, SqlParam::Int(fetch));
    let sql = format!(
        "select {obj} from order_view o {where_clause} order by o.{col} {dir}, o.order_id {dir} limit {lim}"
    );
    let mut items = rows(&state, &sql, &params).await?;
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|last| {
            let id = last.get("order_id").and_then(Value::as_str).unwrap_or("");
            encode_cursor(last.get(CURSOR_KEY).unwrap_or(&Value::Null), id)
        })
    } else {
        None
    };
    for item in &mut items {
        if let Value::Object(map) = item {
            map.remove(CURSOR_KEY);
        }
    }
    Ok(Json(json!({ "items": items, "next_cursor": next_cursor })))
}

/// The order stream's events, with hashes, as stored.
#[utoipa::path(
    get, path = "/v1/orders/{id}/events", tag = "queries",
    params(("id" = String, Path, description = "order id")),
    responses((status = 200, description = "the stream's events"), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn order_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let order_id = parse_order_id(&id)?;
    let stream: StreamId = order_id.stream_id();
    let events = state
        .events
        .read_stream(&stream, 1, STREAM_EVENTS_MAX)
        .await
        .map_err(ApiError::internal)?;
    if events.is_empty() {
        return Err(ApiError::not_found(
            "order_not_found",
            format!("no order {order_id}"),
        ));
    }
    let items: Vec<Value> = events
        .iter()
        .map(|e| {
            json!({
                "global_position": e.global_position,
                "stream_version": e.stream_version,
                "event_id": e.event_id.0.to_string(),
                "event_type": e.event_type,
                "schema_version": e.schema_version,
                "recorded_at": e.recorded_at.to_rfc3339_opts(SecondsFormat::Millis, true),
                "payload": serde_json::from_str::<Value>(&e.payload).unwrap_or(Value::Null),
                "metadata": serde_json::from_str::<Value>(&e.metadata).unwrap_or(Value::Null),
                "hash": hex::encode(e.hash),
            })
        })
        .collect();
    Ok(Json(
        json!({ "stream_id": stream.as_str(), "events": items }),
    ))
}

/// One refund.
#[utoipa::path(
    get, path = "/v1/refunds/{id}", tag = "queries",
    params(("id" = String, Path, description = "refund id")),
    responses((status = 200, description = "the refund read model"), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn get_refund(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let d = state.reads.dialect();
    let sql = select_json(
        d,
        &REFUND_COLUMNS,
        &format!("refund_view where refund_id = {}", p(d, 1)),
    );
    rows(&state, &sql, &[SqlParam::Text(id.clone())])
        .await?
        .into_iter()
        .next()
        .map(Json)
        .ok_or_else(|| ApiError::not_found("refund_not_found", format!("no refund {id:?}")))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct TransferListQuery {
    pub seller_id: Option<String>,
    /// Only transfers in this status.
    #[param(value_type = Option<super::commands::TransferStatusName>)]
    pub status: Option<String>,
    pub limit: Option<String>,
}

/// A `?status=` of the transfer list: one of the core's statuses, or a 400
/// that lists them (an unknown one would silently match nothing).
fn transfer_status_filter(status: &str) -> Result<String, ApiError> {
    let known = TransferStatus::ALL.map(|s| s.as_str());
    if known.contains(&status) {
        Ok(status.to_owned())
    } else {
        Err(ApiError::bad_request(
            "invalid_status",
            format!(
                "status {status:?} is not a transfer status; one of: {}",
                known.join(", ")
            ),
        ))
    }
}

/// One seller transfer.
#[utoipa::path(
    get, path = "/v1/transfers/{id}", tag = "queries",
    params(("id" = String, Path, description = "transfer id")),
    responses((status = 200, description = "the transfer read model"), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn get_transfer(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let d = state.reads.dialect();
    let sql = select_json(
        d,
        &TRANSFER_COLUMNS,
        &format!("seller_transfer_view where transfer_id = {}", p(d, 1)),
    );
    rows(&state, &sql, &[SqlParam::Text(id.clone())])
        .await?
        .into_iter()
        .next()
        .map(Json)
        .ok_or_else(|| ApiError::not_found("transfer_not_found", format!("no transfer {id:?}")))
}

/// Seller transfers, newest first.
#[utoipa::path(
    get, path = "/v1/transfers", tag = "queries",
    params(TransferListQuery),
    responses((status = 200, description = "{items}"), (status = 400, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn list_transfers(
    State(state): State<AppState>,
    Query(q): Query<TransferListQuery>,
) -> Result<Json<Value>, ApiError> {
    let d = state.reads.dialect();
    let limit = parse_limit(q.limit.as_deref())?;
    let status = match q.status.filter(|s| !s.is_empty()) {
        Some(s) => Some(transfer_status_filter(&s)?),
        None => None,
    };
    let mut filters = Vec::new();
    let mut params = Vec::new();
    for (column, value) in [("seller_id", q.seller_id), ("status", status)] {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            params.push(SqlParam::Text(v));
            filters.push(format!("{column} = {}", p(d, params.len())));
        }
    }
    params.push(SqlParam::Int(i64::from(limit)));
    let where_clause = if filters.is_empty() {
        String::new()
    } else {
        format!("where {}", filters.join(" and "))
    };
    let sql = select_json(
        d,
        &TRANSFER_COLUMNS,
        &format!(
            "seller_transfer_view {where_clause} order by created_at desc, transfer_id desc limit {}",
            p(d, params.len())
        ),
    );
    Ok(Json(json!({ "items": rows(&state, &sql, &params).await? })))
}

/// What the ledger owes a seller, per currency (credit − debit of
/// `seller_payable:{seller}`).
#[utoipa::path(
    get, path = "/v1/sellers/{id}/balance", tag = "queries",
    params(("id" = String, Path, description = "seller id")),
    responses((status = 200, description = "{seller_id, balances}")),
    security(("bearer" = []))
)]
pub async fn seller_balance(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let d = state.reads.dialect();
    let sql = select_json(
        d,
        &["currency", "payable_minor", "credit_minor", "debit_minor"],
        &format!(
            "seller_balance where seller_id = {} order by currency",
            p(d, 1)
        ),
    );
    let balances = rows(&state, &sql, &[SqlParam::Text(id.clone())]).await?;
    Ok(Json(json!({ "seller_id": id, "balances": balances })))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct AsOfQuery {
    /// A global position (inclusive) or an RFC 3339 time (inclusive).
    pub as_of: Option<String>,
}

/// The journal summed per account and currency, now or as of a point.
#[utoipa::path(
    get, path = "/v1/ledger/trial-balance", tag = "queries",
    params(AsOfQuery),
    responses((status = 200, description = "{accounts, balanced}"), (status = 400, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn trial_balance(
    State(state): State<AppState>,
    Query(q): Query<AsOfQuery>,
) -> Result<Json<Value>, ApiError> {
    let d = state.reads.dialect();
    let cols = ["account", "currency", "debit_minor", "credit_minor"];
    let (rest, params) = match q.as_of.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => (
            "account_balance order by account, currency".to_owned(),
            Vec::new(),
        ),
        Some(text) => {
            let (cond, param) = if let Ok(position) = text.parse::<i64>() {
                (
                    format!("e.global_position <= {}", p(d, 1)),
                    SqlParam::Int(position),
                )
            } else if let Some(t) = parse_time(text) {
                let stored = match d {
                    Dialect::Postgres => t.to_rfc3339_opts(SecondsFormat::Micros, true),
                    Dialect::Sqlite => t.to_rfc3339_opts(SecondsFormat::Micros, true),
                };
                let ph = match d {
                    Dialect::Postgres => format!("({}::text)::timestamptz", p(d, 1)),
                    Dialect::Sqlite => p(d, 1),
                };
                (format!("e.recorded_at <= {ph}"), SqlParam::Text(stored))
            } else {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    "as_of must be a global position or an RFC 3339 time",
                ));
            };
            (
                format!(
                    "(select x.account, x.currency, \
                     sum(case when x.side = 'debit' then x.amount_minor else 0 end) as debit_minor, \
                     sum(case when x.side = 'credit' then x.amount_minor else 0 end) as credit_minor \
                     from posting x join journal_entry e on e.entry_id = x.entry_id \
                     where {cond} group by x.account, x.currency) t order by account, currency"
                ),
                vec![param],
            )
        }
    };
    let accounts = rows(&state, &select_json(d, &cols, &rest), &params).await?;
    let mut totals: Map<String, Value> = Map::new();
    for a in &accounts {
        let currency = a
            .get("currency")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let debit = a.get("debit_minor").and_then(Value::as_i64).unwrap_or(0);
        let credit = a.get("credit_minor").and_then(Value::as_i64).unwrap_or(0);
        let entry = totals
            .entry(currency)
            .or_insert_with(|| json!({"debit_minor": 0i64, "credit_minor": 0i64}));
        let add =
            |v: &mut Value, k: &str, n: i64| -> Result<(), ApiError> {
                let cur = v.get(k).and_then(Value::as_i64).unwrap_or(0);
                v[k] = json!(cur.checked_add(n).ok_or_else(|| ApiError::internal(
                    anyhow::anyhow!("trial balance overflows i64")
                ))?);
                Ok(())
            };
        add(entry, "debit_minor", debit)?;
        add(entry, "credit_minor", credit)?;
    }
    let balanced = totals
        .values()
        .all(|t| t.get("debit_minor") == t.get("credit_minor"));
    Ok(Json(json!({
        "as_of": q.as_of,
        "accounts": accounts,
        "totals": totals,
        "balanced": balanced,
    })))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct AnomalyQuery {
    pub limit: Option<String>,
}

/// Events an operator must look at, newest first.
#[utoipa::path(
    get, path = "/v1/anomalies", tag = "queries",
    params(AnomalyQuery),
    responses((status = 200, description = "{items}")),
    security(("bearer" = []))
)]
pub async fn anomalies(
    State(state): State<AppState>,
    Query(q): Query<AnomalyQuery>,
) -> Result<Json<Value>, ApiError> {
    let d = state.reads.dialect();
    let limit = parse_limit(q.limit.as_deref())?;
    let sql = select_json(
        d,
        &[
            "stream_id",
            "stream_version",
            "event_type",
            "kind",
            "details",
            "at",
            "global_position",
        ],
        &format!("anomaly order by global_position desc limit {}", p(d, 1)),
    );
    Ok(Json(
        json!({ "items": rows(&state, &sql, &[SqlParam::Int(i64::from(limit))]).await? }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transfer_status_filter_knows_every_status_and_refuses_others() {
        for status in TransferStatus::ALL {
            assert_eq!(
                transfer_status_filter(status.as_str()).unwrap(),
                status.as_str()
            );
        }
        assert_eq!(
            transfer_status_filter("indeterminate").unwrap(),
            "indeterminate"
        );
        let refused = transfer_status_filter("complete").unwrap_err();
        assert_eq!(refused.code(), "invalid_status");
        assert!(
            refused.to_string().contains("reversal_indeterminate"),
            "{refused}"
        );
    }

    #[test]
    fn unknown_sorts_fall_back_to_created_at_desc() {
        assert_eq!(parse_sort(None), (SortColumn::CreatedAt, false));
        assert_eq!(
            parse_sort(Some("amount; drop table x")),
            (SortColumn::CreatedAt, false)
        );
        assert_eq!(
            parse_sort(Some("total_minor_asc")),
            (SortColumn::TotalMinor, true)
        );
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = encode_cursor(&json!("2026-11-27T10:00:00.000Z"), "abc");
        assert_eq!(
            decode_cursor(&c).unwrap(),
            (json!("2026-11-27T10:00:00.000Z"), "abc".to_owned())
        );
        assert_eq!(decode_cursor("zz").unwrap_err().code(), "invalid_cursor");
    }

    #[test]
    fn timestamps_normalise_to_utc_millis() {
        let v = normalise(r#"{"created_at":"2026-11-27T10:00:00.123456+00:00","n":1}"#).unwrap();
        assert_eq!(v["created_at"], "2026-11-27T10:00:00.123Z");
        assert_eq!(v["n"], 1);
    }
}
