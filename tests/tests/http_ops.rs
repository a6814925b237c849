//! End-to-end: operations endpoints, the OpenAPI document against the routes
//! the router really serves, request ids, and graceful shutdown with a
//! request in flight, over real HTTP on both backends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
#[path = "common/http.rs"]
mod http_common;

use std::collections::BTreeSet;
use std::time::Duration;

use http_common::*;
use reqwest::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

http_tests!(
    health_readiness_and_metrics_after_traffic,
    openapi_lists_exactly_the_routes_the_router_serves,
    every_response_carries_a_request_id,
    wrong_method_gets_the_error_shape,
    shutdown_completes_the_request_in_flight,
    a_database_outage_is_503_or_a_safe_500,
);

/// Every route the router serves, as `(method, OpenAPI path)`.
const ROUTES: [(&str, &str); 19] = [
    ("post", "/v1/orders"),
    ("get", "/v1/orders"),
    ("get", "/v1/orders/{id}"),
    ("post", "/v1/orders/{id}/refunds"),
    ("get", "/v1/orders/{id}/events"),
    ("get", "/v1/refunds/{id}"),
    ("get", "/v1/transfers"),
    ("get", "/v1/transfers/{id}"),
    ("get", "/v1/sellers/{id}/balance"),
    ("get", "/v1/ledger/trial-balance"),
    ("get", "/v1/anomalies"),
    ("post", "/v1/admin/transfers/{id}/retry"),
    ("post", "/v1/admin/transfers/{id}/anomalies/resolve"),
    ("post", "/v1/admin/reconcile"),
    ("post", "/v1/admin/reconcile/provider"),
    ("post", "/webhooks/hyperswitch"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
];

async fn health_readiness_and_metrics_after_traffic(kind: Kind) {
    let app = spawn_app(kind, &[]).await;
    // No token needed for operations endpoints.
    let r = app.send(app.anon(Method::GET, "/healthz")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"status": "ok"}));
    let r = app.send(app.anon(Method::GET, "/readyz")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ready = r.json();
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["problems"], json!([]));
    assert!(
        !ready["projections"].as_array().unwrap().is_empty(),
        "{ready}"
    );

    // Traffic: an order, its replay, a refused one, webhooks ok and bad.
    let body = two_seller_order("buyer-m");
    let first = app.post_order("metrics-1", &body).await;
    assert_eq!(first.status, 201);
    let again = app.post_order("metrics-1", &body).await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    app.post_order("metrics-2", &order_body("b", vec![]))
        .await
        .assert_error(422, "empty_order");
    let order = ledger_core::ids::OrderId(
        Uuid::parse_str(first.json()["order_id"].as_str().unwrap()).unwrap(),
    );
    app.pay(order, 5500).await;
    app.deliver(b"{}", Sig::Missing, None)
        .await
        .assert_error(401, "signature_invalid");
    app.deliver_ok(
        &other_webhook(&new_event_id(), "dispute_opened", "dispute_details"),
        "skipped",
    )
    .await;
    app.settle().await;
    let r = app.send(app.anon(Method::GET, "/readyz")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let position = r.json()["projections"][0]["position"].as_u64().unwrap();
    assert_eq!(position, app.head_position().await);

    let r = app.send(app.anon(Method::GET, "/metrics")).await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = r.text();
    for line in [
        r#"ledger_http_requests_total{route="/v1/orders",method="POST",status="201"} 2"#,
        r#"ledger_http_requests_total{route="/v1/orders",method="POST",status="422"} 1"#,
        r#"ledger_http_requests_total{route="/healthz",method="GET",status="200"} 1"#,
        r#"ledger_http_requests_total{route="/webhooks/hyperswitch",method="POST",status="401"} 1"#,
        r#"ledger_webhook_deliveries_total{result="ok"} 1"#,
        r#"ledger_webhook_deliveries_total{result="signature_invalid"} 1"#,
        r#"ledger_webhook_deliveries_total{result="skipped"} 1"#,
        r#"ledger_idempotency_replays_total{scope="api:POST /v1/orders"} 1"#,
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
    assert!(
        text.contains("ledger_http_request_duration_seconds_bucket{"),
        "{text}"
    );
    assert!(text.contains("ledger_projection_lag_events{"), "{text}");
    for secret in [API_TOKEN, ADMIN_TOKEN, WEBHOOK_SECRET] {
        assert!(!text.contains(secret));
    }
}

/// A request to `path` (placeholders filled) with the admin token, a key
/// and a small body, so every route gets past its guards.
async fn probe(app: &TestApp, method: &str, path: &str) -> Resp {
    let path = path.replace("{id}", &Uuid::new_v4().to_string());
    let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
    let mut rb = app
        .anon(method.clone(), &path)
        .bearer_auth(ADMIN_TOKEN)
        .header("idempotency-key", Uuid::new_v4().to_string());
    if method == Method::POST {
        rb = rb.header("content-type", "application/json").body("{}");
    }
    app.send(rb).await
}

async fn openapi_lists_exactly_the_routes_the_router_serves(kind: Kind) {
    let app = spawn_app(kind, &[]).await;
    let r = app.send(app.anon(Method::GET, "/openapi.json")).await;
    assert_eq!(r.status, 200);
    let doc = r.json();
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|k| ["get", "post", "put", "patch", "delete"].contains(&k.as_str()))
                .map(move |m| (m.clone(), path.clone()))
        })
        .collect();
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(
        documented, expected,
        "the document and the route list differ"
    );

    // Each documented route is served: never the fallback, never 405.
    for (method, path) in &ROUTES {
        let r = probe(&app, method, path).await;
        assert_ne!(r.status, 405, "{method} {path}");
        assert_ne!(
            r.json()["error"]["code"],
            "route_not_found",
            "{method} {path} is not routed"
        );
    }
    // And the router serves nothing else under these prefixes.
    for (method, path) in [
        ("get", "/v1/orders/{id}/lines"),
        ("post", "/v1/refunds"),
        ("get", "/v1/admin/reconcile/x"),
        ("get", "/webhooks/stripe"),
    ] {
        probe(&app, method, path)
            .await
            .assert_error(404, "route_not_found");
    }

    // Components and security.
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for name in [
        "ErrorBody",
        "ErrorDetail",
        "PlaceOrderRequest",
        "OrderItemRequest",
        "OrderCreated",
        "RefundRequest",
        "RefundReasonCodeBody",
        "RefundAccepted",
    ] {
        assert!(
            schemas.contains_key(name),
            "schema {name} missing: {:?}",
            schemas.keys()
        );
    }
    assert_eq!(
        schemas["RefundReasonCodeBody"]["enum"],
        json!(["duplicate", "fraudulent", "requested_by_customer"])
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    for (method, path) in &ROUTES {
        let op = &doc["paths"][path][method];
        let secured = op["security"]
            .as_array()
            .is_some_and(|s| s.iter().any(|x| x.get("bearer").is_some()));
        assert_eq!(
            secured,
            path.starts_with("/v1/"),
            "{method} {path} security"
        );
    }
    let place = &doc["paths"]["/v1/orders"]["post"];
    for status in ["201", "400", "401", "409", "413", "422"] {
        assert!(
            place["responses"].get(status).is_some(),
            "POST /v1/orders lacks {status}"
        );
    }

    // Transfer statuses: one enum, the core's, with the indeterminate ones;
    // the retry answer documents what a read of Stripe found.
    let statuses = schemas["TransferStatusName"]["enum"].as_array().unwrap();
    for status in ["reversal_failed", "indeterminate", "reversal_indeterminate"] {
        assert!(statuses.contains(&json!(status)), "{statuses:?}");
    }
    let retried = &schemas["TransferRetried"]["properties"];
    for field in [
        "transfer_id",
        "from_status",
        "status",
        "attempt",
        "found",
        "absent",
        "anomaly",
    ] {
        assert!(
            retried.get(field).is_some(),
            "TransferRetried.{field}: {retried}"
        );
    }
    let retry = &doc["paths"]["/v1/admin/transfers/{id}/retry"]["post"];
    assert!(
        retry["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
            .as_str()
            .is_some_and(|r| r.ends_with("/TransferRetried")),
        "{retry}"
    );
    assert!(
        retry["responses"]["503"]["headers"]
            .get("Retry-After")
            .is_some(),
        "{retry}"
    );
    let list = &doc["paths"]["/v1/transfers"]["get"]["parameters"];
    assert!(list.to_string().contains("TransferStatusName"), "{list}");
    let provider = &doc["paths"]["/v1/admin/reconcile/provider"]["post"];
    for status in ["200", "400", "401", "403", "422", "501", "503"] {
        assert!(
            provider["responses"].get(status).is_some(),
            "POST /v1/admin/reconcile/provider lacks {status}: {provider}"
        );
    }
    assert!(
        provider["requestBody"]
            .to_string()
            .contains("ProviderReconcileRequest"),
        "{provider}"
    );
    assert!(
        schemas["ProviderReconciled"]["properties"]
            .get("anomalies")
            .is_some()
    );
}

async fn every_response_carries_a_request_id(kind: Kind) {
    let app = spawn_app(kind, &[]).await;
    for (path, auth) in [
        ("/healthz", false),
        ("/v1/orders", true),
        ("/v1/orders", false),
        ("/nowhere", false),
    ] {
        let rb = if auth {
            app.req(Method::GET, path)
        } else {
            app.anon(Method::GET, path)
        };
        let r = app.send(rb.header("x-request-id", "trace-abc-123")).await;
        assert_eq!(r.header("x-request-id"), Some("trace-abc-123"), "{path}");
        let rb = if auth {
            app.req(Method::GET, path)
        } else {
            app.anon(Method::GET, path)
        };
        let r = app.send(rb).await;
        Uuid::parse_str(r.header("x-request-id").unwrap()).expect("generated ids are UUIDs");
    }
    for insane in ["a".repeat(129), "has space".to_owned(), String::new()] {
        let r = app
            .send(
                app.anon(Method::GET, "/healthz")
                    .header("x-request-id", &insane),
            )
            .await;
        let id = r.header("x-request-id").unwrap();
        assert_ne!(id, insane);
        Uuid::parse_str(id).expect("replaced by a UUID");
    }
    let at_limit = "b".repeat(128);
    let r = app
        .send(
            app.anon(Method::GET, "/healthz")
                .header("x-request-id", &at_limit),
        )
        .await;
    assert_eq!(r.header("x-request-id"), Some(at_limit.as_str()));
}

async fn wrong_method_gets_the_error_shape(kind: Kind) {
    let app = spawn_app(kind, &[]).await;
    let r = app.send(app.req(Method::DELETE, "/v1/orders")).await;
    assert_eq!(r.status, 405);
    r.assert_error(405, "method_not_allowed");
}

/// Reads from `stream` until `buf` holds `needle`.
async fn read_until(stream: &mut TcpStream, buf: &mut Vec<u8>, needle: &[u8]) {
    let mut chunk = [0u8; 4096];
    while !buf.windows(needle.len()).any(|w| w == needle) {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "connection closed before {:?}: {}",
            String::from_utf8_lossy(needle),
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn shutdown_completes_the_request_in_flight(kind: Kind) {
    let mut app = spawn_app(kind, &[]).await;
    let addr = app.server().addr;
    let body = serde_json::to_vec(&two_seller_order("buyer-shutdown")).unwrap();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/orders HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {API_TOKEN}\r\n\
         idempotency-key: shutdown-1\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nexpect: 100-continue\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // The server answers 100 Continue only once the handler reads the body:
    // from here on the request is in flight.
    let mut buf = Vec::new();
    read_until(&mut stream, &mut buf, b"HTTP/1.1 100 Continue\r\n\r\n").await;

    let server = app.take_server();
    let cancel = server.cancel_token();
    let shutdown = tokio::spawn(server.shutdown());
    cancel.cancelled().await;
    // New connections are refused once the listener is gone (bounded poll of
    // that observable condition).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "still accepting after shutdown"
        );
        tokio::task::yield_now().await;
    }
    assert!(
        !shutdown.is_finished(),
        "shutdown finished while a request was in flight"
    );

    stream.write_all(&body).await.unwrap();
    buf.clear();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    let text = String::from_utf8_lossy(&rest).into_owned();
    assert!(text.starts_with("HTTP/1.1 201"), "{text}");
    assert!(text.contains("\"status\":\"created\""), "{text}");
    tokio::time::timeout(Duration::from_secs(30), shutdown)
        .await
        .expect("shutdown finishes once the request is done")
        .unwrap()
        .expect("graceful shutdown");
    assert_eq!(
        app.counts().await.events,
        1,
        "the in-flight order was recorded"
    );
}

async fn a_database_outage_is_503_or_a_safe_500(kind: Kind) {
    let app = spawn_app(kind, &[]).await;
    let (order, total) = app.place_simple_order().await;
    app.initiate_payment(order).await;
    match &app.backend {
        ledger_api::store::Backend::Postgres(s) => s.pool().close().await,
        ledger_api::store::Backend::Sqlite(s) => s.close().await,
    }
    // The query endpoints' own pool (statement_timeout) goes down with it.
    if let Some(reads) = app.server().read_pool() {
        reads.pool().close().await;
    }

    let r = app.send(app.anon(Method::GET, "/healthz")).await;
    assert_eq!(r.status, 200, "liveness does not depend on the database");
    let r = app.send(app.anon(Method::GET, "/readyz")).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["status"], "not_ready");
    assert!(
        r.json()["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "database unreachable"),
        "{}",
        r.text()
    );

    // Commands and queries: 500 with a message that names no internals.
    for r in [
        app.post_order("outage-1", &two_seller_order("b")).await,
        app.get("/v1/orders").await,
        app.get(&format!("/v1/orders/{order}")).await,
    ] {
        r.assert_error(500, "internal");
        let message = r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_lowercase();
        for internal in ["pool", "sqlx", "closed", "postgres", "sqlite", "database"] {
            assert!(!message.contains(internal), "{message}");
        }
    }
    // The PSP is told to retry (503), not that the delivery was handled.
    let body = payment_succeeded_webhook(order, total);
    app.deliver(&body, Sig::Valid, None)
        .await
        .assert_error(503, "unavailable");
    app.deliver(&body, Sig::Missing, None)
        .await
        .assert_error(401, "signature_invalid");
    let metrics = app.send(app.anon(Method::GET, "/metrics")).await.text();
    assert!(
        metrics
            .lines()
            .any(|l| l == r#"ledger_webhook_deliveries_total{result="failed"} 1"#),
        "{metrics}"
    );
}
