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
//! - Limits Hyperswitch enforces (30-character ids, 50 metadata keys,
//!   positive amounts) are checked before sending.

use std::collections::BTreeMap;
use std::time::Duration;

use ledger_core::ids::{PSP_ID_MAX, PaymentId, PspRefundId};
use ledger_core::psp::{PaymentStatus, RefundPspStatus};
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
/// Hyperswitch's duplicate-id error code.
pub const DUPLICATE_CODE: &str = "HE_01";

/// `POST /payments`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatePayment {
    /// Derived from the order (`payment_id_for`): the idempotency key.
    pub payment_id: PaymentId,
    pub amount: Amount,
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
        })
    }

    /// Creates the payment, or returns the existing one on `HE_01`.
    pub async fn create_payment(&self, request: &CreatePayment) -> Result<PaymentView, PspError> {
        const OP: &str = "hyperswitch create_payment";
        check_psp_id(OP, request.payment_id.as_str())?;
        check_amount(OP, request.amount)?;
        if request.metadata.len() > METADATA_KEYS_MAX {
            return Err(PspError::InvalidRequest {
                op: OP,
                reason: format!("metadata has more than {METADATA_KEYS_MAX} keys"),
            });
        }
        let body = wire::PaymentsRequest {
            amount: request.amount.minor,
            currency: request.amount.currency.as_str(),
            payment_id: request.payment_id.as_str(),
            confirm: false,
            capture_method: "automatic",
            customer_id: request.customer_id.as_deref(),
            description: request.description.as_deref(),
            metadata: (!request.metadata.is_empty()).then_some(&request.metadata),
        };
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
        check_psp_id(OP, request.refund_id.as_str())?;
        check_amount(OP, request.amount)?;
        let body = wire::RefundsRequest {
            payment_id: request.payment_id.as_str(),
            refund_id: request.refund_id.as_str(),
            amount: request.amount.minor,
            reason: request.reason.as_deref(),
        };
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

    #[derive(Serialize)]
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
    }

    #[derive(Serialize)]
    pub(super) struct RefundsRequest<'a> {
        pub payment_id: &'a str,
        pub refund_id: &'a str,
        pub amount: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub reason: Option<&'a str>,
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
