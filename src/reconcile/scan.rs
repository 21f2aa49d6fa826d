//! Reading a server for reconcile: its marked databases and roles (and those the catalog
//! names), and a tenant database's own migration history. Read-only, as the server's admin,
//! every function and type schema-qualified.

use std::collections::BTreeSet;

use crate::admin::{AdminError, AdminTarget};
use crate::catalog::CatalogError;
use crate::catalog::servers::ServerRecord;
use crate::core::Core;
use crate::markers::{self, Marked};
use crate::names::PgIdent;
use crate::tenant_sql;

/// Why a server could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The server could not be reached as admin.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// A query on the server failed.
    #[error("{}", crate::pg::describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
}

/// What one server holds.
pub struct ServerScan {
    /// The server.
    pub server: ServerRecord,
    /// Its admin.
    pub admin: AdminTarget,
    /// Databases with a marker, and those the catalog named that exist.
    pub databases: Vec<Marked>,
    /// Roles likewise.
    pub roles: Vec<Marked>,
    /// The database names the catalog named for this server when it was read.
    pub asked_databases: BTreeSet<String>,
    /// The role names likewise.
    pub asked_roles: BTreeSet<String>,
}

impl ServerScan {
    /// A database by name.
    pub fn database(&self, name: &str) -> Option<&Marked> {
        self.databases.iter().find(|d| d.name == name)
    }

    /// A role by name.
    pub fn role(&self, name: &str) -> Option<&Marked> {
        self.roles.iter().find(|r| r.name == name)
    }
}

/// Reads `server`: the names the catalog gives its tenants there are asked for by name (to
/// tell "missing" from "not ours"); everything with a marker is listed.
pub async fn server(core: &Core, server: &ServerRecord) -> Result<ServerScan, ScanError> {
    let tenants = core.catalog.all_tenants(None, Some(&server.name)).await?;
    let asked_databases: BTreeSet<String> = tenants.iter().filter_map(|t| t.database_name.clone()).collect();
    let asked_roles: BTreeSet<String> = tenants.iter().filter_map(|t| t.role_name.clone()).collect();
    let admin = AdminTarget::from_record(server, &core.keyring)?;
    let client = core.admin_pools.get(server, &admin).await?;
    let db_names: Vec<&str> = asked_databases.iter().map(String::as_str).collect();
    let role_names: Vec<&str> = asked_roles.iter().map(String::as_str).collect();
    let databases = markers::marked_databases(&client, &db_names).await?;
    let roles = markers::marked_roles(&client, &role_names).await?;
    Ok(ServerScan { server: server.clone(), admin, databases, roles, asked_databases, asked_roles })
}

/// The latest version in a tenant database's own migration history (0 when it has none),
/// read as the tenant role (row security off) in a read-only transaction: the history table
/// is the tenant's, so nothing in it runs with more than the tenant's rights, and only a
/// plain table of that name in `public` is read.
pub async fn history_version(
    core: &Core,
    server: &ServerRecord,
    admin: &AdminTarget,
    database: &PgIdent,
    role: &PgIdent,
) -> Result<i32, ScanError> {
    let maintenance = core.admin_pools.get(server, admin).await?;
    maintenance.batch_execute(&tenant_sql::grant_membership(role, &admin.user)).await?;
    drop(maintenance);
    let client = admin.connect(Some(database.as_str())).await?;
    client.batch_execute(&tenant_sql::act_as_tenant(role)).await?;
    client.batch_execute("START TRANSACTION READ ONLY").await?;
    let table = crate::tenant_migrations::HISTORY_TABLE;
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c \
               JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
               WHERE n.nspname OPERATOR(pg_catalog.=) 'public'::pg_catalog.name \
                 AND c.relname OPERATOR(pg_catalog.=) $1::pg_catalog.name \
                 AND c.relkind OPERATOR(pg_catalog.=) 'r'::pg_catalog.\"char\")",
            &[&table],
        )
        .await?
        .get(0);
    let version =
        if exists { client.query_one(&tenant_sql::history_version(table), &[]).await?.get(0) } else { 0 };
    client.batch_execute("ROLLBACK").await?;
    Ok(version)
}
