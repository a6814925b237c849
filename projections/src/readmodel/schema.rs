//! The read-model tables, described once; every statement (DDL, batched
//! upserts, loads, diffs) for both backends is generated from these
//! descriptions, so the two backends cannot drift apart column by column.
//!
//! Batched writes bind typed values decoded once in Rust (no JSON expanded
//! server-side): on Postgres one array per column through `unnest`, one
//! statement per table per batch; on SQLite multi-row `values` statements
//! of [`SQLITE_ROWS_PER_STATEMENT_MAX`] rows, prepared once and reused.

/// Which SQL dialect an adapter speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Sqlite,
}

/// Suffix of the shadow copy of a table that a rebuild fills.
pub const SHADOW_SUFFIX: &str = "__shadow";

/// SQLite's limit on bound parameters in one statement
/// (`SQLITE_MAX_VARIABLE_NUMBER`, 32766 since 3.32).
pub const SQLITE_BINDS_MAX: usize = 32_766;

/// Rows in one SQLite multi-row `insert`: enough to amortise the statement,
/// few enough that the handful of statement shapes stays in the prepared
/// statement cache and one statement's binds stay small.
pub const SQLITE_ROWS_PER_STATEMENT_MAX: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColType {
    Text,
    Int,
    /// UTC timestamp: `timestamptz` on Postgres, fixed-width RFC 3339 text
    /// (`YYYY-MM-DDTHH:MM:SS.ffffffZ`, so it sorts) on SQLite.
    Ts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    pub ty: ColType,
    pub nullable: bool,
}

const fn col(name: &'static str, ty: ColType) -> Column {
    Column {
        name,
        ty,
        nullable: false,
    }
}

const fn opt(name: &'static str, ty: ColType) -> Column {
    Column {
        name,
        ty,
        nullable: true,
    }
}

/// How a batch writes a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WriteMode {
    /// The whole row image replaces the stored row.
    Upsert,
    /// Append-only: a second insert of a key is a loud unique violation,
    /// never a silent double-apply.
    Insert,
    /// These integer columns are added to the stored row (balances).
    Add(&'static [&'static str]),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table {
    pub name: &'static str,
    pub columns: &'static [Column],
    pub key: &'static [&'static str],
    pub write: WriteMode,
    /// `(index name suffix, column list)`.
    pub indexes: &'static [(&'static str, &'static str)],
    /// Column a batch loads existing rows by (entity tables only).
    pub load_by: Option<&'static str>,
}

use ColType::{Int, Text, Ts};

pub const ORDER_VIEW: Table = Table {
    name: "order_view",
    columns: &[
        col("order_id", Text),
        col("status", Text),
        col("buyer_id", Text),
        col("currency", Text),
        col("total_minor", Int),
        col("captured_minor", Int),
        col("refunded_minor", Int),
        col("fee_minor", Int),
        opt("payment_id", Text),
        col("created_at", Ts),
        col("updated_at", Ts),
        col("status_since", Ts),
        col("stream_version", Int),
    ],
    key: &["order_id"],
    write: WriteMode::Upsert,
    indexes: &[
        ("status_since_ix", "status, status_since"),
        ("created_at_ix", "created_at"),
    ],
    load_by: Some("order_id"),
};

pub const ORDER_LINE_VIEW: Table = Table {
    name: "order_line_view",
    columns: &[
        col("order_id", Text),
        col("product_id", Text),
        col("seller_id", Text),
        col("seller_account", Text),
        col("currency", Text),
        col("unit_amount_minor", Int),
        col("quantity", Int),
        col("total_minor", Int),
        col("fee_minor", Int),
        col("seller_minor", Int),
        col("refund_state", Text),
        opt("refund_id", Text),
    ],
    key: &["order_id", "product_id"],
    write: WriteMode::Upsert,
    indexes: &[("seller_ix", "seller_id, refund_state")],
    load_by: Some("order_id"),
};

pub const REFUND_VIEW: Table = Table {
    name: "refund_view",
    columns: &[
        col("refund_id", Text),
        col("status", Text),
        col("order_id", Text),
        col("payment_id", Text),
        col("amount_minor", Int),
        col("currency", Text),
        col("lines", Text),
        col("reason", Text),
        opt("hyperswitch_refund_id", Text),
        opt("failure", Text),
        opt("error_message", Text),
        col("requested_at", Ts),
        col("updated_at", Ts),
        col("status_since", Ts),
        col("stream_version", Int),
    ],
    key: &["refund_id"],
    write: WriteMode::Upsert,
    indexes: &[
        ("order_ix", "order_id"),
        ("status_since_ix", "status, status_since"),
    ],
    load_by: Some("refund_id"),
};

