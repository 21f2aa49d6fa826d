//! The files in `deploy/` stay honest: they parse, every `TENANTD_*` they name is a real
//! setting (with values the daemon accepts), the manifests have the shape README promises,
//! and every metric the alert rules and the dashboard name is served by a running daemon.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use serde_yaml::Value as Yaml;
use tenantd::config::{KNOBS, OTHER_ENV, Overrides, Settings};

use crate::common::{ProcessDaemon, spawn_app};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// Every file under `deploy/`, with its text.
fn deploy_files() -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    let mut stack = vec![deploy_dir()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(text) = std::fs::read_to_string(&path) {
                files.push((path, text));
            }
        }
    }
    files.sort();
    files
}

/// Every document of a YAML file (Kubernetes files may hold several).
fn yaml_documents(path: &Path) -> Vec<Yaml> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            let mut value: Yaml = serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
            // Compose files share blocks with `<<: *anchor`.
            value.apply_merge().unwrap_or_else(|e| panic!("{}: merge keys: {e}", path.display()));
            value
        })
        .collect()
}

/// Words of the form `prefix[a-zA-Z0-9_]*` in `text`.
fn words_with_prefix(text: &str, prefix: &str, upper: bool) -> BTreeSet<String> {
    let allowed = |c: char| {
        c == '_' || c.is_ascii_digit() || if upper { c.is_ascii_uppercase() } else { c.is_ascii_lowercase() }
    };
    let mut found = BTreeSet::new();
    for (at, _) in text.match_indices(prefix) {
        if text[..at].chars().next_back().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let word: String = text[at..].chars().take_while(|c| allowed(*c)).collect();
        if word.len() > prefix.len() {
            found.insert(word);
        }
    }
    found
}

#[test]
fn deploy_yaml_and_json_files_parse() {
    let mut parsed = 0;
    for (path, text) in deploy_files() {
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => {
                assert!(!yaml_documents(&path).is_empty(), "{} is empty", path.display());
                parsed += 1;
            }
            Some("json") => {
                serde_json::from_str::<serde_json::Value>(&text)
                    .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
                parsed += 1;
            }
            _ => {}
        }
    }
    assert!(parsed >= 10, "deploy/ has compose, Kubernetes and monitoring files ({parsed} parsed)");
}

#[test]
fn every_tenantd_variable_in_deploy_is_a_setting() {
    let known: BTreeSet<&str> = KNOBS.iter().map(|k| k.env).chain(OTHER_ENV.iter().copied()).collect();
    let mut unknown = Vec::new();
    let mut named = 0;
    for (path, text) in deploy_files() {
        for name in words_with_prefix(&text, "TENANTD_", true) {
            named += 1;
            if !known.contains(name.as_str()) {
                unknown.push(format!("{}: {name}", path.display()));
            }
        }
    }
    assert!(unknown.is_empty(), "not settings of tenantd (config.rs KNOBS):\n{}", unknown.join("\n"));
    assert!(named > 10, "deploy/ names the settings it uses");

    // The literal values given to the daemon are ones it accepts.
    let deployment = &yaml_documents(&deploy_dir().join("kubernetes/deployment.yaml"))[0];
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let mut env: BTreeMap<String, String> = container["env"]
        .as_sequence()
        .expect("env list")
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_owned(), e["value"].as_str().unwrap().to_owned()))
        .collect();
    let compose = &yaml_documents(&deploy_dir().join("compose.yaml"))[0];
    let compose_env =
        compose["services"]["tenantd-1"]["environment"].as_mapping().expect("tenantd-1 environment");
    for (k, v) in compose_env {
        let (k, v) = (k.as_str().unwrap(), v.as_str().unwrap());
        if !v.contains("${") {
            env.insert(k.to_owned(), v.to_owned());
        }
    }
    let settings = Settings::load(&Overrides::default(), &env).unwrap_or_else(|e| panic!("{env:?}: {e}"));
    assert_eq!(settings.pgbouncer.port, 6432);
}

