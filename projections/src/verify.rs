//! `ledger verify`: one streaming pass over the global feed that re-checks
//! everything the ledger promises about its stored history.
//!
//! **Guarantees:**
//! - Every stored event is decoded and folded through the *current* core
//!   (`Decider::evolve`), so an event the core would not accept in its
//!   position is reported (history re-validation).
//! - Every stream's hash chain is recomputed from the stored bytes, and each
//!   stream's head (`stream_version`) is compared with the last version read,
//!   which catches a deleted tail wherever the backend keeps a head.
//! - The journal invariants of [`crate::journal`] are checked over the same
//!   pass.
//! - Every provider-mismatch anomaly recorded on a transfer stream (a second
//!   payout for one share, an object the ledger does not know, another
//!   amount) and not resolved by an operator is a `provider_mismatch`
//!   finding: the ledger's books may balance while the provider's disagree.
//! - Memory is bounded per stream: one fold state, one chain verifier and a
//!   few journal sums per stream; pages of the feed are read one at a time
//!   (the next one prefetched while the current one is checked).
//! - Findings are typed and render one per line:
//!   `FINDING stream=<id> version=<v> kind=<snake_case> detail=<text>`.
//!
//! A stream reports its first chain break and its first fold failure only;
//! later events of a broken stream are counted but not re-reported (one
//! removed row would otherwise report every later version).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ledger_core::events::{AnyEvent, StreamKind};
use ledger_core::hash::{ChainError, ChainVerifier};
use ledger_core::ids::StreamId;
use ledger_core::order::{Order, OrderState};
use ledger_core::refund::{Refund, RefundState};
use ledger_core::transfer::{SellerTransfer, TransferAnomalyKind, TransferEvent, TransferState};
use ledger_core::{Checkpoint, Decider, RecordedEvent, decode_any};
use ledger_store::{EventStore, READ_BATCH_MAX, StoreError};
use tokio::sync::mpsc;

use crate::journal::{InvariantChecker, ViolationKind};

/// Findings kept in the report; the rest are only counted. A store damaged
/// everywhere needs its first ten thousand lines, not a million.
pub const FINDINGS_KEPT_MAX: usize = 10_000;
/// Pages read ahead of the checker: enough to overlap IO with hashing.
const PAGES_PREFETCHED_MAX: usize = 4;
/// Concurrent `stream_version` probes in the head check.
const HEAD_PROBES_IN_FLIGHT_MAX: usize = 16;

/// What kind of promise a finding breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FindingKind {
    /// The stored hash does not match the stored bytes (a byte was altered).
    ContentMismatch,
    /// `prev_hash` does not link to the previous version's hash.
    BrokenLink,
    /// A version is missing (or reordered) inside a stream.
    VersionGap,
    /// The store's head is beyond the last readable event (tail removed).
    MissingTail,
    /// The stream id has no known kind.
    UnknownStreamKind,
    /// The current core cannot decode the stored event.
    Undecodable,
    /// The current core does not accept the event in its position.
    InvalidHistory,
    /// A journal entry whose debits and credits differ.
    UnbalancedEntry,
    RefundedExceedsCaptured,
    ReversedExceedsTransferred,
    SettledOrderNotZero,
    /// A read model differs from a fresh rebuild (added by a projection
    /// diff hook).
    ProjectionDiff,
    /// The provider's records disagree with the ledger's (a second payout
    /// for one share, an object the ledger does not know, another amount):
    /// a `TransferAnomalyRecorded` of such a kind.
    ProviderMismatch,
}

impl FindingKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            FindingKind::ContentMismatch => "content_mismatch",
            FindingKind::BrokenLink => "broken_link",
            FindingKind::VersionGap => "version_gap",
            FindingKind::MissingTail => "missing_tail",
            FindingKind::UnknownStreamKind => "unknown_stream_kind",
            FindingKind::Undecodable => "undecodable",
            FindingKind::InvalidHistory => "invalid_history",
            FindingKind::UnbalancedEntry => "unbalanced_entry",
            FindingKind::RefundedExceedsCaptured => "refunded_exceeds_captured",
            FindingKind::ReversedExceedsTransferred => "reversed_exceeds_transferred",
            FindingKind::SettledOrderNotZero => "settled_order_not_zero",
            FindingKind::ProjectionDiff => "projection_diff",
            FindingKind::ProviderMismatch => "provider_mismatch",
        }
    }

    /// Journal invariant findings (as opposed to storage or history ones).
    pub fn is_journal(&self) -> bool {
        matches!(
            self,
            FindingKind::UnbalancedEntry
                | FindingKind::RefundedExceedsCaptured
                | FindingKind::ReversedExceedsTransferred
                | FindingKind::SettledOrderNotZero
        )
    }
}