pub const SELLER_TRANSFER_VIEW: Table = Table {
    name: "seller_transfer_view",
    columns: &[
        col("transfer_id", Text),
        col("status", Text),
        col("order_id", Text),
        col("seller_id", Text),
        col("destination", Text),
        col("currency", Text),
        col("scheduled_minor", Int),
        col("amount_minor", Int),
        col("transferred_minor", Int),
        col("amount_reversed_minor", Int),
        opt("stripe_transfer_id", Text),
        opt("stripe_reversal_id", Text),
        col("attempt", Int),
        col("retry_count", Int),
        col("reversal_retry_count", Int),
        opt("next_retry_at", Ts),
        opt("last_error", Text),
        col("created_at", Ts),
        col("updated_at", Ts),
        col("status_since", Ts),
        col("stream_version", Int),
    ],
    key: &["transfer_id"],
    write: WriteMode::Upsert,
    indexes: &[
        ("order_ix", "order_id"),
        ("seller_ix", "seller_id"),
        ("status_since_ix", "status, status_since"),
    ],
    load_by: Some("transfer_id"),
};

pub const JOURNAL_ENTRY: Table = Table {
    name: "journal_entry",
    columns: &[
        col("entry_id", Text),
        col("source_event_id", Text),
        col("event_type", Text),
        col("stream_id", Text),
        col("stream_version", Int),
        col("global_position", Int),
        col("currency", Text),
        col("description", Text),
        col("recorded_at", Ts),
    ],
    key: &["entry_id"],
    write: WriteMode::Insert,
    indexes: &[("stream_ix", "stream_id, stream_version")],
    load_by: None,
};

pub const POSTING: Table = Table {
    name: "posting",
    columns: &[
        col("entry_id", Text),
        col("leg", Int),
        col("account", Text),
        col("side", Text),
        col("amount_minor", Int),
        col("currency", Text),
        col("event_type", Text),
        col("recorded_at", Ts),
    ],
    key: &["entry_id", "leg"],
    write: WriteMode::Insert,
    indexes: &[
        ("account_ix", "account, currency"),
        ("recorded_at_ix", "recorded_at"),
    ],
    load_by: None,
};

pub const ACCOUNT_BALANCE: Table = Table {
    name: "account_balance",
    columns: &[
        col("account", Text),
        col("currency", Text),
        col("debit_minor", Int),
        col("credit_minor", Int),
    ],
    key: &["account", "currency"],
    write: WriteMode::Add(&["debit_minor", "credit_minor"]),
    indexes: &[],
    load_by: None,
};

pub const ANOMALY: Table = Table {
    name: "anomaly",
    columns: &[
        col("stream_id", Text),
        col("stream_version", Int),
        col("event_type", Text),
        col("kind", Text),
        col("details", Text),
        col("at", Ts),
        col("global_position", Int),
    ],
    key: &["stream_id", "stream_version"],
    write: WriteMode::Insert,
    indexes: &[("at_ix", "at")],
    load_by: None,
};

/// One rebuildable projection: a name (its checkpoint row) and its tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReadModel {
    Orders,
    Refunds,
    Transfers,
    Journal,
    Anomalies,
}

impl ReadModel {
    pub const ALL: [ReadModel; 5] = [
        ReadModel::Orders,
        ReadModel::Refunds,
        ReadModel::Transfers,
        ReadModel::Journal,
        ReadModel::Anomalies,
    ];

    /// The checkpoint name (and the CLI name).
    pub fn name(self) -> &'static str {
        match self {
            ReadModel::Orders => "orders",
            ReadModel::Refunds => "refunds",
            ReadModel::Transfers => "transfers",
            ReadModel::Journal => "journal",
            ReadModel::Anomalies => "anomalies",
        }
    }

    pub fn parse(name: &str) -> Option<ReadModel> {
        ReadModel::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Checkpoint name of the live (`shadow = false`) or shadow copy.
    pub fn checkpoint_name(self, shadow: bool) -> String {
        if shadow {
            format!("{}{SHADOW_SUFFIX}", self.name())
        } else {
            self.name().to_owned()
        }
    }

    pub fn tables(self) -> &'static [Table] {
        match self {
            ReadModel::Orders => &[ORDER_VIEW, ORDER_LINE_VIEW],
            ReadModel::Refunds => &[REFUND_VIEW],
            ReadModel::Transfers => &[SELLER_TRANSFER_VIEW],
            ReadModel::Journal => &[JOURNAL_ENTRY, POSTING, ACCOUNT_BALANCE],
            ReadModel::Anomalies => &[ANOMALY],
        }
    }
}