#[test]
fn manifests_have_the_promised_shape() {
    let compose = &yaml_documents(&deploy_dir().join("compose.yaml"))[0];
    for service in ["catalog", "pg1", "pg2", "pgbouncer", "tenantd-1", "tenantd-2"] {
        assert!(compose["services"][service].is_mapping(), "compose.yaml lacks service {service}");
    }

    let k8s = deploy_dir().join("kubernetes");
    let kustomization = &yaml_documents(&k8s.join("kustomization.yaml"))[0];
    let mut kinds = BTreeMap::new();
    for resource in kustomization["resources"].as_sequence().unwrap() {
        let file = k8s.join(resource.as_str().unwrap());
        for doc in yaml_documents(&file) {
            let name = doc["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            kinds.entry(doc["kind"].as_str().unwrap().to_owned()).or_insert_with(Vec::new).push((name, doc));
        }
    }
    let find = |kind: &str, name: &str| -> &Yaml {
        &kinds
            .get(kind)
            .and_then(|v| v.iter().find(|(n, _)| n == name))
            .unwrap_or_else(|| panic!("no {kind} {name}"))
            .1
    };
    let deployment = find("Deployment", "tenantd");
    assert_eq!(deployment["spec"]["replicas"].as_u64(), Some(2));
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["livenessProbe"]["httpGet"]["path"].as_str(), Some("/healthz"));
    assert_eq!(container["readinessProbe"]["httpGet"]["path"].as_str(), Some("/readyz"));
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(container["securityContext"]["allowPrivilegeEscalation"].as_bool(), Some(false));
    let secret = find("Secret", "tenantd");
    for key in ["TENANTD_MASTER_KEY", "TENANTD_ADMIN_TOKEN"] {
        assert!(secret["stringData"][key].is_string(), "the Secret holds {key}");
    }
    assert_eq!(container["envFrom"][0]["secretRef"]["name"].as_str(), Some("tenantd"));
    find("Service", "tenantd");
    assert_eq!(find("PodDisruptionBudget", "tenantd")["spec"]["minAvailable"].as_u64(), Some(1));
    find("NetworkPolicy", "tenantd");

    let rules = &yaml_documents(&deploy_dir().join("monitoring/alerts.yaml"))[0];
    let alerts: Vec<&str> = rules["groups"][0]["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| {
            assert!(r["expr"].is_string(), "{r:?}");
            r["alert"].as_str().unwrap()
        })
        .collect();
    for alert in [
        "TenantdTenantInError",
        "TenantdProvisioningFailures",
        "TenantdServerUnhealthy",
        "TenantdBackupsFailing",
    ] {
        assert!(alerts.contains(&alert), "alert rules lack {alert}");
    }
}

#[tokio::test]
async fn every_metric_in_the_alert_rules_and_dashboard_is_served() {
    let mut referenced = BTreeSet::new();
    for file in ["monitoring/alerts.yaml", "monitoring/grafana-dashboard.json"] {
        let text = std::fs::read_to_string(deploy_dir().join(file)).unwrap();
        referenced.extend(words_with_prefix(&text, "tenantd_", false));
    }
    assert!(referenced.len() >= 8, "{referenced:?}");

    // A real `tenantd serve` process (its own metrics only), after one tenant and one request.
    let mut app = spawn_app().await;
    app.stop().await;
    let daemon = ProcessDaemon::start(&app, &[("TENANTD_WORKERS_HEALTH_INTERVAL", "500ms")]).await;
    let (status, body) =
        daemon.post(&app.admin_token, "/v1/tenants?wait=50", &json!({ "slug": "metered" })).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["status"], "READY", "{body}");
    let http = reqwest::Client::new();
    // Gauges of the health task appear within its first rounds.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = http.get(format!("{}/metrics", daemon.base)).send().await.unwrap().text().await.unwrap();
        let served: BTreeSet<String> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .map(str::to_owned)
            .collect();
        let missing: Vec<&String> = referenced.difference(&served).collect();
        if missing.is_empty() {
            assert!(served.contains("tenantd_provision_failures_total"), "alerted counters start at zero");
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "named in deploy/monitoring but not served by a running daemon: {missing:?}\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
