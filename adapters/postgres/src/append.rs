//! Appends as prepared plain-SQL statements: one round trip when the append
//! succeeds, one more to explain why when it does not.
//!
//! - **New stream** ([`NEW_STREAM_ONE_SQL`], [`NEW_STREAM_MANY_SQL`]): a
//!   standalone `NoStream` append is a plain insert of versions `1..=n`,
//!   chained from [`GENESIS`] in Rust. No head probe and no id check: a
//!   stream without a version 1 has no events (versions are gap-free). If
//!   version 1 exists the insert fails on `event_pk`, writes nothing and, in
//!   autocommit, aborts nothing; the general path then judges the append.
//! - **General** ([`APPEND_ONE_SQL`], [`APPEND_MANY_SQL`]): head probe, id
//!   probe, expected version, the stale-xid check and the chained insert in
//!   one statement, which inserts nothing when any check fails.
//! - **Batches of single events** ([`APPEND_EACH_ONE_SQL`]): an
//!   `append_many` (a group commit's transaction) whose parts are one event
//!   each on distinct streams runs [`APPEND_ONE_SQL`]'s checks per part in
//!   one statement, the head probe a lateral join: one round trip, one
//!   executor start, for the whole batch instead of one per part. Any other
//!   batch runs the general statement part by part.
//! - **Diagnosis** ([`DIAGNOSE_SQL`]), only after a general insert wrote
//!   nothing: the ids already in the stream and its head, which tell an
//!   idempotent re-append, an id conflict and a wrong expected version
//!   apart. If none applies, the head moved between the two statements or
//!   the transaction's xid is too old (see the stale check below): a lost
//!   race, retried.
//!
//! **Why not the plpgsql `ledger_append`** (the first migration's, kept
//! unchanged for direct SQL callers): measured as server CPU per
//! single-event append onto a new stream (pgbench, 8 clients, the same
//! three-index table; medians of 3-4 runs on a shared 2-core machine), the
//! function call cost ~400 µs, [`APPEND_ONE_SQL`] ~300 µs, the new-stream
//! insert ~250 µs, and a raw insert into the baseline table ~165 µs. A
//! single-CTE port of the whole function that reported every outcome in its
//! result cost ~540 µs: executor start-up of its ~40-node plan outweighed
//! the saved function call. Hence lean statements for success and a second
//! round trip for the rare failures. Dropping the `(stream_id, event_id)`
//! index (migration `20261127000020`) took the new-stream insert to
//! ~210 µs.
//!
//! **Concurrency** is what it was: appends to one stream serialise on
//! `event_pk`. Of two appends that read the same head, the second waits for
//! the first's uncommitted index entry and then fails with a unique
//! violation; it is re-run against the new head. Every append inserts at
//! `head + 1` of its statement's snapshot, and any row committed after that
//! snapshot holds a version above that head, so an append either sees
//! every committed id of its stream or collides on `event_pk`: that keeps
//! event ids unique per stream without an index of their own (see the
//! `20261127000020` migration).
//!
//! **Stale xid:** `read_all` orders by transaction id, so a stream's
//! versions must ascend with it. A transaction that took its xid earlier
//! (another part of an `append_many`) may hold one older than the stream
//! head's writer; the general statements then insert nothing, and the
//! caller retries the whole transaction with a fresh xid.

use std::ops::DerefMut;

use chrono::{DateTime, Utc};
use ledger_core::hash::{ContentFields, GENESIS, Hash, chain, content_digest};
use ledger_core::ids::StreamId;
use ledger_core::{ExpectedVersion, NewEvent};
use ledger_store::{AppendResult, StoreError, StreamAppend, classify_reappend, expected_holds};
use sqlx::Row;
use sqlx::postgres::{PgConnection, PgPool, PgRow};
use uuid::Uuid;

use crate::error::{AttemptError, append_error, backend};

/// A new stream's single event: the plain insert a raw baseline does, with
/// the hash chained from [`GENESIS`] in Rust.
const NEW_STREAM_ONE_SQL: &str = "insert into event (
    stream_id, stream_version, event_id, event_type, schema_version,
    payload, metadata, recorded_at, prev_hash, hash
) values ($1, 1, $2, $3, $4, $5, $6, $7, $8, $9)
returning stream_version, global_position";

