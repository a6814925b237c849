//! Fake Stripe Connect: `POST /v1/transfers`, `GET /v1/transfers`,
//! `GET /v1/transfers/{id}`, `POST /v1/transfers/{id}/reversals`,
//! `GET /v1/transfers/{id}/reversals`.
//!
//! **Guarantees:** form bodies and Bearer auth only; an executed POST under
//! an `Idempotency-Key` is stored and replayed byte for byte (errors
//! included, 500s too) with `Idempotent-Replayed: true`, a reused key with
//! other parameters is `idempotency_error`, a key held by a request still
//! executing is a 409 `idempotency_key_in_use`; reversals never exceed the
//! transfer (`amount_reversed <= amount`); lists are newest first with
//! Stripe's `limit` / `starting_after` / `ending_before` and refuse unknown
//! parameters.

use std::collections::BTreeMap;

use axum::Form;
use axum::Router;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use serde_json::json;

use super::state::{
    FakeState, Reply, Reversal, Stored, Transfer, api_error, guarded, random_suffix, stripe_error,
};
use super::wire::{
    STRIPE_IDEMPOTENCY_KEY_HEADER as IDEMPOTENCY_KEY_HEADER,
    STRIPE_IDEMPOTENCY_KEY_MAX as IDEMPOTENCY_KEY_MAX, STRIPE_LIST_LIMIT_DEFAULT,
    STRIPE_LIST_LIMIT_MAX, STRIPE_METADATA_KEYS_MAX as METADATA_KEYS_MAX,
};
use super::{Endpoint, FakePsp, Fault};

type Params = Vec<(String, String)>;
/// Plain fields and `metadata[…]` entries of a form.
type SplitParams = (BTreeMap<String, String>, BTreeMap<String, String>);

pub(super) fn routes() -> Router<FakePsp> {
    Router::new()
        .route("/v1/transfers", post(create_transfer).get(list_transfers))
        .route("/v1/transfers/{id}", get(get_transfer))
        .route(
            "/v1/transfers/{id}/reversals",
            post(create_reversal).get(list_reversals),
        )
}

async fn create_transfer(
    State(psp): State<FakePsp>,
    headers: HeaderMap,
    form: Result<Form<Params>, FormRejection>,
) -> Response {
    let key = idempotency_key(&headers);
    let form = form.map(|Form(params)| params).map_err(|e| e.body_text());
    guarded(&psp, Endpoint::CreateTransfer, &headers, |state, fault| {
        state.idempotent(
            key,
            "POST /v1/transfers".to_owned(),
            form,
            fault,
            |state, params| state.create_transfer(params),
        )
    })
    .await
}

async fn get_transfer(
    State(psp): State<FakePsp>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    guarded(
        &psp,
        Endpoint::GetTransfer,
        &headers,
        |state, _| match state.transfers.get(&id) {
            Some(transfer) => Reply::json(200, transfer_json(transfer).to_string()),
            None => no_such_transfer(&id),
        },
    )
    .await
}

async fn create_reversal(
    State(psp): State<FakePsp>,
    Path(id): Path<String>,
    headers: HeaderMap,
    form: Result<Form<Params>, FormRejection>,
) -> Response {
    let key = idempotency_key(&headers);
    let form = form.map(|Form(params)| params).map_err(|e| e.body_text());
    let route = format!("POST /v1/transfers/{id}/reversals");
    guarded(&psp, Endpoint::CreateReversal, &headers, |state, fault| {
        state.idempotent(key, route, form, fault, |state, params| {
            state.create_reversal(&id, params)
        })
    })
    .await
}

async fn list_transfers(
    State(psp): State<FakePsp>,
    headers: HeaderMap,
    query: Result<Query<Params>, QueryRejection>,
) -> Response {
    let query = query.map(|Query(params)| params).map_err(|e| e.body_text());
    guarded(&psp, Endpoint::ListTransfers, &headers, |state, _| {
        match query {
            Ok(params) => state.list_transfers(&params),
            Err(message) => Err(invalid(&message, None, None)),
        }
        .unwrap_or_else(|refused| refused)
    })
    .await
}

async fn list_reversals(
    State(psp): State<FakePsp>,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<Params>, QueryRejection>,
) -> Response {
    let query = query.map(|Query(params)| params).map_err(|e| e.body_text());
    guarded(&psp, Endpoint::ListReversals, &headers, |state, _| {
        match query {
            Ok(params) => state.list_reversals(&id, &params),
            Err(message) => Err(invalid(&message, None, None)),
        }
        .unwrap_or_else(|refused| refused)
    })
    .await
}