fn sql_type(dialect: Dialect, ty: ColType) -> &'static str {
    match (dialect, ty) {
        (_, Text) => "text",
        (Dialect::Postgres, Int) => "bigint",
        (Dialect::Sqlite, Int) => "integer",
        (Dialect::Postgres, Ts) => "timestamptz",
        (Dialect::Sqlite, Ts) => "text",
    }
}

fn sfx(shadow: bool) -> &'static str {
    if shadow { SHADOW_SUFFIX } else { "" }
}

impl Table {
    pub fn table_name(&self, shadow: bool) -> String {
        format!("{}{}", self.name, sfx(shadow))
    }

    fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|c| c.name)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether this table's key is left out of its shadow while a rebuild
    /// loads it, and built as the unique index `{live}_pk` when the shadow
    /// is swapped in. So on SQLite for append-only ([`WriteMode::Insert`])
    /// tables: their keys are random uuids, so every load transaction
    /// dirtied most pages of a key index maintained row by row (written to
    /// the WAL, then again by the checkpoint); one sorted build at the swap
    /// writes each page once. The loaded rows are only ever inserted, so
    /// nothing needs the key meanwhile; a duplicate (a fold bug) fails the
    /// swap's index build, loudly, and the live tables stay as they were.
    /// (Postgres renames constraints and indexes, so it builds everything
    /// before the swap and keeps its keys while loading.)
    pub fn key_built_at_swap(&self, dialect: Dialect, shadow: bool) -> bool {
        shadow && dialect == Dialect::Sqlite && self.write == WriteMode::Insert
    }

    /// `create table` (constraints named after the table, so a shadow's
    /// names never collide with the live table's).
    pub fn create_sql(&self, dialect: Dialect, shadow: bool) -> String {
        let t = self.table_name(shadow);
        let mut parts: Vec<String> = self
            .columns
            .iter()
            .map(|c| {
                let null = if c.nullable { "" } else { " not null" };
                format!("    {} {}{null}", c.name, sql_type(dialect, c.ty))
            })
            .collect();
        if dialect == Dialect::Sqlite {
            // SQLite turns an overflowing integer sum into a float; refuse it.
            for c in self.columns.iter().filter(|c| c.ty == Int) {
                parts.push(format!(
                    "    constraint {t}_{}_integer_ck check (typeof({}) in ('integer', 'null'))",
                    c.name, c.name
                ));
            }
        }
        if !self.key_built_at_swap(dialect, shadow) {
            parts.push(format!(
                "    constraint {t}_pk primary key ({})",
                self.key.join(", ")
            ));
        }
        format!("create table {t} (\n{}\n)", parts.join(",\n"))
    }

    pub fn index_sql(&self, shadow: bool) -> Vec<String> {
        let t = self.table_name(shadow);
        self.indexes
            .iter()
            .map(|(name, cols)| format!("create index {t}_{name} on {t} ({cols})"))
            .collect()
    }

    /// One statement writing `rows` rows, with typed binds in column order
    /// (see [`super::Write`]). Postgres: one array per column, expanded by
    /// `unnest` (the statement is the same for any row count). SQLite:
    /// a multi-row `values` list of `rows` tuples, row-major (at most
    /// [`Table::rows_per_statement`] of them).
    pub fn write_sql(&self, dialect: Dialect, shadow: bool, rows: usize) -> String {
        self.write_sql_as(dialect, self.write, shadow, rows)
    }

    /// [`Table::write_sql`] in another mode: [`WriteMode::Insert`] for rows
    /// known not to be stored yet.
    pub fn write_sql_as(
        &self,
        dialect: Dialect,
        mode: WriteMode,
        shadow: bool,
        rows: usize,
    ) -> String {
        let t = self.table_name(shadow);
        let cols = self.column_list();
        let source = match dialect {
            Dialect::Postgres => {
                let arrays = self
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(i, c)| format!("${}::{}[]", i + 1, sql_type(dialect, c.ty)))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!("select * from unnest({arrays})")
            }
            Dialect::Sqlite => {
                let tuple = format!("({})", vec!["?"; self.columns.len()].join(", "));
                format!("values {}", vec![tuple.as_str(); rows.max(1)].join(", "))
            }
        };
        let conflict = match mode {
            WriteMode::Insert => String::new(),
            WriteMode::Upsert => {
                let sets = self
                    .columns
                    .iter()
                    .filter(|c| !self.key.contains(&c.name))
                    .map(|c| format!("{0} = excluded.{0}", c.name))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!(
                    " on conflict ({}) do update set {sets}",
                    self.key.join(", ")
                )
            }
            WriteMode::Add(adds) => {
                let sets = adds
                    .iter()
                    .map(|c| format!("{c} = {t}.{c} + excluded.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!(
                    " on conflict ({}) do update set {sets}",
                    self.key.join(", ")
                )
            }
        };
        // SQLite keeps a statement journal for a multi-row statement that
        // may abort halfway (to undo just that statement): a copy of every
        // page it touches. `or fail` stops at a violation without undoing
        // the statement's earlier rows, so no journal; the adapters roll
        // the whole transaction back on any error, so nothing half-written
        // survives either way. (An upsert's update path always may abort.)
        let verb = match (dialect, mode) {
            (Dialect::Sqlite, WriteMode::Insert) => "insert or fail",
            _ => "insert",
        };
        format!("{verb} into {t} ({cols}) {source}{conflict}")
    }

    /// Rows one statement writes: everything on Postgres (one array per
    /// column), up to the bind limit and [`SQLITE_ROWS_PER_STATEMENT_MAX`]
    /// on SQLite.
    pub fn rows_per_statement(&self, dialect: Dialect) -> usize {
        match dialect {
            Dialect::Postgres => usize::MAX,
            Dialect::Sqlite => (SQLITE_BINDS_MAX / self.columns.len().max(1))
                .clamp(1, SQLITE_ROWS_PER_STATEMENT_MAX),
        }
    }

    /// Rows whose `load_by` column is in `$1` (a JSON array of strings), each
    /// as one JSON object text.
    pub fn load_sql(&self, dialect: Dialect, shadow: bool) -> Option<String> {
        let by = self.load_by?;
        let t = self.table_name(shadow);
        Some(match dialect {
            Dialect::Postgres => format!(
                "select row_to_json(t)::text from {t} t \
                 where t.{by} in (select json_array_elements_text($1::json))"
            ),
            Dialect::Sqlite => {
                let pairs = self
                    .columns
                    .iter()
                    .map(|c| format!("'{0}', t.{0}", c.name))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!(
                    "select json_object({pairs}) from {t} t \
                     where t.{by} in (select value from json_each($1))"
                )
            }
        })
    }

    /// Keys the shadow holds more than once, at most `$1` of them, each as
    /// `col=value` pairs (SQLite: for shadows loaded without their key).
    /// An index on a key-less shadow's key columns ([`Self::key_built_at_swap`]),
    /// built before the shadow is diffed against live: the diff joins on the
    /// key, and without it SQLite joins by scanning the whole shadow once
    /// per live row (a 1M-event `verify --projections` ran for over ten
    /// minutes on `posting` alone; the same join takes 2 s with it). Not
    /// unique: a duplicate key is reported by [`Self::duplicate_keys_sql`],
    /// not refused.
    pub fn shadow_key_index_sql(&self) -> String {
        let t = self.table_name(true);
        format!(
            "create index if not exists {t}_diff_key on {t} ({})",
            self.key.join(", ")
        )
    }

    pub fn duplicate_keys_sql(&self) -> String {
        let shadow = self.table_name(true);
        let pairs = self
            .key
            .iter()
            .map(|k| format!("'{k}=' || {k}"))
            .collect::<Vec<_>>()
            .join(" || ',' || ");
        let keys = self.key.join(", ");
        format!(
            "select {pairs} from {shadow} group by {keys} having count(*) > 1 \
             order by {keys} limit cast($1 as integer)"
        )
    }

    /// Rows that differ between live and shadow, at most `$1` of them
    /// (as text), each as a JSON array: key columns (from whichever side has
    /// the row), a live-present flag, a shadow-present flag, then every
    /// column's live and shadow text.
    pub fn diff_sql(&self, dialect: Dialect) -> String {
        let live = self.table_name(false);
        let shadow = self.table_name(true);
        let distinct = match dialect {
            Dialect::Postgres => "is distinct from",
            Dialect::Sqlite => "is not",
        };
        let on = self
            .key
            .iter()
            .map(|k| format!("l.{k} = s.{k}"))
            .collect::<Vec<_>>()
            .join(" and ");
        let k0 = self.key.first().copied().unwrap_or("1");
        let mut items: Vec<String> = self
            .key
            .iter()
            .map(|k| format!("cast(coalesce(l.{k}, s.{k}) as text)"))
            .collect();
        items.push(format!("case when l.{k0} is null then 0 else 1 end"));
        items.push(format!("case when s.{k0} is null then 0 else 1 end"));
        for c in self.columns {
            items.push(format!("cast(l.{0} as text)", c.name));
            items.push(format!("cast(s.{0} as text)", c.name));
        }
        let mut conds = vec![format!("l.{k0} is null"), format!("s.{k0} is null")];
        conds.extend(
            self.columns
                .iter()
                .map(|c| format!("l.{0} {distinct} s.{0}", c.name)),
        );
        let array = match dialect {
            Dialect::Postgres => format!("json_build_array({})::text", items.join(", ")),
            Dialect::Sqlite => format!("json_array({})", items.join(", ")),
        };
        let order = self
            .key
            .iter()
            .map(|k| format!("coalesce(l.{k}, s.{k})"))
            .collect::<Vec<_>>()
            .join(", ");
        let limit = match dialect {
            Dialect::Postgres => "$1::text::bigint",
            Dialect::Sqlite => "cast($1 as integer)",
        };
        format!(
            "select {array} from {live} l full outer join {shadow} s on {on} \
             where {} order by {order} limit {limit}",
            conds.join(" or ")
        )
    }
}

