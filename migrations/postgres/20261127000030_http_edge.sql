-- The HTTP edge: idempotency records for the command endpoints and the
-- Hyperswitch webhook log (the seed's migration 984, item E).

-- One row per (scope, key): scope is route + principal, key the
-- Idempotency-Key header. A row is 'in_progress' while its first request
-- executes (locked_at is when its current holder claimed it; a claim older
-- than the lease is taken over by a compare-and-set on locked_at) and
-- 'completed' once the response to replay is stored.
create table idempotency_record (
    scope text not null,
    key text not null,
    -- sha256 of the request (method, path, body) the key was first used with.
    request_hash bytea not null,
    status text not null,
    response_status integer,
    response_content_type text,
    -- The exact response bytes, replayed as they were sent.
    response_body bytea,
    locked_at timestamptz not null,
    completed_at timestamptz,
    constraint idempotency_record_pk primary key (scope, key),
    -- IDEMPOTENCY_SCOPE_MAX / IDEMPOTENCY_KEY_MAX in ledger-store (Stripe's 255).
    constraint idempotency_record_scope_length_ck check (char_length(scope) between 1 and 255),
    constraint idempotency_record_key_length_ck check (char_length(key) between 1 and 255),
    constraint idempotency_record_request_hash_length_ck check (octet_length(request_hash) = 32),
    constraint idempotency_record_status_ck check (status in ('in_progress', 'completed')),
    constraint idempotency_record_response_status_ck check (response_status between 100 and 999),
    -- A response exists exactly when the record is completed.
    constraint idempotency_record_completion_ck check (
        (status = 'in_progress'
            and response_status is null and response_content_type is null
            and response_body is null and completed_at is null)
        or (status = 'completed'
            and response_status is not null and response_content_type is not null
            and response_body is not null and completed_at is not null)
    )
);

-- purge_before walks completed records oldest first.
create index idempotency_record_completed_at_ix on idempotency_record (completed_at)
    where status = 'completed';

-- One row per webhook delivery, written once with its final state, whatever
-- the signature check or the processing said.
create table hyperswitch_webhook_log (
    id bigint generated always as identity,
    -- The body as text; a body that is not UTF-8 is stored as '' (the
    -- forensics value of those is in the headers, address and timing).
    payload text not null,
    signature_valid boolean not null,
    processing_result text not null,
    source_ip text,
    user_agent text,
    -- X-Request-Id when Hyperswitch sent one, else a server-side UUID.
    request_id text not null,
    -- Best effort from the JSON payload; null when it is not JSON.
    event_type text,
    event_id text,
    received_at timestamptz not null,
    constraint hyperswitch_webhook_log_pk primary key (id),
    constraint hyperswitch_webhook_log_processing_result_ck check (
        processing_result in ('ok', 'signature_invalid', 'skipped', 'duplicate')
        or left(processing_result, 7) = 'error: '
    )
);

-- The retention sweep deletes oldest first.
create index hyperswitch_webhook_log_received_at_ix on hyperswitch_webhook_log (received_at);

-- "Show me the attack attempts" stays instant however big the log grows.
create index hyperswitch_webhook_log_signature_invalid_ix on hyperswitch_webhook_log (received_at)
    where signature_valid = false;

-- Delivery dedupe: was this event id already processed ok?
create index hyperswitch_webhook_log_event_id_ix on hyperswitch_webhook_log (event_id)
    where event_id is not null;
