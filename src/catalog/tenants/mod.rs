//! Queries on `tenantd.tenants`: the record, creation, reads and requests (retry, delete).
//! Claims are in `claims`, the lease-guarded writes in `leased`, limits and sizes in `limits`.
//!
//! Every write a lease holder makes is guarded by the one lease predicate, `held!()`: zero
//! rows means another process now holds the tenant, and the worker stops
//! ([`CatalogError::LeaseLost`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Row;
use uuid::Uuid;

use super::events::EventKind;
use super::{Catalog, CatalogError};

pub(crate) mod claims;
mod leased;
mod limits;
mod passwords;

pub use claims::Claim;
pub(crate) use leased::{PLACEMENT_LOCK, Placing};

/// Life-cycle state of a tenant (stored as text with a CHECK constraint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TenantStatus {
    /// Waiting to be placed on a server.
    Pending,
    /// Role and database being created.
    Creating,
    /// Tenant migrations being applied.
    Migrating,
    /// Usable.
    Ready,
    /// Gave up after max attempts, or hit something it must not touch; reason in `last_error`.
    Error,
    /// Data kept, connections refused.
    Suspended,
    /// Being dropped.
    Deleting,
    /// Gone; the row stays as a record.
    Deleted,
    /// Being copied to another server (`tenant move`, drains): not lent, resumed after a crash.
    Moving,
}

impl TenantStatus {
    /// Every status, in life-cycle order.
    pub const ALL: [TenantStatus; 9] = [
        Self::Pending,
        Self::Creating,
        Self::Migrating,
        Self::Ready,
        Self::Error,
        Self::Suspended,
        Self::Deleting,
        Self::Deleted,
        Self::Moving,
    ];

    /// The catalog spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Creating => "CREATING",
            Self::Migrating => "MIGRATING",
            Self::Ready => "READY",
            Self::Error => "ERROR",
            Self::Suspended => "SUSPENDED",
            Self::Deleting => "DELETING",
            Self::Deleted => "DELETED",
            Self::Moving => "MOVING",
        }
    }

    /// Parses the catalog spelling (case-insensitive for CLI and query strings).
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str().eq_ignore_ascii_case(text))
    }

    /// True for the states a provisioning worker drives forward.
    pub fn is_in_progress(self) -> bool {
        matches!(self, Self::Pending | Self::Creating | Self::Migrating)
    }

    /// True for the states a provisioning worker claims (the claim's `status IN (...)`).
    pub fn is_workable(self) -> bool {
        self.is_in_progress() || self == Self::Deleting
    }

    /// True when nothing more will happen without an operator.
    pub fn is_settled(self) -> bool {
        matches!(self, Self::Ready | Self::Error | Self::Suspended | Self::Deleted)
    }
}

impl std::fmt::Display for TenantStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tenant row. The sealed role password and the token hash are never serialised.
#[derive(Clone, Serialize, utoipa::ToSchema)]
pub struct TenantRecord {
    /// Stable id.
    pub id: Uuid,
    /// Public name.
    pub slug: String,
    /// State.
    pub status: TenantStatus,
    /// Server it lives on, once placed.
    pub server: Option<String>,
    /// Database name (final name; a staging name is used until READY).
    pub database_name: Option<String>,
    /// Login role owning the tenant's objects.
    pub role_name: Option<String>,
    /// Version of the last tenant migration applied.
    pub schema_version: i32,
    /// Failed attempts since the last success or retry.
    pub attempts: i32,
    /// Earliest time of the next attempt.
    pub next_attempt_at: DateTime<Utc>,
    /// Why the last attempt failed, or why the tenant waits.
    pub last_error: Option<String>,
    /// Placement asked for.
    pub requested_server: Option<String>,
    /// Region asked for.
    pub requested_region: Option<String>,
    /// Free-form labels.
    pub labels: serde_json::Value,
    /// Process working on it now, if any.
    pub lease_owner: Option<String>,
    /// End of that process's claim.
    pub lease_until: Option<DateTime<Utc>>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// When it became READY.
    pub ready_at: Option<DateTime<Utc>>,
    /// The dump it is being (or was) restored from.
    pub restore_source: Option<String>,
    /// The directory of the final archive a deletion asked for.
    pub delete_archive_dir: Option<String>,
    /// When it was deleted.
    pub deleted_at: Option<DateTime<Utc>>,
    /// Overrides of the `[limits]` settings for this tenant (`{"connections": 50}`).
    pub limits: serde_json::Value,
    /// The limits last applied to its role (null: not yet).
    pub limits_applied: Option<serde_json::Value>,
    /// Size of its database when last measured, bytes.
    pub database_bytes: Option<i64>,
    /// Read-only for being over its storage quota.
    pub over_quota: bool,
    #[serde(skip)]
    pub(crate) role_password_sealed: Option<String>,
    #[serde(skip)]
    pub(crate) token_hash: Option<String>,
    /// PBKDF2 iterations of its role's SCRAM verifier (`None`: made before schema V13, 4096).
    #[serde(skip)]
    pub(crate) scram_iterations: Option<i32>,
}

