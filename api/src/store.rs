//! Choosing and opening the event store from configuration.
//!
//! `DATABASE_URL` unset → the embedded SQLite file `./data/ledger.db`;
//! `postgres://…` → Postgres; `sqlite://path` or a plain path → SQLite.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use ledger_postgres::PgStore;
use ledger_sqlite::SqliteStore;
use ledger_store::{EventStore, RawInsertBaseline};

/// Where the embedded default keeps its file.
pub const DEFAULT_SQLITE_PATH: &str = "./data/ledger.db";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Postgres(String),
    Sqlite(PathBuf),
}

impl StoreUrl {
    pub fn parse(database_url: Option<&str>) -> anyhow::Result<StoreUrl> {
        let Some(url) = database_url.map(str::trim).filter(|u| !u.is_empty()) else {
            return Ok(StoreUrl::Sqlite(PathBuf::from(DEFAULT_SQLITE_PATH)));
        };
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(StoreUrl::Postgres(url.to_owned()));
        }
        if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            let path = path.split('?').next().unwrap_or(path);
            if path.is_empty() || path == ":memory:" {
                bail!(
                    "DATABASE_URL {:?} names no file; the ledger needs a durable SQLite file such as sqlite://./data/ledger.db",
                    redact_url(url)
                );
            }
            return Ok(StoreUrl::Sqlite(PathBuf::from(path)));
        }
        if url.contains("://") {
            bail!(
                "DATABASE_URL scheme of {:?} is not supported; use postgres://… or sqlite://path",
                redact_url(url)
            );
        }
        Ok(StoreUrl::Sqlite(PathBuf::from(url)))
    }

    /// A description safe for logs: never contains a password.
    pub fn describe(&self) -> String {
        match self {
            StoreUrl::Postgres(url) => format!("postgres {}", redact_url(url)),
            StoreUrl::Sqlite(path) => format!("sqlite {}", path.display()),
        }
    }
}

/// Query parameters whose value is a password (sqlx reads `password` from
/// the query as well as from the user info; `sslpassword` unlocks a key).
const PASSWORD_PARAMS: [&str; 2] = ["password", "sslpassword"];

/// Replaces every password of a URL with `***`: the one of
/// `scheme://user:password@host` and the value of a `password=` (or
/// `sslpassword=`) query parameter, however its name is percent-encoded.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find(['/', '?', '#']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_owned()
            };
            format!("{masked}@{host}")
        }
        None => authority.to_owned(),
    };
    format!("{scheme}://{authority}{}", redact_query(tail))
}

