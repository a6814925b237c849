#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The PSP process managers and the reconciler on the in-memory stores and
//! the real PSP fake (loopback, real clients), with a manual clock.
//!
//! Every acceptance scenario of `ledger_projections::managers::testkit`
//! runs here through [`manager_scenarios!`]; the end-to-end crate runs the
//! same list on Postgres and SQLite. Below it, the cases only memory can
//! set up: log capture, stale read-side rows, two processes on one queue,
//! the candidate queries' SQL, and spawn/cancel.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ledger_core::ids::{payment_id_for, refund_id_from_idempotency_key};
use ledger_core::order::OrderStatus;
use ledger_core::psp::PaymentStatus;
use ledger_projections::managers::testkit::{
    self, Harness, HarnessParts, ONE_LINE, TWO_SELLERS, test_config,
};
use ledger_projections::managers::{
    ManagerDeps, ManagerError, Managers, QueryCandidates, StreamScanCandidates, StuckCandidates,
    StuckRow, WorkerKind,
};
use ledger_projections::query::{QueryStore, SqlParam};
use ledger_projections::readmodel::{Dialect, ReadModelError};
use ledger_psp_fake::{Endpoint, ResourceBehaviour};
use ledger_store::MemoryStore;
use ledger_store::work::MemoryWorkStore;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::fmt::MakeWriter;

ledger_projections::manager_scenarios!(ledger_projections::managers::testkit::memory);

const MINUTE: Duration = Duration::from_secs(60);

// ----------------------------------------------------------------- logs

thread_local! {
    /// The capture of the test running on this thread, if it captures.
    static CAPTURE: std::cell::RefCell<Option<Logs>> = const { std::cell::RefCell::new(None) };
}

/// One global subscriber for the whole test binary, writing each line to
/// the capture of the thread it was logged on. (Per-test `set_default`
/// subscribers race on tracing's callsite-interest cache when tests run in
/// parallel, and then miss lines.) Tests run on current-thread runtimes, so
/// every task of a test logs on its thread.
static GLOBAL: std::sync::OnceLock<()> = std::sync::OnceLock::new();

#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

/// Writes to this thread's capture, or nowhere.
struct ToCapture;