/// A new stream's events at versions `1..=n`, hashes chained in Rust.
const NEW_STREAM_MANY_SQL: &str = "insert into event (
    stream_id, stream_version, event_id, event_type, schema_version,
    payload, metadata, recorded_at, prev_hash, hash
)
select $1, b.ord, b.id, b.event_type, b.schema_version, b.payload, b.metadata, $7, b.prev, b.hash
from unnest($2::uuid[], $3::text[], $4::bigint[], $5::text[], $6::text[], $8::bytea[], $9::bytea[])
    with ordinality as b (id, event_type, schema_version, payload, metadata, prev, hash, ord)
-- Identity values follow this order: global positions ascend with versions.
order by b.ord
returning stream_version, global_position";

/// Whether the general statements may insert, given the stream's head `h`
/// (absent for a new stream), the expected kind `$2` and version `$3`, and
/// the batch's ids (`$ids`): no id already in the stream (an idempotent
/// retry must not fail on a stale expectation, so ids come first), the
/// expected version holds, and this transaction's xid is not older than the
/// head's writer. A `case`, so that the id probe (an initplan, run only when
/// its branch is reached) is skipped for a new stream, and
/// `pg_current_xact_id()` is only called once all else held.
macro_rules! may_append {
    ($ids:literal) => {
        concat!(
            "case
        when h.transaction_id is null then $2::text in ('any', 'no_stream')
        when exists (
            select 1 from event x where x.stream_id = $1 and x.event_id = ",
            $ids,
            "
        ) then false
        when $2::text = 'no_stream'
            or ($2::text = 'exact' and $3::bigint is distinct from h.stream_version) then false
        else h.transaction_id <= pg_current_xact_id()
    end"
        )
    };
}

/// The stream's last event: one backward probe of `event_pk`.
macro_rules! head_cte {
    () => {
        "head as (
    select e.stream_version, e.hash, e.transaction_id
    from event e
    where e.stream_id = $1
    order by e.stream_version desc
    limit 1
)"
    };
}

/// The version and hash a new stream's first event follows.
macro_rules! genesis_sql {
    () => {
        "'\\x0000000000000000000000000000000000000000000000000000000000000000'::bytea"
    };
}

