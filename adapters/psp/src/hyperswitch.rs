//! Hyperswitch REST client: payments and refunds.
//!
//! **Guarantees:**
//! - Idempotency comes from the caller's `payment_id` / `refund_id` (there is
//!   no Idempotency-Key header). A duplicate (`HE_01`) is not an error: the
//!   client GETs the existing object and returns it with
//!   `already_existed: true`, after checking it has the requested amount.
//! - A 200 is never read as success by itself: the view carries `status`
//!   and any `error_code` / `error_message` the body holds.
//! - Every GET uses `force_sync=true`, so a poll reaches the connector.
//! - Limits Hyperswitch enforces (30-character payment/refund ids, 64
//!   characters of `[A-Za-z0-9_-]` for `customer_id` and `profile_id`,
//!   metadata of at most 50 keys with keys up to 40 and values up to 500
//!   characters, positive amounts) are checked before sending: a request
//!   Hyperswitch would refuse is refused here with
//!   [`PspError::InvalidRequest`] and never sent.
//! - A refund is always `refund_type: "instant"` (older Hyperswitch versions
//!   default to `scheduled`, which needs the provider's scheduler) with a
//!   `reason` from the set Stripe accepts ([`RefundReasonCode`]); the buyer's
//!   free text goes in `metadata.reason_text`, cut to the value limit.

use std::collections::BTreeMap;
use std::time::Duration;

use ledger_core::ids::{HYPERSWITCH_ID_MAX, PSP_ID_MAX, PaymentId, PspRefundId, is_hyperswitch_id};
use ledger_core::psp::{PaymentStatus, RefundPspStatus};
use ledger_core::refund::RefundReasonCode;
use ledger_core::{Amount, Currency};
use reqwest::Url;
use reqwest::header::HeaderValue;
use serde::{Deserialize, Serialize};

use crate::error::PspError;
use crate::http::{self, Answer, ErrorBody};
use crate::secret::Secret;

/// Header that carries the Hyperswitch API key.
pub const API_KEY_HEADER: &str = "api-key";
/// Hyperswitch rejects more metadata keys than this (psp.md).
pub const METADATA_KEYS_MAX: usize = 50;
/// Longest metadata key Hyperswitch documents ("key names up to 40
/// characters long").
pub const METADATA_KEY_CHARS_MAX: usize = 40;
/// Longest metadata value Hyperswitch documents ("values up to 500
/// characters long").
pub const METADATA_VALUE_CHARS_MAX: usize = 500;
/// The refund metadata key that carries the buyer's free-text reason.
pub const REFUND_REASON_TEXT_KEY: &str = "reason_text";
/// Every refund is instant: `scheduled` needs the provider's scheduler.
pub const REFUND_TYPE: &str = "instant";
/// Hyperswitch's duplicate-id error code.
pub const DUPLICATE_CODE: &str = "HE_01";

/// `POST /payments`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatePayment {
    /// Derived from the order (`payment_id_for`): the idempotency key.
    pub payment_id: PaymentId,
    pub amount: Amount,
    /// At most 64 characters of `[A-Za-z0-9_-]`; see
    /// `ledger_core::ids::hyperswitch_customer_id`.
    pub customer_id: Option<String>,
    pub description: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

/// A payment as Hyperswitch reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentView {
    pub payment_id: PaymentId,
    pub status: PaymentStatus,
    pub amount: Amount,
    /// `None` until money is captured.
    pub amount_received: Option<Amount>,
    /// For the buyer's front end to confirm the payment.
    pub client_secret: Option<String>,
    /// Non-null even on HTTP 200 when the processor failed (psp.md gotcha).
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    /// True when the create answered `HE_01` and this is the existing object.
    pub already_existed: bool,
}

/// `POST /refunds`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateRefund {
    /// Derived from the ledger refund (`psp_refund_id_for`): the idempotency key.
    pub refund_id: PspRefundId,
    pub payment_id: PaymentId,
    pub amount: Amount,
    /// Sent as Hyperswitch's `reason`.
    pub reason_code: RefundReasonCode,
    /// The buyer's free text, sent as `metadata.reason_text` (cut to
    /// [`METADATA_VALUE_CHARS_MAX`] characters).
    pub reason: Option<String>,
}

