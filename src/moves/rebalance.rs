//! Rebalancing: moves tenants from the most loaded servers (tenants per weight) to the least
//! loaded eligible ones until no single move would bring them closer, at most N moves.

use serde::Serialize;

use crate::catalog::servers::{ServerHealth, ServerLoad, ServerStatus};
use crate::catalog::tenants::TenantStatus;
use crate::core::Core;

use super::MoveError;

/// One move of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedMove {
    /// Tenant.
    pub slug: String,
    /// Its server now.
    pub from: String,
    /// Where it goes.
    pub to: String,
}

fn load(s: &ServerLoad) -> f64 {
    s.tenants as f64 / f64::from(s.weight.max(1))
}

fn takes_tenants(s: &ServerLoad) -> bool {
    s.status == ServerStatus::Active
        && s.health == ServerHealth::Healthy
        && s.max_tenants.is_none_or(|max| s.tenants < i64::from(max))
}

/// The plan for `servers` holding the movable tenants `movable` (slug, server), at most
/// `max_moves` moves. Only active servers give tenants away (drains handle the others); a
/// move is planned only when it leaves the source still at least as loaded as the target
/// (so the plan never oscillates).
pub fn plan(servers: &[ServerLoad], movable: &[(String, String)], max_moves: usize) -> Vec<PlannedMove> {
    let mut servers = servers.to_vec();
    let mut left: Vec<&(String, String)> = movable.iter().collect();
    let mut moves = Vec::new();
    while moves.len() < max_moves {
        let most = servers
            .iter()
            .enumerate()
            .filter(|(_, s)| s.status == ServerStatus::Active && left.iter().any(|(_, on)| *on == s.name))
            .max_by(|(_, a), (_, b)| load(a).total_cmp(&load(b)).then_with(|| b.name.cmp(&a.name)));
        let least = servers
            .iter()
            .enumerate()
            .filter(|(_, s)| takes_tenants(s))
            .min_by(|(_, a), (_, b)| load(a).total_cmp(&load(b)).then_with(|| a.name.cmp(&b.name)));
        let (Some((from, _)), Some((to, _))) = (most, least) else { break };
        if from == to {
            break;
        }
        let (src, dst) = (&servers[from], &servers[to]);
        let after_src = (src.tenants - 1) as f64 / f64::from(src.weight.max(1));
        let after_dst = (dst.tenants + 1) as f64 / f64::from(dst.weight.max(1));
        if after_src < after_dst {
            break;
        }
        let Some(at) = left.iter().position(|(_, on)| *on == src.name) else { break };
        let (slug, _) = left.remove(at);
        moves.push(PlannedMove { slug: slug.clone(), from: src.name.clone(), to: dst.name.clone() });
        servers[from].tenants -= 1;
        servers[to].tenants += 1;
    }
    moves
}

/// The plan for the fleet as the catalog has it now (READY tenants only are movable).
pub async fn plan_now(core: &Core, max_moves: usize) -> Result<Vec<PlannedMove>, MoveError> {
    let servers = core.catalog.server_loads().await?;
    let ready = core.catalog.all_tenants(Some(TenantStatus::Ready), None).await?;
    let movable: Vec<(String, String)> =
        ready.into_iter().filter_map(|t| t.server.map(|s| (t.slug, s))).collect();
    Ok(plan(&servers, &movable, max_moves))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(name: &str, weight: i32, tenants: i64) -> ServerLoad {
        ServerLoad::active(name, weight, tenants)
    }

    fn on(server: &str, n: usize) -> Vec<(String, String)> {
        (0..n).map(|i| (format!("{server}-t{i}"), server.to_owned())).collect()
    }

    #[test]
    fn moves_from_the_most_to_the_least_loaded_until_balanced() {
        let servers = [server("a", 100, 6), server("b", 100, 0), server("c", 100, 2)];
        let movable = [on("a", 6), on("c", 2)].concat();
        let plan = plan(&servers, &movable, 10);
        let to_b = plan.iter().filter(|m| m.to == "b").count();
        assert_eq!((plan.len(), to_b), (3, 3), "{plan:?}");
        assert!(plan.iter().all(|m| m.from == "a"), "{plan:?}");
    }

    #[test]
    fn respects_weights_limits_and_ineligible_targets() {
        let mut down = server("down", 100, 0);
        down.health = ServerHealth::Unhealthy;
        let servers = [server("big", 300, 3), server("small", 100, 3), down];
        let plan = plan(&servers, &[on("big", 3), on("small", 3)].concat(), 1);
        assert_eq!(
            plan,
            vec![PlannedMove { slug: "small-t0".into(), from: "small".into(), to: "big".into() }]
        );
        let balanced = [server("a", 100, 2), server("b", 100, 1)];
        assert!(super::plan(&balanced, &[on("a", 2), on("b", 1)].concat(), 5).is_empty());
    }
}
