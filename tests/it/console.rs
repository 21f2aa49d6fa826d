//! The admin console in a real headless Chromium (Debian's `chromium`, driven by Playwright
//! from `target/py-venv`, which `.ci/run` installs): sign in, watch a tenant created through
//! the API appear, open it, see its events; a screenshot is left in
//! `target/console-screenshot.png`.

use std::path::PathBuf;
use std::time::Duration;

use crate::common::spawn_app;

fn python() -> PathBuf {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/py-venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run .ci/run, or python3 -m venv target/py-venv && \
         target/py-venv/bin/pip install -r tests/py/requirements.txt",
        python.display()
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).is_file(),
        "{chromium} is missing: sudo apt-get install -y chromium (or set CHROMIUM)"
    );
    python
}

#[tokio::test]
async fn the_console_page_is_served_without_a_token_under_a_strict_policy() {
    let app = spawn_app().await;
    for (path, kind) in
        [("/ui", "text/html"), ("/ui/console.js", "text/javascript"), ("/ui/console.css", "text/css")]
    {
        let response = app.http.get(format!("{}{path}", app.base)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers();
        assert!(headers["content-type"].to_str().unwrap().starts_with(kind), "{path}");
        let policy = headers["content-security-policy"].to_str().unwrap();
        assert!(
            policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"),
            "{policy}"
        );
        assert!(!policy.contains("unsafe-inline"), "{policy}");
    }
    let page = app.http.get(format!("{}/ui", app.base)).send().await.unwrap().text().await.unwrap();
    assert!(page.contains(r#"type="password""#), "the token goes in a password field");
    assert!(!page.contains("<script>"), "no inline script");
}

#[tokio::test]
async fn the_console_signs_in_and_follows_a_new_tenant_in_chromium() {
    let python = python();
    let app = spawn_app().await;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let screenshot = root.join("target/console-screenshot.png");
    let _removed = std::fs::remove_file(&screenshot);
    let run = tokio::process::Command::new(python)
        .arg(root.join("tests/py/console_test.py"))
        .args([app.base.as_str(), "console-shop", screenshot.to_str().unwrap()])
        .env("TENANTD_TEST_ADMIN_TOKEN", &app.admin_token)
        .kill_on_drop(true)
        .output();
    let out =
        tokio::time::timeout(Duration::from_secs(180), run).await.expect("console test timed out").unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && stdout.contains("console ok"), "stdout: {stdout}\nstderr: {stderr}");
    let png = std::fs::read(&screenshot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
}
