-- One id per webhook delivery, made by the server when the request arrives
-- (text, the hyphenated UUID). A write that is retried after its commit
-- succeeded but its answer was lost finds its row by this id instead of
-- writing a second one, so a delivery keeps exactly one row. Rows from
-- before this column have none (nulls are distinct, so they never conflict).
alter table hyperswitch_webhook_log add column delivery_id text;

create unique index hyperswitch_webhook_log_delivery_id_uq
    on hyperswitch_webhook_log (delivery_id);
