//! One append = one call of the `ledger_append` SQL function.

use chrono::{DateTime, Utc};
use ledger_core::hash::{ContentFields, Hash, content_digest};
use ledger_core::ids::StreamId;
use ledger_core::{ExpectedVersion, NewEvent};
use ledger_store::{AppendResult, StoreError, classify_reappend};
use sqlx::Row;
use sqlx::postgres::{PgExecutor, PgRow};
use uuid::Uuid;

use crate::error::{AttemptError, append_error};

const APPEND_SQL: &str = "select outcome, stream_version, global_position, event_type, payload \
     from ledger_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

/// `ledger_append`'s encoding of [`ExpectedVersion`].
fn expected_params(expected: ExpectedVersion) -> (&'static str, Option<i64>) {
    match expected {
        ExpectedVersion::Any => ("any", None),
        ExpectedVersion::NoStream => ("no_stream", None),
        ExpectedVersion::StreamExists => ("stream_exists", None),
        // No stream reaches i64::MAX versions; -1 can never match, which is
        // the right answer for such an expectation.
        ExpectedVersion::Exact(v) => ("exact", Some(i64::try_from(v).unwrap_or(-1))),
    }
}

/// Most attempts at one append (or one `append_many` transaction) that lose
/// the race for a stream's next version before giving up with a transient
/// error. Each lost attempt means another writer committed to that stream,
/// so only a stream hammered by more writers than this starves.
pub(crate) const APPEND_ATTEMPTS_MAX: u32 = 64;

/// Runs `attempt` until it does not lose a race, at most
/// [`APPEND_ATTEMPTS_MAX`] times.
pub(crate) async fn with_retries<T, F, Fut>(mut attempt: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, AttemptError>>,
{
    let mut attempts = 1;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(AttemptError::Failed(err)) => return Err(err),
            Err(AttemptError::Raced(err)) if attempts >= APPEND_ATTEMPTS_MAX => return Err(err),
            Err(AttemptError::Raced(_)) => attempts += 1,
        }
    }
}

/// Appends `events` (already validated) through `executor`: the pool for a
/// standalone append, an open transaction for `append_many` and held appends.
/// A lost race aborts an enclosing transaction; the caller retries it whole.
pub(crate) async fn append_with<'c, E: PgExecutor<'c>>(
    executor: E,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: &[NewEvent],
    recorded_at: DateTime<Utc>,
) -> Result<AppendResult, AttemptError> {
    let (expected_kind, expected_version) = expected_params(expected);
    let mut ids = Vec::with_capacity(events.len());
    let mut types = Vec::with_capacity(events.len());
    let mut schema_versions = Vec::with_capacity(events.len());
    let mut payloads = Vec::with_capacity(events.len());
    let mut metadata = Vec::with_capacity(events.len());
    let mut digests: Vec<Hash> = Vec::with_capacity(events.len());
    for e in events {
        ids.push(e.event_id.0);
        types.push(e.event_type.as_str());
        schema_versions.push(i64::from(e.schema_version));
        payloads.push(e.payload.as_str());
        metadata.push(e.metadata.as_str());
        digests.push(content_digest(&ContentFields {
            stream_id: stream,
            event_id: e.event_id,
            event_type: &e.event_type,
            schema_version: e.schema_version,
            payload: &e.payload,
            metadata: &e.metadata,
            recorded_at,
        }));
    }

    let rows = sqlx::query(APPEND_SQL)
        .bind(stream.as_str())
        .bind(expected_kind)
        .bind(expected_version)
        .bind(ids)
        .bind(types)
        .bind(schema_versions)
        .bind(payloads)
        .bind(metadata)
        .bind(recorded_at)
        .bind(digests)
        .fetch_all(executor)
        .await
        .map_err(|e| append_error(e, stream, events))?;

    Ok(interpret(stream, expected, events, &rows)?)
}

/// What `ledger_append` reported, as the trait's result.
fn interpret(
    stream: &StreamId,
    expected: ExpectedVersion,
    events: &[NewEvent],
    rows: &[PgRow],
) -> Result<AppendResult, StoreError> {
    let unexpected = |what: &str| StoreError::Backend(format!("ledger_append on {stream}: {what}"));
    let Some(first) = rows.first() else {
        return Err(unexpected("returned no rows"));
    };
    let outcome: String = first.try_get("outcome").map_err(crate::error::backend)?;
    match outcome.as_str() {
        "appended" => {
            if rows.len() != events.len() {
                return Err(unexpected("returned a row count unlike the batch"));
            }
            let mut positions = Vec::with_capacity(rows.len());
            let mut versions = Vec::with_capacity(rows.len());
            for row in rows {
                versions.push(non_negative(stream, row, "stream_version")?);
                positions.push(non_negative(stream, row, "global_position")?);
            }
            let (Some(&first_version), Some(&last_version)) = (versions.first(), versions.last())
            else {
                return Err(unexpected("returned no versions"));
            };
            Ok(AppendResult {
                first_version,
                last_version,
                positions,
                already_existed: false,
            })
        }
        "existing" => {
            let mut existing = Vec::with_capacity(rows.len());
            for row in rows {
                let position: Option<i64> = row
                    .try_get("global_position")
                    .map_err(crate::error::backend)?;
                existing.push(match position {
                    None => None,
                    Some(_) => Some((
                        non_negative(stream, row, "stream_version")?,
                        non_negative(stream, row, "global_position")?,
                        row.try_get::<String, _>("event_type")
                            .map_err(crate::error::backend)?,
                        row.try_get::<String, _>("payload")
                            .map_err(crate::error::backend)?,
                    )),
                });
            }
            if existing.len() != events.len() {
                return Err(unexpected("returned a row count unlike the batch"));
            }
            classify_reappend(stream, events, &existing)?
                .ok_or_else(|| unexpected("reported existing ids but matched none"))
        }
        "wrong_version" => {
            let actual: Option<i64> = first
                .try_get("stream_version")
                .map_err(crate::error::backend)?;
            let actual = actual
                .map(|v| {
                    u64::try_from(v).map_err(|_| StoreError::Corrupt {
                        stream: stream.as_str().to_owned(),
                        version: 0,
                        reason: format!("stream head has negative version {v}"),
                    })
                })
                .transpose()?;
            Err(StoreError::WrongExpectedVersion {
                stream: stream.clone(),
                expected,
                actual,
            })
        }
        other => Err(unexpected(&format!("unknown outcome {other:?}"))),
    }
}

fn non_negative(stream: &StreamId, row: &PgRow, column: &str) -> Result<u64, StoreError> {
    let value: i64 = row.try_get(column).map_err(crate::error::backend)?;
    u64::try_from(value).map_err(|_| StoreError::Corrupt {
        stream: stream.as_str().to_owned(),
        version: 0,
        reason: format!("negative {column} {value}"),
    })
}

/// The id of the event an `event_stream_event_id_uq` violation names, found
/// in the server's detail text (`Key (stream_id, event_id)=(…, <uuid>)`).
pub(crate) fn event_id_in(detail: &str, events: &[NewEvent]) -> Option<Uuid> {
    events
        .iter()
        .map(|e| e.event_id.0)
        .find(|id| detail.contains(&id.to_string()))
}
