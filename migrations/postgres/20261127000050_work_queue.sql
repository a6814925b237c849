-- The process managers' due-time work queue: one row per (manager,
-- stream_id) saying "look at this stream at or after due_at". A worker
-- claims due rows with `for update skip locked` and a lease (owner,
-- claimed_until); `version` moves on every re-enqueue so a finishing worker
-- can tell that new work arrived while it ran. The managers' feed
-- checkpoints live in projection_checkpoint, next to the projections'.
create table pm_work (
    manager text not null,
    stream_id text not null,
    due_at timestamptz not null,
    -- Failed tries so far (reschedule adds one).
    attempts bigint not null default 0,
    version bigint not null default 1,
    -- The last failure, clipped to WORK_LAST_ERROR_MAX characters.
    last_error text,
    -- Both null while unclaimed; a claim is live while claimed_until >= now.
    owner text,
    claimed_until timestamptz,
    updated_at timestamptz not null,
    constraint pm_work_pk primary key (manager, stream_id),
    -- WORK_MANAGER_MAX / WORK_STREAM_ID_MAX / WORK_OWNER_MAX /
    -- WORK_LAST_ERROR_MAX in ledger-store.
    constraint pm_work_manager_length_ck check (char_length(manager) between 1 and 100),
    constraint pm_work_stream_id_length_ck check (char_length(stream_id) between 1 and 200),
    constraint pm_work_owner_length_ck check (char_length(owner) between 1 and 200),
    constraint pm_work_last_error_length_ck check (char_length(last_error) <= 2000),
    constraint pm_work_attempts_ck check (attempts between 0 and 4294967295),
    constraint pm_work_version_ck check (version >= 1),
    constraint pm_work_claim_ck check ((owner is null) = (claimed_until is null))
);

-- claim_due and pending: one manager's rows, oldest due first.
create index pm_work_manager_due_at_ix on pm_work (manager, due_at);
