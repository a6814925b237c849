-- The event store: the append-only event table and the one function that
-- performs a whole append in a single statement.
--
-- Guarantees (with ledger_append as the only writer):
--   * (stream_id, stream_version) and (stream_id, event_id) are unique;
--   * versions of a stream are 1, 2, 3, ... with no gap;
--   * hash = sha256(prev_hash || int8send(stream_version) || content_digest)
--     where prev_hash is the previous version's hash (32 zero bytes for
--     version 1), i.e. exactly ledger_core::hash::chain;
--   * transaction_id is the writing transaction's xid8, so a reader can
--     stop below the oldest transaction still running
--     (pg_snapshot_xmin(pg_current_snapshot())) and never skip an event
--     that commits later with a lower global_position.
--
-- There is no separate per-stream head row. The stream's last event is its
-- head (one backward probe of event_pk), and event_pk itself serialises
-- writers: two appends that read the same head both insert the same next
-- version, the second waits on the first's uncommitted index entry and then
-- fails with a unique violation on event_pk, and its caller re-runs the
-- append against the new head. A head row cost a row lock, an update and,
-- for each new stream, an insert: measured, it halved append throughput
-- against a plain insert; see adapters/postgres/src/lib.rs.

create table event (
    -- Unique by construction (generated always), so it needs no index of
    -- its own: read_all walks event_transaction_position_ix.
    global_position bigint generated always as identity,
    transaction_id xid8 not null default pg_current_xact_id(),
    stream_id text not null,
    stream_version bigint not null,
    event_id uuid not null,
    event_type text not null,
    -- bigint, not integer: the envelope's schema_version is a u32.
    schema_version bigint not null,
    -- text, never jsonb: these are the exact bytes that were hashed, and
    -- jsonb would reorder keys and reformat numbers.
    payload text not null,
    metadata text not null,
    recorded_at timestamptz not null,
    prev_hash bytea not null,
    hash bytea not null,
    constraint event_pk primary key (stream_id, stream_version),
    constraint event_stream_event_id_uq unique (stream_id, event_id),
    constraint event_stream_version_ck check (stream_version >= 1),
    constraint event_schema_version_ck check (schema_version between 0 and 4294967295),
    constraint event_hash_length_ck check (octet_length(hash) = 32 and octet_length(prev_hash) = 32)
);

-- read_all walks (transaction_id, global_position) in order from a checkpoint.
create index event_transaction_position_ix on event (transaction_id, global_position);

-- Appends one batch of events to one stream, or reports why it did not.
--
-- p_expected_kind is 'any', 'no_stream', 'stream_exists' or 'exact' (then
-- p_expected_version is the version that must be current). p_digests are
-- ledger_core::hash::content_digest of each event, which do not depend on
-- the version, so the chain step runs here in the statement that assigns
-- versions.
--
-- Returns exactly one of:
--   * outcome 'appended': one row per event, in batch order, with the new
--     stream_version and global_position;
--   * outcome 'existing': one row per batch event, in batch order, with the
--     stored stream_version, global_position, event_type and payload of that
--     event id, or nulls where the id is not in the stream. Nothing was
--     written; the caller decides between idempotent success and conflict;
--   * outcome 'wrong_version': one row whose stream_version is the stream's
--     current version (null when the stream does not exist). Nothing was
--     written.
-- or raises unique_violation (23505) on event_pk or event_stream_event_id_uq
-- when a concurrent append to the same stream committed first, or
-- serialization_failure (40001) when the calling transaction's xid is older
-- than the stream head's writer: either way the caller re-runs the append in
-- a new transaction.
create function ledger_append(
    p_stream text,
    p_expected_kind text,
    p_expected_version bigint,
    p_event_ids uuid[],
    p_event_types text[],
    p_schema_versions bigint[],
    p_payloads text[],
    p_metadata text[],
    p_recorded_at timestamptz,
    p_digests bytea[]
)
returns table (
    outcome text,
    stream_version bigint,
    global_position bigint,
    event_type text,
    payload text
)
language plpgsql
as $$
declare
    v_count int := cardinality(p_event_ids);
    v_head bigint;
    v_head_transaction xid8;
    v_prev bytea;
    v_hashes bytea[] := array[]::bytea[];
