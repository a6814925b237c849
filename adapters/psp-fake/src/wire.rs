//! The providers' wire vocabulary, written from their documents (header
//! names, limits, status enums, webhook event names), never imported from
//! our client.
//!
//! **Guarantees:** every value here is the provider's documented spelling;
//! the status → webhook-event tables list exactly the statuses Hyperswitch
//! announces (refunds in `pending` / `review` announce nothing).

/// Hyperswitch authentication header (`api-key: <secret>`).
pub const HS_API_KEY_HEADER: &str = "api-key";
/// Hyperswitch's outgoing webhook signature: lowercase hex HMAC-SHA512 of
/// the raw body, keyed with `payment_response_hash_key`.
pub const HS_SIGNATURE_HEADER: &str = "X-Webhook-Signature-512";
/// Hyperswitch's webhook `User-Agent`.
pub const HS_WEBHOOK_USER_AGENT: &str = "Hyperswitch-Backend-Server";
/// `payment_id` / `refund_id` are at most 30 characters.
pub const HS_ID_MAX: usize = 30;
/// `customer_id` (like Hyperswitch's other ids) is at most 64 characters of
/// `[A-Za-z0-9_-]`.
pub const HS_CUSTOMER_ID_MAX: usize = 64;
/// `metadata` holds at most 50 keys.
pub const HS_METADATA_KEYS_MAX: usize = 50;
/// `reason` on a refund is free text of at most 255 characters.
pub const HS_REFUND_REASON_MAX: usize = 255;
/// `refund_type` values.
pub const HS_REFUND_TYPES: [&str; 2] = ["instant", "scheduled"];
/// The refund reasons the Stripe connector accepts (psp.md: "when the
/// connector is Stripe").
pub const STRIPE_CONNECTOR_REFUND_REASONS: [&str; 3] =
    ["duplicate", "fraudulent", "requested_by_customer"];

/// Stripe's idempotency header on POSTs.
pub const STRIPE_IDEMPOTENCY_KEY_HEADER: &str = "Idempotency-Key";
/// Stripe idempotency keys are at most 255 characters.
pub const STRIPE_IDEMPOTENCY_KEY_MAX: usize = 255;
/// A replayed idempotent response carries `Idempotent-Replayed: true`.
pub const STRIPE_IDEMPOTENT_REPLAYED_HEADER: &str = "Idempotent-Replayed";
/// Stripe's own retry verdict on an error response.
pub const STRIPE_SHOULD_RETRY_HEADER: &str = "Stripe-Should-Retry";
/// Stripe `metadata` holds at most 50 keys.
pub const STRIPE_METADATA_KEYS_MAX: usize = 50;
/// List `limit`: 1 to 100, default 10.
pub const STRIPE_LIST_LIMIT_MAX: usize = 100;
pub const STRIPE_LIST_LIMIT_DEFAULT: usize = 10;

/// Hyperswitch payment intent statuses (`GET /payments/{id}`).
pub const HS_PAYMENT_STATUSES: [&str; 15] = [
    "succeeded",
    "failed",
    "cancelled",
    "cancelled_post_capture",
    "processing",
    "requires_customer_action",
    "requires_merchant_action",
    "requires_payment_method",
    "requires_confirmation",
    "requires_capture",
    "partially_captured",
    "partially_captured_and_capturable",
    "partially_authorized_and_requires_capture",
    "conflicted",
    "expired",
];

/// Hyperswitch refund statuses (`GET /refunds/{id}`).
pub const HS_REFUND_STATUSES: [&str; 4] = ["succeeded", "failed", "pending", "review"];

/// The webhook `event_type` Hyperswitch emits when a payment enters
/// `status`, if any.
pub fn payment_event(status: &str) -> Option<&'static str> {
    Some(match status {
        "succeeded" => "payment_succeeded",
        "failed" => "payment_failed",
        "processing" => "payment_processing",
        "cancelled" => "payment_cancelled",
        "cancelled_post_capture" => "payment_cancelled_post_capture",
        "requires_capture" => "payment_authorized",
        "partially_authorized_and_requires_capture" => "payment_partially_authorized",
        "partially_captured" => "payment_captured",
        "expired" => "payment_expired",
        "requires_customer_action" => "action_required",
        _ => return None,
    })
}

/// The webhook `event_type` for a refund entering `status`; `pending` and
/// `review` never produce one.
pub fn refund_event(status: &str) -> Option<&'static str> {
    match status {
        "succeeded" => Some("refund_succeeded"),
        "failed" => Some("refund_failed"),
        _ => None,
    }
}

/// Lowercase hex HMAC-SHA512 of `body` under `key`, as Hyperswitch signs.
pub fn sign_hyperswitch(key: &[u8], body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail.
    match Hmac::<sha2::Sha512>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(body);
            hex::encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    }
}
