//! The crate's shape: every module uses only its own layer and the layers below, and the
//! top-level modules import each other without a circle (README, "Layout").

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Layers from the top (1) to the bottom (6); README's Layout section says the same.
const LAYERS: &[(usize, &[&str])] = &[
    (1, &["main", "cli", "startup", "bench"]),
    (2, &["api", "tasks"]),
    (3, &["app"]),
    (
        4,
        &[
            "provisioner",
            "lifecycle",
            "driver",
            "upgrade",
            "backups",
            "dumps",
            "tenants",
            "servers",
            "pools",
            "handles",
            "sqlhttp",
            "resolver",
            "quotas",
            "pgbouncer",
            "webhooks",
            "moves",
            "reconcile",
            "spares",
        ],
    ),
    (5, &["core", "target", "leases", "markers"]),
    (
        6,
        &[
            "catalog",
            "tenant_sql",
            "admin",
            "crypto",
            "names",
            "config",
            "steps",
            "placement",
            "tenant_migrations",
            "embedded",
            "pg",
            "pgcluster",
            "pgtls",
            "pgwire",
            "limits",
            "shutdown",
            "telemetry",
        ],
    ),
];

fn layer_of(module: &str) -> usize {
    LAYERS
        .iter()
        .find(|(_, modules)| modules.contains(&module))
        .map(|(layer, _)| *layer)
        .unwrap_or_else(|| panic!("module {module} is in no layer: add it to LAYERS and to README's Layout"))
}

/// Top-level module → the top-level modules its files name as `crate::x`.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") || path.ends_with("lib.rs") {
                continue;
            }
            let relative = path.strip_prefix(&src).unwrap();
            let top = relative.components().next().unwrap().as_os_str().to_string_lossy();
            let top = top.trim_end_matches(".rs").to_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            let mut used = BTreeSet::new();
            for part in text.split("crate::").skip(1) {
                let name: String = part.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                used.insert(name);
            }
            for group in text.split("use crate::{").skip(1) {
                let inside = group.split('}').next().unwrap_or("");
                for item in inside.split(',') {
                    let name: String =
                        item.trim().chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                    used.insert(name);
                }
            }
            used.retain(|m| !m.is_empty() && *m != top);
            found.entry(top).or_default().extend(used);
        }
    }
    found
}

#[test]
fn every_module_uses_only_its_layer_and_those_below() {
    let mut wrong = Vec::new();
    for (module, used) in imports() {
        for other in &used {
            if layer_of(other) < layer_of(&module) {
                wrong.push(format!(
                    "{module} (layer {}) uses {other} (layer {})",
                    layer_of(&module),
                    layer_of(other)
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layers:\n{}", wrong.join("\n"));
}

#[test]
fn top_level_modules_import_each_other_without_a_circle() {
    let graph = imports();
    // Depth-first search for a back edge; report the circle found.
    fn visit<'a>(
        node: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| *n == node) {
            return Some(path[at..].iter().map(|s| s.to_string()).chain([node.to_owned()]).collect());
        }
        if !done.insert(node) {
            return None;
        }
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            if let Some(circle) = visit(next, graph, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        let mut path = Vec::new();
        if let Some(circle) = visit(node, &graph, &mut path, &mut done) {
            panic!("import circle: {}", circle.join(" -> "));
        }
    }
}

#[test]
fn readme_layout_names_every_layer() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    for (_, modules) in LAYERS {
        for module in *modules {
            assert!(readme.contains(&format!("`{module}`")), "README's Layout does not name `{module}`");
        }
    }
}