/// `limit`, `starting_after`, `ending_before` of a list request.
struct Page {
    limit: usize,
    starting_after: Option<String>,
    ending_before: Option<String>,
}

impl Page {
    fn parse(fields: &BTreeMap<String, String>) -> Result<Page, Reply> {
        let limit = match fields.get("limit") {
            None => STRIPE_LIST_LIMIT_DEFAULT,
            Some(text) => match text.parse::<usize>() {
                Ok(limit) if (1..=STRIPE_LIST_LIMIT_MAX).contains(&limit) => limit,
                _ => {
                    return Err(invalid(
                        &format!(
                            "Invalid limit: must be an integer between 1 and {STRIPE_LIST_LIMIT_MAX}"
                        ),
                        Some("parameter_invalid_integer"),
                        Some("limit"),
                    ));
                }
            },
        };
        let page = Page {
            limit,
            starting_after: fields.get("starting_after").cloned(),
            ending_before: fields.get("ending_before").cloned(),
        };
        if page.starting_after.is_some() && page.ending_before.is_some() {
            return Err(invalid(
                "You may only specify one of these parameters: starting_after, ending_before.",
                None,
                None,
            ));
        }
        Ok(page)
    }

    /// Cuts a newest-first list by the cursor's sort key and the limit;
    /// returns the page and `has_more`.
    fn cut<T, K: Ord + Copy>(
        &self,
        items: Vec<T>,
        key_of: impl Fn(&T) -> K,
        after: Option<K>,
        before: Option<K>,
    ) -> (Vec<T>, bool) {
        if let Some(before) = before {
            // The `limit` items just newer than the cursor, newest first.
            let newer: Vec<T> = items.into_iter().filter(|i| key_of(i) > before).collect();
            let skip = newer.len().saturating_sub(self.limit);
            let has_more = skip > 0;
            return (newer.into_iter().skip(skip).collect(), has_more);
        }
        let mut older: Vec<T> = items
            .into_iter()
            .filter(|i| after.is_none_or(|after| key_of(i) < after))
            .collect();
        let has_more = older.len() > self.limit;
        older.truncate(self.limit);
        (older, has_more)
    }
}

fn list_json(url: String, data: Vec<serde_json::Value>, has_more: bool) -> Reply {
    let body = json!({"object": "list", "data": data, "has_more": has_more, "url": url});
    Reply::json(200, body.to_string())
}

/// Only names in `allowed` (plus `created[gte|gt|lte|lt]` when asked).
fn list_params(
    params: &[(String, String)],
    allowed: &[&str],
    created: bool,
) -> Result<BTreeMap<String, String>, Reply> {
    let mut fields = BTreeMap::new();
    for (name, value) in params {
        let known = allowed.contains(&name.as_str())
            || (created
                && matches!(
                    name.as_str(),
                    "created" | "created[gte]" | "created[gt]" | "created[lte]" | "created[lt]"
                ));
        if !known {
            return Err(invalid(
                &format!("Received unknown parameter: {name}"),
                Some("parameter_unknown"),
                Some(name),
            ));
        }
        fields.insert(name.clone(), value.clone());
    }
    Ok(fields)
}

fn unix_seconds(fields: &BTreeMap<String, String>, name: &str) -> Result<Option<i64>, Reply> {
    fields
        .get(name)
        .map(|text| {
            text.parse::<i64>().map_err(|_| {
                invalid(
                    &format!("Invalid integer: {text}"),
                    Some("parameter_invalid_integer"),
                    Some(name),
                )
            })
        })
        .transpose()
}

fn cursor_missing(param: &str, id: &str, kind: &str) -> Reply {
    stripe_error(
        404,
        "invalid_request_error",
        Some("resource_missing"),
        &format!("No such {kind}: '{id}'"),
        Some(param),
    )
}

/// `Some(Ok(key))`, `None` when absent, `Some(Err(()))` when not UTF-8.
fn idempotency_key(headers: &HeaderMap) -> Option<Result<String, ()>> {
    headers
        .get(IDEMPOTENCY_KEY_HEADER)
        .map(|value| value.to_str().map(str::to_owned).map_err(|_| ()))
}

fn invalid(message: &str, code: Option<&str>, param: Option<&str>) -> Reply {
    stripe_error(400, "invalid_request_error", code, message, param)
}

fn no_such_transfer(id: &str) -> Reply {
    stripe_error(
        404,
        "invalid_request_error",
        Some("resource_missing"),
        &format!("No such transfer: '{id}'"),
        Some("id"),
    )
}

