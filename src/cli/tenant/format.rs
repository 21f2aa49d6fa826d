//! How `tenantd tenant` reads its arguments and shows tenants.

use super::super::{Failure, output};
use crate::catalog::tenants::TenantRecord;

pub(super) fn parse_labels(labels: &[String]) -> Result<serde_json::Value, Failure> {
    let mut map = serde_json::Map::new();
    for label in labels {
        let (key, value) = label
            .split_once('=')
            .ok_or_else(|| Failure::usage(format!("--label {label:?} is not KEY=VALUE")))?;
        map.insert(key.to_owned(), serde_json::Value::String(value.to_owned()));
    }
    Ok(serde_json::Value::Object(map))
}

pub(super) fn print_tenant(tenant: &TenantRecord, json: bool) -> Result<(), Failure> {
    if json {
        return output::json(tenant);
    }
    print_tenants(std::slice::from_ref(tenant));
    Ok(())
}

pub(super) fn print_tenants(tenants: &[TenantRecord]) {
    let rows: Vec<Vec<String>> = tenants
        .iter()
        .map(|t| {
            vec![
                t.slug.clone(),
                t.status.to_string(),
                output::opt(t.server.clone()),
                output::opt(t.database_name.clone()),
                t.schema_version.to_string(),
                t.attempts.to_string(),
                output::opt(t.last_error.clone()),
            ]
        })
        .collect();
    output::table(&["SLUG", "STATUS", "SERVER", "DATABASE", "VERSION", "ATTEMPTS", "LAST_ERROR"], &rows);
}

pub(super) fn print_details(t: &TenantRecord) {
    let fields = [
        ("slug", t.slug.clone()),
        ("id", t.id.to_string()),
        ("status", t.status.to_string()),
        ("server", output::opt(t.server.clone())),
        ("database", output::opt(t.database_name.clone())),
        ("role", output::opt(t.role_name.clone())),
        ("schema_version", t.schema_version.to_string()),
        ("attempts", t.attempts.to_string()),
        ("next_attempt_at", t.next_attempt_at.to_rfc3339()),
        ("last_error", output::opt(t.last_error.clone())),
        ("labels", t.labels.to_string()),
        ("lease", output::opt(t.lease_owner.clone())),
        ("created_at", t.created_at.to_rfc3339()),
        ("ready_at", output::opt(t.ready_at.map(|r| r.to_rfc3339()))),
    ];
    for (name, value) in fields {
        println!("{name:<16} {value}");
    }
}

/// A size that does not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a size: give bytes, or a number with kB, MB, GB or TB (powers of 1024)")]
pub(super) struct BadSize(String);

/// A size in bytes, or with a unit (`kB`, `MB`, `GB`, `TB`; powers of 1024, as PostgreSQL
/// counts them).
pub(super) fn parse_size(text: &str) -> Result<u64, BadSize> {
    let bad = || BadSize(text.to_owned());
    let trimmed = text.trim();
    let split = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1 << 10,
        "mb" => 1 << 20,
        "gb" => 1 << 30,
        "tb" => 1 << 40,
        _ => return Err(bad()),
    };
    number.checked_mul(factor).ok_or_else(bad)
}
