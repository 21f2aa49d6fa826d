//! A catalog of many tenants: every hot statement (worker polls, placement, lending's token
//! lookup, the tenant listing) is served by an index in its generic plan, read with EXPLAIN on
//! a catalog of 20,000 tenants; and the tallies placement reads instead of counting rows stay
//! exact through inserts, status changes, moves and deletes.

use std::collections::BTreeMap;

use crate::common::spawn_app;

/// Tenants added by plain SQL: enough that a sequential scan costs the planner far more than
/// any index, as it would in production.
const FILL: i32 = 20_000;

async fn tallies_match(catalog: &tokio_postgres::Client) -> BTreeMap<(String, String), i64> {
    let counted: BTreeMap<(String, String), i64> = catalog
        .query("SELECT coalesce(server, ''), status, count(*) FROM tenantd.tenants GROUP BY 1, 2", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    let tallied: BTreeMap<(String, String), i64> = catalog
        .query("SELECT server, status, tenants FROM tenantd.tenant_tallies WHERE tenants <> 0", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    assert_eq!(tallied, counted, "the tallies differ from a count of the rows");
    counted
}

#[tokio::test]
async fn hot_statements_use_their_indexes_and_tallies_stay_exact() {
    let mut app = spawn_app().await;
    for slug in ["acme", "globex"] {
        let (status, body) = app.post("/v1/tenants", &serde_json::json!({ "slug": slug })).await;
        assert_eq!(status, 201, "{body}");
    }
    app.wait_ready("acme").await;
    app.wait_ready("globex").await;
    let (status, body) = app.post("/v1/tenants/globex/suspend", &serde_json::json!({})).await;
    assert!(status < 300, "suspend: {status} {body}");
    let (status, servers) = app.get("/v1/servers").await;
    assert_eq!(status, 200);
    assert_eq!(servers[0]["tenants"], 2, "the API's count comes from the tallies: {servers}");
    // The rest reads the catalog only: no daemon acting on the rows made below.
    app.stop().await;

    let catalog = app.catalog().await;
    // Rows in random slug order, as creation order would leave them (rows in slug order would
    // make every walk of the slug index look sequential, and so cheap, to the planner).
    catalog
        .execute(
            "INSERT INTO tenantd.tenants (slug, status, server, database_name, role_name, token_hash, ready_at) \
             SELECT 'fill-' || lpad(i::text, 6, '0'), \
               CASE WHEN i % 1000 = 0 THEN 'ERROR' WHEN i % 997 = 0 THEN 'MOVING' ELSE 'READY' END, \
               'pg1', 'fill_db_' || i, 'fill_role_' || i, md5(i::text), now() \
             FROM generate_series(1, $1::int4) i ORDER BY md5(i::text)",
            &[&FILL],
        )
        .await
        .unwrap();
    catalog.batch_execute("ANALYZE tenantd.tenants; ANALYZE tenantd.tenant_tallies").await.unwrap();
    let counted = tallies_match(&catalog).await;
    assert_eq!(counted[&("pg1".to_owned(), "READY".to_owned())], i64::from(FILL) - 20 - 20 + 1);

    // Generic plans: what a prepared statement settles on after a few runs, with no parameter
    // value to steer the planner.
    catalog.batch_execute("SET plan_cache_mode = force_generic_plan").await.unwrap();
    let mut failures = Vec::new();
    for (i, hot) in tenantd::plans::hot_statements().iter().enumerate() {
        catalog.batch_execute(&format!("PREPARE hot_{i} AS {}", hot.sql)).await.unwrap_or_else(|e| {
            panic!("preparing {:?}: {e:?}", hot.name);
        });
        let plan: Vec<String> = catalog
            .query(&format!("EXPLAIN EXECUTE hot_{i}{}", hot.args), &[])
            .await
            .unwrap_or_else(|e| panic!("explaining {:?}: {e:?}", hot.name))
            .iter()
            .map(|r| r.get(0))
            .collect();
        let plan = plan.join("\n");
        let reads_tenants = plan.contains(" on tenants ");
        let ok = !plan.contains("Seq Scan on tenants ")
            && if hot.indexes.is_empty() {
                !reads_tenants
            } else {
                hot.indexes.iter().any(|index| plan.contains(&format!("using {index} on tenants ")))
            };
        if !ok {
            failures.push(format!("{} (expected {:?}):\n{plan}", hot.name, hot.indexes));
        }
    }
    assert!(failures.is_empty(), "hot statements not served by their index:\n\n{}", failures.join("\n\n"));
    catalog.batch_execute("RESET plan_cache_mode; DEALLOCATE ALL").await.unwrap();

    // The tallies through every kind of change: status, server (to a second server and back
    // to none), deletion of rows, and a transaction that rolls back.
    catalog
        .batch_execute(
            "INSERT INTO tenantd.servers (name, host, port, admin_user, admin_password_sealed) \
               SELECT 'pg2', host, port, admin_user, admin_password_sealed FROM tenantd.servers WHERE name = 'pg1'; \
             UPDATE tenantd.tenants SET status = 'SUSPENDED' WHERE slug LIKE 'fill-0001%'; \
             UPDATE tenantd.tenants SET server = 'pg2' WHERE slug LIKE 'fill-0002%'; \
             UPDATE tenantd.tenants SET server = 'pg2', status = 'DELETED' WHERE slug LIKE 'fill-0003%'; \
             UPDATE tenantd.tenants SET server = NULL, status = 'PENDING' WHERE slug LIKE 'fill-0004%'; \
             DELETE FROM tenantd.tenants WHERE slug LIKE 'fill-0005%'; \
             UPDATE tenantd.servers SET name = 'pg3' WHERE name = 'pg2';",
        )
        .await
        .unwrap();
    catalog
        .batch_execute(
            "BEGIN; UPDATE tenantd.tenants SET status = 'ERROR' WHERE slug LIKE 'fill-0006%'; ROLLBACK",
        )
        .await
        .unwrap();
    let counted = tallies_match(&catalog).await;
    assert_eq!(counted.get(&("pg3".to_owned(), "DELETED".to_owned())), Some(&100), "{counted:?}");
    assert_eq!(counted.get(&(String::new(), "PENDING".to_owned())), Some(&100), "{counted:?}");
}