/// One event onto any stream. `$1` stream, `$2` expected kind (`any`,
/// `no_stream`, `stream_exists`, `exact`), `$3` expected version, `$4..$8`
/// id, type, schema version, payload, metadata, `$9` recorded_at, `$10` the
/// content digest (version-independent: the chain step runs here, where the
/// version is assigned). Returns the new row, or no row when
/// [`may_append!`] fails.
pub(crate) const APPEND_ONE_SQL: &str = concat!(
    "with ",
    head_cte!(),
    "
insert into event as e (
    stream_id, stream_version, event_id, event_type, schema_version,
    payload, metadata, recorded_at, prev_hash, hash
)
select $1, v.version + 1, $4::uuid, $5::text, $6::bigint, $7::text, $8::text, $9::timestamptz,
    v.prev, sha256(v.prev || int8send(v.version + 1) || $10::bytea)
from (
    select coalesce(h.stream_version, 0) as version, coalesce(h.hash, ",
    genesis_sql!(),
    ") as prev
    from (values (1)) as one (x)
    left join head h on true
    where ",
    may_append!("$4::uuid"),
    "
) as v
returning e.stream_version, e.global_position"
);

/// Several events onto any stream: [`APPEND_ONE_SQL`] with arrays in
/// `$4..$8` and `$10`, the chain extended event by event in `chain`.
pub(crate) const APPEND_MANY_SQL: &str = concat!(
    "with recursive ",
    head_cte!(),
    ",
base as (
    select coalesce(h.stream_version, 0) as version, coalesce(h.hash, ",
    genesis_sql!(),
    ") as prev
    from (values (1)) as one (x)
    left join head h on true
    where ",
    may_append!("any ($4::uuid[])"),
    "
),
chain (ord, prev, hash) as (
    select 1::bigint, b.prev, sha256(b.prev || int8send(b.version + 1) || ($10::bytea[])[1])
    from base b
    union all
    select c.ord + 1, c.hash,
        sha256(c.hash || int8send(b.version + c.ord + 1) || ($10::bytea[])[c.ord + 1])
    from chain c
    cross join base b
    where c.ord < cardinality($10::bytea[])
)
insert into event as e (
    stream_id, stream_version, event_id, event_type, schema_version,
    payload, metadata, recorded_at, prev_hash, hash
)
select $1, b.version + c.ord, ($4::uuid[])[c.ord], ($5::text[])[c.ord], ($6::bigint[])[c.ord],
    ($7::text[])[c.ord], ($8::text[])[c.ord], $9::timestamptz, c.prev, c.hash
from chain c
cross join base b
-- Identity values follow this order: within one append, global positions
-- ascend with versions.
order by c.ord
returning e.stream_version, e.global_position"
);

/// One event onto each of several distinct streams, in one statement (a
/// group commit's appends): [`APPEND_ONE_SQL`] per part, the head probe a
/// lateral join. `$1..$9` are per-part arrays: stream, expected kind and
/// version, id, type, schema version, payload, metadata, content digest;
/// `$10` recorded_at. Rows are inserted in stream order, so two batches
/// that share streams take their `event_pk` entries in one order. A part
/// whose check fails inserts nothing and returns no row; the caller asks
/// [`DIAGNOSE_SQL`] why.
pub(crate) const APPEND_EACH_ONE_SQL: &str = concat!(
    "with p as (
    select * from unnest($1::text[], $2::text[], $3::bigint[], $4::uuid[], $5::text[],
        $6::bigint[], $7::text[], $8::text[], $9::bytea[])
        as p (stream_id, kind, expected, id, event_type, schema_version, payload, metadata,
            digest)
),
v as (
    select p.*, coalesce(h.stream_version, 0) as version, coalesce(h.hash, ",
    genesis_sql!(),
    ") as prev
    from p
    left join lateral (
        select e.stream_version, e.hash, e.transaction_id
        from event e
        where e.stream_id = p.stream_id
        order by e.stream_version desc
        limit 1
    ) h on true
    where case
        when h.transaction_id is null then p.kind in ('any', 'no_stream')
        when exists (
            select 1 from event x where x.stream_id = p.stream_id and x.event_id = p.id
        ) then false
        when p.kind = 'no_stream'
            or (p.kind = 'exact' and p.expected is distinct from h.stream_version) then false
        else h.transaction_id <= pg_current_xact_id()
    end
)
insert into event as e (
    stream_id, stream_version, event_id, event_type, schema_version,
    payload, metadata, recorded_at, prev_hash, hash
)
select v.stream_id, v.version + 1, v.id, v.event_type, v.schema_version, v.payload, v.metadata,
    $10::timestamptz, v.prev, sha256(v.prev || int8send(v.version + 1) || v.digest)
from v
-- Byte order (\"C\"), as Rust sorts the per-part path's streams.
order by v.stream_id collate \"C\"
returning e.stream_id, e.stream_version, e.global_position"
);

/// Why a general insert wrote nothing: for each batch id (`$2`, in order)
/// the stored version, position, type and payload of that id in stream
/// `$1` (nulls when absent), and the stream's head version.
const DIAGNOSE_SQL: &str =
    "select b.ord, x.stream_version, x.global_position, x.event_type, x.payload,
    (select e.stream_version from event e where e.stream_id = $1
     order by e.stream_version desc limit 1) as head_version
from unnest($2::uuid[]) with ordinality as b (id, ord)
left join event x on x.stream_id = $1 and x.event_id = b.id
order by b.ord";

/// The general statements' encoding of [`ExpectedVersion`].
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

/// The per-event columns the statements bind, and the content digests.
struct Columns<'a> {
    ids: Vec<Uuid>,
    types: Vec<&'a str>,
    schema_versions: Vec<i64>,
    payloads: Vec<&'a str>,
    metadata: Vec<&'a str>,
    digests: Vec<Hash>,
}

impl<'a> Columns<'a> {
    fn of(stream: &StreamId, events: &'a [NewEvent], recorded_at: DateTime<Utc>) -> Self {
        let mut c = Columns {
            ids: Vec::with_capacity(events.len()),
            types: Vec::with_capacity(events.len()),
            schema_versions: Vec::with_capacity(events.len()),
            payloads: Vec::with_capacity(events.len()),
            metadata: Vec::with_capacity(events.len()),
            digests: Vec::with_capacity(events.len()),
        };
        for e in events {
            c.ids.push(e.event_id.0);
            c.types.push(e.event_type.as_str());
            c.schema_versions.push(i64::from(e.schema_version));
            c.payloads.push(e.payload.as_str());
            c.metadata.push(e.metadata.as_str());
            c.digests.push(content_digest(&ContentFields {
                stream_id: stream,
                event_id: e.event_id,
                event_type: &e.event_type,
                schema_version: e.schema_version,
                payload: &e.payload,
                metadata: &e.metadata,
                recorded_at,
            }));
        }
        c
    }
}

/// A standalone append (autocommit, straight on the pool): the new-stream
/// insert when `expected` is `NoStream`, else — or when that insert finds
/// the stream already there — the general path, retried on lost races.
pub(crate) async fn append_standalone(
    pool: &PgPool,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: &[NewEvent],
    recorded_at: DateTime<Utc>,
) -> Result<AppendResult, StoreError> {
    let columns = Columns::of(stream, events, recorded_at);
    let mut conn = pool.acquire().await.map_err(backend)?;
    if expected == ExpectedVersion::NoStream
        && let Some(result) = insert_new_stream(&mut conn, stream, &columns, recorded_at).await?
    {
        return Ok(result);
    }
    let mut attempts = 1;
    loop {
        match append_columns(&mut conn, stream, expected, events, &columns, recorded_at).await {
            Ok(result) => return Ok(result),
            Err(AttemptError::Failed(err)) => return Err(err),
            Err(AttemptError::Raced(err)) if attempts >= APPEND_ATTEMPTS_MAX => return Err(err),
            Err(AttemptError::Raced(_)) => attempts += 1,
        }
    }
}

/// Inserts `columns` as versions `1..=n` of a stream that has none.
/// `Ok(None)` when the stream turned out to exist (a unique violation:
/// nothing was written, and in autocommit nothing else was aborted).
async fn insert_new_stream(
    conn: &mut PgConnection,
    stream: &StreamId,
    columns: &Columns<'_>,
    recorded_at: DateTime<Utc>,
) -> Result<Option<AppendResult>, StoreError> {
    let mut prev_hashes = Vec::with_capacity(columns.digests.len());
    let mut hashes = Vec::with_capacity(columns.digests.len());
    let mut prev = GENESIS;
    for (version, digest) in (1u64..).zip(&columns.digests) {
        let hash = chain(&prev, version, digest);
        prev_hashes.push(prev);
        hashes.push(hash);
        prev = hash;
    }
    let query = match (
        &columns.ids[..],
        &columns.types[..],
        &columns.schema_versions[..],
        &columns.payloads[..],
        &columns.metadata[..],
        &prev_hashes[..],
        &hashes[..],
    ) {
        ([id], [event_type], [schema_version], [payload], [metadata], [prev], [hash]) => {
            sqlx::query(NEW_STREAM_ONE_SQL)
                .bind(stream.as_str())
                .bind(id)
                .bind(event_type)
                .bind(schema_version)
                .bind(payload)
                .bind(metadata)
                .bind(recorded_at)
                .bind(prev)
                .bind(hash)
        }
        _ => sqlx::query(NEW_STREAM_MANY_SQL)
            .bind(stream.as_str())
            .bind(&columns.ids)
            .bind(&columns.types)
            .bind(&columns.schema_versions)
            .bind(&columns.payloads)
            .bind(&columns.metadata)
            .bind(recorded_at)
            .bind(&prev_hashes)
            .bind(&hashes),
    };
    let rows = match query.fetch_all(&mut *conn).await {
        Ok(rows) => rows,
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => return Ok(None),
        Err(err) => return Err(backend(err)),
    };
    if rows.len() != columns.ids.len() {
        return Err(StoreError::Backend(format!(
            "new stream {stream}: the insert returned {} rows for {} events",
            rows.len(),
            columns.ids.len()
        )));
    }
    appended(stream, &rows).map(Some)
}

/// New streams' events, several streams in one statement (a group commit of
/// fresh commands): each stream's versions `1..=n`, hashes chained in Rust.
const NEW_STREAMS_SQL: &str = "insert into event (
    stream_id, stream_version, event_id, event_type, schema_version,
    payload, metadata, recorded_at, prev_hash, hash
)
select b.stream_id, b.version, b.id, b.event_type, b.schema_version, b.payload, b.metadata,
    $10, b.prev, b.hash
from unnest($1::text[], $2::bigint[], $3::uuid[], $4::text[], $5::bigint[], $6::text[],
        $7::text[], $8::bytea[], $9::bytea[])
    with ordinality as b (stream_id, version, id, event_type, schema_version, payload, metadata,
        prev, hash, ord)
-- Identity values follow this order: global positions ascend with versions.
order by b.ord
returning stream_id, stream_version, global_position";

/// Inserts each of `streams` (distinct, each with validated events) as a
/// new stream, versions `1..=n`, in one statement on `conn` (an open
/// transaction). `Ok(None)` when one of them already has events: the
/// statement failed on `event_pk` and the transaction is aborted, so the
/// caller must roll it back.
pub(crate) async fn insert_new_streams(
    conn: &mut PgConnection,
    streams: &[(&StreamId, &[NewEvent])],
    recorded_at: DateTime<Utc>,
) -> Result<Option<Vec<AppendResult>>, StoreError> {
    let total: usize = streams.iter().map(|(_, events)| events.len()).sum();
    let mut stream_ids: Vec<&str> = Vec::with_capacity(total);
    let mut versions: Vec<i64> = Vec::with_capacity(total);
    let mut prev_hashes: Vec<Hash> = Vec::with_capacity(total);
    let mut hashes: Vec<Hash> = Vec::with_capacity(total);
    let mut ids = Vec::with_capacity(total);
    let mut types = Vec::with_capacity(total);
    let mut schema_versions = Vec::with_capacity(total);
    let mut payloads = Vec::with_capacity(total);
    let mut metadata = Vec::with_capacity(total);
    for (stream, events) in streams {
        let columns = Columns::of(stream, events, recorded_at);
        let mut prev = GENESIS;
        for (version, digest) in (1u64..).zip(&columns.digests) {
            let hash = chain(&prev, version, digest);
            stream_ids.push(stream.as_str());
            versions.push(i64::try_from(version).unwrap_or(i64::MAX));
            prev_hashes.push(prev);
            hashes.push(hash);
            prev = hash;
        }
        ids.extend(columns.ids);
        types.extend(columns.types);
        schema_versions.extend(columns.schema_versions);
        payloads.extend(columns.payloads);
        metadata.extend(columns.metadata);
    }
    let rows = match sqlx::query(NEW_STREAMS_SQL)
        .bind(&stream_ids)
        .bind(&versions)
        .bind(&ids)
        .bind(&types)
        .bind(&schema_versions)
        .bind(&payloads)
        .bind(&metadata)
        .bind(&prev_hashes)
        .bind(&hashes)
        .bind(recorded_at)
        .fetch_all(&mut *conn)
        .await
    {
        Ok(rows) => rows,
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => return Ok(None),
        Err(err) => return Err(backend(err)),
    };
    if rows.len() != total {
        return Err(StoreError::Backend(format!(
            "new streams: the insert returned {} rows for {total} events",
            rows.len()
        )));
    }
    let mut by_stream: std::collections::HashMap<String, Vec<PgRow>> =
        std::collections::HashMap::with_capacity(streams.len());
    for row in rows {
        let stream: String = row.try_get("stream_id").map_err(backend)?;
        by_stream.entry(stream).or_default().push(row);
    }
    streams
        .iter()
        .map(|(stream, _)| {
            let rows = by_stream.remove(stream.as_str()).unwrap_or_default();
            appended(stream, &rows)
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Appends `events` (already validated) on `conn` with the general path:
/// a pooled connection for a standalone append, an open transaction for
/// `append_many` and held appends. A lost race aborts an enclosing
/// transaction (or leaves it with a too-old xid); the caller retries it
/// whole.
pub(crate) async fn append_with<C: DerefMut<Target = PgConnection>>(
    mut conn: C,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: &[NewEvent],
    recorded_at: DateTime<Utc>,
) -> Result<AppendResult, AttemptError> {
    let columns = Columns::of(stream, events, recorded_at);
    append_columns(&mut conn, stream, expected, events, &columns, recorded_at).await
}

async fn append_columns(
    conn: &mut PgConnection,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: &[NewEvent],
    columns: &Columns<'_>,
    recorded_at: DateTime<Utc>,
) -> Result<AppendResult, AttemptError> {
    let (expected_kind, expected_version) = expected_params(expected);
    let query = match (
        &columns.ids[..],
        &columns.types[..],
        &columns.schema_versions[..],
        &columns.payloads[..],
        &columns.metadata[..],
        &columns.digests[..],
    ) {
        ([id], [event_type], [schema_version], [payload], [metadata], [digest]) => {
            sqlx::query(APPEND_ONE_SQL)
                .bind(stream.as_str())
                .bind(expected_kind)
                .bind(expected_version)
                .bind(id)
                .bind(event_type)
                .bind(schema_version)
                .bind(payload)
                .bind(metadata)
                .bind(recorded_at)
                .bind(digest)
        }
        _ => sqlx::query(APPEND_MANY_SQL)
            .bind(stream.as_str())
            .bind(expected_kind)
            .bind(expected_version)
            .bind(&columns.ids)
            .bind(&columns.types)
            .bind(&columns.schema_versions)
            .bind(&columns.payloads)
            .bind(&columns.metadata)
            .bind(recorded_at)
            .bind(&columns.digests),
    };
    let rows = query
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| append_error(e, stream, events))?;
    if rows.is_empty() {
        return diagnose(conn, stream, expected, events, columns).await;
    }
    if rows.len() != events.len() {
        return Err(StoreError::Backend(format!(
            "append to {stream}: the insert returned {} rows for {} events",
            rows.len(),
            events.len()
        ))
        .into());
    }
    Ok(appended(stream, &rows)?)
}

/// Whether [`append_each_one`] can write `batch`: at least two parts, each
/// one event, no stream twice (two parts of one stream would probe the same
/// head).
fn fits_one_statement(batch: &[StreamAppend]) -> bool {
    if batch.len() < 2 || batch.iter().any(|p| p.events.len() != 1) {
        return false;
    }
    let mut streams: Vec<&StreamId> = batch.iter().map(|p| &p.stream).collect();
    streams.sort_unstable();
    streams.windows(2).all(|w| w[0] != w[1])
}

/// Appends a batch that [`fits_one_statement`] with [`APPEND_EACH_ONE_SQL`]
/// on `conn` (an open transaction): one round trip for every part that
/// appends, and a [`diagnose`] for each part that wrote nothing. Answers in
/// batch order. A lost race on `event_pk` aborts the transaction
/// ([`AttemptError::Raced`]); the caller retries it whole.
async fn append_each_one(
    conn: &mut PgConnection,
    batch: &[StreamAppend],
    recorded_at: DateTime<Utc>,
) -> Result<Vec<AppendResult>, AttemptError> {
    let columns: Vec<Columns<'_>> = batch
        .iter()
        .map(|p| Columns::of(&p.stream, &p.events, recorded_at))
        .collect();
    let mut streams = Vec::with_capacity(batch.len());
    let mut kinds = Vec::with_capacity(batch.len());
    let mut expected = Vec::with_capacity(batch.len());
    let mut ids = Vec::with_capacity(batch.len());
    let mut types = Vec::with_capacity(batch.len());
    let mut schema_versions = Vec::with_capacity(batch.len());
    let mut payloads = Vec::with_capacity(batch.len());
    let mut metadata = Vec::with_capacity(batch.len());
    let mut digests = Vec::with_capacity(batch.len());
    for (part, c) in batch.iter().zip(&columns) {
        let (kind, version) = expected_params(part.expected);
        let ([id], [event_type], [schema_version], [payload], [meta], [digest]) = (
            &c.ids[..],
            &c.types[..],
            &c.schema_versions[..],
            &c.payloads[..],
            &c.metadata[..],
            &c.digests[..],
        ) else {
            return Err(StoreError::Backend(format!(
                "append to {}: a one-statement batch part must hold one event",
                part.stream
            ))
            .into());
        };
        streams.push(part.stream.as_str());
        kinds.push(kind);
        expected.push(version);
        ids.push(*id);
        types.push(*event_type);
        schema_versions.push(*schema_version);
        payloads.push(*payload);
        metadata.push(*meta);
        digests.push(*digest);
    }
    let rows = sqlx::query(APPEND_EACH_ONE_SQL)
        .bind(&streams)
        .bind(&kinds)
        .bind(&expected)
        .bind(&ids)
        .bind(&types)
        .bind(&schema_versions)
        .bind(&payloads)
        .bind(&metadata)
        .bind(&digests)
        .bind(recorded_at)
        .fetch_all(&mut *conn)
        .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(err) => {
            // The part at fault is the one the server's detail names.
            let detail = match &err {
                sqlx::Error::Database(db) => db
                    .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    .and_then(|pg| pg.detail())
                    .unwrap_or_default()
                    .to_owned(),
                _ => String::new(),
            };
            let part = batch
                .iter()
                .find(|p| detail.contains(&format!("({}, ", p.stream.as_str())))
                .or_else(|| batch.first())
                .ok_or_else(|| StoreError::Backend("an empty one-statement batch".to_owned()))?;
            return Err(append_error(err, &part.stream, &part.events));
        }
    };
    let mut by_stream: std::collections::HashMap<String, PgRow> =
        std::collections::HashMap::with_capacity(rows.len());
    for row in rows {
        let stream: String = row.try_get("stream_id").map_err(backend)?;
        if by_stream.insert(stream.clone(), row).is_some() {
            return Err(StoreError::Backend(format!(
                "append to {stream}: the batch insert returned two rows for one event"
            ))
            .into());
        }
    }
    let mut results = Vec::with_capacity(batch.len());
    for (part, c) in batch.iter().zip(&columns) {
        results.push(match by_stream.remove(part.stream.as_str()) {
            Some(row) => appended(&part.stream, std::slice::from_ref(&row))?,
            None => diagnose(conn, &part.stream, part.expected, &part.events, c).await?,
        });
    }
    Ok(results)
}

/// An `append_many` transaction's parts on `conn`, answered in batch
/// order: one statement for a batch that [`fits_one_statement`], else one
/// general statement per part, in `order` (streams sorted, so two batches
/// lock shared streams in one order and cannot deadlock).
pub(crate) async fn append_parts(
    conn: &mut PgConnection,
    batch: &[StreamAppend],
    order: &[usize],
    recorded_at: DateTime<Utc>,
) -> Result<Vec<AppendResult>, AttemptError> {
    if fits_one_statement(batch) {
        return append_each_one(conn, batch, recorded_at).await;
    }
    let mut results: Vec<Option<AppendResult>> = vec![None; batch.len()];
    for &i in order {
        let part = batch
            .get(i)
            .ok_or_else(|| StoreError::Backend(format!("append_many: no part {i} in the batch")))?;
        results[i] = Some(
            append_with(
                &mut *conn,
                &part.stream,
                part.expected,
                &part.events,
                recorded_at,
            )
            .await?,
        );
    }
    results
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| StoreError::Backend("append_many lost a part's result".to_owned()).into())
}

/// A general insert wrote nothing: says why. An idempotent re-append is
/// the original result; anything else is the error to return, a lost race
/// when no rule explains it.
async fn diagnose(
    conn: &mut PgConnection,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: &[NewEvent],
    columns: &Columns<'_>,
) -> Result<AppendResult, AttemptError> {
    let rows = sqlx::query(DIAGNOSE_SQL)
        .bind(stream.as_str())
        .bind(&columns.ids)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| append_error(e, stream, events))?;
    if rows.len() != events.len() {
        return Err(StoreError::Backend(format!(
            "append to {stream}: the diagnosis returned {} rows for {} events",
            rows.len(),
            events.len()
        ))
        .into());
    }
    let mut existing = Vec::with_capacity(rows.len());
    for row in &rows {
        let position: Option<i64> = row.try_get("global_position").map_err(backend)?;
        existing.push(match position {
            None => None,
            Some(_) => Some((
                non_negative(stream, row, "stream_version")?,
                non_negative(stream, row, "global_position")?,
                row.try_get::<String, _>("event_type").map_err(backend)?,
                row.try_get::<String, _>("payload").map_err(backend)?,
            )),
        });
    }
    if let Some(result) = classify_reappend(stream, events, &existing)? {
        return Ok(result);
    }
    let head: Option<i64> = rows
        .first()
        .map(|row| row.try_get("head_version"))
        .transpose()
        .map_err(backend)?
        .flatten();
    let actual = head
        .map(|v| {
            u64::try_from(v).map_err(|_| StoreError::Corrupt {
                stream: stream.as_str().to_owned(),
                version: 0,
                reason: format!("stream head has negative version {v}"),
            })
        })
        .transpose()?;
    if !expected_holds(expected, actual) {
        return Err(StoreError::WrongExpectedVersion {
            stream: stream.clone(),
            expected,
            actual,
        }
        .into());
    }
    // The head moved between the two statements, or this transaction's xid
    // predates the head's writer: either way a fresh attempt decides.
    Err(AttemptError::Raced(StoreError::Backend(format!(
        "stream {stream} stayed contended: every append attempt had to be retried"
    ))))
}

