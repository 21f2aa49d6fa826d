//! `pg_dump` and `pg_restore` for one tenant database.
//!
//! Dumps run as the server's admin role with `--role=<tenant role>` (the admin is made a
//! member of the tenant role, which a CREATEROLE admin may do for the roles it created): the
//! tenant role owns every object, so this dumps everything, and it works while the tenant is
//! suspended (its role cannot log in then). Restores run as the tenant role itself. The password
//! goes to the child process in a password file of its own (mode 0600, removed when the child
//! is done), never on its command line or in its environment. Dumps are custom-format, taken in one snapshot
//! (pg_dump's own transaction), written to a temporary file beside the target and renamed into
//! place only when complete, so a failed or interrupted dump (disk full included) leaves no
//! partial file behind.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use tokio::io::AsyncReadExt;

use crate::admin::AdminTarget;
use crate::markers::Ownership;
use crate::names::PgIdent;

/// A dump or restore problem.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// The client tool is not installed.
    #[error(
        "{0} not found: install the PostgreSQL client tools (Debian/Ubuntu: apt-get install postgresql-client)"
    )]
    ToolMissing(&'static str),
    /// The tool is older than the server.
    #[error(
        "{tool} is version {tool_version}, older than the server ({server_version}); install a newer client"
    )]
    TooOld {
        /// Tool.
        tool: &'static str,
        /// Its major version.
        tool_version: u32,
        /// The server's major version.
        server_version: u32,
    },
    /// The tool failed.
    #[error("{tool} failed: {message}")]
    Failed {
        /// Tool.
        tool: &'static str,
        /// Its last lines of stderr.
        message: String,
    },
    /// The dump file is not a pg_dump custom-format archive (or cannot be read).
    #[error("{path}: not a readable pg_dump archive: {message}")]
    BadArchive {
        /// File.
        path: String,
        /// What pg_restore said.
        message: String,
    },
    /// Local file trouble.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Preparing the server (membership grant) failed.
    #[error("{0}")]
    Server(String),
    /// The tenant's role is missing or not tenantd's: nothing is dumped.
    #[error("{0}")]
    NotOurs(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DumpError {
    let what = what.into();
    move |source| DumpError::Io { what, source }
}

/// Finds a PostgreSQL client program: on PATH, then `pg_config --bindir`, then the newest
/// `/usr/lib/postgresql/*/bin`.
pub fn tool(name: &'static str) -> Result<PathBuf, DumpError> {
    if let Ok(bin) = crate::pgcluster::PgBinaries::locate() {
        let path = bin.program(name);
        if path.is_file() {
            return Ok(path);
        }
    }
    let on_path = std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|c| c.is_file()));
    on_path.ok_or(DumpError::ToolMissing(name))
}

async fn major_version(tool_path: &Path, tool: &'static str) -> Result<u32, DumpError> {
    let out = crate::pg::child(tool_path)
        .arg("--version")
        .output()
        .await
        .map_err(io(format!("cannot run {}", tool_path.display())))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find_map(|w| w.split('.').next().and_then(|m| m.parse::<u32>().ok()))
        .ok_or_else(|| DumpError::Failed { tool, message: format!("unexpected --version output {text:?}") })
}

