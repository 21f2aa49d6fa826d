//! Per-tenant limits on the servers: the `CONNECTION LIMIT` of each tenant role and the
//! defaults of its sessions (`statement_timeout`, `idle_in_transaction_session_timeout`).
//!
//! The `[limits]` settings are the defaults; a tenant's `limits` column overrides any of them
//! (`PATCH /v1/tenants/{slug}`, `tenantd tenant set`). What was last applied to the role is
//! kept in `limits_applied`, so any daemon finds the tenants whose role does not match yet
//! (new settings, a new override, a tenant made before limits existed) and applies them
//! (`Lifecycle::apply_limits`, driven by the daemon's limits task).
//!
//! The connection limit is enforced by PostgreSQL and a tenant cannot raise it (that needs
//! `CREATEROLE`). The session defaults are defaults: a tenant connecting directly may `SET`
//! its own session; over HTTP tenantd enforces its own deadline whatever the session says.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::LimitSettings;

/// Limits of one tenant's role, resolved from the settings and the tenant's overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantLimits {
    /// `CONNECTION LIMIT` of the role.
    pub connections: u32,
    /// Default `statement_timeout` of its sessions, in ms (0 = none).
    pub statement_timeout_ms: u64,
    /// Default `idle_in_transaction_session_timeout` of its sessions, in ms (0 = none).
    pub idle_in_transaction_timeout_ms: u64,
    /// Storage quota of its database in bytes (0 = none).
    pub max_database_bytes: u64,
}

/// Overrides of some limits for one tenant (every field optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    /// `CONNECTION LIMIT` of the role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<u32>,
    /// Default `statement_timeout`, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement_timeout_ms: Option<u64>,
    /// Default `idle_in_transaction_session_timeout`, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_in_transaction_timeout_ms: Option<u64>,
    /// Storage quota, bytes (0 = none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_database_bytes: Option<u64>,
}

/// Longest session timeout accepted (PostgreSQL's own limit is `i32::MAX` ms).
const MAX_TIMEOUT_MS: u64 = i32::MAX as u64;
/// Largest connection limit accepted.
pub const MAX_CONNECTIONS: u32 = 10_000;

/// An override out of range; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LimitsError(String);

impl LimitOverrides {
    /// Reads overrides from JSON (the catalog column or a request body), checking ranges.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, LimitsError> {
        if !value.is_object() {
            return Err(LimitsError(format!("limits must be a JSON object (got {value})")));
        }
        let overrides: LimitOverrides =
            serde_json::from_value(value.clone()).map_err(|e| LimitsError(format!("limits: {e}")))?;
        overrides.check()?;
        Ok(overrides)
    }

    /// Checks ranges.
    pub fn check(&self) -> Result<(), LimitsError> {
        if let Some(n) = self.connections
            && !(1..=MAX_CONNECTIONS).contains(&n)
        {
            return Err(LimitsError(format!("limits.connections must be 1 to {MAX_CONNECTIONS} (got {n})")));
        }
        for (name, value) in [
            ("statement_timeout_ms", self.statement_timeout_ms),
            ("idle_in_transaction_timeout_ms", self.idle_in_transaction_timeout_ms),
        ] {
            if let Some(ms) = value
                && ms > MAX_TIMEOUT_MS
            {
                return Err(LimitsError(format!(
                    "limits.{name} must be at most {MAX_TIMEOUT_MS} (got {ms})"
                )));
            }
        }
        Ok(())
    }

    /// These overrides merged over `other` (fields set here win).
    #[must_use]
    pub fn over(self, other: LimitOverrides) -> LimitOverrides {
        LimitOverrides {
            connections: self.connections.or(other.connections),
            statement_timeout_ms: self.statement_timeout_ms.or(other.statement_timeout_ms),
            idle_in_transaction_timeout_ms: self
                .idle_in_transaction_timeout_ms
                .or(other.idle_in_transaction_timeout_ms),
            max_database_bytes: self.max_database_bytes.or(other.max_database_bytes),
        }
    }

    /// The JSON stored in the catalog.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_else(|_| serde_json::json!({}))
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(MAX_TIMEOUT_MS).min(MAX_TIMEOUT_MS)
}

impl TenantLimits {
    /// The settings' defaults.
    pub fn defaults(settings: &LimitSettings) -> Self {
        Self {
            connections: settings.connections_per_tenant,
            statement_timeout_ms: ms(settings.statement_timeout),
            idle_in_transaction_timeout_ms: ms(settings.idle_in_transaction_timeout),
            max_database_bytes: settings.max_database_bytes,
        }
    }

    /// The limits of a tenant: its overrides over the defaults. An override that does not
    /// read (a hand-edited catalog) is an error, never silently the default.
    pub fn resolve(settings: &LimitSettings, overrides: &serde_json::Value) -> Result<Self, LimitsError> {
        let o = LimitOverrides::from_json(overrides)?;
        let d = Self::defaults(settings);
        Ok(Self {
            connections: o.connections.unwrap_or(d.connections),
            statement_timeout_ms: o.statement_timeout_ms.unwrap_or(d.statement_timeout_ms),
            idle_in_transaction_timeout_ms: o
                .idle_in_transaction_timeout_ms
                .unwrap_or(d.idle_in_transaction_timeout_ms),
            max_database_bytes: o.max_database_bytes.unwrap_or(d.max_database_bytes),
        })
    }

    /// The JSON kept in `limits_applied`.
    pub fn to_json(self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_else(|_| serde_json::json!({}))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn overrides_win_over_defaults_and_bad_ones_are_refused() {
        let settings = LimitSettings::default();
        let limits = TenantLimits::resolve(&settings, &json!({ "connections": 3 })).unwrap();
        assert_eq!(limits.connections, 3);
        assert_eq!(limits.statement_timeout_ms, 60_000);
        assert_eq!(TenantLimits::resolve(&settings, &json!({})).unwrap(), TenantLimits::defaults(&settings));
        for bad in [
            json!({ "connections": 0 }),
            json!({ "conections": 3 }),
            json!({ "connections": "many" }),
            json!([]),
        ] {
            assert!(TenantLimits::resolve(&settings, &bad).is_err(), "{bad} accepted");
        }
    }
}
