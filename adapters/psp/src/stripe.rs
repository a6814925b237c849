//! Stripe Connect client: seller transfers and their reversals.
//!
//! **Guarantees:**
//! - Every POST carries an `Idempotency-Key` derived from the ledger id and
//!   the caller's `attempt` (`transfer:{id}:{attempt}`,
//!   `reversal:{id}:{attempt}`), so a retry after a transient error can
//!   never move money twice. Moving `attempt` on is the caller's decision,
//!   and only after a definitive error ([`PspError::is_transient`] false).
//! - Bodies are form-encoded with a lowercase currency, as Stripe expects.
//! - `NotFound` means Stripe's `resource_missing`, nothing else.
//! - [`StripeClient::reverse_transfer`] never POSTs a reversal for a transfer
//!   that a GET shows fully reversed; the "already fully reversed" message is
//!   only a fallback for the race between that GET and the POST.
//! - Every transfer and reversal carries the ledger's ids and the attempt in
//!   its `metadata`, so a lost answer can be found again by reading
//!   ([`StripeClient::list_transfers`], [`StripeClient::list_reversals`])
//!   instead of writing again.
//! - A value the client cannot read (an unknown currency, a null where the
//!   ledger needs a value) is a [`PspError::Decode`] naming the field; it is
//!   never retried as if it were transient.

use std::collections::BTreeMap;
use std::time::Duration;

use ledger_core::ids::{SellerAccount, StripeReversalId, StripeTransferId, TransferId};
use ledger_core::{Amount, Currency};
use reqwest::Url;
use serde::Deserialize;

use crate::error::PspError;
use crate::http::{self, Answer, ErrorBody};
use crate::secret::Secret;

/// Header Stripe reads the idempotency key from.
pub const IDEMPOTENCY_KEY_HEADER: &str = "Idempotency-Key";
/// Stripe refuses longer idempotency keys.
pub const IDEMPOTENCY_KEY_MAX: usize = 255;
/// Stripe refuses more metadata keys than this.
pub const METADATA_KEYS_MAX: usize = 50;
/// Stripe's error code for a missing object.
pub const RESOURCE_MISSING: &str = "resource_missing";
/// Header that pins the API version of a request; without it the account's
/// default version applies.
pub const STRIPE_VERSION_HEADER: &str = "Stripe-Version";
/// The API version every request pins unless told otherwise: the current
/// version named on Stripe's versioning page
/// (<https://docs.stripe.com/api-versions>, "The current version of the API
/// is 2026-09-30.endive") when this was written.
pub const DEFAULT_API_VERSION: &str = "2026-09-30.endive";
/// Longest `Stripe-Version` accepted; real ones are about 20 characters.
pub const API_VERSION_MAX: usize = 64;

/// `Ok` when `version` can be sent as `Stripe-Version`: 1 to
/// [`API_VERSION_MAX`] printable ASCII characters, no whitespace. Stripe
/// itself decides whether it names a real version.
pub fn check_api_version(version: &str) -> Result<(), String> {
    if version.is_empty() {
        return Err("empty".to_owned());
    }
    if version.len() > API_VERSION_MAX {
        return Err(format!("longer than {API_VERSION_MAX} characters"));
    }
    if !version.chars().all(|c| c.is_ascii_graphic()) {
        return Err("not printable ASCII without whitespace".to_owned());
    }
    Ok(())
}

/// `Idempotency-Key` of a transfer attempt.
pub fn transfer_idempotency_key(transfer_id: TransferId, attempt: u32) -> String {
    format!("transfer:{transfer_id}:{attempt}")
}

/// `Idempotency-Key` of a reversal attempt.
pub fn reversal_idempotency_key(reversal_key_id: TransferId, attempt: u32) -> String {
    format!("reversal:{reversal_key_id}:{attempt}")
}

/// `POST /v1/transfers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateTransfer {
    pub transfer_id: TransferId,
    /// Part of the idempotency key; bumped by the caller only after a
    /// definitive error.
    pub attempt: u32,
    pub amount: Amount,
    pub destination: SellerAccount,
    pub transfer_group: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