impl From<ViolationKind> for FindingKind {
    fn from(v: ViolationKind) -> Self {
        match v {
            ViolationKind::UnbalancedEntry => FindingKind::UnbalancedEntry,
            ViolationKind::RefundedExceedsCaptured => FindingKind::RefundedExceedsCaptured,
            ViolationKind::ReversedExceedsTransferred => FindingKind::ReversedExceedsTransferred,
            ViolationKind::SettledOrderNotZero => FindingKind::SettledOrderNotZero,
        }
    }
}

/// One broken promise, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Stream id (or, for a projection diff, the read model's table).
    pub stream: String,
    /// Stream version (0 when the finding is about no single event).
    pub version: u64,
    pub kind: FindingKind,
    pub detail: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One line whatever the detail holds, so `grep FINDING` sees all.
        let detail: String = self
            .detail
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        write!(
            f,
            "FINDING stream={} version={} kind={} detail={}",
            self.stream,
            self.version,
            self.kind.as_str(),
            detail
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("check {name} could not run: {reason}")]
    Check { name: String, reason: String },
    #[error("the feed reader stopped unexpectedly")]
    ReaderGone,
}

/// A further check run after the feed pass (e.g. the projection diff: rebuild
/// into a shadow and compare with live rows). Its findings join the report.
#[async_trait]
pub trait ExtraCheck: Send + Sync {
    fn name(&self) -> &str;
    async fn findings(&self) -> Result<Vec<Finding>, VerifyError>;
}

#[derive(Debug, Clone, Copy)]
pub struct VerifyOptions {
    /// Compare each stream's head with the last version read.
    pub check_heads: bool,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions { check_heads: true }
    }
}

/// What a verification saw and found.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub events: u64,
    pub streams: u64,
    pub entries: u64,
    /// Time of the feed pass (reading, hashing, folding, journal), without
    /// the head probes and extra checks.
    pub feed_elapsed: Duration,
    pub elapsed: Duration,
    /// At most [`FINDINGS_KEPT_MAX`], in discovery order.
    pub findings: Vec<Finding>,
    pub findings_total: u64,
    /// Names of the extra checks that ran.
    pub extra_checks: Vec<String>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.findings_total == 0
    }

    pub fn add(&mut self, f: Finding) {
        self.findings_total += 1;
        if self.findings.len() < FINDINGS_KEPT_MAX {
            self.findings.push(f);
        }
    }

    /// Events per second of the feed pass, integer.
    pub fn events_per_second(&self) -> u64 {
        let micros = self.feed_elapsed.as_micros().max(1);
        u64::try_from(u128::from(self.events) * 1_000_000 / micros).unwrap_or(u64::MAX)
    }
}

enum Fold {
    Order(OrderState),
    Refund(RefundState),
    Transfer(TransferState),
    /// Unknown kind, or already reported as undecodable / invalid.
    Broken,
}

struct StreamCheck {
    /// `None` once the chain is reported broken.
    chain: Option<ChainVerifier>,
    fold: Fold,
    last_version: u64,
}