/// Checks names against `allowed` (plus `metadata[…]`) and collects metadata.
fn split_params(params: &[(String, String)], allowed: &[&str]) -> Result<SplitParams, Reply> {
    let mut fields = BTreeMap::new();
    let mut metadata = BTreeMap::new();
    for (name, value) in params {
        if let Some(key) = name
            .strip_prefix("metadata[")
            .and_then(|k| k.strip_suffix(']'))
        {
            metadata.insert(key.to_owned(), value.clone());
        } else if allowed.contains(&name.as_str()) {
            fields.insert(name.clone(), value.clone());
        } else {
            return Err(invalid(
                &format!("Received unknown parameter: {name}"),
                Some("parameter_unknown"),
                Some(name),
            ));
        }
    }
    if metadata.len() > METADATA_KEYS_MAX {
        return Err(invalid(
            &format!("You can specify up to {METADATA_KEYS_MAX} keys in metadata."),
            Some("parameter_invalid_empty"),
            Some("metadata"),
        ));
    }
    Ok((fields, metadata))
}

fn positive_amount(text: &str) -> Result<i64, Reply> {
    match text.parse::<i64>() {
        Ok(amount) if amount > 0 => Ok(amount),
        _ => Err(invalid(
            "Invalid positive integer",
            Some("parameter_invalid_integer"),
            Some("amount"),
        )),
    }
}

fn required<'a>(fields: &'a BTreeMap<String, String>, name: &str) -> Result<&'a str, Reply> {
    fields.get(name).map(String::as_str).ok_or_else(|| {
        invalid(
            &format!("Missing required param: {name}."),
            Some("parameter_missing"),
            Some(name),
        )
    })
}

fn metadata_json(metadata: &BTreeMap<String, String>) -> serde_json::Value {
    json!(metadata)
}

fn reversal_json(reversal: &Reversal) -> serde_json::Value {
    json!({
        "id": reversal.id,
        "object": "transfer_reversal",
        "amount": reversal.amount,
        "balance_transaction": reversal.balance_transaction,
        "created": reversal.created,
        "currency": reversal.currency,
        "destination_payment_refund": null,
        "metadata": metadata_json(&reversal.metadata),
        "source_refund": null,
        "transfer": reversal.transfer,
    })
}

fn transfer_json(transfer: &Transfer) -> serde_json::Value {
    let reversals: Vec<serde_json::Value> = transfer.reversals.iter().map(reversal_json).collect();
    json!({
        "id": transfer.id,
        "object": "transfer",
        "amount": transfer.amount,
        "amount_reversed": transfer.amount_reversed,
        "balance_transaction": transfer.balance_transaction,
        "created": transfer.created,
        "currency": transfer.currency,
        "description": null,
        "destination": transfer.destination,
        "destination_payment": transfer.destination_payment,
        "livemode": false,
        "metadata": metadata_json(&transfer.metadata),
        "reversals": {
            "object": "list",
            "data": reversals,
            "has_more": false,
            "total_count": transfer.reversals.len(),
            "url": format!("/v1/transfers/{}/reversals", transfer.id),
        },
        "reversed": transfer.amount_reversed >= transfer.amount,
        "source_transaction": null,
        "source_type": "card",
        "transfer_group": transfer.transfer_group,
    })
}

/// Order-independent identity of a request, for idempotency-key reuse.
fn fingerprint(route: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut out = route.to_owned();
    for (name, value) in sorted {
        out.push('\u{0}');
        out.push_str(name);
        out.push('=');
        out.push_str(value);
    }
    out
}

