//! Fake Hyperswitch: `POST /payments`, `GET /payments/{id}`, `POST /refunds`,
//! `GET /refunds/{id}`.
//!
//! **Guarantees:** unknown request fields are a 400 like the real API; ids
//! are unique (`HE_01` on reuse); a refund needs a succeeded payment
//! (`HE_03`) and can never exceed what was captured minus non-failed refunds
//! (`IR_13`); webhooks are emitted only for statuses Hyperswitch announces.
//!
//! Request rules and the error each answers (Hyperswitch's API reference,
//! api-reference.hyperswitch.io, and its `ApiErrorResponse` codes):
//! - a body that does not deserialise into the documented request (unknown
//!   field, wrong type, a `customer_id` over 64 characters or outside
//!   `[A-Za-z0-9_-]`, a `refund_type` other than `instant` / `scheduled`, a
//!   `reason` over 255 characters): 400 `IR_06` "Json deserialize error: …",
//!   since Hyperswitch validates those while deserialising;
//! - `profile_id` missing when the merchant has several profiles
//!   ([`super::FakePsp::require_profile_id`]): 400 `IR_04` "Missing
//!   required param: profile_id" (`MissingRequiredField`); naming another
//!   profile: 404 `HE_02` "Business profile with the given id '…' does not
//!   exist in our records" (`ProfileNotFound`);
//! - a refund `reason` outside `duplicate`, `fraudulent`,
//!   `requested_by_customer` while the connector is `stripe` (psp.md): 400
//!   `IR_07` "Invalid value provided: reason" (`InvalidDataValue`), the
//!   closest documented code, since the refusal really comes from Stripe.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use super::state::{FakeState, Payment, Refund, Reply, guarded, hs_error, iso, random_suffix};
use super::wire::{
    HS_CUSTOMER_ID_MAX, HS_ID_MAX, HS_METADATA_KEYS_MAX as METADATA_KEYS_MAX, HS_REFUND_REASON_MAX,
    HS_REFUND_TYPES, STRIPE_CONNECTOR_REFUND_REASONS, payment_event, refund_event,
};
use super::{Endpoint, FakeError, FakePsp, Fault, PROFILE_ID_DEFAULT, ResourceBehaviour};

pub(super) fn routes() -> Router<FakePsp> {
    Router::new()
        .route("/payments", post(create_payment))
        .route("/payments/{id}", get(get_payment))
        .route("/refunds", post(create_refund))
        .route("/refunds/{id}", get(get_refund))
}

async fn create_payment(State(psp): State<FakePsp>, headers: HeaderMap, body: Bytes) -> Response {
    guarded(&psp, Endpoint::CreatePayment, &headers, |state, fault| {
        state.create_payment(&body, fault)
    })
    .await
}

async fn get_payment(
    State(psp): State<FakePsp>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    guarded(&psp, Endpoint::GetPayment, &headers, |state, fault| {
        state.get_payment(&id, fault)
    })
    .await
}

async fn create_refund(State(psp): State<FakePsp>, headers: HeaderMap, body: Bytes) -> Response {
    guarded(&psp, Endpoint::CreateRefund, &headers, |state, fault| {
        state.create_refund(&body, fault)
    })
    .await
}

async fn get_refund(
    State(psp): State<FakePsp>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    guarded(&psp, Endpoint::GetRefund, &headers, |state, fault| {
        state.get_refund(&id, fault)
    })
    .await
}

/// The documented request fields; anything else is a 400, as in Hyperswitch.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PaymentsRequest {
    amount: i64,
    currency: String,
    payment_id: Option<String>,
    confirm: Option<bool>,
    capture_method: Option<String>,
    customer_id: Option<String>,
    description: Option<String>,
    metadata: Option<serde_json::Value>,
    return_url: Option<String>,
    profile_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefundsRequest {
    payment_id: String,
    refund_id: Option<String>,
    amount: Option<i64>,
    reason: Option<String>,
    refund_type: Option<String>,
    metadata: Option<serde_json::Value>,
}

