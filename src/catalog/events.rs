//! The append-only audit log `tenantd.tenant_events`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{Catalog, CatalogError};

/// One event of a tenant's history.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Event {
    /// Sequence number (increasing).
    pub id: i64,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// What happened, e.g. `step.database.created`, `attempt.failed`, `ready`.
    pub kind: String,
    /// Details.
    pub detail: serde_json::Value,
    /// Who did it: a daemon instance, `cli:<user>`, `api`.
    pub actor: String,
}

/// One event in the audit trail of every tenant: an [`Event`] with its tenant.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FeedEvent {
    /// Sequence number (increasing across all tenants): the cursor.
    pub id: i64,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// The tenant's slug.
    pub tenant: String,
    /// What happened (see [`EventKind`]).
    pub kind: String,
    /// Details.
    pub detail: serde_json::Value,
    /// Who did it: a daemon instance, `cli:<user>`, `api`.
    pub actor: String,
}

/// Which events of the trail to read.
#[derive(Debug, Clone, Default)]
pub struct FeedFilter {
    /// Events after this id (the cursor); with `newest`, ignored.
    pub after: i64,
    /// At most this many.
    pub limit: i64,
    /// Only this kind.
    pub kind: Option<EventKind>,
    /// Only this tenant.
    pub tenant: Option<Uuid>,
    /// The newest `limit` events instead of those after `after` (still oldest first).
    pub newest: bool,
}