/// A transfer as Stripe reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferView {
    pub id: StripeTransferId,
    pub amount: Amount,
    pub amount_reversed: Amount,
    pub reversed: bool,
    /// Nullable in Stripe's reference; `None` when Stripe sent null.
    pub destination: Option<SellerAccount>,
    pub transfer_group: Option<String>,
    pub metadata: BTreeMap<String, String>,
    /// Unix seconds.
    pub created: i64,
}

impl TransferView {
    /// Nothing is left to reverse.
    pub fn is_fully_reversed(&self) -> bool {
        self.reversed || self.amount_reversed.minor >= self.amount.minor
    }
}

/// A reversal as Stripe reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReversalView {
    pub id: StripeReversalId,
    pub amount: Amount,
    pub transfer: StripeTransferId,
    pub metadata: BTreeMap<String, String>,
}

/// `GET /v1/transfers` filters. Every page is read (`has_more`), at most
/// [`LIST_PAGES_MAX`] pages of [`LIST_PAGE_SIZE`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransferFilter {
    pub transfer_group: Option<String>,
    /// `created[gte]`, unix seconds.
    pub created_gte: Option<i64>,
    /// `created[lt]`, unix seconds.
    pub created_lt: Option<i64>,
}

/// Stripe's largest page.
pub const LIST_PAGE_SIZE: u32 = 100;
/// Pages one listing reads at most (10,000 objects): a window larger than
/// that must be split by the caller, and says so instead of silently
/// stopping.
pub const LIST_PAGES_MAX: u32 = 100;

/// What [`StripeClient::reverse_transfer`] achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReversalOutcome {
    Reversed(ReversalView),
    /// Nothing was left to reverse; no new reversal exists.
    AlreadyReversed {
        amount_reversed: Amount,
    },
}

/// Client for the platform's Stripe account.
#[derive(Debug, Clone)]
pub struct StripeClient {
    http: reqwest::Client,
    base_url: Url,
    secret_key: Secret,
    api_version: String,
}

impl StripeClient {
    /// `base_url` is the API root without `/v1` (e.g. `https://api.stripe.com`,
    /// or the fake's `…/stripe`).
    pub fn new(
        base_url: impl Into<String>,
        secret_key: Secret,
        timeout: Duration,
    ) -> Result<Self, PspError> {
        let base = http::normalise_base(base_url);
        let base_url =
            Url::parse(&base).map_err(|e| PspError::Config(format!("stripe base url: {e}")))?;
        if base_url.cannot_be_a_base() {
            return Err(PspError::Config("stripe base url cannot be a base".into()));
        }
        Ok(StripeClient {
            http: http::build_client(timeout)?,
            base_url,
            secret_key,
            api_version: DEFAULT_API_VERSION.to_owned(),
        })
    }

    /// Every transfer matching `filter`, newest first, all pages.
    pub async fn list_transfers(
        &self,
        filter: &TransferFilter,
    ) -> Result<Vec<TransferView>, PspError> {
        const OP: &str = "stripe list_transfers";
        let mut query = vec![("limit".to_owned(), LIST_PAGE_SIZE.to_string())];
        if let Some(group) = &filter.transfer_group {
            query.push(("transfer_group".to_owned(), group.clone()));
        }
        if let Some(gte) = filter.created_gte {
            query.push(("created[gte]".to_owned(), gte.to_string()));
        }
        if let Some(lt) = filter.created_lt {
            query.push(("created[lt]".to_owned(), lt.to_string()));
        }
        let raw: Vec<wire::Transfer> = self.list(OP, &["v1", "transfers"], query).await?;
        raw.into_iter().map(|t| transfer_from_wire(OP, t)).collect()
    }

    /// Every reversal of a transfer, newest first, all pages.
    pub async fn list_reversals(
        &self,
        stripe_transfer_id: &StripeTransferId,
    ) -> Result<Vec<ReversalView>, PspError> {
        const OP: &str = "stripe list_reversals";
        let segments = ["v1", "transfers", stripe_transfer_id.as_str(), "reversals"];
        let query = vec![("limit".to_owned(), LIST_PAGE_SIZE.to_string())];
        let raw: Vec<wire::Reversal> = self.list(OP, &segments, query).await?;
        raw.into_iter().map(|r| reversal_from_wire(OP, r)).collect()
    }