impl std::fmt::Debug for TenantRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantRecord")
            .field("id", &self.id)
            .field("slug", &self.slug)
            .field("status", &self.status)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

pub(crate) const COLUMNS: &str = "id, slug, status, server, database_name, role_name, schema_version, \
    attempts, next_attempt_at, last_error, requested_server, requested_region, labels, \
    lease_owner, lease_until, created_at, updated_at, ready_at, role_password_sealed, token_hash, \
    restore_source, delete_archive_dir, deleted_at, limits, limits_applied, database_bytes, over_quota, \
    scram_iterations";

pub(crate) fn from_row(row: &Row) -> TenantRecord {
    let status: String = row.get(2);
    TenantRecord {
        id: row.get(0),
        slug: row.get(1),
        // The CHECK constraint allows only known spellings.
        status: TenantStatus::parse(&status).unwrap_or(TenantStatus::Error),
        server: row.get(3),
        database_name: row.get(4),
        role_name: row.get(5),
        schema_version: row.get(6),
        attempts: row.get(7),
        next_attempt_at: row.get(8),
        last_error: row.get(9),
        requested_server: row.get(10),
        requested_region: row.get(11),
        labels: row.get(12),
        lease_owner: row.get(13),
        lease_until: row.get(14),
        created_at: row.get(15),
        updated_at: row.get(16),
        ready_at: row.get(17),
        role_password_sealed: row.get(18),
        token_hash: row.get(19),
        restore_source: row.get(20),
        delete_archive_dir: row.get(21),
        deleted_at: row.get(22),
        limits: row.get(23),
        limits_applied: row.get(24),
        database_bytes: row.get(25),
        over_quota: row.get(26),
        scram_iterations: row.get(27),
    }
}

/// A tenant to create.
#[derive(Debug, Clone)]
pub struct NewTenant {
    /// Validated slug.
    pub slug: String,
    /// Derived database name.
    pub database_name: String,
    /// Derived role name.
    pub role_name: String,
    /// Placement narrowing.
    pub requested_server: Option<String>,
    /// Placement narrowing.
    pub requested_region: Option<String>,
    /// Labels (a JSON object).
    pub labels: serde_json::Value,
    /// Hash of the tenant's bearer token.
    pub token_hash: String,
    /// The dump a restore fills it from (set at insert so no daemon ever provisions it empty).
    pub restore_source: Option<String>,
}

/// Filters of a tenant listing.
#[derive(Debug, Clone, Default)]
pub struct TenantFilter {
    /// Only this status.
    pub status: Option<TenantStatus>,
    /// Only this server.
    pub server: Option<String>,
    /// Slugs after this one (keyset pagination).
    pub after: Option<String>,
    /// Only slugs containing this text.
    pub q: Option<String>,
    /// At most this many.
    pub limit: i64,
}

/// Placement persisted before any DDL.
#[derive(Debug, Clone)]
pub struct Placement {
    /// Server.
    pub server: String,
    /// Database name.
    pub database_name: String,
    /// Role name.
    pub role_name: String,
    /// Sealed role password.
    pub role_password_sealed: String,
}

/// Nobody holds the tenant now.
const FREE: &str = free!();

/// A tenant by slug: the live one, else the newest deleted one.
pub(crate) fn by_slug_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "SELECT {COLUMNS} FROM tenantd.tenants WHERE slug = $1 \
             ORDER BY (status = 'DELETED'), created_at DESC LIMIT 1"
        )
    })
}

/// The live tenant a bearer token (its hash, `$1`) belongs to: every lent request asks.
pub(crate) const BY_TOKEN_HASH: &str =
    "SELECT slug FROM tenantd.tenants WHERE token_hash = $1 AND status <> 'DELETED'";

/// Tenants per status, from the tallies (schema V12), for the `tenantd_tenants` gauge.
pub(crate) const COUNTS_BY_STATUS: &str =
    "SELECT status, sum(tenants)::int8 FROM tenantd.tenant_tallies GROUP BY status ORDER BY status";

/// Waiting, unplaced tenants made due now (a server was added or became eligible).
pub(crate) const WAKE_UNPLACED: &str = "UPDATE tenantd.tenants SET next_attempt_at = now() \
     WHERE status = 'PENDING' AND server IS NULL AND next_attempt_at > now()";

