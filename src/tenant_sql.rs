//! All DDL that tenantd sends to tenant servers, built from quoted identifiers.
//!
//! Utility statements (`CREATE DATABASE`, `CREATE ROLE`, …) cannot take bind parameters, so
//! this module is the one place where SQL text is assembled. Identifiers are always quoted
//! (`"` doubled); the only literals are tenantd's own markers and SCRAM verifiers, quoted with
//! [`quote_literal`]. Everything else — slugs, labels, user input — travels as parameters of
//! ordinary queries, never through here.

use uuid::Uuid;

use crate::names::PgIdent;

/// Quotes an identifier for PostgreSQL: wraps it in `"` and doubles any `"` inside
/// (`postgres_protocol`'s escaping, the driver's own).
pub fn quote_ident(name: &str) -> String {
    postgres_protocol::escape::escape_identifier(name)
}

/// Quotes a string literal: `'` doubled; backslashes handled with the `E''` form.
pub fn quote_literal(text: &str) -> String {
    postgres_protocol::escape::escape_literal(text)
}

/// How every marker begins.
pub const MARKER_PREFIX: &str = "tenantd:";

/// The comment tenantd puts on every role and database it creates for a tenant.
pub fn marker(tenant: Uuid) -> String {
    format!("{MARKER_PREFIX}{tenant}")
}

/// The comment tenantd puts on a warm spare's role and database: `tenantd:spare:<spare id>`,
/// a kind of its own (no tenant's marker matches it), so a spare is never mistaken for a
/// tenant's object and a reconciler tells spares from orphans (`tenantd.spares` lists them).
pub fn spare_marker(spare: Uuid) -> String {
    format!("tenantd:spare:{spare}")
}

/// Marks a spare's role as tenantd's spare (sent with its `CREATE ROLE`).
pub fn comment_on_spare_role(role: &PgIdent, spare: Uuid) -> String {
    format!("COMMENT ON ROLE {} IS {}", quote_ident(role.as_str()), quote_literal(&spare_marker(spare)))
}

/// Marks a spare's database as tenantd's spare.
pub fn comment_on_spare_database(database: &PgIdent, spare: Uuid) -> String {
    format!(
        "COMMENT ON DATABASE {} IS {}",
        quote_ident(database.as_str()),
        quote_literal(&spare_marker(spare))
    )
}

/// Hands a warm spare to a tenant, as one simple-query message (one implicit transaction, so
/// all or nothing): the spare's role and database get the tenant's names, its role the
/// tenant's password (a SCRAM verifier) and limits, both the tenant's marker.
pub fn take_spare(
    spare: (&PgIdent, &PgIdent),
    tenant: (&PgIdent, &PgIdent),
    scram_verifier: &str,
    id: Uuid,
    limits: &crate::limits::TenantLimits,
) -> String {
    let ((spare_db, spare_role), (db, role)) = (spare, tenant);
    format!(
        "ALTER ROLE {} RENAME TO {}; {}; {}; {}; {}; {}",
        quote_ident(spare_role.as_str()),
        quote_ident(role.as_str()),
        reset_role(role, scram_verifier),
        comment_on_role(role, id),
        role_limits(role, limits),
        rename_database(spare_db, db),
        comment_on_database(db, id)
    )
}

/// `CREATE ROLE` for a tenant: may log in, nothing else. The password is given as a SCRAM
/// verifier so the clear password never reaches the server's statement log.
pub fn create_role(role: &PgIdent, scram_verifier: &str) -> String {
    format!(
        "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION \
         NOBYPASSRLS PASSWORD {}",
        quote_ident(role.as_str()),
        quote_literal(scram_verifier)
    )
}

/// Resets an adopted role's password (the one sealed in the catalog) and LOGIN. Nothing
/// else is said: a non-superuser admin may not even mention SUPERUSER, REPLICATION or
/// BYPASSRLS in `ALTER ROLE`, and the marker already proves tenantd created this role with
/// [`create_role`]'s attributes.
pub fn reset_role(role: &PgIdent, scram_verifier: &str) -> String {
    format!("ALTER ROLE {} LOGIN PASSWORD {}", quote_ident(role.as_str()), quote_literal(scram_verifier))
}

