-- stuck_item lists every waiting transfer status (generated from projections/src/readmodel/schema.rs).
drop view if exists stuck_item;

create view stuck_item as
select 'order' as kind, o.order_id as id, o.status, o.status_since, now() - o.status_since as age
from order_view o where o.status in ('created', 'pending', 'refund_pending')
union all
select 'refund', r.refund_id, r.status, r.status_since, now() - r.status_since
from refund_view r where r.status in ('requested', 'submitted')
union all
select 'transfer', t.transfer_id, t.status, t.status_since, now() - t.status_since
from seller_transfer_view t where t.status in ('failed', 'reversal_pending', 'pending', 'indeterminate', 'reversal_indeterminate', 'permanently_failed', 'reversal_failed');