/// What an event says happened: the one list of event kinds (their spelling is the `kind`
/// column, which operators and scripts read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// Server and names persisted (provisioning step 1).
    StepPlaced,
    /// The tenant role was created with its marker.
    RoleCreated,
    /// An existing role with this tenant's marker was adopted.
    RoleAdopted,
    /// The staging database was created.
    DatabaseCreated,
    /// An existing database with this tenant's marker was adopted.
    DatabaseAdopted,
    /// The database was locked down; migrations come next.
    Lockdown,
    /// The tenant migrations were applied.
    Migrated,
    /// A dump was restored instead of the migrations.
    Restored,
    /// The staging database got its final name.
    Renamed,
    /// The tenant is READY.
    Ready,
    /// An attempt failed and will be retried.
    AttemptFailed,
    /// The tenant went to ERROR.
    Error,
    /// No eligible server: the tenant waits.
    Waiting,
    /// The database vanished: creation starts again.
    Recreate,
    /// An operator asked for a retry.
    Retry,
    /// The tenant was suspended.
    Suspended,
    /// The tenant was resumed.
    Resumed,
    /// A dump of the tenant was taken.
    Dumped,
    /// The tenant's bearer token was replaced.
    TokenRotated,
    /// Deletion was asked for.
    DeleteRequested,
    /// The final archive before a drop was written.
    ArchiveCreated,
    /// The final archive could not be written; nothing was dropped.
    ArchiveFailed,
    /// Objects under the tenant's names that are not ours were left alone.
    SkippedForeign,
    /// The tenant was deleted.
    Deleted,
    /// Pending migrations were applied by an upgrade run.
    UpgradeApplied,
    /// An upgrade run found the tenant current.
    UpgradeCurrent,
    /// An upgrade of the tenant failed; it stays at its version.
    UpgradeFailed,
    /// A scheduled or manual backup was written.
    BackupCreated,
    /// A backup failed.
    BackupFailed,
    /// The database grew over its quota: the tenant is read-only.
    QuotaExceeded,
    /// The database is under its quota again: writes are allowed.
    QuotaOk,
    /// The tenant role got a new password.
    PasswordRotated,
    /// The tenant role's password was stored again as tenantd's SCRAM verifier (same
    /// password, the salt derived from the tenant id), so PgBouncer can log in with it.
    PasswordAligned,
    /// A move to another server began (the tenant is MOVING).
    MoveStarted,
    /// A step of a move was done.
    MoveStep,
    /// The catalog names the move's target server now.
    MoveSwitched,
    /// The move finished: READY on the target.
    MoveFinished,
    /// The move failed before the switch: READY on the source, nothing left on the target.
    MoveFailed,
    /// The source database a move left behind was dropped.
    MoveSourceDropped,
    /// Reconcile found the tenant's database or role differing from the catalog.
    ReconcileDrift,
    /// Reconcile repaired the catalog's record of the tenant (its schema version).
    ReconcileRepaired,
    /// A new tenant took a warm spare (placement and spare claimed in one transaction).
    SpareTaken,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 42] = [
        Self::StepPlaced,
        Self::RoleCreated,
        Self::RoleAdopted,
        Self::DatabaseCreated,
        Self::DatabaseAdopted,
        Self::Lockdown,
        Self::Migrated,
        Self::Restored,
        Self::Renamed,
        Self::Ready,
        Self::AttemptFailed,
        Self::Error,
        Self::Waiting,
        Self::Recreate,
        Self::Retry,
        Self::Suspended,
        Self::Resumed,
        Self::Dumped,
        Self::TokenRotated,
        Self::DeleteRequested,
        Self::ArchiveCreated,
        Self::ArchiveFailed,
        Self::SkippedForeign,
        Self::Deleted,
        Self::UpgradeApplied,
        Self::UpgradeCurrent,
        Self::UpgradeFailed,
        Self::BackupCreated,
        Self::BackupFailed,
        Self::QuotaExceeded,
        Self::QuotaOk,
        Self::PasswordRotated,
        Self::PasswordAligned,
        Self::MoveStarted,
        Self::MoveStep,
        Self::MoveSwitched,
        Self::MoveFinished,
        Self::MoveFailed,
        Self::MoveSourceDropped,
        Self::ReconcileDrift,
        Self::ReconcileRepaired,
        Self::SpareTaken,
    ];

    /// Parses the catalog spelling.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }

    /// The catalog spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StepPlaced => "step.placed",
            Self::RoleCreated => "step.role.created",
            Self::RoleAdopted => "step.role.adopted",
            Self::DatabaseCreated => "step.database.created",
            Self::DatabaseAdopted => "step.database.adopted",
            Self::Lockdown => "step.lockdown",
            Self::Migrated => "step.migrated",
            Self::Restored => "step.restored",
            Self::Renamed => "step.renamed",
            Self::Ready => "ready",
            Self::AttemptFailed => "attempt.failed",
            Self::Error => "error",
            Self::Waiting => "waiting",
            Self::Recreate => "recreate",
            Self::Retry => "retry",
            Self::Suspended => "suspended",
            Self::Resumed => "resumed",
            Self::Dumped => "dumped",
            Self::TokenRotated => "token.rotated",
            Self::DeleteRequested => "delete.requested",
            Self::ArchiveCreated => "archive.created",
            Self::ArchiveFailed => "archive.failed",
            Self::SkippedForeign => "delete.skipped_foreign",
            Self::Deleted => "deleted",
            Self::UpgradeApplied => "upgrade.applied",
            Self::UpgradeCurrent => "upgrade.current",
            Self::UpgradeFailed => "upgrade.failed",
            Self::BackupCreated => "backup.created",
            Self::BackupFailed => "backup.failed",
            Self::QuotaExceeded => "quota.exceeded",
            Self::QuotaOk => "quota.ok",
            Self::PasswordRotated => "password.rotated",
            Self::PasswordAligned => "password.aligned",
            Self::MoveStarted => "move.started",
            Self::MoveStep => "move.step",
            Self::MoveSwitched => "move.switched",
            Self::MoveFinished => "move.finished",
            Self::MoveFailed => "move.failed",
            Self::MoveSourceDropped => "move.source_dropped",
            Self::ReconcileDrift => "reconcile.drift",
            Self::ReconcileRepaired => "reconcile.repaired",
            Self::SpareTaken => "step.spare.taken",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The trail's query up to its order direction (one text, two directions).
