//! Local PostgreSQL clusters: finding the server binaries, `initdb`, starting and stopping.
//!
//! Used by the embedded default (`tenantd serve` with no catalog URL) and by the test
//! harness. A started cluster is tied to the process that started it: `postgres` runs under a
//! small `sh` supervisor whose stdin is a pipe from us. When we stop it, or when our process
//! dies for any reason (even SIGKILL), the pipe closes and the supervisor asks PostgreSQL for a
//! fast shutdown, so no orphan cluster is ever left behind. The supervisor runs in its own
//! process group, so a Ctrl-C on the terminal reaches tenantd (which shuts down in order) and
//! not PostgreSQL directly.
//!
//! When running as root, `initdb` and `postgres` run as the `postgres` OS user, which must be
//! able to traverse every parent directory of the cluster.

use std::io::Write;
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};

/// How to install the server binaries; part of every "not found" message.
pub const INSTALL_HINT: &str = "install the PostgreSQL server binaries (Debian/Ubuntu: \
    `sudo apt-get install -y postgresql`; they land in /usr/lib/postgresql/<version>/bin), put \
    them on PATH, or set TENANTD_CATALOG_URL to use an existing PostgreSQL";

/// A cluster problem, with enough context to act on.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No `initdb`/`postgres` found anywhere we look.
    #[error(
        "PostgreSQL server binaries not found (looked on PATH, in `pg_config --bindir` and \
             under /usr/lib/postgresql/*/bin): {INSTALL_HINT}"
    )]
    BinariesNotFound,
    /// A file or directory operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Running as root but there is no `postgres` OS user to run the cluster as.
    #[error(
        "running as root, but there is no `postgres` OS user to run PostgreSQL as: \
             create one (`useradd --system postgres`) or run tenantd as an ordinary user"
    )]
    NoPostgresUser,
    /// The `postgres` OS user cannot reach the cluster directory.
    #[error(
        "the postgres OS user cannot traverse {0}: make it and its parents traversable \
             (chmod o+x) or set TENANTD_DATA_DIR to a path under /var/lib or /tmp"
    )]
    NotTraversable(PathBuf),
    /// A PostgreSQL program failed.
    #[error("{program} failed: {output}")]
    Program {
        /// The program.
        program: String,
        /// Its last lines of output.
        output: String,
    },
    /// PostgreSQL did not accept connections in time.
    #[error("PostgreSQL did not start within {seconds}s; last log lines: {log}")]
    StartTimeout {
        /// Seconds waited.
        seconds: u64,
        /// Tail of the server log.
        log: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Io { what, source }
}

/// The directory holding `initdb`, `postgres`, `pg_isready`, `pg_dump`, ….
#[derive(Debug, Clone)]
pub struct PgBinaries {
    bindir: PathBuf,
}

impl PgBinaries {
    /// Finds the binaries: `initdb` on PATH, then `pg_config --bindir`, then the newest
    /// `/usr/lib/postgresql/<version>/bin`.
    pub fn locate() -> Result<Self, ClusterError> {
        let candidates = path_bindir().into_iter().chain(pg_config_bindir()).chain(debian_bindirs());
        for dir in candidates {
            if dir.join("initdb").is_file() && dir.join("postgres").is_file() {
                return Ok(Self { bindir: dir });
            }
        }
        Err(ClusterError::BinariesNotFound)
    }

    /// Path of one program in the directory.
    pub fn program(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }

    /// The directory itself.
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }
}

fn path_bindir() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find_map(|dir| {
        let initdb = dir.join("initdb");
        // Debian's /usr/bin wrappers are not the real binaries; follow symlinks to the real dir.
        let real = std::fs::canonicalize(&initdb).ok()?;
        real.parent().map(Path::to_path_buf)
    })
}

fn pg_config_bindir() -> Option<PathBuf> {
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    out.status.success().then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn debian_bindirs() -> Vec<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let v = e.file_name().to_str()?.parse::<u32>().ok()?;
                    Some((v, e.path().join("bin")))
                })
                .collect()
        })
        .unwrap_or_default();
    versions.sort_by_key(|v| std::cmp::Reverse(v.0));
    versions.into_iter().map(|(_, p)| p).collect()
}

/// The OS user that runs the cluster: ourselves, or `postgres` when we are root.
#[derive(Debug, Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
    switch: bool,
}

impl RunAs {
    fn detect() -> Result<Self, ClusterError> {
        if !nix::unistd::geteuid().is_root() {
            let (uid, gid) = (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw());
            return Ok(Self { uid, gid, switch: false });
        }
        let user =
            nix::unistd::User::from_name("postgres").ok().flatten().ok_or(ClusterError::NoPostgresUser)?;
        Ok(Self { uid: user.uid.as_raw(), gid: user.gid.as_raw(), switch: true })
    }