fn evolve_as<D: Decider>(state: &mut D::State, event: &D::Event) -> Result<(), String> {
    let s = std::mem::take(state);
    match D::evolve(s, event) {
        Ok(next) => {
            *state = next;
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// The per-stream and journal state of one pass.
pub struct Verifier {
    streams: HashMap<StreamId, StreamCheck>,
    journal: InvariantChecker,
    report: VerifyReport,
    /// Provider-mismatch anomalies recorded and not resolved, by stream,
    /// kind and provider id: the version that recorded each, and its detail.
    open_anomalies: BTreeMap<(String, TransferAnomalyKind, Option<String>), (u64, String)>,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier::new()
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("streams", &self.streams.len())
            .field("events", &self.report.events)
            .finish()
    }
}

impl Verifier {
    pub fn new() -> Self {
        Verifier {
            streams: HashMap::new(),
            journal: InvariantChecker::default(),
            report: VerifyReport::default(),
            open_anomalies: BTreeMap::new(),
        }
    }

    /// Checks one event (feed order: per stream ascending).
    pub fn push(&mut self, e: &RecordedEvent) {
        self.report.events += 1;
        let mut found: Vec<Finding> = Vec::new();
        let finding = |kind: FindingKind, version: u64, detail: String| Finding {
            stream: e.stream_id.to_string(),
            version,
            kind,
            detail,
        };
        let check = self.streams.entry(e.stream_id.clone()).or_insert_with(|| {
            let fold = match StreamKind::of(&e.stream_id) {
                Ok(StreamKind::Order) => Fold::Order(OrderState::default()),
                Ok(StreamKind::Refund) => Fold::Refund(RefundState::default()),
                Ok(StreamKind::Transfer) => Fold::Transfer(TransferState::default()),
                Err(err) => {
                    found.push(finding(
                        FindingKind::UnknownStreamKind,
                        e.stream_version,
                        err.to_string(),
                    ));
                    Fold::Broken
                }
            };
            StreamCheck {
                chain: Some(ChainVerifier::new(&e.stream_id)),
                fold,
                last_version: 0,
            }
        });
        check.last_version = e.stream_version;
        if let Some(chain) = check.chain.as_mut()
            && let Err(err) = chain.push(e)
        {
            let (kind, version) = match &err {
                ChainError::ContentMismatch { version, .. } => {
                    (FindingKind::ContentMismatch, *version)
                }
                ChainError::BrokenLink { version, .. } => (FindingKind::BrokenLink, *version),
                ChainError::VersionGap { expected, .. } => (FindingKind::VersionGap, *expected),
            };
            found.push(finding(kind, version, err.to_string()));
            check.chain = None;
        }
        if !matches!(check.fold, Fold::Broken) {
            match decode_any(&e.stream_id, &e.event_type, e.schema_version, &e.payload) {
                Err(err) => {
                    found.push(finding(
                        FindingKind::Undecodable,
                        e.stream_version,
                        err.to_string(),
                    ));
                    check.fold = Fold::Broken;
                }
                Ok(event) => {
                    let folded = match (&mut check.fold, &event) {
                        (Fold::Order(s), AnyEvent::Order(ev)) => evolve_as::<Order>(s, ev),
                        (Fold::Refund(s), AnyEvent::Refund(ev)) => evolve_as::<Refund>(s, ev),
                        (Fold::Transfer(s), AnyEvent::Transfer(ev)) => {
                            evolve_as::<SellerTransfer>(s, ev)
                        }
                        _ => Err("event set does not match the stream kind".to_owned()),
                    };
                    match folded {
                        Ok(()) => {
                            match &event {
                                AnyEvent::Transfer(TransferEvent::TransferAnomalyRecorded {
                                    kind,
                                    provider_id,
                                    detail,
                                    ..
                                }) if kind.is_provider_mismatch() => {
                                    self.open_anomalies.insert(
                                        (e.stream_id.to_string(), *kind, provider_id.clone()),
                                        (e.stream_version, detail.clone()),
                                    );
                                }
                                AnyEvent::Transfer(TransferEvent::TransferAnomalyResolved {
                                    kind,
                                    provider_id,
                                    ..
                                }) => {
                                    self.open_anomalies.remove(&(
                                        e.stream_id.to_string(),
                                        *kind,
                                        provider_id.clone(),
                                    ));
                                }
                                _ => {}
                            }
                            self.journal
                                .push(&e.stream_id, e.stream_version, e.event_id, &event)
                        }
                        Err(reason) => {
                            found.push(finding(
                                FindingKind::InvalidHistory,
                                e.stream_version,
                                reason,
                            ));
                            check.fold = Fold::Broken;
                        }
                    }
                }
            }
        }
        for f in found {
            self.report.add(f);
        }
    }

    /// Compares each stream's head with the last version read.
    pub async fn check_heads(&mut self, store: &dyn EventStore) -> Result<(), VerifyError> {
        use futures::StreamExt as _;
        let probes: Vec<(StreamId, u64)> = self
            .streams
            .iter()
            .map(|(s, c)| (s.clone(), c.last_version))
            .collect();
        let mut results = futures::stream::iter(probes)
            .map(|(s, last)| async move {
                let head = match store.stream_version(&s).await {
                    // Events past the feed's horizon (written during the
                    // pass, or held back on Postgres by an older open
                    // transaction) are readable: that is no missing tail.
                    Ok(Some(h)) if h > last => match store.read_stream(&s, last + 1, 1).await {
                        Ok(next) if !next.is_empty() => Ok(Some(last)),
                        Ok(_) => Ok(Some(h)),
                        Err(e) => Err(e),
                    },
                    other => other,
                };
                (s, last, head)
            })
            .buffer_unordered(HEAD_PROBES_IN_FLIGHT_MAX);
        let mut missing = Vec::new();
        while let Some((stream, last, head)) = results.next().await {
            let head = head?;
            if head != Some(last) {
                missing.push(Finding {
                    stream: stream.to_string(),
                    version: head.unwrap_or(0),
                    kind: FindingKind::MissingTail,
                    detail: format!(
                        "the store reports version {head:?} but the last readable event is version {last}"
                    ),
                });
            }
        }
        missing.sort_by(|a, b| a.stream.cmp(&b.stream));
        for f in missing {
            self.report.add(f);
        }
        Ok(())
    }

    /// Ends the pass: journal checks, counts.
    pub fn finish(mut self) -> VerifyReport {
        self.report.streams = self.streams.len() as u64;
        self.report.entries = self.journal.entries();
        let journal = std::mem::take(&mut self.journal);
        for v in journal.finish() {
            self.report.add(Finding {
                stream: v.stream,
                version: v.version,
                kind: v.kind.into(),
                detail: v.detail,
            });
        }
        let open = std::mem::take(&mut self.open_anomalies);
        for ((stream, kind, provider_id), (version, detail)) in open {
            self.report.add(Finding {
                stream,
                version,
                kind: FindingKind::ProviderMismatch,
                detail: format!(
                    "{} {}: {detail}",
                    kind.as_str(),
                    provider_id.as_deref().unwrap_or("-")
                ),
            });
        }
        self.report
    }
}

/// Reads the whole feed (prefetching pages on a task) and verifies it, then
/// runs `extra` checks. `progress` gets the events checked so far after each
/// page.
pub async fn verify(
    store: std::sync::Arc<dyn EventStore>,
    options: VerifyOptions,
    extra: &[&dyn ExtraCheck],
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<VerifyReport, VerifyError> {
    let started = Instant::now();
    let (tx, mut rx) =
        mpsc::channel::<Result<Vec<RecordedEvent>, StoreError>>(PAGES_PREFETCHED_MAX);
    let reader_store = std::sync::Arc::clone(&store);
    let reader = tokio::spawn(async move {
        let mut after = Checkpoint::START;
        loop {
            let page = reader_store.read_all(after, READ_BATCH_MAX).await;
            let done = match &page {
                Ok(p) => match p.last() {
                    Some(last) => {
                        after = last.checkpoint();
                        false
                    }
                    None => true,
                },
                Err(_) => true,
            };
            if tx.send(page).await.is_err() || done {
                return;
            }
        }
    });
    let mut verifier = Verifier::new();
    loop {
        let Some(page) = rx.recv().await else {
            return Err(VerifyError::ReaderGone);
        };
        let page = page?;
        if page.is_empty() {
            break;
        }
        for e in &page {
            verifier.push(e);
        }
        progress(verifier.report.events);
    }
    let _ = reader.await;
    let feed_elapsed = started.elapsed();
    if options.check_heads {
        verifier.check_heads(store.as_ref()).await?;
    }
    let mut report = verifier.finish();
    report.feed_elapsed = feed_elapsed;
    for check in extra {
        report.extra_checks.push(check.name().to_owned());
        for f in check.findings().await? {
            report.add(f);
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}
