//! "Is this object ours?": the one check of tenantd's marker on roles and databases.
//!
//! Every role and database tenantd creates for a tenant carries the comment
//! `tenantd:<tenant id>` ([`crate::tenant_sql::marker`]). Anything under a tenant's names
//! without that marker belongs to someone else and is never adopted, altered, dumped or
//! dropped. Provisioning, deletion, dumps and bench cleanup all ask here.
//!
//! The queries run as the admin, so every function and type they name is schema-qualified:
//! nothing a tenant creates can take their place.

use tokio_postgres::Client;
use uuid::Uuid;

use crate::names::PgIdent;
use crate::tenant_sql::{MARKER_PREFIX, marker};

/// Whose an object under a tenant's name is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// Nothing by that name.
    Absent,
    /// It carries this tenant's marker.
    Ours,
    /// It exists without this tenant's marker; its comment, if any.
    Foreign(Option<String>),
}

impl Ownership {
    fn of(comment: Option<String>, tenant: Uuid) -> Ownership {
        if comment.as_deref() == Some(marker(tenant).as_str()) {
            Ownership::Ours
        } else {
            Ownership::Foreign(comment)
        }
    }

    /// True when the object carries this tenant's marker.
    pub fn is_ours(&self) -> bool {
        *self == Ownership::Ours
    }
}

/// A role by name, and whether the current (admin) role is a member of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleFound {
    /// Whose it is.
    pub ownership: Ownership,
    /// The admin may `SET ROLE` to it.
    pub admin_is_member: bool,
    /// The server's `createrole_self_grant` for the admin's roles ([`crate::tenant_sql::SELF_GRANT`]).
    pub self_grant: String,
}

/// Looks up `role` and tells whether it is `tenant`'s.
pub async fn role(client: &Client, tenant: Uuid, role: &PgIdent) -> Result<RoleFound, tokio_postgres::Error> {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sql = SQL.get_or_init(|| {
        format!(
            "SELECT r.oid IS NOT NULL, pg_catalog.shobj_description(r.oid, 'pg_authid'::pg_catalog.name), \
                    r.oid IS NOT NULL AND pg_catalog.pg_has_role(CURRENT_USER, r.oid, 'MEMBER'::pg_catalog.text), \
                    {} \
             FROM (SELECT) one LEFT JOIN pg_catalog.pg_roles r ON r.rolname = $1::pg_catalog.text",
            crate::tenant_sql::SELF_GRANT
        )
    });
    let row = client.query_one(sql.as_str(), &[&role.as_str()]).await?;
    let (exists, self_grant): (bool, String) = (row.get(0), row.get(3));
    let ownership = if exists { Ownership::of(row.get(1), tenant) } else { Ownership::Absent };
    Ok(RoleFound { ownership, admin_is_member: row.get(2), self_grant })
}

/// Looks up each of `names` among the server's databases and tells whether it is `tenant`'s;
/// the result is in the order of `names`.
pub async fn databases(
    client: &Client,
    tenant: Uuid,
    names: &[&PgIdent],
) -> Result<Vec<(PgIdent, Ownership)>, tokio_postgres::Error> {
    let wanted: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
    let rows = client
        .query(
            "SELECT d.datname::pg_catalog.text, pg_catalog.shobj_description(d.oid, 'pg_database'::pg_catalog.name) \
             FROM pg_catalog.pg_database d WHERE d.datname::pg_catalog.text = ANY($1::pg_catalog.text[])",
            &[&wanted],
        )
        .await?;
    let mut found = Vec::with_capacity(names.len());
    for name in names {
        let comment = rows.iter().find(|r| r.get::<_, &str>(0) == name.as_str()).map(|r| r.get(1));
        let ownership = match comment {
            None => Ownership::Absent,
            Some(comment) => Ownership::of(comment, tenant),
        };
        found.push(((*name).clone(), ownership));
    }
    Ok(found)
}

/// The tenant a marker names (`tenantd:<uuid>`), if the comment is a marker.
pub fn owner(comment: &str) -> Option<Uuid> {
    comment.strip_prefix(MARKER_PREFIX).and_then(|id| Uuid::parse_str(id).ok())
}

/// The warm spare a spare's marker names (`tenantd:spare:<uuid>`), if the comment is one.
pub fn spare_owner(comment: &str) -> Option<Uuid> {
    comment
        .strip_prefix(MARKER_PREFIX)
        .and_then(|rest| rest.strip_prefix("spare:"))
        .and_then(|id| Uuid::parse_str(id).ok())
}

/// A database or role on a server that carries a marker, or that the catalog names.
#[derive(Debug, Clone)]
pub struct Marked {
    /// Its name.
    pub name: String,
    /// The tenant its marker names (`None`: no marker, a name the catalog asked about).
    pub owner: Option<Uuid>,
    /// The warm spare its marker names (`tenantd:spare:<id>`), if it is a spare's.
    pub spare: Option<Uuid>,
    /// Databases: connections allowed; roles: LOGIN.
    pub enabled: bool,
    /// Databases only: each privilege granted to someone other than the owner, as
    /// (grantee, privilege); the grantee `PUBLIC` for everyone.
    pub grants: Vec<(String, String)>,
}