    fn command(&self, program: impl AsRef<std::ffi::OsStr>, cwd: &Path) -> Command {
        let mut cmd = Command::new(program);
        // Only what the server programs need: none of the daemon's secrets.
        cmd.current_dir(cwd).env_clear().env("LC_ALL", "C.UTF-8");
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        if self.switch {
            cmd.uid(self.uid).gid(self.gid).env("HOME", cwd).env("USER", "postgres");
        }
        cmd
    }

    /// Creates `dir` (and parents) owned by the cluster user, mode 0700.
    fn make_dir(&self, dir: &Path) -> Result<(), ClusterError> {
        std::fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
        if self.switch {
            chown(dir, Some(self.uid), Some(self.gid))
                .map_err(io(format!("cannot give {} to the postgres user", dir.display())))?;
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io(format!("cannot set permissions on {}", dir.display())))
    }

    /// When switching users, every ancestor of `dir` must be traversable by others.
    fn check_traversable(&self, dir: &Path) -> Result<(), ClusterError> {
        if !self.switch {
            return Ok(());
        }
        for ancestor in dir.ancestors().skip(1) {
            let Ok(meta) = std::fs::metadata(ancestor) else {
                continue;
            };
            if meta.permissions().mode() & 0o001 == 0 {
                return Err(ClusterError::NotTraversable(ancestor.to_path_buf()));
            }
        }
        Ok(())
    }
}

/// Options of a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Name of the bootstrap superuser.
    pub superuser: String,
    /// Turn off fsync and friends: fast, for throwaway test clusters only.
    pub throwaway: bool,
    /// `max_connections`.
    pub max_connections: u32,
    /// Put the Unix socket in the data directory (when the path is short enough).
    pub socket_in_data_dir: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            superuser: "postgres".into(),
            throwaway: false,
            max_connections: 200,
            socket_in_data_dir: true,
        }
    }
}

/// A cluster directory: `<root>/data` holds PostgreSQL's files, `<root>/postgres.log` its log.
#[derive(Debug, Clone)]
pub struct Cluster {
    bin: PgBinaries,
    root: PathBuf,
    run_as: RunAs,
    options: ClusterOptions,
}

impl Cluster {
    /// Describes the cluster at `root` (nothing is created yet).
    pub fn new(
        bin: PgBinaries,
        root: impl Into<PathBuf>,
        options: ClusterOptions,
    ) -> Result<Self, ClusterError> {
        let root: PathBuf = root.into();
        let root = std::path::absolute(&root).map_err(io(format!("cannot resolve {}", root.display())))?;
        Ok(Self { bin, root, run_as: RunAs::detect()?, options })
    }

    /// The PostgreSQL data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// The server log file.
    pub fn log_file(&self) -> PathBuf {
        self.root.join("postgres.log")
    }

    /// True when `initdb` already ran here.
    pub fn is_initialized(&self) -> bool {
        self.data_dir().join("PG_VERSION").is_file()
    }

    /// Runs `initdb` with SCRAM authentication and the given superuser password.
    pub fn init(&self, superuser_password: &SecretString) -> Result<(), ClusterError> {
        self.run_as.check_traversable(&self.root)?;
        self.run_as.make_dir(&self.root)?;
        let pwfile = self.root.join(".initdb-pw");
        write_private(&pwfile, superuser_password.expose_secret())?;
        if self.run_as.switch {
            chown(&pwfile, Some(self.run_as.uid), Some(self.run_as.gid))
                .map_err(io("cannot give the password file to the postgres user"))?;
        }
        let mut cmd = self.run_as.command(self.bin.program("initdb"), &self.root);
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-U")
            .arg(&self.options.superuser)
            .arg("--auth=scram-sha-256")
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["-E", "UTF8", "--locale=C"]);
        if self.options.throwaway {
            cmd.arg("--no-sync");
        }
        let result = run(cmd, "initdb");
        let removed = std::fs::remove_file(&pwfile).map_err(io("cannot remove the initdb password file"));
        result.and(removed)
    }

    /// Starts PostgreSQL on 127.0.0.1:`port` and waits until it accepts connections.
    ///
    /// With `remove_when_stopped`, the supervisor deletes the whole cluster directory after
    /// PostgreSQL has stopped (throwaway clusters of tests).
    pub fn start(&self, port: u16, remove_when_stopped: bool) -> Result<RunningCluster, ClusterError> {
        self.run_as.check_traversable(&self.root)?;
        let socket_dir = self.data_dir();
        let socket = self.options.socket_in_data_dir && socket_dir.as_os_str().len() < 90;
        let mut settings = vec![
            "listen_addresses=127.0.0.1".to_owned(),
            format!("max_connections={}", self.options.max_connections),
            format!(
                "unix_socket_directories={}",
                if socket { socket_dir.display().to_string() } else { String::new() }
            ),
            "logging_collector=off".to_owned(),
        ];
        if self.options.throwaway {
            settings
                .extend(["fsync=off", "synchronous_commit=off", "full_page_writes=off"].map(String::from));
        }
        let mut cmd = self.run_as.command("/bin/sh", &self.root);
        cmd.arg("-c")
            .arg(SUPERVISOR)
            .arg("tenantd-pg-supervisor")
            .arg(self.bin.bindir())
            .arg(self.data_dir())
            .arg(self.log_file())
            .arg(if remove_when_stopped { self.root.as_os_str() } else { "".as_ref() })
            .arg("-p")
            .arg(port.to_string());
        for s in &settings {
            cmd.arg("-c").arg(s);
        }
        cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null()).process_group(0);
        let mut child = cmd.spawn().map_err(io("cannot start the PostgreSQL supervisor (/bin/sh)"))?;
        let stdin = child.stdin.take();
        let mut running = RunningCluster { child, stdin, port, log: self.log_file() };
        running.wait_ready(&self.bin, Duration::from_secs(60))?;
        Ok(running)
    }
}