/// A refund as Hyperswitch reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundView {
    pub refund_id: PspRefundId,
    pub payment_id: PaymentId,
    pub status: RefundPspStatus,
    pub amount: Amount,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    /// True when the create answered `HE_01` and this is the existing object.
    pub already_existed: bool,
}

/// Client for one Hyperswitch merchant.
#[derive(Debug, Clone)]
pub struct HyperswitchClient {
    http: reqwest::Client,
    base_url: Url,
    api_key: Secret,
    profile_id: Option<String>,
}

impl HyperswitchClient {
    /// `base_url` is the API root (e.g. `https://sandbox.hyperswitch.io`, or
    /// the fake's `…/hs`); `timeout` bounds each whole request.
    pub fn new(
        base_url: impl Into<String>,
        api_key: Secret,
        timeout: Duration,
    ) -> Result<Self, PspError> {
        let base = http::normalise_base(base_url);
        let base_url = Url::parse(&base)
            .map_err(|e| PspError::Config(format!("hyperswitch base url: {e}")))?;
        if base_url.cannot_be_a_base() {
            return Err(PspError::Config(
                "hyperswitch base url cannot be a base".into(),
            ));
        }
        Ok(HyperswitchClient {
            http: http::build_client(timeout)?,
            base_url,
            api_key,
            profile_id: None,
        })
    }

    /// Sends `profile_id` on every `POST /payments` (required when the
    /// merchant has more than one business profile). Refuses an id
    /// Hyperswitch would refuse.
    pub fn with_profile_id(mut self, profile_id: impl Into<String>) -> Result<Self, PspError> {
        let profile_id = profile_id.into();
        if !is_hyperswitch_id(&profile_id) {
            return Err(PspError::Config(format!(
                "hyperswitch profile_id must be 1 to {HYPERSWITCH_ID_MAX} characters of \
                 [A-Za-z0-9_-]"
            )));
        }
        self.profile_id = Some(profile_id);
        Ok(self)
    }

    /// Creates the payment, or returns the existing one on `HE_01`.
    pub async fn create_payment(&self, request: &CreatePayment) -> Result<PaymentView, PspError> {
        const OP: &str = "hyperswitch create_payment";
        let body = self.payment_body(OP, request)?;
        let answer = http::send(OP, self.post(&["payments"])?.json(&body)).await?;
        if answer.is_success() {
            return payment_view(OP, &answer);
        }
        let error = api_error(OP, &answer);
        if !is_duplicate(&error) {
            return Err(error);
        }
        let existing = self.get_payment(&request.payment_id).await?;
        if existing.amount != request.amount {
            return Err(PspError::ExistsWithDifferentParameters {
                op: OP,
                id: request.payment_id.to_string(),
                field: "amount",
            });
        }
        Ok(PaymentView {
            already_existed: true,
            ..existing
        })
    }

    /// `GET /payments/{id}?force_sync=true`. 404 → [`PspError::NotFound`].
    pub async fn get_payment(&self, payment_id: &PaymentId) -> Result<PaymentView, PspError> {
        const OP: &str = "hyperswitch get_payment";
        let request = self.get(&["payments", payment_id.as_str()])?;
        let answer = http::send(OP, request).await?;
        if !answer.is_success() {
            return Err(api_error(OP, &answer));
        }
        payment_view(OP, &answer)
    }

    /// Creates the refund, or returns the existing one on `HE_01`.
    pub async fn create_refund(&self, request: &CreateRefund) -> Result<RefundView, PspError> {
        const OP: &str = "hyperswitch create_refund";
        let body = refund_body(OP, request)?;
        let answer = http::send(OP, self.post(&["refunds"])?.json(&body)).await?;
        if answer.is_success() {
            return refund_view(OP, &answer);
        }
        let error = api_error(OP, &answer);
        if !is_duplicate(&error) {
            return Err(error);
        }
        let existing = self.get_refund(&request.refund_id).await?;
        let field = if existing.payment_id != request.payment_id {
            Some("payment_id")
        } else if existing.amount != request.amount {
            Some("amount")
        } else {
            None
        };
        if let Some(field) = field {
            return Err(PspError::ExistsWithDifferentParameters {
                op: OP,
                id: request.refund_id.to_string(),
                field,
            });
        }
        Ok(RefundView {
            already_existed: true,
            ..existing
        })
    }