/// `GET /payments/{id}` shape (also the webhook `object`), in Hyperswitch's
/// field order.
#[derive(Serialize)]
pub(super) struct PaymentJson<'a> {
    payment_id: &'a str,
    merchant_id: &'a str,
    status: &'a str,
    amount: i64,
    net_amount: i64,
    amount_received: Option<i64>,
    connector: &'a str,
    client_secret: &'a str,
    created: String,
    currency: &'a str,
    customer_id: Option<&'a str>,
    description: Option<&'a str>,
    metadata: Option<&'a serde_json::Value>,
    profile_id: &'a str,
    error_code: Option<&'a str>,
    error_message: Option<&'a str>,
    updated: String,
}

/// `GET /refunds/{id}` shape (also the webhook `object`).
#[derive(Serialize)]
pub(super) struct RefundJson<'a> {
    refund_id: &'a str,
    payment_id: &'a str,
    amount: i64,
    currency: &'a str,
    status: &'a str,
    reason: Option<&'a str>,
    metadata: serde_json::Value,
    error_message: Option<&'a str>,
    error_code: Option<&'a str>,
    created_at: String,
    updated_at: String,
    connector: &'a str,
    profile_id: &'a str,
    connector_refund_id: &'a str,
}

fn payment_json<'a>(merchant_id: &'a str, p: &'a Payment) -> PaymentJson<'a> {
    PaymentJson {
        payment_id: &p.payment_id,
        merchant_id,
        status: &p.status,
        amount: p.amount,
        net_amount: p.amount,
        amount_received: p.amount_received,
        connector: &p.connector,
        client_secret: &p.client_secret,
        created: iso(p.created),
        currency: &p.currency,
        customer_id: p.customer_id.as_deref(),
        description: p.description.as_deref(),
        metadata: p.metadata.as_ref(),
        profile_id: &p.profile_id,
        error_code: p.error_code.as_deref(),
        error_message: p.error_message.as_deref(),
        updated: iso(p.updated),
    }
}

fn refund_json(r: &Refund) -> RefundJson<'_> {
    RefundJson {
        refund_id: &r.refund_id,
        payment_id: &r.payment_id,
        amount: r.amount,
        currency: &r.currency,
        status: &r.status,
        reason: r.reason.as_deref(),
        metadata: r
            .metadata
            .clone()
            .unwrap_or_else(|| serde_json::Value::Object(serde_json::Map::new())),
        error_message: r.error_message.as_deref(),
        error_code: r.error_code.as_deref(),
        created_at: iso(r.created_at),
        updated_at: iso(r.updated_at),
        connector: &r.connector,
        profile_id: &r.profile_id,
        connector_refund_id: &r.connector_refund_id,
    }
}

fn ok_json(value: &impl Serialize) -> Reply {
    match serde_json::to_string(value) {
        Ok(body) => Reply::json(200, body),
        Err(e) => hs_error(500, "api", "HE_00", &format!("Something went wrong: {e}")),
    }
}

fn invalid_value(field: &str) -> Reply {
    hs_error(
        400,
        "invalid_request",
        "IR_07",
        &format!("Invalid value provided: {field}"),
    )
}

fn payment_missing() -> Reply {
    hs_error(
        404,
        "invalid_request",
        "HE_02",
        "Payment does not exist in our records",
    )
}

/// Hyperswitch's deserialisation failure (400 `IR_06`).
fn deserialize_error(detail: &str) -> Reply {
    hs_error(
        400,
        "invalid_request",
        "IR_06",
        &format!("Json deserialize error: {detail}"),
    )
}

/// `customer_id`: 1 to 64 characters of `[A-Za-z0-9_-]`.
fn check_customer_id(customer_id: &str) -> Result<(), Reply> {
    let length = customer_id.chars().count();
    if length == 0 || length > HS_CUSTOMER_ID_MAX {
        return Err(deserialize_error(&format!(
            "customer_id: must be between 1 and {HS_CUSTOMER_ID_MAX} characters"
        )));
    }
    if !customer_id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(deserialize_error(
            "customer_id: must consist of only alphanumeric characters, hyphens and underscores",
        ));
    }
    Ok(())
}

/// An ISO 4217 code as Hyperswitch spells it: three uppercase letters.
fn is_currency(code: &str) -> bool {
    code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase())
}

fn check_metadata(metadata: Option<&serde_json::Value>) -> Result<(), Reply> {
    match metadata {
        None | Some(serde_json::Value::Null) => Ok(()),
        Some(serde_json::Value::Object(map)) if map.len() <= METADATA_KEYS_MAX => Ok(()),
        Some(_) => Err(invalid_value("metadata")),
    }
}

