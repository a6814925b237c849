//! `ledger bench http`: the HTTP API under load, beside the raw single-row
//! `INSERT` rate measured in the same run through the same pool.
//!
//! Three timed paths, in alternating rounds so machine noise hits all alike:
//! 1. raw single-row `INSERT` (the baseline), `clients` writers;
//! 2. `POST /v1/orders` over real HTTP on loopback, `clients` concurrent
//!    clients, each with its own Idempotency-Key per request;
//! 3. signed `payment_succeeded` webhooks for orders whose payment was
//!    initiated (set up untimed), `clients` concurrent deliveries.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use ledger_core::Metadata;
use ledger_core::ids::{OrderId, command_id_from_cause, payment_id_for};
use ledger_core::order::{Order, OrderCommand};
use ledger_projections::clock::SystemClock;
use ledger_store::handle::{CommandContext, execute};
use tokio::net::TcpListener;

use crate::bench::{Path, ROUNDS, Stats, WARMUP, ms, open_bench_backend, ratio, run_phase};
use crate::cli::BenchStore;
use crate::config::Config;

const TOKEN: &str = "bench-api-token";
const WEBHOOK_SECRET: &str = "bench-webhook-secret";
/// Orders set up for the webhook phase at most (untimed setup).
const WEBHOOK_ORDERS_MAX: usize = 200_000;

#[derive(Debug, Clone, Copy)]
pub struct HttpBenchOptions {
    pub clients: u32,
    pub duration: Duration,
}

fn order_body(n: u64) -> String {
    serde_json::json!({
        "buyer_id": format!("buyer-{}", n % 1000),
        "currency": "USD",
        "items": [
            {"product_id": "track-1", "seller_id": format!("seller-{}", n % 50),
             "seller_account": "acct_1A", "unit_amount_minor": 1299, "quantity": 1},
            {"product_id": "course-7", "seller_id": format!("seller-{}", (n + 7) % 50),
             "seller_account": "acct_2B", "unit_amount_minor": 4900, "quantity": 1}
        ]
    })
    .to_string()
}

/// `order_body(n)`, from the bodies built once.
fn body_of(bodies: &[axum::body::Bytes], n: u64) -> axum::body::Bytes {
    usize::try_from(n % ORDER_BODIES)
        .ok()
        .and_then(|i| bodies.get(i))
        .cloned()
        .unwrap_or_else(|| axum::body::Bytes::from(order_body(n)))
}

fn webhook_body(order: OrderId, n: usize) -> String {
    let payment_id = payment_id_for(order);
    // Compact, fields in Hyperswitch's order.
    format!(
        concat!(
            r#"{{"merchant_id":"merchant_bench","event_id":"evt_bench_{n:012}","event_type":"payment_succeeded","#,
            r#""content":{{"type":"payment_details","object":{{"payment_id":"{p}","merchant_id":"merchant_bench","#,
            r#""status":"succeeded","amount":6199,"net_amount":6199,"amount_received":6199,"connector":"stripe","#,
            r#""created":"2026-11-27T12:00:00.000Z","currency":"USD","customer_id":"bench","metadata":null,"#,
            r#""error_code":null,"error_message":null,"updated":"2026-11-27T12:00:01.000Z"}}}},"#,
            r#""timestamp":"2026-11-27T12:00:01.000Z"}}"#
        ),
        n = n,
        p = payment_id.as_str()
    )
}

/// Distinct order bodies: `order_body(n)` repeats with this period.
const ORDER_BODIES: u64 = 1_000;

/// What the bench reads of a `201` answer.
#[derive(serde::Deserialize)]
struct Placed {
    order_id: uuid::Uuid,
}

/// The load generator shares the ledger's two cores, so it does as little
/// per request as it can: bodies built once, the URL parsed once.
struct Shared {
    client: reqwest::Client,
    orders_url: reqwest::Url,
    webhooks_url: reqwest::Url,
    order_bodies: Vec<axum::body::Bytes>,
    placed: std::sync::Mutex<Vec<OrderId>>,
    next_key: AtomicUsize,
}

