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
use crate::tenant_sql::marker;

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
}

/// Looks up `role` and tells whether it is `tenant`'s.
pub async fn role(client: &Client, tenant: Uuid, role: &PgIdent) -> Result<RoleFound, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT pg_catalog.shobj_description(r.oid, 'pg_authid'::pg_catalog.name), \
                    pg_catalog.pg_has_role(CURRENT_USER, r.oid, 'MEMBER'::pg_catalog.text) \
             FROM pg_catalog.pg_roles r WHERE r.rolname = $1::pg_catalog.text",
            &[&role.as_str()],
        )
        .await?;
    Ok(match row {
        None => RoleFound { ownership: Ownership::Absent, admin_is_member: false },
        Some(row) => RoleFound { ownership: Ownership::of(row.get(0), tenant), admin_is_member: row.get(1) },
    })
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
