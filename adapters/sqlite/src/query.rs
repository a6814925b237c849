//! [`QueryStore`] on Sqlite: binds every parameter, returns one JSON text
//! column per row.

use async_trait::async_trait;
use ledger_projections::query::{QueryStore, SqlParam};
use ledger_projections::readmodel::{Dialect, ReadModelError};
use sqlx::AssertSqlSafe;

use crate::SqliteStore;

#[async_trait]
impl QueryStore for SqliteStore {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    async fn query_json(
        &self,
        sql: &str,
        params: &[SqlParam],
    ) -> Result<Vec<String>, ReadModelError> {
        let mut query = sqlx::query_scalar::<_, String>(AssertSqlSafe(sql.to_owned()));
        for p in params {
            query = match p {
                SqlParam::Text(t) => query.bind(t.clone()),
                SqlParam::Int(i) => query.bind(*i),
                SqlParam::Null => query.bind(Option::<String>::None),
            };
        }
        query
            .fetch_all(self.reader())
            .await
            .map_err(|e| ReadModelError::Backend(e.to_string()))
    }

    async fn ping(&self) -> Result<(), ReadModelError> {
        sqlx::query("select 1")
            .execute(self.reader())
            .await
            .map(|_| ())
            .map_err(|e| ReadModelError::Backend(e.to_string()))
    }
}
