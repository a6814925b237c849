-- The event store: an append-only `event` table in global order, and one head
-- row per stream (`stream`) holding its version and the hash its next event
-- links to.
--
-- Tables are `strict` so a value of the wrong type is refused at insert time
-- instead of being read back as something else (the hash covers exact bytes).

create table stream (
    stream_id text not null constraint stream_pk primary key,
    -- Version of the stream's last event. Kept even if that event's row is
    -- removed behind the store's back, so truncating a stream's tail is
    -- visible (the chain alone cannot show a missing last event).
    version integer not null,
    last_hash blob not null,
    constraint stream_version_positive check (version >= 1),
    constraint stream_last_hash_length check (length(last_hash) = 32)
) strict, without rowid;

create table event (
    -- `autoincrement`: a position is never handed out twice, even after the
    -- highest row is deleted, so a reader that has passed a position can never
    -- miss a later event that reuses it.
    global_position integer not null constraint event_pk primary key autoincrement,
    stream_id text not null,
    stream_version integer not null,
    -- Hyphenated lower-case UUID text.
    event_id text not null,
    event_type text not null,
    schema_version integer not null,
    -- The exact JSON text that was hashed; never re-serialised.
    payload text not null,
    metadata text not null,
    -- Microseconds since the Unix epoch: exactly the value the hash covers.
    recorded_at integer not null,
    prev_hash blob not null,
    hash blob not null,
    -- Deferred: the head row is written by `event_advance_stream` after the
    -- stream's first event; checked at commit.
    constraint event_stream_fk foreign key (stream_id) references stream (stream_id)
        deferrable initially deferred,
    constraint event_stream_version_key unique (stream_id, stream_version),
    constraint event_stream_event_id_key unique (stream_id, event_id),
    constraint event_stream_version_positive check (stream_version >= 1),
    constraint event_schema_version_range check (schema_version between 0 and 4294967295),
    constraint event_event_id_length check (length(event_id) = 36),
    constraint event_prev_hash_length check (length(prev_hash) = 32),
    constraint event_hash_length check (length(hash) = 32)
) strict;

-- Every inserted event moves its stream's head, inside the inserting
-- statement: the head cannot disagree with the last insert, and an append
-- needs no separate round trip to maintain it. Events arrive in version
-- order, so the last row of a batch leaves the head at the batch's end.
create trigger event_advance_stream after insert on event
begin
    insert into stream (stream_id, version, last_hash)
    values (new.stream_id, new.stream_version, new.hash)
    on conflict (stream_id) do update set version = excluded.version, last_hash = excluded.last_hash;
end;