/// The checkpoint table every projection and process manager shares.
pub fn checkpoint_table_sql(dialect: Dialect) -> String {
    format!(
        "create table projection_checkpoint (\n    name text not null,\n    commit_id {int} not null,\n    position {int} not null,\n    updated_at {ts} not null,\n    constraint projection_checkpoint_pk primary key (name)\n)",
        int = sql_type(dialect, Int),
        ts = sql_type(dialect, Ts)
    )
}

/// The transfer statuses `stuck_item` lists as the landed read-model
/// migration (`20261127000010_read_models.sql`) created it.
pub const STUCK_TRANSFER_STATUSES_20261127: &[&str] = &["failed", "reversal_pending", "pending"];

/// The transfer statuses `stuck_item` lists now (migration
/// `20261208000070_stuck_item_transfer_statuses.sql`): every status that
/// waits for something. `pending`, `failed` and `reversal_pending` wait for a
/// worker; `indeterminate` and `reversal_indeterminate` for a read of
/// Stripe; `permanently_failed` and `reversal_failed` for an operator (no
/// worker moves them again, so they are the ones most worth seeing here).
pub const STUCK_TRANSFER_STATUSES: &[&str] = &[
    "failed",
    "reversal_pending",
    "pending",
    "indeterminate",
    "reversal_indeterminate",
    "permanently_failed",
    "reversal_failed",
];