async fn place_phase(shared: Arc<Shared>, clients: u32, duration: Duration, record: bool) -> Stats {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let shared = Arc::clone(&shared);
        tasks.push(tokio::spawn(async move {
            let mut stats = Stats::default();
            let mut placed = Vec::new();
            while Instant::now() < deadline {
                let n = shared.next_key.fetch_add(1, Ordering::Relaxed) as u64;
                let t = Instant::now();
                let res = shared
                    .client
                    .post(shared.orders_url.clone())
                    .bearer_auth(TOKEN)
                    .header("idempotency-key", format!("bench-{n}"))
                    .header("content-type", "application/json")
                    .body(body_of(&shared.order_bodies, n))
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status().as_u16() == 201 => {
                        let body = r.json::<Placed>().await;
                        if record {
                            stats.record(t.elapsed());
                        }
                        if let Ok(body) = body {
                            placed.push(OrderId(body.order_id));
                        }
                    }
                    Ok(r) => {
                        stats.error();
                        tracing::warn!(status = r.status().as_u16(), "bench PlaceOrder refused");
                    }
                    Err(e) => {
                        stats.error();
                        tracing::warn!(error = %e, "bench PlaceOrder failed");
                    }
                }
            }
            if let Ok(mut all) = shared.placed.lock() {
                all.extend(placed);
            }
            stats
        }));
    }
    let mut total = Stats::default();
    for t in tasks {
        if let Ok(s) = t.await {
            total.merge(s);
        }
    }
    total.set_elapsed(started.elapsed());
    total
}

async fn webhook_phase(
    shared: Arc<Shared>,
    bodies: Arc<Vec<(String, String)>>,
    clients: u32,
    duration: Duration,
) -> Stats {
    let started = Instant::now();
    let deadline = started + duration;
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (shared, bodies, next) = (Arc::clone(&shared), Arc::clone(&bodies), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            let mut stats = Stats::default();
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((body, sig)) = bodies.get(i) else {
                    break;
                };
                let t = Instant::now();
                let res = shared
                    .client
                    .post(shared.webhooks_url.clone())
                    .header("content-type", "application/json")
                    .header("user-agent", "Hyperswitch-Backend-Server")
                    .header("x-webhook-signature-512", sig)
                    .body(body.clone())
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status().is_success() => stats.record(t.elapsed()),
                    Ok(r) => {
                        stats.error();
                        tracing::warn!(status = r.status().as_u16(), "bench webhook refused");
                    }
                    Err(e) => {
                        stats.error();
                        tracing::warn!(error = %e, "bench webhook failed");
                    }
                }
            }
            stats
        }));
    }
    let mut total = Stats::default();
    for t in tasks {
        if let Ok(s) = t.await {
            total.merge(s);
        }
    }
    total.set_elapsed(started.elapsed());
    total
}

