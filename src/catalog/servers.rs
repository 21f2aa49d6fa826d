//! Queries on `tenantd.servers`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::Row;

use super::{Catalog, CatalogError};
use crate::pgtls::{PgTls, SslMode};

/// Administrative status of a server: only `active` servers receive new tenants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ServerStatus {
    /// Accepts new tenants.
    Active,
    /// Keeps its tenants, receives no new ones; tenants may be moved away.
    Draining,
    /// Temporarily out of placement.
    Maintenance,
}

impl ServerStatus {
    /// The catalog spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Draining => "draining",
            Self::Maintenance => "maintenance",
        }
    }

    /// Parses the catalog/CLI spelling.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "active" => Some(Self::Active),
            "draining" => Some(Self::Draining),
            "maintenance" => Some(Self::Maintenance),
            _ => None,
        }
    }
}

/// Result of the last health check of a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ServerHealth {
    /// Not checked yet.
    Unknown,
    /// The last check connected and answered.
    Healthy,
    /// The last check failed (`health_error` says why).
    Unhealthy,
}

impl ServerHealth {
    /// The catalog spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
        }
    }

    /// Parses the catalog spelling (anything else reads as `unknown`).
    pub fn parse(text: &str) -> Self {
        match text {
            "healthy" => Self::Healthy,
            "unhealthy" => Self::Unhealthy,
            _ => Self::Unknown,
        }
    }
}

impl std::fmt::Display for ServerHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A server status that is none of `active`, `draining`, `maintenance`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not one of active, draining, maintenance")]
pub struct BadServerStatus(String);

impl std::str::FromStr for ServerStatus {
    type Err = BadServerStatus;

    fn from_str(text: &str) -> Result<Self, BadServerStatus> {
        Self::parse(text).ok_or_else(|| BadServerStatus(text.to_owned()))
    }
}

impl std::fmt::Display for ServerStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A server as placement sees it.
#[derive(Debug, Clone, Serialize)]
pub struct ServerLoad {
    /// Name.
    pub name: String,
    /// `active`, `draining`, `maintenance`.
    pub status: ServerStatus,
    /// `unknown`, `healthy`, `unhealthy`.
    pub health: ServerHealth,
    /// Share of new tenants.
    pub weight: i32,
    /// Capacity.
    pub max_tenants: Option<i32>,
    /// Region.
    pub region: Option<String>,
    /// Tenants placed there (not deleted).
    pub tenants: i64,
}

/// Every server's load as placement sees it (columns of [`load_from_row`]).
pub(crate) const LOADS: &str = concat!(
    "SELECT s.name, s.status, s.health, s.weight, s.max_tenants, s.region, ",
    live_tenants!(),
    " FROM tenantd.servers s ORDER BY s.name"
);

/// The live tenants of server `s`, from the tallies the catalog's trigger keeps (schema V12),
/// not a count of rows: as cheap with 100,000 tenants as with none.
macro_rules! live_tenants {
    () => {
        "(SELECT coalesce(sum(t.tenants), 0)::int8 FROM tenantd.tenant_tallies t \
          WHERE t.server = s.name AND t.status <> 'DELETED')"
    };
}
use live_tenants;

#[cfg(test)]
impl ServerLoad {
    /// An active, healthy server without capacity or region (placement tests).
    pub(crate) fn active(name: &str, weight: i32, tenants: i64) -> Self {
        Self {
            name: name.into(),
            status: ServerStatus::Active,
            health: ServerHealth::Healthy,
            weight,
            max_tenants: None,
            region: None,
            tenants,
        }
    }
}

/// A row of [`LOADS`].
pub(crate) fn load_from_row(r: &Row) -> ServerLoad {
    ServerLoad {
        name: r.get(0),
        status: ServerStatus::parse(r.get(1)).unwrap_or(ServerStatus::Maintenance),
        health: ServerHealth::parse(r.get(2)),
        weight: r.get(3),
        max_tenants: r.get(4),
        region: r.get(5),
        tenants: r.get(6),
    }
}