/// The limits of a tenant role: its `CONNECTION LIMIT` and the defaults of its sessions.
/// Values are numbers tenantd computed, never text from a request.
pub fn role_limits(role: &PgIdent, limits: &crate::limits::TenantLimits) -> String {
    let role = quote_ident(role.as_str());
    format!(
        "ALTER ROLE {role} CONNECTION LIMIT {}; ALTER ROLE {role} SET statement_timeout = {}; \
         ALTER ROLE {role} SET idle_in_transaction_session_timeout = {}",
        limits.connections, limits.statement_timeout_ms, limits.idle_in_transaction_timeout_ms
    )
}

/// Makes a tenant read-only (`on`) or writable again: its role's and its database's sessions
/// start in read-only transactions. Sessions already open keep their mode; end them.
pub fn read_only(role: &PgIdent, database: &PgIdent, on: bool) -> String {
    let (role, db) = (quote_ident(role.as_str()), quote_ident(database.as_str()));
    if on {
        format!(
            "ALTER ROLE {role} SET default_transaction_read_only = on; \
             ALTER DATABASE {db} SET default_transaction_read_only = on"
        )
    } else {
        format!(
            "ALTER ROLE {role} RESET default_transaction_read_only; \
             ALTER DATABASE {db} RESET default_transaction_read_only"
        )
    }
}

/// Ends every session of a role (the admin must be a member of it); returns how many.
pub async fn end_sessions(
    admin: &tokio_postgres::Client,
    role: &PgIdent,
) -> Result<i64, tokio_postgres::Error> {
    Ok(admin.query_one(TERMINATE, &[&role.as_str()]).await?.get(0))
}

const TERMINATE: &str = "SELECT pg_catalog.count(pg_catalog.pg_terminate_backend(a.pid)) \
     FROM pg_catalog.pg_stat_activity a WHERE a.usename OPERATOR(pg_catalog.=) $1::pg_catalog.name";

/// Nobody but superusers and those granted it by name may connect to `database` (the
/// embedded bootstrap closes `template1` this way).
pub fn revoke_public_connect(database: &str) -> String {
    format!("REVOKE CONNECT ON DATABASE {} FROM PUBLIC", quote_ident(database))
}

/// Deallocates a prepared statement a tenant made with SQL `PREPARE`.
pub fn deallocate(name: &str) -> String {
    format!("DEALLOCATE {}", quote_ident(name))
}

/// A tenant role's new password, as a SCRAM verifier (the clear password never reaches the
/// server's statement log).
pub fn set_password(role: &PgIdent, scram_verifier: &str) -> String {
    format!("ALTER ROLE {} PASSWORD {}", quote_ident(role.as_str()), quote_literal(scram_verifier))
}

/// Marks a role as tenantd's.
pub fn comment_on_role(role: &PgIdent, tenant: Uuid) -> String {
    format!("COMMENT ON ROLE {} IS {}", quote_ident(role.as_str()), quote_literal(&marker(tenant)))
}

/// `CREATE DATABASE` from `template0`, owned by the admin role that runs it.
pub fn create_database(database: &PgIdent) -> String {
    format!("CREATE DATABASE {} TEMPLATE template0", quote_ident(database.as_str()))
}

/// `CREATE DATABASE` for a tenant, from `template0`, closed to every connection until
/// [`lock_down_database`] has revoked PUBLIC's rights: its name is visible in `pg_database`
/// at once, but no neighbour can connect in the window before the lockdown.
pub fn create_tenant_database(database: &PgIdent) -> String {
    format!("CREATE DATABASE {} TEMPLATE template0 ALLOW_CONNECTIONS false", quote_ident(database.as_str()))
}

/// Marks a database as tenantd's.
pub fn comment_on_database(database: &PgIdent, tenant: Uuid) -> String {
    format!("COMMENT ON DATABASE {} IS {}", quote_ident(database.as_str()), quote_literal(&marker(tenant)))
}

/// Database-level lock-down, run on the maintenance database: nobody but the tenant role (and
/// the owner) may connect or create temporary tables; only then does the database accept
/// connections at all (it is created closed).
pub fn lock_down_database(database: &PgIdent, role: &PgIdent) -> String {
    let db = quote_ident(database.as_str());
    let role = quote_ident(role.as_str());
    format!(
        "REVOKE ALL ON DATABASE {db} FROM PUBLIC; GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {role}; \
         ALTER DATABASE {db} ALLOW_CONNECTIONS true"
    )
}