macro_rules! FEED {
    () => {
        "SELECT e.id, e.at, t.slug, e.kind, e.detail, e.actor \
         FROM tenantd.tenant_events e JOIN tenantd.tenants t ON t.id = e.tenant_id \
         WHERE e.id > $1 AND ($2::text IS NULL OR e.kind = $2) AND ($3::uuid IS NULL OR e.tenant_id = $3) \
         ORDER BY e.id "
    };
}

impl Catalog {
    /// Appends an event.
    pub async fn record_event(
        &self,
        tenant: Uuid,
        kind: EventKind,
        detail: serde_json::Value,
        actor: &str,
    ) -> Result<(), CatalogError> {
        self.execute(
            "INSERT INTO tenantd.tenant_events (tenant_id, kind, detail, actor) VALUES ($1, $2, $3, $4)",
            &[&tenant, &kind.as_str(), &detail, &actor],
        )
        .await?;
        Ok(())
    }

    /// True when an event `kind` was recorded after the latest `since_kind` event.
    pub async fn has_event_since(
        &self,
        tenant: Uuid,
        kind: EventKind,
        since_kind: EventKind,
    ) -> Result<bool, CatalogError> {
        Ok(self
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM tenantd.tenant_events WHERE tenant_id = $1 AND kind = $2 AND id > \
                 coalesce((SELECT max(id) FROM tenantd.tenant_events WHERE tenant_id = $1 AND kind = $3), 0))",
                &[&tenant, &kind.as_str(), &since_kind.as_str()],
            )
            .await?
            .get(0))
    }

    /// A tenant's events, oldest first, after event `after` (for paging), at most `limit`.
    pub async fn events(&self, tenant: Uuid, after: i64, limit: i64) -> Result<Vec<Event>, CatalogError> {
        let rows = self
            .query(
                "SELECT id, at, kind, detail, actor FROM tenantd.tenant_events \
                 WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3",
                &[&tenant, &after, &limit],
            )
            .await?;
        Ok(rows.iter().map(event).collect())
    }

    /// The audit trail across tenants, oldest first: the events after `filter.after` (or
    /// the newest ones), of one kind and one tenant when the filter says so.
    pub async fn event_feed(&self, filter: &FeedFilter) -> Result<Vec<FeedEvent>, CatalogError> {
        let kind = filter.kind.map(EventKind::as_str);
        let after = if filter.newest { 0 } else { filter.after };
        let sql =
            if filter.newest { concat!(FEED!(), "DESC LIMIT $4") } else { concat!(FEED!(), "ASC LIMIT $4") };
        let rows = self.query(sql, &[&after, &kind, &filter.tenant, &filter.limit]).await?;
        let mut events: Vec<FeedEvent> = rows
            .iter()
            .map(|r| FeedEvent {
                id: r.get(0),
                at: r.get(1),
                tenant: r.get(2),
                kind: r.get(3),
                detail: r.get(4),
                actor: r.get(5),
            })
            .collect();
        if filter.newest {
            events.reverse();
        }
        Ok(events)
    }

    /// A tenant's latest event of one of `kinds`.
    pub async fn latest_event(
        &self,
        tenant: Uuid,
        kinds: &[EventKind],
    ) -> Result<Option<Event>, CatalogError> {
        let kinds: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
        let row = self
            .query_opt(
                "SELECT id, at, kind, detail, actor FROM tenantd.tenant_events \
                 WHERE tenant_id = $1 AND kind = ANY($2) ORDER BY id DESC LIMIT 1",
                &[&tenant, &kinds],
            )
            .await?;
        Ok(row.as_ref().map(event))
    }
}

fn event(r: &tokio_postgres::Row) -> Event {
    Event { id: r.get(0), at: r.get(1), kind: r.get(2), detail: r.get(3), actor: r.get(4) }
}

#[cfg(test)]
mod tests {
    use super::EventKind;

    #[test]
    fn event_kinds_are_distinct() {
        let mut names: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), EventKind::ALL.len());
    }
}
