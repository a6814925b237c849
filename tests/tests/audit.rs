//! End-to-end audit: `ledger verify`, `export`, `trial-balance --as-of` and
//! `replay --as-of` through the real binary, on a real SQLite file and the
//! real Postgres (fresh schema), over generated histories.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{ledger, ok, pg_base, stdout};

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Output;
use std::sync::Arc;

use ledger_core::codec;
use ledger_core::events::{AnyEvent, StreamKind};
use ledger_core::hash::{ChainVerifier, ContentFields, chain, content_digest};
use ledger_core::ids::{
    BuyerId, EventId, ProductId, SellerAccount, SellerId, StreamId, command_id_from_cause,
    order_id_from_idempotency_key, payment_id_for,
};
use ledger_core::order::{LineInput, Order, OrderCommand, OrderEvent};
use ledger_core::postings::{Side, postings};
use ledger_core::psp::PaymentStatus;
use ledger_core::refund::Refund;
use ledger_core::transfer::SellerTransfer;
use ledger_core::{
    Checkpoint, Currency, Decider, ExpectedVersion, FeeBps, Metadata, NewEvent, RecordedEvent,
    Source, decode_any,
};
use ledger_projections::generator::{generate, write_history};
use ledger_store::{EventStore, READ_BATCH_MAX};
use serde_json::Value;
use sqlx::Connection;
use uuid::Uuid;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Sqlite,
    Postgres,
}

/// A fresh store the binary and the test both reach.
struct Fixture {
    url: String,
    dir: tempfile::TempDir,
    store: Arc<dyn EventStore>,
    kind: Kind,
}

impl Fixture {
    async fn new(kind: Kind) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        match kind {
            Kind::Sqlite => {
                let path = dir.path().join("ledger.db");
                let store = ledger_sqlite::SqliteStore::open(&path).await.unwrap();
                store.migrate().await.unwrap();
                Fixture {
                    url: format!("sqlite://{}", path.display()),
                    dir,
                    store: Arc::new(store),
                    kind,
                }
            }
            Kind::Postgres => {
                let base = pg_base();
                let schema = format!("audit_{}", Uuid::new_v4().simple());
                let mut conn = sqlx::PgConnection::connect(&base).await.unwrap();
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("create schema {schema}")))
                    .execute(&mut conn)
                    .await
                    .unwrap();
                conn.close().await.unwrap();
                let url = format!("{base}?options[search_path]={schema}");
                let store = ledger_postgres::PgStore::connect(&url).await.unwrap();
                store.migrate().await.unwrap();
                Fixture {
                    url,
                    dir,
                    store: Arc::new(store),
                    kind,
                }
            }
        }
    }

    /// Runs the binary off the async runtime's threads.
    async fn run(&self, args: &[&str]) -> Output {
        let url = self.url.clone();
        let cwd = self.dir.path().to_owned();
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ledger(&url, &args, &cwd)
        })
        .await
        .unwrap()
    }

    async fn generated(&self, seed: u64, orders: u32, chunk: usize) -> u64 {
        let parts = generate(seed, orders);
        write_history(self.store.as_ref(), &parts, chunk, &|_| {})
            .await
            .unwrap()
    }

    async fn execute(&self, sql: &str, stream: &str, version: i64) -> u64 {
        match self.kind {
            Kind::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                let n = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                    .bind(stream)
                    .bind(version)
                    .execute(&mut c)
                    .await
                    .unwrap()
                    .rows_affected();
                c.close().await.unwrap();
                n
            }
            Kind::Postgres => {
                let mut c = sqlx::PgConnection::connect(&self.url).await.unwrap();
                let n = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                    .bind(stream)
                    .bind(version)
                    .execute(&mut c)
                    .await
                    .unwrap()
                    .rows_affected();
                c.close().await.unwrap();
                n
            }
        }
    }
}

async fn read_feed(store: &dyn EventStore) -> Vec<RecordedEvent> {
    let mut out = Vec::new();
    let mut after = Checkpoint::START;
    loop {
        let page = store.read_all(after, READ_BATCH_MAX).await.unwrap();
        let Some(last) = page.last() else {
            return out;
        };
        after = last.checkpoint();
        out.extend(page);
    }
}

