-- Read models (generated from projections/src/readmodel/schema.rs).
create table projection_checkpoint (
    name text not null,
    commit_id bigint not null,
    position bigint not null,
    updated_at timestamptz not null,
    constraint projection_checkpoint_pk primary key (name)
);

create table order_view (
    order_id text not null,
    status text not null,
    buyer_id text not null,
    currency text not null,
    total_minor bigint not null,
    captured_minor bigint not null,
    refunded_minor bigint not null,
    fee_minor bigint not null,
    payment_id text,
    created_at timestamptz not null,
    updated_at timestamptz not null,
    status_since timestamptz not null,
    stream_version bigint not null,
    constraint order_view_pk primary key (order_id)
);

create index order_view_status_since_ix on order_view (status, status_since);

create index order_view_created_at_ix on order_view (created_at);

create table order_line_view (
    order_id text not null,
    product_id text not null,
    seller_id text not null,
    seller_account text not null,
    currency text not null,
    unit_amount_minor bigint not null,
    quantity bigint not null,
    total_minor bigint not null,
    fee_minor bigint not null,
    seller_minor bigint not null,
    refund_state text not null,
    refund_id text,
    constraint order_line_view_pk primary key (order_id, product_id)
);

create index order_line_view_seller_ix on order_line_view (seller_id, refund_state);

create table refund_view (
    refund_id text not null,
    status text not null,
    order_id text not null,
    payment_id text not null,
    amount_minor bigint not null,
    currency text not null,
    lines text not null,
    reason text not null,
    hyperswitch_refund_id text,
    failure text,
    error_message text,
    requested_at timestamptz not null,
    updated_at timestamptz not null,
    status_since timestamptz not null,
    stream_version bigint not null,
    constraint refund_view_pk primary key (refund_id)
);

create index refund_view_order_ix on refund_view (order_id);

create index refund_view_status_since_ix on refund_view (status, status_since);

create table seller_transfer_view (
    transfer_id text not null,
    status text not null,
    order_id text not null,
    seller_id text not null,
    destination text not null,
    currency text not null,
    scheduled_minor bigint not null,
    amount_minor bigint not null,
    transferred_minor bigint not null,
    amount_reversed_minor bigint not null,
    stripe_transfer_id text,
    stripe_reversal_id text,
    attempt bigint not null,
    retry_count bigint not null,
    reversal_retry_count bigint not null,
    next_retry_at timestamptz,
    last_error text,
    created_at timestamptz not null,
    updated_at timestamptz not null,
    status_since timestamptz not null,
    stream_version bigint not null,
    constraint seller_transfer_view_pk primary key (transfer_id)
);

create index seller_transfer_view_order_ix on seller_transfer_view (order_id);

create index seller_transfer_view_seller_ix on seller_transfer_view (seller_id);

create index seller_transfer_view_status_since_ix on seller_transfer_view (status, status_since);

create table journal_entry (
    entry_id text not null,
    source_event_id text not null,
    event_type text not null,
    stream_id text not null,
    stream_version bigint not null,
    global_position bigint not null,
    currency text not null,
    description text not null,
    recorded_at timestamptz not null,
    constraint journal_entry_pk primary key (entry_id)
);

create index journal_entry_stream_ix on journal_entry (stream_id, stream_version);

create table posting (
    entry_id text not null,
    leg bigint not null,
    account text not null,
    side text not null,
    amount_minor bigint not null,
    currency text not null,
    event_type text not null,
    recorded_at timestamptz not null,
    constraint posting_pk primary key (entry_id, leg)
);

create index posting_account_ix on posting (account, currency);

create index posting_recorded_at_ix on posting (recorded_at);

create table account_balance (
    account text not null,
    currency text not null,
    debit_minor bigint not null,
    credit_minor bigint not null,
    constraint account_balance_pk primary key (account, currency)
);

create table anomaly (
    stream_id text not null,
    stream_version bigint not null,
    event_type text not null,
    kind text not null,
    details text not null,
    at timestamptz not null,
    global_position bigint not null,
    constraint anomaly_pk primary key (stream_id, stream_version)
);

create index anomaly_at_ix on anomaly (at);

create view seller_balance as
select substr(b.account, length('seller_payable:') + 1) as seller_id, b.currency,
b.credit_minor - b.debit_minor as payable_minor, b.credit_minor, b.debit_minor
from account_balance b where b.account like 'seller_payable:%';

create view daily_money as
select (p.recorded_at at time zone 'UTC')::date as day, p.currency,
sum(case when p.event_type = 'PaymentSucceeded' and p.account = 'psp_clearing' then p.amount_minor else 0 end) as captured_minor,
sum(case when p.event_type = 'RefundSucceeded' and p.account = 'psp_clearing' then p.amount_minor else 0 end) as refunded_minor,
sum(case when p.account = 'platform_fees' and p.side = 'credit' then p.amount_minor when p.account = 'platform_fees' then -p.amount_minor else 0 end) as fees_minor
from posting p group by (p.recorded_at at time zone 'UTC')::date, p.currency;

create view seller_refund_rate as
select l.seller_id, l.currency, count(*) as lines_sold,
sum(case when l.refund_state = 'refunded' then 1 else 0 end) as lines_refunded,
sum(l.total_minor) as sold_minor,
sum(case when l.refund_state = 'refunded' then l.total_minor else 0 end) as refunded_minor
from order_line_view l join order_view o on o.order_id = l.order_id
where o.captured_minor > 0 group by l.seller_id, l.currency;

create view stuck_item as
select 'order' as kind, o.order_id as id, o.status, o.status_since, now() - o.status_since as age
from order_view o where o.status in ('created', 'pending', 'refund_pending')
union all
select 'refund', r.refund_id, r.status, r.status_since, now() - r.status_since
from refund_view r where r.status in ('requested', 'submitted')
union all
select 'transfer', t.transfer_id, t.status, t.status_since, now() - t.status_since
from seller_transfer_view t where t.status in ('failed', 'reversal_pending', 'pending');