/// A server row as shown to operators. The sealed admin password is kept out of
/// serialisation and Debug output.
#[derive(Clone, Serialize, utoipa::ToSchema)]
pub struct ServerRecord {
    /// Unique name.
    pub name: String,
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Role tenantd logs in as (needs LOGIN CREATEDB CREATEROLE).
    pub admin_user: String,
    #[serde(skip)]
    pub(crate) admin_password_sealed: String,
    /// Database tenantd connects to for DDL.
    pub maintenance_db: String,
    /// TLS to the server (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`).
    pub tls: PgTls,
    /// Relative share of new tenants.
    pub weight: i32,
    /// Capacity; `None` means no limit.
    pub max_tenants: Option<i32>,
    /// Free-form region for placement.
    pub region: Option<String>,
    /// `active`, `draining` or `maintenance`.
    pub status: ServerStatus,
    /// `unknown`, `healthy` or `unhealthy`.
    pub health: ServerHealth,
    /// Round trip of the last health check.
    pub health_latency_ms: Option<f64>,
    /// Time of the last health check.
    pub health_checked_at: Option<DateTime<Utc>>,
    /// Error of the last failed check.
    pub health_error: Option<String>,
    /// Tenants placed here (not deleted).
    pub tenants: i64,
    /// Warm spares kept here (being made or ready; README, "Warm spares"). They count against
    /// `max_tenants`, and are not tenants.
    pub spares: i64,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl std::fmt::Debug for ServerRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerRecord")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("admin_user", &self.admin_user)
            .field("status", &self.status)
            .field("health", &self.health)
            .finish_non_exhaustive()
    }
}

/// A new server row; the password is already sealed.
#[derive(Debug, Clone)]
pub struct NewServer {
    /// Unique name.
    pub name: String,
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Admin role.
    pub admin_user: String,
    /// Sealed admin password (AAD = `server:<name>`).
    pub admin_password_sealed: String,
    /// Maintenance database.
    pub maintenance_db: String,
    /// TLS settings.
    pub tls: PgTls,
    /// Weight.
    pub weight: i32,
    /// Capacity.
    pub max_tenants: Option<i32>,
    /// Region.
    pub region: Option<String>,
    /// Health found while verifying it.
    pub latency_ms: f64,
}

/// Changes to a server; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerPatch {
    /// New status.
    pub status: Option<ServerStatus>,
    /// New weight.
    pub weight: Option<i32>,
    /// New capacity (`null` in JSON is "no change"; use 0 to stop placement).
    pub max_tenants: Option<i32>,
    /// New region.
    pub region: Option<String>,
    /// New TLS settings, all four at once (verified by connecting before they are saved).
    pub tls: Option<PgTls>,
}

const SELECT: &str = concat!(
    "SELECT s.name, s.host, s.port, s.admin_user, s.admin_password_sealed, \
     s.maintenance_db, s.weight, s.max_tenants, s.region, s.status, s.health, s.health_latency_ms, \
     s.health_checked_at, s.health_error, s.created_at, s.updated_at, ",
    live_tenants!(),
    ", s.sslmode, s.sslrootcert, s.sslcert, s.sslkey, \
     (SELECT count(*) FROM tenantd.spares p WHERE p.server = s.name AND p.state <> 'taken') \
     FROM tenantd.servers s"
);

fn from_row(row: &Row) -> ServerRecord {
    let port: i32 = row.get(2);
    let status: String = row.get(9);
    ServerRecord {
        name: row.get(0),
        host: row.get(1),
        port: u16::try_from(port).unwrap_or_default(),
        admin_user: row.get(3),
        admin_password_sealed: row.get(4),
        maintenance_db: row.get(5),
        weight: row.get(6),
        max_tenants: row.get(7),
        region: row.get(8),
        status: ServerStatus::parse(&status).unwrap_or(ServerStatus::Maintenance),
        health: ServerHealth::parse(row.get(10)),
        health_latency_ms: row.get(11),
        health_checked_at: row.get(12),
        health_error: row.get(13),
        created_at: row.get(14),
        updated_at: row.get(15),
        tenants: row.get(16),
        spares: row.get(21),
        tls: PgTls {
            // The catalog's CHECK constraints allow only libpq's modes.
            sslmode: SslMode::parse(row.get(17)).unwrap_or(SslMode::VerifyFull),
            sslrootcert: row.get(18),
            sslcert: row.get(19),
            sslkey: row.get(20),
        },
    }
}