/// Which filters a page of [`Catalog::tenants`] has.
#[derive(Debug, Clone, Copy, Default)]
pub struct PageShape {
    /// `status = ...` (otherwise every live tenant).
    pub status: bool,
    /// `server = ...`.
    pub server: bool,
    /// Slugs after a cursor.
    pub after: bool,
    /// Slugs containing a text.
    pub q: bool,
}

/// The statement of one page of tenants: `$1` the limit, then one parameter per filter
/// present, in the order status, server, after, q.
///
/// Served by: no filter, `tenants_slug_key` (live slugs, in order, from `after`); status,
/// `tenants_status_slug_idx`; server, `tenants_server_slug_idx`. `q` is a filter on top,
/// read in slug order until the page is full (tests/it/catalog_scale.rs reads the plans).
pub fn tenant_page_sql(shape: PageShape) -> String {
    let mut n = 1;
    let mut next = || {
        n += 1;
        n
    };
    let mut conditions = Vec::new();
    conditions.push(if shape.status {
        format!("status = ${}", next())
    } else {
        "status <> 'DELETED'".into()
    });
    if shape.server {
        conditions.push(format!("server = ${}", next()));
    }
    if shape.after {
        conditions.push(format!("slug > ${}", next()));
    }
    if shape.q {
        conditions.push(format!("pg_catalog.strpos(slug, ${}) > 0", next()));
    }
    format!("SELECT {COLUMNS} FROM tenantd.tenants WHERE {} ORDER BY slug LIMIT $1", conditions.join(" AND "))
}