begin
    if v_count is null or v_count = 0
        or cardinality(p_event_types) is distinct from v_count
        or cardinality(p_schema_versions) is distinct from v_count
        or cardinality(p_payloads) is distinct from v_count
        or cardinality(p_metadata) is distinct from v_count
        or cardinality(p_digests) is distinct from v_count
    then
        raise exception 'ledger_append: event arrays must be non-empty and of equal length'
            using errcode = '22023';
    end if;
    if p_expected_kind is null
        or p_expected_kind not in ('any', 'no_stream', 'stream_exists', 'exact')
    then
        raise exception 'ledger_append: unknown expected kind %', p_expected_kind
            using errcode = '22023';
    end if;

    select e.stream_version, e.hash, e.transaction_id into v_head, v_prev, v_head_transaction
    from event e
    where e.stream_id = p_stream
    order by e.stream_version desc
    limit 1;

    if not found then
        -- No committed stream, hence no stored ids to re-append against.
        if p_expected_kind in ('exact', 'stream_exists') then
            outcome := 'wrong_version';
            return next;
            return;
        end if;
        v_head := 0;
        v_prev := '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea;
    else
        -- Ids already in the stream: report each and write nothing, whatever
        -- the expected version says (an idempotent retry must not fail on it).
        if exists (
            select 1 from event e
            where e.stream_id = p_stream and e.event_id = any (p_event_ids)
        ) then
            return query
            select 'existing'::text, e.stream_version, e.global_position, e.event_type, e.payload
            from unnest(p_event_ids) with ordinality as b(id, ord)
            left join event e on e.stream_id = p_stream and e.event_id = b.id
            order by b.ord;
            return;
        end if;
        if p_expected_kind = 'no_stream'
            or (p_expected_kind = 'exact' and p_expected_version is distinct from v_head)
        then
            outcome := 'wrong_version';
            stream_version := v_head;
            return next;
            return;
        end if;
        -- read_all orders by transaction id, so a stream's versions must
        -- ascend with it. They do when this transaction gets its xid now,
        -- after the head committed; but a transaction that wrote earlier
        -- (another part of an append_many) may hold an xid older than the
        -- head's writer. Appending would make read_all return this version
        -- before the head: refuse, and let the caller retry the transaction
        -- with a fresh xid.
        if v_head_transaction > pg_current_xact_id() then
            raise exception 'ledger_append: stream % was extended by a younger transaction', p_stream
                using errcode = '40001';
        end if;
    end if;

    -- The common case, one event, as a plain single-row insert: measurably
    -- cheaper than the general unnest below.
    if v_count = 1 then
        insert into event as e (
            stream_id, stream_version, event_id, event_type, schema_version,
            payload, metadata, recorded_at, prev_hash, hash
        )
        values (
            p_stream, v_head + 1, p_event_ids[1], p_event_types[1], p_schema_versions[1],
            p_payloads[1], p_metadata[1], p_recorded_at, v_prev,
            sha256(v_prev || int8send(v_head + 1) || p_digests[1])
        )
        returning e.global_position into global_position;
        outcome := 'appended';
        stream_version := v_head + 1;
        return next;
        return;
    end if;

    -- The chain step of ledger_core::hash::chain, in version order.
    for i in 1 .. v_count loop
        v_hashes[i] := sha256(
            (case when i = 1 then v_prev else v_hashes[i - 1] end)
            || int8send(v_head + i)
            || p_digests[i]
        );
    end loop;

    return query
    with inserted as (
        insert into event as e (
            stream_id, stream_version, event_id, event_type, schema_version,
            payload, metadata, recorded_at, prev_hash, hash
        )
        select
            p_stream, v_head + b.ord, b.id, b.t, b.sv, b.p, b.m, p_recorded_at,
            case when b.ord = 1 then v_prev else v_hashes[b.ord - 1] end,
            v_hashes[b.ord]
        from unnest(p_event_ids, p_event_types, p_schema_versions, p_payloads, p_metadata)
            with ordinality as b(id, t, sv, p, m, ord)
        -- Identity values follow this order, so within one append global
        -- positions ascend with versions.
        order by b.ord
        returning e.stream_version, e.global_position
    )
    select 'appended'::text, i.stream_version, i.global_position, null::text, null::text
    from inserted i
    order by i.stream_version;
end;
$$;