    /// `GET /refunds/{id}?force_sync=true`. 404 (`HE_02`) → [`PspError::NotFound`].
    pub async fn get_refund(&self, refund_id: &PspRefundId) -> Result<RefundView, PspError> {
        const OP: &str = "hyperswitch get_refund";
        let request = self.get(&["refunds", refund_id.as_str()])?;
        let answer = http::send(OP, request).await?;
        if !answer.is_success() {
            return Err(api_error(OP, &answer));
        }
        refund_view(OP, &answer)
    }

    /// The `POST /payments` body, after every client-side check.
    fn payment_body<'a>(
        &'a self,
        op: &'static str,
        request: &'a CreatePayment,
    ) -> Result<wire::PaymentsRequest<'a>, PspError> {
        check_psp_id(op, request.payment_id.as_str())?;
        check_amount(op, request.amount)?;
        if let Some(customer_id) = &request.customer_id
            && !is_hyperswitch_id(customer_id)
        {
            return Err(PspError::InvalidRequest {
                op,
                reason: format!(
                    "customer_id {:?} is not 1 to {HYPERSWITCH_ID_MAX} characters of [A-Za-z0-9_-]",
                    crate::error::bounded(customer_id)
                ),
            });
        }
        check_metadata(op, &request.metadata)?;
        Ok(wire::PaymentsRequest {
            amount: request.amount.minor,
            currency: request.amount.currency.as_str(),
            payment_id: request.payment_id.as_str(),
            confirm: false,
            capture_method: "automatic",
            customer_id: request.customer_id.as_deref(),
            description: request.description.as_deref(),
            metadata: (!request.metadata.is_empty()).then_some(&request.metadata),
            profile_id: self.profile_id.as_deref(),
        })
    }

    fn url(&self, segments: &[&str]) -> Result<Url, PspError> {
        let mut url = self.base_url.clone();
        url.path_segments_mut()
            .map_err(|()| PspError::Config("hyperswitch base url cannot be a base".into()))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    fn post(&self, segments: &[&str]) -> Result<reqwest::RequestBuilder, PspError> {
        Ok(self.authorised(self.http.post(self.url(segments)?)))
    }

    fn get(&self, segments: &[&str]) -> Result<reqwest::RequestBuilder, PspError> {
        let mut url = self.url(segments)?;
        url.query_pairs_mut().append_pair("force_sync", "true");
        Ok(self.authorised(self.http.get(url)))
    }

    fn authorised(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match HeaderValue::from_str(self.api_key.expose()) {
            Ok(mut value) => {
                value.set_sensitive(true);
                request.header(API_KEY_HEADER, value)
            }
            // An unprintable key cannot be sent; Hyperswitch answers 401,
            // which is the honest outcome for a broken key.
            Err(_) => request,
        }
    }
}

fn check_psp_id(op: &'static str, id: &str) -> Result<(), PspError> {
    if id.chars().count() > PSP_ID_MAX {
        return Err(PspError::InvalidRequest {
            op,
            reason: format!("id {id:?} is longer than {PSP_ID_MAX} characters"),
        });
    }
    Ok(())
}

/// Hyperswitch's documented metadata limits: at most
/// [`METADATA_KEYS_MAX`] keys, each 1 to [`METADATA_KEY_CHARS_MAX`]
/// characters, values up to [`METADATA_VALUE_CHARS_MAX`] characters.
fn check_metadata(op: &'static str, metadata: &BTreeMap<String, String>) -> Result<(), PspError> {
    let refuse = |reason: String| Err(PspError::InvalidRequest { op, reason });
    if metadata.len() > METADATA_KEYS_MAX {
        return refuse(format!("metadata has more than {METADATA_KEYS_MAX} keys"));
    }
    for (key, value) in metadata {
        let key_chars = key.chars().count();
        if key_chars == 0 || key_chars > METADATA_KEY_CHARS_MAX {
            return refuse(format!(
                "metadata key {:?} is not 1 to {METADATA_KEY_CHARS_MAX} characters",
                crate::error::bounded(key)
            ));
        }
        if value.chars().count() > METADATA_VALUE_CHARS_MAX {
            return refuse(format!(
                "metadata value of {key:?} is longer than {METADATA_VALUE_CHARS_MAX} characters"
            ));
        }
    }
    Ok(())
}