/// The first half of [`lock_down_database`], for a database made a moment ago and nobody's
/// yet: PUBLIC loses its rights, then connections are allowed. Only the owner (the admin) and
/// superusers can connect then; the tenant role gets its rights with [`lock_down_database`]
/// once its migrations are in (see [`as_fresh_tenant`]). It needs no role, so it is sent right
/// behind `CREATE DATABASE`.
pub fn open_to_owner(database: &PgIdent) -> String {
    let db = quote_ident(database.as_str());
    format!("REVOKE ALL ON DATABASE {db} FROM PUBLIC; ALTER DATABASE {db} ALLOW_CONNECTIONS true")
}

/// What a first migration run wraps its transaction in when it runs on the admin's session
/// (with its usual settings, `pg::ADMIN_SESSION`) inside a database that nobody else has been
/// able to connect to yet ([`open_to_owner`]).
///
/// First, as the admin: the schema grants of [`grant_schema`] and the role's TEMPORARY right
/// (its CONNECT comes only with the rename); then the admin becomes a member of the tenant
/// role and acts as it for the transaction (`SET LOCAL ROLE`), with the search path of the
/// role's own migration session (`pg::MIGRATION_SESSION`) and its statement timeout (0 keeps
/// the admin's bound), so every object is the tenant role's, as on the role's own session.
/// At the end, deferred constraints are checked, and the run is refused unless it still acts
/// as the role in the same transaction (a migration that ran `RESET ROLE` or `COMMIT` would
/// have run the rest as the admin). The `COMMIT` itself runs acting as the role (what runs at
/// commit, such as a `WITH HOLD` cursor or a constraint deferred again, runs as the role);
/// right after it, the membership is revoked — and, where the server's
/// `createrole_self_grant` (`self_grant`, PostgreSQL 16+) gave the admin one at `CREATE ROLE`,
/// made again as the setting says, in the same transaction as the revoke.
///
/// This saves the tenant role's own connection (a backend start in a new database). It is safe
/// only because nothing in the database can be the tenant's yet: `RESET ROLE` in that session
/// is the admin, so it must run nothing but the embedded migrations, which are trusted code (a
/// migration that deliberately switches roles and back is not caught). A migration sees two
/// differences: `session_user` is the admin, and `RESET` of a setting finds the admin's
/// session value (for `search_path`, `pg_catalog`: creating a table then fails, and the retry
/// runs on the role's own session).
pub fn as_fresh_tenant(
    database: &PgIdent,
    role: &PgIdent,
    statement_timeout_ms: u64,
    self_grant: &str,
) -> crate::tenant_migrations::Around {
    let (db, quoted, literal) =
        (quote_ident(database.as_str()), quote_ident(role.as_str()), quote_literal(role.as_str()));
    let timeout = match statement_timeout_ms {
        0 => String::new(),
        ms => format!(" SET LOCAL statement_timeout = {ms};"),
    };
    let regrant = regrant_to_creator(role, self_grant);
    // With a self-grant, the admin's membership exists already, perhaps without SET.
    let member = if regrant.is_empty() { "" } else { " WITH SET TRUE" };
    crate::tenant_migrations::Around {
        first: format!(
            "{}; GRANT TEMPORARY ON DATABASE {db} TO {quoted}; GRANT {quoted} TO CURRENT_USER{member}; \
             SET LOCAL ROLE {quoted}; SELECT pg_catalog.set_config('tenantd.acting_as', {literal}, true); \
             SELECT pg_catalog.set_config('search_path', '\"$user\",public', true);{timeout}",
            grant_schema(role)
        ),
        // The check is plain SQL, not a DO block: the first DO block of a session loads and
        // starts PL/pgSQL, 2-5 ms of every new tenant. Its refusal is a failed cast whose
        // message is the reason (the operand is not constant, so it is never folded early).
        last: format!(
            "SET CONSTRAINTS ALL IMMEDIATE; \
             SELECT CASE WHEN CURRENT_USER OPERATOR(pg_catalog.=) {literal}::pg_catalog.name \
                 AND COALESCE(pg_catalog.current_setting('tenantd.acting_as', true), '') OPERATOR(pg_catalog.=) {literal} \
               THEN 0 \
               ELSE ('tenantd refuses this run: a migration changed the role or ended the transaction \
                 (RESET ROLE, SET ROLE, COMMIT); the migrations of a new tenant run as its role in one \
                 transaction; acting as '::pg_catalog.text OPERATOR(pg_catalog.||) CURRENT_USER::pg_catalog.text)::pg_catalog.int4 \
             END;"
        ),
        after: match regrant.is_empty() {
            true => format!("REVOKE {quoted} FROM CURRENT_USER"),
            false => format!("REVOKE {quoted} FROM CURRENT_USER; {regrant}"),
        },
    }
}