/// `create view stuck_item …`, its transfer branch listing
/// `transfer_statuses`.
pub fn stuck_item_view_sql(dialect: Dialect, transfer_statuses: &[&str]) -> String {
    let age_of = |since: &str| match dialect {
        Dialect::Postgres => format!("now() - {since}"),
        Dialect::Sqlite => {
            format!("cast(round((julianday('now') - julianday({since})) * 86400) as integer)")
        }
    };
    let statuses = transfer_statuses
        .iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "create view stuck_item as\n\
         select 'order' as kind, o.order_id as id, o.status, o.status_since, {} as age\n\
         from order_view o where o.status in ('created', 'pending', 'refund_pending')\n\
         union all\n\
         select 'refund', r.refund_id, r.status, r.status_since, {}\n\
         from refund_view r where r.status in ('requested', 'submitted')\n\
         union all\n\
         select 'transfer', t.transfer_id, t.status, t.status_since, {}\n\
         from seller_transfer_view t where t.status in ({statuses})",
        age_of("o.status_since"),
        age_of("r.status_since"),
        age_of("t.status_since")
    )
}

/// Migration `20261208000070_stuck_item_transfer_statuses.sql`: the view
/// recreated with [`STUCK_TRANSFER_STATUSES`].
pub fn stuck_item_migration_sql(dialect: Dialect) -> String {
    format!(
        "drop view if exists stuck_item;\n\n{};\n",
        stuck_item_view_sql(dialect, STUCK_TRANSFER_STATUSES)
    )
}