/// The `POST /refunds` body, after every client-side check. The reason code
/// is one of the PSP's set by construction ([`RefundReasonCode`]).
fn refund_body<'a>(
    op: &'static str,
    request: &'a CreateRefund,
) -> Result<wire::RefundsRequest<'a>, PspError> {
    check_psp_id(op, request.refund_id.as_str())?;
    check_amount(op, request.amount)?;
    let mut metadata = BTreeMap::new();
    if let Some(text) = request.reason.as_deref().filter(|t| !t.is_empty()) {
        metadata.insert(
            REFUND_REASON_TEXT_KEY.to_owned(),
            text.chars()
                .take(METADATA_VALUE_CHARS_MAX)
                .collect::<String>(),
        );
    }
    check_metadata(op, &metadata)?;
    Ok(wire::RefundsRequest {
        payment_id: request.payment_id.as_str(),
        refund_id: request.refund_id.as_str(),
        amount: request.amount.minor,
        reason: request.reason_code.as_str(),
        refund_type: REFUND_TYPE,
        metadata: (!metadata.is_empty()).then_some(metadata),
    })
}

fn check_amount(op: &'static str, amount: Amount) -> Result<(), PspError> {
    if !amount.is_positive() {
        return Err(PspError::InvalidRequest {
            op,
            reason: format!("amount {amount} is not positive"),
        });
    }
    Ok(())
}

fn is_duplicate(error: &PspError) -> bool {
    matches!(
        error,
        PspError::Api {
            status: 400..=499,
            ..
        }
    ) && error.code() == Some(DUPLICATE_CODE)
}

/// Hyperswitch 404 with its error shape means the object is missing.
fn api_error(op: &'static str, answer: &Answer) -> PspError {
    http::api_error(op, answer, |status, _: &ErrorBody| status == 404)
}

fn payment_view(op: &'static str, answer: &Answer) -> Result<PaymentView, PspError> {
    let raw: wire::Payment = http::decode(op, answer)?;
    let currency = Currency::parse(&raw.currency).map_err(|e| http::invalid(op, answer, e))?;
    Ok(PaymentView {
        payment_id: PaymentId::new(raw.payment_id).map_err(|e| http::invalid(op, answer, e))?,
        status: PaymentStatus::parse(&raw.status),
        amount: Amount::new(raw.amount, currency),
        amount_received: raw.amount_received.map(|m| Amount::new(m, currency)),
        client_secret: raw.client_secret,
        error_code: raw.error_code,
        error_message: raw.error_message,
        already_existed: false,
    })
}

fn refund_view(op: &'static str, answer: &Answer) -> Result<RefundView, PspError> {
    let raw: wire::Refund = http::decode(op, answer)?;
    let currency = Currency::parse(&raw.currency).map_err(|e| http::invalid(op, answer, e))?;
    Ok(RefundView {
        refund_id: PspRefundId::new(raw.refund_id).map_err(|e| http::invalid(op, answer, e))?,
        payment_id: PaymentId::new(raw.payment_id).map_err(|e| http::invalid(op, answer, e))?,
        status: RefundPspStatus::parse(&raw.status).map_err(|e| http::invalid(op, answer, e))?,
        amount: Amount::new(raw.amount, currency),
        error_code: raw.error_code,
        error_message: raw.error_message,
        already_existed: false,
    })
}

/// Wire shapes. Requests list only documented fields (Hyperswitch rejects
/// unknown ones); responses ignore fields they do not need.
mod wire {
    use super::*;

