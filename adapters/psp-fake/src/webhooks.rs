//! The fake's outgoing Hyperswitch webhooks.
//!
//! **Guarantees:** a webhook's body is built once and every delivery of it
//! (duplicate, release, retry) sends those exact bytes with the same
//! `event_id`; the signature is HMAC-SHA512 over those bytes; delivery only
//! happens when asked (or on the opt-in auto-deliver task).

use std::collections::VecDeque;

use serde::Serialize;

use super::state::{FakeState, iso};
use super::wire::{HS_SIGNATURE_HEADER, HS_WEBHOOK_USER_AGENT, sign_hyperswitch};
use super::{Counters, DeliveryMode, EMITTED_WEBHOOKS_MAX, FakePsp, WebhookTarget};

/// A webhook as emitted: the exact body bytes every delivery sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmittedWebhook {
    pub event_id: String,
    pub event_type: String,
    pub body: Vec<u8>,
}

/// The outcome of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WebhookDelivery {
    pub event_id: String,
    pub event_type: String,
    /// The receiver's HTTP status; `None` if it could not be reached.
    pub status: Option<u16>,
    pub error: Option<String>,
}

impl WebhookDelivery {
    pub fn is_success(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

pub(super) struct WebhookQueue {
    pub target: Option<WebhookTarget>,
    pub mode: DeliveryMode,
    pub pending: VecDeque<EmittedWebhook>,
    pub emitted: VecDeque<EmittedWebhook>,
    held: Vec<EmittedWebhook>,
    reorder: Vec<EmittedWebhook>,
    failed: Vec<EmittedWebhook>,
}

impl WebhookQueue {
    pub fn new(target: Option<WebhookTarget>, mode: DeliveryMode) -> WebhookQueue {
        WebhookQueue {
            target,
            mode,
            pending: VecDeque::new(),
            emitted: VecDeque::new(),
            held: Vec::new(),
            reorder: Vec::new(),
            failed: Vec::new(),
        }
    }

    fn push(&mut self, webhook: EmittedWebhook, counters: &mut Counters) {
        counters.webhooks_emitted += 1;
        if self.emitted.len() >= EMITTED_WEBHOOKS_MAX {
            self.emitted.pop_front();
        }
        self.emitted.push_back(webhook.clone());
        match self.mode {
            DeliveryMode::Normal => self.pending.push_back(webhook),
            DeliveryMode::Duplicate => {
                self.pending.push_back(webhook.clone());
                self.pending.push_back(webhook);
            }
            DeliveryMode::Drop => counters.webhooks_dropped += 1,
            DeliveryMode::Delay => self.held.push(webhook),
            DeliveryMode::Reorder => self.reorder.push(webhook),
        }
    }

    pub fn release_held(&mut self) -> usize {
        let released = self.held.len() + self.reorder.len();
        self.pending.extend(self.held.drain(..));
        self.flush_reorder();
        released
    }

    pub fn requeue_failed(&mut self) -> usize {
        let count = self.failed.len();
        self.pending.extend(self.failed.drain(..));
        count
    }

    fn flush_reorder(&mut self) {
        self.pending.extend(self.reorder.drain(..).rev());
    }

    fn take_batch(&mut self) -> Vec<EmittedWebhook> {
        self.flush_reorder();
        self.pending.drain(..).collect()
    }
}

impl FakeState {
    /// Builds the envelope (compact, psp.md field order), records it and
    /// queues it per the delivery mode. Returns the `event_id`.
    pub(super) fn emit(&mut self, event: &str, content_type: &str, object_json: &str) -> String {
        // UUIDv7 is time-ordered, like Hyperswitch's event ids.
        let event_id = format!("evt_{}", uuid::Uuid::now_v7().simple());
        let timestamp = iso(self.now());
        let quote = |text: &str| serde_json::Value::from(text).to_string();
        let body = format!(
            r#"{{"merchant_id":{},"event_id":{},"event_type":{},"content":{{"type":{},"object":{}}},"timestamp":{}}}"#,
            quote(&self.merchant_id),
            quote(&event_id),
            quote(event),
            quote(content_type),
            object_json,
            quote(&timestamp),
        );
        let webhook = EmittedWebhook {
            event_id: event_id.clone(),
            event_type: event.to_owned(),
            body: body.into_bytes(),
        };
        self.webhooks.push(webhook, &mut self.counters);
        event_id
    }
}

/// Delivers the current queue, one at a time, in order. Failures are kept
/// for [`FakePsp::retry_failed_webhooks`].
pub(super) async fn deliver_pending(psp: &FakePsp) -> Vec<WebhookDelivery> {
    let (batch, target) = {
        let mut state = psp.lock();
        (state.webhooks.take_batch(), state.webhooks.target.clone())
    };
    let mut results = Vec::with_capacity(batch.len());
    for webhook in batch {
        let (status, error) = match &target {
            None => (None, Some("no webhook target configured".to_owned())),
            Some(target) => send(psp, target, &webhook).await,
        };
        let delivery = WebhookDelivery {
            event_id: webhook.event_id.clone(),
            event_type: webhook.event_type.clone(),
            status,
            error,
        };
        if !delivery.is_success() {
            psp.lock().webhooks.failed.push(webhook);
        }
        results.push(delivery);
    }
    results
}

async fn send(
    psp: &FakePsp,
    target: &WebhookTarget,
    webhook: &EmittedWebhook,
) -> (Option<u16>, Option<String>) {
    let mut request = psp
        .inner
        .http
        .post(&target.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(reqwest::header::USER_AGENT, HS_WEBHOOK_USER_AGENT)
        .body(webhook.body.clone());
    if let Some(key) = &target.key {
        let signature = sign_hyperswitch(key.as_bytes(), &webhook.body);
        request = request.header(HS_SIGNATURE_HEADER, signature);
    }
    match request.send().await {
        Ok(response) => (Some(response.status().as_u16()), None),
        Err(error) => (None, Some(error.to_string())),
    }
}