/// Every analyst view, in creation order, `stuck_item` listing
/// `stuck_transfer_statuses` ([`STUCK_TRANSFER_STATUSES`] for the live
/// schema). They read the live tables only; a swap drops and recreates them
/// in its transaction.
pub fn views_sql(dialect: Dialect, stuck_transfer_statuses: &[&str]) -> Vec<String> {
    let day = match dialect {
        Dialect::Postgres => "(p.recorded_at at time zone 'UTC')::date",
        Dialect::Sqlite => "substr(p.recorded_at, 1, 10)",
    };
    vec![
        // What the marketplace owes each seller, per currency: credits minus
        // debits on `seller_payable:{seller}`.
        "create view seller_balance as\n\
         select substr(b.account, length('seller_payable:') + 1) as seller_id, b.currency,\n\
         b.credit_minor - b.debit_minor as payable_minor, b.credit_minor, b.debit_minor\n\
         from account_balance b where b.account like 'seller_payable:%'"
            .to_owned(),
        format!(
            "create view daily_money as\n\
             select {day} as day, p.currency,\n\
             sum(case when p.event_type = 'PaymentSucceeded' and p.account = 'psp_clearing' then p.amount_minor else 0 end) as captured_minor,\n\
             sum(case when p.event_type = 'RefundSucceeded' and p.account = 'psp_clearing' then p.amount_minor else 0 end) as refunded_minor,\n\
             sum(case when p.account = 'platform_fees' and p.side = 'credit' then p.amount_minor when p.account = 'platform_fees' then -p.amount_minor else 0 end) as fees_minor\n\
             from posting p group by {day}, p.currency"
        ),
        "create view seller_refund_rate as\n\
         select l.seller_id, l.currency, count(*) as lines_sold,\n\
         sum(case when l.refund_state = 'refunded' then 1 else 0 end) as lines_refunded,\n\
         sum(l.total_minor) as sold_minor,\n\
         sum(case when l.refund_state = 'refunded' then l.total_minor else 0 end) as refunded_minor\n\
         from order_line_view l join order_view o on o.order_id = l.order_id\n\
         where o.captured_minor > 0 group by l.seller_id, l.currency"
            .to_owned(),
        stuck_item_view_sql(dialect, stuck_transfer_statuses),
    ]
}

/// The views' names, for dropping them before a swap.
pub const VIEW_NAMES: [&str; 4] = [
    "seller_balance",
    "daily_money",
    "seller_refund_rate",
    "stuck_item",
];

/// The full DDL of the read models, as the landed migration
/// `20261127000010_read_models.sql` holds it when `stuck_transfer_statuses`
/// is [`STUCK_TRANSFER_STATUSES_20261127`].
pub fn migration_sql(dialect: Dialect, stuck_transfer_statuses: &[&str]) -> String {
    let mut out = vec![checkpoint_table_sql(dialect)];
    for m in ReadModel::ALL {
        for t in m.tables() {
            out.push(t.create_sql(dialect, false));
            out.extend(t.index_sql(false));
        }
    }
    out.extend(views_sql(dialect, stuck_transfer_statuses));
    out.join(";\n\n") + ";\n"
}

/// `maintenance_work_mem` of the transaction that builds a rebuild's shadow
/// indexes on Postgres (the server default is often 64MB).
pub const SHADOW_INDEX_SORT_MEMORY: &str = "256MB";

/// Statements that drop (if present) and create the shadow tables of
/// `models`, empty, with the shadow checkpoints removed. Only the primary
/// keys (which the upserts need; see [`Table::key_built_at_swap`] for the
/// ones left out) exist while the rebuild loads them; the secondary indexes
/// come after the load ([`shadow_index_sql`], or on SQLite the swap), built
/// once in bulk rather than maintained row by row.
pub fn prepare_shadow_sql(dialect: Dialect, models: &[ReadModel]) -> Vec<String> {
    let mut out = Vec::new();
    for m in models {
        for t in m.tables() {
            out.push(format!("drop table if exists {}", t.table_name(true)));
            out.push(t.create_sql(dialect, true));
        }
        out.push(format!(
            "delete from projection_checkpoint where name = '{}'",
            m.checkpoint_name(true)
        ));
    }
    out
}

/// The secondary indexes of loaded shadow tables, created before the swap.
/// Postgres renames them in the swap. SQLite cannot rename an index, so its
/// swap builds them under their live names and nothing is built here (they
/// would be built twice).
///
/// On Postgres the statements run in one transaction whose index builds may
/// sort in [`SHADOW_INDEX_SORT_MEMORY`] (`set local`: this transaction only)
/// rather than spill the sorts of a large rebuild to disk.
pub fn shadow_index_sql(dialect: Dialect, models: &[ReadModel]) -> Vec<String> {
    match dialect {
        Dialect::Postgres => {
            let indexes: Vec<String> = models
                .iter()
                .flat_map(|m| m.tables())
                .flat_map(|t| t.index_sql(true))
                .collect();
            if indexes.is_empty() {
                return indexes;
            }
            std::iter::once(format!(
                "set local maintenance_work_mem = '{SHADOW_INDEX_SORT_MEMORY}'"
            ))
            .chain(indexes)
            .collect()
        }
        Dialect::Sqlite => Vec::new(),
    }
}