impl Marked {
    /// From a row of name, comment and enabled (the first three columns of both queries).
    fn from_row(r: &tokio_postgres::Row, grants: Vec<(String, String)>) -> Self {
        let comment: Option<String> = r.get(1);
        Marked {
            name: r.get(0),
            owner: comment.as_deref().and_then(owner),
            spare: comment.as_deref().and_then(spare_owner),
            enabled: r.get(2),
            grants,
        }
    }
}

/// Every database of the server that carries a marker, and those among `names` that do not
/// (read-only, schema-qualified). A database without explicit grants has PostgreSQL's
/// defaults (PUBLIC may connect and create temporary tables), listed as such.
pub async fn marked_databases(client: &Client, names: &[&str]) -> Result<Vec<Marked>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT d.datname::pg_catalog.text, \
                    pg_catalog.shobj_description(d.oid, 'pg_database'::pg_catalog.name), d.datallowconn, \
                    ARRAY(SELECT (CASE WHEN a.grantee OPERATOR(pg_catalog.=) 0::pg_catalog.oid THEN 'PUBLIC' \
                                  ELSE pg_catalog.pg_get_userbyid(a.grantee)::pg_catalog.text END) \
                                 OPERATOR(pg_catalog.||) ' ' OPERATOR(pg_catalog.||) a.privilege_type \
                          FROM pg_catalog.aclexplode(COALESCE(d.datacl, \
                                 pg_catalog.acldefault('d'::pg_catalog.\"char\", d.datdba))) a \
                          WHERE a.grantee OPERATOR(pg_catalog.<>) d.datdba ORDER BY 1) \
             FROM pg_catalog.pg_database d \
             WHERE pg_catalog.starts_with(COALESCE(pg_catalog.shobj_description(d.oid, \
                     'pg_database'::pg_catalog.name), ''), $1::pg_catalog.text) \
                OR d.datname::pg_catalog.text OPERATOR(pg_catalog.=) ANY($2::pg_catalog.text[])",
            &[&MARKER_PREFIX, &names],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let grants: Vec<String> = r.get(3);
            let grants = grants
                .iter()
                .filter_map(|g| g.rsplit_once(' ').map(|(who, what)| (who.to_owned(), what.to_owned())))
                .collect();
            Marked::from_row(r, grants)
        })
        .collect())
}

/// Every role of the server that carries a marker, and those among `names` that do not.
pub async fn marked_roles(client: &Client, names: &[&str]) -> Result<Vec<Marked>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT r.rolname::pg_catalog.text, \
                    pg_catalog.shobj_description(r.oid, 'pg_authid'::pg_catalog.name), r.rolcanlogin \
             FROM pg_catalog.pg_roles r \
             WHERE pg_catalog.starts_with(COALESCE(pg_catalog.shobj_description(r.oid, \
                     'pg_authid'::pg_catalog.name), ''), $1::pg_catalog.text) \
                OR r.rolname::pg_catalog.text OPERATOR(pg_catalog.=) ANY($2::pg_catalog.text[])",
            &[&MARKER_PREFIX, &names],
        )
        .await?;
    Ok(rows.iter().map(|r| Marked::from_row(r, Vec::new())).collect())
}

/// Whose a warm spare's database and role are (in that order): [`Ownership::Ours`] when they
/// carry the spare's marker (`tenantd:spare:<id>`), which no tenant's marker matches.
pub async fn spare(
    client: &Client,
    spare: Uuid,
    database: &PgIdent,
    role: &PgIdent,
) -> Result<(Ownership, Ownership), tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_database d WHERE d.datname::pg_catalog.text = $1::pg_catalog.text), \
                    (SELECT pg_catalog.shobj_description(d.oid, 'pg_database'::pg_catalog.name) \
                     FROM pg_catalog.pg_database d WHERE d.datname::pg_catalog.text = $1::pg_catalog.text), \
                    EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.rolname = $2::pg_catalog.text), \
                    (SELECT pg_catalog.shobj_description(r.oid, 'pg_authid'::pg_catalog.name) \
                     FROM pg_catalog.pg_roles r WHERE r.rolname = $2::pg_catalog.text)",
            &[&database.as_str(), &role.as_str()],
        )
        .await?;
    let expected = crate::tenant_sql::spare_marker(spare);
    let of = |exists: bool, comment: Option<String>| match (exists, comment) {
        (false, _) => Ownership::Absent,
        (true, Some(c)) if c == expected => Ownership::Ours,
        (true, comment) => Ownership::Foreign(comment),
    };
    Ok((of(row.get(0), row.get(1)), of(row.get(2), row.get(3))))
}