/// Makes the admin a member of the tenant role (so `--role` may SET ROLE to it) — only a role
/// that carries this tenant's marker — and returns the server's major version.
async fn prepare(admin: &AdminTarget, role: &PgIdent, tenant: uuid::Uuid) -> Result<u32, DumpError> {
    let client = admin.connect(None).await.map_err(|e| DumpError::Server(e.to_string()))?;
    let version: i32 = client
        .query_one("SELECT pg_catalog.current_setting('server_version_num')::pg_catalog.int4", &[])
        .await
        .map_err(|e| DumpError::Server(crate::pg::describe(&e)))?
        .get(0);
    let found = crate::markers::role(&client, tenant, role)
        .await
        .map_err(|e| DumpError::Server(crate::pg::describe(&e)))?;
    match found.ownership {
        Ownership::Ours => {}
        Ownership::Foreign(_) => {
            return Err(DumpError::NotOurs(format!(
                "role {role} is not this tenant's; tenantd does not use it"
            )));
        }
        Ownership::Absent => return Err(DumpError::NotOurs(format!("role {role} does not exist"))),
    }
    if !found.admin_is_member {
        client.batch_execute(&crate::tenant_sql::grant_membership(role, &admin.user)).await.map_err(|e| {
            DumpError::Server(format!(
                "cannot make the admin a member of {role}: {}",
                crate::pg::describe(&e)
            ))
        })?;
    }
    Ok(u32::try_from(version / 10_000).unwrap_or(0))
}

/// A client program logging in to `server` as `user` to `database`. Only what it needs is in
/// its environment: the password (never on the command line, where `ps` shows it) and the
/// connection parameters. The database name travels as `PGDATABASE`, which libpq never reads
/// as a connection string (a `--dbname` argument containing `=` would be one).
/// A `pg_dump`/`pg_restore` to run, with the password file it reads (removed when dropped,
/// so it lives as long as the child needs it).
struct Tool {
    cmd: tokio::process::Command,
    _passfile: tempfile::NamedTempFile,
}

fn command(
    tool_path: &Path,
    server: &AdminTarget,
    user: &str,
    password: &SecretString,
    database: &PgIdent,
) -> Result<Tool, DumpError> {
    use std::io::Write;
    // libpq's password file: `*` matches any host, port, database and user; `\` and `:`
    // inside the password are escaped. tempfile creates it readable by us only (0600), which
    // libpq insists on.
    let mut passfile = tempfile::Builder::new()
        .prefix(".tenantd-pgpass-")
        .tempfile()
        .map_err(io("cannot create a password file for the child process"))?;
    let escaped = password.expose_secret().replace('\\', "\\\\").replace(':', "\\:");
    passfile
        .write_all(format!("*:*:*:*:{escaped}\n").as_bytes())
        .and_then(|()| passfile.flush())
        .map_err(io("cannot write the password file for the child process"))?;
    let mut cmd = crate::pg::child(tool_path);
    cmd.env("PGPASSFILE", passfile.path())
        .env("PGHOST", &server.host)
        .env("PGPORT", server.port.to_string())
        .env("PGUSER", user)
        .env("PGDATABASE", database.as_str())
        .env("PGAPPNAME", "tenantd")
        .envs(server.tls.env())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    Ok(Tool { cmd, _passfile: passfile })
}

/// What a finished dump produced.
#[derive(Debug, Clone, Copy)]
pub struct Dumped {
    /// Bytes written.
    pub bytes: u64,
    /// Time taken.
    pub duration: Duration,
}

/// A `pg_dump` able to dump the tenant's server (not older than it), with the admin made
/// ready to dump as the tenant's role.
async fn pg_dump_for(admin: &AdminTarget, role: &PgIdent, tenant: uuid::Uuid) -> Result<PathBuf, DumpError> {
    let pg_dump = tool("pg_dump")?;
    let server_version = prepare(admin, role, tenant).await?;
    let tool_version = major_version(&pg_dump, "pg_dump").await?;
    if tool_version < server_version {
        return Err(DumpError::TooOld { tool: "pg_dump", tool_version, server_version });
    }
    Ok(pg_dump)
}