/// Statements of one atomic swap: views dropped, live tables dropped,
/// shadows renamed (with their constraints and indexes), views recreated,
/// and the shadow checkpoints become the live ones.
pub fn swap_sql(dialect: Dialect, models: &[ReadModel]) -> Vec<String> {
    let mut out = Vec::new();
    if dialect == Dialect::Postgres {
        // First, and in name order, as a projector's batch locks them
        // before it touches a table: a batch and a swap then always queue
        // in the same order and never deadlock. (SQLite's writer is single.)
        let names: Vec<String> = models
            .iter()
            .flat_map(|m| [m.checkpoint_name(false), m.checkpoint_name(true)])
            .map(|n| format!("'{n}'"))
            .collect();
        out.push(format!(
            "select name from projection_checkpoint where name in ({}) order by name for update",
            names.join(", ")
        ));
    }
    out.extend(
        VIEW_NAMES
            .iter()
            .map(|v| format!("drop view if exists {v}")),
    );
    for m in models {
        for t in m.tables() {
            let live = t.table_name(false);
            let shadow = t.table_name(true);
            out.push(format!("drop table if exists {live}"));
            out.push(format!("alter table {shadow} rename to {live}"));
            match dialect {
                Dialect::Postgres => {
                    out.push(format!(
                        "alter table {live} rename constraint {shadow}_pk to {live}_pk"
                    ));
                    for (name, _) in t.indexes {
                        out.push(format!(
                            "alter index {shadow}_{name} rename to {live}_{name}"
                        ));
                    }
                }
                Dialect::Sqlite => {
                    // SQLite cannot rename an index: build it under its
                    // live name (a shadow loaded by this version has none;
                    // one from an older version may). Constraint names
                    // inside a SQLite table are labels only.
                    for (name, _) in t.indexes {
                        out.push(format!("drop index if exists {shadow}_{name}"));
                    }
                    if t.key_built_at_swap(dialect, true) {
                        out.push(format!(
                            "create unique index {live}_pk on {live} ({})",
                            t.key.join(", ")
                        ));
                    }
                    out.extend(t.index_sql(false));
                }
            }
        }
        out.push(format!(
            "delete from projection_checkpoint where name = '{}'",
            m.checkpoint_name(false)
        ));
        out.push(format!(
            "update projection_checkpoint set name = '{}' where name = '{}'",
            m.checkpoint_name(false),
            m.checkpoint_name(true)
        ));
    }
    out.extend(views_sql(dialect, STUCK_TRANSFER_STATUSES));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PG: &str = include_str!("../../../migrations/postgres/20261127000010_read_models.sql");
    const LITE: &str = include_str!("../../../migrations/sqlite/20261127000010_read_models.sql");
    const PG_STUCK: &str = include_str!(
        "../../../migrations/postgres/20261208000070_stuck_item_transfer_statuses.sql"
    );
    const LITE_STUCK: &str =
        include_str!("../../../migrations/sqlite/20261208000070_stuck_item_transfer_statuses.sql");

    /// The Postgres swap locks every checkpoint it moves before it touches
    /// a table, in name order, as a projector's batch does.
    #[test]
    fn the_postgres_swap_locks_its_checkpoints_first_in_name_order() {
        let pg = swap_sql(Dialect::Postgres, &[ReadModel::Orders, ReadModel::Journal]);
        assert_eq!(
            pg[0],
            "select name from projection_checkpoint where name in \
             ('orders', 'orders__shadow', 'journal', 'journal__shadow') order by name for update"
        );
        assert!(pg[1..].iter().all(|s| !s.contains("for update")));
        let lite = swap_sql(Dialect::Sqlite, &[ReadModel::Orders]);
        assert!(lite[0].starts_with("drop view"), "{}", lite[0]);
    }

    /// The migrations create exactly the tables a rebuild's shadows copy:
    /// the landed read-model migration is the schema with the views as they
    /// were then, and each later view migration recreates a view as
    /// `views_sql` defines it now. (Never edit a landed migration: sqlx
    /// refuses a changed checksum. Add a new one and a case here.)
    #[test]
    fn migrations_match_the_schema_descriptions() {
        let header = "-- Read models (generated from projections/src/readmodel/schema.rs).\n";
        let stuck_header = "-- stuck_item lists every waiting transfer status (generated from projections/src/readmodel/schema.rs).\n";
        if std::env::var_os("LEDGER_WRITE_READ_MODEL_MIGRATIONS").is_some() {
            let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations");
            for (dir, dialect) in [("postgres", Dialect::Postgres), ("sqlite", Dialect::Sqlite)] {
                std::fs::write(
                    format!("{root}/{dir}/20261208000070_stuck_item_transfer_statuses.sql"),
                    format!("{stuck_header}{}", stuck_item_migration_sql(dialect)),
                )
                .unwrap();
            }
            return;
        }
        assert_eq!(
            PG,
            format!(
                "{header}{}",
                migration_sql(Dialect::Postgres, STUCK_TRANSFER_STATUSES_20261127)
            )
        );
        assert_eq!(
            LITE,
            format!(
                "{header}{}",
                migration_sql(Dialect::Sqlite, STUCK_TRANSFER_STATUSES_20261127)
            )
        );
        assert_eq!(
            PG_STUCK,
            format!(
                "{stuck_header}{}",
                stuck_item_migration_sql(Dialect::Postgres)
            )
        );
        assert_eq!(
            LITE_STUCK,
            format!(
                "{stuck_header}{}",
                stuck_item_migration_sql(Dialect::Sqlite)
            )
        );
    }

    /// What the live schema (and so a rebuild's swap) creates is the newest
    /// `stuck_item`, with every waiting transfer status.
    #[test]
    fn the_swap_recreates_the_current_stuck_item() {
        for dialect in [Dialect::Postgres, Dialect::Sqlite] {
            let current = stuck_item_view_sql(dialect, STUCK_TRANSFER_STATUSES);
            assert!(swap_sql(dialect, &ReadModel::ALL).contains(&current));
            assert!(views_sql(dialect, STUCK_TRANSFER_STATUSES).contains(&current));
            for status in [
                "indeterminate",
                "reversal_indeterminate",
                "permanently_failed",
                "reversal_failed",
            ] {
                assert!(current.contains(&format!("'{status}'")), "{current}");
            }
        }
        let known = ledger_core::transfer::TransferStatus::ALL.map(|s| s.as_str());
        for status in STUCK_TRANSFER_STATUSES
            .iter()
            .chain(STUCK_TRANSFER_STATUSES_20261127)
        {
            assert!(known.contains(status), "{status} is no transfer status");
        }
    }

    #[test]
    fn write_statements_bind_every_column_of_every_row() {
        for m in ReadModel::ALL {
            for t in m.tables() {
                let n = t.columns.len();
                let pg = t.write_sql(Dialect::Postgres, true, 7);
                assert!(pg.contains(&format!("${n}::")), "{pg}");
                assert!(!pg.contains(&format!("${}", n + 1)), "{pg}");
                assert!(pg.starts_with(&format!("insert into {}__shadow (", t.name)));
                let per = t.rows_per_statement(Dialect::Sqlite);
                assert!(per >= 1 && per * n <= SQLITE_BINDS_MAX, "{}", t.name);
                for rows in [1, 3, per] {
                    let lite = t.write_sql(Dialect::Sqlite, false, rows);
                    assert_eq!(lite.matches('?').count(), rows * n, "{lite}");
                    let verb = if t.write == WriteMode::Insert {
                        "insert or fail"
                    } else {
                        "insert"
                    };
                    assert!(lite.starts_with(&format!("{verb} into {} (", t.name)));
                }
            }
        }
    }

    /// Shadows load with only their primary keys; every secondary index the
    /// live tables have exists again after the rebuild (Postgres) or the
    /// swap (SQLite).
    #[test]
    fn shadow_indexes_come_after_the_load() {
        for dialect in [Dialect::Postgres, Dialect::Sqlite] {
            let prepare = prepare_shadow_sql(dialect, &ReadModel::ALL);
            assert!(
                prepare.iter().all(|s| !s.starts_with("create index")),
                "{prepare:?}"
            );
            let mut after = shadow_index_sql(dialect, &ReadModel::ALL);
            after.extend(swap_sql(dialect, &ReadModel::ALL));
            for m in ReadModel::ALL {
                for t in m.tables() {
                    for (name, cols) in t.indexes {
                        let built = match dialect {
                            Dialect::Postgres => format!(
                                "create index {0}__shadow_{name} on {0}__shadow ({cols})",
                                t.name
                            ),
                            Dialect::Sqlite => {
                                format!("create index {0}_{name} on {0} ({cols})", t.name)
                            }
                        };
                        assert!(after.contains(&built), "{dialect:?}: {built}");
                    }
                }
            }
        }
    }
}
