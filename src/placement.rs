//! Choosing a server for a new tenant.
//!
//! Eligible servers are `active`, `healthy` and below `max_tenants`; among them the one with
//! the lowest tenants/weight wins, ties broken by name. An explicit server or region narrows
//! the choice. When nothing is eligible the answer says why for every server, so an operator
//! reading `last_error` knows what to fix.

pub use crate::catalog::servers::ServerLoad;
use crate::catalog::servers::{ServerHealth, ServerStatus};

/// No server can take the tenant now; the message says why for each candidate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no eligible server: {0}")]
pub struct NoEligibleServer(pub String);

/// Why `server` cannot take a tenant now, if it cannot.
fn ineligibility(server: &ServerLoad) -> Option<String> {
    if server.status != ServerStatus::Active {
        return Some(server.status.to_string());
    }
    if server.health != ServerHealth::Healthy {
        return Some(server.health.to_string());
    }
    match server.max_tenants {
        Some(max) if server.tenants >= i64::from(max) => Some(format!("full ({}/{max})", server.tenants)),
        _ => None,
    }
}

/// Picks a server, or explains why none fits.
pub fn choose(
    servers: &[ServerLoad],
    server: Option<&str>,
    region: Option<&str>,
) -> Result<String, NoEligibleServer> {
    let candidates: Vec<&ServerLoad> = servers
        .iter()
        .filter(|s| server.is_none_or(|want| s.name == want))
        .filter(|s| region.is_none_or(|want| s.region.as_deref() == Some(want)))
        .collect();
    if candidates.is_empty() {
        return Err(NoEligibleServer(match (server, region) {
            (Some(name), _) => format!("server {name:?} is not registered{}", in_region(region)),
            (None, Some(r)) => format!("no server in region {r:?}"),
            (None, None) => "no servers registered (tenantd server add)".to_owned(),
        }));
    }
    let best = candidates.iter().filter(|s| ineligibility(s).is_none()).min_by(|a, b| {
        let load = |s: &ServerLoad| s.tenants as f64 / f64::from(s.weight.max(1));
        load(a).total_cmp(&load(b)).then_with(|| a.name.cmp(&b.name))
    });
    match best {
        Some(s) => Ok(s.name.clone()),
        None => {
            let reasons: Vec<String> = candidates
                .iter()
                .filter_map(|s| ineligibility(s).map(|why| format!("{} is {why}", s.name)))
                .collect();
            Err(NoEligibleServer(reasons.join(", ")))
        }
    }
}

fn in_region(region: Option<&str>) -> String {
    region.map(|r| format!(" in region {r:?}")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(name: &str, weight: i32, tenants: i64) -> ServerLoad {
        ServerLoad::active(name, weight, tenants)
    }

    #[test]
    fn lowest_load_per_weight_wins_ties_by_name() {
        assert_eq!(choose(&[s("b", 1, 1), s("a", 1, 1)], None, None).unwrap(), "a");
        assert_eq!(choose(&[s("a", 1, 2), s("b", 3, 5)], None, None).unwrap(), "b");
        assert_eq!(choose(&[s("a", 1, 0), s("b", 3, 0)], None, None).unwrap(), "a");
    }

    #[test]
    fn weights_spread_tenants_proportionally() {
        let mut servers = vec![s("a", 1, 0), s("b", 3, 0)];
        for _ in 0..40 {
            let pick = choose(&servers, None, None).unwrap();
            servers.iter_mut().find(|s| s.name == pick).unwrap().tenants += 1;
        }
        assert_eq!((servers[0].tenants, servers[1].tenants), (10, 30));
    }

    #[test]
    fn ineligible_servers_are_skipped_with_reasons() {
        let mut draining = s("a", 1, 0);
        draining.status = ServerStatus::Draining;
        let mut sick = s("b", 1, 0);
        sick.health = ServerHealth::Unhealthy;
        let mut full = s("c", 1, 2);
        full.max_tenants = Some(2);
        let mut maint = s("d", 1, 0);
        maint.status = ServerStatus::Maintenance;
        let servers = vec![draining, sick, full, maint, s("e", 1, 100)];
        assert_eq!(choose(&servers, None, None).unwrap(), "e");
        let why = choose(&servers[..4], None, None).unwrap_err().to_string();
        assert!(why.contains("a is draining") && why.contains("b is unhealthy"), "{why}");
        assert!(why.contains("c is full (2/2)") && why.contains("d is maintenance"), "{why}");
    }

    #[test]
    fn explicit_server_and_region_narrow() {
        let mut eu = s("eu1", 1, 50);
        eu.region = Some("eu".into());
        let servers = vec![eu, s("us1", 1, 0)];
        assert_eq!(choose(&servers, Some("eu1"), None).unwrap(), "eu1");
        assert_eq!(choose(&servers, None, Some("eu")).unwrap(), "eu1");
        assert!(choose(&servers, None, Some("ap")).unwrap_err().to_string().contains("region \"ap\""));
        assert!(choose(&servers, Some("nope"), None).unwrap_err().to_string().contains("not registered"));
        assert!(choose(&[], None, None).unwrap_err().to_string().contains("no servers registered"));
    }
}