/// `tail` (path, query, fragment) with the values of [`PASSWORD_PARAMS`]
/// replaced by `***`.
fn redact_query(tail: &str) -> String {
    let Some((path, query_and_fragment)) = tail.split_once('?') else {
        return tail.to_owned();
    };
    let (query, fragment) = match query_and_fragment.split_once('#') {
        Some((query, fragment)) => (query, Some(fragment)),
        None => (query_and_fragment, None),
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if is_password_param(key) => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    let mut out = format!("{path}?{}", pairs.join("&"));
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

fn is_password_param(key: &str) -> bool {
    let decoded = percent_decode_lossy(key);
    PASSWORD_PARAMS
        .iter()
        .any(|name| decoded.eq_ignore_ascii_case(name))
}

/// `%XX` and `+` decoded as a query-string key is; anything malformed kept.
fn percent_decode_lossy(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (byte, hex) {
            (b'%', Some(decoded)) => {
                out.push(decoded);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (other, _) => {
                out.push(other);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An opened backend.
#[derive(Debug)]
pub enum Backend {
    Postgres(PgStore),
    Sqlite(SqliteStore),
}

impl Backend {
    pub async fn open(url: &StoreUrl) -> anyhow::Result<Backend> {
        match url {
            StoreUrl::Postgres(u) => {
                Ok(Backend::Postgres(PgStore::connect(u).await.with_context(
                    || format!("cannot connect to {}", url.describe()),
                )?))
            }
            StoreUrl::Sqlite(path) => Ok(Backend::Sqlite(open_sqlite(path).await?)),
        }
    }

    pub async fn migrate(&self) -> anyhow::Result<()> {
        match self {
            Backend::Postgres(s) => s.migrate().await.context("applying Postgres migrations")?,
            Backend::Sqlite(s) => s.migrate().await.context("applying SQLite migrations")?,
        }
        Ok(())
    }

    pub fn events(&self) -> &dyn EventStore {
        match self {
            Backend::Postgres(s) => s,
            Backend::Sqlite(s) => s,
        }
    }

    pub fn baseline(&self) -> &dyn RawInsertBaseline {
        match self {
            Backend::Postgres(s) => s,
            Backend::Sqlite(s) => s,
        }
    }
}

async fn open_sqlite(path: &Path) -> anyhow::Result<SqliteStore> {
    SqliteStore::open(path)
        .await
        .with_context(|| format!("cannot open SQLite file {}", path.display()))
}

/// Opens the configured store and applies pending migrations (start-up and
/// every command that touches data do this, so a fresh machine just works).
pub async fn open_migrated(database_url: Option<&str>) -> anyhow::Result<(StoreUrl, Backend)> {
    let url = StoreUrl::parse(database_url)?;
    let backend = Backend::open(&url).await?;
    backend.migrate().await?;
    Ok((url, backend))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_embedded_sqlite() {
        assert_eq!(
            StoreUrl::parse(None).unwrap(),
            StoreUrl::Sqlite(PathBuf::from(DEFAULT_SQLITE_PATH))
        );
        assert_eq!(
            StoreUrl::parse(Some("  ")).unwrap(),
            StoreUrl::Sqlite(PathBuf::from(DEFAULT_SQLITE_PATH))
        );
        assert_eq!(
            StoreUrl::parse(Some("sqlite://x/y.db?mode=rwc")).unwrap(),
            StoreUrl::Sqlite(PathBuf::from("x/y.db"))
        );
        assert!(matches!(
            StoreUrl::parse(Some("postgres://u@h/db")).unwrap(),
            StoreUrl::Postgres(_)
        ));
    }

    #[test]
    fn bad_urls_name_the_fix_and_hide_the_password() {
        let e = StoreUrl::parse(Some("mysql://u:hunter2@h/db"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("postgres://"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let e = StoreUrl::parse(Some("sqlite::memory:"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("durable"), "{e}");
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://u:pw@h:5432/db?x=1"),
            "postgres://u:***@h:5432/db?x=1"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
        assert_eq!(
            redact_url("postgres://u:p@ss@h/db"),
            "postgres://u:***@h/db"
        );
    }

    #[test]
    fn redacts_passwords_in_the_query_string() {
        assert_eq!(
            redact_url("postgres://u@h/db?sslmode=require&password=hunter2&x=1"),
            "postgres://u@h/db?sslmode=require&password=***&x=1"
        );
        assert_eq!(
            redact_url("postgres://u:pw@h/db?password=hunter2"),
            "postgres://u:***@h/db?password=***"
        );
        // No path, another case, an encoded name, a key password, a fragment.
        assert_eq!(
            redact_url("postgres://h?PASSWORD=hunter2#frag"),
            "postgres://h?PASSWORD=***#frag"
        );
        assert_eq!(
            redact_url("postgres://h/db?pass%77ord=hunter2&sslpassword=hunter3"),
            "postgres://h/db?pass%77ord=***&sslpassword=***"
        );
        // Names that only contain "password" are not passwords.
        assert_eq!(
            redact_url("postgres://h/db?password_hint=x&options=-c%20password%3D1"),
            "postgres://h/db?password_hint=x&options=-c%20password%3D1"
        );
    }

    #[test]
    fn a_query_string_password_is_hidden_wherever_the_url_is_printed() {
        let url = "postgres://u@db.internal/ledger?password=hunter2&sslmode=require";
        let described = StoreUrl::parse(Some(url)).unwrap().describe();
        assert_eq!(
            described,
            "postgres postgres://u@db.internal/ledger?password=***&sslmode=require"
        );
        let e = StoreUrl::parse(Some("mysql://h/db?password=hunter2"))
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }
}