/// What `createrole_self_grant` (PostgreSQL 16+; empty when unset, on older servers, or for a
/// superuser admin, who gets no self-grant) made at `CREATE ROLE`, made again: the admin's
/// membership in a role it created, with the options the setting names. Empty when the
/// setting is.
pub fn regrant_to_creator(role: &PgIdent, createrole_self_grant: &str) -> String {
    let options: Vec<String> = createrole_self_grant
        .split(',')
        .map(|o| o.trim().to_ascii_lowercase())
        .filter(|o| !o.is_empty())
        .collect();
    if options.is_empty() {
        return String::new();
    }
    let has = |o: &str| options.iter().any(|x| x == o);
    format!(
        "GRANT {} TO CURRENT_USER WITH INHERIT {}, SET {}",
        quote_ident(role.as_str()),
        has("inherit"),
        has("set")
    )
}

/// The server's `createrole_self_grant` as it applies to roles the current (admin) role creates:
/// empty for a superuser, or where the setting is unset or unknown (before PostgreSQL 16).
pub const SELF_GRANT: &str = "CASE WHEN (SELECT r.rolsuper FROM pg_catalog.pg_roles r \
      WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER) THEN '' \
    ELSE COALESCE(pg_catalog.current_setting('createrole_self_grant', true), '') END";

/// [`lock_down_database`] again over a database whose grants drifted: every privilege of
/// PUBLIC, of the tenant role and of `others` (roles found with grants on it) revoked, then
/// exactly provisioning's grants given back. Names are quoted.
pub fn relock_database(database: &PgIdent, role: &PgIdent, others: &[String]) -> String {
    let db = quote_ident(database.as_str());
    let mut from = vec!["PUBLIC".to_owned(), quote_ident(role.as_str())];
    from.extend(others.iter().map(|o| quote_ident(o)));
    format!("REVOKE ALL ON DATABASE {db} FROM {}; {}", from.join(", "), lock_down_database(database, role))
}

/// Schema-level grants, run inside the tenant database: the tenant role may use and create in
/// `public`; PUBLIC may not create there.
pub fn grant_schema(role: &PgIdent) -> String {
    format!(
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC; GRANT USAGE, CREATE ON SCHEMA public TO {}",
        quote_ident(role.as_str())
    )
}

/// Renames a database (staging to final name).
pub fn rename_database(from: &PgIdent, to: &PgIdent) -> String {
    format!("ALTER DATABASE {} RENAME TO {}", quote_ident(from.as_str()), quote_ident(to.as_str()))
}

