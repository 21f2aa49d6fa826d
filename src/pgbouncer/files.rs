//! Rendering `pgbouncer.ini` and `userlist.txt`, and replacing them atomically.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};

use super::{Options, POOL_MODE, PgBouncerError, Route};

/// Name of the configuration file in the output directory.
pub const INI: &str = "pgbouncer.ini";
/// Name of the authentication file in the output directory.
pub const USERLIST: &str = "userlist.txt";

/// What one write did.
#[derive(Debug, Clone)]
pub struct Written {
    /// Path of `pgbouncer.ini`.
    pub ini: PathBuf,
    /// Path of `userlist.txt`.
    pub userlist: PathBuf,
    /// Tenants routed.
    pub tenants: usize,
    /// False when both files already said the same (nothing written, no reload).
    pub changed: bool,
}

/// True when PgBouncer reads `text` as one value without quotes (hosts, listen addresses).
pub(crate) fn is_plain_value(text: &str) -> bool {
    !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || "._-:/*".contains(c))
}

/// The text of `pgbouncer.ini`. Nothing in it changes unless the routes do, so an unchanged
/// catalog gives the same bytes (and no reload).
pub(crate) fn ini(options: &Options, auth_file: &Path, routes: &[Route]) -> String {
    let mut text = String::from(
        ";; Written by `tenantd pgbouncer config`; rewritten from the catalog, do not edit.\n\
         ;; One entry per READY tenant, named like its database; PgBouncer logs in to the server\n\
         ;; as the client's own role (SCRAM pass-through with the secret in auth_file).\n\
         [databases]\n",
    );
    for r in routes {
        text.push_str(&format!(
            "{} = host={} port={} dbname={} pool_size={}\n",
            r.database, r.host, r.port, r.database, r.pool_size
        ));
    }
    text.push_str(&format!(
        "\n[pgbouncer]\n\
         listen_addr = {}\n\
         listen_port = {}\n\
         auth_type = scram-sha-256\n\
         auth_file = {}\n\
         pool_mode = {POOL_MODE}\n\
         max_client_conn = 1000\n\
         ;; JDBC drivers send it; PgBouncer does not track it.\n\
         ignore_startup_parameters = extra_float_digits\n",
        options.listen_host,
        options.listen_port,
        auth_file.display()
    ));
    text
}

/// The text of `userlist.txt`: `"role" "SCRAM-SHA-256$..."` per line.
pub(crate) fn userlist(routes: &[Route]) -> SecretString {
    SecretString::from(routes.iter().map(Route::userlist_line).collect::<String>())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PgBouncerError + '_ {
    move |source| PgBouncerError::Io { path: path.display().to_string(), source }
}

/// Writes both files when their contents differ from what is there (userlist first, so the
/// ini never names a user the auth file lacks).
pub(crate) fn write(options: &Options, routes: &[Route]) -> Result<Written, PgBouncerError> {
    std::fs::create_dir_all(&options.out).map_err(io(&options.out))?;
    let dir = options.out.canonicalize().map_err(io(&options.out))?;
    let (ini_path, userlist_path) = (dir.join(INI), dir.join(USERLIST));
    let owner = match &options.owner {
        Some(name) => Some(lookup_owner(name)?),
        None => None,
    };
    let users = userlist(routes);
    let config = ini(options, &userlist_path, routes);
    let mut changed = replace(&userlist_path, users.expose_secret(), 0o600, owner)?;
    changed |= replace(&ini_path, &config, 0o644, owner)?;
    Ok(Written { ini: ini_path, userlist: userlist_path, tenants: routes.len(), changed })
}

fn lookup_owner(name: &str) -> Result<(nix::unistd::Uid, nix::unistd::Gid), PgBouncerError> {
    match nix::unistd::User::from_name(name) {
        Ok(Some(user)) => Ok((user.uid, user.gid)),
        Ok(None) => Err(PgBouncerError::Usage(format!("--owner: no OS user {name:?}"))),
        Err(e) => Err(PgBouncerError::Usage(format!("--owner: cannot look up {name:?}: {e}"))),
    }
}

/// Replaces `path` with `contents` (mode `mode`) unless it holds them already: a temporary
/// file beside it, synced, then renamed over it. Returns whether it wrote.
fn replace(
    path: &Path,
    contents: &str,
    mode: u32,
    owner: Option<(nix::unistd::Uid, nix::unistd::Gid)>,
) -> Result<bool, PgBouncerError> {
    if std::fs::read(path).is_ok_and(|old| old == contents.as_bytes()) {
        return Ok(false);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    // Created 0600: the secret is never readable by others, even before the rename.
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(io(dir))?;
    file.write_all(contents.as_bytes()).map_err(io(path))?;
    if let Some((uid, gid)) = owner {
        nix::unistd::fchown(file.as_file(), Some(uid), Some(gid))
            .map_err(|e| io(path)(std::io::Error::from(e)))?;
    }
    file.as_file().set_permissions(std::fs::Permissions::from_mode(mode)).map_err(io(path))?;
    file.as_file().sync_all().map_err(io(path))?;
    file.persist(path).map_err(|e| io(path)(e.error))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(db: &str) -> Route {
        Route {
            database: db.into(),
            host: "10.0.0.5".into(),
            port: 5432,
            role: db.into(),
            pool_size: 15,
            verifier: SecretString::from("SCRAM-SHA-256$4096:c2FsdA==$a:b"),
        }
    }

    fn options(dir: &Path) -> Options {
        Options {
            out: dir.to_owned(),
            listen_host: "127.0.0.1".into(),
            listen_port: 6432,
            server: None,
            pid_file: None,
            owner: None,
        }
    }

    #[test]
    fn ini_routes_each_tenant_in_transaction_mode() {
        let dir = tempfile::tempdir().unwrap();
        let text = ini(&options(dir.path()), Path::new("/x/userlist.txt"), &[route("t_acme")]);
        assert!(text.contains("t_acme = host=10.0.0.5 port=5432 dbname=t_acme pool_size=15\n"), "{text}");
        for line in ["pool_mode = transaction", "auth_type = scram-sha-256", "auth_file = /x/userlist.txt"] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        assert!(!text.contains("SCRAM-SHA-256$"), "no secret in the ini");
    }

    #[test]
    fn files_are_replaced_only_when_changed_and_userlist_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let o = options(dir.path());
        let first = write(&o, &[route("t_a")]).unwrap();
        assert!(first.changed);
        let mode = std::fs::metadata(&first.userlist).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            std::fs::read_to_string(&first.userlist).unwrap(),
            "\"t_a\" \"SCRAM-SHA-256$4096:c2FsdA==$a:b\"\n"
        );
        assert!(!write(&o, &[route("t_a")]).unwrap().changed, "same routes, same bytes");
        assert!(write(&o, &[route("t_a"), route("t_b")]).unwrap().changed);
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(Options::parse_listen("0.0.0.0:6432").unwrap(), ("0.0.0.0".into(), 6432));
        assert_eq!(Options::parse_listen("*:6432").unwrap(), ("*".into(), 6432));
        assert_eq!(Options::parse_listen("[::1]:6000").unwrap(), ("::1".into(), 6000));
        for bad in ["6432", "host:", "host:0", ":6432", "a b:1", "h:99999"] {
            assert!(Options::parse_listen(bad).is_err(), "{bad}");
        }
    }
}