pub(super) fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Catalog {
    /// Inserts a tenant; when the slug exists already, returns the existing row and `false`.
    /// A derived database name already used by another slug is a conflict.
    pub async fn insert_tenant(&self, t: &NewTenant) -> Result<(TenantRecord, bool), CatalogError> {
        let client = self.client().await?;
        let inserted = client
            .query_opt(
                &format!(
                    "INSERT INTO tenantd.tenants (slug, database_name, role_name, requested_server, \
                     requested_region, labels, token_hash, restore_source) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                     ON CONFLICT (slug) WHERE status <> 'DELETED' DO NOTHING RETURNING {COLUMNS}"
                ),
                &[
                    &t.slug,
                    &t.database_name,
                    &t.role_name,
                    &t.requested_server,
                    &t.requested_region,
                    &t.labels,
                    &t.token_hash,
                    &t.restore_source,
                ],
            )
            .await;
        match inserted {
            Ok(Some(row)) => Ok((from_row(&row), true)),
            Ok(None) => Ok((self.tenant(&t.slug).await?, false)),
            Err(e) if CatalogError::is_unique_violation(&e) => Err(CatalogError::Conflict(format!(
                "database or role name {:?} (derived from slug {:?}) is already used by another tenant",
                t.database_name, t.slug
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// One tenant by slug.
    pub async fn tenant(&self, slug: &str) -> Result<TenantRecord, CatalogError> {
        let row = self.query_opt(by_slug_sql(), &[&slug]).await?;
        row.as_ref().map(from_row).ok_or_else(|| CatalogError::NotFound(format!("no tenant {slug:?}")))
    }

    /// One tenant by id.
    pub async fn tenant_by_id(&self, id: Uuid) -> Result<TenantRecord, CatalogError> {
        let row =
            self.query_opt(&format!("SELECT {COLUMNS} FROM tenantd.tenants WHERE id = $1"), &[&id]).await?;
        row.as_ref().map(from_row).ok_or_else(|| CatalogError::NotFound(format!("no tenant with id {id}")))
    }

    /// The slug of the tenant whose bearer token has this hash.
    pub async fn tenant_slug_by_token_hash(&self, hash: &str) -> Result<Option<String>, CatalogError> {
        let row = self.query_opt(BY_TOKEN_HASH, &[&hash]).await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Replaces a tenant's token hash (rotation); false when there is no such tenant.
    pub async fn set_token_hash(&self, slug: &str, hash: &str) -> Result<bool, CatalogError> {
        Ok(self
            .execute(
                "UPDATE tenantd.tenants SET token_hash = $2 WHERE slug = $1 AND status <> 'DELETED'",
                &[&slug, &hash],
            )
            .await?
            == 1)
    }

    /// Tenants by slug, filtered, one page.
    ///
    /// The statement names only the filters given, so each of its few shapes gets a plan
    /// that starts the index range at `after` (a catch-all `$1 IS NULL OR ...` would make a
    /// prepared statement's generic plan walk every earlier slug: page 1,000 would cost a
    /// thousand pages). Which index serves which shape: [`tenant_page_sql`].
    pub async fn tenants(&self, f: &TenantFilter) -> Result<Vec<TenantRecord>, CatalogError> {
        let status = f.status.map(|s| s.as_str().to_owned());
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&f.limit];
        let sql = tenant_page_sql(PageShape {
            status: status.is_some(),
            server: f.server.is_some(),
            after: f.after.is_some(),
            q: f.q.is_some(),
        });
        for value in [&status, &f.server, &f.after, &f.q].into_iter().flatten() {
            params.push(value);
        }
        let rows = self.query(&sql, &params).await?;
        Ok(rows.iter().map(from_row).collect())
    }

    /// Every tenant with this status (live ones when `None`) on this server (any when
    /// `None`), a page of 1000 at a time.
    pub async fn all_tenants(
        &self,
        status: Option<TenantStatus>,
        server: Option<&str>,
    ) -> Result<Vec<TenantRecord>, CatalogError> {
        let mut all = Vec::new();
        let mut filter = TenantFilter {
            status,
            server: server.map(str::to_owned),
            limit: 1000,
            ..TenantFilter::default()
        };
        loop {
            let page = self.tenants(&filter).await?;
            let done = page.len() < 1000;
            filter.after = page.last().map(|t| t.slug.clone());
            all.extend(page);
            if done {
                return Ok(all);
            }
        }
    }

    /// Counts of tenants per status (for metrics and `tenant list` summaries).
    pub async fn tenant_counts(&self) -> Result<Vec<(String, i64)>, CatalogError> {
        let rows = self.query(COUNTS_BY_STATUS, &[]).await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Starts a tenant in ERROR (or waiting in PENDING) again from where the world is.
    /// Returns false when the tenant is in a state that cannot be retried.
    pub async fn retry_tenant(&self, slug: &str) -> Result<bool, CatalogError> {
        let n = self
            .execute(
                "UPDATE tenantd.tenants SET \
                   status = CASE WHEN status = 'ERROR' THEN \
                     CASE WHEN server IS NULL THEN 'PENDING' ELSE 'CREATING' END ELSE status END, \
                   attempts = 0, next_attempt_at = now() \
                 WHERE slug = $1 AND status IN ('ERROR', 'PENDING', 'CREATING', 'MIGRATING')",
                &[&slug],
            )
            .await?;
        Ok(n == 1)
    }

    /// Asks for a tenant's deletion: status DELETING, with a final archive into `archive_dir`
    /// when given (written by whichever process carries the deletion out). `None` while a move holds it (MOVING, even between two processes), while
    /// another process holds the tenant, or when it is deleted already.
    ///
    /// `holder`: the caller holds the tenant's lease (it wrote the final archive under it);
    /// the lease is handed back with the request.
    pub async fn request_delete(
        &self,
        slug: &str,
        archive_dir: Option<&str>,
        actor: &str,
        holder: Option<&str>,
    ) -> Result<Option<TenantRecord>, CatalogError> {
        static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let sql = SQL.get_or_init(|| {
            format!(
                "WITH asked AS (UPDATE tenantd.tenants SET status = 'DELETING', delete_archive_dir = $2, \
                   attempts = 0, next_attempt_at = now(), last_error = NULL, lease_owner = NULL, \
                   lease_until = NULL WHERE slug = $1 AND status NOT IN ('DELETED', 'MOVING') \
                   AND ({FREE} OR lease_owner = $4) \
                   RETURNING *), \
                 logged AS (INSERT INTO tenantd.tenant_events (tenant_id, kind, detail, actor) \
                   SELECT id, $5, jsonb_build_object('archive_dir', $2::text), $3 FROM asked) \
                 SELECT {COLUMNS} FROM asked"
            )
        });
        let row = self
            .query_opt(sql, &[&slug, &archive_dir, &actor, &holder, &EventKind::DeleteRequested.as_str()])
            .await?;
        Ok(row.as_ref().map(from_row))
    }

    /// Makes tenants placed on `server` whose provisioning or deletion waits between attempts
    /// due now (the server answers again).
    pub async fn wake_waiting_on(&self, server: &str) -> Result<u64, CatalogError> {
        self.execute(
            "UPDATE tenantd.tenants SET next_attempt_at = now() \
             WHERE server = $1 AND status IN ('PENDING', 'CREATING', 'MIGRATING', 'DELETING') \
               AND next_attempt_at > now()",
            &[&server],
        )
        .await
    }

    /// Makes waiting, unplaced tenants due now (a server was added or became eligible).
    pub async fn wake_unplaced(&self) -> Result<u64, CatalogError> {
        self.execute(WAKE_UNPLACED, &[]).await
    }
}