/// Dumps `database` (custom format) into `target`. The file appears only when complete.
pub async fn dump(
    admin: &AdminTarget,
    database: &PgIdent,
    role: &PgIdent,
    tenant: uuid::Uuid,
    target: &Path,
) -> Result<Dumped, DumpError> {
    let started = Instant::now();
    let pg_dump = pg_dump_for(admin, role, tenant).await?;
    // A dump holds all of a customer's data: a private (0600) temporary file beside the
    // target, which pg_dump fills and which is renamed into place only when complete. Until
    // then it is removed whatever happens — an error, a full disk, or this future being
    // dropped (a cancelled request, a shutdown), which also kills pg_dump.
    let dir = target.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let partial = tempfile::Builder::new()
        .prefix(".tenantd-dump-")
        .suffix(".partial")
        .tempfile_in(dir)
        .map_err(io(format!("cannot create a file in {}", dir.display())))?;
    let mut tool = command(&pg_dump, admin, &admin.user, &admin.password, database)?;
    let cmd = &mut tool.cmd;
    // A tenant holding a lock on its own tables fails its dump after a bounded wait instead
    // of freezing a backup run.
    cmd.args(["--format=custom", "--no-password", "--lock-wait-timeout=10s"])
        .arg(format!("--role={}", role.as_str()))
        .arg("--file")
        .arg(partial.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    run(tool, "pg_dump").await?;
    let file = partial.as_file();
    file.sync_all().map_err(io(format!("cannot sync {}", partial.path().display())))?;
    let bytes = file.metadata().map_err(io("cannot stat the dump"))?.len();
    partial.persist(target).map_err(|e| DumpError::Io {
        what: format!("cannot move the dump to {}", target.display()),
        source: e.error,
    })?;
    Ok(Dumped { bytes, duration: started.elapsed() })
}

/// Dumps `database` in directory format into `dir` (which must not exist yet) with `jobs`
/// parallel workers, as the admin with `--role=<tenant role>` like [`dump`] (for moves:
/// the tenant cannot log in meanwhile). One synchronised snapshot across the workers.
pub async fn dump_dir(
    admin: &AdminTarget,
    database: &PgIdent,
    role: &PgIdent,
    tenant: uuid::Uuid,
    dir: &Path,
    jobs: usize,
) -> Result<Dumped, DumpError> {
    let started = Instant::now();
    let pg_dump = pg_dump_for(admin, role, tenant).await?;
    let mut tool = command(&pg_dump, admin, &admin.user, &admin.password, database)?;
    let cmd = &mut tool.cmd;
    // Uncompressed: the directory is read back at once on this machine, and compressing
    // costs the pause of a move more CPU time than the bytes it saves.
    cmd.args(["--format=directory", "--compress=0", "--no-password", "--lock-wait-timeout=10s"])
        .arg(format!("--jobs={}", jobs.max(1)))
        .arg(format!("--role={}", role.as_str()))
        .arg("--file")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    run(tool, "pg_dump").await?;
    let bytes = dir_bytes(dir).map_err(io(format!("cannot read {}", dir.display())))?;
    Ok(Dumped { bytes, duration: started.elapsed() })
}

fn dir_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        total += entry?.metadata()?.len();
    }
    Ok(total)
}

/// Restores a directory-format dump into `database` with `jobs` parallel workers, logged in
/// as the tenant role itself like [`restore`] (never as the admin). Not in one transaction
/// (parallel restores cannot be): the caller restores into a staging database it drops on
/// failure.
///
/// The restore's sessions commit with `synchronous_commit = off` (no wait for each COPY's WAL
/// flush) and build indexes with a larger `maintenance_work_mem`. Nothing is lost by it: a
/// crash before the copy is verified and promoted shows up as a failed verification or a
/// restart of the copy, and the promotion's own (synchronous) commit flushes the WAL of
/// every earlier commit.
pub async fn restore_dir(
    server: &AdminTarget,
    database: &PgIdent,
    role: &PgIdent,
    password: &SecretString,
    dir: &Path,
    jobs: usize,
) -> Result<(), DumpError> {
    let pg_restore = tool("pg_restore")?;
    let mut tool = command(&pg_restore, server, role.as_str(), password, database)?;
    let cmd = &mut tool.cmd;
    cmd.args(["--format=directory", "--exit-on-error", "--no-owner", "--no-privileges", "--no-password"])
        .arg(format!("--jobs={}", jobs.max(1)))
        .arg(format!("--dbname={}", conninfo_dbname(database)))
        .env("PGOPTIONS", "-c synchronous_commit=off -c maintenance_work_mem=128MB")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    run(tool, "pg_restore").await
}

