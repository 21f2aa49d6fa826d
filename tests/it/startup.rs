//! Starting tenantd: the embedded default from an empty directory, catalog migrations when
//! several processes start at once, and configuration mistakes refused with exit code 2.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use crate::common::{cli, shared_cluster, traversable_tempdir};

/// Starts `tenantd serve` in `dir` and returns the child and the API base URL from its banner.
fn start_embedded(dir: &std::path::Path) -> (Child, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenantd"));
    for (name, _) in std::env::vars().filter(|(k, _)| k.starts_with("TENANTD_")) {
        cmd.env_remove(name);
    }
    let mut child = cmd
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn tenantd serve");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while let Some(Ok(line)) = lines.next() {
        if let Some(url) = line.trim().strip_prefix("API:") {
            // Keep reading so the daemon's stdout stays open.
            std::thread::spawn(move || lines.for_each(drop));
            return (child, url.trim().to_owned());
        }
    }
    panic!("tenantd serve exited without printing its API address: {:?}", child.wait());
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    child.wait().unwrap()
}

fn postgres_running_in(dir: &std::path::Path) -> bool {
    let pid_file = dir.join("tenantd-data/pg/data/postmaster.pid");
    std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|t| t.lines().next().map(str::to_owned))
        .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
}

async fn list_servers(base: &str, token: &str) -> serde_json::Value {
    reqwest::Client::new()
        .get(format!("{base}/v1/servers"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn embedded_default_starts_from_nothing_and_reuses_its_data() {
    let dir = traversable_tempdir();
    let (mut child, base) = start_embedded(dir.path());
    let data = dir.path().join("tenantd-data");
    let health = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);

    let token = std::fs::read_to_string(data.join("admin-token")).unwrap();
    let key = std::fs::read_to_string(data.join("master-key")).unwrap();
    for file in ["admin-token", "master-key", "pg-admin-password"] {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(data.join(file)).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{file} must be private");
    }
    let servers = list_servers(&base, token.trim()).await;
    assert_eq!(servers[0]["name"], "local", "{servers}");
    assert_eq!(servers[0]["health"], "healthy", "{servers}");
    assert_eq!(servers[0]["admin_user"], "tenantd_admin");

    // The CLI finds the running embedded daemon's catalog by itself.
    let listed = cli(&["server", "list"], &BTreeMap::new(), Some(dir.path())).await;
    assert_eq!(listed.code, 0, "{listed:?}");
    assert!(listed.stdout.contains("local"), "{}", listed.stdout);

    let status = terminate(&mut child);
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    assert!(!postgres_running_in(dir.path()), "PostgreSQL stopped with tenantd");
    let stopped = cli(&["server", "list"], &BTreeMap::new(), Some(dir.path())).await;
    assert_eq!(stopped.code, 1);
    assert!(stopped.stderr.contains("start `tenantd serve` first"), "{}", stopped.stderr);

    // Second start: same key, same token, same catalog.
    let (mut child, base) = start_embedded(dir.path());
    assert_eq!(std::fs::read_to_string(data.join("master-key")).unwrap(), key);
    let servers = list_servers(&base, token.trim()).await;
    assert_eq!(servers.as_array().unwrap().len(), 1, "{servers}");
    assert_eq!(servers[0]["name"], "local");
    assert!(terminate(&mut child).success());
    assert!(!postgres_running_in(dir.path()));
}

#[tokio::test]
async fn catalog_migrations_are_safe_when_processes_start_together() {
    let cluster = shared_cluster();
    let db = cluster.create_database("race").await;
    let env = BTreeMap::from([
        ("TENANTD_CATALOG_URL".to_owned(), cluster.admin_url(&db)),
        (
            "TENANTD_MASTER_KEY".to_owned(),
            secrecy::ExposeSecret::expose_secret(&tenantd::crypto::generate_master_key()).to_owned(),
        ),
    ]);
    let runs = (0..4).map(|_| cli(&["server", "list", "--json"], &env, None));
    for out in futures::future::join_all(runs).await {
        assert_eq!(out.code, 0, "{out:?}");
        assert_eq!(out.stdout.trim(), "[]");
    }
    let again = cli(&["server", "list"], &env, None).await;
    assert_eq!(again.code, 0, "re-running the migrations is a no-op: {again:?}");
    let client = crate::common::connect(&cluster.admin_url(&db)).await.unwrap();
    let applied: i64 =
        client.query_one("SELECT count(*) FROM tenantd.schema_history", &[]).await.unwrap().get(0);
    let expected = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/schema")).unwrap().count() as i64;
    assert_eq!(applied, expected, "each catalog migration applied exactly once");
    let outside: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'public' AND c.relkind = 'r'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(outside, 0, "tenantd keeps to schema tenantd");
}

#[tokio::test]
async fn configuration_mistakes_exit_2_naming_the_setting() {
    let cluster = shared_cluster();
    let dir = traversable_tempdir();
    let file = dir.path().join("tenantd.toml");
    std::fs::write(&file, "[workers]\nconcurency = 2\n").unwrap();
    let file_arg = file.to_str().unwrap();
    let url = cluster.admin_url("postgres");
    let key = "TENANTD_MASTER_KEY";
    let good_key = secrecy::ExposeSecret::expose_secret(&tenantd::crypto::generate_master_key()).to_owned();
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, String)>, &'a str);
    let cases: Vec<Case> = vec![
        (vec!["--config", file_arg, "server", "list"], vec![], "concurency"),
        (
            vec!["server", "list"],
            vec![("TENANTD_WORKERS_CONCURRENCY", "many".into())],
            "TENANTD_WORKERS_CONCURRENCY",
        ),
        (
            vec!["server", "list"],
            vec![("TENANTD_WORKERS_CONCURENCY", "2".into())],
            "TENANTD_WORKERS_CONCURENCY",
        ),
        (vec!["server", "list"], vec![("TENANTD_CATALOG_URL", url.clone())], key),
        (
            vec!["server", "list"],
            vec![("TENANTD_CATALOG_URL", url.clone()), (key, "dG9vIHNob3J0".into())],
            key,
        ),
        (
            vec!["serve"],
            vec![("TENANTD_CATALOG_URL", url.clone()), (key, good_key.clone())],
            "TENANTD_ADMIN_TOKEN",
        ),
        (
            vec!["serve"],
            vec![
                ("TENANTD_CATALOG_URL", url.clone()),
                (key, good_key.clone()),
                ("TENANTD_ADMIN_TOKEN", "too-short-to-guard-anything".into()),
            ],
            "TENANTD_ADMIN_TOKEN",
        ),
        (
            vec!["server", "list"],
            vec![("TENANTD_CATALOG_URL", "postgres://a:b@h:notaport/x".into()), (key, good_key)],
            "TENANTD_CATALOG_URL",
        ),
        (vec!["serve", "--listen", "not-an-address"], vec![], "listen"),
    ];
    for (args, vars, named) in cases {
        let env: BTreeMap<String, String> = vars.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        let out = cli(&args, &env, Some(dir.path())).await;
        assert_eq!(out.code, 2, "{args:?} {env:?}: {out:?}");
        let line = out.stderr.trim();
        assert!(line.contains(named), "{args:?}: {line}");
        assert_eq!(line.lines().count(), 1, "one line: {line}");
        assert!(!line.contains(":b@"), "no password echoed: {line}");
    }
    assert!(!dir.path().join("tenantd-data").exists(), "nothing was created");
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_without_secrets() {
    let mut app = crate::common::spawn_app().await;
    app.stop().await; // the CLI process provisions, and logs, by itself
    let mut env = app.cli_env();
    env.insert("TENANTD_LOG_FORMAT".into(), "json".into());
    let debug = |mut env: BTreeMap<String, String>| {
        env.insert("RUST_LOG".into(), "debug".into());
        env
    };
    // A successful provisioning at debug level: every step, every connection.
    let made = cli_env_override(&["tenant", "create", "logged", "--wait", "60"], &debug(env.clone())).await;
    assert_eq!(made.code, 0, "{made:?}");
    let token = made
        .stderr
        .lines()
        .find_map(|l| l.split("store it now): ").nth(1))
        .expect("token printed once")
        .to_owned();
    let details = cli(&["tenant", "connection", "logged", "--json"], &env, None).await;
    let details: serde_json::Value = serde_json::from_str(&details.stdout).unwrap();
    let role_password = details["password"].as_str().unwrap().to_owned();
    // A failing one: its error is logged at ERROR.
    let su = shared_cluster().superuser("postgres").await;
    su.batch_execute(&format!("CREATE DATABASE {}blocked", app.settings.names.prefix)).await.unwrap();
    let failed =
        cli_env_override(&["tenant", "create", "blocked", "--wait", "30"], &debug(env.clone())).await;
    assert_eq!(failed.code, 1, "{failed:?}");

    let secrets = [
        token.clone(),
        role_password,
        secrecy::ExposeSecret::expose_secret(&app.master_key).to_owned(),
        secrecy::ExposeSecret::expose_secret(&shared_cluster().admin_password).to_owned(),
    ];
    let mut lines = 0;
    for out in [&made, &failed] {
        for line in out.stderr.lines().filter(|l| l.starts_with('{')) {
            lines += 1;
            let parsed: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            assert!(parsed["level"].is_string(), "{line}");
            for secret in &secrets {
                assert!(!line.contains(secret.as_str()), "a secret in a log line: {line}");
            }
        }
    }
    assert!(lines > 20, "debug logging exercised ({lines} lines)");
    assert!(
        failed.stderr.lines().any(|l| l.contains("\"ERROR\"") && l.contains("not this tenant")),
        "{}",
        failed.stderr
    );
}

/// Runs the CLI with `RUST_LOG` from `env` (the harness forces `warn` otherwise).
async fn cli_env_override(args: &[&str], env: &BTreeMap<String, String>) -> crate::common::CliOutput {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tenantd"));
    for (name, _) in std::env::vars().filter(|(k, _)| k.starts_with("TENANTD_")) {
        cmd.env_remove(name);
    }
    let out = cmd.args(args).envs(env).stdin(std::process::Stdio::null()).output().await.unwrap();
    crate::common::CliOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