/// The result of an insert that wrote every event: rows of
/// `(stream_version, global_position)`, one per event, in any order.
fn appended(stream: &StreamId, rows: &[PgRow]) -> Result<AppendResult, StoreError> {
    let mut slots: Vec<(u64, u64)> = Vec::with_capacity(rows.len());
    for row in rows {
        slots.push((
            non_negative(stream, row, "stream_version")?,
            non_negative(stream, row, "global_position")?,
        ));
    }
    slots.sort_unstable();
    let (Some(&(first_version, _)), Some(&(last_version, _))) = (slots.first(), slots.last())
    else {
        return Err(StoreError::Backend(format!(
            "append to {stream}: the insert returned no rows"
        )));
    };
    if last_version - first_version + 1 != slots.len() as u64 {
        return Err(StoreError::Backend(format!(
            "append to {stream}: the insert returned versions {first_version}..={last_version} \
             for {} events",
            slots.len()
        )));
    }
    Ok(AppendResult {
        first_version,
        last_version,
        positions: slots.into_iter().map(|(_, position)| position).collect(),
        already_existed: false,
    })
}

fn non_negative(stream: &StreamId, row: &PgRow, column: &str) -> Result<u64, StoreError> {
    let value: i64 = row.try_get(column).map_err(backend)?;
    u64::try_from(value).map_err(|_| StoreError::Corrupt {
        stream: stream.as_str().to_owned(),
        version: 0,
        reason: format!("negative {column} {value}"),
    })
}