    /// Reads a Stripe list to its end with `starting_after` cursors.
    async fn list<T: serde::de::DeserializeOwned + HasId>(
        &self,
        op: &'static str,
        segments: &[&str],
        query: Vec<(String, String)>,
    ) -> Result<Vec<T>, PspError> {
        let mut out: Vec<T> = Vec::new();
        for _ in 0..LIST_PAGES_MAX {
            let mut page_query = query.clone();
            if let Some(last) = out.last() {
                page_query.push(("starting_after".to_owned(), last.id().to_owned()));
            }
            let request = self
                .get_request(op, self.url(segments)?)?
                .query(&page_query);
            let answer = http::send(op, request).await?;
            if !answer.is_success() {
                return Err(api_error(op, &answer));
            }
            let page: wire::List<T> = http::decode(op, &answer)?;
            let has_more = page.has_more && !page.data.is_empty();
            out.extend(page.data);
            if !has_more {
                return Ok(out);
            }
        }
        Err(PspError::InvalidRequest {
            op,
            reason: format!(
                "more than {} objects match; narrow the window",
                u64::from(LIST_PAGES_MAX) * u64::from(LIST_PAGE_SIZE)
            ),
        })
    }

    /// Pins `Stripe-Version` to `version` instead of [`DEFAULT_API_VERSION`].
    /// A version [`check_api_version`] refuses makes every call fail with
    /// [`PspError::InvalidRequest`] before anything is sent.
    pub fn with_api_version(mut self, version: impl Into<String>) -> Self {
        self.api_version = version.into();
        self
    }

    /// Creates the transfer under `transfer:{transfer_id}:{attempt}`.
    pub async fn create_transfer(
        &self,
        request: &CreateTransfer,
    ) -> Result<TransferView, PspError> {
        const OP: &str = "stripe create_transfer";
        if !request.amount.is_positive() {
            return Err(PspError::InvalidRequest {
                op: OP,
                reason: format!("amount {} is not positive", request.amount),
            });
        }
        if request.metadata.len() > METADATA_KEYS_MAX {
            return Err(PspError::InvalidRequest {
                op: OP,
                reason: format!("metadata has more than {METADATA_KEYS_MAX} keys"),
            });
        }
        let mut form = vec![
            ("amount".to_owned(), request.amount.minor.to_string()),
            ("currency".to_owned(), lower(request.amount.currency)),
            ("destination".to_owned(), request.destination.to_string()),
        ];
        if let Some(group) = &request.transfer_group {
            form.push(("transfer_group".to_owned(), group.clone()));
        }
        for (key, value) in &request.metadata {
            form.push((format!("metadata[{key}]"), value.clone()));
        }
        let key = transfer_idempotency_key(request.transfer_id, request.attempt);
        let answer = self.post(OP, &["v1", "transfers"], &key, &form).await?;
        if !answer.is_success() {
            return Err(api_error(OP, &answer));
        }
        transfer_view(OP, &answer)
    }

    /// `GET /v1/transfers/{id}`.
    pub async fn get_transfer(&self, id: &StripeTransferId) -> Result<TransferView, PspError> {
        const OP: &str = "stripe get_transfer";
        let url = self.url(&["v1", "transfers", id.as_str()])?;
        let answer = http::send(OP, self.get_request(OP, url)?).await?;
        if !answer.is_success() {
            return Err(api_error(OP, &answer));
        }
        transfer_view(OP, &answer)
    }

    /// `POST /v1/transfers/{id}/reversals` under `reversal:{reversal_key_id}:{attempt}`.
    /// `amount: None` reverses whatever remains. Prefer
    /// [`StripeClient::reverse_transfer`], which checks first.
    pub async fn create_reversal(
        &self,
        stripe_transfer_id: &StripeTransferId,
        reversal: &CreateReversal,
    ) -> Result<ReversalView, PspError> {
        const OP: &str = "stripe create_reversal";
        let CreateReversal {
            reversal_key_id,
            attempt,
            amount,
            metadata,
        } = reversal;
        let (reversal_key_id, attempt, amount) = (*reversal_key_id, *attempt, *amount);
        if metadata.len() > METADATA_KEYS_MAX {
            return Err(PspError::InvalidRequest {
                op: OP,
                reason: format!("metadata has more than {METADATA_KEYS_MAX} keys"),
            });
        }
        let mut form: Vec<(String, String)> = metadata
            .iter()
            .map(|(key, value)| (format!("metadata[{key}]"), value.clone()))
            .collect();
        if let Some(amount) = amount {
            if !amount.is_positive() {
                return Err(PspError::InvalidRequest {
                    op: OP,
                    reason: format!("amount {amount} is not positive"),
                });
            }
            form.push(("amount".to_owned(), amount.minor.to_string()));
        }
        let key = reversal_idempotency_key(reversal_key_id, attempt);
        let segments = ["v1", "transfers", stripe_transfer_id.as_str(), "reversals"];
        let answer = self.post(OP, &segments, &key, &form).await?;
        if !answer.is_success() {
            return Err(api_error(OP, &answer));
        }
        let raw: wire::Reversal = http::decode(OP, &answer)?;
        reversal_from_wire(OP, raw)
    }

