//! The tenant schema: SQL migrations from `migrations/`, embedded in the binary at build time.
//!
//! They run as the tenant's own role (so every object belongs to it), in one transaction per
//! run (all or nothing), under an advisory lock inside the tenant database (two runs on one
//! tenant never interleave). The history lives in the tenant database itself, in table
//! `tenantd_schema_history`, so the database alone says which version it is at — after a
//! restore too.

use refinery::Runner;
use tokio_postgres::Client;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// History table inside every tenant database.
pub const HISTORY_TABLE: &str = "tenantd_schema_history";
/// Advisory lock key (inside the tenant database) held while migrating.
const LOCK: i64 = 0x7465_6e61_6e74_6403;

/// A migration known to this binary.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Known {
    /// Version (the `V<n>` of the file name).
    pub version: i32,
    /// Name after the `__`.
    pub name: String,
}

fn runner() -> Runner {
    let mut runner = embedded::migrations::runner();
    runner.set_migration_table_name(HISTORY_TABLE);
    runner.set_grouped(true)
}

/// Every embedded migration, in order.
pub fn known() -> Vec<Known> {
    let mut all: Vec<Known> = runner()
        .get_migrations()
        .iter()
        .map(|m| Known { version: m.version(), name: m.name().to_owned() })
        .collect();
    all.sort_by_key(|m| m.version);
    all
}

/// The SQL of every embedded migration, in order (for the benchmark's plain-SQL floor).
pub fn sql() -> Vec<String> {
    let runner = runner();
    let mut all: Vec<_> = runner.get_migrations().iter().collect();
    all.sort_by_key(|m| m.version());
    all.iter().map(|m| m.sql().unwrap_or_default().to_owned()).collect()
}

/// Version of the newest embedded migration (0 when there are none).
pub fn latest_version() -> i32 {
    known().last().map_or(0, |m| m.version)
}

/// A failed migration run, described with the PostgreSQL error (message, SQLSTATE) that
/// refinery wraps.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// Locking or querying the tenant database failed.
    #[error("{}", crate::pg::describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// A migration failed or the history does not match the embedded migrations.
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

/// Applies every pending migration in one transaction, under the tenant's advisory lock.
/// Returns the resulting version and the migrations applied now.
pub async fn apply(client: &mut Client) -> Result<(i32, Vec<Known>), MigrationError> {
    client.execute("SELECT pg_advisory_lock($1)", &[&LOCK]).await?;
    let report = runner().run_async(client).await;
    let unlocked = client.execute("SELECT pg_advisory_unlock($1)", &[&LOCK]).await;
    let report = report?;
    unlocked?;
    let applied: Vec<Known> = report
        .applied_migrations()
        .iter()
        .map(|m| Known { version: m.version(), name: m.name().to_owned() })
        .collect();
    let version = current_version(client).await?;
    Ok((version, applied))
}

/// The newest version recorded in a tenant database (0 when none).
pub async fn current_version(client: &mut Client) -> Result<i32, MigrationError> {
    Ok(runner().get_last_applied_migration_async(client).await?.map_or(0, |m| m.version()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn sample_schema_is_embedded_in_order() {
        let known = super::known();
        assert!(known.len() >= 2, "{known:?}");
        assert!(known.windows(2).all(|w| w[0].version < w[1].version));
        assert_eq!(super::latest_version(), known.last().unwrap().version);
    }
}
