//! The read side's query port: parameterised SQL whose rows are one JSON text
//! column each, so the HTTP layer states each query once per dialect and
//! never maps row types twice.
//!
//! **Guarantees:** parameters are always bound, never interpolated; a query
//! runs on the read pool (`DATABASE_READ_URL` when set).

use async_trait::async_trait;

use crate::readmodel::ReadModelError;
use crate::readmodel::schema::Dialect;

/// A bound parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlParam {
    Text(String),
    Int(i64),
    Null,
}

#[async_trait]
pub trait QueryStore: Send + Sync + std::fmt::Debug {
    fn dialect(&self) -> Dialect;
    /// Runs `sql` with `$1..$n` bound to `params`; each row must be one text
    /// column (a JSON document).
    async fn query_json(
        &self,
        sql: &str,
        params: &[SqlParam],
    ) -> Result<Vec<String>, ReadModelError>;
    /// Cheap round trip proving the database answers.
    async fn ping(&self) -> Result<(), ReadModelError>;
}