/// Creates a directory (and its parents) for dumps, private to us when new.
pub fn create_dir(dir: &Path) -> Result<(), DumpError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(format!("cannot create {}", dir.display())))
}

async fn run(mut run: Tool, tool: &'static str) -> Result<(), DumpError> {
    let mut child = run.cmd.spawn().map_err(io(format!("cannot start {tool}")))?;
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_string(&mut stderr).await.map_err(io(format!("cannot read {tool}'s output")))?;
    }
    let status = child.wait().await.map_err(io(format!("cannot wait for {tool}")))?;
    if status.success() {
        return Ok(());
    }
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let message = if lines.is_empty() {
        // Killed without a word: a signal (e.g. SIGXFSZ at a file size limit) or an exit code.
        status.to_string()
    } else {
        lines[lines.len().saturating_sub(5)..].join(" | ")
    };
    Err(DumpError::Failed { tool, message })
}

/// Checks that `file` is a readable custom-format archive, before anything is created.
pub async fn check_archive(file: &Path) -> Result<(), DumpError> {
    let pg_restore = tool("pg_restore")?;
    let out = crate::pg::child(&pg_restore)
        .arg("--list")
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(io("cannot run pg_restore"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(DumpError::BadArchive {
            path: file.display().to_string(),
            message: String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("").to_owned(),
        })
    }
}

/// Restores `file` into `database` in one transaction, logged in as the tenant role itself
/// (never as the admin: SQL in a dump, or tenant code run while loading it, must not be able to
/// `RESET ROLE` its way to the admin's rights). Every object is created by, so owned by, that
/// role; ownership and grants recorded in the dump are ignored.
pub async fn restore(
    server: &AdminTarget,
    database: &PgIdent,
    role: &PgIdent,
    password: &SecretString,
    file: &Path,
) -> Result<(), DumpError> {
    let pg_restore = tool("pg_restore")?;
    let mut tool = command(&pg_restore, server, role.as_str(), password, database)?;
    let cmd = &mut tool.cmd;
    // pg_restore connects only when given `--dbname`, which libpq reads as a connection
    // string when it holds `=`: give it one whose only key is the quoted database name, so no
    // name (checked to [a-z0-9_] anyway) can ever add a host or another parameter.
    cmd.args(["--single-transaction", "--exit-on-error", "--no-owner", "--no-privileges", "--no-password"])
        .arg(format!("--dbname={}", conninfo_dbname(database)))
        .arg(file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    run(tool, "pg_restore").await
}

/// `dbname='<name>'` as a libpq connection string, the value quoted (`\` and `'` escaped).
fn conninfo_dbname(database: &PgIdent) -> String {
    format!("dbname='{}'", database.as_str().replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The archive file name of a tenant: `<slug>-<id prefix>-<UTC timestamp>.dump`.
pub fn archive_name(slug: &str, id: uuid::Uuid) -> String {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    format!("{slug}-{}-{stamp}.dump", &id.simple().to_string()[..8])
}

/// Dumps a tenant's database into `dir/<archive name>` (the final archive before a drop);
/// returns the file and figures.
pub async fn archive(
    admin: &AdminTarget,
    db: &PgIdent,
    role: &PgIdent,
    dir: &Path,
    slug: &str,
    id: uuid::Uuid,
) -> Result<(PathBuf, Dumped), DumpError> {
    create_dir(dir)?;
    let file = dir.join(archive_name(slug, id));
    let dumped = dump(admin, db, role, id, &file).await?;
    Ok((file, dumped))
}