/// An order stream with at least `min` events, from the feed.
fn order_stream_with(feed: &[RecordedEvent], min: u64) -> String {
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    for e in feed {
        *counts.entry(e.stream_id.as_str()).or_default() += 1;
    }
    counts
        .into_iter()
        .find(|(s, n)| s.starts_with("order-") && *n >= min)
        .map(|(s, _)| s.to_owned())
        .expect("an order stream long enough")
}

fn findings(out: &str) -> Vec<&str> {
    out.lines().filter(|l| l.starts_with("FINDING ")).collect()
}

// ---------------------------------------------------------------- verify

async fn clean_history_verifies_with_counts(kind: Kind) {
    let f = Fixture::new(kind).await;
    let events = f.generated(11, 300, 2_000).await;
    let o = f.run(&["verify"]).await;
    let out = ok(&o);
    assert!(findings(&out).is_empty(), "{out}");
    assert!(out.contains(&format!("verify: {events} events, ")), "{out}");
    assert!(out.contains("verify: clean"), "{out}");
    assert!(out.contains("events/s"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn clean_generated_history_verifies_with_counts_sqlite() {
    clean_history_verifies_with_counts(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn clean_generated_history_verifies_with_counts_postgres() {
    clean_history_verifies_with_counts(Kind::Postgres).await;
}

async fn tampered_byte_is_named(kind: Kind) {
    let f = Fixture::new(kind).await;
    f.generated(12, 100, 2_000).await;
    let feed = read_feed(f.store.as_ref()).await;
    let stream = order_stream_with(&feed, 3);
    // One byte of the version-2 payload: `"at":"2026` → `"at":"2027`.
    let changed = f
        .execute(
            "update event set payload = replace(payload, '\"at\":\"2026', '\"at\":\"2027') \
             where stream_id = $1 and stream_version = $2",
            &stream,
            2,
        )
        .await;
    assert_eq!(changed, 1);
    let o = f.run(&["verify"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let out = stdout(&o);
    let expected = format!("FINDING stream={stream} version=2 kind=content_mismatch ");
    assert!(
        findings(&out).iter().any(|l| l.starts_with(&expected)),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_payload_byte_fails_verify_naming_stream_and_version_sqlite() {
    tampered_byte_is_named(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_payload_byte_fails_verify_naming_stream_and_version_postgres() {
    tampered_byte_is_named(Kind::Postgres).await;
}

async fn deleted_row_is_named(kind: Kind) {
    let f = Fixture::new(kind).await;
    f.generated(13, 100, 2_000).await;
    let feed = read_feed(f.store.as_ref()).await;
    let stream = order_stream_with(&feed, 3);
    let deleted = f
        .execute(
            "delete from event where stream_id = $1 and stream_version = $2",
            &stream,
            2,
        )
        .await;
    assert_eq!(deleted, 1);
    let o = f.run(&["verify"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let out = stdout(&o);
    let expected = format!("FINDING stream={stream} version=2 kind=version_gap ");
    assert!(
        findings(&out).iter().any(|l| l.starts_with(&expected)),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deleted_event_row_fails_verify_naming_stream_and_version_sqlite() {
    deleted_row_is_named(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deleted_event_row_fails_verify_naming_stream_and_version_postgres() {
    deleted_row_is_named(Kind::Postgres).await;
}

async fn hand_edited_row_is_named(kind: Kind) {
    let f = Fixture::new(kind).await;
    f.generated(14, 60, 2_000).await;
    ok(&f.run(&["project", "--once"]).await);
    let clean = ok(&f.run(&["verify", "--projections"]).await);
    assert!(findings(&clean).is_empty(), "{clean}");
    assert!(clean.contains("verify: clean"), "{clean}");

    let feed = read_feed(f.store.as_ref()).await;
    let stream = order_stream_with(&feed, 3);
    let order_id = stream.trim_start_matches("order-").to_owned();
    let edited = f
        .execute(
            "update order_view set status = 'hand_edited' where order_id = $1 and $2 > 0",
            &order_id,
            1,
        )
        .await;
    assert_eq!(edited, 1);
    let o = f.run(&["verify", "--projections"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let out = stdout(&o);
    let found = findings(&out);
    assert_eq!(found.len(), 1, "{out}");
    assert!(
        found[0].starts_with("FINDING stream=order_view version=0 kind=projection_diff "),
        "{out}"
    );
    for needle in [order_id.as_str(), "hand_edited"] {
        assert!(found[0].contains(needle), "{needle} missing: {out}");
    }
    // Without --projections the event history itself is still clean.
    let plain = ok(&f.run(&["verify"]).await);
    assert!(findings(&plain).is_empty(), "{plain}");
}

#[tokio::test(flavor = "multi_thread")]
async fn hand_edited_read_model_row_fails_verify_projections_sqlite() {
    hand_edited_row_is_named(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hand_edited_read_model_row_fails_verify_projections_postgres() {
    hand_edited_row_is_named(Kind::Postgres).await;
}

/// Places and initiates an order through the core, then appends a
/// `PaymentSucceeded` whose sellers and fee don't add up to its amount: the
/// store chains it like any event, the core's evolve accepts it, and only
/// the journal can tell.
async fn unbalanced_posting_is_a_journal_finding(kind: Kind) {
    let f = Fixture::new(kind).await;
    f.generated(14, 50, 2_000).await;
    let order_id = order_id_from_idempotency_key("audit-unbalanced");
    let stream = order_id.stream_id();
    let now = chrono::Utc::now();
    let place = OrderCommand::PlaceOrder {
        order_id,
        buyer_id: BuyerId::new("buyer-x").unwrap(),
        currency: Currency::parse("USD").unwrap(),
        lines: vec![LineInput {
            product_id: ProductId::new("p-1").unwrap(),
            seller_id: SellerId::new("seller-x").unwrap(),
            seller_account: SellerAccount::new("acct_x").unwrap(),
            unit_amount_minor: 1_000,
            quantity: 1,
        }],
        fee_bps: FeeBps::new(1_000).unwrap(),
        now,
    };
    let mut events = Order::decide(&Default::default(), &place).unwrap();
    let state = Order::fold(&events).unwrap();
    events.extend(
        Order::decide(
            &state,
            &OrderCommand::InitiatePayment {
                payment_id: payment_id_for(order_id),
                now,
            },
        )
        .unwrap(),
    );
    let state = Order::fold(&events).unwrap();
    let mut paid = Order::decide(
        &state,
        &OrderCommand::ApplyPaymentStatus {
            payment_id: payment_id_for(order_id),
            status: PaymentStatus::Succeeded,
            amount_minor: Some(1_000),
            error_message: None,
            now,
        },
    )
    .unwrap();
    let Some(OrderEvent::PaymentSucceeded { amount_minor, .. }) = paid.first_mut() else {
        panic!("expected PaymentSucceeded, got {paid:?}");
    };
    *amount_minor += 100; // debits 1100, credits 900 + 100
    events.extend(paid);
    let metadata = Metadata {
        correlation_id: Uuid::nil(),
        causation_id: None,
        actor: "audit-test".into(),
        source: Source::Operator,
        request_id: None,
    }
    .to_canonical_json();
    let cmd = command_id_from_cause("audit-unbalanced");
    let new: Vec<NewEvent> = events
        .iter()
        .zip(0u32..)
        .map(|(e, i)| {
            let enc = codec::encode(e);
            NewEvent {
                event_id: EventId::derive(cmd, &stream, i),
                event_type: enc.event_type,
                schema_version: enc.schema_version,
                payload: enc.payload,
                metadata: metadata.clone(),
            }
        })
        .collect();
    f.store
        .append(&stream, ExpectedVersion::NoStream, &new)
        .await
        .unwrap();

    let o = f.run(&["verify"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let out = stdout(&o);
    let found = findings(&out);
    let expected = format!("FINDING stream={stream} version=3 kind=unbalanced_entry ");
    assert!(found.iter().any(|l| l.starts_with(&expected)), "{out}");
    // Nothing else is wrong: chains and history are intact.
    assert!(
        found.iter().all(|l| l.contains("kind=unbalanced_entry")),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unbalanced_posting_fails_verify_with_a_journal_finding_sqlite() {
    unbalanced_posting_is_a_journal_finding(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unbalanced_posting_fails_verify_with_a_journal_finding_postgres() {
    unbalanced_posting_is_a_journal_finding(Kind::Postgres).await;
}

// ---------------------------------------------------------------- export

fn hex32(s: &str) -> [u8; 32] {
    let bytes: Vec<u8> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

/// Recomputes a line's hash from its exported fields alone.
fn rehash(line: &Value) -> [u8; 32] {
    let stream = StreamId::new(line["stream"].as_str().unwrap()).unwrap();
    let recorded_at = chrono::DateTime::parse_from_rfc3339(line["recorded_at"].as_str().unwrap())
        .unwrap()
        .to_utc();
    let content = content_digest(&ContentFields {
        stream_id: &stream,
        event_id: EventId(line["event_id"].as_str().unwrap().parse().unwrap()),
        event_type: line["type"].as_str().unwrap(),
        schema_version: u32::try_from(line["schema_version"].as_u64().unwrap()).unwrap(),
        payload: line["payload"].as_str().unwrap(),
        metadata: line["metadata"].as_str().unwrap(),
        recorded_at,
    });
    chain(
        &hex32(line["prev_hash"].as_str().unwrap()),
        line["version"].as_u64().unwrap(),
        &content,
    )
}

fn parse_jsonl(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn export_is_byte_exact(kind: Kind) {
    let f = Fixture::new(kind).await;
    let n = f.generated(15, 120, 500).await;
    let lines = parse_jsonl(&ok(&f.run(&["export", "--format", "jsonl"]).await));
    assert_eq!(lines.len() as u64, n);
    let feed = read_feed(f.store.as_ref()).await;
    let stored: HashMap<(String, u64), &RecordedEvent> = feed
        .iter()
        .map(|e| ((e.stream_id.to_string(), e.stream_version), e))
        .collect();
    let mut prev: HashMap<String, String> = HashMap::new();
    for line in &lines {
        let key = (
            line["stream"].as_str().unwrap().to_owned(),
            line["version"].as_u64().unwrap(),
        );
        let e = stored[&key];
        assert_eq!(line["payload"].as_str().unwrap(), e.payload, "{key:?}");
        assert_eq!(line["metadata"].as_str().unwrap(), e.metadata, "{key:?}");
        assert_eq!(line["position"].as_u64().unwrap(), e.global_position);
        let hash = line["hash"].as_str().unwrap();
        assert_eq!(rehash(line), hex32(hash), "{key:?}");
        let expected_prev = prev.get(&key.0).cloned().unwrap_or_else(|| "00".repeat(32));
        assert_eq!(
            line["prev_hash"].as_str().unwrap(),
            expected_prev,
            "{key:?}"
        );
        prev.insert(key.0, hash.to_owned());
    }
    // One stream, and a suffix of the feed.
    let stream = order_stream_with(&feed, 3);
    let one = parse_jsonl(&ok(&f
        .run(&["export", "--format", "jsonl", "--stream", &stream])
        .await));
    assert!(one.iter().all(|l| l["stream"] == stream.as_str()));
    assert_eq!(
        one.len(),
        feed.iter()
            .filter(|e| e.stream_id.as_str() == stream)
            .count()
    );
    let middle = feed[feed.len() / 2].global_position;
    let tail = parse_jsonl(&ok(&f
        .run(&["export", "--format", "jsonl", "--from", &middle.to_string()])
        .await));
    assert_eq!(
        tail.len(),
        feed.iter().filter(|e| e.global_position >= middle).count()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn export_is_byte_exact_and_rehashes_sqlite() {
    export_is_byte_exact(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn export_is_byte_exact_and_rehashes_postgres() {
    export_is_byte_exact(Kind::Postgres).await;
}

// ---------------------------------------------------------------- as-of

/// Trial balance of the exported lines `keep` selects, computed here from
/// the core's postings: `(account, currency) → (debit, credit)`.
fn expected_balance(
    lines: &[Value],
    keep: impl Fn(&Value) -> bool,
) -> BTreeMap<(String, String), (i64, i64)> {
    let mut out: BTreeMap<(String, String), (i64, i64)> = BTreeMap::new();
    for l in lines.iter().filter(|l| keep(l)) {
        let stream = StreamId::new(l["stream"].as_str().unwrap()).unwrap();
        let event = decode_any(
            &stream,
            l["type"].as_str().unwrap(),
            u32::try_from(l["schema_version"].as_u64().unwrap()).unwrap(),
            l["payload"].as_str().unwrap(),
        )
        .unwrap();
        let id = EventId(l["event_id"].as_str().unwrap().parse().unwrap());
        for entry in postings(id, &event) {
            for p in entry.postings {
                let slot = out
                    .entry((p.account.to_string(), entry.currency.to_string()))
                    .or_default();
                match p.side {
                    Side::Debit => slot.0 += p.amount_minor,
                    Side::Credit => slot.1 += p.amount_minor,
                }
            }
        }
    }
    out
}

fn printed_balance(out: &str) -> BTreeMap<(String, String), (i64, i64)> {
    parse_jsonl(out)
        .into_iter()
        .map(|v| {
            (
                (
                    v["account"].as_str().unwrap().to_owned(),
                    v["currency"].as_str().unwrap().to_owned(),
                ),
                (
                    v["debit_minor"].as_i64().unwrap(),
                    v["credit_minor"].as_i64().unwrap(),
                ),
            )
        })
        .collect()
}

/// Folds the exported lines of one stream that `keep` selects (a prefix).
fn expected_state(lines: &[Value], stream: &str, keep: impl Fn(&Value) -> bool) -> Value {
    fn fold<D: Decider>(events: Vec<AnyEvent>, pick: impl Fn(AnyEvent) -> D::Event) -> Value
    where
        D::State: serde::Serialize,
    {
        let events: Vec<D::Event> = events.into_iter().map(pick).collect();
        serde_json::to_value(D::fold(&events).unwrap()).unwrap()
    }
    let id = StreamId::new(stream).unwrap();
    let events: Vec<AnyEvent> = lines
        .iter()
        .filter(|l| l["stream"] == stream)
        .take_while(|l| keep(l))
        .map(|l| {
            decode_any(
                &id,
                l["type"].as_str().unwrap(),
                u32::try_from(l["schema_version"].as_u64().unwrap()).unwrap(),
                l["payload"].as_str().unwrap(),
            )
            .unwrap()
        })
        .collect();
    match StreamKind::of(&id).unwrap() {
        StreamKind::Order => fold::<Order>(events, |e| match e {
            AnyEvent::Order(e) => e,
            other => panic!("{other:?}"),
        }),
        StreamKind::Refund => fold::<Refund>(events, |e| match e {
            AnyEvent::Refund(e) => e,
            other => panic!("{other:?}"),
        }),
        StreamKind::Transfer => fold::<SellerTransfer>(events, |e| match e {
            AnyEvent::Transfer(e) => e,
            other => panic!("{other:?}"),
        }),
    }
}

async fn as_of_matches_a_fold_of_the_prefix(kind: Kind) {
    let f = Fixture::new(kind).await;
    // Small chunks: many commits, so many distinct `recorded_at` values.
    f.generated(16, 150, 200).await;
    let lines = parse_jsonl(&ok(&f.run(&["export", "--format", "jsonl"]).await));
    let mut positions: Vec<u64> = lines
        .iter()
        .map(|l| l["position"].as_u64().unwrap())
        .collect();
    positions.sort_unstable();
    let p = positions[positions.len() / 2];
    let pos = |l: &Value| l["position"].as_u64().unwrap();

    // Trial balance as of a position.
    let printed = printed_balance(&ok(&f
        .run(&["trial-balance", "--as-of", &p.to_string(), "--json"])
        .await));
    let expected = expected_balance(&lines, |l| pos(l) <= p);
    assert!(!expected.is_empty());
    assert_eq!(printed, expected);
    assert_ne!(
        expected,
        expected_balance(&lines, |_| true),
        "a real prefix"
    );

    // Trial balance as of a time.
    let mut times: Vec<String> = lines
        .iter()
        .map(|l| l["recorded_at"].as_str().unwrap().to_owned())
        .collect();
    times.sort();
    times.dedup();
    assert!(times.len() > 2, "{times:?}");
    let t = times[times.len() / 2].clone();
    let at = |l: &Value| {
        chrono::DateTime::parse_from_rfc3339(l["recorded_at"].as_str().unwrap()).unwrap()
    };
    let t_parsed = chrono::DateTime::parse_from_rfc3339(&t).unwrap();
    let printed = printed_balance(&ok(&f
        .run(&["trial-balance", "--as-of", &t, "--json"])
        .await));
    assert_eq!(printed, expected_balance(&lines, |l| at(l) <= t_parsed));

    // Replay as of the position: a stream with events on both sides of it.
    let stream = lines
        .iter()
        .filter(|l| l["stream"].as_str().unwrap().starts_with("order-"))
        .map(|l| l["stream"].as_str().unwrap().to_owned())
        .find(|s| {
            let ps: Vec<u64> = lines
                .iter()
                .filter(|l| l["stream"] == s.as_str())
                .map(pos)
                .collect();
            ps.iter().any(|x| *x <= p) && ps.iter().any(|x| *x > p)
        })
        .expect("a stream straddling the point");
    let out = ok(&f
        .run(&["replay", &stream, "--as-of", &p.to_string(), "--json"])
        .await);
    let replayed: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        replayed["state"],
        expected_state(&lines, &stream, |l| pos(l) <= p)
    );
    let version = lines
        .iter()
        .filter(|l| l["stream"] == stream.as_str() && pos(l) <= p)
        .count() as u64;
    assert_eq!(replayed["stream_version"].as_u64().unwrap(), version);
}

#[tokio::test(flavor = "multi_thread")]
async fn as_of_replay_and_trial_balance_match_a_fold_of_the_prefix_sqlite() {
    as_of_matches_a_fold_of_the_prefix(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn as_of_replay_and_trial_balance_match_a_fold_of_the_prefix_postgres() {
    as_of_matches_a_fold_of_the_prefix(Kind::Postgres).await;
}

// ---------------------------------------------------------------- golden

/// Events are a storage contract: the golden export must still decode with
/// the current core, re-encode to the very same bytes, fold without error
/// and re-verify its hash chains. Changing event serialization fails here.
#[test]
fn golden_order_lifecycle_still_decodes_reencodes_and_verifies() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/streams/order-lifecycle.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let lines = parse_jsonl(&text);
    assert!(lines.len() >= 10, "{}", lines.len());
    let mut chains: HashMap<String, ChainVerifier> = HashMap::new();
    let mut by_stream: BTreeMap<String, Vec<AnyEvent>> = BTreeMap::new();
    for l in &lines {
        let stream = StreamId::new(l["stream"].as_str().unwrap()).unwrap();
        let payload = l["payload"].as_str().unwrap();
        let event = decode_any(
            &stream,
            l["type"].as_str().unwrap(),
            u32::try_from(l["schema_version"].as_u64().unwrap()).unwrap(),
            payload,
        )
        .unwrap_or_else(|e| panic!("{stream} v{}: {e}", l["version"]));
        let encoded = event.encode();
        assert_eq!(encoded.payload, payload, "{stream} v{}", l["version"]);
        assert_eq!(encoded.event_type, l["type"].as_str().unwrap());
        let recorded = RecordedEvent {
            global_position: l["position"].as_u64().unwrap(),
            commit: l["commit"].as_u64().unwrap(),
            stream_id: stream.clone(),
            stream_version: l["version"].as_u64().unwrap(),
            event_id: EventId(l["event_id"].as_str().unwrap().parse().unwrap()),
            event_type: l["type"].as_str().unwrap().to_owned(),
            schema_version: u32::try_from(l["schema_version"].as_u64().unwrap()).unwrap(),
            payload: payload.to_owned(),
            metadata: l["metadata"].as_str().unwrap().to_owned(),
            recorded_at: chrono::DateTime::parse_from_rfc3339(l["recorded_at"].as_str().unwrap())
                .unwrap()
                .to_utc(),
            prev_hash: hex32(l["prev_hash"].as_str().unwrap()),
            hash: hex32(l["hash"].as_str().unwrap()),
        };
        chains
            .entry(stream.to_string())
            .or_insert_with(|| ChainVerifier::new(&stream))
            .push(&recorded)
            .unwrap();
        by_stream.entry(stream.to_string()).or_default().push(event);
    }
    let kinds: Vec<StreamKind> = by_stream
        .keys()
        .map(|s| StreamKind::of(&StreamId::new(s.clone()).unwrap()).unwrap())
        .collect();
    for k in [StreamKind::Order, StreamKind::Refund, StreamKind::Transfer] {
        assert!(kinds.contains(&k), "{k:?} missing from the golden file");
    }
    for (stream, events) in by_stream {
        let state = match events.first() {
            Some(AnyEvent::Order(_)) => Order::fold(events.iter().map(|e| match e {
                AnyEvent::Order(e) => e,
                _ => panic!(),
            }))
            .map(|s| serde_json::to_value(s).unwrap()),
            Some(AnyEvent::Refund(_)) => Refund::fold(events.iter().map(|e| match e {
                AnyEvent::Refund(e) => e,
                _ => panic!(),
            }))
            .map(|s| serde_json::to_value(s).unwrap()),
            _ => SellerTransfer::fold(events.iter().map(|e| match e {
                AnyEvent::Transfer(e) => e,
                _ => panic!(),
            }))
            .map(|s| serde_json::to_value(s).unwrap()),
        };
        assert!(state.is_ok(), "{stream}: {state:?}");
    }
}