impl FakeState {
    fn create_payment(&mut self, body: &[u8], fault: Option<&Fault>) -> Reply {
        let request: PaymentsRequest = match serde_json::from_slice(body) {
            Ok(request) => request,
            Err(e) => {
                return hs_error(
                    400,
                    "invalid_request",
                    "IR_06",
                    &format!("Json deserialize error: {e}"),
                );
            }
        };
        // Read but unused: the fake has no payment methods.
        let _ = (request.confirm, request.capture_method, request.return_url);
        if let Some(customer_id) = &request.customer_id
            && let Err(reply) = check_customer_id(customer_id)
        {
            return reply;
        }
        let profile_id = match self.check_profile_id(request.profile_id) {
            Ok(profile_id) => profile_id,
            Err(reply) => return reply,
        };
        let payment_id = request
            .payment_id
            .unwrap_or_else(|| format!("pay_{}", random_suffix(20)));
        if payment_id.is_empty() || payment_id.chars().count() > HS_ID_MAX {
            return invalid_value("payment_id");
        }
        if request.amount <= 0 {
            return invalid_value("amount");
        }
        if !is_currency(&request.currency) {
            return invalid_value("currency");
        }
        if let Err(reply) = check_metadata(request.metadata.as_ref()) {
            return reply;
        }
        if self.payments.contains_key(&payment_id) {
            return hs_error(
                400,
                "invalid_request",
                "HE_01",
                "The payment with the specified payment_id already exists in our records",
            );
        }
        let behaviour = self
            .payment_overrides
            .get(&payment_id)
            .copied()
            .unwrap_or(self.payment_behaviour);
        let (status, amount_received, error) = match (fault, behaviour) {
            (Some(Fault::ProcessingWithError { code, message }), _) => {
                ("processing", None, Some((code.clone(), message.clone())))
            }
            (_, ResourceBehaviour::AutoSucceed) => ("succeeded", Some(request.amount), None),
            (_, ResourceBehaviour::AutoFail) => ("failed", None, Some(declined())),
            (_, ResourceBehaviour::Hold) => ("processing", None, None),
        };
        let announce = !matches!(fault, Some(Fault::ProcessingWithError { .. }))
            && matches!(status, "succeeded" | "failed");
        let now = self.now();
        let (error_code, error_message) = error.unzip();
        let payment = Payment {
            client_secret: format!("{payment_id}_secret_{}", random_suffix(20)),
            payment_id: payment_id.clone(),
            status: status.to_owned(),
            amount: request.amount,
            amount_received,
            currency: request.currency,
            customer_id: request.customer_id,
            description: request.description,
            metadata: request.metadata,
            profile_id,
            connector: self.connector.clone(),
            error_code,
            error_message,
            created: now,
            updated: now,
        };
        self.payments.insert(payment_id.clone(), payment);
        self.counters.payments_created += 1;
        if announce && let Some(event) = payment_event(status) {
            self.emit_payment(&payment_id, event);
        }
        self.payment_reply(&payment_id, None)
    }

    fn get_payment(&mut self, id: &str, fault: Option<&Fault>) -> Reply {
        let overlay = match fault {
            Some(Fault::ProcessingWithError { code, message }) => Some((code, message)),
            _ => None,
        };
        self.payment_reply(id, overlay)
    }

    /// The payment's JSON, optionally reported as `processing` + error
    /// without changing what is stored.
    fn payment_reply(&self, id: &str, overlay: Option<(&String, &String)>) -> Reply {
        let Some(payment) = self.payments.get(id) else {
            return payment_missing();
        };
        let mut json = payment_json(&self.merchant_id, payment);
        if let Some((code, message)) = overlay {
            json.status = "processing";
            json.error_code = Some(code);
            json.error_message = Some(message);
        }
        ok_json(&json)
    }

