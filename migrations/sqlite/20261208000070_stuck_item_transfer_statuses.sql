-- stuck_item lists every waiting transfer status (generated from projections/src/readmodel/schema.rs).
drop view if exists stuck_item;

create view stuck_item as
select 'order' as kind, o.order_id as id, o.status, o.status_since, cast(round((julianday('now') - julianday(o.status_since)) * 86400) as integer) as age
from order_view o where o.status in ('created', 'pending', 'refund_pending')
union all
select 'refund', r.refund_id, r.status, r.status_since, cast(round((julianday('now') - julianday(r.status_since)) * 86400) as integer)
from refund_view r where r.status in ('requested', 'submitted')
union all
select 'transfer', t.transfer_id, t.status, t.status_since, cast(round((julianday('now') - julianday(t.status_since)) * 86400) as integer)
from seller_transfer_view t where t.status in ('failed', 'reversal_pending', 'pending', 'indeterminate', 'reversal_indeterminate', 'permanently_failed', 'reversal_failed');