impl Catalog {
    /// Adds a server; a taken name is [`CatalogError::Conflict`].
    pub async fn insert_server(&self, s: &NewServer) -> Result<ServerRecord, CatalogError> {
        let client = self.client().await?;
        let port = i32::from(s.port);
        let inserted = client
            .execute(
                "INSERT INTO tenantd.servers (name, host, port, admin_user, admin_password_sealed, \
                 maintenance_db, weight, max_tenants, region, health, health_latency_ms, \
                 health_checked_at, sslmode, sslrootcert, sslcert, sslkey) \
                 VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,'healthy',$10,now(),$11,$12,$13,$14)",
                &[
                    &s.name,
                    &s.host,
                    &port,
                    &s.admin_user,
                    &s.admin_password_sealed,
                    &s.maintenance_db,
                    &s.weight,
                    &s.max_tenants,
                    &s.region,
                    &s.latency_ms,
                    &s.tls.sslmode.as_str(),
                    &s.tls.sslrootcert,
                    &s.tls.sslcert,
                    &s.tls.sslkey,
                ],
            )
            .await;
        match inserted {
            Err(e) if CatalogError::is_unique_violation(&e) => {
                Err(CatalogError::Conflict(format!("server {:?} already exists", s.name)))
            }
            Err(e) => Err(e.into()),
            Ok(_) => self.server(&s.name).await,
        }
    }

    /// Adds or refreshes a server's connection details (the embedded `local` server), keeping
    /// its status, weight and capacity.
    pub async fn upsert_server_connection(&self, s: &NewServer) -> Result<(), CatalogError> {
        let port = i32::from(s.port);
        self.execute(
            "INSERT INTO tenantd.servers (name, host, port, admin_user, admin_password_sealed, \
                 maintenance_db, weight, max_tenants, region, sslmode, sslrootcert, sslcert, sslkey) \
                 VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13) \
                 ON CONFLICT (name) DO UPDATE SET host = EXCLUDED.host, port = EXCLUDED.port, \
                 admin_user = EXCLUDED.admin_user, \
                 admin_password_sealed = EXCLUDED.admin_password_sealed, \
                 maintenance_db = EXCLUDED.maintenance_db, sslmode = EXCLUDED.sslmode, \
                 sslrootcert = EXCLUDED.sslrootcert, sslcert = EXCLUDED.sslcert, sslkey = EXCLUDED.sslkey",
            &[
                &s.name,
                &s.host,
                &port,
                &s.admin_user,
                &s.admin_password_sealed,
                &s.maintenance_db,
                &s.weight,
                &s.max_tenants,
                &s.region,
                &s.tls.sslmode.as_str(),
                &s.tls.sslrootcert,
                &s.tls.sslcert,
                &s.tls.sslkey,
            ],
        )
        .await?;
        Ok(())
    }

    /// All servers, by name.
    pub async fn servers(&self) -> Result<Vec<ServerRecord>, CatalogError> {
        let rows = self.query(&format!("{SELECT} ORDER BY s.name"), &[]).await?;
        Ok(rows.iter().map(from_row).collect())
    }

    /// One server.
    pub async fn server(&self, name: &str) -> Result<ServerRecord, CatalogError> {
        let row = self.query_opt(&format!("{SELECT} WHERE s.name = $1"), &[&name]).await?;
        row.as_ref().map(from_row).ok_or_else(|| CatalogError::NotFound(format!("no server named {name:?}")))
    }