impl FakeState {
    /// Stripe's idempotency layer around `run`. `run` returns `Ok` for an
    /// executed request (stored under the key, errors included) and `Err`
    /// for a validation failure (not stored).
    fn idempotent(
        &mut self,
        key: Option<Result<String, ()>>,
        route: String,
        form: Result<Params, String>,
        fault: Option<&Fault>,
        run: impl FnOnce(&mut FakeState, &[(String, String)]) -> Result<Reply, Reply>,
    ) -> Reply {
        let params = match form {
            Ok(params) => params,
            Err(message) => return invalid(&message, None, None),
        };
        let key = match key {
            None => {
                self.counters.stripe_posts_without_idempotency_key += 1;
                None
            }
            Some(Err(())) => return invalid("Invalid idempotency key.", None, None),
            Some(Ok(key)) if key.is_empty() || key.len() > IDEMPOTENCY_KEY_MAX => {
                return invalid(
                    &format!(
                        "Invalid idempotency key: must be 1 to {IDEMPOTENCY_KEY_MAX} characters."
                    ),
                    None,
                    None,
                );
            }
            Some(Ok(key)) => Some(key),
        };
        let fingerprint = fingerprint(&route, &params);
        if let Some(key) = &key
            && self.keys_in_flight.contains(key)
        {
            // Not stored: the other request's result will be.
            let mut reply = stripe_error(
                409,
                "idempotency_error",
                Some("idempotency_key_in_use"),
                &format!(
                    "There is currently another in-progress request using this Idempotent Key (that probably means you submitted twice, and the other request is still going through): {key}. Please try again later."
                ),
                None,
            );
            reply.should_retry = Some(true);
            return reply;
        }
        if let Some(key) = &key
            && let Some(stored) = self.idempotency.get(key)
        {
            if stored.fingerprint == fingerprint {
                let mut reply = Reply::json(stored.status, stored.body.clone());
                reply.replayed = true;
                if stored.status >= 500 {
                    reply.should_retry = Some(false);
                }
                return reply;
            }
            return stripe_error(
                400,
                "idempotency_error",
                None,
                &format!(
                    "Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{key}' if you meant to execute a different request."
                ),
                None,
            );
        }
        match run(self, &params) {
            Err(rejected) => rejected,
            Ok(mut reply) => {
                // The endpoint began executing: whatever it answers is the
                // key's result, an after-effect fault's error included.
                if let Some(Fault::SucceedThenStatus(status)) = fault {
                    reply = api_error(true, *status);
                }
                if let Some(key) = key {
                    let created = self.clock.now();
                    self.idempotency.insert(
                        key,
                        Stored {
                            fingerprint,
                            status: reply.status,
                            body: reply.body.clone(),
                            created,
                        },
                    );
                }
                reply
            }
        }
    }

    fn list_transfers(&self, params: &[(String, String)]) -> Result<Reply, Reply> {
        let fields = list_params(
            params,
            &[
                "limit",
                "starting_after",
                "ending_before",
                "transfer_group",
                "destination",
            ],
            true,
        )?;
        let page = Page::parse(&fields)?;
        let exact = unix_seconds(&fields, "created")?;
        let gte = unix_seconds(&fields, "created[gte]")?;
        let gt = unix_seconds(&fields, "created[gt]")?;
        let lte = unix_seconds(&fields, "created[lte]")?;
        let lt = unix_seconds(&fields, "created[lt]")?;
        let group = fields.get("transfer_group");
        let destination = fields.get("destination");
        let key_of = |t: &&Transfer| (t.created, t.seq);
        let cursor = |param: &str, id: &Option<String>| -> Result<Option<(i64, u64)>, Reply> {
            id.as_ref()
                .map(|id| {
                    self.transfers
                        .get(id)
                        .map(|t| key_of(&t))
                        .ok_or_else(|| cursor_missing(param, id, "transfer"))
                })
                .transpose()
        };
        let after = cursor("starting_after", &page.starting_after)?;
        let before = cursor("ending_before", &page.ending_before)?;
        let matching: Vec<&Transfer> = self
            .transfers_newest_first()
            .into_iter()
            .filter(|t| group.is_none_or(|g| t.transfer_group.as_ref() == Some(g)))
            .filter(|t| destination.is_none_or(|d| t.destination.as_ref() == Some(d)))
            .filter(|t| exact.is_none_or(|c| t.created == c))
            .filter(|t| gte.is_none_or(|c| t.created >= c))
            .filter(|t| gt.is_none_or(|c| t.created > c))
            .filter(|t| lte.is_none_or(|c| t.created <= c))
            .filter(|t| lt.is_none_or(|c| t.created < c))
            .collect();
        let (data, has_more) = page.cut(matching, key_of, after, before);
        let data = data.into_iter().map(transfer_json).collect();
        Ok(list_json("/v1/transfers".to_owned(), data, has_more))
    }

