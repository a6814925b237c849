-- The owner of an in-progress claim: a token unique per claim (the claiming
-- process's id and a claim id). Only the owner renews the claim's lease (a
-- heartbeat while its request runs) or releases it (its request failed or
-- was dropped), so a late release never frees a claim someone else took
-- over. Claims made before this column have none: they end only when their
-- lease runs out. (SQLite cannot add a check constraint to an existing
-- table; ledger-store refuses an owner over 128 characters.)
alter table idempotency_record add column owner text;