    /// Removes a server that holds no tenant (deleted tenants' rows forget it); under the
    /// placement lock, so no tenant is placed on it meanwhile. A server with tenants is
    /// [`CatalogError::Conflict`].
    pub async fn remove_server(&self, name: &str) -> Result<(), CatalogError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&super::tenants::PLACEMENT_LOCK]).await?;
        let exists =
            tx.query_opt("SELECT 1 FROM tenantd.servers WHERE name = $1 FOR UPDATE", &[&name]).await?;
        if exists.is_none() {
            return Err(CatalogError::NotFound(format!("no server named {name:?}")));
        }
        let live: i64 = tx
            .query_one(
                "SELECT count(*) FROM tenantd.tenants WHERE server = $1 AND status <> 'DELETED'",
                &[&name],
            )
            .await?
            .get(0);
        if live > 0 {
            return Err(CatalogError::Conflict(format!(
                "server {name} still holds {live} tenant(s): drain it first (tenantd server drain {name})"
            )));
        }
        let spares: i64 =
            tx.query_one("SELECT count(*) FROM tenantd.spares WHERE server = $1", &[&name]).await?.get(0);
        if spares > 0 {
            return Err(CatalogError::Conflict(format!(
                "server {name} still holds {spares} warm spare(s) (one was being made meanwhile?): try again"
            )));
        }
        tx.execute(
            "UPDATE tenantd.tenants SET server = NULL WHERE server = $1 AND status = 'DELETED'",
            &[&name],
        )
        .await?;
        tx.execute("DELETE FROM tenantd.servers WHERE name = $1", &[&name]).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Applies a patch; returns the updated row.
    pub async fn update_server(&self, name: &str, patch: &ServerPatch) -> Result<ServerRecord, CatalogError> {
        let status = patch.status.map(ServerStatus::as_str);
        let tls = patch.tls.as_ref();
        let sslmode = tls.map(|t| t.sslmode.as_str());
        let (root, cert, key) = (
            tls.and_then(|t| t.sslrootcert.as_ref()),
            tls.and_then(|t| t.sslcert.as_ref()),
            tls.and_then(|t| t.sslkey.as_ref()),
        );
        let updated = self
            .execute(
                "UPDATE tenantd.servers SET status = coalesce($2, status), \
                 weight = coalesce($3, weight), max_tenants = coalesce($4, max_tenants), \
                 region = coalesce($5, region), sslmode = coalesce($6, sslmode), \
                 sslrootcert = CASE WHEN $6 IS NULL THEN sslrootcert ELSE $7 END, \
                 sslcert = CASE WHEN $6 IS NULL THEN sslcert ELSE $8 END, \
                 sslkey = CASE WHEN $6 IS NULL THEN sslkey ELSE $9 END WHERE name = $1",
                &[
                    &name,
                    &status,
                    &patch.weight,
                    &patch.max_tenants,
                    &patch.region,
                    &sslmode,
                    &root,
                    &cert,
                    &key,
                ],
            )
            .await?;
        if updated == 0 {
            return Err(CatalogError::NotFound(format!("no server named {name:?}")));
        }
        self.server(name).await
    }

    /// Records the result of a health check.
    pub async fn record_server_health(
        &self,
        name: &str,
        result: Result<f64, &str>,
    ) -> Result<(), CatalogError> {
        let client = self.client().await?;
        match result {
            Ok(latency_ms) => {
                client
                    .execute(
                        "UPDATE tenantd.servers SET health = 'healthy', health_latency_ms = $2, \
                         health_checked_at = now(), health_error = NULL WHERE name = $1",
                        &[&name, &latency_ms],
                    )
                    .await?
            }
            Err(error) => {
                client
                    .execute(
                        "UPDATE tenantd.servers SET health = 'unhealthy', health_latency_ms = NULL, \
                         health_checked_at = now(), health_error = $2 WHERE name = $1",
                        &[&name, &error],
                    )
                    .await?
            }
        };
        Ok(())
    }

    /// Replaces a server's sealed admin password (key rotation).
    pub async fn reseal_server_password(&self, name: &str, sealed: &str) -> Result<(), CatalogError> {
        self.execute(
            "UPDATE tenantd.servers SET admin_password_sealed = $2 WHERE name = $1",
            &[&name, &sealed],
        )
        .await?;
        Ok(())
    }
}

/// How many sealed values in the catalog use one master key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyUsage {
    /// The key id in the envelopes (`v1.<key id>.<...>`).
    pub key_id: String,
    /// Server admin passwords sealed with it.
    pub servers: i64,
    /// Tenant role passwords sealed with it (live tenants).
    pub tenants: i64,
    /// Webhook secrets sealed with it.
    pub webhooks: i64,
}

impl Catalog {
    /// Every master key id the catalog's sealed values use, with counts.
    pub async fn key_usage(&self) -> Result<Vec<KeyUsage>, CatalogError> {
        let rows = self
            .query(
                "SELECT k, pg_catalog.sum(s)::pg_catalog.int8, pg_catalog.sum(t)::pg_catalog.int8, \
                   pg_catalog.sum(w)::pg_catalog.int8 FROM ( \
                   SELECT pg_catalog.split_part(admin_password_sealed, '.', 2) AS k, 1 AS s, 0 AS t, 0 AS w \
                   FROM tenantd.servers \
                   UNION ALL \
                   SELECT pg_catalog.split_part(role_password_sealed, '.', 2), 0, 1, 0 FROM tenantd.tenants \
                   WHERE status <> 'DELETED' AND role_password_sealed IS NOT NULL \
                   UNION ALL \
                   SELECT pg_catalog.split_part(secret_sealed, '.', 2), 0, 0, 1 FROM tenantd.webhooks) u \
                 GROUP BY k ORDER BY k",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| KeyUsage { key_id: r.get(0), servers: r.get(1), tenants: r.get(2), webhooks: r.get(3) })
            .collect())
    }
}