    fn list_reversals(&self, id: &str, params: &[(String, String)]) -> Result<Reply, Reply> {
        let fields = list_params(params, &["limit", "starting_after", "ending_before"], false)?;
        let page = Page::parse(&fields)?;
        let Some(transfer) = self.transfers.get(id) else {
            return Ok(no_such_transfer(id));
        };
        // Newest first: (created, position) descending.
        let mut all: Vec<(usize, &Reversal)> = transfer.reversals.iter().enumerate().collect();
        all.sort_by_key(|r| std::cmp::Reverse((r.1.created, r.0)));
        let key_of = |r: &(usize, &Reversal)| (r.1.created, r.0);
        let cursor =
            |param: &str, cursor: &Option<String>| -> Result<Option<(i64, usize)>, Reply> {
                cursor
                    .as_ref()
                    .map(|rid| {
                        all.iter()
                            .find(|r| &r.1.id == rid)
                            .map(key_of)
                            .ok_or_else(|| cursor_missing(param, rid, "transfer_reversal"))
                    })
                    .transpose()
            };
        let after = cursor("starting_after", &page.starting_after)?;
        let before = cursor("ending_before", &page.ending_before)?;
        let (data, has_more) = page.cut(all.clone(), key_of, after, before);
        let data = data.into_iter().map(|(_, r)| reversal_json(r)).collect();
        Ok(list_json(
            format!("/v1/transfers/{id}/reversals"),
            data,
            has_more,
        ))
    }

    fn create_transfer(&mut self, params: &[(String, String)]) -> Result<Reply, Reply> {
        let (fields, metadata) = split_params(
            params,
            &[
                "amount",
                "currency",
                "destination",
                "transfer_group",
                "description",
                "source_transaction",
            ],
        )?;
        let amount = positive_amount(required(&fields, "amount")?)?;
        let currency = required(&fields, "currency")?;
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_lowercase()) {
            // Stricter than Stripe (which lower-cases): psp.md says lowercase.
            return Err(invalid(
                &format!("Invalid currency: {currency}"),
                Some("parameter_invalid_string"),
                Some("currency"),
            ));
        }
        let destination = required(&fields, "destination")?;
        if !destination.starts_with("acct_") || destination.len() == "acct_".len() {
            return Err(invalid(
                &format!("No such destination: '{destination}'"),
                Some("resource_missing"),
                Some("destination"),
            ));
        }
        if let Some(balance) = self.stripe_balance_minor {
            if amount > balance {
                return Ok(invalid(
                    "You have insufficient available funds in your Stripe account.",
                    Some("balance_insufficient"),
                    None,
                ));
            }
            self.stripe_balance_minor = Some(balance - amount);
        }
        self.transfer_seq += 1;
        let transfer = Transfer {
            id: format!("tr_{}", random_suffix(24)),
            seq: self.transfer_seq,
            amount,
            amount_reversed: 0,
            currency: currency.to_owned(),
            destination: Some(destination.to_owned()),
            transfer_group: fields.get("transfer_group").cloned(),
            metadata,
            created: self.now().timestamp(),
            balance_transaction: format!("txn_{}", random_suffix(24)),
            destination_payment: format!("py_{}", random_suffix(24)),
            reversals: Vec::new(),
        };
        let reply = Reply::json(200, transfer_json(&transfer).to_string());
        self.transfers.insert(transfer.id.clone(), transfer);
        self.counters.transfers_created += 1;
        Ok(reply)
    }

    fn create_reversal(&mut self, id: &str, params: &[(String, String)]) -> Result<Reply, Reply> {
        let (fields, metadata) =
            split_params(params, &["amount", "description", "refund_application_fee"])?;
        let requested = fields
            .get("amount")
            .map(|a| positive_amount(a))
            .transpose()?;
        let created = self.now().timestamp();
        let Some(transfer) = self.transfers.get_mut(id) else {
            return Ok(no_such_transfer(id));
        };
        let remaining = transfer.amount - transfer.amount_reversed;
        if remaining <= 0 {
            return Ok(invalid(
                &format!("The transfer {id} is already fully reversed"),
                None,
                None,
            ));
        }
        let amount = requested.unwrap_or(remaining);
        if amount > remaining {
            return Ok(invalid(
                &format!(
                    "Reversal amount ({amount}) is greater than the amount remaining on the transfer ({remaining})."
                ),
                Some("parameter_invalid_integer"),
                Some("amount"),
            ));
        }
        let reversal = Reversal {
            id: format!("trr_{}", random_suffix(24)),
            amount,
            currency: transfer.currency.clone(),
            transfer: transfer.id.clone(),
            created,
            metadata,
            balance_transaction: format!("txn_{}", random_suffix(24)),
        };
        let reply = Reply::json(200, reversal_json(&reversal).to_string());
        transfer.amount_reversed += amount;
        transfer.reversals.push(reversal);
        if let Some(balance) = self.stripe_balance_minor.as_mut() {
            *balance += amount;
        }
        self.counters.reversals_created += 1;
        Ok(reply)
    }
}
