#![allow(clippy::unwrap_used, clippy::expect_used)]
//! TLS to Postgres through [`PgStore::connect`]: the `sslmode` and
//! `sslrootcert` of the URL decide whether the session is encrypted and
//! which certificates are trusted.
//!
//! Needs the test cluster to run with `ssl = on` (Debian's default, with the
//! snakeoil certificate for `localhost`; `.ci/ensure-postgres` turns it on).
//! A server without TLS is played by a listener that answers the
//! `SSLRequest` with `N`, as such a server does.

mod common;

use std::str::FromStr;

use common::database_url;
use ledger_postgres::PgStore;
use ledger_store::StoreError;
use sqlx::ConnectOptions;
use sqlx::postgres::PgConnectOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A self-signed certificate for `CN=localhost` (the snakeoil's own subject)
/// made with a key of its own: it signed nothing the server presents.
const UNRELATED_CA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/unrelated-ca.pem"
);

/// `SSLRequest`: length 8, then the code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// The test database URL with `host` (when given) and `query` instead of
/// its own host and query.
fn url_with(host: Option<&str>, query: &[(&str, &str)]) -> String {
    let options = PgConnectOptions::from_str(&database_url()).unwrap();
    let mut url = options.to_url_lossy();
    if let Some(host) = host {
        url.set_host(Some(host)).unwrap();
    }
    url.set_query(None);
    for (key, value) in query {
        url.query_pairs_mut().append_pair(key, value);
    }
    url.to_string()
}

/// Whether this store's session is encrypted, as the server sees it.
async fn session_is_encrypted(store: &PgStore) -> bool {
    sqlx::query_scalar("select ssl from pg_stat_ssl where pid = pg_backend_pid()")
        .fetch_one(store.pool())
        .await
        .unwrap()
}

/// The certificate the test server presents (`ssl_cert_file`).
async fn server_certificate() -> String {
    let store = PgStore::connect(&url_with(None, &[("sslmode", "disable")]))
        .await
        .unwrap();
    sqlx::query_scalar("select setting from pg_settings where name = 'ssl_cert_file'")
        .fetch_one(store.pool())
        .await
        .unwrap()
}

fn refused(result: Result<PgStore, StoreError>) -> String {
    match result {
        Ok(_) => panic!("connected where the connection had to be refused"),
        Err(err) => err.to_string(),
    }
}

#[tokio::test]
async fn sslmode_require_connects_encrypted_and_disable_does_not() {
    let store = PgStore::connect(&url_with(None, &[("sslmode", "require")]))
        .await
        .unwrap();
    assert!(session_is_encrypted(&store).await);

    // The same question tells a plaintext session apart.
    let plain = PgStore::connect(&url_with(None, &[("sslmode", "disable")]))
        .await
        .unwrap();
    assert!(!session_is_encrypted(&plain).await);
}

#[tokio::test]
async fn verify_full_trusts_the_sslrootcert_of_the_url_for_its_host() {
    let cert = server_certificate().await;
    let store = PgStore::connect(&url_with(
        Some("localhost"),
        &[("sslmode", "verify-full"), ("sslrootcert", &cert)],
    ))
    .await
    .unwrap();
    assert!(session_is_encrypted(&store).await);
}

#[tokio::test]
async fn verify_full_refuses_a_certificate_its_root_did_not_sign() {
    let err = refused(
        PgStore::connect(&url_with(
            Some("localhost"),
            &[("sslmode", "verify-full"), ("sslrootcert", UNRELATED_CA)],
        ))
        .await,
    );
    assert!(err.contains("TLS"), "{err}");
    assert!(err.contains("invalid peer certificate"), "{err}");
}

#[tokio::test]
async fn verify_full_without_sslrootcert_refuses_a_self_signed_server() {
    // The built-in web PKI roots never signed the snakeoil certificate.
    let err = refused(
        PgStore::connect(&url_with(Some("localhost"), &[("sslmode", "verify-full")])).await,
    );
    assert!(err.contains("TLS"), "{err}");
    assert!(err.contains("invalid peer certificate"), "{err}");
}

#[tokio::test]
async fn verify_full_refuses_a_host_the_certificate_does_not_name() {
    // Trusted root, but the certificate names `localhost`, not this address.
    let cert = server_certificate().await;
    let err = refused(
        PgStore::connect(&url_with(
            Some("127.0.0.1"),
            &[("sslmode", "verify-full"), ("sslrootcert", &cert)],
        ))
        .await,
    );
    assert!(err.contains("TLS"), "{err}");
    assert!(err.contains("not valid for name"), "{err}");
}

/// A server that declines TLS: reads the `SSLRequest`, answers `N`, then
/// records whatever the client sends next (a plaintext startup message,
/// user and database in clear) until it closes or one message is complete.
async fn server_without_tls() -> (u16, tokio::task::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 8];
        socket.read_exact(&mut request).await.unwrap();
        assert_eq!(request, SSL_REQUEST, "the client must ask for TLS first");
        socket.write_all(b"N").await.unwrap();
        let mut after = Vec::new();
        loop {
            if after.len() >= 4 {
                let declared = u32::from_be_bytes([after[0], after[1], after[2], after[3]]);
                if after.len() >= declared as usize {
                    break;
                }
            }
            if socket.read_buf(&mut after).await.unwrap_or(0) == 0 {
                break;
            }
        }
        after
    });
    (port, task)
}

fn url_to_port(port: u16, sslmode: &str) -> String {
    let options = PgConnectOptions::from_str(&database_url()).unwrap();
    format!(
        "postgres://{}@127.0.0.1:{port}/{}?sslmode={sslmode}",
        options.get_username(),
        options.get_database().unwrap_or("test"),
    )
}

#[tokio::test]
async fn sslmode_require_refuses_a_server_without_tls_before_sending_anything() {
    let (port, server) = server_without_tls().await;
    let err = refused(PgStore::connect(&url_to_port(port, "require")).await);
    assert!(err.contains("TLS"), "{err}");
    assert!(err.contains("does not support TLS"), "{err}");
    let sent_in_clear = server.await.unwrap();
    assert!(
        sent_in_clear.is_empty(),
        "sent in plaintext after the refusal: {sent_in_clear:?}"
    );
}

#[tokio::test]
async fn sslmode_prefer_would_fall_back_to_plaintext() {
    // Why production demands `require`: with `prefer` the same server gets
    // the startup message, user name included, in clear.
    let (port, server) = server_without_tls().await;
    let _ = PgStore::connect(&url_to_port(port, "prefer")).await;
    let sent_in_clear = server.await.unwrap();
    assert!(!sent_in_clear.is_empty());
    let user = PgConnectOptions::from_str(&database_url())
        .unwrap()
        .get_username()
        .to_owned();
    assert!(
        sent_in_clear
            .windows(user.len())
            .any(|w| w == user.as_bytes()),
        "{sent_in_clear:?}"
    );
}
