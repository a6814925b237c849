-- A signature-invalid delivery (anyone can send one) keeps at most the
-- first 4 KiB of its body in `payload`, with the whole body's SHA-256
-- (lowercase hex) and length here, next to its headers. Both are null on
-- rows whose `payload` is the whole body (signed deliveries, older rows).
-- (SQLite cannot add a table constraint; the column checks hold the shape.)
alter table hyperswitch_webhook_log add column payload_sha256 text
    constraint hyperswitch_webhook_log_payload_sha256_ck
    check (payload_sha256 is null or (length(payload_sha256) = 64
        and payload_sha256 not glob '*[^0-9a-f]*'));
alter table hyperswitch_webhook_log add column payload_len integer
    constraint hyperswitch_webhook_log_payload_len_ck check (payload_len is null or payload_len >= 0);