/// `ledger bench http`.
pub async fn http(
    store: BenchStore,
    database_url: Option<&str>,
    opts: HttpBenchOptions,
) -> anyhow::Result<()> {
    let (backend, label, _scratch) = open_bench_backend(store, database_url).await?;
    backend.migrate().await?;
    backend.baseline().prepare_baseline().await?;
    let env: HashMap<&str, String> = HashMap::from([
        ("APP_ENV", "development".to_owned()),
        ("LEDGER_API_TOKEN", TOKEN.to_owned()),
        ("LEDGER_ADMIN_TOKEN", format!("{TOKEN}-admin")),
        ("HYPERSWITCH_WEBHOOK_SECRET", WEBHOOK_SECRET.to_owned()),
        // The ledger's own path only: with the managers on, every order
        // would also wait on a PSP round trip, which is the PSP's latency,
        // not the ledger's.
        ("HYPERSWITCH_ENABLED", "false".to_owned()),
        // A bench is a flood by design: the per-token limit would measure
        // itself, not the ledger.
        ("DISABLE_RATE_LIMIT_FOR_TESTS", "1".to_owned()),
    ]);
    let (config, _) = Config::from_env(&|k: &str| env.get(k).cloned())
        .map_err(|e| anyhow::anyhow!("bench config: {e}"))?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding a loopback port")?;
    let server = crate::serve::start(
        &config,
        &backend,
        listener,
        Arc::new(SystemClock),
        crate::managers::WorkerMode::Manual,
    )
    .await?;
    let shared = Arc::new(Shared {
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(opts.clients as usize)
            .build()
            .context("building the HTTP client")?,
        orders_url: reqwest::Url::parse(&format!("http://{}/v1/orders", server.addr))
            .context("parsing the orders URL")?,
        webhooks_url: reqwest::Url::parse(&format!("http://{}/webhooks/hyperswitch", server.addr))
            .context("parsing the webhooks URL")?,
        order_bodies: (0..ORDER_BODIES)
            .map(|n| axum::body::Bytes::from(order_body(n)))
            .collect(),
        placed: std::sync::Mutex::new(Vec::new()),
        next_key: AtomicUsize::new(0),
    });
    let backend = Arc::new(backend);
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));

    let round = opts.duration / ROUNDS;
    let mut raw = Stats::default();
    let mut place = Stats::default();
    for r in 1..=ROUNDS {
        bar.set_message(format!("round {r}/{ROUNDS}: raw INSERT"));
        run_phase(
            Arc::clone(&backend),
            Path::RawInsert,
            opts.clients,
            WARMUP,
            false,
        )
        .await;
        raw.merge(
            run_phase(
                Arc::clone(&backend),
                Path::RawInsert,
                opts.clients,
                round,
                true,
            )
            .await,
        );
        bar.set_message(format!("round {r}/{ROUNDS}: POST /v1/orders"));
        place_phase(Arc::clone(&shared), opts.clients, WARMUP, false).await;
        place.merge(place_phase(Arc::clone(&shared), opts.clients, round, true).await);
    }

    // Webhook setup (untimed): initiate the payment of every placed order.
    let orders: Vec<OrderId> = shared
        .placed
        .lock()
        .map(|v| v.iter().copied().take(WEBHOOK_ORDERS_MAX).collect())
        .unwrap_or_default();
    bar.set_message(format!(
        "setting up {} payments for the webhook phase",
        orders.len()
    ));
    let events = server.state.events.clone();
    let now = chrono::Utc::now();
    for order in &orders {
        let cmd = OrderCommand::InitiatePayment {
            payment_id: payment_id_for(*order),
            now,
        };
        let ctx = CommandContext {
            command_id: command_id_from_cause(&format!("bench:init:{}", order.0)),
            metadata: Metadata {
                correlation_id: order.0,
                causation_id: None,
                actor: "bench".to_owned(),
                source: ledger_core::Source::Worker,
                request_id: None,
            },
        };
        execute::<Order, _>(&*events, &order.stream_id(), &ctx, &cmd)
            .await
            .map_err(|e| anyhow::anyhow!("bench setup: {e}"))?;
    }
    let bodies: Vec<(String, String)> = orders
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let body = webhook_body(*o, i);
            let sig = ledger_psp::sign_hyperswitch(WEBHOOK_SECRET.as_bytes(), body.as_bytes());
            (body, sig)
        })
        .collect();
    bar.set_message("signed payment_succeeded webhooks");
    let mut hooks = webhook_phase(
        Arc::clone(&shared),
        Arc::new(bodies),
        opts.clients,
        opts.duration / ROUNDS,
    )
    .await;
    bar.finish_and_clear();
    server.shutdown().await?;

    println!(
        "bench http: {label}, {} concurrent clients, {}s per path ({} rounds for INSERT vs PlaceOrder)",
        opts.clients,
        opts.duration.as_secs(),
        ROUNDS
    );
    println!(
        "{:<40} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "path", "ops", "ops/s", "p50 ms", "p99 ms", "errors"
    );
    for (name, s) in [
        ("raw single-row INSERT (baseline)", &mut raw),
        ("POST /v1/orders (PlaceOrder)", &mut place),
        ("POST /webhooks/hyperswitch (signed)", &mut hooks),
    ] {
        let (p50, p99) = (s.percentile_us(50), s.percentile_us(99));
        println!(
            "{:<40} {:>9} {:>9} {:>9} {:>9} {:>7}",
            name,
            s.count(),
            s.per_second(),
            ms(p50),
            ms(p99),
            s.errors()
        );
    }
    println!(
        "ratio PlaceOrder/baseline throughput: {}x",
        ratio(place.per_second(), raw.per_second())
    );
    println!(
        "ratio webhook/baseline throughput: {}x",
        ratio(hooks.per_second(), raw.per_second())
    );
    let errors = raw.errors() + place.errors() + hooks.errors();
    if errors > 0 {
        anyhow::bail!("{errors} operations failed; see the WARN lines above");
    }
    Ok(())
}