/// Renames a database, retrying for up to 5 s while it is "in use": sessions tenantd just
/// closed (or ended) can linger for a moment.
///
/// PostgreSQL waits for other sessions on the database itself, but by sleeping 100 ms at a
/// time; a session closed a moment ago is gone within a millisecond or two. So the sessions
/// are first looked for here, every millisecond for up to 100 ms, and the rename is sent once
/// none is left.
///
/// `then` (SQL, may be empty) runs in the rename's transaction, after it.
pub async fn rename_database_when_free(
    admin: &tokio_postgres::Client,
    from: &PgIdent,
    to: &PgIdent,
    then: &str,
) -> Result<(), tokio_postgres::Error> {
    let quiet_by = std::time::Instant::now() + std::time::Duration::from_millis(100);
    loop {
        let sessions: i64 = admin
            .query_one(
                "SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_activity \
                 WHERE datname OPERATOR(pg_catalog.=) $1::pg_catalog.text",
                &[&from.as_str()],
            )
            .await?
            .get(0);
        if sessions == 0 || std::time::Instant::now() > quiet_by {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let mut ddl = rename_database(from, to);
    if !then.is_empty() {
        ddl = format!("{ddl}; {then}");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match admin.batch_execute(&ddl).await {
            Err(e)
                if e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE)
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

/// Drops a database, ending its sessions (PostgreSQL 13+).
pub fn drop_database(database: &PgIdent) -> String {
    format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(database.as_str()))
}

/// Runs [`drop_database`], tried again for up to five seconds while it fails for want of the
/// right to end a session: an autovacuum worker in a database just written to is a session no
/// non-superuser may end (PostgreSQL 15), and it leaves within moments. Any other error, or
/// this one lasting, is returned.
pub async fn drop_database_now(
    admin: &tokio_postgres::Client,
    database: &PgIdent,
) -> Result<(), tokio_postgres::Error> {
    let mut tries = 0;
    loop {
        match admin.batch_execute(&drop_database(database)).await {
            Err(e)
                if tries < 20
                    && e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) =>
            {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
            done => return done,
        }
    }
}

/// Makes the admin a member of a tenant role: needed to end the role's sessions
/// (`pg_terminate_backend`, `DROP DATABASE ... WITH (FORCE)`) and to dump or restore as it.
/// A CREATEROLE admin may grant this for roles it created.
pub fn grant_membership(role: &PgIdent, admin: &str) -> String {
    format!("GRANT {} TO {}", quote_ident(role.as_str()), quote_ident(admin))
}

/// Forbids (suspend) or allows (resume) the tenant role to log in.
pub fn set_login(role: &PgIdent, login: bool) -> String {
    format!("ALTER ROLE {} {}", quote_ident(role.as_str()), if login { "LOGIN" } else { "NOLOGIN" })
}

/// Drops a role.
pub fn drop_role(role: &PgIdent) -> String {
    format!("DROP ROLE IF EXISTS {}", quote_ident(role.as_str()))
}

/// Creates (or, when it exists, resets) the admin role of the embedded cluster: may log in,
/// create databases and roles, nothing more. The password travels as a SCRAM verifier.
pub fn admin_role(role: &str, exists: bool, scram_verifier: &str) -> String {
    format!(
        "{} ROLE {} LOGIN CREATEDB CREATEROLE PASSWORD {}",
        if exists { "ALTER" } else { "CREATE" },
        quote_ident(role),
        quote_literal(scram_verifier)
    )
}

/// `CREATE DATABASE` from `template0` owned by `owner` (the embedded catalog database).
pub fn create_database_owned_by(database: &str, owner: &str) -> String {
    format!("CREATE DATABASE {} OWNER {} TEMPLATE template0", quote_ident(database), quote_ident(owner))
}

/// Nobody but `keep` (and superusers) may connect to `database` any more.
pub fn close_database(database: &str, keep: &str) -> String {
    let db = quote_ident(database);
    format!(
        "REVOKE CONNECT ON DATABASE {db} FROM PUBLIC; GRANT CONNECT ON DATABASE {db} TO {}",
        quote_ident(keep)
    )
}

/// Stops a tenant role from working: the admin becomes a member (to end its sessions), its
/// sessions are ended, it loses LOGIN, and sessions that slipped in meanwhile are ended again.
/// Ending sessions first matters: a tenant holding its own role row locked (`BEGIN; ALTER
/// ROLE self PASSWORD ...`) would otherwise block `NOLOGIN` for ever. Each attempt is bounded
/// by the admin session's `lock_timeout` and retried a few times. Returns the sessions ended.
pub async fn close_role(
    admin: &tokio_postgres::Client,
    role: &PgIdent,
    server: &crate::admin::AdminTarget,
) -> Result<i64, tokio_postgres::Error> {
    admin.batch_execute(&grant_membership(role, &server.user)).await?;
    // A cancel request that cannot be made (its TLS settings failing meanwhile) is logged by
    // the guard when it is sent.
    let connector = server.tls.connector_unchecked(&server.host, server.port);
    let guard = crate::pg::CancelOnDrop::arm(admin, connector);
    let mut ended: i64 = 0;
    let mut attempt = 0;
    loop {
        attempt += 1;
        ended += end_sessions(admin, role).await?;
        match admin.batch_execute(&set_login(role, false)).await {
            Ok(()) => break,
            Err(e) if attempt < 5 && is_lock_wait(&e) => {
                tracing::warn!(role = %role, attempt, "NOLOGIN waited on a lock the tenant holds; ending its sessions again");
            }
            Err(e) => return Err(e),
        }
    }
    ended += end_sessions(admin, role).await?;
    guard.disarm();
    Ok(ended)
}

/// Row count and checksum of one table's rows, run as the table's owner with
/// `row_security = off` like `pg_dump`: a move compares the source with the copy with it.
/// The checksum is the sum, as exact numerics, of the two 64-bit halves of every row's `md5`
/// (the row as text): 128 bits per row like an `md5` of the sorted rows, but with no sort,
/// and an aggregate PostgreSQL may spread over parallel workers. A sum (unlike a xor) still
/// tells a duplicated row. Schema and table names are quoted.
pub fn table_checksum(schema: &str, table: &str) -> String {
    let half = |from: u8| {
        format!(
            "pg_catalog.sum(pg_catalog.concat('x', pg_catalog.substr(h, {from}, 16))::pg_catalog.bit(64)\
             ::pg_catalog.int8::pg_catalog.numeric)"
        )
    };
    format!(
        "SELECT pg_catalog.count(*), COALESCE(pg_catalog.concat({}, '/', {}), '') \
         FROM (SELECT pg_catalog.md5(r::pg_catalog.text) AS h FROM ONLY {}.{} r) AS hashed",
        half(1),
        half(17),
        quote_ident(schema),
        quote_ident(table)
    )
}

/// The state of a sequence (`last_value`, `is_called`); names quoted.
pub fn sequence_state(schema: &str, sequence: &str) -> String {
    format!("SELECT last_value, is_called FROM {}.{}", quote_ident(schema), quote_ident(sequence))
}

/// The latest version in a tenant database's own migration history table (in `public`).
pub fn history_version(table: &str) -> String {
    format!("SELECT COALESCE(pg_catalog.max(version), 0)::pg_catalog.int4 FROM public.{}", quote_ident(table))
}

/// Acts as the tenant role inside its database, with row security off (an error instead of
/// a tenant's policy running): how the admin reads a tenant's rows.
pub fn act_as_tenant(role: &PgIdent) -> String {
    format!("SET ROLE {}; SET row_security = off", quote_ident(role.as_str()))
}

/// True for a wait cut short by `lock_timeout` or `statement_timeout`.
pub fn is_lock_wait(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.code().is_some_and(|c| *c == SqlState::LOCK_NOT_AVAILABLE || *c == SqlState::QUERY_CANCELED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("acme"), "\"acme\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_ident("x\"; DROP DATABASE y; --"), "\"x\"\"; DROP DATABASE y; --\"");
    }

    #[test]
    fn the_creators_grant_is_made_again_with_the_settings_options() {
        let role = PgIdent::from_catalog("t_acme").unwrap();
        assert_eq!(regrant_to_creator(&role, ""), "");
        assert_eq!(
            regrant_to_creator(&role, "set"),
            "GRANT \"t_acme\" TO CURRENT_USER WITH INHERIT false, SET true"
        );
        assert_eq!(
            regrant_to_creator(&role, " Inherit, set "),
            "GRANT \"t_acme\" TO CURRENT_USER WITH INHERIT true, SET true"
        );
        let around = as_fresh_tenant(&role, &role, 0, "inherit");
        assert!(around.first.contains("TO CURRENT_USER WITH SET TRUE;"), "{}", around.first);
        assert!(around.after.ends_with("WITH INHERIT true, SET false"), "{}", around.after);
        assert_eq!(as_fresh_tenant(&role, &role, 0, "").after, "REVOKE \"t_acme\" FROM CURRENT_USER");
    }

    #[test]
    fn literals_are_quoted() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\'b"), " E'a\\\\''b'");
    }

    #[test]
    fn ddl_uses_quoted_names() {
        let role = PgIdent::from_catalog("tenant_acme").unwrap();
        let id = Uuid::nil();
        assert_eq!(
            comment_on_role(&role, id),
            "COMMENT ON ROLE \"tenant_acme\" IS 'tenantd:00000000-0000-0000-0000-000000000000'"
        );
        assert!(create_role(&role, "SCRAM-SHA-256$4096:abc").contains("PASSWORD 'SCRAM-SHA-256$4096:abc'"));
    }
}
