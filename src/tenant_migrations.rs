//! The tenant schema: SQL migrations from `migrations/`, embedded in the binary at build time.
//!
//! They run as the tenant's own role (so every object belongs to it), in one transaction per
//! run (all or nothing), under an advisory lock inside the tenant database (two runs on one
//! tenant never interleave). The history lives in the tenant database itself, in table
//! `tenantd_schema_history`, so the database alone says which version it is at — after a
//! restore too.
//!
//! A [`MigrationSet`] is normally [`MigrationSet::embedded`]; benchmarks and tests extend it
//! with [`MigrationSet::with`] to play "a new build with a new migration".

use std::sync::Arc;

use refinery::{Migration, Runner};
use tokio_postgres::Client;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// History table inside every tenant database.
pub const HISTORY_TABLE: &str = "tenantd_schema_history";
/// Advisory lock key (inside the tenant database) held while migrating.
const LOCK: i64 = 0x7465_6e61_6e74_6403;

/// A migration known to this binary (or recorded in a tenant database).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Known {
    /// Version (the `V<n>` of the file name).
    pub version: i32,
    /// Name after the `__`.
    pub name: String,
}

/// A failed migration run, described with the PostgreSQL error (message, SQLSTATE) that
/// refinery wraps.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// Locking or querying the tenant database failed.
    #[error("{}", crate::pg::describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// A migration failed or the history does not match the migrations of this binary.
    #[error("{}", describe_refinery(.0))]
    Refinery(#[from] refinery::Error),
}

fn describe_refinery(e: &refinery::Error) -> String {
    match e.kind() {
        refinery::error::Kind::Connection(message, source) => {
            match source.downcast_ref::<tokio_postgres::Error>() {
                Some(pg) => format!("{message}: {}", crate::pg::describe(pg)),
                None => format!("{message}: {source}"),
            }
        }
        other => other.to_string(),
    }
}

/// An ordered set of tenant migrations.
#[derive(Clone)]
pub struct MigrationSet {
    migrations: Arc<Vec<Migration>>,
}

impl std::fmt::Debug for MigrationSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MigrationSet").field("latest", &self.latest_version()).finish()
    }
}

impl Default for MigrationSet {
    fn default() -> Self {
        Self::embedded()
    }
}

impl MigrationSet {
    /// The migrations embedded from `migrations/`.
    pub fn embedded() -> Self {
        let mut all = embedded::migrations::runner().get_migrations().clone();
        all.sort_by_key(Migration::version);
        Self { migrations: Arc::new(all) }
    }

    /// This set plus one migration named like a file, e.g. `V3__add_invoices`.
    pub fn with(&self, name: &str, sql: &str) -> Result<Self, MigrationError> {
        let mut all = self.migrations.as_ref().clone();
        all.push(Migration::unapplied(name, sql)?);
        all.sort_by_key(Migration::version);
        Ok(Self { migrations: Arc::new(all) })
    }

    fn runner(&self) -> Runner {
        let mut runner = Runner::new(&self.migrations);
        runner.set_migration_table_name(HISTORY_TABLE);
        runner.set_grouped(true)
    }

    /// Every migration, in order.
    pub fn known(&self) -> Vec<Known> {
        self.migrations.iter().map(|m| Known { version: m.version(), name: m.name().to_owned() }).collect()
    }

    /// Migrations newer than `version`.
    pub fn pending_after(&self, version: i32) -> Vec<Known> {
        self.known().into_iter().filter(|m| m.version > version).collect()
    }

    /// Version of the newest migration (0 when there are none).
    pub fn latest_version(&self) -> i32 {
        self.migrations.last().map_or(0, Migration::version)
    }

    /// The SQL of every migration, in order (for the benchmark's plain-SQL floor).
    pub fn sql(&self) -> Vec<String> {
        self.migrations.iter().map(|m| m.sql().unwrap_or_default().to_owned()).collect()
    }

    /// Applies every pending migration in one transaction, under the tenant's advisory lock.
    /// Returns the resulting version and the migrations applied now.
    pub async fn apply(&self, client: &mut Client) -> Result<(i32, Vec<Known>), MigrationError> {
        client.execute("SELECT pg_catalog.pg_advisory_lock($1)", &[&LOCK]).await?;
        let report = self.runner().run_async(client).await;
        let unlocked = client.execute("SELECT pg_catalog.pg_advisory_unlock($1)", &[&LOCK]).await;
        let report = report?;
        unlocked?;
        let applied = report
            .applied_migrations()
            .iter()
            .map(|m| Known { version: m.version(), name: m.name().to_owned() })
            .collect();
        Ok((current_version(client).await?, applied))
    }
}

/// The newest version recorded in a tenant database (0 when none).
pub async fn current_version(client: &mut Client) -> Result<i32, MigrationError> {
    Ok(MigrationSet::embedded()
        .runner()
        .get_last_applied_migration_async(client)
        .await?
        .map_or(0, |m| m.version()))
}

/// Every embedded migration, in order.
pub fn known() -> Vec<Known> {
    MigrationSet::embedded().known()
}

/// Version of the newest embedded migration (0 when there are none).
pub fn latest_version() -> i32 {
    MigrationSet::embedded().latest_version()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_schema_is_embedded_in_order() {
        let known = known();
        assert!(known.len() >= 2, "{known:?}");
        assert!(known.windows(2).all(|w| w[0].version < w[1].version));
        assert_eq!(latest_version(), known.last().unwrap().version);
    }

    #[test]
    fn a_set_can_grow_by_one_migration() {
        let set = MigrationSet::embedded();
        let next = set.latest_version() + 1;
        let grown = set.with(&format!("V{next}__invoices"), "CREATE TABLE invoices (id int)").unwrap();
        assert_eq!(grown.latest_version(), next);
        assert_eq!(grown.pending_after(next - 1), vec![Known { version: next, name: "invoices".into() }]);
        assert!(set.with("not a migration name", "SELECT 1").is_err());
    }
}
