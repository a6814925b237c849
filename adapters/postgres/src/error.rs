//! sqlx errors as [`StoreError`]s.
//!
//! Messages are built from the error's kind and the server's own message,
//! never from connect options, so they carry no credentials; `connect`
//! additionally scrubs the URL's password from whatever it returns.

use ledger_core::NewEvent;
use ledger_core::ids::{EventId, StreamId};
use ledger_store::StoreError;
use sqlx::postgres::PgDatabaseError;

use crate::append::event_id_in;

/// Named in the migration. Violated when a concurrent append to the same
/// stream committed the version this one tried to write.
const EVENT_PK: &str = "event_pk";
/// Named in the first migration and dropped by `20261127000020` (ids stay
/// unique through `event_pk`, see `append.rs`). Kept so that a database not
/// yet migrated still reports a race of the same ids as one.
const EVENT_ID_UNIQUE: &str = "event_stream_event_id_uq";
/// Raised by `ledger_append` (direct SQL callers) when the transaction's xid
/// is older than the stream head's writer; a fresh transaction succeeds. The
/// adapter's own statements report that case by writing nothing instead.
const SERIALIZATION_FAILURE: &str = "40001";

/// Any sqlx error as a transient [`StoreError::Backend`].
pub(crate) fn backend(err: sqlx::Error) -> StoreError {
    StoreError::Backend(describe(&err))
}

/// A connect-time error, with the URL's password scrubbed from the message.
pub(crate) fn backend_redacted(err: sqlx::Error, url: &str) -> StoreError {
    StoreError::Backend(redact(&describe(&err), url))
}

fn describe(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => format!("database error {code}: {}", db.message()),
            None => format!("database error: {}", db.message()),
        },
        // tokio-rustls reports a refused handshake (an untrusted certificate,
        // one for another host) as `InvalidData` wrapping rustls's error.
        sqlx::Error::Io(io) => match io.get_ref() {
            Some(inner) if io.kind() == std::io::ErrorKind::InvalidData => {
                format!("TLS with the database failed: {inner}")
            }
            _ => format!("cannot talk to the database: {}", io.kind()),
        },
        sqlx::Error::PoolTimedOut => "timed out waiting for a database connection".to_owned(),
        sqlx::Error::PoolClosed => "the connection pool is closed".to_owned(),
        // The reason is sqlx's or rustls's own text ("server does not
        // support TLS", "invalid peer certificate: …"), never the options.
        sqlx::Error::Tls(e) => format!("TLS with the database failed: {e}"),
        sqlx::Error::Configuration(e) => format!("invalid database configuration: {e}"),
        other => other.to_string(),
    }
}

/// How one attempt at an append failed.
#[derive(Debug)]
pub(crate) enum AttemptError {
    /// A concurrent append to the same stream committed first; nothing was
    /// written. Re-running the append (in a new transaction) judges it
    /// against the new head. Holds the error to report if retries run out.
    Raced(StoreError),
    Failed(StoreError),
}

/// An append's error: a lost race on `event_pk` or the event-id constraint,
/// or a transaction too old to extend the stream, is [`AttemptError::Raced`];
/// anything else is final.
pub(crate) fn append_error(
    err: sqlx::Error,
    stream: &StreamId,
    events: &[NewEvent],
) -> AttemptError {
    if let sqlx::Error::Database(db) = &err
        && db.code().as_deref() == Some(SERIALIZATION_FAILURE)
    {
        return AttemptError::Raced(StoreError::Backend(format!(
            "stream {stream} stayed contended: every append attempt had to be retried"
        )));
    }
    if let sqlx::Error::Database(db) = &err
        && let Some(pg) = db.try_downcast_ref::<PgDatabaseError>()
        && db.is_unique_violation()
    {
        match pg.constraint() {
            Some(EVENT_PK) => {
                return AttemptError::Raced(StoreError::Backend(format!(
                    "stream {stream} stayed contended: every append attempt lost to a concurrent writer"
                )));
            }
            Some(EVENT_ID_UNIQUE) => {
                let detail = pg.detail().unwrap_or_default();
                if let Some(id) =
                    event_id_in(detail, events).or_else(|| events.first().map(|e| e.event_id.0))
                {
                    return AttemptError::Raced(StoreError::EventIdConflict {
                        stream: stream.clone(),
                        event_id: EventId(id),
                    });
                }
            }
            _ => {}
        }
    }
    AttemptError::Failed(backend(err))
}

impl From<StoreError> for AttemptError {
    fn from(err: StoreError) -> Self {
        AttemptError::Failed(err)
    }
}

/// Replaces the passwords of `url` (raw and percent-decoded) in `message`.
pub(crate) fn redact(message: &str, url: &str) -> String {
    let mut out = message.to_owned();
    for password in passwords_of(url) {
        out = out.replace(password, "***");
        let decoded = percent_decode(password);
        if !decoded.is_empty() {
            out = out.replace(&decoded, "***");
        }
    }
    out
}

/// The `password` of `scheme://user:password@host…` and the values of the
/// `password` and `sslpassword` query parameters (sqlx reads both).
fn passwords_of(url: &str) -> Vec<&str> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let mut out = Vec::new();
    if let Some((userinfo, _)) = authority.rsplit_once('@')
        && let Some((_, password)) = userinfo.split_once(':')
    {
        out.push(password);
    }
    if let Some((_, query)) = rest.split_once('?') {
        let query = query.split('#').next().unwrap_or(query);
        for pair in query.split('&') {
            if let Some((key, value)) = pair.split_once('=')
                && matches!(percent_decode(key).as_str(), "password" | "sslpassword")
            {
                out.push(value);
            }
        }
    }
    out.retain(|p| !p.is_empty());
    out
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_raw_and_percent_encoded_passwords() {
        let url = "postgres://u:s3cret@127.0.0.1:1/x";
        assert_eq!(redact("bad s3cret here", url), "bad *** here");
        let url = "postgres://u:p%40ss@h/db";
        assert_eq!(redact("p@ss and p%40ss", url), "*** and ***");
        assert_eq!(redact("nothing", "postgres://u@h/db"), "nothing");
        assert_eq!(redact("nothing", "not a url"), "nothing");
        let url = "postgres://u@h/db?sslmode=require&password=qu%3Fery&x=1";
        assert_eq!(redact("qu?ery and qu%3Fery", url), "*** and ***");
    }
}