impl Write for ToCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURE.with(|c| {
            if let Some(logs) = c.borrow().as_ref() {
                logs.0.lock().unwrap().extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Router;

impl<'a> MakeWriter<'a> for Router {
    type Writer = ToCapture;
    fn make_writer(&'a self) -> ToCapture {
        ToCapture
    }
}

/// Stops this thread's capture when dropped.
struct Capturing;

impl Drop for Capturing {
    fn drop(&mut self) {
        CAPTURE.with(|c| c.borrow_mut().take());
    }
}

impl Logs {
    /// Captures INFO and above logged on this thread from now on.
    fn capture() -> (Logs, Capturing) {
        GLOBAL.get_or_init(|| {
            let subscriber = tracing_subscriber::fmt()
                .with_writer(Router)
                .with_ansi(false)
                .without_time()
                .with_target(false)
                .with_max_level(tracing::Level::INFO)
                .finish();
            tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        });
        let logs = Logs::default();
        CAPTURE.with(|c| *c.borrow_mut() = Some(logs.clone()));
        (logs, Capturing)
    }

    /// `(level, span fields then message and fields)` of every line.
    fn lines(&self) -> Vec<(String, String)> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .filter_map(|line| {
                let (level, rest) = line.trim_start().split_once(' ')?;
                Some((level.to_owned(), rest.trim_start().to_owned()))
            })
            .collect()
    }

    /// Lines whose message (after any `span{…}: ` prefixes) starts with
    /// `name`.
    fn of(&self, name: &str) -> Vec<(String, String)> {
        self.lines()
            .into_iter()
            .filter(|(_, m)| message(m).starts_with(name))
            .collect()
    }
}

/// A text-format line without its span prefixes (`work{…}: `).
fn message(line: &str) -> &str {
    let mut rest = line;
    while let Some(open) = rest.find('{') {
        let is_span = rest[..open]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
        let Some(close) = rest.find("}: ").filter(|_| is_span) else {
            break;
        };
        rest = &rest[close + 3..];
    }
    rest
}

#[tokio::test]
async fn reconcile_log_lines_tell_the_ops_story() {
    let h = testkit::memory(test_config()).await;
    let order_id = h.place_order("log-order", &ONE_LINE).await;
    h.fake
        .behave_payment(payment_id_for(order_id).as_str(), ResourceBehaviour::Hold);
    h.run_until_idle().await;
    h.fake
        .complete_payment(
            payment_id_for(order_id).as_str(),
            PaymentStatus::Succeeded.as_str(),
        )
        .unwrap();
    let paid = h.paid_order("log-orphan", &ONE_LINE).await;
    h.request_refund(paid, "r1", None).await;
    h.advance(42 * MINUTE);

    let (logs, _guard) = Logs::capture();
    let report = h.reconcile().await;
    assert_eq!(report.changed(), 2);

    let synced: Vec<_> = logs
        .of("reconcile order synced")
        .into_iter()
        .filter(|(level, _)| level == "INFO")
        .collect();
    assert_eq!(synced.len(), 1, "{:#?}", logs.lines());
    let line = &synced[0].1;
    for field in [
        format!("stream_id={}", order_id.stream_id()),
        "from_status=pending".to_owned(),
        "to_status=completed".to_owned(),
        "psp_status=\"succeeded\"".to_owned(),
        "stuck_for=42m".to_owned(),
        format!("cause=reconcile:{}:succeeded", payment_id_for(order_id)),
    ] {
        assert!(line.contains(&field), "{field} missing in {line}");
    }
    let orphan = logs.of("reconcile orphan refund");
    assert_eq!(orphan.len(), 1, "{:#?}", logs.lines());
    assert_eq!(orphan[0].0, "ERROR");
    let refund_id = refund_id_from_idempotency_key(paid, "r1");
    assert!(
        orphan[0]
            .1
            .contains(&format!("stream_id={}", refund_id.stream_id()))
    );
    assert!(orphan[0].1.contains("to_status=failed"));
    assert!(orphan[0].1.contains("stuck_for=42m"));
    // `grep reconcile` is the whole story: one line per action.
    assert_eq!(logs.of("reconcile").len(), 2, "{:#?}", logs.lines());
}

#[tokio::test]
async fn every_worker_action_logs_one_line_starting_with_its_name() {
    let h = testkit::memory(test_config()).await;
    let (logs, _guard) = Logs::capture();
    let order_id = h.paid_order("log-life", &TWO_SELLERS).await;
    h.request_refund(order_id, "r1", Some(&["p1"])).await;
    h.run_until_idle().await;
    for (name, count) in [
        ("payment", 1),
        ("transfer", 2),
        ("refund", 1),
        ("refund_settle", 1),
        ("refund_sellers", 1),
        ("reversal", 1),
    ] {
        let lines: Vec<_> = logs
            .of(&format!("{name}: "))
            .into_iter()
            .filter(|(level, _)| level == "INFO")
            .collect();
        assert_eq!(lines.len(), count, "{name}: {:#?}", logs.lines());
        for (_, l) in &lines {
            // Which stream, why now, how long it waited, from and to.
            for field in ["stream_id=", "work{waited=", "cause=new work"] {
                assert!(l.contains(field), "{field} missing in {l}");
            }
        }
    }
}

#[tokio::test]
async fn already_reversed_is_logged() {
    let h = testkit::memory(test_config()).await;
    let order_id = h.paid_order("log-already", &ONE_LINE).await;
    let t = h.transfer(order_id, "seller-a").await;
    let stripe_id = t.stripe_transfer_id.clone().unwrap();
    h.stripe
        .create_reversal(
            &stripe_id,
            &ledger_psp::CreateReversal {
                reversal_key_id: ledger_core::ids::TransferId(uuid::Uuid::new_v4()),
                attempt: 1,
                amount: None,
                metadata: Default::default(),
            },
        )
        .await
        .unwrap();
    h.request_reversal(
        t.transfer_id,
        ledger_core::ids::RefundId(uuid::Uuid::new_v4()),
        900,
    )
    .await;
    let (logs, _guard) = Logs::capture();
    h.run_worker(WorkerKind::Reversal).await;
    let lines = logs.of("reversal: transfer already reversed at Stripe");
    assert_eq!(lines.len(), 1, "{:#?}", logs.lines());
    assert!(lines[0].1.contains("to_status=reversed"));
    assert!(
        lines[0]
            .1
            .contains(&format!("stripe_transfer_id={stripe_id}"))
    );
}

// ------------------------------------------------------- stale read side

/// Read-side rows that lag the streams: every stream it names is terminal.
#[derive(Debug)]
struct Stale(Vec<StuckRow>, Vec<StuckRow>, Vec<StuckRow>);

#[async_trait]
impl StuckCandidates for Stale {
    async fn stuck_orders(&self, _: DateTime<Utc>, _: u32) -> Result<Vec<StuckRow>, ManagerError> {
        Ok(self.0.clone())
    }
    async fn stuck_refunds(&self, _: DateTime<Utc>, _: u32) -> Result<Vec<StuckRow>, ManagerError> {
        Ok(self.1.clone())
    }
    async fn orphan_refunds(
        &self,
        _: DateTime<Utc>,
        _: u32,
    ) -> Result<Vec<StuckRow>, ManagerError> {
        Ok(self.2.clone())
    }
    async fn indeterminate_transfers(
        &self,
        _: DateTime<Utc>,
        _: u32,
    ) -> Result<Vec<StuckRow>, ManagerError> {
        Ok(Vec::new())
    }
}

#[tokio::test]
async fn stale_read_side_rows_of_terminal_streams_are_skipped_without_psp_reads() {
    // Build the histories with a normal harness, then reconcile them with
    // a candidate source that still believes they are stuck.
    let events: Arc<dyn ledger_store::EventStore> = Arc::new(MemoryStore::new());
    let work = Arc::new(MemoryWorkStore::new());
    let parts = HarnessParts {
        events: events.clone(),
        work: work.clone(),
        candidates: Arc::new(StreamScanCandidates::new(events.clone())),
        read_side: None,
    };
    let h = Harness::start(parts, test_config()).await;
    let order_id = h.paid_order("stale", &ONE_LINE).await;
    let refund_id = h.request_refund(order_id, "r1", None).await;
    h.run_until_idle().await;
    let row = |stream: String, status: &str| StuckRow {
        stream_id: stream,
        status: status.to_owned(),
        status_since: testkit::start_time(),
        psp_id: Some("x".to_owned()),
    };
    let candidates = Arc::new(Stale(
        vec![row(order_id.stream_id().to_string(), "pending")],
        vec![row(refund_id.stream_id().to_string(), "submitted")],
        vec![row(refund_id.stream_id().to_string(), "requested")],
    ));
    let managers = Managers::new(
        ManagerDeps {
            events: events.clone(),
            work,
            candidates,
            payments: Arc::new(h.hyperswitch.clone()),
            payouts: Arc::new(h.stripe.clone()),
            clock: h.clock.clone(),
        },
        test_config(),
        "stale-reconciler",
    );
    let before = (
        h.event_types(&order_id.stream_id()).await,
        h.event_types(&refund_id.stream_id()).await,
        h.counters(),
    );
    h.advance(3 * 60 * MINUTE);
    let report = managers.reconcile_once(h.now()).await.unwrap();
    for class in [&report.orders, &report.refunds, &report.orphans] {
        assert_eq!((class.looked_at, class.skipped), (1, 1));
        assert!(class.actions.is_empty() && class.failures.is_empty());
    }
    let after = (
        h.event_types(&order_id.stream_id()).await,
        h.event_types(&refund_id.stream_id()).await,
        h.counters(),
    );
    assert_eq!(before, after);
}

// ------------------------------------------------- two processes, one queue

#[tokio::test]
async fn two_processes_on_one_queue_never_double_act() {
    let h = testkit::memory(test_config()).await;
    let second = Managers::new(
        ManagerDeps {
            events: h.events.clone(),
            work: h.work.clone(),
            candidates: Arc::new(StreamScanCandidates::new(h.events.clone())),
            payments: Arc::new(h.hyperswitch.clone()),
            payouts: Arc::new(h.stripe.clone()),
            clock: h.clock.clone(),
        },
        test_config(),
        "second-process",
    );
    let mut orders = Vec::new();
    for i in 0..5 {
        orders.push(h.place_order(&format!("race-{i}"), &TWO_SELLERS).await);
    }
    // Both processes run concurrently (interleaved at every await) until
    // neither has anything left to do.
    for _ in 0..testkit::IDLE_ROUNDS_MAX {
        let (a, b) = tokio::join!(
            h.managers.run_all_once(h.now()),
            second.run_all_once(h.now())
        );
        if a.unwrap().is_idle() && b.unwrap().is_idle() {
            break;
        }
    }
    for order_id in &orders {
        assert_eq!(h.order(*order_id).await.status, OrderStatus::Completed);
    }
    let c = h.counters();
    assert_eq!(c.payments_created, 5);
    assert_eq!(c.transfers_created, 10);
    assert_eq!(c.requests_to(Endpoint::CreatePayment), 5);
    assert_eq!(c.requests_to(Endpoint::CreateTransfer), 10);
}

// ------------------------------------------------------ candidate queries

#[derive(Debug)]
struct Recording {
    dialect: Dialect,
    rows: Vec<String>,
    seen: Mutex<Vec<(String, Vec<SqlParam>)>>,
}

#[async_trait]
impl QueryStore for Recording {
    fn dialect(&self) -> Dialect {
        self.dialect
    }
    async fn query_json(
        &self,
        sql: &str,
        params: &[SqlParam],
    ) -> Result<Vec<String>, ReadModelError> {
        self.seen
            .lock()
            .unwrap()
            .push((sql.to_owned(), params.to_vec()));
        Ok(self.rows.clone())
    }
    async fn ping(&self) -> Result<(), ReadModelError> {
        Ok(())
    }
}

#[tokio::test]
async fn candidate_queries_bind_the_cutoff_per_dialect_and_parse_both_timestamp_shapes() {
    let cutoff = testkit::start_time();
    for (dialect, status_since, cutoff_text) in [
        (
            Dialect::Sqlite,
            "2026-11-27T09:00:00.000000Z",
            "2026-11-27T10:00:00.000000Z",
        ),
        (
            Dialect::Postgres,
            "2026-11-27T09:00:00+00:00",
            "2026-11-27T10:00:00+00:00",
        ),
    ] {
        let store = Arc::new(Recording {
            dialect,
            rows: vec![format!(
                r#"{{"id":"3f1c0000-0000-0000-0000-000000000001","status":"pending","status_since":"{status_since}","psp_id":"pay_x"}}"#
            )],
            seen: Mutex::new(Vec::new()),
        });
        let candidates = QueryCandidates::new(store.clone());
        let rows = candidates.stuck_orders(cutoff, 50).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            rows[0].stream_id,
            "order-3f1c0000-0000-0000-0000-000000000001"
        );
        assert_eq!(
            rows[0].status_since,
            DateTime::parse_from_rfc3339("2026-11-27T09:00:00Z").unwrap()
        );
        candidates.stuck_refunds(cutoff, 7).await.unwrap();
        candidates.orphan_refunds(cutoff, 7).await.unwrap();
        let seen = store.seen.lock().unwrap();
        let (sql, params) = &seen[0];
        assert!(sql.contains("from order_view"), "{sql}");
        assert!(sql.contains("status = 'pending'"), "{sql}");
        assert!(sql.contains("payment_id <> ''"), "{sql}");
        assert_eq!(
            params,
            &vec![SqlParam::Text(cutoff_text.to_owned()), SqlParam::Int(50)]
        );
        assert!(seen[1].0.contains("status = 'submitted'"));
        assert!(seen[2].0.contains("status = 'requested'"));
        assert!(seen[2].0.contains("hyperswitch_refund_id is null"));
        match dialect {
            Dialect::Postgres => assert!(sql.contains("$2") && sql.contains("json_build_object")),
            Dialect::Sqlite => assert!(sql.contains("?2") && sql.contains("json_object")),
        }
    }
}

// ------------------------------------------------------------ spawn/cancel

#[tokio::test]
async fn spawned_loops_stop_on_cancel() {
    let h = testkit::memory(test_config()).await;
    h.place_order("spawned", &ONE_LINE).await;
    let cancel = CancellationToken::new();
    let tasks = h.managers.spawn(cancel.clone());
    // Four feeds and the eight workers (the reconciler is disabled here).
    assert_eq!(tasks.len(), 4 + WorkerKind::ALL.len());
    cancel.cancel();
    let joined = tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(tasks))
        .await
        .expect("every loop stops once cancelled");
    assert!(joined.iter().all(Result::is_ok));
}
