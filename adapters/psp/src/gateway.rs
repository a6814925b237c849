//! Ports the process managers and the reconciler depend on.
//!
//! **Guarantees:** the traits mirror the real clients exactly (same
//! requests, views and [`PspError`]), so a process manager tested against a
//! test double behaves the same against Hyperswitch and Stripe.
//! [`PspStatusReader`] is read-only: holding one cannot move money.

use async_trait::async_trait;
use ledger_core::ids::{PaymentId, PspRefundId, StripeTransferId};

use crate::error::PspError;
use crate::hyperswitch::{CreatePayment, CreateRefund, HyperswitchClient, PaymentView, RefundView};
use crate::stripe::{
    CreateReversal, CreateTransfer, ReversalOutcome, ReversalView, StripeClient, TransferFilter,
    TransferView,
};

/// Read-only PSP status, for the reconciler's force-sync sweep.
#[async_trait]
pub trait PspStatusReader: Send + Sync {
    async fn get_payment_status(&self, id: &PaymentId) -> Result<PaymentView, PspError>;
    async fn get_refund_status(&self, id: &PspRefundId) -> Result<RefundView, PspError>;
}

/// Payments and refunds (Hyperswitch).
#[async_trait]
pub trait PaymentGateway: PspStatusReader {
    async fn create_payment(&self, request: &CreatePayment) -> Result<PaymentView, PspError>;
    async fn create_refund(&self, request: &CreateRefund) -> Result<RefundView, PspError>;
}

/// Read-only Stripe records: what the provider holds, for resolving a lost
/// answer and for reconciling against the provider. Holding one cannot
/// move money.
#[async_trait]
pub trait PayoutReader: Send + Sync {
    async fn get_transfer(&self, id: &StripeTransferId) -> Result<TransferView, PspError>;
    async fn list_transfers(&self, filter: &TransferFilter) -> Result<Vec<TransferView>, PspError>;
    async fn list_reversals(&self, id: &StripeTransferId) -> Result<Vec<ReversalView>, PspError>;
}

/// Seller payouts (Stripe Connect).
#[async_trait]
pub trait PayoutGateway: PayoutReader {
    async fn create_transfer(&self, request: &CreateTransfer) -> Result<TransferView, PspError>;
    async fn reverse_transfer(
        &self,
        stripe_transfer_id: &StripeTransferId,
        reversal: &CreateReversal,
    ) -> Result<ReversalOutcome, PspError>;
}

#[async_trait]
impl PspStatusReader for HyperswitchClient {
    async fn get_payment_status(&self, id: &PaymentId) -> Result<PaymentView, PspError> {
        self.get_payment(id).await
    }

    async fn get_refund_status(&self, id: &PspRefundId) -> Result<RefundView, PspError> {
        self.get_refund(id).await
    }
}

#[async_trait]
impl PaymentGateway for HyperswitchClient {
    async fn create_payment(&self, request: &CreatePayment) -> Result<PaymentView, PspError> {
        HyperswitchClient::create_payment(self, request).await
    }

    async fn create_refund(&self, request: &CreateRefund) -> Result<RefundView, PspError> {
        HyperswitchClient::create_refund(self, request).await
    }
}

#[async_trait]
impl PayoutReader for StripeClient {
    async fn get_transfer(&self, id: &StripeTransferId) -> Result<TransferView, PspError> {
        StripeClient::get_transfer(self, id).await
    }

    async fn list_transfers(&self, filter: &TransferFilter) -> Result<Vec<TransferView>, PspError> {
        StripeClient::list_transfers(self, filter).await
    }

    async fn list_reversals(&self, id: &StripeTransferId) -> Result<Vec<ReversalView>, PspError> {
        StripeClient::list_reversals(self, id).await
    }
}

#[async_trait]
impl PayoutGateway for StripeClient {
    async fn create_transfer(&self, request: &CreateTransfer) -> Result<TransferView, PspError> {
        StripeClient::create_transfer(self, request).await
    }

    async fn reverse_transfer(
        &self,
        stripe_transfer_id: &StripeTransferId,
        reversal: &CreateReversal,
    ) -> Result<ReversalOutcome, PspError> {
        StripeClient::reverse_transfer(self, stripe_transfer_id, reversal).await
    }
}