/// The id of the event an `event_stream_event_id_uq` violation names, found
/// in the server's detail text (`Key (stream_id, event_id)=(…, <uuid>)`).
/// That constraint is gone since the `20261127000020` migration; this still
/// reads the violation right on a database that has not applied it yet.
pub(crate) fn event_id_in(detail: &str, events: &[NewEvent]) -> Option<Uuid> {
    events
        .iter()
        .map(|e| e.event_id.0)
        .find(|id| detail.contains(&id.to_string()))
}

#[cfg(test)]
mod one_statement_tests {
    use super::*;
    use ledger_store::conformance::new_event;

    fn part(stream: &str, events: usize) -> StreamAppend {
        StreamAppend {
            stream: StreamId::new(stream).unwrap(),
            expected: ExpectedVersion::Any,
            events: (0..events).map(|_| new_event("E", "{}")).collect(),
        }
    }

    #[test]
    fn only_batches_of_single_events_on_distinct_streams_fit() {
        assert!(fits_one_statement(&[
            part("order-a", 1),
            part("order-b", 1)
        ]));
        assert!(!fits_one_statement(&[part("order-a", 1)]));
        assert!(!fits_one_statement(&[
            part("order-a", 1),
            part("order-b", 2)
        ]));
        assert!(!fits_one_statement(&[
            part("order-a", 1),
            part("order-b", 1),
            part("order-a", 1)
        ]));
    }
}