    fn create_refund(&mut self, body: &[u8], fault: Option<&Fault>) -> Reply {
        let request: RefundsRequest = match serde_json::from_slice(body) {
            Ok(request) => request,
            Err(e) => {
                return hs_error(
                    400,
                    "invalid_request",
                    "IR_06",
                    &format!("Json deserialize error: {e}"),
                );
            }
        };
        if let Some(refund_type) = &request.refund_type
            && !HS_REFUND_TYPES.contains(&refund_type.as_str())
        {
            return deserialize_error(&format!(
                "refund_type: unknown variant `{refund_type}`, expected `instant` or `scheduled`"
            ));
        }
        if let Some(reason) = &request.reason {
            if reason.chars().count() > HS_REFUND_REASON_MAX {
                return deserialize_error(&format!(
                    "reason: must be at most {HS_REFUND_REASON_MAX} characters"
                ));
            }
            if self.connector == "stripe"
                && !STRIPE_CONNECTOR_REFUND_REASONS.contains(&reason.as_str())
            {
                return invalid_value("reason");
            }
        }
        let refund_id = request
            .refund_id
            .unwrap_or_else(|| format!("ref_{}", random_suffix(20)));
        if refund_id.is_empty() || refund_id.chars().count() > HS_ID_MAX {
            return invalid_value("refund_id");
        }
        if let Err(reply) = check_metadata(request.metadata.as_ref()) {
            return reply;
        }
        let Some(payment) = self.payments.get(&request.payment_id) else {
            return payment_missing();
        };
        if self.refunds.contains_key(&refund_id) {
            return hs_error(
                400,
                "invalid_request",
                "HE_01",
                "Duplicate refund request. Refund already attempted with the refund ID",
            );
        }
        if !matches!(payment.status.as_str(), "succeeded" | "partially_captured") {
            return hs_error(
                400,
                "invalid_request",
                "HE_03",
                "The payment has not succeeded yet. Please pass a successful payment to initiate refund",
            );
        }
        let captured = payment.amount_received.unwrap_or(payment.amount);
        let currency = payment.currency.clone();
        let profile_id = payment.profile_id.clone();
        let amount = request.amount.unwrap_or(captured);
        if amount <= 0 {
            return invalid_value("amount");
        }
        let already_refunded: i64 = self
            .refunds
            .values()
            .filter(|r| r.payment_id == request.payment_id && r.status != "failed")
            .map(|r| r.amount)
            .sum();
        if already_refunded.saturating_add(amount) > captured {
            return hs_error(
                400,
                "invalid_request",
                "IR_13",
                "The refund amount exceeds the amount captured",
            );
        }
        let behaviour = self
            .refund_overrides
            .get(&refund_id)
            .copied()
            .unwrap_or(self.refund_behaviour);
        let (status, error) = match (fault, behaviour) {
            (Some(Fault::ProcessingWithError { code, message }), _) => {
                ("pending", Some((code.clone(), message.clone())))
            }
            (_, ResourceBehaviour::AutoSucceed) => ("succeeded", None),
            (_, ResourceBehaviour::AutoFail) => ("failed", Some(refund_failed())),
            (_, ResourceBehaviour::Hold) => ("pending", None),
        };
        let now = self.now();
        let (error_code, error_message) = error.unzip();
        let refund = Refund {
            refund_id: refund_id.clone(),
            payment_id: request.payment_id,
            amount,
            currency,
            status: status.to_owned(),
            refund_type: request.refund_type,
            reason: request.reason,
            metadata: request.metadata,
            profile_id,
            connector: self.connector.clone(),
            error_code,
            error_message,
            created_at: now,
            updated_at: now,
            connector_refund_id: format!("re_{}", random_suffix(24)),
        };
        self.refunds.insert(refund_id.clone(), refund);
        self.counters.refunds_created += 1;
        if !matches!(fault, Some(Fault::ProcessingWithError { .. }))
            && let Some(event) = refund_event(status)
        {
            self.emit_refund(&refund_id, event);
        }
        self.refund_reply(&refund_id, None)
    }

    fn get_refund(&mut self, id: &str, fault: Option<&Fault>) -> Reply {
        let overlay = match fault {
            Some(Fault::ProcessingWithError { code, message }) => Some((code, message)),
            _ => None,
        };
        self.refund_reply(id, overlay)
    }