    #[derive(Debug, Serialize)]
    pub(super) struct PaymentsRequest<'a> {
        pub amount: i64,
        pub currency: &'a str,
        pub payment_id: &'a str,
        pub confirm: bool,
        pub capture_method: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub customer_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub description: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub metadata: Option<&'a BTreeMap<String, String>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub profile_id: Option<&'a str>,
    }

    #[derive(Debug, Serialize)]
    pub(super) struct RefundsRequest<'a> {
        pub payment_id: &'a str,
        pub refund_id: &'a str,
        pub amount: i64,
        pub reason: &'static str,
        pub refund_type: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub metadata: Option<BTreeMap<String, String>>,
    }

    #[derive(Deserialize)]
    pub(super) struct Payment {
        pub payment_id: String,
        pub status: String,
        pub amount: i64,
        pub amount_received: Option<i64>,
        pub currency: String,
        pub client_secret: Option<String>,
        pub error_code: Option<String>,
        pub error_message: Option<String>,
    }

    #[derive(Deserialize)]
    pub(super) struct Refund {
        pub refund_id: String,
        pub payment_id: String,
        pub amount: i64,
        pub currency: String,
        pub status: String,
        pub error_code: Option<String>,
        pub error_message: Option<String>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const OP: &str = "test";

    fn usd(minor: i64) -> Amount {
        Amount::new(minor, Currency::parse("USD").unwrap())
    }

    fn client() -> HyperswitchClient {
        HyperswitchClient::new(
            "http://127.0.0.1:9",
            Secret::new("k"),
            Duration::from_secs(1),
        )
        .unwrap()
    }

    fn payment() -> CreatePayment {
        CreatePayment {
            payment_id: PaymentId::new("pay_1").unwrap(),
            amount: usd(6540),
            customer_id: Some("buyer-1".into()),
            description: Some("order o-1".into()),
            metadata: BTreeMap::from([("order_id".to_owned(), "o-1".to_owned())]),
        }
    }

    fn refund() -> CreateRefund {
        CreateRefund {
            refund_id: PspRefundId::new("ref_1").unwrap(),
            payment_id: PaymentId::new("pay_1").unwrap(),
            amount: usd(600),
            reason_code: RefundReasonCode::RequestedByCustomer,
            reason: Some("arrived broken".into()),
        }
    }

    fn payment_json(client: &HyperswitchClient, request: &CreatePayment) -> Value {
        serde_json::to_value(client.payment_body(OP, request).unwrap()).unwrap()
    }

    fn refund_json(request: &CreateRefund) -> Value {
        serde_json::to_value(refund_body(OP, request).unwrap()).unwrap()
    }

    fn refused(result: Result<impl std::fmt::Debug, PspError>) -> String {
        match result {
            Err(PspError::InvalidRequest { reason, .. }) => reason,
            other => panic!("expected InvalidRequest, got {other:?}"),
        }
    }

    #[test]
    fn payment_body_is_exactly_the_documented_fields() {
        assert_eq!(
            payment_json(&client(), &payment()),
            json!({
                "amount": 6540,
                "currency": "USD",
                "payment_id": "pay_1",
                "confirm": false,
                "capture_method": "automatic",
                "customer_id": "buyer-1",
                "description": "order o-1",
                "metadata": {"order_id": "o-1"}
            })
        );
    }

    #[test]
    fn a_configured_profile_id_is_sent_on_payment_create() {
        let client = client().with_profile_id("pro_abc_123-X").unwrap();
        let body = payment_json(&client, &payment());
        assert_eq!(body["profile_id"], "pro_abc_123-X");
        let mut bare = payment();
        bare.customer_id = None;
        bare.description = None;
        bare.metadata.clear();
        assert_eq!(
            payment_json(&client, &bare),
            json!({
                "amount": 6540,
                "currency": "USD",
                "payment_id": "pay_1",
                "confirm": false,
                "capture_method": "automatic",
                "profile_id": "pro_abc_123-X"
            })
        );
    }

    #[test]
    fn a_bad_profile_id_is_refused_at_construction() {
        for bad in [
            "",
            "pro abc",
            "pro.abc",
            "é",
            &"p".repeat(HYPERSWITCH_ID_MAX + 1),
        ] {
            let error = client().with_profile_id(bad).unwrap_err();
            assert!(matches!(error, PspError::Config(_)), "{bad:?}: {error}");
        }
        assert!(
            client()
                .with_profile_id("p".repeat(HYPERSWITCH_ID_MAX))
                .is_ok()
        );
    }

    #[test]
    fn customer_ids_hyperswitch_would_refuse_are_not_sent() {
        for bad in [
            "",
            "jane@example.com",
            "a b",
            &"c".repeat(HYPERSWITCH_ID_MAX + 1),
        ] {
            let mut request = payment();
            request.customer_id = Some(bad.to_owned());
            let reason = refused(client().payment_body(OP, &request));
            assert!(reason.contains("customer_id"), "{reason}");
        }
        let mut longest = payment();
        longest.customer_id = Some("c".repeat(HYPERSWITCH_ID_MAX));
        assert!(client().payment_body(OP, &longest).is_ok());
    }

    #[test]
    fn metadata_limits_are_checked_before_sending() {
        let mut at_limits = payment();
        at_limits.metadata = (0..METADATA_KEYS_MAX)
            .map(|i| {
                (
                    format!("{i:0>width$}", width = METADATA_KEY_CHARS_MAX),
                    "é".repeat(METADATA_VALUE_CHARS_MAX),
                )
            })
            .collect();
        assert!(client().payment_body(OP, &at_limits).is_ok());

        let mut too_many = payment();
        too_many.metadata = (0..=METADATA_KEYS_MAX)
            .map(|i| (format!("k{i}"), "v".to_owned()))
            .collect();
        assert!(refused(client().payment_body(OP, &too_many)).contains("keys"));

        let mut long_key = payment();
        long_key.metadata =
            BTreeMap::from([("k".repeat(METADATA_KEY_CHARS_MAX + 1), "v".to_owned())]);
        assert!(refused(client().payment_body(OP, &long_key)).contains("key"));

        let mut empty_key = payment();
        empty_key.metadata = BTreeMap::from([(String::new(), "v".to_owned())]);
        refused(client().payment_body(OP, &empty_key));

        let mut long_value = payment();
        long_value.metadata =
            BTreeMap::from([("k".to_owned(), "v".repeat(METADATA_VALUE_CHARS_MAX + 1))]);
        assert!(refused(client().payment_body(OP, &long_value)).contains("value"));
    }

    #[test]
    fn refund_body_is_instant_with_a_psp_reason_and_the_text_in_metadata() {
        assert_eq!(
            refund_json(&refund()),
            json!({
                "payment_id": "pay_1",
                "refund_id": "ref_1",
                "amount": 600,
                "reason": "requested_by_customer",
                "refund_type": "instant",
                "metadata": {"reason_text": "arrived broken"}
            })
        );
    }

    #[test]
    fn each_reason_code_maps_to_the_hyperswitch_reason() {
        for (code, wire) in [
            (RefundReasonCode::Duplicate, "duplicate"),
            (RefundReasonCode::Fraudulent, "fraudulent"),
            (
                RefundReasonCode::RequestedByCustomer,
                "requested_by_customer",
            ),
        ] {
            let mut request = refund();
            request.reason_code = code;
            assert_eq!(refund_json(&request)["reason"], wire);
        }
    }

    #[test]
    fn refund_without_free_text_sends_no_metadata() {
        for reason in [None, Some(String::new())] {
            let mut request = refund();
            request.reason = reason;
            let body = refund_json(&request);
            assert!(body.get("metadata").is_none(), "{body}");
            assert_eq!(body["reason"], "requested_by_customer");
        }
    }

    #[test]
    fn long_free_text_is_cut_to_the_metadata_value_limit() {
        let mut request = refund();
        request.reason = Some("ü".repeat(1_000));
        let body = refund_json(&request);
        let text = body["metadata"][REFUND_REASON_TEXT_KEY].as_str().unwrap();
        assert_eq!(text.chars().count(), METADATA_VALUE_CHARS_MAX);
        assert!(text.chars().all(|c| c == 'ü'));
    }

    #[test]
    fn refund_ids_and_amounts_are_still_checked() {
        let mut long_id = refund();
        long_id.refund_id = PspRefundId::new("r".repeat(PSP_ID_MAX + 1)).unwrap();
        refused(refund_body(OP, &long_id));
        let mut zero = refund();
        zero.amount = usd(0);
        refused(refund_body(OP, &zero));
    }
}
