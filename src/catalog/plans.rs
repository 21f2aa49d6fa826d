//! The catalog's hot statements — what idle workers and tasks poll, what placement reads,
//! what lending and the API look up on every request — each with the index that serves it.
//!
//! With 100,000 tenants none of them may read every tenant: `tenantd bench catalog` prints
//! the buffers each touches in an empty catalog and a full one, and tests/it/catalog_scale.rs
//! checks that the planner picks the named index for the generic plan of each (the plan a
//! prepared statement ends up with).

use super::operations::ABANDONED_MOVES;
use super::servers::LOADS;
use super::tenants::claims::{claim_in_status_sql, claim_sql, next_due_sql};
use super::tenants::{
    BY_TOKEN_HASH, COUNTS_BY_STATUS, PageShape, WAKE_UNPLACED, by_slug_sql, tenant_page_sql,
};

/// One hot statement.
#[derive(Debug, Clone)]
pub struct HotStatement {
    /// What asks it, and how often.
    pub name: &'static str,
    /// The statement, exactly as the daemon sends it.
    pub sql: String,
    /// Its parameters as an SQL list for `EXECUTE` (empty when it has none).
    pub args: &'static str,
    /// The indexes its plan may use (one of them must appear); empty: it must not read
    /// `tenantd.tenants` at all.
    pub indexes: &'static [&'static str],
}

/// The work queue's partial index.
const WORK: &[&str] = &["tenants_work_idx"];
/// Live slugs (unique, partial) or every slug.
const SLUG: &[&str] = &["tenants_slug_key", "tenants_slug_idx"];

/// Every hot statement (see the module's documentation).
pub fn hot_statements() -> Vec<HotStatement> {
    let hot = |name, sql: &str, args, indexes| HotStatement { name, sql: sql.to_owned(), args, indexes };
    let page = |status, server, after| tenant_page_sql(PageShape { status, server, after, q: false });
    vec![
        hot("worker poll: claim the next workable tenant", claim_sql(), "('bench', 30, NULL)", WORK),
        hot("worker poll: when is the next one due", next_due_sql(), "(NULL)", WORK),
        hot("placement: tenants per server", LOADS, "", &[]),
        hot("health task: tenants per status", COUNTS_BY_STATUS, "", &[]),
        hot("moves task: abandoned moves", ABANDONED_MOVES, "", &["tenants_status_slug_idx"]),
        hot(
            "watcher: wake unplaced tenants",
            WAKE_UNPLACED,
            "",
            &["tenants_work_idx", "tenants_status_slug_idx", "tenants_server_slug_idx"],
        ),
        hot("lending: tenant of a token", BY_TOKEN_HASH, "('0000')", &["tenants_token_hash_idx"]),
        hot("API: tenant by slug", by_slug_sql(), "('acme')", &["tenants_slug_idx"]),
        hot("API: claim a tenant by slug", claim_in_status_sql(), "('acme', 'bench', 30, '{READY}')", SLUG),
        HotStatement {
            name: "API: GET /v1/tenants, a page after a cursor",
            sql: page(false, false, true),
            args: "(101, 'm')",
            indexes: SLUG,
        },
        HotStatement {
            name: "API: GET /v1/tenants?status=",
            sql: page(true, false, true),
            args: "(101, 'ERROR', 'm')",
            indexes: &["tenants_status_slug_idx"],
        },
        HotStatement {
            name: "API: GET /v1/tenants?server=",
            sql: page(false, true, true),
            args: "(101, 'pg-1', 'm')",
            indexes: &["tenants_server_slug_idx"],
        },
    ]
}
