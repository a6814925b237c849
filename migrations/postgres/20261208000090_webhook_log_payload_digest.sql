-- A signature-invalid delivery (anyone can send one) keeps at most the
-- first 4 KiB of its body in `payload`, with the whole body's SHA-256
-- (lowercase hex) and length here, next to its headers. Both are null on
-- rows whose `payload` is the whole body (signed deliveries, older rows).
alter table hyperswitch_webhook_log add column payload_sha256 text;
alter table hyperswitch_webhook_log add column payload_len bigint;

alter table hyperswitch_webhook_log add constraint hyperswitch_webhook_log_payload_digest_ck
    check (
        (payload_sha256 is null and payload_len is null)
        or (payload_sha256 ~ '^[0-9a-f]{64}$' and payload_len >= 0)
    );