/// Runs `postgres` in the background and stops it when our end of stdin closes.
/// Arguments: bindir, data dir, log file, directory to remove afterwards (or ""), then
/// postgres' own arguments.
const SUPERVISOR: &str = r#"
set -u
bindir=$1; data=$2; log=$3; cleanup=$4; shift 4
exec 3<&0
"$bindir/postgres" -D "$data" "$@" </dev/null 3<&- >>"$log" 2>&1 &
pg=$!
( read -r _ <&3; kill -INT "$pg" 2>/dev/null ) &
watcher=$!
exec 3<&-
wait "$pg"; rc=$?
kill "$watcher" 2>/dev/null
if [ -n "$cleanup" ]; then rm -rf "$cleanup"; fi
exit "$rc"
"#;

/// A started cluster. Dropping it stops PostgreSQL (without waiting); [`RunningCluster::stop`]
/// waits for a clean shutdown.
#[derive(Debug)]
pub struct RunningCluster {
    child: Child,
    stdin: Option<ChildStdin>,
    port: u16,
    log: PathBuf,
}

impl RunningCluster {
    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn wait_ready(&mut self, bin: &PgBinaries, timeout: Duration) -> Result<(), ClusterError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(ClusterError::Program {
                    program: format!("postgres (exit {status})"),
                    output: tail(&self.log),
                });
            }
            let ready = Command::new(bin.program("pg_isready"))
                .env_clear()
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string(), "-t", "1"])
                .status()
                .map_err(io("cannot run pg_isready"))?;
            if ready.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ClusterError::StartTimeout { seconds: timeout.as_secs(), log: tail(&self.log) });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Asks PostgreSQL for a fast shutdown and waits until it has stopped.
    pub fn stop(mut self) -> Result<(), ClusterError> {
        drop(self.stdin.take());
        let status = self.child.wait().map_err(io("cannot wait for PostgreSQL to stop"))?;
        // SIGINT is a clean fast shutdown: postgres exits 0.
        if status.success() {
            Ok(())
        } else {
            Err(ClusterError::Program {
                program: format!("postgres (exit {status})"),
                output: tail(&self.log),
            })
        }
    }
}

impl Drop for RunningCluster {
    fn drop(&mut self) {
        // Closing the pipe makes the supervisor stop PostgreSQL; nothing to wait for here.
        drop(self.stdin.take());
    }
}

/// Finds a free TCP port on 127.0.0.1 (the OS picks it; tiny race until PostgreSQL binds).
pub fn free_port() -> Result<u16, ClusterError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("cannot find a free port"))?;
    listener.local_addr().map(|a| a.port()).map_err(io("cannot find a free port"))
}

/// Writes a file readable only by its owner (mode 0600).
pub fn write_private(path: &Path, contents: &str) -> Result<(), ClusterError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(format!("cannot write {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io(format!("cannot set permissions on {}", path.display())))?;
    file.write_all(contents.as_bytes()).map_err(io(format!("cannot write {}", path.display())))
}

fn run(mut cmd: Command, program: &str) -> Result<(), ClusterError> {
    let out = cmd.output().map_err(io(format!("cannot run {program}")))?;
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    Err(ClusterError::Program { program: program.to_owned(), output: last_lines(&text, 8) })
}

fn tail(log: &Path) -> String {
    std::fs::read_to_string(log).map(|t| last_lines(&t, 8)).unwrap_or_else(|e| format!("(no log: {e})"))
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}