    /// Reverses a transfer unless it is already fully reversed.
    ///
    /// GETs the transfer first: fully reversed → `AlreadyReversed` without a
    /// POST. Otherwise POSTs; if Stripe answers "already fully reversed" (a
    /// reversal landed in between), that is `AlreadyReversed` too, with the
    /// whole transfer amount reversed. Every other error is returned as is.
    pub async fn reverse_transfer(
        &self,
        stripe_transfer_id: &StripeTransferId,
        reversal: &CreateReversal,
    ) -> Result<ReversalOutcome, PspError> {
        let transfer = self.get_transfer(stripe_transfer_id).await?;
        if transfer.is_fully_reversed() {
            return Ok(ReversalOutcome::AlreadyReversed {
                amount_reversed: transfer.amount_reversed,
            });
        }
        match self.create_reversal(stripe_transfer_id, reversal).await {
            Ok(reversal) => Ok(ReversalOutcome::Reversed(reversal)),
            Err(error) if error.is_already_fully_reversed() => {
                tracing::info!(
                    transfer = %stripe_transfer_id,
                    "stripe reported the transfer already fully reversed after a GET showed it was not"
                );
                Ok(ReversalOutcome::AlreadyReversed {
                    amount_reversed: transfer.amount,
                })
            }
            Err(error) => Err(error),
        }
    }

    async fn post(
        &self,
        op: &'static str,
        segments: &[&str],
        idempotency_key: &str,
        form: &[(String, String)],
    ) -> Result<Answer, PspError> {
        if idempotency_key.len() > IDEMPOTENCY_KEY_MAX {
            return Err(PspError::InvalidRequest {
                op,
                reason: format!("idempotency key is longer than {IDEMPOTENCY_KEY_MAX}"),
            });
        }
        let request = self
            .http
            .post(self.url(segments)?)
            .bearer_auth(self.secret_key.expose())
            .header(IDEMPOTENCY_KEY_HEADER, idempotency_key)
            .form(form);
        http::send(op, self.versioned(op, request)?).await
    }