    fn refund_reply(&self, id: &str, overlay: Option<(&String, &String)>) -> Reply {
        let Some(refund) = self.refunds.get(id) else {
            return hs_error(
                404,
                "invalid_request",
                "HE_02",
                "Refund does not exist in our records",
            );
        };
        let mut json = refund_json(refund);
        if let Some((code, message)) = overlay {
            json.status = "pending";
            json.error_code = Some(code);
            json.error_message = Some(message);
        }
        ok_json(&json)
    }

    pub(super) fn complete_payment(
        &mut self,
        id: &str,
        status: &str,
    ) -> Result<Option<String>, FakeError> {
        let now = self.now();
        let payment = self
            .payments
            .get_mut(id)
            .ok_or_else(|| FakeError::UnknownPayment(id.to_owned()))?;
        match status {
            "succeeded" | "partially_captured" => {
                payment.amount_received = Some(payment.amount);
                payment.error_code = None;
                payment.error_message = None;
            }
            "failed" => {
                let (code, message) = declined();
                payment.error_code = Some(code);
                payment.error_message = Some(message);
            }
            _ => {}
        }
        status.clone_into(&mut payment.status);
        payment.updated = now;
        Ok(payment_event(status).map(|event| self.emit_payment(id, event)))
    }

    pub(super) fn complete_refund(
        &mut self,
        id: &str,
        status: &str,
    ) -> Result<Option<String>, FakeError> {
        let now = self.now();
        let refund = self
            .refunds
            .get_mut(id)
            .ok_or_else(|| FakeError::UnknownRefund(id.to_owned()))?;
        if status == "failed" {
            let (code, message) = refund_failed();
            refund.error_code = Some(code);
            refund.error_message = Some(message);
        } else {
            refund.error_code = None;
            refund.error_message = None;
        }
        status.clone_into(&mut refund.status);
        refund.updated_at = now;
        Ok(refund_event(status).map(|event| self.emit_refund(id, event)))
    }

    pub(super) fn set_payment_status(&mut self, id: &str, status: &str) -> Result<(), FakeError> {
        let now = self.now();
        let payment = self
            .payments
            .get_mut(id)
            .ok_or_else(|| FakeError::UnknownPayment(id.to_owned()))?;
        status.clone_into(&mut payment.status);
        payment.updated = now;
        Ok(())
    }

    pub(super) fn set_refund_status(&mut self, id: &str, status: &str) -> Result<(), FakeError> {
        let now = self.now();
        let refund = self
            .refunds
            .get_mut(id)
            .ok_or_else(|| FakeError::UnknownRefund(id.to_owned()))?;
        status.clone_into(&mut refund.status);
        refund.updated_at = now;
        Ok(())
    }

    /// The `profile_id` a payment gets, or the refusal.
    fn check_profile_id(&self, given: Option<String>) -> Result<String, Reply> {
        match (&self.required_profile_id, given) {
            (None, given) => Ok(given.unwrap_or_else(|| PROFILE_ID_DEFAULT.to_owned())),
            (Some(_), None) => Err(hs_error(
                400,
                "invalid_request",
                "IR_04",
                "Missing required param: profile_id",
            )),
            (Some(required), Some(given)) if *required == given => Ok(given),
            (Some(_), Some(given)) => Err(hs_error(
                404,
                "invalid_request",
                "HE_02",
                &format!(
                    "Business profile with the given id '{given}' does not exist in our records"
                ),
            )),
        }
    }

    /// Queues a `payment_details` webhook with the payment as it is now.
    fn emit_payment(&mut self, id: &str, event: &str) -> String {
        let object = self
            .payments
            .get(id)
            .and_then(|p| serde_json::to_string(&payment_json(&self.merchant_id, p)).ok())
            .unwrap_or_else(|| "null".to_owned());
        self.emit(event, "payment_details", &object)
    }

    /// Queues a `refund_details` webhook with the refund as it is now.
    fn emit_refund(&mut self, id: &str, event: &str) -> String {
        let object = self
            .refunds
            .get(id)
            .and_then(|r| serde_json::to_string(&refund_json(r)).ok())
            .unwrap_or_else(|| "null".to_owned());
        self.emit(event, "refund_details", &object)
    }
}

fn declined() -> (String, String) {
    (
        "card_declined".to_owned(),
        "Your card was declined.".to_owned(),
    )
}

fn refund_failed() -> (String, String) {
    (
        "refund_failed".to_owned(),
        "The connector declined the refund.".to_owned(),
    )
}
