//! Fake Stripe Connect: `POST /v1/transfers`, `GET /v1/transfers/{id}`,
//! `POST /v1/transfers/{id}/reversals`.
//!
//! **Guarantees:** form bodies and Bearer auth only; an executed POST under
//! an `Idempotency-Key` is stored and replayed byte for byte (errors
//! included), a reused key with other parameters is `idempotency_error`;
//! reversals never exceed the transfer (`amount_reversed <= amount`).

use std::collections::BTreeMap;

use axum::Form;
use axum::Router;
use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use serde_json::json;

use super::state::{
    FakeState, Reply, Reversal, Stored, Transfer, guarded, random_suffix, stripe_error,
};
use super::{Endpoint, FakePsp};
use crate::stripe::{IDEMPOTENCY_KEY_HEADER, IDEMPOTENCY_KEY_MAX, METADATA_KEYS_MAX};

type Params = Vec<(String, String)>;
/// Plain fields and `metadata[…]` entries of a form.
type SplitParams = (BTreeMap<String, String>, BTreeMap<String, String>);

pub(super) fn routes() -> Router<FakePsp> {
    Router::new()
        .route("/v1/transfers", post(create_transfer))
        .route("/v1/transfers/{id}", get(get_transfer))
        .route("/v1/transfers/{id}/reversals", post(create_reversal))
}

async fn create_transfer(
    State(psp): State<FakePsp>,
    headers: HeaderMap,
    form: Result<Form<Params>, FormRejection>,
) -> Response {
    let key = idempotency_key(&headers);
    let form = form.map(|Form(params)| params).map_err(|e| e.body_text());
    guarded(&psp, Endpoint::CreateTransfer, &headers, |state, _| {
        state.idempotent(
            key,
            "POST /v1/transfers".to_owned(),
            form,
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
    guarded(&psp, Endpoint::CreateReversal, &headers, |state, _| {
        state.idempotent(key, route, form, |state, params| {
            state.create_reversal(&id, params)
        })
    })
    .await
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
            && let Some(stored) = self.idempotency.get(key)
        {
            if stored.fingerprint == fingerprint {
                return Reply {
                    status: stored.status,
                    body: stored.body.clone(),
                    replayed: true,
                };
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
            Ok(reply) => {
                if let Some(key) = key {
                    self.idempotency.insert(
                        key,
                        Stored {
                            fingerprint,
                            status: reply.status,
                            body: reply.body.clone(),
                        },
                    );
                }
                reply
            }
        }
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
        let transfer = Transfer {
            id: format!("tr_{}", random_suffix(24)),
            amount,
            amount_reversed: 0,
            currency: currency.to_owned(),
            destination: destination.to_owned(),
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