    fn versioned(
        &self,
        op: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, PspError> {
        check_api_version(&self.api_version).map_err(|reason| PspError::InvalidRequest {
            op,
            reason: format!("{STRIPE_VERSION_HEADER}: {reason}"),
        })?;
        Ok(request.header(STRIPE_VERSION_HEADER, self.api_version.as_str()))
    }

    fn get_request(&self, op: &'static str, url: Url) -> Result<reqwest::RequestBuilder, PspError> {
        let request = self.http.get(url).bearer_auth(self.secret_key.expose());
        self.versioned(op, request)
    }

    fn url(&self, segments: &[&str]) -> Result<Url, PspError> {
        let mut url = self.base_url.clone();
        url.path_segments_mut()
            .map_err(|()| PspError::Config("stripe base url cannot be a base".into()))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }
}

fn lower(currency: Currency) -> String {
    currency.as_str().to_ascii_lowercase()
}

/// Stripe: only `resource_missing` means the object is missing.
fn api_error(op: &'static str, answer: &Answer) -> PspError {
    http::api_error(op, answer, |_, error: &ErrorBody| {
        error.code.as_deref() == Some(RESOURCE_MISSING)
    })
}

fn transfer_view(op: &'static str, answer: &Answer) -> Result<TransferView, PspError> {
    let raw: wire::Transfer = http::decode(op, answer)?;
    transfer_from_wire(op, raw)
}

/// A `Decode` error naming the field and the value that could not be read.
fn unreadable(op: &'static str, field: &str, value: impl std::fmt::Display) -> PspError {
    PspError::Decode {
        op,
        status: 200,
        reason: crate::error::bounded(&format!("{field}: {value}")),
    }
}

fn parse_currency(op: &'static str, text: &str) -> Result<Currency, PspError> {
    Currency::parse(&text.to_ascii_uppercase()).map_err(|e| unreadable(op, "currency", e))
}

fn transfer_from_wire(op: &'static str, raw: wire::Transfer) -> Result<TransferView, PspError> {
    let currency = parse_currency(op, &raw.currency)?;
    let destination = match raw.destination {
        Some(d) => Some(SellerAccount::new(d).map_err(|e| unreadable(op, "destination", e))?),
        None => None,
    };
    Ok(TransferView {
        id: StripeTransferId::new(raw.id).map_err(|e| unreadable(op, "id", e))?,
        amount: Amount::new(raw.amount, currency),
        amount_reversed: Amount::new(raw.amount_reversed, currency),
        reversed: raw.reversed,
        destination,
        transfer_group: raw.transfer_group,
        metadata: raw.metadata,
        created: raw.created,
    })
}

fn reversal_from_wire(op: &'static str, raw: wire::Reversal) -> Result<ReversalView, PspError> {
    let currency = parse_currency(op, &raw.currency)?;
    Ok(ReversalView {
        id: StripeReversalId::new(raw.id).map_err(|e| unreadable(op, "id", e))?,
        amount: Amount::new(raw.amount, currency),
        transfer: StripeTransferId::new(raw.transfer).map_err(|e| unreadable(op, "transfer", e))?,
        metadata: raw.metadata,
    })
}

/// List items are paged by their `id`.
trait HasId {
    fn id(&self) -> &str;
}

impl HasId for wire::Transfer {
    fn id(&self) -> &str {
        &self.id
    }
}

impl HasId for wire::Reversal {
    fn id(&self) -> &str {
        &self.id
    }
}

/// `POST /v1/transfers/{id}/reversals`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateReversal {
    /// With `attempt`, the idempotency key `reversal:{reversal_key_id}:{attempt}`.
    pub reversal_key_id: TransferId,
    pub attempt: u32,
    /// `None` reverses whatever remains.
    pub amount: Option<Amount>,
    pub metadata: BTreeMap<String, String>,
}

mod wire {
    use super::*;

    /// Stripe's reference: `destination` and `transfer_group` are nullable;
    /// `metadata` is always an object.
    #[derive(Deserialize)]
    pub(super) struct Transfer {
        pub id: String,
        pub amount: i64,
        pub amount_reversed: i64,
        pub currency: String,
        pub reversed: bool,
        pub destination: Option<String>,
        #[serde(default)]
        pub transfer_group: Option<String>,
        #[serde(default)]
        pub metadata: BTreeMap<String, String>,
        #[serde(default)]
        pub created: i64,
    }

    #[derive(Deserialize)]
    pub(super) struct Reversal {
        pub id: String,
        pub amount: i64,
        pub currency: String,
        pub transfer: String,
        #[serde(default)]
        pub metadata: BTreeMap<String, String>,
    }

    /// `{"object":"list","data":[…],"has_more":…}`.
    #[derive(Deserialize)]
    pub(super) struct List<T> {
        pub data: Vec<T>,
        pub has_more: bool,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn api_versions_are_checked_for_sendability() {
        assert_eq!(check_api_version(DEFAULT_API_VERSION), Ok(()));
        assert_eq!(check_api_version("2024-06-20"), Ok(()));
        for bad in [
            "",
            "2024-06-20 ",
            "2024 06 20",
            "2024-06-20\n",
            "é",
            &"1".repeat(65),
        ] {
            assert!(check_api_version(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn idempotency_keys_have_the_documented_shape_and_fit_stripe() {
        let id = TransferId(Uuid::from_u128(1));
        let key = transfer_idempotency_key(id, u32::MAX);
        assert_eq!(key, format!("transfer:{}:{}", Uuid::from_u128(1), u32::MAX));
        assert!(key.len() <= IDEMPOTENCY_KEY_MAX);
        assert_eq!(
            reversal_idempotency_key(id, 0),
            "reversal:00000000-0000-0000-0000-000000000001:0"
        );
    }
}
