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

/// Replaces the password of a `scheme://user:password@host` URL with `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_owned()
            };
            format!("{scheme}://{masked}@{host}{tail}")
        }
        None => url.to_owned(),
    }
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
}
